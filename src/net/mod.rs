//! TCP and TLS for mail sessions, and the IMAP/POP3 session drivers that pump bytes
//! through the sans-IO protocol code. The only module that touches sockets.
//!
//! What this module holds: [`Connector`] (connect, TLS handshake, STARTTLS upgrade, connect
//! and handshake timeouts), [`Conn`] (one connection: its read buffer, reads and writes with
//! the read timeout), and the session drivers [`imap::ImapSession`] and [`pop3::Pop3Session`].
//! Protocol decisions (what to send, what a reply means) are made in `protocol`; the drivers
//! only move bytes between it and a connection.
//!
//! Invariants:
//! - A [`PlainConn`] and a [`TlsConn`] are different types; [`Connector::upgrade`] consumes
//!   the plain one. Sessions hold a [`TlsConn`], so credentials can only be sent over TLS by
//!   construction, not by a run-time check.
//! - Bytes a server sent before the TLS handshake fail the upgrade (response injection).
//! - Every read has the read timeout, except the wait in IDLE, which the caller bounds.
//! - Nothing here imports the configuration: [`Security`] and [`TlsOptions`] are this
//!   module's own; callers convert their settings.
//!
//! TLS is rustls with the ring provider: TLS 1.2 or 1.3 only (`tls.min_version`), system
//! roots plus `tls.extra_ca_file`, certificate and host name always verified; there is no
//! switch to turn verification off. The `native-tls` feature adds the platform library as
//! an alternative backend with the same minimum-version rule.

pub mod imap;
pub mod pop3;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::protocol::ProtocolError;
use crate::telemetry::ErrorKind;

/// How a session reaches TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Implicit TLS from the first byte.
    Tls,
    /// STARTTLS (IMAP) or STLS (POP3); credentials only after the upgrade.
    StartTls,
}

/// The oldest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// Which TLS library does the handshakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsBackend {
    Rustls,
    /// The platform library; needs a build with the `native-tls` feature.
    Native,
}

/// What the [`Connector`] needs to know about TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub min_version: TlsVersion,
    /// PEM roots trusted besides the system roots.
    pub extra_ca_file: Option<std::path::PathBuf>,
    pub backend: TlsBackend,
}

/// Why a session failed. Every variant names the server (`host:port`) and, where the
/// server answered, carries its words.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{server}: cannot connect: {source}")]
    Connect { server: String, source: io::Error },
    #[error("{server}: TLS failed: {detail}")]
    Tls { server: String, detail: String },
    #[error("{server}: no answer within {secs}s while {during}")]
    Timeout {
        server: String,
        secs: u64,
        during: &'static str,
    },
    #[error("{server}: authentication refused: {reply}")]
    Auth { server: String, reply: String },
    #[error("{server}: {source}")]
    Protocol {
        server: String,
        source: ProtocolError,
    },
    #[error("{server}: connection closed by server{last}")]
    Closed { server: String, last: String },
    #[error("{server}: I/O error: {source}")]
    Io { server: String, source: io::Error },
    /// The server is temporarily unable to serve (`NO [UNAVAILABLE]`, `-ERR [SYS/TEMP]`):
    /// not a credential problem.
    #[error("{server}: server temporarily unavailable: {reply}")]
    Unavailable { server: String, reply: String },
    #[error("{server}: server asks to slow down: {reply}")]
    Throttled {
        server: String,
        reply: String,
        backoff: Option<Duration>,
    },
}

impl SessionError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            SessionError::Connect { .. } | SessionError::Timeout { .. } => ErrorKind::Connect,
            SessionError::Io { .. } | SessionError::Closed { .. } => ErrorKind::Connect,
            SessionError::Unavailable { .. } => ErrorKind::Connect,
            SessionError::Tls { .. } => ErrorKind::Tls,
            SessionError::Auth { .. } => ErrorKind::Auth,
            SessionError::Protocol { .. } => ErrorKind::Protocol,
            SessionError::Throttled { .. } => ErrorKind::Throttled,
        }
    }
}

/// Why the [`Connector`] could not be built from the `[tls]` settings. Start-up and reload
/// only, never counted, so there is no `kind()` (as [`crate::auth::SetupError`]).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The file could not be read, or a PEM section in it could not be decoded.
    #[error("tls.extra_ca_file {}: {reason}", path.display())]
    CaFileUnreadable {
        path: std::path::PathBuf,
        reason: rustls::pki_types::pem::Error,
    },
    /// A certificate in the file is not one rustls accepts as a root.
    #[error("tls.extra_ca_file {}: {reason}", path.display())]
    CaCertificateRejected {
        path: std::path::PathBuf,
        reason: rustls::Error,
    },
    #[error("tls.extra_ca_file {}: no PEM certificate found", path.display())]
    NoCertificate { path: std::path::PathBuf },
    /// rustls refused the protocol versions asked for.
    #[error("tls: {0}")]
    Versions(rustls::Error),
    #[error("tls.backend = \"native\" needs a build with --features native-tls")]
    NativeNotBuilt,
}

/// Settings every connection shares, built once at start-up.
#[derive(Clone)]
pub struct Connector {
    tls: TlsBackendConfig,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

#[derive(Clone)]
enum TlsBackendConfig {
    Rustls(Arc<rustls::ClientConfig>),
    #[cfg(feature = "native-tls")]
    Native {
        min: TlsVersion,
        /// Every certificate of `tls.extra_ca_file`, read and decoded at start-up.
        extra_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    },
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .finish_non_exhaustive()
    }
}

/// Loads the root store: system roots plus the PEM certificates in `extra_ca_file`.
pub fn root_store(
    extra_ca_file: Option<&std::path::Path>,
) -> Result<rustls::RootCertStore, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A broken system certificate is skipped, as browsers do; it cannot weaken checks.
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca_file {
        for cert in extra_ca_certs(path)? {
            roots
                .add(cert)
                .map_err(|reason| TlsSetupError::CaCertificateRejected {
                    path: path.to_path_buf(),
                    reason,
                })?;
        }
    }
    Ok(roots)
}

/// Every certificate in a `tls.extra_ca_file` (PEM; a bundle holds several), for both
/// backends. A file with none is an error: a typo'd path to the wrong PEM would otherwise
/// leave the private CA silently untrusted.
pub fn extra_ca_certs(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsSetupError> {
    let unreadable = |reason| TlsSetupError::CaFileUnreadable {
        path: path.to_path_buf(),
        reason,
    };
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(unreadable)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(unreadable)?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The rustls client configuration for a minimum version and root store.
pub fn rustls_config(
    min: TlsVersion,
    roots: rustls::RootCertStore,
) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(TlsSetupError::Versions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Connector {
    pub fn new(
        tls: impl Into<TlsOptions>,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Result<Connector, TlsSetupError> {
        let tls: TlsOptions = tls.into();
        let backend = match tls.backend {
            TlsBackend::Rustls => {
                let roots = root_store(tls.extra_ca_file.as_deref())?;
                TlsBackendConfig::Rustls(rustls_config(tls.min_version, roots)?)
            }
            #[cfg(feature = "native-tls")]
            TlsBackend::Native => TlsBackendConfig::Native {
                min: tls.min_version,
                extra_ca: match &tls.extra_ca_file {
                    Some(p) => extra_ca_certs(p)?,
                    None => Vec::new(),
                },
            },
            #[cfg(not(feature = "native-tls"))]
            TlsBackend::Native => {
                return Err(TlsSetupError::NativeNotBuilt);
            }
        };
        Ok(Connector {
            tls: backend,
            connect_timeout,
            read_timeout,
        })
    }

    /// TCP connect (no TLS yet), for STARTTLS/STLS.
    pub async fn connect_plain(&self, host: &str, port: u16) -> Result<PlainConn, SessionError> {
        let server = format!("{host}:{port}");
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(source)) => return Err(SessionError::Connect { server, source }),
            Err(_) => {
                return Err(SessionError::Timeout {
                    server,
                    secs: self.connect_timeout.as_secs(),
                    during: "connecting",
                });
            }
        };
        let _ = tcp.set_nodelay(true);
        Ok(Conn {
            stream: tcp,
            buf: Vec::with_capacity(64 * 1024),
            read_timeout: self.read_timeout,
            server,
        })
    }

    /// TCP connect and TLS handshake (implicit TLS, ports 993/995).
    pub async fn connect_tls(&self, host: &str, port: u16) -> Result<TlsConn, SessionError> {
        let conn = self.connect_plain(host, port).await?;
        self.upgrade(conn, host).await
    }

    /// Turns a plain connection into a TLS one (after STARTTLS/STLS was accepted). The plain
    /// connection is consumed; bytes the server sent before the handshake are an attack
    /// (response injection) and fail the upgrade.
    pub async fn upgrade(&self, conn: PlainConn, host: &str) -> Result<TlsConn, SessionError> {
        let Conn {
            stream: tcp,
            buf,
            read_timeout,
            server,
        } = conn;
        if !buf.is_empty() {
            return Err(SessionError::Tls {
                server,
                detail: "server sent data before the TLS handshake (possible injection)".into(),
            });
        }
        let handshake_timeout = self.connect_timeout;
        let tls_err = |detail: String| SessionError::Tls {
            server: server.clone(),
            detail,
        };
        let (stream, info) = match &self.tls {
            TlsBackendConfig::Rustls(config) => {
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| tls_err(format!("invalid server name {host:?}: {e}")))?;
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls =
                    match tokio::time::timeout(handshake_timeout, connector.connect(name, tcp))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return Err(tls_err(describe_tls_error(&e))),
                        Err(_) => {
                            return Err(SessionError::Timeout {
                                server,
                                secs: handshake_timeout.as_secs(),
                                during: "TLS handshake",
                            });
                        }
                    };
                let (_, session) = tls.get_ref();
                let info = TlsInfo {
                    resumed: session.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
                    version: session
                        .protocol_version()
                        .map(|v| format!("{v:?}"))
                        .unwrap_or_default(),
                    cipher: session
                        .negotiated_cipher_suite()
                        .map(|c| format!("{:?}", c.suite()))
                        .unwrap_or_default(),
                };
                (TlsIo::Rustls(Box::new(tls)), info)
            }
            #[cfg(feature = "native-tls")]
            TlsBackendConfig::Native { min, extra_ca } => {
                let mut connector =
                    async_native_tls::TlsConnector::new().min_protocol_version(Some(match min {
                        TlsVersion::V1_2 => async_native_tls::Protocol::Tlsv12,
                        TlsVersion::V1_3 => async_native_tls::Protocol::Tlsv12,
                    }));
                // Every certificate of the file (`Certificate::from_pem` takes the first only).
                for der in extra_ca {
                    let cert = async_native_tls::Certificate::from_der(der)
                        .map_err(|e| tls_err(format!("tls.extra_ca_file: {e}")))?;
                    connector = connector.add_root_certificate(cert);
                }
                let tls =
                    match tokio::time::timeout(handshake_timeout, connector.connect(host, tcp))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => return Err(tls_err(e.to_string())),
                        Err(_) => {
                            return Err(SessionError::Timeout {
                                server,
                                secs: handshake_timeout.as_secs(),
                                during: "TLS handshake",
                            });
                        }
                    };
                (
                    TlsIo::Native(Box::new(tls)),
                    TlsInfo {
                        version: "native".into(),
                        cipher: String::new(),
                        resumed: false,
                    },
                )
            }
        };
        Ok(Conn {
            stream: TlsStream { io: stream, info },
            buf: Vec::with_capacity(64 * 1024),
            read_timeout,
            server,
        })
    }
}

/// Turns rustls' errors into operator language: which check failed and what the server offered.
fn describe_tls_error(e: &io::Error) -> String {
    let text = e.to_string();
    if text.contains("PeerIncompatible") || text.contains("ProtocolVersion") {
        format!(
            "server offers no TLS version we accept (TLS 1.2 or newer, see tls.min_version): {text}"
        )
    } else if text.contains("UnknownIssuer") || text.to_lowercase().contains("unknown issuer") {
        format!("certificate not trusted (unknown issuer; add its CA to tls.extra_ca_file): {text}")
    } else if text.contains("BadSignature") {
        format!(
            "certificate not trusted (its signature does not verify against the trusted CAs; add the right CA to tls.extra_ca_file): {text}"
        )
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        format!("certificate is not valid for this host name: {text}")
    } else {
        text
    }
}

/// Negotiated TLS parameters, for `test-login` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    /// The handshake resumed an earlier session (a TLS 1.3 ticket from the same server,
    /// kept in the connector's session cache): no certificate chain sent or checked again.
    pub resumed: bool,
}

/// A TLS connection's stream and what its handshake negotiated.
pub struct TlsStream {
    io: TlsIo,
    info: TlsInfo,
}

enum TlsIo {
    Rustls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    #[cfg(feature = "native-tls")]
    Native(Box<async_native_tls::TlsStream<TcpStream>>),
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            TlsIo::Rustls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(feature = "native-tls")]
            TlsIo::Native(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            TlsIo::Rustls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(feature = "native-tls")]
            TlsIo::Native(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            TlsIo::Rustls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(feature = "native-tls")]
            TlsIo::Native(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            TlsIo::Rustls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(feature = "native-tls")]
            TlsIo::Native(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Read buffer of a connection that waits in IDLE: enough for the lines a server sends then
/// (`* 12 EXISTS`, `* OK Still here`); a larger burst is read in several pieces.
const IDLE_BUFFER_BYTES: usize = 4 * 1024;

/// Room a timed read asks for: a TLS record holds at most 16 KiB of data.
const READ_BYTES: usize = 16 * 1024;

/// One connection to a mail server with its read buffer; `S` is the stream, plain TCP
/// ([`PlainConn`]) or TLS ([`TlsConn`]).
pub struct Conn<S> {
    stream: S,
    /// Bytes read but not yet consumed by the protocol layer.
    pub buf: Vec<u8>,
    read_timeout: Duration,
    /// `host:port`, for every error message.
    pub server: String,
}

/// A connection before TLS: good for a greeting and STARTTLS/STLS, never for credentials.
pub type PlainConn = Conn<TcpStream>;

/// A connection with TLS established.
pub type TlsConn = Conn<TlsStream>;

impl TlsConn {
    /// What the handshake negotiated.
    pub fn tls_info(&self) -> &TlsInfo {
        &self.stream.info
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Makes `buf` able to hold `len` bytes and a read beyond them without growing again: a
    /// literal whose length is known is read into one allocation, not one doubled (and
    /// copied) a dozen times on its way to a few MB.
    pub fn make_room_for(&mut self, len: usize) {
        let want = len.saturating_add(READ_BYTES);
        if self.buf.capacity() < want {
            self.buf.reserve_exact(want - self.buf.len());
        }
    }

    /// Drops the first `used` bytes of `buf` (a reply read). A buffer a large message grew is
    /// given back when what is left is small, also when it is not empty (the start of the
    /// next pipelined reply).
    pub fn consume(&mut self, used: usize) {
        self.buf.drain(..used);
        if self.buf.capacity() > 1024 * 1024 && self.buf.len() < READ_BYTES {
            self.buf.shrink_to(READ_BYTES);
        }
    }

    /// Reads more bytes into `buf`. End of stream is an error naming the last thing the
    /// server said.
    ///
    /// A buffer a large message grew is given back once it is empty, so hundreds of
    /// concurrent sessions do not each keep the size of the largest message they have seen.
    pub async fn fill(&mut self, during: &'static str) -> Result<(), SessionError> {
        if self.buf.is_empty() && self.buf.capacity() > 1024 * 1024 {
            self.buf = Vec::with_capacity(READ_BYTES);
        }
        // A read takes at most one TLS record's worth here; a long literal still grows the
        // buffer by doubling (`reserve`), and leaves with it (`take_front`). Hundreds of
        // sessions between messages each hold only this much.
        if self.buf.capacity() - self.buf.len() < READ_BYTES / 2 {
            self.buf.reserve(READ_BYTES);
        }
        match tokio::time::timeout(self.read_timeout, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(0)) => Err(SessionError::Closed {
                server: self.server.clone(),
                last: if self.buf.is_empty() {
                    String::new()
                } else {
                    format!(" after: {}", crate::protocol::first_line(&self.buf))
                },
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(SessionError::Io {
                server: self.server.clone(),
                source,
            }),
            Err(_) => Err(SessionError::Timeout {
                server: self.server.clone(),
                secs: self.read_timeout.as_secs(),
                during,
            }),
        }
    }

    /// Like [`Conn::fill`] with no read timeout: for IDLE, where silence is the normal state
    /// and the caller bounds the wait. Cancel-safe (no byte is lost if the future is dropped).
    ///
    /// An idle session hears a few short lines an hour, but its buffer grew to fit the
    /// largest message of the last pass and would keep that size for as long as it idles:
    /// a node with a thousand idling sources would hold a thousand such buffers. An empty
    /// buffer is given back here and a small one taken; the next pass grows it again.
    pub async fn fill_untimed(&mut self) -> Result<(), SessionError> {
        if self.buf.is_empty() && self.buf.capacity() > IDLE_BUFFER_BYTES {
            self.buf = Vec::with_capacity(IDLE_BUFFER_BYTES);
        }
        if self.buf.capacity() - self.buf.len() < IDLE_BUFFER_BYTES / 4 {
            self.buf.reserve(IDLE_BUFFER_BYTES);
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err(SessionError::Closed {
                server: self.server.clone(),
                last: String::new(),
            }),
            Ok(_) => Ok(()),
            Err(source) => Err(SessionError::Io {
                server: self.server.clone(),
                source,
            }),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.read_timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(SessionError::Io {
                server: self.server.clone(),
                source,
            }),
            Err(_) => Err(SessionError::Timeout {
                server: self.server.clone(),
                secs: self.read_timeout.as_secs(),
                during: "sending a command",
            }),
        }
    }

    pub fn protocol_error(&self, source: ProtocolError) -> SessionError {
        SessionError::Protocol {
            server: self.server.clone(),
            source,
        }
    }

    pub async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.stream.shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    async fn plain_pair() -> (PlainConn, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let conn = Conn {
            stream: client,
            buf: Vec::new(),
            read_timeout: Duration::from_secs(5),
            server: addr.to_string(),
        };
        (conn, server)
    }

    /// A `tls.extra_ca_file` that cannot be used is named with what is wrong with it.
    #[test]
    fn an_unusable_extra_ca_file_is_named_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = root_store(Some(&missing)).unwrap_err();
        assert!(matches!(&e, TlsSetupError::CaFileUnreadable { path, .. } if *path == missing));
        assert!(
            e.to_string()
                .starts_with(&format!("tls.extra_ca_file {}: ", missing.display())),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = root_store(Some(&empty)).unwrap_err();
        assert!(matches!(&e, TlsSetupError::NoCertificate { path } if *path == empty));
        assert_eq!(
            e.to_string(),
            format!(
                "tls.extra_ca_file {}: no PEM certificate found",
                empty.display()
            )
        );
        let tls = TlsOptions {
            min_version: TlsVersion::V1_2,
            extra_ca_file: Some(empty),
            backend: TlsBackend::Rustls,
        };
        assert!(matches!(
            Connector::new(tls, Duration::from_secs(1), Duration::from_secs(1)),
            Err(TlsSetupError::NoCertificate { .. })
        ));
    }

    /// A throw-away CA named `name`: its certificate (PEM) and what signs with it.
    fn ca(name: &str) -> (String, rcgen::Certificate, rcgen::KeyPair) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), cert, key)
    }

    /// A TLS server for `localhost` whose certificate `ca` signed; greets and closes.
    async fn tls_server(ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair) -> u16 {
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, ca, ca_key)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(b"* OK ready\r\n").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        port
    }

    /// Every certificate of a CA bundle in `tls.extra_ca_file` is trusted, by each backend
    /// built in: the server's CA is the second in the file. Without it, the same server is
    /// refused.
    #[tokio::test]
    async fn every_certificate_of_the_extra_ca_file_is_trusted() {
        let dir = tempfile::tempdir().unwrap();
        // Distinct names, as in any real bundle (OpenSSL picks an issuer by name).
        let (first_pem, _, _) = ca("First Test CA");
        let (second_pem, second, second_key) = ca("Second Test CA");
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, format!("{first_pem}{second_pem}")).unwrap();
        let first_only = dir.path().join("first.pem");
        std::fs::write(&first_only, &first_pem).unwrap();
        assert_eq!(extra_ca_certs(&bundle).unwrap().len(), 2);
        let port = tls_server(&second, &second_key).await;

        let backends = [
            Some(TlsBackend::Rustls),
            cfg!(feature = "native-tls").then_some(TlsBackend::Native),
        ];
        for backend in backends.into_iter().flatten() {
            let connector = |file: &std::path::Path| {
                let tls = TlsOptions {
                    min_version: TlsVersion::V1_2,
                    extra_ca_file: Some(file.to_path_buf()),
                    backend,
                };
                Connector::new(tls, Duration::from_secs(5), Duration::from_secs(5)).unwrap()
            };
            let mut conn = connector(&bundle)
                .connect_tls("localhost", port)
                .await
                .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
            conn.fill("greeting").await.unwrap();
            assert!(conn.buf.starts_with(b"* OK ready"), "{backend:?}");
            match connector(&first_only).connect_tls("localhost", port).await {
                Err(SessionError::Tls { .. }) => {}
                Err(e) => panic!("{backend:?}: {e}"),
                Ok(_) => panic!("{backend:?}: a server no trusted CA signed was accepted"),
            }
        }
    }

    /// A literal of known length is read into the one allocation made for it when its
    /// announcement arrived: the buffer never grows (nor copies what it holds) on the way.
    #[tokio::test]
    async fn a_literal_is_read_into_one_allocation() {
        let (mut conn, mut server) = plain_pair().await;
        let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut frame = format!("* 1 FETCH (UID 7 BODY[] {{{}}}\r\n", body.len()).into_bytes();
        frame.extend_from_slice(&body);
        frame.extend_from_slice(b")\r\n");
        let sent = frame.clone();
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(7000) {
                server.write_all(piece).await.unwrap();
            }
            server
        });
        let mut framer = crate::protocol::imap::Framer::new(64 * 1024, 1 << 30);
        let mut allocations = std::collections::HashSet::new();
        let n = loop {
            match framer.next_frame(&conn.buf).unwrap() {
                Some(n) => break n,
                None => {
                    if let Some(end) = framer.literal_end(conn.buf.len()) {
                        conn.make_room_for(end);
                        allocations.insert(conn.buf.as_ptr() as usize);
                    }
                    conn.fill("test").await.unwrap();
                }
            }
        };
        let _server = writer.await.unwrap();
        assert_eq!(crate::protocol::take_front(&mut conn.buf, n), frame);
        assert_eq!(
            allocations.len(),
            1,
            "the buffer was reallocated while the literal arrived"
        );
    }

    /// The buffer a large message made is given back once an idle read finds it empty;
    /// bytes not yet consumed are never dropped for it.
    #[tokio::test]
    async fn an_idle_read_gives_back_the_buffer_a_large_message_grew() {
        let (mut conn, mut server) = plain_pair().await;
        conn.buf = Vec::with_capacity(4 * 1024 * 1024);
        conn.buf.extend_from_slice(b"* 3 EX");
        server.write_all(b"ISTS\r\n").await.unwrap();
        conn.fill_untimed().await.unwrap();
        assert_eq!(conn.buf, b"* 3 EXISTS\r\n");
        assert!(
            conn.buf.capacity() >= 4 * 1024 * 1024,
            "kept while holding bytes"
        );

        conn.buf.clear();
        server.write_all(b"* OK Still here\r\n").await.unwrap();
        conn.fill_untimed().await.unwrap();
        assert_eq!(conn.buf, b"* OK Still here\r\n");
        assert!(
            conn.buf.capacity() <= 2 * IDLE_BUFFER_BYTES,
            "idle buffer of {} bytes",
            conn.buf.capacity()
        );
    }
}
