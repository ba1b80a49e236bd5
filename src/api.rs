//! The node's HTTP endpoints: `/metrics` (Prometheus), `/healthz` (alive), `/readyz`
//! (store open, supervisor running, config loaded) and `/api/...`, which the CLI uses when a
//! running node holds the store (sled allows one process).

use std::sync::Arc;

use actix_web::{HttpResponse, web};
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
        let rec = store.token(name)?.unwrap_or_default();
        out.push(TokenView {
            source: name.clone(),
            provider: provider.clone(),
            has_refresh_token: rec.refresh_token.is_some(),
            access_token_expires_at: ts(rec.access_expires_at),
            refresh_token_last_used: ts(rec.refresh_token_last_used),
            refresh_token_obtained: ts(rec.refresh_token_obtained),
            needs_reauth: rec.needs_reauth.clone(),
            identity: rec.identity.clone(),
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
                    let rec = store.token(name).ok().flatten();
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
    let limit = q.limit.unwrap_or(1000).min(10_000);
    // Ids start at 0, so "no `after`" is not "after 0".
    let after = q.after;
    let items: Result<Vec<MessageMeta>, _> = state
        .store
        .iter_meta(q.source.as_deref())
        .filter(|m| m.as_ref().map_or(true, |m| after.is_none_or(|a| m.id > a)))
        .take(limit)
        .collect();
    match items {
        Ok(v) => HttpResponse::Ok().json(v),
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

async fn raw_message(state: web::Data<ApiState>, id: web::Path<u64>) -> HttpResponse {
    match state.store.raw(*id) {
        Ok(Some(raw)) => HttpResponse::Ok().content_type("message/rfc822").body(raw),
        Ok(None) => HttpResponse::NotFound().body(format!("no message {id}\n")),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

#[derive(Deserialize)]
struct ImportQuery {
    identity: Option<String>,
}

/// `POST /api/tokens/{source}/import[?identity=who]` with the refresh token as the body.
async fn import_token(
    state: web::Data<ApiState>,
    source: web::Path<String>,
    q: web::Query<ImportQuery>,
    body: String,
) -> HttpResponse {
    let token = body.trim().to_string();
    if token.is_empty() {
        return HttpResponse::BadRequest().body("empty refresh token\n");
    }
    match import_and_resume(
        &state.node,
        source.into_inner(),
        Secret::new(token),
        q.into_inner().identity,
    )
    .await
    {
        Ok(t) => HttpResponse::Ok().json(serde_json::json!({
            "access_token_expires_at": ts(Some(t.expires_at)),
        })),
        Err(e) => HttpResponse::BadRequest().body(format!("{e}\n")),
    }
}

/// `POST /api/sources/{source}/test-login`: the step-by-step check, run by the node (which
/// holds the tokens). Answers the JSON report; 200 only when a mailbox was opened.
async fn test_login(state: web::Data<ApiState>, source: web::Path<String>) -> HttpResponse {
    let name = source.into_inner();
    let current = state.live.get();
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

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/api/reload", web::post().to(reload))
        .route("/api/sources", web::get().to(sources))
        .route(
            "/api/sources/{source}/test-login",
            web::post().to(test_login),
        )
        .route("/api/tokens", web::get().to(tokens))
        .route("/api/tokens/{source}/import", web::post().to(import_token))
        .route("/api/messages", web::get().to(list_messages))
        .route("/api/messages/{id}", web::get().to(show_message))
        .route("/api/messages/{id}/raw", web::get().to(raw_message));
}
