//! One IMAP session: sign in, resolve the folders, collect each (list what is new, fetch
//! in batches, store, move the checkpoint, do the post-actions once stored), then log out
//! or stay in IDLE on the first folder.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::config::{AfterIngest, SourceSettings};
use crate::net::imap::{IdleWake, ImapSession};
use crate::net::{Connector, SessionError};
use crate::protocol::imap::is_pattern;
use crate::store::{IngestStore, Location};
use crate::telemetry;

use super::pipeline::{Destination, Fetched, budget_for, parse_and_store, take_budget};
use super::{
    Credential, CycleError, CycleReport, FETCH_BATCH, IdleCtl, LIST_WINDOW, RefusedFolder,
    ReopenAt, login,
};

pub(super) async fn run_imap<S: IngestStore>(
    store: &Arc<S>,
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
    let Some(ctl) = idle else {
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
    idle_loop(store, session, source, folders, reopen_at, ctl).await
}

/// The rest of an IDLE session after its first pass: waits in IDLE on the first folder,
/// collects it when the server reports new mail, polls every folder every
/// `poll_interval_secs`, and holds a `max_sessions` slot only while collecting. Ends when
/// asked to stop, on error, or (reporting `more`) before its access token expires.
async fn idle_loop<S: IngestStore>(
    store: &Arc<S>,
    mut session: ImapSession,
    source: &SourceSettings,
    mut folders: Vec<String>,
    reopen_at: Option<ReopenAt>,
    mut ctl: IdleCtl<'_>,
) -> Result<CycleReport, CycleError> {
    let idle_folder = folders[0].clone();
    let read_only = source.after_ingest == AfterIngest::Keep;
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

pub(super) fn finish(
    report: CycleReport,
    failed: Vec<RefusedFolder>,
) -> Result<CycleReport, CycleError> {
    if failed.is_empty() {
        Ok(report)
    } else {
        Err(CycleError::Folders(failed))
    }
}

/// The folders a session collects, in order: names as written, patterns expanded with LIST
/// (never the `move_to` folder, whose messages were collected already).
pub(super) async fn resolve_folders(
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
pub(super) async fn collect_folders<S: IngestStore>(
    store: &Arc<S>,
    session: &mut ImapSession,
    source: &SourceSettings,
    folders: &[String],
    reopen_at: Option<ReopenAt>,
    first_batch: &mut bool,
    report: &mut CycleReport,
) -> Result<Vec<RefusedFolder>, CycleError> {
    let mut failed_folders = Vec::new();
    for folder in folders {
        if let Folder::Refused(reply) = collect_folder(
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
            tracing::warn!(source = %source.name, folder = %folder, error = %reply, "folder cannot be opened; the other folders are collected");
            failed_folders.push(RefusedFolder {
                folder: folder.clone(),
                reply,
            });
        }
        if report.more {
            break;
        }
    }
    Ok(failed_folders)
}

/// What became of one folder in a session.
pub(super) enum Folder {
    Collected,
    /// The server would not open it (its reply).
    Refused(crate::protocol::ProtocolError),
}

pub(super) async fn collect_folder<S: IngestStore>(
    store: &Arc<S>,
    session: &mut ImapSession,
    source: &SourceSettings,
    folder: &str,
    reopen_at: Option<ReopenAt>,
    first_batch: &mut bool,
    report: &mut CycleReport,
) -> Result<Folder, CycleError> {
    let read_only = source.after_ingest == AfterIngest::Keep;
    let selected = match session.select(folder, read_only).await {
        Ok(s) => s,
        // NO: this folder cannot be opened (gone, renamed, no rights). BAD is about the
        // session, not the folder (Office 365's "User is authenticated but not connected"):
        // it ends the session like any other error.
        Err(SessionError::Protocol {
            source: why @ crate::protocol::ProtocolError::Rejected(_),
            ..
        }) => {
            return Ok(Folder::Refused(why));
        }
        Err(e) => return Err(e.into()),
    };
    let checkpoint = store.checkpoint(&source.name, folder).await?;
    // Below `rematch_below` (the UIDNEXT when a UIDVALIDITY change was found) messages are
    // matched by content against the copies stored under the old UIDVALIDITY first.
    let (from, rematch_below) = match checkpoint {
        Some(cp) if cp.uidvalidity == selected.uidvalidity => (cp.last_uid + 1, cp.rematch_below),
        Some(cp) => {
            tracing::warn!(
                source = %source.name,
                folder = %folder,
                old = cp.uidvalidity,
                new = selected.uidvalidity,
                "UIDVALIDITY changed; re-matching stored messages by content"
            );
            let reset = store
                .reset_checkpoint(&source.name, folder, selected.uidvalidity, selected.uidnext)
                .await?;
            report.uidvalidity_changes += 1;
            telemetry::uidvalidity_change(&source.name);
            (1, reset.rematch_below)
        }
        None => (1, None),
    };
    if selected.exists == 0 || selected.uidnext.is_some_and(|next| next <= from) {
        // Nothing new, but an earlier session may have stored messages and died before
        // changing the server.
        apply_pending(
            store.as_ref(),
            session,
            source,
            folder,
            selected.uidvalidity,
            report,
        )
        .await?;
        return Ok(Folder::Collected);
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
        telemetry::listed(&source.name, listed.len() as u64);
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
                FolderAt {
                    folder,
                    uidvalidity: selected.uidvalidity,
                    rematch_below,
                },
                batch,
                report,
            )
            .await?;
            // Batch by batch, so a long backfill empties the folder as it goes.
            apply_pending(
                store.as_ref(),
                session,
                source,
                folder,
                selected.uidvalidity,
                report,
            )
            .await?;
        }
        match window_end {
            Some(end) if end < u32::MAX => window_start = end + 1,
            _ => break,
        }
    }
    // Durable before anything is done on the server (post-actions) or reported.
    store.flush().await?;
    apply_pending(
        store.as_ref(),
        session,
        source,
        folder,
        selected.uidvalidity,
        report,
    )
    .await?;
    Ok(Folder::Collected)
}

/// Makes what was stored durable, then does the post-action of every stored-but-not-yet-
/// acted message of `folder` and records it done. Redone after a crash; every action is
/// idempotent.
pub(super) async fn apply_pending<S: IngestStore>(
    store: &S,
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
    let mut uids = store
        .pending_actions(&source.name, folder, uidvalidity)
        .await?;
    uids.sort_unstable();
    for chunk in uids.chunks(FETCH_BATCH) {
        session
            .post_action(source.after_ingest.into(), chunk, source.move_to.as_deref())
            .await?;
        store
            .actions_done(&source.name, folder, uidvalidity, chunk)
            .await?;
        report.acted += chunk.len() as u64;
    }
    if !uids.is_empty() {
        store.flush().await?;
    }
    Ok(())
}

/// Fetches one batch and moves the checkpoint only over a contiguous prefix of handled
/// UIDs (stored, already stored, skipped for size, or gone from the server).
///
/// Bodies stream in on this task while a blocking worker parses and stores them, in the
/// order they came, so reading the network, parsing and writing the store overlap. The
/// batch ends only when the worker has stored everything it was given.
pub(super) async fn fetch_batch<S: IngestStore>(
    store: &Arc<S>,
    session: &mut ImapSession,
    source: &SourceSettings,
    at: FolderAt<'_>,
    batch: &[(u32, u32, bool)],
    report: &mut CycleReport,
) -> Result<(), CycleError> {
    let FolderAt {
        folder,
        uidvalidity,
        rematch_below,
    } = at;
    let incoming: u64 = batch
        .iter()
        .filter(|(_, _, skip)| !skip)
        .map(|(_, size, _)| u64::from(*size))
        .sum();
    store.ensure_room(incoming).await?;
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
            rematch_below,
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
        store.skip(&source.name, folder, uidvalidity, *last).await?;
    }
    Ok(())
}

/// The folder a batch is fetched from, as selected.
pub(super) struct FolderAt<'a> {
    folder: &'a str,
    uidvalidity: u32,
    /// UIDs below this are re-matched by content ([`crate::store::Checkpoint::rematches`]).
    rematch_below: Option<u32>,
}
