//! `mailsluice authorize`: the initial OAuth2 consent.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::anyhow;

use mailsluice::auth::TokenService;
use mailsluice::config::{self, Settings};
use mailsluice::store::Store;

use super::node_api::NodeApi;
use super::{UsageError, open_store, runtime};

pub(crate) fn authorize(
    settings: &Settings,
    source: &str,
    device: bool,
    open_browser: bool,
    timeout_secs: Option<u64>,
) -> anyhow::Result<()> {
    let Some(src) = settings.sources.get(source) else {
        return Err(UsageError(format!("no source named {source:?} in the configuration")).into());
    };
    if !matches!(src.auth, config::SourceAuth::OAuth2 { .. }) {
        return Err(UsageError(format!("sources.{source}.auth is not oauth2")).into());
    }
    let rt = runtime()?;
    let local = open_store(settings)?;
    // Without the store (a node holds it) the flow runs against a throw-away store and the
    // result goes to the node through its API, found before anyone is asked to sign in.
    let running_node = match local {
        Some(_) => None,
        None => Some(NodeApi::new(settings)?),
    };
    let scratch = ScratchDir::new()?;
    let store = match local {
        Some(s) => s,
        None => Store::open(&scratch.0.join("db"), &scratch.0.join("key"))?,
    };
    let settings_arc = Arc::new(settings.clone());
    let service =
        TokenService::new(settings_arc, Arc::new(store)).map_err(|e| UsageError(e.to_string()))?;
    let options = mailsluice::auth::ConsentOptions {
        open_browser,
        timeout: std::time::Duration::from_secs(timeout_secs.unwrap_or(if device {
            24 * 3600
        } else {
            300
        })),
    };
    let consent = rt.block_on(async {
        if device {
            service
                .authorize_device(source, &options, |event| match event {
                    mailsluice::auth::DeviceFlowEvent::Show {
                        verification_uri,
                        verification_uri_complete,
                        user_code,
                        expires_in,
                    } => {
                        println!("To authorize {source}, open {verification_uri} and enter the code: {user_code}");
                        if let Some(c) = verification_uri_complete {
                            println!("Or open: {c}");
                        }
                        println!("Sign in as {}. The code expires in {} minutes. Waiting...", src.username, expires_in / 60);
                        let _ = std::io::stdout().flush();
                    }
                    mailsluice::auth::DeviceFlowEvent::SlowDown { interval_secs } => {
                        println!("Provider asked to slow down; polling every {interval_secs}s");
                        let _ = std::io::stdout().flush();
                    }
                })
                .await
        } else {
            service
                .authorize_with_browser(source, &options, |url| {
                    println!("Open this URL in a browser and sign in as {}:", src.username);
                    println!("{url}");
                    println!("Waiting for the redirect to this machine's loopback address...");
                    let _ = std::io::stdout().flush();
                })
                .await
        }
    })?;
    if let Some(api) = running_node {
        let Some(refresh) = &consent.refresh_token else {
            return Err(anyhow!("{source}: the provider returned no refresh token"));
        };
        let (status, body) = rt.block_on(api.post_json(
            &format!("/api/tokens/{source}/import"),
            &serde_json::json!({
                "refresh_token": refresh.expose(),
                "identity": consent.identity,
            }),
        ))?;
        if !status.is_success() {
            return Err(anyhow!(
                "{source}: the running node refused the new grant: {}",
                body.trim()
            ));
        }
        println!(
            "Signed in as {}; handed to the running node, which resumes {source}.",
            consent.identity
        );
    } else {
        rt.block_on(service.adopt(source, &consent))?;
        println!(
            "Signed in as {} (matches sources.{source}.username); refresh token stored encrypted.",
            consent.identity
        );
    }
    Ok(())
}

/// A private (0700) scratch directory, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> anyhow::Result<ScratchDir> {
        let dir = std::env::temp_dir().join(format!("mailsluice-authorize-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
