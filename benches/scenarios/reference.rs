//! The "speed of light": the least work that fetches every message, with the bytes read
//! and thrown away. It runs as a child process (this bench binary started again with
//! `--reference-child`), so it is timed and accounted exactly like every other contender.
//!
//! - IMAP: one TLS connection per mailbox; `LOGIN`, `EXAMINE INBOX`, then one
//!   `UID FETCH 1:* (BODY.PEEK[])`; literals are skipped by their announced length.
//! - POP3: one TLS connection per mailbox; `USER`/`PASS`, `STAT`, then `RETR` of every
//!   message, pipelined [`POP3_WINDOW`] commands at a time (Dovecot announces PIPELINING);
//!   each reply is read to its terminating dot line and the dot-stuffing undone for the count.
//!
//! Mailboxes are fetched one after the other. Blocking rustls over std TCP: no runtime, no
//! parsing beyond the framing, no storage.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// RETR commands in flight at once.
pub const POP3_WINDOW: usize = 32;

/// What the reference fetched: (messages, message bytes).
pub type Fetched = (u64, u64);

/// Entry point of `--reference-child PROTOCOL PORT CA_FILE PASSWORD USERS_FILE`: fetches
/// every mailbox and prints `messages N bytes B`.
pub fn child_main(args: &[String]) -> ! {
    let [protocol, port, ca, password, users] = args else {
        eprintln!("--reference-child PROTOCOL PORT CA_FILE PASSWORD USERS_FILE");
        std::process::exit(2);
    };
    let result = (|| -> Result<Fetched, String> {
        let port: u16 = port.parse().map_err(|_| format!("port {port:?}"))?;
        let config = client_config(Path::new(ca))?;
        let users = std::fs::read_to_string(users).map_err(|e| format!("{users}: {e}"))?;
        let mut total = (0, 0);
        for user in users.lines().filter(|u| !u.is_empty()) {
            let (n, b) = match protocol.as_str() {
                "imap" => imap(&config, port, user, password),
                "pop3" => pop3(&config, port, user, password),
                other => Err(format!("unknown protocol {other:?}")),
            }
            .map_err(|e| format!("{user}: {e}"))?;
            total.0 += n;
            total.1 += b;
        }
        Ok(total)
    })();
    match result {
        Ok((messages, bytes)) => {
            println!("messages {messages} bytes {bytes}");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("reference: {e}");
            std::process::exit(1)
        }
    }
}

/// Parses the child's `messages N bytes B` line.
pub fn parse_output(stdout: &str) -> Option<Fetched> {
    let mut words = stdout.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("messages"), Some(n), Some("bytes"), Some(b)) => {
            Some((n.parse().ok()?, b.parse().ok()?))
        }
        _ => None,
    }
}

/// The arguments that start the reference child (after the program path).
pub fn child_args(
    protocol: &str,
    port: u16,
    ca: &Path,
    password: &str,
    users: &Path,
) -> Vec<String> {
    vec![
        "--reference-child".into(),
        protocol.into(),
        port.to_string(),
        ca.display().to_string(),
        password.into(),
        users.display().to_string(),
    ]
}

type Tls = BufReader<StreamOwned<ClientConnection, TcpStream>>;

fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

fn connect(config: &Arc<ClientConfig>, port: u16) -> Result<Tls, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(config.clone(), name).map_err(|e| format!("TLS: {e}"))?;
    Ok(BufReader::with_capacity(
        256 * 1024,
        StreamOwned::new(conn, tcp),
    ))
}

fn send(io: &mut Tls, line: &str) -> Result<(), String> {
    let stream = io.get_mut();
    stream
        .write_all(line.as_bytes())
        .and_then(|()| stream.flush())
        .map_err(|e| format!("send: {e}"))
}

fn read_line(io: &mut Tls, line: &mut Vec<u8>) -> Result<(), String> {
    line.clear();
    match io.read_until(b'\n', line) {
        Ok(0) => Err("connection closed by the server".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Reads up to the tagged reply of `tag` and fails unless it is OK.
fn imap_done(io: &mut Tls, tag: &str) -> Result<(), String> {
    let mut line = Vec::new();
    loop {
        read_line(io, &mut line)?;
        if line.starts_with(tag.as_bytes()) && line.get(tag.len()) == Some(&b' ') {
            let ok = line[tag.len() + 1..].starts_with(b"OK");
            return if ok {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&line).trim_end().to_string())
            };
        }
    }
}

/// `{N}` at the end of an IMAP line: the length of the literal that follows.
fn literal_len(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&inner[open + 1..]).ok()?.parse().ok()
}

fn imap(
    config: &Arc<ClientConfig>,
    port: u16,
    user: &str,
    password: &str,
) -> Result<Fetched, String> {
    let mut io = connect(config, port)?;
    let mut line = Vec::new();
    read_line(&mut io, &mut line)?;
    if !line.starts_with(b"* OK") {
        return Err(format!("greeting {:?}", String::from_utf8_lossy(&line)));
    }
    send(&mut io, &format!("a1 LOGIN \"{user}\" \"{password}\"\r\n"))?;
    imap_done(&mut io, "a1")?;
    send(&mut io, "a2 EXAMINE INBOX\r\n")?;
    imap_done(&mut io, "a2")?;
    send(&mut io, "a3 UID FETCH 1:* (BODY.PEEK[])\r\n")?;
    let (mut messages, mut bytes) = (0, 0);
    loop {
        read_line(&mut io, &mut line)?;
        if let Some(n) = literal_len(&line) {
            let skipped = std::io::copy(&mut (&mut io).take(n), &mut std::io::sink())
                .map_err(|e| format!("read a literal: {e}"))?;
            if skipped != n {
                return Err("connection closed inside a literal".into());
            }
            messages += 1;
            bytes += n;
            // The rest of the FETCH response (`)` and CRLF) comes as the next line.
            continue;
        }
        if line.starts_with(b"a3 ") {
            if !line[3..].starts_with(b"OK") {
                return Err(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            break;
        }
    }
    send(&mut io, "a4 LOGOUT\r\n")?;
    let _ = imap_done(&mut io, "a4");
    Ok((messages, bytes))
}

fn pop3_ok(io: &mut Tls, line: &mut Vec<u8>) -> Result<(), String> {
    read_line(io, line)?;
    if line.starts_with(b"+OK") {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(line).trim_end().to_string())
    }
}

fn pop3(
    config: &Arc<ClientConfig>,
    port: u16,
    user: &str,
    password: &str,
) -> Result<Fetched, String> {
    let mut io = connect(config, port)?;
    let mut line = Vec::new();
    pop3_ok(&mut io, &mut line)?;
    send(&mut io, &format!("USER {user}\r\n"))?;
    pop3_ok(&mut io, &mut line)?;
    send(&mut io, &format!("PASS {password}\r\n"))?;
    pop3_ok(&mut io, &mut line)?;
    send(&mut io, "STAT\r\n")?;
    pop3_ok(&mut io, &mut line)?;
    let count: usize = std::str::from_utf8(&line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("STAT reply {:?}", String::from_utf8_lossy(&line)))?;
    let (mut messages, mut bytes) = (0, 0);
    let mut next = 1;
    while next <= count {
        let window = (next..=count).take(POP3_WINDOW);
        let commands: String = window.clone().map(|i| format!("RETR {i}\r\n")).collect();
        send(&mut io, &commands)?;
        for _ in window {
            pop3_ok(&mut io, &mut line)?;
            loop {
                read_line(&mut io, &mut line)?;
                if line == b".\r\n" {
                    break;
                }
                // Dot-stuffing: a line starting with "." came with one more.
                let stuffed = u64::from(line.first() == Some(&b'.'));
                bytes += line.len() as u64 - stuffed;
            }
            messages += 1;
            next += 1;
        }
    }
    send(&mut io, "QUIT\r\n")?;
    let _ = pop3_ok(&mut io, &mut line);
    Ok((messages, bytes))
}

/// Writes the user list the child reads.
pub fn write_users(path: &Path, users: &[String]) -> PathBuf {
    std::fs::write(path, users.join("\n") + "\n")
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.to_path_buf()
}
