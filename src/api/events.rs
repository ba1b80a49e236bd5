//! `GET /api/events?after=SEQ&limit=N&wait_secs=S`: the outbox for consumers that pull
//! instead of receiving webhooks or NATS messages.
//!
//! A consumer keeps one number, the last `seq` it has handled, and asks for what comes
//! after it. The answer is `{"events": [...], "next_after": SEQ, "oldest_retained": SEQ,
//! "last_seq": SEQ}`; the next request passes `after=next_after`. Each event is the
//! outbox record (type, id, seq, timestamp, source; a state change's `state`) with, for a
//! stored message, its store id and where to fetch it: `message_url` (the parsed fields)
//! and `raw_url` (the bytes), both paths on this node. Bodies are never inlined: a page is
//! small and the mail is fetched only by those who want it.
//!
//! - **Only durable events.** The outbox hands out an event once a flush has covered it
//!   (see [`Store::event_watch`]), so nothing a consumer saw can be taken back by a crash.
//! - **Long poll.** With `wait_secs` (at most [`limits::EVENTS_WAIT_MAX`]) a request that
//!   finds nothing waits on the outbox and answers as soon as an event is durable, or with
//!   an empty page when the time is up or the node shuts down. At most
//!   [`limits::LONG_POLLS_MAX`] wait at once; one more is answered 429 with `Retry-After`.
//! - **Gaps are an error, not a silence.** Events leave the outbox once every sink has them
//!   and they are older than `node.events_retention_secs`. A consumer whose `after` is
//!   below the oldest event kept (minus one) has missed events it can never get: it is
//!   answered 410 Gone naming `oldest_retained` and where to resume, and it reconciles what
//!   it missed from `/api/messages` (in store order, like the events). A consumer whose
//!   `after` is beyond the last event this store ever gave holds a cursor from another
//!   store (a node rebuilt, a restore): 409 Conflict naming `last_seq`.

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::{ApiState, limits};
use crate::store::{Event, StateChange, Store, StoreError};

/// One event as `/api/events` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// `message.stored` or `source.state_changed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `evt_` + 32 hex digits: the id webhooks and NATS carry for the same event.
    pub id: String,
    pub seq: u64,
    /// When the event was committed (RFC 3339, UTC).
    pub timestamp: String,
    pub source: String,
    /// `message.stored`: the message's store id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<u64>,
    /// `message.stored`: where its parsed fields are (`/api/messages/ID`, on this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_url: Option<String>,
    /// `message.stored`: where its bytes are (`/api/messages/ID/raw`, on this node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_url: Option<String>,
    /// `source.state_changed`: from, to and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateChange>,
}

impl From<Event> for EventView {
    fn from(e: Event) -> EventView {
        EventView {
            kind: e.kind.as_str().to_string(),
            message_url: e.message.map(|id| format!("/api/messages/{id}")),
            raw_url: e.message.map(|id| format!("/api/messages/{id}/raw")),
            id: e.id,
            seq: e.seq,
            timestamp: e.timestamp,
            source: e.source,
            message: e.message,
            state: e.state,
        }
    }
}

/// The answer of `/api/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsPage {
    /// In seq order, without gaps, starting right after the request's `after`.
    pub events: Vec<EventView>,
    /// The `after` of the next request: the last event's seq, or the request's `after`
    /// when there was none.
    pub next_after: u64,
    /// The oldest event still kept; `null` when the outbox holds none.
    pub oldest_retained: Option<u64>,
    /// The last event given (durable); 0 before the first.
    pub last_seq: u64,
}

#[derive(Deserialize)]
pub(super) struct EventsQuery {
    after: Option<u64>,
    limit: Option<usize>,
    wait_secs: Option<u64>,
}

/// What one read of the outbox found for a cursor.
#[derive(Debug)]
enum Read {
    /// The events after the cursor (none: the caller is up to date).
    Page(EventsPage),
    /// Events right after the cursor are no longer kept; the first one kept is this.
    Gone { oldest_retained: u64 },
    /// The cursor is past the last event this store ever gave.
    Ahead { last_seq: u64 },
}

fn read(store: &Store, after: u64, limit: usize) -> Result<Read, StoreError> {
    let events = store.events_after(after, limit)?;
    // Read after the page: the page is within it, whatever was flushed in between.
    let last_seq = store.last_event_seq();
    let oldest_retained = store.first_event_seq()?;
    match events.first() {
        // Seqs are given without gaps and pruning takes the oldest first, so a page that
        // does not start right after the cursor has lost the ones in between.
        Some(first) if first.seq != after.saturating_add(1) => Ok(Read::Gone {
            oldest_retained: first.seq,
        }),
        Some(_) => Ok(Read::Page(EventsPage {
            next_after: events.last().map_or(after, |e| e.seq),
            events: events.into_iter().map(EventView::from).collect(),
            oldest_retained,
            last_seq,
        })),
        // Nothing kept after the cursor although events were given after it: pruned, all
        // of them (or pruned while the page was read).
        None if last_seq > after => Ok(Read::Gone {
            oldest_retained: match oldest_retained {
                Some(first) if first > after => first,
                _ => last_seq.saturating_add(1),
            },
        }),
        None if after > last_seq => Ok(Read::Ahead { last_seq }),
        None => Ok(Read::Page(EventsPage {
            events: Vec::new(),
            next_after: after,
            oldest_retained,
            last_seq,
        })),
    }
}

/// [`read`] off the async workers (sled reads may touch the disk); `Err` is the 500.
async fn read_blocking(
    store: &std::sync::Arc<Store>,
    after: u64,
    limit: usize,
) -> Result<Read, String> {
    let store = store.clone();
    match web::block(move || read(&store, after, limit)).await {
        Ok(Ok(read)) => Ok(read),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn answer(read: Read, after: u64) -> HttpResponse {
    match read {
        Read::Page(page) => HttpResponse::Ok().json(page),
        Read::Gone { oldest_retained } => {
            let resume = oldest_retained.saturating_sub(1);
            HttpResponse::Gone().json(serde_json::json!({
                "error": format!(
                    "events {} to {resume} are no longer kept: an event is kept until every \
                     sink has it and it is older than node.events_retention_secs. Resume with \
                     after={resume} and take what was missed from /api/messages",
                    after.saturating_add(1)
                ),
                "oldest_retained": oldest_retained,
                "resume_after": resume,
            }))
        }
        Read::Ahead { last_seq } => HttpResponse::Conflict().json(serde_json::json!({
            "error": format!(
                "after={after} is beyond the last event of this node's store ({last_seq}): \
                 the cursor comes from another store; start again from after=0 (or the \
                 oldest retained event)"
            ),
            "last_seq": last_seq,
        })),
    }
}

/// `GET /api/events`: see the module documentation.
pub(super) async fn events(state: web::Data<ApiState>, q: web::Query<EventsQuery>) -> HttpResponse {
    let after = q.after.unwrap_or(0);
    let (limit, wait) = limits::events_bounds(q.limit, q.wait_secs);
    // Watching from before the first read: an event made durable between the read and the
    // wait still wakes it.
    let mut watch = state.store.event_watch();
    watch.borrow_and_update();
    let first = match read_blocking(&state.store, after, limit).await {
        Ok(read) => read,
        Err(e) => return HttpResponse::InternalServerError().body(e),
    };
    let waits = matches!(&first, Read::Page(p) if p.events.is_empty()) && !wait.is_zero();
    if !waits {
        return answer(first, after);
    }
    let polls = &state.long_polls;
    let Some(_place) = polls.begin() else {
        return HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", "1"))
            .json(serde_json::json!({
                "error": format!(
                    "{} requests wait for events already; retry, or poll without wait_secs",
                    limits::LONG_POLLS_MAX
                ),
            }));
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = first;
    loop {
        let woken = {
            let _waiting = polls.waiting_guard();
            tokio::select! {
                changed = watch.changed() => changed.is_ok(),
                () = tokio::time::sleep_until(deadline) => false,
                () = polls.closed() => false,
            }
        };
        if !woken {
            return answer(last, after);
        }
        watch.borrow_and_update();
        last = match read_blocking(&state.store, after, limit).await {
            Ok(read) => read,
            Err(e) => return HttpResponse::InternalServerError().body(e),
        };
        if !matches!(&last, Read::Page(p) if p.events.is_empty()) {
            return answer(last, after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_event_names_where_its_message_is() {
        let event = Event {
            seq: 4,
            id: "evt_00".into(),
            kind: crate::store::EventKind::MessageStored,
            source: "support".into(),
            timestamp: "2025-01-01T00:00:00.000Z".into(),
            message: Some(17),
            state: None,
        };
        let json = serde_json::to_value(EventView::from(event)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "message.stored", "id": "evt_00", "seq": 4,
                "timestamp": "2025-01-01T00:00:00.000Z", "source": "support",
                "message": 17, "message_url": "/api/messages/17",
                "raw_url": "/api/messages/17/raw",
            })
        );
    }
}
