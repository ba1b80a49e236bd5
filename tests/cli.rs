//! The command line's contract: exit codes and error text for config problems, what `run`
//! tells the operator, and how programs learn where a node listens.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::NodeProcess;

const BIN: &str = env!("CARGO_BIN_EXE_mailsluice");

fn run(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("MAILSLUICE_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run mailsluice");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_lists_every_error_with_its_path_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        "[tls]\nmin_version = \"1.1\"\n\n[sources.support]\nprotocol = \"imap\"\nhost = \"mail.example\"\nsecurity = \"plain\"\nusername = \"a@example\"\nauth = \"oauth2\"\nprovider = \"o365x\"\npassword = \"hunter2\"\n",
    )
    .unwrap();
    let (code, _out, err) = run(
        dir.path(),
        &["-c", cfg.to_str().unwrap(), "check-config"],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    for needle in [
        "tls.min_version",
        "sources.support.security",
        "sources.support.provider: no provider named \"o365x\"",
        "sources.support.password",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(!err.contains("hunter2"), "inline secret echoed:\n{err}");
}

#[test]
fn shipped_example_config_passes_check_config_when_its_secrets_resolve() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let example = root.join("config/mailsluice.toml");
    let dir = tempfile::tempdir().unwrap();
    // Without its secrets: a usage error naming the missing references.
    let (code, _, err) = run(
        dir.path(),
        &["-c", example.to_str().unwrap(), "check-config"],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("_env") || err.contains("_file"), "{err}");
    // With them: ok.
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    std::fs::write(
        dir.path().join("secrets/google_client_secret"),
        "g-secret\n",
    )
    .unwrap();
    let (code, out, err) = run(
        dir.path(),
        &["-c", example.to_str().unwrap(), "check-config"],
        &[
            ("O365_SECRET", "s1"),
            ("ALERTS_IMAP_PASSWORD", "p1"),
            (
                "HELPDESK_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 sink(s)"), "{out}");
    assert!(out.contains("ok"), "{out}");
}

#[test]
fn unknown_source_for_import_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\ndata_dir = \"{}\"\nsecret_key_file = \"{}\"\n",
            dir.path().join("d").display(),
            dir.path().join("k").display()
        ),
    )
    .unwrap();
    let tok = dir.path().join("t");
    std::fs::write(&tok, "x").unwrap();
    let (code, _, err) = run(
        dir.path(),
        &[
            "-c",
            cfg.to_str().unwrap(),
            "tokens",
            "import",
            "nope",
            "--refresh-token-file",
            tok.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no source named \"nope\""), "{err}");
}

#[test]
fn rotate_key_refuses_while_a_node_holds_the_store_and_works_offline() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\ndata_dir = \"{}\"\nsecret_key_file = \"{}\"\n",
            dir.path().join("d").display(),
            dir.path().join("k").display()
        ),
    )
    .unwrap();
    let (code, out, err) = run(
        dir.path(),
        &["-c", cfg.to_str().unwrap(), "secrets", "rotate-key"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("re-encrypted 0 token record(s)"), "{out}");
    let key_before = std::fs::read_to_string(dir.path().join("k")).unwrap();
    // Hold the store like a running node would.
    let store =
        mailsluice::store::Store::open(&dir.path().join("d"), &dir.path().join("k")).unwrap();
    let (code, _, err) = run(
        dir.path(),
        &["-c", cfg.to_str().unwrap(), "secrets", "rotate-key"],
        &[],
    );
    drop(store);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("stop it"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("k")).unwrap(),
        key_before
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("k"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "key file mode {mode:o}");
        let mode = std::fs::metadata(dir.path().join("d"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "data dir mode {mode:o}");
    }
}

fn write_config(dir: &std::path::Path, providers_and_sources: &str) -> std::path::PathBuf {
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\ndata_dir = \"{}\"\nsecret_key_file = \"{}\"\n\n{providers_and_sources}",
            dir.join("d").display(),
            dir.join("k").display()
        ),
    )
    .unwrap();
    cfg
}

const GMAIL: &str = "[providers.g]\nkind = \"gmail\"\nclient_id = \"id.apps.example\"\nclient_secret_env = \"G_SECRET\"\n\n[sources.mail]\nprotocol = \"imap\"\nhost = \"imap.gmail.com\"\nusername = \"a@gmail.example\"\nauth = \"oauth2\"\nprovider = \"g\"\n";

#[test]
fn gmail_device_flow_is_refused_up_front_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), GMAIL);
    let (code, _, err) = run(
        dir.path(),
        &["-c", cfg.to_str().unwrap(), "authorize", "mail", "--device"],
        &[("G_SECRET", "x")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("Google does not allow Gmail scopes"), "{err}");
}

#[test]
fn browser_authorize_times_out_cleanly_and_asks_gmail_for_offline_access() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), GMAIL);
    let (code, out, err) = run(
        dir.path(),
        &[
            "-c",
            cfg.to_str().unwrap(),
            "authorize",
            "mail",
            "--no-browser",
            "--timeout-secs",
            "1",
        ],
        &[("G_SECRET", "x")],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("no redirect arrived within 1s"), "{err}");
    let url = out
        .lines()
        .find(|l| l.starts_with("https://"))
        .expect("URL printed");
    for needle in [
        "https://accounts.google.com/o/oauth2/v2/auth?",
        "access_type=offline",
        "prompt=consent",
        "scope=https%3A%2F%2Fmail.google.com%2F",
        "code_challenge_method=S256",
        "login_hint=a%40gmail.example",
    ] {
        assert!(url.contains(needle), "{needle} missing in {url}");
    }
    assert!(
        !out.contains("\"x\"") && !url.contains("client_secret"),
        "secret in the URL"
    );
}

/// The soft and hard "Max open files" of process `pid`, from /proc.
#[cfg(target_os = "linux")]
fn open_files_limits(pid: &str) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut values = line["Max open files".len()..].split_whitespace();
    Some((values.next()?.parse().ok()?, values.next()?.parse().ok()?))
}

/// Every idling source holds a connection, so `run` raises its soft open-files limit to the
/// hard one: started with a soft limit of 256 (as a service manager might), it ends up with
/// the hard limit it inherited.
#[cfg(target_os = "linux")]
#[test]
fn run_raises_the_open_files_limit_to_the_hard_limit() {
    let (_, hard) = open_files_limits("self").expect("our own limits");
    if hard <= 256 {
        eprintln!("hard open-files limit {hard}: nothing to raise to; skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\ndata_dir = \"{}\"\nsecret_key_file = \"{}\"\nhttp_listen = \"127.0.0.1:0\"\n",
            dir.path().join("d").display(),
            dir.path().join("k").display()
        ),
    )
    .unwrap();
    // The shell lowers the soft limit only, then becomes the node (same pid).
    let mut node = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -S -n 256 && exec "$0" "$@""#)
        .arg(BIN)
        .args(["-c", cfg.to_str().unwrap(), "run"])
        .current_dir(dir.path())
        .env_remove("MAILSLUICE_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the node");
    let pid = node.id().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = None;
    while std::time::Instant::now() < deadline {
        seen = open_files_limits(&pid);
        if seen.is_some_and(|(soft, _)| soft == hard) || node.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = node.kill();
    let _ = node.wait();
    assert_eq!(
        seen,
        Some((hard, hard)),
        "the node's (soft, hard) open-files limits"
    );
}

/// A node without sources, listening on a port the system picks and reporting it in
/// `http.addr`: (config path, listen file).
fn any_port_config(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let listen_file = dir.join("run").join("http.addr");
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\ndata_dir = \"{}\"\nsecret_key_file = \"{}\"\nhttp_listen = \"127.0.0.1:0\"\nhttp_listen_file = \"{}\"\n",
            dir.join("d").display(),
            dir.join("k").display(),
            listen_file.display()
        ),
    )
    .unwrap();
    (cfg, listen_file)
}

/// `run --once` with the default log filter tells the operator what the node did, without
/// the HTTP server's own start-up and shut-down lines.
#[test]
fn run_once_logs_the_operators_lines_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, _) = any_port_config(dir.path());
    let out = Command::new(BIN)
        .args(["-c", cfg.to_str().unwrap(), "run", "--once"])
        .current_dir(dir.path())
        .env_remove("MAILSLUICE_CONFIG")
        .env_remove("MAILSLUICE_LOG")
        .env_remove("RUST_LOG")
        .output()
        .expect("run mailsluice");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for line in ["collecting every source once", "stopped"] {
        assert!(err.contains(line), "{line:?} missing in:\n{err}");
    }
    for noise in [
        "starting 1 workers",
        "Actix runtime found",
        "shutting down idle worker",
    ] {
        assert!(!err.contains(noise), "{noise:?} in:\n{err}");
    }
}

/// On port 0 the node reports the address it got: in its log as a field, and in
/// node.http_listen_file (0600) for programs and for the commands run beside it; the file
/// goes when the node stops.
#[test]
fn run_on_port_0_reports_its_address_to_programs_and_commands() {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, listen_file) = any_port_config(dir.path());
    let log_path = dir.path().join("node.log");
    let mut cmd = Command::new(BIN);
    cmd.args(["-c", cfg.to_str().unwrap(), "run"])
        .current_dir(dir.path())
        .env_remove("MAILSLUICE_CONFIG")
        .env("MAILSLUICE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
    let mut node = NodeProcess::start(cmd, &listen_file, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", support::read_log(&log_path)));
    let addr = node.http().expect("address");
    assert_ne!(addr.port(), 0);
    assert_eq!(
        std::fs::read_to_string(&listen_file).unwrap(),
        format!("{addr}\n")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&listen_file)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "listen file mode {mode:o}");
    }
    let log = support::read_log(&log_path);
    assert!(log.contains(&format!("http={addr}")), "{log}");
    // The store is locked by the node: `status` finds it through the listen file.
    let (code, out, err) = run(dir.path(), &["-c", cfg.to_str().unwrap(), "status"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("SOURCE"), "{out}");
    let (_, status) = node.stop(Duration::from_secs(20)).unwrap();
    assert!(status.success(), "{}", support::read_log(&log_path));
    assert!(!listen_file.exists(), "listen file left behind");
    // Without a node the same command reads the store itself.
    let (code, out, err) = run(dir.path(), &["-c", cfg.to_str().unwrap(), "status"], &[]);
    assert_eq!(code, 0, "{out}{err}");
}

/// Port 0 without a listen file: a command that needs the running node says what to set.
#[test]
fn reload_on_port_0_without_a_listen_file_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[node]\n", "[node]\nhttp_listen = \"127.0.0.1:0\"\n");
    std::fs::write(&cfg, text).unwrap();
    let (code, _, err) = run(dir.path(), &["-c", cfg.to_str().unwrap(), "reload"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("node.http_listen_file"), "{err}");
}

/// A config whose store holds two IMAP messages (ids 1 and 2), filled without a server.
fn config_with_two_stored_messages(dir: &std::path::Path) -> std::path::PathBuf {
    use mailsluice::store::{Location, NewMessage, Store};
    let cfg = write_config(dir, "");
    let store = Store::open(&dir.join("d"), &dir.join("k")).unwrap();
    for (uid, raw) in EXPORTED.iter().enumerate() {
        store
            .store(NewMessage {
                source: "mail".into(),
                location: Location::Imap {
                    folder: "INBOX".into(),
                    uidvalidity: 1,
                    uid: uid as u32 + 1,
                },
                raw: raw.to_vec(),
                internal_date: None,
                parsed: mailsluice::parse::parse(raw),
                post_action: false,
                rematch: false,
            })
            .unwrap();
    }
    store.flush_sync().unwrap();
    cfg
}

const EXPORTED: [&[u8]; 2] = [
    b"Subject: one\r\nMessage-ID: <1@example>\r\n\r\nfirst\r\n",
    b"Subject: two\r\nMessage-ID: <2@example>\r\n\r\nsecond\r\n",
];

#[cfg(unix)]
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// Another user on the machine reading exported mail: every file an export writes is 0600
/// and every directory it creates 0700, whatever the format.
#[cfg(unix)]
#[test]
fn export_writes_files_only_their_owner_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_two_stored_messages(dir.path());
    let c = cfg.to_str().unwrap();
    let out = dir.path().join("exports/eml");
    let (code, stdout, err) = run(
        dir.path(),
        &[
            "-c",
            c,
            "messages",
            "export",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("exported 2 message(s)"), "{stdout}");
    for created in [dir.path().join("exports"), out.clone()] {
        assert_eq!(mode_of(&created), 0o700, "{}", created.display());
    }
    for (id, raw) in [(1, EXPORTED[0]), (2, EXPORTED[1])] {
        let file = out.join(format!("{id}.eml"));
        assert_eq!(std::fs::read(&file).unwrap(), raw, "{}", file.display());
        assert_eq!(mode_of(&file), 0o600, "{}", file.display());
    }
    for format in ["mbox", "jsonl"] {
        let file = dir.path().join(format!("all.{format}"));
        let (code, stdout, err) = run(
            dir.path(),
            &[
                "-c",
                c,
                "messages",
                "export",
                "--format",
                format,
                "--out",
                file.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(code, 0, "{stdout}{err}");
        assert!(std::fs::read(&file).unwrap().len() > 40, "{format} empty");
        assert_eq!(mode_of(&file), 0o600, "{format}");
    }
}

/// Clobbering: an export does not overwrite a file that exists (exit 2, the file named, its
/// content kept) unless --force is given; with --force the file is replaced and made 0600.
#[cfg(unix)]
#[test]
fn export_refuses_to_overwrite_a_file_unless_forced() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_two_stored_messages(dir.path());
    let c = cfg.to_str().unwrap();
    let out = dir.path().join("eml");
    std::fs::create_dir(&out).unwrap();
    let old = out.join("1.eml");
    std::fs::write(&old, "kept").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    let args = [
        "-c",
        c,
        "messages",
        "export",
        "--out",
        out.to_str().unwrap(),
    ];
    let (code, _, err) = run(dir.path(), &args, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("{} exists; not overwritten", old.display()))
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "kept");

    let (code, stdout, err) = run(dir.path(), &[&args[..], &["--force"]].concat(), &[]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert_eq!(std::fs::read(&old).unwrap(), EXPORTED[0]);
    assert_eq!(mode_of(&old), 0o600);

    // The same for a single-file format.
    let mbox = dir.path().join("all.mbox");
    std::fs::write(&mbox, "kept").unwrap();
    let args = [
        "-c",
        c,
        "messages",
        "export",
        "--format",
        "mbox",
        "--out",
        mbox.to_str().unwrap(),
    ];
    let (code, _, err) = run(dir.path(), &args, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&mbox.display().to_string()), "{err}");
    assert_eq!(std::fs::read_to_string(&mbox).unwrap(), "kept");
    let (code, stdout, err) = run(dir.path(), &[&args[..], &["--force"]].concat(), &[]);
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(std::fs::read_to_string(&mbox).unwrap().starts_with("From "));
}

/// A symbolic link planted at an export file's name (say by another user, in a shared
/// directory) pointing at a file of ours: never written through, with or without --force,
/// and a dangling one does not create its target. With --force the link is refused, not
/// replaced; a second hard link to a file of ours is refused the same way.
#[cfg(unix)]
#[test]
fn export_never_writes_through_a_planted_link() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_two_stored_messages(dir.path());
    let c = cfg.to_str().unwrap();
    let out = dir.path().join("eml");
    std::fs::create_dir(&out).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, out.join("1.eml")).unwrap();
    let absent = dir.path().join("absent");
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::os::unix::fs::symlink(&absent, other.join("1.eml")).unwrap();
    for force in [false, true] {
        for target in [&out, &other] {
            let mut args = vec![
                "-c",
                c,
                "messages",
                "export",
                "--out",
                target.to_str().unwrap(),
            ];
            if force {
                args.push("--force");
            }
            let (code, _, err) = run(dir.path(), &args, &[]);
            assert_eq!(code, 2, "force={force}: {err}");
            assert!(
                err.contains(&format!(
                    "{} is a symbolic link",
                    target.join("1.eml").display()
                )),
                "force={force}: {err}"
            );
            assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
            assert!(
                !absent.exists(),
                "force={force}: the dangling link's target was created"
            );
            assert!(
                std::fs::symlink_metadata(target.join("1.eml"))
                    .unwrap()
                    .file_type()
                    .is_symlink()
            );
        }
    }
    // A single-file format behind a link.
    let mbox = dir.path().join("all.mbox");
    std::os::unix::fs::symlink(&victim, &mbox).unwrap();
    for force in [&[][..], &["--force"][..]] {
        let args = [
            "-c",
            c,
            "messages",
            "export",
            "--format",
            "mbox",
            "--out",
            mbox.to_str().unwrap(),
        ];
        let (code, _, err) = run(dir.path(), &[&args[..], force].concat(), &[]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("is a symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    }
    // A hard link: replacing it would change the victim too.
    let linked = dir.path().join("linked");
    std::fs::create_dir(&linked).unwrap();
    std::fs::hard_link(&victim, linked.join("1.eml")).unwrap();
    let args = [
        "-c",
        c,
        "messages",
        "export",
        "--out",
        linked.to_str().unwrap(),
        "--force",
    ];
    let (code, _, err) = run(dir.path(), &args, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("has other hard links"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}

/// A config with a password source whose password file and the node key exist with `mode`.
#[cfg(unix)]
fn config_with_secret_files(dir: &std::path::Path, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let password = dir.join("password");
    std::fs::write(&password, "hunter2\n").unwrap();
    std::fs::write(dir.join("k"), format!("{}\n", "ab".repeat(32))).unwrap();
    for file in [&password, &dir.join("k")] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    write_config(
        dir,
        &format!(
            "[sources.mail]\nprotocol = \"imap\"\nhost = \"127.0.0.1\"\nport = 9\nusername = \"u\"\nauth = \"password\"\npassword_file = \"{}\"\nenabled = false\n",
            password.display()
        ),
    )
}

/// Others on the machine reading the node's key or a password: check-config warns, naming
/// the key and the file and saying chmod 600, and still passes; private files draw no warning.
#[cfg(unix)]
#[test]
fn check_config_warns_about_secret_files_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_secret_files(dir.path(), 0o644);
    let (code, out, err) = run(
        dir.path(),
        &["-c", cfg.to_str().unwrap(), "check-config"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    for (key, file) in [
        ("node.secret_key_file", dir.path().join("k")),
        ("sources.mail.password_file", dir.path().join("password")),
    ] {
        let line = format!(
            "warning: {key}: {} is open to group or others (mode 0644); only its owner should read it: chmod 600 {}",
            file.display(),
            file.display()
        );
        assert!(err.contains(&line), "{line:?} missing in:\n{err}");
    }
    assert!(!err.contains("hunter2"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_secret_files(dir.path(), 0o600);
    let (code, out, err) = run(
        dir.path(),
        &["-c", cfg.to_str().unwrap(), "check-config"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(!err.contains("warning"), "{err}");
}

/// A sink: check-config reads its secret and refuses a malformed one without showing it,
/// warns about a source pattern that matches nothing and about a secret file others can
/// read, and counts the sink.
#[cfg(unix)]
#[test]
fn check_config_checks_sink_secrets_and_warns_about_unmatched_patterns() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook.whsec");
    std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();
    let cfg = config_with_secret_files(dir.path(), 0o600);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{text}\n[sinks.hook]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hook\"\n\
             secret_file = \"{}\"\nsources = [\"mail\", \"billing-*\"]\n",
            secret.display()
        ),
    )
    .unwrap();
    let (code, out, err) = run(
        dir.path(),
        &["-c", cfg.to_str().unwrap(), "check-config"],
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 sink(s)"), "{out}");
    assert!(
        err.contains(
            "warning: sinks.hook.sources[1]: \"billing-*\" matches no source; this sink gets \
             no events through it"
        ),
        "{err}"
    );
    assert!(err.contains("warning: sinks.hook.secret_file: "), "{err}");

    std::fs::write(&secret, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
    let (code, out, err) = run(
        dir.path(),
        &["-c", cfg.to_str().unwrap(), "check-config"],
        &[],
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("sinks.hook.secret_file: secret file ")
            && err.contains("secret 1 does not start with \"whsec_\""),
        "{err}"
    );
    assert!(!err.contains("MfKQ9r8G"), "{err}");
}

/// The same when the node starts: `run` logs a warning naming the key and the file.
#[cfg(unix)]
#[test]
fn run_warns_about_a_node_key_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with_secret_files(dir.path(), 0o640);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[node]\n", "[node]\nhttp_listen = \"127.0.0.1:0\"\n");
    std::fs::write(&cfg, text).unwrap();
    let (code, out, err) = run(
        dir.path(),
        &["-c", cfg.to_str().unwrap(), "run", "--once"],
        &[("MAILSLUICE_LOG", "warn")],
    );
    assert_eq!(code, 0, "{out}{err}");
    let key = dir.path().join("k");
    for needle in [
        "key=node.secret_key_file".to_string(),
        format!("file={}", key.display()),
        format!("chmod 600 {}", key.display()),
        "key=sources.mail.password_file".to_string(),
    ] {
        assert!(err.contains(&needle), "{needle:?} missing in:\n{err}");
    }
}

/// The store (every message, the sealed tokens) is never left in a directory others may
/// read: when its mode cannot be set to 0700 the command fails, naming node.data_dir.
#[cfg(target_os = "linux")]
#[test]
fn a_data_dir_whose_mode_cannot_be_set_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    // procfs refuses every change of mode, even to root.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("data_dir = \"{}\"", dir.path().join("d").display()),
        "data_dir = \"/proc/self\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let (code, out, err) = run(dir.path(), &["-c", cfg.to_str().unwrap(), "status"], &[]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("node.data_dir /proc/self: cannot set its mode to 0700"),
        "{err}"
    );
}

/// `sinks status`: a row per configured sink (state, delivered, failed, backlog, oldest
/// pending event) and the failed events with the receiver's last answer; read from the
/// store when no node runs, and through the running node's API when one holds the store.
#[test]
fn sinks_status_reads_the_store_offline_and_asks_a_running_node() {
    use mailsluice::store::{FailedDelivery, Location, NewMessage, Store};
    let dir = tempfile::tempdir().unwrap();
    let (cfg, listen_file) = any_port_config(dir.path());
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(
        "\n[sinks.helpdesk]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hooks/mail\"\n\
         secret_env = \"HOOK_SECRET\"\n\n\
         [sinks.archive]\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/hooks/changes\"\n\
         secret_env = \"HOOK_SECRET\"\nevents = [\"source.state_changed\"]\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let c = cfg.to_str().unwrap();
    let env = [("HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")];

    // Before anything happened: both idle.
    let (code, out, err) = run(dir.path(), &["-c", c, "sinks", "status"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            ["archive", "webhook", "idle", "0", "0", "0", "-"],
            ["helpdesk", "webhook", "idle", "0", "0", "0", "-"],
        ],
        "{out}"
    );

    // Three events; helpdesk delivered the first and gave up on the second.
    {
        let store = Store::open(&dir.path().join("d"), &dir.path().join("k")).unwrap();
        for (uid, raw) in EXPORTED
            .iter()
            .chain(&[&b"Subject: 3\r\n\r\nx\r\n"[..]])
            .enumerate()
        {
            store
                .store(NewMessage {
                    source: "mail".into(),
                    location: Location::Imap {
                        folder: "INBOX".into(),
                        uidvalidity: 1,
                        uid: uid as u32 + 1,
                    },
                    raw: raw.to_vec(),
                    internal_date: None,
                    parsed: mailsluice::parse::parse(raw),
                    post_action: false,
                    rematch: false,
                })
                .unwrap();
        }
        store.flush_sync().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            store.sink_delivered("helpdesk", &[1]).await.unwrap();
            store
                .sink_failed(
                    "helpdesk",
                    2,
                    FailedDelivery {
                        attempts: 17,
                        last_error: "HTTP 503 Service Unavailable".into(),
                        failed_at: "2025-01-01T00:00:00Z".into(),
                    },
                )
                .await
                .unwrap();
        });
    }
    let (code, out, err) = run(dir.path(), &["-c", c, "sinks", "status"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "SINK",
            "KIND",
            "STATE",
            "DELIVERED",
            "FAILED",
            "BACKLOG",
            "OLDEST",
            "PENDING"
        ]
    );
    let row = |name: &str| -> Vec<String> {
        let line = lines.iter().find(|l| l.starts_with(name)).unwrap();
        let mut cols: Vec<String> = line.split_whitespace().map(String::from).collect();
        // The age moves with the clock; the rest does not.
        cols.remove(6);
        cols
    };
    assert_eq!(
        row("helpdesk "),
        [
            "helpdesk", "webhook", "failing", "1", "1", "1", "(seq", "3)"
        ],
        "{out}"
    );
    assert_eq!(
        row("archive "),
        ["archive", "webhook", "healthy", "0", "0", "3", "(seq", "1)"],
        "{out}"
    );
    assert!(
        out.contains("mailsluice sinks retry helpdesk")
            && out.contains("17 attempt(s)")
            && out.contains("HTTP 503 Service Unavailable"),
        "{out}"
    );

    let (code, out, err) = run(dir.path(), &["-c", c, "sinks", "status", "--json"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let offline: serde_json::Value = serde_json::from_str(&out).unwrap();
    let helpdesk = &offline[1];
    assert_eq!(helpdesk["name"], "helpdesk");
    assert_eq!(helpdesk["backlog"], 1);
    assert_eq!(helpdesk["failures"][0]["seq"], 2);
    assert!(
        helpdesk["failures"][0]["id"]
            .as_str()
            .unwrap()
            .starts_with("evt_")
    );

    // A running node holds the store: the same through its API. (It may have delivered or
    // skipped more by now; what was failed stays failed until retried.)
    let mut cmd = Command::new(BIN);
    cmd.args(["-c", c, "run"])
        .current_dir(dir.path())
        .env_remove("MAILSLUICE_CONFIG")
        .envs(env)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut node = NodeProcess::start(cmd, &listen_file, Duration::from_secs(20)).unwrap();
    let (code, out, err) = run(dir.path(), &["-c", c, "sinks", "status", "--json"], &env);
    assert_eq!(code, 0, "{out}{err}");
    let live: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(live[0]["name"], "archive");
    assert_eq!(live[1]["name"], "helpdesk");
    assert_eq!(live[1]["state"], "failing");
    assert_eq!(live[1]["failures"], offline[1]["failures"]);
    let (code, out, err) = run(dir.path(), &["-c", c, "sinks", "status"], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("SINK"), "{out}");
    let (_, status) = node.stop(Duration::from_secs(20)).unwrap();
    assert!(status.success());
}
