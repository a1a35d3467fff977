"""Sparse variational dropout (Molchanov, Ashukha, Vetrov 2017): one learned noise level per weight.

Additive reparameterisation ``w = θ + σ·ε``: the layer stores θ (``weight``, the trained weights it
starts from) and ``log_sigma2``; ``log α = log σ² − log(θ² + 1e-8)`` clipped to ``[−clip, clip]``.

* training: local reparameterisation trick, ``μ = f(x, θ) + b``, ``s² = f(x², α·θ²)``,
  ``out = μ + s·ε``. The bias never enters the variance term (it would only add NaNs).
  α·θ² with the clipped α equals σ² wherever the clip is inactive, and where it is active it keeps the
  variance consistent with the clipped log α that the KL sees (as the authors' code does).
* eval: deterministic, ``f(x, θ·[log α ≤ threshold]) + b``.
* ``−KL ≈ k1·sigmoid(k2 + k3·log α) − 0.5·log1p(exp(−log α)) − k1``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import VariationalLayer, register_layer

K1, K2, K3 = 0.63576, 1.87320, 1.48695
DEFAULT_THRESHOLD = 3.0
DEFAULT_INIT_LOG_SIGMA2 = -10.0
DEFAULT_LOG_ALPHA_CLIP = 10.0


def kl_log_uniform(log_alpha: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ log-uniform prior) per entry, Molchanov et al.'s approximation (eq. 14).

    ``softplus(−log α)`` is ``log1p(exp(−log α))`` without overflow for very negative log α.
    """
    neg_kl = K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1
    return -neg_kl


class _SparseVD(VariationalLayer):
    """Shared machinery of the per-weight sparse VD layers; subclasses say how to apply a weight."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    log_sigma2: nn.Parameter

    def _init_noise(self, init_log_sigma2: float, log_alpha_clip: float, threshold: float) -> None:
        self.log_sigma2 = nn.Parameter(torch.full_like(self.weight, float(init_log_sigma2)))
        self.log_alpha_clip = float(log_alpha_clip)
        self.threshold = float(threshold)

    @classmethod
    def _dense_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        raise NotImplementedError

    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def from_dense(
        cls,
        module: nn.Module,
        *,
        init_log_sigma2: float = DEFAULT_INIT_LOG_SIGMA2,
        log_alpha_clip: float = DEFAULT_LOG_ALPHA_CLIP,
        threshold: float = DEFAULT_THRESHOLD,
        **_: Any,
    ) -> _SparseVD:
        # Built on the meta device and then handed the trained Parameter objects themselves, so that
        # converting a large model allocates only log σ² and never a second copy of the weights.
        with torch.device("meta"):
            layer = cls(**cls._dense_kwargs(module))
        layer.weight = module.weight
        layer.bias = module.bias
        layer._init_noise(init_log_sigma2, log_alpha_clip, threshold)
        layer.train(module.training)
        return layer

    @property
    def log_alpha(self) -> torch.Tensor:
        log_alpha = self.log_sigma2 - torch.log(self.weight * self.weight + 1e-8)
        return torch.clamp(log_alpha, -self.log_alpha_clip, self.log_alpha_clip)

    def kl(self) -> torch.Tensor:
        return kl_log_uniform(self.log_alpha).sum()

    def keep_mask(self, threshold: float | None = None) -> torch.Tensor:
        t = self.threshold if threshold is None else threshold
        return self.log_alpha <= t

    def noise_parameters(self) -> list[nn.Parameter]:
        return [self.log_sigma2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._apply_weight(x, self.weight * self.keep_mask(), self.bias)
        log_alpha = self.log_alpha
        mu = self._apply_weight(x, self.weight, self.bias)
        var = self._apply_weight(x * x, torch.exp(log_alpha) * self.weight * self.weight, None)
        # 1e-8 keeps sqrt's gradient finite where an input patch is all zeros (padding, ReLU).
        return mu + torch.sqrt(var + 1e-8) * torch.randn_like(mu)

    def to_dense(self, threshold: float | None = None) -> nn.Module:
        with torch.device("meta"):
            dense = self.dense_type(**self._dense_kwargs(self))
        with torch.no_grad():
            dense.weight = nn.Parameter(self.weight * self.keep_mask(threshold))
            dense.bias = None if self.bias is None else nn.Parameter(self.bias.detach().clone())
        return dense.train(self.training)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, threshold={self.threshold}"


class LinearSVD(_SparseVD, nn.Linear):
    """``nn.Linear`` with sparse variational dropout on every weight."""

    dense_type = nn.Linear

    @classmethod
    def _dense_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return {"in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}

    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)


class _ConvSVD(_SparseVD):
    @classmethod
    def _dense_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return {
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": module.kernel_size,
            "stride": module.stride,
            "padding": module.padding,
            "dilation": module.dilation,
            "groups": module.groups,
            "bias": module.bias is not None,
            "padding_mode": module.padding_mode,
        }

    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # nn.ConvNd._conv_forward handles every padding_mode (zeros, reflect, replicate, circular).
        return self._conv_forward(x, weight, bias)  # type: ignore[attr-defined]


class Conv1dSVD(_ConvSVD, nn.Conv1d):
    """``nn.Conv1d`` with sparse variational dropout on every weight."""

    dense_type = nn.Conv1d


class Conv2dSVD(_ConvSVD, nn.Conv2d):
    """``nn.Conv2d`` with sparse variational dropout on every weight."""

    dense_type = nn.Conv2d


class Conv3dSVD(_ConvSVD, nn.Conv3d):
    """``nn.Conv3d`` with sparse variational dropout on every weight."""

    dense_type = nn.Conv3d


for _dense, _variational in ((nn.Linear, LinearSVD), (nn.Conv1d, Conv1dSVD), (nn.Conv2d, Conv2dSVD),
                             (nn.Conv3d, Conv3dSVD)):
    register_layer("sparse_vd", _dense, _variational)
