"""Multiplicative Gaussian noise: Gaussian dropout, fast dropout and variational dropout with learned rates.

``p`` is the drop probability of the Bernoulli dropout being matched; the Gaussian noise with the same
mean and variance as an inverted Bernoulli(1 - p) mask is N(1, alpha) with ``alpha = p / (1 - p)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._common import DropoutModule, check_probability, init_linear_

__all__ = [
    "FastDropoutLinear",
    "GaussianDropout",
    "VariationalDropoutLinear",
    "gaussian_dropout",
    "variational_dropout_kl",
]

# Kingma, Salimans & Welling (2015): polynomial fit of -KL(q(w) || log-uniform prior) for alpha <= 1
_C1, _C2, _C3 = 1.16145124, -1.50204118, 0.58629921


def _alpha(p: float) -> float:
    return p / (1.0 - p)


def gaussian_dropout(x: torch.Tensor, p: float = 0.5, training: bool = True) -> torch.Tensor:
    """Gaussian dropout (Srivastava et al. 2014, section 10; Wang & Manning 2013).

    Training multiplies each entry by independent noise ``xi ~ N(1, p / (1 - p))``, which has the
    mean and variance of an inverted Bernoulli(1 - p) mask. The noise has mean 1, so the expected
    output already equals the input and nothing changes at test time: eval is the identity.
    """
    p = check_probability(p)
    if not training or p == 0.0:
        return x
    return x * (1.0 + math.sqrt(_alpha(p)) * torch.randn_like(x))


class GaussianDropout(DropoutModule):
    """Multiplicative N(1, p / (1 - p)) noise on every unit; the identity in eval mode. See :func:`gaussian_dropout`."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = check_probability(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gaussian_dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FastDropoutLinear(DropoutModule):
    """A Linear layer with fast dropout on its inputs (Wang & Manning 2013, "Fast dropout training").

    Dropping the inputs of a unit makes its pre-activation a sum of many independent terms, which fast
    dropout replaces by a Gaussian with the same mean and variance and samples directly, one value per
    unit and example, instead of sampling one mask entry per input. With inverted dropout of rate ``p``
    (equivalently Gaussian dropout with ``alpha = p / (1 - p)``) on the inputs ``x``:

        u ~ N(W x + b, alpha * (W * W)(x * x)).

    The mean is the plain layer's output, so eval mode is the deterministic ``W x + b``.
    """

    def __init__(self, in_features: int, out_features: int, p: float = 0.5, bias: bool = True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.p = check_probability(p)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        init_linear_(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = F.linear(x, self.weight, self.bias)
        if not self.training or self.p == 0.0:
            return mean
        var = _alpha(self.p) * F.linear(x * x, self.weight * self.weight)
        # the clamp keeps sqrt's gradient finite for all-zero inputs
        return mean + var.clamp_min(1e-12).sqrt() * torch.randn_like(mean)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, p={self.p}, "
            f"bias={self.bias is not None}"
        )


def variational_dropout_kl(log_alpha: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(q || log-uniform prior) of variational dropout (Kingma, Salimans, Welling 2015).

    The paper approximates ``-KL ~ const + 0.5 log(alpha) + c1 alpha + c2 alpha^2 + c3 alpha^3`` for
    ``alpha <= 1``. The prior is improper, so the constant is free; it is chosen here so that the KL is
    0 at ``alpha = 1`` (dropout rate 1/2, the largest the approximation covers) and positive below.
    """
    alpha = log_alpha.exp()
    neg_kl = 0.5 * log_alpha + _C1 * alpha + _C2 * alpha**2 + _C3 * alpha**3
    return (_C1 + _C2 + _C3) - neg_kl


class VariationalDropoutLinear(DropoutModule):
    """A Linear layer with variational dropout (Kingma, Salimans, Welling 2015), learning its noise level.

    Gaussian dropout whose variance ``alpha`` is a parameter, trained with the rest of the network
    against the ELBO ``loss = mean(CE) + kl() / N`` (N = training-set size), where :meth:`kl` is the
    paper's approximation (:func:`variational_dropout_kl`) of the KL to the log-uniform prior, the prior
    for which Gaussian dropout is exact variational inference.

    ``mode="weight"`` (the paper's independent weight noise, variant B): ``w_ij ~ N(theta_ij,
    alpha_ij theta_ij^2)``, trained with the local reparameterisation trick: the pre-activations are
    sampled directly, ``u ~ N(x theta^T + b, (x * x)(alpha * theta * theta)^T)``, one independent draw
    per example and unit, which gives lower-variance gradients than sampling weights.

    ``mode="unit"`` (correlated weight noise, variant A): one ``alpha_i`` per input unit, i.e. Gaussian
    dropout ``x_i * xi_i`` with ``xi_i ~ N(1, alpha_i)`` on the inputs, already sampled per example
    and so already local; :meth:`kl` then has one term per input unit.

    As in the paper, ``alpha`` is capped at ``exp(max_log_alpha) = 1`` by default (dropout rate 1/2),
    where the KL approximation is valid. Eval mode is the deterministic ``x theta^T + b``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        mode: Literal["weight", "unit"] = "weight",
        init_p: float = 0.5,
        max_log_alpha: float = 0.0,
    ):
        super().__init__()
        if mode not in ("weight", "unit"):
            raise ValueError(f"mode must be 'weight' or 'unit', got {mode!r}")
        init_p = check_probability(init_p)
        if init_p == 0.0:
            raise ValueError("init_p must be above 0: log alpha is -inf at p = 0")
        self.in_features = in_features
        self.out_features = out_features
        self.mode = mode
        self.max_log_alpha = float(max_log_alpha)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        init_linear_(self.weight, self.bias)
        shape = (out_features, in_features) if mode == "weight" else (in_features,)
        self.log_alpha = nn.Parameter(torch.full(shape, math.log(_alpha(init_p))))

    def clipped_log_alpha(self) -> torch.Tensor:
        """log alpha capped at ``max_log_alpha``, as used by the forward pass and the KL."""
        return self.log_alpha.clamp(max=self.max_log_alpha)

    @property
    def dropout_rate(self) -> torch.Tensor:
        """The Bernoulli dropout rate with the same noise variance, ``alpha / (1 + alpha)``."""
        return torch.sigmoid(self.clipped_log_alpha()).detach()

    def kl(self) -> torch.Tensor:
        """Sum over the noise variables (weights or input units) of the approximate KL to the prior."""
        return variational_dropout_kl(self.clipped_log_alpha()).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.weight, self.bias)
        alpha = self.clipped_log_alpha().exp()
        if self.mode == "unit":
            noisy = x * (1.0 + alpha.sqrt() * torch.randn_like(x))
            return F.linear(noisy, self.weight, self.bias)
        mean = F.linear(x, self.weight, self.bias)
        var = F.linear(x * x, alpha * self.weight * self.weight)
        return mean + var.clamp_min(1e-12).sqrt() * torch.randn_like(mean)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, mode={self.mode!r}"
        )
