//! Black-box tests of `kd presets` and `kd run --preset` on real MNIST: the preset's options
//! apply under the user's, the comparison with the paper lands in the table and in
//! `summary.csv`, and the omitted-class preset leaves the class out, counts its errors and
//! shifts its bias as a changed output bias would.
//!
//! The presets' own schedules take most of an hour; here every size and epoch count is
//! overridden from the command line, which is what the override rule is for.

mod common;

use common::{kd, read_csv, text};

use std::path::Path;

use kd::checkpoint;
use kd::data::load_mnist;
use kd::report::SummaryRow;
use kd::train::{evaluate, evaluation_from_logits, predict};
use tch::{Device, Kind, Tensor};

/// Small student sizes that override the preset's (one-epoch phases leave no room for a
/// warm-up), and a small teacher for the runs that train one.
const SMALL: [&str; 8] = [
    "--train-limit",
    "3000",
    "--student-model",
    "mlp:32",
    "--student-epochs",
    "1",
    "--warmup-epochs",
    "0",
];
const SMALL_TEACHER: [&str; 4] =
    ["--teacher-model", "mlp:128:dropout=0.2", "--teacher-epochs", "1"];

fn preset_run(preset: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    common::kd_cpu("run", out, &[&["--preset", preset][..], &SMALL, extra].concat())
}

#[test]
fn kd_presets_lists_each_preset_with_its_command_and_the_papers_numbers() {
    let output = kd(&["presets"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let listing = text(&output.stdout);
    for line in [
        "hinton-mnist\n",
        "command:  kd run --preset hinton-mnist --out runs/hinton-mnist",
        "hinton-mnist-omit3\n",
        "--omit-class 3",
    ] {
        assert!(listing.contains(line), "missing {line:?} in:\n{listing}");
    }
    // The paper's test errors (Hinton, Vinyals and Dean 2015, section 3).
    for paper in [" 67 ", " 146 ", " 74 ", " 206 (133) ", " 109 (14) "] {
        assert!(listing.contains(paper), "missing {paper:?} in:\n{listing}");
    }
}

#[test]
fn a_preset_run_applies_the_preset_under_the_users_options_and_compares_with_the_paper() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hinton");
    let output = preset_run("hinton-mnist", &out, &SMALL_TEACHER);
    assert!(output.status.success(), "{}", text(&output.stderr));

    // The preset's temperature and teacher jitter, the user's sizes.
    let config = common::config_json(&out);
    assert_eq!(config["preset"], "hinton-mnist");
    assert_eq!(config["distill"]["temperature"], 20.0);
    assert_eq!(config["teacher"]["jitter"], 2);
    assert_eq!(config["teacher_model"], "mlp:128:dropout=0.2");
    assert_eq!(config["student"]["epochs"], 1);

    // summary.csv: the paper's errors and the difference, row by row.
    let summary: Vec<SummaryRow> = read_csv(&out.join("summary.csv"));
    let phases: Vec<&str> = summary.iter().map(|r| r.phase.as_str()).collect();
    assert_eq!(phases, ["teacher", "baseline", "student"]);
    for (row, paper) in summary.iter().zip([67, 146, 74]) {
        assert_eq!(row.paper_errors, Some(paper), "{}", row.phase);
        assert_eq!(row.difference, Some(row.test_errors - paper), "{}", row.phase);
    }

    // The printed comparison: one line per row with paper, kd and difference, then the gap.
    let table = text(&output.stdout);
    let note = "note: --train-limit, --student-model, --student-epochs, --warmup-epochs, \
                --teacher-model, --teacher-epochs given beside the preset change its recipe";
    assert!(table.contains(note), "missing {note:?} in:\n{table}");
    let line = table.lines().find(|l| l.contains("distilled at T = 20")).expect("student row");
    let student = &summary[2];
    let fields: Vec<&str> = line.split_whitespace().rev().take(3).collect();
    let difference = format!("{:+}", student.test_errors - 74);
    assert_eq!(fields, [difference.as_str(), &student.test_errors.to_string(), "74"], "{line}");
    let (t, b, s) = (summary[0].test_errors, summary[1].test_errors, student.test_errors);
    if b > t {
        let closed = format!("closes {:.0}% of the gap", 100.0 * (b - s) as f64 / (b - t) as f64);
        assert!(table.contains(&closed), "missing {closed:?} in:\n{table}");
    }

    // Resuming it under another preset is refused, naming the preset rather than the options
    // the other preset brings.
    let resume = ["run", "--resume", out.to_str().unwrap(), "--preset", "hinton-mnist-omit3"];
    let output = common::kd(&resume);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("--preset hinton-mnist-omit3 conflicts with the run in"), "{stderr}");
}

#[test]
fn a_bad_value_in_a_preset_file_is_an_error_that_names_the_preset() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mine.toml");
    let preset = "name = \"mine\"\nsummary = \"s\"\ncommand = \"c\"\ntime_cpu = \"t\"\n\
                  time_gpu = \"t\"\nargs = [\"--alpha\", \"1.5\"]\n";
    std::fs::write(&file, preset).unwrap();
    let out = dir.path().join("run");
    let output = common::kd_cpu("run", &out, &["--preset", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    let expected = format!(
        "under preset {}, whose options (`kd presets` lists them) come before yours: invalid \
         value '1.5' for '--alpha <A>'",
        file.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(!out.exists(), "a refused run left {}", out.display());
}

#[test]
fn an_error_about_options_the_preset_gave_names_the_preset() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("short");
    // hinton-mnist warms its students up over 3 epochs: a 2-epoch student phase cannot hold that.
    let args = ["--preset", "hinton-mnist", "--train-limit", "1000", "--student-epochs", "2"];
    let output = common::kd_cpu("run", &out, &args);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    let expected = "under preset hinton-mnist, whose options (`kd presets` lists them) come \
                    before yours: --warmup-epochs 3 leaves nothing of a 2-epoch phase";
    assert!(stderr.contains(expected), "{stderr}");
    assert!(!out.exists(), "a refused run left {}", out.display());

    // hinton-mnist-omit3 holds 5,000 images out: more than 1,000 training images have.
    let args = ["--preset", "hinton-mnist-omit3", "--train-limit", "1000"];
    let output = common::kd_cpu("run", &out, &args);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    let expected = "under preset hinton-mnist-omit3, whose options (`kd presets` lists them) \
                    come before yours: --holdout 5000 would leave no training sample";
    assert!(stderr.contains(expected), "{stderr}");
    assert!(!out.exists(), "a refused run left {}", out.display());
}

#[test]
fn the_omitted_class_preset_leaves_out_the_class_and_shifts_its_output_bias() {
    let dir = tempfile::tempdir().unwrap();
    let teacher_run = dir.path().join("teacher");
    let options = ["--train-limit", "3000", "--teacher-model", "mlp:128", "--epochs", "2"];
    let teacher = common::kd_cpu("teacher", &teacher_run, &options);
    assert!(teacher.status.success(), "{}", text(&teacher.stderr));
    let teacher_file = teacher_run.join("teacher.safetensors");

    let out = dir.path().join("omit3");
    let extra = ["--teacher-from", teacher_file.to_str().unwrap(), "--holdout", "500"];
    let output = preset_run("hinton-mnist-omit3", &out, &extra);
    assert!(output.status.success(), "{}", text(&output.stderr));
    // A teacher from elsewhere keeps the recipe; the held-out size changes it.
    let table = text(&output.stdout);
    let note = "--warmup-epochs, --holdout given beside the preset change its recipe";
    assert!(table.contains(note), "missing {note:?} in:\n{table}");

    // The students trained on the first 2,500 images less their 3s.
    let mnist = load_mnist(&common::mnist_dir(), Device::Cpu, Some(3000)).unwrap();
    let kept = mnist.train.labels.narrow(0, 0, 2500).ne(3).sum(Kind::Int64).int64_value(&[]);
    let config = common::config_json(&out);
    assert_eq!(config["student_train_samples"], kept);
    assert_eq!(config["omit_class"], 3);
    assert!(config["teacher"].is_null(), "the teacher was given, not trained: {config}");

    let summary: Vec<SummaryRow> = read_csv(&out.join("summary.csv"));
    let phases: Vec<&str> = summary.iter().map(|r| r.phase.as_str()).collect();
    assert_eq!(phases, ["teacher", "student", "shifted", "best-shift"]);
    assert_eq!(summary[1].paper_errors, Some(206));
    assert_eq!(summary[1].paper_omitted_errors, Some(133));
    assert_eq!(summary[2].paper_omitted_errors, Some(14));

    // Errors on test 3s, and the +3.5 shift, recounted from the student with its output bias
    // raised: the shift must be exactly that change of the model.
    let student = checkpoint::load(&out.join("student.safetensors"), Device::Cpu, None).unwrap();
    let plain = evaluate(&student, &mnist.test, None);
    assert_eq!(summary[1].test_errors, plain.errors);
    assert_eq!(summary[1].omitted_errors, Some(plain.class_errors[3]));
    let shifted = with_bias_raised(&student, 3, 3.5, &mnist.test.images);
    let shifted = evaluation_from_logits(&shifted, &mnist.test.labels, None);
    assert_eq!(summary[2].test_errors, shifted.errors);
    assert_eq!(summary[2].omitted_errors, Some(shifted.class_errors[3]));

    // The best shift, read back from its row's model text, does at least as well on the
    // held-out images (the last 500 of the 3,000) as no shift and as +3.5.
    let model = &summary[3].model;
    let best: f64 =
        model.split("bias ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!((0.0..=10.0).contains(&best), "{model}");
    let held_out = mnist.train.images.narrow(0, 2500, 500);
    let held_labels = mnist.train.labels.narrow(0, 2500, 500);
    let held_errors = |shift: f64| {
        let logits = with_bias_raised(&student, 3, shift, &held_out);
        evaluation_from_logits(&logits, &held_labels, None).errors
    };
    assert!(held_errors(best) <= held_errors(0.0).min(held_errors(3.5)), "{model}");
}

/// The model's logits with `shift` added to the output bias of `class`, by editing the bias.
fn with_bias_raised(model: &kd::models::Model, class: i64, shift: f64, images: &Tensor) -> Tensor {
    let last = model.spec.to_string().matches('x').count() + 1;
    let mut bias = model.vs.variables()[&format!("layer{last}.bias")].shallow_clone();
    let before = bias.copy();
    tch::no_grad(|| {
        let _ = bias.get(class).f_add_(&Tensor::from(shift as f32)).unwrap();
    });
    let logits = predict(model, images);
    tch::no_grad(|| bias.copy_(&before));
    logits
}
