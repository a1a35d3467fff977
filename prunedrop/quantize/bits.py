"""The posterior's bit rule (``quantize: bayes``, see docs/quantization.md): how many bits each converted layer's
weights need, from its variational posterior.

Each kept weight of a converted layer has a posterior spread: sparse VD's ``w = θ + σ·ε`` (σ² = α·θ²), or a
unit's multiplicative noise (log-normal SBP: mean E[θ] and std E[θ]/SNR; group VD: mean 1, std √α), or both
(``sbp_sparse_vd``). For a weight ``a·b`` with independent ``a`` (per weight) and ``b`` (per unit), the folded
weight is E[a]·E[b] and its variance ``E[a]²·Var b + Var a·(E[b]² + Var b)``. Per kept output unit u (one per-channel scale of the quantizer):

    s_u = sqrt(mean of the variances over u's kept weights)      (the posterior's own spread, rms over the row)
    Δ_u = sqrt(12)·k·s_u                                           (largest step with Δ²/12 ≤ (k·s_u)²)
    b_u = ceil(log2(r_u / Δ_u + 1)),  r_u = 2·max |w_u|             (the range a symmetric per-channel quantizer covers)

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

import numpy as np
import torch
from torch import nn

MAX_INT_BITS = 8
MIN_INT_BITS = 4  # int4 storage (opset 21's DequantizeLinear) where the posterior allows it
UNIT_QUANTILE = 0.9


def posterior_moments(layer: nn.Module, threshold: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(folded weight, posterior variance of each weight, keep mask), all weight-shaped, of a converted
    Linear/Conv layer pruned at ``threshold`` (the layer's own by default); None for a layer with no such
    posterior (recurrent, attention, embedding, or not variational)."""
    from ..layers.group_vd import GroupVD
    from ..layers.lognormal import LogNormal
    from ..layers.sparse_vd import SparseVD

    if not isinstance(layer, (SparseVD, LogNormal, GroupVD)):
        return None
    with torch.no_grad():
        weight = layer.weight.detach().float()
        unit_shape = (-1, *([1] * (weight.dim() - 1)))
        if isinstance(layer, SparseVD):
            mean_a, var_a = weight, torch.exp(layer.log_alpha.detach().float()) * weight * weight
        else:
            mean_a, var_a = weight, torch.zeros_like(weight)
        if isinstance(layer, LogNormal):
            mean_b = layer.expected_theta().detach().float()
            var_b = (mean_b / layer.snr().detach().float()) ** 2
        elif isinstance(layer, GroupVD):
            mean_b = torch.ones(weight.shape[0])
            var_b = torch.exp(layer.log_alpha.detach().float())
        else:
            mean_b, var_b = torch.ones(weight.shape[0]), torch.zeros(weight.shape[0])
        mean_b, var_b = mean_b.reshape(unit_shape), var_b.reshape(unit_shape)
        keep = layer.keep_mask(threshold).detach()
        if keep.shape != weight.shape:
            keep = keep.reshape(unit_shape).expand_as(weight)
        folded = mean_a * mean_b
        var = mean_a * mean_a * var_b + var_a * (mean_b * mean_b + var_b)
        return folded * keep, var * keep, keep.bool()


def unit_bits(folded: torch.Tensor, var: torch.Tensor, keep: torch.Tensor, k: float = 1.0) -> np.ndarray:
    """Bits b_u that each kept output unit needs (module docstring); inf where the posterior has no spread."""
    rows = folded.shape[0]
    w = folded.reshape(rows, -1).abs().double()
    v = var.reshape(rows, -1).double()
    m = keep.reshape(rows, -1)
    counts = m.sum(dim=1)
    alive = counts > 0
    spread = torch.sqrt((v * m).sum(dim=1)[alive] / counts[alive])
    span = 2 * (w * m).amax(dim=1)[alive]
    step = math.sqrt(12.0) * k * spread
    with np.errstate(divide="ignore"):
        ratio = (span / step).numpy()
    bits = np.ceil(np.log2(ratio + 1.0))
    return np.where(step.numpy() > 0, np.maximum(bits, 1.0), np.inf)


@dataclass
class LayerBits:
    """The bit rule's outcome for one layer."""

    name: str
    bits: float
    """Bits the layer needs (the 90th percentile of its units' b_u); inf: a unit's posterior has no spread."""
    units: int
    """Kept output units that entered the rule."""
    median_spread: float
    """Median over the kept units of s_u (the posterior std, rms over the unit's kept weights)."""

    @property
    def precision(self) -> str:
        return "int8" if self.bits <= MAX_INT_BITS else "float32"


def posterior_bits(model: nn.Module, threshold: float | None = None, *, k: float = 1.0,
                   quantile: float = UNIT_QUANTILE) -> dict[str, LayerBits]:
    """Layer name → :class:`LayerBits` for every converted Linear/Conv layer of the variational ``model``."""
    from ..convert import variational_layers

    out: dict[str, LayerBits] = {}
    for name, layer in variational_layers(model).items():
        moments = posterior_moments(layer, threshold)
        if moments is None:
            continue
        folded, var, keep = moments
        bits = unit_bits(folded, var, keep, k=k)
        if bits.size == 0:
            continue
        rows = folded.shape[0]
        m = keep.reshape(rows, -1)
        alive = m.sum(dim=1) > 0
        spread = torch.sqrt((var.reshape(rows, -1) * m).sum(dim=1)[alive] / m.sum(dim=1)[alive])
        # nearest-rank quantile: the smallest b with at least `quantile` of the units needing ≤ b
        ordered = np.sort(bits)
        needed = float(ordered[max(0, math.ceil(quantile * len(ordered)) - 1)])
        out[name] = LayerBits(name=name, bits=needed, units=int(len(ordered)),
                              median_spread=float(spread.median()))
    return out
