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
mod tests {
    use super::testing::*;
    use super::*;

    fn caps(list: &str) -> BTreeSet<String> {
        list.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn a_bye_is_throttling_an_expired_token_or_a_close() {
        assert_eq!(
            bye("* BYE Request is throttled. Suggested Backoff Time: 300 milliseconds".into()),
            ImapError::Throttled {
                line: "* BYE Request is throttled. Suggested Backoff Time: 300 milliseconds".into(),
                backoff: Duration::from_millis(300),
            }
        );
        assert_eq!(
            bye("* BYE Session invalidated - AccessTokenExpired".into()),
            ImapError::TokenExpired {
                line: "* BYE Session invalidated - AccessTokenExpired".into()
            }
        );
        assert_eq!(
            bye("* BYE shutting down".into()),
            ImapError::Bye {
                line: "* BYE shutting down".into()
            }
        );
    }

    #[test]
    fn a_refused_command_is_rejected_on_no_and_not_accepted_on_bad() {
        assert_eq!(
            refused(Completion::No, "A1 NO no such folder".into()),
            ImapError::Protocol(ProtocolError::Rejected("A1 NO no such folder".into()))
        );
        assert_eq!(
            refused(Completion::Bad, "A1 BAD what".into()),
            ImapError::Protocol(ProtocolError::CommandRefused("A1 BAD what".into()))
        );
        let throttled = "A1 BAD Request is throttled. Suggested Backoff Time: 5 milliseconds";
        assert_eq!(
            refused(Completion::Bad, throttled.into()),
            ImapError::Throttled {
                line: throttled.into(),
                backoff: Duration::from_millis(5)
            }
        );
    }

    #[test]
    fn a_refused_login_tells_unavailable_and_throttled_from_bad_credentials() {
        let throttled = "A1 NO Request is throttled. Suggested Backoff Time: 9 milliseconds";
        assert_eq!(
            login_refused(throttled.into(), Some("x".into())),
            ImapError::Throttled {
                line: throttled.into(),
                backoff: Duration::from_millis(9)
            }
        );
        assert_eq!(
            login_refused("A1 NO [unavailable] try later".into(), None),
            ImapError::Unavailable {
                reply: "A1 NO [unavailable] try later".into()
            }
        );
        assert_eq!(
            login_refused("A1 NO [AUTHENTICATIONFAILED] no".into(), None),
            ImapError::AuthRefused {
                reply: "A1 NO [AUTHENTICATIONFAILED] no".into()
            }
        );
        // The decoded challenge is part of the reply, when there was one.
        assert_eq!(
            login_refused(
                "A1 NO bad token".into(),
                Some("{\"status\":\"401\"}".into())
            ),
            ImapError::AuthRefused {
                reply: "A1 NO bad token (challenge: {\"status\":\"401\"})".into()
            }
        );
        assert_eq!(
            login_refused("A1 NO bad token".into(), Some(String::new())),
            ImapError::AuthRefused {
                reply: "A1 NO bad token".into()
            }
        );
    }

    #[test]
    fn a_failure_gives_its_error_whichever_kind_it_is() {
        let refused: Failure<()> = Failure::Refused {
            state: (),
            error: ImapError::NoStartTls,
        };
        assert_eq!(refused.error(), &ImapError::NoStartTls);
        assert_eq!(refused.into_error(), ImapError::NoStartTls);
        let fatal: Failure<()> = Failure::Fatal(ImapError::Bye { line: "x".into() });
        assert_eq!(fatal.error(), &ImapError::Bye { line: "x".into() });
        assert_eq!(fatal.into_error(), ImapError::Bye { line: "x".into() });
    }

    #[test]
    fn a_steps_debug_shows_the_length_of_what_is_sent_not_the_bytes() {
        let steps: [(Step<Fetched>, &str); 6] = [
            (
                Step::Send(b"A1 LOGIN bob secret\r\n".to_vec()),
                "Send(21 bytes)",
            ),
            (Step::NeedMore { room: None }, "NeedMore { room: None }"),
            (
                Step::NeedMore { room: Some(42) },
                "NeedMore { room: Some(42) }",
            ),
            (Step::Waiting, "Waiting"),
            (Step::Item(Fetched::default()), "Item(..)"),
            (Step::Done, "Done"),
        ];
        for (step, shown) in steps {
            assert_eq!(format!("{step:?}"), shown);
        }
    }

    #[test]
    fn post_actions_are_checked_against_the_capabilities() {
        let none = caps("");
        for action in [PostAction::Keep, PostAction::Seen] {
            assert_eq!(check_post_action(&none, action), Ok(()));
        }
        let missing = |caps: &BTreeSet<String>, action| match check_post_action(caps, action) {
            Err(ImapError::Protocol(ProtocolError::MissingCapability(why))) => why,
            other => panic!("{action:?} with {caps:?}: {other:?}"),
        };
        assert!(missing(&none, PostAction::Delete).contains("UIDPLUS"));
        assert!(missing(&caps("MOVE"), PostAction::Delete).contains("UIDPLUS"));
        assert!(missing(&none, PostAction::Move).contains("neither"));
        assert_eq!(
            check_post_action(&caps("UIDPLUS"), PostAction::Delete),
            Ok(())
        );
        assert_eq!(check_post_action(&caps("MOVE"), PostAction::Move), Ok(()));
        assert_eq!(
            check_post_action(&caps("UIDPLUS"), PostAction::Move),
            Ok(())
        );
        assert_eq!(
            check_post_action(&caps("UIDPLUS MOVE"), PostAction::Move),
            Ok(())
        );
    }

    #[test]
    fn a_core_knows_its_capabilities() {
        let core = core("IMAP4REV1 IDLE");
        assert_eq!(core.capabilities(), &caps("IMAP4REV1 IDLE"));
        assert!(core.has("IDLE") && !core.has("MOVE") && !core.has("idle"));
        assert_eq!(State::core(&core).capabilities(), &caps("IMAP4REV1 IDLE"));
        let mut core = core;
        State::core_mut(&mut core).caps.clear();
        assert!(core.capabilities().is_empty());
        let state = selected("UIDPLUS", 1);
        assert_eq!(state.capabilities(), &caps("UIDPLUS"));
    }

    #[test]
    fn an_exchange_asks_for_more_bytes_until_its_completion_arrives() {
        let mut run = logout(authenticated(""));
        assert_eq!(
            format!("{run:?}"),
            "Run { during: \"LOGOUT\", done: false, .. }"
        );
        let mut buf = Vec::new();
        let p = pump(&mut run, &mut buf);
        assert_eq!(
            (p.sent.as_str(), p.stop),
            ("A0001 LOGOUT\r\n", Stop::NeedMore)
        );
        // Not idling: no bytes is a read, not a wait.
        assert!(matches!(
            run.advance(&mut buf),
            Step::NeedMore { room: None }
        ));
        buf.extend_from_slice(b"* 1 EXISTS\r\nA0001 O");
        assert!(matches!(run.advance(&mut buf), Step::NeedMore { .. }));
        assert_eq!(buf, b"A0001 O", "the complete response was taken out");
        buf.extend_from_slice(b"K bye\r\nleft over");
        assert!(matches!(run.advance(&mut buf), Step::Done));
        assert!(
            matches!(run.advance(&mut buf), Step::Done),
            "done stays done"
        );
        assert_eq!(buf, b"left over", "nothing read past the completion");
        assert_eq!(
            format!("{run:?}"),
            "Run { during: \"LOGOUT\", done: true, .. }"
        );
        assert!(run.finish().is_ok());
    }

    #[test]
    fn while_a_literal_arrives_the_exchange_says_how_long_the_buffer_gets() {
        let mut run = selected("", 1).fetch(&[3]);
        let mut buf = b"* 1 FETCH (UID 3 BODY[] {10}\r\nabc".to_vec();
        let p = pump(&mut run, &mut buf);
        assert_eq!(p.stop, Stop::NeedMore);
        let head = b"* 1 FETCH (UID 3 BODY[] {10}\r\n".len();
        assert!(matches!(
            run.advance(&mut buf),
            Step::NeedMore { room: Some(r) } if r == head + 10
        ));
    }

    #[test]
    fn a_bye_ends_the_session_unless_the_exchange_expects_it() {
        let (sent, end) = exchange(
            authenticated("").select("INBOX", false),
            "* BYE shutting down\r\n",
        );
        assert_eq!(sent, "A0001 SELECT INBOX\r\n");
        assert!(matches!(
            end,
            Err(Failure::Fatal(ImapError::Bye { ref line })) if line == "* BYE shutting down"
        ));
        let (_, end) = exchange(logout(authenticated("")), "* BYE shutting down\r\n");
        assert!(end.is_ok());
    }

    #[test]
    fn a_response_that_cannot_be_framed_or_parsed_is_fatal() {
        let mut state = authenticated("");
        state.core.framer = Framer::new(16, 100);
        let (_, end) = exchange(
            state.select("INBOX", false),
            "* OK this line is far too long\r\n",
        );
        assert!(matches!(
            end,
            Err(Failure::Fatal(ImapError::Protocol(
                ProtocolError::LineTooLong(16)
            )))
        ));
        let (_, end) = exchange(
            authenticated("").select("INBOX", false),
            "* 1 FETCH (UID x BODY[] \r\n",
        );
        assert!(matches!(
            end,
            Err(Failure::Fatal(ImapError::Protocol(
                ProtocolError::Malformed(_)
            )))
        ));
    }

    #[test]
    fn finishing_before_the_end_is_fatal() {
        let run = authenticated("").select("Drafts", false);
        assert_eq!(run.during(), "SELECT");
        assert!(matches!(
            run.finish(),
            Err(Failure::Fatal(ImapError::Protocol(ProtocolError::Malformed(ref m)))) if m == "SELECT did not complete"
        ));
        // Refused: the state comes back, usable.
        let (_, end) = exchange(
            authenticated("IDLE").select("Drafts", false),
            "A0001 NO [NONEXISTENT] no such folder\r\n",
        );
        let Err(Failure::Refused { state, error }) = end else {
            panic!("not refused");
        };
        assert!(state.capabilities().contains("IDLE"));
        assert_eq!(
            error,
            ImapError::Protocol(ProtocolError::Rejected(
                "A0001 NO [NONEXISTENT] no such folder".into()
            ))
        );
    }

    #[test]
    fn capabilities_are_learned_from_untagged_data_and_from_a_completions_code() {
        let mut learned = None;
        learn_caps(&mut learned, &ServerResponse::Exists(1));
        assert_eq!(learned, None);
        learn_caps(
            &mut learned,
            &ServerResponse::Capabilities(caps("IMAP4REV1 IDLE")),
        );
        assert_eq!(learned, Some(caps("IMAP4REV1 IDLE")));
        learn_caps(
            &mut learned,
            &ServerResponse::Tagged {
                tag: "A1".into(),
                completion: Completion::Ok,
                code: Some(ResponseCode::Capabilities(caps("MOVE"))),
                line: String::new(),
            },
        );
        assert_eq!(learned, Some(caps("IMAP4REV1 IDLE MOVE")));
        let mut learned = None;
        learn_caps(
            &mut learned,
            &ServerResponse::Tagged {
                tag: "A1".into(),
                completion: Completion::Ok,
                code: Some(ResponseCode::UidNext(3)),
                line: String::new(),
            },
        );
        assert_eq!(learned, None);
    }

    #[test]
    fn only_the_exchanges_own_tag_completes_it() {
        let ours = ServerResponse::Tagged {
            tag: "A0002".into(),
            completion: Completion::No,
            code: None,
            line: "A0002 NO nope".into(),
        };
        assert_eq!(
            tagged(&ours, "A0002"),
            Some((Completion::No, "A0002 NO nope"))
        );
        assert_eq!(tagged(&ours, "A0001"), None);
        assert_eq!(tagged(&ServerResponse::Exists(2), "A0002"), None);
        // Another command's completion is read past.
        let (_, end) = exchange(
            authenticated("").select("INBOX", false),
            "A0009 NO not yours\r\n* OK [UIDVALIDITY 5] x\r\nA0001 OK done\r\n",
        );
        assert_eq!(end.unwrap().mailbox().uidvalidity, 5);
    }
}
