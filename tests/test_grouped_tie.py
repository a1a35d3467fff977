"""``tie_grouped``: one noise per slot (channel t of every group) around a grouped convolution, so that what the noise
prunes leaves every group alike and slimming removes it exactly (no pruned channel kept as zeros)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from test_slim_grouped import _block, _exact, _macs  # pytest puts tests/ on sys.path
from torch import nn

from prunedrop.convert import ConversionSummary, to_variational
from prunedrop.layers._units import tie_slots
from prunedrop.prune import prune
from prunedrop.recipes import Recipe
from prunedrop.slim import grouped_slots, slim

torch.set_num_threads(1)


def _convert(model: nn.Module, x: torch.Tensor, method: str = "sbp", **keys) -> tuple[nn.Module, ConversionSummary]:
    summary = ConversionSummary()
    recipe = Recipe(method=method, **keys)
    return to_variational(model, recipe, summary=summary, example_input=x), summary


class _ResNeXtish(nn.Module):
    """A stem, one residual block of 1x1 → grouped 3x3 (4 groups of 4) → 1x1, a head."""

    def __init__(self, groups: int = 4) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c1, self.bn1 = nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(16)
        self.c3, self.bn3 = nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        h = torch.relu(self.bn1(self.c1(x)))
        h = torch.relu(self.bn2(self.c2(h)))
        return self.head(torch.relu(x + self.bn3(self.c3(h))).mean((2, 3)))


def _resnextish(groups: int = 4) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return _ResNeXtish(groups).eval(), torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_the_slots_of_a_grouped_convolution_and_of_the_layer_that_feeds_it() -> None:
    model, x = _resnextish()
    assert grouped_slots(model, x) == {"c1": 4, "c2": 4}
    assert grouped_slots(_resnextish(groups=1)[0], x) == {}
    model, x = _block(c=16, groups=8)  # groups of 2: a (its producer) and b in slots of 2
    assert grouped_slots(model, x) == {"a": 2, "b": 2}


def test_tied_slots_share_one_noise_and_one_draw_in_every_group() -> None:
    model, x = _resnextish()
    variational, summary = _convert(model, x, tie_grouped=True, tie_residual=True)
    assert summary.slots == {"c1": 4, "c2": 4}
    assert any("tie_grouped" in n for n in summary.notes)
    c1, c2, stem = variational.c1, variational.c2, variational.stem
    assert c1.mu.shape == (4,) and c2.log_sigma.shape == (4,) and stem.mu.shape == (8,)
    assert c1.keep_mask().shape == (16,)
    # the optimizer sees the slot parameters themselves
    names = {n for n, _ in variational.named_parameters()}
    assert {"c1.mu", "c1.log_sigma", "c2.mu"} <= names
    with torch.no_grad():
        c2.mu.copy_(torch.tensor([-1.0, 0.0, -0.5, -2.0]))
        c2.log_sigma.fill_(0.5)  # noisy enough that separate draws would differ
    variational.train()
    torch.manual_seed(3)
    multiplier = c2._draw([5, 16, 1, 1], 1).reshape(5, 4, 4)  # (examples, groups, slots)
    assert torch.equal(multiplier, multiplier[:, :1].expand(-1, 4, -1))
    assert not torch.equal(multiplier[:, :, 0], multiplier[:, :, 1])
    # the KL counts each slot once per channel it occupies (as four untied channels alike would)
    untied, _ = _convert(_resnextish()[0], x, tie_grouped=False, tie_residual=True)
    with torch.no_grad():
        untied.c2.mu.copy_(c2.mu.repeat(4))
        untied.c2.log_sigma.copy_(c2.log_sigma.repeat(4))
    torch.testing.assert_close(c2.kl(), untied.c2.kl())
    variational(x).sum().backward()  # gradients reach the slot parameters
    assert c2.mu.grad is not None and c2.mu.grad.shape == (4,)


def _prune_slots(layer: nn.Module, slots: list[int]) -> None:
    with torch.no_grad():
        layer.log_sigma[slots] = 3.0  # SNR ≈ 0: pruned


@pytest.mark.parametrize("method", ["sbp", "group_vd"])
def test_pruned_slots_leave_exactly(method: str, tmp_path: Path) -> None:
    """Slots pruned in the grouped convolution and in the layer that feeds it leave every group: the slim model
    computes the masked one (and so does its ONNX export), with no pruned channel kept as zeros."""
    model, x = _resnextish()
    variational, summary = _convert(model, x, method, tie_grouped=True, tie_residual=True)
    assert summary.slots == {"c1": 4, "c2": 4}
    if method == "sbp":
        _prune_slots(variational.c1, [0, 3])
        _prune_slots(variational.c2, [1])
    else:
        with torch.no_grad():
            variational.c1.log_alpha_param[[0, 3]] = 4.0
            variational.c2.log_alpha_param[1] = 4.0
    pruned = prune(variational.eval())
    assert pruned.unit_masks["c1"].tolist() == [False, True, True, False] * 4
    assert pruned.unit_masks["c2"].tolist() == [True, False, True, True] * 4
    before = _macs(pruned.model, x)
    result = slim(pruned.model, pruned.unit_masks, x)
    assert result.removed["c1"] == (16, 8) and result.removed["c2"] == (16, 12)
    c2 = result.model.c2
    assert (c2.groups, c2.in_channels, c2.out_channels) == (4, 8, 12)
    assert not any("kept" in n for n in result.notes), result.notes
    _exact(pruned.model, result, x, tmp_path)
    assert _macs(result.model, x) < before


def test_untied_noise_pruning_the_same_count_differently_keeps_zeros() -> None:
    """The case the tie is for: with a noise per channel, the groups of c2 prune different numbers of channels, and
    the equal-count rule keeps the pruned ones beyond the fewest any group lost (here none can leave)."""
    model, x = _resnextish()
    variational, _ = _convert(model, x, tie_grouped=False, tie_residual=True)
    assert variational.c2.mu.shape == (16,)
    _prune_slots(variational.c2, [0, 5, 6, 11])  # groups lose 1, 2, 1, 0 output channels: none can leave
    pruned = prune(variational.eval())
    result = slim(pruned.model, pruned.unit_masks, x)
    assert result.removed["c2"] == (16, 16)
    assert any("keeps its groups equal in size" in n for n in result.notes), result.notes


class _Multiplier(nn.Module):
    """conv 1x1 → depthwise 3x3 with a channel multiplier of 2 → grouped 1x1 (groups of 4), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.g = nn.Conv2d(16, 8, 1, groups=4)
        self.c = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.dw(torch.relu(self.a(x))))
        return self.head(torch.relu(self.c(torch.relu(self.g(y)))).mean((2, 3)))


def test_a_depthwise_multiplier_feeding_a_grouped_layer_ties_its_outputs_in_both_periods(tmp_path: Path) -> None:
    """A depthwise convolution with a channel multiplier (one input channel per group) stays per channel on its own
    (its groups leave whole with their input channel; the layer that feeds it is never tied). Here it feeds a grouped
    1x1 (groups of 4 inputs, 2 outputs), which ties its own outputs in slots of 2 and asks for the multiplier's in
    slots of 4: the multiplier takes slots of 2 (gcd with its k = 2), so both groupings hold, and pruned slots of
    both layers leave exactly."""
    torch.manual_seed(0)
    model, x = _Multiplier().eval(), torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert grouped_slots(model, x) == {"dw": 2, "g": 2}
    alone = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1, groups=8), nn.ReLU(),
                          nn.Conv2d(16, 4, 1)).eval()
    assert grouped_slots(alone, x) == {}  # a multiplier alone: per channel
    variational, summary = _convert(model, x, tie_grouped=True)
    assert summary.slots == {"dw": 2, "g": 2} and variational.a.mu.shape == (8,)
    _prune_slots(variational.dw, [1])  # the second output of every input channel
    _prune_slots(variational.g, [0])
    pruned = prune(variational.eval())
    result = slim(pruned.model, pruned.unit_masks, x)
    assert result.removed["dw"] == (16, 8) and result.removed["g"] == (8, 4)
    assert result.model.dw.groups == 8 and result.model.g.groups == 4 and result.model.g.in_channels == 8
    assert not any("kept" in n for n in result.notes), result.notes
    _exact(pruned.model, result, x, tmp_path)


def test_a_model_without_grouped_convolutions_converts_as_before() -> None:
    """tie_grouped changes nothing where there is no grouped convolution (a plain and a depthwise one)."""
    for groups in (1, 16):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 16, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=groups),
                              nn.ReLU(), nn.Conv2d(16, 8, 1), nn.Flatten(), nn.Linear(8 * 64, 5)).eval()
        x = torch.randn(2, 3, 8, 8)
        assert grouped_slots(model, x) == {}
        tied, summary = _convert(copy.deepcopy(model), x, tie_grouped=True)
        plain, plain_summary = _convert(model, x, tie_grouped=False)
        assert not summary.slots and summary == plain_summary
        assert {n: p.shape for n, p in tied.named_parameters()} == {n: p.shape for n, p in plain.named_parameters()}
        assert all(getattr(m, "unit_period", None) is None for m in tied.modules())


def test_tie_slots_refuses_what_it_cannot_tie() -> None:
    model, x = _resnextish()
    variational, _ = _convert(model, x, tie_grouped=False)
    with pytest.raises(ValueError, match="period 3"):
        tie_slots([variational.c1], 3)
    with pytest.raises(TypeError):
        tie_slots([nn.Linear(4, 4)], 2)
    tie_slots([variational.c1], 4)
    with pytest.raises(ValueError, match="already"):
        tie_slots([variational.c1], 2)
