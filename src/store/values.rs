//! How `messages` and `raw` values sit in sled: cut into pieces, zstd-compressed when
//! that pays, in segments no blob is ever written for; and, for stores written before
//! that, the blob files sled never syncs, synced on every flush.
//!
//! # Chunked values, and why
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
//! # Compression
//! New `messages` and `raw` values are zstd frames (level 1) when that makes them smaller
//! (`node.store_compression`, [`Compression`]); the pieces of such a value have the top bit
//! of their chunk number set ([`ZSTD_CHUNK`]), so every value says for itself how to read it
//! and stores written before (or with `none`) read as they are. Why: sled rewrites a value
//! about three times after the write itself (its B-tree leaves are rewritten when they split
//! and its log segments are cleaned), so the store wrote 4.4 bytes per byte of mail and the
//! disk was what a backfill waited for. Compressing once, on the workers, before sled sees
//! a value, cuts every one of those writes: the bench corpus stores in half the bytes (text
//! and HTML to a fifth, base64 attachments to three quarters).

use std::collections::HashSet;
use std::path::Path;

use super::StoreError;

/// What [`sync_new_blobs`] needs: the blobs directory and the blob files (sled names them
/// by log sequence number) already synced.
pub(super) struct BlobSync {
    pub(super) dir: std::path::PathBuf,
    pub(super) synced: std::sync::Mutex<HashSet<u64>>,
}

/// fsyncs the blob files sled wrote since the last call, then their directory. sled 0.34
/// writes a blob before the log entry that points to it but never syncs it, so without this a
/// power cut after a flush could leave the log pointing at a blob that never reached the disk.
/// Only stores created before chunking write blobs (see the module docs).
pub(super) fn sync_new_blobs(state: &BlobSync) -> Result<(), StoreError> {
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

/// A `messages` or `raw` value as it goes into its tree: as it is, or a zstd frame of it.
pub(super) struct StoredValue {
    bytes: Vec<u8>,
    zstd: bool,
}

impl StoredValue {
    pub(super) fn new(value: Vec<u8>, compression: Compression) -> StoredValue {
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

// The largest leaf of chunks (17 entries, each with its 12-byte key and a header) stays
// under sled's blob threshold, a quarter of a segment (see the module docs).
const _: () = assert!(17 * (CHUNK + 64) < SEGMENT_SIZE / 4);

/// sled's default segment size, which stores created before chunking use.
pub(super) const LEGACY_SEGMENT_SIZE: usize = 512 * 1024;

/// The segment size an existing store was created with (sled refuses to open it with
/// another), read from the `conf` file sled writes beside its log; `None` for a new store.
pub(super) fn existing_segment_size(dir: &Path) -> Option<usize> {
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
pub(super) const ZSTD_CHUNK: u32 = 0x8000_0000;

/// zstd level for new values: level 1 is the fastest of the ordinary levels and already takes
/// most of what text, HTML and base64 give up.
pub(super) const ZSTD_LEVEL: i32 = 1;

/// Values shorter than this are stored as they are (a zstd frame has a header of its own).
pub(super) const ZSTD_MIN_LEN: usize = 256;

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
pub(super) fn compress(value: &[u8]) -> Option<Vec<u8>> {
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
pub(super) fn decode(id: u64, joined: Vec<u8>, compressed: bool) -> Result<Vec<u8>, StoreError> {
    if !compressed {
        return Ok(joined);
    }
    let corrupt = |e: std::io::Error| StoreError::Corrupt(format!("value {id}: zstd: {e}"));
    // Values are compressed whole, so their frame says how large they are: decompressed
    // into one allocation of that size with this thread's context (a new context per
    // value cost more than decompressing a short one). A size past any value's is not
    // believed; the stream decoder then finds out.
    match zstd::zstd_safe::get_frame_content_size(&joined) {
        Ok(Some(size)) if size <= MAX_DECLARED_SIZE => UNZSTD.with(|cell| {
            let mut cell = cell.borrow_mut();
            let decompressor = match cell.as_mut() {
                Some(d) => d,
                None => cell.insert(zstd::bulk::Decompressor::new().map_err(corrupt)?),
            };
            decompressor
                .decompress(&joined, size as usize)
                .map_err(corrupt)
        }),
        _ => zstd::stream::decode_all(joined.as_slice()).map_err(corrupt),
    }
}

/// The largest size a value's zstd frame may declare and be decompressed in one piece: a
/// message is at most 1 GiB (`max_message_bytes`), its parsed fields less.
const MAX_DECLARED_SIZE: u64 = 1 << 30;

thread_local! {
    /// One zstd decompression context per thread that reads values, kept.
    static UNZSTD: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// The pieces of one value, read as a byte stream one piece at a time: a large message is
/// never whole in memory.
pub struct Pieces {
    iter: sled::Iter,
    current: sled::IVec,
    pos: usize,
}

impl std::io::Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos < self.current.len() {
                let n = buf.len().min(self.current.len() - self.pos);
                buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match self.iter.next() {
                Some(Ok((_, v))) => {
                    self.current = v;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
    }
}

/// A stored value read as it is streamed: its pieces, through zstd when they are a frame.
/// Both variants boxed, so the reader is small to move whichever it is.
pub enum ValueReader {
    Plain(Box<Pieces>),
    Zstd(Box<zstd::stream::read::Decoder<'static, std::io::BufReader<Pieces>>>),
}

impl std::io::Read for ValueReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ValueReader::Plain(p) => p.read(buf),
            ValueReader::Zstd(z) => z.read(buf),
        }
    }
}

/// The value under `id` as a reader, `None` when there is none. See [`get_chunked`] for
/// the layout.
pub(super) fn read_chunked(tree: &sled::Tree, id: u64) -> Result<Option<ValueReader>, StoreError> {
    let mut iter = tree.scan_prefix(id.to_be_bytes());
    let Some(first) = iter.next() else {
        return Ok(None);
    };
    let (key, value) = first?;
    let pieces = Pieces {
        iter,
        current: value,
        pos: 0,
    };
    if !is_zstd_key(&key) {
        return Ok(Some(ValueReader::Plain(Box::new(pieces))));
    }
    let decoder = zstd::stream::read::Decoder::new(pieces)
        .map_err(|e| StoreError::Corrupt(format!("value {id}: zstd: {e}")))?;
    Ok(Some(ValueReader::Zstd(Box::new(decoder))))
}

/// Whether `key` is a piece of a compressed value ([`ZSTD_CHUNK`]).
pub(super) fn is_zstd_key(key: &[u8]) -> bool {
    key.len() == 12 && key[8] & 0x80 != 0
}

pub(super) fn chunk_key(id: u64, n: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Writes `value` under `id` as [`CHUNK`]-sized pieces (one empty piece for an empty value),
/// their chunk numbers marked [`ZSTD_CHUNK`] when `value` is a zstd frame.
pub(super) fn put_chunked(
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
pub(super) fn get_chunked(tree: &sled::Tree, id: u64) -> Result<Option<Vec<u8>>, StoreError> {
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

/// Every value of `tree` with an id of `from` or more, in id order, pieces joined (see
/// [`get_chunked`]). Starts at `from` by key, without reading what comes before.
pub(super) fn iter_chunked(
    tree: &sled::Tree,
    from: u64,
) -> impl Iterator<Item = Result<(u64, Vec<u8>), StoreError>> {
    let mut items = tree.range(from.to_be_bytes()..).peekable();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(state: &BlobSync) -> Vec<u64> {
        let mut v: Vec<u64> = state.synced.lock().unwrap().iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// Each flush syncs the blob files written since the last, and remembers only those
    /// still there; what vanished since it was listed is passed over.
    #[cfg(unix)]
    #[test]
    fn new_blob_files_are_synced_and_forgotten_once_gone() {
        let dir = tempfile::tempdir().unwrap();
        let state = BlobSync {
            dir: dir.path().join("blobs"),
            synced: Default::default(),
        };
        // No blobs directory (sled has written none yet): nothing to do.
        sync_new_blobs(&state).unwrap();
        assert!(synced(&state).is_empty());
        std::fs::create_dir(&state.dir).unwrap();
        for name in ["5", "7", "not-a-blob"] {
            std::fs::write(state.dir.join(name), b"blob").unwrap();
        }
        sync_new_blobs(&state).unwrap();
        assert_eq!(synced(&state), [5, 7]);
        std::fs::remove_file(state.dir.join("5")).unwrap();
        std::fs::write(state.dir.join("9"), b"blob").unwrap();
        // Listed, then gone before it could be opened (a link to nothing stands for it).
        std::os::unix::fs::symlink("gone", state.dir.join("11")).unwrap();
        sync_new_blobs(&state).unwrap();
        assert_eq!(synced(&state), [7, 9]);
        // Any other failure to open one is an error: the flush is not durable.
        std::os::unix::fs::symlink("12", state.dir.join("12")).unwrap();
        assert!(matches!(sync_new_blobs(&state), Err(StoreError::Sled(_))));
    }

    #[test]
    fn a_blobs_path_that_is_not_a_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let state = BlobSync {
            dir: dir.path().join("blobs"),
            synced: Default::default(),
        };
        std::fs::write(&state.dir, b"a file").unwrap();
        assert!(matches!(sync_new_blobs(&state), Err(StoreError::Sled(_))));
    }

    /// Values from [`ZSTD_MIN_LEN`] bytes on are compressed when that makes them smaller;
    /// shorter ones never are.
    #[test]
    fn only_values_long_enough_are_compressed() {
        assert_eq!(compress(&[b'a'; ZSTD_MIN_LEN - 1]), None);
        for len in [ZSTD_MIN_LEN, ZSTD_MIN_LEN + 1, 100_000] {
            let value = vec![b'a'; len];
            let frame = compress(&value).expect("compressible");
            assert!(frame.len() < len, "{len}");
            assert_eq!(decode(1, frame, true).unwrap(), value);
        }
    }

    /// A frame that declares its size is decompressed in one piece, one without (as a
    /// stream encoder writes it) through the stream decoder; a damaged frame is an error
    /// naming the value, whichever way it is read.
    #[test]
    fn frames_with_and_without_their_size_decode_and_damage_is_named() {
        let value: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let sized = compress(&value).unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&sized).unwrap(),
            Some(value.len() as u64)
        );
        assert_eq!(decode(7, sized.clone(), true).unwrap(), value);
        let mut streamed = Vec::new();
        let mut encoder = zstd::stream::write::Encoder::new(&mut streamed, 1).unwrap();
        std::io::Write::write_all(&mut encoder, &value).unwrap();
        encoder.finish().unwrap();
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&streamed).unwrap(),
            None
        );
        assert_eq!(decode(7, streamed, true).unwrap(), value);
        let mut damaged = sized;
        let at = damaged.len() / 2;
        damaged.truncate(at);
        let e = decode(7, damaged, true).unwrap_err().to_string();
        assert!(e.contains("value 7: zstd"), "{e}");
    }

    /// Stores made before chunking have sled's default segments (it opens a store only
    /// with its own segment size).
    #[test]
    fn stores_before_chunking_have_sleds_default_segments() {
        let default = format!("{:?}", sled::Config::new());
        assert!(
            default.contains(&format!("segment_size: {LEGACY_SEGMENT_SIZE},")),
            "{default}"
        );
    }
}
