//! `mailsluice run`: opens the store, starts the supervisor and the HTTP server, and waits
//! for a signal (or, with `--once`, for every source's one pass).

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::HttpServer;
use anyhow::{Context, anyhow};

use mailsluice::actors::supervisor::{Reload, Shutdown, Supervisor, WaitOnce, reload_from_file};
use mailsluice::api::{self, ApiState};
use mailsluice::auth::TokenService;
use mailsluice::config::live::Live;
use mailsluice::config::{self, LogFormat, Settings};
use mailsluice::net::Connector;
use mailsluice::store::Store;
use mailsluice::telemetry;

use super::UsageError;
use crate::memory;

pub(crate) fn run(settings: Settings, path: &Path, once: bool) -> anyhow::Result<()> {
    let missing = config::check_secrets(&settings);
    if !missing.is_empty() {
        let mut msg = format!("{} secret reference(s) do not resolve:", missing.len());
        for e in &missing {
            msg.push_str(&format!("\n  {e}"));
        }
        return Err(UsageError(msg).into());
    }
    let bars = init_logging(&settings, once);
    for loose in config::loose_secret_files(&config::secret_files(&settings)) {
        tracing::warn!(
            key = %loose.key,
            file = %loose.path.display(),
            mode = %format!("{:04o}", loose.mode),
            "secret file open to group or others; only its owner should read it: chmod 600 {}",
            loose.path.display()
        );
    }
    for warning in config::warnings(&settings) {
        tracing::warn!(key = %warning.path, "{}", warning.message);
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
    .map_err(|e| UsageError(e.to_string()))?;
    let settings = Arc::new(settings);
    let token_service = Arc::new(
        TokenService::new(settings.clone(), store.clone())
            .map_err(|e| UsageError(e.to_string()))?,
    );
    // Bound here and handed to the HTTP server: with port 0 the system picks the port, and
    // it is known (and reported) before anything else starts.
    let listener = std::net::TcpListener::bind(settings.node.http_listen)
        .with_context(|| format!("node.http_listen {}", settings.node.http_listen))?;
    let addr = listener.local_addr()?;
    let _reported = match &settings.node.http_listen_file {
        Some(file) => Some(
            ListenFile::write(file, addr)
                .with_context(|| format!("node.http_listen_file {}", file.display()))?,
        ),
        None => None,
    };
    // After the store opened (it creates the data directory, where the token file is
    // by default) and before anything listens.
    let credentials = api::credentials::Credentials::load(&settings, true)
        .map_err(|e| UsageError(e.to_string()))?;
    let https = match &settings.node.http_tls {
        Some(tls) => Some(
            api::tls::server_config(tls, settings.tls.min_version)
                .map_err(|e| UsageError(e.to_string()))?,
        ),
        None => None,
    };
    let live = Live::new(settings.clone(), connector, Some(path.to_path_buf()));
    let system = actix_rt::System::new();
    let store_for_end = store.clone();
    let failed = system.block_on(async move {
        let mut supervisor =
            Supervisor::new(live.clone(), store.clone(), token_service).listening_on(addr);
        if once {
            supervisor = supervisor.once();
        }
        let (supervisor, node) = supervisor.start_with_handle();
        let state = ApiState::new(live.clone(), store.clone(), metrics, node.clone());
        let api_state = state.clone();
        let access = Arc::new(api::access::Access::new(
            live.clone(),
            credentials,
            addr,
            https.is_some(),
        ));
        let server = HttpServer::new(move || api::app(state.clone(), access.clone()))
            .workers(1)
            .disable_signals();
        let server = match https {
            Some(tls) => server.listen_rustls_0_23(listener, tls)?,
            None => server.listen(listener)?,
        }
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        let failed = if once {
            tracing::info!(http = %addr, sources = settings.sources.values().filter(|s| s.enabled).count(), "collecting every source once");
            collect_once(&supervisor, bars, settings.clone()).await
        } else {
            tracing::info!(http = %addr, sources = settings.sources.len(), "node running; metrics at http://{addr}/metrics");
            wait_for_signal(Some((&node.reload, &live))).await;
            tracing::info!("shutting down: finishing the message in hand");
            Vec::new()
        };
        let _ = supervisor.send(Shutdown).await;
        api_state.close();
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

/// Sets up logging; for `run --once` on a terminal, also the progress bars, which log lines
/// are then printed above (never through).
fn init_logging(settings: &Settings, once: bool) -> Option<indicatif::MultiProgress> {
    let json = settings.node.log_format == LogFormat::Json;
    let bars = (once && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .then(indicatif::MultiProgress::new);
    match &bars {
        Some(multi) => {
            let multi = multi.clone();
            telemetry::init_logging_to(
                json,
                tracing_subscriber::fmt::writer::BoxMakeWriter::new(move || {
                    BarWriter(multi.clone())
                }),
            );
        }
        None => telemetry::init_logging(json),
    }
    bars
}

/// `run --once`: waits until every source finished its pass (or a signal came), logs each
/// source's outcome and returns the failures, one line per source.
async fn collect_once(
    supervisor: &actix::Addr<Supervisor>,
    bars: Option<indicatif::MultiProgress>,
    settings: Arc<Settings>,
) -> Vec<String> {
    let progress = actix_rt::spawn(show_progress(bars.clone(), settings));
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
    let mut failed = Vec::new();
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
            Ok(()) => {
                tracing::info!(source = %source, stored = done.total_stored, bytes = done.total_bytes, "source collected")
            }
            Err(e) => tracing::warn!(source = %source, error = %e, "source not collected"),
        }
    }
    failed
}

/// `node.http_listen_file` while the node runs: the address it listens on, so programs that
/// started it on port 0 (and commands beside it) can reach it. Removed when dropped, at the
/// end of `run`.
struct ListenFile(PathBuf);

impl ListenFile {
    /// Writes `addr` and a newline to `path`: to a temporary file beside it, created 0600,
    /// then renamed over `path`, so a reader sees the old file or the whole new one, never
    /// a partial address.
    fn write(path: &Path, addr: SocketAddr) -> std::io::Result<ListenFile> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir)?;
        let name = path.file_name().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name")
        })?;
        let mut tmp_name = name.to_os_string();
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);
        // A left-over temporary file would keep its old mode: start from none.
        let _ = std::fs::remove_file(&tmp);
        if let Err(e) = write_private(&tmp, addr).and_then(|()| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(ListenFile(path.to_path_buf()))
    }
}

/// Creates `path` (which must not exist) readable by the owner only, with `addr` in it, and
/// flushes it to disk.
fn write_private(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    writeln!(file, "{addr}")?;
    file.sync_all()
}

impl Drop for ListenFile {
    fn drop(&mut self) {
        // A stale address would send the next reader to a port someone else may hold.
        let _ = std::fs::remove_file(&self.0);
    }
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

/// Waits for SIGTERM or SIGINT. With a supervisor, SIGHUP reloads the configuration
/// meanwhile.
async fn wait_for_signal(reload: Option<(&actix::Recipient<Reload>, &Live)>) {
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
