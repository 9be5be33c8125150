#!/usr/bin/env python3
"""Checks a TorchScript export of kd in plain PyTorch.

Usage: check_torchscript.py MODEL.pt TENSORS.safetensors

TENSORS holds `inputs` ([batch, 784] float32 pixels) and `expected` (the logits the Rust model
gave for them). Loads MODEL with torch.jit.load, runs it three times on `inputs`, and prints one
JSON line: the output shape, the largest absolute difference from `expected`, and whether the
three runs are bitwise equal. Exits 1 when the model cannot be loaded or run.
"""

import json
import sys

import torch
from safetensors.torch import load_file


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model_path, tensors_path = sys.argv[1:]
    tensors = load_file(tensors_path)
    model = torch.jit.load(model_path, map_location="cpu")
    model.eval()
    with torch.no_grad():
        outputs = [model(tensors["inputs"]) for _ in range(3)]
    print(json.dumps({
        "shape": list(outputs[0].shape),
        "max_abs_diff": (outputs[0] - tensors["expected"]).abs().max().item(),
        "repeat_bitwise_equal": all(torch.equal(outputs[0], o) for o in outputs[1:]),
    }))


if __name__ == "__main__":
    main()
