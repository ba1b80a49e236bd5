//! Import proves before it stores: refused imports leave the grant, good ones replace it,
//! and whose grant it is comes from the provider.

use super::*;

/// What the fake provider of [`FakeProvider`] does.
#[derive(Default)]
struct FakeState {
    /// Refresh tokens it accepts; each is spent by its refresh (every refresh rotates).
    valid: std::collections::BTreeSet<String>,
    /// Claims of the ID token sent with every refresh answer (`None`: no ID token).
    id_claims: Option<serde_json::Value>,
    /// What its userinfo endpoint answers (`None`: 401).
    userinfo: Option<serde_json::Value>,
    /// Tokens issued so far (names the next ones).
    issued: usize,
    /// A refresh token whose refresh is answered only once this fires.
    hold: Option<(String, tokio::sync::oneshot::Receiver<()>)>,
}

/// An OIDC provider on loopback: discovery (issuer = its base URL), a token endpoint
/// that refreshes only the refresh tokens it issued (or was given), answering others
/// with `invalid_grant`, and a userinfo endpoint. Reports each refresh token presented.
struct FakeProvider {
    base: String,
    state: Arc<Mutex<FakeState>>,
    presented: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

impl FakeProvider {
    async fn start() -> FakeProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(FakeState::default()));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (shared, issuer) = (state.clone(), base.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, shared.clone(), issuer.clone(), tx.clone()));
            }
        });
        FakeProvider {
            base,
            state,
            presented: tokio::sync::Mutex::new(rx),
        }
    }

    /// Lets `refresh_token` be refreshed (once).
    fn accept(&self, refresh_token: &str) {
        lock(&self.state).valid.insert(refresh_token.to_string());
    }

    fn is_valid(&self, refresh_token: &str) -> bool {
        lock(&self.state).valid.contains(refresh_token)
    }

    fn set_id_claims(&self, claims: serde_json::Value) {
        lock(&self.state).id_claims = Some(claims);
    }

    fn set_userinfo(&self, info: serde_json::Value) {
        lock(&self.state).userinfo = Some(info);
    }

    /// The next refresh token presented at the token endpoint, if one comes within
    /// `within`.
    async fn next_presented(&self, within: Duration) -> Option<String> {
        let mut rx = self.presented.lock().await;
        tokio::time::timeout(within, rx.recv()).await.ok().flatten()
    }
}

/// One request to the [`FakeProvider`].
async fn serve(
    mut conn: tokio::net::TcpStream,
    state: Arc<Mutex<FakeState>>,
    issuer: String,
    presented: tokio::sync::mpsc::UnboundedSender<String>,
) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let (head, body) = loop {
        let read = conn.read(&mut buf).await.unwrap_or(0);
        if read == 0 {
            return;
        }
        request.extend_from_slice(&buf[..read]);
        let text = String::from_utf8_lossy(&request).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_lowercase()
                        .strip_prefix("content-length:")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                break (text[..end].to_string(), text[end + 4..].to_string());
            }
        }
    };
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    let (status, json) = if path == "/.well-known/openid-configuration" {
        let doc = serde_json::json!({
            "issuer": issuer,
            "token_endpoint": format!("{issuer}/token"),
            "userinfo_endpoint": format!("{issuer}/userinfo"),
        });
        ("200 OK", doc)
    } else if path == "/userinfo" {
        match lock(&state).userinfo.clone() {
            Some(info) => ("200 OK", info),
            None => (
                "401 Unauthorized",
                serde_json::json!({"error": "invalid_token"}),
            ),
        }
    } else {
        let form: BTreeMap<&str, &str> = body
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let presented_token = form.get("refresh_token").copied().unwrap_or("").to_string();
        let _ = presented.send(presented_token.clone());
        let hold = {
            let mut s = lock(&state);
            match s.hold.take() {
                Some((token, release)) if token == presented_token => Some(release),
                other => {
                    s.hold = other;
                    None
                }
            }
        };
        if let Some(release) = hold {
            let _ = release.await;
        }
        let mut s = lock(&state);
        if s.valid.remove(&presented_token) {
            s.issued += 1;
            let n = s.issued;
            s.valid.insert(format!("rotated-{n}"));
            let mut answer = serde_json::json!({
                "access_token": format!("access-{n}"),
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": format!("rotated-{n}"),
            });
            if let Some(claims) = &s.id_claims {
                answer["id_token"] = serde_json::Value::String(jwt(claims));
            }
            ("200 OK", answer)
        } else {
            let refusal = serde_json::json!({
                "error": "invalid_grant",
                "error_description": "grant request is invalid",
            });
            ("400 Bad Request", refusal)
        }
    };
    let body = json.to_string();
    let reply = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes()).await;
}

fn jwt(claims: &serde_json::Value) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// A service whose one source `mail` (username `alice@example.test`) uses the
/// [`FakeProvider`] through discovery (so its userinfo endpoint is known).
fn discovering_service(
    dir: &std::path::Path,
    provider: &FakeProvider,
    clock: &ManualClock,
) -> TokenService {
    let toml = format!(
        "[node]\ndata_dir = \"{d}/data\"\nsecret_key_file = \"{d}/key\"\n\n\
             [providers.local]\nkind = \"oidc\"\nissuer = \"{issuer}\"\nclient_id = \"collector\"\n\n\
             [sources.mail]\nprotocol = \"imap\"\nhost = \"localhost\"\nusername = \"alice@example.test\"\nauth = \"oauth2\"\nprovider = \"local\"\n",
        d = dir.display(),
        issuer = provider.base,
    );
    let settings = crate::config::load_str(&toml, &std::collections::HashMap::new()).unwrap();
    let store = Store::open(&settings.node.data_dir, &settings.node.secret_key_file).unwrap();
    TokenService::new(Arc::new(settings), Arc::new(store))
        .unwrap()
        .with_clock(clock.clock())
}

/// ID token claims for `email`, as the fake provider's client `collector` gets them.
fn claims_for(email: &str, provider: &FakeProvider) -> serde_json::Value {
    serde_json::json!({
        "iss": provider.base,
        "aud": "collector",
        "exp": T0_MILLIS / 1000 + 3600,
        "email": email,
    })
}

/// The stored record as it is kept (its serialized bytes).
async fn record_bytes(service: &TokenService) -> Vec<u8> {
    serde_json::to_vec(&service.status("mail").await.unwrap().unwrap()).unwrap()
}

#[tokio::test]
async fn a_refused_import_leaves_the_stored_grant_as_it_was() {
    let provider = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    let service = discovering_service(dir.path(), &provider, &clock);
    provider.set_id_claims(claims_for("alice@example.test", &provider));
    provider.accept("good");
    service
        .import("mail", Secret::new("good"), None)
        .await
        .unwrap();
    let before = record_bytes(&service).await;

    let e = service
        .import("mail", Secret::new("garbage"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            TokenError::ImportRefused {
                refusal: ImportRefusal::Refresh(inner),
                kept_grant: true,
                ..
            } if matches!(**inner, TokenError::Reauth { ref code, .. } if code == "invalid_grant")
        ),
        "{e:?}"
    );
    let shown = e.to_string();
    assert!(shown.contains("invalid_grant"), "{shown}");
    assert!(
        shown.contains("the stored grant was left unchanged"),
        "{shown}"
    );
    // Not a refusal of the stored grant: the source is not parked.
    assert!(!e.needs_reauth());
    assert_eq!(record_bytes(&service).await, before);
    assert!(lock(&service.backoff_until).get("mail").is_none());

    // The stored grant still works: past its access token's margin it refreshes.
    clock.advance(Duration::from_secs(3600));
    let token = service.access_token("mail").await.unwrap();
    assert!(token.refreshed);
    let after = service.status("mail").await.unwrap().unwrap();
    assert_eq!(after.needs_reauth, None);
    assert_eq!(after.identity.as_deref(), Some("alice@example.test"));
}

#[tokio::test]
async fn a_refused_import_with_nothing_stored_stores_nothing() {
    let provider = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    let service = discovering_service(dir.path(), &provider, &clock);
    let e = service
        .import("mail", Secret::new("garbage"), None)
        .await
        .unwrap_err();
    assert!(e.to_string().ends_with("; nothing was stored"), "{e}");
    assert!(service.status("mail").await.unwrap().is_none());
}

#[tokio::test]
async fn a_good_import_replaces_the_grant_with_the_rotated_token() {
    let provider = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    let service = discovering_service(dir.path(), &provider, &clock);
    provider.accept("old");
    service
        .import("mail", Secret::new("old"), None)
        .await
        .unwrap();
    let old = service.status("mail").await.unwrap().unwrap();

    clock.advance(Duration::from_secs(60));
    provider.accept("new");
    let token = service
        .import("mail", Secret::new("new"), None)
        .await
        .unwrap();
    assert!(token.refreshed);
    assert_eq!(token.expires_at, T0_MILLIS / 1000 + 60 + 3600);
    let stored = service.status("mail").await.unwrap().unwrap();
    // The provider spent "new" on the proving refresh: what is stored is its successor.
    assert!(!provider.is_valid("new"));
    assert_eq!(stored.refresh_token.as_deref(), Some("rotated-2"));
    assert!(provider.is_valid("rotated-2"));
    assert_eq!(stored.access_token.as_deref(), Some(token.token.expose()));
    assert_eq!(stored.access_expires_at, Some(token.expires_at));
    assert_eq!(stored.refresh_token_obtained, Some(T0_MILLIS / 1000 + 60));
    assert_eq!(stored.refresh_token_last_used, Some(T0_MILLIS / 1000 + 60));
    assert_ne!(stored.refresh_token, old.refresh_token);
    // The imported token is served from the store, without another refresh.
    let again = service.access_token("mail").await.unwrap();
    assert!(!again.refreshed);
    assert_eq!(again.token, token.token);
}

#[tokio::test]
async fn a_good_import_lifts_a_parked_source() {
    let provider = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    let service = discovering_service(dir.path(), &provider, &clock);
    let parked = StoredToken {
        refresh_token: Some("revoked".into()),
        needs_reauth: Some("provider local: invalid_grant".into()),
        ..StoredToken::default()
    };
    service
        .store
        .put_token(&service.binding("mail").unwrap(), &parked)
        .await
        .unwrap();
    provider.accept("new");
    service
        .import("mail", Secret::new("new"), None)
        .await
        .unwrap();
    let stored = service.status("mail").await.unwrap().unwrap();
    assert_eq!(stored.needs_reauth, None);
    assert!(!service.access_token("mail").await.unwrap().refreshed);
}

#[tokio::test]
async fn the_id_token_names_the_account_over_the_importers_word() {
    let provider = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    let service = discovering_service(dir.path(), &provider, &clock);
    provider.set_id_claims(claims_for("alice@example.test", &provider));
    provider.set_userinfo(serde_json::json!({"email": "userinfo@example.test"}));
    provider.accept("first");
    // The importer's word in other case: it is the same account, recorded as the
    // provider spells it, and verified.
    service
        .import(
            "mail",
            Secret::new("first"),
            Some("Alice@Example.test".into()),
        )
        .await
        .unwrap();
    let stored = service.status("mail").await.unwrap().unwrap();
    assert_eq!(stored.identity.as_deref(), Some("alice@example.test"));
    assert_eq!(stored.identity_source, Some(IdentitySource::IdToken));
    let before = record_bytes(&service).await;

    // The importer names someone else: refused, naming both, nothing written.
    provider.accept("second");
    let e = service
        .import(
            "mail",
            Secret::new("second"),
            Some("bob@example.test".into()),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            TokenError::ImportRefused {
                refusal: ImportRefusal::IdentityMismatch { claimed, provider_says },
                ..
            } if claimed == "bob@example.test" && provider_says == "alice@example.test"
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("the stored grant was left unchanged"),
        "{e}"
    );
    assert_eq!(record_bytes(&service).await, before);
}

#[tokio::test]
async fn a_grant_of_another_account_is_refused_as_at_authorize() {
    let provider = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    let service = discovering_service(dir.path(), &provider, &clock);
    provider.accept("alices");
    service
        .import("mail", Secret::new("alices"), None)
        .await
        .unwrap();
    let before = record_bytes(&service).await;

    provider.set_id_claims(claims_for("bob@example.test", &provider));
    provider.accept("bobs");
    let e = service
        .import("mail", Secret::new("bobs"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            TokenError::ImportRefused {
                refusal: ImportRefusal::WrongAccount { username, provider_says },
                ..
            } if username == "alice@example.test" && provider_says == "bob@example.test"
        ),
        "{e:?}"
    );
    assert_eq!(record_bytes(&service).await, before);

    // An ID token for another client proves nothing: refused too.
    let mut foreign = claims_for("alice@example.test", &provider);
    foreign["aud"] = "someone-else".into();
    provider.set_id_claims(foreign);
    provider.accept("foreign");
    let e = service
        .import("mail", Secret::new("foreign"), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            TokenError::ImportRefused { refusal: ImportRefusal::IdToken(why), .. }
                if matches!(**why, crate::auth::IdTokenError::Audience { .. })
        ),
        "{e:?}"
    );
    assert_eq!(record_bytes(&service).await, before);
}

#[tokio::test]
async fn without_an_id_token_userinfo_names_the_account() {
    let provider = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    let service = discovering_service(dir.path(), &provider, &clock);
    provider.set_userinfo(serde_json::json!({"email": "alice@example.test"}));
    provider.accept("rt");
    service
        .import("mail", Secret::new("rt"), Some("alice@example.test".into()))
        .await
        .unwrap();
    let stored = service.status("mail").await.unwrap().unwrap();
    assert_eq!(stored.identity.as_deref(), Some("alice@example.test"));
    assert_eq!(stored.identity_source, Some(IdentitySource::Userinfo));
}

#[tokio::test]
async fn the_importers_word_is_recorded_as_claimed_when_the_provider_says_nothing() {
    let provider = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    let service = discovering_service(dir.path(), &provider, &clock);
    provider.accept("rt");
    service
        .import("mail", Secret::new("rt"), Some("alice@example.test".into()))
        .await
        .unwrap();
    let stored = service.status("mail").await.unwrap().unwrap();
    assert_eq!(stored.identity.as_deref(), Some("alice@example.test"));
    assert_eq!(stored.identity_source, Some(IdentitySource::Claimed));
    assert_eq!(
        crate::auth::consented_by(stored.identity.as_deref(), stored.identity_source),
        "alice@example.test (claimed at import, not verified)"
    );
    // No word at all: nobody is recorded.
    provider.accept("rt2");
    service
        .import("mail", Secret::new("rt2"), None)
        .await
        .unwrap();
    let stored = service.status("mail").await.unwrap().unwrap();
    assert_eq!((stored.identity, stored.identity_source), (None, None));
}

#[tokio::test]
async fn an_import_waits_for_a_refresh_in_flight_and_its_grant_stays() {
    let provider = FakeProvider::start().await;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(T0_MILLIS);
    let service = Arc::new(discovering_service(dir.path(), &provider, &clock));
    provider.accept("stored");
    service
        .import("mail", Secret::new("stored"), None)
        .await
        .unwrap();
    assert_eq!(
        provider
            .next_presented(Duration::from_secs(5))
            .await
            .as_deref(),
        Some("stored")
    );

    // A refresh of the stored grant ("rotated-1") that the provider answers only when
    // told to. (Local tasks: the service's futures are not Send.)
    let (release, held) = tokio::sync::oneshot::channel();
    lock(&provider.state).hold = Some(("rotated-1".into(), held));
    clock.advance(Duration::from_secs(3600));
    let tasks = tokio::task::LocalSet::new();
    let (refreshed, imported) = tasks
        .run_until(async {
            let refreshing = tokio::task::spawn_local({
                let service = service.clone();
                async move { service.access_token("mail").await }
            });
            assert_eq!(
                provider
                    .next_presented(Duration::from_secs(5))
                    .await
                    .as_deref(),
                Some("rotated-1")
            );
            provider.accept("imported");
            let importing = tokio::task::spawn_local({
                let service = service.clone();
                async move { service.import("mail", Secret::new("imported"), None).await }
            });
            // While the refresh is in flight the import does not reach the provider
            // (a short wait on purpose: what is checked is that nothing happens in it).
            assert_eq!(
                provider.next_presented(Duration::from_millis(300)).await,
                None
            );
            release.send(()).unwrap();
            (
                refreshing.await.unwrap().unwrap(),
                importing.await.unwrap().unwrap(),
            )
        })
        .await;
    assert_eq!(
        provider
            .next_presented(Duration::from_secs(5))
            .await
            .as_deref(),
        Some("imported")
    );
    // The import wrote last: its grant is the one kept, not the refreshed one.
    let stored = service.status("mail").await.unwrap().unwrap();
    assert_ne!(refreshed.token, imported.token);
    assert_eq!(
        stored.access_token.as_deref(),
        Some(imported.token.expose())
    );
    assert_eq!(stored.refresh_token.as_deref(), Some("rotated-3"));
}

#[test]
fn a_record_written_before_identity_sources_were_kept_still_reads() {
    let old = br#"{"refresh_token":"rt","access_token":null,"access_expires_at":null,"refresh_token_last_used":null,"refresh_token_obtained":1700000000,"identity":"alice@example.test","needs_reauth":null}"#;
    let record: StoredToken = serde_json::from_slice(old).unwrap();
    assert_eq!(record.identity.as_deref(), Some("alice@example.test"));
    assert_eq!(record.identity_source, None);
    // And it is written back as it was read.
    assert_eq!(serde_json::to_vec(&record).unwrap(), old.to_vec());
}
