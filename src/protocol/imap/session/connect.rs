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

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn caps(list: &str) -> BTreeSet<String> {
        list.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn capabilities_in_a_secured_greeting_are_used_without_asking() {
        let mut run = Run::implicit_tls(1 << 20);
        assert_eq!(run.during(), "waiting for the greeting");
        let mut buf = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n".to_vec();
        let p = pump(&mut run, &mut buf);
        assert_eq!((p.sent.as_str(), p.stop), ("", Stop::Done));
        let state = run.secured().unwrap();
        assert_eq!(state.capabilities(), &caps("IMAP4REV1 AUTH=PLAIN"));
    }

    #[test]
    fn a_greeting_without_capabilities_is_followed_by_capability() {
        let mut run = Run::implicit_tls(1 << 20);
        let mut buf = b"* OK ready\r\n".to_vec();
        let p = pump(&mut run, &mut buf);
        assert_eq!(
            (p.sent.as_str(), p.stop),
            ("A0001 CAPABILITY\r\n", Stop::NeedMore)
        );
        assert_eq!(run.during(), "CAPABILITY");
        buf.extend_from_slice(
            b"* CAPABILITY IMAP4rev1 SASL-IR\r\nA0001 OK [CAPABILITY IMAP4rev1 IDLE] done\r\n",
        );
        assert_eq!(pump(&mut run, &mut buf).stop, Stop::Done);
        let state = run.secured().unwrap();
        assert_eq!(state.capabilities(), &caps("IMAP4REV1 SASL-IR IDLE"));
    }

    #[test]
    fn a_refused_capability_or_a_bye_greeting_ends_the_set_up() {
        let (sent, end) = exchange(
            Run::implicit_tls(1 << 20),
            "* OK ready\r\nA0001 NO not now\r\n",
        );
        assert_eq!(sent, "A0001 CAPABILITY\r\n");
        assert!(matches!(
            end,
            Err(Failure::Fatal(ImapError::Protocol(ProtocolError::Rejected(ref l)))) if l == "A0001 NO not now"
        ));
        let (_, end) = exchange(
            Run::implicit_tls(1 << 20),
            "* OK ready\r\nA0001 BAD what\r\n",
        );
        assert!(matches!(
            end,
            Err(Failure::Fatal(ImapError::Protocol(
                ProtocolError::CommandRefused(_)
            )))
        ));
        let mut run = Run::implicit_tls(1 << 20);
        pump(&mut run, &mut b"* BYE go away\r\n".to_vec());
        assert_eq!(
            run.secured().unwrap_err(),
            ImapError::Protocol(ProtocolError::Rejected("* BYE go away".into()))
        );
        let mut run = Run::starttls(1 << 20);
        pump(&mut run, &mut b"* BYE go away\r\n".to_vec());
        assert_eq!(
            run.awaiting_tls().unwrap_err(),
            ImapError::Protocol(ProtocolError::Rejected("* BYE go away".into()))
        );
    }

    #[test]
    fn starttls_asks_again_for_forgeable_capabilities_and_keeps_what_follows_its_ok() {
        let mut run = Run::starttls(1 << 20);
        let mut buf = b"* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] hi\r\n".to_vec();
        let p = pump(&mut run, &mut buf);
        assert_eq!(
            p.sent, "A0001 CAPABILITY\r\n",
            "the greeting's capabilities are not used"
        );
        buf.extend_from_slice(b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\nA0001 OK\r\n");
        let p = pump(&mut run, &mut buf);
        assert_eq!(
            (p.sent.as_str(), p.stop),
            ("A0002 STARTTLS\r\n", Stop::NeedMore)
        );
        assert_eq!(run.during(), "STARTTLS");
        assert_eq!(
            run.capabilities(),
            &caps("IMAP4REV1 STARTTLS LOGINDISABLED")
        );
        buf.extend_from_slice(b"A0009 OK not ours\r\nA0002 OK Begin TLS\r\n* injected\r\n");
        assert_eq!(pump(&mut run, &mut buf).stop, Stop::Done);
        assert_eq!(
            buf, b"* injected\r\n",
            "bytes after the OK are left to fail the upgrade"
        );
        let awaiting = run.awaiting_tls().unwrap();
        assert!(awaiting.capabilities().is_empty());

        let mut run = awaiting.tls_established();
        assert_eq!(run.during(), "CAPABILITY");
        let mut buf = b"A0003 OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] done\r\n".to_vec();
        let p = pump(&mut run, &mut buf);
        assert_eq!(
            (p.sent.as_str(), p.stop),
            ("A0003 CAPABILITY\r\n", Stop::Done)
        );
        let state = run.secured().unwrap();
        assert_eq!(state.capabilities(), &caps("IMAP4REV1 AUTH=PLAIN"));
    }

    #[test]
    fn starttls_refused_or_missing_ends_the_set_up() {
        let (_, end) = exchange(
            Run::starttls(1 << 20),
            "* OK hi\r\n* CAPABILITY IMAP4rev1 STARTTLS\r\nA0001 OK\r\nA0002 NO not today\r\n",
        );
        assert!(matches!(
            end,
            Err(Failure::Fatal(ImapError::StartTlsRefused { ref line })) if line == "A0002 NO not today"
        ));
        let (sent, end) = exchange(
            Run::starttls(1 << 20),
            "* OK hi\r\n* CAPABILITY IMAP4rev1\r\nA0001 OK\r\n",
        );
        assert_eq!(sent, "A0001 CAPABILITY\r\n", "nothing more is sent");
        assert!(matches!(end, Err(Failure::Fatal(ImapError::NoStartTls))));
    }

    #[test]
    fn the_set_up_must_end_where_its_caller_expects() {
        let mut run = Run::starttls(1 << 20);
        let mut buf = b"* OK [CAPABILITY STARTTLS] hi\r\n* CAPABILITY STARTTLS\r\nA0001 OK\r\nA0002 OK go\r\n".to_vec();
        assert_eq!(pump(&mut run, &mut buf).stop, Stop::Done);
        assert!(matches!(
            run.secured(),
            Err(ImapError::Protocol(ProtocolError::Malformed(_)))
        ));
        let mut run = Run::implicit_tls(1 << 20);
        assert_eq!(
            pump(&mut run, &mut b"* OK [CAPABILITY STARTTLS] hi\r\n".to_vec()).stop,
            Stop::Done
        );
        assert_eq!(run.awaiting_tls().unwrap_err(), ImapError::NoStartTls);
    }

    #[test]
    fn capabilities_after_tls_are_asked_and_a_refusal_is_fatal() {
        let awaiting = AwaitingTls {
            core: core("STARTTLS"),
        };
        let (sent, end) = exchange(
            awaiting.tls_established(),
            "* CAPABILITY IMAP4rev1 AUTH=XOAUTH2\r\nA0001 OK\r\n",
        );
        assert_eq!(sent, "A0001 CAPABILITY\r\n");
        assert_eq!(end.unwrap().capabilities(), &caps("IMAP4REV1 AUTH=XOAUTH2"));
        let awaiting = AwaitingTls {
            core: core("STARTTLS"),
        };
        let (_, end) = exchange(awaiting.tls_established(), "A0001 OK\r\n");
        assert!(end.unwrap().capabilities().is_empty());
        let awaiting = AwaitingTls {
            core: core("STARTTLS"),
        };
        let mut run = awaiting.tls_established();
        pump(&mut run, &mut b"A0001 NO no\r\n".to_vec());
        assert_eq!(
            run.secured().unwrap_err(),
            ImapError::Protocol(ProtocolError::Rejected("A0001 NO no".into()))
        );
    }

    fn password(user: &'static str, pw: &'static Secret) -> Login<'static> {
        Login::Password { user, password: pw }
    }

    static PW: std::sync::LazyLock<Secret> = std::sync::LazyLock::new(|| Secret::new("pw"));
    static TOKEN: std::sync::LazyLock<Secret> = std::sync::LazyLock::new(|| Secret::new("tok"));

    #[test]
    fn a_password_goes_as_authenticate_plain_with_sasl_ir() {
        let state = not_authenticated("IMAP4REV1 AUTH=PLAIN SASL-IR");
        let mut run = state.login(&password("bob", &PW));
        assert_eq!(run.during(), "authenticating");
        let mut buf = b"A0001 OK [CAPABILITY IMAP4rev1 MOVE] Logged in\r\n".to_vec();
        let p = pump(&mut run, &mut buf);
        let ir = sasl::plain("bob", &PW);
        assert_eq!(
            p.sent,
            format!("A0001 AUTHENTICATE PLAIN {}\r\n", ir.expose())
        );
        assert_eq!(p.stop, Stop::Done);
        let (state, reply) = run.finish().unwrap();
        assert_eq!(reply, "A0001 OK [CAPABILITY IMAP4rev1 MOVE] Logged in");
        assert_eq!(state.capabilities(), &caps("IMAP4REV1 MOVE"));
    }

    #[test]
    fn without_sasl_ir_the_response_follows_the_continuation_and_capabilities_are_asked() {
        let state = not_authenticated("IMAP4REV1 AUTH=PLAIN");
        let mut run = state.login(&password("bob", &PW));
        let mut buf = Vec::new();
        let p = pump(&mut run, &mut buf);
        assert_eq!(p.sent, "A0001 AUTHENTICATE PLAIN\r\n");
        buf.extend_from_slice(b"+ \r\n");
        let p = pump(&mut run, &mut buf);
        assert_eq!(p.sent, format!("{}\r\n", sasl::plain("bob", &PW).expose()));
        buf.extend_from_slice(b"A0001 OK Logged in\r\n");
        let p = pump(&mut run, &mut buf);
        assert_eq!(
            (p.sent.as_str(), p.stop),
            ("A0002 CAPABILITY\r\n", Stop::NeedMore)
        );
        assert_eq!(run.during(), "CAPABILITY");
        buf.extend_from_slice(b"A0001 OK again\r\n* CAPABILITY IMAP4rev1 IDLE\r\nA0002 OK\r\n");
        assert_eq!(pump(&mut run, &mut buf).stop, Stop::Done);
        let (state, reply) = run.finish().unwrap();
        assert_eq!(reply, "A0001 OK Logged in");
        assert_eq!(state.capabilities(), &caps("IMAP4REV1 IDLE"));
    }

    #[test]
    fn capabilities_refused_after_sign_in_are_fatal() {
        let state = not_authenticated("AUTH=PLAIN SASL-IR");
        let (_, end) = exchange(
            state.login(&password("bob", &PW)),
            "A0001 OK in\r\nA0002 BAD no\r\n",
        );
        assert!(matches!(
            end,
            Err(Failure::Fatal(ImapError::Protocol(
                ProtocolError::CommandRefused(_)
            )))
        ));
    }

    #[test]
    fn untagged_capabilities_during_sign_in_are_the_new_ones() {
        let state = not_authenticated("AUTH=PLAIN SASL-IR");
        let (sent, end) = exchange(
            state.login(&password("bob", &PW)),
            "* CAPABILITY IMAP4rev1 UIDPLUS\r\nA0001 OK in\r\n",
        );
        assert!(!sent.contains("CAPABILITY"), "{sent}");
        assert_eq!(end.unwrap().0.capabilities(), &caps("IMAP4REV1 UIDPLUS"));
    }

    #[test]
    fn a_password_goes_by_login_unless_login_is_disabled_or_cannot_carry_it() {
        let (sent, end) = exchange(
            not_authenticated("IMAP4REV1").login(&password("bob", &PW)),
            "A0001 OK [CAPABILITY IMAP4rev1] in\r\n",
        );
        assert_eq!(sent, "A0001 LOGIN \"bob\" \"pw\"\r\n");
        assert!(end.is_ok());

        let (sent, end) = exchange(
            not_authenticated("IMAP4REV1 LOGINDISABLED").login(&password("bob", &PW)),
            "",
        );
        assert_eq!(sent, "", "nothing is sent");
        let Err(Failure::Refused { state, error }) = end else {
            panic!("not refused");
        };
        assert!(state.capabilities().contains("LOGINDISABLED"));
        assert!(
            matches!(error, ImapError::AuthRefused { ref reply } if reply.contains("LOGINDISABLED"))
        );

        let odd = Secret::new("p\r\nw");
        let (sent, end) = exchange(
            not_authenticated("IMAP4REV1").login(&Login::Password {
                user: "bob",
                password: &odd,
            }),
            "",
        );
        assert_eq!(sent, "");
        assert!(matches!(
            end,
            Err(Failure::Refused { error: ImapError::AuthRefused { ref reply }, .. }) if reply.contains("CR, LF or NUL")
        ));
    }

    #[test]
    fn a_mechanism_the_server_does_not_offer_is_refused_unsent() {
        let login = Login::XOAuth2 {
            user: "bob",
            token: &TOKEN,
        };
        let (sent, end) = exchange(
            not_authenticated("IMAP4REV1 AUTH=PLAIN AUTH=LOGIN SASL-IR").login(&login),
            "",
        );
        assert_eq!(sent, "");
        let Err(Failure::Refused {
            error: ImapError::AuthRefused { reply },
            ..
        }) = end
        else {
            panic!("not refused");
        };
        assert_eq!(
            reply,
            "server does not offer AUTH=XOAUTH2 (it offers: AUTH=LOGIN AUTH=PLAIN)"
        );
    }

    #[test]
    fn a_token_goes_as_xoauth2_or_oauthbearer() {
        let login = Login::XOAuth2 {
            user: "bob",
            token: &TOKEN,
        };
        let (sent, end) = exchange(
            not_authenticated("AUTH=XOAUTH2 SASL-IR").login(&login),
            "A0001 OK [CAPABILITY IMAP4rev1] in\r\n",
        );
        let ir = sasl::xoauth2("bob", &TOKEN);
        assert_eq!(
            sent,
            format!("A0001 AUTHENTICATE XOAUTH2 {}\r\n", ir.expose())
        );
        assert!(end.is_ok());
        let login = Login::OAuthBearer {
            user: "bob",
            token: &TOKEN,
            host: "mail.example",
            port: 993,
        };
        let (sent, end) = exchange(
            not_authenticated("AUTH=OAUTHBEARER SASL-IR").login(&login),
            "A0001 OK [CAPABILITY IMAP4rev1] in\r\n",
        );
        let ir = sasl::oauthbearer("bob", "mail.example", 993, &TOKEN);
        assert_eq!(
            sent,
            format!("A0001 AUTHENTICATE OAUTHBEARER {}\r\n", ir.expose())
        );
        assert!(end.is_ok());
    }

    #[test]
    fn an_error_challenge_is_answered_and_shown_in_the_refusal() {
        for (login, answer) in [
            (
                Login::XOAuth2 {
                    user: "bob",
                    token: &TOKEN,
                },
                "\r\n",
            ),
            (
                Login::OAuthBearer {
                    user: "bob",
                    token: &TOKEN,
                    host: "h",
                    port: 1,
                },
                "AQ==\r\n",
            ),
        ] {
            let state = not_authenticated("AUTH=XOAUTH2 AUTH=OAUTHBEARER SASL-IR");
            let mut run = state.login(&login);
            let mut buf = b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n".to_vec();
            let p = pump(&mut run, &mut buf);
            let first = p.sent.find("\r\n").unwrap() + 2;
            assert_eq!(&p.sent[first..], answer);
            buf.extend_from_slice(b"A0001 NO [AUTHENTICATIONFAILED] bad\r\n");
            assert_eq!(pump(&mut run, &mut buf).stop, Stop::Done);
            let Err(Failure::Refused { error, .. }) = run.finish() else {
                panic!("not refused");
            };
            assert_eq!(
                error,
                ImapError::AuthRefused {
                    reply: "A0001 NO [AUTHENTICATIONFAILED] bad (challenge: {\"status\":\"401\"})"
                        .into()
                }
            );
        }
    }
}
