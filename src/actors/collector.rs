//! The Collector actor: one per source. It runs [`collect_loop`], which asks the
//! TokenManager for a token (OAuth2 sources) before each session, runs one
//! `ingest::run_cycle`, updates state and metrics, and waits for the next poll or a
//! backoff. It stops for good only when the source needs re-authorization or on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::FutureExt as _;
use rand::Rng;
use tokio::sync::{Semaphore, watch};

use crate::auth::TokenError;
use crate::config::{SourceAuth, SourceSettings};
use crate::ingest::{self, Credential, CycleError, ReopenAt};
use crate::net::{Connector, SessionError};
use crate::secret::Secret;
use crate::store::Store;
use crate::telemetry::{self, ErrorKind, Outcome, SourceState, status};

use super::policy::{LoopPolicy, Next, SessionOutcome};
use super::token_manager::{GetAccessToken, InvalidateAccessToken};

/// Why a collector stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The provider refused the grant: do not restart until someone re-authorizes.
    NeedsReauth(String),
    /// Asked to stop.
    Shutdown,
    /// The loop died (a bug: a panic). The supervisor restarts it with backoff.
    Failed(String),
    /// `run --once`: the one session ended, with its error if it failed.
    Once(Result<(), String>),
}

/// What a collector needs. Holds a `Recipient`, not a concrete actor address, so tests
/// can stand in any token source.
#[derive(Clone)]
pub struct CollectorDeps {
    pub source: SourceSettings,
    pub store: Arc<Store>,
    pub connector: Connector,
    pub tokens: Recipient<GetAccessToken>,
    /// Told when the server refuses an access token, so the next session refreshes.
    pub invalidate: Recipient<InvalidateAccessToken>,
    /// Global `node.max_sessions` limit.
    pub sessions: Arc<Semaphore>,
    /// `run --once`: one session (no IDLE), then stop.
    pub once: bool,
}

/// A retry delay's jitter ([`policy::retry_delay`]).
pub(crate) fn jitter() -> f64 {
    rand::rng().random_range(0.5..=1.0)
}

/// What one session attempt came to.
enum Attempt {
    Done(ingest::CycleReport),
    NeedsReauth(String),
    Throttled(Option<Duration>, String),
    Failed(ErrorKind, String),
}

async fn credential(deps: &CollectorDeps) -> Result<(Credential, Option<ReopenAt>), Attempt> {
    let source = &deps.source;
    match &source.auth {
        SourceAuth::Password { secret } => crate::config::read_secret(secret)
            .map(|p| (Credential::Password(Secret::new(p)), None))
            .map_err(|e| {
                Attempt::Failed(e.kind(), format!("source {}: password: {e}", source.name))
            }),
        SourceAuth::OAuth2 { .. } => {
            let asked = deps
                .tokens
                .send(GetAccessToken {
                    source: source.name.clone(),
                })
                .await;
            match asked {
                // The session ends when the TokenManager would stop handing this token out
                // (its expiry less the refresh margin that applies to it), so the next one
                // signs in with a fresh token and none runs on an expired one.
                Ok(Ok(tok)) => Ok((
                    Credential::AccessToken(tok.token),
                    Some(ReopenAt(tok.renew_at)),
                )),
                Ok(Err(e)) if e.needs_reauth() => Err(Attempt::NeedsReauth(e.to_string())),
                Ok(Err(TokenError::Transient {
                    retry_after,
                    detail,
                    provider,
                })) => Err(Attempt::Failed(
                    ErrorKind::Token,
                    format!(
                        "provider {provider}: temporary failure: {detail}{}",
                        retry_after
                            .map(|d| format!(" (retry after {}s)", d.as_secs()))
                            .unwrap_or_default()
                    ),
                )),
                Ok(Err(e)) => Err(Attempt::Failed(e.kind(), e.to_string())),
                Err(e) => Err(Attempt::Failed(
                    ErrorKind::Token,
                    format!("token manager unavailable: {e}"),
                )),
            }
        }
    }
}

async fn attempt(deps: &CollectorDeps, stop: watch::Receiver<bool>) -> Attempt {
    let Ok(permit) = deps.sessions.clone().acquire_owned().await else {
        return Attempt::Failed(ErrorKind::Connect, "session limiter closed".into());
    };
    let (cred, reopen_at) = match credential(deps).await {
        Ok(c) => c,
        Err(a) => return a,
    };
    let started = Instant::now();
    let mut on_pass = |report: &ingest::CycleReport, failed: &[ingest::RefusedFolder]| {
        record_success(deps, report);
        if !failed.is_empty() {
            record_failure(
                deps,
                ErrorKind::Protocol,
                &format!(
                    "folders not collected: {}",
                    ingest::RefusedFolder::list(failed)
                ),
                SourceState::Degraded,
            );
        }
    };
    // An IDLE session takes the session slot (and gives it back while idling); any other
    // session holds it until it ends.
    let (idle, _slot) = if deps.source.idle && !deps.once {
        let ctl = ingest::IdleCtl {
            stop,
            on_pass: &mut on_pass,
            sessions: deps.sessions.clone(),
            permit: Some(permit),
            reissue: ingest::IDLE_REISSUE,
        };
        (Some(ctl), None)
    } else {
        (None, Some(permit))
    };
    let result = ingest::run_session(
        &deps.store,
        &deps.connector,
        &deps.source,
        &cred,
        reopen_at,
        idle,
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    let name = &deps.source.name;
    match result {
        Ok(report) => {
            telemetry::session(name, Outcome::Ok, secs);
            Attempt::Done(report)
        }
        Err(e) => {
            telemetry::session(name, Outcome::Error, secs);
            match e {
                CycleError::Session(SessionError::Throttled { backoff, reply, .. }) => {
                    Attempt::Throttled(backoff, reply)
                }
                CycleError::Session(e @ SessionError::Auth { .. })
                    if matches!(deps.source.auth, SourceAuth::OAuth2 { .. }) =>
                {
                    // The token looked valid to us but not to the server (revoked, or
                    // ended early). The next attempt refreshes; a revoked grant then shows
                    // as invalid_grant and parks the source.
                    let _ = deps
                        .invalidate
                        .send(InvalidateAccessToken {
                            source: name.clone(),
                        })
                        .await;
                    Attempt::Failed(ErrorKind::Auth, e.to_string())
                }
                other => Attempt::Failed(other.kind(), other.to_string()),
            }
        }
    }
}

/// A pass that collected everything it was asked to: state, metrics, a log line.
fn record_success(deps: &CollectorDeps, report: &ingest::CycleReport) {
    let name = &deps.source.name;
    let now = chrono::Utc::now();
    telemetry::last_success(name, now.timestamp());
    if !report.more {
        // All listed is dealt with; a session ended early for its token leaves the rest.
        status::session_caught_up(name);
    }
    status::update(name, |s| {
        s.last_success = Some(now.to_rfc3339());
        s.sessions_ok += 1;
    });
    status::set_state(name, SourceState::Healthy);
    if report.stored > 0 || report.skipped > 0 {
        tracing::info!(source = %name, stored = report.stored, bytes = report.bytes, skipped = report.skipped, already = report.already, "collected");
    }
}

/// A session or pass that failed: error metric, last error, and the state it leaves.
fn record_failure(deps: &CollectorDeps, kind: ErrorKind, error: &str, state: SourceState) {
    let name = &deps.source.name;
    telemetry::error(name, kind);
    status::update(name, |s| {
        s.last_error = Some(error.to_string());
        s.sessions_failed += 1;
    });
    status::set_state(name, state);
}

/// How long a stopping collector lets its session finish the message in hand (and leave
/// IDLE and log out) before dropping it. Dropping is safe at any point: every message is
/// one store transaction, and nothing is changed on the server before it is durable.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The collector's life: sessions until shutdown or until the source needs re-authorization.
/// With `deps.once`, one session and then [`StopReason::Once`].
pub async fn collect_loop(deps: CollectorDeps, mut shutdown: watch::Receiver<bool>) -> StopReason {
    let name = deps.source.name.clone();
    telemetry::register_source(&name);
    status::set_state(&name, SourceState::Starting);
    status::update(&name, |s| {
        s.running_since = Some(chrono::Utc::now().to_rfc3339());
    });
    let policy = LoopPolicy {
        once: deps.once,
        poll_interval: deps.source.poll_interval,
    };
    let mut failures: u32 = 0;
    let mut told_no_idle = false;
    let mut session_no: u64 = 0;
    loop {
        if *shutdown.borrow() {
            return StopReason::Shutdown;
        }
        session_no += 1;
        // Every line about this session, its outcome included, carries its number.
        let span = tracing::info_span!("session", n = session_no);
        let outcome = {
            let run =
                tracing::Instrument::instrument(attempt(&deps, shutdown.clone()), span.clone());
            tokio::pin!(run);
            tokio::select! {
                a = &mut run => a,
                _ = shutdown.changed() => {
                    let _ = tokio::time::timeout(STOP_GRACE, run).await;
                    return StopReason::Shutdown;
                }
            }
        };
        let in_session = span.enter();
        let (decided, detail) = match &outcome {
            Attempt::Done(report) => (SessionOutcome::Done { more: report.more }, String::new()),
            Attempt::NeedsReauth(reason) => (SessionOutcome::NeedsReauth, reason.clone()),
            Attempt::Throttled(backoff, reply) => (
                SessionOutcome::Throttled { backoff: *backoff },
                reply.clone(),
            ),
            Attempt::Failed(kind, error) => (SessionOutcome::Failed { kind: *kind }, error.clone()),
        };
        let after = policy.after(decided, failures, jitter());
        failures = after.failures;
        match &outcome {
            Attempt::Done(report) => {
                if !report.passes_reported {
                    record_success(&deps, report);
                }
                if report.idle_unsupported && !told_no_idle {
                    told_no_idle = true;
                    tracing::warn!(source = %name, poll_interval_secs = deps.source.poll_interval.as_secs(), "idle = true but the server does not offer IDLE; polling instead");
                }
                if report.more {
                    tracing::debug!(source = %name, "session re-opened before its access token expires");
                }
            }
            Attempt::NeedsReauth(_) => {
                record_failure(&deps, ErrorKind::Token, &detail, after.state);
                tracing::error!(source = %name, error = %detail, "source needs re-authorization; collection paused until `mailsluice authorize` or `tokens import`");
            }
            Attempt::Throttled(..) => {
                record_failure(&deps, ErrorKind::Throttled, &detail, after.state);
                match after.next {
                    Next::Wait(wait) => {
                        tracing::warn!(source = %name, wait_ms = wait.as_millis() as u64, reply = %detail, "server throttled us; backing off")
                    }
                    _ => tracing::warn!(source = %name, reply = %detail, "server throttled us"),
                }
            }
            Attempt::Failed(kind, _) => {
                record_failure(&deps, *kind, &detail, after.state);
                if after.log {
                    let kind = kind.as_str();
                    match after.next {
                        // A store that cannot take mail (disk full, I/O) needs the operator.
                        Next::Wait(wait)
                            if matches!(outcome, Attempt::Failed(ErrorKind::Store, _)) =>
                        {
                            tracing::error!(source = %name, kind, failures, retry_in_ms = wait.as_millis() as u64, error = %detail, "session failed: nothing can be stored");
                        }
                        Next::Wait(wait) => {
                            tracing::warn!(source = %name, kind, failures, retry_in_ms = wait.as_millis() as u64, error = %detail, "session failed");
                        }
                        _ => {
                            tracing::warn!(source = %name, kind, error = %detail, "session failed")
                        }
                    }
                }
            }
        }
        let wait = match after.next {
            Next::Wait(wait) => wait,
            Next::Park => return StopReason::NeedsReauth(detail),
            Next::End => {
                return StopReason::Once(match outcome {
                    Attempt::Done(_) => Ok(()),
                    _ => Err(detail),
                });
            }
        };
        drop(in_session);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return StopReason::Shutdown,
        }
    }
}

/// Sent to the supervisor when a collector ends.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct CollectorStopped {
    pub source: String,
    pub reason: StopReason,
}

/// Asks a collector to stop after the message in hand.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct StopCollector;

pub struct Collector {
    deps: Option<CollectorDeps>,
    shutdown: watch::Sender<bool>,
    supervisor: Recipient<CollectorStopped>,
}

impl Collector {
    pub fn new(deps: CollectorDeps, supervisor: Recipient<CollectorStopped>) -> Self {
        let (shutdown, _) = watch::channel(false);
        Collector {
            deps: Some(deps),
            shutdown,
            supervisor,
        }
    }
}

impl Actor for Collector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(deps) = self.deps.take() else { return };
        let source = deps.source.name.clone();
        let rx = self.shutdown.subscribe();
        let span = tracing::info_span!("collector", source = %source);
        let fut = tracing::Instrument::instrument(collect_loop(deps, rx), span);
        // A panic is a bug, but one source's bug must not take the node down: it ends this
        // collector with a reason and the supervisor restarts it.
        let fut = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(fut)).map(
            |r| match r {
                Ok(reason) => reason,
                Err(panic) => StopReason::Failed(
                    panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into()),
                ),
            },
        );
        ctx.spawn(fut.into_actor(self).map(move |reason, act, ctx| {
            act.supervisor.do_send(CollectorStopped { source, reason });
            ctx.stop();
        }));
    }
}

impl Handler<StopCollector> for Collector {
    type Result = ();

    fn handle(&mut self, _msg: StopCollector, _ctx: &mut Context<Self>) {
        let _ = self.shutdown.send(true);
    }
}
