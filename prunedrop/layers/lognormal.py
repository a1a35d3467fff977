"""Structured Bayesian pruning (Neklyudov, Molchanov, Ashukha, Vetrov 2017): log-normal noise per unit.

"Structured Bayesian Pruning via Log-Normal Multiplicative Noise", NeurIPS 2017, arXiv:1705.07283.

Every output unit (out feature / out channel) gets a multiplicative noise θ on its whole output,
``y = θ ⊙ (f(x, W) + b)``, so a pruned unit outputs exact zeros and its row of W, its bias and everything
it feeds can be removed. ``log θ ~ N(μ, σ²)`` truncated to ``[a, b] = [−20, 0]``; the prior is log-uniform
on the same interval. With ``α = (a − μ)/σ``, ``β = (b − μ)/σ``, ``Z = Φ(β) − Φ(α)``:

* ``KL = −log σ − log Z − (α·φ(α) − β·φ(β))/(2Z) + log(b − a) − ½·log(2πe)``;
* ``E[θ] = exp(μ + σ²/2)·(Φ(σ − α) − Φ(σ − β))/Z``, ``E[θ²] = exp(2μ + 2σ²)·(Φ(2σ − α) − Φ(2σ − β))/Z``;
* ``SNR = E[θ]/sqrt(E[θ²] − E[θ]²) = 1/sqrt(expm1(log E[θ²] − 2·log E[θ]))``;
* training: inverse-CDF sampling, ``γ ~ U(Φ(α), Φ(β))`` clipped to ``[1e-5, 1 − 1e-5]``,
  ``log θ = μ + σ·Φ⁻¹(γ)`` clamped to ``[a, b]``; one θ per example and unit (shared over positions);
* eval: deterministic, ``θ = E[θ]`` where ``SNR > threshold`` (default 1), else 0; ``to_dense`` folds that
  multiplier ``m`` into the plain layer, ``W' = m·W`` (rows), ``b' = m·b``.

μ and log σ start at 0 and −5 and are clamped to ``[−20, 5]`` where used.

Numerics. Written literally in float32 the formulas collapse: once μ drifts a little above b = 0 with
σ = e⁻⁵, ``Φ(β) − Φ(α)`` underflows to 0 and the eval multiplier becomes 0 (DESIGN.md). Taking logs with
``log_ndtr`` fixes that case but not the whole clamped box: ``log Φ(β)`` is about ``−β²/2`` and β reaches
``−2·10⁹`` (μ = 5, σ = e⁻²⁰), so ``log E[θ] = μ + σ²/2 + log Φ(β − σ) − log Φ(β)`` and the KL's
``−log Z − T`` are differences of numbers near 10¹⁸ whose true values are O(1). So every
``log(Φ(h) − Φ(l))`` is split as ``−c²/2 + r`` with c the point of ``[l, h]`` nearest 0 and
``r`` = O(1) computed from Mills' ratio ``M(x) = (1 − Φ(x))/φ(x) = √(π/2)·erfcx(x/√2)`` (this is how
``log_ndtr`` itself works in the tails), and the quadratic parts ``c²/2`` of the different terms are
cancelled algebraically before any rounding; see :func:`_log_moments` and :func:`_kl`.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from ._units import ConvTransposeUnits, ConvUnits, LinearUnits, OutputUnitNoise, TiedDraw, tie_units
from .base import register_layer
from .configs import DEFAULT_THRESHOLDS, SBPConfig

# TiedDraw and tie_units live in ._units (shared with group VD); they stay importable here, where tests and
# pickles of tied SBP layers (prunedrop.layers.lognormal.TiedDraw) name them.
__all__ = [
    "DEFAULT_INIT_LOG_SIGMA",
    "DEFAULT_INIT_MU",
    "DEFAULT_THRESHOLD",
    "LOG_THETA_MAX",
    "LOG_THETA_MIN",
    "PARAM_MAX",
    "PARAM_MIN",
    "SAMPLE_EPS",
    "Conv1dLogNormal",
    "Conv2dLogNormal",
    "Conv3dLogNormal",
    "LinearLogNormal",
    "LogNormal",
    "TiedDraw",
    "tie_units",
    "total_kl",
]

#: the truncation interval [a, b] of log θ (and the support of the log-uniform prior)
LOG_THETA_MIN, LOG_THETA_MAX = -20.0, 0.0
#: μ and log σ are clamped to this range where used
PARAM_MIN, PARAM_MAX = -20.0, 5.0
DEFAULT_INIT_MU = SBPConfig.init_mu
DEFAULT_INIT_LOG_SIGMA = SBPConfig.init_log_sigma
#: keep a unit where SNR > threshold
DEFAULT_THRESHOLD = DEFAULT_THRESHOLDS["sbp"]
#: the inverse-CDF sampler clips γ to [eps, 1 − eps] (as in the paper's code)
SAMPLE_EPS = 1e-5

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_HALF_PI = math.sqrt(0.5 * math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# Beyond this, 1 − x·M(x) ≈ 1/x² is taken from the asymptotic series instead of a float32 cancellation;
# at x = 10 the series' first omitted term is 2·10⁻⁸ of the sum and the direct form loses about 10⁻⁵.
_SERIES_FROM = 10.0


def _mills(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(M(x), N(x))`` for ``x ≥ 0``: Mills' ratio ``M = (1 − Φ)/φ`` and ``N = 1 − x·M(x) = −M'(x)``.

    For large x both come from ``x·M(x) ~ 1 − 1/x² + 3/x⁴ − 15/x⁶ …``, which also gives accurate
    gradients where erfcx's own derivative ``2z·erfcx(z) − 2/√π`` cancels to noise.
    """
    large = x > _SERIES_FROM
    # Each branch sees only inputs where it is valid, so the unused one never sends NaN through where().
    x_series = torch.where(large, x, _SERIES_FROM)
    x_direct = torch.where(large, _SERIES_FROM, x)
    y = 1.0 / (x_series * x_series)
    n_series = y * (1 - y * (3 - y * (15 - y * (105 - y * (945 - y * (10395 - y * (135135 - y * 2027025)))))))
    m_direct = _SQRT_HALF_PI * torch.special.erfcx(x_direct * math.sqrt(0.5))
    m = torch.where(large, (1 - n_series) / x_series, m_direct)
    n = torch.where(large, n_series, 1 - x_direct * m_direct)
    return m, n


def _tail_split(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether ``[lo, hi]`` lies on one side of 0, and its distance ``t ≥ 0`` from 0 when it does."""
    tail = (hi <= 0) | (lo >= 0)
    return tail, torch.maximum(-hi, lo).clamp_min(0.0)


def _tail_mass(t: torch.Tensor, width: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """For an interval at distance t from 0 with the given width: ``B = (Q(t) − Q(t + w))/φ(t)``.

    ``Q = 1 − Φ``; by symmetry the same B serves ``[−t − w, −t]``. ``ρ = φ(t + w)/φ(t)`` is formed from
    the factored exponent, so nothing of size t² is ever subtracted. Returns ``(B, M(t), N(t), M(t + w),
    N(t + w), ρ)``.
    """
    m_near, n_near = _mills(t)
    m_far, n_far = _mills(t + width)
    rho = torch.exp(-0.5 * width * (2 * t + width))
    return m_near - rho * m_far, m_near, n_near, m_far, n_far, rho


def _reduced_log_mass(lo: torch.Tensor, hi: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """``r`` in ``log(Φ(hi) − Φ(lo)) = −c²/2 + r``, c the point of ``[lo, hi]`` nearest 0 (r is O(1)).

    ``width = hi − lo`` is passed separately because it is known more accurately than that difference.
    """
    tail, t = _tail_split(lo, hi)
    r_tail = torch.log(_tail_mass(t, width)[0]) - _HALF_LOG_2PI
    # Across 0 the mass is at least Φ(w/2) − Φ(−w/2) (≥ 0.05 for σ ≤ e⁵), so the plain difference is fine.
    mass = torch.special.ndtr(torch.where(tail, 1.0, hi)) - torch.special.ndtr(torch.where(tail, -1.0, lo))
    return torch.where(tail, r_tail, torch.log(mass))


def _log_moments(mu: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log E[θ], D)`` with ``D = log E[θ²] − 2·log E[θ] = log(1 + Var θ / E[θ]²)``.

    ``log E[θᵏ] = kμ + k²σ²/2 + log Z_k − log Z_0`` with ``Z_k = Φ(β − kσ) − Φ(α − kσ)``. Writing
    ``log Z_k = −c_k²/2 + r_k`` and ``c_k = (p_k − μ − kσ²)/σ``, ``p_k = clamp(μ + kσ², a, b)``, the
    quadratic parts add up exactly to ``kμ + Q_k`` with ``Q_k = k·e_k + (e_0 − e_k)(e_0 + e_k)/(2σ²)``,
    ``e_k = p_k − μ``: for μ above b all ``e_k = b − μ`` and ``log E[θ] = b + r_1 − r_0`` with no large
    terms left; for μ inside ``[a, b]`` and small σ, ``Q_1 = σ²/2`` and the r's vanish.
    """
    a, b = LOG_THETA_MIN, LOG_THETA_MAX
    alpha, beta, width = (a - mu) / sigma, (b - mu) / sigma, (b - a) / sigma
    var = sigma * sigma
    low, high = a - mu, b - mu
    e0, e1, e2 = (torch.clamp(k * var, min=low, max=high) for k in (0.0, 1.0, 2.0))
    q1 = e1 + (e0 - e1) * (e0 + e1) / (2 * var)
    q2 = 2 * e2 + (e0 - e2) * (e0 + e2) / (2 * var)
    r0, r1, r2 = (_reduced_log_mass(alpha - k * sigma, beta - k * sigma, width) for k in (0.0, 1.0, 2.0))
    # θ ∈ [e^a, e^b], so its mean is too; the clamp only removes rounding beyond the ends.
    log_mean = torch.clamp(mu + q1 + r1 - r0, a, b)
    return log_mean, (q2 - 2 * q1) + (r2 - 2 * r1 + r0)


def _kl(mu: torch.Tensor, log_sigma: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(truncated log-normal ‖ log-uniform on [a, b]) per unit: ``log(b − a) − entropy``.

    ``−log Z − T`` with ``T = (αφ(α) − βφ(β))/(2Z)``: in a tail (interval at distance t from 0, width w)
    ``−log Z = t²/2 + ½log 2π − log B`` and ``T ≈ t²/2`` too, so their difference is taken exactly:
    ``t²/2 − T = (−t·N(t) + ρ·((t + w)·N(t + w) + w(2t + w)·M(t + w)))/(2B)``, all terms O(1).
    """
    a, b = LOG_THETA_MIN, LOG_THETA_MAX
    alpha, beta, width = (a - mu) / sigma, (b - mu) / sigma, (b - a) / sigma
    tail, t = _tail_split(alpha, beta)
    mass, m_near, n_near, m_far, n_far, rho = _tail_mass(t, width)
    far = t + width
    tail_part = _HALF_LOG_2PI - torch.log(mass) + (
        -t * n_near + rho * (far * n_far + width * (2 * t + width) * m_far)
    ) / (2 * mass)
    lo, hi = torch.where(tail, -1.0, alpha), torch.where(tail, 1.0, beta)
    z = torch.special.ndtr(hi) - torch.special.ndtr(lo)
    pdf_lo, pdf_hi = _INV_SQRT_2PI * torch.exp(-0.5 * lo * lo), _INV_SQRT_2PI * torch.exp(-0.5 * hi * hi)
    mid_part = -torch.log(z) - (lo * pdf_lo - hi * pdf_hi) / (2 * z)
    const = math.log(b - a) - 0.5 * math.log(2 * math.pi * math.e)
    return const - log_sigma + torch.where(tail, tail_part, mid_part)


class LogNormalNoise:
    """Truncated log-normal noise per group - an output unit, an attention head - with the log-uniform prior: its
    clamped parameters, KL, moments, SNR, keep mask and draws, shared by :class:`LogNormal` and
    :class:`~prunedrop.layers.attention.MultiheadAttentionSBP` (as :class:`~prunedrop.layers.group_vd.GroupLogAlpha`
    is by the Gaussian family). List it before the layer's other bases."""

    mu: nn.Parameter
    log_sigma: nn.Parameter
    threshold: float

    def _init_lognormal(self, groups: int, like: torch.Tensor, *, init_mu: float, init_log_sigma: float,
                        threshold: float) -> None:
        """``groups`` entries of μ and log σ on the device and in the dtype of ``like`` (the layer's weight)."""
        self.mu = nn.Parameter(torch.full((groups,), float(init_mu), dtype=like.dtype, device=like.device))
        self.log_sigma = nn.Parameter(torch.full((groups,), float(init_log_sigma), dtype=like.dtype,
                                                 device=like.device))
        self.threshold = float(threshold)

    def _raw_noise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and log σ per group, as stored (:class:`LogNormal` repeats tied slots over their units)."""
        return self.mu, self.log_sigma

    def _noise(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clamped (μ, log σ, σ) per group, in at least float32: half precision cannot hold these statistics."""
        mu, log_sigma = self._raw_noise()
        dtype = torch.promote_types(mu.dtype, torch.float32)
        mu = mu.to(dtype).clamp(PARAM_MIN, PARAM_MAX)
        log_sigma = log_sigma.to(dtype).clamp(PARAM_MIN, PARAM_MAX)
        return mu, log_sigma, torch.exp(log_sigma)

    def kl(self) -> torch.Tensor:
        return _kl(*self._noise()).sum()

    def log_expected_theta(self) -> torch.Tensor:
        """``log E[θ]`` per group."""
        mu, _, sigma = self._noise()
        return _log_moments(mu, sigma)[0]

    def expected_theta(self) -> torch.Tensor:
        """``E[θ]`` per group (before pruning), in ``[e^a, e^b]``."""
        return torch.exp(self.log_expected_theta())

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio ``E[θ]/std(θ)`` per group.

        Where θ is all but deterministic, ``D = log(1 + Var/E²)`` drowns in rounding (it can even come out
        ≤ 0); flooring it at ``tiny^(1/3)`` keeps the SNR and its gradient finite (SNR ≤ 2·10⁶ in float32),
        far above any sensible threshold.
        """
        mu, _, sigma = self._noise()
        d = _log_moments(mu, sigma)[1]
        floor = torch.finfo(d.dtype).tiny ** (1.0 / 3.0)
        return torch.rsqrt(torch.expm1(d.clamp_min(floor)))

    def keep_mask(self, threshold: float | None = None) -> torch.Tensor:
        """Per group: SNR > threshold."""
        t = self.threshold if threshold is None else threshold
        return self.snr() > t

    def noise_parameters(self) -> list[nn.Parameter]:
        return [self.mu, self.log_sigma]

    def _eval_multiplier(self, threshold: float | None) -> torch.Tensor:
        """What multiplies each group's output in eval mode: E[θ] where kept, else 0."""
        return torch.where(self.keep_mask(threshold), self.expected_theta(), 0.0)

    def _sample_multiplier(self, shape: list[int], unit_axis: int) -> torch.Tensor:
        """θ drawn by inverse-CDF sampling, one per element of ``shape`` (the groups along ``unit_axis``)."""
        mu, _, sigma = self._noise()
        a, b = LOG_THETA_MIN, LOG_THETA_MAX
        per_unit = [1] * len(shape)
        per_unit[unit_axis] = -1
        mu, sigma = mu.reshape(per_unit), sigma.reshape(per_unit)
        lo = torch.special.ndtr((a - mu) / sigma)
        hi = torch.special.ndtr((b - mu) / sigma)
        u = torch.rand(shape, dtype=mu.dtype, device=mu.device)
        gamma = (lo + u * (hi - lo)).clamp(SAMPLE_EPS, 1 - SAMPLE_EPS)
        # The γ clip can put μ + σ·Φ⁻¹(γ) outside [a, b] when the interval is deep in a tail of N(μ, σ²).
        log_theta = (mu + sigma * torch.special.ndtri(gamma)).clamp(a, b)
        return torch.exp(log_theta)


class LogNormal(LogNormalNoise, OutputUnitNoise):
    """Log-normal noise per unit (the SBP layers); ``mu`` and ``log_sigma`` have one entry per unit."""

    caches_eval_multiplier = True
    unit_noise_names = ("mu", "log_sigma")

    @classmethod
    def from_dense(
        cls,
        module: nn.Module,
        *,
        init_mu: float = DEFAULT_INIT_MU,
        init_log_sigma: float = DEFAULT_INIT_LOG_SIGMA,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> LogNormal:
        layer = cls._take_over(module)
        layer._init_lognormal(layer.num_units, layer.weight, init_mu=init_mu, init_log_sigma=init_log_sigma,
                              threshold=threshold)
        layer.train(module.training)
        return layer

    def _raw_noise(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._per_unit_values(self.mu), self._per_unit_values(self.log_sigma)


def total_kl(layers: list[LogNormal], factors: list[float]) -> torch.Tensor:
    """``Σ factor·KL`` over several log-normal layers, computed in one pass over all their units.

    The same value as ``Σ factor·layer.kl()``; one call instead of one per layer, because :func:`_kl` is
    a few hundred small elementwise operations whatever the number of units, and on a GPU their launches, not the
    arithmetic, are the cost: a ResNet-20 with 21 SBP layers spent most of each training step on them.
    """
    noise = [layer._noise() for layer in layers]
    dtype = functools.reduce(torch.promote_types, (n[0].dtype for n in noise))
    mu, log_sigma, sigma = (torch.cat([n[i].to(dtype) for n in noise]) for i in range(3))
    weights = torch.cat([torch.full_like(n[0], float(f), dtype=dtype) for n, f in zip(noise, factors, strict=True)])
    return (_kl(mu, log_sigma, sigma) * weights).sum()


class LinearLogNormal(LogNormal, LinearUnits, nn.Linear):
    """``nn.Linear`` with log-normal multiplicative noise on every out feature (SBP)."""


class Conv1dLogNormal(LogNormal, ConvUnits, nn.Conv1d):
    """``nn.Conv1d`` with log-normal multiplicative noise on every out channel (SBP)."""


class Conv2dLogNormal(LogNormal, ConvUnits, nn.Conv2d):
    """``nn.Conv2d`` with log-normal multiplicative noise on every out channel (SBP)."""


class Conv3dLogNormal(LogNormal, ConvUnits, nn.Conv3d):
    """``nn.Conv3d`` with log-normal multiplicative noise on every out channel (SBP)."""


class ConvTranspose1dLogNormal(LogNormal, ConvTransposeUnits, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` (ungrouped) with log-normal multiplicative noise on every out channel (SBP)."""


class ConvTranspose2dLogNormal(LogNormal, ConvTransposeUnits, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (ungrouped) with log-normal multiplicative noise on every out channel (SBP)."""


class ConvTranspose3dLogNormal(LogNormal, ConvTransposeUnits, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` (ungrouped) with log-normal multiplicative noise on every out channel (SBP)."""


for _variational in (LinearLogNormal, Conv1dLogNormal, Conv2dLogNormal, Conv3dLogNormal, ConvTranspose1dLogNormal,
                     ConvTranspose2dLogNormal, ConvTranspose3dLogNormal):
    register_layer("sbp", _variational.dense_type, _variational)
