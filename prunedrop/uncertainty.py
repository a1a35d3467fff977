"""Predictive uncertainty of the variational model, and calibration metrics for any classifier.

Before thresholding, a trained variational model is an approximate posterior over the weights: sparse VD
(Molchanov, Ashukha, Vetrov 2017) trains ``q(w) = N(θ, σ²)`` by variational inference. Averaging the
predictions of weights drawn from it is Monte Carlo integration of the predictive distribution, as in
Gal & Ghahramani 2016 ("Dropout as a Bayesian Approximation"), where the noise is dropout's:

    p(y | x) ≈ (1/T) Σ_t softmax(f(x; w_t)),   w_t ~ q(w).

:func:`mc_predictive` draws the ``w_t`` by running the variational layers in train mode (local
reparameterisation: one independent draw per example, which leaves each example's predictive
distribution unchanged) with everything else in eval mode, so BatchNorm uses its running statistics and
plain dropout stays off: the only randomness is the learned posterior. It returns the predictive mean,
its entropy (total uncertainty) and the mutual information between prediction and weights (the
epistemic part, BALD: Houlsby et al. 2011), as :func:`prunedrop.dropout.mc_predict` does for dropout.

Calibration follows Guo, Pleiss, Sun, Weinberger 2017 ("On Calibration of Modern Neural Networks"):
expected calibration error over equal-width confidence bins, and the negative log-likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .batchnorm import batchnorm_state, recalibrate_from, restore_batchnorm
from .convert import variational_layers
from .dropout.mc import MCPrediction, monte_carlo, sampling_mode
from .errors import PrunedropError
from .metrics import NO_LABELS, labelled

__all__ = [
    "MCPrediction",
    "calibration_summary",
    "expected_calibration_error",
    "mc_predictive",
    "negative_log_likelihood",
    "sampled_statistics",
    "variational_sampling_mode",
]

#: probabilities are clamped to at least this in the NLL, so that one confident mistake gives a large
#: finite value (−log 1e-12 ≈ 27.6) instead of inf
NLL_EPS = 1e-12


@contextmanager
def variational_sampling_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model`` is in eval mode except its variational layers, which sample.

    Only the variational layers' own flags are switched, so BatchNorm keeps using (and not updating) its
    running statistics and plain dropout stays off. Every module's flag is restored on exit.
    """
    layers = variational_layers(model)
    if not layers:
        raise PrunedropError("the model has no variational layer: Monte Carlo prediction needs the trained "
                             "variational model, before prune()")
    sampling = {id(layer) for layer in layers.values()}
    with sampling_mode(model, lambda m: id(m) in sampling):
        yield model


@contextmanager
def sampled_statistics(model: nn.Module, loader: Iterable[Any], device: torch.device | str = "cpu"
                       ) -> Iterator[nn.Module]:
    """Within the block, the BatchNorms of the variational ``model`` hold running statistics re-estimated from
    ``loader``'s first training batches with the variational layers sampling, as :func:`mc_predictive` runs it; the
    statistics it had are restored on exit. Those are the thresholded network's (re-estimated after every epoch and
    check, noise off), and a Monte Carlo pass normalised its noisy activations with them: a digits CNN with a cosine
    classifier, 93% of a layer's weights pruned under sparse VD, read 9.0% accuracy, about 95% in training mode."""
    state = batchnorm_state(model)
    sampling = {id(layer) for layer in variational_layers(model).values()}
    try:
        recalibrate_from(model, loader, device, sampling=lambda m: id(m) in sampling)
        yield model
    finally:
        restore_batchnorm(model, state)


def mc_predictive(
    model: nn.Module, x: torch.Tensor, samples: int = 20, *, apply_softmax: bool = True
) -> MCPrediction:
    """Monte Carlo predictive distribution of a trained variational model (module docstring).

    Runs ``samples`` forward passes of ``model`` on ``x`` with only the variational layers sampling and
    returns ``(mean_probs, entropy, mutual_information)``: the class probabilities averaged over the
    passes (N, C), the entropy of that mean (N,) and ``entropy − mean entropy of the passes`` (N,), in nats.
    The output is taken as logits over the last dimension (``apply_softmax=True``) or as probabilities.
    Modes are restored afterwards.
    """
    return monte_carlo(model, x, samples, mode=variational_sampling_mode, apply_softmax=apply_softmax)


def _check(probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.as_tensor(probs)
    labels = torch.as_tensor(labels)
    if probs.dim() != 2 or labels.dim() != 1 or probs.shape[0] != labels.shape[0] or probs.shape[0] == 0:
        raise ValueError(f"need probs (N, C) and labels (N,) with N > 0, got {tuple(probs.shape)} and "
                         f"{tuple(labels.shape)}")
    return probs.detach().double(), labels.detach().long().to(probs.device)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error of the top-label confidence (Guo et al. 2017, eq. 3).

    ``ECE = Σ_b |B_b|/N · |acc(B_b) − conf(B_b)|`` over ``n_bins`` equal-width bins ``((b−1)/M, b/M]`` of
    the confidence ``max_c probs``; a confidence of exactly 0 goes to the first bin. 0 is perfectly
    calibrated; 1 is always certain and always wrong.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    probs, labels = _check(probs, labels)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    # bucketize with right=False puts c in bin i where edges[i-1] < c <= edges[i]: bins closed on the right
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=probs.device)[1:-1]
    bins = torch.bucketize(confidence, edges)
    n = confidence.numel()
    conf_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    acc_sum = torch.bincount(bins, weights=correct, minlength=n_bins)
    # |Σ acc − Σ conf| / N per bin is |B|/N · |acc(B) − conf(B)| without dividing by empty bins
    return float((acc_sum - conf_sum).abs().sum() / n)


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean ``−log probs[i, labels[i]]`` in nats; probabilities are clamped to :data:`NLL_EPS` first."""
    probs, labels = _check(probs, labels)
    picked = probs.gather(1, labels[:, None]).squeeze(1)
    return float(-torch.log(picked.clamp_min(NLL_EPS)).mean())


@torch.no_grad()
def calibration_summary(
    model_or_fn: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable[Any],
    *,
    samples: int | None = None,
    n_bins: int = 15,
) -> dict[str, Any]:
    """ECE, NLL and accuracy of a classifier on ``loader`` (batches of ``(x, labels)``).

    * ``nn.Module`` with ``samples=None``: one deterministic pass in eval mode, softmax of the logits (this
      is the thresholded model, or any plain model);
    * ``nn.Module`` with ``samples=T``: the Monte Carlo predictive mean of :func:`mc_predictive` (the
      variational model before thresholding); adds the mean ``entropy`` and ``mutual_information``;
    * any other callable: ``fn(x)`` must return class probabilities ``(N, C)``.

    Outputs of shape ``(N, *S, C)`` against labels ``(N, *S)`` (a model that predicts per position, with its class
    axis last) count every position as one prediction; ``n`` is then the number of labels.

    Returns ``{"ece", "nll", "accuracy", "n", "samples"}`` (plus the two uncertainties for MC); ``accuracy``
    is in percent like :func:`prunedrop.train.evaluate`, ``ece`` a fraction in [0, 1], ``nll`` in nats.
    Modes are restored afterwards.
    """
    if samples is not None and not isinstance(model_or_fn, nn.Module):
        raise ValueError("samples= needs a model (an nn.Module), not a probability function")
    is_module = isinstance(model_or_fn, nn.Module)
    device = (next((p.device for p in model_or_fn.parameters()), torch.device("cpu"))
              if is_module else torch.device("cpu"))
    saved = [(m, m.training) for m in model_or_fn.modules()] if is_module else []
    all_probs, all_labels = [], []
    entropy_sum = mi_sum = 0.0
    try:
        for x, y in loader:
            x = x.to(device)
            if samples is not None:
                pred = mc_predictive(model_or_fn, x, samples)  # type: ignore[arg-type]
                probs = pred.mean
                entropy_sum += float(pred.entropy.sum())
                mi_sum += float(pred.mutual_information.sum())
            elif is_module:
                model_or_fn.eval()  # type: ignore[union-attr]
                probs = model_or_fn(x).softmax(dim=-1)
            else:
                probs = torch.as_tensor(model_or_fn(x))
            all_probs.append(probs.detach().cpu())
            all_labels.append(torch.as_tensor(y).detach().cpu())
    finally:
        for m, mode in saved:
            m.training = mode
    if not all_probs:
        raise PrunedropError("the calibration data is empty")
    probs = torch.cat(all_probs)
    labels = torch.cat(all_labels).long()  # class indices (a multi-label model's float 0/1 targets too)
    if probs.dim() > 2:  # per position ((N, *S, C), :class:`prunedrop.metrics.ClassesLast`): each position a label
        probs, labels = probs.reshape(-1, probs.shape[-1]), labels.reshape(-1)
    predictions = labels.numel()  # the uncertainties are over every prediction, the rest over the labelled ones
    counted = labelled(labels)
    if not bool(counted.all()):  # a tagger's padding, or a void pixel: no label to be calibrated against
        probs, labels = probs[counted], labels[counted]
        if not labels.numel():
            raise PrunedropError(NO_LABELS)
    n = labels.numel()
    ece = expected_calibration_error(probs, labels, n_bins)
    nll = negative_log_likelihood(probs, labels)
    accuracy = 100.0 * float((probs.argmax(dim=1) == labels.to(probs.device)).double().mean())
    out: dict[str, Any] = {
        # None rather than NaN: the summary goes into report.json, which allows no NaN
        "ece": ece if math.isfinite(ece) else None,
        "nll": nll if math.isfinite(nll) else None,
        "accuracy": accuracy,
        "n": n,
        "samples": samples,
    }
    if samples is not None:
        out["entropy"] = entropy_sum / predictions
        out["mutual_information"] = mi_sum / predictions
    return out
