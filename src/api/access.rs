//! Who gets in: every request passes [`guard`] before its handler.
//!
//! In this order, each refusal before the next check runs:
//! 1. `Host` must name this machine (a loopback name or address), the address the node
//!    listens on, or one of `node.http_allowed_hosts` (else 403). A DNS-rebinding page sends
//!    its own name, so this is what keeps a web page from reading the API through a name
//!    that resolves to 127.0.0.1.
//! 2. Under `/api/`, a browser request that says it comes from another site (`Origin` not
//!    this node, `Sec-Fetch-Site: cross-site` or `same-site`) is refused (403).
//! 3. A peer with too many failed attempts waits (429 with `Retry-After`).
//! 4. Under `/api/` (and `/metrics` when `node.metrics_token_file` is set), a bearer token
//!    (401 without a valid one), with a role that allows the route (403).
//! 5. A POST under `/api/` must say `Content-Type: application/json` (415): an HTML form
//!    cannot send that, so no form on any page can reach a handler.
//!
//! Every answer gets `X-Content-Type-Options: nosniff` and a Content-Type; `/api/` answers
//! also `Cache-Control: no-store`. Every answer is counted in
//! `mailsluice_api_requests_total{route,code}`, labelled by route pattern (bounded).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpResponse, web};

use super::credentials::{Caller, Credentials};
use crate::config::Role;
use crate::config::live::Live;

/// Role each `/api/` route needs, by path pattern. A path under `/api/` that is not listed
/// needs `admin`: a route added without an entry here is closed, not open.
pub const API_ROUTES: &[(&str, &str, Role)] = &[
    ("GET", "/api/sources", Role::Read),
    ("GET", "/api/tokens", Role::Read),
    ("GET", "/api/sinks", Role::Read),
    ("GET", "/api/messages", Role::Mail),
    ("GET", "/api/messages/{id}", Role::Mail),
    ("GET", "/api/messages/{id}/raw", Role::Mail),
    ("GET", "/api/events", Role::Mail),
    ("POST", "/api/reload", Role::Admin),
    ("POST", "/api/sinks/{sink}/retry", Role::Admin),
    ("POST", "/api/sinks/{sink}/replay", Role::Admin),
    ("POST", "/api/sources/{source}/test-login", Role::Admin),
    ("POST", "/api/tokens/{source}/import", Role::Admin),
];

/// The role a route pattern needs (`admin` for anything unlisted).
pub fn required_role(pattern: Option<&str>) -> Role {
    pattern
        .and_then(|p| API_ROUTES.iter().find(|(_, path, _)| *path == p))
        .map_or(Role::Admin, |(_, _, role)| *role)
}

/// Failed attempts one peer may make in a burst; then one more every
/// [`FAILURE_REFILL`].
const FAILURE_BURST: f64 = 10.0;
const FAILURE_REFILL: Duration = Duration::from_secs(6);
/// Peers remembered at most; beyond, peers whose allowance is whole again are forgotten
/// first.
const MAX_PEERS: usize = 10_000;

/// Per-peer allowance of failed attempts (a token bucket: each failure takes one, one
/// comes back every [`FAILURE_REFILL`]). Successful requests cost nothing.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    peers: HashMap<IpAddr, (f64, Instant)>,
}

impl FailureLimiter {
    fn level(&self, peer: IpAddr, now: Instant) -> f64 {
        match self.peers.get(&peer) {
            None => FAILURE_BURST,
            Some((left, at)) => {
                let back =
                    now.saturating_duration_since(*at).as_secs_f64() / FAILURE_REFILL.as_secs_f64();
                (left + back).min(FAILURE_BURST)
            }
        }
    }

    /// `Err(wait)` while `peer` has no failed attempt left.
    pub fn check(&self, peer: IpAddr, now: Instant) -> Result<(), Duration> {
        let level = self.level(peer, now);
        if level >= 1.0 {
            Ok(())
        } else {
            Err(FAILURE_REFILL.mul_f64(1.0 - level))
        }
    }

    /// Records a failed attempt by `peer`.
    pub fn fail(&mut self, peer: IpAddr, now: Instant) {
        let level = self.level(peer, now);
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&peer) {
            self.forget_recovered(now);
        }
        self.peers.insert(peer, ((level - 1.0).max(0.0), now));
    }

    fn forget_recovered(&mut self, now: Instant) {
        let recovered: Vec<IpAddr> = self
            .peers
            .keys()
            .copied()
            .filter(|p| self.level(*p, now) >= FAILURE_BURST)
            .collect();
        for p in recovered {
            self.peers.remove(&p);
        }
        // Still full (a flood from many addresses): the oldest entries make room.
        while self.peers.len() >= MAX_PEERS {
            let Some(oldest) = self
                .peers
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(p, _)| *p)
            else {
                break;
            };
            self.peers.remove(&oldest);
        }
    }
}

/// What [`guard`] needs: the tokens (reloaded with the configuration), the failure
/// allowances, and how the node is reached.
pub struct Access {
    live: Live,
    /// The credentials and the settings they were read from (compared by pointer: a reload
    /// replaces the settings, and the tokens are read again then).
    credentials: Mutex<(Arc<crate::config::Settings>, Arc<Credentials>)>,
    failures: Mutex<FailureLimiter>,
    /// The address the listener got.
    listen: SocketAddr,
    /// Whether the node serves HTTPS (the scheme of its own origin).
    tls: bool,
}

impl Access {
    pub fn new(live: Live, credentials: Credentials, listen: SocketAddr, tls: bool) -> Access {
        let settings = live.settings();
        Access {
            live,
            credentials: Mutex::new((settings, Arc::new(credentials))),
            failures: Mutex::new(FailureLimiter::default()),
            listen,
            tls,
        }
    }

    /// The credentials of the configuration now: read again after a reload, so a rotated
    /// token file or a new `[api_clients.NAME]` takes effect with SIGHUP or
    /// `POST /api/reload`. When they cannot be read the previous ones stay (the reload
    /// itself checked the files, so that is a file changed since).
    fn credentials(&self) -> Arc<Credentials> {
        let settings = self.live.settings();
        let mut held = self.credentials.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&held.0, &settings) {
            match Credentials::load(&settings, false) {
                Ok(c) => *held = (settings, Arc::new(c)),
                Err(e) => {
                    tracing::warn!(error = %e, "API tokens not re-read; the previous ones stay");
                    held.0 = settings;
                }
            }
        }
        held.1.clone()
    }

    /// Forgets every failed attempt (tests that make many on purpose).
    #[cfg(test)]
    pub(crate) fn reset_failures(&self) {
        *self.failures.lock().unwrap_or_else(|p| p.into_inner()) = FailureLimiter::default();
    }

    fn allowed_hosts(&self) -> Vec<String> {
        self.live.settings().node.http_allowed_hosts.clone()
    }
}

/// Splits a `Host` value into host and port: `[::1]:80`, `127.0.0.1:80`, `name`, `name.`.
fn host_name(host: &str) -> Option<String> {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        inside
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return None,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether a request whose `Host` is `host` is served. No `Host` at all (HTTP/1.0 tools)
/// cannot come from a browser, so it cannot be a rebinding attack: served.
pub fn host_allowed(host: Option<&str>, allowed: &[String], listen: SocketAddr) -> bool {
    let Some(host) = host else {
        return true;
    };
    let Some(name) = host_name(host) else {
        return false;
    };
    if let Ok(ip) = name.parse::<IpAddr>() {
        let listen_ip = listen.ip();
        return ip.is_loopback()
            || (!listen_ip.is_unspecified() && ip == listen_ip)
            || allowed.iter().any(|a| a.parse::<IpAddr>() == Ok(ip));
    }
    name == "localhost" || name.ends_with(".localhost") || allowed.contains(&name)
}

/// Why a request is a cross-site browser request, if it is one: `Sec-Fetch-Site` saying
/// another site sent it, or an `Origin` other than this node's own (scheme and `Host`).
pub fn cross_site(
    origin: Option<&str>,
    fetch_site: Option<&str>,
    host: Option<&str>,
    tls: bool,
) -> Option<String> {
    if let Some(site) = fetch_site {
        let site = site.trim().to_ascii_lowercase();
        if site == "cross-site" || site == "same-site" {
            return Some(format!("Sec-Fetch-Site: {site}"));
        }
    }
    let origin = origin?.trim();
    let scheme = if tls { "https" } else { "http" };
    let own = host.map(|h| format!("{scheme}://{}", h.trim()));
    if own.is_some_and(|own| own.eq_ignore_ascii_case(origin)) {
        None
    } else {
        Some(format!("Origin: {origin}"))
    }
}

/// The token of `Authorization: Bearer TOKEN` (scheme case-insensitive).
fn bearer(req: &ServiceRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

fn is_json(req: &ServiceRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

/// Boxed: a response is large, and the checks return it as their error.
fn refusal(code: StatusCode, message: &str) -> Box<HttpResponse> {
    Box::new(HttpResponse::build(code).json(serde_json::json!({ "error": message })))
}

/// The middleware: see the module documentation.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<BoxBody>>, actix_web::Error> {
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    // Under /api/ by any reading of the path: the router matches on a decoded path
    // (`/%61pi/sources` is `/api/sources` to it), so the raw one alone would let that in.
    let under_api = |p: &str| p == "/api" || p.starts_with("/api/");
    let api = under_api(&route) || under_api(req.path()) || under_api(req.match_info().as_str());
    let result = match check(&req, &route, api) {
        Err(refused) => Ok(req.into_response(*refused).map_into_right_body()),
        Ok(caller) => {
            if let Some(caller) = caller {
                req.extensions_mut().insert(caller);
            }
            next.call(req)
                .await
                .map(|r| r.map_body(|_, b| b.boxed()).map_into_left_body())
        }
    };
    result.map(|mut res| {
        finish(&mut res, api);
        metrics::counter!(
            "mailsluice_api_requests_total",
            "route" => route,
            "code" => res.status().as_u16().to_string()
        )
        .increment(1);
        res
    })
}

/// The checks before the handler; `Ok(Some(caller))` when a token was checked.
fn check(
    req: &ServiceRequest,
    route: &str,
    api: bool,
) -> Result<Option<Caller>, Box<HttpResponse>> {
    let Some(access) = req.app_data::<web::Data<Arc<Access>>>() else {
        return Err(refusal(
            StatusCode::INTERNAL_SERVER_ERROR,
            "access rules missing",
        ));
    };
    let host = req
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("\u{fffd}"));
    if !host_allowed(host, &access.allowed_hosts(), access.listen) {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            "this Host is not served: loopback names and addresses, the listening address \
             and node.http_allowed_hosts are",
        ));
    }
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if api
        && let Some(why) = cross_site(header("origin"), header("sec-fetch-site"), host, access.tls)
    {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            &format!("cross-site browser requests are refused ({why})"),
        ));
    }
    let credentials = access.credentials();
    let metrics = route == "/metrics" && credentials.metrics_protected();
    if !api && !metrics {
        return Ok(None);
    }
    let peer = req.peer_addr().map(|a| a.ip());
    if let Some(peer) = peer {
        let failures = access.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(wait) = failures.check(peer, Instant::now()) {
            let mut res = refusal(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed attempts from this address; wait and retry",
            );
            let secs = wait.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                res.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Err(res);
        }
    }
    let token = bearer(req);
    let fail = |message: &str| {
        if let Some(peer) = peer {
            access
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .fail(peer, Instant::now());
        }
        let mut res = refusal(StatusCode::UNAUTHORIZED, message);
        let challenge = if token.is_some() {
            "Bearer realm=\"mailsluice\", error=\"invalid_token\""
        } else {
            "Bearer realm=\"mailsluice\""
        };
        res.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
        res
    };
    if metrics {
        return match &token {
            Some(t) if credentials.metrics_allowed(t) => Ok(None),
            Some(_) => Err(fail("wrong token for /metrics")),
            None => Err(fail(
                "/metrics needs Authorization: Bearer with node.metrics_token_file's token",
            )),
        };
    }
    let Some(token) = &token else {
        return Err(fail(
            "Authorization: Bearer TOKEN required (node.api_token_file, or an \
             [api_clients.NAME] token)",
        ));
    };
    let Some(caller) = credentials.caller(token).cloned() else {
        return Err(fail("invalid token"));
    };
    let needed = required_role(Some(route).filter(|r| *r != "unmatched"));
    if caller.role < needed {
        return Err(refusal(
            StatusCode::FORBIDDEN,
            &format!(
                "{} has role {}; this needs {}",
                caller.name,
                caller.role.as_str(),
                needed.as_str()
            ),
        ));
    }
    if req.method() == Method::POST && !is_json(req) {
        return Err(refusal(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST bodies must be Content-Type: application/json",
        ));
    }
    Ok(Some(caller))
}

/// Headers every answer carries.
fn finish<B>(res: &mut ServiceResponse<B>, api: bool) {
    let headers = res.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    if api {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_hosts_are_served_and_rebinding_names_are_not() {
        let lo = listen("127.0.0.1:9898");
        for ok in [
            "127.0.0.1:9898",
            "127.0.0.1",
            "127.8.9.10:1",
            "localhost:9898",
            "LOCALHOST",
            "localhost.",
            "app.localhost:80",
            "[::1]:9898",
            "[::1]",
        ] {
            assert!(host_allowed(Some(ok), &[], lo), "{ok}");
        }
        for bad in [
            "evil.example:9898",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "10.0.0.5:9898",
            "[::1]x",
            "127.0.0.1:99999999",
            "127.0.0.1:",
            ":9898",
            "",
        ] {
            assert!(!host_allowed(Some(bad), &[], lo), "{bad}");
        }
        assert!(host_allowed(None, &[], lo));
    }

    #[test]
    fn allowed_hosts_and_the_listening_address_are_served() {
        let allowed = vec!["ingest.example.com".to_owned(), "10.1.2.3".to_owned()];
        let any = listen("0.0.0.0:9898");
        assert!(host_allowed(Some("Ingest.Example.com:9898"), &allowed, any));
        assert!(host_allowed(Some("10.1.2.3"), &allowed, any));
        assert!(!host_allowed(
            Some("ingest.example.com.evil"),
            &allowed,
            any
        ));
        // Listening on every address is not an invitation to any address as Host.
        assert!(!host_allowed(Some("0.0.0.0:9898"), &allowed, any));
        assert!(!host_allowed(Some("10.9.9.9"), &allowed, any));
        let one = listen("10.9.9.9:9898");
        assert!(host_allowed(Some("10.9.9.9:9898"), &[], one));
    }

    #[test]
    fn cross_site_requests_are_told_apart_from_the_nodes_own() {
        let host = Some("127.0.0.1:9898");
        assert_eq!(cross_site(None, None, host, false), None);
        assert_eq!(
            cross_site(
                Some("http://127.0.0.1:9898"),
                Some("same-origin"),
                host,
                false
            ),
            None
        );
        assert_eq!(cross_site(None, Some("none"), host, false), None);
        for (origin, site) in [
            (Some("http://evil.example"), None),
            (Some("null"), None),
            (Some("http://127.0.0.1:9899"), None),
            (Some("https://127.0.0.1:9898"), None),
            (None, Some("cross-site")),
            (None, Some("same-site")),
            (Some("http://127.0.0.1:9898"), Some("cross-site")),
        ] {
            assert!(
                cross_site(origin, site, host, false).is_some(),
                "{origin:?} {site:?}"
            );
        }
        assert_eq!(
            cross_site(Some("https://127.0.0.1:9898"), None, host, true),
            None
        );
        assert!(cross_site(Some("http://x"), None, None, false).is_some());
    }

    #[test]
    fn failed_attempts_are_limited_per_peer_and_come_back_with_time() {
        let mut limiter = FailureLimiter::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(limiter.check(a, t0).is_ok());
            limiter.fail(a, t0);
        }
        let wait = limiter.check(a, t0).unwrap_err();
        assert_eq!(wait, FAILURE_REFILL);
        assert!(
            limiter.check(b, t0).is_ok(),
            "another peer is not held back"
        );
        assert!(limiter.check(a, t0 + FAILURE_REFILL / 2).is_err());
        assert!(limiter.check(a, t0 + FAILURE_REFILL).is_ok());
        limiter.fail(a, t0 + FAILURE_REFILL);
        assert!(limiter.check(a, t0 + FAILURE_REFILL).is_err());
    }

    #[test]
    fn the_limiter_remembers_a_bounded_number_of_peers() {
        let mut limiter = FailureLimiter::default();
        let t0 = Instant::now();
        for i in 0..(MAX_PEERS as u32 + 50) {
            limiter.fail(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(limiter.peers.len() <= MAX_PEERS);
    }

    #[test]
    fn unlisted_api_routes_need_admin() {
        assert_eq!(required_role(Some("/api/sources")), Role::Read);
        assert_eq!(required_role(Some("/api/messages/{id}/raw")), Role::Mail);
        assert_eq!(required_role(Some("/api/events")), Role::Mail);
        assert_eq!(required_role(Some("/api/sinks")), Role::Read);
        assert_eq!(required_role(Some("/api/reload")), Role::Admin);
        assert_eq!(required_role(Some("/api/new-thing")), Role::Admin);
        assert_eq!(required_role(None), Role::Admin);
    }
}
