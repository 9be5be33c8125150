#!/usr/bin/env bash
# Benchmarks kd against plain PyTorch, and a sweep against separate runs (see scripts/bench.py).
# Takes about ten minutes on a 2-core CPU. Prints figures; asserts nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh > /dev/null
cargo build --release --quiet
exec .venv/bin/python scripts/bench.py "$@"
