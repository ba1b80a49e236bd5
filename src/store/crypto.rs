//! Encryption at rest for token records: ChaCha20-Poly1305 with a random 96-bit nonce per
//! record, key from `node.secret_key_file` (64 hex characters, created 0600 on first use).

use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::telemetry::ErrorKind;

/// The at-rest cipher. Its key is wiped when it is dropped (the cipher is
/// `ZeroizeOnDrop`), as is every copy made on the way (file text, hex, bytes).
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

/// Why the at-rest key could not be loaded, created or replaced. Names the file, never
/// what it holds.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file is there but does not hold a key.
    #[error("{}: expected 64 hex characters", path.display())]
    Malformed { path: PathBuf },
    /// Reading, creating or renaming the file (or creating its directory) failed.
    #[error("{}: {reason}", path.display())]
    Io {
        path: PathBuf,
        reason: std::io::Error,
    },
    /// A key rotation was interrupted and neither key opens the stored records.
    #[error(
        "neither {} nor {} decrypts the stored tokens",
        key_file.display(),
        pending.display()
    )]
    NeitherOpens { key_file: PathBuf, pending: PathBuf },
}

impl KeyError {
    /// The store cannot be opened (or its key replaced): a `store` error.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Store
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
        move |reason| KeyError::Io {
            path: path.to_path_buf(),
            reason,
        }
    }
}

/// Why a record could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The cipher refused the plaintext (only ever for one far larger than a token record).
    #[error("encryption failed")]
    Encrypt,
    /// Shorter than a nonce and a tag: cut, not sealed by us.
    #[error("record too short")]
    TooShort,
    /// The tag does not match: another key sealed it, or it was altered.
    #[error("cannot decrypt (wrong node.secret_key_file?)")]
    Decrypt,
}

impl SealError {
    /// A token record that cannot be sealed or opened: a `store` error.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Store
    }
}

/// The file a key rotation writes the new key to before it re-encrypts anything.
pub fn pending_path(key_file: &Path) -> std::path::PathBuf {
    let mut name = key_file.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    key_file.with_file_name(name)
}

/// The key in a key file's text, or [`KeyError::Malformed`].
fn parse_key(path: &Path, text: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let key = Zeroizing::new(hex::decode(text.trim()).unwrap_or_default());
    if key.len() == 32 {
        Ok(key)
    } else {
        Err(KeyError::Malformed {
            path: path.to_path_buf(),
        })
    }
}

/// The key file's text, wiped when dropped.
fn read_key_text(path: &Path) -> std::io::Result<Zeroizing<String>> {
    std::fs::read_to_string(path).map(Zeroizing::new)
}

/// A new random key, and writes it (hex, 0600) to `path`, which must not exist.
fn new_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let mut key = Zeroizing::new(vec![0u8; 32]);
    rand::rng().fill_bytes(&mut key);
    let text = Zeroizing::new(hex::encode(&*key));
    write_private(path, text.as_bytes()).map_err(KeyError::io(path))?;
    Ok(key)
}

impl SecretBox {
    pub fn load_or_create(path: &Path) -> Result<SecretBox, KeyError> {
        let key = match read_key_text(path) {
            Ok(text) => parse_key(path, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(KeyError::io(parent))?;
                }
                new_key_file(path)?
            }
            Err(e) => return Err(KeyError::io(path)(e)),
        };
        Ok(SecretBox {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    /// A fresh random key, written to `path` (0600, must not exist).
    pub fn create_at(path: &Path) -> Result<SecretBox, KeyError> {
        let key = new_key_file(path)?;
        Ok(SecretBox {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    /// Loads an existing key file.
    pub fn load(path: &Path) -> Result<SecretBox, KeyError> {
        let text = read_key_text(path).map_err(KeyError::io(path))?;
        let key = parse_key(path, &text)?;
        Ok(SecretBox {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        self.seal_with(plain, b"")
    }

    /// Seals `plain` with `aad` as associated data: the record opens only with the same
    /// `aad` ([`SecretBox::open_with`]), which is not stored in it.
    pub fn seal_with(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| SealError::Encrypt)?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        self.open_with(sealed, b"")
    }

    /// Opens a record sealed by [`SecretBox::seal_with`] with the same `aad`.
    pub fn open_with(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        // Nonce plus Poly1305 tag: anything shorter was cut, not sealed by us.
        if sealed.len() < 12 + 16 {
            return Err(SealError::TooShort);
        }
        let (nonce, body) = sealed.split_at(12);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
            .map_err(|_| SealError::Decrypt)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    /// The cipher that holds the key wipes it on drop; a dependency update that lost this
    /// would fail to compile here.
    #[test]
    fn the_key_is_wiped_when_the_box_is_dropped() {
        fn wipes_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wipes_on_drop::<chacha20poly1305::ChaCha20Poly1305>();
    }

    use super::*;

    #[test]
    fn roundtrip_and_key_file_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let b = SecretBox::load_or_create(&path).unwrap();
        let sealed = b.seal(b"hello").unwrap();
        assert_ne!(&sealed[12..], b"hello");
        let b2 = SecretBox::load_or_create(&path).unwrap();
        assert_eq!(b2.open(&sealed).unwrap(), b"hello");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let other = SecretBox::load_or_create(&dir.path().join("k2")).unwrap();
        assert!(other.open(&sealed).is_err());
    }

    const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn pending_key_file_sits_beside_the_key() {
        assert_eq!(
            pending_path(Path::new("/var/lib/ms/secret.key")),
            Path::new("/var/lib/ms/secret.key.new")
        );
    }

    #[test]
    fn existing_key_file_is_used_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, format!("{KEY_HEX}\n")).unwrap();
        let sealed = SecretBox::load_or_create(&path)
            .unwrap()
            .seal(b"t")
            .unwrap();
        // The same key through the other loader, and through the cipher directly.
        assert_eq!(SecretBox::load(&path).unwrap().open(&sealed).unwrap(), b"t");
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&hex::decode(KEY_HEX).unwrap()));
        assert_eq!(
            cipher
                .decrypt(Nonce::from_slice(&sealed[..12]), &sealed[12..])
                .unwrap(),
            b"t"
        );
        // An existing key is never replaced.
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{KEY_HEX}\n")
        );
    }

    #[test]
    fn key_files_must_hold_64_hex_characters() {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [
            ("short", &KEY_HEX[..62]),
            ("long", &format!("{KEY_HEX}00")[..]),
            ("not-hex", &"zz".repeat(32)[..]),
            ("empty", ""),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let want = format!("{}: expected 64 hex characters", path.display());
            for e in [
                SecretBox::load(&path).err(),
                SecretBox::load_or_create(&path).err(),
            ] {
                let e = e.expect(name);
                assert!(
                    matches!(&e, KeyError::Malformed { path: p } if *p == path),
                    "{name}"
                );
                assert_eq!(e.to_string(), want, "{name}");
                assert_eq!(e.kind(), ErrorKind::Store);
            }
        }
        // A key file that cannot be read (here: raw bytes, not text) is reported as it is,
        // never treated as missing and replaced.
        let binary = dir.path().join("binary");
        std::fs::write(&binary, [0xff; 32]).unwrap();
        let read_error = std::fs::read_to_string(&binary).unwrap_err();
        let want = format!("{}: {read_error}", binary.display());
        for e in [
            SecretBox::load_or_create(&binary).err(),
            SecretBox::load(&binary).err(),
        ] {
            let e = e.expect("unreadable");
            assert!(
                matches!(&e, KeyError::Io { path, .. } if *path == binary),
                "{e:?}"
            );
            assert_eq!(e.to_string(), want);
        }
        assert_eq!(std::fs::read(&binary).unwrap(), [0xff; 32]);
        assert!(SecretBox::load(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn created_key_file_is_private_and_loadable() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/k");
        let created = SecretBox::load_or_create(&nested).unwrap();
        let text = std::fs::read_to_string(&nested).unwrap();
        assert_eq!(hex::decode(&text).unwrap().len(), 32);

        let path = dir.path().join("rotated");
        let fresh = SecretBox::create_at(&path).unwrap();
        let sealed = fresh.seal(b"new key").unwrap();
        assert_eq!(
            SecretBox::load(&path).unwrap().open(&sealed).unwrap(),
            b"new key"
        );
        assert!(created.open(&sealed).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Never over an existing key: a rotation must not destroy the key it replaces.
        assert!(SecretBox::create_at(&path).is_err());
        assert_eq!(
            SecretBox::load(&path).unwrap().open(&sealed).unwrap(),
            b"new key"
        );
    }

    #[test]
    fn sealed_record_is_nonce_ciphertext_tag_with_a_fresh_nonce() {
        let dir = tempfile::tempdir().unwrap();
        let b = SecretBox::load_or_create(&dir.path().join("k")).unwrap();
        let one = b.seal(b"abc").unwrap();
        let two = b.seal(b"abc").unwrap();
        assert_eq!(one.len(), 12 + 3 + 16);
        assert_ne!(one[..12], two[..12]);
        let empty = b.seal(b"").unwrap();
        assert_eq!(empty.len(), 12 + 16);
        assert_eq!(b.open(&empty).unwrap(), b"");
    }

    #[test]
    fn associated_data_must_match_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let b = SecretBox::load_or_create(&dir.path().join("k")).unwrap();
        let sealed = b.seal_with(b"grant", b"source a").unwrap();
        assert_eq!(b.open_with(&sealed, b"source a").unwrap(), b"grant");
        assert_eq!(b.open_with(&sealed, b"source b"), Err(SealError::Decrypt));
        assert_eq!(b.open(&sealed), Err(SealError::Decrypt));
        // Without associated data, as records written before it was used.
        let plain = b.seal(b"grant").unwrap();
        assert_eq!(b.open_with(&plain, b"").unwrap(), b"grant");
        assert_eq!(b.open_with(&plain, b"source a"), Err(SealError::Decrypt));
    }

    #[test]
    fn short_or_altered_records_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let b = SecretBox::load_or_create(&dir.path().join("k")).unwrap();
        for len in 0..12 + 16 {
            assert_eq!(
                b.open(&vec![7; len]),
                Err(SealError::TooShort),
                "{len} bytes"
            );
        }
        let mut sealed = b.seal(b"token").unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert_eq!(b.open(&sealed), Err(SealError::Decrypt));
        // What the operator reads, unchanged.
        assert_eq!(SealError::TooShort.to_string(), "record too short");
        assert_eq!(
            SealError::Decrypt.to_string(),
            "cannot decrypt (wrong node.secret_key_file?)"
        );
        assert_eq!(SealError::Encrypt.to_string(), "encryption failed");
        assert_eq!(SealError::Decrypt.kind(), ErrorKind::Store);
    }
}
