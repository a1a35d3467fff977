"""Both granularities at once: SBP log-normal noise per unit on top of sparse VD noise per weight.

A layer of this family is a sparse VD layer (:mod:`.sparse_vd`: ``w = θ + σ·ε`` per weight, trained with the
local reparameterisation trick) whose whole output is then multiplied by the per-unit log-normal noise of
structured Bayesian pruning (:mod:`.lognormal`):

* training: ``y = θ_unit ⊙ (μ + s·ε)`` with ``μ = f(x, W) + b``, ``s² = f(x², α·W²)`` and one θ_unit per
  example and unit (shared over positions), drawn as in :mod:`.lognormal`;
* ``KL = Σ_units KL(truncated log-normal ‖ log-uniform) + Σ_weights KL_sparse-VD(log α)``: the two noises are
  independent, so their KLs add;
* two thresholds: a unit goes where its SNR ≤ ``threshold`` (default 1; the one that
  :func:`prunedrop.prune.set_thresholds` and the sweep set), a single weight where its log α >
  ``weight_threshold`` (default 3);
* eval: deterministic, ``y = m ⊙ f(x, W·[log α ≤ weight_threshold], b)`` with ``m = E[θ]·[SNR > threshold]``;
  ``to_dense`` folds ``m`` into the rows and the bias, so pruned units output exact zeros (and are slimmed away)
  and pruned weights of the surviving units are zero (and stored sparsely).

``keep_mask`` is weight-shaped (the surviving weights: live unit and live weight), ``unit_keep_mask`` the
per-unit mask for slimming, ``parameter_keep_masks`` the weight mask and the bias's unit mask.

The fused sparse VD kernels of training (:class:`.sparse_vd.Kernels`) apply to the per-weight part unchanged;
the KL they hand the trainer is completed with the per-unit KL here.
"""

from __future__ import annotations

import torch
from torch import nn

from ._units import ConvUnits, LinearUnits
from .base import register_layer
from .configs import DEFAULT_THRESHOLDS, SBPSparseVDConfig
from .lognormal import DEFAULT_INIT_LOG_SIGMA, DEFAULT_INIT_MU, LogNormal
from .sparse_vd import (
    DEFAULT_INIT_LOG_SIGMA2,
    DEFAULT_LOG_ALPHA_CLIP,
    Conv1dSVD,
    Conv2dSVD,
    Conv3dSVD,
    LinearSVD,
    SparseVD,
)


class _SBPSparseVD(LogNormal):
    """Per-unit log-normal noise (the :class:`LogNormal` part) over a sparse VD layer (a ``*SVD`` base).

    Concrete classes list a ``*Units`` mixin and the plain sparse VD layer after this class, so that the unit
    machinery (forward, unit axes) comes first and ``_apply_weight``, ``log_alpha`` and the training forward of
    the per-weight part come from :class:`SparseVD`.
    """

    weight_threshold: float

    @classmethod
    def from_dense(
        cls,
        module: nn.Module,
        *,
        init_mu: float = DEFAULT_INIT_MU,
        init_log_sigma: float = DEFAULT_INIT_LOG_SIGMA,
        init_log_sigma2: float = DEFAULT_INIT_LOG_SIGMA2,
        log_alpha_clip: float = DEFAULT_LOG_ALPHA_CLIP,
        threshold: float = DEFAULT_THRESHOLDS["sbp_sparse_vd"],
        weight_threshold: float = SBPSparseVDConfig.weight_threshold,
    ) -> _SBPSparseVD:
        layer = super().from_dense(module, init_mu=init_mu, init_log_sigma=init_log_sigma, threshold=threshold)
        assert isinstance(layer, SparseVD)
        layer._init_noise(init_log_sigma2, log_alpha_clip, threshold)
        layer.weight_threshold = float(weight_threshold)
        return layer  # type: ignore[return-value]

    # -- the two noises

    def unit_kl(self) -> torch.Tensor:
        """KL of the per-unit log-normal noise."""
        return LogNormal.kl(self)

    def weight_kl(self) -> torch.Tensor:
        """KL of the per-weight sparse VD noise."""
        return SparseVD.kl(self)  # type: ignore[arg-type]

    def kl(self) -> torch.Tensor:
        return self.unit_kl() + self.weight_kl()

    def noise_parameters(self) -> list[nn.Parameter]:
        return [self.log_sigma2, *LogNormal.noise_parameters(self)]  # type: ignore[attr-defined]

    # -- masks

    def unit_keep_mask(self, threshold: float | None = None) -> torch.Tensor:
        """Per unit: SNR > threshold (the layer's ``threshold`` by default)."""
        return LogNormal.keep_mask(self, threshold)

    def weight_keep_mask(self, weight_threshold: float | None = None) -> torch.Tensor:
        """Per weight: log α ≤ ``weight_threshold`` (the layer's by default), whatever its unit does."""
        t = self.weight_threshold if weight_threshold is None else weight_threshold
        return self.log_alpha <= t  # type: ignore[attr-defined]

    def keep_mask(self, threshold: float | None = None) -> torch.Tensor:
        """Weight-shaped: a weight survives where its unit (SNR > ``threshold``) and itself (log α ≤
        ``weight_threshold``) both do."""
        units = self.unit_keep_mask(threshold)
        return self.weight_keep_mask() & units.view(-1, *([1] * (self.weight.dim() - 1)))

    def parameter_keep_masks(self, threshold: float | None = None) -> dict[str, torch.Tensor]:
        masks = {"weight": self.keep_mask(threshold)}
        if self.bias is not None or self._batchnorm() is not None:
            masks["bias"] = self.unit_keep_mask(threshold).clone()
        return masks

    # -- forward and the deterministic layer

    def _eval_multiplier(self, threshold: float | None) -> torch.Tensor:
        return torch.where(self.unit_keep_mask(threshold), self.expected_theta(), 0.0)

    def _apply_dense(self, x: torch.Tensor) -> torch.Tensor:
        """The output before the unit noise: sparse VD's (a sample in training, the thresholded weights in eval)."""
        if not self.training:
            return self._apply_weight(x, self.weight * self.weight_keep_mask(), self.bias)  # type: ignore[attr-defined]
        y = SparseVD.forward(self, x)  # type: ignore[arg-type]
        if self._step_kl is not None:  # type: ignore[attr-defined]
            # the fused kernels computed the per-weight KL alongside the variance; the trainer takes this
            # value instead of calling kl(), so it must hold both parts
            self._step_kl = self._step_kl + self.unit_kl()  # type: ignore[attr-defined]
        return y

    def to_dense(self, threshold: float | None = None) -> nn.Module:
        with torch.no_grad():
            m = self._eval_multiplier(threshold).to(self.weight.dtype)
            weight, bias = self._fold_batchnorm(self.weight * self.weight_keep_mask(), self.bias)
            weight = weight * m.view(-1, *([1] * (weight.dim() - 1)))
            return self._dense_with(weight, None if bias is None else bias * m)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight_threshold={self.weight_threshold}"


class LinearSBPSparseVD(_SBPSparseVD, LinearUnits, LinearSVD):
    """``nn.Linear`` with log-normal noise on every out feature and sparse VD on every weight."""


class Conv1dSBPSparseVD(_SBPSparseVD, ConvUnits, Conv1dSVD):
    """``nn.Conv1d`` with log-normal noise on every out channel and sparse VD on every weight."""


class Conv2dSBPSparseVD(_SBPSparseVD, ConvUnits, Conv2dSVD):
    """``nn.Conv2d`` with log-normal noise on every out channel and sparse VD on every weight."""


class Conv3dSBPSparseVD(_SBPSparseVD, ConvUnits, Conv3dSVD):
    """``nn.Conv3d`` with log-normal noise on every out channel and sparse VD on every weight."""


for _variational in (LinearSBPSparseVD, Conv1dSBPSparseVD, Conv2dSBPSparseVD, Conv3dSBPSparseVD):
    register_layer("sbp_sparse_vd", _variational.dense_type, _variational)

# the names before the module was named after its method (``combined.py``, ``*LogNormalSVD``): kept for user code
LinearLogNormalSVD = LinearSBPSparseVD
Conv1dLogNormalSVD = Conv1dSBPSparseVD
Conv2dLogNormalSVD = Conv2dSBPSparseVD
Conv3dLogNormalSVD = Conv3dSBPSparseVD
