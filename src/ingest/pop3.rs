//! One POP3 session: sign in, list by UIDL what is not stored yet, retrieve it (pipelined
//! when the server allows), store it, and delete what is durably stored when asked to.

use std::sync::Arc;

use crate::config::{AfterIngest, SourceSettings};
use crate::net::Connector;
use crate::net::pop3::Pop3Session;
use crate::store::{IngestStore, Location};
use crate::telemetry;

use super::pipeline::{Destination, Fetched, budget_for, parse_and_store, take_budget};
use super::{Credential, CycleError, CycleReport, FETCH_BATCH, ReopenAt, login};

/// How many POP3 `RETR`s are sent ahead of the reply being read, when the server announces
/// `PIPELINING` (RFC 2449).
pub(super) const POP3_PIPELINE: usize = 32;

pub(super) async fn run_pop3<S: IngestStore>(
    store: &Arc<S>,
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
    let stored = store.stored_uidls(&source.name).await?;
    let todo: Vec<(u32, String)> = uidl
        .iter()
        .filter(|(_, u)| !stored.contains(u))
        .cloned()
        .collect();
    report.backlog = todo.len() as u64;
    telemetry::listed(&source.name, report.backlog);
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
        rematch_below: None,
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
                    store.ensure_room(size).await?;
                    next.push((n, uid, size));
                }
                if !next.is_empty() {
                    let messages: Vec<(u32, u64)> =
                        next.iter().map(|(n, _, size)| (*n, *size)).collect();
                    session.send_retrs(&messages, limit).await?;
                    sent.extend(next);
                }
            }
            let Some((_, uid, size)) = sent.pop_front() else {
                break;
            };
            let permit = take_budget(size).await?;
            let body = session.retr_reply().await?;
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
        let stored = store.stored_uidls(&source.name).await?;
        for (n, uid) in &uidl {
            if !stored.contains(uid) {
                continue;
            }
            if source.delete_after_days > 0 {
                let old_enough = store
                    .pop3_stored_at(&source.name, uid)
                    .await?
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
