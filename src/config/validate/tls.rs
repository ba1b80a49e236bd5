//! `[tls]`: the lowest TLS version and the extra CA file every connection (mail servers and
//! token endpoints) uses, and the TLS backend. Versions below 1.2 are refused with a reason,
//! never accepted.

use std::path::PathBuf;

use ::config::ValueKind;

use crate::config::settings::*;
use crate::config::tree::{self, Ctx, Table, choice};

pub(super) const TLS_KEYS: &[&str] = &["min_version", "extra_ca_file", "backend"];

pub(super) fn tls(ctx: &mut Ctx, t: &Table) -> TlsSettings {
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
    if backend == TlsBackend::Native && min_version == Some(TlsVersion::V1_3) {
        // native-tls cannot ask for 1.3 as a minimum on every platform; it would quietly
        // allow 1.2. Refused rather than weakened.
        ctx.error(
            &t.key("min_version"),
            "\"1.3\" cannot be enforced with backend = \"native\" (the platform library's \
             minimum stops at 1.2): use backend = \"rustls\", or min_version = \"1.2\"",
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
