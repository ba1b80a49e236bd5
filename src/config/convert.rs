//! Validated settings turned into the types the session layers and sinks take. `net`,
//! `protocol` and `sinks` do not know the configuration; they define their own types and the conversions live
//! here, on the side that knows both.

use std::sync::Arc;

use super::{
    AfterIngest, Security, SinkDelivery, SinkEvent, SinkSettings, SinkTarget, TlsBackend,
    TlsSettings, TlsVersion,
};
use crate::net;
use crate::protocol::imap::session::PostAction;
use crate::sinks::address::AddressPolicy;
use crate::sinks::backoff::Schedule;
use crate::sinks::engine::SinkOptions;
use crate::store::EventKind;

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

impl From<&SinkDelivery> for Schedule {
    fn from(d: &SinkDelivery) -> Self {
        Schedule {
            max_backoff: d.max_backoff,
            max_age: d.max_age,
        }
    }
}

impl SinkSettings {
    /// Where this sink may send: a webhook's address policy. `None` for NATS: its servers
    /// are the operator's own infrastructure (often on link-local or private networks),
    /// while a webhook URL often names someone else's host and DNS.
    pub fn address_policy(&self) -> Option<AddressPolicy> {
        match &self.target {
            SinkTarget::Webhook(w) => Some(AddressPolicy {
                sink: self.name.clone(),
                allow_private_addresses: w.allow_private_addresses,
            }),
            SinkTarget::Nats(_) => None,
        }
    }

    /// What this sink's delivery worker runs with; `api_base` is where the node's API is
    /// reached from outside (the base of `raw_url`).
    pub fn engine_options(&self, api_base: &str) -> SinkOptions {
        let delivery = self.delivery.clone();
        SinkOptions {
            name: self.name.clone(),
            wants: Arc::new(move |kind, source| delivery.wants(kind.into(), source)),
            include_raw: self.delivery.include_raw,
            max_raw_bytes: self.delivery.max_raw_bytes,
            concurrency: self.delivery.concurrency,
            schedule: (&self.delivery).into(),
            api_base: api_base.to_owned(),
        }
    }
}

impl From<EventKind> for SinkEvent {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::MessageStored => SinkEvent::MessageStored,
            EventKind::SourceStateChanged => SinkEvent::SourceStateChanged,
        }
    }
}
