//! Per-source progress of the sessions running now (messages listed as new, messages and
//! bytes stored), for `run --once`'s progress bars and log lines. Updated where the
//! metrics are; read by whoever draws progress.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// One source's progress in its current session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Messages found new on the server so far (grows as folders are listed).
    pub backlog: u64,
    /// Messages stored in this session.
    pub stored: u64,
    pub bytes: u64,
    /// Messages and bytes stored since the process started.
    pub total_stored: u64,
    pub total_bytes: u64,
}

static PROGRESS: Mutex<BTreeMap<String, Progress>> = Mutex::new(BTreeMap::new());

fn with<R>(f: impl FnOnce(&mut BTreeMap<String, Progress>) -> R) -> R {
    f(&mut PROGRESS.lock().unwrap_or_else(|p| p.into_inner()))
}

/// A session of `source` begins: its counts start again.
pub fn session_started(source: &str) {
    with(|m| {
        let p = m.entry(source.to_string()).or_default();
        p.backlog = 0;
        p.stored = 0;
        p.bytes = 0;
    });
}

pub(crate) fn backlog(source: &str, messages: u64) {
    with(|m| m.entry(source.to_string()).or_default().backlog = messages);
}

pub(crate) fn stored(source: &str, bytes: u64) {
    with(|m| {
        let p = m.entry(source.to_string()).or_default();
        p.stored += 1;
        p.bytes += bytes;
        p.total_stored += 1;
        p.total_bytes += bytes;
    });
}

/// Every source's progress now.
pub fn snapshot() -> BTreeMap<String, Progress> {
    with(|m| m.clone())
}
