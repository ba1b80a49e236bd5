//! `mailsluice authorize`: the initial OAuth2 consent.

use std::io::Write;
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
    let scratch = scratch_dir()?;
    let store = match local {
        Some(s) => s,
        None => Store::open(&scratch.path().join("db"), &scratch.path().join("key"))?,
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

/// A private (0700) scratch directory under an unpredictable name, removed when dropped.
/// A fixed name (say, with the process id) could be created first by another local user,
/// who would then own the directory the throw-away store and its key are written to.
fn scratch_dir() -> anyhow::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("mailsluice-authorize-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o700));
    }
    Ok(builder.tempdir()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Another local user cannot guess the scratch directory's name ahead of time to plant
    /// one of their own, nor read the throw-away key in it.
    #[test]
    fn scratch_directory_is_private_unpredictable_and_removed() {
        let a = scratch_dir().unwrap();
        let b = scratch_dir().unwrap();
        assert_ne!(a.path(), b.path(), "two scratch directories, one name");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(a.path()).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "scratch directory mode {mode:o}");
        }
        let path = a.path().to_path_buf();
        std::fs::write(path.join("key"), "k").unwrap();
        drop(a);
        assert!(!path.exists(), "scratch directory left behind");
    }
}
