//! One source's collection cycle as plain async code: session → login → for each folder
//! (IMAP) or the maildrop (POP3): list what is new → fetch → parse → store with checkpoint
//! → flush → (post-action) → logout. The Collector actor calls this; tests can too.
//!
//! Exactly-once rests on three rules kept here:
//! 1. a message is stored together with its folder checkpoint (one store transaction);
//! 2. the checkpoint only ever covers UIDs below which everything is stored or known gone,
//!    even if a server answers a FETCH out of UID order;
//! 3. the store is flushed before the server is changed or the session reports success.

//!
//! `imap` and `pop3` hold each protocol's cycle; `pipeline` the parse-and-store side both
//! hand fetched messages to; `workers` the threads it runs on.

use std::sync::Arc;

use crate::config::{Protocol, Sasl, SourceAuth, SourceSettings};
use crate::net::imap::Login;
use crate::net::{Connector, SessionError};
use crate::secret::Secret;
use crate::store::{IngestStore, StoreError};
use crate::telemetry::{self, ErrorKind};

mod imap;
mod pipeline;
mod pop3;
#[cfg(test)]
mod tests;
mod workers;

/// UIDs per `UID FETCH` command: large enough to stream, small enough that a dropped
/// session loses little work.
pub(crate) const FETCH_BATCH: usize = 256;

/// UIDs listed (UID and size) per `UID FETCH n:m (UID RFC822.SIZE)`: bounds the memory a
/// folder of any size takes.
pub(crate) const LIST_WINDOW: u32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Credential(String),
    /// Some folders could not be opened (deleted, renamed, no access); the others were
    /// collected.
    #[error("folders not collected: {}", RefusedFolder::list(.0))]
    Folders(Vec<RefusedFolder>),
}

impl CycleError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CycleError::Session(e) => e.kind(),
            CycleError::Store(_) => ErrorKind::Store,
            CycleError::Credential(_) => ErrorKind::Auth,
            CycleError::Folders(_) => ErrorKind::Protocol,
        }
    }
}

/// A folder the server would not open (`NO` to SELECT/EXAMINE: deleted, renamed, no
/// rights), with its reply; the session collects the others.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{folder}: {reply}")]
pub struct RefusedFolder {
    pub folder: String,
    pub reply: crate::protocol::ProtocolError,
}

impl RefusedFolder {
    /// `a: reply; b: reply`, as the operator reads it.
    pub fn list(refused: &[RefusedFolder]) -> String {
        refused
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// What a cycle did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CycleReport {
    /// Newly stored messages.
    pub stored: u64,
    /// Messages found already stored (after a crash or UIDVALIDITY change).
    pub already: u64,
    pub bytes: u64,
    /// Messages skipped for size.
    pub skipped: u64,
    /// Messages whose post-action (seen, move, delete) was done on the server.
    pub acted: u64,
    /// Folders found with a new UIDVALIDITY (their stored messages re-matched by content).
    pub uidvalidity_changes: u64,
    /// Messages seen on the server and not yet stored when the cycle began.
    pub backlog: u64,
    /// The cycle ended early (its access token was about to expire): start the next one
    /// right away instead of waiting for the poll interval.
    pub more: bool,
    /// IDLE was asked for but the server does not offer it: the source is polled.
    pub idle_unsupported: bool,
    /// An IDLE session: every pass was already reported through `IdleCtl::on_pass`, so this
    /// report carries nothing to count.
    pub passes_reported: bool,
}

impl CycleReport {
    /// Adds what `part` stored (stored, already stored, bytes) to this report.
    fn add_stored(&mut self, part: &CycleReport) {
        self.stored += part.stored;
        self.already += part.already;
        self.bytes += part.bytes;
    }
}

/// When a session must end so that it never runs on an expired access token: Unix seconds,
/// checked between batches (at least one batch always runs, so every cycle makes progress).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReopenAt(pub i64);

impl ReopenAt {
    pub(crate) fn reached(reopen: Option<ReopenAt>) -> bool {
        reopen.is_some_and(|r| chrono::Utc::now().timestamp() >= r.0)
    }
}

/// The secret a session signs in with.
#[derive(Debug, Clone)]
pub enum Credential {
    Password(Secret),
    AccessToken(Secret),
}

/// The SASL user: the shared mailbox when set (the delegate's token authenticates),
/// otherwise the configured username.
pub fn sasl_user(source: &SourceSettings) -> &str {
    source.shared_mailbox.as_deref().unwrap_or(&source.username)
}

pub(crate) fn login<'a>(
    source: &'a SourceSettings,
    cred: &'a Credential,
) -> Result<Login<'a>, CycleError> {
    Ok(match (&source.auth, cred) {
        (SourceAuth::Password { .. }, Credential::Password(p)) => Login::Password {
            user: &source.username,
            password: p,
        },
        (SourceAuth::OAuth2 { sasl, .. }, Credential::AccessToken(t)) => match sasl {
            Sasl::Xoauth2 => Login::XOAuth2 {
                user: sasl_user(source),
                token: t,
            },
            Sasl::OAuthBearer => Login::OAuthBearer {
                user: sasl_user(source),
                token: t,
                host: &source.host,
                port: source.port,
            },
        },
        _ => {
            return Err(CycleError::Credential(format!(
                "source {}: credential does not match auth method",
                source.name
            )));
        }
    })
}

/// Runs one collection cycle for `source`. With `reopen_at` (OAuth2), a long backfill ends
/// its session before the access token expires and reports `more`.
pub async fn run_cycle<S: IngestStore>(
    store: &Arc<S>,
    connector: &Connector,
    source: &SourceSettings,
    cred: &Credential,
    reopen_at: Option<ReopenAt>,
) -> Result<CycleReport, CycleError> {
    run_session(store, connector, source, cred, reopen_at, None).await
}

/// What a long-lived (IDLE) session needs from its collector.
pub struct IdleCtl<'a> {
    /// Becomes `true` when the session must end (shutdown, reconfiguration).
    pub stop: tokio::sync::watch::Receiver<bool>,
    /// Called after each pass of the session (the first included) with what it did and the
    /// folders that could not be opened. The report `run_session` returns then carries only
    /// its flags.
    pub on_pass: &'a mut (dyn FnMut(&CycleReport, &[RefusedFolder]) + Send),
    /// `node.max_sessions`: a slot is held while collecting, given back while idling.
    pub sessions: Arc<tokio::sync::Semaphore>,
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// IDLE is re-issued this often (servers drop an IDLE after 30 minutes).
    pub reissue: std::time::Duration,
}

/// IDLE is re-issued after this long: under the 30 minutes after which RFC 2177 lets a
/// server drop an idle client, with room for clock drift.
pub const IDLE_REISSUE: std::time::Duration = std::time::Duration::from_secs(25 * 60);

/// Runs one session for `source`. Without `idle` (or for POP3, or with `idle = false`) this
/// is one cycle. With it, an IMAP session whose server offers IDLE stays open after the
/// first pass: it waits in IDLE on the first folder, collects it as soon as the server
/// reports new mail, polls the other folders every `poll_interval_secs`, and ends when
/// `stop` is set, on error, or (reporting `more`) before its access token expires.
pub async fn run_session<S: IngestStore>(
    store: &Arc<S>,
    connector: &Connector,
    source: &SourceSettings,
    cred: &Credential,
    reopen_at: Option<ReopenAt>,
    idle: Option<IdleCtl<'_>>,
) -> Result<CycleReport, CycleError> {
    telemetry::status::session_started(&source.name);
    match source.protocol {
        Protocol::Imap => {
            let idle = idle.filter(|_| source.idle);
            imap::run_imap(store, connector, source, cred, reopen_at, idle).await
        }
        Protocol::Pop3 => pop3::run_pop3(store, connector, source, cred, reopen_at).await,
    }
}
