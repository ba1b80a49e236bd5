//! STARTTLS/STLS stripping: fake servers (real servers always offer the upgrade) that do
//! not advertise it, or refuse it. The client must fail before sending any credential.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailsluice::config::{TlsBackend, TlsSettings, TlsVersion};
use mailsluice::net::imap::ImapSession;
use mailsluice::net::pop3::Pop3Session;
use mailsluice::net::{Connector, Security};

/// A scripted server: for each line received, the reply is chosen by `answer`. Returns the
/// port and everything the client sent.
fn fake(greeting: &'static str, answer: fn(&str) -> String) -> (u16, Arc<Mutex<String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(String::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        let Ok((mut sock, _)) = listener.accept() else {
            return;
        };
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        sock.write_all(greeting.as_bytes()).unwrap();
        let mut reader = BufReader::new(sock.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            seen2.lock().unwrap().push_str(&line);
            let reply = answer(line.trim_end());
            if sock.write_all(reply.as_bytes()).is_err() {
                break;
            }
            line.clear();
        }
    });
    (port, seen)
}

fn connector() -> Connector {
    Connector::new(
        &TlsSettings {
            min_version: TlsVersion::V1_2,
            extra_ca_file: None,
            backend: TlsBackend::Rustls,
        },
        Duration::from_secs(5),
        Duration::from_secs(5),
    )
    .unwrap()
}

fn imap_answer_without_starttls(line: &str) -> String {
    let tag = line.split(' ').next().unwrap_or("*");
    if line.ends_with("CAPABILITY") {
        format!("* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n{tag} OK done\r\n")
    } else {
        format!("{tag} OK whatever\r\n")
    }
}

fn imap_answer_refusing_starttls(line: &str) -> String {
    let tag = line.split(' ').next().unwrap_or("*");
    if line.ends_with("CAPABILITY") {
        format!("* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\n{tag} OK done\r\n")
    } else if line.ends_with("STARTTLS") {
        format!("{tag} NO not today\r\n")
    } else {
        format!("{tag} OK whatever\r\n")
    }
}

#[tokio::test]
async fn imap_without_starttls_capability_is_refused_before_credentials() {
    let (port, seen) = fake("* OK fake ready\r\n", imap_answer_without_starttls);
    let err = ImapSession::open(&connector(), "127.0.0.1", port, Security::StartTls, 1 << 20)
        .await
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("does not offer STARTTLS"), "{err}");
    let sent = seen.lock().unwrap().clone();
    assert!(
        !sent.contains("LOGIN") && !sent.contains("AUTHENTICATE"),
        "{sent}"
    );
}

#[tokio::test]
async fn imap_starttls_refused_by_server_is_an_error_naming_its_reply() {
    let (port, seen) = fake("* OK fake ready\r\n", imap_answer_refusing_starttls);
    let err = ImapSession::open(&connector(), "127.0.0.1", port, Security::StartTls, 1 << 20)
        .await
        .err()
        .expect("must fail");
    assert!(
        err.to_string().contains("STARTTLS refused") && err.to_string().contains("not today"),
        "{err}"
    );
    let sent = seen.lock().unwrap().clone();
    assert!(
        !sent.contains("LOGIN") && !sent.contains("AUTHENTICATE"),
        "{sent}"
    );
}

fn pop_answer_without_stls(line: &str) -> String {
    if line == "CAPA" {
        "+OK\r\nUSER\r\nUIDL\r\nSASL PLAIN\r\n.\r\n".into()
    } else {
        "+OK\r\n".into()
    }
}

fn pop_answer_refusing_stls(line: &str) -> String {
    match line {
        "CAPA" => "+OK\r\nUSER\r\nSTLS\r\n.\r\n".into(),
        "STLS" => "-ERR no TLS here\r\n".into(),
        _ => "+OK\r\n".into(),
    }
}

#[tokio::test]
async fn pop3_without_stls_is_refused_before_credentials() {
    let (port, seen) = fake("+OK fake\r\n", pop_answer_without_stls);
    let err = Pop3Session::open(&connector(), "127.0.0.1", port, Security::StartTls)
        .await
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("does not offer STLS"), "{err}");
    let sent = seen.lock().unwrap().clone();
    assert!(
        !sent.contains("USER") && !sent.contains("PASS") && !sent.contains("AUTH"),
        "{sent}"
    );
}

#[tokio::test]
async fn pop3_stls_refused_is_an_error_naming_the_reply() {
    let (port, seen) = fake("+OK fake\r\n", pop_answer_refusing_stls);
    let err = Pop3Session::open(&connector(), "127.0.0.1", port, Security::StartTls)
        .await
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("no TLS here"), "{err}");
    let sent = seen.lock().unwrap().clone();
    assert!(!sent.contains("USER") && !sent.contains("PASS"), "{sent}");
}

#[tokio::test]
async fn implicit_tls_to_a_plaintext_server_fails_as_tls_error() {
    let (port, _seen) = fake("* OK plaintext server\r\n", imap_answer_without_starttls);
    let err = ImapSession::open(&connector(), "127.0.0.1", port, Security::Tls, 1 << 20)
        .await
        .err()
        .expect("must fail");
    assert_eq!(err.kind(), mailsluice::telemetry::ErrorKind::Tls, "{err}");
}
