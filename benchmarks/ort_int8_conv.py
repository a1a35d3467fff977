"""onnxruntime's int8 convolution against its float32 one, per shape: why the slim LeNet-5's convolutions stay
float32 after quantization (issue 21).

Exports single ``Conv2d + ReLU`` layers (LeNet-5's shapes: 1-4 → 6-16 channels, 5×5 or 3×3, on 28×28; 6-16 → 11-16
channels, 5×5, on 12×12), quantizes each with onnxruntime's ``quantize_static`` (QDQ; u8s8 per-channel, u8s8
per-tensor, s8s8 per-channel; calibrated on the timed batch) and times the float32 and the three int8 files in one
process (1 thread, batch 64, best of ``--repeats`` timings of ``--runs`` runs each):

    python benchmarks/ort_int8_conv.py            # writes results/ort_int8_conv.json and prints a Markdown table
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = [(1, 6, 28, 5), (1, 8, 28, 5), (1, 16, 28, 5), (2, 6, 28, 5), (4, 6, 28, 5), (1, 6, 28, 3),
          (6, 11, 12, 5), (8, 16, 12, 5), (16, 16, 12, 5)]  # (in, out, input side, kernel)


def _time(path: Path, x: np.ndarray, runs: int, repeats: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    for _ in range(10):
        session.run(None, feed)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(runs):
            session.run(None, feed)
        best = min(best, (time.perf_counter() - start) / runs * 1e3)
    return best


def main() -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from benchmarks.machine_info import command_line, cpu_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ort_int8_conv.json")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    class Reader(CalibrationDataReader):
        def __init__(self, x: np.ndarray) -> None:
            self.items = iter([{"x": x}])

        def get_next(self):
            return next(self.items, None)

    forms = {"u8s8 per-channel": (QuantType.QUInt8, True), "u8s8 per-tensor": (QuantType.QUInt8, False),
             "s8s8 per-channel": (QuantType.QInt8, True)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cin, cout, side, k in SHAPES:
            model = nn.Sequential(nn.Conv2d(cin, cout, k), nn.ReLU()).eval()
            x = rng.random((args.batch, cin, side, side), dtype=np.float32)
            float_path = Path(tmp) / "conv.onnx"
            torch.onnx.export(model, torch.from_numpy(x), str(float_path), input_names=["x"], dynamo=False)
            row = {"in": cin, "out": cout, "side": side, "kernel": k,
                   "float32_ms": _time(float_path, x, args.runs, args.repeats)}
            for name, (act, per_channel) in forms.items():
                q_path = Path(tmp) / "conv-int8.onnx"
                quantize_static(str(float_path), str(q_path), Reader(x), quant_format=QuantFormat.QDQ,
                                per_channel=per_channel, activation_type=act, weight_type=QuantType.QInt8)
                row[f"{name}_ms"] = _time(q_path, x, args.runs, args.repeats)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.write_text(json.dumps({"command": command_line(), "cpu": cpu_model(), "onnxruntime": ort.__version__,
                                    "torch": torch.__version__, "batch": args.batch, "threads": 1, "runs": args.runs,
                                    "repeats": args.repeats, "rows": rows}, indent=1) + "\n", encoding="utf-8")
    print("\n| in → out, side, kernel | float32 ms | " + " | ".join(f"{n} ms" for n in forms) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in forms) + " |")
    for r in rows:
        print(f"| {r['in']} → {r['out']}, {r['side']}×{r['side']}, {r['kernel']}×{r['kernel']} | "
              f"{r['float32_ms']:.3f} | " + " | ".join(f"{r[f'{n}_ms']:.3f}" for n in forms) + " |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
