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


def test_a_budget_judged_on_too_few_validation_samples_says_so_even_where_none_changed() -> None:
    """20 validation images weigh 5 points each: a run that lost none has a standard error of 0, and the budget line
    (which needs one) said nothing, as though a 1-point budget had been seen to hold."""
    from prunedrop.stages.reporting import coarse_budget_line

    line = coarse_budget_line(Recipe(), 95.0, 95.0, 20)
    assert line is not None and "judged on 20 samples" in line and "weighs 5 points" in line
    assert "no validation sample lost on balance" in line
    assert "at most 1 validation sample" in coarse_budget_line(Recipe(), 95.0, 94.0, 150)
    assert coarse_budget_line(Recipe(), 95.0, 95.0, 300) is None  # one weighs 0.33, at most half the budget
    assert coarse_budget_line(Recipe(loss="mse"), 1.0, 1.0, 20) is None  # no sample has a weight of its own
    assert coarse_budget_line(Recipe(max_metric_drop=None, kl_weight=1.0), 95.0, 95.0, 20) is None


def test_the_budget_line_says_where_the_change_is_measured_more_coarsely_than_the_budget() -> None:
    """89 diabetes rows measure an mse change to about ±2.8% of the error: a 1% budget kept on them is not seen."""
    from prunedrop.stages.reporting import budget_line

    coarse = budget_line(Recipe(loss="mse"), 3070.0, 3089.0, 85.0, 0.56)
    assert "measures the change only to ±2.8%, more than the budget itself" in coarse
    assert "only to" not in budget_line(Recipe(), 95.0, 94.5, 0.3, 0.9)
    assert "only to ±1.4, more than the budget" in budget_line(Recipe(), 95.0, 95.0, 1.4, 0.76)


def test_the_run_logs_and_records_the_resolution_of_a_coarse_validation_split(tmp_path: Path) -> None:
    data = _classes(n=120, n_val=20)
    torch.manual_seed(0)
    x, y = data.train.tensors
    model = fit(nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3)), x, y, 200).eval()
    lines: list[str] = []
    report = compress(model, data, Recipe(**{**_QUICK_MSE, "loss": "cross_entropy", "max_metric_drop": 1.0}),
                      tmp_path, progress=False, log=lines.append).report
    assert report["data"]["num_val"] == 20 and report["metric"]["budget_resolution"] == 5.0
    assert any(line.startswith("budget: ") and "judged on 20 samples" in line for line in lines), lines[-5:]
    # the checks while training borrowed the 100 training samples: one of the 120 they count is no validation sample
    assert any("one check sample weighs 0.83 points" in line for line in lines), lines
    assert not any("one validation sample weighs" in line for line in lines)


def _classes(n: int, n_val: int) -> DataBundle:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    t = n - n_val
    return DataBundle(train=TensorDataset(x[:t], y[:t]), val=TensorDataset(x[t:], y[t:]), test=None,
                      name="three classes", num_classes=3, input_shape=(8,))


def test_a_class_with_no_validation_sample_is_named_before_training(tmp_path: Path) -> None:
    """A four-class set whose fourth class was left out of validation: the budget cannot see it, and nothing said so."""
    from prunedrop.metrics import absent_class_note
    from prunedrop.stages.baseline import measure_before_files

    x = torch.zeros(12, 8)
    y = torch.tensor([0, 1, 2, 3] * 3)
    note = absent_class_note(TensorDataset(x, y), TensorDataset(x[:3], y[:3]), TensorDataset(x[:4], y[:4]))
    assert note is not None and note.startswith("class 3 (3 training, 1 test samples) of the training data has no "
                                                "validation sample")
    assert absent_class_note(TensorDataset(x, y), TensorDataset(x[:4], y[:4])) is None
    # labels never used by any split (a model with 8 outputs for the classes {0, 3, 7}) are not absent
    sparse = torch.tensor([0, 3, 7] * 4)
    assert absent_class_note(TensorDataset(x, sparse), TensorDataset(x[:3], sparse[:3])) is None
    assert absent_class_note(TensorDataset(x, y.float()), TensorDataset(x[:3], y[:3].float())) is None  # mse targets

    data = _classes(n=200, n_val=60)
    xv, yv = data.val.tensors
    data = DataBundle(train=data.train, val=TensorDataset(xv[yv != 2], yv[yv != 2]), test=None, name="no 2 in val",
                      num_classes=3, input_shape=(8,))
    model = nn.Sequential(nn.Linear(8, 3)).eval()
    measured = measure_before_files(model, data, Recipe(device="cpu"))
    try:
        assert any(n.startswith("class 2 (") and "no validation sample" in n for n in measured.notes), measured.notes
    finally:
        measured.discard()


def test_an_mse_run_on_a_small_validation_split_borrows_training_rows_for_its_checks(tmp_path: Path) -> None:
    """The relative error of 80 validation rows moves by more than a 1% budget's aim between checks: the checks also
    count training rows (the budget is still judged on validation data alone)."""
    lines: list[str] = []
    data = _regression(1.0)
    torch.manual_seed(0)
    x, y = data.train.tensors
    model = fit(_ScaledMLP(1.0), x, y, 300, loss="mse").eval()
    report = compress(model, data, Recipe(**{**_QUICK_MSE, "epochs": 2}), tmp_path, progress=False,
                      log=lines.append).report
    assert report["autopilot"]["check_samples"] == {"validation": 80, "training": 240}
    assert any("the 80 validation samples are fewer than" in line and "240 training samples" in line
               for line in lines), lines
    assert report["sweep"]["selected_on"] == "val"
