//! Message records: what a message becomes in its commit (stored under the next id with
//! its outbox event, found stored already, or re-matched to a copy stored under an earlier
//! UIDVALIDITY), and reading them back.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::Transactional;
use sled::transaction::TransactionError;

use crate::parse::ParsedFields;

use super::checkpoints::Checkpoint;
use super::keys::{content_key, folder_key, id_of, imap_key, pop3_key, pop3_prefix};
use super::outbox::{EventKey, EventKind, MessageEventRecord, event_id, timestamp};
use super::values::{StoredValue, get_chunked, iter_chunked, put_chunked};
use super::{Store, StoreError, abort};

/// Where a message came from on its server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "protocol", rename_all = "lowercase")]
pub enum Location {
    Imap {
        folder: String,
        uidvalidity: u32,
        uid: u32,
    },
    Pop3 {
        uidl: String,
    },
}

/// Everything stored about a message except its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    /// The message's key in the store, given in commit order (see [`Store::commit_batch`]).
    /// Records keep it in their key only (it is not known until the commit); records written
    /// before that also carry it here. Always present in what the API serves.
    #[serde(default, skip_serializing_if = "is_unset")]
    pub id: u64,
    pub source: String,
    pub location: Location,
    /// Hex sha256 of the raw bytes.
    pub sha256: String,
    pub size: u64,
    /// IMAP INTERNALDATE (RFC 3339), when the server gave one.
    pub internal_date: Option<String>,
    /// When we stored it (RFC 3339, UTC).
    pub stored_at: String,
    pub parsed: Option<ParsedFields>,
    /// Set when mail-parser could not parse the message; the raw bytes are stored anyway.
    pub parse_error: Option<String>,
}

/// A message ready to be stored.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub source: String,
    pub location: Location,
    pub raw: Vec<u8>,
    pub internal_date: Option<String>,
    pub parsed: Result<ParsedFields, crate::parse::ParseError>,
    /// IMAP: the source changes the server after storing (seen, move, delete). Recorded in
    /// the same transaction, so a crash before the change leaves it to be redone.
    pub post_action: bool,
    /// IMAP: first look for a copy stored under an earlier UIDVALIDITY of this folder with the
    /// same bytes, and map this UID to it instead of storing it again
    /// ([`Checkpoint::rematches`]). Each stored copy answers for one UID: two identical old
    /// messages answer for two new UIDs.
    pub rematch: bool,
}

fn is_unset(id: &u64) -> bool {
    *id == 0
}

impl Location {
    /// What the id of the event announcing the message stored here is computed from.
    pub fn event_key<'a>(&'a self, source: &'a str) -> EventKey<'a> {
        match self {
            Location::Imap {
                folder,
                uidvalidity,
                uid,
            } => EventKey::Imap {
                source,
                folder,
                uidvalidity: *uidvalidity,
                uid: *uid,
            },
            Location::Pop3 { uidl } => EventKey::Pop3 { source, uidl },
        }
    }
}

impl MessageMeta {
    /// The id of the `message.stored` event announcing this message: from a message to
    /// its event without a lookup.
    pub fn event_id(&self) -> String {
        event_id(&self.location.event_key(&self.source))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Newly stored under this id.
    Stored(u64),
    /// Already there (same location, or same content after a UIDVALIDITY change).
    AlreadyStored(u64),
}

/// A message prepared for [`Store::store_batch`]: everything computed outside the
/// transaction, so a retried transaction only repeats the tree operations.
pub struct Prepared {
    index_key: Vec<u8>,
    checkpoint: Option<(Vec<u8>, Checkpoint)>,
    /// IMAP: where the content index lists this copy.
    content: Option<ContentKey>,
    /// Match by content before storing ([`NewMessage::rematch`]).
    rematch: bool,
    needs_pending: bool,
    source_key: Vec<u8>,
    /// The id of the event announcing it, if it is newly stored.
    event_id: String,
    meta: StoredValue,
    raw: StoredValue,
}

/// A stored IMAP copy's entry in the `content` tree: `source\0folder\0sha256` (the prefix
/// every copy of the same bytes in that folder shares), then the UIDVALIDITY its UID is under
/// and its id.
pub(super) struct ContentKey {
    prefix: Vec<u8>,
    uidvalidity: u32,
}

impl ContentKey {
    pub(super) fn key(&self, id: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 12);
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(&self.uidvalidity.to_be_bytes());
        k.extend_from_slice(&id.to_be_bytes());
        k
    }
}

/// An event as written to the `events` tree: its key (seq, u64 BE) and its JSON.
type EventEntry = ([u8; 8], Vec<u8>);

/// What a prepared message becomes in its commit.
pub(super) enum Step {
    /// Its location is stored already, under this id.
    Already(u64),
    /// Mapped to a copy stored under an earlier UIDVALIDITY; that copy's content key moves
    /// to the current one.
    Rematch { id: u64, claimed: Vec<u8> },
    /// Stored under this new id.
    Store(u64),
}

impl Step {
    pub(super) fn id(&self) -> u64 {
        match self {
            Step::Already(id) | Step::Rematch { id, .. } | Step::Store(id) => *id,
        }
    }
}

/// A message record read back; its id is its key.
pub(super) fn decode_meta(id: u64, value: &[u8]) -> Result<MessageMeta, StoreError> {
    let mut meta: MessageMeta = serde_json::from_slice(value)
        .map_err(|e| StoreError::Corrupt(format!("message {id}: {e}")))?;
    meta.id = id;
    Ok(meta)
}

impl Store {
    /// Stores a message and advances the checkpoint, atomically.
    pub fn store(&self, msg: NewMessage) -> Result<StoreOutcome, StoreError> {
        let mut out = self.store_batch(vec![(msg, true)])?;
        Ok(out.pop().expect("one outcome per message"))
    }

    /// Stores a message but leaves the folder checkpoint alone: for a message that arrived
    /// before a lower UID still pending.
    pub fn store_without_checkpoint(&self, msg: NewMessage) -> Result<StoreOutcome, StoreError> {
        let mut out = self.store_batch(vec![(msg, false)])?;
        Ok(out.pop().expect("one outcome per message"))
    }

    /// Stores messages in one transaction, in order; each with its checkpoint step when its
    /// flag is true (as [`Store::store`]) or without (as [`Store::store_without_checkpoint`]).
    /// Returns one outcome per message.
    pub fn store_batch(
        &self,
        msgs: Vec<(NewMessage, bool)>,
    ) -> Result<Vec<StoreOutcome>, StoreError> {
        let prepared = self.prepare_batch(msgs)?;
        self.commit_batch(&prepared)
    }

    /// The first half of [`Store::store_batch`]: checksums, keys and serialized metadata,
    /// all the work done outside the transaction. It may run on another thread while an
    /// earlier batch commits; batches must then be committed in the order they were prepared.
    pub fn prepare_batch(
        &self,
        msgs: Vec<(NewMessage, bool)>,
    ) -> Result<Vec<Prepared>, StoreError> {
        msgs.into_iter()
            .map(|(msg, move_checkpoint)| self.prepare(msg, move_checkpoint))
            .collect()
    }

    /// The second half of [`Store::store_batch`]: one transaction for the prepared messages.
    ///
    /// Ids and event seqs are given here, in commit order, under the commit lock. What each
    /// message becomes (already stored, re-matched to a stored copy, or stored) is decided
    /// under the same lock before the transaction: only commits write the index and content
    /// trees, so what is read then stays true until the transaction has run. Each message
    /// stored gets its `message.stored` event in the same transaction, serialized before
    /// it (a retried transaction only repeats the inserts).
    pub fn commit_batch(&self, prepared: &[Prepared]) -> Result<Vec<StoreOutcome>, StoreError> {
        let mut seqs = self
            .commits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let plan = self.plan(prepared, seqs.next_id)?;
        let events = self.message_events(prepared, &plan, seqs.next_seq)?;
        let result = (
            &self.messages,
            &self.raw,
            &self.index,
            &self.content,
            &self.checkpoints,
            &self.pending,
            &self.counts,
            &self.events,
        )
            .transaction(
                |(messages, raw, index, content, checkpoints, pending, counts, outbox)| {
                    let mut stored_per_source: Vec<(&[u8], u64)> = Vec::new();
                    let mut events = events.iter();
                    for (p, step) in prepared.iter().zip(&plan) {
                        let id = match step {
                            Step::Already(_) => continue,
                            Step::Rematch { id, claimed } => {
                                content.remove(claimed.as_slice())?;
                                *id
                            }
                            Step::Store(id) => {
                                put_chunked(messages, *id, &p.meta)?;
                                put_chunked(raw, *id, &p.raw)?;
                                if let Some((seq, event)) = events.next() {
                                    outbox.insert(seq, event.as_slice())?;
                                }
                                match stored_per_source
                                    .iter_mut()
                                    .find(|(s, _)| *s == p.source_key.as_slice())
                                {
                                    Some((_, n)) => *n += 1,
                                    None => stored_per_source.push((&p.source_key, 1)),
                                }
                                *id
                            }
                        };
                        let id_bytes = id.to_be_bytes();
                        index.insert(p.index_key.as_slice(), &id_bytes)?;
                        if let Some(c) = &p.content {
                            content.insert(c.key(id), &[] as &[u8])?;
                        }
                        if let Some((key, cp)) = &p.checkpoint {
                            let current: Option<Checkpoint> = match checkpoints.get(key)? {
                                Some(v) => serde_json::from_slice(&v).ok(),
                                None => None,
                            };
                            let bytes = serde_json::to_vec(&Checkpoint::advanced(current, *cp))
                                .map_err(|e| abort(StoreError::Corrupt(e.to_string())))?;
                            checkpoints.insert(key.as_slice(), bytes)?;
                        }
                        if p.needs_pending {
                            pending.insert(p.index_key.as_slice(), &[] as &[u8])?;
                        }
                    }
                    for (source, stored) in &stored_per_source {
                        let n = match counts.get(source)? {
                            Some(v) => id_of(&v).map_err(abort)?,
                            None => 0,
                        };
                        counts.insert(*source, &(n + stored).to_be_bytes())?;
                    }
                    Ok(())
                },
            );
        match result {
            Ok(()) => {}
            Err(TransactionError::Abort(e)) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(e.into()),
        }
        if !events.is_empty() {
            seqs.next_seq += events.len() as u64;
            self.progress.committed(seqs.next_seq - 1);
            if self.progress.has_readers() {
                self.flusher.nudge();
            }
        }
        let mut outcomes = Vec::with_capacity(plan.len());
        for step in plan {
            outcomes.push(match step {
                Step::Already(id) | Step::Rematch { id, .. } => StoreOutcome::AlreadyStored(id),
                Step::Store(id) => {
                    seqs.next_id = id + 1;
                    StoreOutcome::Stored(id)
                }
            });
        }
        Ok(outcomes)
    }

    /// The `message.stored` events of the messages `plan` stores, in order, with seqs from
    /// `next_seq` on.
    fn message_events(
        &self,
        prepared: &[Prepared],
        plan: &[Step],
        next_seq: u64,
    ) -> Result<Vec<EventEntry>, StoreError> {
        let mut out = Vec::new();
        let mut stamp = None;
        for (p, step) in prepared.iter().zip(plan) {
            let Step::Store(id) = step else { continue };
            let timestamp = stamp.get_or_insert_with(|| timestamp(chrono::Utc::now()));
            let seq = next_seq + out.len() as u64;
            let record = MessageEventRecord {
                seq,
                id: &p.event_id,
                kind: EventKind::MessageStored,
                source: std::str::from_utf8(&p.source_key)
                    .map_err(|e| StoreError::Corrupt(format!("source name: {e}")))?,
                timestamp,
                message: *id,
            };
            let json =
                serde_json::to_vec(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push((seq.to_be_bytes(), json));
        }
        Ok(out)
    }

    /// What each prepared message becomes, read under the commit lock (see
    /// [`Store::commit_batch`]); new messages get ids from `next_id` on.
    fn plan(&self, prepared: &[Prepared], mut next_id: u64) -> Result<Vec<Step>, StoreError> {
        let mut plan = Vec::with_capacity(prepared.len());
        // Within one batch: locations taken and stored copies claimed by earlier messages.
        let mut taken: Vec<(&[u8], u64)> = Vec::new();
        let mut claimed: Vec<Vec<u8>> = Vec::new();
        for p in prepared {
            if let Some((_, id)) = taken.iter().find(|(k, _)| *k == p.index_key.as_slice()) {
                plan.push(Step::Already(*id));
                continue;
            }
            if let Some(existing) = self.index.get(&p.index_key)? {
                plan.push(Step::Already(id_of(&existing)?));
                continue;
            }
            let rematched = match (&p.content, p.rematch) {
                (Some(c), true) => self.claimable_copy(c, &claimed)?,
                _ => None,
            };
            let step = match rematched {
                Some((id, key)) => {
                    claimed.push(key.clone());
                    Step::Rematch { id, claimed: key }
                }
                None => {
                    next_id += 1;
                    Step::Store(next_id - 1)
                }
            };
            taken.push((&p.index_key, step.id()));
            plan.push(step);
        }
        Ok(plan)
    }

    /// A stored copy of `c`'s bytes in its folder that no UID under the current UIDVALIDITY
    /// answers for yet: its id and content key.
    fn claimable_copy(
        &self,
        c: &ContentKey,
        claimed: &[Vec<u8>],
    ) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        for item in self.content.scan_prefix(&c.prefix) {
            let (k, v) = item?;
            if claimed.iter().any(|x| x.as_slice() == &k[..]) {
                continue;
            }
            let rest = &k[c.prefix.len()..];
            let id = match rest.len() {
                // Written before each copy had a key of its own: prefix → id.
                0 => id_of(&v)?,
                12 => {
                    let uidvalidity = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
                    if uidvalidity == c.uidvalidity {
                        continue; // answers for a UID under the current UIDVALIDITY
                    }
                    id_of(&rest[4..])?
                }
                n => {
                    return Err(StoreError::Corrupt(format!(
                        "content key with {n} extra bytes"
                    )));
                }
            };
            return Ok(Some((id, k.to_vec())));
        }
        Ok(None)
    }

    /// Keys, checksum and serialized metadata of a message about to be stored.
    fn prepare(&self, msg: NewMessage, move_checkpoint: bool) -> Result<Prepared, StoreError> {
        let sha = Sha256::digest(&msg.raw);
        let (index_key, checkpoint, content) = match &msg.location {
            Location::Imap {
                folder,
                uidvalidity,
                uid,
            } => (
                imap_key(&msg.source, folder, *uidvalidity, *uid),
                move_checkpoint.then(|| {
                    (
                        folder_key(&msg.source, folder),
                        Checkpoint {
                            uidvalidity: *uidvalidity,
                            last_uid: *uid,
                            rematch_below: None,
                        },
                    )
                }),
                Some(ContentKey {
                    prefix: content_key(&msg.source, folder, &sha),
                    uidvalidity: *uidvalidity,
                }),
            ),
            Location::Pop3 { uidl } => (pop3_key(&msg.source, uidl), None, None),
        };
        let needs_pending = msg.post_action && matches!(msg.location, Location::Imap { .. });
        let event_id = event_id(&msg.location.event_key(&msg.source));
        let rematch = msg.rematch;
        let source_key = msg.source.as_bytes().to_vec();
        let (parsed, parse_error) = match msg.parsed {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let meta = MessageMeta {
            // Given at commit; the key holds it.
            id: 0,
            source: msg.source,
            location: msg.location,
            sha256: hex::encode(sha),
            size: msg.raw.len() as u64,
            internal_date: msg.internal_date,
            stored_at: chrono::Utc::now().to_rfc3339(),
            parsed,
            parse_error,
        };
        // Sized for the bodies up front: growing by doubling copied them several times.
        let bodies = meta.parsed.as_ref().map_or(0, |p| {
            p.text_body.as_ref().map_or(0, String::len)
                + p.html_body.as_ref().map_or(0, String::len)
        });
        let mut meta_bytes = Vec::with_capacity(bodies + bodies / 8 + 1024);
        serde_json::to_writer(&mut meta_bytes, &meta)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let compression = self.compression();
        Ok(Prepared {
            index_key,
            checkpoint,
            content,
            rematch,
            needs_pending,
            source_key,
            event_id,
            meta: StoredValue::new(meta_bytes, compression),
            raw: StoredValue::new(msg.raw, compression),
        })
    }

    /// When a POP3 message was stored (RFC 3339), for `delete_after_days`.
    pub fn pop3_stored_at(&self, source: &str, uidl: &str) -> Result<Option<String>, StoreError> {
        let Some(id) = self.index.get(pop3_key(source, uidl))? else {
            return Ok(None);
        };
        Ok(self.meta(id_of(&id)?)?.map(|m| m.stored_at))
    }

    /// The POP3 UIDLs already stored for a source.
    pub fn stored_uidls(&self, source: &str) -> Result<HashSet<String>, StoreError> {
        let prefix = pop3_prefix(source);
        let mut out = HashSet::new();
        for item in self.index.scan_prefix(&prefix) {
            let (k, _) = item?;
            out.insert(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(out)
    }

    pub fn meta(&self, id: u64) -> Result<Option<MessageMeta>, StoreError> {
        get_chunked(&self.messages, id)?
            .map(|v| decode_meta(id, &v))
            .transpose()
    }

    pub fn raw(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        get_chunked(&self.raw, id)
    }

    /// A message's bytes as a reader that holds one stored piece at a time (what the API
    /// streams); `None` when there is no message `id`.
    pub fn raw_reader(&self, id: u64) -> Result<Option<super::values::ValueReader>, StoreError> {
        super::values::read_chunked(&self.raw, id)
    }

    /// Messages in storage order, optionally of one source.
    pub fn iter_meta<'a>(
        &'a self,
        source: Option<&'a str>,
    ) -> impl Iterator<Item = Result<MessageMeta, StoreError>> + 'a {
        self.iter_meta_from(source, 0)
    }

    /// Messages with an id of `from` or more, in storage (= commit) order, optionally of
    /// one source. Seeks to `from` by key: a page far into the store costs what a first
    /// page costs.
    pub fn iter_meta_from<'a>(
        &'a self,
        source: Option<&'a str>,
        from: u64,
    ) -> impl Iterator<Item = Result<MessageMeta, StoreError>> + 'a {
        iter_chunked(&self.messages, from)
            .map(|item| {
                let (id, v) = item?;
                decode_meta(id, &v)
            })
            .filter(move |m| match (m, source) {
                (Ok(m), Some(s)) => m.source == s,
                _ => true,
            })
    }

    /// Number of stored messages per source.
    pub fn counts(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        for item in self.counts.iter() {
            let (k, v) = item?;
            out.insert(String::from_utf8_lossy(&k).into_owned(), id_of(&v)?);
        }
        Ok(out)
    }
}
