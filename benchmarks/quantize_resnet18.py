"""The quantize step (``quantize: int8``: the accuracy check, the storage choice and the speed check at batch 64,
1 thread) on the dense torchvision ResNet-18 of benchmarks/zoo_real.py (digits upscaled to 3×32×32), with its wall
time: how long the speed check takes on a network of 21 weight layers, and what int8 does to its speed.

    .venv-zoo/bin/python benchmarks/quantize_resnet18.py --runs 5   # needs the cached dense model of zoo_real.py
    .venv-zoo/bin/python benchmarks/quantize_resnet18.py --runs 5 --run runs/zoo-real/resnet18/sbp  # a slim one

``--run``: quantize a zoo_real.py run folder's compressed ``model.onnx`` instead of the dense network.
Writes ``benchmarks/results/quantize-speed/resnet18-{dense|RUN's method}-int8-runs{N}.json``: the wall time, the log with the
seconds of each line, and the report's ``quantization`` section (every speed round's timings).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from zoo_real import digits_rgb, new_model  # noqa: E402

from prunedrop.export import export_onnx  # noqa: E402
from prunedrop.quantize import quantize_model  # noqa: E402
from prunedrop.recipes import Recipe  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=5, help="latency_runs: timed runs per file in each speed round")
    p.add_argument("--run", type=Path, default=None, help="a zoo_real.py run folder: quantize its model.onnx")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = digits_rgb()
    model = new_model("resnet18")
    model.load_state_dict(torch.load(ROOT / "benchmarks/results/zoo-real-resnet18-dense-e30.pt", map_location="cpu"))
    logs: list[tuple[float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        float_file = export_onnx(model.eval(), data.example_batch(2), Path(tmp) / "r18.onnx").path
        if args.run is not None:
            float_file = args.run / "model.onnx"
        t0 = time.perf_counter()

        def log(message: str) -> None:
            logs.append((round(time.perf_counter() - t0, 1), message))
            print(f"[{time.perf_counter() - t0:.0f} s] {message}", flush=True)

        section = quantize_model(float_file, Path(tmp) / "r18-int8.onnx", mode="int8", data=data,
                                 recipe=Recipe(max_metric_drop=None, latency_runs=args.runs), metric_before=None,
                                 compare={"float32": float_file}, log=log)
        wall = time.perf_counter() - t0
        float_bytes = float_file.stat().st_size
    name = "dense" if args.run is None else args.run.name
    out = ROOT / f"benchmarks/results/quantize-speed/resnet18-{name}-int8-runs{args.runs}.json"
    out.write_text(json.dumps({"command": " ".join(sys.argv), "wall_s": wall, "float32_bytes": float_bytes,
                               "quantization": section, "log": logs}, indent=1, default=str) + "\n")
    print(f"quantize step {wall:.0f} s; wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
