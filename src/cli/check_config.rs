//! `mailsluice check-config`.

use std::path::Path;

use mailsluice::config::{self, Settings};

use super::UsageError;

pub(crate) fn check_config(path: &Path, settings: &Settings) -> anyhow::Result<()> {
    // Warnings, not errors: the node works, but others on the machine can read its secrets.
    for loose in config::loose_secret_files(&config::secret_files(settings)) {
        eprintln!("warning: {loose}");
    }
    for warning in config::warnings(settings) {
        eprintln!("warning: {warning}");
    }
    let missing = config::check_secrets(settings);
    if !missing.is_empty() {
        let mut msg = format!(
            "{}: {} secret reference(s) do not resolve:",
            path.display(),
            missing.len()
        );
        for e in &missing {
            msg.push_str(&format!("\n  {e}"));
        }
        return Err(UsageError(msg).into());
    }
    println!(
        "{}: ok ({} provider(s), {} source(s), {} enabled, {} sink(s))",
        path.display(),
        settings.providers.len(),
        settings.sources.len(),
        settings.sources.values().filter(|s| s.enabled).count(),
        settings.sinks.len()
    );
    Ok(())
}
