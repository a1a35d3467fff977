"""What plain fine-tuning does to a converged network: the autopilot's early over-budget readings, explained.

Fine-tunes the cached dense LeNet-300-100 of ``sparse_vd_fashion.py`` (Fashion-MNIST, 30 epochs) with no noise and
no KL, with Adam at 1e-3 (the recipes' weights' learning rate), 1e-3 with the linear "untuned" warm-up of Ma &
Yarats (2 / (1 − β₂) = 2,000 steps), and 1e-4, and prints the validation accuracy after 100 … 1,500 steps. Any drop
here is what the variational phase loses before β matters, and what the autopilot reads as over the budget.
``--anneal`` adds Adam at 1e-3 with a cosine decay to zero over 10 epochs (5,400 steps), as the noise-free
fine-tuning ends: does the loss at a constant rate come back once the rate anneals? (validation after 100 … 5,400
steps, and test accuracy at the end).

    python benchmarks/finetune_transient.py   # needs benchmarks/results/lenet300-dense-e30-s0.pt (run
                                              # sparse_vd_fashion.py --model lenet300 once) and Fashion-MNIST;
                                              # --seed N: the split and dense model of that script's --seed N
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

import torch
from torch import nn

from benchmarks.common import ROOT, command_line, cpu_model
from examples.models import lenet300
from prunedrop.data import load_data
from prunedrop.train import evaluate

CHECKPOINTS = (100, 300, 600, 1000, 1500)
SETTINGS = {"adam-1e-3": (1e-3, 0), "adam-1e-3-warmup-2000": (1e-3, 2000), "adam-1e-4": (1e-4, 0)}
ANNEAL_STEPS = 5400  # 10 epochs of 540 steps
ANNEAL_CHECKPOINTS = (100, 300, 600, 1000, 1500, 2700, 4000, 5400)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="the validation split and batch order, and the cached dense "
                   "model of sparse_vd_fashion.py --seed N (lenet300-dense-e30-sN.pt)")
    p.add_argument("--dense", default=None, help="the dense state dict (default: the one of --seed)")
    p.add_argument("-o", "--output", default=None,
                   help="result JSON (default benchmarks/results/finetune-transient[-anneal].json)")
    p.add_argument("--anneal", action="store_true", help="only the cosine-to-zero run over 10 epochs")
    args = p.parse_args()
    if args.dense is None:
        args.dense = str(ROOT / "benchmarks" / "results" / f"lenet300-dense-e30-s{args.seed}.pt")
    if args.output is None:
        args.output = str(ROOT / "benchmarks" / "results" /
                          f"finetune-transient{'-anneal' if args.anneal else ''}.json")
    torch.set_num_threads(1)
    data = load_data("fashion-mnist", val_fraction=0.1, seed=args.seed)
    dense = lenet300()
    dense.load_state_dict(torch.load(args.dense, weights_only=True))

    def val(m: nn.Module) -> float:
        return evaluate(m.eval(), data.loader("val", 1000))["accuracy"]

    rows = {"dense": val(dense)}
    print(f"dense: validation {rows['dense']:.2f}%")
    settings = {"adam-1e-3-cosine-10-epochs": (1e-3, -1)} if args.anneal else SETTINGS
    checkpoints = ANNEAL_CHECKPOINTS if args.anneal else CHECKPOINTS
    for name, (lr, warmup) in settings.items():
        torch.manual_seed(0)
        model = copy.deepcopy(dense)
        opt = torch.optim.Adam(model.parameters(), lr=lr)

        def factor(s: int, w: int = warmup) -> float:
            if w < 0:  # cosine to zero over ANNEAL_STEPS
                return 0.5 * (1 + math.cos(math.pi * min(s, ANNEAL_STEPS) / ANNEAL_STEPS))
            return min(1.0, (s + 1) / w) if w else 1.0

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        step, curve = 0, {}
        for epoch in range(10 if args.anneal else 3):
            for x, y in data.loader("train", 100, shuffle=True, seed=args.seed, epoch=epoch):
                model.train()
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if step in checkpoints:
                    curve[step] = round(val(model), 2)
            if step >= checkpoints[-1]:
                break
        rows[name] = curve
        if args.anneal:
            rows[f"{name}-test"] = round(evaluate(model.eval(), data.loader("test", 1000))["accuracy"], 2)
            rows["dense-test"] = round(evaluate(dense.eval(), data.loader("test", 1000))["accuracy"], 2)
        print(name, curve, flush=True)
    Path(args.output).write_text(json.dumps({"command": command_line(), "machine": cpu_model(), "batch_size": 100,
                                             "validation_accuracy": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
