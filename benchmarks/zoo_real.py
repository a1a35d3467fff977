"""torchvision ResNet-18, MobileNetV2 and ShuffleNetV2 (x0.5), timm's PP-LCNet-0.5 on digits: ``sbp`` and ``sparse_vd`` with the default recipe, and Torch-Pruning.

    python benchmarks/zoo_real.py --model resnet18 --method sbp            # then torch_pruning, sparse_vd
    python benchmarks/zoo_real.py --model mobilenet_v2 --method all
    python benchmarks/zoo_real.py --model resnet18 --method sbp --smoke    # the pipeline end to end in ~1 min

Needs torchvision (``pip install torchvision``; it does not import beside the torch 2.13.0 CPU wheel, see issue 19),
and ``torch-pruning`` for its row.

Data: scikit-learn's ``digits`` (1,797 images, bundled, no download) with prunedrop's own split (``load_data("digits")``:
a fixed stratified 20% test set, 10% of the rest for validation, seed 0), each 8×8 image upscaled bilinearly to
32×32 and repeated over 3 channels, since the torchvision networks expect RGB and downsample by 32. Why digits and not
Fashion-MNIST: on this 2-core CPU (shared) a digits-sized task trains a dense ResNet-18 and compresses it in minutes;
ResNet-18 on 60,000 Fashion-MNIST images would take hours per row.

1. the dense model: ``torchvision.models.<model>(num_classes=10, weights=None)``, trained here (Adam 1e-3, cosine,
   ``--dense-epochs``, batch 100) or reused from ``benchmarks/results/zoo-real-<model>-dense-e<N>.pt``;
2. ``sbp`` / ``sparse_vd``: ``prunedrop.pipeline.compress`` with the default ``Recipe()`` (the autopilot, budget
   ``max_metric_drop`` = 1 point of validation accuracy; BatchNorms kept, noise after them, folded at export), the
   only overrides being ``method``, a fixed number of variational ``--epochs`` and ``--finetune-epochs`` (the
   automatic ones, 10,000 steps and more, do not fit the time here), and ``latency_runs`` / ``plots`` off;
3. ``torch_pruning``: ``benchmarks.structured_fashion.torch_pruning_baseline`` (``MagnitudePruner``,
   ``GroupMagnitudeImportance(p=1)``, global, the classifier left whole), pruned in rounds to the FLOPs the SBP row
   reached, trained for the SBP row's total epochs (variational + noise-free) with the recipe's lr and batch size;
4. every row: FLOPs (multiply-adds of Linear/Conv per sample; dense ``ratio`` and ``nonzero_ratio``), weights ratio,
   val/test accuracy before/after, onnxruntime CPU latency of the original and the compressed ONNX files alternated at
   batch 1 and 64 with 1 thread (``prunedrop.report.measure_latency``, the report's helper), wall time, and for the
   variational rows β at the end (``report["autopilot"]["beta_final"]``); written to
   ``benchmarks/results/zoo-real-<model>-<method>.json`` (``--smoke``: into ``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from benchmarks.machine_info import command_line  # noqa: E402
from benchmarks.structured_fashion import machine, rel, time_pair, torch_pruning_baseline  # noqa: E402
from prunedrop.atomic import atomic_torch_save, atomic_write_text  # noqa: E402
from prunedrop.data import DataBundle, load_data  # noqa: E402
from prunedrop.errors import PrunedropError  # noqa: E402
from prunedrop.export import export_onnx, verify_onnx  # noqa: E402
from prunedrop.pipeline import MODEL_ONNX, ORIGINAL_ONNX, compress  # noqa: E402
from prunedrop.recipes import Recipe  # noqa: E402
from prunedrop.report import profile_model  # noqa: E402
from prunedrop.train import evaluate  # noqa: E402

MODELS = ("resnet18", "mobilenet_v2", "shufflenet_v2_x0_5", "timm_lcnet_050")
HEADS = {"resnet18": "fc", "mobilenet_v2": "classifier.1", "shufflenet_v2_x0_5": "fc"}
METHODS = ("sbp", "torch_pruning", "sparse_vd")
RESULTS = ROOT / "benchmarks" / "results"
SIZE = 32
LATENCY_RUNS = 30


def digits_rgb(size: int = SIZE, smoke: bool = False) -> DataBundle:
    """prunedrop's digits split, each image upscaled to ``size``×``size`` and repeated over 3 channels."""
    base = load_data("digits", seed=0)

    def up(split) -> TensorDataset:
        x, y = split.tensors
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
        x, y = x.repeat(1, 3, 1, 1).contiguous(), y
        if smoke:
            x, y = x[:200], y[:200]
        return TensorDataset(x, y)

    return DataBundle(name=f"digits-rgb{size}", train=up(base.train), val=up(base.val), test=up(base.test),
                      input_shape=(3, size, size), num_classes=10)


def new_model(name: str) -> nn.Module:
    if name.startswith("timm_"):  # a timm network (its BatchNorms with their activations: BatchNormAct2d)
        import timm

        return timm.create_model(name.removeprefix("timm_"), num_classes=10, pretrained=False)
    import torchvision

    return getattr(torchvision.models, name)(num_classes=10, weights=None)


def accuracy(model: nn.Module, data: DataBundle, split: str) -> float:
    return evaluate(model.eval(), data.loader(split, 1000), device="cpu")["accuracy"]


def dense_model(name: str, data: DataBundle, epochs: int, smoke: bool) -> tuple[nn.Module, dict]:
    """The trained dense model, from its cached state dict or trained now (Adam 1e-3, cosine, batch 100)."""
    cache = RESULTS / f"zoo-real-{name}-dense-e{epochs}{'-smoke' if smoke else ''}.pt"
    torch.manual_seed(0)
    model = new_model(name)
    if cache.is_file():
        model.load_state_dict(torch.load(cache, map_location="cpu"))
        return model.eval(), {"cache": rel(cache), "trained_now": False, "epochs": epochs}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = epochs * len(data.loader("train", 100))
    step, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for x, y in data.loader("train", 100, shuffle=True, seed=0, epoch=epoch):
            for g in opt.param_groups:
                g["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        print(f"dense {name} epoch {epoch + 1}/{epochs}: val accuracy {accuracy(model, data, 'val'):.2f}% "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    atomic_torch_save(model.state_dict(), cache)
    return model.eval(), {"cache": rel(cache), "trained_now": True, "epochs": epochs,
                          "seconds": round(time.perf_counter() - t0, 1)}


def macs_and_weights(model: nn.Module, example: torch.Tensor) -> dict:
    model = model.cpu().eval()
    profiles = [p for p in profile_model(model, example[:1])
                if isinstance(model.get_submodule(p.name), (nn.Linear, nn.modules.conv._ConvNd))]
    return {"macs": sum(p.macs for p in profiles), "nonzero_macs": sum(p.nonzero_macs for p in profiles),
            "params": sum(q.numel() for q in model.parameters()),
            "nonzero_params": sum(int(torch.count_nonzero(q)) for q in model.parameters())}


def latency(run_dir: Path, example: torch.Tensor) -> dict:
    timed = time_pair(run_dir / ORIGINAL_ONNX, run_dir / MODEL_ONNX, example, LATENCY_RUNS)
    return {k: timed[k] for k in ("threads", "runs", "onnxruntime", "cpu", "measured", "b1", "b64")}


def run_variational(method: str, dense: nn.Module, data: DataBundle, args, run_dir: Path) -> dict:
    # quantize: none as the rows were measured (this script times the float32 files itself, with latency_runs 0 the
    # quantize step would have no speed check; benchmarks/quantize_resnet18.py --run quantizes a run folder)
    recipe = Recipe(method=method, epochs=args.epochs, finetune_epochs=args.finetune_epochs, quantize="none",
                    latency_runs=0, plots=False, budget_after_finetune=True if args.budget_after_finetune else None)
    if args.smoke:  # 2 epochs on 200 images cannot keep 1 point; the smoke run checks the plumbing only
        recipe = recipe.replace(max_metric_drop=100.0)
    t0 = time.perf_counter()
    try:
        result = compress(copy.deepcopy(dense), data, recipe, run_dir, progress=False, log=print)
    except PrunedropError as exc:  # e.g. over the budget: the row says so instead of a number
        return {"recipe": {"method": method, "epochs": args.epochs, "finetune_epochs": args.finetune_epochs},
                "error": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - t0, 1)}
    seconds = time.perf_counter() - t0
    report = result.report
    autopilot = report.get("autopilot") or {}
    return {
        "recipe": {"method": method, "epochs": args.epochs, "finetune_epochs": args.finetune_epochs,
                   "max_metric_drop": recipe.max_metric_drop, "automatic": recipe.automatic,
                   "note": "Recipe() defaults otherwise (latency_runs 0, plots off: timed by this script)"},
        "flops": {k: report["flops"][k] for k in ("before", "after", "nonzero_after", "ratio", "nonzero_ratio")},
        "weights": {k: report["params"][k] for k in ("before", "after", "ratio")},
        "accuracy": {"val_before": report["metric"]["before"], "val_after": report["metric"]["after"],
                     "test_before": report["test_metric"]["before"], "test_after": report["test_metric"]["after"]},
        "beta_final": autopilot.get("beta_final"),
        "autopilot": {k: v for k, v in autopilot.items() if not isinstance(v, (list, dict))},
        "kept_fraction_converted": report.get("kept_fraction_converted"),
        "kept_unit_fraction_converted": report.get("kept_unit_fraction_converted"),
        "parity_max_abs_diff": report["parity_max_abs_diff"],
        "epochs": {"variational": len({h["epoch"] for h in report["history"] if h.get("phase") == "variational"}),
                   "finetune": recipe.finetune_epochs_for(data.num_train)},
        "timings": {k: round(v, 1) for k, v in report["timings"].items()},
        "history": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in h.items()
                     if k in ("phase", "epoch", "val_accuracy", "kept_fraction", "beta", "kl_weight", "seconds")}
                    for h in report["history"]],
        "seconds": round(seconds, 1),
    }


def run_torch_pruning(dense: nn.Module, data: DataBundle, args, run_dir: Path, sbp: dict) -> dict:
    recipe = Recipe()
    epochs = int(sbp["epochs"]["variational"] + sbp["epochs"]["finetune"])
    if args.tp_epochs is not None:  # fewer than the SBP row's, to fit a time budget: the row says so
        epochs = args.tp_epochs
    target = int(sbp["flops"]["after"])
    example = data.example_batch(256)
    before = macs_and_weights(dense, example)
    val_before, test_before = accuracy(dense, data, "val"), accuracy(dense, data, "test")
    t0 = time.perf_counter()
    pruned, summary = torch_pruning_baseline(copy.deepcopy(dense), data, target_macs=target, epochs=epochs,
                                             lr=recipe.lr, batch_size=recipe.batch_size, device="cpu",
                                             head=HEADS[args.model], seed=recipe.seed)
    seconds = time.perf_counter() - t0
    run_dir.mkdir(parents=True, exist_ok=True)
    export_onnx(copy.deepcopy(dense).eval(), example[:2], run_dir / ORIGINAL_ONNX, sparse=False)
    export_onnx(pruned, example[:2], run_dir / MODEL_ONNX, sparse=False)
    after = macs_and_weights(pruned, example)
    return {
        "target_macs": target, "epochs": {"total": epochs},
        "torch_pruning": {k: v for k, v in summary.items() if k != "history"},
        "flops": {"before": before["macs"], "after": after["macs"], "ratio": before["macs"] / after["macs"]},
        "weights": {"before": before["nonzero_params"], "after": after["nonzero_params"],
                    "ratio": before["nonzero_params"] / after["nonzero_params"]},
        "accuracy": {"val_before": val_before, "val_after": accuracy(pruned, data, "val"),
                     "test_before": test_before, "test_after": accuracy(pruned, data, "test")},
        "beta_final": None,
        "parity_max_abs_diff": verify_onnx(run_dir / MODEL_ONNX, pruned, example),
        "history": summary["history"],
        "seconds": round(seconds, 1),
    }


def results_file(args, method: str) -> Path:
    name = f"zoo-real-{args.model}-{method}{'-' + args.tag if args.tag else ''}.json"
    return Path(args.out) / name if args.smoke else RESULTS / name


def markdown_table() -> str:
    """The rows written so far under ``benchmarks/results`` as a Markdown table (for BENCHMARKS.md)."""
    lines = ["| model | method | FLOPs ratio (dense / non-zero) | weights ratio | val acc before → after | test acc before → after "
             "| ORT b1 ms before → after | ORT b64 ms before → after | β end | epochs | wall |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model in MODELS:
        for method in METHODS:
            path = RESULTS / f"zoo-real-{model}-{method}.json"
            if not path.is_file():
                continue
            r = json.loads(path.read_text())
            if "error" in r:
                lines.append(f"| {model} | {method} | {r['error']} | | | | | | | | {r['seconds']:.0f} s |")
                continue
            a, lat, e = r["accuracy"], r["latency"], r["epochs"]
            epochs = f"{e['variational']} + {e['finetune']}" if "variational" in e else f"{e['total']}"
            beta = "–" if r["beta_final"] is None else f"{r['beta_final']:.3g}"
            lines.append(
                f"| {model} | {method} | {r['flops']['ratio']:.2f}× / {r['flops'].get('nonzero_ratio', r['flops']['ratio']):.2f}× "
                f"| {r['weights']['ratio']:.2f}× "
                f"| {a['val_before']:.2f} → {a['val_after']:.2f} | {a['test_before']:.2f} → {a['test_after']:.2f} "
                f"| {lat['b1']['before_ms']:.2f} → {lat['b1']['after_ms']:.2f} "
                f"| {lat['b64']['before_ms']:.1f} → {lat['b64']['after_ms']:.1f} | {beta} | {epochs} "
                f"| {r['seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, help="torchvision network (required unless --table)")
    parser.add_argument("--method", choices=(*METHODS, "all"), default="all",
                        help="row to run; torch_pruning needs the SBP row (run here or its JSON) for its FLOPs")
    parser.add_argument("--dense-epochs", type=int, default=30, help="epochs of dense training (default 30)")
    parser.add_argument("--epochs", type=lambda v: None if v == "auto" else int(v), default=30,
                        help="variational epochs (default 30), or auto: the autopilot's own count, ended early when "
                             "it settles (the default recipe's behaviour)")
    parser.add_argument("--tp-epochs", type=int, default=None,
                        help="Torch-Pruning's epochs (default: the SBP row's variational + noise-free epochs)")
    parser.add_argument("--budget-after-finetune", action="store_true",
                        help="judge the budget after the noise-free fine-tuning even on this coarse validation set "
                             "(what the default did when the ResNet-18 --epochs auto row ran)")
    parser.add_argument("--tag", default="", help="suffix of the result files (zoo-real-MODEL-METHOD-TAG.json)")
    parser.add_argument("--finetune-epochs", type=int, default=10, help="noise-free fine-tuning epochs (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", default="runs/zoo-real", help="run folders (default runs/zoo-real)")
    parser.add_argument("--smoke", action="store_true",
                        help="200 images per split, 2 epochs each phase; JSON into --out only")
    parser.add_argument("--retime", action="store_true",
                        help="time the ONNX pairs in --out of every row written so far again, one after another, "
                             "and update the rows' latency (rows run side by side time each other's load)")
    parser.add_argument("--table", action="store_true", help="print the rows written so far as a Markdown table")
    args = parser.parse_args()
    if args.table:
        print(markdown_table())
        return
    if args.retime:
        torch.set_num_threads(args.threads)
        example = digits_rgb().example_batch(256)
        for path in sorted(RESULTS.glob("zoo-real-*.json")):
            row = json.loads(path.read_text())
            run_dir = Path(args.out) / row["model"].split(".")[-1].split("(")[0] / row["method"]
            if "error" in row or not (run_dir / MODEL_ONNX).is_file():
                continue
            row["latency"] = {**latency(run_dir, example), "retimed": True}
            atomic_write_text(path, json.dumps(row, indent=1) + "\n")
            print(f"{rel(path)}: b1 {row['latency']['b1']['speedup']:.2f}x, b64 {row['latency']['b64']['speedup']:.2f}x")
        return
    if args.model is None:
        parser.error("--model is required (or --table)")
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.dense_epochs, args.epochs, args.finetune_epochs = 2, 2, 1
    data = digits_rgb(smoke=args.smoke)
    dense, dense_info = dense_model(args.model, data, args.dense_epochs, args.smoke)
    example = data.example_batch(256)
    methods = METHODS if args.method == "all" else (args.method,)
    rows: dict[str, dict] = {}
    for method in methods:
        run_dir = Path(args.out) / args.model / method
        if method == "torch_pruning":
            sbp = rows.get("sbp")
            if sbp is None:
                path = results_file(args, "sbp")
                if not path.is_file():
                    raise SystemExit(f"torch_pruning needs the SBP row's FLOPs: run --method sbp first ({rel(path)})")
                sbp = json.loads(path.read_text())
            if "error" in sbp:
                raise SystemExit(f"the SBP row failed ({sbp['error']}); no FLOPs for Torch-Pruning to match")
            row = run_torch_pruning(dense, data, args, run_dir, sbp)
        else:
            row = run_variational(method, dense, data, args, run_dir)
        if "error" not in row:
            row["latency"] = latency(run_dir, example)
        built = (f"timm.create_model({args.model.removeprefix('timm_')!r}, num_classes=10)"
                 if args.model.startswith("timm_") else f"torchvision.models.{args.model}(num_classes=10, weights=None)")
        row = {"model": built, "method": method,
               "data": {"name": data.name, "train": data.num_train, "val": len(data.val), "test": len(data.test),
                        "input_shape": list(data.input_shape)},
               "dense": dense_info, **row, "machine": machine(), "command": command_line(),
               "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        rows[method] = row
        path = results_file(args, method)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(row, indent=1) + "\n")
        a, lat = row["accuracy"], row["latency"]
        if "error" in row:
            print(f"{args.model} {method}: {row['error']} -> {rel(path)}", flush=True)
            continue
        print(f"{args.model} {method}: FLOPs {row['flops']['ratio']:.2f}x, weights {row['weights']['ratio']:.2f}x, "
              f"val {a['val_before']:.2f} -> {a['val_after']:.2f}, test {a['test_before']:.2f} -> "
              f"{a['test_after']:.2f}, b1 {lat['b1']['before_ms']:.2f} -> {lat['b1']['after_ms']:.2f} ms, "
              f"b64 {lat['b64']['before_ms']:.1f} -> {lat['b64']['after_ms']:.1f} ms, beta {row['beta_final']}, "
              f"{row['seconds']:.0f} s -> {rel(path)}", flush=True)


if __name__ == "__main__":
    main()
