//! The loopback redirect listener of the authorization-code flow (RFC 8252 §7.3): a small
//! actix-web server on a loopback address that waits for the browser to come back to the
//! redirect path, answers it with a short page, hands `code` (or the reason the flow ends)
//! to [`LoopbackListener::wait`], and stops.
//!
//! Invariants:
//! - Only the redirect path decides the flow. Anything else the browser asks for (a
//!   favicon, a retry of a stray tab) gets a 404 and the wait goes on.
//! - The first request on the redirect path decides, whatever it says: the code, a wrong
//!   `state` (possible CSRF), the provider's `error`, or no code at all. Nothing after it
//!   can change the outcome.
//! - Requests are bounded: one worker, a few connections, a deadline for the request head,
//!   a cap on the target's length, and no request body is ever read.
//! - The listener stops when the wait ends (graceful, so the browser still gets its page)
//!   and when it is dropped.

use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::http::header::ContentType;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use tokio::sync::oneshot;

/// The page for a redirect that carried a code.
const RECEIVED: &str = "mailsluice: authorization received. You can close this window.";
/// The page for a redirect that ended the flow otherwise (the terminal says why).
const FAILED: &str = "mailsluice: authorization failed; see the terminal.";
/// The page for any other path.
const NOT_THE_REDIRECT: &str = "not the redirect path";
/// The page for a second redirect after the flow was decided.
const ALREADY_DECIDED: &str =
    "mailsluice: this sign-in was already handled; see the terminal. You can close this window.";

/// The longest request target (path and query) looked at. Real redirects carry a code and a
/// state of a few hundred bytes; anything near this is not one.
const MAX_TARGET_BYTES: usize = 8 * 1024;
/// How long a connection may take to send its request head.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once: a browser opens a few in parallel, nobody else should.
const MAX_CONNECTIONS: usize = 8;
/// How long stopping waits for answers still being written.
const SHUTDOWN_TIMEOUT_SECS: u64 = 1;

/// Why the redirect did not bring a usable code. The texts are what the operator reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum RedirectError {
    #[error("cannot listen on {addr} for the redirect: {detail}")]
    Listen { addr: String, detail: String },
    #[error("redirect carried a wrong state (possible CSRF); nothing stored")]
    WrongState,
    #[error("provider answered {error}: {description}")]
    Provider { error: String, description: String },
    #[error("redirect carried no code")]
    NoCode,
    #[error(
        "no redirect arrived within {0}s; run authorize again (or use --device on a headless server)"
    )]
    Timeout(u64),
    #[error("the redirect listener stopped before the browser came back")]
    Stopped,
}

type Outcome = Result<String, RedirectError>;

/// What the request handlers share with the waiting flow.
struct Shared {
    /// The `state` sent with the authorization request; a redirect must carry it back.
    state: String,
    /// Taken by the first request on the redirect path, which decides the flow.
    decide: Mutex<Option<oneshot::Sender<Outcome>>>,
}

/// A running loopback listener.
pub(super) struct LoopbackListener {
    /// The port bound (the configured one, or the one the system chose for port 0).
    port: u16,
    handle: ServerHandle,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    outcome: oneshot::Receiver<Outcome>,
}

impl LoopbackListener {
    /// Binds `host:port` (port 0: any) and serves `path`. Must be called on a Tokio runtime
    /// (the server's workers run on threads of their own).
    pub(super) fn start(
        host: &str,
        port: u16,
        path: &str,
        state: &str,
    ) -> Result<LoopbackListener, RedirectError> {
        let listen_err = |e: std::io::Error| RedirectError::Listen {
            addr: format!("{host}:{port}"),
            detail: e.to_string(),
        };
        let listener = TcpListener::bind((host, port)).map_err(listen_err)?;
        let bound = listener.local_addr().map_err(listen_err)?.port();
        let (tx, outcome) = oneshot::channel();
        let shared = web::Data::new(Shared {
            state: state.to_string(),
            decide: Mutex::new(Some(tx)),
        });
        let path = path.to_string();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .route(&path, web::get().to(redirect))
                .default_service(web::to(|| async {
                    page(StatusCode::NOT_FOUND, NOT_THE_REDIRECT)
                }))
        })
        .workers(1)
        .max_connections(MAX_CONNECTIONS)
        .client_request_timeout(REQUEST_HEAD_TIMEOUT)
        // Every answer closes its connection, so stopping never waits on an idle browser
        // connection.
        .keep_alive(actix_web::http::KeepAlive::Disabled)
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
        // The CLI handles Ctrl-C itself; the listener must not stop the process's runtime.
        .disable_signals()
        .listen(listener)
        .map_err(listen_err)?
        .run();
        let handle = server.handle();
        Ok(LoopbackListener {
            port: bound,
            handle,
            server: Some(tokio::spawn(server)),
            outcome,
        })
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// Waits up to `timeout` for the redirect, then stops the listener (after the browser
    /// got its page).
    pub(super) async fn wait(&mut self, timeout: Duration) -> Outcome {
        let outcome = match tokio::time::timeout(timeout, &mut self.outcome).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(RedirectError::Stopped),
            Err(_) => Err(RedirectError::Timeout(timeout.as_secs())),
        };
        self.handle.stop(true).await;
        if let Some(server) = self.server.take() {
            // Stopped above: this only collects the server future's result.
            let _ = server.await;
        }
        outcome
    }
}

impl Drop for LoopbackListener {
    fn drop(&mut self) {
        // The flow ended early (an error before the wait, or the caller gave up): free the
        // port now. The command is sent at once; nothing needs to await it.
        drop(self.handle.stop(false));
    }
}

/// The handler for the redirect path.
async fn redirect(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    if req.uri().path().len() + req.query_string().len() > MAX_TARGET_BYTES {
        return page(StatusCode::URI_TOO_LONG, NOT_THE_REDIRECT);
    }
    let params = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .unwrap_or_default();
    let outcome = judge(&params, &shared.state);
    let ok = outcome.is_ok();
    let Some(decide) = shared
        .decide
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return page(StatusCode::CONFLICT, ALREADY_DECIDED);
    };
    // The flow may have given up (timeout) in the meantime; the page still tells the truth
    // about this redirect.
    let _ = decide.send(outcome);
    if ok {
        page(StatusCode::OK, RECEIVED)
    } else {
        page(StatusCode::BAD_REQUEST, FAILED)
    }
}

/// What a redirect's query parameters mean for the flow. The state is checked first: an
/// `error` or a `code` under a state that is not ours says nothing about our request.
fn judge(params: &[(String, String)], state: &str) -> Outcome {
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if get("state") != Some(state) {
        return Err(RedirectError::WrongState);
    }
    if let Some(error) = get("error") {
        return Err(RedirectError::Provider {
            error: error.to_string(),
            description: get("error_description").unwrap_or_default().to_string(),
        });
    }
    get("code").map(str::to_string).ok_or(RedirectError::NoCode)
}

/// The short HTML page the browser shows.
fn page(status: StatusCode, text: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(ContentType::html())
        .body(format!(
            "<!doctype html><title>mailsluice</title><p>{text}</p>\n"
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_state_is_checked_before_anything_else() {
        assert_eq!(
            judge(&pairs(&[("code", "c"), ("state", "s")]), "s"),
            Ok("c".into())
        );
        assert_eq!(
            judge(&pairs(&[("code", "c"), ("state", "other")]), "s"),
            Err(RedirectError::WrongState)
        );
        assert_eq!(
            judge(&pairs(&[("code", "c")]), "s"),
            Err(RedirectError::WrongState)
        );
        assert_eq!(
            judge(
                &pairs(&[("error", "access_denied"), ("state", "other")]),
                "s"
            ),
            Err(RedirectError::WrongState)
        );
        assert_eq!(
            judge(
                &pairs(&[
                    ("error", "access_denied"),
                    ("error_description", "no"),
                    ("state", "s"),
                    ("code", "c")
                ]),
                "s"
            ),
            Err(RedirectError::Provider {
                error: "access_denied".into(),
                description: "no".into()
            })
        );
        assert_eq!(
            judge(&pairs(&[("state", "s")]), "s"),
            Err(RedirectError::NoCode)
        );
    }

    /// One raw HTTP/1.1 GET against the listener: (status, body).
    async fn get(port: u16, target: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        conn.write_all(format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap();
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn other_paths_do_not_end_the_wait_and_the_first_redirect_decides() {
        let mut listener = LoopbackListener::start("127.0.0.1", 0, "/cb", "st").unwrap();
        let port = listener.port();
        assert_ne!(port, 0);
        let (status, body) = get(port, "/favicon.ico").await;
        assert_eq!((status, body.contains(NOT_THE_REDIRECT)), (404, true));
        let (status, _) = get(port, "/cb/other?code=c&state=st").await;
        assert_eq!(status, 404);
        let long = format!("/cb?code=c&state=st&pad={}", "x".repeat(MAX_TARGET_BYTES));
        let (status, _) = get(port, &long).await;
        assert_eq!(status, 414);

        let (status, body) = get(port, "/cb?code=the%20code&state=st").await;
        assert_eq!(status, 200);
        assert!(body.contains(RECEIVED), "{body}");
        assert!(body.starts_with("<!doctype html>"), "{body}");
        // A second redirect (a reload) cannot change the outcome.
        let (status, body) = get(port, "/cb?error=access_denied&state=st").await;
        assert_eq!(status, 409);
        assert!(body.contains("already handled"), "{body}");

        let outcome = listener.wait(Duration::from_secs(5)).await;
        assert_eq!(outcome, Ok("the code".into()));
        // Stopped: the port no longer answers.
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_wrong_state_ends_the_flow_with_a_failure_page() {
        let mut listener = LoopbackListener::start("127.0.0.1", 0, "/callback", "st").unwrap();
        let (status, body) = get(listener.port(), "/callback?code=c&state=forged").await;
        assert_eq!(status, 400);
        assert!(body.contains(FAILED), "{body}");
        assert_eq!(
            listener.wait(Duration::from_secs(5)).await,
            Err(RedirectError::WrongState)
        );
    }

    #[tokio::test]
    async fn no_redirect_within_the_timeout_stops_the_listener() {
        let mut listener = LoopbackListener::start("127.0.0.1", 0, "/callback", "st").unwrap();
        let port = listener.port();
        let outcome = listener.wait(Duration::from_millis(50)).await;
        assert_eq!(outcome, Err(RedirectError::Timeout(0)));
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn a_port_in_use_is_reported_with_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let Err(e) = LoopbackListener::start("127.0.0.1", port, "/callback", "st") else {
            panic!("bound a port already in use");
        };
        assert!(
            e.to_string().starts_with(&format!(
                "cannot listen on 127.0.0.1:{port} for the redirect: "
            )),
            "{e}"
        );
    }
}
