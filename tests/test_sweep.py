"""Tests for prunedrop.sweep: exact counts against hand counts and prune(), restored state, the chooser."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from prunedrop.convert import to_variational, variational_layers
from prunedrop.errors import PrunedropError
from prunedrop.export.sparse import stored_bytes
from prunedrop.prune import prune
from prunedrop.recipes import Recipe
from prunedrop.report import count_parameters, profile_model
from prunedrop.sweep import SweepPoint, choose_threshold, default_thresholds, sweep_thresholds
from prunedrop.testing import TinyMLP, tiny_classification_data, tiny_model
from prunedrop.train import evaluate


def _accuracy(model, loader) -> float:
    return evaluate(model, loader)["accuracy"]


def _loader(shape, n=64, batch=16):
    x, y = tiny_classification_data(n=n, shape=shape)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def _set_log_alpha(model, seed: int = 0) -> dict[str, torch.Tensor]:
    """Give every sparse VD weight a log α from the grid −3.25, −2.75, …, 6.25 (never on a 0.5 threshold).

    Returns the target log α per layer, for hand counts.
    """
    g = torch.Generator().manual_seed(seed)
    targets = {}
    with torch.no_grad():
        for name, layer in variational_layers(model).items():
            n = layer.weight.numel()
            grid = -3.25 + 0.5 * (torch.arange(n) % 20).float()
            target = grid[torch.randperm(n, generator=g)].reshape(layer.weight.shape)
            layer.log_sigma2.copy_(target + torch.log(layer.weight**2 + 1e-8))
            targets[name] = target
    return targets


def _variational_mlp():
    torch.manual_seed(0)
    model = to_variational(TinyMLP(), Recipe())
    return model, _set_log_alpha(model)


def test_sweep_counts_equal_hand_counts_and_rise_with_threshold():
    model, targets = _variational_mlp()
    # the layers' own log α reproduce the targets (to float rounding, far from the 0.25 margin)
    for name, layer in variational_layers(model).items():
        assert torch.allclose(layer.log_alpha, targets[name], atol=1e-4)
    loader = _loader((1, 4, 4))
    thresholds = [-4.0, *default_thresholds(), 7.0]  # the targets span −3.25 … 6.25
    points = sweep_thresholds(model, loader, thresholds, evaluate_fn=_accuracy)
    assert [p.threshold for p in points] == thresholds
    biases = sum(layer.bias.numel() for layer in variational_layers(model).values())
    total_weights = sum(t.numel() for t in targets.values())
    for p in points:
        hand = {name: int((t <= p.threshold).sum()) for name, t in targets.items()}
        assert p.kept_per_layer == hand
        assert p.kept_weights == sum(hand.values())
        assert p.total_weights == total_weights
        assert p.params == p.kept_weights + biases  # biases are never pruned by sparse VD
        assert p.total_params == total_weights + biases
        assert p.nonzero_macs == p.kept_weights  # linear layers on flat inputs: one position each
        assert p.macs == total_weights
        assert 0 <= p.metric <= 100
    kept = [p.kept_weights for p in points]
    # keep where log α <= threshold: a higher threshold keeps more, never less
    assert kept == sorted(kept) and kept[0] < kept[-1]
    assert points[0].kept_weights == 0 and points[-1].kept_weights == total_weights
    json.dumps([p.to_dict() for p in points], allow_nan=False)


@pytest.mark.parametrize("method", ["sparse_vd", "group_vd"])
@pytest.mark.parametrize("name", ["convzoo", "residual", "lenet5"])
def test_sweep_is_exact_against_prune_and_report(name, method):
    base, x = tiny_model(name)
    recipe = Recipe()
    recipe.method = method  # type: ignore[assignment]
    model = to_variational(copy.deepcopy(base), recipe)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in variational_layers(model).values():
            noise = layer.log_sigma2 if method == "sparse_vd" else layer.log_alpha_param
            noise.copy_(torch.empty(noise.shape).uniform_(-6, 6, generator=g))
    loader = _loader(tuple(x.shape[1:]), n=32)
    thresholds = [-1.0, 0.5, 2.0]
    points = sweep_thresholds(model, loader, thresholds, evaluate_fn=_accuracy)
    for p in points:
        pruned = prune(copy.deepcopy(model), p.threshold).model
        total, nonzero = count_parameters(pruned)
        profiles = profile_model(pruned, x)
        assert (p.params, p.total_params) == (nonzero, total)
        assert p.nonzero_macs == sum(q.nonzero_macs for q in profiles)
        assert p.macs == sum(q.macs for q in profiles)
        assert p.metric == pytest.approx(_accuracy(pruned, loader))
        assert p.stored_bytes == p.dense_bytes == 0  # not asked for
    counted = sweep_thresholds(model, loader, thresholds, evaluate_fn=_accuracy, count_bytes=True)
    for p in counted:
        pruned = prune(copy.deepcopy(model), p.threshold).model
        assert p.stored_bytes == sum(stored_bytes(q.detach().numpy()) for q in pruned.parameters())
        assert p.dense_bytes == 4 * p.total_params
    assert counted[0].stored_bytes < counted[-1].stored_bytes <= counted[-1].dense_bytes


@pytest.mark.parametrize("method", ["sparse_vd", "group_vd"])
def test_the_sweep_counts_attention_as_the_report_does(method):
    """An attention layer's products of queries and keys use no weight: the sweep adds them at every threshold
    (its per-weight count of positions would otherwise be off by them), so a transformer's points are exact."""
    from prunedrop.testing import TransformerClassifier

    torch.manual_seed(0)
    model = to_variational(TransformerClassifier().eval(), Recipe(method=method))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for layer in variational_layers(model).values():
            for noise in layer.noise_parameters():
                noise.copy_(torch.empty(noise.shape).uniform_(-6, 6, generator=g))
    x = torch.randn(4, 5, 6)
    loader = [(x, torch.zeros(4, dtype=torch.long))]
    points = sweep_thresholds(model, loader, [-1.0, 1.0, 3.0], evaluate_fn=_accuracy)
    assert any(q.fixed_macs > 0 for q in profile_model(model, x))
    for p in points:
        pruned = prune(copy.deepcopy(model), p.threshold).model
        profiles = profile_model(pruned, x)
        assert p.nonzero_macs == sum(q.nonzero_macs for q in profiles)
        assert p.macs == sum(q.macs for q in profiles)
    assert points[0].nonzero_macs != points[-1].nonzero_macs


def test_thresholds_and_modes_restored_even_on_error():
    model, _ = _variational_mlp()
    layers = list(variational_layers(model).values())
    for i, layer in enumerate(layers):
        layer.threshold = 1.0 + i
    model.train()
    layers[0].eval()
    modes = [m.training for m in model.modules()]
    seen_training = []

    def metric(m, loader):
        seen_training.append(any(mod.training for mod in m.modules()))
        return 1.0

    sweep_thresholds(model, _loader((1, 4, 4)), [0.0, 5.0], evaluate_fn=metric)
    assert seen_training == [False, False]  # evaluated in eval mode
    assert [layer.threshold for layer in layers] == [1.0 + i for i in range(len(layers))]
    assert [m.training for m in model.modules()] == modes

    def broken(m, loader):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sweep_thresholds(model, _loader((1, 4, 4)), [0.0], evaluate_fn=broken)
    assert [layer.threshold for layer in layers] == [1.0 + i for i in range(len(layers))]
    assert [m.training for m in model.modules()] == modes


def test_sweep_rejects_plain_models_and_bad_thresholds():
    model, _ = _variational_mlp()
    with pytest.raises(PrunedropError, match="no variational layer"):
        sweep_thresholds(TinyMLP(), _loader((1, 4, 4)), [3.0], evaluate_fn=_accuracy)
    with pytest.raises(PrunedropError, match="thresholds"):
        sweep_thresholds(model, _loader((1, 4, 4)), [], evaluate_fn=_accuracy)
    with pytest.raises(PrunedropError, match="thresholds"):
        sweep_thresholds(model, _loader((1, 4, 4)), [float("nan")], evaluate_fn=_accuracy)
    with pytest.raises(PrunedropError, match="empty"):
        sweep_thresholds(model, [], [3.0], evaluate_fn=_accuracy)


def test_default_thresholds():
    ts = default_thresholds()
    assert ts[0] == -2.0 and ts[-1] == 6.0 and len(ts) == 17 and 3.0 in ts
    assert default_thresholds(0, 1, 0.25) == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(ValueError):
        default_thresholds(step=0)


# ------------------------------------------------------------------------------------------- the chooser


def _point(threshold: float, metric: float, params: int) -> SweepPoint:
    return SweepPoint(threshold=threshold, metric=metric, kept_weights=params, total_weights=1000,
                      params=params, total_params=1000, nonzero_macs=params, macs=1000)


CURVE = [
    _point(-2.0, 80.0, 10),
    _point(-1.0, 95.0, 50),
    _point(0.0, 97.5, 120),
    _point(1.0, 98.2, 300),
    _point(2.0, 98.5, 600),
    _point(3.0, 98.6, 900),
]


def test_choose_picks_most_compressed_within_budget():
    assert choose_threshold(CURVE, metric_before=98.6, max_metric_drop=0.5).threshold == 1.0
    assert choose_threshold(CURVE, metric_before=98.6, max_metric_drop=1.2).threshold == 0.0
    assert choose_threshold(CURVE, metric_before=98.6, max_metric_drop=100).threshold == -2.0
    assert choose_threshold(CURVE, metric_before=98.6, max_metric_drop=0.0).threshold == 3.0
    # order of the points does not matter
    assert choose_threshold(CURVE[::-1], metric_before=98.6, max_metric_drop=0.5).threshold == 1.0


def test_choose_boundary_is_inclusive_despite_float_rounding():
    # 98.61 - 97.61 == 1.0000000000000142 in floats: exactly on the budget must still qualify
    points = [_point(0.0, 97.61, 10), _point(3.0, 98.61, 100)]
    assert choose_threshold(points, metric_before=98.61, max_metric_drop=1.0).threshold == 0.0


def test_choose_none_when_nothing_qualifies():
    assert choose_threshold(CURVE, metric_before=99.5, max_metric_drop=0.5) is None
    assert choose_threshold([], metric_before=99.5, max_metric_drop=0.5) is None
    assert choose_threshold([_point(0.0, math.nan, 1)], metric_before=1.0, max_metric_drop=10) is None


def test_choose_ties():
    # equal params: the better metric wins; equal params and metric: the smaller threshold
    points = [_point(2.0, 97.0, 100), _point(1.5, 98.0, 100), _point(1.0, 98.0, 100), _point(3.0, 98.5, 400)]
    assert choose_threshold(points, metric_before=98.5, max_metric_drop=2.0).threshold == 1.0
    points = [_point(2.0, 97.0, 100), _point(1.5, 98.0, 100), _point(3.0, 98.5, 400)]
    assert choose_threshold(points, metric_before=98.5, max_metric_drop=2.0).threshold == 1.5


def test_choose_lower_is_better():
    mse = [_point(-2.0, 0.50, 10), _point(0.0, 0.12, 100), _point(2.0, 0.105, 500), _point(3.0, 0.10, 900)]
    def choose(before, drop):
        return choose_threshold(mse, metric_before=before, max_metric_drop=drop, higher_is_better=False)

    # the budget of a lower-is-better metric is its relative increase in percent (autopilot.metric_drop)
    assert choose(0.10, 20.0).threshold == 0.0  # 0.12 is 20% more error
    assert choose(0.10, 19.0).threshold == 2.0  # 0.105 is 5% more
    assert choose(0.10, 4.0).threshold == 3.0
    assert choose(0.05, 99.0) is None  # 0.10 is 100% more
    assert choose(0.6, 0.0).threshold == -2.0  # an improvement always qualifies, even with a zero budget


def test_choose_rejects_non_finite_inputs():
    with pytest.raises(ValueError):
        choose_threshold(CURVE, metric_before=math.nan, max_metric_drop=1.0)
    with pytest.raises(ValueError):
        choose_threshold(CURVE, metric_before=1.0, max_metric_drop=math.inf)


def test_point_ratios():
    p = _point(0.0, 1.0, 250)
    assert p.kept_fraction == 0.25 and p.params_ratio == 4.0 and p.flops_ratio == 4.0
    empty = _point(0.0, 1.0, 0)
    assert empty.params_ratio is None and empty.flops_ratio is None
