//! `[node]`: where the node keeps its data, where it listens, how many sessions it runs, and
//! the timeouts and margins every source shares. Every key has a default, so an absent
//! `[node]` is valid.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;

use super::secs;
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
];

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
