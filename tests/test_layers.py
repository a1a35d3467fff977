"""Variational layers, parametrized over the layer registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunedrop.layers import LAYER_REGISTRY, LinearSVD, VariationalLayer, kl_log_uniform, register_layer
from prunedrop.layers.recurrent import DENSE_TYPES as RECURRENT

# (dense layer, input) examples for every registered plain type; several conv settings each.
EXAMPLES: dict[type[nn.Module], list[tuple[nn.Module, tuple[int, ...]]]] = {
    nn.Linear: [(nn.Linear(6, 4), (5, 6)), (nn.Linear(6, 4, bias=False), (5, 6))],
    nn.Conv1d: [
        (nn.Conv1d(3, 4, 3, stride=2, padding=1), (2, 3, 9)),
        (nn.Conv1d(4, 4, 3, groups=4, bias=False, dilation=2, padding=2), (2, 4, 9)),
        (nn.Conv1d(2, 4, 3, padding=1, padding_mode="reflect"), (2, 2, 7)),
    ],
    nn.Conv2d: [
        (nn.Conv2d(3, 4, 3, padding=1), (2, 3, 6, 6)),
        (nn.Conv2d(4, 6, 3, stride=2, dilation=2, padding=2, groups=2), (2, 4, 9, 9)),
        (nn.Conv2d(4, 4, 3, groups=4, bias=False), (2, 4, 6, 6)),  # depthwise
        (nn.Conv2d(2, 3, (1, 3), stride=(2, 1), padding="same" if False else (0, 1), padding_mode="circular"),
         (2, 2, 5, 5)),
    ],
    nn.Conv3d: [
        (nn.Conv3d(2, 3, 3, padding=1, stride=(1, 2, 2)), (2, 2, 4, 5, 5)),
        (nn.Conv3d(2, 2, 2, groups=2, bias=False), (2, 2, 3, 3, 3)),
    ],
    nn.ConvTranspose1d: [(nn.ConvTranspose1d(3, 4, 4, stride=3, bias=False), (2, 3, 6))],
    nn.ConvTranspose2d: [
        (nn.ConvTranspose2d(3, 4, 2, stride=2), (2, 3, 4, 4)),
        (nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=2), (2, 4, 5, 5)),
    ],
    nn.ConvTranspose3d: [(nn.ConvTranspose3d(2, 3, 3, stride=(1, 2, 2), padding=1), (2, 2, 3, 3, 3))],
}

# Layers whose parameters are not one weight applied by _apply_weight; tests/test_layers_attention.py has theirs.
# tested in their own files: tests/test_layers_attention.py, tests/test_layers_recurrent.py
OWN_TESTS = {nn.MultiheadAttention, nn.Embedding, nn.EmbeddingBag, *RECURRENT}  # tests/test_embedding_bag.py

CASES = [
    pytest.param(vtype, dense, shape, id=f"{vtype.__name__}-{i}")
    for dtype, vtype in LAYER_REGISTRY["sparse_vd"].items()
    if dtype not in OWN_TESTS
    for i, (dense, shape) in enumerate(EXAMPLES[dtype])
]


def test_every_registered_type_has_examples() -> None:
    assert set(LAYER_REGISTRY["sparse_vd"]) - OWN_TESTS <= set(EXAMPLES)


@pytest.mark.parametrize(("vtype", "dense", "shape"), CASES)
def test_eval_equals_dense_when_noise_is_tiny(vtype, dense, shape) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape)
    expected = dense(x)
    layer = vtype.from_dense(dense, init_log_sigma2=-30.0).eval()
    assert torch.equal(layer(x), expected)


@pytest.mark.parametrize(("vtype", "dense", "shape"), CASES)
def test_from_dense_shares_weights_instead_of_copying(vtype, dense, shape) -> None:
    layer = vtype.from_dense(dense)
    assert layer.weight is dense.weight
    assert layer.bias is dense.bias
    assert layer.log_sigma2.shape == dense.weight.shape


@pytest.mark.parametrize(("vtype", "dense", "shape"), CASES)
def test_training_mean_and_variance_match_local_reparameterisation(vtype, dense, shape) -> None:
    torch.manual_seed(1)
    layer = vtype.from_dense(dense)
    with torch.no_grad():
        layer.log_sigma2.copy_(torch.log(0.5 * layer.weight**2 + 1e-3))  # α between 0.5 and large
    x = torch.randn(1, *shape[1:]).expand(4000, *shape[1:])
    layer.train()
    with torch.no_grad():
        samples = layer(x)
        w = layer.weight
        mean = layer._apply_weight(x[:1], w, layer.bias)[0]
        var = layer._apply_weight(x[:1] ** 2, torch.exp(layer.log_alpha) * w * w, None)[0]
    emp_mean, emp_var = samples.mean(0), samples.var(0)
    # 4000 samples: the standard error of the mean is sd/63, of the variance about var·0.022
    assert torch.allclose(emp_mean, mean, atol=5 * float(var.sqrt().max()) / math.sqrt(4000) + 1e-5)
    assert torch.allclose(emp_var, var + 1e-8, rtol=0.15, atol=1e-4)


@pytest.mark.parametrize(("vtype", "dense", "shape"), CASES)
def test_to_dense_equals_eval_mode_with_pruned_entries_zero(vtype, dense, shape) -> None:
    torch.manual_seed(2)
    layer = vtype.from_dense(dense)
    with torch.no_grad():  # prune about half of the weights
        layer.log_sigma2.copy_(torch.where(torch.rand_like(layer.weight) < 0.5, 10.0, -10.0))
    x = torch.randn(shape)
    layer.eval()
    plain = layer.to_dense()
    assert type(plain) is vtype.dense_type
    mask = layer.keep_mask()
    assert 0 < int(mask.sum()) < mask.numel()
    assert torch.equal(plain.weight == 0, ~mask | (layer.weight == 0))
    assert torch.allclose(plain(x), layer(x), atol=1e-6)


@pytest.mark.parametrize(("vtype", "dense", "shape"), CASES)
def test_kl_is_finite_with_gradients_at_extremes(vtype, dense, shape) -> None:
    layer = vtype.from_dense(dense)
    with torch.no_grad():
        layer.weight.view(-1)[0] = 0.0  # log θ² = log 1e-8
        layer.log_sigma2.view(-1)[1] = 50.0
        layer.log_sigma2.view(-1)[-1] = -50.0
    kl = layer.kl()
    kl.backward()
    assert torch.isfinite(kl)
    assert torch.isfinite(layer.log_sigma2.grad).all()
    assert torch.isfinite(layer.weight.grad).all()
    assert layer.log_sigma2.grad.abs().sum() > 0


def test_a_transposed_convolution_takes_the_output_size_of_its_call() -> None:
    """``nn.ConvTranspose2d(x, output_size)`` chooses the output padding per call (U-Net decoders match a skip
    connection's size this way); the variational layer takes the same argument, in training and in eval mode."""
    from prunedrop.layers import ConvTranspose2dSVD

    torch.manual_seed(3)
    dense = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1)
    x = torch.randn(2, 4, 7, 7)
    layer = ConvTranspose2dSVD.from_dense(dense, init_log_sigma2=-30.0)
    assert layer.eval()(x).shape[-2:] == (13, 13)
    assert torch.equal(layer(x, output_size=[14, 14]), dense(x, output_size=[14, 14]))
    assert layer.train()(x, [2, 3, 14, 14]).shape[-2:] == (14, 14)
    assert layer(x).shape[-2:] == (13, 13)  # the next call without one: the layer's own output padding


def test_kl_approximation_values() -> None:
    # −KL(0) = k1·σ(k2) − ½·log 2 − k1; large log α: KL → 0; KL falls as log α grows
    la = torch.tensor([0.0, 10.0, -10.0, 3.0])
    kl = kl_log_uniform(la)
    k1, k2 = 0.63576, 1.87320
    assert kl[0].item() == pytest.approx(-(k1 / (1 + math.exp(-k2)) - 0.5 * math.log(2) - k1), rel=1e-5)
    assert abs(kl[1].item()) < 1e-3
    assert kl[2] > kl[3] > kl[1]


def test_keep_mask_follows_log_alpha_threshold() -> None:
    layer = LinearSVD.from_dense(nn.Linear(3, 2))
    with torch.no_grad():
        layer.weight.fill_(1.0)  # log θ² = 0, so log α = log σ²
        layer.log_sigma2.copy_(torch.tensor([[2.9, 3.1, -5.0], [9.0, 0.0, 3.0]]))
    assert layer.keep_mask().tolist() == [[True, False, True], [False, True, True]]
    assert layer.keep_mask(threshold=1.0).tolist() == [[False, False, True], [False, True, False]]


def test_log_alpha_is_clipped() -> None:
    layer = LinearSVD.from_dense(nn.Linear(3, 2), log_alpha_clip=8.0)
    with torch.no_grad():
        layer.log_sigma2.fill_(100.0)
    assert float(layer.log_alpha.detach().max()) == 8.0


def test_register_layer_rejects_incomplete_layers() -> None:
    class Half(VariationalLayer):
        def kl(self) -> torch.Tensor:
            return torch.zeros(())

    with pytest.raises(TypeError, match="from_dense"):
        register_layer("custom", nn.Linear, Half)  # from_dense is missing: named first
    with pytest.raises(TypeError, match="subclass"):
        register_layer("custom", nn.Linear, nn.Linear)  # type: ignore[arg-type]
    assert "custom" not in LAYER_REGISTRY
