//! Crash safety: the node is SIGKILLed at random moments during a backfill of a few
//! thousand messages with `after_ingest = "delete"`, 20 times, then left to finish. After
//! every kill: each seeded message is still on the server or stored (nothing deleted before
//! it was durably stored) and nothing is stored twice, and every stored message has exactly
//! one event in the outbox, with seqs gap-free and increasing; at the end every message is
//! stored exactly once and the server is empty.

mod node;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mailsluice::store::{Event, EventKind, Store};
use node::{Node, sha256};
use rand::{Rng, SeedableRng};
use support::{Dovecot, DovecotOptions};

const ALICE: &str = "alice@example.test";
const KILLS: usize = 20;

fn server_hashes(dovecot: &Dovecot) -> Vec<String> {
    dovecot
        .message_files(ALICE, "INBOX")
        .iter()
        // A file may vanish between listing and reading while the node deletes.
        .filter_map(|p| std::fs::read(p).ok().map(|b| sha256(&b)))
        .collect()
}

fn seeded(n: usize) -> Vec<Vec<u8>> {
    // Varied sizes so kills land in different places: mostly small, some ~40 KB.
    (0..n)
        .map(|i| {
            let body = if i % 10 == 0 {
                "y".repeat(40_000)
            } else {
                "x".repeat(i % 300)
            };
            format!("Message-ID: <crash-{i}@example.test>\r\nSubject: crash {i}\r\n\r\n{body}\r\n")
                .into_bytes()
        })
        .collect()
}

fn check_invariants(
    round: usize,
    seeded: &BTreeSet<String>,
    on_server: &[String],
    stored: &[String],
) {
    let stored_set: BTreeSet<&String> = stored.iter().collect();
    assert_eq!(
        stored_set.len(),
        stored.len(),
        "round {round}: a message was stored twice"
    );
    let server_set: BTreeSet<&String> = on_server.iter().collect();
    for s in seeded {
        assert!(
            server_set.contains(s) || stored_set.contains(s),
            "round {round}: message {s} deleted from the server but not stored"
        );
    }
    for s in stored {
        assert!(
            seeded.contains(s),
            "round {round}: stored something never seeded"
        );
    }
}

/// The outbox of the stopped node: every stored message has exactly one `message.stored`
/// event naming it (with the id its location gives), every such event names a stored
/// message, and the seqs run from 1 without a gap (nothing is pruned here).
fn check_outbox(round: usize, node: &Node) {
    let store = Store::open(
        &node.dir.path().join("data"),
        &node.dir.path().join("secret.key"),
    )
    .unwrap();
    let mut events = Vec::new();
    loop {
        let after = events.last().map_or(0, |e: &Event| e.seq);
        let page = store.events_after(after, 1000).unwrap();
        if page.is_empty() {
            break;
        }
        events.extend(page);
    }
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "round {round}: seqs with a gap or out of order"
    );
    assert_eq!(store.last_event_seq(), events.len() as u64, "round {round}");
    let mut announced: BTreeMap<u64, String> = BTreeMap::new();
    for e in events.iter().filter(|e| e.kind == EventKind::MessageStored) {
        let id = e.message.expect("a message event names its message");
        assert!(
            announced.insert(id, e.id.clone()).is_none(),
            "round {round}: message {id} announced twice"
        );
    }
    let mut stored = 0;
    for meta in store.iter_meta(None) {
        let meta = meta.unwrap();
        stored += 1;
        assert_eq!(
            announced.get(&meta.id),
            Some(&meta.event_id()),
            "round {round}: message {} without its event",
            meta.id
        );
    }
    assert_eq!(
        announced.len(),
        stored,
        "round {round}: an event for a message not stored"
    );
}

fn crash_loop(protocol: &str, n: usize, seed: u64) {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let messages = seeded(n);
    dovecot.seed(ALICE, &messages);
    let expected: BTreeSet<String> = messages.iter().map(|m| sha256(m)).collect();
    let (port, folders) = match protocol {
        "imap" => (dovecot.imaps_port, "folders = [\"INBOX\"]\n"),
        _ => (dovecot.pop3s_port, ""),
    };
    let body = format!(
        "[sources.mail]\nprotocol = \"{protocol}\"\nhost = \"localhost\"\nport = {port}\nusername = \"{ALICE}\"\nauth = \"password\"\npassword_env = \"PW\"\n{folders}after_ingest = \"delete\"\npoll_interval_secs = 1\n"
    );
    let mut node = Node::new(&dovecot.ca_pem, &body);
    node.env.push(("PW".into(), "alice-password".into()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut progress = BTreeMap::new();
    for round in 0..KILLS {
        node.spawn_raw();
        // Timed from the node being up, so a slow start on a busy machine does not eat the
        // window in which the backfill runs.
        node.wait_spawned(Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(rng.random_range(0..500)));
        node.kill_hard();
        let stored = node.stored_hashes();
        let on_server = server_hashes(&dovecot);
        check_invariants(round, &expected, &on_server, &stored);
        check_outbox(round, &node);
        progress.insert(round, (stored.len(), on_server.len()));
    }
    // The crashes must have landed mid-backfill, not all before or after it.
    let partial = progress.values().filter(|(s, _)| *s > 0 && *s < n).count();
    assert!(
        partial > 0,
        "no kill interrupted the backfill: {progress:?}"
    );
    node.start();
    node.wait_stored("mail", n as u64, Duration::from_secs(120));
    // The post-actions of the last session follow its durable commit.
    node.wait("server emptied", Duration::from_secs(60), |_| {
        server_hashes(&dovecot).is_empty().then_some(())
    });
    node.stop();
    let stored = node.stored_hashes();
    let on_server = server_hashes(&dovecot);
    check_invariants(KILLS, &expected, &on_server, &stored);
    check_outbox(KILLS, &node);
    assert_eq!(stored.len(), n, "every message stored exactly once");
    assert!(
        on_server.is_empty(),
        "{} messages left on the server",
        on_server.len()
    );
    println!("{protocol}: {KILLS} kills, progress after each (stored, on server): {progress:?}");
}

#[test]
fn imap_delete_survives_sigkill_at_random_moments() {
    crash_loop("imap", 3000, 7);
}

#[test]
fn pop3_delete_survives_sigkill_at_random_moments() {
    crash_loop("pop3", 2000, 11);
}
