//! mail-parser → the parsed fields we store beside the raw bytes. The only importer of
//! `mail_parser`. Parsing never loses a message: when mail-parser cannot make sense of the
//! bytes, the caller stores them raw with the returned error as the parse-error mark.

use mail_parser::{Address, MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};

/// What we extract from a message. Strings are decoded (RFC 2047 words, charsets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParsedFields {
    pub message_id: Option<String>,
    pub from: Vec<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: Option<String>,
    /// The Date header as RFC 3339, when it parses.
    pub date: Option<String>,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    pub attachments: Vec<AttachmentInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    pub name: Option<String>,
    pub content_type: Option<String>,
    /// Decoded size in bytes.
    pub size: u64,
}

fn addresses(a: Option<&Address<'_>>) -> Vec<String> {
    let Some(a) = a else { return Vec::new() };
    a.iter()
        .map(|addr| match (addr.name(), addr.address()) {
            (Some(name), Some(email)) => format!("{name} <{email}>"),
            (None, Some(email)) => email.to_string(),
            (Some(name), None) => name.to_string(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect()
}

/// Base64 bodies shorter than this stay in the copy mail-parser reads: cutting them saves
/// less than it costs.
const MIN_CUT: usize = 2048;

/// What a cut body is replaced with in that copy: one base64 quantum (3 bytes decoded).
const PLACEHOLDER: &[u8] = b"AAAA\r\n";

/// Why a message could not be parsed: the reason its parse-error mark gives (the message is
/// stored raw all the same).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no RFC 5322 header found")]
    NoHeader,
    /// mail-parser panicked on it (some malformed nestings of attached messages).
    #[error("mail-parser failed on it: {0}")]
    ParserPanicked(String),
    /// A cut-out body was not confirmed by the parse of the whole message (a bug of ours).
    #[error("a cut without a part")]
    CutWithoutPart,
}

/// Parses a raw message. `Err` carries the reason for the parse-error mark.
///
/// mail-parser decodes every part, but of an attachment we keep only its size. So the base64
/// bodies of non-text parts are cut out first ([`base64_bodies`]): mail-parser reads a copy of
/// the message in which each of them is one base64 quantum, and their sizes come from
/// counting the cut bytes the way mail-parser's decoder would decode them. The parse of the
/// copy must confirm every cut: each must be the body of a base64 attachment of the message
/// itself. When one is not, the message is parsed as it is.
pub fn parse(raw: &[u8]) -> Result<ParsedFields, ParseError> {
    parse_cutting(raw, MIN_CUT)
}

/// The parse of the message as it is, nothing cut: what [`parse`] must agree with.
#[doc(hidden)]
pub fn parse_whole(raw: &[u8]) -> Result<ParsedFields, ParseError> {
    guarded(raw, &[]).unwrap_or(Err(ParseError::CutWithoutPart))
}

/// [`fields`], with a panic in mail-parser made a parse error. mail-parser panics on some
/// malformed nestings of attached messages ("Invalid part ID, could not find multipart"); such
/// a message must be stored raw like any other it cannot parse, not fail its mailbox's cycle
/// again and again.
fn guarded(raw: &[u8], placed: &[(u32, u64)]) -> Option<Result<ParsedFields, ParseError>> {
    std::panic::catch_unwind(|| fields(raw, placed)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Some(Err(ParseError::ParserPanicked(why)))
    })
}

/// Keeps the panics [`guarded`] turns into parse errors out of the process's panic output:
/// a panic raised in mail-parser's own code skips the panic hook installed before this one
/// (which prints it, and under a fuzzer aborts); every other panic still goes to it. The
/// message is logged anyway, as the reason of its parse-error mark.
pub fn quiet_mail_parser_panics() {
    let before = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let in_mail_parser = info
            .location()
            .is_some_and(|l| l.file().contains("/mail-parser-"));
        if !in_mail_parser {
            before(info);
        }
    }));
}

/// [`parse`] cutting base64 bodies of at least `min_cut` bytes (small ones too, to fuzz).
#[doc(hidden)]
pub fn parse_cutting(raw: &[u8], min_cut: usize) -> Result<ParsedFields, ParseError> {
    parse_cut(raw, min_cut).unwrap_or_else(|| parse_whole(raw))
}

/// The parse of the copy with the base64 bodies cut out; `None` when there is nothing to cut
/// or the copy's parse does not confirm every cut (then the message as it is decides).
fn parse_cut(raw: &[u8], min_cut: usize) -> Option<Result<ParsedFields, ParseError>> {
    let cuts = base64_bodies(raw, min_cut.max(1));
    if cuts.is_empty() {
        return None;
    }
    let cut_bytes: usize = cuts.iter().map(|c| c.end - c.start).sum();
    let mut copy = Vec::with_capacity(raw.len() - cut_bytes + cuts.len() * PLACEHOLDER.len());
    let mut placed = Vec::with_capacity(cuts.len());
    let mut from = 0;
    for cut in &cuts {
        copy.extend_from_slice(&raw[from..cut.start]);
        placed.push((u32::try_from(copy.len()).ok()?, cut.size));
        copy.extend_from_slice(PLACEHOLDER);
        from = cut.end;
    }
    copy.extend_from_slice(&raw[from..]);
    // A copy without a header would be a message without one: the whole parse says so.
    guarded(&copy, &placed).filter(Result::is_ok)
}

/// The fields of `raw`, where `placed` lists (offset in `raw`, decoded size) of the bodies
/// that were cut and replaced by [`PLACEHOLDER`]. `None` when one of them is not the body of a
/// base64 attachment of the message.
fn fields(raw: &[u8], placed: &[(u32, u64)]) -> Option<Result<ParsedFields, ParseError>> {
    let Some(msg) = MessageParser::default().parse(raw) else {
        return Some(Err(ParseError::NoHeader));
    };
    if msg.headers().is_empty() {
        return Some(Err(ParseError::NoHeader));
    }
    let mut confirmed = 0;
    let mut attachments = Vec::new();
    for part in msg.attachments() {
        let mut size = part.contents().len() as u64;
        if let Some(&(_, cut_size)) = placed.iter().find(|(at, _)| *at == part.offset_body) {
            let binary = matches!(
                part.body,
                mail_parser::PartType::Binary(_) | mail_parser::PartType::InlineBinary(_)
            );
            if !binary
                || part.encoding != mail_parser::Encoding::Base64
                || part.contents().len() != 3
            {
                return None;
            }
            confirmed += 1;
            size = cut_size;
        }
        attachments.push(AttachmentInfo {
            name: part.attachment_name().map(str::to_string),
            content_type: part.content_type().map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_string(),
            }),
            size,
        });
    }
    if confirmed != placed.len() {
        return None;
    }
    Some(Ok(ParsedFields {
        message_id: msg.message_id().map(str::to_string),
        from: addresses(msg.from()),
        to: addresses(msg.to()),
        cc: addresses(msg.cc()),
        subject: msg.subject().map(str::to_string),
        date: msg.date().map(|d| d.to_rfc3339()),
        text_body: msg.body_text(0).map(|t| t.into_owned()),
        // Only an HTML part the message has: mail-parser would otherwise make one up from
        // the text body (escaped, with <br>), which stores the text a second time, larger.
        html_body: msg
            .html_part(0)
            .filter(|p| matches!(p.body, mail_parser::PartType::Html(_)))
            .and_then(|_| msg.body_html(0))
            .map(|t| t.into_owned()),
        attachments,
    }))
}

/// A base64 body to cut: `raw[start..end]`, `size` bytes decoded.
#[derive(Debug, PartialEq, Eq)]
struct Cut {
    start: usize,
    end: usize,
    size: u64,
}

/// Finds the base64 bodies of non-text MIME parts of at least `min_cut` bytes. A scan, not a
/// MIME parser: a part header is the lines after a line starting with `--`, up to an empty
/// line; it must say `Content-Transfer-Encoding: base64` and a `Content-Type` other than
/// text, message or multipart. The body must be base64 only, up to the next line starting
/// with `--`. Whatever this gets wrong, the parse of the copy catches ([`fields`]).
fn base64_bodies(raw: &[u8], min_cut: usize) -> Vec<Cut> {
    let mut cuts = Vec::new();
    let delimiter = memchr::memmem::Finder::new(b"\n--");
    // `pos` is at a newline or before one: a line starting with `--` is found after it.
    let mut pos = 0;
    'delimiters: while let Some(found) = delimiter.find(&raw[pos..]) {
        let Some(eol) = memchr::memchr(b'\n', &raw[pos + found + 1..]) else {
            break;
        };
        let mut line_start = pos + found + 1 + eol + 1;
        let (mut base64, mut binary) = (false, false);
        loop {
            let Some(eol) = memchr::memchr(b'\n', &raw[line_start..]) else {
                break 'delimiters;
            };
            let next = line_start + eol + 1;
            let line = &raw[line_start..next - 1];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.starts_with(b"--") {
                // A delimiter where a header line was expected: it starts a new part.
                pos = line_start - 1;
                continue 'delimiters;
            }
            if line.is_empty() {
                if base64
                    && binary
                    && let Some((end, size)) = base64_body(raw, next)
                    && end - next >= min_cut
                {
                    cuts.push(Cut {
                        start: next,
                        end,
                        size,
                    });
                    pos = end - 1;
                } else {
                    pos = next - 1;
                }
                continue 'delimiters;
            }
            if let Some(value) = header_value(line, b"content-transfer-encoding:") {
                base64 = value.eq_ignore_ascii_case(b"base64");
            } else if let Some(value) = header_value(line, b"content-type:") {
                binary = !value.is_empty()
                    && ![&b"text/"[..], b"message/", b"multipart/"]
                        .iter()
                        .any(|t| starts_with_ignore_case(value, t));
            }
            line_start = next;
        }
    }
    cuts
}

/// The value of a header line named `name` (lowercase, with its colon), trimmed.
fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    starts_with_ignore_case(line, name).then(|| line[name.len()..].trim_ascii())
}

fn starts_with_ignore_case(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// The end of the base64 body starting at `start` (the start of the next line beginning with
/// `--`) and its size as mail-parser's `decode_base64_mime` decodes it: 3 bytes a quantum of
/// 4 characters; a padding `=` after 1 or 2 characters of a quantum gives 1 byte, after 3
/// gives 2, and starts a new quantum; CR, LF, space and tab are skipped; an unfinished quantum
/// is dropped. `None` for any other byte in it (where mail-parser may do otherwise) or no
/// `--` line after it.
fn base64_body(raw: &[u8], start: usize) -> Option<(usize, u64)> {
    let rest = &raw[start..];
    let len = if rest.starts_with(b"--") {
        0
    } else {
        memchr::memmem::find(rest, b"\n--")? + 1
    };
    let body = &rest[..len];
    let (mut alphabet, mut pads, mut other) = (0u64, 0u64, 0u64);
    // Counted in runs short enough for byte-wide counters, so the loop vectorizes.
    for run in body.chunks(255) {
        let (mut a, mut p, mut o) = (0u8, 0u8, 0u8);
        for &b in run {
            let is_alphabet = ((b | 0x20).wrapping_sub(b'a') < 26)
                | (b.wrapping_sub(b'0') < 10)
                | (b == b'+')
                | (b == b'/');
            let is_pad = b == b'=';
            let is_space = (b == b'\r') | (b == b'\n') | (b == b' ') | (b == b'\t');
            a += is_alphabet as u8;
            p += is_pad as u8;
            o += !(is_alphabet | is_pad | is_space) as u8;
        }
        alphabet += u64::from(a);
        pads += u64::from(p);
        other += u64::from(o);
    }
    if other != 0 {
        return None;
    }
    let last_alphabet = body
        .iter()
        .rposition(|&b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/');
    let trailing_pads = last_alphabet.map_or(pads, |i| {
        body[i..].iter().filter(|&&b| b == b'=').count() as u64
    });
    let size = if pads == trailing_pads {
        // The usual case: padding, if any, only at the end.
        alphabet / 4 * 3
            + match (pads, alphabet % 4) {
                (0, _) | (_, 0) => 0,
                (_, 3) => 2,
                _ => 1,
            }
    } else {
        decoded_size(body)
    };
    Some((start + len, size))
}

/// The decoded size of base64 `body` (only alphabet, `=` and white space) by mail-parser's
/// rules, character by character: for bodies with padding before their end.
fn decoded_size(body: &[u8]) -> u64 {
    let (mut quantum, mut size) = (0u8, 0u64);
    for &b in body {
        if b == b'=' {
            size += match quantum {
                1 | 2 => 1,
                3 => 2,
                _ => 0,
            };
            quantum = 0;
        } else if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' {
            quantum = (quantum + 1) & 3;
            if quantum == 0 {
                size += 3;
            }
        }
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_fields() {
        let raw = b"Message-ID: <a1@example.test>\r\nFrom: =?UTF-8?Q?J=C3=B6rg?= <joerg@example.test>\r\nTo: a@example.test, b@example.test\r\nSubject: =?UTF-8?B?w5xiZXJ3ZWlzdW5n?=\r\nDate: Tue, 1 Jul 2025 10:00:00 +0200\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHallo\r\n--XX\r\nContent-Type: application/pdf; name=inv.pdf\r\nContent-Disposition: attachment; filename=inv.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--XX--\r\n";
        let p = parse(raw).unwrap();
        assert_eq!(p.message_id.as_deref(), Some("a1@example.test"));
        assert_eq!(p.from, vec!["Jörg <joerg@example.test>"]);
        assert_eq!(p.to.len(), 2);
        assert_eq!(p.subject.as_deref(), Some("Überweisung"));
        assert_eq!(p.date.as_deref(), Some("2025-07-01T10:00:00+02:00"));
        assert_eq!(p.text_body.as_deref().map(str::trim), Some("Hallo"));
        assert_eq!(p.attachments.len(), 1);
        assert_eq!(p.attachments[0].name.as_deref(), Some("inv.pdf"));
        assert_eq!(
            p.attachments[0].content_type.as_deref(),
            Some("application/pdf")
        );
        assert_eq!(p.attachments[0].size, 5);
    }

    #[test]
    fn html_body_is_the_messages_own_html_part_only() {
        let text_only = b"From: a@example.test\r\nSubject: t\r\nContent-Type: text/plain\r\n\r\nplain <words> here\r\n";
        let p = parse(text_only).unwrap();
        assert_eq!(
            p.text_body.as_deref().map(str::trim),
            Some("plain <words> here")
        );
        assert_eq!(p.html_body, None, "no HTML made up from the text");

        let alternative = b"From: a@example.test\r\nContent-Type: multipart/alternative; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhello\r\n--B\r\nContent-Type: text/html\r\n\r\n<p>hello</p>\r\n--B--\r\n";
        let p = parse(alternative).unwrap();
        assert_eq!(p.text_body.as_deref().map(str::trim), Some("hello"));
        assert_eq!(p.html_body.as_deref().map(str::trim), Some("<p>hello</p>"));

        // An HTML-only message keeps its HTML, and gets a text rendering of it.
        let html_only =
            b"From: a@example.test\r\nContent-Type: text/html\r\n\r\n<p>only <b>html</b></p>\r\n";
        let p = parse(html_only).unwrap();
        assert_eq!(
            p.html_body.as_deref().map(str::trim),
            Some("<p>only <b>html</b></p>")
        );
        assert!(
            p.text_body
                .as_deref()
                .is_some_and(|t| t.contains("only html")),
            "{:?}",
            p.text_body
        );
    }

    #[test]
    fn unparseable_input_is_an_error_not_a_panic() {
        assert_eq!(parse(b""), Err(ParseError::NoHeader));
        assert_eq!(parse(b"\r\n"), Err(ParseError::NoHeader));
        // mail-parser itself panics on this nesting of attached messages.
        let nested = b"t\r\nContent-Type: multipart/med; boundary=o\r\n\r\n--o\r\nContent-Type: message/rfc822\r\n\r\nFrom\r\nContent-Type: message/rfc822\r\n\r\n\r\npU\r\n--o--\r\n";
        assert!(std::panic::catch_unwind(|| MessageParser::default().parse(&nested[..])).is_err());
        let err = parse(nested).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("mail-parser failed on it: Invalid part ID"),
            "{err}"
        );
    }

    /// Base64 in lines of `width` characters, CRLF after each.
    fn base64_lines(data: &[u8], width: usize) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        let mut out = String::new();
        for chunk in b64.as_bytes().chunks(width) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push_str("\r\n");
        }
        out
    }

    fn with_attachment(ctype: &str, body: &str) -> Vec<u8> {
        format!(
            "From: a@example.test\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"m\"\r\n\r\n--m\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--m\r\nContent-Type: {ctype}; name=\"f.bin\"\r\nContent-Disposition: attachment; filename=\"f.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{body}--m--\r\n"
        )
        .into_bytes()
    }

    fn noise(len: usize) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8)
            .collect()
    }

    #[test]
    fn an_attachments_base64_body_is_sized_without_decoding_it() {
        // Every padding (length mod 3) and line width, each agreeing with the whole parse.
        for len in [5000, 5001, 5002, 70_000] {
            for width in [76, 64, 73] {
                let data = noise(len);
                let raw = with_attachment("application/pdf", &base64_lines(&data, width));
                let cuts = base64_bodies(&raw, MIN_CUT);
                assert_eq!(cuts.len(), 1, "len {len} width {width}");
                assert_eq!(cuts[0].size, len as u64);
                let cut = parse_cut(&raw, MIN_CUT)
                    .expect("the copy's parse confirms the cut")
                    .unwrap();
                assert_eq!(cut.attachments[0].size, len as u64);
                assert_eq!(Ok(cut), parse_whole(&raw), "len {len} width {width}");
                assert_eq!(parse(&raw), parse_whole(&raw));
            }
        }
    }

    #[test]
    fn padding_inside_a_body_is_counted_as_mail_parser_decodes_it() {
        // Two encodings one after the other, the first padded; then stray and odd padding.
        for tail in ["", "=\r\n", "QQ\r\n=\r\n", "QUJD=\r\n", "Q\r\n"] {
            let body = format!(
                "{}{}{tail}",
                base64_lines(&noise(3001), 76),
                base64_lines(&noise(2002), 76)
            );
            let raw = with_attachment("application/octet-stream", &body);
            assert!(parse_cut(&raw, MIN_CUT).is_some(), "{tail:?}");
            assert_eq!(parse(&raw), parse_whole(&raw), "{tail:?}");
        }
    }

    #[test]
    fn what_is_not_an_attachments_plain_base64_is_parsed_as_it_is() {
        let body = base64_lines(&noise(9000), 76);
        // A base64 text part is decoded into the text body, so it is not cut.
        let text = with_attachment("text/plain; charset=utf-8", &body);
        assert!(base64_bodies(&text, MIN_CUT).is_empty());
        assert_eq!(parse(&text), parse_whole(&text));

        // A character mail-parser would not take as base64: not cut.
        let mut odd = body.clone();
        odd.insert(3000, '*');
        let raw = with_attachment("application/pdf", &odd);
        assert!(base64_bodies(&raw, MIN_CUT).is_empty());
        assert_eq!(parse(&raw), parse_whole(&raw));

        // Something that looks like a part inside a text part: the copy's parse does not
        // confirm the cut, so the message is parsed as it is.
        let fake = format!(
            "From: a@example.test\r\nContent-Type: text/plain\r\n\r\nquoted:\r\n--m\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{body}--m--\r\n"
        );
        assert_eq!(base64_bodies(fake.as_bytes(), MIN_CUT).len(), 1);
        assert!(parse_cut(fake.as_bytes(), MIN_CUT).is_none());
        let parsed = parse(fake.as_bytes()).unwrap();
        assert!(parsed.text_body.unwrap().contains(&body[..200]));
        assert_eq!(parse(fake.as_bytes()), parse_whole(fake.as_bytes()));

        // An attachment inside an attached message: the outer attachment's size is that of
        // the whole inner message, so nothing is cut.
        let inner = String::from_utf8(with_attachment("image/png", &body)).unwrap();
        let nested = format!(
            "From: a@example.test\r\nContent-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\nContent-Type: text/plain\r\n\r\nfwd\r\n--outer\r\nContent-Type: message/rfc822\r\n\r\n{inner}--outer--\r\n"
        );
        assert!(parse_cut(nested.as_bytes(), MIN_CUT).is_none());
        assert_eq!(parse(nested.as_bytes()), parse_whole(nested.as_bytes()));
    }

    #[test]
    fn a_cut_the_parse_does_not_confirm_is_refused() {
        let raw = with_attachment("application/pdf", &base64_lines(&noise(4000), 76));
        let cut = &base64_bodies(&raw, MIN_CUT)[0];
        // The confirmed offset, and one beside it that is no part's body.
        assert!(
            fields(&raw, &[(cut.start as u32, 9)]).is_none(),
            "not a placeholder"
        );
        assert!(fields(&raw, &[(cut.start as u32 + 4, 9)]).is_none());
        assert!(fields(&raw, &[]).is_some());
    }
}
