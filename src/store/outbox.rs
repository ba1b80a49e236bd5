//! The outbox: an event for every newly stored message and every announced change of a
//! source's state, in commit order, and each sink's progress through them.
//!
//! Message events are written by [`Store::commit_batch`] in the transaction that stores the
//! message, so a message and its event are on disk together or not at all. What readers
//! (sinks, `/api/events`) see is bounded by what is durable: an event is visible only once
//! a flush has covered it (see [`Store::event_watch`]). A reader handed an event that a
//! crash then took back could see its seq given again to another event, and would have
//! announced mail the store does not hold.
//!
//! Sink state is small by construction: a watermark, counters, the events done above the
//! watermark as ranges, and one record per failed event (see [`SinkState`]).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{Store, StoreError, abort};

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "message.stored")]
    MessageStored,
    #[serde(rename = "source.state_changed")]
    SourceStateChanged,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::MessageStored => "message.stored",
            EventKind::SourceStateChanged => "source.state_changed",
        }
    }
}

/// A source's state moved from one to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    pub from: String,
    pub to: String,
    /// Why, as the operator reads it (the source's last error); never a secret.
    pub reason: Option<String>,
}

/// One entry of the outbox (the `events` tree, JSON). The envelope receivers get is built
/// from it at delivery time; the outbox holds no mail bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the outbox, from 1, in commit order; never given twice.
    pub seq: u64,
    /// `evt_` + 32 hex digits ([`event_id`]): the same for the same message or change on
    /// every node and every delivery attempt.
    pub id: String,
    pub kind: EventKind,
    pub source: String,
    /// When it was committed (RFC 3339, UTC, milliseconds).
    pub timestamp: String,
    /// `message.stored`: the message's store id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<u64>,
    /// `source.state_changed`: the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateChange>,
}

/// A `message.stored` event as the commit writes it: the same JSON as [`Event`] (a test
/// holds them together), borrowed from the prepared message so the commit copies nothing.
#[derive(Serialize)]
pub(super) struct MessageEventRecord<'a> {
    pub(super) seq: u64,
    pub(super) id: &'a str,
    pub(super) kind: EventKind,
    pub(super) source: &'a str,
    pub(super) timestamp: &'a str,
    pub(super) message: u64,
}

/// What an event's id is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKey<'a> {
    Imap {
        source: &'a str,
        folder: &'a str,
        uidvalidity: u32,
        uid: u32,
    },
    Pop3 {
        source: &'a str,
        uidl: &'a str,
    },
    StateChange {
        source: &'a str,
        from: &'a str,
        to: &'a str,
        at_millis: i64,
    },
}

/// The event id: `"evt_"` + lowercase hex of the first 16 bytes of SHA-256 over
/// - IMAP message: `message.stored\0imap\0{source}\0{folder}\0{uidvalidity}\0{uid}`
/// - POP3 message: `message.stored\0pop3\0{source}\0{uidl}`
/// - state change: `source.state_changed\0{source}\0{from}\0{to}\0{at_unix_millis}`
///
/// (numbers in decimal). It depends only on where the message is on its server (or on the
/// change), never on this node's store: receivers deduplicate by it (`webhook-id`,
/// `Nats-Msg-Id`), so it must never change.
pub fn event_id(key: &EventKey) -> String {
    let text = match key {
        EventKey::Imap {
            source,
            folder,
            uidvalidity,
            uid,
        } => format!("message.stored\0imap\0{source}\0{folder}\0{uidvalidity}\0{uid}"),
        EventKey::Pop3 { source, uidl } => format!("message.stored\0pop3\0{source}\0{uidl}"),
        EventKey::StateChange {
            source,
            from,
            to,
            at_millis,
        } => format!("source.state_changed\0{source}\0{from}\0{to}\0{at_millis}"),
    };
    let digest = Sha256::digest(text.as_bytes());
    format!("evt_{}", hex::encode(&digest[..16]))
}

/// An event timestamp: RFC 3339, UTC, milliseconds (`2024-05-01T09:30:00.250Z`).
pub(super) fn timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// How far the outbox is written and how far it is durable. Shared with the flusher, which
/// moves `durable` after each flush.
pub(super) struct EventProgress {
    /// The last seq written (perhaps not yet on disk).
    committed: AtomicU64,
    /// The last seq on disk: what readers may see, and what [`Store::event_watch`] hands out.
    durable: tokio::sync::watch::Sender<u64>,
}

impl EventProgress {
    /// Everything up to `last` is on disk already (at open).
    pub(super) fn new(last: u64) -> EventProgress {
        EventProgress {
            committed: AtomicU64::new(last),
            durable: tokio::sync::watch::Sender::new(last),
        }
    }

    /// Events up to `seq` are written. Called under the commit lock, so it only grows.
    pub(super) fn committed(&self, seq: u64) {
        self.committed.store(seq, Ordering::Release);
    }

    /// Read when a flush starts: everything written by then is what it makes durable.
    pub(super) fn flush_starts(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// A flush that started at `upto` ([`EventProgress::flush_starts`]) succeeded.
    pub(super) fn flushed(&self, upto: u64) {
        self.durable.send_if_modified(|d| {
            let moved = upto > *d;
            if moved {
                *d = upto;
            }
            moved
        });
    }

    fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Whether anyone waits for new events (a sink, a long poll): then a commit that adds
    /// events nudges a flush, so they see them a moment later, not at the writer's next
    /// flush (ingest flushes per folder: a large backfill would hold every event back).
    pub(super) fn has_readers(&self) -> bool {
        self.durable.receiver_count() > 0
    }
}

/// Key of the `outbox` tree holding the largest seq ever pruned (u64 BE). Seqs continue
/// after the largest of it and the last key of `events`: pruning may empty the tree.
const PRUNED_THROUGH: &[u8] = b"pruned_through";

/// The last seq ever given in a store: the last event kept, or the last pruned.
pub(super) fn last_seq(events: &sled::Tree, outbox: &sled::Tree) -> Result<u64, StoreError> {
    let kept = match events.last()? {
        Some((k, _)) => seq_of(&k)?,
        None => 0,
    };
    let pruned = match outbox.get(PRUNED_THROUGH)? {
        Some(v) => seq_of(&v)?,
        None => 0,
    };
    Ok(kept.max(pruned))
}

fn seq_of(bytes: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("event seq of {} bytes", bytes.len())))?;
    Ok(u64::from_be_bytes(arr))
}

fn decode_event(key: &[u8], value: &[u8]) -> Result<Event, StoreError> {
    let seq = seq_of(key)?;
    let event: Event = serde_json::from_slice(value)
        .map_err(|e| StoreError::Corrupt(format!("event {seq}: {e}")))?;
    if event.seq != seq {
        return Err(StoreError::Corrupt(format!(
            "event {seq} says it is event {}",
            event.seq
        )));
    }
    Ok(event)
}

/// Longest reason or delivery error kept, in bytes (a server's reply can be long).
const TEXT_MAX_BYTES: usize = 1024;

fn capped(text: &str) -> String {
    if text.len() <= TEXT_MAX_BYTES {
        return text.to_string();
    }
    let mut end = TEXT_MAX_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Most gaps a sink may leave above its watermark (ranges of events done above it). The
/// delivery engine keeps at most a window of events in flight past the watermark, far
/// fewer than this; reaching it is a bug there, refused here so the sink's record (rewritten
/// on every batch) stays small.
pub const MAX_SINK_GAPS: usize = 1024;

/// One sink's progress through the outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkState {
    /// Every event with a seq up to this one was delivered, failed for good, or is not
    /// wanted by the sink. After a crash, delivery resumes after it: events above it that
    /// were delivered before the crash are delivered again (same id, same body).
    pub delivered_through: u64,
    /// Events delivered (one retried or replayed counts again; one delivered again after a
    /// crash does not).
    pub delivered: u64,
    /// Events passed over: not wanted by this sink.
    pub skipped: u64,
    /// Events marked failed, ever.
    pub failed: u64,
    /// Failed marks held now ([`Store::sink_failed_list`]).
    pub failed_now: u64,
    /// Events above the watermark already done (delivered, skipped or failed); the
    /// watermark moves past them once the gap below them closes.
    pub done_above: u64,
}

/// What [`Store::sink_rewind`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewind {
    /// The sink delivers again from `from` on; its watermark is now this.
    Rewound { delivered_through: u64 },
    /// `from` is below the oldest event still kept (`None`: none is kept); events before
    /// that one were pruned and cannot be delivered again.
    BelowRetained { oldest: Option<u64> },
    /// `from` is past the last event: there is nothing to deliver again.
    PastEnd { last: u64 },
}

/// Why a sink gave up on an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedDelivery {
    pub attempts: u32,
    /// The receiver's answer or the transport error (capped; never a secret).
    pub last_error: String,
    /// RFC 3339.
    pub failed_at: String,
}

/// A sink's record in the `sinks` tree (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct SinkRecord {
    delivered_through: u64,
    /// Seqs done above `delivered_through`: inclusive ranges, ascending, apart from each
    /// other and from the watermark (the first starts past `delivered_through + 1`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ahead: Vec<(u64, u64)>,
    #[serde(default)]
    delivered: u64,
    #[serde(default)]
    skipped: u64,
    #[serde(default)]
    failed: u64,
    /// Failed marks held now (entries of `sink_failed`), so a batch of deliveries looks
    /// for marks to clear only when there are some.
    #[serde(default)]
    failed_now: u64,
}

impl SinkRecord {
    /// Records `seq` as done. False when it was done already (at or below the watermark,
    /// or in a range above it).
    fn mark_done(&mut self, seq: u64) -> bool {
        if seq <= self.delivered_through {
            return false;
        }
        // The first range ending at or after seq - 1 (touching or past it).
        let i = self
            .ahead
            .partition_point(|&(_, end)| end.saturating_add(1) < seq);
        match self.ahead.get(i).copied() {
            Some((start, end)) if start <= seq && seq <= end => return false,
            Some((start, end)) if end.saturating_add(1) == seq => {
                // Extends this range up; it may now touch the next one.
                self.ahead[i].1 = seq;
                if let Some(&(next_start, next_end)) = self.ahead.get(i + 1)
                    && next_start == seq + 1
                {
                    self.ahead[i] = (start, next_end);
                    self.ahead.remove(i + 1);
                }
            }
            Some((start, _)) if start == seq + 1 => self.ahead[i].0 = seq,
            _ => self.ahead.insert(i, (seq, seq)),
        }
        // Only the first range can close the gap above the watermark.
        if let Some(&(start, end)) = self.ahead.first()
            && start == self.delivered_through + 1
        {
            self.delivered_through = end;
            self.ahead.remove(0);
        }
        true
    }

    /// Undoes everything from `from` on: the watermark drops below it (when above), and
    /// ranges done above the watermark keep only their part below it.
    fn rewind(&mut self, from: u64) {
        let below = from.saturating_sub(1);
        if self.delivered_through > below {
            self.delivered_through = below;
            // Every range lay above the old watermark, so above `below` too.
            self.ahead.clear();
            return;
        }
        self.ahead.retain(|&(start, _)| start < from);
        if let Some(last) = self.ahead.last_mut() {
            last.1 = last.1.min(below);
        }
    }

    fn done_above(&self) -> u64 {
        self.ahead.iter().map(|(s, e)| e - s + 1).sum()
    }

    fn state(&self) -> SinkState {
        SinkState {
            delivered_through: self.delivered_through,
            delivered: self.delivered,
            skipped: self.skipped,
            failed: self.failed,
            failed_now: self.failed_now,
            done_above: self.done_above(),
        }
    }
}

fn failed_prefix(sink: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(sink.len() + 1);
    k.extend_from_slice(sink.as_bytes());
    k.push(0);
    k
}

/// `sink\0` + seq (u64 BE): a sink's failed marks sort by seq.
fn failed_key(sink: &str, seq: u64) -> Vec<u8> {
    let mut k = failed_prefix(sink);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn decode_record(sink: &str, v: &[u8]) -> Result<SinkRecord, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt(format!("sink {sink}: {e}")))
}

fn encode<T: Serialize>(what: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(what).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn sink_error(sink: &str, what: String) -> StoreError {
    StoreError::Sink {
        sink: sink.to_string(),
        what,
    }
}

impl Store {
    /// A receiver of the last durable seq: it changes when a flush has made new events
    /// durable (ingest flushes after each folder, before any server change, and at the end
    /// of every session; a state change is flushed as it is written). A reader waits on it
    /// instead of polling. Events are handed out only once durable: an event delivered and
    /// then lost in a crash would have announced a message the store does not hold, and
    /// its seq would be given again to another event.
    pub fn event_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.progress.durable.subscribe()
    }

    /// The last seq given to a durable event; 0 when there was none. It stays when pruning
    /// empties the outbox.
    pub fn last_event_seq(&self) -> u64 {
        self.progress.durable()
    }

    /// The oldest event still kept (and durable); `None` when there is none.
    pub fn first_event_seq(&self) -> Result<Option<u64>, StoreError> {
        let durable = self.progress.durable();
        match self.events.first()? {
            Some((k, _)) => Ok(Some(seq_of(&k)?).filter(|seq| *seq <= durable)),
            None => Ok(None),
        }
    }

    /// Up to `limit` durable events with a seq above `after`, in seq order. Seeks to
    /// `after` by key: a page far into the outbox costs what the first one costs.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let durable = self.progress.durable();
        if after >= durable || limit == 0 {
            return Ok(Vec::new());
        }
        let from = (after + 1).to_be_bytes();
        let to = durable.to_be_bytes();
        self.events
            .range(from..=to)
            .take(limit)
            .map(|item| {
                let (k, v) = item?;
                decode_event(&k, &v)
            })
            .collect()
    }

    /// The durable event `seq`, if still kept.
    pub fn event(&self, seq: u64) -> Result<Option<Event>, StoreError> {
        if seq > self.progress.durable() {
            return Ok(None);
        }
        let key = seq.to_be_bytes();
        self.events
            .get(key)?
            .map(|v| decode_event(&key, &v))
            .transpose()
    }

    /// Writes a `source.state_changed` event (`from` and `to` are state names, e.g.
    /// `healthy`, `needs_reauth`) and returns once it is durable. Seqs are given under the
    /// commit lock, so they interleave with message events in commit order.
    pub async fn append_state_event(
        &self,
        source: &str,
        from: &str,
        to: &str,
        reason: Option<&str>,
    ) -> Result<Event, StoreError> {
        let event = self.write_state_event(source, from, to, reason)?;
        self.flush().await?;
        Ok(event)
    }

    fn write_state_event(
        &self,
        source: &str,
        from: &str,
        to: &str,
        reason: Option<&str>,
    ) -> Result<Event, StoreError> {
        let mut seqs = self
            .commits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The time is part of the id: two changes of one source never share a millisecond,
        // so A→B, B→A, A→B in quick succession are three ids.
        let at_millis = chrono::Utc::now()
            .timestamp_millis()
            .max(seqs.last_state_millis + 1);
        let at = chrono::DateTime::from_timestamp_millis(at_millis)
            .ok_or_else(|| StoreError::Corrupt(format!("time {at_millis} ms")))?;
        let event = Event {
            seq: seqs.next_seq,
            id: event_id(&EventKey::StateChange {
                source,
                from,
                to,
                at_millis,
            }),
            kind: EventKind::SourceStateChanged,
            source: source.to_string(),
            timestamp: timestamp(at),
            message: None,
            state: Some(StateChange {
                from: from.to_string(),
                to: to.to_string(),
                reason: reason.map(capped),
            }),
        };
        // One key: atomic on its own.
        self.events
            .insert(event.seq.to_be_bytes(), encode(&event)?)?;
        seqs.next_seq += 1;
        seqs.last_state_millis = at_millis;
        self.progress.committed(event.seq);
        Ok(event)
    }

    /// Deletes up to `max` events from the oldest on, each only when it is older than
    /// `older_than`, at or below the watermark of every sink in `sinks` (the configured
    /// ones) and failed in none of them. Stops at the first event that must stay: events
    /// are in seq order. Returns how many went. The largest seq pruned is kept, so seqs
    /// continue after it even when the outbox is left empty.
    pub fn prune_events(
        &self,
        sinks: &[String],
        older_than: chrono::DateTime<chrono::Utc>,
        max: usize,
    ) -> Result<usize, StoreError> {
        let _retention = self
            .retention
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut limit = self.progress.durable();
        for sink in sinks {
            limit = limit.min(self.sink_record(sink)?.delivered_through);
            if let Some((k, _)) = self
                .sink_failed
                .scan_prefix(failed_prefix(sink))
                .next()
                .transpose()?
            {
                let first_failed = seq_of(&k[sink.len() + 1..])?;
                limit = limit.min(first_failed.saturating_sub(1));
            }
        }
        if limit == 0 || max == 0 {
            return Ok(0);
        }
        let mut doomed = Vec::new();
        for item in self.events.range(..=limit.to_be_bytes()).take(max) {
            let (k, v) = item?;
            let event = decode_event(&k, &v)?;
            let at = chrono::DateTime::parse_from_rfc3339(&event.timestamp)
                .map_err(|e| StoreError::Corrupt(format!("event {}: timestamp: {e}", event.seq)))?;
            if at >= older_than {
                break;
            }
            doomed.push(k);
        }
        let Some(last) = doomed.last() else {
            return Ok(0);
        };
        let last = last.clone();
        (&self.events, &self.outbox)
            .transaction(|(events, outbox)| {
                for k in &doomed {
                    events.remove(k)?;
                }
                let before = match outbox.get(PRUNED_THROUGH)? {
                    Some(v) => seq_of(&v).map_err(abort)?,
                    None => 0,
                };
                if seq_of(&last).map_err(abort)? > before {
                    outbox.insert(PRUNED_THROUGH, &last)?;
                }
                Ok(())
            })
            .map_err(unwrap_tx)?;
        Ok(doomed.len())
    }

    // --- Sinks ---

    /// A sink's progress; a sink never seen starts at the beginning (watermark 0).
    pub fn sink_state(&self, sink: &str) -> Result<SinkState, StoreError> {
        Ok(self.sink_record(sink)?.state())
    }

    fn sink_record(&self, sink: &str) -> Result<SinkRecord, StoreError> {
        match self.sinks.get(sink)? {
            Some(v) => decode_record(sink, &v),
            None => Ok(SinkRecord::default()),
        }
    }

    /// The sinks with a record.
    pub fn sink_names(&self) -> Result<Vec<String>, StoreError> {
        self.sinks
            .iter()
            .keys()
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    /// Records that `sink` delivered these events (durable on return, one flush per call).
    /// The watermark moves over every event done from it on without a gap; events done
    /// above a gap are remembered until it closes. Clears their failed marks.
    pub async fn sink_delivered(&self, sink: &str, seqs: &[u64]) -> Result<(), StoreError> {
        self.update_sink(sink, seqs, |rec, failed, seq| {
            let mut counted = seq <= rec.delivered_through;
            if rec.failed_now > 0 && failed.remove(failed_key(sink, seq))?.is_some() {
                rec.failed_now -= 1;
                counted = true;
            }
            if rec.mark_done(seq) {
                counted = true;
            }
            if counted {
                rec.delivered += 1;
            }
            Ok(())
        })?;
        self.flush().await
    }

    /// Records that `sink` does not want these events: they count for the watermark, not
    /// as delivered. Durable on return.
    pub async fn sink_skip(&self, sink: &str, seqs: &[u64]) -> Result<(), StoreError> {
        self.update_sink(sink, seqs, |rec, _, seq| {
            if rec.mark_done(seq) {
                rec.skipped += 1;
            }
            Ok(())
        })?;
        self.flush().await
    }

    /// Marks an event failed for `sink` (it gave up retrying): it counts for the watermark
    /// and is kept (not pruned) until retried or the sink is removed. Durable on return.
    pub async fn sink_failed(
        &self,
        sink: &str,
        seq: u64,
        failure: FailedDelivery,
    ) -> Result<(), StoreError> {
        let failure = FailedDelivery {
            last_error: capped(&failure.last_error),
            ..failure
        };
        let value = encode(&failure)?;
        self.update_sink(sink, &[seq], |rec, failed, seq| {
            if failed
                .insert(failed_key(sink, seq), value.as_slice())?
                .is_none()
            {
                rec.failed_now += 1;
                rec.failed += 1;
            }
            rec.mark_done(seq);
            Ok(())
        })?;
        self.flush().await
    }

    /// The events `sink` holds as failed, by seq.
    pub fn sink_failed_list(&self, sink: &str) -> Result<Vec<(u64, FailedDelivery)>, StoreError> {
        self.sink_failed_first(sink, usize::MAX)
    }

    /// The first `limit` events `sink` holds as failed, by seq: what a status page shows
    /// after a long outage, without reading every mark (their number is
    /// [`SinkState::failed_now`]).
    pub fn sink_failed_first(
        &self,
        sink: &str,
        limit: usize,
    ) -> Result<Vec<(u64, FailedDelivery)>, StoreError> {
        let prefix = failed_prefix(sink);
        self.sink_failed
            .scan_prefix(&prefix)
            .take(limit)
            .map(|item| {
                let (k, v) = item?;
                let seq = seq_of(&k[prefix.len()..])?;
                let failure = serde_json::from_slice(&v)
                    .map_err(|e| StoreError::Corrupt(format!("sink {sink} event {seq}: {e}")))?;
                Ok((seq, failure))
            })
            .collect()
    }

    /// Clears `sink`'s failed marks and returns their seqs, to be delivered again (each
    /// recorded delivered or failed again when that is done). Durable on return.
    pub async fn sink_retry(&self, sink: &str) -> Result<Vec<u64>, StoreError> {
        let seqs: Vec<u64> = self
            .sink_failed_list(sink)?
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        self.update_sink(sink, &seqs, |rec, failed, seq| {
            if failed.remove(failed_key(sink, seq))?.is_some() {
                rec.failed_now = rec.failed_now.saturating_sub(1);
            }
            Ok(())
        })?;
        self.flush().await?;
        Ok(seqs)
    }

    /// The events `sink` has done above its watermark, as inclusive ranges in seq order:
    /// a delivery that resumes from the watermark passes over them instead of sending them
    /// again.
    pub fn sink_done_above(&self, sink: &str) -> Result<Vec<(u64, u64)>, StoreError> {
        Ok(self.sink_record(sink)?.ahead)
    }

    /// Makes `sink` deliver every kept event from `from` on again (a replay): its watermark
    /// drops below `from` and what it had done from there on is forgotten. Refused, with
    /// nothing changed, when `from` is below the oldest event kept (the events before it
    /// are gone) or past the last one. Checked and done under the pruning lock, so the
    /// events cannot be pruned in between. Failed marks stay until each event is delivered
    /// again. Durable on return.
    pub async fn sink_rewind(&self, sink: &str, from: u64) -> Result<Rewind, StoreError> {
        let rewound = {
            let _retention = self
                .retention
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let last = self.progress.durable();
            let oldest = self.first_event_seq()?;
            if from > last {
                return Ok(Rewind::PastEnd { last });
            }
            if oldest.is_none_or(|oldest| from < oldest) {
                return Ok(Rewind::BelowRetained { oldest });
            }
            self.sinks
                .transaction(|sinks| {
                    let mut rec = match sinks.get(sink.as_bytes())? {
                        Some(v) => decode_record(sink, &v).map_err(abort)?,
                        None => SinkRecord::default(),
                    };
                    rec.rewind(from);
                    sinks.insert(sink.as_bytes(), encode(&rec).map_err(abort)?)?;
                    Ok(rec.delivered_through)
                })
                .map_err(unwrap_tx)?
        };
        self.flush().await?;
        Ok(Rewind::Rewound {
            delivered_through: rewound,
        })
    }

    /// Drops everything kept for `sink` (a sink removed from the configuration). Returns
    /// how many events it still had to deliver or held as failed.
    pub async fn sink_remove(&self, sink: &str) -> Result<usize, StoreError> {
        let rec = self.sink_record(sink)?;
        let last = self.progress.durable();
        let pending = last
            .saturating_sub(rec.delivered_through)
            .saturating_sub(rec.done_above());
        let prefix = failed_prefix(sink);
        let marks: Vec<sled::IVec> = self
            .sink_failed
            .scan_prefix(&prefix)
            .keys()
            .collect::<Result<_, _>>()?;
        let failed = marks.len() as u64;
        (&self.sinks, &self.sink_failed)
            .transaction(|(sinks, sink_failed)| {
                sinks.remove(sink.as_bytes())?;
                for k in &marks {
                    sink_failed.remove(k)?;
                }
                Ok(())
            })
            .map_err(unwrap_tx)?;
        self.flush().await?;
        Ok(usize::try_from(pending + failed).unwrap_or(usize::MAX))
    }

    /// Applies `step` to each seq in one transaction over the sink's record and its failed
    /// marks (serializable: a retry from the API and the engine's deliveries never lose
    /// each other's changes).
    fn update_sink(
        &self,
        sink: &str,
        seqs: &[u64],
        step: impl Fn(
            &mut SinkRecord,
            &sled::transaction::TransactionalTree,
            u64,
        ) -> Result<(), ConflictableTransactionError<StoreError>>,
    ) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let last = self.progress.durable();
        if let Some(seq) = seqs.iter().find(|s| **s == 0 || **s > last) {
            return Err(sink_error(
                sink,
                format!("event {seq} is not in the outbox (the last is {last})"),
            ));
        }
        (&self.sinks, &self.sink_failed)
            .transaction(|(sinks, failed)| {
                let mut rec = match sinks.get(sink.as_bytes())? {
                    Some(v) => decode_record(sink, &v).map_err(abort)?,
                    None => SinkRecord::default(),
                };
                for seq in seqs {
                    step(&mut rec, failed, *seq)?;
                }
                if rec.ahead.len() > MAX_SINK_GAPS {
                    return Err(abort(sink_error(
                        sink,
                        format!(
                            "{} gaps above event {}: more events in flight than any delivery window",
                            rec.ahead.len(),
                            rec.delivered_through
                        ),
                    )));
                }
                sinks.insert(sink.as_bytes(), encode(&rec).map_err(abort)?)?;
                Ok(())
            })
            .map_err(unwrap_tx)
    }
}

fn unwrap_tx(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(through: u64, ahead: &[(u64, u64)]) -> SinkRecord {
        SinkRecord {
            delivered_through: through,
            ahead: ahead.to_vec(),
            ..Default::default()
        }
    }

    /// Done events above a gap are kept as ranges, merged as they touch, and the watermark
    /// jumps over them once the gap closes.
    #[test]
    fn the_watermark_jumps_when_a_gap_closes() {
        let mut r = SinkRecord::default();
        assert!(r.mark_done(1));
        assert_eq!(r, record(1, &[]));
        for seq in [5, 3, 7, 6] {
            assert!(r.mark_done(seq), "{seq}");
        }
        assert_eq!(r, record(1, &[(3, 3), (5, 7)]));
        assert_eq!(r.done_above(), 4);
        assert!(!r.mark_done(6) && !r.mark_done(1), "done already");
        assert!(r.mark_done(4));
        assert_eq!(r, record(1, &[(3, 7)]), "4 joins 3 and 5..7");
        assert!(r.mark_done(9));
        assert!(r.mark_done(2));
        assert_eq!(r, record(7, &[(9, 9)]));
        assert!(r.mark_done(8));
        assert_eq!(r, record(9, &[]));
        // Growing a range downwards.
        let mut r = record(0, &[(5, 6)]);
        assert!(r.mark_done(4));
        assert_eq!(r, record(0, &[(4, 6)]));
        assert!(r.mark_done(u64::MAX));
        assert_eq!(r, record(0, &[(4, 6), (u64::MAX, u64::MAX)]));
    }

    #[test]
    fn a_rewind_forgets_what_was_done_from_its_start_on() {
        let mut r = record(10, &[(12, 14), (17, 20)]);
        r.rewind(19);
        assert_eq!(r, record(10, &[(12, 14), (17, 18)]));
        r.rewind(13);
        assert_eq!(r, record(10, &[(12, 12)]));
        r.rewind(11);
        assert_eq!(r, record(10, &[]));
        let mut r = record(10, &[(12, 14)]);
        r.rewind(5);
        assert_eq!(r, record(4, &[]));
        r.rewind(1);
        assert_eq!(r, record(0, &[]));
        // Past everything done: nothing changes.
        let mut r = record(10, &[(12, 14)]);
        r.rewind(30);
        assert_eq!(r, record(10, &[(12, 14)]));
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let long = "é".repeat(TEXT_MAX_BYTES);
        let cut = capped(&long);
        assert!(
            cut.len() <= TEXT_MAX_BYTES + '…'.len_utf8(),
            "{}",
            cut.len()
        );
        assert!(cut.ends_with('…'));
        assert_eq!(capped("short"), "short");
    }
}
