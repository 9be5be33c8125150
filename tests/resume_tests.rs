//! Long runs that survive: a `kd run` killed with SIGKILL, then stopped with Ctrl-C, and resumed
//! each time ends exactly as a run never killed; a resumed run refuses an option that differs;
//! a locked folder is refused; a teacher that turns to NaN stops the phase with an error naming
//! it, and the last whole epoch stays; in a sweep, the points it spoils are recorded as diverged
//! and the others finish. All with the real binary on real MNIST.

mod common;

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{kd, mnist_dir, read_csv, text, torch_teachers, weights};
use kd::report::SummaryRow;
use kd::sweep::{SeedSummary, SweepRow};
use kd::train::EpochRecord;

/// A small `kd run` with dropout and jitter in the teacher (so every epoch draws random
/// numbers): 10,000 images, teacher 4 epochs, students 3 epochs each.
fn run_args(out: &Path) -> Vec<String> {
    let data = mnist_dir();
    let mut args: Vec<String> =
        ["run", "--data", data.to_str().unwrap(), "--out"].iter().map(|s| s.to_string()).collect();
    args.push(out.to_str().unwrap().to_string());
    let rest = "--device cpu --train-limit 10000 --teacher-model mlp:256:dropout=0.3 \
                --teacher-epochs 4 --jitter 1 --student-model mlp:64 --student-epochs 3 \
                --quiet --no-plot";
    args.extend(rest.split_whitespace().map(String::from));
    args
}

/// Rows of a CSV with the wall-clock column zeroed, the one thing that may differ.
fn metrics(dir: &Path) -> Vec<EpochRecord> {
    read_csv::<EpochRecord>(&dir.join("metrics.csv"))
        .into_iter()
        .map(|r| EpochRecord { seconds: 0.0, ..r })
        .collect()
}

fn summary(dir: &Path) -> Vec<SummaryRow> {
    read_csv::<SummaryRow>(&dir.join("summary.csv"))
        .into_iter()
        .map(|r| SummaryRow { seconds: 0.0, ..r })
        .collect()
}

fn rows(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("metrics.csv")).map_or(0, |t| t.lines().count().max(1) - 1)
}

/// Starts `kd` with `args` and stops it with `signal` (`KILL` or `INT`, as Ctrl-C sends) once
/// `metrics.csv` has `after_rows` epoch rows and then `delay` more has passed (so the signal
/// lands inside an epoch). Returns kd's exit status and stderr.
fn stop_during(
    signal: &str,
    args: &[String],
    dir: &Path,
    after_rows: usize,
    delay: Duration,
) -> (ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kd"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while rows(dir) < after_rows {
        assert!(child.try_wait().unwrap().is_none(), "kd ended before it could be stopped");
        assert!(start.elapsed() < Duration::from_secs(300), "kd made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(delay);
    let sent = Command::new("kill").args(["-s", signal, &child.id().to_string()]).status();
    assert!(sent.unwrap().success(), "kill -s {signal} failed");
    let output = child.wait_with_output().unwrap();
    (output.status, text(&output.stderr))
}

fn kill_during(args: &[String], dir: &Path, after_rows: usize, delay: Duration) {
    stop_during("KILL", args, dir, after_rows, delay);
}

#[test]
fn a_run_killed_twice_and_resumed_ends_as_one_never_killed() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let output = kd(&run_args(&whole).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(output.status.success(), "{}", text(&output.stderr));

    // Killed in the teacher's third epoch, resumed, stopped by Ctrl-C in the baseline's third
    // epoch (or the student's first), resumed.
    let killed = dir.path().join("killed");
    kill_during(&run_args(&killed), &killed, 2, Duration::from_millis(150));
    let state = killed.join("teacher.state.safetensors");
    let saved = kd::checkpoint::state_records(&state).unwrap().len();
    assert!((2..4).contains(&saved), "the teacher's state holds {saved} epochs");
    let resume = ["run", "--resume", killed.to_str().unwrap()].map(String::from).to_vec();
    let (status, stderr) = stop_during("INT", &resume, &killed, 6, Duration::from_millis(30));
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted by Ctrl-C in epoch"), "{stderr}");
    assert!(stderr.contains(&format!("continue with --resume {}", killed.display())), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Options given again with their saved values are accepted.
    let output = kd(&["run", "--resume", killed.to_str().unwrap(), "--train-limit", "10000"]);
    assert!(output.status.success(), "{}", text(&output.stderr));

    assert_eq!(metrics(&killed), metrics(&whole));
    assert_eq!(summary(&killed), summary(&whole));
    for file in ["teacher.safetensors", "baseline.safetensors", "student.safetensors"] {
        let same = weights(&whole.join(file)) == weights(&killed.join(file));
        assert!(same, "{file}: the weights differ after the kills");
    }
    assert!(!state.exists(), "a finished run keeps no state files");

    // A finished run has nothing to resume.
    let output = kd(&["run", "--resume", killed.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("nothing to resume"), "{}", text(&output.stderr));
}

#[test]
fn resuming_refuses_a_different_option_and_an_old_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    kill_during(&run_args(&out), &out, 1, Duration::from_millis(50));

    let output = kd(&["run", "--resume", out.to_str().unwrap(), "--lr", "0.1"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("--lr 0.1 conflicts with the run in"), "{stderr}");
    assert!(stderr.contains("started with 0.05"), "{stderr}");

    let output = kd(&["teacher", "--resume", out.to_str().unwrap()]);
    assert!(text(&output.stderr).contains("holds a `kd run` run"), "{}", text(&output.stderr));

    // Without --resume or --force the unfinished run is not touched.
    let output = kd(&run_args(&out).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("--resume"), "{}", text(&output.stderr));

    // A folder of an older layout (no command.json) cannot be resumed.
    std::fs::remove_file(out.join("command.json")).unwrap();
    let output = kd(&["run", "--resume", out.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("has no command.json"), "{}", text(&output.stderr));
}

#[test]
fn a_folder_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("busy");
    std::fs::create_dir_all(&out).unwrap();
    let lock = std::fs::File::create(out.join(".lock")).unwrap();
    lock.lock().unwrap();
    // The folder looks like a run in progress: "in use" comes first, not advice to resume.
    std::fs::write(out.join("command.json"), "{}").unwrap();

    let output = kd(&run_args(&out).iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("in use by another kd process"),
        "{}",
        text(&output.stderr)
    );
    assert!(!text(&output.stderr).contains("--resume"), "{}", text(&output.stderr));
    drop(lock);
    std::fs::remove_file(out.join("command.json")).unwrap();

    // The lock is the operating system's: released, the folder is usable at once.
    let data = mnist_dir();
    let output = kd(&[
        "teacher",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--train-limit",
        "500",
        "--epochs",
        "1",
        "--teacher-model",
        "mlp:16",
        "--quiet",
        "--no-plot",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
}

#[test]
fn a_teacher_that_turns_to_nan_stops_the_phase_and_keeps_the_last_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nan");
    let teacher = torch_teachers().join("nan_after_30_calls.pt");
    let data = mnist_dir();
    // With jitter the teacher runs on every batch (10 per epoch); its 30 calls run out in the
    // second or third epoch, after the probe and the test-set passes.
    let output = kd(&[
        "distill",
        "--teacher",
        teacher.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--train-limit",
        "1280",
        "--jitter",
        "1",
        "--epochs",
        "4",
        "--student-model",
        "mlp:32",
        "--quiet",
        "--no-plot",
    ]);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("the training loss became NaN"), "{stderr}");
    assert!(stderr.contains("try a lower --lr"), "{stderr}");
    let state = out.join("student.state.safetensors");
    let kept =
        format!("the student phase stopped (its last whole epoch is kept in {})", state.display());
    assert!(stderr.contains(&kept), "{stderr}");

    let saved = kd::checkpoint::state_records(&state).unwrap();
    assert!(!saved.is_empty(), "no epoch was saved before the NaN");
    let epoch = saved.len() + 1;
    assert!(stderr.contains(&format!("student phase, epoch {epoch}, step ")), "{stderr}");
    // metrics.csv holds the good epochs only, all finite; no summary was written.
    let rows: Vec<EpochRecord> = read_csv(&out.join("metrics.csv"));
    assert_eq!(rows.len(), saved.len());
    assert!(rows.iter().all(|r| r.train_loss.is_finite() && r.test_loss.is_finite()));
    assert!(!out.join("summary.csv").exists());
}

/// A sweep at T = 2 and 4 (alpha 0.9, seed 0, with the baseline) from `teacher`, on 1,280
/// jittered images, so the teacher runs on every batch.
fn nan_sweep(teacher: &str, out: &Path) -> std::process::Output {
    let teacher = torch_teachers().join(teacher);
    let data = mnist_dir();
    let paths = [teacher.as_path(), &data, out].map(|p| p.to_str().unwrap().to_string());
    let mut args = vec!["sweep", "--teacher", &paths[0], "--data", &paths[1], "--out", &paths[2]];
    args.extend(
        "--temperature 2,4 --alpha 0.9 --seeds 0 --epochs 3 --student-model mlp:32".split(' '),
    );
    args.extend("--device cpu --train-limit 1280 --jitter 1 --quiet --no-plot".split(' '));
    kd(&args)
}

#[test]
fn a_sweep_point_that_turns_to_nan_is_recorded_and_the_others_finish() {
    let dir = tempfile::tempdir().unwrap();
    let spoiled = dir.path().join("spoiled");
    let output = nan_sweep("nan_after_30_calls.pt", &spoiled);
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for key in ["T2-a0.9-s0", "T4-a0.9-s0"] {
        let warning = format!("point {key} diverged (student phase, epoch ");
        assert!(stderr.contains(&warning), "{stderr}");
        assert!(!spoiled.join(format!("points/{key}.safetensors")).exists());
    }

    // Both distilled points read the teacher's NaN logits; the baseline never does.
    let rows: Vec<SweepRow> = read_csv(&spoiled.join("sweep.csv"));
    assert_eq!(rows.len(), 3);
    for row in &rows[1..] {
        assert!(row.diverged.as_deref().is_some_and(|d| d.starts_with("epoch ")), "{row:?}");
        assert!(row.final_test_acc.is_nan() && row.test_errors.is_none(), "{row:?}");
        assert!(row.epochs < 3, "{row:?}");
    }
    let summary: Vec<SeedSummary> = read_csv(&spoiled.join("sweep_summary.csv"));
    assert_eq!(
        summary.iter().map(|s| (s.seeds, s.diverged)).collect::<Vec<_>>(),
        [(1, 0), (0, 1), (0, 1)]
    );

    // The baseline finished as in a sweep whose teacher stays healthy: the same figures but
    // for the agreement (another teacher) and the wall time.
    let healthy = dir.path().join("healthy");
    let output = nan_sweep("mlp.pt", &healthy);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let unaffected = |row: &SweepRow| SweepRow { agreement: None, seconds: 0.0, ..row.clone() };
    let expected: Vec<SweepRow> = read_csv(&healthy.join("sweep.csv"));
    assert!(rows[0].diverged.is_none() && rows[0].test_errors.is_some(), "{:?}", rows[0]);
    assert_eq!(unaffected(&rows[0]), unaffected(&expected[0]));
    assert_eq!(
        weights(&spoiled.join("points/baseline-s0.safetensors")),
        weights(&healthy.join("points/baseline-s0.safetensors"))
    );

    // A diverged point counts as finished: the same command again trains nothing.
    let before = std::fs::read(spoiled.join("sweep.csv")).unwrap();
    let output = nan_sweep("nan_after_30_calls.pt", &spoiled);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(!text(&output.stderr).contains("diverged ("), "{}", text(&output.stderr));
    assert_eq!(std::fs::read(spoiled.join("sweep.csv")).unwrap(), before);
}
