//! The node's HTTP application (access rules, limits, routes, handlers) on arbitrary
//! requests: method, path and query, headers and body from the input. Never a panic, and
//! what the access rules promise holds for every input: nothing under `/api/` succeeds
//! without the admin token, and every answer carries `nosniff`.
//!
//! Input: the first byte picks the method and whether the admin token is sent; the first
//! line is the path and query; then `Name: value` lines up to an empty line; the rest is
//! the body.
#![no_main]
use std::sync::Arc;

use actix_web::test::{TestRequest, call_service, init_service};
use libfuzzer_sys::fuzz_target;
use mailsluice::actors::supervisor::Supervisor;
use mailsluice::api::access::Access;
use mailsluice::api::credentials::{Credentials, read_token_file};
use mailsluice::api::{ApiState, app};
use mailsluice::auth::TokenService;
use mailsluice::config::live::Live;
use mailsluice::net::Connector;
use mailsluice::store::Store;

struct Node {
    _dir: tempfile::TempDir,
    admin: String,
    state: ApiState,
    access: Arc<Access>,
}

/// One node for the whole run: a store, a supervisor and its token manager, no sources
/// running (one disabled source, so routes that name a source reach their handlers).
fn node() -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let password = dir.path().join("password");
    std::fs::write(&password, "p").expect("password file");
    let text = format!(
        "[node]\ndata_dir = \"{data}\"\nsecret_key_file = \"{data}/secret.key\"\n\
         http_listen = \"127.0.0.1:9898\"\n\
         [sources.down]\nprotocol = \"pop3\"\nhost = \"127.0.0.1\"\nport = 1\n\
         username = \"u\"\nauth = \"password\"\npassword_file = \"{password}\"\nenabled = false\n",
        data = data.display(),
        password = password.display(),
    );
    let settings =
        Arc::new(mailsluice::config::load_str(&text, &Default::default()).expect("config"));
    let store = Arc::new(
        Store::open(&settings.node.data_dir, &settings.node.secret_key_file).expect("store"),
    );
    let timeout = std::time::Duration::from_millis(200);
    let connector = Connector::new(&settings.tls, timeout, timeout).expect("connector");
    let credentials = Credentials::load(&settings, true).expect("credentials");
    let admin = read_token_file(&settings.node.api_token_file, "k").expect("admin token");
    let live = Live::new(settings.clone(), connector, Some(dir.path().join("none.toml")));
    let tokens = Arc::new(TokenService::new(settings.clone(), store.clone()).expect("tokens"));
    let (_, handle) = Supervisor::new(live.clone(), store.clone(), tokens).start_with_handle();
    let metrics = mailsluice::telemetry::install().expect("metrics");
    let state = ApiState::new(live.clone(), store, metrics, handle);
    let listen = "127.0.0.1:9898".parse().expect("address");
    let access = Arc::new(Access::new(live, credentials, listen, false));
    Node {
        _dir: dir,
        admin,
        state,
        access,
    }
}

thread_local! {
    /// One actix system and node for the whole run (libFuzzer calls on one thread).
    static SYSTEM: (actix_rt::SystemRunner, Node) = {
        let runner = actix_rt::System::new();
        let node = runner.block_on(async { node() });
        (runner, node)
    };
}

/// Each input comes from its own address: one input's failed attempts do not hold back
/// the next (the limiter itself is tested by the unit tests).
fn next_peer() -> std::net::SocketAddr {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::net::SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 | (n & 0x00ff_ffff)), 40000))
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let method = ["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD"][usize::from(first & 7) % 6];
    let with_token = first & 8 != 0;
    let text = String::from_utf8_lossy(rest);
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let path = lines.next().unwrap_or("/");
    // The test request builder insists on a URI it can parse; anything else an HTTP server
    // would have refused before the application.
    if !path.starts_with('/') || path.parse::<actix_web::http::Uri>().is_err() {
        return;
    }
    SYSTEM.with(|(runner, node)| runner.block_on(async {
        let svc = init_service(app(node.state.clone(), node.access.clone())).await;
        let mut req = TestRequest::default()
            .method(method.parse().expect("method"))
            .uri(path)
            .peer_addr(next_peer());
        let mut sent_host = false;
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                let (Ok(name), Ok(value)) = (
                    actix_web::http::header::HeaderName::from_bytes(name.trim().as_bytes()),
                    actix_web::http::header::HeaderValue::from_str(value.trim()),
                ) else {
                    continue;
                };
                // The token comes from the first byte only, so the assertion below knows.
                if name == actix_web::http::header::AUTHORIZATION {
                    continue;
                }
                sent_host |= name == actix_web::http::header::HOST;
                req = req.append_header((name, value));
            }
        }
        if !sent_host {
            req = req.insert_header(("Host", "127.0.0.1:9898"));
        }
        if with_token {
            req = req.insert_header(("Authorization", format!("Bearer {}", node.admin)));
        }
        let res = call_service(&svc, req.set_payload(body.as_bytes().to_vec()).to_request()).await;
        let api = path == "/api" || path.starts_with("/api/") || path.starts_with("/api?");
        if api && !with_token {
            assert!(
                !res.status().is_success(),
                "{method} {path} answered {} without a token",
                res.status()
            );
        }
        assert!(
            res.headers().contains_key("x-content-type-options"),
            "{method} {path}: no nosniff"
        );
    }));
});
