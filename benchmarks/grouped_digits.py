"""Grouped convolutions on a real run: a small ResNeXt-style CNN on scikit-learn's digits, compressed by sbp.

    python benchmarks/grouped_digits.py                                  # grouped (g=4) and its plain twin, seed 0
    python benchmarks/grouped_digits.py --models grouped --groups 8 --seed 1
    python benchmarks/grouped_digits.py --models grouped --set tie_grouped=false --tag untied

The CNN: a stem convolution (1→32, 3x3, BatchNorm), two residual blocks of 1x1 (32→32) → grouped 3x3 (32→32,
``groups``) → 1x1 (32→32), each with a BatchNorm, and a linear head on the averaged channels. The plain twin is the
same network with ``groups=1``. Each is trained dense here (Adam, 40 epochs, seed 0, as
``benchmarks/autopilot_small.py``; cached in ``benchmarks/results/grouped-digits-dense-*.pt``) on the ``digits``
data spec's training split (1×8×8 images), then compressed by ``prunedrop.pipeline.compress`` with
``recipes/sbp.yaml`` (the default budget of 1 validation point, no β: the autopilot chooses it), with no latency
timing, plots or Monte Carlo calibration (which do not change the model) and ``--set`` overrides.

A row records the FLOPs before→after, validation and test accuracy before→after (the test split is never seen by
the run), the wall time, and what slimming did with the pruned units: removed, or kept as exact zeros (an output unit
of the slim model whose weights and bias are all zero: a pruned unit slimming could not take out), split by the
slimming notes' reasons (``equal_count``: the grouped convolution's equal-count rule). Results:
``benchmarks/results/grouped-digits-*.json``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

import torch
from torch import nn

from benchmarks.common import RESULTS, ROOT, write_rows
from examples.train_dense import fit_dense
from prunedrop.data import load_data
from prunedrop.pipeline import compress
from prunedrop.recipes import load_recipe


class Block(nn.Module):
    """1x1 → grouped 3x3 → 1x1, BatchNorm after each, a residual addition."""

    def __init__(self, c: int, mid: int, groups: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, c, 1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return torch.relu(x + self.bn3(self.conv3(h)))


class TinyResNeXt(nn.Module):
    def __init__(self, groups: int, c: int = 32, mid: int = 32) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.block1, self.block2 = Block(c, mid, groups), Block(c, mid, groups)
        self.fc = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x.reshape(x.size(0), 1, 8, 8))))
        return self.fc(self.block2(self.block1(x)).mean(dim=(2, 3)))


def dense(name: str, groups: int, data, epochs: int) -> nn.Module:
    g = groups if name == "grouped" else 1
    cache = RESULTS / f"grouped-digits-dense-g{g}-e{epochs}.pt"
    torch.manual_seed(0)
    model = TinyResNeXt(g)
    if cache.exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model.eval()
    model = fit_dense(model, data, epochs, lr=2e-3, batch_size=50, log=lambda msg: None).cpu().eval()
    torch.save(model.state_dict(), cache)
    return model


def zero_units(model: nn.Module) -> dict[str, int]:
    """Output units of each Conv/Linear whose weights and bias are all exactly zero (pruned, kept as zeros)."""
    found = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            rows = m.weight.detach().reshape(m.weight.shape[0], -1).abs().sum(1)
            if m.bias is not None:
                rows = rows + m.bias.detach().abs()
            if int((rows == 0).sum()):
                found[name] = int((rows == 0).sum())
    return found


def kept_by_reason(notes: list[str]) -> dict[str, int]:
    """The slimming notes' kept channels, counted by reason (a note lists at most 12, then ``...``: counted as 12
    and flagged with ``+``)."""
    counts: dict[str, int] = {}
    for note in notes:
        m = re.search(r"kept pruned channel\(s\) \[([^\]]*)\]: (.*)", note)
        if not m:
            continue
        reason = "equal_count" if "keeps its groups equal in size" in m.group(2) else m.group(2)[:60]
        units = [u for u in m.group(1).split(", ") if u and u != "..."]
        key = reason + ("+" if "..." in m.group(1) else "")
        counts[key] = counts.get(key, 0) + len(units)
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["grouped", "plain"], choices=["grouped", "plain"])
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "sbp.yaml"))
    p.add_argument("--seed", type=int, default=0, help="the recipe's seed (the dense model stays seed 0's)")
    p.add_argument("--dense-epochs", type=int, default=40)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="recipe overrides (YAML values), e.g. tie_grouped=false")
    p.add_argument("--tag", default="", help="suffix of the result file")
    args = p.parse_args()
    torch.set_num_threads(1)
    import yaml

    data = load_data("digits", seed=0)
    changes = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    rows = []
    for name in args.models:
        model = dense(name, args.groups, data, args.dense_epochs)
        recipe = load_recipe(args.recipe).replace(latency_runs=0, plots=False, mc_samples=0, seed=args.seed,
                                                  **changes)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            result = compress(model, data, recipe, out, progress=False, log=lambda msg: None)
        wall = time.perf_counter() - t0
        r = result.report
        pilot = r.get("autopilot") or {}
        slim = r.get("slim") or {}
        removed = sum(before - after for before, after in (slim.get("removed") or {}).values())
        zeros = zero_units(result.model)
        row = {
            "model": name, "groups": args.groups if name == "grouped" else 1, "seed": recipe.seed,
            "budget": recipe.max_metric_drop, "overrides": changes,
            "flops_before": r["flops"]["before"], "flops_after": r["flops"]["after"],
            "flops_ratio": r["flops"]["ratio"], "nonzero_flops_ratio": r["flops"]["nonzero_ratio"],
            "params_ratio": r["params"]["ratio"],
            "val_before": r["metric"]["before"], "val_after": r["metric"]["after"],
            "test_before": r["test_metric"]["before"], "test_after": r["test_metric"]["after"],
            "beta_final": pilot.get("beta_final"), "variational_epochs": r.get("variational_epochs"),
            "removed_by_layer": slim.get("removed"), "units_removed": removed, "units_zero": sum(zeros.values()), "zero_by_layer": zeros,
            "kept_by_reason": kept_by_reason(slim.get("notes") or []),
            "tied": (r.get("conversion") or {}).get("tied"),
            "slots": [n for n in (r.get("conversion") or {}).get("notes") or [] if "tie_grouped" in n],
            "shapes": {layer["name"]: layer.get("shape_after") for layer in r.get("layers") or []},
            "notes": slim.get("notes"), "wall_s": wall,
        }
        rows.append(row)
        print(f"{name:8s} g={row['groups']} seed {row['seed']} flops {row['flops_before']}→{row['flops_after']} "
              f"({row['flops_ratio']:.2f}x) val {row['val_before']:.2f}→{row['val_after']:.2f} test "
              f"{row['test_before']:.2f}→{row['test_after']:.2f} β {row['beta_final']} removed {removed} "
              f"zeros {row['units_zero']} {zeros} {row['kept_by_reason']} {wall:.0f}s", flush=True)
    tag = f"-{args.tag}" if args.tag else ""
    write_rows(f"grouped-digits-g{args.groups}-s{args.seed}{tag}.json", rows)


if __name__ == "__main__":
    main()
