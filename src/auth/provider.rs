//! What the node knows of a provider: its endpoints (configured, built in for the kind, or
//! found by OIDC discovery, whose document is fetched once and must name the configured
//! issuer), its default scopes and its client secret. Every endpoint URL is https, or http
//! on loopback only.

use super::{TokenError, TokenService, lock};
use crate::config::{Flow, ProviderKind, ProviderSettings, SourceSettings};
use crate::secret::Secret;
use crate::store::GrantBinding;

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

/// What a source's grant is sealed with ([`GrantBinding`]): the source, and where its tokens
/// go and for which client: the provider's token endpoint (configured, or derived from the
/// kind), else its issuer (whose discovery document names the endpoint), and its client id.
/// Renaming a provider changes neither; pointing it at another tenant, issuer or client does.
pub fn grant_binding(source_name: &str, provider: &ProviderSettings) -> GrantBinding {
    let authority = provider
        .token_url
        .as_deref()
        .or(provider.issuer.as_deref())
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_string();
    GrantBinding {
        source: source_name.to_string(),
        authority,
        client_id: provider.client_id.clone(),
    }
}

/// The grant stored for `source_name`, read with its binding under `settings`, as status
/// views show it (`None` for a source without OAuth2 or without a record). A client
/// credentials token kept for another client is no grant: it is shown as nothing stored.
pub fn stored_grant(
    settings: &crate::config::Settings,
    store: &crate::store::Store,
    source_name: &str,
) -> Result<Option<crate::store::StoredToken>, crate::store::StoreError> {
    let Some(crate::config::SourceAuth::OAuth2 { provider, .. }) =
        settings.sources.get(source_name).map(|s| &s.auth)
    else {
        return Ok(None);
    };
    let Some(provider) = settings.providers.get(provider) else {
        return Ok(None);
    };
    let record = store.token(&grant_binding(source_name, provider))?;
    Ok(record.filter(|r| !(r.bound_elsewhere && provider.flow == Flow::AppOnly)))
}

impl TokenService {
    /// The provider's OIDC discovery document (fetched once, cached), or `None` when the
    /// provider has no `issuer`.
    pub(super) async fn discovery(
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
    pub(super) async fn endpoint(
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
            description: format!("discovered {discovery_key}: {e}"),
            action: "use an https issuer".into(),
        })?;
        Ok(Some(url.to_string()))
    }

    /// The token endpoint: configured, derived from the kind, or found by discovery.
    pub(super) async fn token_url(
        &self,
        provider: &ProviderSettings,
    ) -> Result<String, TokenError> {
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

    pub(super) fn client_secret(
        &self,
        provider: &ProviderSettings,
    ) -> Result<Option<Secret>, TokenError> {
        match &provider.client_secret {
            None => Ok(None),
            Some(r) => crate::config::read_secret(r)
                .map(|s| Some(Secret::new(s)))
                .map_err(|e| TokenError::ProviderConfig {
                    provider: provider.name.clone(),
                    code: "client_secret".into(),
                    description: e.to_string(),
                    action: "provide the client secret".into(),
                }),
        }
    }
}

/// Why an endpoint URL is refused. Tokens and client secrets travel to it, so it is https,
/// or plain http to this machine only (local test servers). The URL is named: it comes from
/// a validated configuration (which refuses URLs with credentials) or a discovery document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum EndpointUrlError {
    #[error("{url} must be an https URL")]
    NotHttps { url: String },
    #[error("{url} must use https (http is allowed only on loopback)")]
    HttpOffLoopback { url: String },
    #[error("an endpoint URL must not contain user credentials")]
    Credentials,
    #[error("an endpoint URL is not valid: {why}")]
    NotUrl { why: String },
}

/// https, or http on a loopback address only (local test servers); see
/// [`crate::config::endpoint`].
pub(super) fn check_endpoint_url(url: &str) -> Result<(), EndpointUrlError> {
    use crate::config::endpoint::{EndpointProblem, check_endpoint};
    match check_endpoint(url) {
        Ok(_) => Ok(()),
        Err(EndpointProblem::HttpOffLoopback) => {
            Err(EndpointUrlError::HttpOffLoopback { url: url.into() })
        }
        // Credentials are not echoed: the URL is named without them.
        Err(EndpointProblem::Credentials) => Err(EndpointUrlError::Credentials),
        Err(EndpointProblem::NotUrl(why)) => Err(EndpointUrlError::NotUrl { why }),
        Err(EndpointProblem::NotHttps) => Err(EndpointUrlError::NotHttps { url: url.into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_https_or_loopback_http() {
        for ok in [
            "https://idp.example.com/token",
            "http://127.0.0.1:8080/token",
            "http://127.1.2.3/token",
            "http://localhost:9000/token",
            "http://[::1]:9000/token",
            "http://[::1]/token",
        ] {
            assert_eq!(check_endpoint_url(ok), Ok(()), "{ok}");
        }
        let e = check_endpoint_url("http://idp.example.com/token").unwrap_err();
        assert!(matches!(e, EndpointUrlError::HttpOffLoopback { .. }));
        assert_eq!(
            e.to_string(),
            "http://idp.example.com/token must use https (http is allowed only on loopback)"
        );
        // A loopback-looking name that is not one.
        assert!(check_endpoint_url("http://127.0.0.1.example.com/token").is_err());
        let e = check_endpoint_url("ftp://idp.example.com/token").unwrap_err();
        assert!(matches!(e, EndpointUrlError::NotHttps { .. }));
        // A discovery document naming a URL whose host only looks like loopback.
        let e = check_endpoint_url("http://localhost:1@evil.example/token").unwrap_err();
        assert_eq!(e, EndpointUrlError::Credentials);
        assert!(!e.to_string().contains("evil"), "{e}");
    }
}
