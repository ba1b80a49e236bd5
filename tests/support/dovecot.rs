//! A real Dovecot 2.3 (Debian's `dovecot-imapd`/`dovecot-pop3d`) per test.
//!
//! Each instance gets a temporary directory holding its generated `dovecot.conf` (nothing from
//! `/etc/dovecot` is read), runtime sockets (`run/`), state, log, TLS files and the users'
//! Maildirs, and four listeners on 127.0.0.1 with ports picked by the kernel:
//!
//! | field | service | TLS |
//! |---|---|---|
//! | `imaps_port` | IMAP | implicit |
//! | `imap_port` | IMAP | STARTTLS |
//! | `pop3s_port` | POP3 | implicit |
//! | `pop3_port` | POP3 | STLS |
//!
//! Authentication: `ssl = required`, `disable_plaintext_auth = yes`, mechanisms `PLAIN LOGIN
//! XOAUTH2 OAUTHBEARER`. Password users come from a passwd-file (PLAIN/LOGIN only); with
//! `oidc_introspection_url`, a `passdb oauth2` (XOAUTH2/OAUTHBEARER only) validates tokens by
//! RFC 7662 introspection (`introspection_mode = post`, client `dovecot`/`dovecot-secret`) and
//! requires the token's `email` to equal the SASL user; there is no auth cache, every login
//! introspects. User names are lower-cased by Dovecot (`auth_username_format =
//! %Lu`), so Maildir paths use the lower-cased name.
//!
//! Observed on Debian 12 / Dovecot 2.3.19.1 (running as root):
//! - **127.0.0.1 → 127.0.0.1 counts as secured.** A client connecting from the server's own
//!   address gets `AUTH=PLAIN` and a successful `LOGIN` on the plain IMAP port without
//!   STARTTLS, despite `ssl = required` (login log line says `secured`). From 127.0.0.2 the
//!   same port advertises `LOGINDISABLED` and `LOGIN` gets `NO [PRIVACYREQUIRED]`; POP3 `USER`
//!   gets `-ERR [AUTH] Plaintext authentication disallowed`. To prove a client never sends
//!   credentials before TLS, connect it from 127.0.0.2 (`wire::plain_from`) or check that every
//!   `Login:` line of [`Dovecot::log`] says `TLS`.
//! - A failed authentication answers after ~0.5 s even with `auth_failure_delay = 0`: the auth
//!   process flushes delayed failures on a fixed 500 ms timer in 2.3 (2 s with the default
//!   delay). The growing per-IP auth penalty is disabled (`anvil-auth-penalty` mode 0), so
//!   repeated failures do not slow down further.
//! - A rejected XOAUTH2 token gets a `+ <base64 {"status":"401","schemes":"bearer",
//!   "scope":"mail"}>` continuation; after the client's empty line the server answers `NO
//!   [AUTHENTICATIONFAILED]` (IMAP; POP3 `-ERR [AUTH]` per PROTOCOLS §6.3, not exercised
//!   here). A token revoked at the OIDC server fails at its next login.
//! - Start-up to all four ports answering takes ~0.05-0.1 s. A SIGTERM shutdown takes ~1 s
//!   (the master waits for its children), so `Drop` SIGKILLs the instance's process group.
//!
//! Privileges: as root (CI), Dovecot uses the Debian package's `dovecot`/`dovenull` users for
//! privilege separation and refuses uid 0 for mail, so mail is owned by `nobody:nogroup`;
//! the temporary directory is made world-traversable. As another user the rootless settings
//! are used (that user for everything, no chroots) and mail is owned by that user.

use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::certs::{Ca, ca_in};
use super::{START_TIMEOUT, read_log, spawn_watchdog, tail, wait_for};

/// How many times a start is retried when a picked port was taken before Dovecot bound it.
const START_ATTEMPTS: usize = 5;

/// What a Dovecot instance is started with.
#[derive(Clone, Debug)]
pub struct DovecotOptions {
    /// (user, password) for PLAIN/LOGIN. Neither may contain `:` or a line break.
    pub users: Vec<(String, String)>,
    /// The OIDC server's introspection endpoint; enables XOAUTH2/OAUTHBEARER.
    pub oidc_introspection_url: Option<String>,
    /// `ssl_min_protocol`: `"TLSv1.2"` or `"TLSv1.3"`.
    pub min_tls: &'static str,
    /// Appended verbatim to the generated dovecot.conf (e.g. `mail_max_userip_connections = 2`).
    pub extra_config: String,
}

impl Default for DovecotOptions {
    /// One password user `alice@example.test` / `alice-password`, no OAuth2, TLS 1.2+.
    fn default() -> Self {
        DovecotOptions {
            users: vec![("alice@example.test".into(), "alice-password".into())],
            oidc_introspection_url: None,
            min_tls: "TLSv1.2",
            extra_config: String::new(),
        }
    }
}

/// A running Dovecot; killed on drop (SIGKILL to its process group: nothing of a test's
/// mail server is worth a graceful shutdown).
pub struct Dovecot {
    pub imaps_port: u16,
    /// Plain IMAP, upgraded with STARTTLS.
    pub imap_port: u16,
    pub pop3s_port: u16,
    /// Plain POP3, upgraded with STLS.
    pub pop3_port: u16,
    /// The CA that signed the server certificate (what clients must trust).
    pub ca_pem: PathBuf,
    /// The same CA, for building rustls configurations.
    pub ca: Ca,
    /// Owner of the mail files (`nobody` when running as root).
    pub mail_uid: u32,
    pub mail_gid: u32,
    /// Spawn until all four ports answered.
    pub startup: Duration,
    /// The generated configuration (for `doveadm -c`).
    pub config_path: PathBuf,
    child: Child,
    /// `sh` that SIGKILLs Dovecot's process group when our end of its stdin closes, i.e. when
    /// this process dies without running `Drop` (Dovecot cannot watch its stdin itself).
    watchdog: Option<Child>,
    log_path: PathBuf,
    stderr_path: PathBuf,
    /// Maildir filename sequence: each seeded message sorts after the previous one.
    next_seq: AtomicU64,
    /// Who owns the mail files.
    identity: Identity,
    /// The greeting this instance answers with (readiness check on restart).
    greeting_id: String,
    dir: TempDir,
}

/// Who runs Dovecot and who owns the mail.
struct Identity {
    root: bool,
    user: String,
    group: String,
    mail_uid: u32,
    mail_gid: u32,
}

impl Dovecot {
    /// Starts an instance and waits until all four ports answer (the plain ones with this
    /// instance's own greeting); panics with Dovecot's log if it does not within
    /// [`START_TIMEOUT`].
    pub fn start(opts: DovecotOptions) -> Dovecot {
        let dovecot = dovecot_binary();
        let id = identity();
        let dir = tempfile::Builder::new()
            .prefix("mailsluice-dovecot-")
            .tempdir()
            .expect("create a temporary directory for Dovecot");
        let root = dir.path().to_path_buf();
        // Login, auth and mail processes run as other users and must reach their files.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))
            .expect("chmod the Dovecot dir");
        let tls_dir = root.join("tls");
        fs::create_dir(&tls_dir).expect("create tls/");
        let ca = ca_in(&tls_dir);
        let mail_dir = root.join("mail");
        fs::create_dir(&mail_dir).expect("create mail/");
        chown(&mail_dir, &id);

        let users_path = root.join("users");
        let mut users = String::new();
        for (user, password) in &opts.users {
            assert!(
                !format!("{user}{password}").contains([':', '\n', '\r']),
                "Dovecot test users and passwords may not contain ':' or line breaks: {user:?}"
            );
            writeln!(users, "{}:{{PLAIN}}{password}::::::", user.to_lowercase()).unwrap();
        }
        write_world_readable(&users_path, &users);

        let oauth2_path = root.join("dovecot-oauth2.conf.ext");
        if let Some(url) = &opts.oidc_introspection_url {
            let conf = format!(
                "introspection_url = {url}\n\
                 introspection_mode = post\n\
                 client_id = dovecot\n\
                 client_secret = dovecot-secret\n\
                 username_attribute = email\n\
                 timeout_msecs = 10000\n\
                 debug = yes\n"
            );
            write_world_readable(&oauth2_path, &conf);
        }

        let config_path = root.join("dovecot.conf");
        let log_path = root.join("dovecot.log");
        let stderr_path = root.join("dovecot.stderr");
        let spawned = Instant::now();
        let mut failures = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let [imaps_port, imap_port, pop3s_port, pop3_port] = free_ports();
            let greeting_id = format!("mailsluice-{imap_port}-{attempt}");
            let config = render_config(&Rendered {
                root: &root,
                ca: &ca,
                id: &id,
                opts: &opts,
                users_path: &users_path,
                oauth2_path: &oauth2_path,
                log_path: &log_path,
                greeting_id: &greeting_id,
                ports: [imaps_port, imap_port, pop3s_port, pop3_port],
            });
            fs::write(&config_path, config).expect("write dovecot.conf");
            let _ = fs::remove_file(&log_path);
            let stderr = fs::File::create(&stderr_path).expect("create dovecot.stderr");

            // Its own process group (pgid = its pid): Dovecot's children are in it too, so one
            // SIGKILL to the group stops the instance at once (SIGTERM takes ~1 s: the master
            // waits for its children), and a Ctrl-C at the terminal does not reach it.
            let mut child = Command::new(&dovecot)
                .process_group(0)
                .arg("-F")
                .arg("-c")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(stderr.try_clone().expect("dup the stderr file"))
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", dovecot.display()));

            match wait_ready(
                &mut child,
                &greeting_id,
                [imaps_port, imap_port, pop3s_port, pop3_port],
                spawned,
            ) {
                Ok(()) => {
                    let watchdog = spawn_watchdog(child.id(), "dovecot-watchdog");
                    return Dovecot {
                        imaps_port,
                        imap_port,
                        pop3s_port,
                        pop3_port,
                        ca_pem: ca.ca_pem.clone(),
                        ca,
                        mail_uid: id.mail_uid,
                        mail_gid: id.mail_gid,
                        startup: spawned.elapsed(),
                        config_path,
                        child,
                        watchdog,
                        log_path,
                        stderr_path,
                        next_seq: AtomicU64::new(0),
                        identity: id,
                        greeting_id,
                        dir,
                    };
                }
                Err(reason) => {
                    kill_group(&mut child);
                    let log = format!("{}{}", read_log(&stderr_path), read_log(&log_path));
                    let _ = writeln!(failures, "attempt {attempt}: {reason}\n{}", tail(&log, 40));
                    // Only a port lost to another process is worth another try.
                    if !log.contains("Address already in use") {
                        break;
                    }
                }
            }
        }
        panic!(
            "Dovecot did not start ({}):\n{failures}--- config ---\n{}",
            dovecot.display(),
            read_log(&config_path)
        );
    }

    /// The master's pid, which is also the process group of every Dovecot process (login,
    /// auth, mail): how a benchmark finds the server's processes to count their CPU time.
    pub fn process_group(&self) -> u32 {
        self.child.id()
    }

    /// The log so far (`log_path`, plus anything the master printed on stderr).
    pub fn log(&self) -> String {
        let stderr = read_log(&self.stderr_path);
        let log = read_log(&self.log_path);
        if stderr.trim().is_empty() {
            log
        } else {
            format!("{stderr}{log}")
        }
    }

    /// `Login:` lines of the log so far (one per successful login, with `method=`, and `TLS`
    /// or `secured`). Log lines reach the file through Dovecot's log process, possibly after
    /// the client saw the reply: use [`Self::wait_for_logins`] right after a login.
    pub fn login_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("-login: Info: Login: "))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until the log holds at least `n` `Login:` lines and returns them all.
    pub fn wait_for_logins(&self, n: usize) -> Vec<String> {
        self.wait_for_log(&format!("{n} Login: lines"), |_| {
            let lines = self.login_lines();
            (lines.len() >= n).then_some(lines)
        })
    }

    /// Waits (up to 10 s) until `probe` finds what it wants in the log; panics with the log.
    pub fn wait_for_log<T>(&self, what: &str, mut probe: impl FnMut(&str) -> Option<T>) -> T {
        wait_for(
            what,
            Duration::from_secs(10),
            || probe(&self.log()),
            || format!("--- dovecot log ---\n{}", tail(&self.log(), 80)),
        )
    }

    /// The user's Maildir root (INBOX). `user` is lower-cased as Dovecot does.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.dir
            .path()
            .join("mail")
            .join(user.to_lowercase())
            .join("Maildir")
    }

    /// The Maildir++ directory of `folder` (`"INBOX"` or a name with `/` as hierarchy
    /// separator, e.g. `"Archive/2024"` -> `.Archive.2024`).
    pub fn folder_dir(&self, user: &str, folder: &str) -> PathBuf {
        if folder.eq_ignore_ascii_case("INBOX") {
            return self.maildir(user);
        }
        assert!(
            folder.is_ascii()
                && !folder.contains(['.', '\n', '\r', '"', '\\', '%', '*'])
                && !folder.is_empty(),
            "seed folders must be plain ASCII names with '/' as separator: {folder:?}"
        );
        self.maildir(user)
            .join(format!(".{}", folder.replace('/', ".")))
    }

    /// Writes `messages` into the user's INBOX; see [`Self::seed_folder`].
    pub fn seed(&self, user: &str, messages: &[Vec<u8>]) {
        self.seed_folder(user, "INBOX", messages);
    }

    /// Writes `messages` (exact bytes) into `folder` of `user`, creating the Maildir as
    /// needed. Each file is written in `tmp/` and renamed into `cur/` (never half-visible),
    /// owned by the mail user, unflagged. File names start with an increasing sequence number
    /// where Maildir names have their timestamp; Dovecot sorts new files by that number before
    /// assigning UIDs, so UIDs ascend in slice order and after every earlier seed of this
    /// instance. Works while users are connected: the next sync picks the files up.
    pub fn seed_folder(&self, user: &str, folder: &str, messages: &[Vec<u8>]) {
        let id = &self.identity;
        let home = self.dir.path().join("mail").join(user.to_lowercase());
        let maildir = self.maildir(user);
        let target = self.folder_dir(user, folder);
        for dir in [&home, &maildir, &target] {
            ensure_dir(dir, id);
        }
        for sub in ["cur", "new", "tmp"] {
            ensure_dir(&maildir.join(sub), id);
            ensure_dir(&target.join(sub), id);
        }
        if target != maildir {
            let marker = target.join("maildirfolder");
            if !marker.exists() {
                write_owned(&marker, b"", id);
            }
        }
        for message in messages {
            // Sequence numbers from 10^9 keep the digit count fixed and the "timestamps" in
            // the past; Dovecot compares them numerically.
            let seq = 1_000_000_000 + self.next_seq.fetch_add(1, Ordering::SeqCst);
            let name = format!(
                "{seq}.M0P{}Q{seq}.mailsluice,S={}",
                std::process::id(),
                message.len()
            );
            let tmp = target.join("tmp").join(&name);
            write_owned(&tmp, message, id);
            let cur = target.join("cur").join(format!("{name}:2,"));
            fs::rename(&tmp, &cur).unwrap_or_else(|e| panic!("rename into {}: {e}", cur.display()));
        }
    }

    /// Message files currently in `folder` (`cur/` and `new/`), sorted by name (= seed order).
    pub fn message_files(&self, user: &str, folder: &str) -> Vec<PathBuf> {
        let target = self.folder_dir(user, folder);
        let mut files: Vec<PathBuf> = ["cur", "new"]
            .iter()
            .filter_map(|sub| fs::read_dir(target.join(sub)).ok())
            .flatten()
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .collect();
        files.sort();
        files
    }

    /// Runs `doveadm -c <this config> <args>` and returns its stdout; panics on failure.
    /// E.g. `["mailbox", "status", "-u", "alice@example.test", "messages", "INBOX"]`.
    pub fn doveadm(&self, args: &[&str]) -> String {
        let out = Command::new("doveadm")
            .arg("-c")
            .arg(&self.config_path)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run doveadm: {e}"));
        assert!(
            out.status.success(),
            "doveadm {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Dovecot {
    /// Kills the instance (SIGKILL to its process group: every session drops) and starts it
    /// again from the same config, on the same ports, with the same mail.
    pub fn restart(&mut self) {
        kill_group(&mut self.child);
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let spawned = Instant::now();
        let stderr = fs::File::create(&self.stderr_path).expect("create dovecot.stderr");
        let mut child = Command::new(dovecot_binary())
            .process_group(0)
            .arg("-F")
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("dup the stderr file"))
            .stderr(stderr)
            .spawn()
            .expect("respawn dovecot");
        let ports = [
            self.imaps_port,
            self.imap_port,
            self.pop3s_port,
            self.pop3_port,
        ];
        if let Err(reason) = wait_ready(&mut child, &self.greeting_id, ports, spawned) {
            kill_group(&mut child);
            panic!(
                "Dovecot did not restart: {reason}\n{}",
                tail(&read_log(&self.log_path), 40)
            );
        }
        self.watchdog = spawn_watchdog(child.id(), "dovecot-watchdog");
        self.child = child;
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // One signal for the master, its children and the watchdog (all in the group); the
        // group id is the master's pid, which stays ours until `wait` reaps it.
        kill_group(&mut self.child);
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.wait();
        }
    }
}

/// SIGKILLs the process group led by `child` (which was spawned with `process_group(0)`) and
/// reaps `child`.
fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

struct Rendered<'a> {
    root: &'a Path,
    ca: &'a Ca,
    id: &'a Identity,
    opts: &'a DovecotOptions,
    users_path: &'a Path,
    oauth2_path: &'a Path,
    log_path: &'a Path,
    greeting_id: &'a str,
    /// imaps, imap, pop3s, pop3.
    ports: [u16; 4],
}

fn render_config(r: &Rendered<'_>) -> String {
    let root = r.root.display();
    let [imaps, imap, pop3s, pop3] = r.ports;
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# Generated by tests/support/dovecot.rs for one test; nothing from /etc/dovecot is read.\n\
         base_dir = {root}/run\n\
         state_dir = {root}/state\n\
         instance_name = {greeting_id}\n\
         log_path = {log}\n\
         protocols = imap pop3\n\
         listen = 127.0.0.1\n\
         # Identifies this instance: a greeting from another process on a recycled port is not ours.\n\
         login_greeting = Dovecot ready ({greeting_id}).\n\
         ssl = required\n\
         ssl_cert = <{cert}\n\
         ssl_key = <{key}\n\
         ssl_min_protocol = {min_tls}\n\
         disable_plaintext_auth = yes\n\
         auth_mechanisms = plain login xoauth2 oauthbearer\n\
         # Failures still take ~0.5 s (2.3 flushes them on a 500 ms timer), instead of 2 s.\n\
         auth_failure_delay = 0\n\
         auth_verbose = yes\n\
         auth_debug = yes\n\
         mail_debug = yes\n\
         mail_location = maildir:{root}/mail/%u/Maildir\n\
         first_valid_uid = {uid}\n\
         first_valid_gid = {gid}\n\
         namespace inbox {{\n  inbox = yes\n  separator = /\n}}\n\
         passdb {{\n  driver = passwd-file\n  mechanisms = plain login\n  args = scheme=PLAIN username_format=%u {users}\n}}",
        greeting_id = r.greeting_id,
        log = r.log_path.display(),
        cert = r.ca.cert_pem.display(),
        key = r.ca.key_pem.display(),
        min_tls = r.opts.min_tls,
        uid = r.id.mail_uid,
        gid = r.id.mail_gid,
        users = r.users_path.display(),
    );
    if r.opts.oidc_introspection_url.is_some() {
        let _ = writeln!(
            c,
            "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {}\n}}",
            r.oauth2_path.display()
        );
    }
    let _ = writeln!(
        c,
        "userdb {{\n  driver = static\n  args = uid={uid} gid={gid} home={root}/mail/%u\n}}",
        uid = r.id.mail_uid,
        gid = r.id.mail_gid,
    );
    // Without root there is no privilege separation: one user, no chroots (Dovecot's
    // "rootless installation").
    let chroot = if r.id.root { "" } else { "  chroot =\n" };
    if !r.id.root {
        let _ = writeln!(
            c,
            "default_internal_user = {user}\ndefault_internal_group = {group}\ndefault_login_user = {user}\n\
             service auth-worker {{\n  user = $default_internal_user\n}}",
            user = r.id.user,
            group = r.id.group,
        );
    }
    let _ = writeln!(
        c,
        "service anvil {{\n{chroot}  # mode 0: auth cannot reach anvil, so the per-IP auth penalty is off.\n  unix_listener anvil-auth-penalty {{\n    mode = 0\n  }}\n}}\n\
         service imap-login {{\n{chroot}  inet_listener imap {{\n    port = {imap}\n  }}\n  inet_listener imaps {{\n    port = {imaps}\n    ssl = yes\n  }}\n}}\n\
         service pop3-login {{\n{chroot}  inet_listener pop3 {{\n    port = {pop3}\n  }}\n  inet_listener pop3s {{\n    port = {pop3s}\n    ssl = yes\n  }}\n}}"
    );
    c.push_str(&r.opts.extra_config);
    c.push('\n');
    c
}

/// Waits until the plain ports greet with this instance's greeting and the TLS ports accept.
/// Dovecot's master binds every listener before it forks any login process, so our greeting
/// on one port means all four are ours.
fn wait_ready(
    child: &mut Child,
    greeting_id: &str,
    ports: [u16; 4],
    spawned: Instant,
) -> Result<(), String> {
    let [imaps, imap, pop3s, pop3] = ports;
    let deadline = spawned + START_TIMEOUT;
    let mut pending: Vec<(u16, Option<&str>)> = vec![
        (imap, Some("* OK")),
        (pop3, Some("+OK")),
        (imaps, None),
        (pop3s, None),
    ];
    let mut pause = Duration::from_millis(5);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("dovecot exited with {status}"));
        }
        pending.retain(|&(port, greeting)| !answers(port, greeting, greeting_id));
        if pending.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "ports {pending:?} not ready after {START_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Whether `port` accepts a connection and, for a plain port, greets with our greeting.
fn answers(port: u16, greeting: Option<&str>, greeting_id: &str) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let Some(prefix) = greeting else { return true };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stream), &mut line);
    line.starts_with(prefix) && line.contains(greeting_id)
}

/// Four distinct free ports (bound at the same time, then released for Dovecot to bind).
///
/// Not race-free, and it cannot be made so here: Dovecot takes no port 0 it would report
/// (its listeners are `inet_listener { port = N }`, and nothing tells which port it got), and
/// the other way round, handing it sockets bound here, works only through systemd socket
/// activation (four inherited descriptors from 3 on, `LISTEN_FDS`, and a `LISTEN_PID` that
/// must be Dovecot's own), and `std::process::Command` passes no descriptor beyond the three
/// standard ones without `unsafe` code between fork and exec. So another process can take a
/// port between its release and Dovecot's bind; `start` then sees "Address already in use"
/// in Dovecot's log and tries again with fresh ports.
fn free_ports() -> [u16; 4] {
    let listeners: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind an ephemeral port"))
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect();
    [ports[0], ports[1], ports[2], ports[3]]
}

fn dovecot_binary() -> PathBuf {
    let candidates = [
        std::env::var_os("MAILSLUICE_TEST_DOVECOT").map(PathBuf::from),
        Some("/usr/sbin/dovecot".into()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("dovecot not found at /usr/sbin/dovecot: run scripts/install-deps")
        })
}

/// Who we are (from /proc/self, no libc) and who should own the mail.
fn identity() -> Identity {
    let me = fs::metadata("/proc/self").expect("stat /proc/self");
    if me.uid() == 0 {
        for required in ["dovecot", "dovenull"] {
            assert!(
                getent("passwd", required).is_some(),
                "user {required:?} is missing (created by the dovecot-core package): run scripts/install-deps"
            );
        }
        let nobody = getent("passwd", "nobody").expect("user nobody exists");
        let uid: u32 = nobody[2].parse().expect("numeric uid");
        let gid: u32 = nobody[3].parse().expect("numeric gid");
        let group = getent("group", &gid.to_string())
            .map(|g| g[0].clone())
            .unwrap_or_else(|| gid.to_string());
        Identity {
            root: true,
            user: "nobody".into(),
            group,
            mail_uid: uid,
            mail_gid: gid,
        }
    } else {
        let user = getent("passwd", &me.uid().to_string())
            .map(|p| p[0].clone())
            .expect("the current uid has a passwd entry (Dovecot needs a user name)");
        let group = getent("group", &me.gid().to_string())
            .map(|g| g[0].clone())
            .expect("the current gid has a group entry");
        Identity {
            root: false,
            user,
            group,
            mail_uid: me.uid(),
            mail_gid: me.gid(),
        }
    }
}

/// `getent <db> <key>`, split on ':'.
fn getent(db: &str, key: &str) -> Option<Vec<String>> {
    let out = Command::new("getent")
        .arg(db)
        .arg(key)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout);
    Some(line.trim_end().split(':').map(str::to_owned).collect())
}

fn chown(path: &Path, id: &Identity) {
    if id.root {
        std::os::unix::fs::chown(path, Some(id.mail_uid), Some(id.mail_gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

fn ensure_dir(dir: &Path, id: &Identity) {
    if !dir.is_dir() {
        fs::create_dir(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).expect("chmod a Maildir dir");
        chown(dir, id);
    }
}

fn write_owned(path: &Path, contents: &[u8], id: &Identity) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod a message file");
    chown(path, id);
}

fn write_world_readable(path: &Path, contents: &str) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).expect("chmod a config file");
}
