//! The store's unit tests.

use super::keys::*;
use super::values::*;
use super::*;
use sha2::{Digest, Sha256};

mod contract;
mod outbox;
mod sled_store;

/// A binding for tests: the source, at one provider and client.
fn bound(source: &str) -> GrantBinding {
    GrantBinding {
        source: source.into(),
        authority: "https://idp.example/token".into(),
        client_id: "collector".into(),
    }
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("db"), &dir.path().join("key")).unwrap();
    (dir, s)
}

/// A copy of the store's files as they are on disk right now (what a power cut would
/// leave), opened as a store of its own.
fn disk_image(dir: &tempfile::TempDir) -> (tempfile::TempDir, Store) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
    let image = tempfile::tempdir().unwrap();
    copy(&dir.path().join("db"), &image.path().join("db"));
    std::fs::copy(dir.path().join("key"), image.path().join("key")).unwrap();
    let s = Store::open(&image.path().join("db"), &image.path().join("key")).unwrap();
    (image, s)
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
fn a_checkpoint_moves_on_under_its_uidvalidity_and_starts_over_under_another() {
    let at = |uidvalidity, last_uid, rematch_below| Checkpoint {
        uidvalidity,
        last_uid,
        rematch_below,
    };
    // Same UIDVALIDITY: the further of the two, keeping the re-match bound.
    assert_eq!(
        Checkpoint::advanced(Some(at(7, 5, Some(9))), at(7, 8, None)),
        at(7, 8, Some(9))
    );
    assert_eq!(
        Checkpoint::advanced(Some(at(7, 5, Some(9))), at(7, 3, None)),
        at(7, 5, Some(9))
    );
    // Another UIDVALIDITY, or none yet: the new one as it is.
    assert_eq!(
        Checkpoint::advanced(Some(at(7, 5, Some(9))), at(8, 2, None)),
        at(8, 2, None)
    );
    assert_eq!(Checkpoint::advanced(None, at(8, 2, None)), at(8, 2, None));
}

#[test]
fn skipping_moves_the_checkpoint_past_a_message_never_back() {
    let (_d, s) = store();
    let cp = |s: &Store| {
        let c = s.checkpoint("s", "INBOX").unwrap().unwrap();
        (c.uidvalidity, c.last_uid, c.rematch_below)
    };
    s.skip("s", "INBOX", 7, 4).unwrap();
    assert_eq!(cp(&s), (7, 4, None));
    s.skip("s", "INBOX", 7, 2).unwrap();
    assert_eq!(cp(&s), (7, 4, None), "never back");
    s.reset_checkpoint("s", "INBOX", 8, Some(6)).unwrap();
    s.skip("s", "INBOX", 8, 3).unwrap();
    assert_eq!(cp(&s), (8, 3, Some(6)), "the re-match bound stays");
    // A skip under another UIDVALIDITY (the folder changed meanwhile) starts over.
    s.skip("s", "INBOX", 9, 1).unwrap();
    assert_eq!(cp(&s), (9, 1, None));
}

#[test]
fn post_action_records_are_kept_per_uidvalidity_until_done() {
    let (_d, s) = store();
    let acting = |uid, uv| NewMessage {
        post_action: true,
        ..imap_msg(uid, uv, format!("Subject: {uid}\r\n\r\nx\r\n").as_bytes())
    };
    for uid in 1..=3 {
        s.store(acting(uid, 7)).unwrap();
    }
    // Keep (no post-action) records nothing.
    s.store(imap_msg(4, 7, b"Subject: 4\r\n\r\nx\r\n")).unwrap();
    let mut uids = s.pending_actions("s", "INBOX", 7).unwrap();
    uids.sort_unstable();
    assert_eq!(uids, vec![1, 2, 3]);
    s.actions_done("s", "INBOX", 7, &[1, 3]).unwrap();
    assert_eq!(s.pending_actions("s", "INBOX", 7).unwrap(), vec![2]);
    assert!(s.pending_actions("s", "Other", 7).unwrap().is_empty());
    // Under a new UIDVALIDITY the old UIDs mean nothing: forgotten.
    assert!(s.pending_actions("s", "INBOX", 8).unwrap().is_empty());
    assert!(s.pending_actions("s", "INBOX", 7).unwrap().is_empty());
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

/// Re-matching looks only at copies of the same bytes in the same folder of the same source.
#[test]
fn rematch_finds_only_the_same_bytes_in_the_same_folder() {
    let (_d, s) = store();
    let mut other_folder = imap_msg(1, 7, b"Subject: a\r\n\r\nx\r\n");
    if let Location::Imap { folder, .. } = &mut other_folder.location {
        *folder = "Archive".into();
    }
    s.store(other_folder).unwrap();
    s.store(imap_msg(1, 7, b"Subject: b\r\n\r\ny\r\n")).unwrap();
    s.reset_checkpoint("s", "INBOX", 8, None).unwrap();
    let out = s
        .store(rematching(imap_msg(1, 8, b"Subject: a\r\n\r\nx\r\n")))
        .unwrap();
    assert!(matches!(out, StoreOutcome::Stored(_)), "{out:?}");
    assert_eq!(s.counts().unwrap()["s"], 3);
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
    // Until every writer has finished (or failed), and once more after that.
    loop {
        let finished = writers.iter().all(|w| w.is_finished());
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
        if finished || seen.len() == total {
            break;
        }
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
        big.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz 0123456789abcdefghijklmn\r\n");
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
            .block_on(s.put_token(&bound("a"), &tok))
            .unwrap();
        let before = std::fs::read_to_string(&key).unwrap();
        assert_eq!(s.rotate_key().unwrap(), 1);
        assert_ne!(std::fs::read_to_string(&key).unwrap(), before);
        assert_eq!(s.token(&bound("a")).unwrap().unwrap(), tok);
        assert!(!crypto::pending_path(&key).exists());
    }
    // Reopen with the rotated key.
    let s = reopen(&dir.path().join("db"), &key);
    assert_eq!(s.token(&bound("a")).unwrap().unwrap(), tok);
    // Interrupted before the rename: records are under the pending key.
    let pending = crypto::pending_path(&key);
    let new_box = SecretBox::create_at(&pending).unwrap();
    let plain = serde_json::to_vec(&tok).unwrap();
    s.tokens.insert("a", new_box.seal(&plain).unwrap()).unwrap();
    s.flush_sync().unwrap();
    drop(s);
    let s = reopen(&dir.path().join("db"), &key);
    assert_eq!(s.token(&bound("a")).unwrap().unwrap(), tok);
    assert!(!pending.exists());
    // Interrupted before any record moved: the old key stays, the pending one goes.
    SecretBox::create_at(&pending).unwrap();
    drop(s);
    let s = reopen(&dir.path().join("db"), &key);
    assert_eq!(s.token(&bound("a")).unwrap().unwrap(), tok);
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
        parsed: Err(crate::parse::ParseError::NoHeader),
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
        .block_on(s.put_token(&bound("p"), &tok))
        .unwrap();
    assert_eq!(s.token(&bound("p")).unwrap().unwrap(), tok);
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

#[test]
fn a_message_read_as_a_stream_is_its_bytes_compressed_or_not_and_pages_seek_by_id() {
    use std::io::Read;
    let (_d, s) = store();
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    let mut x: u32 = 1;
    while big.len() < 1024 * 1024 + 77 {
        // Text that compresses, and noise that does not.
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        big.extend_from_slice(format!("line {x:08x} of the message\r\n").as_bytes());
        big.push((x >> 16) as u8);
    }
    let mut ids = Vec::new();
    for (uid, compression) in [(1, Compression::Zstd), (2, Compression::None)] {
        s.set_compression(compression);
        let StoreOutcome::Stored(id) = s.store(imap_msg(uid, 1, &big)).unwrap() else {
            panic!()
        };
        ids.push(id);
        let mut streamed = Vec::new();
        let mut reader = s.raw_reader(id).unwrap().expect("stored");
        // Small reads: pieces are crossed many times.
        let mut buf = [0u8; 1000];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            streamed.extend_from_slice(&buf[..n]);
        }
        assert_eq!(streamed, big, "{compression:?}");
    }
    let empty = s.store(imap_msg(3, 1, b"")).unwrap();
    let StoreOutcome::Stored(empty) = empty else {
        panic!()
    };
    let mut out = Vec::new();
    s.raw_reader(empty)
        .unwrap()
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    assert!(out.is_empty());
    assert!(s.raw_reader(9999).unwrap().is_none());
    // A page starts at its id without the ones before.
    let from: Vec<u64> = s
        .iter_meta_from(None, ids[1])
        .map(|m| m.unwrap().id)
        .collect();
    assert_eq!(from, vec![ids[1], empty]);
    assert!(s.iter_meta_from(None, empty + 1).next().is_none());
}
