"""Tests for prunedrop.slim: pruned units leave every layer they touch, and the function stays the same."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunedrop.errors import PrunedropError
from prunedrop.layers import VariationalLayer
from prunedrop.report import count_parameters
from prunedrop.slim import SlimResult, silent_units, slim, unremovable_layers
from prunedrop.testing_arch import TINY_ARCHS, tiny_arch

_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _two_convs(c1: int, c2_in: int, c2_out: int, fc_in: int | None = None) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The small test models' layers, made in this order: c1 (one input channel → ``c1``, 3x3), c2 (``c2_in`` →
    ``c2_out``, 3x3) and fc (``fc_in``, by default ``c2_out``, → 3 classes)."""
    return nn.Conv2d(1, c1, 3, padding=1), nn.Conv2d(c2_in, c2_out, 3, padding=1), nn.Linear(fc_in or c2_out, 3)


@torch.no_grad()
def _prune_units(model: nn.Module, prune: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """Zero the given units (weight rows and bias) in place, as the prune stage does; return keep masks."""
    modules = dict(model.named_modules())
    masks = {}
    for name, units in prune.items():
        layer = modules[name]
        keep = torch.ones(layer.weight.shape[0], dtype=torch.bool)
        keep[units] = False
        layer.weight[~keep] = 0
        if layer.bias is not None:
            layer.bias[~keep] = 0
        masks[name] = keep
    return masks


def _random_prune(model: nn.Module, p: float = 0.4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Prune random units of every Linear/Conv layer except the classifier head (the last one)."""
    g = torch.Generator().manual_seed(seed)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _WEIGHT_LAYERS)][:-1]
    prune = {}
    for name, layer in layers:
        units = torch.nonzero(torch.rand(layer.weight.shape[0], generator=g) < p).flatten().tolist()
        prune[name] = units
    return _prune_units(model, prune)


def _diff_on_fresh_inputs(a: nn.Module, b: nn.Module, x: torch.Tensor, seed: int = 7) -> float:
    """Max |a − b| on inputs the slimming never saw: folds must hold for any input, not just the example."""
    fresh = torch.randn(8, *x.shape[1:], generator=torch.Generator().manual_seed(seed)) * 2
    with torch.no_grad():
        return float((a.eval()(fresh) - b.eval()(fresh)).abs().max())


def _module(model: nn.Module, name: str) -> nn.Module:
    return dict(model.named_modules())[name]


ALL_ARCHS = [
    "mlp",
    "lenet5",
    "vgg_bn",
    "resnet_basic",
    "resnet_bottleneck",
    "mobilenet_v2",
    "densenet",
    "gelu",
]


@pytest.mark.parametrize("name", ALL_ARCHS)
def test_slim_every_architecture_is_smaller_and_exact(name: str) -> None:
    model, x = tiny_arch(name)
    masks = _random_prune(model)
    result = slim(model, masks, x)
    assert isinstance(result, SlimResult)
    assert count_parameters(result.model)[0] < count_parameters(model)[0]
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5
    assert not result.model.training
    assert set(masks) <= set(result.removed)
    assert any(after < before for before, after in result.removed.values())
    assert all(0 < after <= before for before, after in result.removed.values())


@pytest.mark.parametrize("name", ["vgg_bn", "resnet_basic", "densenet"])
def test_fold_borders_removes_more_and_reports_the_measured_difference(name: str) -> None:
    model, x = tiny_arch(name)
    masks = _random_prune(model)
    exact = slim(model, masks, x)
    assert any("zero padding" in n for n in exact.notes)
    loose = slim(model, masks, x, fold_borders=True)  # explained in notes: no error even above atol
    assert count_parameters(loose.model)[0] < count_parameters(exact.model)[0]
    assert loose.max_abs_diff > 1e-5
    assert any("fold_borders=True" in n and f"{loose.max_abs_diff:.3g}" in n for n in loose.notes)


def test_input_model_is_unchanged() -> None:
    model, x = tiny_arch("resnet_bottleneck")
    masks = _random_prune(model)
    model.train()
    state = copy.deepcopy(model.state_dict())
    result = slim(model, masks, x)
    assert result.model is not model
    assert model.training
    assert all(m.training for m in model.modules())
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(p.requires_grad for p in model.parameters())


def test_residual_coupling_keeps_a_channel_pruned_in_only_one_member() -> None:
    model, x = tiny_arch("resnet_basic")
    # layer1.conv2 writes into the residual stream that the stem starts: channel 2 is pruned there only.
    masks = _prune_units(model, {"layer1.conv2.0": [2]})
    result = slim(model, masks, x)
    assert result.removed["layer1.conv2.0"] == (6, 6)
    assert _module(result.model, "stem.0.0").out_channels == 6
    assert _module(result.model, "layer2.conv1.0").in_channels == 6
    assert any(
        "layer1.conv2.0" in n and "stem.0.0" in n and "[2]" in n and "coupled" in n for n in result.notes
    )
    assert result.max_abs_diff <= 1e-5


def test_residual_group_removed_when_every_member_prunes_it() -> None:
    model, x = tiny_arch("resnet_basic")
    with torch.no_grad():
        # Both BatchNorms map the pruned 0 to a negative value, so the block's ReLU outputs 0: removable
        # even though every consumer is a zero-padded 3x3 convolution.
        for bn in ("stem.0.1", "layer1.conv2.1"):
            _module(model, bn).bias[2] = -3.0
    masks = _prune_units(model, {"layer1.conv2.0": [2], "stem.0.0": [2]})
    result = slim(model, masks, x)
    slim_model = result.model
    assert result.removed["stem.0.0"] == (6, 5) and result.removed["layer1.conv2.0"] == (6, 5)
    assert _module(slim_model, "stem.0.1").num_features == 5
    assert _module(slim_model, "layer1.conv2.1").num_features == 5
    for consumer in ("layer1.conv1.0", "layer2.conv1.0", "layer2.shortcut.0"):
        assert _module(slim_model, consumer).in_channels == 5, consumer
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, slim_model, x) <= 1e-5


def test_residual_constant_folds_exactly_into_1x1_consumers() -> None:
    model, x = tiny_arch("resnet_bottleneck")
    with torch.no_grad():
        for bn in ("layer1.0.expand.1", "layer1.0.shortcut.1", "layer1.1.expand.1"):
            _module(model, bn).bias[3] = 2.0  # the stream carries relu(positive constant) ≠ 0
    group = ["layer1.0.expand.0", "layer1.0.shortcut.0", "layer1.1.expand.0"]
    masks = _prune_units(model, dict.fromkeys(group, [3]))
    result = slim(model, masks, x)
    for name in group:
        assert result.removed[name] == (8, 7), name
    # Its consumers are 1x1 convolutions (layer1.1.reduce, layer2.reduce, layer2.shortcut): folded exactly.
    before = _module(model, "layer2.reduce.0")
    after = _module(result.model, "layer2.reduce.0")
    assert after.in_channels == 7 and after.bias is not None and before.bias is None
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


def test_batchnorm_constant_folds_into_linear_after_flatten() -> None:
    model, x = tiny_arch("vgg_bn")
    with torch.no_grad():
        _module(model, "features.8").bias[5] = 1.5  # BN(0) > 0, so ReLU passes a constant on
    masks = _prune_units(model, {"features.7": [5]})
    fc = _module(model, "classifier.1")
    result = slim(model, masks, x)
    slim_fc = _module(result.model, "classifier.1")
    assert result.removed["features.7"] == (8, 7)
    assert _module(result.model, "features.8").num_features == 7
    assert slim_fc.in_features == fc.in_features - 4  # the channel's whole 2x2 block of flattened features
    assert not torch.allclose(slim_fc.bias, fc.bias)  # the constant went into the bias
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


def test_constant_into_zero_padded_conv_is_kept_and_named() -> None:
    model, x = tiny_arch("vgg_bn")
    with torch.no_grad():
        _module(model, "features.1").bias[1] = 1.5
    masks = _prune_units(model, {"features.0": [1]})
    result = slim(model, masks, x)
    assert result.removed["features.0"] == (6, 6)
    assert any("features.3" in n and "zero padding" in n for n in result.notes)
    assert result.max_abs_diff <= 1e-5


def test_sigmoid_after_a_pruned_unit_is_not_assumed_zero() -> None:
    model, x = tiny_arch("sigmoid_mlp")
    masks = _prune_units(model, {"fc1": [0, 3]})
    result = slim(model, masks, x)
    assert result.removed["fc1"] == (8, 6)
    # sigmoid(0) = 0.5 reaches fc2: 0.5 * its weight columns must be in the bias now.
    expected = model.fc2.bias + 0.5 * model.fc2.weight[:, [0, 3]].sum(dim=1)
    assert torch.allclose(result.model.fc2.bias, expected, atol=1e-6)
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


def test_depthwise_unit_pruned_alone_removes_the_expand_channel_too() -> None:
    model, x = tiny_arch("mobilenet_v2")
    masks = _prune_units(model, {"blocks.0.depthwise.0.0": [4, 9]})
    result = slim(model, masks, x)
    assert result.removed["blocks.0.depthwise.0.0"] == (18, 16)
    assert _module(result.model, "blocks.0.expand.0.0").out_channels == 16
    assert _module(result.model, "blocks.0.project.0").in_channels == 16
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


def test_concatenation_maps_channels_through_offsets() -> None:
    model, x = tiny_arch("densenet")
    # block.0.conv's outputs sit at offsets 6..9 of the concatenation that block.1 and the transition read.
    masks = _prune_units(model, {"block.0.conv": [1], "block.1.conv": [0, 2]})
    with torch.no_grad():
        _module(model, "block.1.bn").bias[7] = -3.0  # block.1.conv (3x3, padded) sees relu(negative) = 0
    result = slim(model, masks, x)
    assert result.removed["block.0.conv"] == (4, 3) and result.removed["block.1.conv"] == (4, 2)
    assert _module(result.model, "block.1.bn").num_features == 9
    assert _module(result.model, "transition.0").num_features == 11
    assert _module(result.model, "transition.2").in_channels == 11
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


def test_a_grouped_convolution_loses_channels_only_alike_in_each_group() -> None:
    model, x = tiny_arch("convzoo")  # features.5: 4 → 6 channels in 2 groups
    masks = _prune_units(model, {"features.0": [1], "features.5": [2]})  # group 0 alone prunes: kept, and said so
    result = slim(model, masks, x)
    assert count_parameters(result.model) == count_parameters(model)
    assert any("grouped convolution features.5 (groups=2) keeps its groups equal" in n for n in result.notes)
    assert result.max_abs_diff <= 1e-5
    masks = _prune_units(model, {"features.0": [1, 3], "features.5": [2, 5]})  # one of each group, in and out
    result = slim(model, masks, x)  # (features.0's pruned channels carry a BatchNorm shift into features.5's bias)
    assert result.removed == {"features.0": (4, 2), "features.2": (4, 2), "features.5": (6, 4)}
    assert _module(result.model, "features.5").groups == 2 and _module(result.model, "features.2").groups == 2
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


def test_a_group_never_loses_every_channel() -> None:
    model, x = tiny_arch("mlp")
    masks = _prune_units(model, {"net.3": list(range(8))})
    result = slim(model, masks, x)
    assert result.removed["net.3"] == (8, 1)
    assert any("every channel" in n for n in result.notes)
    assert result.max_abs_diff <= 1e-5


def test_head_pruned_in_the_mask_is_kept_since_it_reaches_the_output() -> None:
    model, x = tiny_arch("mlp")
    masks = _prune_units(model, {"net.5": [1]})
    result = slim(model, masks, x)
    assert result.removed["net.5"] == (3, 3)
    assert any("model output" in n for n in result.notes)


def test_large_outputs_get_a_tolerance_scaled_to_their_magnitude() -> None:
    """Removing channels reorders float32 sums: outputs of magnitude 1e5 differ by more than 1e-5 after a correct
    slim, which is rounding, not a graph misread."""
    model, x = tiny_arch("lenet5")
    head = [m for m in model.modules() if isinstance(m, _WEIGHT_LAYERS)][-1]
    with torch.no_grad():
        head.weight.mul_(1e5)
    masks = _random_prune(model, p=0.5)
    result = slim(model, masks, x)
    with torch.no_grad():
        scale = float(model.eval()(x).abs().max())
    assert scale > 1e3 and 0 < result.max_abs_diff <= 1e-5 * scale
    assert result.max_abs_diff > 1e-5  # the absolute tolerance alone would have refused this exact slim


def test_unexplained_difference_raises() -> None:
    model, x = tiny_arch("sigmoid_mlp")
    masks = _prune_units(model, {"fc1": [0]})  # the fold is exact only up to float rounding
    with pytest.raises(PrunedropError, match="differs from the masked model"):
        slim(model, masks, x, atol=-1.0)


@pytest.mark.parametrize(
    ("masks", "match"),
    [
        ({"nope": torch.ones(3, dtype=torch.bool)}, "no such module"),
        ({"net.1": torch.ones(5, dtype=torch.bool)}, "one entry per output unit"),
        ({"net.1": torch.tensor([False] + [True] * 11)}, "not zero"),
    ],
)
def test_bad_masks_are_errors(masks: dict[str, torch.Tensor], match: str) -> None:
    model, x = tiny_arch("mlp")
    with pytest.raises(PrunedropError, match=match):
        slim(model, masks, x)


def test_slim_model_reloads_without_its_class(tmp_path) -> None:
    from prunedrop.storage import load_saved_model, save_model

    model, x = tiny_arch("densenet")
    result = slim(model, _random_prune(model), x)
    save_model(result.model, tmp_path, x)
    reloaded = load_saved_model(tmp_path)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), result.model(x), atol=1e-6)


def test_every_test_architecture_is_covered() -> None:
    assert set(TINY_ARCHS) == {*ALL_ARCHS, "sigmoid_mlp", "convzoo"}


@pytest.mark.parametrize("name", ["mlp", "resnet_basic", "mobilenet_v2", "densenet"])
@pytest.mark.parametrize("multiple", [2, 4])
def test_channel_multiple_rounds_widths_up_and_stays_exact(name: str, multiple: int) -> None:
    model, x = tiny_arch(name)
    masks = _random_prune(model, p=0.5)
    plain = slim(model, masks, x)
    rounded = slim(model, masks, x, channel_multiple=multiple)
    assert rounded.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, rounded.model, x) <= 1e-5
    changed = False
    for layer, (before, after) in rounded.removed.items():
        plain_after = plain.removed[layer][1]
        # never below the plain width, and a multiple of the block unless that would exceed the original width
        assert plain_after <= after <= before
        assert after % multiple == 0 or after == before, (layer, before, plain_after, after)
        assert after - plain_after < multiple
        changed |= after != plain_after
    assert changed, "the random pruning left no width to round"
    assert count_parameters(rounded.model)[0] >= count_parameters(plain.model)[0]
    assert any(f"a multiple of {multiple}" in n for n in rounded.notes)
    # the channels kept for the width are read by nothing: their consumers' columns are zero (constants in the
    # biases), so the Linear/Conv weights hold as many non-zeros as the plain slim model's
    assert _nonzero_weights(rounded.model) == _nonzero_weights(plain.model)


def _nonzero_weights(model: nn.Module) -> int:
    return sum(int(m.weight.count_nonzero()) for m in model.modules() if isinstance(m, _WEIGHT_LAYERS))


def test_channel_multiple_must_be_positive() -> None:
    model, x = tiny_arch("mlp")
    with pytest.raises(PrunedropError, match="channel_multiple"):
        slim(model, _random_prune(model), x, channel_multiple=0)


class _ScaledConvs(nn.Module):
    """A convolution whose output a bare parameter scales per channel before the next one."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, 4).view(4, 1, 1))
        self.c2 = nn.Conv2d(4, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.relu(self.c1(x)) * self.scale).flatten(1)


def test_a_bare_parameter_that_scales_each_channel_is_sliced_with_it() -> None:
    """A per-channel scale of the model's own (a layer scale γ) let no channel go ("they pass through the bare
    parameter scale"); it is sliced with the channels now."""
    torch.manual_seed(0)
    model, x = _ScaledConvs().eval(), torch.randn(2, 1, 5, 5)
    masks = _prune_units(model, {"c1": [1]})
    result = slim(model, masks, x)
    assert result.removed["c1"] == (4, 3), result.notes
    assert tuple(result.model.scale.shape) == (3, 1, 1)
    assert torch.equal(result.model.scale.detach().flatten(), model.scale.detach().flatten()[[0, 2, 3]])
    assert result.max_abs_diff <= 1e-5 and not result.notes


class _LayerScaleResidual(nn.Module):
    """A residual stream whose branch a layer scale multiplies: ``γ`` of shape (1, C, 1, 1) on the model itself, or
    (``channels_last``) a (C,) parameter of a small module of its own applied after a permute, as ConvNeXt does; with
    ``offset`` a learned per-channel offset is added too."""

    def __init__(self, channels_last: bool = False, offset: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.c1 = nn.Conv2d(1, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 6, 3, padding=1)
        if channels_last:
            self.ls = _Scale(6)
        else:
            self.gamma = nn.Parameter(torch.linspace(0.2, 1.2, 6).view(1, 6, 1, 1))
        self.offset = nn.Parameter(torch.linspace(-1, 1, 6).view(1, 6, 1, 1)) if offset else None
        self.fc = nn.Linear(6 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        y = torch.relu(self.c2(h))
        y = self.ls(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if self.channels_last else self.gamma * y
        h = h + y
        if self.offset is not None:
            h = h + self.offset
        return self.fc(nn.functional.max_pool2d(h, 2).flatten(1))


class _Scale(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.linspace(0.2, 1.2, n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("offset", [False, True])
def test_a_layer_scale_on_a_residual_stream_lets_its_channels_go(channels_last: bool, offset: bool) -> None:
    torch.manual_seed(0)
    model, x = _LayerScaleResidual(channels_last, offset).eval(), torch.randn(3, 1, 4, 4)
    assert set(unremovable_layers(model, x)) == {"fc"}
    masks = _prune_units(model, {"c1": [0, 4], "c2": [0, 4]})
    result = slim(model, masks, x)
    assert result.removed["c1"] == (6, 4) and result.removed["c2"] == (6, 4), result.notes
    gamma = result.model.ls.gamma if channels_last else result.model.gamma
    assert gamma.numel() == 4 and isinstance(gamma, nn.Parameter)
    if offset:  # the removed channels' offsets reach the head as constants: folded into its bias
        assert result.model.offset.numel() == 4
    assert result.max_abs_diff <= 1e-5, result.notes
    # the slim model trains: its parameters are leaves of its own
    assert all(p.is_leaf and p.requires_grad for p in result.model.parameters())


class _LerpStream(nn.Module):
    """A stream mixed with its branch by ``torch.lerp`` with a per-channel weight, then gated by ``torch.addcmul``
    with a per-channel parameter as one factor."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.mix = nn.Parameter(torch.linspace(0.1, 0.9, 6).view(1, 6, 1, 1))
        self.gate = nn.Parameter(torch.linspace(-1, 1, 6).view(1, 6, 1, 1))
        self.fc = nn.Linear(6 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        h = torch.lerp(h, torch.relu(self.c2(h)), self.mix)
        h = torch.addcmul(h, h, self.gate, value=0.5)
        return self.fc(nn.functional.max_pool2d(h, 2).flatten(1))


def test_a_lerp_weight_and_an_addcmul_factor_are_sliced_with_the_channels() -> None:
    """A per-channel parameter read by ``torch.lerp`` or ``torch.addcmul`` kept every channel of the stream ("they pass
    through the bare parameter mix"); both act on each channel on its own, as a product does."""
    torch.manual_seed(0)
    model, x = _LerpStream().eval(), torch.randn(3, 1, 4, 4)
    assert set(unremovable_layers(model, x)) == {"fc"}
    result = slim(model, _prune_units(model, {"c1": [1, 4], "c2": [1, 4]}), x)
    assert result.removed["c1"] == (6, 4) and result.removed["c2"] == (6, 4), result.notes
    assert result.model.mix.numel() == 4 and result.model.gate.numel() == 4
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _MatmulPooling(nn.Module):
    """Attention pooling over the pixels written as a batched matmul: a 1x1 convolution scores each pixel, a softmax
    over them, and ``h.flatten(2) @ w`` in one of three spellings."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1)
        self.score, self.fc = nn.Conv2d(12, 1, 1), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        w = torch.softmax(self.score(h).flatten(2), dim=-1)  # (batch, 1, pixels)
        if self.how == "bmm":
            pooled = torch.bmm(h.flatten(2), w.transpose(1, 2)).squeeze(-1)
        elif self.how == "matmul":
            pooled = torch.matmul(h.flatten(2), w.flatten(1).unsqueeze(-1)).squeeze(-1)
        elif self.how == "einsum":
            pooled = torch.einsum("nchw,nhw->nc", h, w.view(-1, *h.shape[2:]))
        elif self.how == "einsum_list":  # the operands as a list, a map of one "head" kept as an axis
            pooled = torch.einsum("nchw,nkhw->nck", [h, w.view(-1, 1, *h.shape[2:])]).flatten(1)
        else:
            pooled = (h.flatten(2) @ w.transpose(1, 2)).flatten(1)
        return self.fc(pooled)


@pytest.mark.parametrize("how", ["bmm", "matmul", "operator", "einsum", "einsum_list"])
def test_attention_pooling_written_as_a_matmul_lets_the_pooled_channels_go(how: str) -> None:
    """``h.flatten(2) @ w`` (or its einsum) reads channel c of h alone in row c: Torch-Pruning read the product as
    element-wise, joined the pixels to the channels and gave up ("grew past … through a flatten"), so the map's layer
    kept every unit."""
    torch.manual_seed(0)
    model, x = _MatmulPooling(how).eval(), torch.randn(4, 1, 6, 6)
    assert set(unremovable_layers(model, x)) <= {"fc", "score"}
    result = slim(model, _prune_units(model, {"c2": [2, 7, 11]}), x)
    assert result.removed["c2"] == (12, 9), result.notes
    assert result.model.fc.in_features == 9 and result.model.score.in_channels == 9
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _TimePooling(nn.Module):
    """A 1-d convolution's map pooled over time by an einsum with a softmax of one-channel scores."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(4, 8, 3, padding=1), nn.Conv1d(8, 12, 3, padding=1)
        self.score, self.fc = nn.Conv1d(12, 1, 1), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.einsum("ncl,nl->nc", h, torch.softmax(self.score(h).squeeze(1), dim=-1)))


def test_a_1d_map_pooled_over_time_by_an_einsum_lets_its_channels_go() -> None:
    torch.manual_seed(0)
    model, x = _TimePooling().eval(), torch.randn(4, 4, 10)
    result = slim(model, _prune_units(model, {"c2": [2, 7, 11]}), x)
    assert result.removed["c2"] == (12, 9), result.notes
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _GlobalContext(nn.Module):
    """GCNet's global-context block: a softmax over the pixels of a one-channel map, the context as the 4-d matmul
    ``h.view(n, c, -1).unsqueeze(1) @ attention``, viewed as (n, c, 1, 1), a bottleneck, added back to the stream."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1)
        self.attn, self.t1, self.t2 = nn.Conv2d(12, 1, 1), nn.Conv2d(12, 4, 1), nn.Conv2d(4, 12, 1)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        n, c, height, width = h.shape
        attention = torch.softmax(self.attn(h).view(n, 1, height * width), dim=-1).unsqueeze(-1)
        context = (h.view(n, c, height * width).unsqueeze(1) @ attention).view(n, c, 1, 1)
        return self.fc((h + self.t2(torch.relu(self.t1(context)))).mean((2, 3)))


def test_a_global_context_block_lets_the_stream_channels_go() -> None:
    """The context's (n, 1, C, 1) view back to (n, C, 1, 1) read as channels moving elsewhere, and the matmul joined
    the pixels to them: the stream and the block's last convolution kept every channel."""
    torch.manual_seed(0)
    model, x = _GlobalContext().eval(), torch.randn(4, 1, 6, 6)
    assert set(unremovable_layers(model, x)) <= {"fc", "attn"}
    result = slim(model, _prune_units(model, {"c2": [2, 7, 11], "t2": [2, 7, 11]}), x)
    assert result.removed["c2"] == (12, 9) and result.removed["t2"] == (12, 9), result.notes
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _ChannelWeighting(nn.Module):
    """An einsum that sums over the channels (a per-example weighting of them, ``"nchw,nc->nhw"``): no pooling of
    pixels; the channels meet in the sum and must stay coupled to the weights."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.att = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1), nn.Linear(12, 12)
        self.fc = nn.Linear(36, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        weights = torch.softmax(self.att(h.mean((2, 3))), dim=1)
        return self.fc(torch.einsum("nchw,nc->nhw", h, weights).flatten(1))


def test_an_einsum_over_the_channels_is_not_read_as_pooling() -> None:
    torch.manual_seed(0)
    model, x = _ChannelWeighting().eval(), torch.randn(4, 1, 6, 6)
    result = slim(model, _prune_units(model, {"c2": [2, 7]}), x)  # whatever it removes, the function stays
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _GraphConv(nn.Module):
    """Graph convolutions over 9 nodes, ``A @ linear(h)``: A a normalised adjacency buffer, or a learned adjacency
    and a token-mixing matrix (parameters of the model's own code), always on the left of the nodes' features."""

    def __init__(self, learned: bool) -> None:
        super().__init__()
        adjacency = torch.eye(9) + torch.diag(torch.ones(8), 1) + torch.diag(torch.ones(8), -1)
        adjacency = adjacency / adjacency.sum(1, keepdim=True)
        if learned:
            self.adj, self.mix = nn.Parameter(adjacency), nn.Parameter(torch.eye(9) + 0.1 * torch.randn(9, 9))
        else:
            self.register_buffer("adj", adjacency)
            self.mix = None
        self.g1, self.g2, self.fc = nn.Linear(2, 8), nn.Linear(8, 12), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (batch, 9 nodes, 2 features)
        h = torch.relu(self.adj @ self.g1(x))
        h = torch.relu(torch.matmul(self.adj, self.g2(h)))
        if self.mix is not None:
            h = h + self.mix @ h
        return self.fc(h.mean(1))


@pytest.mark.parametrize("learned", [False, True])
def test_a_matrix_that_mixes_the_rows_on_the_left_lets_the_feature_channels_go(learned: bool) -> None:
    """``A @ h`` mixes the nodes (rows) of h and reads each feature column alone: torch.matmul folded the features
    into a batch of rows, which the graph read as channels mixed ("_ExpandOp, which mixes or embeds channels"), or A
    as a parameter the channels pass through, and g1 and g2 kept every unit."""
    torch.manual_seed(0)
    model, x = _GraphConv(learned).eval(), torch.randn(4, 9, 2)
    assert set(unremovable_layers(model, x)) == {"fc"}
    result = slim(model, _prune_units(model, {"g1": [0, 5], "g2": [2, 7, 11]}), x)
    assert result.removed["g1"] == (8, 6) and result.removed["g2"] == (12, 9), result.notes
    assert result.model.adj.shape == (9, 9) and result.model.fc.in_features == 9
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _LeftMixedConvMap(nn.Module):
    """A 1x1 convolution written by hand over a Conv1d's (batch, C, length) map, ``w @ h``: w mixes the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.w = nn.Conv1d(2, 8, 3, padding=1), nn.Parameter(torch.randn(6, 8))
        self.c2, self.fc = nn.Conv1d(6, 4, 3, padding=1), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(torch.relu(self.w @ torch.relu(self.c1(x))))).mean(-1))


def test_a_matrix_on_the_left_of_a_convolutions_map_mixes_its_channels_and_keeps_them() -> None:
    torch.manual_seed(0)
    model, x = _LeftMixedConvMap().eval(), torch.randn(4, 2, 9)
    assert "c1" in unremovable_layers(model, x)
    result = slim(model, _prune_units(model, {"c1": [1, 4], "c2": [0]}), x)
    assert result.removed.get("c1", (8, 8)) == (8, 8) and result.removed["c2"] == (4, 3), result.notes
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _AlongAxis(nn.Module):
    """An operation along one axis between two layers: a causal running mean over the rows of a Linear's (batch,
    rows, C) output (``cumsum(1)`` divided by a counts buffer), or a flip or a roll of a 1-d convolution's map over
    time."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.lin, self.gate = nn.Linear(4, 12), nn.Linear(4, 12)
        self.c1, self.c2 = nn.Conv1d(4, 12, 3, padding=1), nn.Conv1d(12, 6, 3, padding=1)
        self.register_buffer("counts", torch.arange(1, 6, dtype=torch.float32).view(1, 5, 1))
        self.fc = nn.Linear(12 if how == "cumsum_rows" else 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (batch, 5, 4)
        if self.how == "cumsum_rows":
            h = torch.cumsum(self.lin(x), dim=1) / self.counts * torch.sigmoid(self.gate(x))
            return self.fc(h[:, -1])
        h = torch.relu(self.c1(x.transpose(1, 2)))  # (batch, 12, 5)
        h = h.flip(-1) if self.how == "flip_time" else torch.roll(h, 2, dims=2)
        return self.fc(torch.relu(self.c2(h)).mean(-1))


@pytest.mark.parametrize("how", ["cumsum_rows", "flip_time", "roll_time"])
def test_a_cumulative_sum_flip_or_roll_along_another_axis_lets_the_channels_go(how: str) -> None:
    """Along the rows or time a channel of zeros stays zeros: a running mean's pruned channels stayed, "still
    produced by an untraced operand" (the counts it is divided by), as the cumulative sum was not known to keep
    zeros."""
    torch.manual_seed(0)
    model, x = _AlongAxis(how).eval(), torch.randn(4, 5, 4)
    masks = {"lin": [1, 4, 9], "gate": [1, 4, 9]} if how == "cumsum_rows" else {"c1": [1, 4, 9]}
    result = slim(model, _prune_units(model, masks), x)
    for name in masks:
        assert result.removed[name] == (12, 9), result.notes
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _TokensFlattened(nn.Module):
    """Per-token Linear layers over (batch, tokens, features), the last one's output flattened and read whole by the
    head (a PatchTST-style flatten head), by ``flatten(1)``, ``reshape(n, -1)`` or nn.Flatten; or a (batch, H, W, C)
    map of per-pixel Linears flattened."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.l1, self.l2 = nn.Linear(3, 10), nn.Linear(10, 6)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(6 * (4 if how == "pixels" else 5), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (batch, 5, 3)
        if self.how == "pixels":
            x = x[:, :4].reshape(-1, 2, 2, 3)  # (batch, 2, 2, 3): four pixels of three features
        h = torch.relu(self.l2(torch.relu(self.l1(x))))
        if self.how == "reshape":
            return self.fc(h.reshape(h.shape[0], -1))
        if self.how == "module":
            return self.fc(self.flat(h))
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("how", ["flatten", "reshape", "module", "pixels"])
def test_a_linears_tokens_flattened_lose_a_unit_at_every_token(how: str) -> None:
    """Channel c of a (batch, T, C) output is features c, C + c, … of its flattening: Torch-Pruning mapped it to the
    block c·T … c·T + T − 1, removing a unit broke the forward, and the early check named l2 unremovable."""
    torch.manual_seed(0)
    model, x = _TokensFlattened(how).eval(), torch.randn(4, 5, 3)
    assert set(unremovable_layers(model, x)) == {"fc"}
    result = slim(model, _prune_units(model, {"l1": [0, 7], "l2": [1, 4]}), x)
    tokens = 4 if how == "pixels" else 5
    assert result.removed["l1"] == (10, 8) and result.removed["l2"] == (6, 4), result.notes
    assert result.model.fc.in_features == 4 * tokens
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _Blurred(nn.Module):
    """Anti-aliased downsampling between two convolutions: a fixed binomial kernel (a buffer) applied per channel by
    ``F.conv2d(…, groups=C)``, one row per channel (``per_channel``), one row expanded in the forward
    (``expanded``), or per channel with the groups fixed in the model's code (``fixed``)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c1, self.c2, self.fc = _two_convs(8, 8, 6)
        k = torch.tensor([1.0, 2.0, 1.0])
        kernel = (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3)
        self.register_buffer("filt", kernel if how == "expanded" else kernel.repeat(8, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        channels = 8 if self.how == "fixed" else h.shape[1]
        kernel = self.filt.expand(channels, 1, 3, 3) if self.how == "expanded" else self.filt
        h = nn.functional.conv2d(nn.functional.pad(h, (1, 1, 1, 1), mode="reflect"), kernel, stride=2,
                                 groups=channels)
        return self.fc(torch.relu(self.c2(h)).mean((2, 3)))


@pytest.mark.parametrize("how", ["per_channel", "expanded"])
def test_a_fixed_depthwise_blur_lets_the_channels_before_it_go(how: str) -> None:
    """The kernel buffer read as an operand that feeds every channel: c1 kept its pruned units ("still produced by an
    untraced operand of … ConvolutionBackward0"). A kernel of one row per channel is sliced with them."""
    torch.manual_seed(0)
    model, x = _Blurred(how).eval(), torch.randn(4, 1, 8, 8)
    result = slim(model, _prune_units(model, {"c1": [1, 4, 6]}), x)
    assert result.removed["c1"] == (8, 5), result.notes
    assert result.model.filt.shape[0] == (1 if how == "expanded" else 5)
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


def test_a_blur_whose_groups_the_code_fixes_keeps_the_channels() -> None:
    torch.manual_seed(0)
    model, x = _Blurred("fixed").eval(), torch.randn(4, 1, 8, 8)
    result = slim(model, _prune_units(model, {"c1": [1, 4, 6]}), x)
    assert result.removed.get("c1", (8, 8)) == (8, 8) and result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _SoftExperts(nn.Module):
    """A soft mixture of three experts: their outputs stacked on a new axis, weighed by a softmax gate and summed over
    it by an einsum (the gates first or second)."""

    def __init__(self, equation: str) -> None:
        super().__init__()
        self.equation = equation
        self.inp, self.gate = nn.Linear(5, 8), nn.Linear(8, 3)
        self.experts = nn.ModuleList(nn.Linear(8, 12) for _ in range(3))
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        g = torch.softmax(self.gate(h), dim=-1)
        e = torch.stack([torch.relu(ex(h)) for ex in self.experts], dim=1)
        mixed = torch.einsum(self.equation, g, e) if self.equation.startswith("be,") else \
            torch.einsum(self.equation, e, g)
        return self.fc(mixed)


@pytest.mark.parametrize("equation", ["be,bed->bd", "bed,be->bd"])
def test_experts_stacked_and_weighed_by_an_einsum_lose_the_units_they_all_prune(equation: str) -> None:
    """The gates' three numbers were joined to the experts' first three channels: no expert could lose a unit, and
    tie_residual did not tie them (their noise never agreed on a channel)."""
    torch.manual_seed(0)
    model, x = _SoftExperts(equation).eval(), torch.randn(4, 5)
    from prunedrop.slim.coupling import coupled_producers

    assert coupled_producers(model, x) == [["experts.0", "experts.1", "experts.2"]]
    masks = {"experts.0": [1, 4, 9], "experts.1": [1, 4, 9], "experts.2": [1, 4, 9, 10]}
    result = slim(model, _prune_units(model, masks), x)
    assert all(result.removed[f"experts.{k}"] == (12, 9) for k in range(3)), result.notes
    assert any("[10]" in note for note in result.notes), result.notes  # pruned in one expert only: kept
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _SpatialTransformer(nn.Module):
    """A spatial transformer between two convolutions: a localisation layer predicts an affine transform from the
    pooled map, and ``F.grid_sample`` resamples the map at ``F.affine_grid``'s points."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = _two_convs(8, 8, 6)
        self.loc = nn.Linear(8, 6)
        with torch.no_grad():
            self.loc.weight.mul_(0.1)
            self.loc.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        theta = self.loc(h.mean((2, 3))).view(-1, 2, 3)
        h = nn.functional.grid_sample(h, nn.functional.affine_grid(theta, h.size(), align_corners=False),
                                      align_corners=False)
        return self.fc(torch.relu(self.c2(h)).mean((2, 3)))


def test_a_spatial_transformers_grid_holds_none_of_the_channels_it_resamples() -> None:
    """The graph read grid_sample as element-wise, joined the grid's two coordinates (and loc, which made them) to
    c1's first channels, and c1 kept pruned units "still produced by loc"."""
    torch.manual_seed(0)
    model, x = _SpatialTransformer().eval(), torch.randn(4, 1, 6, 6)
    result = slim(model, _prune_units(model, {"c1": [0, 1, 5], "loc": [4]}), x)
    assert result.removed["c1"] == (8, 5) and result.model.loc.in_features == 5, result.notes
    assert result.removed.get("loc", (6, 6)) == (6, 6)  # the grid's coordinates are no channels: loc stays whole
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _PerPosition(nn.Module):
    """A (C, W) parameter multiplied into (N, C, H, W): the graph slices its last axis (W), which is not the
    channels: the slim model's check must catch it and keep the channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.p = nn.Parameter(torch.linspace(0.5, 1.5, 16).view(4, 4))
        self.fc = nn.Linear(4 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc((torch.relu(self.c1(x)) * self.p).flatten(1))


def test_a_parameter_sliced_along_the_wrong_axis_keeps_the_channels() -> None:
    torch.manual_seed(0)
    model, x = _PerPosition().eval(), torch.randn(3, 1, 4, 4)
    result = slim(model, _prune_units(model, {"c1": [1]}), x)
    assert result.removed["c1"] == (4, 4) and any("kept as zeros" in n for n in result.notes), result.notes
    assert result.max_abs_diff <= 1e-5


@pytest.mark.skipif(not hasattr(nn, "RMSNorm"), reason="nn.RMSNorm is new in torch 2.4")
def test_a_functional_layers_weight_is_named_with_its_layer() -> None:
    """nn.RMSNorm calls F.rms_norm with its weight, which the graph sees as a bare parameter: the note said "the bare
    parameter n.weight" where the RMSNorm n, which normalises across the channels, keeps them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.RMSNorm(8), nn.Linear(8, 3)).eval()
    result = slim(model, _prune_units(model, {"0": [1, 2]}), torch.randn(4, 6))
    assert any("1.weight, a parameter of 1 (RMSNorm)" in n for n in result.notes), result.notes
    assert result.max_abs_diff <= 1e-5


class _Decoder(nn.Module):
    """A convolution upsampled by a transposed convolution (a decoder); ``shift`` puts a BatchNorm in between,
    whose shift turns a pruned channel into a non-zero constant."""

    def __init__(self, shift: bool = False) -> None:
        super().__init__()
        self.down = nn.Conv2d(1, 6, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(6) if shift else nn.Identity()
        self.up = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.up(torch.relu(self.bn(self.down(x))))).flatten(1))


@pytest.mark.parametrize("shift", [False, True])
def test_a_transposed_convolution_loses_the_input_channels_a_pruned_layer_no_longer_writes(shift: bool) -> None:
    """A pruned channel read by a transposed convolution stayed ("which cannot lose single channels"): it leaves
    when it is exactly 0 there; a non-zero constant (a BatchNorm shift) a transposed convolution would spread
    unevenly, so that channel stays, and the note says why."""
    torch.manual_seed(0)
    model = _Decoder(shift).eval()
    if shift:
        with torch.no_grad():
            model.bn.bias.fill_(0.5)
            model.bn.running_mean.uniform_(-0.2, 0.2)
    x = torch.randn(3, 1, 8, 8)
    masks = _prune_units(model, {"down": [1, 4]})
    result = slim(model, masks, x)
    assert result.max_abs_diff <= 1e-5
    if shift:
        assert result.removed.get("down", (6, 6)) == (6, 6)
        assert any("transposed convolution spreads" in n for n in result.notes), result.notes
    else:
        assert result.removed["down"] == (6, 4)
        assert result.model.up.weight.shape[0] == 4 and result.model.up.in_channels == 4


class _UNet(nn.Module):
    """conv → transposed conv (upsampling) → concatenated with the skip → conv → a per-pixel head."""

    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.down = nn.Conv2d(2, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2, groups=groups)
        self.skip = nn.Conv2d(2, 4, 3, padding=1)
        self.mix = nn.Conv2d(10, 5, 3, padding=1)
        self.head = nn.Conv2d(5, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = torch.relu(self.up(torch.relu(self.down(x))))
        return self.head(torch.relu(self.mix(torch.cat([up, torch.relu(self.skip(x))], 1))))


@torch.no_grad()
def test_a_transposed_convolution_loses_its_pruned_output_channels() -> None:
    """A decoder's upsampling layer is a unit layer too: its pruned output channels (its weight's axis 1) leave, with
    the slice of the next layer that reads them through the concatenation. They stayed ("they pass through the
    transposed convolution up, which cannot lose single channels") and sbp/group_vd left the layer dense."""
    torch.manual_seed(0)
    model = _UNet().eval()
    x = torch.randn(3, 2, 8, 8)
    keep = torch.ones(6, dtype=torch.bool)
    keep[[1, 4]] = False
    model.up.weight[:, ~keep] = 0
    model.up.bias[~keep] = 0
    assert torch.equal(silent_units(model.up), ~keep)
    result = slim(model, {"up": keep}, x)
    assert result.removed["up"] == (6, 4)
    assert result.model.up.weight.shape == (8, 4, 2, 2) and result.model.up.out_channels == 4
    assert result.model.mix.weight.shape[1] == 8  # 4 upsampled channels + 4 from the skip
    assert result.max_abs_diff <= 1e-5
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5
    # a grouped one cannot lose single channels: it stays, and says so
    grouped = _UNet(groups=2).eval()
    grouped.up.weight[:, 1] = 0
    grouped.up.bias[1] = 0
    kept = slim(grouped, {"up": torch.tensor([True, False, True, True, True, True])}, x)
    assert kept.removed.get("up", (6, 6)) == (6, 6)
    assert any("transposed convolution up" in n for n in kept.notes), kept.notes


def test_sbp_and_group_vd_convert_an_ungrouped_transposed_convolution_only() -> None:
    from prunedrop.convert import ConversionSummary, to_variational
    from prunedrop.layers import ConvTranspose2dGroupVD, ConvTranspose2dLogNormal
    from prunedrop.recipes import Recipe

    x = torch.randn(2, 2, 8, 8)
    for method, layer_type in (("sbp", ConvTranspose2dLogNormal), ("group_vd", ConvTranspose2dGroupVD)):
        converted = to_variational(_UNet().eval(), Recipe(method=method), example_input=x)
        assert type(converted.up) is layer_type and converted.up.num_units == 6
        summary = ConversionSummary()
        grouped = to_variational(_UNet(groups=2).eval(), Recipe(method=method), summary=summary, example_input=x)
        assert type(grouped.up) is nn.ConvTranspose2d
        assert "up" not in summary.converted


# ------------------------------------------------------------------------------- units that can never leave


class _GroupNormCNN(nn.Module):
    """conv → GroupNorm twice, then a plain conv → ReLU block: GroupNorm mixes its channels' statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.n1(self.c1(x)))
        x = torch.relu(self.c3(torch.relu(self.c2(x))))
        return self.fc(x.mean((2, 3)))


def test_unremovable_layers_names_the_blocker_before_any_pruning() -> None:
    from prunedrop.inspection import inspect_model
    from prunedrop.recipes import Recipe
    from prunedrop.slim import unremovable_layers
    from prunedrop.stages.conversion import convert

    torch.manual_seed(0)
    model = _GroupNormCNN().eval()
    x = torch.randn(2, 1, 6, 6)
    blocked = unremovable_layers(model, x)
    assert set(blocked) == {"c1", "fc"}  # c2 and c3 can lose units; c1 feeds the GroupNorm, fc the output
    assert "n1 (GroupNorm)" in blocked["c1"] and "model output" in blocked["fc"]
    # slim agrees: c1's pruned units stay, c2's leave
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for layer in (masked.c1, masked.c2):
            layer.weight[:2].zero_()
            layer.bias[:2].zero_()
    result = slim(masked, {"c1": torch.tensor([False] * 2 + [True] * 6), "c2": torch.tensor([False] * 2 + [True] * 6)},
                  x)
    assert result.removed["c1"] == (8, 8) and result.removed["c2"] == (8, 6)
    # by default a structured method leaves c1 dense, said before training: in the conversion's notes (compress logs
    # them), the report's conversion and inspect's table and warnings
    logs: list[str] = []
    converted = convert(copy.deepcopy(model), Recipe(method="sbp"), x, logs.append)
    assert converted.summary.converted == ["c2", "c3"] and set(converted.summary.excluded) == {"c1", "fc"}
    assert converted.to_dict()["conversion"]["unremovable"] == {"c1": blocked["c1"]}
    assert not isinstance(converted.model.c1, VariationalLayer)
    assert any(line.startswith("note: left dense, as slimming could never remove any of their units: c1 (they pass "
                               "through n1 (GroupNorm)") for line in logs), logs
    assert logs[0].startswith("checking which layers' units slimming can remove"), logs  # said before the wait
    inspected = inspect_model(model, x, Recipe(method="sbp"))
    row = next(e for e in inspected["layers"] if e["name"] == "c1")
    assert row["status"] == "excluded" and row["reason"].endswith("(keep_unremovable)")
    assert inspected["summary"]["converted"] == ["c2", "c3"]
    assert any(w.startswith("left dense, as slimming could never remove") for w in inspected["warnings"])
    # keep_unremovable: false converts it, as before, and says that its pruned units stay as zeros
    logs.clear()
    converted = convert(copy.deepcopy(model), Recipe(method="sbp", keep_unremovable=False), x, logs.append)
    assert converted.summary.converted == ["c1", "c2", "c3"] and not converted.summary.unremovable
    note = next(n for n in converted.summary.notes if "cannot remove any unit" in n)
    assert "1 converted layer(s)" in note and "c1: they pass through n1 (GroupNorm)" in note
    assert any("cannot remove any unit" in line for line in logs)
    warnings = inspect_model(model, x, Recipe(method="sbp", keep_unremovable=False))["warnings"]
    assert any("cannot remove any unit of 1 converted layer(s)" in w for w in warnings)
    # sbp_sparse_vd's per-weight noise prunes c1's single weights: converted, with the note
    both = convert(copy.deepcopy(model), Recipe(method="sbp_sparse_vd"), x, logs.append).summary
    assert both.converted == ["c1", "c2", "c3"]
    assert any("its per-weight noise still prunes their single weights" in n for n in both.notes)
    # per-weight noise removes no units anyway: no such note, and no check to announce
    logs.clear()
    convert(copy.deepcopy(model), Recipe(), x, logs.append)
    assert not any(line.startswith("checking which layers") for line in logs), logs
    assert not any("cannot remove" in n for n in convert(copy.deepcopy(model), Recipe(), x, logs.append).summary.notes)


class _LayerNormResidual(nn.Module):
    """A pre-norm residual MLP: the stem and the blocks' second layers write a stream that LayerNorms read (their
    units can never leave), the blocks' first layers' hidden units can."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.norms = nn.ModuleList([nn.LayerNorm(8), nn.LayerNorm(8)])
        self.up = nn.ModuleList([nn.Linear(8, 16), nn.Linear(8, 16)])
        self.down = nn.ModuleList([nn.Linear(16, 8), nn.Linear(16, 8)])
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for norm, up, down in zip(self.norms, self.up, self.down, strict=True):
            h = h + down(torch.relu(up(norm(h))))
        return self.head(h)


@pytest.mark.parametrize("method", ["sbp", "group_vd"])
def test_structured_methods_leave_a_layernorm_stream_dense(method: str) -> None:
    from prunedrop.convert import ConversionSummary, to_variational
    from prunedrop.recipes import Recipe

    torch.manual_seed(0)
    model, x = _LayerNormResidual().eval(), torch.randn(4, 6)
    summary = ConversionSummary()
    variational = to_variational(copy.deepcopy(model), Recipe(method=method), summary=summary, example_input=x)
    assert summary.converted == ["up.0", "up.1"]
    assert set(summary.unremovable) == {"stem", "down.0", "down.1"} and summary.output_layers == ["head"]
    assert all("LayerNorm" in why for why in summary.unremovable.values())
    assert type(variational.stem) is nn.Linear and isinstance(variational.up[0], VariationalLayer)
    # the user's keep_output_layers: false converts the head (this key never keeps the outputs' layers)
    summary = ConversionSummary()
    to_variational(copy.deepcopy(model), Recipe(method=method, keep_output_layers=False), summary=summary,
                   example_input=x)
    assert "head" in summary.converted and "head" not in summary.unremovable
    # the globs still decide what is selected: an excluded layer is the globs', not this key's
    summary = ConversionSummary()
    to_variational(copy.deepcopy(model), Recipe(method=method, exclude=["stem"]), summary=summary, example_input=x)
    assert "stem" not in summary.unremovable and "stem" in summary.excluded
    # without an example nothing is traced: every layer is converted, as before the key
    summary = ConversionSummary()
    to_variational(copy.deepcopy(model), Recipe(method=method), summary=summary)
    assert {"stem", "down.0", "down.1"} <= set(summary.converted)


class _ConvNeXtBlock(nn.Module):
    """ConvNeXt's block: a depthwise convolution whose channels go through a channels-last LayerNorm, an inverted
    MLP, and back onto the residual stream."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.up, self.down = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.head = nn.Linear(c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        y = self.norm(self.dw(h).permute(0, 2, 3, 1))
        h = h + self.down(nn.functional.gelu(self.up(y))).permute(0, 3, 1, 2)
        return self.head(h.mean((2, 3)))


def test_a_depthwise_convolution_whose_channels_meet_a_layernorm_is_unremovable() -> None:
    """A depthwise convolution produces no channel of its own group (its units follow its input's), so the check
    skipped it: ConvNeXt's depthwise convolutions were converted and their pruned units all kept by slimming."""
    torch.manual_seed(0)
    model, x = _ConvNeXtBlock().eval(), torch.randn(2, 1, 6, 6)
    blocked = unremovable_layers(model, x)
    assert set(blocked) == {"stem", "dw", "down", "head"} and "norm (LayerNorm)" in blocked["dw"], blocked
    masks = _prune_units(model, {"dw": [1, 4], "up": [0, 5]})
    result = slim(model, masks, x)
    assert result.removed["dw"] == (8, 8) and result.removed["up"] == (32, 30)  # slim agrees
    # a depthwise convolution that nothing blocks stays removable (MobileNet's)
    mobile = nn.Sequential(nn.Conv2d(1, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(),
                           nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    assert set(unremovable_layers(mobile, torch.randn(2, 1, 6, 6))) == {"6"}


def test_a_model_whose_units_can_never_leave_is_refused_before_training() -> None:
    """A GroupNorm after every convolution: sbp could remove nothing, and trained the whole run to export a model
    of the same size (1.00× fewer FLOPs on the digits GroupNorm CNN); now it stops at once and says why."""
    from prunedrop.convert import to_variational
    from prunedrop.recipes import Recipe

    class AllNormed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.n1 = nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8)
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.n1(self.c1(x))).mean((2, 3)))

    x = torch.randn(2, 1, 6, 6)
    with pytest.raises(PrunedropError, match=r"slimming could never remove any unit of c1, so it stays dense "
                                             r"\(keep_unremovable; sparse_vd prunes its single weights\)"):
        to_variational(AllNormed(), Recipe(method="sbp"), dry_run=True, example_input=x)
    assert to_variational(AllNormed(), Recipe(method="sbp_sparse_vd"), example_input=x).c1 is not None


def test_a_saved_run_without_keep_unremovable_converts_as_it_did() -> None:
    """Run folders written before the key existed trained every layer's noise: their recorded recipe is read so,
    and their checkpoints load; a new recipe leaves such layers dense."""
    from prunedrop.recipes import Recipe

    assert Recipe().keep_unremovable is True
    stored = {k: v for k, v in Recipe(method="sbp").to_dict().items() if k != "keep_unremovable"}
    assert Recipe.from_dict(stored, saved_run=True).keep_unremovable is False
    assert Recipe.from_dict(stored).keep_unremovable is True
    assert Recipe.from_dict({**stored, "keep_unremovable": True}, saved_run=True).keep_unremovable is True


class _FixedWidths(nn.Module):
    """A CNN whose forward fixes the second convolution's width itself (``view(-1, 8 * 2 * 2)``), as many
    hand-written classifiers do; the first convolution's width is free."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = nn.functional.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(x.view(-1, 8 * 2 * 2))


def test_units_the_forward_fixes_are_kept_as_zeros_and_the_rest_go() -> None:
    """Removing c2's units made the slim model fail ("shape '[-1, 32]' is invalid for input of size ...") and the
    whole run ended in an error after its training; now c2 keeps its pruned units as zeros, named in a note, and
    c1's still go."""
    torch.manual_seed(0)
    model, x = _FixedWidths().eval(), torch.randn(4, 1, 4, 4)
    masks = _prune_units(model, {"c1": [0, 3], "c2": [1, 2, 5]})
    result = slim(model, masks, x)
    assert result.removed["c1"] == (6, 4) and result.removed["c2"] == (8, 8)
    assert any(note.startswith("c2: pruned units kept as zeros") and "depends on their number" in note
               for note in result.notes), result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5
    assert count_parameters(result.model) < count_parameters(model)


def test_units_the_forward_fixes_are_named_before_training() -> None:
    torch.manual_seed(0)
    model, x = _FixedWidths().eval(), torch.randn(4, 1, 4, 4)
    before = [p.clone() for p in model.parameters()]
    stuck = unremovable_layers(model, x)
    assert set(stuck) == {"c2", "fc"} and "depends on the number of units" in stuck["c2"], stuck
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # a copy was tried
    assert unremovable_layers(*tiny_arch("lenet5")) == {"fc2": "they reach the model output"}  # sizes derived


def test_a_slim_that_breaks_leaves_no_frames_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    """The early check keeps the errors of the slims that break; each held, through the error it was raised from
    (``raise … from None`` keeps it as ``__context__``), the frames of the slim: its traced graph and model copies.
    With the collector paused during each slim, dozens of them went to its old generations (28 million objects,
    7.5 GB on DPN-68). The error leaves without those tracebacks, and the collector runs again once the slim is done."""
    import gc

    from prunedrop.slim import stage

    torch.manual_seed(0)
    model, x = _FixedWidths().eval(), torch.randn(4, 1, 4, 4)
    masks = _prune_units(model, {"c2": [1]})
    enabled = []
    original = stage.trace
    monkeypatch.setattr(stage, "trace", lambda *a, **k: enabled.append(gc.isenabled()) or original(*a, **k))
    with pytest.raises(PrunedropError) as caught:
        stage._slim_once(model, masks, x, atol=1e-5, fold_borders=False, channel_multiple=1)
    assert enabled == [False] and gc.isenabled()
    error, chained = caught.value, []
    while error is not None:
        chained.append(error)
        error = error.__context__
    assert len(chained) == 2 and "no longer runs" in str(chained[0]), chained  # the view's RuntimeError beneath
    assert chained[1].__traceback__ is None  # (the raise above gave the first a traceback of this test's frames)
    assert all(frame.f_code.co_name != "_slim_once" for frame, _ in __import__("traceback").walk_tb(
        caught.value.__traceback__))  # (the slim's own frame, which holds its graph)


def test_untraced_drops_the_tracebacks_of_every_chained_error() -> None:
    from prunedrop.slim.common import untraced

    def fail() -> None:
        try:
            {}["missing"]
        except KeyError:
            try:
                raise ValueError("while handling")
            except ValueError as during:
                raise RuntimeError("outer") from during

    with pytest.raises(RuntimeError) as caught:
        fail()
    error = untraced(caught.value)
    chained = [error, error.__cause__, error.__cause__.__context__]
    assert [type(e) for e in chained] == [RuntimeError, ValueError, KeyError]
    assert all(e.__traceback__ is None for e in chained)


def test_the_collector_pause_nests_and_survives_errors() -> None:
    import gc

    from prunedrop.slim.common import paused_gc

    assert gc.isenabled()
    with pytest.raises(ValueError), paused_gc():
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner pause leaves the outer one's
        raise ValueError
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # a collector the caller had paused stays paused
    finally:
        gc.enable()


class _Shuffles(nn.Module):
    """c1's channels go through a channel shuffle (a view into 4 fixed groups), c2's through a pixel shuffle
    (4 channels → 1), which the dependency graph misreads; c3's go plainly into the head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c3, self.fc = nn.Conv2d(2, 6, 3, padding=1), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        n, c, h, w = x.shape
        x = x.view(n, 4, c // 4, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = nn.functional.pixel_shuffle(torch.relu(self.c2(x)), 2)
        return self.fc(torch.relu(self.c3(x)).mean((2, 3)))


def test_units_moved_by_shuffles_are_kept_as_zeros_and_named() -> None:
    """A pixel shuffle made the removal's planning fail with an IndexError (a traceback after the training); then
    its IndexError was the reason given. A channel shuffle is recorded while tracing now: its channels stay, and the
    notes name the operation; a pixel shuffle's blocks are mapped (c2's units 0 and 5 stay: their blocks are
    live)."""
    torch.manual_seed(0)
    model, x = _Shuffles().eval(), torch.randn(4, 1, 6, 6)
    masks = _prune_units(model, {"c1": [1], "c2": [0, 5], "c3": [2, 4]})
    result = slim(model, masks, x)
    assert result.removed["c1"] == (8, 8) and result.removed["c2"] == (8, 8) and result.removed["c3"] == (6, 4)
    for name, why in (("c1", "(View: "), ("c2", "a pixel shuffle joins each with the 3 other channel(s)")):
        assert any(note.startswith(f"{name}: kept pruned channel(s)") and why in note
                   for note in result.notes), result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5
    stuck = unremovable_layers(_Shuffles().eval(), x)
    assert set(stuck) == {"c1", "c2", "fc"} and "(View: " in stuck["c1"] and "blocks of 4" in stuck["c2"], stuck


class _SubPixel(nn.Module):
    """An upsampling block in the middle (EDSR's, NAFNet's): ``up`` writes 4 channels per output channel of the
    pixel shuffle; ``skip`` is added after it (``residual``), coupling ``skip``'s unit k with ``up``'s block k. Then
    a pixel unshuffle spreads ``c2``'s unit i over 4 channels that ``c3`` reads."""

    def __init__(self, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.c1, self.up, self.skip = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 24, 1), nn.Conv2d(1, 6, 1)
        self.c2, self.c3, self.fc = nn.Conv2d(6, 5, 3, padding=1), nn.Conv2d(20, 4, 1), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.pixel_shuffle(self.up(torch.relu(self.c1(x))), 2)
        if self.residual:
            h = h + self.skip(nn.functional.interpolate(x, scale_factor=2.0))
        h = nn.functional.pixel_unshuffle(torch.relu(self.c2(torch.relu(h))), 2)
        return self.fc(torch.relu(self.c3(h)).mean((2, 3)))


@pytest.mark.parametrize("residual", [False, True])
def test_a_pixel_shuffle_block_leaves_whole(residual: bool) -> None:
    """Pixel shuffles were stopped as moving channels: the layer before one kept every unit. Its output channel k
    is now the block of input channels 4k … 4k + 3: a block leaves when all of its units are pruned (and a unit added
    to it after the shuffle), the next layer losing one input channel; a block with a live unit keeps its pruned ones,
    named. After a pixel unshuffle, a unit leaves with its 4 columns in the next layer."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, 5, 5)
    # before training, the layer before the shuffle is named: unit noise prunes its units one by one, and a block
    # leaves whole (slimming removes whole blocks of pruned units all the same, as below)
    stuck = unremovable_layers(_SubPixel(residual).eval(), x)
    assert set(stuck) == {"fc", "up", *(["skip"] if residual else [])}, stuck
    assert stuck["up"].startswith("its units leave only in whole blocks of 4"), stuck
    if residual:  # added to up's blocks, which stay: its channels never leave either
        assert stuck["skip"].startswith("its channels are coupled element-wise to up, which cannot lose units"), stuck
    model = _SubPixel(residual).eval()
    blocks = [4, 5, 6, 7, 16, 17, 18, 19, 20, 21]  # blocks 1 and 4 whole, block 5 half
    masks = _prune_units(model, {"up": blocks, "c2": [1, 3], **({"skip": [1, 5]} if residual else {})})
    result = slim(model, masks, x)
    assert result.removed["up"] == ((24, 20) if residual else (24, 16)), (result.removed, result.notes)
    assert _module(result.model, "c2").in_channels == (5 if residual else 4)
    assert result.removed["c2"] == (5, 3) and _module(result.model, "c3").in_channels == 12
    if residual:  # numbered as skip's units: block 4 is whole but skip's unit 4 live, block 5 half
        assert {n.split(":")[1] for n in result.notes} == {" kept pruned channel(s) [4]", " kept pruned channel(s) [5]"}
        assert any("[5]: pruned in skip but still produced by up" in n for n in result.notes), result.notes
    else:
        kept = [n for n in result.notes if n.startswith("up") and "pixel shuffle joins" in n]
        assert kept and "[20, 21]" in kept[0], result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _EveryOther(nn.Module):
    """Every other channel of c1 (``h[:, ::2]``, or the odd ones, ``h[:, 1::2]``) read by c2."""

    def __init__(self, start: int) -> None:
        super().__init__()
        self.start = start
        self.c1, self.c2, self.fc = _two_convs(16, 8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))[:, self.start::2]
        return self.fc(torch.relu(self.c2(h)).mean((2, 3)))


@pytest.mark.parametrize("start", [0, 1])
def test_every_other_channel_read_is_named_before_training(start: int) -> None:
    """The early check removed units 0, 1 and the last: a pair keeps the stride's parity, the slim ran and matched,
    and the layer was converted, trained, and kept its pruned units as zeros after all. Units 0, 2 and the last
    shift it."""
    torch.manual_seed(0)
    stuck = unremovable_layers(_EveryOther(start).eval(), torch.randn(4, 1, 6, 6))
    assert set(stuck) == {"c1", "fc"} and "breaks the forward" in stuck["c1"], stuck


class _SlicedBeside(nn.Module):
    """c1's first 8 channels feed c2; its last 8 are concatenated, through a channel slice and a spatial max, beside
    c2's pooled channels (the slice's width is one Torch-Pruning cannot infer)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = _two_convs(16, 8, 12, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        y = torch.relu(self.c2(x[:, :8]))
        return self.fc(torch.cat([y.mean((2, 3)), x[:, 8:].amax((2, 3))], 1))


def test_a_concatenation_beside_a_channel_slice_keeps_its_offsets() -> None:
    """Torch-Pruning could not infer the sliced input's width, so the concatenation got no index mapping: c2's
    channels looked coupled to c1's ("pruned in c2 but still produced by c1") and none left; the real sizes,
    recorded while tracing, map them."""
    torch.manual_seed(0)
    model, x = _SlicedBeside().eval(), torch.randn(4, 1, 6, 6)
    masks = _prune_units(model, {"c2": [0, 5, 11]})
    result = slim(model, masks, x)
    assert result.removed["c2"] == (12, 9), (result.removed, result.notes)
    assert _module(result.model, "fc").in_features == 17
    assert not any("coupled" in note for note in result.notes), result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _Pieces(nn.Module):
    """The model input concatenated before c1's channels; c2's split into unequal pieces for two branches."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(9, 10, 3, padding=1)
        self.a, self.b, self.fc = nn.Conv2d(6, 5, 1), nn.Conv2d(4, 5, 1), nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.cat([x, torch.relu(self.c1(x))], 1)))
        p, q = h.split([6, 4], 1)
        return self.fc(torch.cat([torch.relu(self.a(p)), torch.relu(self.b(q))], 1).mean((2, 3)))


def test_concatenations_and_splits_map_the_pieces_the_call_had() -> None:
    """The input image before c1's channels has no autograd node, so Torch-Pruning put c1's channel k at k, not
    k + 1, and kept c1's pruned channels ("in c2, its value varies with the input"); it numbered the split's
    outputs in the order its search met them, so c2's channel 8 was read as one of p's. The pieces are recorded
    while tracing now; and the split's fixed sizes are found before training."""
    torch.manual_seed(0)
    model, x = _Pieces().eval(), torch.randn(4, 1, 6, 6)
    masks = _prune_units(model, {"c1": [0, 6], "a": [1], "b": [4]})
    result = slim(model, masks, x)
    assert result.removed["c1"] == (8, 6) and result.removed["a"] == (5, 4) and result.removed["b"] == (5, 4)
    assert _module(result.model, "c2").in_channels == 7 and not result.notes, result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5
    stuck = unremovable_layers(_Pieces().eval(), x)
    assert set(stuck) == {"c2", "fc"} and "split" in stuck["c2"], stuck
    model = _Pieces().eval()
    result = slim(model, _prune_units(model, {"c2": [8]}), x)
    assert result.removed["c2"] == (10, 10)  # channel 8 is q's, read by b: it could go but for the fixed sizes
    assert [note.split(":")[0] for note in result.notes] == ["c2"] and "breaks" in result.notes[0], result.notes


class _PartialPath(nn.Module):
    """A partial path (CSP-style): c1's channels split unequally, the first piece through c2, the second passed
    on beside it into the concatenation that fc reads, in either order."""

    def __init__(self, piece_first: bool) -> None:
        super().__init__()
        self.piece_first = piece_first
        self.c1, self.c2, self.fc = _two_convs(12, 8, 8, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.relu(self.c1(x)).split([8, 4], 1)
        pieces = [b, torch.relu(self.c2(a))] if self.piece_first else [torch.relu(self.c2(a)), b]
        return self.fc(torch.cat(pieces, 1).mean((2, 3)))


@pytest.mark.parametrize("piece_first", [False, True])
def test_a_layer_beside_a_split_piece_in_a_concatenation_slims(piece_first: bool) -> None:
    """Going back from the concatenation to the split, Torch-Pruning applies the split's mapping before the
    concatenation's: with c2's output first, the concatenation's channel i was read as c1's channel i, so c2's
    first four channels were coupled element-wise to c1's and kept with them. They leave now."""
    torch.manual_seed(0)
    model, x = _PartialPath(piece_first).eval(), torch.randn(4, 1, 6, 6)
    result = slim(model, _prune_units(model, {"c2": [0, 2, 7]}), x)
    assert result.removed["c2"] == (8, 5) and not result.notes, result.notes
    assert _module(result.model, "fc").in_features == 9
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _SpatialGate(nn.Module):
    """A spatial gate (CBAM's second half): a 1-channel map from a convolution over c1's map, a sigmoid, a product."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.gate = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 1, 3, padding=1)
        self.c2, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        return self.fc(torch.relu(self.c2(h * torch.sigmoid(self.gate(h)))).mean((2, 3)))


def test_a_layer_of_one_unit_is_named_before_training() -> None:
    """A layer of one output unit was converted under unit noise, although slimming keeps one unit of every layer:
    its unit could only be zeroed in place (the gate stuck at sigmoid(0)), for no saving. It is named now."""
    stuck = unremovable_layers(_SpatialGate().eval(), torch.randn(4, 1, 6, 6))
    assert set(stuck) == {"gate", "fc"} and "single output unit" in stuck["gate"], stuck


class _PoolByView(nn.Module):
    """A 2x2 pooling written as a view that splits the pixels' axes, (n, C, H, W) → (n, C, H/2, 2, W/2, 2), and a
    maximum (or mean) over the two axes of 2 (einops' reduce "b c (h 2) (w 2) -> b c h w" does the same), flattened
    for fc; ``bn``: a maximum after a BatchNorm."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c1, self.c2, self.fc = _two_convs(8, 8, 12, 48)
        self.bn = nn.BatchNorm2d(12) if how == "bn" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.c2(torch.relu(self.c1(x)))))
        n, c, height, width = h.shape
        h = h.view(n, c, height // 2, 2, width // 2, 2)
        h = h.mean((3, 5)) if self.how == "mean" else h.amax((3, 5))
        return self.fc(h.reshape(n, -1))


@pytest.mark.parametrize("how", ["max", "mean", "bn"])
def test_a_pooling_written_as_a_view_keeps_the_channels(how: str) -> None:
    """The view that splits the pixels' axes was read as a flatten with a stride from the map's 16 pixels: c2's
    channel 11 went to feature 176 of 48, c2 was named ("cannot follow where its units go") and kept its pruned
    units. The view keeps the channels where they are, a BatchNorm between them too; they leave, with fc's
    columns."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 4, 4)
    assert set(unremovable_layers(_PoolByView(how).eval(), x)) == {"fc"}
    model = _PoolByView(how).eval()
    result = slim(model, _prune_units(model, {"c1": [2], "c2": [0, 5, 11]}), x)
    assert result.removed["c2"] == (12, 9) and result.removed["c1"] == (8, 7) and not result.notes, result.notes
    assert _module(result.model, "fc").in_features == 36
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _SpaceToDepth(nn.Module):
    """Space to depth written with views: (n, C, H, W) → (n, C, H/2, 2, W/2, 2), permuted and merged to
    (n, 4C, H/2, W/2); channel c becomes channels 4c … 4c + 3 of c2's input."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = _two_convs(8, 32, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        n, c, height, width = h.shape
        h = h.view(n, c, height // 2, 2, width // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, c * 4, height // 2,
                                                                                          width // 2)
        return self.fc(torch.relu(self.c2(h)).mean((2, 3)))


def test_a_space_to_depth_written_with_views_slims() -> None:
    """The first view was read as a flatten of c1's map ("index 32 is out of bounds"): c1 was named and kept its
    pruned units. Its channels stay where they are through it, and leave with their four of c2's inputs."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 8, 8)
    assert set(unremovable_layers(_SpaceToDepth().eval(), x)) == {"fc"}
    model = _SpaceToDepth().eval()
    result = slim(model, _prune_units(model, {"c1": [0, 5]}), x)
    assert result.removed["c1"] == (8, 6) and _module(result.model, "c2").in_channels == 24, result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _PlainInstanceNorms(nn.Module):
    """Two convolutions, each followed by an InstanceNorm2d as torch builds it by default (no affine parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(1, 8, 3, padding=1), nn.InstanceNorm2d(8)
        self.c2, self.n2 = nn.Conv2d(8, 12, 3, padding=1), nn.InstanceNorm2d(12)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.n1(self.c1(x)))
        return self.fc(torch.relu(self.n2(self.c2(h))).amax((2, 3)))


def test_units_before_an_instance_norm_without_parameters_leave() -> None:
    """An InstanceNorm without parameters is no node of the dependency graph, and the batch norm of a (1, N·C, …)
    view that it runs was read as an untraced operand coupled to every channel: c1 and c2 kept all their pruned
    units ("still produced by an untraced operand"). They leave now (a zero channel stays zero through the norm),
    and each norm takes the number of channels it is given, so it warns about none."""
    import warnings

    torch.manual_seed(0)
    x = torch.randn(4, 1, 6, 6)
    assert set(unremovable_layers(_PlainInstanceNorms().eval(), x)) == {"fc"}
    model = _PlainInstanceNorms().eval()
    result = slim(model, _prune_units(model, {"c1": [1, 6], "c2": [0, 4, 11]}), x)
    assert result.removed["c1"] == (8, 6) and result.removed["c2"] == (12, 9) and not result.notes, result.notes
    assert _module(result.model, "n1").num_features == 6 and _module(result.model, "n2").num_features == 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _HalvesGate(nn.Module):
    """c1's two halves gate each other: tanh(a) · sigmoid(b), a, b = c1(x).chunk(2, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = _two_convs(16, 8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.c1(x).chunk(2, dim=1)
        return self.fc(torch.relu(self.c2(torch.tanh(a) * torch.sigmoid(b))).mean((2, 3)))


def test_a_gate_of_two_halves_loses_a_unit_with_its_partner_and_stays_convertible() -> None:
    """Mapping the chunk by its pieces, the plan took a b-half unit pruned alone away (sigmoid(0) is no zero), the
    slim changed the output and the layer kept every pruned unit; and the early check, reading that unit varying,
    left the layer dense. An a-half unit silences the product, so it goes with its partner; a b-half one stays."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 6, 6)
    assert set(unremovable_layers(_HalvesGate().eval(), x)) == {"fc"}
    model = _HalvesGate().eval()
    result = slim(model, _prune_units(model, {"c1": [2, 13]}), x)
    assert result.removed["c1"] == (16, 14) and _module(result.model, "c2").in_channels == 7
    assert any(note.startswith("c1: kept pruned channel(s) [13]") for note in result.notes), result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _CrossStage(nn.Module):
    """A CSP block (``a, b = cv1(x).chunk(2, 1)``; ``cat([m(a), b])``) or YOLOv8's C2f (``y = list(cv1(x).chunk(2,
    1))``, ``m`` on the last piece appended, every piece concatenated)."""

    def __init__(self, c2f: bool) -> None:
        super().__init__()
        self.c2f = c2f
        self.cv1, self.m = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.cv2, self.fc = nn.Conv2d(12 if c2f else 8, 6, 1), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.c2f:
            y = list(torch.relu(self.cv1(x)).chunk(2, 1))
            y.append(torch.relu(self.m(y[-1])))
        else:
            a, b = torch.relu(self.cv1(x)).chunk(2, 1)
            y = [torch.relu(self.m(a)), b]
        return self.fc(torch.relu(self.cv2(torch.cat(y, 1))).mean((2, 3)))


@pytest.mark.parametrize("c2f", [False, True], ids=["csp", "c2f"])
def test_a_chunk_into_equal_halves_loses_as_many_channels_from_each(c2f: bool) -> None:
    """The layer before a CSP block's or a C2f's chunk kept every pruned unit: Torch-Pruning numbered the halves in
    the order its search met them (a unit of one half read as the other's), and a concatenation of two pieces of one
    split was one input to it (an IndexError); planned by the pieces, removing units of one half only would have
    broken the forward, which splits whatever it gets in equal halves again. Each half loses as many as the other
    now (the fewest either has pruned), the rest stay as zeros with a note."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 6, 6)
    assert set(unremovable_layers(_CrossStage(c2f).eval(), x)) == {"fc"}
    model = _CrossStage(c2f).eval()
    result = slim(model, _prune_units(model, {"cv1": [1, 2, 5], "m": [0]}), x)
    assert result.removed["cv1"] == (8, 6) and result.removed["m"] == (4, 3), result.removed
    assert _module(result.model, "m").in_channels == 3 and _module(result.model, "cv2").in_channels == (9 if c2f else 6)
    assert any(note.startswith("cv1: kept pruned channel(s) [2]") and "2 equal pieces" in note
               for note in result.notes), result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5
    model = _CrossStage(c2f).eval()  # one half pruned, the other not: nothing of cv1 can leave
    result = slim(model, _prune_units(model, {"cv1": [4, 6]}), x)
    assert result.removed.get("cv1", (8, 8)) == (8, 8) and _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _ConstantWidthSplit(nn.Module):
    """Res2Net's split: ``torch.split(h, self.width, 1)`` by a width fixed at construction, each piece through its
    own convolution, concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.width = 4
        self.c1, self.fc = nn.Conv2d(1, 12, 3, padding=1), nn.Linear(6, 3)
        self.branches = nn.ModuleList(nn.Conv2d(4, 2, 3, padding=1) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(torch.relu(self.c1(x)), self.width, 1)
        h = torch.cat([torch.relu(conv(p)) for conv, p in zip(self.branches, pieces)], 1)
        return self.fc(h.mean((2, 3)))


def test_a_layer_before_a_split_by_a_constant_width_is_named_before_training() -> None:
    """The early check removed units 0, 2 and 11 of c1: the middle piece lost none, so the equal pieces kept every
    unit and the check passed; c1 was converted, and after training its pieces lost channels together, the split by
    the constant width broke the forward, and the slim searched layer by layer for what broke (a hundred slims of a
    Res2Net-50). The check removes the first unit of every piece too now."""
    torch.manual_seed(0)
    stuck = unremovable_layers(_ConstantWidthSplit().eval(), torch.randn(4, 1, 6, 6))
    assert set(stuck) == {"c1", "fc"} and "breaks the forward" in stuck["c1"], stuck


class _HandLstm(nn.Module):
    """An LSTM cell written by hand over 5 steps: ``x2h(x_t) + h2h(h)`` chunked into i, f, g, o, the state started
    as zeros of the width h2h reads (``conv=True``: a ConvLSTM, its gates one convolution of ``cat([x_t, h], 1)``);
    ``fixed``: the state's width fixed at construction instead."""

    def __init__(self, conv: bool = False, fixed: bool = False) -> None:
        super().__init__()
        self.conv, self.fixed = conv, fixed
        if conv:
            self.gates, self.fc = nn.Conv2d(1 + 4, 16, 3, padding=1), nn.Linear(4, 3)
        else:
            self.x2h, self.h2h, self.fc = nn.Linear(4, 16), nn.Linear(4, 16), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = 4 if self.fixed else (self.gates.out_channels if self.conv else self.h2h.out_features) // 4
        h = x.new_zeros(x.shape[0], width, *x.shape[3:])
        c = torch.zeros_like(h)
        for t in range(5):
            step = x[:, t]
            gates = self.gates(torch.cat([step, h], 1)) if self.conv else self.x2h(step) + self.h2h(h)
            i, f, g, o = gates.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return self.fc(h.mean((2, 3)) if self.conv else h)


@pytest.mark.parametrize("conv", [False, True], ids=["linear", "conv"])
def test_a_hand_written_lstm_cell_loses_a_hidden_unit_whose_cell_input_is_pruned(conv: bool) -> None:
    """The state started as untraced zeros (``x.new_zeros``), which the graph read as a live operand of the first
    step's ``sigmoid(f) * c`` and of ``cat([x_t, h])``: no gate unit could leave, "still produced by an untraced
    operand". A product with zeros and zeros beside a concatenation are zeros: a pruned g unit (tanh(0) = 0) keeps
    its cell at 0, the hidden unit is dead, and its four gate units leave with the columns that read it; a pruned
    i unit alone (sigmoid(0) = 0.5) stays. A state whose width is fixed at construction breaks, named."""
    torch.manual_seed(0)
    x = torch.randn(4, 5, 1, 6, 6) if conv else torch.randn(4, 5, 4)
    layers = ("gates",) if conv else ("x2h", "h2h")
    assert set(unremovable_layers(_HandLstm(conv).eval(), x)) == {"fc"}
    model = _HandLstm(conv).eval()
    result = slim(model, _prune_units(model, dict.fromkeys(layers, [9, 2])), x)  # g of hidden unit 1, i of 2
    assert all(result.removed[n] == (16, 12) for n in layers), result.removed
    assert (_module(result.model, "gates").in_channels == 4 if conv else _module(result.model, "h2h").in_features == 3)
    assert any("kept pruned channel(s) [2]" in note for note in result.notes), result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5
    stuck = unremovable_layers(_HandLstm(conv, fixed=True).eval(), x)
    assert set(stuck) == {*layers, "fc"} and all("breaks the forward" in stuck[n] for n in layers), stuck


class _PaddedConsumer(nn.Module):
    """c1 → sigmoid (f(0) = 0.5: a pruned unit leaves a constant) → c2 padded by ``mode`` (3x3 and 1-d (1, 3))."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.c1, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(6, 3)
        self.c2 = nn.Conv2d(8, 6, (3, 3), padding=1, padding_mode=mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c2(torch.sigmoid(self.c1(x)))).mean((2, 3)))


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_a_constant_leaves_into_a_layer_whose_padding_repeats_it(mode: str) -> None:
    """A removed unit's constant goes into the next layer's bias where its padding repeats the constant at the
    borders (reflect, replicate, circular), not where it pads zeros. A circular pad, built by copying slices into a
    new empty tensor, was read as an untraced operand of every channel: the units stayed, named for it. It is traced
    as the index selections it is now."""
    torch.manual_seed(0)
    model, x = _PaddedConsumer(mode).eval(), torch.randn(4, 1, 6, 6)
    result = slim(model, _prune_units(model, {"c1": [1, 4]}), x)
    if mode == "zeros":
        assert result.removed["c1"] == (8, 8) and "non-zero constant" in " ".join(result.notes), result.notes
    else:
        assert result.removed["c1"] == (8, 6) and not result.notes, (result.removed, result.notes)
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _ChannelGroupNorm(nn.Module):
    """wav2vec 2.0's first feature layer: a Conv1d, ``nn.GroupNorm(groups, 16)``, GELU; then a Conv1d without bias."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.c1, self.norm = nn.Conv1d(1, 16, 5, stride=2, bias=False), nn.GroupNorm(groups, 16)
        self.c2, self.fc = nn.Conv1d(16, 8, 3, bias=False), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.gelu(self.norm(self.c1(x)))
        return self.fc(torch.nn.functional.gelu(self.c2(h)).mean(2))


@pytest.mark.parametrize("groups", [16, 4])
def test_a_group_norm_of_one_channel_per_group_passes_a_removed_channel(groups: int) -> None:
    """A GroupNorm was read as mixing its channels whatever its groups; one of one channel per group normalises each
    on its own (an affine InstanceNorm): a removed channel leaves its shift β, which c2's (new) bias takes, and the
    GroupNorm keeps one channel per group. Four groups of four still mix their channels: named."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 32)
    stuck = unremovable_layers(_ChannelGroupNorm(groups).eval(), x)
    model = _ChannelGroupNorm(groups).eval()
    result = slim(model, _prune_units(model, {"c1": [1, 6]}), x)
    if groups == 4:
        assert "c1" in stuck and "mixes" in stuck["c1"] and result.removed.get("c1", (16, 16)) == (16, 16)
        return
    assert set(stuck) == {"fc"}, stuck
    assert result.removed["c1"] == (16, 14) and not result.notes, (result.removed, result.notes)
    norm = _module(result.model, "norm")
    assert norm.num_groups == norm.num_channels == 14 and norm.weight.shape == (14,)
    assert _module(result.model, "c2").bias is not None
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _TokenSwiGlu(nn.Module):
    """Tokens (batch, 5, 4) embedded, a fused SwiGLU MLP over each (``a, b = fc1(h).chunk(2, -1)``), mean, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.fc1, self.fc2, self.fc = nn.Linear(4, 8), nn.Linear(8, 16), nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.fc1(torch.relu(self.embed(x))).chunk(2, dim=-1)
        return self.fc(torch.relu(self.fc2(torch.nn.functional.silu(a) * b)).mean(1))


def test_a_gate_of_two_halves_of_a_linear_over_tokens_loses_a_pruned_unit_of_either_half() -> None:
    """A split of a Linear's features (the last axis of (batch, tokens, features)) was left to Torch-Pruning's own
    order, and the pruned units of b's half stayed ("still produced by the input of a reshape"). silu(0) · b and
    silu(a) · 0 are both zeros: a pruned unit of either half takes its partner along."""
    torch.manual_seed(0)
    model, x = _TokenSwiGlu().eval(), torch.randn(4, 5, 4)
    assert set(unremovable_layers(model, x)) == {"fc"}
    result = slim(model, _prune_units(model, {"fc1": [1, 13]}), x)
    assert result.removed["fc1"] == (16, 12) and _module(result.model, "fc2").in_features == 6, result.removed
    assert not result.notes, result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _Reordered(nn.Module):
    """c1's channels are reordered (flipped, rolled or accumulated along the channel axis) before c2 reads them."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.c1, self.c2, self.fc = _two_convs(8, 8, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        h = {"flip": lambda t: t.flip(1), "roll": lambda t: t.roll(2, 1), "cumsum": lambda t: t.cumsum(1)}[self.op](h)
        return self.fc(torch.relu(self.c2(h)).mean((2, 3)))


@pytest.mark.parametrize("op", ["flip", "roll", "cumsum"])
def test_channels_reordered_on_the_way_are_named_before_training(op: str) -> None:
    """The dependency graph reads a flip or roll along the channels as element-wise: removing c1's first and last
    units (flipped onto each other) passed the early check, c1 was converted and trained, and its pruned units then
    stayed ("in c2, its value varies with the input"). The trace records such an operation along the channels now
    (a cumulative sum mixes them, a flip or a roll moves them), and the layer is named for it."""
    torch.manual_seed(0)
    stuck = unremovable_layers(_Reordered(op).eval(), torch.randn(4, 1, 6, 6))
    named = "cumulative sum over the channels" if op == "cumsum" else "shuffle, flip or roll"
    assert set(stuck) == {"c1", "fc"} and named in stuck["c1"], stuck
    model = _Reordered(op).eval()
    result = slim(model, _prune_units(model, {"c1": [0, 3]}), torch.randn(4, 1, 6, 6))
    assert result.removed.get("c1", (8, 8)) == (8, 8) and result.max_abs_diff <= 1e-5


class _PositionEmbedded(nn.Module):
    """Tokens embedded by a Linear, a learned position embedding added, an MLP over each token, mean over tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mlp, self.fc = nn.Linear(4, 8), nn.Linear(8, 16), nn.Linear(16, 3)
        self.pos = nn.Parameter(torch.randn(1, 5, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos
        return self.fc(torch.relu(self.mlp(h)).mean(1))


def test_units_a_position_embedding_follows_are_named_for_it() -> None:
    """A removed unit of embed leaves pos's channel, the same for every sample but not at every token, which mlp
    (applied at each token, one bias for all) cannot hold: embed was named for "an operation the dependency graph
    misreads (a roll, flip, index or gather)", which the model has none of. It is named for the position embedding;
    mlp's units leave as before."""
    torch.manual_seed(0)
    model, x = _PositionEmbedded().eval(), torch.randn(4, 5, 4)
    stuck = unremovable_layers(model, x)
    assert set(stuck) == {"embed", "fc"} and "position embedding" in stuck["embed"], stuck
    assert "misread" not in stuck["embed"]
    result = slim(model, _prune_units(model, {"embed": [1], "mlp": [0, 5]}), x)
    assert result.removed["mlp"] == (16, 14) and result.removed["embed"] == (8, 8), result.removed
    assert result.positional == ["embed"] and not result.misread
    assert any("position embedding" in note for note in result.notes), result.notes


def test_units_a_fixed_slice_reads_are_named_before_training() -> None:
    """Only the last unit was tried: removing it shortens x[:, 8:] harmlessly, so c1 was converted and trained, and
    its pruned units then stayed as zeros (x[:, :8] takes the first eight whatever they are)."""
    stuck = unremovable_layers(_SlicedBeside().eval(), torch.randn(4, 1, 6, 6))
    assert set(stuck) == {"c1", "fc"} and "x[:, :8]" in stuck["c1"], stuck


def _channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)


class _ShuffleBlock(nn.Module):
    """ShuffleNetV2's unit: half the channels pass, the other half through 1x1 → depthwise 3x3 → 1x1, then the two
    halves are concatenated and shuffled."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.b = nn.Sequential(nn.Conv2d(c // 2, 8, 1), nn.BatchNorm2d(8), nn.ReLU(),
                               nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8),
                               nn.Conv2d(8, c // 2, 1), nn.BatchNorm2d(c // 2), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=1)
        return _channel_shuffle(torch.cat([x1, self.b(x2)], 1))


class _TinyShuffleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.blocks, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Sequential(_ShuffleBlock(8),
                                                                                       _ShuffleBlock(8)), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


def test_channels_through_a_channel_shuffle_stay_and_the_branch_inside_slims() -> None:
    """The channel shuffle's views were read as if they kept channels where they were: the branch outputs were
    refused for an IndexError or for a slim that broke the forward (and a full ShuffleNetV2's view divided by zero
    in Torch-Pruning, so that nothing could be tied or slimmed). The views that split channels into groups are
    recorded while tracing now: what reaches them stays, named, and the branch's hidden channels go."""
    torch.manual_seed(0)
    model, x = _TinyShuffleNet().eval(), torch.randn(4, 1, 6, 6)
    stuck = unremovable_layers(model, x)
    # the stem's second half goes only into the first branch, but the chunk keeps its halves equal, and the first
    # half (shuffled) can lose none: the stem is named for the split
    assert set(stuck) == {"stem", "blocks.0.b.5", "blocks.1.b.5", "fc"}, stuck
    assert "split into 2 equal pieces" in stuck["stem"], stuck
    assert all("(View: a channel shuffle" in stuck[n] for n in ("blocks.0.b.5", "blocks.1.b.5")), stuck
    masks = _prune_units(model, {"blocks.0.b.0": [1, 6], "blocks.1.b.0": [0], "blocks.0.b.5": [2]})
    result = slim(model, masks, x)
    assert result.removed["blocks.0.b.0"] == (8, 6) and result.removed["blocks.1.b.0"] == (8, 7)
    assert _module(result.model, "blocks.0.b.3").out_channels == 6  # the depthwise convolution lost them too
    assert result.removed["blocks.0.b.5"] == (4, 4)
    assert any(note.startswith("blocks.0.b.5") and "kept pruned channel(s) [2]: " in note and "(View: " in note
               for note in result.notes), result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


def test_an_index_mapping_that_fails_leaves_that_operation_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """One Torch-Pruning index mapping that raised (a full ShuffleNetV2's ZeroDivisionError in a reshape's) failed
    the whole graph, and with it every slim and tie; now that operation passes no channel on, and the rest is
    analysed."""
    from torch_pruning.dependency import index_mapping

    from prunedrop.slim.coupling import coupled_producers

    def broken(graph, node):  # noqa: ANN001, ANN202
        raise ZeroDivisionError("integer division or modulo by zero")

    monkeypatch.setattr(index_mapping, "update_reshape_index_mapping", broken)
    torch.manual_seed(0)
    # a 1-d convolution's (batch, channels, time) flattened: Torch-Pruning's reshape mapping maps it (a 4-d one's
    # stride is recorded while tracing, and the broken mapping is never asked)
    model, x = nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Conv1d(4, 6, 3), nn.ReLU(), nn.Flatten(),
                             nn.Linear(6 * 6, 10), nn.ReLU(), nn.Linear(10, 3)).eval(), torch.randn(4, 1, 10)
    assert coupled_producers(model, x) == []
    stuck = unremovable_layers(model, x)
    assert set(stuck) == {"2", "7"} and "(View: " in stuck["2"], stuck  # the flatten before the Linear
    result = slim(model, _prune_units(model, {"0": [1], "5": [0, 3]}), x)
    assert result.removed["0"] == (4, 3) and result.removed["5"] == (10, 8)
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5
    lenet, x = tiny_arch("lenet5")
    result = slim(lenet, _prune_units(lenet, {"conv2": [1, 4], "fc1": [0, 3]}), x)
    assert result.removed["conv2"] == (6, 4) and result.removed["fc1"] == (10, 8)
    assert _diff_on_fresh_inputs(lenet, result.model, x) <= 1e-5


class _ConcatPool(nn.Module):
    """fastai's concat pooling head: a pooling module's output flattened, beside the mean over the pixels."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.c1, self.c2, self.pool = nn.Conv2d(1, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1), pool
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.cat([self.pool(h).flatten(1), h.mean((2, 3))], 1))


@pytest.mark.parametrize("pool", [nn.AdaptiveMaxPool2d(1), nn.AdaptiveAvgPool2d((1, 1))])
def test_a_flattened_pooling_beside_other_features_keeps_its_channels_in_place(pool: nn.Module) -> None:
    """Torch-Pruning infers a flatten's stride from the Linear's width over the channels (16 / 8: 2) where the
    real one is 1 (a 1×1 map): the concatenation doubled it, and removing a unit broke the forward, so the layer
    stayed whole. The stride is now the one the trace saw."""
    torch.manual_seed(0)
    model, x = _ConcatPool(pool).eval(), torch.randn(4, 1, 6, 6)
    assert set(unremovable_layers(model, x)) == {"fc"}
    result = slim(model, _prune_units(model, {"c2": [0, 5, 7], "c1": [2]}), x)
    assert result.removed["c2"] == (8, 5) and result.removed["c1"] == (6, 5)
    assert result.model.fc.in_features == 10
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _AssertsWidth(_FixedWidths):
    """The same, but the forward checks the width with an assert (an AssertionError, not a RuntimeError)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.c2(torch.relu(self.c1(x)))), 2)
        assert x.shape[1] == 8, "eight channels expected"
        return self.fc(x.flatten(1))


def test_a_forward_that_asserts_a_width_keeps_that_layer() -> None:
    torch.manual_seed(0)
    model, x = _AssertsWidth().eval(), torch.randn(4, 1, 4, 4)
    result = slim(model, _prune_units(model, {"c1": [0, 3], "c2": [1, 2, 5]}), x)
    assert result.removed["c1"] == (6, 4) and result.removed["c2"] == (8, 8)
    assert any("eight channels expected" in note for note in result.notes), result.notes


class _SqueezeExcite(nn.Module):
    """An inverted residual with squeeze-excitation, as MobileNetV3 and EfficientNet build it: expand → depthwise →
    ``x · gate(fc2(relu(fc1(pool(x)))))`` → project, with a residual addition around it."""

    def __init__(self, gate: str = "hardsigmoid", act: str = "hardswish"):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.exp = nn.Conv2d(8, 24, 1)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.fc1, self.fc2 = nn.Conv2d(24, 6, 1), nn.Conv2d(6, 24, 1)
        self.proj = nn.Conv2d(24, 8, 1)
        self.head = nn.Linear(8, 3)
        self.gate, self.act = getattr(nn.functional, gate), getattr(nn.functional, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = self.act(self.dw(self.act(self.exp(x))))
        y = y * self.gate(self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(y, 1)))))
        return self.head(nn.functional.adaptive_avg_pool2d(x + self.proj(y), 1).flatten(1))


@pytest.mark.parametrize(("gate", "act"), [("hardsigmoid", "hardswish"), ("sigmoid", "silu"), ("sigmoid", "relu6")])
def test_a_pruned_factor_of_a_squeeze_excitation_removes_the_channel_everywhere(gate: str, act: str) -> None:
    """A channel that the depthwise convolution prunes is zero in ``x · gate(…)`` whatever the gate says: it leaves the
    expansion, the depthwise convolution, the excitation's fc2 (which still writes it) and the readers. It was kept,
    the product read like a residual addition (MobileNetV3 and EfficientNet slimmed nothing in their blocks)."""
    torch.manual_seed(0)
    model, x = _SqueezeExcite(gate, act).eval(), torch.randn(4, 1, 6, 6)
    result = slim(model, _prune_units(model, {"dw": [0, 5, 7, 20]}), x)
    assert result.removed["dw"] == result.removed["exp"] == result.removed["fc2"] == (24, 20)
    assert model.fc1.in_channels == 24 and result.model.fc1.in_channels == 20 and result.model.proj.in_channels == 20
    assert not result.notes, result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _ExpandedExcite(_SqueezeExcite):
    """The same block with the excitation written as the widely copied SENet code does: a Linear excitation on the
    pooled vector, viewed back to (batch, channels, 1, 1) and spread with ``y.expand_as(x)``."""

    def __init__(self) -> None:
        super().__init__("sigmoid", "relu")
        self.fc1, self.fc2 = nn.Linear(24, 6), nn.Linear(6, 24)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = self.act(self.dw(self.act(self.exp(x))))
        b, c = y.shape[:2]
        s = self.gate(self.fc2(torch.relu(self.fc1(y.mean((2, 3)))))).view(b, c, 1, 1)
        y = y * s.expand_as(y)
        return self.head(nn.functional.adaptive_avg_pool2d(x + self.proj(y), 1).flatten(1))


def test_an_excitation_spread_with_expand_as_slims_like_a_broadcast_one() -> None:
    """Torch-Pruning's expand node (made for grouped attention) read ``s.expand_as(y)`` as mixing channels: the
    expansion, the depthwise convolution and the excitation were left dense before training and kept their units.
    An expand that only spreads a (batch, channels, 1, 1) tensor over the pixels is recorded and passes them on."""
    torch.manual_seed(0)
    model, x = _ExpandedExcite().eval(), torch.randn(4, 1, 6, 6)
    assert set(unremovable_layers(model, x)) == {"head"}
    result = slim(model, _prune_units(model, {"dw": [0, 5, 7, 20]}), x)
    assert result.removed["dw"] == result.removed["exp"] == result.removed["fc2"] == (24, 20)
    assert result.model.fc1.in_features == 20 and not result.notes, result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


def test_a_pruned_excitation_alone_keeps_the_channel() -> None:
    """fc2's pruned unit gives gate(0) = 0.5, not zero: the product still carries the depthwise output, so the channel
    stays (and says why); the output is unchanged."""
    torch.manual_seed(0)
    model, x = _SqueezeExcite().eval(), torch.randn(4, 1, 6, 6)
    result = slim(model, _prune_units(model, {"fc2": [1, 2]}), x)
    assert result.removed["fc2"] == (24, 24) and result.model.dw.out_channels == 24
    assert any("still produced by" in note for note in result.notes), result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


def test_an_activation_that_moves_zero_does_not_silence_the_product() -> None:
    """With a gate of ``exp`` on the pruned factor (exp(0) = 1) the product still varies with the input: kept."""

    class _ExpGate(_SqueezeExcite):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.stem(x))
            y = torch.exp(-self.dw(torch.relu(self.exp(x))).abs()) * self.fc2(torch.relu(self.fc1(x.repeat(1, 3, 1, 1))))
            return self.head(nn.functional.adaptive_avg_pool2d(x + self.proj(y), 1).flatten(1))

    torch.manual_seed(0)
    model, x = _ExpGate().eval(), torch.randn(4, 1, 6, 6)
    result = slim(model, _prune_units(model, {"dw": [0, 5]}), x)
    assert result.model.dw.out_channels == 24 and result.model.fc2.out_channels == 24
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


@pytest.mark.parametrize(
    ("make", "rule"),
    [
        (lambda t: nn.functional.relu6(t), "keeps"),
        (lambda t: nn.functional.hardtanh(t, 0.1, 2.0), None),  # hardtanh(0) = 0.1
        (lambda t: t.clamp(min=0), "keeps"),
        (lambda t: t.clamp(min=0.5), None),
        (lambda t: t ** 2, "keeps"),
        (lambda t: t ** -1, None),
        (lambda t: torch.sigmoid(t), None),
        (lambda t: nn.functional.softplus(t), None),
        (lambda t: t * t, "product"),
        (lambda t: t / 3, "numerator"),
        (lambda t: t + 1, None),
        (lambda t: nn.functional.silu(t).flatten(), "keeps"),
        (lambda t: t.mean(1), None),  # over the channel axis it mixes the channel with others
        (lambda t: t[:, 1], None),
        (lambda t: torch.cat([t, t], 1), "keeps"),
        (lambda t: torch.split(t, [1, 2], 1)[0], "keeps"),
    ],
)
def test_which_operations_keep_a_zero_channel_zero(make, rule) -> None:
    from prunedrop.slim.coupling import _zero_rule

    assert _zero_rule(make(torch.randn(2, 3, requires_grad=True)).grad_fn) == rule


class _SwiGLU(nn.Module):
    """A LLaMA-style gated MLP in a residual stream: ``h + down(silu(gate(h)) · up(h))``."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.gate, self.up = nn.Linear(6, 8), nn.Linear(8, 16), nn.Linear(8, 16)
        self.down, self.head = nn.Linear(16, 8), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.head(h + self.down(nn.functional.silu(self.gate(h)) * self.up(h)))


def test_a_gated_mlp_loses_a_hidden_unit_that_either_side_prunes() -> None:
    """silu(0) = 0, and a pruned up-projection is 0: either factor alone silences the product, so the unit leaves
    both projections and the down-projection's columns (before, only units both sides pruned left)."""
    torch.manual_seed(0)
    model, x = _SwiGLU().eval(), torch.randn(4, 6)
    result = slim(model, _prune_units(model, {"gate": [0, 1, 2], "up": [7, 9]}), x)
    assert result.removed["gate"] == result.removed["up"] == (16, 11)
    assert result.model.down.in_features == 11 and not result.notes, result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _ConcatGate(nn.Module):
    """Two branches concatenated, then gated by an excitation of the concatenation: the zero channel of a pruned unit
    keeps its place in the concatenation and silences the product there."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1)
        self.g, self.c, self.head = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 6, 1), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        y = y * torch.sigmoid(self.g(nn.functional.adaptive_avg_pool2d(y, 1)))
        return self.head(nn.functional.adaptive_avg_pool2d(self.c(y), 1).flatten(1))


def test_a_zero_channel_is_followed_through_a_concatenation_into_a_product() -> None:
    torch.manual_seed(0)
    model, x = _ConcatGate().eval(), torch.randn(4, 1, 6, 6)
    result = slim(model, _prune_units(model, {"a": [1, 2], "b": [3]}), x)
    assert result.removed["a"] == (4, 2) and result.removed["b"] == (4, 3) and result.removed["g"] == (8, 5)
    assert result.model.c.in_channels == 5 and not result.notes, result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


# ------------------------------------------------------------------- whole units that per-weight pruning left


def _sparse_mlp() -> nn.Sequential:
    """6-12-8-3 with what sparse VD leaves: hidden units 0-2 with every incoming weight pruned (unit 1 and 2 keep
    a bias, so they output a constant), units 3-4 that the next layer no longer reads, unit 5 a head's column."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[0].weight[:3] = 0
        model[0].bias[0] = 0
        model[0].bias[1:3] = torch.tensor([0.7, -0.4])  # relu(0.7) = 0.7 reaches layer 2; relu(-0.4) = 0
        model[2].weight[:, 3:5] = 0
        model[2].weight[6] = 0  # layer 2's unit 6: a constant tanh(bias) into the head
        model[4].weight[1] = 0  # a class logit that is its bias alone: the model's output stays
    return model


def test_per_weight_pruning_loses_the_units_it_emptied_or_left_unread() -> None:
    from prunedrop.slim import dead_units

    model, x = _sparse_mlp(), torch.randn(16, 6)
    want = model(x)
    masks = dead_units(model, x[:2])
    assert {k: (~m).nonzero().flatten().tolist() for k, m in masks.items()} == {"0": [0, 1, 2, 3, 4], "2": [6]}
    assert (model(x) - want).abs().max() <= 1e-6  # the same function: constants moved into the consumers' biases
    assert all(silent_units(model.get_submodule(k))[~m].all() for k, m in masks.items())
    result = slim(model, masks, x[:4])
    assert result.removed == {"0": (12, 7), "2": (8, 7)} and not result.notes
    assert (result.model(x) - want).abs().max() <= 1e-5


def test_units_taken_for_unread_by_a_misread_graph_are_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A channels-last flatten that the graph mapped to the wrong columns made live units read as unread: they were
    zeroed, the slim then kept them "as zeros", and the run's model lost 80 points with a slim diff of 0. Whatever
    the graph misreads, zeroing that changes the output is undone and named."""
    import prunedrop.slim.stage as stage
    from prunedrop.slim import MisreadUnits, dead_units
    from prunedrop.stages.slimming import remove_dead_units

    model, x = _sparse_mlp(), torch.randn(16, 6)
    want, state = model(x), {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(stage, "_reads", lambda module, idxs: False)  # every unit read as unread
    with pytest.raises(MisreadUnits, match="changed the model's output"):
        dead_units(model, x[:2])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    lines: list[str] = []
    assert remove_dead_units(model, x[:4], lines.append, None) is None
    assert any("no whole unit removed" in line for line in lines), lines
    assert torch.equal(model(x), want)


def test_per_weight_dead_units_of_a_residual_stream_go_only_when_every_writer_lets_them() -> None:
    from prunedrop.slim import dead_units

    class Stream(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c, self.head = nn.Linear(4, 6), nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.c(self.a(x) + self.b(x))))

    torch.manual_seed(0)
    model, x = Stream().eval(), torch.randn(8, 4)
    with torch.no_grad():
        model.a.weight[[0, 1]] = 0  # channel 0 empty in both writers, channel 1 only in a
        model.b.weight[0] = 0
    want = model(x)
    masks = dead_units(model, x[:2])
    assert {k: (~m).nonzero().flatten().tolist() for k, m in masks.items()} == {"a": [0], "b": [0]}
    result = slim(model, masks, x[:4])
    assert result.removed["a"] == (6, 5) and result.removed["b"] == (6, 5)
    assert (result.model(x) - want).abs().max() <= 1e-5


def test_a_constant_unit_before_a_zero_padded_convolution_stays() -> None:
    """A pruned convolution channel with a bias is a constant, which a zero-padded 3×3 convolution turns into
    different values at the borders: no bias holds it, so it stays; a channel nothing reads goes."""
    from prunedrop.slim import dead_units

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 5 * 5, 2)).eval()
    with torch.no_grad():
        model[0].weight[0] = 0
        model[0].bias[0] = 0.5
        model[2].weight[:, 3] = 0
    x = torch.randn(3, 1, 5, 5)
    want = model(x)
    masks = dead_units(model, x[:2])
    assert {k: (~m).nonzero().flatten().tolist() for k, m in masks.items()} == {"0": [3]}
    assert (model(x) - want).abs().max() <= 1e-6


class _GatedConv(nn.Module):
    """A Conformer's convolution module: a pointwise convolution to twice the width, a GLU over the channels, a
    depthwise convolution, BatchNorm, SiLU and a pointwise convolution back; ``functional`` uses F.glu on tokens
    (a gated feed-forward block: (batch, time, features), the last axis halved) instead of nn.GLU."""

    def __init__(self, functional: bool = False) -> None:
        super().__init__()
        self.functional = functional
        self.pw1, self.dw = nn.Conv1d(4, 16, 1), nn.Conv1d(8, 8, 3, padding=1, groups=8)
        self.bn, self.pw2, self.glu = nn.BatchNorm1d(8), nn.Conv1d(8, 6, 1), nn.GLU(dim=1)
        self.up, self.down, self.fc = nn.Linear(6, 12), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pw2(nn.functional.silu(self.bn(self.dw(self.glu(self.pw1(x))))))
        t = h.transpose(1, 2)
        if self.functional:
            t = self.down(nn.functional.glu(self.up(t), dim=-1))
        return self.fc(t.mean(1))


@pytest.mark.parametrize("functional", [False, True])
def test_a_glu_is_a_gate_of_two_halves(functional: bool) -> None:
    """F.glu and nn.GLU were stopped as operations that move channels: the layer before them and the depthwise
    convolution after kept every unit. Traced as a · sigmoid(b), a first-half unit leaves with its partner (and the
    depthwise channel after it); a second-half unit pruned alone stays, named."""
    torch.manual_seed(0)
    x = torch.randn(4, 4, 10)
    assert set(unremovable_layers(_GatedConv(functional).eval(), x)) == {"fc"}
    model = _GatedConv(functional).eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
    masks = _prune_units(model, {"pw1": [1, 4, 9, 12, 13], **({"up": [0, 3, 6, 9, 7]} if functional else {})})
    result = slim(model, masks, x)
    assert result.removed["pw1"] == (16, 12) and result.removed["dw"] == (8, 6), (result.removed, result.notes)
    # numbered as the GLU's output channels, by the depthwise convolution (unit 13's partner is 5)
    assert [n for n in result.notes if "pw1" in n and "kept" in n][0].startswith("dw (coupled with pw1): kept pruned "
                                                                                 "channel(s) [5]"), result.notes
    if functional:  # 6 and 9 leave with 0 and 3; 7 alone stays
        assert result.removed["up"] == (12, 8) and _module(result.model, "down").in_features == 4
        assert [n for n in result.notes if n.startswith("up:")][0].startswith("up: kept pruned channel(s) [7]:")
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _OverChannels(nn.Module):
    """c2's channels meet each other in a reduction over the channel axis: ``how`` is a CBAM spatial attention (the
    channels' mean and maximum, a convolution of the two maps, its sigmoid multiplying the features), a softmax over
    the channels, a norm (F.normalize of the pooled features, or written out as a square root of a sum), an
    AlexNet-style local response norm before the pooling or before a flatten (``lrn``, ``lrn_flatten``)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1)
        self.sa, self.fc = nn.Conv2d(2, 1, 3, padding=1), nn.Linear(12 * 36 if how == "lrn_flatten" else 12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        if self.how == "cbam":
            h = h * torch.sigmoid(self.sa(torch.cat([h.mean(1, keepdim=True), h.amax(1, keepdim=True)], 1)))
        elif self.how == "softmax":
            h = h * torch.softmax(h, 1)
        elif self.how == "sum":
            h = h / (h.pow(2).sum(1, keepdim=True) + 1e-6).sqrt()
        elif self.how.startswith("lrn"):
            h = nn.functional.local_response_norm(h, 5, alpha=1.0)
            if self.how == "lrn_flatten":
                return self.fc(h.flatten(1))
        pooled = h.mean((2, 3))
        return self.fc(nn.functional.normalize(pooled, dim=1) if self.how == "normalize" else pooled)


@pytest.mark.parametrize(("how", "why"), [("cbam", "a maximum or minimum over the channels (Amax)"),
                                          ("softmax", "a softmax over the channels (Softmax)"),
                                          ("lrn", "a local response norm over the channels"),
                                          ("lrn_flatten", "a local response norm over the channels")])
def test_a_reduction_over_the_channels_that_a_channel_changes_is_named(how: str, why: str) -> None:
    """A CBAM's channel mean: the early check did not name c2, and after training its pruned channels stayed with no
    word (the one-channel attention map was read as coupled to c2's channel 0, and c2 was never a group of its own).
    A mean, maximum or softmax over the channels changes when a channel leaves: named before training. So does a
    local response norm, whose window of neighbours moves when one leaves (before a flatten, the graph's reading
    of its steps gave a wrong reason: channel numbers that grew past any width)."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 6, 6)
    stuck = unremovable_layers(_OverChannels(how).eval(), x)
    one_unit = {"sa"} if how == "cbam" else set()  # the attention map's layer, of one unit
    assert set(stuck) == {"c2", "fc"} | one_unit and why in stuck["c2"], stuck
    model = _OverChannels(how).eval()
    result = slim(model, _prune_units(model, {"c1": [1, 5], "c2": [0, 3, 7]}), x)
    assert result.removed["c1"] == (8, 6) and result.removed["c2"] == (12, 12)
    assert any(note.startswith("c2: kept pruned channel(s) [0, 3, 7]") and why in note for note in result.notes)
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


@pytest.mark.parametrize("how", ["normalize", "sum"])
def test_a_sum_or_norm_over_the_channels_lets_a_zero_channel_go(how: str) -> None:
    """F.normalize spreads the features' norm over them with an expand that the dependency graph read as mixing: c2
    was left dense. A channel of zeros adds nothing to a sum or a norm over the channels: it leaves."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 6, 6)
    assert set(unremovable_layers(_OverChannels(how).eval(), x)) == {"fc"}
    model = _OverChannels(how).eval()
    result = slim(model, _prune_units(model, {"c2": [0, 3, 7]}), x)
    assert result.removed["c2"] == (12, 9) and _module(result.model, "fc").in_features == 9, result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _SpreadMap(nn.Module):
    """An attention U-Net's gate: a one-channel map ``a`` (psi: a 1x1 convolution to one channel, its sigmoid) is
    spread over c2's 12 channels, multiplied (``mul``) or added (``add``); ``scale``: a per-example scale of shape
    (batch, 1) multiplies a Linear's features."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1)
        self.wg, self.wx, self.psi = nn.Conv2d(8, 6, 1), nn.Conv2d(12, 6, 1), nn.Conv2d(6, 1, 1)
        self.c3, self.fc = nn.Conv2d(12, 10, 3, padding=1), nn.Linear(10, 3)
        self.l1, self.g, self.l2 = nn.Linear(10, 16), nn.Linear(10, 1), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.relu(self.c1(x))
        h = torch.relu(self.c2(g))
        a = torch.sigmoid(self.psi(torch.relu(self.wg(g) + self.wx(h))))
        f = torch.relu(self.c3(h * a if self.op == "mul" else h + a)).mean((2, 3))
        return self.fc(f) + (self.l2(torch.relu(self.l1(f)) * torch.sigmoid(self.g(f))) if self.op == "mul" else 0)


@pytest.mark.parametrize("op", ["mul", "add"])
def test_a_one_channel_map_spread_over_the_channels(op: str) -> None:
    """The one-channel map's unit was read as coupled to channel 0 of the features it multiplies, and the features'
    other channels were never analysed: c2 (and l1) kept every pruned channel with no word. A product with the map
    lets a pruned channel go; a sum with it keeps the channel (the map's value is no constant), named."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 6, 6)
    # psi and g have one unit each (named for it)
    assert set(unremovable_layers(_SpreadMap(op).eval(), x)) == ({"fc", "l2", "psi", "g"} if op == "mul" else
                                                                 {"fc", "psi"})
    model = _SpreadMap(op).eval()
    masks = _prune_units(model, {"c2": [0, 3, 7], "psi": [0], **({"l1": [2, 5, 9], "g": [0]} if op == "mul" else {})})
    result = slim(model, masks, x)
    if op == "mul":
        assert result.removed["c2"] == (12, 9) and result.removed["l1"] == (16, 13), (result.removed, result.notes)
    else:
        assert result.removed["c2"] == (12, 12)
        assert any(note.startswith("c2: kept pruned channel(s) [0, 3, 7]") and "a tensor of one channel spread over "
                   "the channels (Add)" in note for note in result.notes), result.notes
    assert result.removed["psi"] == (1, 1)
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _ECA(nn.Module):
    """An ECA block: c2's pooled channels, moved onto the length axis, go through a 1-d convolution along the
    channels (one input channel), whose sigmoid multiplies c2's output."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 12, 3, padding=1)
        self.eca, self.fc = nn.Conv1d(1, 1, 3, padding=1, bias=False), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        y = self.eca(h.mean((2, 3), keepdim=True).squeeze(-1).transpose(-1, -2)).transpose(-1, -2).unsqueeze(-1)
        return self.fc((h * torch.sigmoid(y)).mean((2, 3)))


def test_a_layer_coupled_in_part_gets_a_group_of_its_own() -> None:
    """The 1-d convolution's one unit was read as coupled to c2's channel 0, and c2, a member of that group, never
    got one of its own: its other units were not analysed, c2 was not named before training and kept its pruned
    units after it with no word. Its own group fails (the convolution along the channels has one input channel), so
    it is named before training, and its pruned units stay with a note."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 6, 6)
    stuck = unremovable_layers(_ECA().eval(), x)
    assert set(stuck) == {"c2", "fc", "eca"} and "the dependency graph cannot follow where its units go" in stuck["c2"]
    model = _ECA().eval()
    result = slim(model, _prune_units(model, {"c1": [1, 5], "c2": [0, 3, 7]}), x)
    assert result.removed["c1"] == (8, 6) and result.removed["c2"] == (12, 12)
    assert any(note.startswith("c2: pruned units kept as zeros") for note in result.notes), result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _AttentionPool(nn.Module):
    """A 1-d CNN whose features are pooled over time with an attention map: a 1-d convolution to one channel, its
    softmax over time, multiplying c2's 12 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(4, 8, 3, padding=1), nn.Conv1d(8, 12, 3, padding=1)
        self.att, self.fc = nn.Conv1d(12, 1, 1), nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc((h * torch.softmax(self.att(h), dim=-1)).sum(-1))


def test_a_one_channel_map_over_time_is_spread_over_the_channels() -> None:
    """A (batch, 1, time) tensor beside (batch, 12, time) may be a sequence's (tokens on axis 1) or a 1-d
    convolution's; where it is a 1-d convolution's one channel, it is spread over the channels like a spatial map.
    Before, its unit was coupled to c2's channel 0, and removing that channel removed the map's only unit (the
    forward broke: c2 named "depends on the number of units" before training)."""
    torch.manual_seed(0)
    x = torch.randn(4, 4, 10)
    assert set(unremovable_layers(_AttentionPool().eval(), x)) == {"fc", "att"}  # att: one unit
    model = _AttentionPool().eval()
    result = slim(model, _prune_units(model, {"c2": [0, 3, 7]}), x)
    assert result.removed["c2"] == (12, 9) and result.removed.get("att", (1, 1)) == (1, 1), result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


def test_a_flatten_mapping_that_would_outgrow_every_layer_fails_its_group() -> None:
    """Torch-Pruning's flatten mapping, read inside a cycle, multiplied the channel indices on every turn (timm's
    global-context block: minutes and more than 12 GB, tests/test_zoo.py). Inside ``all_requiring_grad`` a mapping
    that would give more indices than four times the model's widest layer raises; a real flatten into a Linear
    (8192 inputs from 2 channels) passes, and the layers slim as before."""
    from torch_pruning._helpers import _HybridIndex
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping

    from prunedrop.slim.coupling import _GroupGrows, all_requiring_grad

    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 64 * 64, 3)).eval()
    idxs = [_HybridIndex(idx=i, root_idx=i) for i in range(2)]
    with all_requiring_grad(model):
        assert len(_FlattenIndexMapping(stride=4096)(idxs)) == 8192  # the Linear's inputs
        with pytest.raises(_GroupGrows, match="grew past 32768"):
            _FlattenIndexMapping(stride=4096 * 5)(idxs)
    assert len(_FlattenIndexMapping(stride=4096 * 5)(idxs)) == 40960  # outside, Torch-Pruning's own
    x = torch.randn(2, 1, 64, 64)
    masks = _prune_units(model, {"0": [1]})
    assert slim(model, masks, x).removed["0"] == (2, 1)


class _Tower(nn.Module):
    """Twelve convolutions in a row; the eighth's output is viewed with its width written out."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(1 if i == 0 else 6, 6, 3, padding=1) for i in range(12)])
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            if i == 7:
                x = x.view(x.shape[0], 6, x.shape[2], x.shape[3])
        return self.fc(x.mean((2, 3)))


def test_the_early_check_halves_the_layers_to_find_one_that_breaks(monkeypatch: pytest.MonkeyPatch) -> None:
    """One slim per layer after the trial broke took minutes on models of a hundred layers (MixNet-S 183 s); halving
    finds the one breaking layer of twelve in at most 9 slims (13 before), and names the same layer."""
    from prunedrop.slim import stage

    calls = []
    original = stage._slim_once
    monkeypatch.setattr(stage, "_slim_once", lambda *a, **k: calls.append(1) or original(*a, **k))
    stuck = unremovable_layers(_Tower().eval(), torch.randn(2, 1, 5, 5))
    assert set(stuck) == {"convs.7", "fc"} and "depends on the number of units" in stuck["convs.7"], stuck
    assert len(calls) <= 9, len(calls)


class _GatedFixedView(nn.Module):
    """c1's output, multiplied by a squeeze-excitation gate whose expansion is c2, is viewed with its width written
    out (c1 cannot lose units); c3 is a plain convolution beside."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 1), nn.Conv2d(1, 6, 3, padding=1)
        self.fc = nn.Linear(14, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.c1(x))
        h = (a * torch.sigmoid(self.c2(a.mean((2, 3), keepdim=True)))).view(a.shape[0], 8, -1).mean(2)
        return self.fc(torch.cat([h, torch.relu(self.c3(x)).mean((2, 3))], 1))


def test_a_layer_coupled_only_to_a_dense_layer_is_named_before_training() -> None:
    """c2's gate multiplies channels that c1 writes, and c1 cannot lose units (its width is written out): a channel
    leaves only when every coupled layer prunes it, so c2 never can, yet it was converted and trained with noise for
    nothing (MixNet's squeeze-excitation expansions, beside a split of fixed sizes). It is named now; c3 is not."""
    stuck = unremovable_layers(_GatedFixedView().eval(), torch.randn(2, 1, 5, 5))
    assert {"c1", "c2", "fc"} <= set(stuck) and "c3" not in stuck, stuck
    assert "depends on the number of units" in stuck["c1"]
    assert stuck["c2"].startswith("its channels are coupled element-wise to c1, which cannot lose units"), stuck


class _BufferScaled(nn.Module):
    """A fixed per-channel scale kept as a buffer between two convolutions (``h * s``, ``h / s``, or ``s / h``)."""

    def __init__(self, shape: tuple[int, ...], how: str = "mul") -> None:
        super().__init__()
        self.c1, self.c2, self.fc = _two_convs(6, 6, 4)
        self.register_buffer("s", torch.linspace(0.5, 1.5, 6).reshape(shape))
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        h = {"mul": lambda: h * self.s, "rmul": lambda: self.s * h, "div": lambda: h / self.s,
             "rdiv": lambda: self.s / (h + 1.0), "view": lambda: h * self.s.view(1, -1, 1, 1)}[self.how]()
        return self.fc(torch.relu(self.c2(h)).mean((2, 3)))


@pytest.mark.parametrize(("shape", "how"), [((1, 6, 1, 1), "mul"), ((6, 1, 1), "rmul"), ((6, 1, 1), "div"),
                                           ((6,), "view")])
def test_a_buffer_that_scales_each_channel_is_sliced_with_them(shape: tuple[int, ...], how: str) -> None:
    """A buffer outside autograd that multiplies or divides each channel: the dependency graph does not see it, and
    removing a unit broke the forward at the product, so the layer stayed whole; the buffer is now sliced."""
    torch.manual_seed(0)
    model, x = _BufferScaled(shape, how).eval(), torch.randn(4, 1, 6, 6)
    assert set(unremovable_layers(model, x)) == {"fc"}
    result = slim(model, _prune_units(model, {"c1": [0, 4]}), x)
    assert result.removed["c1"] == (6, 4) and result.model.s.shape == tuple(4 if d == 6 else d for d in shape)
    assert torch.equal(result.model.s.flatten(), model.s.flatten()[[1, 2, 3, 5]])
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


def test_a_buffer_divided_by_each_channel_keeps_them_and_itself() -> None:
    """``s / (h + 1)``: a pruned channel does not stay zeros through it, so it stays, and so does the buffer."""
    torch.manual_seed(0)
    model, x = _BufferScaled((1, 6, 1, 1), "rdiv").eval(), torch.randn(4, 1, 6, 6)
    result = slim(model, _prune_units(model, {"c1": [0, 4]}), x)
    assert result.removed["c1"] == (6, 6) and result.model.s.shape == (1, 6, 1, 1)
    assert any("c1: kept pruned channel(s) [0, 4]" in note for note in result.notes), result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _PadShortcutBlock(nn.Module):
    """A CIFAR ResNet's option-A block (He et al. 2016; the popular ``LambdaLayer`` form): the shortcut subsamples
    and zero-pads the channels, ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.c1, self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        short = nn.functional.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4))
        h = torch.relu(self.c2(torch.relu(self.c1(h))) + short)
        return self.fc(h.mean((2, 3)))


def test_a_shortcut_that_pads_the_channels_with_zeros_maps_them_to_their_offset() -> None:
    """The pad was read as element-wise ("index 8 is out of bounds"), so no channel of the residual stream could
    leave; now the shortcut's channel k meets the stream's channel k + 4, and a channel pruned in both leaves; the
    stream's channels that only the pad's zeros meet keep their number (fixed in the code), named."""
    torch.manual_seed(0)
    model, x = _PadShortcutBlock().eval(), torch.randn(4, 1, 8, 8)
    assert set(unremovable_layers(model, x)) == {"fc"}
    # the stream's channel 0 is the pad's zeros beside c2's unit 0; channels 6 and 9 are the stem's 2 and 5
    result = slim(model, _prune_units(model, {"c2": [0, 6, 9, 10], "c1": [3], "stem": [2, 5]}), x)
    assert result.removed["stem"] == (8, 6) and result.removed["c2"] == (16, 14) and result.removed["c1"] == (16, 15)
    assert any("c2" in n and "[0]" in n and "pad of the channel axis" in n for n in result.notes), result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _StackedBranches(nn.Module):
    """Two branches merged by stacking them on a new axis and reducing it (as selective-kernel blocks do)."""

    def __init__(self, reduce: str) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(1, 8, 5, padding=2)
        self.c, self.fc, self.reduce = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 3), reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = torch.stack([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        h = both.sum(1) if self.reduce == "sum" else both.mean(dim=1)
        return self.fc(torch.relu(self.c(h)).mean((2, 3)))


@pytest.mark.parametrize("reduce", ["sum", "mean"])
def test_branches_stacked_and_reduced_over_the_new_axis_lose_channels_together(reduce: str) -> None:
    """The reduction over the stack's axis of a 5-d tensor was read as one over the channels, so removing a unit of
    either branch broke the forward and both stayed whole; the branches are now coupled channel by channel."""
    torch.manual_seed(0)
    model, x = _StackedBranches(reduce).eval(), torch.randn(4, 1, 6, 6)
    assert set(unremovable_layers(model, x)) == {"fc"}
    result = slim(model, _prune_units(model, {"a": [2, 3, 6], "b": [2, 3], "c": [1]}), x)
    assert result.removed["a"] == (8, 6) and result.removed["b"] == (8, 6) and result.removed["c"] == (8, 7)
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _ViewedScale(nn.Module):
    """A per-channel scale kept as a (C,) parameter and viewed to broadcast in the forward."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = _two_convs(8, 8, 8)
        self.g, self.how = nn.Parameter(torch.linspace(0.5, 1.5, 8)), how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = {"view": lambda: self.g.view(1, -1, 1, 1), "index": lambda: self.g[:, None, None],
             "reshape": lambda: self.g.reshape(-1, 1, 1), "sigmoid": lambda: torch.sigmoid(self.g).view(1, -1, 1, 1),
             "exp": lambda: self.g.exp()[:, None, None]}[self.how]()
        return self.fc(torch.relu(self.c2(torch.relu(self.c1(x)) * g)).mean((2, 3)))


@pytest.mark.parametrize("how", ["view", "index", "reshape", "sigmoid", "exp"])
def test_a_scale_viewed_to_broadcast_is_sliced_with_its_channels(how: str) -> None:
    """``γ.view(1, -1, 1, 1)``, or a gate ``sigmoid(g)``, blocked every channel ("they pass through the bare
    parameter g")."""
    torch.manual_seed(0)
    model, x = _ViewedScale(how).eval(), torch.randn(4, 1, 6, 6)
    assert set(unremovable_layers(model, x)) == {"fc"}
    result = slim(model, _prune_units(model, {"c1": [0, 3, 7]}), x)
    assert result.removed["c1"] == (8, 5) and result.model.g.shape == (5,)
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _GatedResidual(nn.Module):
    """A residual branch scaled per channel by a learned gate, ``h + sigmoid(g) · relu(conv(h))``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.c, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 3)
        self.gate = nn.Parameter(torch.linspace(-1, 1, 8).view(8, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        return self.fc((h + torch.sigmoid(self.gate) * torch.relu(self.c(h))).mean((2, 3)))


def test_a_gated_residual_loses_the_channels_both_sides_prune_and_its_gate_with_them() -> None:
    torch.manual_seed(0)
    model, x = _GatedResidual().eval(), torch.randn(4, 1, 6, 6)
    assert set(unremovable_layers(model, x)) == {"fc"}
    result = slim(model, _prune_units(model, {"stem": [1, 6], "c": [1, 6, 7]}), x)
    assert result.removed["stem"] == (8, 6) and result.removed["c"] == (8, 6) and result.model.gate.shape == (6, 1, 1)
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _Summed(nn.Module):
    """Three branches summed the ways models write it: ``sum(features)`` (Python's sum starts from 0), ``s = 0`` and
    ``s = s + f`` in a loop (a WaveNet's skip connections), an in-place ``+=`` into ``torch.zeros_like``; or plus
    a constant 1, which a pruned channel does not keep at zero."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b, self.c = (nn.Conv2d(1, 8, 3, padding=1) for _ in range(3))
        self.d, self.fc = nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [torch.relu(m(x)) for m in (self.a, self.b, self.c)]
        if self.how == "sum":
            h = sum(features)
        elif self.how == "loop":
            h = 0
            for f in features:
                h = h + f
        elif self.how == "zeros_like":
            h = torch.zeros_like(features[0])
            for f in features:
                h += f
        elif self.how == "where":  # a ReLU written as a selection, and one as a maximum with zeros
            h = sum(torch.where(m(x) > 0, m(x), 0.0) for m in (self.a, self.b)) + torch.maximum(
                self.c(x), torch.zeros_like(features[0]))
        elif self.how == "where_minus_one":
            h = sum(torch.where(m(x) > 0, m(x), -1.0) for m in (self.a, self.b, self.c))
        else:
            h = features[0] + features[1] + features[2] + 1.0
        return self.fc(torch.relu(self.d(h)).mean((2, 3)))


@pytest.mark.parametrize("how", ["sum", "loop", "zeros_like", "where", "plus_one", "where_minus_one"])
def test_a_sum_started_from_zero_lets_the_channels_every_summand_pruned_go(how: str) -> None:
    """The 0 a sum starts from is an operand without autograd history, which was read as one that could feed the
    pruned channels: none of the summed layers lost a unit. So were the zeros of ``torch.where(c, h, 0)`` and of
    ``torch.maximum(h, zeros)``; a constant other than 0 does feed them."""
    torch.manual_seed(0)
    model, x = _Summed(how).eval(), torch.randn(4, 1, 6, 6)
    result = slim(model, _prune_units(model, {"a": [1, 4], "b": [1, 4], "c": [1, 4]}), x)
    kept = 8 if how in ("plus_one", "where_minus_one") else 6
    assert [result.removed[n] for n in "abc"] == [(8, kept)] * 3, result.notes
    assert _module(result.model, "d").in_channels == kept
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


class _PixelAttentionPool(nn.Module):
    """Attention pooling: a one-channel score map of the features, its softmax over the pixels, the features
    (flattened to (batch, C, H·W)) weighted by it and summed."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.score, self.fc = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 1, 1), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        weights = torch.softmax(self.score(h).flatten(2), -1)
        return self.fc((h.flatten(2) * weights).sum(-1))


def test_a_flattened_one_channel_map_weighing_the_features_lets_their_channels_go() -> None:
    """The (batch, 1, H·W) map was read as coupled to the features' channel 0, and c1 kept every pruned channel
    without a word."""
    torch.manual_seed(0)
    model, x = _PixelAttentionPool().eval(), torch.randn(4, 1, 6, 6)
    result = slim(model, _prune_units(model, {"c1": [1, 4, 9]}), x)
    assert result.removed["c1"] == (16, 13) and _module(result.model, "fc").in_features == 13, result.notes
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5


def test_pruned_units_no_group_planned_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the dependency graph puts pruned units in no group it plans, they stay as zeros with a note."""
    from prunedrop.slim import coupling

    monkeypatch.setattr(coupling._Recorder, "_CONVS", (torch.conv1d,))  # the map read as before: no group for c1
    torch.manual_seed(0)
    model, x = _PixelAttentionPool().eval(), torch.randn(4, 1, 6, 6)
    result = slim(model, _prune_units(model, {"c1": [1, 4, 9]}), x)
    assert result.removed["c1"] == (16, 16)
    assert "c1: 3 pruned unit(s) kept as zeros: the dependency graph placed them in no group" in result.notes[0]


class _Capsules(nn.Module):
    """Primary capsules: 64 channels viewed as eight 8-d capsules per position, squashed by their norm."""

    def __init__(self) -> None:
        super().__init__()
        self.prim, self.fc = nn.Conv2d(1, 64, 3, stride=2, padding=1), nn.Linear(8 * 9 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.prim(x)
        u = u.view(u.shape[0], 8, 8, -1).transpose(2, 3)
        n2 = (u ** 2).sum(-1, keepdim=True)
        return self.fc((n2 / (1 + n2) * u / (n2.sqrt() + 1e-8)).flatten(1))


def test_channels_regrouped_by_a_view_of_the_same_rank_are_named_as_moved() -> None:
    """The view was read as a flatten whose channel numbers grew without bound, and that was the reason given."""
    stuck = unremovable_layers(_Capsules().eval(), torch.randn(4, 1, 6, 6))
    assert "moves channels to other places or numbers" in stuck["prim"], stuck


class _Ghost(nn.Module):
    """GhostNet's module: a 1x1 convolution's output concatenated with a depthwise convolution of it."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.primary = nn.Sequential(nn.Conv2d(c_in, c_out // 2, 1, bias=False), nn.BatchNorm2d(c_out // 2))
        self.cheap = nn.Sequential(nn.Conv2d(c_out // 2, c_out // 2, 3, padding=1, groups=c_out // 2, bias=False),
                                   nn.BatchNorm2d(c_out // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)


class _GhostStream(nn.Module):
    """Two Ghost modules write one residual stream of 8 channels with a projection shortcut: channels j and j + 4
    are one unit of each Ghost's first layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3, padding=1)
        self.g1, self.short = _Ghost(6, 8), nn.Sequential(nn.Conv2d(6, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.g2 = _Ghost(8, 8)
        self.down = nn.Conv2d(8, 10, 1)
        self.fc = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = self.g1(h) + self.short(h)
        h = self.g2(h) + h
        return self.fc(torch.relu(self.down(h)).mean((2, 3)))


def test_a_ghost_modules_channels_leave_only_with_the_channel_their_unit_also_writes() -> None:
    """Removing stream channel 7 (the depthwise copy of unit 3) took channel 3 with it, which the shortcut still
    wrote: the slim model's output moved by 0.18, the check caught it and slimming fell back to trying every layer
    alone (GhostNet: 360 slims, 200 s). Channel 7 now stays, with the reason, and the slim is exact."""
    torch.manual_seed(0)
    model = _GhostStream().eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        with torch.no_grad():
            bn.running_mean.uniform_(-1, 1), bn.bias.uniform_(-1, 1)
    x = torch.randn(4, 1, 8, 8)
    masks = _prune_units(model, {"g1.primary.0": [3], "g1.cheap.0": [3], "short.0": [3, 7], "g2.primary.0": [3],
                                 "g2.cheap.0": [3]})
    result = slim(model, masks, x)
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5
    assert any("tied to the same unit" in note for note in result.notes), result.notes
    assert not any("kept as zeros, since removing them" in note for note in result.notes), result.notes
    assert not any("placed them in no group" in note for note in result.notes), result.notes  # its copy: named above


class _PartialResidual(nn.Module):
    """ReXNet's block: the shortcut is added to the first c_in channels only, cat([x[:, :c_in] + s, x[:, c_in:]])."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.c_in = c_in
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        x = self.conv(s)
        return torch.cat([x[:, 0:self.c_in] + s, x[:, self.c_in:]], 1)


class _PartialResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(1, 6, 3, padding=1), _PartialResidual(6, 8), _PartialResidual(8, 10)
        self.fc = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.b(self.a(torch.relu(self.stem(x))))).mean((2, 3)))


def test_layers_whose_units_break_the_forward_only_together_are_named_before_training() -> None:
    """A residual stream sliced at a fixed offset breaks only when all of its producers lose a unit, and the check
    halved the layers apart, each half slimming: nothing was named, SBP trained those layers on a ReXNet, and the
    slim after training broke and fell back. The layers that break it together are named, each with the others."""
    torch.manual_seed(0)
    stuck = unremovable_layers(_PartialResidualNet().eval(), torch.randn(2, 1, 6, 6))
    assert {"stem", "a.conv"} <= set(stuck), stuck
    assert "together with those of" in stuck["stem"] and "a.conv" in stuck["stem"], stuck


class _ManyLayersOneFixed(nn.Module):
    """Sixteen convolutions in a row; the ninth's output is viewed with its width written out."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(1 if i == 0 else 6, 6, 3, padding=1) for i in range(16)])
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            if i == 8:
                x = x.reshape(x.shape[0], 6, -1).reshape(x.shape)
        return self.fc(x.mean((2, 3)))


def test_slimming_that_breaks_halves_the_layers_instead_of_trying_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the whole slim broke, every layer was slimmed alone and then added one by one: 2 slims per layer. Halves
    are added while the model slims now: the one layer that breaks it is found in a few slims, and the others go."""
    from prunedrop.slim import stage

    torch.manual_seed(0)
    model = _ManyLayersOneFixed().eval()
    masks = _prune_units(model, {f"convs.{i}": [2] for i in range(16)})
    calls = []
    original = stage._slim_once
    monkeypatch.setattr(stage, "_slim_once", lambda *a, **k: calls.append(1) or original(*a, **k))
    result = slim(model, masks, torch.randn(2, 1, 5, 5))
    assert result.removed["convs.8"] == (6, 6) and result.removed["convs.3"] == (6, 5), result.removed
    assert any("convs.8" in note and "kept as zeros" in note for note in result.notes), result.notes
    assert len(calls) <= 12, len(calls)


class _GhostThenDepthwise(nn.Module):
    """A Ghost module read by a depthwise convolution (GhostNet's strided blocks): dw's channels j and j + 4 are one
    unit of the Ghost's first layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.g = nn.Conv2d(1, 6, 3, padding=1), _Ghost(6, 8)
        self.dw, self.pw, self.fc = nn.Conv2d(8, 8, 3, 2, 1, groups=8), nn.Conv2d(8, 10, 1), nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.dw(torch.relu(self.g(torch.relu(self.stem(x))))))
        return self.fc(torch.relu(self.pw(h)).mean((2, 3)))


def test_a_ghost_modules_unit_leaves_when_both_of_its_channels_are_pruned() -> None:
    """Removing dw's channel 6 took channel 2 (the same unit of g.primary) with it: the output moved, and every
    pruned channel of dw stayed. Channels 1 and 5 (both of unit 1) leave now, with the unit; 6 stays, named."""
    torch.manual_seed(0)
    model = _GhostThenDepthwise().eval()
    x = torch.randn(4, 1, 8, 8)
    result = slim(model, _prune_units(model, {"dw": [1, 5, 6]}), x)
    assert result.removed["dw"] == (8, 6) and result.removed["g.primary.0"] == (4, 3), result.removed
    assert any(note.startswith("dw (coupled with g.primary.0): kept pruned channel(s) [6]") for note in result.notes)
    assert _diff_on_fresh_inputs(model, result.model, x) <= 1e-5
