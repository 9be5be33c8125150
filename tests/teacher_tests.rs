//! Teachers made in PyTorch: `scripts/torch_teachers.py` trains a small MLP (saved from
//! `torch.jit.script`, flat input) and a small CNN (saved from `torch.jit.trace`, image input) on
//! real MNIST with the set-up's PyTorch 2.11.0 and records what PyTorch measures on the test set.
//! These tests check that `kd` reads the same models and gets the same numbers, alone and as an
//! ensemble, and that files that are not usable teachers are refused with a clear error.

mod common;

use std::path::Path;

use common::{kd, mnist_dir, read_csv, text, torch_teachers};
use kd::report::SummaryRow;
use kd::train::EpochRecord;
use serde_json::Value;

fn pytorch_figures() -> Value {
    let json = std::fs::read_to_string(torch_teachers().join("teachers.json")).unwrap();
    serde_json::from_str(&json).unwrap()
}

fn teacher(name: &str) -> String {
    torch_teachers().join(name).to_str().unwrap().to_string()
}

/// `kd distill` on 2,000 training images, 1 epoch, a small student; extra options appended.
fn distill(out: &Path, extra: &[&str]) -> std::process::Output {
    let data = mnist_dir();
    let mut args = vec!["distill", "--data", data.to_str().unwrap(), "--out"];
    args.push(out.to_str().unwrap());
    args.extend(["--device", "cpu", "--train-limit", "2000", "--epochs", "1"]);
    args.extend(["--student-model", "mlp:64", "--quiet", "--no-plot"]);
    args.extend(extra);
    kd(&args)
}

#[test]
fn kd_eval_counts_the_same_errors_as_pytorch() {
    let expected = pytorch_figures();
    for name in ["mlp.pt", "cnn.pt"] {
        let data = mnist_dir();
        let path = teacher(name);
        let output =
            kd(&["eval", "--model", &path, "--data", data.to_str().unwrap(), "--device", "cpu"]);
        assert!(output.status.success(), "{name}: {}", text(&output.stderr));
        let stdout = text(&output.stdout);

        let errors = expected[name]["test_errors"].as_i64().unwrap();
        assert!(stdout.contains(&format!("errors     {errors} of 10000")), "{name}: {stdout}");
        let classes = expected[name]["class_errors"].as_array().unwrap();
        for (class, count) in classes.iter().enumerate() {
            let line = format!("  {class}: {}\n", count.as_i64().unwrap());
            assert!(stdout.contains(&line), "{name}, class {class}: {stdout}");
        }
    }
}

#[test]
fn an_ensemble_of_pytorch_teachers_reports_each_member_and_itself() {
    let expected = pytorch_figures();
    let dir = tempfile::tempdir().unwrap();
    let (mlp, cnn) = (teacher("mlp.pt"), teacher("cnn.pt"));

    for (how, key) in [("probabilities", "ensemble_probabilities"), ("logits", "ensemble_logits")] {
        let out = dir.path().join(how);
        let output = distill(&out, &["--teacher", &mlp, "--teacher", &cnn, "--ensemble", how]);
        assert!(output.status.success(), "{}", text(&output.stderr));

        let summary: Vec<SummaryRow> = read_csv(&out.join("summary.csv"));
        let phases: Vec<&str> = summary.iter().map(|r| r.phase.as_str()).collect();
        assert_eq!(phases, ["teacher", "teacher", "ensemble", "student"]);
        assert_eq!(summary[0].model, format!("torchscript:{mlp}"));
        assert_eq!(summary[1].model, format!("torchscript:{cnn}"));
        let errors = |key: &str| expected[key]["test_errors"].as_i64().unwrap();
        assert_eq!(summary[0].test_errors, errors("mlp.pt"));
        assert_eq!(summary[1].test_errors, errors("cnn.pt"));
        assert_eq!(summary[2].test_errors, errors(key), "{how}");
        // The student learnt from the ensemble: it agrees with it far above chance.
        assert!(summary[3].agreement.unwrap() > 0.5, "{:?}", summary[3]);
    }
}

/// A kd teacher exported to TorchScript teaches exactly as its checkpoint does: the same
/// student metrics, epoch by epoch, from the `.safetensors` file and from the `.pt` file.
#[test]
fn a_torchscript_teacher_teaches_as_its_checkpoint_does() {
    let dir = tempfile::tempdir().unwrap();
    let data = mnist_dir();
    let teacher_dir = dir.path().join("teacher");
    let output = kd(&[
        "teacher",
        "--data",
        data.to_str().unwrap(),
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
        "--no-plot",
    ]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let checkpoint = teacher_dir.join("teacher.safetensors");
    let output = kd(&["export", "--model", checkpoint.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));

    let metrics = |file: &str| {
        let out = dir.path().join(file);
        let path = teacher_dir.join(file);
        let output = distill(&out, &["--teacher", path.to_str().unwrap()]);
        assert!(output.status.success(), "{}", text(&output.stderr));
        let rows: Vec<EpochRecord> = read_csv(&out.join("metrics.csv"));
        rows.iter().map(|r| (r.train_loss, r.test_loss, r.test_errors)).collect::<Vec<_>>()
    };
    assert_eq!(metrics("teacher.safetensors"), metrics("teacher.pt"));

    // --resume needs no --teacher: the saved command has it.
    let finished = dir.path().join("teacher.pt");
    let output = kd(&["distill", "--resume", finished.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("nothing to resume"), "{}", text(&output.stderr));
}

#[test]
fn unusable_teachers_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], &str); 5] = [
        ("wrong_classes.pt", &[], "returns shape [2, 5], expected [2, 10]"),
        ("nan_logits.pt", &[], "gives logits that are not finite (NaN or infinite)"),
        ("state_dict.pt", &[], "not a TorchScript model"),
        ("mlp.pt", &["--teacher-input", "image"], "on a [n, 1, 28, 28] batch it fails"),
        ("cnn.pt", &["--teacher-input", "flat"], "on a [n, 784] batch it fails"),
    ];
    for (name, extra, message) in cases {
        let out = dir.path().join(name);
        let path = teacher(name);
        let mut args = vec!["--teacher", path.as_str()];
        args.extend(extra);
        let output = distill(&out, &args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(message), "{name}: {stderr}");
        assert!(stderr.contains(&format!("cannot use {path} as a teacher")), "{name}: {stderr}");
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        assert!(!out.exists(), "{name}: a run folder was left behind");
    }
}
