//! A POP3 session over a [`TlsConn`]: this driver only moves bytes between the connection
//! and the sans-IO session in [`crate::protocol::pop3::session`], which decides what to send
//! and what the answers mean. Here: connecting, the TLS upgrade, timeouts, and turning the
//! protocol's outcomes into [`SessionError`]s that name the server.
//!
//! Invariants as for IMAP: the session holds a [`TlsConn`] from the moment `open` returns,
//! so there is no way to send credentials without TLS; STLS consumes the plain connection.
//! Capabilities learned before STLS are discarded (by the protocol state machine).

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::protocol::pop3::session::{
    self, Authorization, Failure, Plan, Pop3Error, Retrieve, Run, State, Step, Transaction,
};
use crate::protocol::sasl::Login;

use super::{Conn, Connector, Security, SessionError, TlsConn, TlsInfo};

/// Where the session is. The protocol's states are types; this enum holds whichever the
/// last exchange left, so the driver can offer one set of methods.
enum Phase {
    Authorization(Authorization),
    Transaction(Transaction),
    /// RETRs whose messages are read with `retr_reply`.
    Retrieving(Box<Run<Retrieve>>),
    /// An exchange failed and left the connection unusable (or is being run).
    Broken,
}

pub struct Pop3Session {
    conn: TlsConn,
    phase: Phase,
    /// From CAPA in the current state (post-TLS, post-sign-in), for reports. A copy: the
    /// protocol state decides from its own.
    pub capabilities: BTreeSet<String>,
}

/// Pumps one exchange: sends what it asks, reads (with the read timeout) when it needs
/// more. Returns at the exchange's next item, or `None` when it is done.
async fn pump<S, P>(conn: &mut Conn<S>, run: &mut Run<P>) -> Result<Option<P::Item>, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    P: Plan,
{
    loop {
        match run.advance(&mut conn.buf) {
            Step::Send(bytes) => conn.send(&bytes).await?,
            Step::NeedMore { room } => {
                if let Some(end) = room {
                    conn.make_room_for(end);
                }
                conn.fill(run.during()).await?
            }
            Step::Item(item) => return Ok(Some(item)),
            Step::Done => return Ok(None),
        }
    }
}

/// A protocol outcome as a session error naming `server`.
fn session_error(server: &str, e: Pop3Error) -> SessionError {
    let server = server.to_string();
    match e {
        Pop3Error::Protocol(source) => SessionError::Protocol { server, source },
        Pop3Error::Throttled { line, backoff } => SessionError::Throttled {
            server,
            reply: line,
            backoff: Some(backoff),
        },
        Pop3Error::AuthRefused { reply } => SessionError::Auth { server, reply },
        Pop3Error::Unavailable { reply } => SessionError::Unavailable { server, reply },
        e @ (Pop3Error::NoStls | Pop3Error::StlsRefused { .. }) => SessionError::Tls {
            server,
            detail: e.to_string(),
        },
    }
}

impl Pop3Session {
    /// Connects, reads the greeting, upgrades with STLS when asked and learns the
    /// capabilities. Fails before any credential is sent if TLS cannot be had.
    pub async fn open(
        connector: &Connector,
        host: &str,
        port: u16,
        security: Security,
    ) -> Result<Pop3Session, SessionError> {
        let (conn, state) = match security {
            Security::Tls => {
                let mut conn = connector.connect_tls(host, port).await?;
                let mut run = Run::implicit_tls();
                pump(&mut conn, &mut run).await?;
                let state = run.secured().map_err(|e| session_error(&conn.server, e))?;
                (conn, state)
            }
            Security::StartTls => {
                let mut plain = connector.connect_plain(host, port).await?;
                let mut run = Run::stls();
                pump(&mut plain, &mut run).await?;
                let awaiting = run
                    .awaiting_tls()
                    .map_err(|e| session_error(&plain.server, e))?;
                let mut conn = connector.upgrade(plain, host).await?;
                let mut run = awaiting.tls_established();
                pump(&mut conn, &mut run).await?;
                let state = run.secured().map_err(|e| session_error(&conn.server, e))?;
                (conn, state)
            }
        };
        Ok(Pop3Session {
            capabilities: state.capabilities().clone(),
            conn,
            phase: Phase::Authorization(state),
        })
    }

    pub fn server(&self) -> &str {
        &self.conn.server
    }

    /// Always `Some`: a session is TLS once open.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        Some(self.conn.tls_info())
    }

    fn error(&self, e: Pop3Error) -> SessionError {
        session_error(&self.conn.server, e)
    }

    /// The error for a method called in a state it has no meaning in, or after a failure
    /// that left the connection unusable.
    fn unusable(&self, what: &str) -> SessionError {
        SessionError::Closed {
            server: self.conn.server.clone(),
            last: format!(": the session cannot {what} now (an earlier step failed)"),
        }
    }

    /// Runs an exchange to its end; a refusal puts the state it came from back.
    async fn run<P: Plan>(
        &mut self,
        mut run: Run<P>,
        back: fn(P::From) -> Phase,
    ) -> Result<P::To, SessionError> {
        self.phase = Phase::Broken;
        pump(&mut self.conn, &mut run).await?;
        run.finish().map_err(|f| self.failed(f, back))
    }

    fn failed<S>(&mut self, failure: Failure<S>, back: fn(S) -> Phase) -> SessionError {
        match failure {
            Failure::Refused { state, error } => {
                self.phase = back(state);
                self.error(error)
            }
            Failure::Fatal(error) => self.error(error),
        }
    }

    /// The transaction state, also after RETRs whose replies have all been read.
    fn take_transaction(&mut self, what: &str) -> Result<Transaction, SessionError> {
        match std::mem::replace(&mut self.phase, Phase::Broken) {
            Phase::Transaction(s) => Ok(s),
            Phase::Retrieving(run) => run.finish().map_err(|f| self.failed(f, Phase::Transaction)),
            other => {
                self.phase = other;
                Err(self.unusable(what))
            }
        }
    }

    /// Signs in. Returns the server's `+OK` line.
    pub async fn login(&mut self, login: &Login<'_>) -> Result<String, SessionError> {
        let state = match std::mem::replace(&mut self.phase, Phase::Broken) {
            Phase::Authorization(s) => s,
            other => {
                self.phase = other;
                return Err(self.unusable("sign in"));
            }
        };
        let (state, line) = self.run(state.login(login), Phase::Authorization).await?;
        self.capabilities = state.capabilities().clone();
        self.phase = Phase::Transaction(state);
        Ok(line)
    }

    /// `(message number, unique id)` for every message in the maildrop.
    pub async fn uidl(&mut self) -> Result<Vec<(u32, String)>, SessionError> {
        let state = self.take_transaction("list unique ids")?;
        let (state, uidl) = self.run(state.uidl(), Phase::Transaction).await?;
        self.phase = Phase::Transaction(state);
        Ok(uidl)
    }

    /// `(message number, size)` for every message.
    pub async fn list(&mut self) -> Result<Vec<(u32, u64)>, SessionError> {
        let state = self.take_transaction("list messages")?;
        let (state, list) = self.run(state.list(), Phase::Transaction).await?;
        self.phase = Phase::Transaction(state);
        Ok(list)
    }

    /// Whether the server takes commands before it has answered the ones before them
    /// (RFC 2449 `PIPELINING`).
    pub fn pipelining(&self) -> bool {
        self.capabilities.contains("PIPELINING")
    }

    /// Asks for `messages` (number, size from LIST), each capped at `limit` bytes: their
    /// RETRs are sent now in one write when the server allows pipelining ([`Self::pipelining`]),
    /// else one at a time as replies are read. Read the replies, in order, with
    /// [`Pop3Session::retr_reply`].
    pub async fn send_retrs(
        &mut self,
        messages: &[(u32, u64)],
        limit: u64,
    ) -> Result<(), SessionError> {
        let mut run = match std::mem::replace(&mut self.phase, Phase::Broken) {
            Phase::Transaction(s) => Box::new(s.retrieve(messages, limit)),
            Phase::Retrieving(mut run) => {
                run.request(messages);
                run
            }
            other => {
                self.phase = other;
                return Err(self.unusable("retrieve messages"));
            }
        };
        let due = run.to_send();
        self.phase = Phase::Retrieving(run);
        if let Some(bytes) = due {
            self.conn.send(&bytes).await?;
        }
        Ok(())
    }

    /// The reply to the oldest message asked for with [`Pop3Session::send_retrs`] and not
    /// yet read: the message, dot-unstuffed, exactly as the server sent it otherwise.
    pub async fn retr_reply(&mut self) -> Result<Vec<u8>, SessionError> {
        let Phase::Retrieving(run) = &mut self.phase else {
            return Err(self.unusable("read a message"));
        };
        match pump(&mut self.conn, run.as_mut()).await {
            Ok(Some(message)) => return Ok(message),
            Ok(None) => {}
            Err(e) => {
                self.phase = Phase::Broken;
                return Err(e);
            }
        }
        // Done without a message: refused, or nothing was asked for.
        let state = self.take_transaction("read a message")?;
        self.phase = Phase::Transaction(state);
        Err(self.unusable("read a message that was not asked for"))
    }

    /// `DELE n`: marks a message; the server deletes it at QUIT (a dropped session deletes
    /// nothing).
    pub async fn dele(&mut self, n: u32) -> Result<(), SessionError> {
        let state = self.take_transaction("delete a message")?;
        let (state, ()) = self.run(state.dele(n), Phase::Transaction).await?;
        self.phase = Phase::Transaction(state);
        Ok(())
    }

    /// `TOP n 0`: the header of message `n` (for `test-login`).
    pub async fn top_header(&mut self, n: u32) -> Result<Vec<u8>, SessionError> {
        let state = self.take_transaction("read a header")?;
        let (state, header) = self.run(state.top_header(n), Phase::Transaction).await?;
        self.phase = Phase::Transaction(state);
        Ok(header)
    }

    /// QUIT, and an error when the server does not confirm it (then DELEs may not have
    /// taken effect; they are redone next session).
    pub async fn quit_checked(mut self) -> Result<(), SessionError> {
        let phase = std::mem::replace(&mut self.phase, Phase::Broken);
        let said = self.quit_from(phase).await;
        self.conn.shutdown().await;
        match said? {
            true => Ok(()),
            false => Err(self.unusable("quit")),
        }
    }

    /// QUIT: ends the session (and, on a server, commits any DELE), best effort.
    pub async fn quit(mut self) {
        let phase = std::mem::replace(&mut self.phase, Phase::Broken);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.quit_from(phase)).await;
        self.conn.shutdown().await;
    }

    /// QUIT from whatever state `phase` holds; `Ok(false)` when none can say it.
    async fn quit_from(&mut self, phase: Phase) -> Result<bool, SessionError> {
        match phase {
            Phase::Authorization(s) => self.quit_state(s).await.map(|()| true),
            Phase::Transaction(s) => self.quit_state(s).await.map(|()| true),
            Phase::Retrieving(run) => match run.finish() {
                Ok(s) => self.quit_state(s).await.map(|()| true),
                // RETR replies still on their way: nothing sensible can be said.
                Err(_) => Ok(false),
            },
            Phase::Broken => Ok(false),
        }
    }

    async fn quit_state<S: State>(&mut self, state: S) -> Result<(), SessionError> {
        let mut run = session::quit(state);
        pump(&mut self.conn, &mut run).await?;
        run.finish()
            .map(|session::Closed| ())
            .map_err(|f| self.error(f.into_error()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProtocolError;

    /// Every protocol outcome gets the error kind (and so the metric label and retry
    /// decision) IMAP gives the same outcome.
    #[test]
    fn outcomes_map_to_the_same_error_kinds_as_imap() {
        use crate::telemetry::ErrorKind;
        let cases = [
            (
                Pop3Error::Protocol(ProtocolError::Rejected("x".into())),
                ErrorKind::Protocol,
            ),
            (
                Pop3Error::Throttled {
                    line: "x".into(),
                    backoff: Duration::from_millis(5),
                },
                ErrorKind::Throttled,
            ),
            (
                Pop3Error::AuthRefused { reply: "x".into() },
                ErrorKind::Auth,
            ),
            (
                Pop3Error::Unavailable { reply: "x".into() },
                ErrorKind::Connect,
            ),
            (Pop3Error::NoStls, ErrorKind::Tls),
            (Pop3Error::StlsRefused { line: "x".into() }, ErrorKind::Tls),
        ];
        for (e, kind) in cases {
            assert_eq!(session_error("h:1", e.clone()).kind(), kind, "{e:?}");
        }
        let e = session_error(
            "h:1",
            Pop3Error::StlsRefused {
                line: "-ERR no TLS here".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "h:1: TLS failed: STLS refused: -ERR no TLS here"
        );
        let e = session_error(
            "h:1",
            Pop3Error::AuthRefused {
                reply: "-ERR [AUTH] failed".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "h:1: authentication refused: -ERR [AUTH] failed"
        );
    }
}
