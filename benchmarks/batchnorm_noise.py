"""Where structured noise sits next to a BatchNorm (recipe key ``batchnorm_noise``): after, fold, before (issue 19).

    python benchmarks/batchnorm_noise.py --model rescnn-digits
    python benchmarks/batchnorm_noise.py --model resnet20-fashion --train-limit 3000 --eval-limit 1000

A dense BatchNorm network, trained here (cached in ``benchmarks/results/``), is converted to SBP three times, once per
placement, and each copy is trained the same way: Adam (weights ``--lr``, noise ``--noise-lr``), batches of
``--batch-size``, a fixed β (``--kl-weight``, no warm-up: the first steps already see the KL's pull) for ``--steps``
steps, the same batch order and seed. Validation accuracy is measured before training, after ``--early`` steps
(the issue's "first 25 steps") and at the end (``plain``: the dense network fine-tuned the same way, no noise,
for reference); then the model is thresholded (SNR ≤ 1), slimmed
(``prunedrop.slim``) and its accuracy and FLOPs (multiply-adds per sample) measured. No noise-free fine-tuning:
the variational phase is what the placements change. One thread, CPU. Results (one entry per command,
appended): ``benchmarks/results/batchnorm-noise-<model><tag>.json``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from benchmarks.autopilot_small import SmallResCNN
from benchmarks.common import RESULTS, command_line, cpu_model, rel
from examples.models import resnet20_fashion
from examples.train_dense import cached_dense, fit_dense
from prunedrop.atomic import atomic_write_text
from prunedrop.convert import ConversionSummary, to_variational, variational_layers
from prunedrop.data import load_data
from prunedrop.prune import prune
from prunedrop.recipes import Recipe
from prunedrop.report import profile_model
from prunedrop.slim import slim
from prunedrop.train import evaluate, kl_factors

MODELS = {
    # scikit-learn digits (8x8), the autopilot benchmark's small residual CNN (its cached dense model is reused)
    "rescnn-digits": ("digits", SmallResCNN, "autopilot-dense-rescnn-e40.pt", 40, 2e-3, 50, ["fc"]),
    # Fashion-MNIST (28x28), benchmarks/structured_fashion.py's ResNet-20
    "resnet20-fashion": ("fashion-mnist", resnet20_fashion, "batchnorm-noise-dense-resnet20-e{epochs}-n{n}.pt", 3,
                         1e-3, 100, ["fc"]),
}
PLACEMENTS = ("plain", "after", "fold", "before")


def accuracy(model: nn.Module, data) -> float:
    return evaluate(model.eval(), data.loader("val", 500))["accuracy"]


def macs(model: nn.Module, example: torch.Tensor) -> int:
    return sum(p.macs for p in profile_model(model, example))


def dense_model(args, data) -> nn.Module:
    spec, factory, cache, epochs, lr, batch, _ = MODELS[args.model]
    cache = RESULTS / cache.format(epochs=epochs, n=args.train_limit)
    torch.manual_seed(0)
    model, _ = cached_dense(factory, lambda: fit_dense(factory(), data, epochs, lr=lr, batch_size=batch).cpu(),
                            epochs, cache, label=rel(cache))
    return model


def run_plain(args, dense: nn.Module, data) -> dict:
    """The reference: the dense network fine-tuned with the same optimiser, steps and batch order, no noise."""
    torch.manual_seed(args.seed)
    model = copy.deepcopy(dense)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    row = {"placement": "plain", "val_start": accuracy(model, data)}
    train_steps(args, model, opt, data, row)
    return row


def train_steps(args, model: nn.Module, opt: torch.optim.Optimizer, data, row: dict,
                penalty: Callable[[], torch.Tensor] | None = None) -> None:
    """``args.steps`` Adam steps over the shuffled training batches (the same order for every placement), the data
    term plus ``penalty()``; records the validation accuracy after ``args.early`` steps and at the end in ``row``."""
    step, epoch, t0 = 0, 0, time.perf_counter()
    while step < args.steps:
        for x, y in data.loader("train", args.batch_size, shuffle=True, seed=args.seed, epoch=epoch):
            model.train()
            loss = F.cross_entropy(model(x), y)
            if penalty is not None:
                loss = loss + penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == args.early:
                row["val_early"] = accuracy(model, data)
            if step >= args.steps:
                break
        epoch += 1
    row["train_s"] = round(time.perf_counter() - t0, 1)
    row["val_end"] = accuracy(model, data)


def run_placement(args, placement: str, dense: nn.Module, data, example: torch.Tensor) -> dict:
    if placement == "plain":
        return run_plain(args, dense, data)
    torch.manual_seed(args.seed)
    recipe = Recipe(method="sbp", batchnorm_noise=placement, exclude=MODELS[args.model][6], tie_residual=True,
                    kl_weight=args.kl_weight, max_metric_drop=None)
    summary = ConversionSummary()
    model = to_variational(copy.deepcopy(dense), recipe, summary=summary, example_input=example[:2])
    layers = list(variational_layers(model).values())
    factors = list(kl_factors(model).values())
    noise = {id(p) for layer in layers for p in layer.noise_parameters()}
    opt = torch.optim.Adam([
        {"params": [p for p in model.parameters() if id(p) not in noise], "lr": args.lr},
        {"params": [p for p in model.parameters() if id(p) in noise], "lr": args.noise_lr},
    ])
    n = data.num_train
    row = {"placement": placement, "normalised": len(summary.normalised), "folded": len(summary.folded),
           "val_start": accuracy(model, data)}
    train_steps(args, model, opt, data, row,
                penalty=lambda: args.kl_weight * sum(f * layer.kl() for f, layer in zip(factors, layers, strict=True)) / n)
    pruned = prune(model.eval())
    row["val_thresholded"] = accuracy(pruned.model, data)
    slimmed = slim(pruned.model, pruned.unit_masks, example).model
    row["val_slim"] = accuracy(slimmed, data)
    kept = sum(int(m.sum()) for m in pruned.unit_masks.values())
    total = sum(m.numel() for m in pruned.unit_masks.values())
    row["kept_units"] = f"{kept}/{total}"
    row["flops_ratio"] = round(macs(dense, example) / macs(slimmed, example), 3)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=list(MODELS), default="rescnn-digits",
                   help="the dense BatchNorm network and its data (trained here and cached on first use)")
    p.add_argument("--placements", nargs="+", choices=PLACEMENTS, default=list(PLACEMENTS),
                   help="batchnorm_noise placements to train (plain: the dense network without noise)")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist",
                   help="where the Fashion-MNIST IDX files are (ignored for digits)")
    p.add_argument("--train-limit", type=int, default=None, help="keep the first N training samples")
    p.add_argument("--eval-limit", type=int, default=None, help="validate on the first N validation samples")
    p.add_argument("--steps", type=int, default=300, help="variational training steps")
    p.add_argument("--early", type=int, default=25, help="the step after which accuracy is measured early")
    p.add_argument("--batch-size", type=int, default=100, help="training batch size")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the weights (the recipes' default)")
    p.add_argument("--noise-lr", type=float, default=1e-2, help="Adam learning rate of μ and log σ (recipes/sbp.yaml)")
    p.add_argument("--kl-weight", type=float, default=10.0, help="fixed β")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise and the batch order")
    p.add_argument("--tag", default="", help="suffix of the result file")
    args = p.parse_args()
    torch.set_num_threads(1)
    spec = MODELS[args.model][0]
    data = load_data(spec, data_dir=args.data_dir if spec != "digits" else None, seed=0, train_limit=args.train_limit)
    if args.eval_limit:
        data = dataclasses.replace(data, val=Subset(data.val, range(min(args.eval_limit, len(data.val)))))
    dense = dense_model(args, data)
    example = data.example_batch(64)
    rows = [{"placement": "dense", "val_start": accuracy(dense, data)}]
    print(rows[0], flush=True)
    for placement in args.placements:
        rows.append(run_placement(args, placement, dense, data, example))
        print(rows[-1], flush=True)
    out = RESULTS / f"batchnorm-noise-{args.model}{args.tag}.json"
    old = json.loads(out.read_text()) if out.exists() else {"runs": []}
    runs = old.get("runs", [old])  # one entry per command
    runs.append({"command": command_line(), "cpu": cpu_model(), "torch": torch.__version__,
                 "train_samples": data.num_train, "args": vars(args), "rows": rows})
    atomic_write_text(out, json.dumps({"runs": runs}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
