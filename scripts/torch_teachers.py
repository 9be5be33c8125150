#!/usr/bin/env python3
"""Trains teachers in plain PyTorch on MNIST and saves them as TorchScript, the way a PyTorch user
hands a model to kd: an MLP saved from torch.jit.script (input [n, 784]) and a CNN saved from
torch.jit.trace (input [n, 1, 28, 28]).

Writes, in --out:
  mlp.pt, cnn.pt     the teachers (evaluation mode)
  teachers.json      what PyTorch measures on the 10,000 test images: each teacher's test errors
                     and errors per class, and those of the two-member ensemble (mean of
                     probabilities, and mean of logits)
With --broken, also files kd must refuse: wrong_classes.pt (returns 5 logits) and
state_dict.pt (weights saved with torch.save, not TorchScript), nan_logits.pt (all logits NaN);
and nan_after_30_calls.pt, a teacher whose logits turn to NaN after its first 30 forwards.

Run with the set-up's Python: .venv/bin/python scripts/torch_teachers.py --out models/torch
"""

import argparse
import gzip
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def read_idx(folder, stem):
    for name in (stem, stem.replace("-idx", ".idx")):
        for suffix, opener in (("", open), (".gz", gzip.open)):
            path = os.path.join(folder, name + suffix)
            if os.path.exists(path):
                with opener(path, "rb") as f:
                    data = f.read()
                dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(data[3])]
                return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)
    sys.exit(f"no {stem} in {folder}; run scripts/setup.sh first")


def split(folder, prefix):
    images = read_idx(folder, f"{prefix}-images-idx3-ubyte").reshape(-1, 784)
    labels = read_idx(folder, f"{prefix}-labels-idx1-ubyte")
    return torch.from_numpy(images.astype(np.float32) / 255.0), torch.from_numpy(labels.astype(np.int64))


class Mlp(nn.Module):
    """784-512-512-10 with ReLU and dropout; takes flat rows."""

    def __init__(self):
        super().__init__()
        self.hidden1 = nn.Linear(784, 512)
        self.hidden2 = nn.Linear(512, 512)
        self.out = nn.Linear(512, 10)
        self.dropout = nn.Dropout(0.2)

    def forward(self, x):
        x = self.dropout(F.relu(self.hidden1(x)))
        x = self.dropout(F.relu(self.hidden2(x)))
        return self.out(x)


class Cnn(nn.Module):
    """Two 5x5 convolutions with pooling, then 128 hidden units; takes [n, 1, 28, 28] images."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.fc1 = nn.Linear(32 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class NanAfter(nn.Module):
    """Finite logits for its first `limit` forwards, NaN after: a teacher that goes bad."""

    def __init__(self, limit: int):
        super().__init__()
        self.out = nn.Linear(784, 10)
        self.calls = 0
        self.limit = limit

    def forward(self, x):
        self.calls += 1
        logits = self.out(x)
        if self.calls > self.limit:
            logits = logits * float("nan")
        return logits


class WrongClasses(nn.Module):
    def __init__(self):
        super().__init__()
        self.out = nn.Linear(784, 5)

    def forward(self, x):
        return self.out(x)


def train(model, images, labels, epochs, seed, lr=0.05):
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    steps = epochs * math.ceil(len(images) / 128)
    step = 0
    model.train()
    for _ in range(epochs):
        for index in torch.randperm(len(images)).split(128):
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / steps))
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return model.eval()


def figures(logits, labels):
    wrong = logits.argmax(1) != labels
    return {
        "test_errors": int(wrong.sum()),
        "class_errors": torch.bincount(labels[wrong], minlength=10).tolist(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/mnist", help="folder with the MNIST IDX files")
    parser.add_argument("--out", required=True, help="folder for the .pt files and teachers.json")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=60000, help="use the first N training images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--broken", action="store_true", help="also write files kd must refuse")
    args = parser.parse_args()

    train_x, train_y = split(args.data, "train")
    test_x, test_y = split(args.data, "t10k")
    train_x, train_y = train_x[: args.train_limit], train_y[: args.train_limit]
    os.makedirs(args.out, exist_ok=True)

    mlp = train(Mlp(), train_x, train_y, args.epochs, args.seed)
    cnn_model = Cnn()
    images = train_x.view(-1, 1, 28, 28)
    cnn = train(cnn_model, images, train_y, args.epochs, args.seed)
    scripted = torch.jit.script(mlp)
    with torch.no_grad():
        traced = torch.jit.trace(cnn, torch.zeros(1, 1, 28, 28))
    scripted.save(os.path.join(args.out, "mlp.pt"))
    traced.save(os.path.join(args.out, "cnn.pt"))

    with torch.no_grad():
        mlp_logits = scripted(test_x)
        cnn_logits = traced(test_x.view(-1, 1, 28, 28))
    stacked = torch.stack([mlp_logits, cnn_logits])
    report = {
        "torch": torch.__version__,
        "mlp.pt": {"input": "[n, 784]", **figures(mlp_logits, test_y)},
        "cnn.pt": {"input": "[n, 1, 28, 28]", **figures(cnn_logits, test_y)},
        "ensemble_probabilities": figures(stacked.softmax(-1).mean(0), test_y),
        "ensemble_logits": figures(stacked.mean(0), test_y),
    }
    if args.broken:
        torch.jit.script(WrongClasses()).save(os.path.join(args.out, "wrong_classes.pt"))
        torch.jit.script(NanAfter(30)).save(os.path.join(args.out, "nan_after_30_calls.pt"))
        torch.jit.script(NanAfter(0)).save(os.path.join(args.out, "nan_logits.pt"))
        torch.save(mlp.state_dict(), os.path.join(args.out, "state_dict.pt"))
    with open(os.path.join(args.out, "teachers.json"), "w") as f:
        json.dump(report, f, indent=2)
    for name in ("mlp.pt", "cnn.pt"):
        print(f"{os.path.join(args.out, name)}: {report[name]['test_errors']} test errors")
    print(f"ensemble (mean probabilities): {report['ensemble_probabilities']['test_errors']} test errors")


if __name__ == "__main__":
    main()
