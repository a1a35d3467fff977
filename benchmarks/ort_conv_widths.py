"""How onnxruntime's CPU time of one convolution follows its number of output channels.

Why the slim LeNet-5 of the structured benchmark runs fewer multiply-adds than it saves time: a convolution's
time in onnxruntime is not proportional to its channels. This script exports single ``Conv2d + ReLU`` layers
of LeNet-5's two shapes (conv1: 1 → c channels, 5×5, on 28×28; conv2: k → c channels, 5×5, on 12×12) for a
range of output widths, times them alternately in one process (median of ``--runs`` rounds, 1 thread, batch 64
and 1), and writes ``results/ort_conv_widths.json`` plus a Markdown table:

    python benchmarks/ort_conv_widths.py

Two effects show: a fixed cost per layer that does not shrink with the channels (at batch 64, 28×28 and one
input channel it is most of the layer's time), and steps of output channels (onnxruntime's NCHWc layout computes
blocks of 8 channels on AVX2 and of 16 on AVX-512, so 5 channels cost what 8 or 16 do). The JSON's ``cpu`` names
the vector width of the machine it ran on.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

from benchmarks.common import ROOT, command_line, cpu_model
from prunedrop.atomic import atomic_write_text

#: (name, input channels, input height/width) of the layers timed; conv2's input is conv1's pooled output
SHAPES = {"conv1": (1, 28), "conv2": (5, 12)}
WIDTHS = (1, 4, 5, 8, 9, 12, 15, 16, 20, 24, 32, 50)


def session(cin: int, cout: int, size: int, threads: int):
    import onnxruntime as ort

    model = nn.Sequential(nn.Conv2d(cin, cout, 5), nn.ReLU()).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(1, cin, size, size), buf, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=200, help="timed rounds (each width once per round)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", type=int, nargs="+", default=[64, 1])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ort_conv_widths.json"))
    args = p.parse_args()
    import onnxruntime as ort

    rows = []
    for layer, (cin, size) in SHAPES.items():
        sessions = {c: session(cin, c, size, args.threads) for c in WIDTHS}
        for batch in args.batches:
            x = np.random.default_rng(0).random((batch, cin, size, size), dtype=np.float32)
            for s in sessions.values():  # warm-up
                s.run(None, {"x": x})
            times: dict[int, list[float]] = {c: [] for c in WIDTHS}
            for r in range(args.runs):
                order = list(WIDTHS[r % len(WIDTHS):] + WIDTHS[:r % len(WIDTHS)])
                for c in order:
                    t0 = time.perf_counter()
                    sessions[c].run(None, {"x": x})
                    times[c].append((time.perf_counter() - t0) * 1e6)
            out = (size - 4) ** 2
            for c in WIDTHS:
                rows.append({"layer": layer, "in_channels": cin, "out_channels": c, "input_size": size,
                             "batch": batch, "macs": batch * c * cin * 25 * out,
                             "median_us": statistics.median(times[c])})
    result = {"command": command_line(), "runs": args.runs, "threads": args.threads,
              "onnxruntime": ort.__version__, "torch": torch.__version__, "cpu": cpu_model(), "rows": rows}
    atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")
    for layer in SHAPES:
        for batch in args.batches:
            sel = [r for r in rows if r["layer"] == layer and r["batch"] == batch]
            print(f"\n{layer} ({sel[0]['in_channels']} → c channels, {sel[0]['input_size']}×{sel[0]['input_size']}), "
                  f"batch {batch}, µs:")
            print("| c | " + " | ".join(str(r["out_channels"]) for r in sel) + " |")
            print("| --- |" + " --- |" * len(sel))
            print("| µs | " + " | ".join(f"{r['median_us']:.0f}" for r in sel) + " |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
