//! Live reconfiguration and one-shot runs of the real binary against a real Dovecot:
//! SIGHUP and `POST /api/reload` start added sources, stop removed ones, restart changed
//! ones and leave the rest running; an invalid file is refused with every error and the
//! old configuration keeps running. `run --once` collects every source once and exits.

mod node;
mod support;

use std::time::Duration;

use node::Node;
use support::{Dovecot, DovecotOptions};

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";

fn servers() -> Dovecot {
    Dovecot::start(DovecotOptions {
        users: vec![
            (ALICE.into(), "alice-password".into()),
            (BOB.into(), "bob-password".into()),
        ],
        ..DovecotOptions::default()
    })
}

fn source(name: &str, protocol: &str, port: u16, user: &str, extra: &str) -> String {
    let env = if user == ALICE {
        "ALICE_PASSWORD"
    } else {
        "BOB_PASSWORD"
    };
    format!(
        "[sources.{name}]\nprotocol = \"{protocol}\"\nhost = \"localhost\"\nport = {port}\nusername = \"{user}\"\nauth = \"password\"\npassword_env = \"{env}\"\n{extra}\n"
    )
}

fn node(dovecot: &Dovecot, body: &str) -> Node {
    let mut node = Node::new(&dovecot.ca_pem, body);
    node.env
        .push(("ALICE_PASSWORD".into(), "alice-password".into()));
    node.env
        .push(("BOB_PASSWORD".into(), "bob-password".into()));
    node
}

fn message(tag: &str, i: usize) -> Vec<u8> {
    format!(
        "From: a@example.test\r\nSubject: {tag} {i}\r\nMessage-ID: <{tag}-{i}@example.test>\r\n\r\nbody {i}\r\n"
    )
    .into_bytes()
}

fn names(sources: &serde_json::Value) -> Vec<String> {
    sources
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

fn running_since(node: &Node, name: &str) -> String {
    Node::source(&node.sources(), name)["running_since"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn sighup_and_api_reload_apply_changes_source_by_source() {
    let dovecot = servers();
    dovecot.seed(ALICE, &[message("a", 0)]);
    dovecot.seed(BOB, &[message("b", 0)]);
    let keep = source(
        "keep",
        "imap",
        dovecot.imaps_port,
        ALICE,
        "idle = true\npoll_interval_secs = 300\n",
    );
    let change = source(
        "change",
        "imap",
        dovecot.imaps_port,
        BOB,
        "idle = false\npoll_interval_secs = 1\n",
    );
    let gone = source(
        "gone",
        "pop3",
        dovecot.pop3s_port,
        ALICE,
        "poll_interval_secs = 1\n",
    );
    let mut node = node(&dovecot, &format!("{keep}{change}{gone}"));
    node.start();
    for s in ["keep", "change", "gone"] {
        node.wait_state(s, "healthy", Duration::from_secs(30));
    }
    let keep_since = running_since(&node, "keep");
    let change_since = running_since(&node, "change");

    // SIGHUP: `gone` removed, `change` changed, `added` new, `keep` untouched.
    let change2 = source(
        "change",
        "imap",
        dovecot.imaps_port,
        BOB,
        "idle = false\npoll_interval_secs = 2\n",
    );
    let added = source(
        "added",
        "pop3",
        dovecot.pop3s_port,
        BOB,
        "poll_interval_secs = 1\n",
    );
    node.rewrite_body(&format!("{keep}{change2}{added}"));
    node.signal("HUP");
    node.wait("reload applied", Duration::from_secs(30), |n| {
        let s = n.sources();
        (names(&s) == ["added", "change", "keep"]
            && Node::source(&s, "added")["state"] == "healthy"
            && Node::source(&s, "change")["running_since"].as_str() != Some(&change_since))
        .then_some(())
    });
    assert_eq!(
        running_since(&node, "keep"),
        keep_since,
        "an unchanged source keeps running untouched"
    );
    // The untouched source still idles on its open session: new mail arrives at once.
    dovecot.seed(ALICE, &[message("a", 1)]);
    node.wait_stored("keep", 2, Duration::from_secs(10));
    let log = node.log();
    assert!(log.contains("configuration reloaded"), "{log}");

    // An invalid file is refused with every error; the running configuration stays.
    let bad = format!(
        "{keep}[sources.broken]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = 99999\nusername = \"x\"\nauth = \"password\"\npassword_env = \"ALICE_PASSWORD\"\ncolour = \"blue\"\n"
    );
    node.rewrite_body(&bad);
    let (status, body) = node.post("/api/reload");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("sources.broken.port"), "{body}");
    assert!(body.contains("sources.broken.colour"), "{body}");
    let out = node.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("keeps running the old one") && stderr.contains("sources.broken.port"),
        "{stderr}"
    );
    node.signal("HUP");
    node.wait("refusal logged", Duration::from_secs(10), |n| {
        n.log().contains("new configuration refused").then_some(())
    });
    assert_eq!(names(&node.sources()), ["added", "change", "keep"]);
    assert_eq!(running_since(&node, "keep"), keep_since);

    // `mailsluice reload` with a valid file: `added` disabled.
    let added_off = source(
        "added",
        "pop3",
        dovecot.pop3s_port,
        BOB,
        "enabled = false\n",
    );
    node.rewrite_body(&format!("{keep}{change2}{added_off}"));
    let out = node.cli_ok(&["reload"]);
    assert!(out.contains("removed       added"), "{out}");
    assert!(out.contains("unchanged     change, keep"), "{out}");
    node.wait_state("added", "disabled", Duration::from_secs(10));
    assert_eq!(running_since(&node, "keep"), keep_since);
    node.stop();
}

/// Messages stored for `source`, read offline (jsonl export, replacing the last one).
fn count(node: &Node, source: &str) -> usize {
    let out = node.dir.path().join(format!("{source}.jsonl"));
    node.cli_ok(&[
        "messages",
        "export",
        "--force",
        "--format",
        "jsonl",
        "--source",
        source,
        "--out",
        out.to_str().unwrap(),
    ]);
    std::fs::read_to_string(out).unwrap().lines().count()
}

#[test]
fn run_once_collects_every_source_and_exits_with_its_verdict() {
    let dovecot = servers();
    let inbox: Vec<Vec<u8>> = (0..40).map(|i| message("once-a", i)).collect();
    dovecot.seed(ALICE, &inbox);
    let pop: Vec<Vec<u8>> = (0..15).map(|i| message("once-b", i)).collect();
    dovecot.seed(BOB, &pop);
    let body = format!(
        "{}{}",
        source("imap", "imap", dovecot.imaps_port, ALICE, "idle = true\n"),
        source("pop", "pop3", dovecot.pop3s_port, BOB, "")
    );
    let node = node(&dovecot, &body);
    let started = std::time::Instant::now();
    let out = node.cli(&["run", "--once"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // IDLE is not waited on: the run ends as soon as both sources are collected.
    assert!(started.elapsed() < Duration::from_secs(20), "{stderr}");
    assert!(stderr.contains("source collected"), "{stderr}");
    // The closing line per source counts what that source stored.
    assert!(
        stderr.lines().any(|l| l.contains("source collected")
            && l.contains("source=imap")
            && l.contains("stored=40")),
        "{stderr}"
    );
    assert_eq!(count(&node, "imap"), 40);
    assert_eq!(count(&node, "pop"), 15);

    // Again: nothing new, still success; then a source that cannot sign in fails the run
    // while the other is still collected.
    dovecot.seed(ALICE, &[message("once-a", 99)]);
    let mut node = node;
    node.env.retain(|(k, _)| k != "BOB_PASSWORD");
    node.env.push(("BOB_PASSWORD".into(), "wrong".into()));
    let out = node.cli(&["run", "--once"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("1 source(s) not collected") && stderr.contains("pop:"),
        "{stderr}"
    );
    assert_eq!(count(&node, "imap"), 41, "{stderr}");
}

#[test]
fn completions_need_no_config() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mailsluice"))
            .args(["completions", shell])
            .current_dir(dir.path())
            .env_remove("MAILSLUICE_CONFIG")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for word in ["mailsluice", "check-config", "test-login", "once"] {
            assert!(text.contains(word), "{shell} completion lacks {word}");
        }
    }
}

/// Forwards the connections accepted on `listener` to `target` (plain TCP both ways), except
/// the first `stall_first`, which are accepted and never answered (a server too busy to
/// talk).
fn forward(listener: std::net::TcpListener, target: u16, stall_first: usize) {
    std::thread::spawn(move || {
        let mut stalled = Vec::new();
        for (n, client) in listener.incoming().enumerate() {
            let Ok(client) = client else { return };
            if n < stall_first {
                stalled.push(client);
                continue;
            }
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                return;
            };
            for (mut from, mut to) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
}

/// A server that does not answer the first connection (busy) does not fail `run --once`:
/// the source tries again and is collected. Two drops in a row still succeed; a server that
/// never answers fails the run after three tries.
#[test]
fn run_once_tries_again_when_the_server_cannot_be_reached() {
    let dovecot = servers();
    let inbox: Vec<Vec<u8>> = (0..5).map(|i| message("retry", i)).collect();
    dovecot.seed(ALICE, &inbox);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    forward(listener, dovecot.imaps_port, 2);
    let body = source("late", "imap", port, ALICE, "");
    let mut node = node(&dovecot, &body);
    node.env
        .push(("MAILSLUICE__NODE__CONNECT_TIMEOUT_SECS".into(), "1".into()));
    let out = node.cli(&["run", "--once"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("session failed").count(),
        2,
        "the first two tries fail: {stderr}"
    );
    assert_eq!(count(&node, "late"), 5, "{stderr}");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    forward(listener, dovecot.imaps_port, usize::MAX);
    let mut node = self::node(&dovecot, &source("never", "imap", port, ALICE, ""));
    node.env
        .push(("MAILSLUICE__NODE__CONNECT_TIMEOUT_SECS".into(), "1".into()));
    let out = node.cli(&["run", "--once"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("session failed").count(), 3, "{stderr}");
    assert!(stderr.contains("1 source(s) not collected"), "{stderr}");
}
