//! The TokenManager against the real oidc-provider: concurrent askers share one refresh,
//! the rotated refresh token is persisted before the reply, a refused grant parks the
//! credential without further provider requests, and a refused import changes nothing.
//!
//! The token service decides on a [`ManualClock`] started at the real time (the provider's
//! tokens are stamped with it): tests move it to get past a backoff instead of sleeping.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use mailsluice::actors::token_manager::{GetAccessToken, ImportRefreshToken, TokenManager};
use mailsluice::auth::{ManualClock, TokenError, TokenService};
use mailsluice::secret::Secret;
use mailsluice::store::{IdentitySource, Store};
use mailsluice::telemetry::{SourceState, status};
use support::{Oidc, OidcOptions};

const SCOPE: &str = "openid offline_access email mail";

fn setup(oidc: &Oidc, dir: &std::path::Path) -> (Arc<TokenService>, Arc<Store>, ManualClock) {
    setup_source(oidc, dir, "mail")
}

/// [`setup`] with the source named `source` (the sources' live status is one per process:
/// a test reading it uses a name of its own).
fn setup_source(
    oidc: &Oidc,
    dir: &std::path::Path,
    source: &str,
) -> (Arc<TokenService>, Arc<Store>, ManualClock) {
    let toml = format!(
        "[node]\ndata_dir = \"{d}/data\"\nsecret_key_file = \"{d}/key\"\ntoken_refresh_margin_secs = 1\n\n[providers.local]\nkind = \"oidc\"\nissuer = \"{iss}\"\nclient_id = \"collector\"\n\n[sources.{source}]\nprotocol = \"imap\"\nhost = \"localhost\"\nusername = \"alice@example.test\"\nauth = \"oauth2\"\nprovider = \"local\"\n",
        d = dir.display(),
        iss = oidc.issuer
    );
    let settings = Arc::new(mailsluice::config::load_str(&toml, &HashMap::new()).expect("config"));
    let store =
        Arc::new(Store::open(&settings.node.data_dir, &settings.node.secret_key_file).unwrap());
    let clock = ManualClock::starting_now();
    let service = Arc::new(
        TokenService::new(settings, store.clone())
            .unwrap()
            .with_clock(clock.clock()),
    );
    (service, store, clock)
}

fn refreshes(oidc: &Oidc, outcome: &str) -> u64 {
    oidc.stats()["token_requests"]["refresh_token"][outcome]
        .as_u64()
        .unwrap_or(0)
}

#[actix_rt::test]
async fn concurrent_askers_share_one_refresh_and_rotation_is_persisted() {
    let oidc = Oidc::start(OidcOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let (service, store, clock) = setup(&oidc, dir.path());
    let binding = service.binding("mail").unwrap();
    let first = oidc.login_auth_code("collector", "alice@example.test", "alice-password", SCOPE);
    let original_refresh = first.refresh_token.clone().unwrap();
    service
        .import("mail", Secret::new(original_refresh.clone()), None)
        .await
        .expect("import");
    let after_import = store.token(&binding).unwrap().unwrap();
    assert_ne!(
        after_import.refresh_token.as_deref(),
        Some(original_refresh.as_str()),
        "rotated token not stored"
    );

    // Make the access token look expired, then ask ten times at once.
    let mut rec = after_import.clone();
    rec.access_expires_at = Some(clock.clock().unix_secs() - 1);
    store.put_token(&binding, &rec).await.unwrap();
    oidc.reset_stats();
    let manager = TokenManager::new(service.clone()).start();
    let asks: Vec<_> = (0..10)
        .map(|_| {
            manager.send(GetAccessToken {
                source: "mail".into(),
            })
        })
        .collect();
    let results = futures_util::future::join_all(asks).await;
    let tokens: Vec<String> = results
        .into_iter()
        .map(|r| r.unwrap().expect("token").token.expose().to_string())
        .collect();
    assert!(
        tokens.windows(2).all(|w| w[0] == w[1]),
        "askers got different tokens"
    );
    assert_eq!(
        refreshes(&oidc, "ok"),
        1,
        "expected exactly one refresh: {}",
        oidc.stats()
    );

    // The rotated refresh token was persisted: the previous one is spent.
    let now = store.token(&binding).unwrap().unwrap();
    assert_ne!(now.refresh_token, after_import.refresh_token);
    assert!(
        oidc.refresh("collector", after_import.refresh_token.as_deref().unwrap())
            .is_err()
    );

    // A cached token is served without asking the provider.
    oidc.reset_stats();
    let again = manager
        .send(GetAccessToken {
            source: "mail".into(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.token.expose(), tokens[0]);
    assert_eq!(refreshes(&oidc, "ok") + refreshes(&oidc, "error"), 0);
}

#[actix_rt::test]
async fn refused_grant_parks_the_credential() {
    let oidc = Oidc::start(OidcOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let (service, store, _clock) = setup(&oidc, dir.path());
    let binding = service.binding("mail").unwrap();
    let t = oidc.login_auth_code("collector", "alice@example.test", "alice-password", SCOPE);
    service
        .import("mail", Secret::new(t.refresh_token.unwrap()), None)
        .await
        .unwrap();
    oidc.revoke_user("alice@example.test");
    let mut rec = store.token(&binding).unwrap().unwrap();
    rec.access_expires_at = Some(0);
    store.put_token(&binding, &rec).await.unwrap();
    oidc.reset_stats();
    let manager = TokenManager::new(service).start();
    for _ in 0..5 {
        let r = manager
            .send(GetAccessToken {
                source: "mail".into(),
            })
            .await
            .unwrap();
        let e = r.expect_err("revoked grant must fail");
        assert!(e.needs_reauth(), "{e}");
        assert!(e.to_string().contains("invalid_grant"), "{e}");
    }
    assert_eq!(
        refreshes(&oidc, "error") + refreshes(&oidc, "ok"),
        1,
        "{}",
        oidc.stats()
    );
    assert!(
        store
            .token(&binding)
            .unwrap()
            .unwrap()
            .needs_reauth
            .is_some()
    );
}

#[actix_rt::test]
async fn provider_5xx_with_retry_after_is_honoured_without_a_refresh_storm() {
    let oidc = Oidc::start(OidcOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let (service, store, _clock) = setup(&oidc, dir.path());
    let binding = service.binding("mail").unwrap();
    let t = oidc.login_auth_code("collector", "alice@example.test", "alice-password", SCOPE);
    service
        .import("mail", Secret::new(t.refresh_token.unwrap()), None)
        .await
        .unwrap();
    let mut rec = store.token(&binding).unwrap().unwrap();
    rec.access_expires_at = Some(0);
    store.put_token(&binding, &rec).await.unwrap();
    oidc.reset_stats();
    oidc.queue_token_faults(serde_json::json!([{"status": 503, "headers": {"Retry-After": "30"}}]));
    let manager = TokenManager::new(service).start();
    for _ in 0..5 {
        let e = manager
            .send(GetAccessToken {
                source: "mail".into(),
            })
            .await
            .unwrap()
            .expect_err("503 must fail");
        match e {
            mailsluice::auth::TokenError::Transient { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(30)))
            }
            other => panic!("expected a transient error, got {other}"),
        }
    }
    // One request reached the provider; the other four waited out the Retry-After.
    let stats = oidc.stats();
    assert_eq!(
        stats["token_requests"]["refresh_token"]["injected"], 1,
        "{stats}"
    );
    assert_eq!(refreshes(&oidc, "ok"), 0, "{stats}");
    // The refresh token is untouched and still good.
    assert!(
        store
            .token(&binding)
            .unwrap()
            .unwrap()
            .needs_reauth
            .is_none()
    );
}

#[actix_rt::test]
async fn token_endpoint_faults_back_off_and_keep_the_refresh_token() {
    let oidc = Oidc::start(OidcOptions::default());
    let dir = tempfile::tempdir().unwrap();
    // read_timeout_secs = 2 bounds a token request too.
    let toml_dir = dir.path().to_path_buf();
    let clock = ManualClock::starting_now();
    let (service, store) = {
        let toml = format!(
            "[node]\ndata_dir = \"{d}/data\"\nsecret_key_file = \"{d}/key\"\ntoken_refresh_margin_secs = 1\nread_timeout_secs = 2\n\n[providers.local]\nkind = \"oidc\"\nissuer = \"{iss}\"\nclient_id = \"collector\"\n\n[sources.mail]\nprotocol = \"imap\"\nhost = \"localhost\"\nusername = \"alice@example.test\"\nauth = \"oauth2\"\nprovider = \"local\"\n",
            d = toml_dir.display(),
            iss = oidc.issuer
        );
        let settings = Arc::new(mailsluice::config::load_str(&toml, &HashMap::new()).unwrap());
        let store =
            Arc::new(Store::open(&settings.node.data_dir, &settings.node.secret_key_file).unwrap());
        let service = TokenService::new(settings, store.clone())
            .unwrap()
            .with_clock(clock.clock());
        (Arc::new(service), store)
    };
    let binding = service.binding("mail").unwrap();

    let t = oidc.login_auth_code("collector", "alice@example.test", "alice-password", SCOPE);
    service
        .import("mail", Secret::new(t.refresh_token.unwrap()), None)
        .await
        .unwrap();
    let good_refresh = store.token(&binding).unwrap().unwrap().refresh_token;
    let expire = || async {
        let mut rec = store.token(&binding).unwrap().unwrap();
        rec.access_expires_at = Some(0);
        store.put_token(&binding, &rec).await.unwrap();
    };
    for (fault, what) in [
        (serde_json::json!({"status": 500}), "HTTP 500"),
        (
            serde_json::json!({"status": 200, "body": "{not json"}),
            "unreadable",
        ),
        // Waited out for real (2 s): the timeout under test is the HTTP client's own.
        (serde_json::json!({"delay_ms": 4000}), "no answer"),
    ] {
        expire().await;
        oidc.queue_token_faults(serde_json::json!([fault]));
        let e = service.access_token("mail").await.expect_err(what);
        assert!(
            matches!(e, mailsluice::auth::TokenError::Transient { .. }),
            "{what}: {e}"
        );
        assert!(e.to_string().contains(what), "{e}");
        // Within the backoff no request is made, and the refresh token is untouched.
        let before = oidc.stats()["token_requests"]["refresh_token"].clone();
        let again = service.access_token("mail").await.expect_err("backing off");
        assert_eq!(again.to_string(), e.to_string());
        assert_eq!(oidc.stats()["token_requests"]["refresh_token"], before);
        assert_eq!(
            store.token(&binding).unwrap().unwrap().refresh_token,
            good_refresh
        );
        assert!(
            store
                .token(&binding)
                .unwrap()
                .unwrap()
                .needs_reauth
                .is_none()
        );
        // Past the backoff (5 s + up to 25 % jitter).
        clock.advance(Duration::from_millis(6300));
    }
    // A response without expires_in: the token is used, with a short assumed lifetime.
    expire().await;
    oidc.queue_token_faults(serde_json::json!([{"status": 200, "body": {"access_token": "opaque-no-expiry", "token_type": "Bearer"}}]));
    let tok = service
        .access_token("mail")
        .await
        .expect("token without expires_in");
    let left = tok.expires_at - clock.clock().unix_secs();
    assert_eq!(left, 600, "assumed lifetime");
    // No refresh_token in that answer: the stored one is kept.
    assert_eq!(
        store.token(&binding).unwrap().unwrap().refresh_token,
        good_refresh
    );
}

/// A mistyped (or forged) import through the TokenManager, with a real grant stored: refused
/// with the provider's code, nothing written, the source not parked, and the stored grant
/// still refreshes. A good import records who the provider's ID token names.
#[actix_rt::test]
async fn a_refused_import_leaves_the_working_grant_in_place() {
    let oidc = Oidc::start(OidcOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let (service, store, clock) = setup_source(&oidc, dir.path(), "kept");
    let binding = service.binding("kept").unwrap();
    let manager = TokenManager::new(service).start();
    let import = |refresh_token: String, identity: Option<&str>| {
        manager.send(ImportRefreshToken {
            source: "kept".into(),
            refresh_token: Secret::new(refresh_token),
            identity: identity.map(str::to_string),
        })
    };
    let t = oidc.login_auth_code("collector", "alice@example.test", "alice-password", SCOPE);
    import(t.refresh_token.unwrap(), None)
        .await
        .unwrap()
        .expect("a real grant is imported");
    let good = store.token(&binding).unwrap().unwrap();
    assert_eq!(good.identity.as_deref(), Some("alice@example.test"));
    assert_eq!(good.identity_source, Some(IdentitySource::IdToken));
    status::set_state("kept", SourceState::Healthy);

    oidc.reset_stats();
    let e = import("not-a-refresh-token".into(), None)
        .await
        .unwrap()
        .expect_err("garbage must be refused");
    let shown = e.to_string();
    assert!(matches!(e, TokenError::ImportRefused { .. }), "{shown}");
    assert!(shown.contains("invalid_grant"), "{shown}");
    assert!(
        shown.contains("the stored grant was left unchanged"),
        "{shown}"
    );
    assert_eq!(refreshes(&oidc, "error"), 1, "{}", oidc.stats());
    assert_eq!(store.token(&binding).unwrap().unwrap(), good);
    assert_eq!(
        status::get("kept").map(|s| s.state),
        Some(SourceState::Healthy)
    );

    // Someone else's name beside a real grant: refused, naming both.
    let other = oidc.login_auth_code("collector", "alice@example.test", "alice-password", SCOPE);
    let e = import(other.refresh_token.unwrap(), Some("bob@example.test"))
        .await
        .unwrap()
        .expect_err("the provider names alice");
    let shown = e.to_string();
    assert!(
        shown.contains("alice@example.test") && shown.contains("bob@example.test"),
        "{shown}"
    );
    assert_eq!(store.token(&binding).unwrap().unwrap(), good);

    // The stored grant still gives access tokens, refreshed once its own expire.
    clock.advance(Duration::from_secs(3600));
    oidc.reset_stats();
    let token = manager
        .send(GetAccessToken {
            source: "kept".into(),
        })
        .await
        .unwrap()
        .expect("the stored grant still works");
    assert!(token.refreshed);
    assert_eq!(refreshes(&oidc, "ok"), 1, "{}", oidc.stats());
    let after = store.token(&binding).unwrap().unwrap();
    assert!(after.needs_reauth.is_none());
    assert_ne!(after.refresh_token, good.refresh_token, "rotated");
}
