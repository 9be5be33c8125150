#!/usr/bin/env bash
# Peak memory of the default job after 1 and after 5 epochs per phase (see scripts/memory.py).
# Takes about four minutes on a 2-core CPU. Prints figures; asserts nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh > /dev/null
cargo build --release --quiet
exec .venv/bin/python scripts/memory.py "$@"
