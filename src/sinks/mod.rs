//! Sinks: handing stored mail on to other systems (`[sinks.NAME]`).
//!
//! Every newly stored message, and every change of a source's state, becomes an *event* in a
//! durable outbox, committed in the same store transaction as the message itself. A sink
//! delivers those events to one receiver: a **webhook** (an HTTPS POST signed the Standard
//! Webhooks way) or a **NATS JetStream** stream (a publish acknowledged by the stream).
//!
//! ## What a receiver can rely on
//! - **At least once.** An event is delivered, or marked failed where an operator sees it
//!   and can retry it; it is never dropped, not across crashes, restarts or outages of the
//!   receiver. A crash between sending and recording the success sends the event again.
//! - **Repeats are exact.** A repeat carries the same event id (`webhook-id`,
//!   `Nats-Msg-Id`) and the same body, so receivers (and the JetStream duplicate window)
//!   drop it by id. The id does not depend on the node: `evt_` + the first 16 bytes, in hex,
//!   of SHA-256 over the event's kind and the message's identity on its server (source,
//!   folder, UIDVALIDITY and UID; POP3: source and UIDL) or the state change.
//! - **Order per source.** Events carry `seq`, given in commit order and never reused; a
//!   sink has one request in flight per source, so a source's events arrive in order
//!   (`concurrency` bounds the requests in flight across sources).
//! - **Old mail is not news.** Only a newly stored message makes an event: one found stored
//!   already, or re-matched after a UIDVALIDITY change, does not.
//!
//! Each sink keeps a low watermark (every event at or below it was delivered, failed, or is
//! not wanted by the sink) and the set of failed events; an event leaves the outbox once
//! every sink is past it, none holds it as failed, and it is older than the retention
//! time (`node.events_retention_secs`, kept for consumers that pull `/api/events`).
//!
//! ## Here
//! The pure pieces, each tested on its own: [`sign`] (Standard Webhooks signatures),
//! [`backoff`] (when to retry, when to give up), [`address`] (where a webhook may be sent),
//! [`envelope`] (the JSON body) and [`health`] (the state `sinks status` shows). The
//! [`engine`] runs one sink: order per source, concurrency, retries, giving up, batched
//! records, `retry` and `replay`; it hands each event to a [`transport::Transport`]: the
//! [`webhook`] one (signed HTTPS POSTs) or [`nats`] (JetStream publishes acknowledged by the
//! stream, the stream ensured, large raw bytes through the object store). The settings are
//! [`crate::config::SinkSettings`]; `actors::sinks` starts and stops the workers.
//!
//! A repeat is byte-for-byte the body sent before as long as the node's API base (the
//! `raw_url` prefix: `node.http_public_url`, else the listen address) stays the same.

pub mod address;
pub mod backoff;
pub mod engine;
pub mod envelope;
pub mod health;
pub mod nats;
pub mod sign;
pub mod transport;
pub mod webhook;
