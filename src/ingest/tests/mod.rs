//! The collection cycle against scripted servers: transcripts of Dovecot's real answers and
//! of Office 365's quirks (`tests/transcripts/ingest/`), replayed by [`script`] on a
//! loopback port. Everything but the server is the real code, and no server is installed.

mod faults;
mod script;

use std::sync::Arc;
use std::time::Duration;

use script::{Observer, Script, ScriptServer};

use super::*;
use crate::config::SourceSettings;
use crate::net::Connector;
use crate::secret::Secret;
use crate::store::Store;

/// A store and a source `s` for alice on the scripted server, with `extra` source keys.
struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    connector: Connector,
    source: SourceSettings,
}

fn setup(server: &ScriptServer, protocol: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let folders = if protocol == "imap" && !extra.contains("folders") {
        "folders = [\"INBOX\"]\n"
    } else {
        ""
    };
    let auth = if extra.contains("auth = ") {
        ""
    } else {
        "auth = \"password\"\npassword_env = \"UNUSED\"\n"
    };
    let toml = format!(
        "[providers.ms]\nkind = \"office365\"\ntenant = \"contoso.com\"\nclient_id = \"c\"\n\n[node]\ndata_dir = \"{d}/data\"\nsecret_key_file = \"{d}/key\"\n\n[tls]\nextra_ca_file = \"{ca}\"\n\n[sources.s]\nprotocol = \"{protocol}\"\nhost = \"localhost\"\nport = {port}\nusername = \"alice@example.test\"\n{auth}{folders}{extra}\n",
        d = dir.path().display(),
        ca = server.ca_file.display(),
        port = server.port,
    );
    let settings = crate::config::load_str(&toml, &Default::default()).expect("config");
    let store = Arc::new(
        Store::open(&settings.node.data_dir, &settings.node.secret_key_file).expect("store"),
    );
    // Generous: a busy machine must not turn a slow reply into a different outcome.
    let connector = Connector::new(
        &settings.tls,
        Duration::from_secs(20),
        Duration::from_secs(20),
    )
    .expect("connector");
    Setup {
        _dir: dir,
        store,
        connector,
        source: settings.sources["s"].clone(),
    }
}

fn password() -> Credential {
    Credential::Password(Secret::new("alice-password"))
}

/// Source keys for an Office 365 source signing in with XOAUTH2.
const OFFICE365: &str = "auth = \"oauth2\"\nprovider = \"ms\"\nsasl = \"xoauth2\"\n";

fn office365(server: &ScriptServer, extra: &str) -> Setup {
    setup(server, "imap", &format!("{OFFICE365}{extra}"))
}

fn access_token() -> Credential {
    Credential::AccessToken(Secret::new("test-access-token"))
}

impl Setup {
    async fn cycle(&self) -> Result<CycleReport, CycleError> {
        let cred = match self.source.auth {
            crate::config::SourceAuth::OAuth2 { .. } => access_token(),
            crate::config::SourceAuth::Password { .. } => password(),
        };
        run_cycle(&self.store, &self.connector, &self.source, &cred, None).await
    }

    fn stored(&self) -> u64 {
        self.store
            .counts()
            .expect("counts")
            .get("s")
            .copied()
            .unwrap_or(0)
    }
}

/// Runs one cycle against `transcript` (every connection of it) and checks the server saw
/// exactly the script.
async fn replay(
    transcript: &str,
    make: impl FnOnce(&ScriptServer) -> Setup,
) -> (Setup, Result<CycleReport, CycleError>) {
    let server = ScriptServer::start(Script::load(transcript)).await;
    let s = make(&server);
    let r = s.cycle().await;
    server
        .finish()
        .await
        .unwrap_or_else(|e| panic!("{e}\ncycle: {r:?}"));
    (s, r)
}

/// Runs one cycle per connection of `transcript`, in order, and checks the server saw
/// exactly the script; `observer` sees every client line with the store at hand.
async fn replay_cycles(
    transcript: &str,
    protocol: &str,
    extra: &str,
    observer: impl Fn(&str, &Store) -> Result<(), String> + Send + Sync + 'static,
) -> (Setup, Vec<CycleReport>) {
    let script = Script::load(transcript);
    let cycles = script.connections();
    let store: Arc<std::sync::OnceLock<Arc<Store>>> = Arc::default();
    let seen = store.clone();
    let observer: Observer = Arc::new(move |line| match seen.get() {
        Some(store) => observer(line, store),
        None => Ok(()),
    });
    let server = ScriptServer::start_observed(script, observer).await;
    let s = setup(&server, protocol, extra);
    let _ = store.set(s.store.clone());
    let mut reports = Vec::new();
    let mut failed = None;
    for _ in 0..cycles {
        match s.cycle().await {
            Ok(r) => reports.push(r),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    server
        .finish()
        .await
        .unwrap_or_else(|e| panic!("{e}\ncycles: {reports:?} then {failed:?}"));
    assert!(failed.is_none(), "{failed:?}");
    (s, reports)
}

fn quiet(_: &str, _: &Store) -> Result<(), String> {
    Ok(())
}

/// The checkpoint advances with what is stored: the second cycle lists and fetches only
/// the UIDs above it.
#[tokio::test]
async fn dovecot_the_checkpoint_advances_and_the_next_cycle_fetches_only_whats_new() {
    let (s, r) = replay_cycles("dovecot-imap-checkpoint.txt", "imap", "", quiet).await;
    assert_eq!((r[0].stored, r[0].backlog), (3, 3));
    assert_eq!((r[1].stored, r[1].backlog, r[1].already), (2, 2, 0));
    let cp = s.store.checkpoint("s", "INBOX").unwrap().unwrap();
    assert_eq!((cp.last_uid, cp.rematch_below), (5, None));
    assert_eq!(s.stored(), 5);
}

/// After a UIDVALIDITY change the messages that were there are matched by content (each
/// stored copy answers for one UID); the new one and a second identical copy are stored.
#[tokio::test]
async fn dovecot_a_uidvalidity_change_rematches_by_content() {
    let (s, r) = replay_cycles(
        "dovecot-imap-uidvalidity.txt",
        "imap",
        "folders = [\"Support\"]\n",
        quiet,
    )
    .await;
    assert_eq!(r[0].stored, 3);
    assert_eq!(
        (r[1].stored, r[1].already, r[1].uidvalidity_changes),
        (2, 3, 1)
    );
    assert_eq!(s.stored(), 5);
}

/// The server is changed only once what it is changed for is stored: every post-action
/// command arrives when the store holds all three messages.
async fn post_action_after_commit(transcript: &str, extra: &str, verbs: &'static [&'static str]) {
    let (s, r) = replay_cycles(transcript, "imap", extra, move |line, store| {
        let acting = verbs.iter().any(|v| line.contains(v));
        let stored = store.counts().map_err(|e| e.to_string())?.get("s").copied();
        if acting && stored != Some(3) {
            return Err(format!("`{line}` sent with {stored:?} messages stored"));
        }
        Ok(())
    })
    .await;
    assert_eq!((r[0].stored, r[0].acted), (3, 3));
    assert_eq!(s.stored(), 3);
    assert!(
        s.store
            .pending_actions("s", "INBOX", uidvalidity(&s))
            .unwrap()
            .is_empty()
    );
}

fn uidvalidity(s: &Setup) -> u32 {
    s.store
        .checkpoint("s", "INBOX")
        .unwrap()
        .unwrap()
        .uidvalidity
}

#[tokio::test]
async fn dovecot_delete_happens_after_the_commit() {
    post_action_after_commit(
        "dovecot-imap-delete.txt",
        "after_ingest = \"delete\"\n",
        &["UID STORE", "UID EXPUNGE"],
    )
    .await;
}

#[tokio::test]
async fn dovecot_move_happens_after_the_commit() {
    post_action_after_commit(
        "dovecot-imap-move.txt",
        "after_ingest = \"move\"\nmove_to = \"Processed\"\n",
        &["UID MOVE", "CREATE"],
    )
    .await;
}

#[tokio::test]
async fn dovecot_seen_happens_after_the_commit() {
    post_action_after_commit(
        "dovecot-imap-seen.txt",
        "after_ingest = \"seen\"\n",
        &["UID STORE"],
    )
    .await;
}

/// A folder pattern is expanded with LIST; each matching folder has its own checkpoint.
#[tokio::test]
async fn dovecot_folder_patterns_collect_the_folders_that_match() {
    let (s, r) = replay_cycles(
        "dovecot-imap-patterns.txt",
        "imap",
        "folders = [\"INBOX\", \"Support/*\"]\n",
        quiet,
    )
    .await;
    assert_eq!(r[0].stored, 5);
    for (folder, last) in [("INBOX", 2), ("Support/A", 1), ("Support/B", 2)] {
        let cp = s.store.checkpoint("s", folder).unwrap().unwrap();
        assert_eq!(cp.last_uid, last, "{folder}");
    }
    assert!(s.store.checkpoint("s", "Other").unwrap().is_none());
}

/// A message over `max_message_bytes` is never fetched; the folder is collected past it.
#[tokio::test]
async fn dovecot_a_message_over_the_size_limit_is_skipped_not_fetched() {
    let (s, r) = replay_cycles(
        "dovecot-imap-oversize.txt",
        "imap",
        "max_message_bytes = 2000\n",
        // The transcript asks for the bodies of UIDs 1 and 3 only.
        quiet,
    )
    .await;
    assert_eq!((r[0].stored, r[0].skipped), (2, 1));
    assert_eq!(
        s.store.checkpoint("s", "INBOX").unwrap().unwrap().last_uid,
        3
    );
}

/// POP3: the second cycle retrieves only the UIDLs not stored yet.
#[tokio::test]
async fn dovecot_pop3_retrieves_only_uidls_not_stored() {
    let (s, r) = replay_cycles("dovecot-pop3-uidl.txt", "pop3", "", quiet).await;
    assert_eq!((r[0].stored, r[1].stored, r[1].backlog), (3, 2, 2));
    assert_eq!(s.stored(), 5);
}

/// POP3 delete: DELE only for what is stored, after the store is flushed.
#[tokio::test]
async fn dovecot_pop3_deletes_only_what_is_stored() {
    let (s, r) = replay_cycles(
        "dovecot-pop3-delete.txt",
        "pop3",
        "after_ingest = \"delete\"\n",
        |line, store| {
            let stored = store.counts().map_err(|e| e.to_string())?.get("s").copied();
            if line.starts_with("DELE") && stored != Some(3) {
                return Err(format!("`{line}` with {stored:?} stored"));
            }
            Ok(())
        },
    )
    .await;
    assert_eq!((r[0].stored, r[0].acted), (3, 3));
    assert_eq!(s.stored(), 3);
}

/// POP3 `delete_after_days`: a message stored today is kept on the server.
#[tokio::test]
async fn dovecot_pop3_keeps_messages_younger_than_delete_after_days() {
    let (_s, r) = replay_cycles(
        "dovecot-pop3-delete-after-days.txt",
        "pop3",
        "after_ingest = \"delete\"\ndelete_after_days = 1\n",
        |line, _| {
            if line.starts_with("DELE") {
                return Err(format!("`{line}` for a message stored today"));
            }
            Ok(())
        },
    )
    .await;
    assert_eq!((r[0].stored, r[0].acted), (3, 0));
}

/// IDLE: the session waits on the open connection; EXISTS wakes it, the new message is
/// collected over the same connection, and it idles again until asked to stop.
#[tokio::test]
async fn dovecot_idle_collects_what_exists_reports_over_the_same_session() {
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let idles = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = idles.clone();
    let sessions = Arc::new(tokio::sync::Semaphore::new(1));
    let slots = sessions.clone();
    let observer: Observer = Arc::new(move |line| {
        if line.ends_with(" IDLE") {
            // An idle connection holds no `max_sessions` slot.
            if slots.available_permits() != 1 {
                return Err("IDLE entered holding a session slot".into());
            }
            // The second IDLE is the one after t3 was collected: then stop.
            if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                let _ = stop_tx.send(true);
            }
        }
        Ok(())
    });
    let server =
        ScriptServer::start_observed(Script::load("dovecot-imap-idle.txt"), observer).await;
    let s = setup(&server, "imap", "idle = true\npoll_interval_secs = 3600\n");
    let mut passes = Vec::new();
    let mut on_pass =
        |r: &CycleReport, failed: &[RefusedFolder]| passes.push((r.stored, failed.len()));
    let permit = sessions.clone().acquire_owned().await.ok();
    let ctl = IdleCtl {
        stop,
        on_pass: &mut on_pass,
        sessions: sessions.clone(),
        permit,
        reissue: IDLE_REISSUE,
    };
    let r = run_session(
        &s.store,
        &s.connector,
        &s.source,
        &password(),
        None,
        Some(ctl),
    )
    .await;
    server
        .finish()
        .await
        .unwrap_or_else(|e| panic!("{e}\nsession: {r:?}"));
    let r = r.expect("session");
    assert!(r.passes_reported && !r.more, "{r:?}");
    assert_eq!(passes, vec![(2, 0), (1, 0)]);
    assert_eq!(s.stored(), 3);
    assert_eq!(idles.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn office365_ends_an_expired_token_session_with_bye_as_an_auth_error() {
    let (s, r) = replay("o365-bye-token-expired.txt", |srv| office365(srv, "")).await;
    let e = r.expect_err("BYE ends the cycle");
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(e.to_string().contains("AccessTokenExpired"), "{e}");
    assert_eq!(s.stored(), 0);
}

#[tokio::test]
async fn office365_throttling_is_its_own_error_with_the_suggested_backoff() {
    let (s, r) = replay("o365-throttled.txt", |srv| office365(srv, "")).await;
    match r {
        Err(CycleError::Session(SessionError::Throttled { backoff, reply, .. })) => {
            assert_eq!(backoff, Some(Duration::from_millis(2000)));
            assert!(reply.contains("Request is throttled"), "{reply}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.stored(), 0);
}

#[tokio::test]
async fn office365_authenticated_but_not_connected_names_the_servers_words() {
    let (s, r) = replay("o365-not-connected.txt", |srv| office365(srv, "")).await;
    let e = r.expect_err("BAD ends the cycle");
    assert!(
        matches!(e, CycleError::Session(_)),
        "a session problem, not a folder that cannot be opened: {e:?}"
    );
    assert!(
        e.to_string()
            .contains("User is authenticated but not connected"),
        "{e}"
    );
    assert_eq!(s.stored(), 0);
}

/// Office 365's POP3 takes XOAUTH2 only in two steps, and lists no PIPELINING: one RETR
/// at a time.
#[tokio::test]
async fn office365_pop3_signs_in_with_xoauth2_in_two_steps() {
    let (s, r) = replay("o365-pop3-two-step.txt", |srv| {
        setup(srv, "pop3", OFFICE365)
    })
    .await;
    let r = r.expect("cycle");
    assert_eq!((r.stored, r.backlog), (2, 2));
    assert_eq!(s.stored(), 2);
}

/// A Dovecot-like IMAP conversation (greeting, PLAIN login, EXAMINE INBOX) with `n` small
/// messages listed, as transcript text; the caller adds what follows the listing.
fn imap_listing(n: u32) -> String {
    let mut t = String::from(
        "== connection\n== tls\n\
         S: * OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN] Dovecot ready.\n\
         C: $ AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABhbGljZS1wYXNzd29yZA==\n\
         S: $ OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT UIDPLUS MOVE LITERAL+] Logged in\n\
         C: $ EXAMINE INBOX\n",
    );
    t += &format!(
        "S: * {n} EXISTS\nS: * OK [UIDVALIDITY 1765100000] UIDs valid\nS: * OK [UIDNEXT {}] Predicted next UID\nS: $ OK [READ-ONLY] Examine completed.\n",
        n + 1
    );
    t += &format!("C: $ UID FETCH 1:{n} (UID RFC822.SIZE)\n");
    for uid in 1..=n {
        t += &format!(
            "S: * {uid} FETCH (UID {uid} RFC822.SIZE {})\n",
            small(uid).len()
        );
    }
    t + "S: $ OK Fetch completed.\n"
}

/// A small message, distinct per `uid`.
fn small(uid: u32) -> String {
    format!("Subject: m{uid}\r\n\r\nbody {uid}\r\n")
}

/// The FETCH responses carrying the bodies of `uids`, as transcript lines.
fn bodies(uids: impl Iterator<Item = u32>) -> String {
    let mut t = String::new();
    for uid in uids {
        let m = small(uid);
        t += &format!(
            "S: * {uid} FETCH (UID {uid} RFC822.SIZE {len} INTERNALDATE \"07-Dec-2026 10:00:00 +0000\" BODY[] {{{len}}}\n",
            len = m.len()
        );
        for line in m.trim_end_matches("\r\n").split("\r\n") {
            t += &format!("S: {line}\n");
        }
        t += "S: )\n";
    }
    t
}

const LOGOUT: &str = "C: $ LOGOUT\nS: * BYE Logging out\nS: $ OK Logout completed.\n== end\n";

/// A session whose access token is about to expire ends after its first batch, reporting
/// `more`; the next session goes on from the checkpoint.
#[tokio::test]
async fn a_session_ends_before_its_token_expires_and_the_next_goes_on() {
    let n = (FETCH_BATCH + 20) as u32;
    let batch = FETCH_BATCH as u32;
    let mut text = imap_listing(n);
    text += &format!("C: $ UID FETCH 1:{batch} (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])\n");
    text += &bodies(1..=batch);
    text += "S: $ OK Fetch completed.\n";
    text += LOGOUT;
    // The next session lists from the checkpoint on and fetches the rest.
    text += &imap_listing(n).replace(
        &format!("C: $ UID FETCH 1:{n} (UID RFC822.SIZE)"),
        &format!("C: $ UID FETCH {}:{n} (UID RFC822.SIZE)", batch + 1),
    );
    text += &format!(
        "C: $ UID FETCH {}:{n} (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])\n",
        batch + 1
    );
    text += &bodies(batch + 1..=n);
    text += "S: $ OK Fetch completed.\n";
    text += LOGOUT;
    let server = ScriptServer::start(Script::parse("reopen", &text)).await;
    let s = setup(&server, "imap", "");
    // Already due: one batch runs (every session makes progress), then the session ends.
    let due = Some(ReopenAt(chrono::Utc::now().timestamp() - 1));
    let first = run_cycle(&s.store, &s.connector, &s.source, &password(), due).await;
    let cp = s.store.checkpoint("s", "INBOX").unwrap().unwrap();
    let second = s.cycle().await;
    server
        .finish()
        .await
        .unwrap_or_else(|e| panic!("{e}\ncycles: {first:?} {second:?}"));
    let first = first.expect("first cycle");
    assert!(first.more, "{first:?}");
    assert_eq!(
        (first.stored, first.backlog),
        (u64::from(batch), u64::from(n))
    );
    assert_eq!(cp.last_uid, batch);
    let second = second.expect("second cycle");
    assert!(!second.more, "{second:?}");
    assert_eq!(second.stored, u64::from(n - batch));
    assert_eq!(s.stored(), u64::from(n));
}
