"""Time the noise-free fine-tuning step of a structured run: the masked full-size model against the slim model.

    python benchmarks/finetune_step.py runs/structured-resnet20-tied-kl30-e16 --threads 1 --steps 40

The pipeline fine-tunes the slim model where units were pruned (``prunedrop.stages.finetune_pruned``);
before, it fine-tuned the masked full-size model and slimmed afterwards. This script rebuilds both from a
``benchmarks/structured_fashion.py`` run folder (its cached dense model, BatchNorm folded, the run's
``checkpoint-variational.pt`` thresholded at the recipe's threshold) and times one training step of each (forward,
cross-entropy, backward, Adam, masks re-applied), alternated in one process on the same random batch of the recipe's
batch size, median of ``--steps`` after ``--warmup``. It writes ``benchmarks/results/finetune-step-<run>.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

import torch
from torch import nn

from benchmarks.common import ROOT, cpu_model, rel
from benchmarks.step_overhead import step_fn
from benchmarks.structured_fashion import dense_model, fold_batchnorm
from prunedrop.atomic import atomic_write_text
from prunedrop.convert import to_variational
from prunedrop.pipeline import VARIATIONAL_CHECKPOINT
from prunedrop.prune import prune
from prunedrop.recipes import Recipe
from prunedrop.slim import slim
from prunedrop.stages.pruned_finetune import masks_after_slim
from prunedrop.storage import load_checkpoint


def training_step(model: nn.Module, masks: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
    """One fine-tuning step of ``model`` as ``prunedrop.train.finetune_masked`` runs it: the plain step of
    ``step_overhead.py`` (cross-entropy, backward, Adam), then the masks applied again."""
    params = dict(model.named_parameters())
    pairs = [(params[n], m.to(params[n].dtype)) for n, m in masks.items()]
    plain, _ = step_fn(model.train(), x, y, variational=False)

    def step() -> None:
        plain()
        with torch.no_grad():
            for p, mask in pairs:
                p.mul_(mask)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a structured_fashion.py --out folder (with <method>/row.json)")
    p.add_argument("--method", default="sbp", help="the run's sub-folder (sbp or group_vd)")
    p.add_argument("--steps", type=int, default=40, help="timed steps of each model")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps of each model first")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.run_dir) / args.method
    row = json.loads((folder / "row.json").read_text())
    report = json.loads((folder / "report.json").read_text())
    recipe = Recipe.from_dict(report["recipe"])
    dense, _ = dense_model(row["model"], row["dense"]["epochs"], recipe.seed, recipe.val_fraction, "cpu",
                           data_dir=None, cache_dir=ROOT / "benchmarks" / "results", train_limit=None)
    folded, _ = fold_batchnorm(dense)
    example = torch.load(folder.parent / "example.pt", weights_only=True)
    variational = to_variational(folded, recipe, example_input=example[:2])
    variational.load_state_dict(load_checkpoint(folder / VARIATIONAL_CHECKPOINT)["model"])
    pruned = prune(variational.eval(), recipe.threshold)
    slimmed = slim(pruned.model, pruned.unit_masks, example)
    models = {"masked": (pruned.model, pruned.masks),
              "slim": (slimmed.model, masks_after_slim(slimmed.model, pruned))}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(recipe.batch_size, *example.shape[1:], generator=g)
    y = torch.randint(0, 10, (recipe.batch_size,), generator=g)
    steps = {name: training_step(m, masks, x, y) for name, (m, masks) in models.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(args.warmup + args.steps):
        for name, step in steps.items():  # alternated, so that both see the same machine state
            t0 = time.perf_counter()
            step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    result = {
        "run_dir": rel(Path(args.run_dir)), "method": args.method, "model": row["model"],
        "flops_ratio": row["flops"]["ratio"], "batch_size": recipe.batch_size, "threads": args.threads,
        "steps": args.steps, "warmup": args.warmup,
        "params": {name: sum(q.numel() for q in m.parameters()) for name, (m, _) in models.items()},
        "step_ms_median": median, "speedup": median["masked"] / median["slim"],
        "cpu": cpu_model(), "torch": torch.__version__,
        "command": "python " + " ".join([rel(Path(sys.argv[0]).resolve()), *sys.argv[1:]]),
    }
    out = ROOT / "benchmarks" / "results" / f"finetune-step-{Path(args.run_dir).name}.json"
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    print(f"{row['model']} ({row['flops']['ratio']:.2f}x fewer FLOPs), batch {recipe.batch_size}, "
          f"{args.threads} thread(s): masked full-size step {median['masked']:.1f} ms, slim step "
          f"{median['slim']:.1f} ms ({result['speedup']:.2f}x); wrote {rel(out)}")


if __name__ == "__main__":
    main()
