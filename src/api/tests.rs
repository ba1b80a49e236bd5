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
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("reader.token"), READER).unwrap();
    std::fs::write(d.join("mailer.token"), MAILER).unwrap();
    let text = format!(
        "[node]\ndata_dir = \"{data}\"\nsecret_key_file = \"{data}/secret.key\"\n\
         http_listen = \"{LISTEN}\"\n{extra}\n\
         [api_clients.grafana]\nrole = \"read\"\ntoken_file = \"{reader}\"\n\
         [api_clients.archive]\nrole = \"mail\"\ntoken_file = \"{mailer}\"\n\
         [sources.down]\nprotocol = \"imap\"\nhost = \"127.0.0.1\"\nport = 1\n\
         username = \"u\"\nauth = \"password\"\npassword_file = \"{reader}\"\nenabled = false\n",
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
