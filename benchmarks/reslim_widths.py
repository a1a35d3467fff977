"""Re-slim a finished structured run with widths rounded to blocks of channels, and time it in onnxruntime.

    python benchmarks/reslim_widths.py runs/structured-resnet20-kl60/sbp --model resnet20 --multiple 8

Reads the run's noise-free fine-tuned, masked model (``checkpoint-masked.pt``: plain layers, BatchNorm folded as
in ``structured_fashion.py``, pruned units exactly zero), takes as pruned every output unit of a Linear/Conv layer
(the classifier excepted) whose weights and bias are all zero, and slims it twice: as the pipeline did
(``channel_multiple`` 1) and with ``--multiple`` M (some pruned, silent channels stay so that each width is a
multiple of M). Both slim models compute the masked model's function (checked by ``slim``), so their accuracy is
the run's. Exports both to ONNX and times them against the run's ``original.onnx`` (alternated, 1 thread, batch
1 and 64, median of ``--runs``); writes ``<run>/reslim-m<M>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

import torch
from torch import nn

from benchmarks.common import architecture, cpu_model
from benchmarks.structured_fashion import ARCHS, fold_batchnorm
from prunedrop.atomic import atomic_write_text
from prunedrop.export import export_onnx
from prunedrop.pipeline import ORIGINAL_ONNX
from prunedrop.report import measure_latency
from prunedrop.slim import slim
from prunedrop.storage import import_object

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def masked_model(run: Path, model_name: str) -> nn.Module:
    model, _ = fold_batchnorm(import_object(ARCHS[model_name], what="--model")())
    state = torch.load(run / "checkpoint-masked.pt", weights_only=False)["model"]
    model.load_state_dict(state)
    return model.eval()


def zero_unit_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LAYERS)][:-1]  # not the classifier
    masks = {}
    for name, layer in layers:
        w = layer.weight.detach().flatten(1).abs().amax(dim=1)
        if layer.bias is not None:
            w = torch.maximum(w, layer.bias.detach().abs())
        masks[name] = w > 0
    return masks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a method folder of a structured run, e.g. runs/structured-resnet20-kl60/sbp")
    p.add_argument("--model", choices=sorted(ARCHS), required=True)
    p.add_argument("--multiple", type=int, default=8)
    p.add_argument("--runs", type=int, default=50)
    args = p.parse_args()
    run = Path(args.run)
    torch.manual_seed(0)
    example = torch.load(run.parent / "example.pt", weights_only=True)
    model = masked_model(run, args.model)
    masks = zero_unit_masks(model)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"original": run / ORIGINAL_ONNX}
        for multiple in (1, args.multiple):
            result = slim(model, masks, example[:4], channel_multiple=multiple)
            path = Path(tmp) / f"m{multiple}.onnx"
            export_onnx(result.model, example[:2], path, sparse=False)
            paths[f"multiple {multiple}"] = path
            rows[f"multiple {multiple}"] = {"widths": [after for _, after in result.removed.values()],
                                            "macs": architecture(result.model, example)["macs"],
                                            "max_abs_diff": result.max_abs_diff}
        dense_macs = architecture(model, example)["macs"]
        timing = measure_latency(paths, example, batch_sizes=(1, 64), threads=1, runs=args.runs)
    for r in timing["results"]:
        rows.setdefault(r["model"], {})[f"b{r['batch_size']}_ms"] = r["median_ms"]
        rows[r["model"]][f"b{r['batch_size']}_speedup"] = r["speedup"]
    out = {"command": "python " + " ".join(sys.argv), "run": str(run), "multiple": args.multiple,
           "dense_macs": dense_macs, "rows": rows, "cpu": cpu_model(), "onnxruntime": timing["onnxruntime_version"],
           "threads": 1, "runs": args.runs}
    atomic_write_text(run / f"reslim-m{args.multiple}.json", json.dumps(out, indent=1) + "\n")
    print("| model | widths | FLOPs ratio | b1 ms | b64 ms | speedup b1 | speedup b64 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        ratio = f"{dense_macs / r['macs']:.2f}×" if r.get("macs") and dense_macs else "1.00×"
        print(f"| {name} | {'-'.join(map(str, r.get('widths', []))) or '–'} | {ratio} | {r['b1_ms']:.3f} | "
              f"{r['b64_ms']:.2f} | {r['b1_speedup']:.2f}× | {r['b64_speedup']:.2f}× |")


if __name__ == "__main__":
    main()
