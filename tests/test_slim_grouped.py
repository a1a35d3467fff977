"""Grouped convolutions under slimming: a grouped convolution's groups stay equal in size, so its channels leave when
every group loses as many (whole groups leave where all of their channels go, in and out), and the slim model
computes the masked one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_slim import _diff_on_fresh_inputs, _prune_units  # pytest puts tests/ on sys.path
from torch import nn

from prunedrop.export import export_onnx, run_onnx
from prunedrop.report import count_parameters
from prunedrop.report.profile import profile_model
from prunedrop.slim import slim, unremovable_layers
from prunedrop.testing_arch import randomize_batchnorm

torch.set_num_threads(1)


def _exact(model: nn.Module, result, x: torch.Tensor, tmp_path: Path | None = None) -> None:
    """The slim model computes the masked one, on the example and on fresh inputs; with ``tmp_path``, its ONNX export
    too (onnxruntime)."""
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5
    if tmp_path is not None:
        path = export_onnx(result.model, x[:2], tmp_path / "slim.onnx", sparse=False).path
        with torch.no_grad():
            want = model.eval()(x).numpy()
        np.testing.assert_allclose(run_onnx(path, x.numpy()), want, atol=1e-5, rtol=0)


def _macs(model: nn.Module, x: torch.Tensor) -> int:
    return sum(p.macs for p in profile_model(model, x[:1]))


class _GroupedBlock(nn.Module):
    """conv 1x1 → BN → ReLU → grouped 3x3 → BN → ReLU → conv 1x1, a head."""

    def __init__(self, c: int = 16, groups: int = 4):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, c, 1), nn.BatchNorm2d(c)
        self.b, self.bn_b = nn.Conv2d(c, c, 3, padding=1, groups=groups), nn.BatchNorm2d(c)
        self.c = nn.Conv2d(c, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn_a(self.a(x)))
        y = torch.relu(self.bn_b(self.b(y)))
        return self.head(torch.relu(self.c(y)).mean((2, 3)))


def _block(c: int = 16, groups: int = 4, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = _GroupedBlock(c, groups)
    randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():  # a pruned unit's BatchNorm shift would carry a constant into the padded 3x3: not here
        model.bn_a.bias.zero_()
        model.bn_a.running_mean.zero_()
    return model.eval(), torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(seed + 2))


def test_a_grouped_block_pruned_alike_in_every_group_loses_every_pruned_channel(tmp_path: Path) -> None:
    model, x = _block()  # groups of 4 channels: 0-3, 4-7, 8-11, 12-15
    before = _macs(model, x)
    masks = _prune_units(model, {"a": [1, 2, 5, 6, 8, 9, 12, 15], "b": [0, 7, 10, 13]})
    result = slim(model, masks, x)
    assert result.removed["a"] == (16, 8) and result.removed["b"] == (16, 12)
    b = result.model.b
    assert (b.groups, b.in_channels, b.out_channels, tuple(b.weight.shape)) == (4, 8, 12, (12, 2, 3, 3))
    assert result.model.bn_b.num_features == 12 and result.model.c.in_channels == 12
    assert not any("kept" in n for n in result.notes), result.notes
    _exact(model, result, x, tmp_path)
    # the FLOPs counter reads the grouped layer as it is: 3x3 kernels over 2 of 8 inputs per output
    assert _macs(result.model, x) < before
    assert [p.macs for p in profile_model(result.model, x[:1]) if p.name == "b"] == [12 * 2 * 9 * 64]


def test_a_grouped_block_pruned_unevenly_loses_the_fewest_any_group_pruned() -> None:
    model, x = _block()
    # a prunes 2, 1, 3, 2 channels of b's four input groups; b prunes 1, 2, 1, 3 of its output groups
    masks = _prune_units(model, {"a": [0, 1, 4, 8, 9, 10, 13, 14], "b": [1, 4, 5, 8, 12, 13, 14]})
    result = slim(model, masks, x)
    assert result.removed["a"] == (16, 12) and result.removed["b"] == (16, 12)
    b = result.model.b
    assert (b.groups, b.in_channels, b.out_channels) == (4, 12, 12)
    kept = " ".join(n for n in result.notes if "grouped convolution b (groups=4)" in n)
    assert "kept pruned channel(s)" in kept
    # the pruned channels beyond the one per group stay as zeros: 4 of a's, 3 of b's
    assert int(result.model.a.weight.flatten(1).eq(0).all(1).sum()) == 4
    assert int(result.model.b.weight.flatten(1).eq(0).all(1).sum()) == 3
    _exact(model, result, x)


def test_a_grouped_block_loses_nothing_where_one_group_prunes_nothing() -> None:
    model, x = _block()
    masks = _prune_units(model, {"a": [0, 4, 8], "b": [1, 5, 9]})  # group 3 prunes nothing, in or out
    result = slim(model, masks, x)
    assert result.removed["a"] == (16, 16) and result.removed["b"] == (16, 16)
    assert count_parameters(result.model) == count_parameters(model)
    _exact(model, result, x)


def test_a_whole_group_leaves_and_groups_shrink() -> None:
    model, x = _block()
    # group 1 (channels 4-7) is pruned whole, in (by a) and out (by b); the others lose one of each
    masks = _prune_units(model, {"a": [4, 5, 6, 7, 0, 9, 15], "b": [4, 5, 6, 7, 2, 11, 12]})
    result = slim(model, masks, x)
    b = result.model.b
    assert (b.groups, b.in_channels, b.out_channels) == (3, 9, 9)
    assert result.removed["a"] == (16, 9) and result.removed["b"] == (16, 9)
    _exact(model, result, x)


@pytest.mark.parametrize("groups", [2, 8])  # g = 2 and g = channels / 2 (two channels per group)
def test_two_groups_and_groups_of_two(groups: int) -> None:
    model, x = _block(16, groups)
    per = 16 // groups
    a_pruned = [j * per for j in range(groups)]  # the first channel of every group
    b_pruned = [j * per + per - 1 for j in range(groups)] + [1]  # the last of every group, and one more in group 0
    masks = _prune_units(model, {"a": a_pruned, "b": b_pruned})
    result = slim(model, masks, x)
    b = result.model.b
    assert (b.groups, b.in_channels, b.out_channels) == (groups, 16 - groups, 16 - groups)
    assert result.removed["a"] == (16, 16 - groups) and result.removed["b"] == (16, 16 - groups)
    _exact(model, result, x)


def test_a_pruned_channel_with_a_batchnorm_shift_folds_into_a_grouped_1x1() -> None:
    """A removed channel that carries a constant (its BatchNorm shift through a ReLU) into an unpadded grouped
    convolution: the constant goes into the bias of that group's outputs only."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 1, groups=2),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    randomize_batchnorm(model, torch.Generator().manual_seed(4))
    with torch.no_grad():
        model[1].bias.fill_(0.7)  # relu(0.7 - γ·μ/σ) > 0 for the pruned channels
        model[1].running_mean.fill_(-0.2)
    model.eval()
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(5))
    masks = _prune_units(model, {"0": [1, 6], "3": [2, 4]})
    result = slim(model, masks, x)
    assert result.removed["0"] == (8, 6) and result.removed["3"] == (6, 4)
    assert result.model[3].groups == 2 and result.model[3].in_channels == 6
    _exact(model, result, x)


class _ResNeXtBlock(nn.Module):
    """A stem, then a ResNeXt bottleneck: 1x1 reduce → grouped 3x3 (4 groups) → 1x1 expand, added to the stream."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.reduce, self.bn1 = nn.Conv2d(16, 12, 1, bias=False), nn.BatchNorm2d(12)
        self.grouped, self.bn2 = nn.Conv2d(12, 12, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(12)
        self.expand, self.bn3 = nn.Conv2d(12, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.reduce(s)))
        y = torch.relu(self.bn2(self.grouped(y)))
        s = torch.relu(s + self.bn3(self.expand(y)))
        return self.head(s.mean((2, 3)))


def _folded(model: nn.Module) -> nn.Module:
    """Each BatchNorm folded into its convolution (what thresholding does with ``batchnorm_noise: after``): a pruned
    unit then outputs exact zeros."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for conv, bn in (("stem", "bn0"), ("reduce", "bn1"), ("grouped", "bn2"), ("expand", "bn3")):
        setattr(model, conv, fuse_conv_bn_eval(getattr(model, conv), getattr(model, bn)))
        setattr(model, bn, nn.Identity())
    return model


def test_a_resnext_block_slims_its_grouped_convolution(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _ResNeXtBlock()
    randomize_batchnorm(model, torch.Generator().manual_seed(1))
    model = _folded(model.eval())
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    assert set(unremovable_layers(model, x)) <= {"head"}
    masks = _prune_units(model, {"stem": [3, 9], "expand": [3, 9, 10], "reduce": [0, 4, 7, 11, 2],
                                 "grouped": [2, 5, 6, 9]})
    result = slim(model, masks, x)
    # the stream loses 3 and 9 (both writers prune them; 10 stays for the stem); reduce loses one input of each of
    # the grouped convolution's groups of 3 (0, 4, 7, 11; 2 stays as zeros), grouped one output of each (2, 5, 9 or
    # 6 stays as zeros in group 1, which pruned two)
    assert result.removed["stem"] == (16, 14) and result.removed["expand"] == (16, 14)
    assert result.removed["reduce"] == (12, 8) and result.removed["grouped"] == (12, 8)
    g = result.model.grouped
    assert (g.groups, g.in_channels, g.out_channels) == (4, 8, 8)
    _exact(model, result, x, tmp_path)


class _DepthwiseMultiplier(nn.Module):
    """1x1 → depthwise 3x3 with channel multiplier 2 (6 → 12, groups 6) → 1x1."""

    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(3, 6, 1)
        self.dw = nn.Conv2d(6, 12, 3, padding=1, groups=6)
        self.out = nn.Conv2d(12, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.dw(torch.relu(self.pw(x))))
        return self.head(torch.relu(self.out(y)).mean((2, 3)))


def _multiplier() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _DepthwiseMultiplier().eval(), torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_a_depthwise_multiplier_loses_an_input_channel_with_both_of_its_outputs(tmp_path: Path) -> None:
    model, x = _multiplier()
    assert set(unremovable_layers(model, x)) <= {"head"}
    # input 2 leaves with outputs 4 and 5; input 3 is pruned but only one of its outputs (6): both stay as zeros
    masks = _prune_units(model, {"pw": [2, 3], "dw": [4, 5, 6]})
    result = slim(model, masks, x)
    dw = result.model.dw
    assert (dw.groups, dw.in_channels, dw.out_channels) == (5, 5, 10)
    assert result.removed["pw"] == (6, 5) and result.removed["dw"] == (12, 10)
    assert result.model.out.in_channels == 10
    assert any("grouped convolution dw (groups=6)" in n and "[3]" in n for n in result.notes), result.notes
    _exact(model, result, x, tmp_path)


def test_a_depthwise_multiplier_loses_one_output_of_every_input_alike() -> None:
    model, x = _multiplier()
    masks = _prune_units(model, {"dw": [1, 2, 5, 6, 9, 11]})  # one output of each of the six inputs
    result = slim(model, masks, x)
    dw = result.model.dw
    assert (dw.groups, dw.in_channels, dw.out_channels) == (6, 6, 6)
    assert result.removed["dw"] == (12, 6) and result.model.pw.out_channels == 6
    _exact(model, result, x)


class _StreamIntoGroups(nn.Module):
    """A residual stream (a stem and a block's last convolution write it) read by a grouped convolution (2 groups)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1, self.conv2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 6, 1, groups=2)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.stem(x))
        s = torch.relu(s + self.conv2(torch.relu(self.conv1(s))))
        return self.head(torch.relu(self.grouped(s)).mean((2, 3)))


def test_a_grouped_convolution_reading_a_residual_stream() -> None:
    torch.manual_seed(0)
    model = _StreamIntoGroups().eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    # the stream's channels 1 and 6 are pruned by both writers (one in each of the grouped convolution's groups of
    # 4); 2 by both too, but a second one in group 0: it stays; 5 by the stem alone: it stays
    masks = _prune_units(model, {"stem": [1, 2, 5, 6], "conv2": [1, 2, 6]})
    result = slim(model, masks, x)
    assert result.removed["stem"] == (8, 6) and result.removed["conv2"] == (8, 6)
    g = result.model.grouped
    assert (g.groups, g.in_channels, g.out_channels) == (2, 6, 6)
    assert result.model.conv1.in_channels == 6
    _exact(model, result, x)


def test_grouped_convolutions_are_no_longer_left_dense() -> None:
    """``keep_unremovable`` named every layer whose channels flow through a grouped convolution; now none."""
    from prunedrop.convert import ConversionSummary, to_variational
    from prunedrop.recipes import Recipe

    model, x = _block()
    assert unremovable_layers(model, x) == {"head": "they reach the model output"}
    summary = ConversionSummary()
    to_variational(model, Recipe(method="sbp"), summary=summary, example_input=x)
    assert not summary.unremovable and {"a", "b", "c"} <= set(summary.converted)
    from prunedrop.inspection import inspect_model

    model, x = _block()
    status = {e["name"]: e["status"] for e in inspect_model(model, x, Recipe(method="sbp"))["layers"]}
    assert status["a"] == status["b"] == status["c"] == "convert", status


_ARCH = """\
import torch
from torch import nn


class GroupedDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.b, self.bn_b = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 32, 3, padding=1, groups=16)
        self.c = nn.Conv2d(32, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        y = torch.relu(self.bn_a(self.a(x)))
        y = torch.relu(self.bn_b(self.b(y)))
        y = torch.relu(self.c(torch.relu(self.dw(y))))
        return self.head(y.mean((2, 3)))


def build():
    return GroupedDigits()
"""

_RECIPE = """\
method: sbp
exclude: ["head"]
epochs: 6
batch_size: 64
lr: 0.003
noise_lr: 0.2
lr_schedule: constant
kl_weight: 5.0
kl_warmup_epochs: 1
max_metric_drop: null
finetune_epochs: 1
channel_multiple: 1
latency_runs: 3
mc_samples: 2
device: cpu
"""


@torch.no_grad()
def _kill(model: nn.Module) -> None:
    """Dead units (exact zeros whatever the input: no data term holds them, so the KL prunes them): two of each of b's
    four input groups (a's), two of each of its output groups, and both outputs of the depthwise convolution for each
    of those (a whole group of it)."""
    a_dead, b_dead = [0, 1, 4, 5, 8, 9, 12, 13], [2, 3, 6, 7, 10, 11, 14, 15]
    model.bn_a.weight[a_dead] = 0
    model.bn_a.bias[a_dead] = 0
    model.bn_b.weight[b_dead] = 0
    model.bn_b.bias[b_dead] = 0
    dw_dead = [2 * j + k for j in b_dead for k in (0, 1)]
    model.dw.weight[dw_dead] = 0
    model.dw.bias[dw_dead] = 0


def test_sbp_end_to_end_on_a_grouped_cnn_slims_the_grouped_layers(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``prunedrop compress --recipe`` (sbp, a fixed β) of a digits CNN with a grouped convolution and a depthwise
    one with a channel multiplier: none is left dense, the grouped layers lose channels, and the ONNX file computes
    the slim model."""
    from prunedrop.cli import cli
    from prunedrop.data import load_data
    from prunedrop.storage import load_saved_model
    from prunedrop.testing import fit

    (tmp_path / "groupedarch.py").write_text(_ARCH)
    (tmp_path / "recipe.yaml").write_text(_RECIPE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    from groupedarch import build

    data = load_data("digits", seed=0)
    x, y = (torch.stack(t) if i == 0 else torch.as_tensor(t) for i, t in enumerate(zip(*data.train, strict=True)))
    torch.manual_seed(0)
    model = build()
    _kill(model)
    model = fit(model, x, y, 150)
    _kill(model)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "groupedarch:build", "--data", "digits",
                                      "--recipe", "recipe.yaml", "-q", "-o", "out"])
    assert result.exit_code in (0, 4), result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert not report["conversion"].get("unremovable"), report["conversion"]
    layers = {row["name"]: row for row in report["layers"]}
    # the dead units go: half of a's (two of each of b's input groups), half of b's outputs (two of each group), and
    # the depthwise convolution's groups that read them (both outputs of each)
    assert layers["a"]["shape_after"][0] <= 8 and layers["b"]["shape_after"][:2] <= [8, 2], layers["b"]
    assert layers["dw"]["shape_after"][0] <= 16 and layers["c"]["shape_after"][1] == layers["dw"]["shape_after"][0]
    assert report["slim"]["max_abs_diff"] <= 1e-5
    assert report["parity_max_abs_diff"] <= 1e-4
    slim_model = load_saved_model(tmp_path / "out")
    assert slim_model.b.groups == 4 and slim_model.b.out_channels == layers["b"]["shape_after"][0]
    assert slim_model.dw.groups == slim_model.dw.in_channels == slim_model.b.out_channels
    assert slim_model.dw.out_channels == 2 * slim_model.dw.groups
    xs = x[:32]
    torch.testing.assert_close(torch.from_numpy(run_onnx(tmp_path / "out" / "model.onnx", xs)), slim_model(xs),
                               atol=1e-5, rtol=0)
    assert report["flops"]["after"] < report["flops"]["before"]
    assert report["flops"]["after"] == _macs(slim_model.eval(), xs)  # the grouped layers as they are now


def test_per_weight_dead_units_fold_into_their_own_group_only() -> None:
    """sparse_vd's dead units (:func:`dead_units`): a unit whose weights are all pruned outputs a constant, which goes
    into the bias of the grouped convolution that reads it, in its own group's outputs only, its column there zeroed."""
    from prunedrop.slim import dead_units

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1, groups=2), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model[0].weight[[1, 5]] = 0  # outputs relu(bias): constant
        model[0].bias[[1, 5]] = 0.5
        want = model(x)
    masks = dead_units(model, x)
    assert masks["0"].tolist() == [True, False, True, True, True, False, True, True]
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, atol=1e-6, rtol=0)
    result = slim(model, masks, x)
    assert result.removed["0"] == (8, 6) and result.model[2].in_channels == 6 and result.model[2].groups == 2
    _exact(model, result, x)


def test_width_rounding_leaves_a_grouped_convolutions_channels_alone() -> None:
    """``channel_multiple`` keeps pruned channels to round a width; among a grouped convolution's, those kept made its
    groups lose different numbers, and the equal-count rule then kept every pruned input channel (32, not 20)."""
    model, x = _block(32, 4)  # groups of 8: a prunes 3, 3, 3 and 4 of them, b 4 of each
    masks = _prune_units(model, {"a": [0, 1, 2, 8, 9, 10, 16, 17, 18, 24, 25, 26, 27],
                                 "b": [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 28]})
    for multiple in (1, 8):
        result = slim(model, masks, x, channel_multiple=multiple)
        assert result.removed["a"] == (32, 20) and result.removed["b"] == (32, 16), (multiple, result.removed)
        _exact(model, result, x)
