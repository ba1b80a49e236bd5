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
    #[error("{0}")]
    Unknown(String),
    #[error("{0}")]
    Store(String),
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
mod tests {
    use super::*;

    #[test]
    fn microsoft_codes() {
        let body = br#"{"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity.","error_codes":[700082]}"#;
        let e = classify_provider_error("o365", 400, body, None, "");
        assert!(e.needs_reauth());
        assert!(e.to_string().contains("AADSTS700082"));
        let body = br#"{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys are expired."}"#;
        let e = classify_provider_error("o365", 401, body, None, "");
        assert!(matches!(e, TokenError::ProviderConfig { .. }));
        assert!(e.to_string().contains("client secret expired"));
    }

    #[test]
    fn generic_and_transient() {
        let e = classify_provider_error("p", 400, br#"{"error":"invalid_grant"}"#, None, "");
        assert!(e.needs_reauth());
        let e = classify_provider_error("p", 503, b"<html>", Some(Duration::from_secs(9)), "");
        assert!(
            matches!(e, TokenError::Transient { retry_after: Some(d), .. } if d.as_secs() == 9)
        );
        let e = classify_provider_error(
            "p",
            429,
            br#"{"error":"temporarily_unavailable"}"#,
            Some(Duration::from_secs(2)),
            "",
        );
        assert!(
            matches!(e, TokenError::Transient { retry_after: Some(d), .. } if d.as_secs() == 2)
        );
        let e = classify_provider_error("p", 0, b"", None, "connection refused");
        assert!(matches!(e, TokenError::Transient { .. }));
        let e = classify_provider_error("p", 200, b"{not json", None, "parse");
        assert!(matches!(e, TokenError::Transient { .. }));
    }

    /// Microsoft's answer for one AADSTS code, as the v2.0 token endpoint sends it.
    fn microsoft(code: u64, error: &str) -> TokenError {
        let body = serde_json::json!({
            "error": error,
            "error_description": format!("AADSTS{code}: Something happened.\r\nTrace ID: 1\r\nCorrelation ID: 2"),
            "error_codes": [code],
        });
        classify_provider_error("o365", 400, body.to_string().as_bytes(), None, "")
    }

    #[test]
    fn every_reauth_code_of_the_entra_table_asks_for_consent() {
        // PROTOCOLS §1.10, "Reauth" rows; one entry per code, with its meaning and action.
        let table: &[(u64, &str, &str, &str)] = &[
            (
                70000,
                "invalid_grant",
                "refresh token not valid",
                "re-authorize the source",
            ),
            (
                70008,
                "invalid_grant",
                "refresh token expired or revoked",
                "re-authorize the source",
            ),
            (
                700082,
                "invalid_grant",
                "refresh token expired after 90 days unused",
                "re-authorize the source",
            ),
            (
                700084,
                "invalid_grant",
                "SPA refresh token lifetime ended",
                "re-authorize; do not register the redirect as spa",
            ),
            (
                50173,
                "invalid_grant",
                "grant revoked (password change or revoke)",
                "re-authorize the source",
            ),
            (
                50132,
                "invalid_grant",
                "session invalid after password change",
                "re-authorize the source",
            ),
            (
                50133,
                "invalid_grant",
                "session invalid after password change",
                "re-authorize the source",
            ),
            (
                70043,
                "invalid_grant",
                "Conditional Access sign-in frequency reached",
                "re-authorize the source",
            ),
            (
                50076,
                "interaction_required",
                "multi-factor authentication required",
                "re-authorize interactively",
            ),
            (
                50079,
                "interaction_required",
                "multi-factor authentication required",
                "re-authorize interactively",
            ),
            (
                50078,
                "interaction_required",
                "multi-factor authentication required",
                "re-authorize interactively",
            ),
            (
                50074,
                "interaction_required",
                "multi-factor authentication required",
                "re-authorize interactively",
            ),
            (
                65001,
                "invalid_grant",
                "consent missing for the app or scope",
                "re-authorize with consent, or ask an admin to consent",
            ),
            (
                65004,
                "access_denied",
                "user declined consent",
                "re-authorize and accept",
            ),
            (
                50034,
                "invalid_grant",
                "account not usable (missing, disabled, locked or password expired)",
                "fix the account, then re-authorize",
            ),
            (
                50057,
                "invalid_grant",
                "account not usable (missing, disabled, locked or password expired)",
                "fix the account, then re-authorize",
            ),
            (
                50053,
                "invalid_grant",
                "account not usable (missing, disabled, locked or password expired)",
                "fix the account, then re-authorize",
            ),
            (
                50055,
                "invalid_grant",
                "account not usable (missing, disabled, locked or password expired)",
                "fix the account, then re-authorize",
            ),
            (
                50126,
                "invalid_grant",
                "account not usable (missing, disabled, locked or password expired)",
                "fix the account, then re-authorize",
            ),
        ];
        for &(code, error, meaning, action) in table {
            let e = microsoft(code, error);
            assert!(e.needs_reauth(), "AADSTS{code}: {e}");
            let TokenError::Reauth {
                provider,
                code: shown,
                description,
                action: told,
            } = e
            else {
                panic!("AADSTS{code}: not Reauth");
            };
            assert_eq!(provider, "o365");
            assert_eq!(shown, format!("{error} (AADSTS{code}: {meaning})"));
            assert_eq!(description, format!("AADSTS{code}: Something happened."));
            assert_eq!(told, action, "AADSTS{code}");
        }
    }

    #[test]
    fn every_config_code_of_the_entra_table_is_for_the_operator() {
        // PROTOCOLS §1.10, "Config" rows. Several arrive as invalid_grant, which alone would
        // mean re-consent: the code decides.
        let table: &[(u64, &str, &str, &str)] = &[
            (
                7000215,
                "invalid_client",
                "invalid client secret",
                "put the current client secret in client_secret_env/_file",
            ),
            (
                7000222,
                "invalid_client",
                "client secret expired",
                "create a new client secret for the app registration and configure it",
            ),
            (
                7000218,
                "invalid_client",
                "public client flows disabled for the app",
                "enable 'Allow public client flows' or configure a client secret",
            ),
            (
                700025,
                "invalid_client",
                "client secret sent by a public client",
                "remove the client secret from the provider",
            ),
            (
                700016,
                "unauthorized_client",
                "application not found in the tenant",
                "check client_id and tenant",
            ),
            (
                700011,
                "unauthorized_client",
                "application not found in the tenant",
                "check client_id and tenant",
            ),
            (
                500011,
                "invalid_resource",
                "resource (Exchange Online) not present in the tenant",
                "check the tenant has Exchange Online",
            ),
            (
                53003,
                "invalid_grant",
                "blocked by Conditional Access or security policy",
                "ask the tenant admin",
            ),
            (
                530032,
                "invalid_grant",
                "blocked by Conditional Access or security policy",
                "ask the tenant admin",
            ),
            (
                530035,
                "invalid_grant",
                "blocked by Conditional Access or security policy",
                "ask the tenant admin",
            ),
            (
                90094,
                "invalid_grant",
                "admin consent required",
                "ask the tenant admin to grant consent",
            ),
            (
                90095,
                "invalid_grant",
                "admin consent required",
                "ask the tenant admin to grant consent",
            ),
            (
                70011,
                "invalid_scope",
                "invalid scope",
                "fix providers.*.scopes (one resource only)",
            ),
            (
                700022,
                "invalid_scope",
                "invalid scope",
                "fix providers.*.scopes (one resource only)",
            ),
            (
                28002,
                "invalid_scope",
                "invalid scope",
                "fix providers.*.scopes (one resource only)",
            ),
        ];
        for &(code, error, meaning, action) in table {
            let e = microsoft(code, error);
            assert!(!e.needs_reauth(), "AADSTS{code}: {e}");
            let TokenError::ProviderConfig {
                provider,
                code: shown,
                description,
                action: told,
            } = e
            else {
                panic!("AADSTS{code}: not ProviderConfig");
            };
            assert_eq!(provider, "o365");
            assert_eq!(shown, format!("{error} (AADSTS{code}: {meaning})"));
            assert_eq!(description, format!("AADSTS{code}: Something happened."));
            assert_eq!(told, action, "AADSTS{code}");
        }
    }

    #[test]
    fn transient_codes_of_the_entra_table_are_retried() {
        // PROTOCOLS §1.10: throttling, loop detection and transient errors: backoff, retry.
        for (code, meaning) in [
            (90055, "tenant throttled"),
            (50196, "same request repeated too often"),
            (50033, "transient service error"),
            (50087, "transient service error"),
            (90006, "transient service error"),
            (90090, "transient service error"),
            (90024, "transient service error"),
        ] {
            let body = serde_json::json!({
                "error": "invalid_request",
                "error_description": format!("AADSTS{code}: Try again."),
                "error_codes": [code],
            });
            let e = classify_provider_error(
                "o365",
                400,
                body.to_string().as_bytes(),
                Some(Duration::from_secs(30)),
                "",
            );
            let TokenError::Transient {
                provider,
                detail,
                retry_after,
            } = e
            else {
                panic!("AADSTS{code}: {e:?}");
            };
            assert_eq!(provider, "o365");
            assert_eq!(detail, format!("HTTP 400 AADSTS{code}: {meaning}"));
            assert_eq!(retry_after, Some(Duration::from_secs(30)));
        }
    }

    #[test]
    fn aadsts_code_is_read_from_the_description_when_error_codes_is_absent() {
        let body = br#"{"error":"invalid_grant","error_description":"Token refresh failed. AADSTS50173: The provided grant has expired."}"#;
        let TokenError::Reauth { code, .. } = classify_provider_error("o365", 400, body, None, "")
        else {
            panic!("not Reauth");
        };
        assert_eq!(
            code,
            "invalid_grant (AADSTS50173: grant revoked (password change or revoke))"
        );
        // error_codes wins over the description, and its first entry is the one.
        let body = br#"{"error":"invalid_client","error_description":"AADSTS70000: x","error_codes":[7000215,70000]}"#;
        let e = classify_provider_error("o365", 401, body, None, "");
        assert!(
            matches!(&e, TokenError::ProviderConfig { code, .. } if code.contains("AADSTS7000215:"))
        );
    }

    #[test]
    fn unknown_aadsts_code_falls_back_to_the_oauth_error() {
        let body = br#"{"error":"invalid_grant","error_description":"AADSTS99999: new.","error_codes":[99999]}"#;
        let e = classify_provider_error("o365", 400, body, None, "");
        assert!(matches!(&e, TokenError::Reauth { code, .. } if code == "invalid_grant"));
    }

    #[test]
    fn oauth_error_values_map_to_their_action() {
        // RFC 6749 §5.2 and OIDC values, PROTOCOLS §1.10 "Generic error values".
        for error in [
            "invalid_grant",
            "interaction_required",
            "consent_required",
            "login_required",
        ] {
            let body = format!(r#"{{"error":"{error}","error_description":"why\nmore"}}"#);
            let e = classify_provider_error("p", 400, body.as_bytes(), None, "");
            let TokenError::Reauth {
                provider,
                code,
                description,
                action,
            } = e
            else {
                panic!("{error}: not Reauth");
            };
            assert_eq!((provider.as_str(), code.as_str()), ("p", error));
            assert_eq!(description, "why");
            assert_eq!(
                action,
                "re-authorize the source (mailsluice authorize SOURCE)"
            );
        }
        for (error, action) in [
            (
                "invalid_client",
                "check client_id and the client secret (client_secret_env/_file)",
            ),
            (
                "unauthorized_client",
                "check client_id and the client secret (client_secret_env/_file)",
            ),
            ("invalid_scope", "fix providers.*.scopes"),
            (
                "unsupported_grant_type",
                "see the provider's documentation for this error",
            ),
        ] {
            let body = format!(r#"{{"error":"{error}"}}"#);
            let e = classify_provider_error("p", 400, body.as_bytes(), None, "");
            let TokenError::ProviderConfig {
                code, action: told, ..
            } = e
            else {
                panic!("{error}: not ProviderConfig");
            };
            assert_eq!(code, error);
            assert_eq!(told, action, "{error}");
        }
    }

    #[test]
    fn description_is_one_line_of_at_most_300_characters() {
        let long = "d".repeat(400);
        let body = serde_json::json!({"error": "invalid_grant", "error_description": long});
        let e = classify_provider_error("p", 400, body.to_string().as_bytes(), None, "");
        assert!(
            matches!(e, TokenError::Reauth { description, .. } if description == "d".repeat(300))
        );
    }

    #[test]
    fn throttling_and_server_errors_are_transient_whatever_the_body() {
        for (status, body, detail) in [
            (
                503,
                &br#"{"error":"invalid_grant","error_codes":[70000]}"#[..],
                "HTTP 503 invalid_grant",
            ),
            (500, br#"{"error":"server_error"}"#, "HTTP 500 server_error"),
            (
                429,
                br#"{"error":"invalid_request"}"#,
                "HTTP 429 invalid_request",
            ),
            (
                400,
                br#"{"error":"temporarily_unavailable"}"#,
                "HTTP 400 temporarily_unavailable",
            ),
            (502, b"<html>bad gateway</html>", "HTTP 502"),
        ] {
            let e = classify_provider_error("p", status, body, Some(Duration::from_secs(4)), "");
            assert!(!e.needs_reauth());
            let TokenError::Transient {
                provider,
                detail: got,
                retry_after,
            } = e
            else {
                panic!("HTTP {status}: not Transient");
            };
            assert_eq!(provider, "p");
            assert_eq!(got, detail);
            assert_eq!(retry_after, Some(Duration::from_secs(4)));
        }
        // A 4xx that is not OAuth JSON says nothing about the grant: try again later.
        let e = classify_provider_error("p", 404, br#"{"message":"no"}"#, None, "not found");
        assert!(
            matches!(e, TokenError::Transient { detail, .. } if detail == "HTTP 404 with an unreadable body: not found")
        );
        let e = classify_provider_error("p", 0, b"", None, "connection refused");
        assert!(
            matches!(e, TokenError::Transient { detail, .. } if detail == "no answer: connection refused")
        );
    }

    #[test]
    fn only_a_lost_grant_needs_reauthorization() {
        let s = String::new;
        let reauth = [
            TokenError::Reauth {
                provider: s(),
                code: s(),
                description: s(),
                action: s(),
            },
            TokenError::NeedsReauth {
                source_name: s(),
                reason: s(),
            },
        ];
        let other = [
            TokenError::ProviderConfig {
                provider: s(),
                code: s(),
                description: s(),
                action: s(),
            },
            TokenError::Transient {
                provider: s(),
                detail: s(),
                retry_after: None,
            },
            TokenError::Consent {
                source_name: s(),
                reason: s(),
            },
            TokenError::Unknown(s()),
            TokenError::Store(s()),
        ];
        for e in &reauth {
            assert!(e.needs_reauth(), "{e:?}");
            assert_eq!(e.kind(), ErrorKind::Token);
        }
        for e in &other {
            assert!(!e.needs_reauth(), "{e:?}");
        }
        assert_eq!(other[3].kind(), ErrorKind::Token);
        assert_eq!(other[4].kind(), ErrorKind::Store);
    }

    #[test]
    fn store_errors_keep_their_words() {
        let e = TokenError::from(StoreError::Corrupt("token record".into()));
        assert_eq!(e.kind(), ErrorKind::Store);
        assert!(
            matches!(&e, TokenError::Store(text) if text == "store: corrupt record: token record")
        );
    }
}
