//! Encryption at rest for token records: ChaCha20-Poly1305 with a random 96-bit nonce per
//! record, key from `node.secret_key_file` (64 hex characters, created 0600 on first use).

use std::io::Write;
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

/// The file a key rotation writes the new key to before it re-encrypts anything.
pub fn pending_path(key_file: &Path) -> std::path::PathBuf {
    let mut name = key_file.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    key_file.with_file_name(name)
}

impl SecretBox {
    pub fn load_or_create(path: &Path) -> Result<SecretBox, String> {
        let key = match std::fs::read_to_string(path) {
            Ok(text) => hex::decode(text.trim())
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| format!("{}: expected 64 hex characters", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; 32];
                rand::rng().fill_bytes(&mut key);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| format!("{}: {e}", parent.display()))?;
                }
                write_private(path, hex::encode(&key).as_bytes())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                key
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(SecretBox {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    /// A fresh random key, written to `path` (0600, must not exist).
    pub fn create_at(path: &Path) -> Result<SecretBox, String> {
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        write_private(path, hex::encode(&key).as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(SecretBox {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    /// Loads an existing key file.
    pub fn load(path: &Path) -> Result<SecretBox, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = hex::decode(text.trim())
            .ok()
            .filter(|k| k.len() == 32)
            .ok_or_else(|| format!("{}: expected 64 hex characters", path.display()))?;
        Ok(SecretBox {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        })
    }

    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, String> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plain)
            .map_err(|_| "encryption failed".to_string())?;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, String> {
        if sealed.len() < 12 {
            return Err("record too short".into());
        }
        let (nonce, body) = sealed.split_at(12);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), body)
            .map_err(|_| "cannot decrypt (wrong node.secret_key_file?)".to_string())
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
}
