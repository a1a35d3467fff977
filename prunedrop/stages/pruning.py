"""Stage 4, prune: the variational model thresholded into a plain one with masks (:func:`prunedrop.prune.prune`),
after the posterior's bit widths are read for ``quantize: bayes`` (pruning replaces the posterior)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..batchnorm import recalibrate_from
from ..data import DataBundle
from ..errors import TrainingError
from ..prune import PruneResult, prune, set_thresholds
from ..quantize import posterior_bits, rule_inputs
from ..recipes import SNR_METHODS, Recipe


@dataclass
class Pruned:
    """The pruned model, its masks, and the posterior's bits when the recipe quantizes."""

    result: PruneResult
    threshold: float
    bits: Any = None
    """:func:`prunedrop.quantize.posterior_bits` at the threshold (``quantize`` set), else None."""

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {"kept_fraction_converted": r.kept_fraction,
                **({"kept_unit_fraction_converted": r.kept_unit_fraction} if r.unit_masks else {})}


def prune_calibrated(variational: nn.Module, threshold: float, data: DataBundle, recipe: Recipe) -> PruneResult:
    """:func:`prunedrop.prune.prune` at ``threshold``, with the running statistics of every BatchNorm re-estimated
    first for the thresholded weights from training samples, exactly as the sweep measured that threshold
    (:func:`~prunedrop.stages.selection.thresholded_metric`), so that the model pruned is the model measured: those
    left in the model and those that joined a layer's unit noise (``batchnorm_noise: after``), which pruning folds
    into the layer's weights with the statistics they have then. The trained statistics describe the noisy network:
    a BatchNorm after a DenseNet-style concatenation read 17% validation accuracy with them where the sweep had
    measured 44%, a pre-activation residual CNN 42% where it had measured 87.67%, and slimming folds a removed
    channel's constant output, computed with them, into the next layer. ``variational`` becomes the pruned model, as
    with :func:`~prunedrop.prune.prune`; a model without BatchNorm reads no data."""
    calibrate_at(variational, threshold, data, recipe)
    return prune(variational, threshold)


def calibrate_at(variational: nn.Module, threshold: float, data: DataBundle, recipe: Recipe) -> None:
    """``variational`` thresholded at ``threshold`` (eval mode) with every BatchNorm's running statistics
    re-estimated for it from training samples (:func:`prune_calibrated`)."""
    set_thresholds(variational, threshold)
    recalibrate(variational.eval(), data, recipe)


def recalibrate(model: nn.Module, data: DataBundle, recipe: Recipe) -> None:
    """The BatchNorms' running statistics of ``model`` re-estimated for its weights of now from the recipe's training
    batches: what the sweep measures each threshold with (:func:`~prunedrop.stages.selection.thresholded_metric`) and
    what pruning folds, one function so that the two cannot drift apart."""
    recalibrate_from(model, data.loader("train", recipe.eval_batch_size))


def prune_variational(variational: nn.Module, threshold: float, recipe: Recipe, log: Callable[[str], None], *,
                      pruned: PruneResult | None = None, data: DataBundle | None = None) -> Pruned:
    """Threshold ``variational`` at ``threshold`` (``pruned``: already done, by the bisection after fine-tuning) and
    log what was kept; a threshold that prunes everything stops the run with one line of advice. With ``data``, the
    BatchNorms' statistics are re-estimated for the pruned weights (:func:`prune_calibrated`) and the posterior's
    bits are matched on the units' outputs over training samples (:func:`posterior_bits`)."""
    # the model pruned here, and the bits read from it, are the one the sweep measured (the bisection's probe was
    # calibrated already: then only the bits need it)
    if data is not None and (pruned is None or recipe.quantize != "none"):
        calibrate_at(variational, threshold, data, recipe)
    bits = None
    if recipe.quantize != "none":
        inputs = rule_inputs(data, recipe.seed) if data is not None else None
        bits = posterior_bits(variational, threshold, inputs=inputs)
    if pruned is None:
        pruned = prune(variational, threshold)
    rule = recipe.pruning_rule(threshold)
    if pruned.kept_fraction == 0.0:
        raise TrainingError(
            f"every {'weight' if pruned.per_weight else 'unit'} of the converted layers has {rule}: nothing would "
            "be left to export; lower kl_weight, "
            f"{'lower' if recipe.method in SNR_METHODS else 'raise'} threshold, or train for fewer epochs"
        )
    if pruned.per_weight and pruned.unit_masks:
        log(f"pruned where {rule}: kept {pruned.kept_unit_fraction:.2%} of the converted layers' units and "
            f"{pruned.kept_fraction:.2%} of their weights")
    else:
        what = "weights" if pruned.per_weight else "units"
        log(f"pruned where {rule}: kept {pruned.kept_fraction:.2%} of the converted layers' {what}")
    if pruned.kept_fraction == 1.0:
        log(f"note: {nothing_pruned(recipe, rule, pruned.per_weight)}")
    return Pruned(result=pruned, threshold=threshold, bits=bits)


def nothing_pruned(recipe: Recipe, rule: str, per_weight: bool) -> str:
    """Why a run pruned nothing and what would change it: the exported model is the original, no smaller or faster
    (a fixed β of 30 under group VD left every unit's log α below −2 in 60 epochs on a digits CNN)."""
    what = "weight" if per_weight else "unit"
    if recipe.automatic:
        bound = "within the budget" if recipe.max_metric_drop is not None else "the search chose"
        return (f"nothing was pruned: no {what} has {rule} at the point {bound}; the model keeps its size, no smaller or "
                "faster than the original (a larger --max-drop, or more --epochs, lets the autopilot prune)")
    return (f"nothing was pruned: no {what} has {rule} with β fixed at {recipe.fixed_beta:g}; the model keeps its size, "
            "no smaller or faster than the original (raise --kl-weight, train more --epochs, or leave β to the autopilot: "
            "no --kl-weight)")
