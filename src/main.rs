//! `mailsluice`: command line, wiring and signals. The only place `anyhow` is used.

mod memory;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use actix::Actor;
use actix_web::{App, HttpServer, web};
use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand, ValueEnum};

use mailsluice::actors::Live;
use mailsluice::actors::supervisor::{
    ReloadReport, Shutdown, Supervisor, WaitOnce, reload_from_file,
};
use mailsluice::api::{self, ApiState, SourceView, TokenView};
use mailsluice::auth::TokenService;
use mailsluice::config::{self, LogFormat, Settings};
use mailsluice::net::Connector;
use mailsluice::secret::Secret;
use mailsluice::store::{MessageMeta, Store, StoreError};
use mailsluice::telemetry;

#[derive(Parser, Debug)]
#[command(
    name = "mailsluice",
    version,
    about = "Mail ingestion node: IMAP and POP3 sources with OAuth2 or passwords, exactly once into an embedded store",
    after_help = "Getting started:\n  1. describe sources in config/mailsluice.toml       mailsluice check-config\n  2. consent once per OAuth2 source                   mailsluice authorize SOURCE [--device]\n  3. prove a source end to end                        mailsluice test-login SOURCE\n  4. run                                              mailsluice run   (or run --once)\n  5. watch                                            mailsluice status; GET /metrics\n\nEvery command works beside a running node (it talks to the node's API when the store is\nin use). Exit codes: 0 success, 1 operational failure, 2 usage or configuration error.\nLog level: MAILSLUICE_LOG (e.g. info,mailsluice=debug)."
)]
struct Cli {
    /// Config file (default: $MAILSLUICE_CONFIG, else config/mailsluice.toml).
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node: collect every enabled source until SIGINT/SIGTERM.
    ///
    /// SIGHUP (or `mailsluice reload`, or POST /api/reload) re-reads the config file:
    /// added sources start, removed ones stop after the message in hand, changed ones
    /// restart, unchanged ones keep running; an invalid file is refused with every error
    /// listed and the running configuration stays. Metrics and the API are served on
    /// node.http_listen.
    #[command(
        after_help = "Examples:\n  mailsluice run -c /etc/mailsluice/mailsluice.toml\n  mailsluice run --once          # collect every source once, then exit (cron, first backfill)"
    )]
    Run {
        /// Collect every enabled source once (no IDLE) and exit: 0 when every source
        /// succeeded, 1 otherwise. Shows a progress bar per source on a terminal.
        #[arg(long)]
        once: bool,
    },
    /// Validate the configuration and print every error with its key path.
    #[command(after_help = "Checks keys, values and that every *_env / *_file secret resolves.")]
    CheckConfig,
    /// Initial OAuth2 consent for a source: browser (PKCE, loopback redirect) or --device.
    ///
    /// The account that signs in must be the source's username (or, with shared_mailbox,
    /// the delegate); anyone else is refused. The refresh token is stored encrypted, or
    /// handed to the running node, which resumes the source at once.
    #[command(
        after_help = "Examples:\n  mailsluice authorize support                  # opens a browser on this machine\n  mailsluice authorize support --no-browser     # prints the link; forward the loopback port\n  mailsluice authorize support --device         # headless: enter a code on any device"
    )]
    Authorize {
        /// The source, as in [sources.NAME].
        source: String,
        /// Device authorization grant: show a code and a URL to open on any other device.
        #[arg(long)]
        device: bool,
        /// Only print the authorization URL; do not try to open a browser.
        #[arg(long)]
        no_browser: bool,
        /// Give up after this many seconds without an answer (default: 300 for the
        /// browser; for --device, as long as the provider's code is valid, e.g. 15 minutes
        /// at Microsoft).
        #[arg(long)]
        timeout_secs: Option<u64>,
    },
    /// OAuth2 tokens: import a refresh token, show token status.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Step-by-step check of one source (DNS, TCP, TLS, capabilities, token, SASL,
    /// mailbox, one header). Exit 0 only when a mailbox was opened.
    #[command(
        after_help = "A failed step says why and what to do (e.g. a token for the wrong audience, or the wrong user)."
    )]
    TestLogin {
        /// The source, as in [sources.NAME].
        source: String,
    },
    /// Per source: state, last success, last error, counts, backlog.
    Status,
    /// Ask the running node to re-read its config file (same as SIGHUP); prints what
    /// changed, or every error when the new file is refused.
    Reload,
    /// Read the store: list, show and export messages.
    Messages {
        #[command(subcommand)]
        command: MessagesCommand,
    },
    /// At-rest encryption of tokens.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  mailsluice completions bash > /etc/bash_completion.d/mailsluice\n  mailsluice completions zsh > \"${fpath[1]}/_mailsluice\"\n  mailsluice completions fish > ~/.config/fish/completions/mailsluice.fish"
    )]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum TokensCommand {
    /// Adopt a refresh token obtained elsewhere (migration); proves it by one refresh.
    Import {
        /// The source, as in [sources.NAME].
        source: String,
        /// File holding the refresh token (trailing newline ignored).
        #[arg(long)]
        refresh_token_file: PathBuf,
    },
    /// Per source: access-token expiry, refresh-token age and last use, state.
    Status,
}

#[derive(Subcommand, Debug)]
enum SecretsCommand {
    /// Re-encrypt every stored token under a new node.secret_key_file (node stopped).
    RotateKey,
}

#[derive(Subcommand, Debug)]
enum MessagesCommand {
    /// List stored messages (id, source, location, size, subject).
    List {
        /// Only this source's messages.
        #[arg(long)]
        source: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one message's stored fields as JSON (add --raw for the exact bytes).
    Show {
        /// The message id (first column of `messages list`).
        id: u64,
        /// Print the raw bytes exactly as received instead.
        #[arg(long)]
        raw: bool,
    },
    /// Export messages: eml (a directory of exact bytes), mbox (mboxrd) or jsonl (parsed fields).
    #[command(
        after_help = "Examples:\n  mailsluice messages export --out exported/             # one .eml per message, byte-exact\n  mailsluice messages export --format mbox --out all.mbox\n  mailsluice messages export --format jsonl --source support --out support.jsonl"
    )]
    Export {
        /// eml, mbox or jsonl.
        #[arg(long, value_enum, default_value_t = ExportFormat::Eml)]
        format: ExportFormat,
        /// A directory (eml) or a file (mbox, jsonl).
        #[arg(long)]
        out: PathBuf,
        /// Only this source's messages.
        #[arg(long)]
        source: Option<String>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ExportFormat {
    Eml,
    Mbox,
    Jsonl,
}

/// Usage or config error: exit 2. Everything else that fails: exit 1.
struct UsageError(String);

fn main() -> ExitCode {
    memory::limit_arenas();
    mailsluice::parse::quiet_mail_parser_panics();
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "mailsluice",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let path = config::resolve_path(cli.config.as_deref());
    let settings = match config::load(&path) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!(
                "{}: configuration has {} error(s):",
                path.display(),
                errors.len()
            );
            for e in errors.iter() {
                eprintln!("  {e}");
            }
            if matches!(cli.command, Command::Reload) {
                eprintln!("the running node was not asked to reload: it keeps running the old one");
            }
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::CheckConfig => check_config(&path, &settings),
        Command::Run { once } => run(settings, &path, once),
        Command::Reload => reload(&settings),
        Command::Completions { .. } => Ok(()),
        Command::Status => status(&settings),
        Command::TestLogin { source } => test_login(&settings, &source),
        Command::Authorize {
            source,
            device,
            no_browser,
            timeout_secs,
        } => authorize(&settings, &source, device, !no_browser, timeout_secs),
        Command::Tokens { command } => match command {
            TokensCommand::Import {
                source,
                refresh_token_file,
            } => tokens_import(&settings, &source, &refresh_token_file),
            TokensCommand::Status => tokens_status(&settings),
        },
        Command::Messages { command } => messages(&settings, command),
        Command::Secrets {
            command: SecretsCommand::RotateKey,
        } => match open_store(&settings) {
            Ok(Some(store)) => store
                .rotate_key()
                .map(|n| {
                    println!(
                        "re-encrypted {n} token record(s) under a new key in {}",
                        settings.node.secret_key_file.display()
                    )
                })
                .map_err(Into::into),
            Ok(None) => Err(UsageError(
                "the store is in use by a running node: stop it, then rotate the key".into(),
            )
            .into()),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<UsageErrorBox>() {
            Some(u) => {
                eprintln!("error: {}", u.0);
                ExitCode::from(2)
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

#[derive(Debug)]
struct UsageErrorBox(String);
impl std::fmt::Display for UsageErrorBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for UsageErrorBox {}
impl From<UsageError> for anyhow::Error {
    fn from(u: UsageError) -> Self {
        anyhow::Error::new(UsageErrorBox(u.0))
    }
}

fn check_config(path: &Path, settings: &Settings) -> anyhow::Result<()> {
    let missing = config::check_secrets(settings);
    if !missing.is_empty() {
        let mut msg = format!(
            "{}: {} secret reference(s) do not resolve:",
            path.display(),
            missing.len()
        );
        for e in &missing {
            msg.push_str(&format!("\n  {e}"));
        }
        return Err(UsageError(msg).into());
    }
    println!(
        "{}: ok ({} provider(s), {} source(s), {} enabled)",
        path.display(),
        settings.providers.len(),
        settings.sources.len(),
        settings.sources.values().filter(|s| s.enabled).count()
    );
    Ok(())
}

/// Opens the store, or reports that a running node holds it.
fn open_store(settings: &Settings) -> Result<Option<Store>, anyhow::Error> {
    match Store::open(&settings.node.data_dir, &settings.node.secret_key_file) {
        Ok(s) => Ok(Some(s)),
        Err(StoreError::Locked(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// A client for the running node's HTTP API (used when it holds the store).
struct NodeApi {
    base: String,
    http: reqwest::Client,
}

impl NodeApi {
    fn new(settings: &Settings) -> NodeApi {
        NodeApi {
            base: format!("http://{}", settings.node.http_listen),
            http: reqwest::Client::new(),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{}", self.base, path);
        let resp = self.http.get(&url).send().await.with_context(|| {
            format!("store is locked by a running node, but its API at {url} does not answer")
        })?;
        if !resp.status().is_success() {
            return Err(anyhow!(
                "{url}: HTTP {}: {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            ));
        }
        Ok(resp.json().await?)
    }

    async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}{}", self.base, path);
        let resp = self.http.get(&url).send().await?;
        if !resp.status().is_success() {
            return Err(anyhow!("{url}: HTTP {}", resp.status()));
        }
        Ok(resp.bytes().await?.to_vec())
    }
}

fn run(settings: Settings, path: &Path, once: bool) -> anyhow::Result<()> {
    let missing = config::check_secrets(&settings);
    if !missing.is_empty() {
        let mut msg = format!("{} secret reference(s) do not resolve:", missing.len());
        for e in &missing {
            msg.push_str(&format!("\n  {e}"));
        }
        return Err(UsageError(msg).into());
    }
    let bars = (once && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .then(indicatif::MultiProgress::new);
    match &bars {
        Some(multi) => {
            // Log lines are printed above the bars, never through them.
            let multi = multi.clone();
            telemetry::init_logging_to(
                settings.node.log_format == LogFormat::Json,
                tracing_subscriber::fmt::writer::BoxMakeWriter::new(move || {
                    BarWriter(multi.clone())
                }),
            );
        }
        None => telemetry::init_logging(settings.node.log_format == LogFormat::Json),
    }
    raise_open_files_limit();
    memory::spawn_trimmer();
    let store = Arc::new(Store::open(
        &settings.node.data_dir,
        &settings.node.secret_key_file,
    )?);
    store.set_min_free_bytes(settings.node.min_free_disk_bytes);
    store.set_compression(settings.node.store_compression);
    let metrics = telemetry::install().map_err(|e| anyhow!("metrics: {e}"))?;
    let connector = Connector::new(
        &settings.tls,
        settings.node.connect_timeout,
        settings.node.read_timeout,
    )
    .map_err(UsageError)?;
    let settings = Arc::new(settings);
    let token_service =
        Arc::new(TokenService::new(settings.clone(), store.clone()).map_err(UsageError)?);
    let listener = std::net::TcpListener::bind(settings.node.http_listen)
        .with_context(|| format!("node.http_listen {}", settings.node.http_listen))?;
    let addr = listener.local_addr()?;
    let live = Live::new(settings.clone(), connector, Some(path.to_path_buf()));
    let system = actix_rt::System::new();
    let store_for_end = store.clone();
    let failed = system.block_on(async move {
        let mut supervisor = Supervisor::new(live.clone(), store.clone(), token_service);
        if once {
            supervisor = supervisor.once();
        }
        let supervisor = supervisor.start();
        let state = ApiState {
            live: live.clone(),
            store: store.clone(),
            metrics,
            supervisor: supervisor.clone(),
        };
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(state.clone()))
                .configure(api::routes)
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        let mut failed = Vec::new();
        if once {
            tracing::info!(http = %addr, sources = settings.sources.values().filter(|s| s.enabled).count(), "collecting every source once");
            let progress = actix_rt::spawn(show_progress(bars.clone(), settings.clone()));
            let results = tokio::select! {
                r = supervisor.send(WaitOnce) => r.unwrap_or_default(),
                _ = wait_for_signal(None) => {
                    tracing::warn!("interrupted");
                    Default::default()
                }
            };
            progress.abort();
            if let Some(bars) = &bars {
                let _ = bars.clear();
            }
            for (source, result) in &results {
                match result {
                    Ok(()) => {}
                    Err(e) => failed.push(format!("{source}: {e}")),
                }
            }
            let p = telemetry::progress::snapshot();
            for (source, result) in &results {
                let done = p.get(source).copied().unwrap_or_default();
                match result {
                    Ok(()) => tracing::info!(source = %source, stored = done.total_stored, bytes = done.total_bytes, "source collected"),
                    Err(e) => tracing::warn!(source = %source, error = %e, "source not collected"),
                }
            }
        } else {
            tracing::info!(http = %addr, sources = settings.sources.len(), "node running; metrics at http://{addr}/metrics");
            wait_for_signal(Some((&supervisor, &live))).await;
            tracing::info!("shutting down: finishing the message in hand");
        }
        let _ = supervisor.send(Shutdown).await;
        handle.stop(true).await;
        Ok::<Vec<String>, anyhow::Error>(failed)
    })?;
    store_for_end.flush_sync()?;
    tracing::info!("stopped");
    if !failed.is_empty() {
        return Err(anyhow!(
            "{} source(s) not collected:\n  {}",
            failed.len(),
            failed.join("\n  ")
        ));
    }
    Ok(())
}

/// Raises the soft limit on open files to the hard limit. Every IMAP source holds a
/// connection while it idles, so a node with a thousand sources needs more descriptors than
/// the 1,024 soft limit service managers commonly start processes with (systemd: soft 1,024,
/// hard 524,288); the hard limit is what the operator granted. Without the raise, sessions
/// past the limit fail to connect and retry forever.
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // Linux never grants an unlimited number of descriptors; an unset value leaves nothing
    // to do.
    let (Some(soft), Some(hard)) = (limit.current, limit.maximum) else {
        return;
    };
    if hard <= soft {
        return;
    }
    let raised = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            from = soft,
            to = hard,
            "open-files limit raised to the hard limit"
        ),
        Err(e) => tracing::warn!(
            soft,
            hard,
            error = %e,
            "cannot raise the open-files limit: every source holds a connection, so a node with more sources than the limit allows fails to connect some of them"
        ),
    }
}

/// Writes log lines above `run --once`'s progress bars.
struct BarWriter(indicatif::MultiProgress);

impl std::io::Write for BarWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let _ = self.0.println(text.trim_end_matches('\n'));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `run --once`: a bar per source on a terminal; without one, a progress line per source
/// every 10 seconds while it has a backlog.
async fn show_progress(bars: Option<indicatif::MultiProgress>, settings: Arc<Settings>) {
    let sources: Vec<String> = settings
        .sources
        .values()
        .filter(|s| s.enabled)
        .map(|s| s.name.clone())
        .collect();
    let width = sources.iter().map(|s| s.len()).max().unwrap_or(6);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "{{prefix:<{width}}} [{{bar:30}}] {{pos}}/{{len}} {{msg}}"
    ))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    let shown: Vec<indicatif::ProgressBar> = match &bars {
        Some(multi) => sources
            .iter()
            .map(|s| {
                let bar = multi.add(indicatif::ProgressBar::new(0));
                bar.set_style(style.clone());
                bar.set_prefix(s.clone());
                bar
            })
            .collect(),
        None => Vec::new(),
    };
    let tick = if bars.is_some() { 200 } else { 10_000 };
    let mut interval = tokio::time::interval(std::time::Duration::from_millis(tick));
    loop {
        interval.tick().await;
        let now = telemetry::progress::snapshot();
        for (i, source) in sources.iter().enumerate() {
            let p = now.get(source).copied().unwrap_or_default();
            match shown.get(i) {
                Some(bar) => {
                    bar.set_length(p.backlog.max(p.stored));
                    bar.set_position(p.stored);
                    bar.set_message(format!("{:.1} MB", p.bytes as f64 / 1e6));
                }
                None if p.backlog > p.stored => {
                    tracing::info!(source = %source, stored = p.stored, of = p.backlog, bytes = p.bytes, "progress");
                }
                None => {}
            }
        }
    }
}

/// `mailsluice reload`: asks the running node to re-read its config file.
fn reload(settings: &Settings) -> anyhow::Result<()> {
    let url = format!("http://{}/api/reload", settings.node.http_listen);
    let (status, body) = runtime()?.block_on(async {
        let r = reqwest::Client::new()
            .post(&url)
            .send()
            .await
            .with_context(|| format!("no running node answers at {url}"))?;
        let status = r.status();
        Ok::<_, anyhow::Error>((status, r.text().await.unwrap_or_default()))
    })?;
    if status.is_success() {
        let report: ReloadReport = serde_json::from_str(&body)
            .with_context(|| format!("{url}: unexpected answer: {body}"))?;
        for (key, names) in [
            ("added", &report.added),
            ("removed", &report.removed),
            ("restarted", &report.restarted),
            ("unchanged", &report.unchanged),
            ("needs_restart", &report.needs_restart),
        ] {
            let shown = if names.is_empty() {
                "-".to_string()
            } else {
                names.join(", ")
            };
            println!("{key:<13} {shown}");
        }
        return Ok(());
    }
    #[derive(serde::Deserialize)]
    struct Refused {
        errors: Vec<String>,
    }
    let errors = serde_json::from_str::<Refused>(&body)
        .map(|r| r.errors)
        .unwrap_or_else(|_| vec![format!("HTTP {status}: {body}")]);
    Err(UsageError(format!(
        "the node refused the new configuration and keeps running the old one; {} error(s):\n  {}",
        errors.len(),
        errors.join("\n  ")
    ))
    .into())
}

/// Waits for SIGTERM or SIGINT. With a supervisor, SIGHUP reloads the configuration
/// meanwhile.
async fn wait_for_signal(reload: Option<(&actix::Addr<Supervisor>, &Live)>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => {
                    let Some((supervisor, live)) = reload else { continue };
                    tracing::info!("SIGHUP: re-reading the configuration");
                    if let Err(errors) = reload_from_file(supervisor, live).await {
                        tracing::error!(errors = errors.len(), "new configuration refused; the running one stays:\n  {}", errors.join("\n  "));
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn status(settings: &Settings) -> anyhow::Result<()> {
    let views: Vec<SourceView> = match open_store(settings)? {
        Some(store) => api::source_views(settings, &store).map_err(|e| anyhow!(e))?,
        None => runtime()?.block_on(NodeApi::new(settings).get_json("/api/sources"))?,
    };
    println!(
        "{:<20} {:<6} {:<13} {:>8} {:>8}  {:<26} LAST ERROR",
        "SOURCE", "PROTO", "STATE", "STORED", "BACKLOG", "LAST SUCCESS"
    );
    let mut warnings = Vec::new();
    for v in views {
        println!(
            "{:<20} {:<6} {:<13} {:>8} {:>8}  {:<26} {}",
            v.name,
            v.protocol,
            v.state,
            v.stored_total,
            v.backlog,
            v.last_success.unwrap_or_else(|| "-".into()),
            v.last_error.unwrap_or_default()
        );
        warnings.extend(v.warnings.iter().map(|w| format!("{}: {w}", v.name)));
    }
    for w in warnings {
        println!("WARNING {w}");
    }
    Ok(())
}

fn tokens_status(settings: &Settings) -> anyhow::Result<()> {
    let views: Vec<TokenView> = match open_store(settings)? {
        Some(store) => api::token_views(settings, &store).map_err(|e| anyhow!(e))?,
        None => runtime()?.block_on(NodeApi::new(settings).get_json("/api/tokens"))?,
    };
    if views.is_empty() {
        println!("no OAuth2 sources configured");
    }
    for v in views {
        println!("{} (provider {})", v.source, v.provider);
        println!(
            "  refresh token:        {}",
            if v.has_refresh_token {
                "stored (encrypted)"
            } else {
                "none"
            }
        );
        println!(
            "  obtained:             {}",
            v.refresh_token_obtained.unwrap_or_else(|| "-".into())
        );
        println!(
            "  consented by:         {}",
            v.identity.unwrap_or_else(|| "unknown (imported)".into())
        );
        println!(
            "  refresh token used:   {}",
            v.refresh_token_last_used.unwrap_or_else(|| "never".into())
        );
        println!(
            "  access token expires: {}",
            v.access_token_expires_at.unwrap_or_else(|| "-".into())
        );
        if let Some(state) = v.state {
            println!("  state:                {state}");
        }
        for w in &v.warnings {
            println!("  WARNING: {w}");
        }
        if let Some(r) = v.needs_reauth {
            println!("  NEEDS RE-AUTHORIZATION: {r}");
        }
    }
    Ok(())
}

fn tokens_import(settings: &Settings, source: &str, file: &Path) -> anyhow::Result<()> {
    let Some(src) = settings.sources.get(source) else {
        return Err(UsageError(format!("no source named {source:?} in the configuration")).into());
    };
    if !matches!(src.auth, config::SourceAuth::OAuth2 { .. }) {
        return Err(UsageError(format!("sources.{source}.auth is not oauth2")).into());
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--refresh-token-file {}", file.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(UsageError(format!("--refresh-token-file {} is empty", file.display())).into());
    }
    let rt = runtime()?;
    match open_store(settings)? {
        Some(store) => {
            let settings = Arc::new(settings.clone());
            let service = TokenService::new(settings, Arc::new(store)).map_err(UsageError)?;
            let tok = rt.block_on(service.import(source, Secret::new(token), None))?;
            let exp = chrono::DateTime::from_timestamp(tok.expires_at, 0)
                .map(|d| d.to_rfc3339())
                .unwrap_or_default();
            println!(
                "{source}: refresh token imported and proven by one refresh; access token valid until {exp}"
            );
        }
        None => {
            let api = NodeApi::new(settings);
            let url = format!("{}/api/tokens/{}/import", api.base, source);
            let resp = rt.block_on(async { api.http.post(&url).body(token).send().await })?;
            let ok = resp.status().is_success();
            let body = rt.block_on(resp.text())?;
            if !ok {
                return Err(anyhow!("{source}: import refused: {}", body.trim()));
            }
            println!(
                "{source}: refresh token imported through the running node ({})",
                body.trim()
            );
        }
    }
    Ok(())
}

fn test_login(settings: &Settings, source: &str) -> anyhow::Result<()> {
    if !settings.sources.contains_key(source) {
        return Err(UsageError(format!("no source named {source:?} in the configuration")).into());
    }
    let rt = runtime()?;
    let report: mailsluice::diagnose::Report = match open_store(settings)? {
        Some(store) => {
            let connector = Connector::new(
                &settings.tls,
                settings.node.connect_timeout,
                settings.node.read_timeout,
            )
            .map_err(UsageError)?;
            let service = TokenService::new(Arc::new(settings.clone()), Arc::new(store))
                .map_err(UsageError)?;
            rt.block_on(async {
                let token = match settings.sources[source].auth {
                    config::SourceAuth::OAuth2 { .. } => Some(
                        service
                            .access_token(source)
                            .await
                            .map_err(|e| e.to_string()),
                    ),
                    config::SourceAuth::Password { .. } => None,
                };
                mailsluice::diagnose::test_login(settings, &connector, source, token).await
            })
        }
        None => {
            let api = NodeApi::new(settings);
            let url = format!("{}/api/sources/{}/test-login", api.base, source);
            rt.block_on(async {
                let resp = api
                    .http
                    .post(&url)
                    .send()
                    .await
                    .with_context(|| format!("the running node's API at {url}"))?;
                Ok::<_, anyhow::Error>(resp.json().await?)
            })?
        }
    };
    print!("{}", report.render());
    if report.mailbox_opened {
        Ok(())
    } else {
        Err(anyhow!(
            "test-login {source}: no mailbox opened (see the failed step above)"
        ))
    }
}

fn authorize(
    settings: &Settings,
    source: &str,
    device: bool,
    open_browser: bool,
    timeout_secs: Option<u64>,
) -> anyhow::Result<()> {
    let Some(src) = settings.sources.get(source) else {
        return Err(UsageError(format!("no source named {source:?} in the configuration")).into());
    };
    if !matches!(src.auth, config::SourceAuth::OAuth2 { .. }) {
        return Err(UsageError(format!("sources.{source}.auth is not oauth2")).into());
    }
    let rt = runtime()?;
    let local = open_store(settings)?;
    let running_node = local.is_none();
    // Without the store (a node holds it) the flow runs against a throw-away store and the
    // result goes to the node through its API.
    let scratch = ScratchDir::new()?;
    let store = match local {
        Some(s) => s,
        None => Store::open(&scratch.0.join("db"), &scratch.0.join("key"))?,
    };
    let settings_arc = Arc::new(settings.clone());
    let service = TokenService::new(settings_arc, Arc::new(store)).map_err(UsageError)?;
    let options = mailsluice::auth::ConsentOptions {
        open_browser,
        timeout: std::time::Duration::from_secs(timeout_secs.unwrap_or(if device {
            24 * 3600
        } else {
            300
        })),
    };
    let consent = rt.block_on(async {
        if device {
            service
                .authorize_device(source, &options, |event| match event {
                    mailsluice::auth::DeviceFlowEvent::Show {
                        verification_uri,
                        verification_uri_complete,
                        user_code,
                        expires_in,
                    } => {
                        println!("To authorize {source}, open {verification_uri} and enter the code: {user_code}");
                        if let Some(c) = verification_uri_complete {
                            println!("Or open: {c}");
                        }
                        println!("Sign in as {}. The code expires in {} minutes. Waiting...", src.username, expires_in / 60);
                        let _ = std::io::stdout().flush();
                    }
                    mailsluice::auth::DeviceFlowEvent::SlowDown { interval_secs } => {
                        println!("Provider asked to slow down; polling every {interval_secs}s");
                        let _ = std::io::stdout().flush();
                    }
                })
                .await
        } else {
            service
                .authorize_with_browser(source, &options, |url| {
                    println!("Open this URL in a browser and sign in as {}:", src.username);
                    println!("{url}");
                    println!("Waiting for the redirect to this machine's loopback address...");
                    let _ = std::io::stdout().flush();
                })
                .await
        }
    })?;
    if running_node {
        let Some(refresh) = &consent.refresh_token else {
            return Err(anyhow!("{source}: the provider returned no refresh token"));
        };
        let api = NodeApi::new(settings);
        let url = format!("{}/api/tokens/{}/import", api.base, source);
        let resp = rt.block_on(async {
            api.http
                .post(&url)
                .query(&[("identity", consent.identity.as_str())])
                .body(refresh.expose().to_string())
                .send()
                .await
        })?;
        let ok = resp.status().is_success();
        let body = rt.block_on(resp.text())?;
        if !ok {
            return Err(anyhow!(
                "{source}: the running node refused the new grant: {}",
                body.trim()
            ));
        }
        println!(
            "Signed in as {}; handed to the running node, which resumes {source}.",
            consent.identity
        );
    } else {
        rt.block_on(service.adopt(source, &consent))?;
        println!(
            "Signed in as {} (matches sources.{source}.username); refresh token stored encrypted.",
            consent.identity
        );
    }
    Ok(())
}

/// A private (0700) scratch directory, removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> anyhow::Result<ScratchDir> {
        let dir = std::env::temp_dir().join(format!("mailsluice-authorize-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads the store directly, or through the running node's API.
enum Reader {
    Local(Store),
    Remote(NodeApi, tokio::runtime::Runtime),
}

impl Reader {
    fn open(settings: &Settings) -> anyhow::Result<Reader> {
        Ok(match open_store(settings)? {
            Some(s) => Reader::Local(s),
            None => Reader::Remote(NodeApi::new(settings), runtime()?),
        })
    }

    /// How many messages `source` (or all sources) has stored.
    fn total(&self, source: Option<&str>) -> anyhow::Result<u64> {
        let counts: Vec<(String, u64)> = match self {
            Reader::Local(store) => store.counts()?.into_iter().collect(),
            Reader::Remote(api, rt) => rt
                .block_on(api.get_json::<Vec<SourceView>>("/api/sources"))?
                .into_iter()
                .map(|v| (v.name, v.stored_total))
                .collect(),
        };
        Ok(counts
            .into_iter()
            .filter(|(name, _)| source.is_none_or(|s| s == name))
            .map(|(_, n)| n)
            .sum())
    }

    /// Calls `f` for every message (in storage order) of `source`, or all.
    fn each(
        &self,
        source: Option<&str>,
        limit: usize,
        mut f: impl FnMut(MessageMeta) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        match self {
            Reader::Local(store) => {
                for m in store.iter_meta(source).take(limit) {
                    f(m?)?;
                }
            }
            Reader::Remote(api, rt) => {
                // Ids start at 0: the first page has no `after`.
                let mut after: Option<u64> = None;
                let mut seen = 0usize;
                loop {
                    let mut path = match after {
                        Some(a) => format!("/api/messages?after={a}&limit=1000"),
                        None => "/api/messages?limit=1000".to_string(),
                    };
                    if let Some(s) = source {
                        path.push_str(&format!("&source={s}"));
                    }
                    let page: Vec<MessageMeta> = rt.block_on(api.get_json(&path))?;
                    if page.is_empty() {
                        break;
                    }
                    for m in page {
                        after = Some(m.id);
                        if seen >= limit {
                            return Ok(());
                        }
                        seen += 1;
                        f(m)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn meta(&self, id: u64) -> anyhow::Result<Option<MessageMeta>> {
        match self {
            Reader::Local(store) => Ok(store.meta(id)?),
            Reader::Remote(api, rt) => Ok(rt
                .block_on(api.get_json(&format!("/api/messages/{id}")))
                .ok()),
        }
    }

    fn raw(&self, id: u64) -> anyhow::Result<Vec<u8>> {
        match self {
            Reader::Local(store) => store
                .raw(id)?
                .ok_or_else(|| anyhow!("message {id}: raw bytes missing")),
            Reader::Remote(api, rt) => {
                rt.block_on(api.get_bytes(&format!("/api/messages/{id}/raw")))
            }
        }
    }
}

fn location(m: &MessageMeta) -> String {
    match &m.location {
        mailsluice::store::Location::Imap {
            folder,
            uidvalidity,
            uid,
        } => format!("{folder};UIDVALIDITY={uidvalidity};UID={uid}"),
        mailsluice::store::Location::Pop3 { uidl } => format!("UIDL={uidl}"),
    }
}

fn messages(settings: &Settings, command: MessagesCommand) -> anyhow::Result<()> {
    let reader = Reader::open(settings)?;
    let mut out = std::io::stdout().lock();
    match command {
        MessagesCommand::List { source, limit } => {
            reader.each(source.as_deref(), limit, |m| {
                let subject = m
                    .parsed
                    .as_ref()
                    .and_then(|p| p.subject.clone())
                    .unwrap_or_else(|| {
                        if m.parse_error.is_some() {
                            "(unparsed)".into()
                        } else {
                            String::new()
                        }
                    });
                writeln!(
                    out,
                    "{:>8}  {:<16} {:<40} {:>9}  {}",
                    m.id,
                    m.source,
                    location(&m),
                    m.size,
                    subject
                )?;
                Ok(())
            })?;
        }
        MessagesCommand::Show { id, raw } => {
            let Some(meta) = reader.meta(id)? else {
                return Err(anyhow!("no message {id}"));
            };
            if raw {
                out.write_all(&reader.raw(id)?)?;
            } else {
                writeln!(out, "{}", serde_json::to_string_pretty(&meta)?)?;
            }
        }
        MessagesCommand::Export {
            format,
            out: path,
            source,
        } => {
            let n = export(&reader, format, &path, source.as_deref())?;
            writeln!(out, "exported {n} message(s) to {}", path.display())?;
        }
    }
    Ok(())
}

fn export(
    reader: &Reader,
    format: ExportFormat,
    path: &Path,
    source: Option<&str>,
) -> anyhow::Result<u64> {
    let mut n = 0u64;
    // A progress bar on a terminal; the total is what the store counts.
    let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
        let bar = indicatif::ProgressBar::new(reader.total(source).unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "exporting [{bar:40}] {pos}/{len} messages, {per_sec}, eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    match format {
        ExportFormat::Eml => {
            std::fs::create_dir_all(path).with_context(|| format!("--out {}", path.display()))?;
            reader.each(source, usize::MAX, |m| {
                let raw = reader.raw(m.id)?;
                std::fs::write(path.join(format!("{}.eml", m.id)), raw)?;
                n += 1;
                if let Some(b) = &bar {
                    b.inc(1);
                }
                Ok(())
            })?;
        }
        ExportFormat::Mbox => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(path).with_context(|| format!("--out {}", path.display()))?,
            );
            reader.each(source, usize::MAX, |m| {
                let raw = reader.raw(m.id)?;
                write_mboxrd(&mut f, &m, &raw)?;
                n += 1;
                if let Some(b) = &bar {
                    b.inc(1);
                }
                Ok(())
            })?;
            f.flush()?;
        }
        ExportFormat::Jsonl => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(path).with_context(|| format!("--out {}", path.display()))?,
            );
            reader.each(source, usize::MAX, |m| {
                serde_json::to_writer(&mut f, &m)?;
                f.write_all(b"\n")?;
                n += 1;
                if let Some(b) = &bar {
                    b.inc(1);
                }
                Ok(())
            })?;
            f.flush()?;
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(n)
}

/// mboxrd: a `From ` separator line, then the message with every line matching
/// `>*From ` quoted with one more `>`, then a blank line.
fn write_mboxrd(w: &mut impl Write, m: &MessageMeta, raw: &[u8]) -> std::io::Result<()> {
    let date = m
        .internal_date
        .as_deref()
        .and_then(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
        .map(|d| d.format("%a %b %e %H:%M:%S %Y").to_string())
        .unwrap_or_else(|| "Thu Jan  1 00:00:00 1970".into());
    writeln!(w, "From mailsluice@localhost {date}")?;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let stripped = line
            .iter()
            .skip_while(|&&b| b == b'>')
            .copied()
            .collect::<Vec<u8>>();
        if stripped.starts_with(b"From ") {
            w.write_all(b">")?;
        }
        w.write_all(line)?;
    }
    if !raw.ends_with(b"\n") {
        w.write_all(b"\n")?;
    }
    w.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command and every argument explains itself in `--help`.
    #[test]
    fn every_command_and_argument_has_help() {
        Cli::command().debug_assert();
        fn walk(cmd: &clap::Command, path: &str) {
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "`{name}` has no help text");
                for arg in sub.get_arguments() {
                    let id = arg.get_id().as_str();
                    if ["help", "version"].contains(&id) {
                        continue;
                    }
                    assert!(
                        arg.get_help().is_some(),
                        "`{name}` argument {id} has no help text"
                    );
                }
                walk(sub, &name);
            }
        }
        walk(&Cli::command(), "mailsluice");
    }
}
