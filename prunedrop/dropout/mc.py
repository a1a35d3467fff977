"""Monte Carlo dropout: predictive mean and uncertainty from dropout kept on at test time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, NamedTuple

import torch
from torch import nn

from ._common import DropoutModule

__all__ = ["DROPOUT_TYPES", "MCPrediction", "is_dropout_like", "mc_dropout_mode", "mc_predict", "monte_carlo",
           "sampling_mode"]

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
def sampling_mode(model: nn.Module, samples: Callable[[nn.Module], bool]) -> Iterator[nn.Module]:
    """Within the block, ``model`` is in eval mode except the modules for which ``samples(m)`` is true.

    Only those modules themselves are switched (not their children), so batch norm keeps using, and not
    updating, its running statistics. Every module's mode is restored on exit.
    """
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for m in model.modules():
            if samples(m):
                m.training = True
        yield model
    finally:
        for m, mode in saved:
            m.training = mode


def mc_dropout_mode(model: nn.Module) -> AbstractContextManager[nn.Module]:
    """Within the block, ``model`` is in eval mode except its dropout-like modules, which sample."""
    return sampling_mode(model, is_dropout_like)


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
    return monte_carlo(model, x, samples, mode=mc_dropout_mode, apply_softmax=apply_softmax)


@torch.no_grad()
def monte_carlo(
    model: nn.Module,
    x: torch.Tensor,
    samples: int,
    *,
    mode: Callable[[nn.Module], AbstractContextManager[Any]],
    apply_softmax: bool = True,
) -> MCPrediction:
    """``samples`` forward passes of ``model`` on ``x`` inside ``mode(model)`` (which decides what samples),
    summarised as predictive mean, entropy and mutual information (see :func:`mc_predict`)."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    probs_sum = entropy_sum = None
    with mode(model):
        # Running sums, not a stacked (T, N, C) tensor: memory stays that of one pass whatever T is.
        for _ in range(samples):
            out = model(x)
            probs = out.softmax(dim=-1) if apply_softmax else out
            ent = _entropy(probs)
            probs_sum = probs if probs_sum is None else probs_sum + probs
            entropy_sum = ent if entropy_sum is None else entropy_sum + ent
    mean = probs_sum / samples
    entropy = _entropy(mean)
    # Jensen makes this >= 0; the clamp removes float rounding below zero
    mutual_information = (entropy - entropy_sum / samples).clamp_min(0.0)
    return MCPrediction(mean, entropy, mutual_information)
