"""Scale: conversion copies no weight, reduced precision keeps log α and the KL in float32, the fused
kernels compute the eager math, and a failing compiler falls back to eager training."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunedrop.convert import to_variational, variational_layers
from prunedrop.data import DataBundle
from prunedrop.errors import PrunedropError
from prunedrop.layers.sparse_vd import apply_noise, fused_kernels, noise_terms
from prunedrop.recipes import Recipe
from prunedrop.testing import MLPBlock, TinyMLP, tiny_classification_data
from prunedrop.train import compiled_kernels, finetune, kernels_set, training_kl


def _bundle(n: int = 96) -> DataBundle:
    x, y = tiny_classification_data(n=n + 32, shape=(1, 4, 4), seed=3)
    return DataBundle(name="tiny", train=TensorDataset(x[:n], y[:n]), val=TensorDataset(x[n:], y[n:]),
                      test=None, input_shape=(1, 4, 4), num_classes=3)


def test_conversion_takes_over_the_parameters_without_copying() -> None:
    model = nn.Sequential(MLPBlock(8), MLPBlock(8), nn.Conv2d(2, 3, 3))
    before = {name: (p, p.data_ptr()) for name, p in model.named_parameters()}
    converted = to_variational(model, Recipe())
    after = dict(converted.named_parameters())
    for name, (p, ptr) in before.items():
        assert after[name] is p  # the same Parameter object, not an equal copy
        assert after[name].data_ptr() == ptr
    new = set(after) - set(before)
    assert new and all(n.endswith("log_sigma2") for n in new)  # the only new memory: one log σ² per weight


def test_bf16_autocast_trains_with_float32_log_alpha_and_kl() -> None:
    recipe = Recipe(epochs=2, batch_size=32, kl_warmup_epochs=1, device="cpu")
    torch.manual_seed(0)
    model = to_variational(TinyMLP(16, (24, 12), 3), recipe)
    layers = list(variational_layers(model).values())
    seen = {}

    def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen["out"] = output.dtype
        seen["kl"] = module._step_kl.dtype if module._step_kl is not None else None

    with kernels_set(layers, fused_kernels()):  # eager kernels, so that the layer keeps the step's KL
        handle = layers[0].register_forward_hook(record)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(torch.randn(4, 1, 4, 4))
            product = layers[0]._apply_weight(torch.randn(4, 16), layers[0].weight, layers[0].bias)
        handle.remove()
        kl = training_kl(layers)
    assert product.dtype == torch.bfloat16  # the products run in bf16 ...
    assert seen["out"] == out.dtype == torch.float32  # ... the noise, log α and the KL do not
    assert seen["kl"] == torch.float32
    assert kl.dtype == torch.float32 and layers[0].log_alpha.dtype == torch.float32
    result = finetune(model, _bundle(), recipe, progress=False, precision="bf16", compile="never")
    assert all(torch.isfinite(torch.tensor([h["loss"], h["kl"]])).all() for h in result.history)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_fp16_on_the_cpu_is_refused() -> None:
    recipe = Recipe(epochs=1, kl_warmup_epochs=0)
    model = to_variational(TinyMLP(16, (8,), 3), recipe)
    with pytest.raises(PrunedropError, match="fp16 needs a CUDA device.*bf16"):
        finetune(model, _bundle(), recipe, progress=False, precision="fp16")


def test_fused_kernels_compute_the_eager_values_and_gradients() -> None:
    torch.manual_seed(0)
    fused = fused_kernels()  # the hand-written backward, uncompiled
    w = torch.randn(500) * 0.1
    w[:5] = torch.tensor([0.0, 1e-6, -1e-6, 3.0, -3.0])  # both clip bounds reached
    s2 = torch.randn(500) * 6 - 4
    grad_var, grad_kl = torch.randn(500), 0.7
    results = []
    for fn in (noise_terms, fused.noise_terms):
        wi, si = w.clone().requires_grad_(), s2.clone().requires_grad_()
        var_weight, kl = fn(wi, si, 8.0)
        ((var_weight * grad_var).sum() + grad_kl * kl).backward()
        results.append((var_weight.detach(), kl.detach(), wi.grad, si.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=2e-4, atol=1e-4)
    mu, var, eps = torch.randn(64), torch.rand(64), torch.randn(64)
    outs = []
    for fn in (apply_noise, fused.apply_noise):
        m, v = mu.clone().requires_grad_(), var.clone().requires_grad_()
        o = fn(m, v, eps)
        (o * grad_var[:64]).sum().backward()
        outs.append((o.detach(), m.grad, v.grad))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(b, a)


def test_kernels_path_matches_the_plain_forward_and_kl() -> None:
    torch.manual_seed(0)
    model = to_variational(nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(12, 2)), Recipe()).train()
    layers = list(variational_layers(model).values())
    x = torch.randn(5, 1, 4, 4)
    torch.manual_seed(1)
    plain = model(x)
    plain_kl = sum(layer.kl() for layer in layers)
    with kernels_set(layers, fused_kernels()):
        torch.manual_seed(1)
        fused = model(x)
        fused_kl = training_kl(layers)
        assert all(layer._step_kl is None for layer in layers)  # taken, never reused
    torch.testing.assert_close(fused, plain)
    torch.testing.assert_close(fused_kl, plain_kl)
    assert all("_kernels" not in layer.__dict__ for layer in layers)  # handed back after training


def test_a_failing_compiler_falls_back_to_eager_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nlong traceback")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="torch.compile is not usable here.*training eagerly") as record:
        assert compiled_kernels(torch.device("cpu")) is None
    assert len(record) == 1 and "\n" not in str(record[0].message)
    recipe = Recipe(epochs=1, batch_size=32, kl_warmup_epochs=0)
    model = to_variational(TinyMLP(16, (8,), 3), recipe)
    with pytest.warns(RuntimeWarning, match="training eagerly"):
        result = finetune(model, _bundle(), recipe, progress=False, compile="always")
    assert len(result.history) == 1


def test_unknown_precision_and_compile_mode_are_errors() -> None:
    recipe = Recipe(epochs=1, kl_warmup_epochs=0)
    model = to_variational(TinyMLP(16, (8,), 3), recipe)
    with pytest.raises(PrunedropError, match="unknown precision"):
        finetune(model, _bundle(), recipe, progress=False, precision="fp8")
    with pytest.raises(PrunedropError, match="unknown compile mode"):
        finetune(model, _bundle(), recipe, progress=False, compile="sometimes")


def test_cuda_device_without_a_gpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from prunedrop.train import resolve_device

    with pytest.raises(PrunedropError, match="no CUDA GPU"):
        resolve_device("cuda:0")
