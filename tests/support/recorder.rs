//! A recording relay: real TLS towards the client, plain text towards the harness Dovecot
//! (its plain port, reached from 127.0.0.1, which Dovecot treats as secured), writing down
//! every line of every connection in the transcript format of
//! `tests/transcripts/ingest/README.md`.
//!
//! Lines are written in the order the relay saw them, and each before it is passed on: a
//! client line before the server could answer it, a server line before the client could
//! act on it. So the transcript is one order the conversation really took, and a client that
//! behaves the same way can be replayed against it.
//!
//! The client's tag (first word of an IMAP command) is written as `$`, and so is the same
//! word at the start of the server's tagged completion; lines that answer a continuation
//! (`DONE` after `IDLE`, SASL responses) carry no tag. POP3 has no tags. Server bytes are
//! split at CRLF only, literals included, which is what the format asks for; anything else
//! (a bare CR or LF, bytes that are not UTF-8, a line cut off by the end of the stream) is
//! written as it came and reported by [`Recorder::anomalies`], because the transcript could
//! not carry it faithfully.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How long a connection's other direction may stay open once one has ended.
const LINGER: Duration = Duration::from_secs(10);

/// One relayed connection.
#[derive(Default)]
struct Connection {
    /// Transcript lines so far (`C: ...`, `S: ...`), without the opening directives.
    lines: Vec<String>,
    /// Tags of IMAP commands sent and not yet completed.
    open_tags: HashSet<String>,
    /// Tag of an `IDLE` or `AUTHENTICATE` awaiting its completion: until then the client's
    /// lines answer continuations and carry no tag.
    continuation: Option<String>,
    /// Upper-cased verb of the client's last command (`LOGOUT`, `QUIT`, ...).
    last_verb: String,
    /// Bytes of a server literal still to come: lines inside one are message content, never
    /// a tagged completion, however they begin.
    literal_left: usize,
    /// The server closed its side before the client did.
    server_closed_first: bool,
    /// Whether both directions have ended (the block is final).
    done: bool,
}

pub struct Recorder {
    pub port: u16,
    /// Every connection accepted, in order; taken by [`Recorder::take`].
    connections: Arc<Mutex<Vec<Arc<Mutex<Connection>>>>>,
    /// What could not be written faithfully.
    anomalies: Arc<Mutex<Vec<String>>>,
    /// `+` continuations the server sent to an `IDLE`: how a test knows the client waits.
    idling: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl Recorder {
    /// Listens on 127.0.0.1 with the harness certificate and relays to
    /// `127.0.0.1:backend_port`, a plain-text Dovecot port. `imap` says whether commands
    /// carry tags.
    pub fn start(
        cert_pem: &std::path::Path,
        key_pem: &std::path::Path,
        backend_port: u16,
        imap: bool,
    ) -> Recorder {
        let acceptor = super::certs::tls_acceptor(cert_pem, key_pem);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<Mutex<Vec<Arc<Mutex<Connection>>>>> = Arc::default();
        let anomalies: Arc<Mutex<Vec<String>>> = Arc::default();
        let idling = Arc::new(AtomicUsize::new(0));
        let (all, problems, idle) = (connections.clone(), anomalies.clone(), idling.clone());
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let conn = Arc::new(Mutex::new(Connection::default()));
                all.lock().unwrap().push(conn.clone());
                let acceptor = acceptor.clone();
                let (problems, idle) = (problems.clone(), idle.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(client).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            problems.lock().unwrap().push(format!("TLS handshake: {e}"));
                            conn.lock().unwrap().done = true;
                            return;
                        }
                    };
                    let server = match TcpStream::connect(("127.0.0.1", backend_port)).await {
                        Ok(server) => server,
                        Err(e) => {
                            problems
                                .lock()
                                .unwrap()
                                .push(format!("connect to Dovecot: {e}"));
                            conn.lock().unwrap().done = true;
                            return;
                        }
                    };
                    relay(tls, server, imap, conn.clone(), problems, idle).await;
                    conn.lock().unwrap().done = true;
                });
            }
        });
        Recorder {
            port,
            connections,
            anomalies,
            idling,
            _runtime: runtime,
        }
    }

    /// How many `+` continuations the server has sent to `IDLE` so far.
    pub fn idling(&self) -> usize {
        self.idling.load(Ordering::SeqCst)
    }

    /// What the relay could not write down faithfully (empty when all is well).
    pub fn anomalies(&self) -> Vec<String> {
        self.anomalies.lock().unwrap().clone()
    }

    /// The connections accepted since the last call, as transcript blocks (`== connection`,
    /// `== tls`, the lines, `== end` or `== close`), once every one of them has ended
    /// (panics after 10 s otherwise).
    pub fn take(&self) -> Vec<String> {
        super::wait_for(
            "the relayed connections to end",
            LINGER + Duration::from_secs(5),
            || {
                let all = self.connections.lock().unwrap();
                all.iter().all(|c| c.lock().unwrap().done).then_some(())
            },
            || format!("{} connections", self.connections.lock().unwrap().len()),
        );
        let taken = std::mem::take(&mut *self.connections.lock().unwrap());
        taken
            .iter()
            .map(|c| {
                let c = c.lock().unwrap();
                let mut block = String::from("== connection\n== tls\n");
                for line in &c.lines {
                    block.push_str(line);
                    block.push('\n');
                }
                // A client that logged out closes the connection itself (the server closes
                // too, after its goodbye: which of the two came first is a race).
                let closes = c.last_verb == "LOGOUT" || c.last_verb == "QUIT";
                block.push_str(if c.server_closed_first && !closes {
                    "== close\n"
                } else {
                    "== end\n"
                });
                block
            })
            .collect()
    }
}

/// Splits off `line` CRLF, noting anything the transcript cannot carry.
fn text(raw: &[u8], from: &str, problems: &Mutex<Vec<String>>) -> String {
    let body = raw.strip_suffix(b"\r\n").unwrap_or_else(|| {
        problems.lock().unwrap().push(format!(
            "{from} line without CRLF: {:?}",
            String::from_utf8_lossy(raw)
        ));
        raw.strip_suffix(b"\n").unwrap_or(raw)
    });
    if body.contains(&b'\r') || body.contains(&b'\n') {
        problems.lock().unwrap().push(format!(
            "{from} line with a bare CR or LF: {:?}",
            String::from_utf8_lossy(body)
        ));
    }
    match std::str::from_utf8(body) {
        Ok(s) => s.to_owned(),
        Err(_) => {
            problems.lock().unwrap().push(format!(
                "{from} line is not UTF-8: {:?}",
                String::from_utf8_lossy(body)
            ));
            String::from_utf8_lossy(body).into_owned()
        }
    }
}

/// Writes down a client line, its tag as `$`.
fn client_line(conn: &Mutex<Connection>, line: &str, imap: bool) {
    let mut c = conn.lock().unwrap();
    if !imap {
        c.last_verb = line
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        c.lines.push(format!("C: {line}"));
        return;
    }
    if c.continuation.is_some() {
        // DONE, or a SASL response: no tag.
        c.lines.push(format!("C: {line}"));
        return;
    }
    let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
    let verb = rest
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_ascii_uppercase();
    if verb == "IDLE" || verb == "AUTHENTICATE" {
        c.continuation = Some(tag.to_owned());
    }
    c.open_tags.insert(tag.to_owned());
    c.last_verb = verb;
    c.lines.push(if rest.is_empty() {
        "C: $".to_owned()
    } else {
        format!("C: $ {rest}")
    });
}

/// The size of the IMAP literal announced at the end of `line` (`{N}` or `{N+}`).
fn literal_size(line: &str) -> Option<usize> {
    let open = line.strip_suffix('}')?.rfind('{')?;
    let digits = line[open + 1..line.len() - 1].trim_end_matches('+');
    digits.parse().ok()
}

/// Writes down a server line (`raw_len` bytes on the wire, CRLF included), the tag of a
/// tagged completion as `$`.
fn server_line(
    conn: &Mutex<Connection>,
    line: &str,
    raw_len: usize,
    imap: bool,
    idling: &AtomicUsize,
) {
    let mut c = conn.lock().unwrap();
    c.lines.push(format!("S: {line}"));
    if !imap {
        return;
    }
    if c.literal_left > 0 {
        let inside = c.literal_left.min(raw_len);
        c.literal_left -= inside;
        // The rest of the response line follows the literal on the same line; it may
        // announce another literal.
        if c.literal_left == 0 && inside < raw_len {
            c.literal_left = line.get(inside..).and_then(literal_size).unwrap_or(0);
        }
        return;
    }
    c.literal_left = literal_size(line).unwrap_or(0);
    let (first, rest) = line.split_once(' ').unwrap_or((line, ""));
    if c.open_tags.remove(first) {
        if c.continuation.as_deref() == Some(first) {
            c.continuation = None;
        }
        let normalized = if rest.is_empty() {
            "S: $".to_owned()
        } else {
            format!("S: $ {rest}")
        };
        *c.lines.last_mut().unwrap() = normalized;
        return;
    }
    if first == "+" && c.continuation.is_some() && c.last_verb == "IDLE" {
        idling.fetch_add(1, Ordering::SeqCst);
    }
}

async fn relay(
    client: tokio_rustls::server::TlsStream<TcpStream>,
    server: TcpStream,
    imap: bool,
    conn: Arc<Mutex<Connection>>,
    problems: Arc<Mutex<Vec<String>>>,
    idling: Arc<AtomicUsize>,
) {
    let (client_r, mut client_w) = tokio::io::split(client);
    let (mut server_r, mut server_w) = server.into_split();
    let (up_conn, up_problems) = (conn.clone(), problems.clone());
    let mut upstream = tokio::spawn(async move {
        let mut lines = BufReader::new(client_r);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match lines.read_until(b'\n', &mut raw).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = text(&raw, "client", &up_problems);
            client_line(&up_conn, &line, imap);
            if server_w.write_all(&raw).await.is_err() {
                break;
            }
        }
        let _ = server_w.shutdown().await;
    });
    let down_conn = conn.clone();
    let mut downstream = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = match server_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buf[..n]);
            while let Some(at) = pending.windows(2).position(|w| w == b"\r\n") {
                let raw: Vec<u8> = pending.drain(..at + 2).collect();
                let line = text(&raw, "server", &problems);
                server_line(&down_conn, &line, raw.len(), imap, &idling);
            }
            if client_w.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        if !pending.is_empty() {
            let line = text(&pending, "server", &problems);
            server_line(&down_conn, &line, pending.len(), imap, &idling);
        }
        let _ = client_w.shutdown().await;
    });
    tokio::select! {
        _ = &mut upstream => {
            if tokio::time::timeout(LINGER, &mut downstream).await.is_err() {
                downstream.abort();
            }
        }
        _ = &mut downstream => {
            conn.lock().unwrap().server_closed_first = true;
            if tokio::time::timeout(LINGER, &mut upstream).await.is_err() {
                upstream.abort();
            }
        }
    }
}
