//! A POP3 session over a [`Conn`]: greeting, STLS, CAPA, USER/PASS or the two-step
//! `AUTH XOAUTH2` / `AUTH OAUTHBEARER`, UIDL, LIST, RETR, QUIT.
//!
//! Invariants as for IMAP: no credential before TLS (the session holds a [`TlsConn`]; STLS
//! consumes the plain connection); capabilities re-read after STLS; a SASL error challenge
//! is answered, not waited out.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::protocol::pop3::{self, Reader, Reply};
use crate::protocol::sasl::Login;
use crate::protocol::{ProtocolError, sasl, suggested_backoff};
use crate::secret::Secret;

use super::{Conn, Connector, Security, SessionError, TlsConn, TlsInfo};

pub struct Pop3Session {
    conn: TlsConn,
    reader: Reader,
    /// From CAPA in the current state (post-TLS).
    pub capabilities: BTreeSet<String>,
}

/// One reply line, read with the read timeout.
async fn read_reply<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    reader: &mut Reader,
    during: &'static str,
) -> Result<Reply, SessionError> {
    loop {
        match reader.reply(&conn.buf) {
            Ok(Some((reply, used))) => {
                conn.buf.drain(..used);
                return Ok(reply);
            }
            Ok(None) => conn.fill(during).await?,
            Err(e) => return Err(conn.protocol_error(e)),
        }
    }
}

/// A multi-line body after `+OK`, dot-unstuffed.
async fn read_multiline<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    reader: &mut Reader,
    limit: u64,
    during: &'static str,
) -> Result<Vec<u8>, SessionError> {
    loop {
        match reader.multiline(&conn.buf, limit) {
            Ok(Some((body, used))) => {
                conn.consume(used);
                return Ok(body);
            }
            Ok(None) => conn.fill(during).await?,
            Err(e) => return Err(conn.protocol_error(e)),
        }
    }
}

async fn read_capa<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    reader: &mut Reader,
) -> Result<BTreeSet<String>, SessionError> {
    conn.send(pop3::capa()).await?;
    match read_reply(conn, reader, "CAPA").await? {
        Reply::Ok(_) => {
            let listing = read_multiline(conn, reader, 1 << 20, "CAPA").await?;
            Ok(pop3::parse_capa(&listing))
        }
        // RFC 2449 servers answer CAPA; an old one may not, and then we know nothing.
        Reply::Err(_) | Reply::Continue(_) => Ok(BTreeSet::new()),
    }
}

/// The greeting must be `+OK`.
async fn greeting<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Conn<S>,
    reader: &mut Reader,
) -> Result<(), SessionError> {
    match read_reply(conn, reader, "waiting for the greeting").await? {
        Reply::Ok(_) => Ok(()),
        other => Err(conn.protocol_error(ProtocolError::Rejected(other.line()))),
    }
}

impl Pop3Session {
    pub async fn open(
        connector: &Connector,
        host: &str,
        port: u16,
        security: Security,
    ) -> Result<Pop3Session, SessionError> {
        let mut reader = Reader::default();
        let mut conn = match security {
            Security::Tls => {
                let mut conn = connector.connect_tls(host, port).await?;
                greeting(&mut conn, &mut reader).await?;
                conn
            }
            Security::StartTls => {
                let mut plain = connector.connect_plain(host, port).await?;
                greeting(&mut plain, &mut reader).await?;
                let caps = read_capa(&mut plain, &mut reader).await?;
                if !caps.contains("STLS") {
                    return Err(SessionError::Tls {
                        server: plain.server.clone(),
                        detail: "server does not offer STLS; refusing to continue without TLS"
                            .into(),
                    });
                }
                plain.send(pop3::stls()).await?;
                match read_reply(&mut plain, &mut reader, "STLS").await? {
                    Reply::Ok(_) => {}
                    other => {
                        return Err(SessionError::Tls {
                            server: plain.server.clone(),
                            detail: format!("STLS refused: {}", other.line()),
                        });
                    }
                }
                connector.upgrade(plain, host).await?
            }
        };
        let capabilities = read_capa(&mut conn, &mut reader).await?;
        Ok(Pop3Session {
            conn,
            reader,
            capabilities,
        })
    }

    pub fn server(&self) -> &str {
        &self.conn.server
    }

    /// Always `Some`: a session is TLS once open.
    pub fn tls_info(&self) -> Option<&TlsInfo> {
        Some(self.conn.tls_info())
    }

    async fn reply(&mut self, during: &'static str) -> Result<Reply, SessionError> {
        read_reply(&mut self.conn, &mut self.reader, during).await
    }

    async fn multiline(
        &mut self,
        limit: u64,
        during: &'static str,
    ) -> Result<Vec<u8>, SessionError> {
        read_multiline(&mut self.conn, &mut self.reader, limit, during).await
    }

    /// Sends a command expecting `+OK` then a multi-line listing.
    async fn listing(
        &mut self,
        cmd: &[u8],
        during: &'static str,
        limit: u64,
    ) -> Result<Vec<u8>, SessionError> {
        self.conn.send(cmd).await?;
        match self.reply(during).await? {
            Reply::Ok(_) => self.multiline(limit, during).await,
            other => Err(self.refused(other)),
        }
    }

    fn refused(&self, reply: Reply) -> SessionError {
        let line = reply.line();
        if let Some(backoff) = suggested_backoff(&line) {
            return SessionError::Throttled {
                server: self.conn.server.clone(),
                reply: line,
                backoff: Some(backoff),
            };
        }
        self.conn.protocol_error(ProtocolError::Rejected(line))
    }

    async fn capa(&mut self) -> Result<BTreeSet<String>, SessionError> {
        read_capa(&mut self.conn, &mut self.reader).await
    }

    pub async fn login(&mut self, login: &Login<'_>) -> Result<String, SessionError> {
        let (mechanism, response, oauthbearer) = match login {
            Login::Password { user, password } => return self.user_pass(user, password).await,
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
        // Some servers list SASL mechanisms only after TLS or not at all (Office 365 before
        // TLS); an unlisted mechanism is still tried, and the server's answer reported.
        self.conn.send(&pop3::auth(mechanism)).await?;
        let mut sent_response = false;
        let mut challenge_text = None;
        loop {
            match self.reply("authenticating").await? {
                Reply::Continue(challenge) => {
                    if !sent_response {
                        sent_response = true;
                        self.conn.send(&pop3::sasl_line(response.expose())).await?;
                    } else {
                        challenge_text = Some(sasl::describe_challenge(&challenge));
                        self.conn
                            .send(&pop3::sasl_line(sasl::error_challenge_reply(oauthbearer)))
                            .await?;
                    }
                }
                Reply::Ok(text) => {
                    self.capabilities = self.capa().await?;
                    return Ok(format!("+OK {text}"));
                }
                Reply::Err(text) if text.to_ascii_uppercase().contains("[SYS/TEMP]") => {
                    return Err(SessionError::Unavailable {
                        server: self.conn.server.clone(),
                        reply: format!("-ERR {text}"),
                    });
                }
                Reply::Err(text) => {
                    let reply = match challenge_text {
                        Some(c) if !c.is_empty() => format!("-ERR {text} (challenge: {c})"),
                        _ => format!("-ERR {text}"),
                    };
                    return Err(SessionError::Auth {
                        server: self.conn.server.clone(),
                        reply,
                    });
                }
            }
        }
    }

    async fn user_pass(&mut self, user: &str, password: &Secret) -> Result<String, SessionError> {
        let (Some(user_cmd), Some(pass_cmd)) = (pop3::user(user), pop3::pass(password.expose()))
        else {
            return Err(SessionError::Auth {
                server: self.conn.server.clone(),
                reply: "user name or password contains CR, LF or NUL".into(),
            });
        };
        self.conn.send(&user_cmd).await?;
        if let Reply::Err(text) = self.reply("USER").await? {
            if text.to_ascii_uppercase().contains("[SYS/TEMP]") {
                return Err(SessionError::Unavailable {
                    server: self.conn.server.clone(),
                    reply: format!("-ERR {text}"),
                });
            }
            return Err(SessionError::Auth {
                server: self.conn.server.clone(),
                reply: format!("-ERR {text}"),
            });
        }
        self.conn.send(&pass_cmd).await?;
        match self.reply("PASS").await? {
            Reply::Ok(text) => {
                self.capabilities = self.capa().await?;
                Ok(format!("+OK {text}"))
            }
            other => Err(SessionError::Auth {
                server: self.conn.server.clone(),
                reply: other.line(),
            }),
        }
    }

    /// `(message number, unique id)` for every message in the maildrop.
    pub async fn uidl(&mut self) -> Result<Vec<(u32, String)>, SessionError> {
        let listing = self.listing(pop3::uidl(), "UIDL", 64 << 20).await?;
        pop3::parse_uidl(&listing).map_err(|e| self.conn.protocol_error(e))
    }

    /// `(message number, size)` for every message.
    pub async fn list(&mut self) -> Result<Vec<(u32, u64)>, SessionError> {
        let listing = self.listing(pop3::list(), "LIST", 64 << 20).await?;
        pop3::parse_list(&listing).map_err(|e| self.conn.protocol_error(e))
    }

    /// Whether the server takes commands before it has answered the ones before them
    /// (RFC 2449 `PIPELINING`).
    pub fn pipelining(&self) -> bool {
        self.capabilities.contains("PIPELINING")
    }

    /// Sends `RETR` for each of `numbers` in one write, without reading a reply: each is
    /// then read, in order, with [`Pop3Session::retr_reply`]. Only with
    /// [`Pop3Session::pipelining`], or one at a time.
    pub async fn send_retrs(&mut self, numbers: &[u32]) -> Result<(), SessionError> {
        let commands: Vec<u8> = numbers.iter().flat_map(|n| pop3::retr(*n)).collect();
        self.conn.send(&commands).await
    }

    /// The reply to the oldest `RETR` sent with [`Pop3Session::send_retrs`] and not yet read:
    /// the message, dot-unstuffed, exactly as the server sent it otherwise. `listed` is its
    /// size from LIST (the reply is read into one allocation of about that).
    pub async fn retr_reply(&mut self, listed: u64, limit: u64) -> Result<Vec<u8>, SessionError> {
        match self.reply("RETR").await? {
            Reply::Ok(_) => {
                // Dot-stuffing makes the reply a little longer than the listed size.
                let expected = listed.min(limit).saturating_add(listed / 64 + 1024);
                self.conn
                    .make_room_for(usize::try_from(expected).unwrap_or(usize::MAX));
                self.multiline(limit, "RETR").await
            }
            other => Err(self.refused(other)),
        }
    }

    /// `DELE n`: marks a message; the server deletes it at QUIT (a dropped session deletes
    /// nothing).
    pub async fn dele(&mut self, n: u32) -> Result<(), SessionError> {
        self.conn.send(&pop3::dele(n)).await?;
        match self.reply("DELE").await? {
            Reply::Ok(_) => Ok(()),
            other => Err(self.refused(other)),
        }
    }

    /// QUIT, and an error when the server does not confirm it (then DELEs may not have
    /// taken effect; they are redone next session).
    pub async fn quit_checked(mut self) -> Result<(), SessionError> {
        self.conn.send(pop3::quit()).await?;
        let reply = self.reply("QUIT").await?;
        self.conn.shutdown().await;
        match reply {
            Reply::Ok(_) => Ok(()),
            other => Err(self.refused(other)),
        }
    }

    /// `TOP n 0`: the header of message `n` (for `test-login`).
    pub async fn top_header(&mut self, n: u32) -> Result<Vec<u8>, SessionError> {
        self.listing(format!("TOP {n} 0\r\n").as_bytes(), "TOP", 1 << 20)
            .await
    }

    /// QUIT: ends the session (and, on a server, commits any DELE).
    pub async fn quit(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            if self.conn.send(pop3::quit()).await.is_ok() {
                let _ = self.reply("QUIT").await;
            }
        })
        .await;
        self.conn.shutdown().await;
    }
}
