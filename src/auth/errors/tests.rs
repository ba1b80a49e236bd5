//! What each provider error means: every AADSTS code of the Entra table, the OAuth error
//! values, and HTTP statuses with and without a JSON body.

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
    assert!(matches!(e, TokenError::Transient { retry_after: Some(d), .. } if d.as_secs() == 9));
    let e = classify_provider_error(
        "p",
        429,
        br#"{"error":"temporarily_unavailable"}"#,
        Some(Duration::from_secs(2)),
        "",
    );
    assert!(matches!(e, TokenError::Transient { retry_after: Some(d), .. } if d.as_secs() == 2));
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
    assert!(matches!(e, TokenError::Reauth { description, .. } if description == "d".repeat(300)));
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
        // A refused import leaves the stored grant in place: nothing to re-authorize.
        TokenError::ImportRefused {
            source_name: s(),
            refusal: ImportRefusal::Refresh(Box::new(reauth[0].clone())),
            kept_grant: true,
        },
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
    assert_eq!(other[5].kind(), ErrorKind::Token);
}

#[test]
fn a_refused_import_names_the_providers_code_and_what_was_kept() {
    let refused = |kept_grant| TokenError::ImportRefused {
        source_name: "mail".into(),
        refusal: ImportRefusal::Refresh(Box::new(classify_provider_error(
            "local",
            400,
            br#"{"error":"invalid_grant","error_description":"grant request is invalid"}"#,
            None,
            "",
        ))),
        kept_grant,
    };
    assert_eq!(
        refused(true).to_string(),
        "source mail: refresh token not imported: provider local refused it: invalid_grant: grant request is invalid; the stored grant was left unchanged"
    );
    assert_eq!(
        refused(false).to_string(),
        "source mail: refresh token not imported: provider local refused it: invalid_grant: grant request is invalid; nothing was stored"
    );
    let mismatch = TokenError::ImportRefused {
        source_name: "mail".into(),
        refusal: ImportRefusal::IdentityMismatch {
            claimed: "bob@example.test".into(),
            provider_says: "alice@example.test".into(),
        },
        kept_grant: true,
    };
    assert_eq!(
        mismatch.to_string(),
        "source mail: refresh token not imported: the provider says the grant belongs to alice@example.test, but the import named bob@example.test; the stored grant was left unchanged"
    );
    // Other failures keep their own words (a transient one says to try again later).
    let transient = TokenError::ImportRefused {
        source_name: "mail".into(),
        refusal: ImportRefusal::Refresh(Box::new(classify_provider_error(
            "local", 503, b"", None, "",
        ))),
        kept_grant: true,
    };
    assert!(
        transient
            .to_string()
            .contains("provider local: temporary failure: HTTP 503"),
        "{transient}"
    );
}

#[test]
fn store_errors_keep_their_words() {
    let e = TokenError::from(StoreError::Corrupt("token record".into()));
    assert_eq!(e.kind(), ErrorKind::Store);
    assert!(matches!(&e, TokenError::Store(text) if text == "store: corrupt record: token record"));
}
