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
use super::provider::grant_binding;
use super::{AccessToken, Clock, ImportRefusal, TokenError, lock};
use crate::config::{Flow, ProviderSettings, Settings, SourceAuth, SourceSettings};
use crate::secret::Secret;
use crate::store::{GrantBinding, IdentitySource, StoredToken, TokenStore};
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
        let binding = grant_binding(source_name, provider);
        let mut record = self.store.token(&binding).await?.unwrap_or_default();
        if record.bound_elsewhere && provider.flow == Flow::AppOnly {
            // A client-credentials token is no grant: the new client simply asks for one.
            record = StoredToken::default();
        }
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
                self.store.put_token(&binding, &record).await?;
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
                self.store.put_token(&binding, &record).await?;
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
        let binding = grant_binding(source_name, provider);
        let kept_grant = self
            .store
            .token(&binding)
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
            bound_elsewhere: false,
        };
        self.store.put_token(&binding, &record).await?;
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
        let binding = self.binding(source_name)?;
        if let Some(mut record) = self.store.token(&binding).await?
            && !record.bound_elsewhere
        {
            record.access_token = None;
            record.access_expires_at = None;
            self.store.put_token(&binding, &record).await?;
        }
        Ok(())
    }

    /// What `tokens status` shows for one source.
    pub async fn status(&self, source_name: &str) -> Result<Option<StoredToken>, TokenError> {
        Ok(self.store.token(&self.binding(source_name)?).await?)
    }

    /// What the source's stored grant is bound to under the current configuration.
    pub fn binding(&self, source_name: &str) -> Result<GrantBinding, TokenError> {
        let (_, provider) = self.source(source_name)?;
        Ok(grant_binding(source_name, provider))
    }
}

#[cfg(test)]
mod tests;
