//! The time every decision in `auth` is made against: whether an access token is still
//! handed out, when it is renewed, how long a failed credential backs off, when an ID token
//! or a Retry-After date has passed.
//!
//! In production this is the system clock. Tests use a [`ManualClock`] they move forward by
//! hand, so a test of "five seconds later" takes no five seconds and cannot be flaky.
//!
//! Two readings, because the decisions need both: a monotonic [`Instant`] for in-process
//! waits (backoff), which never jumps with the wall clock, and Unix time for expiries,
//! which providers state in wall-clock terms and which outlive the process in the store.
//! A manual clock moves both by the same amount.
//!
//! An enum rather than a trait object or a type parameter: the system arm is a direct call
//! the compiler inlines (no allocation, no virtual call when a token is handed out), and
//! [`super::TokenService`] keeps one concrete type, so the actors holding it do not become
//! generic over time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The source of "now" for auth decisions. `Clock::default()` is the system clock.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// `Instant::now()` and the system's wall clock.
    #[default]
    System,
    /// Time that moves only when a test says so.
    Manual(ManualClock),
}

impl Clock {
    /// Monotonic now, for in-process deadlines.
    pub fn instant(&self) -> Instant {
        match self {
            Clock::System => Instant::now(),
            Clock::Manual(m) => m.instant(),
        }
    }

    /// Unix time in milliseconds.
    pub fn unix_millis(&self) -> i64 {
        match self {
            Clock::System => chrono::Utc::now().timestamp_millis(),
            Clock::Manual(m) => m.unix_millis(),
        }
    }

    /// Unix time in whole seconds (rounded down, also before 1970).
    pub fn unix_secs(&self) -> i64 {
        self.unix_millis().div_euclid(1000)
    }
}

/// A clock for tests: it starts at a given Unix time and advances only through
/// [`ManualClock::advance`]. Clones share the same time, so a test keeps one and hands a
/// clone to the code under test.
#[derive(Debug, Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug)]
struct ManualInner {
    /// The monotonic reading at creation; `instant()` is this plus the advance.
    start_instant: Instant,
    /// The Unix time (ms) at creation; `unix_millis()` is this plus the advance.
    start_unix_millis: i64,
    /// How far the test has moved time, in nanoseconds (584 years fit in a u64).
    advanced_nanos: AtomicU64,
}

impl ManualClock {
    /// A clock reading `start_unix_millis` until advanced.
    pub fn starting_at(start_unix_millis: i64) -> ManualClock {
        ManualClock {
            inner: Arc::new(ManualInner {
                start_instant: Instant::now(),
                start_unix_millis,
                advanced_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// A clock reading the system's time now, then standing still until advanced. Tests
    /// against real servers start here, so the tokens those servers issue (stamped with
    /// real time) are fresh on this clock too.
    pub fn starting_now() -> ManualClock {
        ManualClock::starting_at(chrono::Utc::now().timestamp_millis())
    }

    /// Moves time forward by `by` for every holder of this clock.
    pub fn advance(&self, by: Duration) {
        let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.inner.advanced_nanos.fetch_add(nanos, Ordering::SeqCst);
    }

    /// The [`Clock`] to hand to the code under test.
    pub fn clock(&self) -> Clock {
        Clock::Manual(self.clone())
    }

    fn advanced(&self) -> Duration {
        Duration::from_nanos(self.inner.advanced_nanos.load(Ordering::SeqCst))
    }

    fn instant(&self) -> Instant {
        self.inner.start_instant + self.advanced()
    }

    fn unix_millis(&self) -> i64 {
        let ms = i64::try_from(self.advanced().as_millis()).unwrap_or(i64::MAX);
        self.inner.start_unix_millis.saturating_add(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_time_moves_only_when_advanced_and_both_readings_agree() {
        let manual = ManualClock::starting_at(1_700_000_000_500);
        let clock = manual.clock();
        let (i0, u0) = (clock.instant(), clock.unix_millis());
        assert_eq!(clock.instant(), i0);
        assert_eq!(u0, 1_700_000_000_500);
        assert_eq!(clock.unix_secs(), 1_700_000_000);

        manual.advance(Duration::from_millis(6_300));
        assert_eq!(clock.instant() - i0, Duration::from_millis(6_300));
        assert_eq!(clock.unix_millis(), 1_700_000_006_800);
        assert_eq!(clock.unix_secs(), 1_700_000_006);
    }

    #[test]
    fn unix_seconds_round_down_before_the_epoch() {
        assert_eq!(ManualClock::starting_at(-1).clock().unix_secs(), -1);
    }

    #[test]
    fn the_system_clock_follows_real_time() {
        let clock = Clock::default();
        let a = clock.instant();
        assert!(clock.instant() >= a);
        let wall = chrono::Utc::now().timestamp_millis();
        assert!((clock.unix_millis() - wall).abs() < 5_000);
    }
}
