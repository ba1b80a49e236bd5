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
mod tests {
    use super::*;

    fn frames(input: &[u8], chunk: usize) -> Vec<Vec<u8>> {
        let mut framer = Framer::new(1024, 1 << 20);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            while let Some(n) = framer.next_frame(&buf).unwrap() {
                out.push(buf.drain(..n).collect());
            }
        }
        assert!(
            buf.is_empty(),
            "leftover {:?}",
            String::from_utf8_lossy(&buf)
        );
        out
    }

    const FETCH: &[u8] = b"* 1 FETCH (UID 7 RFC822.SIZE 11 INTERNALDATE \"17-Jul-1996 02:44:25 -0700\" BODY[] {11}\r\nHello\r\nX}\r\n)\r\nA0003 OK UID FETCH completed\r\n";

    #[test]
    fn frames_literals_whatever_the_read_size() {
        for chunk in [1, 2, 3, 7, 64, 4096] {
            let f = frames(FETCH, chunk);
            assert_eq!(f.len(), 2, "chunk {chunk}");
            assert!(f[0].ends_with(b")\r\n"));
        }
    }

    #[test]
    fn literal_that_looks_like_announcement_is_skipped() {
        // The literal content itself ends with "{5}\r\n"; it must not be read as a literal.
        let input = b"* 2 FETCH (UID 8 BODY[] {7}\r\nab{5}\r\n)\r\n";
        let f = frames(input, 1);
        assert_eq!(f.len(), 1);
        match parse_response(&f[0]).unwrap() {
            ServerResponse::Fetch(m) => assert_eq!(m.body.unwrap(), b"ab{5}\r\n"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn owned_parse_hands_the_body_back_in_the_frames_allocation() {
        let body: Vec<u8> = (0..200_000u32)
            .map(|i| b"abc\r\n{5}"[(i % 8) as usize])
            .collect();
        let mut frame = format!(
            "* 3 FETCH (UID 41 RFC822.SIZE {n} INTERNALDATE \"01-Jan-2024 10:00:00 +0000\" BODY[] {{{n}}}\r\n",
            n = body.len()
        )
        .into_bytes();
        frame.extend_from_slice(&body);
        frame.extend_from_slice(b")\r\n");
        let borrowed = parse_response(&frame).unwrap();
        let at = frame.as_ptr();
        let owned = parse_response_owned(frame).unwrap();
        // The same answer as the borrowing parse, body and all...
        assert_eq!(owned, borrowed);
        let ServerResponse::Fetch(m) = owned else {
            panic!("{owned:?}")
        };
        assert_eq!((m.uid, m.rfc822_size), (Some(41), Some(200_000)));
        let got = m.body.unwrap();
        assert_eq!(got, body);
        // ...in the frame's own memory, not a copy.
        assert_eq!(got.as_ptr(), at);
        // Responses without a body are unchanged.
        assert_eq!(
            parse_response_owned(b"* 4 FETCH (UID 9 RFC822.SIZE 10)\r\n".to_vec()).unwrap(),
            parse_response(b"* 4 FETCH (UID 9 RFC822.SIZE 10)\r\n").unwrap()
        );
        assert_eq!(
            parse_response_owned(b"a1 OK done\r\n".to_vec()).unwrap(),
            parse_response(b"a1 OK done\r\n").unwrap()
        );
        // A quoted body (copied by the parser) still comes back whole.
        let ServerResponse::Fetch(q) =
            parse_response_owned(b"* 5 FETCH (UID 2 BODY[] \"hi\")\r\n".to_vec()).unwrap()
        else {
            panic!()
        };
        assert_eq!(q.body.as_deref(), Some(&b"hi"[..]));
    }

    /// A FETCH frame announcing `body` as a literal, with `before` and `after` around it.
    fn fetch_frame(before: &str, body: &[u8], after: &str) -> Vec<u8> {
        let mut frame = format!("{before}{{{}}}\r\n", body.len()).into_bytes();
        frame.extend_from_slice(body);
        frame.extend_from_slice(after.as_bytes());
        frame
    }

    #[test]
    fn a_body_with_nul_bytes_is_fetched() {
        // Real mail does carry NUL bytes (binary parts sent unencoded). The parser refuses
        // them in a literal; the body is cut out before it parses, so the message arrives.
        let mut body = b"Subject: x\r\n\r\n".to_vec();
        body.extend((0..5000u32).map(|i| if i % 97 == 0 { 0 } else { b'a' }));
        let frame = fetch_frame("* 7 FETCH (UID 12 BODY[] ", &body, " FLAGS (\\Seen))\r\n");
        assert!(
            parse_response(&frame).is_err(),
            "the parser itself refuses NUL in a literal"
        );
        let ServerResponse::Fetch(m) = parse_response_owned(frame).unwrap() else {
            panic!()
        };
        assert_eq!((m.uid, m.body.as_deref()), (Some(12), Some(&body[..])));
    }

    #[test]
    fn the_skeleton_parse_agrees_with_the_whole_frame_parse() {
        let body: Vec<u8> = (0..3000u32).map(|i| b"xyz\r\n"[(i % 5) as usize]).collect();
        let header = b"Message-ID: <a@b>\r\n\r\n".to_vec();
        let cases = vec![
            // The body first, with a small header literal after it.
            {
                let mut f = fetch_frame("* 1 FETCH (UID 5 BODY[] ", &body, " BODY[HEADER] ");
                f.extend_from_slice(&fetch_frame("", &header, ")\r\n"));
                f
            },
            // A header literal larger than the body: the largest literal is not the body,
            // so the whole frame is parsed.
            {
                let big_header = [b"X-Pad: ".as_slice(), &[b'p'; 4000], b"\r\n\r\n"].concat();
                let mut f = fetch_frame("* 2 FETCH (UID 6 BODY[HEADER] ", &big_header, " BODY[] ");
                f.extend_from_slice(&fetch_frame("", &body[..1500], ")\r\n"));
                f
            },
            // RFC822 instead of BODY[], and bare LF line endings.
            fetch_frame("* 3 FETCH (RFC822 ", &body, " UID 9)\n"),
            // literal8 (BINARY) is not a body this client asks for; it must not break.
            fetch_frame("* 4 FETCH (UID 10 BINARY[] ~", &body, ")\r\n"),
        ];
        for frame in cases {
            let whole = parse_response(&frame);
            let owned = parse_response_owned(frame.clone());
            assert_eq!(
                format!("{owned:?}"),
                format!("{whole:?}"),
                "{}",
                first_line(&frame)
            );
        }
    }

    #[test]
    fn line_and_literal_caps() {
        let mut framer = Framer::new(16, 100);
        assert!(matches!(
            framer.next_frame(b"* OK this line is way too long for the cap"),
            Err(ProtocolError::LineTooLong(16))
        ));
        let mut framer = Framer::new(1024, 100);
        assert!(matches!(
            framer.next_frame(b"* 1 FETCH (BODY[] {101}\r\n"),
            Err(ProtocolError::LiteralTooLarge { size: 101, .. })
        ));
    }

    /// A hostile server chains literals, each under the literal cap, in one response to make
    /// the client buffer without bound: refused once the response passes the literal cap
    /// plus the envelope allowance, with little more than that buffered.
    #[test]
    fn chained_literals_under_the_literal_cap_are_refused_as_one_oversized_response() {
        let mut framer = Framer::new(DEFAULT_MAX_LINE, 1000);
        let limit = 1000 + RESPONSE_ENVELOPE_BYTES;
        let mut hostile = b"* 1 FETCH (".to_vec();
        while (hostile.len() as u64) < 2 * limit {
            hostile.extend_from_slice(b"BODY[1] {1000}\r\n");
            hostile.extend_from_slice(&[b'x'; 1000]);
            hostile.push(b' ');
        }
        let mut buf = Vec::new();
        let error = hostile.chunks(64 * 1024).find_map(|piece| {
            buf.extend_from_slice(piece);
            framer.next_frame(&buf).err()
        });
        assert!(
            matches!(error, Some(ProtocolError::ResponseTooLarge { limit: l, .. }) if l == limit),
            "{error:?}"
        );
        assert!(
            (buf.len() as u64) < limit + 64 * 1024 + 1100,
            "{} bytes buffered before the refusal",
            buf.len()
        );
    }

    /// The response cap at its boundary: a response of exactly the cap is framed, one byte
    /// more is refused, whether the excess is in a line, in a literal (refused when
    /// announced, before its bytes arrive) or in a line still arriving.
    #[test]
    fn response_cap_boundaries() {
        let frame = b"* 1 FETCH (BODY[] {5}\r\nhello)\r\n";
        let len = frame.len() as u64;
        let capped = |max: u64| Framer::new(1024, 100).with_max_response(max);
        assert_eq!(capped(len).next_frame(frame), Ok(Some(frame.len())));
        assert_eq!(
            capped(len - 1).next_frame(frame),
            Err(ProtocolError::ResponseTooLarge {
                size: len,
                limit: len - 1
            })
        );
        // The literal's end is known from its announcement.
        let announced = b"* 1 FETCH (BODY[] {5}\r\n";
        let literal_end = announced.len() as u64 + 5;
        assert_eq!(capped(literal_end).next_frame(announced), Ok(None));
        assert_eq!(
            capped(literal_end - 1).next_frame(announced),
            Err(ProtocolError::ResponseTooLarge {
                size: literal_end,
                limit: literal_end - 1
            })
        );
        // A line without its end yet: what is buffered already counts.
        let partial = b"* 1 FETCH (BODY[] {5}\r\nhello UID 7";
        let partial_len = partial.len() as u64;
        assert_eq!(capped(partial_len).next_frame(partial), Ok(None));
        assert!(matches!(
            capped(partial_len - 1).next_frame(partial),
            Err(ProtocolError::ResponseTooLarge { .. })
        ));
        // The default allowance: the literal cap plus the envelope.
        assert_eq!(
            Framer::new(1024, 100).max_response(),
            100 + RESPONSE_ENVELOPE_BYTES
        );
    }

    #[test]
    fn parses_fetch_items_by_name_in_any_order() {
        let f = frames(FETCH, 4096);
        let ServerResponse::Fetch(m) = parse_response(&f[0]).unwrap() else {
            panic!()
        };
        assert_eq!(m.uid, Some(7));
        assert_eq!(m.rfc822_size, Some(11));
        assert_eq!(m.body.as_deref(), Some(&b"Hello\r\nX}\r\n"[..]));
        assert_eq!(
            m.internal_date.unwrap().to_rfc3339(),
            "1996-07-17T02:44:25-07:00"
        );
        let reordered = b"* 3 FETCH (RFC822.SIZE 2 BODY[] {2}\r\nhi UID 9)\r\n";
        let ServerResponse::Fetch(m) = parse_response(reordered).unwrap() else {
            panic!()
        };
        assert_eq!((m.uid, m.body.as_deref()), (Some(9), Some(&b"hi"[..])));
    }

    #[test]
    fn parses_status_codes_and_capabilities() {
        let r = parse_response(b"* OK [UIDVALIDITY 1700000000] UIDs valid\r\n").unwrap();
        assert_eq!(
            r,
            ServerResponse::UntaggedStatus {
                code: Some(ResponseCode::UidValidity(1700000000)),
                line: "* OK [UIDVALIDITY 1700000000] UIDs valid".into()
            }
        );
        let r = parse_response(b"* CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 IDLE\r\n").unwrap();
        let ServerResponse::Capabilities(c) = r else {
            panic!()
        };
        assert!(c.contains("AUTH=XOAUTH2") && c.contains("SASL-IR") && c.contains("IDLE"));
        let r =
            parse_response(b"A0002 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n").unwrap();
        let ServerResponse::Tagged {
            tag,
            completion,
            line,
            ..
        } = r
        else {
            panic!()
        };
        assert_eq!((tag.as_str(), completion), ("A0002", Completion::No));
        assert!(line.contains("AUTHENTICATIONFAILED"));
        let r = parse_response(b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n").unwrap();
        assert_eq!(
            r,
            ServerResponse::Continue("eyJzdGF0dXMiOiI0MDEifQ==".into())
        );
        let r = parse_response(b"* BYE Server shutting down\r\n").unwrap();
        assert!(matches!(r, ServerResponse::Bye { .. }));
    }

    #[test]
    fn greeting_with_capabilities() {
        let (ok, caps) =
            parse_greeting(b"* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] Dovecot ready.\r\n")
                .unwrap();
        assert!(ok);
        assert!(caps.unwrap().contains("STARTTLS"));
        assert!(parse_greeting(b"* BYE go away\r\n").is_err());
    }

    #[test]
    fn unknown_untagged_is_ignored_but_bad_fetch_is_an_error() {
        assert_eq!(
            parse_response(b"* XWEIRD 1 2 (((\r\n").unwrap(),
            ServerResponse::Other
        );
        assert!(parse_response(b"* 1 FETCH (UID x BODY[] \r\n").is_err());
    }

    #[test]
    fn a_line_may_be_as_long_as_the_cap_and_no_longer() {
        // 16 bytes before the LF (the CR counts), then 17.
        let mut framer = Framer::new(16, 100);
        assert_eq!(framer.next_frame(b"* OK 4567890123\r\n").unwrap(), Some(17));
        let mut framer = Framer::new(16, 100);
        assert_eq!(
            framer.next_frame(b"* OK 45678901234\r\n"),
            Err(ProtocolError::LineTooLong(16))
        );
        // A line still arriving: refused as soon as it is over the cap, not before.
        let mut framer = Framer::new(16, 100);
        assert_eq!(framer.next_frame(b"* OK 4567890123\r").unwrap(), None);
        assert_eq!(
            framer.next_frame(b"* OK 4567890123\r\r"),
            Err(ProtocolError::LineTooLong(16))
        );
        // The default leaves room for 64 KiB.
        let mut line = vec![b'x'; 64 * 1024 - 1];
        line.extend_from_slice(b"\r\n");
        let mut framer = Framer::new(DEFAULT_MAX_LINE, 0);
        assert_eq!(framer.next_frame(&line).unwrap(), Some(line.len()));
        line.insert(0, b'x');
        let mut framer = Framer::new(DEFAULT_MAX_LINE, 0);
        assert!(framer.next_frame(&line).is_err());
    }

    #[test]
    fn the_line_after_a_literal_is_measured_from_its_own_start() {
        let head = b"* 1 FETCH (BODY[] {20}\r\n";
        let mut input = head.to_vec();
        input.extend_from_slice(&[b'a'; 20]);
        input.extend_from_slice(b" UID 1234567)");
        let mut framer = Framer::new(24, 100);
        assert_eq!(framer.next_frame(&input).unwrap(), None);
        input.extend_from_slice(b"\r\n");
        assert_eq!(framer.next_frame(&input).unwrap(), Some(input.len()));
        // And the cap applies to that line too.
        let mut input = head.to_vec();
        input.extend_from_slice(&[b'a'; 20]);
        input.extend_from_slice(&[b'b'; 25]);
        let mut framer = Framer::new(24, 100);
        assert_eq!(
            framer.next_frame(&input),
            Err(ProtocolError::LineTooLong(24))
        );
        let mut framer = Framer::new(24, 100);
        input.extend_from_slice(b"\r\n");
        assert_eq!(
            framer.next_frame(&input),
            Err(ProtocolError::LineTooLong(24))
        );
    }

    #[test]
    fn a_literal_may_be_as_large_as_the_cap_and_no_larger() {
        let mut framer = Framer::new(1024, 5);
        let frame = b"* 1 FETCH (BODY[] {5}\r\nabcde)\r\n";
        assert_eq!(framer.next_frame(frame).unwrap(), Some(frame.len()));
        let mut framer = Framer::new(1024, 4);
        assert_eq!(
            framer.next_frame(frame),
            Err(ProtocolError::LiteralTooLarge { size: 5, limit: 4 })
        );
    }

    #[test]
    fn while_a_literal_arrives_the_framer_knows_where_it_ends() {
        let mut framer = Framer::new(1024, 100);
        let mut buf = b"* 1 FETCH (BODY[] {5}\r\nab".to_vec();
        assert_eq!(framer.literal_end(buf.len()), None);
        assert_eq!(framer.next_frame(&buf).unwrap(), None);
        let end = b"* 1 FETCH (BODY[] {5}\r\n".len() + 5;
        assert_eq!(framer.literal_end(buf.len()), Some(end));
        assert_eq!(framer.literal_end(end - 1), Some(end));
        buf.extend_from_slice(b"cde");
        assert_eq!(framer.next_frame(&buf).unwrap(), None);
        assert_eq!(buf.len(), end);
        assert_eq!(framer.literal_end(buf.len()), None, "it has all arrived");
        buf.extend_from_slice(b")\r\n* 2 EXISTS\r\n");
        assert_eq!(framer.next_frame(&buf).unwrap(), Some(end + 3));
        assert_eq!(
            framer.literal_end(0),
            None,
            "a new frame starts from scratch"
        );
    }

    #[test]
    fn literal_announcements_are_read_only_at_the_end_of_a_line() {
        for (line, n) in [
            (&b"* 1 FETCH (BODY[] {12}\r"[..], Some(12)),
            (b"* 1 FETCH (BODY[] {12}", Some(12)),
            (b"A1 LOGIN {3+}\r", Some(3)),
            (b"* 1 FETCH (BINARY[] ~{7}\r", Some(7)),
            (b"x {1}{2}\r", Some(2)),
            (b"{0}\r", Some(0)),
            (b"0000000000000000001}\r", None),
            (b"{0000000000000000001}\r", Some(1)),
            (b"{00000000000000000001}\r", None),
            (b"{99999999999999999999}\r", None),
            (b"{}\r", None),
            (b"{+}\r", None),
            (b"{1a}\r", None),
            (b"{-1}\r", None),
            (b"{12} \r", None),
            (b"{12\r", None),
            (b"12}\r", None),
            (b"* OK done\r", None),
        ] {
            assert_eq!(
                literal_announcement(line),
                n,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn response_codes_are_kept_by_kind() {
        let code = |line: &[u8]| match parse_response(line).unwrap() {
            ServerResponse::UntaggedStatus { code, .. } => code,
            ServerResponse::Tagged { code, .. } => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            code(b"* OK [UIDNEXT 42] n\r\n"),
            Some(ResponseCode::UidNext(42))
        );
        assert_eq!(
            code(b"* OK [UIDVALIDITY 3] v\r\n"),
            Some(ResponseCode::UidValidity(3))
        );
        assert_eq!(
            code(b"A1 OK [READ-ONLY] x\r\n"),
            Some(ResponseCode::ReadOnly)
        );
        assert_eq!(
            code(b"A1 OK [READ-WRITE] x\r\n"),
            Some(ResponseCode::ReadWrite)
        );
        assert_eq!(
            code(b"A1 OK [CAPABILITY IMAP4rev1 idle] x\r\n"),
            Some(ResponseCode::Capabilities(
                ["IMAP4REV1".to_string(), "IDLE".to_string()].into()
            ))
        );
        assert_eq!(
            code(b"A1 NO [TRYCREATE] x\r\n"),
            Some(ResponseCode::Other("TryCreate".into()))
        );
        assert_eq!(
            code(b"* NO [ALERT] careful\r\n"),
            Some(ResponseCode::Other("Alert".into()))
        );
        assert_eq!(code(b"A1 OK done\r\n"), None);
    }

    #[test]
    fn every_status_kind_is_told_apart() {
        for (line, want) in [
            (&b"A1 OK done\r\n"[..], Completion::Ok),
            (b"A1 NO nope\r\n", Completion::No),
            (b"A1 BAD what\r\n", Completion::Bad),
            (b"a1 ok lower case\r\n", Completion::Ok),
            (b"a1 no lower case\r\n", Completion::No),
        ] {
            let ServerResponse::Tagged {
                tag, completion, ..
            } = parse_response(line).unwrap()
            else {
                panic!("{}", first_line(line));
            };
            assert_eq!(completion, want, "{}", first_line(line));
            assert_eq!(tag.to_ascii_uppercase(), "A1");
        }
        // Untagged statuses: with their code, or the capabilities they carry.
        assert_eq!(
            parse_response(b"* NO disk is full\r\n").unwrap(),
            ServerResponse::UntaggedStatus {
                code: None,
                line: "* NO disk is full".into()
            }
        );
        assert_eq!(
            parse_response(b"* BAD odd\r\n").unwrap(),
            ServerResponse::UntaggedStatus {
                code: None,
                line: "* BAD odd".into()
            }
        );
        assert_eq!(
            parse_response(b"* OK [CAPABILITY IMAP4rev1 MOVE] hi\r\n").unwrap(),
            ServerResponse::Capabilities(["IMAP4REV1".to_string(), "MOVE".to_string()].into())
        );
        assert_eq!(
            parse_response(b"* BYE bye now\r\n").unwrap(),
            ServerResponse::Bye {
                line: "* BYE bye now".into()
            }
        );
        assert_eq!(
            parse_response(b"+ idling\r\n").unwrap(),
            ServerResponse::Continue("idling".into())
        );
        assert_eq!(
            parse_response(b"+ \r\n").unwrap(),
            ServerResponse::Continue(String::new())
        );
        assert_eq!(
            parse_response(b"* 3 EXISTS\r\n").unwrap(),
            ServerResponse::Exists(3)
        );
        assert_eq!(
            parse_response(b"* 5 EXPUNGE\r\n").unwrap(),
            ServerResponse::Expunge(5)
        );
        assert_eq!(
            parse_response(b"* 2 RECENT\r\n").unwrap(),
            ServerResponse::Other
        );
        assert_eq!(
            parse_response(b"* FLAGS (\\Seen \\Deleted)\r\n").unwrap(),
            ServerResponse::Other
        );
    }

    #[test]
    fn list_attributes_that_forbid_opening_a_folder() {
        let noselect = |line: &[u8]| match parse_response(line).unwrap() {
            ServerResponse::List { noselect, .. } => noselect,
            other => panic!("{other:?}"),
        };
        assert!(noselect(b"* LIST (\\Noselect) \"/\" a\r\n"));
        assert!(noselect(b"* LIST (\\NoSelect) \"/\" a\r\n"));
        assert!(noselect(b"* LIST (\\NonExistent) \"/\" a\r\n"));
        assert!(noselect(
            b"* LIST (\\HasChildren \\NonExistent) \"/\" a\r\n"
        ));
        assert!(!noselect(b"* LIST (\\HasChildren) \"/\" a\r\n"));
        assert!(!noselect(b"* LIST (\\Marked \\Sent) \"/\" a\r\n"));
        assert_eq!(
            parse_response(b"* LIST () NIL flat\r\n").unwrap(),
            ServerResponse::List {
                name: "flat".into(),
                delimiter: None,
                noselect: false
            }
        );
    }

    #[test]
    fn every_fetch_item_a_collector_uses_is_read() {
        let ServerResponse::Fetch(m) = parse_response(
            b"* 12 FETCH (UID 7 RFC822.SIZE 3 FLAGS (\\Seen) BODY[HEADER] {4}\r\nH: x BODY[TEXT] {2}\r\nty)\r\n",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            m,
            Fetched {
                seq: 12,
                uid: Some(7),
                rfc822_size: Some(3),
                internal_date: None,
                body: None,
                header: Some(b"H: x".to_vec()),
            }
        );
        let ServerResponse::Fetch(m) =
            parse_response(b"* 4 FETCH (RFC822 {3}\r\nabc UID 2)\r\n").unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (m.seq, m.uid, m.body.as_deref()),
            (4, Some(2), Some(&b"abc"[..]))
        );
        // NIL is no body; a partial body is not the message.
        let ServerResponse::Fetch(m) = parse_response(b"* 5 FETCH (UID 3 BODY[] NIL)\r\n").unwrap()
        else {
            panic!()
        };
        assert_eq!(m.body, None);
        let ServerResponse::Fetch(m) =
            parse_response(b"* 5 FETCH (UID 3 BODY[]<0> {2}\r\nab)\r\n").unwrap()
        else {
            panic!()
        };
        assert_eq!(m.body, None);
        for owned in [false, true] {
            let frame = b"* 6 FETCH (UID 4 BODY[] \"\")\r\n";
            let r = if owned {
                parse_response_owned(frame.to_vec())
            } else {
                parse_response(frame)
            };
            let ServerResponse::Fetch(m) = r.unwrap() else {
                panic!()
            };
            assert_eq!(m.body.as_deref(), Some(&b""[..]), "owned: {owned}");
        }
    }

    #[test]
    fn the_greeting_says_whether_to_sign_in() {
        assert_eq!(parse_greeting(b"* OK hello\r\n").unwrap(), (true, None));
        assert_eq!(
            parse_greeting(b"* PREAUTH [CAPABILITY IMAP4rev1] welcome back\r\n").unwrap(),
            (false, Some(["IMAP4REV1".to_string()].into()))
        );
        assert_eq!(
            parse_greeting(b"* OK [ALERT] hi\r\n").unwrap(),
            (true, None)
        );
        assert_eq!(
            parse_greeting(b"* BYE full\r\n"),
            Err(ProtocolError::Rejected("* BYE full".into()))
        );
        assert_eq!(
            parse_greeting(b"220 smtp.example ESMTP\r\n"),
            Err(ProtocolError::Malformed("220 smtp.example ESMTP".into()))
        );
        assert_eq!(
            parse_greeting(b"* OK [CAPABILITY IMAP4rev1"),
            Err(ProtocolError::Malformed(
                "* OK [CAPABILITY IMAP4rev1".into()
            ))
        );
        assert_eq!(first_line(b"A1 OK x\r\nnext"), "A1 OK x");
    }

    #[test]
    fn a_frame_cut_short_is_malformed() {
        for frame in [
            &b"* 1 FETCH (UID 1 BODY[] {5}\r\nab"[..],
            b"* 1 FETCH (UID 1 BODY[] {5}\r\n",
            b"* 1 FETCH (UID 1 BODY[] {2000}\r\nab",
            b"* 1 EXISTS",
        ] {
            assert!(
                matches!(parse_response(frame), Err(ProtocolError::Malformed(_))),
                "{}",
                first_line(frame)
            );
            assert!(
                matches!(
                    parse_response_owned(frame.to_vec()),
                    Err(ProtocolError::Malformed(_))
                ),
                "{}",
                first_line(frame)
            );
        }
    }

    #[test]
    fn lines_the_parser_refuses_are_still_read_when_their_meaning_is_clear() {
        for (line, want) in [
            (&b"A1 OK [\r\n"[..], Completion::Ok),
            (b"A1 NO [\r\n", Completion::No),
            (b"A1 bad [\r\n", Completion::Bad),
        ] {
            for parsed in [parse_response(line), parse_response_owned(line.to_vec())] {
                assert_eq!(
                    parsed.unwrap(),
                    ServerResponse::Tagged {
                        tag: "A1".into(),
                        completion: want,
                        code: None,
                        line: first_line(line),
                    }
                );
            }
        }
        assert_eq!(
            parse_response(b"A1 MAYBE [\r\n"),
            Err(ProtocolError::Malformed("A1 MAYBE [".into()))
        );
        assert_eq!(
            parse_response(b"* SOMETHING [\r\n").unwrap(),
            ServerResponse::Other
        );
        assert_eq!(
            parse_response(b"* BYE [\r\n").unwrap(),
            ServerResponse::Bye {
                line: "* BYE [".into()
            }
        );
        assert_eq!(
            parse_response_owned(b"* bye [\r\n".to_vec()).unwrap(),
            ServerResponse::Bye {
                line: "* bye [".into()
            }
        );
        // A FETCH that cannot be read may carry mail: never skipped.
        for line in [
            &b"* 3 FETCH [\r\n"[..],
            b"* 3 fetch [\r\n",
            b"* FETCH [\r\n",
        ] {
            assert!(parse_response(line).is_err(), "{}", first_line(line));
            assert!(
                parse_response_owned(line.to_vec()).is_err(),
                "{}",
                first_line(line)
            );
        }
    }

    #[test]
    fn the_lenient_reading_keeps_tags_statuses_bye_and_continuations() {
        let tagged = |tag: &str, completion, line: &str| ServerResponse::Tagged {
            tag: tag.into(),
            completion,
            code: None,
            line: line.into(),
        };
        assert_eq!(
            fallback(b"A1 OK done\r\n"),
            Ok(tagged("A1", Completion::Ok, "A1 OK done"))
        );
        assert_eq!(
            fallback(b"A2 no x\r\n"),
            Ok(tagged("A2", Completion::No, "A2 no x"))
        );
        assert_eq!(
            fallback(b"A3 BAD y\r\n"),
            Ok(tagged("A3", Completion::Bad, "A3 BAD y"))
        );
        assert_eq!(
            fallback(b"A4 PERHAPS\r\n"),
            Err(ProtocolError::Malformed("A4 PERHAPS".into()))
        );
        assert_eq!(fallback(b""), Err(ProtocolError::Malformed(String::new())));
        assert_eq!(
            fallback(b"* BYE going\r\n"),
            Ok(ServerResponse::Bye {
                line: "* BYE going".into()
            })
        );
        assert_eq!(fallback(b"* OK fine\r\n"), Ok(ServerResponse::Other));
        assert_eq!(fallback(b"*\r\n"), Ok(ServerResponse::Other));
        assert_eq!(
            fallback(b"+ go on\r\n"),
            Ok(ServerResponse::Continue("go on".into()))
        );
        assert_eq!(
            fallback(b"+\r\n"),
            Ok(ServerResponse::Continue(String::new()))
        );
        for line in [&b"* 2 FETCH (\r\n"[..], b"* FETCH\r\n", b"* 2 fetch\r\n"] {
            assert_eq!(
                fallback(line),
                Err(ProtocolError::Malformed(first_line(line))),
                "{}",
                first_line(line)
            );
        }
    }

    #[test]
    fn the_status_word_is_the_second_word() {
        assert_eq!(frame_status_word("A1 OK x"), Some(Completion::Ok));
        assert_eq!(frame_status_word("* no x"), Some(Completion::No));
        assert_eq!(frame_status_word("A1 Bad"), Some(Completion::Bad));
        assert_eq!(frame_status_word("A1 BYE"), None);
        assert_eq!(frame_status_word("OK"), None);
    }

    /// A body of `len` bytes with NUL bytes in it, which the parser refuses inside a
    /// literal.
    fn body_with_nul(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| if i % 50 == 7 { 0 } else { b"ab\r\n"[i % 4] })
            .collect()
    }

    #[test]
    fn a_body_with_nul_is_fetched_from_any_place_in_the_frame() {
        let body = body_with_nul(Skeleton::MIN_LITERAL);
        let header = [b"X-Pad: ".as_slice(), &[b'p'; 990], b"\r\n\r\n"].concat();
        let cases = [
            // The smallest body cut out.
            fetch_frame("* 1 FETCH (UID 5 BODY[] ", &body, ")\r\n"),
            // Bare LF line endings.
            fetch_frame("* 1 FETCH (UID 5 BODY[] ", &body, ")\n"),
            // After a smaller literal, with items after it.
            {
                let mut f = fetch_frame(
                    "* 1 FETCH (UID 5 BODY[HEADER] ",
                    b"Subject: s\r\n\r\n",
                    " BODY[] ",
                );
                f.extend_from_slice(&fetch_frame("", &body, " RFC822.SIZE 9)\r\n"));
                f
            },
            // Before a smaller literal.
            {
                let mut f = fetch_frame("* 1 FETCH (UID 5 BODY[] ", &body, " BODY[HEADER] ");
                f.extend_from_slice(&fetch_frame("", b"Subject: s\r\n\r\n", ")\r\n"));
                f
            },
            // After a literal that is nearly as large.
            {
                let mut f = fetch_frame("* 1 FETCH (UID 5 BODY[HEADER] ", &header, " BODY[] ");
                f.extend_from_slice(&fetch_frame("", &body, ")\r\n"));
                f
            },
        ];
        for frame in cases {
            let at = frame.as_ptr();
            let ServerResponse::Fetch(m) = parse_response_owned(frame).unwrap() else {
                panic!()
            };
            let got = m.body.expect("a body");
            assert_eq!((m.uid, &got[..]), (Some(5), &body[..]));
            assert_eq!(got.as_ptr(), at, "the body was copied");
        }
    }

    #[test]
    fn a_body_moved_to_the_front_gives_back_spare_room_over_an_eighth() {
        let frame_of = |capacity: usize| {
            let mut v = Vec::with_capacity(capacity);
            v.extend((0..capacity).map(|i| i as u8));
            v
        };
        // 800 bytes of body: 900 of capacity is within an eighth, 901 is not.
        let kept = body_in_place(frame_of(900), 50..850);
        assert_eq!((kept.len(), kept.capacity()), (800, 900));
        assert_eq!(kept[0], 50);
        assert_eq!(kept[799], (849 % 256) as u8);
        let shrunk = body_in_place(frame_of(901), 100..900);
        assert_eq!((shrunk.len(), shrunk.capacity()), (800, 800));
        assert_eq!(shrunk[0], 100);
    }

    #[test]
    fn where_a_slice_lies_in_a_frame() {
        let frame = b"0123456789".to_vec();
        assert_eq!(range_within(&frame, &frame[3..7]), Some(3..7));
        assert_eq!(range_within(&frame, &frame[..]), Some(0..10));
        assert_eq!(range_within(&frame, &frame[10..]), Some(10..10));
        let other = b"0123456789".to_vec();
        assert_eq!(range_within(&frame, &other[..]), None);
    }
}
