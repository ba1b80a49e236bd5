//! The node's HTTP endpoints: `/metrics` (Prometheus), `/healthz` (alive), `/readyz`
//! (store open, supervisor running, config loaded) and `/api/...`, which the CLI uses when a
//! running node holds the store (sled allows one process).
//!
//! Who may call what is decided in [`access`] before any handler runs; the tokens are kept
//! by [`credentials`]. [`app`] puts the two together with the routes: the node and the tests
//! serve the same application.

pub mod access;
pub mod credentials;
pub mod events;
mod limits;
pub mod sinks;
#[cfg(test)]
mod tests;
pub mod tls;

pub use crate::sinks::health::SinkHealth;
pub use events::{EventView, EventsPage};
pub use sinks::{FailureView, PendingView, SinkView, sink_views};

use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::{App, HttpMessage, HttpRequest, HttpResponse, web};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};

use crate::actors::supervisor::{NodeHandle, import_and_resume};
use crate::config::Settings;
use crate::diagnose::TokenStepError;
use crate::secret::Secret;
use crate::store::{MessageMeta, Store, StoreError};
use crate::telemetry::status;

#[derive(Clone)]
pub struct ApiState {
    /// The configuration now (replaced by reloads).
    pub live: crate::config::live::Live,
    pub store: Arc<Store>,
    pub metrics: PrometheusHandle,
    /// What the API may ask of the running node.
    pub node: NodeHandle,
    /// Test-login: one at a time per source, a pause between two.
    pub test_logins: Arc<limits::TestLogins>,
    /// The long polls of `/api/events`: how many wait, and the signal that ends them when
    /// the node shuts down ([`ApiState::close`]).
    pub long_polls: Arc<limits::LongPolls>,
}

impl ApiState {
    pub fn new(
        live: crate::config::live::Live,
        store: Arc<Store>,
        metrics: PrometheusHandle,
        node: NodeHandle,
    ) -> ApiState {
        ApiState {
            live,
            store,
            metrics,
            node,
            test_logins: Arc::new(limits::TestLogins::default()),
            long_polls: Arc::new(limits::LongPolls::default()),
        }
    }

    /// The node is shutting down: requests waiting for events answer now with what they
    /// have, and later ones do not wait, so the HTTP server's graceful stop is not held up
    /// by a minute-long poll.
    pub fn close(&self) {
        self.long_polls.close();
    }
}

/// Request bodies larger than this are refused (413) before a handler sees them: the
/// largest body the API takes is a refresh token in JSON, a few kilobytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The whole HTTP application: access rules, body limits and routes.
pub fn app(
    state: ApiState,
    access: Arc<access::Access>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(state))
        .app_data(web::Data::new(access))
        .app_data(web::JsonConfig::default().limit(MAX_BODY_BYTES))
        .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
        .wrap(actix_web::middleware::from_fn(access::guard))
        .configure(routes)
}

/// Per-source view served at `/api/sources` and printed by `mailsluice status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceView {
    pub name: String,
    pub protocol: String,
    pub enabled: bool,
    pub state: String,
    pub last_success: Option<String>,
    pub last_error: Option<String>,
    pub stored_total: u64,
    pub stored_since_start: u64,
    pub backlog: u64,
    /// Sessions that succeeded / failed since the node started.
    #[serde(default)]
    pub sessions_ok: u64,
    #[serde(default)]
    pub sessions_failed: u64,
    /// When this source's collector (re)started: a reload that leaves a source unchanged
    /// leaves this alone.
    #[serde(default)]
    pub running_since: Option<String>,
    /// OAuth2: when the current access token expires and when the refresh token was last
    /// used.
    #[serde(default)]
    pub access_token_expires_at: Option<String>,
    #[serde(default)]
    pub refresh_token_last_used: Option<String>,
    /// Expiry horizons coming up (client secret, idle refresh token), with the action.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Token view served at `/api/tokens` and printed by `mailsluice tokens status`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct TokenView {
    pub source: String,
    pub provider: String,
    pub has_refresh_token: bool,
    pub access_token_expires_at: Option<String>,
    pub refresh_token_last_used: Option<String>,
    pub refresh_token_obtained: Option<String>,
    pub needs_reauth: Option<String>,
    pub state: Option<String>,
    /// Who consented (identity pinning), when known.
    pub identity: Option<String>,
    /// Where `identity` comes from: the provider's answer, or the importer's word.
    #[serde(default)]
    pub identity_source: Option<crate::store::IdentitySource>,
    /// Expiry horizons coming up (client secret, idle refresh token), with the action.
    #[serde(default)]
    pub warnings: Vec<String>,
}

fn ts(unix: Option<i64>) -> Option<String> {
    unix.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|d| d.to_rfc3339())
}

/// Token views for every OAuth2 source (shared by the API and the offline CLI, where no
/// source has a live status).
pub fn token_views(settings: &Settings, store: &Store) -> Result<Vec<TokenView>, StoreError> {
    let mut out = Vec::new();
    for (name, src) in &settings.sources {
        let crate::config::SourceAuth::OAuth2 { provider, .. } = &src.auth else {
            continue;
        };
        let rec = crate::auth::stored_grant(settings, store, name)?.unwrap_or_default();
        out.push(TokenView {
            source: name.clone(),
            provider: provider.clone(),
            has_refresh_token: rec.refresh_token.is_some(),
            access_token_expires_at: ts(rec.access_expires_at),
            refresh_token_last_used: ts(rec.refresh_token_last_used),
            refresh_token_obtained: ts(rec.refresh_token_obtained),
            needs_reauth: rec.needs_reauth.clone(),
            identity: rec.identity.clone(),
            identity_source: rec.identity_source,
            warnings: settings
                .providers
                .get(provider)
                .map(|p| {
                    crate::auth::horizons::warnings(p, Some(&rec), chrono::Utc::now().timestamp())
                })
                .unwrap_or_default(),
            state: status::get(name).map(|s| s.state.as_str().to_string()),
        });
    }
    Ok(out)
}

/// Source views (shared by the API and the offline CLI, where no source has a live status).
pub fn source_views(settings: &Settings, store: &Store) -> Result<Vec<SourceView>, StoreError> {
    let counts = store.counts()?;
    let live = status::snapshot();
    let now = chrono::Utc::now().timestamp();
    Ok(settings
        .sources
        .iter()
        .map(|(name, src)| {
            let st = live.get(name);
            let (token, warnings) = match &src.auth {
                crate::config::SourceAuth::OAuth2 { provider, .. } => {
                    let rec = crate::auth::stored_grant(settings, store, name)
                        .ok()
                        .flatten();
                    let warnings = settings
                        .providers
                        .get(provider)
                        .map(|p| crate::auth::horizons::warnings(p, rec.as_ref(), now))
                        .unwrap_or_default();
                    (rec, warnings)
                }
                crate::config::SourceAuth::Password { .. } => (None, Vec::new()),
            };
            SourceView {
                name: name.clone(),
                protocol: format!("{:?}", src.protocol).to_lowercase(),
                enabled: src.enabled,
                state: st.map(|s| s.state.as_str().to_string()).unwrap_or_else(|| {
                    if src.enabled {
                        "not running"
                    } else {
                        "disabled"
                    }
                    .into()
                }),
                last_success: st.and_then(|s| s.last_success.clone()),
                last_error: st.and_then(|s| s.last_error.clone()),
                stored_total: counts.get(name).copied().unwrap_or(0),
                stored_since_start: st.map_or(0, |s| s.stored_since_start),
                backlog: st.map_or(0, |s| s.backlog()),
                sessions_ok: st.map_or(0, |s| s.sessions_ok),
                sessions_failed: st.map_or(0, |s| s.sessions_failed),
                running_since: st.and_then(|s| s.running_since.clone()),
                access_token_expires_at: token.as_ref().and_then(|t| ts(t.access_expires_at)),
                refresh_token_last_used: token.as_ref().and_then(|t| ts(t.refresh_token_last_used)),
                warnings,
            }
        })
        .collect())
}

async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    status::publish_gauges();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok\n")
}

/// Ready when the store answers, the supervisor runs and a configuration is loaded (at
/// least one source, or none configured on purpose: an empty node is ready to be reloaded).
async fn readyz(state: web::Data<ApiState>) -> HttpResponse {
    let store_ok = state.store.counts().is_ok();
    let supervisor_ok = state.node.connected();
    let config_loaded = state.live.path.is_some();
    if store_ok && supervisor_ok && config_loaded {
        HttpResponse::Ok().body("ready\n")
    } else {
        HttpResponse::ServiceUnavailable().body(format!(
            "not ready: store_open={store_ok} supervisor_running={supervisor_ok} config_loaded={config_loaded}\n"
        ))
    }
}

/// `POST /api/reload`: re-reads the config file and applies it (as SIGHUP does). 200 with
/// what changed; 422 with every error when the new configuration is refused (the running
/// one stays).
async fn reload(state: web::Data<ApiState>) -> HttpResponse {
    match crate::actors::supervisor::reload_from_file(&state.node.reload, &state.live).await {
        Ok(report) => HttpResponse::Ok().json(report),
        Err(errors) => {
            HttpResponse::UnprocessableEntity().json(serde_json::json!({ "errors": errors }))
        }
    }
}

async fn sources(state: web::Data<ApiState>) -> HttpResponse {
    match source_views(&state.live.settings(), &state.store) {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

async fn tokens(state: web::Data<ApiState>) -> HttpResponse {
    match token_views(&state.live.settings(), &state.store) {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    source: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

async fn list_messages(state: web::Data<ApiState>, q: web::Query<ListQuery>) -> HttpResponse {
    let limit = q
        .limit
        .unwrap_or(limits::PAGE_DEFAULT)
        .min(limits::PAGE_MAX);
    // Ids start at 0, so "no `after`" is not "after 0".
    let from = match q.after {
        None => 0,
        Some(a) => match a.checked_add(1) {
            Some(from) => from,
            None => return HttpResponse::Ok().json(Vec::<MessageMeta>::new()),
        },
    };
    let store = state.store.clone();
    let source = q.source.clone();
    let page = web::block(move || {
        limits::page(
            store.iter_meta_from(source.as_deref(), from),
            limit,
            limits::PAGE_MAX_BYTES,
        )
    })
    .await;
    match page {
        Ok(Ok(body)) => HttpResponse::Ok()
            .content_type("application/json")
            .body(body),
        Ok(Err(e)) => HttpResponse::InternalServerError().body(e.to_string()),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

async fn show_message(state: web::Data<ApiState>, id: web::Path<u64>) -> HttpResponse {
    match state.store.meta(*id) {
        Ok(Some(m)) => HttpResponse::Ok().json(m),
        Ok(None) => HttpResponse::NotFound().body(format!("no message {id}\n")),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

/// Bytes read from the store per piece of a streamed body.
const STREAM_PIECE: usize = 64 * 1024;

/// `GET /api/messages/{id}/raw`: the bytes exactly as received, streamed: a thread reads
/// the store a piece at a time into a channel of two pieces, so a large message costs the
/// node about 128 KiB however large it is, and a slow reader slows the thread, not memory.
async fn raw_message(state: web::Data<ApiState>, id: web::Path<u64>) -> HttpResponse {
    let id = *id;
    let store = state.store.clone();
    let opened = web::block(move || store.raw_reader(id)).await;
    let mut reader = match opened {
        Ok(Ok(Some(reader))) => reader,
        Ok(Ok(None)) => return HttpResponse::NotFound().body(format!("no message {id}\n")),
        Ok(Err(e)) => return HttpResponse::InternalServerError().body(e.to_string()),
        Err(e) => return HttpResponse::InternalServerError().body(e.to_string()),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<web::Bytes, std::io::Error>>(2);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        loop {
            let mut piece = vec![0u8; STREAM_PIECE];
            let item = match reader.read(&mut piece) {
                Ok(0) => break,
                Ok(n) => {
                    piece.truncate(n);
                    Ok(web::Bytes::from(piece))
                }
                Err(e) => {
                    tracing::warn!(message = id, error = %e, "reading a stored message failed mid-stream");
                    Err(e)
                }
            };
            let failed = item.is_err();
            // The client went away: stop reading.
            if tx.blocking_send(item).is_err() || failed {
                break;
            }
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    HttpResponse::Ok()
        .content_type("message/rfc822")
        .streaming(body)
}

/// The body of `POST /api/tokens/{source}/import`.
#[derive(Deserialize)]
struct ImportBody {
    refresh_token: Secret,
    /// Who consented, in the caller's words (the provider's answer, when it says, wins).
    identity: Option<String>,
}

/// `POST /api/tokens/{source}/import` with `{"refresh_token": "...", "identity": "..."}`.
async fn import_token(
    state: web::Data<ApiState>,
    source: web::Path<String>,
    req: HttpRequest,
    body: web::Json<ImportBody>,
) -> HttpResponse {
    let body = body.into_inner();
    let token = body.refresh_token.expose().trim();
    if token.is_empty() {
        return HttpResponse::BadRequest().json(serde_json::json!({
            "error": "empty refresh token"
        }));
    }
    let token = Secret::new(token.to_owned());
    let source = source.into_inner();
    if let Some(caller) = req.extensions().get::<credentials::Caller>() {
        tracing::info!(source = %source, caller = %caller.name, "refresh token import asked over the API");
    }
    match import_and_resume(&state.node, source, token, body.identity).await {
        Ok(t) => HttpResponse::Ok().json(serde_json::json!({
            "access_token_expires_at": ts(Some(t.expires_at)),
        })),
        Err(e) => HttpResponse::BadRequest().json(serde_json::json!({ "error": e.to_string() })),
    }
}

/// `POST /api/sources/{source}/test-login`: the step-by-step check, run by the node (which
/// holds the tokens). Answers the JSON report; 200 only when a mailbox was opened.
///
/// A login is a real session at the provider, so this is bounded like the collectors' own:
/// it takes one of `node.max_sessions`' permits, runs at most once at a time per source and
/// not again within [`limits::TEST_LOGIN_INTERVAL`] (429 with `Retry-After` otherwise); a
/// loop of requests cannot get the mailbox throttled or locked.
async fn test_login(state: web::Data<ApiState>, source: web::Path<String>) -> HttpResponse {
    let name = source.into_inner();
    let current = state.live.get();
    if !current.settings.sources.contains_key(&name) {
        return HttpResponse::NotFound().json(serde_json::json!({
            "error": format!("no source {name:?} in the configuration")
        }));
    }
    let _turn = match state.test_logins.begin(&name, std::time::Instant::now()) {
        Ok(turn) => turn,
        Err(wait) => {
            return HttpResponse::TooManyRequests()
                .insert_header(("Retry-After", wait.as_secs().max(1).to_string()))
                .json(serde_json::json!({
                    "error": format!(
                        "a test-login of {name} ran or runs less than {} s ago; retry later",
                        limits::TEST_LOGIN_INTERVAL.as_secs()
                    )
                }));
        }
    };
    let permits = match state
        .node
        .sessions
        .send(crate::actors::supervisor::SessionPermits)
        .await
    {
        Ok(permits) => permits,
        Err(e) => return HttpResponse::ServiceUnavailable().body(e.to_string()),
    };
    let Ok(_permit) = permits.acquire_owned().await else {
        return HttpResponse::ServiceUnavailable().body("the node is shutting down\n");
    };
    let token = match current.settings.sources.get(&name).map(|s| &s.auth) {
        Some(crate::config::SourceAuth::OAuth2 { .. }) => {
            let asked = state
                .node
                .access_token
                .send(crate::actors::token_manager::GetAccessToken {
                    source: name.clone(),
                })
                .await;
            Some(match asked {
                Ok(answer) => answer.map_err(TokenStepError::from),
                Err(unanswered) => Err(TokenStepError::from(unanswered)),
            })
        }
        _ => None,
    };
    let report =
        crate::diagnose::test_login(&current.settings, &current.connector, &name, token).await;
    if report.mailbox_opened {
        HttpResponse::Ok().json(report)
    } else {
        HttpResponse::UnprocessableEntity().json(report)
    }
}

/// The answer to a sink command that was not carried out: 404 for a sink not configured,
/// 503 for one not running now, 422 for a replay asked from a pruned event or past the
/// last, 500 for the store.
fn sink_refusal(e: &crate::sinks::engine::CommandError) -> HttpResponse {
    use crate::sinks::engine::CommandError as E;
    let body = serde_json::json!({ "error": e.to_string() });
    match e {
        E::UnknownSink { .. } => HttpResponse::NotFound().json(body),
        E::NotRunning { .. } => HttpResponse::ServiceUnavailable().json(body),
        E::BelowRetained { .. } | E::PastEnd { .. } => {
            HttpResponse::UnprocessableEntity().json(body)
        }
        E::Store { .. } => HttpResponse::InternalServerError().json(body),
    }
}

/// `POST /api/sinks/{sink}/retry`: every event the sink holds as failed gets another
/// attempt. 200 with their seqs.
async fn retry_sink(
    state: web::Data<ApiState>,
    sink: web::Path<String>,
    req: HttpRequest,
) -> HttpResponse {
    let sink = sink.into_inner();
    if let Some(caller) = req.extensions().get::<credentials::Caller>() {
        tracing::info!(sink = %sink, caller = %caller.name, "sink retry asked over the API");
    }
    let asked = crate::actors::supervisor::RetrySink { sink };
    match state.node.retry_sink.send(asked).await {
        Ok(Ok(report)) => HttpResponse::Ok().json(report),
        Ok(Err(e)) => sink_refusal(&e),
        Err(e) => HttpResponse::ServiceUnavailable().body(e.to_string()),
    }
}

/// The body of `POST /api/sinks/{sink}/replay`.
#[derive(Deserialize)]
struct ReplayBody {
    /// The first event to deliver again.
    from: u64,
}

/// `POST /api/sinks/{sink}/replay` with `{"from": SEQ}`: every kept event from SEQ on is
/// delivered again. 200 with the range; 422 when SEQ was pruned (the answer names the
/// oldest event kept and `node.events_retention_secs`) or is past the last event.
async fn replay_sink(
    state: web::Data<ApiState>,
    sink: web::Path<String>,
    req: HttpRequest,
    body: web::Json<ReplayBody>,
) -> HttpResponse {
    let sink = sink.into_inner();
    if let Some(caller) = req.extensions().get::<credentials::Caller>() {
        tracing::info!(sink = %sink, from = body.from, caller = %caller.name, "sink replay asked over the API");
    }
    let asked = crate::actors::supervisor::ReplaySink {
        sink,
        from: body.from,
    };
    match state.node.replay_sink.send(asked).await {
        Ok(Ok(report)) => HttpResponse::Ok().json(report),
        Ok(Err(e)) => sink_refusal(&e),
        Err(e) => HttpResponse::ServiceUnavailable().body(e.to_string()),
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/api/reload", web::post().to(reload))
        .route("/api/sinks/{sink}/retry", web::post().to(retry_sink))
        .route("/api/sinks/{sink}/replay", web::post().to(replay_sink))
        .route("/api/sources", web::get().to(sources))
        .route(
            "/api/sources/{source}/test-login",
            web::post().to(test_login),
        )
        .route("/api/sinks", web::get().to(sinks::sinks))
        .route("/api/events", web::get().to(events::events))
        .route("/api/tokens", web::get().to(tokens))
        .route("/api/tokens/{source}/import", web::post().to(import_token))
        .route("/api/messages", web::get().to(list_messages))
        .route("/api/messages/{id}", web::get().to(show_message))
        .route("/api/messages/{id}/raw", web::get().to(raw_message));
}
