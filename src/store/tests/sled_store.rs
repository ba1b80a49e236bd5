//! What only the sled store has: opening (its lock, its directory), the free-space margin,
//! flushes that reach the disk, per-source counts, listing, and its token records.

use super::super::values::get_chunked;
use super::super::*;
use super::{bound, disk_image, imap_msg, store};

fn uid_stored(s: &Store, uid: u32) -> bool {
    s.iter_meta(None)
        .any(|m| matches!(m.unwrap().location, Location::Imap { uid: u, .. } if u == uid))
}

/// Each way of flushing returns only once what was written before it is on disk.
#[tokio::test]
async fn what_a_flush_returned_for_is_on_disk() {
    let (d, s) = store();
    let msg = |uid: u32| imap_msg(uid, 1, format!("Subject: {uid}\r\n\r\nx\r\n").as_bytes());
    s.store(msg(1)).unwrap();
    s.flush().await.unwrap();
    assert!(uid_stored(&disk_image(&d).1, 1), "Store::flush");
    s.store(msg(2)).unwrap();
    IngestStore::flush(&s).await.unwrap();
    assert!(uid_stored(&disk_image(&d).1, 2), "IngestStore::flush");
    s.store(msg(3)).unwrap();
    s.flush_sync().unwrap();
    assert!(uid_stored(&disk_image(&d).1, 3), "Store::flush_sync");
}

/// A store another handle holds is reported as in use (a running node); any other
/// failure to open is reported as it is.
#[test]
fn a_store_in_use_is_told_from_one_that_cannot_be_opened() {
    let (d, _held) = store();
    let db = d.path().join("db");
    match Store::open(&db, &d.path().join("key")) {
        Err(StoreError::Locked(path)) => assert_eq!(path, db.display().to_string()),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // sled's log file is a directory here: an I/O error, not a lock.
    let broken = d.path().join("broken");
    std::fs::create_dir_all(broken.join("db")).unwrap();
    match Store::open(&broken, &d.path().join("key")) {
        Err(StoreError::Sled(_)) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[cfg(unix)]
#[test]
fn the_data_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let (d, _s) = store();
    let mode = std::fs::metadata(d.path().join("db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// Room is what the disk has beyond the margin, twice the incoming bytes counted, to the
/// byte; nothing overflows.
#[test]
fn room_counts_twice_the_incoming_bytes_beside_the_margin() {
    assert_eq!(room(100, 60, 20), Ok(()));
    assert_eq!(room(99, 60, 20), Err(100));
    assert_eq!(room(0, 0, 0), Ok(()));
    assert_eq!(room(u64::MAX - 1, u64::MAX, 1), Err(u64::MAX));
    assert_eq!(room(u64::MAX - 1, 1, u64::MAX), Err(u64::MAX));
}

/// Mail is taken only while it fits beside `node.min_free_disk_bytes`.
#[tokio::test]
async fn room_is_the_free_space_beyond_the_margin() {
    let (_d, s) = store();
    s.ensure_room(0).unwrap();
    s.ensure_room(1024).unwrap();
    // More than any disk has: twice the incoming bytes (until sled compacts its log).
    match s.ensure_room(u64::MAX / 2) {
        Err(StoreError::DiskFull { free, needed, .. }) => {
            assert!(free > 0);
            assert_eq!(needed, u64::MAX - 1);
        }
        other => panic!("{other:?}"),
    }
    s.set_min_free_bytes(u64::MAX);
    match s.ensure_room(0) {
        Err(e @ StoreError::DiskFull { .. }) => {
            assert!(e.to_string().contains("disk almost full"), "{e}");
            assert_eq!(e.kind(), ErrorKind::Store);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        IngestStore::ensure_room(&s, 0).await,
        Err(StoreError::DiskFull { .. })
    ));
    s.set_min_free_bytes(0);
    s.ensure_room(0).unwrap();
}

/// Counts per source, also for a batch that mixes sources, and listing by source.
#[test]
fn counts_and_listing_are_per_source() {
    let (_d, s) = store();
    let of = |source: &str, uid: u32| NewMessage {
        source: source.into(),
        ..imap_msg(
            uid,
            1,
            format!("Subject: {source}{uid}\r\n\r\nx\r\n").as_bytes(),
        )
    };
    s.store_batch(vec![
        (of("a", 1), true),
        (of("b", 1), true),
        (of("a", 2), true),
        (of("a", 3), true),
    ])
    .unwrap();
    s.store_batch(vec![(of("b", 2), true), (of("a", 1), true)])
        .unwrap();
    let counts = s.counts().unwrap();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        [("a".into(), 3), ("b".into(), 2)]
    );
    let sources =
        |filter| -> Vec<String> { s.iter_meta(filter).map(|m| m.unwrap().source).collect() };
    assert_eq!(sources(Some("b")), ["b", "b"]);
    assert_eq!(sources(Some("a")).len(), 3);
    assert_eq!(sources(None).len(), 5);
}

/// A record's id is in its key, not its value; what the API serves carries it.
#[test]
fn the_id_is_served_but_not_stored_in_the_value() {
    let (_d, s) = store();
    let id = match s.store(imap_msg(1, 1, b"Subject: a\r\n\r\nx\r\n")).unwrap() {
        StoreOutcome::Stored(id) => id,
        other => panic!("{other:?}"),
    };
    let value = get_chunked(&s.messages, id).unwrap().unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&value).unwrap();
    assert!(stored.get("id").is_none(), "{stored}");
    let served = serde_json::to_value(s.meta(id).unwrap().unwrap()).unwrap();
    assert_eq!(served["id"], id);
}

/// Token records are listed by key; their `Debug` shows what is not secret.
#[tokio::test]
async fn token_records_are_listed_and_their_secrets_never_shown() {
    let (_d, s) = store();
    assert!(s.token_keys().unwrap().is_empty());
    let tok = StoredToken {
        refresh_token: Some("rt-secret".into()),
        access_token: Some("at-secret".into()),
        access_expires_at: Some(1_900_000_000),
        identity: Some("alice@example.test".into()),
        needs_reauth: Some("invalid_grant".into()),
        ..Default::default()
    };
    s.put_token(&bound("b"), &tok).await.unwrap();
    s.put_token(&bound("a"), &StoredToken::default())
        .await
        .unwrap();
    assert_eq!(s.token_keys().unwrap(), ["a", "b"]);
    let shown = format!("{tok:?}");
    assert!(!shown.contains("secret"), "{shown}");
    for visible in [
        "StoredToken",
        "1900000000",
        "alice@example.test",
        "invalid_grant",
    ] {
        assert!(shown.contains(visible), "{visible} in {shown}");
    }
}

/// A token record that does not open is an error naming the record, not its contents;
/// a key rotation interrupted past repair is an error naming both key files.
#[test]
fn records_and_keys_that_do_not_open_are_named() {
    let (d, s) = store();
    s.tokens
        .insert("s", b"sealed by nobody, thirty bytes!".to_vec())
        .unwrap();
    match s.token(&bound("s")) {
        Err(StoreError::Corrupt(m)) => {
            assert_eq!(m, "token s: cannot decrypt (wrong node.secret_key_file?)")
        }
        other => panic!("{other:?}"),
    }
    s.flush_sync().unwrap();
    drop(s);
    let key = d.path().join("key");
    let pending = crypto::pending_path(&key);
    SecretBox::create_at(&pending).unwrap();
    let db = d.path().join("db");
    let e = loop {
        match Store::open(&db, &key) {
            Err(StoreError::Locked(_)) => std::thread::sleep(std::time::Duration::from_millis(20)),
            other => break other.map(|_| ()).unwrap_err(),
        }
    };
    assert!(
        matches!(&e, StoreError::Key(KeyError::NeitherOpens { .. })),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "store: secret key: neither {} nor {} decrypts the stored tokens",
            key.display(),
            pending.display()
        )
    );
    assert!(pending.exists() && key.exists(), "both keys are kept");
}

/// The parsed text and HTML bodies are both kept, whichever is longer.
#[test]
fn both_bodies_are_kept() {
    let (_d, s) = store();
    let html = format!("<p>{}</p>", "long html ".repeat(200));
    let raw = format!(
        "Subject: both\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nshort\r\n\
         --b\r\nContent-Type: text/html\r\n\r\n{html}\r\n--b--\r\n"
    );
    let id = match s.store(imap_msg(1, 1, raw.as_bytes())).unwrap() {
        StoreOutcome::Stored(id) => id,
        other => panic!("{other:?}"),
    };
    let parsed = s.meta(id).unwrap().unwrap().parsed.unwrap();
    assert_eq!(parsed.text_body.as_deref().map(str::trim), Some("short"));
    assert!(parsed.html_body.unwrap().contains(&html));
}

/// sled's page cache is bounded at the size memory was measured with, not sled's 1 GiB.
#[test]
fn the_page_cache_is_bounded() {
    let config = format!("{:?}", sled_config(Path::new("unused"), SEGMENT_SIZE));
    let expected = format!("cache_capacity: {}", 16 * 1024 * 1024);
    assert!(config.contains(&expected), "{config}");
    assert!(
        config.contains(&format!("segment_size: {SEGMENT_SIZE}")),
        "{config}"
    );
}

/// Token records are bound to their source, issuer or endpoint, and client: read under
/// another binding (the provider reconfigured, or the sealed bytes copied under another
/// source's key) they yield no token; an edited binding does not open at all.
#[tokio::test]
async fn token_records_open_only_for_their_binding() {
    let (_d, s) = store();
    let tok = StoredToken {
        refresh_token: Some("rt-secret".into()),
        access_token: Some("at-secret".into()),
        access_expires_at: Some(1_900_000_000),
        identity: Some("alice@example.test".into()),
        ..Default::default()
    };
    let a = bound("a");
    s.put_token(&a, &tok).await.unwrap();
    assert_eq!(s.token(&a).unwrap(), Some(tok.clone()));
    let sealed = s.tokens.get("a").unwrap().unwrap();
    assert!(sealed.starts_with(b"MSG\x01"));

    // The provider now points elsewhere.
    let moved = GrantBinding {
        authority: "https://other.example/token".into(),
        ..a.clone()
    };
    let read = s.token(&moved).unwrap().unwrap();
    assert!(read.bound_elsewhere);
    assert_eq!(read.refresh_token, None);
    assert_eq!(read.access_token, None);
    assert_eq!(read.access_expires_at, None);
    assert_eq!(read.identity, tok.identity);
    assert_eq!(
        read.needs_reauth.as_deref(),
        Some(
            "the stored grant was issued by https://idp.example/token to client \"collector\"; \
             the source now signs in at https://other.example/token as client \"collector\": \
             authorize it again there"
        )
    );
    let other_client = GrantBinding {
        client_id: "another".into(),
        ..a.clone()
    };
    assert!(s.token(&other_client).unwrap().unwrap().bound_elsewhere);
    // Reading changed nothing: pointed back, the grant is there.
    assert_eq!(s.tokens.get("a").unwrap().unwrap(), sealed);
    assert_eq!(s.token(&a).unwrap(), Some(tok.clone()));

    // The sealed bytes copied under another source's key.
    s.tokens.insert("b", sealed.clone()).unwrap();
    let copied = s.token(&bound("b")).unwrap().unwrap();
    assert_eq!(copied.refresh_token, None);
    assert!(
        copied
            .needs_reauth
            .unwrap()
            .starts_with("the stored grant was sealed for source \"a\", not \"b\"")
    );

    // The binding is readable in the record, but editing it breaks the seal.
    let text = String::from_utf8_lossy(&sealed).into_owned();
    assert!(text.contains("https://idp.example/token"));
    let edited = text.replace("idp.example", "xyz.example");
    let mut forged = sealed.to_vec();
    let at = text.find("idp.example").unwrap();
    forged[at..at + 11].copy_from_slice(b"xyz.example");
    assert_ne!(edited, text);
    s.tokens.insert("a", forged).unwrap();
    let forged_binding = GrantBinding {
        authority: "https://xyz.example/token".into(),
        ..a.clone()
    };
    match s.token(&forged_binding) {
        Err(StoreError::Corrupt(m)) => {
            assert_eq!(m, "token a: cannot decrypt (wrong node.secret_key_file?)")
        }
        other => panic!("{other:?}"),
    }
}

/// Records sealed before bindings were kept (no associated data) still open under the
/// binding asked for, and the next write seals them with it. A key rotation keeps each
/// record's binding, or its lack of one.
#[tokio::test]
async fn records_from_before_bindings_are_read_and_sealed_on_write() {
    let (_d, s) = store();
    let tok = StoredToken {
        refresh_token: Some("legacy-rt".into()),
        ..Default::default()
    };
    let plain = serde_json::to_vec(&tok).unwrap();
    let legacy = s.secret_box.read().unwrap().seal(&plain).unwrap();
    s.tokens.insert("old", legacy).unwrap();
    s.put_token(&bound("new"), &tok).await.unwrap();

    assert_eq!(s.rotate_key().unwrap(), 2);
    assert!(
        !s.tokens
            .get("old")
            .unwrap()
            .unwrap()
            .starts_with(b"MSG\x01")
    );
    assert!(
        s.tokens
            .get("new")
            .unwrap()
            .unwrap()
            .starts_with(b"MSG\x01")
    );
    assert_eq!(s.token(&bound("old")).unwrap(), Some(tok.clone()));
    assert_eq!(s.token(&bound("new")).unwrap(), Some(tok.clone()));
    assert!(s.token(&bound("x")).unwrap().is_none());
    let elsewhere = GrantBinding {
        source: "new".into(),
        authority: "https://other.example".into(),
        client_id: "collector".into(),
    };
    assert!(s.token(&elsewhere).unwrap().unwrap().bound_elsewhere);

    // Written again (any refresh does): bound from now on.
    let mut read = s.token(&bound("old")).unwrap().unwrap();
    read.refresh_token_last_used = Some(1);
    s.put_token(&bound("old"), &read).await.unwrap();
    assert!(
        s.tokens
            .get("old")
            .unwrap()
            .unwrap()
            .starts_with(b"MSG\x01")
    );
    assert_eq!(s.token(&bound("old")).unwrap(), Some(read));
    let old_elsewhere = GrantBinding {
        source: "old".into(),
        ..elsewhere
    };
    assert!(s.token(&old_elsewhere).unwrap().unwrap().bound_elsewhere);
}
