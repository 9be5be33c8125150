//! Helpers shared by the integration tests: where the real MNIST and the setup's Python are.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// Every row of a CSV file written by kd.
pub fn read_csv<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    csv::Reader::from_path(path).unwrap().deserialize().map(Result::unwrap).collect()
}
