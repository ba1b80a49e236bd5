//! The rules: untyped tree -> [`Settings`], with defaults filled in and every error recorded
//! in [`Ctx`] with its key path. A function here returns its best guess (a default, or `None`)
//! after recording an error, so one bad key never hides the next; the caller throws the
//! result away when any error was recorded.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use ::config::{Map, Value, ValueKind};

use super::settings::*;
use super::tree::{self, Ctx, Table, choice, closest, quoted_list};
use super::{ENV_PREFIX, ENV_SEPARATOR};
use crate::store::Compression;

const TOP_KEYS: &[&str] = &["node", "tls", "providers", "sources"];

const NODE_KEYS: &[&str] = &[
    "data_dir",
    "http_listen",
    "http_listen_file",
    "max_sessions",
    "log_format",
    "secret_key_file",
    "token_refresh_margin_secs",
    "connect_timeout_secs",
    "read_timeout_secs",
    "min_free_disk_bytes",
    "store_compression",
];

const TLS_KEYS: &[&str] = &["min_version", "extra_ca_file", "backend"];

const PROVIDER_KEYS: &[&str] = &[
    "kind",
    "tenant",
    "cloud",
    "flow",
    "client_id",
    "client_secret_env",
    "client_secret_file",
    "redirect_uri",
    "issuer",
    "token_url",
    "authorization_url",
    "device_authorization_url",
    "scopes",
    "client_secret_expires",
];

const SOURCE_KEYS: &[&str] = &[
    "protocol",
    "host",
    "port",
    "security",
    "username",
    "auth",
    "password_env",
    "password_file",
    "provider",
    "sasl",
    "shared_mailbox",
    "folders",
    "idle",
    "poll_interval_secs",
    "after_ingest",
    "move_to",
    "delete_after_days",
    "max_message_bytes",
    "max_connections",
    "enabled",
];

/// Upper bound of every `*_secs` key: one year is longer than any sensible interval and far
/// from the point where `Instant + Duration` overflows.
const MAX_SECS: u64 = 365 * 24 * 3600;

const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9898));
const DEFAULT_MAX_MESSAGE_BYTES: u64 = 50 * 1024 * 1024;

const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const GOOGLE_AUTHORIZATION_URL: &str = "https://accounts.google.com/o/oauth2/v2/auth";
const OFFICE365_AUTHORITY: &str = "https://login.microsoftonline.com";
const OFFICE365_IMAP_SCOPE: &str = "https://outlook.office.com/IMAP.AccessAsUser.All";
const OFFICE365_POP_SCOPE: &str = "https://outlook.office.com/POP.AccessAsUser.All";
const OFFICE365_APP_SCOPE: &str = "https://outlook.office365.com/.default";

pub(super) fn settings(ctx: &mut Ctx, root: &Map<String, Value>) -> Settings {
    let top = Table::open(ctx, "", root, TOP_KEYS);
    let node_table = Table::open_value(ctx, "node", top.get("node"), NODE_KEYS);
    let node = node(ctx, &node_table);
    let tls_table = Table::open_value(ctx, "tls", top.get("tls"), TLS_KEYS);
    let tls = tls(ctx, &tls_table);
    let (providers, provider_names) = providers(ctx, top.get("providers"));
    let sources = sources(ctx, top.get("sources"), &providers, &provider_names);
    Settings {
        node,
        tls,
        providers,
        sources,
    }
}

fn secs(ctx: &mut Ctx, t: &Table, key: &str, default: u64) -> Duration {
    Duration::from_secs(t.uint(ctx, key, 1, MAX_SECS, default))
}

fn node(ctx: &mut Ctx, t: &Table) -> NodeSettings {
    let data_dir = t
        .non_empty(ctx, "data_dir")
        .unwrap_or_else(|| "data".into());
    let http_listen = match t.non_empty(ctx, "http_listen") {
        Some(s) => s.trim().parse::<SocketAddr>().unwrap_or_else(|_| {
            ctx.error(
                &t.key("http_listen"),
                format!(
                    "{s:?} is not an IP address and port such as \"127.0.0.1:9898\" or \
                     \"[::]:9898\" (host names are not resolved)"
                ),
            );
            DEFAULT_HTTP_LISTEN
        }),
        None => DEFAULT_HTTP_LISTEN,
    };
    let http_listen_file = t
        .string(ctx, "http_listen_file")
        .filter(|s| !s.trim().is_empty())
        .map(PathBuf::from);
    let max_sessions = t.uint(ctx, "max_sessions", 1, u64::from(u32::MAX), 256);
    let log_format = t
        .choice(
            ctx,
            "log_format",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
        )
        .unwrap_or(LogFormat::Text);
    let store_compression = t
        .choice(
            ctx,
            "store_compression",
            &[("zstd", Compression::Zstd), ("none", Compression::None)],
        )
        .unwrap_or_default();
    let secret_key_file = t
        .non_empty(ctx, "secret_key_file")
        .unwrap_or_else(|| "data/secret.key".into());
    NodeSettings {
        data_dir: PathBuf::from(data_dir),
        http_listen,
        http_listen_file,
        max_sessions: usize::try_from(max_sessions).unwrap_or(usize::MAX),
        log_format,
        secret_key_file: PathBuf::from(secret_key_file),
        token_refresh_margin: secs(ctx, t, "token_refresh_margin_secs", 120),
        connect_timeout: secs(ctx, t, "connect_timeout_secs", 15),
        read_timeout: secs(ctx, t, "read_timeout_secs", 120),
        min_free_disk_bytes: t.uint(ctx, "min_free_disk_bytes", 0, u64::MAX, 64 * 1024 * 1024),
        store_compression,
    }
}

fn tls(ctx: &mut Ctx, t: &Table) -> TlsSettings {
    let version_path = t.key("min_version");
    let min_version = match t.get("min_version") {
        // `min_version = 1.2` is a float in TOML; say exactly how to write it.
        Some(v)
            if matches!(v.kind, ValueKind::Float(_) | ValueKind::I64(_))
                && ctx.env(&version_path).is_none() =>
        {
            ctx.error(
                &version_path,
                format!(
                    "expected a string, found {}: write min_version = \"1.2\" or \"1.3\" (quoted)",
                    tree::describe(v)
                ),
            );
            None
        }
        Some(_) => t
            .string(ctx, "min_version")
            .and_then(|s| tls_version(ctx, &version_path, &s)),
        None => Some(TlsVersion::V1_2),
    };
    let extra_ca_file = t
        .string(ctx, "extra_ca_file")
        .filter(|s| !s.trim().is_empty())
        .map(PathBuf::from);
    let backend = t
        .choice(
            ctx,
            "backend",
            &[
                ("rustls", TlsBackend::Rustls),
                ("native", TlsBackend::Native),
            ],
        )
        .unwrap_or(TlsBackend::Rustls);
    if backend == TlsBackend::Native && !cfg!(feature = "native-tls") {
        ctx.error(
            &t.key("backend"),
            "\"native\" needs mailsluice built with `--features native-tls`; this build has \
             only rustls (use backend = \"rustls\")",
        );
    }
    TlsSettings {
        min_version: min_version.unwrap_or(TlsVersion::V1_2),
        extra_ca_file,
        backend,
    }
}

fn tls_version(ctx: &mut Ctx, path: &str, s: &str) -> Option<TlsVersion> {
    let normalized = s.trim().to_ascii_lowercase();
    let bare = normalized
        .trim_start_matches("tls")
        .trim_start_matches('v')
        .trim();
    let legacy = matches!(bare, "1" | "1.0" | "1.1") || normalized.starts_with("ssl");
    if legacy {
        ctx.error(
            path,
            format!(
                "{s:?} is refused: TLS below 1.2 is insecure and refused by mailsluice (and by \
                 Office 365 and Gmail); use \"1.2\" or \"1.3\""
            ),
        );
        return None;
    }
    choice(
        ctx,
        path,
        s,
        &[("1.2", TlsVersion::V1_2), ("1.3", TlsVersion::V1_3)],
    )
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
// URLs and secrets

struct Url<'a> {
    /// Lowercased.
    scheme: String,
    /// Without the brackets of an IPv6 literal.
    host: &'a str,
}

/// Just enough of RFC 3986 to check scheme and host; the auth layer parses URLs for real.
fn split_url(s: &str) -> Result<Url<'_>, &'static str> {
    if s.chars().any(char::is_whitespace) {
        return Err("it contains whitespace");
    }
    let (scheme, rest) = s
        .split_once("://")
        .ok_or("it is not an absolute URL (scheme://host/...)")?;
    if scheme.is_empty()
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Err("its scheme is not valid");
    }
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.contains('@') {
        return Err("it must not contain user credentials");
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (host, tail) = bracketed.split_once(']').ok_or("its '[' is not closed")?;
            if host.parse::<Ipv6Addr>().is_err() {
                return Err("its IPv6 address is not valid");
            }
            match tail {
                "" => (host, None),
                _ => (
                    host,
                    Some(tail.strip_prefix(':').ok_or("its port is not valid")?),
                ),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err("it has no host");
    }
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err("its port is not valid");
    }
    Ok(Url {
        scheme: scheme.to_ascii_lowercase(),
        host,
    })
}

/// 127.0.0.0/8, ::1 and `localhost`: where a plain-http test server is acceptable.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An optional endpoint URL: https, or http on loopback only.
fn endpoint(ctx: &mut Ctx, t: &Table, key: &str, noun: &str) -> Option<String> {
    let url = t.non_empty(ctx, key)?.trim().to_owned();
    let path = t.key(key);
    let problem = match split_url(&url) {
        // The URL is not echoed: it may carry credentials (user:pass@).
        Err(why) => format!("{noun} is not a valid URL: {why}"),
        Ok(u) if u.scheme == "https" => return Some(url),
        Ok(u) if u.scheme == "http" && is_loopback(u.host) => return Some(url),
        Ok(u) if u.scheme == "http" => {
            format!("{noun} must use https (http is allowed only on loopback)")
        }
        Ok(_) => format!("{noun} must be an https URL"),
    };
    ctx.error(&path, problem);
    None
}

/// `redirect_uri`: where `authorize` listens for the browser's redirect, so it must be plain
/// http on this machine.
fn redirect_uri(ctx: &mut Ctx, t: &Table) -> Option<String> {
    let uri = t.non_empty(ctx, "redirect_uri")?.trim().to_owned();
    let ok = split_url(&uri).is_ok_and(|u| {
        u.scheme == "http"
            && matches!(
                u.host.to_ascii_lowercase().as_str(),
                "127.0.0.1" | "::1" | "localhost"
            )
    });
    if ok {
        return Some(uri);
    }
    ctx.error(
        &t.key("redirect_uri"),
        "must be an http loopback URL: http://127.0.0.1:PORT/..., http://[::1]:PORT/... or \
         http://localhost:PORT/... (`mailsluice authorize` receives the code on a local \
         listener); register the same URI with the provider",
    );
    None
}

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

// ---------------------------------------------------------------------------------------------
// [providers.NAME]

fn providers(
    ctx: &mut Ctx,
    v: Option<&Value>,
) -> (BTreeMap<String, ProviderSettings>, Vec<String>) {
    let entries = tree::named(ctx, "providers", v, "provider");
    let in_file = file_names(ctx, "providers", &entries);
    let mut valid = BTreeMap::new();
    let mut names = Vec::new();
    for (name, map) in &entries {
        let path = format!("providers.{name}");
        if orphan(ctx, "providers", name, map, "kind", &in_file) {
            continue;
        }
        names.push((*name).to_owned());
        check_name(ctx, &path, name, "provider");
        let t = Table::open(ctx, &path, map, PROVIDER_KEYS);
        if let Some(p) = provider(ctx, name, &t) {
            valid.insert((*name).to_owned(), p);
        }
    }
    (valid, names)
}

fn provider(ctx: &mut Ctx, name: &str, t: &Table) -> Option<ProviderSettings> {
    use ProviderKind::*;

    let kind = t
        .required(ctx, "kind", "kind = \"office365\", \"gmail\" or \"oidc\"")
        .and_then(|s| {
            choice(
                ctx,
                &t.key("kind"),
                &s,
                &[("office365", Office365), ("gmail", Gmail), ("oidc", Oidc)],
            )
        });
    let flow = match t.string(ctx, "flow") {
        Some(s) => choice(
            ctx,
            &t.key("flow"),
            &s,
            &[("delegated", Flow::Delegated), ("app_only", Flow::AppOnly)],
        ),
        None => Some(Flow::Delegated),
    };
    let client_id = t.required(
        ctx,
        "client_id",
        "the application (client) id registered with the provider",
    );
    let client_secret = secret_ref(ctx, t, "client_secret_env", "client_secret_file");
    let redirect_uri = redirect_uri(ctx, t);

    let tenant = match kind {
        Some(Office365) => {
            let tenant = t
                .non_empty(ctx, "tenant")
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|| "organizations".into());
            if !tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
            {
                ctx.error(
                    &t.key("tenant"),
                    format!(
                        "{tenant:?} is not a tenant: use \"common\", \"organizations\", \
                         \"consumers\", a tenant id (GUID) or a domain such as \"contoso.com\""
                    ),
                );
            }
            Some(tenant)
        }
        Some(_) => {
            t.refuse(ctx, "tenant", "applies only to kind = \"office365\"");
            None
        }
        None => None,
    };
    // Sovereign clouds have their own sign-in host; their Exchange resource differs too,
    // so scopes must be given explicitly there rather than guessed.
    let authority = match (kind, t.string(ctx, "cloud")) {
        (Some(Office365), None) => OFFICE365_AUTHORITY,
        (Some(Office365), Some(c)) => match c.as_str() {
            "global" => OFFICE365_AUTHORITY,
            "usgov" | "china" => {
                if !t.has("scopes") {
                    ctx.error(
                        &t.key("cloud"),
                        format!(
                            "cloud = \"{c}\" needs explicit scopes: the Exchange resource of that cloud \
                             (e.g. its IMAP.AccessAsUser.All scope URL and offline_access) differs from \
                             https://outlook.office.com"
                        ),
                    );
                }
                if c == "usgov" {
                    "https://login.microsoftonline.us"
                } else {
                    "https://login.chinacloudapi.cn"
                }
            }
            other => {
                ctx.error(
                    &t.key("cloud"),
                    format!("{other:?} is not a cloud: use \"global\", \"usgov\" or \"china\""),
                );
                OFFICE365_AUTHORITY
            }
        },
        (Some(_), Some(_)) => {
            t.refuse(ctx, "cloud", "applies only to kind = \"office365\"");
            OFFICE365_AUTHORITY
        }
        _ => OFFICE365_AUTHORITY,
    };
    let issuer = match kind {
        Some(Oidc) | None => endpoint(ctx, t, "issuer", "issuer"),
        Some(_) => {
            t.refuse(
                ctx,
                "issuer",
                "applies only to kind = \"oidc\" (office365 and gmail endpoints are built in)",
            );
            None
        }
    };
    // Explicit endpoints are the way for oidc without discovery, and override the built-in
    // ones for office365 and gmail (local test servers).
    let token_url = endpoint(ctx, t, "token_url", "token endpoint");
    let authorization_url = endpoint(ctx, t, "authorization_url", "authorization endpoint");
    let device_authorization_url = endpoint(
        ctx,
        t,
        "device_authorization_url",
        "device authorization endpoint",
    );
    let scopes = scopes(ctx, t, kind, flow);
    let client_secret_expires = t.non_empty(ctx, "client_secret_expires").and_then(|s| {
        chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
            .map_err(|_| {
                ctx.error(
                    &t.key("client_secret_expires"),
                    format!("{s:?} is not a date: write YYYY-MM-DD, e.g. \"2027-06-30\""),
                );
            })
            .ok()
    });

    if flow == Some(Flow::AppOnly) {
        if kind == Some(Office365)
            && tenant.as_deref().is_none_or(|t| {
                ["common", "organizations", "consumers"].contains(&t.to_ascii_lowercase().as_str())
            })
        {
            ctx.error(
                &t.key("tenant"),
                "flow = \"app_only\" signs in as the application of one tenant: set tenant to \
                 that tenant's id or domain (not common, organizations or consumers)",
            );
        }
        if kind == Some(Gmail) {
            ctx.error(
                &t.key("flow"),
                "gmail has no client-credentials flow for mailboxes; use flow = \"delegated\"",
            );
        } else if client_secret.is_none()
            && !t.has("client_secret_env")
            && !t.has("client_secret_file")
        {
            ctx.error(
                &t.key("flow"),
                "flow = \"app_only\" (client credentials) needs client_secret_env or \
                 client_secret_file",
            );
        }
    }

    let kind = kind?;
    let (token_url, authorization_url, device_authorization_url) = match kind {
        Office365 => {
            let base = format!(
                "{authority}/{}/oauth2/v2.0",
                tenant.as_deref().unwrap_or("organizations")
            );
            (
                token_url.or_else(|| Some(format!("{base}/token"))),
                authorization_url.or_else(|| Some(format!("{base}/authorize"))),
                device_authorization_url.or_else(|| Some(format!("{base}/devicecode"))),
            )
        }
        Gmail => (
            token_url.or_else(|| Some(GOOGLE_TOKEN_URL.into())),
            authorization_url.or_else(|| Some(GOOGLE_AUTHORIZATION_URL.into())),
            // Google's device flow does not grant the Gmail IMAP/POP scope.
            device_authorization_url,
        ),
        Oidc => {
            if issuer.is_none() && token_url.is_none() && !t.has("issuer") && !t.has("token_url") {
                ctx.error(
                    t.path(),
                    "kind = \"oidc\" needs issuer = \"https://...\" (endpoints found by \
                     discovery) or an explicit token_url",
                );
            }
            (token_url, authorization_url, device_authorization_url)
        }
    };

    Some(ProviderSettings {
        name: name.to_owned(),
        kind,
        tenant,
        flow: flow?,
        client_id: client_id?.trim().to_owned(),
        client_secret,
        redirect_uri,
        issuer,
        token_url,
        authorization_url,
        device_authorization_url,
        scopes,
        client_secret_expires,
    })
}

fn scopes(
    ctx: &mut Ctx,
    t: &Table,
    kind: Option<ProviderKind>,
    flow: Option<Flow>,
) -> Option<Vec<String>> {
    let list = t.list(ctx, "scopes")?;
    let path = t.key("scopes");
    if list.is_empty() {
        ctx.error(
            &path,
            "lists no scope; remove scopes to use the defaults for this kind",
        );
        return None;
    }
    for (i, scope) in list.iter().enumerate() {
        let item = format!("{path}[{i}]");
        if scope.trim().is_empty() {
            ctx.error(&item, "must not be empty");
        } else if scope.trim().contains(char::is_whitespace) {
            ctx.error(
                &item,
                "one scope per entry: write scopes = [\"a\", \"b\"], not [\"a b\"]",
            );
        } else if kind == Some(ProviderKind::Office365)
            && let Some(message) = graph_scope(scope.trim(), flow)
        {
            ctx.error(&item, message);
        }
    }
    Some(list.into_iter().map(|s| s.trim().to_owned()).collect())
}

/// Scopes that Entra ID resolves to Microsoft Graph: the token it returns has Graph as its
/// audience and Exchange IMAP/POP reject it ("AUTHENTICATE failed") even though the sign-in
/// worked. This is the most common Office 365 setup mistake, so it is caught at load.
fn graph_scope(scope: &str, flow: Option<Flow>) -> Option<String> {
    let lower = scope.to_ascii_lowercase();
    let fix = if lower == "imap.accessasuser.all" {
        OFFICE365_IMAP_SCOPE
    } else if lower == "pop.accessasuser.all" {
        OFFICE365_POP_SCOPE
    } else if lower.starts_with("https://graph.microsoft.com/") {
        if flow == Some(Flow::AppOnly) || lower.ends_with("/.default") {
            OFFICE365_APP_SCOPE
        } else if lower.contains("/pop.") {
            OFFICE365_POP_SCOPE
        } else {
            OFFICE365_IMAP_SCOPE
        }
    } else {
        return None;
    };
    Some(format!(
        "{scope:?} yields a Microsoft Graph token, which IMAP and POP reject (the login fails \
         although sign-in worked); use {fix:?}"
    ))
}

// ---------------------------------------------------------------------------------------------
// [sources.NAME]

fn sources(
    ctx: &mut Ctx,
    v: Option<&Value>,
    providers: &BTreeMap<String, ProviderSettings>,
    provider_names: &[String],
) -> BTreeMap<String, SourceSettings> {
    let entries = tree::named(ctx, "sources", v, "source");
    let in_file = file_names(ctx, "sources", &entries);
    let mut out = BTreeMap::new();
    for (name, map) in &entries {
        let path = format!("sources.{name}");
        if orphan(ctx, "sources", name, map, "protocol", &in_file) {
            continue;
        }
        check_name(ctx, &path, name, "source");
        let t = Table::open(ctx, &path, map, SOURCE_KEYS);
        if let Some(s) = source(ctx, name, &t, providers, provider_names) {
            out.insert((*name).to_owned(), s);
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum AuthKind {
    Password,
    OAuth2,
}

fn default_port(protocol: Protocol, security: Security) -> u16 {
    match (protocol, security) {
        (Protocol::Imap, Security::Tls) => 993,
        (Protocol::Imap, Security::StartTls) => 143,
        (Protocol::Pop3, Security::Tls) => 995,
        (Protocol::Pop3, Security::StartTls) => 110,
    }
}

fn source(
    ctx: &mut Ctx,
    name: &str,
    t: &Table,
    providers: &BTreeMap<String, ProviderSettings>,
    provider_names: &[String],
) -> Option<SourceSettings> {
    let protocol = t
        .required(ctx, "protocol", "protocol = \"imap\" or \"pop3\"")
        .and_then(|s| parse_protocol(ctx, &t.key("protocol"), &s));
    let host = t
        .required(
            ctx,
            "host",
            "the IMAP or POP3 server, e.g. host = \"outlook.office365.com\"",
        )
        .and_then(|h| parse_host(ctx, &t.key("host"), &h));
    let security = match t.string(ctx, "security") {
        Some(s) => parse_security(ctx, &t.key("security"), &s),
        None => Some(Security::Tls),
    };
    let port = t.uint(
        ctx,
        "port",
        1,
        u64::from(u16::MAX),
        u64::from(default_port(
            protocol.unwrap_or(Protocol::Imap),
            security.unwrap_or(Security::Tls),
        )),
    );
    let username = t.required(
        ctx,
        "username",
        "the account that signs in, e.g. username = \"support@contoso.com\"",
    );
    let auth_kind = t
        .required(ctx, "auth", "auth = \"oauth2\" or \"password\"")
        .and_then(|s| {
            choice(
                ctx,
                &t.key("auth"),
                &s,
                &[
                    ("oauth2", AuthKind::OAuth2),
                    ("password", AuthKind::Password),
                ],
            )
        });
    let auth = source_auth(ctx, t, auth_kind, providers, provider_names);
    let shared_mailbox = if auth_kind == Some(AuthKind::Password) {
        t.refuse(ctx, "shared_mailbox", "applies only with auth = \"oauth2\"");
        None
    } else {
        t.non_empty(ctx, "shared_mailbox")
            .map(|s| s.trim().to_owned())
    };

    let imap = protocol != Some(Protocol::Pop3);
    if !imap {
        for key in ["folders", "idle", "move_to"] {
            t.refuse(
                ctx,
                key,
                "applies only to protocol = \"imap\" (POP3 has a single mailbox and no push)",
            );
        }
    }
    let folders = if imap { folders(ctx, t) } else { Vec::new() };
    let idle = imap && t.bool(ctx, "idle", true);
    let poll_interval = secs(ctx, t, "poll_interval_secs", 60);
    let after_ingest = match t.string(ctx, "after_ingest") {
        Some(s) => parse_after_ingest(ctx, &t.key("after_ingest"), &s, imap),
        None => Some(AfterIngest::Keep),
    };
    let move_to = if imap {
        t.non_empty(ctx, "move_to").map(|s| s.trim().to_owned())
    } else {
        None
    };
    match (after_ingest, &move_to) {
        (Some(AfterIngest::Move), None) if !t.has("move_to") => ctx.error(
            &t.key("move_to"),
            "required with after_ingest = \"move\": the folder ingested messages are moved to",
        ),
        (Some(AfterIngest::Move), Some(target)) if folders.contains(target) => ctx.error(
            &t.key("move_to"),
            format!("{target:?} is also in folders: moved messages would be collected again"),
        ),
        (Some(other), Some(_)) if other != AfterIngest::Move => ctx.error(
            &t.key("move_to"),
            "is set but after_ingest is not \"move\"; set after_ingest = \"move\" or remove \
             move_to",
        ),
        _ => {}
    }
    // POP3 only: with after_ingest = "delete", keep messages on the server this many days
    // after they were stored (0 = delete at the end of the session that stored them).
    let delete_after_days = if t.has("delete_after_days") {
        if imap || after_ingest != Some(AfterIngest::Delete) {
            ctx.error(
                &t.key("delete_after_days"),
                "applies only to protocol = \"pop3\" with after_ingest = \"delete\"",
            );
        }
        t.uint(ctx, "delete_after_days", 0, 36_500, 0)
    } else {
        0
    };
    let max_message_bytes = t.uint(
        ctx,
        "max_message_bytes",
        1,
        u64::MAX,
        DEFAULT_MAX_MESSAGE_BYTES,
    );
    let max_connections = t.uint(ctx, "max_connections", 1, u64::from(u32::MAX), 2);
    let enabled = t.bool(ctx, "enabled", true);

    Some(SourceSettings {
        name: name.to_owned(),
        protocol: protocol?,
        host: host?,
        port: u16::try_from(port).ok()?,
        security: security?,
        username: username?.trim().to_owned(),
        auth: auth?,
        shared_mailbox,
        folders,
        idle,
        poll_interval,
        after_ingest: after_ingest?,
        move_to,
        delete_after_days,
        max_message_bytes,
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        enabled,
    })
}

fn parse_protocol(ctx: &mut Ctx, path: &str, s: &str) -> Option<Protocol> {
    let fix = match s.to_ascii_lowercase().as_str() {
        "imaps" => Some("imap"),
        "pop3s" | "pops" => Some("pop3"),
        _ => None,
    };
    if let Some(fix) = fix {
        ctx.error(
            path,
            format!("{s:?} is not a protocol: write protocol = \"{fix}\" with security = \"tls\""),
        );
        return None;
    }
    choice(
        ctx,
        path,
        s,
        &[("imap", Protocol::Imap), ("pop3", Protocol::Pop3)],
    )
}

fn parse_host(ctx: &mut Ctx, path: &str, host: &str) -> Option<String> {
    let host = host.trim();
    let problem = if host.contains("://") {
        "is a URL: write the host name alone, e.g. host = \"imap.example.com\""
    } else if host.contains(char::is_whitespace) {
        "must not contain spaces"
    } else if host.matches(':').count() == 1
        && host
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
    {
        "contains a port: put it in port = N"
    } else {
        return Some(host.to_owned());
    };
    ctx.error(path, problem);
    None
}

fn parse_security(ctx: &mut Ctx, path: &str, s: &str) -> Option<Security> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "plain" | "plaintext" | "none" | "clear" | "cleartext" | "insecure" | "off" => {
            ctx.error(
                path,
                format!(
                    "{s:?} is refused: mailsluice never connects in plaintext (passwords, tokens \
                     and mail would cross the network in clear); use \"tls\" (implicit TLS, ports \
                     993/995) or \"starttls\""
                ),
            );
            None
        }
        "ssl" => {
            ctx.error(
                path,
                "\"ssl\" is not valid; write security = \"tls\" (implicit TLS, what \"ssl\" \
                 usually means)",
            );
            None
        }
        _ => choice(
            ctx,
            path,
            s,
            &[("tls", Security::Tls), ("starttls", Security::StartTls)],
        ),
    }
}

fn source_auth(
    ctx: &mut Ctx,
    t: &Table,
    kind: Option<AuthKind>,
    providers: &BTreeMap<String, ProviderSettings>,
    provider_names: &[String],
) -> Option<SourceAuth> {
    match kind {
        Some(AuthKind::Password) => {
            for key in ["provider", "sasl"] {
                t.refuse(ctx, key, "applies only with auth = \"oauth2\"");
            }
            let given = t.has("password_env") || t.has("password_file");
            let secret = secret_ref(ctx, t, "password_env", "password_file");
            if !given {
                ctx.error(
                    t.path(),
                    "auth = \"password\" needs password_env (name of an environment variable \
                     holding the password) or password_file",
                );
            }
            secret.map(|secret| SourceAuth::Password { secret })
        }
        Some(AuthKind::OAuth2) => {
            for key in ["password_env", "password_file"] {
                t.refuse(
                    ctx,
                    key,
                    "applies only with auth = \"password\"; an oauth2 source signs in with a \
                     token from its provider",
                );
            }
            let provider = t
                .required(
                    ctx,
                    "provider",
                    "auth = \"oauth2\" needs provider = \"NAME\" naming a [providers.NAME] section",
                )
                .map(|p| p.trim().to_owned());
            let provider_path = t.key("provider");
            if let Some(p) = &provider
                && !provider_names.contains(p)
            {
                let hint = match closest(p, provider_names.iter().map(String::as_str)) {
                    Some(near) => format!("did you mean \"{near}\"?"),
                    None if provider_names.is_empty() => {
                        format!("add a [providers.{p}] section")
                    }
                    None => {
                        let names: Vec<&str> = provider_names.iter().map(String::as_str).collect();
                        format!("the providers are {}", quoted_list(&names))
                    }
                };
                ctx.error(&provider_path, format!("no provider named {p:?}; {hint}"));
            }
            let sasl = match t.string(ctx, "sasl") {
                Some(s) => choice(
                    ctx,
                    &t.key("sasl"),
                    &s,
                    &[
                        ("xoauth2", Sasl::Xoauth2),
                        ("oauthbearer", Sasl::OAuthBearer),
                    ],
                ),
                None => Some(Sasl::Xoauth2),
            };
            let office365 = provider
                .as_ref()
                .and_then(|p| providers.get(p))
                .is_some_and(|p| p.kind == ProviderKind::Office365);
            if office365 && sasl == Some(Sasl::OAuthBearer) {
                ctx.error(
                    &t.key("sasl"),
                    "Office 365 accepts only SASL XOAUTH2; use sasl = \"xoauth2\"",
                );
            }
            Some(SourceAuth::OAuth2 {
                provider: provider?,
                sasl: sasl?,
            })
        }
        None => {
            // Still check the secret references, so their errors show up in this run too.
            let _ = secret_ref(ctx, t, "password_env", "password_file");
            None
        }
    }
}

fn folders(ctx: &mut Ctx, t: &Table) -> Vec<String> {
    let Some(list) = t.list(ctx, "folders") else {
        return vec!["INBOX".to_owned()];
    };
    let path = t.key("folders");
    if list.is_empty() {
        ctx.error(
            &path,
            "lists no folder; remove folders to collect [\"INBOX\"]",
        );
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, folder) in list.iter().enumerate() {
        let item = format!("{path}[{i}]");
        if folder.trim().is_empty() {
            ctx.error(&item, "must not be empty");
        } else if seen.contains(&folder.as_str()) {
            ctx.error(&item, format!("{folder:?} is listed twice"));
        }
        seen.push(folder);
    }
    list
}

fn parse_after_ingest(ctx: &mut Ctx, path: &str, s: &str, imap: bool) -> Option<AfterIngest> {
    if imap {
        return choice(
            ctx,
            path,
            s,
            &[
                ("keep", AfterIngest::Keep),
                ("seen", AfterIngest::Seen),
                ("delete", AfterIngest::Delete),
                ("move", AfterIngest::Move),
            ],
        );
    }
    if matches!(s, "seen" | "move") {
        ctx.error(
            path,
            format!(
                "{s:?} is not possible with pop3 (POP3 has no flags and no folders); use \
                 \"keep\" or \"delete\""
            ),
        );
        return None;
    }
    choice(
        ctx,
        path,
        s,
        &[("keep", AfterIngest::Keep), ("delete", AfterIngest::Delete)],
    )
}
