//! The contenders: how each one is configured and started for one run, and where its output
//! lands. Every run gets a fresh directory, so every contender starts from an empty local
//! state (no mailsluice store, no mbsync/getmail/fetchmail state files).
//!
//! All of them fetch the same mailboxes from the same Dovecot over implicit TLS (IMAPS or
//! POP3S), trusting only the harness CA, as `localhost` so the certificate name is checked.
//! The peers are configured to keep the bytes as they came where they have a switch for it
//! (getmail: no Delivered-To, Received or X-getmail-retrieved-from-mailbox fields;
//! fetchmail: no Received field, no address rewriting, no CR stripping); what they still
//! change is reported by the judgement.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::judge::Normalize;
use super::reference;
use super::support::Oidc;

/// The password of every mailbox (Dovecot and the OIDC server).
pub const PASSWORD: &str = "bench-password";

/// Scopes asked for at the OIDC server; `offline_access` brings a refresh token.
const SCOPE: &str = "openid offline_access email mail";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Imap,
    Pop3,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contender {
    MailsluicePassword,
    MailsluiceOauth2,
    Mbsync,
    Getmail,
    Fetchmail,
    Reference,
}

/// What every run of a scenario shares.
pub struct Ctx<'a> {
    pub protocol: Protocol,
    /// Dovecot's IMAPS or POP3S port.
    pub port: u16,
    /// The harness CA (PEM), the only trust anchor of every contender.
    pub ca: &'a Path,
    /// The mailbox users, in mailbox order.
    pub users: &'a [String],
    pub oidc: &'a Oidc,
    /// The mailsluice binary.
    pub mailsluice: &'a Path,
    /// `node.max_sessions` when set by the scenario (else mailsluice's default).
    pub max_sessions: Option<usize>,
    /// Dovecot's process group, whose CPU time each run also measures.
    pub server_group: u32,
}

/// A contender ready to be started, and how to read its output afterwards.
pub struct Prepared {
    pub command: Command,
    /// For the report: the command line and config files, with the run directory written
    /// as `$RUN` and the CA file as `$CA`.
    pub how: How,
    pub output: Output,
}

#[derive(Clone, Debug, Default)]
pub struct How {
    pub command_line: String,
    /// (file name, contents); for many mailboxes, the first mailbox's part only.
    pub files: Vec<(String, String)>,
}

/// Where a run's messages are once it is done.
pub enum Output {
    /// mailsluice's store, read back with `messages export --format eml` into `export`.
    Mailsluice { config: PathBuf, export: PathBuf },
    /// Maildirs under this directory.
    Maildirs(PathBuf),
    /// One file per message in this directory.
    Flat(PathBuf),
    /// Nothing kept: the reference prints its counts.
    Counted,
}

impl Contender {
    /// The names `--only` takes.
    pub const KEYS: [&'static str; 6] = [
        "mailsluice",
        "mailsluice-oauth2",
        "mbsync",
        "getmail",
        "fetchmail",
        "reference",
    ];

    pub fn key(self) -> &'static str {
        match self {
            Contender::MailsluicePassword => Self::KEYS[0],
            Contender::MailsluiceOauth2 => Self::KEYS[1],
            Contender::Mbsync => Self::KEYS[2],
            Contender::Getmail => Self::KEYS[3],
            Contender::Fetchmail => Self::KEYS[4],
            Contender::Reference => Self::KEYS[5],
        }
    }

    pub fn from_key(key: &str) -> Option<Contender> {
        [
            Contender::MailsluicePassword,
            Contender::MailsluiceOauth2,
            Contender::Mbsync,
            Contender::Getmail,
            Contender::Fetchmail,
            Contender::Reference,
        ]
        .into_iter()
        .find(|c| c.key() == key)
    }

    pub fn name(self, protocol: Protocol) -> String {
        match self {
            Contender::MailsluicePassword => "mailsluice (password)".into(),
            Contender::MailsluiceOauth2 => "mailsluice (OAuth2 XOAUTH2)".into(),
            Contender::Mbsync => "mbsync (isync)".into(),
            Contender::Getmail => "getmail6".into(),
            Contender::Fetchmail => "fetchmail".into(),
            Contender::Reference => match protocol {
                Protocol::Imap => "reference: raw IMAP fetch".into(),
                Protocol::Pop3 => "reference: raw POP3 RETR".into(),
            },
        }
    }

    /// The program that must be installed (peers only).
    pub fn program(self) -> Option<&'static str> {
        match self {
            Contender::Mbsync => Some("mbsync"),
            Contender::Getmail => Some("getmail"),
            Contender::Fetchmail => Some("fetchmail"),
            _ => None,
        }
    }

    pub fn is_mailsluice(self) -> bool {
        matches!(
            self,
            Contender::MailsluicePassword | Contender::MailsluiceOauth2
        )
    }

    /// What this contender does besides fetching, for reading its numbers fairly.
    pub fn fairness_note(self) -> &'static str {
        match self {
            Contender::MailsluicePassword | Contender::MailsluiceOauth2 => {
                "parses every message (mail-parser) and stores its bytes, parsed fields and \
                 checkpoint in one sled transaction; the store is flushed (fsync) before exit"
            }
            Contender::Mbsync => {
                "writes one Maildir file per message (LF line endings, an X-TUID field added), \
                 fsync per its default `FSync yes`; no parsing beyond the header it edits"
            }
            Contender::Getmail => {
                "Python; forks a delivery child per message for the Maildir write (as root it \
                 must deliver as another user, here `nobody`), LF line endings. Its wait for that \
                 child can miss the child's exit (a SIGCHLD race, getmail6 bug reports #52 and \
                 #226): it then waits out its 180 s timeout and gives up on the \
                 mailbox, exit code 127"
            }
            Contender::Fetchmail => {
                "over IMAP fetches header and body with separate commands; starts the MDA per message (`sh`, \
                 `mktemp`, `cat`: three processes), whose file is not fsynced"
            }
            Contender::Reference => {
                "the ceiling: framing only, nothing parsed, stored or hashed; run as a child \
                 process like the others"
            }
        }
    }

    /// What the judgement undoes before its second comparison.
    pub fn normalize(self) -> Normalize {
        match self {
            // mbsync writes Maildir files with LF line endings and its X-TUID field.
            Contender::Mbsync => Normalize {
                added_headers: &["X-TUID"],
                line_endings: true,
            },
            Contender::Getmail => Normalize {
                added_headers: &[
                    "Delivered-To",
                    "Received",
                    "X-getmail-retrieved-from-mailbox",
                ],
                line_endings: true,
            },
            Contender::Fetchmail => Normalize {
                added_headers: &["Delivered-To", "Received"],
                line_endings: true,
            },
            _ => Normalize::default(),
        }
    }

    /// Writes the contender's configuration into the empty directory `dir` and returns the
    /// command to time. Work that is not part of the measurement (OAuth2 consent and token
    /// import) happens here.
    pub fn prepare(self, ctx: &Ctx<'_>, dir: &Path) -> Result<Prepared, String> {
        let prepared = match self {
            Contender::MailsluicePassword => mailsluice(ctx, dir, false)?,
            Contender::MailsluiceOauth2 => mailsluice(ctx, dir, true)?,
            Contender::Mbsync => mbsync(ctx, dir)?,
            Contender::Getmail => getmail(ctx, dir)?,
            Contender::Fetchmail => fetchmail(ctx, dir)?,
            Contender::Reference => reference(ctx, dir)?,
        };
        Ok(prepared)
    }
}

/// Turns paths in `text` into `$RUN` and `$CA`.
fn anonymize(text: &str, dir: &Path, ca: &Path) -> String {
    text.replace(&ca.display().to_string(), "$CA")
        .replace(&dir.display().to_string(), "$RUN")
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

fn mkdirs(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("create {}: {e}", path.display()))
}

fn maildir(path: &Path) -> Result<(), String> {
    for sub in ["cur", "new", "tmp"] {
        mkdirs(&path.join(sub))?;
    }
    Ok(())
}

/// `program args...` for the report, long argument lists shortened.
fn command_line(program: &str, args: &[String], dir: &Path, ca: &Path) -> String {
    const SHOWN: usize = 12;
    let mut line = program.to_string();
    for arg in args.iter().take(SHOWN) {
        line.push(' ');
        line.push_str(arg);
    }
    if args.len() > SHOWN {
        let _ = write!(line, " ... ({} more arguments)", args.len() - SHOWN);
    }
    anonymize(&line, dir, ca)
}

/// A note for config files that repeat one block per mailbox.
fn repeated(ctx: &Ctx<'_>, what: &str) -> String {
    if ctx.users.len() > 1 {
        format!(
            "\n# ... and the same {what} for each of the other {} mailboxes\n",
            ctx.users.len() - 1
        )
    } else {
        String::new()
    }
}

fn source_name(k: usize) -> String {
    format!("mb{:04}", k + 1)
}

// --- mailsluice ------------------------------------------------------------------------------

fn mailsluice_config(
    ctx: &Ctx<'_>,
    dir: &Path,
    oauth: bool,
    users: &[String],
) -> Result<String, String> {
    let mut c = String::new();
    let _ = writeln!(
        c,
        // `run --once` serves HTTP too; nobody asks it anything here, so any free port.
        "[node]\ndata_dir = \"{}\"\nhttp_listen = \"127.0.0.1:0\"\nsecret_key_file = \"{}\"",
        dir.join("data").display(),
        dir.join("secret.key").display()
    );
    if let Some(n) = ctx.max_sessions {
        let _ = writeln!(c, "max_sessions = {n}");
    }
    let _ = writeln!(c, "\n[tls]\nextra_ca_file = \"{}\"\n", ctx.ca.display());
    if oauth {
        let _ = writeln!(
            c,
            "[providers.local]\nkind = \"oidc\"\nissuer = \"{}\"\nclient_id = \"collector\"\n",
            ctx.oidc.issuer
        );
    }
    for (k, user) in users.iter().enumerate() {
        let _ = writeln!(
            c,
            "[sources.{}]\nprotocol = \"{}\"\nhost = \"localhost\"\nport = {}\nsecurity = \"tls\"\nusername = \"{user}\"",
            source_name(k),
            ctx.protocol.name(),
            ctx.port
        );
        if oauth {
            c.push_str("auth = \"oauth2\"\nprovider = \"local\"\nsasl = \"xoauth2\"\n");
        } else {
            c.push_str("auth = \"password\"\npassword_env = \"BENCH_PASSWORD\"\n");
        }
        if ctx.protocol == Protocol::Imap {
            c.push_str("folders = [\"INBOX\"]\n");
        }
        c.push('\n');
    }
    Ok(c)
}

fn mailsluice(ctx: &Ctx<'_>, dir: &Path, oauth: bool) -> Result<Prepared, String> {
    let config = dir.join("mailsluice.toml");
    write(
        &config,
        &mailsluice_config(ctx, dir, oauth, ctx.users)?,
        0o600,
    )?;
    if oauth {
        import_tokens(ctx, dir, &config)?;
    }
    let args: Vec<String> = vec![
        "-c".into(),
        config.display().to_string(),
        "run".into(),
        "--once".into(),
    ];
    let mut command = Command::new(ctx.mailsluice);
    command.args(&args).current_dir(dir);
    if !oauth {
        command.env("BENCH_PASSWORD", PASSWORD);
    }
    let shown = mailsluice_config(ctx, dir, oauth, &ctx.users[..1])?;
    let mut how = How {
        command_line: command_line("mailsluice", &args, dir, ctx.ca),
        files: vec![(
            "mailsluice.toml".into(),
            anonymize(&shown, dir, ctx.ca) + &repeated(ctx, "[sources.*] table"),
        )],
    };
    if !oauth {
        how.command_line = format!("BENCH_PASSWORD=... {}", how.command_line);
    } else {
        how.files.push((
            "before the timed run (not timed)".into(),
            format!(
                "# per source: an authorization-code (PKCE) login at the OIDC server as the mailbox user,\n# scope \"{SCOPE}\", then\nmailsluice -c $RUN/mailsluice.toml tokens import {} --refresh-token-file $RUN/{}.token\n",
                source_name(0),
                source_name(0)
            ),
        ));
    }
    Ok(Prepared {
        command,
        how,
        output: Output::Mailsluice {
            config,
            export: dir.join("export"),
        },
    })
}

/// A fresh grant per source (refresh tokens rotate, and the OIDC server revokes a grant
/// whose spent refresh token is presented again), imported with the CLI.
fn import_tokens(ctx: &Ctx<'_>, dir: &Path, config: &Path) -> Result<(), String> {
    grant_and_import(
        ctx.oidc,
        ctx.users,
        source_name,
        ctx.mailsluice,
        config,
        dir,
    )
}

/// Gets a grant for each of `users` at the OIDC server (a few logins at a time) and imports
/// its refresh token into source `source_of(k)` of `config` with `mailsluice tokens import`,
/// one after the other (the store takes one process at a time). Scenarios 1-3 and 5.
pub fn grant_and_import(
    oidc: &Oidc,
    users: &[String],
    source_of: impl Fn(usize) -> String,
    mailsluice: &Path,
    config: &Path,
    dir: &Path,
) -> Result<(), String> {
    // The logins are HTTP round trips to the OIDC server; a few at a time.
    let workers = 4.min(users.len()).max(1);
    let chunk = users.len().div_ceil(workers);
    let tokens: Vec<Result<String, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = users
            .chunks(chunk)
            .map(|users| {
                s.spawn(move || {
                    users
                        .iter()
                        .map(|user| {
                            oidc.try_login_auth_code("collector", user, PASSWORD, SCOPE)
                                .and_then(|t| {
                                    t.refresh_token
                                        .ok_or_else(|| "no refresh token".to_string())
                                })
                                .map_err(|e| format!("OAuth2 login of {user}: {e}"))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("login thread"))
            .collect()
    });
    for (k, token) in tokens.into_iter().enumerate() {
        let name = source_of(k);
        let file = dir.join(format!("{name}.token"));
        write(&file, &(token? + "\n"), 0o600)?;
        let out = Command::new(mailsluice)
            .arg("-c")
            .arg(config)
            .args(["tokens", "import", &name, "--refresh-token-file"])
            .arg(&file)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run mailsluice tokens import: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mailsluice tokens import {name} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let _ = std::fs::remove_file(&file);
    }
    Ok(())
}

/// `mailsluice messages export --format eml` of a finished run (not timed).
pub fn mailsluice_export(mailsluice: &Path, config: &Path, out: &Path) -> Result<(), String> {
    let result = Command::new(mailsluice)
        .arg("-c")
        .arg(config)
        .args(["messages", "export", "--format", "eml", "--out"])
        .arg(out)
        .current_dir(config.parent().unwrap_or(Path::new(".")))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run mailsluice messages export: {e}"))?;
    if result.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mailsluice messages export failed ({}): {}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        ))
    }
}

// --- mbsync ----------------------------------------------------------------------------------

fn mbsync_config(ctx: &Ctx<'_>, dir: &Path, users: &[String]) -> String {
    let mut c = String::new();
    for (k, user) in users.iter().enumerate() {
        let name = source_name(k);
        let near = dir.join("maildir").join(&name);
        let _ = writeln!(
            c,
            "IMAPAccount {name}\nHost localhost\nPort {port}\nUser {user}\nPass {PASSWORD}\nSSLType IMAPS\nCertificateFile {ca}\n\n\
             IMAPStore {name}-far\nAccount {name}\n\n\
             MaildirStore {name}-near\nPath {near}/\nInbox {near}/INBOX\n\n\
             Channel {name}\nFar :{name}-far:\nNear :{name}-near:\nSync Pull\nCreate Near\nExpunge None\nSyncState *\n",
            port = ctx.port,
            ca = ctx.ca.display(),
            near = near.display(),
        );
    }
    c
}

fn mbsync(ctx: &Ctx<'_>, dir: &Path) -> Result<Prepared, String> {
    if ctx.protocol != Protocol::Imap {
        return Err("mbsync speaks IMAP only".into());
    }
    let config = dir.join("mbsyncrc");
    write(&config, &mbsync_config(ctx, dir, ctx.users), 0o600)?;
    // `Create Near` creates the mailbox, not the store's directory.
    for k in 0..ctx.users.len() {
        mkdirs(&dir.join("maildir").join(source_name(k)))?;
    }
    let args: Vec<String> = vec!["-c".into(), config.display().to_string(), "-a".into()];
    let mut command = Command::new("mbsync");
    command.args(&args).current_dir(dir);
    let how = How {
        command_line: command_line("mbsync", &args, dir, ctx.ca),
        files: vec![(
            "mbsyncrc".into(),
            anonymize(&mbsync_config(ctx, dir, &ctx.users[..1]), dir, ctx.ca)
                + &repeated(ctx, "four sections"),
        )],
    };
    Ok(Prepared {
        command,
        how,
        output: Output::Maildirs(dir.join("maildir")),
    })
}

// --- getmail6 --------------------------------------------------------------------------------

/// getmail refuses to deliver into a Maildir as root; its `user` option makes it deliver as
/// that user instead (it forks a child per message for the delivery either way).
fn getmail_user() -> Option<(String, u32, u32)> {
    let me = std::fs::metadata("/proc/self").ok()?;
    if std::os::unix::fs::MetadataExt::uid(&me) != 0 {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "nobody"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    Some(("nobody".into(), id("-u")?, id("-g")?))
}

fn getmail_rc(ctx: &Ctx<'_>, dir: &Path, k: usize, user: &str) -> String {
    let (retriever, mailboxes) = match ctx.protocol {
        Protocol::Imap => (
            "SimpleIMAPSSLRetriever",
            "mailboxes = (\"INBOX\",)\nrecord_mailbox = false\n",
        ),
        Protocol::Pop3 => ("SimplePOP3SSLRetriever", ""),
    };
    format!(
        "[retriever]\ntype = {retriever}\nserver = localhost\nport = {port}\nusername = {user}\npassword = {PASSWORD}\nca_certs = {ca}\n{mailboxes}\n\
         [destination]\ntype = Maildir\npath = {maildir}/\n{deliver_as}\n\
         [options]\nread_all = true\ndelete = false\nverbose = 0\ndelivered_to = false\nreceived = false\nmessage_log_syslog = false\n",
        port = ctx.port,
        ca = ctx.ca.display(),
        maildir = dir.join("maildir").join(source_name(k)).display(),
        deliver_as =
            getmail_user().map_or_else(String::new, |(name, _, _)| format!("user = {name}\n")),
    )
}

fn getmail(ctx: &Ctx<'_>, dir: &Path) -> Result<Prepared, String> {
    let state = dir.join("getmail-state");
    let rcdir = dir.join("rc");
    mkdirs(&state)?;
    mkdirs(&rcdir)?;
    let mut args: Vec<String> = vec!["--getmaildir".into(), state.display().to_string()];
    let owner = getmail_user();
    for (k, user) in ctx.users.iter().enumerate() {
        let rc = rcdir.join(source_name(k));
        write(&rc, &getmail_rc(ctx, dir, k, user), 0o600)?;
        let md = dir.join("maildir").join(source_name(k));
        maildir(&md)?;
        if let Some((_, uid, gid)) = &owner {
            for sub in ["", "cur", "new", "tmp"] {
                let path = md.join(sub);
                std::os::unix::fs::chown(&path, Some(*uid), Some(*gid))
                    .map_err(|e| format!("chown {}: {e}", path.display()))?;
            }
        }
        args.push("--rcfile".into());
        args.push(rc.display().to_string());
    }
    if owner.is_some() {
        // The delivering user must reach the Maildirs.
        for path in [dir, &dir.join("maildir")] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("chmod {}: {e}", path.display()))?;
        }
    }
    let mut command = Command::new("getmail");
    command.args(&args).current_dir(dir);
    let how = How {
        command_line: command_line("getmail", &args, dir, ctx.ca),
        files: vec![(
            format!("rc/{}", source_name(0)),
            anonymize(&getmail_rc(ctx, dir, 0, &ctx.users[0]), dir, ctx.ca)
                + &repeated(ctx, "rc file (one per mailbox, all given to one getmail)"),
        )],
    };
    Ok(Prepared {
        command,
        how,
        output: Output::Maildirs(dir.join("maildir")),
    })
}

// --- fetchmail -------------------------------------------------------------------------------

fn fetchmail_rc(ctx: &Ctx<'_>, dir: &Path, users: &[String]) -> String {
    let mut c = format!(
        "set no syslog\nset invisible\nset idfile \"{}\"\nset pidfile \"{}\"\n\n",
        dir.join("fetchids").display(),
        dir.join("fetchmail.pid").display()
    );
    let (proto, folder) = match ctx.protocol {
        Protocol::Imap => ("IMAP", "  folder INBOX\n"),
        Protocol::Pop3 => ("POP3", ""),
    };
    for (k, user) in users.iter().enumerate() {
        let _ = writeln!(
            c,
            "poll {name} via localhost port {port} proto {proto}\n  user \"{user}\" there with password \"{PASSWORD}\"\n  ssl sslcertck sslcertfile \"{ca}\"\n{folder}  fetchall keep no rewrite no stripcr\n  mda \"{mda}\"\n",
            name = source_name(k),
            port = ctx.port,
            ca = ctx.ca.display(),
            mda = dir.join("deliver").display(),
        );
    }
    c
}

fn fetchmail(ctx: &Ctx<'_>, dir: &Path) -> Result<Prepared, String> {
    let out = dir.join("out");
    mkdirs(&out)?;
    let deliver = dir.join("deliver");
    let script = format!(
        "#!/bin/sh\n# fetchmail MDA: the message on stdin into a new file of its own.\nexec cat > \"$(mktemp -p {} m.XXXXXXXXXX)\"\n",
        out.display()
    );
    write(&deliver, &script, 0o700)?;
    let rc = dir.join("fetchmailrc");
    // fetchmail refuses a run-control file others can read.
    write(&rc, &fetchmail_rc(ctx, dir, ctx.users), 0o600)?;
    let args: Vec<String> = vec!["-f".into(), rc.display().to_string(), "--nodetach".into()];
    let mut command = Command::new("fetchmail");
    command
        .args(&args)
        .current_dir(dir)
        .env("FETCHMAILHOME", dir)
        .env("HOME", dir);
    let how = How {
        command_line: format!(
            "FETCHMAILHOME=$RUN {}",
            command_line("fetchmail", &args, dir, ctx.ca)
        ),
        files: vec![
            (
                "fetchmailrc".into(),
                anonymize(&fetchmail_rc(ctx, dir, &ctx.users[..1]), dir, ctx.ca)
                    + &repeated(ctx, "poll entry"),
            ),
            ("deliver".into(), anonymize(&script, dir, ctx.ca)),
        ],
    };
    Ok(Prepared {
        command,
        how,
        output: Output::Flat(out),
    })
}

// --- reference -------------------------------------------------------------------------------

fn reference(ctx: &Ctx<'_>, dir: &Path) -> Result<Prepared, String> {
    let users = reference::write_users(&dir.join("users"), ctx.users);
    let args = reference::child_args(ctx.protocol.name(), ctx.port, ctx.ca, PASSWORD, &users);
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut command = Command::new(exe);
    command.args(&args).current_dir(dir);
    let what = match ctx.protocol {
        Protocol::Imap => "LOGIN, EXAMINE INBOX, UID FETCH 1:* (BODY.PEEK[]), bytes discarded",
        Protocol::Pop3 => "USER/PASS, STAT, RETR 1..n pipelined 32 at a time, bytes discarded",
    };
    let how = How {
        command_line: format!(
            "{} (this bench binary, Rust + rustls; per mailbox one TLS connection: {what}; mailboxes one after the other)",
            command_line("scenarios", &args, dir, ctx.ca)
        ),
        files: Vec::new(),
    };
    Ok(Prepared {
        command,
        how,
        output: Output::Counted,
    })
}
