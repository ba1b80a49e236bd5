//! Greeting, capabilities, STLS and signing in: the way to the transaction state.

use super::*;

/// Reads the greeting and learns the capabilities; on a plain connection then asks for
/// STLS.
#[derive(Debug)]
pub struct Greet {
    stls: bool,
    phase: GreetPhase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GreetPhase {
    Greeting,
    Capa,
    Stls,
}

/// Connection set-up ends in a state without a refusable step: a refusal there is fatal.
impl Run<Greet> {
    /// A session on a connection that is TLS from its first byte.
    pub fn implicit_tls() -> Run<Greet> {
        Self::greet(false)
    }

    /// A session on a plain connection that must be upgraded with STLS before anything
    /// else; it ends in [`AwaitingTls`] or fails.
    pub fn stls() -> Run<Greet> {
        Self::greet(true)
    }

    fn greet(stls: bool) -> Run<Greet> {
        let plan = Greet {
            stls,
            phase: GreetPhase::Greeting,
        };
        Run::new(Core::default(), plan, Ok(Next::Read))
    }

    /// After [`Run::implicit_tls`]: ready to sign in.
    pub fn secured(self) -> Result<Authorization, Pop3Error> {
        match self.finish() {
            Ok(GreetEnd::Secured(s)) => Ok(s),
            Ok(GreetEnd::AwaitingTls(_)) => Err(ProtocolError::Malformed(
                "STLS set-up ended where implicit TLS was expected".into(),
            )
            .into()),
            Err(f) => Err(f.into_error()),
        }
    }

    /// After [`Run::stls`]: STLS accepted, do the handshake.
    pub fn awaiting_tls(self) -> Result<AwaitingTls, Pop3Error> {
        match self.finish() {
            Ok(GreetEnd::AwaitingTls(s)) => Ok(s),
            Ok(GreetEnd::Secured(_)) => Err(Pop3Error::NoStls),
            Err(f) => Err(f.into_error()),
        }
    }
}

/// Where [`Greet`] leads.
#[derive(Debug)]
pub enum GreetEnd {
    Secured(Authorization),
    AwaitingTls(AwaitingTls),
}

impl Plan for Greet {
    type From = Core;
    type To = GreetEnd;
    type Item = Infallible;

    fn during(&self) -> &'static str {
        match self.phase {
            GreetPhase::Greeting => "waiting for the greeting",
            GreetPhase::Capa => "CAPA",
            GreetPhase::Stls => "STLS",
        }
    }

    fn body(&self) -> Option<Body> {
        match self.phase {
            GreetPhase::Capa => CAPA_BODY,
            GreetPhase::Greeting | GreetPhase::Stls => None,
        }
    }

    fn on_reply(
        &mut self,
        core: &mut Core,
        reply: Reply,
        body: Vec<u8>,
    ) -> Result<Next<Infallible>, Pop3Error> {
        match self.phase {
            GreetPhase::Greeting => {
                if !matches!(reply, Reply::Ok(_)) {
                    return Err(ProtocolError::Rejected(reply.line()).into());
                }
                self.phase = GreetPhase::Capa;
                Ok(Next::Send(pop3::capa().to_vec()))
            }
            GreetPhase::Capa => {
                core.caps = capa_reply(&reply, &body);
                if !self.stls {
                    return Ok(Next::Done);
                }
                if !core.has("STLS") {
                    return Err(Pop3Error::NoStls);
                }
                self.phase = GreetPhase::Stls;
                Ok(Next::Send(pop3::stls().to_vec()))
            }
            GreetPhase::Stls => match reply {
                Reply::Ok(_) => Ok(Next::Done),
                other => Err(Pop3Error::StlsRefused { line: other.line() }),
            },
        }
    }

    fn complete(self, mut core: Core) -> GreetEnd {
        if self.stls {
            // Heard over a plain connection, so possibly forged: asked again over TLS.
            core.caps.clear();
            GreetEnd::AwaitingTls(AwaitingTls { core })
        } else {
            GreetEnd::Secured(Authorization { core })
        }
    }
}

/// Learns the capabilities after TLS.
#[derive(Debug)]
pub struct Recapability;

impl AwaitingTls {
    /// The caller completed the TLS handshake: capabilities are asked again over TLS.
    pub fn tls_established(mut self) -> Run<Recapability> {
        self.core.caps.clear();
        Run::new(
            self.core,
            Recapability,
            Ok(Next::Send(pop3::capa().to_vec())),
        )
    }
}

impl Run<Recapability> {
    pub fn secured(self) -> Result<Authorization, Pop3Error> {
        self.finish().map_err(Failure::into_error)
    }
}

impl Plan for Recapability {
    type From = Core;
    type To = Authorization;
    type Item = Infallible;

    fn during(&self) -> &'static str {
        "CAPA"
    }

    fn body(&self) -> Option<Body> {
        CAPA_BODY
    }

    fn on_reply(
        &mut self,
        core: &mut Core,
        reply: Reply,
        body: Vec<u8>,
    ) -> Result<Next<Infallible>, Pop3Error> {
        core.caps = capa_reply(&reply, &body);
        Ok(Next::Done)
    }

    fn complete(self, core: Core) -> Authorization {
        Authorization { core }
    }
}

// ---------------------------------------------------------------------------------------
// Signing in

/// USER and PASS, or AUTH with a SASL mechanism (XOAUTH2, OAUTHBEARER), then the
/// capabilities of the transaction state.
pub struct SignIn {
    phase: SignInPhase,
    /// The line still to send: PASS, or the SASL response at the server's first `+`.
    pending: Option<Secret>,
    oauthbearer: bool,
    /// The decoded error challenge, for the error message.
    challenge: Option<String>,
    /// The server's `+OK` line, handed back on success.
    reply: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignInPhase {
    User,
    Pass,
    Auth,
    Capa,
}

impl Authorization {
    /// Signs in: USER and PASS for a password; `AUTH XOAUTH2` or `AUTH OAUTHBEARER` for a
    /// token, its response sent after the server's `+`. Gives the server's `+OK` line with
    /// the transaction state.
    ///
    /// Some servers list SASL mechanisms only after TLS or not at all (Office 365 before
    /// TLS), so an unlisted mechanism is still tried and the server's answer reported.
    pub fn login(self, login: &Login<'_>) -> Run<SignIn> {
        let mut plan = SignIn {
            phase: SignInPhase::Auth,
            pending: None,
            oauthbearer: login.is_oauthbearer(),
            challenge: None,
            reply: String::new(),
        };
        let first = plan.first(login);
        Run::new(self, plan, first)
    }
}

impl SignIn {
    fn first(&mut self, login: &Login<'_>) -> Result<Next<Infallible>, Pop3Error> {
        let (mechanism, response) = match login {
            Login::Password { user, password } => {
                let (Some(user), Some(pass)) = (pop3::user(user), pop3::pass(password.expose()))
                else {
                    return Ok(Next::Refused(Pop3Error::AuthRefused {
                        reply: "user name or password contains CR, LF or NUL".into(),
                    }));
                };
                self.phase = SignInPhase::User;
                self.pending = Some(line_secret(pass));
                return Ok(Next::Send(user));
            }
            Login::XOAuth2 { user, token } => ("XOAUTH2", sasl::xoauth2(user, token)),
            Login::OAuthBearer {
                user,
                token,
                host,
                port,
            } => ("OAUTHBEARER", sasl::oauthbearer(user, host, *port, token)),
        };
        self.pending = Some(line_secret(pop3::sasl_line(response.expose())));
        Ok(Next::Send(pop3::auth(mechanism)))
    }
}

/// A command line that holds a secret, kept as one until it is sent. The builders make it
/// from text, so nothing is lost in the conversion.
fn line_secret(bytes: Vec<u8>) -> Secret {
    Secret::new(String::from_utf8_lossy(&bytes).into_owned())
}

impl Plan for SignIn {
    type From = Authorization;
    type To = (Transaction, String);
    type Item = Infallible;

    fn during(&self) -> &'static str {
        match self.phase {
            SignInPhase::User => "USER",
            SignInPhase::Pass => "PASS",
            SignInPhase::Auth => "authenticating",
            SignInPhase::Capa => "CAPA",
        }
    }

    fn body(&self) -> Option<Body> {
        match self.phase {
            SignInPhase::Capa => CAPA_BODY,
            SignInPhase::User | SignInPhase::Pass | SignInPhase::Auth => None,
        }
    }

    fn on_reply(
        &mut self,
        core: &mut Core,
        reply: Reply,
        body: Vec<u8>,
    ) -> Result<Next<Infallible>, Pop3Error> {
        match (self.phase, reply) {
            (SignInPhase::Capa, reply) => {
                core.caps = capa_reply(&reply, &body);
                Ok(Next::Done)
            }
            (SignInPhase::User, Reply::Ok(_)) => {
                self.phase = SignInPhase::Pass;
                let pass = self.pending.take().unwrap_or_default();
                Ok(Next::Send(pass.expose().as_bytes().to_vec()))
            }
            (SignInPhase::Auth, Reply::Continue(challenge)) => {
                let line = match self.pending.take() {
                    Some(response) => response.expose().as_bytes().to_vec(),
                    None => {
                        // An error challenge: answer it so the server can fail the command.
                        self.challenge = Some(sasl::describe_challenge(&challenge));
                        pop3::sasl_line(sasl::error_challenge_reply(self.oauthbearer))
                    }
                };
                Ok(Next::Send(line))
            }
            (SignInPhase::Pass | SignInPhase::Auth, Reply::Ok(text)) => {
                // Capabilities change with signing in.
                self.reply = Reply::Ok(text).line();
                self.phase = SignInPhase::Capa;
                Ok(Next::Send(pop3::capa().to_vec()))
            }
            (_, reply) => Ok(Next::Refused(login_refused(&reply, self.challenge.take()))),
        }
    }

    fn complete(self, from: Authorization) -> (Transaction, String) {
        (Transaction { core: from.core }, self.reply)
    }
}
