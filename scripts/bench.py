#!/usr/bin/env python3
"""Benchmarks kd against plain PyTorch on the default MNIST distillation job, and a kd sweep
against separate kd distill runs. Prints figures; asserts nothing. Run through scripts/bench.sh.

1. One distillation epoch (teacher mlp:1200x1200, student mlp:800x800, batch 128, T = 4,
   alpha = 0.9, SGD with momentum, cosine schedule, test evaluation each epoch) in kd
   (`kd distill`, seconds per epoch from its metrics.csv, plus its one-time teacher pass shared
   over the epochs) and in PyTorch written the fastest plain way (whole data set as tensors,
   permutation indexing, teacher under torch.no_grad, the same teacher weights), with the same
   thread count. Also the fraction of this machine's matrix-multiply peak (a 2048^3 float32
   matmul measured here) that kd's epoch reaches.
2. A 12-point sweep (T in 1, 2, 4, 8; alpha in 0.1, 0.5, 0.9; seed 0) with `kd sweep` against 12
   separate `kd distill` runs of the same points: wall time, peak resident memory of the sweep,
   and whether every point gives the same test errors.
"""

import argparse
import csv
import gzip
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KD = os.path.join(REPO, "target", "release", "kd")


def read_idx(folder, stem):
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix, opener in (("", open), (".gz", gzip.open)):
            path = os.path.join(folder, name + suffix)
            if os.path.exists(path):
                with opener(path, "rb") as f:
                    data = f.read()
                ndims = data[3]
                dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndims)]
                return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndims).reshape(dims)
    sys.exit(f"no {stem} in {folder}")


def mnist(folder):
    def images(stem):
        return torch.from_numpy(read_idx(folder, stem).reshape(-1, 784).astype(np.float32) / 255.0)

    def labels(stem):
        return torch.from_numpy(read_idx(folder, stem).astype(np.int64))

    return (images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte"),
            images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte"))


def mlp(sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i + 2 < len(sizes):
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def load_teacher(path):
    tensors = load_file(path)
    teacher = mlp([784, 1200, 1200, 10])
    linears = [m for m in teacher if isinstance(m, torch.nn.Linear)]
    for i, linear in enumerate(linears):
        linear.weight.data.copy_(tensors[f"layer{i}.weight"])
        linear.bias.data.copy_(tensors[f"layer{i}.bias"])
    return teacher.eval()


def torch_epochs(teacher, data, epochs, batch=128, lr=0.05, temperature=4.0, alpha=0.9):
    """The plain PyTorch distillation loop; returns seconds of each epoch (training + test)."""
    train_x, train_y, test_x, test_y = data
    torch.manual_seed(0)
    student = mlp([784, 800, 800, 10])
    optimizer = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9)
    steps = epochs * math.ceil(len(train_x) / batch)
    step = 0
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        student.train()
        for index in torch.randperm(len(train_x)).split(batch):
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / steps))
            x, y = train_x[index], train_y[index]
            with torch.no_grad():
                soft = F.log_softmax(teacher(x) / temperature, dim=1)
            logits = student(x)
            log_p = F.log_softmax(logits / temperature, dim=1)
            kd = (soft.exp() * (soft - log_p)).sum(1).mean() * temperature ** 2
            loss = (1 - alpha) * F.cross_entropy(logits, y) + alpha * kd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        student.eval()
        with torch.no_grad():
            predicted = torch.cat([student(x) for x in test_x.split(2000)]).argmax(1)
            teacher_predicted = torch.cat([teacher(x) for x in test_x.split(2000)]).argmax(1)
            (predicted != test_y).sum().item(), (predicted == teacher_predicted).float().mean().item()
        seconds.append(time.perf_counter() - start)
    return seconds


def matmul_peak_gflops(n=2048, repeats=10):
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def run(args, **kwargs):
    start = time.perf_counter()
    completed = subprocess.run(args, capture_output=True, text=True, **kwargs)
    if completed.returncode != 0:
        sys.exit(f"{' '.join(args)} failed:\n{completed.stderr}")
    return time.perf_counter() - start, completed


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(REPO, "data", "mnist"))
    parser.add_argument("--epochs", type=int, default=3, help="distillation epochs timed in part 1")
    parser.add_argument("--sweep-epochs", type=int, default=2, help="epochs per point in part 2")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    work = tempfile.mkdtemp(prefix="kd-bench-")
    common = ["--data", args.data, "--device", "cpu", "--quiet", "--no-plot"]
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {threads} threads for both kd and PyTorch")

    # The teacher: one epoch of kd's default teacher is enough for timing.
    _, _ = run([KD, "teacher", "--out", f"{work}/teacher", "--epochs", "1", *common])
    teacher_path = f"{work}/teacher/teacher.safetensors"

    # Part 1: kd distill against the PyTorch loop.
    wall, _ = run([KD, "distill", "--teacher", teacher_path, "--out", f"{work}/distill", "--epochs", str(args.epochs), *common])
    kd_epochs = [float(r["seconds"]) for r in read_csv(f"{work}/distill/metrics.csv")]
    kd_epoch = sum(kd_epochs) / len(kd_epochs)
    torch_epoch_seconds = torch_epochs(load_teacher(teacher_path), mnist(args.data), args.epochs)
    torch_epoch = sum(torch_epoch_seconds) / len(torch_epoch_seconds)
    samples = 60000
    macs = 784 * 800 + 800 * 800 + 800 * 10
    flops = samples * 6 * macs + 10000 * 2 * macs
    peak = matmul_peak_gflops()
    print("\n1. One distillation epoch (60,000 training images, then the 10,000 test images)")
    print(f"   kd:      {kd_epoch:6.2f} s per epoch ({', '.join(f'{s:.2f}' for s in kd_epochs)}), "
          f"{samples / kd_epoch:,.0f} samples/s; whole command {wall:.1f} s for {args.epochs} epochs")
    print(f"   PyTorch: {torch_epoch:6.2f} s per epoch ({', '.join(f'{s:.2f}' for s in torch_epoch_seconds)}), "
          f"{samples / torch_epoch:,.0f} samples/s")
    print(f"   ratio kd / PyTorch: {kd_epoch / torch_epoch:.3f} per epoch; "
          f"{wall / args.epochs / torch_epoch:.3f} counting the whole kd command (start, data, one-time "
          f"teacher pass) over {args.epochs} epochs")
    print(f"   kd epoch: {flops / kd_epoch / 1e9:.1f} GFLOP/s of a measured float32 matmul peak of "
          f"{peak:.1f} GFLOP/s ({100 * flops / kd_epoch / 1e9 / peak:.0f}%)")

    # Part 2: a 12-point sweep against 12 separate runs.
    temperatures, alphas = ["1", "2", "4", "8"], ["0.1", "0.5", "0.9"]
    epochs = str(args.sweep_epochs)
    sweep_wall, completed = run(["/usr/bin/time", "-f", "maxrss_kb %M", KD, "sweep", "--teacher", teacher_path,
                                 "--out", f"{work}/sweep", "--temperature", ",".join(temperatures),
                                 "--alpha", ",".join(alphas), "--no-baseline", "--epochs", epochs, *common])
    rss_gb = int(completed.stderr.split("maxrss_kb")[-1].split()[0]) / 1e6
    sweep_rows = {(float(r["temperature"]), float(r["alpha"])): int(r["test_errors"]) for r in read_csv(f"{work}/sweep/sweep.csv")}
    separate_wall = 0.0
    same = True
    for t in temperatures:
        for a in alphas:
            out = f"{work}/point-{t}-{a}"
            seconds, _ = run([KD, "distill", "--teacher", teacher_path, "--out", out, "--temperature", t, "--alpha", a,
                              "--epochs", epochs, *common])
            separate_wall += seconds
            errors = int(read_csv(f"{out}/summary.csv")[-1]["test_errors"])
            same &= errors == sweep_rows[(float(t), float(a))]
    print(f"\n2. Twelve points (T in {{1, 2, 4, 8}} x alpha in {{0.1, 0.5, 0.9}}, {epochs} epochs each)")
    print(f"   kd sweep:                {sweep_wall:7.1f} s, peak resident memory {rss_gb:.2f} GB")
    print(f"   12 separate kd distill:  {separate_wall:7.1f} s")
    print(f"   ratio sweep / separate:  {sweep_wall / separate_wall:.3f}")
    print(f"   same test errors at every point: {'yes' if same else 'NO'}")
    print(f"\n(files in {work})")


if __name__ == "__main__":
    main()
