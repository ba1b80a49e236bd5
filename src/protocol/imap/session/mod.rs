//! The IMAP client session as typed states and the exchanges between them, without I/O.
//!
//! States ([RFC 3501 §3]): [`NotAuthenticated`] (greeted on a secured connection),
//! [`AwaitingTls`] (STARTTLS accepted, handshake not yet done), [`Authenticated`] and
//! [`Selected`] (which carries the folder's UIDVALIDITY, UIDNEXT and EXISTS). A transition is
//! a method that consumes its state and returns a [`Run`]: an exchange the caller pumps with
//! [`Run::advance`] until it says [`Step::Done`], then ends with [`Run::finish`], which gives
//! the next state, or [`Failure::Refused`] with the old state back when the server said no,
//! or [`Failure::Fatal`] when the session cannot go on.
//!
//! Invariants:
//! - Credentials can only be sent from [`NotAuthenticated`], which is reached from a greeting
//!   read on a connection the caller declares secured ([`Run::implicit_tls`]) or from
//!   [`AwaitingTls::tls_established`]: a plain connection can only do STARTTLS.
//! - Capabilities learned before STARTTLS are discarded; after it they are asked again.
//! - An exchange stops reading at its own tagged completion, so bytes a server sends after
//!   its STARTTLS OK stay in the caller's buffer (where they must fail the upgrade).
//! - A SASL error challenge is answered at once, so a refusal never waits out a timeout.
//! - A message body is taken from its literal, whatever RFC822.SIZE said, and keeps the
//!   allocation of the read buffer it arrived in ([`crate::protocol::take_front`]).
//!
//! The way to the authenticated state (greeting, STARTTLS, sign-in) is in `connect`; the
//! commands of the authenticated and selected states in `mailbox`.
//!
//! [RFC 3501 §3]: https://www.rfc-editor.org/rfc/rfc3501#section-3

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use super::{Commands, first_line};
use super::{
    Completion, DEFAULT_MAX_LINE, Fetched, Framer, IDLE_DONE, ResponseCode, ServerResponse,
    parse_greeting, parse_response_owned, pattern_matches,
};
use crate::protocol::sasl::{self, Login};
use crate::protocol::{ProtocolError, suggested_backoff, take_front};
use crate::secret::Secret;

mod connect;
mod mailbox;

pub use connect::*;
pub use mailbox::*;

/// Why an exchange did not end well, in the server's words where it gave any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImapError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// `* BYE`: the server is closing the connection.
    #[error("server closed the session: {line}")]
    Bye { line: String },
    /// `* BYE ... AccessTokenExpired` (Office 365): the token ran out during the session.
    #[error("access token expired: {line}")]
    TokenExpired { line: String },
    /// Office 365's "Request is throttled. Suggested Backoff Time: N milliseconds".
    #[error("server asks to slow down: {line}")]
    Throttled { line: String, backoff: Duration },
    #[error("authentication refused: {reply}")]
    AuthRefused { reply: String },
    /// `NO [UNAVAILABLE]`: the server cannot check credentials now; not a credential problem.
    #[error("server temporarily unavailable: {reply}")]
    Unavailable { reply: String },
    #[error("server does not offer STARTTLS; refusing to continue without TLS")]
    NoStartTls,
    #[error("STARTTLS refused: {line}")]
    StartTlsRefused { line: String },
}

/// A BYE, classified: throttling and an expired token are told apart from a plain close.
fn bye(line: String) -> ImapError {
    if let Some(backoff) = suggested_backoff(&line) {
        return ImapError::Throttled { line, backoff };
    }
    if line.contains("AccessTokenExpired") {
        return ImapError::TokenExpired { line };
    }
    ImapError::Bye { line }
}

/// A tagged NO or BAD to a command that is not a login.
fn refused(completion: Completion, line: String) -> ImapError {
    match suggested_backoff(&line) {
        Some(backoff) => ImapError::Throttled { line, backoff },
        None if completion == Completion::Bad => {
            ImapError::Protocol(ProtocolError::CommandRefused(line))
        }
        None => ImapError::Protocol(ProtocolError::Rejected(line)),
    }
}

/// A tagged NO or BAD to AUTHENTICATE or LOGIN.
fn login_refused(line: String, challenge: Option<String>) -> ImapError {
    if let Some(backoff) = suggested_backoff(&line) {
        return ImapError::Throttled { line, backoff };
    }
    if line.to_ascii_uppercase().contains("[UNAVAILABLE]") {
        return ImapError::Unavailable { reply: line };
    }
    let reply = match challenge {
        Some(c) if !c.is_empty() => format!("{line} (challenge: {c})"),
        _ => line,
    };
    ImapError::AuthRefused { reply }
}

/// How an exchange that did not succeed ended.
#[derive(Debug)]
pub enum Failure<S> {
    /// The server refused; the connection is still usable, in `state`.
    Refused { state: S, error: ImapError },
    /// The session cannot go on (BYE, a response we cannot accept, a failed STARTTLS).
    Fatal(ImapError),
}

impl<S> Failure<S> {
    pub fn error(&self) -> &ImapError {
        match self {
            Failure::Refused { error, .. } | Failure::Fatal(error) => error,
        }
    }

    pub fn into_error(self) -> ImapError {
        match self {
            Failure::Refused { error, .. } | Failure::Fatal(error) => error,
        }
    }
}

/// What an exchange asks of its caller next.
pub enum Step<I = Infallible> {
    /// Write these bytes to the server, then call `advance` again.
    Send(Vec<u8>),
    /// Read more bytes into the buffer, then call `advance` again. `room`: while a literal
    /// of announced length is arriving, the buffer length it will reach, so the caller can
    /// make room once instead of growing (and copying) the buffer again and again.
    NeedMore { room: Option<usize> },
    /// In IDLE with nothing due: read whenever bytes come (silence is normal, so without a
    /// read timeout), or end the wait with [`Run::wake`].
    Waiting,
    /// One result of a streaming exchange (a fetched message); call `advance` again.
    Item(I),
    /// The exchange is over: call [`Run::finish`].
    Done,
}

/// Bytes to send may hold a password or a token: only their length is shown.
impl<I> std::fmt::Debug for Step<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Send(bytes) => write!(f, "Send({} bytes)", bytes.len()),
            Step::NeedMore { room } => write!(f, "NeedMore {{ room: {room:?} }}"),
            Step::Waiting => f.write_str("Waiting"),
            Step::Item(_) => f.write_str("Item(..)"),
            Step::Done => f.write_str("Done"),
        }
    }
}

/// What every state carries: the framer (its place in a response that is partly read), the
/// tag counter, and the capabilities of the connection as it is now.
#[derive(Debug)]
pub struct Core {
    framer: Framer,
    cmds: Commands,
    caps: BTreeSet<String>,
}

impl Core {
    /// `max_literal`: the largest literal (message) accepted; a larger one ends the session
    /// before it is buffered.
    pub fn new(max_literal: u64) -> Core {
        Core {
            framer: Framer::new(DEFAULT_MAX_LINE, max_literal),
            cmds: Commands::default(),
            caps: BTreeSet::new(),
        }
    }

    /// Upper-cased capability atoms of the current state.
    pub fn capabilities(&self) -> &BTreeSet<String> {
        &self.caps
    }

    fn has(&self, cap: &str) -> bool {
        self.caps.contains(cap)
    }

    /// The next complete frame, taken out of `buf`, or `None` when more bytes are needed.
    fn next_frame(&mut self, buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, ProtocolError> {
        Ok(self.framer.next_frame(buf)?.map(|n| take_front(buf, n)))
    }

    /// The frame's allocation becomes the response's: a message body is not copied.
    fn next_response(&mut self, buf: &mut Vec<u8>) -> Result<Option<ServerResponse>, ImapError> {
        match self.next_frame(buf)? {
            Some(frame) => Ok(Some(parse_response_owned(frame)?)),
            None => Ok(None),
        }
    }
}

/// Access to the [`Core`] every state has.
pub trait State {
    fn core(&self) -> &Core;
    fn core_mut(&mut self) -> &mut Core;
}

impl State for Core {
    fn core(&self) -> &Core {
        self
    }
    fn core_mut(&mut self) -> &mut Core {
        self
    }
}

macro_rules! state {
    ($t:ty) => {
        impl State for $t {
            fn core(&self) -> &Core {
                &self.core
            }
            fn core_mut(&mut self) -> &mut Core {
                &mut self.core
            }
        }

        impl $t {
            /// Upper-cased capability atoms of this state.
            pub fn capabilities(&self) -> &BTreeSet<String> {
                &self.core.caps
            }
        }
    };
}

/// Greeted on a secured connection; nothing sent that identifies the user yet.
#[derive(Debug)]
pub struct NotAuthenticated {
    core: Core,
}

/// The server accepted STARTTLS; the caller does the TLS handshake next.
#[derive(Debug)]
pub struct AwaitingTls {
    core: Core,
}

/// Signed in, no folder selected.
#[derive(Debug)]
pub struct Authenticated {
    core: Core,
}

/// A folder is selected.
#[derive(Debug)]
pub struct Selected {
    core: Core,
    mailbox: MailboxStatus,
}

state!(NotAuthenticated);
state!(AwaitingTls);
state!(Authenticated);
state!(Selected);

/// What SELECT told us about a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxStatus {
    pub uidvalidity: u32,
    pub uidnext: Option<u32>,
    pub exists: u32,
}

/// Why an IDLE wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleWake {
    /// The server reported EXISTS: new mail in the selected folder.
    NewMail,
    /// The deadline passed (re-issue IDLE, poll other folders or re-open the session).
    Timeout,
    /// The caller asked to stop.
    Stopped,
}

/// What to do with a message once it is stored (`after_ingest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostAction {
    Keep,
    Seen,
    Delete,
    Move,
}

/// Whether `action` can be done safely with these capabilities, and why not.
pub fn check_post_action(caps: &BTreeSet<String>, action: PostAction) -> Result<(), ImapError> {
    let uidplus = caps.contains("UIDPLUS");
    let missing = match action {
        PostAction::Keep | PostAction::Seen => None,
        PostAction::Delete if !uidplus => Some(
            "after_ingest = \"delete\" needs UIDPLUS (UID EXPUNGE); without it EXPUNGE would also remove messages other clients marked \\Deleted",
        ),
        PostAction::Move if !uidplus && !caps.contains("MOVE") => {
            Some("after_ingest = \"move\" needs MOVE or UIDPLUS; this server offers neither")
        }
        _ => None,
    };
    match missing {
        Some(why) => Err(ProtocolError::MissingCapability(why.into()).into()),
        None => Ok(()),
    }
}

/// What an exchange's own logic tells [`Run`] after a response.
pub enum Next<I> {
    /// Keep reading.
    Read,
    /// Send these bytes, then keep reading.
    Send(Vec<u8>),
    /// Hand this to the caller, then keep reading.
    Item(I),
    /// The exchange succeeded.
    Done,
    /// The server refused; the state is still usable.
    Refused(ImapError),
}

/// The part of an exchange particular to it. [`Run`] does what they share: framing,
/// parsing, sending, and ending the session on BYE.
pub trait Plan: Sized {
    /// The state the exchange starts from, and returns to when the server refuses.
    type From: State;
    /// The state (and findings) a successful exchange leads to.
    type To;
    /// What the exchange streams to the caller before it ends.
    type Item;
    /// The first frame is the server's greeting, not a response to a command.
    const GREETING: bool = false;
    /// BYE is part of the exchange (LOGOUT), not the end of the session.
    const EXPECTS_BYE: bool = false;
    /// What is going on, for a timeout message.
    fn during(&self) -> &'static str;
    fn on_response(
        &mut self,
        core: &mut Core,
        response: ServerResponse,
    ) -> Result<Next<Self::Item>, ImapError>;
    /// The exchange succeeded: the next state.
    fn complete(self, from: Self::From) -> Self::To;
    /// Waiting in IDLE (no read timeout).
    fn waiting(&self) -> bool {
        false
    }
}

enum End {
    Succeeded,
    Refused(ImapError),
    Fatal(ImapError),
}

/// One exchange in flight: the state it started from and its plan.
pub struct Run<P: Plan> {
    state: P::From,
    plan: P,
    outbox: Option<Vec<u8>>,
    greeting: bool,
    end: Option<End>,
}

impl<P: Plan> std::fmt::Debug for Run<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run")
            .field("during", &self.plan.during())
            .field("done", &self.end.is_some())
            .finish_non_exhaustive()
    }
}

impl<P: Plan> Run<P> {
    fn new(state: P::From, plan: P, first: Result<Next<P::Item>, ImapError>) -> Run<P> {
        let mut run = Run {
            state,
            plan,
            outbox: None,
            greeting: P::GREETING,
            end: None,
        };
        // A first step is a command to send, a wait, or an answer known without asking:
        // never an item, so nothing is lost here.
        let _ = run.apply(first);
        run
    }

    /// What is going on, for a timeout message ("SELECT", "authenticating").
    pub fn during(&self) -> &'static str {
        self.plan.during()
    }

    /// Capabilities of the state the exchange started from (updated as it learns them).
    pub fn capabilities(&self) -> &BTreeSet<String> {
        &self.state.core().caps
    }

    /// Moves the exchange on with what has been read. Takes the complete responses at the
    /// front of `buf` out of it and leaves the rest, which may be the start of the next.
    pub fn advance(&mut self, buf: &mut Vec<u8>) -> Step<P::Item> {
        loop {
            if let Some(bytes) = self.outbox.take() {
                return Step::Send(bytes);
            }
            if self.end.is_some() {
                return Step::Done;
            }
            let next = match self.read(buf) {
                Ok(Some(ServerResponse::Bye { line })) if !P::EXPECTS_BYE => Err(bye(line)),
                Ok(Some(response)) => self.plan.on_response(self.state.core_mut(), response),
                Ok(None) if self.plan.waiting() => return Step::Waiting,
                Ok(None) => {
                    let room = self.state.core().framer.literal_end(buf.len());
                    return Step::NeedMore { room };
                }
                Err(e) => Err(e),
            };
            if let Some(step) = self.apply(next) {
                return step;
            }
        }
    }

    fn read(&mut self, buf: &mut Vec<u8>) -> Result<Option<ServerResponse>, ImapError> {
        if !self.greeting {
            return self.state.core_mut().next_response(buf);
        }
        let Some(frame) = self.state.core_mut().next_frame(buf)? else {
            return Ok(None);
        };
        self.greeting = false;
        let (_, caps) = parse_greeting(&frame)?;
        Ok(Some(match caps {
            Some(caps) => ServerResponse::Capabilities(caps),
            None => ServerResponse::UntaggedStatus {
                code: None,
                line: first_line(&frame),
            },
        }))
    }

    fn apply(&mut self, next: Result<Next<P::Item>, ImapError>) -> Option<Step<P::Item>> {
        match next {
            Ok(Next::Read) => None,
            Ok(Next::Send(bytes)) => {
                self.outbox = Some(bytes);
                None
            }
            Ok(Next::Item(item)) => Some(Step::Item(item)),
            Ok(Next::Done) => {
                self.end = Some(End::Succeeded);
                None
            }
            Ok(Next::Refused(e)) => {
                self.end = Some(End::Refused(e));
                None
            }
            Err(e) => {
                self.end = Some(End::Fatal(e));
                None
            }
        }
    }

    /// Ends the exchange: the next state, or why not. Called before [`Step::Done`], the
    /// exchange counts as cut short and the session as unusable.
    pub fn finish(self) -> Result<P::To, Failure<P::From>> {
        match self.end {
            Some(End::Succeeded) if self.outbox.is_none() => Ok(self.plan.complete(self.state)),
            Some(End::Refused(error)) => Err(Failure::Refused {
                state: self.state,
                error,
            }),
            Some(End::Fatal(error)) => Err(Failure::Fatal(error)),
            _ => Err(Failure::Fatal(
                ProtocolError::Malformed(format!("{} did not complete", self.plan.during())).into(),
            )),
        }
    }
}

/// Adds the capabilities a response carries (untagged CAPABILITY, or a tagged completion's
/// `[CAPABILITY ...]` code).
fn learn_caps(into: &mut Option<BTreeSet<String>>, response: &ServerResponse) {
    let caps = match response {
        ServerResponse::Capabilities(c) => c,
        ServerResponse::Tagged {
            code: Some(ResponseCode::Capabilities(c)),
            ..
        } => c,
        _ => return,
    };
    into.get_or_insert_with(BTreeSet::new)
        .extend(caps.iter().cloned());
}

fn tagged<'r>(response: &'r ServerResponse, tag: &str) -> Option<(Completion, &'r str)> {
    match response {
        ServerResponse::Tagged {
            tag: t,
            completion,
            line,
            ..
        } if t == tag => Some((*completion, line.as_str())),
        _ => None,
    }
}

/// Drives exchanges in the tests of the session's modules: server bytes in, sent bytes and
/// outcomes out.
#[cfg(test)]
mod testing {
    use super::*;

    /// Where [`pump`] stopped.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Stop {
        Done,
        NeedMore,
        Waiting,
    }

    /// What an exchange did with the bytes it was given.
    pub struct Pumped<I> {
        /// Everything it asked to send, in order, as text.
        pub sent: String,
        pub items: Vec<I>,
        pub stop: Stop,
    }

    /// Advances `run` with what is in `buf` until it needs more bytes, waits in IDLE or is
    /// done.
    pub fn pump<P: Plan>(run: &mut Run<P>, buf: &mut Vec<u8>) -> Pumped<P::Item> {
        let mut sent = String::new();
        let mut items = Vec::new();
        loop {
            match run.advance(buf) {
                Step::Send(bytes) => sent.push_str(&String::from_utf8_lossy(&bytes)),
                Step::Item(item) => items.push(item),
                Step::NeedMore { .. } => {
                    return Pumped {
                        sent,
                        items,
                        stop: Stop::NeedMore,
                    };
                }
                Step::Waiting => {
                    return Pumped {
                        sent,
                        items,
                        stop: Stop::Waiting,
                    };
                }
                Step::Done => {
                    return Pumped {
                        sent,
                        items,
                        stop: Stop::Done,
                    };
                }
            }
        }
    }

    /// Runs an exchange on `server`'s bytes (all there at once) and ends it: what it sent,
    /// and how it ended.
    pub fn exchange<P: Plan>(
        mut run: Run<P>,
        server: &str,
    ) -> (String, Result<P::To, Failure<P::From>>) {
        let mut buf = server.as_bytes().to_vec();
        let pumped = pump(&mut run, &mut buf);
        (pumped.sent, run.finish())
    }

    /// A core with these (space-separated) capabilities.
    pub fn core(caps: &str) -> Core {
        let mut core = Core::new(1 << 20);
        core.caps = caps.split_whitespace().map(str::to_string).collect();
        core
    }

    pub fn not_authenticated(caps: &str) -> NotAuthenticated {
        NotAuthenticated { core: core(caps) }
    }

    pub fn authenticated(caps: &str) -> Authenticated {
        Authenticated { core: core(caps) }
    }

    pub fn selected(caps: &str, exists: u32) -> Selected {
        Selected {
            core: core(caps),
            mailbox: MailboxStatus {
                uidvalidity: 7,
                uidnext: Some(9),
                exists,
            },
        }
    }
}

#[cfg(test)]
mod tests;
