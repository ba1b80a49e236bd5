//! Scenario 6, handing mail on: one IMAP mailbox ingested by a node that also delivers every
//! stored message to a sink, against the same node ingesting alone, in the same run.
//!
//! 1. Dovecot (the harness) with one mailbox of `--messages` corpus messages (the corpus of
//!    scenario 1), a real Standard Webhooks receiver (`tests/support/webhook.rs`: an HTTP/1.1
//!    server that verifies every signature) and a real `nats-server -js`
//!    (`tests/support/nats.rs`, default `max_payload` of 1 MiB).
//! 2. One untimed ingest so Dovecot's indexes and the page cache are warm for every variant.
//! 3. Variants, each `--runs` times in rotation, each run from an empty node state:
//!    - `ingest`: the node alone; done when every message is stored (`/api/sources`);
//!    - `webhook`: with a webhook sink, `include_raw = false` (the body has `raw_url`); done
//!      when the receiver has every event, verified and answered 204;
//!    - `webhook + raw`: the same with `include_raw = true` (raw bytes inline, base64);
//!    - `nats`, `nats + raw`: a JetStream sink; done when the stream holds every event
//!      (messages larger than `max_payload` go through the object store).
//!
//!    Each run is timed from the node's spawn to done: the time to the last delivery.
//! 4. The report gives each variant's median against the median of `ingest` (the ratio is
//!    what delivery adds); a run that loses an event, delivers one with a bad signature, or
//!    stores a message twice fails the benchmark. Targets (reported, never asserted): delivery
//!    adds under 30 % without raw bytes and under 60 % with them.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::contenders::PASSWORD;
use crate::corpus;
use crate::support::{
    Dovecot, DovecotOptions, NatsServer, NodeProcess, WebhookOptions, WebhookReceiver,
};
use crate::{LiveReport, SinkArgs};

/// The stream and bucket every NATS run uses (deleted between runs).
const STREAM: &str = "MAILSLUICE_BENCH";
const BUCKET: &str = "mailsluice-bench-raw";
/// Where the node reports the address it listens on, in the run directory.
const LISTEN_FILE: &str = "http.addr";
/// How often completion is looked at: often enough for a tenth-of-a-second resolution on a
/// run of seconds, rarely enough to cost nothing.
const POLL: Duration = Duration::from_millis(50);

const TARGET_PLAIN: f64 = 1.30;
const TARGET_RAW: f64 = 1.60;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Ingest,
    Webhook { raw: bool },
    Nats { raw: bool },
}

impl Variant {
    const ALL: [Variant; 5] = [
        Variant::Ingest,
        Variant::Webhook { raw: false },
        Variant::Webhook { raw: true },
        Variant::Nats { raw: false },
        Variant::Nats { raw: true },
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Ingest => "ingest alone",
            Variant::Webhook { raw: false } => "webhook",
            Variant::Webhook { raw: true } => "webhook + raw",
            Variant::Nats { raw: false } => "nats",
            Variant::Nats { raw: true } => "nats + raw",
        }
    }

    fn target(self) -> Option<f64> {
        match self {
            Variant::Ingest => None,
            Variant::Webhook { raw } | Variant::Nats { raw } => {
                Some(if raw { TARGET_RAW } else { TARGET_PLAIN })
            }
        }
    }
}

/// The node's configuration for one run of `variant`.
fn node_config(
    dir: &Path,
    dovecot: &Dovecot,
    variant: Variant,
    webhook: &WebhookReceiver,
    nats: &NatsServer,
) -> String {
    let mut c = format!(
        "[node]\ndata_dir = \"{}\"\nhttp_listen = \"127.0.0.1:0\"\nhttp_listen_file = \"{}\"\n\
         secret_key_file = \"{}\"\n\n[tls]\nextra_ca_file = \"{}\"\n\n\
         [sources.bench]\nprotocol = \"imap\"\nhost = \"localhost\"\nport = {}\nsecurity = \"tls\"\n\
         username = \"bench\"\nauth = \"password\"\npassword_env = \"BENCH_PASSWORD\"\n\
         folders = [\"INBOX\"]\n\n",
        dir.join("data").display(),
        dir.join(LISTEN_FILE).display(),
        dir.join("secret.key").display(),
        dovecot.ca_pem.display(),
        dovecot.imaps_port,
    );
    match variant {
        Variant::Ingest => {}
        Variant::Webhook { raw } => {
            let _ = write!(
                c,
                "[sinks.hook]\nkind = \"webhook\"\nurl = \"{}\"\nsecret_env = \"BENCH_WEBHOOK_SECRET\"\n\
                 events = [\"message.stored\"]\ninclude_raw = {raw}\n",
                webhook.url()
            );
        }
        Variant::Nats { raw } => {
            let _ = write!(
                c,
                "[sinks.stream]\nkind = \"nats\"\nservers = [\"{}\"]\nstream = \"{STREAM}\"\n\
                 object_bucket = \"{BUCKET}\"\nevents = [\"message.stored\"]\ninclude_raw = {raw}\n",
                nats.url()
            );
        }
    }
    c
}

/// What one timed run gave.
struct Run {
    elapsed: Duration,
    /// When every message was stored (as the poll saw it), for a delivery variant.
    ingested: Option<Duration>,
    /// How many events had reached the receiver by then.
    delivered_by_then: Option<u64>,
    /// Mean duration of one delivery attempt (the node's
    /// `sink_delivery_duration_seconds`), and how many there were.
    attempts: Option<(f64, u64)>,
}

impl Run {
    /// When ingest ended and what one attempt took, for a delivery variant.
    fn detail(&self) -> String {
        let mut out = String::new();
        if let Some(at) = self.ingested {
            let _ = write!(out, " (all stored at {:.2} s", at.as_secs_f64());
            if let Some(n) = self.delivered_by_then {
                let _ = write!(out, ", {n} delivered by then");
            }
            if let Some((mean, count)) = self.attempts {
                let _ = write!(out, "; {count} attempts, {:.2} ms each", mean * 1e3);
            }
            out.push(')');
        }
        out
    }
}

pub fn run(args: &SinkArgs, mailsluice: &Path) -> LiveReport {
    let n = args.messages;
    let title = format!("Scenario 6: sinks, one IMAP mailbox of {n} messages delivered on");
    eprintln!("\n== {title}");
    let mut failures = Vec::new();
    let dovecot = Dovecot::start(DovecotOptions {
        users: vec![("bench".to_string(), PASSWORD.to_string())],
        oidc_introspection_url: None,
        min_tls: "TLSv1.2",
        extra_config: String::new(),
    });
    let mail = corpus::mailbox("s6", n);
    let (total_bytes, ..) = corpus::stats(&mail);
    dovecot.seed("bench", &mail);
    drop(mail);
    // Verifies every request and keeps no body, as a receiver in production would.
    let webhook = WebhookReceiver::start_with(WebhookOptions {
        keep_bodies: false,
        ..WebhookOptions::default()
    });
    let nats = NatsServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the NATS client");

    let work = tempfile::Builder::new()
        .prefix("mailsluice-sinks-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .expect("create the scenario's work directory");

    // Warm-up, untimed.
    if let Err(e) = one_run(
        mailsluice,
        work.path(),
        &dovecot,
        Variant::Ingest,
        &webhook,
        &nats,
        &runtime,
        n,
    ) {
        failures.push(format!("warm-up: {e}"));
    }
    let mut results: Vec<(Variant, Vec<Run>)> =
        Variant::ALL.iter().map(|&v| (v, Vec::new())).collect();
    for round in 0..args.runs {
        for (variant, runs) in &mut results {
            eprintln!("run {}/{}: {}", round + 1, args.runs, variant.name());
            match one_run(
                mailsluice,
                work.path(),
                &dovecot,
                *variant,
                &webhook,
                &nats,
                &runtime,
                n,
            ) {
                Ok(run) => {
                    eprintln!("  {:.2} s{}", run.elapsed.as_secs_f64(), run.detail());
                    runs.push(run);
                }
                Err(e) => failures.push(format!("{}: {e}", variant.name())),
            }
        }
    }
    if args.keep {
        eprintln!("kept: {}", work.keep().display());
    }

    let median = |runs: &[Run]| -> Option<Duration> {
        let mut t: Vec<Duration> = runs.iter().map(|r| r.elapsed).collect();
        t.sort();
        t.get(t.len() / 2).copied()
    };
    let base = results
        .iter()
        .find(|(v, _)| *v == Variant::Ingest)
        .and_then(|(_, runs)| median(runs));
    let mut md = format!(
        "## {title}\n\n{n} messages ({:.0} MB), one source, {} run(s) per variant in rotation, each \
         from an empty node state; time from the node's spawn to the last event at the \
         receiver (ingest alone: to the last message stored). Targets: delivery adds under \
         30 % without raw bytes, under 60 % with them.\n\n\
         | variant | runs (s) | median (s) | against ingest alone | target | met | all stored at (s) | mean attempt (ms) |\n\
         |---|---|---|---|---|---|---|---|\n",
        total_bytes as f64 / 1e6,
        args.runs
    );
    for (variant, runs) in &results {
        let times: Vec<String> = runs
            .iter()
            .map(|r| format!("{:.2}", r.elapsed.as_secs_f64()))
            .collect();
        let m = median(runs);
        let ratio = m.zip(base).map(|(m, b)| m.as_secs_f64() / b.as_secs_f64());
        let stored_at: Vec<String> = runs
            .iter()
            .filter_map(|r| r.ingested)
            .map(|t| format!("{:.2}", t.as_secs_f64()))
            .collect();
        let attempt: Vec<String> = runs
            .iter()
            .filter_map(|r| r.attempts)
            .map(|(mean, _)| format!("{:.2}", mean * 1e3))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            variant.name(),
            times.join(", "),
            m.map(|m| format!("{:.2}", m.as_secs_f64()))
                .unwrap_or("-".into()),
            ratio.map(|r| format!("{r:.2}x")).unwrap_or("-".into()),
            variant
                .target()
                .map(|t| format!("under {t:.2}x"))
                .unwrap_or_default(),
            match (variant.target(), ratio) {
                (Some(t), Some(r)) => {
                    if r < t { "yes" } else { "no" }
                }
                _ => "",
            },
            stored_at.join(", "),
            attempt.join(", "),
        );
    }
    if !failures.is_empty() {
        md.push_str("\nFailures:\n");
        for f in &failures {
            let _ = writeln!(md, "- {f}");
        }
    }
    LiveReport {
        markdown: md,
        failures,
    }
}

/// One run of `variant` from an empty node state: the time from spawn to done.
#[allow(clippy::too_many_arguments)]
fn one_run(
    mailsluice: &Path,
    work: &Path,
    dovecot: &Dovecot,
    variant: Variant,
    webhook: &WebhookReceiver,
    nats: &NatsServer,
    runtime: &tokio::runtime::Runtime,
    n: usize,
) -> Result<Run, String> {
    let dir = work.join("run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    webhook.clear_received();
    // One client for the run's probes: a connection per probe would be load of our own
    // making on the server being measured.
    let js = match variant {
        Variant::Nats { .. } => Some(runtime.block_on(async {
            let js = nats.jetstream().await;
            let _ = js.delete_stream(STREAM).await;
            let _ = js.delete_object_store(BUCKET).await;
            js
        })),
        _ => None,
    };
    let stream_len = || -> Option<u64> {
        let js = js.as_ref()?;
        runtime.block_on(async {
            let mut stream = js.get_stream(STREAM).await.ok()?;
            stream.info().await.ok().map(|i| i.state.messages)
        })
    };
    let config = dir.join("mailsluice.toml");
    std::fs::write(&config, node_config(&dir, dovecot, variant, webhook, nats))
        .map_err(|e| format!("write the config: {e}"))?;
    let log = dir.join("node.log");
    let stderr = std::fs::File::create(&log).map_err(|e| format!("create the log: {e}"))?;
    let mut command = Command::new(mailsluice);
    command
        .arg("-c")
        .arg(&config)
        .arg("run")
        .current_dir(&dir)
        .env("BENCH_PASSWORD", PASSWORD)
        .env("BENCH_WEBHOOK_SECRET", &webhook.secrets()[0])
        .env(
            "MAILSLUICE_LOG",
            std::env::var("BENCH_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let spawned = Instant::now();
    let mut node = NodeProcess::spawn(command, &dir.join(LISTEN_FILE))?;
    let tail = || crate::support::tail(&crate::support::read_log(&log), 20);
    let http = node
        .wait_ready(Duration::from_secs(30))
        .map_err(|e| format!("{e}; its log ends:\n{}", tail()))?;
    let client = reqwest::blocking::Client::builder()
        .default_headers(crate::support::node_process::bearer(
            &dir.join("data").join("api.token"),
        )?)
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("http client: {e}"))?;
    let stored = || -> Option<u64> {
        let v: serde_json::Value = client
            .get(format!("http://{http}/api/sources"))
            .send()
            .ok()?
            .json()
            .ok()?;
        v.as_array().map(|a| {
            a.iter()
                .map(|s| s["stored_total"].as_u64().unwrap_or(0))
                .sum()
        })
    };
    let deadline = spawned + Duration::from_secs(600);
    let want = n as u64;
    let mut ingested = None;
    let mut ahead = None;
    let elapsed = loop {
        if let Some(status) = node.exited() {
            return Err(format!(
                "the node exited ({status}); its log ends:\n{}",
                tail()
            ));
        }
        let done = match variant {
            Variant::Ingest => stored() == Some(want),
            Variant::Webhook { .. } => {
                let (delivered, bad) = webhook.delivered_and_bad();
                if bad > 0 {
                    return Err(format!("{bad} webhook request(s) with a bad signature"));
                }
                delivered >= n
            }
            Variant::Nats { .. } => stream_len().is_some_and(|held| held >= want),
        };
        if ingested.is_none() && variant != Variant::Ingest && stored() == Some(want) {
            ingested = Some(spawned.elapsed());
            ahead = match variant {
                Variant::Webhook { .. } => Some(webhook.delivered_and_bad().0 as u64),
                Variant::Nats { .. } => stream_len(),
                Variant::Ingest => None,
            };
        }
        if done {
            break spawned.elapsed();
        }
        if Instant::now() > deadline {
            let sinks = client
                .get(format!("http://{http}/api/sinks"))
                .send()
                .and_then(|r| r.text())
                .unwrap_or_else(|e| e.to_string());
            return Err(format!(
                "not done within 600 s: {:?} stored, {:?} delivered to the webhook, {:?} in the \
                 stream; /api/sinks: {sinks}; its log ends:\n{}",
                stored(),
                webhook.delivered_and_bad(),
                stream_len(),
                tail()
            ));
        }
        std::thread::sleep(POLL);
    };
    // Exactly what was expected, nothing twice.
    if stored() != Some(want) {
        return Err(format!("stored {:?} messages, not {want}", stored()));
    }
    match variant {
        Variant::Webhook { .. } => {
            let (delivered, bad) = webhook.delivered_and_bad();
            if delivered != n || bad != 0 {
                return Err(format!(
                    "{delivered} distinct events delivered (want {n}), {bad} bad signatures"
                ));
            }
        }
        Variant::Nats { .. } => {
            let held = stream_len();
            if held != Some(want) {
                return Err(format!("the stream holds {held:?} messages, not {want}"));
            }
        }
        Variant::Ingest => {}
    }
    let attempts = client
        .get(format!("http://{http}/metrics"))
        .send()
        .and_then(|r| r.text())
        .ok()
        .and_then(|text| attempt_mean(&text));
    node.stop(Duration::from_secs(20))
        .map_err(|e| format!("{e}; its log ends:\n{}", tail()))?;
    Ok(Run {
        elapsed,
        ingested: ingested.or((variant != Variant::Ingest).then_some(elapsed)),
        delivered_by_then: ahead,
        attempts,
    })
}

/// The mean of `mailsluice_sink_delivery_duration_seconds` (seconds) and its count, from a
/// scrape; `None` without a sink.
fn attempt_mean(metrics: &str) -> Option<(f64, u64)> {
    let value = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let sum = value("mailsluice_sink_delivery_duration_seconds_sum")?;
    let count = value("mailsluice_sink_delivery_duration_seconds_count")?;
    (count > 0.0).then(|| (sum / count, count as u64))
}
