//! The collection cycle against scripted servers: transcripts of Dovecot's real answers and
//! of Office 365's quirks (`tests/transcripts/ingest/`), replayed by [`script`] on a
//! loopback port. Everything but the server is the real code, and no server is installed.

mod script;

use std::sync::Arc;
use std::time::Duration;

use script::{Script, ScriptServer};

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
    let connector = Connector::new(
        &settings.tls,
        Duration::from_secs(5),
        Duration::from_secs(5),
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
