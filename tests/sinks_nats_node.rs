//! The node's NATS JetStream sink end to end: a real node ingesting from a real Dovecot and
//! publishing to a real `nats-server -js`, facing a server outage while it ingests and
//! killed (SIGKILL) at random moments while it catches up, ends with every stored message in the stream exactly
//! once: JetStream drops each repeat by its `Nats-Msg-Id`, which is the event id.

mod node;
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mailsluice::store::{EventKind, Store};
use node::Node;
use rand::{Rng, SeedableRng};
use support::nats::NatsServer;
use support::{Dovecot, DovecotOptions};

const ALICE: &str = "alice@example.test";
const STREAM: &str = "MAILSLUICE";

fn body(dovecot: &Dovecot, nats: &NatsServer) -> String {
    format!(
        "[sources.mail]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {port}\n\
         username = \"{ALICE}\"\nauth = \"password\"\npassword_env = \"PW\"\n\
         folders = [\"INBOX\"]\npoll_interval_secs = 1\n\n\
         [sinks.stream]\nkind = \"nats\"\nservers = [\"{url}\"]\nstream = \"{STREAM}\"\n\
         events = [\"message.stored\"]\ninclude_raw = true\ntimeout_secs = 2\n\
         max_backoff_secs = 1\n",
        port = dovecot.imaps_port,
        url = nats.url(),
    )
}

/// The messages in the stream: (Nats-Msg-Id, envelope).
fn published(rt: &tokio::runtime::Runtime, nats: &NatsServer) -> Vec<(String, serde_json::Value)> {
    rt.block_on(nats.stream_messages(STREAM))
        .into_iter()
        .map(|e| {
            (
                e.header("Nats-Msg-Id").expect("every message has its id"),
                serde_json::from_slice(&e.payload).expect("the envelope is JSON"),
            )
        })
        .collect()
}

fn stream_len(rt: &tokio::runtime::Runtime, nats: &NatsServer) -> u64 {
    rt.block_on(async {
        match nats.jetstream().await.get_stream(STREAM).await {
            Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        }
    })
}

#[test]
fn every_stored_message_reaches_the_stream_once_across_kills_and_an_outage() {
    let n = 400;
    let dovecot = Dovecot::start(DovecotOptions::default());
    let messages = node::corpus::many("nats-sink", n);
    dovecot.seed(ALICE, &messages);
    let mut nats = NatsServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut node = Node::new(&dovecot.ca_pem, &body(&dovecot, &nats));
    node.env.push(("PW".into(), "alice-password".into()));

    // The server is down while the node ingests: every publish fails and waits.
    nats.stop();
    node.start();
    node.wait_stored("mail", n as u64, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    node.stop();
    nats.restart();
    assert_eq!(stream_len(&rt, &nats), 0);

    // Back up: the node catches up, killed at random moments while it publishes.
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut progress = Vec::new();
    for _ in 0..6 {
        node.spawn_raw();
        node.wait_spawned(Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(rng.random_range(0..250)));
        node.kill_hard();
        progress.push(stream_len(&rt, &nats));
    }
    assert!(
        progress.iter().any(|&p| p > 0 && p < n as u64),
        "no kill landed while the node was publishing: {progress:?}"
    );
    node.start();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream_len(&rt, &nats) < n as u64 {
        assert!(
            Instant::now() < deadline,
            "{} of {n} in the stream after 60 s; node log:\n{}",
            stream_len(&rt, &nats),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    node.stop();

    // Exactly the store's message events, once each, in commit order, with their bodies.
    let store = Store::open(
        &node.dir.path().join("data"),
        &node.dir.path().join("secret.key"),
    )
    .unwrap();
    let events: Vec<_> = store
        .events_after(0, 10_000)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EventKind::MessageStored)
        .collect();
    assert_eq!(events.len(), n);
    let got = published(&rt, &nats);
    assert_eq!(got.len(), n, "progress after each kill: {progress:?}");
    let mut by_id = BTreeMap::new();
    for (id, envelope) in &got {
        assert_eq!(envelope["id"].as_str(), Some(id.as_str()));
        assert!(by_id.insert(id.clone(), envelope).is_none(), "{id} twice");
    }
    let mut last_seq = 0;
    for (id, envelope) in &got {
        let seq = envelope["seq"].as_u64().unwrap();
        assert!(seq > last_seq, "{id}: seq {seq} after {last_seq}");
        last_seq = seq;
    }
    for e in &events {
        let envelope = by_id
            .get(&e.id)
            .unwrap_or_else(|| panic!("event {} (seq {}) not in the stream", e.id, e.seq));
        let meta = store.meta(e.message.unwrap()).unwrap().unwrap();
        assert_eq!(envelope["seq"].as_u64(), Some(e.seq));
        assert_eq!(
            envelope["data"]["sha256"].as_str(),
            Some(meta.sha256.as_str())
        );
        assert_eq!(envelope["data"]["source"], "mail");
    }
    println!("stream length after each kill: {progress:?}");
}
