//! Validated settings turned into the types the session layers take. `net` and `protocol`
//! do not know the configuration; they define their own types and the conversions live
//! here, on the side that knows both.

use super::{AfterIngest, Security, TlsBackend, TlsSettings, TlsVersion};
use crate::net;
use crate::protocol::imap::session::PostAction;

impl From<Security> for net::Security {
    fn from(s: Security) -> Self {
        match s {
            Security::Tls => net::Security::Tls,
            Security::StartTls => net::Security::StartTls,
        }
    }
}

impl From<AfterIngest> for PostAction {
    fn from(a: AfterIngest) -> Self {
        match a {
            AfterIngest::Keep => PostAction::Keep,
            AfterIngest::Seen => PostAction::Seen,
            AfterIngest::Delete => PostAction::Delete,
            AfterIngest::Move => PostAction::Move,
        }
    }
}

impl From<&TlsSettings> for net::TlsOptions {
    fn from(t: &TlsSettings) -> Self {
        net::TlsOptions {
            min_version: match t.min_version {
                TlsVersion::V1_2 => net::TlsVersion::V1_2,
                TlsVersion::V1_3 => net::TlsVersion::V1_3,
            },
            extra_ca_file: t.extra_ca_file.clone(),
            backend: match t.backend {
                TlsBackend::Rustls => net::TlsBackend::Rustls,
                TlsBackend::Native => net::TlsBackend::Native,
            },
        }
    }
}
