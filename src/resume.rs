//! `--resume DIR`: the command line a run folder was started with, kept in its `command.json`,
//! and the options of a resumed run, which are that command line's.
//!
//! Options given again with `--resume` are accepted when they have the saved values; one with
//! another value is an error that names it. Relative paths keep their meaning because the saved
//! working directory is restored before the saved options are read.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use serde::{Deserialize, Serialize};

use crate::cli::Cli;
use crate::report::write_atomically;

/// The layout of run folders this `kd` writes; a folder with another (or no `command.json`)
/// was written by an older `kd` and cannot be resumed.
pub const LAYOUT: u32 = 2;

/// Options that only say how to resume or how to show progress; they may differ freely.
const FREE: [&str; 5] = ["resume", "out", "force", "quiet", "no_plot"];

/// What `command.json` records.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedCommand {
    pub layout: u32,
    pub command: String,
    pub cwd: PathBuf,
    /// The arguments after `kd`, as given.
    pub argv: Vec<String>,
}

/// Writes `command.json` in `dir` for the running process's command line.
pub fn save_command(dir: &Path, command: &str) -> Result<()> {
    let saved = SavedCommand {
        layout: LAYOUT,
        command: command.to_string(),
        cwd: std::env::current_dir().context("cannot read the working directory")?,
        argv: std::env::args().skip(1).collect(),
    };
    write_atomically(&dir.join("command.json"), serde_json::to_string_pretty(&saved)?.as_bytes())
}

/// Parses the command line; with `--resume DIR`, returns the saved command's options instead
/// (after checking the given ones against them), with `resume` and `out` set to DIR.
pub fn parse() -> Result<Cli> {
    let matches = matches_from(std::env::args_os().collect()).unwrap_or_else(|e| e.exit());
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let Some(common) = cli.command.common() else { return Ok(cli) };
    let Some(dir) = common.resume.clone() else { return Ok(cli) };
    let (quiet, no_plot) = (common.quiet, common.no_plot);
    let name = cli.command.name();

    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resume {}: no such folder", dir.display()))?;
    if let Some(out) = &common.out {
        let same = out.canonicalize().is_ok_and(|o| o == dir);
        ensure!(same, "--out {} differs from --resume {}", out.display(), dir.display());
    }
    let saved = read_saved(&dir)?;
    ensure!(
        saved.command == name,
        "{} holds a `kd {}` run; resume it with `kd {} --resume {}`",
        dir.display(),
        saved.command,
        saved.command,
        dir.display()
    );
    std::env::set_current_dir(&saved.cwd).with_context(|| {
        format!("cannot enter {}, where the run was started", saved.cwd.display())
    })?;

    let args = std::iter::once(OsString::from("kd")).chain(saved.argv.iter().map(OsString::from));
    let saved_matches = matches_from(args.collect()).with_context(|| {
        format!("{}/command.json holds options kd no longer reads", dir.display())
    })?;
    check_given(&matches, &saved_matches, &dir)?;

    cli = Cli::from_arg_matches(&saved_matches)?;
    let common = cli.command.common_mut().expect("the saved command trains");
    common.resume = Some(dir.clone());
    common.out = Some(dir);
    common.force = false;
    common.quiet = quiet;
    common.no_plot = no_plot;
    Ok(cli)
}

/// Parses the command line `args` (program name first); a `kd run --preset NAME` is parsed
/// with the preset's options put before the given ones (see [`crate::preset`]), so that the
/// preset's options count towards what clap requires.
fn matches_from(args: Vec<OsString>) -> Result<ArgMatches, clap::Error> {
    let args = attach_negative_lists(args);
    let Some(name) = crate::preset::named_in(&args) else {
        return Cli::command().try_get_matches_from(args);
    };
    // A raw error: the message names the known presets, and clap's usage would bury it.
    let expanded = crate::preset::expand(args, Some(&name)).map_err(|error| {
        clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{error:#}\n"))
    })?;
    Cli::command().try_get_matches_from(expanded).map_err(|error| under_preset(error, &name))
}

/// A clap error about a command line that `preset` added to, saying so: the option at fault may
/// be the preset's rather than the user's. Help and version requests pass as they are.
fn under_preset(error: clap::Error, preset: &str) -> clap::Error {
    use clap::error::ErrorKind::{DisplayHelp, DisplayVersion};
    if matches!(error.kind(), DisplayHelp | DisplayVersion) {
        return error;
    }
    let rendered = error.render().to_string();
    let message = rendered.strip_prefix("error: ").unwrap_or(&rendered);
    clap::Error::raw(error.kind(), format!("{}: {message}", crate::preset::under(preset)))
}

/// The comma-separated number lists of `kd sweep`, which clap would read as short flags when
/// they start with a minus sign (`--alpha -0.5,1`).
const LIST_OPTIONS: [&str; 3] = ["--temperature", "--alpha", "--seeds"];

/// Joins a list option and a following value that starts with a minus and a digit or point
/// (`--alpha -0.5,1` becomes `--alpha=-0.5,1`), so that the value reaches its parser: negative
/// seeds are valid, and negative temperatures get the parser's message.
fn attach_negative_lists(args: Vec<OsString>) -> Vec<OsString> {
    let negative = |arg: &OsString| {
        let text = arg.to_string_lossy();
        let mut chars = text.chars();
        chars.next() == Some('-') && chars.next().is_some_and(|c| c.is_ascii_digit() || c == '.')
    };
    let mut joined = Vec::with_capacity(args.len());
    let mut args = args.into_iter().peekable();
    while let Some(arg) = args.next() {
        let is_list = LIST_OPTIONS.iter().any(|option| arg == *option);
        match args.peek() {
            Some(value) if is_list && negative(value) => {
                let mut pair = arg;
                pair.push("=");
                pair.push(args.next().expect("peeked"));
                joined.push(pair);
            }
            _ => joined.push(arg),
        }
    }
    joined
}

/// The arguments after `kd` that started the run in `dir`, as given.
pub fn saved_argv(dir: &Path) -> Result<Vec<String>> {
    Ok(read_saved(dir)?.argv)
}

fn read_saved(dir: &Path) -> Result<SavedCommand> {
    let path = dir.join("command.json");
    ensure!(dir.is_dir(), "{} cannot be resumed: it is not a run folder", dir.display());
    ensure!(
        path.is_file(),
        "{} cannot be resumed: it has no command.json (a folder from an older kd, or not a run \
         folder); start a new run instead",
        dir.display()
    );
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let saved: SavedCommand = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a command.json kd can read", path.display()))?;
    ensure!(
        saved.layout == LAYOUT,
        "{} was written by a kd with run-folder layout {} (this kd writes layout {LAYOUT}) and \
         cannot be resumed; start a new run instead",
        dir.display(),
        saved.layout
    );
    Ok(saved)
}

/// Refuses an option given on the command line whose value differs from the saved one.
fn check_given(given: &ArgMatches, saved: &ArgMatches, dir: &Path) -> Result<()> {
    let (Some((name, given)), Some((_, saved))) = (given.subcommand(), saved.subcommand()) else {
        return Ok(());
    };
    let command = Cli::command();
    let arguments = command.find_subcommand(name).expect("the subcommand exists");
    // A different preset is named before the options it brings.
    let mut ids: Vec<&str> = given.ids().map(|id| id.as_str()).collect();
    ids.sort_by_key(|&id| id != "preset");
    for id in ids {
        // Group ids (the flattened option structs) are not options.
        let Some(argument) = arguments.get_arguments().find(|a| a.get_id() == id) else {
            continue;
        };
        if FREE.contains(&id) || given.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let values = |m: &ArgMatches| -> Vec<String> {
            m.get_raw(id)
                .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
                .unwrap_or_default()
        };
        let (now, before) = (values(given), values(saved));
        if now != before {
            let long = argument.get_long().unwrap_or(id);
            bail!(
                "--{long} {} conflicts with the run in {}, started with {}; resume without it, \
                 or start a new run",
                now.join(","),
                dir.display(),
                if before.is_empty() { "its default".to_string() } else { before.join(",") }
            );
        }
    }
    Ok(())
}
