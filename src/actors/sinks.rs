//! The sinks under the Supervisor: building a sink's transport from its settings (reading
//! its secret), starting its delivery worker ([`crate::sinks::engine::Worker`], a task on
//! the sinks' own thread) and the handle that stops it, what a reload does to each sink,
//! and pruning the outbox. The supervisor carries these out; the decisions are plain
//! functions here, tested without an actix System.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

use crate::config::{SecretError, SecretRef, Settings, SinkSettings, SinkTarget, read_secret};
use crate::net::{self, TlsSetupError};
use crate::sinks::engine::{Command, CommandError, ReplayReport, RetryReport, Worker};
use crate::sinks::nats::LazyNatsTransport;
use crate::sinks::sign::{SecretFormatError, parse_secrets};
use crate::sinks::transport::Transport;
use crate::sinks::webhook::{WebhookSetupError, WebhookTarget, WebhookTransport};
use crate::store::Store;

/// Events pruned per store transaction; a pass goes on while whole batches go.
const PRUNE_BATCH: usize = 1000;
/// Longest pause between two pruning passes.
const PRUNE_EVERY_MAX: Duration = Duration::from_secs(60);
/// Shortest pause between two pruning passes.
const PRUNE_EVERY_MIN: Duration = Duration::from_secs(1);

/// Why a sink could not start. Names the sink and the key; never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum SinkStartError {
    #[error("sinks.{sink}.{key}: {source}")]
    Secret {
        sink: String,
        key: &'static str,
        source: SecretError,
    },
    #[error("sinks.{sink}.{key}: {source}")]
    SecretFormat {
        sink: String,
        key: &'static str,
        source: SecretFormatError,
    },
    #[error("sink {sink}: [tls]: {source}")]
    Tls { sink: String, source: TlsSetupError },
    #[error(transparent)]
    Webhook(#[from] WebhookSetupError),
    #[error("sink {sink}: cannot start the sinks' thread: {source}")]
    Thread {
        sink: String,
        source: std::io::Error,
    },
}

/// The runtime the delivery workers and their connections run on: one thread of its own
/// ("sinks"), started with the first sink. On the supervisor's thread an event's round
/// trip waited behind the collectors' I/O (every IMAP and POP3 session runs there), so a
/// backfill slowed delivery to a crawl, and delivery took that thread's time from ingest.
fn runtime(sink: &str) -> Result<tokio::runtime::Handle, SinkStartError> {
    type Built = Result<tokio::runtime::Runtime, (std::io::ErrorKind, String)>;
    static RUNTIME: std::sync::OnceLock<Built> = std::sync::OnceLock::new();
    let built = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sinks")
            .enable_all()
            .build()
            .map_err(|e| (e.kind(), e.to_string()))
    });
    match built {
        Ok(rt) => Ok(rt.handle().clone()),
        Err((kind, why)) => Err(SinkStartError::Thread {
            sink: sink.to_owned(),
            source: std::io::Error::new(*kind, why.clone()),
        }),
    }
}

/// A running sink: what it was started with, and how to reach and stop its worker.
pub struct SinkHandle {
    /// The settings it runs with.
    pub settings: SinkSettings,
    /// The API base its `raw_url` is built on.
    pub api_base: String,
    /// SHA-256 of its secret's text when it started: a reload that finds another secret
    /// (a rotation written into the same file) restarts it. Never the secret itself.
    pub secret_digest: Option<[u8; 32]>,
    /// Dropped to stop the worker.
    commands: mpsc::Sender<Command>,
    /// Ends when the worker has stopped and recorded what it did.
    task: tokio::task::JoinHandle<()>,
}

impl SinkHandle {
    /// Asks the worker to stop; the returned task ends when it has.
    pub fn stop(self) -> tokio::task::JoinHandle<()> {
        drop(self.commands);
        self.task
    }

    /// `sinks retry`: every failed event gets another attempt.
    pub async fn retry(
        commands: mpsc::Sender<Command>,
        sink: String,
    ) -> Result<RetryReport, CommandError> {
        let (reply, answer) = oneshot::channel();
        if commands.send(Command::Retry { reply }).await.is_err() {
            return Err(stopping(sink));
        }
        answer.await.unwrap_or_else(|_| Err(stopping(sink)))
    }

    /// `sinks replay --from`: every kept event from `from` on again.
    pub async fn replay(
        commands: mpsc::Sender<Command>,
        sink: String,
        from: u64,
        retention_secs: u64,
    ) -> Result<ReplayReport, CommandError> {
        let (reply, answer) = oneshot::channel();
        let asked = Command::Replay {
            from,
            retention_secs,
            reply,
        };
        if commands.send(asked).await.is_err() {
            return Err(stopping(sink));
        }
        answer.await.unwrap_or_else(|_| Err(stopping(sink)))
    }

    /// Where commands for this sink go.
    pub fn commands(&self) -> mpsc::Sender<Command> {
        self.commands.clone()
    }
}

fn stopping(sink: String) -> CommandError {
    CommandError::NotRunning {
        sink,
        why: "it is stopping".into(),
    }
}

/// Builds `sink`'s transport (reading its secret) and starts its worker on the sinks'
/// thread.
pub fn start(
    settings: &Settings,
    sink: &SinkSettings,
    api_base: &str,
    store: Arc<Store>,
) -> Result<SinkHandle, SinkStartError> {
    let (transport, secret_digest) = transport(settings, sink, api_base)?;
    crate::telemetry::register_sink(&sink.name);
    let (commands, rx) = mpsc::channel(8);
    let worker = Worker::new(sink.engine_options(api_base), store, transport);
    let task = runtime(&sink.name)?.spawn(worker.run(rx));
    Ok(SinkHandle {
        settings: sink.clone(),
        api_base: api_base.to_owned(),
        secret_digest,
        commands,
        task,
    })
}

/// `secret_env` or `secret_file`: the key naming where a webhook's secret is.
fn secret_key(secret: &SecretRef) -> &'static str {
    match secret {
        SecretRef::Env(_) => "secret_env",
        SecretRef::File(_) => "secret_file",
    }
}

/// A sink's transport and the digest of the secret it was built with.
type Built = (Arc<dyn Transport>, Option<[u8; 32]>);

/// The sink's transport, and the digest of the secret it was built with.
fn transport(
    settings: &Settings,
    sink: &SinkSettings,
    api_base: &str,
) -> Result<Built, SinkStartError> {
    let name = sink.name.clone();
    match &sink.target {
        SinkTarget::Webhook(w) => {
            let key = secret_key(&w.secret);
            let text = Zeroizing::new(read_secret(&w.secret).map_err(|source| {
                SinkStartError::Secret {
                    sink: name.clone(),
                    key,
                    source,
                }
            })?);
            let keys = parse_secrets(&text).map_err(|source| SinkStartError::SecretFormat {
                sink: name.clone(),
                key,
                source,
            })?;
            let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
            let tls_options: net::TlsOptions = (&settings.tls).into();
            let tls = net::root_store(tls_options.extra_ca_file.as_deref())
                .and_then(|roots| net::rustls_config(tls_options.min_version, roots))
                .map_err(|source| SinkStartError::Tls {
                    sink: name.clone(),
                    source,
                })?;
            let policy = sink
                .address_policy()
                .unwrap_or(crate::sinks::address::AddressPolicy {
                    sink: name.clone(),
                    allow_private_addresses: w.allow_private_addresses,
                });
            let transport = WebhookTransport::new(WebhookTarget {
                sink: name,
                url: w.url.clone(),
                keys,
                timeout: sink.delivery.timeout,
                concurrency: sink.delivery.concurrency,
                policy,
                tls,
            })?;
            Ok((Arc::new(transport), Some(digest)))
        }
        // Connects on its first attempt: a NATS server down when the node starts is a
        // failed attempt, retried on the sink's schedule, not a sink that never starts.
        // Its credentials are read when it connects.
        SinkTarget::Nats(_) => Ok((
            Arc::new(LazyNatsTransport::new(sink, &settings.tls, api_base)),
            None,
        )),
    }
}

/// The digest of `sink`'s secret as it reads now (`None` when it has none, or it cannot be
/// read: then the sink is restarted and its start says why).
pub fn secret_digest(sink: &SinkSettings) -> Option<[u8; 32]> {
    match &sink.target {
        SinkTarget::Webhook(w) => {
            let text = Zeroizing::new(read_secret(&w.secret).ok()?);
            Some(Sha256::digest(text.as_bytes()).into())
        }
        SinkTarget::Nats(_) => None,
    }
}

/// Where receivers reach the node's API: `node.http_public_url`, else the address it
/// listens on (`listen`, the bound one, when known: with port 0 only the bound address
/// has the port).
pub fn api_base(settings: &Settings, listen: Option<SocketAddr>) -> String {
    if let Some(url) = &settings.node.http_public_url {
        return url.clone();
    }
    let scheme = if settings.node.http_tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}", listen.unwrap_or(settings.node.http_listen))
}

/// What a reload does to the sinks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkPlan {
    /// Configured now and not before (or not running): started.
    pub start: Vec<String>,
    /// Gone from the configuration: stopped, then their records dropped.
    pub remove: Vec<String>,
    /// Their settings, secret, `[tls]` or API base changed: stopped and started again,
    /// from their watermark.
    pub restart: Vec<String>,
    /// Left running.
    pub keep: Vec<String>,
}

/// What runs now, for [`plan_reload`]: per running sink, its settings, API base and secret
/// digest.
pub struct RunningSink<'a> {
    pub settings: &'a SinkSettings,
    pub api_base: &'a str,
    pub secret_digest: Option<[u8; 32]>,
}

/// Works out a reload's sink changes. `running` are the sinks whose worker runs; `old` the
/// settings they run under (for `[tls]`); `digest` reads a sink's secret digest now.
pub fn plan_reload(
    old: &Settings,
    new: &Settings,
    running: &std::collections::BTreeMap<String, RunningSink<'_>>,
    new_api_base: &str,
    digest: impl Fn(&SinkSettings) -> Option<[u8; 32]>,
) -> SinkPlan {
    let mut plan = SinkPlan::default();
    let names: BTreeSet<&String> = running.keys().chain(new.sinks.keys()).collect();
    for name in names {
        let Some(wanted) = new.sinks.get(name) else {
            plan.remove.push(name.clone());
            continue;
        };
        let Some(now) = running.get(name) else {
            plan.start.push(name.clone());
            continue;
        };
        let webhook = matches!(wanted.target, SinkTarget::Webhook(_));
        let changed = now.settings != wanted
            || now.api_base != new_api_base
            || (webhook && old.tls != new.tls)
            || now.secret_digest != digest(wanted);
        if changed {
            plan.restart.push(name.clone());
        } else {
            plan.keep.push(name.clone());
        }
    }
    plan
}

/// How long between two pruning passes: half the retention, within
/// [`PRUNE_EVERY_MIN`]..=[`PRUNE_EVERY_MAX`], so an outbox kept briefly is pruned about
/// when its events come due and a long one costs a pass a minute.
pub fn prune_every(retention: Duration) -> Duration {
    (retention / 2).clamp(PRUNE_EVERY_MIN, PRUNE_EVERY_MAX)
}

/// One pruning pass (blocking: run it off the actor's thread): deletes the events every
/// configured sink has done and no sink holds as failed, older than `retention`, a batch
/// per transaction until none is left. Returns how many went.
pub fn prune(store: &Store, sinks: &[String], retention: Duration) -> usize {
    let Ok(retention) = chrono::Duration::from_std(retention) else {
        return 0;
    };
    let cutoff = chrono::Utc::now() - retention;
    let mut pruned = 0;
    loop {
        match store.prune_events(sinks, cutoff, PRUNE_BATCH) {
            Ok(n) => {
                pruned += n;
                if n < PRUNE_BATCH {
                    return pruned;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "pruning the outbox failed; trying again later");
                return pruned;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[node]
data_dir = "/tmp/ms-sink-plan"

[sources.s]
protocol = "imap"
host = "mail.example.test"
username = "a"
auth = "password"
password_env = "PW"

[sinks.keep]
kind = "webhook"
url = "https://hooks.example.test/keep"
secret_env = "KEEP_WHSEC"

[sinks.change]
kind = "webhook"
url = "https://hooks.example.test/change"
secret_env = "CHANGE_WHSEC"

[sinks.gone]
kind = "webhook"
url = "https://hooks.example.test/gone"
secret_env = "GONE_WHSEC"
"#;

    fn settings(text: &str) -> Settings {
        crate::config::load_str(text, &Default::default())
            .unwrap_or_else(|e| panic!("test config: {e:?}"))
    }

    fn running<'a>(
        s: &'a Settings,
        base: &'a str,
    ) -> std::collections::BTreeMap<String, RunningSink<'a>> {
        s.sinks
            .iter()
            .map(|(name, settings)| {
                (
                    name.clone(),
                    RunningSink {
                        settings,
                        api_base: base,
                        secret_digest: Some([name.len() as u8; 32]),
                    },
                )
            })
            .collect()
    }

    fn digest(sink: &SinkSettings) -> Option<[u8; 32]> {
        Some([sink.name.len() as u8; 32])
    }

    #[test]
    fn a_reload_touches_only_the_sinks_that_changed() {
        let old = settings(BASE);
        let new = settings(
            &(BASE
                .replace("hooks.example.test/change", "hooks.example.test/changed")
                .replace(
                    "[sinks.gone]\nkind = \"webhook\"\nurl = \"https://hooks.example.test/gone\"\nsecret_env = \"GONE_WHSEC\"\n",
                    "",
                )
                + "\n[sinks.fresh]\nkind = \"webhook\"\nurl = \"https://hooks.example.test/fresh\"\nsecret_env = \"FRESH_WHSEC\"\n"),
        );
        let base = "http://127.0.0.1:9898";
        let plan = plan_reload(&old, &new, &running(&old, base), base, digest);
        assert_eq!(
            plan,
            SinkPlan {
                start: vec!["fresh".into()],
                remove: vec!["gone".into()],
                restart: vec!["change".into()],
                keep: vec!["keep".into()],
            }
        );
        // A new API base (raw_url) or new [tls] restarts every webhook sink.
        let plan = plan_reload(
            &old,
            &old,
            &running(&old, base),
            "https://ingest.example",
            digest,
        );
        assert_eq!(plan.restart, vec!["change", "gone", "keep"]);
        let tls = settings(&format!("{BASE}\n[tls]\nmin_version = \"1.3\"\n"));
        let plan = plan_reload(&old, &tls, &running(&old, base), base, digest);
        assert_eq!(plan.restart.len(), 3);
        // A secret rotated in place (same file, new content) restarts the sink.
        let rotated = |s: &SinkSettings| {
            Some(
                [if s.name == "keep" {
                    0
                } else {
                    s.name.len() as u8
                }; 32],
            )
        };
        let plan = plan_reload(&old, &old, &running(&old, base), base, rotated);
        assert_eq!(plan.restart, vec!["keep"]);
        // A sink configured but not running (it could not start) gets a new try.
        let mut some = running(&old, base);
        some.remove("keep");
        let plan = plan_reload(&old, &old, &some, base, digest);
        assert_eq!(plan.start, vec!["keep"]);
    }

    /// A sink's secret is read when it starts: a malformed one is named by its key and
    /// position, never quoted; a missing file is named.
    #[test]
    fn a_sinks_secret_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hook.whsec");
        let text = format!(
            "[node]\ndata_dir = \"{d}\"\n\n[sinks.hook]\nkind = \"webhook\"\nurl = \"https://hooks.example.test/in\"\nsecret_file = \"{f}\"\n",
            d = dir.path().display(),
            f = file.display()
        );
        let s = settings(&text);
        let sink = &s.sinks["hook"];
        std::fs::write(&file, "whsec_c2VjcmV0LWJ1dC10b28tc2hvcnQ=\n").unwrap();
        let err = match transport(&s, sink, "http://127.0.0.1:9898") {
            Ok(_) => panic!("a 20-byte key was taken"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.starts_with("sinks.hook.secret_file: secret 1 is a key of 20 bytes"),
            "{err}"
        );
        assert!(!err.contains("c2VjcmV0"), "{err}");
        let good = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        std::fs::write(&file, format!("{good}\n")).unwrap();
        let (_, digest) = transport(&s, sink, "http://127.0.0.1:9898").unwrap();
        assert!(digest.is_some());
        assert_eq!(digest, secret_digest(sink));
        std::fs::remove_file(&file).unwrap();
        let err = match transport(&s, sink, "http://127.0.0.1:9898") {
            Ok(_) => panic!("no secret, yet started"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn the_api_base_is_the_public_url_or_the_bound_address() {
        let s = settings(BASE);
        let bound: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        assert_eq!(api_base(&s, Some(bound)), "http://127.0.0.1:41234");
        assert_eq!(api_base(&s, None), "http://127.0.0.1:9898");
        let s = settings(&BASE.replace(
            "data_dir = \"/tmp/ms-sink-plan\"",
            "data_dir = \"/tmp/ms-sink-plan\"\nhttp_public_url = \"https://ingest.example.com/\"",
        ));
        assert_eq!(api_base(&s, Some(bound)), "https://ingest.example.com");
    }

    #[test]
    fn pruning_runs_about_when_events_come_due() {
        assert_eq!(prune_every(Duration::from_secs(86_400)), PRUNE_EVERY_MAX);
        assert_eq!(prune_every(Duration::from_secs(10)), Duration::from_secs(5));
        assert_eq!(prune_every(Duration::ZERO), PRUNE_EVERY_MIN);
    }
}
