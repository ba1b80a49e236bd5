//! OAuth2 token records, sealed with the at-rest key, and the key's rotation.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::secret::Secret;

use super::crypto::{self, KeyError, SealError, SecretBox};
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
    /// Set (never stored) when the record read was sealed for another [`GrantBinding`]:
    /// its tokens were dropped and `needs_reauth` says why.
    #[serde(skip)]
    pub bound_elsewhere: bool,
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
            .field("bound_elsewhere", &self.bound_elsewhere)
            .finish()
    }
}

/// Whom a sealed grant belongs to: the source it is kept for, and the authorization server
/// and client that issued it. It is the record's associated data: a record opens only
/// together with the binding it was sealed with, so a record copied under another source's
/// key, or kept across a change of the source's provider, is never taken for a grant of the
/// new one (its refresh token would be sent to a token endpoint that never issued it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantBinding {
    pub source: String,
    /// The provider's token endpoint, else its issuer: where the grant's tokens are sent.
    pub authority: String,
    pub client_id: String,
}

impl GrantBinding {
    /// Why the stored grant does not serve `self`: shown as the source's re-authorization
    /// reason. Names no secret.
    fn mismatch(&self, stored: &GrantBinding) -> String {
        if stored.source != self.source {
            format!(
                "the stored grant was sealed for source {:?}, not {:?}: authorize again",
                stored.source, self.source
            )
        } else {
            format!(
                "the stored grant was issued by {} to client {:?}; the source now signs in at {} as client {:?}: authorize it again there",
                stored.authority, stored.client_id, self.authority, self.client_id
            )
        }
    }
}

/// A record sealed with its [`GrantBinding`] starts with this, then the binding's length
/// (u16 BE) and the binding (JSON), then nonce, ciphertext and tag. Everything before the
/// nonce is the associated data. Records without it were sealed with no associated data
/// (written before bindings were kept); they are still read, and sealed with their binding
/// on the next write.
const BOUND: &[u8; 4] = b"MSG\x01";

fn seal_record(
    secret_box: &SecretBox,
    binding: &GrantBinding,
    plain: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(binding).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let len = u16::try_from(json.len())
        .map_err(|_| StoreError::Corrupt(format!("token {}: binding too long", binding.source)))?;
    let mut header = Vec::with_capacity(BOUND.len() + 2 + json.len());
    header.extend_from_slice(BOUND);
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&json);
    let sealed = secret_box.seal_with(plain, &header)?;
    header.extend_from_slice(&sealed);
    Ok(header)
}

/// The associated data and the binding of a bound record, or `None` for one sealed
/// without (or that is not ours).
fn bound_header(record: &[u8]) -> Option<(&[u8], GrantBinding, &[u8])> {
    let rest = record.strip_prefix(BOUND)?;
    let len = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    let json = rest.get(2..2 + len)?;
    let binding = serde_json::from_slice(json).ok()?;
    let header_len = BOUND.len() + 2 + len;
    Some((&record[..header_len], binding, &record[header_len..]))
}

/// Opens a record: its binding (`None` for a record sealed before bindings were kept) and
/// its plaintext.
fn open_record(
    secret_box: &SecretBox,
    record: &[u8],
) -> Result<(Option<GrantBinding>, Vec<u8>), SealError> {
    if let Some((aad, binding, sealed)) = bound_header(record)
        && let Ok(plain) = secret_box.open_with(sealed, aad)
    {
        return Ok((Some(binding), plain));
    }
    // Sealed without associated data: a record from before bindings were kept (whose
    // random nonce may even start like a bound record's header).
    secret_box.open(record).map(|plain| (None, plain))
}

/// Re-seals a record under `new`, keeping its binding (or its lack of one).
fn reseal_record(old: &SecretBox, new: &SecretBox, record: &[u8]) -> Result<Vec<u8>, SealError> {
    if let Some((aad, _, sealed)) = bound_header(record)
        && let Ok(plain) = old.open_with(sealed, aad)
    {
        let mut out = aad.to_vec();
        out.extend_from_slice(&new.seal_with(&plain, aad)?);
        return Ok(out);
    }
    new.seal(&old.open(record)?)
}

impl Store {
    /// The grant stored for `binding.source`. A record sealed for another binding (another
    /// source, or the provider's issuer or client changed since) comes back without its
    /// tokens and marked as needing re-authorization, saying why: its refresh token is
    /// never handed to a provider that did not issue it. A record from before bindings were
    /// kept is returned as it is.
    pub fn token(&self, binding: &GrantBinding) -> Result<Option<StoredToken>, StoreError> {
        let key = &binding.source;
        let Some(v) = self.tokens.get(key.as_bytes())? else {
            return Ok(None);
        };
        let (stored, plain) = open_record(
            &self.secret_box.read().unwrap_or_else(|p| p.into_inner()),
            &v,
        )
        .map_err(|e| StoreError::Corrupt(format!("token {key}: {e}")))?;
        let plain = zeroize::Zeroizing::new(plain);
        let mut record: StoredToken = serde_json::from_slice(&plain)
            .map_err(|e| StoreError::Corrupt(format!("token {key}: {e}")))?;
        if let Some(stored) = stored.filter(|s| s != binding) {
            record.refresh_token = None;
            record.access_token = None;
            record.access_expires_at = None;
            record.needs_reauth = Some(binding.mismatch(&stored));
            record.bound_elsewhere = true;
        }
        Ok(Some(record))
    }

    /// Writes a token record sealed with its binding, and flushes it to disk before
    /// returning: a rotated refresh token must survive a crash before the new access token
    /// is used.
    pub async fn put_token(
        &self,
        binding: &GrantBinding,
        token: &StoredToken,
    ) -> Result<(), StoreError> {
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(token).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
        let sealed = seal_record(
            &self.secret_box.read().unwrap_or_else(|p| p.into_inner()),
            binding,
            &plain,
        )?;
        self.tokens.insert(binding.source.as_bytes(), sealed)?;
        // No deadline here (callers' runtimes need not have timers): a token write is small.
        Ok(self.flusher.flush().await?)
    }

    /// Replaces the at-rest key: a new key is written beside the old one (`<key>.new`),
    /// every token record is re-encrypted (keeping its binding) in one batch and flushed,
    /// then the new key file replaces the old. A crash at any point leaves a store that
    /// opens (see `open_key`). Returns the number of records re-encrypted.
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
                let resealed = reseal_record(&old, &new_box, &v).map_err(|e| {
                    StoreError::Corrupt(format!("token {}: {e}", String::from_utf8_lossy(&k)))
                })?;
                batch.insert(k, resealed);
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
    let opens = |b: &SecretBox| sample.as_ref().is_none_or(|v| open_record(b, v).is_ok());
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
