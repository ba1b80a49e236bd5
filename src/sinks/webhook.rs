//! The webhook transport: one signed HTTPS POST per event (Standard Webhooks).
//!
//! Per request: `webhook-id` (the event id), `webhook-timestamp` (now, per attempt),
//! `webhook-signature` (`v1,` + HMAC-SHA256 per secret, see [`super::sign`]),
//! `content-type: application/json`, `user-agent: mailsluice/VERSION`; the body is the
//! envelope, the same bytes on every attempt.
//!
//! What the receiver's answer means:
//! - 2xx within `timeout_secs`: delivered.
//! - 429 or 503 with `Retry-After`: a failed attempt, retried no sooner than it asks.
//! - 3xx: a failed attempt naming the `Location`. Redirects are never followed: the request
//!   carries a signed copy of a message, and a receiver (or whoever controls its DNS name)
//!   must not be able to send it on to another host, nor turn the sink into a way to reach
//!   addresses the address policy refuses.
//! - anything else, a timeout, or no connection: a failed attempt naming the status line
//!   (with at most [`BODY_SHOWN_BYTES`] of the answer, control characters removed) or the
//!   error.
//!
//! One client per sink, built when the sink starts, holds its connections (kept alive
//! between requests). It trusts what the node's other TLS connections trust (system roots,
//! `tls.extra_ca_file`, `tls.min_version`), ignores proxy variables (a proxy would be the
//! address connected to, not the receiver's), and resolves names itself: every address a
//! name resolves to is checked against the sink's [`AddressPolicy`] before one is connected
//! to, so the address checked is the address used, and a DNS answer that changes between
//! two requests (DNS rebinding) is checked again. An IP address in the URL is checked when
//! the client is built.
//!
//! Invariant: no secret (the signing keys) is in this module's errors, logs or `Debug`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{CONTENT_TYPE, HeaderValue, LOCATION, RETRY_AFTER};
use reqwest::{StatusCode, Url};

use super::address::{AddressPolicy, RefusedAddress};
use super::backoff::parse_retry_after;
use super::sign::{SigningKey, signature_header};
use super::transport::{Delivery, DeliveryError, MadeFor, Prebuilt, Transport};

/// Most bytes of a failed answer's body kept in the error (before control characters are
/// replaced): enough for "invalid signature" or a JSON error code, not a whole HTML page.
pub const BODY_SHOWN_BYTES: usize = 200;
/// Longest `Location` shown in an error.
const LOCATION_SHOWN_BYTES: usize = 300;
/// `user-agent` of every request.
pub const USER_AGENT: &str = concat!("mailsluice/", env!("CARGO_PKG_VERSION"));

/// What a webhook sink is built from.
pub struct WebhookTarget {
    /// The NAME in `[sinks.NAME]`.
    pub sink: String,
    /// `url`, as validated.
    pub url: String,
    /// The signing keys, read from `secret_file` / `secret_env` when the sink starts.
    pub keys: Vec<SigningKey>,
    /// `timeout_secs`: one attempt, connect to the end of the answer.
    pub timeout: Duration,
    /// `concurrency`: connections kept open for reuse.
    pub concurrency: usize,
    /// Where requests may go.
    pub policy: AddressPolicy,
    /// The node's TLS client configuration (roots and minimum version).
    pub tls: Arc<rustls::ClientConfig>,
}

/// Why a webhook sink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WebhookSetupError {
    #[error("sinks.{sink}.url: {reason}")]
    Url { sink: String, reason: String },
    #[error("sinks.{sink}.url: {refused}")]
    Refused {
        sink: String,
        refused: RefusedAddress,
    },
    #[error("sink {sink}: cannot build its HTTP client: {reason}")]
    Client { sink: String, reason: String },
    #[error("sink {sink}: no signing key; secret_file or secret_env holds none")]
    NoKeys { sink: String },
}

/// A webhook sink's transport.
pub struct WebhookTransport {
    sink: String,
    url: Url,
    /// The URL as errors and logs show it: without its query, which may hold a token of
    /// the receiver's.
    shown: String,
    timeout: Duration,
    client: reqwest::Client,
    keys: Vec<SigningKey>,
}

impl std::fmt::Debug for WebhookTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTransport")
            .field("sink", &self.sink)
            .field("url", &self.shown)
            .field("timeout", &self.timeout)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl WebhookTransport {
    pub fn new(target: WebhookTarget) -> Result<WebhookTransport, WebhookSetupError> {
        let sink = target.sink;
        if target.keys.is_empty() {
            return Err(WebhookSetupError::NoKeys { sink });
        }
        let url = Url::parse(&target.url).map_err(|e| WebhookSetupError::Url {
            sink: sink.clone(),
            reason: e.to_string(),
        })?;
        let literal: Option<IpAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(ip.into()),
            Some(url::Host::Ipv6(ip)) => Some(ip.into()),
            Some(url::Host::Domain(_)) => None,
            None => {
                return Err(WebhookSetupError::Url {
                    sink,
                    reason: "has no host".into(),
                });
            }
        };
        // The resolver is not asked for an address written in the URL: checked here.
        if let Some(ip) = literal {
            target
                .policy
                .check(ip)
                .map_err(|refused| WebhookSetupError::Refused {
                    sink: sink.clone(),
                    refused,
                })?;
        }
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*target.tls).clone())
            .dns_resolver(Arc::new(CheckedResolver {
                policy: target.policy,
            }))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(target.timeout)
            .connect_timeout(target.timeout)
            .pool_max_idle_per_host(target.concurrency.max(1))
            .tcp_nodelay(true)
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| WebhookSetupError::Client {
                sink: sink.clone(),
                reason: error_chain(&e.without_url()),
            })?;
        Ok(WebhookTransport {
            shown: shown_url(&url),
            sink,
            url,
            timeout: target.timeout,
            client,
            keys: target.keys,
        })
    }

    async fn post(&self, d: &Delivery) -> Result<(), DeliveryError> {
        let now = unix_now();
        let (body, timestamp, signature) = match &d.prebuilt {
            // Signed moments ago, ahead of the attempt: sent as it is.
            Some(Prebuilt {
                body,
                made_for:
                    MadeFor::Signed {
                        timestamp,
                        signature,
                    },
            }) if (0..=SIGNED_AHEAD_SECS).contains(&(now - timestamp)) => {
                (body.clone(), *timestamp, signature.clone())
            }
            Some(prebuilt) => {
                let signature = signature_header(&d.event.id, now, &prebuilt.body, &self.keys);
                (prebuilt.body.clone(), now, signature)
            }
            None => {
                let body = d.body()?;
                let signature = signature_header(&d.event.id, now, &body, &self.keys);
                (bytes::Bytes::from(body), now, signature)
            }
        };
        let request = self
            .client
            .post(self.url.clone())
            .header("webhook-id", &d.event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        match request.send().await {
            Ok(response) => self.judge(response).await,
            Err(e) => Err(self.request_error(e)),
        }
    }

    /// What an answer means (see the module documentation).
    async fn judge(&self, response: reqwest::Response) -> Result<(), DeliveryError> {
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let line = status_line(status);
        if status.is_redirection() {
            let location = response
                .headers()
                .get(LOCATION)
                .map(|v| shown_text(v.as_bytes(), LOCATION_SHOWN_BYTES))
                .unwrap_or_else(|| "no Location".into());
            return Err(DeliveryError::transient(
                "redirect",
                format!(
                    "sink {}: {} answered {line}, to {location}; redirects are not followed \
                     (set sinks.{}.url to where the receiver is)",
                    self.sink, self.shown, self.sink
                ),
            ));
        }
        let retry_after = if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::SERVICE_UNAVAILABLE
        {
            response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()))
        } else {
            None
        };
        let kind = match status.as_u16() {
            429 => "http_429",
            500..=599 => "http_5xx",
            _ => "http_4xx",
        };
        let body = first_bytes(response, BODY_SHOWN_BYTES).await;
        let body = shown_text(&body, BODY_SHOWN_BYTES);
        let detail = if body.is_empty() {
            format!("sink {}: {} answered {line}", self.sink, self.shown)
        } else {
            format!("sink {}: {} answered {line}: {body}", self.sink, self.shown)
        };
        Err(DeliveryError {
            retry_after,
            ..DeliveryError::transient(kind, detail)
        })
    }

    /// No answer: why, in the words of the layer that failed.
    fn request_error(&self, e: reqwest::Error) -> DeliveryError {
        let e = e.without_url();
        let refused = chain(&e).find_map(|c| c.downcast_ref::<RefusedAddress>());
        if let Some(refused) = refused {
            return DeliveryError::transient(
                "refused_address",
                format!("sink {}: {}: {refused}", self.sink, self.shown),
            );
        }
        if e.is_timeout() {
            return DeliveryError::transient(
                "timeout",
                format!(
                    "sink {}: {} gave no complete answer within timeout_secs = {}",
                    self.sink,
                    self.shown,
                    self.timeout.as_secs()
                ),
            );
        }
        let tls = chain(&e).any(|c| {
            c.is::<rustls::Error>()
                || c.downcast_ref::<std::io::Error>()
                    .and_then(|io| io.get_ref())
                    .is_some_and(|inner| inner.is::<rustls::Error>())
        });
        DeliveryError::transient(
            if tls { "tls" } else { "connect" },
            format!("sink {}: {}: {}", self.sink, self.shown, error_chain(&e)),
        )
    }
}

impl Transport for WebhookTransport {
    fn deliver<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Result<(), DeliveryError>> {
        Box::pin(self.post(delivery))
    }

    /// The body, signed now: the attempt that follows within [`SIGNED_AHEAD_SECS`] sends
    /// it as it is (its `webhook-timestamp` that much earlier at most), a later one signs
    /// it again.
    fn build(&self, d: &Delivery) -> Option<Prebuilt> {
        let body = d.body().ok()?;
        let timestamp = unix_now();
        let signature = signature_header(&d.event.id, timestamp, &body, &self.keys);
        Some(Prebuilt {
            body: body.into(),
            made_for: MadeFor::Signed {
                timestamp,
                signature,
            },
        })
    }
}

/// How old a signature made ahead of its attempt may be and still be sent: receivers
/// accept a timestamp minutes old (5 in the Standard Webhooks libraries), and a body read
/// ahead goes out within a second unless the receiver is slow.
const SIGNED_AHEAD_SECS: i64 = 5;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |t| i64::try_from(t.as_secs()).unwrap_or(i64::MAX))
}

/// Resolves a name and refuses it when any of its addresses is one the policy refuses: the
/// connector then has only checked addresses to connect to.
struct CheckedResolver {
    policy: AddressPolicy,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let ips: Vec<IpAddr> = found.iter().map(SocketAddr::ip).collect();
            policy.check_all(&ips)?;
            let addrs: Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// `HTTP 503 Service Unavailable`.
fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// The URL without query or fragment (and never with credentials, which the configuration
/// refuses anyway).
fn shown_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_password(None);
    let _ = shown.set_username("");
    shown.to_string()
}

/// Up to `max` bytes of the answer's body; what arrives in time, nothing on an error.
async fn first_bytes(mut response: reqwest::Response, max: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < max {
        match response.chunk().await {
            Ok(Some(chunk)) => out.extend_from_slice(&chunk[..chunk.len().min(max - out.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Text from a receiver, safe to put in a log line: invalid UTF-8 replaced, control
/// characters (newlines, escape sequences) turned into spaces, runs of white space made
/// one, cut to `max` bytes on a character boundary.
pub fn shown_text(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(max)]);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        out.push(c);
    }
    let mut end = out.trim_end().len().min(max);
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    out
}

fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// An error and its causes, `: `-separated, each once (layers often repeat their cause).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in chain(e) {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receiver_text_is_made_safe_for_a_log_line() {
        assert_eq!(
            shown_text(b"bad\r\nsignature\x1b[31m  here\t", 200),
            "bad signature [31m here"
        );
        assert_eq!(shown_text(b"\xff\xfeok", 200), "\u{fffd}\u{fffd}ok");
        let long = "é".repeat(300);
        let cut = shown_text(long.as_bytes(), BODY_SHOWN_BYTES);
        assert!(cut.len() <= BODY_SHOWN_BYTES, "{}", cut.len());
        assert!(cut.starts_with("éé"));
    }

    fn policy() -> AddressPolicy {
        AddressPolicy {
            sink: "hook".into(),
            allow_private_addresses: false,
        }
    }

    /// The resolver hands the connector only addresses the policy allows: a name that
    /// resolves to a metadata address is refused, naming it and the key that allows it.
    #[tokio::test]
    async fn the_resolver_refuses_what_the_policy_refuses() {
        let resolver = CheckedResolver { policy: policy() };
        let name = |s: &str| s.parse::<Name>().unwrap();
        let err = match resolver.resolve(name("169.254.169.254")).await {
            Ok(_) => panic!("a link-local address was let through"),
            Err(e) => e,
        };
        let refused = err.downcast_ref::<RefusedAddress>().expect("a refusal");
        assert_eq!(refused.addr, "169.254.169.254".parse::<IpAddr>().unwrap());
        assert!(err.to_string().contains("allow_private_addresses"), "{err}");
        let found: Vec<SocketAddr> = match resolver.resolve(name("127.0.0.1")).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(found[0].ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
        let open = CheckedResolver {
            policy: AddressPolicy {
                allow_private_addresses: true,
                ..policy()
            },
        };
        assert!(open.resolve(name("169.254.169.254")).await.is_ok());
    }

    fn target(url: &str, keys: Vec<SigningKey>) -> WebhookTarget {
        let roots = crate::net::root_store(None).unwrap();
        WebhookTarget {
            sink: "hook".into(),
            url: url.into(),
            keys,
            timeout: Duration::from_secs(1),
            concurrency: 1,
            policy: policy(),
            tls: crate::net::rustls_config(crate::net::TlsVersion::V1_2, roots).unwrap(),
        }
    }

    /// An address written in the URL never reaches the resolver: it is checked when the
    /// transport is built. The transport's Debug shows no key.
    #[test]
    fn an_address_in_the_url_is_checked_at_once_and_debug_shows_no_key() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let keys = crate::sinks::sign::parse_secrets(secret).unwrap();
        let err = WebhookTransport::new(target("http://169.254.169.254/latest", keys.clone()))
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("sinks.hook.url: 169.254.169.254 is a link-local address"),
            "{err}"
        );
        let t = WebhookTransport::new(target("https://hooks.example/in?token=abc", keys)).unwrap();
        let debug = format!("{t:?}");
        assert!(
            !debug.contains("MfKQ9r8") && !debug.contains("token=abc"),
            "{debug}"
        );
        assert!(debug.contains("https://hooks.example/in"), "{debug}");
        let none = WebhookTransport::new(target("https://hooks.example/in", Vec::new()));
        assert!(matches!(none, Err(WebhookSetupError::NoKeys { .. })));
    }

    /// One request read by a bare HTTP/1.1 server on loopback (answered 204): its head and
    /// body.
    async fn one_request(listener: tokio::net::TcpListener) -> (String, Vec<u8>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 8192];
        let (head, body_at, length) = loop {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed before the head");
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(got[..end].to_vec()).unwrap();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_owned)
                    })
                    .unwrap()
                    .parse()
                    .unwrap();
                break (head, end + 4, length);
            }
        };
        while got.len() < body_at + length {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        conn.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        (head, got[body_at..body_at + length].to_vec())
    }

    fn header<'a>(head: &'a str, name: &str) -> &'a str {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {head}"))
    }

    /// A body built and signed ahead of its attempt is sent as it was built: the same
    /// bytes `deliver` builds, with the signature made then. One signed longer ago than
    /// [`SIGNED_AHEAD_SECS`] is signed again with the time of the attempt.
    #[tokio::test]
    async fn a_body_built_ahead_goes_out_as_built_and_a_stale_signature_is_made_again() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let keys = crate::sinks::sign::parse_secrets(secret).unwrap();
        for stale in [false, true] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}/in", listener.local_addr().unwrap());
            let t = WebhookTransport::new(target(&url, keys.clone())).unwrap();
            let mut d = Delivery::state_change_for_test(3, "evt_0123");
            let mut prebuilt = t.build(&d).expect("a webhook builds ahead");
            if stale {
                let MadeFor::Signed { timestamp, .. } = &mut prebuilt.made_for else {
                    panic!("a webhook signs ahead")
                };
                *timestamp -= 60;
            }
            let MadeFor::Signed {
                timestamp: built_at,
                signature: built_signature,
            } = prebuilt.made_for.clone()
            else {
                panic!("a webhook signs ahead")
            };
            d.prebuilt = Some(prebuilt);
            let server = tokio::spawn(one_request(listener));
            t.deliver(&d).await.unwrap();
            let (head, body) = server.await.unwrap();
            assert_eq!(
                body,
                Delivery::state_change_for_test(3, "evt_0123")
                    .body()
                    .unwrap(),
                "the body deliver builds"
            );
            let sent_at: i64 = header(&head, "webhook-timestamp").parse().unwrap();
            let signature = header(&head, "webhook-signature");
            assert_eq!(
                signature,
                signature_header("evt_0123", sent_at, &body, &keys),
                "a valid signature"
            );
            if stale {
                assert!(sent_at >= built_at + 60, "signed again at the attempt");
            } else {
                assert_eq!((sent_at, signature), (built_at, built_signature.as_str()));
            }
        }
    }

    #[test]
    fn the_shown_url_has_no_query() {
        let url = Url::parse("https://hooks.example/in?token=abc#x").unwrap();
        assert_eq!(shown_url(&url), "https://hooks.example/in");
    }
}
