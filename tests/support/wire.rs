//! Blocking, line-oriented IMAP/POP3 connections over TCP and rustls, for tests that talk to
//! the servers directly (to prove what the server accepts, or to inspect a mailbox after the
//! code under test ran). Every read and write has a timeout, so a confused exchange fails the
//! test instead of hanging it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use super::certs::{Ca, loopback_name};

/// Read/write timeout of every harness connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// A TLS stream over TCP.
pub type Tls = StreamOwned<ClientConnection, TcpStream>;

/// A line-oriented connection (CRLF-terminated lines, as IMAP and POP3 use).
pub struct Conn<S: Read + Write> {
    reader: BufReader<S>,
}

/// TCP connection to 127.0.0.1:`port` with the harness timeouts.
pub fn tcp(port: u16) -> TcpStream {
    let stream = TcpStream::connect_timeout(&loopback(port), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    set_timeouts(&stream);
    stream
}

/// TCP connection to 127.0.0.1:`port` from the local address `source` (e.g. 127.0.0.2, which
/// Dovecot does not count as "secured", unlike 127.0.0.1 -> 127.0.0.1).
pub fn tcp_from(source: IpAddr, port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("create a TCP socket");
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .unwrap_or_else(|e| panic!("bind a client socket to {source}: {e}"));
    socket
        .connect_timeout(&loopback(port).into(), IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {source} -> 127.0.0.1:{port}: {e}"));
    let stream: TcpStream = socket.into();
    set_timeouts(&stream);
    stream
}

/// Plain-text line connection to 127.0.0.1:`port`.
pub fn plain(port: u16) -> Conn<TcpStream> {
    Conn::new(tcp(port))
}

/// Plain-text line connection to 127.0.0.1:`port` from `source`.
pub fn plain_from(source: IpAddr, port: u16) -> Conn<TcpStream> {
    Conn::new(tcp_from(source, port))
}

/// Implicit-TLS line connection to 127.0.0.1:`port`, trusting only `ca`. The handshake is
/// completed before returning, so a TLS failure panics here with rustls' reason.
pub fn tls(port: u16, ca: &Ca) -> Conn<Tls> {
    Conn::new(tls_over(tcp(port), ca.client_config(), loopback_name()))
}

/// Like [`tls`] with a caller's configuration (e.g. one limited to TLS 1.2) and server name.
/// Returns the handshake error instead of panicking.
pub fn try_tls_with(
    port: u16,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<Conn<Tls>, rustls::Error> {
    try_tls_over(tcp(port), config, name).map(Conn::new)
}

/// Wraps `stream` in TLS and completes the handshake; panics on failure.
pub fn tls_over(stream: TcpStream, config: Arc<ClientConfig>, name: ServerName<'static>) -> Tls {
    try_tls_over(stream, config, name).unwrap_or_else(|e| panic!("TLS handshake: {e}"))
}

/// Wraps `stream` in TLS and completes the handshake.
pub fn try_tls_over(
    mut stream: TcpStream,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Result<Tls, rustls::Error> {
    let mut conn = ClientConnection::new(config, name)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut stream).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => e
                .into_inner()
                .and_then(|inner| inner.downcast::<rustls::Error>().ok())
                .map(|boxed| *boxed)
                .unwrap_or_else(|| rustls::Error::General("invalid data".into())),
            _ => rustls::Error::General(format!("I/O during the handshake: {e}")),
        })?;
    }
    Ok(StreamOwned::new(conn, stream))
}

impl<S: Read + Write> Conn<S> {
    pub fn new(stream: S) -> Self {
        Conn {
            reader: BufReader::new(stream),
        }
    }

    /// Reads one line, without its CRLF. Panics on EOF, timeout or I/O error.
    pub fn read_line(&mut self) -> String {
        self.try_read_line()
            .unwrap_or_else(|e| panic!("reading a line from the server: {e}"))
    }

    /// Reads one line, without its CRLF; EOF is an `UnexpectedEof` error.
    pub fn try_read_line(&mut self) -> std::io::Result<String> {
        let mut buf = Vec::new();
        let n = self.reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Reads exactly `n` bytes (an IMAP literal).
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let mut buf = vec![0; n];
        self.reader
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("reading {n} bytes from the server: {e}"));
        buf
    }

    /// Sends `line` followed by CRLF.
    pub fn send(&mut self, line: &str) {
        let stream = self.reader.get_mut();
        stream
            .write_all(line.as_bytes())
            .and_then(|()| stream.write_all(b"\r\n"))
            .and_then(|()| stream.flush())
            .unwrap_or_else(|e| panic!("sending a line to the server: {e}"));
    }

    /// Sends an IMAP command `<tag> <command>` and returns every line up to and including the
    /// tagged completion (the last element). Literals in responses are not decoded.
    pub fn imap(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(&format!("{tag} {command}"));
        self.read_until_tagged(tag)
    }

    /// Reads lines until the tagged completion for `tag`, which is the last element.
    pub fn read_until_tagged(&mut self, tag: &str) -> Vec<String> {
        let prefix = format!("{tag} ");
        let mut lines = Vec::new();
        loop {
            let line = self.read_line();
            let done = line.starts_with(&prefix);
            lines.push(line);
            if done {
                return lines;
            }
        }
    }

    /// Sends a POP3 command and returns its status line.
    pub fn pop3(&mut self, command: &str) -> String {
        self.send(command);
        self.read_line()
    }

    /// Reads a POP3 multi-line body up to (not including) the terminating ".", un-stuffing
    /// leading dots.
    pub fn read_pop3_multiline(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line();
            if line == "." {
                return lines;
            }
            lines.push(line.strip_prefix('.').map(str::to_owned).unwrap_or(line));
        }
    }

    pub fn get_ref(&self) -> &S {
        self.reader.get_ref()
    }

    pub fn get_mut(&mut self) -> &mut S {
        self.reader.get_mut()
    }
}

impl Conn<TcpStream> {
    /// Upgrades after a successful `STARTTLS`/`STLS` reply, trusting only `ca`.
    pub fn starttls(self, ca: &Ca) -> Conn<Tls> {
        assert!(
            self.reader.buffer().is_empty(),
            "the server sent data after its STARTTLS reply (possible injection)"
        );
        Conn::new(tls_over(
            self.reader.into_inner(),
            ca.client_config(),
            loopback_name(),
        ))
    }
}

impl Conn<Tls> {
    /// The negotiated TLS version.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        self.get_ref().conn.protocol_version()
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

fn set_timeouts(stream: &TcpStream) {
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set a read timeout");
    stream
        .set_write_timeout(Some(IO_TIMEOUT))
        .expect("set a write timeout");
}
