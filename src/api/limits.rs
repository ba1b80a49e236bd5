//! Bounds on what one request may cost the node: pages of messages capped in count and in
//! bytes, and test-logins (a real session at the provider) one at a time per source with a
//! pause between two.

use std::collections::HashMap;
use std::sync::Mutex;
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
