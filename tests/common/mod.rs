//! Helpers shared by the integration tests: where the real MNIST and the setup's Python are.

#![allow(dead_code)]

use std::path::PathBuf;

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
