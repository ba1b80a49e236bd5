//! `[node]`: where the node keeps its data, where it listens, how many sessions it runs, and
//! the timeouts and margins every source shares. Every key has a default, so an absent
//! `[node]` is valid.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use std::time::Duration;

use super::{MAX_SECS, secs};
use crate::config::settings::*;
use crate::config::tree::{Ctx, Table};
use crate::store::Compression;

pub(super) const NODE_KEYS: &[&str] = &[
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
    "api_token_file",
    "metrics_token_file",
    "http_tls_cert_file",
    "http_tls_key_file",
    "http_allowed_hosts",
    "http_allow_plaintext",
    "http_public_url",
    "events_retention_secs",
];

/// `node.events_retention_secs` by default: a day, for consumers that pull `/api/events`.
const DEFAULT_EVENTS_RETENTION_SECS: u64 = 86_400;

const DEFAULT_HTTP_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9898));

pub(super) fn node(ctx: &mut Ctx, t: &Table) -> NodeSettings {
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
    let api_token_file = t
        .non_empty(ctx, "api_token_file")
        .map_or_else(|| PathBuf::from(&data_dir).join("api.token"), PathBuf::from);
    let metrics_token_file = t.non_empty(ctx, "metrics_token_file").map(PathBuf::from);
    let http_tls = http_tls(ctx, t);
    let http_allowed_hosts = allowed_hosts(ctx, t);
    let http_allow_plaintext = t.bool(ctx, "http_allow_plaintext", false);
    let http_public_url = public_url(ctx, t);
    // 0 is allowed: without consumers that pull, an event may go once every sink has it.
    let events_retention = Duration::from_secs(t.uint(
        ctx,
        "events_retention_secs",
        0,
        MAX_SECS,
        DEFAULT_EVENTS_RETENTION_SECS,
    ));
    if http_tls.is_none() && !http_allow_plaintext && !http_listen.ip().is_loopback() {
        ctx.error(
            &t.key("http_listen"),
            format!(
                "{http_listen} is reachable beyond this machine, and plain HTTP would carry API \
                 tokens and mail in the clear: set node.http_tls_cert_file and \
                 node.http_tls_key_file, or node.http_allow_plaintext = true when a TLS proxy \
                 in front of the node is the only way in"
            ),
        );
    }
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
        api_token_file,
        metrics_token_file,
        http_tls,
        http_allowed_hosts,
        http_allow_plaintext,
        http_public_url,
        events_retention,
    }
}

/// `node.http_public_url`: an absolute http(s) URL with a host and nothing a base URL
/// cannot carry (credentials, query, fragment); the trailing `/` is dropped, so paths are
/// appended to it as they are to the listen address.
fn public_url(ctx: &mut Ctx, t: &Table) -> Option<String> {
    let text = t.non_empty(ctx, "http_public_url")?;
    let text = text.trim();
    let refuse = |ctx: &mut Ctx, why: &str| {
        ctx.error(
            &t.key("http_public_url"),
            format!(
                "{text:?} {why}; write where receivers reach this node's API, e.g. \
                 \"https://ingest.example.com\" (a path prefix is allowed)"
            ),
        );
        None
    };
    let Ok(url) = url::Url::parse(text) else {
        return refuse(ctx, "is not an absolute URL");
    };
    if !matches!(url.scheme(), "http" | "https") {
        return refuse(ctx, "must start with https:// or http://");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return refuse(ctx, "has no host");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return refuse(ctx, "must not carry a user name or password");
    }
    if url.query().is_some() || url.fragment().is_some() {
        return refuse(ctx, "must not have a query or fragment");
    }
    Some(url.as_str().trim_end_matches('/').to_owned())
}

/// Both files or neither: a certificate without its key (or the reverse) is a mistake, not a
/// request for plain HTTP.
fn http_tls(ctx: &mut Ctx, t: &Table) -> Option<HttpTls> {
    let cert = t.non_empty(ctx, "http_tls_cert_file");
    let key = t.non_empty(ctx, "http_tls_key_file");
    match (cert, key) {
        (Some(cert), Some(key)) => Some(HttpTls {
            cert_file: PathBuf::from(cert),
            key_file: PathBuf::from(key),
        }),
        (None, None) => None,
        (Some(_), None) => {
            ctx.error(
                &t.key("http_tls_key_file"),
                "required with node.http_tls_cert_file: the private key (PEM) of that certificate",
            );
            None
        }
        (None, Some(_)) => {
            ctx.error(
                &t.key("http_tls_cert_file"),
                "required with node.http_tls_key_file: the certificate chain (PEM) to serve",
            );
            None
        }
    }
}

/// Host names as a browser sends them in `Host`: lowercase, no port, no scheme, no path.
fn allowed_hosts(ctx: &mut Ctx, t: &Table) -> Vec<String> {
    let Some(hosts) = t.list(ctx, "http_allowed_hosts") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let h = host.trim().to_ascii_lowercase();
        let ok = !h.is_empty()
            && h.len() <= 253
            && (h.parse::<std::net::IpAddr>().is_ok()
                || h.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                }));
        if ok {
            out.push(h);
        } else {
            ctx.error(
                &format!("{}[{i}]", t.key("http_allowed_hosts")),
                format!(
                    "{host:?} is not a host name or IP address as a Host header carries it \
                     (no scheme, port or path), e.g. \"ingest.example.com\""
                ),
            );
        }
    }
    out
}
