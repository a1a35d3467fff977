"""timm networks by name through zoo_matrix's cells at 64x64 (as zoo_sweep.py runs them), e.g. the anti-aliased ones:

    .venv-zoo/bin/python benchmarks/results/autopilot-thirtyseventh/cells_timm.py resnetaa34d [NAME ...]

One JSON line per cell in cells-timm.jsonl beside this file."""
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import timm  # noqa: E402
import zoo_matrix  # noqa: E402

if __name__ == "__main__":
    models = {name: (lambda name=name: timm.create_model(name, pretrained=False, num_classes=10))
              for name in sys.argv[1:]}
    for name, make in models.items():
        make.__doc__ = f"timm {name}"
    zoo_matrix.own_models(models, (3, 64, 64), list(models), HERE / "cells-timm.jsonl")
