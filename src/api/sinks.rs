//! `GET /api/sinks` and what `mailsluice sinks status` prints: one row per configured sink,
//! read from the store alone, so the answer is the same whether the node runs (through the
//! API) or not (the CLI reads the store itself).
//!
//! A sink's numbers come from its record in the store (see [`crate::store::SinkState`]):
//! - `delivered`, `failed` (events held as failed now; `failed_total` counts every event
//!   ever marked failed), `skipped` (not wanted by the sink).
//! - `backlog`: events after the sink's watermark not yet done (delivered, skipped or
//!   failed): the last seq, minus the watermark (or the oldest event kept, when the outbox
//!   was pruned past it), minus those done above it. It counts events the sink will skip as
//!   unwanted too: a running node passes over those at once.
//! - `oldest_pending`: the first of them (right after the watermark) and its age.
//!
//! The state is derived from those ([`SinkHealth::of`]: failing, retrying, idle, healthy).

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::ApiState;
use crate::config::Settings;
use crate::sinks::health::SinkHealth;
use crate::store::{Store, StoreError};

/// Failed events listed per sink at most (`failed` says how many there are).
pub const FAILURES_LISTED: usize = 100;

/// The first event a sink has not done yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingView {
    pub seq: u64,
    pub id: String,
    /// When it was committed (RFC 3339).
    pub timestamp: String,
    /// Seconds since then.
    pub age_secs: u64,
}

/// An event a sink gave up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureView {
    pub seq: u64,
    /// The event id; `null` if the event is no longer in the outbox (it is kept while
    /// failed, so only a damaged store lacks it).
    pub id: Option<String>,
    pub attempts: u32,
    /// The receiver's answer or the transport's error on the last attempt.
    pub last_error: String,
    /// When it was marked failed (RFC 3339).
    pub failed_at: String,
}

/// One sink as `/api/sinks` and `mailsluice sinks status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkView {
    pub name: String,
    /// `webhook` or `nats`.
    pub kind: String,
    /// `healthy`, `retrying`, `failing` or `idle` (see [`SinkHealth::of`]).
    pub state: SinkHealth,
    pub delivered: u64,
    /// Events held as failed now.
    pub failed: u64,
    /// Events marked failed ever (a retried one that failed again counts twice).
    pub failed_total: u64,
    pub skipped: u64,
    /// Events not yet done (see the module documentation).
    pub backlog: u64,
    /// Every event up to this seq is done.
    pub delivered_through: u64,
    pub oldest_pending: Option<PendingView>,
    /// The first [`FAILURES_LISTED`] failed events, by seq.
    pub failures: Vec<FailureView>,
}

/// Seconds from an RFC 3339 time to `now` (0 for a time in the future, `None` for one
/// that does not parse).
fn age_secs(timestamp: &str, now: chrono::DateTime<chrono::Utc>) -> Option<u64> {
    let at = chrono::DateTime::parse_from_rfc3339(timestamp).ok()?;
    Some(u64::try_from((now - at.to_utc()).num_seconds()).unwrap_or(0))
}

/// The view of every configured sink, as of `now`.
pub fn sink_views(
    settings: &Settings,
    store: &Store,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<SinkView>, StoreError> {
    let last = store.last_event_seq();
    // Events before the oldest one kept were pruned (before this sink was configured, or
    // while it was not): they are not its backlog.
    let pruned_through = match store.first_event_seq()? {
        Some(first) => first.saturating_sub(1),
        None => last,
    };
    settings
        .sinks
        .values()
        .map(|sink| {
            let st = store.sink_state(&sink.name)?;
            let from = st.delivered_through.max(pruned_through);
            let backlog = last.saturating_sub(from).saturating_sub(st.done_above);
            let oldest_pending = if backlog > 0 {
                store.event(from + 1)?.map(|e| PendingView {
                    age_secs: age_secs(&e.timestamp, now).unwrap_or(0),
                    seq: e.seq,
                    id: e.id,
                    timestamp: e.timestamp,
                })
            } else {
                None
            };
            let failures = store
                .sink_failed_first(&sink.name, FAILURES_LISTED)?
                .into_iter()
                .map(|(seq, f)| {
                    Ok(FailureView {
                        seq,
                        id: store.event(seq)?.map(|e| e.id),
                        attempts: f.attempts,
                        last_error: f.last_error,
                        failed_at: f.failed_at,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(SinkView {
                name: sink.name.clone(),
                kind: sink.kind().as_str().to_string(),
                state: SinkHealth::of(
                    st.failed_now,
                    st.delivered,
                    backlog,
                    oldest_pending.as_ref().map(|p| p.age_secs),
                ),
                delivered: st.delivered,
                failed: st.failed_now,
                failed_total: st.failed,
                skipped: st.skipped,
                backlog,
                delivered_through: st.delivered_through,
                oldest_pending,
                failures,
            })
        })
        .collect()
}

/// `GET /api/sinks`.
pub(super) async fn sinks(state: web::Data<ApiState>) -> HttpResponse {
    let settings = state.live.settings();
    let store = state.store.clone();
    match web::block(move || sink_views(&settings, &store, chrono::Utc::now())).await {
        Ok(Ok(views)) => HttpResponse::Ok().json(views),
        Ok(Err(e)) => HttpResponse::InternalServerError().body(e.to_string()),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_count_whole_seconds_and_never_go_negative() {
        let now = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:01:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(age_secs("2025-01-01T00:00:00.500Z", now), Some(59));
        assert_eq!(age_secs("2025-01-01T00:02:00Z", now), Some(0));
        assert_eq!(age_secs("yesterday", now), None);
    }
}
