//! The guarantees of [`IngestStore`] and [`TokenStore`], checked through the traits only,
//! so that any backend can be held to them: each check is generic over the store and gets
//! a fresh, empty one from its caller. Run here for the sled [`Store`].

use std::sync::Arc;

use super::super::{
    Checkpoint, EventKind, IngestStore, Location, NewMessage, StoreOutcome, StoredToken,
    TokenStore, event_id,
};
use super::{bound, store};

fn imap(source: &str, uid: u32, uidvalidity: u32, raw: &str) -> NewMessage {
    NewMessage {
        source: source.into(),
        location: Location::Imap {
            folder: "INBOX".into(),
            uidvalidity,
            uid,
        },
        raw: raw.as_bytes().to_vec(),
        internal_date: None,
        parsed: crate::parse::parse(raw.as_bytes()),
        post_action: false,
        rematch: false,
    }
}

fn pop3(source: &str, uidl: &str) -> NewMessage {
    NewMessage {
        location: Location::Pop3 { uidl: uidl.into() },
        ..imap(source, 0, 0, &format!("Subject: {uidl}\r\n\r\nx\r\n"))
    }
}

/// Prepares and commits `msgs` as one batch, each moving its checkpoint.
fn commit<S: IngestStore>(s: &S, msgs: Vec<NewMessage>) -> Vec<StoreOutcome> {
    let prepared = s
        .prepare_batch(msgs.into_iter().map(|m| (m, true)).collect())
        .unwrap();
    s.commit_batch(&prepared).unwrap()
}

fn stored(outcome: &StoreOutcome) -> u64 {
    match outcome {
        StoreOutcome::Stored(id) => *id,
        other => panic!("not newly stored: {other:?}"),
    }
}

/// Each location is stored once, also when it comes twice in one batch; new ids grow in
/// commit order.
async fn each_location_is_stored_once<S: IngestStore>(s: S) {
    let first = commit(&s, vec![imap("s", 1, 7, "Subject: a\r\n\r\n1\r\n")]);
    let a = stored(&first[0]);
    let second = commit(
        &s,
        vec![
            imap("s", 2, 7, "Subject: b\r\n\r\n2\r\n"),
            imap("s", 1, 7, "Subject: a\r\n\r\n1\r\n"),
            imap("s", 2, 7, "Subject: b\r\n\r\n2\r\n"),
            pop3("s", "U1"),
            pop3("s", "U1"),
        ],
    );
    let b = stored(&second[0]);
    let u = stored(&second[3]);
    assert!(a < b && b < u, "ids in commit order: {a} {b} {u}");
    assert_eq!(second[1], StoreOutcome::AlreadyStored(a));
    assert_eq!(second[2], StoreOutcome::AlreadyStored(b));
    assert_eq!(second[4], StoreOutcome::AlreadyStored(u));
    // Another UIDVALIDITY or another source is another location.
    let third = commit(
        &s,
        vec![
            imap("s", 1, 8, "Subject: a\r\n\r\n1\r\n"),
            imap("t", 1, 7, "Subject: a\r\n\r\n1\r\n"),
        ],
    );
    assert!(stored(&third[0]) > u && stored(&third[1]) > stored(&third[0]));
}

/// A commit moves the folder checkpoint (never back) unless told not to; a skip moves it
/// the same way; a reset starts it over with the re-match bound.
async fn checkpoints_follow_commits_skips_and_resets<S: IngestStore>(s: S) {
    let at = |uidvalidity, last_uid, rematch_below| Checkpoint {
        uidvalidity,
        last_uid,
        rematch_below,
    };
    assert_eq!(s.checkpoint("s", "INBOX").await.unwrap(), None);
    commit(&s, vec![imap("s", 3, 7, "Subject: 3\r\n\r\nx\r\n")]);
    assert_eq!(
        s.checkpoint("s", "INBOX").await.unwrap(),
        Some(at(7, 3, None))
    );
    let held = s
        .prepare_batch(vec![(imap("s", 9, 7, "Subject: 9\r\n\r\nx\r\n"), false)])
        .unwrap();
    assert!(matches!(
        s.commit_batch(&held).unwrap()[..],
        [StoreOutcome::Stored(_)]
    ));
    assert_eq!(
        s.checkpoint("s", "INBOX").await.unwrap(),
        Some(at(7, 3, None)),
        "held back"
    );
    commit(&s, vec![imap("s", 2, 7, "Subject: 2\r\n\r\nx\r\n")]);
    s.skip("s", "INBOX", 7, 1).await.unwrap();
    assert_eq!(
        s.checkpoint("s", "INBOX").await.unwrap(),
        Some(at(7, 3, None)),
        "never back"
    );
    s.skip("s", "INBOX", 7, 5).await.unwrap();
    assert_eq!(
        s.checkpoint("s", "INBOX").await.unwrap(),
        Some(at(7, 5, None))
    );
    assert_eq!(s.checkpoint("s", "Other").await.unwrap(), None);
    assert_eq!(s.checkpoint("t", "INBOX").await.unwrap(), None);
    let reset = s.reset_checkpoint("s", "INBOX", 8, Some(4)).await.unwrap();
    assert_eq!(reset, at(8, 0, Some(4)));
    assert_eq!(s.checkpoint("s", "INBOX").await.unwrap(), Some(reset));
    let no_uidnext = s.reset_checkpoint("s", "INBOX", 9, None).await.unwrap();
    assert_eq!(no_uidnext, at(9, 0, Some(u32::MAX)));
    commit(&s, vec![imap("s", 2, 9, "Subject: 2\r\n\r\nx\r\n")]);
    assert_eq!(
        s.checkpoint("s", "INBOX").await.unwrap(),
        Some(at(9, 2, Some(u32::MAX))),
        "the re-match bound stays"
    );
}

/// After a UIDVALIDITY change each stored copy answers for one UID with its bytes; more
/// UIDs with the same bytes are stored.
async fn each_copy_answers_for_one_uid<S: IngestStore>(s: S) {
    let same = "Subject: same\r\n\r\nx\r\n";
    let old = commit(&s, vec![imap("s", 1, 7, same), imap("s", 2, 7, same)]);
    s.reset_checkpoint("s", "INBOX", 8, None).await.unwrap();
    let rematching = |uid| NewMessage {
        rematch: true,
        ..imap("s", uid, 8, same)
    };
    let again = commit(&s, vec![rematching(1), rematching(2), rematching(3)]);
    let mut claimed: Vec<u64> = again[..2]
        .iter()
        .map(|o| match o {
            StoreOutcome::AlreadyStored(id) => *id,
            other => panic!("{other:?}"),
        })
        .collect();
    claimed.sort_unstable();
    assert_eq!(claimed, vec![stored(&old[0]), stored(&old[1])]);
    stored(&again[2]);
    // Without the flag the same bytes are a new message.
    stored(&commit(&s, vec![imap("s", 4, 8, same)])[0]);
}

/// A post-action is recorded with its IMAP message's commit and pending until done;
/// records under another UIDVALIDITY are dropped.
async fn post_actions_are_pending_from_the_commit_until_done<S: IngestStore>(s: S) {
    let acting = |uid, uidvalidity| NewMessage {
        post_action: true,
        ..imap(
            "s",
            uid,
            uidvalidity,
            &format!("Subject: {uid}\r\n\r\nx\r\n"),
        )
    };
    commit(
        &s,
        vec![
            acting(1, 7),
            acting(2, 7),
            imap("s", 3, 7, "Subject: 3\r\n\r\nx\r\n"),
            NewMessage {
                post_action: true,
                ..pop3("s", "U1")
            },
        ],
    );
    let mut pending = s.pending_actions("s", "INBOX", 7).await.unwrap();
    pending.sort_unstable();
    assert_eq!(pending, vec![1, 2]);
    assert!(s.pending_actions("s", "Other", 7).await.unwrap().is_empty());
    assert!(s.pending_actions("t", "INBOX", 7).await.unwrap().is_empty());
    s.actions_done("s", "INBOX", 7, &[2]).await.unwrap();
    assert_eq!(s.pending_actions("s", "INBOX", 7).await.unwrap(), vec![1]);
    // Asked under a new UIDVALIDITY: the old records name nothing now and go.
    assert!(s.pending_actions("s", "INBOX", 8).await.unwrap().is_empty());
    assert!(s.pending_actions("s", "INBOX", 7).await.unwrap().is_empty());
}

/// The POP3 UIDLs stored for a source, and when each was stored.
async fn pop3_uidls_are_known_with_their_time<S: IngestStore>(s: S) {
    assert!(s.stored_uidls("s").await.unwrap().is_empty());
    let before = chrono::Utc::now() - chrono::Duration::seconds(1);
    commit(&s, vec![pop3("s", "U1"), pop3("s", "U2"), pop3("t", "U3")]);
    let uidls = s.stored_uidls("s").await.unwrap();
    assert_eq!(
        uidls,
        ["U1", "U2"].into_iter().map(String::from).collect(),
        "{uidls:?}"
    );
    let at = s.pop3_stored_at("s", "U1").await.unwrap().expect("stored");
    let at = chrono::DateTime::parse_from_rfc3339(&at).expect("RFC 3339");
    assert!(at >= before && at <= chrono::Utc::now(), "{at}");
    assert_eq!(s.pop3_stored_at("s", "U3").await.unwrap(), None);
    assert_eq!(s.pop3_stored_at("s", "nope").await.unwrap(), None);
}

/// Each newly stored message gets one event naming it, in the commit that stores it, with
/// seqs in commit order; one found stored already or re-matched gets none. Readers see
/// them once flushed.
async fn each_new_message_gets_one_event_in_commit_order<S: IngestStore>(s: S) {
    let same = "Subject: same\r\n\r\nx\r\n";
    let first = commit(&s, vec![imap("s", 1, 7, same), pop3("s", "U1")]);
    s.reset_checkpoint("s", "INBOX", 8, None).await.unwrap();
    let second = commit(
        &s,
        vec![
            NewMessage {
                rematch: true,
                ..imap("s", 1, 8, same)
            },
            pop3("s", "U1"),
            imap("t", 5, 7, "Subject: t\r\n\r\n5\r\n"),
            pop3("s", "U2"),
            pop3("s", "U2"),
        ],
    );
    assert!(
        matches!(second[0], StoreOutcome::AlreadyStored(_)),
        "re-matched"
    );
    s.flush().await.unwrap();
    let events = s.events_after(0, 100).await.unwrap();
    let expected = [
        (
            stored(&first[0]),
            event_id(
                &Location::Imap {
                    folder: "INBOX".into(),
                    uidvalidity: 7,
                    uid: 1,
                }
                .event_key("s"),
            ),
        ),
        (
            stored(&first[1]),
            event_id(&Location::Pop3 { uidl: "U1".into() }.event_key("s")),
        ),
        (
            stored(&second[2]),
            event_id(
                &Location::Imap {
                    folder: "INBOX".into(),
                    uidvalidity: 7,
                    uid: 5,
                }
                .event_key("t"),
            ),
        ),
        (
            stored(&second[3]),
            event_id(&Location::Pop3 { uidl: "U2".into() }.event_key("s")),
        ),
    ];
    let got: Vec<(u64, String)> = events
        .iter()
        .map(|e| (e.message.expect("a message event"), e.id.clone()))
        .collect();
    assert_eq!(got, expected);
    assert!(events.iter().all(|e| e.kind == EventKind::MessageStored));
    assert!(
        events.windows(2).all(|w| w[0].seq < w[1].seq),
        "seqs in commit order: {:?}",
        events.iter().map(|e| e.seq).collect::<Vec<_>>()
    );
    // Read from a seq on: the rest, in order.
    let rest = s.events_after(events[1].seq, 100).await.unwrap();
    assert_eq!(rest, events[2..]);
    // A later commit's events come after every earlier one.
    let third = commit(&s, vec![pop3("s", "U3")]);
    s.flush().await.unwrap();
    let more = s.events_after(events[3].seq, 100).await.unwrap();
    assert_eq!(more.len(), 1);
    assert_eq!(more[0].message, Some(stored(&third[0])));
}

/// Room for a little more, and a flush that returns.
async fn room_and_flush<S: IngestStore>(s: S) {
    s.ensure_room(1).await.unwrap();
    commit(&s, vec![pop3("s", "U1")]);
    s.flush().await.unwrap();
}

/// A token record reads back as written; the last write wins.
async fn tokens_read_back_as_written(s: Arc<dyn TokenStore>) {
    assert_eq!(s.token(&bound("s")).await.unwrap(), None);
    let mut tok = StoredToken {
        refresh_token: Some("r1".into()),
        access_token: Some("a1".into()),
        access_expires_at: Some(1_900_000_000),
        identity: Some("alice@example.test".into()),
        ..Default::default()
    };
    s.put_token(&bound("s"), &tok).await.unwrap();
    assert_eq!(s.token(&bound("s")).await.unwrap(), Some(tok.clone()));
    tok.refresh_token = Some("r2".into());
    tok.needs_reauth = Some("invalid_grant".into());
    s.put_token(&bound("s"), &tok).await.unwrap();
    assert_eq!(s.token(&bound("s")).await.unwrap(), Some(tok));
    assert_eq!(s.token(&bound("t")).await.unwrap(), None);
}

/// Runs a check against a fresh sled store.
macro_rules! sled_checks {
    ($($check:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $check() {
                let (_dir, s) = store();
                super::$check(s).await;
            }
        )*
    };
}

mod on_sled {
    use super::*;

    sled_checks!(
        each_location_is_stored_once,
        checkpoints_follow_commits_skips_and_resets,
        each_copy_answers_for_one_uid,
        post_actions_are_pending_from_the_commit_until_done,
        pop3_uidls_are_known_with_their_time,
        each_new_message_gets_one_event_in_commit_order,
        room_and_flush,
    );

    #[tokio::test]
    async fn tokens_read_back_as_written() {
        let (_dir, s) = store();
        super::tokens_read_back_as_written(Arc::new(s)).await;
    }
}
