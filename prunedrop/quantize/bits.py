"""The posterior's bit rule (``quantize: bayes``, see docs/quantization.md): how many bits each converted layer's
weights need, from its variational posterior.

Each kept weight of a converted layer has a posterior spread: sparse VD's ``w = θ + σ·ε`` (σ² = α·θ²), or a
unit's multiplicative noise (log-normal SBP: mean E[θ] and std E[θ]/SNR; group VD: mean 1, std √α), or both
(``sbp_sparse_vd``). For a weight ``a·b`` with independent ``a`` (per weight) and ``b`` (per unit), the folded
weight is E[a]·E[b] and its variance ``E[a]²·Var b + Var a·(E[b]² + Var b)``. Per kept output unit u (one per-channel scale of the quantizer):

    s_u = sqrt(mean of the variances over u's kept weights)      (the posterior's own spread, rms over the row)
    Δ_u = sqrt(12)·k·s_u                                           (largest step with Δ²/12 ≤ (k·s_u)²)
    b_u = ceil(log2(r_u / Δ_u + 1)),  r_u = 2·max |w_u|             (the range a symmetric per-channel quantizer covers)

That treats the posterior's variance as if it were as many independent errors, one per weight. A unit's
multiplicative noise is not: it scales the whole unit, ``y_u → b·y_u``, and leaves the direction of its weights
alone, while rounding errors are independent per weight. So with input samples (``inputs``, as a run passes them)
the step is matched on the unit's *output* instead, where both act: with ``v_i`` the independent part of weight
i's variance (``Var a·(E[b]² + Var b)``) and ``ρ_u² = Var b / E[b]²`` the unit's relative variance, the posterior
moves the output by ``Var y_u = Σ_i v_i·x_i² + ρ_u²·y_u²``, and a step Δ for every kept weight by
``Δ²/12 · Σ_i x_i²``. Averaged over the samples (and positions of a convolution):

    s_u² = (E[Σ_i v_i·x_i²] + ρ_u²·E[y_u²]) / E[Σ_i x_i²]         (sums over u's kept inputs)

in the rule above. With inputs of equal power and uncorrelated, E[y_u²] is that power times Σ w_i², and s_u is
the rms of the variances again; on real inputs it moves either way (a filter taking differences of correlated
inputs has a weak output and needs more bits, one summing a ReLU's non-negative outputs a strong one and fewer).

and the layer needs ``bits = the 90th percentile of b_u`` over its kept units (nearest rank): a few units with an
unusually sure posterior do not force the whole layer to float, but 90% of them get quantization noise within
their posterior spread. A layer needing ≤ 8 bits becomes int8 (≤ 7 on a CPU without VNNI, where the int8 weights keep
7 bits: :func:`prunedrop.quantize.quantizer.weight_bits`), one needing more stays float32, and a layer with no
posterior (not converted, or a recurrent/attention/embedding layer) stays float32 under ``bayes``. A layer needing
≤ 4 bits gets int4 weights (opset 21) where they are smaller than its int8 weights as stored (dense or sparse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..layers.base import along, weight_unit_axis

MAX_INT_BITS = 8
MIN_INT_BITS = 4  # int4 storage (opset 21's DequantizeLinear) where the posterior allows it
UNIT_QUANTILE = 0.9
#: training samples the rule measures each unit's output on (:func:`input_spreads`)
RULE_SAMPLES = 256


def posterior_parts(layer: nn.Module, threshold: float | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(folded weight, the independent part of each weight's posterior variance, each unit's relative variance
    ``Var b / E[b]²`` shaped to broadcast against the weight, keep mask) of a converted Linear/Conv layer pruned at
    ``threshold`` (the layer's own by default); None for a layer with no such posterior (recurrent, attention,
    embedding, or not variational). The weight's whole variance is ``independent + folded² · relative``."""
    from ..layers.group_vd import GroupVD
    from ..layers.lognormal import LogNormal
    from ..layers.sparse_vd import SparseVD

    if not isinstance(layer, (SparseVD, LogNormal, GroupVD)):
        return None
    with torch.no_grad():
        weight = layer.weight.detach().float()
        axis = weight_unit_axis(layer)  # the weight keeps its layout; each unit's entries broadcast along its axis
        units = weight.shape[axis]
        if isinstance(layer, SparseVD):
            mean_a, var_a = weight, torch.exp(layer.log_alpha.detach().float()) * weight * weight
        else:
            mean_a, var_a = weight, torch.zeros_like(weight)
        if isinstance(layer, LogNormal):
            mean_b = layer.expected_theta().detach().float()
            var_b = (mean_b / layer.snr().detach().float()) ** 2
        elif isinstance(layer, GroupVD):
            mean_b = torch.ones(units)
            var_b = torch.exp(layer.log_alpha.detach().float())
        else:
            mean_b, var_b = torch.ones(units), torch.zeros(units)
        mean_b, var_b = along(mean_b, weight, axis), along(var_b, weight, axis)
        keep = layer.keep_mask(threshold).detach()
        if keep.shape != weight.shape:
            keep = along(keep, weight, axis).expand_as(weight)
        folded = mean_a * mean_b
        independent = var_a * (mean_b * mean_b + var_b)
        relative = torch.where(mean_b != 0, var_b / (mean_b * mean_b).clamp_min(1e-30), torch.zeros_like(var_b))
        return folded * keep, independent * keep, relative, keep.bool()


def posterior_moments(layer: nn.Module, threshold: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(folded weight, posterior variance of each weight, keep mask), all weight-shaped, of a converted
    Linear/Conv layer pruned at ``threshold`` (the layer's own by default); None for a layer with no such
    posterior (recurrent, attention, embedding, or not variational)."""
    parts = posterior_parts(layer, threshold)
    if parts is None:
        return None
    folded, independent, relative, keep = parts
    return folded, (independent + folded * folded * relative) * keep, keep


def unit_bits(folded: torch.Tensor, var: torch.Tensor, keep: torch.Tensor, k: float = 1.0,
              spread: torch.Tensor | None = None) -> np.ndarray:
    """Bits b_u that each kept output unit needs (module docstring); inf where the posterior has no spread.
    ``spread``: s_u of each kept unit measured on inputs (:func:`input_spreads`); without it, the rms of the
    variances over the unit's kept weights."""
    rows = folded.shape[0]
    w = folded.reshape(rows, -1).abs().double()
    m = keep.reshape(rows, -1)
    alive = m.sum(dim=1) > 0
    if spread is None:
        spread = _rms_spread(var, keep)
    span = 2 * (w * m).amax(dim=1)[alive]
    step = math.sqrt(12.0) * k * spread.double()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (span / step).numpy()
        bits = np.ceil(np.log2(ratio + 1.0))
    return np.where(step.numpy() > 0, np.maximum(bits, 1.0), np.inf)


def _rows(t: torch.Tensor, axis: int) -> torch.Tensor:
    """``t`` as one row per entry of its ``axis`` (a weight's output units)."""
    return t.movedim(axis, 0).reshape(t.shape[axis], -1)


def _rms_spread(var: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """s_u of each kept unit from its weights alone: the rms of their posterior standard deviations."""
    rows = var.shape[0]
    v = var.reshape(rows, -1).double()
    m = keep.reshape(rows, -1)
    counts = m.sum(dim=1)
    alive = counts > 0
    return torch.sqrt((v * m).sum(dim=1)[alive] / counts[alive])


def rule_inputs(data: Any, seed: int = 0, samples: int = RULE_SAMPLES) -> torch.Tensor | None:
    """The first ``samples`` of the training inputs the activations are calibrated on
    (:func:`prunedrop.quantize.quantizer.calibration_batches`, shuffled with ``seed``) of the
    :class:`prunedrop.data.DataBundle` ``data``, for :func:`input_spreads`; None where there are none."""
    from ..errors import PrunedropError
    from .quantizer import CALIBRATION_BATCH, calibration_batches

    try:
        batches = calibration_batches(data.loader("train", CALIBRATION_BATCH, shuffle=True, seed=seed), samples)
    except (PrunedropError, AttributeError):  # no training samples, or inputs that are not one tensor
        return None
    return torch.from_numpy(np.concatenate(batches))[:samples]


@torch.no_grad()
def input_spreads(model: nn.Module, inputs: torch.Tensor, threshold: float | None = None,
                  batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Layer name → s_u of each kept unit, matched on the unit's output over ``inputs`` (module docstring), for
    every converted Linear/Conv layer with a posterior that the samples reach. ``model`` runs in eval mode (the
    thresholded model), one batch of ``batch_size`` at a time; each layer's input is reduced to three sums per unit
    inside a forward hook, so no activation is kept."""
    from ..convert import variational_layers

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    sums: dict[str, torch.Tensor] = {}
    alive: dict[str, torch.Tensor] = {}
    hooks = []
    for name, layer in variational_layers(model).items():
        parts = posterior_parts(layer, threshold)
        if parts is None or not hasattr(layer, "_dense_with"):
            continue
        folded, independent, relative, keep = parts
        alive[name] = _rows(keep, weight_unit_axis(layer)).any(dim=1).cpu()
        ones = layer._dense_with(keep.to(folded.dtype), None)
        noisy = layer._dense_with(independent, None) if bool(independent.any()) else None
        mean = layer._dense_with(folded, None)
        rho2 = relative.reshape(-1).double()
        convolution = folded.dim() > 2

        def hook(module: nn.Module, args: tuple, output: torch.Tensor, name: str = name, ones: nn.Module = ones,
                 noisy: nn.Module | None = noisy, mean: nn.Module = mean, rho2: torch.Tensor = rho2,
                 convolution: bool = convolution) -> None:
            x = args[0].detach().float()
            # the units' axis: a batched convolution's output has as many axes as its weight (N, C, ...), an
            # unbatched one (C, ...) one fewer; a Linear's units are its last axis
            axis = (1 if output.dim() == mean.weight.dim() else 0) if convolution else -1

            def per_unit(t: torch.Tensor) -> torch.Tensor:
                return t.double().movedim(axis, -1).reshape(-1, t.shape[axis]).sum(dim=0)

            square = x * x
            q, y = per_unit(ones(square)), per_unit(mean(x) ** 2)
            p = per_unit(noisy(square)) if noisy is not None else torch.zeros_like(q)
            total = torch.stack([q, p + rho2 * y]).cpu()
            sums[name] = total if name not in sums else sums[name] + total

        hooks.append(layer.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(inputs), batch_size):
            model(inputs[start:start + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = {}
    for name, (q, v) in sums.items():
        q, v = q[alive[name]], v[alive[name]]
        # a unit whose kept inputs were all zero on these samples: any step is as good as none
        out[name] = torch.where(q > 0, torch.sqrt(v.clamp_min(0) / q.clamp_min(1e-300)), torch.full_like(q, math.inf))
    return out


@dataclass
class LayerBits:
    """The bit rule's outcome for one layer."""

    name: str
    bits: float
    """Bits the layer needs (the 90th percentile of its units' b_u); inf: a unit's posterior has no spread."""
    units: int
    """Kept output units that entered the rule."""
    median_spread: float
    """Median over the kept units of s_u (the posterior std: measured on the unit's output where the rule had inputs,
    else the rms over the unit's kept weights); inf where no unit's inputs carried anything."""
    on_inputs: bool = False
    """Whether s_u was matched on the unit's output over input samples (:func:`input_spreads`)."""

    @property
    def precision(self) -> str:
        return "int8" if self.bits <= MAX_INT_BITS else "float32"


def posterior_bits(model: nn.Module, threshold: float | None = None, *, k: float = 1.0,
                   quantile: float = UNIT_QUANTILE, inputs: torch.Tensor | None = None) -> dict[str, LayerBits]:
    """Layer name → :class:`LayerBits` for every converted Linear/Conv layer of the variational ``model``; with
    ``inputs`` (training samples) each unit's step is matched on its output (:func:`input_spreads`)."""
    from ..convert import variational_layers

    measured: dict[str, torch.Tensor] = {}
    if inputs is not None and len(inputs):
        try:
            measured = input_spreads(model, inputs, threshold)
        except (RuntimeError, ValueError, TypeError, IndexError):
            # a model that cannot run these samples through (a fixed batch size, say) keeps the rule on its weights:
            # the rows say which (spread_on), and the accuracy check judges the result either way
            measured = {}
    out: dict[str, LayerBits] = {}
    for name, layer in variational_layers(model).items():
        moments = posterior_moments(layer, threshold)
        if moments is None:
            continue
        folded, var, keep = (t.movedim(weight_unit_axis(layer), 0) for t in moments)  # one row per output unit
        spread = measured.get(name)
        if spread is None:
            spread = _rms_spread(var, keep)
        bits = unit_bits(folded, var, keep, k=k, spread=spread)
        if bits.size == 0:
            continue
        # nearest-rank quantile: the smallest b with at least `quantile` of the units needing ≤ b
        ordered = np.sort(bits)
        needed = float(ordered[max(0, math.ceil(quantile * len(ordered)) - 1)])
        finite = spread[torch.isfinite(spread)]  # a unit whose inputs were all zero has no bound (inf)
        out[name] = LayerBits(name=name, bits=needed, units=int(len(ordered)),
                              median_spread=float(finite.median()) if finite.numel() else math.inf,
                              on_inputs=name in measured)
    return out
