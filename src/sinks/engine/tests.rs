//! The worker against a real store and a transport of the tests' own that records what it
//! is given and fails as each test plans.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::*;
use crate::store::{Location, NewMessage};

/// One attempt as the transport saw it.
#[derive(Debug, Clone)]
struct Seen {
    seq: u64,
    source: String,
    id: String,
    body: Vec<u8>,
    at: Instant,
}

#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<Seen>>,
    /// Per seq, the answers to its next attempts (then success).
    plan: Mutex<HashMap<u64, VecDeque<DeliveryError>>>,
    /// Seqs that fail until this is cleared.
    failing: Mutex<HashSet<u64>>,
    /// In flight now, by source, and the most seen at once (per source, in all).
    flying: Mutex<(HashMap<String, usize>, usize, usize, usize)>,
    delay: Duration,
}

impl Fake {
    fn with_delay(delay: Duration) -> Arc<Fake> {
        Arc::new(Fake {
            delay,
            ..Fake::default()
        })
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn seqs(&self) -> Vec<u64> {
        self.seen().iter().map(|s| s.seq).collect()
    }

    fn plan(&self, seq: u64, answers: impl IntoIterator<Item = DeliveryError>) {
        self.plan
            .lock()
            .unwrap()
            .entry(seq)
            .or_default()
            .extend(answers);
    }
}

impl Transport for Fake {
    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            let body = d.body()?;
            {
                let mut f = self.flying.lock().unwrap();
                let n = f.0.entry(d.event.source.clone()).or_default();
                *n += 1;
                let per_source = *n;
                f.1 = f.1.max(per_source);
                f.2 += 1;
                f.3 = f.3.max(f.2);
            }
            self.seen.lock().unwrap().push(Seen {
                seq: d.event.seq,
                source: d.event.source.clone(),
                id: d.event.id.clone(),
                body,
                at: Instant::now(),
            });
            tokio::time::sleep(self.delay).await;
            {
                let mut f = self.flying.lock().unwrap();
                *f.0.entry(d.event.source.clone()).or_default() -= 1;
                f.2 -= 1;
            }
            if self.failing.lock().unwrap().contains(&d.event.seq) {
                return Err(DeliveryError::transient("http_5xx", "answered 500"));
            }
            let planned = self
                .plan
                .lock()
                .unwrap()
                .get_mut(&d.event.seq)
                .and_then(VecDeque::pop_front);
            match planned {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
    }
}

fn options(concurrency: usize) -> SinkOptions {
    SinkOptions {
        name: "hook".into(),
        wants: Arc::new(|_, source| source != "unwanted"),
        include_raw: false,
        max_raw_bytes: 1024,
        concurrency,
        // The engine takes any schedule; short waits keep the tests short.
        schedule: Schedule {
            max_backoff: Duration::from_millis(50),
            max_age: Duration::from_secs(3600),
        },
        api_base: "https://node.example:9898".into(),
    }
}

fn store() -> (tempfile::TempDir, Arc<Store>) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(&d.path().join("db"), &d.path().join("key")).unwrap();
    (d, Arc::new(s))
}

/// A state change event per entry, in this order (durable on return).
async fn changes(store: &Store, sources: &[&str]) -> Vec<Event> {
    let mut out = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        let (from, to) = if i % 2 == 0 {
            ("healthy", "degraded")
        } else {
            ("degraded", "healthy")
        };
        out.push(
            store
                .append_state_event(source, from, to, None)
                .await
                .unwrap(),
        );
    }
    out
}

/// A running worker: its command sender and task.
struct Running {
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

fn start(store: &Arc<Store>, fake: &Arc<Fake>, opts: SinkOptions) -> Running {
    let (commands, rx) = mpsc::channel(4);
    let worker = Worker::new(opts, store.clone(), fake.clone());
    Running {
        commands,
        task: tokio::spawn(worker.run(rx)),
    }
}

impl Running {
    async fn stop(self) {
        drop(self.commands);
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the worker stops")
            .unwrap();
    }

    async fn retry(&self) -> Result<RetryReport, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Retry { reply }).await.unwrap();
        answer.await.unwrap()
    }

    async fn replay(&self, from: u64) -> Result<ReplayReport, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Replay {
                from,
                retention_secs: 86_400,
                reply,
            })
            .await
            .unwrap();
        answer.await.unwrap()
    }
}

/// Waits (bounded) until `done` holds, looking again every few milliseconds.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn by_source(seen: &[Seen]) -> BTreeMap<String, Vec<u64>> {
    let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for s in seen {
        out.entry(s.source.clone()).or_default().push(s.seq);
    }
    out
}

/// Every wanted event once, each source's in seq order, one in flight per source and
/// `concurrency` in all; unwanted ones skipped; all of it recorded.
#[tokio::test]
async fn delivers_each_sources_events_in_order_within_the_concurrency() {
    let (_d, store) = store();
    let sources: Vec<&str> = (0..40)
        .map(|i| ["a", "b", "c", "unwanted"][i % 4])
        .collect();
    let events = changes(&store, &sources).await;
    let fake = Fake::with_delay(Duration::from_millis(3));
    let worker = start(&store, &fake, options(2));
    until("30 deliveries", || fake.seen().len() >= 30).await;
    // Recorded in a batch within the batch delay.
    until("the watermark at the end", || {
        store.sink_state("hook").unwrap().delivered_through == 40
    })
    .await;
    worker.stop().await;

    let seen = fake.seen();
    assert_eq!(seen.len(), 30, "each once: {:?}", fake.seqs());
    for (source, seqs) in by_source(&seen) {
        assert_ne!(source, "unwanted");
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "{source} out of order");
    }
    let flying = fake.flying.lock().unwrap().clone();
    assert_eq!(flying.1, 1, "one attempt per source at a time");
    assert!(flying.3 <= 2, "at most concurrency in flight: {}", flying.3);
    let st = store.sink_state("hook").unwrap();
    assert_eq!((st.delivered, st.skipped, st.done_above), (30, 10, 0));
    // The body is the envelope of the event it names.
    let first = &seen[0];
    let v: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    let e = events.iter().find(|e| e.seq == first.seq).unwrap();
    assert_eq!(v["id"], e.id.as_str());
    assert_eq!(first.id, e.id);
    assert_eq!(v["type"], "source.state_changed");
    assert_eq!(v["data"]["source"], first.source.as_str());
}

/// A failed attempt is retried with the same body, after the schedule's wait or the
/// receiver's longer `Retry-After`; meanwhile the source's later events wait and other
/// sources' go on.
#[tokio::test]
async fn retries_keep_the_body_and_the_order() {
    let (_d, store) = store();
    let events = changes(&store, &["a", "a", "b", "b"]).await;
    let fake = Fake::with_delay(Duration::ZERO);
    fake.plan(
        1,
        [
            DeliveryError::transient("http_5xx", "answered 500"),
            DeliveryError {
                retry_after: Some(Duration::from_millis(400)),
                ..DeliveryError::transient("http_429", "answered 429")
            },
        ],
    );
    let worker = start(&store, &fake, options(4));
    until("every event", || {
        store.sink_state("hook").unwrap().delivered_through == 4
    })
    .await;
    worker.stop().await;
    let seen = fake.seen();
    let ones: Vec<&Seen> = seen.iter().filter(|s| s.seq == 1).collect();
    assert_eq!(ones.len(), 3, "{:?}", fake.seqs());
    assert!(
        ones.iter()
            .all(|s| s.body == ones[0].body && s.id == events[0].id)
    );
    // The schedule's first wait is 50 ms here, jittered 20 %.
    assert!(ones[1].at - ones[0].at >= Duration::from_millis(40));
    assert!(
        ones[2].at - ones[1].at >= Duration::from_millis(400),
        "Retry-After honoured: {:?}",
        ones[2].at - ones[1].at
    );
    assert_eq!(by_source(&seen)["a"], vec![1, 1, 1, 2], "2 waits for 1");
    // b did not wait for a.
    let b_done = seen.iter().filter(|s| s.source == "b").map(|s| s.at).max();
    assert!(b_done.unwrap() < ones[2].at);
    assert_eq!(store.sink_state("hook").unwrap().delivered, 4);
}

/// An event still failing at max_age is marked failed and its source moves on; a retry
/// gives it another attempt and clears the mark once delivered.
#[tokio::test]
async fn max_age_marks_failed_and_retry_delivers() {
    let (_d, store) = store();
    changes(&store, &["a", "a"]).await;
    let fake = Fake::with_delay(Duration::ZERO);
    fake.failing.lock().unwrap().insert(1);
    let mut opts = options(1);
    opts.schedule.max_age = Duration::from_millis(600);
    let worker = start(&store, &fake, opts);
    until("event 2 delivered past the failed 1", || {
        store.sink_state("hook").unwrap().delivered_through == 2
    })
    .await;
    let failed = store.sink_failed_list("hook").unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, 1);
    assert!(failed[0].1.attempts >= 2, "{failed:?}");
    assert_eq!(failed[0].1.last_error, "answered 500");
    let attempts_before = fake.seqs().iter().filter(|s| **s == 1).count();

    fake.failing.lock().unwrap().clear();
    let report = worker.retry().await.unwrap();
    assert_eq!(report.events, vec![1]);
    until("the mark cleared", || {
        store.sink_failed_list("hook").unwrap().is_empty()
    })
    .await;
    assert_eq!(
        fake.seqs().iter().filter(|s| **s == 1).count(),
        attempts_before + 1
    );
    let st = store.sink_state("hook").unwrap();
    assert_eq!((st.delivered, st.failed, st.failed_now), (2, 1, 0));
    // Nothing failed now: nothing to retry.
    assert!(worker.retry().await.unwrap().events.is_empty());
    worker.stop().await;
}

/// A replay sends every kept event from its start again, with the same bodies; one from
/// before the oldest kept event, or past the last, is refused and changes nothing.
#[tokio::test]
async fn replay_sends_kept_events_again_and_refuses_pruned_ones() {
    let (_d, store) = store();
    changes(&store, &["a", "b", "a", "b", "a"]).await;
    let fake = Fake::with_delay(Duration::ZERO);
    let worker = start(&store, &fake, options(2));
    until("every event", || {
        store.sink_state("hook").unwrap().delivered_through == 5
    })
    .await;
    let first: Vec<Seen> = fake.seen();

    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(
        store.prune_events(&["hook".to_string()], later, 2).unwrap(),
        2
    );
    let e = worker.replay(2).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "sink hook: cannot replay from event 2: the oldest event kept is 3 (older events were \
         pruned: events are kept node.events_retention_secs = 86400 s after every sink has them)"
    );
    let e = worker.replay(6).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "sink hook: cannot replay from event 6: the last event is 5"
    );
    assert_eq!(fake.seen().len(), 5, "a refused replay sends nothing");

    let report = worker.replay(3).await.unwrap();
    assert_eq!((report.from, report.through), (3, 5));
    until("3 to 5 again", || fake.seen().len() == 8).await;
    until("recorded", || {
        store.sink_state("hook").unwrap().delivered == 8
    })
    .await;
    worker.stop().await;
    let again = &fake.seen()[5..];
    let mut seqs: Vec<u64> = again.iter().map(|s| s.seq).collect();
    seqs.sort();
    assert_eq!(seqs, vec![3, 4, 5]);
    for s in again {
        let before = first.iter().find(|f| f.seq == s.seq).unwrap();
        assert_eq!(s.body, before.body, "event {} sent again as it was", s.seq);
    }
    assert_eq!(store.sink_state("hook").unwrap().delivered_through, 5);
}

/// Stopped while events are in flight and recorded only in part, a new worker picks up
/// after what was recorded: nothing is lost, and what was recorded is not sent again.
#[tokio::test]
async fn a_restarted_worker_resumes_after_what_was_recorded() {
    let (_d, store) = store();
    let sources: Vec<&str> = (0..30).map(|i| ["a", "b", "c"][i % 3]).collect();
    changes(&store, &sources).await;
    let fake = Fake::with_delay(Duration::from_millis(20));
    let worker = start(&store, &fake, options(3));
    until("some deliveries", || fake.seen().len() >= 10).await;
    worker.stop().await;
    let st = store.sink_state("hook").unwrap();
    let recorded = st.delivered_through;
    assert!((10..30).contains(&recorded), "{st:?}");
    let before = fake.seen().len();

    let worker = start(&store, &fake, options(3));
    until("the rest", || {
        store.sink_state("hook").unwrap().delivered_through == 30
    })
    .await;
    worker.stop().await;
    let after = &fake.seen()[before..];
    assert!(
        after.iter().all(|s| s.seq > recorded),
        "sent again below the watermark {recorded}: {:?}",
        after.iter().map(|s| s.seq).collect::<Vec<_>>()
    );
    let all: HashSet<u64> = fake.seqs().into_iter().collect();
    assert_eq!(all.len(), 30, "every event delivered");
}

fn message(uid: u32, raw: &[u8]) -> NewMessage {
    NewMessage {
        source: "a".into(),
        location: Location::Imap {
            folder: "INBOX".into(),
            uidvalidity: 7,
            uid,
        },
        raw: raw.to_vec(),
        internal_date: None,
        parsed: crate::parse::parse(raw),
        post_action: false,
        rematch: false,
    }
}

/// A message's raw bytes go inline up to max_raw_bytes with include_raw, else by URL on
/// the node's API base.
#[tokio::test]
async fn raw_bytes_go_inline_or_by_url() {
    let (_d, store) = store();
    let small = b"Subject: small\r\n\r\nhi\r\n".to_vec();
    let large = format!("Subject: large\r\n\r\n{}\r\n", "x".repeat(2000)).into_bytes();
    store.store(message(1, &small)).unwrap();
    store.store(message(2, &large)).unwrap();
    store.flush().await.unwrap();
    let fake = Fake::with_delay(Duration::ZERO);
    let mut opts = options(1);
    opts.include_raw = true;
    let worker = start(&store, &fake, opts);
    until("both", || fake.seen().len() == 2).await;
    worker.stop().await;
    let bodies: Vec<serde_json::Value> = fake
        .seen()
        .iter()
        .map(|s| serde_json::from_slice(&s.body).unwrap())
        .collect();
    use base64::Engine;
    let inline = base64::engine::general_purpose::STANDARD
        .decode(bodies[0]["data"]["raw_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(inline, small);
    assert!(bodies[0]["data"].get("raw_url").is_none());
    let id = store.iter_meta(None).nth(1).unwrap().unwrap().id;
    assert_eq!(
        bodies[1]["data"]["raw_url"],
        format!("https://node.example:9898/api/messages/{id}/raw")
    );
    assert!(bodies[1]["data"].get("raw_base64").is_none());
    assert_eq!(bodies[1]["data"]["subject"], "large");
}

/// Reading stops at the window: with one source's events waiting behind its head, no
/// more than [`WINDOW`] are held however many the outbox has.
#[tokio::test]
async fn reading_stops_at_the_window() {
    let (_d, store) = store();
    let n = WINDOW as u32 + 40;
    let batch: Vec<(NewMessage, bool)> = (1..=n)
        .map(|uid| {
            (
                message(uid, format!("Subject: {uid}\r\n\r\nx\r\n").as_bytes()),
                true,
            )
        })
        .collect();
    store.store_batch(batch).unwrap();
    store.flush().await.unwrap();
    let fake = Fake::with_delay(Duration::ZERO);
    let mut worker = Worker::new(options(4), store.clone(), fake);
    worker.resume().unwrap();
    worker.fill();
    assert_eq!(worker.held, WINDOW);
    assert_eq!(worker.read_through, WINDOW as u64);
    assert_eq!(worker.queues["a"].len(), WINDOW);
    // Done events recorded free the window for more.
    worker.queues.clear();
    for seq in 1..=10 {
        worker.done(seq, SinkOutcome::Delivered);
    }
    worker.record_all().await;
    assert_eq!(worker.held, WINDOW - 10);
    worker.fill();
    assert_eq!(worker.read_through, WINDOW as u64 + 10);
}

/// Events that become durable while the worker records its batch (its own flush makes
/// them durable along with its record) are read without any further commit: the worker
/// never sleeps with durable events past what it has read. Ingest-like: messages committed
/// one by one from another thread, made durable by the nudged flushes and the worker's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_made_durable_while_recording_are_read_without_another_commit() {
    for round in 0..4 {
        let (_d, store) = store();
        let fake = Fake::with_delay(Duration::ZERO);
        let worker = start(&store, &fake, options(1));
        let writer = {
            let store = store.clone();
            std::thread::spawn(move || {
                for uid in 1..=300 {
                    let raw = format!("Subject: m{uid}\r\n\r\nbody\r\n");
                    store.store(message(uid, raw.as_bytes())).unwrap();
                    std::thread::sleep(Duration::from_millis(3));
                }
            })
        };
        tokio::task::spawn_blocking(move || writer.join().unwrap())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.sink_state("hook").unwrap().delivered_through < 300 {
            assert!(
                Instant::now() < deadline,
                "round {round}: the worker stopped at {} of 300 (durable: {})",
                store.sink_state("hook").unwrap().delivered_through,
                store.last_event_seq()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        worker.stop().await;
        assert_eq!(fake.seen().len(), 300, "round {round}");
    }
}
