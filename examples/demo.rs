//! `scripts/demo`: a local, self-contained mailsluice demo.
//!
//! Starts the test harness's oidc-provider and Dovecot on loopback ports, seeds alice's INBOX
//! with generated mail, writes a node config with an IMAPS/XOAUTH2 source and a POP3S/password
//! source, authorizes the OAuth2 source by importing a refresh token, runs the real
//! `mailsluice` binary and shows the mail arriving (progress from `/api/sources`, then 20 more
//! messages seeded live, then `messages list` and a few `/metrics` lines).
//!
//! Usage: `demo [--once] [--messages N]`. Without `--once` it keeps running until Ctrl-C.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use support::{Dovecot, DovecotOptions, NodeProcess, Oidc, OidcOptions};

const ALICE: &str = "alice@example.test";
const ALICE_PW: &str = "alice-password";
const SCOPE: &str = "openid offline_access email mail";
const SOURCES: [&str; 2] = ["inbox", "pop"];
const STORE_TIMEOUT: Duration = Duration::from_secs(120);
const LIVE_MESSAGES: usize = 20;
const STEPS: usize = 5;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

struct Args {
    once: bool,
    messages: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        once: false,
        messages: 300,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--once" => args.once = true,
            "--messages" => {
                let v = it.next().context("--messages needs a number")?;
                args.messages = v.parse().with_context(|| format!("--messages {v:?}"))?;
            }
            "-h" | "--help" => {
                println!("usage: scripts/demo [--once] [--messages N]   (default N = 300)");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("demo: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    watch_ctrl_c();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if INTERRUPTED.load(Ordering::SeqCst) => {
            eprintln!("demo: interrupted ({e:#})");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("\ndemo: FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C sets [`INTERRUPTED`]; the main thread notices it between steps and shuts down.
fn watch_ctrl_c() {
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        if rt.block_on(tokio::signal::ctrl_c()).is_ok() {
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("\ndemo: Ctrl-C received, shutting down");
        }
    });
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("Ctrl-C");
    }
    Ok(())
}

fn step(n: usize, what: &str) {
    print!("{n}/{STEPS} {what} ... ");
    let _ = std::io::stdout().flush();
}

/// `target/debug/examples/demo` -> `target/debug/mailsluice`.
fn mailsluice_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locate the demo executable")?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("mailsluice"))
        .context("no parent directory of the demo executable")?;
    if !bin.is_file() {
        bail!(
            "{} not found: build it first (`cargo build`, or run scripts/demo)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Generated messages with CRLF line endings: plain text, multipart with an attachment and
/// non-ASCII subjects (encoded word and raw UTF-8), in turn.
fn messages(tag: &str, start: usize, n: usize) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    (start..start + n)
        .map(|i| {
            let date = format!(
                "Date: Mon, 3 Nov 2025 {:02}:{:02}:00 +0000\r\n",
                (i / 60) % 24,
                i % 60
            );
            let id = format!("Message-ID: <demo-{tag}-{i}@example.test>\r\n");
            match i % 3 {
                0 => format!(
                    "{id}{date}From: Alice <alice@example.test>\r\nTo: support@example.test\r\nSubject: Order #{i} status ({tag})\r\n\r\nHello,\r\nthis is plain message {i}.\r\n.a line starting with a dot\r\n{}\r\n",
                    "lorem ipsum ".repeat(i % 40)
                )
                .into_bytes(),
                1 => {
                    let data: Vec<u8> = (0..(500 + i * 13 % 4000))
                        .map(|k| (k * 7 + i) as u8)
                        .collect();
                    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
                    let wrapped: String = b64
                        .as_bytes()
                        .chunks(76)
                        .map(|c| format!("{}\r\n", String::from_utf8_lossy(c)))
                        .collect();
                    format!(
                        "{id}{date}From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <joerg@example.test>\r\nTo: invoices@example.test\r\nSubject: Invoice {i} with attachment ({tag})\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße, siehe Anhang.\r\n--b{i}\r\nContent-Type: application/octet-stream; name=\"invoice-{i}.bin\"\r\nContent-Disposition: attachment; filename=\"invoice-{i}.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{wrapped}--b{i}--\r\n"
                    )
                    .into_bytes()
                }
                _ => {
                    let subject = if i % 2 == 0 {
                        format!("Überweisung 請求書 Nr. {i} ({tag})")
                    } else {
                        format!("=?UTF-8?B?UmVjaG51bmcgw5zDpMO2?= {i} ({tag})")
                    };
                    format!(
                        "{id}{date}From: Zoë <zoe@example.test>\r\nTo: 日本 <jp@example.test>\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nnon-ASCII: café, naïve, 東京 #{i}\r\n"
                    )
                    .into_bytes()
                }
            }
        })
        .collect()
}

/// The running node (the test harness's [`NodeProcess`]): SIGTERM + wait on
/// [`NodeProc::stop`], and on drop too.
struct NodeProc {
    process: Option<NodeProcess>,
}

impl NodeProc {
    fn stop(&mut self) -> Result<()> {
        let Some(mut process) = self.process.take() else {
            return Ok(());
        };
        let (_, status) = process
            .stop(Duration::from_secs(20))
            .map_err(anyhow::Error::msg)?;
        if !status.success() {
            bail!("the node exited with {status}");
        }
        Ok(())
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process.as_mut().and_then(NodeProcess::exited)
    }
}

impl Drop for NodeProc {
    // Also on the error paths: a graceful SIGTERM first, SIGKILL after 20 s.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

type SourceRow = (String, String, u64, Option<String>);

struct Api {
    client: reqwest::blocking::Client,
    base: String,
}

impl Api {
    fn get(&self, path: &str) -> Result<String> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .with_context(|| format!("GET {path}"))?;
        let status = resp.status();
        let body = resp.text()?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {body}");
        }
        Ok(body)
    }

    /// (name, state, stored_total, last_error) per demo source.
    fn sources(&self) -> Result<Vec<SourceRow>> {
        let v: serde_json::Value = serde_json::from_str(&self.get("/api/sources")?)?;
        let arr = v.as_array().context("/api/sources is not an array")?;
        SOURCES
            .iter()
            .map(|name| {
                let s = arr
                    .iter()
                    .find(|s| s["name"] == *name)
                    .with_context(|| format!("source {name} missing from /api/sources"))?;
                Ok((
                    name.to_string(),
                    s["state"].as_str().unwrap_or("?").to_string(),
                    s["stored_total"].as_u64().unwrap_or(0),
                    s["last_error"].as_str().map(str::to_string),
                ))
            })
            .collect()
    }
}

/// Polls `/api/sources` every 500 ms, printing a line per source when something changed,
/// until every source stored at least `target`.
fn wait_stored(api: &Api, node: &mut NodeProc, target: u64, since: Instant) -> Result<()> {
    let deadline = Instant::now() + STORE_TIMEOUT;
    let mut last = Vec::new();
    loop {
        check_interrupt()?;
        if let Some(status) = node.exited() {
            bail!("the node exited unexpectedly ({status}); see the `node |` lines above");
        }
        let sources = api.sources()?;
        let summary: Vec<(String, u64)> = sources
            .iter()
            .map(|(_, state, n, _)| (state.clone(), *n))
            .collect();
        if summary != last {
            let t = since.elapsed().as_secs_f64();
            for (name, state, n, err) in &sources {
                let err = err
                    .as_deref()
                    .map(|e| format!("  last_error: {e}"))
                    .unwrap_or_default();
                println!(
                    "  [{t:6.1}s] {name:<6} state={state:<12} stored_total={n:>4}/{target}{err}"
                );
            }
            last = summary;
        }
        if sources.iter().all(|(_, _, n, _)| *n >= target) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let detail: Vec<String> = sources
                .iter()
                .map(|(name, state, n, err)| format!("{name}: {state}, {n}/{target} ({err:?})"))
                .collect();
            bail!(
                "not everything was stored within {STORE_TIMEOUT:?}: {}",
                detail.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn cli(bin: &Path, config: &Path, dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin)
        .arg("-c")
        .arg(config)
        .args(args)
        .current_dir(dir)
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "mailsluice {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

fn run(args: &Args) -> Result<()> {
    let bin = mailsluice_binary()?;
    let n = args.messages;
    let started = Instant::now();
    println!("mailsluice demo: local oidc-provider + Dovecot, {n} messages, 2 sources\n");

    step(1, "starting oidc-provider");
    let oidc = Oidc::start(OidcOptions {
        access_token_ttl_secs: 600,
        ..OidcOptions::default()
    });
    println!(
        "ok (port {}, {:.1}s)",
        oidc.port,
        oidc.startup.as_secs_f64()
    );
    check_interrupt()?;

    step(
        2,
        "starting Dovecot (IMAPS + POP3S, OAuth2 via introspection)",
    );
    let dovecot = Dovecot::start(DovecotOptions {
        oidc_introspection_url: Some(oidc.introspection_url()),
        ..DovecotOptions::default()
    });
    println!(
        "ok (imaps port {}, pop3s port {}, {:.1}s)",
        dovecot.imaps_port,
        dovecot.pop3s_port,
        dovecot.startup.as_secs_f64()
    );
    check_interrupt()?;

    step(3, &format!("seeding {n} messages into {ALICE}'s INBOX"));
    let initial = messages("seed", 0, n);
    let bytes: usize = initial.iter().map(Vec::len).sum();
    dovecot.seed(ALICE, &initial);
    println!("ok ({bytes} bytes: plain, multipart with attachment, non-ASCII subjects; CRLF)");

    step(4, "writing the node config and importing a refresh token");
    let dir = tempfile::Builder::new()
        .prefix("mailsluice-demo-")
        // Private: it holds the node's key, store and, for a moment, a refresh token.
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .tempdir()
        .context("create the demo directory")?;
    // Any free port: the node reports the one it got in http.addr.
    let listen_file = dir.path().join("http.addr");
    let config = dir.path().join("mailsluice.toml");
    let text = format!(
        r#"[node]
data_dir = {data:?}
http_listen = "127.0.0.1:0"
http_listen_file = {listen:?}
secret_key_file = {key:?}

[tls]
extra_ca_file = {ca:?}

[providers.local]
kind = "oidc"
issuer = "{issuer}"
client_id = "collector"

[sources.inbox]
protocol = "imap"
host = "localhost"
port = {imaps}
security = "tls"
username = "{ALICE}"
auth = "oauth2"
provider = "local"
sasl = "xoauth2"
folders = ["INBOX"]
poll_interval_secs = 2

[sources.pop]
protocol = "pop3"
host = "localhost"
port = {pop3s}
security = "tls"
username = "{ALICE}"
auth = "password"
password_env = "DEMO_POP_PASSWORD"
after_ingest = "keep"
poll_interval_secs = 2
"#,
        data = dir.path().join("data").display().to_string(),
        listen = listen_file.display().to_string(),
        key = dir.path().join("secret.key").display().to_string(),
        ca = dovecot.ca_pem.display().to_string(),
        issuer = oidc.issuer,
        imaps = dovecot.imaps_port,
        pop3s = dovecot.pop3s_port,
    );
    std::fs::write(&config, text).context("write the config")?;
    let tokens = oidc.login_auth_code("collector", ALICE, ALICE_PW, SCOPE);
    let refresh = tokens
        .refresh_token
        .context("the OIDC server issued no refresh token")?;
    let token_file = dir.path().join("refresh.token");
    std::fs::write(&token_file, format!("{refresh}\n"))?;
    let token_path = token_file.to_str().context("non-UTF-8 temp path")?;
    let out = cli(
        &bin,
        &config,
        dir.path(),
        &[
            "tokens",
            "import",
            "inbox",
            "--refresh-token-file",
            token_path,
        ],
    )?;
    std::fs::remove_file(&token_file)?;
    println!("ok\n    config: {}", config.display());
    print!("{}", indent(&out.replace(&refresh, "<refresh token>")));
    check_interrupt()?;

    step(5, "running `mailsluice run`");
    println!();
    let mut cmd = Command::new(&bin);
    cmd.arg("-c")
        .arg(&config)
        .arg("run")
        .current_dir(dir.path())
        // The node's own default log filter, unless RUST_LOG (inherited) says otherwise.
        .env("DEMO_POP_PASSWORD", ALICE_PW)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Colored log lines only when they go to a terminal.
    if !std::io::stdout().is_terminal() {
        cmd.env("NO_COLOR", "1");
    }
    // Own process group: Ctrl-C in the terminal reaches the demo only, which then stops the
    // node with SIGTERM.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let node_started = Instant::now();
    let mut process = NodeProcess::spawn(cmd, &listen_file).map_err(anyhow::Error::msg)?;
    if let Some(stderr) = process.take_stderr() {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                println!("node | {line}");
            }
        });
    }
    let ready = process.wait_ready(Duration::from_secs(20));
    let mut node = NodeProc {
        process: Some(process),
    };
    let http = ready.map_err(|e| anyhow::anyhow!("{e}; see the `node |` lines above"))?;
    check_interrupt()?;
    let api = Api {
        client: reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .default_headers(
                support::node_process::bearer(&dir.path().join("data").join("api.token"))
                    .map_err(anyhow::Error::msg)?,
            )
            .build()?,
        base: format!("http://{http}"),
    };
    println!("    node up on http://{http} (metrics: http://{http}/metrics)");
    println!("    waiting for both sources to store all {n} messages:");
    wait_stored(&api, &mut node, n as u64, node_started)?;
    let first = node_started.elapsed();
    println!(
        "    => both sources stored {n} messages in {:.1}s",
        first.as_secs_f64()
    );

    println!("\n    seeding {LIVE_MESSAGES} more messages while the node runs:");
    let live_start = Instant::now();
    dovecot.seed(ALICE, &messages("live", n, LIVE_MESSAGES));
    let total = (n + LIVE_MESSAGES) as u64;
    wait_stored(&api, &mut node, total, live_start)?;
    let live = live_start.elapsed();
    println!(
        "    => {LIVE_MESSAGES} live messages arrived at both sources in {:.1}s",
        live.as_secs_f64()
    );

    println!("\n--- mailsluice messages list --limit 10");
    let list = cli(
        &bin,
        &config,
        dir.path(),
        &["messages", "list", "--limit", "10"],
    )?;
    print!("{}", indent(&list));

    println!("--- from http://{http}/metrics");
    let metrics = api.get("/metrics")?;
    let interesting: String = metrics
        .lines()
        .filter(|l| {
            l.starts_with("mailsluice_messages_ingested_total")
                || l.starts_with("mailsluice_token_refreshes_total")
                || (l.starts_with("mailsluice_source_state{") && l.ends_with(" 1"))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    print!("{}", indent(&interesting));

    println!(
        "\nsummary: {n} seeded + {LIVE_MESSAGES} live = {total} messages, each stored by both sources \
         (inbox: IMAPS/XOAUTH2, pop: POP3S/password); initial ingest {:.1}s, live {:.1}s, total {:.1}s",
        first.as_secs_f64(),
        live.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    if !args.once {
        println!(
            "\nthe node keeps running: http://{http}/metrics, http://{http}/api/sources\n\
             press Ctrl-C to stop"
        );
        while !INTERRUPTED.load(Ordering::SeqCst) {
            if let Some(status) = node.exited() {
                bail!("the node exited unexpectedly ({status})");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("stopping the node (SIGTERM) ...");
    node.stop()?;
    drop(dovecot);
    drop(oidc);
    println!("stopped; servers shut down, demo directory removed");
    Ok(())
}
