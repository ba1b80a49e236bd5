//! # mailsluice: a mail ingestion node
//!
//! One process collects mail from many *Message Sources* (IMAP or POP3 mailboxes, each
//! signing in with a password or an OAuth2 access token) and lands every message,
//! byte-exact and parsed, exactly once in an embedded sled store.
//!
//! ## Data flow
//! ```text
//!             ┌──────────── Supervisor (actor) ────────────┐
//!             │ starts, watches, restarts with backoff      │
//!             ▼                                             ▼
//!   Collector (actor, one per source)  ── GetAccessToken ──▶ TokenManager (actor, one)
//!      │  poll timer / session slots                        │ cached token, or one refresh
//!      ▼                                                    │ per credential in flight;
//!   ingest::run_session (one cycle, or an IDLE session)    │ rotated refresh token saved
//!      │ net: TCP + TLS, STARTTLS, timeouts                 ▼ before the reply
//!      │ protocol: IMAP/POP3 state machines (bytes in, commands out)
//!      │ ingest::pipeline → workers: parse (mail-parser), checksum, compress
//!      ▼
//!   store (sled): message + checkpoint + outbox event in one transaction, ids and
//!   event seqs in commit order, flushed before any change on the server
//!      │
//!      └─ outcomes → telemetry::status (one owner of per-source status) → API, CLI, gauges
//!                      └─ state changes → Supervisor → outbox event
//!
//!   outbox (durable events, in seq order)
//!      ▼
//!   sinks::engine::Worker (one per sink, started by the Supervisor): order per source,
//!      │ concurrency, retries, failed marks, batched progress records
//!      ▼
//!   sinks::webhook (signed HTTPS POST) │ NATS JetStream
//! ```
//!
//! ## Modules, and what each may import
//! | module | holds | imports (crate) |
//! |---|---|---|
//! | `protocol` | IMAP framing, parsing, commands and the session state machine with typed states; POP3 replies and commands, and its session state machine (authorization, transaction; STLS, USER/PASS and two-step SASL AUTH as transitions; pipelined RETR); SASL encodings. No I/O, no clock. | `secret` |
//! | `net` | sockets: TCP, TLS (rustls; native-tls behind a feature), STARTTLS, timeouts; pumps bytes through `protocol` | `protocol`, `secret`, `telemetry` |
//! | `parse` | mail-parser → the stored message model; the only importer of mail_parser | — |
//! | `store` | the traits ingest (`IngestStore`) and auth (`TokenStore`) use, with the guarantees a backend keeps; the sled `Store` behind them: trees, keys, chunked and compressed values, messages, checkpoints, post-action records, the outbox (events, sink delivery records, retention), tokens, encryption at rest; the only importer of sled | `parse`, `secret`, `telemetry` |
//! | `auth` | OAuth2 providers, flows (PKCE loopback, device code, client credentials), the token service and its clock, horizons | `config`, `secret`, `store`, `telemetry` |
//! | `ingest` | one source's collection cycle as plain code: session → list → fetch → parse-and-store → checkpoint → post-action | `config`, `net`, `protocol`, `parse`, `store`, `secret`, `telemetry` |
//! | `actors` | supervisor, collector, token manager: thin shells over `ingest` and `auth`; what they decide is in `actors::policy`, plain functions; `actors::sinks` builds each sink's transport (reading its secret), starts and stops its worker, plans reloads and prunes the outbox | `auth`, `config`, `ingest`, `net`, `sinks`, `store`, `secret`, `telemetry` |
//! | `config` | raw TOML → validated settings (every error at once); `config::live`, the settings in force; `config::endpoint`, where tokens may be sent (a URL parser's reading) | `net`, `protocol`, `sinks`, `store`, `telemetry` (types it converts to) |
//! | `api` | the node's HTTP endpoints and who may call them: `api::access` (Host, cross-site, bearer token and role, JSON-only POSTs, failed-attempt limit, request metrics) runs before every handler; `api::credentials` holds token digests; `api::limits` bounds pages, long polls and test-logins; `api::events` hands the outbox to consumers that pull (long polls on the durable seq); `api::sinks` reads each sink's state from the store; `api::tls` serves HTTPS. Reaches the actors only through `actors::supervisor::NodeHandle` (message recipients) | `actors`, `auth`, `config`, `diagnose`, `secret`, `sinks`, `store`, `telemetry` |
//! | `diagnose` | `test-login`'s step-by-step check | `auth`, `config`, `ingest`, `net`, `protocol`, `secret`, `telemetry` |
//! | `sinks` | handing events (stored messages, source state changes) on to webhooks and NATS JetStream, at least once; the pure pieces: Standard Webhooks signatures, the retry schedule, where a webhook may be sent, the JSON envelope, the state `sinks status` shows; the delivery engine; the webhook and NATS JetStream transports | `config`, `net`, `secret`, `store`, `telemetry` |
//! | `telemetry` | the metric catalog, per-source status, progress, logging, dashboards | — |
//! | `secret` | [`secret::Secret`], whose `Debug` and `Display` are redacted | — |
//!
//! The binary (`src/main.rs`, `src/cli/`) parses the command line and wires these
//! together; it is the only place `anyhow` is used.
//!
//! ## Process-wide singletons
//! - the metrics recorder and its handle (`telemetry::install`);
//! - `telemetry::status`: per-source status, written by collectors, sessions and the token
//!   manager, read by the API, the CLI and the gauges; its announced state changes are
//!   written to the outbox by the supervisor;
//! - the parse-and-store worker threads (`ingest::workers`) and the node-wide read-ahead
//!   budget of fetched bytes (`ingest::pipeline`);
//! - a zstd compressor per worker thread (`store::values`);
//! - per API listener: the failed-attempt allowances per peer and the test-login turns
//!   (`api::access`, `api::limits`);
//! - the panic hook that keeps mail-parser's panics (stored raw as parse errors) out of the
//!   node's panic output (`parse`).
//!
//! ## Rules
//! - `protocol` is sans-IO: "need more bytes" is a return value; every rule is tested from
//!   transcripts and fuzzed. Only `net` touches sockets. Neither imports `config`.
//! - Exactly-once: a message, its index entries, its folder checkpoint and its outbox event
//!   are one store transaction; the store is flushed before the server is changed.
//! - `actors` hold no logic that cannot be tested without actix.
//! - Errors are one `thiserror` enum per layer with a `kind()` used for metric labels and
//!   retry decisions. Secrets never reach logs, metrics, errors or `Debug` output.
//! - Dependencies point one way: `main → actors → ingest → {net → protocol, parse, store, auth}`.
#![forbid(unsafe_code)]

pub mod actors;
pub mod api;
pub mod auth;
pub mod config;
pub mod diagnose;
pub mod ingest;
pub mod net;
pub mod parse;
pub mod protocol;
pub mod secret;
pub mod sinks;
pub mod store;
pub mod telemetry;
