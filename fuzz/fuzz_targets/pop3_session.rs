//! The POP3 session state machine driven by arbitrary server bytes through a whole session:
//! greeting (implicit TLS or STLS), sign-in (USER/PASS, XOAUTH2 or OAUTHBEARER in two
//! steps), UIDL, LIST, TOP, RETRs (asked for in two rounds, pipelined when the server says
//! PIPELINING), DELE and QUIT, each step taken as far as the server's bytes allow.
//! No panic, every command sent is a CRLF-terminated line, no message is handed out that was
//! not asked for, and none is over its cap.
//!
//! Input: one byte of mode (bit 0: STLS; bits 1-2: the piece size the bytes arrive in;
//! bits 3-4: XOAUTH2, password, OAUTHBEARER; bit 5: TOP before the RETRs), then the server's
//! bytes. The seeds in fuzz/corpus/pop3_session/ are recorded sessions in this form.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mailsluice::protocol::pop3::session::{Authorization, Failure, Plan, Run, State, Step, quit};
use mailsluice::protocol::sasl::Login;
use mailsluice::secret::Secret;

const LIMIT: u64 = 1 << 16;

struct Feed<'a> {
    input: &'a [u8],
    piece: usize,
    buf: Vec<u8>,
}

enum Pumped<I> {
    Item(I),
    Done,
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
                Step::NeedMore { .. } => {
                    if !self.feed() {
                        return Pumped::Starved;
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
        let _ = self.run(quit(state));
    }
}

fn open(feed: &mut Feed<'_>, stls: bool) -> Option<Authorization> {
    if !stls {
        let mut run = Run::implicit_tls();
        return match feed.pump(&mut run) {
            Pumped::Done => run.secured().ok(),
            _ => None,
        };
    }
    let mut run = Run::stls();
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
    let login = match (mode >> 3) & 3 {
        0 => Login::XOAuth2 {
            user: "user@example.test",
            token: &token,
        },
        1 => Login::Password {
            user: "user@example.test",
            password: &token,
        },
        _ => Login::OAuthBearer {
            user: "user@example.test",
            token: &token,
            host: "pop.example.test",
            port: 995,
        },
    };
    let state = match feed.run(state.login(&login)) {
        Some(Ok((state, _))) => state,
        Some(Err(Failure::Refused { state, .. })) => return feed.bye(state),
        _ => return,
    };
    let (state, uidl) = match feed.run(state.uidl()) {
        Some(Ok(found)) => found,
        Some(Err(Failure::Refused { state, .. })) => return feed.bye(state),
        _ => return,
    };
    let (mut state, list) = match feed.run(state.list()) {
        Some(Ok(found)) => found,
        Some(Err(Failure::Refused { state, .. })) => return feed.bye(state),
        _ => return,
    };
    if mode & 32 != 0
        && let Some((n, _)) = list.last()
    {
        state = match feed.run(state.top_header(*n)) {
            Some(Ok((state, header))) => {
                assert!(header.len() as u64 <= (1 << 20) + 1024);
                state
            }
            Some(Err(Failure::Refused { state, .. })) => state,
            _ => return,
        };
    }
    let messages: Vec<(u32, u64)> = list.iter().copied().take(50).collect();
    let (first, rest) = messages.split_at(messages.len() / 2);
    let mut rest = Some(rest);
    let mut asked = first.len();
    let mut got = 0;
    let mut run = state.retrieve(first, LIMIT);
    loop {
        match feed.pump(&mut run) {
            Pumped::Item(body) => {
                got += 1;
                assert!(got <= asked, "a message that was not asked for");
                // The cap, and the 1 KiB allowed over it for dot-stuffing.
                assert!(body.len() as u64 <= LIMIT + 1024, "a message over its cap");
            }
            Pumped::Done => match rest.take() {
                Some(more) if !more.is_empty() => {
                    run.request(more);
                    asked += more.len();
                }
                _ => break,
            },
            Pumped::Starved => return,
        }
    }
    let state = match run.finish() {
        Ok(state) => state,
        Err(Failure::Refused { state, .. }) => state,
        Err(Failure::Fatal(_)) => return,
    };
    let state = match uidl.first() {
        Some((n, _)) => match feed.run(state.dele(*n)) {
            Some(Ok((state, ()))) => state,
            Some(Err(Failure::Refused { state, .. })) => state,
            _ => return,
        },
        None => state,
    };
    feed.bye(state);
});
