"""Group (structured) variational dropout: one learned Gaussian noise level per output unit.

Gaussian dropout with a learned rate (Kingma, Salimans, Welling 2015, "Variational Dropout and the Local
Reparameterization Trick"), one rate per unit instead of per weight so that whole units can be removed
(the group view of Louizos, Ullrich, Welling 2017, "Bayesian Compression for Deep Learning"), with the
log-uniform prior and the KL approximation of sparse VD (Molchanov, Ashukha, Vetrov 2017).

Every output unit (out feature / out channel) gets ``z ~ N(1, α)`` on its whole output,
``y = z ⊙ (f(x, W) + b)``, the same placement as the log-normal layers of :mod:`.lognormal`:

* training: one z per example and unit (shared over positions), ``y = (1 + √α·ε)·(f(x, W) + b)``. With the
  noise on the output this *is* the exact distribution ``N(μ, α·μ²)`` for ``μ = f(x, W) + b``, so unlike
  the per-weight layers no variance pass (local reparameterisation) is needed: one draw per unit is
  cheaper and exact. (Units that share a draw are correlated, as they must be: it is one z.)
* ``log α`` is the learned parameter (init −8), clipped to ``[−10, 10]`` where used;
* ``−KL ≈ k1·sigmoid(k2 + k3·log α) − 0.5·log1p(exp(−log α)) − k1`` per unit (:func:`kl_log_uniform`);
* eval: deterministic, ``z = 1`` where ``log α ≤ threshold`` (default 3), else 0; ``to_dense`` zeroes the
  pruned rows of W and entries of b, so pruned units output exact zeros.
"""

from __future__ import annotations

import torch
from torch import nn

from ._units import ConvTransposeUnits, ConvUnits, LinearUnits, OutputUnitNoise
from .base import register_layer
from .configs import DEFAULT_THRESHOLDS, GroupVDConfig
from .sparse_vd import DEFAULT_LOG_ALPHA_CLIP, kl_log_uniform

DEFAULT_INIT_LOG_ALPHA = GroupVDConfig.init_log_alpha
#: prune a unit where log α exceeds this
DEFAULT_THRESHOLD = DEFAULT_THRESHOLDS["group_vd"]


class GroupLogAlpha:
    """One learned ``log α`` per group - an output unit, an attention head, a vocabulary row - with the
    log-uniform prior: the clipped log α, its KL, the keep mask and the noise parameter, shared by every
    group-noise layer (:class:`GroupVD`, :class:`~prunedrop.layers.attention.MultiheadAttentionGroupVD`,
    :class:`~prunedrop.layers.embedding.EmbeddingSVD`). List it before the layer's other bases."""

    log_alpha_param: nn.Parameter
    log_alpha_clip: float
    threshold: float

    def _init_group_noise(self, groups: int, like: torch.Tensor, *, init_log_alpha: float, log_alpha_clip: float,
                          threshold: float) -> None:
        """``groups`` log α parameters on the device and in the dtype of ``like`` (the layer's weight)."""
        self.log_alpha_param = nn.Parameter(torch.full((groups,), float(init_log_alpha), dtype=like.dtype,
                                                       device=like.device))
        self.log_alpha_clip = float(log_alpha_clip)
        self.threshold = float(threshold)

    @property
    def log_alpha(self) -> torch.Tensor:
        """Clipped log α per group (what the KL, the noise and the mask see)."""
        return torch.clamp(self.log_alpha_param, -self.log_alpha_clip, self.log_alpha_clip)

    def kl(self) -> torch.Tensor:
        return kl_log_uniform(self.log_alpha).sum()

    def keep_mask(self, threshold: float | None = None) -> torch.Tensor:
        """Per group: log α ≤ threshold (shape ``[groups]``)."""
        t = self.threshold if threshold is None else threshold
        return self.log_alpha <= t

    def noise_parameters(self) -> list[nn.Parameter]:
        return [self.log_alpha_param]


class GroupVD(GroupLogAlpha, OutputUnitNoise):
    """Gaussian noise per unit; ``log_alpha_param`` has one entry per unit."""

    caches_eval_multiplier = True

    unit_noise_names = ("log_alpha_param",)

    @property
    def log_alpha(self) -> torch.Tensor:
        """Clipped log α per unit (per slot's units where they are tied in slots: :func:`~._units.tie_slots`)."""
        return self._per_unit_values(GroupLogAlpha.log_alpha.fget(self))  # type: ignore[attr-defined]

    @classmethod
    def from_dense(
        cls,
        module: nn.Module,
        *,
        init_log_alpha: float = DEFAULT_INIT_LOG_ALPHA,
        log_alpha_clip: float = DEFAULT_LOG_ALPHA_CLIP,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> GroupVD:
        layer = cls._take_over(module)
        layer._init_group_noise(layer.num_units, layer.weight, init_log_alpha=init_log_alpha,
                                log_alpha_clip=log_alpha_clip, threshold=threshold)
        layer.train(module.training)
        return layer

    def _eval_multiplier(self, threshold: float | None) -> torch.Tensor:
        return self.keep_mask(threshold).to(self.weight.dtype)

    def _sample_multiplier(self, shape: list[int], unit_axis: int) -> torch.Tensor:
        per_unit = [1] * len(shape)
        per_unit[unit_axis] = -1
        # exp(log α / 2) rather than sqrt(exp(log α)): same value, and no sqrt gradient blow-up near 0.
        std = torch.exp(0.5 * self.log_alpha).reshape(per_unit)
        return 1 + std * torch.randn(shape, dtype=std.dtype, device=std.device)


class LinearGroupVD(GroupVD, LinearUnits, nn.Linear):
    """``nn.Linear`` with Gaussian multiplicative noise on every out feature (group VD)."""


class Conv1dGroupVD(GroupVD, ConvUnits, nn.Conv1d):
    """``nn.Conv1d`` with Gaussian multiplicative noise on every out channel (group VD)."""


class Conv2dGroupVD(GroupVD, ConvUnits, nn.Conv2d):
    """``nn.Conv2d`` with Gaussian multiplicative noise on every out channel (group VD)."""


class Conv3dGroupVD(GroupVD, ConvUnits, nn.Conv3d):
    """``nn.Conv3d`` with Gaussian multiplicative noise on every out channel (group VD)."""


class ConvTranspose1dGroupVD(GroupVD, ConvTransposeUnits, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` (ungrouped) with Gaussian multiplicative noise on every out channel (group VD)."""


class ConvTranspose2dGroupVD(GroupVD, ConvTransposeUnits, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (ungrouped) with Gaussian multiplicative noise on every out channel (group VD)."""


class ConvTranspose3dGroupVD(GroupVD, ConvTransposeUnits, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` (ungrouped) with Gaussian multiplicative noise on every out channel (group VD)."""


for _variational in (LinearGroupVD, Conv1dGroupVD, Conv2dGroupVD, Conv3dGroupVD, ConvTranspose1dGroupVD,
                     ConvTranspose2dGroupVD, ConvTranspose3dGroupVD):
    register_layer("group_vd", _variational.dense_type, _variational)
