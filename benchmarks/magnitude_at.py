"""Gradual magnitude pruning of a cached dense Fashion-MNIST model to a given count of non-zero weights.

    python benchmarks/magnitude_at.py --model lenet300 --nonzero 8873 --epochs 26 -o out.json

The peer of ``benchmarks/sparse_vd_fashion.py`` (its ``magnitude_peer``: global L1, cubic schedule over the first
two thirds of the epochs, the model's recipe's learning rate, batch size and seed) run alone: at a count sparse VD
did not export, or with more epochs than the sparse VD run trained, to ask what the peer reaches there. The dense
model is the cached one of ``sparse_vd_fashion.py`` (trained and cached there when missing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

import torch

from benchmarks.common import ROOT, command_line, machine
from benchmarks.sparse_vd_fashion import ARCHS, DATA, DEFAULT_DENSE_EPOCHS, dense_model, magnitude_peer
from prunedrop.atomic import atomic_write_text
from prunedrop.data import load_data
from prunedrop.recipes import load_recipe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(ARCHS), required=True)
    p.add_argument("--nonzero", type=int, required=True, help="non-zero weights to keep (biases excluded)")
    p.add_argument("--epochs", type=int, required=True, help="total epochs (pruning and fine-tuning)")
    p.add_argument("--prune-fraction", type=float, default=2 / 3, help="share of the epochs over which sparsity rises")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(ROOT / "recipes" / f"{args.model}-fashion.yaml")  # as sparse_vd_fashion.py's default
    dense, dense_info = dense_model(args.model, DEFAULT_DENSE_EPOCHS[args.model], recipe.seed, recipe.val_fraction)
    data = load_data(DATA, val_fraction=recipe.val_fraction, seed=recipe.seed)
    summary = magnitude_peer(dense, data, recipe, nonzero=args.nonzero, epochs=args.epochs,
                             prune_fraction=args.prune_fraction)
    out = {"model": args.model, "data": DATA, "command": command_line(), "dense": dense_info,
           "magnitude": summary, "machine": machine("cpu"),
           "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_text(Path(args.output), json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"magnitude: {summary['weights_ratio']:.1f}× ({summary['weights_nonzero']:,} non-zero), "
          f"validation {summary['val_accuracy']:.2f}%, test {summary['test_accuracy']:.2f}% "
          f"in {summary['seconds']:.0f} s")


if __name__ == "__main__":
    main()
