//! Presets: named recipes for `kd run`, kept as TOML files in `models/presets/` and built into
//! the binary. A preset is a list of `kd run` options plus what it is expected to give: the
//! paper's test errors for each row of the run's summary, the errors `kd` measured, and how
//! long it took.
//!
//! `kd run --preset NAME [OPTIONS]` puts the preset's options before the user's, so options
//! given on the command line override the preset's. NAME may also be the path of a `.toml`
//! file of the same form.

use std::ffi::OsString;

use anyhow::{Context, Result, bail, ensure};
use clap::CommandFactory;
use serde::Deserialize;

use crate::cli::Cli;
use crate::report::SummaryRow;

/// The presets shipped with `kd`: their names and their files' text.
const BUILT_IN: [(&str, &str); 2] = [
    ("hinton-mnist", include_str!("../models/presets/hinton-mnist.toml")),
    ("hinton-mnist-omit3", include_str!("../models/presets/hinton-mnist-omit3.toml")),
];

/// One preset file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    /// One line on what the preset reproduces.
    pub summary: String,
    /// The command that runs it.
    pub command: String,
    /// Wall time, as measured, on a 2-core CPU and on a GPU.
    pub time_cpu: String,
    pub time_gpu: String,
    /// The `kd run` options.
    pub args: Vec<String>,
    /// The published numbers each summary row is compared with.
    #[serde(default)]
    pub paper: Vec<PaperRow>,
}

/// A published result and the summary row of a run that reproduces it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperRow {
    /// The `phase` of the summary row it compares with.
    pub phase: String,
    /// What the row is, in the comparison table.
    pub label: String,
    /// The paper's test errors (of 10,000), when it gives them.
    pub errors: Option<i64>,
    /// The paper's test errors on the omitted class, when it gives them.
    pub omitted_errors: Option<i64>,
    /// The test errors `kd` made in the run the README reports, in total and on the omitted
    /// class.
    pub measured: Option<i64>,
    pub measured_omitted: Option<i64>,
}

/// The built-in preset `name`, or the preset file at `name` when it ends in `.toml`.
pub fn find(name: &str) -> Result<Preset> {
    if name.ends_with(".toml") {
        let text = std::fs::read_to_string(name)
            .with_context(|| format!("cannot read the preset file {name}"))?;
        return parse(&text).with_context(|| format!("{name} is not a valid preset file"));
    }
    match BUILT_IN.iter().find(|(known, _)| *known == name) {
        Some((_, text)) => Ok(parse(text).expect("built-in presets parse (a unit test checks)")),
        None => {
            let known: Vec<&str> = BUILT_IN.iter().map(|(n, _)| *n).collect();
            bail!(
                "no preset named '{name}' (known: {}; or give a path ending in .toml)",
                known.join(", ")
            )
        }
    }
}

/// Every built-in preset, in the order `kd presets` lists them.
pub fn built_in() -> Vec<Preset> {
    BUILT_IN.iter().map(|(name, _)| find(name).expect("built-in presets parse")).collect()
}

fn parse(text: &str) -> Result<Preset> {
    let preset: Preset = toml::from_str(text)?;
    ensure!(
        !preset.args.iter().any(|a| a == "--preset" || a.starts_with("--preset=")),
        "a preset cannot name another preset"
    );
    Ok(preset)
}

/// The preset a `kd run` command line (program name first, then `run`) names with
/// `--preset NAME` or `--preset=NAME`, if any.
pub fn named_in(args: &[OsString]) -> Option<String> {
    if args.get(1).is_none_or(|a| a != "run") {
        return None;
    }
    let mut rest = args[2..].iter().filter_map(|a| a.to_str());
    while let Some(arg) = rest.next() {
        if arg == "--preset" {
            return rest.next().map(str::to_string);
        }
        if let Some(name) = arg.strip_prefix("--preset=") {
            return Some(name.to_string());
        }
    }
    None
}

/// The command line `args` (program name first) with the options of its `kd run --preset`
/// inserted right after `run`, ahead of the user's own; other command lines come back as given.
pub fn expand(args: Vec<OsString>, preset: Option<&str>) -> Result<Vec<OsString>> {
    let Some(name) = preset else { return Ok(args) };
    let preset = find(name)?;
    ensure!(args.get(1).is_some_and(|a| a == "run"), "--preset is an option of kd run");
    let named =
        |a: &&OsString| a.to_str().is_some_and(|a| a == "--preset" || a.starts_with("--preset="));
    let times = args.iter().filter(named).count();
    ensure!(times <= 1, "--preset is given {times} times: a run follows one preset");
    let mut expanded = args[..2].to_vec();
    expanded.extend(preset.args.iter().map(OsString::from));
    expanded.extend_from_slice(&args[2..]);
    Ok(expanded)
}

/// What an error about the options of a run under preset `name` begins with: the option at
/// fault may be the preset's rather than the user's.
pub fn under(name: &str) -> String {
    format!("under preset {name}, whose options (`kd presets` lists them) come before yours")
}

/// Options that leave a preset's recipe as it is: where the files are, the device, the seed (a
/// replicate of the same recipe), and how progress shows.
const KEEP_RECIPE: [&str; 10] = [
    "--preset",
    "--out",
    "--data",
    "--force",
    "--resume",
    "--device",
    "--seed",
    "--quiet",
    "--no-plot",
    "--teacher-from",
];

/// The options of a `kd run --preset` command line (the arguments after `kd`, as given) that
/// change `preset`'s recipe, in the order first given: every option but those of
/// [`KEEP_RECIPE`] whose last value differs from the preset's own.
pub fn recipe_changes(args: &[String], preset: &Preset) -> Vec<String> {
    let given = options(args);
    let recipe = options(&preset.args);
    let command = Cli::command();
    let run = command.find_subcommand("run").expect("kd has a run command");
    let mut changes: Vec<String> = Vec::new();
    for &(name, _) in &given {
        let default = default_value(run, name);
        let before = last_value(&recipe, name).or(default.as_deref().map(Some));
        let same = same_value(last_value(&given, name), before);
        if !KEEP_RECIPE.contains(&name) && !same && !changes.iter().any(|c| c == name) {
            changes.push(name.to_string());
        }
    }
    changes
}

/// The default value of the `kd run` option `name` (`--lr`), if it has one.
fn default_value(run: &clap::Command, name: &str) -> Option<String> {
    let option = run.get_arguments().find(|a| a.get_long() == name.strip_prefix("--"))?;
    Some(option.get_default_values().first()?.to_str()?.to_string())
}

/// Whether two option values are the same setting: equal as text, or as numbers (`20`, `20.0`
/// and `2e1` are one temperature).
fn same_value(a: Option<Option<&str>>, b: Option<Option<&str>>) -> bool {
    let number = |v: Option<Option<&str>>| v.flatten().and_then(|v| v.parse::<f64>().ok());
    a == b || number(a).is_some_and(|x| number(b) == Some(x))
}

/// The options in `args` with their values: `--x v` and `--x=v` give `("--x", Some("v"))`, and
/// a flag `("--x", None)`.
fn options(args: &[String]) -> Vec<(&str, Option<&str>)> {
    let mut options = Vec::new();
    for (i, arg) in args.iter().enumerate().filter(|(_, a)| a.starts_with("--")) {
        let option = match arg.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => {
                let value = args.get(i + 1).map(String::as_str).filter(|v| !v.starts_with("--"));
                (arg.as_str(), value)
            }
        };
        options.push(option);
    }
    options
}

/// The value `name` has last in `options`: `None` when absent, `Some(None)` for a flag.
fn last_value<'a>(options: &[(&str, Option<&'a str>)], name: &str) -> Option<Option<&'a str>> {
    options.iter().rev().find(|(n, _)| *n == name).map(|&(_, value)| value)
}

/// `kd presets`: each preset's summary, command, expected numbers and time.
pub fn describe(presets: &[Preset]) -> String {
    let mut out = String::new();
    for preset in presets {
        out += &format!("{}\n  {}\n  command:  {}\n", preset.name, preset.summary, preset.command);
        out += &format!("  CPU time: {}\n  GPU time: {}\n", preset.time_cpu, preset.time_gpu);
        out += &format!("  options:  {}\n", preset.args.join(" "));
        if !preset.paper.is_empty() {
            out += "  expected test errors:\n";
            for row in &preset.paper {
                let paper = errors_text(row.errors, row.omitted_errors);
                let measured = errors_text(row.measured, row.measured_omitted);
                out += &format!("    {:<46} paper {paper:>10}  kd {measured:>10}\n", row.label);
            }
        }
        out.push('\n');
    }
    out
}

/// Fills the paper's columns of the summary rows the preset compares.
pub fn attach_paper(rows: &mut [SummaryRow], preset: &Preset) {
    for row in rows.iter_mut() {
        if let Some(paper) = preset.paper.iter().find(|p| p.phase == row.phase) {
            row.paper_errors = paper.errors;
            row.paper_omitted_errors = paper.omitted_errors;
            row.difference = paper.errors.map(|e| row.test_errors - e);
        }
    }
}

/// The table printed at the end of a preset run: for each row the preset compares, the paper's
/// test errors, this run's and the difference, then how much of the gap between the baseline
/// and the teacher the distilled student closed (when the run has all three). `changes` are
/// the options given beside the preset that change its recipe ([`recipe_changes`]).
pub fn comparison(rows: &[SummaryRow], preset: &Preset, changes: &[String]) -> String {
    let mut out = format!(
        "\n{} beside the paper (test errors of 10,000; on the omitted class in brackets)\n",
        preset.name
    );
    if !changes.is_empty() {
        out += &format!(
            "note: {} given beside the preset change its recipe, so kd's numbers are not the \
             preset's\n",
            changes.join(", ")
        );
    }
    out += &format!("{:<46} {:>10} {:>10} {:>11}\n", "row", "paper", "kd", "difference");
    for paper in &preset.paper {
        let Some(row) = rows.iter().find(|r| r.phase == paper.phase) else { continue };
        let ours = errors_text(Some(row.test_errors), row.omitted_errors);
        let difference = row.difference.map_or("-".to_string(), |d| format!("{d:+}"));
        let paper_errors = errors_text(paper.errors, paper.omitted_errors);
        out += &format!("{:<46} {paper_errors:>10} {ours:>10} {difference:>11}\n", paper.label);
    }
    let errors = |phase: &str| rows.iter().find(|r| r.phase == phase).map(|r| r.test_errors);
    if let (Some(teacher), Some(baseline), Some(student)) =
        (errors("teacher"), errors("baseline"), errors("student"))
        && baseline > teacher
    {
        let closed = 100.0 * (baseline - student) as f64 / (baseline - teacher) as f64;
        out += &format!(
            "the distilled student closes {closed:.0}% of the gap between the baseline \
             ({baseline}) and the teacher ({teacher})\n"
        );
    }
    out
}

fn errors_text(errors: Option<i64>, omitted: Option<i64>) -> String {
    match (errors, omitted) {
        (Some(e), Some(o)) => format!("{e} ({o})"),
        (Some(e), None) => e.to_string(),
        (None, _) => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_presets_parse_and_name_themselves() {
        for (name, text) in BUILT_IN {
            let preset = parse(text).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(preset.name, name);
            assert!(preset.command.contains(&format!("--preset {name}")));
        }
    }

    #[test]
    fn expansion_puts_the_preset_before_the_users_options() {
        let args: Vec<OsString> = ["kd", "run", "--seed", "3"].iter().map(OsString::from).collect();
        let expanded = expand(args.clone(), Some("hinton-mnist")).unwrap();
        let preset = find("hinton-mnist").unwrap();
        assert_eq!(expanded[..2], args[..2]);
        assert_eq!(
            expanded[2..2 + preset.args.len()],
            preset.args.iter().map(OsString::from).collect::<Vec<_>>()[..]
        );
        assert_eq!(expanded[2 + preset.args.len()..], args[2..]);
        assert_eq!(expand(args.clone(), None).unwrap(), args);
        let unknown = expand(args, Some("hinton-cifar")).unwrap_err().to_string();
        assert!(unknown.contains("no preset named 'hinton-cifar'"), "{unknown}");
        let twice: Vec<OsString> = ["kd", "run", "--preset", "hinton-mnist", "--preset=x.toml"]
            .iter()
            .map(OsString::from)
            .collect();
        let error = expand(twice, Some("hinton-mnist")).unwrap_err().to_string();
        assert_eq!(error, "--preset is given 2 times: a run follows one preset");
    }

    #[test]
    fn recipe_changes_are_the_options_beyond_files_device_seed_and_progress() {
        let args: Vec<String> = [
            "run",
            "--preset",
            "hinton-mnist",
            "--out",
            "runs/x",
            "--teacher-from",
            "t.safetensors",
            "--seed=3",
            "--temperature",
            "20.0",
            "--student-epochs",
            "5",
            "--quiet",
            "--alpha=0.5",
            "--lr",
            "0.1",
            "--lr=5e-2",
            "--momentum",
            "0.90",
            "--student-epochs",
            "6",
            "--no-baseline",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        // hinton-mnist runs at T = 20 with a peak of 0.05 and the default momentum of 0.9, so
        // those change nothing, however written.
        let preset = find("hinton-mnist").unwrap();
        let changes = recipe_changes(&args, &preset);
        assert_eq!(changes, ["--student-epochs", "--alpha", "--no-baseline"]);
        assert!(recipe_changes(&args[..10], &preset).is_empty());
    }
}
