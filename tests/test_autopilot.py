"""The autopilot: the β controller on toy measurements, target parsing, bad inputs, and end-to-end runs on tiny data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from prunedrop import autopilot
from prunedrop.autopilot import BETA_MAX, BETA_MIN, Autopilot, CostMeter, metric_drop, parse_target
from prunedrop.cli import cli
from prunedrop.convert import to_variational
from prunedrop.data import DataBundle, load_data
from prunedrop.errors import PrunedropError
from prunedrop.pipeline import compress
from prunedrop.recipes import Recipe
from prunedrop.testing import TinyLeNet5, TinyMLP, fit, tiny_classification_data

# -- targets and budgets -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "kind", "ratio", "limit"), [
    ("flops=10x", "flops", 10.0, None), ("params=50X", "params", 50.0, None), ("bytes=5x", "bytes", 5.0, None),
    ("bytes=200KB", "bytes", None, 200_000.0), ("bytes=1.5MiB", "bytes", None, 1.5 * 1024**2),
    ("flops = 2.5", "flops", 2.5, None),
])
def test_targets_parse(spec: str, kind: str, ratio: float | None, limit: float | None) -> None:
    t = parse_target(spec)
    assert (t.kind, t.ratio, t.limit) == (kind, ratio, limit)


@pytest.mark.parametrize("spec", ["flops=1x", "flops=0.5x", "params=1", "latency=3x", "flops", "flops=abc",
                                  "flops=200KB", "bytes=0KB", "=3x", "flops=nanx", "flops=-3x", ""])
def test_bad_targets_are_one_line_errors(spec: str) -> None:
    with pytest.raises(PrunedropError) as e:
        parse_target(spec)
    assert "\n" not in str(e.value) and "target" in str(e.value)


def test_bytes_target_ratio_from_a_limit() -> None:
    assert parse_target("bytes=100KB").ratio_for(1_000_000) == pytest.approx(10.0)


def test_metric_drop_is_points_for_accuracy_and_percent_for_mse() -> None:
    assert metric_drop(98.0, 97.5, loss="cross_entropy") == pytest.approx(0.5)
    assert metric_drop(0.20, 0.21, loss="mse") == pytest.approx(5.0)
    assert metric_drop(0.20, 0.19, loss="mse") < 0


@pytest.mark.parametrize(("changes", "key"), [
    ({"max_metric_drop": 0}, "max_metric_drop"), ({"max_metric_drop": -1}, "max_metric_drop"),
    ({"max_metric_drop": float("nan")}, "max_metric_drop"), ({"max_metric_drop": 101}, "max_metric_drop"),
    ({"max_metric_drop": float("inf")}, "max_metric_drop"),
    ({"target": "flops=1x"}, "target"), ({"target": "speed=3x"}, "target"),
    ({"target": "flops=10x", "kl_weight": 2.0}, "target"), ({"target": "params=4x", "kl_weights": {"a": 2}}, "target"),
    ({"budget_confidence": 0.4}, "budget_confidence"), ({"budget_confidence": 1.0}, "budget_confidence"),
    ({"budget_confidence": float("nan")}, "budget_confidence"), ({"budget_confidence": -0.9}, "budget_confidence"),
    ({"budget_confidence": 0.9, "max_metric_drop": None}, "budget_confidence"),
])
def test_bad_budgets_and_targets_in_recipes(changes: dict, key: str) -> None:
    with pytest.raises(PrunedropError, match=key):
        Recipe(**changes)


def test_who_chooses_beta() -> None:
    assert Recipe().automatic and Recipe().max_metric_drop == 1.0 and Recipe().method == "sparse_vd"
    assert not Recipe(kl_weight=3.0).automatic and Recipe(kl_weight=3.0).fixed_beta == 3.0
    assert not Recipe(kl_weights={"conv*": 5.0}).automatic
    assert not Recipe(max_metric_drop=None).automatic and Recipe(max_metric_drop=None).fixed_beta == 1.0
    assert Recipe(max_metric_drop=None, target="flops=3x").automatic


# -- the controller on toy measurements ---------------------------------------------------------------------------


def test_budget_controller_raises_beta_while_within_budget_and_lowers_it_when_over() -> None:
    c = Autopilot(max_drop=1.0, check_every=100)
    start = c.beta
    for step in range(1, 21):
        c.check(step * 100, drop=0.0)
    assert c.beta > start * 5
    high = c.beta
    for step in range(21, 26):
        c.check(step * 100, drop=3.0)
    assert c.beta < high / 5
    assert c.backoffs == 1  # one episode over the budget, counted once
    assert all(ch.bound == "budget" for ch in c.checks[-4:])


def test_the_validation_samples_own_drop_holds_beta_back_only_over_the_whole_budget() -> None:
    """Where the checks pool training samples with a coarse validation set, the drop on the validation samples alone
    (``val_drop``) holds β back once smoothed over the budget, even with the pooled drop far within the aim; within
    the budget it changes nothing (one sample weighs more than the aim there)."""
    pooled, alone = Autopilot(max_drop=1.0, check_every=100), Autopilot(max_drop=1.0, check_every=100)
    for step in range(1, 21):
        pooled.check(step * 100, drop=0.1)
        alone.check(step * 100, drop=0.1, val_drop=0.69)  # one of 144 samples down: within the budget
    assert alone.beta == pytest.approx(pooled.beta) and alone.val_smoothed == pytest.approx(0.69)
    high = alone.beta
    for step in range(21, 26):
        alone.check(step * 100, drop=0.1, val_drop=1.39)  # two down, while the pooled drop stays at 0.1
    assert alone.beta < high and alone.checks[-1].bound == "budget" and alone.backoffs == 1
    assert alone.checks[-1].val_drop == 1.39 and alone.checks[-1].val_smoothed > 1.0
    state = alone.state_dict()
    restored = Autopilot(max_drop=1.0, check_every=100)
    restored.load_state_dict(state)
    assert restored.val_smoothed == alone.val_smoothed and restored.checks[-1].val_drop == 1.39
    with pytest.raises(PrunedropError, match="non-finite val_drop"):
        alone.check(2600, drop=0.1, val_drop=float("nan"))


def test_budget_controller_holds_beta_at_the_margin() -> None:
    c = Autopilot(max_drop=2.0, check_every=100)
    c.check(100, drop=c.margin * 2.0)
    before = c.beta
    c.check(200, drop=c.margin * 2.0)
    assert c.beta == pytest.approx(before)


def _noisy_plant(monkeypatch: pytest.MonkeyPatch, floor: float, *, drift: float = 0.0,
                 checks: int = 160) -> tuple[list[float], list[float], Autopilot]:
    """A toy plant: the true drop follows log β with a lag of one response time (five checks), 0.3 points per
    e-fold above β* = 0.4, and every measurement carries N(0, 0.23) points of noise (what 2,000 Fashion-MNIST
    validation samples showed between checks). Returns log β and the true drop at every check."""
    monkeypatch.setattr(autopilot, "RATE_FLOOR", floor)
    rng = np.random.default_rng(0)
    c = Autopilot(max_drop=0.5, check_every=100, decade_steps=500)
    lagged, log_betas, true = c.log_beta, [], []
    for k in range(checks):
        lagged += (c.log_beta - lagged) / 5
        d = 0.25 + 0.3 * (lagged - math.log(0.4) - drift * k)
        c.check((k + 1) * 100, drop=d + float(rng.normal(0.0, 0.23)))
        log_betas.append(c.log_beta)
        true.append(d)
    return log_betas, true, c


def test_the_budget_step_shrinks_as_the_noisy_drop_keeps_crossing_the_aim(monkeypatch: pytest.MonkeyPatch) -> None:
    floor = autopilot.RATE_FLOOR
    constant, _, _ = _noisy_plant(monkeypatch, 1.0)  # floor 1: every step at the full rate, as before
    kesten, true, c = _noisy_plant(monkeypatch, floor)
    late = slice(len(kesten) // 2, None)
    # β wanders much less around its equilibrium, and the true drop still sits at the aim
    assert np.std(kesten[late]) < 0.6 * np.std(constant[late])
    assert abs(float(np.mean(true[late])) - c.aim) < 0.05
    assert c.crossings > 0 and c.budget_rate < c.rate
    assert c.summary()["budget_rate"] == pytest.approx(c.budget_rate)
    assert all(math.isfinite(b) for b in kesten)


def test_far_from_the_aim_the_step_stays_full_and_over_the_budget_the_back_off_is_full() -> None:
    c = Autopilot(max_drop=1.0, check_every=100, decade_steps=500)
    for i in range(1, 11):
        c.check(i * 100, drop=0.0)  # never crosses: every step the full rate
    assert c.crossings == 0
    assert c.log_beta == pytest.approx(math.log(autopilot.BETA_START) + 10 * c.rate * 0.5)
    c.crossings = 20.0  # many crossings behind it: the budget's step is at its floor
    before = c.log_beta
    c.smoothed_drop = 3.0
    c.check(1100, drop=3.0)  # far over the whole budget: the back-off takes the full (doubled) step
    assert c.log_beta == pytest.approx(before - 2 * c.rate)


def test_a_moved_equilibrium_restores_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    c = Autopilot(max_drop=1.0, check_every=100, decade_steps=500)
    for i, d in enumerate([0.0, 1.0, 0.0, 1.0, 0.0, 1.0], start=1):  # crossing the aim of 0.5 back and forth
        c.check(i * 100, drop=d)
    c.check(700, drop=0.0)  # back below the aim: one more crossing
    crossed = c.crossings
    assert crossed >= 3
    for i in range(8, 8 + 15):  # then three response times below the aim: the equilibrium has moved
        c.check(i * 100, drop=0.0)
    assert c.crossings == crossed - 3


def test_check_samples_grow_with_the_training_between_checks() -> None:
    from prunedrop import pilot

    assert pilot.check_samples(100, 100) == 5000  # half the samples the 100 steps between checks train on
    assert pilot.check_samples(10, 32) == pilot.CHECK_SAMPLES  # never fewer than before
    assert pilot.check_samples(100, 1024) == pilot.CHECK_SAMPLES_MAX


def test_beta_moves_at_most_one_decade_per_thousand_steps_and_stays_in_bounds() -> None:
    c = Autopilot(max_drop=1.0, check_every=50)
    for i in range(1, 21):  # 1000 steps, everything far within budget
        c.check(i * 50, drop=-50.0)
    assert c.beta == pytest.approx(autopilot.BETA_START * 10, rel=1e-6)
    for i in range(21, 2000):
        c.check(i * 50, drop=-50.0)
    assert c.beta == pytest.approx(BETA_MAX)
    for i in range(2000, 4000):
        c.check(i * 50, drop=50.0)
    assert c.beta == pytest.approx(BETA_MIN)
    assert all(math.isfinite(ch.beta) for ch in c.checks)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_controller_rejects_non_finite_measurements(bad: float) -> None:
    c = Autopilot(max_drop=1.0, target_ratio=4.0)
    with pytest.raises(PrunedropError, match="non-finite"):
        c.check(10, drop=bad, cost_ratio=2.0)
    with pytest.raises(PrunedropError, match="non-finite"):
        c.check(10, drop=0.0, cost_ratio=bad)
    assert math.isfinite(c.beta) and not c.checks


def test_target_controller_raises_beta_until_the_ratio_is_reached_then_lowers_it() -> None:
    c = Autopilot(max_drop=None, target_ratio=10.0, check_every=100)
    b0 = c.beta
    c.check(100, cost_ratio=2.0)
    assert c.beta > b0
    b1 = c.beta
    c.check(200, cost_ratio=20.0)
    assert c.beta < b1
    c.check(300, cost_ratio=10.0)
    assert c.checks[-1].beta == pytest.approx(c.checks[-2].beta)


def test_with_both_the_tighter_constraint_decides_and_is_named() -> None:
    rising = Autopilot(max_drop=1.0, target_ratio=10.0, check_every=100)
    rising.check(100, drop=-5.0, cost_ratio=6.0)  # both let β rise: nothing binds yet
    assert rising.checks[-1].bound is None and rising.beta > autopilot.BETA_START
    c = Autopilot(max_drop=1.0, target_ratio=10.0, check_every=100)
    c.check(100, drop=2.0, cost_ratio=2.0)  # the target wants more, the budget says no
    assert c.checks[-1].bound == "budget" and c.beta < autopilot.BETA_START
    c2 = Autopilot(max_drop=1.0, target_ratio=10.0, check_every=100)
    c2.check(100, drop=-5.0, cost_ratio=40.0)  # far past the target, plenty of budget
    assert c2.checks[-1].bound == "target" and c2.beta < autopilot.BETA_START
    assert c.bound() == "budget" and c2.bound() == "target"


def test_settled_needs_flat_beta_and_kept_fraction_over_the_window() -> None:
    c = Autopilot(max_drop=1.0, check_every=100)
    for i in range(1, 15):
        c.check(i * 100, drop=0.5, kept_fraction=0.1)
    assert c.settled(1400)
    c.check(1500, drop=0.5, kept_fraction=0.05)
    assert not c.settled(1500)
    fresh = Autopilot(max_drop=1.0, check_every=100)
    for i in range(1, 5):
        fresh.check(i * 100, drop=0.5, kept_fraction=0.1)
    assert not fresh.settled(400)  # too short a history to call it settled
    alone = Autopilot(max_drop=None, target_ratio=10.0, check_every=100)
    for i in range(1, 15):
        alone.check(i * 100, cost_ratio=10.0, kept_fraction=0.1)
    assert not alone.settled(1400)  # a target alone: nothing measures what the noise still costs


def test_controller_state_round_trips() -> None:
    c = Autopilot(max_drop=1.0, target_ratio=3.0, check_every=20)
    for i in range(1, 6):
        c.check(i * 20, drop=0.2 * i, cost_ratio=1.0 + i, kept_fraction=1.0 / i)
    d = Autopilot(max_drop=1.0, target_ratio=3.0, check_every=20)
    d.load_state_dict(json.loads(json.dumps(c.state_dict())))
    assert d.state_dict() == c.state_dict()
    c.check(120, drop=1.5, cost_ratio=2.0)
    d.check(120, drop=1.5, cost_ratio=2.0)
    assert d.beta == c.beta and d.backoffs == c.backoffs


def test_auto_epochs_and_check_interval() -> None:
    assert autopilot.auto_epochs(54_000, 100) == 19
    assert autopilot.auto_epochs(1_300, 100) == 300
    assert autopilot.auto_epochs(200_000, 100) == 10
    assert autopilot.auto_epochs(10_000, 100) == 100
    assert autopilot.check_interval(540) == 100 and autopilot.check_interval(13) == 10


# -- costs --------------------------------------------------------------------------------------------------------


def test_cost_factors_weigh_expensive_units_more_and_average_one() -> None:
    torch.manual_seed(0)
    model = TinyLeNet5()
    x = torch.randn(2, 1, 14, 14)
    variational = to_variational(model, Recipe(method="sbp"))
    factors = autopilot.cost_factors(variational, x, "flops")
    costs = autopilot.layer_costs(variational, x, "flops")
    units = {name: autopilot._units(layer) for name, layer in
             __import__("prunedrop.convert", fromlist=["x"]).variational_layers(variational).items()}
    mean = sum(factors[n] * units[n] for n in units) / sum(units.values())
    assert mean == pytest.approx(1.0)
    order = sorted(costs, key=costs.get)
    assert [factors[n] for n in order] == sorted(factors.values())


@pytest.mark.parametrize("method", ["sparse_vd", "group_vd"])
def test_an_attention_layers_products_are_a_heads_cost_not_a_weights(method: str) -> None:
    """The products of queries and keys (no weight) go with a head when group VD removes it; a single weight that
    sparse VD prunes saves only its own multiply-adds: its layer's per-weight cost is its positions."""
    import copy

    from prunedrop.report import profile_model
    from prunedrop.testing import TransformerClassifier

    model, x = TransformerClassifier().eval(), torch.randn(2, 5, 6)  # 5 tokens of width 8, 2 heads
    products = 2 * 5 * 5 * 8
    dense = {p.name: p for p in profile_model(model, x)}["encoder.layers.0.self_attn"]
    assert dense.fixed_macs == products
    variational = to_variational(copy.deepcopy(model), Recipe(method=method))
    costs, other = autopilot._costs(variational, x, "flops")
    if method == "sparse_vd":
        assert costs["encoder.layers.0.self_attn"] == 5.0  # one multiply-add per query or key position
        assert other == 2 * products  # two layers' products stay, whatever is pruned
    else:
        assert costs["encoder.layers.0.self_attn"] == dense.macs / 2  # one head: half the projections and products
        assert other < products


class _Chain(torch.nn.Module):
    """conv1 (4 channels) → ReLU → conv2 → linear; and a residual unit whose output is added to its input."""

    def __init__(self, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = torch.nn.Conv2d(1 if not residual else 4, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv1(x))
        if self.residual:
            y = y + x
        return self.fc(self.conv2(y).flatten(1))  # no ReLU here: the example's zeros all come from conv1's units


def test_a_units_cost_includes_the_downstream_inputs_only_it_feeds() -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 1, 5, 5)
    variational = to_variational(_Chain(), Recipe(method="sbp", keep_output_layers=True))
    own = autopilot.layer_costs(variational, x, "flops")
    marginal = autopilot.marginal_costs(variational, x, "flops", own)
    from prunedrop.report import profile_model

    macs = {p.name: p.macs for p in profile_model(variational, x[:1])}
    conv2_macs, fc_macs = macs["conv2"], macs["fc"]
    assert conv2_macs >= 6 * 4 * 9 * 25 and fc_macs >= 6 * 25 * 3
    # a conv1 channel feeds a quarter of conv2's inputs; a conv2 channel a sixth of the classifier's
    assert marginal["conv1"] == pytest.approx(own["conv1"] + conv2_macs / 4)
    assert marginal["conv2"] == pytest.approx(own["conv2"] + fc_macs / 6)
    factors = autopilot.cost_factors(variational, x, "flops")
    assert factors["conv1"] / factors["conv2"] == pytest.approx(marginal["conv1"] / marginal["conv2"])
    # a unit whose output is added to the residual stream silences nothing downstream: no credit
    res = to_variational(_Chain(residual=True), Recipe(method="sbp", keep_output_layers=True))
    xr = torch.rand(4, 4, 5, 5) + 0.1
    own_r = autopilot.layer_costs(res, xr, "flops")
    assert autopilot.marginal_costs(res, xr, "flops", own_r)["conv1"] == pytest.approx(own_r["conv1"])


def test_cost_meter_counts_pruned_units_and_the_zeros_they_feed_downstream() -> None:
    torch.manual_seed(0)
    model = TinyMLP(16, (24, 12), 3)
    x = torch.randn(8, 1, 4, 4)
    variational = to_variational(model, Recipe(method="group_vd", exclude=["net.5"]))
    meter = CostMeter(variational, x, "params")
    assert meter.ratio(variational) == pytest.approx(1.0, rel=0.02)
    from prunedrop.convert import variational_layers

    first = next(iter(variational_layers(variational).values()))
    with torch.no_grad():
        first.log_alpha_param.data[: first.out_features // 2] = 9.0  # half the first layer's units pruned
    ratio = meter.ratio(variational)
    assert ratio > 1.3  # its own rows and, downstream, the inputs they fed
    assert meter.ratio(variational) == ratio  # measuring does not change the model


def test_a_targets_cost_is_measured_where_the_noise_reaches_the_weight_and_the_layers_keep_their_threshold() -> None:
    assert autopilot.control_threshold("sparse_vd", 3.0) == autopilot.TARGET_LOG_ALPHA == 0.0
    assert autopilot.control_threshold("group_vd", 3.0) == 0.0
    assert autopilot.control_threshold("sparse_vd", -1.0) == -1.0  # a recipe that prunes more eagerly keeps its own
    assert autopilot.control_threshold("sbp", 1.0) is None and autopilot.control_threshold("sbp_sparse_vd", 2.0) is None
    torch.manual_seed(0)
    model = TinyMLP(16, (24, 12), 3)
    x = torch.randn(8, 1, 4, 4)
    variational = to_variational(model, Recipe(method="sparse_vd"))
    from prunedrop.convert import variational_layers

    layers = list(variational_layers(variational).values())
    with torch.no_grad():  # log α spread over [-4, 6]: a third of the weights between 0 and 3
        for layer in layers:
            layer.log_sigma2.data = torch.log(layer.weight.data ** 2) + torch.empty_like(layer.weight).uniform_(-4, 6)
    own = CostMeter(variational, x, "params")
    at_zero = CostMeter(variational, x, "params", threshold=0.0)
    assert at_zero.ratio(variational) > 1.3 * own.ratio(variational)
    assert all(layer.threshold == 3.0 for layer in layers)  # measured at 0, restored to the recipe's
    kept = sum(int(layer.keep_mask(0.0).sum()) for layer in layers)
    # the weights kept at log α ≤ 0 (each with its share of the biases), less those reading silenced inputs
    weights = sum(layer.weight.numel() for layer in layers)
    assert at_zero.ratio(variational) == pytest.approx(weights / kept, rel=0.05)


# -- end to end on tiny data ---------------------------------------------------------------------------------------


def _bundle(n: int = 360, n_val: int = 120) -> DataBundle:
    x, y = tiny_classification_data(n=n, shape=(1, 4, 4), seed=1)
    from torch.utils.data import TensorDataset

    n_train = n - n_val
    return DataBundle(train=TensorDataset(x[:n_train], y[:n_train]), val=TensorDataset(x[n_train:], y[n_train:]),
                      test=None, name="tiny", num_classes=3, input_shape=(1, 4, 4))


def _trained_mlp(data: DataBundle, hidden: tuple[int, ...] = (48, 24)) -> torch.nn.Module:
    torch.manual_seed(0)
    x, y = data.train.tensors
    return fit(TinyMLP(16, hidden, 3), x, y, 150).eval()


_QUICK = dict(epochs=25, batch_size=24, latency_runs=0, plots=False, mc_samples=0, device="cpu", noise_lr=0.05,
              finetune_epochs=2, finetune_lr=1e-3)


def test_budget_run_stays_within_budget_and_prunes_more_than_beta_zero(tmp_path: Path) -> None:
    data = _bundle()
    auto = compress(_trained_mlp(data), data, Recipe(**_QUICK, max_metric_drop=2.0), tmp_path / "auto",
                    progress=False, log=lambda m: None).report
    zero = compress(_trained_mlp(data), data, Recipe(**_QUICK, kl_weight=0.0, max_metric_drop=None),
                    tmp_path / "zero", progress=False, log=lambda m: None).report
    assert auto["metric"]["before"] - auto["metric"]["after"] <= 2.0
    assert auto["params"]["after"] < 0.7 * zero["params"]["after"]
    pilot = auto["autopilot"]
    assert pilot["trajectory"] and all(math.isfinite(c["beta"]) for c in pilot["trajectory"])
    assert pilot["beta_final"] != autopilot.BETA_START
    assert {"beta_now", "kept_fraction"} <= set(auto["history"][0])
    assert "autopilot" not in zero


def test_target_run_lands_within_ten_percent_of_its_target(tmp_path: Path) -> None:
    data = _bundle()
    recipe = Recipe(**{**_QUICK, "epochs": 40, "finetune_epochs": 0}, max_metric_drop=None, target="params=4x")
    # a wide MLP: redundant enough that 4x fewer weights are within reach of 400 steps
    report = compress(_trained_mlp(data, (128, 64)), data, recipe, tmp_path, progress=False,
                      log=lambda m: None).report
    outcome = report["target"]
    assert outcome["kind"] == "params" and outcome["wanted_ratio"] == 4.0
    # the least pruning threshold that meets the target (the grid's interval bisected): reached, not overshot
    assert 4.0 <= outcome["reached_ratio"] <= 1.1 * 4.0, outcome
    assert outcome["reached"]
    assert report["autopilot"]["control_threshold"] == 0.0


def test_a_bytes_target_alone_is_met_by_the_real_file(tmp_path: Path) -> None:
    data = _bundle()
    recipe = Recipe(**{**_QUICK, "epochs": 40, "finetune_epochs": 0}, max_metric_drop=None, target="bytes=4x")
    report = compress(_trained_mlp(data, (128, 64)), data, recipe, tmp_path, progress=False,
                      log=lambda m: None).report
    outcome, files = report["target"], report["onnx_bytes"]
    # judged on the ONNX files: sparse storage spends more than 4 bytes on a kept weight, so the threshold is capped
    # by what the file will hold, not by the parameters it keeps (those read more than 4x)
    assert outcome["kind"] == "bytes" and outcome["reached"], outcome
    assert 4.0 <= files["before"] / files["after"] <= 1.25 * 4.0, files
    assert report["params"]["ratio"] > files["before"] / files["after"]
    assert report["sweep"]["target_cap_threshold"] == report["threshold"]


def test_a_run_with_an_automatic_beta_never_ends_over_its_budget() -> None:
    from prunedrop import pipeline
    from prunedrop.errors import TrainingError

    with pytest.raises(TrainingError, match="over the budget of 1; nothing was exported"):
        pipeline.check_budget(Recipe(), 95.0, 92.0)
    with pytest.raises(TrainingError, match="% more error"):
        pipeline.check_budget(Recipe(loss="mse"), 0.10, 0.12)
    pipeline.check_budget(Recipe(kl_weight=2.0), 95.0, 92.0)  # a fixed β: the user's call
    pipeline.check_budget(Recipe(), 95.0, 94.5)
    # a perfect original score on a coarse split: the line says what likely happened
    with pytest.raises(TrainingError) as caught:
        pipeline.check_budget(Recipe(), 100.0, 98.61, num_val=144)
    message = str(caught.value)
    assert "scores 100% on the validation data" in message and "held-out validation data" in message
    assert message.endswith("One of the 144 validation samples weighs 0.69 points, more than half the budget.")
    with pytest.raises(TrainingError) as caught:
        pipeline.check_budget(Recipe(), 95.0, 92.0, num_val=6000)
    assert "100%" not in str(caught.value) and "weighs" not in str(caught.value)
    pipeline.check_budget(Recipe(loss="mse"), 0.10, 0.1005)
    # a change measured more coarsely than half the budget is said to be (in the metric's unit: 2% of 0.10 for mse)
    with pytest.raises(TrainingError) as caught:
        pipeline.check_budget(Recipe(), 95.0, 93.0, delta_se=0.6)
    assert "±0.6 (paired standard error)" in str(caught.value)
    with pytest.raises(TrainingError) as caught:
        pipeline.check_budget(Recipe(), 95.0, 93.0, delta_se=0.4)
    assert "standard error" not in str(caught.value)
    with pytest.raises(TrainingError) as caught:
        pipeline.check_budget(Recipe(loss="mse", max_metric_drop=4.0), 0.10, 0.12, delta_se=0.0021)
    # the budget is in percent: the standard error is said in percent too, not only in mse beside a "4"
    assert "±0.0021 mse, 2.1% of the original's (paired standard error)" in str(caught.value)
    with pytest.raises(TrainingError) as caught:
        pipeline.check_budget(Recipe(loss="mse", max_metric_drop=4.0), 0.10, 0.12, delta_se=0.0019)
    assert "standard error" not in str(caught.value)


def test_a_confidence_holds_the_drop_plus_standard_errors_to_the_budget() -> None:
    from prunedrop import pipeline
    from prunedrop.errors import TrainingError
    from prunedrop.stages.budget import held_confidence, within

    sure = Recipe(budget_confidence=0.9)  # z = 1.28
    assert sure.budget_z == pytest.approx(1.2816, abs=1e-4) and Recipe().budget_z == 0.0
    # 0.5 points down, budget 1: within on the measured drop; at 90% only while 0.5 + 1.28 × se ≤ 1
    assert within(Recipe(), 95.0, 94.5, 0.6) and within(sure, 95.0, 94.5, 0.39)
    assert not within(sure, 95.0, 94.5, 0.4)
    assert within(sure, 95.0, 94.5, None)  # no standard error (fewer than two samples): the measured drop
    assert not within(sure, 95.0, float("nan"), 0.1)
    # mse: the standard error in percent of the original's error (0.001 of 0.10 is 1%): 2% + 1.28 × 1% ≤ 4%
    sure_mse = Recipe(loss="mse", max_metric_drop=4.0, budget_confidence=0.9)
    assert within(sure_mse, 0.10, 0.102, 0.001) and not within(sure_mse, 0.10, 0.102, 0.0016)
    # the verdict on the exported model
    pipeline.check_budget(sure, 95.0, 94.5, delta_se=0.3)
    with pytest.raises(TrainingError) as caught:
        pipeline.check_budget(sure, 95.0, 94.5, delta_se=0.5)
    message = str(caught.value)
    assert "over the budget of 1 at 90% confidence (standard error 0.5)" in message
    assert "1.28 standard errors" in message and "--confidence" in message
    # the confidence a measured change keeps the budget with: Φ((1 − 0.5) / 0.25) = Φ(2)
    assert held_confidence(Recipe(), 95.0, 94.5, 0.25) == pytest.approx(0.97725, abs=1e-5)
    assert held_confidence(Recipe(), 95.0, 94.0, 0.25) == pytest.approx(0.5)
    assert held_confidence(Recipe(max_metric_drop=None), 95.0, 94.5, 0.25) is None
    assert held_confidence(Recipe(), 95.0, 94.5, 0.0) is None and held_confidence(Recipe(), 95.0, 94.5, None) is None
    assert held_confidence(Recipe(loss="mse", max_metric_drop=4.0), 0.10, 0.102, 0.001) == pytest.approx(0.97725,
                                                                                                       abs=1e-5)


# -- the command line -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "message"), [
    (["--max-drop", "0"], "max_metric_drop"), (["--max-drop", "-2"], "max_metric_drop"),
    (["--max-drop", "nan"], "max_metric_drop"), (["--max-drop", "150"], "max_metric_drop"),
    (["--target", "flops=1x"], "more than 1x"), (["--target", "speed=2x"], "KIND=VALUE"),
    (["--target", "flops=10x", "--kl-weight", "2"], "cannot be combined"),
    (["--confidence", "1.5"], "budget_confidence"), (["--confidence", "nan"], "budget_confidence"),
    (["--confidence", "0.3"], "budget_confidence"),
    (["--max-drop", "nothing"], "--max-drop"), (["--max-drop", "none", "--confidence", "0.9"], "needs a budget"),
])
def test_bad_budget_or_target_on_the_command_line(project: Path, options: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz",
                                      "-o", "out", "-q", *options])
    assert result.exit_code in (1, 2), result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (project / "out").exists()


def test_cli_target_run_reports_the_outcome_and_strict_exits_non_zero(project: Path) -> None:
    recipe = project / "quick.yaml"
    recipe.write_text("epochs: 4\nbatch_size: 16\nlatency_runs: 0\nplots: false\nmc_samples: 0\nfinetune_epochs: 0\n"
                      "device: cpu\n")
    # 4 epochs of 10 steps cannot reach 1000x: the run finishes, says so, and --strict turns it into exit 3
    args = ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz", "--recipe", str(recipe),
            "--target", "params=1000x", "--max-drop", "5", "-q"]
    relaxed = CliRunner().invoke(cli, [*args, "-o", "relaxed"])
    assert relaxed.exit_code == 0, relaxed.output
    report = json.loads((project / "relaxed" / "report.json").read_text())
    assert report["target"]["reached"] is False and "missed" in report["target"]["line"]
    strict = CliRunner().invoke(cli, [*args, "-o", "strict", "--strict"])
    assert strict.exit_code == 3 and "missed" in strict.output
    assert (project / "strict" / "model.onnx").is_file()


_DENSE_ARCH = """import torch
from torch import nn


class Held(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(16, 64) * 0.25)  # read by the forward itself: stays dense
        self.fc = nn.Linear(64, 3)

    def forward(self, x):
        return self.fc(torch.relu(x.flatten(1) @ self.w))


def build():
    return Held()
"""


def test_a_target_beyond_what_can_be_converted_is_said_before_training_and_named_when_missed(project: Path) -> None:
    """A module's own parameters held 87% of a model and a params=4x target ended "missed ... training ended before it
    got there", after β had risen to 780 chasing it: nothing could have reached it."""
    (project / "heldarch.py").write_text(_DENSE_ARCH)
    torch.manual_seed(0)
    torch.save(__import__("heldarch").build().state_dict(), project / "held.pt")
    recipe = project / "quick.yaml"
    recipe.write_text("epochs: 2\nbatch_size: 16\nlatency_runs: 0\nplots: false\nmc_samples: 0\nfinetune_epochs: 0\n"
                      "device: cpu\nquantize: none\n")
    result = CliRunner().invoke(cli, ["compress", "held.pt", "--arch", "heldarch:build", "--data", "npz:data.npz",
                                      "--recipe", str(recipe), "--target", "params=4x", "--max-drop", "None",
                                      "-o", "out"])
    assert result.exit_code == 0, result.output
    ceiling = (1024 + 195) / 1024  # every parameter over the held weight's 1,024
    assert "target params=4x is beyond reach: what stays dense holds 1,024 of the model's 1,219 parameters (84%)" \
        in result.output and f"at most {ceiling:.3g}x smaller" in result.output
    assert "more epochs would compress more" not in result.output
    report = json.loads((project / "out" / "report.json").read_text())
    assert report["autopilot"]["target_ceiling"] == pytest.approx(ceiling)
    assert report["target"]["reached"] is False
    assert f"what stays dense bounds it: at most {ceiling:.3g}x" in report["target"]["line"]
    # a target within reach says nothing of the kind
    within = CliRunner().invoke(cli, ["compress", "held.pt", "--arch", "heldarch:build", "--data", "npz:data.npz",
                                      "--recipe", str(recipe), "--target", "params=1.1x", "--max-drop", "None",
                                      "-o", "within"])
    assert within.exit_code == 0 and "beyond reach" not in within.output


def test_cli_max_drop_none_leaves_the_target_alone_to_decide(project: Path) -> None:
    from prunedrop.cli import with_overrides
    from prunedrop.recipe_fields import NONE

    recipe = project / "quick.yaml"
    recipe.write_text("epochs: 4\nbatch_size: 16\nlatency_runs: 0\nplots: false\nmc_samples: 0\nfinetune_epochs: 0\n"
                      "device: cpu\nquantize: none\nmax_metric_drop: 0.5\n")
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz",
                                      "--recipe", str(recipe), "--target", "params=2x", "--max-drop", "None", "-q",
                                      "-o", "out"])
    assert result.exit_code == 0, result.output
    report = json.loads((project / "out" / "report.json").read_text())
    assert report["recipe"]["max_metric_drop"] is None and report["autopilot"]["max_metric_drop"] is None
    assert report["autopilot"]["bound"] != "budget" and report["target"]["wanted_ratio"] == 2.0
    # an option not given leaves the recipe's key; a number still overrides it
    assert with_overrides(Recipe(max_metric_drop=0.5), {"max_metric_drop": None}).max_metric_drop == 0.5
    assert with_overrides(Recipe(), {"max_metric_drop": 2.0, "target": None}).max_metric_drop == 2.0
    # another key's choice named none is that choice, not null
    assert with_overrides(Recipe(), {"quantize": "none", "max_metric_drop": NONE}).quantize == "none"


def test_a_target_alone_that_no_threshold_meets_exports_the_closest_model(project: Path) -> None:
    """Before, the recipe's threshold was exported where no swept threshold met a target alone."""
    recipe = project / "quick.yaml"
    recipe.write_text("epochs: 2\nbatch_size: 16\nlatency_runs: 0\nplots: false\nmc_samples: 0\nfinetune_epochs: 0\n"
                      "device: cpu\nquantize: none\n")
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz",
                                      "--recipe", str(recipe), "--target", "params=100000x", "--max-drop", "None",
                                      "-o", "out"])
    assert result.exit_code == 0, result.output
    report = json.loads((project / "out" / "report.json").read_text())
    points = [p for p in report["sweep"]["points"] if p["kept_weights"] > 0]
    closest = min(points, key=lambda p: (p["params"], p["threshold"]))
    assert report["threshold"] == closest["threshold"] != report["recipe"]["threshold"]
    assert "comes closest and is chosen" in result.output and not report["target"]["reached"]


def test_cli_confidence_run_exports_a_model_that_keeps_the_budget_that_surely(project: Path) -> None:
    recipe = project / "quick.yaml"
    recipe.write_text("epochs: 4\nbatch_size: 16\nlatency_runs: 0\nplots: false\nmc_samples: 0\nfinetune_epochs: 2\n"
                      "device: cpu\nquantize: none\n")
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz",
                                      "--recipe", str(recipe), "--max-drop", "10", "--confidence", "0.9", "-o", "out"])
    assert result.exit_code == 0, result.output
    report = json.loads((project / "out" / "report.json").read_text())
    assert report["recipe"]["budget_confidence"] == 0.9
    metric = report["metric"]
    # what the run judged: the drop plus 1.28 standard errors within the budget, so Φ((budget − drop) / se) ≥ 0.9
    assert metric["delta_se"] is not None and metric["delta_se"] > 0
    assert metric["before"] - metric["after"] + 1.2816 * metric["delta_se"] <= 10.0 + 1e-9
    assert metric["budget_confidence"] >= 0.9
    assert "one-sided confidence (asked: 90%)" in result.output
    # on these 40 validation samples (2.5 points each) a probe 5 points down is within 10 by its measured drop, and
    # outside at 90% (standard error about 5 points)
    probes = report["sweep"]["after_finetune"]
    assert all(p["delta_se"] is not None for p in probes)
    assert any(not p["within_budget"] and metric["before"] - p["metric"] <= 10.0 for p in probes)


def test_help_names_the_budget_and_target_options() -> None:
    out = CliRunner().invoke(cli, ["compress", "--help"]).output
    for option in ("--max-drop", "--target", "--strict", "--kl-weight", "--confidence"):
        assert option in out


def test_digits_default_recipe_is_automatic_sparse_vd() -> None:
    data = load_data("digits", seed=0)
    recipe = Recipe()
    assert recipe.automatic and recipe.epochs is None
    assert autopilot.auto_epochs(data.num_train, recipe.batch_size) >= 10
    assert np.isclose(recipe.max_metric_drop, 1.0)


def _wrecking_run(tmp_path: Path) -> tuple[list[str], Recipe, DataBundle]:
    from prunedrop.errors import TrainingError

    data = _bundle()
    logs: list[str] = []
    recipe = Recipe(**{**_QUICK, "epochs": 12, "lr": 0.5}, max_metric_drop=1.0)
    try:
        report = compress(_trained_mlp(data), data, recipe, tmp_path, progress=False, log=logs.append).report
        pilot = report["autopilot"]
        assert pilot["lr_scale"] < 1.0
    except TrainingError as e:  # backed off, but still over the budget at the end: said in one line, no export
        assert "nothing was exported" in str(e) and not (tmp_path / "model.onnx").exists()
    return logs, recipe, data


def test_a_learning_rate_that_wrecks_the_model_is_backed_off_and_said_so(tmp_path: Path) -> None:
    logs, _, _ = _wrecking_run(tmp_path)
    # the probe sees the wreck before the first step and starts lower (a quarter, at most twice)
    tries = [line for line in logs if "more than 2 budgets before anything is pruned" in line and "; trying" in line]
    assert 1 <= len(tries) <= 2, logs
    assert "trying 0.125" in tries[0]
    assert "once the rate anneals" in tries[0]  # annealing did not win it back: the rate itself is too large


def test_the_runs_own_learning_rate_back_off_waits_for_the_probes_window_and_its_own_effect(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prunedrop import pilot

    monkeypatch.setattr(pilot, "PROBE_RETRIES", 0)  # the probe may not lower the wrecking rate: the run must
    logs, recipe, data = _wrecking_run(tmp_path)
    backoffs = [line for line in logs if "learning rate ×" in line]
    assert backoffs, logs
    steps = [int(line.split(" at step ")[1].split()[0]) for line in backoffs]
    every = autopilot.check_interval(math.ceil(len(data.train) / recipe.batch_size))
    # none within the steps the probe already trained at this rate (the restart's shock that it saw settle)...
    assert steps[0] > pilot.PROBE_CHECKS * every, backoffs
    # ...and each waits for the effect of the last: never at consecutive checks
    assert all(b - a >= 3 * every for a, b in zip(steps, steps[1:])), backoffs


def test_the_restarts_shock_is_forgotten_when_the_probes_window_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    from prunedrop import pilot

    data = _bundle()
    recipe = Recipe(**_QUICK, max_metric_drop=1.0)
    model = to_variational(_trained_mlp(data), recipe)
    p = pilot.Pilot(model, data, recipe, steps_per_epoch=10, device=torch.device("cpu"), log=None)
    every = p.controller.check_every
    p.reference, p.probe_steps, p.transient = 90.0, pilot.PROBE_CHECKS * every, 0.0
    # the shock of a restart: 35 points at the first check, then back within the budget
    measured = iter([90.0 - 35.0, 90.0 - 0.8] + [90.0 - 0.2] * 10)
    monkeypatch.setattr(p, "_val_metric", lambda model=None: next(measured))
    for k in range(1, pilot.PROBE_CHECKS + 3):
        p.on_step(k * every)
    window, after = p.controller.checks[pilot.PROBE_CHECKS - 1], p.controller.checks[pilot.PROBE_CHECKS]
    assert window.smoothed_drop > 1.0  # within the window the shock is still in the smoothed drop...
    assert after.smoothed_drop == pytest.approx(0.2)  # ...and forgotten at the first check after it
    assert p.lr_scale == 1.0  # and it never halved the weights' learning rate


@pytest.mark.parametrize("transient, halves", [(0.0, False), (0.2, False), (0.5, True)])
def test_the_learning_rate_is_backed_off_only_where_the_probe_measured_it_costing(
        transient: float, halves: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over the budget with β at its start: the rate is halved only where plain training at it cost at least a
    quarter of the budget in the probe; otherwise the noise is what costs and the weights must keep adapting."""
    from prunedrop import pilot

    data = _bundle()
    recipe = Recipe(**_QUICK, max_metric_drop=1.0)
    model = to_variational(_trained_mlp(data), recipe)
    p = pilot.Pilot(model, data, recipe, steps_per_epoch=10, device=torch.device("cpu"), log=None)
    every = p.controller.check_every
    p.reference, p.probe_steps, p.transient, p.probe_lr = 90.0, pilot.PROBE_CHECKS * every, transient, recipe.lr
    # 1.5 points over the budget after the discount, at every check past the probe's window
    monkeypatch.setattr(p, "_val_metric", lambda model=None: 90.0 - 2.5 - min(transient, 2.0))
    for k in range(1, pilot.PROBE_CHECKS + 4 * pilot.LR_BACKOFF_WAIT_CHECKS):
        p.on_step(k * every)
    assert p.controller.checks[-1].beta <= autopilot.BETA_START  # β backed off all along
    assert (p.lr_scale < 1.0) == halves


@pytest.mark.parametrize("rise, kl_step, kept_step, loss_step, halves", [
    (0.1, 1.0, 0.0, 0.01, True),     # worse at every check, less sure of the truth, the noise shrinking, nothing
    (0.1, -1.0, 0.0, 0.01, False),   # more pruned: training. The noise grows: it may be what costs
    (0.1, 1.0, -0.002, 0.01, False),  # weights keep going: so may the pruning
    (0.0, 1.0, 0.0, 0.01, False),    # over the budget but no worse: β's back-off is still at work
    (0.1, 1.0, 0.0, -0.01, False),   # the loss falls as the noise shrinks: the noise's own transient
])
def test_the_learning_rate_is_backed_off_where_training_not_the_noise_costs_accuracy(
        rise: float, kl_step: float, kept_step: float, loss_step: float, halves: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A model trained past its best (the probe measured no cost of plain training: the first epochs even gain)
    overfits as training goes on; backing β off cannot answer, so the weights' rate is halved, said, counted, the
    phase starts again from the given weights with fresh moments and β at its start, and the noise-free fine-tuning
    follows the rate."""
    from prunedrop import pilot
    from prunedrop.stages import with_finetune_rate

    data = _bundle()
    recipe = Recipe(**_QUICK, max_metric_drop=1.0)
    model = to_variational(_trained_mlp(data), recipe)
    logs: list[str] = []
    p = pilot.Pilot(model, data, recipe, steps_per_epoch=10, device=torch.device("cpu"), log=logs.append)
    every = p.controller.check_every
    p.reference, p.probe_steps, p.transient, p.probe_lr = 90.0, pilot.PROBE_CHECKS * every, 0.0, recipe.lr
    p.given = {name: v.clone() for name, v in model.state_dict().items()}
    resets: list[int] = []
    p.reset_optimizer = lambda: resets.append(1)
    weight = next(model.parameters())
    with torch.no_grad():
        weight.add_(1.0)  # the weights the steps at the larger rate left
    k = {"check": 0}

    def measured(model: Any = None) -> float:
        p.last_loss = 0.5 + loss_step * k["check"]
        return 90.0 - 1.5 - rise * k["check"]

    monkeypatch.setattr(p, "_val_metric", measured)
    monkeypatch.setattr(pilot, "kept_fraction", lambda model: 0.9 + kept_step * k["check"])
    for k["check"] in range(1, pilot.PROBE_CHECKS + pilot.OVERFIT_CHECKS + 2):
        for _ in range(every):
            p.note_kl(500.0 + kl_step * k["check"])
        p.on_step(k["check"] * every)
    assert (p.lr_scale < 1.0) == halves, logs
    assert (p.overfit_backoffs > 0) == halves
    assert (len(p.restarts) == len(resets) == p.overfit_backoffs)
    assert torch.equal(weight, p.given[next(iter(p.given))]) == halves  # back to the given weights, or left alone
    if halves:
        # slowed until the drift measured (0.1 points a check) would cost a quarter of the budget over the settle window
        drift = rise / every * autopilot.SETTLE_STEPS
        assert p.lr_scale == pytest.approx(max(pilot.LR_SCALE_MIN, min(0.5, pilot.OVERFIT_SHARE * 1.0 / drift)))
        restart = [c.step for c in p.controller.checks].index(p.restarts[0])
        assert p.controller.checks[restart + 1].beta > p.controller.checks[restart].beta  # from β's start again
    # a restart forgets the crossings of the aim, whose shrunk step (down to a quarter) would slow β's climb
    c = Autopilot(max_drop=1.0, check_every=10, decade_steps=1000.0)
    for i, d in enumerate([0.0, 1.0] * 10):
        c.check(10 * (i + 1), drop=d)
    assert c.budget_rate < c.rate
    c.restart()
    assert (c.budget_rate, c.beta, c.smoothed_drop) == (c.rate, pytest.approx(autopilot.BETA_START), None)
    assert any("costs accuracy (a model trained past its best overfits)" in line for line in logs) == halves
    assert p.controller.checks[-1].kl == pytest.approx(500.0 + kl_step * k["check"])
    null = Recipe(**{**_QUICK, "finetune_lr": None}, max_metric_drop=1.0)  # the rate left to prunedrop
    fine = with_finetune_rate(null, data, logs.append, p.summary())
    assert fine.finetune_lr == pytest.approx(null.finetune_rate(verified=null.budget_judges_finetuned(
        data.num_val)) * p.lr_scale)
    assert with_finetune_rate(recipe, data, logs.append, p.summary()).finetune_lr == recipe.finetune_lr  # given
    # a resumed run keeps the count (the fine-tuning's rate depends on it) and the KL of a check half done
    p.note_kl(7.0)
    q = pilot.Pilot(model, data, recipe, steps_per_epoch=10, device=torch.device("cpu"), log=None)
    q.load_state_dict(p.state_dict())
    assert (q.overfit_backoffs, q.kl_sum, q.kl_steps) == (p.overfit_backoffs, 7.0, 1)


def test_a_check_measures_a_batchnorm_network_with_statistics_of_its_weights_of_now() -> None:
    from torch import nn

    from prunedrop import pilot

    data = _bundle()
    torch.manual_seed(0)
    x, y = data.train.tensors
    net = fit(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                            nn.Linear(8 * 16, 3)), x, y, 200).eval()
    recipe = Recipe(**_QUICK, max_metric_drop=1.0)
    model = to_variational(net, recipe)
    p = pilot.Pilot(model, data, recipe, steps_per_epoch=10, device=torch.device("cpu"), log=None)
    reference = p._val_metric()
    conv = model[0]
    with torch.no_grad():  # the KL's pull on every weight at once, as Adam's first steps give it
        conv.weight.mul_(0.05)
        conv.bias.mul_(0.05)
    assert p._val_metric() == pytest.approx(reference, abs=2.0)  # no collapse read from lagging statistics
    assert not model.training and not model[1].training


def test_the_plain_training_transient_is_measured_and_discounted_as_the_learning_rate_anneals(tmp_path: Path) -> None:
    from prunedrop.pilot import TRANSIENT_CAP

    data = _bundle()
    logs: list[str] = []
    budget = 2.0
    # a learning rate ten times the one the model was trained at: plain training costs about a point at first
    recipe = Recipe(**{**_QUICK, "epochs": 10, "lr": 0.01}, max_metric_drop=budget)
    pilot = compress(_trained_mlp(data), data, recipe, tmp_path, progress=False, log=logs.append).report["autopilot"]
    transient = pilot["transient"]
    assert transient is not None and transient > 0 and pilot["probe_steps"] == 5 * pilot["check_every"]
    assert any("plain training at the weights' learning rate" in line for line in logs), logs
    discounts = [c["discount"] for c in pilot["trajectory"]]
    cap = min(transient, TRANSIENT_CAP * budget)
    assert all(0 <= d <= cap + 1e-9 for d in discounts)
    assert discounts[0] == pytest.approx(cap, rel=0.05)  # the full rate at the start
    assert discounts[-1] < 0.1 * discounts[0]  # none left once the cosine schedule has annealed the rate


def test_the_log_line_says_why_beta_ended_where_it_did() -> None:
    from prunedrop.pipeline import autopilot_line

    c = Autopilot(max_drop=1.0, check_every=100)
    for i in range(1, 6):
        c.check(i * 100, drop=0.0, kept_fraction=0.5)
    rising = {**c.summary(), "target": None, "stopped_early": None}
    assert rising["bound"] == "none" and "still rising" in autopilot_line(rising)
    for i in range(6, 12):
        c.check(i * 100, drop=3.0, kept_fraction=0.5)
    held = {**c.summary(), "target": None, "stopped_early": "settled"}
    line = autopilot_line(held)
    assert "bound by the budget" in line and "stopped early" in line and "still rising" not in line
    assert "back to its state" not in line
    rewound = autopilot_line({**held, "rewound": {"ended_at": 1100, "back_to": 500}})
    assert rewound.endswith("then back to its state at step 500 (within the budget)")
    assert "overfitted" not in line
    again = autopilot_line({**held, "overfit_backoffs": 2, "lr_scale": 0.25, "restarts": [400, 900]})
    assert "the weights' learning rate × 0.25 (training at the larger rate overfitted the model; started again " \
        "from the given weights at step 400, 900)" in again


def test_the_aim_is_half_the_budget_and_a_coarse_validation_set_borrows_training_samples(tmp_path: Path) -> None:
    assert Autopilot(max_drop=1.0).aim == pytest.approx(0.5)
    assert Autopilot(max_drop=1.0, resolution=100 / 144).aim == pytest.approx(0.5)
    c = Autopilot(max_drop=1.0)
    c.check(100, drop=0.5)  # at the aim: β holds
    assert c.beta == pytest.approx(autopilot.BETA_START)
    data = _bundle()  # 120 validation samples: one weighs 0.83 points, more than the aim of 0.5
    logs: list[str] = []
    report = compress(_trained_mlp(data), data, Recipe(**{**_QUICK, "epochs": 2}, max_metric_drop=1.0),
                      tmp_path / "coarse", progress=False, log=logs.append).report
    # the checks while training also count the 240 training samples, so one sample weighs 0.28 points
    assert report["autopilot"]["check_samples"] == {"validation": 120, "training": 240}
    assert report["autopilot"]["resolution"] == pytest.approx(100 / 360)
    assert any("one of the 120 validation samples weighs 0.83 points" in line and "240 training samples" in line
               for line in logs), logs
    # the budget itself is still judged on the validation samples alone
    assert report["sweep"]["selected_on"] == "val"
    # a DataLoader of the user's for training (its order may change between checks) is not borrowed from: warned
    from torch.utils.data import DataLoader

    given = DataBundle(train=DataLoader(data.train, batch_size=24), val=data.val, test=None, name="tiny",
                       num_classes=3, input_shape=(1, 4, 4))
    logs.clear()
    report = compress(_trained_mlp(data), given, Recipe(**{**_QUICK, "epochs": 2}, max_metric_drop=1.0),
                      tmp_path / "loader", progress=False, log=logs.append).report
    assert report["autopilot"]["check_samples"] == {"validation": 120, "training": 0}
    assert report["autopilot"]["resolution"] == pytest.approx(100 / 120)
    assert any("one validation sample weighs 0.83 points" in line for line in logs), logs


def test_cost_meter_does_not_count_inputs_that_were_zero_before_pruning() -> None:
    torch.manual_seed(0)
    model = TinyMLP(16, (24, 12), 3)
    with torch.no_grad():
        model.net[1].bias[:12] = -1e6  # half the first hidden layer never fires: zeros that slimming cannot remove
    x = torch.randn(8, 1, 4, 4)
    variational = to_variational(model, Recipe(method="group_vd", exclude=["net.5"]))
    meter = CostMeter(variational, x, "flops")
    assert meter.ratio(variational) == pytest.approx(1.0, rel=1e-6)


def _pilot_measuring(monkeypatch: pytest.MonkeyPatch, measured: list[float], model: torch.nn.Module | None = None):
    """A Pilot on the tiny data (budget 1, reference 90, no probe) whose checks read ``measured`` in turn."""
    from prunedrop import pilot

    data = _bundle()
    recipe = Recipe(**_QUICK, max_metric_drop=1.0)
    model = model if model is not None else to_variational(_trained_mlp(data), recipe)
    p = pilot.Pilot(model, data, recipe, steps_per_epoch=10, device=torch.device("cpu"), log=None)
    p.reference, p.probe_steps, p.transient = 90.0, 0, 0.0
    values = iter(measured)
    monkeypatch.setattr(p, "_val_metric", lambda model=None: next(values))
    return p, model, p.controller.check_every


def test_a_phase_that_ends_over_the_budget_goes_back_to_its_last_state_within_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An easy task's accuracy stays flat while the noise prunes, then falls off a cliff faster than β's back-off
    answers (a 200,000-id token classifier ended its variational phase 25 points down): the phase goes back to the
    state of its last check within the budget."""
    from prunedrop import pilot

    # within the budget for four checks, then the cliff
    p, model, every = _pilot_measuring(monkeypatch, [90.0] * 4 + [90.0 - 25.0] * 4)
    weight = next(model.parameters())
    for k in range(1, 9):
        with torch.no_grad():
            weight.fill_(float(k))  # the "training" between checks: the weight says which check it was at
        p.on_step(k * every)
    line = p.rewind()
    assert line is not None and f"back to its state at step {4 * every}" in line and "points down" in line
    assert float(weight.detach()[0].flatten()[0]) == 4.0  # the state at the fourth check, the last within it
    assert p.summary()["rewound"] == {"ended_at": 8 * every, "back_to": 4 * every}
    assert p.rewind() is None  # once
    restored = pilot.Pilot(model, p.data, p.recipe, steps_per_epoch=10, device=torch.device("cpu"), log=None)
    restored.load_state_dict(p.state_dict())
    assert restored.summary()["rewound"] == {"ended_at": 8 * every, "back_to": 4 * every}


@pytest.mark.parametrize("alone", [[90.0] * 4 + [87.0] * 4, [90.0] * 4 + [87.0] + [90.0] * 3])
def test_a_coarse_validation_sets_own_drop_is_held_to_the_budget_at_the_phases_end(
        monkeypatch: pytest.MonkeyPatch, alone: list[float]) -> None:
    """Where the checks count training samples besides a coarse validation set, the model can hold the budget on
    all of them and lose it on the validation samples alone, which the verdict reads: three digits models nobody had
    tried (a mean-and-max pooling CNN under SBP: 2 of 144 validation samples down for the last 100 epochs, a
    third of a point on all 1,437 check samples) exported nothing. A phase that ends over the budget there goes back
    to its last check within it on both; one validation sample's dip that the next checks take back does not."""
    p, model, every = _pilot_measuring(monkeypatch, [90.0] * 8)
    p.val_reference = 90.0
    pooled = p._val_metric
    values = iter(alone)

    def measured(model: Any = None) -> float:
        p.last_val_metric = next(values)
        return pooled()

    monkeypatch.setattr(p, "_val_metric", measured)
    logs: list[str] = []
    p.log = logs.append
    weight = next(model.parameters())
    for k in range(1, 9):
        with torch.no_grad():
            weight.fill_(float(k))
        p.on_step(k * every)
    checks = p.controller.checks
    # the back-off names the validation samples' own drop (the pooled drop is within the aim)
    assert any("drop on the" in line and "validation samples alone (3;" in line and "backing off" in line
               for line in logs), logs
    assert [c.val_drop for c in checks] == [90.0 - a for a in alone]
    assert all(c.smoothed_drop == 0.0 for c in checks)  # within the budget on all the checks' samples throughout
    line = p.rewind()
    if alone[-1] < 90.0:
        assert line is not None and f"back to its state at step {4 * every}" in line
        assert "validation samples alone" in line
        assert float(weight.detach()[0].flatten()[0]) == 4.0
    else:
        assert line is None and float(weight.detach()[0].flatten()[0]) == 8.0
    restored = type(p)(model, p.data, p.recipe, steps_per_epoch=10, device=torch.device("cpu"), log=None)
    restored.load_state_dict(p.state_dict())
    assert restored.val_reference == 90.0 and restored.controller.val_smoothed == p.controller.val_smoothed


@pytest.mark.parametrize("after", [[1.0, 0.9], [0.02, 0.01]])
def test_a_restart_keeps_the_more_compressed_state_it_left(monkeypatch: pytest.MonkeyPatch,
                                                           after: list[float]) -> None:
    """An overfitting back-off starts the phase again from the given weights; a ConvNeXt-style block misread so
    after a cliff, with eight epochs left, ended pruning nothing and exported nothing. The state within the budget
    before the restart is where the phase goes back to when it is more compressed than where the phase ended."""
    from prunedrop import pilot

    p, model, every = _pilot_measuring(monkeypatch, [90.0] * 5)
    kept = iter([0.5, 0.1, 0.05, *after])
    monkeypatch.setattr(pilot, "kept_fraction", lambda model: next(kept))
    weight = next(model.parameters())
    p.given = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for k in range(1, 4):
        with torch.no_grad():
            weight.fill_(float(k))
        p.on_step(k * every)
    p._start_again(3 * every + 1)  # as the overfitting back-off does (its checks are tested above)
    assert p.within is None and p.before_restart is not None and p.before_restart[0] == 3 * every
    for k in range(4, 6):
        with torch.no_grad():
            weight.fill_(float(k))
        p.on_step(k * every)
    line = p.rewind()
    if after[-1] < 0.05:  # the phase ended more compressed than before the restart, within the budget: it stays
        assert line is None and float(weight.detach()[0].flatten()[0]) == 5.0
    else:
        assert line is not None and f"back to its state at step {3 * every}" in line, line
        assert f"before the phase started again at step {3 * every + 1}" in line and "within the budget" in line
        assert float(weight.detach()[0].flatten()[0]) == 3.0
        assert p.summary()["rewound"] == {"ended_at": 5 * every, "back_to": 3 * every}


def test_a_phase_that_ends_within_the_budget_stays_where_it_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    from prunedrop import pilot

    p, model, every = _pilot_measuring(monkeypatch, [90.0 - 3.0, 90.0 - 0.5, 90.0 - 0.4])  # over it, then within
    for k in range(1, 4):
        p.on_step(k * every)
    assert p.rewind() is None and p.summary()["rewound"] is None
    monkeypatch.setattr(pilot, "REWIND_MAX_BYTES", 0)  # a model too large to copy: nothing kept, nothing rewound
    q, _, _ = _pilot_measuring(monkeypatch, [90.0, 65.0], model)
    q.on_step(every)
    q.on_step(2 * every)
    assert q.within is None and q.rewind() is None


def test_the_rewound_state_is_what_the_checkpoint_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--resume and `prunedrop export` read the variational checkpoint: after a rewind it holds the rewound model."""
    from prunedrop import pilot
    from prunedrop.storage import load_checkpoint
    from prunedrop.train import finetune

    data = _bundle()
    recipe = Recipe(**{**_QUICK, "epochs": 4}, max_metric_drop=1.0)
    model = to_variational(_trained_mlp(data), recipe)
    # within the budget for the first three checks, then 25 points down to the end
    monkeypatch.setattr(pilot.Pilot, "_val_metric",
                        lambda self, model=None: 90.0 if len(self.controller.checks) < 3 else 65.0)
    logs: list[str] = []
    result = finetune(model, data, recipe, device="cpu", checkpoint_path=tmp_path / "v.pt", progress=False,
                      log=logs.append)
    assert any("back to its state at step" in line for line in logs), logs
    rewound = result.autopilot["rewound"]
    assert rewound is not None and rewound["back_to"] < rewound["ended_at"]
    saved = load_checkpoint(tmp_path / "v.pt")
    for name, tensor in model.state_dict().items():
        assert torch.equal(saved["model"][name], tensor), name
    assert saved["extra"]["rewound"] == [rewound["ended_at"], rewound["back_to"]]


def _half_point_pilot(data: DataBundle, log: Any) -> Any:  # a prunedrop.pilot.Pilot
    """The autopilot of a tiny trained MLP with a half-point budget, before its probe."""
    from prunedrop.pilot import Pilot

    recipe = Recipe(**_QUICK, max_metric_drop=0.5)
    return Pilot(to_variational(_trained_mlp(data), recipe), data, recipe, steps_per_epoch=10,
                 device=torch.device("cpu"), log=log)


@pytest.mark.parametrize(("annealed", "kept"), [(0.2, True), (2.5, False)])
def test_a_transient_that_annealing_wins_back_keeps_the_rate(monkeypatch: pytest.MonkeyPatch, annealed: float,
                                                              kept: bool) -> None:
    """Plain training at the rate costs 3 points, six half-point budgets. Where the probe's annealed steps bring it
    back within the budget, it is an ordinary transient (LeNet-300-100 on Fashion-MNIST: 1.1-1.7 points, won back to
    0-0.06), and quartering the rate kept the weights from following the noise: the rate stays and the checks
    discount all of it. Where it stays over the budget, the rate is too large: quartered, and at most two budgets
    discounted."""
    from prunedrop.pilot import Pilot

    logs: list[str] = []
    p = _half_point_pilot(_bundle(), log=logs.append)
    p.reference = 90.0
    asked: list[float] = []

    def probe_at(self: Pilot, lr: float, interrupted: Any, anneal_over: float = math.inf) -> tuple[float, float | None]:
        asked.append(anneal_over)
        return 3.0, (annealed if 3.0 > anneal_over else None)

    monkeypatch.setattr(Pilot, "_probe_at", probe_at)
    p._probe(lambda: False)
    assert asked[0] == pytest.approx(1.0)  # annealing is asked for past two budgets
    assert p.recovered is kept and (p.lr_scale == 1.0) is kept, logs
    assert p.discount() == pytest.approx(3.0 if kept else 1.0)
    said = "annealing wins back" if kept else "once the rate anneals; trying"
    assert any(said in line for line in logs), logs
    assert p.summary()["transient_recovered"] is kept


def test_the_probe_anneals_only_past_two_budgets_and_measures_the_annealed_copy() -> None:
    """The real probe on a tiny model: a transient within two budgets trains the plateau alone and reports no
    annealed drop; asked to anneal past any transient (anneal_over 0), it trains as many steps again and measures the
    drop after them."""
    from prunedrop.pilot import PROBE_CHECKS

    p = _half_point_pilot(_bundle(), log=None)
    p.reference = p._val_metric()
    plateau = PROBE_CHECKS * p.controller.check_every
    transient, annealed = p._probe_at(1e-3, lambda: False)
    assert annealed is None and p.probe_steps == plateau and transient >= 0
    transient, annealed = p._probe_at(1e-3, lambda: False, anneal_over=-1.0)
    assert annealed is not None and 0 <= annealed < math.inf and p.probe_steps == 3 * plateau


def test_a_transient_that_annealing_wins_back_is_not_blamed_for_the_noises_cost() -> None:
    """The run's own halvings blame the rate where the probe measured plain training at it costing a quarter of the
    budget or more; where the probe also saw annealing win that back (and the checks discount all of it), what stays
    over the budget is the noise's, and halving the rate only keeps the weights from following it."""
    p = _half_point_pilot(_bundle(), log=None)
    p.transient = 1.7  # a quarter of the budget and more
    assert p._rate_to_blame()
    p.recovered = True
    assert not p._rate_to_blame()
    p.transient = 0.01  # too small to blame either way
    p.recovered = False
    assert not p._rate_to_blame()


def test_the_rate_is_not_blamed_once_the_noise_has_pruned_most_of_the_model() -> None:
    """A probe of a quarter of the budget and more blames the rate for a drop over the budget, unless the noise has
    pruned more than half of what the phase's first check kept: the drop came with the pruning (a highway MLP on
    digits: 92% kept at step 10, 18% at step 150, when six halvings began that froze its weights at 1/64)."""
    from prunedrop.autopilot import Check

    p = _half_point_pilot(_bundle(), log=None)
    p.transient = 1.7
    p.controller.checks[:] = [Check(step=10, beta=0.1, kept_fraction=0.92), Check(step=150, beta=0.1, kept_fraction=0.6)]
    assert p._rate_to_blame()  # a third pruned: the rate may still be what hurts
    p.controller.checks.append(Check(step=160, beta=0.1, kept_fraction=0.18))
    assert not p._rate_to_blame()
    p.controller.checks.append(Check(step=170, beta=0.1, kept_fraction=None))  # a check that measured nothing
    assert p._rate_to_blame()
