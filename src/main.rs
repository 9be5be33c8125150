//! The `kd` binary: parses the command line and dispatches to [`kd::commands`]. Errors are
//! printed with their causes, one paragraph, and exit with status 1 (clap's own usage errors
//! exit with 2, a run stopped by Ctrl-C with 130).

use std::process::ExitCode;

use kd::cli::Command;
use kd::commands;

fn main() -> ExitCode {
    reproducible_cpu_products();
    kd::interrupt::install();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match kd::resume::parse() {
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
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
        Command::Presets => commands::presets(),
    };
    if let Err(error) = result {
        eprintln!("error: {error:#}");
        if kd::interrupt::is_interrupt(&error) {
            return ExitCode::from(kd::interrupt::EXIT_STATUS);
        }
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Puts MKL, which computes libtorch's CPU matrix products, in its strict reproducible mode
/// (`MKL_CBWR=AUTO,STRICT`: the best code path for this CPU, results that do not depend on the
/// thread count), unless the user set `MKL_CBWR` already. A sweep then trains its points on
/// single-threaded lanes and still reproduces lone runs made with any number of threads. MKL reads
/// the variable at its first call, so this runs before anything touches libtorch.
fn reproducible_cpu_products() {
    if std::env::var_os("MKL_CBWR").is_none() {
        // SAFETY: the process has one thread here; nothing reads the environment concurrently.
        unsafe { std::env::set_var("MKL_CBWR", "AUTO,STRICT") };
    }
}
