//! The seam between the delivery engine and a destination. The engine decides what is sent
//! when (order per source, concurrency, retries, giving up); a [`Transport`] only carries
//! one event to its receiver and says whether the receiver has it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::envelope::{self, EnvelopeError, EnvelopeEvent, EventData, Raw, StateChangeData};
use crate::store::{Event, EventKind, MessageMeta};

/// One event, with what its envelope is built from. The engine reads the message and, when
/// the sink sends them inline ([`envelope::raw_inline`]: wanted, and within
/// `max_raw_bytes`), its raw bytes before handing it over. A transport that cannot carry
/// them inline (NATS, past the server's `max_payload`) moves them aside instead.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: Event,
    /// The stored message of a `message.stored` event.
    pub message: Option<MessageMeta>,
    /// The message's raw bytes, when the sink wants them inline (or moves them aside, as
    /// NATS does for a message larger than its `max_payload`).
    pub raw: Option<Arc<Vec<u8>>>,
    /// Whether the envelope carries `raw` inline (`raw_base64`); else it names `raw_url`.
    pub inline: bool,
    /// Where the node serves the message's raw bytes (`{api_base}/api/messages/{id}/raw`);
    /// `None` for a state change.
    pub raw_url: Option<String>,
    /// What the transport built for it ahead of its attempt ([`Transport::build`]).
    pub prebuilt: Option<Prebuilt>,
}

/// What a transport builds for an event ahead of its attempt (on a blocking thread, while
/// the event before it is in flight), so that the attempt only sends.
#[derive(Debug, Clone)]
pub struct Prebuilt {
    /// The body to send: the same bytes [`Transport::deliver`] would build.
    pub body: bytes::Bytes,
    /// What it was built for, which the attempt checks before it uses it: a webhook's
    /// `webhook-timestamp` with its signature, NATS' `max_payload`.
    pub made_for: MadeFor,
}

/// See [`Prebuilt::made_for`].
#[derive(Debug, Clone)]
pub enum MadeFor {
    /// Signed at this Unix time with this `webhook-signature`.
    Signed { timestamp: i64, signature: String },
    /// An inline envelope within this `max_payload`.
    MaxPayload(usize),
}

impl Delivery {
    /// The envelope as the sink's settings want it: raw bytes inline when they were chosen
    /// so, else their URL. The same event gives the same bytes on every attempt.
    pub fn body(&self) -> Result<Vec<u8>, DeliveryError> {
        match (&self.raw, self.inline, &self.raw_url) {
            (Some(bytes), true, _) => self.envelope(Raw::Base64(bytes)),
            (_, _, Some(url)) => self.envelope(Raw::Url(url)),
            // A state change's envelope has no raw part: what is passed is not looked at.
            _ if self.event.kind == EventKind::SourceStateChanged => self.envelope(Raw::Url("")),
            _ => Err(DeliveryError::permanent(format!(
                "event {} (seq {}): neither its raw bytes nor their URL were given",
                self.event.id, self.event.seq
            ))),
        }
    }

    /// The envelope's bytes with `raw` as the message's raw part (ignored for a state
    /// change). The same inputs give the same bytes: a repeat is the body sent before.
    pub fn envelope(&self, raw: Raw<'_>) -> Result<Vec<u8>, DeliveryError> {
        let e = &self.event;
        let header = EnvelopeEvent {
            id: &e.id,
            seq: e.seq,
            kind: e.kind.as_str(),
            timestamp: &e.timestamp,
            source: &e.source,
        };
        let data = match (e.kind, &self.message, &e.state) {
            (EventKind::MessageStored, Some(meta), _) => EventData::MessageStored { meta, raw },
            (EventKind::SourceStateChanged, _, Some(change)) => {
                EventData::SourceStateChanged(StateChangeData {
                    from: &change.from,
                    to: &change.to,
                    reason: change.reason.as_deref(),
                })
            }
            _ => {
                return Err(DeliveryError::permanent(format!(
                    "event {} (seq {}): its {} is missing from the store",
                    e.id,
                    e.seq,
                    match e.kind {
                        EventKind::MessageStored => "message",
                        EventKind::SourceStateChanged => "state change",
                    }
                )));
            }
        };
        envelope::build(&header, &data)
            .map_err(|e: EnvelopeError| DeliveryError::permanent(e.to_string()))
    }
}

#[cfg(test)]
impl Delivery {
    /// A `source.state_changed` event of source `support` (healthy to degraded), for tests.
    pub(crate) fn state_change_for_test(seq: u64, id: &str) -> Delivery {
        Delivery {
            event: Event {
                seq,
                id: id.into(),
                kind: EventKind::SourceStateChanged,
                source: "support".into(),
                timestamp: "2025-03-01T10:00:00Z".into(),
                message: None,
                state: Some(crate::store::StateChange {
                    from: "healthy".into(),
                    to: "degraded".into(),
                    reason: None,
                }),
            },
            message: None,
            raw: None,
            inline: false,
            raw_url: None,
            prebuilt: None,
        }
    }
}

/// Why an attempt did not deliver. `detail` names the receiver's answer (status line,
/// connection error, NATS error), never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct DeliveryError {
    pub detail: String,
    /// The receiver asked for this wait (`Retry-After` on 429/503).
    pub retry_after: Option<Duration>,
    /// Retrying cannot help (the event cannot be built): marked failed at once.
    pub permanent: bool,
    /// Short, fixed label for `sink_deliveries_total{outcome}` and logs: `http_5xx`,
    /// `http_4xx`, `http_429`, `timeout`, `connect`, `tls`, `refused_address`, `redirect`,
    /// `nats`, `build`.
    pub kind: &'static str,
}

impl DeliveryError {
    /// A failure worth retrying.
    pub fn transient(kind: &'static str, detail: impl Into<String>) -> DeliveryError {
        DeliveryError {
            detail: detail.into(),
            retry_after: None,
            permanent: false,
            kind,
        }
    }

    /// A failure no retry can mend.
    pub fn permanent(detail: impl Into<String>) -> DeliveryError {
        DeliveryError {
            detail: detail.into(),
            retry_after: None,
            permanent: true,
            kind: "build",
        }
    }
}

/// Carries one event to a receiver. `Ok` only once the receiver has it durably: a webhook's
/// 2xx within the timeout, a JetStream PubAck (a duplicate ack included: the stream had it).
/// Implementations hold their connections and reuse them; several `deliver` calls run at
/// once (one per source, up to the sink's `concurrency`).
pub trait Transport: Send + Sync + 'static {
    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), DeliveryError>>;

    /// Builds what `deliver` sends for `delivery`, ahead of its attempt; called on a
    /// blocking thread. `None`: nothing to build ahead (`deliver` builds it).
    fn build(&self, _delivery: &Delivery) -> Option<Prebuilt> {
        None
    }
}
