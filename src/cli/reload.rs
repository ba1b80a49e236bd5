//! `mailsluice reload`.

use anyhow::Context;

use mailsluice::actors::supervisor::ReloadReport;
use mailsluice::config::Settings;

use super::node_api::NodeApi;
use super::{UsageError, runtime};

/// `mailsluice reload`: asks the running node to re-read its config file.
pub(crate) fn reload(settings: &Settings) -> anyhow::Result<()> {
    let api = NodeApi::new(settings)?;
    let url = format!("{}/api/reload", api.base);
    let (status, body) =
        runtime()?.block_on(api.post_json("/api/reload", &serde_json::json!({})))?;
    if status.is_success() {
        let report: ReloadReport = serde_json::from_str(&body)
            .with_context(|| format!("{url}: unexpected answer: {body}"))?;
        for (key, names) in [
            ("added", &report.added),
            ("removed", &report.removed),
            ("restarted", &report.restarted),
            ("unchanged", &report.unchanged),
            ("needs_restart", &report.needs_restart),
            ("sinks_added", &report.sinks_added),
            ("sinks_removed", &report.sinks_removed),
            ("sinks_restart", &report.sinks_restarted),
        ] {
            let shown = if names.is_empty() {
                "-".to_string()
            } else {
                names.join(", ")
            };
            println!("{key:<13} {shown}");
        }
        return Ok(());
    }
    #[derive(serde::Deserialize)]
    struct Refused {
        errors: Vec<String>,
    }
    let errors = serde_json::from_str::<Refused>(&body)
        .map(|r| r.errors)
        .unwrap_or_else(|_| vec![format!("HTTP {status}: {body}")]);
    Err(UsageError(format!(
        "the node refused the new configuration and keeps running the old one; {} error(s):\n  {}",
        errors.len(),
        errors.join("\n  ")
    ))
    .into())
}
