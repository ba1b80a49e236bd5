//! The command line: the clap definitions, [`dispatch`] to one module per command, and what
//! the commands share.
//!
//! - [`run`]: the node itself (wiring, HTTP listener, signals, `--once` progress).
//! - [`check_config`], [`reload`], [`status`], [`test_login`], [`authorize`], [`tokens`],
//!   [`messages`] (with the mboxrd export), [`secrets`], [`sinks`]: the other commands.
//! - [`node_api`]: the running node's HTTP API, for commands that find the store locked
//!   (sled allows one process), and where that node listens.
//!
//! Every command returns `anyhow::Result`; a [`UsageError`] inside it means exit 2, anything
//! else exit 1 ([`exit_code`]).

pub mod authorize;
pub mod check_config;
pub mod messages;
pub mod node_api;
pub mod reload;
pub mod run;
pub mod secrets;
pub mod sinks;
pub mod status;
pub mod test_login;
pub mod tokens;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use mailsluice::config::Settings;
use mailsluice::store::{Store, StoreError};

#[derive(Parser, Debug)]
#[command(
    name = "mailsluice",
    version,
    about = "Mail ingestion node: IMAP and POP3 sources with OAuth2 or passwords, exactly once into an embedded store",
    after_help = "Getting started:\n  1. describe sources in config/mailsluice.toml       mailsluice check-config\n  2. consent once per OAuth2 source                   mailsluice authorize SOURCE [--device]\n  3. prove a source end to end                        mailsluice test-login SOURCE\n  4. run                                              mailsluice run   (or run --once)\n  5. watch                                            mailsluice status; GET /metrics\n\nEvery command works beside a running node (it talks to the node's API when the store is\nin use). Exit codes: 0 success, 1 operational failure, 2 usage or configuration error.\nLog level: MAILSLUICE_LOG (e.g. info,mailsluice=debug)."
)]
pub(crate) struct Cli {
    /// Config file (default: $MAILSLUICE_CONFIG, else config/mailsluice.toml).
    #[arg(short = 'c', long = "config", global = true)]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
    /// Sinks (webhooks, NATS): delivery state, backlog and failed events; send failed
    /// events again, replay events from a point.
    Sinks {
        #[command(subcommand)]
        command: SinksCommand,
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
pub(crate) enum TokensCommand {
    /// Adopt a refresh token obtained elsewhere (migration): one refresh with it first,
    /// and the stored grant is replaced only when that succeeds.
    Import {
        /// The source, as in [sources.NAME].
        source: String,
        /// File holding the refresh token (trailing newline ignored).
        #[arg(long)]
        refresh_token_file: PathBuf,
        /// Who consented to the grant. Checked against what the provider says (ID token or
        /// userinfo); recorded as claimed, not verified, when the provider says nothing.
        #[arg(long)]
        identity: Option<String>,
    },
    /// Per source: access-token expiry, refresh-token age and last use, state.
    Status,
}

#[derive(Subcommand, Debug)]
pub(crate) enum SinksCommand {
    /// Per sink: state, delivered, failed, backlog, oldest pending event, and the failed
    /// events with the receiver's last answer.
    ///
    /// STATE is failing (failed events are held: fix the receiver, then retry them),
    /// retrying (the oldest pending event has waited over a minute), healthy, or idle
    /// (nothing delivered or pending yet).
    #[command(
        after_help = "Examples:\n  mailsluice sinks status\n  mailsluice sinks status --json | jq '.[] | select(.state != \"healthy\")'"
    )]
    Status {
        /// Print the same as JSON (one object per sink, with up to 100 failed events each).
        #[arg(long)]
        json: bool,
    },
    /// Give every event the sink marked failed (still undelivered at max_age_secs)
    /// another attempt now; one delivered has its mark cleared, one that fails again is
    /// marked failed again.
    #[command(after_help = "Example:\n  mailsluice sinks retry helpdesk")]
    Retry {
        /// The sink, as in [sinks.NAME].
        sink: String,
    },
    /// Deliver every event from SEQ on again (same ids and bodies), in order per source.
    ///
    /// Only events still kept can be replayed: an event leaves the outbox once every sink
    /// has it and it is older than node.events_retention_secs.
    #[command(after_help = "Example:\n  mailsluice sinks replay helpdesk --from 1200")]
    Replay {
        /// The sink, as in [sinks.NAME].
        sink: String,
        /// The first event (its seq) to deliver again.
        #[arg(long)]
        from: u64,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum SecretsCommand {
    /// Re-encrypt every stored token under a new node.secret_key_file (node stopped).
    RotateKey,
}

#[derive(Subcommand, Debug)]
pub(crate) enum MessagesCommand {
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
    ///
    /// Files are created readable by their owner only (0600), directories the export creates
    /// 0700. A file that exists is not overwritten (exit 2, naming it) unless --force is given;
    /// a symbolic link at a file's name is never written through, not even with --force.
    #[command(
        after_help = "Examples:\n  mailsluice messages export --out exported/             # one .eml per message, byte-exact\n  mailsluice messages export --format mbox --out all.mbox\n  mailsluice messages export --format jsonl --source support --out support.jsonl\n  mailsluice messages export --out exported/ --force     # again, replacing the files"
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
        /// Replace export files that exist already (a regular file with no other hard link;
        /// a symbolic link, directory or other kind of file in the way is still refused).
        #[arg(long)]
        force: bool,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExportFormat {
    Eml,
    Mbox,
    Jsonl,
}

/// A usage or configuration error: the command exits 2. Everything else that fails exits 1.
/// Carried inside `anyhow::Error` and told apart by downcasting, see [`exit_code`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct UsageError(pub(crate) String);

/// Prints `error` and returns the exit code it stands for: 2 for a [`UsageError`], else 1.
pub(crate) fn exit_code(error: &anyhow::Error) -> ExitCode {
    match error.downcast_ref::<UsageError>() {
        Some(usage) => {
            eprintln!("error: {usage}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs `command` (anything but `completions`) with the loaded configuration from `path`.
pub(crate) fn dispatch(command: Command, settings: Settings, path: &Path) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig => check_config::check_config(path, &settings),
        Command::Run { once } => run::run(settings, path, once),
        Command::Reload => reload::reload(&settings),
        Command::Completions { shell } => {
            completions(shell);
            Ok(())
        }
        Command::Status => status::status(&settings),
        Command::TestLogin { source } => test_login::test_login(&settings, &source),
        Command::Authorize {
            source,
            device,
            no_browser,
            timeout_secs,
        } => authorize::authorize(&settings, &source, device, !no_browser, timeout_secs),
        Command::Tokens { command } => match command {
            TokensCommand::Import {
                source,
                refresh_token_file,
                identity,
            } => tokens::import(&settings, &source, &refresh_token_file, identity),
            TokensCommand::Status => tokens::status(&settings),
        },
        Command::Messages { command } => messages::messages(&settings, command),
        Command::Sinks { command } => sinks::sinks(&settings, command),
        Command::Secrets {
            command: SecretsCommand::RotateKey,
        } => secrets::rotate_key(&settings),
    }
}

/// `mailsluice completions SHELL`: the script on stdout. Needs no configuration.
pub(crate) fn completions(shell: clap_complete::Shell) {
    use clap::CommandFactory;
    clap_complete::generate(
        shell,
        &mut Cli::command(),
        "mailsluice",
        &mut std::io::stdout(),
    );
}

/// Opens the store, or reports that a running node holds it.
pub(crate) fn open_store(settings: &Settings) -> Result<Option<Store>, anyhow::Error> {
    match Store::open(&settings.node.data_dir, &settings.node.secret_key_file) {
        Ok(s) => Ok(Some(s)),
        Err(StoreError::Locked(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
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
