#!/usr/bin/env python3
"""Draws the PNG plots of a kd run or sweep folder, beside its CSV files.

Usage: plot.py FOLDER

- A sweep folder (with sweep.csv): sweep_accuracy.png, the final test accuracy against the
  temperature, one line per alpha with error bars of one standard deviation over seeds, and the
  teacher and the baseline as horizontal lines; and learning_curves.png, the test accuracy per
  epoch of each (temperature, alpha), averaged over seeds.
- A run folder (kd run, teacher or distill): learning_curves.png, the test accuracy and the
  training loss per epoch of each phase.

Prints the path of each PNG it wrote, one per line.
"""

import csv
import os
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def read(folder, name):
    path = os.path.join(folder, name)
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def percent(value):
    return 100.0 * float(value)


def short_model(model):
    """A model's name for a legend: a teacher file is named without its folders."""
    kind, _, path = model.partition(":")
    return f"{kind}:{os.path.basename(path)}" if "/" in path else model


def sweep_accuracy(folder):
    rows = read(folder, "sweep.csv")
    by_alpha = defaultdict(lambda: defaultdict(list))
    baseline = []
    diverged = [row for row in rows if row.get("diverged")]
    for row in rows:
        if row.get("diverged"):
            continue
        if row["phase"] == "baseline":
            baseline.append(percent(row["final_test_acc"]))
        else:
            by_alpha[float(row["alpha"])][float(row["temperature"])].append(percent(row["final_test_acc"]))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for alpha in sorted(by_alpha):
        temperatures = sorted(by_alpha[alpha])
        means = [statistics.mean(by_alpha[alpha][t]) for t in temperatures]
        stds = [statistics.stdev(by_alpha[alpha][t]) if len(by_alpha[alpha][t]) > 1 else 0.0 for t in temperatures]
        ax.errorbar(temperatures, means, yerr=stds, marker="o", capsize=3, label=f"student, alpha = {alpha:g}")
    for row in read(folder, "summary.csv"):
        if row["phase"] == "teacher":
            ax.axhline(percent(row["test_acc"]), color="black", linestyle="--", label=f"teacher ({short_model(row['model'])})")
    if baseline:
        ax.axhline(statistics.mean(baseline), color="gray", linestyle=":", label="baseline (labels only)")
    all_temperatures = sorted({t for curves in by_alpha.values() for t in curves})
    if all_temperatures:
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(all_temperatures)
        ax.set_xticklabels([f"{t:g}" for t in all_temperatures])
    ax.set_xlabel("temperature T")
    ax.set_ylabel("final test accuracy (%)")
    seeds = len({row["seed"] for row in rows})
    left_out = f"\n{len(diverged)} diverged point{'s' if len(diverged) != 1 else ''} left out" if diverged else ""
    ax.set_title(f"Distillation sweep: test accuracy against temperature ({seeds} seed{'s' if seeds != 1 else ''}){left_out}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    return save(fig, folder, "sweep_accuracy.png")


def sweep_curves(folder):
    """Test accuracy per epoch of each point, averaged over seeds: a colour per temperature, a
    line style and marker per alpha, the baseline in black."""
    curves = defaultdict(lambda: defaultdict(list))
    for row in read(folder, "metrics.csv"):
        key = None if row["phase"] == "baseline" else (float(row["temperature"]), float(row["alpha"]))
        curves[key][int(row["epoch"])].append(percent(row["test_acc"]))
    temperatures = sorted({k[0] for k in curves if k})
    alphas = sorted({k[1] for k in curves if k})
    colours = plt.get_cmap("viridis")
    styles = ["-", "--", "-.", ":"]
    markers = ["o", "s", "^", "D"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for key in sorted(curves, key=lambda k: (k is not None, k or ())):
        epochs = sorted(curves[key])
        means = [statistics.mean(curves[key][e]) for e in epochs]
        if key is None:
            ax.plot(epochs, means, color="black", marker=".", label="baseline")
            continue
        t, a = key
        # viridis stops short of its pale yellow end, which is hard to see on white.
        colour = colours(0.85 * temperatures.index(t) / max(1, len(temperatures) - 1))
        style = styles[alphas.index(a) % len(styles)]
        marker = markers[alphas.index(a) % len(markers)]
        ax.plot(epochs, means, style, color=colour, marker=marker, label=f"T = {t:g}, alpha = {a:g}")
    ax.set_xlabel("epoch")
    all_epochs = sorted({e for curve in curves.values() for e in curve})
    if len(all_epochs) == 1:
        ax.set_xticks(all_epochs)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test accuracy (%), mean over seeds")
    ax.set_title("Learning curves of the sweep's points")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1))
    return save(fig, folder, "learning_curves.png")


def run_curves(folder):
    phases = defaultdict(list)
    for row in read(folder, "metrics.csv"):
        phases[row["phase"]].append(row)
    fig, (acc, loss) = plt.subplots(1, 2, figsize=(11, 4.5))
    longest = max(len(rows) for rows in phases.values())
    marker = "o" if longest <= 30 else None
    for phase, rows in phases.items():
        epochs = [int(r["epoch"]) for r in rows]
        acc.plot(epochs, [percent(r["test_acc"]) for r in rows], marker=marker, label=phase)
        loss.plot(epochs, [float(r["train_loss"]) for r in rows], marker=marker, label=phase)
    acc.set_xlabel("epoch")
    acc.set_ylabel("test accuracy (%)")
    acc.set_title("Test accuracy")
    loss.set_xlabel("epoch")
    loss.set_ylabel("training loss (the phase's own loss)")
    loss.set_yscale("log")
    loss.set_title("Training loss")
    for ax in (acc, loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        ax.legend()
    return save(fig, folder, "learning_curves.png")


def save(fig, folder, name):
    path = os.path.join(folder, name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    folder = sys.argv[1]
    if os.path.exists(os.path.join(folder, "sweep.csv")):
        if not read(folder, "sweep.csv"):
            sys.exit(f"{folder} holds no finished sweep point to plot")
        written = [sweep_accuracy(folder), sweep_curves(folder)]
    elif os.path.exists(os.path.join(folder, "metrics.csv")):
        written = [run_curves(folder)]
    else:
        sys.exit(f"{folder} holds no metrics.csv or sweep.csv")
    print("\n".join(written))


if __name__ == "__main__":
    main()
