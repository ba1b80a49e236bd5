//! An IMAP session over a [`TlsConn`]: this driver only moves bytes between the connection
//! and the sans-IO session in [`crate::protocol::imap::session`], which decides what to send
//! and what the answers mean. Here: connecting, the TLS upgrade, timeouts, and turning the
//! protocol's outcomes into [`SessionError`]s that name the server.
//!
//! Invariants: the session holds a [`TlsConn`] from the moment `open` returns, so there is
//! no way to send credentials without TLS; STARTTLS consumes the plain connection.
//! Capabilities learned before STARTTLS are discarded (by the protocol state machine).

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::protocol::imap::Fetched;
use crate::protocol::imap::session::{
    self, Authenticated, Failure, FetchBodies, ImapError, MailboxStatus, NotAuthenticated, Plan,
    Run, Selected, State, Step,
};

pub use crate::protocol::imap::session::{IdleWake, PostAction};
pub use crate::protocol::sasl::Login;

use super::{Conn, Connector, Security, SessionError, TlsConn, TlsInfo};

/// Where the session is. The protocol's states are types; this enum holds whichever the
/// last exchange left, so the driver can offer one set of methods.
enum Phase {
    NotAuthenticated(NotAuthenticated),
    Authenticated(Authenticated),
    Selected(Selected),
    /// A UID FETCH whose messages are read with `next_fetched`.
    Fetching(Box<Run<FetchBodies>>),
    /// An exchange failed and left the connection unusable (or is being run).
    Broken,
}

pub struct ImapSession {
    conn: TlsConn,
    phase: Phase,
    /// Upper-cased capability atoms of the current (post-TLS, post-auth) state, for reports.
    /// A copy: the protocol state decides from its own.
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
            Step::Waiting => conn.fill(run.during()).await?,
            Step::Item(item) => return Ok(Some(item)),
            Step::Done => return Ok(None),
        }
    }
}

/// A protocol outcome as a session error naming `server`.
fn session_error(server: &str, e: ImapError) -> SessionError {
    let server = server.to_string();
    match e {
        ImapError::Protocol(source) => SessionError::Protocol { server, source },
        ImapError::Bye { line } => SessionError::Closed {
            server,
            last: format!(": {line}"),
        },
        ImapError::TokenExpired { line } => SessionError::Auth {
            server,
            reply: line,
        },
        ImapError::Throttled { line, backoff } => SessionError::Throttled {
            server,
            reply: line,
            backoff: Some(backoff),
        },
        ImapError::AuthRefused { reply } => SessionError::Auth { server, reply },
        ImapError::Unavailable { reply } => SessionError::Unavailable { server, reply },
        e @ (ImapError::NoStartTls | ImapError::StartTlsRefused { .. }) => SessionError::Tls {
            server,
            detail: e.to_string(),
        },
    }
}

impl ImapSession {
    /// Connects, reads the greeting, upgrades with STARTTLS when asked and learns the
    /// capabilities. Fails before any credential is sent if TLS cannot be had.
    pub async fn open(
        connector: &Connector,
        host: &str,
        port: u16,
        security: Security,
        max_literal: u64,
    ) -> Result<ImapSession, SessionError> {
        let (conn, state) = match security {
            Security::Tls => {
                let mut conn = connector.connect_tls(host, port).await?;
                let mut run = Run::implicit_tls(max_literal);
                pump(&mut conn, &mut run).await?;
                let state = run.secured().map_err(|e| session_error(&conn.server, e))?;
                (conn, state)
            }
            Security::StartTls => {
                let mut plain = connector.connect_plain(host, port).await?;
                let mut run = Run::starttls(max_literal);
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
        Ok(ImapSession {
            capabilities: state.capabilities().clone(),
            conn,
            phase: Phase::NotAuthenticated(state),
        })
    }

    pub fn server(&self) -> &str {
        &self.conn.server
    }

    /// Always `Some`: a session is TLS once open.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        Some(self.conn.tls_info())
    }

    fn error(&self, e: ImapError) -> SessionError {
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

    fn take_selected(&mut self, what: &str) -> Result<Selected, SessionError> {
        match std::mem::replace(&mut self.phase, Phase::Broken) {
            Phase::Selected(s) => Ok(s),
            other => {
                self.phase = other;
                Err(self.unusable(what))
            }
        }
    }

    /// Authenticates. Returns the server's tagged OK line.
    pub async fn login(&mut self, login: &Login<'_>) -> Result<String, SessionError> {
        let state = match std::mem::replace(&mut self.phase, Phase::Broken) {
            Phase::NotAuthenticated(s) => s,
            other => {
                self.phase = other;
                return Err(self.unusable("sign in"));
            }
        };
        let (state, line) = self
            .run(state.login(login), Phase::NotAuthenticated)
            .await?;
        self.capabilities = state.capabilities().clone();
        self.phase = Phase::Authenticated(state);
        Ok(line)
    }

    /// SELECT (or EXAMINE when `read_only`) a folder. Refused, the session stays signed in
    /// with no folder selected.
    pub async fn select(
        &mut self,
        folder: &str,
        read_only: bool,
    ) -> Result<MailboxStatus, SessionError> {
        let run = match std::mem::replace(&mut self.phase, Phase::Broken) {
            Phase::Authenticated(s) => s.select(folder, read_only),
            Phase::Selected(s) => s.select(folder, read_only),
            other => {
                self.phase = other;
                return Err(self.unusable("select a folder"));
            }
        };
        let selected = self.run(run, Phase::Authenticated).await?;
        let mailbox = selected.mailbox();
        self.phase = Phase::Selected(selected);
        Ok(mailbox)
    }

    /// UIDs in `from..=to` (`to = None`: to the end) with their RFC822.SIZE, ascending.
    /// `UID FETCH n:*` always returns the highest message even below `n`, so results are
    /// filtered.
    pub async fn uids_between(
        &mut self,
        from: u32,
        to: Option<u32>,
    ) -> Result<Vec<(u32, u32)>, SessionError> {
        let state = self.take_selected("list UIDs")?;
        let (state, uids) = self
            .run(state.uids_between(from, to), Phase::Selected)
            .await?;
        self.phase = Phase::Selected(state);
        Ok(uids)
    }

    /// Starts `UID FETCH <set> (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])`; read the
    /// messages with [`ImapSession::next_fetched`].
    pub async fn start_fetch(&mut self, uids: &[u32]) -> Result<(), SessionError> {
        let mut run = Box::new(self.take_selected("fetch")?.fetch(uids));
        // Send the command; the answer is read by next_fetched.
        if let Step::Send(bytes) = run.advance(&mut self.conn.buf) {
            self.conn.send(&bytes).await?;
        }
        self.phase = Phase::Fetching(run);
        Ok(())
    }

    /// The next fetched message with a body, or `None` when the FETCH completed.
    pub async fn next_fetched(&mut self) -> Result<Option<Fetched>, SessionError> {
        let Phase::Fetching(run) = &mut self.phase else {
            return Ok(None);
        };
        match pump(&mut self.conn, run.as_mut()).await {
            Ok(Some(fetched)) => return Ok(Some(fetched)),
            Ok(None) => {}
            Err(e) => {
                self.phase = Phase::Broken;
                return Err(e);
            }
        }
        let Phase::Fetching(run) = std::mem::replace(&mut self.phase, Phase::Broken) else {
            return Ok(None);
        };
        let state = run.finish().map_err(|f| self.failed(f, Phase::Selected))?;
        self.phase = Phase::Selected(state);
        Ok(None)
    }

    /// The header of the message with the highest UID (for `test-login`), or `None` when the
    /// folder is empty.
    pub async fn last_header(
        &mut self,
        _selected: &MailboxStatus,
    ) -> Result<Option<Vec<u8>>, SessionError> {
        let state = self.take_selected("fetch a header")?;
        let (state, header) = self.run(state.last_header(), Phase::Selected).await?;
        self.phase = Phase::Selected(state);
        Ok(header)
    }

    /// Whether `after_ingest` can be done safely on this server, and why not.
    pub fn check_post_action(&self, action: PostAction) -> Result<(), SessionError> {
        let caps = match &self.phase {
            Phase::NotAuthenticated(s) => s.capabilities(),
            Phase::Authenticated(s) => s.capabilities(),
            Phase::Selected(s) => s.capabilities(),
            Phase::Fetching(run) => run.capabilities(),
            Phase::Broken => &self.capabilities,
        };
        session::check_post_action(caps, action).map_err(|e| self.error(e))
    }

    /// Applies `after_ingest` to stored messages: `\Seen`, move to `move_to`, or delete.
    /// The caller has made them durable first.
    pub async fn post_action(
        &mut self,
        action: PostAction,
        uids: &[u32],
        move_to: Option<&str>,
    ) -> Result<(), SessionError> {
        if uids.is_empty() || action == PostAction::Keep {
            return Ok(());
        }
        let state = self.take_selected("act on messages")?;
        let state = self
            .run(state.post_action(action, uids, move_to), Phase::Selected)
            .await?;
        self.phase = Phase::Selected(state);
        Ok(())
    }

    /// Whether the server offers IDLE (RFC 2177).
    pub fn supports_idle(&self) -> bool {
        self.capabilities.contains("IDLE")
    }

    /// The selectable folders matching `pattern` (`LIST "" pattern`), in the server's order.
    pub async fn list(&mut self, pattern: &str) -> Result<Vec<String>, SessionError> {
        match std::mem::replace(&mut self.phase, Phase::Broken) {
            Phase::Authenticated(s) => {
                let (s, names) = self
                    .run(session::list(s, pattern), Phase::Authenticated)
                    .await?;
                self.phase = Phase::Authenticated(s);
                Ok(names)
            }
            Phase::Selected(s) => {
                let (s, names) = self.run(session::list(s, pattern), Phase::Selected).await?;
                self.phase = Phase::Selected(s);
                Ok(names)
            }
            other => {
                self.phase = other;
                Err(self.unusable("list folders"))
            }
        }
    }

    /// Sits in IDLE on the selected folder until the server reports new mail (EXISTS),
    /// `until` passes, or `stop` completes; then ends IDLE with DONE and reads the command's
    /// completion, so the session is ready for the next command.
    pub async fn idle(
        &mut self,
        until: tokio::time::Instant,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<IdleWake, SessionError> {
        let mut run = self.take_selected("wait in IDLE")?.idle();
        let mut stop = std::pin::pin!(stop);
        loop {
            match run.advance(&mut self.conn.buf) {
                Step::Send(bytes) => self.conn.send(&bytes).await?,
                Step::NeedMore { room } => {
                    if let Some(end) = room {
                        self.conn.make_room_for(end);
                    }
                    self.conn.fill(run.during()).await?
                }
                // Silence is the normal state here: no read timeout, the caller's deadline.
                Step::Waiting => tokio::select! {
                    r = self.conn.fill_untimed() => r?,
                    _ = tokio::time::sleep_until(until) => run.wake(IdleWake::Timeout),
                    _ = &mut stop => run.wake(IdleWake::Stopped),
                },
                Step::Item(never) => match never {},
                Step::Done => break,
            }
        }
        let (state, wake) = run.finish().map_err(|f| self.failed(f, Phase::Selected))?;
        self.phase = Phase::Selected(state);
        Ok(wake)
    }

    /// LOGOUT and close, best effort: the data is already safe when this runs.
    pub async fn logout(mut self) {
        let phase = std::mem::replace(&mut self.phase, Phase::Broken);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            match phase {
                Phase::NotAuthenticated(s) => self.logout_from(s).await,
                Phase::Authenticated(s) => self.logout_from(s).await,
                Phase::Selected(s) => self.logout_from(s).await,
                // Mid-FETCH or broken: nothing sensible can be said to the server.
                Phase::Fetching(_) | Phase::Broken => {}
            }
        })
        .await;
        self.conn.shutdown().await;
    }

    async fn logout_from<S: State>(&mut self, state: S) {
        let mut run = session::logout(state);
        let _ = pump(&mut self.conn, &mut run).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ProtocolError;

    /// Every protocol outcome keeps the error kind (and so the metric label and retry
    /// decision) it had when the driver decided it itself.
    #[test]
    fn outcomes_map_to_the_same_error_kinds() {
        use crate::telemetry::ErrorKind;
        let cases = [
            (
                ImapError::Protocol(ProtocolError::Rejected("x".into())),
                ErrorKind::Protocol,
            ),
            (ImapError::Bye { line: "x".into() }, ErrorKind::Connect),
            (
                ImapError::TokenExpired { line: "x".into() },
                ErrorKind::Auth,
            ),
            (
                ImapError::Throttled {
                    line: "x".into(),
                    backoff: Duration::from_millis(5),
                },
                ErrorKind::Throttled,
            ),
            (
                ImapError::AuthRefused { reply: "x".into() },
                ErrorKind::Auth,
            ),
            (
                ImapError::Unavailable { reply: "x".into() },
                ErrorKind::Connect,
            ),
            (ImapError::NoStartTls, ErrorKind::Tls),
            (
                ImapError::StartTlsRefused { line: "x".into() },
                ErrorKind::Tls,
            ),
        ];
        for (e, kind) in cases {
            assert_eq!(session_error("h:1", e.clone()).kind(), kind, "{e:?}");
        }
        let e = session_error(
            "h:1",
            ImapError::StartTlsRefused {
                line: "A2 NO not now".into(),
            },
        );
        assert_eq!(
            e.to_string(),
            "h:1: TLS failed: STARTTLS refused: A2 NO not now"
        );
    }
}
