use std::sync::Arc;

use super::*;
use crate::parse::ParsedFields;
use crate::store::{Event, Location, MessageMeta};

const ID: &str = "evt_00112233445566778899aabbccddeeff";
const BUCKET: &str = "mailsluice-raw";
const URL: &str = "http://127.0.0.1:9898/api/messages/7/raw";

fn meta(size: u64, text: Option<String>) -> MessageMeta {
    MessageMeta {
        id: 7,
        source: "support".into(),
        location: Location::Imap {
            folder: "INBOX".into(),
            uidvalidity: 1,
            uid: 12,
        },
        sha256: "ab".repeat(32),
        size,
        internal_date: None,
        stored_at: "2025-03-01T10:00:00Z".into(),
        parsed: Some(ParsedFields {
            subject: Some("Hi".into()),
            text_body: text,
            ..ParsedFields::default()
        }),
        parse_error: None,
    }
}

fn message(raw: Option<Vec<u8>>, text: Option<String>) -> Delivery {
    let size = raw.as_ref().map_or(100, |r| r.len() as u64);
    Delivery {
        event: Event {
            seq: 42,
            id: ID.into(),
            kind: EventKind::MessageStored,
            source: "support".into(),
            timestamp: "2025-03-01T10:00:00Z".into(),
            message: Some(7),
            state: None,
        },
        message: Some(meta(size, text)),
        raw: raw.map(Arc::new),
        inline: false,
        raw_url: Some("http://127.0.0.1:9898/api/messages/7/raw".into()),
        prebuilt: None,
    }
}

fn state_change() -> Delivery {
    Delivery::state_change_for_test(43, ID)
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap()
}

#[test]
fn valid_source_names_are_their_own_subject_token() {
    for name in ["support", "sales-eu", "team_2", "a", "0x"] {
        assert_eq!(subject_token(name), name);
    }
    assert_eq!(
        subject_for("mailsluice.msg.{source}", "sales-eu"),
        "mailsluice.msg.sales-eu"
    );
    assert_eq!(
        subject_for("mailsluice.{source}.mail", "x"),
        "mailsluice.x.mail"
    );
}

#[test]
fn other_characters_are_escaped_deterministically_and_without_collisions() {
    assert_eq!(subject_token("a.b"), "a~2eb");
    assert_eq!(subject_token("a b>*"), "a~20b~3e~2a");
    assert_eq!(subject_token("Zoë"), "Zo~c3~ab");
    assert_eq!(subject_token(""), "~");
    // `~` itself is escaped, so an escaped name never equals a name spelled that way.
    assert_eq!(subject_token("a~2eb"), "a~7e2eb");
    assert_ne!(subject_token("a.b"), subject_token("a~2eb"));
    assert_eq!(subject_token("~"), "~7e");
    assert_ne!(subject_token(""), subject_token("~"));
    // Never a character that would split or widen the subject.
    for name in ["a.b", "x y", "*", ">", "tab\there", "Zoë"] {
        let token = subject_token(name);
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~')),
            "{name:?} -> {token:?}"
        );
    }
}

#[test]
fn subject_patterns_and_stream_filters() {
    assert_eq!(
        subject_pattern("mailsluice.msg.{source}"),
        "mailsluice.msg.*"
    );
    assert_eq!(
        subject_pattern("mailsluice.in-{source}.x"),
        "mailsluice.*.x"
    );
    assert_eq!(subject_pattern("mailsluice.all"), "mailsluice.all");

    let p = "mailsluice.msg.*";
    assert!(covers("mailsluice.>", p));
    assert!(covers(">", p));
    assert!(covers("mailsluice.msg.>", p));
    assert!(covers("mailsluice.msg.*", p));
    assert!(covers("mailsluice.*.*", p));
    assert!(!covers("mailsluice.msg.support", p), "one source only");
    assert!(!covers("mailsluice.*", p), "too short");
    assert!(!covers("mailsluice.msg.*.x", p), "too long");
    assert!(!covers("other.>", p));
    assert!(!covers("mailsluice.msg", p));
    assert!(covers("mailsluice.all", "mailsluice.all"));
    assert!(
        !covers("mailsluice.all.>", "mailsluice.all"),
        "> needs a token"
    );
}

#[test]
fn an_unfit_stream_is_named_with_the_settings() {
    let ours = stream::Config {
        name: "MAILSLUICE".into(),
        subjects: vec!["orders.>".into(), "mailsluice.msg.support".into()],
        ..Default::default()
    };
    let problem = unfit(&ours, "mailsluice.msg.*", "stream").unwrap();
    assert!(
        problem.contains(r#"["orders.>", "mailsluice.msg.support"]"#),
        "{problem}"
    );
    assert!(problem.contains("sinks.stream.subject"), "{problem}");
    assert!(problem.contains("sinks.stream.stream"), "{problem}");

    let fine = stream::Config {
        subjects: vec!["orders.>".into(), "mailsluice.>".into()],
        ..ours.clone()
    };
    assert_eq!(unfit(&fine, "mailsluice.msg.*", "stream"), None);
    let sealed = stream::Config {
        sealed: true,
        ..fine.clone()
    };
    assert!(
        unfit(&sealed, "mailsluice.msg.*", "s")
            .unwrap()
            .contains("sealed")
    );
    let no_ack = stream::Config {
        no_ack: true,
        ..fine.clone()
    };
    assert!(
        unfit(&no_ack, "mailsluice.msg.*", "s")
            .unwrap()
            .contains("no_ack")
    );
    let mirror = stream::Config {
        mirror: Some(stream::Source {
            name: "ELSEWHERE".into(),
            ..Default::default()
        }),
        ..fine
    };
    assert!(
        unfit(&mirror, "mailsluice.msg.*", "s")
            .unwrap()
            .contains("mirror")
    );
}

#[test]
fn size_arithmetic() {
    assert_eq!(
        header_block_len(ID),
        format!("NATS/1.0\r\nNats-Msg-Id: {ID}\r\n\r\n").len()
    );
    for (n, len) in [(0, 0), (1, 4), (2, 4), (3, 4), (4, 8), (300, 400)] {
        assert_eq!(base64_len(n), len, "{n}");
        use base64::Engine;
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .encode(vec![0u8; n])
                .len(),
            len
        );
    }
    assert_eq!(chunk_size(64 * 1024), 63 * 1024);
    assert_eq!(chunk_size(1024 * 1024), 1023 * 1024);
    assert_eq!(chunk_size(64 * 1024 * 1024), 1024 * 1024);
    assert_eq!(chunk_size(100), 1024);
    assert_eq!(command_capacity(4), 64);
    assert_eq!(command_capacity(256), 1024);
    assert_eq!(raw_url("http://h:1", 7), "http://h:1/api/messages/7/raw");
}

#[test]
fn raw_bytes_go_inline_while_the_envelope_fits() {
    let d = message(Some(vec![b'x'; 3000]), None);
    let inline = d.envelope(Raw::Base64(d.raw.as_deref().unwrap())).unwrap();
    let exact = inline.len() + header_block_len(ID);

    let out = outgoing(&d, BUCKET, URL, exact).unwrap();
    assert!(!out.object);
    assert_eq!(out.body, inline);
    assert_eq!(
        json(&out.body)["data"]["raw_base64"]
            .as_str()
            .unwrap()
            .len(),
        4000
    );

    // One byte less and the raw bytes move to the object store.
    let out = outgoing(&d, BUCKET, URL, exact - 1).unwrap();
    assert!(out.object);
    let v = json(&out.body);
    assert_eq!(v["data"]["raw_object"]["bucket"], BUCKET);
    assert_eq!(v["data"]["raw_object"]["name"], ID);
    assert!(v["data"].get("raw_base64").is_none());
    assert!(out.body.len() + header_block_len(ID) < exact);
}

#[test]
fn a_message_far_over_max_payload_goes_to_the_object_store() {
    let d = message(Some(vec![7u8; 200 * 1024]), None);
    let out = outgoing(&d, BUCKET, URL, 64 * 1024).unwrap();
    assert!(out.object);
    assert!(out.body.len() < 1024, "{}", out.body.len());
}

#[test]
fn without_raw_bytes_at_hand_the_envelope_carries_the_url() {
    let d = message(None, None);
    let out = outgoing(&d, BUCKET, URL, 1024 * 1024).unwrap();
    assert!(!out.object);
    assert_eq!(json(&out.body)["data"]["raw_url"], URL);

    let out = outgoing(&state_change(), BUCKET, "", 1024 * 1024).unwrap();
    assert!(!out.object);
    assert_eq!(json(&out.body)["data"]["to"], "degraded");
}

#[test]
fn an_envelope_too_large_in_any_form_fails_permanently_naming_the_sizes() {
    let body = "y".repeat(70 * 1024);
    for raw in [Some(vec![1u8; 10]), Some(vec![1u8; 100 * 1024]), None] {
        let d = message(raw, Some(body.clone()));
        let e = outgoing(&d, BUCKET, URL, 64 * 1024).unwrap_err();
        assert!(e.permanent);
        assert_eq!(e.kind, "nats");
        assert!(e.detail.contains(ID), "{}", e.detail);
        assert!(
            e.detail.contains("max_payload of 65536 bytes"),
            "{}",
            e.detail
        );
        assert!(e.detail.contains("without the raw bytes"), "{}", e.detail);
        assert!(e.detail.contains("sinks retry"), "{}", e.detail);
    }
    // The same event fits a larger server inline.
    let d = message(Some(vec![1u8; 10]), Some(body));
    assert!(!outgoing(&d, BUCKET, URL, 1024 * 1024).unwrap().object);
}

#[test]
fn a_missing_message_is_a_build_failure() {
    let mut d = message(None, None);
    d.message = None;
    let e = outgoing(&d, BUCKET, URL, 1024 * 1024).unwrap_err();
    assert!(e.permanent);
    assert_eq!(e.kind, "build");
}

fn nats_sink(auth: NatsAuth) -> SinkSettings {
    use crate::config::{SinkDelivery, SinkEvent, SourceFilter};
    SinkSettings {
        name: "stream".into(),
        target: SinkTarget::Nats(NatsSink {
            servers: vec!["nats://127.0.0.1:1".into()],
            stream: "MAILSLUICE".into(),
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
            timeout: Duration::from_secs(2),
            concurrency: 4,
            max_age: Duration::from_secs(86400),
            max_backoff: Duration::from_secs(300),
        },
    }
}

fn node_tls() -> TlsSettings {
    TlsSettings {
        min_version: crate::config::TlsVersion::V1_2,
        extra_ca_file: None,
        backend: crate::config::TlsBackend::Rustls,
    }
}

#[test]
fn credentials_never_show_in_debug_output() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token-value\n").unwrap();
    let options = with_auth(
        ConnectOptions::new(),
        "stream",
        &NatsAuth::Token(SecretRef::File(token_file)),
    )
    .unwrap();
    let printed = format!("{options:?}");
    assert!(!printed.contains("s3cret"), "{printed}");

    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "hunter2-password").unwrap();
    let options = with_auth(
        ConnectOptions::new(),
        "stream",
        &NatsAuth::UserPassword {
            user: "mailsluice".into(),
            password: SecretRef::File(password_file),
        },
    )
    .unwrap();
    assert!(!format!("{options:?}").contains("hunter2"));
}

#[test]
fn unreadable_credentials_are_named_by_key_never_by_value() {
    let e = with_auth(
        ConnectOptions::new(),
        "stream",
        &NatsAuth::Token(SecretRef::Env("MAILSLUICE_TEST_NATS_TOKEN_UNSET".into())),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "sinks.stream.token_env: environment variable MAILSLUICE_TEST_NATS_TOKEN_UNSET is not \
         set; export it before starting mailsluice"
    );
    assert_eq!(e.kind(), "config");

    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("nats.creds");
    std::fs::write(
        &creds,
        "SUAIO3FHUX5PNV2LQIIP7TZ3N4L7TX3W53MQ not a creds file\n",
    )
    .unwrap();
    let e = with_auth(
        ConnectOptions::new(),
        "stream",
        &NatsAuth::CredsFile(creds.clone()),
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(text.starts_with("sinks.stream.creds_file "), "{text}");
    assert!(text.contains("not a NATS credentials file"), "{text}");
    assert!(!text.contains("SUAIO3"), "{text}");
    assert!(!format!("{e:?}").contains("SUAIO3"));

    let e = with_auth(
        ConnectOptions::new(),
        "stream",
        &NatsAuth::CredsFile(dir.path().join("missing.creds")),
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn the_sinks_ca_file_is_checked_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nats-ca.pem");
    let e = tls_config("stream", &node_tls(), Some(&missing)).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(&format!("sinks.stream.tls_ca_file {}: ", missing.display())),
        "{e}"
    );
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not pem\n").unwrap();
    let e = tls_config("stream", &node_tls(), Some(&empty)).unwrap_err();
    assert!(e.to_string().ends_with(": no PEM certificate found"), "{e}");

    let ca = rcgen::generate_simple_self_signed(vec!["nats.example".into()]).unwrap();
    let good = dir.path().join("ca.pem");
    std::fs::write(&good, ca.cert.pem()).unwrap();
    tls_config("stream", &node_tls(), Some(&good)).unwrap();

    let mut tls = node_tls();
    tls.extra_ca_file = Some(missing);
    let e = tls_config("stream", &tls, None).unwrap_err();
    assert!(e.to_string().contains("tls.extra_ca_file"), "{e}");
}

#[tokio::test]
async fn settings_of_another_kind_or_a_bad_address_are_refused_before_connecting() {
    let mut webhook = nats_sink(NatsAuth::None);
    webhook.target = SinkTarget::Webhook(crate::config::WebhookSink {
        url: "https://example.com/hook".into(),
        secret: SecretRef::Env("X".into()),
        allow_private_addresses: false,
    });
    let e = NatsTransport::connect(&webhook, &node_tls(), "http://127.0.0.1:1")
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "sinks.stream: kind = \"webhook\" is not a NATS sink"
    );

    let mut bad = nats_sink(NatsAuth::None);
    if let SinkTarget::Nats(n) = &mut bad.target {
        n.servers = vec!["http://127.0.0.1:4222".into()];
    }
    let e = NatsTransport::connect(&bad, &node_tls(), "http://127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("sinks.stream.servers: \"http://127.0.0.1:4222\" is not a NATS server"),
        "{e}"
    );
    assert_eq!(e.kind(), "config");
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error_naming_the_servers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sink = nats_sink(NatsAuth::None);
    if let SinkTarget::Nats(n) = &mut sink.target {
        n.servers = vec![format!("nats://127.0.0.1:{port}")];
    }
    let e = NatsTransport::connect(&sink, &node_tls(), "http://127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "sinks.stream: cannot connect to NATS at nats://127.0.0.1:{port}: "
        )),
        "{e}"
    );
    assert_eq!(e.kind(), "connect");
}
