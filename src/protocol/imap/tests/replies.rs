//! Reading what the server says: response codes, statuses, FETCH items, greetings, the
//! lenient reading of lines the parser refuses, and bodies holding NUL bytes.

use super::*;

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
