//! Who may call the node: the admin token (`node.api_token_file`, created on the first run),
//! the `[api_clients.NAME]` tokens with their roles, and the optional `/metrics` token.
//!
//! Only SHA-256 digests of the tokens are kept in memory. A presented token is hashed and
//! compared with every digest, all of them, each comparison in constant time, so neither
//! the position of a wrong byte nor which client matched shows in the answer's timing.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::{ApiTokenRef, Role, Settings};

/// A token file larger than this is not a token (a wrong path, a key bundle): refused before
/// it is read.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Random bytes in a token the node creates: 256 bits.
const TOKEN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("{key} {}: {source}", path.display())]
    Io {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {}: {why}", path.display())]
    Invalid {
        key: String,
        path: PathBuf,
        why: &'static str,
    },
}

impl CredentialsError {
    /// For metrics and logs: what went wrong, in one word.
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialsError::Io { .. } => "io",
            CredentialsError::Invalid { .. } => "invalid",
        }
    }
}

/// The caller a valid token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `admin` for the node's own token, else the NAME of `[api_clients.NAME]`.
    pub name: String,
    pub role: Role,
}

/// The digests of every token the node accepts.
pub struct Credentials {
    /// (caller, digest), the admin token first.
    callers: Vec<(Caller, [u8; 32])>,
    metrics: Option<[u8; 32]>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field(
                "callers",
                &self.callers.iter().map(|(c, _)| c).collect::<Vec<_>>(),
            )
            .field("metrics_token", &self.metrics.is_some())
            .finish()
    }
}

impl Credentials {
    /// Reads every token file `settings` names. With `create_admin`, a missing
    /// `node.api_token_file` is created first (256 random bits, mode 0600): what `run` does.
    pub fn load(settings: &Settings, create_admin: bool) -> Result<Credentials, CredentialsError> {
        let admin_file = &settings.node.api_token_file;
        let admin = if create_admin {
            ensure_token_file(admin_file, "node.api_token_file")?
        } else {
            read_token_file(admin_file, "node.api_token_file")?
        };
        let mut callers = vec![(
            Caller {
                name: "admin".into(),
                role: Role::Admin,
            },
            digest(&admin),
        )];
        for (name, client) in &settings.api_clients {
            let sha = match &client.token {
                ApiTokenRef::Sha256(sha) => *sha,
                ApiTokenRef::File(path) => digest(&read_token_file(
                    path,
                    &format!("api_clients.{name}.token_file"),
                )?),
            };
            callers.push((
                Caller {
                    name: name.clone(),
                    role: client.role,
                },
                sha,
            ));
        }
        let metrics = match &settings.node.metrics_token_file {
            Some(path) => Some(digest(&read_token_file(path, "node.metrics_token_file")?)),
            None => None,
        };
        Ok(Credentials { callers, metrics })
    }

    /// Whose token `presented` is, if anyone's.
    pub fn caller(&self, presented: &str) -> Option<&Caller> {
        let sha = digest(presented);
        let mut found = None;
        // No early exit: every digest is compared, whichever matches.
        for (caller, known) in &self.callers {
            if constant_time_eq(&sha, known) && found.is_none() {
                found = Some(caller);
            }
        }
        found
    }

    /// Whether `/metrics` needs a token.
    pub fn metrics_protected(&self) -> bool {
        self.metrics.is_some()
    }

    /// Whether `presented` may read `/metrics`: the metrics token, or any API token (an
    /// operator with an API token can read the numbers anyway).
    pub fn metrics_allowed(&self, presented: &str) -> bool {
        let Some(metrics) = &self.metrics else {
            return true;
        };
        let sha = digest(presented);
        let by_metrics_token = constant_time_eq(&sha, metrics);
        let by_api_token = self.caller(presented).is_some();
        by_metrics_token | by_api_token
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// The token in `path` (trailing whitespace trimmed): what the CLI sends to a running node,
/// and how the node reads client and metrics tokens.
pub fn read_token_file(path: &Path, key: &str) -> Result<String, CredentialsError> {
    let io = |source| CredentialsError::Io {
        key: key.to_owned(),
        path: path.to_path_buf(),
        source,
    };
    let invalid = |why| CredentialsError::Invalid {
        key: key.to_owned(),
        path: path.to_path_buf(),
        why,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(invalid("larger than 4 KiB: not a token file"));
    }
    let token = text.trim();
    if token.is_empty() {
        return Err(invalid("empty: the file must hold the token"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "holds more than one word: the file must hold the token alone",
        ));
    }
    Ok(token.to_owned())
}

/// Reads the token in `path`, or creates the file with a new random token when there is
/// none. Created with mode 0600 and `create_new`, so a file (or link) put there by someone
/// else at the same moment is read, never overwritten or followed into.
pub fn ensure_token_file(path: &Path, key: &str) -> Result<String, CredentialsError> {
    match read_token_file(path, key) {
        Err(CredentialsError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let io = |source| CredentialsError::Io {
        key: key.to_owned(),
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let token = new_token();
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(format!("{token}\n").as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io)?;
            Ok(token)
        }
        // Another process created it between the read and the create: theirs wins.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_token_file(path, key),
        Err(e) => Err(io(e)),
    }
}

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};

/// 256 random bits, base64url without padding (43 characters: safe in a header and a file).
pub fn new_token() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn settings(extra: &str, dir: &Path) -> Settings {
        crate::config::load_str(
            &format!(
                "[node]\ndata_dir = \"{}\"\n{extra}",
                dir.join("data").display()
            ),
            &Default::default(),
        )
        .expect("config")
    }

    #[test]
    fn the_admin_token_is_created_private_once_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings("", dir.path());
        let file = dir.path().join("data").join("api.token");
        assert_eq!(s.node.api_token_file, file);
        // Without create, a missing file is an error naming the key.
        let err = Credentials::load(&s, false).unwrap_err().to_string();
        assert!(err.contains("node.api_token_file"), "{err}");

        let creds = Credentials::load(&s, true).unwrap();
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(file.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o077, 0, "data directory open to others");
        let token = read_token_file(&file, "k").unwrap();
        assert_eq!(token.len(), 43);
        assert_eq!(creds.caller(&token).unwrap().role, Role::Admin);
        // A second start keeps the token the CLI and scripts already use.
        let again = Credentials::load(&s, true).unwrap();
        assert_eq!(read_token_file(&file, "k").unwrap(), token);
        assert!(again.caller(&token).is_some());
        assert_ne!(new_token(), new_token());
    }

    #[test]
    fn a_link_at_the_token_path_is_not_followed_into() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        let link = dir.path().join("api.token");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = ensure_token_file(&link, "node.api_token_file").unwrap_err();
        assert!(err.to_string().contains("node.api_token_file"), "{err}");
        assert!(!target.exists(), "the token was written through the link");
    }

    #[test]
    fn roles_come_from_the_clients_and_wrong_tokens_from_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let grafana = dir.path().join("grafana.token");
        std::fs::write(&grafana, "grafana-token\n").unwrap();
        let hashed = hex::encode(Sha256::digest(b"reader-token"));
        let metrics = dir.path().join("metrics.token");
        std::fs::write(&metrics, "scrape-token").unwrap();
        let s = settings(
            &format!(
                "metrics_token_file = \"{}\"\n\
                 [api_clients.grafana]\nrole = \"read\"\ntoken_file = \"{}\"\n\
                 [api_clients.archiver]\nrole = \"mail\"\ntoken_sha256 = \"{hashed}\"\n",
                metrics.display(),
                grafana.display()
            ),
            dir.path(),
        );
        let creds = Credentials::load(&s, true).unwrap();
        let who = creds.caller("grafana-token").unwrap();
        assert_eq!((who.name.as_str(), who.role), ("grafana", Role::Read));
        let who = creds.caller("reader-token").unwrap();
        assert_eq!((who.name.as_str(), who.role), ("archiver", Role::Mail));
        assert!(creds.caller("grafana-token ").is_none());
        assert!(creds.caller("").is_none());
        assert!(
            creds.caller("scrape-token").is_none(),
            "metrics token is not an API token"
        );
        assert!(creds.metrics_protected());
        assert!(creds.metrics_allowed("scrape-token"));
        assert!(creds.metrics_allowed("grafana-token"));
        assert!(!creds.metrics_allowed("guess"));
        // Debug names the callers, never a digest.
        let debug = format!("{creds:?}");
        assert!(
            debug.contains("grafana") && !debug.contains(&hashed),
            "{debug}"
        );
    }

    #[test]
    fn token_files_that_are_not_one_token_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        for (content, why) in [
            ("", "empty"),
            ("  \n", "empty"),
            ("two words", "more than one word"),
        ] {
            std::fs::write(&f, content).unwrap();
            let err = read_token_file(&f, "api_clients.x.token_file")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(why) && err.contains("api_clients.x.token_file"),
                "{err}"
            );
        }
        std::fs::write(&f, "a".repeat(4096)).unwrap();
        assert!(read_token_file(&f, "k").is_ok());
        std::fs::write(&f, "a".repeat(4097)).unwrap();
        assert!(
            read_token_file(&f, "k")
                .unwrap_err()
                .to_string()
                .contains("4 KiB")
        );
    }

    #[test]
    fn without_a_metrics_token_metrics_are_open() {
        let dir = tempfile::tempdir().unwrap();
        let creds = Credentials::load(&settings("", dir.path()), true).unwrap();
        assert!(!creds.metrics_protected());
        assert!(creds.metrics_allowed(""));
    }
}
