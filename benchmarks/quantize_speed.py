"""Quantize a finished float32 ONNX model with prunedrop.quantize and time it beside the float32 files (issue 21).

    # a run folder of benchmarks/structured_fashion.py (original.onnx = dense float32, model.onnx = the slim one)
    python benchmarks/quantize_speed.py --run runs/qs-lenet5/sbp --mode bayes \
        --bits-from benchmarks/results/quantize-speed/structured-lenet5-sbp-bayes.json -o OUT.json
    python benchmarks/quantize_speed.py --run runs/qs-lenet5/torch_pruning --mode int8 -o OUT.json
    # a cached dense model alone (no pruned file: the dense float32 file is quantized)
    python benchmarks/quantize_speed.py --dense examples.models:lstm_fashion \
        benchmarks/results/lstm-fashion-dense-e10-s0.pt --mode int8 -o OUT.json

The float32 file is quantized exactly as ``quantize: int8|bayes`` does at the end of a run
(:func:`prunedrop.quantize.quantize_model`: onnxruntime's QDQ quantizer, the accuracy budget, the storage choice and
the speed check at batch 64, 1 thread). For comparison the same file is also quantized *without* the speed check
(every layer the posterior/operator/budget allows: what ``quantize`` did before the speed check). Then all files are
timed with onnxruntime, alternated in one process (:func:`prunedrop.report.measure_latency`), at batch 1 and 64,
``--repeats`` times, and each file's median over the repeats' medians is kept. Accuracy is onnxruntime's on the
validation split and the 10,000 test images. ``--bits-from``: a result JSON or report.json holding a
``quantization`` section whose layers carry the bits the posterior asked for (``bayes`` needs them).

The machine's load average is recorded at the start and the end: timings on a shared machine are upper bounds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from benchmarks.common import command_line, machine, rel
from prunedrop.atomic import atomic_write_text
from prunedrop.data import load_data
from prunedrop.export import export_onnx
from prunedrop.quantize import LayerBits, evaluate_onnx, quantize_model
from prunedrop.recipes import Recipe
from prunedrop.report import measure_latency

DATA = "fashion-mnist"


def bits_from(path: Path) -> dict[str, LayerBits]:
    """Layer → LayerBits from a ``quantization`` section's layer rows (``bits_needed`` None: unbounded)."""
    section = json.loads(path.read_text())["quantization"]
    out = {}
    for row in section["layers"]:
        if "units" in row and row.get("layer"):
            needed = math.inf if row.get("bits_needed") is None else float(row["bits_needed"])
            out[row["layer"]] = LayerBits(row["layer"], needed, int(row["units"]), float(row["median_spread"]))
    return out


def csr_count(float_file: Path, bits: dict[str, LayerBits], dense_file: Path) -> dict:
    """The issue's counting of a per-weight sparse model (after Louizos et al. 2017): each layer's kept weights at
    the bits the posterior asks for (ceil; 32 where it asks for more than 32 or has no posterior) plus the index
    cost of compressed sparse rows (a column index of ceil(log2(columns)) bits per kept weight and a row pointer of
    ceil(log2(kept + 1)) bits per row + 1), against 32 bits per weight of the dense file's weight layers. Biases
    are left out on both sides."""
    from onnx import numpy_helper

    from prunedrop.quantize import load_dense, weight_nodes

    def weights(path: Path) -> dict[str, np.ndarray]:
        proto = load_dense(path)
        inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
        return {wn.module: inits[wn.weight] for wn in weight_nodes(proto) if wn.weight in inits}

    dense_bits = sum(32 * w.size for w in weights(dense_file).values())
    layers, value_bits, index_bits = {}, 0, 0
    for name, w in weights(float_file).items():
        matrix = w.reshape(w.shape[0], -1)
        kept = int((matrix != 0).sum())
        lb = bits.get(name)
        b = 32 if lb is None or not math.isfinite(lb.bits) or lb.bits > 32 else int(math.ceil(lb.bits))
        col = max(1, math.ceil(math.log2(matrix.shape[1])))
        ptr = max(1, math.ceil(math.log2(kept + 1)))
        layers[name] = {"shape": list(w.shape), "kept": kept, "value_bits": b, "column_index_bits": col,
                        "row_pointer_bits": ptr}
        value_bits += kept * b
        index_bits += kept * col + (matrix.shape[0] + 1) * ptr
    float_kept_bits = sum(32 * v["kept"] for v in layers.values())
    return {"layers": layers, "dense_bits": dense_bits, "value_bits": value_bits, "index_bits": index_bits,
            "ratio_kept_float32_values_only": dense_bits / float_kept_bits,
            "ratio_float32_csr": dense_bits / (float_kept_bits + index_bits),
            "ratio_posterior_bits_csr": dense_bits / (value_bits + index_bits)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="a run folder with original.onnx (dense) and model.onnx (pruned)")
    src.add_argument("--dense", nargs=2, metavar=("ARCH", "STATE_DICT"),
                     help="module:function of the architecture and its cached trained state dict")
    p.add_argument("--mode", choices=["int8", "bayes"], required=True)
    p.add_argument("--bits-from", type=Path, default=None, help="JSON with the run's quantization section (bayes)")
    p.add_argument("--max-drop", type=float, default=None,
                   help="accuracy budget in validation points from the dense model (default: none, as the runs)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--latency-runs", type=int, default=50, help="alternated timed runs per file and batch size")
    p.add_argument("--repeats", type=int, default=3, help="timings of all files; each file keeps its median")
    p.add_argument("--csr-count", action="store_true",
                   help="also count the size as bits per kept weight plus a CSR index (per-weight sparsity)")
    p.add_argument("-o", "--output", type=Path, required=True)
    args = p.parse_args()
    if args.mode == "bayes" and args.bits_from is None:
        p.error("--mode bayes needs --bits-from (the bits the posterior asked for)")
    torch.set_num_threads(1)
    load_start = os.getloadavg()
    t0 = time.perf_counter()

    data = load_data(DATA, data_dir=args.data_dir, val_fraction=args.val_fraction, seed=args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="quantize-speed-"))
    if args.run is not None:
        dense_file, float_file = args.run / "original.onnx", args.run / "model.onnx"
        compare = {"dense_float32": dense_file, "pruned_float32": float_file}
    else:
        from prunedrop.storage import import_object

        model = import_object(args.dense[0], what="--dense")()
        model.load_state_dict(torch.load(args.dense[1], map_location="cpu", weights_only=True))
        dense_file = export_onnx(model.eval(), data.example_batch(2), tmp / "dense.onnx", sparse=False).path
        float_file, compare = dense_file, {"dense_float32": dense_file}
    recipe = Recipe(max_metric_drop=args.max_drop, latency_runs=args.latency_runs, latency_batch_sizes=[1, 64],
                    latency_threads=1, seed=args.seed, val_fraction=args.val_fraction)
    metric_before = evaluate_onnx(dense_file, data.loader("val", 1000)) if args.max_drop is not None else None
    bits = bits_from(args.bits_from) if args.bits_from else None
    out_file = tmp / "model-int8.onnx"
    section = quantize_model(float_file, out_file, mode=args.mode, data=data, recipe=recipe,
                             metric_before=metric_before, bits=bits, compare=compare, log=print)
    # the same without the speed check (what quantize did before it): accuracy budget and storage choice alike
    unchecked_file = tmp / "model-int8-unchecked.onnx"
    unchecked = quantize_model(float_file, unchecked_file, mode=args.mode, data=data, recipe=recipe,
                               metric_before=metric_before, bits=bits, speed_check=False, log=lambda m: None)
    unchecked_metrics = {"bytes": unchecked["bytes"], **unchecked.get("metric", {}),
                         "layers": {r["node"]: r["precision"] for r in unchecked["layers"]}}

    # the float files' bytes and accuracy (quantize_model measures them only beside a quantized file it wrote)
    files = section.get("files") or {
        name: {"bytes": Path(path).stat().st_size, "val": evaluate_onnx(path, data.loader("val", 1000)),
               "test": evaluate_onnx(path, data.loader("test", 1000))} for name, path in compare.items()}
    timed = {"dense_float32": dense_file}
    if args.run is not None:
        timed["pruned_float32"] = float_file
    if section["file"] is not None:
        timed["quantized"] = out_file
    if unchecked["file"] is not None:
        timed["quantized_no_speed_check"] = unchecked_file
    example = data.example_batch(64)
    repeats = []
    for _ in range(args.repeats):
        raw = measure_latency(timed, example, batch_sizes=(1, 64), threads=1, runs=args.latency_runs)
        repeats.append({(r["model"], r["batch_size"]): r["median_ms"] for r in raw["results"]})
    latency = {f"b{b}": {name: statistics.median(rep[(name, b)] for rep in repeats) for name in timed}
               for b in (1, 64)}
    counting = csr_count(float_file, bits or {}, dense_file) if args.csr_count else None
    row = {
        "command": command_line(),
        **({"csr_count": counting} if counting else {}),
        "source": rel(args.run) if args.run else {"arch": args.dense[0], "state_dict": args.dense[1]},
        "mode": args.mode,
        "quantization": section,
        "files": files,
        "no_speed_check": unchecked_metrics,
        "latency_ms": latency,
        "latency": {"batch_sizes": [1, 64], "threads": 1, "runs": args.latency_runs, "repeats": args.repeats,
                    "statistic": "median over the repeats of each repeat's median (files alternated)",
                    "per_repeat": [{f"{k[0]}@b{k[1]}": v for k, v in rep.items()} for rep in repeats]},
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "seconds": time.perf_counter() - t0,
        "machine": machine(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output, json.dumps(row, indent=1, sort_keys=True) + "\n")
    for name in timed:
        info = files.get(name, unchecked_metrics if name == "quantized_no_speed_check" else {})
        print(f"{name:26s} {info.get('bytes', 0):>10,} bytes  test {info.get('test', float('nan')):.2f}%  "
              f"b1 {latency['b1'][name]:.3f} ms  b64 {latency['b64'][name]:.3f} ms")
    if counting:
        print("CSR counting: " + ", ".join(f"{k} {v:.1f}x" for k, v in counting.items() if k.startswith("ratio")))
    print(f"wrote {rel(args.output)}")


if __name__ == "__main__":
    main()
