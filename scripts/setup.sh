#!/usr/bin/env bash
# Sets up everything kd needs on a fresh machine, and takes seconds when run again:
#   1. a Python environment with torch==2.11.0 (libtorch for the tch crate, and PyTorch for the
#      tests and plots), kept in a cache folder outside the clone so every clone shares it;
#   2. links in the repository: `libtorch` (what .cargo/config.toml points the build at) and
#      `.venv` (the Python the tests and scripts use);
#   3. MNIST in data/mnist, fetched and checked by SHA-256 (scripts/fetch_mnist.py).
# The cache folder is $KD_CACHE_DIR, else $XDG_CACHE_HOME/kd, else ~/.cache/kd.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${KD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kd}
venv=$cache/torch-2.11.0
python_packages=(torch==2.11.0 numpy matplotlib safetensors)

check_venv() {
    "$venv/bin/python" - <<'PY' 2>/dev/null
import matplotlib, numpy, safetensors, torch
assert torch.__version__.split("+")[0] == "2.11.0", torch.__version__
PY
}

mkdir -p "$cache"
if ! check_venv; then
    echo "setup: installing ${python_packages[*]} into $venv (about 4.6 GB, a minute or two)"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "${python_packages[@]}"
    check_venv || { echo "setup: the Python environment in $venv is not usable" >&2; exit 1; }
fi

torch_dir=$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
ln -sfn "$torch_dir" "$repo/libtorch"
ln -sfn "$venv" "$repo/.venv"

"$venv/bin/python" "$repo/scripts/fetch_mnist.py" "$repo/data/mnist" --cache "$cache/downloads"
echo "setup: done (libtorch: $torch_dir, data: $repo/data/mnist)"
