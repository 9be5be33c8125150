#!/usr/bin/env bash
# The test command: set-up (idempotent), then formatting, lints and the whole test suite.
# Tests use the MNIST copy and the Python environment that scripts/setup.sh provides.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release
