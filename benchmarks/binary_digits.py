"""A one-logit binary classifier (``BCEWithLogitsLoss``) through the default recipe: scikit-learn's digits, label
"the digit is 5 or more", an MLP 64-256-128-1.

    python benchmarks/binary_digits.py

The dense model is trained here (Adam 2e-3, 40 epochs, batch 50, seed 0, binary cross-entropy; cached in
``benchmarks/results/binary-dense-mlp-e40.pt``) on the digits training split, then compressed by
``prunedrop.pipeline.compress`` with ``Recipe(loss="binary_cross_entropy")`` (what ``prunedrop compress`` chooses
for a model with one output and labels 0/1) and no latency timing, plots or Monte Carlo calibration. The test split
is never seen by the run. Result: ``benchmarks/results/binary-digits.json``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root (python benchmarks/<script>.py)

import torch
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks.common import RESULTS, write_rows
from examples.train_dense import fit_dense
from prunedrop.data import DataBundle, load_data
from prunedrop.pipeline import compress
from prunedrop.recipes import Recipe


def binary(bundle: DataBundle) -> DataBundle:
    """The same splits with the label "digit ≥ 5"."""
    def split(data):
        x, y = data.tensors
        return TensorDataset(x, (y >= 5).long())
    return DataBundle("digits ≥ 5", split(bundle.train), split(bundle.val), split(bundle.test), bundle.input_shape, 2)


def main() -> None:
    torch.set_num_threads(1)
    data = binary(load_data("digits", seed=0))
    recipe = Recipe(loss="binary_cross_entropy", latency_runs=0, plots=False, mc_samples=0)
    cache = RESULTS / "binary-dense-mlp-e40.pt"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                          nn.Linear(128, 1))
    if cache.exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
    else:
        model = fit_dense(model, data, 40, lr=2e-3, batch_size=50, log=lambda msg: None,
                          loss="binary_cross_entropy").cpu()
        torch.save(model.state_dict(), cache)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        r = compress(model.eval(), data, recipe, out, progress=False, log=lambda msg: None).report
    pilot = r.get("autopilot") or {}
    row = {"model": "mlp-64-256-128-1", "loss": recipe.loss, "budget": recipe.max_metric_drop,
           "val_before": r["metric"]["before"], "val_after": r["metric"]["after"],
           "test_before": r["test_metric"]["before"], "test_after": r["test_metric"]["after"],
           "params_ratio": r["params"]["ratio"], "variational_epochs": r.get("variational_epochs"),
           "beta_final": pilot.get("beta_final"), "threshold": r["threshold"], "wall_s": time.perf_counter() - t0}
    print(f"val {row['val_before']:.2f}→{row['val_after']:.2f} test {row['test_before']:.2f}→{row['test_after']:.2f} "
          f"params {row['params_ratio']:.1f}x β {row['beta_final']} epochs {row['variational_epochs']} "
          f"{row['wall_s']:.0f}s", flush=True)
    write_rows("binary-digits.json", [row])


if __name__ == "__main__":
    main()
