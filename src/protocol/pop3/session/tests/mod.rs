//! The POP3 session state machine against scripted server bytes: the exact bytes it sends,
//! what each `-ERR` leads to, STLS, the two-step AUTH, pipelined RETRs, and replies arriving
//! in pieces of every size.

use super::*;
use crate::protocol::pop3::MAX_LINE;

mod maildrop;

/// Piece sizes server bytes arrive in: every split of a short reply, and all at once.
const CHUNKS: [usize; 7] = [1, 2, 3, 5, 7, 13, usize::MAX];

/// What pumping an exchange with some server bytes gave.
struct Pumped<I> {
    /// Every byte the machine asked to send, in order.
    sent: Vec<u8>,
    items: Vec<I>,
    /// The `room` of each `NeedMore`.
    rooms: Vec<Option<usize>>,
    /// The exchange said `Done` (else the server's bytes ran out first).
    done: bool,
}

impl<I> Pumped<I> {
    fn sent(&self) -> String {
        String::from_utf8_lossy(&self.sent).into_owned()
    }
}

/// Pumps `run`, feeding `server` into `buf` `chunk` bytes at a time when it needs more. What
/// is left of `server` at `Done` is put into `buf`, where the caller's next read would be.
fn pump<P: Plan>(
    run: &mut Run<P>,
    buf: &mut Vec<u8>,
    server: &[u8],
    chunk: usize,
) -> Pumped<P::Item> {
    let mut input = server;
    let mut out = Pumped {
        sent: Vec::new(),
        items: Vec::new(),
        rooms: Vec::new(),
        done: false,
    };
    // Sends in a row with nothing read between them: a machine that never stops sending.
    let mut sends = 0;
    loop {
        let step = run.advance(buf);
        sends = if matches!(step, Step::Send(_)) {
            sends + 1
        } else {
            0
        };
        assert!(sends < 1000, "the machine keeps sending without reading");
        match step {
            Step::Send(bytes) => out.sent.extend_from_slice(&bytes),
            Step::NeedMore { room } => {
                out.rooms.push(room);
                if input.is_empty() {
                    return out;
                }
                let n = chunk.min(input.len());
                buf.extend_from_slice(&input[..n]);
                input = &input[n..];
            }
            Step::Item(item) => out.items.push(item),
            Step::Done => {
                out.done = true;
                buf.extend_from_slice(input);
                return out;
            }
        }
    }
}

/// Runs an exchange to its end on `server`, all of it at once: what it sent, and how it
/// finished.
fn exchange<P: Plan>(mut run: Run<P>, server: &str) -> (String, Result<P::To, Failure<P::From>>) {
    let mut buf = Vec::new();
    let pumped = pump(&mut run, &mut buf, server.as_bytes(), usize::MAX);
    assert!(pumped.done, "the exchange wanted more than {server:?}");
    assert!(
        buf.is_empty(),
        "left unread: {:?}",
        String::from_utf8_lossy(&buf)
    );
    (pumped.sent(), run.finish())
}

fn caps(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|c| c.to_string()).collect()
}

/// Greeted on a TLS connection whose CAPA listing is `capa` (lines with CRLF).
fn authorization(capa: &str) -> Authorization {
    let mut run = Run::implicit_tls();
    let mut buf = Vec::new();
    let server = format!("+OK ready\r\n+OK\r\n{capa}.\r\n");
    assert!(pump(&mut run, &mut buf, server.as_bytes(), usize::MAX).done);
    run.secured().unwrap()
}

/// Signed in with a password; `capa` is the CAPA listing after it.
fn transaction(capa: &str) -> Transaction {
    let password = Secret::new("pw");
    let login = Login::Password {
        user: "u",
        password: &password,
    };
    let server = format!("+OK\r\n+OK in\r\n+OK\r\n{capa}.\r\n");
    let (_, end) = exchange(authorization("USER\r\n").login(&login), &server);
    end.unwrap().0
}

fn rejected(line: &str) -> Pop3Error {
    ProtocolError::Rejected(line.into()).into()
}

// ---------------------------------------------------------------------------------------
// Greeting, CAPA, STLS

#[test]
fn implicit_tls_reads_the_greeting_then_asks_capa() {
    for chunk in CHUNKS {
        let mut run = Run::implicit_tls();
        assert_eq!(run.during(), "waiting for the greeting");
        let mut buf = Vec::new();
        let server = b"+OK Dovecot ready.\r\n+OK\r\nTOP\r\nUIDL\r\nSASL PLAIN XOAUTH2\r\n.\r\n";
        let pumped = pump(&mut run, &mut buf, server, chunk);
        assert!(pumped.done);
        assert_eq!(pumped.sent(), "CAPA\r\n");
        assert_eq!(run.during(), "CAPA");
        assert_eq!(
            run.capabilities(),
            &caps(&["SASL", "SASL PLAIN", "SASL XOAUTH2", "TOP", "UIDL"])
        );
        let state = run.secured().unwrap();
        assert!(state.capabilities().contains("SASL XOAUTH2"));
    }
}

#[test]
fn a_greeting_other_than_ok_is_fatal_with_the_servers_words() {
    for greeting in ["-ERR [SYS/TEMP] too busy\r\n", "+ what\r\n"] {
        let (sent, end) = exchange(Run::implicit_tls(), greeting);
        assert_eq!(sent, "");
        let Err(Failure::Fatal(error)) = end else {
            panic!("{greeting:?} was accepted");
        };
        assert_eq!(error, rejected(greeting.trim_end()));
    }
}

#[test]
fn a_server_that_does_not_answer_capa_has_no_capabilities_and_is_not_refused() {
    for capa in ["-ERR unknown command\r\n", "+ \r\n"] {
        let server = format!("+OK old server\r\n{capa}");
        let mut run = Run::implicit_tls();
        let mut buf = Vec::new();
        assert!(pump(&mut run, &mut buf, server.as_bytes(), usize::MAX).done);
        assert!(buf.is_empty());
        assert!(run.secured().unwrap().capabilities().is_empty());
    }
}

#[test]
fn stls_asks_capa_then_stls_and_leaves_what_follows_its_ok_unread() {
    for chunk in CHUNKS {
        let mut run = Run::stls();
        let mut buf = Vec::new();
        let server = b"+OK hi\r\n+OK\r\nUSER\r\nSTLS\r\n.\r\n+OK Begin TLS\r\n-ERR injected\r\n";
        let pumped = pump(&mut run, &mut buf, server, chunk);
        assert!(pumped.done);
        assert_eq!(pumped.sent(), "CAPA\r\nSTLS\r\n");
        assert_eq!(run.during(), "STLS");
        // For the caller to fail the upgrade with: the server spoke before the handshake.
        assert_eq!(buf, b"-ERR injected\r\n");
        let awaiting = run.awaiting_tls().unwrap();
        assert!(
            awaiting.capabilities().is_empty(),
            "capabilities heard before TLS were kept"
        );
    }
}

#[test]
fn stls_not_offered_fails_before_anything_but_capa_is_sent() {
    let (sent, end) = exchange(Run::stls(), "+OK hi\r\n+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n");
    assert_eq!(sent, "CAPA\r\n");
    assert!(matches!(end, Err(Failure::Fatal(Pop3Error::NoStls))));
    assert_eq!(
        Pop3Error::NoStls.to_string(),
        "server does not offer STLS; refusing to continue without TLS"
    );
}

#[test]
fn stls_refused_is_fatal_and_names_the_reply() {
    let mut run = Run::stls();
    let mut buf = Vec::new();
    let server = b"+OK hi\r\n+OK\r\nSTLS\r\n.\r\n-ERR no TLS here\r\n";
    assert!(pump(&mut run, &mut buf, server, usize::MAX).done);
    let error = run.awaiting_tls().unwrap_err();
    assert_eq!(
        error,
        Pop3Error::StlsRefused {
            line: "-ERR no TLS here".into()
        }
    );
    assert_eq!(error.to_string(), "STLS refused: -ERR no TLS here");
}

#[test]
fn an_implicit_tls_set_up_is_not_taken_for_an_stls_one_nor_the_reverse() {
    let mut run = Run::implicit_tls();
    let mut buf = Vec::new();
    assert!(pump(&mut run, &mut buf, b"+OK\r\n-ERR\r\n", usize::MAX).done);
    assert_eq!(run.awaiting_tls().unwrap_err(), Pop3Error::NoStls);

    let mut run = Run::stls();
    let server = b"+OK\r\n+OK\r\nSTLS\r\n.\r\n+OK\r\n";
    assert!(pump(&mut run, &mut buf, server, usize::MAX).done);
    assert!(matches!(
        run.secured(),
        Err(Pop3Error::Protocol(ProtocolError::Malformed(_)))
    ));
}

#[test]
fn after_the_handshake_capabilities_are_asked_again() {
    let mut run = Run::stls();
    let mut buf = Vec::new();
    let server = b"+OK\r\n+OK\r\nSTLS\r\nUSER\r\n.\r\n+OK\r\n";
    assert!(pump(&mut run, &mut buf, server, usize::MAX).done);
    let run = run.awaiting_tls().unwrap().tls_established();
    assert_eq!(run.during(), "CAPA");
    let (sent, end) = exchange(run, "+OK\r\nUIDL\r\nSASL XOAUTH2\r\n.\r\n");
    assert_eq!(sent, "CAPA\r\n");
    assert_eq!(
        end.unwrap().capabilities(),
        &caps(&["SASL", "SASL XOAUTH2", "UIDL"])
    );
}

/// A CAPA reply of `len` bytes of listing (lines of 16 bytes), then its terminator.
fn capa_of(len: usize) -> Vec<u8> {
    let mut server = b"+OK\r\n+OK\r\n".to_vec();
    let lines = len / 16;
    for _ in 0..lines {
        server.extend_from_slice(b"X-CAPABILITY-0\r\n");
    }
    server.resize(server.len() + len - lines * 16, b'X');
    server.extend_from_slice(b"\r\n.\r\n");
    server
}

#[test]
fn a_capa_listing_may_have_1_mib_and_no_more() {
    // The cap allows 1 KiB over the limit for dot-stuffing.
    let mut run = Run::implicit_tls();
    let mut buf = Vec::new();
    assert!(pump(&mut run, &mut buf, &capa_of((1 << 20) + 1000), usize::MAX).done);
    assert!(
        run.secured()
            .unwrap()
            .capabilities()
            .contains("X-CAPABILITY-0")
    );

    let mut run = Run::implicit_tls();
    assert!(pump(&mut run, &mut buf, &capa_of((1 << 20) + 1100), usize::MAX).done);
    assert_eq!(
        run.secured().unwrap_err(),
        ProtocolError::LiteralTooLarge {
            size: (1 << 20) + 1024 + 16,
            limit: 1 << 20
        }
        .into()
    );
}

#[test]
fn an_oversized_reply_line_is_fatal() {
    let mut line = b"+OK ".to_vec();
    line.resize(MAX_LINE + 1, b'x');
    for chunk in [1000, usize::MAX] {
        let mut run = Run::implicit_tls();
        let mut buf = Vec::new();
        let pumped = pump(&mut run, &mut buf, &line, chunk);
        assert!(pumped.done, "a line with no end in sight was waited for");
        assert_eq!(
            run.secured().unwrap_err(),
            ProtocolError::LineTooLong(MAX_LINE).into()
        );
    }
    // One byte shorter, ended by CRLF, is a line.
    let mut line = b"+OK ".to_vec();
    line.resize(MAX_LINE - 2, b'x');
    line.extend_from_slice(b"\r\n-ERR\r\n");
    let (_, end) = exchange(Run::implicit_tls(), &String::from_utf8(line).unwrap());
    assert!(end.is_ok());
}

// ---------------------------------------------------------------------------------------
// Signing in

#[test]
fn a_password_is_sent_with_user_and_pass_then_capa_is_asked_again() {
    let password = Secret::new("s3cret pass");
    let login = Login::Password {
        user: "alice@example.test",
        password: &password,
    };
    for chunk in CHUNKS {
        let mut run = authorization("USER\r\n").login(&login);
        assert_eq!(run.during(), "USER");
        let mut buf = Vec::new();
        let pumped = pump(&mut run, &mut buf, b"+OK\r\n", chunk);
        assert_eq!(
            pumped.sent(),
            "USER alice@example.test\r\nPASS s3cret pass\r\n"
        );
        assert_eq!(run.during(), "PASS");
        let pumped = pump(&mut run, &mut buf, b"+OK Logged in.\r\n", chunk);
        assert_eq!(pumped.sent(), "CAPA\r\n");
        assert_eq!(run.during(), "CAPA");
        let server = b"+OK\r\nTOP\r\nUIDL\r\nPIPELINING\r\n.\r\n";
        assert!(pump(&mut run, &mut buf, server, chunk).done);
        let (state, line) = run.finish().unwrap();
        assert_eq!(line, "+OK Logged in.");
        assert_eq!(state.capabilities(), &caps(&["PIPELINING", "TOP", "UIDL"]));
        assert!(state.pipelining());
    }
}

#[test]
fn err_to_user_or_pass_refuses_the_sign_in_and_keeps_the_state() {
    let password = Secret::new("pw");
    let login = Login::Password {
        user: "u",
        password: &password,
    };
    for (server, sent) in [
        ("-ERR [AUTH] no such user\r\n", "USER u\r\n"),
        (
            "+OK\r\n-ERR [AUTH] no such user\r\n",
            "USER u\r\nPASS pw\r\n",
        ),
        // A continuation is no answer to USER: the password is not sent after it.
        ("+ go on\r\n", "USER u\r\n"),
    ] {
        let (got, end) = exchange(authorization("USER\r\n").login(&login), server);
        assert_eq!(got, sent);
        let Err(Failure::Refused { state, error }) = end else {
            panic!("{server:?} was not a refusal");
        };
        let line = server.lines().last().unwrap();
        assert_eq!(error, Pop3Error::AuthRefused { reply: line.into() });
        assert_eq!(state.capabilities(), &caps(&["USER"]));
    }
}

#[test]
fn sys_temp_at_sign_in_is_unavailable_and_throttling_keeps_its_backoff() {
    let token = Secret::new("tok");
    let password = Secret::new("pw");
    let logins = [
        Login::Password {
            user: "u",
            password: &password,
        },
        Login::XOAuth2 {
            user: "u",
            token: &token,
        },
    ];
    for login in &logins {
        // Refused at the first step (USER, or AUTH) and at the second (PASS, or after `+`).
        for before in ["", "+OK\r\n"] {
            let before = match (login, before) {
                (Login::XOAuth2 { .. }, "+OK\r\n") => "+ \r\n",
                _ => before,
            };
            let line = "-ERR [sys/temp] Temporary authentication failure.";
            let (_, end) = exchange(
                authorization("").login(login),
                &format!("{before}{line}\r\n"),
            );
            let error = end.err().unwrap().into_error();
            assert_eq!(error, Pop3Error::Unavailable { reply: line.into() });

            let line = "-ERR Request is throttled. Suggested Backoff Time: 1500 milliseconds";
            let (_, end) = exchange(
                authorization("").login(login),
                &format!("{before}{line}\r\n"),
            );
            let error = end.err().unwrap().into_error();
            assert_eq!(
                error,
                Pop3Error::Throttled {
                    line: line.into(),
                    backoff: Duration::from_millis(1500)
                }
            );
        }
    }
}

#[test]
fn a_user_name_or_password_with_a_line_break_is_refused_before_anything_is_sent() {
    let good = Secret::new("pw");
    let bad = Secret::new("pw\r\nDELE 1");
    for (user, password) in [("u\r\nDELE 1", &good), ("u", &bad), ("u\0", &good)] {
        let login = Login::Password { user, password };
        let mut run = authorization("").login(&login);
        let mut buf = Vec::new();
        let pumped = pump(&mut run, &mut buf, b"", usize::MAX);
        assert!(pumped.done && pumped.sent.is_empty());
        let Err(Failure::Refused { error, .. }) = run.finish() else {
            panic!("{user:?} was sent");
        };
        assert_eq!(
            error.to_string(),
            "authentication refused: user name or password contains CR, LF or NUL"
        );
        assert!(!error.to_string().contains("DELE"));
    }
}

#[test]
fn xoauth2_goes_in_two_steps_auth_then_the_response_after_the_plus() {
    let token = Secret::new("test-access-token");
    let login = Login::XOAuth2 {
        user: "alice@example.test",
        token: &token,
    };
    let response = "dXNlcj1hbGljZUBleGFtcGxlLnRlc3QBYXV0aD1CZWFyZXIgdGVzdC1hY2Nlc3MtdG9rZW4BAQ==";
    for chunk in CHUNKS {
        let mut run = authorization("SASL PLAIN XOAUTH2\r\n").login(&login);
        assert_eq!(run.during(), "authenticating");
        let mut buf = Vec::new();
        // Office 365 answers AUTH with a bare `+ ` and waits for the response line.
        let pumped = pump(&mut run, &mut buf, b"", chunk);
        assert_eq!(pumped.sent(), "AUTH XOAUTH2\r\n");
        let pumped = pump(&mut run, &mut buf, b"+ \r\n", chunk);
        assert_eq!(pumped.sent(), format!("{response}\r\n"));
        let server = b"+OK User successfully authenticated.\r\n+OK\r\nUIDL\r\n.\r\n";
        let pumped = pump(&mut run, &mut buf, server, chunk);
        assert!(pumped.done);
        assert_eq!(pumped.sent(), "CAPA\r\n");
        let (state, line) = run.finish().unwrap();
        assert_eq!(line, "+OK User successfully authenticated.");
        assert_eq!(state.capabilities(), &caps(&["UIDL"]));
    }
}

#[test]
fn an_error_challenge_is_answered_at_once_and_reported_with_the_refusal() {
    let token = Secret::new("expired-token");
    // {"status":"400","schemes":"Bearer"}
    let challenge = "eyJzdGF0dXMiOiI0MDAiLCJzY2hlbWVzIjoiQmVhcmVyIn0=";
    for (login, abort) in [
        (
            Login::XOAuth2 {
                user: "u",
                token: &token,
            },
            "\r\n",
        ),
        (
            Login::OAuthBearer {
                user: "u",
                token: &token,
                host: "h",
                port: 995,
            },
            "AQ==\r\n",
        ),
    ] {
        let server = format!("+ \r\n+ {challenge}\r\n-ERR [AUTH] Authentication failed.\r\n");
        let (sent, end) = exchange(authorization("").login(&login), &server);
        let lines: Vec<&str> = sent.split_inclusive("\r\n").collect();
        assert_eq!(lines.len(), 3, "{sent}");
        assert_eq!(lines[2], abort);
        let Err(Failure::Refused { error, .. }) = end else {
            panic!("accepted");
        };
        assert_eq!(
            error,
            Pop3Error::AuthRefused {
                reply: "-ERR [AUTH] Authentication failed. (challenge: {\"status\":\"400\",\"schemes\":\"Bearer\"})".into()
            }
        );
        // A refusal without an error challenge names none.
        let (_, end) = exchange(authorization("").login(&login), "+ \r\n-ERR no\r\n");
        assert_eq!(
            end.err().unwrap().into_error(),
            Pop3Error::AuthRefused {
                reply: "-ERR no".into()
            }
        );
        // An empty error challenge adds nothing either.
        let (_, end) = exchange(authorization("").login(&login), "+ \r\n+ \r\n-ERR no\r\n");
        assert_eq!(
            end.err().unwrap().into_error(),
            Pop3Error::AuthRefused {
                reply: "-ERR no".into()
            }
        );
    }
}

#[test]
fn oauthbearer_sends_its_mechanism_and_response() {
    let token = Secret::new("tok");
    let login = Login::OAuthBearer {
        user: "u",
        token: &token,
        host: "pop.example.test",
        port: 995,
    };
    let (sent, end) = exchange(
        authorization("").login(&login),
        "+ \r\n+OK\r\n-ERR no CAPA\r\n",
    );
    let response = sasl::oauthbearer("u", "pop.example.test", 995, &token);
    assert_eq!(
        sent,
        format!("AUTH OAUTHBEARER\r\n{}\r\nCAPA\r\n", response.expose())
    );
    let (state, line) = end.unwrap();
    assert_eq!(line, "+OK ");
    assert!(state.capabilities().is_empty());
}

#[test]
fn no_password_or_token_shows_in_steps_errors_or_debug_output() {
    let secret = Secret::new("hunter2-secret");
    let logins = [
        (
            Login::Password {
                user: "u",
                password: &secret,
            },
            "+OK\r\n-ERR [AUTH] denied\r\n",
        ),
        (
            Login::XOAuth2 {
                user: "u",
                token: &secret,
            },
            "+ \r\n-ERR [AUTH] denied\r\n",
        ),
    ];
    let encoded = sasl::xoauth2("u", &secret);
    for (login, server) in &logins {
        let mut run = authorization("").login(login);
        let mut buf = server.as_bytes().to_vec();
        let mut shown = String::new();
        let mut sent = Vec::new();
        loop {
            let step = run.advance(&mut buf);
            shown.push_str(&format!("{step:?} {run:?}\n"));
            match step {
                Step::Send(bytes) => sent.extend(bytes),
                Step::Done => break,
                _ => panic!("{server:?} was not enough"),
            }
        }
        let failure = run.finish().err().unwrap();
        shown.push_str(&format!("{failure:?} {}", failure.error()));
        let sent = String::from_utf8(sent).unwrap();
        // The secret went to the server, and nowhere else.
        assert!(
            sent.contains("hunter2") || sent.contains(encoded.expose()),
            "{sent}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains(encoded.expose()), "{shown}");
        assert!(shown.contains("Send("), "{shown}");
    }
}
