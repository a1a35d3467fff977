"""Per-unit noise layers: log-normal (SBP) and group variational dropout, parametrized over the registry."""

from __future__ import annotations

import copy
import itertools
import math

import mpmath
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prunedrop.layers import LAYER_REGISTRY
from prunedrop.layers.group_vd import LinearGroupVD
from prunedrop.layers.lognormal import LOG_THETA_MAX, LOG_THETA_MIN, PARAM_MAX, PARAM_MIN, LinearLogNormal
from prunedrop.layers.recurrent import DENSE_TYPES as RECURRENT
from prunedrop.layers.sparse_vd import kl_log_uniform

METHODS = ("sbp", "group_vd")

# (dense layer, input shape) for every registered plain type: strides, paddings (modes), dilations,
# groups, with and without bias, plus inputs with extra positions and unbatched inputs.
EXAMPLES: dict[type[nn.Module], list[tuple[nn.Module, tuple[int, ...]]]] = {
    nn.Linear: [
        (nn.Linear(6, 4), (5, 6)),
        (nn.Linear(6, 4, bias=False), (5, 6)),
        (nn.Linear(6, 3), (4, 7, 6)),  # a sequence: one draw per example, shared over positions
        (nn.Linear(6, 3), (6,)),  # unbatched
    ],
    nn.Conv1d: [
        (nn.Conv1d(3, 4, 3, stride=2, padding=1), (2, 3, 9)),
        (nn.Conv1d(4, 4, 3, groups=4, bias=False, dilation=2, padding=2), (2, 4, 9)),
        (nn.Conv1d(2, 4, 3, padding=1, padding_mode="reflect"), (2, 2, 7)),
        (nn.Conv1d(2, 3, 3), (2, 8)),  # unbatched
    ],
    nn.Conv2d: [
        (nn.Conv2d(3, 4, 3, padding=1), (2, 3, 6, 6)),
        (nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=2, groups=2), (2, 4, 9, 9)),
        (nn.Conv2d(4, 4, 3, groups=4, bias=False), (2, 4, 6, 6)),  # depthwise
        (nn.Conv2d(2, 3, (1, 3), stride=(2, 1), padding=(0, 1), padding_mode="circular"), (2, 2, 5, 5)),
        (nn.Conv2d(3, 4, 3, padding="same", padding_mode="replicate", bias=False), (2, 3, 5, 5)),
    ],
    nn.Conv3d: [
        (nn.Conv3d(2, 3, 3, padding=1, stride=(1, 2, 2)), (2, 2, 4, 5, 5)),
        (nn.Conv3d(2, 2, 2, groups=2, bias=False), (2, 2, 3, 3, 3)),
    ],
    # transposed convolutions (a decoder's upsampling): units are out channels, the weight's axis 1
    nn.ConvTranspose1d: [
        (nn.ConvTranspose1d(3, 4, 3, stride=2, padding=1, output_padding=1), (2, 3, 6)),
        (nn.ConvTranspose1d(2, 3, 2, stride=2, bias=False), (2, 5)),  # unbatched
    ],
    nn.ConvTranspose2d: [
        (nn.ConvTranspose2d(5, 4, 2, stride=2), (2, 5, 3, 3)),
        (nn.ConvTranspose2d(3, 6, 3, stride=2, padding=1, output_padding=1, dilation=1, bias=False), (2, 3, 4, 4)),
    ],
    nn.ConvTranspose3d: [
        (nn.ConvTranspose3d(2, 3, 2, stride=(1, 2, 2)), (2, 2, 3, 3, 3)),
    ],
}


def _units(dense: nn.Module) -> int:
    """The output units: out features or out channels (a transposed convolution's are its weight's axis 1)."""
    return dense.out_features if isinstance(dense, nn.Linear) else dense.out_channels


def _unit_rows(weight: torch.Tensor, dense: nn.Module) -> torch.Tensor:
    """The weight with its units first."""
    return weight.transpose(0, 1) if isinstance(dense, nn.modules.conv._ConvTransposeNd) else weight

# group_vd also has per-head attention and per-row embedding layers; tests/test_layers_attention.py has theirs.
# tested in their own files: tests/test_layers_attention.py, tests/test_layers_recurrent.py
OWN_TESTS = {nn.MultiheadAttention, nn.Embedding, nn.EmbeddingBag, *RECURRENT}  # tests/test_embedding_bag.py

CASES = [
    pytest.param(method, vtype, dense, shape, id=f"{vtype.__name__}-{i}")
    for method in METHODS
    for dtype, vtype in LAYER_REGISTRY[method].items()
    if dtype not in OWN_TESTS
    for i, (dense, shape) in enumerate(EXAMPLES[dtype])
]


def _unit_axis(dense: nn.Module, y: torch.Tensor) -> int:
    if isinstance(dense, nn.Linear):
        return y.dim() - 1
    return 1 if y.dim() == len(dense.kernel_size) + 2 else 0


def _per_unit(v: torch.Tensor, y: torch.Tensor, axis: int) -> torch.Tensor:
    shape = [1] * y.dim()
    shape[axis] = -1
    return v.reshape(shape)


def _set_noise(layer: nn.Module, method: str, pruned: torch.Tensor) -> None:
    """Give the layer moderate noise, with the units in ``pruned`` far beyond the default threshold."""
    with torch.no_grad():
        if method == "sbp":
            layer.mu.uniform_(-2.0, 0.3)
            layer.log_sigma.copy_(torch.where(pruned, 3.0, -4.0))  # σ = e³ spreads θ over [a, b]: SNR ≈ 0.3
        else:
            layer.log_alpha_param.copy_(torch.where(pruned, 5.0, -6.0))


def test_every_registered_type_has_examples() -> None:
    for method in METHODS:
        assert set(LAYER_REGISTRY[method]) - OWN_TESTS == {nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                                           nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d}
        assert set(LAYER_REGISTRY[method]) - OWN_TESTS <= set(EXAMPLES)


# ---- both families -------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "vtype", "dense", "shape"), CASES)
def test_from_dense_shares_weights_and_adds_one_noise_entry_per_unit(method, vtype, dense, shape) -> None:
    dense = copy.deepcopy(dense)  # the examples are shared between tests
    layer = vtype.from_dense(dense)
    assert isinstance(layer, vtype.dense_type) and type(dense) is vtype.dense_type
    assert layer.weight is dense.weight
    assert layer.bias is dense.bias
    noise = layer.noise_parameters()
    assert noise and all(p.shape == (_units(dense),) for p in noise)
    assert {id(p) for p in noise} | {id(dense.weight)} <= {id(p) for p in layer.parameters()}
    assert layer.keep_mask().shape == (_units(dense),) and layer.keep_mask().dtype == torch.bool
    assert layer.keep_mask().all()  # at init nothing is pruned


@pytest.mark.parametrize(("method", "vtype", "dense", "shape"), CASES)
def test_eval_multiplies_each_unit_by_its_folded_mean(method, vtype, dense, shape) -> None:
    dense = copy.deepcopy(dense)  # the examples are shared between tests
    torch.manual_seed(0)
    layer = vtype.from_dense(dense).eval()
    out = _units(dense)
    _set_noise(layer, method, torch.arange(out) % 2 == 1)
    x = torch.randn(shape)
    expected = dense(x)
    axis = _unit_axis(dense, expected)
    if method == "sbp":
        m = layer.expected_theta().detach() * layer.keep_mask()
        assert ((m > 0) & (m <= 1)).sum() == (out + 1) // 2
    else:
        m = layer.keep_mask().float()
    y = layer(x)
    assert torch.allclose(y, expected * _per_unit(m, expected, axis), rtol=1e-6, atol=0)
    assert torch.equal(layer(x), y)  # deterministic


@pytest.mark.parametrize(("method", "vtype", "dense", "shape"), CASES)
def test_eval_equals_dense_at_init_when_noise_is_tiny(method, vtype, dense, shape) -> None:
    dense = copy.deepcopy(dense)  # the examples are shared between tests
    x = torch.randn(shape)
    expected = dense(x)
    if method == "sbp":  # μ = 2 > b pins θ at e^b = 1 (the init μ = 0 = b gives E[θ] = 0.997)
        layer = vtype.from_dense(dense, init_mu=2.0, init_log_sigma=-15.0).eval()
        assert torch.allclose(layer(x), expected, rtol=1e-6, atol=1e-7)
    else:
        layer = vtype.from_dense(dense).eval()  # log α = −8
        assert torch.equal(layer(x), expected)


@pytest.mark.parametrize(("method", "vtype", "dense", "shape"), CASES)
def test_to_dense_equals_eval_mode_and_pruned_units_output_exact_zeros(method, vtype, dense, shape) -> None:
    dense = copy.deepcopy(dense)  # the examples are shared between tests
    torch.manual_seed(2)
    layer = vtype.from_dense(dense)
    out = _units(dense)
    pruned = torch.arange(out) % 2 == 1
    _set_noise(layer, method, pruned)
    layer.eval()
    assert torch.equal(layer.keep_mask(), ~pruned)
    plain = layer.to_dense()
    assert type(plain) is vtype.dense_type and not plain.training
    assert plain.weight.shape == dense.weight.shape and plain.weight.requires_grad
    rows = _unit_rows(plain.weight, dense)
    assert (rows[pruned] == 0).all() and (rows[~pruned] != 0).any()
    if dense.bias is None:
        assert plain.bias is None
    else:
        assert (plain.bias[pruned] == 0).all()
    x = torch.randn(shape)
    y_layer, y_plain = layer(x), plain(x)
    axis = _unit_axis(dense, y_layer)
    assert torch.allclose(y_plain, y_layer, rtol=1e-5, atol=1e-6)
    assert (y_layer.index_select(axis, pruned.nonzero()[:, 0]) == 0).all()
    assert (y_plain.index_select(axis, pruned.nonzero()[:, 0]) == 0).all()
    # a threshold given to to_dense overrides the layer's own
    keep_all = 1e-9 if method == "sbp" else 100.0
    assert (layer.to_dense(keep_all).weight != 0).sum() == (dense.weight != 0).sum()


@pytest.mark.parametrize(("method", "vtype", "dense", "shape"), CASES)
def test_training_draws_one_multiplier_per_example_and_unit(method, vtype, dense, shape) -> None:
    dense = copy.deepcopy(dense)  # the examples are shared between tests
    torch.manual_seed(3)
    layer = vtype.from_dense(dense).train()
    with torch.no_grad():
        if method == "sbp":
            layer.mu.fill_(-1.0)
            layer.log_sigma.fill_(0.0)
        else:
            layer.log_alpha_param.fill_(-1.0)
    x = torch.randn(shape)
    f = dense(x).detach()
    y = layer(x).detach()
    axis = _unit_axis(dense, f)
    batched = not (axis == 0 or (isinstance(dense, nn.Linear) and f.dim() == 1))
    # the per-(example, unit) multiplier is the least-squares ratio over that unit's positions
    keep = [0, axis] if batched else [axis]
    reduce = [d for d in range(f.dim()) if d not in keep]
    if reduce:
        theta = (y * f).sum(reduce, keepdim=True) / (f * f).sum(reduce, keepdim=True)
    else:  # no positions: the ratio itself
        theta = y / f
    assert torch.allclose(y, theta * f, rtol=1e-4, atol=1e-5)
    if method == "sbp":
        assert ((theta > 0) & (theta <= 1 + 1e-5)).all()
    assert theta.std() > 0.05  # random, and different across units (and examples)
    layer.zero_grad()
    layer(x).square().sum().backward()
    for p in layer.noise_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize(("method", "vtype", "dense", "shape"), CASES)
def test_kl_is_a_finite_scalar_with_gradients(method, vtype, dense, shape) -> None:
    dense = copy.deepcopy(dense)  # the examples are shared between tests
    layer = vtype.from_dense(dense)
    with torch.no_grad():
        for p in layer.noise_parameters():
            p.uniform_(-12.0, 12.0)
    kl = layer.kl()
    assert kl.dim() == 0 and torch.isfinite(kl)
    kl.backward()
    for p in layer.noise_parameters():
        assert torch.isfinite(p.grad).all()
    assert dense.weight.grad is None  # per-unit KLs do not depend on the weights


# ---- group variational dropout -------------------------------------------------------------------


@pytest.mark.parametrize(("method", "vtype", "dense", "shape"),
                         [c for c in CASES if c.values[0] == "group_vd"])
def test_group_vd_training_mean_and_variance_are_exact(method, vtype, dense, shape) -> None:
    dense = copy.deepcopy(dense)  # the examples are shared between tests
    torch.manual_seed(4)
    layer = vtype.from_dense(dense).train()
    out = _units(dense)
    with torch.no_grad():
        layer.log_alpha_param.copy_(torch.linspace(-1.5, 0.5, out))
    n = 4000
    x1 = torch.randn(shape)
    batched = len(shape) > (1 if isinstance(dense, nn.Linear) else len(dense.kernel_size) + 1)
    x = (x1[:1] if batched else x1.unsqueeze(0)).expand(n, *(shape[1:] if batched else shape))
    with torch.no_grad():
        samples = layer(x)
        mean = dense(x[:1])[0]
        alpha = torch.exp(layer.log_alpha)
    axis = _unit_axis(dense, samples) - 1
    var = _per_unit(alpha, mean, axis) * mean**2
    emp_mean, emp_var = samples.mean(0), samples.var(0)
    # n = 4000: the standard error of the mean is sd/63, of the variance about var·0.022
    assert torch.allclose(emp_mean, mean, atol=5 * float(var.sqrt().max()) / math.sqrt(n) + 1e-6)
    assert torch.allclose(emp_var, var, rtol=0.15, atol=1e-6)


def test_group_vd_keep_mask_follows_clipped_log_alpha() -> None:
    layer = LinearGroupVD.from_dense(nn.Linear(3, 5), log_alpha_clip=8.0)
    with torch.no_grad():
        layer.log_alpha_param.copy_(torch.tensor([2.9, 3.1, -50.0, 50.0, 0.0]))
    assert layer.log_alpha.tolist() == pytest.approx([2.9, 3.1, -8.0, 8.0, 0.0])
    assert layer.keep_mask().tolist() == [True, False, True, False, True]
    assert layer.keep_mask(threshold=1.0).tolist() == [False, False, True, False, True]
    assert torch.allclose(layer.kl(), kl_log_uniform(layer.log_alpha).sum())
    assert layer.noise_parameters() == [layer.log_alpha_param]


# ---- log-normal noise (SBP) ----------------------------------------------------------------------


def _grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.linspace(PARAM_MIN, PARAM_MAX, n)
    mu, log_sigma = torch.meshgrid(v, v, indexing="ij")
    return mu.flatten(), log_sigma.flatten()


def _lognormal_layer(mu: torch.Tensor, log_sigma: torch.Tensor, in_features: int = 3) -> LinearLogNormal:
    layer = LinearLogNormal.from_dense(nn.Linear(in_features, mu.numel()))
    with torch.no_grad():
        layer.mu.copy_(mu)
        layer.log_sigma.copy_(log_sigma)
    return layer


def _assert_finite_values_and_gradients(layer: LinearLogNormal) -> None:
    torch.manual_seed(5)
    x = torch.randn(8, layer.in_features)
    checks = {
        "kl": lambda: layer.kl(),
        "snr": lambda: layer.snr().sum(),
        "expected_theta": lambda: layer.expected_theta().sum(),
        "train": lambda: layer.train()(x).sum(),
        "eval": lambda: layer.eval()(x).sum(),
    }
    for name, value in checks.items():
        layer.zero_grad()
        v = value()
        assert torch.isfinite(v), name
        v.backward()
        for p in (layer.mu, layer.log_sigma, layer.weight):
            assert p.grad is None or torch.isfinite(p.grad).all(), name
    e = layer.expected_theta()
    assert ((e >= math.exp(LOG_THETA_MIN) * (1 - 1e-5)) & (e <= math.exp(LOG_THETA_MAX))).all()
    assert (layer.snr() > 0).all()
    assert layer.kl() > -1e-3 * layer.mu.numel()  # KL ≥ 0 up to rounding


def test_lognormal_is_finite_with_gradients_over_the_whole_clamped_box() -> None:
    # 26 × 26 grid over [−20, 5]², both corners and edges included, plus points beyond the clamp
    mu, log_sigma = _grid(26)
    mu = torch.cat([mu, torch.tensor([30.0, -30.0, 0.0, 0.0])])
    log_sigma = torch.cat([log_sigma, torch.tensor([-30.0, 30.0, -30.0, 30.0])])
    _assert_finite_values_and_gradients(_lognormal_layer(mu, log_sigma))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(PARAM_MIN, PARAM_MAX), st.floats(PARAM_MIN, PARAM_MAX)),
                min_size=1, max_size=8))
def test_lognormal_is_finite_anywhere_in_the_box(points: list[tuple[float, float]]) -> None:
    mu, log_sigma = (torch.tensor(v) for v in zip(*points))
    _assert_finite_values_and_gradients(_lognormal_layer(mu, log_sigma))


def _reference(mu: float, sigma: float) -> tuple[float, float, float]:
    """(log E[θ], SNR, KL) from the textbook formulas in 60-digit arithmetic."""
    with mpmath.workdps(60):
        a, b = mpmath.mpf(LOG_THETA_MIN), mpmath.mpf(LOG_THETA_MAX)
        mu, sigma = mpmath.mpf(mu), mpmath.mpf(sigma)
        alpha, beta = (a - mu) / sigma, (b - mu) / sigma
        z = mpmath.ncdf(beta) - mpmath.ncdf(alpha)
        log_e1 = mu + sigma**2 / 2 + mpmath.log(mpmath.ncdf(beta - sigma) - mpmath.ncdf(alpha - sigma)) - mpmath.log(z)
        log_e2 = (2 * mu + 2 * sigma**2 + mpmath.log(mpmath.ncdf(beta - 2 * sigma) - mpmath.ncdf(alpha - 2 * sigma))
                  - mpmath.log(z))
        d = log_e2 - 2 * log_e1
        snr = 1 / mpmath.sqrt(mpmath.expm1(d)) if d > 0 else mpmath.inf
        kl = (-mpmath.log(sigma) - mpmath.log(z) - (alpha * mpmath.npdf(alpha) - beta * mpmath.npdf(beta)) / (2 * z)
              + mpmath.log(b - a) - mpmath.log(2 * mpmath.pi * mpmath.e) / 2)
        return float(log_e1), float(snr), float(kl)


def test_lognormal_statistics_match_high_precision_reference_over_the_box() -> None:
    # float32 everywhere, including μ = 5 with σ = e⁻²⁰ where β = −2.4·10⁹ and log Φ(β) ≈ −3·10¹⁸
    mu, log_sigma = _grid(11)
    mu = torch.cat([mu, torch.tensor([0.5, 0.05, 1.0])])
    log_sigma = torch.cat([log_sigma, torch.tensor([-5.0, -5.0, -3.0])])
    layer = _lognormal_layer(mu, log_sigma)
    with torch.no_grad():
        log_e, snr, kl_units = layer.log_expected_theta(), layer.snr(), layer.kl()
        sigma = layer.log_sigma.exp()  # the float32 σ the layer uses
    ref = [_reference(m, s) for m, s in zip(mu.tolist(), sigma.tolist())]
    ref_log_e, ref_snr, ref_kl = (torch.tensor(v, dtype=torch.float64) for v in zip(*ref))
    assert (log_e.double() - ref_log_e).abs().max() < 1e-4
    assert abs(float(kl_units) - float(ref_kl.sum())) < 1e-5 * float(ref_kl.abs().sum()) + 1e-3
    moderate = (ref_snr > 1e-2) & (ref_snr < 1e2)
    assert moderate.sum() > 20
    assert ((snr.double() / ref_snr - 1)[moderate].abs() < 1e-3).all()
    assert torch.equal(snr > 1, ref_snr > 1)


def test_lognormal_kl_matches_numerical_integration() -> None:
    # ∫ q log(q/p) over log θ ∈ [a, b], q the truncated normal density, p = 1/(b − a): no closed form used
    a, b = LOG_THETA_MIN, LOG_THETA_MAX
    points = [(-5.0, 1.0), (0.0, 0.5), (-10.0, 3.0), (0.5, 0.2), (-1.0, 0.05), (-19.0, 2.0), (2.0, 4.0)]
    for m, s in points:
        unit = _lognormal_layer(torch.tensor([m]), torch.tensor([s]).log())
        with mpmath.workdps(25):
            z = mpmath.ncdf((b - m) / s) - mpmath.ncdf((a - m) / s)

            def integrand(v, m=m, s=s, z=z):
                q = mpmath.npdf(v, m, s) / z
                return q * mpmath.log(q * (b - a))

            expected = float(mpmath.quad(integrand, [a, min(max(m, a), b), b]))
        assert unit.kl().item() == pytest.approx(expected, rel=1e-4, abs=1e-4), (m, s)


def test_lognormal_moments_match_monte_carlo_of_the_training_sampler() -> None:
    torch.manual_seed(6)
    # (μ, σ) where the sampler's γ clip is inactive; μ above b = 0 included (β = −0.6, −3)
    points = [(-1.0, 1.0), (0.0, 0.4), (0.3, 0.5), (-3.0, 2.0), (-10.0, 4.5), (0.3, 0.1), (-0.5, 0.3)]
    mu = torch.tensor([m for m, _ in points])
    sigma = torch.tensor([s for _, s in points])
    layer = _lognormal_layer(mu, sigma.log())
    with torch.no_grad():  # weight 0, bias 1: the training output is θ itself
        layer.weight.zero_()
        layer.bias.fill_(1.0)
        n = 40000
        theta = layer.train()(torch.zeros(n, 3))
        mean = layer.expected_theta()
        second = mean**2 * (1 + layer.snr() ** -2)  # E[θ²] = E[θ]²·(1 + 1/SNR²)
    assert ((theta >= math.exp(LOG_THETA_MIN)) & (theta <= math.exp(LOG_THETA_MAX))).all()
    se_mean = theta.std(0) / math.sqrt(n)
    se_second = (theta**2).std(0) / math.sqrt(n)
    assert ((theta.mean(0) - mean).abs() < 5 * se_mean + 1e-5).all()
    assert (((theta**2).mean(0) - second).abs() < 5 * se_second + 1e-5).all()


def test_lognormal_eval_multiplier_survives_mu_drifting_above_b() -> None:
    # DESIGN.md: in float32 the literal formulas give Z = Φ(β) − Φ(α) = 0 here and the eval multiplier 0.
    torch.manual_seed(7)
    dense = nn.Linear(5, 4)
    layer = LinearLogNormal.from_dense(dense)  # μ = 0, log σ = −5
    x = torch.randn(16, 5)
    loss = -layer.mu.sum() + 0.0 * layer(x).sum()
    loss.backward()
    with torch.no_grad():  # one plain SGD step with lr 0.5 (torch.optim's first step costs seconds of imports)
        for p in layer.noise_parameters():
            p -= 0.5 * p.grad
    assert torch.allclose(layer.mu, torch.full((4,), 0.5))
    beta = (LOG_THETA_MAX - layer.mu.detach()) / layer.log_sigma.detach().exp()
    assert (torch.special.ndtr(beta) == 0).all()  # the literal Z underflows
    layer.eval()
    m = layer.expected_theta()
    assert torch.isfinite(m).all() and (m > 0.99).all() and (m <= 1).all()
    assert layer.keep_mask().all()
    y = layer(x)
    assert torch.isfinite(y).all()
    assert torch.allclose(y, dense(x), rtol=1e-2, atol=1e-4)
    assert torch.allclose(layer.to_dense()(x), y, atol=1e-6)


def test_lognormal_keep_mask_follows_snr_threshold() -> None:
    layer = _lognormal_layer(torch.tensor([-3.0, -3.0, -3.0, 0.5]), torch.tensor([-5.0, -1.0, 0.5, -5.0]))
    snr = layer.snr().detach()
    assert snr[0] > 100 and 1 < snr[1] < 3 and snr[2] < 1 and snr[3] > 100
    assert layer.keep_mask().tolist() == [True, True, False, True]
    assert layer.keep_mask(threshold=float(snr[1]) + 0.01).tolist() == [True, False, False, True]
    assert layer.threshold == 1.0
    assert layer.noise_parameters() == [layer.mu, layer.log_sigma]


def test_lognormal_kl_at_init_is_the_half_normal_value() -> None:
    # μ = b: the half of N(0, σ²) below 0, so Z = 1/2 and KL = −log σ + log 2 + log(b − a) − ½ log(2πe)
    layer = LinearLogNormal.from_dense(nn.Linear(2, 3))
    expected = 3 * (5.0 + math.log(2) + math.log(20) - 0.5 * math.log(2 * math.pi * math.e))
    assert layer.kl().item() == pytest.approx(expected, rel=1e-6)


def test_lognormal_statistics_run_in_float32_for_half_precision_layers() -> None:
    dense = nn.Linear(4, 3).to(torch.bfloat16)
    layer = LinearLogNormal.from_dense(dense, init_mu=0.5).eval()
    assert layer.mu.dtype == torch.bfloat16
    assert layer.kl().dtype == torch.float32 and torch.isfinite(layer.kl())
    x = torch.randn(2, 4, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and torch.allclose(y.float(), dense(x).float(), rtol=2e-2, atol=1e-2)
    assert layer.to_dense().weight.dtype == torch.bfloat16
    assert torch.isfinite(layer.train()(x)).all()


def test_lognormal_snr_grid_has_no_pruning_artifacts_of_rounding() -> None:
    # Wherever σ is small the unit is near-deterministic and must be kept, whatever μ is.
    v = torch.tensor(list(itertools.product(torch.linspace(PARAM_MIN, PARAM_MAX, 26).tolist(),
                                            [-20.0, -15.0, -10.0, -5.0])))
    layer = _lognormal_layer(v[:, 0], v[:, 1])
    assert layer.keep_mask().all()
    assert (layer.expected_theta() > 0).all()


def test_lognormal_total_kl_is_the_weighted_sum_of_the_layers_kls() -> None:
    from prunedrop.layers.lognormal import Conv2dLogNormal, total_kl
    from prunedrop.train import training_kl

    torch.manual_seed(8)
    layers = [LinearLogNormal.from_dense(nn.Linear(3, 5)), Conv2dLogNormal.from_dense(nn.Conv2d(2, 4, 3)),
              LinearGroupVD.from_dense(nn.Linear(3, 2))]
    with torch.no_grad():
        for layer in layers[:2]:
            layer.mu.uniform_(-6.0, 2.0)
            layer.log_sigma.uniform_(-6.0, 2.0)
    expected = 2.0 * layers[0].kl() + 0.5 * layers[1].kl()
    assert torch.allclose(total_kl(layers[:2], [2.0, 0.5]), expected, rtol=1e-6)
    # the trainer takes the log-normal layers together and every other layer on its own
    total = training_kl(layers, [2.0, 0.5, 3.0])
    assert torch.allclose(total, expected + 3.0 * layers[2].kl(), rtol=1e-6)
    total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for layer in layers
               for p in layer.noise_parameters())


@pytest.mark.parametrize("method", ["sbp", "group_vd", "sbp_sparse_vd"])
def test_the_eval_multiplier_is_reused_only_while_its_inputs_are_unchanged(method: str) -> None:
    """Eval-mode passes reuse the unit multiplier (the log-normal moments cost more than a small layer's product);
    an optimizer step, a loaded state, a new threshold or a wanted gradient each see a fresh one."""
    torch.manual_seed(0)
    layer = LAYER_REGISTRY[method][nn.Linear].from_dense(nn.Linear(5, 7)).eval()
    x = torch.randn(3, 5)
    calls = []
    compute = layer._eval_multiplier
    layer._eval_multiplier = lambda threshold: calls.append(threshold) or compute(threshold)
    with torch.no_grad():
        first = layer(x)
        torch.testing.assert_close(layer(x), first, rtol=0, atol=0)
    assert len(calls) == 1, "the second pass reuses the multiplier"

    optimizer = torch.optim.SGD(layer.noise_parameters(), lr=1.0)
    layer.train()
    layer(x).sum().backward()
    optimizer.step()  # in place: the parameters' version moves
    layer.eval()
    with torch.no_grad():
        stepped = layer(x)
    assert len(calls) == 2
    dense = layer.to_dense()
    torch.testing.assert_close(stepped, dense(x))
    del calls[2:]  # to_dense computes its own

    layer.threshold = layer.threshold + 0.5
    with torch.no_grad():
        layer(x)
    assert len(calls) == 3
    state = copy.deepcopy(layer.state_dict())
    with torch.no_grad():
        for p in layer.noise_parameters():
            p.add_(0.3)
        layer(x)
        layer.load_state_dict(state)
        layer(x)
    assert len(calls) == 5
    out = layer(x)  # eval mode with gradients: computed afresh, and the noise parameters receive them
    out.sum().backward()
    assert len(calls) == 6 and any(p.grad is not None for p in layer.noise_parameters())
