"""Tied residual noise (recipe key ``tie_residual``): the producers of one residual stream share one noise per
channel, so a stream channel is pruned in all of them at once and slimming removes it."""

from __future__ import annotations

import copy

import pytest
import torch

from prunedrop.convert import ConversionSummary, to_variational, variational_layers
from prunedrop.errors import PrunedropError
from prunedrop.layers.lognormal import TiedDraw, tie_units
from prunedrop.prune import prune
from prunedrop.recipes import Recipe
from prunedrop.slim import coupled_producers, slim
from prunedrop.testing_arch import tiny_arch
from prunedrop.train import training_kl

STRUCTURED = ["sbp", "group_vd", "sbp_sparse_vd"]


@pytest.mark.parametrize(("arch", "groups"), [
    ("resnet_basic", [["layer2.conv2.0", "layer2.shortcut.0"], ["stem.0.0", "layer1.conv2.0"]]),
    ("resnet_bottleneck", [["layer2.expand.0", "layer2.shortcut.0"],
                           ["layer1.0.expand.0", "layer1.0.shortcut.0", "layer1.1.expand.0"]]),
    ("mobilenet_v2", [["stem.0.0", "blocks.0.project.0"]]),
    ("densenet", []),  # a concatenation offsets the channel numbers: not one stream
    ("lenet5", []),
    ("vgg_bn", []),
])
def test_coupled_producers_are_the_layers_writing_one_residual_stream(arch: str, groups: list[list[str]]) -> None:
    model, x = tiny_arch(arch)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    assert sorted(coupled_producers(model, x)) == sorted(groups)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags  # the tracing changed nothing


def _tied(method: str, arch: str = "resnet_basic") -> tuple[torch.nn.Module, torch.Tensor, ConversionSummary]:
    model, x = tiny_arch(arch)
    summary = ConversionSummary()
    variational = to_variational(model, Recipe(method=method, tie_residual=True), summary=summary,
                                 example_input=x[:2])
    return variational, x, summary


@pytest.mark.parametrize("method", STRUCTURED)
def test_tied_layers_share_their_unit_parameters_and_each_pass_draws_once(
        method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x, summary = _tied(method)
    assert sorted(summary.tied) == [["layer2.conv2.0", "layer2.shortcut.0"], ["stem.0.0", "layer1.conv2.0"]]
    layers = variational_layers(model)
    for group in summary.tied:
        lead = layers[group[0]]
        for name in group[1:]:
            for p in lead.unit_noise_names:
                assert getattr(layers[name], p) is getattr(lead, p)
    # the optimizer sees each shared parameter once
    assert len(list(model.parameters())) == len({id(p) for _, p in model.named_parameters()})
    assert len(list(model.parameters())) < len(list(model.named_parameters(remove_duplicate=False)))

    draws: list[torch.Tensor] = []

    def recording(original):  # type: ignore[no-untyped-def]
        def draw(self, shape, unit_axis):  # type: ignore[no-untyped-def]
            draws.append(original(self, shape, unit_axis))
            return draws[-1]
        return draw

    given: dict[int, torch.Tensor] = {}
    original_multiplier = TiedDraw.multiplier

    def recording_multiplier(self, layer, shape, unit_axis):  # type: ignore[no-untyped-def]
        given[id(layer)] = original_multiplier(self, layer, shape, unit_axis)
        return given[id(layer)]

    for cls in {type(layer) for layer in layers.values()}:
        monkeypatch.setattr(cls, "_sample_multiplier", recording(cls._sample_multiplier))
    monkeypatch.setattr(TiedDraw, "multiplier", recording_multiplier)
    model.train()
    independent = len(layers) - sum(len(g) - 1 for g in summary.tied)
    for n_pass in (1, 2):  # each pass draws once per independent noise, the second one afresh
        model(x)
        assert len(draws) == n_pass * independent
        for group in summary.tied:
            first = given[id(layers[group[0]])]
            assert all(given[id(layers[name])] is first for name in group)
            assert any(first is d for d in draws[-independent:])


@pytest.mark.parametrize("method", STRUCTURED)
def test_a_tied_unit_pays_the_kl_of_every_layer_it_occupies(method: str) -> None:
    model, _, summary = _tied(method)
    layers = variational_layers(model)
    names = list(layers)
    factors = [1.0 + i for i in range(len(names))]
    total = training_kl(list(layers.values()), factors)
    expected = sum(f * layers[n].kl() for n, f in zip(names, factors, strict=True))
    torch.testing.assert_close(total, expected)
    # and tying made the KL of the group's members identical in their unit part
    lead, other = layers[summary.tied[0][0]], layers[summary.tied[0][1]]
    if method != "sbp_sparse_vd":  # the combined layers add their own per-weight KL
        torch.testing.assert_close(lead.kl(), other.kl())


def _stem_channel_1_pruned(tie: bool) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]], float]:
    """Convert the tiny ResNet with SBP (tied or not), make channel 1 of the stem's noise far above its signal
    (SNR < 1) and slim: the unit masks, what slimming removed and its max abs difference. The noise acts on the
    BatchNorms' outputs (``batchnorm_noise: after``), so the random BatchNorm shifts of the tiny architecture do not
    keep the pruned channel alive."""
    plain, x = tiny_arch("resnet_basic")
    model = to_variational(plain, Recipe(method="sbp", tie_residual=tie), example_input=x[:2])
    stem = variational_layers(model)["stem.0.0"]
    with torch.no_grad():
        stem.mu[1] = -10.0
        stem.log_sigma[1] = 2.0
    pruned = prune(model.eval(), 1.0)
    result = slim(pruned.model, pruned.unit_masks, x)
    return pruned.unit_masks, result.removed, result.max_abs_diff


def test_a_tied_stream_channel_is_pruned_everywhere_and_slimmed() -> None:
    masks, removed, diff = _stem_channel_1_pruned(tie=True)
    assert not bool(masks["stem.0.0"][1]) and not bool(masks["layer1.conv2.0"][1])  # set once, for the group
    assert removed["stem.0.0"] == (6, 5) and removed["layer1.conv2.0"] == (6, 5)
    assert diff <= 1e-5
    # untied, the same setting on the stem alone leaves the channel in place: the block still writes it
    masks, removed, _ = _stem_channel_1_pruned(tie=False)
    assert not bool(masks["stem.0.0"][1]) and bool(masks["layer1.conv2.0"][1])
    assert removed["stem.0.0"] == (6, 6)


def test_copies_and_checkpoints_keep_or_ignore_the_tie() -> None:
    model, x, summary = _tied("sbp")
    model.train()
    model(x)  # a draw with autograd history is cached: a deep copy must not try to copy it
    clone = copy.deepcopy(model)
    a, b = (variational_layers(clone)[n] for n in summary.tied[1])
    assert a.mu is b.mu and a._tied is b._tied
    assert a._tied is not variational_layers(model)[summary.tied[1][0]]._tied
    # the state dict names the shared tensor under each member; a fresh untied conversion loads it too
    fresh = to_variational(tiny_arch("resnet_basic")[0], Recipe(method="sbp"))
    fresh.load_state_dict(model.state_dict())
    model.eval()
    fresh.eval()
    torch.testing.assert_close(fresh(x), model(x))


def test_tie_residual_needs_an_example_input_and_unit_noise() -> None:
    model, _ = tiny_arch("resnet_basic")
    with pytest.raises(PrunedropError, match="example input"):
        to_variational(model, Recipe(method="sbp", tie_residual=True))
    # per-weight sparse VD has no unit noise to share: nothing is tied
    summary = ConversionSummary()
    model, x = tiny_arch("resnet_basic")
    to_variational(model, Recipe(method="sparse_vd", tie_residual=True), summary=summary, example_input=x[:2])
    assert summary.tied == []
    a, b = tiny_arch("resnet_basic")[0], tiny_arch("resnet_basic")[0]
    la = variational_layers(to_variational(a, Recipe(method="sbp")))
    lb = variational_layers(to_variational(b, Recipe(method="group_vd")))
    with pytest.raises(TypeError, match="one family"):
        tie_units([la["stem.0.0"], lb["layer1.conv2.0"]])
    with pytest.raises(ValueError, match="units"):
        tie_units([la["stem.0.0"], la["layer2.conv2.0"]])


def test_a_tracing_failure_names_the_recipe_key(monkeypatch: pytest.MonkeyPatch) -> None:
    import prunedrop.slim

    def broken(model, example_input):  # type: ignore[no-untyped-def]
        raise RuntimeError("unsupported operation\nmore")

    monkeypatch.setattr(prunedrop.slim, "coupled_producers", broken)
    model, x = tiny_arch("resnet_basic")
    with pytest.raises(PrunedropError, match="tie_residual: false") as info:
        to_variational(model, Recipe(method="sbp", tie_residual=True), example_input=x[:2])
    assert "RuntimeError: unsupported operation" in str(info.value)


class _ReusedLayer(torch.nn.Module):
    """One Linear applied twice in forward: its input and output are one channel space, which it shares with the
    layer before it, so tie_residual ties the two (a weight-shared recurrence of the kind users write)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = torch.nn.Linear(6, 8)
        self.shared = torch.nn.Linear(8, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        h = torch.relu(self.shared(h))
        return self.out(torch.relu(self.shared(h)))


@pytest.mark.parametrize("method", STRUCTURED)
def test_a_tied_group_with_a_layer_called_twice_trains_step_after_step(method: str) -> None:
    # The layer's second call draws afresh, so the first member of the next pass was not among the draw's users
    # and reused it after backward had freed its graph: "Trying to backward through the graph a second time".
    torch.manual_seed(0)
    x = torch.randn(16, 6)
    summary = ConversionSummary()
    model = to_variational(_ReusedLayer(), Recipe(method=method, tie_residual=True), summary=summary,
                           example_input=x)
    assert summary.tied == [["inp", "shared"]]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(3):
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss)
