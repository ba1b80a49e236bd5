//! The delivery engine: one worker per sink takes the outbox's events in order and hands
//! each to the sink's [`Transport`] until the receiver has it.
//!
//! ## How a worker runs
//! - It resumes after the sink's watermark, passing over events done above it before a
//!   restart, and reads the durable events after it a page at a time. An event the sink
//!   does not want (`sources`, `events`) is recorded as skipped.
//! - **Order per source.** Each source has a queue; only its head is ever attempted, so a
//!   source's events reach the receiver in seq order, and a later one waits while an earlier
//!   one is retried. Heads of different sources run at once, up to `concurrency`.
//! - **Retries.** A failed attempt is retried on [`Schedule::after_failure`]'s terms (1 s
//!   doubling to `max_backoff_secs`, jittered, `Retry-After` honoured). Once the event is
//!   `max_age_secs` old (since its commit) a failed attempt marks it failed in the store
//!   (kept, visible, `sinks retry` sends it again), a warning names it, and its source's
//!   next event goes.
//! - **Bounded.** At most [`WINDOW`] events are held past the watermark (read and not yet
//!   recorded), so memory and the sink's record of done events above its watermark stay
//!   small however far behind it is. A source whose head keeps failing can fill the window;
//!   the others then wait until it gives up or succeeds.
//! - **Recorded in batches.** Deliveries and skips are written to the store every
//!   [`BATCH_DELAY`] or [`BATCH_EVENTS`] events, one flush each, not one per event. A crash
//!   before that delivers those events again: same id, same body (at least once).
//! - **Idle** when caught up: it waits on [`Store::event_watch`] for the next flush that
//!   makes events durable, on its retry timers and on its commands, never polls.
//! - **Stopped** by dropping its command sender: attempts in flight get [`STOP_GRACE`] to
//!   finish, what is done is recorded, anything cut off is delivered again after a restart.
//!
//! The worker is plain async code over a [`Store`] and a [`Transport`]; the actor side only
//! starts and stops it (`actors::sinks`), so it is tested with a transport of the tests' own.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::backoff::{Next, RandomJitter, Schedule};
use super::envelope;
use super::transport::{Delivery, DeliveryError, Transport};
use crate::store::{Event, EventKind, FailedDelivery, Rewind, Store, StoreError};
use crate::telemetry::{self, SinkOutcome};

/// Most events held past the watermark: read, and not yet recorded as done. Keeps the
/// sink's record of done ranges above its watermark well under
/// [`crate::store::MAX_SINK_GAPS`] (each range needs an event not done below it, and that
/// event is held here).
pub const WINDOW: usize = 512;
/// Events read from the outbox at a time.
const READ_PAGE: usize = 128;
/// Done events recorded together at the latest after this long...
pub const BATCH_DELAY: Duration = Duration::from_millis(200);
/// ...or once this many are waiting.
pub const BATCH_EVENTS: usize = 64;
/// How long attempts in flight may finish when the worker stops (at most the sink's
/// timeout).
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// After a store error, the worker tries again this much later.
const STORE_RETRY: Duration = Duration::from_secs(5);
/// Reads of upcoming events (the message, and its raw bytes when they go inline) running at
/// once, ahead of their attempts: an event's attempt then starts with its message in hand,
/// while the one before it is still in flight.
const READ_AHEAD: usize = 4;
/// Events of one source read ahead, behind the one in flight.
const READ_AHEAD_PER_SOURCE: usize = 2;
/// Bytes (raw bytes and bodies) held by events read ahead, at most (then more are read
/// ahead only as these go out); one event larger than this is still read, at its turn.
const READ_AHEAD_BYTES: usize = 32 * 1024 * 1024;
/// How often the oldest-pending-age gauge is refreshed while something is pending.
const GAUGE_TICK: Duration = Duration::from_secs(1);

/// Which events a sink takes: `events` and `sources` of its settings.
pub type Wants = Arc<dyn Fn(EventKind, &str) -> bool + Send + Sync>;

/// What a worker needs to know of its sink.
#[derive(Clone)]
pub struct SinkOptions {
    /// The NAME in `[sinks.NAME]`: the sink's record in the store and its metric label.
    pub name: String,
    /// Whether the sink takes an event of this kind about this source.
    pub wants: Wants,
    /// `include_raw`.
    pub include_raw: bool,
    /// `max_raw_bytes`.
    pub max_raw_bytes: u64,
    /// `concurrency`: attempts in flight across sources.
    pub concurrency: usize,
    /// `max_backoff_secs` and `max_age_secs`.
    pub schedule: Schedule,
    /// Where the node's API is reached from outside, without a trailing slash: `raw_url`
    /// is `{api_base}/api/messages/{id}/raw`.
    pub api_base: String,
}

impl std::fmt::Debug for SinkOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkOptions")
            .field("name", &self.name)
            .field("include_raw", &self.include_raw)
            .field("max_raw_bytes", &self.max_raw_bytes)
            .field("concurrency", &self.concurrency)
            .field("schedule", &self.schedule)
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

/// What an operator asks of a running worker.
#[derive(Debug)]
pub enum Command {
    /// Give every event the sink holds as failed another attempt.
    Retry {
        reply: oneshot::Sender<Result<RetryReport, CommandError>>,
    },
    /// Deliver every kept event from `from` on again.
    Replay {
        from: u64,
        /// `node.events_retention_secs`, for the refusal's message.
        retention_secs: u64,
        reply: oneshot::Sender<Result<ReplayReport, CommandError>>,
    },
}

/// `sinks retry`: the failed events queued for another attempt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RetryReport {
    pub sink: String,
    /// Their seqs, ascending.
    pub events: Vec<u64>,
}

/// `sinks replay`: the events to be delivered again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplayReport {
    pub sink: String,
    pub from: u64,
    /// The last event when the replay began; later ones come in their turn anyway.
    pub through: u64,
}

/// Why a command was not carried out. Names the sink, and for a refused replay the oldest
/// event kept and the key that decides how long events are kept.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("no sink {sink:?} in the configuration")]
    UnknownSink { sink: String },
    #[error("sink {sink} is not running ({why})")]
    NotRunning { sink: String, why: String },
    #[error(
        "sink {sink}: cannot replay from event {from}: {} (older events were pruned: events are kept node.events_retention_secs = {retention_secs} s after every sink has them)",
        match oldest {
            Some(oldest) => format!("the oldest event kept is {oldest}"),
            None => "no event is kept".to_string(),
        }
    )]
    BelowRetained {
        sink: String,
        from: u64,
        oldest: Option<u64>,
        retention_secs: u64,
    },
    #[error("sink {sink}: cannot replay from event {from}: the last event is {last}")]
    PastEnd { sink: String, from: u64, last: u64 },
    #[error("sink {sink}: {source}")]
    Store { sink: String, source: StoreError },
}

/// One event waiting in its source's queue.
#[derive(Debug)]
struct Pending {
    event: Event,
    /// Failed attempts so far.
    attempts: u32,
    /// Not attempted before this.
    not_before: Instant,
    /// When it was committed: its age decides when retrying stops.
    committed: chrono::DateTime<chrono::Utc>,
    /// The last attempt's error, for the failed mark.
    last_error: String,
    /// Read ahead of its attempt, and the bytes that holds.
    ready: Option<(Delivery, usize)>,
}

/// An event read ahead of its attempt.
struct ReadAhead {
    source: String,
    seq: u64,
    read: Result<Delivery, StoreError>,
}

/// A batch of done events being recorded in the background. The worker keeps the seqs: if
/// the task is lost (a panic), they go back into the next batch (marking an event done
/// twice counts it once).
struct Recording {
    /// Ends with the write that failed, if one did.
    task: tokio::task::JoinHandle<Option<(RecordStage, StoreError)>>,
    delivered: Vec<u64>,
    skipped: Vec<u64>,
}

/// Which write of a batch failed: the deliveries (then nothing of it is recorded) or the
/// skips (written after the deliveries).
#[derive(Clone, Copy)]
enum RecordStage {
    Deliveries,
    Skips,
}

impl RecordStage {
    fn doing(self) -> &'static str {
        match self {
            RecordStage::Deliveries => "recording deliveries",
            RecordStage::Skips => "recording skipped events",
        }
    }
}

/// What an attempt came to.
struct Attempt {
    source: String,
    seq: u64,
    result: Result<(), DeliveryError>,
}

/// One sink's delivery loop and what it holds between iterations.
pub struct Worker {
    opts: SinkOptions,
    store: Arc<Store>,
    transport: Arc<dyn Transport>,
    /// The last seq read from the outbox (or passed over).
    read_through: u64,
    /// Ranges done above the watermark before this worker started, still ahead of
    /// `read_through`: passed over when read.
    done_ahead: VecDeque<(u64, u64)>,
    /// Waiting events by source, oldest first; only the head is ever attempted.
    queues: BTreeMap<String, VecDeque<Pending>>,
    /// Sources whose head is in flight.
    busy: HashSet<String>,
    /// Seqs queued by `sinks retry` (below the watermark, held as failed).
    retrying: HashSet<u64>,
    attempts: JoinSet<Attempt>,
    /// Reads ahead in flight, and their seqs.
    reading: JoinSet<ReadAhead>,
    reading_seqs: HashSet<u64>,
    /// Bytes held by events read ahead.
    ready_bytes: usize,
    /// Events held: queued, in flight, or done and not yet recorded.
    held: usize,
    /// Done, to be recorded.
    delivered: Vec<u64>,
    skipped: Vec<u64>,
    /// When the oldest done event not yet being recorded was done.
    batch_since: Option<Instant>,
    /// The batch being recorded in the background.
    recording: Option<Recording>,
    /// Where the next start looks first, so every source gets its turn.
    cursor: Option<String>,
    /// After a store error: no reading or recording before this.
    store_pause: Option<Instant>,
    watch: tokio::sync::watch::Receiver<u64>,
}

impl Worker {
    pub fn new(opts: SinkOptions, store: Arc<Store>, transport: Arc<dyn Transport>) -> Worker {
        let watch = store.event_watch();
        Worker {
            opts,
            store,
            transport,
            read_through: 0,
            done_ahead: VecDeque::new(),
            queues: BTreeMap::new(),
            busy: HashSet::new(),
            retrying: HashSet::new(),
            attempts: JoinSet::new(),
            reading: JoinSet::new(),
            reading_seqs: HashSet::new(),
            ready_bytes: 0,
            held: 0,
            delivered: Vec::new(),
            skipped: Vec::new(),
            batch_since: None,
            recording: None,
            cursor: None,
            store_pause: None,
            watch,
        }
    }

    /// Delivers until `commands` is closed (the sender dropped), then stops cleanly.
    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let sink = self.opts.name.clone();
        while let Err(e) = self.resume() {
            tracing::error!(sink = %sink, error = %e, "sink cannot read its progress; trying again in 5 s");
            tokio::select! {
                () = tokio::time::sleep(STORE_RETRY) => {}
                // Asked to stop meanwhile: nothing was started, nothing to record.
                None = commands.recv() => return,
            }
        }
        tracing::info!(sink = %sink, from = self.read_through, "sink delivering");
        loop {
            self.fill();
            self.start_ready();
            self.read_ahead();
            self.record();
            self.publish_gauges();
            // Room to read: a flush since `fill` looked (the worker's own, in `record`,
            // makes the events committed meanwhile durable too) wakes it at once, as
            // `fill` marked only what it saw as seen. Waiting for "caught up" instead
            // slept for good when a flush landed in between and nothing else was due.
            let can_read = self.held < WINDOW && self.store_pause.is_none();
            let wake = self.next_wake();
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => break,
                },
                Some(done) = self.attempts.join_next(), if !self.attempts.is_empty() => {
                    match done {
                        Ok(attempt) => self.finish(attempt).await,
                        // A panic in a transport is a bug: the event stays at its queue's
                        // head and is attempted again after a pause.
                        Err(e) => tracing::error!(sink = %sink, error = %e, "sink delivery task failed"),
                    }
                }
                Some(read) = self.reading.join_next(), if !self.reading.is_empty() => {
                    // A read that panicked is a bug; its event is read at its attempt.
                    if let Ok(read) = read {
                        self.read_done(read);
                    }
                }
                batch = recording(&mut self.recording), if self.recording.is_some() => {
                    self.recorded(batch);
                }
                changed = self.watch.changed(), if can_read => {
                    if changed.is_err() {
                        // The store is gone: nothing more to read.
                        break;
                    }
                }
                () = sleep_until(wake) => {}
            }
        }
        self.stop().await;
        tracing::info!(sink = %sink, "sink stopped");
    }

    /// Starts from the store's record of the sink: after its watermark, passing over the
    /// events done above it.
    fn resume(&mut self) -> Result<(), StoreError> {
        let state = self.store.sink_state(&self.opts.name)?;
        self.read_through = state.delivered_through;
        self.done_ahead = self.store.sink_done_above(&self.opts.name)?.into();
        Ok(())
    }

    /// Reads events into the queues while the window has room.
    fn fill(&mut self) {
        if self.store_pause.is_some_and(|until| Instant::now() < until) {
            return;
        }
        self.store_pause = None;
        // Marks the current value seen: `changed()` wakes for the next flush only.
        let durable = *self.watch.borrow_and_update();
        while self.held < WINDOW && self.read_through < durable {
            let want = (WINDOW - self.held).min(READ_PAGE);
            let page = match self.store.events_after(self.read_through, want) {
                Ok(page) => page,
                Err(e) => {
                    self.store_failed("reading the outbox", &e);
                    return;
                }
            };
            let Some(last) = page.last().map(|e| e.seq) else {
                // Nothing durable past here after all (pruned under us cannot happen:
                // events past the watermark are kept).
                self.read_through = durable;
                break;
            };
            for event in page {
                self.take(event);
            }
            self.read_through = last;
        }
    }

    /// One event read from the outbox.
    fn take(&mut self, event: Event) {
        while self
            .done_ahead
            .front()
            .is_some_and(|(_, end)| *end < event.seq)
        {
            self.done_ahead.pop_front();
        }
        if self
            .done_ahead
            .front()
            .is_some_and(|(start, _)| *start <= event.seq)
        {
            return;
        }
        let kind = event.kind;
        if !(self.opts.wants)(kind, &event.source) {
            self.held += 1;
            self.done(event.seq, SinkOutcome::Skipped);
            return;
        }
        self.held += 1;
        let committed = committed_at(&event);
        self.queues
            .entry(event.source.clone())
            .or_default()
            .push_back(Pending {
                event,
                attempts: 0,
                not_before: Instant::now(),
                committed,
                last_error: String::new(),
                ready: None,
            });
    }

    /// Starts the heads that are due, up to `concurrency` in flight, beginning after the
    /// source started last so that every source gets its turn.
    fn start_ready(&mut self) {
        if self.attempts.len() >= self.opts.concurrency {
            return;
        }
        let now = Instant::now();
        let names: Vec<String> = match &self.cursor {
            Some(c) => self
                .queues
                .range::<String, _>((
                    std::ops::Bound::Excluded(c.clone()),
                    std::ops::Bound::Unbounded,
                ))
                .chain(self.queues.range::<String, _>(..=c.clone()))
                .map(|(name, _)| name.clone())
                .collect(),
            None => self.queues.keys().cloned().collect(),
        };
        for name in names {
            if self.attempts.len() >= self.opts.concurrency {
                break;
            }
            if self.busy.contains(&name) {
                continue;
            }
            let Some(head) = self.queues.get_mut(&name).and_then(|q| q.front_mut()) else {
                continue;
            };
            if head.not_before > now {
                continue;
            }
            let event = head.event.clone();
            let ready = head.ready.take().map(|(delivery, bytes)| {
                self.ready_bytes = self.ready_bytes.saturating_sub(bytes);
                delivery
            });
            self.busy.insert(name.clone());
            self.cursor = Some(name.clone());
            self.spawn_attempt(name, event, ready);
        }
    }

    /// Starts reading the next events of each source while their turn comes: the one
    /// behind the event in flight (or a head waiting for a free slot), within
    /// [`READ_AHEAD`] reads at once and [`READ_AHEAD_BYTES`] held.
    fn read_ahead(&mut self) {
        if self.reading.len() >= READ_AHEAD || self.ready_bytes >= READ_AHEAD_BYTES {
            return;
        }
        let mut wanted = Vec::new();
        for (name, queue) in &self.queues {
            let in_flight = usize::from(self.busy.contains(name));
            for p in queue.iter().skip(in_flight).take(READ_AHEAD_PER_SOURCE) {
                if p.ready.is_none() && !self.reading_seqs.contains(&p.event.seq) {
                    wanted.push((name.clone(), p.event.clone()));
                }
            }
            if self.reading.len() + wanted.len() >= READ_AHEAD {
                break;
            }
        }
        for (source, event) in wanted.into_iter().take(READ_AHEAD - self.reading.len()) {
            let store = self.store.clone();
            let opts = self.opts.clone();
            let transport = self.transport.clone();
            self.reading_seqs.insert(event.seq);
            self.reading.spawn_blocking(move || {
                let seq = event.seq;
                let read = prepare(&store, &opts, event).map(|mut delivery| {
                    delivery.prebuilt = transport.build(&delivery);
                    delivery
                });
                ReadAhead { source, seq, read }
            });
        }
    }

    /// An event read ahead: kept with it for its attempt, unless that has started already
    /// (and read it itself) or the event is gone (delivered, or a replay started over).
    fn read_done(&mut self, read: ReadAhead) {
        self.reading_seqs.remove(&read.seq);
        // A failed read is done again by the attempt, which reports it.
        let Ok(delivery) = read.read else {
            return;
        };
        let in_flight = self.busy.contains(&read.source);
        let Some(queue) = self.queues.get_mut(&read.source) else {
            return;
        };
        let Some((i, pending)) = queue
            .iter_mut()
            .enumerate()
            .find(|(_, p)| p.event.seq == read.seq)
        else {
            return;
        };
        if (i == 0 && in_flight) || pending.ready.is_some() {
            return;
        }
        let bytes = delivery_bytes(&delivery);
        self.ready_bytes += bytes;
        pending.ready = Some((delivery, bytes));
    }

    /// Starts an attempt; `ready` is the event read ahead, else the attempt reads it.
    fn spawn_attempt(&mut self, source: String, event: Event, ready: Option<Delivery>) {
        let store = self.store.clone();
        let transport = self.transport.clone();
        let opts = self.opts.clone();
        self.attempts.spawn(async move {
            let seq = event.seq;
            let built = match ready {
                Some(delivery) => Ok(Ok(delivery)),
                // Reading a message (and perhaps megabytes of raw bytes) is disk work.
                None => {
                    let reading = opts.clone();
                    tokio::task::spawn_blocking(move || prepare(&store, &reading, event)).await
                }
            };
            let result = match built {
                Ok(Ok(delivery)) => {
                    let started = std::time::Instant::now();
                    let result = transport.deliver(&delivery).await;
                    telemetry::sink_attempt(&opts.name, started.elapsed().as_secs_f64());
                    result
                }
                Ok(Err(e)) => Err(DeliveryError::transient(
                    "store",
                    format!("sink {}: reading event {seq}: {e}", opts.name),
                )),
                Err(e) => Err(DeliveryError::permanent(format!(
                    "sink {}: preparing event {seq} failed: {e}",
                    opts.name
                ))),
            };
            Attempt {
                source,
                seq,
                result,
            }
        });
    }

    /// An attempt came back.
    async fn finish(&mut self, attempt: Attempt) {
        self.busy.remove(&attempt.source);
        let Some(queue) = self.queues.get_mut(&attempt.source) else {
            return;
        };
        // A replay may have cleared the queue meanwhile: then this answer is not news.
        if queue.front().map(|p| p.event.seq) != Some(attempt.seq) {
            return;
        }
        match attempt.result {
            Ok(()) => {
                if let Some(head) = queue.pop_front() {
                    tracing::debug!(sink = %self.opts.name, event = %head.event.id, seq = head.event.seq, attempts = head.attempts + 1, "event delivered");
                }
                self.forget_empty(&attempt.source);
                self.done(attempt.seq, SinkOutcome::Delivered);
            }
            Err(e) => self.failed_attempt(&attempt.source, e).await,
        }
    }

    async fn failed_attempt(&mut self, source: &str, error: DeliveryError) {
        let Some(head) = self.queues.get_mut(source).and_then(|q| q.front_mut()) else {
            return;
        };
        head.attempts = head.attempts.saturating_add(1);
        head.last_error = error.detail.clone();
        let age = (chrono::Utc::now() - head.committed)
            .to_std()
            .unwrap_or(Duration::ZERO);
        let next = if error.permanent {
            Next::GiveUp
        } else {
            self.opts.schedule.after_failure(
                head.attempts,
                age,
                error.retry_after,
                &mut RandomJitter,
            )
        };
        match next {
            Next::RetryAfter(wait) => {
                head.not_before = Instant::now() + wait;
                let attempts = head.attempts;
                // The first failures of an event, then every 2^n-th: a receiver down for a
                // day does not fill the log.
                if attempts <= 2 || attempts.is_power_of_two() {
                    tracing::warn!(
                        sink = %self.opts.name,
                        event = %head.event.id,
                        seq = head.event.seq,
                        source = %source,
                        attempts,
                        kind = error.kind,
                        retry_in_ms = wait.as_millis() as u64,
                        "delivery failed, retrying: {}", error.detail
                    );
                } else {
                    tracing::debug!(sink = %self.opts.name, event = %head.event.id, seq = head.event.seq, attempts, "delivery failed, retrying: {}", error.detail);
                }
                telemetry::sink_events(&self.opts.name, SinkOutcome::Retried, 1);
            }
            Next::GiveUp => self.give_up(source).await,
        }
    }

    /// Marks the head of `source` failed and moves on to its next event.
    async fn give_up(&mut self, source: &str) {
        let Some(mut head) = self.queues.get_mut(source).and_then(|q| q.pop_front()) else {
            return;
        };
        if let Some((_, bytes)) = head.ready.take() {
            self.ready_bytes = self.ready_bytes.saturating_sub(bytes);
        }
        let failure = FailedDelivery {
            attempts: head.attempts,
            last_error: head.last_error.clone(),
            failed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        match self
            .store
            .sink_failed(&self.opts.name, head.event.seq, failure)
            .await
        {
            Ok(()) => {
                tracing::warn!(
                    sink = %self.opts.name,
                    event = %head.event.id,
                    seq = head.event.seq,
                    source = %source,
                    attempts = head.attempts,
                    last_error = %head.last_error,
                    "event marked failed: still not delivered at max_age_secs; `mailsluice sinks retry {}` sends it again",
                    self.opts.name
                );
                telemetry::sink_events(&self.opts.name, SinkOutcome::Failed, 1);
                self.held = self.held.saturating_sub(1);
                self.retrying.remove(&head.event.seq);
                self.forget_empty(source);
            }
            Err(e) => {
                // Not recorded: it stays at the head and is attempted again later.
                self.store_failed("marking an event failed", &e);
                let mut head = head;
                head.not_before = Instant::now() + STORE_RETRY;
                if let Some(q) = self.queues.get_mut(source) {
                    q.push_front(head);
                }
            }
        }
    }

    fn forget_empty(&mut self, source: &str) {
        if self.queues.get(source).is_some_and(VecDeque::is_empty) {
            self.queues.remove(source);
        }
    }

    /// An event is done: recorded with the next batch.
    fn done(&mut self, seq: u64, outcome: SinkOutcome) {
        match outcome {
            SinkOutcome::Skipped => self.skipped.push(seq),
            _ => self.delivered.push(seq),
        }
        self.batch_since.get_or_insert_with(Instant::now);
    }

    /// Starts recording the batch of done events when it is due: in the background (one
    /// flush for the deliveries, one for the skips), so attempts go on meanwhile; one batch
    /// at a time.
    fn record(&mut self) {
        let Some(since) = self.batch_since else {
            return;
        };
        if self.recording.is_some() || self.store_pause.is_some_and(|u| Instant::now() < u) {
            return;
        }
        let waiting = self.delivered.len() + self.skipped.len();
        if waiting >= BATCH_EVENTS || since.elapsed() >= BATCH_DELAY {
            self.start_recording();
        }
    }

    fn start_recording(&mut self) {
        let store = self.store.clone();
        let sink = self.opts.name.clone();
        let delivered = std::mem::take(&mut self.delivered);
        let skipped = std::mem::take(&mut self.skipped);
        self.batch_since = None;
        let (d, k) = (delivered.clone(), skipped.clone());
        let task = tokio::spawn(async move {
            if !d.is_empty()
                && let Err(e) = store.sink_delivered(&sink, &d).await
            {
                return Some((RecordStage::Deliveries, e));
            }
            if !k.is_empty()
                && let Err(e) = store.sink_skip(&sink, &k).await
            {
                return Some((RecordStage::Skips, e));
            }
            None
        });
        self.recording = Some(Recording {
            task,
            delivered,
            skipped,
        });
    }

    /// A batch's record came back: its events are no longer held; what was not recorded
    /// waits for the next batch, after a pause.
    fn recorded(
        &mut self,
        outcome: Result<Option<(RecordStage, StoreError)>, tokio::task::JoinError>,
    ) {
        let Some(Recording {
            delivered, skipped, ..
        }) = self.recording.take()
        else {
            return;
        };
        let failed = match outcome {
            Ok(failed) => failed,
            Err(e) => {
                tracing::error!(sink = %self.opts.name, error = %e, "sink recording task failed");
                self.delivered.extend(delivered);
                self.skipped.extend(skipped);
                self.store_pause = Some(Instant::now() + STORE_RETRY);
                self.batch_since.get_or_insert_with(Instant::now);
                return;
            }
        };
        let (recorded_delivered, recorded_skipped) = match &failed {
            None => (true, true),
            Some((RecordStage::Deliveries, _)) => (false, false),
            Some((RecordStage::Skips, _)) => (true, false),
        };
        if recorded_delivered {
            telemetry::sink_events(
                &self.opts.name,
                SinkOutcome::Delivered,
                delivered.len() as u64,
            );
            self.held = self.held.saturating_sub(delivered.len());
            for seq in &delivered {
                self.retrying.remove(seq);
            }
        } else {
            self.delivered.extend(delivered);
        }
        if recorded_skipped {
            telemetry::sink_events(&self.opts.name, SinkOutcome::Skipped, skipped.len() as u64);
            self.held = self.held.saturating_sub(skipped.len());
        } else {
            self.skipped.extend(skipped);
        }
        if let Some((stage, e)) = failed {
            self.store_failed(stage.doing(), &e);
            self.batch_since.get_or_insert_with(Instant::now);
        }
    }

    /// Records every done event now: waits for the batch in flight, then records the rest.
    /// Afterwards `batch_since` is `None` unless the store failed.
    async fn record_all(&mut self) {
        if self.recording.is_some() {
            let outcome = recording(&mut self.recording).await;
            self.recorded(outcome);
        }
        if self.delivered.is_empty() && self.skipped.is_empty() {
            self.batch_since = None;
            return;
        }
        self.start_recording();
        let outcome = recording(&mut self.recording).await;
        self.recorded(outcome);
    }

    fn store_failed(&mut self, doing: &str, e: &StoreError) {
        tracing::error!(sink = %self.opts.name, error = %e, "sink store error while {doing}; trying again in 5 s");
        self.store_pause = Some(Instant::now() + STORE_RETRY);
    }

    /// The next moment something is due without an outside event: a retry, the batch, the
    /// gauge, the end of a store pause.
    fn next_wake(&self) -> Option<Instant> {
        let now = Instant::now();
        let retry = if self.attempts.len() < self.opts.concurrency {
            self.queues
                .iter()
                .filter(|(name, _)| !self.busy.contains(*name))
                .filter_map(|(_, q)| q.front().map(|p| p.not_before))
                .min()
        } else {
            None
        };
        // While the store is paused after an error, the pause's end is the batch's turn.
        let paused = self.store_pause.is_some_and(|until| until > now);
        let batch = self
            .batch_since
            .filter(|_| !paused && self.recording.is_none())
            .map(|since| since + BATCH_DELAY);
        let gauge = (!self.queues.is_empty()).then(|| now + GAUGE_TICK);
        [retry, batch, gauge, self.store_pause]
            .into_iter()
            .flatten()
            .min()
    }

    fn publish_gauges(&self) {
        let durable = *self.watch.borrow();
        let unread_done: u64 = self
            .done_ahead
            .iter()
            .map(|(s, e)| {
                e.min(&durable)
                    .saturating_sub((*s).max(self.read_through + 1))
                    + 1
            })
            .sum();
        let unread = durable
            .saturating_sub(self.read_through)
            .saturating_sub(unread_done);
        let queued: usize = self.queues.values().map(VecDeque::len).sum();
        let now = chrono::Utc::now();
        let oldest = self
            .queues
            .values()
            .filter_map(VecDeque::front)
            .map(|p| (now - p.committed).num_milliseconds().max(0))
            .max()
            .unwrap_or(0);
        telemetry::sink_backlog(
            &self.opts.name,
            unread + queued as u64,
            oldest as f64 / 1000.0,
        );
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Retry { reply } => {
                let answer = self.retry();
                let _ = reply.send(answer);
            }
            Command::Replay {
                from,
                retention_secs,
                reply,
            } => {
                let answer = self.replay(from, retention_secs).await;
                let _ = reply.send(answer);
            }
        }
    }

    /// Queues every event held as failed for another attempt, each in its source's queue
    /// in seq order (behind an attempt in flight). Its failed mark stays until it is
    /// delivered, so a crash in between loses nothing. Its age still counts from its
    /// commit: one that fails again is marked failed again at once.
    fn retry(&mut self) -> Result<RetryReport, CommandError> {
        let sink = self.opts.name.clone();
        let store_error = |source| CommandError::Store {
            sink: sink.clone(),
            source,
        };
        let failed = self.store.sink_failed_list(&sink).map_err(store_error)?;
        let mut events = Vec::new();
        for (seq, failure) in failed {
            if self.retrying.contains(&seq) {
                continue;
            }
            // A failed event is never pruned; gone would mean the mark outlived it.
            let Some(event) = self.store.event(seq).map_err(store_error)? else {
                continue;
            };
            let source = event.source.clone();
            let busy = self.busy.contains(&source);
            let queue = self.queues.entry(source).or_default();
            let first_free = usize::from(busy && !queue.is_empty());
            let at = queue
                .iter()
                .skip(first_free)
                .position(|p| p.event.seq > seq)
                .map_or(queue.len(), |i| i + first_free);
            let committed = committed_at(&event);
            queue.insert(
                at,
                Pending {
                    event,
                    attempts: failure.attempts,
                    not_before: Instant::now(),
                    committed,
                    last_error: failure.last_error,
                    ready: None,
                },
            );
            self.retrying.insert(seq);
            self.held += 1;
            events.push(seq);
        }
        tracing::info!(sink = %sink, events = events.len(), "failed events queued for another attempt");
        Ok(RetryReport { sink, events })
    }

    /// Delivers every kept event from `from` on again: attempts in flight are cut off (and
    /// sent again in their turn), what is done is recorded, the store rewinds the sink and
    /// the worker starts over from there.
    async fn replay(
        &mut self,
        from: u64,
        retention_secs: u64,
    ) -> Result<ReplayReport, CommandError> {
        let sink = self.opts.name.clone();
        let refused = |rewind: Rewind| match rewind {
            Rewind::BelowRetained { oldest } => Some(CommandError::BelowRetained {
                sink: sink.clone(),
                from,
                oldest,
                retention_secs,
            }),
            Rewind::PastEnd { last } => Some(CommandError::PastEnd {
                sink: sink.clone(),
                from,
                last,
            }),
            Rewind::Rewound { .. } => None,
        };
        // Refused before anything is disturbed, when it can be told already.
        let last = self.store.last_event_seq();
        let oldest = self
            .store
            .first_event_seq()
            .map_err(|source| CommandError::Store {
                sink: sink.clone(),
                source,
            })?;
        if from > last {
            return Err(CommandError::PastEnd { sink, from, last });
        }
        if oldest.is_none_or(|o| from < o) {
            return Err(CommandError::BelowRetained {
                sink,
                from,
                oldest,
                retention_secs,
            });
        }
        self.attempts.abort_all();
        while self.attempts.join_next().await.is_some() {}
        self.busy.clear();
        self.record_all().await;
        if self.batch_since.is_some() {
            return Err(CommandError::NotRunning {
                sink,
                why: "its store writes fail; see the log".into(),
            });
        }
        let rewound = self
            .store
            .sink_rewind(&sink, from)
            .await
            .map_err(|source| CommandError::Store {
                sink: sink.clone(),
                source,
            })?;
        if let Some(e) = refused(rewound) {
            return Err(e);
        }
        self.queues.clear();
        self.ready_bytes = 0;
        self.retrying.clear();
        self.held = 0;
        self.cursor = None;
        self.resume().map_err(|source| CommandError::Store {
            sink: sink.clone(),
            source,
        })?;
        tracing::info!(sink = %sink, from, through = last, "replay: delivering events again");
        Ok(ReplayReport {
            sink,
            from,
            through: last,
        })
    }

    /// Lets attempts in flight finish (bounded), records what is done.
    async fn stop(&mut self) {
        let grace = tokio::time::sleep(STOP_GRACE);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = self.attempts.join_next() => match next {
                    Some(Ok(attempt)) => {
                        if attempt.result.is_ok() {
                            self.busy.remove(&attempt.source);
                            if let Some(q) = self.queues.get_mut(&attempt.source)
                                && q.front().map(|p| p.event.seq) == Some(attempt.seq)
                            {
                                q.pop_front();
                                self.done(attempt.seq, SinkOutcome::Delivered);
                            }
                        }
                    }
                    Some(Err(_)) => {}
                    None => break,
                },
                () = &mut grace => {
                    self.attempts.abort_all();
                    break;
                }
            }
        }
        self.record_all().await;
        telemetry::sink_backlog(&self.opts.name, 0, 0.0);
    }
}

/// How the batch being recorded ended, once it has; never without one.
async fn recording(
    running: &mut Option<Recording>,
) -> Result<Option<(RecordStage, StoreError)>, tokio::task::JoinError> {
    match running {
        Some(r) => (&mut r.task).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When an event was committed; now, for a timestamp that does not parse (it was written
/// by this program, so that is a bug, and "young" keeps retrying rather than giving up).
fn committed_at(event: &Event) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(&event.timestamp)
        .map(|t| t.with_timezone(&chrono::Utc))
        .unwrap_or_else(|_| chrono::Utc::now())
}

/// What an event read ahead holds in memory, roughly: its raw bytes and bodies.
fn delivery_bytes(d: &Delivery) -> usize {
    let bodies = d
        .message
        .as_ref()
        .and_then(|m| m.parsed.as_ref())
        .map_or(0, |p| {
            p.text_body.as_ref().map_or(0, String::len)
                + p.html_body.as_ref().map_or(0, String::len)
        });
    let built = d.prebuilt.as_ref().map_or(0, |p| p.body.len());
    d.raw.as_ref().map_or(0, |r| r.len()) + bodies + built + 1024
}

/// Reads what the envelope of `event` is built from: the stored message, and its raw bytes
/// when they go inline (so a message without them costs no read of its bytes).
fn prepare(store: &Store, opts: &SinkOptions, event: Event) -> Result<Delivery, StoreError> {
    let message = match event.message {
        Some(id) if event.kind == EventKind::MessageStored => store.meta(id)?,
        _ => None,
    };
    let (inline, raw, raw_url) = match &message {
        Some(meta) => {
            let inline = envelope::raw_inline(meta, opts.include_raw, opts.max_raw_bytes);
            let raw = if inline {
                store.raw(meta.id)?.map(Arc::new)
            } else {
                None
            };
            let url = format!("{}/api/messages/{}/raw", opts.api_base, meta.id);
            (inline, raw, Some(url))
        }
        None => (false, None, None),
    };
    Ok(Delivery {
        event,
        message,
        raw,
        inline,
        raw_url,
        prebuilt: None,
    })
}

#[cfg(test)]
mod tests;
