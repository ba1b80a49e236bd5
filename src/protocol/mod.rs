//! Mail access protocols without I/O: the IMAP and POP3 client sessions as state machines,
//! framing, parsing and command building for both, and the SASL encodings.
//!
//! What this module holds:
//! - [`imap`]: framing, parsing and commands; [`imap::session`], the session's typed states
//!   (not authenticated, authenticated, selected) and the exchanges between them (STARTTLS,
//!   SASL, SELECT, UID FETCH streaming, IDLE, the post-ingest actions, LOGOUT).
//! - [`pop3`]: reply and multi-line readers, listings, commands; [`pop3::session`], the
//!   session's typed states (authorization, transaction) and the exchanges between them
//!   (STLS, USER/PASS, two-step SASL AUTH, UIDL, LIST, pipelined RETR, DELE, QUIT).
//! - [`sasl`]: how to sign in ([`sasl::Login`]) and the SASL encodings.
//!
//! Invariants:
//! - Nothing here knows about sockets, tokio or time. Input is bytes (and, for IDLE, the
//!   caller's "stop waiting"); output is bytes to send and outcomes. "Need more bytes" is a
//!   return value, never an error. The session drivers in `net` pump bytes through it, which
//!   keeps every protocol rule testable from recorded transcripts and fuzzable.
//! - Nothing here imports the configuration: callers convert their settings into the types
//!   defined here (e.g. [`imap::session::PostAction`]).
//! - Every buffer a server can grow is capped (line and literal sizes), and a server's words
//!   reach errors only as a bounded first line.

pub mod imap;
pub mod pop3;
pub mod sasl;

use std::time::Duration;

/// A server said something we cannot accept. Carries the server's words (first line,
/// bounded) so the operator sees what the server sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("server sent a line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("server announced a {size}-byte literal, over the {limit}-byte limit")]
    LiteralTooLarge { size: u64, limit: u64 },
    /// One response (its lines and literals together) over the cap, e.g. many literals each
    /// under the literal cap chained in one response.
    #[error(
        "server sent a response of at least {size} bytes, over the {limit}-byte limit for one response"
    )]
    ResponseTooLarge { size: u64, limit: u64 },
    #[error("unexpected server response: {0}")]
    Malformed(String),
    #[error("server refused: {0}")]
    Rejected(String),
    /// A tagged `BAD`: the server did not accept the command itself (as opposed to `NO`, a
    /// refusal of what it asked for, e.g. a folder that does not exist).
    #[error("server refused the command: {0}")]
    CommandRefused(String),
    #[error("server lacks a required capability: {0}")]
    MissingCapability(String),
}

/// The first line of `bytes` as text, for error messages: up to the first LF, at most 512
/// bytes, lossy UTF-8, trailing whitespace (the CR) removed. Both IMAP and POP3 end their
/// lines with CRLF, so this serves either.
pub fn first_line(bytes: &[u8]) -> String {
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let line = String::from_utf8_lossy(&bytes[..end.min(512)]);
    line.trim_end().to_string()
}

/// Office 365: `Request is throttled. Suggested Backoff Time: 1234 milliseconds`, in IMAP
/// and POP3 replies alike.
pub fn suggested_backoff(line: &str) -> Option<Duration> {
    let lower = line.to_ascii_lowercase();
    let at = lower.find("suggested backoff time:")?;
    let rest = &lower[at + "suggested backoff time:".len()..];
    let ms: u64 = rest
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms))
}

/// Takes the first `n` bytes out of a read buffer. A frame that is most of the buffer (a
/// message literal) takes the buffer's allocation with it and leaves the few bytes after it
/// in a new one: nothing large is copied, and a session does not keep a buffer the size of
/// its largest message. Small frames are copied out.
pub fn take_front(buf: &mut Vec<u8>, n: usize) -> Vec<u8> {
    let rest = buf.len() - n;
    if n >= 64 * 1024 && rest <= n / 4 {
        let tail = buf[n..].to_vec();
        buf.truncate(n);
        std::mem::replace(buf, tail)
    } else {
        buf.drain(..n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `take_front` gives back: whether the front kept the buffer's allocation.
    fn takes_allocation(n: usize, rest: usize) -> bool {
        let mut buf = vec![7u8; n + rest];
        let start = buf.as_ptr();
        let front = take_front(&mut buf, n);
        assert_eq!((front.len(), buf.len()), (n, rest));
        assert!(front.iter().chain(buf.iter()).all(|b| *b == 7));
        front.as_ptr() == start
    }

    #[test]
    fn a_frame_of_most_of_a_large_buffer_takes_its_allocation_and_others_are_copied() {
        // 64 KiB or more, with at most a quarter of it left after: the allocation goes.
        assert!(takes_allocation(64 * 1024, 0));
        assert!(takes_allocation(64 * 1024, 16 * 1024));
        assert!(takes_allocation(1 << 20, (1 << 20) / 4));
        // Just under either bound: copied out, the buffer keeps its allocation.
        assert!(!takes_allocation(64 * 1024 - 1, 0));
        assert!(!takes_allocation(64 * 1024, 16 * 1024 + 1));
        assert!(!takes_allocation(1 << 20, (1 << 20) / 4 + 1));
        assert!(!takes_allocation(100, 0));
    }

    #[test]
    fn o365_throttle_backoff_is_read() {
        assert_eq!(
            suggested_backoff(
                "A1 NO Request is throttled. Suggested Backoff Time: 2500 milliseconds"
            ),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(suggested_backoff("A1 NO something else"), None);
    }

    #[test]
    fn first_line_is_bounded_and_trimmed() {
        assert_eq!(first_line(b"+OK ready\r\nmore"), "+OK ready");
        assert_eq!(first_line(b"no newline"), "no newline");
        assert_eq!(first_line(&[b'x'; 2000]).len(), 512);
    }

    /// A large frame leaves with the buffer's allocation (no copy, and the session keeps no
    /// message-sized buffer); what follows it stays, in order. Small frames are copied out.
    #[test]
    fn a_large_frame_takes_the_buffer_with_it() {
        let frame: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut buf = Vec::with_capacity(512 * 1024);
        buf.extend_from_slice(&frame);
        buf.extend_from_slice(b"* 9 FETCH");
        let at = buf.as_ptr();
        let taken = take_front(&mut buf, frame.len());
        assert_eq!(taken, frame);
        assert_eq!(taken.as_ptr(), at, "the frame was copied");
        assert_eq!(buf, b"* 9 FETCH");
        assert!(buf.capacity() < 64 * 1024, "{}", buf.capacity());

        buf.extend_from_slice(b" (UID 1)\r\n* 10 FETCH");
        let small = take_front(&mut buf, b"* 9 FETCH (UID 1)\r\n".len());
        assert_eq!(small, b"* 9 FETCH (UID 1)\r\n");
        assert_eq!(buf, b"* 10 FETCH");
    }
}
