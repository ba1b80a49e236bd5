//! Configuration: a TOML file plus `MAILSLUICE__SECTION__KEY` environment overrides, turned
//! into validated [`Settings`].
//!
//! Raw -> validated: the `config` crate merges the file and the environment into an untyped
//! tree; `validate` walks that tree once, fills defaults and collects *every* error with its
//! key path, so `check-config` shows them all in one go instead of one per run.
//!
//! Invariants:
//! - Secrets never pass through here. Settings hold only references ([`SecretRef`]);
//!   [`check_secrets`] proves they resolve and [`read_secret`] reads one when it is needed.
//!   No error message built here contains a configured value under a secret-looking key.
//! - Relative paths stay relative to the working directory; nothing is rewritten.
//! - Loading has no side effects: it reads the file and the environment, nothing else.

mod convert;
pub mod endpoint;
pub mod live;
mod secret;
pub mod settings;
mod tree;
mod validate;

#[cfg(test)]
mod tests;

pub use secret::{
    LooseSecretFile, SecretError, check_secrets, loose_secret_files, read_secret, secret_files,
};
pub use settings::*;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the config file is looked for when neither `-c` nor [`CONFIG_ENV`] says otherwise.
pub const DEFAULT_PATH: &str = "config/mailsluice.toml";
/// Environment variable naming the config file.
pub const CONFIG_ENV: &str = "MAILSLUICE_CONFIG";
/// Prefix of override variables: `MAILSLUICE__SOURCES__SUPPORT__PORT=10993` sets
/// `sources.support.port`.
pub const ENV_PREFIX: &str = "MAILSLUICE";
/// Between the prefix and the first key, and between levels.
pub const ENV_SEPARATOR: &str = "__";

/// One problem in the configuration, at one key path (`sources.support.port`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Dotted key path (`sources.support.folders[1]`), or the file for whole-file problems.
    pub path: String,
    /// What is wrong and what to do about it. Never contains a secret.
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Something that loads but is most likely not what was meant (a sink's source pattern that
/// matches no source, a `max_age_secs` shorter than a minute). `check-config` prints it, `run` logs it; neither refuses the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigWarning {
    /// Dotted key path, as in [`ConfigError`].
    pub path: String,
    pub message: String,
}

/// Every warning about valid settings, in key order.
pub fn warnings(settings: &Settings) -> Vec<ConfigWarning> {
    let mut all = validate::sinks::unreachable_raw_url(settings);
    all.extend(validate::sinks::unmatched_patterns(settings));
    all.extend(validate::sinks::short_max_age(settings));
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all.into_iter()
        .map(|(path, message)| ConfigWarning { path, message })
        .collect()
}

/// Every problem found in one load, in key order. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<Vec<ConfigError>> for ConfigErrors {
    fn from(errors: Vec<ConfigError>) -> Self {
        ConfigErrors(errors)
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Which file: explicit `-c` path, else env `MAILSLUICE_CONFIG` (when non-empty), else
/// `config/mailsluice.toml`.
pub fn resolve_path(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

/// Loads `path` and applies `MAILSLUICE__SECTION__KEY` overrides from the process
/// environment.
pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        let message = if e.kind() == std::io::ErrorKind::NotFound {
            format!(
                "config file not found; pass -c FILE or set {CONFIG_ENV} (default {DEFAULT_PATH})"
            )
        } else {
            format!("cannot read the config file: {e}")
        };
        ConfigErrors(vec![ConfigError::new(shown.clone(), message)])
    })?;

    let mut env = Vec::new();
    let mut errors = Vec::new();
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}").to_lowercase();
    for (name, value) in std::env::vars_os() {
        // Same rule as the `config` crate: non-Unicode names are skipped, names compare in
        // lowercase.
        let Ok(name) = name.into_string() else {
            continue;
        };
        if !name.to_lowercase().starts_with(&prefix) {
            continue;
        }
        match value.into_string() {
            Ok(value) => env.push((name, value)),
            Err(_) => errors.push(ConfigError::new(
                name,
                "environment override is not valid UTF-8",
            )),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    load_text(&text, &shown, env)
}

/// Same as [`load`], from TOML text and an explicit environment (the process environment is
/// not read). Entries without the `MAILSLUICE__` prefix are ignored.
pub fn load_str(toml_text: &str, env: &HashMap<String, String>) -> Result<Settings, ConfigErrors> {
    let env = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    load_text(toml_text, "config", env)
}

fn load_text(
    text: &str,
    origin: &str,
    env: Vec<(String, String)>,
) -> Result<Settings, ConfigErrors> {
    use ::config::Source as _;

    let mut ctx = tree::Ctx::new(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let overrides = ::config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .try_parsing(true)
        .source(Some(env.into_iter().collect()));
    let built = ::config::Config::builder()
        .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
        .add_source(overrides)
        .build()
        .and_then(|c| c.collect());
    let root = match built {
        Ok(root) => root,
        Err(e) => return Err(ConfigErrors(vec![syntax_error(origin, text, &e)])),
    };
    let settings = validate::settings(&mut ctx, &root);
    ctx.finish(settings).map_err(ConfigErrors)
}

/// A TOML syntax error, reported without the offending source line: that line may well be
/// `password = hunter2`.
fn syntax_error(origin: &str, text: &str, e: &::config::ConfigError) -> ConfigError {
    if let Err(toml_err) = toml::from_str::<toml::Table>(text) {
        let message = toml_err.message().trim().replace('\n', "; ");
        let message = match toml_err.span() {
            Some(span) => {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("invalid TOML at line {line}, column {column}: {message}")
            }
            None => format!("invalid TOML: {message}"),
        };
        return ConfigError::new(origin, message);
    }
    // The `config` crate refused what `toml` accepts: keep only the first line of its message,
    // which carries the position but not the source excerpt.
    let full = e.to_string();
    let first = full.lines().next().unwrap_or("invalid configuration");
    ConfigError::new(origin, first.to_owned())
}
