//! What a run leaves behind and what it shows: the run folder (`config.json`, `metrics.csv`,
//! `summary.csv`), the one-line-per-epoch log on stderr and the closing table on stdout.
//!
//! Results go to files; stderr carries progress; stdout carries only the final table, so it
//! can be piped.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::checkpoint::temporary_path;
use crate::data::Split;
use crate::teacher::{Teacher, soft_target_logits};
use crate::train::{EpochRecord, Phase, evaluation_from_logits};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Silences progress bars and per-epoch lines (`--quiet`).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `--quiet` was given.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Prints a status line on stderr unless `--quiet`.
pub fn status(line: &str) {
    if !quiet() {
        eprintln!("{line}");
    }
}

/// One row of `summary.csv`: a trained model's final figures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SummaryRow {
    pub phase: String,
    pub model: String,
    pub params: i64,
    pub temperature: Option<f64>,
    pub alpha: Option<f64>,
    pub epochs: i64,
    pub test_acc: f64,
    pub test_errors: i64,
    pub agreement: Option<f64>,
    pub seconds: f64,
    /// Test errors on the class left out of the students' training set (`--omit-class`).
    pub omitted_errors: Option<i64>,
    /// The published test errors this row reproduces (preset runs), in total and on the
    /// omitted class, and `test_errors` minus the published figure.
    pub paper_errors: Option<i64>,
    pub paper_omitted_errors: Option<i64>,
    pub difference: Option<i64>,
}

/// The files a run writes. `--force` removes them before a new run starts in the same folder,
/// so nothing of the old run is left to be mistaken for the new one's.
const RUN_FILES: [&str; 13] = [
    "config.json",
    "command.json",
    "metrics.csv",
    "summary.csv",
    "teacher.safetensors",
    "baseline.safetensors",
    "student.safetensors",
    "teacher.state.safetensors",
    "baseline.state.safetensors",
    "student.state.safetensors",
    "student.pt",
    "student.json",
    "learning_curves.png",
];

/// The state file of `phase` in a run folder: its model, optimizer and records at the end of
/// its last finished epoch.
pub fn state_file(phase: Phase) -> String {
    format!("{}.state.safetensors", phase.name())
}

/// Refuses a `--force` that would remove one of `inputs`, a file the command reads: `doomed`
/// are the files and folders it removes. Paths are compared once resolved, so `./x` and a
/// link to `x` count as `x`.
pub fn keep_inputs(doomed: &[PathBuf], inputs: &[PathBuf]) -> Result<()> {
    let resolved = |path: &Path| fs::canonicalize(path).ok();
    let doomed: Vec<PathBuf> = doomed.iter().filter_map(|d| resolved(d)).collect();
    for input in inputs {
        let Some(input_path) = resolved(input) else { continue };
        for doomed_path in &doomed {
            if input_path.starts_with(doomed_path) {
                bail!(
                    "--force would delete {}, which this command reads; copy it out of \
                     the folder first or choose another --out",
                    input.display()
                );
            }
        }
    }
    Ok(())
}

/// Takes the lock of folder `dir` (its `.lock` file) for as long as the returned file is open.
/// The lock is the operating system's, so a killed process never leaves it held.
pub fn lock_folder(dir: &Path) -> Result<File> {
    let path = dir.join(".lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot create the lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{} is in use by another kd process (it holds {}); wait for it to finish or choose \
             another --out",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// The summary rows of a teacher used as it is (loaded, not trained here): each member's
/// figures on `test` and, for an ensemble, the ensemble's own.
pub fn teacher_rows(teacher: &Teacher, test: &Split) -> Vec<SummaryRow> {
    let row = |phase: &str, model: String, params: i64, logits: &Tensor| {
        let eval = evaluation_from_logits(logits, &test.labels, None);
        SummaryRow {
            phase: phase.to_string(),
            model,
            params,
            temperature: None,
            alpha: None,
            epochs: 0,
            test_acc: eval.accuracy,
            test_errors: eval.errors,
            agreement: None,
            seconds: 0.0,
            omitted_errors: None,
            paper_errors: None,
            paper_omitted_errors: None,
            difference: None,
        }
    };
    let stacked = teacher.member_logits(&test.images);
    let mut rows: Vec<SummaryRow> = teacher
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            row(Phase::Teacher.name(), m.description.clone(), m.params, &stacked.get(i as i64))
        })
        .collect();
    if teacher.members.len() > 1 {
        let combined = soft_target_logits(&stacked, 1.0, teacher.ensemble);
        rows.push(row("ensemble", teacher.description(), teacher.params(), &combined));
    }
    rows
}

/// A run folder being written (locked against other `kd` processes while this lives).
pub struct RunDir {
    pub path: PathBuf,
    metrics: csv::Writer<File>,
    _lock: File,
}

impl RunDir {
    /// Creates (or reuses, with `force`) the folder `path` and starts its `metrics.csv`.
    /// A folder that already holds a run (finished, or killed and resumable) is refused
    /// without `force`; with it, so is one where a file `force` removes is one of `inputs`
    /// (the teachers the command reads).
    pub fn create(path: &Path, force: bool, inputs: &[PathBuf]) -> Result<RunDir> {
        // A folder in use says so before anything else.
        let held = match path.is_dir() {
            true => Some(lock_folder(path)?),
            false => None,
        };
        if path.join("summary.csv").exists() && !force {
            bail!(
                "{} already holds a finished run; pass --force to overwrite it \
                 or choose another --out",
                path.display()
            );
        }
        if path.join("command.json").exists() && !force {
            bail!(
                "{} holds an unfinished run; continue it with --resume {}, or pass --force to \
                 start afresh, or choose another --out",
                path.display(),
                path.display()
            );
        }
        fs::create_dir_all(path)
            .with_context(|| format!("cannot create run folder {}", path.display()))?;
        let lock = match held {
            Some(lock) => lock,
            None => lock_folder(path)?,
        };
        if force {
            let doomed: Vec<PathBuf> = RUN_FILES.iter().map(|name| path.join(name)).collect();
            keep_inputs(&doomed, inputs)?;
            for old in doomed.iter().filter(|old| old.exists()) {
                fs::remove_file(old).with_context(|| format!("cannot remove {}", old.display()))?;
            }
        }
        let metrics_path = path.join("metrics.csv");
        let metrics = csv::Writer::from_path(&metrics_path)
            .with_context(|| format!("cannot write {}", metrics_path.display()))?;
        Ok(RunDir { path: path.to_path_buf(), metrics, _lock: lock })
    }

    /// Opens the killed run in `path` to continue it: `metrics.csv` is rewritten from the
    /// records in the state files of `phases` (in order), so it holds exactly the epochs saved.
    pub fn resume(path: &Path, phases: &[Phase]) -> Result<RunDir> {
        ensure!(
            !path.join("summary.csv").exists(),
            "{} holds a finished run: there is nothing to resume",
            path.display()
        );
        let lock = lock_folder(path)?;
        let metrics_path = path.join("metrics.csv");
        let mut metrics = csv::Writer::from_path(&metrics_path)
            .with_context(|| format!("cannot write {}", metrics_path.display()))?;
        for &phase in phases {
            let state = path.join(state_file(phase));
            if state.exists() {
                for record in crate::checkpoint::state_records(&state)? {
                    metrics.serialize(record)?;
                }
            }
        }
        metrics.flush().with_context(|| format!("cannot write {}", metrics_path.display()))?;
        Ok(RunDir { path: path.to_path_buf(), metrics, _lock: lock })
    }

    /// The path of `name` inside the run folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes the resolved configuration as `config.json`.
    pub fn write_config<T: Serialize>(&self, config: &T) -> Result<()> {
        let text = serde_json::to_string_pretty(config)?;
        write_atomically(&self.file("config.json"), text.as_bytes())
    }

    /// Appends an epoch to `metrics.csv` (flushed at once) and prints its line on stderr.
    pub fn record_epoch(&mut self, record: &EpochRecord) -> Result<()> {
        self.metrics.serialize(record)?;
        self.metrics
            .flush()
            .with_context(|| format!("cannot write {}", self.file("metrics.csv").display()))?;
        status(&epoch_line(record));
        Ok(())
    }

    /// Removes the phases' state files once the run has finished (its checkpoints remain).
    pub fn remove_states(&self) -> Result<()> {
        for phase in [Phase::Teacher, Phase::Baseline, Phase::Student] {
            let path = self.file(&state_file(phase));
            if path.exists() {
                fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Writes `summary.csv` whole.
    pub fn write_summary(&self, rows: &[SummaryRow]) -> Result<()> {
        let mut writer = csv::Writer::from_writer(vec![]);
        rows.iter().try_for_each(|row| writer.serialize(row))?;
        write_atomically(&self.file("summary.csv"), &writer.into_inner()?)
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so `path` is always whole.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary_path(path);
    let mut file = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot move {} into place", tmp.display()))
}

/// The compact stderr line for one epoch.
pub fn epoch_line(r: &EpochRecord) -> String {
    let agreement = r.agreement.map_or("-".to_string(), |a| format!("{:.2}%", 100.0 * a));
    format!(
        "{:<8} epoch {:>3}  train loss {:.4}  test loss {:.4}  acc {:.2}%  errors {:>4}  \
         agreement {:>7}  {:.1}s",
        r.phase.name(),
        r.epoch,
        r.train_loss,
        r.test_loss,
        100.0 * r.test_acc,
        r.test_errors,
        agreement,
        r.seconds
    )
}

/// The closing table: one line per trained model.
pub fn table(rows: &[SummaryRow]) -> String {
    let width = rows.iter().map(|r| r.model.len()).max().unwrap_or(0).max(28);
    let phase_width = rows.iter().map(|r| r.phase.len()).max().unwrap_or(0).max(9);
    let mut out = format!(
        "{:<phase_width$} {:<width$} {:>9} {:>8} {:>7} {:>10}\n",
        "phase", "model", "params", "test acc", "errors", "agreement"
    );
    for r in rows {
        let agreement = r.agreement.map_or("-".to_string(), |a| format!("{:.2}%", 100.0 * a));
        out += &format!(
            "{:<phase_width$} {:<width$} {:>9} {:>7.2}% {:>7} {:>10}\n",
            r.phase,
            r.model,
            r.params,
            100.0 * r.test_acc,
            r.test_errors,
            agreement
        );
    }
    out
}
