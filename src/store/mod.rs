//! The embedded store (sled). The only importer of sled.
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
//! - `tokens`: credential key → encrypted [`StoredToken`].
//!
//! ## Chunked values, and why
//! sled 0.34 keeps values inside its B-tree leaves (up to 17 entries) and writes any leaf or
//! update larger than a quarter of a log segment to a file of its own (a "blob"), which it
//! never fsyncs: a power cut after [`Store::flush`] could lose it. So `messages` and `raw`
//! values are cut into [`CHUNK`]-byte pieces under `id ‖ chunk number (u32 BE)`, and new
//! stores use [`SEGMENT_SIZE`] segments: the largest leaf (17 chunks, 204 KiB) stays under
//! the blob threshold (256 KiB) and everything is in the log that sled does fsync. The
//! segment size is also the size of each log buffer sled holds in memory (a fan-out node
//! had about 35 alive at its peak), so it is no larger than that needs. (With sled's default
//! 512 KiB segments and blob files synced on flush, a fan-out of 300 mailboxes peaked at
//! 1.3 GB instead of 1.8 GB: sled seals a segment-sized log buffer twice per transaction.
//! But sled also writes blobs in the background, while relocating pages, which no flush of
//! ours would have synced; no blobs at all is the safe layout.) Stores written before
//! this have 8-byte keys holding the whole value and 512 KiB segments; both are still read,
//! and their flush also syncs the blob files (see [`Store::flush`]). Stores made with
//! 2 MiB segments keep them (sled opens a store only with its own segment size).
//!
//! ## Compression
//! New `messages` and `raw` values are zstd frames (level 1) when that makes them smaller
//! (`node.store_compression`, [`Compression`]); the pieces of such a value have the top bit
//! of their chunk number set ([`ZSTD_CHUNK`]), so every value says for itself how to read it
//! and stores written before (or with `none`) read as they are. Why: sled rewrites a value
//! about three times after the write itself (its B-tree leaves are rewritten when they split
//! and its log segments are cleaned), so the store wrote 4.4 bytes per byte of mail and the
//! disk was what a backfill waited for. Compressing once, on the workers, before sled sees
//! a value, cuts every one of those writes: the bench corpus stores in half the bytes (text
//! and HTML to a fifth, base64 attachments to three quarters).
//!
//! ## Invariants
//! - A message, its index entries and its folder checkpoint are written in one sled
//!   transaction: after a crash either all are there or none. [`Store::store_batch`] puts
//!   several messages in one transaction (each with its own checkpoint step), which is the
//!   same guarantee for each of them: sled's per-transaction cost is high (it seals and writes
//!   its log buffer twice per transaction).
//! - Callers [`Store::flush`] before changing anything on a server, so "stored" means on disk.

mod crypto;
mod flusher;

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::parse::ParsedFields;
use crate::secret::Secret;
use crate::telemetry::ErrorKind;

pub use crypto::SecretBox;

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
    Key(String),
    #[error(
        "store: disk almost full: {free} bytes free in {path}, {needed} needed (node.min_free_disk_bytes plus the batch); no mail is taken until there is room"
    )]
    DiskFull {
        path: String,
        free: u64,
        needed: u64,
    },
}

impl StoreError {
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Store
    }
}

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
    pub parsed: Result<ParsedFields, String>,
    /// IMAP: the source changes the server after storing (seen, move, delete). Recorded in
    /// the same transaction, so a crash before the change leaves it to be redone.
    pub post_action: bool,
    /// IMAP: first look for a copy stored under an earlier UIDVALIDITY of this folder with the
    /// same bytes, and map this UID to it instead of storing it again
    /// ([`Checkpoint::rematches`]). Each stored copy answers for one UID: two identical old
    /// messages answer for two new UIDs.
    pub rematch: bool,
}

/// IMAP progress for one folder: every UID up to `last_uid` under `uidvalidity` is stored
/// (or deliberately skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub uidvalidity: u32,
    pub last_uid: u32,
    /// Set when the folder's UIDVALIDITY changed: the UIDNEXT the server gave then. The
    /// messages below it were on the server before the change, so each is first matched by
    /// content against the copies stored under the old UIDVALIDITY; messages from it on are
    /// new and always stored, even when their bytes equal a stored message's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rematch_below: Option<u32>,
}

impl Checkpoint {
    /// Whether `uid` (under this checkpoint's UIDVALIDITY) is matched by content first.
    pub fn rematches(&self, uid: u32) -> bool {
        self.rematch_below.is_some_and(|below| uid < below)
    }

    /// This checkpoint moved on to `last_uid` when that is further (same UIDVALIDITY), or
    /// replaced by `next` under another one.
    fn advanced(current: Option<Checkpoint>, next: Checkpoint) -> Checkpoint {
        match current {
            Some(c) if c.uidvalidity == next.uidvalidity => Checkpoint {
                last_uid: c.last_uid.max(next.last_uid),
                ..c
            },
            _ => next,
        }
    }
}

fn is_unset(id: &u64) -> bool {
    *id == 0
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Newly stored under this id.
    Stored(u64),
    /// Already there (same location, or same content after a UIDVALIDITY change).
    AlreadyStored(u64),
}

/// OAuth2 state for one credential, kept encrypted at rest.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub refresh_token: Option<String>,
    pub access_token: Option<String>,
    /// Unix seconds.
    pub access_expires_at: Option<i64>,
    /// Unix seconds of the last successful use of the refresh token.
    pub refresh_token_last_used: Option<i64>,
    /// Unix seconds when the refresh token was first stored (import or consent).
    pub refresh_token_obtained: Option<i64>,
    /// Who consented, when known.
    pub identity: Option<String>,
    /// Set when the provider refused the grant: the source needs re-authorization.
    pub needs_reauth: Option<String>,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| Secret::default()),
            )
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| Secret::default()),
            )
            .field("access_expires_at", &self.access_expires_at)
            .field("refresh_token_last_used", &self.refresh_token_last_used)
            .field("identity", &self.identity)
            .field("needs_reauth", &self.needs_reauth)
            .finish()
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
    /// The next message id, locked for the whole of each commit: ids are given in commit
    /// order, so a reader paging by id (`/api/messages?after=`) never sees a larger id
    /// before a smaller one is visible. (sled runs transactions one at a time anyway.)
    commits: std::sync::Mutex<u64>,
}

/// What [`sync_new_blobs`] needs: the blobs directory and the blob files (sled names them
/// by log sequence number) already synced.
struct BlobSync {
    dir: std::path::PathBuf,
    synced: std::sync::Mutex<HashSet<u64>>,
}

/// fsyncs the blob files sled wrote since the last call, then their directory. sled 0.34
/// writes a blob before the log entry that points to it but never syncs it, so without this a
/// power cut after a flush could leave the log pointing at a blob that never reached the disk.
/// Only stores created before chunking write blobs (see the module docs).
fn sync_new_blobs(state: &BlobSync) -> Result<(), StoreError> {
    let mut synced = state
        .synced
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let entries = match std::fs::read_dir(&state.dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::Sled(sled::Error::Io(e))),
    };
    // Only names still listed are kept: sled removes blobs it no longer needs.
    let mut present = HashSet::new();
    let mut any = false;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let Some(lsn) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if synced.contains(&lsn) {
            present.insert(lsn);
            continue;
        }
        match std::fs::File::open(entry.path()) {
            Ok(f) => f
                .sync_all()
                .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?,
            // Replaced and removed by sled since it was listed: nothing points to it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::Sled(sled::Error::Io(e))),
        }
        present.insert(lsn);
        any = true;
    }
    if any {
        std::fs::File::open(&state.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
    }
    *synced = present;
    Ok(())
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
    meta: StoredValue,
    raw: StoredValue,
}

/// A stored IMAP copy's entry in the `content` tree: `source\0folder\0sha256` (the prefix
/// every copy of the same bytes in that folder shares), then the UIDVALIDITY its UID is under
/// and its id.
struct ContentKey {
    prefix: Vec<u8>,
    uidvalidity: u32,
}

impl ContentKey {
    fn key(&self, id: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 12);
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(&self.uidvalidity.to_be_bytes());
        k.extend_from_slice(&id.to_be_bytes());
        k
    }
}

/// What a prepared message becomes in its commit.
enum Step {
    /// Its location is stored already, under this id.
    Already(u64),
    /// Mapped to a copy stored under an earlier UIDVALIDITY; that copy's content key moves
    /// to the current one.
    Rematch { id: u64, claimed: Vec<u8> },
    /// Stored under this new id.
    Store(u64),
}

impl Step {
    fn id(&self) -> u64 {
        match self {
            Step::Already(id) | Step::Rematch { id, .. } | Step::Store(id) => *id,
        }
    }
}

/// A `messages` or `raw` value as it goes into its tree: as it is, or a zstd frame of it.
struct StoredValue {
    bytes: Vec<u8>,
    zstd: bool,
}

impl StoredValue {
    fn new(value: Vec<u8>, compression: Compression) -> StoredValue {
        match compression {
            Compression::Zstd => match compress(&value) {
                Some(bytes) => StoredValue { bytes, zstd: true },
                None => StoredValue {
                    bytes: value,
                    zstd: false,
                },
            },
            Compression::None => StoredValue {
                bytes: value,
                zstd: false,
            },
        }
    }
}

/// Size of the pieces `messages` and `raw` values are stored in (see the module docs).
pub const CHUNK: usize = 12 * 1024;

/// sled log segment size for new stores: blobs start at a quarter of it (256 KiB), above
/// the largest leaf of [`CHUNK`]-sized values (17 of them, with keys and headers).
pub const SEGMENT_SIZE: usize = 1024 * 1024;

/// sled's default segment size, which stores created before chunking use.
const LEGACY_SEGMENT_SIZE: usize = 512 * 1024;

/// The segment size an existing store was created with (sled refuses to open it with
/// another), read from the `conf` file sled writes beside its log; `None` for a new store.
fn existing_segment_size(dir: &Path) -> Option<usize> {
    // Text lines followed by a binary checksum.
    let conf = std::fs::read(dir.join("conf")).ok()?;
    let conf = String::from_utf8_lossy(&conf);
    Some(
        conf.lines()
            .find_map(|l| l.strip_prefix("segment_size:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(LEGACY_SEGMENT_SIZE),
    )
}

/// Set in a chunk number (the key's 9th byte holds its top bit): the pieces of this value
/// join to a zstd frame, not to the value itself (see the module docs).
const ZSTD_CHUNK: u32 = 0x8000_0000;

/// zstd level for new values: level 1 is the fastest of the ordinary levels and already takes
/// most of what text, HTML and base64 give up.
const ZSTD_LEVEL: i32 = 1;

/// Values shorter than this are stored as they are (a zstd frame has a header of its own).
const ZSTD_MIN_LEN: usize = 256;

/// How `messages` and `raw` values are written (`node.store_compression`). Both kinds are
/// always read, whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// zstd (level 1), when it makes the value smaller.
    #[default]
    Zstd,
    /// As they are.
    None,
}

thread_local! {
    /// One zstd context per thread that prepares messages (the store workers), kept: a new
    /// context per message costs more than compressing a short one.
    static ZSTD: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// `value` zstd-compressed, or `None` when compression does not make it smaller (or fails:
/// the value is then stored as it is, nothing is lost).
fn compress(value: &[u8]) -> Option<Vec<u8>> {
    if value.len() < ZSTD_MIN_LEN {
        return None;
    }
    ZSTD.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        let mut out = cell.as_mut()?.compress(value).ok()?;
        (out.len() < value.len()).then(|| {
            // The buffer was sized for the worst case; it waits for its commit.
            out.shrink_to_fit();
            out
        })
    })
}

/// A value read back: its pieces joined, decompressed when they were written compressed.
fn decode(id: u64, joined: Vec<u8>, compressed: bool) -> Result<Vec<u8>, StoreError> {
    if !compressed {
        return Ok(joined);
    }
    zstd::stream::decode_all(joined.as_slice())
        .map_err(|e| StoreError::Corrupt(format!("value {id}: zstd: {e}")))
}

/// Whether `key` is a piece of a compressed value ([`ZSTD_CHUNK`]).
fn is_zstd_key(key: &[u8]) -> bool {
    key.len() == 12 && key[8] & 0x80 != 0
}

fn chunk_key(id: u64, n: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Writes `value` under `id` as [`CHUNK`]-sized pieces (one empty piece for an empty value),
/// their chunk numbers marked [`ZSTD_CHUNK`] when `value` is a zstd frame.
fn put_chunked(
    tree: &sled::transaction::TransactionalTree,
    id: u64,
    value: &StoredValue,
) -> Result<(), sled::transaction::UnabortableTransactionError> {
    let flag = if value.zstd { ZSTD_CHUNK } else { 0 };
    if value.bytes.is_empty() {
        tree.insert(&chunk_key(id, flag), &[] as &[u8])?;
    }
    for (n, piece) in value.bytes.chunks(CHUNK).enumerate() {
        tree.insert(&chunk_key(id, flag | n as u32), piece)?;
    }
    Ok(())
}

/// The value under `id`: its pieces joined, or a whole value under the 8-byte key of a store
/// written before chunking.
fn get_chunked(tree: &sled::Tree, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
    let prefix = id.to_be_bytes();
    let mut out: Option<(Vec<u8>, bool)> = None;
    for item in tree.scan_prefix(prefix) {
        let (k, v) = item?;
        out.get_or_insert_with(|| (Vec::new(), is_zstd_key(&k)))
            .0
            .extend_from_slice(&v);
    }
    out.map(|(joined, zstd)| decode(id, joined, zstd))
        .transpose()
}

/// Every value of `tree` in id order, pieces joined (see [`get_chunked`]).
fn iter_chunked(tree: &sled::Tree) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> {
    let mut items = tree.iter().peekable();
    std::iter::from_fn(move || {
        let (k, v) = match items.next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e.into())),
        };
        let Some(id) = k
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
        else {
            return Some(Err(StoreError::Corrupt(format!(
                "key of {} bytes",
                k.len()
            ))));
        };
        let mut value = v.to_vec();
        while let Some(Ok((next, _))) = items.peek() {
            if next.get(..8) != Some(&k[..8]) {
                break;
            }
            match items.next() {
                Some(Ok((_, v))) => value.extend_from_slice(&v),
                Some(Err(e)) => return Some(Err(e.into())),
                None => break,
            }
        }
        Some(decode(id, value, is_zstd_key(&k)).map(|value| (id, value)))
    })
}

fn imap_key(source: &str, folder: &str, uidvalidity: u32, uid: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(source.len() + folder.len() + 12);
    k.extend_from_slice(b"i\0");
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(folder.as_bytes());
    k.push(0);
    k.extend_from_slice(&uidvalidity.to_be_bytes());
    k.extend_from_slice(&uid.to_be_bytes());
    k
}

fn pop3_prefix(source: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(source.len() + 3);
    k.extend_from_slice(b"p\0");
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k
}

fn pop3_key(source: &str, uidl: &str) -> Vec<u8> {
    let mut k = pop3_prefix(source);
    k.extend_from_slice(uidl.as_bytes());
    k
}

fn folder_key(source: &str, folder: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(source.len() + folder.len() + 1);
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(folder.as_bytes());
    k
}

fn content_key(source: &str, folder: &str, sha: &[u8]) -> Vec<u8> {
    let mut k = folder_key(source, folder);
    k.push(0);
    k.extend_from_slice(sha);
    k
}

/// A message record read back; its id is its key.
fn decode_meta(id: u64, value: &[u8]) -> Result<MessageMeta, StoreError> {
    let mut meta: MessageMeta = serde_json::from_slice(value)
        .map_err(|e| StoreError::Corrupt(format!("message {id}: {e}")))?;
    meta.id = id;
    Ok(meta)
}

fn id_of(v: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = v
        .try_into()
        .map_err(|_| StoreError::Corrupt("index value is not a u64".into()))?;
    Ok(u64::from_be_bytes(arr))
}

fn abort<E>(e: E) -> ConflictableTransactionError<E> {
    ConflictableTransactionError::Abort(e)
}

impl Store {
    /// Opens (or creates) the store in `dir`, with the at-rest key from `key_file`
    /// (created 0600 on first use).
    pub fn open(dir: &Path, key_file: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        restrict_dir(dir);
        let segment_size = existing_segment_size(dir).unwrap_or(SEGMENT_SIZE);
        let db = match sled::Config::new()
            .path(dir)
            // sled caches up to 1 GiB by default; a collector mostly writes, so a small
            // cache keeps memory bounded whatever the store size.
            .cache_capacity(16 * 1024 * 1024)
            .segment_size(segment_size)
            .open()
        {
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
        let flusher = {
            let db = db.clone();
            let blobs = blob_sync.clone();
            flusher::Flusher::start(move || {
                db.flush()?;
                match &blobs {
                    Some(state) => sync_new_blobs(state).map_err(|e| match e {
                        StoreError::Sled(e) => e,
                        other => sled::Error::Io(std::io::Error::other(other.to_string())),
                    }),
                    None => Ok(()),
                }
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
            db,
            secret_box: std::sync::RwLock::new(secret_box),
            key_file: key_file.to_path_buf(),
            dir: dir.to_path_buf(),
            min_free: std::sync::atomic::AtomicU64::new(0),
            zstd: std::sync::atomic::AtomicBool::new(Compression::default() == Compression::Zstd),
            blob_sync,
            flusher,
            commits: std::sync::Mutex::new(next_id),
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
        // Stored data costs up to about twice its size until sled compacts its log.
        let needed = min.saturating_add(incoming.saturating_mul(2));
        match fs4::available_space(&self.dir) {
            Ok(free) if free < needed => Err(StoreError::DiskFull {
                path: self.dir.display().to_string(),
                free,
                needed,
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(StoreError::Sled(sled::Error::Io(e))),
        }
    }

    pub fn checkpoint(&self, source: &str, folder: &str) -> Result<Option<Checkpoint>, StoreError> {
        match self.checkpoints.get(folder_key(source, folder))? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("checkpoint {source}/{folder}: {e}"))),
            None => Ok(None),
        }
    }

    /// Starts a folder over under a new UIDVALIDITY (the old UIDs mean nothing now). The
    /// messages below `uidnext` were there at the change and are re-matched by content
    /// ([`Checkpoint::rematches`]); without a UIDNEXT every UID is.
    pub fn reset_checkpoint(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
        uidnext: Option<u32>,
    ) -> Result<Checkpoint, StoreError> {
        let cp = Checkpoint {
            uidvalidity,
            last_uid: 0,
            rematch_below: Some(uidnext.unwrap_or(u32::MAX)),
        };
        self.checkpoints.insert(
            folder_key(source, folder),
            serde_json::to_vec(&cp).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        )?;
        Ok(cp)
    }

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
    /// Ids are given here, in commit order, under the commit lock. What each message becomes
    /// (already stored, re-matched to a stored copy, or stored) is decided under the same
    /// lock before the transaction: only commits write the index and content trees, so what
    /// is read then stays true until the transaction has run.
    pub fn commit_batch(&self, prepared: &[Prepared]) -> Result<Vec<StoreOutcome>, StoreError> {
        let mut next_id = self
            .commits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let plan = self.plan(prepared, *next_id)?;
        let result = (
            &self.messages,
            &self.raw,
            &self.index,
            &self.content,
            &self.checkpoints,
            &self.pending,
            &self.counts,
        )
            .transaction(
                |(messages, raw, index, content, checkpoints, pending, counts)| {
                    let mut stored_per_source: Vec<(&[u8], u64)> = Vec::new();
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
        let mut outcomes = Vec::with_capacity(plan.len());
        for step in plan {
            outcomes.push(match step {
                Step::Already(id) | Step::Rematch { id, .. } => StoreOutcome::AlreadyStored(id),
                Step::Store(id) => {
                    *next_id = id + 1;
                    StoreOutcome::Stored(id)
                }
            });
        }
        Ok(outcomes)
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
        let rematch = msg.rematch;
        let source_key = msg.source.as_bytes().to_vec();
        let (parsed, parse_error) = match msg.parsed {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
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
            meta: StoredValue::new(meta_bytes, compression),
            raw: StoredValue::new(msg.raw, compression),
        })
    }

    /// Advances an IMAP checkpoint past a message that is deliberately not stored
    /// (e.g. over `max_message_bytes`).
    pub fn skip(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
        uid: u32,
    ) -> Result<(), StoreError> {
        let key = folder_key(source, folder);
        let current = self.checkpoint(source, folder)?;
        if let Some(c) = current
            && c.uidvalidity == uidvalidity
            && c.last_uid >= uid
        {
            return Ok(());
        }
        let cp = Checkpoint::advanced(
            current,
            Checkpoint {
                uidvalidity,
                last_uid: uid,
                rematch_below: None,
            },
        );
        self.checkpoints.insert(
            key,
            serde_json::to_vec(&cp).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        )?;
        Ok(())
    }

    /// UIDs of `folder` (under `uidvalidity`) whose post-action is still to be done, and
    /// forgets those recorded under another UIDVALIDITY (their UIDs mean nothing now).
    pub fn pending_actions(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
    ) -> Result<Vec<u32>, StoreError> {
        let mut prefix = b"i\0".to_vec();
        prefix.extend_from_slice(&folder_key(source, folder));
        prefix.push(0);
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for item in self.pending.scan_prefix(&prefix) {
            let (k, _) = item?;
            let rest = &k[prefix.len()..];
            if rest.len() != 8 {
                continue;
            }
            let uv = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let uid = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            if uv == uidvalidity {
                out.push(uid);
            } else {
                stale.push(k);
            }
        }
        for k in stale {
            self.pending.remove(k)?;
        }
        Ok(out)
    }

    /// Records that the post-action of these UIDs is done (call after the server said OK).
    pub fn actions_done(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
        uids: &[u32],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for uid in uids {
            batch.remove(imap_key(source, folder, uidvalidity, *uid));
        }
        self.pending.apply_batch(batch)?;
        Ok(())
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
        self.db.flush()?;
        if let Some(state) = &self.blob_sync {
            sync_new_blobs(state)?;
        }
        Ok(())
    }

    pub fn meta(&self, id: u64) -> Result<Option<MessageMeta>, StoreError> {
        get_chunked(&self.messages, id)?
            .map(|v| decode_meta(id, &v))
            .transpose()
    }

    pub fn raw(&self, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
        get_chunked(&self.raw, id)
    }

    /// Messages in storage order, optionally of one source.
    pub fn iter_meta<'a>(
        &'a self,
        source: Option<&'a str>,
    ) -> impl Iterator<Item = Result<MessageMeta, StoreError>> + 'a {
        iter_chunked(&self.messages)
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

    pub fn token(&self, key: &str) -> Result<Option<StoredToken>, StoreError> {
        match self.tokens.get(key.as_bytes())? {
            Some(v) => {
                let plain = self
                    .secret_box
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .open(&v)
                    .map_err(|e| StoreError::Corrupt(format!("token {key}: {e}")))?;
                serde_json::from_slice(&plain)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt(format!("token {key}: {e}")))
            }
            None => Ok(None),
        }
    }

    /// Writes a token record and flushes it to disk before returning: a rotated refresh
    /// token must survive a crash before the new access token is used.
    pub async fn put_token(&self, key: &str, token: &StoredToken) -> Result<(), StoreError> {
        let plain = serde_json::to_vec(token).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sealed = self
            .secret_box
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .seal(&plain)
            .map_err(StoreError::Key)?;
        self.tokens.insert(key.as_bytes(), sealed)?;
        // No deadline here (callers' runtimes need not have timers): a token write is small.
        Ok(self.flusher.flush().await?)
    }

    /// Replaces the at-rest key: a new key is written beside the old one (`<key>.new`),
    /// every token record is re-encrypted in one batch and flushed, then the new key file
    /// replaces the old. A crash at any point leaves a store that opens (see `open_key`).
    /// Returns the number of records re-encrypted.
    pub fn rotate_key(&self) -> Result<usize, StoreError> {
        let pending = crypto::pending_path(&self.key_file);
        let _ = std::fs::remove_file(&pending);
        let new_box = SecretBox::create_at(&pending).map_err(StoreError::Key)?;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        {
            let old = self.secret_box.read().unwrap_or_else(|p| p.into_inner());
            for item in self.tokens.iter() {
                let (k, v) = item?;
                let plain = old.open(&v).map_err(|e| {
                    StoreError::Corrupt(format!("token {}: {e}", String::from_utf8_lossy(&k)))
                })?;
                batch.insert(k, new_box.seal(&plain).map_err(StoreError::Key)?);
                n += 1;
            }
        }
        self.tokens.apply_batch(batch)?;
        self.tokens.flush()?;
        std::fs::rename(&pending, &self.key_file)
            .map_err(|e| StoreError::Key(format!("{}: {e}", self.key_file.display())))?;
        *self.secret_box.write().unwrap_or_else(|p| p.into_inner()) = new_box;
        Ok(n)
    }

    pub fn token_keys(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for item in self.tokens.iter() {
            let (k, _) = item?;
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }
}

/// Loads the at-rest key, finishing or undoing an interrupted rotation: when `<key>.new`
/// exists, whichever key opens the stored records wins and the other file goes.
fn open_key(key_file: &Path, tokens: &sled::Tree) -> Result<SecretBox, StoreError> {
    let pending = crypto::pending_path(key_file);
    if !pending.exists() {
        return SecretBox::load_or_create(key_file).map_err(StoreError::Key);
    }
    let sample = tokens.iter().next().transpose()?.map(|(_, v)| v);
    let current = SecretBox::load(key_file).ok();
    let opens = |b: &SecretBox| sample.as_ref().is_none_or(|v| b.open(v).is_ok());
    if let Some(cur) = current.filter(|b| opens(b)) {
        let _ = std::fs::remove_file(&pending);
        return Ok(cur);
    }
    let new = SecretBox::load(&pending).map_err(StoreError::Key)?;
    if !opens(&new) {
        return Err(StoreError::Key(format!(
            "neither {} nor {} decrypts the stored tokens",
            key_file.display(),
            pending.display()
        )));
    }
    std::fs::rename(&pending, key_file)
        .map_err(|e| StoreError::Key(format!("{}: {e}", key_file.display())))?;
    Ok(new)
}

#[cfg(unix)]
fn restrict_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

#[cfg(not(unix))]
fn restrict_dir(_dir: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db"), &dir.path().join("key")).unwrap();
        (dir, s)
    }

    fn imap_msg(uid: u32, uv: u32, raw: &[u8]) -> NewMessage {
        NewMessage {
            source: "s".into(),
            location: Location::Imap {
                folder: "INBOX".into(),
                uidvalidity: uv,
                uid,
            },
            raw: raw.to_vec(),
            internal_date: None,
            parsed: crate::parse::parse(raw),
            post_action: false,
            rematch: false,
        }
    }

    /// `msg` as the re-matching after a UIDVALIDITY change stores it.
    fn rematching(msg: NewMessage) -> NewMessage {
        NewMessage {
            rematch: true,
            ..msg
        }
    }

    #[test]
    fn stores_once_and_advances_checkpoint() {
        let (_d, s) = store();
        let a = s.store(imap_msg(3, 7, b"Subject: a\r\n\r\nx\r\n")).unwrap();
        assert!(matches!(a, StoreOutcome::Stored(_)));
        let again = s.store(imap_msg(3, 7, b"Subject: a\r\n\r\nx\r\n")).unwrap();
        assert!(matches!(again, StoreOutcome::AlreadyStored(_)));
        assert_eq!(
            s.checkpoint("s", "INBOX").unwrap(),
            Some(Checkpoint {
                uidvalidity: 7,
                last_uid: 3,
                rematch_below: None,
            })
        );
        // An older UID never moves the checkpoint back.
        s.store(imap_msg(2, 7, b"Subject: b\r\n\r\ny\r\n")).unwrap();
        assert_eq!(s.checkpoint("s", "INBOX").unwrap().unwrap().last_uid, 3);
        assert_eq!(s.counts().unwrap()["s"], 2);
    }

    #[test]
    fn rematch_after_uidvalidity_change_maps_to_existing_copy() {
        let (_d, s) = store();
        let a = b"Subject: a\r\n\r\nx\r\n";
        s.store(imap_msg(1, 7, a)).unwrap();
        let cp = s.reset_checkpoint("s", "INBOX", 8, Some(3)).unwrap();
        assert!(cp.rematches(2) && !cp.rematches(3));
        let out = s.store(rematching(imap_msg(1, 8, a))).unwrap();
        assert!(matches!(out, StoreOutcome::AlreadyStored(_)));
        let new = s
            .store(rematching(imap_msg(2, 8, b"Subject: new\r\n\r\nz\r\n")))
            .unwrap();
        assert!(matches!(new, StoreOutcome::Stored(_)));
        assert_eq!(s.counts().unwrap()["s"], 2);
        assert_eq!(
            s.checkpoint("s", "INBOX").unwrap().unwrap(),
            Checkpoint {
                uidvalidity: 8,
                last_uid: 2,
                rematch_below: Some(3),
            },
            "storing keeps the re-match bound"
        );
        // Arrived after the change with the same bytes: a message of its own.
        let later = s.store(imap_msg(3, 8, a)).unwrap();
        assert!(matches!(later, StoreOutcome::Stored(_)), "{later:?}");
        assert_eq!(s.counts().unwrap()["s"], 3);
    }

    /// Each UID is one message: byte-identical messages in one folder are each stored, and
    /// after a UIDVALIDITY change two identical old copies answer for two new UIDs, while a
    /// third identical new UID is stored.
    #[test]
    fn identical_messages_are_one_message_per_uid() {
        let (_d, s) = store();
        let same = b"Subject: same\r\n\r\nbody\r\n";
        let first = s
            .store_batch(vec![
                (imap_msg(1, 7, same), true),
                (imap_msg(2, 7, same), true),
            ])
            .unwrap();
        let [StoreOutcome::Stored(a), StoreOutcome::Stored(b)] = first[..] else {
            panic!("{first:?}")
        };
        assert_ne!(a, b);
        assert_eq!(s.counts().unwrap()["s"], 2);
        s.reset_checkpoint("s", "INBOX", 9, None).unwrap();
        // One batch and then one more: claims within a batch and across commits.
        let again = s
            .store_batch(vec![
                (rematching(imap_msg(5, 9, same)), true),
                (rematching(imap_msg(6, 9, same)), true),
            ])
            .unwrap();
        let mut ids: Vec<u64> = again
            .iter()
            .map(|o| match o {
                StoreOutcome::AlreadyStored(id) => *id,
                other => panic!("{other:?}"),
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, vec![a, b]);
        let third = s.store(rematching(imap_msg(7, 9, same))).unwrap();
        assert!(matches!(third, StoreOutcome::Stored(_)), "{third:?}");
        assert_eq!(s.counts().unwrap()["s"], 3);
        // Re-running the re-match (a crash before the checkpoint was read) finds each UID
        // where it was put.
        assert_eq!(s.store(rematching(imap_msg(5, 9, same))).unwrap(), again[0]);
    }

    /// A store written before each copy had a content key of its own (`prefix → id`) still
    /// re-matches, and the claimed copy moves to a key of the new kind.
    #[test]
    fn content_keys_of_older_stores_still_rematch() {
        let (_d, s) = store();
        let raw = b"Subject: old\r\n\r\nx\r\n";
        let StoreOutcome::Stored(id) = s.store(imap_msg(1, 7, raw)).unwrap() else {
            panic!()
        };
        let prefix = content_key("s", "INBOX", &Sha256::digest(raw));
        let keys: Vec<_> = s
            .content
            .scan_prefix(&prefix)
            .keys()
            .map(Result::unwrap)
            .collect();
        assert_eq!(keys.len(), 1);
        s.content.remove(&keys[0]).unwrap();
        s.content.insert(&prefix, &id.to_be_bytes()).unwrap();
        s.reset_checkpoint("s", "INBOX", 8, None).unwrap();
        let out = s.store(rematching(imap_msg(4, 8, raw))).unwrap();
        assert_eq!(out, StoreOutcome::AlreadyStored(id));
        assert!(s.content.get(&prefix).unwrap().is_none());
        assert_eq!(s.content.scan_prefix(&prefix).count(), 1);
    }

    /// Ids are given in commit order: a reader paging by id while several threads commit
    /// never finds a smaller id appear after it has seen a larger one.
    #[test]
    fn ids_are_given_in_commit_order() {
        let (_d, s) = store();
        let s = std::sync::Arc::new(s);
        let writers: Vec<_> = (0..4u32)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for uid in 1..=50u32 {
                        let batch = (0..3u32)
                            .map(|k| {
                                let raw = format!("Subject: {t}-{uid}-{k}\r\n\r\nx\r\n");
                                let mut m = imap_msg(uid * 3 + k, 1, raw.as_bytes());
                                m.source = format!("s{t}");
                                (m, true)
                            })
                            .collect();
                        // Prepared on this thread, as the workers do.
                        let prepared = s.prepare_batch(batch).unwrap();
                        s.commit_batch(&prepared).unwrap();
                    }
                })
            })
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        let mut after = 0u64;
        let total = 4 * 50 * 3;
        while seen.len() < total {
            for m in s.iter_meta(None) {
                let id = m.unwrap().id;
                if id > after {
                    seen.insert(id);
                    after = id;
                }
            }
            // Every id up to the largest seen is known: none appears behind the reader.
            assert_eq!(
                seen.len() as u64,
                after,
                "a smaller id appeared after {after}"
            );
        }
        for w in writers {
            w.join().unwrap();
        }
        assert_eq!(
            seen.iter().copied().collect::<Vec<_>>(),
            (1..=total as u64).collect::<Vec<_>>()
        );
    }

    #[test]
    fn raw_bytes_and_parse_errors_are_kept() {
        let (_d, s) = store();
        let junk = b"\r\n";
        let StoreOutcome::Stored(id) = s.store(imap_msg(1, 1, junk)).unwrap() else {
            panic!()
        };
        let meta = s.meta(id).unwrap().unwrap();
        assert!(meta.parse_error.is_some() && meta.parsed.is_none());
        assert_eq!(s.raw(id).unwrap().unwrap(), junk);
    }

    /// Large messages and metadata come back whole, in order, with nothing written outside
    /// sled's fsynced log: no blob files (see the module docs on chunked values).
    #[test]
    fn large_values_are_chunked_and_no_blob_files_are_written() {
        let (d, s) = store();
        // As they are: compressed, these values would be a few pieces each.
        s.set_compression(Compression::None);
        let mut big = b"Subject: big\r\nContent-Type: text/plain\r\n\r\n".to_vec();
        while big.len() < 3 * 1024 * 1024 {
            big.extend_from_slice(
                b"0123456789abcdefghijklmnopqrstuvwxyz 0123456789abcdefghijklmn\r\n",
            );
        }
        let mut msgs = Vec::new();
        for uid in 1..=40u32 {
            let raw = if uid == 7 {
                big.clone()
            } else {
                let mut m = format!("Subject: m{uid}\r\n\r\n").into_bytes();
                m.resize(30_000 + uid as usize, b'x');
                m
            };
            msgs.push((imap_msg(uid, 1, &raw), true));
        }
        let expected: Vec<Vec<u8>> = msgs.iter().map(|(m, _)| m.raw.clone()).collect();
        let outcomes = s.store_batch(msgs).unwrap();
        s.flush_sync().unwrap();
        assert_eq!(outcomes.len(), 40);
        for (outcome, raw) in outcomes.iter().zip(&expected) {
            let StoreOutcome::Stored(id) = outcome else {
                panic!("{outcome:?}")
            };
            assert_eq!(s.raw(*id).unwrap().as_ref(), Some(raw));
            assert_eq!(s.meta(*id).unwrap().unwrap().size, raw.len() as u64);
        }
        let listed: Vec<MessageMeta> = s.iter_meta(None).map(Result::unwrap).collect();
        assert_eq!(listed.len(), 40);
        assert!(listed.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(s.checkpoint("s", "INBOX").unwrap().unwrap().last_uid, 40);
        let blobs = std::fs::read_dir(d.path().join("db").join("blobs"))
            .map(|entries| entries.count())
            .unwrap_or(0);
        assert_eq!(blobs, 0, "sled wrote blob files, which it does not fsync");
    }

    /// Bytes stored under `id` in `tree` and whether they are marked compressed, per piece.
    fn pieces(tree: &sled::Tree, id: u64) -> (usize, Vec<bool>) {
        let mut bytes = 0;
        let mut flags = Vec::new();
        for item in tree.scan_prefix(id.to_be_bytes()) {
            let (k, v) = item.unwrap();
            bytes += v.len();
            flags.push(is_zstd_key(&k));
        }
        (bytes, flags)
    }

    /// Bytes no compressor can shrink (xorshift), as a message body.
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut out = b"Subject: noise\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }

    fn stored_id(outcome: &StoreOutcome) -> u64 {
        match outcome {
            StoreOutcome::Stored(id) => *id,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn values_are_compressed_when_it_pays_and_read_back_exactly() {
        let (_d, s) = store();
        let mut text = b"Subject: report\r\nContent-Type: text/plain\r\n\r\n".to_vec();
        while text.len() < 200_000 {
            text.extend_from_slice(b"The invoice for order 1234 is attached; please confirm.\r\n");
        }
        let noisy = noise(100_000);
        let out = s
            .store_batch(vec![
                (imap_msg(1, 1, &text), true),
                (imap_msg(2, 1, &noisy), true),
            ])
            .unwrap();
        let (t, n) = (stored_id(&out[0]), stored_id(&out[1]));
        // Text: a zstd frame of a fraction of the size, every piece marked.
        let (bytes, flags) = pieces(&s.raw, t);
        assert!(bytes < text.len() / 10, "{bytes} of {}", text.len());
        assert!(!flags.is_empty() && flags.iter().all(|f| *f), "{flags:?}");
        let (meta_bytes, meta_flags) = pieces(&s.messages, t);
        assert!(
            meta_flags.iter().all(|f| *f),
            "the parsed text body is compressed too"
        );
        assert!(meta_bytes < 20_000, "{meta_bytes}");
        // Noise: compression would make it larger, so it is stored as it is.
        let (bytes, flags) = pieces(&s.raw, n);
        assert_eq!(bytes, noisy.len());
        assert!(flags.iter().all(|f| !*f), "{flags:?}");
        // Both read back byte for byte, with their parsed fields.
        assert_eq!(s.raw(t).unwrap().unwrap(), text);
        assert_eq!(s.raw(n).unwrap().unwrap(), noisy);
        let meta = s.meta(t).unwrap().unwrap();
        assert_eq!(meta.size, text.len() as u64);
        assert!(
            meta.parsed
                .unwrap()
                .text_body
                .unwrap()
                .starts_with("The invoice")
        );
        let listed: Vec<u64> = s.iter_meta(None).map(|m| m.unwrap().id).collect();
        assert_eq!(listed, vec![t, n]);
    }

    #[test]
    fn compression_can_be_turned_off_and_both_kinds_are_read() {
        let (_d, s) = store();
        let body = |uid: u32| {
            let mut m = format!("Subject: m{uid}\r\n\r\n").into_bytes();
            m.resize(50_000, b'q');
            m
        };
        let first = stored_id(
            &s.store_batch(vec![(imap_msg(1, 1, &body(1)), true)])
                .unwrap()[0],
        );
        s.set_compression(Compression::None);
        let second = stored_id(
            &s.store_batch(vec![(imap_msg(2, 1, &body(2)), true)])
                .unwrap()[0],
        );
        assert!(pieces(&s.raw, first).1.iter().all(|f| *f));
        let (bytes, flags) = pieces(&s.raw, second);
        assert_eq!(bytes, 50_000);
        assert!(flags.iter().all(|f| !*f));
        assert!(pieces(&s.messages, second).1.iter().all(|f| !*f));
        assert_eq!(s.raw(first).unwrap().unwrap(), body(1));
        assert_eq!(s.raw(second).unwrap().unwrap(), body(2));
        let subjects: Vec<String> = s
            .iter_meta(None)
            .map(|m| m.unwrap().parsed.unwrap().subject.unwrap())
            .collect();
        assert_eq!(subjects, ["m1", "m2"]);
    }

    #[test]
    fn a_damaged_compressed_value_is_an_error_naming_it() {
        let (_d, s) = store();
        s.raw
            .insert(chunk_key(77, ZSTD_CHUNK), &b"not a zstd frame"[..])
            .unwrap();
        match s.raw(77) {
            Err(StoreError::Corrupt(m)) => assert!(m.contains("value 77: zstd"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// Many sources storing and flushing at once (a fan-out node's normal day) must never
    /// hang the store. sled's own `flush_async` did: its flushes took every thread of the
    /// pool that also writes the log buffers they wait for.
    #[test]
    fn concurrent_flushes_complete() {
        let (_d, s) = store();
        let s = std::sync::Arc::new(s);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for t in 0..48u32 {
            let s = s.clone();
            let done_tx = done_tx.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                for uid in 1..=12u32 {
                    let mut raw = format!("Subject: {t}-{uid}\r\n\r\n").into_bytes();
                    raw.resize(
                        20_000 + ((t * 7919 + uid * 104_729) % 200_000) as usize,
                        b'q',
                    );
                    let mut msg = imap_msg(uid, 1, &raw);
                    msg.source = format!("s{t}");
                    s.store(msg).unwrap();
                    if uid % 3 == 0 {
                        rt.block_on(s.flush()).unwrap();
                    }
                }
                done_tx.send(()).unwrap();
            });
        }
        drop(done_tx);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        for n in 0..48 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            done_rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("store hung: {n} of 48 writers finished in 60 s"));
        }
        assert_eq!(s.counts().unwrap().values().sum::<u64>(), 48 * 12);
    }

    /// A store written before chunking (whole values under 8-byte keys, 512 KiB segments)
    /// still opens and reads, and new messages land beside the old ones.
    #[test]
    fn stores_written_before_chunking_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let db_dir = dir.path().join("db");
        let old_raw = vec![b'y'; 200_000];
        {
            let db = sled::Config::new().path(&db_dir).open().unwrap();
            let meta = MessageMeta {
                id: 5,
                source: "s".into(),
                location: Location::Imap {
                    folder: "INBOX".into(),
                    uidvalidity: 1,
                    uid: 1,
                },
                sha256: String::new(),
                size: old_raw.len() as u64,
                internal_date: None,
                stored_at: String::new(),
                parsed: None,
                parse_error: Some("old".into()),
            };
            db.open_tree("messages")
                .unwrap()
                .insert(5u64.to_be_bytes(), serde_json::to_vec(&meta).unwrap())
                .unwrap();
            db.open_tree("raw")
                .unwrap()
                .insert(5u64.to_be_bytes(), old_raw.as_slice())
                .unwrap();
            db.flush().unwrap();
        }
        let s = reopen(&db_dir, &dir.path().join("key"));
        assert!(
            s.blob_sync.is_some(),
            "a 512 KiB-segment store must sync its blob files"
        );
        assert_eq!(s.raw(5).unwrap().unwrap(), old_raw);
        assert_eq!(
            s.meta(5).unwrap().unwrap().parse_error.as_deref(),
            Some("old")
        );
        let StoreOutcome::Stored(id) = s.store(imap_msg(2, 1, &vec![b'z'; 50_000])).unwrap() else {
            panic!()
        };
        s.flush_sync().unwrap();
        let ids: Vec<u64> = s.iter_meta(None).map(|m| m.unwrap().id).collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&5) && ids.contains(&id));
        assert_eq!(s.raw(id).unwrap().unwrap(), vec![b'z'; 50_000]);
    }

    /// Opens a store just dropped in this process: sled's flusher thread lets go of the
    /// lock a moment after the handle is dropped.
    fn reopen(dir: &Path, key: &Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Store::open(dir, key) {
                Ok(s) => return s,
                Err(StoreError::Locked(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn key_rotation_reencrypts_and_survives_an_interruption() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let tok = StoredToken {
            refresh_token: Some("rt-value".into()),
            ..Default::default()
        };
        {
            let s = reopen(&dir.path().join("db"), &key);
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(s.put_token("a", &tok))
                .unwrap();
            let before = std::fs::read_to_string(&key).unwrap();
            assert_eq!(s.rotate_key().unwrap(), 1);
            assert_ne!(std::fs::read_to_string(&key).unwrap(), before);
            assert_eq!(s.token("a").unwrap().unwrap(), tok);
            assert!(!crypto::pending_path(&key).exists());
        }
        // Reopen with the rotated key.
        let s = reopen(&dir.path().join("db"), &key);
        assert_eq!(s.token("a").unwrap().unwrap(), tok);
        // Interrupted before the rename: records are under the pending key.
        let pending = crypto::pending_path(&key);
        let new_box = SecretBox::create_at(&pending).unwrap();
        let plain = serde_json::to_vec(&tok).unwrap();
        s.tokens.insert("a", new_box.seal(&plain).unwrap()).unwrap();
        s.flush_sync().unwrap();
        drop(s);
        let s = reopen(&dir.path().join("db"), &key);
        assert_eq!(s.token("a").unwrap().unwrap(), tok);
        assert!(!pending.exists());
        // Interrupted before any record moved: the old key stays, the pending one goes.
        SecretBox::create_at(&pending).unwrap();
        drop(s);
        let s = reopen(&dir.path().join("db"), &key);
        assert_eq!(s.token("a").unwrap().unwrap(), tok);
        assert!(!pending.exists());
    }

    #[test]
    fn pop3_uidls_and_tokens() {
        let (d, s) = store();
        let msg = NewMessage {
            source: "p".into(),
            location: Location::Pop3 { uidl: "abc".into() },
            raw: b"Subject: x\r\n\r\n".to_vec(),
            internal_date: None,
            parsed: Err("x".into()),
            post_action: false,
            rematch: false,
        };
        s.store(msg).unwrap();
        assert!(s.stored_uidls("p").unwrap().contains("abc"));
        assert!(s.stored_uidls("pp").unwrap().is_empty());
        let tok = StoredToken {
            refresh_token: Some("very-secret-refresh".into()),
            ..Default::default()
        };
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(s.put_token("p", &tok))
            .unwrap();
        assert_eq!(s.token("p").unwrap().unwrap(), tok);
        assert!(!format!("{tok:?}").contains("very-secret"));
        drop(s);
        // The token bytes never reach the disk in clear.
        for entry in std::fs::read_dir(d.path().join("db")).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() {
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(19).any(|w| w == b"very-secret-refresh"),
                    "{p:?}"
                );
            }
        }
    }
}
