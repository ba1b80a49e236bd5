//! Reading the untyped tree built by the `config` crate, by key path.
//!
//! Getters never stop at a bad value: they record a [`ConfigError`] with the value's path and
//! return `None` (or the default), so validation goes on and reports everything at once.
//!
//! Values set by an override variable need care: the `config` crate lowercases the variable
//! name to make the key path, and with `try_parsing` turns `"1.3"` into a float and `"42"` into
//! an integer. [`Ctx`] keeps each variable's name and raw text by key path, so a string key
//! set from the environment gets exactly the text that was exported, and errors name the
//! variable that caused them.

use std::collections::BTreeMap;

use ::config::{Map, Value, ValueKind};

use super::{ConfigError, ENV_PREFIX, ENV_SEPARATOR};

/// An override variable, by the key path it sets.
pub(super) struct EnvVar {
    /// The variable's name as exported (`MAILSLUICE__SOURCES__SUPPORT__PORT`).
    pub name: String,
    /// Its text before the `config` crate parsed it.
    pub raw: String,
}

/// Errors found so far, and the override variables by key path.
pub(super) struct Ctx {
    errors: Vec<ConfigError>,
    env: BTreeMap<String, EnvVar>,
}

impl Ctx {
    /// `env` may hold any variables; only `MAILSLUICE__...` ones are kept, mapped to key paths
    /// exactly as the `config` crate maps them (lowercased, `__` -> `.`).
    pub fn new<'a>(env: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}").to_lowercase();
        let mut vars = BTreeMap::new();
        for (name, raw) in env {
            let lower = name.to_lowercase();
            if let Some(rest) = lower.strip_prefix(&prefix) {
                vars.insert(
                    rest.replace(ENV_SEPARATOR, "."),
                    EnvVar {
                        name: name.to_owned(),
                        raw: raw.to_owned(),
                    },
                );
            }
        }
        Ctx {
            errors: Vec::new(),
            env: vars,
        }
    }

    /// Records an error at `path`; when an override variable set that path, names it.
    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        let mut message = message.into();
        if let Some(var) = self.env.get(path) {
            message.push_str(&format!(" (set by environment variable {})", var.name));
        }
        self.errors.push(ConfigError::new(path, message));
    }

    /// The override variable that set `path`, if one did.
    pub fn env(&self, path: &str) -> Option<&EnvVar> {
        self.env.get(path)
    }

    /// True when every leaf of the table at `path` was set by an override variable (none by
    /// the file).
    pub fn table_from_env(&self, path: &str, map: &Map<String, Value>) -> bool {
        !map.is_empty()
            && map
                .iter()
                .all(|(k, child)| self.value_from_env(&join(path, k), child))
    }

    fn value_from_env(&self, path: &str, v: &Value) -> bool {
        match &v.kind {
            ValueKind::Table(map) => self.table_from_env(path, map),
            _ => self.env.contains_key(path),
        }
    }

    /// Names of the override variables at or below `path`.
    pub fn env_names_under(&self, path: &str) -> Vec<&str> {
        let below = format!("{path}.");
        self.env
            .iter()
            .filter(|(p, _)| *p == path || p.starts_with(&below))
            .map(|(_, var)| var.name.as_str())
            .collect()
    }

    /// The value when nothing was wrong, else every error, ordered by key path.
    pub fn finish<T>(mut self, value: T) -> Result<T, Vec<ConfigError>> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            self.errors.sort_by(|a, b| a.path.cmp(&b.path));
            Err(self.errors)
        }
    }
}

/// `a.b` from `a` and `b`; the root path is empty.
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// "a string", "an integer", ... for "expected X, found Y" messages.
pub(super) fn describe(v: &Value) -> &'static str {
    match v.kind {
        ValueKind::Nil => "an empty value",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => {
            "an integer"
        }
        ValueKind::Float(_) => "a float",
        ValueKind::String(_) => "a string",
        ValueKind::Table(_) => "a table",
        ValueKind::Array(_) => "an array",
    }
}

/// Keys that would hold a secret inline, with what to write instead.
pub(super) fn inline_secret(key: &str) -> Option<&'static str> {
    match key.to_ascii_lowercase().as_str() {
        "password" => Some("secrets are never inline: use password_env or password_file"),
        "secret" => Some(
            "secrets are never inline: name the variable or file that holds it with the \
             section's *_env or *_file key (secret_env or secret_file in a webhook sink)",
        ),
        "client_secret" => {
            Some("secrets are never inline: use client_secret_env or client_secret_file")
        }
        "refresh_token" | "access_token" | "token" => Some(
            "secrets are never inline: tokens come from `mailsluice authorize SOURCE` or \
             `mailsluice tokens import SOURCE --refresh-token-file FILE` and are stored encrypted",
        ),
        _ => None,
    }
}

/// Reports inline secrets anywhere below `v` (inside a table that is itself unknown).
fn scan_inline(ctx: &mut Ctx, path: &str, v: &Value) {
    match &v.kind {
        ValueKind::Table(map) => {
            for (k, child) in sorted(map) {
                let child_path = join(path, k);
                match inline_secret(k) {
                    Some(message) => ctx.error(&child_path, message),
                    None => scan_inline(ctx, &child_path, child),
                }
            }
        }
        ValueKind::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                scan_inline(ctx, &format!("{path}[{i}]"), child);
            }
        }
        _ => {}
    }
}

fn sorted(map: &Map<String, Value>) -> BTreeMap<&str, &Value> {
    map.iter().map(|(k, v)| (k.as_str(), v)).collect()
}

/// Optimal string alignment distance (Levenshtein plus adjacent transpositions), on chars.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate closest to `word` (case-insensitively), when it is close enough to be the
/// likely intent.
pub(super) fn closest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let word = word.to_lowercase();
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (distance(&word, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
pub(super) fn quoted_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    match quoted.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// Maps `value` to one of `options`, or records an error suggesting the closest option.
pub(super) fn choice<T: Copy>(
    ctx: &mut Ctx,
    path: &str,
    value: &str,
    options: &[(&str, T)],
) -> Option<T> {
    if let Some((_, t)) = options.iter().find(|(name, _)| *name == value) {
        return Some(*t);
    }
    let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
    let expected = quoted_list(&names);
    let message = match closest(value, names.iter().copied()) {
        Some(near) => {
            format!("{value:?} is not valid; did you mean \"{near}\"? (expected {expected})")
        }
        None => format!("{value:?} is not valid; expected {expected}"),
    };
    ctx.error(path, message);
    None
}

/// A string, or the raw text of an override variable (which `try_parsing` may have turned
/// into a number or a boolean).
pub(super) fn as_string(ctx: &mut Ctx, path: &str, v: &Value) -> Option<String> {
    if let ValueKind::String(s) = &v.kind {
        return Some(s.clone());
    }
    if !matches!(v.kind, ValueKind::Table(_) | ValueKind::Array(_))
        && let Some(var) = ctx.env(path)
    {
        return Some(var.raw.clone());
    }
    ctx.error(path, format!("expected a string, found {}", describe(v)));
    None
}

pub(super) fn as_int(ctx: &mut Ctx, path: &str, v: &Value) -> Option<i128> {
    let n = match &v.kind {
        ValueKind::I64(n) => Some(i128::from(*n)),
        ValueKind::I128(n) => Some(*n),
        ValueKind::U64(n) => Some(i128::from(*n)),
        ValueKind::U128(n) => i128::try_from(*n).ok(),
        ValueKind::String(s) if ctx.env(path).is_some() => s.trim().parse().ok(),
        _ => None,
    };
    if n.is_none() {
        ctx.error(path, format!("expected an integer, found {}", describe(v)));
    }
    n
}

pub(super) fn as_bool(ctx: &mut Ctx, path: &str, v: &Value) -> Option<bool> {
    let b = match &v.kind {
        ValueKind::Boolean(b) => Some(*b),
        ValueKind::String(s) if ctx.env(path).is_some() => match s.to_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        },
        _ => None,
    };
    if b.is_none() {
        ctx.error(
            path,
            format!("expected true or false, found {}", describe(v)),
        );
    }
    b
}

/// An array of strings. From an override variable, a comma-separated list
/// (`MAILSLUICE__SOURCES__SUPPORT__FOLDERS=INBOX,Archive`).
pub(super) fn as_string_list(ctx: &mut Ctx, path: &str, v: &Value) -> Option<Vec<String>> {
    match &v.kind {
        ValueKind::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                match &item.kind {
                    ValueKind::String(s) => out.push(s.clone()),
                    _ => {
                        ctx.error(
                            &item_path,
                            format!("expected a string, found {}", describe(item)),
                        );
                        ok = false;
                    }
                }
            }
            ok.then_some(out)
        }
        ValueKind::Table(_) => {
            ctx.error(
                path,
                format!("expected an array of strings, found {}", describe(v)),
            );
            None
        }
        _ => match ctx.env(path) {
            Some(var) => Some(
                var.raw
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            None => {
                ctx.error(
                    path,
                    format!(
                        "expected an array of strings such as [\"INBOX\"], found {}",
                        describe(v)
                    ),
                );
                None
            }
        },
    }
}

/// One `[section]` with a fixed set of keys. Unknown keys are reported when it is opened.
pub(super) struct Table<'v> {
    path: String,
    entries: BTreeMap<&'v str, &'v Value>,
}

impl<'v> Table<'v> {
    /// Opens `map` at `path`, reporting keys not in `known` (inline secrets get their own
    /// message, others a "did you mean").
    pub fn open(ctx: &mut Ctx, path: &str, map: &'v Map<String, Value>, known: &[&str]) -> Self {
        let entries = sorted(map);
        for (key, value) in &entries {
            if known.contains(key) {
                continue;
            }
            let key_path = join(path, key);
            if let Some(message) = inline_secret(key) {
                ctx.error(&key_path, message);
                continue;
            }
            let message = match closest(key, known.iter().copied()) {
                Some(near) => format!("unknown key; did you mean \"{near}\"?"),
                None => format!("unknown key; the keys here are {}", known.join(", ")),
            };
            ctx.error(&key_path, message);
            scan_inline(ctx, &key_path, value);
        }
        Table {
            path: path.to_owned(),
            entries,
        }
    }

    /// Opens an optional section: absent is an empty table (all defaults), a non-table is an
    /// error (and then also all defaults, so checking goes on).
    pub fn open_value(ctx: &mut Ctx, path: &str, v: Option<&'v Value>, known: &[&str]) -> Self {
        match v.map(|v| (v, &v.kind)) {
            Some((_, ValueKind::Table(map))) => Table::open(ctx, path, map, known),
            Some((v, _)) => {
                ctx.error(
                    path,
                    format!("expected a table [{path}], found {}", describe(v)),
                );
                Table::empty(path)
            }
            None => Table::empty(path),
        }
    }

    fn empty(path: &str) -> Self {
        Table {
            path: path.to_owned(),
            entries: BTreeMap::new(),
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Full path of `key` in this table.
    pub fn key(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub fn get(&self, key: &str) -> Option<&'v Value> {
        self.entries.get(key).copied()
    }

    pub fn has(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// A string, `None` when absent or of the wrong type (recorded).
    pub fn string(&self, ctx: &mut Ctx, key: &str) -> Option<String> {
        let v = self.get(key)?;
        as_string(ctx, &self.key(key), v)
    }

    /// One of `options` by name, `None` when absent, of the wrong type or not one of them
    /// (recorded, with the choices).
    pub fn choice<T: Copy>(&self, ctx: &mut Ctx, key: &str, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(ctx, key)?;
        choice(ctx, &self.key(key), &s, options)
    }

    /// A string that is not blank; a blank one is recorded as an error.
    pub fn non_empty(&self, ctx: &mut Ctx, key: &str) -> Option<String> {
        let s = self.string(ctx, key)?;
        if s.trim().is_empty() {
            ctx.error(&self.key(key), "must not be empty");
            return None;
        }
        Some(s)
    }

    /// A non-blank string that must be present; `hint` says what to write.
    pub fn required(&self, ctx: &mut Ctx, key: &str, hint: &str) -> Option<String> {
        if !self.has(key) {
            ctx.error(&self.key(key), format!("required: {hint}"));
            return None;
        }
        self.non_empty(ctx, key)
    }

    /// An integer in `min..=max`, or `default` when absent (or invalid, after recording it).
    pub fn uint(&self, ctx: &mut Ctx, key: &str, min: u64, max: u64, default: u64) -> u64 {
        let Some(v) = self.get(key) else {
            return default;
        };
        let path = self.key(key);
        let Some(n) = as_int(ctx, &path, v) else {
            return default;
        };
        match u64::try_from(n) {
            Ok(n) if (min..=max).contains(&n) => n,
            Ok(n) if n > max => {
                ctx.error(&path, format!("must be at most {max}, found {n}"));
                default
            }
            _ => {
                ctx.error(&path, format!("must be at least {min}, found {n}"));
                default
            }
        }
    }

    pub fn bool(&self, ctx: &mut Ctx, key: &str, default: bool) -> bool {
        match self.get(key) {
            Some(v) => as_bool(ctx, &self.key(key), v).unwrap_or(default),
            None => default,
        }
    }

    /// An array of strings, `None` when absent or invalid (recorded).
    pub fn list(&self, ctx: &mut Ctx, key: &str) -> Option<Vec<String>> {
        let v = self.get(key)?;
        as_string_list(ctx, &self.key(key), v)
    }

    /// Records `message` at `key` when the key is present (a key that does not apply here).
    pub fn refuse(&self, ctx: &mut Ctx, key: &str, message: &str) {
        if self.has(key) {
            ctx.error(&self.key(key), message);
        }
    }
}

/// Entries of a table of named tables (`[sources.NAME]`), in name order. Entries that are not
/// tables are reported and skipped.
pub(super) fn named<'v>(
    ctx: &mut Ctx,
    path: &str,
    v: Option<&'v Value>,
    what: &str,
) -> Vec<(&'v str, &'v Map<String, Value>)> {
    let Some(v) = v else {
        return Vec::new();
    };
    let ValueKind::Table(map) = &v.kind else {
        ctx.error(
            path,
            format!("expected tables [{path}.NAME], found {}", describe(v)),
        );
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, entry) in sorted(map) {
        match &entry.kind {
            ValueKind::Table(inner) => out.push((name, inner)),
            _ => {
                let entry_path = join(path, name);
                let message = match inline_secret(name) {
                    Some(message) => message.to_owned(),
                    None => format!(
                        "expected a table [{path}.{name}] describing a {what}, found {}",
                        describe(entry)
                    ),
                };
                ctx.error(&entry_path, message);
            }
        }
    }
    out
}
