//! A fault-injecting IMAP/POP3 proxy with real TLS on the client side, in front of the
//! harness Dovecot (reached over its plain port from 127.0.0.1, which Dovecot treats as
//! secured). Each accepted connection takes the next [`Fault`] from a queue (none when the
//! queue is empty) and otherwise relays bytes both ways. For failures a real server will
//! not produce on demand; the tests still run against the real Dovecot behind it.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Relay normally.
    None,
    /// Close the connection after this many bytes have gone out once bodies were asked for.
    DropMidLiteral(usize),
    /// Answer the login command with `NO [UNAVAILABLE]` (IMAP) / `-ERR [SYS/TEMP]` (POP3).
    Unavailable,
    /// After login, answer the first SELECT/EXAMINE with `* BYE ... AccessTokenExpired`.
    ByeTokenExpired,
    /// Answer the first SELECT/EXAMINE (IMAP) or UIDL (POP3) with Office 365's throttling
    /// reply and this suggested backoff.
    Throttled(u64),
    /// Stop relaying server bytes once bodies were asked for (the client must time out).
    Stall,
    /// Another client expunges these messages (their maildir files vanish) just before the
    /// server sees the first request for bodies.
    ExpungeBeforeBodies(Vec<std::path::PathBuf>),
    /// Relay the POP3 CAPA listing without `PIPELINING` (as Exchange Online's lacks it).
    NoPipelining,
}

pub struct Proxy {
    pub port: u16,
    queue: Arc<Mutex<VecDeque<Fault>>>,
    /// Connections accepted so far.
    pub accepted: Arc<Mutex<usize>>,
    /// The verb of every command clients sent, in order (`IDLE`, `DONE`, `LOGOUT`, ...;
    /// never arguments, so no credential is kept).
    pub commands: Arc<Mutex<Vec<String>>>,
    /// The verbs of commands the next command had already arrived behind when they were read:
    /// sent before the client could have had their reply (this one was not yet relayed to
    /// the server). That is pipelining.
    pub sent_ahead: Arc<Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

impl Proxy {
    /// Listens with the harness certificate and forwards to `127.0.0.1:backend_port`
    /// (a plain-text Dovecot port). `imap` selects the protocol's fault replies.
    pub fn start(
        cert_pem: &std::path::Path,
        key_pem: &std::path::Path,
        backend_port: u16,
        imap: bool,
    ) -> Proxy {
        let acceptor = crate::support::certs::tls_acceptor(cert_pem, key_pem);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let port = listener.local_addr().unwrap().port();
        let queue: Arc<Mutex<VecDeque<Fault>>> = Arc::default();
        let accepted: Arc<Mutex<usize>> = Arc::default();
        let commands: Arc<Mutex<Vec<String>>> = Arc::default();
        let sent_ahead: Arc<Mutex<Vec<String>>> = Arc::default();
        let (q, a, cmds, ahead) = (
            queue.clone(),
            accepted.clone(),
            commands.clone(),
            sent_ahead.clone(),
        );
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                *a.lock().unwrap() += 1;
                let fault = q.lock().unwrap().pop_front().unwrap_or(Fault::None);
                let acceptor = acceptor.clone();
                let cmds = cmds.clone();
                let ahead = ahead.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", backend_port)).await else {
                        return;
                    };
                    relay(tls, server, fault, imap, cmds, ahead).await;
                });
            }
        });
        Proxy {
            port,
            queue,
            accepted,
            commands,
            sent_ahead,
            _runtime: runtime,
        }
    }

    pub fn push(&self, fault: Fault) {
        self.queue.lock().unwrap().push_back(fault);
    }

    pub fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }

    /// The verbs clients sent so far.
    pub fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }

    /// The verbs of commands sent ahead of their reply ([`Proxy::sent_ahead`]).
    pub fn sent_ahead(&self) -> Vec<String> {
        self.sent_ahead.lock().unwrap().clone()
    }
}

fn is_login(line: &str, imap: bool) -> bool {
    let upper = line.to_ascii_uppercase();
    if imap {
        upper
            .split_whitespace()
            .nth(1)
            .is_some_and(|w| w == "LOGIN" || w == "AUTHENTICATE")
    } else {
        upper.starts_with("USER ") || upper.starts_with("AUTH ")
    }
}

fn is_select(line: &str, imap: bool) -> bool {
    let upper = line.to_ascii_uppercase();
    if imap {
        upper
            .split_whitespace()
            .nth(1)
            .is_some_and(|w| w == "SELECT" || w == "EXAMINE")
    } else {
        upper.starts_with("UIDL")
    }
}

async fn relay(
    client: tokio_rustls::server::TlsStream<TcpStream>,
    server: TcpStream,
    fault: Fault,
    imap: bool,
    commands: Arc<Mutex<Vec<String>>>,
    sent_ahead: Arc<Mutex<Vec<String>>>,
) {
    let (client_r, mut client_w) = tokio::io::split(client);
    let (mut server_r, mut server_w) = server.into_split();
    let (inject_tx, mut inject_rx) = tokio::sync::mpsc::unbounded_channel::<(Vec<u8>, bool)>();
    // Set once the client asked for message bodies (UID FETCH ... BODY.PEEK[] / RETR).
    let bodies_asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let asked = bodies_asked.clone();
    // Client → server, line by line, where faults that answer commands are decided.
    let fault_c = fault.clone();
    let upstream = tokio::spawn(async move {
        let mut lines = BufReader::new(client_r);
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let tag = line.split_whitespace().next().unwrap_or("*").to_string();
            let verb = if line.trim().eq_ignore_ascii_case("DONE") || !imap {
                line.split_whitespace().next().unwrap_or("")
            } else {
                line.split_whitespace().nth(1).unwrap_or("")
            };
            commands.lock().unwrap().push(verb.to_ascii_uppercase());
            if !lines.buffer().is_empty() {
                sent_ahead.lock().unwrap().push(verb.to_ascii_uppercase());
            }
            let answer: Option<(String, bool)> = match &fault_c {
                Fault::Unavailable if is_login(&line, imap) => Some((
                    if imap {
                        format!("{tag} NO [UNAVAILABLE] Temporary authentication failure.\r\n")
                    } else {
                        "-ERR [SYS/TEMP] Temporary authentication failure.\r\n".into()
                    },
                    false,
                )),
                Fault::ByeTokenExpired if is_select(&line, imap) => Some((
                    "* BYE Session invalidated - AccessTokenExpired\r\n".into(),
                    true,
                )),
                Fault::Throttled(ms) if is_select(&line, imap) => Some((
                    if imap {
                        format!(
                            "{tag} NO Request is throttled. Suggested Backoff Time: {ms} milliseconds\r\n"
                        )
                    } else {
                        format!(
                            "-ERR Request is throttled. Suggested Backoff Time: {ms} milliseconds\r\n"
                        )
                    },
                    true,
                )),
                _ => None,
            };
            match answer {
                Some((reply, close)) => {
                    let _ = inject_tx.send((reply.into_bytes(), close));
                    if close {
                        return;
                    }
                }
                None => {
                    let upper = line.to_ascii_uppercase();
                    if upper.contains("BODY.PEEK[]") || upper.starts_with("RETR ") {
                        if let Fault::ExpungeBeforeBodies(paths) = &fault_c
                            && !asked.load(std::sync::atomic::Ordering::SeqCst)
                        {
                            for p in paths {
                                let _ = std::fs::remove_file(p);
                            }
                        }
                        asked.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    if server_w.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    // Server → client, bytes, with injected replies interleaved.
    let mut buf = vec![0u8; 16 * 1024];
    let mut fetch_bytes: Option<usize> = None;
    loop {
        tokio::select! {
            Some((bytes, close)) = inject_rx.recv() => {
                if client_w.write_all(&bytes).await.is_err() || close {
                    break;
                }
            }
            n = server_r.read(&mut buf) => {
                let Ok(n) = n else { break };
                if n == 0 { break; }
                let chunk = &buf[..n];
                if let Some(c) = fetch_bytes.as_mut() {
                    *c += n;
                } else if bodies_asked.load(std::sync::atomic::Ordering::SeqCst) {
                    fetch_bytes = Some(n);
                }
                match (&fault, fetch_bytes) {
                    (Fault::DropMidLiteral(limit), Some(c)) if c >= *limit => {
                        let keep = n.saturating_sub(c - limit);
                        let _ = client_w.write_all(&chunk[..keep]).await;
                        break;
                    }
                    (Fault::NoPipelining, None) if !imap => {
                        // CAPA listings are a few short lines, read in one piece.
                        let text = String::from_utf8_lossy(chunk).replace("PIPELINING\r\n", "");
                        if client_w.write_all(text.as_bytes()).await.is_err() {
                            break;
                        }
                    }
                    (Fault::Stall, Some(_)) => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    _ => {
                        if client_w.write_all(chunk).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    }
    upstream.abort();
    let _ = client_w.shutdown().await;
}
