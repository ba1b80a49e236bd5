//! [`TokenService`]: a source's access token from the store while it is good beyond the
//! refresh margin, else a new one from the provider, persisted before anyone uses it (with
//! rotation the old refresh token may already be spent). A refresh token the provider
//! refuses marks the source as needing re-authorization; a transient failure backs the
//! credential off, with jitter, so the provider is not asked again before the clock passes
//! the backoff.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{AccessToken, Clock, TokenError, lock};
use crate::config::{Flow, ProviderSettings, Settings, SourceAuth, SourceSettings};
use crate::secret::Secret;
use crate::store::{StoredToken, TokenStore};
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
    #[error("tls.extra_ca_file {}: {reason}", path.display())]
    CaFileUnreadable {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("tls.extra_ca_file {}: not a usable PEM certificate bundle: {reason}", path.display())]
    CaFileInvalid { path: PathBuf, reason: String },
    #[error("HTTP client for token endpoints: {reason}")]
    HttpClient { reason: String },
}

/// A reqwest error with its causes: its own Display is only the category ("builder error").
fn with_causes(e: &reqwest::Error) -> String {
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
        let mut builder = reqwest::Client::builder()
            // A provider that does not answer within node.read_timeout_secs is down for now.
            .timeout(settings.node.read_timeout)
            .connect_timeout(settings.node.connect_timeout)
            // Token endpoints must not redirect (a redirect could carry a secret elsewhere).
            .redirect(reqwest::redirect::Policy::none())
            .https_only(false)
            .min_tls_version(match settings.tls.min_version {
                crate::config::TlsVersion::V1_2 => reqwest::tls::Version::TLS_1_2,
                crate::config::TlsVersion::V1_3 => reqwest::tls::Version::TLS_1_3,
            });
        if let Some(ca) = &settings.tls.extra_ca_file {
            let pem = std::fs::read(ca).map_err(|reason| SetupError::CaFileUnreadable {
                path: ca.clone(),
                reason,
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                SetupError::CaFileInvalid {
                    path: ca.clone(),
                    reason: with_causes(&e),
                }
            })? {
                builder = builder.add_root_certificate(cert);
            }
        }
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
    /// before it is returned). Not serialized here: callers go through the TokenManager,
    /// which is.
    pub async fn access_token(&self, source_name: &str) -> Result<AccessToken, TokenError> {
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
                self.refresh(source, provider, &Secret::new(refresh)).await
            }
        };
        match result {
            Ok((access, expires_in, rotated)) => {
                lock(&self.backoff_until).remove(source_name);
                lock(&self.lifetimes).insert(source_name.to_string(), expires_in);
                let expires_at = requested.saturating_add(expires_in);
                let t = self.now();
                record.access_token = Some(access.expose().to_string());
                record.access_expires_at = Some(expires_at);
                if provider.flow == Flow::Delegated {
                    if let Some(r) = rotated {
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
                    token: access,
                    expires_at,
                    renew_at: expires_at - refresh_margin_secs(self.margin, Some(expires_in)),
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

    /// Stores a refresh token obtained elsewhere and proves it with one refresh.
    /// `identity` is who consented, when known (an `authorize` run handing its result to a
    /// running node).
    pub async fn import(
        &self,
        source_name: &str,
        refresh_token: Secret,
        identity: Option<String>,
    ) -> Result<AccessToken, TokenError> {
        let (_, provider) = self.source(source_name)?;
        if provider.flow == Flow::AppOnly {
            return Err(TokenError::Unknown(format!(
                "source {source_name:?} uses app_only (client credentials): it has no refresh token"
            )));
        }
        let mut record = self.store.token(source_name).await?.unwrap_or_default();
        record.refresh_token = Some(refresh_token.expose().to_string());
        record.refresh_token_obtained = Some(self.now());
        record.identity = identity;
        record.access_token = None;
        record.access_expires_at = None;
        record.needs_reauth = None;
        self.store.put_token(source_name, &record).await?;
        lock(&self.backoff_until).remove(source_name);
        self.access_token(source_name).await
    }

    /// Forgets the stored access token (the server refused it), keeping the refresh token.
    pub async fn invalidate_access_token(&self, source_name: &str) -> Result<(), TokenError> {
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
        let store = Store::open(&settings.node.data_dir, &settings.node.secret_key_file).unwrap();
        TokenService::new(Arc::new(settings), Arc::new(store))
            .unwrap()
            .with_clock(clock.clock())
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
        assert!(matches!(e, SetupError::CaFileUnreadable { .. }), "{e:?}");
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
}
