"""Bernoulli dropout on units, on weights (DropConnect) and with learned per-unit rates (standout).

Throughout :mod:`prunedrop.dropout`, ``p`` is the probability of *dropping* a unit or weight, as in
:class:`torch.nn.Dropout`; ``q = 1 - p`` is the keep probability the papers usually write as ``p``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._common import DropoutModule, bernoulli_keep, check_probability, init_linear_

__all__ = ["Dropout", "DropConnectLinear", "StandoutLinear", "dropout"]


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inverted: bool = False) -> torch.Tensor:
    """Standard dropout (Hinton et al. 2012, "Improving neural networks by preventing co-adaptation").

    Training multiplies every entry by an independent Bernoulli(1 - p) mask. At test time the paper
    keeps every unit and multiplies by the keep probability 1 - p, so each unit's test output is its
    expected training output. With ``inverted=True`` the training output is divided by 1 - p instead
    and the test-time forward is the identity (the same expectation, moved to training time).
    """
    p = check_probability(p, allow_one=not inverted)
    keep = 1.0 - p
    if not training:
        return x if inverted else x * keep
    mask = bernoulli_keep(x.shape, keep, x)
    return x * mask / keep if inverted else x * mask


class Dropout(DropoutModule):
    """Standard dropout on units (Hinton et al. 2012); see :func:`dropout`.

    The default, ``inverted=False``, is the paper's rule: train with a {0, 1} mask, test with the
    activations scaled by the keep probability 1 - p. ``inverted=True`` is :class:`torch.nn.Dropout`.
    """

    def __init__(self, p: float = 0.5, inverted: bool = False):
        super().__init__()
        self.p = check_probability(p, allow_one=not inverted)
        self.inverted = inverted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.inverted)

    def extra_repr(self) -> str:
        return f"p={self.p}, inverted={self.inverted}"


class DropConnectLinear(DropoutModule):
    """A Linear layer with DropConnect (Wan, Zeiler, Zhang, LeCun, Fergus 2013), nonlinearity included.

    Training: every weight and every bias is kept with probability q = 1 - p, with no rescaling,
    and ``per_example=True`` (the paper) draws a separate mask for each example of the batch:
    ``r = a((M * W) v + m * b)``.

    Inference (the paper's Algorithm 2): the pre-activation ``u`` of each unit is a sum of many
    independent masked terms, so it is moment-matched by a Gaussian,
    ``u ~ N(q (W v + b), q (1 - q) ((W * W)(v * v) + b * b))``; ``inference="sample"`` draws
    ``samples`` values of ``u``, passes each through the nonlinearity ``a`` and averages, while
    ``inference="mean"`` returns ``a(q (W v + b))``. The nonlinearity lives inside the layer because
    the sampled inference averages *after* it; with no nonlinearity the two rules agree on average.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        p: float = 0.5,
        bias: bool = True,
        activation: nn.Module | None = None,
        inference: Literal["sample", "mean"] = "sample",
        samples: int = 100,
        per_example: bool = True,
    ):
        super().__init__()
        if inference not in ("sample", "mean"):
            raise ValueError(f"inference must be 'sample' or 'mean', got {inference!r}")
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        self.in_features = in_features
        self.out_features = out_features
        self.p = check_probability(p)
        self.activation = activation if activation is not None else nn.Identity()
        self.inference = inference
        self.samples = samples
        self.per_example = per_example
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        init_linear_(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        v = x.reshape(-1, self.in_features)
        out = self.activation(self._train_preactivation(v)) if self.training else self._inference(v)
        return out.reshape(*lead, self.out_features)

    def _train_preactivation(self, v: torch.Tensor) -> torch.Tensor:
        keep = 1.0 - self.p
        if self.per_example:
            n = v.shape[0]
            mask = bernoulli_keep((n, self.out_features, self.in_features), keep, v)
            u = torch.einsum("noi,ni->no", mask * self.weight, v)
            if self.bias is not None:
                u = u + bernoulli_keep((n, self.out_features), keep, v) * self.bias
            return u
        mask = bernoulli_keep(self.weight.shape, keep, v)
        bias = None if self.bias is None else bernoulli_keep(self.bias.shape, keep, v) * self.bias
        return F.linear(v, mask * self.weight, bias)

    def _inference(self, v: torch.Tensor) -> torch.Tensor:
        keep = 1.0 - self.p
        mean = keep * F.linear(v, self.weight, self.bias)
        if self.inference == "mean" or self.p == 0.0:
            return self.activation(mean)
        var = F.linear(v * v, self.weight * self.weight)
        if self.bias is not None:
            var = var + self.bias * self.bias
        std = (keep * (1.0 - keep) * var).clamp_min(1e-12).sqrt()
        u = mean + std * torch.randn((self.samples, *mean.shape), device=v.device, dtype=v.dtype)
        return self.activation(u).mean(dim=0)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, p={self.p}, "
            f"bias={self.bias is not None}, inference={self.inference!r}, samples={self.samples}, "
            f"per_example={self.per_example}"
        )


class StandoutLinear(DropoutModule):
    """A Linear layer whose units are dropped by a standout network (Ba & Frey 2013, adaptive dropout).

    Each hidden unit ``j`` is kept with a probability computed from the same inputs,
    ``P(m_j = 1) = sigmoid(sum_i pi_ji a_i)``, where the standout network's weights are tied to the
    layer's own as the paper proposes, ``pi = alpha * w + beta`` (the bias is the weight of a constant
    input ``a_0 = 1``). That gives, for input ``a``,

        keep = sigmoid(alpha * (W a + b) + beta * (sum_i a_i + 1)),

    an affine function of the layer's pre-activation, so large (confident) units are kept more
    often for ``alpha > 0``. Training outputs ``m * g(W a + b)`` with ``m ~ Bernoulli(keep)``, without
    rescaling; the sampled mask carries no gradient, so the weights learn through ``g``. At test time
    the mask is replaced by its expectation: ``keep * g(W a + b)``. With ``beta = 0`` the keep
    probability is ``sigmoid(alpha * (W a + b))``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        alpha: float = 1.0,
        beta: float = 0.0,
        activation: nn.Module | None = None,
        bias: bool = True,
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.activation = activation if activation is not None else nn.ReLU()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        init_linear_(self.weight, self.bias)

    def keep_probability(self, x: torch.Tensor, preactivation: torch.Tensor | None = None) -> torch.Tensor:
        """Per-unit keep probability that the standout network assigns to input ``x``."""
        h = F.linear(x, self.weight, self.bias) if preactivation is None else preactivation
        logits = self.alpha * h
        if self.beta != 0.0:
            logits = logits + self.beta * (x.sum(dim=-1, keepdim=True) + 1.0)
        return torch.sigmoid(logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.linear(x, self.weight, self.bias)
        keep = self.keep_probability(x, h)
        a = self.activation(h)
        if not self.training:
            return keep * a
        return torch.bernoulli(keep.detach()) * a

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, alpha={self.alpha}, "
            f"beta={self.beta}, bias={self.bias is not None}"
        )
