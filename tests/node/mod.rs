//! Runs the real `mailsluice` binary against the harness servers, and the message corpus
//! the end-to-end tests seed and check byte for byte.

#![allow(dead_code)]

pub mod corpus;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::NodeProcess;

pub const BIN: &str = env!("CARGO_BIN_EXE_mailsluice");

/// A node's working directory, config file and (once started) process.
pub struct Node {
    pub dir: TempDir,
    pub config: PathBuf,
    /// The address the running node listens on (`host:port`); it listens on a port the
    /// system picks, so this is empty until [`Node::start`] and changes with every start.
    pub http: String,
    /// `node.http_listen_file`: where the node reports that address.
    pub listen_file: PathBuf,
    child: Option<NodeProcess>,
    pub log_path: PathBuf,
    /// Environment for the node and CLI (secrets by reference).
    pub env: Vec<(String, String)>,
}

impl Node {
    /// Writes a config with `[node]` and `[tls]` filled in, followed by `body`
    /// (providers and sources).
    pub fn new(ca_pem: &Path, body: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let listen_file = dir.path().join("http.addr");
        let text = format!(
            "[node]\ndata_dir = \"{data}\"\nhttp_listen = \"127.0.0.1:0\"\nhttp_listen_file = \"{listen}\"\nsecret_key_file = \"{key}\"\ntoken_refresh_margin_secs = 1\nread_timeout_secs = 20\n\n[tls]\nmin_version = \"1.2\"\nextra_ca_file = \"{ca}\"\n\n{body}",
            data = dir.path().join("data").display(),
            listen = listen_file.display(),
            key = dir.path().join("secret.key").display(),
            ca = ca_pem.display(),
        );
        let config = dir.path().join("mailsluice.toml");
        std::fs::write(&config, text).expect("write config");
        let log_path = dir.path().join("node.log");
        Node {
            dir,
            config,
            http: String::new(),
            listen_file,
            child: None,
            log_path,
            env: Vec::new(),
        }
    }

    /// Writes `content` to a file in the node dir and returns its path.
    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).expect("write file");
        p
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("-c").arg(&self.config).args(args);
        cmd.current_dir(self.dir.path());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().expect("run mailsluice")
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "mailsluice {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `mailsluice run` with this node's config and environment, logging at `filter` to
    /// `log`.
    fn run_command(&self, log: std::fs::File, filter: &str) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("-c")
            .arg(&self.config)
            .arg("run")
            .current_dir(self.dir.path())
            .env("RUST_LOG", filter)
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the node and waits until it is ready (its reported address answers /readyz).
    pub fn start(&mut self) {
        let log = std::fs::File::create(&self.log_path).expect("log file");
        let cmd = self.run_command(log, "info,mailsluice=debug");
        let node = NodeProcess::start(cmd, &self.listen_file, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}; node log:\n{}", self.log()));
        self.http = node
            .http()
            .expect("a ready node has an address")
            .to_string();
        self.child = Some(node);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The admin token the node wrote on its first run (`data/api.token`).
    pub fn api_token(&self) -> String {
        crate::support::read_api_token(&self.dir.path().join("data").join("api.token"))
            .unwrap_or_else(|e| panic!("{e}; node log:\n{}", self.log()))
    }

    pub fn try_get(&self, path: &str) -> Option<String> {
        let url = format!("http://{}{}", self.http, path);
        let token = self.api_token();
        std::thread::scope(|s| {
            s.spawn(|| {
                reqwest::blocking::Client::new()
                    .get(url)
                    .bearer_auth(token)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .ok()?
                    .text()
                    .ok()
            })
            .join()
            .ok()
            .flatten()
        })
    }

    pub fn get(&self, path: &str) -> String {
        self.try_get(path)
            .unwrap_or_else(|| panic!("GET {path} failed; node log:\n{}", self.log()))
    }

    pub fn sources(&self) -> serde_json::Value {
        serde_json::from_str(&self.get("/api/sources")).expect("sources json")
    }

    pub fn source<'a>(sources: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
        sources
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name))
            .unwrap_or_else(|| panic!("no source {name} in {sources}"))
    }

    /// Polls until `probe` returns Some (there is no push channel out of the node).
    pub fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&Node) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        let mut delay = Duration::from_millis(20);
        loop {
            if let Some(v) = probe(self) {
                return v;
            }
            if start.elapsed() > timeout {
                panic!("timed out waiting for {what}; node log:\n{}", self.log());
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_millis(250));
        }
    }

    /// Waits until `source` has stored at least `n` messages in total.
    pub fn wait_stored(&self, source: &str, n: u64, timeout: Duration) {
        self.wait(
            &format!("{source} to store {n} messages"),
            timeout,
            |node| {
                let s = node.sources();
                let v = Node::source(&s, source)["stored_total"].as_u64()?;
                (v >= n).then_some(())
            },
        );
    }

    pub fn wait_state(&self, source: &str, state: &str, timeout: Duration) -> serde_json::Value {
        self.wait(&format!("{source} to be {state}"), timeout, |node| {
            let s = node.sources();
            let v = Node::source(&s, source).clone();
            (v["state"] == state).then_some(v)
        })
    }

    /// Sends `signal` (e.g. `"HUP"`) to the running node.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("node not running");
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(child.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    /// Replaces the config file's body (everything after `[tls]`) with `body`, keeping the
    /// `[node]` and `[tls]` sections this node was created with.
    pub fn rewrite_body(&self, body: &str) {
        let text = std::fs::read_to_string(&self.config).expect("read config");
        let head_end = text
            .find("\n\n[providers.")
            .or_else(|| text.find("\n\n[sources."))
            .unwrap_or(text.len());
        std::fs::write(&self.config, format!("{}\n\n{body}", &text[..head_end]))
            .expect("write config");
    }

    /// `POST path` on the node's API: (status, body).
    pub fn post(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}{}", self.http, path);
        let token = self.api_token();
        std::thread::scope(|s| {
            s.spawn(|| {
                let r = reqwest::blocking::Client::new()
                    .post(url)
                    .bearer_auth(token)
                    .header("Content-Type", "application/json")
                    .body("{}")
                    .timeout(Duration::from_secs(30))
                    .send()
                    .expect("POST");
                (r.status().as_u16(), r.text().unwrap_or_default())
            })
            .join()
            .expect("POST thread")
        })
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            match child.stop(Duration::from_secs(20)) {
                Ok((_, status)) => assert!(
                    status.success(),
                    "node exited with {status}; log:\n{}",
                    self.log()
                ),
                Err(e) => panic!("{e}; log:\n{}", self.log()),
            }
        }
    }
}

/// sha256 hex of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The sha256 of every file in an eml export directory, sorted.
pub fn export_hashes(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .expect("export dir")
        .map(|e| sha256(&std::fs::read(e.expect("entry").path()).expect("read")))
        .collect();
    out.sort();
    out
}

impl Node {
    /// Starts the node without waiting for it (for crash tests).
    pub fn spawn_raw(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let cmd = self.run_command(log, "info");
        self.http.clear();
        self.child = Some(NodeProcess::spawn(cmd, &self.listen_file).expect("spawn node"));
    }

    /// Waits until a node started with [`Node::spawn_raw`] serves its API (its store is
    /// open and its collectors start).
    pub fn wait_spawned(&mut self, timeout: Duration) {
        let child = self.child.as_mut().expect("a spawned node");
        let addr = child
            .wait_ready(timeout)
            .unwrap_or_else(|e| panic!("{e}; node log:\n{}", self.log()));
        self.http = addr.to_string();
    }

    /// SIGKILL: no shutdown, no flush, nothing finished.
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// sha256 of every stored message, from a jsonl export (node stopped; each call
    /// replaces the last export).
    pub fn stored_hashes(&self) -> Vec<String> {
        let out = self.dir.path().join("hashes.jsonl");
        self.cli_ok(&[
            "messages",
            "export",
            "--force",
            "--format",
            "jsonl",
            "--out",
            out.to_str().unwrap(),
        ]);
        let text = std::fs::read_to_string(&out).unwrap();
        text.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["sha256"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }
}

impl Node {
    /// Peak resident memory of the running node (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb * 1024)
    }
}

/// A store, connector and source for calling `ingest::run_cycle` directly (no node
/// process): an alice@example.test password source over `protocol` at localhost:`port`,
/// plus `extra` source keys.
pub fn direct_source(
    ca_pem: &Path,
    dir: &Path,
    protocol: &str,
    port: u16,
    extra: &str,
) -> (
    std::sync::Arc<mailsluice::store::Store>,
    mailsluice::net::Connector,
    mailsluice::config::SourceSettings,
) {
    let folders = if protocol == "imap" {
        "folders = [\"INBOX\"]\n"
    } else {
        ""
    };
    let toml = format!(
        "[node]\ndata_dir = \"{d}/data\"\nsecret_key_file = \"{d}/key\"\n\n[tls]\nextra_ca_file = \"{ca}\"\n\n[sources.s]\nprotocol = \"{protocol}\"\nhost = \"localhost\"\nport = {port}\nusername = \"alice@example.test\"\nauth = \"password\"\npassword_env = \"UNUSED\"\n{folders}{extra}\n",
        d = dir.display(),
        ca = ca_pem.display()
    );
    let settings = mailsluice::config::load_str(&toml, &Default::default()).expect("config");
    let store = std::sync::Arc::new(
        mailsluice::store::Store::open(&settings.node.data_dir, &settings.node.secret_key_file)
            .expect("store"),
    );
    let connector = mailsluice::net::Connector::new(
        &settings.tls,
        Duration::from_secs(10),
        Duration::from_secs(20),
    )
    .expect("connector");
    (store, connector, settings.sources["s"].clone())
}
