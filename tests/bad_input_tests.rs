//! The README's table of bad inputs, one test per row: each input gets one `error:` paragraph
//! (no panic, no libtorch stack trace) and the exit status the table says.

mod common;

use std::path::{Path, PathBuf};

use common::{kd, mnist_dir, text, torch_teachers};

const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// Runs kd with `args`, checks the exit status and that stderr is one error paragraph holding
/// `message`.
fn refused(args: &[&str], status: i32, message: &str) {
    let output = kd(args);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(status), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "{stderr}");
    assert!(stderr.contains(message), "{args:?}: expected '{message}' in: {stderr}");
    if status == 1 {
        let error = &stderr[stderr.find("error: ").expect("an error line")..];
        assert_eq!(error.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    }
}

/// A data folder holding links to the real MNIST files, except `name`, which gets `bytes`.
fn data_with(dir: &Path, name: &str, bytes: Vec<u8>) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for file in IDX_FILES {
        let path = data.join(file);
        if file == name {
            std::fs::write(&path, &bytes).unwrap();
        } else {
            std::os::unix::fs::symlink(mnist_dir().join(file), &path).unwrap();
        }
    }
    data
}

fn real(name: &str) -> Vec<u8> {
    std::fs::read(mnist_dir().join(name)).unwrap()
}

fn eval_on(data: &Path, model: &Path) -> Vec<String> {
    ["eval", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap()]
        .map(String::from)
        .to_vec()
}

fn args(list: &[String]) -> Vec<&str> {
    list.iter().map(String::as_str).collect()
}

/// A small student checkpoint to evaluate against broken data.
fn student(dir: &Path) -> PathBuf {
    let path = dir.join("student.safetensors");
    let spec = "mlp:16".parse().unwrap();
    kd::checkpoint::save(&kd::models::Model::new(&spec, 10, tch::Device::Cpu), &path).unwrap();
    path
}

#[test]
fn a_truncated_idx_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut labels = real("t10k-labels-idx1-ubyte");
    labels.truncate(5000);
    let data = data_with(dir.path(), "t10k-labels-idx1-ubyte", labels);
    let message = "file is 5000 bytes but its header [10000] implies 10008 (truncated or padded)";
    refused(&args(&eval_on(&data, &student(dir.path()))), 1, message);
}

#[test]
fn a_wrong_magic_number() {
    let dir = tempfile::tempdir().unwrap();
    // The labels file where the images file should be.
    let data = data_with(dir.path(), "t10k-images-idx3-ubyte", real("t10k-labels-idx1-ubyte"));
    refused(&args(&eval_on(&data, &student(dir.path()))), 1, "magic number is 2049, expected 2051");
}

#[test]
fn a_label_count_that_differs_from_the_image_count() {
    let dir = tempfile::tempdir().unwrap();
    let mut labels = real("t10k-labels-idx1-ubyte");
    labels.truncate(8 + 9000);
    labels[4..8].copy_from_slice(&9000u32.to_be_bytes());
    let data = data_with(dir.path(), "t10k-labels-idx1-ubyte", labels);
    refused(&args(&eval_on(&data, &student(dir.path()))), 1, "holds 10000 images but");
}

#[test]
fn an_empty_data_folder() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = dir.path().join("run");
    let list = ["run", "--data", empty.to_str().unwrap(), "--out", out.to_str().unwrap()];
    refused(&list, 1, "no t10k-images file");
    assert!(!out.exists(), "a run folder was made for a run that could not start");
}

#[test]
fn a_non_numeric_option_value() {
    refused(&["run", "--lr", "fast"], 2, "invalid value 'fast' for '--lr <X>'");
    refused(&["run", "--student-epochs", "six"], 2, "invalid value 'six' for '--student-epochs");
}

#[test]
fn an_out_of_range_option_value() {
    refused(&["run", "--alpha", "1.5"], 2, "must be between 0 and 1");
    refused(&["run", "--temperature", "0"], 2, "must be between 0.001 and 1000");
    refused(&["sweep", "--teacher", "t.safetensors", "--shard", "3/2"], 2, "--shard");
}

#[test]
fn a_checkpoint_from_a_different_architecture() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = student(dir.path());
    let list = ["eval", "--model", checkpoint.to_str().unwrap(), "--model-spec", "mlp:800x800"];
    refused(&list, 1, "holds a mlp:16 model, not mlp:800x800");

    // A safetensors file whose tensors do not fit the spec it is given.
    let foreign = dir.path().join("foreign.safetensors");
    let tensors = [("layer0.weight", tch::Tensor::zeros([3, 3], tch::kind::FLOAT_CPU))];
    tch::Tensor::write_safetensors(&tensors, &foreign).unwrap();
    let list = ["eval", "--model", foreign.to_str().unwrap(), "--model-spec", "mlp:16"];
    refused(&list, 1, "does not fit a mlp:16 model");
}

#[test]
fn a_torchscript_file_that_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let state_dict = torch_teachers().join("state_dict.pt");
    refused(&args(&eval_on(&mnist_dir(), &state_dict)), 1, "not a TorchScript model");
    let text_file = dir.path().join("notes.pt");
    std::fs::write(&text_file, "not a model").unwrap();
    refused(&args(&eval_on(&mnist_dir(), &text_file)), 1, "not a TorchScript model");
}

#[test]
fn a_run_folder_from_an_older_layout() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old");
    std::fs::create_dir(&old).unwrap();
    std::fs::write(old.join("config.json"), r#"{"kd_version": "0.1.0", "command": "run"}"#)
        .unwrap();
    refused(&["run", "--resume", old.to_str().unwrap()], 1, "has no command.json");

    let saved = r#"{"layout": 1, "command": "run", "cwd": "/", "argv": ["run"]}"#;
    std::fs::write(old.join("command.json"), saved).unwrap();
    refused(&["run", "--resume", old.to_str().unwrap()], 1, "run-folder layout 1");
}

#[test]
fn an_unwritable_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    let out = blocker.join("run");
    let data = mnist_dir();
    let list = ["teacher", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    refused(&list, 1, "cannot create run folder");
}
