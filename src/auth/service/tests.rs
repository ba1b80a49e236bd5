//! The token service against fake token endpoints and a manual clock: margins, refresh,
//! rotation, import, trust.

use super::*;
use crate::auth::ManualClock;
use crate::store::Store;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[test]
fn margin_is_capped_by_a_quarter_of_the_lifetime() {
    let default = Duration::from_secs(120);
    assert_eq!(refresh_margin_secs(default, Some(30)), 7);
    assert_eq!(refresh_margin_secs(default, Some(10)), 2);
    // Real providers' tokens (an hour or more) keep the configured margin.
    assert_eq!(refresh_margin_secs(default, Some(3600)), 120);
    assert_eq!(refresh_margin_secs(default, Some(480)), 120);
    assert_eq!(refresh_margin_secs(Duration::from_secs(1), Some(30)), 1);
    assert_eq!(refresh_margin_secs(default, None), 120);
    // A token of a few seconds still goes out with at least a second left.
    assert_eq!(refresh_margin_secs(default, Some(2)), 1);
    assert_eq!(refresh_margin_secs(default, Some(-5)), 1);
    assert_eq!(refresh_margin_secs(Duration::ZERO, Some(30)), 0);
}

#[test]
fn still_good_counts_milliseconds() {
    let exp = 1_000_030;
    assert!(still_good(exp, 7, 1_000_022_999));
    assert!(!still_good(exp, 7, 1_000_023_000));
    assert!(!still_good(exp, 7, 1_000_023_900));
    assert!(!still_good(exp, 0, 1_000_030_000));
}

/// A token endpoint on loopback that answers every request with a new access token of
/// `lifetime_secs` (and a rotated refresh token), counting the requests.
async fn token_endpoint(lifetime_secs: u64) -> (String, Arc<AtomicUsize>) {
    token_endpoint_failing_on(lifetime_secs, Arc::new(AtomicBool::new(false))).await
}

/// [`token_endpoint`], answering HTTP 500 while `failing` is set.
async fn token_endpoint_failing_on(
    lifetime_secs: u64,
    failing: Arc<AtomicBool>,
) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the body by Content-Length.
            loop {
                let read = conn.read(&mut buf).await.unwrap_or(0);
                if read == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..read]);
                let text = String::from_utf8_lossy(&request).to_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            if failing.load(Ordering::SeqCst) {
                let _ = conn
                    .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                continue;
            }
            let body = format!(
                r#"{{"access_token":"access-{n}","token_type":"Bearer","expires_in":{lifetime_secs},"refresh_token":"refresh-{n}"}}"#
            );
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        }
    });
    (url, count)
}

/// Where the tests' manual clocks start: a whole second, so token expiries (whole
/// seconds from the provider) fall at exact offsets from it.
const T0_MILLIS: i64 = 1_900_000_000_000;

/// The store of `settings`. A test that reopens it (a restarted process) may find sled's
/// file lock still held for a moment after the previous `Store` was dropped (sled's own
/// I/O threads let go of it last), so a lock held is asked again until a deadline.
fn open_store(settings: &Settings) -> Store {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(&settings.node.data_dir, &settings.node.secret_key_file) {
            Ok(store) => return store,
            Err(crate::store::StoreError::Locked(_)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// A service with the default `node.token_refresh_margin_secs` (120) and one OAuth2
/// source `mail` whose provider's token endpoint is `token_url`, deciding on `clock`.
fn service(
    dir: &std::path::Path,
    token_url: &str,
    app_only: bool,
    clock: &ManualClock,
) -> TokenService {
    let secret = dir.join("client-secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let flow = if app_only {
        format!(
            "flow = \"app_only\"\nclient_secret_file = \"{}\"\n",
            secret.display()
        )
    } else {
        String::new()
    };
    let toml = format!(
        "[node]\ndata_dir = \"{d}/data\"\nsecret_key_file = \"{d}/key\"\n\n\
             [providers.local]\nkind = \"oidc\"\ntoken_url = \"{token_url}\"\nclient_id = \"collector\"\n{flow}\n\
             [sources.mail]\nprotocol = \"imap\"\nhost = \"localhost\"\nusername = \"alice@example.test\"\nauth = \"oauth2\"\nprovider = \"local\"\n",
        d = dir.display()
    );
    let settings = crate::config::load_str(&toml, &std::collections::HashMap::new()).unwrap();
    assert_eq!(settings.node.token_refresh_margin, Duration::from_secs(120));
    let store = open_store(&settings);
    TokenService::new(Arc::new(settings), Arc::new(store))
        .unwrap()
        .with_clock(clock.clock())
}

/// A TLS front for `plain` (a token endpoint on plain HTTP) with a certificate from a
/// throw-away CA: the HTTPS URL, and the CA's PEM file.
async fn https_front(plain: &str, dir: &std::path::Path) -> (String, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let ca_pem = dir.join("private-ca.pem");
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/token", listener.local_addr().unwrap());
    let upstream = plain
        .trim_start_matches("http://")
        .trim_end_matches("/token")
        .to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await
                    && let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                }
            });
        }
    });
    (url, ca_pem)
}

/// A provider behind a private CA (AD FS, a corporate Keycloak) is trusted through
/// tls.extra_ca_file, as a mail server behind it is; without it, it is not.
#[tokio::test]
async fn token_endpoints_trust_what_mail_connections_trust() {
    let (plain, _) = token_endpoint(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let (url, ca_pem) = https_front(&plain, dir.path()).await;
    for (n, extra_ca) in [(0, None), (1, Some(&ca_pem))] {
        let d = dir.path().join(format!("node{n}"));
        let toml = format!(
            "[node]\ndata_dir = \"{d}/data\"\nsecret_key_file = \"{d}/key\"\n\n\
                 [tls]\nextra_ca_file = \"{ca}\"\n\n\
                 [providers.local]\nkind = \"oidc\"\ntoken_url = \"{url}\"\nclient_id = \"collector\"\n\n\
                 [sources.mail]\nprotocol = \"imap\"\nhost = \"localhost\"\nusername = \"alice@example.test\"\nauth = \"oauth2\"\nprovider = \"local\"\n",
            d = d.display(),
            ca = extra_ca
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        );
        let settings = crate::config::load_str(&toml, &Default::default()).unwrap();
        let store = open_store(&settings);
        let service = TokenService::new(Arc::new(settings), Arc::new(store)).unwrap();
        let result = service.import("mail", Secret::new("refresh-0"), None).await;
        match extra_ca {
            Some(_) => {
                let token = result.expect("trusted through tls.extra_ca_file");
                assert!(token.refreshed);
            }
            None => {
                let err = result.expect_err("a private CA is not trusted by default");
                assert!(err.to_string().contains("certificate"), "{err}");
            }
        }
    }
}

#[test]
fn an_unreadable_extra_ca_file_is_named_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-ca.pem");
    let toml = format!(
        "[node]\ndata_dir = \"{d}/data\"\nsecret_key_file = \"{d}/key\"\n\n\
             [tls]\nextra_ca_file = \"{ca}\"\n",
        d = dir.path().display(),
        ca = missing.display()
    );
    let settings = crate::config::load_str(&toml, &std::collections::HashMap::new()).unwrap();
    let store = Store::open(&settings.node.data_dir, &settings.node.secret_key_file).unwrap();
    let e = TokenService::new(Arc::new(settings), Arc::new(store)).unwrap_err();
    assert!(
        matches!(
            e,
            SetupError::Trust {
                reason: crate::net::TlsSetupError::CaFileUnreadable { .. }
            }
        ),
        "{e:?}"
    );
    let shown = e.to_string();
    assert!(shown.starts_with("tls.extra_ca_file "), "{shown}");
    assert!(shown.contains(&missing.display().to_string()), "{shown}");
}

async fn import(service: &TokenService) -> AccessToken {
    service
        .import("mail", Secret::new("refresh-0"), None)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_token_shorter_than_the_margin_is_used_for_three_quarters_of_its_life() {
    let (url, requests) = token_endpoint(30).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    let service = service(dir.path(), &url, false, &clock);
    let first = import(&service).await;
    assert!(first.refreshed);
    assert_eq!(first.expires_at, T0_MILLIS / 1000 + 30);
    assert_eq!(first.renew_at, first.expires_at - 7);
    assert_eq!(requests.load(Ordering::SeqCst), 1);

    // The 30 s token is reused, not refreshed at every ask (a 120 s margin would), up
    // to the last millisecond before its last quarter.
    clock.advance(Duration::from_millis(22_999));
    let again = service.access_token("mail").await.unwrap();
    assert!(!again.refreshed);
    assert_eq!(again.token, first.token);
    assert_eq!(again.renew_at, first.renew_at);
    assert_eq!(requests.load(Ordering::SeqCst), 1);

    // In its last quarter it is replaced.
    clock.advance(Duration::from_millis(1));
    let renewed = service.access_token("mail").await.unwrap();
    assert!(renewed.refreshed);
    assert_ne!(renewed.token, first.token);
    assert_eq!(renewed.expires_at, T0_MILLIS / 1000 + 23 + 30);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_lifetime_of_a_token_stored_by_an_earlier_process_comes_from_its_record() {
    let (url, requests) = token_endpoint(30).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    {
        let service = service(dir.path(), &url, false, &clock);
        import(&service).await;
    }
    // Restarted 5 s later: 25 s left.
    clock.advance(Duration::from_secs(5));
    let restarted = service(dir.path(), &url, false, &clock);
    let token = restarted.access_token("mail").await.unwrap();
    assert!(!token.refreshed);
    assert_eq!(token.renew_at, token.expires_at - 7);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn client_credentials_tokens_are_reused_too() {
    let (url, requests) = token_endpoint(30).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    let service = service(dir.path(), &url, true, &clock);
    let first = service.access_token("mail").await.unwrap();
    assert!(first.refreshed);
    clock.advance(Duration::from_secs(20));
    let again = service.access_token("mail").await.unwrap();
    assert!(!again.refreshed);
    assert_eq!(again.token, first.token);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
    clock.advance(Duration::from_secs(3));
    assert!(service.access_token("mail").await.unwrap().refreshed);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_hour_long_token_keeps_the_configured_margin() {
    let (url, requests) = token_endpoint(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    let service = service(dir.path(), &url, false, &clock);
    let first = import(&service).await;
    assert_eq!(first.renew_at, first.expires_at - 120);
    clock.advance(Duration::from_secs(3600 - 121));
    assert!(!service.access_token("mail").await.unwrap().refreshed);
    clock.advance(Duration::from_secs(1));
    assert!(service.access_token("mail").await.unwrap().refreshed);
    assert_eq!(requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_transient_failure_backs_off_until_the_clock_passes_it() {
    let failing = Arc::new(AtomicBool::new(false));
    let (url, requests) = token_endpoint_failing_on(30, failing.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    let service = service(dir.path(), &url, false, &clock);
    import(&service).await;
    failing.store(true, Ordering::SeqCst);
    clock.advance(Duration::from_secs(23));
    let e = service.access_token("mail").await.unwrap_err();
    assert!(matches!(e, TokenError::Transient { .. }), "{e}");
    assert_eq!(requests.load(Ordering::SeqCst), 2);

    // The provider is back, but within the backoff (5 s plus up to 25 % jitter) the
    // failure is repeated without a request.
    failing.store(false, Ordering::SeqCst);
    clock.advance(Duration::from_millis(4_999));
    let again = service.access_token("mail").await.unwrap_err();
    assert_eq!(again.to_string(), e.to_string());
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    // Once the clock has passed it, the provider is asked again.
    clock.advance(Duration::from_millis(1_252));
    assert!(service.access_token("mail").await.unwrap().refreshed);
    assert_eq!(requests.load(Ordering::SeqCst), 3);
}

mod import;

/// A grant stored under one token endpoint, read after the provider was pointed at
/// another: the new endpoint never sees its refresh token; the source needs authorizing
/// there, and `tokens status` says why. Pointed back, the grant works again.
#[tokio::test]
async fn a_grant_is_never_sent_to_a_provider_that_did_not_issue_it() {
    let (first_url, first_requests) = token_endpoint(30).await;
    let (other_url, other_requests) = token_endpoint(30).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    {
        let service = service(dir.path(), &first_url, false, &clock);
        import(&service).await;
    }
    assert_eq!(first_requests.load(Ordering::SeqCst), 1);
    // The access token has run out: the next ask needs the refresh token.
    clock.advance(Duration::from_secs(60));
    let moved = service(dir.path(), &other_url, false, &clock);
    match moved.access_token("mail").await {
        Err(TokenError::NeedsReauth { reason, .. }) => {
            assert!(reason.contains(&first_url), "{reason}");
            assert!(reason.contains(&other_url), "{reason}");
            assert!(!reason.contains("refresh-"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(other_requests.load(Ordering::SeqCst), 0);
    let shown = moved.status("mail").await.unwrap().unwrap();
    assert!(shown.refresh_token.is_none() && shown.access_token.is_none());
    assert!(shown.needs_reauth.is_some());
    // A refused access token dropped meanwhile does not rewrite the record for the new
    // provider.
    moved.invalidate_access_token("mail").await.unwrap();
    drop(moved);

    let back = service(dir.path(), &first_url, false, &clock);
    assert!(back.access_token("mail").await.unwrap().refreshed);
    assert_eq!(first_requests.load(Ordering::SeqCst), 2);
    assert_eq!(other_requests.load(Ordering::SeqCst), 0);
}

/// Client credentials hold no grant: a token kept for another client is dropped and a new
/// one asked for, not a re-authorization.
#[tokio::test]
async fn client_credentials_start_over_at_a_new_endpoint() {
    let (first_url, _) = token_endpoint(3600).await;
    let (other_url, other_requests) = token_endpoint(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    {
        let service = service(dir.path(), &first_url, true, &clock);
        service.access_token("mail").await.unwrap();
    }
    let moved = service(dir.path(), &other_url, true, &clock);
    let token = moved.access_token("mail").await.unwrap();
    assert!(token.refreshed);
    assert_eq!(other_requests.load(Ordering::SeqCst), 1);
    let stored = moved.status("mail").await.unwrap().unwrap();
    assert!(stored.needs_reauth.is_none() && stored.access_token.is_some());
}
