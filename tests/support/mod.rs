//! Test harness: real servers for mailsluice's integration tests.
//!
//! Every test starts its own servers, on ephemeral loopback ports, with all their files in a
//! `tempfile::TempDir`, and they stop when the handle is dropped. Nothing is shared between
//! tests, so they run in parallel processes under `cargo nextest` (or threads under
//! `cargo test`).
//!
//! - [`oidc::Oidc`]: `node tests/support/oidc/server.mjs`, an `oidc-provider` 8.x authorization
//!   server with fixed clients (`collector`, `collector-confidential`, `svc`, `dovecot`), a
//!   login form of its own, and `/test/` hooks (token endpoint statistics, injected faults,
//!   revoking a user). The Rust side plays the browser for the authorization-code (PKCE) and
//!   device flows.
//! - [`dovecot::Dovecot`]: Debian's Dovecot 2.3 (`dovecot -F -c <generated config>`) with IMAPS,
//!   IMAP+STARTTLS, POP3S and POP3+STLS, password users from a passwd-file and, when given an
//!   introspection URL, OAuth2 (XOAUTH2/OAUTHBEARER) validated against the OIDC server.
//! - [`certs`]: a throw-away CA and the server certificate both use.
//! - [`wire`]: blocking line-oriented IMAP/POP3 clients over TCP and rustls, for tests that
//!   talk to the servers directly.
//! - [`recorder::Recorder`]: a TLS relay in front of Dovecot's plain port that writes each
//!   connection down as an ingest transcript (`tests/transcripts/ingest/`).
//! - [`nats::NatsServer`]: Debian's `nats-server` 2.9 with JetStream (`-js`), a file store in
//!   its temporary directory, optionally a small `max_payload`; stop, kill and restart on the
//!   same port and store; functions that read a stream or an object back with `async-nats`.
//! - [`webhook::WebhookReceiver`]: an HTTP/1.1 (optionally HTTPS) receiver that checks
//!   Standard Webhooks signatures with its own HMAC code, records every request and answers
//!   per a plan the test changes while it runs (errors, 429/503 with Retry-After, slow
//!   answers, redirects, dropped connections, a closed port).
//! - [`node_process::NodeProcess`]: the `mailsluice run` process itself, on a port the system
//!   picked, ready when `/readyz` says so (also used by the benchmarks and the demo).
//!
//! Starting and stopping servers is synchronous (std::process, std::net). HTTP goes through
//! blocking reqwest on a short-lived thread of its own, so these functions also work when
//! called from inside an async test (`#[tokio::test]`, `#[actix_rt::test]`), where blocking
//! reqwest may not run. The exceptions are async by nature: the NATS functions that use
//! `async-nats` are `async fn`s, and the webhook receiver serves from a Tokio runtime on a
//! thread of its own (its controls stay synchronous).
//!
//! Prerequisites (`scripts/install-deps`): `dovecot-imapd`, `dovecot-pop3d`, `nats-server`,
//! Node.js and `npm ci` in `tests/support/oidc`. Readiness is waited for on the event (the
//! server's readiness line, its greeting), never by sleeping, with [`START_TIMEOUT`]; a server
//! that does not come up panics with its log.
//!
//! Use from a file in `tests/`: `mod support;` then e.g.
//! `let oidc = support::Oidc::start(Default::default());`.

// Each integration test is its own crate and uses a different part of the harness.
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod dovecot;
pub mod nats;
pub mod node_process;
pub mod oidc;
pub mod prometheus;
pub mod recorder;
pub mod webhook;
pub mod wire;

use std::path::Path;
use std::time::{Duration, Instant};

pub use certs::{Ca, ca};
pub use dovecot::{Dovecot, DovecotOptions};
pub use nats::{NatsOptions, NatsServer};
pub use node_process::{NodeProcess, read_api_token};
pub use oidc::{Oidc, OidcOptions, TokenResponse};
pub use webhook::{Reply, WebhookOptions, WebhookReceiver};

/// How long a server may take to become ready before the harness gives up.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Root of the crate (where Cargo.toml is), for locating `tests/support/oidc`.
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The pauses between polls of [`wait_for`] and [`wait_for_async`]: 5 ms, doubling up to
/// 100 ms, until the deadline.
struct Polls {
    timeout: Duration,
    deadline: Instant,
    pause: Duration,
}

impl Polls {
    fn new(timeout: Duration) -> Polls {
        Polls {
            timeout,
            deadline: Instant::now() + timeout,
            pause: Duration::from_millis(5),
        }
    }

    /// The pause before the next poll; panics naming `what` (and `context()`) once the
    /// deadline has passed.
    fn next(&mut self, what: &str, context: &mut Option<impl FnOnce() -> String>) -> Duration {
        if Instant::now() >= self.deadline {
            let context = context.take().map(|c| c()).unwrap_or_default();
            panic!(
                "timed out after {:?} waiting for {what}\n{context}",
                self.timeout
            );
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(Duration::from_millis(100));
        pause
    }
}

/// Polls `probe` until it returns `Some`, or panics with `what` and `context()` after
/// `timeout`. For conditions that have no event to wait on (a port starting to accept, a file
/// appearing); the poll interval starts at 5 ms and doubles up to 100 ms.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
    context: impl FnOnce() -> String,
) -> T {
    let (mut polls, mut context) = (Polls::new(timeout), Some(context));
    loop {
        if let Some(value) = probe() {
            return value;
        }
        std::thread::sleep(polls.next(what, &mut context));
    }
}

/// [`wait_for`] inside an async test: the pause between polls is a Tokio sleep, so tasks
/// on the same runtime (the code under test) keep running while the test waits.
pub async fn wait_for_async<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
    context: impl FnOnce() -> String,
) -> T {
    let (mut polls, mut context) = (Polls::new(timeout), Some(context));
    loop {
        if let Some(value) = probe() {
            return value;
        }
        tokio::time::sleep(polls.next(what, &mut context)).await;
    }
}

/// Runs `f` on a fresh thread and returns its result (re-raising its panic).
///
/// Blocking reqwest starts and drops a Tokio runtime of its own, which panics on a thread that
/// is already driving a runtime; a scoped thread never is.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// `sh` holding our pipe: `read` returns at EOF, i.e. when this process is gone, and then it
/// kills the process group `pgid` (a server spawned with `process_group(0)`, for servers that
/// do not watch their stdin). It joins that group, so it shares the server's fate and a
/// terminal's Ctrl-C (sent to our group) cannot kill it before it did its job. `name` is its
/// `$0`, what `ps` shows.
pub fn spawn_watchdog(pgid: u32, name: &str) -> Option<std::process::Child> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    Command::new("sh")
        .process_group(pgid as i32)
        .arg("-c")
        .arg(r#"read -r _ ; kill -KILL "-$1" 2>/dev/null"#)
        .arg(name)
        .arg(pgid.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// Reads a log file for a panic message or an assertion; a missing file reads as a note.
pub fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<{} unreadable: {e}>", path.display()),
    }
}

/// The last `max_lines` lines of `text`, for panic messages that stay readable.
pub fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    let mut out = String::new();
    if start > 0 {
        out.push_str(&format!("[... {start} earlier lines ...]\n"));
    }
    for line in &lines[start..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}
