"""Part of stage 3, select: the threshold chosen by the validation metric *after* the noise-free fine-tuning
(``budget_after_finetune``), by bisecting the swept thresholds."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data import DataBundle
from ..prune import prune
from ..recipes import Recipe
from ..runfolder import RunFolder
from ..sweep import within_budget
from ..train import evaluate, metric_name
from .pruned_finetune import finetune_pruned


@dataclass
class Search:
    best: tuple[float, Any, Any] | None
    """(threshold, its PruneResult, its FinetunedPruned) of the most pruning probe in budget."""
    probes: list[dict[str, Any]]
    """Every probe in the order run: threshold, kept weights and parameters, validation metric before and after
    the noise-free fine-tuning, and whether that is within the budget."""


def search_after_finetune(
    variational: nn.Module,
    points: list[Any],
    chosen: Any,
    metric_before: float,
    recipe: Recipe,
    data: DataBundle,
    device: torch.device,
    folder: RunFolder,
    example: torch.Tensor,
    *,
    resume: bool,
    progress: bool,
    log: Callable[[str], None],
    normalised: Sequence[str] = (),
) -> Search:
    """Choose the threshold by the validation metric *after* the noise-free fine-tuning (``budget_after_finetune``).

    The sweep judges thresholds on the thresholded variational model; the fine-tuning afterwards often wins
    back much of what a lower threshold costs, so that budget is pessimistic. Here each probe prunes a copy of
    the variational model at one swept threshold, fine-tunes it for the recipe's ``finetune_epochs`` and
    evaluates it on the validation data. The probes bisect the swept thresholds that prune more than the
    sweep's own choice (all of them when the sweep found none in budget), assuming the fine-tuned metric falls as
    the pruning grows: about log2(n) + 1 fine-tunings for n candidates. (Two more probes between grid thresholds
    were measured and taken out: each probe more is one more chance for the validation data to favour a model by
    luck; docs/autopilot.md.) The most pruning probe within budget is
    the result, its fine-tuned model the one exported (its ``timings`` are the whole search's). Each probe
    checkpoints to its own :meth:`RunFolder.probe_checkpoint`, so that ``--resume`` skips the probes already done.
    """
    t0 = time.perf_counter()
    name = metric_name(recipe.loss)
    # most pruning first; the sweep's choice (in budget before fine-tuning) bounds the search from below
    candidates = sorted((p for p in points if p.kept_weights > 0), key=lambda p: (p.params, p.threshold))
    if chosen is not None:
        candidates = [p for p in candidates if p.params <= chosen.params]
    val_loader = data.loader("val", recipe.eval_batch_size)
    probes: list[dict[str, Any]] = []
    best: tuple[float, Any, Any] | None = None
    lo, hi = 0, len(candidates) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        point = candidates[mid]
        pruned = prune(copy.deepcopy(variational), point.threshold)
        masked = finetune_pruned(pruned, data, recipe, device, example, folder.probe_checkpoint(point.threshold),
                                 resume=resume, progress=progress, log=log, normalised=normalised)
        metric = evaluate(masked.model, val_loader, loss=recipe.loss)[name]
        ok = within_budget(metric, metric_before=metric_before, max_metric_drop=recipe.max_metric_drop,
                           higher_is_better=recipe.loss == "cross_entropy")
        probes.append({"threshold": point.threshold, "kept_weights": point.kept_weights, "params": point.params,
                       "metric_before_finetune": point.metric, "metric": metric, "within_budget": ok})
        log(f"probe {recipe.pruning_rule(point.threshold)}: {point.kept_weights:,} weights kept, {name} "
            f"{point.metric:.4g} → {metric:.4g} after noise-free fine-tuning "
            f"({'within' if ok else 'outside'} the budget of {recipe.max_metric_drop:g})")
        if ok:
            best = (point.threshold, pruned, masked)
            hi = mid - 1
        else:
            lo = mid + 1
    if best is not None:
        log(f"budget after fine-tuning: {recipe.pruning_rule(best[0])} prunes most within "
            f"{recipe.max_metric_drop:g} ({len(probes)} probes)")
        best[2].timings = {"masked_finetune_s": time.perf_counter() - t0}
    return Search(best=best, probes=probes)
