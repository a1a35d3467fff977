"""What the benchmark scripts share: the machine, the command line, cached dense models and the two baselines.

- :func:`machine`: the machine a result ran on (one set of keys for every new result JSON; files written before keep
  theirs), with :func:`cpu_model` and :func:`command_line` (from ``machine_info.py``, which needs no torch);
- :func:`dense_model`: a trained dense model of ``examples.models``, from its cached state dict or trained now;
- what a result row records: :func:`architecture` (layer shapes, multiply-adds), :func:`accuracy`, :func:`tp_ops`
  (Torch-Pruning's own count) and :func:`time_pair` (onnxruntime latency of an original/compressed ONNX pair);
- :func:`record_compress`: run a ``prunedrop compress`` command and keep the report's numbers in a result JSON;
- :func:`magnitude_prune`: gradual magnitude pruning (Zhu & Gupta 2017), the unstructured baseline. Global L1
  pruning with ``torch.nn.utils.prune.global_unstructured`` over the weights of every Linear/Conv layer, following
  the cubic schedule ``s_t = s_f·(1 − (1 − t/T)^3)`` at evenly spaced steps of the first ``prune_epochs`` epochs,
  then training on at the final sparsity until ``epochs`` epochs are done. Adam, cosine learning rate over all
  steps. The target is a number of non-zero weights (the count that sparse VD kept), reached exactly at the last
  pruning step;
- :func:`torch_pruning_baseline`: Torch-Pruning's group-L1 magnitude pruning, the structured baseline.

The scripts run as ``python benchmarks/<script>.py`` from the repository root: each puts the root on ``sys.path``
in one line before its imports, then imports ``benchmarks.common``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from benchmarks.machine_info import ROOT, command_line, cpu_model
from examples.train_dense import cached_dense, train_dense
from prunedrop.atomic import atomic_write_text
from prunedrop.data import DataBundle
from prunedrop.recipes import Recipe
from prunedrop.report import measure_latency, profile_model
from prunedrop.storage import import_object
from prunedrop.train import evaluate

__all__ = ["RESULTS", "ROOT", "accuracy", "architecture", "budget_arg", "command_line", "cpu_model", "cubic_sparsity",
           "dense_model", "machine", "magnitude_prune", "prunable_weights", "rel", "time_pair", "torch_pruning_baseline",
           "tp_ops", "with_budget", "write_rows"]

#: where the result JSON files and the cached dense models go
RESULTS = ROOT / "benchmarks" / "results"


# ------------------------------------------------------------------------------------------------ machine


def budget_arg(text: str) -> float | str:
    """``--max-drop``'s value: points, or ``none`` (no budget: a target alone)."""
    return "none" if text.strip().lower() == "none" else float(text)


def with_budget(recipe: Recipe, value: float | str | None) -> Recipe:
    """``recipe`` with ``--max-drop``'s ``value`` (:func:`budget_arg`): unchanged for None, without a budget for
    ``none`` (which ``Recipe.replace`` cannot say), else that budget."""
    if value == "none":
        return recipe.nulled("max_metric_drop")
    return recipe.replace(max_metric_drop=value)


def write_rows(name: str, rows: list[dict]) -> Path:
    """``benchmarks/results/<name>``: the command, the CPU, torch's version and ``rows``; says where."""
    out = RESULTS / name
    atomic_write_text(out, json.dumps({"command": command_line(), "cpu": cpu_model(), "torch": torch.__version__,
                                       "rows": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return out


def machine(device: str | torch.device | None = None) -> dict:
    """The machine a result ran on: host, CPU (:func:`cpu_model`), cores, torch threads, torch and Python versions,
    the ``device`` trained on, and the GPU's name when that device is a CUDA one (else None)."""
    device = None if device is None else torch.device(device)
    cuda = device is not None and device.type == "cuda"
    return {"host": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": None if device is None else str(device),
            "gpu": torch.cuda.get_device_name(device) if cuda else None}


def rel(path: Path | str) -> str:
    """``path`` relative to the repository root where it lies inside it (for result JSON), else as given."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# ------------------------------------------------------------------------------------------------ dense models


def dense_model(arch: str, data: str, epochs: int, cache: Path | None, *, seed: int, val_fraction: float,
                data_dir: str | None = None, device: str = "cpu", train_limit: int | None = None,
                eval_limit: int | None = None) -> tuple[nn.Module, dict]:
    """The trained dense ``arch`` (``module:function``) on ``data``: from the state dict cached at ``cache``, or
    trained now (:func:`examples.train_dense.train_dense` on ``device``) and cached there (not cached when ``cache``
    is None). Returns the model in eval mode and what the result JSON records (``cached``, ``seconds``, ``file``)."""
    return cached_dense(lambda: import_object(arch, what="--arch")(),
                        lambda: train_dense(arch, data, epochs, seed=seed, val_fraction=val_fraction,
                                            data_dir=data_dir, train_limit=train_limit, eval_limit=eval_limit,
                                            device=device)[0],
                        epochs, cache, label=None if cache is None else rel(cache))


# ------------------------------------------------------------------------------------------------ rows


def record_compress(cmd: list[str], out: Path, keys: tuple[str, ...], result: Path, *, trajectory: bool = True
                    ) -> None:
    """Run ``cmd`` (``python -m prunedrop compress … -o out``) from the repository root, then write ``result``: the
    command lines, the machine, the wall time and the report's ``keys`` (without the autopilot's trajectory of β,
    hundreds of kilobytes that stay in the run's report.json, where ``trajectory`` is false)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - t0
    report = json.loads((out / "report.json").read_text())
    record = {"command": command_line(), "compress": " ".join(cmd[1:]), "machine": cpu_model(), "wall_s": round(wall),
              "report": {k: report.get(k) for k in keys}}
    if not trajectory and isinstance(record["report"].get("autopilot"), dict):
        record["report"]["autopilot"] = {k: v for k, v in record["report"]["autopilot"].items() if k != "trajectory"}
    atomic_write_text(result, json.dumps(record, indent=1) + "\n")
    print(f"wrote {result}", file=sys.stderr)


#: the report keys a task benchmark keeps (:func:`compress_task`)
TASK_KEYS = ("params", "flops", "onnx_bytes", "metric", "test_metric", "latency", "autopilot", "threshold",
             "per_class", "variational_epochs", "recipe")


def compress_task(name: str, arch: str, make_data: Callable[[Path], None], train: Callable[[Path], nn.Module],
                  argv: list[str] | None, description: str) -> None:
    """The command line of a benchmark of one task (``--recipe``, default none: the default command; ``--tag``):
    its data written once to ``runs/NAME.npz`` by ``make_data``, its dense model trained once by ``train`` and
    cached in ``benchmarks/results/NAME-dense.pt``, then ``prunedrop compress`` on them, recorded in
    ``benchmarks/results/NAME-TAG.json`` (:func:`record_compress`, the keys :data:`TASK_KEYS`; the autopilot's
    trajectory of β is left in the run folder's report.json)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--recipe", type=Path, default=None, help="recipe for prunedrop compress (default: none)")
    parser.add_argument("--tag", default="default", help="name of the result (default: default)")
    args = parser.parse_args(argv)
    data = ROOT / "runs" / f"{name}.npz"
    if not data.exists():
        make_data(data)
    dense = RESULTS / f"{name}-dense.pt"
    if not dense.exists():
        torch.save(train(data).state_dict(), dense)
    out = ROOT / "runs" / f"{name}-{args.tag}"
    cmd = [sys.executable, "-m", "prunedrop", "compress", rel(dense), "--arch", arch, "--data", f"npz:{rel(data)}",
           "-o", rel(out), "--overwrite", *(["--recipe", rel(args.recipe)] if args.recipe is not None else [])]
    record_compress(cmd, out, TASK_KEYS, RESULTS / f"{name}-{args.tag}.json", trajectory=False)


def architecture(model: nn.Module, example: torch.Tensor) -> dict:
    """Per Linear/Conv layer: weight shape (out, in, ...), MACs per sample; and the totals."""
    model = model.cpu().eval()
    profiles = [p for p in profile_model(model, example[:1])
                if isinstance(model.get_submodule(p.name), (nn.Linear, nn.modules.conv._ConvNd))]
    return {"layers": {p.name: {"shape": p.weight_shape, "macs": p.macs} for p in profiles},
            "widths": [p.weight_shape[0] for p in profiles],
            "macs": sum(p.macs for p in profiles),
            "params": sum(q.numel() for q in model.parameters()),
            "nonzero_params": sum(int(torch.count_nonzero(q)) for q in model.parameters())}


def accuracy(model: nn.Module, data: DataBundle, split: str, device: str) -> float:
    """Test/validation accuracy computed on ``device``; the model is left on the CPU."""
    try:
        return evaluate(model.to(device), data.loader(split, 1000), device=device)["accuracy"]
    finally:
        model.cpu()


def tp_ops(model: nn.Module, example: torch.Tensor) -> dict:
    """Torch-Pruning's own count (MACs including BatchNorm and the like, parameters), for reference."""
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model.cpu().eval(), example[:1])
    return {"macs": int(macs), "params": int(params)}


def time_pair(original: Path, compressed: Path, example: torch.Tensor, runs: int,
              quantized: Path | None = None) -> dict:
    """onnxruntime CPU latency of the two ONNX files (three with ``quantized``, the int8 file of ``--quantize``),
    alternated, batch 1 and 64, 1 thread."""
    paths = {"original": original, "compressed": compressed, **({"quantized": quantized} if quantized else {})}
    raw = measure_latency(paths, example, batch_sizes=(1, 64), threads=1, runs=runs)
    out: dict = {"threads": raw["threads"], "runs": raw["runs"], "onnxruntime": raw["onnxruntime_version"],
                 "cpu": cpu_model(), "host": socket.gethostname(),
                 "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "raw": raw["results"]}
    for b in (1, 64):
        rows = {r["model"]: r for r in raw["results"] if r["batch_size"] == b}
        out[f"b{b}"] = {"before_ms": rows["original"]["median_ms"], "after_ms": rows["compressed"]["median_ms"],
                        "speedup": rows["compressed"]["speedup"]}
        if "quantized" in rows:
            out[f"b{b}"].update(quantized_ms=rows["quantized"]["median_ms"],
                                quantized_speedup_vs_compressed=rows["compressed"]["median_ms"]
                                / rows["quantized"]["median_ms"])
    return out


# ------------------------------------------------------------------------------------------------ magnitude


PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def cubic_sparsity(step: int, final_sparsity: float, prune_steps: int) -> float:
    """Zhu & Gupta's schedule with initial sparsity 0: ``s_f·(1 − (1 − t/T)^3)``, t clipped to T."""
    t = min(step, prune_steps) / max(prune_steps, 1)
    return final_sparsity * (1.0 - (1.0 - t) ** 3)


def _pruned_count(params: list[tuple[nn.Module, str]]) -> int:
    return sum(int((getattr(m, name + "_mask") == 0).sum()) if hasattr(m, name + "_mask") else 0
               for m, name in params)


def magnitude_prune(
    model: nn.Module,
    data: DataBundle,
    *,
    target_nonzero: int,
    epochs: int,
    prune_epochs: int,
    lr: float = 1e-3,
    batch_size: int = 100,
    prune_every: int = 50,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict]:
    """Prune ``model`` (trained, modified in place) gradually to ``target_nonzero`` weights; train; return it.

    Returns the model with the pruning made permanent and a summary (non-zeros, test/val accuracy,
    seconds, the schedule used).
    """
    torch.manual_seed(seed)
    params = prunable_weights(model)
    total = sum(getattr(m, name).numel() for m, name in params)
    target_pruned = total - int(target_nonzero)
    final_sparsity = target_pruned / total
    steps_per_epoch = len(data.loader("train", batch_size, shuffle=True, seed=seed, epoch=0))
    total_steps = epochs * steps_per_epoch
    prune_steps = max(1, prune_epochs * steps_per_epoch)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps)))

    def prune_to(step: int) -> None:
        # the last pruning step lands exactly on the target, whatever the rounding on the way
        want = target_pruned if step >= prune_steps else round(cubic_sparsity(step, final_sparsity, prune_steps)
                                                                * total)
        extra = want - _pruned_count(params)
        if extra > 0:  # amount (an int) counts weights still unpruned: the container prunes only those
            # the current weights: a pruned module's `weight` attribute is only refreshed by its next forward
            scores = {(m, name): (getattr(m, name + "_orig") * getattr(m, name + "_mask")).detach()
                      if prune.is_pruned(m) else getattr(m, name).detach() for m, name in params}
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=extra,
                                      importance_scores=scores)

    t0 = time.perf_counter()
    step = 0
    history = []
    for epoch in range(epochs):
        model.train()
        te = time.perf_counter()
        for x, y in data.loader("train", batch_size, shuffle=True, seed=seed, epoch=epoch):
            if step <= prune_steps and step % prune_every == 0 or step == prune_steps:
                prune_to(step)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        if step >= prune_steps:
            prune_to(prune_steps)
        val = evaluate(model, data.loader("val", 1000))["accuracy"]
        sparsity = _pruned_count(params) / total
        history.append({"epoch": epoch + 1, "val_accuracy": round(val, 3), "sparsity": round(sparsity, 5)})
        log(f"magnitude epoch {epoch + 1}/{epochs}: sparsity {sparsity:.4f}, val accuracy {val:.2f}% "
            f"({time.perf_counter() - te:.1f} s)")
    for m, name in params:
        if prune.is_pruned(m):
            prune.remove(m, name)
    model.eval()
    nonzero = sum(int(torch.count_nonzero(getattr(m, name))) for m, name in params)
    summary = {
        "weights_total": total,
        "weights_nonzero": nonzero,
        "final_sparsity": 1.0 - nonzero / total,
        "epochs": epochs,
        "prune_epochs": prune_epochs,
        "prune_every_steps": prune_every,
        "lr": lr,
        "batch_size": batch_size,
        "val_accuracy": evaluate(model, data.loader("val", 1000))["accuracy"],
        "test_accuracy": evaluate(model, data.loader("test", 1000))["accuracy"] if data.test is not None else None,
        "seconds": time.perf_counter() - t0,
        "history": history,
    }
    return model, summary


# ------------------------------------------------------------------------------------------ torch-pruning


def torch_pruning_baseline(model: nn.Module, data: DataBundle, *, target_macs: int, epochs: int, lr: float,
                           batch_size: int, device: str, head: str, seed: int, prune_fraction: float = 0.5,
                           rounds: int = 20, max_pruning_ratio: float = 0.95,
                           log: Callable[[str], None] = print) -> tuple[nn.Module, dict]:
    """Prune ``model`` (dense, with its BatchNorms; modified) with Torch-Pruning to ``target_macs`` and train it.

    ``GroupMagnitudeImportance(p=1)`` ranks every coupled channel group (a residual stream is one group) by the
    L1 norm of all its parameters, globally; the classifier ``head`` is left whole, no layer loses more than
    ``max_pruning_ratio`` of its channels. Pruning happens in ``rounds`` rounds spread over the first
    ``prune_fraction`` of the training steps: round r prunes small steps (0.5% of the channels each) until the
    MACs are at most ``dense · (target/dense)^(r/rounds)``, so the last round lands at (just below) the target.
    The remaining steps fine-tune at the final width. Adam, cosine learning rate over all steps.
    """
    import torch_pruning as tp

    torch.manual_seed(seed)
    model = model.to(device)
    example = data.example_batch(2).to(device)

    def macs_of() -> int:
        was_training = model.training
        model.eval()  # a forward in train mode would move the BatchNorm statistics
        macs = sum(p.macs for p in profile_model(model, example[:1])
                   if isinstance(model.get_submodule(p.name), (nn.Linear, nn.modules.conv._ConvNd)))
        model.train(was_training)
        return macs

    dense_macs = macs_of()
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=1), global_pruning=True,
        pruning_ratio=0.995, iterative_steps=200, max_pruning_ratio=max_pruning_ratio,
        ignored_layers=[model.get_submodule(head)])
    steps_per_epoch = len(data.loader("train", batch_size))
    total_steps = max(1, epochs * steps_per_epoch)
    prune_steps = max(1, int(prune_fraction * total_steps))
    prune_at = {min(prune_steps, round(prune_steps * (r + 1) / rounds)) - 1: r + 1 for r in range(rounds)}

    def new_optimizer() -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=lr)

    def prune_to(round_: int) -> None:
        goal = dense_macs * (target_macs / dense_macs) ** (round_ / rounds)
        while macs_of() > goal and pruner.current_step < pruner.iterative_steps:
            pruner.step()

    opt = new_optimizer()
    t0 = time.perf_counter()
    step, history = 0, []
    for epoch in range(epochs):
        model.train()
        te = time.perf_counter()
        for x, y in data.loader("train", batch_size, shuffle=True, seed=seed, epoch=epoch):
            if step in prune_at:
                prune_to(prune_at[step])
                opt = new_optimizer()
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        val = evaluate(model, data.loader("val", 1000), device=device)["accuracy"]
        history.append({"epoch": epoch + 1, "val_accuracy": round(val, 3), "macs": macs_of()})
        log(f"torch-pruning epoch {epoch + 1}/{epochs}: MACs {macs_of():,} (target {target_macs:,}), "
            f"val accuracy {val:.2f}% ({time.perf_counter() - te:.1f} s)")
    if macs_of() > target_macs:  # fewer steps than rounds (smoke runs): prune the rest now
        prune_to(rounds)
    model = model.cpu().eval()
    summary = {
        "importance": "GroupMagnitudeImportance(p=1), global ranking",
        "rounds": rounds, "prune_fraction": prune_fraction, "pruner_steps": pruner.current_step,
        "max_pruning_ratio": max_pruning_ratio, "epochs": epochs, "lr": lr, "batch_size": batch_size,
        "seconds": time.perf_counter() - t0, "history": history,
    }
    return model, summary
