"""Monte Carlo dropout: predictive mean and uncertainty from dropout kept on at test time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from ._common import DropoutModule

__all__ = ["DROPOUT_TYPES", "MCPrediction", "is_dropout_like", "mc_dropout_mode", "mc_predict"]

#: Module types that :func:`mc_dropout_mode` switches to training mode. Append a type to add it.
DROPOUT_TYPES: list[type[nn.Module]] = [
    DropoutModule,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
]


def is_dropout_like(module: nn.Module) -> bool:
    """True for modules whose training-mode forward only adds dropout noise (see :data:`DROPOUT_TYPES`).

    Also true for a torch RNN/LSTM/GRU built with ``dropout > 0``, whose training flag only switches
    its between-layer dropout on.
    """
    if isinstance(module, tuple(DROPOUT_TYPES)):
        return True
    return isinstance(module, nn.RNNBase) and module.dropout > 0


@contextmanager
def mc_dropout_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` is in eval mode except its dropout-like modules, which sample.

    Only the dropout-like modules themselves are switched (not their children), so batch norm keeps
    using, and not updating, its running statistics. Every module's mode is restored on exit.
    """
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for m in model.modules():
            if is_dropout_like(m):
                m.training = True
        yield model
    finally:
        for m, mode in saved:
            m.training = mode


class MCPrediction(NamedTuple):
    """What :func:`mc_predict` returns; uncertainties are in nats, one value per example."""

    mean: torch.Tensor
    """Predictive distribution: the class probabilities averaged over the samples, shape (N, classes)."""
    entropy: torch.Tensor
    """Entropy of the predictive distribution, total uncertainty, shape (N,)."""
    mutual_information: torch.Tensor
    """Entropy minus the average entropy of the samples: the part of the uncertainty due to the
    model (epistemic, BALD), shape (N,)."""


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(probs, probs).sum(dim=-1)


@torch.no_grad()
def mc_predict(
    model: nn.Module, x: torch.Tensor, samples: int = 20, *, apply_softmax: bool = True
) -> MCPrediction:
    """Monte Carlo dropout prediction (Gal & Ghahramani 2016, "Dropout as a Bayesian approximation").

    Runs ``samples`` stochastic forward passes of ``model`` on ``x`` with dropout on (see
    :func:`mc_dropout_mode`), each an approximate draw from the posterior over weights, and averages
    the class probabilities ``p_s``:

        mean = (1/S) sum_s p_s,   entropy = H[mean],   mutual_information = H[mean] - (1/S) sum_s H[p_s].

    The model's output is taken as logits over the last dimension (``apply_softmax=True``) or as
    probabilities (``apply_softmax=False``). Modes are restored afterwards.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    with mc_dropout_mode(model):
        draws = torch.stack([model(x) for _ in range(samples)])
    probs = draws.softmax(dim=-1) if apply_softmax else draws
    mean = probs.mean(dim=0)
    entropy = _entropy(mean)
    # Jensen makes this >= 0; the clamp removes float rounding below zero
    mutual_information = (entropy - _entropy(probs).mean(dim=0)).clamp_min(0.0)
    return MCPrediction(mean, entropy, mutual_information)
