//! The IMAP session state machine driven by arbitrary server bytes through a whole session:
//! greeting (implicit TLS or STARTTLS), sign-in, SELECT, UID listing, UID FETCH streaming,
//! a post-ingest action, IDLE and LOGOUT, each step taken as far as the server's bytes allow.
//! No panic, every command sent is a CRLF-terminated line, a literal's announced end is
//! beyond what is buffered, and a body never exceeds the literal cap.
//!
//! Input: one byte of mode (bit 0: STARTTLS; bits 1-2: the piece size the bytes arrive in;
//! bit 3: password instead of XOAUTH2; bit 4: delete instead of move), then the server's
//! bytes. The seeds in fuzz/corpus/imap_session/ are recorded sessions in this form.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailsluice::protocol::imap::session::{
    Failure, IdleWake, NotAuthenticated, Plan, PostAction, Run, State, Step, logout,
};
use mailsluice::protocol::sasl::Login;
use mailsluice::secret::Secret;

const MAX_LITERAL: u64 = 1 << 16;

struct Feed<'a> {
    input: &'a [u8],
    piece: usize,
    buf: Vec<u8>,
}

enum Pumped<I> {
    Item(I),
    Done,
    Waiting,
    /// The server's bytes ran out mid-exchange.
    Starved,
}

impl Feed<'_> {
    fn pump<P: Plan>(&mut self, run: &mut Run<P>) -> Pumped<P::Item> {
        loop {
            match run.advance(&mut self.buf) {
                Step::Send(bytes) => {
                    assert!(bytes.ends_with(b"\r\n"), "a command without its CRLF");
                }
                Step::NeedMore { room } => {
                    if let Some(end) = room {
                        assert!(end > self.buf.len(), "a literal that has already arrived");
                    }
                    if !self.feed() {
                        return Pumped::Starved;
                    }
                }
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

    fn feed(&mut self) -> bool {
        if self.input.is_empty() {
            return false;
        }
        let n = self.piece.min(self.input.len());
        self.buf.extend_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        true
    }

    /// Runs an exchange that streams nothing; `None` when the bytes ran out.
    fn run<P: Plan>(&mut self, mut run: Run<P>) -> Option<Result<P::To, Failure<P::From>>> {
        match self.pump(&mut run) {
            Pumped::Done => Some(run.finish()),
            _ => None,
        }
    }

    fn bye<S: State>(&mut self, state: S) {
        let _ = self.run(logout(state));
    }
}

fn open(feed: &mut Feed<'_>, starttls: bool) -> Option<NotAuthenticated> {
    if !starttls {
        let mut run = Run::implicit_tls(MAX_LITERAL);
        return match feed.pump(&mut run) {
            Pumped::Done => run.secured().ok(),
            _ => None,
        };
    }
    let mut run = Run::starttls(MAX_LITERAL);
    let Pumped::Done = feed.pump(&mut run) else {
        return None;
    };
    let awaiting = run.awaiting_tls().ok()?;
    assert!(awaiting.capabilities().is_empty());
    let mut run = awaiting.tls_established();
    match feed.pump(&mut run) {
        Pumped::Done => run.secured().ok(),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    let piece = [1, 7, 64, usize::MAX][usize::from(mode >> 1) & 3];
    let mut feed = Feed {
        input,
        piece,
        buf: Vec::new(),
    };
    let Some(state) = open(&mut feed, mode & 1 == 1) else {
        return;
    };
    let token = Secret::new("TOKEN");
    let login = if mode & 8 == 0 {
        Login::XOAuth2 {
            user: "user@example.test",
            token: &token,
        }
    } else {
        Login::Password {
            user: "user@example.test",
            password: &token,
        }
    };
    let state = match feed.run(state.login(&login)) {
        Some(Ok((state, _))) => state,
        Some(Err(Failure::Refused { state, .. })) => return feed.bye(state),
        _ => return,
    };
    let state = match feed.run(state.select("INBOX", false)) {
        Some(Ok(state)) => state,
        Some(Err(Failure::Refused { state, .. })) => return feed.bye(state),
        _ => return,
    };
    let (state, uids) = match feed.run(state.uids_between(1, None)) {
        Some(Ok(found)) => found,
        Some(Err(Failure::Refused { state, .. })) => return feed.bye(state),
        _ => return,
    };
    let wanted: Vec<u32> = uids.iter().map(|(uid, _)| *uid).take(50).collect();
    let mut run = state.fetch(&wanted);
    loop {
        match feed.pump(&mut run) {
            Pumped::Item(f) => {
                let body = f.body.unwrap_or_default();
                assert!(
                    body.len() as u64 <= MAX_LITERAL,
                    "a body over the literal cap"
                );
            }
            Pumped::Done => break,
            _ => return,
        }
    }
    let state = match run.finish() {
        Ok(state) => state,
        Err(Failure::Refused { state, .. }) => state,
        Err(Failure::Fatal(_)) => return,
    };
    let action = if mode & 16 == 0 {
        PostAction::Move
    } else {
        PostAction::Delete
    };
    let state = match feed.run(state.post_action(action, &wanted, None)) {
        Some(Ok(state)) => state,
        Some(Err(Failure::Refused { state, .. })) => state,
        _ => return,
    };
    let mut run = state.idle();
    loop {
        match feed.pump(&mut run) {
            Pumped::Waiting => run.wake(IdleWake::Timeout),
            Pumped::Done => break,
            _ => return,
        }
    }
    match run.finish() {
        Ok((state, _)) => feed.bye(state),
        Err(Failure::Refused { state, .. }) => feed.bye(state),
        Err(Failure::Fatal(_)) => {}
    }
});
