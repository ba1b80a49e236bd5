//! The framer and the parser: frames whatever the read size, the caps at their boundaries,
//! literals, and the zero-copy body.

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
    let r = parse_response(b"A0002 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n").unwrap();
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

mod replies;
