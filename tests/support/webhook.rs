//! A webhook receiver: a real HTTP/1.1 server (hyper) on an ephemeral loopback port that
//! checks every request's Standard Webhooks signature itself, records it, and answers as the
//! test planned: success, an error status, 429/503 with `Retry-After`, a slow answer, a
//! redirect, a dropped connection, or no listener at all (a closed port).
//!
//! The signature check is the harness's own code (HMAC-SHA256 over SHA-256 from `sha2`, see
//! [`hmac_sha256`]), independent of the product's signing, and pinned by the scheme's
//! published test vector in `tests/sink_harness.rs`. A request is `verified` when it carries
//! `webhook-id`, `webhook-timestamp` (Unix seconds, at most [`TIMESTAMP_TOLERANCE`] from now)
//! and a `webhook-signature` list in which any `v1,<base64>` entry matches any configured
//! secret (during a rotation the sender signs with every active secret). Unverified
//! requests are recorded and answered like any other, with the reason in
//! [`Received::rejection`]: tests assert `bad_signatures()` is empty rather than having the
//! receiver hide the request behind a 401.
//!
//! The server runs on a Tokio runtime on a thread of its own, so it serves while a test blocks
//! in synchronous code or drives another runtime (actix), and the controls ([`Self::set_default`],
//! [`Self::queue`], [`Self::close`], ...) are plain synchronous calls. Dropping the receiver
//! stops the runtime and frees the port.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::net::{Ipv4Addr, TcpListener as StdListener};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue, LOCATION, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::certs::{Ca, ca, tls_acceptor};
use super::{wait_for, wait_for_async};

/// How far `webhook-timestamp` may be from the receiver's clock (the scheme's recommended
/// tolerance against replays).
pub const TIMESTAMP_TOLERANCE: Duration = Duration::from_secs(300);

/// Bodies above this are cut off with 413 (the receiver holds every body in memory).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// The path [`WebhookReceiver::url`] points at; any path is served and recorded.
pub const HOOK_PATH: &str = "/hooks/mail";

/// How the receiver answers one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// 204 No Content: delivered.
    Ok,
    /// This status with an empty body (2xx counts as delivered).
    Status(u16),
    /// 429 Too Many Requests, with `Retry-After` when given (seconds or an HTTP date).
    TooMany { retry_after: Option<String> },
    /// 503 Service Unavailable, with `Retry-After` when given.
    Unavailable { retry_after: Option<String> },
    /// Waits this long, then answers 204 (for the sender's timeout). The request is recorded
    /// when it arrives, before the wait.
    Slow(Duration),
    /// 302 Found with this `Location`.
    Redirect(String),
    /// Closes the connection without answering.
    Disconnect,
}

impl Reply {
    /// Whether a sender that waits for the answer sees success (2xx).
    pub fn is_success(&self) -> bool {
        match self {
            Reply::Ok | Reply::Slow(_) => true,
            Reply::Status(code) => (200..300).contains(code),
            _ => false,
        }
    }
}

/// What a receiver is started with.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    /// `whsec_<base64 key>` secrets; a request verifies when any signature matches any of
    /// them.
    pub secrets: Vec<String>,
    /// Serve HTTPS with the harness certificate ([`WebhookReceiver::ca`] is what to trust).
    pub tls: bool,
    /// Keep each request's body in [`Received::body`]. A benchmark turns it off: like a
    /// real receiver it verifies and lets go, instead of holding every body (a gigabyte of
    /// base64 in the raw-bytes runs) for the test to read.
    pub keep_bodies: bool,
}

impl Default for WebhookOptions {
    /// One fresh random secret, plain HTTP.
    fn default() -> Self {
        WebhookOptions {
            secrets: vec![new_secret()],
            tls: false,
            keep_bodies: true,
        }
    }
}

/// One request as the receiver saw it.
#[derive(Clone)]
pub struct Received {
    pub method: String,
    /// Path and query, e.g. `/hooks/mail`.
    pub path: String,
    pub headers: HeaderMap,
    /// `webhook-id`.
    pub id: Option<String>,
    /// `webhook-timestamp`, as sent.
    pub timestamp: Option<String>,
    pub body: Vec<u8>,
    /// The signature matched a secret and the timestamp is within the tolerance.
    pub verified: bool,
    /// Why the request did not verify.
    pub rejection: Option<String>,
    /// When the request (head and body) had arrived.
    pub arrived: Instant,
    /// How the receiver answered it.
    pub answer: Reply,
}

impl Received {
    /// The value of header `name` (as text), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl fmt::Debug for Received {
    // Bodies can be megabytes of base64 mail: show the start only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]);
        f.debug_struct("Received")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("id", &self.id)
            .field("timestamp", &self.timestamp)
            .field("verified", &self.verified)
            .field("rejection", &self.rejection)
            .field("answer", &self.answer)
            .field("body_len", &self.body.len())
            .field("body_start", &body)
            .finish()
    }
}

/// The plan: one-shot answers first (in order), then the default for every request after.
struct Plan {
    queue: VecDeque<Reply>,
    default: Reply,
}

/// What the connection tasks and the test share.
struct Shared {
    /// Decoded keys of the configured secrets.
    keys: Vec<Vec<u8>>,
    keep_bodies: bool,
    plan: Mutex<Plan>,
    received: Mutex<Vec<Received>>,
}

impl Shared {
    fn next_reply(&self) -> Reply {
        let mut plan = lock(&self.plan);
        match plan.queue.pop_front() {
            Some(reply) => reply,
            None => plan.default.clone(),
        }
    }
}

/// A running webhook receiver; stopped on drop.
pub struct WebhookReceiver {
    port: u16,
    secrets: Vec<String>,
    /// The CA that signed the HTTPS certificate; `None` for plain HTTP.
    ca: Option<Ca>,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
    /// The accept loop while the port is open, and how to learn it has let go of the port.
    accepting: Option<(tokio::task::JoinHandle<()>, mpsc::Receiver<()>)>,
    /// Ends the runtime's thread.
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl WebhookReceiver {
    /// A plain-HTTP receiver with one random secret, answering 204 to everything.
    pub fn start() -> WebhookReceiver {
        WebhookReceiver::start_with(WebhookOptions::default())
    }

    /// Starts a receiver, listening when this returns; panics when a secret is not
    /// `whsec_<base64>` or the runtime cannot start.
    pub fn start_with(opts: WebhookOptions) -> WebhookReceiver {
        let keys = opts
            .secrets
            .iter()
            .map(|s| {
                secret_key(s).unwrap_or_else(|| panic!("webhook secret is not whsec_<base64>"))
            })
            .collect();
        let shared = Arc::new(Shared {
            keys,
            keep_bodies: opts.keep_bodies,
            plan: Mutex::new(Plan {
                queue: VecDeque::new(),
                default: Reply::Ok,
            }),
            received: Mutex::new(Vec::new()),
        });
        let ca = opts.tls.then(ca);
        let tls = ca
            .as_ref()
            .map(|ca| tls_acceptor(&ca.cert_pem, &ca.key_pem));

        let (handle_tx, handle_rx) = mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("webhook-receiver".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build the webhook receiver's runtime");
                let _ = handle_tx.send(runtime.handle().clone());
                // Spawned tasks run while the thread blocks here; dropping the runtime
                // afterwards cancels them (connections close, the port is freed).
                runtime.block_on(async {
                    let _ = shutdown_rx.await;
                });
            })
            .expect("spawn the webhook receiver's thread");
        let runtime = handle_rx
            .recv()
            .expect("the webhook receiver's runtime did not start");

        let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0))
            .expect("bind the webhook receiver to an ephemeral loopback port");
        let port = listener.local_addr().expect("local address").port();
        let mut receiver = WebhookReceiver {
            port,
            secrets: opts.secrets,
            ca,
            tls,
            shared,
            runtime,
            accepting: None,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        };
        receiver.accept_on(listener);
        receiver
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>` (`https://` with TLS), the same after `close`/`reopen`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The URL to configure as a sink: [`Self::base_url`] + [`HOOK_PATH`].
    pub fn url(&self) -> String {
        format!("{}{HOOK_PATH}", self.base_url())
    }

    /// The configured `whsec_` secrets, in order (what a sink's secret file holds).
    pub fn secrets(&self) -> &[String] {
        &self.secrets
    }

    /// The CA to trust for HTTPS; `None` for plain HTTP.
    pub fn ca(&self) -> Option<&Ca> {
        self.ca.as_ref()
    }

    /// How every request is answered once the one-shot queue is empty.
    pub fn set_default(&self, reply: Reply) {
        lock(&self.shared.plan).default = reply;
    }

    /// Appends one-shot answers, used in order by the next requests before the default.
    pub fn queue(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.shared.plan).queue.extend(replies);
    }

    /// Drops one-shot answers not used yet.
    pub fn clear_queue(&self) {
        lock(&self.shared.plan).queue.clear();
    }

    /// Stops listening: new connections are refused (the port is closed) and open ones are
    /// dropped, requests in flight unanswered. Returns once the port is released. A no-op
    /// when already closed.
    pub fn close(&mut self) {
        let Some((task, released)) = self.accepting.take() else {
            return;
        };
        task.abort();
        // Nothing is ever sent: the channel disconnects when the listener and every
        // connection are gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match released.recv_timeout(left) {
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Ok(()) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the webhook receiver's connections did not close within 10 s")
                }
            }
        }
    }

    /// Listens again on the same port; panics if another process took it meanwhile. A no-op
    /// when open.
    pub fn reopen(&mut self) {
        if self.accepting.is_some() {
            return;
        }
        let listener = StdListener::bind((Ipv4Addr::LOCALHOST, self.port)).unwrap_or_else(|e| {
            panic!(
                "reopen the webhook receiver on 127.0.0.1:{}: {e}",
                self.port
            )
        });
        self.accept_on(listener);
    }

    pub fn is_open(&self) -> bool {
        self.accepting.is_some()
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// Forgets the requests received so far.
    pub fn clear_received(&self) {
        lock(&self.shared.received).clear();
    }

    /// Distinct `webhook-id`s of all requests, in order of first arrival.
    pub fn unique_ids(&self) -> Vec<String> {
        distinct(self.received().iter().filter_map(|r| r.id.clone()))
    }

    /// Distinct `webhook-id`s of verified requests answered with success, in order of first
    /// such answer: what the sender may count as delivered.
    pub fn delivered_ids(&self) -> Vec<String> {
        distinct(
            self.received()
                .into_iter()
                .filter(|r| r.verified && r.answer.is_success())
                .filter_map(|r| r.id),
        )
    }

    /// How many distinct `webhook-id`s were delivered ([`Self::delivered_ids`]) and how many
    /// requests did not verify, counted in place: cheap enough to poll while a benchmark
    /// runs, where copying every body would be load of the harness's own making.
    pub fn delivered_and_bad(&self) -> (usize, usize) {
        let received = lock(&self.shared.received);
        let delivered: std::collections::HashSet<&str> = received
            .iter()
            .filter(|r| r.verified && r.answer.is_success())
            .filter_map(|r| r.id.as_deref())
            .collect();
        let bad = received.iter().filter(|r| !r.verified).count();
        (delivered.len(), bad)
    }

    /// The requests that did not verify (each with its `rejection`).
    pub fn bad_signatures(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| !r.verified)
            .collect()
    }

    /// Blocks until at least `n` requests arrived and returns them all; panics with what did
    /// arrive after `timeout`. From an async test whose runtime also runs the sender, use
    /// [`Self::wait_for_async`].
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.wait_until(&format!("{n} webhook requests"), timeout, |r| r.len() >= n)
    }

    /// [`Self::wait_for`] without blocking the calling runtime.
    pub async fn wait_for_async(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.wait_until_async(&format!("{n} webhook requests"), timeout, |r| r.len() >= n)
            .await
    }

    /// Blocks until `done` accepts the requests received so far, and returns them.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        wait_for(
            what,
            timeout,
            || {
                let received = self.received();
                done(&received).then_some(received)
            },
            || self.summary(),
        )
    }

    /// [`Self::wait_until`] without blocking the calling runtime.
    pub async fn wait_until_async(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        wait_for_async(
            what,
            timeout,
            || {
                let received = self.received();
                done(&received).then_some(received)
            },
            || self.summary(),
        )
        .await
    }

    /// One line per request so far, for panic messages.
    pub fn summary(&self) -> String {
        let received = self.received();
        let mut out = format!(
            "--- webhook receiver {}: {} requests ---\n",
            self.url(),
            received.len()
        );
        for r in &received {
            out.push_str(&format!(
                "{} {} id={:?} verified={} {:?} -> {:?} ({} bytes)\n",
                r.method,
                r.path,
                r.id,
                r.verified,
                r.rejection,
                r.answer,
                r.body.len()
            ));
        }
        out
    }

    /// Serves `listener` until `close`.
    fn accept_on(&mut self, listener: StdListener) {
        listener
            .set_nonblocking(true)
            .expect("make the webhook listener non-blocking");
        let (released_tx, released_rx) = mpsc::channel();
        let acceptor = {
            // `from_std` registers with the reactor of the runtime entered here.
            let _entered = self.runtime.enter();
            Acceptor {
                listener: tokio::net::TcpListener::from_std(listener)
                    .expect("register the webhook listener"),
                connections: JoinSet::new(),
                released: released_tx,
            }
        };
        let task = self
            .runtime
            .spawn(accept_loop(acceptor, self.tls.clone(), self.shared.clone()));
        self.accepting = Some((task, released_rx));
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        if let Some((task, _)) = self.accepting.take() {
            task.abort();
        }
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The accept loop's state. Fields drop in order: the listener first (the port is closed),
/// then the connections (aborted). `close` waits until every clone of `released` is gone:
/// this one and the one each connection task holds.
struct Acceptor {
    listener: tokio::net::TcpListener,
    connections: JoinSet<()>,
    released: mpsc::Sender<()>,
}

async fn accept_loop(mut acceptor: Acceptor, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    loop {
        // Finished connections leave the set so it does not grow over a long test.
        while acceptor.connections.try_join_next().is_some() {}
        let Ok((stream, _peer)) = acceptor.listener.accept().await else {
            continue;
        };
        let (tls, shared) = (tls.clone(), shared.clone());
        let released = acceptor.released.clone();
        acceptor.connections.spawn(async move {
            let _released = released;
            match tls {
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        serve(TokioIo::new(stream), shared).await;
                    }
                }
                None => serve(TokioIo::new(stream), shared).await,
            }
        });
    }
}

async fn serve<I>(io: I, shared: Arc<Shared>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| answer(req, shared.clone()));
    // An error here is a connection the client or a `Disconnect` ended: nothing to report.
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(io, service)
        .await;
}

/// Why the connection was dropped without an answer (`Reply::Disconnect`).
#[derive(Debug)]
struct Disconnected;

impl fmt::Display for Disconnected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("disconnect as planned")
    }
}

impl std::error::Error for Disconnected {}

async fn answer(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Disconnected> {
    let (head, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(status(StatusCode::PAYLOAD_TOO_LARGE)),
    };
    let header = |name: &str| {
        head.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    let verdict = check(
        &shared.keys,
        id.as_deref(),
        timestamp.as_deref(),
        header("webhook-signature").as_deref(),
        &body,
        SystemTime::now(),
    );
    let reply = shared.next_reply();
    lock(&shared.received).push(Received {
        method: head.method.to_string(),
        path: head
            .uri
            .path_and_query()
            .map_or_else(|| head.uri.path().to_string(), |p| p.to_string()),
        headers: head.headers.clone(),
        id,
        timestamp,
        body: if shared.keep_bodies {
            body.to_vec()
        } else {
            Vec::new()
        },
        verified: verdict.is_ok(),
        rejection: verdict.err(),
        arrived: Instant::now(),
        answer: reply.clone(),
    });

    let with_retry_after = |code: StatusCode, retry_after: &Option<String>| {
        let mut response = status(code);
        if let Some(value) = retry_after {
            let value = HeaderValue::from_str(value).expect("Retry-After is a header value");
            response.headers_mut().insert(RETRY_AFTER, value);
        }
        response
    };
    Ok(match &reply {
        Reply::Ok => status(StatusCode::NO_CONTENT),
        Reply::Status(code) => {
            status(StatusCode::from_u16(*code).expect("a planned status is 100..=999"))
        }
        Reply::TooMany { retry_after } => {
            with_retry_after(StatusCode::TOO_MANY_REQUESTS, retry_after)
        }
        Reply::Unavailable { retry_after } => {
            with_retry_after(StatusCode::SERVICE_UNAVAILABLE, retry_after)
        }
        Reply::Slow(delay) => {
            tokio::time::sleep(*delay).await;
            status(StatusCode::NO_CONTENT)
        }
        Reply::Redirect(location) => {
            let mut response = status(StatusCode::FOUND);
            let value = HeaderValue::from_str(location).expect("a redirect URL is a header value");
            response.headers_mut().insert(LOCATION, value);
            response
        }
        Reply::Disconnect => return Err(Disconnected),
    })
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    if code != StatusCode::NO_CONTENT {
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
}

/// The Standard Webhooks check: `Ok` when some `v1,` signature in `signatures` is the
/// HMAC-SHA256 of `{id}.{timestamp}.{body}` under one of `keys` and the timestamp is within
/// [`TIMESTAMP_TOLERANCE`] of `now`; `Err` says what failed.
pub fn check(
    keys: &[Vec<u8>],
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now: SystemTime,
) -> Result<(), String> {
    let id = id.ok_or("no webhook-id header")?;
    let timestamp = timestamp.ok_or("no webhook-timestamp header")?;
    let signatures = signatures.ok_or("no webhook-signature header")?;
    let sent: u64 = timestamp
        .parse()
        .map_err(|_| format!("webhook-timestamp {timestamp:?} is not Unix seconds"))?;
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if now.abs_diff(sent) > TIMESTAMP_TOLERANCE.as_secs() {
        return Err(format!(
            "webhook-timestamp {sent} is {}s from now",
            now.abs_diff(sent)
        ));
    }
    let expected: Vec<[u8; 32]> = keys
        .iter()
        .map(|key| hmac_sha256_parts(key, &signed_parts(id, timestamp, body)))
        .collect();
    let matched = signatures
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .any(|sig| expected.iter().any(|e| constant_time_eq(e, &sig)));
    if matched {
        Ok(())
    } else {
        Err(format!("no v1 signature matches a secret: {signatures:?}"))
    }
}

/// `v1,<base64>` for `secret` (`whsec_<base64 key>`) over `{id}.{timestamp}.{body}`: what a
/// sender puts (space-separated, one per secret) into `webhook-signature`.
pub fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = secret_key(secret).expect("a whsec_<base64> secret");
    let mac = hmac_sha256(&key, &signed_content(id, timestamp, body));
    format!("v1,{}", STANDARD.encode(mac))
}

/// A fresh `whsec_` secret with a random 24-byte key.
pub fn new_secret() -> String {
    let key: [u8; 24] = rand::random();
    format!("whsec_{}", STANDARD.encode(key))
}

/// The current time as `webhook-timestamp` text.
pub fn now_timestamp() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .to_string()
}

/// The key of a `whsec_<base64>` secret.
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    STANDARD.decode(secret.strip_prefix("whsec_")?).ok()
}

/// `{id}.{timestamp}.{body}` as the pieces a MAC reads in turn (no copy of the body).
fn signed_parts<'a>(id: &'a str, timestamp: &'a str, body: &'a [u8]) -> [&'a [u8]; 5] {
    [id.as_bytes(), b".", timestamp.as_bytes(), b".", body]
}

fn signed_content(id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    signed_parts(id, timestamp, body).concat()
}

/// HMAC-SHA256 (RFC 2104) written out over `sha2`, so the harness does not share the
/// product's MAC code.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    hmac_sha256_parts(key, &[message])
}

/// [`hmac_sha256`] of the concatenation of `parts`.
fn hmac_sha256_parts(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let mut inner = Sha256::new().chain_update(pad(0x36));
    for part in parts {
        inner.update(part);
    }
    let inner = inner.finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn distinct(ids: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    ids.filter(|id| seen.insert(id.clone())).collect()
}

/// A poisoned lock only means another test thread panicked; the data is still what it was.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
