//! One source's collection cycle as plain async code: session → login → for each folder
//! (IMAP) or the maildrop (POP3): list what is new → fetch → parse → store with checkpoint
//! → flush → (post-action) → logout. The Collector actor calls this; tests can too.
//!
//! Exactly-once rests on three rules kept here:
//! 1. a message is stored together with its folder checkpoint (one store transaction);
//! 2. the checkpoint only ever covers UIDs below which everything is stored or known gone,
//!    even if a server answers a FETCH out of UID order;
//! 3. the store is flushed before the server is changed or the session reports success.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{AfterIngest, Protocol, Sasl, SourceAuth, SourceSettings};
use crate::net::imap::{IdleWake, ImapSession, Login};
use crate::net::pop3::Pop3Session;
use crate::net::{Connector, SessionError};
use crate::parse;
use crate::protocol::imap::is_pattern;
use crate::secret::Secret;
use crate::store::{Location, NewMessage, Prepared, Store, StoreError, StoreOutcome};
use crate::telemetry::{self, ErrorKind};

mod workers;

/// UIDs per `UID FETCH` command: large enough to stream, small enough that a dropped
/// session loses little work.
const FETCH_BATCH: usize = 256;

/// UIDs listed (UID and size) per `UID FETCH n:m (UID RFC822.SIZE)`: bounds the memory a
/// folder of any size takes.
const LIST_WINDOW: u32 = 10_000;

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
    #[error("folders not collected: {}", .0.join("; "))]
    Folders(Vec<String>),
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
    fn reached(reopen: Option<ReopenAt>) -> bool {
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

fn login<'a>(source: &'a SourceSettings, cred: &'a Credential) -> Result<Login<'a>, CycleError> {
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
pub async fn run_cycle(
    store: &Arc<Store>,
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
    pub on_pass: &'a mut (dyn FnMut(&CycleReport, &[String]) + Send),
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
pub async fn run_session(
    store: &Arc<Store>,
    connector: &Connector,
    source: &SourceSettings,
    cred: &Credential,
    reopen_at: Option<ReopenAt>,
    idle: Option<IdleCtl<'_>>,
) -> Result<CycleReport, CycleError> {
    telemetry::progress::session_started(&source.name);
    match source.protocol {
        Protocol::Imap => {
            let idle = idle.filter(|_| source.idle);
            run_imap(store, connector, source, cred, reopen_at, idle).await
        }
        Protocol::Pop3 => run_pop3(store, connector, source, cred, reopen_at).await,
    }
}

/// What is counted for a message once stored: size, whether it failed to parse, source.
type Facts = Vec<(u64, bool, String)>;

/// The part of storing a batch done outside its transaction ([`Store::prepare_batch`]).
fn prepare(
    store: &Store,
    msgs: Vec<(NewMessage, bool)>,
) -> Result<(Vec<Prepared>, Facts), StoreError> {
    let facts = msgs
        .iter()
        .map(|(m, _)| (m.raw.len() as u64, m.parsed.is_err(), m.source.clone()))
        .collect();
    Ok((store.prepare_batch(msgs)?, facts))
}

/// The transaction storing a batch ([`Store::commit_batch`], content re-matching on), timed
/// and counted.
fn commit(
    store: &Store,
    (prepared, facts): (Vec<Prepared>, Facts),
    report: &mut CycleReport,
) -> Result<(), StoreError> {
    let started = Instant::now();
    let outcomes = store.commit_batch(&prepared, true)?;
    telemetry::store_write(started.elapsed().as_secs_f64());
    for (outcome, (size, parse_failed, source)) in outcomes.into_iter().zip(facts) {
        match outcome {
            StoreOutcome::Stored(_) => {
                report.stored += 1;
                report.bytes += size;
                telemetry::message_stored(&source, size, parse_failed);
            }
            StoreOutcome::AlreadyStored(_) => report.already += 1,
        }
    }
    Ok(())
}

async fn run_imap(
    store: &Arc<Store>,
    connector: &Connector,
    source: &SourceSettings,
    cred: &Credential,
    reopen_at: Option<ReopenAt>,
    idle: Option<IdleCtl<'_>>,
) -> Result<CycleReport, CycleError> {
    let max_literal = source.max_message_bytes.saturating_add(64 * 1024);
    let mut session = ImapSession::open(
        connector,
        &source.host,
        source.port,
        source.security.into(),
        max_literal,
    )
    .await?;
    if let Some(tls) = session.tls_info() {
        telemetry::tls_handshake(&source.name, tls.resumed);
    }
    session.login(&login(source, cred)?).await?;
    // Refused before anything is stored: a post-action this server cannot do safely.
    session.check_post_action(source.after_ingest.into())?;
    let folders = resolve_folders(&mut session, source).await?;
    let mut report = CycleReport::default();
    let mut first_batch = true;
    let failed = collect_folders(
        store,
        &mut session,
        source,
        &folders,
        reopen_at,
        &mut first_batch,
        &mut report,
    )
    .await?;
    store.flush().await?;
    let Some(mut ctl) = idle else {
        session.logout().await;
        return finish(report, failed);
    };
    if report.more || folders.is_empty() || !session.supports_idle() {
        report.idle_unsupported = !session.supports_idle();
        session.logout().await;
        return finish(report, failed);
    }
    // Push: report this pass, then wait in IDLE on the first folder.
    (ctl.on_pass)(&report, &failed);
    let idle_folder = folders[0].clone();
    let read_only = source.after_ingest == AfterIngest::Keep;
    let mut folders = folders;
    let mut next_poll = tokio::time::Instant::now() + source.poll_interval;
    let mut selected_idle_folder = folders.len() == 1;
    loop {
        if ReopenAt::reached(reopen_at) {
            session.logout().await;
            return Ok(CycleReport {
                more: true,
                passes_reported: true,
                ..CycleReport::default()
            });
        }
        if !selected_idle_folder {
            session.select(&idle_folder, read_only).await?;
            selected_idle_folder = true;
        }
        let now = tokio::time::Instant::now();
        let mut until = now + ctl.reissue;
        if folders.len() > 1 || source.folders.iter().any(|f| is_pattern(f)) {
            // Other folders (and patterns' new matches) are polled while the first idles.
            until = until.min(next_poll);
        }
        if let Some(ReopenAt(at)) = reopen_at {
            let left = (at - chrono::Utc::now().timestamp()).max(0) as u64;
            until = until.min(now + std::time::Duration::from_secs(left));
        }
        // An idle connection holds no `max_sessions` slot; collecting does.
        drop(ctl.permit.take());
        let mut stop = ctl.stop.clone();
        let wake = session
            .idle(until, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await?;
        tracing::debug!(folder = %idle_folder, ?wake, "IDLE ended");
        if wake == IdleWake::Stopped {
            session.logout().await;
            return Ok(CycleReport {
                passes_reported: true,
                ..CycleReport::default()
            });
        }
        let poll_due = tokio::time::Instant::now() >= next_poll;
        if wake == IdleWake::Timeout && !poll_due {
            continue; // re-issue IDLE (or re-open, checked above)
        }
        ctl.permit = ctl.sessions.clone().acquire_owned().await.ok();
        let mut pass = CycleReport::default();
        let mut first_batch = true;
        // New mail in the idle folder: that folder; the poll timer: every folder.
        if poll_due {
            folders = resolve_folders(&mut session, source).await?;
            next_poll = tokio::time::Instant::now() + source.poll_interval;
        }
        let these = if poll_due {
            &folders[..]
        } else {
            std::slice::from_ref(&idle_folder)
        };
        let failed = collect_folders(
            store,
            &mut session,
            source,
            these,
            reopen_at,
            &mut first_batch,
            &mut pass,
        )
        .await?;
        // Still selected only if it was opened last (a refused folder leaves none selected).
        selected_idle_folder = these.last() == Some(&idle_folder) && failed.is_empty();
        store.flush().await?;
        (ctl.on_pass)(&pass, &failed);
        if pass.more {
            session.logout().await;
            return Ok(CycleReport {
                more: true,
                passes_reported: true,
                ..CycleReport::default()
            });
        }
    }
}

fn finish(report: CycleReport, failed: Vec<String>) -> Result<CycleReport, CycleError> {
    if failed.is_empty() {
        Ok(report)
    } else {
        Err(CycleError::Folders(failed))
    }
}

/// The folders a session collects, in order: names as written, patterns expanded with LIST
/// (never the `move_to` folder, whose messages were collected already).
async fn resolve_folders(
    session: &mut ImapSession,
    source: &SourceSettings,
) -> Result<Vec<String>, CycleError> {
    let mut out: Vec<String> = Vec::new();
    for entry in &source.folders {
        if !is_pattern(entry) {
            if !out.contains(entry) {
                out.push(entry.clone());
            }
            continue;
        }
        let names = session.list(entry).await?;
        tracing::debug!(source = %source.name, pattern = %entry, matches = ?names, "folder pattern resolved");
        for name in names {
            let is_target = source.after_ingest == AfterIngest::Move
                && source.move_to.as_deref().unwrap_or("Processed") == name;
            if !is_target && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    Ok(out)
}

/// Collects `folders` in turn. A folder the server refuses is reported back (the others
/// are still collected); any other error ends the session.
async fn collect_folders(
    store: &Arc<Store>,
    session: &mut ImapSession,
    source: &SourceSettings,
    folders: &[String],
    reopen_at: Option<ReopenAt>,
    first_batch: &mut bool,
    report: &mut CycleReport,
) -> Result<Vec<String>, CycleError> {
    let mut failed_folders = Vec::new();
    for folder in folders {
        if let Err(why) = collect_folder(
            store,
            session,
            source,
            folder,
            reopen_at,
            first_batch,
            report,
        )
        .await?
        {
            // The server refused this folder (gone, renamed, no rights): collect the others.
            tracing::warn!(source = %source.name, folder = %folder, error = %why, "folder cannot be opened; the other folders are collected");
            failed_folders.push(format!("{folder}: {why}"));
        }
        if report.more {
            break;
        }
    }
    Ok(failed_folders)
}

async fn collect_folder(
    store: &Arc<Store>,
    session: &mut ImapSession,
    source: &SourceSettings,
    folder: &str,
    reopen_at: Option<ReopenAt>,
    first_batch: &mut bool,
    report: &mut CycleReport,
) -> Result<Result<(), String>, CycleError> {
    let read_only = source.after_ingest == AfterIngest::Keep;
    let selected = match session.select(folder, read_only).await {
        Ok(s) => s,
        Err(SessionError::Protocol { source: why, .. }) => return Ok(Err(why.to_string())),
        Err(e) => return Err(e.into()),
    };
    let checkpoint = store.checkpoint(&source.name, folder)?;
    let from = match checkpoint {
        Some(cp) if cp.uidvalidity == selected.uidvalidity => cp.last_uid + 1,
        Some(cp) => {
            tracing::warn!(
                source = %source.name,
                folder = %folder,
                old = cp.uidvalidity,
                new = selected.uidvalidity,
                "UIDVALIDITY changed; re-matching stored messages by content"
            );
            store.reset_checkpoint(&source.name, folder, selected.uidvalidity)?;
            report.uidvalidity_changes += 1;
            telemetry::uidvalidity_change(&source.name);
            1
        }
        None => 1,
    };
    if selected.exists == 0 || selected.uidnext.is_some_and(|next| next <= from) {
        // Nothing new, but an earlier session may have stored messages and died before
        // changing the server.
        apply_pending(store, session, source, folder, selected.uidvalidity, report).await?;
        return Ok(Ok(()));
    }
    // Listed window by window, so memory stays bounded whatever the folder's size.
    let last_uid = selected.uidnext.map(|next| next.saturating_sub(1));
    let mut window_start = from;
    'windows: loop {
        let window_end = match last_uid {
            Some(last) if window_start > last => break,
            Some(last) => Some(window_start.saturating_add(LIST_WINDOW - 1).min(last)),
            None => None,
        };
        let listed = session.uids_between(window_start, window_end).await?;
        report.backlog += listed.len() as u64;
        telemetry::backlog(&source.name, report.backlog);
        let mut wanted = Vec::with_capacity(listed.len());
        for (uid, size) in listed {
            let skip = u64::from(size) > source.max_message_bytes;
            if skip {
                tracing::warn!(
                    source = %source.name, folder = %folder, uid, size,
                    limit = source.max_message_bytes,
                    "message over max_message_bytes skipped"
                );
                // Not fetched; the checkpoint moves past it with its batch.
                report.skipped += 1;
                telemetry::message_skipped(&source.name);
            }
            wanted.push((uid, size, skip));
        }
        for batch in wanted.chunks(FETCH_BATCH) {
            if !*first_batch && ReopenAt::reached(reopen_at) {
                report.more = true;
                break 'windows;
            }
            *first_batch = false;
            fetch_batch(
                store,
                session,
                source,
                folder,
                selected.uidvalidity,
                batch,
                report,
            )
            .await?;
            // Batch by batch, so a long backfill empties the folder as it goes.
            apply_pending(store, session, source, folder, selected.uidvalidity, report).await?;
        }
        match window_end {
            Some(end) if end < u32::MAX => window_start = end + 1,
            _ => break,
        }
    }
    // Durable before anything is done on the server (post-actions) or reported.
    store.flush().await?;
    apply_pending(store, session, source, folder, selected.uidvalidity, report).await?;
    Ok(Ok(()))
}

/// Makes what was stored durable, then does the post-action of every stored-but-not-yet-
/// acted message of `folder` and records it done. Redone after a crash; every action is
/// idempotent.
async fn apply_pending(
    store: &Store,
    session: &mut ImapSession,
    source: &SourceSettings,
    folder: &str,
    uidvalidity: u32,
    report: &mut CycleReport,
) -> Result<(), CycleError> {
    if source.after_ingest == AfterIngest::Keep {
        return Ok(());
    }
    store.flush().await?;
    let mut uids = store.pending_actions(&source.name, folder, uidvalidity)?;
    uids.sort_unstable();
    for chunk in uids.chunks(FETCH_BATCH) {
        session
            .post_action(source.after_ingest.into(), chunk, source.move_to.as_deref())
            .await?;
        store.actions_done(&source.name, folder, uidvalidity, chunk)?;
        report.acted += chunk.len() as u64;
    }
    if !uids.is_empty() {
        store.flush().await?;
    }
    Ok(())
}

/// Bytes of fetched messages that may wait for parse-and-store workers, node-wide: each
/// session's I/O side reads ahead while earlier messages are parsed and stored, and all of
/// them together hold at most this much (plus the message each is reading). Node-wide
/// because hundreds of concurrent sessions with a budget each would multiply it. Storing is
/// slower than fetching over any network, so a few MB keep the store busy; more is memory.
const PIPELINE_BYTES: u32 = 16 * 1024 * 1024;

/// How many POP3 `RETR`s are sent ahead of the reply being read, when the server announces
/// `PIPELINING` (RFC 2449).
const POP3_PIPELINE: usize = 32;

/// The node-wide read-ahead budget ([`PIPELINE_BYTES`]).
fn read_ahead_budget() -> Arc<tokio::sync::Semaphore> {
    static BUDGET: std::sync::OnceLock<Arc<tokio::sync::Semaphore>> = std::sync::OnceLock::new();
    BUDGET
        .get_or_init(|| Arc::new(tokio::sync::Semaphore::new(PIPELINE_BYTES as usize)))
        .clone()
}

/// A message's share of the read-ahead budget.
fn budget_cost(bytes: u64) -> u32 {
    u32::try_from(bytes)
        .unwrap_or(u32::MAX)
        .clamp(1, PIPELINE_BYTES)
}

/// Takes a message's listed size from the read-ahead budget, before it is read, so a
/// session waiting for room holds no message in memory (hundreds of sessions each holding
/// one were most of a fan-out node's heap).
async fn take_budget(listed: u64) -> Result<tokio::sync::OwnedSemaphorePermit, CycleError> {
    read_ahead_budget()
        .acquire_many_owned(budget_cost(listed))
        .await
        .map_err(|_| CycleError::Store(StoreError::Corrupt("read-ahead budget closed".into())))
}

/// The budget for a message of `len` bytes read with `permit`: the same permit when it is
/// large enough. A message larger than listed takes its full size before it goes on, waited
/// for holding nothing (sessions holding part of the budget while waiting for more could
/// wait for each other forever).
async fn budget_for(
    permit: tokio::sync::OwnedSemaphorePermit,
    len: usize,
) -> Result<tokio::sync::OwnedSemaphorePermit, CycleError> {
    if budget_cost(len as u64) as usize <= permit.num_permits() {
        return Ok(permit);
    }
    drop(permit);
    take_budget(len as u64).await
}

/// A fetched message on its way to the parse-and-store worker.
struct Fetched {
    location: Location,
    raw: Vec<u8>,
    internal_date: Option<String>,
    hold_checkpoint: bool,
    /// Read-ahead budget this message holds until it is stored.
    /// Held until the message is stored, so the budget bounds every message between the
    /// socket and the store (queued, parsed, or waiting for sled's transaction lock, which
    /// hundreds of concurrent sessions take one at a time).
    budget: tokio::sync::OwnedSemaphorePermit,
}

/// Fetches one batch and moves the checkpoint only over a contiguous prefix of handled
/// UIDs (stored, already stored, skipped for size, or gone from the server).
///
/// Bodies stream in on this task while a blocking worker parses and stores them, in the
/// order they came, so reading the network, parsing and writing the store overlap. The
/// batch ends only when the worker has stored everything it was given.
async fn fetch_batch(
    store: &Arc<Store>,
    session: &mut ImapSession,
    source: &SourceSettings,
    folder: &str,
    uidvalidity: u32,
    batch: &[(u32, u32, bool)],
    report: &mut CycleReport,
) -> Result<(), CycleError> {
    let incoming: u64 = batch
        .iter()
        .filter(|(_, _, skip)| !skip)
        .map(|(_, size, _)| u64::from(*size))
        .sum();
    store.ensure_room(incoming)?;
    let to_fetch: Vec<u32> = batch
        .iter()
        .filter(|(_, _, skip)| !skip)
        .map(|(u, _, _)| *u)
        .collect();
    let mut pending: BTreeSet<u32> = to_fetch.iter().copied().collect();
    if !to_fetch.is_empty() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Fetched>(FETCH_BATCH);
        let into = Arc::new(Destination {
            source: source.name.clone(),
            post_action: source.after_ingest != AfterIngest::Keep,
        });
        let worker = parse_and_store(store.clone(), into, rx);
        let sizes: std::collections::HashMap<u32, u32> =
            batch.iter().map(|(uid, size, _)| (*uid, *size)).collect();
        let fed = async {
            // Owned by this block: the worker sees the end of the batch when it ends.
            let tx = tx;
            session.start_fetch(&to_fetch).await?;
            loop {
                // Budget for the next message's listed size before it is read.
                let expected = pending
                    .first()
                    .and_then(|uid| sizes.get(uid))
                    .map_or(64 * 1024, |s| u64::from(*s));
                let permit = take_budget(expected).await?;
                let Some(f) = session.next_fetched().await? else {
                    break;
                };
                let (Some(uid), Some(body)) = (f.uid, f.body) else {
                    continue;
                };
                if !pending.remove(&uid) {
                    // Not asked for (or a repeat): ignore rather than store it twice.
                    continue;
                }
                // The store's checkpoint rule (max of stored UIDs) is only right while
                // messages arrive in UID order with nothing pending below; otherwise the
                // checkpoint is held back until the batch's end moves it.
                let hold_checkpoint = pending.first().is_some_and(|low| *low < uid);
                let permit = budget_for(permit, body.len()).await?;
                if tx
                    .send(Fetched {
                        location: Location::Imap {
                            folder: folder.to_string(),
                            uidvalidity,
                            uid,
                        },
                        raw: body,
                        internal_date: f.internal_date.map(|d| d.to_rfc3339()),
                        hold_checkpoint,
                        budget: permit,
                    })
                    .await
                    .is_err()
                {
                    // The worker stopped on a store error; it reports it below.
                    break;
                }
            }
            Ok::<(), CycleError>(())
        };
        let (fed, stored) = tokio::join!(fed, worker);
        // A store error first: it is why the feeding stopped.
        report.add_stored(&stored?);
        fed?;
    }
    // Everything asked for has been answered. UIDs that never came were expunged meanwhile;
    // size-skipped ones were never asked for. The whole batch is now handled.
    if !pending.is_empty() {
        tracing::info!(source = %source.name, folder, gone = pending.len(), "messages expunged before they could be fetched");
    }
    if let Some((last, _, _)) = batch.last() {
        store.skip(&source.name, folder, uidvalidity, *last)?;
    }
    Ok(())
}

/// Where the worker of [`fetch_batch`] stores what it is given.
struct Destination {
    source: String,
    post_action: bool,
}

/// At most this many messages, or [`STORE_BATCH_BYTES`] of them, go into one store
/// transaction. A batch only takes what has already arrived, so it never waits for mail.
/// Small, because sled keeps every node a transaction replaces until the transaction ends:
/// measured storing the bench corpus, peak RSS was 127 MB one message per transaction,
/// 135 MB with 8 and 240 MB with 64, for no measurable gain in speed.
const STORE_BATCH_MESSAGES: usize = 8;
const STORE_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The store side of [`fetch_batch`]: hands the messages to the parse-and-store workers
/// ([`workers`]) in arrival order, the ones that arrived together as one batch and one
/// transaction (sled's per-transaction cost is high). Each batch is two jobs: parsing (with
/// checksums, compression and serialization), then its transaction. Up to one parse per
/// worker is in flight while the batch before them commits, so one busy mailbox keeps every
/// core working; transactions still run one at a time and in order (a checkpoint must never
/// pass an uncommitted message). Stops at the first store error (dropping the channel tells
/// the feeder to stop), after the transaction already running has ended.
async fn parse_and_store(
    store: Arc<Store>,
    into: Arc<Destination>,
    mut rx: tokio::sync::mpsc::Receiver<Fetched>,
) -> Result<CycleReport, StoreError> {
    type Committed = Result<(Result<(), StoreError>, CycleReport), workers::WorkerFailed>;
    type Parsed = Result<
        Result<
            (
                (Vec<Prepared>, Facts),
                Vec<tokio::sync::OwnedSemaphorePermit>,
            ),
            StoreError,
        >,
        workers::WorkerFailed,
    >;
    type Job<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;
    let mut report = CycleReport::default();
    // Batches being parsed, oldest first, and the transaction running (at most one).
    let mut parsing: std::collections::VecDeque<Job<Parsed>> = Default::default();
    let mut committing: Option<Job<Committed>> = None;
    let depth = workers::count();
    let mut more = true;
    let finish = |report: &mut CycleReport, done: Committed| -> Result<(), StoreError> {
        let (stored, part) = done.map_err(|e| StoreError::Worker(e.to_string()))?;
        report.add_stored(&part);
        stored
    };
    let outcome = loop {
        if !more && parsing.is_empty() {
            break Ok(());
        }
        tokio::select! {
            biased;
            done = async { committing.as_mut().expect("guarded").await }, if committing.is_some() => {
                committing = None;
                if let Err(e) = finish(&mut report, done) {
                    break Err(e);
                }
            }
            parsed = async { parsing.front_mut().expect("guarded").await },
                if committing.is_none() && !parsing.is_empty() =>
            {
                parsing.pop_front();
                let (prepared, budget) = match parsed {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => break Err(e),
                    Err(e) => break Err(StoreError::Worker(e.to_string())),
                };
                let store = store.clone();
                let span = tracing::Span::current();
                committing = Some(Box::pin(workers::submit(move || {
                    let _entered = span.enter();
                    let mut part = CycleReport::default();
                    let stored = commit(&store, prepared, &mut part);
                    drop(budget);
                    (stored, part)
                })));
            }
            first = rx.recv(), if more && parsing.len() < depth => {
                let Some(first) = first else {
                    more = false;
                    continue;
                };
                let mut bytes = first.raw.len();
                let mut batch = vec![first];
                while batch.len() < STORE_BATCH_MESSAGES && bytes < STORE_BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(f) => {
                            bytes += f.raw.len();
                            batch.push(f);
                        }
                        Err(_) => break,
                    }
                }
                let store = store.clone();
                let into = into.clone();
                let span = tracing::Span::current();
                parsing.push_back(Box::pin(workers::submit(move || {
                    let _entered = span.enter();
                    // The read-ahead budget each message holds goes along until it is stored.
                    let (msgs, budget): (Vec<_>, Vec<_>) =
                        batch.into_iter().map(|f| into.message(f)).unzip();
                    prepare(&store, msgs).map(|p| (p, budget))
                })));
            }
        }
    };
    // What is already in a transaction is counted, also when something after it failed.
    if let Some(last) = committing {
        let done = finish(&mut report, last.await);
        outcome.and(done)?;
    } else {
        outcome?;
    }
    Ok(report)
}

impl Destination {
    /// Parses a fetched message into what the store takes, with whether it moves the
    /// folder checkpoint.
    fn message(&self, f: Fetched) -> ((NewMessage, bool), tokio::sync::OwnedSemaphorePermit) {
        let parsed = parse::parse(&f.raw);
        if let Err(e) = &parsed {
            match &f.location {
                Location::Imap { folder, uid, .. } => {
                    tracing::warn!(source = %self.source, folder = %folder, uid, error = %e, "message stored raw: parse failed");
                }
                Location::Pop3 { uidl } => {
                    tracing::warn!(source = %self.source, uidl = %uidl, error = %e, "message stored raw: parse failed");
                }
            }
        }
        let msg = NewMessage {
            source: self.source.clone(),
            location: f.location,
            raw: f.raw,
            internal_date: f.internal_date,
            parsed,
            post_action: self.post_action,
        };
        ((msg, !f.hold_checkpoint), f.budget)
    }
}

async fn run_pop3(
    store: &Arc<Store>,
    connector: &Connector,
    source: &SourceSettings,
    cred: &Credential,
    reopen_at: Option<ReopenAt>,
) -> Result<CycleReport, CycleError> {
    let mut session =
        Pop3Session::open(connector, &source.host, source.port, source.security.into()).await?;
    if let Some(tls) = session.tls_info() {
        telemetry::tls_handshake(&source.name, tls.resumed);
    }
    session.login(&login(source, cred)?).await?;
    let mut report = CycleReport::default();
    let uidl = session.uidl().await?;
    let sizes: std::collections::HashMap<u32, u64> = session.list().await?.into_iter().collect();
    let stored = store.stored_uidls(&source.name)?;
    let todo: Vec<(u32, String)> = uidl
        .iter()
        .filter(|(_, u)| !stored.contains(u))
        .cloned()
        .collect();
    report.backlog = todo.len() as u64;
    telemetry::backlog(&source.name, report.backlog);
    // RETRs are sent up to this many ahead of the reply being read, when the server allows
    // it, so the round trip between messages is not waited out; the replies then come one
    // after another and go to the parse-and-store workers as they arrive (as IMAP's FETCH
    // bodies do), one store transaction for those that arrived together.
    let window = if session.pipelining() {
        POP3_PIPELINE
    } else {
        1
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Fetched>(FETCH_BATCH);
    let into = Arc::new(Destination {
        source: source.name.clone(),
        post_action: false,
    });
    let worker = parse_and_store(store.clone(), into, rx);
    let limit = source.max_message_bytes.saturating_add(64 * 1024);
    let fed = async {
        // Owned by this block: the worker sees the end when it ends.
        let tx = tx;
        let (mut skipped, mut more) = (0u64, false);
        let mut todo = todo.into_iter().enumerate();
        // Sent, not yet read: (number, UIDL, listed size).
        let mut sent: std::collections::VecDeque<(u32, String, u64)> = Default::default();
        loop {
            if sent.len() <= window / 2 && !more {
                let mut next = Vec::new();
                while sent.len() + next.len() < window {
                    let Some((i, (n, uid))) = todo.next() else {
                        break;
                    };
                    if i > 0 && i % FETCH_BATCH == 0 && ReopenAt::reached(reopen_at) {
                        more = true;
                        break;
                    }
                    let size = sizes.get(&n).copied().unwrap_or(0);
                    if size > source.max_message_bytes {
                        tracing::warn!(source = %source.name, uidl = %uid, size, limit = source.max_message_bytes, "message over max_message_bytes skipped");
                        skipped += 1;
                        telemetry::message_skipped(&source.name);
                        continue;
                    }
                    store.ensure_room(size)?;
                    next.push((n, uid, size));
                }
                if !next.is_empty() {
                    let numbers: Vec<u32> = next.iter().map(|(n, _, _)| *n).collect();
                    session.send_retrs(&numbers).await?;
                    sent.extend(next);
                }
            }
            let Some((_, uid, size)) = sent.pop_front() else {
                break;
            };
            let permit = take_budget(size).await?;
            let body = session.retr_reply(size, limit).await?;
            let permit = budget_for(permit, body.len()).await?;
            let fetched = Fetched {
                location: Location::Pop3 { uidl: uid },
                raw: body,
                internal_date: None,
                hold_checkpoint: false,
                budget: permit,
            };
            if tx.send(fetched).await.is_err() {
                // The worker stopped on a store error; it reports it below.
                break;
            }
        }
        Ok::<_, CycleError>((skipped, more))
    };
    let (fed, stored) = tokio::join!(fed, worker);
    // A store error first: it is why the feeding stopped.
    report.add_stored(&stored?);
    let (skipped, more) = fed?;
    report.skipped += skipped;
    report.more |= more;
    store.flush().await?;
    if source.after_ingest == AfterIngest::Delete {
        // Only messages durably stored (just flushed, or in an earlier session) are deleted;
        // DELE takes effect at QUIT, so a dropped session deletes nothing and the next one
        // deletes again.
        let now = chrono::Utc::now();
        let stored = store.stored_uidls(&source.name)?;
        for (n, uid) in &uidl {
            if !stored.contains(uid) {
                continue;
            }
            if source.delete_after_days > 0 {
                let old_enough = store
                    .pop3_stored_at(&source.name, uid)?
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                    .is_some_and(|t| {
                        (now - t.with_timezone(&chrono::Utc)).num_days()
                            >= source.delete_after_days as i64
                    });
                if !old_enough {
                    continue;
                }
            }
            session.dele(*n).await?;
            report.acted += 1;
        }
        session.quit_checked().await?;
    } else {
        session.quit().await;
    }
    Ok(report)
}
