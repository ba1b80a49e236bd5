//! The NATS sink's transport against a real `nats-server -js`: the stream it ensures, acked
//! and deduplicated publishes, the object store for mail over `max_payload`, an outage and
//! the client's reconnect, token authentication. Deliveries are built from events and
//! messages read back from a real store, as the delivery engine builds them. And the whole
//! node: mail collected from Dovecot, published by the delivery engine.

mod node;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream::{self, StorageType};
use mailsluice::config::{
    NatsAuth, NatsSink, SecretRef, SinkDelivery, SinkEvent, SinkSettings, SinkTarget, SourceFilter,
    TlsBackend, TlsSettings, TlsVersion,
};
use mailsluice::sinks::envelope::Raw;
use mailsluice::sinks::nats::{LazyNatsTransport, NatsTransport};
use mailsluice::sinks::transport::{Delivery, MadeFor, Transport};
use mailsluice::store::{Event, Location, NewMessage, Store};
use tempfile::TempDir;

use support::nats::{NatsOptions, NatsServer, SMALL_MAX_PAYLOAD};

const API: &str = "http://127.0.0.1:9898";
const BUCKET: &str = "mailsluice-raw";
const TIMEOUT: Duration = Duration::from_secs(2);

/// A store holding `messages` (source, uid, raw), each announced by a durable event.
struct Stored {
    store: Store,
    events: Vec<Event>,
    _dir: TempDir,
}

impl Stored {
    async fn new(messages: &[(&str, u32, Vec<u8>)]) -> Stored {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data"), &dir.path().join("key")).unwrap();
        for (source, uid, raw) in messages {
            store
                .store(NewMessage {
                    source: (*source).into(),
                    location: Location::Imap {
                        folder: "INBOX".into(),
                        uidvalidity: 1,
                        uid: *uid,
                    },
                    raw: raw.clone(),
                    internal_date: None,
                    parsed: mailsluice::parse::parse(raw),
                    post_action: false,
                    rematch: false,
                })
                .unwrap();
        }
        store.flush().await.unwrap();
        let events = store.events_after(0, 100).unwrap();
        assert_eq!(events.len(), messages.len());
        Stored {
            store,
            events,
            _dir: dir,
        }
    }

    /// The delivery of event `i`, with the raw bytes when `raw`.
    fn delivery(&self, i: usize, raw: bool) -> Delivery {
        let event = self.events[i].clone();
        let id = event.message.unwrap();
        Delivery {
            message: self.store.meta(id).unwrap(),
            raw: raw.then(|| Arc::new(self.store.raw(id).unwrap().unwrap())),
            inline: false,
            raw_url: Some(format!("http://127.0.0.1:9898/api/messages/{id}/raw")),
            prebuilt: None,
            event,
        }
    }
}

fn mail(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.com>\r\nTo: support@example.com\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@example.com>\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

/// A message with a small text part and a binary attachment of `size` bytes.
fn mail_with_attachment(size: usize) -> Vec<u8> {
    use base64::Engine;
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
    let mut lines = String::new();
    for chunk in encoded.as_bytes().chunks(76) {
        lines.push_str(std::str::from_utf8(chunk).unwrap());
        lines.push_str("\r\n");
    }
    format!(
        "From: alice@example.com\r\nTo: support@example.com\r\nSubject: scan\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\nThe scan.\r\n\
         --b\r\nContent-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename=\"scan.bin\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{lines}--b--\r\n"
    )
    .into_bytes()
}

fn settings(nats: &NatsServer, stream: &str, auth: NatsAuth) -> SinkSettings {
    SinkSettings {
        name: "stream".into(),
        target: SinkTarget::Nats(NatsSink {
            servers: vec![nats.url()],
            stream: stream.into(),
            subject: "mailsluice.msg.{source}".into(),
            duplicate_window: Duration::from_secs(3600),
            object_bucket: BUCKET.into(),
            auth,
            tls_ca_file: None,
        }),
        delivery: SinkDelivery {
            sources: SourceFilter::All,
            events: SinkEvent::ALL.to_vec(),
            include_raw: true,
            max_raw_bytes: 10 * 1024 * 1024,
            timeout: TIMEOUT,
            concurrency: 4,
            max_age: Duration::from_secs(86400),
            max_backoff: Duration::from_secs(300),
        },
    }
}

fn tls() -> TlsSettings {
    TlsSettings {
        min_version: TlsVersion::V1_2,
        extra_ca_file: None,
        backend: TlsBackend::Rustls,
    }
}

async fn connect(nats: &NatsServer) -> NatsTransport {
    NatsTransport::connect(&settings(nats, "MAILSLUICE", NatsAuth::None), &tls(), API)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}\n{}", nats.log()))
}

fn json(payload: &[u8]) -> serde_json::Value {
    serde_json::from_slice(payload).unwrap()
}

#[tokio::test]
async fn events_are_published_acked_and_a_repeat_is_dropped_by_the_stream() {
    let nats = NatsServer::start();
    let stored = Stored::new(&[
        ("support", 1, mail("one", "first")),
        ("sales-eu", 1, mail("two", "second")),
    ])
    .await;
    let sink = connect(&nats).await;

    // The stream as the sink creates it.
    let info = nats
        .jetstream()
        .await
        .get_stream("MAILSLUICE")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(info.subjects, ["mailsluice.>"]);
    assert_eq!(info.storage, StorageType::File);
    assert_eq!(info.duplicate_window, Duration::from_secs(3600));

    let first = stored.delivery(0, true);
    let second = stored.delivery(1, false);
    sink.deliver(&first).await.unwrap();
    sink.deliver(&second).await.unwrap();
    // A repeat (the ack was lost, or the node crashed before recording it): acked as a
    // duplicate, stored once.
    sink.deliver(&first).await.unwrap();

    let entries = nats.stream_messages("MAILSLUICE").await;
    let ids: Vec<_> = entries.iter().map(|e| e.header("Nats-Msg-Id")).collect();
    assert_eq!(entries.len(), 2, "{ids:?}");
    assert_eq!(entries[0].subject, "mailsluice.msg.support");
    assert_eq!(
        entries[0].header("Nats-Msg-Id").as_deref(),
        Some(first.event.id.as_str())
    );
    let raw = first.raw.as_deref().unwrap();
    assert_eq!(
        entries[0].payload,
        first.envelope(Raw::Base64(raw)).unwrap()
    );
    let body = json(&entries[0].payload);
    assert_eq!(body["type"], "message.stored");
    assert_eq!(body["data"]["subject"], "one");

    assert_eq!(entries[1].subject, "mailsluice.msg.sales-eu");
    assert_eq!(
        entries[1].header("Nats-Msg-Id").as_deref(),
        Some(second.event.id.as_str())
    );
    let id = second.event.message.unwrap();
    assert_eq!(
        json(&entries[1].payload)["data"]["raw_url"],
        format!("{API}/api/messages/{id}/raw")
    );
}

/// What the sink builds ahead of an attempt is what the attempt would publish, and the
/// attempt publishes it as built; one built for another `max_payload` is built again; a
/// message that goes through the object store is not built ahead.
#[tokio::test]
async fn a_message_built_ahead_is_published_as_built_and_only_for_its_max_payload() {
    let nats = NatsServer::start_with(NatsOptions::small_payload());
    let stored = Stored::new(&[
        ("support", 1, mail("one", "first")),
        ("support", 2, mail("two", "second")),
        ("support", 3, mail_with_attachment(300 * 1024)),
    ])
    .await;
    let sink = connect(&nats).await;

    let mut first = stored.delivery(0, true);
    let built = sink
        .build(&first)
        .expect("an inline envelope is built ahead");
    let raw = first.raw.as_deref().unwrap();
    assert_eq!(built.body, first.envelope(Raw::Base64(raw)).unwrap());
    assert!(matches!(built.made_for, MadeFor::MaxPayload(m) if m == SMALL_MAX_PAYLOAD));
    // Marked so the stream shows it was sent as built, not built again.
    let mut marked = built.clone();
    marked.body = format!(r#"{{"built_ahead":"{}"}}"#, first.event.id).into();
    first.prebuilt = Some(marked);
    sink.deliver(&first).await.unwrap();

    let mut second = stored.delivery(1, true);
    let mut other = sink.build(&second).unwrap();
    other.body = "built for another max_payload".into();
    other.made_for = MadeFor::MaxPayload(SMALL_MAX_PAYLOAD * 2);
    second.prebuilt = Some(other);
    sink.deliver(&second).await.unwrap();

    assert!(
        sink.build(&stored.delivery(2, true)).is_none(),
        "the object store's message is built at its attempt"
    );

    let entries = nats.stream_messages("MAILSLUICE").await;
    assert_eq!(
        json(&entries[0].payload)["built_ahead"],
        first.event.id.as_str()
    );
    let raw = second.raw.as_deref().unwrap();
    assert_eq!(
        entries[1].payload,
        second.envelope(Raw::Base64(raw)).unwrap(),
        "built again for the server's max_payload"
    );
}

#[tokio::test]
async fn mail_over_max_payload_goes_through_the_object_store() {
    let nats = NatsServer::start_with(NatsOptions::small_payload());
    let stored = Stored::new(&[
        ("support", 1, mail_with_attachment(300 * 1024)),
        ("support", 2, mail("small", "fits")),
        ("support", 3, mail("long", &"text line\r\n".repeat(8000))),
    ])
    .await;
    let sink = connect(&nats).await;
    assert_eq!(sink.max_payload(), SMALL_MAX_PAYLOAD);

    let large = stored.delivery(0, true);
    sink.deliver(&large).await.unwrap();
    // Again, as after a lost ack: the same object is overwritten, the envelope deduplicated.
    sink.deliver(&large).await.unwrap();
    let small = stored.delivery(1, true);
    sink.deliver(&small).await.unwrap();

    let entries = nats.stream_messages("MAILSLUICE").await;
    let ids: Vec<_> = entries.iter().map(|e| e.header("Nats-Msg-Id")).collect();
    assert_eq!(entries.len(), 2, "{ids:?}");
    let body = json(&entries[0].payload);
    let id = &large.event.id;
    assert_eq!(
        body["data"]["raw_object"],
        serde_json::json!({"bucket": BUCKET, "name": id})
    );
    assert!(body["data"].get("raw_base64").is_none());
    assert_eq!(body["data"]["attachments"][0]["name"], "scan.bin");
    let raw = large.raw.as_deref().unwrap();
    assert!(raw.len() > 300 * 1024);
    assert_eq!(nats.object_get(BUCKET, id).await, *raw, "byte-exact");

    // A small message on the same server still goes inline.
    assert_eq!(
        json(&entries[1].payload)["data"]["raw_base64"]
            .as_str()
            .map(str::len),
        Some(small.raw.as_deref().unwrap().len().div_ceil(3) * 4)
    );

    // A text body larger than max_payload fits in no form: failed for good, said why.
    let long = stored.delivery(2, true);
    let e = sink.deliver(&long).await.unwrap_err();
    assert!(e.permanent, "{e:?}");
    assert!(
        e.detail
            .contains(&format!("max_payload of {SMALL_MAX_PAYLOAD} bytes")),
        "{}",
        e.detail
    );
    assert_eq!(nats.stream_messages("MAILSLUICE").await.len(), 2);
}

#[tokio::test]
async fn an_outage_fails_within_the_timeout_and_the_client_reconnects_after() {
    let mut nats = NatsServer::start();
    let stored = Stored::new(&[
        ("support", 1, mail("before", "x")),
        ("support", 2, mail("during", "y")),
    ])
    .await;
    let sink = connect(&nats).await;
    sink.deliver(&stored.delivery(0, true)).await.unwrap();

    nats.stop();
    let during = stored.delivery(1, true);
    // The first attempt may go out before the client notices the closed connection: it
    // waits for its PubAck until the timeout. Once the client knows, an attempt fails at once.
    for bound in [TIMEOUT, Duration::from_millis(500)] {
        let started = Instant::now();
        let e = sink.deliver(&during).await.unwrap_err();
        assert!(
            started.elapsed() < bound + Duration::from_millis(500),
            "{e:?}"
        );
        assert!(!e.permanent);
        assert!(["connect", "timeout"].contains(&e.kind), "{e:?}");
        assert!(e.detail.contains(&nats.url()), "{}", e.detail);
    }
    let e = sink.deliver(&during).await.unwrap_err();
    assert_eq!(e.kind, "connect");
    assert!(e.detail.contains("not connected"), "{}", e.detail);

    // Back on the same port: the same transport delivers again once its client has
    // reconnected (as the engine retries, here without its backoff).
    nats.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sink.deliver(&during).await {
            Ok(()) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no delivery 10 s after the restart: {e}"),
        }
    }
    let entries = nats.stream_messages("MAILSLUICE").await;
    let ids: Vec<_> = entries
        .iter()
        .map(|e| e.header("Nats-Msg-Id").unwrap())
        .collect();
    assert_eq!(
        ids,
        [stored.events[0].id.clone(), stored.events[1].id.clone()]
    );
}

#[tokio::test]
async fn a_token_signs_in_and_a_wrong_one_is_refused_without_being_shown() {
    const TOKEN: &str = "tok-3f9c2a7e51d04b8c";
    const WRONG: &str = "tok-wrong-88d1c0aa";
    let nats = NatsServer::start_with(NatsOptions {
        token: Some(TOKEN.into()),
        ..NatsOptions::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let token_file = |name: &str, value: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        NatsAuth::Token(SecretRef::File(path))
    };
    let stored = Stored::new(&[("support", 1, mail("auth", "x"))]).await;

    let sink = NatsTransport::connect(
        &settings(&nats, "MAILSLUICE", token_file("good", TOKEN)),
        &tls(),
        API,
    )
    .await
    .unwrap();
    assert!(!format!("{sink:?}").contains(TOKEN), "{sink:?}");
    sink.deliver(&stored.delivery(0, true)).await.unwrap();
    assert_eq!(nats.stream_messages("MAILSLUICE").await.len(), 1);

    let e = NatsTransport::connect(
        &settings(&nats, "MAILSLUICE", token_file("bad", WRONG)),
        &tls(),
        API,
    )
    .await
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "sinks.stream: cannot connect to NATS at {}: ",
            nats.url()
        )),
        "{text}"
    );
    assert!(
        text.to_lowercase().contains("authorization violation"),
        "{text}"
    );
    assert_eq!(e.kind(), "auth");
    for printed in [text, format!("{e:?}")] {
        assert!(
            !printed.contains(WRONG) && !printed.contains(TOKEN),
            "{printed}"
        );
    }
}

#[tokio::test]
async fn an_operators_stream_is_refused_when_unfit_and_only_a_short_window_is_changed() {
    let nats = NatsServer::start();
    let js = nats.jetstream().await;
    let theirs = stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        storage: StorageType::File,
        ..Default::default()
    };
    js.create_stream(theirs.clone()).await.unwrap();
    let e = NatsTransport::connect(&settings(&nats, "ORDERS", NatsAuth::None), &tls(), API)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "stream");
    assert_eq!(
        e.to_string(),
        "sinks.stream: stream ORDERS exists with subjects [\"orders.>\"], which do not cover \
         \"mailsluice.msg.*\" (where sinks.stream.subject publishes); add \"mailsluice.>\" to \
         the stream's subjects, or name another stream in sinks.stream.stream"
    );
    let unchanged = js
        .get_stream("ORDERS")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(unchanged.subjects, theirs.subjects);

    // Their stream with the right subjects but a 2-minute window (the server's default):
    // lengthened to the sink's, nothing else touched.
    js.create_stream(stream::Config {
        name: "MAIL".into(),
        subjects: vec!["mailsluice.msg.>".into()],
        storage: StorageType::File,
        max_messages: 1_000_000,
        ..Default::default()
    })
    .await
    .unwrap();
    NatsTransport::connect(&settings(&nats, "MAIL", NatsAuth::None), &tls(), API)
        .await
        .unwrap();
    let now = js
        .get_stream("MAIL")
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    assert_eq!(now.duplicate_window, Duration::from_secs(3600));
    assert_eq!(now.subjects, ["mailsluice.msg.>"]);
    assert_eq!(now.max_messages, 1_000_000);
}

/// The node's NATS sink connects on its first attempt: with the server down, an attempt
/// fails (naming the servers) within the timeout instead of holding up the node's start;
/// once the server is up, the next attempt connects, ensures the stream and publishes.
#[tokio::test]
async fn the_nodes_sink_connects_when_the_server_comes_up() {
    let mut nats = NatsServer::start();
    let stored = Stored::new(&[("support", 1, mail("late", "server"))]).await;
    nats.stop();
    let sink = LazyNatsTransport::new(&settings(&nats, "MAILSLUICE", NatsAuth::None), &tls(), API);
    let started = Instant::now();
    let e = sink.deliver(&stored.delivery(0, false)).await.unwrap_err();
    assert!(started.elapsed() < TIMEOUT + Duration::from_secs(2), "{e}");
    assert!(!e.permanent, "{e:?}");
    assert!(
        e.detail.contains(&nats.url()) || e.detail.contains(&nats.port().to_string()),
        "{e:?}"
    );
    nats.restart();
    sink.deliver(&stored.delivery(0, false))
        .await
        .unwrap_or_else(|e| panic!("after the server came up: {e}\n{}", nats.log()));
    let entries = nats.stream_messages("MAILSLUICE").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].header("Nats-Msg-Id").as_deref(),
        Some(stored.events[0].id.as_str())
    );
}

/// The node end to end: mail collected from a real Dovecot is published by the sink's
/// worker, one stream message per stored message, with its event id as `Nats-Msg-Id`, on
/// the source's subject, in seq order; the sink's progress reaches the last event.
#[test]
fn the_node_publishes_every_stored_message() {
    use std::collections::BTreeSet;

    let dovecot = support::Dovecot::start(support::DovecotOptions::default());
    let mail = node::corpus::corpus("nats");
    dovecot.seed("alice@example.test", &mail);
    let nats = NatsServer::start();
    let body = format!(
        "[sources.mail]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {port}\n\
         username = \"alice@example.test\"\nauth = \"password\"\npassword_env = \"PW\"\n\
         folders = [\"INBOX\"]\npoll_interval_secs = 1\n\n\
         [sinks.stream]\nkind = \"nats\"\nservers = [\"{url}\"]\nevents = [\"message.stored\"]\n\
         max_backoff_secs = 1\n",
        port = dovecot.imaps_port,
        url = nats.url()
    );
    let mut node = node::Node::new(&dovecot.ca_pem, &body);
    node.env.push(("PW".into(), "alice-password".into()));
    node.start();
    node.wait_stored("mail", mail.len() as u64, Duration::from_secs(30));
    let stored: Vec<mailsluice::store::MessageMeta> =
        serde_json::from_str(&node.get("/api/messages?limit=1000")).unwrap();
    let expected: BTreeSet<String> = stored.iter().map(|m| m.event_id()).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let entries = support::wait_for(
        "every stored message in the stream",
        Duration::from_secs(30),
        || {
            let entries = runtime.block_on(async {
                match nats.jetstream().await.get_stream("MAILSLUICE").await {
                    Ok(_) => Some(nats.stream_messages("MAILSLUICE").await),
                    Err(_) => None,
                }
            })?;
            let ids: BTreeSet<String> = entries
                .iter()
                .filter_map(|e| e.header("Nats-Msg-Id"))
                .collect();
            (ids == expected).then_some(entries)
        },
        || node.log(),
    );
    assert_eq!(
        entries.len(),
        expected.len(),
        "one stream message per event"
    );
    let mut seqs = Vec::new();
    for e in &entries {
        assert_eq!(e.subject, "mailsluice.msg.mail");
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        assert_eq!(v["type"], "message.stored");
        assert_eq!(v["id"].as_str(), e.header("Nats-Msg-Id").as_deref());
        // Without include_raw: the URL, except for a message that did not parse, which
        // always carries its bytes.
        let raw = &v["data"];
        if raw["parse_error"].is_string() {
            assert!(raw["raw_base64"].is_string(), "{v}");
        } else {
            assert!(
                raw["raw_url"].is_string() && raw.get("raw_base64").is_none(),
                "{v}"
            );
        }
        seqs.push(v["seq"].as_u64().unwrap());
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    node.stop();
    let store = Store::open(
        &node.dir.path().join("data"),
        &node.dir.path().join("secret.key"),
    )
    .unwrap();
    assert_eq!(
        store.sink_state("stream").unwrap().delivered_through,
        store.last_event_seq()
    );
}
