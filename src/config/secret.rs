//! Secrets by reference: a password or client secret is read from the environment variable
//! or file the configuration names, when it is needed, and never stored in [`Settings`].
//!
//! Invariant: no error built here holds a secret's value, or any part of it. A
//! [`SecretError`] names the variable or file and says what to do; an I/O error contributes
//! its OS reason only (`io::Error`'s Display never quotes file content).

use std::path::PathBuf;

use super::{ConfigError, NatsAuth, SecretRef, Settings, SinkTarget, SourceAuth};
use crate::telemetry::ErrorKind;

/// Why a secret could not be read: the variable or file, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {name} is not set; export it before starting mailsluice")]
    EnvNotSet { name: String },
    #[error("environment variable {name} is set but empty")]
    EnvEmpty { name: String },
    #[error("environment variable {name} is not valid UTF-8")]
    EnvNotUnicode { name: String },
    #[error("secret file {} does not exist", path.display())]
    FileMissing { path: PathBuf },
    #[error("secret file {} is empty", path.display())]
    FileEmpty { path: PathBuf },
    /// Permissions, a directory in its place, invalid UTF-8: the OS reason says which.
    #[error("cannot read secret file {}: {reason}", path.display())]
    FileUnreadable {
        path: PathBuf,
        reason: std::io::Error,
    },
}

impl SecretError {
    /// A secret the node cannot read stops the sign-in before it starts: an `auth` error.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::Auth
    }
}

/// Checks that every secret the node will need is present and non-empty: the password of each
/// enabled password source, the client secret of each provider used by an enabled source,
/// and each sink's credentials (a webhook's secrets must also be well-formed `whsec_` ones).
/// Separate from [`load`](super::load) because read-only commands (`status`, `messages ...`) need no
/// secret. The messages name the variable or file, never the value.
pub fn check_secrets(settings: &Settings) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut used_providers = std::collections::BTreeSet::new();
    for (name, source) in &settings.sources {
        if !source.enabled {
            continue;
        }
        match &source.auth {
            SourceAuth::Password { secret } => {
                if let Err(e) = read_secret(secret) {
                    let key = match secret {
                        SecretRef::Env(_) => "password_env",
                        SecretRef::File(_) => "password_file",
                    };
                    errors.push(ConfigError::new(
                        format!("sources.{name}.{key}"),
                        e.to_string(),
                    ));
                }
            }
            SourceAuth::OAuth2 { provider, .. } => {
                used_providers.insert(provider.as_str());
            }
        }
    }
    for (name, provider) in &settings.providers {
        let Some(secret) = &provider.client_secret else {
            continue;
        };
        if !used_providers.contains(name.as_str()) {
            continue;
        }
        if let Err(e) = read_secret(secret) {
            let key = match secret {
                SecretRef::Env(_) => "client_secret_env",
                SecretRef::File(_) => "client_secret_file",
            };
            errors.push(ConfigError::new(
                format!("providers.{name}.{key}"),
                e.to_string(),
            ));
        }
    }
    // The admin token file is created by the node's first run, so only the files the
    // operator provides are checked here.
    let mut token_files: Vec<(String, &std::path::Path)> = Vec::new();
    if let Some(path) = &settings.node.metrics_token_file {
        token_files.push(("node.metrics_token_file".into(), path));
    }
    for (name, client) in &settings.api_clients {
        if let super::ApiTokenRef::File(path) = &client.token {
            token_files.push((format!("api_clients.{name}.token_file"), path));
        }
    }
    for (key, path) in token_files {
        if let Err(e) = read_secret(&SecretRef::File(path.to_path_buf())) {
            errors.push(ConfigError::new(key, e.to_string()));
        }
    }
    for (name, sink) in &settings.sinks {
        if let Some(e) = check_sink_secret(name, &sink.target) {
            errors.push(e);
        }
    }
    errors
}

/// A sink's secret: readable, and for a webhook a list of `whsec_` secrets. The format error
/// names the variable or file and the secret's position in it, never the value.
fn check_sink_secret(name: &str, target: &SinkTarget) -> Option<ConfigError> {
    let (key, secret, webhook) = match target {
        SinkTarget::Webhook(w) => {
            let key = match &w.secret {
                SecretRef::Env(_) => "secret_env",
                SecretRef::File(_) => "secret_file",
            };
            (key, w.secret.clone(), true)
        }
        SinkTarget::Nats(n) => match &n.auth {
            NatsAuth::None => return None,
            NatsAuth::CredsFile(path) => ("creds_file", SecretRef::File(path.clone()), false),
            NatsAuth::Token(r) => ("token_env", r.clone(), false),
            NatsAuth::UserPassword { password, .. } => ("password_env", password.clone(), false),
        },
    };
    let path = format!("sinks.{name}.{key}");
    let value = match read_secret(&secret) {
        Ok(value) => zeroize::Zeroizing::new(value),
        Err(e) => return Some(ConfigError::new(path, e.to_string())),
    };
    if !webhook {
        return None;
    }
    let e = crate::sinks::sign::parse_secrets(&value).err()?;
    let holder = match &secret {
        SecretRef::Env(var) => format!("environment variable {var}"),
        SecretRef::File(file) => format!("secret file {}", file.display()),
    };
    Some(ConfigError::new(path, format!("{holder}: {e}")))
}

/// A file holding a key, token or secret that group or others may read (or write): anyone
/// else on the machine with that access could sign in as the node or open its tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{key}: {} is open to group or others (mode {mode:04o}); only its owner should read it: chmod 600 {}",
    path.display(),
    path.display()
)]
pub struct LooseSecretFile {
    /// The config key naming the file (`node.secret_key_file`, `sources.NAME.password_file`).
    pub key: String,
    pub path: PathBuf,
    /// Permission bits (`0o644`).
    pub mode: u32,
}

/// Every file the configuration names that holds a key, token or secret, with the key naming
/// it: `node.secret_key_file` and each `*_file` secret reference (sinks' `secret_file` and
/// `creds_file` included), of disabled sources and unused providers too (their secrets are
/// just as readable).
pub fn secret_files(settings: &Settings) -> Vec<(String, PathBuf)> {
    let mut files = vec![(
        "node.secret_key_file".to_owned(),
        settings.node.secret_key_file.clone(),
    )];
    for (name, provider) in &settings.providers {
        if let Some(SecretRef::File(path)) = &provider.client_secret {
            files.push((format!("providers.{name}.client_secret_file"), path.clone()));
        }
    }
    for (name, source) in &settings.sources {
        if let SourceAuth::Password {
            secret: SecretRef::File(path),
        } = &source.auth
        {
            files.push((format!("sources.{name}.password_file"), path.clone()));
        }
    }
    files.push((
        "node.api_token_file".to_owned(),
        settings.node.api_token_file.clone(),
    ));
    if let Some(path) = &settings.node.metrics_token_file {
        files.push(("node.metrics_token_file".to_owned(), path.clone()));
    }
    if let Some(tls) = &settings.node.http_tls {
        files.push(("node.http_tls_key_file".to_owned(), tls.key_file.clone()));
    }
    for (name, client) in &settings.api_clients {
        if let super::ApiTokenRef::File(path) = &client.token {
            files.push((format!("api_clients.{name}.token_file"), path.clone()));
        }
    }
    for (name, sink) in &settings.sinks {
        match &sink.target {
            SinkTarget::Webhook(w) => {
                if let SecretRef::File(path) = &w.secret {
                    files.push((format!("sinks.{name}.secret_file"), path.clone()));
                }
            }
            SinkTarget::Nats(n) => {
                if let NatsAuth::CredsFile(path) = &n.auth {
                    files.push((format!("sinks.{name}.creds_file"), path.clone()));
                }
            }
        }
    }
    files
}

/// Of `files` (config key, path), those that exist and that group or others may access.
/// Missing files are left to [`check_secrets`]; a symbolic link is judged by its target,
/// which is what a reader gets.
pub fn loose_secret_files(files: &[(String, PathBuf)]) -> Vec<LooseSecretFile> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        files
            .iter()
            .filter_map(|(key, path)| {
                let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
                (mode & 0o077 != 0).then(|| LooseSecretFile {
                    key: key.clone(),
                    path: path.clone(),
                    mode,
                })
            })
            .collect()
    }
    #[cfg(not(unix))]
    {
        let _ = files;
        Vec::new()
    }
}

/// Reads a secret: the variable's value, or the file's content without its trailing newline.
/// The error names the variable or file and says what to do, but never contains the value.
pub fn read_secret(r: &SecretRef) -> Result<String, SecretError> {
    match r {
        SecretRef::Env(name) => {
            let name = name.clone();
            match std::env::var(&name) {
                Ok(value) if value.trim().is_empty() => Err(SecretError::EnvEmpty { name }),
                Ok(value) => Ok(value),
                Err(std::env::VarError::NotPresent) => Err(SecretError::EnvNotSet { name }),
                Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::EnvNotUnicode { name }),
            }
        }
        SecretRef::File(path) => {
            let path = path.clone();
            match std::fs::read_to_string(&path) {
                Ok(content) => {
                    let value = content.trim_end_matches(['\r', '\n']);
                    if value.trim().is_empty() {
                        Err(SecretError::FileEmpty { path })
                    } else {
                        Ok(value.to_owned())
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(SecretError::FileMissing { path })
                }
                Err(reason) => Err(SecretError::FileUnreadable { path, reason }),
            }
        }
    }
}
