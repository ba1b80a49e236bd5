//! Greeting, capabilities, STARTTLS and signing in: the way to the authenticated state.

use super::*;

/// Reads the greeting and learns the capabilities; on a plain connection then asks for
/// STARTTLS.
#[derive(Debug)]
pub struct Greet {
    starttls: bool,
    phase: GreetPhase,
    caps: Option<BTreeSet<String>>,
}

#[derive(Debug, PartialEq, Eq)]
enum GreetPhase {
    Greeting,
    Capability(String),
    StartTls(String),
}

/// Learns the capabilities after TLS, forgetting those heard before it.
#[derive(Debug)]
pub struct Recapability {
    tag: String,
    caps: Option<BTreeSet<String>>,
}

/// Connection set-up ends in a state without a refusable step: a refusal there is fatal.
impl Run<Greet> {
    /// A session on a connection that is TLS from its first byte.
    pub fn implicit_tls(max_literal: u64) -> Run<Greet> {
        Self::greet(max_literal, false)
    }

    /// A session on a plain connection that must be upgraded with STARTTLS before anything
    /// else; it ends in [`AwaitingTls`] or fails.
    pub fn starttls(max_literal: u64) -> Run<Greet> {
        Self::greet(max_literal, true)
    }

    fn greet(max_literal: u64, starttls: bool) -> Run<Greet> {
        let plan = Greet {
            starttls,
            phase: GreetPhase::Greeting,
            caps: None,
        };
        Run::new(Core::new(max_literal), plan, Ok(Next::Read))
    }

    /// After [`Run::implicit_tls`]: ready to sign in.
    pub fn secured(self) -> Result<NotAuthenticated, ImapError> {
        match self.finish() {
            Ok(GreetEnd::Secured(s)) => Ok(s),
            Ok(GreetEnd::AwaitingTls(_)) => Err(ProtocolError::Malformed(
                "STARTTLS set-up ended where implicit TLS was expected".into(),
            )
            .into()),
            Err(f) => Err(f.into_error()),
        }
    }

    /// After [`Run::starttls`]: STARTTLS accepted, do the handshake.
    pub fn awaiting_tls(self) -> Result<AwaitingTls, ImapError> {
        match self.finish() {
            Ok(GreetEnd::AwaitingTls(s)) => Ok(s),
            Ok(GreetEnd::Secured(_)) => Err(ImapError::NoStartTls),
            Err(f) => Err(f.into_error()),
        }
    }
}

/// Where [`Greet`] leads.
#[derive(Debug)]
pub enum GreetEnd {
    Secured(NotAuthenticated),
    AwaitingTls(AwaitingTls),
}

impl Plan for Greet {
    type From = Core;
    type To = GreetEnd;
    type Item = Infallible;
    const GREETING: bool = true;

    fn during(&self) -> &'static str {
        match self.phase {
            GreetPhase::Greeting => "waiting for the greeting",
            GreetPhase::Capability(_) => "CAPABILITY",
            GreetPhase::StartTls(_) => "STARTTLS",
        }
    }

    fn on_response(
        &mut self,
        core: &mut Core,
        response: ServerResponse,
    ) -> Result<Next<Infallible>, ImapError> {
        match &self.phase {
            GreetPhase::Greeting => {
                // Capabilities in a plain greeting may have been forged: they are asked
                // again (and again after TLS).
                if let (false, ServerResponse::Capabilities(caps)) = (self.starttls, &response) {
                    core.caps = caps.clone();
                    return Ok(Next::Done);
                }
                let cmd = core.cmds.capability();
                self.phase = GreetPhase::Capability(cmd.tag);
                Ok(Next::Send(cmd.bytes))
            }
            GreetPhase::Capability(tag) => {
                learn_caps(&mut self.caps, &response);
                let Some((completion, line)) = tagged(&response, tag) else {
                    return Ok(Next::Read);
                };
                if completion != Completion::Ok {
                    return Err(refused(completion, line.to_string()));
                }
                core.caps = self.caps.take().unwrap_or_default();
                if !self.starttls {
                    return Ok(Next::Done);
                }
                if !core.has("STARTTLS") {
                    return Err(ImapError::NoStartTls);
                }
                let cmd = core.cmds.starttls();
                self.phase = GreetPhase::StartTls(cmd.tag);
                Ok(Next::Send(cmd.bytes))
            }
            GreetPhase::StartTls(tag) => match tagged(&response, tag) {
                Some((Completion::Ok, _)) => Ok(Next::Done),
                Some((_, line)) => Err(ImapError::StartTlsRefused {
                    line: line.to_string(),
                }),
                None => Ok(Next::Read),
            },
        }
    }

    fn complete(self, mut core: Core) -> GreetEnd {
        if self.starttls {
            core.caps.clear();
            GreetEnd::AwaitingTls(AwaitingTls { core })
        } else {
            GreetEnd::Secured(NotAuthenticated { core })
        }
    }
}

impl AwaitingTls {
    /// The caller completed the TLS handshake: capabilities are asked again over TLS.
    pub fn tls_established(mut self) -> Run<Recapability> {
        self.core.caps.clear();
        let cmd = self.core.cmds.capability();
        let plan = Recapability {
            tag: cmd.tag,
            caps: None,
        };
        Run::new(self.core, plan, Ok(Next::Send(cmd.bytes)))
    }
}

impl Run<Recapability> {
    pub fn secured(self) -> Result<NotAuthenticated, ImapError> {
        self.finish().map_err(Failure::into_error)
    }
}

impl Plan for Recapability {
    type From = Core;
    type To = NotAuthenticated;
    type Item = Infallible;

    fn during(&self) -> &'static str {
        "CAPABILITY"
    }

    fn on_response(
        &mut self,
        core: &mut Core,
        response: ServerResponse,
    ) -> Result<Next<Infallible>, ImapError> {
        learn_caps(&mut self.caps, &response);
        match tagged(&response, &self.tag) {
            Some((Completion::Ok, _)) => {
                core.caps = self.caps.take().unwrap_or_default();
                Ok(Next::Done)
            }
            Some((completion, line)) => Err(refused(completion, line.to_string())),
            None => Ok(Next::Read),
        }
    }

    fn complete(self, core: Core) -> NotAuthenticated {
        NotAuthenticated { core }
    }
}

// ---------------------------------------------------------------------------------------
// Signing in

/// AUTHENTICATE (PLAIN, XOAUTH2, OAUTHBEARER) or LOGIN, then the capabilities of the
/// authenticated state.
pub struct SignIn {
    tag: String,
    /// The client response still to send at the server's first `+` (no SASL-IR).
    pending: Option<Secret>,
    oauthbearer: bool,
    /// The decoded error challenge, for the error message.
    challenge: Option<String>,
    caps: Option<BTreeSet<String>>,
    /// The server's tagged OK line, handed back on success.
    reply: String,
    /// Asking CAPABILITY because the OK carried none.
    capability_tag: Option<String>,
}

impl NotAuthenticated {
    /// Signs in: `AUTHENTICATE PLAIN` for a password when offered, else LOGIN; XOAUTH2 or
    /// OAUTHBEARER for a token. Gives the server's OK line with the authenticated state.
    pub fn login(mut self, login: &Login<'_>) -> Run<SignIn> {
        let mut plan = SignIn {
            tag: String::new(),
            pending: None,
            oauthbearer: login.is_oauthbearer(),
            challenge: None,
            caps: None,
            reply: String::new(),
            capability_tag: None,
        };
        let first = plan.first(&mut self.core, login);
        Run::new(self, plan, first)
    }
}

impl SignIn {
    fn first(&mut self, core: &mut Core, login: &Login<'_>) -> Result<Next<Infallible>, ImapError> {
        fn refuse(reply: &str) -> Result<Next<Infallible>, ImapError> {
            Ok(Next::Refused(ImapError::AuthRefused {
                reply: reply.to_string(),
            }))
        }
        let (mechanism, response) = match login {
            Login::Password { user, password } if core.has("AUTH=PLAIN") => {
                ("PLAIN", sasl::plain(user, password))
            }
            Login::Password { user, password } => {
                if core.has("LOGINDISABLED") {
                    return refuse("server offers neither AUTH=PLAIN nor LOGIN (LOGINDISABLED)");
                }
                let Some(cmd) = core.cmds.login(user, password.expose()) else {
                    return refuse(
                        "user name or password contains CR, LF or NUL and cannot be sent with LOGIN",
                    );
                };
                self.tag = cmd.tag;
                return Ok(Next::Send(cmd.bytes));
            }
            Login::XOAuth2 { user, token } => ("XOAUTH2", sasl::xoauth2(user, token)),
            Login::OAuthBearer {
                user,
                token,
                host,
                port,
            } => ("OAUTHBEARER", sasl::oauthbearer(user, host, *port, token)),
        };
        if !core.has(&format!("AUTH={mechanism}")) {
            let offered: Vec<&str> = core
                .caps
                .iter()
                .filter(|c| c.starts_with("AUTH="))
                .map(String::as_str)
                .collect();
            return refuse(&format!(
                "server does not offer AUTH={mechanism} (it offers: {})",
                offered.join(" ")
            ));
        }
        let cmd = if core.has("SASL-IR") {
            core.cmds.authenticate(mechanism, Some(response.expose()))
        } else {
            self.pending = Some(response);
            core.cmds.authenticate(mechanism, None)
        };
        self.tag = cmd.tag;
        Ok(Next::Send(cmd.bytes))
    }
}

impl Plan for SignIn {
    type From = NotAuthenticated;
    type To = (Authenticated, String);
    type Item = Infallible;

    fn during(&self) -> &'static str {
        if self.capability_tag.is_some() {
            "CAPABILITY"
        } else {
            "authenticating"
        }
    }

    fn on_response(
        &mut self,
        core: &mut Core,
        response: ServerResponse,
    ) -> Result<Next<Infallible>, ImapError> {
        learn_caps(&mut self.caps, &response);
        if let Some(tag) = &self.capability_tag {
            return match tagged(&response, tag) {
                Some((Completion::Ok, _)) => {
                    core.caps = self.caps.take().unwrap_or_default();
                    Ok(Next::Done)
                }
                Some((completion, line)) => Err(refused(completion, line.to_string())),
                None => Ok(Next::Read),
            };
        }
        if let ServerResponse::Continue(challenge) = &response {
            let line = match self.pending.take() {
                Some(initial) => format!("{}\r\n", initial.expose()),
                None => {
                    // An error challenge: answer it so the server can fail the command.
                    self.challenge = Some(sasl::describe_challenge(challenge));
                    format!("{}\r\n", sasl::error_challenge_reply(self.oauthbearer))
                }
            };
            return Ok(Next::Send(line.into_bytes()));
        }
        match tagged(&response, &self.tag) {
            Some((Completion::Ok, line)) => {
                self.reply = line.to_string();
                // Capabilities change with authentication: the OK's (or an untagged
                // CAPABILITY's), else asked for.
                if let Some(caps) = self.caps.take() {
                    core.caps = caps;
                    return Ok(Next::Done);
                }
                let cmd = core.cmds.capability();
                self.capability_tag = Some(cmd.tag);
                Ok(Next::Send(cmd.bytes))
            }
            Some((_, line)) => Ok(Next::Refused(login_refused(
                line.to_string(),
                self.challenge.take(),
            ))),
            None => Ok(Next::Read),
        }
    }

    fn complete(self, from: NotAuthenticated) -> (Authenticated, String) {
        (Authenticated { core: from.core }, self.reply)
    }
}
