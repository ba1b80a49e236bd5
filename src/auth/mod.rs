//! OAuth2 for mail sources: provider endpoints, the token model, refresh and client
//! credentials through the `oauth2` crate, and the classification of a provider's answer
//! into "re-authorize", "fix the configuration" or "retry later".
//!
//! [`TokenService`] holds the logic and is used directly by the CLI and, through the
//! TokenManager actor (which serializes refreshes per credential), by the collectors.

mod consent;
mod errors;
pub mod horizons;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oauth2::basic::BasicClient;
use oauth2::{ClientId, ClientSecret, RefreshToken, Scope, TokenResponse, TokenUrl};

use crate::config::{Flow, ProviderKind, ProviderSettings, Settings, SourceAuth, SourceSettings};
use crate::secret::Secret;
use crate::store::{Store, StoredToken};
use crate::telemetry::{self, Outcome};

pub use consent::{Consent, ConsentOptions, DeviceFlowEvent, identity_from_id_token};
pub use errors::{TokenError, classify_provider_error};

/// An access token ready for SASL, with its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token: Secret,
    /// Unix seconds.
    pub expires_at: i64,
    /// True when this call got it from the provider, false when it was the stored one.
    pub refreshed: bool,
}

/// Used when a token response carries no `expires_in`: short, so a token of unknown
/// lifetime is replaced early rather than used after it died.
const DEFAULT_EXPIRES_IN: i64 = 600;

/// Default delegated scopes by provider kind and protocol (PROTOCOLS §1.2, §2.2).
pub fn default_scopes(provider: &ProviderSettings, source: Option<&SourceSettings>) -> Vec<String> {
    if let Some(s) = &provider.scopes {
        return s.clone();
    }
    let pop = source.is_some_and(|s| s.protocol == crate::config::Protocol::Pop3);
    match (provider.kind, provider.flow) {
        (ProviderKind::Office365, Flow::AppOnly) => {
            vec!["https://outlook.office365.com/.default".into()]
        }
        (ProviderKind::Office365, Flow::Delegated) => vec![
            if pop {
                "https://outlook.office.com/POP.AccessAsUser.All".into()
            } else {
                "https://outlook.office.com/IMAP.AccessAsUser.All".into()
            },
            "offline_access".into(),
            "openid".into(),
            "email".into(),
            "profile".into(),
        ],
        // `openid email`: an ID token saying who consented (identity check at `authorize`).
        (ProviderKind::Gmail, _) => vec![
            "https://mail.google.com/".into(),
            "openid".into(),
            "email".into(),
        ],
        // Client credentials at a generic provider: whatever the client is allowed; ask for
        // nothing specific unless configured.
        (ProviderKind::Oidc, Flow::AppOnly) => Vec::new(),
        (ProviderKind::Oidc, Flow::Delegated) => {
            vec!["openid".into(), "offline_access".into(), "email".into()]
        }
    }
}

/// The raw HTTP answer of the last token request, kept because the oauth2 crate's errors
/// drop the status and headers we need (Retry-After, Microsoft's error_codes).
#[derive(Debug, Clone, Default)]
struct RawAnswer {
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

pub struct TokenService {
    settings: Arc<Settings>,
    store: Arc<Store>,
    http: reqwest::Client,
    /// OIDC discovery documents, by provider name.
    discovered: Mutex<BTreeMap<String, serde_json::Value>>,
    /// Per credential: no provider request before this instant (after a transient error).
    backoff_until: Mutex<BTreeMap<String, (Instant, TokenError)>>,
    margin: Duration,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService").finish_non_exhaustive()
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn parse_retry_after(v: &str) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
    let secs = (when.timestamp() - now()).max(0) as u64;
    Some(Duration::from_secs(secs))
}

impl TokenService {
    pub fn new(settings: Arc<Settings>, store: Arc<Store>) -> Result<TokenService, String> {
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
            let pem = std::fs::read(ca).map_err(|e| format!("tls.extra_ca_file: {e}"))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("tls.extra_ca_file: {e}"))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| format!("http client: {e}"))?;
        Ok(TokenService {
            margin: settings.node.token_refresh_margin,
            settings,
            store,
            http,
            discovered: Mutex::new(BTreeMap::new()),
            backoff_until: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn source(&self, name: &str) -> Result<(&SourceSettings, &ProviderSettings), TokenError> {
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

    /// The provider's OIDC discovery document (fetched once, cached), or `None` when the
    /// provider has no `issuer`.
    async fn discovery(
        &self,
        provider: &ProviderSettings,
    ) -> Result<Option<serde_json::Value>, TokenError> {
        let Some(issuer) = &provider.issuer else {
            return Ok(None);
        };
        if let Some(doc) = lock(&self.discovered).get(&provider.name) {
            return Ok(Some(doc.clone()));
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let transient = |detail: String| TokenError::Transient {
            provider: provider.name.clone(),
            detail,
            retry_after: None,
        };
        let doc: serde_json::Value = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| transient(format!("discovery {url}: {e}")))?
            .error_for_status()
            .map_err(|e| transient(format!("discovery {url}: {e}")))?
            .json()
            .await
            .map_err(|e| transient(format!("discovery {url}: {e}")))?;
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer.trim_end_matches('/'))
            && doc.get("issuer").and_then(|v| v.as_str()) != Some(issuer.as_str())
        {
            return Err(TokenError::ProviderConfig {
                provider: provider.name.clone(),
                code: "discovery".into(),
                description: format!(
                    "{url} names issuer {} instead of {issuer}",
                    doc.get("issuer").cloned().unwrap_or_default()
                ),
                action: "set providers.*.issuer to the provider's exact issuer".into(),
            });
        }
        lock(&self.discovered).insert(provider.name.clone(), doc.clone());
        Ok(Some(doc))
    }

    /// An endpoint: configured (or derived from the kind), else from discovery
    /// (`discovery_key`, e.g. `token_endpoint`). Discovered URLs must be https or loopback.
    async fn endpoint(
        &self,
        provider: &ProviderSettings,
        configured: Option<&String>,
        discovery_key: &str,
    ) -> Result<Option<String>, TokenError> {
        if let Some(url) = configured {
            return Ok(Some(url.clone()));
        }
        let Some(doc) = self.discovery(provider).await? else {
            return Ok(None);
        };
        let Some(url) = doc.get(discovery_key).and_then(|v| v.as_str()) else {
            return Ok(None);
        };
        check_endpoint_url(url).map_err(|e| TokenError::ProviderConfig {
            provider: provider.name.clone(),
            code: "discovery".into(),
            description: format!("discovered {discovery_key} {url}: {e}"),
            action: "use an https issuer".into(),
        })?;
        Ok(Some(url.to_string()))
    }

    /// The token endpoint: configured, derived from the kind, or found by discovery.
    async fn token_url(&self, provider: &ProviderSettings) -> Result<String, TokenError> {
        self.endpoint(provider, provider.token_url.as_ref(), "token_endpoint")
            .await?
            .ok_or_else(|| TokenError::ProviderConfig {
                provider: provider.name.clone(),
                code: "no_token_endpoint".into(),
                description:
                    "provider has neither token_url nor an issuer whose discovery names one".into(),
                action: "set issuer (discovery) or token_url".into(),
            })
    }

    fn client_secret(&self, provider: &ProviderSettings) -> Result<Option<Secret>, TokenError> {
        match &provider.client_secret {
            None => Ok(None),
            Some(r) => crate::config::read_secret(r)
                .map(|s| Some(Secret::new(s)))
                .map_err(|e| TokenError::ProviderConfig {
                    provider: provider.name.clone(),
                    code: "client_secret".into(),
                    description: e,
                    action: "provide the client secret".into(),
                }),
        }
    }

    /// A valid access token for `source`: the stored one while it is valid beyond the
    /// margin, otherwise a new one from the provider (persisted before it is returned).
    /// Not serialized here: callers go through the TokenManager, which is.
    pub async fn access_token(&self, source_name: &str) -> Result<AccessToken, TokenError> {
        let (source, provider) = self.source(source_name)?;
        let mut record = self.store.token(source_name)?.unwrap_or_default();
        if let Some(reason) = &record.needs_reauth {
            return Err(TokenError::NeedsReauth {
                source_name: source_name.to_string(),
                reason: reason.clone(),
            });
        }
        if let (Some(tok), Some(exp)) = (&record.access_token, record.access_expires_at)
            && exp - now() > self.margin.as_secs() as i64
        {
            telemetry::access_token_expiry(source_name, exp);
            if let Some(used) = record.refresh_token_last_used {
                telemetry::refresh_token_last_used(source_name, used);
            }
            return Ok(AccessToken {
                token: Secret::new(tok.clone()),
                expires_at: exp,
                refreshed: false,
            });
        }
        if let Some((until, err)) = lock(&self.backoff_until).get(source_name)
            && Instant::now() < *until
        {
            return Err(err.clone());
        }
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
            Ok((access, expires_at, rotated)) => {
                lock(&self.backoff_until).remove(source_name);
                let t = now();
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
                lock(&self.backoff_until)
                    .insert(source_name.to_string(), (Instant::now() + wait, e.clone()));
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
        let mut record = self.store.token(source_name)?.unwrap_or_default();
        record.refresh_token = Some(refresh_token.expose().to_string());
        record.refresh_token_obtained = Some(now());
        record.identity = identity;
        record.access_token = None;
        record.access_expires_at = None;
        record.needs_reauth = None;
        self.store.put_token(source_name, &record).await?;
        lock(&self.backoff_until).remove(source_name);
        self.access_token(source_name).await
    }

    /// Performs one token endpoint request with `oauth2`, keeping the raw answer.
    async fn token_request<F, Fut, R>(
        &self,
        provider: &ProviderSettings,
        run: F,
    ) -> Result<R, TokenError>
    where
        F: FnOnce(
            BasicClientWithToken,
            Arc<dyn Fn(oauth2::HttpRequest) -> HttpFuture + Send + Sync>,
        ) -> Fut,
        Fut: std::future::Future<Output = Result<R, String>>,
    {
        let token_url = self.token_url(provider).await?;
        let mut client = BasicClient::new(ClientId::new(provider.client_id.clone())).set_token_uri(
            TokenUrl::new(token_url.clone()).map_err(|e| TokenError::ProviderConfig {
                provider: provider.name.clone(),
                code: "token_url".into(),
                description: e.to_string(),
                action: "fix the token endpoint URL".into(),
            })?,
        );
        if let Some(secret) = self.client_secret(provider)? {
            client = client
                .set_client_secret(ClientSecret::new(secret.expose().to_string()))
                .set_auth_type(oauth2::AuthType::RequestBody);
        }
        let raw = Arc::new(Mutex::new(RawAnswer::default()));
        let http = self.http.clone();
        let raw_w = raw.clone();
        let send: Arc<dyn Fn(oauth2::HttpRequest) -> HttpFuture + Send + Sync> =
            Arc::new(move |req: oauth2::HttpRequest| {
                let http = http.clone();
                let raw = raw_w.clone();
                Box::pin(async move {
                    let (parts, body) = req.into_parts();
                    let mut rb = http.request(parts.method, parts.uri.to_string()).body(body);
                    for (k, v) in parts.headers.iter() {
                        rb = rb.header(k, v);
                    }
                    let resp = rb
                        .send()
                        .await
                        .map_err(|e| HttpError(e.without_url().to_string()))?;
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let bytes = resp
                        .bytes()
                        .await
                        .map_err(|e| HttpError(e.without_url().to_string()))?
                        .to_vec();
                    {
                        let mut r = lock(&raw);
                        r.status = status.as_u16();
                        r.retry_after = headers
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(parse_retry_after);
                        r.body = bytes.clone();
                    }
                    let mut out = oauth2::http::Response::builder().status(status.as_u16());
                    for (k, v) in headers.iter() {
                        out = out.header(k.as_str(), v.as_bytes());
                    }
                    out.body(bytes).map_err(|e| HttpError(e.to_string()))
                }) as HttpFuture
            });
        let started = Instant::now();
        let result = run(client, send).await;
        let seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(r) => {
                telemetry::token_refresh(&provider.name, Outcome::Ok, seconds);
                Ok(r)
            }
            Err(transport) => {
                telemetry::token_refresh(&provider.name, Outcome::Error, seconds);
                let raw = lock(&raw).clone();
                Err(classify_provider_error(
                    &provider.name,
                    raw.status,
                    &raw.body,
                    raw.retry_after,
                    &transport,
                ))
            }
        }
    }

    async fn refresh(
        &self,
        _source: &SourceSettings,
        provider: &ProviderSettings,
        refresh_token: &Secret,
    ) -> Result<(Secret, i64, Option<Secret>), TokenError> {
        let rt = RefreshToken::new(refresh_token.expose().to_string());
        self.token_request(provider, |client, send| async move {
            let resp = client
                .exchange_refresh_token(&rt)
                .request_async(&|req| send(req))
                .await
                .map_err(|e| e.to_string())?;
            Ok(token_parts(&resp))
        })
        .await
    }

    async fn client_credentials(
        &self,
        source: &SourceSettings,
        provider: &ProviderSettings,
    ) -> Result<(Secret, i64, Option<Secret>), TokenError> {
        let scopes = default_scopes(provider, Some(source));
        self.token_request(provider, |client, send| async move {
            let resp = client
                .exchange_client_credentials()
                .add_scopes(scopes.into_iter().map(Scope::new))
                .request_async(&|req| send(req))
                .await
                .map_err(|e| e.to_string())?;
            let (a, e, _) = token_parts(&resp);
            Ok((a, e, None))
        })
        .await
    }

    /// Forgets the stored access token (the server refused it), keeping the refresh token.
    pub async fn invalidate_access_token(&self, source_name: &str) -> Result<(), TokenError> {
        if let Some(mut record) = self.store.token(source_name)? {
            record.access_token = None;
            record.access_expires_at = None;
            self.store.put_token(source_name, &record).await?;
        }
        Ok(())
    }

    /// What `tokens status` shows for one source.
    pub fn status(&self, source_name: &str) -> Result<Option<StoredToken>, TokenError> {
        Ok(self.store.token(source_name)?)
    }
}

type BasicClientWithToken = oauth2::basic::BasicClient<
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointNotSet,
    oauth2::EndpointSet,
>;

type HttpFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send>,
>;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

fn token_parts(resp: &oauth2::basic::BasicTokenResponse) -> (Secret, i64, Option<Secret>) {
    let expires_in = resp
        .expires_in()
        .map(|d| d.as_secs() as i64)
        .unwrap_or(DEFAULT_EXPIRES_IN);
    (
        Secret::new(resp.access_token().secret().clone()),
        now() + expires_in,
        resp.refresh_token()
            .map(|r| Secret::new(r.secret().clone())),
    )
}

/// https, or http on a loopback address only (local test servers).
fn check_endpoint_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err("must be an https URL".into());
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let loopback = host == "localhost"
        || host == "[::1]"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err("must use https (http is allowed only on loopback)".into())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update of a cache; the data
    // is still a valid map.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert!(parse_retry_after("soon").is_none());
    }
}
