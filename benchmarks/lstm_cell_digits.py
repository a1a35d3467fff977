"""A hand-written loop over time steps: an ``nn.LSTMCell(64)`` (or ``nn.GRUCell``) reads the 8 rows of scikit-learn's
8x8 digits, one cell call per row, a Linear head on the last hidden state; then the default command.

    python benchmarks/lstm_cell_digits.py [--cell gru] [--epochs N]

The dense model is trained here (Adam 2e-3, cosine schedule, 40 epochs, batch 50, seed 0, on the digits training
split of ``--data digits``; cached in ``benchmarks/results/lstm-cell-digits-<cell>-dense.pt``), then compressed by
``python -m prunedrop compress DENSE --arch benchmarks.lstm_cell_digits:digits_<cell>_cell --data digits`` (the
default recipe, ``method: sparse_vd``: the cell becomes ``LSTMCellSVD`` / ``GRUCellSVD``, the head ``LinearSVD``;
``--epochs`` overrides the variational epochs). Result: ``benchmarks/results/lstm-cell-digits-<cell>.json`` (the
command, the machine, the wall time, the report's parameters, FLOPs, metrics, parity and timings).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

import torch
from torch import nn

from benchmarks.common import RESULTS, ROOT, record_compress, rel
from prunedrop.testing import TinyCellClassifier

KEYS = ("params", "flops", "layers", "onnx_bytes", "metric", "test_metric", "parity_max_abs_diff", "threshold",
        "variational_epochs", "timings", "conversion")


def digits_lstm_cell() -> nn.Module:
    """``nn.LSTMCell(8, 64)`` called once per row of an 8x8 digit, Linear(64, 10) on the last hidden state."""
    return TinyCellClassifier("lstm", in_features=8, hidden=64, num_classes=10)


def digits_gru_cell() -> nn.Module:
    """``nn.GRUCell(8, 64)`` called once per row of an 8x8 digit, Linear(64, 10) on the last hidden state."""
    return TinyCellClassifier("gru", in_features=8, hidden=64, num_classes=10)


def main(argv: list[str] | None = None) -> None:
    from examples.train_dense import fit_dense
    from prunedrop.data import load_data
    from prunedrop.metrics import evaluate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
    parser.add_argument("--epochs", type=int, default=None, help="variational epochs (default: the recipe's)")
    args = parser.parse_args(argv)
    factory = {"lstm": digits_lstm_cell, "gru": digits_gru_cell}[args.cell]
    dense = RESULTS / f"lstm-cell-digits-{args.cell}-dense.pt"
    if not dense.exists():
        data = load_data("digits", seed=0)
        torch.manual_seed(0)
        model = fit_dense(factory(), data, 40, lr=2e-3, batch_size=50, log=lambda msg: None).cpu().eval()
        print(f"dense: validation {evaluate(model, data.loader('val', 256))}", file=sys.stderr)
        torch.save(model.state_dict(), dense)
    out = ROOT / "runs" / f"lstm-cell-digits-{args.cell}"
    cmd = [sys.executable, "-m", "prunedrop", "compress", rel(dense), "--arch",
           f"benchmarks.lstm_cell_digits:{factory.__name__}", "--data", "digits", "-o", rel(out), "--overwrite",
           *(["--epochs", str(args.epochs)] if args.epochs is not None else [])]
    record_compress(cmd, out, KEYS, RESULTS / f"lstm-cell-digits-{args.cell}.json")


if __name__ == "__main__":
    main()
