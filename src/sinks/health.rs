//! A sink's state as `mailsluice sinks status` and `/api/sinks` show it, derived from what
//! the store knows about the sink (failed events held, what is pending and how old), so it
//! reads the same whether the node runs or not.

use serde::{Deserialize, Serialize};

/// A pending event older than this makes a sink `retrying`: by then a working receiver has
/// taken it (the first attempt, and retries after 1, 2, 4, 8 and 16 s, all fit in it).
pub const RETRYING_AFTER_SECS: u64 = 60;

/// What `sinks status` says about a sink, in this order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkHealth {
    /// It holds failed events: they were given up on after `max_age_secs` and wait for
    /// `mailsluice sinks retry SINK` once the receiver is fixed.
    Failing,
    /// Its oldest pending event has waited longer than [`RETRYING_AFTER_SECS`]: the
    /// receiver refuses or does not answer (the node retries with backoff), the sink works
    /// through a backlog larger than it delivers in a minute, or the node is not running.
    Retrying,
    /// Nothing delivered and nothing pending: no event for it yet.
    Idle,
    /// Delivering; whatever is pending is recent.
    Healthy,
}

impl SinkHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkHealth::Failing => "failing",
            SinkHealth::Retrying => "retrying",
            SinkHealth::Idle => "idle",
            SinkHealth::Healthy => "healthy",
        }
    }

    /// The rule: failed events held -> failing; else the oldest pending event older than
    /// [`RETRYING_AFTER_SECS`] -> retrying; else nothing delivered and nothing pending ->
    /// idle; else healthy.
    pub fn of(failed_now: u64, delivered: u64, backlog: u64, oldest_age_secs: Option<u64>) -> Self {
        if failed_now > 0 {
            SinkHealth::Failing
        } else if oldest_age_secs.is_some_and(|age| age > RETRYING_AFTER_SECS) {
            SinkHealth::Retrying
        } else if delivered == 0 && backlog == 0 {
            SinkHealth::Idle
        } else {
            SinkHealth::Healthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_rule_in_its_order() {
        use SinkHealth::*;
        // Failed events outrank everything.
        assert_eq!(SinkHealth::of(1, 100, 5, Some(3600)), Failing);
        assert_eq!(SinkHealth::of(1, 0, 0, None), Failing);
        // Then an old pending event.
        assert_eq!(
            SinkHealth::of(0, 100, 5, Some(RETRYING_AFTER_SECS + 1)),
            Retrying
        );
        assert_eq!(
            SinkHealth::of(0, 0, 1, Some(RETRYING_AFTER_SECS + 1)),
            Retrying
        );
        // A recent one is delivery in progress.
        assert_eq!(
            SinkHealth::of(0, 100, 5, Some(RETRYING_AFTER_SECS)),
            Healthy
        );
        assert_eq!(SinkHealth::of(0, 0, 3, Some(2)), Healthy);
        assert_eq!(SinkHealth::of(0, 100, 0, None), Healthy);
        assert_eq!(SinkHealth::of(0, 0, 0, None), Idle);
    }
}
