//! `mailsluice`: parses the command line, loads the configuration and hands over to the
//! command's module in [`cli`]. The binary is the only place `anyhow` is used.

mod cli;
mod memory;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use mailsluice::config;

fn main() -> ExitCode {
    memory::limit_arenas();
    mailsluice::parse::quiet_mail_parser_panics();
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        cli::completions(shell);
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
    match cli::dispatch(cli.command, settings, &path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => cli::exit_code(&e),
    }
}
