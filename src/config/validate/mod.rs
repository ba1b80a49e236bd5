//! The rules: untyped tree -> [`Settings`], with defaults filled in and every error recorded
//! in [`Ctx`] with its key path. A function here returns its best guess (a default, or `None`)
//! after recording an error, so one bad key never hides the next; the caller throws the
//! result away when any error was recorded.
//!
//! One file per section of the config file: [`node`] (`[node]`), [`tls`] (`[tls]`),
//! [`providers`] (`[providers.NAME]`), [`sources`] (`[sources.NAME]`), [`api`]
//! (`[api_clients.NAME]`) and [`sinks`] (`[sinks.NAME]`), plus [`url`] for URL-valued keys. This file holds the entry point and the rules more than one section
//! shares: `*_secs` bounds, section names, and `X_env` / `X_file` secret references.

mod api;
mod node;
mod providers;
pub(super) mod sinks;
mod sources;
mod tls;
mod url;

use std::path::PathBuf;
use std::time::Duration;

use ::config::{Map, Value};

use super::settings::*;
use super::tree::{Ctx, Table, closest};
use super::{ENV_PREFIX, ENV_SEPARATOR};

const TOP_KEYS: &[&str] = &[
    "node",
    "tls",
    "providers",
    "sources",
    "api_clients",
    "sinks",
];

/// Upper bound of every `*_secs` key: one year is longer than any sensible interval and far
/// from the point where `Instant + Duration` overflows.
const MAX_SECS: u64 = 365 * 24 * 3600;

pub(super) fn settings(ctx: &mut Ctx, root: &Map<String, Value>) -> Settings {
    let top = Table::open(ctx, "", root, TOP_KEYS);
    let node_table = Table::open_value(ctx, "node", top.get("node"), node::NODE_KEYS);
    let node = node::node(ctx, &node_table);
    let tls_table = Table::open_value(ctx, "tls", top.get("tls"), tls::TLS_KEYS);
    let tls = tls::tls(ctx, &tls_table);
    let (providers, provider_names) = providers::providers(ctx, top.get("providers"));
    let (sources, source_names) =
        sources::sources(ctx, top.get("sources"), &providers, &provider_names);
    let api_clients = api::api_clients(ctx, top.get("api_clients"));
    let sinks = sinks::sinks(ctx, top.get("sinks"), &source_names);
    Settings {
        node,
        tls,
        providers,
        sources,
        api_clients,
        sinks,
    }
}

pub(super) fn secs(ctx: &mut Ctx, t: &Table, key: &str, default: u64) -> Duration {
    Duration::from_secs(t.uint(ctx, key, 1, MAX_SECS, default))
}

// ---------------------------------------------------------------------------------------------
// Names shared by [providers.NAME] and [sources.NAME]

/// Names are metric labels and appear in override variables, which the `config` crate
/// lowercases: a name with capitals could never be overridden.
fn check_name(ctx: &mut Ctx, path: &str, name: &str, what: &str) {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && !name.contains(ENV_SEPARATOR);
    if !ok {
        ctx.error(
            path,
            format!(
                "{what} name {name:?} must use lowercase letters, digits, '_' and '-' (starting \
                 with a letter or digit, no \"__\"): names are metric labels, and environment \
                 overrides {ENV_PREFIX}__...__NAME__KEY reach lowercase names only"
            ),
        );
    }
}

/// A `[section.NAME]` made only of override variables and lacking its defining key: almost
/// always a misspelt or miscased name in a variable. One clear error instead of a list of
/// "required" ones.
fn orphan(
    ctx: &mut Ctx,
    section: &str,
    name: &str,
    map: &Map<String, Value>,
    defining_key: &str,
    file_names: &[&str],
) -> bool {
    let path = format!("{section}.{name}");
    if map.contains_key(defining_key) || !ctx.table_from_env(&path, map) {
        return false;
    }
    let vars = ctx.env_names_under(&path).join(", ");
    let mut message = format!(
        "no [{path}] in the config file, yet environment variable(s) {vars} override it; \
         overrides change existing entries (names in lowercase)"
    );
    if let Some(near) = closest(name, file_names.iter().copied()) {
        message.push_str(&format!("; did you mean [{section}.{near}]?"));
    }
    ctx.error(&path, message);
    true
}

fn file_names<'a>(
    ctx: &Ctx,
    section: &str,
    entries: &[(&'a str, &Map<String, Value>)],
) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|(name, map)| !ctx.table_from_env(&format!("{section}.{name}"), map))
        .map(|(name, _)| *name)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Secret references shared by [providers.NAME] and [sources.NAME]

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `X_env` / `X_file`: at most one, the variable name well formed. `None` when neither is set
/// or on error (recorded). Values are never echoed: a secret pasted into `X_env` would leak.
fn secret_ref(ctx: &mut Ctx, t: &Table, env_key: &str, file_key: &str) -> Option<SecretRef> {
    let env = t.non_empty(ctx, env_key).map(|s| s.trim().to_owned());
    if let Some(name) = &env
        && !is_env_name(name)
    {
        ctx.error(
            &t.key(env_key),
            "must be the name of an environment variable (letters, digits and '_', not \
             starting with a digit) that holds the secret, not the secret itself",
        );
        return None;
    }
    let file = t.non_empty(ctx, file_key).map(PathBuf::from);
    match (env, file) {
        (Some(_), Some(_)) => {
            ctx.error(
                t.path(),
                format!("{env_key} and {file_key} are both set; keep one"),
            );
            None
        }
        (Some(name), None) => Some(SecretRef::Env(name)),
        (None, Some(path)) => Some(SecretRef::File(path)),
        (None, None) => None,
    }
}
