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

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout stores on disk are written in (the store's module docs): it must never
    /// change, or existing stores would no longer find their messages.
    #[test]
    fn keys_are_laid_out_as_documented() {
        assert_eq!(
            imap_key("s", "INBOX", 7, 9),
            b"i\0s\0INBOX\0\x00\x00\x00\x07\x00\x00\x00\x09".to_vec()
        );
        assert_eq!(pop3_prefix("s"), b"p\0s\0".to_vec());
        assert_eq!(pop3_key("s", "AAQk1"), b"p\0s\0AAQk1".to_vec());
        assert_eq!(folder_key("s", "A/B"), b"s\0A/B".to_vec());
        assert_eq!(
            content_key("s", "A", &[0xab, 0xcd]),
            b"s\0A\0\xab\xcd".to_vec()
        );
        assert_eq!(id_of(&9u64.to_be_bytes()).unwrap(), 9);
        assert!(matches!(id_of(b"short"), Err(StoreError::Corrupt(_))));
    }

    /// A key of one source or folder never starts with another's prefix.
    #[test]
    fn sources_and_folders_do_not_share_prefixes() {
        assert!(!imap_key("ab", "c", 1, 1).starts_with(&imap_key("a", "bc", 1, 1)[..5]));
        assert!(!pop3_key("ab", "x").starts_with(&pop3_prefix("a")));
        assert!(!content_key("s", "AB", &[1]).starts_with(&content_key("s", "A", &[])));
    }
}
