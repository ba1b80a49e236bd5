//! The embedded store (sled). The only importer of sled.
//!
//! What ingest and auth use of it is behind two traits, [`IngestStore`] and [`TokenStore`],
//! which state the guarantees a backend keeps (see `backend`); the sled [`Store`]
//! implements both. The API and the CLI use the [`Store`] itself.
//!
//! ## Trees and keys
//! - `messages`: id (u64 BE) → [`MessageMeta`] (JSON): where the message came from, sha256,
//!   size, dates, parsed fields or the parse-error mark. Chunked (below).
//! - `raw`: id → the message bytes exactly as received. Chunked (below).
//! - `index`: location key → id. IMAP `i\0source\0folder\0` + UIDVALIDITY (BE) + UID (BE);
//!   POP3 `p\0source\0` + UIDL. This is what makes ingestion exactly-once.
//! - `content`: `source\0folder\0` + sha256 + UIDVALIDITY (BE) + id (BE) → nothing: every
//!   stored IMAP copy, used to re-match after a UIDVALIDITY change (each copy answers for one
//!   UID). Stores written before hold `source\0folder\0` + sha256 → id; both are read.
//! - `checkpoints`: `source\0folder` → [`Checkpoint`] (JSON).
//! - `pending`: IMAP location key → nothing: a stored message whose post-action (seen,
//!   move, delete) is not yet done on the server.
//! - `counts`: source → number of stored messages (u64 BE).
//! - `tokens`: source name → [`StoredToken`] sealed with its [`GrantBinding`] as associated
//!   data (records from before bindings were kept: sealed without; re-sealed on write).
//! - `events`: seq (u64 BE) → [`Event`] (JSON): the outbox, one event per newly stored
//!   message and per announced source state change (see `outbox`).
//! - `outbox`: `pruned_through` → the largest seq ever pruned (u64 BE).
//! - `sinks`: sink name → its delivery record (JSON): watermark, counters, the events done
//!   above the watermark as ranges.
//! - `sink_failed`: `sink\0` + seq (u64 BE) → [`FailedDelivery`] (JSON).
//!
//! How values are cut into pieces and compressed is in `values`.
//!
//! ## Invariants
//! - A message, its index entries and its folder checkpoint are written in one sled
//!   transaction: after a crash either all are there or none. [`Store::store_batch`] puts
//!   several messages in one transaction (each with its own checkpoint step), which is the
//!   same guarantee for each of them: sled's per-transaction cost is high (it seals and writes
//!   its log buffer twice per transaction).
//! - Each newly stored message gets exactly one event, written in its commit: after a crash
//!   a message and its event are both there or neither is. A message found stored already
//!   or re-matched after a UIDVALIDITY change gets none (old mail is never announced again).
//! - Seqs are given under the same lock as message ids, in commit order, and never twice:
//!   at open the next one follows the largest of the last event kept and the last pruned.
//!   Pruning removes events from the oldest on only, and records how far it went in the
//!   transaction that removes them.
//! - Readers of the outbox see only durable events (the flusher moves the mark after each
//!   flush), so an event handed out is never taken back by a crash.
//! - Callers [`Store::flush`] before changing anything on a server, so "stored" means on disk.

mod backend;
mod checkpoints;
mod crypto;
mod flusher;
mod keys;
mod messages;
mod outbox;
#[cfg(test)]
mod tests;
mod tokens;
mod values;

use std::path::Path;

use sled::transaction::ConflictableTransactionError;

use crate::telemetry::ErrorKind;

pub use backend::{IngestStore, TokenStore};
pub use checkpoints::Checkpoint;
pub use crypto::{KeyError, SealError, SecretBox};
pub use messages::{Location, MessageMeta, NewMessage, Prepared, StoreOutcome};
pub use outbox::{
    Event, EventKey, EventKind, FailedDelivery, MAX_SINK_GAPS, Rewind, SinkState, StateChange,
    event_id,
};
pub use tokens::{GrantBinding, IdentitySource, StoredToken};
pub use values::{CHUNK, Compression, SEGMENT_SIZE, ValueReader};

use tokens::open_key;
use values::{BlobSync, LEGACY_SEGMENT_SIZE, existing_segment_size, sync_new_blobs};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "store {0} is in use by another process (a running node?); commands reach a running node through its HTTP API"
    )]
    Locked(String),
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store: corrupt record: {0}")]
    Corrupt(String),
    /// A parse-and-store worker job ended without its result (it panicked): a bug, not the
    /// data on disk.
    #[error("store: {0}")]
    Worker(String),
    #[error("store: secret key: {0}")]
    Key(#[from] KeyError),
    /// A token record could not be sealed.
    #[error("store: secret key: {0}")]
    Seal(#[from] SealError),
    /// The data directory could not be created or made private (0700): it holds every
    /// message and the sealed tokens, so the node does not run in one others may read.
    #[error("node.data_dir {}: {what}: {reason}", path.display())]
    DataDir {
        path: std::path::PathBuf,
        what: &'static str,
        reason: std::io::Error,
    },
    #[error(
        "store: disk almost full: {free} bytes free in {path}, {needed} needed (node.min_free_disk_bytes plus the batch); no mail is taken until there is room"
    )]
    DiskFull {
        path: String,
        free: u64,
        needed: u64,
    },
    /// A sink's delivery record was asked something it cannot do (an event that is not in
    /// the outbox, more gaps than any delivery window leaves): a bug in the caller.
    #[error("store: sink {sink}: {what}")]
    Sink { sink: String, what: String },
}

impl StoreError {
    /// Every store error, the key's included ([`KeyError::kind`], [`SealError::kind`]).
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Store
    }
}

pub struct Store {
    db: sled::Db,
    messages: sled::Tree,
    raw: sled::Tree,
    index: sled::Tree,
    content: sled::Tree,
    /// IMAP location keys whose post-action (seen, move, delete) is not yet done.
    pending: sled::Tree,
    /// Source name → number of stored messages (u64 BE), kept in the storing transaction
    /// so `status` is O(sources), not O(messages).
    counts: sled::Tree,
    checkpoints: sled::Tree,
    tokens: sled::Tree,
    /// Behind a lock because `rotate_key` swaps it.
    secret_box: std::sync::RwLock<SecretBox>,
    key_file: std::path::PathBuf,
    /// The data directory, for free-space checks.
    dir: std::path::PathBuf,
    /// Free bytes to keep in `dir` (`node.min_free_disk_bytes`).
    min_free: std::sync::atomic::AtomicU64,
    /// Whether new values are zstd-compressed (`node.store_compression`).
    zstd: std::sync::atomic::AtomicBool,
    /// A store created before chunking (small segments): its flush also syncs sled's blob
    /// files, which sled itself never does. Shared with the flusher thread.
    blob_sync: Option<std::sync::Arc<BlobSync>>,
    /// Makes the store durable for everyone waiting (see [`Store::flush`]).
    flusher: flusher::Flusher,
    /// The outbox (see `outbox`).
    events: sled::Tree,
    /// The outbox's own bookkeeping: how far it was pruned.
    outbox: sled::Tree,
    /// Sink name → its delivery record.
    sinks: sled::Tree,
    /// A sink's failed events.
    sink_failed: sled::Tree,
    /// How far the outbox is written and how far it is durable; the flusher moves the
    /// latter.
    progress: std::sync::Arc<outbox::EventProgress>,
    /// The next message id and event seq, locked for the whole of each commit: both are
    /// given in commit order, so a reader paging by id (`/api/messages?after=`) or by seq
    /// never sees a larger one before a smaller one is visible. (sled runs transactions
    /// one at a time anyway.)
    commits: std::sync::Mutex<Sequences>,
    /// Held while pruning decides and deletes, and while a sink is rewound for a replay:
    /// a replay checks that its first event is still kept and lowers the sink's watermark
    /// as one step, so pruning cannot delete the events in between.
    retention: std::sync::Mutex<()>,
}

/// What the commit lock guards.
struct Sequences {
    /// The next message id.
    next_id: u64,
    /// The next event seq.
    next_seq: u64,
    /// When the last state change event happened (Unix ms): the next one is later, as
    /// its time is part of its id.
    last_state_millis: i64,
}

/// Whether `incoming` more bytes fit in `free` while `min` stays free; the bytes needed
/// when they do not. Stored data costs up to about twice its size until sled compacts its
/// log.
fn room(free: u64, min: u64, incoming: u64) -> Result<(), u64> {
    let needed = min.saturating_add(incoming.saturating_mul(2));
    if free < needed { Err(needed) } else { Ok(()) }
}

/// sled's page cache per store. sled caches up to 1 GiB by default; a collector mostly
/// writes, so a small cache keeps memory bounded whatever the store size (a quarter of
/// this made no difference, BENCHMARKS.md).
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// How sled opens the store in `dir`.
fn sled_config(dir: &Path, segment_size: usize) -> sled::Config {
    sled::Config::new()
        .path(dir)
        .cache_capacity(CACHE_BYTES)
        .segment_size(segment_size)
}

fn abort<E>(e: E) -> ConflictableTransactionError<E> {
    ConflictableTransactionError::Abort(e)
}

impl Store {
    /// Opens (or creates) the store in `dir`, with the at-rest key from `key_file`
    /// (created 0600 on first use).
    pub fn open(dir: &Path, key_file: &Path) -> Result<Store, StoreError> {
        let data_dir = |what, reason| StoreError::DataDir {
            path: dir.to_path_buf(),
            what,
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| data_dir("cannot create it", e))?;
        restrict_dir(dir).map_err(|e| data_dir("cannot set its mode to 0700", e))?;
        let segment_size = existing_segment_size(dir).unwrap_or(SEGMENT_SIZE);
        let db = match sled_config(dir, segment_size).open() {
            Ok(db) => db,
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") =>
            {
                return Err(StoreError::Locked(dir.display().to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let tokens = db.open_tree("tokens")?;
        let secret_box = open_key(key_file, &tokens)?;
        let blob_sync = (segment_size <= LEGACY_SEGMENT_SIZE).then(|| {
            std::sync::Arc::new(BlobSync {
                dir: dir.join("blobs"),
                synced: Default::default(),
            })
        });
        let events = db.open_tree("events")?;
        let outbox = db.open_tree("outbox")?;
        let last_seq = outbox::last_seq(&events, &outbox)?;
        // What this process finds is what readers may see: made durable now, should it
        // be a dead process's writes still only in the system's page cache.
        if last_seq > 0 {
            db.flush()?;
        }
        let progress = std::sync::Arc::new(outbox::EventProgress::new(last_seq));
        let flusher = {
            let db = db.clone();
            let blobs = blob_sync.clone();
            let progress = progress.clone();
            flusher::Flusher::start(move || {
                let upto = progress.flush_starts();
                db.flush()?;
                if let Some(state) = &blobs {
                    sync_new_blobs(state).map_err(|e| match e {
                        StoreError::Sled(e) => e,
                        other => sled::Error::Io(std::io::Error::other(other.to_string())),
                    })?;
                }
                progress.flushed(upto);
                Ok(())
            })
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?
        };
        let messages = db.open_tree("messages")?;
        // Messages are never removed, so one past the largest key is an id never given.
        let next_id = match messages.last()? {
            Some((k, _)) => k
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| StoreError::Corrupt(format!("message key of {} bytes", k.len())))?
                .saturating_add(1),
            None => 1,
        };
        Ok(Store {
            messages,
            raw: db.open_tree("raw")?,
            index: db.open_tree("index")?,
            content: db.open_tree("content")?,
            pending: db.open_tree("pending")?,
            counts: db.open_tree("counts")?,
            checkpoints: db.open_tree("checkpoints")?,
            tokens,
            events,
            outbox,
            sinks: db.open_tree("sinks")?,
            sink_failed: db.open_tree("sink_failed")?,
            progress,
            db,
            secret_box: std::sync::RwLock::new(secret_box),
            key_file: key_file.to_path_buf(),
            dir: dir.to_path_buf(),
            min_free: std::sync::atomic::AtomicU64::new(0),
            zstd: std::sync::atomic::AtomicBool::new(Compression::default() == Compression::Zstd),
            blob_sync,
            flusher,
            commits: std::sync::Mutex::new(Sequences {
                next_id,
                next_seq: last_seq + 1,
                last_state_millis: 0,
            }),
            retention: std::sync::Mutex::new(()),
        })
    }

    /// Sets how much free space the store keeps (`node.min_free_disk_bytes`).
    pub fn set_min_free_bytes(&self, bytes: u64) {
        self.min_free
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets how new `messages` and `raw` values are written (`node.store_compression`).
    /// Values already stored stay as they are; both kinds are read.
    pub fn set_compression(&self, compression: Compression) {
        self.zstd.store(
            compression == Compression::Zstd,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn compression(&self) -> Compression {
        if self.zstd.load(std::sync::atomic::Ordering::Relaxed) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// Fails with [`StoreError::DiskFull`] unless `incoming` more bytes fit while keeping the
    /// minimum free. Checked before mail is taken, so the store never hits a full disk
    /// (sled does not recover well from one).
    pub fn ensure_room(&self, incoming: u64) -> Result<(), StoreError> {
        let min = self.min_free.load(std::sync::atomic::Ordering::Relaxed);
        let free = fs4::available_space(&self.dir).map_err(|e| StoreError::Sled(e.into()))?;
        room(free, min, incoming).map_err(|needed| StoreError::DiskFull {
            path: self.dir.display().to_string(),
            free,
            needed,
        })
    }

    /// Makes everything written so far durable. Flushes run on the store's flusher thread,
    /// one at a time, each for every caller waiting when it starts (see `flusher`).
    pub async fn flush(&self) -> Result<(), StoreError> {
        // After a failed disk write sled may never complete a flush; a collector must not
        // hang on it (the data is not durable, so the server is left alone).
        match tokio::time::timeout(std::time::Duration::from_secs(60), self.flusher.flush()).await {
            Ok(flushed) => Ok(flushed?),
            Err(_) => Err(StoreError::Sled(sled::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "flush did not complete within 60s",
            )))),
        }
    }

    pub fn flush_sync(&self) -> Result<(), StoreError> {
        let upto = self.progress.flush_starts();
        self.db.flush()?;
        if let Some(state) = &self.blob_sync {
            sync_new_blobs(state)?;
        }
        self.progress.flushed(upto);
        Ok(())
    }
}

#[cfg(unix)]
fn restrict_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(not(unix))]
fn restrict_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}
