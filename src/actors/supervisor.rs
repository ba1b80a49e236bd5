//! The Supervisor actor: starts the TokenManager and one Collector per enabled source,
//! restarts a collector that ended unexpectedly (capped, jittered backoff), never restarts
//! one whose source needs re-authorization until it is re-authorized, and stops everything
//! on shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::Semaphore;

use crate::auth::TokenService;
use crate::config::Settings;
use crate::net::Connector;
use crate::store::Store;
use crate::telemetry::{self, SourceState};

use super::collector::{
    Collector, CollectorDeps, CollectorStopped, StopCollector, StopReason, retry_delay,
};
use super::registry::Registry;
use super::token_manager::{
    GetAccessToken, ImportRefreshToken, InvalidateAccessToken, TokenManager,
};

pub struct Supervisor {
    settings: Arc<Settings>,
    store: Arc<Store>,
    connector: Connector,
    registry: Registry,
    sessions: Arc<Semaphore>,
    tokens: Addr<TokenManager>,
    collectors: HashMap<String, Addr<Collector>>,
    /// Unexpected stops per source, for the restart backoff.
    restarts: HashMap<String, u32>,
    stopping: bool,
    /// Fired when the last collector has stopped during shutdown.
    all_stopped: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Supervisor {
    pub fn new(
        settings: Arc<Settings>,
        store: Arc<Store>,
        connector: Connector,
        registry: Registry,
        token_service: Arc<TokenService>,
    ) -> Self {
        let tokens = TokenManager::new(token_service).start();
        Supervisor {
            sessions: Arc::new(Semaphore::new(settings.node.max_sessions)),
            settings,
            store,
            connector,
            registry,
            tokens,
            collectors: HashMap::new(),
            restarts: HashMap::new(),
            stopping: false,
            all_stopped: None,
        }
    }

    /// Logs every expiry horizon coming up (client secrets, idle refresh tokens).
    fn warn_horizons(&self) {
        let now = chrono::Utc::now().timestamp();
        for (name, source) in &self.settings.sources {
            let crate::config::SourceAuth::OAuth2 { provider, .. } = &source.auth else {
                continue;
            };
            let Some(p) = self.settings.providers.get(provider) else {
                continue;
            };
            let record = self.store.token(name).ok().flatten();
            for w in crate::auth::horizons::warnings(p, record.as_ref(), now) {
                tracing::warn!(source = %name, provider = %provider, "{w}");
            }
        }
    }

    fn start_collector(&mut self, name: &str, ctx: &mut Context<Self>) {
        let Some(source) = self.settings.sources.get(name).cloned() else {
            return;
        };
        let deps = CollectorDeps {
            source,
            store: self.store.clone(),
            connector: self.connector.clone(),
            tokens: self.tokens.clone().recipient::<GetAccessToken>(),
            invalidate: self.tokens.clone().recipient::<InvalidateAccessToken>(),
            sessions: self.sessions.clone(),
            registry: self.registry.clone(),
            token_margin: self.settings.node.token_refresh_margin,
        };
        let addr = Collector::new(deps, ctx.address().recipient()).start();
        self.collectors.insert(name.to_string(), addr);
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        for (name, provider) in &self.settings.providers {
            telemetry::register_provider(name);
            if let Some(exp) = crate::auth::horizons::client_secret_expiry(provider) {
                telemetry::client_secret_expiry(name, exp);
            }
        }
        self.warn_horizons();
        // Horizons move with time: look again every day.
        ctx.run_interval(Duration::from_secs(24 * 3600), |act, _| act.warn_horizons());
        let names: Vec<String> = self.settings.sources.keys().cloned().collect();
        for name in names {
            if self.settings.sources[&name].enabled {
                self.start_collector(&name, ctx);
            } else {
                telemetry::register_source(&name);
                self.registry.set_state(&name, SourceState::Disabled);
            }
        }
        tracing::info!(sources = self.collectors.len(), "supervisor started");
    }
}

impl Handler<CollectorStopped> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: CollectorStopped, ctx: &mut Context<Self>) {
        self.collectors.remove(&msg.source);
        if self.stopping {
            if self.collectors.is_empty()
                && let Some(tx) = self.all_stopped.take()
            {
                let _ = tx.send(());
            }
            return;
        }
        match msg.reason {
            StopReason::NeedsReauth(_) => {
                // Parked: restarted by ReauthorizedSource, never by a timer.
            }
            StopReason::Shutdown => {}
            StopReason::Failed(why) => {
                let n = self.restarts.entry(msg.source.clone()).or_insert(0);
                *n += 1;
                let delay = retry_delay(*n);
                tracing::error!(source = %msg.source, error = %why, delay_ms = delay.as_millis() as u64, "collector failed; restarting");
                ctx.run_later(delay, move |act, ctx| {
                    if !act.stopping && !act.collectors.contains_key(&msg.source) {
                        act.start_collector(&msg.source, ctx);
                    }
                });
            }
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
            && self
                .settings
                .sources
                .get(&msg.source)
                .is_some_and(|s| s.enabled)
        {
            tracing::info!(source = %msg.source, "source re-authorized; collection resumes");
            self.start_collector(&msg.source, ctx);
        }
    }
}

/// The TokenManager's address, for the HTTP API.
#[derive(Message)]
#[rtype(result = "Addr<TokenManager>")]
pub struct GetTokenManager;

impl Handler<GetTokenManager> for Supervisor {
    type Result = MessageResult<GetTokenManager>;

    fn handle(&mut self, _msg: GetTokenManager, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.tokens.clone())
    }
}

/// Stops every collector and waits (bounded) for them to finish the message in hand.
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
                if let Err(e) = store.flush().await {
                    tracing::error!(error = %e, "final store flush failed");
                }
            }
            .into_actor(self),
        )
    }
}

/// Imports a refresh token through the TokenManager and, on success, resumes the source.
pub async fn import_and_resume(
    supervisor: &Addr<Supervisor>,
    source: String,
    refresh_token: crate::secret::Secret,
    identity: Option<String>,
) -> Result<crate::auth::AccessToken, String> {
    let tokens = supervisor
        .send(GetTokenManager)
        .await
        .map_err(|e| e.to_string())?;
    let result = tokens
        .send(ImportRefreshToken {
            source: source.clone(),
            refresh_token,
            identity,
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    supervisor.do_send(ReauthorizedSource { source });
    Ok(result)
}
