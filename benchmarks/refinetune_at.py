"""Fine-tune a finished sparse VD run's model again at given thresholds: one-shot from the variational model, or
nested, from a probe's fine-tuned checkpoint pruned further.

    python benchmarks/refinetune_at.py --model lenet300 --run RUN --thresholds=-0.25,-0.5 --epochs 20 -o out.json
    python benchmarks/refinetune_at.py --model lenet300 --run RUN --from 0 --thresholds=-0.25,-0.5 --epochs 10 -o ...
    python benchmarks/refinetune_at.py --model lenet300 --run RUN --from 1 --chain --thresholds=0.5,0,-0.25 ...

RUN: a run folder of ``benchmarks/sparse_vd_fashion.py`` (its ``checkpoint-variational.pt``, and with ``--from T``
its probe checkpoint ``checkpoint-masked-tT.pt``). Each threshold prunes the variational model (log α above it) and
fine-tunes what survived with the model's recipe (``--epochs``, ``--lr``), as a probe of the threshold search does.
``--from T`` starts each fine-tuning instead from the probe at T, fine-tuned already, with the weights the new
threshold prunes set to zero (log α orders the weights, so its masks nest); ``--chain`` starts each threshold from
the previous one's result, a gradual pruning led by log α. The question it answers: is an accuracy the threshold
search never reached at some count within reach of a longer or staged fine-tuning (BENCHMARKS.md, autopilot)?
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

import torch

from benchmarks.common import ROOT, command_line, machine
from benchmarks.sparse_vd_fashion import ARCHS, DATA, DEFAULT_DENSE_EPOCHS, dense_model
from prunedrop.atomic import atomic_write_text
from prunedrop.convert import to_variational
from prunedrop.data import load_data
from prunedrop.prune import prune
from prunedrop.recipes import load_recipe
from prunedrop.train import evaluate, finetune_masked


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(ARCHS), required=True)
    p.add_argument("--run", type=Path, required=True, help="the sparse VD run folder")
    p.add_argument("--thresholds", required=True, help="comma-separated log α thresholds")
    p.add_argument("--epochs", type=int, required=True, help="noise-free epochs per threshold")
    p.add_argument("--lr", type=float, default=1e-3, help="the fine-tuning's learning rate")
    p.add_argument("--from", dest="start", type=float, default=None,
                   help="start from the run's fine-tuned probe at this threshold")
    p.add_argument("--chain", action="store_true", help="each threshold from the previous one's result")
    p.add_argument("--seed", type=int, default=None, help="the run's seed (its dense model, split and batches)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("-o", "--output", required=True)
    args = p.parse_args()
    if args.chain and args.start is None:
        p.error("--chain needs --from")
    torch.set_num_threads(args.threads)
    recipe = load_recipe(ROOT / "recipes" / f"{args.model}-fashion.yaml").replace(
        finetune_lr=args.lr, finetune_epochs=args.epochs)
    if args.seed is not None:
        recipe = recipe.replace(seed=args.seed)
    dense, dense_info = dense_model(args.model, DEFAULT_DENSE_EPOCHS[args.model], recipe.seed, recipe.val_fraction)
    data = load_data(DATA, val_fraction=recipe.val_fraction, seed=recipe.seed)
    variational = to_variational(copy.deepcopy(dense), recipe)
    variational.load_state_dict(torch.load(args.run / "checkpoint-variational.pt", map_location="cpu",
                                           weights_only=False)["model"])

    def accuracy(model: torch.nn.Module, split: str) -> float:
        return evaluate(model, data.loader(split, recipe.eval_batch_size), loss=recipe.loss)["accuracy"]

    start = None
    if args.start is not None:
        start = prune(copy.deepcopy(variational), args.start).model
        saved = torch.load(args.run / f"checkpoint-masked-t{args.start:g}.pt", map_location="cpu", weights_only=False)
        start.load_state_dict(saved["model"])
        print(f"from log α > {args.start:g}: validation {accuracy(start, 'val'):.2f}%, test "
              f"{accuracy(start, 'test'):.2f}%", flush=True)
    rows = []
    for threshold in (float(t) for t in args.thresholds.split(",")):
        pruned = prune(copy.deepcopy(variational), threshold)
        model = pruned.model if start is None else copy.deepcopy(start)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, keep in pruned.masks.items():
                params[name].mul_(keep.to(params[name].dtype))
        t0 = time.perf_counter()
        result = finetune_masked(model, pruned.masks, data, recipe, progress=False)
        model.eval()
        weights = [q for n, q in model.named_parameters() if n.endswith("weight")]
        kept = sum(int(q.ne(0).sum()) for q in weights)
        row = {"threshold": threshold, "from": args.start, "epochs": args.epochs, "lr": args.lr,
               "weights_nonzero": kept, "weights_ratio": sum(q.numel() for q in weights) / kept,
               "val_curve": [h["val_accuracy"] for h in result.history if "val_accuracy" in h],
               "val_accuracy": accuracy(model, "val"), "test_accuracy": accuracy(model, "test"),
               "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"log α > {threshold:g}: {row['weights_ratio']:.1f}× ({kept:,} non-zero), validation "
              f"{row['val_accuracy']:.2f}%, test {row['test_accuracy']:.2f}% in {row['seconds']:.0f} s", flush=True)
        if args.chain:
            start = model
    out = {"model": args.model, "data": DATA, "command": command_line(), "dense": dense_info, "run": str(args.run),
           "rows": rows, "machine": machine("cpu"), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write_text(Path(args.output), json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
