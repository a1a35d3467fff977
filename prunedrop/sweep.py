"""Threshold sweep: the compression / metric trade-off of a trained variational model, and a budgeted choice.

Sparse VD (Molchanov, Ashukha, Vetrov 2017) prunes a weight where log α exceeds a threshold; the paper uses
3, but the trained log α are spread out and the threshold is a free dial: lower prunes more. Since the
variational model in eval mode computes exactly what its thresholded deterministic model computes (the
layer contract in :mod:`prunedrop.layers.base`), the whole curve costs one evaluation per threshold and
no retraining. :func:`choose_threshold` then picks the most compressed point within an accuracy budget.

Counts follow :mod:`prunedrop.report`: parameters are non-zero parameters of the deterministic model that
:func:`prunedrop.prune.prune` would return, FLOPs are multiply-adds per input sample, and non-zero MACs are
``nnz(weight) × output positions`` per layer. They are exact: each variational layer's ``to_dense`` is built
for each threshold and counted (so per-unit families, whose pruned units also lose their bias, are right
too), and the output positions come from one profiling pass (``profile_model``) on a batch of one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .autopilot import metric_drop
from .convert import variational_layers
from .errors import PrunedropError
from .prune import thresholds_at
from .report import layer_weights, profile_model

__all__ = ["SweepPoint", "choose_threshold", "default_thresholds", "sweep_thresholds"]

#: slack when comparing a metric drop with the budget: 98.61 − 97.61 is 1.0000000000000142 in floats
_BUDGET_RTOL = 1e-9


@dataclass(frozen=True)
class SweepPoint:
    """The thresholded model at one threshold: its metric and what it keeps."""

    threshold: float
    """The pruning threshold of every variational layer (log α for sparse VD: prune where log α > it)."""
    metric: float
    """``evaluate_fn``'s value for the model thresholded here (eval mode)."""
    kept_weights: int
    """Non-zero weights of the variational layers after thresholding."""
    total_weights: int
    """All weights of the variational layers (what gets noise)."""
    params: int
    """Non-zero parameters of the whole thresholded deterministic model (``report["params"]["after"]``)."""
    total_params: int
    """Stored parameters of that model, zero or not (the same at every threshold)."""
    nonzero_macs: int
    """Multiply-adds per sample with a non-zero weight, whole model (``report["flops"]["nonzero_after"]``)."""
    macs: int
    """Dense multiply-adds per sample, whole model (the same at every threshold)."""
    kept_per_layer: dict[str, int] = field(default_factory=dict)
    """Variational layer name → its non-zero weights after thresholding."""
    stored_bytes: int = 0
    """About the bytes the exported file spends on the parameters: each tensor dense, or sparse where that is
    smaller (:func:`prunedrop.export.sparse.stored_bytes`); what a ``bytes`` target is capped by."""
    dense_bytes: int = 0
    """The same parameters stored dense (the same at every threshold)."""

    @property
    def kept_fraction(self) -> float:
        """Share of the variational layers' weights that survive (1.0 when there are none)."""
        return self.kept_weights / self.total_weights if self.total_weights else 1.0

    @property
    def params_ratio(self) -> float | None:
        """Stored / non-zero parameters: how many times fewer non-zeros; ``None`` when nothing is left."""
        return self.total_params / self.params if self.params else None

    @property
    def flops_ratio(self) -> float | None:
        """Dense / non-zero multiply-adds; ``None`` when no multiply-add is left."""
        return self.macs / self.nonzero_macs if self.nonzero_macs else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (non-finite metrics become ``None``), with the derived ratios."""
        d = dataclasses.asdict(self)
        d["metric"] = self.metric if math.isfinite(self.metric) else None
        d.update(kept_fraction=self.kept_fraction, params_ratio=self.params_ratio,
                 flops_ratio=self.flops_ratio)
        return d


def default_thresholds(start: float = -2.0, stop: float = 6.0, step: float = 0.5) -> list[float]:
    """log α thresholds from ``start`` to ``stop`` inclusive: by default −2, −1.5, …, 6 (17 values).

    The paper's 3 (α ≈ 20) sits in the middle; below 0 (α < 1, noise smaller than the weight) pruning
    starts to remove weights the network uses, above ~6 almost nothing is pruned.
    """
    if step <= 0 or stop < start:
        raise ValueError(f"need step > 0 and stop >= start, got start={start}, stop={stop}, step={step}")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    # computed from the index, not accumulated, so that 3.0 is exactly 3.0
    return [round(start + i * step, 10) for i in range(n)]


def usable_thresholds(recipe: Any, thresholds: Sequence[float]) -> list[float]:
    """``thresholds`` rounded as the sweep's are, less those the recipe's method refuses (an SNR ≤ 0; a log α
    outside the clip)."""
    out = []
    for t in (round(t, 6) for t in thresholds):
        try:
            recipe._check_threshold(t, "threshold")
        except PrunedropError:
            continue
        out.append(t)
    return out


def _first_input(data_loader: Iterable[Any]) -> torch.Tensor:
    batch = next(iter(data_loader), None)
    if batch is None:
        raise PrunedropError("the sweep's data loader is empty")
    x = batch[0] if isinstance(batch, (list, tuple)) else batch
    if not isinstance(x, torch.Tensor):
        raise PrunedropError("cannot take an example input from the data loader; pass example_input=")
    return x


def _weight_count(module: nn.Module) -> int:
    return sum(w.numel() for w in layer_weights(module))


@torch.no_grad()
def sweep_thresholds(
    model: nn.Module,
    data_loader: Iterable[Any],
    thresholds: Sequence[float],
    *,
    evaluate_fn: Callable[[nn.Module, Iterable[Any]], float],
    example_input: torch.Tensor | None = None,
    count_bytes: bool = False,
) -> list[SweepPoint]:
    """Evaluate a trained variational ``model`` at every threshold; one :class:`SweepPoint` each, in order.

    For each threshold, every variational layer gets it (:func:`prunedrop.prune.thresholds_at`) and
    ``evaluate_fn(model, data_loader)`` is called with the model in eval mode, where it computes exactly
    what ``prune(model, threshold).model`` would. ``evaluate_fn`` returns one float (e.g.
    ``lambda m, dl: prunedrop.train.evaluate(m, dl)["accuracy"]``). ``example_input`` (default: the first
    batch of ``data_loader``) is used once, at batch size 1, to find each layer's output positions.

    The model is not modified: every layer's own threshold and every module's training flag are restored
    afterwards, also when ``evaluate_fn`` raises. ``count_bytes``: also count each point's ``stored_bytes`` and
    ``dense_bytes`` (for a ``bytes`` target; zero otherwise: they read every weight).
    """
    layers = variational_layers(model)
    if not layers:
        raise PrunedropError("the model has no variational layer: sweep the trained model before prune()")
    thresholds = [float(t) for t in thresholds]
    if not thresholds or not all(math.isfinite(t) for t in thresholds):
        raise PrunedropError(f"thresholds must be a non-empty list of finite numbers, got {thresholds}")
    if example_input is None:
        example_input = _first_input(data_loader)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))

    # Constant parts: everything outside the variational layers, and each layer's output positions
    # (dense MACs / weight size on a batch of one, exact: no rounding at batch 1).
    profiles = {p.name: p for p in profile_model(model, example_input[:1].to(device))}
    # (an attention layer's products of queries and keys use no weight: the same at every threshold)
    fixed = {name: profiles[name].fixed_macs if name in profiles else 0 for name in layers}
    positions = {name: (profiles[name].macs - fixed[name]) // _weight_count(layer) if name in profiles else 0
                 for name, layer in layers.items()}
    variational_ids = {id(p) for layer in layers.values() for p in layer.parameters()}
    other = [p for p in model.parameters() if id(p) not in variational_ids]
    other_params = sum(p.numel() for p in other)
    other_nonzero = sum(int(torch.count_nonzero(p)) for p in other)
    def stored(params: Iterable[torch.Tensor]) -> tuple[int, int]:
        from .export.sparse import parameters_bytes

        return parameters_bytes(params) if count_bytes else (0, 0)

    other_stored, other_dense = stored(other)
    layer_names = set(layers)
    other_nonzero_macs = sum(p.nonzero_macs for p in profiles.values() if p.name not in layer_names)
    macs = sum(p.macs for p in profiles.values())
    total_weights = sum(_weight_count(layer) for layer in layers.values())

    saved_modes = [(m, m.training) for m in model.modules()]
    points = []
    try:
        for t in thresholds:
            with thresholds_at(layers, t):
                model.eval()
                metric = float(evaluate_fn(model, data_loader))
            kept_per_layer: dict[str, int] = {}
            params, total_params, nonzero_macs = other_nonzero, other_params, other_nonzero_macs
            stored_total, dense_bytes = other_stored, other_dense
            for name, layer in layers.items():
                # The layer's own deterministic version: exact for any noise family (a per-unit family also
                # zeroes the pruned units' biases), and one layer at a time so memory stays small.
                dense = layer.to_dense(t)
                kept = sum(int(torch.count_nonzero(w)) for w in layer_weights(dense))
                kept_per_layer[name] = kept
                params += sum(int(torch.count_nonzero(p)) for p in dense.parameters())
                total_params += sum(p.numel() for p in dense.parameters())
                layer_stored, layer_dense = stored(dense.parameters())
                stored_total += layer_stored
                dense_bytes += layer_dense
                nonzero_macs += kept * positions[name] + fixed[name]
                del dense
            points.append(SweepPoint(
                threshold=t, metric=metric, kept_weights=sum(kept_per_layer.values()),
                total_weights=total_weights, params=params, total_params=total_params,
                nonzero_macs=nonzero_macs, macs=macs, kept_per_layer=kept_per_layer, stored_bytes=stored_total,
                dense_bytes=dense_bytes,
            ))
    finally:
        for m, mode in saved_modes:
            m.training = mode
    return points


def choose_threshold(
    points: Sequence[SweepPoint],
    *,
    metric_before: float,
    max_metric_drop: float,
    higher_is_better: bool = True,
) -> SweepPoint | None:
    """The point with the fewest non-zero parameters whose metric is within the budget; ``None`` if none is.

    A point qualifies when it is :func:`within_budget`: ``metric_before − metric ≤ max_metric_drop`` points, or
    for a lower-is-better metric such as MSE an increase of at most ``max_metric_drop`` percent of
    ``metric_before``; a NaN metric never qualifies. Ties in parameters go to the better metric, then to the
    smaller threshold (equal counts at two thresholds mean the same masks, since masks are nested in the
    threshold).
    """
    if not math.isfinite(metric_before):
        raise ValueError(f"metric_before must be finite, got {metric_before}")
    if not math.isfinite(max_metric_drop):
        raise ValueError(f"max_metric_drop must be finite, got {max_metric_drop}")
    sign = 1.0 if higher_is_better else -1.0
    qualifying = [p for p in points if within_budget(p.metric, metric_before=metric_before,
                                                     max_metric_drop=max_metric_drop,
                                                     higher_is_better=higher_is_better)]
    if not qualifying:
        return None
    return min(qualifying, key=lambda p: (p.params, -sign * p.metric, p.threshold))


def within_budget(metric: float, *, metric_before: float, max_metric_drop: float,
                  higher_is_better: bool = True, delta_se: float | None = None, z: float = 0.0) -> bool:
    """``metric_before − metric ≤ max_metric_drop`` (points of accuracy); for a lower-is-better metric (MSE) the
    budget is relative, as the recipe's ``max_metric_drop`` says and :func:`prunedrop.autopilot.metric_drop`
    measures: ``100 · (metric − metric_before) / |metric_before| ≤ max_metric_drop`` percent. Both with a relative
    slack of 1e-9 for float rounding; a NaN metric never is.

    With ``z`` > 0 and ``delta_se`` (the paired standard error of the change, in the metric's unit), the metric is
    first moved ``z`` standard errors the worse way: the budget then holds with the one-sided confidence whose
    normal quantile is ``z`` (the recipe's ``budget_confidence``). Without a standard error (fewer than two
    samples) the measured metric is judged."""
    if not math.isfinite(metric):
        return False
    if z > 0 and delta_se is not None and math.isfinite(delta_se):
        metric = metric - z * delta_se if higher_is_better else metric + z * delta_se
    slack = _BUDGET_RTOL * max(1.0, abs(metric_before), abs(max_metric_drop))
    drop = metric_drop(metric_before, metric, loss="cross_entropy" if higher_is_better else "mse")
    return drop <= max_metric_drop + slack
