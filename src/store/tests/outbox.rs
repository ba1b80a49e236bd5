//! The outbox: one event per newly stored message in its commit, seqs that never go back
//! or repeat, what readers see, sink records and pruning.

use super::super::*;
use super::{disk_image, imap_msg, rematching, store};
use sha2::{Digest, Sha256};

fn pop3_msg(uidl: &str) -> NewMessage {
    NewMessage {
        location: Location::Pop3 { uidl: uidl.into() },
        ..imap_msg(0, 0, format!("Subject: {uidl}\r\n\r\nx\r\n").as_bytes())
    }
}

fn msg(uid: u32) -> NewMessage {
    imap_msg(uid, 7, format!("Subject: {uid}\r\n\r\nx\r\n").as_bytes())
}

fn stored(outcome: &StoreOutcome) -> u64 {
    match outcome {
        StoreOutcome::Stored(id) => *id,
        other => panic!("{other:?}"),
    }
}

fn all_events(s: &Store) -> Vec<Event> {
    s.events_after(0, usize::MAX).unwrap()
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// A reopened store (the one before it dropped), waiting for its lock to be free.
fn reopen(dir: &tempfile::TempDir) -> Store {
    super::reopen(&dir.path().join("db"), &dir.path().join("key"))
}

fn failure(error: &str) -> FailedDelivery {
    FailedDelivery {
        attempts: 5,
        last_error: error.into(),
        failed_at: "2024-05-01T09:30:00Z".into(),
    }
}

/// The ids are the documented digests, pinned as values: receivers deduplicate by them,
/// so they must never change.
#[test]
fn event_ids_are_the_documented_digests() {
    let imap = EventKey::Imap {
        source: "work",
        folder: "INBOX",
        uidvalidity: 3_857_529_045,
        uid: 4242,
    };
    let by_hand = Sha256::digest(b"message.stored\x00imap\x00work\x00INBOX\x003857529045\x004242");
    assert_eq!(
        event_id(&imap),
        format!("evt_{}", hex::encode(&by_hand[..16]))
    );
    assert_eq!(event_id(&imap), "evt_8da1d035e39dfe4804c00a9dcfbeaeee");
    assert_eq!(
        event_id(&EventKey::Pop3 {
            source: "home",
            uidl: "AAQk1x"
        }),
        "evt_37341d5ffdac062d8c70c48a77a73ab2"
    );
    assert_eq!(
        event_id(&EventKey::StateChange {
            source: "work",
            from: "healthy",
            to: "needs_reauth",
            at_millis: 1_714_555_800_250,
        }),
        "evt_289f386eee62de1c738247af783e3172"
    );
}

/// The same message on another node (another store, other store ids and seqs) has the
/// same event id, and it is the one its stored record names.
#[tokio::test]
async fn event_ids_do_not_depend_on_the_node() {
    let (_a, a) = store();
    let (_b, b) = store();
    // Node b has stored other mail first: other ids, other seqs.
    b.store(pop3_msg("other")).unwrap();
    for s in [&a, &b] {
        s.store_batch(vec![(msg(4242), true), (pop3_msg("AAQk1x"), true)])
            .unwrap();
        s.flush().await.unwrap();
    }
    let (ea, eb) = (all_events(&a), all_events(&b));
    assert_eq!(ea.len(), 2);
    assert_eq!(eb.len(), 3);
    assert_ne!(ea[0].seq, eb[1].seq);
    assert_ne!(ea[0].message, eb[1].message);
    for (x, y) in ea.iter().zip(&eb[1..]) {
        assert_eq!(x.id, y.id);
        let meta = a.meta(x.message.unwrap()).unwrap().unwrap();
        assert_eq!(meta.event_id(), x.id);
    }
    assert_eq!(
        ea[1].id,
        event_id(&EventKey::Pop3 {
            source: "s",
            uidl: "AAQk1x"
        })
    );
}

/// Each newly stored message has one event naming it, in commit order; a message found
/// stored already or re-matched after a UIDVALIDITY change has none.
#[tokio::test]
async fn only_newly_stored_messages_get_events() {
    let (_d, s) = store();
    let same = b"Subject: same\r\n\r\nx\r\n";
    let first = s
        .store_batch(vec![
            (imap_msg(1, 7, same), true),
            (msg(2), true),
            (pop3_msg("U1"), true),
        ])
        .unwrap();
    s.reset_checkpoint("s", "INBOX", 8, None).unwrap();
    let second = s
        .store_batch(vec![
            (msg(2), true),                           // stored already
            (rematching(imap_msg(1, 8, same)), true), // re-matched to uid 1
            (pop3_msg("U1"), true),                   // stored already
            (
                rematching(imap_msg(9, 8, b"Subject: n\r\n\r\nnew\r\n")),
                true,
            ),
            (pop3_msg("U2"), true),
            (pop3_msg("U2"), true), // twice in one batch
        ])
        .unwrap();
    assert!(matches!(second[1], StoreOutcome::AlreadyStored(_)));
    s.flush().await.unwrap();
    let events = all_events(&s);
    let announced: Vec<u64> = events.iter().map(|e| e.message.unwrap()).collect();
    let new: Vec<u64> = first
        .iter()
        .chain(&second)
        .filter_map(|o| match o {
            StoreOutcome::Stored(id) => Some(*id),
            StoreOutcome::AlreadyStored(_) => None,
        })
        .collect();
    assert_eq!(announced, new);
    assert_eq!(seqs(&events), vec![1, 2, 3, 4, 5]);
    let timestamps: std::collections::BTreeSet<&str> =
        events[..3].iter().map(|e| e.timestamp.as_str()).collect();
    assert_eq!(timestamps.len(), 1, "one commit, one time");
    for e in &events {
        assert_eq!(e.kind, EventKind::MessageStored);
        assert_eq!(e.source, "s");
        assert!(e.state.is_none());
        let meta = s.meta(e.message.unwrap()).unwrap().unwrap();
        assert_eq!(e.id, meta.event_id());
        assert!(e.timestamp.ends_with('Z'), "{}", e.timestamp);
        chrono::DateTime::parse_from_rfc3339(&e.timestamp).unwrap();
    }
}

/// What a commit writes is the JSON of [`Event`], so it reads back as written, and a
/// message event carries no `state`.
#[test]
fn a_message_event_is_written_as_an_event() {
    let (_d, s) = store();
    let id = stored(&s.store(msg(1)).unwrap());
    let value = s.events.get(1u64.to_be_bytes()).unwrap().unwrap();
    let written: serde_json::Value = serde_json::from_slice(&value).unwrap();
    let event: Event = serde_json::from_slice(&value).unwrap();
    assert_eq!(serde_json::to_value(&event).unwrap(), written);
    assert_eq!(written["kind"], "message.stored");
    assert_eq!(written["message"], id);
    assert!(written.get("state").is_none(), "{written}");
}

/// Readers see an event only once a flush has covered it; the watch moves then.
#[tokio::test]
async fn readers_see_events_once_they_are_durable() {
    let (_d, s) = store();
    // Nobody watches yet, so nothing nudges a flush: the event waits for the writer's.
    s.store(msg(1)).unwrap();
    let mut watch = s.event_watch();
    assert_eq!(*watch.borrow_and_update(), 0);
    assert!(all_events(&s).is_empty());
    assert_eq!(s.last_event_seq(), 0);
    assert_eq!(s.event(1).unwrap(), None);
    assert_eq!(s.first_event_seq().unwrap(), None);
    assert!(!watch.has_changed().unwrap());
    s.flush().await.unwrap();
    assert!(watch.has_changed().unwrap());
    assert_eq!(*watch.borrow_and_update(), 1);
    assert_eq!(s.event(1).unwrap().unwrap().seq, 1);
    s.store_batch(vec![(msg(2), true), (msg(3), true)]).unwrap();
    s.flush_sync().unwrap();
    assert_eq!(*watch.borrow_and_update(), 3);
    assert_eq!(s.last_event_seq(), 3);
    // A flush with no new events leaves the watch alone.
    s.flush().await.unwrap();
    assert!(!watch.has_changed().unwrap());
    // Pages seek by seq.
    assert_eq!(seqs(&s.events_after(1, 1).unwrap()), vec![2]);
    assert_eq!(seqs(&s.events_after(1, 10).unwrap()), vec![2, 3]);
    assert!(s.events_after(3, 10).unwrap().is_empty());
    assert!(s.events_after(0, 0).unwrap().is_empty());
    assert_eq!(s.first_event_seq().unwrap(), Some(1));
}

/// While someone watches (a sink, a long poll), a commit that adds events has them made
/// durable a moment later without the writer flushing: a backfill that flushes once per
/// folder does not hold every event back until its end.
#[tokio::test]
async fn a_watched_outbox_is_flushed_soon_after_a_commit() {
    let (_d, s) = store();
    let mut watch = s.event_watch();
    s.store_batch(vec![(msg(1), true), (msg(2), true)]).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), watch.changed())
        .await
        .expect("the events became visible without a flush by the writer")
        .unwrap();
    assert_eq!(*watch.borrow_and_update(), 2);
    assert_eq!(seqs(&all_events(&s)), vec![1, 2]);
}

/// A crash keeps a message and its event together: a copy of the files taken at any
/// moment (what a power cut would leave) holds both or neither, and once flushed, both.
#[tokio::test]
async fn a_crash_keeps_a_message_and_its_event_together() {
    let (d, s) = store();
    for round in 0..12u32 {
        let batch = (0..5u32)
            .map(|k| (msg(round * 5 + k + 1), true))
            .collect::<Vec<_>>();
        s.store_batch(batch).unwrap();
        if round % 3 == 2 {
            s.flush().await.unwrap();
        }
        let (_image, copy) = disk_image(&d);
        let ids: Vec<u64> = copy.iter_meta(None).map(|m| m.unwrap().id).collect();
        let events = all_events(&copy);
        let announced: Vec<u64> = events.iter().map(|e| e.message.unwrap()).collect();
        assert_eq!(announced, ids, "round {round}");
        assert_eq!(
            seqs(&events),
            (1..=ids.len() as u64).collect::<Vec<_>>(),
            "round {round}"
        );
        if round % 3 == 2 {
            assert_eq!(ids.len() as u32, (round + 1) * 5, "flushed: all there");
        }
    }
}

/// Seqs go on after a reopen, also when pruning had emptied the outbox, and state change
/// events take their seqs in the same order as message events.
#[tokio::test]
async fn seqs_are_never_given_twice_across_reopens_and_pruning() {
    let d = tempfile::tempdir().unwrap();
    {
        let s = reopen(&d);
        s.store_batch(vec![(msg(1), true), (msg(2), true)]).unwrap();
        let changed = s
            .append_state_event("s", "healthy", "degraded", Some("connection refused"))
            .await
            .unwrap();
        assert_eq!(changed.seq, 3);
        s.store(msg(3)).unwrap();
        s.flush().await.unwrap();
        assert_eq!(seqs(&all_events(&s)), vec![1, 2, 3, 4]);
        let future = chrono::Utc::now() + chrono::Duration::hours(1);
        assert_eq!(s.prune_events(&[], future, 100).unwrap(), 4);
        assert!(all_events(&s).is_empty());
        assert_eq!(s.first_event_seq().unwrap(), None);
        assert_eq!(s.last_event_seq(), 4, "the last seq stays known");
        s.flush().await.unwrap();
    }
    let s = reopen(&d);
    assert_eq!(s.last_event_seq(), 4);
    s.store(msg(4)).unwrap();
    s.flush().await.unwrap();
    assert_eq!(seqs(&all_events(&s)), vec![5]);
    drop(s);
    // Reopened with events kept: after the last one.
    let s = reopen(&d);
    assert_eq!(s.last_event_seq(), 5);
    let e = s
        .append_state_event("s", "degraded", "healthy", None)
        .await
        .unwrap();
    assert_eq!(e.seq, 6);
    assert_eq!(s.event(6).unwrap(), Some(e));
}

/// A state change event: its fields, its id from the time it carries, the reason capped;
/// durable when the call returns.
#[tokio::test]
async fn state_change_events_carry_the_change() {
    let (d, s) = store();
    let long = "x".repeat(5000);
    let a = s
        .append_state_event("s", "starting", "needs_reauth", Some(&long))
        .await
        .unwrap();
    let b = s
        .append_state_event("s", "needs_reauth", "healthy", None)
        .await
        .unwrap();
    let c = s
        .append_state_event("s", "healthy", "needs_reauth", Some("invalid_grant"))
        .await
        .unwrap();
    assert_eq!(a.kind, EventKind::SourceStateChanged);
    assert_eq!(a.message, None);
    let state = a.state.as_ref().unwrap();
    assert_eq!(
        (state.from.as_str(), state.to.as_str()),
        ("starting", "needs_reauth")
    );
    assert!(state.reason.as_ref().unwrap().len() < 1100);
    assert_eq!(b.state.as_ref().unwrap().reason, None);
    let at = chrono::DateTime::parse_from_rfc3339(&a.timestamp).unwrap();
    assert_eq!(
        a.id,
        event_id(&EventKey::StateChange {
            source: "s",
            from: "starting",
            to: "needs_reauth",
            at_millis: at.timestamp_millis(),
        })
    );
    // Each later than the one before, so the same change twice has two ids.
    let millis = |e: &Event| {
        chrono::DateTime::parse_from_rfc3339(&e.timestamp)
            .unwrap()
            .timestamp_millis()
    };
    assert!(millis(&a) < millis(&b) && millis(&b) < millis(&c));
    assert_ne!(a.id, c.id);
    // On disk when the call returned.
    let (_image, copy) = disk_image(&d);
    assert_eq!(all_events(&copy), vec![a, b, c]);
}

/// The watermark moves over every event done without a gap; done events above a gap are
/// remembered until it closes; skipped ones count for it but not as delivered.
#[tokio::test]
async fn the_watermark_moves_over_contiguous_events_and_jumps_when_a_gap_closes() {
    let (d, s) = store();
    s.store_batch((1..=10).map(|u| (msg(u), true)).collect())
        .unwrap();
    s.flush().await.unwrap();
    assert_eq!(s.sink_state("hook").unwrap(), SinkState::default());
    s.sink_delivered("hook", &[1, 2, 4, 5]).await.unwrap();
    let st = s.sink_state("hook").unwrap();
    assert_eq!(
        (st.delivered_through, st.delivered, st.done_above),
        (2, 4, 2)
    );
    s.sink_skip("hook", &[7]).await.unwrap();
    s.sink_delivered("hook", &[3]).await.unwrap();
    let st = s.sink_state("hook").unwrap();
    assert_eq!(
        (
            st.delivered_through,
            st.delivered,
            st.skipped,
            st.done_above
        ),
        (5, 5, 1, 1)
    );
    // Delivered again after a crash: not counted twice.
    s.sink_delivered("hook", &[7, 6]).await.unwrap();
    let st = s.sink_state("hook").unwrap();
    assert_eq!((st.delivered_through, st.delivered, st.skipped), (7, 6, 1));
    // Another sink is on its own; an event not in the outbox is refused.
    assert_eq!(s.sink_state("nats").unwrap().delivered_through, 0);
    match s.sink_delivered("nats", &[11]).await {
        Err(e @ StoreError::Sink { .. }) => assert!(e.to_string().contains("nats"), "{e}"),
        other => panic!("{other:?}"),
    }
    match s.sink_skip("nats", &[0]).await {
        Err(StoreError::Sink { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(s.sink_names().unwrap(), ["hook"]);
    // Durable when the call returned.
    let (_image, copy) = disk_image(&d);
    assert_eq!(
        copy.sink_state("hook").unwrap(),
        s.sink_state("hook").unwrap()
    );
}

/// Gaps are bounded: a sink leaving more than [`MAX_SINK_GAPS`] is refused, and its
/// record is left as it was.
#[tokio::test]
async fn a_sink_may_leave_only_so_many_gaps() {
    let (_d, s) = store();
    let n = (MAX_SINK_GAPS as u32 + 1) * 2;
    for chunk in (1..=n).collect::<Vec<_>>().chunks(500) {
        s.store_batch(chunk.iter().map(|u| (msg(*u), true)).collect())
            .unwrap();
    }
    s.flush().await.unwrap();
    let every_other: Vec<u64> = (1..=n as u64).filter(|seq| seq % 2 == 0).collect();
    let (fits, over) = every_other.split_at(MAX_SINK_GAPS);
    s.sink_delivered("hook", fits).await.unwrap();
    assert_eq!(
        s.sink_state("hook").unwrap().done_above,
        MAX_SINK_GAPS as u64
    );
    match s.sink_delivered("hook", &over[..1]).await {
        Err(e @ StoreError::Sink { .. }) => assert!(e.to_string().contains("gaps"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.sink_state("hook").unwrap().delivered,
        MAX_SINK_GAPS as u64
    );
}

/// A failed event counts for the watermark and is listed; a retry clears the marks and
/// hands their seqs back; delivering them counts them as delivered.
#[tokio::test]
async fn failed_events_are_listed_retried_and_delivered_again() {
    let (_d, s) = store();
    s.store_batch((1..=5).map(|u| (msg(u), true)).collect())
        .unwrap();
    s.flush().await.unwrap();
    s.sink_delivered("hook", &[1]).await.unwrap();
    s.sink_failed("hook", 2, failure("HTTP 500 Internal Server Error"))
        .await
        .unwrap();
    s.sink_failed("hook", 4, failure(&"e".repeat(5000)))
        .await
        .unwrap();
    s.sink_delivered("hook", &[3]).await.unwrap();
    let st = s.sink_state("hook").unwrap();
    assert_eq!(
        (st.delivered_through, st.delivered, st.failed, st.failed_now),
        (4, 2, 2, 2)
    );
    let listed = s.sink_failed_list("hook").unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], (2, failure("HTTP 500 Internal Server Error")));
    assert_eq!(listed[1].0, 4);
    assert!(listed[1].1.last_error.len() < 1100, "capped");
    assert!(s.sink_failed_list("other").unwrap().is_empty());
    assert_eq!(s.sink_retry("hook").await.unwrap(), vec![2, 4]);
    assert!(s.sink_failed_list("hook").unwrap().is_empty());
    assert_eq!(s.sink_state("hook").unwrap().failed_now, 0);
    // Redelivered: 2 makes it, 4 fails again.
    s.sink_delivered("hook", &[2]).await.unwrap();
    s.sink_failed("hook", 4, failure("timeout")).await.unwrap();
    let st = s.sink_state("hook").unwrap();
    assert_eq!(
        (st.delivered_through, st.delivered, st.failed, st.failed_now),
        (4, 3, 3, 1)
    );
    // A delivery (a replay) clears a mark still held.
    s.sink_delivered("hook", &[4, 5]).await.unwrap();
    let st = s.sink_state("hook").unwrap();
    assert_eq!(
        (st.delivered_through, st.delivered, st.failed_now),
        (5, 5, 0)
    );
    assert!(s.sink_retry("hook").await.unwrap().is_empty());
}

/// Removing a sink drops its record and marks and tells what it still had.
#[tokio::test]
async fn removing_a_sink_drops_its_state() {
    let (_d, s) = store();
    s.store_batch((1..=6).map(|u| (msg(u), true)).collect())
        .unwrap();
    s.flush().await.unwrap();
    s.sink_delivered("hook", &[1, 2, 5]).await.unwrap();
    s.sink_failed("hook", 3, failure("refused")).await.unwrap();
    s.sink_delivered("keep", &[1]).await.unwrap();
    // Pending: 4 and 6; failed: 3.
    assert_eq!(s.sink_remove("hook").await.unwrap(), 3);
    assert_eq!(s.sink_state("hook").unwrap(), SinkState::default());
    assert!(s.sink_failed_list("hook").unwrap().is_empty());
    assert_eq!(s.sink_names().unwrap(), ["keep"]);
    assert_eq!(s.sink_remove("never").await.unwrap(), 6);
}

/// Pruning goes from the oldest event on and stops at the first that must stay: newer
/// than the cut-off, above a listed sink's watermark, or failed in a listed sink.
#[tokio::test]
async fn pruning_stops_at_the_first_event_that_must_stay() {
    let (_d, s) = store();
    s.store_batch((1..=10).map(|u| (msg(u), true)).collect())
        .unwrap();
    s.flush().await.unwrap();
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    let earlier = chrono::Utc::now() - chrono::Duration::hours(1);
    let sinks = ["hook".to_string(), "nats".to_string()];
    s.sink_delivered("hook", &(1..=8).collect::<Vec<_>>())
        .await
        .unwrap();
    s.sink_delivered("nats", &[1, 2, 3, 5, 6, 7, 8])
        .await
        .unwrap();
    // Too young: nothing, whatever the sinks say.
    assert_eq!(s.prune_events(&sinks, earlier, 100).unwrap(), 0);
    // nats lags at 3 (4 is not done).
    assert_eq!(s.prune_events(&sinks, later, 100).unwrap(), 3);
    assert_eq!(s.first_event_seq().unwrap(), Some(4));
    // 4 fails for nats: the watermark moves to 8, but the failed event stays, and so does
    // everything after it.
    s.sink_failed("nats", 4, failure("no stream"))
        .await
        .unwrap();
    assert_eq!(s.sink_state("nats").unwrap().delivered_through, 8);
    assert_eq!(s.prune_events(&sinks, later, 100).unwrap(), 0);
    assert_eq!(s.first_event_seq().unwrap(), Some(4));
    // Retried and delivered: pruning goes on up to the lowest watermark, `max` at a time.
    s.sink_retry("nats").await.unwrap();
    s.sink_delivered("nats", &[4]).await.unwrap();
    assert_eq!(s.prune_events(&sinks, later, 2).unwrap(), 2);
    assert_eq!(s.prune_events(&sinks, later, 100).unwrap(), 3);
    assert_eq!(s.first_event_seq().unwrap(), Some(9));
    // A sink not listed holds nothing; with none listed, only age counts.
    assert_eq!(s.prune_events(&sinks[..1], later, 100).unwrap(), 0);
    assert_eq!(s.prune_events(&[], later, 100).unwrap(), 2);
    assert_eq!(s.first_event_seq().unwrap(), None);
    assert_eq!(s.last_event_seq(), 10);
}

/// Ids and seqs are given in the same commit order: with several threads committing, the
/// events, by seq, name the messages by increasing id, one each, with no gap.
#[test]
fn seqs_follow_ids_under_concurrent_commits() {
    let (_d, s) = store();
    let s = std::sync::Arc::new(s);
    let writers: Vec<_> = (0..4u32)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for n in 1..=25u32 {
                    let batch = (0..3u32)
                        .map(|k| {
                            let mut m = msg(n * 3 + k);
                            m.source = format!("s{t}");
                            (m, true)
                        })
                        .collect();
                    let prepared = s.prepare_batch(batch).unwrap();
                    s.commit_batch(&prepared).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    s.flush_sync().unwrap();
    let events = all_events(&s);
    assert_eq!(seqs(&events), (1..=300).collect::<Vec<_>>());
    let ids: Vec<u64> = events.iter().map(|e| e.message.unwrap()).collect();
    assert_eq!(ids, (1..=300).collect::<Vec<_>>());
}

/// A replay rewinds a sink to an event still kept: what it had done from there on is to be
/// done again, and counts again when it is. An event pruned, or past the last, is refused
/// with nothing changed.
#[tokio::test]
async fn a_sink_is_rewound_only_to_events_still_kept() {
    let (_d, s) = store();
    s.store_batch((1..=8).map(|u| (msg(u), true)).collect())
        .unwrap();
    s.flush().await.unwrap();
    s.sink_delivered("hook", &[1, 2, 3, 5, 6]).await.unwrap();
    assert_eq!(s.sink_done_above("hook").unwrap(), vec![(5, 6)]);
    assert_eq!(s.sink_done_above("never").unwrap(), vec![]);
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(s.prune_events(&["hook".to_string()], later, 2).unwrap(), 2);
    let before = s.sink_state("hook").unwrap();
    assert_eq!(
        s.sink_rewind("hook", 2).await.unwrap(),
        Rewind::BelowRetained { oldest: Some(3) }
    );
    assert_eq!(
        s.sink_rewind("hook", 9).await.unwrap(),
        Rewind::PastEnd { last: 8 }
    );
    assert_eq!(s.sink_state("hook").unwrap(), before, "refused: unchanged");
    // From 6: only what was done from 6 on is forgotten.
    assert_eq!(
        s.sink_rewind("hook", 6).await.unwrap(),
        Rewind::Rewound {
            delivered_through: 3
        }
    );
    assert_eq!(s.sink_done_above("hook").unwrap(), vec![(5, 5)]);
    // From 3: below the watermark, which drops.
    assert_eq!(
        s.sink_rewind("hook", 3).await.unwrap(),
        Rewind::Rewound {
            delivered_through: 2
        }
    );
    assert!(s.sink_done_above("hook").unwrap().is_empty());
    // Replayed deliveries count again; nothing below the watermark is pruned meanwhile.
    s.sink_delivered("hook", &(3..=8).collect::<Vec<_>>())
        .await
        .unwrap();
    let st = s.sink_state("hook").unwrap();
    assert_eq!((st.delivered_through, st.delivered), (8, 11));
    // Pruned all: nothing is kept to replay.
    assert_eq!(
        s.prune_events(&["hook".to_string()], later, 100).unwrap(),
        6
    );
    assert_eq!(
        s.sink_rewind("hook", 8).await.unwrap(),
        Rewind::BelowRetained { oldest: None }
    );
}
