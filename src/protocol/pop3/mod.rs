//! POP3 client protocol (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH), sans I/O.
//!
//! [`Reader`] pulls replies out of a byte buffer: single-line `+OK`/`-ERR`/`+ ` replies, and
//! multi-line bodies ended by a lone `.` with dot-unstuffing. "Need more bytes" is `Ok(None)`.
//! Commands are plain byte strings from the functions at the bottom. [`session`] is the
//! session itself: its typed states and the exchanges between them, built on these.

use std::collections::BTreeSet;

use super::ProtocolError;

pub mod session;

/// RFC 2449 bounds response lines to 512 octets; real servers (and long UIDs) stay well
/// below 8 KiB, so that is the cap for one line.
pub const MAX_LINE: usize = 8 * 1024;

/// A single-line reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK text`
    Ok(String),
    /// `-ERR text` (may start with a response code such as `[AUTH]` or `[SYS/TEMP]`).
    Err(String),
    /// `+ challenge` (SASL continuation; text may be empty).
    Continue(String),
}

impl Reply {
    /// The reply as the server said it, for error messages.
    pub fn line(&self) -> String {
        match self {
            Reply::Ok(t) => format!("+OK {t}"),
            Reply::Err(t) => format!("-ERR {t}"),
            Reply::Continue(t) => format!("+ {t}"),
        }
    }
}

/// Incremental reader; keeps its scan position across calls so a large RETR body arriving
/// in many reads is scanned once.
#[derive(Debug, Default)]
pub struct Reader {
    /// Offset of the first not-yet-examined line of a multi-line body.
    line_start: usize,
}

fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    memchr::memchr(b'\n', &buf[from..]).map(|p| from + p + 1)
}

fn text_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim_end().to_string()
}

impl Reader {
    /// One single-line reply. Returns it with the number of bytes it took.
    pub fn reply(&mut self, buf: &[u8]) -> Result<Option<(Reply, usize)>, ProtocolError> {
        let Some(end) = line_end(buf, 0) else {
            if buf.len() > MAX_LINE {
                return Err(ProtocolError::LineTooLong(MAX_LINE));
            }
            return Ok(None);
        };
        if end > MAX_LINE {
            return Err(ProtocolError::LineTooLong(MAX_LINE));
        }
        let line = &buf[..end];
        let reply = if let Some(rest) = line.strip_prefix(b"+OK") {
            Reply::Ok(text_of(rest).trim_start().to_string())
        } else if let Some(rest) = line.strip_prefix(b"-ERR") {
            Reply::Err(text_of(rest).trim_start().to_string())
        } else if let Some(rest) = line.strip_prefix(b"+") {
            Reply::Continue(text_of(rest).trim_start().to_string())
        } else {
            return Err(ProtocolError::Malformed(text_of(line)));
        };
        Ok(Some((reply, end)))
    }

    /// The data part of a multi-line reply (after its `+OK` line was consumed with
    /// [`Reader::reply`]), dot-unstuffed, and the number of bytes consumed including the
    /// terminating `.` line. `limit` caps the body size.
    pub fn multiline(
        &mut self,
        buf: &[u8],
        limit: u64,
    ) -> Result<Option<(Vec<u8>, usize)>, ProtocolError> {
        let mut pos = self.line_start;
        while let Some(end) = line_end(buf, pos) {
            let line = &buf[pos..end];
            if line == b".\r\n" || line == b".\n" {
                let body = unstuff(&buf[..pos]);
                self.line_start = 0;
                return Ok(Some((body, end)));
            }
            pos = end;
            if pos as u64 > limit.saturating_add(1024) {
                return Err(ProtocolError::LiteralTooLarge {
                    size: pos as u64,
                    limit,
                });
            }
        }
        if buf.len() - pos > MAX_LINE.max(1 << 20) {
            // A single line over 1 MiB in a message body: no real mail has that; a hostile
            // server is streaming without newlines.
            return Err(ProtocolError::LineTooLong(MAX_LINE.max(1 << 20)));
        }
        self.line_start = pos;
        Ok(None)
    }
}

/// Removes the leading `.` that RFC 1939 §3 adds to lines starting with `.`.
fn unstuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut from = usize::from(data.first() == Some(&b'.'));
    for at in memchr::memmem::find_iter(data, b"\n.") {
        // `at` is the newline; the dot after it goes.
        out.extend_from_slice(&data[from..=at]);
        from = at + 2;
    }
    out.extend_from_slice(&data[from..]);
    out
}

/// Capabilities from a CAPA listing, upper-cased first words plus full lines
/// (`SASL PLAIN XOAUTH2` yields `SASL`, `SASL PLAIN`, `SASL XOAUTH2`).
pub fn parse_capa(listing: &[u8]) -> BTreeSet<String> {
    let mut caps = BTreeSet::new();
    for line in String::from_utf8_lossy(listing).lines() {
        let mut words = line.split_ascii_whitespace();
        let Some(first) = words.next() else { continue };
        let first = first.to_ascii_uppercase();
        for arg in words {
            caps.insert(format!("{first} {}", arg.to_ascii_uppercase()));
        }
        caps.insert(first);
    }
    caps
}

/// `UIDL` listing: `<msg-number> <unique-id>` per line. Unique ids are 1-70 printable
/// characters (0x21-0x7E); anything else is an error, since the id is our exactly-once key.
pub fn parse_uidl(listing: &[u8]) -> Result<Vec<(u32, String)>, ProtocolError> {
    let text = String::from_utf8_lossy(listing);
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_ascii_whitespace();
        let (Some(n), Some(uid), None) = (words.next(), words.next(), words.next()) else {
            return Err(ProtocolError::Malformed(format!("UIDL line: {line}")));
        };
        let n: u32 = n
            .parse()
            .map_err(|_| ProtocolError::Malformed(format!("UIDL line: {line}")))?;
        if uid.is_empty() || uid.len() > 70 || !uid.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ProtocolError::Malformed(format!("UIDL unique-id: {line}")));
        }
        out.push((n, uid.to_string()));
    }
    Ok(out)
}

/// `LIST` listing: `<msg-number> <size>` per line.
pub fn parse_list(listing: &[u8]) -> Result<Vec<(u32, u64)>, ProtocolError> {
    let text = String::from_utf8_lossy(listing);
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut words = line.split_ascii_whitespace();
        let parsed = match (words.next(), words.next()) {
            (Some(n), Some(size)) => n.parse().ok().zip(size.parse().ok()),
            _ => None,
        };
        match parsed {
            Some(pair) => out.push(pair),
            None => return Err(ProtocolError::Malformed(format!("LIST line: {line}"))),
        }
    }
    Ok(out)
}

pub fn capa() -> &'static [u8] {
    b"CAPA\r\n"
}
pub fn stls() -> &'static [u8] {
    b"STLS\r\n"
}
pub fn uidl() -> &'static [u8] {
    b"UIDL\r\n"
}
pub fn list() -> &'static [u8] {
    b"LIST\r\n"
}
pub fn quit() -> &'static [u8] {
    b"QUIT\r\n"
}
pub fn retr(n: u32) -> Vec<u8> {
    format!("RETR {n}\r\n").into_bytes()
}
pub fn dele(n: u32) -> Vec<u8> {
    format!("DELE {n}\r\n").into_bytes()
}
/// `TOP n lines`: the header of message `n` and its first `lines` body lines (RFC 1939 §7).
pub fn top(n: u32, lines: u32) -> Vec<u8> {
    format!("TOP {n} {lines}\r\n").into_bytes()
}
/// `USER name`. `None` when the name holds CR/LF (it would inject a command).
pub fn user(name: &str) -> Option<Vec<u8>> {
    safe(name).then(|| format!("USER {name}\r\n").into_bytes())
}
/// `PASS secret`. `None` when the secret holds CR/LF.
pub fn pass(secret: &str) -> Option<Vec<u8>> {
    safe(secret).then(|| format!("PASS {secret}\r\n").into_bytes())
}
/// `AUTH <mech>` without an initial response: the two-step form Office 365 requires and
/// RFC 5034 mandates for responses over 255 octets (all OAuth2 tokens).
pub fn auth(mechanism: &str) -> Vec<u8> {
    format!("AUTH {mechanism}\r\n").into_bytes()
}
/// A SASL response line (base64) sent after a `+` continuation.
pub fn sasl_line(base64: &str) -> Vec<u8> {
    format!("{base64}\r\n").into_bytes()
}

fn safe(s: &str) -> bool {
    !s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_replies() {
        let mut r = Reader::default();
        assert_eq!(
            r.reply(b"+OK Dovecot ready.\r\n").unwrap().unwrap().0,
            Reply::Ok("Dovecot ready.".into())
        );
        assert_eq!(
            r.reply(b"-ERR [AUTH] Authentication failed.\r\nextra")
                .unwrap()
                .unwrap(),
            (Reply::Err("[AUTH] Authentication failed.".into()), 36)
        );
        assert_eq!(
            r.reply(b"+ \r\n").unwrap().unwrap().0,
            Reply::Continue(String::new())
        );
        assert_eq!(r.reply(b"+OK partial").unwrap(), None);
        assert!(r.reply(b"HELLO\r\n").is_err());
    }

    #[test]
    fn unstuffing_removes_exactly_the_dot_after_each_line_start() {
        fn by_byte(data: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            let mut at_line_start = true;
            for &b in data {
                if !(at_line_start && b == b'.') {
                    out.push(b);
                }
                at_line_start = b == b'\n';
            }
            out
        }
        for data in [
            &b""[..],
            b".",
            b"..",
            b".a\r\n..b\r\n.\r\n",
            b"\n.\n.\n..\n",
            b"x\r\n.",
            b"no dots\r\nhere.\r\n",
        ] {
            assert_eq!(
                unstuff(data),
                by_byte(data),
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn multiline_unstuffs_and_stops_at_terminator() {
        let wire = b"Subject: x\r\n\r\n..leading dot\r\n.\r\n";
        for chunk in [1, 2, 5, 100] {
            let mut r = Reader::default();
            let mut buf = Vec::new();
            let mut got = None;
            for piece in wire.chunks(chunk) {
                buf.extend_from_slice(piece);
                if let Some(done) = r.multiline(&buf, 1000).unwrap() {
                    got = Some(done);
                    break;
                }
            }
            let (body, used) = got.unwrap();
            assert_eq!(body, b"Subject: x\r\n\r\n.leading dot\r\n");
            assert_eq!(used, wire.len());
        }
    }

    #[test]
    fn multiline_size_cap() {
        let mut r = Reader::default();
        let big = vec![b"0123456789\r\n".as_slice(); 200].concat();
        assert!(r.multiline(&big, 100).is_err());
    }

    #[test]
    fn listings() {
        let caps = parse_capa(b"TOP\r\nUIDL\r\nSASL PLAIN XOAUTH2\r\nSTLS\r\n");
        assert!(caps.contains("SASL XOAUTH2") && caps.contains("STLS") && caps.contains("UIDL"));
        assert_eq!(
            parse_uidl(b"1 whqtswO00WBw418f9t5JxYwZ\r\n2 QhdPYR:00WBw1Ph7x7\r\n").unwrap(),
            vec![
                (1, "whqtswO00WBw418f9t5JxYwZ".into()),
                (2, "QhdPYR:00WBw1Ph7x7".into())
            ]
        );
        assert!(parse_uidl(b"1 has space extra\r\n").is_err());
        assert!(parse_uidl(format!("1 {}\r\n", "x".repeat(71)).as_bytes()).is_err());
        assert_eq!(
            parse_list(b"1 120\r\n2 200\r\n").unwrap(),
            vec![(1, 120), (2, 200)]
        );
    }

    /// A reply line of exactly `len` bytes including CRLF.
    fn ok_line(len: usize) -> Vec<u8> {
        let mut line = b"+OK ".to_vec();
        line.resize(len - 2, b'x');
        line.extend_from_slice(b"\r\n");
        line
    }

    #[test]
    fn line_cap_is_8_kib_including_crlf() {
        assert_eq!(MAX_LINE, 8192);
        let mut r = Reader::default();
        let at_cap = ok_line(MAX_LINE);
        let (reply, used) = r.reply(&at_cap).unwrap().unwrap();
        assert_eq!(used, MAX_LINE);
        assert_eq!(reply, Reply::Ok("x".repeat(MAX_LINE - 6)));
        assert_eq!(
            r.reply(&ok_line(MAX_LINE + 1)),
            Err(ProtocolError::LineTooLong(MAX_LINE))
        );
    }

    #[test]
    fn unterminated_line_waits_up_to_the_cap_then_fails() {
        let mut r = Reader::default();
        let partial = vec![b'+'; MAX_LINE];
        assert_eq!(r.reply(&partial), Ok(None));
        let over = vec![b'+'; MAX_LINE + 1];
        assert_eq!(r.reply(&over), Err(ProtocolError::LineTooLong(MAX_LINE)));
    }

    #[test]
    fn reply_takes_only_the_first_line() {
        let mut r = Reader::default();
        let buf = b"+OK 2 messages\r\n+OK next\r\n";
        assert_eq!(
            r.reply(buf).unwrap().unwrap(),
            (Reply::Ok("2 messages".into()), 16)
        );
        assert_eq!(
            r.reply(&buf[16..]).unwrap().unwrap(),
            (Reply::Ok("next".into()), 10)
        );
        // A bare LF ends a line too, and the text keeps its inner spaces.
        assert_eq!(
            r.reply(b"+  dGVzdA== \n").unwrap().unwrap(),
            (Reply::Continue("dGVzdA==".into()), 13)
        );
        assert_eq!(
            r.reply(b"+OK\r\n").unwrap().unwrap(),
            (Reply::Ok(String::new()), 5)
        );
        assert_eq!(
            r.reply(b"OK fine\r\n"),
            Err(ProtocolError::Malformed("OK fine".into()))
        );
    }

    #[test]
    fn reply_line_restores_the_server_words() {
        assert_eq!(Reply::Ok("done".into()).line(), "+OK done");
        assert_eq!(
            Reply::Err("[SYS/TEMP] try later".into()).line(),
            "-ERR [SYS/TEMP] try later"
        );
        assert_eq!(Reply::Continue("e30=".into()).line(), "+ e30=");
    }

    #[test]
    fn multiline_accepts_a_bare_lf_terminator() {
        let mut r = Reader::default();
        assert_eq!(
            r.multiline(b"a\n..b\n.\nnext", 100).unwrap().unwrap(),
            (b"a\n.b\n".to_vec(), 8)
        );
        // A line that only starts with a dot is data, not the end.
        assert_eq!(r.multiline(b".x\r\n", 100), Ok(None));
    }

    #[test]
    fn multiline_reader_is_reusable_after_a_body() {
        let mut r = Reader::default();
        let first = b"one\r\ntwo\r\n.\r\n";
        assert_eq!(
            r.multiline(first, 100).unwrap().unwrap(),
            (b"one\r\ntwo\r\n".to_vec(), first.len())
        );
        let second = b"3\r\n.\r\n";
        assert_eq!(
            r.multiline(second, 100).unwrap().unwrap(),
            (b"3\r\n".to_vec(), second.len())
        );
        // An empty body is just the terminator.
        assert_eq!(
            r.multiline(b".\r\n", 100).unwrap().unwrap(),
            (Vec::new(), 3)
        );
    }

    #[test]
    fn multiline_cap_allows_1_kib_over_the_limit_for_stuffing() {
        let limit = 4096u64;
        let allowed = usize::try_from(limit).unwrap() + 1024;
        let body_of = |len: usize| {
            let mut body = vec![b'a'; len - 2];
            body.extend_from_slice(b"\r\n");
            body
        };
        let mut wire = body_of(allowed);
        wire.extend_from_slice(b".\r\n");
        let mut r = Reader::default();
        let (body, used) = r.multiline(&wire, limit).unwrap().unwrap();
        assert_eq!((body.len(), used), (allowed, allowed + 3));

        let mut wire = body_of(allowed + 1);
        wire.extend_from_slice(b".\r\n");
        let mut r = Reader::default();
        assert_eq!(
            r.multiline(&wire, limit),
            Err(ProtocolError::LiteralTooLarge {
                size: allowed as u64 + 1,
                limit
            })
        );
    }

    #[test]
    fn multiline_refuses_a_line_over_1_mib() {
        const GUARD: usize = 1 << 20;
        // A short line first, so the guard is measured from the start of the open line.
        let mut buf = b"ok\r\n".to_vec();
        buf.resize(4 + GUARD, b'x');
        let mut r = Reader::default();
        assert_eq!(r.multiline(&buf, u64::MAX), Ok(None));
        buf.push(b'x');
        let mut r = Reader::default();
        assert_eq!(
            r.multiline(&buf, u64::MAX),
            Err(ProtocolError::LineTooLong(GUARD))
        );
    }

    #[test]
    fn capa_lists_first_words_and_each_argument() {
        let caps = parse_capa(b"top\r\n\r\nSASL plain XOAUTH2\r\nLOGIN-DELAY 300\r\n");
        let want: BTreeSet<String> = [
            "TOP",
            "SASL",
            "SASL PLAIN",
            "SASL XOAUTH2",
            "LOGIN-DELAY",
            "LOGIN-DELAY 300",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(caps, want);
    }

    #[test]
    fn uidl_unique_ids_follow_rfc_1939() {
        // The longest valid id is 70 characters; every printable ASCII character counts.
        let longest = "x".repeat(70);
        assert_eq!(
            parse_uidl(format!("7 {longest}\r\n").as_bytes()).unwrap(),
            vec![(7, longest)]
        );
        let printable: String = (0x21u8..=0x7e).map(char::from).take(70).collect();
        assert_eq!(
            parse_uidl(format!("1 {printable}\n\r\n").as_bytes()).unwrap(),
            vec![(1, printable)]
        );
        assert_eq!(parse_uidl(b"").unwrap(), Vec::new());
        for bad in [
            &b"1 abc\x7f\r\n"[..],
            b"1 caf\xc3\xa9\r\n",
            b"1\r\n",
            b"x abc\r\n",
            b"-1 abc\r\n",
        ] {
            assert!(
                matches!(parse_uidl(bad), Err(ProtocolError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn list_needs_number_and_size() {
        assert_eq!(
            parse_list(b"1 120\r\n\r\n2 5000000000\r\n").unwrap(),
            vec![(1, 120), (2, 5_000_000_000)]
        );
        for bad in [&b"1\r\n"[..], b"1 big\r\n", b"one 12\r\n"] {
            assert_eq!(
                parse_list(bad),
                Err(ProtocolError::Malformed(format!(
                    "LIST line: {}",
                    String::from_utf8_lossy(bad).trim_end()
                )))
            );
        }
    }

    #[test]
    fn command_bytes() {
        assert_eq!(capa(), b"CAPA\r\n");
        assert_eq!(stls(), b"STLS\r\n");
        assert_eq!(uidl(), b"UIDL\r\n");
        assert_eq!(list(), b"LIST\r\n");
        assert_eq!(quit(), b"QUIT\r\n");
        assert_eq!(retr(4_294_967_295), b"RETR 4294967295\r\n");
        assert_eq!(dele(1), b"DELE 1\r\n");
        assert_eq!(top(12, 0), b"TOP 12 0\r\n");
        assert_eq!(
            user("bob@example.com").unwrap(),
            b"USER bob@example.com\r\n"
        );
        assert_eq!(pass("p w").unwrap(), b"PASS p w\r\n");
        assert_eq!(auth("OAUTHBEARER"), b"AUTH OAUTHBEARER\r\n");
        assert_eq!(sasl_line("AQ=="), b"AQ==\r\n");
        assert_eq!(sasl_line(""), b"\r\n");
    }

    #[test]
    fn commands_refuse_injection() {
        for bad in ["a\rb", "a\nb", "a\0b"] {
            assert!(user(bad).is_none(), "{bad:?}");
            assert!(pass(bad).is_none(), "{bad:?}");
        }
        assert!(user("a\r\nDELE 1").is_none());
        assert!(pass("x\ny").is_none());
        assert_eq!(auth("XOAUTH2"), b"AUTH XOAUTH2\r\n");
        assert_eq!(retr(3), b"RETR 3\r\n");
    }
}
