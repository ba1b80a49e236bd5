//! The Supervisor actor: starts the TokenManager, one Collector per enabled source and one
//! delivery worker per sink, restarts a collector that ended unexpectedly (capped, jittered
//! backoff), never restarts one whose source needs re-authorization until it is
//! re-authorized, applies a reloaded configuration source by source and sink by sink,
//! prunes the outbox, and stops everything on shutdown.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::Semaphore;

use crate::auth::TokenService;
use crate::config::Settings;
use crate::net::Connector;
use crate::store::Store;
use crate::telemetry::{self, SourceState, status};

use super::collector::{
    Collector, CollectorDeps, CollectorStopped, StopCollector, StopReason, jitter,
};
pub use super::policy::ReloadReport;
use super::policy::{Restart, SourceAction, Stopped, enabled, plan_reload, restart};
use super::sinks::{self as sink_set, RunningSink, SinkHandle};
use super::token_manager::{
    GetAccessToken, ImportRefreshToken, InvalidateAccessToken, SetTokenService, TokenManager,
};
use crate::config::live::{Current, Live};
use crate::sinks::engine::{CommandError, ReplayReport, RetryReport};

pub struct Supervisor {
    /// The configuration and connector in force (replaced by reloads).
    live: Live,
    store: Arc<Store>,
    sessions: Arc<Semaphore>,
    tokens: Addr<TokenManager>,
    collectors: HashMap<String, Addr<Collector>>,
    /// Unexpected stops per source, for the restart backoff.
    restarts: HashMap<String, u32>,
    stopping: bool,
    /// Fired when the last collector has stopped during shutdown.
    all_stopped: Option<tokio::sync::oneshot::Sender<()>>,
    /// Sources whose collector is stopping for a reload and starts again (with the new
    /// settings, if still enabled) once it has stopped.
    restart_after_stop: HashSet<String>,
    /// `run --once`: each source's one session, and who waits for all of them.
    once: bool,
    once_results: BTreeMap<String, Result<(), String>>,
    once_done: Option<tokio::sync::oneshot::Sender<BTreeMap<String, Result<(), String>>>>,
    /// The sinks whose worker runs.
    sinks: HashMap<String, SinkHandle>,
    /// Sinks whose worker is stopping (for a reload, or to be removed); started again, or
    /// their record dropped, once it has stopped.
    sinks_stopping: HashSet<String>,
    /// Configured sinks that could not start, and why (a reload tries again).
    sinks_failed: HashMap<String, String>,
    /// The address the HTTP listener got (the base of `raw_url` without
    /// `node.http_public_url`); `None` before it is known.
    listen: Option<SocketAddr>,
    /// Counts the pruning schedules: a reload that changes the retention starts a new one
    /// at the new pace, and the old one's timer, when it fires, sees it is stale.
    prune_schedule: u64,
}

impl Supervisor {
    pub fn new(live: Live, store: Arc<Store>, token_service: Arc<TokenService>) -> Self {
        let tokens = TokenManager::new(token_service).start();
        Supervisor {
            sessions: Arc::new(Semaphore::new(live.settings().node.max_sessions)),
            store,
            live,
            tokens,
            collectors: HashMap::new(),
            restarts: HashMap::new(),
            stopping: false,
            all_stopped: None,
            restart_after_stop: HashSet::new(),
            once: false,
            once_results: BTreeMap::new(),
            once_done: None,
            sinks: HashMap::new(),
            sinks_stopping: HashSet::new(),
            sinks_failed: HashMap::new(),
            listen: None,
            prune_schedule: 0,
        }
    }

    /// The address the node's HTTP listener got: with `node.http_listen` on port 0, only it
    /// says where receivers find the raw bytes a sink's `raw_url` names.
    pub fn listening_on(mut self, addr: SocketAddr) -> Self {
        self.listen = Some(addr);
        self
    }

    /// `run --once`: every enabled source runs one session (no IDLE), then its collector
    /// stops; [`WaitOnce`] answers when all have.
    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }

    fn once_finished(&mut self) {
        if self.once
            && self.collectors.is_empty()
            && let Some(tx) = self.once_done.take()
        {
            let _ = tx.send(std::mem::take(&mut self.once_results));
        }
    }

    /// Logs every expiry horizon coming up (client secrets, idle refresh tokens).
    fn warn_horizons(&self) {
        let now = chrono::Utc::now().timestamp();
        let settings = self.live.settings();
        for (name, source) in &settings.sources {
            let crate::config::SourceAuth::OAuth2 { provider, .. } = &source.auth else {
                continue;
            };
            let Some(p) = settings.providers.get(provider) else {
                continue;
            };
            let record = crate::auth::stored_grant(&settings, &self.store, name)
                .ok()
                .flatten();
            for w in crate::auth::horizons::warnings(p, record.as_ref(), now) {
                tracing::warn!(source = %name, provider = %provider, "{w}");
            }
        }
    }

    /// Writes each announced change of a source's state ([`status::StateTransition`]) to
    /// the outbox as a `source.state_changed` event. States are set from synchronous code
    /// (the collectors' bookkeeping, the token manager) on the arbiter's thread; an event
    /// must be flushed before it counts, so it is written here instead, one change at a
    /// time in the order they happened, and no collector waits on a disk flush. Listening
    /// starts before any collector does, so a source's first change is not missed.
    fn record_state_changes(&self, ctx: &mut Context<Self>) {
        let mut changes = status::watch_transitions();
        let store = self.store.clone();
        let live = self.live.clone();
        let record = async move {
            while let Some(change) = changes.recv().await {
                // Status is process-wide: only this node's sources are its to announce.
                if !live.settings().sources.contains_key(&change.source) {
                    continue;
                }
                let written = store
                    .append_state_event(
                        &change.source,
                        change.from.as_str(),
                        change.to.as_str(),
                        change.reason.as_deref(),
                    )
                    .await;
                if let Err(e) = written {
                    tracing::error!(source = %change.source, from = change.from.as_str(), to = change.to.as_str(), error = %e, "source state change not written to the outbox");
                }
            }
        };
        ctx.spawn(record.into_actor(self));
    }

    fn start_collector(&mut self, name: &str, ctx: &mut Context<Self>) {
        let Current {
            settings,
            connector,
        } = self.live.get();
        let Some(source) = settings.sources.get(name).cloned() else {
            return;
        };
        let deps = CollectorDeps {
            source,
            store: self.store.clone(),
            connector,
            tokens: self.tokens.clone().recipient::<GetAccessToken>(),
            invalidate: self.tokens.clone().recipient::<InvalidateAccessToken>(),
            sessions: self.sessions.clone(),
            once: self.once,
        };
        let addr = Collector::new(deps, ctx.address().recipient()).start();
        self.collectors.insert(name.to_string(), addr);
    }

    /// At start: drops the records of sinks no longer configured (removed while the node
    /// was down), then starts every configured sink.
    fn start_sinks(&mut self, ctx: &mut Context<Self>) {
        let settings = self.live.settings();
        let forgotten: Vec<String> = match self.store.sink_names() {
            Ok(names) => names
                .into_iter()
                .filter(|n| !settings.sinks.contains_key(n))
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot list the sinks the store has records of");
                Vec::new()
            }
        };
        for name in forgotten {
            self.sinks_stopping.insert(name.clone());
            self.remove_sink_record(name, ctx);
        }
        for name in settings.sinks.keys() {
            self.start_sink(name);
        }
    }

    /// Starts `name`'s worker with the current settings, unless it runs or is stopping.
    fn start_sink(&mut self, name: &str) {
        if self.stopping || self.sinks.contains_key(name) || self.sinks_stopping.contains(name) {
            return;
        }
        let settings = self.live.settings();
        let Some(sink) = settings.sinks.get(name) else {
            return;
        };
        let base = sink_set::api_base(&settings, self.listen);
        match sink_set::start(&settings, sink, &base, self.store.clone()) {
            Ok(handle) => {
                self.sinks_failed.remove(name);
                self.sinks.insert(name.to_string(), handle);
            }
            Err(e) => {
                tracing::error!(sink = %name, error = %e, "sink not started; its events wait in the outbox (a reload tries again)");
                self.sinks_failed.insert(name.to_string(), e.to_string());
            }
        }
    }

    /// Stops `name`'s worker; once it has stopped, the sink starts again if it is still
    /// configured, or its record is dropped if not.
    fn stop_sink(&mut self, name: &str, ctx: &mut Context<Self>) {
        self.sinks_failed.remove(name);
        let Some(handle) = self.sinks.remove(name) else {
            return;
        };
        self.sinks_stopping.insert(name.to_string());
        let stopped = handle.stop();
        let name = name.to_string();
        ctx.spawn(
            async move {
                let _ = stopped.await;
            }
            .into_actor(self)
            .map(move |(), act, ctx| act.sink_stopped(name, ctx)),
        );
    }

    fn sink_stopped(&mut self, name: String, ctx: &mut Context<Self>) {
        if self.stopping {
            self.sinks_stopping.remove(&name);
            return;
        }
        if self.live.settings().sinks.contains_key(&name) {
            self.sinks_stopping.remove(&name);
            self.start_sink(&name);
        } else {
            self.remove_sink_record(name, ctx);
        }
    }

    /// Drops the store's record of a sink that is no longer configured (its worker has
    /// stopped), logging what it still had to deliver; starts it afresh should a reload
    /// have brought it back meanwhile.
    fn remove_sink_record(&mut self, name: String, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let sink = name.clone();
        ctx.spawn(
            async move { store.sink_remove(&sink).await }
                .into_actor(self)
                .map(move |removed, act, _ctx| {
                    match removed {
                        Ok(dropped) => {
                            tracing::warn!(sink = %name, dropped_events = dropped, "sink removed from the configuration; its delivery record is dropped, with {dropped} event(s) it had not delivered or held as failed");
                            telemetry::sink_backlog(&name, 0, 0.0);
                        }
                        Err(e) => {
                            tracing::error!(sink = %name, error = %e, "the removed sink's record could not be dropped; the next start tries again")
                        }
                    }
                    act.sinks_stopping.remove(&name);
                    if act.live.settings().sinks.contains_key(&name) {
                        act.start_sink(&name);
                    }
                }),
        );
    }

    /// Applies a reload to the sinks; returns (added, removed, restarted).
    fn reload_sinks(
        &mut self,
        old: &Settings,
        new: &Settings,
        ctx: &mut Context<Self>,
    ) -> (Vec<String>, Vec<String>, Vec<String>) {
        let base = sink_set::api_base(new, self.listen);
        let running: BTreeMap<String, RunningSink<'_>> = self
            .sinks
            .iter()
            .map(|(name, h)| {
                (
                    name.clone(),
                    RunningSink {
                        settings: &h.settings,
                        api_base: &h.api_base,
                        secret_digest: h.secret_digest,
                    },
                )
            })
            .collect();
        let plan = sink_set::plan_reload(old, new, &running, &base, sink_set::secret_digest);
        // A sink stopping for an earlier reload is not running, so the plan starts it: it
        // starts once stopped (or, removed meanwhile, its record is dropped then).
        let was_configured = |n: &String| old.sinks.contains_key(n);
        let added: Vec<String> = plan
            .start
            .iter()
            .filter(|n| !was_configured(n))
            .cloned()
            .collect();
        let mut removed = plan.remove.clone();
        for name in &plan.start {
            self.start_sink(name);
        }
        for name in plan.remove.iter().chain(&plan.restart) {
            self.stop_sink(name, ctx);
        }
        // Configured before, gone now, and not running (it could not start): dropped too.
        for name in old.sinks.keys() {
            if !new.sinks.contains_key(name)
                && !removed.contains(name)
                && !self.sinks_stopping.contains(name)
            {
                self.sinks_failed.remove(name);
                self.sinks_stopping.insert(name.clone());
                self.remove_sink_record(name.clone(), ctx);
                removed.push(name.clone());
            }
        }
        (added, removed, plan.restart)
    }

    /// Prunes the outbox now and again: every [`sink_set::prune_every`] of the retention in
    /// force, off the actor's thread.
    fn schedule_prune(&self, ctx: &mut Context<Self>) {
        let retention = self.live.settings().node.events_retention;
        let schedule = self.prune_schedule;
        ctx.run_later(sink_set::prune_every(retention), move |act, ctx| {
            if act.stopping || act.prune_schedule != schedule {
                return;
            }
            let settings = act.live.settings();
            let sinks: Vec<String> = settings.sinks.keys().cloned().collect();
            let retention = settings.node.events_retention;
            let store = act.store.clone();
            ctx.spawn(
                async move {
                    tokio::task::spawn_blocking(move || sink_set::prune(&store, &sinks, retention))
                        .await
                        .unwrap_or(0)
                }
                .into_actor(act)
                .map(move |pruned, act, ctx| {
                    if pruned > 0 {
                        tracing::debug!(events = pruned, "outbox pruned");
                    }
                    // A reload meanwhile has started a schedule of its own.
                    if act.prune_schedule == schedule {
                        act.schedule_prune(ctx);
                    }
                }),
            );
        });
    }

    /// The worker of `sink` to send a command to, or why there is none.
    fn sink_commands(
        &self,
        sink: &str,
    ) -> Result<tokio::sync::mpsc::Sender<crate::sinks::engine::Command>, CommandError> {
        if let Some(handle) = self.sinks.get(sink) {
            return Ok(handle.commands());
        }
        let configured = self.live.settings().sinks.contains_key(sink);
        if !configured {
            return Err(CommandError::UnknownSink {
                sink: sink.to_string(),
            });
        }
        let why = if self.stopping {
            "the node is stopping".to_string()
        } else if self.once {
            "`run --once` delivers nothing".to_string()
        } else if self.sinks_stopping.contains(sink) {
            "it is restarting after a reload; ask again in a moment".to_string()
        } else {
            self.sinks_failed
                .get(sink)
                .cloned()
                .unwrap_or_else(|| "it has not started".to_string())
        };
        Err(CommandError::NotRunning {
            sink: sink.to_string(),
            why,
        })
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.record_state_changes(ctx);
        let settings = self.live.settings();
        register_providers(&settings);
        self.warn_horizons();
        // Horizons move with time: look again every day.
        ctx.run_interval(Duration::from_secs(24 * 3600), |act, _| act.warn_horizons());
        for (name, source) in &settings.sources {
            if source.enabled {
                self.start_collector(name, ctx);
            } else {
                telemetry::register_source(name);
                status::set_state(name, SourceState::Disabled);
            }
        }
        // `run --once` collects and exits: its events wait for the next `run`.
        if !self.once {
            self.start_sinks(ctx);
            self.schedule_prune(ctx);
        }
        tracing::info!(
            sources = self.collectors.len(),
            sinks = self.sinks.len(),
            "supervisor started"
        );
        self.once_finished();
    }
}

/// Registers every provider's metrics, with its client secret's expiry when configured.
fn register_providers(settings: &Settings) {
    for (name, provider) in &settings.providers {
        telemetry::register_provider(name);
        if let Some(exp) = crate::auth::horizons::client_secret_expiry(provider) {
            telemetry::client_secret_expiry(name, exp);
        }
    }
}

/// `run --once`: answers, once every source's session has ended, with each one's result.
#[derive(Message)]
#[rtype(result = "BTreeMap<String, Result<(), String>>")]
pub struct WaitOnce;

impl Handler<WaitOnce> for Supervisor {
    type Result = ResponseFuture<BTreeMap<String, Result<(), String>>>;

    fn handle(&mut self, _msg: WaitOnce, _ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.once_done = Some(tx);
        self.once_finished();
        Box::pin(async move { rx.await.unwrap_or_default() })
    }
}

/// Applies a new, already validated configuration. Errors (a `[tls]` or provider setting
/// that cannot be built) leave the running configuration as it was.
#[derive(Message)]
#[rtype(result = "Result<ReloadReport, Vec<String>>")]
pub struct Reload {
    pub settings: Settings,
}

impl Handler<Reload> for Supervisor {
    type Result = Result<ReloadReport, Vec<String>>;

    /// Carries out [`plan_reload`]'s plan: what can fail is built first, then applied.
    fn handle(&mut self, msg: Reload, ctx: &mut Context<Self>) -> Self::Result {
        if self.stopping {
            return Err(vec!["the node is stopping; reload not applied".into()]);
        }
        if self.once {
            return Err(vec![
                "`run --once` does not reload; the next run reads the file".into(),
            ]);
        }
        let new = Arc::new(msg.settings);
        let Current {
            settings: old,
            connector,
        } = self.live.get();
        let running = self.collectors.keys().cloned().collect();
        let plan = plan_reload(&old, &new, &running);
        let nn = &new.node;
        let connector = if plan.new_connector {
            Connector::new(&new.tls, nn.connect_timeout, nn.read_timeout)
                .map_err(|e| vec![e.to_string()])?
        } else {
            connector
        };
        let service =
            TokenService::new(new.clone(), self.store.clone()).map_err(|e| vec![e.to_string()])?;
        // From here on nothing fails: apply.
        if plan.new_session_limit {
            self.sessions = Arc::new(Semaphore::new(nn.max_sessions));
        }
        self.store.set_min_free_bytes(nn.min_free_disk_bytes);
        self.store.set_compression(nn.store_compression);
        self.tokens.do_send(SetTokenService(Arc::new(service)));
        register_providers(&new);
        self.live.set(Current {
            settings: new.clone(),
            connector,
        });
        for (name, action) in plan.actions {
            match action {
                SourceAction::Disable | SourceAction::Forget => {
                    if let Some(addr) = self.collectors.get(&name) {
                        addr.do_send(StopCollector);
                        self.restart_after_stop.remove(&name);
                    }
                    if action == SourceAction::Disable {
                        telemetry::register_source(&name);
                        status::set_state(&name, SourceState::Disabled);
                    } else {
                        status::remove(&name);
                    }
                }
                SourceAction::StartAfterStop => {
                    self.restart_after_stop.insert(name);
                }
                SourceAction::Restart => {
                    if let Some(addr) = self.collectors.get(&name) {
                        addr.do_send(StopCollector);
                    }
                    self.restart_after_stop.insert(name);
                }
                SourceAction::Start => {
                    self.restarts.remove(&name);
                    self.start_collector(&name, ctx);
                }
                SourceAction::Keep => {}
            }
        }
        let mut report = plan.report;
        let (added, removed, restarted) = self.reload_sinks(&old, &new, ctx);
        if old.node.events_retention != nn.events_retention {
            self.prune_schedule += 1;
            self.schedule_prune(ctx);
        }
        report.sinks_added = added;
        report.sinks_removed = removed;
        report.sinks_restarted = restarted;
        tracing::info!(
            added = ?report.added,
            removed = ?report.removed,
            restarted = ?report.restarted,
            unchanged = report.unchanged.len(),
            sinks_added = ?report.sinks_added,
            sinks_removed = ?report.sinks_removed,
            sinks_restarted = ?report.sinks_restarted,
            "configuration reloaded"
        );
        if !report.needs_restart.is_empty() {
            tracing::warn!(keys = ?report.needs_restart, "changed keys take effect only after a restart of the node");
        }
        Ok(report)
    }
}

/// Reads the config file again (with the same environment overrides) and applies it. An
/// invalid file is refused with every error listed; the running configuration stays.
pub async fn reload_from_file(
    supervisor: &Recipient<Reload>,
    live: &Live,
) -> Result<ReloadReport, Vec<String>> {
    let Some(path) = live.path.clone() else {
        return Err(vec!["the node was not started from a config file".into()]);
    };
    let settings = crate::config::load(&path)
        .map_err(|errors| errors.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let missing = crate::config::check_secrets(&settings);
    if !missing.is_empty() {
        return Err(missing.iter().map(|e| e.to_string()).collect());
    }
    supervisor
        .send(Reload { settings })
        .await
        .map_err(|e| vec![format!("supervisor unavailable: {e}")])?
}

impl Handler<CollectorStopped> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: CollectorStopped, ctx: &mut Context<Self>) {
        self.collectors.remove(&msg.source);
        if self.once {
            let result = match msg.reason {
                StopReason::Once(r) => r,
                StopReason::NeedsReauth(why) => Err(why),
                StopReason::Failed(why) => Err(why),
                StopReason::Shutdown => Err("stopped before its session ended".into()),
            };
            self.once_results.insert(msg.source, result);
            self.once_finished();
            return;
        }
        if self.restart_after_stop.remove(&msg.source) {
            if !self.stopping && enabled(&self.live.settings(), &msg.source) {
                self.restarts.remove(&msg.source);
                self.start_collector(&msg.source, ctx);
            }
            return;
        }
        if self.stopping {
            if self.collectors.is_empty()
                && let Some(tx) = self.all_stopped.take()
            {
                let _ = tx.send(());
            }
            return;
        }
        let (why, detail) = match &msg.reason {
            // Parked: restarted by ReauthorizedSource, never by a timer.
            StopReason::NeedsReauth(_) => (Stopped::NeedsReauth, ""),
            StopReason::Shutdown | StopReason::Once(_) => (Stopped::Asked, ""),
            StopReason::Failed(why) => (Stopped::Failed, why.as_str()),
        };
        let restarts = if why == Stopped::Failed {
            let n = self.restarts.entry(msg.source.clone()).or_insert(0);
            *n += 1;
            *n
        } else {
            0
        };
        if let Restart::After(delay) = restart(why, restarts, jitter()) {
            tracing::error!(source = %msg.source, error = %detail, delay_ms = delay.as_millis() as u64, "collector failed; restarting");
            let source = msg.source;
            ctx.run_later(delay, move |act, ctx| {
                if !act.stopping && !act.collectors.contains_key(&source) {
                    act.start_collector(&source, ctx);
                }
            });
        }
    }
}

/// A source got a new grant (import or authorize through the API): restart its
/// collector if it was parked.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct ReauthorizedSource {
    pub source: String,
}

impl Handler<ReauthorizedSource> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ReauthorizedSource, ctx: &mut Context<Self>) {
        if !self.stopping
            && !self.collectors.contains_key(&msg.source)
            && enabled(&self.live.settings(), &msg.source)
        {
            tracing::info!(source = %msg.source, "source re-authorized; collection resumes");
            self.start_collector(&msg.source, ctx);
        }
    }
}

/// What the HTTP API and the signal handler may ask of the running node: the messages they
/// send, not the actors' addresses, so neither depends on the actors themselves.
#[derive(Clone)]
pub struct NodeHandle {
    pub reload: Recipient<Reload>,
    pub access_token: Recipient<GetAccessToken>,
    pub import: Recipient<ImportRefreshToken>,
    pub reauthorized: Recipient<ReauthorizedSource>,
    /// The node's session permits (`node.max_sessions`), for sessions opened outside a
    /// collector (test-login).
    pub sessions: Recipient<SessionPermits>,
    /// `sinks retry`.
    pub retry_sink: Recipient<RetrySink>,
    /// `sinks replay`.
    pub replay_sink: Recipient<ReplaySink>,
}

impl NodeHandle {
    /// Whether the supervisor still runs.
    pub fn connected(&self) -> bool {
        self.reload.connected()
    }
}

impl Supervisor {
    /// Starts the supervisor; its address (for those who start and stop it) and the handle
    /// the API uses.
    pub fn start_with_handle(self) -> (Addr<Supervisor>, NodeHandle) {
        let tokens = self.tokens.clone();
        let addr = self.start();
        let handle = NodeHandle {
            reload: addr.clone().recipient(),
            access_token: tokens.clone().recipient(),
            import: tokens.recipient(),
            reauthorized: addr.clone().recipient(),
            sessions: addr.clone().recipient(),
            retry_sink: addr.clone().recipient(),
            replay_sink: addr.clone().recipient(),
        };
        (addr, handle)
    }
}

/// The semaphore every IMAP/POP3 session takes a permit of (`node.max_sessions`; a reload
/// that changes it replaces it).
#[derive(Message)]
#[rtype(result = "Arc<Semaphore>")]
pub struct SessionPermits;

impl Handler<SessionPermits> for Supervisor {
    type Result = MessageResult<SessionPermits>;

    fn handle(&mut self, _msg: SessionPermits, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.sessions.clone())
    }
}

/// `sinks retry SINK`: every event the sink holds as failed gets another attempt.
#[derive(Message, Debug)]
#[rtype(result = "Result<RetryReport, CommandError>")]
pub struct RetrySink {
    pub sink: String,
}

impl Handler<RetrySink> for Supervisor {
    type Result = ResponseFuture<Result<RetryReport, CommandError>>;

    fn handle(&mut self, msg: RetrySink, _ctx: &mut Context<Self>) -> Self::Result {
        let commands = self.sink_commands(&msg.sink);
        Box::pin(async move { SinkHandle::retry(commands?, msg.sink).await })
    }
}

/// `sinks replay SINK --from SEQ`: every kept event from `from` on is delivered again.
#[derive(Message, Debug)]
#[rtype(result = "Result<ReplayReport, CommandError>")]
pub struct ReplaySink {
    pub sink: String,
    pub from: u64,
}

impl Handler<ReplaySink> for Supervisor {
    type Result = ResponseFuture<Result<ReplayReport, CommandError>>;

    fn handle(&mut self, msg: ReplaySink, _ctx: &mut Context<Self>) -> Self::Result {
        let commands = self.sink_commands(&msg.sink);
        let retention = self.live.settings().node.events_retention.as_secs();
        Box::pin(async move { SinkHandle::replay(commands?, msg.sink, msg.from, retention).await })
    }
}

/// Stops every collector and sink and waits (bounded) for them to finish the message or
/// delivery in hand.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: Shutdown, _ctx: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.collectors.is_empty() {
            let _ = tx.send(());
        } else {
            self.all_stopped = Some(tx);
            for addr in self.collectors.values() {
                addr.do_send(StopCollector);
            }
        }
        let sinks: Vec<tokio::task::JoinHandle<()>> =
            self.sinks.drain().map(|(_, h)| h.stop()).collect();
        let store = self.store.clone();
        Box::pin(
            async move {
                // Collectors end between messages (each store write is one transaction);
                // a server that hangs must not hold the node forever.
                if tokio::time::timeout(Duration::from_secs(30), rx)
                    .await
                    .is_err()
                {
                    tracing::warn!("collectors did not stop within 30s; stopping anyway");
                }
                // Sink workers give deliveries in flight a few seconds, then record what
                // is done; anything cut off is delivered again after the restart.
                let all = futures_util::future::join_all(sinks);
                if tokio::time::timeout(Duration::from_secs(30), all)
                    .await
                    .is_err()
                {
                    tracing::warn!("sinks did not stop within 30s; stopping anyway");
                }
                if let Err(e) = store.flush().await {
                    tracing::error!(error = %e, "final store flush failed");
                }
            }
            .into_actor(self),
        )
    }
}

/// Why a refresh token was not imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The provider refused the token, or could not be reached (its words).
    #[error(transparent)]
    Token(#[from] crate::auth::TokenError),
    /// The node is stopping: its token manager no longer takes messages.
    #[error("the node's token manager is not running: {0}")]
    NodeStopping(#[from] actix::MailboxError),
}

impl ImportError {
    pub fn kind(&self) -> telemetry::ErrorKind {
        match self {
            ImportError::Token(e) => e.kind(),
            ImportError::NodeStopping(_) => telemetry::ErrorKind::Token,
        }
    }
}

/// Imports a refresh token through the TokenManager and, on success, resumes the source.
pub async fn import_and_resume(
    node: &NodeHandle,
    source: String,
    refresh_token: crate::secret::Secret,
    identity: Option<String>,
) -> Result<crate::auth::AccessToken, ImportError> {
    let result = node
        .import
        .send(ImportRefreshToken {
            source: source.clone(),
            refresh_token,
            identity,
        })
        .await??;
    node.reauthorized.do_send(ReauthorizedSource { source });
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Event, EventKind};

    /// A source whose server refuses connections goes from starting to degraded: the node
    /// writes that as a `source.state_changed` event with the error as its reason. A
    /// disabled source and a source of no node of this store say nothing.
    #[actix_rt::test]
    async fn source_state_changes_become_outbox_events() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("pw"), "pw").unwrap();
        let text = format!(
            "[node]\ndata_dir = \"{data}\"\nsecret_key_file = \"{data}/secret.key\"\n\
             [sources.supervisor-test-refused]\nprotocol = \"imap\"\nhost = \"127.0.0.1\"\nport = 1\n\
             username = \"u\"\nauth = \"password\"\npassword_file = \"{pw}\"\n\
             [sources.supervisor-test-off]\nprotocol = \"imap\"\nhost = \"127.0.0.1\"\nport = 1\n\
             username = \"u\"\nauth = \"password\"\npassword_file = \"{pw}\"\nenabled = false\n",
            data = d.join("data").display(),
            pw = d.join("pw").display(),
        );
        let settings = Arc::new(crate::config::load_str(&text, &Default::default()).unwrap());
        let store =
            Arc::new(Store::open(&settings.node.data_dir, &settings.node.secret_key_file).unwrap());
        let connector = Connector::new(
            &settings.tls,
            Duration::from_secs(2),
            Duration::from_secs(2),
        )
        .unwrap();
        let live = Live::new(settings.clone(), connector, None);
        let tokens = Arc::new(TokenService::new(settings, store.clone()).unwrap());
        let watch = store.event_watch();
        // Every event from `after` on, once one of them is from `source`.
        let until = |after: u64, source: &'static str| {
            let store = store.clone();
            let mut watch = watch.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(30), async {
                    loop {
                        let events: Vec<Event> = store.events_after(after, 100).unwrap();
                        if events.iter().any(|e| e.source == source) {
                            return events;
                        }
                        watch.changed().await.unwrap();
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("no event of {source} within 30 s"))
            }
        };
        let _node = Supervisor::new(live, store.clone(), tokens).start();
        let changes = until(0, "supervisor-test-refused").await;
        assert_eq!(changes.len(), 1, "{changes:?}");
        let e = &changes[0];
        assert_eq!(e.kind, EventKind::SourceStateChanged);
        assert_eq!(e.source, "supervisor-test-refused");
        let change = e.state.as_ref().unwrap();
        assert_eq!(
            (change.from.as_str(), change.to.as_str()),
            ("starting", "degraded")
        );
        let reason = change.reason.as_deref().unwrap_or_default();
        assert!(!reason.is_empty(), "{change:?}");
        // Changes are written in the order they happen: once a later change of this node's
        // source is written, an earlier one of a source it does not have would have been.
        status::set_state("supervisor-test-elsewhere", SourceState::Degraded);
        status::set_state("supervisor-test-refused", SourceState::Healthy);
        let later = until(e.seq, "supervisor-test-refused").await;
        assert!(
            later.iter().all(|e| e.source == "supervisor-test-refused"),
            "{later:?}"
        );
        let change = later[0].state.as_ref().unwrap();
        assert_eq!(
            (
                change.from.as_str(),
                change.to.as_str(),
                change.reason.as_deref()
            ),
            ("degraded", "healthy", None)
        );
        status::remove("supervisor-test-elsewhere");
    }
}
