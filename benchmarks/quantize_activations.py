"""s8s8 against u8s8: one float32 ONNX file quantized by onnxruntime's QDQ quantizer with int8 and with uint8
activations (per-channel int8 weights, the layers and their carriers as prunedrop hands them over), timed against
the float32 file alternated in one process at batch 64, 1 thread, and evaluated on the validation split
(``prunedrop.quantize.quantize_onnx`` with each ``activations``).

    python benchmarks/quantize_activations.py RUN/model.onnx --data fashion-mnist
    .venv-zoo/bin/python benchmarks/quantize_activations.py r18.onnx --data digits-rgb32 --runs 5

``digits-rgb32`` is benchmarks/zoo_real.py's data (digits upscaled to 3×32×32; needs torchvision's env only for the
file, not here). Prints the median latency of two timings and the validation accuracy of each file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prunedrop.quantize import calibration_batches, evaluate_onnx, quantize_onnx, time_models  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("onnx_file", type=Path)
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, digits or digits-rgb32")
    p.add_argument("--runs", type=int, default=20, help="timed runs per file and timing")
    args = p.parse_args()
    if args.data == "digits-rgb32":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from zoo_real import digits_rgb

        data = digits_rgb()
    else:
        from prunedrop.data import load_data

        data = load_data(args.data, val_fraction=0.1, seed=0)
    calibration = calibration_batches(data.loader("train", 64, shuffle=True, seed=0))
    files = {"float32": args.onnx_file}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kind in (("s8s8", "int8"), ("u8s8", "uint8")):  # every layer, as quantize_onnx hands it over
            files[name] = quantize_onnx(args.onnx_file, Path(tmp) / f"{name}.onnx", calibration,
                                        activations=kind).path
        for rep in range(2):
            times = time_models(files, data.example_batch(64), batch_size=64, threads=1, runs=args.runs)
            print(f"timing {rep + 1} (ms, batch 64): " + ", ".join(f"{k} {v:.3f}" for k, v in times.items()))
        for name, path in files.items():
            print(f"{name}: validation accuracy {evaluate_onnx(path, data.loader('val', 500)):.2f}")


if __name__ == "__main__":
    main()
