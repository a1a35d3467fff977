"""Sparse variational dropout (Molchanov, Ashukha, Vetrov 2017): one learned noise level per weight.

Additive reparameterisation ``w = θ + σ·ε``: the layer stores θ (``weight``, the trained weights it
starts from) and ``log_sigma2``; ``log α = log σ² − log(θ² + 1e-8)`` clipped to ``[−clip, clip]``.

* training: local reparameterisation trick, ``μ = f(x, θ) + b``, ``s² = f(x², α·θ²)``,
  ``out = μ + s·ε``. The bias never enters the variance term (it would only add NaNs).
  α·θ² with the clipped α equals σ² wherever the clip is inactive, and where it is active it keeps the
  variance consistent with the clipped log α that the KL sees (as the authors' code does).
* eval: deterministic, ``f(x, θ·[log α ≤ threshold]) + b``.
* ``−KL ≈ k1·sigmoid(k2 + k3·log α) − 0.5·log1p(exp(−log α)) − k1``.

Training speed: written plainly, a step spends most of its time not in the two matrix products but in
the ~30 elementwise passes over the weights (log α for the variance, log α again for the KL, and their
backward). :class:`Kernels` lets the trainer swap in fused versions of exactly that math: one function
computes α·θ² *and* the summed KL from one read of θ and log σ², and one applies the output noise;
``torch.compile`` turns each into a single loop forward and backward. The trainer sets them for the
duration of fine-tuning only (``prunedrop.train``); by default (``_kernels`` unset) the layer runs the
plain eager code below, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import VariationalLayer, conv_kwargs, conv_transpose_kwargs, linear_kwargs, register_layer
from .configs import DEFAULT_THRESHOLDS, SparseVDConfig

K1, K2, K3 = 0.63576, 1.87320, 1.48695
DEFAULT_THRESHOLD = DEFAULT_THRESHOLDS["sparse_vd"]
DEFAULT_INIT_LOG_SIGMA2 = SparseVDConfig.init_log_sigma2
DEFAULT_LOG_ALPHA_CLIP = SparseVDConfig.log_alpha_clip


def kl_log_uniform(log_alpha: torch.Tensor) -> torch.Tensor:
    """KL(q ‖ log-uniform prior) per entry, Molchanov et al.'s approximation (eq. 14).

    ``softplus(−log α)`` is ``log1p(exp(−log α))`` without overflow for very negative log α.
    """
    neg_kl = K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1
    return -neg_kl


def clipped_log_alpha(weight: torch.Tensor, log_sigma2: torch.Tensor, clip: float) -> torch.Tensor:
    """Sparse VD's per-weight noise level ``log α = log σ² − log(θ² + 1e-8)``, clipped to ``[−clip, clip]``
    (every layer with per-weight noise: Linear/Conv, the LSTM/GRU weights, the attention projections)."""
    return torch.clamp(log_sigma2 - torch.log(weight * weight + 1e-8), -clip, clip)


def noise_terms(weight: torch.Tensor, log_sigma2: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(α·θ², ΣKL)`` of one layer from a single pass over θ and log σ²: the same math as the
    layer's :attr:`~SparseVD.log_alpha`, the variance term of its forward and :meth:`~SparseVD.kl`."""
    w2 = weight * weight
    log_alpha = torch.clamp(log_sigma2 - torch.log(w2 + 1e-8), -clip, clip)
    return torch.exp(log_alpha) * w2, kl_log_uniform(log_alpha).sum()


def apply_noise(mu: torch.Tensor, var: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``μ + sqrt(s² + 1e-8)·ε``: the local reparameterisation's sample, given the standard normal ε."""
    return mu + torch.sqrt(var + 1e-8) * eps


@dataclass(frozen=True)
class Kernels:
    """The elementwise work of a training step, as functions of flat (1-D) tensors.

    ``EAGER_KERNELS`` holds the plain functions above; the trainer may hand layers compiled versions
    (``torch.compile(noise_terms)``, …), which compute the same values with fused loops.
    """

    noise_terms: Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
    apply_noise: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


EAGER_KERNELS = Kernels(noise_terms, apply_noise)


# Fused kernels. Their forward computes what the backward needs (α, the sigmoid of the KL, the noise's
# derivative) and saves it, so that the backward is plain arithmetic with no transcendental function; left
# to itself, the compiler recomputes log/exp/sigmoid/softplus in the backward, and those, not memory traffic,
# are the cost (≈1-2 ns per element each on a CPU core). The forward also uses one transcendental fewer:
# softplus(−log α) = log1p(1/α) and sigmoid(k2 + k3·log α) = 1 / (1 + exp(−k2 − k3·log α)).

def _terms_forward(weight: torch.Tensor, log_sigma2: torch.Tensor, clip: float):
    w2 = weight * weight
    raw = log_sigma2 - torch.log(w2 + 1e-8)
    log_alpha = torch.clamp(raw, -clip, clip)
    alpha = torch.exp(log_alpha)
    sig = 1.0 / (1.0 + torch.exp(-K2 - K3 * log_alpha))
    kl = K1 - K1 * sig + 0.5 * torch.log1p(1.0 / alpha)
    # 1 where clamp passes the gradient (as torch.clamp does, bounds included), else 0; a float, since
    # storing a bool tensor from the fused loop costs more than the rest of it
    inside = torch.where((raw >= -clip) & (raw <= clip), 1.0, 0.0)
    return alpha * w2, kl.sum(), alpha, sig, inside


def _terms_backward(grad_var: torch.Tensor, grad_kl: torch.Tensor, weight: torch.Tensor, alpha: torch.Tensor,
                    sig: torch.Tensor, inside: torch.Tensor):
    w2 = weight * weight
    # d KL / d log α = −(k1·k3·σ(1−σ) + 0.5 / (1 + α)); d (α·θ²) / d log α = α·θ²
    d_log_alpha = grad_var * alpha * w2 - grad_kl * (K1 * K3 * sig * (1.0 - sig) + 0.5 / (1.0 + alpha))
    d_log_alpha = d_log_alpha * inside
    # log α = log σ² − log(θ² + 1e-8): d/dθ = −2θ / (θ² + 1e-8); α·θ² also depends on θ directly
    grad_weight = grad_var * alpha * 2.0 * weight - d_log_alpha * 2.0 * weight / (w2 + 1e-8)
    return grad_weight, d_log_alpha


def _noise_forward(mu: torch.Tensor, var: torch.Tensor, eps: torch.Tensor):
    std = torch.sqrt(var + 1e-8)
    return mu + std * eps, 0.5 * eps / std


def fused_kernels(compile_fn: Callable[[Callable[..., Any]], Callable[..., Any]] = lambda f: f) -> Kernels:
    """Kernels with hand-written backward passes; ``compile_fn`` (e.g. ``torch.compile``) fuses each
    forward and backward into one loop. With the identity they run eagerly (for tests)."""
    terms_fwd, terms_bwd, noise_fwd = compile_fn(_terms_forward), compile_fn(_terms_backward), \
        compile_fn(_noise_forward)

    class _Terms(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, weight: torch.Tensor, log_sigma2: torch.Tensor, clip: float) -> Any:
            var_weight, kl, alpha, sig, inside = terms_fwd(weight, log_sigma2, clip)
            ctx.save_for_backward(weight, alpha, sig, inside)
            return var_weight, kl

        @staticmethod
        def backward(ctx: Any, grad_var: torch.Tensor | None, grad_kl: torch.Tensor | None) -> Any:
            weight, alpha, sig, inside = ctx.saved_tensors
            grad_var = torch.zeros_like(weight) if grad_var is None else grad_var
            grad_kl = torch.zeros((), device=weight.device) if grad_kl is None else grad_kl
            grad_weight, grad_log_sigma2 = terms_bwd(grad_var.contiguous(), grad_kl, weight, alpha, sig, inside)
            return grad_weight, grad_log_sigma2, None

    class _Noise(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, mu: torch.Tensor, var: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
            out, d_std = noise_fwd(mu, var, eps)
            ctx.save_for_backward(d_std)
            return out

        @staticmethod
        def backward(ctx: Any, grad: torch.Tensor) -> Any:
            (d_std,) = ctx.saved_tensors
            return grad, grad * d_std, None

    return Kernels(_Terms.apply, _Noise.apply)  # type: ignore[arg-type]


class SparseVD(VariationalLayer):
    """Shared machinery of the per-weight sparse VD layers; subclasses say how to apply a weight."""

    weight: nn.Parameter
    bias: nn.Parameter | None
    log_sigma2: nn.Parameter
    _kernels: Kernels | None = None
    """Set by the trainer while it fine-tunes (see :func:`prunedrop.train.finetune`); None = plain eager code."""
    _step_kl: torch.Tensor | None = None
    """The KL that the last training forward computed alongside the variance (kernels path only); the
    trainer takes it instead of calling :meth:`kl` again, so log α is computed once per step."""

    def _init_noise(self, init_log_sigma2: float, log_alpha_clip: float, threshold: float) -> None:
        self.log_sigma2 = nn.Parameter(torch.full_like(self.weight, float(init_log_sigma2)))
        self.log_alpha_clip = float(log_alpha_clip)
        self.threshold = float(threshold)

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
    ) -> SparseVD:
        layer = cls._take_over(module)
        layer._init_noise(init_log_sigma2, log_alpha_clip, threshold)
        layer.train(module.training)
        return layer

    @property
    def log_alpha(self) -> torch.Tensor:
        return clipped_log_alpha(self.weight, self.log_sigma2, self.log_alpha_clip)

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
        if self._kernels is not None or torch.is_autocast_enabled(x.device.type):
            return self._forward_kernels(x, self._kernels or EAGER_KERNELS)
        log_alpha = self.log_alpha
        mu = self._apply_weight(x, self.weight, self.bias)
        var = self._apply_weight(x * x, torch.exp(log_alpha) * self.weight * self.weight, None)
        # 1e-8 keeps sqrt's gradient finite where an input patch is all zeros (padding, ReLU).
        return apply_noise(mu, var, torch.randn_like(mu))

    def _forward_kernels(self, x: torch.Tensor, kernels: Kernels) -> torch.Tensor:
        """The training forward through ``kernels``; log α, the KL and the noise stay in float32 under
        autocast (only the two products run in reduced precision). Draws its noise in the same order as
        the plain forward, so a fixed seed gives the same sample either way."""
        with torch.autocast(x.device.type, enabled=False):
            var_weight, kl = kernels.noise_terms(self.weight.reshape(-1), self.log_sigma2.reshape(-1),
                                                 self.log_alpha_clip)
        if self._kernels is not None:
            self._step_kl = kl
        mu = self._apply_weight(x, self.weight, self.bias)
        var = self._apply_weight(x * x, var_weight.view_as(self.weight), None)
        with torch.autocast(x.device.type, enabled=False):
            mu, var = mu.float(), var.float()
            eps = torch.randn_like(mu)
            return kernels.apply_noise(mu.reshape(-1), var.reshape(-1), eps.reshape(-1)).view_as(mu)

    def to_dense(self, threshold: float | None = None) -> nn.Module:
        with torch.no_grad():
            bias = None if self.bias is None else self.bias.clone()
            return self._dense_with(self.weight * self.keep_mask(threshold), bias)


class LinearSVD(SparseVD, nn.Linear):
    """``nn.Linear`` with sparse variational dropout on every weight."""

    @classmethod
    def _dense_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return linear_kwargs(module)

    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.linear(x, weight, bias)


class _ConvSVD(SparseVD):
    @classmethod
    def _dense_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return conv_kwargs(module)

    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # nn.ConvNd._conv_forward handles every padding_mode (zeros, reflect, replicate, circular).
        return self._conv_forward(x, weight, bias)  # type: ignore[attr-defined]


class Conv1dSVD(_ConvSVD, nn.Conv1d):
    """``nn.Conv1d`` with sparse variational dropout on every weight."""


class Conv2dSVD(_ConvSVD, nn.Conv2d):
    """``nn.Conv2d`` with sparse variational dropout on every weight."""


class Conv3dSVD(_ConvSVD, nn.Conv3d):
    """``nn.Conv3d`` with sparse variational dropout on every weight."""


class _ConvTransposeSVD(SparseVD):
    """Transposed convolutions (decoders, upsampling): the same noise per weight. Each output of a transposed
    convolution sums products of distinct weights, as a convolution's does, so the local reparameterisation's
    variance ``f(x², α·θ²)`` is exact here too. ``forward(x, output_size)`` takes the plain layer's optional output
    size, which decides its output padding for that call."""

    _spatial_dims: int
    _transpose: Callable[..., torch.Tensor]
    _call_output_padding: Any = None

    @classmethod
    def _dense_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return conv_transpose_kwargs(module)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        # the plain layer's rule (nn.ConvTransposeNd.forward), for the products of this call alone
        self._call_output_padding = self._output_padding(  # type: ignore[attr-defined]
            x, output_size, self.stride, self.padding, self.kernel_size, self._spatial_dims, self.dilation)
        try:
            return super().forward(x)
        finally:
            self._call_output_padding = None

    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        padding = self.output_padding if self._call_output_padding is None else self._call_output_padding
        return type(self)._transpose(x, weight, bias, self.stride, self.padding, padding, self.groups,
                                     self.dilation)


class ConvTranspose1dSVD(_ConvTransposeSVD, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` with sparse variational dropout on every weight."""

    _spatial_dims, _transpose = 1, F.conv_transpose1d


class ConvTranspose2dSVD(_ConvTransposeSVD, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with sparse variational dropout on every weight."""

    _spatial_dims, _transpose = 2, F.conv_transpose2d


class ConvTranspose3dSVD(_ConvTransposeSVD, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` with sparse variational dropout on every weight."""

    _spatial_dims, _transpose = 3, F.conv_transpose3d


for _variational in (LinearSVD, Conv1dSVD, Conv2dSVD, Conv3dSVD, ConvTranspose1dSVD, ConvTranspose2dSVD,
                     ConvTranspose3dSVD):
    register_layer("sparse_vd", _variational.dense_type, _variational)
