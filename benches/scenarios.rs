//! mailsluice against other mail fetchers, on the same mailboxes of one real Dovecot.
//!
//! Run with `scripts/bench` (which installs the peers and builds the release binary first),
//! or `cargo bench --bench scenarios -- [OPTIONS]`:
//!
//! ```text
//! --scenario 1|2|3|4|5|6|all  which scenarios (default all)
//! --messages N           messages in the mailbox of scenarios 1, 2 and 6 (default 10000)
//! --mailboxes M          mailboxes in scenario 3 (default 1000)
//! --per-mailbox K        messages per mailbox in scenario 3 (default 20)
//! --max-sessions S       mailsluice's node.max_sessions in scenario 3 (default: its own, 256)
//! --runs R               timed runs per contender (scenario 6: per variant; default 3)
//! --sources N            sources on the node in scenarios 4 and 5 (default 1000)
//! --rate R               scenario 4: messages appended per second (default 10)
//! --duration S           seconds of appends (scenario 4, default 120) or of token churn
//!                        (scenario 5, default 300)
//! --token-ttl S          scenario 5: access-token lifetime at the OIDC server (default 30)
//! --login-mode M         scenario 5: Dovecot's imap-login mode, high-security (its default:
//!                        a process per connection, each with its own TLS ticket key, so no
//!                        session resumes) or high-performance (one process for every
//!                        connection, so the node's TLS sessions resume)
//! --smoke                a few hundred messages, one run, mailsluice and the reference only
//! --out FILE             also write the results as a Markdown section to FILE
//! --only LIST            only these contenders, comma-separated: mailsluice,
//!                        mailsluice-oauth2, mbsync, getmail, fetchmail, reference
//! --keep                 keep every run's directory (configs, logs, output) for inspection
//! ```
//!
//! Scenarios:
//! 1. One IMAP mailbox, backfill: mailsluice (password, and OAuth2 XOAUTH2), mbsync,
//!    getmail6, fetchmail, and the raw IMAP reference.
//! 2. One POP3 mailbox: the same without mbsync (IMAP only), with the raw POP3 reference.
//! 3. Fan-out: many small IMAP mailboxes. mailsluice runs one source per mailbox in one
//!    process (concurrent, up to `node.max_sessions`); mbsync one channel per mailbox in one
//!    config, fetchmail one poll entry per mailbox in one rc file, getmail one rc file per
//!    mailbox in one invocation (all three work through them one after the other, which is
//!    how each of them handles many accounts in one process); the reference fetches the
//!    mailboxes over sequential connections.
//! 4. Steady state ([`steady`]): one node with many IDLE sources while messages are appended
//!    at a fixed rate; append-to-stored latency, and the idle node's CPU and memory.
//! 5. Token churn ([`churn`]): many OAuth2 sources with short-lived access tokens; refresh
//!    requests made against the fewest that could have served every login, and logins
//!    refused for an expired token.
//! 6. Sinks ([`sinks`]): one IMAP mailbox ingested by a node that also delivers every stored
//!    message to a real webhook receiver or a real NATS JetStream, with and without raw
//!    bytes, against the node ingesting alone in the same run.
//!
//! Each scenario starts its own Dovecot and OIDC server (the test harness in
//! `tests/support`), seeds the mailboxes once, fetches them once untimed so Dovecot's indexes
//! and the page cache are warm for everyone, then runs every contender `--runs` times in
//! rotation, each run from an empty local state. Every run's output is judged against the
//! seeded bytes ([`judge`]). The benchmark fails (exit 1) when mailsluice's output is not
//! exactly the seeded messages, or the reference did not see them all; peers are only
//! reported. There are no timing assertions: numbers depend on the machine.
//!
//! mailsluice is the binary cargo built for this bench (`target/release/mailsluice` under
//! `cargo bench`). The test suite runs `cargo test --bench scenarios -- --smoke`, so this
//! file is compiled and exercised end to end on every test run.

// The harness serves many test files; this bench uses part of it (its own
// `#![allow(dead_code, unused_imports)]` covers the rest).
#[path = "../tests/support/mod.rs"]
mod support;

#[path = "common/corpus.rs"]
mod corpus;

#[path = "scenarios/churn.rs"]
mod churn;
#[path = "scenarios/contenders.rs"]
mod contenders;
#[path = "scenarios/judge.rs"]
mod judge;
#[path = "scenarios/measure.rs"]
mod measure;
#[path = "scenarios/reference.rs"]
mod reference;
#[path = "scenarios/report.rs"]
mod report;
#[path = "scenarios/sinks.rs"]
mod sinks;
#[path = "scenarios/steady.rs"]
mod steady;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use contenders::{Contender, Ctx, Output, PASSWORD, Protocol};
use judge::Expected;
use report::{ContenderResult, Environment, RunResult, ScenarioResult, Verdict};
use support::{Dovecot, DovecotOptions, Oidc, OidcOptions};

const USAGE: &str = "usage: scenarios [--scenario 1|2|3|4|5|6|all] [--messages N] [--mailboxes M] \
                     [--per-mailbox K] [--max-sessions S] [--runs R] [--sources N] [--rate R] [--duration S] [--token-ttl S] [--login-mode high-security|high-performance] [--smoke] [--out FILE] [--only LIST] [--keep]";

/// The command line, validated.
struct Args {
    scenarios: Vec<u8>,
    messages: usize,
    mailboxes: usize,
    per_mailbox: usize,
    max_sessions: Option<usize>,
    runs: usize,
    smoke: bool,
    out: Option<PathBuf>,
    /// Keep the run directories instead of deleting each after its judgement.
    keep: bool,
    /// `--only`: the contenders to run (all when empty).
    only: Vec<Contender>,
    /// Scenarios 4 and 5.
    live: LiveArgs,
    /// Scenario 6.
    sinks: SinkArgs,
    /// The options as understood, for the report's command line.
    given: Vec<String>,
}

/// What scenarios 4 and 5 (a long-running node) are run with.
pub struct LiveArgs {
    /// Sources on the node (one mailbox each).
    pub sources: usize,
    /// Scenario 4: messages appended per second, over all mailboxes.
    pub rate: f64,
    /// Scenario 4: how long messages are appended; scenario 5: how long the churn runs.
    /// `None`: the scenario's own default.
    pub duration: Option<Duration>,
    /// Scenario 5: the access-token lifetime the OIDC server hands out.
    pub token_ttl: Duration,
    /// Scenario 5: Dovecot's imap-login in high-performance mode (one process, one TLS
    /// ticket key, so sessions resume) instead of its default.
    pub high_performance_login: bool,
    pub smoke: bool,
    pub keep: bool,
}

/// What scenario 6 (sinks) is run with.
pub struct SinkArgs {
    /// Messages in the mailbox.
    pub messages: usize,
    /// Timed runs per variant.
    pub runs: usize,
    pub keep: bool,
}

/// The outcome of scenario 4 or 5: a Markdown section, and what is wrong with mailsluice's
/// behaviour (not its speed), which fails the benchmark.
pub struct LiveReport {
    pub markdown: String,
    pub failures: Vec<String>,
}

impl Args {
    fn parse(argv: &[String]) -> Result<Args, String> {
        let mut scenarios = vec![1, 2, 3, 4, 5, 6];
        let (mut messages, mut mailboxes, mut per_mailbox, mut runs) = (None, None, None, None);
        let mut max_sessions = None;
        let (mut sources, mut rate, mut duration, mut token_ttl) = (None, None, None, None);
        let mut smoke = false;
        let mut keep = false;
        let mut high_performance_login = false;
        let mut only = Vec::new();
        let mut out = None;
        let mut it = argv.iter();
        let number = |flag: &str, value: Option<&String>| -> Result<usize, String> {
            let value = value.ok_or_else(|| format!("{flag} needs a number"))?;
            match value.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("{flag} {value:?}: expected a positive number")),
            }
        };
        while let Some(arg) = it.next() {
            match arg.as_str() {
                // Added by `cargo bench`.
                "--bench" => {}
                "--smoke" => smoke = true,
                "--keep" => keep = true,
                "--scenario" => {
                    let value = it
                        .next()
                        .ok_or("--scenario needs 1, 2, 3, 4, 5, 6 or all")?;
                    scenarios = match value.as_str() {
                        "all" => vec![1, 2, 3, 4, 5, 6],
                        n @ ("1" | "2" | "3" | "4" | "5" | "6") => {
                            vec![n.parse().expect("a digit")]
                        }
                        other => {
                            return Err(format!(
                                "--scenario {other:?}: expected 1, 2, 3, 4, 5, 6 or all"
                            ));
                        }
                    };
                }
                "--messages" => messages = Some(number(arg, it.next())?),
                "--mailboxes" => mailboxes = Some(number(arg, it.next())?),
                "--per-mailbox" => per_mailbox = Some(number(arg, it.next())?),
                "--max-sessions" => max_sessions = Some(number(arg, it.next())?),
                "--runs" => runs = Some(number(arg, it.next())?),
                "--sources" => sources = Some(number(arg, it.next())?),
                "--rate" => rate = Some(number(arg, it.next())?),
                "--duration" => duration = Some(number(arg, it.next())?),
                "--token-ttl" => token_ttl = Some(number(arg, it.next())?),
                "--login-mode" => {
                    high_performance_login = match it.next().map(String::as_str) {
                        Some("high-security") => false,
                        Some("high-performance") => true,
                        other => {
                            return Err(format!(
                                "--login-mode {other:?}: expected high-security or high-performance"
                            ));
                        }
                    }
                }
                "--only" => {
                    let value = it.next().ok_or("--only needs a list of contenders")?;
                    for key in value.split(',').filter(|k| !k.is_empty()) {
                        only.push(Contender::from_key(key).ok_or_else(|| {
                            format!(
                                "--only: unknown contender {key:?} (one of {})",
                                Contender::KEYS.join(", ")
                            )
                        })?);
                    }
                }
                "--out" => {
                    let value = it.next().ok_or("--out needs a file name")?;
                    out = Some(PathBuf::from(value));
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        // The command line as understood, for the report.
        let mut shown = Vec::new();
        if scenarios != [1, 2, 3, 4, 5, 6] {
            shown.push(format!("--scenario {}", scenarios[0]));
        }
        for (flag, value) in [
            ("--messages", messages),
            ("--mailboxes", mailboxes),
            ("--per-mailbox", per_mailbox),
            ("--max-sessions", max_sessions),
            ("--runs", runs),
            ("--sources", sources),
            ("--rate", rate),
            ("--duration", duration),
            ("--token-ttl", token_ttl),
        ] {
            if let Some(v) = value {
                shown.push(format!("{flag} {v}"));
            }
        }
        if high_performance_login {
            shown.push("--login-mode high-performance".into());
        }
        if smoke {
            shown.push("--smoke".into());
        }
        if !only.is_empty() {
            let keys: Vec<&str> = only.iter().map(|c| c.key()).collect();
            shown.push(format!("--only {}", keys.join(",")));
        }
        if let Some(out) = &out {
            shown.push(format!("--out {}", out.display()));
        }
        Ok(Args {
            scenarios,
            messages: messages.unwrap_or(if smoke { 300 } else { 10_000 }),
            mailboxes: mailboxes.unwrap_or(if smoke { 10 } else { 1_000 }),
            per_mailbox: per_mailbox.unwrap_or(20),
            max_sessions,
            runs: if smoke { 1 } else { runs.unwrap_or(3) },
            smoke,
            out,
            keep,
            only,
            live: LiveArgs {
                sources: sources.unwrap_or(if smoke { 10 } else { 1_000 }),
                rate: rate.unwrap_or(10) as f64,
                duration: duration.map(|s| Duration::from_secs(s as u64)),
                token_ttl: Duration::from_secs(token_ttl.unwrap_or(30) as u64),
                high_performance_login,
                smoke,
                keep,
            },
            sinks: SinkArgs {
                messages: messages.unwrap_or(if smoke { 300 } else { 10_000 }),
                runs: if smoke { 1 } else { runs.unwrap_or(3) },
                keep,
            },
            given: shown,
        })
    }
}

fn main() {
    let raw: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if raw.first().is_some_and(|a| a == measure::WRAPPER_FLAG) {
        measure::wrapper_main(&raw[1..]);
    }
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--reference-child") {
        reference::child_main(&argv[1..]);
    }
    let args = match Args::parse(&argv) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("scenarios: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let mailsluice = PathBuf::from(env!("CARGO_BIN_EXE_mailsluice"));
    let command = format!("scripts/bench {}", args.given.join(" "))
        .trim_end()
        .to_string();
    let mut env = Environment::probe(&mailsluice, command);
    env.rss_floor_bytes = rss_floor();
    if !args.smoke {
        env.disk_write_rate = measure::disk_write_rate(&std::env::temp_dir(), 1 << 30).ok();
    }
    println!("mailsluice benchmark, {}", env.date);
    println!(
        "machine: {} cores ({}), {} memory",
        env.cores, env.cpu, env.memory
    );
    for (name, version) in &env.versions {
        println!("  {name}: {version}");
    }
    println!("mailsluice binary: {}", mailsluice.display());
    if let Some(floor) = env.rss_floor_bytes {
        println!(
            "peak RSS floor of the measurement (`true`): {:.1} MB",
            floor as f64 / 1e6
        );
    }
    if let Some(rate) = env.disk_write_rate {
        println!(
            "disk: {:.0} MB/s sequential write (1 GiB, then fsync, in {})",
            rate / 1e6,
            std::env::temp_dir().display()
        );
    }

    let mut results = Vec::new();
    let mut live = Vec::new();
    for &number in &args.scenarios {
        if number >= 4 {
            let report = match number {
                4 => steady::run(&args.live, &mailsluice),
                5 => churn::run(&args.live, &mailsluice),
                _ => sinks::run(&args.sinks, &mailsluice),
            };
            println!("\n{}", report.markdown);
            live.push(report);
            continue;
        }
        let result = run_scenario(number, &args, &mailsluice);
        report::print_text(&result);
        results.push(result);
    }
    if let Some(out) = &args.out {
        let mut text = report::markdown(&env, &results);
        for report in &live {
            text.push('\n');
            text.push_str(&report.markdown);
        }
        match std::fs::write(out, text) {
            Ok(()) => println!("\nwrote {}", out.display()),
            Err(e) => {
                eprintln!("scenarios: write {}: {e}", out.display());
                std::process::exit(1);
            }
        }
    }
    let mut wrong = ours_wrong(&results);
    wrong.extend(live.into_iter().flat_map(|r| r.failures));
    if !wrong.is_empty() {
        eprintln!("\nFAILED:");
        for w in &wrong {
            eprintln!("  {w}");
        }
        std::process::exit(1);
    }
}

/// The peak RSS measured for `true`: what a contender starts from under the measuring wrapper.
fn rss_floor() -> Option<u64> {
    let dir = tempfile::tempdir().ok()?;
    let stdout = std::fs::File::create(dir.path().join("stdout")).ok()?;
    let stderr = std::fs::File::create(dir.path().join("stderr")).ok()?;
    let report = dir.path().join("measured");
    measure::run_wrapped(
        &Command::new("true"),
        stdout,
        stderr,
        Duration::from_secs(30),
        &report,
    )
    .ok()
    .filter(|m| m.exit.success())
    .map(|m| m.peak_rss_bytes)
}

/// Runs where mailsluice did not store exactly the seeded messages, or the reference did not
/// see them all, or the server's CPU time was not measured.
fn ours_wrong(results: &[ScenarioResult]) -> Vec<String> {
    let mut wrong = Vec::new();
    for s in results {
        for c in &s.contenders {
            if !(c.contender.is_mailsluice() || c.contender == Contender::Reference) {
                continue;
            }
            for (r, run) in c.runs.iter().enumerate() {
                let ok = run.failure.is_none()
                    && match &run.verdict {
                        Verdict::Judged(j) => j.perfect(),
                        Verdict::Counted { messages, bytes } => {
                            *messages == s.messages as u64 && *bytes == s.total_bytes
                        }
                        Verdict::Failed(_) => false,
                    };
                if !ok {
                    wrong.push(format!(
                        "{}: {} run {}: {:?} {}",
                        s.title,
                        c.name,
                        r + 1,
                        run.verdict,
                        run.failure.as_deref().unwrap_or("")
                    ));
                }
                // Serving every message over TLS costs Dovecot some CPU time: a reading of
                // none means its processes were not found.
                if run.failure.is_none() && run.server_cpu.is_none_or(|c| c.is_zero()) {
                    wrong.push(format!(
                        "{}: {} run {}: Dovecot's CPU time was not measured ({:?})",
                        s.title,
                        c.name,
                        r + 1,
                        run.server_cpu
                    ));
                }
            }
        }
    }
    wrong
}

/// One scenario's mailboxes and contenders.
struct Plan {
    title: String,
    protocol: Protocol,
    users: Vec<String>,
    /// Messages of each user, in `users` order.
    mail: Vec<Vec<Vec<u8>>>,
    contenders: Vec<Contender>,
    dovecot_config: String,
    max_sessions: Option<usize>,
}

/// Settings added to the harness' Dovecot configuration in every scenario.
const DOVECOT_BASE: &str = "\
# The harness logs every login and mailbox open at debug level for tests; not here.
mail_debug = no
auth_debug = no
auth_verbose = no
";

fn plan(number: u8, args: &Args) -> Plan {
    let peers = if args.smoke {
        Vec::new()
    } else {
        vec![Contender::Mbsync, Contender::Getmail, Contender::Fetchmail]
    };
    let mut contenders = vec![Contender::MailsluicePassword, Contender::MailsluiceOauth2];
    contenders.extend(peers);
    contenders.push(Contender::Reference);
    if !args.only.is_empty() {
        contenders.retain(|c| args.only.contains(c));
    }
    match number {
        1 | 2 => {
            let protocol = if number == 1 {
                Protocol::Imap
            } else {
                Protocol::Pop3
            };
            let (title, tag) = match protocol {
                Protocol::Imap => (
                    format!(
                        "Scenario 1: one IMAP mailbox, {} messages, backfill",
                        args.messages
                    ),
                    "s1",
                ),
                Protocol::Pop3 => (
                    format!("Scenario 2: one POP3 mailbox, {} messages", args.messages),
                    "s2",
                ),
            };
            if protocol == Protocol::Pop3 {
                contenders.retain(|c| *c != Contender::Mbsync);
            }
            Plan {
                title,
                protocol,
                users: vec!["bench@example.test".into()],
                mail: vec![corpus::mailbox(tag, args.messages)],
                contenders,
                dovecot_config: DOVECOT_BASE.into(),
                max_sessions: None,
            }
        }
        _ => {
            let m = args.mailboxes;
            let k = args.per_mailbox;
            let users: Vec<String> = (1..=m).map(|i| format!("box{i:04}@example.test")).collect();
            // Mailbox i holds corpus messages i*k .. (i+1)*k: one corpus over all mailboxes,
            // so every message is different and the size distribution is the corpus'.
            let mail = (0..m)
                .map(|i| {
                    (i * k..(i + 1) * k)
                        .map(|j| corpus::message("s3", j))
                        .collect()
                })
                .collect();
            let sessions = args.max_sessions.unwrap_or(256);
            let dovecot_config = format!(
                "{DOVECOT_BASE}\
                 # Fan-out: every TLS connection holds an imap-login process (the TLS proxy) and an imap\n\
                 # process; the defaults (100 processes per service, 1000 clients) would throttle\n\
                 # mailsluice's {sessions} concurrent connections (node.max_sessions).\n\
                 default_process_limit = {}\n\
                 default_client_limit = {}\n",
                (2 * sessions + 100).max(1100),
                (4 * sessions).max(5000),
            );
            Plan {
                title: format!(
                    "Scenario 3: fan-out, {m} IMAP mailboxes of {k} messages on one node"
                ),
                protocol: Protocol::Imap,
                users,
                mail,
                contenders,
                dovecot_config,
                max_sessions: args.max_sessions,
            }
        }
    }
}

/// The first three fields of /proc/loadavg.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "unknown".into(),
        |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

/// Whether `program` is on PATH.
fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

fn run_scenario(number: u8, args: &Args, mailsluice: &Path) -> ScenarioResult {
    let plan = plan(number, args);
    eprintln!("\n== {}", plan.title);
    let mut setup_notes = Vec::new();

    let accounts: Vec<(String, String)> = plan
        .users
        .iter()
        .map(|u| (u.clone(), PASSWORD.to_string()))
        .collect();
    let oidc = Oidc::start(OidcOptions {
        users: accounts.clone(),
        ..OidcOptions::default()
    });
    let dovecot = Dovecot::start(DovecotOptions {
        users: accounts,
        oidc_introspection_url: Some(oidc.introspection_url()),
        min_tls: "TLSv1.2",
        extra_config: plan.dovecot_config.clone(),
    });
    let load_before = loadavg();
    let seeding = Instant::now();
    for (user, mail) in plan.users.iter().zip(&plan.mail) {
        dovecot.seed(user, mail);
    }
    let all: Vec<Vec<u8>> = plan.mail.into_iter().flatten().collect();
    let (total_bytes, median_size, p95_size, max_size) = corpus::stats(&all);
    let expected = Expected::new(all);
    eprintln!(
        "seeded {} messages ({:.1} MB) in {:.1} s",
        expected.len(),
        total_bytes as f64 / 1e6,
        seeding.elapsed().as_secs_f64()
    );

    let work = tempfile::Builder::new()
        .prefix("mailsluice-bench-")
        .tempdir()
        .expect("create the benchmark's work directory");
    // getmail, run as root, delivers as `nobody` (see contenders.rs), who must get through.
    std::fs::set_permissions(
        work.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod the work directory");
    let ctx = Ctx {
        protocol: plan.protocol,
        port: match plan.protocol {
            Protocol::Imap => dovecot.imaps_port,
            Protocol::Pop3 => dovecot.pop3s_port,
        },
        ca: &dovecot.ca_pem,
        users: &plan.users,
        oidc: &oidc,
        mailsluice,
        max_sessions: plan.max_sessions,
        server_group: dovecot.process_group(),
    };

    // Warm-up: Dovecot indexes the Maildirs (and POP3 its UIDL list) on first access, and the
    // mail gets into the page cache; whoever came first would pay for that otherwise.
    let warm = run_one(
        &ctx,
        Contender::Reference,
        &work.path().join("warm-up"),
        &expected,
        mailsluice,
        args,
    );
    match &warm.0.verdict {
        Verdict::Counted { messages, .. } if *messages == expected.len() as u64 => {
            let note = format!(
                "Warm-up (untimed): the reference fetched all {} messages once in {:.2} s before the timed runs.",
                messages,
                warm.0.measured.wall.as_secs_f64()
            );
            eprintln!("{note}");
            setup_notes.push(note);
        }
        other => panic!("the warm-up fetch did not see every seeded message: {other:?}"),
    }
    if plan.protocol == Protocol::Imap && plan.users.len() > 1 {
        setup_notes.push(format!(
            "mailsluice: node.max_sessions = {} ({}); one source per mailbox, concurrent. \
             mbsync, fetchmail and getmail work through their mailboxes one after the other in \
             one process, as they do; the reference uses one connection per mailbox, sequentially.",
            plan.max_sessions.unwrap_or(256),
            if plan.max_sessions.is_some() {
                "--max-sessions"
            } else {
                "its default"
            }
        ));
    }

    let mut results: Vec<ContenderResult> = plan
        .contenders
        .iter()
        .map(|&c| ContenderResult {
            contender: c,
            name: c.name(plan.protocol),
            runs: Vec::new(),
            how: None,
            normalize: c.normalize(),
            skipped: c
                .program()
                .filter(|p| !installed(p))
                .map(|p| format!("{p} is not installed")),
        })
        .collect();
    let active: Vec<usize> = (0..results.len())
        .filter(|&i| results[i].skipped.is_none())
        .collect();
    for run in 0..args.runs {
        for i in 0..active.len() {
            let idx = active[(run + i) % active.len()];
            let contender = results[idx].contender;
            let dir = work.path().join(format!("{}-{}", idx, run + 1));
            let (result, how) = run_one(&ctx, contender, &dir, &expected, mailsluice, args);
            eprintln!(
                "run {}/{} {:<32} {:>8.2} s  {:>7.1} MB RSS  {:>7.2} s CPU  {:>6} s server CPU  {}",
                run + 1,
                args.runs,
                results[idx].name,
                result.measured.wall.as_secs_f64(),
                result.measured.peak_rss_bytes as f64 / 1e6,
                result.measured.cpu.as_secs_f64(),
                result
                    .server_cpu
                    .map_or_else(|| "?".into(), |c| format!("{:.2}", c.as_secs_f64())),
                match &result.failure {
                    Some(f) => format!(
                        "FAILED ({}); {}",
                        f.lines().next().unwrap_or(""),
                        short(&result.verdict)
                    ),
                    None => short(&result.verdict),
                }
            );
            if results[idx].how.is_none() {
                results[idx].how = how;
            }
            results[idx].runs.push(result);
        }
    }
    setup_notes.push(format!(
        "Seeded as Maildir files directly (untimed); OAuth2: each mailsluice OAuth2 run first gets a \
         fresh grant per mailbox at the OIDC server (oidc-provider, opaque access tokens that \
         Dovecot checks by introspection at every login) and imports its refresh token with \
         `mailsluice tokens import`, untimed. Run directories live under {}.",
        std::env::temp_dir().display()
    ));
    setup_notes.push(format!(
        "Load average (1, 5, 15 min) before seeding: {load_before}; after the last run: {}. \
         Other work on the machine shows up here and in the numbers.",
        loadavg()
    ));
    if args.keep {
        eprintln!("kept: {}", work.keep().display());
    }
    drop(dovecot);
    drop(oidc);
    ScenarioResult {
        title: plan.title,
        messages: expected.len(),
        total_bytes,
        median_size,
        p95_size,
        max_size,
        runs: args.runs,
        dovecot_config: plan.dovecot_config,
        setup_notes,
        contenders: results,
    }
}

fn short(v: &Verdict) -> String {
    match v {
        Verdict::Judged(j) if j.perfect() => "all messages, byte-exact".into(),
        Verdict::Judged(j) => format!(
            "{} exact, {} missing, {} duplicated, {} altered",
            j.exact, j.missing, j.duplicated, j.altered
        ),
        Verdict::Counted { messages, bytes } => {
            format!("counted {messages} messages, {bytes} bytes")
        }
        Verdict::Failed(e) => format!("FAILED: {}", e.lines().next().unwrap_or("")),
    }
}

/// Prepares, runs, measures and judges one run of `contender` in `dir`, then deletes `dir`.
fn run_one(
    ctx: &Ctx<'_>,
    contender: Contender,
    dir: &Path,
    expected: &Expected,
    mailsluice: &Path,
    args: &Args,
) -> (RunResult, Option<contenders::How>) {
    // Generous: the slowest peer on the largest scenario takes minutes, not an hour.
    let limit = Duration::from_secs(if args.smoke { 300 } else { 3600 });
    let failed = |e: String| RunResult {
        measured: measure::Measured {
            wall: Duration::ZERO,
            cpu: Duration::ZERO,
            peak_rss_bytes: 0,
            exit: measure::Exit::Code(-1),
        },
        server_cpu: None,
        disk_written: None,
        verdict: Verdict::Failed(e.clone()),
        failure: Some(e),
    };
    if let Err(e) = std::fs::create_dir_all(dir) {
        return (failed(format!("create {}: {e}", dir.display())), None);
    }
    let preparing = Instant::now();
    let prepared = match contender.prepare(ctx, dir) {
        Ok(p) => {
            if preparing.elapsed() > Duration::from_secs(1) {
                eprintln!(
                    "prepared {} in {:.1} s (untimed)",
                    contender.name(ctx.protocol),
                    preparing.elapsed().as_secs_f64()
                );
            }
            p
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(dir);
            return (failed(format!("preparing: {e}")), None);
        }
    };
    let contenders::Prepared {
        command,
        how,
        output,
    } = prepared;
    let (stdout_path, stderr_path) = (dir.join("stdout.log"), dir.join("stderr.log"));
    let files = std::fs::File::create(&stdout_path)
        .and_then(|o| Ok((o, std::fs::File::create(&stderr_path)?)));
    let (stdout, stderr) = match files {
        Ok(f) => f,
        Err(e) => return (failed(format!("create the log files: {e}")), Some(how)),
    };
    let server_before = measure::group_cpu(ctx.server_group);
    let disk_before = measure::disk_written();
    let measured =
        match measure::run_wrapped(&command, stdout, stderr, limit, &dir.join("measured")) {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_dir_all(dir);
                return (failed(format!("spawn: {e}")), Some(how));
            }
        };
    let server_cpu = server_before
        .zip(measure::group_cpu(ctx.server_group))
        .map(|(before, after)| after.saturating_sub(before));
    // Read at exit, before the output is judged (which exports mailsluice's store to files).
    let disk_written = disk_before
        .zip(measure::disk_written())
        .map(|(before, after)| after.saturating_sub(before));
    let failure = (!measured.exit.success()).then(|| {
        // getmail warns once per rc file that read_all without delete fetches everything
        // again each time: hundreds of lines that would hide the actual error.
        let log: String = (support::read_log(&stderr_path) + &support::read_log(&stdout_path))
            .lines()
            .filter(|l| !l.contains("all messages will be retrieved each time"))
            .map(|l| format!("{l}\n"))
            .collect();
        eprintln!(
            "{} failed ({}); last lines of its output:\n{}",
            contender.name(ctx.protocol),
            measured.exit,
            support::tail(&log, 20)
        );
        format!("{}: {}", measured.exit, support::tail(&log, 3).trim())
    });
    // A failed run's output is judged all the same: what it did deliver is worth knowing.
    let verdict = match output {
        Output::Mailsluice { config, export } => {
            match contenders::mailsluice_export(mailsluice, &config, &export) {
                Ok(()) => Verdict::Judged(judge::judge(
                    expected,
                    &judge::flat_files(&export),
                    contender.normalize(),
                )),
                Err(e) => Verdict::Failed(e),
            }
        }
        Output::Maildirs(root) => Verdict::Judged(judge::judge(
            expected,
            &judge::maildir_files(&root),
            contender.normalize(),
        )),
        Output::Flat(out) => Verdict::Judged(judge::judge(
            expected,
            &judge::flat_files(&out),
            contender.normalize(),
        )),
        Output::Counted => {
            let text = support::read_log(&stdout_path);
            match reference::parse_output(&text) {
                Some((messages, bytes)) => Verdict::Counted { messages, bytes },
                None => Verdict::Failed(format!("no counts in the reference's output {text:?}")),
            }
        }
    };
    if !args.keep {
        let _ = std::fs::remove_dir_all(dir);
    }
    // Written-back pages of one run should not slow the next one down.
    let _ = Command::new("sync").status();
    (
        RunResult {
            measured,
            server_cpu,
            disk_written,
            verdict,
            failure,
        },
        Some(how),
    )
}
