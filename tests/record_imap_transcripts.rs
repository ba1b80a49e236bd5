//! Records Dovecot's real answers into `tests/transcripts/imap/` (format: the README there).
//! The unit tests in `src/protocol/imap/transcripts.rs` replay these files through the IMAP
//! state machine, so they run without a server; this recorder is how the files were made
//! and how to remake them after a Dovecot upgrade:
//!
//!     cargo test --test record_imap_transcripts -- --ignored
//!
//! The client side here is written out by hand, command by command, exactly as the state
//! machine sends it (tags `A0001`, `A0002`, ... per session), so a replay fails when the
//! machine's commands change. Access tokens are replaced by `TOKEN` in the recorded client
//! lines; the server's bytes are kept exactly, CRLF included.

mod support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::path::PathBuf;

use mailsluice::protocol::sasl;
use mailsluice::secret::Secret;
use support::certs::loopback_name;
use support::{Dovecot, DovecotOptions, Oidc, OidcOptions, wire};

const ALICE: &str = "alice@example.test";
const ALICE_PW: &str = "alice-password";
const SCOPE: &str = "openid offline_access email mail";

enum Stream {
    Plain(TcpStream),
    Tls(Box<wire::Tls>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// One recorded session.
struct Rec {
    stream: Option<Stream>,
    /// Read but not yet recorded.
    buf: Vec<u8>,
    text: Vec<u8>,
}

fn prefixed(out: &mut Vec<u8>, prefix: &[u8], bytes: &[u8]) {
    for piece in bytes.split_inclusive(|b| *b == b'\n') {
        out.extend_from_slice(prefix);
        out.extend_from_slice(piece);
    }
}

impl Rec {
    fn new(stream: Stream, about: &str) -> Rec {
        let mut text = Vec::new();
        for line in about.lines() {
            text.extend_from_slice(format!("# {line}\n").as_bytes());
        }
        Rec {
            stream: Some(stream),
            buf: Vec::new(),
            text,
        }
    }

    fn stream(&mut self) -> &mut Stream {
        self.stream.as_mut().expect("stream")
    }

    fn send(&mut self, line: &str) {
        self.send_shown(line, line);
    }

    /// Sends `line` + CRLF, recording `shown` instead (a token replaced).
    fn send_shown(&mut self, line: &str, shown: &str) {
        let bytes = format!("{line}\r\n");
        self.stream().write_all(bytes.as_bytes()).expect("send");
        self.stream().flush().expect("flush");
        prefixed(&mut self.text, b"C: ", format!("{shown}\r\n").as_bytes());
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream().read(&mut chunk).expect("read from Dovecot");
        assert!(n > 0, "Dovecot closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Reads one response (a line, with any literals and the lines after them), records it
    /// and returns its text.
    fn response(&mut self) -> String {
        let mut at = 0;
        loop {
            let Some(lf) = self.buf[at..].iter().position(|b| *b == b'\n') else {
                self.fill();
                continue;
            };
            let line_end = at + lf + 1;
            let line = &self.buf[at..line_end];
            let literal = std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.trim_end().strip_suffix('}'))
                .and_then(|l| l.rsplit_once('{'))
                .and_then(|(_, n)| n.trim_end_matches('+').parse::<usize>().ok());
            match literal {
                Some(n) => {
                    while self.buf.len() < line_end + n {
                        self.fill();
                    }
                    at = line_end + n;
                }
                None => {
                    let frame: Vec<u8> = self.buf.drain(..line_end).collect();
                    prefixed(&mut self.text, b"S: ", &frame);
                    return String::from_utf8_lossy(&frame).into_owned();
                }
            }
        }
    }

    /// Responses up to and including the tagged completion of `tag`.
    fn until_tagged(&mut self, tag: &str) -> String {
        loop {
            let r = self.response();
            if r.starts_with(&format!("{tag} ")) {
                return r;
            }
        }
    }

    fn command(&mut self, tag: &str, command: &str) -> String {
        self.send(&format!("{tag} {command}"));
        self.until_tagged(tag)
    }

    fn starttls(&mut self, dovecot: &Dovecot) {
        assert!(self.buf.is_empty(), "bytes after the STARTTLS reply");
        let Some(Stream::Plain(tcp)) = self.stream.take() else {
            panic!("STARTTLS on a TLS stream");
        };
        let tls = wire::tls_over(tcp, dovecot.ca.client_config(), loopback_name());
        self.stream = Some(Stream::Tls(Box::new(tls)));
        self.text.extend_from_slice(b"= tls\n");
    }

    fn logout(mut self, tag: &str, name: &str) {
        self.command(tag, "LOGOUT");
        save(name, &self.text);
    }
}

fn save(name: &str, text: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts/imap");
    std::fs::create_dir_all(&dir).expect("create the transcript directory");
    std::fs::write(dir.join(name), text).expect("write a transcript");
}

fn imaps(dovecot: &Dovecot, about: &str) -> Rec {
    let tls = wire::tls_over(
        wire::tcp(dovecot.imaps_port),
        dovecot.ca.client_config(),
        loopback_name(),
    );
    let mut rec = Rec::new(Stream::Tls(Box::new(tls)), about);
    let greeting = rec.response();
    assert!(greeting.contains("[CAPABILITY"), "{greeting}");
    rec
}

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: sender{n}@example.test\r\nTo: {ALICE}\r\nSubject: transcript message {n}\r\nMessage-ID: <transcript-{n}@example.test>\r\n\r\nBody of message {n}.\r\nA second line.\r\n"
    )
    .into_bytes()
}

#[test]
#[ignore = "writes tests/transcripts/imap/; run by hand after a Dovecot upgrade"]
fn record_dovecot_transcripts() {
    let oidc = Oidc::start(OidcOptions::default());
    let dovecot = Dovecot::start(DovecotOptions {
        oidc_introspection_url: Some(oidc.introspection_url()),
        ..DovecotOptions::default()
    });
    dovecot.seed(ALICE, &[message(1), message(2), message(3)]);
    let token = oidc
        .login_auth_code("collector", ALICE, ALICE_PW, SCOPE)
        .access_token;
    let token = Secret::new(token);
    let shown = Secret::new("TOKEN");
    let plain = sasl::plain(ALICE, &Secret::new(ALICE_PW));
    let login = format!("AUTHENTICATE PLAIN {}", plain.expose());

    // Greeting with capabilities over implicit TLS, then LOGOUT.
    let rec = imaps(
        &dovecot,
        "Dovecot 2.3: implicit TLS greeting (capabilities in it), LOGOUT.",
    );
    rec.logout("A0001", "greeting_logout.txt");

    // STARTTLS from 127.0.0.2 (Dovecot counts 127.0.0.1 as secured and would not need it).
    let plain = wire::tcp_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), dovecot.imap_port);
    let mut rec = Rec::new(
        Stream::Plain(plain),
        "Dovecot 2.3: plain greeting, CAPABILITY, STARTTLS, TLS handshake, CAPABILITY again,\nAUTHENTICATE PLAIN with a password, LOGOUT.",
    );
    rec.response();
    rec.command("A0001", "CAPABILITY");
    let ok = rec.command("A0002", "STARTTLS");
    assert!(ok.starts_with("A0002 OK"), "{ok}");
    rec.starttls(&dovecot);
    rec.command("A0003", "CAPABILITY");
    let ok = rec.command("A0004", &login);
    assert!(ok.starts_with("A0004 OK"), "{ok}");
    rec.logout("A0005", "starttls_login.txt");

    // LOGIN. Dovecot always offers AUTH=PLAIN (its LOGIN command goes through that
    // mechanism), and with it on offer a password is sent by AUTHENTICATE PLAIN; so that the
    // replay uses LOGIN, AUTH=PLAIN is taken out of the recorded greeting. Every other byte
    // is as Dovecot sent it.
    let mut rec = imaps(
        &dovecot,
        "Dovecot 2.3: LOGIN with a password, LOGOUT. Edited: AUTH=PLAIN removed from the greeting\n(so that the client uses LOGIN); every other byte as recorded.",
    );
    let edited = String::from_utf8_lossy(&rec.text).replace(" AUTH=PLAIN", "");
    rec.text = edited.into_bytes();
    let ok = rec.command("A0001", &format!("LOGIN \"{ALICE}\" \"{ALICE_PW}\""));
    assert!(ok.starts_with("A0001 OK"), "{ok}");
    rec.logout("A0002", "login.txt");

    for (mech, file) in [
        ("XOAUTH2", "xoauth2_ok.txt"),
        ("OAUTHBEARER", "oauthbearer_ok.txt"),
    ] {
        let mut rec = imaps(
            &dovecot,
            &format!(
                "Dovecot 2.3: AUTHENTICATE {mech} with SASL-IR, accepted; LOGOUT.\nThe token is shown as TOKEN."
            ),
        );
        let (real, fake) = match mech {
            "XOAUTH2" => (sasl::xoauth2(ALICE, &token), sasl::xoauth2(ALICE, &shown)),
            _ => (
                sasl::oauthbearer(ALICE, "localhost", dovecot.imaps_port, &token),
                sasl::oauthbearer(ALICE, "localhost", 993, &shown),
            ),
        };
        rec.send_shown(
            &format!("A0001 AUTHENTICATE {mech} {}", real.expose()),
            &format!("A0001 AUTHENTICATE {mech} {}", fake.expose()),
        );
        let ok = rec.until_tagged("A0001");
        assert!(ok.starts_with("A0001 OK"), "{ok}");
        rec.logout("A0002", file);
    }

    let bad = Secret::new("not-a-valid-token");
    for (mech, file, answer) in [
        ("XOAUTH2", "xoauth2_rejected.txt", ""),
        ("OAUTHBEARER", "oauthbearer_rejected.txt", "AQ=="),
    ] {
        let mut rec = imaps(
            &dovecot,
            &format!(
                "Dovecot 2.3: AUTHENTICATE {mech} with a token the server rejects: an error\nchallenge, answered at once, then NO; LOGOUT."
            ),
        );
        let ir = match mech {
            "XOAUTH2" => sasl::xoauth2(ALICE, &bad),
            _ => sasl::oauthbearer(ALICE, "localhost", 993, &bad),
        };
        rec.send(&format!("A0001 AUTHENTICATE {mech} {}", ir.expose()));
        let challenge = rec.response();
        assert!(challenge.starts_with("+ "), "{challenge}");
        rec.send(answer);
        let no = rec.until_tagged("A0001");
        assert!(no.starts_with("A0001 NO"), "{no}");
        rec.logout("A0002", file);
    }

    // SELECT, the UID listing and a UID FETCH of bodies (literals).
    let mut rec = imaps(
        &dovecot,
        "Dovecot 2.3: AUTHENTICATE PLAIN, SELECT INBOX (3 messages), UID FETCH of sizes, UID FETCH of bodies\n(literals), LOGOUT.",
    );
    rec.command("A0001", &login);
    rec.command("A0002", "SELECT INBOX");
    rec.command("A0003", "UID FETCH 1:* (UID RFC822.SIZE)");
    rec.command(
        "A0004",
        "UID FETCH 1:3 (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])",
    );
    rec.logout("A0005", "select_fetch.txt");

    // IDLE: a message arrives while idling.
    let mut rec = imaps(
        &dovecot,
        "Dovecot 2.3: AUTHENTICATE PLAIN, SELECT INBOX, IDLE; a message is delivered: EXISTS; DONE; LOGOUT.",
    );
    rec.command("A0001", &login);
    rec.command("A0002", "SELECT INBOX");
    rec.send("A0003 IDLE");
    let idling = rec.response();
    assert!(idling.starts_with("+ "), "{idling}");
    dovecot.seed(ALICE, &[message(4)]);
    loop {
        let r = rec.response();
        if r.contains("EXISTS") {
            break;
        }
    }
    rec.send("DONE");
    rec.until_tagged("A0003");
    rec.logout("A0004", "idle_exists.txt");

    // Post-actions as the state machine chooses them with MOVE and UIDPLUS on offer.
    let mut rec = imaps(
        &dovecot,
        "Dovecot 2.3: AUTHENTICATE PLAIN, SELECT INBOX, then the post-ingest actions with MOVE and UIDPLUS\noffered: seen (UID STORE), move (CREATE, UID MOVE), delete (UID STORE \\Deleted,\nUID EXPUNGE); LOGOUT.",
    );
    rec.command("A0001", &login);
    rec.command("A0002", "SELECT INBOX");
    rec.command("A0003", "UID STORE 1 +FLAGS.SILENT (\\Seen)");
    rec.command("A0004", "CREATE \"Processed\"");
    rec.command("A0005", "UID MOVE 2 \"Processed\"");
    rec.command("A0006", "UID STORE 3 +FLAGS.SILENT (\\Deleted)");
    rec.command("A0007", "UID EXPUNGE 3");
    rec.logout("A0008", "post_actions.txt");
}
