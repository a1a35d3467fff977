"""One-logit binary classifiers (``loss: binary_cross_entropy``, as trained with ``BCEWithLogitsLoss``): the loss,
the accuracy and the calibration read the one logit as the two-class logits ``[0, z]``; ``prunedrop compress``
chooses the loss by itself for a model with one output and labels 0 and 1 (it refused such a model)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch.utils.data import DataLoader, TensorDataset

from prunedrop.cli import cli
from prunedrop.metrics import TwoClassLogits, class_logits, data_loss, evaluate, sample_scores
from prunedrop.testing import QUICK_RECIPE, TinyMLP, fit
from prunedrop.uncertainty import calibration_summary

ARCH_MODULE = "binarch_mlp"


def _binary_data(n: int = 200, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].sum(1) > 0).long()
    return x, y


def test_the_one_logit_reads_as_two_class_logits() -> None:
    z = torch.tensor([[2.0], [-1.0], [0.5], [-3.0]])
    y = torch.tensor([1, 1, 0, 0])
    two = class_logits(z, "binary_cross_entropy")
    assert two.shape == (4, 2) and torch.equal(two[:, 0], torch.zeros(4))
    # the two-class cross-entropy of [0, z] is the binary cross-entropy of z, and its softmax is [1 - σ, σ]
    bce = F.binary_cross_entropy_with_logits(z[:, 0], y.float())
    torch.testing.assert_close(data_loss("binary_cross_entropy", z, y), bce)
    torch.testing.assert_close(F.cross_entropy(two, y), bce)
    torch.testing.assert_close(two.softmax(1)[:, 1], torch.sigmoid(z[:, 0]))
    assert class_logits(z, "cross_entropy") is z

    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.zero_()
    loader = DataLoader(TensorDataset(z, y), batch_size=3)
    result = evaluate(model, loader, loss="binary_cross_entropy")
    assert result["accuracy"] == 50.0  # z > 0 is class 1: right on the first and the last
    assert result["loss"] == pytest.approx(float(bce))
    assert sample_scores(model, loader, loss="binary_cross_entropy").tolist() == [100.0, 0.0, 0.0, 100.0]
    summary = calibration_summary(TwoClassLogits(model), loader)
    assert summary["accuracy"] == 50.0 and summary["n"] == 4


def test_evaluate_onnx_reads_the_one_logit(tmp_path: Path) -> None:
    from prunedrop.export import export_onnx
    from prunedrop.quantize import evaluate_onnx

    torch.manual_seed(0)
    x, y = _binary_data(64)
    model = fit(TinyMLP(16, (8,), 1), x, y, 100, loss="binary_cross_entropy").eval()
    path = export_onnx(model, x[:2], tmp_path / "m.onnx").path
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    expected = evaluate(model, loader, loss="binary_cross_entropy")["accuracy"]
    assert 60.0 < expected
    assert evaluate_onnx(path, loader, loss="binary_cross_entropy") == expected


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"{ARCH_MODULE}.py").write_text(
        "from prunedrop.testing import TinyMLP\n\n\ndef build():\n    return TinyMLP(16, (24, 12), 1)\n")
    (tmp_path / "quick.yaml").write_text(QUICK_RECIPE)
    x, y = _binary_data(240)
    np.savez(tmp_path / "data.npz", x_train=x[:160].numpy(), y_train=y[:160].numpy(), x_val=x[160:].numpy(),
             y_val=y[160:].numpy())
    torch.manual_seed(0)
    torch.save(fit(TinyMLP(16, (24, 12), 1), x[:160], y[:160], 200, loss="binary_cross_entropy").state_dict(),
               tmp_path / "model.pt")
    yield tmp_path
    sys.modules.pop(ARCH_MODULE, None)


def test_compress_a_one_logit_binary_classifier_end_to_end(folder: Path) -> None:
    """It was refused ("a one-logit binary classifier, which prunedrop does not train")."""
    args = ["compress", "model.pt", "--arch", f"{ARCH_MODULE}:build", "--data", "npz:data.npz", "--recipe",
            "quick.yaml", "-o", "out"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "a one-logit binary classifier, trained with binary cross-entropy" in result.output
    report = json.loads((folder / "out" / "report.json").read_text())
    assert report["recipe"]["loss"] == "binary_cross_entropy"
    assert report["metric"]["name"] == "accuracy"
    assert report["metric"]["before"] > 80.0  # the logit read as a classifier, not a 0-loss single class
    assert report["metric"]["before"] - report["metric"]["after"] <= 5.0
    assert report["params"]["after"] < report["params"]["before"]
    assert report["parity_max_abs_diff"] <= 1e-4
    run = json.loads((folder / "out" / "run.json").read_text())
    assert run["recipe"]["loss"] == "binary_cross_entropy"
    again = CliRunner().invoke(cli, ["export", "out", "--threshold", "2", "-o", "again.onnx"])
    assert again.exit_code == 0, again.output
    assert "accuracy" in again.output
    # the same command resumes: the loss the run chose is not read as a changed recipe
    resumed = CliRunner().invoke(cli, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output


SQUEEZED = '''\
import torch
from prunedrop.testing import TinyMLP


class Squeezed(TinyMLP):
    """returns (batch,): the one logit with its last axis squeezed, as many BCEWithLogitsLoss models do"""

    def forward(self, x):
        return super().forward(x).squeeze(-1)


def build():
    return Squeezed(16, (24, 12), 1)
'''


def test_a_one_logit_classifier_that_squeezes_its_output_to_one_axis(folder: Path) -> None:
    """A (batch,) output was refused ("the model must return a (batch, classes) tensor"), and read as a (batch, 1)
    logit it failed inside the accuracy."""
    (folder / "squeezed_arch.py").write_text(SQUEEZED)
    try:
        result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "squeezed_arch:build", "--data",
                                          "npz:data.npz", "--recipe", "quick.yaml", "-o", "out"])
    finally:
        sys.modules.pop("squeezed_arch", None)
    assert result.exit_code == 0, result.output
    report = json.loads((folder / "out" / "report.json").read_text())
    assert report["recipe"]["loss"] == "binary_cross_entropy"
    assert report["metric"]["before"] > 80.0
    assert report["metric"]["before"] - report["metric"]["after"] <= 5.0
    assert report["parity_max_abs_diff"] <= 1e-4
    z = torch.tensor([2.0, -1.0])
    assert class_logits(z, "binary_cross_entropy").tolist() == [[0.0, 2.0], [0.0, -1.0]]
