//! The session's shared rules: BYE and refusal kinds, login refusals, post-action capability
//! checks, and how an exchange ends.

use super::testing::*;
use super::*;

fn caps(list: &str) -> BTreeSet<String> {
    list.split_whitespace().map(str::to_string).collect()
}

#[test]
fn a_bye_is_throttling_an_expired_token_or_a_close() {
    assert_eq!(
        bye("* BYE Request is throttled. Suggested Backoff Time: 300 milliseconds".into()),
        ImapError::Throttled {
            line: "* BYE Request is throttled. Suggested Backoff Time: 300 milliseconds".into(),
            backoff: Duration::from_millis(300),
        }
    );
    assert_eq!(
        bye("* BYE Session invalidated - AccessTokenExpired".into()),
        ImapError::TokenExpired {
            line: "* BYE Session invalidated - AccessTokenExpired".into()
        }
    );
    assert_eq!(
        bye("* BYE shutting down".into()),
        ImapError::Bye {
            line: "* BYE shutting down".into()
        }
    );
}

#[test]
fn a_refused_command_is_rejected_on_no_and_not_accepted_on_bad() {
    assert_eq!(
        refused(Completion::No, "A1 NO no such folder".into()),
        ImapError::Protocol(ProtocolError::Rejected("A1 NO no such folder".into()))
    );
    assert_eq!(
        refused(Completion::Bad, "A1 BAD what".into()),
        ImapError::Protocol(ProtocolError::CommandRefused("A1 BAD what".into()))
    );
    let throttled = "A1 BAD Request is throttled. Suggested Backoff Time: 5 milliseconds";
    assert_eq!(
        refused(Completion::Bad, throttled.into()),
        ImapError::Throttled {
            line: throttled.into(),
            backoff: Duration::from_millis(5)
        }
    );
}

#[test]
fn a_refused_login_tells_unavailable_and_throttled_from_bad_credentials() {
    let throttled = "A1 NO Request is throttled. Suggested Backoff Time: 9 milliseconds";
    assert_eq!(
        login_refused(throttled.into(), Some("x".into())),
        ImapError::Throttled {
            line: throttled.into(),
            backoff: Duration::from_millis(9)
        }
    );
    assert_eq!(
        login_refused("A1 NO [unavailable] try later".into(), None),
        ImapError::Unavailable {
            reply: "A1 NO [unavailable] try later".into()
        }
    );
    assert_eq!(
        login_refused("A1 NO [AUTHENTICATIONFAILED] no".into(), None),
        ImapError::AuthRefused {
            reply: "A1 NO [AUTHENTICATIONFAILED] no".into()
        }
    );
    // The decoded challenge is part of the reply, when there was one.
    assert_eq!(
        login_refused(
            "A1 NO bad token".into(),
            Some("{\"status\":\"401\"}".into())
        ),
        ImapError::AuthRefused {
            reply: "A1 NO bad token (challenge: {\"status\":\"401\"})".into()
        }
    );
    assert_eq!(
        login_refused("A1 NO bad token".into(), Some(String::new())),
        ImapError::AuthRefused {
            reply: "A1 NO bad token".into()
        }
    );
}

#[test]
fn a_failure_gives_its_error_whichever_kind_it_is() {
    let refused: Failure<()> = Failure::Refused {
        state: (),
        error: ImapError::NoStartTls,
    };
    assert_eq!(refused.error(), &ImapError::NoStartTls);
    assert_eq!(refused.into_error(), ImapError::NoStartTls);
    let fatal: Failure<()> = Failure::Fatal(ImapError::Bye { line: "x".into() });
    assert_eq!(fatal.error(), &ImapError::Bye { line: "x".into() });
    assert_eq!(fatal.into_error(), ImapError::Bye { line: "x".into() });
}

#[test]
fn a_steps_debug_shows_the_length_of_what_is_sent_not_the_bytes() {
    let steps: [(Step<Fetched>, &str); 6] = [
        (
            Step::Send(b"A1 LOGIN bob secret\r\n".to_vec()),
            "Send(21 bytes)",
        ),
        (Step::NeedMore { room: None }, "NeedMore { room: None }"),
        (
            Step::NeedMore { room: Some(42) },
            "NeedMore { room: Some(42) }",
        ),
        (Step::Waiting, "Waiting"),
        (Step::Item(Fetched::default()), "Item(..)"),
        (Step::Done, "Done"),
    ];
    for (step, shown) in steps {
        assert_eq!(format!("{step:?}"), shown);
    }
}

#[test]
fn post_actions_are_checked_against_the_capabilities() {
    let none = caps("");
    for action in [PostAction::Keep, PostAction::Seen] {
        assert_eq!(check_post_action(&none, action), Ok(()));
    }
    let missing = |caps: &BTreeSet<String>, action| match check_post_action(caps, action) {
        Err(ImapError::Protocol(ProtocolError::MissingCapability(why))) => why,
        other => panic!("{action:?} with {caps:?}: {other:?}"),
    };
    assert!(missing(&none, PostAction::Delete).contains("UIDPLUS"));
    assert!(missing(&caps("MOVE"), PostAction::Delete).contains("UIDPLUS"));
    assert!(missing(&none, PostAction::Move).contains("neither"));
    assert_eq!(
        check_post_action(&caps("UIDPLUS"), PostAction::Delete),
        Ok(())
    );
    assert_eq!(check_post_action(&caps("MOVE"), PostAction::Move), Ok(()));
    assert_eq!(
        check_post_action(&caps("UIDPLUS"), PostAction::Move),
        Ok(())
    );
    assert_eq!(
        check_post_action(&caps("UIDPLUS MOVE"), PostAction::Move),
        Ok(())
    );
}

#[test]
fn a_core_knows_its_capabilities() {
    let core = core("IMAP4REV1 IDLE");
    assert_eq!(core.capabilities(), &caps("IMAP4REV1 IDLE"));
    assert!(core.has("IDLE") && !core.has("MOVE") && !core.has("idle"));
    assert_eq!(State::core(&core).capabilities(), &caps("IMAP4REV1 IDLE"));
    let mut core = core;
    State::core_mut(&mut core).caps.clear();
    assert!(core.capabilities().is_empty());
    let state = selected("UIDPLUS", 1);
    assert_eq!(state.capabilities(), &caps("UIDPLUS"));
}

#[test]
fn an_exchange_asks_for_more_bytes_until_its_completion_arrives() {
    let mut run = logout(authenticated(""));
    assert_eq!(
        format!("{run:?}"),
        "Run { during: \"LOGOUT\", done: false, .. }"
    );
    let mut buf = Vec::new();
    let p = pump(&mut run, &mut buf);
    assert_eq!(
        (p.sent.as_str(), p.stop),
        ("A0001 LOGOUT\r\n", Stop::NeedMore)
    );
    // Not idling: no bytes is a read, not a wait.
    assert!(matches!(
        run.advance(&mut buf),
        Step::NeedMore { room: None }
    ));
    buf.extend_from_slice(b"* 1 EXISTS\r\nA0001 O");
    assert!(matches!(run.advance(&mut buf), Step::NeedMore { .. }));
    assert_eq!(buf, b"A0001 O", "the complete response was taken out");
    buf.extend_from_slice(b"K bye\r\nleft over");
    assert!(matches!(run.advance(&mut buf), Step::Done));
    assert!(
        matches!(run.advance(&mut buf), Step::Done),
        "done stays done"
    );
    assert_eq!(buf, b"left over", "nothing read past the completion");
    assert_eq!(
        format!("{run:?}"),
        "Run { during: \"LOGOUT\", done: true, .. }"
    );
    assert!(run.finish().is_ok());
}

#[test]
fn while_a_literal_arrives_the_exchange_says_how_long_the_buffer_gets() {
    let mut run = selected("", 1).fetch(&[3]);
    let mut buf = b"* 1 FETCH (UID 3 BODY[] {10}\r\nabc".to_vec();
    let p = pump(&mut run, &mut buf);
    assert_eq!(p.stop, Stop::NeedMore);
    let head = b"* 1 FETCH (UID 3 BODY[] {10}\r\n".len();
    assert!(matches!(
        run.advance(&mut buf),
        Step::NeedMore { room: Some(r) } if r == head + 10
    ));
}

#[test]
fn a_bye_ends_the_session_unless_the_exchange_expects_it() {
    let (sent, end) = exchange(
        authenticated("").select("INBOX", false),
        "* BYE shutting down\r\n",
    );
    assert_eq!(sent, "A0001 SELECT INBOX\r\n");
    assert!(matches!(
        end,
        Err(Failure::Fatal(ImapError::Bye { ref line })) if line == "* BYE shutting down"
    ));
    let (_, end) = exchange(logout(authenticated("")), "* BYE shutting down\r\n");
    assert!(end.is_ok());
}

#[test]
fn a_response_that_cannot_be_framed_or_parsed_is_fatal() {
    let mut state = authenticated("");
    state.core.framer = Framer::new(16, 100);
    let (_, end) = exchange(
        state.select("INBOX", false),
        "* OK this line is far too long\r\n",
    );
    assert!(matches!(
        end,
        Err(Failure::Fatal(ImapError::Protocol(
            ProtocolError::LineTooLong(16)
        )))
    ));
    let (_, end) = exchange(
        authenticated("").select("INBOX", false),
        "* 1 FETCH (UID x BODY[] \r\n",
    );
    assert!(matches!(
        end,
        Err(Failure::Fatal(ImapError::Protocol(
            ProtocolError::Malformed(_)
        )))
    ));
}

#[test]
fn finishing_before_the_end_is_fatal() {
    let run = authenticated("").select("Drafts", false);
    assert_eq!(run.during(), "SELECT");
    assert!(matches!(
        run.finish(),
        Err(Failure::Fatal(ImapError::Protocol(ProtocolError::Malformed(ref m)))) if m == "SELECT did not complete"
    ));
    // Refused: the state comes back, usable.
    let (_, end) = exchange(
        authenticated("IDLE").select("Drafts", false),
        "A0001 NO [NONEXISTENT] no such folder\r\n",
    );
    let Err(Failure::Refused { state, error }) = end else {
        panic!("not refused");
    };
    assert!(state.capabilities().contains("IDLE"));
    assert_eq!(
        error,
        ImapError::Protocol(ProtocolError::Rejected(
            "A0001 NO [NONEXISTENT] no such folder".into()
        ))
    );
}

#[test]
fn capabilities_are_learned_from_untagged_data_and_from_a_completions_code() {
    let mut learned = None;
    learn_caps(&mut learned, &ServerResponse::Exists(1));
    assert_eq!(learned, None);
    learn_caps(
        &mut learned,
        &ServerResponse::Capabilities(caps("IMAP4REV1 IDLE")),
    );
    assert_eq!(learned, Some(caps("IMAP4REV1 IDLE")));
    learn_caps(
        &mut learned,
        &ServerResponse::Tagged {
            tag: "A1".into(),
            completion: Completion::Ok,
            code: Some(ResponseCode::Capabilities(caps("MOVE"))),
            line: String::new(),
        },
    );
    assert_eq!(learned, Some(caps("IMAP4REV1 IDLE MOVE")));
    let mut learned = None;
    learn_caps(
        &mut learned,
        &ServerResponse::Tagged {
            tag: "A1".into(),
            completion: Completion::Ok,
            code: Some(ResponseCode::UidNext(3)),
            line: String::new(),
        },
    );
    assert_eq!(learned, None);
}

#[test]
fn only_the_exchanges_own_tag_completes_it() {
    let ours = ServerResponse::Tagged {
        tag: "A0002".into(),
        completion: Completion::No,
        code: None,
        line: "A0002 NO nope".into(),
    };
    assert_eq!(
        tagged(&ours, "A0002"),
        Some((Completion::No, "A0002 NO nope"))
    );
    assert_eq!(tagged(&ours, "A0001"), None);
    assert_eq!(tagged(&ServerResponse::Exists(2), "A0002"), None);
    // Another command's completion is read past.
    let (_, end) = exchange(
        authenticated("").select("INBOX", false),
        "A0009 NO not yours\r\n* OK [UIDVALIDITY 5] x\r\nA0001 OK done\r\n",
    );
    assert_eq!(end.unwrap().mailbox().uidvalidity, 5);
}
