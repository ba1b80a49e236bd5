//! OAuth2 token records, sealed with the at-rest key, and the key's rotation.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

use super::crypto::{self, KeyError, SecretBox};
use super::{Store, StoreError};

/// OAuth2 state for one credential, kept encrypted at rest.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    pub refresh_token: Option<String>,
    pub access_token: Option<String>,
    /// Unix seconds.
    pub access_expires_at: Option<i64>,
    /// Unix seconds of the last successful use of the refresh token.
    pub refresh_token_last_used: Option<i64>,
    /// Unix seconds when the refresh token was first stored (import or consent).
    pub refresh_token_obtained: Option<i64>,
    /// Who consented, when known.
    pub identity: Option<String>,
    /// Where `identity` came from. `None` in records written before this was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_source: Option<IdentitySource>,
    /// Set when the provider refused the grant: the source needs re-authorization.
    pub needs_reauth: Option<String>,
}

/// Who said whom a grant belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// The ID token in the provider's token response (checked: audience, issuer, expiry).
    IdToken,
    /// The provider's userinfo endpoint, asked with the grant's own access token.
    Userinfo,
    /// Whoever imported the grant said so; the provider told nothing to check it against.
    Claimed,
}

impl IdentitySource {
    /// Whether the provider itself named the account.
    pub fn verified(self) -> bool {
        !matches!(self, IdentitySource::Claimed)
    }
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| Secret::default()),
            )
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| Secret::default()),
            )
            .field("access_expires_at", &self.access_expires_at)
            .field("refresh_token_last_used", &self.refresh_token_last_used)
            .field("identity", &self.identity)
            .field("identity_source", &self.identity_source)
            .field("needs_reauth", &self.needs_reauth)
            .finish()
    }
}

impl Store {
    pub fn token(&self, key: &str) -> Result<Option<StoredToken>, StoreError> {
        match self.tokens.get(key.as_bytes())? {
            Some(v) => {
                let plain = self
                    .secret_box
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .open(&v)
                    .map_err(|e| StoreError::Corrupt(format!("token {key}: {e}")))?;
                serde_json::from_slice(&plain)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt(format!("token {key}: {e}")))
            }
            None => Ok(None),
        }
    }

    /// Writes a token record and flushes it to disk before returning: a rotated refresh
    /// token must survive a crash before the new access token is used.
    pub async fn put_token(&self, key: &str, token: &StoredToken) -> Result<(), StoreError> {
        let plain = serde_json::to_vec(token).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sealed = self
            .secret_box
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .seal(&plain)?;
        self.tokens.insert(key.as_bytes(), sealed)?;
        // No deadline here (callers' runtimes need not have timers): a token write is small.
        Ok(self.flusher.flush().await?)
    }

    /// Replaces the at-rest key: a new key is written beside the old one (`<key>.new`),
    /// every token record is re-encrypted in one batch and flushed, then the new key file
    /// replaces the old. A crash at any point leaves a store that opens (see `open_key`).
    /// Returns the number of records re-encrypted.
    pub fn rotate_key(&self) -> Result<usize, StoreError> {
        let pending = crypto::pending_path(&self.key_file);
        let _ = std::fs::remove_file(&pending);
        let new_box = SecretBox::create_at(&pending)?;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        {
            let old = self.secret_box.read().unwrap_or_else(|p| p.into_inner());
            for item in self.tokens.iter() {
                let (k, v) = item?;
                let plain = old.open(&v).map_err(|e| {
                    StoreError::Corrupt(format!("token {}: {e}", String::from_utf8_lossy(&k)))
                })?;
                batch.insert(k, new_box.seal(&plain)?);
                n += 1;
            }
        }
        self.tokens.apply_batch(batch)?;
        self.tokens.flush()?;
        std::fs::rename(&pending, &self.key_file).map_err(|reason| KeyError::Io {
            path: self.key_file.clone(),
            reason,
        })?;
        *self.secret_box.write().unwrap_or_else(|p| p.into_inner()) = new_box;
        Ok(n)
    }

    pub fn token_keys(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for item in self.tokens.iter() {
            let (k, _) = item?;
            out.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(out)
    }
}

/// Loads the at-rest key, finishing or undoing an interrupted rotation: when `<key>.new`
/// exists, whichever key opens the stored records wins and the other file goes.
pub(super) fn open_key(key_file: &Path, tokens: &sled::Tree) -> Result<SecretBox, StoreError> {
    let pending = crypto::pending_path(key_file);
    if !pending.exists() {
        return Ok(SecretBox::load_or_create(key_file)?);
    }
    let sample = tokens.iter().next().transpose()?.map(|(_, v)| v);
    let current = SecretBox::load(key_file).ok();
    let opens = |b: &SecretBox| sample.as_ref().is_none_or(|v| b.open(v).is_ok());
    if let Some(cur) = current.filter(|b| opens(b)) {
        let _ = std::fs::remove_file(&pending);
        return Ok(cur);
    }
    let new = SecretBox::load(&pending)?;
    if !opens(&new) {
        return Err(KeyError::NeitherOpens {
            key_file: key_file.to_path_buf(),
            pending,
        }
        .into());
    }
    std::fs::rename(&pending, key_file).map_err(|reason| KeyError::Io {
        path: key_file.to_path_buf(),
        reason,
    })?;
    Ok(new)
}
