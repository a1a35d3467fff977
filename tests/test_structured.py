"""Structured methods end to end: per-unit noise prunes whole neurons, and the exported model is smaller."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from prunedrop.cli import cli
from prunedrop.export import run_onnx
from prunedrop.storage import load_saved_model
from prunedrop.testing import tiny_classification_data, write_tiny_project

RECIPE = """\
# per-unit noise on the hidden layers; the head keeps its classes
method: {method}
exclude: ["net.5"]
epochs: 10
batch_size: 16
lr: 0.003
noise_lr: {noise_lr}
lr_schedule: constant
kl_weight: {kl_weight}
kl_warmup_epochs: 1
max_metric_drop: null
finetune_epochs: 1
latency_runs: 3
mc_samples: 4
device: cpu
"""


def _compress_with_half_of_net1_dead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recipe: str) -> dict:
    """``prunedrop compress`` of the tiny project with half of the first hidden layer dead (zero rows and bias: its
    ReLU outputs 0): no data term holds those units, so the KL alone decides. Returns the report."""
    write_tiny_project(tmp_path, recipe=recipe)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    state["net.1.weight"][::2] = 0
    state["net.1.bias"][::2] = 0
    torch.save(state, tmp_path / "model.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz",
                                      "--recipe", "recipe.yaml", "-o", "out"])
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / "out" / "report.json").read_text())


@pytest.mark.parametrize(("method", "noise_lr", "kl_weight"), [("group_vd", 0.3, 5.0), ("sbp", 0.1, 2.0)])
def test_dead_units_are_pruned_and_removed_physically(method: str, noise_lr: float, kl_weight: float,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = _compress_with_half_of_net1_dead(
        tmp_path, monkeypatch, RECIPE.format(method=method, noise_lr=noise_lr, kl_weight=kl_weight))
    layers = {row["name"]: row for row in report["layers"]}
    hidden_after = layers["net.1"]["shape_after"][0]
    assert hidden_after <= 12, layers["net.1"]
    assert layers["net.3"]["shape_after"][1] == hidden_after
    assert report["flops"]["after"] < report["flops"]["before"]
    assert report["params"]["total_after"] < report["params"]["total_before"]
    assert report["slim"]["max_abs_diff"] <= 1e-5
    assert report["metric"]["after"] >= report["metric"]["before"] - 10
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "beside a dense FLOPs ratio" in markdown
    assert ("net.1 (" in markdown) == (hidden_after % 8 != 0), "widths that suit fast kernels badly are named"
    # the slim model reloads without its class and agrees with its ONNX export
    x, _ = tiny_classification_data(n=200, shape=(1, 4, 4), seed=1)
    slim = load_saved_model(tmp_path / "out")
    assert slim.get_submodule("net.1").out_features == hidden_after
    torch.testing.assert_close(torch.from_numpy(run_onnx(tmp_path / "out" / "model.onnx", x[:16])),
                               slim(x[:16]), atol=1e-5, rtol=0)


def test_channel_multiple_in_the_recipe_rounds_the_slim_widths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = RECIPE.format(method="group_vd", noise_lr=0.3, kl_weight=5.0) + "channel_multiple: 8\n"
    report = _compress_with_half_of_net1_dead(tmp_path, monkeypatch, recipe)  # at most 12 of 24 units survive
    layers = {row["name"]: row for row in report["layers"]}
    for name in ("net.1", "net.3"):
        width = layers[name]["shape_after"][0]
        assert width % 8 == 0 or width == layers[name]["shape_before"][0], layers[name]
    assert layers["net.1"]["shape_after"][0] < 24  # rounded up from at most 12, not back to 24
    assert report["slim"]["max_abs_diff"] <= 1e-5
    assert report["parity_max_abs_diff"] <= 1e-4
    assert "a multiple of 8" in " ".join(report["slim"]["notes"])
    # prunedrop export slims the same way
    width, shapes = layers["net.1"]["shape_after"][0], _reexported_matrix_shapes(tmp_path)
    assert [width, 16] in shapes and [12, width] in shapes, shapes  # net.1 (16 inputs) and net.3's columns


def test_reexport_of_a_structured_run_is_slim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _compress_with_half_of_net1_dead(tmp_path, monkeypatch, RECIPE.format(method="group_vd", noise_lr=0.3,
                                                                          kl_weight=5.0))
    shapes = _reexported_matrix_shapes(tmp_path)
    assert any(s[1] == 16 and s[0] <= 12 for s in shapes), shapes  # net.1 lost its dead units here too


def _reexported_matrix_shapes(tmp_path: Path) -> list[list[int]]:
    """``prunedrop export out -o again.onnx`` in ``tmp_path``; the shapes of its 2-D weights, sparse or not."""
    import onnx

    result = CliRunner().invoke(cli, ["export", "out", "-o", "again.onnx"])
    assert result.exit_code == 0, result.output
    graph = onnx.load(tmp_path / "again.onnx").graph
    shapes = [list(t.dims) for t in graph.initializer if len(t.dims) == 2]
    return shapes + [list(n.attribute[0].sparse_tensor.dims) for n in graph.node
                     if n.op_type == "Constant" and n.attribute[0].name == "sparse_value"]


_CONV_ARCH = """\
import torch
from torch import nn


class OddConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 24, 1)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.head = nn.Linear(24, 3)

    def forward(self, x):
        y = torch.relu(self.dw(torch.relu(self.b(torch.relu(self.a(x))))))
        return self.head(nn.functional.adaptive_avg_pool2d(y, 1).flatten(1))


def build():
    return OddConvs()
"""


@pytest.mark.real_width_timing
def test_measured_widths_end_to_end_keep_the_function_and_record_the_timing(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The default ``channel_multiple: null`` on a convolutional model whose dead units leave odd widths: the run
    times both slim models with onnxruntime, keeps one, records it, and the exported file computes the slim model.
    (Which one is faster on this CPU is not asserted: it is what the run measures.)"""
    import numpy as np

    (tmp_path / "convarch.py").write_text(_CONV_ARCH)
    x, y = tiny_classification_data(n=160, shape=(1, 4, 4), seed=1)
    np.savez(tmp_path / "data.npz", x_train=x[:120].numpy(), y_train=y[:120].numpy(), x_val=x[120:].numpy(),
             y_val=y[120:].numpy())
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    from convarch import build

    from prunedrop.testing import fit

    torch.manual_seed(0)
    model = fit(build(), x[:120], y[:120], 100)
    with torch.no_grad():  # dead units: no data term holds them, so the KL prunes them and the widths turn odd
        for layer, dead in ((model.a, [0, 3, 5, 9, 12]), (model.b, list(range(0, 22, 2)))):
            layer.weight[dead] = 0
            layer.bias[dead] = -1.0
    torch.save(model.state_dict(), tmp_path / "model.pt")
    recipe = RECIPE.format(method="sbp", noise_lr=0.1, kl_weight=2.0).replace('exclude: ["net.5"]', 'exclude: ["head"]')
    (tmp_path / "recipe.yaml").write_text(recipe)
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "convarch:build", "--data", "npz:data.npz",
                                      "--recipe", "recipe.yaml", "-o", "out"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    widths = report["slim"]["widths"]
    assert widths["tried"] == 8 and widths["multiple"] in (1, 8) and "a" in widths["odd_convolutions"]
    assert all(t > 0 for batch in widths["ms"].values() for t in batch.values())
    assert "widths: " in result.output
    markdown = (tmp_path / "out" / "report.md").read_text()
    # the note reads "widths rounded up to multiples of 8, measured ..." or "widths as pruned, measured ... (as pruned
    # → rounded up to multiples of 8, ...)": the latter names the multiple it tried too
    assert "measured when slimming" in markdown and ("widths rounded up to multiples of 8, measured" in markdown) == (
        widths["multiple"] == 8)
    assert "which vectorised kernels handle less well" not in markdown  # the measurement says more than the guess
    slim = load_saved_model(tmp_path / "out")
    assert slim.a.out_channels <= 11 or slim.a.out_channels == 16
    assert (slim.a.out_channels % 8 == 0) == (widths["multiple"] == 8)
    torch.testing.assert_close(torch.from_numpy(run_onnx(tmp_path / "out" / "model.onnx", x[:16])), slim(x[:16]),
                               atol=1e-5, rtol=0)
    exported = CliRunner().invoke(cli, ["export", "out", "-o", "again.onnx"])  # says how it chose its widths too
    assert exported.exit_code == 0 and "widths: " in exported.output, exported.output
