//! Bounds on what one request may cost the node: pages of messages capped in count and in
//! bytes, pages of events capped in count, long polls on the outbox capped in length and in
//! number, and test-logins (a real session at the provider) one at a time per source with a
//! pause between two.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::store::{MessageMeta, StoreError};

/// Messages a page of `/api/messages` holds without `limit`, and at most.
pub const PAGE_DEFAULT: usize = 1000;
pub const PAGE_MAX: usize = 10_000;
/// A page stops before it passes this many bytes of JSON (the first message always goes
/// in, so a page is never empty while messages remain); the caller pages on with
/// `after=` the last id it got.
pub const PAGE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// The JSON array of up to `limit` messages from `items`, stopping before `max_bytes`.
pub fn page(
    items: impl Iterator<Item = Result<MessageMeta, StoreError>>,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(4096);
    out.push(b'[');
    let mut item = Vec::new();
    for (count, meta) in items.take(limit).enumerate() {
        item.clear();
        serde_json::to_writer(&mut item, &meta?)
            .map_err(|e| StoreError::Corrupt(format!("message metadata to JSON: {e}")))?;
        if count > 0 && out.len() + 1 + item.len() + 1 > max_bytes {
            break;
        }
        if count > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&item);
    }
    out.push(b']');
    Ok(out)
}

/// Events a page of `/api/events` holds without `limit`, and at most. An event is a few
/// hundred bytes (a state change's reason is capped at 1 KiB), so a full page stays near
/// a megabyte at worst.
pub const EVENTS_PAGE_DEFAULT: usize = 100;
pub const EVENTS_PAGE_MAX: usize = 1000;

/// Longest `wait_secs` of `/api/events`: a consumer waiting longer asks again, which also
/// tells it the node is still there.
pub const EVENTS_WAIT_MAX: Duration = Duration::from_secs(60);

/// Requests of `/api/events` waiting for events at once; one more is turned away (429).
/// A waiting request holds no worker thread, but it holds a connection and a watch on the
/// store, and a loop of them must not grow without end.
pub const LONG_POLLS_MAX: usize = 64;

/// `limit` and `wait_secs` of an `/api/events` request, within their caps: no `limit` is
/// [`EVENTS_PAGE_DEFAULT`], `limit=0` is one (a page that can never hold an event would
/// never move the caller on); no `wait_secs` answers at once.
pub fn events_bounds(limit: Option<usize>, wait_secs: Option<u64>) -> (usize, Duration) {
    let limit = limit
        .unwrap_or(EVENTS_PAGE_DEFAULT)
        .clamp(1, EVENTS_PAGE_MAX);
    let wait = Duration::from_secs(wait_secs.unwrap_or(0)).min(EVENTS_WAIT_MAX);
    (limit, wait)
}

/// The long polls of `/api/events`: how many wait (at most `max`), and the signal that ends
/// them all when the node shuts down (the HTTP server waits for open requests before it
/// stops, and a minute-long poll must not hold the shutdown up).
#[derive(Debug)]
pub struct LongPolls {
    max: usize,
    /// Requests holding a [`LongPoll`].
    held: AtomicUsize,
    /// Of those, how many are waiting on the store right now (not reading it).
    waiting: AtomicUsize,
    closing: tokio::sync::watch::Sender<bool>,
}

impl Default for LongPolls {
    fn default() -> Self {
        LongPolls::new(LONG_POLLS_MAX)
    }
}

/// A long poll's place among the [`LongPolls`]; dropping it gives the place back.
#[derive(Debug)]
pub struct LongPoll<'a> {
    polls: &'a LongPolls,
}

impl Drop for LongPoll<'_> {
    fn drop(&mut self) {
        self.polls.held.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Marks a long poll as waiting on the store while it lives.
#[derive(Debug)]
pub struct Waiting<'a> {
    polls: &'a LongPolls,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.polls.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LongPolls {
    pub fn new(max: usize) -> LongPolls {
        LongPolls {
            max,
            held: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }

    /// A place for one more long poll, or `None` when `max` are held already.
    pub fn begin(&self) -> Option<LongPoll<'_>> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| LongPoll { polls: self })
    }

    /// Counts the caller as waiting on the store until the guard drops.
    pub fn waiting_guard(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting { polls: self }
    }

    /// Long polls waiting on the store right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Ends every long poll (each answers with what it has) and every one that starts
    /// after: the node is shutting down.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once [`LongPolls::close`] was called (at once if it was already).
    pub async fn closed(&self) {
        let mut closing = self.closing.subscribe();
        // The sender lives as long as `self`, so this only returns once closing.
        let _ = closing.wait_for(|closing| *closing).await;
    }
}

/// Shortest time between two test-logins of one source.
pub const TEST_LOGIN_INTERVAL: Duration = Duration::from_secs(10);

/// Which sources have a test-login running, and when each source's last one started.
#[derive(Debug, Default)]
pub struct TestLogins {
    started: Mutex<HashMap<String, (Instant, bool)>>,
}

/// A running test-login; dropping it marks the source's login finished.
#[derive(Debug)]
pub struct Turn<'a> {
    logins: &'a TestLogins,
    source: String,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut started = self
            .logins
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = started.get_mut(&self.source) {
            entry.1 = false;
        }
    }
}

impl TestLogins {
    /// A turn for `source`, or how long to wait: while one runs, and until
    /// [`TEST_LOGIN_INTERVAL`] after the last one started.
    pub fn begin(&self, source: &str, now: Instant) -> Result<Turn<'_>, Duration> {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, running)) = started.get(source) {
            let next = *at + TEST_LOGIN_INTERVAL;
            if *running || now < next {
                return Err(next
                    .saturating_duration_since(now)
                    .max(Duration::from_secs(1)));
            }
        }
        started.insert(source.to_owned(), (now, true));
        Ok(Turn {
            logins: self,
            source: source.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(id: u64, uidl_len: usize) -> Result<MessageMeta, StoreError> {
        Ok(MessageMeta {
            // Ids of 0 are left out of the JSON; every message here has one.
            id: id + 1,
            source: "s".into(),
            // Same width for every id below 10, so every item has the same size.
            location: crate::store::Location::Pop3 {
                uidl: "x".repeat(uidl_len),
            },
            sha256: String::new(),
            size: 0,
            internal_date: None,
            stored_at: String::new(),
            parsed: None,
            parse_error: None,
        })
    }

    #[test]
    fn a_page_stops_at_its_count_and_before_its_byte_cap() {
        let all = |n: u64| (0..n).map(|i| meta(i, 100));
        let v: Vec<serde_json::Value> =
            serde_json::from_slice(&page(all(50), 10, usize::MAX).unwrap()).unwrap();
        assert_eq!(v.len(), 10);
        let one = serde_json::to_vec(&meta(0, 100).unwrap()).unwrap().len();
        // Room for exactly three (brackets and commas included), not four.
        let cap = 2 + 3 * one + 2;
        let body = page(all(50), 100, cap).unwrap();
        assert!(body.len() <= cap);
        let v: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[2]["id"], 3);
        // A message larger than the cap still goes out alone: paging always moves on.
        let v: Vec<serde_json::Value> =
            serde_json::from_slice(&page(all(5), 100, 10).unwrap()).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(page(all(0), 100, 10).unwrap(), b"[]");
    }

    #[test]
    fn event_pages_and_waits_stay_within_their_caps() {
        assert_eq!(
            events_bounds(None, None),
            (EVENTS_PAGE_DEFAULT, Duration::ZERO)
        );
        assert_eq!(
            events_bounds(Some(usize::MAX), Some(u64::MAX)),
            (EVENTS_PAGE_MAX, EVENTS_WAIT_MAX)
        );
        assert_eq!(events_bounds(Some(0), Some(0)), (1, Duration::ZERO));
        assert_eq!(events_bounds(Some(7), Some(5)), (7, Duration::from_secs(5)));
    }

    #[test]
    fn long_polls_are_counted_and_given_back() {
        let polls = LongPolls::new(2);
        let a = polls.begin().unwrap();
        let b = polls.begin().unwrap();
        assert!(polls.begin().is_none(), "a third beyond the cap");
        drop(a);
        let c = polls.begin().unwrap();
        assert!(polls.begin().is_none());
        let w = polls.waiting_guard();
        assert_eq!(polls.waiting(), 1);
        drop(w);
        assert_eq!(polls.waiting(), 0);
        drop((b, c));
        assert!(polls.begin().is_some());
    }

    #[tokio::test]
    async fn closing_ends_the_waits_now_and_later() {
        let polls = LongPolls::default();
        // The first waits before the close (join! polls it first), the second after it.
        let close = async {
            tokio::task::yield_now().await;
            polls.close();
        };
        tokio::time::timeout(Duration::from_secs(5), async {
            tokio::join!(polls.closed(), close)
        })
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(5), polls.closed())
            .await
            .unwrap();
    }

    #[test]
    fn test_logins_run_one_at_a_time_per_source_with_a_pause() {
        let logins = TestLogins::default();
        let t0 = Instant::now();
        let turn = logins.begin("a", t0).unwrap();
        assert!(
            logins.begin("a", t0).is_err(),
            "a second one while one runs"
        );
        assert!(
            logins.begin("b", t0).is_ok(),
            "another source is not held back"
        );
        // Still running past the interval: still refused.
        assert!(logins.begin("a", t0 + TEST_LOGIN_INTERVAL * 2).is_err());
        drop(turn);
        let wait = logins.begin("a", t0 + Duration::from_secs(4)).unwrap_err();
        assert_eq!(wait, TEST_LOGIN_INTERVAL - Duration::from_secs(4));
        assert!(logins.begin("a", t0 + TEST_LOGIN_INTERVAL).is_ok());
    }
}
