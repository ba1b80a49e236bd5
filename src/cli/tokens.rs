//! `mailsluice tokens status` and `mailsluice tokens import`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};

use mailsluice::api::{self, TokenView};
use mailsluice::auth::{TokenService, consented_by};
use mailsluice::config::{self, Settings};
use mailsluice::secret::Secret;

use super::node_api::NodeApi;
use super::{UsageError, open_store, runtime};

pub(crate) fn status(settings: &Settings) -> anyhow::Result<()> {
    let shown: Vec<TokenView> = match open_store(settings)? {
        Some(store) => api::token_views(settings, &store)?,
        None => runtime()?.block_on(NodeApi::new(settings)?.get_json("/api/tokens"))?,
    };
    if shown.is_empty() {
        println!("no OAuth2 sources configured");
    }
    for v in shown {
        println!("{} (provider {})", v.source, v.provider);
        println!(
            "  refresh token:        {}",
            if v.has_refresh_token {
                "stored (encrypted)"
            } else {
                "none"
            }
        );
        println!(
            "  obtained:             {}",
            v.refresh_token_obtained.unwrap_or_else(|| "-".into())
        );
        println!(
            "  consented by:         {}",
            consented_by(v.identity.as_deref(), v.identity_source)
        );
        println!(
            "  refresh token used:   {}",
            v.refresh_token_last_used.unwrap_or_else(|| "never".into())
        );
        println!(
            "  access token expires: {}",
            v.access_token_expires_at.unwrap_or_else(|| "-".into())
        );
        if let Some(state) = v.state {
            println!("  state:                {state}");
        }
        for w in &v.warnings {
            println!("  WARNING: {w}");
        }
        if let Some(r) = v.needs_reauth {
            println!("  NEEDS RE-AUTHORIZATION: {r}");
        }
    }
    Ok(())
}

pub(crate) fn import(
    settings: &Settings,
    source: &str,
    file: &Path,
    identity: Option<String>,
) -> anyhow::Result<()> {
    let Some(src) = settings.sources.get(source) else {
        return Err(UsageError(format!("no source named {source:?} in the configuration")).into());
    };
    if !matches!(src.auth, config::SourceAuth::OAuth2 { .. }) {
        return Err(UsageError(format!("sources.{source}.auth is not oauth2")).into());
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--refresh-token-file {}", file.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(UsageError(format!("--refresh-token-file {} is empty", file.display())).into());
    }
    let rt = runtime()?;
    match open_store(settings)? {
        Some(store) => {
            let settings = Arc::new(settings.clone());
            let service = TokenService::new(settings, Arc::new(store))
                .map_err(|e| UsageError(e.to_string()))?;
            let tok = rt.block_on(service.import(source, Secret::new(token), identity))?;
            let exp = chrono::DateTime::from_timestamp(tok.expires_at, 0)
                .map(|d| d.to_rfc3339())
                .unwrap_or_default();
            let record = rt.block_on(service.status(source))?.unwrap_or_default();
            println!(
                "{source}: refresh token imported and proven by one refresh; access token valid until {exp}"
            );
            println!(
                "  consented by: {}",
                consented_by(record.identity.as_deref(), record.identity_source)
            );
        }
        None => {
            let api = NodeApi::new(settings)?;
            let (status, body) = rt.block_on(api.post_json(
                &format!("/api/tokens/{source}/import"),
                &serde_json::json!({ "refresh_token": token, "identity": identity }),
            ))?;
            if !status.is_success() {
                return Err(anyhow!("{source}: import refused: {}", body.trim()));
            }
            println!(
                "{source}: refresh token imported through the running node ({})",
                body.trim()
            );
        }
    }
    Ok(())
}
