//! A real NATS server with JetStream (Debian's `nats-server` 2.9.10) per test.
//!
//! Each instance gets a temporary directory holding its generated `nats.conf`, the JetStream
//! store (`store/`, file-backed streams live in `store/jetstream/`) and its log, and listens
//! on 127.0.0.1 on a port the kernel picked (`port: -1`; the port is read from the server's
//! `Listening for client connections on` line). After the first start the port is written into
//! the config, so [`NatsServer::restart`] comes back on the same port with the same store:
//! clients reconnect to the same URL and find their streams.
//!
//! Ready means: the `Server is ready` line was logged, and a `$JS.API.INFO` request over a
//! plain TCP connection got an account-info answer (JetStream answers, not only the port).
//!
//! Observed on 2.9.10 (PROTOCOLS.md section 10): a publish larger than `max_payload` is refused
//! before it reaches the stream; a repeated `Nats-Msg-Id` inside the stream's duplicate window
//! is acked with the first message's sequence and `duplicate: true`; the object store splits an
//! object into chunks of `ObjectMetadata::chunk_size` (async-nats default 128 KiB), so under a
//! smaller `max_payload` the chunk size must be set below it. Start-up to ready takes a few
//! milliseconds, and so does a SIGTERM shutdown. After a restart, clean or SIGKILL, a file
//! stream still holds every acked message and still recognises ids inside its duplicate
//! window (`tests/sink_harness.rs`).
//!
//! The server is killed on drop (SIGKILL: nothing of a test's server is worth a graceful
//! shutdown), and a watchdog kills it if this process dies without dropping it.

use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::stream::RawMessageErrorKind;
use rustix::process::{Pid, Signal};
use tempfile::TempDir;
use tokio::io::AsyncReadExt;

use super::{START_TIMEOUT, read_log, spawn_watchdog, tail};

/// A `max_payload` small enough that tests reach the object-store path with mail of a few
/// hundred KiB instead of the default 1 MiB.
pub const SMALL_MAX_PAYLOAD: usize = 64 * 1024;

/// How long [`NatsServer::stop`] waits for a SIGTERM'd server before it SIGKILLs it.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a NATS server is started with.
#[derive(Clone, Debug, Default)]
pub struct NatsOptions {
    /// `max_payload` in bytes; `None` is the server's default, 1 MiB.
    pub max_payload: Option<usize>,
    /// A token every client must present (`authorization { token }`). Not with `user`.
    pub token: Option<String>,
    /// (user, password) every client must present. Not with `token`.
    pub user: Option<(String, String)>,
    /// Appended verbatim to the generated nats.conf.
    pub extra_config: String,
}

impl NatsOptions {
    /// The default server with `max_payload` = [`SMALL_MAX_PAYLOAD`].
    pub fn small_payload() -> NatsOptions {
        NatsOptions {
            max_payload: Some(SMALL_MAX_PAYLOAD),
            ..NatsOptions::default()
        }
    }
}

/// One message read back from a stream by [`NatsServer::stream_messages`].
#[derive(Clone, Debug)]
pub struct StreamEntry {
    pub seq: u64,
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Vec<u8>,
}

impl StreamEntry {
    /// The value of header `name` (e.g. `Nats-Msg-Id`), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.as_str().to_string())
    }
}

/// A NATS server with JetStream; killed on drop.
pub struct NatsServer {
    port: u16,
    /// How long the last (re)start took from spawn to JetStream answering.
    pub startup: Duration,
    /// `None` after `stop` or `kill`.
    child: Option<Child>,
    /// Kills the server's process group when this process dies without running `Drop`.
    watchdog: Option<Child>,
    opts: NatsOptions,
    config_path: PathBuf,
    /// Every run's log, appended in order, each run starting with a `--- start N ---` line.
    log_path: PathBuf,
    store_dir: PathBuf,
    starts: usize,
    dir: TempDir,
}

impl NatsServer {
    /// Starts a server with default options (1 MiB `max_payload`, no authentication).
    pub fn start() -> NatsServer {
        NatsServer::start_with(NatsOptions::default())
    }

    /// Starts a server and waits until JetStream answers; panics with the server's log if it
    /// does not within [`START_TIMEOUT`].
    pub fn start_with(opts: NatsOptions) -> NatsServer {
        assert!(
            opts.token.is_none() || opts.user.is_none(),
            "NatsOptions: token and user are exclusive"
        );
        let dir = tempfile::Builder::new()
            .prefix("mailsluice-nats-")
            .tempdir()
            .expect("create a temporary directory for nats-server");
        let store_dir = dir.path().join("store");
        fs::create_dir(&store_dir).expect("create store/");
        let mut server = NatsServer {
            port: 0,
            startup: Duration::ZERO,
            child: None,
            watchdog: None,
            opts,
            config_path: dir.path().join("nats.conf"),
            log_path: dir.path().join("nats.log"),
            store_dir,
            starts: 0,
            dir,
        };
        server.spawn_and_wait();
        server
    }

    /// `nats://127.0.0.1:<port>`, the same across restarts.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store directory (`-sd`); the server keeps its files in `jetstream/` below.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The `max_payload` the server was configured with (1 MiB when not set).
    pub fn max_payload(&self) -> usize {
        self.opts.max_payload.unwrap_or(1024 * 1024)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Every run's log so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// Stops the server the way an operator does (SIGTERM; JetStream flushes and closes its
    /// files) and waits for it to exit; SIGKILL after 10 s. Clients see their connection close
    /// and start reconnecting. A no-op when it is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = rustix::process::kill_process(Pid::from_child(&child), Signal::TERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        self.stop_watchdog();
    }

    /// Kills the server (SIGKILL: a crash or a power cut as far as clients can tell; what was
    /// acked is in the file store). A no-op when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.stop_watchdog();
    }

    /// Stops the server if it runs (SIGTERM, see [`Self::stop`]) and starts it again on the
    /// same port with the same config and store; panics with the log if it does not come
    /// back (e.g. another process took the port meanwhile). Call [`Self::kill`] first for a
    /// crash instead of a clean shutdown.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_and_wait();
    }

    /// A new client connection (with the server's credentials, if any). Clients reconnect on
    /// their own after a restart.
    pub async fn client(&self) -> async_nats::Client {
        let mut options = async_nats::ConnectOptions::new();
        if let Some(token) = &self.opts.token {
            options = options.token(token.clone());
        }
        if let Some((user, password)) = &self.opts.user {
            options = options.user_and_password(user.clone(), password.clone());
        }
        options
            .connect(self.url())
            .await
            .unwrap_or_else(|e| self.fail("connect a NATS client", &e.to_string()))
    }

    /// A JetStream context on a new client connection.
    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client().await)
    }

    /// Every message in `stream`, in sequence order, read one by one with the stream's
    /// message-get API (no consumer is created, so reading changes nothing in the stream).
    /// Sequences deleted from the stream are skipped. Panics naming the stream when it does
    /// not exist.
    pub async fn stream_messages(&self, stream: &str) -> Vec<StreamEntry> {
        let js = self.jetstream().await;
        let handle = js
            .get_stream(stream)
            .await
            .unwrap_or_else(|e| self.fail(&format!("look up stream {stream}"), &e.to_string()));
        let info = handle
            .get_info()
            .await
            .unwrap_or_else(|e| self.fail(&format!("stream info of {stream}"), &e.to_string()));
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut entries = Vec::new();
        if info.state.messages == 0 {
            return entries;
        }
        for seq in first..=last {
            match handle.get_raw_message(seq).await {
                Ok(message) => entries.push(StreamEntry {
                    seq: message.sequence,
                    subject: message.subject.to_string(),
                    headers: message.headers,
                    payload: message.payload.to_vec(),
                }),
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {}
                Err(e) => self.fail(
                    &format!("get message {seq} of stream {stream}"),
                    &e.to_string(),
                ),
            }
        }
        entries
    }

    /// The whole content of object `name` in object-store `bucket`; panics naming both when
    /// either is missing.
    pub async fn object_get(&self, bucket: &str, name: &str) -> Vec<u8> {
        let js = self.jetstream().await;
        let store = js
            .get_object_store(bucket)
            .await
            .unwrap_or_else(|e| self.fail(&format!("open object bucket {bucket}"), &e.to_string()));
        let mut object = store.get(name).await.unwrap_or_else(|e| {
            self.fail(&format!("get object {name} from {bucket}"), &e.to_string())
        });
        let mut data = Vec::new();
        object.read_to_end(&mut data).await.unwrap_or_else(|e| {
            self.fail(&format!("read object {name} from {bucket}"), &e.to_string())
        });
        data
    }

    fn fail(&self, what: &str, error: &str) -> ! {
        panic!(
            "{what} at {}: {error}\n--- nats-server log ---\n{}",
            self.url(),
            tail(&self.log(), 40)
        )
    }

    fn stop_watchdog(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }

    /// Writes the config (the kernel picks the port on the first start, later starts reuse
    /// it), spawns the server and waits until JetStream answers.
    fn spawn_and_wait(&mut self) {
        self.starts += 1;
        fs::write(&self.config_path, self.render_config()).expect("write nats.conf");
        let binary = nats_binary();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open nats.log");
        writeln!(log, "--- start {} ---", self.starts).expect("write nats.log");
        let spawned = Instant::now();
        // Its own process group, so a terminal's Ctrl-C does not reach it and the watchdog
        // can kill it by group.
        let mut child = Command::new(&binary)
            .process_group(0)
            .arg("-c")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "spawn {} (Debian package nats-server, scripts/install-deps): {e}",
                    binary.display()
                )
            });
        let lines = copy_log(child.stderr.take().expect("piped stderr"), log);

        match self.wait_ready(&mut child, &lines, spawned) {
            Ok(port) => {
                self.port = port;
                self.startup = spawned.elapsed();
                self.watchdog = spawn_watchdog(child.id(), "nats-watchdog");
                self.child = Some(child);
            }
            Err(reason) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "nats-server did not start (start {}, {}): {reason}\n--- nats-server log ---\n{}\n--- nats.conf ---\n{}",
                    self.starts,
                    binary.display(),
                    tail(&self.log(), 60),
                    read_log(&self.config_path)
                );
            }
        }
    }

    /// Waits for the `Server is ready` line (learning the port on the way), then for
    /// JetStream to answer on that port.
    fn wait_ready(
        &self,
        child: &mut Child,
        lines: &mpsc::Receiver<String>,
        spawned: Instant,
    ) -> Result<u16, String> {
        let deadline = spawned + START_TIMEOUT;
        let mut port = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(p) = listening_port(&line) {
                        port = Some(p);
                    }
                    if line.contains("Server is ready") {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!("no readiness line within {START_TIMEOUT:?}"));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    return Err(format!("exited before it was ready ({status:?})"));
                }
            }
        }
        let port = port.ok_or("no `Listening for client connections on` line")?;
        // JetStream is enabled before the listener opens, so this normally answers at once;
        // it is what a client's first request would need.
        loop {
            match jetstream_info(port, &self.opts) {
                Ok(()) => return Ok(port),
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("JetStream did not answer on port {port}: {e}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn render_config(&self) -> String {
        let mut conf = String::new();
        // Port -1: the kernel picks; from the second start on, the port the first one got.
        let port = if self.port == 0 {
            -1
        } else {
            i32::from(self.port)
        };
        writeln!(conf, "host: \"127.0.0.1\"\nport: {port}").unwrap();
        writeln!(
            conf,
            "jetstream {{\n  store_dir: {}\n}}",
            quote(&self.store_dir.display().to_string())
        )
        .unwrap();
        if let Some(max) = self.opts.max_payload {
            writeln!(conf, "max_payload: {max}").unwrap();
        }
        if let Some(token) = &self.opts.token {
            writeln!(conf, "authorization {{\n  token: {}\n}}", quote(token)).unwrap();
        }
        if let Some((user, password)) = &self.opts.user {
            writeln!(
                conf,
                "authorization {{\n  user: {}\n  password: {}\n}}",
                quote(user),
                quote(password)
            )
            .unwrap();
        }
        conf.push_str(&self.opts.extra_config);
        conf.push('\n');
        conf
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies the server's stderr into `log` line by line and hands each line to the returned
/// channel (the readiness lines are events to wait on). The thread lives until the server
/// closes its stderr, i.e. exits, so the pipe never fills.
fn copy_log(stderr: impl Read + Send + 'static, mut log: File) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = writeln!(log, "{line}");
            // The receiver is gone once the server is ready; keep copying into the log.
            let _ = tx.send(line);
        }
    });
    rx
}

/// The port of a `... Listening for client connections on 127.0.0.1:4222` line.
fn listening_port(line: &str) -> Option<u16> {
    let (_, addr) = line.split_once("Listening for client connections on ")?;
    addr.trim().rsplit_once(':')?.1.parse().ok()
}

/// One `$JS.API.INFO` request in the NATS text protocol: `Ok` when JetStream answers with
/// account information, `Err` with what happened otherwise (no responders while JetStream is
/// still starting, an error reply, a refused connection).
fn jetstream_info(port: u16, opts: &NatsOptions) -> Result<(), String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| e.to_string())?;
    if !line.starts_with("INFO ") {
        return Err(format!("no INFO greeting: {line:?}"));
    }
    let mut connect = serde_json::json!({
        "verbose": false, "pedantic": false, "headers": true, "no_responders": true,
        "lang": "rust-harness", "version": "0", "protocol": 1,
    });
    if let Some(token) = &opts.token {
        connect["auth_token"] = token.clone().into();
    }
    if let Some((user, password)) = &opts.user {
        connect["user"] = user.clone().into();
        connect["pass"] = password.clone().into();
    }
    write!(
        writer,
        "CONNECT {connect}\r\nSUB _HARNESS.js-info 1\r\nPUB $JS.API.INFO _HARNESS.js-info 0\r\n\r\nPING\r\n"
    )
    .map_err(|e| e.to_string())?;
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["PING"] => writer.write_all(b"PONG\r\n").map_err(|e| e.to_string())?,
            ["PONG"] | ["+OK"] | ["INFO", ..] => {}
            ["-ERR", ..] => return Err(line.trim().to_string()),
            // MSG <subject> <sid> <bytes>; HMSG <subject> <sid> <header bytes> <total bytes>
            ["MSG", _, _, len] | ["HMSG", _, _, _, len] => {
                let len: usize = len.parse().map_err(|_| format!("bad line {line:?}"))?;
                let mut payload = vec![0; len + 2];
                reader.read_exact(&mut payload).map_err(|e| e.to_string())?;
                let payload = String::from_utf8_lossy(&payload[..len]).into_owned();
                if words[0] == "HMSG" {
                    // Only status messages come with headers here: 503 = no responders.
                    return Err(format!(
                        "status reply: {}",
                        payload.lines().next().unwrap_or("")
                    ));
                }
                let reply: serde_json::Value =
                    serde_json::from_str(&payload).map_err(|e| format!("{e}: {payload}"))?;
                if reply.get("error").is_some() {
                    return Err(format!("JetStream error: {payload}"));
                }
                if reply["type"] != "io.nats.jetstream.api.v1.account_info_response" {
                    return Err(format!("unexpected reply: {payload}"));
                }
                return Ok(());
            }
            _ => return Err(format!("unexpected line {line:?}")),
        }
    }
}

/// A string in the config file's quoted form (JSON escaping is accepted there).
fn quote(value: &str) -> String {
    serde_json::to_string(value).expect("a string serializes")
}

fn nats_binary() -> PathBuf {
    let candidates = [
        std::env::var_os("MAILSLUICE_TEST_NATS_SERVER").map(PathBuf::from),
        Some("/usr/sbin/nats-server".into()),
        Some("/usr/bin/nats-server".into()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "nats-server not found (MAILSLUICE_TEST_NATS_SERVER, /usr/sbin/nats-server): \
                 run scripts/install-deps"
            )
        })
}
