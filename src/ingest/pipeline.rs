//! The parse-and-store side of a session: fetched messages wait within a node-wide
//! read-ahead budget, are parsed, checksummed and compressed on the workers, and are stored
//! in transactions one at a time and in arrival order (a checkpoint never passes an
//! uncommitted message).

use std::sync::Arc;
use std::time::Instant;

use crate::parse;
use crate::store::{IngestStore, Location, NewMessage, StoreError, StoreOutcome};
use crate::telemetry;

use super::{CycleError, CycleReport, workers};

/// What is counted for a message once stored: size, whether it failed to parse, source.
pub(super) type Facts = Vec<(u64, bool, String)>;

/// The part of storing a batch done outside its transaction
/// ([`IngestStore::prepare_batch`]).
pub(super) fn prepare<S: IngestStore>(
    store: &S,
    msgs: Vec<(NewMessage, bool)>,
) -> Result<(Vec<S::Prepared>, Facts), StoreError> {
    let facts = msgs
        .iter()
        .map(|(m, _)| (m.raw.len() as u64, m.parsed.is_err(), m.source.clone()))
        .collect();
    Ok((store.prepare_batch(msgs)?, facts))
}

/// The transaction storing a batch ([`IngestStore::commit_batch`]), timed and counted.
pub(super) fn commit<S: IngestStore>(
    store: &S,
    (prepared, facts): (Vec<S::Prepared>, Facts),
    report: &mut CycleReport,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let outcomes = store.commit_batch(&prepared)?;
    telemetry::store_write(started.elapsed().as_secs_f64());
    for (outcome, (size, parse_failed, source)) in outcomes.into_iter().zip(facts) {
        match outcome {
            StoreOutcome::Stored(_) => {
                report.stored += 1;
                report.bytes += size;
                telemetry::message_stored(&source, size, parse_failed);
            }
            StoreOutcome::AlreadyStored(_) => {
                report.already += 1;
                telemetry::message_already_stored(&source);
            }
        }
    }
    Ok(())
}

/// Bytes of fetched messages that may wait for parse-and-store workers, node-wide: each
/// session's I/O side reads ahead while earlier messages are parsed and stored, and all of
/// them together hold at most this much (plus the message each is reading). Node-wide
/// because hundreds of concurrent sessions with a budget each would multiply it. Storing is
/// slower than fetching over any network, so a few MB keep the store busy; more is memory.
pub(super) const PIPELINE_BYTES: u32 = 16 * 1024 * 1024;

/// The node-wide read-ahead budget ([`PIPELINE_BYTES`]).
pub(super) fn read_ahead_budget() -> Arc<tokio::sync::Semaphore> {
    static BUDGET: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    BUDGET
        .get_or_init(|| Arc::new(tokio::sync::Semaphore::new(PIPELINE_BYTES as usize)))
        .clone()
}

/// A message's share of the read-ahead budget.
pub(super) fn budget_cost(bytes: u64) -> u32 {
    u32::try_from(bytes)
        .unwrap_or(u32::MAX)
        .clamp(1, PIPELINE_BYTES)
}

/// Takes a message's listed size from the read-ahead budget, before it is read, so a
/// session waiting for room holds no message in memory (hundreds of sessions each holding
/// one were most of a fan-out node's heap).
pub(super) async fn take_budget(
    listed: u64,
) -> Result<tokio::sync::OwnedSemaphorePermit, CycleError> {
    read_ahead_budget()
        .acquire_many_owned(budget_cost(listed))
        .await
        .map_err(|_| CycleError::Store(StoreError::Corrupt("read-ahead budget closed".into())))
}

/// The budget for a message of `len` bytes read with `permit`: the same permit when it is
/// large enough. A message larger than listed takes its full size before it goes on, waited
/// for holding nothing (sessions holding part of the budget while waiting for more could
/// wait for each other forever).
pub(super) async fn budget_for(
    permit: tokio::sync::OwnedSemaphorePermit,
    len: usize,
) -> Result<tokio::sync::OwnedSemaphorePermit, CycleError> {
    if budget_cost(len as u64) as usize <= permit.num_permits() {
        return Ok(permit);
    }
    drop(permit);
    take_budget(len as u64).await
}

/// A fetched message on its way to the parse-and-store worker.
pub(super) struct Fetched {
    pub(super) location: Location,
    pub(super) raw: Vec<u8>,
    pub(super) internal_date: Option<String>,
    pub(super) hold_checkpoint: bool,
    /// Read-ahead budget this message holds until it is stored.
    /// Held until the message is stored, so the budget bounds every message between the
    /// socket and the store (queued, parsed, or waiting for sled's transaction lock, which
    /// hundreds of concurrent sessions take one at a time).
    pub(super) budget: tokio::sync::OwnedSemaphorePermit,
}

/// Where the worker of [`fetch_batch`] stores what it is given.
pub(super) struct Destination {
    pub(super) source: String,
    pub(super) post_action: bool,
    /// See [`FolderAt::rematch_below`].
    pub(super) rematch_below: Option<u32>,
}

/// At most this many messages, or [`STORE_BATCH_BYTES`] of them, go into one store
/// transaction. A batch only takes what has already arrived, so it never waits for mail.
/// Small, because sled keeps every node a transaction replaces until the transaction ends:
/// measured storing the bench corpus, peak RSS was 127 MB one message per transaction,
/// 135 MB with 8 and 240 MB with 64, for no measurable gain in speed.
pub(super) const STORE_BATCH_MESSAGES: usize = 8;

pub(super) const STORE_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The store side of [`fetch_batch`]: hands the messages to the parse-and-store workers
/// ([`workers`]) in arrival order, the ones that arrived together as one batch and one
/// transaction (sled's per-transaction cost is high). Each batch is two jobs: parsing (with
/// checksums, compression and serialization), then its transaction. Up to one parse per
/// worker is in flight while the batch before them commits, so one busy mailbox keeps every
/// core working; transactions still run one at a time and in order (a checkpoint must never
/// pass an uncommitted message). Stops at the first store error (dropping the channel tells
/// the feeder to stop), after the transaction already running has ended.
pub(super) async fn parse_and_store<S: IngestStore>(
    store: Arc<S>,
    into: Arc<Destination>,
    mut rx: tokio::sync::mpsc::Receiver<Fetched>,
) -> Result<CycleReport, StoreError> {
    type Committed = Result<(Result<(), StoreError>, CycleReport), workers::WorkerFailed>;
    type Parsed<P> = Result<
        Result<((Vec<P>, Facts), Vec<tokio::sync::OwnedSemaphorePermit>), StoreError>,
        workers::WorkerFailed,
    >;
    type Job<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
    let mut report = CycleReport::default();
    // Batches being parsed, oldest first, and the transaction running (at most one).
    let mut parsing: std::collections::VecDeque<Job<Parsed<S::Prepared>>> = Default::default();
    let mut committing: Option<Job<Committed>> = None;
    let depth = workers::count();
    let mut more = true;
    let finish = |report: &mut CycleReport, done: Committed| -> Result<(), StoreError> {
        let (stored, part) = done.map_err(|e| StoreError::Worker(e.to_string()))?;
        report.add_stored(&part);
        stored
    };
    let outcome = loop {
        if !more && parsing.is_empty() {
            break Ok(());
        }
        tokio::select! {
            biased;
            done = async { committing.as_mut().expect("guarded").await }, if committing.is_some() => {
                committing = None;
                if let Err(e) = finish(&mut report, done) {
                    break Err(e);
                }
            }
            parsed = async { parsing.front_mut().expect("guarded").await },
                if committing.is_none() && !parsing.is_empty() =>
            {
                parsing.pop_front();
                let (prepared, budget) = match parsed {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => break Err(e),
                    Err(e) => break Err(StoreError::Worker(e.to_string())),
                };
                let store = store.clone();
                let span = tracing::Span::current();
                committing = Some(Box::pin(workers::submit(move || {
                    let _entered = span.enter();
                    let mut part = CycleReport::default();
                    let stored = commit(store.as_ref(), prepared, &mut part);
                    drop(budget);
                    (stored, part)
                })));
            }
            first = rx.recv(), if more && parsing.len() < depth => {
                let Some(first) = first else {
                    more = false;
                    continue;
                };
                let mut bytes = first.raw.len();
                let mut batch = vec![first];
                while batch.len() < STORE_BATCH_MESSAGES && bytes < STORE_BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(f) => {
                            bytes += f.raw.len();
                            batch.push(f);
                        }
                        Err(_) => break,
                    }
                }
                let store = store.clone();
                let into = into.clone();
                let span = tracing::Span::current();
                parsing.push_back(Box::pin(workers::submit(move || {
                    let _entered = span.enter();
                    // The read-ahead budget each message holds goes along until it is stored.
                    let (msgs, budget): (Vec<_>, Vec<_>) =
                        batch.into_iter().map(|f| into.message(f)).unzip();
                    prepare(store.as_ref(), msgs).map(|p| (p, budget))
                })));
            }
        }
    };
    // What is already in a transaction is counted, also when something after it failed.
    if let Some(last) = committing {
        let done = finish(&mut report, last.await);
        outcome.and(done)?;
    } else {
        outcome?;
    }
    Ok(report)
}

impl Destination {
    /// Parses a fetched message into what the store takes, with whether it moves the
    /// folder checkpoint.
    fn message(&self, f: Fetched) -> ((NewMessage, bool), tokio::sync::OwnedSemaphorePermit) {
        let parsed = parse::parse(&f.raw);
        if let Err(e) = &parsed {
            match &f.location {
                Location::Imap { folder, uid, .. } => {
                    tracing::warn!(source = %self.source, folder = %folder, uid, error = %e, "message stored raw: parse failed");
                }
                Location::Pop3 { uidl } => {
                    tracing::warn!(source = %self.source, uidl = %uidl, error = %e, "message stored raw: parse failed");
                }
            }
        }
        let rematch = match &f.location {
            Location::Imap { uid, .. } => self.rematch_below.is_some_and(|below| *uid < below),
            Location::Pop3 { .. } => false,
        };
        let msg = NewMessage {
            rematch,
            source: self.source.clone(),
            location: f.location,
            raw: f.raw,
            internal_date: f.internal_date,
            parsed,
            post_action: self.post_action,
        };
        ((msg, !f.hold_checkpoint), f.budget)
    }
}
