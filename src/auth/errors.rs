//! What a provider's error answer means for the operator (PROTOCOLS §1.10, RFC 6749 §5.2).

use std::time::Duration;

use crate::store::StoreError;
use crate::telemetry::ErrorKind;

#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The grant is gone (revoked, expired, consent withdrawn): only a new consent helps.
    #[error("provider {provider}: {code}: {description}; action: {action}")]
    Reauth {
        provider: String,
        code: String,
        description: String,
        action: String,
    },
    /// The source is parked until someone re-authorizes it; no provider request is made.
    #[error("source {source_name} needs re-authorization: {reason}")]
    NeedsReauth { source_name: String, reason: String },
    /// The app registration or client secret is wrong: an operator must fix the provider.
    #[error("provider {provider}: {code}: {description}; action: {action}")]
    ProviderConfig {
        provider: String,
        code: String,
        description: String,
        action: String,
    },
    /// Network trouble, 5xx, throttling: try again later.
    #[error("provider {provider}: temporary failure: {detail}")]
    Transient {
        provider: String,
        detail: String,
        retry_after: Option<Duration>,
    },
    /// Consent (authorize) did not produce a usable grant; nothing was stored.
    #[error("source {source_name}: authorization failed: {reason}")]
    Consent { source_name: String, reason: String },
    /// A refresh token offered for import was not adopted. Nothing was written: a grant
    /// stored before keeps working, so this never parks the source.
    #[error(
        "source {source_name}: refresh token not imported: {refusal}; {}",
        if *.kept_grant { "the stored grant was left unchanged" } else { "nothing was stored" }
    )]
    ImportRefused {
        source_name: String,
        refusal: ImportRefusal,
        /// Whether a grant (a refresh token) was stored for the source, and still is.
        kept_grant: bool,
    },
    #[error("{0}")]
    Unknown(String),
    #[error("{0}")]
    Store(String),
}

/// Why `tokens import` (or the import API) did not adopt a refresh token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImportRefusal {
    /// The proving refresh failed: the provider refused the token (its error code is in
    /// here, e.g. `invalid_grant`), or it could not be asked.
    #[error("{}", refresh_failure(.0))]
    Refresh(Box<TokenError>),
    /// The refresh answer's ID token failed its checks (another client's or issuer's,
    /// expired). Shared, as the errors holding it are cloned for every asker.
    #[error("the provider's ID token: {0}")]
    IdToken(std::sync::Arc<super::IdTokenError>),
    /// The provider names the grant's account, and it is not the one the importer named.
    #[error(
        "the provider says the grant belongs to {provider_says}, but the import named {claimed}"
    )]
    IdentityMismatch {
        claimed: String,
        provider_says: String,
    },
    /// The provider names the grant's account, and it is not the source's `username` (the
    /// same pinning as `authorize`).
    #[error(
        "the provider says the grant belongs to {provider_says}, but the source's username is {username}"
    )]
    WrongAccount {
        username: String,
        provider_says: String,
    },
}

/// A failed proving refresh in the words of an import: a refusal names the provider and its
/// code without the "re-authorize" action, since the stored grant still works.
fn refresh_failure(e: &TokenError) -> String {
    match e {
        TokenError::Reauth {
            provider,
            code,
            description,
            ..
        } if description.is_empty() => format!("provider {provider} refused it: {code}"),
        TokenError::Reauth {
            provider,
            code,
            description,
            ..
        } => format!("provider {provider} refused it: {code}: {description}"),
        other => other.to_string(),
    }
}

impl From<StoreError> for TokenError {
    fn from(e: StoreError) -> Self {
        TokenError::Store(e.to_string())
    }
}

impl TokenError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            TokenError::Store(_) => ErrorKind::Store,
            _ => ErrorKind::Token,
        }
    }

    pub fn needs_reauth(&self) -> bool {
        matches!(
            self,
            TokenError::Reauth { .. } | TokenError::NeedsReauth { .. }
        )
    }
}

/// AADSTS codes (PROTOCOLS §1.10): meaning and action.
fn aadsts(code: u64) -> Option<(&'static str, &'static str, bool)> {
    // (meaning, action, needs re-consent)
    Some(match code {
        70000 => ("refresh token not valid", "re-authorize the source", true),
        70008 => (
            "refresh token expired or revoked",
            "re-authorize the source",
            true,
        ),
        700082 => (
            "refresh token expired after 90 days unused",
            "re-authorize the source",
            true,
        ),
        700084 => (
            "SPA refresh token lifetime ended",
            "re-authorize; do not register the redirect as spa",
            true,
        ),
        50173 => (
            "grant revoked (password change or revoke)",
            "re-authorize the source",
            true,
        ),
        50132 | 50133 => (
            "session invalid after password change",
            "re-authorize the source",
            true,
        ),
        70043 => (
            "Conditional Access sign-in frequency reached",
            "re-authorize the source",
            true,
        ),
        50076 | 50079 | 50078 | 50074 => (
            "multi-factor authentication required",
            "re-authorize interactively",
            true,
        ),
        65001 => (
            "consent missing for the app or scope",
            "re-authorize with consent, or ask an admin to consent",
            true,
        ),
        65004 => ("user declined consent", "re-authorize and accept", true),
        50034 | 50057 | 50053 | 50055 | 50126 => (
            "account not usable (missing, disabled, locked or password expired)",
            "fix the account, then re-authorize",
            true,
        ),
        7000215 => (
            "invalid client secret",
            "put the current client secret in client_secret_env/_file",
            false,
        ),
        7000222 => (
            "client secret expired",
            "create a new client secret for the app registration and configure it",
            false,
        ),
        7000218 => (
            "public client flows disabled for the app",
            "enable 'Allow public client flows' or configure a client secret",
            false,
        ),
        700025 => (
            "client secret sent by a public client",
            "remove the client secret from the provider",
            false,
        ),
        700016 | 700011 => (
            "application not found in the tenant",
            "check client_id and tenant",
            false,
        ),
        500011 => (
            "resource (Exchange Online) not present in the tenant",
            "check the tenant has Exchange Online",
            false,
        ),
        53003 | 530032 | 530035 => (
            "blocked by Conditional Access or security policy",
            "ask the tenant admin",
            false,
        ),
        90094 | 90095 => (
            "admin consent required",
            "ask the tenant admin to grant consent",
            false,
        ),
        70011 | 700022 | 28002 => (
            "invalid scope",
            "fix providers.*.scopes (one resource only)",
            false,
        ),
        _ => return None,
    })
}

/// AADSTS codes that mean "not now" (PROTOCOLS §1.10): throttling, a request loop and
/// transient service errors. They arrive with a 4xx status and an `error` such as
/// `invalid_request`, so without this they would read as a provider misconfiguration and
/// lose the server's Retry-After.
fn aadsts_transient(code: u64) -> Option<&'static str> {
    Some(match code {
        90055 => "tenant throttled",
        50196 => "same request repeated too often",
        50033 | 50087 | 90006 | 90090 | 90024 => "transient service error",
        _ => return None,
    })
}

/// Turns a token endpoint answer into a [`TokenError`]. `status` 0 means no HTTP answer
/// arrived (`transport` says why).
pub fn classify_provider_error(
    provider: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
    transport: &str,
) -> TokenError {
    let transient = |detail: String| TokenError::Transient {
        provider: provider.to_string(),
        detail,
        retry_after,
    };
    if status == 0 {
        return transient(format!("no answer: {transport}"));
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        json.as_ref()
            .and_then(|j| j.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let error = field("error");
    let description = field("error_description").unwrap_or_default();
    // Microsoft: error_codes [70000] and "AADSTS70000: ..." in the description.
    let code = json
        .as_ref()
        .and_then(|j| j.get("error_codes"))
        .and_then(|v| v.as_array())
        .and_then(|a| a.first())
        .and_then(|v| v.as_u64())
        .or_else(|| {
            let at = description.find("AADSTS")?;
            let digits: String = description[at + 6..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            digits.parse().ok()
        });
    let short_desc = description
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    if status == 429 || status >= 500 || error.as_deref() == Some("temporarily_unavailable") {
        return transient(format!(
            "HTTP {status}{}",
            error.map(|e| format!(" {e}")).unwrap_or_default()
        ));
    }
    if let Some(c) = code
        && let Some(meaning) = aadsts_transient(c)
    {
        return transient(format!("HTTP {status} AADSTS{c}: {meaning}"));
    }
    let Some(error) = error else {
        return transient(format!(
            "HTTP {status} with an unreadable body: {transport}"
        ));
    };
    if let Some(c) = code
        && let Some((meaning, action, reauth)) = aadsts(c)
    {
        let code = format!("{error} (AADSTS{c}: {meaning})");
        return if reauth {
            TokenError::Reauth {
                provider: provider.to_string(),
                code,
                description: short_desc,
                action: action.to_string(),
            }
        } else {
            TokenError::ProviderConfig {
                provider: provider.to_string(),
                code,
                description: short_desc,
                action: action.to_string(),
            }
        };
    }
    match error.as_str() {
        "invalid_grant" | "interaction_required" | "consent_required" | "login_required" => {
            TokenError::Reauth {
                provider: provider.to_string(),
                code: error,
                description: short_desc,
                action: "re-authorize the source (mailsluice authorize SOURCE)".into(),
            }
        }
        "invalid_client" | "unauthorized_client" => TokenError::ProviderConfig {
            provider: provider.to_string(),
            code: error,
            description: short_desc,
            action: "check client_id and the client secret (client_secret_env/_file)".into(),
        },
        "invalid_scope" => TokenError::ProviderConfig {
            provider: provider.to_string(),
            code: error,
            description: short_desc,
            action: "fix providers.*.scopes".into(),
        },
        _ => TokenError::ProviderConfig {
            provider: provider.to_string(),
            code: error,
            description: short_desc,
            action: "see the provider's documentation for this error".into(),
        },
    }
}

#[cfg(test)]
mod tests;
