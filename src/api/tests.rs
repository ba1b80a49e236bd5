//! The whole application (access rules, limits, routes) against a node with a real store
//! and supervisor: every test names the attack it stops.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::test::{TestRequest, call_service, init_service, read_body};

use super::access::{API_ROUTES, Access};
use super::credentials::{Credentials, read_token_file};
use super::{ApiState, app};
use crate::actors::supervisor::Supervisor;
use crate::auth::TokenService;
use crate::config::Role;
use crate::config::live::Live;
use crate::net::Connector;
use crate::store::Store;

const LISTEN: &str = "127.0.0.1:9898";
const HOST: &str = "127.0.0.1:9898";

struct Node {
    dir: tempfile::TempDir,
    admin: String,
    state: ApiState,
    access: Arc<Access>,
    /// The configuration text, for reloads.
    text: String,
}

/// Tokens of the clients every test node has, by role.
const READER: &str = "reader-token-0123456789";
const MAILER: &str = "mailer-token-0123456789";

fn node(extra: &str) -> Node {
    node_with(extra, "")
}

/// A node with `extra` in `[node]` and `sections` after the usual ones; `{dir}` in
/// `sections` is the node's directory, which holds `hook.whsec` (with [`HOOK_SECRET`]) for
/// sinks to sign with.
fn node_with(extra: &str, sections: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("reader.token"), READER).unwrap();
    std::fs::write(d.join("mailer.token"), MAILER).unwrap();
    std::fs::write(d.join("hook.whsec"), HOOK_SECRET).unwrap();
    let sections = sections.replace("{dir}", &d.display().to_string());
    let text = format!(
        "[node]\ndata_dir = \"{data}\"\nsecret_key_file = \"{data}/secret.key\"\n\
         http_listen = \"{LISTEN}\"\n{extra}\n\
         [api_clients.grafana]\nrole = \"read\"\ntoken_file = \"{reader}\"\n\
         [api_clients.archive]\nrole = \"mail\"\ntoken_file = \"{mailer}\"\n\
         [sources.down]\nprotocol = \"imap\"\nhost = \"127.0.0.1\"\nport = 1\n\
         username = \"u\"\nauth = \"password\"\npassword_file = \"{reader}\"\nenabled = false\n\
         {sections}",
        data = d.join("data").display(),
        reader = d.join("reader.token").display(),
        mailer = d.join("mailer.token").display(),
    );
    let settings = Arc::new(crate::config::load_str(&text, &Default::default()).unwrap());
    let store =
        Arc::new(Store::open(&settings.node.data_dir, &settings.node.secret_key_file).unwrap());
    let connector = Connector::new(
        &settings.tls,
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(2),
    )
    .unwrap();
    let credentials = Credentials::load(&settings, true).unwrap();
    let admin = read_token_file(&settings.node.api_token_file, "k").unwrap();
    let live = Live::new(settings.clone(), connector, Some(d.join("none.toml")));
    let tokens = Arc::new(TokenService::new(settings.clone(), store.clone()).unwrap());
    let (_, handle) = Supervisor::new(live.clone(), store.clone(), tokens).start_with_handle();
    let metrics = crate::telemetry::install().unwrap();
    let state = ApiState::new(live.clone(), store, metrics, handle);
    let listen: SocketAddr = LISTEN.parse().unwrap();
    let access = Arc::new(Access::new(live, credentials, listen, false));
    Node {
        dir,
        admin,
        state,
        access,
        text,
    }
}

fn peer(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], 40000))
}

/// A request as a well-behaved local client sends it.
fn request(method: &str, path: &str, token: Option<&str>) -> TestRequest {
    let mut r = match method {
        "POST" => TestRequest::post()
            .insert_header(("Content-Type", "application/json"))
            .set_payload("{}"),
        _ => TestRequest::get(),
    }
    .uri(path)
    .insert_header(("Host", HOST))
    .peer_addr(peer(1));
    if let Some(t) = token {
        r = r.insert_header(("Authorization", format!("Bearer {t}")));
    }
    r
}

fn concrete(pattern: &str) -> String {
    pattern
        .replace("{id}", "1")
        .replace("{source}", "down")
        .replace("{sink}", "hook")
}

macro_rules! service {
    ($node:expr) => {
        init_service(app($node.state.clone(), $node.access.clone())).await
    };
}

#[actix_rt::test]
async fn every_api_route_refuses_a_missing_or_wrong_token() {
    let n = node("");
    let svc = service!(n);
    for (method, pattern, _) in API_ROUTES {
        let path = concrete(pattern);
        for token in [None, Some("wrong"), Some("")] {
            // Each attempt from its own peer: the failure limit is tested on its own.
            let req = request(method, &path, token)
                .peer_addr(peer(2))
                .to_request();
            let res = call_service(&svc, req).await;
            assert_eq!(
                res.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} {token:?}"
            );
            let challenge = res.headers().get("WWW-Authenticate").unwrap();
            assert!(challenge.to_str().unwrap().starts_with("Bearer"));
            assert_eq!(res.headers().get("Cache-Control").unwrap(), "no-store");
            // Let the peer's allowance come back between routes.
            n.access_reset();
        }
    }
    // A path under /api/ nobody routes is closed too, not an open 404.
    let res = call_service(&svc, request("GET", "/api/nothing", None).to_request()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

impl Node {
    fn access_reset(&self) {
        self.access.reset_failures();
    }
}

#[actix_rt::test]
async fn a_role_that_is_not_enough_is_refused_and_one_that_is_gets_in() {
    let n = node("");
    let svc = service!(n);
    for (method, pattern, needed) in API_ROUTES {
        let path = concrete(pattern);
        for (token, role) in [
            (READER, Role::Read),
            (MAILER, Role::Mail),
            (n.admin.as_str(), Role::Admin),
        ] {
            let res = call_service(&svc, request(method, &path, Some(token)).to_request()).await;
            let code = res.status();
            if role < *needed {
                assert_eq!(code, StatusCode::FORBIDDEN, "{role:?} {method} {path}");
                let body = read_body(res).await;
                let text = String::from_utf8_lossy(&body);
                assert!(text.contains(needed.as_str()), "{text}");
            } else {
                assert!(
                    code != StatusCode::FORBIDDEN && code != StatusCode::UNAUTHORIZED,
                    "{role:?} {method} {path}: {code}"
                );
            }
        }
    }
}

#[actix_rt::test]
async fn a_forged_host_is_refused_even_with_a_good_token() {
    let n = node("");
    let svc = service!(n);
    for host in ["evil.example:9898", "evil.example", "127.0.0.1.nip.io:9898"] {
        for path in ["/api/messages?limit=2", "/metrics", "/healthz"] {
            let req = request("GET", path, Some(&n.admin))
                .insert_header(("Host", host))
                .to_request();
            let res = call_service(&svc, req).await;
            assert_eq!(res.status(), StatusCode::FORBIDDEN, "{host} {path}");
        }
    }
    let req = request("GET", "/api/sources", Some(&n.admin))
        .insert_header(("Host", "localhost:9898"))
        .to_request();
    assert_eq!(call_service(&svc, req).await.status(), StatusCode::OK);
}

#[actix_rt::test]
async fn a_cross_site_browser_request_is_refused() {
    let n = node("");
    let svc = service!(n);
    for (header, value) in [
        ("Origin", "http://evil.example"),
        ("Origin", "null"),
        ("Origin", "http://127.0.0.1:9899"),
        ("Sec-Fetch-Site", "cross-site"),
        ("Sec-Fetch-Site", "same-site"),
    ] {
        let req = request("POST", "/api/reload", Some(&n.admin))
            .insert_header((header, value))
            .to_request();
        let res = call_service(&svc, req).await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN, "{header}: {value}");
    }
    // The node's own origin (a page it serves) is not cross-site.
    let req = request("GET", "/api/sources", Some(&n.admin))
        .insert_header(("Origin", "http://127.0.0.1:9898"))
        .insert_header(("Sec-Fetch-Site", "same-origin"))
        .to_request();
    assert_eq!(call_service(&svc, req).await.status(), StatusCode::OK);
}

#[actix_rt::test]
async fn a_form_post_is_refused_before_any_handler() {
    let n = node("");
    let svc = service!(n);
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let req = TestRequest::post()
            .uri("/api/tokens/down/import")
            .insert_header(("Host", HOST))
            .insert_header(("Authorization", format!("Bearer {}", n.admin)))
            .insert_header(("Content-Type", content_type))
            .set_payload("{\"refresh_token\":\"x\"}")
            .peer_addr(peer(1))
            .to_request();
        let res = call_service(&svc, req).await;
        assert_eq!(
            res.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type}"
        );
    }
    let req = TestRequest::post()
        .uri("/api/reload")
        .insert_header(("Host", HOST))
        .insert_header(("Authorization", format!("Bearer {}", n.admin)))
        .peer_addr(peer(1))
        .to_request();
    assert_eq!(
        call_service(&svc, req).await.status(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "no Content-Type at all"
    );
}

#[actix_rt::test]
async fn a_large_body_is_refused_unread() {
    let n = node("");
    let svc = service!(n);
    let big = format!(
        "{{\"refresh_token\":\"{}\"}}",
        "a".repeat(super::MAX_BODY_BYTES)
    );
    let req = request("POST", "/api/tokens/down/import", Some(&n.admin))
        .set_payload(big)
        .to_request();
    assert_eq!(
        call_service(&svc, req).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

#[actix_rt::test]
async fn guessing_tokens_is_slowed_per_peer() {
    let n = node("");
    let svc = service!(n);
    for i in 0..10 {
        let req = request("GET", "/api/sources", Some(&format!("guess-{i}"))).to_request();
        assert_eq!(
            call_service(&svc, req).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    // The eleventh is not even checked, right or wrong.
    for token in ["guess-10", n.admin.as_str()] {
        let res = call_service(
            &svc,
            request("GET", "/api/sources", Some(token)).to_request(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = res
            .headers()
            .get("Retry-After")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=6).contains(&retry), "{retry}");
    }
    // Another address is not held back.
    let req = request("GET", "/api/sources", Some(&n.admin))
        .peer_addr(peer(3))
        .to_request();
    assert_eq!(call_service(&svc, req).await.status(), StatusCode::OK);
}

#[actix_rt::test]
async fn every_answer_says_what_it_is_and_api_answers_are_not_cached() {
    let n = node("");
    let svc = service!(n);
    for (path, api) in [
        ("/healthz", false),
        ("/readyz", false),
        ("/metrics", false),
        ("/api/sources", true),
        ("/api/messages", true),
        ("/api/messages/7", true),
        ("/nothing", false),
    ] {
        let res = call_service(&svc, request("GET", path, Some(&n.admin)).to_request()).await;
        let h = res.headers();
        assert_eq!(
            h.get("X-Content-Type-Options").unwrap(),
            "nosniff",
            "{path}"
        );
        assert!(h.contains_key("Content-Type"), "{path}");
        assert_eq!(h.contains_key("Cache-Control"), api, "{path}");
    }
}

#[actix_rt::test]
async fn metrics_need_the_metrics_token_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.token");
    std::fs::write(&file, "scrape-0123456789").unwrap();
    let n = node(&format!("metrics_token_file = \"{}\"", file.display()));
    let svc = service!(n);
    let res = call_service(&svc, request("GET", "/metrics", None).to_request()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = call_service(&svc, request("GET", "/metrics", Some("nope")).to_request()).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    for token in ["scrape-0123456789", READER] {
        let res = call_service(&svc, request("GET", "/metrics", Some(token)).to_request()).await;
        assert_eq!(res.status(), StatusCode::OK, "{token}");
    }
    // Health stays open for load balancers.
    let res = call_service(&svc, request("GET", "/healthz", None).to_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
}

#[actix_rt::test]
async fn a_test_login_flood_runs_one_login_and_turns_the_rest_away() {
    let n = node("");
    let svc = service!(n);
    let first = call_service(
        &svc,
        request("POST", "/api/sources/down/test-login", Some(&n.admin)).to_request(),
    )
    .await;
    // The login itself fails (nothing listens on port 1), but it ran.
    assert_eq!(first.status(), StatusCode::UNPROCESSABLE_ENTITY);
    for _ in 0..5 {
        let res = call_service(
            &svc,
            request("POST", "/api/sources/down/test-login", Some(&n.admin)).to_request(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(res.headers().contains_key("Retry-After"));
    }
    let res = call_service(
        &svc,
        request("POST", "/api/sources/nope/test-login", Some(&n.admin)).to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

#[actix_rt::test]
async fn api_tokens_never_show_in_answers_or_logs_of_a_refusal() {
    let n = node("");
    let svc = service!(n);
    let res = call_service(
        &svc,
        request("GET", "/api/sources", Some("secret-guess-abcdef")).to_request(),
    )
    .await;
    let body = read_body(res).await;
    assert!(!String::from_utf8_lossy(&body).contains("secret-guess-abcdef"));
    let res = call_service(
        &svc,
        request("GET", "/api/tokens", Some(READER)).to_request(),
    )
    .await;
    let body = read_body(res).await;
    let text = String::from_utf8_lossy(&body);
    assert!(!text.contains(READER) && !text.contains(&n.admin), "{text}");
}

#[actix_rt::test]
async fn raw_bodies_stream_whole_and_pages_move_on_by_id() {
    let n = node("");
    let svc = service!(n);
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    big.resize(3 * 1024 * 1024 + 5, b'z');
    let mut ids = Vec::new();
    for uid in 1..=3u32 {
        let raw = if uid == 2 {
            big.clone()
        } else {
            format!("Subject: {uid}\r\n\r\nx\r\n").into_bytes()
        };
        let outcome = n
            .state
            .store
            .store(crate::store::NewMessage {
                source: "down".into(),
                location: crate::store::Location::Imap {
                    folder: "INBOX".into(),
                    uidvalidity: 1,
                    uid,
                },
                parsed: crate::parse::parse(&raw),
                raw,
                internal_date: None,
                post_action: false,
                rematch: false,
            })
            .unwrap();
        let crate::store::StoreOutcome::Stored(id) = outcome else {
            panic!()
        };
        ids.push(id);
    }
    let res = call_service(
        &svc,
        request(
            "GET",
            &format!("/api/messages/{}/raw", ids[1]),
            Some(MAILER),
        )
        .to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers().get("Content-Type").unwrap(), "message/rfc822");
    assert_eq!(read_body(res).await, big);
    let res = call_service(
        &svc,
        request("GET", "/api/messages/424242/raw", Some(MAILER)).to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);

    let mut seen = Vec::new();
    let mut after: Option<u64> = None;
    loop {
        let path = match after {
            Some(a) => format!("/api/messages?limit=2&after={a}"),
            None => "/api/messages?limit=2".into(),
        };
        let res = call_service(&svc, request("GET", &path, Some(MAILER)).to_request()).await;
        let page: Vec<serde_json::Value> = serde_json::from_slice(&read_body(res).await).unwrap();
        if page.is_empty() {
            break;
        }
        seen.extend(page.iter().map(|m| m["id"].as_u64().unwrap()));
        after = seen.last().copied();
    }
    assert_eq!(seen, ids);
    let res = call_service(
        &svc,
        request(
            "GET",
            &format!("/api/messages?after={}", u64::MAX),
            Some(MAILER),
        )
        .to_request(),
    )
    .await;
    assert_eq!(read_body(res).await, "[]");
}

#[actix_rt::test]
async fn an_encoded_path_is_no_way_around_the_token() {
    let n = node("");
    let svc = service!(n);
    for path in [
        "/%61pi/sources",
        "/api%2Fsources",
        "/%2561pi/sources",
        "/api/%73ources",
        "/api/messages/%31",
        "/%61%70%69/messages",
    ] {
        let res = call_service(&svc, request("GET", path, None).to_request()).await;
        assert!(!res.status().is_success(), "{path}: {}", res.status());
        let res = call_service(&svc, request("GET", path, Some(READER)).to_request()).await;
        assert!(
            res.status() != StatusCode::OK || !path.contains("messages"),
            "{path}: a read token got mail"
        );
        n.access_reset();
    }
}

#[actix_rt::test]
async fn a_rotated_token_takes_effect_with_a_reload_and_the_old_one_stops() {
    let n = node("");
    let svc = service!(n);
    let get = |token: &'static str| request("GET", "/api/sources", Some(token)).to_request();
    assert_eq!(
        call_service(&svc, get(READER)).await.status(),
        StatusCode::OK
    );
    std::fs::write(n.dir.path().join("reader.token"), "rotated-reader-token-42").unwrap();
    // Before the reload the node still knows the old token only.
    assert_eq!(
        call_service(&svc, get(READER)).await.status(),
        StatusCode::OK
    );
    let settings = crate::config::load_str(&n.text, &Default::default()).unwrap();
    let current = n.state.live.get();
    n.state.live.set(crate::config::live::Current {
        settings: Arc::new(settings),
        connector: current.connector,
    });
    assert_eq!(
        call_service(&svc, get(READER)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call_service(&svc, get("rotated-reader-token-42"))
            .await
            .status(),
        StatusCode::OK
    );
}

// --- /api/events and /api/sinks ---

/// Stores one message per uid of source `down` (not flushed): their store ids.
fn store_messages(store: &Store, uids: std::ops::RangeInclusive<u32>) -> Vec<u64> {
    uids.map(|uid| {
        let raw = format!("Subject: {uid}\r\n\r\nx\r\n").into_bytes();
        let outcome = store
            .store(crate::store::NewMessage {
                source: "down".into(),
                location: crate::store::Location::Imap {
                    folder: "INBOX".into(),
                    uidvalidity: 1,
                    uid,
                },
                parsed: crate::parse::parse(&raw),
                raw,
                internal_date: None,
                post_action: false,
                rematch: false,
            })
            .unwrap();
        match outcome {
            crate::store::StoreOutcome::Stored(id) => id,
            other => panic!("{other:?}"),
        }
    })
    .collect()
}

async fn json_of<B: actix_web::body::MessageBody>(
    res: actix_web::dev::ServiceResponse<B>,
) -> serde_json::Value {
    serde_json::from_slice(&read_body(res).await).unwrap()
}

fn seqs_of(page: &serde_json::Value) -> Vec<u64> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

/// Polls `fut` (without completing it: it must not answer yet) until `ready` holds.
async fn until_waiting<F: std::future::Future>(
    fut: &mut std::pin::Pin<Box<F>>,
    ready: impl Fn() -> bool,
) {
    use futures_util::FutureExt;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert!(
            fut.as_mut().now_or_never().is_none(),
            "answered before anything was flushed"
        );
        if ready() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the request never came to wait"
        );
        actix_rt::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

#[actix_rt::test]
async fn events_come_in_pages_in_seq_order_with_where_to_fetch_each_message() {
    let n = node("");
    let svc = service!(n);
    let store = n.state.store.clone();
    let ids = store_messages(&store, 1..=3);
    // Written but not durable: nothing to hand out yet.
    let res = call_service(
        &svc,
        request("GET", "/api/events", Some(MAILER)).to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = json_of(res).await;
    assert_eq!(seqs_of(&page), Vec::<u64>::new());
    assert_eq!(
        (page["next_after"].as_u64(), page["last_seq"].as_u64()),
        (Some(0), Some(0))
    );
    store.flush().await.unwrap();
    store
        .append_state_event("down", "healthy", "degraded", Some("connection refused"))
        .await
        .unwrap();

    let res = call_service(
        &svc,
        request("GET", "/api/events?after=0&limit=2", Some(MAILER)).to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = json_of(res).await;
    assert_eq!(seqs_of(&page), [1, 2]);
    assert_eq!(page["next_after"], 2);
    assert_eq!(page["oldest_retained"], 1);
    assert_eq!(page["last_seq"], 4);
    let first = &page["events"][0];
    assert_eq!(first["type"], "message.stored");
    assert_eq!(first["source"], "down");
    assert_eq!(first["message"], ids[0]);
    assert_eq!(first["message_url"], format!("/api/messages/{}", ids[0]));
    assert_eq!(first["raw_url"], format!("/api/messages/{}/raw", ids[0]));
    assert_eq!(first["id"], store.event(1).unwrap().unwrap().id);
    assert!(first.get("text").is_none() && first.get("raw_base64").is_none());

    let res = call_service(
        &svc,
        request("GET", "/api/events?after=2", Some(MAILER)).to_request(),
    )
    .await;
    let page = json_of(res).await;
    assert_eq!(seqs_of(&page), [3, 4]);
    let change = &page["events"][1];
    assert_eq!(change["type"], "source.state_changed");
    assert_eq!(change["state"]["to"], "degraded");
    assert_eq!(change["state"]["reason"], "connection refused");
    assert!(change.get("raw_url").is_none());

    let res = call_service(
        &svc,
        request("GET", "/api/events?after=4", Some(MAILER)).to_request(),
    )
    .await;
    let page = json_of(res).await;
    assert_eq!(seqs_of(&page), Vec::<u64>::new());
    assert_eq!(page["next_after"], 4);

    // A page never comes out empty while events remain, and parameters are checked.
    let res = call_service(
        &svc,
        request("GET", "/api/events?limit=0", Some(MAILER)).to_request(),
    )
    .await;
    assert_eq!(seqs_of(&json_of(res).await), [1]);
    for bad in ["after=-1", "after=x", "limit=many", "wait_secs=1.5"] {
        let res = call_service(
            &svc,
            request("GET", &format!("/api/events?{bad}"), Some(MAILER)).to_request(),
        )
        .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    // Events name mail: a read token does not get them.
    let res = call_service(
        &svc,
        request("GET", "/api/events", Some(READER)).to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[actix_rt::test]
async fn a_long_poll_answers_once_an_event_is_flushed_and_not_before() {
    let n = node("");
    let svc = service!(n);
    let store = n.state.store.clone();
    let polls = n.state.long_polls.clone();
    let started = std::time::Instant::now();
    let mut poll = Box::pin(call_service(
        &svc,
        request("GET", "/api/events?after=0&wait_secs=30", Some(MAILER)).to_request(),
    ));
    until_waiting(&mut poll, || polls.waiting() == 1).await;
    let ids = store_messages(&store, 1..=1);
    // Committed but not flushed: a crash could still take it back, so it is not handed out.
    until_waiting(&mut poll, || true).await;
    store.flush().await.unwrap();
    let res = tokio::time::timeout(std::time::Duration::from_secs(10), poll)
        .await
        .expect("the long poll answers once the event is durable");
    assert_eq!(res.status(), StatusCode::OK);
    let page = json_of(res).await;
    assert_eq!(seqs_of(&page), [1]);
    assert_eq!(page["events"][0]["message"], ids[0]);
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(polls.waiting(), 0);
}

#[actix_rt::test]
async fn a_long_poll_without_events_answers_empty_when_its_time_is_up() {
    let n = node("");
    let svc = service!(n);
    let started = std::time::Instant::now();
    let res = call_service(
        &svc,
        request("GET", "/api/events?after=0&wait_secs=1", Some(MAILER)).to_request(),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(res.status(), StatusCode::OK);
    let page = json_of(res).await;
    assert_eq!(seqs_of(&page), Vec::<u64>::new());
    assert_eq!(page["next_after"], 0);
    assert!(
        waited >= std::time::Duration::from_secs(1) && waited < std::time::Duration::from_secs(10),
        "{waited:?}"
    );
}

#[actix_rt::test]
async fn long_polls_are_bounded_and_a_shutdown_ends_them() {
    let n = node("");
    let svc = service!(n);
    let store = n.state.store.clone();
    let polls = n.state.long_polls.clone();
    let max = super::limits::LONG_POLLS_MAX;
    let mut waiting: Vec<_> = (0..max)
        .map(|_| {
            Box::pin(call_service(
                &svc,
                request("GET", "/api/events?wait_secs=60", Some(MAILER)).to_request(),
            ))
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while polls.waiting() < max {
        for poll in &mut waiting {
            until_waiting(poll, || true).await;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} wait",
            polls.waiting()
        );
    }
    // One more is turned away at once; one that does not wait is still served.
    let res = call_service(
        &svc,
        request("GET", "/api/events?wait_secs=60", Some(MAILER)).to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers().get("Retry-After").unwrap(), "1");
    let res = call_service(
        &svc,
        request("GET", "/api/events", Some(MAILER)).to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    // An event wakes every one of them.
    store_messages(&store, 1..=1);
    store.flush().await.unwrap();
    let answers = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        futures_util::future::join_all(waiting),
    )
    .await
    .unwrap();
    for res in answers {
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(seqs_of(&json_of(res).await), [1]);
    }

    // The node shuts down: a waiting poll answers now, with nothing, and a new one does
    // not wait.
    let mut poll = Box::pin(call_service(
        &svc,
        request("GET", "/api/events?after=1&wait_secs=60", Some(MAILER)).to_request(),
    ));
    until_waiting(&mut poll, || polls.waiting() == 1).await;
    n.state.close();
    let res = tokio::time::timeout(std::time::Duration::from_secs(10), poll)
        .await
        .expect("closing ends the poll");
    let page = json_of(res).await;
    assert_eq!(seqs_of(&page), Vec::<u64>::new());
    assert_eq!(page["next_after"], 1);
    let started = std::time::Instant::now();
    let res = call_service(
        &svc,
        request("GET", "/api/events?after=1&wait_secs=60", Some(MAILER)).to_request(),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[actix_rt::test]
async fn a_cursor_behind_the_retained_events_is_told_so_and_one_from_elsewhere_too() {
    let n = node("");
    let svc = service!(n);
    let store = n.state.store.clone();
    store_messages(&store, 1..=3);
    store.flush().await.unwrap();
    let later = chrono::Utc::now() + chrono::Duration::hours(1);
    assert_eq!(store.prune_events(&[], later, 2).unwrap(), 2);
    let get = |after: u64| request("GET", &format!("/api/events?after={after}"), Some(MAILER));
    for after in [0, 1] {
        let res = call_service(&svc, get(after).to_request()).await;
        assert_eq!(res.status(), StatusCode::GONE, "after={after}");
        let body = json_of(res).await;
        assert_eq!(body["oldest_retained"], 3);
        assert_eq!(body["resume_after"], 2);
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("node.events_retention_secs"), "{error}");
        assert!(error.contains("after=2"), "{error}");
    }
    let res = call_service(&svc, get(2).to_request()).await;
    assert_eq!(seqs_of(&json_of(res).await), [3]);
    // A cursor this store never gave.
    let res = call_service(&svc, get(9).to_request()).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(json_of(res).await["last_seq"], 3);
    // Everything pruned: behind is still behind, up to date is still up to date.
    assert_eq!(store.prune_events(&[], later, 100).unwrap(), 1);
    let res = call_service(&svc, get(2).to_request()).await;
    assert_eq!(res.status(), StatusCode::GONE);
    let body = json_of(res).await;
    assert_eq!(
        (
            body["oldest_retained"].as_u64(),
            body["resume_after"].as_u64()
        ),
        (Some(4), Some(3))
    );
    let res = call_service(&svc, get(3).to_request()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let page = json_of(res).await;
    assert_eq!(seqs_of(&page), Vec::<u64>::new());
    assert!(page["oldest_retained"].is_null());
}

/// A secret in the format sinks take (a 24-byte key).
const HOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[actix_rt::test]
async fn sinks_show_their_state_backlog_and_failed_events_to_a_read_token() {
    let sinks = "[sinks.hook]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/hooks\"\n\
                 secret_file = \"{dir}/hook.whsec\"\n\n\
                 [sinks.changes]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:1/changes\"\n\
                 secret_file = \"{dir}/hook.whsec\"\nevents = [\"source.state_changed\"]\n";
    let n = node_with("", sinks);
    let svc = service!(n);
    let get = || request("GET", "/api/sinks", Some(READER)).to_request();
    let res = call_service(&svc, get()).await;
    assert_eq!(res.status(), StatusCode::OK);
    let rows = json_of(res).await;
    assert_eq!(rows.as_array().unwrap().len(), 2);
    for row in rows.as_array().unwrap() {
        assert_eq!(row["state"], "idle", "{row}");
        assert_eq!(row["backlog"], 0);
        assert!(row["oldest_pending"].is_null());
    }

    let store = n.state.store.clone();
    store_messages(&store, 1..=4);
    store.flush().await.unwrap();
    store.sink_delivered("hook", &[1]).await.unwrap();
    store
        .sink_failed(
            "hook",
            2,
            crate::store::FailedDelivery {
                attempts: 9,
                last_error: "HTTP 500 Internal Server Error".into(),
                failed_at: "2025-01-01T00:00:00Z".into(),
            },
        )
        .await
        .unwrap();
    let rows = json_of(call_service(&svc, get()).await).await;
    // Sorted by name: changes, hook.
    let (changes, hook) = (&rows[0], &rows[1]);
    assert_eq!(changes["name"], "changes");
    assert_eq!(hook["name"], "hook");
    assert_eq!(hook["kind"], "webhook");
    assert_eq!(hook["state"], "failing");
    assert_eq!(hook["delivered"], 1);
    assert_eq!(hook["failed"], 1);
    assert_eq!(hook["delivered_through"], 2);
    assert_eq!(hook["backlog"], 2);
    assert_eq!(hook["oldest_pending"]["seq"], 3);
    assert_eq!(
        hook["oldest_pending"]["id"],
        store.event(3).unwrap().unwrap().id
    );
    assert!(hook["oldest_pending"]["age_secs"].as_u64().unwrap() < 60);
    let failure = &hook["failures"][0];
    assert_eq!(failure["seq"], 2);
    assert_eq!(failure["id"], store.event(2).unwrap().unwrap().id);
    assert_eq!(failure["attempts"], 9);
    assert_eq!(failure["last_error"], "HTTP 500 Internal Server Error");
    assert_eq!(failure["failed_at"], "2025-01-01T00:00:00Z");
    // The other sink has not started: everything is its backlog, recent, so healthy.
    assert_eq!(changes["state"], "healthy");
    assert_eq!(changes["backlog"], 4);
    assert_eq!(changes["oldest_pending"]["seq"], 1);
    assert_eq!(changes["failures"], serde_json::json!([]));
    // The signing secret is nowhere in the answer.
    assert!(!rows.to_string().contains("MfKQ9r8G"));
}
