//! Initial consent: authorization code with PKCE and a loopback redirect (RFC 7636, RFC 8252),
//! or the device authorization grant (RFC 8628), followed by identity pinning: the account
//! that signed in must be the source's configured `username` (the delegate, for a shared
//! mailbox), or nothing is stored.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oauth2::{CsrfToken, PkceCodeChallenge};
use serde::Deserialize;

use super::loopback::LoopbackListener;
use super::{
    TokenError, TokenService, check_endpoint_url, classify_provider_error, default_scopes,
};
use crate::config::{Flow, ProviderKind, ProviderSettings, SourceSettings};
use crate::secret::Secret;
use crate::store::{IdentitySource, StoredToken};
use crate::telemetry::ErrorKind;

/// Why the provider's word on a grant's account could not be had.
#[derive(Debug)]
pub(super) enum IdentityError {
    /// The ID token failed its checks (another client's, another issuer's, expired).
    IdToken(IdTokenError),
    /// The discovery document (for the expected issuer) could not be had.
    Provider(TokenError),
}

/// Whether one of the provider's `names` for an account is `wanted`, ignoring case (how the
/// configured username is matched at consent, and an importer's word at import).
pub(super) fn names_include(names: &[String], wanted: &str) -> bool {
    let wanted = wanted.to_lowercase();
    names.iter().any(|n| n.to_lowercase() == wanted)
}

/// How `authorize` behaves.
#[derive(Debug, Clone)]
pub struct ConsentOptions {
    /// Try to open a browser (only when one is there: `$BROWSER` or a display).
    pub open_browser: bool,
    /// Give up waiting for the redirect or the device approval after this long.
    pub timeout: Duration,
}

/// What a successful consent produced.
#[derive(Debug, Clone)]
pub struct Consent {
    /// Who signed in (verified against the configured username).
    pub identity: String,
    /// Where the provider said so.
    pub identity_source: IdentitySource,
    pub refresh_token: Option<Secret>,
    pub access_token: Secret,
    pub expires_at: i64,
}

/// What the device flow shows the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceFlowEvent {
    Show {
        verification_uri: String,
        verification_uri_complete: Option<String>,
        user_code: String,
        expires_in: u64,
    },
    SlowDown {
        interval_secs: u64,
    },
}

/// A token-endpoint answer: status, body and any Retry-After.
struct FormAnswer {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<Duration>,
}

impl FormAnswer {
    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body of a 2xx answer; anything else classified as a provider error.
    fn into_body(self, provider: &str) -> Result<Vec<u8>, TokenError> {
        if self.is_success() {
            Ok(self.body)
        } else {
            Err(self.error(provider))
        }
    }

    fn error(&self, provider: &str) -> TokenError {
        classify_provider_error(provider, self.status, &self.body, self.retry_after, "")
    }
}

#[derive(Deserialize)]
struct TokenJson {
    access_token: String,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct DeviceJson {
    device_code: String,
    user_code: String,
    #[serde(alias = "verification_url")]
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    interval: Option<u64>,
}

fn consent_err(source: &str, reason: impl Into<String>) -> TokenError {
    TokenError::Consent {
        source_name: source.to_string(),
        reason: reason.into(),
    }
}

/// Why an ID token names no account: it is not one, or it was not issued to this client,
/// now, by the expected issuer. Never carries the token.
#[derive(Debug, thiserror::Error)]
pub enum IdTokenError {
    #[error("ID token is not a JWT")]
    NotJwt,
    #[error("ID token payload: {0}")]
    PayloadEncoding(base64::DecodeError),
    #[error("ID token payload: {0}")]
    PayloadJson(serde_json::Error),
    /// `audience` as the token has it (a JSON string or list).
    #[error("ID token audience {audience} is not this client ({client_id})")]
    Audience { audience: String, client_id: String },
    #[error("ID token has expired")]
    Expired,
    #[error("ID token issuer {issuer} is not {expected}")]
    Issuer { issuer: String, expected: String },
}

impl IdTokenError {
    /// The consent did not produce a usable grant: a `token` error, as every consent
    /// failure ([`TokenError::Consent`]).
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Token
    }
}

/// The account named by an ID token, after checking `aud` and `exp` at `now` (Unix
/// seconds; five minutes of clock skew allowed) and `iss` when the expected issuer is known.
/// The token comes straight from the token endpoint over TLS (or loopback), which OIDC
/// Core §3.1.3.7 accepts in place of a signature check.
pub fn identity_from_id_token(
    id_token: &str,
    client_id: &str,
    issuer: Option<&str>,
    now: i64,
) -> Result<Vec<String>, IdTokenError> {
    let payload = id_token.split('.').nth(1).ok_or(IdTokenError::NotJwt)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(IdTokenError::PayloadEncoding)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(IdTokenError::PayloadJson)?;
    let aud_ok = match &claims["aud"] {
        serde_json::Value::String(a) => a == client_id,
        serde_json::Value::Array(list) => list.iter().any(|a| a.as_str() == Some(client_id)),
        _ => false,
    };
    if !aud_ok {
        return Err(IdTokenError::Audience {
            audience: claims["aud"].to_string(),
            client_id: client_id.to_string(),
        });
    }
    if let Some(exp) = claims["exp"].as_i64()
        && exp.saturating_add(300) < now
    {
        return Err(IdTokenError::Expired);
    }
    if let (Some(expected), Some(iss)) = (issuer, claims["iss"].as_str())
        && !expected.contains("{tenantid}")
        && iss.trim_end_matches('/') != expected.trim_end_matches('/')
    {
        return Err(IdTokenError::Issuer {
            issuer: iss.to_string(),
            expected: expected.to_string(),
        });
    }
    if claims["email_verified"] == serde_json::Value::Bool(false) {
        // An unverified email proves nothing; other claims may still name the account.
        return Ok(["preferred_username", "upn"]
            .iter()
            .filter_map(|k| claims[*k].as_str().map(str::to_string))
            .collect());
    }
    Ok(["email", "preferred_username", "upn", "unique_name"]
        .iter()
        .filter_map(|k| claims[*k].as_str().map(str::to_string))
        .collect())
}

/// How `tokens status` names who consented to a grant: the account, marked when only the
/// importer said so (records written before this was kept are shown as they were).
pub fn consented_by(identity: Option<&str>, from: Option<IdentitySource>) -> String {
    match (identity, from) {
        (None, _) => "unknown (imported)".to_string(),
        (Some(who), Some(IdentitySource::Claimed)) => {
            format!("{who} (claimed at import, not verified)")
        }
        (Some(who), _) => who.to_string(),
    }
}

impl TokenService {
    fn consent_target(
        &self,
        source_name: &str,
    ) -> Result<(&SourceSettings, &ProviderSettings), TokenError> {
        let (source, provider) = self.source(source_name)?;
        if provider.flow == Flow::AppOnly {
            return Err(consent_err(
                source_name,
                format!(
                    "provider {} uses flow = \"app_only\" (client credentials): there is nothing to authorize; use `mailsluice test-login {source_name}`",
                    provider.name
                ),
            ));
        }
        Ok((source, provider))
    }

    async fn post_token_form(
        &self,
        provider: &ProviderSettings,
        url: &str,
        mut form: Vec<(&'static str, String)>,
    ) -> Result<FormAnswer, TokenError> {
        form.push(("client_id", provider.client_id.clone()));
        if let Some(secret) = self.client_secret(provider)? {
            form.push(("client_secret", secret.expose().to_string()));
        }
        let started = Instant::now();
        let resp =
            self.http
                .post(url)
                .form(&form)
                .send()
                .await
                .map_err(|e| TokenError::Transient {
                    provider: provider.name.clone(),
                    detail: e.without_url().to_string(),
                    retry_after: None,
                })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| super::parse_retry_after(v, self.now()));
        let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        crate::telemetry::token_refresh(
            &provider.name,
            if (200..300).contains(&status) {
                crate::telemetry::Outcome::Ok
            } else {
                crate::telemetry::Outcome::Error
            },
            started.elapsed().as_secs_f64(),
        );
        Ok(FormAnswer {
            status,
            body,
            retry_after,
        })
    }

    /// Exchanges a token response for a verified [`Consent`].
    async fn verified(
        &self,
        source: &SourceSettings,
        provider: &ProviderSettings,
        body: &[u8],
    ) -> Result<Consent, TokenError> {
        let tokens: TokenJson = serde_json::from_slice(body)
            .map_err(|e| consent_err(&source.name, format!("token response: {e}")))?;
        let expires_in = tokens
            .expires_in
            .as_ref()
            .and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .unwrap_or(super::DEFAULT_EXPIRES_IN);
        let expected = source.username.to_lowercase();
        let (names, identity_source) = match self
            .provider_identity(
                provider,
                tokens.id_token.as_deref(),
                &Secret::new(tokens.access_token.clone()),
            )
            .await
        {
            Ok(Some(named)) => named,
            Ok(None) => {
                return Err(consent_err(
                    &source.name,
                    format!(
                        "the provider did not say who signed in (no ID token or userinfo email); expected {expected}. Add the `openid email` scopes"
                    ),
                ));
            }
            Err(IdentityError::IdToken(e)) => return Err(consent_err(&source.name, e.to_string())),
            Err(IdentityError::Provider(e)) => return Err(e),
        };
        if !names_include(&names, &expected) {
            return Err(consent_err(
                &source.name,
                format!(
                    "signed in as {} but sources.{}.username is {}{}; nothing was stored. Sign in as {} (a browser already signed in as someone else picks that account: use a private window)",
                    names[0],
                    source.name,
                    source.username,
                    source
                        .shared_mailbox
                        .as_ref()
                        .map(|m| format!(" (the delegate for shared mailbox {m})"))
                        .unwrap_or_default(),
                    source.username
                ),
            ));
        }
        Ok(Consent {
            identity: names[0].clone(),
            identity_source,
            refresh_token: tokens.refresh_token.map(Secret::new),
            access_token: Secret::new(tokens.access_token),
            expires_at: self.now().saturating_add(expires_in),
        })
    }

    /// Who the provider says a grant belongs to, with where it said so: the names in the
    /// ID token of its token response (checked by [`identity_from_id_token`]), else those
    /// its userinfo endpoint gives for the grant's access token; `None` when it says
    /// neither. `authorize` and `tokens import` both ask this, so both pin the same way.
    pub(super) async fn provider_identity(
        &self,
        provider: &ProviderSettings,
        id_token: Option<&str>,
        access_token: &Secret,
    ) -> Result<Option<(Vec<String>, IdentitySource)>, IdentityError> {
        if let Some(id) = id_token {
            let issuer = self
                .discovery(provider)
                .await
                .map_err(IdentityError::Provider)?
                .and_then(|d| d.get("issuer").and_then(|v| v.as_str()).map(str::to_string));
            let names =
                identity_from_id_token(id, &provider.client_id, issuer.as_deref(), self.now())
                    .map_err(IdentityError::IdToken)?;
            if !names.is_empty() {
                return Ok(Some((names, IdentitySource::IdToken)));
            }
        }
        let names = self.userinfo_names(provider, access_token.expose()).await;
        Ok((!names.is_empty()).then_some((names, IdentitySource::Userinfo)))
    }

    async fn userinfo_names(&self, provider: &ProviderSettings, access_token: &str) -> Vec<String> {
        let Ok(Some(url)) = self.endpoint(provider, None, "userinfo_endpoint").await else {
            return Vec::new();
        };
        let Ok(resp) = self.http.get(&url).bearer_auth(access_token).send().await else {
            return Vec::new();
        };
        let Ok(info) = resp.json::<serde_json::Value>().await else {
            return Vec::new();
        };
        ["email", "preferred_username", "upn"]
            .iter()
            .filter_map(|k| info[*k].as_str().map(str::to_string))
            .collect()
    }

    /// Stores a verified consent (refresh token, access token, identity, time), flushed.
    pub async fn adopt(&self, source_name: &str, consent: &Consent) -> Result<(), TokenError> {
        let Some(refresh) = &consent.refresh_token else {
            return Err(consent_err(
                source_name,
                "the provider returned no refresh token (offline_access not granted; Google needs access_type=offline and prompt=consent)",
            ));
        };
        let t = self.now();
        let record = StoredToken {
            refresh_token: Some(refresh.expose().to_string()),
            access_token: Some(consent.access_token.expose().to_string()),
            access_expires_at: Some(consent.expires_at),
            refresh_token_last_used: Some(t),
            refresh_token_obtained: Some(t),
            identity: Some(consent.identity.clone()),
            identity_source: Some(consent.identity_source),
            needs_reauth: None,
            bound_elsewhere: false,
        };
        self.store
            .put_token(&self.binding(source_name)?, &record)
            .await?;
        super::lock(&self.backoff_until).remove(source_name);
        crate::telemetry::access_token_expiry(source_name, consent.expires_at);
        crate::telemetry::refresh_token_last_used(source_name, t);
        Ok(())
    }

    /// Authorization code + PKCE (S256) + state with a loopback redirect. `show_url` is
    /// called with the URL to open; the function returns once the browser came back.
    pub async fn authorize_with_browser(
        &self,
        source_name: &str,
        options: &ConsentOptions,
        show_url: impl FnOnce(&str),
    ) -> Result<Consent, TokenError> {
        let (source, provider) = self.consent_target(source_name)?;
        let auth_url = self
            .endpoint(
                provider,
                provider.authorization_url.as_ref(),
                "authorization_endpoint",
            )
            .await?
            .ok_or_else(|| {
                consent_err(
                    source_name,
                    format!("provider {} has no authorization endpoint", provider.name),
                )
            })?;
        let token_url = self.token_url(provider).await?;
        // RFC 8252 §7.3: loopback IP literal, any port; bind only to loopback.
        let (host, port, path) = loopback_parts(provider.redirect_uri.as_deref());
        let state = CsrfToken::new_random();
        let mut listener = LoopbackListener::start(&host, port, &path, state.secret())
            .map_err(|e| consent_err(source_name, e.to_string()))?;
        let redirect_uri = match &provider.redirect_uri {
            Some(configured) if port != 0 => configured.clone(),
            _ => format!("http://{host}:{}{path}", listener.port()),
        };
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let scopes = default_scopes(provider, Some(source)).join(" ");
        let mut url = reqwest::Url::parse(&auth_url)
            .map_err(|e| consent_err(source_name, format!("authorization endpoint: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &provider.client_id)
                .append_pair("redirect_uri", &redirect_uri)
                .append_pair("scope", &scopes)
                .append_pair("state", state.secret())
                .append_pair("code_challenge", challenge.as_str())
                .append_pair("code_challenge_method", "S256")
                .append_pair("login_hint", &source.username);
            if provider.kind == ProviderKind::Gmail {
                q.append_pair("access_type", "offline")
                    .append_pair("prompt", "consent");
            }
        }
        show_url(url.as_str());
        if options.open_browser {
            try_open_browser(url.as_str());
        }
        let code = listener
            .wait(options.timeout)
            .await
            .map_err(|e| consent_err(source_name, e.to_string()))?;
        let body = self
            .post_token_form(
                provider,
                &token_url,
                vec![
                    ("grant_type", "authorization_code".into()),
                    ("code", code),
                    ("redirect_uri", redirect_uri),
                    ("code_verifier", verifier.secret().clone()),
                ],
            )
            .await?
            .into_body(&provider.name)?;
        self.verified(source, provider, &body).await
    }

    /// Device authorization grant: `on_event` shows the code and URL; polls at the
    /// server's interval (5 s when it names none), +5 s on every `slow_down`.
    pub async fn authorize_device(
        &self,
        source_name: &str,
        options: &ConsentOptions,
        mut on_event: impl FnMut(DeviceFlowEvent),
    ) -> Result<Consent, TokenError> {
        let (source, provider) = self.consent_target(source_name)?;
        if provider.kind == ProviderKind::Gmail {
            return Err(consent_err(
                source_name,
                "Google does not allow Gmail scopes (https://mail.google.com/) in the device flow; run `mailsluice authorize` without --device (use --no-browser and open the printed link on any machine, then forward the loopback port)",
            ));
        }
        let device_url = self
            .endpoint(
                provider,
                provider.device_authorization_url.as_ref(),
                "device_authorization_endpoint",
            )
            .await?
            .ok_or_else(|| {
                consent_err(
                    source_name,
                    format!(
                        "provider {} has no device authorization endpoint",
                        provider.name
                    ),
                )
            })?;
        check_endpoint_url(&device_url)
            .map_err(|e| consent_err(source_name, format!("device authorization endpoint {e}")))?;
        let token_url = self.token_url(provider).await?;
        let scopes = default_scopes(provider, Some(source)).join(" ");
        let body = self
            .post_token_form(provider, &device_url, vec![("scope", scopes)])
            .await?
            .into_body(&provider.name)?;
        let device: DeviceJson = serde_json::from_slice(&body)
            .map_err(|e| consent_err(source_name, format!("device authorization response: {e}")))?;
        let expires = device.expires_in.unwrap_or(600);
        on_event(DeviceFlowEvent::Show {
            verification_uri: device.verification_uri.clone(),
            verification_uri_complete: device.verification_uri_complete.clone(),
            user_code: device.user_code.clone(),
            expires_in: expires,
        });
        let mut interval = device.interval.unwrap_or(5).max(1);
        let deadline = Instant::now() + options.timeout.min(Duration::from_secs(expires));
        loop {
            tokio::time::sleep(Duration::from_secs(interval)).await;
            if Instant::now() > deadline {
                return Err(consent_err(
                    source_name,
                    "the device code expired before it was approved; run authorize --device again",
                ));
            }
            let answer = self
                .post_token_form(
                    provider,
                    &token_url,
                    vec![
                        (
                            "grant_type",
                            "urn:ietf:params:oauth:grant-type:device_code".into(),
                        ),
                        ("device_code", device.device_code.clone()),
                    ],
                )
                .await?;
            if answer.is_success() {
                return self.verified(source, provider, &answer.body).await;
            }
            let error = serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|j| j.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .unwrap_or_default();
            match error.as_str() {
                "authorization_pending" => {}
                "slow_down" => {
                    interval += 5;
                    on_event(DeviceFlowEvent::SlowDown {
                        interval_secs: interval,
                    });
                }
                "access_denied" | "authorization_declined" => {
                    return Err(consent_err(
                        source_name,
                        format!("the sign-in was declined ({error}); nothing stored"),
                    ));
                }
                "expired_token" | "code_expired" => {
                    return Err(consent_err(
                        source_name,
                        format!("the device code expired ({error}); run authorize --device again"),
                    ));
                }
                _ => return Err(answer.error(&provider.name)),
            }
        }
    }
}

/// Host, port (0 = any) and path for the loopback listener, from `redirect_uri`.
fn loopback_parts(redirect_uri: Option<&str>) -> (String, u16, String) {
    let Some(uri) = redirect_uri.and_then(|u| reqwest::Url::parse(u).ok()) else {
        return ("127.0.0.1".into(), 0, "/callback".into());
    };
    let host = match uri.host_str() {
        Some("localhost") | None => "127.0.0.1".to_string(),
        Some(h) => h.trim_matches(['[', ']']).to_string(),
    };
    let path = if uri.path().is_empty() {
        "/".into()
    } else {
        uri.path().to_string()
    };
    (host, uri.port().unwrap_or(0), path)
}

/// Opens a browser when there is one (`$BROWSER`, or `xdg-open` with a display).
fn try_open_browser(url: &str) {
    let program = std::env::var("BROWSER").ok().or_else(|| {
        (std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some())
            .then(|| "xdg-open".to_string())
    });
    if let Some(p) = program {
        let _ = std::process::Command::new(p)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    const NOW: i64 = 1_900_000_000;

    #[test]
    fn id_token_claims_are_checked() {
        let t = jwt(
            serde_json::json!({"aud":"c","iss":"http://i","exp": NOW + 60, "email":"a@x", "preferred_username":"A@X"}),
        );
        assert_eq!(
            identity_from_id_token(&t, "c", Some("http://i"), NOW).unwrap(),
            vec!["a@x", "A@X"]
        );
        assert_eq!(
            identity_from_id_token(&t, "other", None, NOW)
                .unwrap_err()
                .to_string(),
            "ID token audience \"c\" is not this client (other)"
        );
        assert_eq!(
            identity_from_id_token(&t, "c", Some("http://j"), NOW)
                .unwrap_err()
                .to_string(),
            "ID token issuer http://i is not http://j"
        );
        let old = jwt(serde_json::json!({"aud":["c"],"exp": NOW - 3600, "email":"a@x"}));
        assert!(matches!(
            identity_from_id_token(&old, "c", None, NOW),
            Err(IdTokenError::Expired)
        ));
        assert!(matches!(
            identity_from_id_token("opaque", "c", None, NOW),
            Err(IdTokenError::NotJwt)
        ));
        assert!(matches!(
            identity_from_id_token("e30.!!.sig", "c", None, NOW),
            Err(IdTokenError::PayloadEncoding(_))
        ));
        let not_json = format!("e30.{}.sig", URL_SAFE_NO_PAD.encode("[1,"));
        let e = identity_from_id_token(&not_json, "c", None, NOW).unwrap_err();
        assert!(matches!(e, IdTokenError::PayloadJson(_)), "{e:?}");
        assert!(e.to_string().starts_with("ID token payload: "), "{e}");
        assert_eq!(e.kind(), ErrorKind::Token);
        // Five minutes of clock skew are allowed, not a second more.
        let skewed = jwt(serde_json::json!({"aud":"c","exp": NOW - 300, "email":"a@x"}));
        assert!(identity_from_id_token(&skewed, "c", None, NOW).is_ok());
        assert!(identity_from_id_token(&skewed, "c", None, NOW + 1).is_err());
        let unverified = jwt(serde_json::json!({"aud":"c","email":"a@x","email_verified":false}));
        assert!(
            identity_from_id_token(&unverified, "c", None, NOW)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn only_the_importers_word_is_shown_as_claimed() {
        assert_eq!(
            consented_by(Some("a@x"), Some(IdentitySource::Claimed)),
            "a@x (claimed at import, not verified)"
        );
        assert_eq!(
            consented_by(Some("a@x"), Some(IdentitySource::IdToken)),
            "a@x"
        );
        assert_eq!(
            consented_by(Some("a@x"), Some(IdentitySource::Userinfo)),
            "a@x"
        );
        assert_eq!(consented_by(Some("a@x"), None), "a@x");
        assert_eq!(consented_by(None, None), "unknown (imported)");
    }

    #[test]
    fn loopback_defaults() {
        assert_eq!(
            loopback_parts(None),
            ("127.0.0.1".into(), 0, "/callback".into())
        );
        assert_eq!(
            loopback_parts(Some("http://localhost:8765/cb")),
            ("127.0.0.1".into(), 8765, "/cb".into())
        );
    }
}
