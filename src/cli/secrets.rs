//! `mailsluice secrets rotate-key`.

use mailsluice::config::Settings;

use super::{UsageError, open_store};

/// Re-encrypts every stored token under a new key; only with the store to itself, since a
/// running node holds the old key in memory.
pub(crate) fn rotate_key(settings: &Settings) -> anyhow::Result<()> {
    let Some(store) = open_store(settings)? else {
        return Err(UsageError(
            "the store is in use by a running node: stop it, then rotate the key".into(),
        )
        .into());
    };
    let n = store.rotate_key()?;
    println!(
        "re-encrypted {n} token record(s) under a new key in {}",
        settings.node.secret_key_file.display()
    );
    Ok(())
}
