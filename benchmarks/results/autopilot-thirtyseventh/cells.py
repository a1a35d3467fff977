"""A script's own networks (umodels11.py or umodels12.py) through zoo_matrix's cells (convert, two training steps,
half of every noise tensor forced past the threshold, slim, export, onnxruntime parity), inputs (1, 8, 8).

    .venv-zoo/bin/python benchmarks/results/autopilot-thirtyseventh/cells.py umodels11 [NAME ...]

One JSON line per cell in cells11.jsonl (cells12.jsonl for umodels12) beside this file; each cell's verdict printed.
CELLS_DIR=FOLDER takes the module from FOLDER and writes the JSON lines there (a later session's models)."""
import importlib
import os
import sys
from pathlib import Path

HERE = Path(os.environ.get("CELLS_DIR") or Path(__file__).parent).resolve()
ROOT = Path(__file__).resolve().parent.parent.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(HERE)]
import zoo_matrix  # noqa: E402

if __name__ == "__main__":
    module = sys.argv[1]
    zoo_matrix.own_models(importlib.import_module(module).MODELS, (1, 8, 8), sys.argv[2:],
                          HERE / f"cells{module.removeprefix('umodels')}.jsonl")
