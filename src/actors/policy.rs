//! What the actors decide, as plain functions: what a collector does after a session
//! (wait, retry, park, end), what the supervisor does when a collector stops, and which
//! sources a reload starts, stops or restarts. The actors only carry the decisions out, so
//! every rule here is tested without an actix System, a clock or a random number.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::config::{Settings, SourceAuth};
use crate::telemetry::{ErrorKind, SourceState};

/// Connection attempts a source gets in `run --once` before it counts as not collected.
pub const ONCE_CONNECT_ATTEMPTS: u32 = 3;

/// Delay before retry number `failures` (1-based): exponential from 1 s, capped at
/// 5 minutes, scaled by `jitter` (drawn from 0.5..=1.0 by the caller) so many failing
/// sources do not retry in lockstep; never under 0.2 s.
pub fn retry_delay(failures: u32, jitter: f64) -> Duration {
    let base = 2f64
        .powi(failures.saturating_sub(1).min(16) as i32)
        .min(300.0);
    Duration::from_secs_f64((base * jitter.clamp(0.5, 1.0)).max(0.2))
}

/// What one session attempt came to, as far as deciding what comes next goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionOutcome {
    /// The session collected what it was asked to; `more` when it ended early, before its
    /// access token expired, with mail left.
    Done {
        more: bool,
    },
    /// The provider refused the grant.
    NeedsReauth,
    /// The server throttled us, with the backoff it suggested if any.
    Throttled {
        backoff: Option<Duration>,
    },
    Failed {
        kind: ErrorKind,
    },
}

/// What the collector does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Run the next session after this long.
    Wait(Duration),
    /// No more sessions until someone re-authorizes the source.
    Park,
    /// `run --once`: the source's one session is over (its result is the outcome's).
    End,
}

/// The collector's decision after a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterSession {
    pub next: Next,
    /// The state the source is in now.
    pub state: SourceState,
    /// Consecutive failed sessions, this one included.
    pub failures: u32,
    /// Whether this failure is logged: the first few, then every 2^n-th, so a source that
    /// keeps failing does not flood the log.
    pub log: bool,
}

/// How a collector runs: `run --once` or a node, and its poll interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopPolicy {
    pub once: bool,
    pub poll_interval: Duration,
}

impl LoopPolicy {
    /// What follows `outcome`, after `failures` consecutive failed sessions before it.
    /// `jitter` (0.5..=1.0) scales a retry's delay.
    pub fn after(&self, outcome: SessionOutcome, failures: u32, jitter: f64) -> AfterSession {
        match outcome {
            SessionOutcome::Done { more } => AfterSession {
                next: match (self.once, more) {
                    (true, false) => Next::End,
                    // Ended before its token expired: carry on with a fresh token now.
                    (_, true) => Next::Wait(Duration::ZERO),
                    (false, false) => Next::Wait(self.poll_interval),
                },
                state: SourceState::Healthy,
                failures: 0,
                log: false,
            },
            SessionOutcome::NeedsReauth => AfterSession {
                next: Next::Park,
                state: SourceState::NeedsReauth,
                failures,
                log: true,
            },
            SessionOutcome::Throttled { backoff } => AfterSession {
                next: if self.once {
                    Next::End
                } else {
                    Next::Wait(backoff.unwrap_or(self.poll_interval))
                },
                state: SourceState::Throttled,
                failures,
                log: true,
            },
            SessionOutcome::Failed { kind } => {
                let failures = failures.saturating_add(1);
                // `run --once` gives a source that could not reach its server (refused,
                // reset, no answer: a busy or restarting server) a few more tries before
                // it is reported as not collected; anything else is final at once.
                let end =
                    self.once && (kind != ErrorKind::Connect || failures >= ONCE_CONNECT_ATTEMPTS);
                AfterSession {
                    next: if end {
                        Next::End
                    } else {
                        Next::Wait(retry_delay(failures, jitter))
                    },
                    state: SourceState::Degraded,
                    failures,
                    log: end || failures <= 3 || failures.is_power_of_two(),
                }
            }
        }
    }
}

/// Why a collector stopped, as far as restarting it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    NeedsReauth,
    /// Asked to stop, or its `run --once` session ended.
    Asked,
    /// It died (a panic: a bug).
    Failed,
}

/// What the supervisor does about a stopped collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Start it again after this long.
    After(Duration),
    /// Leave it stopped (parked for re-authorization, or stopped on purpose).
    No,
}

/// The supervisor's answer to a collector that stopped for `why`, the `restarts`-th
/// unexpected stop of that source (1-based). A source that needs re-authorization is never
/// restarted by a timer: only a new grant starts it again.
pub fn restart(why: Stopped, restarts: u32, jitter: f64) -> Restart {
    match why {
        Stopped::Failed => Restart::After(retry_delay(restarts, jitter)),
        Stopped::NeedsReauth | Stopped::Asked => Restart::No,
    }
}

/// What a reload changed.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ReloadReport {
    /// Sources started (new, or newly enabled).
    pub added: Vec<String>,
    /// Sources stopped (gone, or disabled).
    pub removed: Vec<String>,
    /// Sources restarted with changed settings (their own, their provider's, or node-wide
    /// ones every collector uses: `[tls]`, timeouts, `max_sessions`, token margin).
    pub restarted: Vec<String>,
    /// Sources left running untouched.
    pub unchanged: Vec<String>,
    /// Keys that changed but take effect only when the node restarts.
    pub needs_restart: Vec<String>,
    /// Sinks started (new in the file).
    #[serde(default)]
    pub sinks_added: Vec<String>,
    /// Sinks stopped and forgotten (gone from the file), with what they had still to
    /// deliver dropped.
    #[serde(default)]
    pub sinks_removed: Vec<String>,
    /// Sinks restarted from where they were (settings, secret, `[tls]` or the API base
    /// changed).
    #[serde(default)]
    pub sinks_restarted: Vec<String>,
}

/// What a reload does to one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceAction {
    /// Stop its collector if one runs; the source stays configured, disabled.
    Disable,
    /// Stop its collector if one runs and forget the source: it is gone from the file.
    Forget,
    /// Start a collector now.
    Start,
    /// Start a collector once the one still stopping (from an earlier reload) has stopped.
    StartAfterStop,
    /// Stop the running collector and start a new one with the new settings.
    Restart,
    Keep,
}

/// A reload worked out: the report it answers with, what happens to each source, and
/// which node-wide parts are rebuilt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    pub report: ReloadReport,
    pub actions: Vec<(String, SourceAction)>,
    /// `[tls]` or a timeout changed: a new connector.
    pub new_connector: bool,
    /// `node.max_sessions` changed: a new session limiter.
    pub new_session_limit: bool,
}

/// Works out a reload from `old` to `new`, given the sources whose collector is running
/// (or still stopping).
pub fn plan_reload(old: &Settings, new: &Settings, running: &BTreeSet<String>) -> ReloadPlan {
    let mut report = ReloadReport::default();
    let (on, nn) = (&old.node, &new.node);
    for (key, changed) in [
        ("node.data_dir", on.data_dir != nn.data_dir),
        ("node.http_listen", on.http_listen != nn.http_listen),
        (
            "node.http_listen_file",
            on.http_listen_file != nn.http_listen_file,
        ),
        (
            "node.secret_key_file",
            on.secret_key_file != nn.secret_key_file,
        ),
        ("node.log_format", on.log_format != nn.log_format),
    ] {
        if changed {
            report.needs_restart.push(key.to_string());
        }
    }
    let new_connector = old.tls != new.tls
        || on.connect_timeout != nn.connect_timeout
        || on.read_timeout != nn.read_timeout;
    let new_session_limit = on.max_sessions != nn.max_sessions;
    // Settings every collector holds: a change restarts them all.
    let global =
        new_connector || new_session_limit || on.token_refresh_margin != nn.token_refresh_margin;
    let names: BTreeSet<&String> = old.sources.keys().chain(new.sources.keys()).collect();
    let mut actions = Vec::with_capacity(names.len());
    for name in names {
        let is_running = running.contains(name);
        let (was, is) = (enabled(old, name), enabled(new, name));
        let action = if !is {
            if was {
                report.removed.push(name.clone());
            }
            if new.sources.contains_key(name) {
                SourceAction::Disable
            } else {
                SourceAction::Forget
            }
        } else if !was {
            report.added.push(name.clone());
            if is_running {
                SourceAction::StartAfterStop
            } else {
                SourceAction::Start
            }
        } else if global || source_changed(old, new, name) {
            report.restarted.push(name.clone());
            if is_running {
                SourceAction::Restart
            } else {
                // Parked (needs re-authorization) or waiting to be restarted: a new
                // configuration deserves a new try.
                SourceAction::Start
            }
        } else {
            report.unchanged.push(name.clone());
            SourceAction::Keep
        };
        actions.push((name.clone(), action));
    }
    ReloadPlan {
        report,
        actions,
        new_connector,
        new_session_limit,
    }
}

/// Whether a source must restart to pick up the change from `old` to `new`: its own
/// settings, or its provider's, changed.
fn source_changed(old: &Settings, new: &Settings, name: &str) -> bool {
    let (Some(a), Some(b)) = (old.sources.get(name), new.sources.get(name)) else {
        return true;
    };
    if a != b {
        return true;
    }
    match &b.auth {
        SourceAuth::OAuth2 { provider, .. } => {
            old.providers.get(provider) != new.providers.get(provider)
        }
        SourceAuth::Password { .. } => false,
    }
}

pub fn enabled(settings: &Settings, name: &str) -> bool {
    settings.sources.get(name).is_some_and(|s| s.enabled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node_policy() -> LoopPolicy {
        LoopPolicy {
            once: false,
            poll_interval: Duration::from_secs(60),
        }
    }

    fn once_policy() -> LoopPolicy {
        LoopPolicy {
            once: true,
            ..node_policy()
        }
    }

    #[test]
    fn retry_delay_doubles_from_one_second_up_to_five_minutes() {
        assert_eq!(retry_delay(1, 1.0), Duration::from_secs(1));
        assert_eq!(retry_delay(2, 1.0), Duration::from_secs(2));
        assert_eq!(retry_delay(4, 1.0), Duration::from_secs(8));
        assert_eq!(retry_delay(4, 0.5), Duration::from_secs(4));
        assert_eq!(retry_delay(9, 1.0), Duration::from_secs(256));
        assert_eq!(retry_delay(10, 1.0), Duration::from_secs(300));
        assert_eq!(retry_delay(u32::MAX, 1.0), Duration::from_secs(300));
        // The floor, and jitter outside its range is clamped.
        assert_eq!(retry_delay(0, 0.5), Duration::from_millis(500));
        assert_eq!(retry_delay(1, 0.0), Duration::from_millis(500));
        assert_eq!(retry_delay(1, 7.0), Duration::from_secs(1));
    }

    #[test]
    fn a_good_session_waits_for_the_poll_or_goes_on_at_once_when_cut_short() {
        let p = node_policy();
        let a = p.after(SessionOutcome::Done { more: false }, 5, 1.0);
        assert_eq!(
            a,
            AfterSession {
                next: Next::Wait(Duration::from_secs(60)),
                state: SourceState::Healthy,
                failures: 0,
                log: false
            }
        );
        let a = p.after(SessionOutcome::Done { more: true }, 0, 1.0);
        assert_eq!(a.next, Next::Wait(Duration::ZERO));
        // `run --once` ends after its session, unless it was cut short for its token.
        let o = once_policy();
        assert_eq!(
            o.after(SessionOutcome::Done { more: false }, 0, 1.0).next,
            Next::End
        );
        assert_eq!(
            o.after(SessionOutcome::Done { more: true }, 0, 1.0).next,
            Next::Wait(Duration::ZERO)
        );
    }

    #[test]
    fn a_refused_grant_parks_the_source() {
        let a = node_policy().after(SessionOutcome::NeedsReauth, 2, 1.0);
        assert_eq!(
            (a.next, a.state, a.failures),
            (Next::Park, SourceState::NeedsReauth, 2)
        );
        assert_eq!(
            once_policy()
                .after(SessionOutcome::NeedsReauth, 0, 1.0)
                .next,
            Next::Park
        );
    }

    #[test]
    fn throttling_waits_as_the_server_asks_or_a_poll_interval() {
        let p = node_policy();
        let asked = p.after(
            SessionOutcome::Throttled {
                backoff: Some(Duration::from_millis(1234)),
            },
            1,
            1.0,
        );
        assert_eq!(asked.next, Next::Wait(Duration::from_millis(1234)));
        assert_eq!((asked.state, asked.failures), (SourceState::Throttled, 1));
        let unsaid = p.after(SessionOutcome::Throttled { backoff: None }, 0, 1.0);
        assert_eq!(unsaid.next, Next::Wait(Duration::from_secs(60)));
        assert_eq!(
            once_policy()
                .after(SessionOutcome::Throttled { backoff: None }, 0, 1.0)
                .next,
            Next::End
        );
    }

    #[test]
    fn failures_back_off_and_are_logged_less_and_less() {
        let p = node_policy();
        let failed = SessionOutcome::Failed {
            kind: ErrorKind::Protocol,
        };
        let mut failures = 0;
        let mut logged = Vec::new();
        for _ in 0..20 {
            let a = p.after(failed, failures, 1.0);
            assert_eq!(a.state, SourceState::Degraded);
            assert_eq!(a.failures, failures + 1);
            assert_eq!(a.next, Next::Wait(retry_delay(a.failures, 1.0)));
            failures = a.failures;
            if a.log {
                logged.push(failures);
            }
        }
        assert_eq!(logged, vec![1, 2, 3, 4, 8, 16]);
    }

    #[test]
    fn run_once_retries_only_an_unreachable_server_and_only_a_few_times() {
        let o = once_policy();
        let connect = SessionOutcome::Failed {
            kind: ErrorKind::Connect,
        };
        let first = o.after(connect, 0, 1.0);
        assert_eq!(first.next, Next::Wait(Duration::from_secs(1)));
        let second = o.after(connect, first.failures, 1.0);
        assert!(matches!(second.next, Next::Wait(_)));
        let third = o.after(connect, second.failures, 1.0);
        assert_eq!(
            (third.next, third.failures, third.log),
            (Next::End, ONCE_CONNECT_ATTEMPTS, true)
        );
        let auth = o.after(
            SessionOutcome::Failed {
                kind: ErrorKind::Auth,
            },
            0,
            1.0,
        );
        assert_eq!(auth.next, Next::End);
    }

    #[test]
    fn only_a_collector_that_died_is_restarted_by_a_timer() {
        assert_eq!(
            restart(Stopped::Failed, 3, 1.0),
            Restart::After(Duration::from_secs(4))
        );
        assert_eq!(restart(Stopped::NeedsReauth, 3, 1.0), Restart::No);
        assert_eq!(restart(Stopped::Asked, 1, 1.0), Restart::No);
    }

    const BASE: &str = r#"
[node]
data_dir = "/tmp/ms-plan"

[providers.p]
kind = "oidc"
issuer = "https://id.example.test"
client_id = "c"

[sources.same]
protocol = "imap"
host = "mail.example.test"
username = "a"
auth = "password"
password_env = "PW"

[sources.oauth]
protocol = "imap"
host = "mail.example.test"
username = "b"
auth = "oauth2"
provider = "p"

[sources.gone]
protocol = "pop3"
host = "mail.example.test"
username = "c"
auth = "password"
password_env = "PW"

[sources.turned_off]
protocol = "imap"
host = "mail.example.test"
username = "d"
auth = "password"
password_env = "PW"

[sources.parked]
protocol = "imap"
host = "mail.example.test"
username = "e"
auth = "password"
password_env = "PW"
"#;

    fn settings(text: &str) -> Settings {
        crate::config::load_str(text, &Default::default())
            .unwrap_or_else(|e| panic!("test config: {e:?}"))
    }

    fn running(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn action(plan: &ReloadPlan, name: &str) -> SourceAction {
        plan.actions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap_or_else(|| panic!("no action for {name}: {plan:?}"))
    }

    #[test]
    fn a_reload_touches_only_what_changed() {
        let old = settings(BASE);
        let new_text = BASE
            .replace("issuer = \"https://id.example.test\"", "issuer = \"https://id2.example.test\"")
            .replace(
                "[sources.gone]\nprotocol = \"pop3\"\nhost = \"mail.example.test\"\nusername = \"c\"\nauth = \"password\"\npassword_env = \"PW\"\n",
                "",
            )
            .replace("username = \"d\"", "username = \"d\"\nenabled = false")
            .replace("username = \"e\"", "username = \"e\"\npoll_interval_secs = 30")
            + "\n[sources.fresh]\nprotocol = \"imap\"\nhost = \"mail.example.test\"\nusername = \"f\"\nauth = \"password\"\npassword_env = \"PW\"\n";
        let new = settings(&new_text);
        // `parked` has no running collector (it needs re-authorization).
        let plan = plan_reload(
            &old,
            &new,
            &running(&["same", "oauth", "gone", "turned_off"]),
        );
        assert_eq!(action(&plan, "same"), SourceAction::Keep);
        assert_eq!(
            action(&plan, "oauth"),
            SourceAction::Restart,
            "its provider changed"
        );
        assert_eq!(action(&plan, "gone"), SourceAction::Forget);
        assert_eq!(action(&plan, "turned_off"), SourceAction::Disable);
        assert_eq!(
            action(&plan, "parked"),
            SourceAction::Start,
            "a new config is a new try"
        );
        assert_eq!(action(&plan, "fresh"), SourceAction::Start);
        assert_eq!(plan.report.added, vec!["fresh"]);
        assert_eq!(plan.report.removed, vec!["gone", "turned_off"]);
        assert_eq!(plan.report.restarted, vec!["oauth", "parked"]);
        assert_eq!(plan.report.unchanged, vec!["same"]);
        assert!(plan.report.needs_restart.is_empty());
        assert!(!plan.new_connector && !plan.new_session_limit);
    }

    #[test]
    fn node_wide_changes_restart_every_source_and_some_need_a_node_restart() {
        let old = settings(BASE);
        let new = settings(&BASE.replace(
            "data_dir = \"/tmp/ms-plan\"",
            "data_dir = \"/tmp/ms-plan2\"\nhttp_listen_file = \"/tmp/ms-plan.addr\"\nmax_sessions = 3\nread_timeout_secs = 7",
        ));
        let plan = plan_reload(
            &old,
            &new,
            &running(&["same", "oauth", "gone", "turned_off", "parked"]),
        );
        assert_eq!(
            plan.report.needs_restart,
            vec!["node.data_dir", "node.http_listen_file"]
        );
        assert!(plan.new_connector && plan.new_session_limit);
        assert_eq!(plan.report.restarted.len(), 5);
        assert!(
            plan.actions
                .iter()
                .all(|(_, a)| *a == SourceAction::Restart),
            "{plan:?}"
        );
    }

    #[test]
    fn a_source_enabled_again_while_still_stopping_starts_after_it_stopped() {
        let off = settings(&BASE.replace("username = \"a\"", "username = \"a\"\nenabled = false"));
        let on = settings(BASE);
        let plan = plan_reload(&off, &on, &running(&["same"]));
        assert_eq!(action(&plan, "same"), SourceAction::StartAfterStop);
        assert_eq!(plan.report.added, vec!["same"]);
        let plan = plan_reload(&off, &on, &running(&[]));
        assert_eq!(action(&plan, "same"), SourceAction::Start);
    }
}
