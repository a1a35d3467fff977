"""Statistics, eval behaviour and gradients of every method in prunedrop.dropout (fixed seeds, tolerances)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunedrop.dropout import (
    ConcreteDropout,
    Cutout,
    DropConnectLinear,
    Dropout,
    FastDropoutLinear,
    GaussianDropout,
    MaxDrop,
    MaxPoolingDropout2d,
    RecurrentDropoutLSTM,
    RecurrentDropoutLSTMCell,
    RNNDropLSTM,
    RNNDropLSTMCell,
    SpatialDropout,
    StandoutLinear,
    VariationalDropoutLinear,
    VariationalLSTM,
    VariationalLSTMCell,
    dropout,
    gaussian_dropout,
    is_dropout_like,
    mc_dropout_mode,
    mc_predict,
    variational_dropout_kl,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _normal_relu_mean(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[relu(u)] for u ~ N(mu, sigma^2), in closed form."""
    z = mu / sigma
    normal = torch.distributions.Normal(0.0, 1.0)
    return mu * normal.cdf(z) + sigma * normal.log_prob(z).exp()


# --- standard dropout --------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_paper_rule_scales_at_test_time(p: float) -> None:
    x = torch.full((100_000,), 2.0)
    out = Dropout(p).train()(x)
    assert (out == 0).float().mean().item() == pytest.approx(p, abs=0.01)
    assert torch.all((out == 0) | (out == 2.0))  # no rescaling during training
    assert torch.equal(Dropout(p).eval()(x), x * (1 - p))


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_inverted_dropout_preserves_mean_and_is_identity_in_eval(p: float) -> None:
    x = torch.full((100_000,), 2.0)
    out = dropout(x, p, training=True, inverted=True)
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 2.0 / (1 - p)))
    assert out.mean().item() == pytest.approx(2.0, rel=0.02)
    assert torch.equal(dropout(x, p, training=False, inverted=True), x)


def test_dropout_rejects_bad_probabilities() -> None:
    with pytest.raises(ValueError, match="p must be"):
        Dropout(-0.1)
    with pytest.raises(ValueError, match="p must be"):
        Dropout(1.0, inverted=True)


# --- DropConnect -------------------------------------------------------------------------------------


def test_dropconnect_masks_weights_and_biases_per_example() -> None:
    layer = DropConnectLinear(4, 3, p=0.5)
    v = torch.ones(20_000, 4)
    out = layer.train()(v)
    expected = 0.5 * (layer.weight.sum(dim=1) + layer.bias)
    assert torch.allclose(out.mean(dim=0), expected, atol=0.02)
    assert out.unique(dim=0).shape[0] > 10  # same input, different masks
    shared = DropConnectLinear(4, 3, p=0.5, per_example=False).train()(v[:50])
    assert shared.unique(dim=0).shape[0] == 1


def test_dropconnect_drops_each_weight_with_probability_p() -> None:
    layer = DropConnectLinear(5, 8, p=0.3, bias=False)
    one_hot = torch.zeros(4000, 5)
    one_hot[:, 2] = 1.0
    out = layer.train()(one_hot)  # each output is m * W[:, 2]
    assert (out == 0).float().mean().item() == pytest.approx(0.3, abs=0.015)
    kept = out != 0
    assert torch.allclose(out[kept], layer.weight[:, 2].expand_as(out)[kept])


def test_dropconnect_inference_mean_and_gaussian_sampling() -> None:
    torch.manual_seed(1)
    v = torch.randn(3, 4)
    mean_layer = DropConnectLinear(4, 3, p=0.4, activation=nn.ReLU(), inference="mean").eval()
    expected_mean = torch.relu(0.6 * (v @ mean_layer.weight.T + mean_layer.bias))
    assert torch.allclose(mean_layer(v), expected_mean)

    layer = DropConnectLinear(4, 3, p=0.4, activation=nn.ReLU(), samples=40_000).eval()
    mu = 0.6 * (v @ layer.weight.T + layer.bias)
    var = 0.6 * 0.4 * ((v * v) @ (layer.weight**2).T + layer.bias**2)
    # the paper's inference averages a(u) over u ~ N(mu, var): for a ReLU that mean is known exactly
    assert torch.allclose(layer(v), _normal_relu_mean(mu, var.sqrt()), atol=0.01)


def test_dropconnect_gradients_flow() -> None:
    layer = DropConnectLinear(4, 3, activation=nn.Tanh()).train()
    layer(torch.randn(8, 4)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert layer.bias is not None and layer.bias.grad is not None and layer.bias.grad.abs().sum() > 0


# --- standout ----------------------------------------------------------------------------------------


def test_standout_keep_probability_follows_tied_weights() -> None:
    layer = StandoutLinear(3, 4, alpha=0.7, beta=0.3, activation=nn.Identity())
    x = torch.randn(1, 3)
    h = x @ layer.weight.T + layer.bias
    expected = torch.sigmoid(0.7 * h + 0.3 * (x.sum() + 1))  # pi = alpha * w + beta, a_0 = 1
    keep = layer.keep_probability(x)
    assert torch.allclose(keep, expected)

    out = layer.train()(x.expand(20_000, 3))
    assert torch.allclose((out != 0).float().mean(dim=0), keep[0], atol=0.015)
    assert torch.allclose(layer.eval()(x), keep * h)


def test_standout_trains_the_layer_weights() -> None:
    layer = StandoutLinear(3, 4).train()
    layer(torch.randn(16, 3)).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


# --- Gaussian and fast dropout -----------------------------------------------------------------------


def test_gaussian_dropout_noise_statistics_and_eval_identity() -> None:
    x = torch.full((200_000,), 3.0)
    out = GaussianDropout(0.5).train()(x)
    assert out.mean().item() == pytest.approx(3.0, rel=0.01)
    assert out.var().item() == pytest.approx(1.0 * 9.0, rel=0.02)  # alpha = p / (1 - p) = 1
    out = gaussian_dropout(x, 0.2)
    assert out.var().item() == pytest.approx(0.25 * 9.0, rel=0.02)
    assert torch.equal(GaussianDropout(0.5).eval()(x), x)


def test_fast_dropout_samples_the_moment_matched_preactivation() -> None:
    layer = FastDropoutLinear(4, 3, p=0.5)
    x = torch.randn(1, 4)
    out = layer.train()(x.expand(50_000, 4))
    assert torch.allclose(out.mean(dim=0), (x @ layer.weight.T + layer.bias)[0], atol=0.01)
    expected_var = ((x * x) @ (layer.weight**2).T)[0]
    assert torch.allclose(out.var(dim=0), expected_var, rtol=0.05)
    assert torch.allclose(layer.eval()(x), x @ layer.weight.T + layer.bias)


# --- variational dropout -----------------------------------------------------------------------------


def test_variational_dropout_kl_approximation() -> None:
    log_alpha = torch.linspace(-6.0, 0.0, 25)
    kl = variational_dropout_kl(log_alpha)
    assert kl[-1].item() == pytest.approx(0.0, abs=1e-6)
    assert torch.all(kl[:-1] > 0)
    assert torch.all(kl[1:] < kl[:-1])  # more noise, closer to the prior
    # 0.24571 - (0.5 ln 0.5 + c1/2 + c2/4 + c3/8) at alpha = 1/2
    assert variational_dropout_kl(torch.tensor(math.log(0.5))).item() == pytest.approx(0.31378, abs=1e-4)


def test_variational_dropout_weight_noise_uses_local_reparameterisation() -> None:
    layer = VariationalDropoutLinear(4, 3, mode="weight", init_p=0.3)
    x = torch.randn(1, 4)
    out = layer.train()(x.expand(50_000, 4)).detach()
    alpha = 0.3 / 0.7
    assert torch.allclose(out.mean(dim=0), (x @ layer.weight.T + layer.bias)[0], atol=0.01)
    expected_var = ((x * x) @ (alpha * layer.weight**2).T)[0]
    assert torch.allclose(out.var(dim=0), expected_var, rtol=0.05)
    corr = torch.corrcoef(out.T)
    assert corr[0, 1].abs().item() < 0.03  # independent draws per unit


def test_variational_dropout_unit_noise_is_shared_across_outputs() -> None:
    layer = VariationalDropoutLinear(1, 3, mode="unit", init_p=0.5)
    assert layer.log_alpha.shape == (1,)
    x = torch.full((50_000, 1), 2.0)
    out = layer.train()(x).detach()
    expected_var = 4.0 * 1.0 * layer.weight[:, 0] ** 2
    assert torch.allclose(out.var(dim=0), expected_var.detach(), rtol=0.05)
    corr = torch.corrcoef(out.T)
    assert corr[0, 1].abs().item() == pytest.approx(1.0, abs=1e-3)
    # independent noise per input unit: the variances of the input terms add up
    wide = VariationalDropoutLinear(3, 2, mode="unit", init_p=0.5)
    x = torch.tensor([[1.0, -2.0, 0.5]])
    out = wide.train()(x.expand(50_000, 3)).detach()
    expected_var = ((x * x) @ (wide.weight**2).T)[0].detach()
    assert torch.allclose(out.var(dim=0), expected_var, rtol=0.05)


def test_variational_dropout_eval_clip_and_gradients() -> None:
    layer = VariationalDropoutLinear(4, 3)
    x = torch.randn(5, 4)
    assert torch.equal(layer.eval()(x), F.linear(x, layer.weight, layer.bias))
    with torch.no_grad():
        layer.log_alpha.fill_(2.0)
    assert torch.allclose(layer.dropout_rate, torch.full((3, 4), 0.5))  # alpha capped at 1
    assert layer.kl().item() == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        layer.log_alpha.fill_(-1.0)
    loss = layer.train()(x).pow(2).sum() + layer.kl()
    loss.backward()
    assert layer.log_alpha.grad is not None and layer.log_alpha.grad.abs().sum() > 0
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


# --- concrete dropout --------------------------------------------------------------------------------


def test_concrete_dropout_drop_rate_and_mean() -> None:
    layer = ConcreteDropout(init_p=0.3).train()
    x = torch.ones(200_000)[None].expand(2, -1)
    out = layer(x)
    keep_scale = 1 / 0.7
    assert torch.all(out >= 0) and torch.all(out <= keep_scale + 1e-5)
    # P(z > 1/2) = p exactly for the concrete relaxation, at any temperature
    assert (out < keep_scale / 2).float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert out.mean().item() == pytest.approx(1.0, abs=0.03)
    assert torch.equal(layer.eval()(x), x)


def test_concrete_dropout_regularizer_and_learned_p() -> None:
    linear = nn.Linear(6, 2)
    layer = ConcreteDropout(linear, init_p=0.2, weight_regularizer=1e-2, dropout_regularizer=1e-1)
    with pytest.raises(RuntimeError, match="forward pass"):
        layer.regularizer()
    out = layer.train()(torch.randn(8, 6))
    p = torch.tensor(0.2)
    squares = (linear.weight**2).sum() + (linear.bias**2).sum()
    expected = 1e-2 * squares / (1 - p) + 1e-1 * 6 * (p * p.log() + (1 - p) * (1 - p).log())
    assert layer.regularizer().item() == pytest.approx(expected.item(), rel=1e-4)
    (out.pow(2).sum() + layer.regularizer()).backward()
    assert layer.p_logit.grad is not None and layer.p_logit.grad.abs().item() > 0
    assert linear.weight.grad is not None


# --- spatial dropout, cutout, max-drop, max-pooling dropout ------------------------------------------


def test_spatial_dropout_drops_whole_feature_maps() -> None:
    x = torch.rand(200, 20, 5, 5) + 0.1
    out = SpatialDropout(0.3).train()(x)
    maps = out.flatten(2)
    zero_maps = (maps == 0).all(dim=2)
    intact = (maps == x.flatten(2)).all(dim=2)
    assert torch.all(zero_maps | intact)
    assert zero_maps.float().mean().item() == pytest.approx(0.3, abs=0.02)
    assert torch.allclose(SpatialDropout(0.3).eval()(x), 0.7 * x)
    inverted = SpatialDropout(0.3, inverted=True)
    assert torch.equal(inverted.eval()(x), x)
    kept = inverted.train()(x).flatten(2)
    nonzero = (kept != 0).all(dim=2)
    assert torch.allclose(kept[nonzero], x.flatten(2)[nonzero] / 0.7)


def test_cutout_masks_one_square_per_image() -> None:
    x = torch.ones(2000, 3, 10, 10)
    out = Cutout(size=3).train()(x)
    cut = out == 0
    assert torch.equal(cut[:, 0], cut[:, 1]) and torch.equal(cut[:, 0], cut[:, 2])  # all channels
    rows, cols = cut[:, 0].any(dim=2), cut[:, 0].any(dim=1)
    # the cut region is exactly a rectangle of the rows and columns it touches, at most 3 x 3
    assert torch.equal(cut[:, 0], rows[:, :, None] & cols[:, None, :])
    assert rows.sum(dim=1).max() <= 3 and cols.sum(dim=1).max() <= 3
    assert rows.sum(dim=1).min() >= 2 and cols.sum(dim=1).min() >= 2  # centre always inside the image
    # centres uniform over 10 rows, clipped at the border: 2.8 rows and columns on average
    assert cut[:, 0].sum(dim=(1, 2)).float().mean().item() == pytest.approx(2.8**2, abs=0.2)
    assert torch.equal(Cutout(size=3, p=0.0).train()(x), x)
    assert torch.equal(Cutout(size=3).eval()(x), x)


@pytest.mark.parametrize("mode", ["feature", "channel"])
def test_max_drop_only_drops_maxima(mode: str) -> None:
    x = torch.rand(1000, 4, 3, 3)
    layer = MaxDrop(0.4, mode=mode)  # type: ignore[arg-type]
    is_max = layer.maximal(x)
    out = layer.train()(x)
    changed = out != x
    assert not torch.any(changed & ~is_max)
    assert torch.all(out[changed] == 0)
    groups = changed.any(dim=(2, 3)) if mode == "feature" else changed.any(dim=1)
    assert groups.float().mean().item() == pytest.approx(0.4, abs=0.02)
    expected_eval = torch.where(is_max, 0.6 * x, x)
    assert torch.allclose(layer.eval()(x), expected_eval)


def test_max_drop_eval_is_the_expected_training_output() -> None:
    x = torch.rand(1, 3, 4, 4)
    layer = MaxDrop(0.5, mode="channel").train()
    average = layer(x.expand(4000, -1, -1, -1)).mean(dim=0, keepdim=True)  # one mask per copy
    assert torch.allclose(average, layer.eval()(x), atol=0.03)


def test_max_pooling_dropout_weighted_pooling() -> None:
    layer = MaxPoolingDropout2d(2, p=0.5).eval()
    # sorted window 1 <= 2 <= 3 <= 4: weights q p^3, q p^2, q p, q with p = q = 1/2
    window = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert layer(window).item() == pytest.approx(0.0625 + 0.25 + 0.75 + 2.0)
    x = torch.rand(1, 3, 6, 6)
    assert torch.equal(MaxPoolingDropout2d(2, p=0.0).eval()(x), F.max_pool2d(x, 2))
    samples = layer.train()(x.expand(5000, -1, -1, -1))  # one mask per copy
    allowed = torch.cat([x[0, 0, :2, :2].flatten(), torch.zeros(1)])
    assert torch.isin(samples[:, 0, 0, 0], allowed).all()  # a window element or 0
    assert torch.allclose(samples.mean(dim=0, keepdim=True), layer.eval()(x), atol=0.02)


def test_structured_dropouts_pass_gradients() -> None:
    x = torch.rand(4, 3, 6, 6, requires_grad=True)
    for layer in (SpatialDropout(0.5), Cutout(2), MaxDrop(0.5), MaxPoolingDropout2d(2, p=0.3)):
        x.grad = None
        layer.train()(x).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0, type(layer).__name__


# --- recurrent ---------------------------------------------------------------------------------------


LSTM_CASES = [
    (RNNDropLSTM, {"p": 0.0}),
    (RecurrentDropoutLSTM, {"p": 0.0}),
    (VariationalLSTM, {"p_input": 0.0, "p_hidden": 0.0}),
    (VariationalLSTM, {"p_input": 0.0, "p_hidden": 0.0, "tied_masks": True}),
]


@pytest.mark.parametrize(("cls", "options"), LSTM_CASES)
def test_dropout_lstm_without_dropout_is_nn_lstm(cls: type, options: dict) -> None:
    lstm = nn.LSTM(5, 7, num_layers=2, batch_first=True)
    x = torch.randn(3, 6, 5)
    hx = (torch.randn(2, 3, 7), torch.randn(2, 3, 7))
    ref, (h_ref, c_ref) = lstm(x, hx)
    model = cls.from_lstm(lstm, **options).train()
    out, (h, c) = model(x, hx)
    assert out.shape == (3, 6, 7) and h.shape == (2, 3, 7)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(h, h_ref, atol=1e-6) and torch.allclose(c, c_ref, atol=1e-6)
    out, (h, _) = model(x[0], (hx[0][:, 0], hx[1][:, 0]))  # unbatched: (T, input)
    assert out.shape == (6, 7) and h.shape == (2, 7)
    assert torch.allclose(out, ref[0], atol=1e-6)


@pytest.mark.parametrize(("cls", "options"), [(RecurrentDropoutLSTM, {"p": 0.5}), (VariationalLSTM, {})])
def test_inverted_recurrent_dropouts_are_plain_lstms_in_eval(cls: type, options: dict) -> None:
    lstm = nn.LSTM(4, 6)
    x = torch.randn(5, 2, 4)
    model = cls.from_lstm(lstm, **options).eval()
    assert torch.allclose(model(x)[0], lstm(x)[0], atol=1e-6)
    model.train()
    assert not torch.allclose(model(x)[0], model(x)[0])  # new masks for every sequence


def test_rnndrop_cell_mask_is_fixed_for_the_sequence() -> None:
    cell = RNNDropLSTMCell(3, 16, p=0.4).train()
    x = torch.randn(8, 200, 3)
    h, c = cell(x[0])  # hx=None starts a sequence
    dropped = c == 0
    for x_t in x[1:]:
        h, c = cell(x_t, (h, c))
        assert torch.equal(c == 0, dropped)
        assert torch.equal(h == 0, dropped)
    assert dropped.float().mean().item() == pytest.approx(0.4, abs=0.03)
    cell.reset_masks()
    assert not torch.equal(cell(x[0], (h, c))[1] == 0, dropped)


def test_rnndrop_eval_scales_the_output_not_the_memory() -> None:
    lstm_cell = nn.LSTMCell(3, 5)
    cell = RNNDropLSTMCell(3, 5, p=0.3)
    cell.load_state_dict(lstm_cell.state_dict())
    x = torch.randn(4, 3)
    h_ref, c_ref = lstm_cell(x)
    h, c = cell.eval()(x)
    assert torch.allclose(c, c_ref, atol=1e-6)
    assert torch.allclose(h, 0.7 * h_ref, atol=1e-6)


def _memory_cell(cls: type, **options: float | bool) -> nn.Module:
    """A cell with input and forget gates stuck open (i = f = 1), so c_t = c_{t-1} + update."""
    cell = cls(2, 64, **options)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).zero_()
        cell.bias_ih[:128] = 30.0  # i and f chunks: sigmoid(30) == 1 in float32
        cell.weight_ih[128:192] = torch.randn(64, 2)  # g chunk
    return cell


def test_recurrent_dropout_drops_updates_and_keeps_memory() -> None:
    cell = _memory_cell(RecurrentDropoutLSTMCell, p=0.5).train()
    c0 = torch.full((100, 64), 5.0)
    h, c1 = cell(torch.randn(100, 2), (torch.zeros(100, 64), c0))
    untouched = (c1 - c0).abs() < 1e-6
    assert untouched.float().mean().item() == pytest.approx(0.5, abs=0.03)  # dropped updates
    # RNNDrop, in contrast, empties the memory of the units it drops
    rnndrop = _memory_cell(RNNDropLSTMCell, p=0.5).train()
    _, c_rnndrop = rnndrop(torch.randn(100, 2), (torch.zeros(100, 64), c0))
    assert (c_rnndrop == 0).float().mean().item() == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("per_sequence", [False, True])
def test_recurrent_dropout_mask_per_step_or_per_sequence(per_sequence: bool) -> None:
    cell = _memory_cell(RecurrentDropoutLSTMCell, p=0.5, per_sequence=per_sequence).train()
    x = torch.randn(6, 50, 2)
    h, c = torch.zeros(50, 64), torch.zeros(50, 64)
    cell.reset_masks()
    patterns = []
    for x_t in x:
        h, c_next = cell(x_t, (h, c))
        patterns.append((c_next - c).abs() < 1e-6)
        c = c_next
    same = all(torch.equal(p, patterns[0]) for p in patterns)
    assert same == per_sequence


def test_variational_lstm_input_mask_is_fixed_along_the_sequence() -> None:
    model = VariationalLSTM(16, 8, p_input=0.5, p_hidden=0.0, tied_masks=True).train()
    x = torch.randn(7, 300, 16, requires_grad=True)
    model(x)[0].sum().backward()
    assert x.grad is not None
    dropped = x.grad == 0  # a masked input feature gets no gradient
    assert all(torch.equal(dropped[t], dropped[0]) for t in range(7))
    assert dropped[0].float().mean().item() == pytest.approx(0.5, abs=0.02)


def test_variational_lstm_untied_masks_differ_per_gate() -> None:
    model = VariationalLSTM(16, 8, p_input=0.5, p_hidden=0.0).train()
    x = torch.randn(3, 400, 16, requires_grad=True)
    model(x)[0].sum().backward()
    assert x.grad is not None
    # zero only when dropped in all four gates, 0.5^4; at t = 0 the forget gate acts on c = 0, so
    # three gates suffice there and the first step is left out
    dropped = x.grad == 0
    assert all(torch.equal(dropped[t], dropped[1]) for t in range(1, 3))
    assert dropped[1].float().mean().item() == pytest.approx(0.0625, abs=0.015)


def test_variational_cell_hidden_mask_and_sequence_reuse() -> None:
    cell = VariationalLSTMCell(4, 32, p_input=0.0, p_hidden=0.5, tied_masks=True).train()
    h0 = torch.randn(200, 32, requires_grad=True)
    h, c = cell(torch.randn(200, 4), (h0, torch.zeros(200, 32)))
    masks = cell.sequence_masks(200, h)
    cell(torch.randn(200, 4), (h, c))
    assert cell.sequence_masks(200, h) is masks  # same masks for every step of the sequence
    h.sum().backward()
    assert h0.grad is not None
    assert (h0.grad == 0).float().mean().item() == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize("cls", [RNNDropLSTM, RecurrentDropoutLSTM, VariationalLSTM])
def test_dropout_lstms_pass_gradients(cls: type) -> None:
    model = cls(3, 4, num_layers=2).train()
    x = torch.randn(5, 2, 3, requires_grad=True)
    out, (h, c) = model(x)
    (out.sum() + c.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())


# --- Monte Carlo dropout -----------------------------------------------------------------------------


def test_mc_predict_mean_entropy_and_mutual_information() -> None:
    # logits (40, 0) or (0, 0) with probability 1/2: probabilities (1, 0) or (1/2, 1/2)
    model = nn.Sequential(nn.Dropout(0.5)).eval()
    pred = mc_predict(model, torch.tensor([[20.0, 0.0]]), samples=4000)
    assert torch.allclose(pred.mean, torch.tensor([[0.75, 0.25]]), atol=0.02)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert pred.entropy.item() == pytest.approx(h, abs=0.02)
    assert pred.mutual_information.item() == pytest.approx(h - 0.5 * math.log(2), abs=0.02)
    assert not model.training


def test_mc_predict_only_dropout_samples_and_modes_are_restored() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), Dropout(0.5), nn.Linear(8, 3))
    model.train()
    running_mean = model[1].running_mean.clone()
    seen: dict[str, bool] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            seen.setdefault(name, module.training)

        return hook

    model[1].register_forward_hook(record("bn"))
    model[3].register_forward_hook(record("dropout"))
    x = torch.randn(5, 4)
    pred = mc_predict(model, x, samples=30)
    assert seen == {"bn": False, "dropout": True}
    assert torch.equal(model[1].running_mean, running_mean)
    assert all(m.training for m in model.modules())
    assert torch.allclose(pred.mean.sum(dim=1), torch.ones(5))
    assert torch.all(pred.mutual_information > 0)


def test_mc_predict_without_dropout_has_no_model_uncertainty() -> None:
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(6, 4)
    pred = mc_predict(model, x, samples=5)
    probs = model(x).softmax(dim=1)
    assert torch.allclose(pred.mean, probs)
    assert torch.allclose(pred.entropy, -(probs * probs.log()).sum(dim=1))
    assert torch.all(pred.mutual_information.abs() < 1e-5)


def test_dropout_like_modules() -> None:
    assert is_dropout_like(nn.Dropout2d()) and is_dropout_like(ConcreteDropout())
    assert is_dropout_like(nn.LSTM(2, 2, num_layers=2, dropout=0.2))
    assert not is_dropout_like(nn.LSTM(2, 2)) and not is_dropout_like(nn.BatchNorm1d(2))
    wrapped = ConcreteDropout(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)))
    with mc_dropout_mode(wrapped):
        assert wrapped.training and not wrapped.layer[1].training  # children keep eval mode
