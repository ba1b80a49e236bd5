//! Folder checkpoints (how far an IMAP folder is stored) and the post-action records (UIDs
//! stored whose seen, move or delete is still to be done on the server).

use serde::{Deserialize, Serialize};

use super::keys::{folder_key, imap_key};
use super::{Store, StoreError};

/// IMAP progress for one folder: every UID up to `last_uid` under `uidvalidity` is stored
/// (or deliberately skipped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub uidvalidity: u32,
    pub last_uid: u32,
    /// Set when the folder's UIDVALIDITY changed: the UIDNEXT the server gave then. The
    /// messages below it were on the server before the change, so each is first matched by
    /// content against the copies stored under the old UIDVALIDITY; messages from it on are
    /// new and always stored, even when their bytes equal a stored message's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rematch_below: Option<u32>,
}

impl Checkpoint {
    /// Whether `uid` (under this checkpoint's UIDVALIDITY) is matched by content first.
    pub fn rematches(&self, uid: u32) -> bool {
        self.rematch_below.is_some_and(|below| uid < below)
    }

    /// This checkpoint moved on to `last_uid` when that is further (same UIDVALIDITY), or
    /// replaced by `next` under another one.
    pub(super) fn advanced(current: Option<Checkpoint>, next: Checkpoint) -> Checkpoint {
        match current {
            Some(c) if c.uidvalidity == next.uidvalidity => Checkpoint {
                last_uid: c.last_uid.max(next.last_uid),
                ..c
            },
            _ => next,
        }
    }
}

impl Store {
    pub fn checkpoint(&self, source: &str, folder: &str) -> Result<Option<Checkpoint>, StoreError> {
        match self.checkpoints.get(folder_key(source, folder))? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("checkpoint {source}/{folder}: {e}"))),
            None => Ok(None),
        }
    }

    /// Starts a folder over under a new UIDVALIDITY (the old UIDs mean nothing now). The
    /// messages below `uidnext` were there at the change and are re-matched by content
    /// ([`Checkpoint::rematches`]); without a UIDNEXT every UID is.
    pub fn reset_checkpoint(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
        uidnext: Option<u32>,
    ) -> Result<Checkpoint, StoreError> {
        let cp = Checkpoint {
            uidvalidity,
            last_uid: 0,
            rematch_below: Some(uidnext.unwrap_or(u32::MAX)),
        };
        self.checkpoints.insert(
            folder_key(source, folder),
            serde_json::to_vec(&cp).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        )?;
        Ok(cp)
    }

    /// Advances an IMAP checkpoint past a message that is deliberately not stored
    /// (e.g. over `max_message_bytes`).
    pub fn skip(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
        uid: u32,
    ) -> Result<(), StoreError> {
        let key = folder_key(source, folder);
        let current = self.checkpoint(source, folder)?;
        let cp = Checkpoint::advanced(
            current,
            Checkpoint {
                uidvalidity,
                last_uid: uid,
                rematch_below: None,
            },
        );
        if current == Some(cp) {
            return Ok(());
        }
        self.checkpoints.insert(
            key,
            serde_json::to_vec(&cp).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        )?;
        Ok(())
    }

    /// UIDs of `folder` (under `uidvalidity`) whose post-action is still to be done, and
    /// forgets those recorded under another UIDVALIDITY (their UIDs mean nothing now).
    pub fn pending_actions(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
    ) -> Result<Vec<u32>, StoreError> {
        let mut prefix = b"i\0".to_vec();
        prefix.extend_from_slice(&folder_key(source, folder));
        prefix.push(0);
        let mut out = Vec::new();
        let mut stale = Vec::new();
        for item in self.pending.scan_prefix(&prefix) {
            let (k, _) = item?;
            let rest = &k[prefix.len()..];
            if rest.len() != 8 {
                continue;
            }
            let uv = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            let uid = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            if uv == uidvalidity {
                out.push(uid);
            } else {
                stale.push(k);
            }
        }
        for k in stale {
            self.pending.remove(k)?;
        }
        Ok(out)
    }

    /// Records that the post-action of these UIDs is done (call after the server said OK).
    pub fn actions_done(
        &self,
        source: &str,
        folder: &str,
        uidvalidity: u32,
        uids: &[u32],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for uid in uids {
            batch.remove(imap_key(source, folder, uidvalidity, *uid));
        }
        self.pending.apply_batch(batch)?;
        Ok(())
    }
}
