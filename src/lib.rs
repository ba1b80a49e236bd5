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
//!   ingest::run_cycle                                      │ rotated refresh token saved
//!      │ net::connect (TCP + TLS, STARTTLS)                 ▼ before the reply
//!      │ protocol::{imap,pop3} (sans-IO: bytes in, commands out)
//!      │ parse (mail-parser → StoredMessage)
//!      ▼
//!   store (sled): message + checkpoint in one transaction, flushed before any
//!   change on the server
//! ```
//!
//! ## Module rules
//! - `protocol` has no I/O: it frames and parses server bytes, builds command bytes, and
//!   holds the IMAP session as a state machine with typed states that `net` pumps bytes
//!   through. Only `net` touches sockets (TCP, TLS, timeouts); `ingest` uses its sessions.
//!   Neither imports `config`: callers convert settings into their types.
//! - `store` is the only importer of sled, `parse` the only importer of mail_parser.
//! - `actors` are thin shells over plain code in `ingest` and `auth`, so the logic is
//!   tested without an actix System.
//! - Errors are one `thiserror` enum per layer with a `kind()` used for metric labels and
//!   retry decisions. Secrets are wrapped in [`secret::Secret`], whose `Debug` is redacted.
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
pub mod store;
pub mod telemetry;
