//! The transaction state's commands, the pipelined RETRs, QUIT, and exchanges cut short.

use super::*;

#[test]
fn uidl_list_top_and_dele_send_their_commands_and_read_their_answers() {
    let (sent, end) = exchange(
        transaction("").uidl(),
        "+OK\r\n1 whqtswO00WBw418f9t5JxYwZ\r\n2 QhdPYR:00WBw1Ph7x7\r\n.\r\n",
    );
    assert_eq!(sent, "UIDL\r\n");
    assert_eq!(
        end.unwrap().1,
        vec![
            (1, "whqtswO00WBw418f9t5JxYwZ".to_string()),
            (2, "QhdPYR:00WBw1Ph7x7".to_string())
        ]
    );

    let (sent, end) = exchange(
        transaction("").list(),
        "+OK 2 messages (320 octets)\r\n1 120\r\n2 200\r\n.\r\n",
    );
    assert_eq!(sent, "LIST\r\n");
    assert_eq!(end.unwrap().1, vec![(1, 120), (2, 200)]);

    let (sent, end) = exchange(
        transaction("").top_header(7),
        "+OK\r\nSubject: hi\r\n..dots\r\n\r\n.\r\n",
    );
    assert_eq!(sent, "TOP 7 0\r\n");
    assert_eq!(end.unwrap().1, b"Subject: hi\r\n.dots\r\n\r\n");

    // DELE's answer is one line: what follows it is the next reply.
    let mut run = transaction("").dele(3);
    let mut buf = Vec::new();
    let pumped = pump(
        &mut run,
        &mut buf,
        b"+OK message 3 deleted\r\n+OK next\r\n",
        1,
    );
    assert!(pumped.done);
    assert_eq!(pumped.sent(), "DELE 3\r\n");
    assert_eq!(buf, b"+OK next\r\n");
    assert!(run.finish().is_ok());
}

#[test]
fn listings_of_a_large_maildrop_are_read() {
    // 100 000 messages: listings of several MiB, far over what a reply line or CAPA may be.
    let mut uidl = b"+OK\r\n".to_vec();
    let mut list = b"+OK\r\n".to_vec();
    for n in 1..=100_000u32 {
        uidl.extend_from_slice(format!("{n} 0000{n:08x}6b169822\r\n").as_bytes());
        list.extend_from_slice(format!("{n} 123456\r\n").as_bytes());
    }
    uidl.extend_from_slice(b".\r\n");
    list.extend_from_slice(b".\r\n");
    assert!(uidl.len() > 2 << 20);

    let mut run = transaction("").uidl();
    let mut buf = Vec::new();
    assert!(pump(&mut run, &mut buf, &uidl, usize::MAX).done);
    let (_, found) = run.finish().unwrap();
    assert_eq!(found.len(), 100_000);
    assert_eq!(found[99_999], (100_000, "0000000186a06b169822".into()));

    let mut run = transaction("").list();
    assert!(pump(&mut run, &mut buf, &list, usize::MAX).done);
    let (_, found) = run.finish().unwrap();
    assert_eq!(found.len(), 100_000);
    assert_eq!(found[0], (1, 123_456));
}

#[test]
fn a_header_may_have_1_mib_and_no_more() {
    // Lines of 64 bytes.
    let line = format!("X-Header: {}\r\n", "h".repeat(52));
    let header_of = |len: usize| {
        let mut server = b"+OK\r\n".to_vec();
        server.extend_from_slice(line.repeat(len / 64).as_bytes());
        server.extend_from_slice(b".\r\n");
        server
    };
    let mut buf = Vec::new();
    let mut run = transaction("").top_header(1);
    assert!(pump(&mut run, &mut buf, &header_of(1 << 20), usize::MAX).done);
    assert_eq!(run.finish().unwrap().1.len(), 1 << 20);

    let mut run = transaction("").top_header(1);
    assert!(pump(&mut run, &mut buf, &header_of((1 << 20) + 1100), usize::MAX).done);
    assert!(matches!(
        run.finish(),
        Err(Failure::Fatal(Pop3Error::Protocol(
            ProtocolError::LiteralTooLarge { limit, .. }
        ))) if limit == 1 << 20
    ));
}

#[test]
fn err_to_a_transaction_command_is_refused_and_the_state_stays_usable() {
    type Refusal = Result<Transaction, Failure<Transaction>>;
    type Case = (&'static str, fn(Transaction, &str) -> Refusal);
    let err = "-ERR not now\r\n";
    let cases: [Case; 4] = [
        ("UIDL", |t, s| exchange(t.uidl(), s).1.map(|(t, _)| t)),
        ("LIST", |t, s| exchange(t.list(), s).1.map(|(t, _)| t)),
        ("TOP", |t, s| exchange(t.top_header(1), s).1.map(|(t, _)| t)),
        ("DELE", |t, s| exchange(t.dele(1), s).1.map(|(t, _)| t)),
    ];
    for (name, run) in cases {
        let Err(Failure::Refused { state, error }) = run(transaction("UIDL\r\n"), err) else {
            panic!("{name}: not a refusal");
        };
        assert_eq!(error, rejected("-ERR not now"), "{name}");
        assert_eq!(error.to_string(), "server refused: -ERR not now", "{name}");
        assert_eq!(state.capabilities(), &caps(&["UIDL"]), "{name}");
        let (sent, end) = exchange(state.dele(2), "+OK\r\n");
        assert_eq!(sent, "DELE 2\r\n");
        assert!(end.is_ok(), "{name}: the state was not usable after");
    }
}

#[test]
fn each_command_names_itself_for_a_timeout() {
    assert_eq!(transaction("").uidl().during(), "UIDL");
    assert_eq!(transaction("").list().during(), "LIST");
    assert_eq!(transaction("").top_header(1).during(), "TOP");
    assert_eq!(transaction("").dele(1).during(), "DELE");
    assert_eq!(transaction("").retrieve(&[], 1).during(), "RETR");
    assert_eq!(quit(transaction("")).during(), "QUIT");
}

#[test]
fn a_throttled_reply_carries_the_suggested_backoff() {
    let line = "-ERR Request is throttled. Suggested Backoff Time: 2500 milliseconds";
    let (_, end) = exchange(transaction("").uidl(), &format!("{line}\r\n"));
    let Err(Failure::Refused { error, .. }) = end else {
        panic!("not refused");
    };
    assert_eq!(
        error,
        Pop3Error::Throttled {
            line: line.into(),
            backoff: Duration::from_millis(2500)
        }
    );
}

#[test]
fn a_unique_id_of_70_characters_is_accepted_and_one_of_71_refused() {
    let longest = "x".repeat(70);
    let (_, end) = exchange(
        transaction("").uidl(),
        &format!("+OK\r\n1 {longest}\r\n.\r\n"),
    );
    assert_eq!(end.unwrap().1, vec![(1, longest)]);

    let over = "x".repeat(71);
    let (_, end) = exchange(transaction("").uidl(), &format!("+OK\r\n1 {over}\r\n.\r\n"));
    // Read to its end, so the session can go on; the listing is not used.
    let Err(Failure::Refused { error, .. }) = end else {
        panic!("a 71-character unique id was accepted");
    };
    assert_eq!(
        error,
        ProtocolError::Malformed(format!("UIDL unique-id: 1 {over}")).into()
    );
}

#[test]
fn a_multiline_reply_split_at_any_place_reads_the_same() {
    let server = b"+OK 2 messages\r\n1 AAQkADExMjM0\r\n2 AAQkADExMjM1\r\n.\r\n+OK\r\n";
    for chunk in 1..=server.len() {
        let mut run = transaction("").uidl();
        let mut buf = Vec::new();
        let pumped = pump(&mut run, &mut buf, server, chunk);
        assert!(pumped.done, "chunk {chunk}");
        assert_eq!(buf, b"+OK\r\n", "chunk {chunk}");
        assert!(pumped.rooms.iter().all(Option::is_none), "chunk {chunk}");
        let (_, uidl) = run.finish().unwrap();
        assert_eq!(
            uidl,
            vec![(1, "AAQkADExMjM0".into()), (2, "AAQkADExMjM1".into())],
            "chunk {chunk}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// RETR

const MESSAGE: &[u8] = b"+OK 30 octets\r\nSubject: a\r\n\r\n..dot\r\nbody\r\n.\r\n";
const UNSTUFFED: &[u8] = b"Subject: a\r\n\r\n.dot\r\nbody\r\n";

#[test]
fn retrs_are_pipelined_only_when_the_server_announces_it() {
    let messages = [(1, 30), (2, 30), (3, 30)];
    let replies = MESSAGE.repeat(3);

    let mut run = transaction("PIPELINING\r\n").retrieve(&messages, 1000);
    let mut buf = Vec::new();
    assert_eq!(
        run.advance(&mut buf).sent(),
        "RETR 1\r\nRETR 2\r\nRETR 3\r\n"
    );
    let pumped = pump(&mut run, &mut buf, &replies, 7);
    assert!(pumped.done && pumped.sent.is_empty());
    assert_eq!(pumped.items, vec![UNSTUFFED.to_vec(); 3]);
    assert!(run.finish().is_ok());

    // Without PIPELINING each RETR waits for the reply before it.
    let mut run = transaction("").retrieve(&messages, 1000);
    let mut buf = Vec::new();
    let mut order = Vec::new();
    let mut input: &[u8] = &replies;
    loop {
        match run.advance(&mut buf) {
            Step::Send(bytes) => order.push(String::from_utf8(bytes).unwrap()),
            Step::NeedMore { .. } => {
                buf.push(input[0]);
                input = &input[1..];
            }
            Step::Item(body) => order.push(format!("{} bytes", body.len())),
            Step::Done => break,
        }
    }
    assert_eq!(
        order,
        [
            "RETR 1\r\n",
            "26 bytes",
            "RETR 2\r\n",
            "26 bytes",
            "RETR 3\r\n",
            "26 bytes"
        ]
    );
    assert!(run.finish().is_ok());
}

trait SentText {
    fn sent(self) -> String;
}

impl<I> SentText for Step<I> {
    fn sent(self) -> String {
        match self {
            Step::Send(bytes) => String::from_utf8(bytes).unwrap(),
            other => panic!("expected bytes to send, got {other:?}"),
        }
    }
}

#[test]
fn more_messages_can_be_asked_for_while_replies_are_read() {
    let mut run = transaction("PIPELINING\r\n").retrieve(&[(1, 30), (2, 30)], 1000);
    let mut buf = Vec::new();
    // Sent without reading anything: the caller pipelines before it waits.
    buf.extend_from_slice(MESSAGE);
    assert_eq!(run.to_send().unwrap(), b"RETR 1\r\nRETR 2\r\n");
    assert_eq!(run.to_send(), None);
    assert_eq!(buf, MESSAGE);
    assert!(matches!(run.advance(&mut buf), Step::Item(_)));
    run.request(&[(5, 30)]);
    assert_eq!(run.advance(&mut buf).sent(), "RETR 5\r\n");
    let pumped = pump(&mut run, &mut buf, &MESSAGE.repeat(2), usize::MAX);
    assert_eq!(pumped.items.len(), 2);
    assert!(pumped.done);
    // Done for now; asking again goes on with the same exchange.
    run.request(&[(6, 30)]);
    let pumped = pump(&mut run, &mut buf, MESSAGE, 3);
    assert_eq!(
        (pumped.sent(), pumped.items.len()),
        ("RETR 6\r\n".into(), 1)
    );
    assert!(run.finish().is_ok());
}

#[test]
fn a_message_gets_room_for_its_listed_size_once_its_ok_is_read() {
    let mut run = transaction("").retrieve(&[(1, 64_000)], 1 << 20);
    let mut buf = Vec::new();
    let pumped = pump(&mut run, &mut buf, b"+OK\r\nSubject: x\r\n", 5);
    // Before the status line: none; then the size with room for dot-stuffing.
    assert_eq!(pumped.rooms[0], None);
    assert_eq!(
        pumped.rooms.last(),
        Some(&Some(64_000 + 64_000 / 64 + 1024))
    );
    assert_eq!(expected_len(10_000, 1000), 1000 + 10_000 / 64 + 1024);
    assert_eq!(expected_len(u64::MAX, u64::MAX), u64::MAX);
}

#[test]
fn a_message_over_the_limit_is_fatal() {
    let mut server = b"+OK\r\n".to_vec();
    server.extend_from_slice(&b"0123456789abcd\r\n".repeat(200));
    server.extend_from_slice(b".\r\n");
    let mut run = transaction("").retrieve(&[(1, 100)], 1000);
    let mut buf = Vec::new();
    let pumped = pump(&mut run, &mut buf, &server, 64);
    assert!(pumped.done && pumped.items.is_empty());
    assert!(matches!(
        run.finish(),
        Err(Failure::Fatal(Pop3Error::Protocol(
            ProtocolError::LiteralTooLarge { limit: 1000, .. }
        )))
    ));
}

#[test]
fn a_refused_retr_is_fatal_while_later_replies_are_on_their_way() {
    let mut run = transaction("PIPELINING\r\n").retrieve(&[(1, 30), (2, 30)], 1000);
    let mut buf = Vec::new();
    let pumped = pump(&mut run, &mut buf, b"-ERR no such message\r\n", 1);
    assert!(pumped.done);
    assert!(matches!(
        run.finish(),
        Err(Failure::Fatal(e)) if e == rejected("-ERR no such message")
    ));

    // The last one asked for: the session is in step, the state comes back.
    let mut run = transaction("PIPELINING\r\n").retrieve(&[(1, 30), (2, 30)], 1000);
    let mut server = MESSAGE.to_vec();
    server.extend_from_slice(b"-ERR no such message\r\n");
    let pumped = pump(&mut run, &mut buf, &server, 1);
    assert!(pumped.done && pumped.items.len() == 1);
    run.request(&[(3, 30)]);
    assert_eq!(run.to_send(), None, "asked for more after a failure");
    let Err(Failure::Refused { state, error }) = run.finish() else {
        panic!("not refused");
    };
    assert_eq!(error, rejected("-ERR no such message"));
    assert!(state.pipelining());

    // Without PIPELINING nothing else is in flight: refused, and what was not sent is not.
    let mut run = transaction("").retrieve(&[(1, 30), (2, 30)], 1000);
    let pumped = pump(&mut run, &mut buf, b"-ERR gone\r\n", usize::MAX);
    assert_eq!(pumped.sent(), "RETR 1\r\n");
    assert!(matches!(run.finish(), Err(Failure::Refused { .. })));
}

#[test]
fn retrieving_nothing_is_done_at_once() {
    let mut run = transaction("").retrieve(&[], 1000);
    let mut buf = Vec::new();
    assert!(matches!(run.advance(&mut buf), Step::Done));
    assert!(run.finish().is_ok());
}

// ---------------------------------------------------------------------------------------
// QUIT, and exchanges cut short

#[test]
fn quit_is_closed_on_ok_and_fatal_otherwise() {
    let (sent, end) = exchange(quit(transaction("")), "+OK Logging out.\r\n");
    assert_eq!(sent, "QUIT\r\n");
    assert_eq!(end.unwrap(), Closed);
    let (sent, end) = exchange(quit(authorization("")), "+OK bye\r\n");
    assert_eq!(sent, "QUIT\r\n");
    assert!(end.is_ok());
    let (_, end) = exchange(
        quit(transaction("")),
        "-ERR some deleted messages not removed\r\n",
    );
    assert!(matches!(
        end,
        Err(Failure::Fatal(e)) if e == rejected("-ERR some deleted messages not removed")
    ));
}

#[test]
fn an_exchange_finished_before_it_is_done_is_fatal() {
    let mut run = transaction("").uidl();
    let mut buf = Vec::new();
    let pumped = pump(&mut run, &mut buf, b"+OK\r\n1 a\r\n", 3);
    assert!(!pumped.done);
    let Err(Failure::Fatal(error)) = run.finish() else {
        panic!("a half-read listing finished");
    };
    assert_eq!(
        error,
        ProtocolError::Malformed("UIDL did not complete".into()).into()
    );

    // A command never sent does not complete either.
    let run = transaction("").dele(1);
    assert!(matches!(run.finish(), Err(Failure::Fatal(_))));
    // Nor does a retrieval with a reply awaited.
    let mut run = transaction("").retrieve(&[(1, 1)], 10);
    assert!(run.to_send().is_some());
    assert!(matches!(run.finish(), Err(Failure::Fatal(_))));
}

#[test]
fn failures_hand_back_their_error() {
    let refused = Failure::Refused {
        state: (),
        error: Pop3Error::NoStls,
    };
    assert_eq!(refused.error(), &Pop3Error::NoStls);
    let fatal: Failure<()> = Failure::Fatal(Pop3Error::NoStls);
    assert_eq!(fatal.error(), &Pop3Error::NoStls);
    assert_eq!(fatal.into_error(), Pop3Error::NoStls);
}

#[test]
fn debug_output_shows_lengths_and_phases_only() {
    assert_eq!(
        format!("{:?}", Step::<()>::Send(b"PASS x\r\n".to_vec())),
        "Send(8 bytes)"
    );
    assert_eq!(
        format!("{:?}", Step::<()>::NeedMore { room: Some(3) }),
        "NeedMore { room: Some(3) }"
    );
    assert_eq!(format!("{:?}", Step::Item(1)), "Item(..)");
    assert_eq!(format!("{:?}", Step::<()>::Done), "Done");
    let run = transaction("").uidl();
    assert_eq!(
        format!("{run:?}"),
        "Run { during: \"UIDL\", done: false, .. }"
    );
}
