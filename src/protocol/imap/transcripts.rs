//! Replays the transcripts in `tests/transcripts/imap/` (format: the README there) through the
//! session state machine: every byte the machine sends must be the client's recorded bytes,
//! and each test asserts the outcomes it reports. Server bytes are fed in pieces of 1 and 5
//! bytes and all at once.

use std::collections::VecDeque;
use std::time::Duration;

use super::session::{
    Failure, IdleWake, ImapError, NotAuthenticated, Plan, PostAction, Run, Selected, Step,
};
use crate::protocol::ProtocolError;
use crate::protocol::sasl::Login;
use crate::secret::Secret;

enum Record {
    Client(Vec<u8>),
    Server(Vec<u8>),
    Tls,
}

fn parse(text: &[u8]) -> VecDeque<Record> {
    let mut out: VecDeque<Record> = VecDeque::new();
    for line in text.split_inclusive(|b| *b == b'\n') {
        if let Some(bytes) = line.strip_prefix(b"S: ") {
            if let Some(Record::Server(b)) = out.back_mut() {
                b.extend_from_slice(bytes);
            } else {
                out.push_back(Record::Server(bytes.to_vec()));
            }
        } else if let Some(bytes) = line.strip_prefix(b"C: ") {
            if let Some(Record::Client(b)) = out.back_mut() {
                b.extend_from_slice(bytes);
            } else {
                out.push_back(Record::Client(bytes.to_vec()));
            }
        } else if line.starts_with(b"= tls") {
            out.push_back(Record::Tls);
        } else {
            assert!(
                line.starts_with(b"#") || line.trim_ascii().is_empty(),
                "not a transcript line: {:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
    out
}

/// What [`Replay::pump`] stopped at.
enum Pumped<I> {
    Item(I),
    Done,
    /// In IDLE, and the server has said all it said before the client's next line.
    Waiting,
}

struct Replay {
    name: &'static str,
    records: VecDeque<Record>,
    chunk: usize,
    buf: Vec<u8>,
}

macro_rules! transcript {
    ($name:literal, $chunk:expr) => {
        Replay::new(
            $name,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/transcripts/imap/",
                $name
            )),
            $chunk,
        )
    };
}

const CHUNKS: [usize; 3] = [1, 5, usize::MAX];

impl Replay {
    fn new(name: &'static str, text: &[u8], chunk: usize) -> Replay {
        Replay {
            name,
            records: parse(text),
            chunk,
            buf: Vec::new(),
        }
    }

    /// Feeds the next piece of what the server said before the client's next line.
    fn feed(&mut self) -> bool {
        let Some(Record::Server(bytes)) = self.records.front_mut() else {
            return false;
        };
        let n = self.chunk.min(bytes.len());
        self.buf.extend(bytes.drain(..n));
        if bytes.is_empty() {
            self.records.pop_front();
        }
        true
    }

    fn expect_sent(&mut self, sent: &[u8]) {
        let name = self.name;
        let Some(Record::Client(expected)) = self.records.front_mut() else {
            panic!(
                "{name}: the machine sent {:?} where the client sent nothing",
                String::from_utf8_lossy(sent)
            );
        };
        let n = sent.len().min(expected.len());
        assert_eq!(
            String::from_utf8_lossy(sent),
            String::from_utf8_lossy(&expected[..n]),
            "{name}: the machine sent other bytes than the client"
        );
        assert_eq!(
            sent.len(),
            n,
            "{name}: the machine sent more than the client"
        );
        expected.drain(..n);
        if expected.is_empty() {
            self.records.pop_front();
        }
    }

    fn pump<P: Plan>(&mut self, run: &mut Run<P>) -> Pumped<P::Item> {
        loop {
            match run.advance(&mut self.buf) {
                Step::Send(bytes) => self.expect_sent(&bytes),
                Step::NeedMore { .. } => assert!(
                    self.feed(),
                    "{}: {} wants more than the server sent before the client's next line",
                    self.name,
                    run.during()
                ),
                Step::Waiting => {
                    if !self.feed() {
                        return Pumped::Waiting;
                    }
                }
                Step::Item(item) => return Pumped::Item(item),
                Step::Done => return Pumped::Done,
            }
        }
    }

    /// Runs an exchange that streams nothing to its end.
    fn run<P: Plan>(&mut self, mut run: Run<P>) -> Result<P::To, Failure<P::From>> {
        match self.pump(&mut run) {
            Pumped::Done => run.finish(),
            _ => panic!("{}: {} stopped before its end", self.name, run.during()),
        }
    }

    fn tls(&mut self) {
        assert!(
            matches!(self.records.pop_front(), Some(Record::Tls)),
            "{}: no TLS handshake here in the transcript",
            self.name
        );
        assert!(self.buf.is_empty(), "{}: bytes left before TLS", self.name);
    }

    /// Every byte the client sent was sent by the machine; a server's last words (after a
    /// LOGOUT's BYE) need not have been read.
    fn end(self) {
        assert!(
            !self
                .records
                .iter()
                .any(|r| matches!(r, Record::Client(_) | Record::Tls)),
            "{}: the machine stopped before the client did",
            self.name
        );
    }

    fn open(&mut self) -> NotAuthenticated {
        let mut run = Run::implicit_tls(1 << 20);
        assert!(matches!(self.pump(&mut run), Pumped::Done));
        run.secured().expect("greeting")
    }

    fn logout<S: super::session::State>(mut self, state: S) {
        self.run(super::session::logout(state))
            .unwrap_or_else(|_| panic!("{}: LOGOUT", self.name));
        self.end();
    }
}

const ALICE: &str = "alice@example.test";

fn password() -> Secret {
    Secret::new("alice-password")
}

fn token() -> Secret {
    Secret::new("TOKEN")
}

/// The messages the recorder seeded (tests/record_imap_transcripts.rs).
fn message(n: usize) -> Vec<u8> {
    format!(
        "From: sender{n}@example.test\r\nTo: {ALICE}\r\nSubject: transcript message {n}\r\nMessage-ID: <transcript-{n}@example.test>\r\n\r\nBody of message {n}.\r\nA second line.\r\n"
    )
    .into_bytes()
}

fn sign_in_with_password(t: &mut Replay) -> super::session::Authenticated {
    let pw = password();
    let state = t.open();
    let login = Login::Password {
        user: ALICE,
        password: &pw,
    };
    let (state, line) = t.run(state.login(&login)).expect("AUTHENTICATE PLAIN");
    assert!(line.starts_with("A0001 OK"), "{line}");
    state
}

fn select_inbox(t: &mut Replay, state: super::session::Authenticated) -> Selected {
    t.run(state.select("INBOX", false)).expect("SELECT")
}

#[test]
fn greeting_capabilities_come_from_the_greeting() {
    for chunk in CHUNKS {
        let mut t = transcript!("greeting_logout.txt", chunk);
        let state = t.open();
        let caps = state.capabilities();
        for cap in ["IMAP4REV1", "SASL-IR", "AUTH=XOAUTH2", "AUTH=OAUTHBEARER"] {
            assert!(caps.contains(cap), "{cap} missing from {caps:?}");
        }
        t.logout(state);
    }
}

#[test]
fn starttls_forgets_plain_capabilities_and_logs_in_after_tls() {
    for chunk in CHUNKS {
        let mut t = transcript!("starttls_login.txt", chunk);
        let mut run = Run::starttls(1 << 20);
        assert!(matches!(t.pump(&mut run), Pumped::Done));
        assert!(run.capabilities().contains("LOGINDISABLED"));
        let awaiting = run.awaiting_tls().expect("STARTTLS accepted");
        assert!(awaiting.capabilities().is_empty());
        t.tls();
        let state = t
            .run(awaiting.tls_established())
            .expect("capabilities over TLS");
        let caps = state.capabilities();
        assert!(!caps.contains("LOGINDISABLED") && !caps.contains("STARTTLS"));
        assert!(caps.contains("AUTH=PLAIN"), "offered once TLS is up");
        let pw = password();
        let login = Login::Password {
            user: ALICE,
            password: &pw,
        };
        let (state, line) = t.run(state.login(&login)).expect("AUTHENTICATE PLAIN");
        assert!(line.starts_with("A0004 OK"), "{line}");
        for cap in ["IDLE", "MOVE", "UIDPLUS"] {
            assert!(state.capabilities().contains(cap), "{cap} after login");
        }
        t.logout(state);
    }
}

#[test]
fn a_password_goes_by_login_when_auth_plain_is_not_offered() {
    for chunk in CHUNKS {
        let mut t = transcript!("login.txt", chunk);
        let state = t.open();
        assert!(!state.capabilities().contains("AUTH=PLAIN"));
        let pw = password();
        let login = Login::Password {
            user: ALICE,
            password: &pw,
        };
        let (state, line) = t.run(state.login(&login)).expect("LOGIN");
        assert!(line.starts_with("A0001 OK"), "{line}");
        assert!(state.capabilities().contains("IDLE"));
        t.logout(state);
    }
}

#[test]
fn a_plain_connection_without_starttls_never_gets_to_credentials() {
    let text = b"S: * OK ready\r\nC: A0001 CAPABILITY\r\nS: * CAPABILITY IMAP4rev1 AUTH=PLAIN\r\nS: A0001 OK done\r\n";
    for chunk in CHUNKS {
        let mut t = Replay::new("no STARTTLS", text, chunk);
        let mut run = Run::starttls(1 << 20);
        assert!(matches!(t.pump(&mut run), Pumped::Done));
        assert_eq!(run.awaiting_tls().unwrap_err(), ImapError::NoStartTls);
        t.end();
    }
}

#[test]
fn oauth_sign_in_is_accepted() {
    let tok = token();
    let cases = [
        (
            "xoauth2",
            Login::XOAuth2 {
                user: ALICE,
                token: &tok,
            },
        ),
        (
            "oauthbearer",
            Login::OAuthBearer {
                user: ALICE,
                token: &tok,
                host: "localhost",
                port: 993,
            },
        ),
    ];
    for (mech, login) in &cases {
        for chunk in CHUNKS {
            let mut t = match *mech {
                "xoauth2" => transcript!("xoauth2_ok.txt", chunk),
                _ => transcript!("oauthbearer_ok.txt", chunk),
            };
            let state = t.open();
            let (state, line) = t.run(state.login(login)).expect("sign-in");
            assert!(line.starts_with("A0001 OK"), "{mech}: {line}");
            assert!(
                state.capabilities().contains("MOVE"),
                "{mech}: post-auth caps"
            );
            t.logout(state);
        }
    }
}

#[test]
fn a_rejected_token_gets_its_error_challenge_answered() {
    let bad = Secret::new("not-a-valid-token");
    let cases = [
        (
            "xoauth2",
            Login::XOAuth2 {
                user: ALICE,
                token: &bad,
            },
            "\"status\":\"401\"",
        ),
        (
            "oauthbearer",
            Login::OAuthBearer {
                user: ALICE,
                token: &bad,
                host: "localhost",
                port: 993,
            },
            "invalid_token",
        ),
    ];
    for (mech, login, challenge) in &cases {
        for chunk in CHUNKS {
            let mut t = match *mech {
                "xoauth2" => transcript!("xoauth2_rejected.txt", chunk),
                _ => transcript!("oauthbearer_rejected.txt", chunk),
            };
            let state = t.open();
            let Err(Failure::Refused { state, error }) = t.run(state.login(login)) else {
                panic!("{mech}: the sign-in was not refused");
            };
            let ImapError::AuthRefused { reply } = error else {
                panic!("{mech}: {error:?}");
            };
            assert!(reply.contains("[AUTHENTICATIONFAILED]"), "{mech}: {reply}");
            assert!(reply.contains(challenge), "{mech}: {reply}");
            t.logout(state);
        }
    }
}

#[test]
fn select_lists_uids_and_streams_bodies_from_their_literals() {
    for chunk in CHUNKS {
        let mut t = transcript!("select_fetch.txt", chunk);
        let state = sign_in_with_password(&mut t);
        let state = select_inbox(&mut t, state);
        let mailbox = state.mailbox();
        assert_eq!(mailbox.exists, 3);
        assert_eq!(mailbox.uidnext, Some(4));
        assert!(mailbox.uidvalidity > 0);
        let (state, uids) = t.run(state.uids_between(1, None)).expect("UIDs");
        let sizes: Vec<(u32, u32)> = (1..=3)
            .map(|n| (n as u32, message(n).len() as u32))
            .collect();
        assert_eq!(uids, sizes);
        let mut run = state.fetch(&[1, 2, 3]);
        let mut bodies = Vec::new();
        while let Pumped::Item(f) = t.pump(&mut run) {
            assert!(f.internal_date.is_some());
            bodies.push((f.uid.unwrap_or_default(), f.body.unwrap_or_default()));
        }
        let state = run.finish().expect("FETCH completed");
        let expected: Vec<(u32, Vec<u8>)> = (1..=3).map(|n| (n as u32, message(n))).collect();
        assert_eq!(bodies, expected);
        t.logout(state);
    }
}

#[test]
fn idle_ends_with_new_mail_when_the_server_reports_exists() {
    for chunk in CHUNKS {
        let mut t = transcript!("idle_exists.txt", chunk);
        let state = sign_in_with_password(&mut t);
        let state = select_inbox(&mut t, state);
        let mut run = state.idle();
        let (state, wake) = match t.pump(&mut run) {
            Pumped::Done => run.finish().expect("IDLE completed"),
            _ => panic!("IDLE did not end on EXISTS"),
        };
        assert_eq!(wake, IdleWake::NewMail);
        t.logout(state);
    }
}

#[test]
fn idle_is_ended_by_the_caller_with_done() {
    let text = b"S: * OK [CAPABILITY IMAP4rev1 IDLE] ready\r\nC: A0001 IDLE\r\nS: + idling\r\nS: * OK Still here\r\nC: DONE\r\nS: A0001 OK Idle completed.\r\n";
    for chunk in CHUNKS {
        let mut t = Replay::new("idle timeout", text, chunk);
        let state = t.open();
        // Selected by hand: this transcript is only about IDLE.
        let state = super::session::Selected::for_test(state, 1);
        let mut run = state.idle();
        assert!(matches!(t.pump(&mut run), Pumped::Waiting));
        run.wake(IdleWake::Timeout);
        assert!(matches!(t.pump(&mut run), Pumped::Done));
        let (_, wake) = run.finish().expect("IDLE completed");
        assert_eq!(wake, IdleWake::Timeout);
        t.end();
    }
}

#[test]
fn post_actions_use_move_and_uid_expunge_when_offered() {
    for chunk in CHUNKS {
        let mut t = transcript!("post_actions.txt", chunk);
        let state = sign_in_with_password(&mut t);
        let state = select_inbox(&mut t, state);
        let state = t
            .run(state.post_action(PostAction::Seen, &[1], None))
            .expect("seen");
        let state = t
            .run(state.post_action(PostAction::Move, &[2], None))
            .expect("move");
        let state = t
            .run(state.post_action(PostAction::Delete, &[3], None))
            .expect("delete");
        // Keep, or nothing to act on: no command at all.
        let state = t
            .run(state.post_action(PostAction::Keep, &[4], None))
            .expect("keep");
        let state = t
            .run(state.post_action(PostAction::Delete, &[], None))
            .expect("nothing");
        t.logout(state);
    }
}

#[test]
fn o365_bye_with_an_expired_token_is_told_apart() {
    let tok = token();
    let login = Login::XOAuth2 {
        user: "user@contoso.onmicrosoft.com",
        token: &tok,
    };
    for chunk in CHUNKS {
        let mut t = transcript!("o365_token_expired.txt", chunk);
        let mut run = Run::implicit_tls(1 << 20);
        assert!(matches!(t.pump(&mut run), Pumped::Done));
        let state = run.secured().expect("greeting and CAPABILITY");
        assert!(!state.capabilities().contains("MOVE"));
        let (state, _) = t.run(state.login(&login)).expect("sign-in");
        assert!(state.capabilities().contains("MOVE"), "asked after login");
        let Err(Failure::Fatal(error)) = t.run(state.select("INBOX", false)) else {
            panic!("BYE did not end the session");
        };
        assert_eq!(
            error,
            ImapError::TokenExpired {
                line: "* BYE Session invalidated - AccessTokenExpired".into()
            }
        );
        t.end();
    }
}

#[test]
fn o365_throttling_carries_the_suggested_backoff() {
    let tok = token();
    let login = Login::XOAuth2 {
        user: "user@contoso.onmicrosoft.com",
        token: &tok,
    };
    for chunk in CHUNKS {
        let mut t = transcript!("o365_throttled.txt", chunk);
        let state = t.open();
        let Err(Failure::Refused { state, error }) = t.run(state.login(&login)) else {
            panic!("throttling was not a refusal");
        };
        assert_eq!(
            error,
            ImapError::Throttled {
                line: "A0002 NO Request is throttled. Suggested Backoff Time: 2500 milliseconds"
                    .into(),
                backoff: Duration::from_millis(2500),
            }
        );
        t.logout(state);
    }
}

#[test]
fn o365_authenticated_but_not_connected_is_a_refused_select() {
    let tok = token();
    let login = Login::XOAuth2 {
        user: "user@contoso.onmicrosoft.com",
        token: &tok,
    };
    for chunk in CHUNKS {
        let mut t = transcript!("o365_not_connected.txt", chunk);
        let state = t.open();
        let (state, _) = t.run(state.login(&login)).expect("sign-in");
        let Err(Failure::Refused { state, error }) = t.run(state.select("INBOX", false)) else {
            panic!("SELECT was not refused");
        };
        // BAD: the command was not accepted, which is about the session, not the folder.
        assert_eq!(
            error,
            ImapError::Protocol(ProtocolError::CommandRefused(
                "A0004 BAD User is authenticated but not connected.".into()
            ))
        );
        t.logout(state);
    }
}

#[test]
fn without_uidplus_move_uses_uid_move_and_delete_is_refused_unsent() {
    let tok = token();
    let login = Login::XOAuth2 {
        user: "user@contoso.onmicrosoft.com",
        token: &tok,
    };
    for chunk in CHUNKS {
        let mut t = transcript!("o365_no_uidplus.txt", chunk);
        let state = t.open();
        let (state, _) = t.run(state.login(&login)).expect("sign-in");
        assert!(!state.capabilities().contains("UIDPLUS"));
        let state = select_inbox(&mut t, state);
        assert_eq!(state.mailbox().uidvalidity, 14);
        let state = t
            .run(state.post_action(PostAction::Move, &[1], None))
            .expect("move without UIDPLUS");
        let Err(Failure::Refused { state, error }) =
            t.run(state.post_action(PostAction::Delete, &[2], None))
        else {
            panic!("delete without UIDPLUS was not refused");
        };
        assert!(
            matches!(error, ImapError::Protocol(ProtocolError::MissingCapability(ref why)) if why.contains("UIDPLUS")),
            "{error:?}"
        );
        t.logout(state);
    }
}

/// The hot path through the state machine: a body of known length arrives in the read
/// buffer and leaves in the same allocation (no copy between the socket's buffer and the
/// message handed on), and the room asked for while it arrives covers the whole literal.
#[test]
fn a_streamed_body_keeps_the_read_buffers_allocation() {
    let body: Vec<u8> = (0..300_000u32)
        .map(|i| b"line\r\n"[(i % 6) as usize])
        .collect();
    let mut frame = format!(
        "* 1 FETCH (UID 7 RFC822.SIZE {n} INTERNALDATE \"01-Jan-2024 10:00:00 +0000\" BODY[] {{{n}}}\r\n",
        n = body.len()
    )
    .into_bytes();
    let announced = frame.len() + body.len();
    frame.extend_from_slice(&body);
    frame.extend_from_slice(b")\r\nA0001 OK done\r\n");
    let greeting = b"* OK [CAPABILITY IMAP4rev1] ready\r\n";
    let mut buf = greeting.to_vec();
    let mut run = Run::implicit_tls(1 << 20);
    assert!(matches!(run.advance(&mut buf), Step::Done));
    let state = Selected::for_test(run.secured().expect("greeting"), 1);
    let mut run = state.fetch(&[7]);
    assert!(matches!(run.advance(&mut buf), Step::Send(_)));
    // The announcement first: the machine says how long the buffer must become.
    let head = frame.len() - body.len() - b")\r\nA0001 OK done\r\n".len();
    buf.extend_from_slice(&frame[..head]);
    let Step::NeedMore { room: Some(room) } = run.advance(&mut buf) else {
        panic!("no room asked for the literal");
    };
    assert_eq!(room, announced);
    // As the reader does: room for all of it at once, then the rest arrives.
    buf.reserve_exact(room + 16 * 1024 - buf.len());
    buf.extend_from_slice(&frame[head..]);
    let at = buf.as_ptr();
    let Step::Item(fetched) = run.advance(&mut buf) else {
        panic!("no message");
    };
    let got = fetched.body.expect("body");
    assert_eq!(got, body);
    assert_eq!(
        got.as_ptr(),
        at,
        "the body was copied out of the read buffer"
    );
    assert!(matches!(run.advance(&mut buf), Step::Done));
    assert!(run.finish().is_ok() && buf.is_empty());
}
