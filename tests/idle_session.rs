//! An IDLE session driven directly (no actors) against a real Dovecot, through a relay
//! that records the commands sent: IDLE is re-issued on its timer, new mail ends the wait
//! and is collected over the same connection, a stop request leaves IDLE with DONE and logs
//! out, and a session whose access token comes due ends by itself and asks to be re-opened.

mod faults;
mod node;
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faults::Proxy;
use mailsluice::ingest::{Credential, CycleReport, IdleCtl, ReopenAt, run_session};
use mailsluice::secret::Secret;
use support::{Dovecot, DovecotOptions, wait_for_async};

const ALICE: &str = "alice@example.test";

fn message(i: usize) -> Vec<u8> {
    format!("From: a@example.test\r\nSubject: idle {i}\r\nMessage-ID: <idle-{i}@example.test>\r\n\r\nbody\r\n")
        .into_bytes()
}

fn count(commands: &[String], verb: &str) -> usize {
    commands.iter().filter(|c| *c == verb).count()
}

/// The relay runs its own runtime, so tests build theirs after it.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A Dovecot with one message, the recording relay in front of it, and an IDLE source
/// (polling hourly) reading through the relay.
struct Setup {
    dovecot: Dovecot,
    proxy: Proxy,
    _dir: tempfile::TempDir,
    store: Arc<mailsluice::store::Store>,
    connector: mailsluice::net::Connector,
    source: mailsluice::config::SourceSettings,
}

fn setup() -> Setup {
    let dovecot = Dovecot::start(DovecotOptions::default());
    dovecot.seed(ALICE, &[message(0)]);
    let proxy = Proxy::start(
        &dovecot.ca.cert_pem,
        &dovecot.ca.key_pem,
        dovecot.imap_port,
        true,
    );
    let dir = tempfile::tempdir().unwrap();
    let (store, connector, source) = node::direct_source(
        &dovecot.ca_pem,
        dir.path(),
        "imap",
        proxy.port,
        "idle = true\npoll_interval_secs = 3600\n",
    );
    Setup {
        dovecot,
        proxy,
        _dir: dir,
        store,
        connector,
        source,
    }
}

#[test]
fn idle_is_reissued_wakes_on_new_mail_and_stops_cleanly() {
    let Setup {
        dovecot,
        proxy,
        _dir,
        store,
        connector,
        source,
    } = setup();
    let cred = Credential::Password(Secret::new("alice-password"));
    let passes: Arc<Mutex<Vec<CycleReport>>> = Arc::default();
    let seen = passes.clone();
    let mut on_pass = move |r: &CycleReport, _: &[mailsluice::ingest::RefusedFolder]| {
        seen.lock().unwrap().push(*r)
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ctl = IdleCtl {
        stop: stop_rx,
        on_pass: &mut on_pass,
        sessions: Arc::new(tokio::sync::Semaphore::new(1)),
        permit: None,
        reissue: Duration::from_millis(300),
    };
    let session = run_session(&store, &connector, &source, &cred, None, Some(ctl));
    let driver = async {
        // Several re-issue periods with nothing new.
        wait_for_async(
            "IDLE to be re-issued every 300 ms",
            Duration::from_secs(10),
            || (count(&proxy.commands(), "IDLE") >= 3).then_some(()),
            || format!("{:?}", proxy.commands()),
        )
        .await;
        assert_eq!(
            passes.lock().unwrap().len(),
            1,
            "only the first pass so far"
        );
        dovecot.seed(ALICE, &[message(1)]);
        wait_for_async(
            "new mail to be collected",
            Duration::from_secs(10),
            || (passes.lock().unwrap().len() >= 2).then_some(()),
            || format!("{:?}", proxy.commands()),
        )
        .await;
        stop_tx.send(true).unwrap();
    };
    let (result, ()) = runtime().block_on(async { tokio::join!(session, driver) });
    let report = result.expect("session");
    assert!(!report.more && !report.idle_unsupported);
    let passes = passes.lock().unwrap().clone();
    assert_eq!(
        passes.iter().map(|p| p.stored).collect::<Vec<_>>(),
        [1, 1],
        "each pass stores what is new"
    );
    let commands = proxy.commands();
    assert_eq!(proxy.accepted(), 1, "one connection throughout");
    assert_eq!(
        count(&commands, "LOGIN") + count(&commands, "AUTHENTICATE"),
        1,
        "one sign-in: {commands:?}"
    );
    assert_eq!(
        count(&commands, "IDLE"),
        count(&commands, "DONE"),
        "every IDLE ended with DONE: {commands:?}"
    );
    assert_eq!(
        commands.last().map(String::as_str),
        Some("LOGOUT"),
        "{commands:?}"
    );
    assert_eq!(store.counts().unwrap()["s"], 2);
}

#[test]
fn an_idle_session_ends_before_its_token_is_due_and_asks_to_reopen() {
    let Setup {
        dovecot: _dovecot,
        proxy,
        _dir,
        store,
        connector,
        source,
    } = setup();
    let cred = Credential::Password(Secret::new("alice-password"));
    let mut on_pass = |_: &CycleReport, _: &[mailsluice::ingest::RefusedFolder]| {};
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ctl = IdleCtl {
        stop: stop_rx,
        on_pass: &mut on_pass,
        sessions: Arc::new(tokio::sync::Semaphore::new(1)),
        permit: None,
        reissue: mailsluice::ingest::IDLE_REISSUE,
    };
    let due = chrono::Utc::now().timestamp() + 2;
    let started = Instant::now();
    let report = runtime()
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(10),
                run_session(
                    &store,
                    &connector,
                    &source,
                    &cred,
                    Some(ReopenAt(due)),
                    Some(ctl),
                ),
            )
            .await
        })
        .expect("the session must end by itself when its token comes due")
        .expect("session");
    assert!(report.more, "asks to be re-opened with a fresh token");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "it idled until the token was due, not at once: {:?}",
        started.elapsed()
    );
    let commands = proxy.commands();
    assert_eq!(
        commands.last().map(String::as_str),
        Some("LOGOUT"),
        "{commands:?}"
    );
    assert_eq!(count(&commands, "IDLE"), count(&commands, "DONE"));
}
