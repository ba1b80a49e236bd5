//! Store failures in the middle of a session, against a scripted server: what the
//! guarantees of [`IngestStore`] promise when a commit or a flush fails. The store is the
//! sled one behind [`Faulty`], which fails an operation while the test says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::script::{Script, ScriptServer};
use super::{LOGOUT, bodies, imap_listing, password, setup};
use crate::ingest::{CycleError, run_cycle};
use crate::store::{Checkpoint, IngestStore, NewMessage, Store, StoreError, StoreOutcome};

/// The sled store with a commit or a flush that fails, as on a disk that filled up, while
/// its flag is set.
struct Faulty {
    store: Arc<Store>,
    fail_commit: AtomicBool,
    fail_flush: AtomicBool,
}

impl Faulty {
    fn new(store: Arc<Store>) -> Faulty {
        Faulty {
            store,
            fail_commit: AtomicBool::new(false),
            fail_flush: AtomicBool::new(false),
        }
    }

    fn fault(flag: &AtomicBool) -> Result<(), StoreError> {
        if flag.load(Ordering::SeqCst) {
            return Err(StoreError::DiskFull {
                path: "test".into(),
                free: 0,
                needed: 1,
            });
        }
        Ok(())
    }
}

impl IngestStore for Faulty {
    type Prepared = <Store as IngestStore>::Prepared;

    fn prepare_batch(
        &self,
        msgs: Vec<(NewMessage, bool)>,
    ) -> Result<Vec<Self::Prepared>, StoreError> {
        IngestStore::prepare_batch(&*self.store, msgs)
    }

    fn commit_batch(&self, prepared: &[Self::Prepared]) -> Result<Vec<StoreOutcome>, StoreError> {
        Faulty::fault(&self.fail_commit)?;
        IngestStore::commit_batch(&*self.store, prepared)
    }

    async fn stored_uidls(
        &self,
        source: &str,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        IngestStore::stored_uidls(&*self.store, source).await
    }

    async fn pop3_stored_at(&self, source: &str, uidl: &str) -> Result<Option<String>, StoreError> {
        IngestStore::pop3_stored_at(&*self.store, source, uidl).await
    }

    async fn checkpoint(
        &self,
        source: &str,
        folder: &str,
    ) -> Result<Option<Checkpoint>, StoreError> {
        IngestStore::checkpoint(&*self.store, source, folder).await
    }

    async fn reset_checkpoint(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
        uidnext: Option<u32>,
    ) -> Result<Checkpoint, StoreError> {
        IngestStore::reset_checkpoint(&*self.store, source, folder, uidvalidity, uidnext).await
    }

    async fn skip(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
        uid: u32,
    ) -> Result<(), StoreError> {
        IngestStore::skip(&*self.store, source, folder, uidvalidity, uid).await
    }

    async fn pending_actions(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
    ) -> Result<Vec<u32>, StoreError> {
        IngestStore::pending_actions(&*self.store, source, folder, uidvalidity).await
    }

    async fn actions_done(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
        uids: &[u32],
    ) -> Result<(), StoreError> {
        IngestStore::actions_done(&*self.store, source, folder, uidvalidity, uids).await
    }

    async fn events_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<crate::store::Event>, StoreError> {
        IngestStore::events_after(&*self.store, after, limit).await
    }

    async fn ensure_room(&self, incoming: u64) -> Result<(), StoreError> {
        IngestStore::ensure_room(&*self.store, incoming).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Faulty::fault(&self.fail_flush)?;
        IngestStore::flush(&*self.store).await
    }
}

/// [`imap_listing`] for a source that changes the server: the folder is SELECTed.
fn select_listing(n: u32) -> String {
    imap_listing(n)
        .replace("C: $ EXAMINE INBOX", "C: $ SELECT INBOX")
        .replace("[READ-ONLY] Examine", "[READ-WRITE] Select")
}

/// The session after a failed store operation: the client drops the connection, saying
/// nothing more (no post-action, no LOGOUT that would claim success).
const DROPPED: &str = "== end\n";

const DELETE: &str = "after_ingest = \"delete\"\n";

/// A flush that fails after the commit leaves the server alone: the messages are stored
/// but not known to be durable, so nothing is deleted and the session ends with a store
/// error. The next session deletes them, and fetches nothing again.
#[tokio::test]
async fn no_post_action_when_the_flush_before_it_fails() {
    let mut text = select_listing(3);
    text += "C: $ UID FETCH 1:3 (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])\n";
    text += &bodies(1..=3);
    text += "S: $ OK Fetch completed.\n";
    text += DROPPED;
    // Nothing new (UIDNEXT 4, checkpoint at 3): only the post-actions still pending.
    let second = select_listing(3);
    text += &second[..second.find("C: $ UID FETCH").expect("a listing")];
    text += "C: $ UID STORE 1:3 +FLAGS.SILENT (\\Deleted)\nS: $ OK Store completed.\n";
    text += "C: $ UID EXPUNGE 1:3\nS: * 3 EXPUNGE\nS: * 2 EXPUNGE\nS: * 1 EXPUNGE\nS: $ OK Expunge completed.\n";
    text += LOGOUT;
    let server = ScriptServer::start(Script::parse("flush-fails", &text)).await;
    let s = setup(&server, "imap", DELETE);
    let faulty = Arc::new(Faulty::new(s.store.clone()));
    faulty.fail_flush.store(true, Ordering::SeqCst);
    let first = run_cycle(&faulty, &s.connector, &s.source, &password(), None).await;
    faulty.fail_flush.store(false, Ordering::SeqCst);
    let second = run_cycle(&faulty, &s.connector, &s.source, &password(), None).await;
    server
        .finish()
        .await
        .unwrap_or_else(|e| panic!("{e}\ncycles: {first:?} {second:?}"));
    assert!(
        matches!(first, Err(CycleError::Store(StoreError::DiskFull { .. }))),
        "{first:?}"
    );
    let second = second.expect("second cycle");
    assert_eq!((second.stored, second.acted), (0, 3), "{second:?}");
    assert_eq!(s.stored(), 3);
    assert!(
        s.store
            .pending_actions("s", "INBOX", 1765100000)
            .unwrap()
            .is_empty()
    );
}

/// A commit that fails stores nothing and moves no checkpoint: the session ends with the
/// store error, changing nothing on the server, and the next session fetches the same
/// messages again and stores each once.
#[tokio::test]
async fn a_failed_commit_is_fetched_again_and_stored_once() {
    let mut text = select_listing(3);
    text += "C: $ UID FETCH 1:3 (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])\n";
    text += &bodies(1..=3);
    text += "S: $ OK Fetch completed.\n";
    text += DROPPED;
    text += &select_listing(3);
    text += "C: $ UID FETCH 1:3 (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])\n";
    text += &bodies(1..=3);
    text += "S: $ OK Fetch completed.\n";
    text += "C: $ UID STORE 1:3 +FLAGS.SILENT (\\Deleted)\nS: $ OK Store completed.\n";
    text += "C: $ UID EXPUNGE 1:3\nS: * 3 EXPUNGE\nS: * 2 EXPUNGE\nS: * 1 EXPUNGE\nS: $ OK Expunge completed.\n";
    text += LOGOUT;
    let server = ScriptServer::start(Script::parse("commit-fails", &text)).await;
    let s = setup(&server, "imap", DELETE);
    let faulty = Arc::new(Faulty::new(s.store.clone()));
    faulty.fail_commit.store(true, Ordering::SeqCst);
    let first = run_cycle(&faulty, &s.connector, &s.source, &password(), None).await;
    let after_first = s.store.checkpoint("s", "INBOX").unwrap();
    faulty.fail_commit.store(false, Ordering::SeqCst);
    let second = run_cycle(&faulty, &s.connector, &s.source, &password(), None).await;
    server
        .finish()
        .await
        .unwrap_or_else(|e| panic!("{e}\ncycles: {first:?} {second:?}"));
    assert!(
        matches!(first, Err(CycleError::Store(StoreError::DiskFull { .. }))),
        "{first:?}"
    );
    assert_eq!(after_first, None);
    let second = second.expect("second cycle");
    assert_eq!((second.stored, second.already, second.acted), (3, 0, 3));
    assert_eq!(s.stored(), 3);
    assert_eq!(
        s.store.checkpoint("s", "INBOX").unwrap().unwrap().last_uid,
        3
    );
}

/// A store without room for the listed messages takes none: the session ends with the
/// store's error before any body is fetched, and the checkpoint stays where it was.
#[tokio::test]
async fn nothing_is_fetched_without_room_to_store_it() {
    let mut text = imap_listing(3);
    text += DROPPED;
    let server = ScriptServer::start(Script::parse("no-room", &text)).await;
    let s = setup(&server, "imap", "");
    s.store.set_min_free_bytes(u64::MAX);
    let r = run_cycle(&s.store, &s.connector, &s.source, &password(), None).await;
    server
        .finish()
        .await
        .unwrap_or_else(|e| panic!("{e}\ncycle: {r:?}"));
    match r {
        Err(e @ CycleError::Store(StoreError::DiskFull { .. })) => {
            assert_eq!(e.kind(), crate::telemetry::ErrorKind::Store)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.store.checkpoint("s", "INBOX").unwrap(), None);
    assert_eq!(s.stored(), 0);
}
