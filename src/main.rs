//! `mailsluice`: command line, wiring and signals. The only place `anyhow` is used.

mod cli;
mod memory;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, SecretsCommand, TokensCommand, UsageError, UsageErrorBox, open_store};
use mailsluice::config;

fn main() -> ExitCode {
    memory::limit_arenas();
    mailsluice::parse::quiet_mail_parser_panics();
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "mailsluice",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let path = config::resolve_path(cli.config.as_deref());
    let settings = match config::load(&path) {
        Ok(s) => s,
        Err(errors) => {
            eprintln!(
                "{}: configuration has {} error(s):",
                path.display(),
                errors.len()
            );
            for e in errors.iter() {
                eprintln!("  {e}");
            }
            if matches!(cli.command, Command::Reload) {
                eprintln!("the running node was not asked to reload: it keeps running the old one");
            }
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::CheckConfig => cli::check_config::check_config(&path, &settings),
        Command::Run { once } => cli::run::run(settings, &path, once),
        Command::Reload => cli::reload::reload(&settings),
        Command::Completions { .. } => Ok(()),
        Command::Status => cli::status::status(&settings),
        Command::TestLogin { source } => cli::test_login::test_login(&settings, &source),
        Command::Authorize {
            source,
            device,
            no_browser,
            timeout_secs,
        } => cli::authorize::authorize(&settings, &source, device, !no_browser, timeout_secs),
        Command::Tokens { command } => match command {
            TokensCommand::Import {
                source,
                refresh_token_file,
            } => cli::tokens::tokens_import(&settings, &source, &refresh_token_file),
            TokensCommand::Status => cli::tokens::tokens_status(&settings),
        },
        Command::Messages { command } => cli::messages::messages(&settings, command),
        Command::Secrets {
            command: SecretsCommand::RotateKey,
        } => match open_store(&settings) {
            Ok(Some(store)) => store
                .rotate_key()
                .map(|n| {
                    println!(
                        "re-encrypted {n} token record(s) under a new key in {}",
                        settings.node.secret_key_file.display()
                    )
                })
                .map_err(Into::into),
            Ok(None) => Err(UsageError(
                "the store is in use by a running node: stop it, then rotate the key".into(),
            )
            .into()),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<UsageErrorBox>() {
            Some(u) => {
                eprintln!("error: {}", u.0);
                ExitCode::from(2)
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}
