//! The one owner of per-source status: state, last success and error, session counts, and
//! the progress of the session running now (messages listed as new, handled, stored). The
//! collectors, the sessions and the token manager write it through the functions below;
//! `/api/sources`, `mailsluice status`, `tokens status`, `run --once`'s progress and the
//! per-source gauges (`source_state`, `backlog_messages`) all read it, so they cannot
//! disagree.
//!
//! Process-wide, like the metrics recorder it feeds: the sessions that report progress run
//! deep inside `ingest`, which holds no handle of the node's.

use std::collections::BTreeMap;
use std::sync::Mutex;

use metrics::gauge;

use super::SourceState;

/// Everything known about one source now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceStatus {
    pub state: SourceState,
    /// RFC 3339 time of the last successful session.
    pub last_success: Option<String>,
    /// The last error, as the operator should read it (never contains a secret).
    pub last_error: Option<String>,
    /// Messages stored by this process since it started.
    pub stored_since_start: u64,
    /// Bytes stored by this process since it started.
    pub bytes_since_start: u64,
    pub sessions_ok: u64,
    pub sessions_failed: u64,
    /// RFC 3339 time the source's collector (re)started.
    pub running_since: Option<String>,
    /// The session running now, or the last one.
    pub session: SessionProgress,
}

/// What the current (or last) session of a source found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionProgress {
    /// Messages listed as new on the server (grows as folders are listed).
    pub listed: u64,
    /// Of those, the ones dealt with: stored, found stored already, or skipped for size.
    pub handled: u64,
    /// Of those, the ones stored, and their bytes.
    pub stored: u64,
    pub bytes: u64,
}

impl Default for SourceStatus {
    fn default() -> Self {
        SourceStatus {
            state: SourceState::Starting,
            last_success: None,
            last_error: None,
            stored_since_start: 0,
            bytes_since_start: 0,
            sessions_ok: 0,
            sessions_failed: 0,
            running_since: None,
            session: SessionProgress::default(),
        }
    }
}

impl SourceStatus {
    /// Messages on the server not yet stored: listed by the current (or last) session and
    /// not yet dealt with.
    pub fn backlog(&self) -> u64 {
        self.session.listed.saturating_sub(self.session.handled)
    }
}

static STATUS: Mutex<BTreeMap<String, SourceStatus>> = Mutex::new(BTreeMap::new());

fn with<R>(f: impl FnOnce(&mut BTreeMap<String, SourceStatus>) -> R) -> R {
    f(&mut STATUS.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Changes `source`'s status (creating it when new).
pub fn update(source: &str, f: impl FnOnce(&mut SourceStatus)) {
    with(|m| match m.get_mut(source) {
        Some(s) => f(s),
        None => f(m.entry(source.to_string()).or_default()),
    });
}

/// Sets the state and mirrors it to the `source_state` gauge.
pub fn set_state(source: &str, state: SourceState) {
    update(source, |s| s.state = state);
    super::state(source, state);
}

/// A source removed from the configuration: forgotten, and no state of it current.
pub fn remove(source: &str) {
    with(|m| m.remove(source));
    super::forget_source_state(source);
}

/// Every source's status now.
pub fn snapshot() -> BTreeMap<String, SourceStatus> {
    with(|m| m.clone())
}

/// One source's status now.
pub fn get(source: &str) -> Option<SourceStatus> {
    with(|m| m.get(source).cloned())
}

/// A session of `source` begins: its progress starts again.
pub fn session_started(source: &str) {
    update(source, |s| s.session = SessionProgress::default());
}

/// A session ended having dealt with everything it listed (messages expunged before they
/// could be fetched are gone, not waiting).
pub fn session_caught_up(source: &str) {
    update(source, |s| s.session.listed = s.session.handled);
}

/// `messages` more were listed as new.
pub(crate) fn listed(source: &str, messages: u64) {
    update(source, |s| s.session.listed += messages);
}

/// One listed message was dealt with without being stored now (stored already, or skipped).
pub(crate) fn handled(source: &str) {
    update(source, |s| s.session.handled += 1);
}

/// One listed message was stored.
pub(crate) fn stored(source: &str, bytes: u64) {
    update(source, |s| {
        s.session.handled += 1;
        s.session.stored += 1;
        s.session.bytes += bytes;
        s.stored_since_start += 1;
        s.bytes_since_start += bytes;
    });
}

/// Sets the gauges that mirror the status (`backlog_messages`) to what it holds now:
/// called before every scrape, so the metric and the API read the same value.
pub fn publish_gauges() {
    for (source, s) in snapshot() {
        gauge!("mailsluice_backlog_messages", "source" => source).set(s.backlog() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_is_what_was_listed_and_not_yet_dealt_with() {
        let name = "status-test-backlog";
        session_started(name);
        listed(name, 10);
        stored(name, 100);
        stored(name, 50);
        handled(name);
        let s = get(name).unwrap();
        assert_eq!(s.backlog(), 7);
        assert_eq!((s.session.stored, s.session.bytes), (2, 150));
        assert_eq!((s.stored_since_start, s.bytes_since_start), (2, 150));
        // A later folder lists more in the same session.
        listed(name, 5);
        assert_eq!(get(name).unwrap().backlog(), 12);
        session_caught_up(name);
        assert_eq!(get(name).unwrap().backlog(), 0);
        // A new session starts its progress again; totals stay.
        session_started(name);
        listed(name, 3);
        let s = get(name).unwrap();
        assert_eq!((s.backlog(), s.stored_since_start), (3, 2));
        remove(name);
        assert!(get(name).is_none());
    }
}
