//! OAuth2 for mail sources: provider endpoints, the token model, refresh and client
//! credentials through the `oauth2` crate, and the classification of a provider's answer
//! into "re-authorize", "fix the configuration" or "retry later".
//!
//! [`TokenService`] holds the logic and is used directly by the CLI and, through the
//! TokenManager actor (which lets askers join a refresh in flight), by the collectors. A
//! credential's stored record is read, refreshed and written by one caller at a time
//! (refresh, import), and an import writes only after its token refreshed: a refused one
//! leaves the stored grant as it was.
//! Every decision about a credential's time (expiry, refresh margin, backoff, ID token and
//! Retry-After dates) reads it from the service's [`Clock`], so tests step time by hand; only
//! waits for a person (the consent timeouts) and latency measurements use real time.
//!
//! Layout: [`TokenService`] and its access-token cache (refresh, import, backoff) are in
//! `service`; the OAuth2 token request itself (the `oauth2` crate over our HTTP client,
//! keeping the raw answer for classification) is in `exchange`; a provider's endpoints
//! (configured, built in, or found by OIDC discovery) and default scopes are in `provider`;
//! the initial consent, and who the provider says a grant belongs to, are in `consent`.

mod clock;
mod consent;
mod errors;
mod exchange;
pub mod horizons;
mod loopback;
mod provider;
mod service;

use std::sync::Mutex;

use crate::secret::Secret;

pub use clock::{Clock, ManualClock};
pub use consent::{
    Consent, ConsentOptions, DeviceFlowEvent, IdTokenError, consented_by, identity_from_id_token,
};
pub use errors::{ImportRefusal, TokenError, classify_provider_error};
pub use exchange::HttpError;
pub use provider::{default_scopes, grant_binding, stored_grant};
pub use service::{SetupError, TokenService, refresh_margin_secs};

use exchange::{DEFAULT_EXPIRES_IN, parse_retry_after};
use provider::check_endpoint_url;

/// An access token ready for SASL, with its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub token: Secret,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds from which this token is no longer handed out (a new one is obtained
    /// instead): `expires_at` less the refresh margin that applies to it
    /// ([`refresh_margin_secs`]). A session signed in with it ends by then.
    pub renew_at: i64,
    /// True when this call got it from the provider, false when it was the stored one.
    pub refreshed: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update of a cache; the data
    // is still a valid map.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
