//! The POP3 client session as typed states and the exchanges between them, without I/O.
//!
//! States ([RFC 1939 §3]): a fresh connection awaits the greeting ([`Run::implicit_tls`],
//! [`Run::stls`]); [`AwaitingTls`] (STLS accepted, handshake not yet done);
//! [`Authorization`] (greeted on a secured connection, not signed in); [`Transaction`]
//! (signed in, the maildrop locked); [`Closed`] (QUIT answered). A transition is a method
//! that consumes its state and returns a [`Run`]: an exchange the caller pumps with
//! [`Run::advance`] until it says [`Step::Done`], then ends with [`Run::finish`], which gives
//! the next state, or [`Failure::Refused`] with the old state back when the server said no
//! (`-ERR`), or [`Failure::Fatal`] when the session cannot go on. The vocabulary is that of
//! the IMAP session ([`crate::protocol::imap::session`]).
//!
//! Invariants:
//! - Credentials can only be sent from [`Authorization`], which is reached from a greeting
//!   read on a connection the caller declares secured ([`Run::implicit_tls`]) or from
//!   [`AwaitingTls::tls_established`]: a plain connection can only do CAPA and STLS.
//! - Capabilities learned before STLS are discarded; after it, and after signing in, they
//!   are asked again (CAPA).
//! - An exchange stops reading at its own last reply, so bytes a server sends after its
//!   STLS `+OK` stay in the caller's buffer (where they must fail the upgrade).
//! - `AUTH` never carries an initial response: the response is sent after the server's
//!   `+`, the two-step form Office 365 requires and RFC 5034 asks for when the response is
//!   over 255 octets (every OAuth2 token). A second `+` (an error challenge) is answered at
//!   once, so a refused token never waits out a timeout.
//! - Without `PIPELINING` (RFC 2449) one `RETR` is in flight at a time, whatever the caller
//!   asks for.
//! - A reply line is capped at [`pop3::MAX_LINE`] bytes and a multi-line reply at its
//!   command's limit; the server's words reach errors, never a password or token.
//!
//! The way to the transaction state (greeting, STLS, sign-in) is in `connect`; the commands
//! of the transaction state and QUIT in `maildrop`.
//!
//! [RFC 1939 §3]: https://www.rfc-editor.org/rfc/rfc1939#section-3

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::time::Duration;

use crate::protocol::pop3::{self, Reader, Reply};
use crate::protocol::sasl::{self, Login};
use crate::protocol::{ProtocolError, suggested_backoff, take_front};
use crate::secret::Secret;

mod connect;
mod maildrop;
#[cfg(test)]
mod tests;

pub use connect::*;
pub use maildrop::*;

/// The largest CAPA listing accepted.
const CAPA_LIMIT: u64 = 1 << 20;
/// The largest UIDL or LIST listing accepted: about a million messages.
const LISTING_LIMIT: u64 = 64 << 20;
/// The largest `TOP n 0` reply (a header) accepted.
const HEADER_LIMIT: u64 = 1 << 20;

/// Why an exchange did not end well, in the server's words where it gave any.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Pop3Error {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// Office 365's "Request is throttled. Suggested Backoff Time: N milliseconds".
    #[error("server asks to slow down: {line}")]
    Throttled { line: String, backoff: Duration },
    #[error("authentication refused: {reply}")]
    AuthRefused { reply: String },
    /// `-ERR [SYS/TEMP]` (RFC 3206) at sign-in: the server cannot check credentials now; not
    /// a credential problem.
    #[error("server temporarily unavailable: {reply}")]
    Unavailable { reply: String },
    #[error("server does not offer STLS; refusing to continue without TLS")]
    NoStls,
    #[error("STLS refused: {line}")]
    StlsRefused { line: String },
}

/// A reply other than `+OK` to a command that is not a sign-in.
fn refused(reply: &Reply) -> Pop3Error {
    let line = reply.line();
    match suggested_backoff(&line) {
        Some(backoff) => Pop3Error::Throttled { line, backoff },
        None => ProtocolError::Rejected(line).into(),
    }
}

/// A reply other than `+OK` to USER, PASS or AUTH; `challenge` is the decoded error
/// challenge the server sent before it, if any.
fn login_refused(reply: &Reply, challenge: Option<String>) -> Pop3Error {
    let line = reply.line();
    if let Some(backoff) = suggested_backoff(&line) {
        return Pop3Error::Throttled { line, backoff };
    }
    if line.to_ascii_uppercase().contains("[SYS/TEMP]") {
        return Pop3Error::Unavailable { reply: line };
    }
    let reply = match challenge {
        Some(c) if !c.is_empty() => format!("{line} (challenge: {c})"),
        _ => line,
    };
    Pop3Error::AuthRefused { reply }
}

/// How an exchange that did not succeed ended.
#[derive(Debug)]
pub enum Failure<S> {
    /// The server refused; the connection is still usable, in `state`.
    Refused { state: S, error: Pop3Error },
    /// The session cannot go on (a reply we cannot accept, a failed STLS, replies of
    /// pipelined commands still on their way).
    Fatal(Pop3Error),
}

impl<S> Failure<S> {
    pub fn error(&self) -> &Pop3Error {
        match self {
            Failure::Refused { error, .. } | Failure::Fatal(error) => error,
        }
    }

    pub fn into_error(self) -> Pop3Error {
        match self {
            Failure::Refused { error, .. } | Failure::Fatal(error) => error,
        }
    }
}

/// What an exchange asks of its caller next.
pub enum Step<I = Infallible> {
    /// Write these bytes to the server, then call `advance` again.
    Send(Vec<u8>),
    /// Read more bytes into the buffer, then call `advance` again. `room`: while a message
    /// whose size LIST gave is arriving, about the buffer length it will reach, so the
    /// caller can make room once instead of growing (and copying) the buffer again and again.
    NeedMore { room: Option<usize> },
    /// One result of a streaming exchange (a retrieved message); call `advance` again.
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
            Step::Item(_) => f.write_str("Item(..)"),
            Step::Done => f.write_str("Done"),
        }
    }
}

/// What every state carries: the reader (its place in a multi-line reply that is partly
/// read) and the capabilities of the connection as it is now.
#[derive(Debug, Default)]
pub struct Core {
    reader: Reader,
    caps: BTreeSet<String>,
}

impl Core {
    fn has(&self, cap: &str) -> bool {
        self.caps.contains(cap)
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
            /// Upper-cased capabilities of this state, as [`pop3::parse_capa`] lists them.
            pub fn capabilities(&self) -> &BTreeSet<String> {
                &self.core.caps
            }
        }
    };
}

/// Greeted on a secured connection (RFC 1939 AUTHORIZATION state); nothing sent that
/// identifies the user yet.
#[derive(Debug)]
pub struct Authorization {
    core: Core,
}

/// The server accepted STLS; the caller does the TLS handshake next.
#[derive(Debug)]
pub struct AwaitingTls {
    core: Core,
}

/// Signed in, the maildrop locked (RFC 1939 TRANSACTION state), no reply outstanding.
#[derive(Debug)]
pub struct Transaction {
    core: Core,
}

state!(Authorization);
state!(AwaitingTls);
state!(Transaction);

impl Transaction {
    /// Whether the server takes commands before it has answered the ones before them
    /// (RFC 2449 `PIPELINING`).
    pub fn pipelining(&self) -> bool {
        self.core.has("PIPELINING")
    }
}

/// The server answered QUIT with `+OK`: after [`Transaction`] that means it went through
/// the UPDATE state, so the messages marked with DELE are gone. Nothing more can be sent.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

/// A multi-line reply the `+OK` to the command now answered opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Body {
    /// The most bytes accepted (a little more for dot-stuffing, see [`Reader::multiline`]).
    pub limit: u64,
    /// About how long it will be, when known (a message's size from LIST).
    pub expected: Option<u64>,
}

/// What an exchange's own logic tells [`Run`] after a reply.
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
    Refused(Pop3Error),
}

/// The part of an exchange particular to it. [`Run`] does what they share: reading replies
/// and the multi-line bodies some open, and sending.
pub trait Plan: Sized {
    /// The state the exchange starts from, and returns to when the server refuses.
    type From: State;
    /// The state (and findings) a successful exchange leads to.
    type To;
    /// What the exchange streams to the caller before it ends.
    type Item;
    /// What is going on, for a timeout message.
    fn during(&self) -> &'static str;
    /// When the reply now awaited is `+OK`, the multi-line body that follows it.
    fn body(&self) -> Option<Body> {
        None
    }
    /// Commands the exchange has queued since its last step (pipelined RETRs).
    fn next_command(&mut self) -> Option<Vec<u8>> {
        None
    }
    /// Whether a reply is awaited: an exchange with nothing asked is done for now.
    fn awaiting(&self) -> bool {
        true
    }
    /// A reply, with the body it opened (empty when none).
    fn on_reply(
        &mut self,
        core: &mut Core,
        reply: Reply,
        body: Vec<u8>,
    ) -> Result<Next<Self::Item>, Pop3Error>;
    /// The exchange succeeded: the next state.
    fn complete(self, from: Self::From) -> Self::To;
}

enum End {
    Succeeded,
    Refused(Pop3Error),
    Fatal(Pop3Error),
}

/// One exchange in flight: the state it started from and its plan.
pub struct Run<P: Plan> {
    state: P::From,
    plan: P,
    outbox: Option<Vec<u8>>,
    /// The `+OK` text and body of a multi-line reply whose body is being read.
    opened: Option<(String, Body)>,
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
    fn new(state: P::From, plan: P, first: Result<Next<P::Item>, Pop3Error>) -> Run<P> {
        let mut run = Run {
            state,
            plan,
            outbox: None,
            opened: None,
            end: None,
        };
        // A first step is a command to send, a wait, or an answer known without asking:
        // never an item, so nothing is lost here.
        let _ = run.apply(first);
        run
    }

    /// What is going on, for a timeout message ("UIDL", "authenticating").
    pub fn during(&self) -> &'static str {
        self.plan.during()
    }

    /// Capabilities of the state the exchange started from (updated as it learns them).
    pub fn capabilities(&self) -> &BTreeSet<String> {
        &self.state.core().caps
    }

    /// The bytes due to be sent now, if any, without reading: a caller that pipelines
    /// sends them before it waits for anything. [`Run::advance`] hands them out otherwise.
    pub fn to_send(&mut self) -> Option<Vec<u8>> {
        if let Some(bytes) = self.outbox.take() {
            return Some(bytes);
        }
        match self.end {
            None => self.plan.next_command(),
            Some(_) => None,
        }
    }

    /// Moves the exchange on with what has been read. Takes the complete replies at the
    /// front of `buf` out of it and leaves the rest, which may be the start of the next.
    pub fn advance(&mut self, buf: &mut Vec<u8>) -> Step<P::Item> {
        loop {
            if let Some(bytes) = self.to_send() {
                return Step::Send(bytes);
            }
            if self.end.is_some() || !self.plan.awaiting() {
                return Step::Done;
            }
            let next = match self.read(buf) {
                Ok(Some((reply, body))) => self.plan.on_reply(self.state.core_mut(), reply, body),
                Ok(None) => {
                    let room = self.opened.as_ref().and_then(|(_, body)| body.expected);
                    return Step::NeedMore {
                        room: room.map(|r| usize::try_from(r).unwrap_or(usize::MAX)),
                    };
                }
                Err(e) => Err(e),
            };
            if let Some(step) = self.apply(next) {
                return step;
            }
        }
    }

    /// The next reply and the body it opened, or `None` when more bytes are needed.
    fn read(&mut self, buf: &mut Vec<u8>) -> Result<Option<(Reply, Vec<u8>)>, Pop3Error> {
        let reader = &mut self.state.core_mut().reader;
        let body = match &self.opened {
            Some((_, body)) => *body,
            None => {
                let Some((reply, used)) = reader.reply(buf)? else {
                    return Ok(None);
                };
                buf.drain(..used);
                match (reply, self.plan.body()) {
                    (Reply::Ok(text), Some(body)) => {
                        self.opened = Some((text, body));
                        body
                    }
                    (reply, _) => return Ok(Some((reply, Vec::new()))),
                }
            }
        };
        let Some((data, used)) = reader.multiline(buf, body.limit)? else {
            return Ok(None);
        };
        // A message's bytes go with the buffer's allocation when they are most of it, so
        // the session does not keep a buffer the size of its largest message.
        drop(take_front(buf, used));
        let text = self.opened.take().map(|(text, _)| text).unwrap_or_default();
        Ok(Some((Reply::Ok(text), data)))
    }

    fn apply(&mut self, next: Result<Next<P::Item>, Pop3Error>) -> Option<Step<P::Item>> {
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
        // An exchange succeeds by reading its last reply, so nothing is left to send or
        // read then; one with nothing asked (RETRs all answered) has not ended but is done.
        match self.end {
            Some(End::Succeeded) => Ok(self.plan.complete(self.state)),
            None if !self.plan.awaiting() => Ok(self.plan.complete(self.state)),
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

/// The capabilities a CAPA reply gives: none when the server does not answer it (RFC 2449
/// is an extension; an old server knows nothing of it).
fn capa_reply(reply: &Reply, listing: &[u8]) -> BTreeSet<String> {
    match reply {
        Reply::Ok(_) => pop3::parse_capa(listing),
        Reply::Err(_) | Reply::Continue(_) => BTreeSet::new(),
    }
}

const CAPA_BODY: Option<Body> = Some(Body {
    limit: CAPA_LIMIT,
    expected: None,
});
