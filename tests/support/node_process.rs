//! The `mailsluice run` process, for the integration tests, the scenario benchmarks and the
//! demo: start it, learn the address it listens on, wait until it is ready, stop it.
//!
//! The node is configured with `node.http_listen = "127.0.0.1:0"` and a
//! `node.http_listen_file`. The system picks the port when the node binds its listener, so
//! no other process can take it in between (as it could a port picked here, released, and
//! bound by the node later). The node writes the address it got to the file, replacing it
//! atomically; [`NodeProcess::wait_ready`] reads it, then waits for `/readyz` to answer 200.
//!
//! Why a file under `tests/support` rather than a module of the library: it drives the binary
//! from outside, as an operator's program would, and uses nothing of the library. In the
//! library it would be public API, or a cargo feature every test, bench and example build
//! has to turn on, for code the product never runs. `tests/support` is already compiled into
//! the integration tests (`mod support;`), the scenarios bench and the demo (both through
//! `#[path = "../tests/support/mod.rs"]`), so this one file serves all three.
//!
//! Errors are `String`s naming what was waited for: the bench and the demo report them and
//! shut down cleanly; the tests panic with them and the node's log.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A running (or exited) `mailsluice run`. Killed with SIGKILL when dropped still running;
/// [`NodeProcess::stop`] is the graceful way.
pub struct NodeProcess {
    /// The node process.
    child: Child,
    /// Where the node reports the address it listens on (its `node.http_listen_file`).
    listen_file: PathBuf,
    /// The reported address, once [`NodeProcess::wait_ready`] has read it.
    http: Option<SocketAddr>,
}

impl NodeProcess {
    /// Spawns `command`: `mailsluice [-c FILE] run` with a configuration whose
    /// `node.http_listen_file` is `listen_file`. Does not wait for anything. A file left at
    /// `listen_file` by an earlier node is removed first, so the address read later is this
    /// node's.
    pub fn spawn(mut command: Command, listen_file: &Path) -> Result<NodeProcess, String> {
        match std::fs::remove_file(listen_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("remove {}: {e}", listen_file.display())),
        }
        let child = command
            .spawn()
            .map_err(|e| format!("spawn {:?}: {e}", command.get_program()))?;
        Ok(NodeProcess {
            child,
            listen_file: listen_file.to_path_buf(),
            http: None,
        })
    }

    /// [`NodeProcess::spawn`], then [`NodeProcess::wait_ready`].
    pub fn start(
        command: Command,
        listen_file: &Path,
        timeout: Duration,
    ) -> Result<NodeProcess, String> {
        let mut node = NodeProcess::spawn(command, listen_file)?;
        node.wait_ready(timeout)?;
        Ok(node)
    }

    /// Waits until the node has reported its address and `/readyz` answers 200; an error
    /// when the node exits first or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<SocketAddr, String> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        let mut last = String::from("no address reported yet");
        loop {
            if let Some(status) = self.exited() {
                return Err(format!("the node exited ({status}) before it was ready"));
            }
            let addr = match self.http {
                Some(addr) => Some(addr),
                None => self.reported_address(),
            };
            if let Some(addr) = addr {
                self.http = Some(addr);
                match readyz(addr) {
                    Ok(()) => return Ok(addr),
                    Err(why) => last = why,
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the node was not ready within {timeout:?} ({}: {last})",
                    self.listen_file.display()
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// The address in the listen file, when the node has written it. The node replaces the
    /// file atomically, so a file that exists holds a whole address.
    fn reported_address(&self) -> Option<SocketAddr> {
        std::fs::read_to_string(&self.listen_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The address the node listens on; `None` before [`NodeProcess::wait_ready`] succeeded.
    pub fn http(&self) -> Option<SocketAddr> {
        self.http
    }

    /// The node's stderr, when the command piped it (the demo shows the node's log lines).
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, once the node has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` to the node.
    pub fn signal(&self, signal: rustix::process::Signal) -> Result<(), String> {
        let pid = i32::try_from(self.pid())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or_else(|| format!("pid {} out of range", self.pid()))?;
        rustix::process::kill_process(pid, signal)
            .map_err(|e| format!("signal {signal:?} to the node (pid {pid:?}): {e}"))
    }

    /// SIGTERM, then waits up to `grace` for the exit: how long it took and the status. After
    /// `grace` the node is killed and that is an error.
    pub fn stop(&mut self, grace: Duration) -> Result<(Duration, ExitStatus), String> {
        let asked = Instant::now();
        if self.exited().is_none() {
            self.signal(rustix::process::Signal::TERM)?;
        }
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Ok((asked.elapsed(), status)),
                Ok(None) if asked.elapsed() < grace => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(None) => {
                    self.kill();
                    return Err(format!(
                        "the node did not exit within {grace:?} of SIGTERM (killed)"
                    ));
                }
                Err(e) => return Err(format!("wait for the node: {e}")),
            }
        }
    }

    /// SIGKILL: no shutdown, no flush. Waits for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if self.exited().is_none() {
            self.kill();
        }
    }
}

/// The admin token a node wrote to its `node.api_token_file` (by default `api.token` in
/// its data directory) on its first run: what `/api/` wants as `Authorization: Bearer`.
pub fn read_api_token(file: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("API token {}: {e}", file.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("API token {}: empty", file.display()));
    }
    Ok(token.to_owned())
}

/// Headers that carry the node's admin token (from [`read_api_token`]): for an HTTP
/// client that talks to `/api/`.
pub fn bearer(file: &Path) -> Result<reqwest::header::HeaderMap, String> {
    let token = read_api_token(file)?;
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|e| format!("API token {}: {e}", file.display()))?;
    value.set_sensitive(true);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(headers)
}

/// One `GET /readyz`: `Ok` on 200, else what came back. Plain HTTP/1.1 over a std socket, so
/// it works on any thread, inside an async runtime or not.
fn readyz(addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    write!(
        stream,
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("GET /readyz: {e}"))?;
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    let status_line = answer.lines().next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(format!("GET /readyz: {:?}", answer.trim()))
    }
}
