"""Experiment (thirty-second session): the noise-free fine-tuning of a pruned sparse VD LeNet-300-100 with weight
averaging (EMA, SWA), other learning rates, or RigL-style mask updates (drop the smallest kept weights, regrow the
pruned ones with the largest gradient, at a fixed count per layer), from one threshold of a finished run:

    python benchmarks/results/autopilot-thirtysecond/lenet300_finetune_variants.py --run runs/s32-t30-s0 \\
        --threshold=-0.210938 --variants cos,cos-ema,cos-swa,const-swa -o out.json
    ... --variants cos-rigl --rigl-frac 0.1 -o out.json

RUN: the run folder of ``python benchmarks/sparse_vd_fashion.py --model lenet300 --epochs 40 --finetune-epochs 20
--target params=30x --max-drop none --skip-magnitude --run-dir runs/s32-t30-s0``. Variants: ``cos`` (Adam, cosine
to zero: what a probe does), ``cos-ema`` / ``cos-swa`` (the same, the exponential / the epoch-end average of the
second half evaluated), ``const-swa`` (full rate, then half, epoch-end average of the second half), ``cos-rigl``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root

import torch

from benchmarks.common import ROOT
from benchmarks.sparse_vd_fashion import DATA, DEFAULT_DENSE_EPOCHS, dense_model
from prunedrop.convert import to_variational
from prunedrop.data import load_data
from prunedrop.metrics import data_loss
from prunedrop.prune import prune
from prunedrop.recipes import load_recipe
from prunedrop.train import evaluate


def rigl_update(pairs: list[tuple[torch.Tensor, torch.Tensor]], optimizer: torch.optim.Adam, frac: float) -> None:
    """Per layer: the ``frac`` of its kept weights with the smallest magnitude leave, as many pruned ones with the
    largest gradient come back at 0 (their Adam moments reset)."""
    with torch.no_grad():
        for weight, mask in pairs:
            active = mask.bool()
            n = int(frac * int(active.sum()))
            if n == 0 or weight.grad is None:
                continue
            drop = torch.topk(torch.where(active, weight.abs(), torch.full_like(weight, math.inf)).flatten(), n,
                              largest=False).indices
            grow_score = torch.where(active, torch.full_like(weight, -1.0), weight.grad.abs())
            grow_score.view(-1)[drop] = -1.0
            grow = torch.topk(grow_score.flatten(), n).indices
            mask.view(-1)[drop] = 0
            mask.view(-1)[grow] = 1
            weight.view(-1)[grow] = 0.0
            state = optimizer.state.get(weight)
            if state:
                state["exp_avg"].view(-1)[grow] = 0
                state["exp_avg_sq"].view(-1)[grow] = 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="lenet300")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--threshold", type=float, required=True)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variants", default="cos,cos-ema,cos-swa,const-swa")
    p.add_argument("--rigl-frac", type=float, default=0.3)
    p.add_argument("--rigl-every", type=int, default=100)
    p.add_argument("--rigl-end", type=float, default=0.75)
    p.add_argument("-o", "--output", required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(ROOT / "recipes" / f"{a.model}-fashion.yaml").replace(seed=a.seed)
    dense, _ = dense_model(a.model, DEFAULT_DENSE_EPOCHS[a.model], recipe.seed, recipe.val_fraction)
    data = load_data(DATA, val_fraction=recipe.val_fraction, seed=recipe.seed)
    variational = to_variational(copy.deepcopy(dense), recipe)
    saved = torch.load(a.run / "checkpoint-variational.pt", map_location="cpu", weights_only=False)
    variational.load_state_dict(saved["model"])

    def accuracy(model: torch.nn.Module, split: str) -> float:
        return evaluate(model, data.loader(split, recipe.eval_batch_size), loss=recipe.loss)["accuracy"]

    dense_val, dense_test = accuracy(dense, "val"), accuracy(dense, "test")
    print(f"dense val {dense_val:.2f} test {dense_test:.2f}", flush=True)
    rows = []
    for variant in a.variants.split(","):
        schedule, _, averaging = variant.partition("-")
        pruned = prune(copy.deepcopy(variational), a.threshold)
        model = pruned.model
        params = dict(model.named_parameters())
        pairs = [(params[n], k.to(params[n].dtype).clone()) for n, k in pruned.masks.items()]
        with torch.no_grad():
            for weight, mask in pairs:
                weight.mul_(mask)
        torch.manual_seed(recipe.seed)
        optimizer = torch.optim.Adam(model.parameters(), lr=a.lr)
        steps_per_epoch = len(data.loader("train", recipe.batch_size, shuffle=True, seed=recipe.seed, epoch=0))
        total = a.epochs * steps_per_epoch

        def rate(step: int, total: int = total, schedule: str = schedule) -> float:
            if schedule == "cos":
                return 0.5 * (1 + math.cos(math.pi * step / total))
            return 1.0 if step < total / 2 else 0.5

        average = copy.deepcopy(model) if averaging in ("ema", "swa") else None
        averaged, step, t0, curve = 0, 0, time.perf_counter(), []
        for epoch in range(a.epochs):
            model.train()
            for x, y in data.loader("train", recipe.batch_size, shuffle=True, seed=recipe.seed, epoch=epoch):
                for group in optimizer.param_groups:
                    group["lr"] = a.lr * rate(step)
                loss = data_loss(recipe.loss, model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if averaging == "rigl" and step % a.rigl_every == 0 and 0 < step < a.rigl_end * total:
                    rigl_update(pairs, optimizer, a.rigl_frac * 0.5 * (1 + math.cos(math.pi * step / (a.rigl_end
                                                                                                       * total))))
                optimizer.step()
                step += 1
                with torch.no_grad():
                    for weight, mask in pairs:
                        weight.mul_(mask)
                    if averaging == "ema":
                        decay = min(0.999, (1 + step) / (10 + step))
                        for e, q in zip(average.parameters(), model.parameters(), strict=True):
                            e.mul_(decay).add_(q, alpha=1 - decay)
            if averaging == "swa" and epoch >= a.epochs // 2:
                averaged += 1
                with torch.no_grad():
                    for e, q in zip(average.parameters(), model.parameters(), strict=True):
                        e.mul_((averaged - 1) / averaged).add_(q, alpha=1 / averaged)
            curve.append(round(accuracy(model.eval(), "val"), 2))
        final = (average if average is not None else model).eval()
        weights = [q for n, q in final.named_parameters() if n.endswith("weight")]
        kept = sum(int(q.ne(0).sum()) for q in weights)
        row = {"variant": variant, "ratio": sum(q.numel() for q in weights) / kept, "val": accuracy(final, "val"),
               "test": accuracy(final, "test"), "raw_val": accuracy(model, "val"), "raw_test": accuracy(model, "test"),
               "curve": curve, "s": time.perf_counter() - t0}
        row["val_drop"], row["test_drop"] = row["val"] - dense_val, row["test"] - dense_test
        rows.append(row)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items() if k != "curve"}),
              flush=True)
    out = {"dense_val": dense_val, "dense_test": dense_test, "threshold": a.threshold, "rows": rows}
    Path(a.output).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
