//! Temperature and alpha sweeps: a grid of distillation points (plus a baseline per seed) that
//! share one teacher, trained together in groups, written to CSV as each group finishes.
//!
//! Points with the same seed start from the same weights and see the same batches, so they
//! train as one group (one batch draw, one teacher lookup or forward, one optimizer each); a
//! point's numbers equal those of `kd distill` with the same settings and seed. A sweep folder
//! is resumable (finished points are skipped; the final CSVs are rewritten in grid order) and
//! can be split into shards that `kd sweep merge` joins.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::data::{CLASSES, Mnist};
use crate::loss::KdLoss;
use crate::models::{Model, ModelSpec};
use crate::report::{status, teacher_rows, write_atomically};
use crate::teacher::{Ensemble, Teacher};
use crate::train::{
    DistillConfig, Divergence, EpochRecord, Member, Objective, Phase, PhaseConfig, TeacherTargets,
    seeded_model, train_group,
};

/// Everything that defines a sweep; saved as `config.json` and compared on resume and merge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepConfig {
    pub kd_version: String,
    pub data: PathBuf,
    pub device: String,
    pub train_samples: i64,
    /// The teacher, or the members of an ensemble.
    pub teachers: Vec<TeacherFile>,
    pub ensemble: Ensemble,
    pub student_model: String,
    /// The phase settings; its `seed` is replaced by each point's seed.
    pub student: PhaseConfig,
    pub kd_loss: KdLoss,
    pub temperatures: Vec<f64>,
    pub alphas: Vec<f64>,
    pub seeds: Vec<i64>,
    pub baseline: bool,
    /// `[I, N]`: this folder holds the I-th of N shards.
    pub shard: Option<[usize; 2]>,
}

/// A teacher file of a sweep.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TeacherFile {
    pub path: PathBuf,
    pub model: String,
    /// SHA-256 of the file, so a teacher replaced at the same path is noticed.
    pub sha256: String,
}

/// One training job of a sweep: the baseline of a seed (no temperature, alpha 0) or a
/// distilled student at (temperature, alpha, seed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub temperature: Option<f64>,
    pub alpha: f64,
    pub seed: i64,
}

impl Point {
    fn phase(&self) -> Phase {
        if self.temperature.is_some() { Phase::Student } else { Phase::Baseline }
    }

    /// The text that identifies a point in CSV rows and file names.
    fn key(&self) -> String {
        match self.temperature {
            Some(t) => format!("T{t}-a{}-s{}", self.alpha, self.seed),
            None => format!("baseline-s{}", self.seed),
        }
    }
}

/// One row of `sweep.csv`: a point's final figures. A point whose training loss stopped being
/// finite has `diverged` set (where it happened), NaN as its final accuracy, no test errors
/// and no agreement, and counts its finished epochs only.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SweepRow {
    pub phase: Phase,
    pub temperature: Option<f64>,
    pub alpha: f64,
    pub seed: i64,
    pub final_test_acc: f64,
    pub best_test_acc: f64,
    pub test_errors: Option<i64>,
    pub agreement: Option<f64>,
    pub epochs: i64,
    pub seconds: f64,
    pub diverged: Option<String>,
}

impl SweepRow {
    fn point(&self) -> Point {
        Point { temperature: self.temperature, alpha: self.alpha, seed: self.seed }
    }

    /// Whether the row's point is complete in the sweep folder `dir`: diverged, or with its
    /// checkpoint.
    fn is_complete(&self, dir: &Path) -> bool {
        self.diverged.is_some() || checkpoint_path(dir, &self.point()).is_file()
    }
}

/// One row of a sweep's `metrics.csv`: an epoch of a point.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PointEpoch {
    pub phase: Phase,
    pub temperature: Option<f64>,
    pub alpha: f64,
    pub seed: i64,
    pub epoch: i64,
    pub train_loss: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub test_errors: i64,
    pub agreement: Option<f64>,
    pub lr: f64,
    pub seconds: f64,
}

/// One row of `sweep_summary.csv`: a (temperature, alpha) pair over its seeds that did not
/// diverge (`seeds`); `diverged` counts the others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SeedSummary {
    pub phase: Phase,
    pub temperature: Option<f64>,
    pub alpha: f64,
    pub seeds: usize,
    pub diverged: usize,
    pub mean_test_acc: f64,
    pub std_test_acc: f64,
    pub mean_test_errors: f64,
    pub std_test_errors: f64,
    pub mean_agreement: Option<f64>,
}

impl SweepConfig {
    /// Every point of the grid in its fixed order: the baselines, then temperature, alpha and
    /// seed, the last varying fastest.
    pub fn grid(&self) -> Vec<Point> {
        let baselines = self.seeds.iter().filter(|_| self.baseline);
        let baselines = baselines.map(|&seed| Point { temperature: None, alpha: 0.0, seed });
        let students = self.temperatures.iter().flat_map(|&t| {
            self.alphas.iter().flat_map(move |&alpha| {
                self.seeds.iter().map(move |&seed| Point { temperature: Some(t), alpha, seed })
            })
        });
        baselines.chain(students).collect()
    }

    /// The points of this folder's shard: every N-th point of the grid, from the I-th.
    pub fn points(&self) -> Vec<Point> {
        let [index, count] = self.shard.unwrap_or([1, 1]);
        self.grid()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % count == index - 1)
            .map(|(_, p)| p)
            .collect()
    }
}

/// The files a sweep writes; `--force` removes them before a new sweep starts in the folder.
const SWEEP_FILES: [&str; 6] =
    ["config.json", "command.json", "sweep.csv", "metrics.csv", "sweep_summary.csv", "summary.csv"];

/// Removes a previous sweep's files (and its `points/` checkpoints) from `dir`, unless one of
/// them is one of `inputs` (what the command reads: the sweep's teachers, or merge's parts).
pub fn clear(dir: &Path, inputs: &[PathBuf]) -> Result<()> {
    let doomed: Vec<PathBuf> =
        SWEEP_FILES.iter().chain(&["points"]).map(|name| dir.join(name)).collect();
    crate::report::keep_inputs(&doomed, inputs)?;
    for name in SWEEP_FILES {
        let path = dir.join(name);
        if path.exists() {
            fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    let points = dir.join("points");
    if points.exists() {
        fs::remove_dir_all(&points)
            .with_context(|| format!("cannot remove {}", points.display()))?;
    }
    Ok(())
}

/// Runs (or resumes) the sweep `config` in `dir`, training at most `group_size` points at once.
pub fn run_sweep(
    config: &SweepConfig,
    teacher: &Teacher,
    data: &Mnist,
    dir: &Path,
    group_size: usize,
) -> Result<()> {
    let spec: ModelSpec = config.student_model.parse()?;
    let finished = prepare_folder(config, dir)?;
    write_rows(&dir.join("summary.csv"), &teacher_rows(teacher, &data.test))?;

    let pending: Vec<Point> =
        config.points().into_iter().filter(|p| !finished.contains(&p.key())).collect();
    let skipped = config.points().len() - pending.len();
    status(&format!("sweep: {} points to train, {skipped} already finished", pending.len()));
    // Students with dropout draw their masks from the shared generator: trained together they
    // would not reproduce a lone run, so they train one at a time.
    let group_size = if spec.dropout > 0.0 || spec.input_dropout > 0.0 { 1 } else { group_size };

    if !pending.is_empty() {
        let targets = TeacherTargets::new(teacher, data, config.student.jitter, true);
        for group in groups(&pending, group_size) {
            train_points(config, &spec, &group, &targets, data, dir).map_err(|error| {
                match crate::interrupt::is_interrupt(&error) {
                    true => error.context(format!(
                        "the sweep stopped; its finished points are kept in {0}: run the same \
                         command again, or kd sweep --resume {0}, to train the rest",
                        dir.display()
                    )),
                    false => error,
                }
            })?;
        }
    }
    finish_sweep(config, dir)
}

/// Splits points into groups of one seed each, at most `size` long, in grid order.
fn groups(points: &[Point], size: usize) -> Vec<Vec<Point>> {
    let mut by_seed: BTreeMap<i64, Vec<Point>> = BTreeMap::new();
    for point in points {
        by_seed.entry(point.seed).or_default().push(*point);
    }
    by_seed
        .into_values()
        .flat_map(|points| points.chunks(size).map(<[Point]>::to_vec).collect::<Vec<_>>())
        .collect()
}

/// Refuses a folder that holds another sweep, or a run that is not a sweep; writes nothing, so
/// a refused sweep leaves the folder as it was.
pub fn check_folder(config: &SweepConfig, dir: &Path) -> Result<()> {
    if dir.join("config.json").exists() {
        let differences = differing_settings(&read_config(dir)?, config)?;
        ensure!(
            differences.is_empty(),
            "{} holds a different sweep (its config.json differs in {}); resume it with the same \
             options, or choose another --out, or pass --force to start afresh",
            dir.display(),
            differences.join(", ")
        );
    }
    Ok(())
}

/// Creates or checks the folder; returns the keys of the points already finished, and keeps
/// only their rows in `metrics.csv`.
fn prepare_folder(config: &SweepConfig, dir: &Path) -> Result<HashSet<String>> {
    check_folder(config, dir)?;
    fs::create_dir_all(dir.join("points"))
        .with_context(|| format!("cannot create sweep folder {}", dir.display()))?;
    write_atomically(&dir.join("config.json"), serde_json::to_string_pretty(config)?.as_bytes())?;

    // A kill can cut the last line of a CSV; such a line belongs to an unfinished point. A point
    // counts as finished only with its row and its checkpoint (a diverged point has none).
    let rows: Vec<SweepRow> = read_intact_rows(&dir.join("sweep.csv"))?;
    let rows: Vec<SweepRow> = rows.into_iter().filter(|r| r.is_complete(dir)).collect();
    write_rows(&dir.join("sweep.csv"), &rows)?;
    let finished: HashSet<String> = rows.iter().map(|r| r.point().key()).collect();
    let epochs: Vec<PointEpoch> = read_intact_rows(&dir.join("metrics.csv"))?;
    let kept: Vec<PointEpoch> = epochs
        .into_iter()
        .filter(|e| finished.contains(&row_point(e.temperature, e.alpha, e.seed).key()))
        .collect();
    write_rows(&dir.join("metrics.csv"), &kept)?;
    Ok(finished)
}

fn row_point(temperature: Option<f64>, alpha: f64, seed: i64) -> Point {
    Point { temperature, alpha, seed }
}

/// The checkpoint file of a point in the sweep folder `dir`.
fn checkpoint_path(dir: &Path, point: &Point) -> PathBuf {
    dir.join("points").join(format!("{}.safetensors", point.key()))
}

/// Trains one group of points (same seed) together and appends their rows.
fn train_points(
    config: &SweepConfig,
    spec: &ModelSpec,
    points: &[Point],
    teacher: &TeacherTargets,
    data: &Mnist,
    dir: &Path,
) -> Result<()> {
    let seed = points[0].seed;
    let phase = PhaseConfig { seed, ..config.student.clone() };
    let mut models: Vec<Model> = points
        .iter()
        .map(|_| seeded_model(spec, CLASSES, data.train.images.device(), seed))
        .collect();
    let mut members: Vec<Member> = points
        .iter()
        .zip(&mut models)
        .map(|(point, model)| Member {
            model,
            phase: point.phase(),
            objective: match point.temperature {
                Some(temperature) => Objective::Distill(DistillConfig {
                    temperature,
                    alpha: point.alpha,
                    kd_loss: config.kd_loss,
                }),
                None => Objective::Labels,
            },
            resume: None,
        })
        .collect();
    let names: Vec<String> = points.iter().map(Point::key).collect();
    status(&format!("sweep: training {} together (seed {seed})", names.join(", ")));

    let mut metrics = append_writer(&dir.join("metrics.csv"))?;
    let outcome = train_group(&mut members, Some(teacher), data, &phase, &mut |end| {
        metrics.serialize(point_epoch(&points[end.member], end.record))?;
        metrics.flush().context("cannot write metrics.csv")?;
        Ok(())
    })?;

    let mut sweep = append_writer(&dir.join("sweep.csv"))?;
    let results = outcome.records.iter().zip(&outcome.diverged);
    for ((point, model), (records, diverged)) in points.iter().zip(&models).zip(results) {
        match diverged {
            None => checkpoint::save(model, &checkpoint_path(dir, point))?,
            Some(divergence) => log::warn!(
                "point {} diverged ({divergence}); sweep.csv records it without results, and \
                 the other points are not affected",
                point.key()
            ),
        }
        sweep.serialize(sweep_row(point, records, diverged.as_ref()))?;
    }
    sweep.flush().context("cannot write sweep.csv")?;
    Ok(())
}

fn point_epoch(point: &Point, r: &EpochRecord) -> PointEpoch {
    PointEpoch {
        phase: point.phase(),
        temperature: point.temperature,
        alpha: point.alpha,
        seed: point.seed,
        epoch: r.epoch,
        train_loss: r.train_loss,
        test_loss: r.test_loss,
        test_acc: r.test_acc,
        test_errors: r.test_errors,
        agreement: r.agreement,
        lr: r.lr,
        seconds: r.seconds,
    }
}

/// A point's row: the figures of its last epoch, or, if it diverged, where that happened.
fn sweep_row(point: &Point, records: &[EpochRecord], diverged: Option<&Divergence>) -> SweepRow {
    let last = records.last().filter(|_| diverged.is_none());
    SweepRow {
        phase: point.phase(),
        temperature: point.temperature,
        alpha: point.alpha,
        seed: point.seed,
        final_test_acc: last.map_or(f64::NAN, |r| r.test_acc),
        // f64::max skips NaN: a point that diverged in its first epoch keeps NaN.
        best_test_acc: records.iter().map(|r| r.test_acc).fold(f64::NAN, f64::max),
        test_errors: last.map(|r| r.test_errors),
        agreement: last.and_then(|r| r.agreement),
        epochs: records.len() as i64,
        seconds: records.iter().map(|r| r.seconds).sum(),
        diverged: diverged.map(|d| format!("epoch {}, step {}", d.epoch, d.step)),
    }
}

/// Rewrites `sweep.csv` and `metrics.csv` in grid order and writes `sweep_summary.csv`, once
/// every point of the folder's shard has finished; prints the summary.
pub fn finish_sweep(config: &SweepConfig, dir: &Path) -> Result<()> {
    let order: BTreeMap<String, usize> =
        config.grid().iter().enumerate().map(|(i, p)| (p.key(), i)).collect();
    let position = |t: Option<f64>, a: f64, s: i64| {
        order.get(&row_point(t, a, s).key()).copied().unwrap_or(usize::MAX)
    };

    let mut rows: Vec<SweepRow> = read_rows(&dir.join("sweep.csv"))?;
    rows.sort_by_key(|r| position(r.temperature, r.alpha, r.seed));
    let expected = config.points().len();
    ensure!(
        rows.len() == expected,
        "{}: {} of {expected} points finished",
        dir.display(),
        rows.len()
    );
    write_rows(&dir.join("sweep.csv"), &rows)?;

    let mut epochs: Vec<PointEpoch> = read_rows(&dir.join("metrics.csv"))?;
    epochs.sort_by_key(|e| (position(e.temperature, e.alpha, e.seed), e.epoch));
    write_rows(&dir.join("metrics.csv"), &epochs)?;

    let summary = summarize(&rows);
    write_rows(&dir.join("sweep_summary.csv"), &summary)?;
    print!("{}", summary_table(&summary));
    status(&format!("results in {}", dir.display()));
    Ok(())
}

/// Mean and sample standard deviation over seeds of each (phase, temperature, alpha).
pub fn summarize(rows: &[SweepRow]) -> Vec<SeedSummary> {
    let mut groups: Vec<(Phase, Option<f64>, f64, Vec<&SweepRow>)> = vec![];
    for row in rows {
        match groups
            .iter_mut()
            .find(|g| g.0 == row.phase && g.1 == row.temperature && g.2 == row.alpha)
        {
            Some(group) => group.3.push(row),
            None => groups.push((row.phase, row.temperature, row.alpha, vec![row])),
        }
    }
    groups
        .into_iter()
        .map(|(phase, temperature, alpha, rows)| {
            let (kept, diverged): (Vec<&SweepRow>, Vec<&SweepRow>) =
                rows.into_iter().partition(|r| r.diverged.is_none());
            let acc: Vec<f64> = kept.iter().map(|r| r.final_test_acc).collect();
            let errors: Vec<f64> =
                kept.iter().flat_map(|r| r.test_errors).map(|e| e as f64).collect();
            let agreement: Option<Vec<f64>> = kept.iter().map(|r| r.agreement).collect();
            SeedSummary {
                phase,
                temperature,
                alpha,
                seeds: kept.len(),
                diverged: diverged.len(),
                mean_test_acc: mean(&acc),
                std_test_acc: std(&acc),
                mean_test_errors: mean(&errors),
                std_test_errors: std(&errors),
                mean_agreement: agreement.map(|a| mean(&a)),
            }
        })
        .collect()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Sample standard deviation (n - 1); 0 for a single value, NaN for none.
fn std(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return if values.is_empty() { f64::NAN } else { 0.0 };
    }
    let m = mean(values);
    (values.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
}

fn summary_table(rows: &[SeedSummary]) -> String {
    let mut out = format!(
        "{:<9} {:>11} {:>6} {:>6} {:>9} {:>8} {:>9}\n",
        "phase", "temperature", "alpha", "seeds", "test acc", "± std", "errors"
    );
    for r in rows {
        let temperature = r.temperature.map_or("-".to_string(), |t| t.to_string());
        let diverged =
            if r.diverged > 0 { format!("  ({} diverged)", r.diverged) } else { "".into() };
        out += &format!(
            "{:<9} {:>11} {:>6} {:>6} {:>8.2}% {:>7.2}% {:>9.1}{diverged}\n",
            r.phase.name(),
            temperature,
            r.alpha,
            r.seeds,
            100.0 * r.mean_test_acc,
            100.0 * r.std_test_acc,
            r.mean_test_errors
        );
    }
    out
}

/// Joins shard folders of one sweep into `out`: their configurations must agree but for the
/// shard, and together they must hold every point of the grid exactly once, each with its
/// checkpoint. Everything is checked before `out` is written; `out` must not be one of the parts
/// and must not hold a sweep already unless `force`.
pub fn merge(parts: &[PathBuf], out: &Path, force: bool) -> Result<SweepConfig> {
    ensure!(!parts.is_empty(), "give the shard folders to merge");
    let configs = parts.iter().map(|part| read_config(part)).collect::<Result<Vec<_>>>()?;
    let merged = SweepConfig { shard: None, ..configs[0].clone() };
    for (part, config) in parts.iter().zip(&configs) {
        let differences =
            differing_settings(&SweepConfig { shard: None, ..config.clone() }, &merged)?;
        ensure!(
            differences.is_empty(),
            "{} belongs to a different sweep than {} (they differ in {})",
            part.display(),
            parts[0].display(),
            differences.join(", ")
        );
    }
    check_merge_target(parts, out, force)?;

    let mut rows: Vec<(SweepRow, PathBuf)> = vec![];
    let mut epochs: Vec<PointEpoch> = vec![];
    for part in parts {
        rows.extend(
            read_rows::<SweepRow>(&part.join("sweep.csv"))?.into_iter().map(|r| (r, part.clone())),
        );
        epochs.extend(read_rows::<PointEpoch>(&part.join("metrics.csv"))?);
    }
    let mut seen = HashSet::new();
    for (row, part) in &rows {
        let key = row.point().key();
        ensure!(
            seen.insert(key.clone()),
            "point {key} appears twice (again in {})",
            part.display()
        );
        let checkpoint = checkpoint_path(part, &row.point());
        ensure!(row.is_complete(part), "{} is missing", checkpoint.display());
    }
    let missing: Vec<String> =
        merged.grid().iter().map(Point::key).filter(|k| !seen.contains(k)).collect();
    ensure!(missing.is_empty(), "the parts lack {} points: {}", missing.len(), missing.join(", "));

    clear(out, parts)?;
    fs::create_dir_all(out.join("points"))
        .with_context(|| format!("cannot create {}", out.display()))?;
    for (row, part) in rows.iter().filter(|(row, _)| row.diverged.is_none()) {
        let (from, to) = (checkpoint_path(part, &row.point()), checkpoint_path(out, &row.point()));
        fs::copy(&from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
    }
    fs::copy(parts[0].join("summary.csv"), out.join("summary.csv"))
        .context("cannot copy the teacher's summary.csv")?;
    write_atomically(&out.join("config.json"), serde_json::to_string_pretty(&merged)?.as_bytes())?;
    write_rows(&out.join("sweep.csv"), &rows.into_iter().map(|(r, _)| r).collect::<Vec<_>>())?;
    write_rows(&out.join("metrics.csv"), &epochs)?;
    finish_sweep(&merged, out)?;
    Ok(merged)
}

/// Refuses to merge into one of the parts, or over an existing folder without `force`.
fn check_merge_target(parts: &[PathBuf], out: &Path, force: bool) -> Result<()> {
    if let Ok(target) = out.canonicalize() {
        for part in parts {
            ensure!(
                part.canonicalize().ok().as_ref() != Some(&target),
                "--out {} is one of the parts; merge into a new folder",
                out.display()
            );
        }
        let occupied =
            fs::read_dir(out).map(|mut entries| entries.next().is_some()).unwrap_or(false);
        ensure!(
            force || !occupied,
            "{} is not empty; pass --force to replace it or choose another --out",
            out.display()
        );
    }
    Ok(())
}

/// A sweep folder's `config.json`.
fn read_config(dir: &Path) -> Result<SweepConfig> {
    let path = dir.join("config.json");
    let bytes = fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|_| {
        anyhow::anyhow!(
            "{} is not a kd sweep folder (its config.json is not a sweep's)",
            dir.display()
        )
    })
}

/// The names of the settings in which two sweep configurations differ; a setting that is a
/// group (like `student`) is named with the member that differs (`student.lr`).
fn differing_settings(a: &SweepConfig, b: &SweepConfig) -> Result<Vec<String>> {
    Ok(differing_keys(&serde_json::to_value(a)?, &serde_json::to_value(b)?, ""))
}

fn differing_keys(a: &serde_json::Value, b: &serde_json::Value, prefix: &str) -> Vec<String> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return vec![] };
    let mut keys = vec![];
    for (key, value) in a {
        let name = format!("{prefix}{key}");
        match b.get(key) {
            Some(other) if other == value => {}
            Some(other) if value.is_object() && other.is_object() => {
                keys.extend(differing_keys(value, other, &format!("{name}.")));
            }
            _ => keys.push(name),
        }
    }
    keys
}

fn read_rows<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    reader
        .deserialize()
        .collect::<Result<Vec<T>, _>>()
        .with_context(|| format!("{} is damaged", path.display()))
}

/// Like [`read_rows`], but skips lines that do not parse (logged as warnings).
fn read_intact_rows<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("cannot read {}", path.display()))?;
    let rows = reader.deserialize().filter_map(|row| {
        row.map_err(|e| log::warn!("{}: skipping a damaged line: {e}", path.display())).ok()
    });
    Ok(rows.collect())
}

/// Writes `rows` as a whole CSV file (header included), through a temporary file.
fn write_rows<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut writer = csv::Writer::from_writer(vec![]);
    rows.iter().try_for_each(|row| writer.serialize(row))?;
    write_atomically(path, &writer.into_inner()?)
}

/// A CSV writer that appends to `path`, writing the header only when the file is new or empty.
fn append_writer(path: &Path) -> Result<csv::Writer<fs::File>> {
    let fresh = fs::metadata(path).map(|m| m.len() == 0).unwrap_or(true);
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(csv::WriterBuilder::new().has_headers(fresh).from_writer(file))
}
