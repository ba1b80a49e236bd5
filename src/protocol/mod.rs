//! Mail access protocols without I/O: framing, parsing and command building for IMAP and
//! POP3, and the SASL encodings. Nothing here knows about sockets, tokio or time; the
//! session drivers in `net` pump bytes through it. That keeps every protocol rule testable
//! from canned transcripts and fuzzable.

pub mod imap;
pub mod pop3;
pub mod sasl;

/// A server said something we cannot accept. Carries the server's words (first line,
/// bounded) so the operator sees what the server sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("server sent a line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("server announced a {size}-byte literal, over the {limit}-byte limit")]
    LiteralTooLarge { size: u64, limit: u64 },
    #[error("unexpected server response: {0}")]
    Malformed(String),
    #[error("server refused: {0}")]
    Rejected(String),
    #[error("server lacks a required capability: {0}")]
    MissingCapability(String),
}
