"""Concrete dropout: a dropout rate learned by gradient descent through a relaxed Bernoulli mask."""

from __future__ import annotations

import math

import torch
from torch import nn

from ._common import DropoutModule, check_probability

__all__ = ["ConcreteDropout"]

_EPS = 1e-7


class ConcreteDropout(DropoutModule):
    """Concrete dropout on the input of a wrapped layer (Gal, Hron, Kendall 2017).

    The drop probability ``p`` is a parameter (stored as a logit). A hard Bernoulli mask has no
    gradient with respect to ``p``, so training uses its continuous relaxation, the concrete
    distribution with temperature ``t``: with ``u ~ U(0, 1)``,

        z = sigmoid((log p - log(1 - p) + log u - log(1 - u)) / t),   x_out = x * (1 - z) / (1 - p),

    where ``z`` is close to 1 (dropped) with probability about ``p``; the paper uses ``t = 0.1``.

    :meth:`regularizer` is the paper's KL term for this layer,

        weight_regularizer * ||W||^2 / (1 - p)  +  dropout_regularizer * K * (p log p + (1 - p) log(1 - p)),

    with ``||W||^2`` the squared norm of the wrapped layer's parameters and ``K`` the number of input
    features per example. The second part is minus the entropy of the Bernoulli(p), which pushes ``p``
    up; the first pushes it down. The paper sets ``weight_regularizer = l^2 / (tau N)`` and
    ``dropout_regularizer = 2 / (tau N)`` for prior length-scale ``l``, precision ``tau`` and ``N``
    training examples; add the sum of all layers' regularizers to the mean loss.

    Eval mode applies no dropout (the inverted scaling keeps the expected input unchanged); for
    Monte Carlo dropout predictions, use :func:`prunedrop.dropout.mc_predict`.
    """

    def __init__(
        self,
        layer: nn.Module | None = None,
        init_p: float = 0.1,
        temperature: float = 0.1,
        weight_regularizer: float = 1e-6,
        dropout_regularizer: float = 1e-5,
    ):
        super().__init__()
        init_p = check_probability(init_p, "init_p")
        if init_p == 0.0:
            raise ValueError("init_p must be above 0: its logit is -inf")
        if temperature <= 0.0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.layer = layer if layer is not None else nn.Identity()
        self.temperature = float(temperature)
        self.weight_regularizer = float(weight_regularizer)
        self.dropout_regularizer = float(dropout_regularizer)
        self.p_logit = nn.Parameter(torch.tensor(math.log(init_p) - math.log1p(-init_p)))
        self.input_features: int | None = None

    @property
    def p(self) -> torch.Tensor:
        """The current drop probability, ``sigmoid(p_logit)``."""
        return torch.sigmoid(self.p_logit)

    def concrete_mask(self, x: torch.Tensor) -> torch.Tensor:
        """A relaxed keep mask ``(1 - z) / (1 - p)`` for ``x``, differentiable in ``p``."""
        p = self.p
        u = torch.rand_like(x)
        logits = torch.log(p + _EPS) - torch.log(1 - p + _EPS) + torch.log(u + _EPS) - torch.log(1 - u + _EPS)
        z = torch.sigmoid(logits / self.temperature)
        return (1 - z) / (1 - p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_features = x[0].numel() if x.dim() > 1 else x.numel()
        if self.training:
            x = x * self.concrete_mask(x)
        return self.layer(x)

    def regularizer(self) -> torch.Tensor:
        """The paper's regulariser for this layer (see the class docstring); needs one forward pass first."""
        if self.input_features is None:
            raise RuntimeError("ConcreteDropout.regularizer() needs the input size: run a forward pass first")
        p = self.p
        squares = sum((w * w).sum() for w in self.layer.parameters())
        weight_term = self.weight_regularizer * squares / (1 - p)
        neg_entropy = p * torch.log(p + _EPS) + (1 - p) * torch.log(1 - p + _EPS)
        dropout_term = self.dropout_regularizer * self.input_features * neg_entropy
        return weight_term + dropout_term

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, weight_regularizer={self.weight_regularizer}, "
            f"dropout_regularizer={self.dropout_regularizer}"
        )
