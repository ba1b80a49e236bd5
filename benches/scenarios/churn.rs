//! Scenario 5, token churn: many OAuth2 (XOAUTH2) IMAP sources on one node, with access
//! tokens that live only `--token-ttl` seconds, for `--duration` seconds (default 300). It
//! counts the refresh requests the node made against the fewest that could have served every
//! login, and the logins refused for an expired token.
//!
//! How the sources log in: they poll (`idle = false`) every TTL / 2 seconds. Polling makes
//! the login times independent of the tokens, so "how many refreshes did these logins need"
//! has an answer the node did not choose: every token can serve two logins, and a node that
//! refreshes at every login makes twice the minimum. IDLE sources would not measure that: an
//! IDLE session ends because its token is about to expire and the next session needs a new
//! one, so logins and refreshes are the same events, while the login-based minimum below
//! would let the previous token (still valid for a few seconds) cover that login and count
//! half of them. Polling is also how POP3 sources and IMAP sources without IDLE always run.
//!
//! Setup: one Dovecot mailbox per source, holding one small message; oidc-provider issuing
//! opaque access tokens of TTL seconds, refresh tokens rotating on every use; Dovecot checks
//! every login by introspection (no cache), so a token used after its expiry is refused.
//! Dovecot's process and client limits are raised as in scenario 3: each of the node's
//! concurrent sessions (`node.max_sessions`, 256) holds an imap-login and an imap process.
//! Before the node starts (untimed): an authorization-code grant per mailbox at the OIDC
//! server, its refresh token imported with `mailsluice tokens import`, then a wait of TTL + 1
//! seconds, so the access tokens the imports obtained have expired and every token used in
//! the run comes from a refresh counted in the run. Then `mailsluice run` runs for the
//! duration and is stopped with SIGTERM.
//!
//! Counted:
//! - refresh requests made: `refresh_token` grants at the OIDC server during the run (its
//!   `/test/stats`, after minus before), cross-checked with the node's
//!   `mailsluice_token_refreshes_total` (read just before SIGTERM, so it misses refreshes
//!   made between that reading and the node's exit);
//! - the minimum needed, from Dovecot's log alone: per mailbox, the fewest tokens of lifetime
//!   TTL that cover every one of its XOAUTH2 logins (greedy: a token obtained at a login
//!   covers the logins until TTL later), summed. The simple bound sources x ceil(duration /
//!   TTL) is shown for context;
//! - failed logins by reason (Dovecot's `oauth2 failed: ...` line of the same session: an
//!   introspection answer "not active" is an expired token here, nothing is revoked), the
//!   node's auth errors and failed sessions, sources in `needs_reauth`;
//! - the node's CPU time and peak RSS (`/proc/PID/stat`, `VmHWM`).
//!
//! The benchmark fails on: a login refused for an expired token, an auth error seen by the
//! node, a refresh refused by the provider, a source in `needs_reauth`, a source that never logged in (or no
//! login at all), a mailbox whose message was not stored, or a node that did not run to the
//! end. The refresh ratio is the target, reported as met or not, not a failure.
//!
//! Smoke (`--smoke`): 10 sources, a TTL of at most 10 s and 30 s of churn; well under a
//! minute, and it still fails on any expired-token login.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::contenders::{self, PASSWORD};
use crate::support::{self, Dovecot, DovecotOptions, NodeProcess, Oidc, OidcOptions};
use crate::{LiveArgs, LiveReport};

/// Where the node reports the address it listens on, in the work directory.
const LISTEN_FILE: &str = "http.addr";

/// Churn length without `--duration`.
const DEFAULT_DURATION: Duration = Duration::from_secs(300);
const SMOKE_DURATION: Duration = Duration::from_secs(30);
/// The longest token lifetime a smoke run uses, so that it sees several lifetimes.
const SMOKE_MAX_TTL: Duration = Duration::from_secs(10);

/// The refresh target: made within this factor of the minimum.
const TARGET_RATIO: f64 = 1.05;

/// What the run is made of, as decided from the arguments.
struct Plan {
    sources: usize,
    ttl: Duration,
    duration: Duration,
    poll: Duration,
    /// `node.max_sessions` of the node (its default).
    max_sessions: usize,
    /// Dovecot's imap-login in high-performance mode (`--login-mode`).
    high_performance_login: bool,
}

impl Plan {
    fn new(args: &LiveArgs) -> Plan {
        let ttl = if args.smoke {
            args.token_ttl.min(SMOKE_MAX_TTL)
        } else {
            args.token_ttl
        };
        let ttl = ttl.max(Duration::from_secs(2));
        Plan {
            sources: args.sources,
            ttl,
            duration: args.duration.unwrap_or(if args.smoke {
                SMOKE_DURATION
            } else {
                DEFAULT_DURATION
            }),
            poll: Duration::from_secs((ttl.as_secs() / 2).max(1)),
            max_sessions: 256,
            high_performance_login: args.high_performance_login,
        }
    }

    fn user(i: usize) -> String {
        format!("churn{:04}@example.test", i + 1)
    }

    fn source(i: usize) -> String {
        format!("c{:04}", i + 1)
    }

    /// Dovecot settings added to the harness configuration.
    fn dovecot_config(&self) -> String {
        format!(
            "# The harness logs every login and mailbox open at debug level for tests; not here.\n\
             mail_debug = no\n\
             auth_debug = no\n\
             # Its oauth2 passdb logs each introspection at debug level (about 20 lines a login).\n\
             debug_log_path = /dev/null\n\
             # One line per failed authentication, with the reason: counted by reason.\n\
             auth_verbose = yes\n\
             # Login times to the microsecond: the fewest tokens that could have served them.\n\
             log_timestamp = \"%Y-%m-%d %H:%M:%S.%{{usecs}} \"\n\
             # Every TLS connection holds an imap-login process (the TLS proxy) and an imap\n\
             # process; the defaults (100 processes per service, 1000 clients) would throttle\n\
             # the node's {sessions} concurrent sessions (node.max_sessions).\n\
             default_process_limit = {}\n\
             default_client_limit = {}\n{}",
            (2 * self.max_sessions + 100).max(1100),
            (4 * self.max_sessions).max(5000),
            if self.high_performance_login {
                format!(
                    "# --login-mode high-performance: one imap-login process proxies every TLS\n\
                     # session and keeps one ticket key, so a ticket is good for the next\n\
                     # connection and the node's sessions resume.\n\
                     service imap-login {{\n  service_count = 0\n  process_min_avail = 1\n  \
                     client_limit = {}\n  vsz_limit = 1G\n}}\n",
                    (4 * self.max_sessions).max(5000)
                )
            } else {
                String::new()
            },
            sessions = self.max_sessions,
        )
    }

    fn node_config(&self, dir: &Path, oidc: &Oidc, dovecot: &Dovecot) -> String {
        let mut c = format!(
            "[node]\ndata_dir = \"{data}\"\nhttp_listen = \"127.0.0.1:0\"\nhttp_listen_file = \"{listen}\"\n\
             secret_key_file = \"{key}\"\n\n\
             [tls]\nextra_ca_file = \"{ca}\"\n\n\
             [providers.local]\nkind = \"oidc\"\nissuer = \"{issuer}\"\nclient_id = \"collector\"\n\n",
            data = dir.join("data").display(),
            listen = dir.join(LISTEN_FILE).display(),
            key = dir.join("secret.key").display(),
            ca = dovecot.ca_pem.display(),
            issuer = oidc.issuer,
        );
        for i in 0..self.sources {
            let _ = writeln!(
                c,
                "[sources.{}]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {}\nsecurity = \"tls\"\n\
                 username = \"{}\"\nauth = \"oauth2\"\nprovider = \"local\"\nsasl = \"xoauth2\"\n\
                 folders = [\"INBOX\"]\nidle = false\npoll_interval_secs = {}\n",
                Plan::source(i),
                dovecot.imaps_port,
                Plan::user(i),
                self.poll.as_secs(),
            );
        }
        c
    }
}

pub fn run(args: &LiveArgs, mailsluice: &Path) -> LiveReport {
    let plan = Plan::new(args);
    let title = format!(
        "Scenario 5: token churn, {} OAuth2 sources, TTL {} s",
        plan.sources,
        plan.ttl.as_secs()
    );
    eprintln!("\n== {title}");
    let load_before = crate::loadavg();
    match churn(&plan, args.keep, mailsluice) {
        Ok(outcome) => {
            let failures = outcome.failures();
            LiveReport {
                markdown: outcome.markdown(&title, &plan, &load_before),
                failures,
            }
        }
        Err(e) => LiveReport {
            markdown: format!("## {title}\n\nThe scenario could not run: {e}\n"),
            failures: vec![format!("{title}: {e}")],
        },
    }
}

/// Everything a run yields.
struct Outcome {
    dovecot_config: String,
    /// Dovecot ran one imap-login process (`--login-mode high-performance`): the node's TLS
    /// sessions should resume.
    resumption_expected: bool,
    /// Untimed preparation: grants and imports.
    prepared: Duration,
    /// The node's run, spawn to SIGTERM.
    ran: Duration,
    /// `refresh_token` grants at the OIDC server during the run: (ok, error).
    refreshes: (u64, u64),
    node: NodeFigures,
    logins: Logins,
    load_after: String,
}

/// What the node reported about itself at the end of the run.
struct NodeFigures {
    /// `mailsluice_token_refreshes_total`: (ok, error).
    refreshes: (u64, u64),
    /// `mailsluice_errors_total{kind="auth"}` and `{kind="token"}`, over all sources.
    auth_errors: u64,
    token_errors: u64,
    /// `/api/sources`, summed.
    sessions_ok: u64,
    sessions_failed: u64,
    stored: u64,
    /// Sources by state.
    states: BTreeMap<String, u64>,
    /// A few of the sources' last errors, for the report.
    last_errors: Vec<String>,
    cpu: Duration,
    peak_rss_bytes: u64,
    /// `mailsluice_tls_handshakes_total` by kind: (full, resumed).
    handshakes: (u64, u64),
    /// CPU time of Dovecot's processes over the node's run, when it could be read.
    server_cpu: Option<Duration>,
    /// How the node ended after SIGTERM, and its last log lines when it did not end well.
    exit: Result<(), String>,
}

fn churn(plan: &Plan, keep: bool, mailsluice: &Path) -> Result<Outcome, String> {
    let preparing = Instant::now();
    let accounts: Vec<(String, String)> = (0..plan.sources)
        .map(|i| (Plan::user(i), PASSWORD.to_string()))
        .collect();
    let oidc = Oidc::start(OidcOptions {
        access_token_ttl_secs: plan.ttl.as_secs(),
        users: accounts.clone(),
        ..OidcOptions::default()
    });
    let dovecot_config = plan.dovecot_config();
    let dovecot = Dovecot::start(DovecotOptions {
        users: accounts,
        oidc_introspection_url: Some(oidc.introspection_url()),
        min_tls: "TLSv1.2",
        extra_config: dovecot_config.clone(),
    });
    for i in 0..plan.sources {
        dovecot.seed(&Plan::user(i), &[message(i)]);
    }
    let work = tempfile::Builder::new()
        .prefix("mailsluice-churn-")
        // Private: it holds the node's key, store and, for a moment, a refresh token.
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .map_err(|e| format!("create the work directory: {e}"))?;
    let dir = work.path();
    let config = dir.join("mailsluice.toml");
    std::fs::write(&config, plan.node_config(dir, &oidc, &dovecot))
        .map_err(|e| format!("write {}: {e}", config.display()))?;
    import_tokens(plan, &oidc, mailsluice, &config, dir)?;
    // The imports' access tokens must be dead before the node starts (see the module docs).
    std::thread::sleep(plan.ttl + Duration::from_secs(1));
    let prepared = preparing.elapsed();
    eprintln!(
        "prepared {} sources in {:.1} s (untimed: grants, imports, waiting out the imported tokens)",
        plan.sources,
        prepared.as_secs_f64()
    );

    let before = oidc.token_counts("refresh_token");
    let started = Instant::now();
    let node = run_node(
        plan,
        mailsluice,
        &config,
        dir,
        &oidc,
        dovecot.process_group(),
    )?;
    let ran = started.elapsed();
    let after = oidc.token_counts("refresh_token");
    let logins = Logins::read(&dovecot, plan.ttl);
    let load_after = crate::loadavg();
    if keep {
        let _ = std::fs::write(dir.join("dovecot.log"), dovecot.log());
        let _ = std::fs::write(dir.join("oidc.log"), oidc.log());
        eprintln!("kept: {}", work.keep().display());
    }
    Ok(Outcome {
        dovecot_config,
        resumption_expected: plan.high_performance_login,
        prepared,
        ran,
        refreshes: (after.0 - before.0, after.1 - before.1),
        node,
        logins,
        load_after,
    })
}

/// The one message of mailbox `i`: small, the churn is about logins.
fn message(i: usize) -> Vec<u8> {
    format!(
        "From: sender@example.test\r\nTo: {}\r\nSubject: churn {i}\r\nMessage-ID: <churn-{i}@example.test>\r\n\
         Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n\r\nOne message per mailbox.\r\n",
        Plan::user(i)
    )
    .into_bytes()
}

/// A fresh grant per source, imported with the CLI ([`contenders::grant_and_import`]).
fn import_tokens(
    plan: &Plan,
    oidc: &Oidc,
    mailsluice: &Path,
    config: &Path,
    dir: &Path,
) -> Result<(), String> {
    let users: Vec<String> = (0..plan.sources).map(Plan::user).collect();
    contenders::grant_and_import(oidc, &users, Plan::source, mailsluice, config, dir)
}

/// Runs `mailsluice run` for the plan's duration, reads its figures, stops it with SIGTERM.
fn run_node(
    plan: &Plan,
    mailsluice: &Path,
    config: &Path,
    dir: &Path,
    oidc: &Oidc,
    server_group: u32,
) -> Result<NodeFigures, String> {
    let server_before = crate::measure::group_cpu(server_group);
    let log_path = dir.join("node.log");
    let log = std::fs::File::create(&log_path).map_err(|e| format!("create node.log: {e}"))?;
    let err = log.try_clone().map_err(|e| format!("dup node.log: {e}"))?;
    let started = Instant::now();
    let mut command = Command::new(mailsluice);
    command
        .arg("-c")
        .arg(config)
        .arg("run")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    let tail = || support::tail(&support::read_log(&log_path), 20);
    let mut node = NodeProcess::start(command, &dir.join(LISTEN_FILE), Duration::from_secs(60))
        .map_err(|e| format!("{e}; the node's last lines:\n{}", tail()))?;
    let base = format!(
        "http://{}",
        node.http()
            .ok_or("the node is ready but reported no address")?
    );
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .default_headers(support::node_process::bearer(
            &dir.join("data").join("api.token"),
        )?)
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let mut next_progress = Duration::from_secs(60);
    while started.elapsed() < plan.duration {
        if let Some(status) = node.exited() {
            eprintln!("the node's last lines:\n{}", tail());
            return Err(format!(
                "the node exited after {:.0} s ({status})",
                started.elapsed().as_secs_f64()
            ));
        }
        if started.elapsed() >= next_progress {
            let (ok, error) = oidc.token_counts("refresh_token");
            eprintln!(
                "churn: {:.0}/{} s, refresh_token grants so far (imports included): {ok} ok, {error} failed",
                started.elapsed().as_secs_f64(),
                plan.duration.as_secs()
            );
            next_progress += Duration::from_secs(60);
        }
        std::thread::sleep(
            Duration::from_millis(500).min(plan.duration.saturating_sub(started.elapsed())),
        );
    }
    let metrics = get(&client, &format!("{base}/metrics"));
    let sources = get(&client, &format!("{base}/api/sources"));
    let (cpu, peak_rss_bytes) = proc_figures(node.pid());
    let server_cpu = server_before
        .zip(crate::measure::group_cpu(server_group))
        .map(|(before, after)| after.saturating_sub(before));
    let exit =
        stop(&mut node).inspect_err(|e| eprintln!("{e}; the node's last lines:\n{}", tail()));
    let metrics = metrics?;
    let sources: serde_json::Value =
        serde_json::from_str(&sources?).map_err(|e| format!("/api/sources is not JSON: {e}"))?;
    let mut figures = NodeFigures {
        refreshes: (
            metric_sum(
                &metrics,
                "mailsluice_token_refreshes_total",
                "outcome=\"ok\"",
            ),
            metric_sum(
                &metrics,
                "mailsluice_token_refreshes_total",
                "outcome=\"error\"",
            ),
        ),
        auth_errors: metric_sum(&metrics, "mailsluice_errors_total", "kind=\"auth\""),
        token_errors: metric_sum(&metrics, "mailsluice_errors_total", "kind=\"token\""),
        sessions_ok: 0,
        sessions_failed: 0,
        stored: 0,
        states: BTreeMap::new(),
        last_errors: Vec::new(),
        cpu,
        peak_rss_bytes,
        handshakes: (
            metric_sum(&metrics, "mailsluice_tls_handshakes_total", "kind=\"full\""),
            metric_sum(
                &metrics,
                "mailsluice_tls_handshakes_total",
                "kind=\"resumed\"",
            ),
        ),
        server_cpu,
        exit,
    };
    for s in sources.as_array().into_iter().flatten() {
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        figures.sessions_ok += n("sessions_ok");
        figures.sessions_failed += n("sessions_failed");
        figures.stored += n("stored_total");
        let state = s["state"].as_str().unwrap_or("unknown").to_string();
        *figures.states.entry(state).or_default() += 1;
        if let Some(e) = s["last_error"].as_str()
            && figures.last_errors.len() < 5
        {
            figures.last_errors.push(format!(
                "{}: {}",
                s["name"].as_str().unwrap_or("?"),
                e.lines().next().unwrap_or("")
            ));
        }
    }
    Ok(figures)
}

fn get(client: &reqwest::blocking::Client, url: &str) -> Result<String, String> {
    client
        .get(url)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .map_err(|e| format!("GET {url}: {e}"))
}

/// SIGTERM, then up to a minute for the graceful stop (SIGKILL after that).
fn stop(node: &mut NodeProcess) -> Result<(), String> {
    let (_, status) = node.stop(Duration::from_secs(60))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the node ended with {status} after SIGTERM"))
    }
}

/// CPU time (user + system) and peak RSS (`VmHWM`) of a running process. A process the
/// benchmark spawns starts with a fresh address space at `execve`, so `VmHWM` is its own.
fn proc_figures(pid: u32) -> (Duration, u64) {
    let cpu = crate::measure::proc_stat(pid).map_or(Duration::ZERO, |s| s.cpu);
    let peak = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0);
    (cpu, peak)
}

/// The sum of a metric's samples whose labels contain `label` (e.g. `kind="auth"`).
fn metric_sum(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// What Dovecot's log says about the run's logins.
#[derive(Default)]
struct Logins {
    /// XOAUTH2 logins per user: seconds (with microseconds) on the log's clock.
    times: BTreeMap<String, Vec<f64>>,
    /// Failed authentications by reason.
    failed: BTreeMap<String, u64>,
    /// `Warning:`, `Error:` and `Fatal:` lines of the servers themselves (not about one
    /// login), by message, e.g. a process limit reached.
    warnings: BTreeMap<String, u64>,
    /// The fewest tokens of the TTL that cover every login, summed over users.
    minimum: u64,
    /// Median time between two logins of one source, seconds.
    median_gap: f64,
}

/// The introspection's answer for a token that is no longer active; nothing is revoked in
/// this scenario, so here it means expired.
const NOT_ACTIVE: &str = "Provided token is not valid";
const EXPIRED: &str = "token not active (expired)";

impl Logins {
    fn read(dovecot: &Dovecot, ttl: Duration) -> Logins {
        // Dovecot's log process writes a line after the client saw the reply: wait until
        // the log stops growing.
        let mut text = dovecot.log();
        let settle = Instant::now() + Duration::from_secs(5);
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let again = dovecot.log();
            if again.len() == text.len() || Instant::now() > settle {
                text = again;
                break;
            }
            text = again;
        }
        Logins::parse(&text, ttl)
    }

    fn parse(text: &str, ttl: Duration) -> Logins {
        let mut out = Logins::default();
        // Session id -> the reason its authentication failed (auth process lines).
        let mut reasons: BTreeMap<&str, &str> = BTreeMap::new();
        let mut failed_sessions: Vec<&str> = Vec::new();
        for line in text.lines() {
            if line.contains("-login: Info: Login: ") && line.contains("method=XOAUTH2") {
                let (Some(at), Some(user)) = (timestamp(line), between(line, "user=<", ">")) else {
                    continue;
                };
                out.times.entry(user.to_lowercase()).or_default().push(at);
            } else if line.contains("-login: ") && line.contains("(auth failed") {
                failed_sessions.push(between(line, "session=<", ">").unwrap_or(""));
            } else if let Some(reason) = line.split_once("oauth2 failed: ").map(|(_, r)| r) {
                if let Some(session) = between(line, ",<", ">):") {
                    reasons.insert(session, reason);
                }
            } else if let Some((_, what)) = [" Warning: ", " Error: ", " Fatal: "]
                .iter()
                .find_map(|k| line.split_once(k))
            {
                let what: String = what.chars().take(160).collect();
                *out.warnings.entry(what).or_default() += 1;
            }
        }
        for session in failed_sessions {
            let reason = match reasons.get(session) {
                Some(r) if r.contains(NOT_ACTIVE) => EXPIRED.to_string(),
                Some(r) => r.chars().take(120).collect(),
                None => "no reason logged".into(),
            };
            *out.failed.entry(reason).or_default() += 1;
        }
        let ttl = ttl.as_secs_f64();
        let mut gaps = Vec::new();
        for times in out.times.values_mut() {
            times.sort_by(f64::total_cmp);
            out.minimum += fewest_tokens(times, ttl);
            gaps.extend(times.windows(2).map(|w| w[1] - w[0]));
        }
        gaps.sort_by(f64::total_cmp);
        out.median_gap = gaps.get(gaps.len() / 2).copied().unwrap_or(0.0);
        out
    }

    fn total(&self) -> usize {
        self.times.values().map(Vec::len).sum()
    }

    fn expired(&self) -> u64 {
        self.failed.get(EXPIRED).copied().unwrap_or(0)
    }
}

/// The fewest tokens of lifetime `ttl` that cover logins at `sorted` times: a token obtained
/// at a login covers every login until `ttl` later.
fn fewest_tokens(sorted: &[f64], ttl: f64) -> u64 {
    let mut tokens = 0;
    let mut covered_until = f64::NEG_INFINITY;
    for &t in sorted {
        if t >= covered_until {
            tokens += 1;
            covered_until = t + ttl;
        }
    }
    tokens
}

/// Seconds of a log line's `YYYY-MM-DD HH:MM:SS.ffffff` timestamp (the log's own clock).
fn timestamp(line: &str) -> Option<f64> {
    let mut parts = line.splitn(3, ' ');
    let stamp = format!("{} {}", parts.next()?, parts.next()?);
    let at = chrono::NaiveDateTime::parse_from_str(&stamp, "%Y-%m-%d %H:%M:%S%.f").ok()?;
    Some(at.and_utc().timestamp_micros() as f64 / 1e6)
}

/// The text between the first `start` and the next `end` after it.
fn between<'a>(line: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = line.find(start)? + start.len();
    let len = line[from..].find(end)?;
    Some(&line[from..from + len])
}

impl Outcome {
    fn ratio(&self) -> Option<f64> {
        (self.logins.minimum > 0).then(|| self.refreshes.0 as f64 / self.logins.minimum as f64)
    }

    fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let what = "Scenario 5 (token churn)";
        let expired = self.logins.expired();
        if expired > 0 {
            out.push(format!(
                "{what}: {expired} logins refused for an expired access token"
            ));
        }
        if self.node.auth_errors > 0 {
            out.push(format!(
                "{what}: the node saw {} authentication errors (mailsluice_errors_total{{kind=\"auth\"}})",
                self.node.auth_errors
            ));
        }
        // Refused by the provider (a spent refresh token presented again, say). A request
        // that failed on the way (a timeout) shows only in the node's count and the table.
        if self.refreshes.1 > 0 {
            out.push(format!(
                "{what}: the provider refused {} refresh requests",
                self.refreshes.1
            ));
        }
        if let Some(n) = self.node.states.get("needs_reauth") {
            out.push(format!("{what}: {n} sources ended in needs_reauth"));
        }
        let sources = self.node.states.values().sum::<u64>();
        let logged_in = self.logins.times.len() as u64;
        if self.logins.total() == 0 {
            out.push(format!("{what}: no source logged in at all"));
        } else if logged_in < sources {
            out.push(format!(
                "{what}: {} of {sources} sources never logged in",
                sources - logged_in
            ));
        }
        if self.node.stored < sources {
            out.push(format!(
                "{what}: {} of {sources} mailboxes' messages stored",
                self.node.stored
            ));
        }
        let (full, resumed) = self.node.handshakes;
        if self.node.sessions_ok > 0 && full + resumed == 0 {
            out.push(format!(
                "{what}: {} sessions, and no TLS handshake counted (mailsluice_tls_handshakes_total)",
                self.node.sessions_ok
            ));
        }
        if self.resumption_expected && self.node.sessions_ok > sources && resumed == 0 {
            out.push(format!(
                "{what}: no TLS session resumed ({full} full handshakes) though one imap-login \
                 process kept one ticket key"
            ));
        }
        if let Err(e) = &self.node.exit {
            out.push(format!("{what}: {e}"));
        }
        out
    }

    fn markdown(&self, title: &str, plan: &Plan, load_before: &str) -> String {
        let ttl = plan.ttl.as_secs();
        let margin = mailsluice::auth::refresh_margin_secs(
            Duration::from_secs(120),
            Some(i64::try_from(ttl).unwrap_or(i64::MAX)),
        );
        let run_secs = self.ran.as_secs_f64();
        let bound = plan.sources as u64 * plan.duration.as_secs().div_ceil(ttl);
        let mut m = String::new();
        let _ = writeln!(m, "## {title}\n");
        let _ = writeln!(
            m,
            "- One node, {} IMAPS sources with XOAUTH2, one Dovecot mailbox each (one small \
             message). oidc-provider issues opaque access tokens of {ttl} s and rotates the \
             refresh token on every use; Dovecot checks every login by introspection (no \
             cache), so a token used after its expiry is refused.",
            plan.sources
        );
        let _ = writeln!(
            m,
            "- The sources poll: `idle = false`, `poll_interval_secs = {}` (half the token \
             lifetime), so login times do not depend on the tokens and each token can serve \
             two logins; a node refreshing at every login would make twice the minimum. (IDLE \
             sources end each session because its token is due, so every new session needs a \
             new token by construction, and a login-based minimum says little about them.)",
            plan.poll.as_secs()
        );
        let _ = writeln!(
            m,
            "- Node settings: defaults (`node.max_sessions` = {}, `node.token_refresh_margin_secs` \
             = 120, which against {ttl} s tokens gives an effective margin of {margin} s: a \
             quarter of the lifetime).",
            plan.max_sessions
        );
        let _ = writeln!(
            m,
            "- Before the run (untimed, {:.0} s): an authorization-code grant per mailbox, its \
             refresh token imported with `mailsluice tokens import`, then a wait of {} s so \
             that the access tokens the imports obtained had expired: every token used in the \
             run came from a refresh made in it.",
            self.prepared.as_secs_f64(),
            ttl + 1
        );
        let _ = writeln!(
            m,
            "- `mailsluice run` ran {run_secs:.0} s and was stopped with SIGTERM. Refresh \
             requests made: `refresh_token` grants at the OIDC server during the run. Minimum: \
             per mailbox, the fewest {ttl}-s tokens that cover every one of its XOAUTH2 logins \
             in Dovecot's log (greedy: a token obtained at a login covers the logins until \
             {ttl} s later), summed over mailboxes; it assumes a token could be used up to its \
             last instant."
        );
        let _ = writeln!(
            m,
            "- Load average (1, 5, 15 min) before: {load_before}; after: {}. Other work on the \
             machine shows up here and in the CPU figure.",
            self.load_after
        );
        let _ = writeln!(
            m,
            "- Dovecot settings added to the harness configuration:\n\n```\n{}```\n",
            self.dovecot_config
        );
        let ratio = self.ratio();
        let rows: Vec<(String, String)> = vec![
            (
                "refresh requests made (OIDC server, during the run)".into(),
                format!("{} ok, {} failed", self.refreshes.0, self.refreshes.1),
            ),
            (
                "`mailsluice_token_refreshes_total` (node, read before SIGTERM)".into(),
                format!(
                    "{} ok, {} failed",
                    self.node.refreshes.0, self.node.refreshes.1
                ),
            ),
            (
                "minimum needed (fewest tokens covering every login)".into(),
                self.logins.minimum.to_string(),
            ),
            (
                "made / minimum".into(),
                ratio.map_or("-".into(), |r| format!("{r:.3}")),
            ),
            (
                format!(
                    "simple bound: sources x ceil({} s / {ttl} s)",
                    plan.duration.as_secs()
                ),
                bound.to_string(),
            ),
            (
                "XOAUTH2 logins (Dovecot)".into(),
                format!(
                    "{} ({:.1} per source; median {:.1} s between two logins of a source)",
                    self.logins.total(),
                    self.logins.total() as f64 / plan.sources.max(1) as f64,
                    self.logins.median_gap
                ),
            ),
            (
                "sources that logged in".into(),
                format!("{} of {}", self.logins.times.len(), plan.sources),
            ),
            (
                "failed logins, token not active (expired)".into(),
                self.logins.expired().to_string(),
            ),
            (
                "failed logins, other reasons".into(),
                other_failures(&self.logins.failed),
            ),
            (
                "node: sessions ok / failed (`/api/sources`)".into(),
                format!("{} / {}", self.node.sessions_ok, self.node.sessions_failed),
            ),
            (
                "node: `errors_total` kind auth / token".into(),
                format!("{} / {}", self.node.auth_errors, self.node.token_errors),
            ),
            (
                "node: source states at the end".into(),
                self.node
                    .states
                    .iter()
                    .map(|(s, n)| format!("{s} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "messages stored".into(),
                format!("{} of {}", self.node.stored, plan.sources),
            ),
            (
                "node CPU (user + system)".into(),
                format!(
                    "{:.1} s ({:.1} % of one core over the run)",
                    self.node.cpu.as_secs_f64(),
                    100.0 * self.node.cpu.as_secs_f64() / run_secs.max(1e-9)
                ),
            ),
            (
                "node CPU per session".into(),
                format!(
                    "{:.2} ms",
                    1e3 * self.node.cpu.as_secs_f64()
                        / (self.node.sessions_ok + self.node.sessions_failed).max(1) as f64
                ),
            ),
            (
                "TLS handshakes full / resumed (`tls_handshakes_total`)".into(),
                format!("{} / {}", self.node.handshakes.0, self.node.handshakes.1),
            ),
            (
                "Dovecot CPU over the run (all its processes)".into(),
                self.node
                    .server_cpu
                    .map_or("-".into(), |c| format!("{:.1} s", c.as_secs_f64())),
            ),
            (
                "node peak RSS (`VmHWM`)".into(),
                format!("{:.1} MB", self.node.peak_rss_bytes as f64 / 1e6),
            ),
        ];
        let _ = writeln!(m, "| | |\n|---|---:|");
        for (k, v) in rows {
            let _ = writeln!(m, "| {k} | {v} |");
        }
        let failures = self.failures();
        let met = ratio.is_some_and(|r| r <= TARGET_RATIO) && self.logins.expired() == 0;
        let _ = writeln!(
            m,
            "\nTarget (refresh requests within 5 % of the minimum, no login refused for an \
             expired token): **{}** (ratio {}, {} expired-token failures).",
            if met { "met" } else { "not met" },
            ratio.map_or("-".into(), |r| format!("{r:.3}")),
            self.logins.expired()
        );
        if !self.node.last_errors.is_empty() {
            let _ = writeln!(m, "\nLast errors of sources (first five):\n");
            for e in &self.node.last_errors {
                let _ = writeln!(m, "- {e}");
            }
        }
        if !self.logins.warnings.is_empty() {
            let _ = writeln!(m, "\nDovecot warnings and errors (by message):\n");
            for (w, n) in self.logins.warnings.iter().take(10) {
                let _ = writeln!(m, "- {n} x `{w}`");
            }
        }
        if !failures.is_empty() {
            let _ = writeln!(m, "\nFailures:\n");
            for f in &failures {
                let _ = writeln!(m, "- {f}");
            }
        }
        m
    }
}

fn other_failures(failed: &BTreeMap<String, u64>) -> String {
    let others: Vec<String> = failed
        .iter()
        .filter(|(r, _)| r.as_str() != EXPIRED)
        .map(|(r, n)| format!("{n} ({r})"))
        .collect();
    if others.is_empty() {
        "0".into()
    } else {
        others.join("; ")
    }
}
