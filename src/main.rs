//! The `kd` binary: parses the command line and dispatches to [`kd::commands`]. Errors are
//! printed with their causes, one paragraph, and exit with status 1 (clap's own usage errors
//! exit with 2).

use std::process::ExitCode;

use clap::Parser;
use kd::cli::{Cli, Command};
use kd::commands;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    if let Some(common) = cli.command.common() {
        kd::report::set_quiet(common.quiet);
    }

    let result = match &cli.command {
        Command::Run(args) => commands::run(args),
        Command::Teacher(args) => commands::teacher(args),
        Command::Distill(args) => commands::distill_command(args),
        Command::Eval(args) => commands::eval(args),
        Command::Export(args) => commands::export(args),
        Command::Sweep(args) => commands::sweep_command(args),
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
