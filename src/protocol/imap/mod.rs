//! IMAP client protocol, sans I/O.
//!
//! Four pieces, none of which touches a socket, a runtime or a clock:
//! - [`Framer`] finds where the next complete server response ends in a byte buffer (a line,
//!   plus any `{n}` literals and the lines after them), with hard caps on line size, literal
//!   size and the size of the whole response, so a hostile server cannot make us buffer
//!   without bound.
//! - [`parse_response`] turns one complete frame into an owned [`ServerResponse`], using
//!   imap-codec's response parser (we do not hand-parse IMAP grammar).
//! - [`Commands`] produces tagged command bytes for the handful of commands a collector needs.
//! - [`session`] is the client session as typed states (not authenticated, authenticated,
//!   selected) whose transitions are exchanges the caller pumps with server bytes.
//!
//! The caller (net::imap) only moves bytes: it reads into a buffer, hands the buffer to the
//! current exchange, and writes what the exchange asks it to send.

use std::collections::BTreeSet;

use chrono::{DateTime, FixedOffset};
use imap_codec::decode::{Decoder, GreetingDecodeError, ResponseDecodeError};
use imap_codec::imap_types::core::{IString, NString};
use imap_codec::imap_types::fetch::{MessageDataItem, Section};
use imap_codec::imap_types::response::{Code, Data, GreetingKind, Response, Status};
use imap_codec::{GreetingCodec, ResponseCodec};

use super::ProtocolError;

mod commands;
pub mod session;
#[cfg(test)]
mod transcripts;

pub use commands::*;

/// A protocol response line is rarely over a few hundred bytes; 64 KiB leaves room for long
/// capability lists and SEARCH results while bounding memory.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;

/// What one response may hold beside its largest allowed literal: the FETCH items around the
/// message (UID, sizes, dates, flags) and any small literals among them. A response is capped
/// at `max_literal` plus this much.
pub const RESPONSE_ENVELOPE_BYTES: u64 = 1024 * 1024;

/// Finds frame boundaries. Keeps its scan position between calls so a large literal that
/// arrives in many reads is not rescanned (linear, not quadratic).
#[derive(Debug)]
pub struct Framer {
    max_line: usize,
    max_literal: u64,
    /// Cap on one whole response, its lines and literals together. Capping each literal is
    /// not enough: a server could chain any number of literals just under `max_literal` in
    /// one response, and the frame is buffered whole.
    max_response: u64,
    /// Offset where the current (unfinished) line starts.
    line_start: usize,
    /// Offset up to which the buffer has been scanned for CRLF.
    scanned: usize,
}

impl Framer {
    /// A framer whose responses may be up to `max_literal` plus [`RESPONSE_ENVELOPE_BYTES`]
    /// long in all.
    pub fn new(max_line: usize, max_literal: u64) -> Self {
        Framer {
            max_line,
            max_literal,
            max_response: max_literal.saturating_add(RESPONSE_ENVELOPE_BYTES),
            line_start: 0,
            scanned: 0,
        }
    }

    /// The same framer with another cap on one whole response.
    pub fn with_max_response(self, max_response: u64) -> Self {
        Framer {
            max_response,
            ..self
        }
    }

    /// The largest response accepted, its lines and literals together.
    pub fn max_response(&self) -> u64 {
        self.max_response
    }

    /// Fails once the response being framed is known to be `size` bytes or longer, when that
    /// is over the cap.
    fn check_response(&self, size: u64) -> Result<(), ProtocolError> {
        if size > self.max_response {
            return Err(ProtocolError::ResponseTooLarge {
                size,
                limit: self.max_response,
            });
        }
        Ok(())
    }

    /// Length of the first complete response in `buf`, or `None` if more bytes are needed.
    /// After `Some(n)` the caller must remove `buf[..n]` before calling again.
    pub fn next_frame(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        loop {
            if self.line_start > buf.len() {
                // Inside a literal that has not fully arrived.
                return Ok(None);
            }
            let from = self.scanned.max(self.line_start);
            let Some(rel) = memchr_lf(&buf[from..]) else {
                self.scanned = buf.len();
                if buf.len() - self.line_start > self.max_line {
                    return Err(ProtocolError::LineTooLong(self.max_line));
                }
                // Everything buffered belongs to this response: its line is not complete.
                self.check_response(buf.len() as u64)?;
                return Ok(None);
            };
            let lf = from + rel;
            if lf - self.line_start > self.max_line {
                return Err(ProtocolError::LineTooLong(self.max_line));
            }
            let line = &buf[self.line_start..lf];
            match literal_announcement(line) {
                Some(n) => {
                    if n > self.max_literal {
                        return Err(ProtocolError::LiteralTooLarge {
                            size: n,
                            limit: self.max_literal,
                        });
                    }
                    // Refused when announced, before any of it is buffered.
                    self.check_response((lf as u64 + 1).saturating_add(n))?;
                    // Skip the literal: the next line starts right after it.
                    self.line_start = lf + 1 + n as usize;
                    self.scanned = self.line_start;
                }
                None => {
                    let end = lf + 1;
                    self.check_response(end as u64)?;
                    self.line_start = 0;
                    self.scanned = 0;
                    return Ok(Some(end));
                }
            }
        }
    }
}

impl Framer {
    /// While a literal is arriving: the buffer length at which it will have arrived (the
    /// frame needs at least that much), so the reader can make room for it at once instead
    /// of growing the buffer, and copying it, again and again.
    pub fn literal_end(&self, buf_len: usize) -> Option<usize> {
        (self.line_start > buf_len).then_some(self.line_start)
    }
}

fn memchr_lf(hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == b'\n')
}

/// `{123}` or `{123+}` (or literal8 `~{123}`) at the end of a line, before the CRLF.
fn literal_announcement(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let inner = line.strip_suffix(b"}")?;
    let open = inner.iter().rposition(|&b| b == b'{')?;
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Outcome of a tagged command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Ok,
    No,
    Bad,
}

/// One message from `UID FETCH (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])`, items parsed by
/// name (Office 365 has been seen sending them in another order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetched {
    pub seq: u32,
    pub uid: Option<u32>,
    pub rfc822_size: Option<u32>,
    pub internal_date: Option<DateTime<FixedOffset>>,
    /// `BODY[]` exactly as the literal carried it (its length is the truth, not RFC822.SIZE).
    pub body: Option<Vec<u8>>,
    /// `BODY[HEADER]`, when asked for.
    pub header: Option<Vec<u8>>,
}

/// What a response frame says, reduced to what a collector acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerResponse {
    /// `+ ...`: continue (SASL challenge text, base64 or plain).
    Continue(String),
    /// Tagged completion; `line` is the server's words for error messages.
    Tagged {
        tag: String,
        completion: Completion,
        code: Option<ResponseCode>,
        line: String,
    },
    /// `* BYE ...`
    Bye {
        line: String,
    },
    Capabilities(BTreeSet<String>),
    Exists(u32),
    Expunge(u32),
    /// Untagged `OK` (with its code, e.g. UIDVALIDITY in a SELECT) or other status.
    UntaggedStatus {
        code: Option<ResponseCode>,
        line: String,
    },
    Fetch(Fetched),
    /// `* LIST (attributes) "delimiter" name`, the name decoded from modified UTF-7.
    List {
        name: String,
        delimiter: Option<char>,
        /// `\Noselect` or `\NonExistent`: a name that cannot be opened.
        noselect: bool,
    },
    /// Something valid we have no use for (FLAGS, SEARCH, ...).
    Other,
}

/// The response codes a collector uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseCode {
    UidValidity(u32),
    UidNext(u32),
    Capabilities(BTreeSet<String>),
    ReadOnly,
    ReadWrite,
    /// Any other code, as its text (`AUTHENTICATIONFAILED`, `UNAVAILABLE`, ...).
    Other(String),
}

fn code_of(code: &Code<'_>) -> ResponseCode {
    match code {
        Code::UidValidity(v) => ResponseCode::UidValidity(v.get()),
        Code::UidNext(v) => ResponseCode::UidNext(v.get()),
        Code::Capability(caps) => ResponseCode::Capabilities(
            caps.as_ref()
                .iter()
                .map(|c| c.to_string().to_ascii_uppercase())
                .collect(),
        ),
        Code::ReadOnly => ResponseCode::ReadOnly,
        Code::ReadWrite => ResponseCode::ReadWrite,
        other => {
            let dbg = format!("{other:?}");
            ResponseCode::Other(dbg.split(['(', ' ', '{']).next().unwrap_or("").to_string())
        }
    }
}

/// The first line of a frame as text, for error messages (bounded, lossy UTF-8).
pub fn first_line(frame: &[u8]) -> String {
    super::first_line(frame)
}

/// Parses the server greeting. `Ok(true)` for OK, `Ok(false)` for PREAUTH; BYE is an error.
pub fn parse_greeting(frame: &[u8]) -> Result<(bool, Option<BTreeSet<String>>), ProtocolError> {
    match GreetingCodec::default().decode(frame) {
        Ok((_, greeting)) => {
            let caps = match greeting.code.as_ref().map(code_of) {
                Some(ResponseCode::Capabilities(c)) => Some(c),
                _ => None,
            };
            match greeting.kind {
                GreetingKind::Ok => Ok((true, caps)),
                GreetingKind::PreAuth => Ok((false, caps)),
                GreetingKind::Bye => Err(ProtocolError::Rejected(first_line(frame))),
            }
        }
        Err(GreetingDecodeError::Incomplete) | Err(GreetingDecodeError::Failed) => {
            Err(ProtocolError::Malformed(first_line(frame)))
        }
    }
}

/// Parses one complete frame (as delimited by [`Framer`]).
pub fn parse_response(frame: &[u8]) -> Result<ServerResponse, ProtocolError> {
    match ResponseCodec::default().decode(frame) {
        Ok((_, response)) => Ok(convert(response, frame, None)),
        Err(ResponseDecodeError::Incomplete) | Err(ResponseDecodeError::LiteralFound { .. }) => {
            Err(ProtocolError::Malformed(first_line(frame)))
        }
        Err(ResponseDecodeError::Failed) => fallback(frame),
    }
}

/// Like [`parse_response`], taking the frame: a FETCH's message body (nearly all of the
/// frame) is moved to the front of the frame's own allocation and handed back in it, not
/// copied into a new one.
///
/// The parser never sees the body itself: the frame's largest literal is cut out and the
/// rest parsed with a one-byte literal in its place ([`Skeleton`]). The parser would check
/// every byte of a literal (for NUL, which RFC 3501 forbids in literals but which real mail
/// does contain: such a message could not be fetched) and that check was the largest cost
/// of reading a mailbox after TLS. When the literal cut out turns out not to be the body,
/// the whole frame is parsed as it is.
pub fn parse_response_owned(frame: Vec<u8>) -> Result<ServerResponse, ProtocolError> {
    if let Some(skeleton) = Skeleton::of(&frame)
        && let Ok((_, response)) = ResponseCodec::default().decode(&skeleton.frame)
    {
        let mut body_at = None;
        let mut parsed = convert(response, &skeleton.frame, Some(&mut body_at));
        if let ServerResponse::Fetch(f) = &mut parsed
            && body_at == Some(skeleton.placeholder.clone())
        {
            f.body = Some(body_in_place(frame, skeleton.literal));
            return Ok(parsed);
        }
    }
    let mut body_at = None;
    let mut parsed = match ResponseCodec::default().decode(&frame) {
        Ok((_, response)) => convert(response, &frame, Some(&mut body_at)),
        Err(ResponseDecodeError::Incomplete) | Err(ResponseDecodeError::LiteralFound { .. }) => {
            return Err(ProtocolError::Malformed(first_line(&frame)));
        }
        Err(ResponseDecodeError::Failed) => return fallback(&frame),
    };
    if let (ServerResponse::Fetch(f), Some(range)) = (&mut parsed, body_at) {
        f.body = Some(body_in_place(frame, range));
    }
    Ok(parsed)
}

/// The body at `range` of `frame`, moved to the front of the frame's own allocation.
fn body_in_place(mut frame: Vec<u8>, range: std::ops::Range<usize>) -> Vec<u8> {
    let len = range.len();
    frame.copy_within(range, 0);
    frame.truncate(len);
    // The frame's header and the read-ahead room are spare; glibc shrinks in place.
    if frame.capacity() > len + len / 8 {
        frame.shrink_to_fit();
    }
    frame
}

/// A frame with its largest literal replaced by a one-byte literal: what
/// [`parse_response_owned`] gives the parser.
struct Skeleton {
    frame: Vec<u8>,
    /// Where the one byte standing for the literal is in `frame`.
    placeholder: std::ops::Range<usize>,
    /// Where the literal is in the original frame.
    literal: std::ops::Range<usize>,
}

impl Skeleton {
    /// Literals shorter than this are parsed as they are: cutting them out saves nothing.
    const MIN_LITERAL: usize = 1024;

    fn of(frame: &[u8]) -> Option<Skeleton> {
        // The largest literal: (start of its announcement line, '{' in that line, end of
        // the announcement line, the literal's range).
        let mut largest: Option<(usize, usize, usize, std::ops::Range<usize>)> = None;
        let mut pos = 0;
        while pos < frame.len() {
            let lf = pos + memchr_lf(&frame[pos..])?;
            let line = &frame[pos..lf];
            let Some(n) = literal_announcement(line) else {
                pos = lf + 1;
                continue;
            };
            let start = lf + 1;
            let end = start.checked_add(usize::try_from(n).ok()?)?;
            if end > frame.len() {
                return None;
            }
            if largest.as_ref().is_none_or(|l| l.3.len() < end - start) {
                let open = pos + line.iter().rposition(|&b| b == b'{')?;
                largest = Some((pos, open, lf, start..end));
            }
            pos = end;
        }
        let (_, open, lf, literal) = largest?;
        if literal.len() < Self::MIN_LITERAL {
            return None;
        }
        let mut out = Vec::with_capacity(frame.len() - literal.len() + 8);
        out.extend_from_slice(&frame[..open]);
        out.extend_from_slice(b"{1}");
        // The announcement's own line ending (CRLF, or a bare LF some servers send).
        let cr = lf > 0 && frame[lf - 1] == b'\r';
        out.extend_from_slice(if cr { b"\r\n" } else { b"\n" });
        let placeholder = out.len()..out.len() + 1;
        out.push(b'X');
        out.extend_from_slice(&frame[literal.end..]);
        Some(Skeleton {
            frame: out,
            placeholder,
            literal,
        })
    }
}

/// Where `bytes` lies within `frame`, if it borrows from it.
fn range_within(frame: &[u8], bytes: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (bytes.as_ptr() as usize).checked_sub(frame.as_ptr() as usize)?;
    let end = start.checked_add(bytes.len())?;
    (end <= frame.len()).then_some(start..end)
}

/// imap-codec is strict; real servers are not. A tagged completion or an untagged line we
/// cannot parse must not kill a session when its meaning is still clear: a tagged line is
/// read as tag + OK/NO/BAD, an untagged non-FETCH line is ignored. A FETCH we cannot parse
/// is an error: it may carry a message, and skipping it would lose mail.
fn fallback(frame: &[u8]) -> Result<ServerResponse, ProtocolError> {
    let line = first_line(frame);
    let mut words = line.split_ascii_whitespace();
    let first = words.next().unwrap_or("");
    let second = words.next().unwrap_or("").to_ascii_uppercase();
    if first == "*" {
        let third = words.next().unwrap_or("").to_ascii_uppercase();
        if second == "FETCH" || third == "FETCH" {
            return Err(ProtocolError::Malformed(line));
        }
        if second == "BYE" {
            return Ok(ServerResponse::Bye { line });
        }
        return Ok(ServerResponse::Other);
    }
    if first == "+" {
        return Ok(ServerResponse::Continue(line[1..].trim().to_string()));
    }
    let completion = match second.as_str() {
        "OK" => Completion::Ok,
        "NO" => Completion::No,
        "BAD" => Completion::Bad,
        _ => return Err(ProtocolError::Malformed(line)),
    };
    Ok(ServerResponse::Tagged {
        tag: first.to_string(),
        completion,
        code: None,
        line,
    })
}

fn nstring_bytes(n: &NString<'_>) -> Option<Vec<u8>> {
    n.0.as_ref().map(|s: &IString<'_>| s.as_ref().to_vec())
}

/// With `body_at`, a FETCH body that borrows from `frame` is not copied: its place in the
/// frame is put there instead (and `body` left empty for the caller to fill).
fn convert(
    response: Response<'_>,
    frame: &[u8],
    mut body_at: Option<&mut Option<std::ops::Range<usize>>>,
) -> ServerResponse {
    match response {
        Response::CommandContinuationRequest(_) => {
            let line = first_line(frame);
            ServerResponse::Continue(line.strip_prefix('+').unwrap_or(&line).trim().to_string())
        }
        Response::Status(status) => {
            let line = first_line(frame);
            match status {
                Status::Bye { .. } => ServerResponse::Bye { line },
                Status::Ok { tag, code, .. }
                | Status::No { tag, code, .. }
                | Status::Bad { tag, code, .. } => {
                    let completion = match frame_status_word(&line) {
                        Some(c) => c,
                        None => Completion::Bad,
                    };
                    let code = code.as_ref().map(code_of);
                    match tag {
                        Some(tag) => ServerResponse::Tagged {
                            tag: tag.inner().to_string(),
                            completion,
                            code,
                            line,
                        },
                        None => match code {
                            Some(ResponseCode::Capabilities(c)) => ServerResponse::Capabilities(c),
                            code => ServerResponse::UntaggedStatus { code, line },
                        },
                    }
                }
            }
        }
        Response::Data(data) => match data {
            Data::Capability(caps) => ServerResponse::Capabilities(
                caps.as_ref()
                    .iter()
                    .map(|c| c.to_string().to_ascii_uppercase())
                    .collect(),
            ),
            Data::Exists(n) => ServerResponse::Exists(n),
            Data::List {
                items,
                delimiter,
                mailbox,
            } => {
                let name = match &mailbox {
                    imap_codec::imap_types::mailbox::Mailbox::Inbox => "INBOX".to_string(),
                    imap_codec::imap_types::mailbox::Mailbox::Other(other) => {
                        decode_mutf7(other.as_ref())
                    }
                };
                let noselect = items.iter().any(|a| {
                    let a = a.to_string().to_ascii_lowercase();
                    a == "\\noselect" || a == "\\nonexistent"
                });
                ServerResponse::List {
                    name,
                    delimiter: delimiter.map(|d| d.inner()),
                    noselect,
                }
            }
            Data::Expunge(n) => ServerResponse::Expunge(n.get()),
            Data::Fetch { seq, items } => {
                let mut f = Fetched {
                    seq: seq.get(),
                    ..Fetched::default()
                };
                let mut body = |data: &NString<'_>, f: &mut Fetched| {
                    let place = body_at
                        .as_ref()
                        .and(data.0.as_ref())
                        .and_then(|s| range_within(frame, s.as_ref()));
                    f.body = if place.is_some() {
                        None
                    } else {
                        nstring_bytes(data)
                    };
                    if let Some(at) = &mut body_at {
                        **at = place;
                    }
                };
                for item in items.into_inner() {
                    match item {
                        MessageDataItem::Uid(u) => f.uid = Some(u.get()),
                        MessageDataItem::Rfc822Size(s) => f.rfc822_size = Some(s),
                        MessageDataItem::InternalDate(d) => f.internal_date = Some(*d.as_ref()),
                        MessageDataItem::BodyExt {
                            section: None,
                            origin: None,
                            data,
                        } => body(&data, &mut f),
                        MessageDataItem::Rfc822(data) => body(&data, &mut f),
                        MessageDataItem::BodyExt {
                            section: Some(Section::Header(None)),
                            data,
                            ..
                        } => f.header = nstring_bytes(&data),
                        _ => {}
                    }
                }
                ServerResponse::Fetch(f)
            }
            _ => ServerResponse::Other,
        },
    }
}

/// The status word of a status line: `tag OK ...` / `* NO ...`.
fn frame_status_word(line: &str) -> Option<Completion> {
    let word = line.split_ascii_whitespace().nth(1)?.to_ascii_uppercase();
    match word.as_str() {
        "OK" => Some(Completion::Ok),
        "NO" => Some(Completion::No),
        "BAD" => Some(Completion::Bad),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
