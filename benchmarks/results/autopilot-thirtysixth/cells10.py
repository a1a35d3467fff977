"""umodels10's networks through zoo_matrix's cells (convert, two training steps, half of every noise tensor forced
past the threshold, slim, export, onnxruntime parity), inputs (1, 8, 8).

    python benchmarks/results/autopilot-thirtysixth/cells10.py [NAME ...]

One JSON line per cell in cells10.jsonl beside this file; the cell's one-line verdict and notes printed."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(HERE)]
import umodels10  # noqa: E402
import zoo_matrix  # noqa: E402

if __name__ == "__main__":
    zoo_matrix.own_models(umodels10.MODELS, (1, 8, 8), sys.argv[1:], HERE / "cells10.jsonl")
