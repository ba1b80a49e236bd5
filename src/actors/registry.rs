//! Live per-source status, shared by the collectors (writers) and the HTTP API (reader).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::telemetry::{self, SourceState};

#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub state: SourceState,
    /// RFC 3339 time of the last successful session.
    pub last_success: Option<String>,
    /// The last error, as the operator should read it (never contains a secret).
    pub last_error: Option<String>,
    /// Messages stored by this process since it started.
    pub stored_since_start: u64,
    /// Messages on the server not yet stored, as of the last session.
    pub backlog: u64,
    pub sessions_ok: u64,
    pub sessions_failed: u64,
    /// RFC 3339 time the source's collector (re)started.
    pub running_since: Option<String>,
}

impl Default for SourceStatus {
    fn default() -> Self {
        SourceStatus {
            state: SourceState::Starting,
            last_success: None,
            last_error: None,
            stored_since_start: 0,
            backlog: 0,
            sessions_ok: 0,
            sessions_failed: 0,
            running_since: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<BTreeMap<String, SourceStatus>>>,
}

impl Registry {
    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, SourceStatus>) -> R) -> R {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn update(&self, source: &str, f: impl FnOnce(&mut SourceStatus)) {
        self.with(|m| f(m.entry(source.to_string()).or_default()));
    }

    /// Sets the state and mirrors it to the `source_state` metric.
    pub fn set_state(&self, source: &str, state: SourceState) {
        self.update(source, |s| s.state = state);
        telemetry::state(source, state);
    }

    /// Forgets a source removed from the configuration.
    pub fn remove(&self, source: &str) {
        self.with(|m| m.remove(source));
        telemetry::forget_source_state(source);
    }

    pub fn snapshot(&self) -> BTreeMap<String, SourceStatus> {
        self.with(|m| m.clone())
    }

    pub fn state(&self, source: &str) -> Option<SourceState> {
        self.with(|m| m.get(source).map(|s| s.state))
    }
}
