//! The TokenManager actor: hands out access tokens by message, with at most one refresh in
//! flight per credential. Later askers for the same credential join the in-flight request
//! and get the same result, so N collectors never make N refreshes.

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use futures_util::FutureExt;
use futures_util::future::{LocalBoxFuture, Shared};

use crate::auth::{AccessToken, TokenError, TokenService};
use crate::secret::Secret;
use crate::telemetry::{SourceState, status};

/// Asks for a valid access token for a source (sent by a collector before each session).
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<AccessToken, TokenError>")]
pub struct GetAccessToken {
    pub source: String,
}

/// Adopts a refresh token for a source once one refresh with it succeeded; a refused one
/// leaves the stored grant as it was.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<AccessToken, TokenError>")]
pub struct ImportRefreshToken {
    pub source: String,
    pub refresh_token: Secret,
    /// Who consented, when known.
    pub identity: Option<String>,
}

/// The server refused an access token that looked valid (revoked, or expired early): drop
/// it so the next ask refreshes, which tells a revoked grant (`invalid_grant`) from a
/// transient failure.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct InvalidateAccessToken {
    pub source: String,
}

/// A reload replaced the configuration: use a service built from the new one. Requests in
/// flight finish with the old one.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetTokenService(pub Arc<TokenService>);

impl Handler<SetTokenService> for TokenManager {
    type Result = ();

    fn handle(&mut self, msg: SetTokenService, _ctx: &mut Context<Self>) {
        self.service = msg.0;
    }
}

type InFlight = Shared<LocalBoxFuture<'static, Result<AccessToken, TokenError>>>;

/// A refresh the provider refused for good: the source's status says so at once, not only
/// after its collector's next session, so every view of it agrees with the stored grant. (A
/// refused import changes neither, so it is not reported here.)
fn record_refusal(source: &str, result: &Result<AccessToken, TokenError>) {
    if let Err(e) = result
        && e.needs_reauth()
    {
        status::update(source, |s| s.last_error = Some(e.to_string()));
        status::set_state(source, SourceState::NeedsReauth);
    }
}

pub struct TokenManager {
    service: Arc<TokenService>,
    /// One shared future per credential while a request is running.
    in_flight: HashMap<String, InFlight>,
}

impl TokenManager {
    pub fn new(service: Arc<TokenService>) -> Self {
        TokenManager {
            service,
            in_flight: HashMap::new(),
        }
    }

    fn join_or_start(
        &mut self,
        source: String,
        start: impl FnOnce() -> LocalBoxFuture<'static, Result<AccessToken, TokenError>>,
    ) -> InFlight {
        self.in_flight.retain(|_, f| f.peek().is_none());
        self.in_flight
            .entry(source)
            .or_insert_with(|| start().shared())
            .clone()
    }
}

impl Actor for TokenManager {
    type Context = Context<Self>;
}

impl Handler<GetAccessToken> for TokenManager {
    type Result = ResponseFuture<Result<AccessToken, TokenError>>;

    fn handle(&mut self, msg: GetAccessToken, _ctx: &mut Context<Self>) -> Self::Result {
        let service = self.service.clone();
        let source = msg.source.clone();
        let fut = self.join_or_start(msg.source, move || {
            async move {
                let result = service.access_token(&source).await;
                record_refusal(&source, &result);
                result
            }
            .boxed_local()
        });
        Box::pin(fut)
    }
}

impl Handler<ImportRefreshToken> for TokenManager {
    type Result = ResponseFuture<Result<AccessToken, TokenError>>;

    fn handle(&mut self, msg: ImportRefreshToken, _ctx: &mut Context<Self>) -> Self::Result {
        // The import runs after a refresh in flight for this credential, perhaps on the
        // service a reload replaced (whose record lock is not this one's), so that refresh
        // cannot write its grant back over the imported one. It is not joinable itself:
        // collectors asking meanwhile want a token of the stored grant, which a refused
        // import leaves in place, not the import's refusal.
        let earlier = self
            .in_flight
            .get(&msg.source)
            .filter(|f| f.peek().is_none())
            .cloned();
        let service = self.service.clone();
        Box::pin(async move {
            if let Some(earlier) = earlier {
                let _ = earlier.await;
            }
            service
                .import(&msg.source, msg.refresh_token, msg.identity)
                .await
        })
    }
}

impl Handler<InvalidateAccessToken> for TokenManager {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: InvalidateAccessToken, _ctx: &mut Context<Self>) -> Self::Result {
        self.in_flight.remove(&msg.source);
        let service = self.service.clone();
        Box::pin(async move {
            if let Err(e) = service.invalidate_access_token(&msg.source).await {
                tracing::warn!(source = %msg.source, error = %e, "could not drop the refused access token");
            }
        })
    }
}
