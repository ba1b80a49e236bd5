//! One request to a provider's token endpoint (refresh or client credentials) through the
//! `oauth2` crate, sent with the service's HTTP client (no redirects, the configured TLS
//! floor and CA). The raw status, body and Retry-After are kept beside the crate's error,
//! because classifying a refusal needs them; a request's outcome and latency are counted
//! per provider.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    ClientId, ClientSecret, EndpointNotSet, EndpointSet, ExtraTokenFields, RefreshToken, Scope,
    StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use serde::{Deserialize, Serialize};

use super::{TokenError, TokenService, classify_provider_error, default_scopes, lock};
use crate::config::{ProviderSettings, SourceSettings};
use crate::secret::Secret;
use crate::telemetry::{self, Outcome};

/// Used when a token response carries no `expires_in`: short, so a token of unknown
/// lifetime is replaced early rather than used after it died.
pub(super) const DEFAULT_EXPIRES_IN: i64 = 600;

/// The raw HTTP answer of the last token request, kept because the oauth2 crate's errors
/// drop the status and headers we need (Retry-After, Microsoft's error_codes).
#[derive(Debug, Clone, Default)]
struct RawAnswer {
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
    /// Why no answer arrived, with its causes (an untrusted certificate, a refused
    /// connection): the OAuth2 client's own error says only "Request failed".
    transport: Option<String>,
}

/// A Retry-After value: delay seconds, or an HTTP date counted from `now` (Unix seconds).
pub(super) fn parse_retry_after(v: &str, now: i64) -> Option<Duration> {
    if let Ok(secs) = v.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v.trim()).ok()?;
    let secs = u64::try_from(when.timestamp() - now).unwrap_or(0);
    Some(Duration::from_secs(secs))
}

impl TokenService {
    /// Performs one token endpoint request with `oauth2`, keeping the raw answer.
    async fn token_request<F, Fut, R>(
        &self,
        provider: &ProviderSettings,
        run: F,
    ) -> Result<R, TokenError>
    where
        F: FnOnce(
            OidcClientWithToken,
            Arc<dyn Fn(oauth2::HttpRequest) -> HttpFuture + Send + Sync>,
        ) -> Fut,
        Fut: std::future::Future<Output = Result<R, String>>,
    {
        let token_url = self.token_url(provider).await?;
        let mut client = OidcClient::new(ClientId::new(provider.client_id.clone())).set_token_uri(
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
        let clock = self.clock.clone();
        let send: Arc<dyn Fn(oauth2::HttpRequest) -> HttpFuture + Send + Sync> =
            Arc::new(move |req: oauth2::HttpRequest| {
                let http = http.clone();
                let raw = raw_w.clone();
                let clock = clock.clone();
                Box::pin(async move {
                    let (parts, body) = req.into_parts();
                    let mut rb = http.request(parts.method, parts.uri.to_string()).body(body);
                    for (k, v) in parts.headers.iter() {
                        rb = rb.header(k, v);
                    }
                    let resp = match rb.send().await {
                        Ok(resp) => resp,
                        Err(e) => {
                            let why = super::service::with_causes(&e.without_url());
                            lock(&raw).transport = Some(why.clone());
                            return Err(HttpError(why));
                        }
                    };
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
                            .and_then(|v| parse_retry_after(v, clock.unix_secs()));
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
                    raw.transport.as_deref().unwrap_or(&transport),
                ))
            }
        }
    }

    /// One refresh with `refresh_token`. Nothing is stored: the caller decides what the
    /// answer replaces.
    pub(super) async fn refresh(
        &self,
        provider: &ProviderSettings,
        refresh_token: &Secret,
    ) -> Result<Granted, TokenError> {
        let rt = RefreshToken::new(refresh_token.expose().to_string());
        self.token_request(provider, |client, send| async move {
            let resp = client
                .exchange_refresh_token(&rt)
                .request_async(&|req| send(req))
                .await
                .map_err(|e| e.to_string())?;
            Ok(Granted::from(&resp))
        })
        .await
    }

    pub(super) async fn client_credentials(
        &self,
        source: &SourceSettings,
        provider: &ProviderSettings,
    ) -> Result<Granted, TokenError> {
        let scopes = default_scopes(provider, Some(source));
        self.token_request(provider, |client, send| async move {
            let resp = client
                .exchange_client_credentials()
                .add_scopes(scopes.into_iter().map(Scope::new))
                .request_async(&|req| send(req))
                .await
                .map_err(|e| e.to_string())?;
            // Client credentials have no refresh token and name no user.
            Ok(Granted {
                refresh_token: None,
                id_token: None,
                ..Granted::from(&resp)
            })
        })
        .await
    }
}

/// The OIDC `id_token` beside the OAuth2 fields of a token response: a refresh with `openid`
/// granted carries one, and it is what tells an imported grant's account.
#[derive(Clone, Default, Deserialize, Serialize)]
pub(super) struct IdTokenField {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}

impl std::fmt::Debug for IdTokenField {
    // An ID token names a person: it stays out of logs like the tokens beside it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdTokenField")
            .field(
                "id_token",
                &self.id_token.as_ref().map(|_| Secret::default()),
            )
            .finish()
    }
}

impl ExtraTokenFields for IdTokenField {}

type OidcTokenResponse = StandardTokenResponse<IdTokenField, BasicTokenType>;

type OidcClient<HasTokenUrl = EndpointNotSet> = oauth2::Client<
    BasicErrorResponse,
    OidcTokenResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    HasTokenUrl,
>;

type OidcClientWithToken = OidcClient<EndpointSet>;

type HttpFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<oauth2::HttpResponse, HttpError>> + Send>,
>;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

/// What a token endpoint granted.
#[derive(Debug, Clone)]
pub(super) struct Granted {
    pub(super) access_token: Secret,
    /// The access token's lifetime in seconds (`expires_in`, else [`DEFAULT_EXPIRES_IN`]).
    pub(super) expires_in: i64,
    /// A new refresh token, when the provider rotates them: the one presented may be spent.
    pub(super) refresh_token: Option<Secret>,
    /// The OIDC ID token, when the provider sent one.
    pub(super) id_token: Option<Secret>,
}

impl From<&OidcTokenResponse> for Granted {
    fn from(resp: &OidcTokenResponse) -> Granted {
        Granted {
            access_token: Secret::new(resp.access_token().secret().clone()),
            expires_in: resp
                .expires_in()
                .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .unwrap_or(DEFAULT_EXPIRES_IN),
            refresh_token: resp
                .refresh_token()
                .map(|r| Secret::new(r.secret().clone())),
            id_token: resp.extra_fields().id_token.clone().map(Secret::new),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = 1_700_000_000; // Tue, 14 Nov 2023 22:13:20 GMT
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert!(parse_retry_after("soon", now).is_none());
    }
}
