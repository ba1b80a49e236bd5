//! after_ingest against a real Dovecot: the server is changed only after the message is
//! durably stored, a change interrupted by a crash is redone (never a second copy), and
//! nothing is touched for a message that was not stored.

mod node;
mod support;

use std::sync::Arc;
use std::time::Duration;

use mailsluice::ingest::{Credential, run_cycle};
use mailsluice::net::Connector;
use mailsluice::secret::Secret;
use mailsluice::store::{Location, NewMessage, Store};
use support::{Dovecot, DovecotOptions};

const ALICE: &str = "alice@example.test";

fn setup(
    dovecot: &Dovecot,
    dir: &std::path::Path,
    extra: &str,
    protocol: &str,
    port: u16,
) -> (Arc<Store>, Connector, mailsluice::config::SourceSettings) {
    node::direct_source(&dovecot.ca_pem, dir, protocol, port, extra)
}

fn cred() -> Credential {
    Credential::Password(Secret::new("alice-password"))
}

/// Maildir flags of every message in a folder (the part after `:2,`).
fn flags(dovecot: &Dovecot, folder: &str) -> Vec<String> {
    dovecot
        .message_files(ALICE, folder)
        .iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.split(":2,").nth(1).unwrap_or("").to_string()
        })
        .collect()
}

#[tokio::test]
async fn imap_seen_flags_after_storing_and_redoes_an_interrupted_action() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let msgs = node::corpus::many("sn", 5);
    dovecot.seed(ALICE, &msgs);
    let dir = tempfile::tempdir().unwrap();
    let (store, connector, source) = setup(
        &dovecot,
        dir.path(),
        "after_ingest = \"seen\"",
        "imap",
        dovecot.imaps_port,
    );
    // One batch per session (the deadline is already due): every stored message flagged.
    let r = run_cycle(
        &store,
        &connector,
        &source,
        &cred(),
        Some(mailsluice::ingest::ReopenAt(0)),
    )
    .await
    .unwrap();
    assert_eq!(r.stored, 5);
    assert_eq!(r.acted, 5);
    assert!(
        flags(&dovecot, "INBOX").iter().all(|f| f.contains('S')),
        "{:?}",
        flags(&dovecot, "INBOX")
    );
    // The crash case: a message stored (with checkpoint and pending action) by a session
    // that died before flagging it, i.e. what the store holds after such a crash.
    let extra = node::corpus::many("sn2", 1);
    dovecot.seed(ALICE, &extra);
    let uidvalidity = store.checkpoint("s", "INBOX").unwrap().unwrap().uidvalidity;
    store
        .store(NewMessage {
            source: "s".into(),
            location: Location::Imap {
                folder: "INBOX".into(),
                uidvalidity,
                uid: 6,
            },
            raw: extra[0].clone(),
            internal_date: None,
            parsed: Err(mailsluice::parse::ParseError::NoHeader),
            post_action: true,
            rematch: false,
        })
        .unwrap();
    store.flush().await.unwrap();
    assert_eq!(
        flags(&dovecot, "INBOX")
            .iter()
            .filter(|f| f.contains('S'))
            .count(),
        5
    );
    let r = run_cycle(&store, &connector, &source, &cred(), None)
        .await
        .unwrap();
    assert_eq!(
        (r.stored, r.acted),
        (0, 1),
        "the pending action is redone, nothing stored twice"
    );
    assert!(flags(&dovecot, "INBOX").iter().all(|f| f.contains('S')));
    assert_eq!(store.counts().unwrap()["s"], 6);
}

#[tokio::test]
async fn imap_delete_and_move_empty_the_inbox_only_of_stored_messages() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let msgs = node::corpus::corpus("dm");
    dovecot.seed(ALICE, &msgs);
    // One message over max_message_bytes: never stored, so never deleted.
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(30000)).into_bytes();
    dovecot.seed(ALICE, &[big]);
    let dir = tempfile::tempdir().unwrap();
    let (store, connector, source) = setup(
        &dovecot,
        dir.path(),
        "after_ingest = \"delete\"\nmax_message_bytes = 20000",
        "imap",
        dovecot.imaps_port,
    );
    let r = run_cycle(&store, &connector, &source, &cred(), None)
        .await
        .unwrap();
    assert_eq!(
        (r.stored, r.acted, r.skipped),
        (msgs.len() as u64, msgs.len() as u64, 1)
    );
    assert_eq!(
        dovecot.message_files(ALICE, "INBOX").len(),
        1,
        "only the unstored message remains"
    );

    let dovecot = Dovecot::start(DovecotOptions::default());
    dovecot.seed(ALICE, &msgs);
    let dir = tempfile::tempdir().unwrap();
    let (store, connector, source) = setup(
        &dovecot,
        dir.path(),
        "after_ingest = \"move\"\nmove_to = \"Processed\"",
        "imap",
        dovecot.imaps_port,
    );
    let r = run_cycle(&store, &connector, &source, &cred(), None)
        .await
        .unwrap();
    assert_eq!((r.stored, r.acted), (msgs.len() as u64, msgs.len() as u64));
    assert!(dovecot.message_files(ALICE, "INBOX").is_empty());
    assert_eq!(dovecot.message_files(ALICE, "Processed").len(), msgs.len());
    // A second cycle finds nothing and does nothing.
    let r = run_cycle(&store, &connector, &source, &cred(), None)
        .await
        .unwrap();
    assert_eq!((r.stored, r.acted), (0, 0));
}

#[tokio::test]
async fn pop3_delete_now_or_after_days() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let msgs = node::corpus::corpus("pd");
    dovecot.seed(ALICE, &msgs);
    let dir = tempfile::tempdir().unwrap();
    let (store, connector, source) = setup(
        &dovecot,
        dir.path(),
        "after_ingest = \"delete\"\ndelete_after_days = 3",
        "pop3",
        dovecot.pop3s_port,
    );
    let r = run_cycle(&store, &connector, &source, &cred(), None)
        .await
        .unwrap();
    assert_eq!(
        (r.stored, r.acted),
        (msgs.len() as u64, 0),
        "kept for 3 days"
    );
    assert_eq!(dovecot.message_files(ALICE, "INBOX").len(), msgs.len());

    let dir = tempfile::tempdir().unwrap();
    let (store, connector, source) = setup(
        &dovecot,
        dir.path(),
        "after_ingest = \"delete\"",
        "pop3",
        dovecot.pop3s_port,
    );
    let r = run_cycle(&store, &connector, &source, &cred(), None)
        .await
        .unwrap();
    assert_eq!((r.stored, r.acted), (msgs.len() as u64, msgs.len() as u64));
    assert!(
        dovecot.message_files(ALICE, "INBOX").is_empty(),
        "deleted at QUIT"
    );
    assert_eq!(store.counts().unwrap()["s"], msgs.len() as u64);
}

#[tokio::test]
async fn malformed_mail_is_stored_raw_and_never_blocks_the_folder() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let mut nul = b"Subject: has NUL bytes\r\n\r\nbefore\0after\r\n".to_vec();
    nul.extend_from_slice(b"\0\0\r\n");
    let deep: String = (0..60)
        .map(|i| format!("Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"))
        .collect();
    let malformed = vec![
        nul,
        b"Subject: broken boundary\r\nContent-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nno end\r\n".to_vec(),
        b"Subject: =?UTF-8?B?!!!bad-base64?= x\r\nContent-Transfer-Encoding: base64\r\n\r\n@@@not base64@@@\r\n".to_vec(),
        b"Subject: 8bit \xe4\xf6\xfc header\r\nFrom: \xff\xfe <x@example.test>\r\n\r\nbody\r\n".to_vec(),
        format!("Subject: deep\r\n{deep}\r\nend\r\n").into_bytes(),
        b"Subject: after the junk\r\n\r\nfine\r\n".to_vec(),
    ];
    dovecot.seed(ALICE, &malformed);
    for (protocol, port) in [("imap", dovecot.imaps_port), ("pop3", dovecot.pop3s_port)] {
        let dir = tempfile::tempdir().unwrap();
        let (store, connector, source) = setup(&dovecot, dir.path(), "", protocol, port);
        let r = run_cycle(&store, &connector, &source, &cred(), None)
            .await
            .unwrap_or_else(|e| panic!("{protocol}: {e}"));
        assert_eq!(r.stored, malformed.len() as u64, "{protocol}");
        assert_eq!(store.counts().unwrap()["s"], malformed.len() as u64);
    }
}

#[tokio::test]
async fn uidvalidity_change_rematches_by_content_and_ingests_only_what_is_new() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let mut first = node::corpus::many("uv", 5);
    // Two byte-identical messages: two UIDs, two stored messages.
    first.push(first[0].clone());
    dovecot.seed_folder(ALICE, "Support", &first);
    let dir = tempfile::tempdir().unwrap();
    let (store, connector, mut source) =
        setup(&dovecot, dir.path(), "", "imap", dovecot.imaps_port);
    source.folders = vec!["Support".into()];
    let r = run_cycle(&store, &connector, &source, &cred(), None)
        .await
        .unwrap();
    assert_eq!((r.stored, r.already), (6, 0));
    let before = store.checkpoint("s", "Support").unwrap().unwrap();
    // Recreate the folder with the same messages plus two new ones.
    std::fs::remove_dir_all(dovecot.folder_dir(ALICE, "Support")).unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // Dovecot derives UIDVALIDITY from the clock
    let mut again = first.clone();
    again.extend(node::corpus::many("uv-new", 2));
    // A third copy: the two stored copies answer for two of the three UIDs.
    again.push(first[0].clone());
    dovecot.seed_folder(ALICE, "Support", &again);
    let r = run_cycle(&store, &connector, &source, &cred(), None)
        .await
        .unwrap();
    let after = store.checkpoint("s", "Support").unwrap().unwrap();
    assert_ne!(
        after.uidvalidity, before.uidvalidity,
        "Dovecot kept the UIDVALIDITY"
    );
    assert_eq!(
        (r.stored, r.already),
        (3, 6),
        "re-matched 6 by content, stored 2 new and the third identical copy"
    );
    assert_eq!(store.counts().unwrap()["s"], 9);
    assert_eq!(r.uidvalidity_changes, 1);
    // Mail arriving after the re-match with the same bytes is a message of its own.
    dovecot.seed_folder(ALICE, "Support", &first[..1]);
    let r = run_cycle(&store, &connector, &source, &cred(), None)
        .await
        .unwrap();
    assert_eq!((r.stored, r.already), (1, 0));
}

/// Each UID is one message: two byte-identical messages in a folder are both stored, and
/// with `after_ingest = "delete"` neither leaves the server before both are stored.
#[tokio::test]
async fn identical_messages_are_each_stored_before_either_is_deleted() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let one = node::corpus::many("twin", 1).remove(0);
    dovecot.seed(ALICE, &[one.clone(), one.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let (store, connector, source) = setup(
        &dovecot,
        dir.path(),
        "after_ingest = \"delete\"",
        "imap",
        dovecot.imaps_port,
    );
    let r = run_cycle(&store, &connector, &source, &cred(), None)
        .await
        .unwrap();
    assert_eq!((r.stored, r.already, r.acted), (2, 0, 2));
    assert!(dovecot.message_files(ALICE, "INBOX").is_empty());
    let stored: Vec<_> = store.iter_meta(Some("s")).map(Result::unwrap).collect();
    assert_eq!(stored.len(), 2, "{stored:?}");
    let uids: std::collections::BTreeSet<u32> = stored
        .iter()
        .map(|m| match &m.location {
            Location::Imap { uid, .. } => *uid,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(uids.len(), 2, "one stored message per UID");
    for m in &stored {
        assert_eq!(store.raw(m.id).unwrap().unwrap(), one);
    }
}

#[tokio::test]
async fn a_folder_that_disappears_does_not_stop_the_others() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    dovecot.seed(ALICE, &node::corpus::many("fd", 4));
    let dir = tempfile::tempdir().unwrap();
    let (store, connector, mut source) =
        setup(&dovecot, dir.path(), "", "imap", dovecot.imaps_port);
    source.folders = vec!["Gone".into(), "INBOX".into()];
    let e = run_cycle(&store, &connector, &source, &cred(), None)
        .await
        .expect_err("a missing folder is reported");
    assert!(
        e.to_string().contains("folders not collected: Gone:"),
        "{e}"
    );
    assert_eq!(
        store.counts().unwrap()["s"],
        4,
        "INBOX collected all the same"
    );
}

#[tokio::test]
async fn empty_folder_is_a_quiet_success() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    dovecot.seed_folder(ALICE, "Empty", &[]);
    let dir = tempfile::tempdir().unwrap();
    let (store, connector, mut source) =
        setup(&dovecot, dir.path(), "", "imap", dovecot.imaps_port);
    source.folders = vec!["Empty".into()];
    let r = run_cycle(&store, &connector, &source, &cred(), None)
        .await
        .unwrap();
    assert_eq!((r.stored, r.backlog), (0, 0));
}
