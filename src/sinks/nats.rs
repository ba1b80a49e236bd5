//! The NATS JetStream transport (`kind = "nats"`): one event is one JetStream publish with
//! `Nats-Msg-Id` = the event id, delivered once the stream's PubAck arrives.
//!
//! ## The stream
//! [`NatsTransport::connect`] makes sure the sink's `stream` exists before the first event:
//! - absent: created file-backed, with subjects `mailsluice.>` and the sink's
//!   `duplicate_window_secs` (the window in which a repeated `Nats-Msg-Id` is acked as a
//!   duplicate instead of stored again);
//! - present with a *shorter* duplicate window: the window, and nothing else, is lengthened
//!   to the configured one, and the log says so. A shorter window would let a publish whose
//!   ack was lost, retried after the longest backoff, be stored twice; a longer one costs the
//!   server a little memory and changes nothing an operator's consumers see;
//! - present in any other way that cannot hold the sink's events (its subjects do not cover
//!   every subject the sink publishes to, it is sealed, a mirror, or does not acknowledge
//!   publishes): refused with an error naming the stream and the settings. Such a stream
//!   belongs to the operator's design, and changing its subjects could swallow or drop
//!   other traffic. A memory-backed stream is used, with a warning (it loses what it holds
//!   when the server restarts).
//!
//! ## Subjects
//! `subject` with `{source}` replaced by the source's name as one subject token. Source
//! names are validated to letters, digits, `-` and `_`, which are kept as they are; any
//! other byte (a name from an older configuration, say) becomes `~` and two hex digits, so
//! the mapping is deterministic and no two names share a subject ([`subject_token`]).
//!
//! ## Large messages
//! A NATS message holds at most the server's `max_payload` (1 MiB by default), headers
//! included. With the raw bytes at hand (`include_raw`, or a message that did not parse):
//! - the envelope with `raw_base64` fits: it is sent as is;
//! - it does not: the raw bytes are put into the object store `object_bucket` (created when
//!   first needed), as an object named after the event id, in chunks that fit the server's
//!   `max_payload`; then the envelope is published with `raw_object: {bucket, name}`. The
//!   object is complete before the envelope naming it is published, and a repeat overwrites
//!   the same object;
//! - without the raw bytes at hand (a message over `max_raw_bytes`, or a sink that did not
//!   ask for them) the envelope carries `raw_url`.
//!
//! An envelope too large even without the raw bytes (its text and HTML bodies alone exceed
//! `max_payload`) cannot be published in any form: the attempt fails as permanent, the
//! event is marked failed with a detail naming both sizes, and after `max_payload` is
//! raised `mailsluice sinks retry` sends it.
//!
//! ## Connections
//! The client reconnects on its own, to the configured servers only (servers a cluster
//! advertises are ignored, so a `nats://` address beyond loopback is never used). While it
//! is not connected an attempt fails at once instead of queueing the publish, so no event
//! waits in a buffer across an outage; the client's command queue is bounded by the sink's
//! `concurrency`. TLS is rustls with the node's trust (system roots and
//! `tls.extra_ca_file`), the sink's `tls_ca_file` and `tls.min_version`; the NATS client
//! has no other TLS library, so `tls.backend` does not apply here. Credentials are read
//! when the sink connects and never reach a log, an error or `Debug` output.
//!
//! Every attempt, object upload included, is bounded by `timeout_secs`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::object_store::{self, ObjectMetadata, ObjectStore};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{ConnectErrorKind, ConnectOptions, HeaderMap, ServerAddr};
use futures_util::future::BoxFuture;

use super::envelope::Raw;
use super::transport::{Delivery, DeliveryError, MadeFor, Prebuilt, Transport};
use crate::config::{
    NatsAuth, NatsSink, SecretError, SecretRef, SinkSettings, SinkTarget, TlsSettings, read_secret,
};
use crate::net::TlsSetupError;
use crate::secret::Secret;
use crate::store::EventKind;

/// The name the node's connections carry on the server (`nats server report connections`).
pub const CONNECTION_NAME: &str = "mailsluice";

/// Subjects of a stream the sink creates.
pub const STREAM_SUBJECTS: &str = "mailsluice.>";

/// The header JetStream deduplicates by.
const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Placeholder in `subject`.
const SOURCE_PLACEHOLDER: &str = "{source}";

/// Object chunks stay this far under `max_payload` (a chunk is published without headers;
/// the margin keeps a server that counts a little more than the payload from refusing it).
const CHUNK_HEADROOM: usize = 1024;
/// The smallest chunk, for a server with an absurdly small `max_payload`.
const MIN_CHUNK: usize = 1024;
/// The largest chunk: one chunk is one publish and one ack; larger ones save little and
/// make every reader hold more at once.
const MAX_CHUNK: usize = 1024 * 1024;

/// Why a NATS sink could not start: its credentials, its TLS trust, the servers, or the
/// stream. Every message names the sink and the key or the server's answer, never a secret.
#[derive(Debug, thiserror::Error)]
pub enum NatsSinkError {
    /// Settings of another kind handed to the NATS transport (a wiring bug).
    #[error("sinks.{sink}: kind = \"{kind}\" is not a NATS sink")]
    NotNats { sink: String, kind: &'static str },
    #[error("sinks.{sink}.{key}: {source}")]
    Secret {
        sink: String,
        key: &'static str,
        source: SecretError,
    },
    /// The file is there but is not a credentials file. Its content is never quoted.
    #[error(
        "sinks.{sink}.creds_file {}: not a NATS credentials file (a user JWT and a user NKey \
         seed, each between its BEGIN and END lines)",
        path.display()
    )]
    CredsFile { sink: String, path: PathBuf },
    /// The node's `[tls]` trust (`tls.extra_ca_file`) cannot be used.
    #[error("sinks.{sink}: {source}")]
    NodeTls { sink: String, source: TlsSetupError },
    #[error("sinks.{sink}.tls_ca_file {}: {reason}", path.display())]
    TlsCaFile {
        sink: String,
        path: PathBuf,
        reason: String,
    },
    #[error("sinks.{sink}.servers: {server:?} is not a NATS server address: {reason}")]
    ServerAddress {
        sink: String,
        server: String,
        reason: String,
    },
    /// No server took the connection. `reason` is the client's and the server's words
    /// (`authorization violation`, `connection refused`, a TLS alert).
    #[error("sinks.{sink}: cannot connect to NATS at {servers}: {reason}")]
    Connect {
        sink: String,
        servers: String,
        reason: String,
        kind: ConnectErrorKind,
    },
    /// The stream exists but cannot hold this sink's events; nothing was changed.
    #[error("sinks.{sink}: stream {stream} {problem}")]
    StreamUnfit {
        sink: String,
        stream: String,
        problem: String,
    },
    /// JetStream refused to look up, create or update the stream or the object bucket.
    #[error("sinks.{sink}: {what}: {reason}")]
    JetStream {
        sink: String,
        what: String,
        reason: String,
    },
}

impl NatsSinkError {
    /// Short, fixed label for logs and metrics: `config` (a setting or file to fix),
    /// `auth` (the server refused the credentials), `tls`, `connect`, `stream` (the
    /// stream's configuration), `nats` (JetStream answered with an error).
    pub fn kind(&self) -> &'static str {
        match self {
            NatsSinkError::NotNats { .. }
            | NatsSinkError::Secret { .. }
            | NatsSinkError::CredsFile { .. }
            | NatsSinkError::NodeTls { .. }
            | NatsSinkError::TlsCaFile { .. }
            | NatsSinkError::ServerAddress { .. } => "config",
            NatsSinkError::Connect { kind, .. } => match kind {
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                    "auth"
                }
                ConnectErrorKind::Tls => "tls",
                _ => "connect",
            },
            NatsSinkError::StreamUnfit { .. } => "stream",
            NatsSinkError::JetStream { .. } => "nats",
        }
    }
}

/// A connected NATS sink. Cheap to share: `deliver` runs concurrently, one call per source.
pub struct NatsTransport {
    /// The NAME in `[sinks.NAME]`.
    sink: String,
    /// The configured servers, for messages.
    servers: String,
    client: async_nats::Client,
    /// JetStream on `client`, its API and ack waits bounded by `timeout_secs`.
    js: jetstream::Context,
    /// What [`NatsTransport::connect`] ensured, kept to ensure it again when the stream
    /// disappears while the node runs.
    stream: stream::Config,
    /// `subject`, with `{source}` still in it.
    subject: String,
    /// `object_bucket`.
    bucket: String,
    /// The bucket, opened (or created) by the first message that needs it.
    objects: tokio::sync::OnceCell<ObjectStore>,
    /// Where the node serves raw bytes: `{api_base}/api/messages/{id}/raw`.
    api_base: String,
    /// `timeout_secs`: one whole attempt.
    timeout: Duration,
}

/// Credentials stay out: the client holds them, and this prints only where the sink sends.
impl fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsTransport")
            .field("sink", &self.sink)
            .field("servers", &self.servers)
            .field("stream", &self.stream.name)
            .field("subject", &self.subject)
            .field("object_bucket", &self.bucket)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl NatsTransport {
    /// Reads the sink's credentials, connects to one of its servers and ensures its stream
    /// (see the module documentation). `tls` is the node's `[tls]`; `api_base` is where the
    /// node's API is reached (`https://mail.example.com:9898`), for `raw_url`.
    pub async fn connect(
        settings: &SinkSettings,
        tls: &TlsSettings,
        api_base: &str,
    ) -> Result<NatsTransport, NatsSinkError> {
        let sink = settings.name.clone();
        let SinkTarget::Nats(nats) = &settings.target else {
            return Err(NatsSinkError::NotNats {
                sink,
                kind: settings.kind().as_str(),
            });
        };
        let addrs = nats
            .servers
            .iter()
            .map(|s| {
                s.parse::<ServerAddr>()
                    .map_err(|e| NatsSinkError::ServerAddress {
                        sink: sink.clone(),
                        server: s.clone(),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let servers = nats.servers.join(", ");
        let timeout = settings.delivery.timeout;

        let options = ConnectOptions::new()
            .name(CONNECTION_NAME)
            .connection_timeout(timeout)
            .request_timeout(Some(timeout))
            .client_capacity(command_capacity(settings.delivery.concurrency))
            .ignore_discovered_servers()
            .tls_client_config(tls_config(&sink, tls, nats.tls_ca_file.as_deref())?)
            .event_callback(connection_events(sink.clone()));
        let options = with_auth(options, &sink, &nats.auth)?;
        let client = options
            .connect(addrs)
            .await
            .map_err(|e| NatsSinkError::Connect {
                sink: sink.clone(),
                servers: servers.clone(),
                reason: e.to_string(),
                kind: e.kind(),
            })?;
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(client.clone());
        let stream = stream_config(nats);
        ensure_stream(&js, &sink, &stream, &subject_pattern(&nats.subject)).await?;
        tracing::info!(
            sink = %sink,
            servers = %servers,
            stream = %stream.name,
            max_payload = client.max_payload(),
            "connected to NATS"
        );
        Ok(NatsTransport {
            sink,
            servers,
            client,
            js,
            stream,
            subject: nats.subject.clone(),
            bucket: nats.object_bucket.clone(),
            objects: tokio::sync::OnceCell::new(),
            api_base: api_base.trim_end_matches('/').to_owned(),
            timeout,
        })
    }

    /// The subject an event about `source` is published to.
    pub fn subject_for(&self, source: &str) -> String {
        subject_for(&self.subject, source)
    }

    /// The server's `max_payload`, as the current connection announced it.
    pub fn max_payload(&self) -> usize {
        self.client.max_payload()
    }

    async fn attempt(&self, d: &Delivery) -> Result<(), DeliveryError> {
        if self.client.connection_state() != State::Connected {
            return Err(DeliveryError::transient(
                "connect",
                format!(
                    "not connected to NATS ({}); the client is reconnecting",
                    self.servers
                ),
            ));
        }
        let max_payload = self.client.max_payload();
        let out = match &d.prebuilt {
            // Built ahead for this max_payload: an inline envelope that fits.
            Some(Prebuilt {
                body,
                made_for: MadeFor::MaxPayload(built_for),
            }) if *built_for == max_payload => Outgoing {
                body: body.clone(),
                object: false,
            },
            _ => self.outgoing(d, max_payload)?,
        };
        if out.object {
            let raw = d.raw.as_deref().map(Vec::as_slice).unwrap_or_default();
            self.put_object(&d.event.id, raw, max_payload).await?;
        }
        let subject = self.subject_for(&d.event.source);
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID_HEADER, d.event.id.as_str());
        let published = self
            .js
            .publish_with_headers(subject.clone(), headers, out.body)
            .await;
        let acked = match published {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(_ack) => Ok(()),
            Err(e) => Err(self.publish_failed(&subject, e).await),
        }
    }

    /// The message to publish for `d` under `max_payload`.
    fn outgoing(&self, d: &Delivery, max_payload: usize) -> Result<Outgoing, DeliveryError> {
        let raw_url = match &d.message {
            Some(meta) => raw_url(&self.api_base, meta.id),
            None => String::new(),
        };
        outgoing(d, &self.bucket, &raw_url, max_payload)
    }

    /// What a failed publish says; a stream that has gone is ensured again for the retry.
    async fn publish_failed(
        &self,
        subject: &str,
        e: async_nats::jetstream::context::PublishError,
    ) -> DeliveryError {
        let at = format!(
            "publish to {subject} (stream {}, NATS {})",
            self.stream.name, self.servers
        );
        match e.kind() {
            PublishErrorKind::TimedOut => DeliveryError::transient(
                "timeout",
                format!("{at}: no PubAck within {}s", self.timeout.as_secs()),
            ),
            PublishErrorKind::BrokenPipe => DeliveryError::transient(
                "connect",
                format!("{at}: the connection closed before the PubAck"),
            ),
            PublishErrorKind::StreamNotFound => {
                let pattern = subject_pattern(&self.subject);
                let again = match ensure_stream(&self.js, &self.sink, &self.stream, &pattern).await
                {
                    Ok(()) => "ensured again for the next attempt".to_owned(),
                    Err(e) => e.to_string(),
                };
                tracing::warn!(sink = %self.sink, stream = %self.stream.name, "no stream answered a publish: {again}");
                DeliveryError::transient("nats", format!("{at}: no stream answered; {again}"))
            }
            _ => DeliveryError::transient("nats", format!("{at}: {e}")),
        }
    }

    /// Puts `raw` as object `name`, replacing an earlier one of that name (a repeat).
    async fn put_object(
        &self,
        name: &str,
        raw: &[u8],
        max_payload: usize,
    ) -> Result<(), DeliveryError> {
        let store = self
            .objects
            .get_or_try_init(|| open_bucket(&self.js, &self.bucket))
            .await
            .map_err(|reason| {
                DeliveryError::transient("nats", format!("object bucket {}: {reason}", self.bucket))
            })?;
        let meta = ObjectMetadata {
            name: name.to_owned(),
            chunk_size: Some(chunk_size(max_payload)),
            ..Default::default()
        };
        let mut reader = raw;
        store.put(meta, &mut reader).await.map_err(|e| {
            DeliveryError::transient(
                "nats",
                format!(
                    "put {} bytes as object {name} in bucket {}: {e}",
                    raw.len(),
                    self.bucket
                ),
            )
        })?;
        Ok(())
    }
}

impl Transport for NatsTransport {
    /// An inline envelope, for the current `max_payload`; nothing for one that goes to the
    /// object store (its attempt puts the object first) or while disconnected.
    fn build(&self, d: &Delivery) -> Option<Prebuilt> {
        if self.client.connection_state() != State::Connected {
            return None;
        }
        let max_payload = self.client.max_payload();
        match self.outgoing(d, max_payload) {
            Ok(out) if !out.object => Some(Prebuilt {
                body: out.body,
                made_for: MadeFor::MaxPayload(max_payload),
            }),
            _ => None,
        }
    }

    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.attempt(d)).await {
                Ok(result) => result,
                Err(_) => Err(DeliveryError::transient(
                    "timeout",
                    format!(
                        "event {} to stream {} ({}): not delivered within {}s",
                        d.event.id,
                        self.stream.name,
                        self.servers,
                        self.timeout.as_secs()
                    ),
                )),
            }
        })
    }
}

/// What goes out for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outgoing {
    body: bytes::Bytes,
    /// The raw bytes go to the object store first, named after the event id.
    object: bool,
}

/// Chooses the body: raw bytes inline when the envelope with them fits `max_payload`
/// (headers included), else in the object store; `raw_url` when the raw bytes are not at
/// hand. An envelope that fits in no form is a permanent failure.
fn outgoing(
    d: &Delivery,
    bucket: &str,
    raw_url: &str,
    max_payload: usize,
) -> Result<Outgoing, DeliveryError> {
    let room = max_payload.saturating_sub(header_block_len(&d.event.id));
    let raw = d
        .raw
        .as_deref()
        .filter(|_| d.event.kind == EventKind::MessageStored);
    let Some(raw) = raw else {
        let body = d.envelope(Raw::Url(raw_url))?;
        return fitting(d, body, false, room, max_payload);
    };
    // Base64 alone over the room: the inline envelope cannot fit, so it is not built
    // (it would be a copy a third larger than the message).
    if base64_len(raw.len()) <= room {
        let inline = d.envelope(Raw::Base64(raw))?;
        if inline.len() <= room {
            return Ok(Outgoing {
                body: inline.into(),
                object: false,
            });
        }
    }
    let body = d.envelope(Raw::Object {
        bucket,
        name: &d.event.id,
    })?;
    fitting(d, body, true, room, max_payload)
}

fn fitting(
    d: &Delivery,
    body: Vec<u8>,
    object: bool,
    room: usize,
    max_payload: usize,
) -> Result<Outgoing, DeliveryError> {
    if body.len() <= room {
        return Ok(Outgoing {
            body: body.into(),
            object,
        });
    }
    let mut e = DeliveryError::permanent(format!(
        "event {} (seq {}): its envelope is {} bytes without the raw bytes (the text and HTML \
         bodies alone are that large), over the server's max_payload of {max_payload} bytes \
         with {} bytes of headers; raise max_payload on the NATS server, then retry the event \
         (mailsluice sinks retry)",
        d.event.id,
        d.event.seq,
        body.len(),
        max_payload - room,
    ));
    e.kind = "nats";
    Err(e)
}

/// Bytes of the header block JetStream counts against `max_payload`:
/// `NATS/1.0\r\n` + `Nats-Msg-Id: {id}\r\n` + `\r\n`.
fn header_block_len(id: &str) -> usize {
    "NATS/1.0\r\n".len() + MSG_ID_HEADER.len() + ": ".len() + id.len() + "\r\n\r\n".len()
}

/// Length of standard, padded base64 of `n` bytes.
fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Object chunk size for a server's `max_payload` (see [`CHUNK_HEADROOM`]).
fn chunk_size(max_payload: usize) -> usize {
    max_payload
        .saturating_sub(CHUNK_HEADROOM)
        .clamp(MIN_CHUNK, MAX_CHUNK)
}

fn raw_url(api_base: &str, message_id: u64) -> String {
    format!("{api_base}/api/messages/{message_id}/raw")
}

/// The client's command queue: a few per attempt in flight (a publish, an object's chunks
/// one at a time), so an outage cannot pile up publishes behind a dead connection.
fn command_capacity(concurrency: usize) -> usize {
    concurrency.saturating_mul(4).max(64)
}

/// `template` with `{source}` replaced by [`subject_token`]`(source)`.
pub fn subject_for(template: &str, source: &str) -> String {
    template.replace(SOURCE_PLACEHOLDER, &subject_token(source))
}

/// A source name as one subject token: letters, digits, `-` and `_` as they are (every valid
/// source name is kept), any other byte of its UTF-8 as `~` and two lowercase hex digits,
/// and an empty name as `~`. `~` never stands for itself, so two names never share a token.
pub fn subject_token(source: &str) -> String {
    if source.is_empty() {
        return "~".to_owned();
    }
    let mut token = String::with_capacity(source.len());
    for b in source.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            token.push(char::from(b));
        } else {
            token.push('~');
            token.push_str(&hex::encode([b]));
        }
    }
    token
}

/// Every subject `template` can become, as a subject pattern: a token holding `{source}`
/// is any token (`mailsluice.msg.{source}` -> `mailsluice.msg.*`).
fn subject_pattern(template: &str) -> String {
    template
        .split('.')
        .map(|t| {
            if t.contains(SOURCE_PLACEHOLDER) {
                "*"
            } else {
                t
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The stream as the sink creates it.
fn stream_config(nats: &NatsSink) -> stream::Config {
    stream::Config {
        name: nats.stream.clone(),
        subjects: vec![STREAM_SUBJECTS.to_owned()],
        storage: StorageType::File,
        duplicate_window: nats.duplicate_window,
        ..Default::default()
    }
}

/// Creates the stream, or checks the one there and lengthens a short duplicate window.
/// `subjects` are the subjects the sink publishes to, as a pattern ([`subject_pattern`]).
async fn ensure_stream(
    js: &jetstream::Context,
    sink: &str,
    wanted: &stream::Config,
    subjects: &str,
) -> Result<(), NatsSinkError> {
    let name = &wanted.name;
    let jetstream_err = |what: String, reason: String| NatsSinkError::JetStream {
        sink: sink.to_owned(),
        what,
        reason,
    };
    let existing = match js.get_stream(name).await {
        Ok(s) => s.cached_info().config.clone(),
        Err(e) if is_stream_not_found(&e) => {
            match js.create_stream(wanted.clone()).await {
                Ok(_) => {
                    tracing::info!(
                        sink = %sink,
                        stream = %name,
                        subjects = STREAM_SUBJECTS,
                        duplicate_window_secs = wanted.duplicate_window.as_secs(),
                        "created the stream (file storage)"
                    );
                    return Ok(());
                }
                // Another node created it meanwhile: check that one.
                Err(e) if is_name_taken(&e) => js
                    .get_stream(name)
                    .await
                    .map_err(|e| jetstream_err(format!("look up stream {name}"), e.to_string()))?
                    .cached_info()
                    .config
                    .clone(),
                Err(e) => {
                    return Err(jetstream_err(
                        format!("create stream {name} (subjects {STREAM_SUBJECTS})"),
                        e.to_string(),
                    ));
                }
            }
        }
        Err(e) => {
            return Err(jetstream_err(
                format!("look up stream {name}"),
                e.to_string(),
            ));
        }
    };
    if let Some(problem) = unfit(&existing, subjects, sink) {
        return Err(NatsSinkError::StreamUnfit {
            sink: sink.to_owned(),
            stream: name.clone(),
            problem,
        });
    }
    if existing.storage == StorageType::Memory {
        tracing::warn!(
            sink = %sink,
            stream = %name,
            "the stream keeps messages in memory: what it holds is lost when the NATS server restarts"
        );
    }
    if existing.duplicate_window < wanted.duplicate_window {
        let from = existing.duplicate_window;
        let mut config = existing;
        config.duplicate_window = wanted.duplicate_window;
        js.update_stream(config).await.map_err(|e| {
            jetstream_err(
                format!(
                    "lengthen the duplicate window of stream {name} from {}s to {}s \
                     (sinks.{sink}.duplicate_window_secs)",
                    from.as_secs(),
                    wanted.duplicate_window.as_secs()
                ),
                e.to_string(),
            )
        })?;
        tracing::warn!(
            sink = %sink,
            stream = %name,
            from_secs = from.as_secs(),
            to_secs = wanted.duplicate_window.as_secs(),
            "lengthened the stream's duplicate window to sinks.{sink}.duplicate_window_secs, so a repeated event is still recognised"
        );
    }
    Ok(())
}

fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND
    )
}

fn is_name_taken(e: &jetstream::context::CreateStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::CreateStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NAME_EXIST
    )
}

/// Why an existing stream cannot hold the sink's events, in words naming the settings.
fn unfit(existing: &stream::Config, subjects: &str, sink: &str) -> Option<String> {
    if !existing.subjects.iter().any(|f| covers(f, subjects)) {
        return Some(format!(
            "exists with subjects {:?}, which do not cover {subjects:?} (where \
             sinks.{sink}.subject publishes); add \"{STREAM_SUBJECTS}\" to the stream's \
             subjects, or name another stream in sinks.{sink}.stream",
            existing.subjects
        ));
    }
    if existing.sealed {
        return Some(format!(
            "is sealed and takes no publishes; name another stream in sinks.{sink}.stream"
        ));
    }
    if existing.mirror.is_some() {
        return Some(format!(
            "is a mirror and takes no publishes; name another stream in sinks.{sink}.stream"
        ));
    }
    if existing.no_ack {
        return Some(format!(
            "does not acknowledge publishes (no_ack), so no event could count as delivered; \
             name another stream in sinks.{sink}.stream"
        ));
    }
    None
}

/// Whether subject filter `filter` matches every subject `pattern` stands for (`*` in the
/// pattern is any one token, `>` one or more).
fn covers(filter: &str, pattern: &str) -> bool {
    let mut f = filter.split('.');
    let mut p = pattern.split('.');
    loop {
        match (f.next(), p.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(t)) if t != ">" => {}
            (Some(ft), Some(pt)) if ft == pt && ft != "*" && ft != ">" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

async fn open_bucket(js: &jetstream::Context, bucket: &str) -> Result<ObjectStore, String> {
    let found = match js.get_object_store(bucket).await {
        Ok(store) => return Ok(store),
        Err(e) => e,
    };
    match js
        .create_object_store(object_store::Config {
            bucket: bucket.to_owned(),
            storage: StorageType::File,
            ..Default::default()
        })
        .await
    {
        Ok(store) => Ok(store),
        // Created meanwhile by another node.
        Err(created) => js
            .get_object_store(bucket)
            .await
            .map_err(|_| format!("cannot open it ({found}) nor create it ({created})")),
    }
}

/// Logs the connection's ups and downs under the sink's name.
fn connection_events(
    sink: String,
) -> impl Fn(async_nats::Event) -> std::future::Ready<()> + Send + Sync + 'static {
    move |event| {
        match &event {
            async_nats::Event::Disconnected => {
                tracing::warn!(sink = %sink, "NATS connection lost; reconnecting")
            }
            async_nats::Event::Connected => {
                tracing::info!(sink = %sink, "NATS connection (re)established")
            }
            async_nats::Event::LameDuckMode | async_nats::Event::ServerError(_) => {
                tracing::warn!(sink = %sink, "NATS: {event}")
            }
            _ => tracing::debug!(sink = %sink, "NATS: {event}"),
        }
        std::future::ready(())
    }
}

fn with_auth(
    options: ConnectOptions,
    sink: &str,
    auth: &NatsAuth,
) -> Result<ConnectOptions, NatsSinkError> {
    let secret = |key: &'static str, r: &SecretRef| {
        read_secret(r)
            .map(Secret::new)
            .map_err(|source| NatsSinkError::Secret {
                sink: sink.to_owned(),
                key,
                source,
            })
    };
    Ok(match auth {
        NatsAuth::None => options,
        NatsAuth::Token(r) => options.token(secret("token_env", r)?.expose().to_owned()),
        NatsAuth::UserPassword { user, password } => options.user_and_password(
            user.clone(),
            secret("password_env", password)?.expose().to_owned(),
        ),
        NatsAuth::CredsFile(path) => {
            let creds =
                zeroize::Zeroizing::new(read_secret(&SecretRef::File(path.clone())).map_err(
                    |source| NatsSinkError::Secret {
                        sink: sink.to_owned(),
                        key: "creds_file",
                        source,
                    },
                )?);
            options
                .credentials(&creds)
                .map_err(|_| NatsSinkError::CredsFile {
                    sink: sink.to_owned(),
                    path: path.clone(),
                })?
        }
    })
}

/// rustls with the node's trust plus the sink's `tls_ca_file`.
fn tls_config(
    sink: &str,
    tls: &TlsSettings,
    ca_file: Option<&Path>,
) -> Result<rustls::ClientConfig, NatsSinkError> {
    let node_err = |source| NatsSinkError::NodeTls {
        sink: sink.to_owned(),
        source,
    };
    let mut roots = crate::net::root_store(tls.extra_ca_file.as_deref()).map_err(node_err)?;
    if let Some(path) = ca_file {
        let ca_err = |reason: String| NatsSinkError::TlsCaFile {
            sink: sink.to_owned(),
            path: path.to_path_buf(),
            reason,
        };
        let certs = crate::net::extra_ca_certs(path).map_err(|e| {
            ca_err(match e {
                TlsSetupError::CaFileUnreadable { reason, .. } => reason.to_string(),
                TlsSetupError::NoCertificate { .. } => "no PEM certificate found".to_owned(),
                other => other.to_string(),
            })
        })?;
        for cert in certs {
            roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
        }
    }
    let min = crate::net::TlsOptions::from(tls).min_version;
    let config = crate::net::rustls_config(min, roots).map_err(node_err)?;
    Ok(std::sync::Arc::unwrap_or_clone(config))
}

/// A NATS sink as the node runs it: it connects on its first attempt, and again on the next
/// attempt after a connect failed, so the node starts (and the sink's other work goes on)
/// while the server is down. A failed connect is a failed attempt, retried on the sink's
/// schedule like any other, its error naming the servers and why.
pub struct LazyNatsTransport {
    settings: SinkSettings,
    /// The configured servers, for messages.
    servers: String,
    tls: TlsSettings,
    api_base: String,
    connected: tokio::sync::Mutex<Option<Arc<NatsTransport>>>,
}

impl fmt::Debug for LazyNatsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyNatsTransport")
            .field("sink", &self.settings.name)
            .finish_non_exhaustive()
    }
}

impl LazyNatsTransport {
    pub fn new(settings: &SinkSettings, tls: &TlsSettings, api_base: &str) -> LazyNatsTransport {
        let servers = match &settings.target {
            SinkTarget::Nats(n) => n.servers.join(", "),
            SinkTarget::Webhook(_) => String::new(),
        };
        LazyNatsTransport {
            settings: settings.clone(),
            servers,
            tls: tls.clone(),
            api_base: api_base.to_owned(),
            connected: tokio::sync::Mutex::new(None),
        }
    }

    /// The connected transport; connects (one caller at a time) when there is none.
    async fn transport(&self) -> Result<Arc<NatsTransport>, DeliveryError> {
        let mut connected = self.connected.lock().await;
        if let Some(t) = connected.as_ref() {
            return Ok(t.clone());
        }
        let timeout = self.settings.delivery.timeout;
        let t = match tokio::time::timeout(
            timeout,
            NatsTransport::connect(&self.settings, &self.tls, &self.api_base),
        )
        .await
        {
            Ok(Ok(t)) => Arc::new(t),
            Ok(Err(e)) => return Err(DeliveryError::transient(e.kind(), e.to_string())),
            Err(_) => {
                return Err(DeliveryError::transient(
                    "timeout",
                    format!(
                        "sinks.{}: no connection to {} within {} s",
                        self.settings.name,
                        self.servers,
                        timeout.as_secs()
                    ),
                ));
            }
        };
        *connected = Some(t.clone());
        Ok(t)
    }
}

impl Transport for LazyNatsTransport {
    fn deliver<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(async move { self.transport().await?.deliver(d).await })
    }

    /// What the connected transport builds; nothing before the first connection (or
    /// while it is being made).
    fn build(&self, d: &Delivery) -> Option<Prebuilt> {
        let connected = self.connected.try_lock().ok()?.clone()?;
        connected.build(d)
    }
}

#[cfg(test)]
mod tests;
