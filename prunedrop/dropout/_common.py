"""Pieces shared by the dropout modules: the marker base class, argument checks, Linear-style init."""

from __future__ import annotations

import math

import torch
from torch import nn


class DropoutModule(nn.Module):
    """Base class of every module in :mod:`prunedrop.dropout` whose training-mode forward is random.

    It adds no behaviour. :func:`prunedrop.dropout.mc_dropout_mode` uses it to find the modules to
    switch back to training mode for Monte Carlo dropout, so a user's own noisy module takes part in
    MC dropout by subclassing it (or by being appended to :data:`prunedrop.dropout.DROPOUT_TYPES`).
    """


def check_probability(p: float, name: str = "p", *, allow_one: bool = False) -> float:
    """Return ``p`` as a float, or raise ``ValueError`` naming ``name`` if it is not a probability.

    A drop probability of exactly 1 is refused where the method divides by the keep probability
    ``1 - p`` or would drop everything forever.
    """
    p = float(p)
    upper_ok = p <= 1.0 if allow_one else p < 1.0
    if not (p >= 0.0 and upper_ok):
        bound = "[0, 1]" if allow_one else "[0, 1)"
        raise ValueError(f"{name} must be a drop probability in {bound}, got {p}")
    return p


def bernoulli_keep(shape: torch.Size | tuple[int, ...], keep: float, like: torch.Tensor) -> torch.Tensor:
    """A {0, 1} tensor of ``shape`` whose entries are 1 with probability ``keep``, on ``like``'s device/dtype."""
    return torch.empty(shape, device=like.device, dtype=like.dtype).bernoulli_(keep)


def init_linear_(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Initialise like :class:`torch.nn.Linear`, so these layers start where a plain layer would."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in = weight.shape[1]
        bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound)
