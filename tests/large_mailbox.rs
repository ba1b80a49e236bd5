//! A mailbox of 100,000 messages: listed and fetched in bounded windows and batches, stored
//! exactly once, with the node's peak memory bounded.

mod node;
mod support;

use std::time::{Duration, Instant};

use node::Node;
use support::{Dovecot, DovecotOptions};

const ALICE: &str = "alice@example.test";
const N: u64 = 100_000;

#[test]
fn one_hundred_thousand_messages_with_bounded_memory() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let seeded = Instant::now();
    let messages: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            format!("Message-ID: <big-{i}@example.test>\r\nSubject: m{i}\r\n\r\n{i}\r\n")
                .into_bytes()
        })
        .collect();
    dovecot.seed(ALICE, &messages);
    drop(messages);
    let seed_time = seeded.elapsed();
    let body = format!(
        "[sources.mail]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {}\nusername = \"{ALICE}\"\nauth = \"password\"\npassword_env = \"PW\"\npoll_interval_secs = 5\n",
        dovecot.imaps_port
    );
    let mut node = Node::new(&dovecot.ca_pem, &body);
    // Dovecot indexes a 100,000-message folder at its first SELECT and UID FETCH; on a busy
    // machine that takes longer than the harness's 20 s read timeout, and every session cut
    // off leaves Dovecot indexing again. The node's default (120 s) is what it would run with.
    let config = std::fs::read_to_string(&node.config).expect("config");
    std::fs::write(
        &node.config,
        config.replace("read_timeout_secs = 20", "read_timeout_secs = 120"),
    )
    .expect("config");
    node.env.push(("PW".into(), "alice-password".into()));
    let started = Instant::now();
    node.start();
    node.wait_stored("mail", N, Duration::from_secs(900));
    let took = started.elapsed();
    let peak = node.peak_rss_bytes().expect("node memory");
    node.stop();
    let listed = node.cli_ok(&["messages", "list", "--limit", "200000"]);
    assert_eq!(
        listed.lines().count() as u64,
        N,
        "every message exactly once"
    );
    println!(
        "100k: seeded in {seed_time:?}, stored in {took:?} ({:.0} msg/s), peak RSS {} MiB",
        N as f64 / took.as_secs_f64(),
        peak / (1024 * 1024)
    );
    assert!(
        peak < 300 * 1024 * 1024,
        "peak RSS {} MiB",
        peak / (1024 * 1024)
    );
}
