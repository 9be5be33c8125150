//! `kd sweep` black-box: its points equal lone `kd distill` runs, an interrupted sweep resumes to
//! the same CSVs, and merged shards equal the whole sweep. Small real-MNIST runs on the CPU.

mod common;

use common::{kd, read_csv, text, weights};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kd::report::SummaryRow;
use kd::sweep::{PointEpoch, SweepRow};

/// A teacher trained briefly on the first 2,000 images, shared by the tests of this file.
fn teacher(dir: &Path) -> PathBuf {
    let data = common::mnist_dir();
    let out = dir.join("teacher");
    let output = kd(&[
        "teacher",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--train-limit",
        "2000",
        "--teacher-model",
        "mlp:128",
        "--epochs",
        "2",
        "--quiet",
        "--no-plot",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    out.join("teacher.safetensors")
}

/// The arguments of `kd sweep` over T in {2, 4}, alpha in {0.5, 0.9}, seeds {0, 1} (8 points
/// and 2 baselines), then `extra`.
fn sweep_args(teacher: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let data = common::mnist_dir();
    let grid = "--temperature 2,4 --alpha 0.5,0.9 --seeds 0,1 --epochs 2 --student-model mlp:32";
    let run = "--device cpu --train-limit 2000 --quiet --no-plot";
    let paths = [teacher, &data, out].map(|p| p.to_str().unwrap().to_string());
    let mut args: Vec<String> =
        ["sweep", "--teacher", &paths[0], "--data", &paths[1], "--out", &paths[2]]
            .iter()
            .map(|a| a.to_string())
            .collect();
    args.extend(
        grid.split(' ').chain(run.split(' ')).chain(extra.iter().copied()).map(String::from),
    );
    args
}

fn sweep(teacher: &Path, out: &Path, extra: &[&str]) -> Output {
    let args = sweep_args(teacher, out, extra);
    kd(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A sweep folder's CSV rows with the wall-clock columns zeroed, the only ones that may differ.
fn results(dir: &Path) -> (Vec<SweepRow>, Vec<PointEpoch>) {
    let rows = read_csv::<SweepRow>(&dir.join("sweep.csv"))
        .into_iter()
        .map(|r| SweepRow { seconds: 0.0, ..r });
    let epochs = read_csv::<PointEpoch>(&dir.join("metrics.csv"))
        .into_iter()
        .map(|e| PointEpoch { seconds: 0.0, ..e });
    (rows.collect(), epochs.collect())
}

#[test]
fn sweep_points_equal_lone_distill_runs_and_resume_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = teacher(dir.path());
    let whole = dir.path().join("whole");
    let output = sweep(&teacher, &whole, &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let (rows, epochs) = results(&whole);
    assert_eq!(rows.len(), 10);
    assert_eq!(epochs.len(), 20);
    assert!(text(&output.stdout).contains("student"));
    let summary: Vec<kd::sweep::SeedSummary> = read_csv(&whole.join("sweep_summary.csv"));
    assert_eq!(summary.len(), 5);
    assert!(summary.iter().all(|s| s.seeds == 2));

    // The point (T = 4, alpha = 0.9, seed 1) and the baseline of seed 1, run alone.
    let data = common::mnist_dir();
    let lone = dir.path().join("lone");
    let output = kd(&[
        "distill",
        "--teacher",
        teacher.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        lone.to_str().unwrap(),
        "--device",
        "cpu",
        "--train-limit",
        "2000",
        "--student-model",
        "mlp:32",
        "--epochs",
        "2",
        "--temperature",
        "4",
        "--alpha",
        "0.9",
        "--seed",
        "1",
        "--baseline",
        "--quiet",
        "--no-plot",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lone_rows: Vec<SummaryRow> = read_csv(&lone.join("summary.csv"));
    let point =
        rows.iter().find(|r| r.temperature == Some(4.0) && r.alpha == 0.9 && r.seed == 1).unwrap();
    let baseline = rows.iter().find(|r| r.temperature.is_none() && r.seed == 1).unwrap();
    assert_eq!(
        (point.test_errors, point.agreement),
        (Some(lone_rows[2].test_errors), lone_rows[2].agreement)
    );
    assert_eq!(
        (baseline.test_errors, baseline.agreement),
        (Some(lone_rows[1].test_errors), lone_rows[1].agreement)
    );
    // Bitwise the same weights, although the sweep trained its points on parallel
    // single-threaded lanes and the lone run used every thread for one model.
    assert_eq!(
        weights(&whole.join("points/T4-a0.9-s1.safetensors")),
        weights(&lone.join("student.safetensors"))
    );
    assert_eq!(
        weights(&whole.join("points/baseline-s1.safetensors")),
        weights(&lone.join("baseline.safetensors"))
    );

    // Kill a sweep (groups of two points) once some points are finished, then resume it.
    let resumed = dir.path().join("resumed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(sweep_args(&teacher, &resumed, &["--group-size", "2"]))
        .spawn()
        .unwrap();
    let start = Instant::now();
    let finished_lines =
        || std::fs::read_to_string(resumed.join("sweep.csv")).map_or(0, |t| t.lines().count());
    while finished_lines() < 3 && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let interrupted = read_csv::<SweepRow>(&resumed.join("sweep.csv")).len();
    assert!((2..10).contains(&interrupted), "the kill came after {interrupted} points");

    let output = kd(&["sweep", "--resume", resumed.to_str().unwrap(), "--quiet"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stderr).is_empty());
    assert_eq!(results(&resumed), results(&whole));

    // Running a finished sweep again trains nothing and changes nothing.
    let output = sweep(&teacher, &resumed, &[]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(results(&resumed), results(&whole));

    // Different options on an existing sweep folder are refused, naming the option, and leave
    // the folder as it was: the saved command still resumes.
    let command = std::fs::read(resumed.join("command.json")).unwrap();
    let output = sweep(&teacher, &resumed, &["--lr", "0.01"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("holds a different sweep (its config.json differs in student.lr)"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(resumed.join("command.json")).unwrap(), command);

    // So does a sweep aimed at the teacher's run folder.
    let teacher_command = std::fs::read(teacher.with_file_name("command.json")).unwrap();
    let output = sweep(&teacher, teacher.parent().unwrap(), &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("is not a kd sweep folder"), "{}", text(&output.stderr));
    assert_eq!(std::fs::read(teacher.with_file_name("command.json")).unwrap(), teacher_command);
}

#[test]
fn merged_shards_equal_the_whole_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = teacher(dir.path());
    let whole = dir.path().join("whole");
    assert!(sweep(&teacher, &whole, &[]).status.success());

    let parts: Vec<PathBuf> = (1..=3).map(|i| dir.path().join(format!("part{i}"))).collect();
    for (i, part) in parts.iter().enumerate() {
        let shard = format!("{}/3", i + 1);
        let output = sweep(&teacher, part, &["--shard", &shard]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert!(read_csv::<SweepRow>(&part.join("sweep.csv")).len() < 10);
    }
    let merged = dir.path().join("merged");
    let mut args = vec!["sweep", "merge"];
    args.extend(parts.iter().map(|p| p.to_str().unwrap()));
    args.extend(["--out", merged.to_str().unwrap(), "--no-plot"]);
    let output = kd(&args);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(results(&merged), results(&whole));
    assert_eq!(std::fs::read_dir(merged.join("points")).unwrap().count(), 10);

    // Merging into one of the parts, or over a folder that holds something, is refused and
    // leaves that folder as it was.
    let part_files = std::fs::read(parts[0].join("sweep.csv")).unwrap();
    let mut into_part: Vec<&str> = vec!["sweep", "merge"];
    into_part.extend(parts.iter().map(|p| p.to_str().unwrap()));
    into_part.extend(["--out", parts[0].to_str().unwrap(), "--no-plot"]);
    let output = kd(&into_part);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("is one of the parts"), "{}", text(&output.stderr));
    assert_eq!(std::fs::read(parts[0].join("sweep.csv")).unwrap(), part_files);
    let output = kd(&args);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("is not empty; pass --force"),
        "{}",
        text(&output.stderr)
    );
    let forced: Vec<&str> = args.iter().copied().chain(["--force"]).collect();
    assert!(kd(&forced).status.success());
    assert_eq!(results(&merged), results(&whole));

    // Two shards of three do not make a sweep.
    let output = kd(&[
        "sweep",
        "merge",
        parts[0].to_str().unwrap(),
        parts[1].to_str().unwrap(),
        "--out",
        dir.path().join("partial").to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("the parts lack"), "{}", text(&output.stderr));
    // A value listed twice would count as an extra seed; a temperature beyond float32's range
    // would overflow.
    let output = sweep(&teacher, &dir.path().join("twice"), &["--seeds", "0,0"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("--seeds lists 0 more than once"),
        "{}",
        text(&output.stderr)
    );
    let output = sweep(&teacher, &dir.path().join("tiny"), &["--temperature", "1e-300"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(text(&output.stderr).contains("between 0.001 and 1000"), "{}", text(&output.stderr));
    // Shards given as 0/3 or 4/3 are option errors.
    for bad in ["0/3", "4/3", "x"] {
        let output = sweep(&teacher, &dir.path().join("bad"), &["--shard", bad]);
        assert_eq!(output.status.code(), Some(2), "{bad}");
        assert!(text(&output.stderr).contains("expected I/N"), "{}", text(&output.stderr));
    }
    // The grid has 10 points: an 11th shard of 11 would be empty.
    let output = sweep(&teacher, &dir.path().join("empty"), &["--shard", "11/11"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("shard 11/11 holds no point: the grid has 10 (baselines included)"),
        "{stderr}"
    );
    assert!(!dir.path().join("empty").exists());
}
