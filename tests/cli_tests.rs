//! Black-box tests of the real `kd` binary on a few thousand real MNIST samples, in temporary
//! folders: the main job's files read back, the TorchScript student checked in PyTorch, and the
//! errors that bad input gets.

mod common;

use common::{kd, read_csv, text};

use std::path::Path;
use std::process::{Command, Output};

use kd::checkpoint;
use kd::data::load_mnist;
use kd::report::SummaryRow;
use kd::train::{EpochRecord, Phase, predict};
use tch::{Device, Tensor};

fn small_run(out: &Path, extra: &[&str]) -> Output {
    let data = common::mnist_dir();
    let mut args = vec![
        "run",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--train-limit",
        "3000",
        "--teacher-model",
        "mlp:256:dropout=0.2",
        "--student-model",
        "mlp:64",
        "--teacher-epochs",
        "2",
        "--student-epochs",
        "2",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    kd(&args)
}

#[test]
fn the_main_job_writes_its_results_and_a_torchscript_student_equal_to_the_rust_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let output = small_run(&out, &[]);
    assert!(output.status.success(), "kd run failed: {}", text(&output.stderr));
    assert!(output.stderr.is_empty(), "--quiet printed: {}", text(&output.stderr));

    // The table on stdout names the three phases.
    let table = text(&output.stdout);
    for phase in ["teacher", "baseline", "student"] {
        assert!(table.lines().any(|l| l.starts_with(phase)), "{table}");
    }

    // metrics.csv: two epochs per phase, in order, with agreement for students only.
    let metrics: Vec<EpochRecord> = read_csv(&out.join("metrics.csv"));
    let phases: Vec<(Phase, i64)> = metrics.iter().map(|r| (r.phase, r.epoch)).collect();
    use Phase::*;
    assert_eq!(
        phases,
        [(Teacher, 1), (Teacher, 2), (Baseline, 1), (Baseline, 2), (Student, 1), (Student, 2)]
    );
    assert!(
        metrics.iter().all(|r| r.test_acc > 0.7 && (r.phase == Teacher) == r.agreement.is_none())
    );
    assert!(metrics.iter().all(|r| r.test_errors == ((1.0 - r.test_acc) * 10000.0).round() as i64));

    // summary.csv agrees with the last epoch of each phase and with the checkpoints.
    let summary: Vec<SummaryRow> = read_csv(&out.join("summary.csv"));
    assert_eq!(
        summary.iter().map(|r| r.phase.as_str()).collect::<Vec<_>>(),
        ["teacher", "baseline", "student"]
    );
    assert_eq!(summary[2].temperature, Some(4.0));
    assert_eq!(summary[2].alpha, Some(0.9));
    let data = load_mnist(&common::mnist_dir(), Device::Cpu, None).unwrap();
    for row in &summary {
        let model =
            checkpoint::load(&out.join(format!("{}.safetensors", row.phase)), Device::Cpu, None)
                .unwrap();
        assert_eq!(model.spec.to_string(), row.model);
        assert_eq!(model.parameter_count(), row.params);
        assert_eq!(
            kd::train::evaluate(&model, &data.test, None).errors,
            row.test_errors,
            "{}",
            row.phase
        );
    }

    let config = common::config_json(&out);
    assert_eq!(config["distill"]["temperature"], 4.0);
    assert_eq!(config["student_model"], "mlp:64");
    assert_eq!(config["train_samples"], 3000);
    assert_eq!(config["device"], "cpu");

    // The TorchScript student, run by plain PyTorch on 500 real test images.
    let student = checkpoint::load(&out.join("student.safetensors"), Device::Cpu, None).unwrap();
    let inputs = data.test.images.narrow(0, 0, 500);
    let expected = predict(&student, &inputs);
    let tensors = dir.path().join("check.safetensors");
    Tensor::write_safetensors(&[("inputs", &inputs), ("expected", &expected)], &tensors).unwrap();
    let check = Command::new(common::python())
        .arg(common::repo().join("scripts/check_torchscript.py"))
        .args([out.join("student.pt"), tensors])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));
    let report: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    println!("TorchScript student in PyTorch: {report}");
    assert_eq!(report["shape"], serde_json::json!([500, 10]));
    assert!(report["max_abs_diff"].as_f64().unwrap() <= 1e-6, "{report}");
    assert_eq!(report["repeat_bitwise_equal"], true);
    let card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("student.json")).unwrap()).unwrap();
    assert_eq!(card["input_shape"], serde_json::json!([-1, 784]));
    let source = std::path::absolute(out.join("student.safetensors")).unwrap();
    assert_eq!(card["source"], source.to_str().unwrap());

    // A finished run folder is not overwritten without --force.
    let again = small_run(&out, &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains("already holds a finished run"),
        "{}",
        text(&again.stderr)
    );
}

#[test]
fn the_same_seed_gives_the_same_numbers_on_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::mnist_dir();
    let run = |name: &str| {
        let out = dir.path().join(name);
        let output = kd(&[
            "teacher",
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--device",
            "cpu",
            "--train-limit",
            "1000",
            "--teacher-model",
            "mlp:64:dropout=0.3",
            "--epochs",
            "2",
            "--jitter",
            "1",
            "--seed",
            "11",
            "--quiet",
        ]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let rows: Vec<EpochRecord> = read_csv(&out.join("metrics.csv"));
        rows.iter().map(|r| (r.train_loss, r.test_loss)).collect::<Vec<_>>()
    };
    assert_eq!(run("a"), run("b"));
}

#[test]
fn distill_and_eval_work_from_a_teacher_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::mnist_dir();
    let data = data.to_str().unwrap();
    let teacher_dir = dir.path().join("teacher");
    let output = kd(&[
        "teacher",
        "--data",
        data,
        "--out",
        teacher_dir.to_str().unwrap(),
        "--device",
        "cpu",
        "--train-limit",
        "2000",
        "--teacher-model",
        "mlp:128",
        "--epochs",
        "1",
        "--quiet",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let teacher = teacher_dir.join("teacher.safetensors");

    let out = dir.path().join("distill");
    let output = kd(&[
        "distill",
        "--data",
        data,
        "--teacher",
        teacher.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--train-limit",
        "2000",
        "--student-model",
        "mlp:32",
        "--epochs",
        "1",
        "--temperature",
        "2",
        "--alpha",
        "0.5",
        "--kd-loss",
        "soft-ce",
        "--baseline",
        "--quiet",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let summary: Vec<SummaryRow> = read_csv(&out.join("summary.csv"));
    assert_eq!(
        summary.iter().map(|r| r.phase.as_str()).collect::<Vec<_>>(),
        ["teacher", "baseline", "student"]
    );
    assert_eq!((summary[2].temperature, summary[2].alpha), (Some(2.0), Some(0.5)));

    // kd eval of the checkpoint and of its TorchScript export report the same errors.
    for model in ["student.safetensors", "student.pt"] {
        let output = kd(&[
            "eval",
            "--model",
            out.join(model).to_str().unwrap(),
            "--data",
            data,
            "--device",
            "cpu",
        ]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let expected = format!("errors     {} of 10000", summary[2].test_errors);
        assert!(text(&output.stdout).contains(&expected), "{model}: {}", text(&output.stdout));
    }

    // kd export writes a .pt and its card into another folder.
    let exported = dir.path().join("exported");
    let output =
        kd(&["export", "--model", teacher.to_str().unwrap(), "--out", exported.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(exported.join("teacher.pt").exists() && exported.join("teacher.json").exists());
    let again =
        kd(&["export", "--model", teacher.to_str().unwrap(), "--out", exported.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("pass --force to overwrite"), "{}", text(&again.stderr));

    // --force replaces a run folder's files: the old baseline does not survive a run without
    // one, nor the old plot a run with --no-plot.
    std::fs::write(out.join("learning_curves.png"), b"the old run's plot").unwrap();
    let output = kd(&[
        "distill",
        "--data",
        data,
        "--teacher",
        teacher.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
        "--train-limit",
        "2000",
        "--student-model",
        "mlp:32",
        "--epochs",
        "1",
        "--force",
        "--quiet",
        "--no-plot",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(!out.join("baseline.safetensors").exists());
    assert!(!out.join("learning_curves.png").exists());

    // A forced run that fails on its input leaves the finished run as it was.
    let metrics = std::fs::read(out.join("metrics.csv")).unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let output = kd(&[
        "distill",
        "--data",
        empty.to_str().unwrap(),
        "--teacher",
        teacher.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--force",
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(std::fs::read(out.join("metrics.csv")).unwrap(), metrics);
    assert!(out.join("summary.csv").exists() && out.join("student.pt").exists());

    // So does a forced `kd run` whose --teacher-from cannot be loaded.
    let missing = dir.path().join("missing.safetensors");
    let args = ["run", "--data", data, "--out", out.to_str().unwrap(), "--force", "--teacher-from"];
    let output = kd(&[&args[..], &[missing.to_str().unwrap()]].concat());
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("missing.safetensors"), "{}", text(&output.stderr));
    assert_eq!(std::fs::read(out.join("metrics.csv")).unwrap(), metrics);
    assert!(out.join("summary.csv").exists() && out.join("student.safetensors").exists());
}

/// Runs kd and returns its exit code and stderr.
fn failure(args: &[&str]) -> (Option<i32>, String) {
    let output = kd(args);
    let stderr = text(&output.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
    (output.status.code(), stderr)
}

#[test]
fn bad_options_get_clear_errors_and_non_zero_exits() {
    let cases: &[(&[&str], &str)] = &[
        (&["run", "--temperature", "0"], "must be between 0.001 and 1000"),
        (&["run", "--temperature", "-1"], "--temperature"),
        (&["run", "--alpha", "1.5"], "must be between 0 and 1"),
        (&["run", "--alpha", "x"], "'x' is not a finite number"),
        (&["run", "--lr", "nan"], "not a finite number"),
        (&["run", "--student-model", "mlp:8x"], "invalid model spec 'mlp:8x'"),
        (&["run", "--teacher-model", "transformer:3"], "unknown model kind 'transformer'"),
        (&["run", "--kd-loss", "mse"], "expected kl or soft-ce"),
        (&["run", "--device", "tpu"], "expected auto, cpu, cuda or cuda:N"),
        (&["run", "--device", "cuda:7"], "CUDA device 7 is not available"),
        (&["run", "--batch-size", "0"], "--batch-size"),
        (&["run", "--train-limit", "-3"], "--train-limit"),
        // Negative lists reach their parsers (clap alone reads them as short flags).
        (&["sweep", "--teacher", "t", "--temperature", "-1,2"], "must be between 0.001"),
        (&["sweep", "--teacher", "t", "--alpha", "-0.5,1"], "must be between 0 and 1"),
        (&["sweep", "--teacher", "t", "--temperature"], "a value is required for '--temperature"),
    ];
    for (args, message) in cases {
        let (code, stderr) = failure(args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }

    // An unknown preset's message lists the known ones, without clap's usage after it.
    let (code, stderr) = failure(&["run", "--preset", "nope"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("no preset named 'nope' (known: hinton-mnist,"), "{stderr}");
    assert!(!stderr.contains("Usage:"), "{stderr}");
}

#[test]
fn bad_files_get_clear_errors_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    let data = common::mnist_dir();
    let data = data.to_str().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();

    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "run".into(),
                "--data".into(),
                empty.to_str().unwrap().into(),
                "--out".into(),
                out("r1"),
            ],
            "no t10k-images file",
        ),
        (
            vec![
                "run".into(),
                "--data".into(),
                data.into(),
                "--out".into(),
                format!("{}/sub", blocker.display()),
            ],
            "cannot create run folder",
        ),
        (
            vec![
                "distill".into(),
                "--teacher".into(),
                blocker.to_str().unwrap().into(),
                "--data".into(),
                data.into(),
                "--out".into(),
                out("r2"),
            ],
            "is not a safetensors checkpoint",
        ),
        (
            vec![
                "eval".into(),
                "--model".into(),
                blocker.with_extension("pt").to_str().unwrap().into(),
                "--data".into(),
                data.into(),
            ],
            "is not a TorchScript model",
        ),
        (
            vec!["eval".into(), "--model".into(), out("absent.pt"), "--data".into(), data.into()],
            "absent.pt does not exist",
        ),
        (
            ["teacher", "--data", data, "--epochs", "2", "--warmup-epochs", "2", "--out"]
                .map(String::from)
                .into_iter()
                .chain([out("r4")])
                .collect(),
            "--warmup-epochs 2 leaves nothing of a 2-epoch phase to the schedule",
        ),
        (
            vec![
                "export".into(),
                "--model".into(),
                blocker.with_extension("zip").to_str().unwrap().into(),
            ],
            "is TorchScript already",
        ),
    ];
    // A zip archive, as TorchScript files are.
    std::fs::write(blocker.with_extension("zip"), b"PK\x03\x04 and more").unwrap();
    std::fs::write(blocker.with_extension("pt"), "not torchscript").unwrap();
    let five_classes = dir.path().join("five.safetensors");
    let spec = "mlp:16".parse().unwrap();
    checkpoint::save(&kd::models::Model::new(&spec, 5, Device::Cpu), &five_classes).unwrap();
    let cases = [
        cases,
        vec![(
            vec![
                "distill".into(),
                "--teacher".into(),
                five_classes.to_str().unwrap().into(),
                "--data".into(),
                data.into(),
                "--out".into(),
                out("r3"),
            ],
            "five.safetensors has 5 classes, not MNIST's 10",
        )],
    ]
    .concat();
    for (args, message) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, stderr) = failure(&args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        let error = &stderr[stderr.find("error: ").expect("an error line")..];
        assert!(error.contains(message), "{args:?}: {stderr}");
        // One paragraph: no libtorch stack trace after the message.
        assert_eq!(error.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    }
}

#[test]
fn the_phases_one_by_one_give_the_same_numbers_as_kd_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::mnist_dir();
    let data = data.to_str().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let shared =
        ["--data", data, "--device", "cpu", "--train-limit", "1500", "--seed", "5", "--quiet"];
    let models = ["--teacher-model", "mlp:128:dropout=0.2", "--student-model", "mlp:32"];

    let run = kd(&[
        &["run", "--out", &path("run"), "--teacher-epochs", "2", "--student-epochs", "2"],
        &shared[..],
        &models[..],
    ]
    .concat());
    assert!(run.status.success(), "{}", text(&run.stderr));
    let teacher = kd(&[
        &[
            "teacher",
            "--out",
            &path("teacher"),
            "--epochs",
            "2",
            "--teacher-model",
            "mlp:128:dropout=0.2",
        ],
        &shared[..],
    ]
    .concat());
    assert!(teacher.status.success(), "{}", text(&teacher.stderr));
    let teacher_file = path("teacher/teacher.safetensors");
    let distill = kd(&[
        &[
            "distill",
            "--out",
            &path("distill"),
            "--epochs",
            "2",
            "--teacher",
            &teacher_file,
            "--student-model",
            "mlp:32",
            "--baseline",
        ],
        &shared[..],
    ]
    .concat());
    assert!(distill.status.success(), "{}", text(&distill.stderr));

    let key = |rows: Vec<SummaryRow>| {
        rows.into_iter().map(|r| (r.phase, r.test_errors, r.agreement)).collect::<Vec<_>>()
    };
    let together = key(read_csv(&dir.path().join("run/summary.csv")));
    let apart = key(read_csv(&dir.path().join("distill/summary.csv")));
    assert_eq!(together, apart);
}

#[test]
fn warm_up_raises_the_learning_rate_to_its_peak_then_the_cosine_takes_over() {
    // 1,000 images in batches of 100: 10 steps an epoch, 30 in the phase, 10 of them warm-up.
    // metrics.csv gives the rate of each epoch's last step: step 9 ends the warm-up at the
    // peak, 0.1; step 19 is 9 of the cosine's 20 steps, 0.05 * (1 + cos(9 pi / 20)); step 29
    // is its last, 0.05 * (1 + cos(19 pi / 20)) (exact arithmetic).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("warm");
    let options = ["--train-limit", "1000", "--batch-size", "100", "--teacher-model", "mlp:32"];
    let schedule = ["--epochs", "3", "--lr", "0.1", "--warmup-epochs", "1"];
    let output = common::kd_cpu("teacher", &out, &[&options[..], &schedule[..]].concat());
    assert!(output.status.success(), "{}", text(&output.stderr));
    let rates: Vec<f64> =
        read_csv::<EpochRecord>(&out.join("metrics.csv")).iter().map(|r| r.lr).collect();
    let pi = std::f64::consts::PI;
    let expected =
        [0.1, 0.05 * (1.0 + (9.0 * pi / 20.0).cos()), 0.05 * (1.0 + (19.0 * pi / 20.0).cos())];
    for (rate, expected) in rates.iter().zip(expected) {
        assert!((rate - expected).abs() < 1e-12, "{rates:?} against {expected}");
    }
    assert_eq!(rates.len(), 3);
    let config = common::config_json(&out);
    assert_eq!(config["teacher"]["warmup_epochs"], 1);
}

/// A teacher and students small enough for a run of a few seconds.
const TINY_RUN: [&str; 6] =
    ["--train-limit", "1000", "--teacher-model", "mlp:32", "--student-model", "mlp:16"];

#[test]
fn the_baseline_takes_its_own_learning_rate() {
    // A constant schedule: metrics.csv gives each phase's peak rate as it is.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("own-lr");
    let epochs = ["--teacher-epochs", "1", "--student-epochs", "1", "--schedule", "constant"];
    let rates = ["--teacher-lr", "0.07", "--lr", "0.02", "--baseline-lr", "0.05"];
    let output = common::kd_cpu("run", &out, &[&TINY_RUN[..], &epochs[..], &rates[..]].concat());
    assert!(output.status.success(), "{}", text(&output.stderr));

    let rows = read_csv::<EpochRecord>(&out.join("metrics.csv"));
    let rates: Vec<(Phase, f64)> = rows.iter().map(|r| (r.phase, r.lr)).collect();
    let expected = [(Phase::Teacher, 0.07), (Phase::Baseline, 0.05), (Phase::Student, 0.02)];
    assert_eq!(rates, expected);
    let config = common::config_json(&out);
    assert_eq!(config["baseline"]["lr"], 0.05);
    assert_eq!(config["student"]["lr"], 0.02);
}

#[test]
fn the_teacher_takes_its_own_warm_up() {
    // A constant schedule and 2 warm-up epochs of 3 for the students: the rate metrics.csv gives
    // for an epoch is the one of its last step, so half the peak after the first epoch (exact
    // arithmetic: peak * steps / (2 * steps)), then the peak. The teacher starts at its peak.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("own-warm-up");
    let epochs = ["--teacher-epochs", "2", "--student-epochs", "3", "--schedule", "constant"];
    let rates = ["--teacher-lr", "0.07", "--lr", "0.02", "--warmup-epochs", "2"];
    let own = ["--teacher-warmup-epochs", "0"];
    let output =
        common::kd_cpu("run", &out, &[&TINY_RUN[..], &epochs[..], &rates[..], &own].concat());
    assert!(output.status.success(), "{}", text(&output.stderr));

    let rows = read_csv::<EpochRecord>(&out.join("metrics.csv"));
    let logged: Vec<(Phase, f64)> = rows.iter().map(|r| (r.phase, r.lr)).collect();
    let expected = [
        (Phase::Teacher, 0.07),
        (Phase::Teacher, 0.07),
        (Phase::Baseline, 0.01),
        (Phase::Baseline, 0.02),
        (Phase::Baseline, 0.02),
        (Phase::Student, 0.01),
        (Phase::Student, 0.02),
        (Phase::Student, 0.02),
    ];
    assert_eq!(logged.len(), expected.len(), "{logged:?}");
    for ((phase, lr), (want_phase, want_lr)) in logged.iter().zip(expected) {
        assert_eq!(*phase, want_phase);
        assert!((lr - want_lr).abs() < 1e-12, "{logged:?}");
    }
    let config = common::config_json(&out);
    assert_eq!(config["teacher"]["warmup_epochs"], 0);
    assert_eq!(config["student"]["warmup_epochs"], 2);

    // Too long a teacher warm-up is named by its own option.
    let long = ["--teacher-warmup-epochs", "2"];
    let out = dir.path().join("too-long");
    let output =
        common::kd_cpu("run", &out, &[&TINY_RUN[..], &epochs[..], &rates[..], &long].concat());
    assert!(!output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("--teacher-warmup-epochs 2 leaves nothing of a 2-epoch phase"),
        "{stderr}"
    );
}

#[test]
fn force_never_deletes_the_teacher_the_command_reads() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let small = ["--train-limit", "1000", "--student-model", "mlp:16", "--no-baseline"];
    let teacher_phase = ["--teacher-model", "mlp:32", "--teacher-epochs", "1"];
    let output = common::kd_cpu(
        "run",
        &run,
        &[&small[..], &teacher_phase, &["--student-epochs", "1"]].concat(),
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let teacher = run.join("teacher.safetensors");
    let teacher_arg = teacher.to_str().unwrap();
    let before = std::fs::read(&teacher).unwrap();

    // kd run and kd distill into the folder that holds their teacher, with --force.
    let from = ["--teacher-from", teacher_arg, "--student-epochs", "1", "--force"];
    let distill = ["--teacher", teacher_arg, "--epochs", "1", "--force"];
    for (command, extra) in [("run", &from[..]), ("distill", &distill[..])] {
        // The sizes alone (kd distill trains no baseline unless asked).
        let output = common::kd_cpu(command, &run, &[&small[..4], extra].concat());
        assert_eq!(output.status.code(), Some(1), "kd {command}");
        let stderr = text(&output.stderr);
        assert!(stderr.contains("--force would delete"), "kd {command}: {stderr}");
        assert_eq!(std::fs::read(&teacher).unwrap(), before, "kd {command} lost the teacher");
        assert!(run.join("summary.csv").exists(), "kd {command} lost the finished run");
    }

    // A sweep whose teacher is one of its own points.
    let sweep = dir.path().join("sweep");
    let grid = ["--temperature", "2", "--alpha", "0.5", "--epochs", "1"];
    let output =
        common::kd_cpu("sweep", &sweep, &[&small[..], &grid, &["--teacher", teacher_arg]].concat());
    assert!(output.status.success(), "{}", text(&output.stderr));
    let point = sweep.join("points").join("T2-a0.5-s0.safetensors");
    let point_arg = point.to_str().unwrap();
    let again = ["--teacher", point_arg, "--force"];
    let output = common::kd_cpu("sweep", &sweep, &[&small[..], &grid, &again].concat());
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("--force would delete"), "{}", text(&output.stderr));
    assert!(point.exists(), "the sweep lost its point");

    // With --teacher-from no teacher trains, so its schedule is not checked: a warm-up longer
    // than the default teacher phase (8 epochs) is fine, and config.json records no teacher
    // schedule. The teacher's own training options are refused before anything is written.
    let out = dir.path().join("warm");
    let warm = ["--teacher-from", teacher_arg, "--student-epochs", "10", "--warmup-epochs", "9"];
    let teacher_options = ["--teacher-model", "mlp:64", "--teacher-epochs", "2", "--jitter=1"];
    let output = common::kd_cpu("run", &out, &[&small[..], &warm, &teacher_options].concat());
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    let refusal = "cannot apply: leave --teacher-model, --teacher-epochs, --jitter out";
    assert!(stderr.contains(refusal), "{stderr}");
    assert!(!out.exists(), "a refused run left {}", out.display());
    let output = common::kd_cpu("run", &out, &[&small[..], &warm].concat());
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(common::config_json(&out)["teacher"].is_null());
}
