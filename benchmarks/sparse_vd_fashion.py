"""Sparse VD vs gradual magnitude pruning on Fashion-MNIST (LeNet-300-100, LeNet-5-Caffe).

    python benchmarks/sparse_vd_fashion.py --model lenet300
    python benchmarks/sparse_vd_fashion.py --model lenet5 --dense-epochs 10

1. trains the dense model (``examples/train_dense.py``) or reuses its cached state dict in
   ``benchmarks/results/<model>-dense-e<N>-s<seed>.pt``;
2. compresses it with the full prunedrop pipeline (``prunedrop.pipeline.compress``) and the recipe
   ``recipes/<model>-fashion.yaml``;
3. prunes the same dense model gradually by magnitude (``benchmarks.common.magnitude_prune``: global L1, cubic
   schedule, the same total epochs) to the number of non-zero weights that sparse VD kept;
4. writes ``benchmarks/results/<model>.json`` and prints a Markdown table.

Compression is given two ways: the papers' convention (weights of the converted layers, biases excluded,
dense count / non-zero count) and over all parameters (biases included, the pipeline's report).
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

from benchmarks import common
from benchmarks.common import RESULTS, ROOT, budget_arg, command_line, machine, magnitude_prune, with_budget
from prunedrop.atomic import atomic_write_text
from prunedrop.data import load_data
from prunedrop.pipeline import compress
from prunedrop.recipes import load_recipe
from prunedrop.train import evaluate

ARCHS = {"lenet300": "examples.models:lenet300", "lenet5": "examples.models:lenet5"}
DEFAULT_DENSE_EPOCHS = {"lenet300": 30, "lenet5": 10}
DATA = "fashion-mnist"


def dense_model(model_name: str, epochs: int, seed: int, val_fraction: float) -> tuple[torch.nn.Module, dict]:
    """The trained dense model: from the cache, or trained now (and cached)."""
    return common.dense_model(ARCHS[model_name], DATA, epochs, RESULTS / f"{model_name}-dense-e{epochs}-s{seed}.pt",
                              seed=seed, val_fraction=val_fraction)


def magnitude_peer(dense: torch.nn.Module, data, recipe, *, nonzero: int, epochs: int,
                   prune_fraction: float) -> dict:
    """Gradual magnitude pruning of a copy of ``dense`` to ``nonzero`` weights over ``epochs`` (sparsity rising over
    ``prune_fraction`` of them), at the recipe's learning rate, batch size and seed: the peer's summary, with its
    ``weights_ratio``."""
    _, mag = magnitude_prune(copy.deepcopy(dense), data, target_nonzero=nonzero, epochs=epochs,
                             prune_epochs=max(1, round(epochs * prune_fraction)), lr=recipe.lr,
                             batch_size=recipe.batch_size, seed=recipe.seed)
    mag["weights_ratio"] = mag["weights_total"] / mag["weights_nonzero"]
    return mag


def converted_weight_counts(model: torch.nn.Module, names: list[str],
                            dense: torch.nn.Module | None = None) -> tuple[int, int, dict]:
    """(total, non-zero, per layer) over the weights of the named layers; biases excluded. The totals are
    ``dense``'s where given: the compressed model may be narrower (the units sparse VD emptied leave it), and its
    weights are counted against the original's."""
    total = nonzero = 0
    per_layer = {}
    for name in names:
        w = model.get_submodule(name).weight.detach()
        n = (dense if dense is not None else model).get_submodule(name).weight.numel()
        nz = int(torch.count_nonzero(w))
        per_layer[name] = {"weights": n, "nonzero": nz, "ratio": round(n / max(nz, 1), 2)}
        total += n
        nonzero += nz
    return total, nonzero, per_layer


def markdown_table(r: dict) -> str:
    svd, mag = r["sparse_vd"], r["magnitude"]
    drop = r["dense"]["test_accuracy"] - svd["test_accuracy"]
    mag_acc = f"{mag['test_accuracy']:.2f}%" if mag else "not run"
    mag_time = f" + magnitude {mag['seconds'] / 60:.0f} min" if mag else ""
    epochs = (f"dense {r['epochs']['dense']}, VD {r['epochs']['variational']} + fine-tune "
              f"{r['epochs']['finetune']}, magnitude {r['epochs']['magnitude']}")
    return ("| model | dense test acc | sparse VD: non-zero weights ratio (converted layers' weights) | "
            "all-params ratio | test acc | drop | magnitude, same ratio: test acc | epochs | wall time |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
            f"| {r['model']} | {r['dense']['test_accuracy']:.2f}% | {svd['weights_ratio']:.1f}× "
            f"({svd['weights_nonzero']:,} of {svd['weights_total']:,}) | {svd['params_ratio']:.1f}× | "
            f"{svd['test_accuracy']:.2f}% | {drop:.2f} pt | {mag_acc} | {epochs} | "
            f"sparse VD {svd['seconds'] / 60:.0f} min{mag_time} |\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(ARCHS), required=True)
    p.add_argument("--recipe", default=None, help="recipe YAML (default: recipes/<model>-fashion.yaml)")
    p.add_argument("--dense-epochs", type=int, default=None, help="dense training epochs (default: 30 / 10)")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's variational epochs")
    p.add_argument("--finetune-epochs", type=int, default=None, help="override the recipe's finetune_epochs")
    p.add_argument("--kl-warmup-epochs", type=float, default=None, help="override the recipe's warm-up")
    p.add_argument("--kl-weight", type=float, default=None, help="override the recipe's kl_weight (β)")
    p.add_argument("--max-drop", type=budget_arg, default=None,
                   help="override the recipe's max_metric_drop (budget); none = no budget (a --target alone)")
    p.add_argument("--confidence", type=float, default=None,
                   help="the recipe's budget_confidence: the budget must hold with this one-sided confidence")
    p.add_argument("--target", default=None, help="the recipe's target, e.g. params=40x")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's lr (the weights' Adam learning rate)")
    p.add_argument("--finetune-lr", type=float, default=None, help="override the recipe's finetune_lr")
    p.add_argument("--resume", action="store_true",
                   help="continue the pipeline run in --run-dir from its checkpoints (e.g. a copy of a finished "
                        "run without checkpoint-masked.pt: only the noise-free fine-tuning is redone)")
    p.add_argument("--train-limit", type=int, default=None, help="use the first n training samples (trials)")
    p.add_argument("--seed", type=int, default=None, help="override the recipe's seed: the dense model (trained and "
                   "cached per seed), the validation split, the batches and the noise")
    p.add_argument("--quantize", choices=["none", "int8", "bayes"], default=None,
                   help="override the recipe's quantize: also write model-int8.onnx (issue 21)")
    p.add_argument("--magnitude-prune-fraction", type=float, default=2 / 3,
                   help="share of the magnitude run's epochs over which sparsity rises (the rest fine-tunes)")
    p.add_argument("--skip-magnitude", action="store_true", help="sparse VD only (tuning)")
    p.add_argument("--device", default=None, help="override the recipe's device (cpu, cuda, cuda:N); the "
                   "magnitude baseline always trains on the CPU")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core box)")
    p.add_argument("--run-dir", default=None, help="prunedrop output folder (default: runs/bench-<model>)")
    p.add_argument("-o", "--output", default=None, help="result JSON (default: benchmarks/results/<model>.json)")
    args = p.parse_args()
    command = command_line()

    torch.set_num_threads(args.threads)
    recipe_path = Path(args.recipe) if args.recipe else ROOT / "recipes" / f"{args.model}-fashion.yaml"
    recipe = load_recipe(recipe_path).replace(epochs=args.epochs, finetune_epochs=args.finetune_epochs,
                                              kl_warmup_epochs=args.kl_warmup_epochs,
                                              kl_weight=args.kl_weight, finetune_lr=args.finetune_lr, lr=args.lr,
                                              train_limit=args.train_limit, device=args.device,
                                              target=args.target,
                                              budget_confidence=args.confidence,
                                              quantize=args.quantize, seed=args.seed)
    recipe = with_budget(recipe, args.max_drop)
    dense_epochs = args.dense_epochs or DEFAULT_DENSE_EPOCHS[args.model]

    dense, dense_info = dense_model(args.model, dense_epochs, recipe.seed, recipe.val_fraction)
    data = load_data(DATA, val_fraction=recipe.val_fraction, seed=recipe.seed, train_limit=recipe.train_limit)
    dense_val = evaluate(dense, data.loader("val", 1000))["accuracy"]
    dense_test = evaluate(dense, data.loader("test", 1000))["accuracy"]
    print(f"dense {args.model}: val {dense_val:.2f}%, test {dense_test:.2f}%")

    # sparse VD through the library; compress trains the weights it is given in place, hence the copy
    run_dir = Path(args.run_dir) if args.run_dir else ROOT / "runs" / f"bench-{args.model}"
    t0 = time.perf_counter()
    result = compress(copy.deepcopy(dense), data, recipe, run_dir, resume=args.resume, progress=False, log=print)
    svd_seconds = time.perf_counter() - t0
    report = result.report
    converted = report["conversion"]["converted"]
    w_total, w_nonzero, per_layer = converted_weight_counts(result.model, converted, dense)
    svd = {
        "test_accuracy": report["test_metric"]["after"],
        "test_accuracy_before": report["test_metric"]["before"],
        "val_accuracy": report["metric"]["after"] if isinstance(report.get("metric"), dict) else None,
        "weights_total": w_total,
        "weights_nonzero": w_nonzero,
        "weights_ratio": w_total / w_nonzero,
        "params_total": report["params"]["before"],
        "params_nonzero": report["params"]["after"],
        "params_ratio": report["params"]["ratio"],
        "per_layer": per_layer,
        "seconds": svd_seconds,
        "resumed": args.resume,
        "autopilot": {k: v for k, v in (report.get("autopilot") or {}).items() if k != "trajectory"} or None,
        "beta_trajectory": [(c["step"], round(c["beta"], 4)) for c in (report.get("autopilot") or {}).get(
            "trajectory", [])][::5],
        "threshold": report.get("threshold"),
        **({"quantization": report["quantization"], "latency": report.get("latency")}
           if "quantization" in report else {}),
        "val_accuracy_before": report["metric"]["before"],
        "timings": {k: round(v, 1) for k, v in report["timings"].items()},
        "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()
                     if k in ("phase", "epoch", "val_accuracy", "kept_fraction", "data_loss", "seconds")}
                    for h in report["history"]],
    }
    print(f"sparse VD: {w_total / w_nonzero:.1f}× fewer non-zero weights ({w_nonzero:,} of {w_total:,}), "
          f"all params {report['params']['ratio']:.1f}×, test {svd['test_accuracy']:.2f}% in {svd_seconds:.0f} s")

    # the epochs the run really trained (the autopilot may stop the variational phase early)
    variational_epochs = sum(1 for h in report["history"] if h.get("phase") == "variational")
    finetune_epochs = sum(1 for h in report["history"] if h.get("phase") == "masked")
    total_epochs = variational_epochs + finetune_epochs
    mag = None
    if not args.skip_magnitude:
        mag = magnitude_peer(dense, data, recipe, nonzero=w_nonzero, epochs=total_epochs,
                             prune_fraction=args.magnitude_prune_fraction)
        print(f"magnitude: {mag['weights_ratio']:.1f}×, test {mag['test_accuracy']:.2f}% "
              f"in {mag['seconds']:.0f} s")

    out = {
        "model": args.model,
        "data": DATA,
        "command": command,
        "recipe_file": str(recipe_path.resolve().relative_to(ROOT)) if recipe_path.resolve().is_relative_to(ROOT)
        else str(recipe_path),
        "recipe": {k: v for k, v in recipe.to_dict().items()
                   if k in ("epochs", "batch_size", "lr", "noise_lr", "kl_weight", "kl_warmup_epochs", "max_metric_drop",
                            "target",
                            "finetune_epochs", "finetune_lr", "threshold", "lr_schedule", "init_log_sigma2",
                            "log_alpha_clip", "val_fraction", "train_limit", "seed", "include", "exclude")},
        "epochs": {"dense": dense_epochs, "variational": variational_epochs, "finetune": finetune_epochs,
                   "magnitude": total_epochs if mag else None,
                   "magnitude_prune": mag["prune_epochs"] if mag else None},
        "dense": {"val_accuracy": dense_val, "test_accuracy": dense_test, **dense_info},
        "sparse_vd": svd,
        "magnitude": mag,
        "machine": machine(report.get("device")),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    output = Path(args.output) if args.output else RESULTS / f"{args.model}.json"
    atomic_write_text(output, json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {output}")
    print()
    print(markdown_table(out))


if __name__ == "__main__":
    main()
