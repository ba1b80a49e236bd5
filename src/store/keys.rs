//! Key layout of the `index`, `content`, `checkpoints` and `pending` trees (see the
//! store's module docs).

use super::StoreError;

pub(super) fn imap_key(source: &str, folder: &str, uidvalidity: u32, uid: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(source.len() + folder.len() + 12);
    k.extend_from_slice(b"i\0");
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(folder.as_bytes());
    k.push(0);
    k.extend_from_slice(&uidvalidity.to_be_bytes());
    k.extend_from_slice(&uid.to_be_bytes());
    k
}

pub(super) fn pop3_prefix(source: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(source.len() + 3);
    k.extend_from_slice(b"p\0");
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k
}

pub(super) fn pop3_key(source: &str, uidl: &str) -> Vec<u8> {
    let mut k = pop3_prefix(source);
    k.extend_from_slice(uidl.as_bytes());
    k
}

pub(super) fn folder_key(source: &str, folder: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(source.len() + folder.len() + 1);
    k.extend_from_slice(source.as_bytes());
    k.push(0);
    k.extend_from_slice(folder.as_bytes());
    k
}

pub(super) fn content_key(source: &str, folder: &str, sha: &[u8]) -> Vec<u8> {
    let mut k = folder_key(source, folder);
    k.push(0);
    k.extend_from_slice(sha);
    k
}

pub(super) fn id_of(v: &[u8]) -> Result<u64, StoreError> {
    let arr: [u8; 8] = v
        .try_into()
        .map_err(|_| StoreError::Corrupt("index value is not a u64".into()))?;
    Ok(u64::from_be_bytes(arr))
}
