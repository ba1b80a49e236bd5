//! The node against server faults injected by a TLS proxy in front of the real Dovecot:
//! dropped connections mid-literal, `NO [UNAVAILABLE]`, `BYE ... AccessTokenExpired`,
//! Office 365's throttling reply, a stalled read. The collector recovers, honours the
//! suggested backoff (state `throttled`), counts each fault, and every message ends up
//! stored exactly once.

mod faults;
mod node;
mod support;

use std::time::{Duration, Instant};

use faults::{Fault, Proxy};
use node::{Node, sha256};
use support::{Dovecot, DovecotOptions};

const ALICE: &str = "alice@example.test";

fn error_count(metrics: &str, kind: &str) -> u64 {
    let key = format!("mailsluice_errors_total{{source=\"mail\",kind=\"{kind}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn run_with_faults(imap: bool, faults: &[Fault]) -> (String, Vec<String>) {
    let run = run_behind_proxy(imap, faults);
    assert!(
        run.accepted > faults.len(),
        "every fault got its own connection"
    );
    (run.metrics, run.states)
}

/// What a node collecting all 400 messages through the proxy saw.
struct ProxiedRun {
    metrics: String,
    states: Vec<String>,
    /// Connections the proxy accepted.
    accepted: usize,
    /// The verbs the node sent ahead of their reply ([`Proxy::sent_ahead`]).
    sent_ahead: Vec<String>,
}

fn run_behind_proxy(imap: bool, faults: &[Fault]) -> ProxiedRun {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let messages: Vec<Vec<u8>> = (0..400)
        .map(|i| format!("Subject: f{i}\r\n\r\n{}\r\n", "z".repeat(2000 + i)).into_bytes())
        .collect();
    dovecot.seed(ALICE, &messages);
    let ca = support::ca();
    let backend = if imap {
        dovecot.imap_port
    } else {
        dovecot.pop3_port
    };
    let proxy = Proxy::start(&ca.cert_pem, &ca.key_pem, backend, imap);
    for f in faults {
        proxy.push(f.clone());
    }
    let protocol = if imap { "imap" } else { "pop3" };
    let body = format!(
        "[sources.mail]\nprotocol = \"{protocol}\"\nhost = \"localhost\"\nport = {}\nusername = \"{ALICE}\"\nauth = \"password\"\npassword_env = \"PW\"\npoll_interval_secs = 1\n",
        proxy.port
    );
    let mut node = Node::new(&ca.ca_pem, &body);
    let cfg = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("read_timeout_secs = 20", "read_timeout_secs = 2");
    std::fs::write(&node.config, cfg).unwrap();
    node.env.push(("PW".into(), "alice-password".into()));
    node.start();
    let mut states = Vec::new();
    let started = Instant::now();
    node.wait("all stored", Duration::from_secs(90), |n| {
        let s = n.sources();
        let src = Node::source(&s, "mail");
        states.push(src["state"].as_str().unwrap_or("").to_string());
        (src["stored_total"].as_u64() == Some(400)).then_some(())
    });
    let metrics = node.get("/metrics");
    node.stop();
    let stored = node.stored_hashes();
    let mut expected: Vec<String> = messages.iter().map(|m| sha256(m)).collect();
    expected.sort();
    let mut got = stored.clone();
    got.sort();
    assert_eq!(got, expected, "every message exactly once");
    println!(
        "{protocol}: recovered in {:?}; states seen: {states:?}",
        started.elapsed()
    );
    ProxiedRun {
        metrics,
        states,
        accepted: proxy.accepted(),
        sent_ahead: proxy.sent_ahead(),
    }
}

#[test]
fn imap_recovers_from_every_fault_without_loss_or_duplicates() {
    let (metrics, states) = run_with_faults(
        true,
        &[
            Fault::DropMidLiteral(5000),
            Fault::Unavailable,
            Fault::ByeTokenExpired,
            Fault::Throttled(1500),
            Fault::Stall,
            Fault::DropMidLiteral(300_000),
        ],
    );
    // Two drops, one stall and NO [UNAVAILABLE] (the server, not the credential).
    assert!(error_count(&metrics, "connect") >= 4, "{metrics}");
    assert!(error_count(&metrics, "throttled") >= 1, "{metrics}");
    assert_eq!(
        error_count(&metrics, "auth"),
        1,
        "only BYE AccessTokenExpired: {metrics}"
    );
    assert!(states.iter().any(|s| s == "throttled"), "{states:?}");
}

#[test]
fn pop3_recovers_from_every_fault_without_loss_or_duplicates() {
    let (metrics, _) = run_with_faults(
        false,
        &[
            Fault::DropMidLiteral(5000),
            Fault::Unavailable,
            Fault::Throttled(1000),
            Fault::Stall,
        ],
    );
    assert!(error_count(&metrics, "connect") >= 3, "{metrics}");
    assert!(error_count(&metrics, "throttled") >= 1, "{metrics}");
    assert_eq!(error_count(&metrics, "auth"), 0, "{metrics}");
}

#[test]
fn pop3_retrs_are_pipelined_only_when_the_server_announces_it() {
    // Dovecot's CAPA has PIPELINING: RETRs go out ahead of their replies.
    let ahead = run_behind_proxy(false, &[]).sent_ahead;
    let retrs = ahead.iter().filter(|v| *v == "RETR").count();
    assert!(retrs >= 100, "RETRs sent ahead: {retrs} of 400");
    // Without it (Exchange Online's CAPA), one RETR at a time, and still every message.
    let ahead = run_behind_proxy(false, &[Fault::NoPipelining]).sent_ahead;
    assert!(!ahead.iter().any(|v| v == "RETR"), "{ahead:?}");
}

#[test]
fn throttling_backoff_is_honoured() {
    // With a 3 s suggested backoff the next session must not come sooner.
    let dovecot = Dovecot::start(DovecotOptions::default());
    dovecot.seed(ALICE, &node::corpus::many("th", 3));
    let ca = support::ca();
    let proxy = Proxy::start(&ca.cert_pem, &ca.key_pem, dovecot.imap_port, true);
    proxy.push(Fault::Throttled(3000));
    let body = format!(
        "[sources.mail]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {}\nusername = \"{ALICE}\"\nauth = \"password\"\npassword_env = \"PW\"\npoll_interval_secs = 1\n",
        proxy.port
    );
    let mut node = Node::new(&ca.ca_pem, &body);
    node.env.push(("PW".into(), "alice-password".into()));
    node.start();
    let s = node.wait_state("mail", "throttled", Duration::from_secs(20));
    let t0 = Instant::now();
    assert!(
        s["last_error"]
            .as_str()
            .unwrap()
            .contains("Suggested Backoff Time: 3000"),
        "{s}"
    );
    assert_eq!(proxy.accepted(), 1);
    node.wait_stored("mail", 3, Duration::from_secs(20));
    assert!(
        t0.elapsed() >= Duration::from_millis(2500),
        "retried after {:?}",
        t0.elapsed()
    );
    assert_eq!(proxy.accepted(), 2, "exactly one retry after the backoff");
    node.stop();
}

#[test]
fn dovecot_restarted_during_a_backfill_collection_resumes() {
    let mut dovecot = Dovecot::start(DovecotOptions::default());
    let messages: Vec<Vec<u8>> = (0..3000)
        .map(|i| format!("Subject: r{i}\r\n\r\n{}\r\n", "q".repeat(500 + i % 700)).into_bytes())
        .collect();
    dovecot.seed(ALICE, &messages);
    let body = format!(
        "[sources.mail]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {}\nusername = \"{ALICE}\"\nauth = \"password\"\npassword_env = \"PW\"\npoll_interval_secs = 1\n",
        dovecot.imaps_port
    );
    let mut node = Node::new(&dovecot.ca_pem, &body);
    node.env.push(("PW".into(), "alice-password".into()));
    node.start();
    let at_restart = node.wait("part of the backfill", Duration::from_secs(60), |n| {
        let s = n.sources();
        let stored = Node::source(&s, "mail")["stored_total"]
            .as_u64()
            .unwrap_or(0);
        (stored > 0).then_some(stored)
    });
    dovecot.restart();
    node.wait_stored("mail", 3000, Duration::from_secs(90));
    let metrics = node.get("/metrics");
    node.stop();
    let mut got = node.stored_hashes();
    got.sort();
    let mut expected: Vec<String> = messages.iter().map(|m| sha256(m)).collect();
    expected.sort();
    assert_eq!(got, expected, "every message exactly once");
    println!("restarted Dovecot after {at_restart} of 3000 stored");
    if at_restart < 3000 {
        assert!(error_count(&metrics, "connect") >= 1, "{metrics}");
    }
}

#[test]
fn messages_expunged_by_someone_else_mid_fetch_are_skipped_not_stuck() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let messages: Vec<Vec<u8>> = (0..50)
        .map(|i| format!("Subject: e{i}\r\n\r\nbody {i}\r\n").into_bytes())
        .collect();
    dovecot.seed(ALICE, &messages);
    let files = dovecot.message_files(ALICE, "INBOX");
    let gone: Vec<std::path::PathBuf> = files[10..20].to_vec();
    let gone_hashes: Vec<String> = gone
        .iter()
        .map(|p| sha256(&std::fs::read(p).unwrap()))
        .collect();
    let ca = support::ca();
    let proxy = Proxy::start(&ca.cert_pem, &ca.key_pem, dovecot.imap_port, true);
    proxy.push(Fault::ExpungeBeforeBodies(gone));
    let body = format!(
        "[sources.mail]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {}\nusername = \"{ALICE}\"\nauth = \"password\"\npassword_env = \"PW\"\npoll_interval_secs = 1\n",
        proxy.port
    );
    let mut node = Node::new(&ca.ca_pem, &body);
    node.env.push(("PW".into(), "alice-password".into()));
    node.start();
    node.wait_stored("mail", 40, Duration::from_secs(60));
    // New mail after the gap is still collected: the checkpoint moved past the hole.
    dovecot.seed(ALICE, &[b"Subject: after the gap\r\n\r\nx\r\n".to_vec()]);
    node.wait_stored("mail", 41, Duration::from_secs(30));
    node.wait_state("mail", "healthy", Duration::from_secs(30));
    node.stop();
    let stored = node.stored_hashes();
    assert_eq!(stored.len(), 41, "nothing stored twice");
    for g in &gone_hashes {
        assert!(!stored.contains(g), "an expunged message was stored");
    }
}
