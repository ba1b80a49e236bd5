//! Metric catalog, label enums and logging setup.
//!
//! Every metric the node exports is declared once in [`CATALOG`] (name, type, HELP); the
//! helpers below are the only places that record them, so names and labels cannot drift
//! between code, dashboards and tests. Label values come from enums or configured source
//! and provider names, never from message content or error text.

pub mod dashboards;
pub mod progress;
pub mod status;

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// The fixed list of error kinds (`errors_total{kind}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    Tls,
    Connect,
    Auth,
    Token,
    Protocol,
    Store,
    Throttled,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::Tls,
        ErrorKind::Connect,
        ErrorKind::Auth,
        ErrorKind::Token,
        ErrorKind::Protocol,
        ErrorKind::Store,
        ErrorKind::Throttled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Tls => "tls",
            ErrorKind::Connect => "connect",
            ErrorKind::Auth => "auth",
            ErrorKind::Token => "token",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Store => "store",
            ErrorKind::Throttled => "throttled",
        }
    }
}

/// A source's visible health (`source_state{state}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    Starting,
    Healthy,
    Degraded,
    Throttled,
    NeedsReauth,
    Disabled,
}

impl SourceState {
    pub const ALL: [SourceState; 6] = [
        SourceState::Starting,
        SourceState::Healthy,
        SourceState::Degraded,
        SourceState::Throttled,
        SourceState::NeedsReauth,
        SourceState::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Starting => "starting",
            SourceState::Healthy => "healthy",
            SourceState::Degraded => "degraded",
            SourceState::Throttled => "throttled",
            SourceState::NeedsReauth => "needs_reauth",
            SourceState::Disabled => "disabled",
        }
    }
}

/// Outcome label of `sessions_total` and `token_refreshes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// Full name, with the `mailsluice_` prefix.
    pub name: &'static str,
    pub kind: MetricType,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

macro_rules! m {
    ($name:literal, $kind:ident, [$($l:literal),*], $help:literal) => {
        MetricDef { name: concat!("mailsluice_", $name), kind: MetricType::$kind, labels: &[$($l),*], help: $help }
    };
}

pub const CATALOG: &[MetricDef] = &[
    m!(
        "messages_ingested_total",
        Counter,
        ["source"],
        "Messages stored (new, not re-seen), by source."
    ),
    m!(
        "bytes_ingested_total",
        Counter,
        ["source"],
        "Raw bytes of the messages stored, by source."
    ),
    m!(
        "parse_failures_total",
        Counter,
        ["source"],
        "Messages mail-parser could not parse; they are stored raw with a parse-error mark."
    ),
    m!(
        "sessions_total",
        Counter,
        ["source", "outcome"],
        "IMAP/POP3 sessions by source and outcome (ok, error)."
    ),
    m!(
        "session_duration_seconds",
        Histogram,
        ["source"],
        "Duration of one IMAP/POP3 collection session, connect to logout."
    ),
    m!(
        "store_write_duration_seconds",
        Histogram,
        [],
        "Time to commit one store transaction: a message, or the messages that arrived together (at most 8), with their checkpoints."
    ),
    m!(
        "token_refreshes_total",
        Counter,
        ["provider", "outcome"],
        "Access-token requests at a provider's token endpoint, by outcome."
    ),
    m!(
        "token_refresh_duration_seconds",
        Histogram,
        ["provider"],
        "Duration of token endpoint requests."
    ),
    m!(
        "access_token_expiry_timestamp_seconds",
        Gauge,
        ["source"],
        "Unix time at which the source's current access token expires."
    ),
    m!(
        "refresh_token_last_used_timestamp_seconds",
        Gauge,
        ["source"],
        "Unix time the source's refresh token was last used successfully (Microsoft revokes after 90 days unused)."
    ),
    m!(
        "client_secret_expiry_timestamp_seconds",
        Gauge,
        ["provider"],
        "Unix time at which the provider's client secret expires (from providers.*.client_secret_expires)."
    ),
    m!(
        "uidvalidity_changes_total",
        Counter,
        ["source"],
        "Folders found with a new UIDVALIDITY; stored messages were re-matched by content instead of ingested again."
    ),
    m!(
        "messages_skipped_total",
        Counter,
        ["source"],
        "Messages left on the server unfetched because they exceed max_message_bytes."
    ),
    m!(
        "tls_handshakes_total",
        Counter,
        ["source", "kind"],
        "TLS handshakes by source and kind: full, or resumed from a session ticket the server gave before."
    ),
    m!(
        "source_state",
        Gauge,
        ["source", "state"],
        "1 for the source's current state (starting, healthy, degraded, throttled, needs_reauth, disabled), 0 for the others."
    ),
    m!(
        "last_success_timestamp_seconds",
        Gauge,
        ["source"],
        "Unix time of the source's last successful collection session."
    ),
    m!(
        "errors_total",
        Counter,
        ["source", "kind"],
        "Errors by source and kind (tls, connect, auth, token, protocol, store, throttled)."
    ),
    m!(
        "backlog_messages",
        Gauge,
        ["source"],
        "Messages seen on the server but not yet stored, as of the last session."
    ),
    m!(
        "sink_deliveries_total",
        Counter,
        ["sink", "outcome"],
        "Events handled by a sink, by outcome: delivered (the receiver has it), retried (an attempt failed and is tried again), failed (given up after max_age_secs; `mailsluice sinks retry` sends it again), skipped (not wanted by the sink)."
    ),
    m!(
        "sink_backlog_events",
        Gauge,
        ["sink"],
        "Events in the outbox the sink has not yet delivered, failed or skipped."
    ),
    m!(
        "sink_oldest_pending_age_seconds",
        Gauge,
        ["sink"],
        "Age of the oldest event the sink has not yet delivered (since its commit); 0 when none waits."
    ),
    m!(
        "sink_delivery_duration_seconds",
        Histogram,
        ["sink"],
        "Duration of one delivery attempt: webhook request to answer, or NATS publish to acknowledgement."
    ),
    m!(
        "api_requests_total",
        Counter,
        ["route", "code"],
        "HTTP requests by route (the path pattern, or \"unmatched\") and status code; 401, 403 and 429 are refused callers."
    ),
    m!(
        "build_info",
        Gauge,
        ["version"],
        "Always 1; the version label names the running build."
    ),
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
/// Held while the recorder is installed: two first callers at once (tests starting nodes on
/// several threads) would otherwise both try, and the second fail.
static INSTALLING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Why [`install`] could not set up the Prometheus recorder. Start-up only, so there is no
/// `kind()`: nothing can be counted without a recorder.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The exporter refused the buckets given to a histogram of the catalog.
    #[error("histogram buckets of {metric}: {reason}")]
    Buckets {
        metric: &'static str,
        reason: BuildError,
    },
    /// The recorder could not become the process's global one (another is installed).
    #[error("{reason}")]
    Recorder { reason: BuildError },
}

/// Installs the Prometheus recorder (once per process) and describes every metric.
pub fn install() -> Result<PrometheusHandle, InstallError> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let _installing = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let duration_buckets = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 300.0,
    ];
    let mut builder = PrometheusBuilder::new();
    for def in CATALOG.iter().filter(|d| d.kind == MetricType::Histogram) {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(def.name.to_string()), &duration_buckets)
            .map_err(|reason| InstallError::Buckets {
                metric: def.name,
                reason,
            })?;
    }
    let handle = builder
        .install_recorder()
        .map_err(|reason| InstallError::Recorder { reason })?;
    for def in CATALOG {
        match def.kind {
            MetricType::Counter => metrics::describe_counter!(def.name, def.help),
            MetricType::Gauge => metrics::describe_gauge!(def.name, def.help),
            MetricType::Histogram => metrics::describe_histogram!(def.name, def.help),
        }
    }
    gauge!("mailsluice_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    let _ = HANDLE.set(handle.clone());
    Ok(handle)
}

/// Registers a source's series at zero so dashboards and alerts see it before it has
/// done anything.
pub fn register_source(source: &str) {
    let s = source.to_string();
    counter!("mailsluice_messages_ingested_total", "source" => s.clone()).absolute(0);
    counter!("mailsluice_bytes_ingested_total", "source" => s.clone()).absolute(0);
    counter!("mailsluice_parse_failures_total", "source" => s.clone()).absolute(0);
    counter!("mailsluice_uidvalidity_changes_total", "source" => s.clone()).absolute(0);
    counter!("mailsluice_messages_skipped_total", "source" => s.clone()).absolute(0);
    for kind in ["full", "resumed"] {
        counter!("mailsluice_tls_handshakes_total", "source" => s.clone(), "kind" => kind)
            .absolute(0);
    }
    for kind in ErrorKind::ALL {
        counter!("mailsluice_errors_total", "source" => s.clone(), "kind" => kind.as_str())
            .absolute(0);
    }
    gauge!("mailsluice_backlog_messages", "source" => s.clone()).set(0.0);
    for outcome in [Outcome::Ok, Outcome::Error] {
        counter!("mailsluice_sessions_total", "source" => s.clone(), "outcome" => outcome.as_str())
            .absolute(0);
    }
}

/// What became of an event a sink handled (`sink_deliveries_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkOutcome {
    Delivered,
    Retried,
    Failed,
    Skipped,
}

impl SinkOutcome {
    pub const ALL: [SinkOutcome; 4] = [
        SinkOutcome::Delivered,
        SinkOutcome::Retried,
        SinkOutcome::Failed,
        SinkOutcome::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SinkOutcome::Delivered => "delivered",
            SinkOutcome::Retried => "retried",
            SinkOutcome::Failed => "failed",
            SinkOutcome::Skipped => "skipped",
        }
    }
}

/// Registers a sink's series at zero, so dashboards and alerts see it before it has
/// handled anything.
pub fn register_sink(sink: &str) {
    for outcome in SinkOutcome::ALL {
        counter!("mailsluice_sink_deliveries_total", "sink" => sink.to_string(), "outcome" => outcome.as_str())
            .absolute(0);
    }
    sink_backlog(sink, 0, 0.0);
}

/// `count` events of `sink` came to `outcome`.
pub fn sink_events(sink: &str, outcome: SinkOutcome, count: u64) {
    counter!("mailsluice_sink_deliveries_total", "sink" => sink.to_string(), "outcome" => outcome.as_str())
        .increment(count);
}

/// One delivery attempt of `sink` took `seconds`, whatever its outcome.
pub fn sink_attempt(sink: &str, seconds: f64) {
    histogram!("mailsluice_sink_delivery_duration_seconds", "sink" => sink.to_string())
        .record(seconds);
}

/// What `sink` has yet to deliver: how many events, and how old the oldest is.
pub fn sink_backlog(sink: &str, events: u64, oldest_age_secs: f64) {
    gauge!("mailsluice_sink_backlog_events", "sink" => sink.to_string()).set(events as f64);
    gauge!("mailsluice_sink_oldest_pending_age_seconds", "sink" => sink.to_string())
        .set(oldest_age_secs);
}

/// Registers a provider's refresh counters at zero.
pub fn register_provider(provider: &str) {
    for outcome in [Outcome::Ok, Outcome::Error] {
        counter!("mailsluice_token_refreshes_total", "provider" => provider.to_string(), "outcome" => outcome.as_str())
            .absolute(0);
    }
}

pub fn message_stored(source: &str, bytes: u64, parse_failed: bool) {
    status::stored(source, bytes);
    counter!("mailsluice_messages_ingested_total", "source" => source.to_string()).increment(1);
    counter!("mailsluice_bytes_ingested_total", "source" => source.to_string()).increment(bytes);
    if parse_failed {
        counter!("mailsluice_parse_failures_total", "source" => source.to_string()).increment(1);
    }
}

pub fn uidvalidity_change(source: &str) {
    counter!("mailsluice_uidvalidity_changes_total", "source" => source.to_string()).increment(1);
}

/// A TLS handshake of a session of `source`: resumed or full.
pub fn tls_handshake(source: &str, resumed: bool) {
    let kind = if resumed { "resumed" } else { "full" };
    counter!("mailsluice_tls_handshakes_total", "source" => source.to_string(), "kind" => kind)
        .increment(1);
}

pub fn message_skipped(source: &str) {
    status::handled(source);
    counter!("mailsluice_messages_skipped_total", "source" => source.to_string()).increment(1);
}

pub fn session(source: &str, outcome: Outcome, seconds: f64) {
    counter!("mailsluice_sessions_total", "source" => source.to_string(), "outcome" => outcome.as_str())
        .increment(1);
    histogram!("mailsluice_session_duration_seconds", "source" => source.to_string())
        .record(seconds);
}

pub fn store_write(seconds: f64) {
    histogram!("mailsluice_store_write_duration_seconds").record(seconds);
}

pub fn token_refresh(provider: &str, outcome: Outcome, seconds: f64) {
    counter!("mailsluice_token_refreshes_total", "provider" => provider.to_string(), "outcome" => outcome.as_str())
        .increment(1);
    histogram!("mailsluice_token_refresh_duration_seconds", "provider" => provider.to_string())
        .record(seconds);
}

pub fn access_token_expiry(source: &str, unix: i64) {
    gauge!("mailsluice_access_token_expiry_timestamp_seconds", "source" => source.to_string())
        .set(unix as f64);
}

pub fn client_secret_expiry(provider: &str, unix: i64) {
    gauge!("mailsluice_client_secret_expiry_timestamp_seconds", "provider" => provider.to_string())
        .set(unix as f64);
}

pub fn refresh_token_last_used(source: &str, unix: i64) {
    gauge!("mailsluice_refresh_token_last_used_timestamp_seconds", "source" => source.to_string())
        .set(unix as f64);
}

pub fn state(source: &str, current: SourceState) {
    for s in SourceState::ALL {
        gauge!("mailsluice_source_state", "source" => source.to_string(), "state" => s.as_str())
            .set(if s == current { 1.0 } else { 0.0 });
    }
}

/// A source removed from the configuration: no state is current any more (the exporter
/// keeps the series; every state reads 0).
pub fn forget_source_state(source: &str) {
    for s in SourceState::ALL {
        gauge!("mailsluice_source_state", "source" => source.to_string(), "state" => s.as_str())
            .set(0.0);
    }
}

pub fn last_success(source: &str, unix: i64) {
    gauge!("mailsluice_last_success_timestamp_seconds", "source" => source.to_string())
        .set(unix as f64);
}

pub fn error(source: &str, kind: ErrorKind) {
    counter!("mailsluice_errors_total", "source" => source.to_string(), "kind" => kind.as_str())
        .increment(1);
}

/// A session listed `messages` more as new on the server (`backlog_messages` is published
/// from [`status`] before each scrape).
pub fn listed(source: &str, messages: u64) {
    status::listed(source, messages);
}

/// A listed message was found stored already (a crash before its checkpoint, or re-matched
/// after a UIDVALIDITY change).
pub fn message_already_stored(source: &str) {
    status::handled(source);
}

/// The variable that sets the log filter (`RUST_LOG` syntax, e.g. `info,mailsluice=debug`);
/// `RUST_LOG` is read when it is unset.
pub const LOG_ENV: &str = "MAILSLUICE_LOG";

/// The log filter when none is set: INFO and up, without a parser library's chatter.
pub const DEFAULT_LOG_FILTER: &str = "info,imap_codec=error";

/// Targets kept quieter than the filter asks, unless the filter names them:
/// - `actix_server`: the HTTP server's own lifecycle lines (`starting 1 workers`, `Actix
///   runtime found`, `shutting down idle worker`) say nothing an operator can act on, and in
///   `run --once` they crowd out the lines that do; warnings and errors still come through.
/// - `imap_codec::response`: imap-codec 1.0 logs `Rectified missing `text` to "..."` at WARN
///   for every response that carries a code (`[CAPABILITY ...]`, `[UIDVALIDITY n]`, ...),
///   whether its text was missing or not (the message is built eagerly in its `resp_text`).
///   A session against a healthy Dovecot logged seven. The quirk it names, a code without
///   text, is one we accept on purpose.
const QUIET_TARGETS: [(&str, &str); 2] =
    [("actix_server", "warn"), ("imap_codec::response", "error")];

/// The filter directives: `given` (from [`LOG_ENV`] or `RUST_LOG`), else
/// [`DEFAULT_LOG_FILTER`], with each of [`QUIET_TARGETS`] that `given` does not name.
fn log_filter_spec(given: Option<&str>) -> String {
    let mut spec = given.unwrap_or(DEFAULT_LOG_FILTER).to_string();
    for (target, level) in QUIET_TARGETS {
        if !spec.contains(target) {
            spec.push_str(&format!(",{target}={level}"));
        }
    }
    spec
}

/// The log filter for a `RUST_LOG`-syntax `spec` (invalid or absent: [`DEFAULT_LOG_FILTER`]),
/// with [`QUIET_TARGETS`] kept quiet.
pub fn log_filter(spec: Option<&str>) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    spec.and_then(|f| EnvFilter::try_new(log_filter_spec(Some(f))).ok())
        .unwrap_or_else(|| EnvFilter::new(log_filter_spec(None)))
}

/// Sets up `tracing` output: text or JSON lines on stderr. Level from `MAILSLUICE_LOG`
/// (else `RUST_LOG`, else [`DEFAULT_LOG_FILTER`]).
pub fn init_logging(json: bool) {
    init_logging_to(
        json,
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    );
}

/// Like [`init_logging`], writing through `writer` (e.g. one that keeps progress bars
/// intact).
pub fn init_logging_to(json: bool, writer: tracing_subscriber::fmt::writer::BoxMakeWriter) {
    let spec = std::env::var(LOG_ENV)
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok());
    let filter = log_filter(spec.as_deref());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, never into a journal or file.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(writer);
    let _ = if json {
        // Spans (source, session) ride along on every line.
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts the events that pass the filter.
    struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Count {
        fn on_event(
            &self,
            _event: &tracing::Event<'_>,
            _ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn passed(spec: Option<&str>, emit: impl FnOnce()) -> usize {
        use tracing_subscriber::layer::SubscriberExt;
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(log_filter(spec))
            .with(Count(count.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        count.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn parser_quirk_notices_stay_quiet_whatever_the_filter() {
        for spec in [None, Some("info"), Some("debug"), Some("trace")] {
            let n = passed(spec, || {
                tracing::warn!(target: "imap_codec::response", "Rectified missing `text` to \"...\"");
                tracing::error!(target: "imap_codec::response", "a real parser error");
                tracing::warn!(target: "mailsluice::net", "kept");
            });
            assert_eq!(n, 2, "filter {spec:?}");
        }
        // Asked for by name, it is shown.
        let n = passed(Some("info,imap_codec::response=warn"), || {
            tracing::warn!(target: "imap_codec::response", "Rectified missing `text` to \"...\"");
        });
        assert_eq!(n, 1);
    }

    #[test]
    fn http_server_lifecycle_lines_stay_out_unless_asked_for() {
        assert_eq!(
            log_filter_spec(None),
            "info,imap_codec=error,actix_server=warn,imap_codec::response=error"
        );
        assert_eq!(
            log_filter_spec(Some("info,mailsluice=debug")),
            "info,mailsluice=debug,actix_server=warn,imap_codec::response=error"
        );
        assert_eq!(
            log_filter_spec(Some("debug,actix_server=info")),
            "debug,actix_server=info,imap_codec::response=error"
        );
        let n = passed(Some("debug"), || {
            tracing::info!(target: "actix_server::worker", "starting 1 workers");
            tracing::warn!(target: "actix_server::worker", "kept");
        });
        assert_eq!(n, 1);
        for f in [log_filter_spec(None), log_filter_spec(Some("trace"))] {
            assert!(tracing_subscriber::EnvFilter::try_new(&f).is_ok(), "{f}");
        }
    }

    #[test]
    fn catalog_names_are_unique_and_prefixed() {
        let mut names: Vec<_> = CATALOG.iter().map(|d| d.name).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len());
        assert!(
            CATALOG
                .iter()
                .all(|d| d.name.starts_with("mailsluice_") && !d.help.is_empty())
        );
    }
}
