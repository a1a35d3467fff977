"""The units per-weight pruning empties, removed from every zoo network (``benchmarks/zoo_matrix.py``'s models).

Sparse VD prunes single weights; where it empties a unit whole, or leaves a unit that no consumer reads, the slim
stage removes it (:func:`prunedrop.stages.slimming.remove_dead_units`). Each network is built randomly initialised,
then a seeded random quarter of the output units of every Linear/Conv layer (depthwise ones aside) gets its weights
zeroed (its bias kept: the unit outputs a constant) and a random eighth of every layer's input columns is zeroed
(units read by fewer consumers, some by none); the emptied units are removed and the slim model is compared with the
masked one on the same inputs. Writes ``benchmarks/results/zoo-dead-units.json`` and prints a Markdown table.

    .venv-zoo/bin/python benchmarks/zoo_dead_units.py [--models resnet18 vit_b_16 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo_matrix  # noqa: E402 - the zoo's models and environment, beside this file

from prunedrop.atomic import atomic_write_text  # noqa: E402
from prunedrop.report import count_parameters  # noqa: E402
from prunedrop.slim.common import WEIGHT_LAYERS, is_depthwise  # noqa: E402
from prunedrop.stages.slimming import remove_dead_units  # noqa: E402

#: the share of each layer's units emptied, and of its input columns zeroed
EMPTIED, UNREAD = 0.25, 0.125


def empty_units(model: torch.nn.Module, seed: int) -> None:
    """Zero a random :data:`EMPTIED` of every Linear/Conv layer's rows and :data:`UNREAD` of its input columns (a
    layer initialised to zeros gets random weights first, so that the output says something)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, WEIGHT_LAYERS) and not module.weight.any():  # torchvision's ViT head starts at 0
                module.weight.normal_(0.0, 0.02, generator=g)
            if isinstance(module, WEIGHT_LAYERS) and not is_depthwise(module):
                module.weight[torch.rand(module.weight.shape[0], generator=g) < EMPTIED] = 0
                if module.weight.shape[1] > 1:
                    module.weight[:, torch.rand(module.weight.shape[1], generator=g) < UNREAD] = 0


def run(name: str, seed: int) -> dict:
    torch.manual_seed(seed)
    model, shape = zoo_matrix.build_model(name)
    empty_units(model, seed)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        want = model(x)
    t0 = time.perf_counter()
    notes: list[str] = []
    slimmed = remove_dead_units(model, x[:3], lambda line: notes.append(line) if line.startswith("note") else None,
                                channel_multiple=1)
    row = {"model": name, "seconds": round(time.perf_counter() - t0, 1), "params_before": count_parameters(model)[0],
           "notes": notes}
    if slimmed is None:
        return {**row, "removed": None}
    with torch.no_grad():
        got = slimmed.model(x)
    units = [(a, b) for a, b in slimmed.removed.values()]
    return {**row, "params_after": count_parameters(slimmed.model)[0],
            "units_before": sum(a for a, _ in units), "units_after": sum(b for _, b in units),
            "max_abs_diff": float((got - want).abs().max()), "scale": float(want.abs().max()),
            "slim_notes": slimmed.notes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=list(zoo_matrix.MODELS), default=list(zoo_matrix.MODELS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=zoo_matrix.ROOT / "benchmarks" / "results" / "zoo-dead-units.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    print("| model | units (masked layers) | parameters | max abs diff (output scale) | seconds |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.models:
        row = run(name, args.seed)
        rows.append(row)
        if row.get("units_before") is None:
            print(f"| {name} | none removed {row['notes'][:1]} | – | – | {row['seconds']} |", flush=True)
            continue
        print(f"| {name} | {row['units_before']:,} → {row['units_after']:,} | {row['params_before'] / 1e6:.1f}M → "
              f"{row['params_after'] / 1e6:.1f}M | {row['max_abs_diff']:.1e} ({row['scale']:.1e}) | "
              f"{row['seconds']} |", flush=True)
    atomic_write_text(args.json, json.dumps({"command": " ".join(sys.argv), "environment": zoo_matrix._versions(),
                                             "emptied": EMPTIED, "unread": UNREAD, "rows": rows}, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
