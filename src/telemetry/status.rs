//! The one owner of per-source status: state, last success and error, session counts, and
//! the progress of the session running now (messages listed as new, handled, stored). The
//! collectors, the sessions and the token manager write it through the functions below;
//! `/api/sources`, `mailsluice status`, `tokens status`, `run --once`'s progress and the
//! per-source gauges (`source_state`, `backlog_messages`) all read it, so they cannot
//! disagree.
//!
//! Process-wide, like the metrics recorder it feeds: the sessions that report progress run
//! deep inside `ingest`, which holds no handle of the node's.
//!
//! It also tells who listens ([`watch_transitions`]) when a source's state changes in a way
//! worth announcing ([`StateTransition`]): the node writes each as a `source.state_changed`
//! event to the outbox.

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
    /// The last state announced as a change ([`StateTransition`]); `None` until the first.
    pub announced: Option<SourceState>,
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
            announced: None,
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

/// A change of a source's state worth announcing: among the states that say how it is
/// doing (healthy, degraded, throttled, needs_reauth), from the last one announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateTransition {
    pub source: String,
    /// `starting` for a source's first announced state.
    pub from: SourceState,
    pub to: SourceState,
    /// The source's last error, for any state but healthy.
    pub reason: Option<String>,
}

/// The state a change to `to` is announced from, if it is announced, given the last state
/// announced. `starting` and `disabled` are passed over (a collector restarting, a source
/// switched off and on), so a source that comes back as it was says nothing; one that comes
/// back otherwise is announced as a change from the state it had. A source's first state is
/// announced only when it is not healthy (starting well is no news), as from `starting`.
fn announced_from(last: Option<SourceState>, to: SourceState) -> Option<SourceState> {
    match (to, last) {
        (SourceState::Starting | SourceState::Disabled, _) => None,
        (SourceState::Healthy, None) => None,
        (_, None) => Some(SourceState::Starting),
        (to, Some(last)) if last == to => None,
        (_, Some(last)) => Some(last),
    }
}

type Watchers = Vec<tokio::sync::mpsc::UnboundedSender<StateTransition>>;

static WATCHERS: Mutex<Watchers> = Mutex::new(Vec::new());

/// A receiver of every state change announced from now on, in the order they happened.
/// Unbounded: changes come a few per session at most, and the one reader (the node's
/// outbox writer) takes them as they come. Dropping the receiver unsubscribes.
pub fn watch_transitions() -> tokio::sync::mpsc::UnboundedReceiver<StateTransition> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    WATCHERS.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
    rx
}

/// Sets the state, mirrors it to the `source_state` gauge, and tells the watchers when it
/// is a change worth announcing.
pub fn set_state(source: &str, state: SourceState) {
    update(source, |s| {
        s.state = state;
        let Some(from) = announced_from(s.announced, state) else {
            if !matches!(state, SourceState::Starting | SourceState::Disabled) {
                s.announced = Some(state);
            }
            return;
        };
        s.announced = Some(state);
        let change = StateTransition {
            source: source.to_string(),
            from,
            to: state,
            reason: (state != SourceState::Healthy)
                .then(|| s.last_error.clone())
                .flatten(),
        };
        // Sent under the status lock, so watchers get one source's changes in the order
        // its states were set.
        WATCHERS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|w| w.send(change.clone()).is_ok());
    });
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

    /// Only changes of how a source is doing are announced, each once, from the last one
    /// announced; a normal start and the starting/disabled states in between are not.
    #[test]
    fn state_changes_are_announced_once_from_the_last_announced_state() {
        use SourceState::*;
        assert_eq!(announced_from(None, Starting), None);
        assert_eq!(announced_from(None, Healthy), None, "a normal start");
        assert_eq!(announced_from(None, NeedsReauth), Some(Starting));
        assert_eq!(announced_from(None, Disabled), None);
        assert_eq!(announced_from(Some(Healthy), Degraded), Some(Healthy));
        assert_eq!(announced_from(Some(Degraded), Degraded), None, "no repeat");
        assert_eq!(announced_from(Some(Degraded), Throttled), Some(Degraded));
        assert_eq!(announced_from(Some(NeedsReauth), Starting), None);
        assert_eq!(
            announced_from(Some(NeedsReauth), Healthy),
            Some(NeedsReauth)
        );
        assert_eq!(announced_from(Some(Healthy), Disabled), None);
    }

    /// Through `set_state`: a restart in between is passed over; the reason is the last
    /// error; watchers get the changes in order.
    #[test]
    fn watchers_get_each_announced_change_with_its_reason() {
        let name = "status-test-transitions";
        let mut rx = watch_transitions();
        let mut mine = || {
            let mut out = Vec::new();
            while let Ok(t) = rx.try_recv() {
                if t.source == name {
                    out.push((t.from, t.to, t.reason));
                }
            }
            out
        };
        set_state(name, SourceState::Starting);
        set_state(name, SourceState::Healthy);
        update(name, |s| s.last_error = Some("connection refused".into()));
        set_state(name, SourceState::Degraded);
        set_state(name, SourceState::Degraded);
        set_state(name, SourceState::Starting);
        set_state(name, SourceState::Degraded);
        set_state(name, SourceState::Starting);
        set_state(name, SourceState::Healthy);
        assert_eq!(
            mine(),
            vec![
                (
                    SourceState::Healthy,
                    SourceState::Degraded,
                    Some("connection refused".into())
                ),
                (SourceState::Degraded, SourceState::Healthy, None),
            ]
        );
        remove(name);
        // Forgotten with the source: its next first state is news only when not healthy.
        set_state(name, SourceState::NeedsReauth);
        assert_eq!(
            mine(),
            vec![(SourceState::Starting, SourceState::NeedsReauth, None)]
        );
        remove(name);
    }

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
