"""umodels10's networks through zoo_matrix's cells (convert, two training steps, half of every noise tensor forced
past the threshold, slim, export, onnxruntime parity), inputs (1, 8, 8).

    python benchmarks/results/autopilot-thirtysixth/cells10.py [NAME ...]

One JSON line per cell in cells10.jsonl beside this file; the cell's one-line verdict and notes printed."""
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(HERE)]
import umodels10  # noqa: E402
import zoo_matrix  # noqa: E402


def build(name: str, size: int | None = None):
    torch.manual_seed(0)
    return umodels10.MODELS[name]().eval(), (1, 8, 8)


if __name__ == "__main__":
    zoo_matrix.build_model = build
    for name in sys.argv[1:] or list(umodels10.MODELS):
        zoo_matrix.MODELS[name] = ("custom", name, {}, 8, umodels10.MODELS[name].__doc__)
        with tempfile.NamedTemporaryFile(suffix=".jsonl", delete=False) as f:
            out = Path(f.name)
        try:
            zoo_matrix.child(name, list(zoo_matrix.METHODS), 2, 0.5, 0, out)
        except Exception as e:  # noqa: BLE001 - a model the cells could not run is a finding, printed
            print(f"{name}: FAILED {type(e).__name__}: {e}", flush=True)
        for line in out.read_text().splitlines():
            cell = json.loads(line)
            print(f"{name:>18} {cell['method']:>10}: {zoo_matrix._cell_text(cell)}", flush=True)
            for note in cell.get("notes", []):
                print(f"{'':>30} note: {note[:400]}", flush=True)
            with open(HERE / "cells10.jsonl", "a") as fh:
                fh.write(json.dumps(cell) + "\n")
        out.unlink()
