//! The sink test harness works and can fail: a real `nats-server -js` (duplicate detection,
//! restart on the same port with the store kept, `max_payload`, the object store) and the
//! webhook receiver (Standard Webhooks verification pinned by the published test vector,
//! every planned answer, a closed and reopened port).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::object_store::{self, ObjectMetadata};
use async_nats::jetstream::stream::{self, StorageType};
use reqwest::blocking::{Client, Response};
use sha2::{Digest, Sha256};

use support::nats::SMALL_MAX_PAYLOAD;
use support::webhook::{self, Received, Reply, WebhookOptions, WebhookReceiver};
use support::{NatsOptions, NatsServer};

// ---- NATS ----------------------------------------------------------------------------------

fn stream_config() -> stream::Config {
    stream::Config {
        name: "MAILSLUICE".into(),
        subjects: vec!["mailsluice.>".into()],
        storage: StorageType::File,
        duplicate_window: Duration::from_secs(3600),
        ..Default::default()
    }
}

fn msg_id(id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id);
    headers
}

#[tokio::test]
async fn nats_deduplicates_by_msg_id_and_keeps_the_stream_across_restarts() {
    let mut nats = NatsServer::start();
    let port = nats.port();
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
    let js = nats.jetstream().await;
    js.create_stream(stream_config()).await.unwrap();

    let publish = async |js: &async_nats::jetstream::Context, id: &str, body: &str| {
        js.publish_with_headers("mailsluice.msg.support", msg_id(id), body.to_owned().into())
            .await
            .unwrap_or_else(|e| panic!("publish {id}: {e}"))
            .await
            .unwrap_or_else(|e| panic!("ack of {id}: {e}"))
    };
    let first = publish(&js, "evt_a", "one").await;
    let again = publish(&js, "evt_a", "one").await;
    let other = publish(&js, "evt_b", "two").await;
    assert!(!first.duplicate);
    assert!(
        again.duplicate,
        "a repeated Nats-Msg-Id must be acked as duplicate"
    );
    assert_eq!(again.sequence, first.sequence);
    assert!(!other.duplicate);
    assert_eq!(other.sequence, first.sequence + 1);

    let stored = |entries: Vec<support::nats::StreamEntry>| -> Vec<(String, String, String)> {
        entries
            .into_iter()
            .map(|e| {
                (
                    e.subject.clone(),
                    e.header("Nats-Msg-Id").unwrap_or_default(),
                    String::from_utf8(e.payload).unwrap(),
                )
            })
            .collect()
    };
    let expected = vec![
        (
            "mailsluice.msg.support".to_string(),
            "evt_a".to_string(),
            "one".to_string(),
        ),
        (
            "mailsluice.msg.support".to_string(),
            "evt_b".to_string(),
            "two".to_string(),
        ),
    ];
    assert_eq!(stored(nats.stream_messages("MAILSLUICE").await), expected);

    // A clean shutdown and start: same port, same file store, duplicate window restored.
    nats.restart();
    assert_eq!(nats.port(), port);
    assert_eq!(stored(nats.stream_messages("MAILSLUICE").await), expected);
    // The connection from before the restart reconnects on its own.
    let after = publish(&js, "evt_a", "one").await;
    assert!(
        after.duplicate,
        "the duplicate window must survive a restart"
    );

    // A crash: what was acked is on disk.
    publish(&js, "evt_c", "three").await;
    nats.kill();
    assert!(!nats.is_running());
    nats.restart();
    assert_eq!(nats.port(), port);
    let entries = nats.stream_messages("MAILSLUICE").await;
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert_eq!(entries[2].header("Nats-Msg-Id").as_deref(), Some("evt_c"));
    let after_crash = publish(&js, "evt_c", "three").await;
    assert!(
        after_crash.duplicate,
        "the duplicate window must survive a crash"
    );
    assert!(nats.log().contains("--- start 3 ---"));
}

#[tokio::test]
async fn nats_refuses_a_publish_over_max_payload() {
    let nats = NatsServer::start_with(NatsOptions::small_payload());
    let js = nats.jetstream().await;
    js.create_stream(stream_config()).await.unwrap();
    assert_eq!(
        js.client().server_info().max_payload,
        SMALL_MAX_PAYLOAD,
        "the client learns the server's max_payload"
    );

    let fits = vec![b'x'; SMALL_MAX_PAYLOAD - 1024];
    js.publish_with_headers("mailsluice.msg.s", msg_id("evt_fits"), fits.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let too_big = vec![b'x'; SMALL_MAX_PAYLOAD + 1];
    let published = js
        .publish_with_headers("mailsluice.msg.s", msg_id("evt_big"), too_big.into())
        .await;
    let Err(refused) = published else {
        panic!("a publish over max_payload must fail");
    };
    assert_eq!(refused.kind(), PublishErrorKind::MaxPayloadExceeded);

    // The server itself refuses it too, not only the client's check.
    let mut conn = TcpStream::connect(("127.0.0.1", nats.port())).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut info = String::new();
    reader.read_line(&mut info).unwrap();
    assert!(
        info.contains(&format!("\"max_payload\":{SMALL_MAX_PAYLOAD}")),
        "{info}"
    );
    // The server answers the PUB line alone and closes the connection: no payload needed.
    let big = SMALL_MAX_PAYLOAD + 1;
    write!(
        conn,
        "CONNECT {{\"verbose\":false}}\r\nPUB mailsluice.raw {big}\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    assert!(answer.starts_with("-ERR 'Maximum Payload"), "{answer:?}");

    assert_eq!(nats.stream_messages("MAILSLUICE").await.len(), 1);
}

#[tokio::test]
async fn nats_object_store_holds_an_object_larger_than_max_payload() {
    let nats = NatsServer::start_with(NatsOptions::small_payload());
    let js = nats.jetstream().await;
    let bucket = js
        .create_object_store(object_store::Config {
            bucket: "mailsluice-raw".into(),
            storage: StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();

    // Chunks must fit under max_payload: the client's default chunk (128 KiB) does not.
    let default_chunks = bucket.put("evt_default", &mut data.as_slice()).await;
    assert!(
        default_chunks.is_err(),
        "128 KiB chunks under a 64 KiB max_payload must be refused"
    );

    let meta = ObjectMetadata {
        name: "evt_0123".into(),
        chunk_size: Some(SMALL_MAX_PAYLOAD / 2),
        ..Default::default()
    };
    let info = bucket.put(meta, &mut data.as_slice()).await.unwrap();
    assert_eq!(info.size, data.len());
    let back = nats.object_get("mailsluice-raw", "evt_0123").await;
    assert_eq!(back.len(), data.len());
    assert_eq!(Sha256::digest(&back), Sha256::digest(&data));
}

#[test]
fn nats_reading_a_missing_stream_fails_loudly() {
    let nats = NatsServer::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let missing = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(nats.stream_messages("NOPE"))
    }));
    let message = panic_text(missing.expect_err("reading a missing stream must panic"));
    assert!(message.contains("look up stream NOPE"), "{message}");
    assert!(message.contains("nats-server log"), "{message}");
}

// ---- webhooks ------------------------------------------------------------------------------

/// The scheme's published test vector.
const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const VECTOR_TIMESTAMP: &str = "1614265330";
const VECTOR_PAYLOAD: &[u8] = br#"{"test": 2432232314}"#;
const VECTOR_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

#[test]
fn verifier_matches_the_published_test_vector() {
    assert_eq!(
        webhook::sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_PAYLOAD),
        VECTOR_SIGNATURE
    );
    let keys = [webhook::secret_key(VECTOR_SECRET).unwrap()];
    let at = UNIX_EPOCH + Duration::from_secs(1_614_265_330);
    let check = |signature: &str, body: &[u8], now: SystemTime| {
        webhook::check(
            &keys,
            Some(VECTOR_ID),
            Some(VECTOR_TIMESTAMP),
            Some(signature),
            body,
            now,
        )
    };
    assert_eq!(check(VECTOR_SIGNATURE, VECTOR_PAYLOAD, at), Ok(()));
    // A rotation: any of several signatures may match.
    let rotated = format!("v1,AAAA {VECTOR_SIGNATURE}");
    assert_eq!(check(&rotated, VECTOR_PAYLOAD, at), Ok(()));
    assert!(check(VECTOR_SIGNATURE, br#"{"test": 2432232315}"#, at).is_err());
    assert!(
        check(
            "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            VECTOR_PAYLOAD,
            at
        )
        .is_err()
    );
    let late = check(
        VECTOR_SIGNATURE,
        VECTOR_PAYLOAD,
        at + Duration::from_secs(301),
    );
    assert!(late.unwrap_err().contains("from now"));
    assert_eq!(
        check(
            VECTOR_SIGNATURE,
            VECTOR_PAYLOAD,
            at + Duration::from_secs(299)
        ),
        Ok(())
    );
}

#[test]
fn hmac_matches_rfc_4231() {
    // Test case 2 (short key) and test case 6 (a key longer than the block, hashed first).
    assert_eq!(
        hex::encode(webhook::hmac_sha256(
            b"Jefe",
            b"what do ya want for nothing?"
        )),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        hex::encode(webhook::hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// POSTs `body` to the receiver as a sender signing with `secret` would.
/// A request signed over `{"seq":4}` that carries `{"seq":5}`: a body changed after signing.
fn post_changed(client: &Client, url: &str, secret: &str, id: &str) {
    let timestamp = webhook::now_timestamp();
    let signature = webhook::sign(secret, id, &timestamp, br#"{"seq":4}"#);
    post(client, url, id, &timestamp, &signature, r#"{"seq":5}"#);
}

fn post_signed(client: &Client, url: &str, secret: &str, id: &str, body: &str) -> Response {
    let timestamp = webhook::now_timestamp();
    let signature = webhook::sign(secret, id, &timestamp, body.as_bytes());
    post(client, url, id, &timestamp, &signature, body)
}

/// A JSON POST with the three Standard Webhooks headers as given.
fn post(
    client: &Client,
    url: &str,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &str,
) -> Response {
    client
        .post(url)
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp)
        .header("webhook-signature", signature)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

#[test]
fn webhook_records_signed_and_badly_signed_requests() {
    let old = webhook::new_secret();
    let receiver = WebhookReceiver::start_with(WebhookOptions {
        secrets: vec![webhook::new_secret(), old.clone()],
        ..WebhookOptions::default()
    });
    let secret = receiver.secrets()[0].clone();
    let client = client();

    let ok = post_signed(&client, &receiver.url(), &secret, "evt_1", r#"{"seq":1}"#);
    assert_eq!(ok.status(), 204);
    // Signed with the other configured secret (a rotation): verified too.
    let rotated = post_signed(&client, &receiver.url(), &old, "evt_2", r#"{"seq":2}"#);
    assert_eq!(rotated.status(), 204);
    // Signed with a secret the receiver does not know.
    let stranger = webhook::new_secret();
    post_signed(&client, &receiver.url(), &stranger, "evt_3", r#"{"seq":3}"#);
    // The body changed after signing.
    post_changed(&client, &receiver.url(), &secret, "evt_4");
    // No signature at all.
    client.post(receiver.url()).body("{}").send().unwrap();

    let received = receiver.wait_for(5, Duration::from_secs(5));
    let verified: Vec<bool> = received.iter().map(|r| r.verified).collect();
    assert_eq!(verified, [true, true, false, false, false]);
    let first = &received[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, support::webhook::HOOK_PATH);
    assert_eq!(first.id.as_deref(), Some("evt_1"));
    assert_eq!(first.json()["seq"], 1);
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert!(first.rejection.is_none());
    let bad = receiver.bad_signatures();
    assert_eq!(bad.len(), 3);
    assert!(
        bad[0]
            .rejection
            .as_deref()
            .unwrap()
            .contains("no v1 signature matches")
    );
    assert!(
        bad[2]
            .rejection
            .as_deref()
            .unwrap()
            .contains("no webhook-id")
    );
    assert_eq!(receiver.unique_ids(), ["evt_1", "evt_2", "evt_3", "evt_4"]);
    assert_eq!(receiver.delivered_ids(), ["evt_1", "evt_2"]);
}

#[test]
fn webhook_answers_as_planned() {
    let mut receiver = WebhookReceiver::start();
    let secret = receiver.secrets()[0].clone();
    let client = client();
    // For requests after `close`: no pooled connection to the closed port.
    let fresh_client = self::client();
    let url = receiver.url();
    let post = |id: &str| client.post(&url).header("webhook-id", id).body("{}").send();

    receiver.queue([
        Reply::Status(500),
        Reply::TooMany {
            retry_after: Some("2".into()),
        },
        Reply::Unavailable {
            retry_after: Some("7".into()),
        },
        Reply::Unavailable { retry_after: None },
        Reply::Redirect("http://127.0.0.1:9/elsewhere".into()),
        Reply::Disconnect,
    ]);
    let r = post("evt_1").unwrap();
    assert_eq!(r.status(), 500);
    let r = post("evt_1").unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    let r = post("evt_1").unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "7");
    let r = post("evt_1").unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_none());
    let r = post("evt_1").unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "http://127.0.0.1:9/elsewhere");
    let dropped = post("evt_1").expect_err("a dropped connection is no answer");
    assert!(!dropped.is_timeout(), "{dropped:?}");
    // The queue is used up: the default answers.
    assert_eq!(post("evt_1").unwrap().status(), 204);
    receiver.set_default(Reply::Status(410));
    assert_eq!(post("evt_1").unwrap().status(), 410);
    receiver.set_default(Reply::Ok);

    // Slow: a sender with a shorter timeout gives up; the request was still recorded.
    receiver.queue([Reply::Slow(Duration::from_secs(30))]);
    let started = Instant::now();
    let timed_out = client
        .post(receiver.url())
        .timeout(Duration::from_millis(300))
        .body("{}")
        .send()
        .expect_err("a 30 s answer must time out a 300 ms request");
    assert!(timed_out.is_timeout(), "{timed_out:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    receiver.queue([Reply::Slow(Duration::from_millis(300))]);
    let started = Instant::now();
    assert_eq!(post("evt_1").unwrap().status(), 204);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let answers: Vec<Reply> = receiver.received().into_iter().map(|r| r.answer).collect();
    assert_eq!(answers.len(), 10);
    assert_eq!(answers[5], Reply::Disconnect);
    assert_eq!(answers[8], Reply::Slow(Duration::from_secs(30)));
    // Unsigned requests are never delivered, whatever the answer.
    assert!(receiver.delivered_ids().is_empty());

    // A closed port refuses connections and drops open ones; reopened, it answers on the
    // same port.
    let port = receiver.port();
    let mut open = TcpStream::connect(("127.0.0.1", port)).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    receiver.close();
    assert!(!receiver.is_open());
    let mut byte = [0u8; 1];
    assert!(
        matches!(open.read(&mut byte), Ok(0) | Err(_)),
        "an open connection must be closed"
    );
    let refused = fresh_client
        .post(&url)
        .body("{}")
        .send()
        .expect_err("a closed port must refuse");
    assert!(refused.is_connect(), "{refused:?}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    receiver.reopen();
    assert_eq!(receiver.port(), port);
    let r = post_signed(&client, &receiver.url(), &secret, "evt_2", "{}");
    assert_eq!(r.status(), 204);
    assert_eq!(receiver.delivered_ids(), ["evt_2"]);
}

/// A receiver that keeps no bodies (the benchmark's) still verifies every request: a
/// good signature verifies, a body changed after signing does not.
#[test]
fn webhook_without_bodies_still_verifies_each_request() {
    let receiver = WebhookReceiver::start_with(WebhookOptions {
        keep_bodies: false,
        ..WebhookOptions::default()
    });
    let secret = receiver.secrets()[0].clone();
    let client = client();
    post_signed(&client, &receiver.url(), &secret, "evt_1", r#"{"seq":1}"#);
    post_changed(&client, &receiver.url(), &secret, "evt_2");
    let received = receiver.wait_for(2, Duration::from_secs(5));
    let verified: Vec<bool> = received.iter().map(|r| r.verified).collect();
    assert_eq!(verified, [true, false]);
    assert!(received.iter().all(|r| r.body.is_empty()));
    assert_eq!(receiver.delivered_and_bad(), (1, 1));
}

#[test]
fn webhook_serves_https_with_the_harness_ca() {
    let receiver = WebhookReceiver::start_with(WebhookOptions {
        tls: true,
        ..WebhookOptions::default()
    });
    assert!(receiver.url().starts_with("https://127.0.0.1:"));
    let ca = std::fs::read(&receiver.ca().unwrap().ca_pem).unwrap();
    let client = Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let secret = receiver.secrets()[0].clone();
    let r = post_signed(&client, &receiver.url(), &secret, "evt_tls", "{}");
    assert_eq!(r.status(), 204);
    assert!(receiver.received()[0].verified);
    // Without the CA the certificate is not trusted.
    let untrusted = client_without_the_ca()
        .post(receiver.url())
        .body("{}")
        .send();
    assert!(untrusted.is_err());
}

fn client_without_the_ca() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

#[test]
fn webhook_wait_for_fails_with_what_arrived() {
    let receiver = WebhookReceiver::start();
    client().post(receiver.url()).body("{}").send().unwrap();
    let waited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        receiver.wait_for(2, Duration::from_millis(200))
    }));
    let message = panic_text(waited.expect_err("one request is not two"));
    assert!(message.contains("timed out"), "{message}");
    assert!(message.contains("1 requests"), "{message}");
    assert!(message.contains("no webhook-id"), "{message}");
}

#[tokio::test]
async fn webhook_wait_for_async_lets_the_sender_run() {
    let receiver = WebhookReceiver::start();
    let url = receiver.url();
    // The sender runs on the test's own runtime, which the wait must not block.
    let sender = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for i in 0..3 {
            client
                .post(&url)
                .header("webhook-id", format!("evt_{i}"))
                .body("{}")
                .send()
                .await
                .unwrap();
        }
    });
    let received: Vec<Received> = receiver.wait_for_async(3, Duration::from_secs(5)).await;
    sender.await.unwrap();
    assert_eq!(received.len(), 3);
    assert_eq!(receiver.unique_ids(), ["evt_0", "evt_1", "evt_2"]);
}

fn panic_text(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}
