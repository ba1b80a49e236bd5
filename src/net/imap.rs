//! An IMAP session over a [`Conn`]: greeting, STARTTLS, capabilities, SASL, SELECT and UID
//! FETCH, driven through the sans-IO code in `protocol::imap`.
//!
//! Invariants: credentials are only ever written on a TLS connection; capabilities learned
//! before STARTTLS are discarded; a SASL error challenge is always answered (never waited
//! out); message bodies are taken from the literal, whatever RFC822.SIZE said.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::config::{AfterIngest, Security};
use crate::protocol::imap::{
    Command, Commands, Completion, DEFAULT_MAX_LINE, Fetched, Framer, ResponseCode, ServerResponse,
    parse_greeting, parse_response, parse_response_owned,
};
use crate::protocol::{ProtocolError, sasl};
use crate::secret::Secret;

use super::{Conn, Connector, SessionError, TlsInfo};

/// How to sign in.
#[derive(Debug)]
pub enum Login<'a> {
    Password {
        user: &'a str,
        password: &'a Secret,
    },
    XOAuth2 {
        user: &'a str,
        token: &'a Secret,
    },
    OAuthBearer {
        user: &'a str,
        token: &'a Secret,
        host: &'a str,
        port: u16,
    },
}

/// What SELECT told us about a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    pub uidvalidity: u32,
    pub uidnext: Option<u32>,
    pub exists: u32,
}

/// Why an IDLE wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleWake {
    /// The server reported EXISTS: new mail in the selected folder.
    NewMail,
    /// The deadline passed (re-issue IDLE, poll other folders or re-open the session).
    Timeout,
    /// The caller asked to stop.
    Stopped,
}

pub struct ImapSession {
    conn: Conn,
    framer: Framer,
    cmds: Commands,
    /// Upper-cased capability atoms from the current (post-TLS, post-auth) state.
    pub capabilities: BTreeSet<String>,
    /// Tag of a UID FETCH whose responses are being streamed by `next_fetched`.
    pending_fetch: Option<String>,
}

/// Office 365: `Request is throttled. Suggested Backoff Time: 1234 milliseconds`.
pub fn suggested_backoff(line: &str) -> Option<Duration> {
    let lower = line.to_ascii_lowercase();
    let at = lower.find("suggested backoff time:")?;
    let rest = &lower[at + "suggested backoff time:".len()..];
    let ms: u64 = rest
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms))
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
        let conn = match security {
            Security::Tls => connector.connect_tls(host, port).await?,
            Security::StartTls => connector.connect_plain(host, port).await?,
        };
        let mut session = ImapSession {
            conn,
            framer: Framer::new(DEFAULT_MAX_LINE, max_literal),
            cmds: Commands::default(),
            capabilities: BTreeSet::new(),
            pending_fetch: None,
        };
        let greeting_caps = session.greeting().await?;
        if security == Security::StartTls {
            let caps = session.fetch_capabilities().await?;
            if !caps.contains("STARTTLS") {
                return Err(SessionError::Tls {
                    server: session.conn.server.clone(),
                    detail: "server does not offer STARTTLS; refusing to continue without TLS"
                        .into(),
                });
            }
            let cmd = session.cmds.starttls();
            let (_, completion, line) = session.run(cmd, "STARTTLS").await?;
            if completion != Completion::Ok {
                return Err(SessionError::Tls {
                    server: session.conn.server.clone(),
                    detail: format!("STARTTLS refused: {line}"),
                });
            }
            let conn = std::mem::replace(&mut session.conn, super::imap_placeholder());
            session.conn = connector.upgrade(conn, host).await?;
            // Capabilities from before TLS may have been forged: forget them.
            session.capabilities = session.fetch_capabilities().await?;
        } else {
            session.capabilities = match greeting_caps {
                Some(caps) => caps,
                None => session.fetch_capabilities().await?,
            };
        }
        Ok(session)
    }

    pub fn server(&self) -> &str {
        &self.conn.server
    }

    pub fn tls_info(&self) -> Option<&TlsInfo> {
        self.conn.tls.as_ref()
    }

    async fn greeting(&mut self) -> Result<Option<BTreeSet<String>>, SessionError> {
        let frame = self.read_frame_bytes("waiting for the greeting").await?;
        let (_ok, caps) = parse_greeting(&frame).map_err(|e| self.conn.protocol_error(e))?;
        Ok(caps)
    }

    async fn read_frame_bytes(&mut self, during: &'static str) -> Result<Vec<u8>, SessionError> {
        loop {
            match self.framer.next_frame(&self.conn.buf) {
                Ok(Some(n)) => return Ok(self.conn.take_front(n)),
                Ok(None) => {
                    if let Some(end) = self.framer.literal_end(self.conn.buf.len()) {
                        self.conn.make_room_for(end);
                    }
                    self.conn.fill(during).await?
                }
                Err(e) => return Err(self.conn.protocol_error(e)),
            }
        }
    }

    async fn read_response(
        &mut self,
        during: &'static str,
    ) -> Result<ServerResponse, SessionError> {
        let frame = self.read_frame_bytes(during).await?;
        parse_response_owned(frame).map_err(|e| self.conn.protocol_error(e))
    }

    /// Sends a command and collects responses until its tagged completion. A BYE ends the
    /// session with an error carrying the server's words.
    async fn run(
        &mut self,
        cmd: Command,
        during: &'static str,
    ) -> Result<(Vec<ServerResponse>, Completion, String), SessionError> {
        self.conn.send(&cmd.bytes).await?;
        let mut untagged = Vec::new();
        loop {
            match self.read_response(during).await? {
                ServerResponse::Tagged {
                    tag,
                    completion,
                    code,
                    line,
                } if tag == cmd.tag => {
                    if let Some(ResponseCode::Capabilities(c)) = code {
                        untagged.push(ServerResponse::Capabilities(c));
                    }
                    return Ok((untagged, completion, line));
                }
                ServerResponse::Bye { line } => return Err(self.bye(line)),
                other => untagged.push(other),
            }
        }
    }

    fn bye(&self, line: String) -> SessionError {
        if let Some(backoff) = suggested_backoff(&line) {
            return SessionError::Throttled {
                server: self.conn.server.clone(),
                reply: line,
                backoff: Some(backoff),
            };
        }
        if line.contains("AccessTokenExpired") {
            return SessionError::Auth {
                server: self.conn.server.clone(),
                reply: line,
            };
        }
        SessionError::Closed {
            server: self.conn.server.clone(),
            last: format!(": {line}"),
        }
    }

    fn refused(&self, line: String) -> SessionError {
        if let Some(backoff) = suggested_backoff(&line) {
            return SessionError::Throttled {
                server: self.conn.server.clone(),
                reply: line,
                backoff: Some(backoff),
            };
        }
        self.conn.protocol_error(ProtocolError::Rejected(line))
    }

    async fn fetch_capabilities(&mut self) -> Result<BTreeSet<String>, SessionError> {
        let cmd = self.cmds.capability();
        let (untagged, completion, line) = self.run(cmd, "CAPABILITY").await?;
        if completion != Completion::Ok {
            return Err(self.refused(line));
        }
        let mut caps = BTreeSet::new();
        for r in untagged {
            if let ServerResponse::Capabilities(c) = r {
                caps.extend(c);
            }
        }
        Ok(caps)
    }

    /// Authenticates. Returns the server's tagged OK line.
    pub async fn login(&mut self, login: &Login<'_>) -> Result<String, SessionError> {
        if !self.conn.is_tls() {
            // Unreachable by construction (open() always ends on TLS); kept as a guard.
            return Err(SessionError::Tls {
                server: self.conn.server.clone(),
                detail: "refusing to send credentials without TLS".into(),
            });
        }
        let (mechanism, response, oauthbearer) = match login {
            Login::Password { user, password } => {
                if !self.capabilities.contains("AUTH=PLAIN") {
                    return self.plain_login(user, password).await;
                }
                ("PLAIN", sasl::plain(user, password), false)
            }
            Login::XOAuth2 { user, token } => ("XOAUTH2", sasl::xoauth2(user, token), false),
            Login::OAuthBearer {
                user,
                token,
                host,
                port,
            } => (
                "OAUTHBEARER",
                sasl::oauthbearer(user, host, *port, token),
                true,
            ),
        };
        if !self.capabilities.contains(&format!("AUTH={mechanism}")) {
            return Err(SessionError::Auth {
                server: self.conn.server.clone(),
                reply: format!(
                    "server does not offer AUTH={mechanism} (it offers: {})",
                    self.capabilities
                        .iter()
                        .filter(|c| c.starts_with("AUTH="))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            });
        }
        let sasl_ir = self.capabilities.contains("SASL-IR");
        let cmd = self
            .cmds
            .authenticate(mechanism, sasl_ir.then_some(response.expose()));
        let tag = cmd.tag.clone();
        self.conn.send(&cmd.bytes).await?;
        let mut initial_pending = !sasl_ir;
        let mut challenge_text = None;
        loop {
            match self.read_response("authenticating").await? {
                ServerResponse::Continue(challenge) => {
                    if initial_pending {
                        initial_pending = false;
                        let line = format!("{}\r\n", response.expose());
                        self.conn.send(line.as_bytes()).await?;
                    } else {
                        // An error challenge: answer it so the server can fail the command.
                        challenge_text = Some(sasl::describe_challenge(&challenge));
                        let reply = format!("{}\r\n", sasl::error_challenge_reply(oauthbearer));
                        self.conn.send(reply.as_bytes()).await?;
                    }
                }
                ServerResponse::Tagged {
                    tag: t,
                    completion,
                    code,
                    line,
                } if t == tag => {
                    if completion == Completion::Ok {
                        self.after_login(code).await?;
                        return Ok(line);
                    }
                    if let Some(backoff) = suggested_backoff(&line) {
                        return Err(SessionError::Throttled {
                            server: self.conn.server.clone(),
                            reply: line,
                            backoff: Some(backoff),
                        });
                    }
                    if line.to_ascii_uppercase().contains("[UNAVAILABLE]") {
                        return Err(SessionError::Unavailable {
                            server: self.conn.server.clone(),
                            reply: line,
                        });
                    }
                    let reply = match challenge_text {
                        Some(c) if !c.is_empty() => format!("{line} (challenge: {c})"),
                        _ => line,
                    };
                    return Err(SessionError::Auth {
                        server: self.conn.server.clone(),
                        reply,
                    });
                }
                ServerResponse::Bye { line } => return Err(self.bye(line)),
                _ => {}
            }
        }
    }

    async fn plain_login(&mut self, user: &str, password: &Secret) -> Result<String, SessionError> {
        if self.capabilities.contains("LOGINDISABLED") {
            return Err(SessionError::Auth {
                server: self.conn.server.clone(),
                reply: "server offers neither AUTH=PLAIN nor LOGIN (LOGINDISABLED)".into(),
            });
        }
        let Some(cmd) = self.cmds.login(user, password.expose()) else {
            return Err(SessionError::Auth {
                server: self.conn.server.clone(),
                reply: "user name or password contains CR, LF or NUL and cannot be sent with LOGIN"
                    .into(),
            });
        };
        let (untagged, completion, line) = self.run(cmd, "LOGIN").await?;
        if completion != Completion::Ok && line.to_ascii_uppercase().contains("[UNAVAILABLE]") {
            return Err(SessionError::Unavailable {
                server: self.conn.server.clone(),
                reply: line,
            });
        }
        if completion != Completion::Ok {
            return Err(SessionError::Auth {
                server: self.conn.server.clone(),
                reply: line,
            });
        }
        let code = untagged.into_iter().find_map(|r| match r {
            ServerResponse::Capabilities(c) => Some(ResponseCode::Capabilities(c)),
            _ => None,
        });
        self.after_login(code).await?;
        Ok(line)
    }

    async fn after_login(&mut self, code: Option<ResponseCode>) -> Result<(), SessionError> {
        self.capabilities = match code {
            Some(ResponseCode::Capabilities(c)) => c,
            _ => self.fetch_capabilities().await?,
        };
        Ok(())
    }

    /// SELECT (or EXAMINE when `read_only`) a folder.
    pub async fn select(
        &mut self,
        folder: &str,
        read_only: bool,
    ) -> Result<Selected, SessionError> {
        let cmd = self.cmds.select(folder, read_only);
        let (untagged, completion, line) = self.run(cmd, "SELECT").await?;
        if completion != Completion::Ok {
            return Err(self.refused(line));
        }
        let mut uidvalidity = None;
        let mut uidnext = None;
        let mut exists = 0;
        for r in untagged {
            match r {
                ServerResponse::Exists(n) => exists = n,
                ServerResponse::UntaggedStatus {
                    code: Some(ResponseCode::UidValidity(v)),
                    ..
                } => uidvalidity = Some(v),
                ServerResponse::UntaggedStatus {
                    code: Some(ResponseCode::UidNext(v)),
                    ..
                } => uidnext = Some(v),
                _ => {}
            }
        }
        let Some(uidvalidity) = uidvalidity else {
            return Err(self.conn.protocol_error(ProtocolError::Malformed(format!(
                "SELECT {folder} gave no UIDVALIDITY"
            ))));
        };
        Ok(Selected {
            uidvalidity,
            uidnext,
            exists,
        })
    }

    /// UIDs in `from..=to` (`to = None`: to the end) with their RFC822.SIZE, ascending.
    /// `UID FETCH n:*` always returns the highest message even below `n`, so results are
    /// filtered.
    pub async fn uids_between(
        &mut self,
        from: u32,
        to: Option<u32>,
    ) -> Result<Vec<(u32, u32)>, SessionError> {
        let cmd = self.cmds.uid_fetch_sizes(from.max(1), to);
        let (untagged, completion, line) = self.run(cmd, "UID FETCH").await?;
        if completion != Completion::Ok {
            return Err(self.refused(line));
        }
        let upper = to.unwrap_or(u32::MAX);
        let mut out: Vec<(u32, u32)> = untagged
            .into_iter()
            .filter_map(|r| match r {
                ServerResponse::Fetch(f) => f.uid.map(|u| (u, f.rfc822_size.unwrap_or(0))),
                _ => None,
            })
            .filter(|(uid, _)| (from..=upper).contains(uid))
            .collect();
        out.sort_unstable();
        out.dedup_by_key(|(u, _)| *u);
        Ok(out)
    }

    /// Starts `UID FETCH <set> (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])`; read the
    /// messages with [`ImapSession::next_fetched`].
    pub async fn start_fetch(&mut self, uids: &[u32]) -> Result<(), SessionError> {
        let cmd = self.cmds.uid_fetch_set(uids);
        self.conn.send(&cmd.bytes).await?;
        self.pending_fetch = Some(cmd.tag);
        Ok(())
    }

    /// The next fetched message with a body, or `None` when the FETCH completed.
    pub async fn next_fetched(&mut self) -> Result<Option<Fetched>, SessionError> {
        let Some(tag) = self.pending_fetch.clone() else {
            return Ok(None);
        };
        loop {
            // The frame's allocation becomes the message's: no copy of the body is made.
            let frame = self.read_frame_bytes("fetching messages").await?;
            let response = parse_response_owned(frame).map_err(|e| self.conn.protocol_error(e))?;
            match response {
                ServerResponse::Fetch(f) if f.body.is_some() && f.uid.is_some() => {
                    return Ok(Some(f));
                }
                ServerResponse::Tagged {
                    tag: t,
                    completion,
                    line,
                    ..
                } if t == tag => {
                    self.pending_fetch = None;
                    if completion != Completion::Ok {
                        return Err(self.refused(line));
                    }
                    return Ok(None);
                }
                ServerResponse::Bye { line } => return Err(self.bye(line)),
                _ => {}
            }
        }
    }

    /// The header of the message with the highest UID (for `test-login`), or `None` when the
    /// folder is empty.
    pub async fn last_header(
        &mut self,
        selected: &Selected,
    ) -> Result<Option<Vec<u8>>, SessionError> {
        if selected.exists == 0 {
            return Ok(None);
        }
        let cmd = self.cmds.uid_fetch_header_star();
        let (untagged, completion, line) = self.run(cmd, "UID FETCH").await?;
        if completion != Completion::Ok {
            return Err(self.refused(line));
        }
        Ok(untagged.into_iter().find_map(|r| match r {
            ServerResponse::Fetch(f) => f.header,
            _ => None,
        }))
    }

    async fn expect_ok(&mut self, cmd: Command, during: &'static str) -> Result<(), SessionError> {
        let (_, completion, line) = self.run(cmd, during).await?;
        if completion == Completion::Ok {
            Ok(())
        } else {
            Err(self.refused(line))
        }
    }

    /// Creates `mailbox` unless it exists (`move_to` need not be made by hand).
    async fn ensure_mailbox(&mut self, mailbox: &str) -> Result<(), SessionError> {
        let cmd = self.cmds.create(mailbox);
        let (_, completion, line) = self.run(cmd, "CREATE").await?;
        // NO [ALREADYEXISTS] (or a server's own wording) means it is there; a real
        // problem shows in the MOVE/COPY that follows, with that server's reply.
        if completion == Completion::Bad {
            return Err(self.refused(line));
        }
        Ok(())
    }

    /// Whether `after_ingest` can be done safely on this server, and why not.
    pub fn check_post_action(&self, action: AfterIngest) -> Result<(), SessionError> {
        let uidplus = self.capabilities.contains("UIDPLUS");
        let missing = match action {
            AfterIngest::Keep | AfterIngest::Seen => None,
            AfterIngest::Delete if !uidplus => Some(
                "after_ingest = \"delete\" needs UIDPLUS (UID EXPUNGE); without it EXPUNGE would also remove messages other clients marked \\Deleted",
            ),
            AfterIngest::Move if !uidplus && !self.capabilities.contains("MOVE") => {
                Some("after_ingest = \"move\" needs MOVE or UIDPLUS; this server offers neither")
            }
            _ => None,
        };
        match missing {
            Some(why) => Err(self
                .conn
                .protocol_error(ProtocolError::MissingCapability(why.into()))),
            None => Ok(()),
        }
    }

    /// Applies `after_ingest` to stored messages: `\Seen`, move to `move_to`, or delete.
    /// The caller has made them durable first.
    pub async fn post_action(
        &mut self,
        action: AfterIngest,
        uids: &[u32],
        move_to: Option<&str>,
    ) -> Result<(), SessionError> {
        if uids.is_empty() || action == AfterIngest::Keep {
            return Ok(());
        }
        self.check_post_action(action)?;
        match action {
            AfterIngest::Keep => {}
            AfterIngest::Seen => {
                let cmd = self.cmds.uid_store_add_flag(uids, "\\Seen");
                self.expect_ok(cmd, "UID STORE").await?;
            }
            AfterIngest::Delete => {
                let cmd = self.cmds.uid_store_add_flag(uids, "\\Deleted");
                self.expect_ok(cmd, "UID STORE").await?;
                let cmd = self.cmds.uid_expunge(uids);
                self.expect_ok(cmd, "UID EXPUNGE").await?;
            }
            AfterIngest::Move => {
                let target = move_to.unwrap_or("Processed");
                self.ensure_mailbox(target).await?;
                if self.capabilities.contains("MOVE") {
                    let cmd = self.cmds.uid_move(uids, target);
                    self.expect_ok(cmd, "UID MOVE").await?;
                } else {
                    let cmd = self.cmds.uid_copy(uids, target);
                    self.expect_ok(cmd, "UID COPY").await?;
                    let cmd = self.cmds.uid_store_add_flag(uids, "\\Deleted");
                    self.expect_ok(cmd, "UID STORE").await?;
                    let cmd = self.cmds.uid_expunge(uids);
                    self.expect_ok(cmd, "UID EXPUNGE").await?;
                }
            }
        }
        Ok(())
    }

    /// Whether the server offers IDLE (RFC 2177).
    pub fn supports_idle(&self) -> bool {
        self.capabilities.contains("IDLE")
    }

    /// The selectable folders matching `pattern` (`LIST "" pattern`), in the server's order.
    pub async fn list(&mut self, pattern: &str) -> Result<Vec<String>, SessionError> {
        let cmd = self.cmds.list(pattern);
        let (untagged, completion, line) = self.run(cmd, "LIST").await?;
        if completion != Completion::Ok {
            return Err(self.refused(line));
        }
        Ok(untagged
            .into_iter()
            .filter_map(|r| match r {
                ServerResponse::List {
                    name,
                    delimiter,
                    noselect: false,
                } if crate::protocol::imap::pattern_matches(pattern, &name, delimiter)
                    || (pattern.eq_ignore_ascii_case("INBOX")
                        && name.eq_ignore_ascii_case("INBOX")) =>
                {
                    Some(name)
                }
                _ => None,
            })
            .collect())
    }

    /// Sits in IDLE on the selected folder until the server reports new mail (EXISTS),
    /// `until` passes, or `stop` completes; then ends IDLE with DONE and reads the command's
    /// completion, so the session is ready for the next command.
    pub async fn idle(
        &mut self,
        until: tokio::time::Instant,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<IdleWake, SessionError> {
        let cmd = self.cmds.idle();
        self.conn.send(&cmd.bytes).await?;
        let mut wake = None;
        // The continuation comes first (or a refusal).
        loop {
            match self.read_response("starting IDLE").await? {
                ServerResponse::Continue(_) => break,
                ServerResponse::Tagged { tag, line, .. } if tag == cmd.tag => {
                    return Err(self.refused(line));
                }
                ServerResponse::Bye { line } => return Err(self.bye(line)),
                ServerResponse::Exists(_) => wake = Some(IdleWake::NewMail),
                _ => {}
            }
        }
        let mut stop = std::pin::pin!(stop);
        while wake.is_none() {
            // Frames already buffered first; then wait for more bytes, the deadline or stop.
            match self.framer.next_frame(&self.conn.buf) {
                Ok(Some(n)) => {
                    let frame: Vec<u8> = self.conn.buf.drain(..n).collect();
                    match parse_response(&frame).map_err(|e| self.conn.protocol_error(e))? {
                        ServerResponse::Exists(_) => wake = Some(IdleWake::NewMail),
                        ServerResponse::Bye { line } => return Err(self.bye(line)),
                        ServerResponse::Tagged { tag, line, .. } if tag == cmd.tag => {
                            // The server ended IDLE on its own: treat like a timeout.
                            tracing::debug!(reply = %line, "server ended IDLE");
                            return Ok(IdleWake::Timeout);
                        }
                        _ => {}
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => return Err(self.conn.protocol_error(e)),
            }
            tokio::select! {
                r = self.conn.fill_untimed() => r?,
                _ = tokio::time::sleep_until(until) => wake = Some(IdleWake::Timeout),
                _ = &mut stop => wake = Some(IdleWake::Stopped),
            }
        }
        self.conn.send(crate::protocol::imap::IDLE_DONE).await?;
        loop {
            match self.read_response("ending IDLE").await? {
                ServerResponse::Tagged {
                    tag,
                    completion,
                    line,
                    ..
                } if tag == cmd.tag => {
                    if completion != Completion::Ok {
                        return Err(self.refused(line));
                    }
                    break;
                }
                ServerResponse::Bye { line } => return Err(self.bye(line)),
                ServerResponse::Exists(_) if wake != Some(IdleWake::Stopped) => {
                    wake = Some(IdleWake::NewMail)
                }
                _ => {}
            }
        }
        Ok(wake.unwrap_or(IdleWake::Timeout))
    }

    /// LOGOUT and close, best effort: the data is already safe when this runs.
    pub async fn logout(mut self) {
        let cmd = self.cmds.logout();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.run(cmd, "LOGOUT")).await;
        self.conn.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn o365_throttle_backoff_is_read() {
        assert_eq!(
            suggested_backoff(
                "A1 NO Request is throttled. Suggested Backoff Time: 2500 milliseconds"
            ),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(suggested_backoff("A1 NO something else"), None);
    }
}
