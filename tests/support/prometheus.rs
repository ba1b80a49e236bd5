//! A real Prometheus server (Debian's `/usr/bin/prometheus`) scraping test targets, for
//! running the generated dashboards' expressions and alerting rules against real data.
//!
//! Each instance gets its own temporary directory (config, rule file, TSDB, log) and an
//! ephemeral loopback port, scrapes and evaluates rules every second by default, and is
//! killed on drop. Readiness is `GET /-/ready` answering 200.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::blocking::Client;
use serde_json::Value;
use tempfile::TempDir;

use super::{START_TIMEOUT, off_runtime, read_log, tail, wait_for};

/// What a Prometheus server is started with.
#[derive(Clone, Debug)]
pub struct PrometheusOptions {
    /// `job_name` of the one scrape config.
    pub job: String,
    /// `host:port` of each target; scraped at `/metrics` over plain HTTP.
    pub targets: Vec<String>,
    /// Content of the rule file (`rule_files`), if any.
    pub rules: Option<String>,
    /// `scrape_interval`, also the scrape timeout.
    pub scrape_interval: String,
    /// `evaluation_interval` of the rules.
    pub evaluation_interval: String,
}

impl Default for PrometheusOptions {
    /// Job `mailsluice`, no targets, no rules, scrape and evaluation every second.
    fn default() -> Self {
        PrometheusOptions {
            job: "mailsluice".into(),
            targets: Vec::new(),
            rules: None,
            scrape_interval: "1s".into(),
            evaluation_interval: "1s".into(),
        }
    }
}

/// A running Prometheus; killed on drop.
pub struct Prometheus {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    pub port: u16,
    child: Child,
    log_path: PathBuf,
    /// Holds prometheus.yml, the rule file, the TSDB and the log.
    dir: TempDir,
}

impl Prometheus {
    /// Starts a server and waits until it is ready; panics (with its log) if it is not within
    /// [`START_TIMEOUT`]. A port taken between choosing and binding it is retried with another.
    pub fn start(opts: PrometheusOptions) -> Prometheus {
        let mut last_log = String::new();
        for _ in 0..3 {
            match Self::try_start(&opts) {
                Ok(p) => return p,
                Err(log) if log.contains("address already in use") => last_log = log,
                Err(log) => panic!("prometheus did not start\n--- prometheus log ---\n{log}"),
            }
        }
        panic!("prometheus found no free port\n--- prometheus log ---\n{last_log}")
    }

    fn try_start(opts: &PrometheusOptions) -> Result<Prometheus, String> {
        let dir = tempfile::Builder::new()
            .prefix("mailsluice-prometheus-")
            .tempdir()
            .expect("create a temporary directory for Prometheus");
        let mut config = format!(
            "global:\n  scrape_interval: {i}\n  scrape_timeout: {i}\n  evaluation_interval: {e}\n",
            i = opts.scrape_interval,
            e = opts.evaluation_interval
        );
        if let Some(rules) = &opts.rules {
            let rules_path = dir.path().join("rules.yml");
            std::fs::write(&rules_path, rules).expect("write the rule file");
            config.push_str(&format!(
                "rule_files:\n  - {}\n",
                serde_json::to_string(&rules_path.display().to_string()).unwrap()
            ));
        }
        let targets: Vec<String> = opts
            .targets
            .iter()
            .map(|t| serde_json::to_string(t).unwrap())
            .collect();
        config.push_str(&format!(
            "scrape_configs:\n  - job_name: {}\n    static_configs:\n      - targets: [{}]\n",
            serde_json::to_string(&opts.job).unwrap(),
            targets.join(", ")
        ));
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let log_path = dir.path().join("prometheus.log");
        let log = std::fs::File::create(&log_path).expect("create the Prometheus log");
        let binary = std::env::var_os("MAILSLUICE_TEST_PROMETHEUS")
            .unwrap_or_else(|| "/usr/bin/prometheus".into());
        let mut child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1d")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("spawn {binary:?} (Debian package prometheus, scripts/install-deps): {e}")
            });
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("{url}/-/ready");
        let mut exited = None;
        let up = {
            let deadline = std::time::Instant::now() + START_TIMEOUT;
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    exited = Some(status);
                    break false;
                }
                if get_status(&ready) == Some(200) {
                    break true;
                }
                if std::time::Instant::now() >= deadline {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        if !up {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "exit status {exited:?}, ready: {up}\n{}",
                tail(&read_log(&log_path), 60)
            ));
        }
        Ok(Prometheus {
            url,
            port,
            child,
            log_path,
            dir,
        })
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        read_log(&self.log_path)
    }

    /// `GET /api/v1/<path>` with `params`; the whole JSON reply (`status`, `data` or
    /// `errorType`/`error`), whatever the HTTP status. Panics (with the log) when there is
    /// no JSON reply at all.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let url = format!("{}/api/v1/{path}", self.url);
        off_runtime(|| {
            let resp = client()
                .get(&url)
                .query(params)
                .send()
                .and_then(|r| r.json::<Value>());
            resp.unwrap_or_else(|e| {
                panic!(
                    "GET {url} {params:?}: {e}\n--- prometheus log ---\n{}",
                    tail(&self.log(), 40)
                )
            })
        })
    }

    /// An instant query: `Ok(result array)` on success, `Err(error text)` when Prometheus
    /// refuses or fails to evaluate the expression.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let reply = self.api("query", &[("query", expr)]);
        if reply["status"] != "success" {
            return Err(format!("{}: {}", reply["errorType"], reply["error"]));
        }
        match &reply["data"]["result"] {
            Value::Array(series) => Ok(series.clone()),
            // Scalar and string results: one value.
            other => Ok(vec![other.clone()]),
        }
    }

    /// Polls an instant query until `accept` takes its result, or panics with `what`, the
    /// last result and the log after `timeout`.
    pub fn wait_query(
        &self,
        what: &str,
        expr: &str,
        timeout: Duration,
        accept: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let last = std::cell::RefCell::new(None);
        wait_for(
            what,
            timeout,
            || {
                let result = self.query(expr);
                let ok = matches!(&result, Ok(r) if accept(r));
                let value = ok.then(|| result.clone().unwrap_or_default());
                *last.borrow_mut() = Some(result);
                value
            },
            || {
                format!(
                    "query {expr}: last result {:?}\n--- prometheus log ---\n{}",
                    last.borrow(),
                    tail(&self.log(), 20)
                )
            },
        )
    }

    /// The active (pending or firing) alerts, as `/api/v1/alerts` lists them.
    pub fn alerts(&self) -> Vec<Value> {
        let reply = self.api("alerts", &[]);
        reply["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every rule of every group, as `/api/v1/rules` lists them (with `health`,
    /// `lastError`, `state` and `lastEvaluation`).
    pub fn rules(&self) -> Vec<Value> {
        let reply = self.api("rules", &[]);
        reply["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// The scrape targets' health (`up`, `down`, `unknown`) and last error, by scrape URL.
    pub fn targets(&self) -> Vec<(String, String, String)> {
        let reply = self.api("targets", &[]);
        reply["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["scrapeUrl"].as_str().unwrap_or("").to_string(),
                    t["health"].as_str().unwrap_or("").to_string(),
                    t["lastError"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Nothing in its TSDB outlives the test.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

/// The HTTP status of `GET url`, or `None` when nothing answers.
fn get_status(url: &str) -> Option<u16> {
    off_runtime(|| {
        client()
            .get(url)
            .timeout(Duration::from_secs(2))
            .send()
            .ok()
            .map(|r| r.status().as_u16())
    })
}
