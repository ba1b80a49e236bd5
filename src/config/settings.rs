//! Validated settings: what the rest of the node reads. Every value here has passed
//! validation, so the types cannot hold a TLS version below 1.2, a plaintext connection,
//! an inline secret or a source pointing at a provider that does not exist.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole node configuration after validation.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[node]`: process-wide settings.
    pub node: NodeSettings,
    /// `[tls]`: how every IMAP/POP3 connection (and https token endpoint) is secured.
    pub tls: TlsSettings,
    /// `[providers.NAME]`, keyed by NAME.
    pub providers: BTreeMap<String, ProviderSettings>,
    /// `[sources.NAME]`, keyed by NAME (disabled sources included, with `enabled = false`).
    pub sources: BTreeMap<String, SourceSettings>,
    /// `[api_clients.NAME]`: callers of `/api/` besides the admin token, keyed by NAME.
    pub api_clients: BTreeMap<String, ApiClientSettings>,
    /// `[sinks.NAME]`: where events (stored messages, source state changes) are delivered,
    /// keyed by NAME.
    pub sinks: BTreeMap<String, SinkSettings>,
}

#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// `node.data_dir`: the sled store directory.
    pub data_dir: PathBuf,
    /// `node.http_listen`: where /metrics, /healthz, /readyz and /api/... are served.
    pub http_listen: SocketAddr,
    /// `node.http_listen_file`: where `run` writes the address it listens on (the one way to
    /// learn the port when `http_listen` asks for port 0), and where commands beside a
    /// running node look it up in that case.
    pub http_listen_file: Option<PathBuf>,
    /// `node.max_sessions`: concurrent IMAP/POP3 sessions over all sources.
    pub max_sessions: usize,
    /// `node.log_format`.
    pub log_format: LogFormat,
    /// `node.secret_key_file`: key that encrypts tokens at rest.
    pub secret_key_file: PathBuf,
    /// `node.token_refresh_margin_secs`: an access token this close to expiry is refreshed.
    pub token_refresh_margin: Duration,
    /// `node.connect_timeout_secs`.
    pub connect_timeout: Duration,
    /// `node.read_timeout_secs`: a server silent this long fails the session.
    pub read_timeout: Duration,
    /// `node.min_free_disk_bytes`: below this much free space in `data_dir` no message is
    /// taken (the source goes `degraded`); the store never runs into a full disk.
    pub min_free_disk_bytes: u64,
    /// `node.store_compression`: how message bytes and parsed fields are written to the
    /// store (`zstd`, the default, or `none`). Either kind is always read.
    pub store_compression: crate::store::Compression,
    /// `node.api_token_file`: the admin token of `/api/`, created (0600) on the node's first
    /// run; commands on the same machine read it to talk to a running node.
    pub api_token_file: PathBuf,
    /// `node.metrics_token_file`: when set, `/metrics` needs this bearer token too.
    pub metrics_token_file: Option<PathBuf>,
    /// `node.http_tls_cert_file` + `node.http_tls_key_file`: serve HTTPS.
    pub http_tls: Option<HttpTls>,
    /// `node.http_allowed_hosts`: Host names (lowercase, no port) served beside loopback
    /// names and addresses.
    pub http_allowed_hosts: Vec<String>,
    /// `node.http_allow_plaintext`: listening beyond loopback without TLS, on purpose.
    pub http_allow_plaintext: bool,
    /// `node.http_public_url`: where others reach this node's API (behind a proxy, or
    /// listening on every address), without a trailing `/`: the base of the `raw_url` sinks
    /// send. `None`: the address the node listens on.
    pub http_public_url: Option<String>,
    /// `node.events_retention_secs`: how long an event every sink has handled stays in the
    /// outbox, for consumers that pull `/api/events`.
    pub events_retention: Duration,
}

/// The certificate chain and private key the node serves HTTPS with (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// What a caller of `/api/` may do. Each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Sources, tokens status, sinks, cluster: state, never mail or secrets.
    Read,
    /// `read`, plus messages and events.
    Mail,
    /// Everything: reload, test-login, token import.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Mail => "mail",
            Role::Admin => "admin",
        }
    }
}

/// `[api_clients.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiClientSettings {
    pub name: String,
    pub role: Role,
    pub token: ApiTokenRef,
}

/// Where an API client's token is known from. Neither form puts the token in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTokenRef {
    /// `token_file`: the token itself, read when the node starts or reloads.
    File(PathBuf),
    /// `token_sha256`: the SHA-256 of the token (the node never sees the token at rest).
    Sha256([u8; 32]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsBackend {
    Rustls,
    Native,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `tls.min_version`.
    pub min_version: TlsVersion,
    /// `tls.extra_ca_file`: PEM roots added to the system roots; `None` when empty.
    pub extra_ca_file: Option<PathBuf>,
    /// `tls.backend`.
    pub backend: TlsBackend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Office365,
    Gmail,
    Oidc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Delegated,
    AppOnly,
}

/// Where a secret comes from. The secret itself is read only when needed and never kept
/// in settings, so `Settings` can be logged and compared freely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `*_env`: name of an environment variable.
    Env(String),
    /// `*_file`: path of a file whose content (trailing newline trimmed) is the secret.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderSettings {
    /// The NAME in `[providers.NAME]`.
    pub name: String,
    pub kind: ProviderKind,
    /// office365: `tenant` (common | organizations | consumers | tenant id or domain).
    pub tenant: Option<String>,
    pub flow: Flow,
    pub client_id: String,
    /// `client_secret_env` / `client_secret_file`; `None` for a public client.
    pub client_secret: Option<SecretRef>,
    /// `redirect_uri` for `authorize`.
    pub redirect_uri: Option<String>,
    /// oidc: `issuer` (discovery).
    pub issuer: Option<String>,
    /// Explicit endpoints (oidc), or the ones derived from `kind` and `tenant`.
    pub token_url: Option<String>,
    pub authorization_url: Option<String>,
    pub device_authorization_url: Option<String>,
    /// `scopes`: overrides the per-kind defaults when set.
    pub scopes: Option<Vec<String>>,
    /// `client_secret_expires` (YYYY-MM-DD).
    pub client_secret_expires: Option<chrono::NaiveDate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Imap,
    Pop3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Implicit TLS from the first byte.
    Tls,
    /// STARTTLS (IMAP) or STLS (POP3); credentials only after the upgrade.
    StartTls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sasl {
    Xoauth2,
    OAuthBearer,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceAuth {
    Password {
        secret: SecretRef,
    },
    OAuth2 {
        /// Name of a key in `Settings::providers`.
        provider: String,
        sasl: Sasl,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterIngest {
    Keep,
    Seen,
    Delete,
    Move,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSettings {
    /// The NAME in `[sources.NAME]`.
    pub name: String,
    pub protocol: Protocol,
    pub host: String,
    /// Given, or the default for protocol and security (993/143/995/110).
    pub port: u16,
    pub security: Security,
    pub username: String,
    pub auth: SourceAuth,
    /// `shared_mailbox`: the mailbox read while `username` signs in.
    pub shared_mailbox: Option<String>,
    /// IMAP folders; `["INBOX"]` by default; empty for POP3.
    pub folders: Vec<String>,
    pub idle: bool,
    pub poll_interval: Duration,
    pub after_ingest: AfterIngest,
    pub move_to: Option<String>,
    /// POP3 with `after_ingest = "delete"`: days a stored message stays on the server.
    pub delete_after_days: u64,
    pub max_message_bytes: u64,
    pub max_connections: usize,
    pub enabled: bool,
}

/// `[sinks.NAME]`: one receiver of events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSettings {
    /// The NAME in `[sinks.NAME]`.
    pub name: String,
    /// Where the events go, by `kind`.
    pub target: SinkTarget,
    /// Which events, with what, how fast and how persistently.
    pub delivery: SinkDelivery,
}

impl SinkSettings {
    pub fn kind(&self) -> SinkKind {
        match self.target {
            SinkTarget::Webhook(_) => SinkKind::Webhook,
            SinkTarget::Nats(_) => SinkKind::Nats,
        }
    }
}

/// `kind` of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SinkKind {
    Webhook,
    Nats,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Nats => "nats",
        }
    }
}

/// A sink's receiver and what only that kind has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    Webhook(WebhookSink),
    Nats(NatsSink),
}

/// `kind = "webhook"`: signed HTTPS POSTs (Standard Webhooks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSink {
    /// `url`: https, or http to a loopback address; no credentials in it.
    pub url: String,
    /// `secret_file` / `secret_env`: one or more `whsec_` secrets (two during a rotation),
    /// read when the sink starts; their format is checked by `check_secrets`.
    pub secret: SecretRef,
    /// `allow_private_addresses`: send to link-local and cloud metadata addresses too.
    pub allow_private_addresses: bool,
}

/// `kind = "nats"`: JetStream publishes, acknowledged before an event counts as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSink {
    /// `servers`: `nats://` (loopback only) or `tls://` URLs, as written.
    pub servers: Vec<String>,
    /// `stream`: created when absent, file-backed, with subjects `mailsluice.>`.
    pub stream: String,
    /// `subject`: starts with `mailsluice.`; `{source}` is replaced by the source's name.
    pub subject: String,
    /// `duplicate_window_secs`: the stream's window for dropping a repeated event id; at
    /// least twice `max_backoff_secs`.
    pub duplicate_window: Duration,
    /// `object_bucket`: object store for messages too large for one NATS message.
    pub object_bucket: String,
    /// `creds_file` / `token_env` / `user` + `password_env`.
    pub auth: NatsAuth,
    /// `tls_ca_file`: PEM roots for `tls://` servers beside the system roots.
    pub tls_ca_file: Option<PathBuf>,
}

/// How a NATS sink signs in. References only; the secrets are read when it connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials (a server that needs none, e.g. on loopback).
    None,
    /// `creds_file`: a NATS credentials file (user JWT and NKey seed).
    CredsFile(PathBuf),
    /// `token_env`.
    Token(SecretRef),
    /// `user` + `password_env`.
    UserPassword { user: String, password: SecretRef },
}

/// Delivery settings every kind has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkDelivery {
    /// `sources`: whose events; all by default.
    pub sources: SourceFilter,
    /// `events`: which kinds; both by default. Never empty.
    pub events: Vec<SinkEvent>,
    /// `include_raw`: raw bytes inline (base64) up to `max_raw_bytes`; larger ones, and all
    /// of them without it, by URL. A message that did not parse always carries them.
    pub include_raw: bool,
    /// `max_raw_bytes`: largest message sent inline (before base64), at most 64 MiB.
    pub max_raw_bytes: u64,
    /// `timeout_secs`: one attempt (request and answer, or publish and ack).
    pub timeout: Duration,
    /// `concurrency`: attempts in flight across sources (one per source at a time).
    pub concurrency: usize,
    /// `max_age_secs`: an event this old (since its commit) is marked failed after its next
    /// failed attempt.
    pub max_age: Duration,
    /// `max_backoff_secs`: the longest wait between attempts, before jitter.
    pub max_backoff: Duration,
}

impl SinkDelivery {
    /// Whether this sink delivers events of `kind` about `source`.
    pub fn wants(&self, kind: SinkEvent, source: &str) -> bool {
        self.events.contains(&kind) && self.sources.matches(source)
    }
}

/// An event kind a sink may be given (`events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SinkEvent {
    MessageStored,
    SourceStateChanged,
}

impl SinkEvent {
    pub const ALL: [SinkEvent; 2] = [SinkEvent::MessageStored, SinkEvent::SourceStateChanged];

    /// The event's `type` on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkEvent::MessageStored => "message.stored",
            SinkEvent::SourceStateChanged => "source.state_changed",
        }
    }
}

/// `sources` of a sink: every source, or those named or matched by a `*` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceFilter {
    All,
    /// Names and patterns (`*` matches any run of characters, including none).
    Only(Vec<String>),
}

impl SourceFilter {
    pub fn matches(&self, source: &str) -> bool {
        match self {
            SourceFilter::All => true,
            SourceFilter::Only(patterns) => patterns.iter().any(|p| glob_matches(p, source)),
        }
    }
}

/// `*` matches any run of characters (none included); every other character itself.
/// Linear backtracking over the last `*`, so no pattern takes more than
/// pattern x name steps.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}
