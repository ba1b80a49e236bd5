//! `mailsluice test-login`.

use std::sync::Arc;

use anyhow::{Context, anyhow};

use mailsluice::auth::TokenService;
use mailsluice::config::{self, Settings};
use mailsluice::net::Connector;

use super::node_api::NodeApi;
use super::{UsageError, open_store, runtime};

pub(crate) fn test_login(settings: &Settings, source: &str) -> anyhow::Result<()> {
    if !settings.sources.contains_key(source) {
        return Err(UsageError(format!("no source named {source:?} in the configuration")).into());
    }
    let rt = runtime()?;
    let report: mailsluice::diagnose::Report = match open_store(settings)? {
        Some(store) => {
            let connector = Connector::new(
                &settings.tls,
                settings.node.connect_timeout,
                settings.node.read_timeout,
            )
            .map_err(|e| UsageError(e.to_string()))?;
            let service = TokenService::new(Arc::new(settings.clone()), Arc::new(store))
                .map_err(|e| UsageError(e.to_string()))?;
            rt.block_on(async {
                let token = match settings.sources[source].auth {
                    config::SourceAuth::OAuth2 { .. } => {
                        Some(service.access_token(source).await.map_err(Into::into))
                    }
                    config::SourceAuth::Password { .. } => None,
                };
                mailsluice::diagnose::test_login(settings, &connector, source, token).await
            })
        }
        None => {
            let api = NodeApi::new(settings)?;
            let path = format!("/api/sources/{source}/test-login");
            let (status, body) = rt.block_on(api.post_json(&path, &serde_json::json!({})))?;
            serde_json::from_str(&body).with_context(|| {
                format!(
                    "the running node's API at {}{path}: HTTP {status}: {}",
                    api.base,
                    body.trim()
                )
            })?
        }
    };
    print!("{}", report.render());
    if report.mailbox_opened {
        Ok(())
    } else {
        Err(anyhow!(
            "test-login {source}: no mailbox opened (see the failed step above)"
        ))
    }
}
