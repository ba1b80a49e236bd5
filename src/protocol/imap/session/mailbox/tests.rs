//! Mailbox exchanges: SELECT, LIST, UID ranges, FETCH streaming, post-action sequences, IDLE.

use super::super::testing::*;
use super::*;

#[test]
fn select_reads_uidvalidity_uidnext_and_exists() {
    let run = authenticated("").select("Archiv", true);
    assert_eq!(run.during(), "SELECT");
    let (sent, end) = exchange(
        run,
        "* 4 EXISTS\r\n* OK [UIDVALIDITY 77] v\r\n* OK [UIDNEXT 12] n\r\n* 0 RECENT\r\nA0001 OK [READ-ONLY] done\r\n",
    );
    assert_eq!(sent, "A0001 EXAMINE \"Archiv\"\r\n");
    let state = end.unwrap();
    assert_eq!(
        state.mailbox(),
        MailboxStatus {
            uidvalidity: 77,
            uidnext: Some(12),
            exists: 4
        }
    );
    // From a selected state, SELECT replaces the folder.
    let (sent, end) = exchange(
        state.select("INBOX", false),
        "* OK [UIDVALIDITY 3] v\r\nA0002 OK\r\n",
    );
    assert_eq!(sent, "A0002 SELECT INBOX\r\n");
    assert_eq!(
        end.unwrap().mailbox(),
        MailboxStatus {
            uidvalidity: 3,
            uidnext: None,
            exists: 0
        }
    );
}

#[test]
fn a_select_without_uidvalidity_or_refused_leaves_no_folder_selected() {
    let (_, end) = exchange(
        authenticated("").select("Odd", false),
        "* 1 EXISTS\r\nA0001 OK done\r\n",
    );
    let Err(Failure::Refused { error, .. }) = end else {
        panic!("accepted without UIDVALIDITY");
    };
    assert_eq!(
        error,
        ImapError::Protocol(ProtocolError::Malformed(
            "SELECT Odd gave no UIDVALIDITY".into()
        ))
    );
    let (_, end) = exchange(
        selected("IDLE", 1).select("Gone", false),
        "A0001 NO no such folder\r\n",
    );
    let Err(Failure::Refused { state, .. }) = end else {
        panic!("not refused");
    };
    // The state is Authenticated (checked by type) and keeps its capabilities.
    let state: Authenticated = state;
    assert!(state.capabilities().contains("IDLE"));
}

#[test]
fn list_keeps_selectable_matching_folders_in_the_servers_order() {
    let run = list(authenticated(""), "Support/%");
    assert_eq!(run.during(), "LIST");
    let (sent, end) = exchange(
        run,
        concat!(
            "* LIST () \"/\" \"Support/b\"\r\n",
            "* LIST (\\Noselect) \"/\" \"Support/x\"\r\n",
            "* LIST () \"/\" \"Support/a/deep\"\r\n",
            "* LIST () \"/\" \"Other\"\r\n",
            "* LIST () \"/\" \"Support/a\"\r\n",
            "A0001 OK done\r\n"
        ),
    );
    assert_eq!(sent, "A0001 LIST \"\" \"Support/%\"\r\n");
    let (_, names) = end.unwrap();
    assert_eq!(names, ["Support/b", "Support/a"]);
}

#[test]
fn list_inbox_matches_whatever_its_case() {
    let (_, end) = exchange(
        list(selected("", 0), "inbox"),
        "* LIST () \"/\" INBOX\r\n* LIST () \"/\" \"inboxes\"\r\nA0001 OK\r\n",
    );
    let (state, names) = end.unwrap();
    assert_eq!(names, ["INBOX"]);
    assert_eq!(state.mailbox().uidvalidity, 7, "still selected");
    let (_, end) = exchange(
        list(authenticated(""), "Inbox"),
        "* LIST () \"/\" \"Inbox\"\r\n* LIST (\\NonExistent) \"/\" INBOX\r\nA0001 OK\r\n",
    );
    // Any case of INBOX is INBOX; one that cannot be opened is left out.
    assert_eq!(end.unwrap().1, ["INBOX"]);
}

#[test]
fn a_refused_list_keeps_the_state() {
    let (_, end) = exchange(list(authenticated(""), "*"), "A0001 BAD no\r\n");
    assert!(matches!(
        end,
        Err(Failure::Refused {
            error: ImapError::Protocol(ProtocolError::CommandRefused(_)),
            ..
        })
    ));
}

#[test]
fn uids_between_keeps_the_range_sorted_once_each() {
    let run = selected("", 5).uids_between(0, None);
    assert_eq!(run.during(), "UID FETCH");
    let (sent, end) = exchange(
        run,
        concat!(
            "* 3 FETCH (UID 9 RFC822.SIZE 900)\r\n",
            "* 1 FETCH (UID 4 RFC822.SIZE 400)\r\n",
            "* 2 FETCH (UID 4 RFC822.SIZE 400)\r\n",
            "* 4 FETCH (RFC822.SIZE 1)\r\n",
            "* 5 FETCH (UID 11)\r\n",
            "A0001 OK done\r\n"
        ),
    );
    assert_eq!(sent, "A0001 UID FETCH 1:* (UID RFC822.SIZE)\r\n");
    let (state, uids) = end.unwrap();
    assert_eq!(uids, [(4, 400), (9, 900), (11, 0)]);
    assert_eq!(state.mailbox().exists, 5);

    // `n:*` answers with the highest message even below n; an upper bound is kept.
    let (sent, end) = exchange(
        selected("", 5).uids_between(5, Some(10)),
        concat!(
            "* 1 FETCH (UID 4 RFC822.SIZE 1)\r\n",
            "* 2 FETCH (UID 5 RFC822.SIZE 2)\r\n",
            "* 3 FETCH (UID 10 RFC822.SIZE 3)\r\n",
            "* 4 FETCH (UID 11 RFC822.SIZE 4)\r\n",
            "A0001 OK\r\n"
        ),
    );
    assert_eq!(sent, "A0001 UID FETCH 5:10 (UID RFC822.SIZE)\r\n");
    assert_eq!(end.unwrap().1, [(5, 2), (10, 3)]);
}

#[test]
fn last_header_asks_only_when_the_folder_has_mail() {
    let (sent, end) = exchange(selected("", 0).last_header(), "");
    assert_eq!(sent, "");
    assert_eq!(end.unwrap().1, None);
    let (sent, end) = exchange(
        selected("", 2).last_header(),
        concat!(
            "* 2 FETCH (UID 8 BODY[HEADER] {9}\r\nSubject:a)\r\n",
            "* 1 FETCH (UID 3 BODY[HEADER] {9}\r\nSubject:b)\r\n",
            "A0001 OK\r\n"
        ),
    );
    assert_eq!(sent, "A0001 UID FETCH * (UID BODY.PEEK[HEADER])\r\n");
    assert_eq!(end.unwrap().1.as_deref(), Some(&b"Subject:a"[..]));
}

#[test]
fn logout_ends_at_the_bye_or_its_own_completion() {
    let run = logout(selected("", 1));
    assert_eq!(run.during(), "LOGOUT");
    let mut run = run;
    let mut buf = b"* BYE see you\r\nA0001 OK done\r\n".to_vec();
    let p = pump(&mut run, &mut buf);
    assert_eq!((p.sent.as_str(), p.stop), ("A0001 LOGOUT\r\n", Stop::Done));
    assert_eq!(
        buf, b"A0001 OK done\r\n",
        "nothing is waited for after the BYE"
    );
    assert!(run.finish().is_ok());
    let mut run = logout(authenticated(""));
    let mut buf = b"A0009 OK other\r\n* 1 EXISTS\r\n".to_vec();
    assert_eq!(pump(&mut run, &mut buf).stop, Stop::NeedMore);
    buf.extend_from_slice(b"A0001 NO whatever\r\n");
    assert_eq!(pump(&mut run, &mut buf).stop, Stop::Done);
    assert!(run.finish().is_ok());
}

#[test]
fn leaving_the_folder_keeps_the_connection() {
    let state = selected("MOVE", 3);
    let auth = state.into_authenticated();
    assert!(auth.capabilities().contains("MOVE"));
}

#[test]
fn fetch_streams_each_message_with_a_body_and_a_uid() {
    let run = selected("", 3).fetch(&[1, 2, 5]);
    assert_eq!(run.during(), "fetching messages");
    let mut run = run;
    let mut buf = concat!(
        "* 1 FETCH (UID 1 BODY[] {2}\r\nab)\r\n",
        "* 2 FETCH (FLAGS (\\Seen))\r\n",
        "* 3 FETCH (BODY[] {2}\r\ncd)\r\n",
        "* 4 FETCH (UID 5 RFC822.SIZE 2 BODY[] {2}\r\nef)\r\n",
        "A0002 OK other\r\n",
        "A0001 OK done\r\n"
    )
    .as_bytes()
    .to_vec();
    let p = pump(&mut run, &mut buf);
    assert_eq!(
        p.sent,
        "A0001 UID FETCH 1:2,5 (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])\r\n"
    );
    assert_eq!(p.stop, Stop::Done);
    let got: Vec<(Option<u32>, Option<Vec<u8>>)> =
        p.items.into_iter().map(|f| (f.uid, f.body)).collect();
    assert_eq!(
        got,
        [
            (Some(1), Some(b"ab".to_vec())),
            (Some(5), Some(b"ef".to_vec()))
        ]
    );
    assert_eq!(run.finish().unwrap().mailbox().exists, 3);
    let (_, end) = exchange(
        selected("", 3).fetch(&[1]),
        "A0001 NO [UNAVAILABLE] later\r\n",
    );
    assert!(matches!(
        end,
        Err(Failure::Refused {
            error: ImapError::Protocol(ProtocolError::Rejected(_)),
            ..
        })
    ));
}

#[test]
fn keep_or_no_uids_sends_nothing_and_an_unsafe_action_is_refused_unsent() {
    for (action, uids) in [
        (PostAction::Keep, &[1u32][..]),
        (PostAction::Delete, &[][..]),
    ] {
        let run = selected("UIDPLUS MOVE", 1).post_action(action, uids, None);
        assert_eq!(run.during(), "UID STORE");
        let (sent, end) = exchange(run, "");
        assert_eq!(sent, "");
        assert!(end.is_ok(), "{action:?}");
    }
    let (sent, end) = exchange(
        selected("MOVE", 1).post_action(PostAction::Delete, &[1], None),
        "",
    );
    assert_eq!(sent, "");
    assert!(matches!(
        end,
        Err(Failure::Refused {
            error: ImapError::Protocol(ProtocolError::MissingCapability(_)),
            ..
        })
    ));
}

/// Runs a post-ingest action against a server that answers each command with `reply`
/// (its tag filled in), and gives what was sent and how it ended.
fn act(
    caps: &str,
    action: PostAction,
    move_to: Option<&str>,
    reply: impl Fn(&str) -> String,
) -> (
    Vec<String>,
    Vec<&'static str>,
    Result<Selected, Failure<Selected>>,
) {
    let mut run = selected(caps, 5).post_action(action, &[3, 4, 6], move_to);
    let mut buf = Vec::new();
    let mut sent = Vec::new();
    let mut during = Vec::new();
    loop {
        let p = pump(&mut run, &mut buf);
        let progressed = !p.sent.is_empty();
        if progressed {
            during.push(run.during());
            let tag = p.sent.split(' ').next().unwrap().to_string();
            buf.extend_from_slice(reply(&tag).as_bytes());
            sent.push(p.sent);
        }
        if p.stop == Stop::Done {
            return (sent, during, run.finish());
        }
        assert!(progressed, "stalled in {}", run.during());
    }
}

fn ok(tag: &str) -> String {
    format!("* 3 EXPUNGE\r\n{tag} OK done\r\n")
}

#[test]
fn seen_and_delete_are_stores_and_a_uid_expunge() {
    let (sent, during, end) = act("", PostAction::Seen, None, ok);
    assert_eq!(sent, ["A0001 UID STORE 3:4,6 +FLAGS.SILENT (\\Seen)\r\n"]);
    assert_eq!(during, ["UID STORE"]);
    assert!(end.is_ok());
    let (sent, during, end) = act("UIDPLUS", PostAction::Delete, None, ok);
    assert_eq!(
        sent,
        [
            "A0001 UID STORE 3:4,6 +FLAGS.SILENT (\\Deleted)\r\n",
            "A0002 UID EXPUNGE 3:4,6\r\n"
        ]
    );
    assert_eq!(during, ["UID STORE", "UID EXPUNGE"]);
    assert!(end.is_ok());
}

#[test]
fn move_is_create_then_uid_move_when_offered_else_copy_flag_and_expunge() {
    let (sent, during, end) = act("MOVE", PostAction::Move, Some("Done"), ok);
    assert_eq!(
        sent,
        [
            "A0001 CREATE \"Done\"\r\n",
            "A0002 UID MOVE 3:4,6 \"Done\"\r\n"
        ]
    );
    assert_eq!(during, ["CREATE", "UID MOVE"]);
    assert!(end.is_ok());
    let (sent, during, end) = act("UIDPLUS", PostAction::Move, None, ok);
    assert_eq!(
        sent,
        [
            "A0001 CREATE \"Processed\"\r\n",
            "A0002 UID COPY 3:4,6 \"Processed\"\r\n",
            "A0003 UID STORE 3:4,6 +FLAGS.SILENT (\\Deleted)\r\n",
            "A0004 UID EXPUNGE 3:4,6\r\n"
        ]
    );
    assert_eq!(during, ["CREATE", "UID COPY", "UID STORE", "UID EXPUNGE"]);
    assert!(end.is_ok());
}

#[test]
fn a_create_may_find_the_folder_there_but_other_refusals_stop_the_action() {
    let (sent, _, end) = act("MOVE", PostAction::Move, None, |tag| {
        if tag == "A0001" {
            format!("{tag} NO [ALREADYEXISTS] exists\r\n")
        } else {
            ok(tag)
        }
    });
    assert_eq!(sent.len(), 2);
    assert!(end.is_ok());
    let (sent, _, end) = act("MOVE", PostAction::Move, None, |tag| {
        format!("{tag} BAD no\r\n")
    });
    assert_eq!(sent.len(), 1);
    assert!(matches!(
        end,
        Err(Failure::Refused {
            error: ImapError::Protocol(ProtocolError::CommandRefused(_)),
            ..
        })
    ));
    let (sent, _, end) = act("MOVE", PostAction::Move, None, |tag| {
        if tag == "A0001" {
            ok(tag)
        } else {
            format!("{tag} NO [TRYCREATE] no\r\n")
        }
    });
    assert_eq!(sent.len(), 2);
    assert!(matches!(
        end,
        Err(Failure::Refused {
            error: ImapError::Protocol(ProtocolError::Rejected(_)),
            ..
        })
    ));
    let (sent, _, end) = act("", PostAction::Seen, None, |tag| {
        format!("{tag} NO read-only\r\n")
    });
    assert_eq!(sent.len(), 1);
    assert!(end.is_err());
}

/// An IDLE exchange pumped to where it waits.
fn idling() -> (Run<Idle>, Vec<u8>) {
    let mut run = selected("IDLE", 1).idle();
    assert_eq!(run.during(), "starting IDLE");
    let mut buf = Vec::new();
    let p = pump(&mut run, &mut buf);
    assert_eq!(
        (p.sent.as_str(), p.stop),
        ("A0001 IDLE\r\n", Stop::NeedMore)
    );
    buf.extend_from_slice(b"+ idling\r\n");
    assert_eq!(pump(&mut run, &mut buf).stop, Stop::Waiting);
    assert_eq!(run.during(), "in IDLE");
    (run, buf)
}

#[test]
fn idle_waits_until_the_server_reports_new_mail() {
    let (mut run, mut buf) = idling();
    buf.extend_from_slice(b"* OK still here\r\n* 2 RECENT\r\n");
    assert_eq!(pump(&mut run, &mut buf).stop, Stop::Waiting);
    buf.extend_from_slice(b"* 2 EXISTS\r\n");
    let p = pump(&mut run, &mut buf);
    assert_eq!((p.sent.as_str(), p.stop), ("DONE\r\n", Stop::NeedMore));
    assert_eq!(run.during(), "ending IDLE");
    // A late wake changes nothing once DONE is sent.
    run.wake(IdleWake::Stopped);
    buf.extend_from_slice(b"A0001 OK Idle completed\r\n");
    let p = pump(&mut run, &mut buf);
    assert_eq!((p.sent.as_str(), p.stop), ("", Stop::Done));
    let (state, wake) = run.finish().unwrap();
    assert_eq!(wake, IdleWake::NewMail);
    assert_eq!(state.mailbox().exists, 1);
}

#[test]
fn idle_ended_by_the_caller_says_why() {
    for why in [IdleWake::Timeout, IdleWake::Stopped, IdleWake::NewMail] {
        let (mut run, mut buf) = idling();
        run.wake(why);
        let p = pump(&mut run, &mut buf);
        assert_eq!((p.sent.as_str(), p.stop), ("DONE\r\n", Stop::NeedMore));
        buf.extend_from_slice(b"A0001 OK done\r\n");
        assert_eq!(pump(&mut run, &mut buf).stop, Stop::Done);
        assert_eq!(run.finish().unwrap().1, why);
    }
}

#[test]
fn exists_while_ending_idle_is_new_mail_unless_the_caller_stops() {
    let (mut run, mut buf) = idling();
    run.wake(IdleWake::Timeout);
    buf.extend_from_slice(b"* 3 EXISTS\r\nA0001 OK done\r\n");
    let p = pump(&mut run, &mut buf);
    assert_eq!((p.sent.as_str(), p.stop), ("DONE\r\n", Stop::Done));
    assert_eq!(run.finish().unwrap().1, IdleWake::NewMail);
    let (mut run, mut buf) = idling();
    run.wake(IdleWake::Stopped);
    buf.extend_from_slice(b"* 3 EXISTS\r\nA0001 OK done\r\n");
    pump(&mut run, &mut buf);
    assert_eq!(run.finish().unwrap().1, IdleWake::Stopped);
}

#[test]
fn waking_before_idle_is_under_way_does_nothing() {
    let mut run = selected("IDLE", 1).idle();
    run.wake(IdleWake::Stopped);
    let mut buf = Vec::new();
    let p = pump(&mut run, &mut buf);
    assert_eq!(p.sent, "A0001 IDLE\r\n", "no DONE before the continuation");
    buf.extend_from_slice(b"+ idling\r\n");
    assert_eq!(pump(&mut run, &mut buf).stop, Stop::Waiting);
    // Nor after the exchange has ended.
    buf.extend_from_slice(b"A0001 OK server ended it\r\n");
    assert_eq!(pump(&mut run, &mut buf).stop, Stop::Done);
    run.wake(IdleWake::Stopped);
    assert_eq!(pump(&mut run, &mut buf).sent, "");
    assert_eq!(run.during(), "ending IDLE");
    assert_eq!(run.finish().unwrap().1, IdleWake::Timeout);
}

#[test]
fn new_mail_before_the_continuation_ends_idle_at_once() {
    let mut run = selected("IDLE", 1).idle();
    let mut buf = b"* 2 EXISTS\r\n".to_vec();
    let p = pump(&mut run, &mut buf);
    assert_eq!(
        (p.sent.as_str(), p.stop),
        ("A0001 IDLE\r\n", Stop::NeedMore)
    );
    buf.extend_from_slice(b"+ idling\r\n");
    let p = pump(&mut run, &mut buf);
    assert_eq!((p.sent.as_str(), p.stop), ("DONE\r\n", Stop::NeedMore));
    buf.extend_from_slice(b"A0001 OK\r\n");
    pump(&mut run, &mut buf);
    assert_eq!(run.finish().unwrap().1, IdleWake::NewMail);
}

#[test]
fn idle_refused_at_the_start_or_at_the_end_keeps_the_state() {
    let (sent, end) = exchange(selected("", 1).idle(), "A0001 BAD IDLE not supported\r\n");
    assert_eq!(sent, "A0001 IDLE\r\n");
    assert!(matches!(
        end,
        Err(Failure::Refused {
            error: ImapError::Protocol(ProtocolError::CommandRefused(_)),
            ..
        })
    ));
    let (mut run, mut buf) = idling();
    run.wake(IdleWake::Timeout);
    buf.extend_from_slice(b"A0001 NO failed\r\n");
    pump(&mut run, &mut buf);
    assert!(matches!(
        run.finish(),
        Err(Failure::Refused {
            error: ImapError::Protocol(ProtocolError::Rejected(_)),
            ..
        })
    ));
}
