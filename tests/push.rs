//! IMAP push and folders against a real Dovecot: with `idle = true` new mail is stored as
//! soon as the server reports it, over the session already open (no new login per
//! message); a server without IDLE is polled; folder patterns are resolved with LIST and
//! each folder keeps its own checkpoint.

mod node;
mod support;

use std::time::{Duration, Instant};

use node::Node;
use node::corpus::corpus;
use support::{Dovecot, DovecotOptions};

const ALICE: &str = "alice@example.test";

fn source(port: u16, extra: &str) -> String {
    format!(
        "[sources.mail]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {port}\nusername = \"{ALICE}\"\nauth = \"password\"\npassword_env = \"ALICE_PASSWORD\"\n{extra}\n"
    )
}

fn node(dovecot: &Dovecot, body: &str) -> Node {
    let mut node = Node::new(&dovecot.ca_pem, body);
    node.env
        .push(("ALICE_PASSWORD".into(), "alice-password".into()));
    node
}

fn stored(node: &Node) -> u64 {
    Node::source(&node.sources(), "mail")["stored_total"]
        .as_u64()
        .unwrap_or(0)
}

/// Collection passes reported so far (a poll, or what an IDLE wake collected).
fn passes(node: &Node) -> u64 {
    Node::source(&node.sources(), "mail")["sessions_ok"]
        .as_u64()
        .unwrap_or(0)
}

fn message(tag: &str, i: usize) -> Vec<u8> {
    format!(
        "From: a@example.test\r\nTo: b@example.test\r\nSubject: {tag} {i}\r\nMessage-ID: <{tag}-{i}@example.test>\r\n\r\nbody {i}\r\n"
    )
    .into_bytes()
}

#[test]
fn idle_stores_new_mail_in_under_two_seconds_over_the_open_session() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    dovecot.seed(ALICE, &corpus("before"));
    let seeded = corpus("before").len() as u64;
    // Polling every 5 minutes: only IDLE can explain a fast arrival.
    let mut node = node(
        &dovecot,
        &source(
            dovecot.imaps_port,
            "idle = true\npoll_interval_secs = 300\n",
        ),
    );
    node.start();
    node.wait_stored("mail", seeded, Duration::from_secs(30));
    // The first pass is reported just before the session goes into IDLE.
    node.wait("the first pass", Duration::from_secs(30), |n| {
        (passes(n) >= 1).then_some(())
    });
    let logins_before = dovecot.login_lines().len();
    let mut latencies = Vec::new();
    for i in 0..5 {
        let before = stored(&node);
        let appended = Instant::now();
        dovecot.seed(ALICE, &[message("push", i)]);
        node.wait("new mail to be stored", Duration::from_secs(30), |n| {
            (stored(n) > before).then_some(())
        });
        latencies.push(appended.elapsed());
    }
    latencies.sort();
    let worst = *latencies.last().unwrap();
    println!("append-to-stored with IDLE: {latencies:?}");
    assert!(
        worst < Duration::from_secs(2),
        "append-to-stored took {worst:?} (poll interval 300 s); latencies {latencies:?}\n{}",
        node.log()
    );
    assert_eq!(
        dovecot.login_lines().len(),
        logins_before,
        "each new message must come over the idling session, not a new login"
    );
    node.stop();
}

#[test]
fn a_server_without_idle_is_polled_and_the_log_says_so_once() {
    // The capability list Dovecot advertises after login, without IDLE.
    let dovecot = Dovecot::start(DovecotOptions {
        extra_config: "imap_capability = IMAP4rev1 SASL-IR LITERAL+ ID ENABLE UIDPLUS MOVE\n"
            .into(),
        ..DovecotOptions::default()
    });
    dovecot.seed(ALICE, &[message("poll", 0)]);
    let mut node = node(
        &dovecot,
        &source(dovecot.imaps_port, "idle = true\npoll_interval_secs = 1\n"),
    );
    node.start();
    node.wait_stored("mail", 1, Duration::from_secs(30));
    dovecot.seed(ALICE, &[message("poll", 1)]);
    node.wait_stored("mail", 2, Duration::from_secs(30));
    // Several more sessions.
    node.wait("three more sessions", Duration::from_secs(30), |n| {
        (Node::source(&n.sources(), "mail")["sessions_ok"].as_u64()? >= 5).then_some(())
    });
    let log = node.log();
    assert_eq!(
        log.matches("does not offer IDLE").count(),
        1,
        "the fallback is logged once:\n{log}"
    );
    node.stop();
}

#[test]
fn folder_patterns_collect_matching_folders_with_their_own_checkpoints() {
    // Folders are made on disk here, behind Dovecot's back: without its mailbox list index
    // LIST reads the directory every time (a folder made through IMAP needs no such help).
    let dovecot = Dovecot::start(DovecotOptions {
        extra_config: "mailbox_list_index = no\n".into(),
        ..DovecotOptions::default()
    });
    dovecot.seed(ALICE, &[message("inbox", 0)]);
    dovecot.seed_folder(
        ALICE,
        "Support/Billing",
        &[message("billing", 0), message("billing", 1)],
    );
    dovecot.seed_folder(ALICE, "Support/Tech", &[message("tech", 0)]);
    dovecot.seed_folder(ALICE, "Support/Tech/Urgent", &[message("urgent", 0)]);
    dovecot.seed_folder(ALICE, "Other", &[message("other", 0)]);
    let mut node = node(
        &dovecot,
        &source(
            dovecot.imaps_port,
            "folders = [\"INBOX\", \"Support/*\"]\nidle = true\npoll_interval_secs = 1\n",
        ),
    );
    node.start();
    node.wait_stored("mail", 5, Duration::from_secs(30));
    // A folder created later matches the pattern at the next poll; INBOX idles meanwhile.
    dovecot.seed_folder(ALICE, "Support/New", &[message("new", 0)]);
    node.wait_stored("mail", 6, Duration::from_secs(30));
    // Two more polls of every folder, each of which would store a message twice if
    // checkpoints were mixed up between folders.
    let polled = passes(&node);
    node.wait("two more polls", Duration::from_secs(30), |n| {
        (passes(n) >= polled + 2).then_some(())
    });
    let list: serde_json::Value =
        serde_json::from_str(&node.get("/api/messages?limit=100")).expect("json");
    let mut folders: Vec<(String, u64)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["location"]["folder"].as_str().unwrap().to_string(),
                m["location"]["uidvalidity"].as_u64().unwrap(),
            )
        })
        .collect();
    folders.sort();
    let names: Vec<&str> = folders.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        names,
        [
            "INBOX",
            "Support/Billing",
            "Support/Billing",
            "Support/New",
            "Support/Tech",
            "Support/Tech/Urgent"
        ],
        "Other is not matched, nothing twice"
    );
    // Each folder has its own UIDVALIDITY (Dovecot gives every mailbox its own).
    let mut validities: Vec<u64> = folders.iter().map(|(_, v)| *v).collect();
    validities.dedup();
    assert_eq!(validities.len(), 5, "{folders:?}");
    node.stop();
}

#[test]
fn json_logs_are_one_object_per_line_with_source_and_session_spans() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    dovecot.seed(ALICE, &[message("json", 0)]);
    let mut node = node(
        &dovecot,
        &source(dovecot.imaps_port, "idle = false\npoll_interval_secs = 1\n"),
    );
    node.env
        .push(("MAILSLUICE__NODE__LOG_FORMAT".into(), "json".into()));
    node.start();
    node.wait_stored("mail", 1, Duration::from_secs(30));
    // Stored is not yet reported: the `collected` line follows the session's end.
    node.wait("the first pass", Duration::from_secs(30), |n| {
        (passes(n) >= 1).then_some(())
    });
    node.stop();
    let log = node.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let collected = lines
        .iter()
        .find(|l| l["fields"]["message"] == "collected")
        .unwrap_or_else(|| panic!("no `collected` line:\n{log}"));
    assert_eq!(collected["level"], "INFO");
    let spans = collected["spans"].as_array().expect("span list");
    assert_eq!(spans[0]["name"], "collector");
    assert_eq!(spans[0]["source"], "mail");
    assert_eq!(spans[1]["name"], "session");
    assert_eq!(spans[1]["n"], 1);
}
