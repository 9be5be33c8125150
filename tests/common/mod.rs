//! Helpers shared by the integration tests: where the real MNIST and the setup's Python are.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real MNIST that `scripts/setup.sh` fetched.
pub fn mnist_dir() -> PathBuf {
    let dir = repo().join("data/mnist");
    assert!(
        dir.join("t10k-labels-idx1-ubyte").exists(),
        "{} is missing: run scripts/setup.sh",
        dir.display()
    );
    dir
}

/// The Python of the setup's environment (with torch 2.11.0).
pub fn python() -> PathBuf {
    let python = repo().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh", python.display());
    python
}

/// Runs the real `kd` binary with `args` and waits for it.
pub fn kd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kd")).args(args).output().expect("kd runs")
}

/// Output bytes as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `config.json` of the run folder `dir`.
pub fn config_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap()
}

/// Every row of a CSV file written by kd.
pub fn read_csv<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    csv::Reader::from_path(path).unwrap().deserialize().map(Result::unwrap).collect()
}

/// The PyTorch teachers of `scripts/torch_teachers.py --broken`, made once per test binary:
/// 2 epochs on 5,000 training images.
pub fn torch_teachers() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kd-torch-teachers-{}", std::process::id()));
        let output = Command::new(python())
            .arg(repo().join("scripts/torch_teachers.py"))
            .args(["--data", mnist_dir().to_str().unwrap(), "--out", dir.to_str().unwrap()])
            .args(["--epochs", "2", "--train-limit", "5000", "--broken"])
            .output()
            .expect("python runs");
        assert!(output.status.success(), "{}", text(&output.stderr));
        dir
    })
}

/// Every tensor of a checkpoint, by name, as raw bytes.
pub fn weights(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<u8>)> =
        file.tensors().into_iter().map(|(name, view)| (name, view.data().to_vec())).collect();
    tensors.sort();
    tensors
}

/// Runs `kd COMMAND` on the real MNIST, on the CPU, quietly and without plots, writing to
/// `out`, with `extra` options after those.
pub fn kd_cpu(command: &str, out: &Path, extra: &[&str]) -> Output {
    let data = mnist_dir();
    let mut args = vec![command, "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap()];
    args.extend(["--device", "cpu", "--quiet", "--no-plot"]);
    args.extend(extra);
    kd(&args)
}
