"""What plain fine-tuning does to a converged network: the autopilot's early over-budget readings, explained.

Fine-tunes the cached dense LeNet-300-100 of ``sparse_vd_fashion.py`` (Fashion-MNIST, 30 epochs) with no noise and
no KL, with Adam at 1e-3 (the recipes' weights' learning rate), 1e-3 with the linear "untuned" warm-up of Ma &
Yarats (2 / (1 − β₂) = 2,000 steps), and 1e-4, and prints the validation accuracy after 100 … 1,500 steps. Any drop
here is what the variational phase loses before β matters, and what the autopilot reads as over the budget.

    python benchmarks/finetune_transient.py   # needs benchmarks/results/lenet300-dense-e30-s0.pt (run
                                              # sparse_vd_fashion.py --model lenet300 once) and Fashion-MNIST
"""

from __future__ import annotations

import argparse
import copy
import json
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense", default=str(ROOT / "benchmarks" / "results" / "lenet300-dense-e30-s0.pt"))
    p.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" / "finetune-transient.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_data("fashion-mnist", val_fraction=0.1, seed=0)
    dense = lenet300()
    dense.load_state_dict(torch.load(args.dense, weights_only=True))

    def val(m: nn.Module) -> float:
        return evaluate(m.eval(), data.loader("val", 1000))["accuracy"]

    rows = {"dense": val(dense)}
    print(f"dense: validation {rows['dense']:.2f}%")
    for name, (lr, warmup) in SETTINGS.items():
        torch.manual_seed(0)
        model = copy.deepcopy(dense)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s, w=warmup: min(1.0, (s + 1) / w) if w else 1.0)
        step, curve = 0, {}
        for epoch in range(3):
            for x, y in data.loader("train", 100, shuffle=True, seed=0, epoch=epoch):
                model.train()
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if step in CHECKPOINTS:
                    curve[step] = round(val(model), 2)
            if step >= CHECKPOINTS[-1]:
                break
        rows[name] = curve
        print(name, curve, flush=True)
    Path(args.output).write_text(json.dumps({"command": command_line(), "machine": cpu_model(), "batch_size": 100,
                                             "validation_accuracy": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
