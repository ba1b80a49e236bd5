//! Scenario 4, steady state: one node holding many IDLE sources while mail arrives at a fixed
//! rate.
//!
//! 1. Dovecot (the harness) with one user per source, each mailbox seeded with two corpus
//!    messages, and its limits raised so that every source can hold one TLS session in IDLE
//!    (see [`dovecot_config`]; on Linux also `fs.inotify.max_user_instances`, see
//!    [`raise_inotify_instances`]).
//! 2. `mailsluice run` as a child process, started by the test harness's `NodeProcess` (HTTP
//!    on a port the system picks, reported in a file; ready when `/readyz` says so): one
//!    password source per mailbox over implicit TLS, `idle = true`,
//!    `poll_interval_secs = 300`, so polling cannot explain a fast arrival.
//! 3. Warm-up: from spawn until every source reports a finished first pass with its seeded
//!    messages stored, then until Dovecot shows every session in IDLE (its process titles).
//! 4. Idle: no mail arrives for a window; the node's CPU time (utime + stime from
//!    `/proc/PID/stat`) over the window, and its RSS at the end (`VmRSS`, `VmHWM`).
//! 5. Appends: at `--rate` per second for `--duration`, one corpus message (Message-ID with its
//!    sequence number) delivered into a mailbox drawn by a seeded RNG, the way a Maildir MDA
//!    delivers (file written in `tmp/`, renamed into `cur/`); Dovecot notices it through
//!    inotify and reports EXISTS to the idling session. The appender keeps an absolute
//!    schedule (message k is due at start + k / rate), so a slow append does not slow the rate.
//! 6. Latency: each message's `stored_at` (stamped by the node, read back through
//!    `/api/messages`) minus the wall-clock time its delivery completed. A message not stored
//!    within the deadline after the last append, stored twice, or stored under another source
//!    fails the benchmark, and so does any seeded message not stored exactly once.
//!
//! Targets (from the requirements; reported, never asserted, as numbers depend on the
//! machine): p99 append-to-stored under 1 s with IDLE; the idle node under 2 % of one core and
//! under 150 MB RSS with 1,000 sources.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::contenders::PASSWORD;
use crate::corpus;
use crate::support::{Dovecot, DovecotOptions, NodeProcess};
use crate::{LiveArgs, LiveReport};

/// The targets this scenario reports against.
const TARGET_P99: Duration = Duration::from_secs(1);
const TARGET_IDLE_CPU_PERCENT: f64 = 2.0;
const TARGET_IDLE_RSS_BYTES: u64 = 150_000_000;
/// The source count the idle targets are set for.
const TARGET_SOURCES: usize = 1_000;

/// Messages seeded into every mailbox before the node starts.
const SEEDED_PER_MAILBOX: usize = 2;

/// How often the node's API is asked while waiting (not while measuring idle or appending,
/// where asking would be load of our own making).
const POLL: Duration = Duration::from_millis(200);

/// Corpus tags: seeded and appended messages have Message-IDs `<TAG-N@bench.example.test>`.
const SEED_TAG: &str = "s4-seed";
const APPEND_TAG: &str = "s4-append";

/// The seed of the RNG that picks each appended message's mailbox.
const RNG_SEED: u64 = 4;

/// How this run is sized: the command line, or the defaults of a full or smoke run.
struct Plan {
    sources: usize,
    /// Appends per second, over all mailboxes.
    rate: f64,
    /// Messages appended: `rate` × the append duration.
    appends: usize,
    duration: Duration,
    /// The idle measurement window.
    idle_window: Duration,
    /// After the last append, how long the stragglers may take before they count as lost.
    deadline: Duration,
    /// From spawn to every first pass done.
    warm_up_timeout: Duration,
}

impl Plan {
    fn new(args: &LiveArgs) -> Plan {
        let duration = args.duration.unwrap_or(if args.smoke {
            Duration::from_secs(2)
        } else {
            Duration::from_secs(120)
        });
        let appends = ((args.rate * duration.as_secs_f64()).round() as usize).max(1);
        Plan {
            sources: args.sources,
            rate: args.rate,
            appends,
            duration,
            idle_window: if args.smoke {
                Duration::from_secs(2)
            } else {
                Duration::from_secs(60)
            },
            deadline: if args.smoke {
                Duration::from_secs(15)
            } else {
                Duration::from_secs(60)
            },
            // A first pass is a login, a SELECT and two messages: well under a second per
            // source even when they queue for the node's session slots.
            warm_up_timeout: Duration::from_secs(60 + args.sources as u64 / 4),
        }
    }
}

fn user(k: usize) -> String {
    format!("steady{:04}@example.test", k + 1)
}

fn source(k: usize) -> String {
    format!("s{:04}", k + 1)
}

/// Dovecot settings added to the harness configuration for `n` concurrent IDLE sessions over
/// TLS. Each session is an `imap` process (Dovecot's default: one client per process) behind
/// an `imap-login` process that holds the TLS connection for the session's whole life.
fn dovecot_config(n: usize) -> String {
    format!(
        "{base}\
         # Shows each imap process' current command in its title (ps): how this scenario sees that\n\
         # every session sits in IDLE.\n\
         verbose_proctitle = yes\n\
         # One imap process per session: the default process limit (100 per service) is raised\n\
         # above the {n} sessions; the client limit covers anvil and auth, which every login and\n\
         # imap process talks to.\n\
         default_process_limit = {processes}\n\
         default_client_limit = {clients}\n\
         # imap-login in high-performance mode: a few processes proxy every TLS session, instead\n\
         # of one process per connection (the high-security default), which would double the\n\
         # process count.\n\
         service imap-login {{\n  service_count = 0\n  process_min_avail = 2\n  client_limit = {clients}\n  vsz_limit = 1G\n}}\n",
        base = crate::DOVECOT_BASE,
        processes = n + 100,
        clients = (3 * n + 1000).max(5000),
    )
}

/// Every IDLE imap process holds an inotify instance, and all of them run as the one mail
/// user; the kernel's default of 128 instances per user would leave the rest of the sessions
/// checking for new mail every `mailbox_idle_check_interval` (30 s) instead of being told.
/// Raised (never lowered) to `4 n + 256`, and left raised: a benchmark running alongside may
/// need it too. Returns what was done, for the report.
fn raise_inotify_instances(n: usize) -> String {
    const KNOB: &str = "/proc/sys/fs/inotify/max_user_instances";
    let Some(current) = std::fs::read_to_string(KNOB)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    else {
        return format!("{KNOB} unreadable: the inotify instance limit is unknown");
    };
    let wanted = 4 * n + 256;
    if current >= wanted {
        return format!(
            "fs.inotify.max_user_instances = {current} already (at least {wanted} wanted; \
             every IDLE imap process holds one inotify instance, all as the mail user)"
        );
    }
    match std::fs::write(KNOB, wanted.to_string()) {
        Ok(()) => format!(
            "fs.inotify.max_user_instances raised from {current} to {wanted} (every IDLE imap \
             process holds one inotify instance, all as the mail user; past the limit Dovecot \
             falls back to checking every 30 s); left raised"
        ),
        Err(e) => format!(
            "fs.inotify.max_user_instances is {current} and could not be raised to {wanted} \
             ({e}): sessions past the limit learn of new mail only every 30 s"
        ),
    }
}

/// The node's configuration: `[node]` (HTTP on a port the system picks, reported in
/// [`LISTEN_FILE`]), `[tls]` and one IDLE source per mailbox.
fn node_config(dir: &Path, dovecot: &Dovecot, sources: usize) -> String {
    let mut c = format!(
        "[node]\ndata_dir = \"{}\"\nhttp_listen = \"127.0.0.1:0\"\nhttp_listen_file = \"{}\"\n\
         secret_key_file = \"{}\"\n\n[tls]\nextra_ca_file = \"{}\"\n\n",
        dir.join("data").display(),
        dir.join(LISTEN_FILE).display(),
        dir.join("secret.key").display(),
        dovecot.ca_pem.display(),
    );
    for k in 0..sources {
        let _ = writeln!(
            c,
            "[sources.{}]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {}\nsecurity = \"tls\"\n\
             username = \"{}\"\nauth = \"password\"\npassword_env = \"BENCH_PASSWORD\"\n\
             folders = [\"INBOX\"]\nidle = true\npoll_interval_secs = 300\n",
            source(k),
            dovecot.imaps_port,
            user(k),
        );
    }
    c
}

/// Where the node reports the address it listens on, in the work directory.
const LISTEN_FILE: &str = "http.addr";

/// The running node: its process (the harness's), API address and log. Killed on drop.
struct Node {
    process: NodeProcess,
    http: String,
    log: PathBuf,
    client: reqwest::blocking::Client,
}

impl Node {
    /// Starts `mailsluice run` in `dir` and waits until it is ready.
    fn start(
        mailsluice: &Path,
        config: &Path,
        dir: &Path,
        timeout: Duration,
    ) -> Result<Node, String> {
        let log = dir.join("node.log");
        let stderr = std::fs::File::create(&log).expect("create the node's log file");
        let mut command = Command::new(mailsluice);
        command
            .arg("-c")
            .arg(config)
            .arg("run")
            .current_dir(dir)
            .env("BENCH_PASSWORD", PASSWORD)
            .env("MAILSLUICE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let process =
            NodeProcess::start(command, &dir.join(LISTEN_FILE), timeout).map_err(|e| {
                format!(
                    "{e}; its log ends:\n{}",
                    crate::support::tail(&crate::support::read_log(&log), 20)
                )
            })?;
        let http = process
            .http()
            .ok_or("the node is ready but reported no address")?
            .to_string();
        let client = reqwest::blocking::Client::builder()
            .default_headers(crate::support::node_process::bearer(
                &dir.join("data").join("api.token"),
            )?)
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Node {
            process,
            http,
            log,
            client,
        })
    }

    fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn get(&self, path: &str, timeout: Duration) -> Result<String, String> {
        let url = format!("http://{}{path}", self.http);
        let resp = self
            .client
            .get(&url)
            .timeout(timeout)
            .send()
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        resp.text().map_err(|e| format!("GET {url}: {e}"))
    }

    fn get_json(&self, path: &str, timeout: Duration) -> Result<serde_json::Value, String> {
        serde_json::from_str(&self.get(path, timeout)?)
            .map_err(|e| format!("GET {path}: not JSON: {e}"))
    }

    fn log_tail(&self) -> String {
        crate::support::tail(&crate::support::read_log(&self.log), 20)
    }

    /// Polls `probe` every [`POLL`] until it returns `Some`; an error names what was waited
    /// for, or that the node exited.
    fn wait<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&Node) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.exited() {
                return Err(format!(
                    "the node exited ({status}) while waiting for {what}; its log ends:\n{}",
                    self.log_tail()
                ));
            }
            if let Some(v) = probe(self) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Err(format!("{what}: not within {timeout:?}"));
            }
            std::thread::sleep(POLL);
        }
    }

    /// CPU time (user + system, all threads) so far, from `/proc/PID/stat`.
    fn cpu(&self) -> Option<Duration> {
        crate::measure::proc_stat(self.pid()).map(|s| s.cpu)
    }

    /// `(VmRSS, VmHWM)` in bytes, from `/proc/PID/status`.
    fn memory(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kb = |key: &str| -> Option<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
                .map(|kb| kb * 1024)
        };
        Some((kb("VmRSS:")?, kb("VmHWM:")?))
    }

    /// Open file descriptors and the soft limit on them ("Max open files").
    fn fds(&self) -> (Option<usize>, Option<String>) {
        let open = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .ok()
            .map(|d| d.count());
        let limit = std::fs::read_to_string(format!("/proc/{}/limits", self.pid()))
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
            });
        (open, limit)
    }

    /// SIGTERM, then waits up to `grace` for the exit; SIGKILL after that.
    fn stop(&mut self, grace: Duration) -> Result<(Duration, ExitStatus), String> {
        self.process
            .stop(grace)
            .map_err(|e| format!("{e}; its log ends:\n{}", self.log_tail()))
    }
}

/// Per-source totals from `/api/sources`: (sources with a finished pass and at least
/// `seeded` messages, messages stored over all sources).
fn progress(node: &Node, seeded: u64) -> Option<(usize, u64)> {
    // A node that does not answer within seconds is stuck, not busy: the probe says so
    // (as no progress) instead of holding up the wait's own deadline.
    let sources = node
        .get_json("/api/sources", Duration::from_secs(10))
        .ok()?;
    let list = sources.as_array()?;
    let mut done = 0;
    let mut stored = 0;
    for s in list {
        let total = s["stored_total"].as_u64().unwrap_or(0);
        stored += total;
        if s["sessions_ok"].as_u64().unwrap_or(0) >= 1 && total >= seeded {
            done += 1;
        }
    }
    Some((done, stored))
}

/// Dovecot imap processes of `dovecot` whose title shows a running IDLE. With
/// `verbose_proctitle` a title reads `dovecot-INSTANCE/imap [USER IP IDLE]`, and the
/// harness names each instance `mailsluice-IMAP_PORT-ATTEMPT`, so another Dovecot on the
/// machine (a benchmark alongside) is not counted.
fn sessions_in_idle(dovecot: &Dovecot) -> usize {
    let instance = format!("dovecot-mailsluice-{}-", dovecot.imap_port);
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmdline| {
            let title = String::from_utf8_lossy(cmdline);
            title.starts_with(&instance)
                && title.contains("/imap [steady")
                && title.trim_end_matches('\0').ends_with(" IDLE]")
        })
        .count()
}

/// One delivered message.
struct Append {
    seq: usize,
    mailbox: usize,
    /// Wall-clock time the delivery completed (the rename into `cur/` returned).
    done: chrono::DateTime<chrono::Utc>,
}

/// What the appender did.
struct Appended {
    appends: Vec<Append>,
    /// From the first scheduled append to the last completed one.
    elapsed: Duration,
    /// The latest an append started after its scheduled time.
    max_lateness: Duration,
    /// The node's CPU time over `elapsed`.
    cpu: Option<Duration>,
}

/// Delivers `plan.appends` messages on an absolute schedule (message k at start + k / rate),
/// each into a mailbox drawn by a seeded RNG. The next message is generated while waiting
/// for its slot, so building a large one does not make its delivery late.
fn append(plan: &Plan, dovecot: &Dovecot, node: &Node) -> Appended {
    let mut rng = StdRng::seed_from_u64(RNG_SEED);
    let mut appends = Vec::with_capacity(plan.appends);
    let mut max_lateness = Duration::ZERO;
    let mut next = corpus::message(APPEND_TAG, 0);
    let cpu_before = node.cpu();
    let start = Instant::now();
    let mut last_report = start;
    for seq in 0..plan.appends {
        let due = start + Duration::from_secs_f64(seq as f64 / plan.rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        max_lateness = max_lateness.max(Instant::now().saturating_duration_since(due));
        let mailbox = rng.random_range(0..plan.sources);
        dovecot.seed(&user(mailbox), std::slice::from_ref(&next));
        appends.push(Append {
            seq,
            mailbox,
            done: chrono::Utc::now(),
        });
        if seq + 1 < plan.appends {
            next = corpus::message(APPEND_TAG, seq + 1);
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            eprintln!("appended {}/{}", seq + 1, plan.appends);
        }
    }
    let elapsed = start.elapsed();
    let cpu = cpu_before.zip(node.cpu()).map(|(a, b)| b.saturating_sub(a));
    Appended {
        appends,
        elapsed,
        max_lateness,
        cpu,
    }
}

/// A stored message as `/api/messages` lists it.
struct Stored {
    source: String,
    stored_at: chrono::DateTime<chrono::Utc>,
}

/// Every stored message by Message-ID (without angle brackets), read through the node's
/// API page by page (each entry carries the parsed bodies, so pages stay small).
fn stored_messages(node: &Node) -> Result<HashMap<String, Vec<Stored>>, String> {
    let mut out: HashMap<String, Vec<Stored>> = HashMap::new();
    let mut after: Option<u64> = None;
    loop {
        let path = match after {
            Some(a) => format!("/api/messages?limit=500&after={a}"),
            None => "/api/messages?limit=500".to_string(),
        };
        let page = node.get_json(&path, Duration::from_secs(60))?;
        let items = page
            .as_array()
            .ok_or_else(|| format!("GET {path}: not a list"))?;
        if items.is_empty() {
            return Ok(out);
        }
        for m in items {
            after = m["id"].as_u64().or(after);
            let id = m["parsed"]["message_id"]
                .as_str()
                .unwrap_or("(no Message-ID)")
                .trim_matches(['<', '>'])
                .to_string();
            let stored_at = m["stored_at"]
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
                .ok_or_else(|| format!("message {}: no stored_at", m["id"]))?
                .with_timezone(&chrono::Utc);
            out.entry(id).or_default().push(Stored {
                source: m["source"].as_str().unwrap_or_default().to_string(),
                stored_at,
            });
        }
    }
}

fn message_id(tag: &str, i: usize) -> String {
    format!("{tag}-{i}@bench.example.test")
}

/// The judgement of what the node stored against what was seeded and appended.
#[derive(Default)]
struct Verdict {
    /// The store was read back and judged (false when the run stopped before).
    judged: bool,
    /// Append-to-stored latency of each appended message stored once under its source.
    latencies: Vec<Duration>,
    appended_stored: usize,
    not_stored: Vec<usize>,
    duplicated: Vec<usize>,
    wrong_source: Vec<usize>,
    seeded_wrong: usize,
    unexpected: usize,
}

fn judge(
    plan: &Plan,
    appends: &[Append],
    stored: &HashMap<String, Vec<Stored>>,
    failures: &mut Vec<String>,
) -> Verdict {
    let mut v = Verdict {
        judged: true,
        ..Verdict::default()
    };
    let mut expected = std::collections::HashSet::new();
    for k in 0..plan.sources {
        for j in 0..SEEDED_PER_MAILBOX {
            let id = message_id(SEED_TAG, k * SEEDED_PER_MAILBOX + j);
            let ok = stored
                .get(&id)
                .is_some_and(|s| s.len() == 1 && s[0].source == source(k));
            if !ok {
                v.seeded_wrong += 1;
            }
            expected.insert(id);
        }
    }
    for a in appends {
        let id = message_id(APPEND_TAG, a.seq);
        match stored.get(&id).map(Vec::as_slice) {
            None | Some([]) => v.not_stored.push(a.seq),
            Some([one]) if one.source != source(a.mailbox) => v.wrong_source.push(a.seq),
            Some([one]) => {
                v.appended_stored += 1;
                let ms = (one.stored_at - a.done)
                    .num_microseconds()
                    .unwrap_or(i64::MAX);
                v.latencies
                    .push(Duration::from_micros(u64::try_from(ms).unwrap_or(0)));
            }
            Some(_) => v.duplicated.push(a.seq),
        }
        expected.insert(id);
    }
    v.unexpected = stored.keys().filter(|id| !expected.contains(*id)).count();
    v.latencies.sort();
    let first = |seqs: &[usize]| -> String {
        let shown: Vec<String> = seqs
            .iter()
            .take(5)
            .map(|s| message_id(APPEND_TAG, *s))
            .collect();
        shown.join(", ")
    };
    if !v.not_stored.is_empty() {
        failures.push(format!(
            "scenario 4: {} appended message(s) not stored within {:?} of the last append (e.g. {})",
            v.not_stored.len(),
            plan.deadline,
            first(&v.not_stored)
        ));
    }
    if !v.duplicated.is_empty() {
        failures.push(format!(
            "scenario 4: {} appended message(s) stored more than once (e.g. {})",
            v.duplicated.len(),
            first(&v.duplicated)
        ));
    }
    if !v.wrong_source.is_empty() {
        failures.push(format!(
            "scenario 4: {} appended message(s) stored under another source (e.g. {})",
            v.wrong_source.len(),
            first(&v.wrong_source)
        ));
    }
    if v.seeded_wrong > 0 {
        failures.push(format!(
            "scenario 4: {} seeded message(s) not stored exactly once under their source",
            v.seeded_wrong
        ));
    }
    if v.unexpected > 0 {
        failures.push(format!(
            "scenario 4: {} stored message(s) that were neither seeded nor appended",
            v.unexpected
        ));
    }
    v
}

/// The nearest-rank `p`-th percentile of sorted `values`.
fn percentile(values: &[Duration], p: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "n/a".into(),
        |d| format!("{:.0} ms", d.as_secs_f64() * 1e3),
    )
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "n/a".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn mb(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "n/a".into(), |b| format!("{:.1} MB", b as f64 / 1e6))
}

fn percent_of_core(cpu: Option<Duration>, wall: Duration) -> Option<f64> {
    cpu.map(|c| 100.0 * c.as_secs_f64() / wall.as_secs_f64())
}

fn met(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "not met",
        None => "not measured",
    }
}

/// Everything measured, for the report.
#[derive(Default)]
struct Measured {
    first_pass: Option<Duration>,
    all_idle: Option<Duration>,
    idle_cpu_percent: Option<f64>,
    idle_rss: Option<u64>,
    idle_fds: Option<usize>,
    fd_limit: Option<String>,
    append_cpu_percent: Option<f64>,
    appended: usize,
    append_elapsed: Option<Duration>,
    max_lateness: Option<Duration>,
    end_rss: Option<u64>,
    peak_rss: Option<u64>,
    shutdown: Option<Duration>,
    verdict: Verdict,
}

pub fn run(args: &LiveArgs, mailsluice: &Path) -> LiveReport {
    let plan = Plan::new(args);
    let n = plan.sources;
    let title = format!(
        "Scenario 4: steady state, {n} IDLE source{}",
        if n == 1 { "" } else { "s" }
    );
    eprintln!("\n== {title}");
    let mut failures = Vec::new();
    let mut m = Measured::default();
    let load_before = crate::loadavg();

    let inotify = raise_inotify_instances(n);
    eprintln!("{inotify}");
    let users: Vec<(String, String)> = (0..n).map(|k| (user(k), PASSWORD.to_string())).collect();
    let dovecot_extra = dovecot_config(n);
    let dovecot = Dovecot::start(DovecotOptions {
        users,
        oidc_introspection_url: None,
        min_tls: "TLSv1.2",
        extra_config: dovecot_extra.clone(),
    });
    let seeding = Instant::now();
    for k in 0..n {
        let mail: Vec<Vec<u8>> = (0..SEEDED_PER_MAILBOX)
            .map(|j| corpus::message(SEED_TAG, k * SEEDED_PER_MAILBOX + j))
            .collect();
        dovecot.seed(&user(k), &mail);
    }
    let seeded = (n * SEEDED_PER_MAILBOX) as u64;
    eprintln!(
        "seeded {seeded} messages into {n} mailboxes in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let work = tempfile::Builder::new()
        .prefix("mailsluice-steady-")
        // Private: it holds the node's key, store and, for a moment, a refresh token.
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .expect("create the scenario's work directory");
    let config = work.path().join("mailsluice.toml");
    std::fs::write(&config, node_config(work.path(), &dovecot, n))
        .expect("write the node's config");

    let spawned = Instant::now();
    match Node::start(mailsluice, &config, work.path(), plan.warm_up_timeout) {
        Ok(mut node) => drive(&plan, &dovecot, &mut node, spawned, &mut m, &mut failures),
        Err(e) => failures.push(format!("scenario 4: {e}")),
    }
    let load_after = crate::loadavg();

    let v = &m.verdict;
    eprintln!(
        "append-to-stored: p50 {} p90 {} p99 {} max {}; {} of {} stored once",
        ms(percentile(&v.latencies, 50.0)),
        ms(percentile(&v.latencies, 90.0)),
        ms(percentile(&v.latencies, 99.0)),
        ms(v.latencies.last().copied()),
        v.appended_stored,
        m.appended
    );
    if args.keep {
        eprintln!("kept: {}", work.keep().display());
    }
    drop(dovecot);

    let markdown = report(
        &title,
        args,
        &plan,
        &m,
        &Notes {
            dovecot_extra: &dovecot_extra,
            inotify: &inotify,
            load_before: &load_before,
            load_after: &load_after,
        },
        &failures,
    );
    LiveReport { markdown, failures }
}

/// Steps 3 to 6 with the node up: warm-up, the idle window, the appends and the verdict,
/// then SIGTERM.
fn drive(
    plan: &Plan,
    dovecot: &Dovecot,
    node: &mut Node,
    spawned: Instant,
    m: &mut Measured,
    failures: &mut Vec<String>,
) {
    let n = plan.sources;
    let seeded = (n * SEEDED_PER_MAILBOX) as u64;
    let mut last_report = Instant::now();
    let warm = node.wait("every source's first pass", plan.warm_up_timeout, |node| {
        let (done, _) = progress(node, SEEDED_PER_MAILBOX as u64)?;
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!("first pass: {done}/{n} sources");
        }
        (done == n).then_some(())
    });
    match warm {
        Ok(()) => {
            m.first_pass = Some(spawned.elapsed());
            eprintln!(
                "every source collected its seeded mail {:.1} s after spawn",
                spawned.elapsed().as_secs_f64()
            );
            let idle = node.wait(
                "every session in IDLE at Dovecot",
                Duration::from_secs(60),
                |_| (sessions_in_idle(dovecot) >= n).then_some(()),
            );
            match idle {
                Ok(()) => {
                    m.all_idle = Some(spawned.elapsed());
                    eprintln!(
                        "{n} sessions in IDLE {:.1} s after spawn",
                        spawned.elapsed().as_secs_f64()
                    );
                }
                Err(e) => failures.push(format!(
                    "scenario 4: {e} ({} of {n} in IDLE)",
                    sessions_in_idle(dovecot)
                )),
            }
        }
        Err(e) => failures.push(format!("scenario 4: {e}")),
    }

    if failures.is_empty() {
        measure_idle(plan, node, m);
        let appended = append(plan, dovecot, node);
        m.appended = appended.appends.len();
        m.append_elapsed = Some(appended.elapsed);
        m.max_lateness = Some(appended.max_lateness);
        m.append_cpu_percent = percent_of_core(appended.cpu, appended.elapsed);
        eprintln!(
            "appended {} messages in {:.1} s (latest start {:.0} ms behind schedule)",
            m.appended,
            appended.elapsed.as_secs_f64(),
            appended.max_lateness.as_secs_f64() * 1e3
        );
        let expected = seeded + m.appended as u64;
        let caught_up = node.wait("every appended message stored", plan.deadline, |node| {
            (progress(node, 0)?.1 >= expected).then_some(())
        });
        if let Err(e) = &caught_up {
            eprintln!("{e}");
        }
        match stored_messages(node) {
            Ok(stored) => m.verdict = judge(plan, &appended.appends, &stored, failures),
            Err(e) => failures.push(format!("scenario 4: reading the stored messages: {e}")),
        }
        if let Some((rss, hwm)) = node.memory() {
            m.end_rss = Some(rss);
            m.peak_rss = Some(hwm);
        }
    } else if let Some((_, hwm)) = node.memory() {
        m.peak_rss = Some(hwm);
    }
    match node.stop(Duration::from_secs(30)) {
        Ok((took, status)) => {
            m.shutdown = Some(took);
            if !status.success() {
                failures.push(format!(
                    "scenario 4: the node exited with {status} after SIGTERM; its log ends:\n{}",
                    node.log_tail()
                ));
            }
        }
        Err(e) => failures.push(format!("scenario 4: {e}")),
    }
}

/// Waits for the node to settle into IDLE, then measures its CPU over the idle window and
/// its memory at the end.
fn measure_idle(plan: &Plan, node: &Node, m: &mut Measured) {
    // The last pass' log line and store flush happen just before its IDLE starts.
    std::thread::sleep(Duration::from_secs(1));
    eprintln!(
        "measuring the idle node for {} s",
        plan.idle_window.as_secs()
    );
    let before = node.cpu();
    let start = Instant::now();
    std::thread::sleep(plan.idle_window);
    let after = node.cpu();
    let wall = start.elapsed();
    m.idle_cpu_percent = percent_of_core(before.zip(after).map(|(a, b)| b.saturating_sub(a)), wall);
    if let Some((rss, _)) = node.memory() {
        m.idle_rss = Some(rss);
    }
    (m.idle_fds, m.fd_limit) = node.fds();
    eprintln!(
        "idle: {:.2} % of one core, {} RSS, {} open files",
        m.idle_cpu_percent.unwrap_or(f64::NAN),
        mb(m.idle_rss),
        m.idle_fds.map_or_else(|| "?".into(), |f| f.to_string())
    );
}

/// Context for the report that is not a measurement.
struct Notes<'a> {
    dovecot_extra: &'a str,
    inotify: &'a str,
    load_before: &'a str,
    load_after: &'a str,
}

fn report(
    title: &str,
    args: &LiveArgs,
    plan: &Plan,
    m: &Measured,
    notes: &Notes<'_>,
    failures: &[String],
) -> String {
    let n = plan.sources;
    let v = &m.verdict;
    let mut command = String::from("scripts/bench --scenario 4");
    if args.smoke {
        command.push_str(" --smoke");
    }
    let _ = write!(
        command,
        " --sources {n} --rate {} --duration {}",
        plan.rate,
        plan.duration.as_secs()
    );
    let mut out = String::new();
    let _ = writeln!(out, "## {title}\n");
    let _ = writeln!(
        out,
        "- Date: {}; command: `{command}`",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC")
    );
    let _ = writeln!(
        out,
        "- Setup: one Dovecot (the test harness), one password user per source, each mailbox \
         seeded with {SEEDED_PER_MAILBOX} corpus messages. One `mailsluice run` node with {n} \
         IMAP sources over implicit TLS (`idle = true`, `poll_interval_secs = 300`, \
         `folders = [\"INBOX\"]`, `node.max_sessions` at its default 256: an idling session \
         gives its slot back)."
    );
    let _ = writeln!(
        out,
        "- Appends: {} messages at {} per second for {} s, each a corpus message (median about \
         25 KB, 5 % with attachments up to 3 MB) with a unique Message-ID carrying its sequence \
         number, into a mailbox drawn by a seeded RNG. Delivered into the Maildir as an MDA \
         does (written in `tmp/`, renamed into `cur/`): Dovecot learns of it through inotify \
         and reports EXISTS to the idling session. The appender keeps an absolute schedule.",
        plan.appends,
        plan.rate,
        plan.duration.as_secs()
    );
    let _ = writeln!(
        out,
        "- Latency: the message's `stored_at` (stamped by the node as it writes the message; \
         the store is flushed at the end of each pass) minus the wall-clock time its rename \
         into `cur/` returned, same clock; read back through `/api/messages`. A message not \
         stored within {} s of the last append counts as lost. Dovecot itself waits 500 ms \
         after a mailbox changes before it tells an idling session (`NOTIFY_DELAY_MSECS` in its \
         mailbox watch code, to batch changes), so about half a second of every figure is the \
         server's; the rest is inotify, EXISTS, the node's FETCH, parse and store.",
        plan.deadline.as_secs()
    );
    let _ = writeln!(
        out,
        "- Idle: {} s window with no appends after every session was in IDLE (Dovecot's \
         process titles); CPU is utime + stime of the node process (all threads) from \
         `/proc/PID/stat` over the window, as % of one core; RSS is `VmRSS` at the end of the \
         window, peak is `VmHWM` over the whole run. Dovecot's `imap_idle_notify_interval` is \
         its default (2 min): each session gets an `* OK Still here` that often, and that is \
         part of the idle load.",
        plan.idle_window.as_secs()
    );
    let _ = writeln!(out, "- Kernel: {}.", notes.inotify);
    let _ = writeln!(
        out,
        "- Node file descriptors: {} open while idle, soft limit (\"Max open files\") {}.",
        m.idle_fds.map_or_else(|| "n/a".into(), |f| f.to_string()),
        m.fd_limit.as_deref().unwrap_or("n/a")
    );
    let _ = writeln!(
        out,
        "- Load average (1, 5, 15 min) before: {}; after: {}. Other work on the machine shows \
         up here and in the numbers.",
        notes.load_before, notes.load_after
    );
    let _ = writeln!(
        out,
        "- Dovecot settings added to the harness configuration:\n\n```\n{}```\n",
        notes.dovecot_extra
    );
    let p99 = percentile(&v.latencies, 99.0);
    let count = |c: usize| {
        if v.judged {
            c.to_string()
        } else {
            "n/a".into()
        }
    };
    let rows: Vec<(String, String, String)> = vec![
        (
            "first pass: spawn to every source's seeded mail stored".into(),
            secs(m.first_pass),
            String::new(),
        ),
        (
            "spawn to every session in IDLE at Dovecot".into(),
            secs(m.all_idle),
            String::new(),
        ),
        (
            format!("idle CPU, % of one core ({} s)", plan.idle_window.as_secs()),
            m.idle_cpu_percent
                .map_or_else(|| "n/a".into(), |p| format!("{p:.2} %")),
            format!(
                "< {TARGET_IDLE_CPU_PERCENT} %: {}",
                met(m.idle_cpu_percent.map(|p| p < TARGET_IDLE_CPU_PERCENT))
            ),
        ),
        (
            "idle RSS (VmRSS)".into(),
            mb(m.idle_rss),
            format!(
                "< {} MB: {}",
                TARGET_IDLE_RSS_BYTES / 1_000_000,
                met(m.idle_rss.map(|r| r < TARGET_IDLE_RSS_BYTES))
            ),
        ),
        (
            "RSS after the appends (VmRSS)".into(),
            mb(m.end_rss),
            String::new(),
        ),
        ("peak RSS (VmHWM)".into(), mb(m.peak_rss), String::new()),
        (
            "CPU while appending, % of one core".into(),
            m.append_cpu_percent
                .map_or_else(|| "n/a".into(), |p| format!("{p:.2} %")),
            String::new(),
        ),
        (
            "appended / stored exactly once".into(),
            format!("{} / {}", m.appended, count(v.appended_stored)),
            String::new(),
        ),
        (
            "append rate achieved; latest append behind schedule".into(),
            match m.append_elapsed {
                Some(e) if m.appended > 1 => format!(
                    "{:.2}/s; {}",
                    (m.appended - 1) as f64 / e.as_secs_f64().max(1e-9),
                    ms(m.max_lateness)
                ),
                _ => "n/a".into(),
            },
            String::new(),
        ),
        (
            "append-to-stored p50".into(),
            ms(percentile(&v.latencies, 50.0)),
            String::new(),
        ),
        (
            "append-to-stored p90".into(),
            ms(percentile(&v.latencies, 90.0)),
            String::new(),
        ),
        (
            "append-to-stored p99".into(),
            ms(p99),
            format!(
                "< {} s: {}",
                TARGET_P99.as_secs(),
                met(p99.map(|p| p < TARGET_P99))
            ),
        ),
        (
            "append-to-stored max".into(),
            ms(v.latencies.last().copied()),
            String::new(),
        ),
        (
            format!("not stored within {} s", plan.deadline.as_secs()),
            count(v.not_stored.len()),
            "0".into(),
        ),
        (
            "stored twice or under another source".into(),
            count(v.duplicated.len() + v.wrong_source.len()),
            "0".into(),
        ),
        (
            "seeded messages not stored exactly once".into(),
            count(v.seeded_wrong),
            "0".into(),
        ),
        (
            "stored but neither seeded nor appended".into(),
            count(v.unexpected),
            "0".into(),
        ),
        (
            "shutdown: SIGTERM to exit".into(),
            secs(m.shutdown),
            String::new(),
        ),
    ];
    let _ = writeln!(out, "| measure | value | target |\n|---|---:|---|");
    for (what, value, target) in rows {
        let _ = writeln!(out, "| {what} | {value} | {target} |");
    }
    if n != TARGET_SOURCES {
        let _ = writeln!(
            out,
            "\nThe idle targets are set for {TARGET_SOURCES} sources; this run had {n}."
        );
    }
    if !failures.is_empty() {
        let _ = writeln!(out, "\nFailures:\n");
        for f in failures {
            let _ = writeln!(out, "- {}", f.lines().next().unwrap_or(""));
        }
    }
    out
}
