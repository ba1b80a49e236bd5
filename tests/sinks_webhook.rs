//! Webhook sinks end to end: a real `mailsluice run` collecting from a real Dovecot and
//! delivering to the harness's webhook receiver, which checks every Standard Webhooks
//! signature with its own code and answers as each test plans.
//!
//! - every stored message is delivered once, signed, with the envelope's fields right, in
//!   order per source across two sources; a replay sends a range again as it was;
//! - the fault table: 500s, 429 with Retry-After, an answer slower than timeout_secs, a
//!   redirect, a dropped connection, a closed port, a receiver failing past max_age_secs
//!   (then `sinks retry`);
//! - the node SIGKILLed at random points while it delivers: in the end every message is
//!   delivered, no request badly signed, a repeat only with the same id and body;
//! - a reload adds and removes sinks; a replay from a pruned event is refused;
//! - the secrets never reach the log.

mod node;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use mailsluice::store::{MessageMeta, Store};
use node::{Node, corpus, sha256};
use rand::{Rng, SeedableRng};
use support::webhook::{Received, Reply};
use support::{Dovecot, DovecotOptions, WebhookReceiver};

const ALICE: &str = "alice@example.test";
const WAIT: Duration = Duration::from_secs(30);

/// An IMAP source `mail` on Dovecot's IMAPS port, polling every second.
fn imap_source(dovecot: &Dovecot, name: &str) -> String {
    format!(
        "[sources.{name}]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {port}\nusername = \"{ALICE}\"\nauth = \"password\"\npassword_env = \"PW\"\nfolders = [\"INBOX\"]\npoll_interval_secs = 1\n\n",
        port = dovecot.imaps_port
    )
}

/// A POP3 source on Dovecot's POP3S port (the same maildrop), polling every second.
fn pop3_source(dovecot: &Dovecot, name: &str) -> String {
    format!(
        "[sources.{name}]\nprotocol = \"pop3\"\nhost = \"localhost\"\nport = {port}\nusername = \"{ALICE}\"\nauth = \"password\"\npassword_env = \"PW\"\npoll_interval_secs = 1\n\n",
        port = dovecot.pop3s_port
    )
}

/// A `[sinks.NAME]` webhook table to `receiver`, its secret in a 0600 file in `dir`, short
/// retries, plus `extra` keys.
fn webhook_sink(dir: &Path, name: &str, receiver: &WebhookReceiver, extra: &str) -> String {
    let secret = dir.join(format!("{name}.whsec"));
    std::fs::write(&secret, format!("{}\n", receiver.secrets().join(" "))).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "[sinks.{name}]\nkind = \"webhook\"\nurl = \"{url}\"\nsecret_file = \"{file}\"\nmax_backoff_secs = 1\n{extra}\n\n",
        url = receiver.url(),
        file = secret.display()
    )
}

/// A node for `dovecot` whose body is `sources` and the sinks `sinks(dir)` builds (their
/// secret files go in the node's directory).
fn node_with(dovecot: &Dovecot, node_keys: &str, body: impl FnOnce(&Path) -> String) -> Node {
    let mut node = Node::new(&dovecot.ca_pem, "");
    let body = body(node.dir.path());
    let text = std::fs::read_to_string(&node.config).unwrap();
    let text = text.replacen("[node]\n", &format!("[node]\n{node_keys}"), 1);
    std::fs::write(&node.config, format!("{text}{body}")).unwrap();
    node.env.push(("PW".into(), "alice-password".into()));
    node
}

/// Every stored message, from the running node's API.
fn stored_messages(node: &Node) -> Vec<MessageMeta> {
    serde_json::from_str(&node.get("/api/messages?limit=10000")).expect("messages json")
}

/// The body of a request as JSON.
fn json(r: &Received) -> serde_json::Value {
    r.json()
}

/// Requests answered with success whose body is a `message.stored` event, by event id.
fn delivered_messages(received: &[Received]) -> BTreeMap<String, Vec<Received>> {
    let mut out: BTreeMap<String, Vec<Received>> = BTreeMap::new();
    for r in received {
        if r.verified && r.answer.is_success() && json(r)["type"] == "message.stored" {
            out.entry(r.id.clone().unwrap())
                .or_default()
                .push(r.clone());
        }
    }
    out
}

/// Every request with the same `webhook-id` carries the same body: a repeat is exact.
fn assert_repeats_are_exact(received: &[Received]) {
    let mut bodies: BTreeMap<&str, &[u8]> = BTreeMap::new();
    for r in received {
        let id = r.id.as_deref().expect("every request has a webhook-id");
        let first = *bodies.entry(id).or_insert(&r.body);
        assert!(
            first == r.body.as_slice(),
            "{id} sent again with another body:\n{}\n{}",
            String::from_utf8_lossy(first),
            String::from_utf8_lossy(&r.body)
        );
    }
}

/// GET an absolute URL of the node's API with its admin token: the bytes.
fn get_bytes(node: &Node, url: &str) -> Vec<u8> {
    let token = node.api_token();
    support::off_runtime(|| {
        let r = reqwest::blocking::Client::new()
            .get(url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(10))
            .send()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(r.status().is_success(), "GET {url}: {}", r.status());
        r.bytes().unwrap().to_vec()
    })
}

/// The value of a sample in Prometheus text, if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The stopped node's store.
fn open_store(node: &Node) -> Store {
    Store::open(
        &node.dir.path().join("data"),
        &node.dir.path().join("secret.key"),
    )
    .unwrap()
}

/// (a) Two sources' mail, delivered once each, signed, fields right, raw bytes inline or by
/// URL, each source in seq order, and a third source's state change; the metrics say so; a
/// replay sends a range again as it was.
#[test]
fn every_message_is_delivered_once_signed_and_in_order_per_source() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let mail = corpus::corpus("wh");
    dovecot.seed(ALICE, &mail);
    let receiver = WebhookReceiver::start();
    let mut node = node_with(&dovecot, "", |dir| {
        imap_source(&dovecot, "imap")
            + &pop3_source(&dovecot, "pop")
            // Nothing listens on port 1: it goes degraded, a state change to deliver.
            + &imap_source(&dovecot, "down").replace(
                &format!("port = {}", dovecot.imaps_port),
                "port = 1",
            )
            + &webhook_sink(
                dir,
                "hook",
                &receiver,
                "include_raw = true\nmax_raw_bytes = 1000\nconcurrency = 4\ntimeout_secs = 5",
            )
    });
    node.start();
    node.wait_stored("imap", mail.len() as u64, WAIT);
    node.wait_stored("pop", mail.len() as u64, WAIT);
    let stored = stored_messages(&node);
    assert_eq!(stored.len(), 2 * mail.len());
    let expected: BTreeSet<String> = stored.iter().map(MessageMeta::event_id).collect();
    receiver.wait_until("every stored message delivered", WAIT, |r| {
        let got: BTreeSet<String> = delivered_messages(r).into_keys().collect();
        got == expected
    });
    // The source that cannot connect has its state change delivered too.
    let received = receiver.wait_until("the state change of `down`", WAIT, |r| {
        r.iter().any(|r| json(r)["type"] == "source.state_changed")
    });
    let change = received
        .iter()
        .map(json)
        .find(|v| v["type"] == "source.state_changed")
        .unwrap();
    let d = &change["data"];
    assert_eq!(
        (d["source"].as_str(), d["from"].as_str(), d["to"].as_str()),
        (Some("down"), Some("starting"), Some("degraded")),
        "{change}"
    );
    assert!(d["reason"].is_string(), "{change}");

    assert!(
        receiver.bad_signatures().is_empty(),
        "{}",
        receiver.summary()
    );
    for (id, requests) in delivered_messages(&received) {
        assert_eq!(requests.len(), 1, "{id} delivered more than once");
    }
    for r in &received {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(
            r.header("user-agent").unwrap().starts_with("mailsluice/"),
            "{r:?}"
        );
        assert!(
            r.timestamp
                .as_deref()
                .unwrap()
                .bytes()
                .all(|b| b.is_ascii_digit())
        );
    }
    // Each source's events in seq order (one in flight per source).
    let mut per_source: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &received {
        let v = json(r);
        per_source
            .entry(v["data"]["source"].as_str().unwrap().to_string())
            .or_default()
            .push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(per_source.len(), 3, "{per_source:?}");
    for (source, seqs) in &per_source {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{source} out of order: {seqs:?}"
        );
    }
    // The envelope against what the store holds.
    let by_id: BTreeMap<String, Vec<Received>> = delivered_messages(&received);
    let (mut inline, mut by_url) = (0, 0);
    for meta in &stored {
        let v = json(&by_id[&meta.event_id()][0]);
        let d = &v["data"];
        assert_eq!(v["id"], meta.event_id().as_str());
        assert!(chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap()).is_ok());
        assert_eq!(d["source"], meta.source.as_str());
        assert_eq!(d["sha256"], meta.sha256.as_str());
        assert_eq!(d["size"], meta.size);
        match &meta.location {
            mailsluice::store::Location::Imap {
                folder,
                uidvalidity,
                uid,
            } => {
                assert_eq!(d["folder"], folder.as_str());
                assert_eq!(d["uidvalidity"], *uidvalidity);
                assert_eq!(d["uid"], *uid);
                assert!(d.get("uidl").is_none());
            }
            mailsluice::store::Location::Pop3 { uidl } => {
                assert_eq!(d["uidl"], uidl.as_str());
                assert!(d["folder"].is_null() && d["uidvalidity"].is_null());
            }
        }
        match &meta.parsed {
            Some(p) => {
                assert_eq!(d["subject"].as_str(), p.subject.as_deref());
                assert_eq!(d["message_id"].as_str(), p.message_id.as_deref());
                assert_eq!(d["from"], serde_json::json!(p.from));
                assert!(d.get("parse_error").is_none());
            }
            None => {
                assert!(d["parse_error"].is_string(), "{d}");
                assert!(d["subject"].is_null() && d["from"] == serde_json::json!([]));
            }
        }
        let raw = match (d["raw_base64"].as_str(), d["raw_url"].as_str()) {
            (Some(b64), None) => {
                inline += 1;
                assert!(meta.size <= 1000);
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap()
            }
            (None, Some(url)) => {
                by_url += 1;
                assert!(meta.size > 1000);
                assert_eq!(
                    url,
                    format!("http://{}/api/messages/{}/raw", node.http, meta.id)
                );
                get_bytes(&node, url)
            }
            other => panic!("raw bytes neither inline nor by URL: {other:?}"),
        };
        assert_eq!(sha256(&raw), meta.sha256, "the raw bytes of {}", meta.id);
    }
    assert!(inline > 0 && by_url > 0, "inline {inline}, by URL {by_url}");

    // The metrics: every sink metric described, the counts right (deliveries count once
    // recorded, within the batch delay), promtool content.
    let metrics = node.wait("the deliveries counted", WAIT, |n| {
        let metrics = n.get("/metrics");
        let delivered = metric(
            &metrics,
            "mailsluice_sink_deliveries_total{sink=\"hook\",outcome=\"delivered\"}",
        )?;
        (delivered >= stored.len() as f64).then_some(metrics)
    });
    for name in [
        "mailsluice_sink_deliveries_total",
        "mailsluice_sink_backlog_events",
        "mailsluice_sink_oldest_pending_age_seconds",
        "mailsluice_sink_delivery_duration_seconds",
    ] {
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name}:\n{metrics}"
        );
    }
    let file = node.file("metrics.txt", &metrics);
    let out = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A replay from the middle: those events again, each with the body it had.
    let from = json(&by_id[&stored[3].event_id()][0])["seq"]
        .as_u64()
        .unwrap();
    let before = received.len();
    let out = node.cli_ok(&["sinks", "replay", "hook", "--from", &from.to_string()]);
    assert!(
        out.contains(&format!("delivering events {from} to ")),
        "{out}"
    );
    let last = received
        .iter()
        .map(|r| json(r)["seq"].as_u64().unwrap())
        .max()
        .unwrap();
    let again = receiver.wait_until("the replayed range", WAIT, |r| {
        let seqs: BTreeSet<u64> = r[before..]
            .iter()
            .map(|r| json(r)["seq"].as_u64().unwrap())
            .collect();
        (from..=last).all(|s| seqs.contains(&s))
    });
    assert!(
        again[before..]
            .iter()
            .all(|r| json(r)["seq"].as_u64().unwrap() >= from),
        "nothing before {from} sent again"
    );
    assert_repeats_are_exact(&again);
    // Refused: before the first event.
    let out = node.cli(&["sinks", "replay", "hook", "--from", "0"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the oldest event kept is 1") && err.contains("node.events_retention_secs"),
        "{err}"
    );
    node.stop();

    let store = open_store(&node);
    let state = store.sink_state("hook").unwrap();
    assert_eq!(state.delivered_through, store.last_event_seq());
    assert_eq!(state.done_above, 0);
}

/// (b) The fault table, one row after another on one sink (one source: one request at a
/// time), and a second sink whose receiver fails past max_age_secs.
#[test]
fn the_fault_table() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let mail = corpus::many("faults", 6);
    dovecot.seed(ALICE, &mail);
    let mut faults = WebhookReceiver::start();
    let elsewhere = WebhookReceiver::start();
    let aging = WebhookReceiver::start();
    aging.set_default(Reply::Status(500));
    faults.queue([
        Reply::Status(500),
        Reply::Status(500),
        Reply::Ok,
        Reply::TooMany {
            retry_after: Some("2".into()),
        },
        Reply::Ok,
        Reply::Slow(Duration::from_millis(2500)),
        Reply::Ok,
        Reply::Redirect(elsewhere.url()),
        Reply::Ok,
        Reply::Disconnect,
        Reply::Ok,
    ]);
    let mut node = node_with(&dovecot, "", |dir| {
        imap_source(&dovecot, "mail")
            + &webhook_sink(
                dir,
                "faults",
                &faults,
                "events = [\"message.stored\"]\ntimeout_secs = 1",
            )
            + &webhook_sink(
                dir,
                "aging",
                &aging,
                "events = [\"message.stored\"]\nmax_age_secs = 3",
            )
    });
    node.start();
    node.wait_stored("mail", mail.len() as u64, WAIT);

    let received = faults.wait_until("six messages delivered through the faults", WAIT, |r| {
        delivered_messages(r).len() == 6
    });
    assert!(faults.bad_signatures().is_empty(), "{}", faults.summary());
    assert_repeats_are_exact(&received);
    let answers: Vec<&Reply> = received.iter().map(|r| &r.answer).collect();
    assert_eq!(answers.len(), 12, "{}", faults.summary());
    let id = |i: usize| received[i].id.clone().unwrap();
    let gap = |a: usize, b: usize| received[b].arrived - received[a].arrived;
    // 500, 500, then delivered: one event, retried after ~1 s each (jittered 20 %).
    assert!(id(0) == id(1) && id(1) == id(2));
    assert!(gap(0, 1) >= Duration::from_millis(800), "{:?}", gap(0, 1));
    // 429 with Retry-After: 2 -> not again before 2 s.
    assert_eq!(id(3), id(4));
    assert_ne!(id(3), id(2));
    assert!(gap(3, 4) >= Duration::from_secs(2), "{:?}", gap(3, 4));
    // Slower than timeout_secs = 1: given up on after 1 s, sent again.
    assert_eq!(id(5), id(6));
    assert!(gap(5, 6) >= Duration::from_secs(1), "{:?}", gap(5, 6));
    // A redirect is not followed: the other receiver never hears of it.
    assert_eq!(id(7), id(8));
    assert!(elsewhere.received().is_empty(), "{}", elsewhere.summary());
    // A dropped connection: sent again.
    assert_eq!(id(9), id(10));
    let ids: BTreeSet<String> = (0..received.len()).map(id).collect();
    assert_eq!(ids.len(), 6);
    let log = node.log();
    for needle in [
        "answered HTTP 500 Internal Server Error",
        "answered HTTP 429 Too Many Requests",
        "gave no complete answer within timeout_secs = 1",
        "answered HTTP 302 Found, to",
        "redirects are not followed",
    ] {
        assert!(log.contains(needle), "the log names {needle:?}:\n{log}");
    }

    // A closed port: attempts fail to connect; once it listens again, delivered.
    faults.close();
    let retried_before = metric(
        &node.get("/metrics"),
        "mailsluice_sink_deliveries_total{sink=\"faults\",outcome=\"retried\"}",
    )
    .unwrap();
    dovecot.seed(ALICE, &corpus::many("closed", 1));
    node.wait_stored("mail", 7, WAIT);
    node.wait("attempts against the closed port", WAIT, |n| {
        let now = metric(
            &n.get("/metrics"),
            "mailsluice_sink_deliveries_total{sink=\"faults\",outcome=\"retried\"}",
        )?;
        (now >= retried_before + 2.0).then_some(())
    });
    assert!(node.log().contains("Connection refused"), "{}", node.log());
    faults.reopen();
    faults.wait_until("the seventh message after the reopen", WAIT, |r| {
        delivered_messages(r).len() == 7
    });

    // max_age_secs = 3 with a receiver answering 500: every event failed, the log naming
    // each; `sinks retry` sends them again once the receiver is back.
    node.wait("every event failed for aging", WAIT, |n| {
        let failed = metric(
            &n.get("/metrics"),
            "mailsluice_sink_deliveries_total{sink=\"aging\",outcome=\"failed\"}",
        )?;
        (failed >= 7.0).then_some(())
    });
    let log = node.log();
    let stored = stored_messages(&node);
    for meta in &stored {
        let line = log
            .lines()
            .find(|l| l.contains("event marked failed") && l.contains(&meta.event_id()))
            .unwrap_or_else(|| panic!("no failure logged for {}:\n{log}", meta.event_id()));
        assert!(
            line.contains("sink=aging") && line.contains("seq=") && line.contains("attempts="),
            "{line}"
        );
        assert!(
            line.contains("answered HTTP 500 Internal Server Error"),
            "{line}"
        );
    }
    let failed_bodies: BTreeMap<String, Vec<u8>> = aging
        .received()
        .into_iter()
        .map(|r| (r.id.clone().unwrap(), r.body))
        .collect();
    aging.set_default(Reply::Ok);
    let out = node.cli_ok(&["sinks", "retry", "aging"]);
    assert!(out.contains("7 failed event(s) queued"), "{out}");
    let again = aging.wait_until("the failed events delivered after the retry", WAIT, |r| {
        delivered_messages(r).len() == 7
    });
    assert_repeats_are_exact(&again);
    assert_eq!(failed_bodies.len(), 7);
    assert!(aging.bad_signatures().is_empty());
    // A sink not configured: refused without asking the node.
    let out = node.cli(&["sinks", "retry", "nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the sinks are aging, faults"));

    // (e) Neither secret, nor its key, reached the log (at debug level).
    let log = node.log();
    for receiver in [&faults, &aging] {
        for secret in receiver.secrets() {
            let key = secret.strip_prefix("whsec_").unwrap();
            assert!(!log.contains(key), "a webhook secret is in the log");
        }
    }
    node.stop();

    let store = open_store(&node);
    assert!(store.sink_failed_list("aging").unwrap().is_empty());
    let aging_state = store.sink_state("aging").unwrap();
    assert_eq!((aging_state.failed, aging_state.failed_now), (7, 0));
    assert_eq!(aging_state.delivered, 7);
    assert_eq!(
        store.sink_state("faults").unwrap().delivered_through,
        store.last_event_seq()
    );
}

/// (c) SIGKILL at random points while two sources' mail is delivered to a slowish receiver,
/// several times; then left to finish. Every stored message delivered, every request
/// verified, repeats only with the same id and body.
#[test]
fn sigkill_while_delivering_loses_nothing_and_repeats_exactly() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let mail = corpus::many("kill", 40);
    dovecot.seed(ALICE, &mail);
    let receiver = WebhookReceiver::start();
    // 80 messages at 100 ms each, two at a time: about 4 s of delivering, which the kills
    // below cut into several times.
    receiver.set_default(Reply::Slow(Duration::from_millis(100)));
    // A fixed public URL: raw_url (part of the body) stays the same across restarts, which
    // the port picked at each start would not.
    let mut node = node_with(
        &dovecot,
        "http_public_url = \"http://mailsluice.test:9898\"\n",
        |dir| {
            imap_source(&dovecot, "imap")
                + &pop3_source(&dovecot, "pop")
                + &webhook_sink(dir, "hook", &receiver, "concurrency = 2\ntimeout_secs = 5")
        },
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    // Per kill: how long after the node was ready, requests before and after.
    let mut kills = Vec::new();
    for _ in 0..5 {
        node.spawn_raw();
        node.wait_spawned(WAIT);
        let before = receiver.received().len();
        let after = Duration::from_millis(rng.random_range(300..900));
        std::thread::sleep(after);
        node.kill_hard();
        let delivered = delivered_messages(&receiver.received()).len();
        kills.push((after, before, receiver.received().len(), delivered));
    }
    node.start();
    node.wait_stored("imap", mail.len() as u64, WAIT);
    node.wait_stored("pop", mail.len() as u64, WAIT);
    let stored = stored_messages(&node);
    let expected: BTreeSet<String> = stored.iter().map(MessageMeta::event_id).collect();
    let received = receiver.wait_until("every stored message delivered", WAIT * 2, |r| {
        let got: BTreeSet<String> = delivered_messages(r).into_keys().collect();
        expected.is_subset(&got)
    });
    node.stop();

    assert!(
        receiver.bad_signatures().is_empty(),
        "{}",
        receiver.summary()
    );
    assert_repeats_are_exact(&received);
    let delivered = delivered_messages(&received);
    assert_eq!(
        delivered.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "exactly the stored messages, none invented"
    );
    let repeats: usize = delivered.values().map(|v| v.len() - 1).sum();
    eprintln!(
        "kills (after ready, requests before, requests at the kill, messages delivered): \
         {kills:?}; {} requests for {} messages, {repeats} repeats",
        received.len(),
        expected.len()
    );
    // Most kills cut into delivering: requests went out in that run, and mail was left.
    let cut = kills
        .iter()
        .filter(|(_, before, at_kill, delivered)| at_kill > before && *delivered < expected.len())
        .count();
    assert!(cut >= 3, "too few kills landed while delivering: {kills:?}");
    let store = open_store(&node);
    assert_eq!(
        store.sink_state("hook").unwrap().delivered_through,
        store.last_event_seq()
    );
}

/// (d) A reload adds a sink (it gets every kept event) and removes one (its record goes,
/// the log says how much it had left); the same reload keeps events one second only, and
/// soon a replay from a pruned event is refused, naming the oldest kept and
/// `node.events_retention_secs`.
#[test]
fn a_reload_adds_and_removes_sinks_and_a_pruned_event_cannot_be_replayed() {
    let dovecot = Dovecot::start(DovecotOptions::default());
    let mail = corpus::many("reload", 4);
    dovecot.seed(ALICE, &mail);
    let first = WebhookReceiver::start();
    let second = WebhookReceiver::start();
    let source = imap_source(&dovecot, "mail");
    let mut node = node_with(&dovecot, "", |dir| {
        source.clone() + &webhook_sink(dir, "first", &first, "")
    });
    node.start();
    node.wait_stored("mail", 4, WAIT);
    first.wait_until("four messages at the first sink", WAIT, |r| {
        delivered_messages(r).len() == 4
    });
    // The first receiver goes down: two more messages wait for it.
    first.set_default(Reply::Status(503));
    dovecot.seed(ALICE, &corpus::many("pending", 2));
    node.wait_stored("mail", 6, WAIT);
    first.wait_until("attempts of the fifth", WAIT, |r| {
        r.iter().any(|r| r.answer == Reply::Status(503))
    });

    let dir = node.dir.path().to_path_buf();
    node.rewrite_body(&(source.clone() + &webhook_sink(&dir, "second", &second, "")));
    let text = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(
        &node.config,
        text.replacen("[node]\n", "[node]\nevents_retention_secs = 1\n", 1),
    )
    .unwrap();
    let out = node.cli_ok(&["reload"]);
    assert!(out.contains("sinks_added   second"), "{out}");
    assert!(out.contains("sinks_removed first"), "{out}");
    let stored = stored_messages(&node);
    let expected: BTreeSet<String> = stored.iter().map(MessageMeta::event_id).collect();
    second.wait_until("every message at the added sink", WAIT, |r| {
        delivered_messages(r).into_keys().collect::<BTreeSet<_>>() == expected
    });
    node.wait("the removal logged", WAIT, |n| {
        n.log()
            .lines()
            .find(|l| l.contains("sink removed from the configuration") && l.contains("sink=first"))
            .map(str::to_owned)
    });
    let line = node
        .log()
        .lines()
        .find(|l| l.contains("sink removed from the configuration"))
        .unwrap()
        .to_owned();
    let dropped: u64 = line
        .split("dropped_events=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        dropped >= 2,
        "the two messages it had not delivered: {line}"
    );
    let first_requests = first.received().len();

    // Kept one second once every sink has them (now): soon none is left, and a replay from
    // the start is refused with the reason.
    let started = Instant::now();
    let refusal = loop {
        let out = node.cli(&["sinks", "replay", "second", "--from", "1"]);
        if out.status.code() == Some(2) {
            break String::from_utf8_lossy(&out.stderr).into_owned();
        }
        assert!(
            started.elapsed() < WAIT,
            "events never pruned: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        refusal.contains("cannot replay from event 1")
            && refusal.contains("node.events_retention_secs = 1 s")
            && (refusal.contains("the oldest event kept is")
                || refusal.contains("no event is kept")),
        "{refusal}"
    );
    assert_eq!(
        first.received().len(),
        first_requests,
        "a removed sink sends nothing"
    );
    node.stop();
    let store = open_store(&node);
    assert_eq!(store.sink_names().unwrap(), ["second"]);
}
