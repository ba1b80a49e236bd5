//! When a sink tries an event again after a failed attempt, and when it stops trying.
//!
//! The rules (README, "Sinks"):
//! - The n-th retry waits 1 s x 2^(n-1), capped at `max_backoff_secs`, then spread by
//!   +-20 % jitter so that sinks and sources failing together do not retry in step. The
//!   longest wait is therefore 1.2 x `max_backoff_secs`; a NATS sink's duplicate window is
//!   validated to be at least twice `max_backoff_secs`, which covers it.
//! - A `Retry-After` from the receiver (seconds, or an HTTP date) lengthens the wait to what
//!   it asks, but never shortens it: the schedule is the floor that keeps a receiver from
//!   pulling the sink into a tight loop. It is honoured up to the event's `max_age_secs`
//!   deadline, not capped at `max_backoff_secs`: a receiver that says "come back in an hour"
//!   means it, and retrying sooner only adds load while it recovers.
//! - An event's age counts from its commit. After a failed attempt, an event at or past
//!   `max_age_secs` is marked failed (visible, retryable by hand); one short of it gets a
//!   last retry no later than the deadline. So every event gets at least one attempt, and a
//!   backlog left by a long outage drains (one attempt each) instead of holding a source's
//!   queue for another `max_age_secs` per event.
//!
//! Pure: the clock and the jitter come from the caller.

use std::time::{Duration, SystemTime};

/// The first retry's wait, before jitter.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The spread of the jitter: the wait is scaled by a factor in `1 - JITTER ..= 1 + JITTER`.
pub const JITTER: f64 = 0.2;
/// Longest `Retry-After` text looked at; an HTTP date is 29 characters.
const MAX_RETRY_AFTER_LEN: usize = 64;

/// Where the jitter comes from: a number in `0.0..1.0`, uniformly spread. The engine uses
/// [`RandomJitter`]; tests pin the value.
pub trait Jitter {
    fn unit(&mut self) -> f64;
}

/// Jitter from the thread's random number generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct RandomJitter;

impl Jitter for RandomJitter {
    fn unit(&mut self) -> f64 {
        rand::random::<f64>()
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Try again after this long.
    RetryAfter(Duration),
    /// Stop: mark the event failed (kept, visible, retried only when an operator asks).
    GiveUp,
}

/// One sink's retry schedule (`max_backoff_secs`, `max_age_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Longest wait the doubling reaches, before jitter.
    pub max_backoff: Duration,
    /// Age (since commit) after which a failed event is not retried.
    pub max_age: Duration,
}

impl Schedule {
    /// The wait before retry number `failures` (the count of failed attempts so far, from 1),
    /// without `Retry-After` or the deadline.
    pub fn delay(&self, failures: u32, jitter: &mut impl Jitter) -> Duration {
        let doublings = failures.saturating_sub(1);
        // 2^doublings seconds, saturating long before it could overflow: any doubling past
        // 2^32 s is beyond every max_backoff.
        let base = FIRST_DELAY
            .checked_mul(1u32.checked_shl(doublings.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(Duration::MAX)
            .min(self.max_backoff);
        let unit = jitter.unit().clamp(0.0, 1.0);
        base.mul_f64(1.0 - JITTER + 2.0 * JITTER * unit)
    }

    /// After failed attempt number `failures` (from 1) of an event `age` old (since its
    /// commit), with the receiver's `Retry-After` if it sent one.
    pub fn after_failure(
        &self,
        failures: u32,
        age: Duration,
        retry_after: Option<Duration>,
        jitter: &mut impl Jitter,
    ) -> Next {
        let Some(left) = self.max_age.checked_sub(age).filter(|d| !d.is_zero()) else {
            return Next::GiveUp;
        };
        let mut wait = self.delay(failures, jitter);
        if let Some(asked) = retry_after {
            wait = wait.max(asked);
        }
        Next::RetryAfter(wait.min(left))
    }
}

/// A `Retry-After` value (RFC 9110 10.2.3): delay-seconds, or an HTTP date (any of the
/// three forms) turned into the time left from `now` (zero when it is past). `None` when it
/// is neither, so the schedule alone decides.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() || value.len() > MAX_RETRY_AFTER_LEN {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits to fit is still "a very long time": the deadline caps it.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same jitter value every time.
    struct Fixed(f64);

    impl Jitter for Fixed {
        fn unit(&mut self) -> f64 {
            self.0
        }
    }

    fn schedule(max_backoff: u64, max_age: u64) -> Schedule {
        Schedule {
            max_backoff: Duration::from_secs(max_backoff),
            max_age: Duration::from_secs(max_age),
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn doubles_from_one_second_up_to_the_cap() {
        let s = schedule(300, 86_400);
        let waits: Vec<u64> = (1..=12)
            .map(|n| s.delay(n, &mut Fixed(0.5)).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        // Far past the doublings that fit: still the cap, no overflow.
        assert_eq!(s.delay(u32::MAX, &mut Fixed(0.5)), secs(300));
        assert_eq!(s.delay(40, &mut Fixed(0.5)), secs(300));
        // Called with 0 by mistake: the first delay, not a panic or zero.
        assert_eq!(s.delay(0, &mut Fixed(0.5)), secs(1));
    }

    #[test]
    fn jitter_spreads_twenty_percent_either_way() {
        let s = schedule(300, 86_400);
        assert_eq!(s.delay(4, &mut Fixed(0.0)), Duration::from_millis(6_400));
        assert_eq!(s.delay(4, &mut Fixed(1.0)), Duration::from_millis(9_600));
        assert_eq!(s.delay(20, &mut Fixed(0.0)), secs(240));
        assert_eq!(s.delay(20, &mut Fixed(1.0)), secs(360));
        // A jitter source out of range is clamped, never a negative or huge wait.
        assert_eq!(s.delay(1, &mut Fixed(-3.0)), Duration::from_millis(800));
        assert_eq!(s.delay(1, &mut Fixed(7.0)), Duration::from_millis(1_200));
        // Real randomness stays within the bounds.
        for _ in 0..1_000 {
            let d = s.delay(3, &mut RandomJitter);
            assert!(
                (secs(4).mul_f64(0.8)..=secs(4).mul_f64(1.2)).contains(&d),
                "{d:?}"
            );
        }
    }

    #[test]
    fn retry_after_lengthens_the_wait_up_to_the_deadline() {
        let s = schedule(300, 86_400);
        let age = secs(10);
        // Shorter than the schedule: the schedule wins.
        assert_eq!(
            s.after_failure(5, age, Some(secs(3)), &mut Fixed(0.5)),
            Next::RetryAfter(secs(16))
        );
        // Longer than max_backoff: honoured.
        assert_eq!(
            s.after_failure(5, age, Some(secs(3_600)), &mut Fixed(0.5)),
            Next::RetryAfter(secs(3_600))
        );
        // Beyond the deadline: the last retry lands on the deadline.
        assert_eq!(
            s.after_failure(5, secs(86_000), Some(secs(3_600)), &mut Fixed(0.5)),
            Next::RetryAfter(secs(400))
        );
    }

    #[test]
    fn an_event_past_max_age_is_given_up_after_its_failed_attempt() {
        let s = schedule(300, 86_400);
        assert_eq!(
            s.after_failure(1, secs(86_400), None, &mut Fixed(0.5)),
            Next::GiveUp
        );
        assert_eq!(
            s.after_failure(1, secs(200_000), None, &mut Fixed(0.5)),
            Next::GiveUp
        );
        // One second short: a last retry at the deadline, not a full backoff past it.
        assert_eq!(
            s.after_failure(12, secs(86_399), None, &mut Fixed(0.5)),
            Next::RetryAfter(secs(1))
        );
        assert_eq!(
            s.after_failure(1, secs(0), None, &mut Fixed(0.5)),
            Next::RetryAfter(secs(1))
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        let parse = |v: &str| parse_retry_after(v, now);
        assert_eq!(parse("120"), Some(secs(120)));
        assert_eq!(parse(" 0 "), Some(secs(0)));
        assert_eq!(
            parse("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        // The three date forms RFC 9110 asks a recipient to accept.
        assert_eq!(parse("Sun, 06 Nov 1994 08:50:37 GMT"), Some(secs(60)));
        assert_eq!(parse("Sunday, 06-Nov-94 08:51:37 GMT"), Some(secs(120)));
        assert_eq!(parse("Sun Nov  6 08:52:37 1994"), Some(secs(180)));
        // A date already past: retry on the schedule's own terms.
        assert_eq!(parse("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO));
        for bad in ["", "-5", "1.5", "soon", "120 s", &"9".repeat(65)] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
