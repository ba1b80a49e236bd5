//! A scripted mail server for the ingest tests: it replays a transcript
//! (`tests/transcripts/ingest/`, format in the README there) on a loopback port, with real
//! TLS, and checks that the client says exactly what the transcript says it says. Any
//! difference ends the connection and is reported by [`ScriptServer::finish`], naming the
//! line of the transcript.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long the server waits for the client's next line before failing the script.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// One step of a connection, with its line number in the transcript.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Client(String),
    Server(String),
    StartTls,
    Close,
    End,
}

#[derive(Debug, Clone, Default)]
struct Connection {
    tls: bool,
    /// The client must wait for each reply before its next command (no pipelining).
    lockstep: bool,
    steps: Vec<(usize, Step)>,
}

/// A parsed transcript.
#[derive(Debug, Clone)]
pub struct Script {
    name: String,
    connections: Vec<Connection>,
}

impl Script {
    /// Reads `tests/transcripts/ingest/NAME`.
    pub fn load(name: &str) -> Script {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/transcripts/ingest")
            .join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("transcript {}: {e}", path.display()));
        Script::parse(name, &text)
    }

    /// How many connections the script serves.
    pub fn connections(&self) -> usize {
        self.connections.len()
    }

    pub fn parse(name: &str, text: &str) -> Script {
        let mut connections: Vec<Connection> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            if line == "== connection" {
                connections.push(Connection::default());
                continue;
            }
            let conn = connections
                .last_mut()
                .unwrap_or_else(|| panic!("{name}:{n}: a step before `== connection`"));
            let step = match line {
                "== tls" => {
                    conn.tls = true;
                    continue;
                }
                "== lockstep" => {
                    conn.lockstep = true;
                    continue;
                }
                "== starttls" => Step::StartTls,
                "== close" => Step::Close,
                "== end" => Step::End,
                _ => match (line.strip_prefix("C: "), line.strip_prefix("S: ")) {
                    (Some(c), _) => Step::Client(c.to_string()),
                    (_, Some(s)) => Step::Server(s.to_string()),
                    // `C:`/`S:` with nothing after: an empty line on the wire.
                    _ if line == "C:" => Step::Client(String::new()),
                    _ if line == "S:" => Step::Server(String::new()),
                    _ => panic!("{name}:{n}: not a transcript line: {line:?}"),
                },
            };
            conn.steps.push((n, step));
        }
        Script {
            name: name.to_string(),
            connections,
        }
    }
}

/// Called with each line the client sent, once it matched the script and before the
/// server answers it; an error fails the script there (e.g. a post-action sent before the
/// messages were stored).
pub type Observer = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// A running scripted server.
pub struct ScriptServer {
    pub port: u16,
    /// The CA file a client trusts to reach it (`tls.extra_ca_file`).
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
    served: tokio::task::JoinHandle<Result<(), String>>,
}

impl ScriptServer {
    /// Listens on 127.0.0.1 (port 0) and serves the script's connections in order.
    pub async fn start(script: Script) -> ScriptServer {
        Self::start_observed(script, Arc::new(|_| Ok(()))).await
    }

    /// As [`ScriptServer::start`], telling `observer` each line the client sends.
    pub async fn start_observed(script: Script, observer: Observer) -> ScriptServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("test certificate");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, cert.cert.pem()).expect("write the test CA");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)
        .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local address").port();
        let served = tokio::spawn(serve(script, listener, acceptor, observer));
        ScriptServer {
            port,
            ca_file,
            _dir: dir,
            served,
        }
    }

    /// Waits until every connection of the script was served as written; the first
    /// difference otherwise.
    pub async fn finish(self) -> Result<(), String> {
        match tokio::time::timeout(CLIENT_TIMEOUT * 2, self.served).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(format!("the script server panicked: {e}")),
            Err(_) => Err("the script server did not finish".into()),
        }
    }
}

async fn serve(
    script: Script,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    observer: Observer,
) -> Result<(), String> {
    for (k, conn) in script.connections.iter().enumerate() {
        let (tcp, _) = tokio::time::timeout(CLIENT_TIMEOUT, listener.accept())
            .await
            .map_err(|_| format!("{}: connection {} was never opened", script.name, k + 1))?
            .map_err(|e| format!("accept: {e}"))?;
        serve_one(&script.name, k + 1, conn, tcp, &acceptor, &observer).await?;
    }
    Ok(())
}

/// A connection's stream: plain until TLS starts.
enum Wire {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Wire {
    fn io(&mut self) -> &mut (dyn AsyncReadWrite + Send) {
        match self {
            Wire::Plain(s) => s,
            Wire::Tls(s) => s.as_mut(),
        }
    }
}

trait AsyncReadWrite: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> AsyncReadWrite for T {}

async fn serve_one(
    name: &str,
    number: usize,
    conn: &Connection,
    tcp: TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    observer: &Observer,
) -> Result<(), String> {
    let mut wire = Wire::Plain(tcp);
    if conn.tls {
        wire = start_tls(wire, acceptor).await?;
    }
    let mut pending: Vec<u8> = Vec::new();
    let mut tag = String::new();
    for (line_no, step) in &conn.steps {
        let at = format!("{name}:{line_no} (connection {number})");
        match step {
            Step::Server(text) => {
                let text = match text.strip_prefix("$ ") {
                    Some(rest) => format!("{tag} {rest}"),
                    None if text == "$" => tag.clone(),
                    None => text.clone(),
                };
                let mut bytes = text.into_bytes();
                bytes.extend_from_slice(b"\r\n");
                // The client may have closed already; what it sent is checked next.
                let _ = wire.io().write_all(&bytes).await;
            }
            Step::Client(expected) => {
                let got = read_line(&mut wire, &mut pending)
                    .await
                    .map_err(|e| format!("{at}: expected `C: {expected}`, {e}"))?;
                let matched = match expected.strip_prefix("$ ") {
                    Some(rest) => match got.split_once(' ') {
                        Some((t, r)) if r == rest && !t.is_empty() => {
                            tag = t.to_string();
                            true
                        }
                        _ => false,
                    },
                    None => got == *expected,
                };
                if !matched {
                    let _ = wire.io().shutdown().await;
                    return Err(format!("{at}: expected `C: {expected}`, got `{got}`"));
                }
                observer(&got).map_err(|e| format!("{at}: {e}"))?;
                if conn.lockstep && !pending.is_empty() {
                    return Err(format!(
                        "{at}: the client sent more before the reply to `{got}` (pipelining)"
                    ));
                }
            }
            Step::StartTls => {
                if !pending.is_empty() {
                    return Err(format!(
                        "{at}: the client sent data before the TLS handshake"
                    ));
                }
                wire = start_tls(wire, acceptor).await?;
            }
            Step::Close => {
                let _ = wire.io().flush().await;
                let _ = wire.io().shutdown().await;
                return Ok(());
            }
            Step::End => {
                return match read_line(&mut wire, &mut pending).await {
                    Err(ReadError::Closed) => Ok(()),
                    Err(ReadError::Timeout) => {
                        Err(format!("{at}: the client kept the connection open"))
                    }
                    Err(e) => Err(format!("{at}: {e}")),
                    Ok(more) => Err(format!("{at}: the client sent `{more}` after the end")),
                };
            }
        }
    }
    Err(format!(
        "{name}: connection {number} has no `== end` or `== close`"
    ))
}

async fn start_tls(wire: Wire, acceptor: &tokio_rustls::TlsAcceptor) -> Result<Wire, String> {
    let Wire::Plain(tcp) = wire else {
        return Err("TLS started twice".into());
    };
    let tls = tokio::time::timeout(CLIENT_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "the TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake: {e}"))?;
    Ok(Wire::Tls(Box::new(tls)))
}

#[derive(Debug)]
enum ReadError {
    Closed,
    Timeout,
    Io(std::io::Error),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed => write!(f, "the client closed the connection"),
            ReadError::Timeout => write!(f, "the client sent nothing for {CLIENT_TIMEOUT:?}"),
            ReadError::Io(e) => write!(f, "read: {e}"),
        }
    }
}

/// The client's next CRLF-terminated line, without the CRLF.
async fn read_line(wire: &mut Wire, pending: &mut Vec<u8>) -> Result<String, ReadError> {
    // What the server wrote may wait in the TLS session's buffer until flushed.
    if let Err(e) = wire.io().flush().await {
        return Err(ReadError::Io(e));
    }
    loop {
        if let Some(at) = pending.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = pending.drain(..at + 2).take(at).collect();
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        let mut buf = [0u8; 4096];
        let n = match tokio::time::timeout(CLIENT_TIMEOUT, wire.io().read(&mut buf)).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(ReadError::Closed);
            }
            Ok(Err(e)) => return Err(ReadError::Io(e)),
            Ok(Ok(0)) => return Err(ReadError::Closed),
            Ok(Ok(n)) => n,
        };
        pending.extend_from_slice(&buf[..n]);
    }
}
