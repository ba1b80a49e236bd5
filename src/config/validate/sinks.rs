//! `[sinks.NAME]`: where events go (a webhook or a NATS JetStream stream), which events,
//! and how delivery behaves. Keys of the other kind are errors, not silently ignored; a
//! source named without a `*` must exist; every bound is checked here so the delivery code
//! can trust it (a duplicate window shorter than the longest retry would let a repeat
//! through as a new message).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use ::config::Value;

use super::url::endpoint;
use super::{MAX_SECS, check_name, file_names, is_env_name, orphan, secret_ref};
use crate::config::settings::*;
use crate::config::tree::{self, Ctx, Table, choice, closest, quoted_list};
use crate::sinks::address;

/// Keys every kind has.
const DELIVERY_KEYS: &[&str] = &[
    "sources",
    "events",
    "include_raw",
    "max_raw_bytes",
    "timeout_secs",
    "concurrency",
    "max_age_secs",
    "max_backoff_secs",
];
const WEBHOOK_KEYS: &[&str] = &[
    "url",
    "secret_file",
    "secret_env",
    "allow_private_addresses",
];
const NATS_KEYS: &[&str] = &[
    "servers",
    "stream",
    "subject",
    "duplicate_window_secs",
    "object_bucket",
    "creds_file",
    "token_env",
    "user",
    "password_env",
    "tls_ca_file",
];

pub(super) const DEFAULT_MAX_RAW_BYTES: u64 = 10 * 1024 * 1024;
/// Largest `max_raw_bytes`: a message sent inline is held whole in memory, plus its base64
/// (a third more) inside the body; the largest payload a NATS server can be configured for.
pub(super) const MAX_RAW_BYTES_CAP: u64 = 64 * 1024 * 1024;
pub(super) const DEFAULT_TIMEOUT_SECS: u64 = 10;
const MAX_TIMEOUT_SECS: u64 = 300;
pub(super) const DEFAULT_CONCURRENCY: u64 = 4;
const MAX_CONCURRENCY: u64 = 256;
pub(super) const DEFAULT_MAX_AGE_SECS: u64 = 86_400;
/// Shortest `max_age_secs`. Anything under [`SHORT_MAX_AGE_SECS`] loads with a warning:
/// it fails events during a receiver's ordinary restart, which only makes sense to see
/// failure handling at work (a test, a drill).
const MIN_MAX_AGE_SECS: u64 = 1;
/// `max_age_secs` below this is warned about.
const SHORT_MAX_AGE_SECS: u64 = 60;
pub(super) const DEFAULT_MAX_BACKOFF_SECS: u64 = 300;
const MAX_MAX_BACKOFF_SECS: u64 = 86_400;
pub(super) const DEFAULT_DUPLICATE_WINDOW_SECS: u64 = 3_600;
pub(super) const DEFAULT_STREAM: &str = "MAILSLUICE";
pub(super) const DEFAULT_SUBJECT: &str = "mailsluice.msg.{source}";
pub(super) const DEFAULT_OBJECT_BUCKET: &str = "mailsluice-raw";
/// Every subject a sink publishes to is under this, so the stream's `mailsluice.>` holds it.
const SUBJECT_PREFIX: &str = "mailsluice.";
const SOURCE_PLACEHOLDER: &str = "{source}";
/// Longest stream or bucket name: JetStream keeps each in a directory of that name.
const MAX_NAME_LEN: usize = 64;
const MAX_SUBJECT_LEN: usize = 255;
const MAX_URL_LEN: usize = 2048;

pub(super) fn sinks(
    ctx: &mut Ctx,
    v: Option<&Value>,
    source_names: &[String],
) -> BTreeMap<String, SinkSettings> {
    let entries = tree::named(ctx, "sinks", v, "sink");
    let in_file = file_names(ctx, "sinks", &entries);
    let known: Vec<&str> = DELIVERY_KEYS
        .iter()
        .chain(WEBHOOK_KEYS)
        .chain(NATS_KEYS)
        .chain(&["kind"])
        .copied()
        .collect();
    let mut out = BTreeMap::new();
    for (name, map) in &entries {
        let path = format!("sinks.{name}");
        if orphan(ctx, "sinks", name, map, "kind", &in_file) {
            continue;
        }
        check_name(ctx, &path, name, "sink");
        let t = Table::open(ctx, &path, map, &known);
        if let Some(s) = sink(ctx, name, &t, source_names) {
            out.insert((*name).to_owned(), s);
        }
    }
    out
}

fn sink(ctx: &mut Ctx, name: &str, t: &Table, source_names: &[String]) -> Option<SinkSettings> {
    let kind = t
        .required(ctx, "kind", "kind = \"webhook\" or \"nats\"")
        .and_then(|s| {
            choice(
                ctx,
                &t.key("kind"),
                &s,
                &[("webhook", SinkKind::Webhook), ("nats", SinkKind::Nats)],
            )
        });
    let delivery = delivery(ctx, t, source_names);
    let target = match kind {
        Some(SinkKind::Webhook) => {
            for key in NATS_KEYS {
                t.refuse(ctx, key, "applies only to kind = \"nats\"");
            }
            webhook(ctx, name, t).map(SinkTarget::Webhook)
        }
        Some(SinkKind::Nats) => {
            for key in WEBHOOK_KEYS {
                t.refuse(ctx, key, "applies only to kind = \"webhook\"");
            }
            nats(ctx, t, delivery.max_backoff).map(SinkTarget::Nats)
        }
        None => None,
    };
    Some(SinkSettings {
        name: name.to_owned(),
        target: target?,
        delivery,
    })
}

fn delivery(ctx: &mut Ctx, t: &Table, source_names: &[String]) -> SinkDelivery {
    let sources = sources(ctx, t, source_names);
    let events = events(ctx, t);
    let include_raw = t.bool(ctx, "include_raw", false);
    let mut max_raw_bytes = t.uint(ctx, "max_raw_bytes", 1, u64::MAX, DEFAULT_MAX_RAW_BYTES);
    if max_raw_bytes > MAX_RAW_BYTES_CAP {
        ctx.error(
            &t.key("max_raw_bytes"),
            format!(
                "must be at most {MAX_RAW_BYTES_CAP} (64 MiB), found {max_raw_bytes}: a message \
                 sent inline is held in memory whole, a third larger again as base64; larger \
                 messages go by raw_url"
            ),
        );
        max_raw_bytes = DEFAULT_MAX_RAW_BYTES;
    }
    let timeout = t.uint(
        ctx,
        "timeout_secs",
        1,
        MAX_TIMEOUT_SECS,
        DEFAULT_TIMEOUT_SECS,
    );
    let concurrency = t.uint(ctx, "concurrency", 1, MAX_CONCURRENCY, DEFAULT_CONCURRENCY);
    let max_age = t.uint(
        ctx,
        "max_age_secs",
        MIN_MAX_AGE_SECS,
        MAX_SECS,
        DEFAULT_MAX_AGE_SECS,
    );
    let max_backoff = t.uint(
        ctx,
        "max_backoff_secs",
        1,
        MAX_MAX_BACKOFF_SECS,
        DEFAULT_MAX_BACKOFF_SECS,
    );
    SinkDelivery {
        sources,
        events,
        include_raw,
        max_raw_bytes,
        timeout: Duration::from_secs(timeout),
        concurrency: usize::try_from(concurrency).unwrap_or(usize::MAX),
        max_age: Duration::from_secs(max_age),
        max_backoff: Duration::from_secs(max_backoff),
    }
}

/// Names and `*` patterns. A name without `*` must be a source in the file (a typo would
/// otherwise deliver nothing, silently); a pattern that matches nothing yet is allowed
/// (sources come and go with reloads) and reported by [`unmatched_patterns`] as a warning.
fn sources(ctx: &mut Ctx, t: &Table, source_names: &[String]) -> SourceFilter {
    let Some(list) = t.list(ctx, "sources") else {
        return SourceFilter::All;
    };
    let path = t.key("sources");
    if list.is_empty() {
        ctx.error(
            &path,
            "lists no source; remove sources to deliver the events of every source",
        );
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let item = format!("{path}[{i}]");
        let pattern = entry.trim();
        if pattern.is_empty() {
            ctx.error(&item, "must not be empty");
        } else if !pattern
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '*'))
        {
            ctx.error(
                &item,
                format!(
                    "{pattern:?} can match no source: source names use lowercase letters, \
                     digits, '_' and '-', and a pattern adds '*' (any characters)"
                ),
            );
        } else if seen.contains(&pattern) {
            ctx.error(&item, format!("{pattern:?} is listed twice"));
        } else if !pattern.contains('*') && !source_names.iter().any(|s| s == pattern) {
            let hint = match closest(pattern, source_names.iter().map(String::as_str)) {
                Some(near) => format!("did you mean \"{near}\"?"),
                None if source_names.is_empty() => "there are no [sources.NAME]".to_owned(),
                None => {
                    let names: Vec<&str> = source_names.iter().map(String::as_str).collect();
                    format!("the sources are {}", quoted_list(&names))
                }
            };
            ctx.error(
                &item,
                format!("no source named {pattern:?}; {hint} (a pattern with '*' may match none)"),
            );
        }
        seen.push(pattern);
    }
    SourceFilter::Only(list.iter().map(|s| s.trim().to_owned()).collect())
}

fn events(ctx: &mut Ctx, t: &Table) -> Vec<SinkEvent> {
    let Some(list) = t.list(ctx, "events") else {
        return SinkEvent::ALL.to_vec();
    };
    let path = t.key("events");
    if list.is_empty() {
        ctx.error(
            &path,
            "lists no event; remove events to deliver both message.stored and \
             source.state_changed",
        );
        return SinkEvent::ALL.to_vec();
    }
    let options: Vec<(&str, SinkEvent)> = SinkEvent::ALL.iter().map(|e| (e.as_str(), *e)).collect();
    let mut out = Vec::new();
    for (i, entry) in list.iter().enumerate() {
        let item = format!("{path}[{i}]");
        let Some(event) = choice(ctx, &item, entry.trim(), &options) else {
            continue;
        };
        if out.contains(&event) {
            ctx.error(&item, format!("\"{}\" is listed twice", event.as_str()));
        } else {
            out.push(event);
        }
    }
    if out.is_empty() {
        return SinkEvent::ALL.to_vec();
    }
    out
}

fn webhook(ctx: &mut Ctx, sink: &str, t: &Table) -> Option<WebhookSink> {
    if !t.has("url") {
        ctx.error(
            &t.key("url"),
            "required: the receiver's https URL, e.g. url = \"https://helpdesk.example/hooks/mail\"",
        );
    }
    let allow_private_addresses = t.bool(ctx, "allow_private_addresses", false);
    let url = url(ctx, sink, t, allow_private_addresses);
    let given = t.has("secret_env") || t.has("secret_file");
    let mut secret = secret_ref(ctx, t, "secret_env", "secret_file");
    // A secret looks like a variable name; this one is surely a pasted secret. Not echoed.
    if let Some(SecretRef::Env(name)) = &secret
        && name.starts_with(crate::sinks::sign::SECRET_PREFIX)
    {
        ctx.error(
            &t.key("secret_env"),
            "holds a webhook secret itself: it must be the name of an environment variable \
             that holds the secret (or use secret_file)",
        );
        secret = None;
    }
    if !given {
        ctx.error(
            t.path(),
            "kind = \"webhook\" needs secret_file (a file holding the signing secret, \
             \"whsec_\" + base64 of a 24 to 64-byte key) or secret_env (the name of a variable \
             holding it)",
        );
    }
    Some(WebhookSink {
        url: url?,
        secret: secret?,
        allow_private_addresses,
    })
}

/// https (or http on loopback), no credentials, and not an address the policy refuses when
/// it is an IP literal (names are checked when they resolve, at every connection).
fn url(ctx: &mut Ctx, sink: &str, t: &Table, allow_private: bool) -> Option<String> {
    let url = endpoint(ctx, t, "url", "webhook URL")?;
    if url.len() > MAX_URL_LEN {
        ctx.error(
            &t.key("url"),
            format!("is longer than {MAX_URL_LEN} characters"),
        );
        return None;
    }
    let parsed = ::url::Url::parse(&url).ok()?;
    let ip = match parsed.host()? {
        ::url::Host::Ipv4(v4) => Some(std::net::IpAddr::V4(v4)),
        ::url::Host::Ipv6(v6) => Some(std::net::IpAddr::V6(v6)),
        ::url::Host::Domain(_) => None,
    };
    let policy = address::AddressPolicy {
        sink: sink.to_owned(),
        allow_private_addresses: allow_private,
    };
    if let Some(ip) = ip
        && let Err(refused) = policy.check(ip)
    {
        ctx.error(&t.key("url"), refused.to_string());
        return None;
    }
    Some(url)
}

fn nats(ctx: &mut Ctx, t: &Table, max_backoff: Duration) -> Option<NatsSink> {
    let servers = servers(ctx, t);
    let stream = match t.non_empty(ctx, "stream") {
        Some(s) => nats_name(ctx, &t.key("stream"), s.trim(), "a stream"),
        None => Some(DEFAULT_STREAM.to_owned()),
    };
    let subject = match t.non_empty(ctx, "subject") {
        Some(s) => subject(ctx, &t.key("subject"), s.trim()),
        None => Some(DEFAULT_SUBJECT.to_owned()),
    };
    let duplicate_window = t.uint(
        ctx,
        "duplicate_window_secs",
        1,
        MAX_SECS,
        DEFAULT_DUPLICATE_WINDOW_SECS,
    );
    let least = max_backoff.as_secs().saturating_mul(2);
    if duplicate_window < least {
        let given = if t.has("duplicate_window_secs") {
            format!("{duplicate_window}")
        } else {
            format!("the default {duplicate_window}")
        };
        ctx.error(
            &t.key("duplicate_window_secs"),
            format!(
                "must be at least twice max_backoff_secs ({least}), found {given}: a publish \
                 whose acknowledgement was lost is sent again up to 1.2 x max_backoff_secs \
                 later, and the stream must still recognise it as a repeat"
            ),
        );
    }
    let object_bucket = match t.non_empty(ctx, "object_bucket") {
        Some(s) => nats_name(
            ctx,
            &t.key("object_bucket"),
            s.trim(),
            "an object store bucket",
        ),
        None => Some(DEFAULT_OBJECT_BUCKET.to_owned()),
    };
    let auth = nats_auth(ctx, t);
    let tls_ca_file = t.non_empty(ctx, "tls_ca_file").map(PathBuf::from);
    Some(NatsSink {
        servers: servers?,
        stream: stream?,
        subject: subject?,
        duplicate_window: Duration::from_secs(duplicate_window),
        object_bucket: object_bucket?,
        auth: auth?,
        tls_ca_file,
    })
}

fn servers(ctx: &mut Ctx, t: &Table) -> Option<Vec<String>> {
    if !t.has("servers") {
        ctx.error(
            &t.key("servers"),
            "required: the NATS servers, e.g. servers = [\"tls://nats.example.com:4222\"]",
        );
        return None;
    }
    let list = t.list(ctx, "servers")?;
    let path = t.key("servers");
    if list.is_empty() {
        ctx.error(&path, "lists no server; give at least one");
        return None;
    }
    let mut ok = true;
    let mut seen: Vec<&str> = Vec::new();
    for (i, server) in list.iter().enumerate() {
        let item = format!("{path}[{i}]");
        let server = server.trim();
        // The URL is not echoed: it may carry credentials (user:pass@).
        if let Err(problem) = nats_server(server) {
            ctx.error(&item, problem);
            ok = false;
        } else if seen.contains(&server) {
            ctx.error(&item, "is listed twice");
            ok = false;
        }
        seen.push(server);
    }
    ok.then(|| list.iter().map(|s| s.trim().to_owned()).collect())
}

/// One `servers` entry: `nats://` on loopback, `tls://` anywhere; host and optional port,
/// nothing else.
fn nats_server(s: &str) -> Result<(), String> {
    const EXAMPLE: &str = "e.g. \"tls://nats.example.com:4222\" or \"nats://127.0.0.1:4222\"";
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.chars().any(char::is_whitespace) {
        return Err(format!(
            "is not a server URL ({EXAMPLE}): it contains whitespace"
        ));
    }
    let u = ::url::Url::parse(s).map_err(|e| format!("is not a server URL ({EXAMPLE}): {e}"))?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err(
            "must not contain credentials: use creds_file, token_env or user + password_env".into(),
        );
    }
    let host = u.host_str().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("has no host ({EXAMPLE})"));
    }
    if !matches!(u.path(), "" | "/") || u.query().is_some() || u.fragment().is_some() {
        return Err(format!("must be a host and port only ({EXAMPLE})"));
    }
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match u.scheme() {
        "tls" => Ok(()),
        "nats" if loopback => Ok(()),
        "nats" => Err(
            "must use tls:// (nats:// is allowed only on loopback: mail and credentials would \
             cross the network in clear)"
                .into(),
        ),
        _ => Err(format!("must start with tls:// or nats:// ({EXAMPLE})")),
    }
}

/// A stream or bucket name: JetStream refuses `.`, `*`, `>`, whitespace and path
/// separators; letters, digits, `-` and `_` are the portable rest.
fn nats_name(ctx: &mut Ctx, path: &str, name: &str, what: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if ok {
        return Some(name.to_owned());
    }
    ctx.error(
        path,
        format!(
            "{name:?} is not {what} name: use 1 to {MAX_NAME_LEN} letters, digits, '-' and \
             '_' (JetStream refuses '.', '*', '>', spaces and path separators)"
        ),
    );
    None
}

/// The subject template: `mailsluice.` then dot-separated tokens of letters, digits, `-`,
/// `_` and the `{source}` placeholder (source names use only such characters, so the
/// subject stays valid once it is filled in).
fn subject(ctx: &mut Ctx, path: &str, template: &str) -> Option<String> {
    let problem = subject_problem(template);
    match problem {
        None => Some(template.to_owned()),
        Some(problem) => {
            ctx.error(path, format!("{template:?} {problem}"));
            None
        }
    }
}

fn subject_problem(template: &str) -> Option<String> {
    if template.len() > MAX_SUBJECT_LEN {
        return Some(format!("is longer than {MAX_SUBJECT_LEN} characters"));
    }
    if template.contains(['*', '>']) {
        return Some(
            "holds a wildcard ('*' or '>'): a sink publishes to one subject per source".into(),
        );
    }
    // Placeholders first, so "{folder}" is named as an unknown placeholder rather than as
    // a stray brace.
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open..];
        let Some(close) = after.find('}') else {
            return Some("has a '{' without its '}'".into());
        };
        let placeholder = &after[..=close];
        if placeholder != SOURCE_PLACEHOLDER {
            return Some(format!(
                "uses the placeholder {placeholder}; the only placeholder is {SOURCE_PLACEHOLDER}"
            ));
        }
        rest = &after[close + 1..];
    }
    let filled = template.replace(SOURCE_PLACEHOLDER, "x");
    if filled.contains('}') {
        return Some("has a '}' without its '{'".into());
    }
    let Some(tail) = filled.strip_prefix(SUBJECT_PREFIX) else {
        return Some(format!(
            "must start with \"{SUBJECT_PREFIX}\" (the stream holds subjects \
             \"mailsluice.>\"), e.g. \"{DEFAULT_SUBJECT}\""
        ));
    };
    let tokens_ok = tail.split('.').all(|token| {
        !token.is_empty()
            && token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    });
    if !tokens_ok {
        return Some(
            "is not a subject: after \"mailsluice.\" come one or more '.'-separated tokens of \
             letters, digits, '-', '_' and {source}"
                .into(),
        );
    }
    None
}

/// `creds_file`, `token_env`, or `user` + `password_env`: at most one way.
fn nats_auth(ctx: &mut Ctx, t: &Table) -> Option<NatsAuth> {
    let creds = t.non_empty(ctx, "creds_file").map(PathBuf::from);
    let token = env_ref(ctx, t, "token_env");
    let user = t.non_empty(ctx, "user").map(|u| u.trim().to_owned());
    let password = env_ref(ctx, t, "password_env");
    let ways: Vec<&str> = [
        (t.has("creds_file"), "creds_file"),
        (t.has("token_env"), "token_env"),
        (
            t.has("user") || t.has("password_env"),
            "user + password_env",
        ),
    ]
    .iter()
    .filter(|(given, _)| *given)
    .map(|(_, way)| *way)
    .collect();
    if ways.len() > 1 {
        ctx.error(
            t.path(),
            format!(
                "{} are each a way to sign in to NATS; give at most one",
                ways.join(" and ")
            ),
        );
        return None;
    }
    if t.has("user") && !t.has("password_env") {
        ctx.error(
            &t.key("password_env"),
            "required with user: the name of an environment variable holding the password",
        );
        return None;
    }
    if t.has("password_env") && !t.has("user") {
        ctx.error(
            &t.key("user"),
            "required with password_env: the NATS user name",
        );
        return None;
    }
    match (creds, token, user, password) {
        (Some(path), None, None, None) => Some(NatsAuth::CredsFile(path)),
        (None, Some(token), None, None) => Some(NatsAuth::Token(token)),
        (None, None, Some(user), Some(password)) => Some(NatsAuth::UserPassword { user, password }),
        // Nothing given, or a given key was invalid (recorded).
        (None, None, None, None) if ways.is_empty() => Some(NatsAuth::None),
        _ => None,
    }
}

/// An `X_env` key alone (no `X_file` twin): the variable's name, never its value.
fn env_ref(ctx: &mut Ctx, t: &Table, key: &str) -> Option<SecretRef> {
    let name = t.non_empty(ctx, key)?.trim().to_owned();
    if is_env_name(&name) {
        return Some(SecretRef::Env(name));
    }
    ctx.error(
        &t.key(key),
        "must be the name of an environment variable (letters, digits and '_', not starting \
         with a digit) that holds the secret, not the secret itself",
    );
    None
}

/// `max_age_secs` shorter than a minute: valid, most likely a drill left in place.
pub(in crate::config) fn short_max_age(settings: &Settings) -> Vec<(String, String)> {
    settings
        .sinks
        .iter()
        .filter(|(_, sink)| sink.delivery.max_age < Duration::from_secs(SHORT_MAX_AGE_SECS))
        .map(|(name, sink)| {
            (
                format!("sinks.{name}.max_age_secs"),
                format!(
                    "{} s is shorter than a minute: an event is marked failed when its receiver                      restarts or is briefly unreachable; meant for drills, not for service",
                    sink.delivery.max_age.as_secs()
                ),
            )
        })
        .collect()
}

/// Sinks configured while the node listens on every address without
/// `node.http_public_url`: the `raw_url` they send would name 0.0.0.0 or `::`, which no
/// receiver can reach.
pub(in crate::config) fn unreachable_raw_url(settings: &Settings) -> Vec<(String, String)> {
    let node = &settings.node;
    if settings.sinks.is_empty()
        || node.http_public_url.is_some()
        || !node.http_listen.ip().is_unspecified()
    {
        return Vec::new();
    }
    vec![(
        "node.http_public_url".to_owned(),
        format!(
            "not set while node.http_listen is {} (every address): the raw_url of sink events              would name that address, which receivers cannot reach; set it to where they reach              this node's API",
            node.http_listen
        ),
    )]
}

/// `sources` patterns (with `*`) that match no configured source: allowed, since sources
/// come and go with reloads, but most often a typo.
pub(in crate::config) fn unmatched_patterns(settings: &Settings) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, sink) in &settings.sinks {
        let SourceFilter::Only(patterns) = &sink.delivery.sources else {
            continue;
        };
        for (i, pattern) in patterns.iter().enumerate() {
            if pattern.contains('*') && !settings.sources.keys().any(|s| glob_matches(pattern, s)) {
                out.push((
                    format!("sinks.{name}.sources[{i}]"),
                    format!("{pattern:?} matches no source; this sink gets no events through it"),
                ));
            }
        }
    }
    out
}
