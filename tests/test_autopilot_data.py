"""The default path on small, odd and awkward data (benchmarks/autopilot_data.py): what failed there, kept fixed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunedrop.data import DataBundle
from prunedrop.pipeline import compress
from prunedrop.recipes import Recipe
from prunedrop.testing import fit


class _ScaledMLP(nn.Module):
    """An MLP whose output is multiplied by a constant: a careful user's model for targets of a tiny unit."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 48), nn.ReLU(), nn.Linear(48, 1))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * self.scale


def _regression(scale: float, n: int = 320, n_val: int = 80) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, :3].sum(1) + 0.5 * torch.tanh(x[:, 3]) + 0.1 * torch.randn(n, generator=g)) * scale
    t = n - n_val
    return DataBundle(train=TensorDataset(x[:t], y[:t]), val=TensorDataset(x[t:], y[t:]), test=None,
                      name=f"regression ×{scale:g}", num_classes=1, input_shape=(8,))


_QUICK_MSE = dict(loss="mse", epochs=12, batch_size=32, latency_runs=0, plots=False, mc_samples=0, device="cpu",
                  noise_lr=0.05, finetune_epochs=0, max_metric_drop=5.0, quantize="none")


def _run(scale: float, folder: Path) -> dict:
    data = _regression(scale)
    torch.manual_seed(0)
    x, y = data.train.tensors
    model = fit(_ScaledMLP(scale), x, y, 300, loss="mse").eval()
    return compress(model, data, Recipe(**_QUICK_MSE), folder, progress=False, log=lambda m: None).report


def test_an_mse_budget_prunes_the_same_whatever_the_targets_unit(tmp_path: Path) -> None:
    """The autopilot's data term is the error relative to the given model's (Pilot.data_scale): targets of scale
    1e-4 (a raw mean squared error near 1e-10) had the KL prune every weight with β at its floor ("nothing would be
    left to export"); now the same model in another unit prunes as in unit scale."""
    unit = _run(1.0, tmp_path / "unit")
    tiny = _run(1e-4, tmp_path / "tiny")
    kept = [r["autopilot"]["trajectory"][-1]["kept_fraction"] for r in (unit, tiny)]
    assert kept[1] > 0.05, kept
    assert kept[1] == pytest.approx(kept[0], abs=0.1)
    assert tiny["params"]["ratio"] == pytest.approx(unit["params"]["ratio"], rel=0.3)
    for r in (unit, tiny):  # both within their budget of 5% more error
        assert r["metric"]["after"] <= 1.05 * r["metric"]["before"]
