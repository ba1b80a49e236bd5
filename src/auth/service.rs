//! [`TokenService`]: a source's access token from the store while it is good beyond the
//! refresh margin, else a new one from the provider, persisted before anyone uses it (with
//! rotation the old refresh token may already be spent). A refresh token the provider
//! refuses marks the source as needing re-authorization; a transient failure backs the
//! credential off, with jitter, so the provider is not asked again before the clock passes
//! the backoff.

use std::collections::BTreeMap;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::consent::{IdentityError, names_include};
use super::exchange::Granted;
use super::{AccessToken, Clock, ImportRefusal, TokenError, lock};
use crate::config::{Flow, ProviderSettings, Settings, SourceAuth, SourceSettings};
use crate::secret::Secret;
use crate::store::{IdentitySource, StoredToken, TokenStore};
use crate::telemetry;

/// The refresh margin takes at most this fraction (1/n) of a token's lifetime. A margin
/// longer than the lifetime (the default 120 s against a 30 s token) would make every ask a
/// refresh and end every session as soon as it started; a quarter keeps three quarters of
/// each token in use and still leaves its last seconds for getting through connect, TLS and
/// the server's login.
const MARGIN_LIFETIME_DIVISOR: i64 = 4;

/// How many seconds before its expiry an access token is replaced: the configured margin
/// (`node.token_refresh_margin_secs`), but no more than a quarter of the token's lifetime
/// (and at least a second of it) when that is known. Unknown (a token stored by an earlier
/// process whose lifetime the record does not tell): the configured margin.
pub fn refresh_margin_secs(configured: Duration, lifetime_secs: Option<i64>) -> i64 {
    let configured = i64::try_from(configured.as_secs()).unwrap_or(i64::MAX);
    match lifetime_secs {
        Some(lifetime) => configured.min((lifetime / MARGIN_LIFETIME_DIVISOR).max(1)),
        None => configured,
    }
}

/// Whether a token expiring at `expires_at` (Unix seconds) is still handed out at `now_ms`
/// (Unix milliseconds) under `margin_secs`. Milliseconds: with whole seconds a token could
/// go out with up to a second less than the margin left.
fn still_good(expires_at: i64, margin_secs: i64, now_ms: i64) -> bool {
    expires_at.saturating_mul(1000) - now_ms > margin_secs.saturating_mul(1000)
}

/// The lifetime of a stored access token, as far as the record tells: a delegated token is
/// obtained with the refresh (or consent) that sets `refresh_token_last_used`.
fn stored_lifetime(record: &StoredToken) -> Option<i64> {
    match (record.access_expires_at, record.refresh_token_last_used) {
        (Some(expires), Some(obtained)) if expires > obtained => Some(expires - obtained),
        _ => None,
    }
}

/// Why a [`TokenService`] could not be built: its HTTP client, which carries the `[tls]`
/// settings, could not be. Start-up and reload only, never counted, so there is no `kind()`.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The trusted roots or TLS versions (`[tls]`) could not be set up.
    #[error("{reason}")]
    Trust { reason: crate::net::TlsSetupError },
    #[error("HTTP client for token endpoints: {reason}")]
    HttpClient { reason: String },
}

/// A reqwest error with its causes: its own Display is only the category ("builder error").
pub(super) fn with_causes(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// Access tokens for the OAuth2 sources of one configuration. Cheap to share behind an
/// `Arc`; a reload builds a new one. Its fields are visible to the sibling modules that
/// extend it (`exchange`, `provider`, `consent`), nowhere else.
pub struct TokenService {
    /// The configuration the sources and providers are looked up in.
    pub(super) settings: Arc<Settings>,
    /// Where refresh and access tokens persist (sealed at rest, durable on write).
    pub(super) store: Arc<dyn TokenStore>,
    /// For token, discovery and userinfo requests: no redirects, the configured TLS floor
    /// and extra CA, the node's timeouts.
    pub(super) http: reqwest::Client,
    /// OIDC discovery documents, by provider name.
    pub(super) discovered: Mutex<BTreeMap<String, serde_json::Value>>,
    /// Per credential: no provider request before this instant (after a transient error).
    pub(super) backoff_until: Mutex<BTreeMap<String, (Instant, TokenError)>>,
    /// Per credential: the lifetime in seconds (`expires_in`) of the access token this
    /// process last obtained, which caps the refresh margin. In memory only: for a token
    /// stored by an earlier process the record is asked ([`stored_lifetime`]).
    pub(super) lifetimes: Mutex<BTreeMap<String, i64>>,
    /// Per credential: held across each read, provider request and write of its stored
    /// record (refresh, import, dropping a refused access token), so they never interleave.
    /// Without it a refresh that read the record before an import would write the grant it
    /// used back over the imported one, or an older refresh token over a rotated one.
    pub(super) record_locks: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// `node.token_refresh_margin_secs`.
    pub(super) margin: Duration,
    /// What time it is for every expiry, margin and backoff decision (the system clock
    /// outside tests).
    pub(super) clock: Clock,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService").finish_non_exhaustive()
    }
}

impl TokenService {
    pub fn new(
        settings: Arc<Settings>,
        store: Arc<dyn TokenStore>,
    ) -> Result<TokenService, SetupError> {
        let builder = reqwest::Client::builder()
            // A provider that does not answer within node.read_timeout_secs is down for now.
            .timeout(settings.node.read_timeout)
            .connect_timeout(settings.node.connect_timeout)
            // Token endpoints must not redirect (a redirect could carry a secret elsewhere).
            .redirect(reqwest::redirect::Policy::none())
            .https_only(false);
        // One trust configuration for mail servers and token endpoints: the system roots plus
        // tls.extra_ca_file, and tls.min_version (a provider behind a private CA, an AD FS
        // or a corporate Keycloak, is reached as its mail server is).
        let roots = crate::net::root_store(settings.tls.extra_ca_file.as_deref())
            .map_err(|reason| SetupError::Trust { reason })?;
        let min = crate::net::TlsOptions::from(&settings.tls).min_version;
        let tls =
            crate::net::rustls_config(min, roots).map_err(|reason| SetupError::Trust { reason })?;
        let builder = builder.use_preconfigured_tls((*tls).clone());
        let http = builder.build().map_err(|e| SetupError::HttpClient {
            reason: with_causes(&e),
        })?;
        Ok(TokenService {
            margin: settings.node.token_refresh_margin,
            settings,
            store,
            http,
            discovered: Mutex::new(BTreeMap::new()),
            backoff_until: Mutex::new(BTreeMap::new()),
            lifetimes: Mutex::new(BTreeMap::new()),
            record_locks: Mutex::new(BTreeMap::new()),
            clock: Clock::System,
        })
    }

    /// The same service deciding on `clock`'s time instead of the system's (tests move a
    /// [`ManualClock`](super::ManualClock) instead of sleeping).
    pub fn with_clock(mut self, clock: Clock) -> TokenService {
        self.clock = clock;
        self
    }

    /// The clock this service decides on.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Unix seconds on this service's clock.
    pub(super) fn now(&self) -> i64 {
        self.clock.unix_secs()
    }

    /// Waits for, and holds until dropped, `source_name`'s record (see `record_locks`).
    async fn hold_record(&self, source_name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let record = lock(&self.record_locks)
            .entry(source_name.to_string())
            .or_default()
            .clone();
        record.lock_owned().await
    }

    /// The refresh margin of the access token stored for `source_name`.
    fn margin_secs(&self, source_name: &str, record: &StoredToken) -> i64 {
        let lifetime = lock(&self.lifetimes)
            .get(source_name)
            .copied()
            .or_else(|| stored_lifetime(record));
        refresh_margin_secs(self.margin, lifetime)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(super) fn source(
        &self,
        name: &str,
    ) -> Result<(&SourceSettings, &ProviderSettings), TokenError> {
        let source = self
            .settings
            .sources
            .get(name)
            .ok_or_else(|| TokenError::Unknown(format!("no source named {name:?}")))?;
        let SourceAuth::OAuth2 { provider, .. } = &source.auth else {
            return Err(TokenError::Unknown(format!(
                "source {name:?} does not use OAuth2"
            )));
        };
        let provider = self
            .settings
            .providers
            .get(provider)
            .ok_or_else(|| TokenError::Unknown(format!("no provider named {provider:?}")))?;
        Ok((source, provider))
    }

    /// A valid access token for `source`: the stored one while it is valid beyond the
    /// margin ([`refresh_margin_secs`]), otherwise a new one from the provider (persisted
    /// before it is returned). One at a time per credential, with imports too; the
    /// TokenManager also lets later askers join a refresh in flight instead of queueing.
    pub async fn access_token(&self, source_name: &str) -> Result<AccessToken, TokenError> {
        let _held = self.hold_record(source_name).await;
        self.access_token_held(source_name).await
    }

    /// [`Self::access_token`], the record already held.
    async fn access_token_held(&self, source_name: &str) -> Result<AccessToken, TokenError> {
        let (source, provider) = self.source(source_name)?;
        let mut record = self.store.token(source_name).await?.unwrap_or_default();
        if let Some(reason) = &record.needs_reauth {
            return Err(TokenError::NeedsReauth {
                source_name: source_name.to_string(),
                reason: reason.clone(),
            });
        }
        let margin = self.margin_secs(source_name, &record);
        if let (Some(tok), Some(exp)) = (&record.access_token, record.access_expires_at)
            && still_good(exp, margin, self.clock.unix_millis())
        {
            telemetry::access_token_expiry(source_name, exp);
            if let Some(used) = record.refresh_token_last_used {
                telemetry::refresh_token_last_used(source_name, used);
            }
            return Ok(AccessToken {
                token: Secret::new(tok.clone()),
                expires_at: exp,
                renew_at: exp - margin,
                refreshed: false,
            });
        }
        if let Some((until, err)) = lock(&self.backoff_until).get(source_name)
            && self.clock.instant() < *until
        {
            return Err(err.clone());
        }
        // `expires_in` counts from when the provider issued the token, somewhere between
        // request and answer: counting from the request never places the expiry after the
        // provider's.
        let requested = self.now();
        let result = match provider.flow {
            Flow::AppOnly => self.client_credentials(source, provider).await,
            Flow::Delegated => {
                let Some(refresh) = record.refresh_token.clone() else {
                    return Err(TokenError::NeedsReauth {
                        source_name: source_name.to_string(),
                        reason: "no refresh token stored; run `mailsluice authorize` or `mailsluice tokens import`".into(),
                    });
                };
                self.refresh(provider, &Secret::new(refresh)).await
            }
        };
        match result {
            Ok(granted) => {
                lock(&self.backoff_until).remove(source_name);
                lock(&self.lifetimes).insert(source_name.to_string(), granted.expires_in);
                let expires_at = requested.saturating_add(granted.expires_in);
                let t = self.now();
                record.access_token = Some(granted.access_token.expose().to_string());
                record.access_expires_at = Some(expires_at);
                if provider.flow == Flow::Delegated {
                    if let Some(r) = granted.refresh_token {
                        record.refresh_token = Some(r.expose().to_string());
                    }
                    record.refresh_token_last_used = Some(t);
                    telemetry::refresh_token_last_used(source_name, t);
                }
                // Persist (flushed) before anyone uses the new access token: with rotation
                // the old refresh token may already be spent.
                self.store.put_token(source_name, &record).await?;
                telemetry::access_token_expiry(source_name, expires_at);
                Ok(AccessToken {
                    token: granted.access_token,
                    expires_at,
                    renew_at: expires_at
                        - refresh_margin_secs(self.margin, Some(granted.expires_in)),
                    refreshed: true,
                })
            }
            Err(e) if e.needs_reauth() => {
                record.needs_reauth = Some(e.to_string());
                record.access_token = None;
                self.store.put_token(source_name, &record).await?;
                Err(TokenError::NeedsReauth {
                    source_name: source_name.to_string(),
                    reason: e.to_string(),
                })
            }
            Err(e) => {
                let wait = match &e {
                    TokenError::Transient {
                        retry_after: Some(d),
                        ..
                    } => *d,
                    _ => Duration::from_secs(5),
                };
                // Jitter, so sources sharing a provider do not come back in lockstep.
                let wait = wait.mul_f64(rand::random_range(1.0..1.25));
                lock(&self.backoff_until).insert(
                    source_name.to_string(),
                    (self.clock.instant() + wait, e.clone()),
                );
                Err(e)
            }
        }
    }

    /// Adopts a refresh token obtained elsewhere, proven first: one refresh with it, in
    /// memory, and only when that succeeds is the stored grant replaced, in one write
    /// (refresh token, rotated when the provider rotates, access token, expiry, times,
    /// identity). Whatever fails leaves the stored record as it was, so a mistyped or
    /// forged import cannot take away a grant that works.
    ///
    /// The account recorded is the one the provider names (ID token, else userinfo), which
    /// must be the source's `username`, as at `authorize`, and `identity` (what the
    /// importer says, e.g. an `authorize` run handing its result to a running node) when
    /// given. Only when the provider names none is `identity` recorded, as claimed.
    pub async fn import(
        &self,
        source_name: &str,
        refresh_token: Secret,
        identity: Option<String>,
    ) -> Result<AccessToken, TokenError> {
        let (source, provider) = self.source(source_name)?;
        if provider.flow == Flow::AppOnly {
            return Err(TokenError::Unknown(format!(
                "source {source_name:?} uses app_only (client credentials): it has no refresh token"
            )));
        }
        let _held = self.hold_record(source_name).await;
        let kept_grant = self
            .store
            .token(source_name)
            .await?
            .is_some_and(|r| r.refresh_token.is_some());
        let refused = |refusal| TokenError::ImportRefused {
            source_name: source_name.to_string(),
            refusal,
            kept_grant,
        };
        let requested = self.now();
        // No backoff is consulted or set: the running source's state is the stored grant's,
        // and this token is not that grant until it is proven.
        let granted = self
            .refresh(provider, &refresh_token)
            .await
            .map_err(|e| refused(ImportRefusal::Refresh(Box::new(e))))?;
        let (identity, identity_source) = self
            .imported_identity(source, provider, &granted, identity)
            .await
            .map_err(refused)?;

        let t = self.now();
        let expires_at = requested.saturating_add(granted.expires_in);
        let record = StoredToken {
            refresh_token: Some(
                granted
                    .refresh_token
                    .unwrap_or(refresh_token)
                    .expose()
                    .to_string(),
            ),
            access_token: Some(granted.access_token.expose().to_string()),
            access_expires_at: Some(expires_at),
            refresh_token_last_used: Some(t),
            refresh_token_obtained: Some(t),
            identity,
            identity_source,
            needs_reauth: None,
        };
        self.store.put_token(source_name, &record).await?;
        lock(&self.backoff_until).remove(source_name);
        lock(&self.lifetimes).insert(source_name.to_string(), granted.expires_in);
        telemetry::access_token_expiry(source_name, expires_at);
        telemetry::refresh_token_last_used(source_name, t);
        Ok(AccessToken {
            token: granted.access_token,
            expires_at,
            renew_at: expires_at - refresh_margin_secs(self.margin, Some(granted.expires_in)),
            refreshed: true,
        })
    }

    /// Who an imported grant belongs to, and who said so: the provider's names (the first,
    /// as at `authorize`) when it gives any, which must include the source's `username` and
    /// `claimed` when given; else `claimed`, marked as such; else nobody known.
    async fn imported_identity(
        &self,
        source: &SourceSettings,
        provider: &ProviderSettings,
        granted: &Granted,
        claimed: Option<String>,
    ) -> Result<(Option<String>, Option<IdentitySource>), ImportRefusal> {
        let named = self
            .provider_identity(
                provider,
                granted.id_token.as_ref().map(Secret::expose),
                &granted.access_token,
            )
            .await
            .map_err(|e| match e {
                IdentityError::IdToken(e) => ImportRefusal::IdToken(Arc::new(e)),
                IdentityError::Provider(e) => ImportRefusal::Refresh(Box::new(e)),
            })?;
        let Some((names, from)) = named else {
            return Ok(match claimed {
                Some(who) => (Some(who), Some(IdentitySource::Claimed)),
                None => (None, None),
            });
        };
        if let Some(claimed) = claimed
            && !names_include(&names, &claimed)
        {
            return Err(ImportRefusal::IdentityMismatch {
                claimed,
                provider_says: names[0].clone(),
            });
        }
        if !names_include(&names, &source.username) {
            return Err(ImportRefusal::WrongAccount {
                username: source.username.clone(),
                provider_says: names[0].clone(),
            });
        }
        Ok((Some(names[0].clone()), Some(from)))
    }

    /// Forgets the stored access token (the server refused it), keeping the refresh token.
    pub async fn invalidate_access_token(&self, source_name: &str) -> Result<(), TokenError> {
        let _held = self.hold_record(source_name).await;
        if let Some(mut record) = self.store.token(source_name).await? {
            record.access_token = None;
            record.access_expires_at = None;
            self.store.put_token(source_name, &record).await?;
        }
        Ok(())
    }

    /// What `tokens status` shows for one source.
    pub async fn status(&self, source_name: &str) -> Result<Option<StoredToken>, TokenError> {
        Ok(self.store.token(source_name).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::ManualClock;
    use crate::store::Store;

    use std::sync::atomic::{AtomicUsize, Ordering};
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
        let (url, requests) = token_endpoint(30).await;
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::starting_at(T0_MILLIS);
        let service = service(dir.path(), &url, false, &clock);
        import(&service).await;
        let failing = failing_token_endpoint().await;
        let service = TokenService {
            settings: Arc::new(with_token_url(&service.settings, &failing)),
            ..service
        };
        clock.advance(Duration::from_secs(23));
        let e = service.access_token("mail").await.unwrap_err();
        assert!(matches!(e, TokenError::Transient { .. }), "{e}");

        // The provider is back, but within the backoff (5 s plus up to 25 % jitter) the
        // failure is repeated without a request.
        let service = TokenService {
            settings: Arc::new(with_token_url(&service.settings, &url)),
            ..service
        };
        clock.advance(Duration::from_millis(4_999));
        let again = service.access_token("mail").await.unwrap_err();
        assert_eq!(again.to_string(), e.to_string());
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        // Once the clock has passed it, the provider is asked again.
        clock.advance(Duration::from_millis(1_252));
        assert!(service.access_token("mail").await.unwrap().refreshed);
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    }

    fn with_token_url(settings: &Settings, url: &str) -> Settings {
        let mut settings = settings.clone();
        for p in settings.providers.values_mut() {
            p.token_url = Some(url.to_string());
        }
        settings
    }

    /// A token endpoint that answers every request with HTTP 500.
    async fn failing_token_endpoint() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        url
    }

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
        service.store.put_token("mail", &parked).await.unwrap();
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
}
