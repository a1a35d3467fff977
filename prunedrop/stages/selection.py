"""Stage 3, select: the threshold. The sweep on validation data, the choice within the accuracy budget, the
calibration of the Monte Carlo posterior and the log α histograms (all need the variational model, so they come
before it is thresholded), and, with ``budget_after_finetune``, the bisection after fine-tuning
(:mod:`.bisection`)."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..autopilot import target_kind
from ..batchnorm import batchnorm_state, restore_batchnorm
from ..convert import variational_layers
from ..data import DataBundle
from ..errors import PrunedropError
from ..metrics import as_classifier
from ..pilot import CheckSet
from ..plots import plot_log_alpha_histograms
from ..prune import PruneResult
from ..recipe_groups import is_classification
from ..recipes import Recipe
from ..runfolder import RunFolder
from ..sweep import SweepPoint, choose_threshold, default_thresholds, sweep_thresholds, usable_thresholds
from ..train import evaluate, metric_name
from ..uncertainty import calibration_summary, sampled_statistics
from .baseline import Baseline
from .bisection import Search, at_edge, search_after_finetune, thresholds_past
from .budget import budget_text, cap_within_budget, capped, target_cap, target_closest, within
from .common import draw_plots
from .conversion import Converted
from .pruned_finetune import FinetunedPruned
from .pruning import recalibrate
from .slimming import slim_multiple


@dataclass
class Selection:
    """The chosen threshold and how it was chosen."""

    threshold: float
    points: list[SweepPoint]
    """The sweep."""
    chosen: SweepPoint | None
    """The sweep's choice within the budget (None: no budget, or none in it)."""
    cap: SweepPoint | None
    """With a flops or params target: the point that meets it and prunes least; nothing chosen prunes more."""
    metric_before: float
    """The original's validation metric, which the budget is measured from."""
    max_metric_drop: float | None
    calibration: dict[str, Any] = field(default_factory=dict)
    """Calibration of the original and of the variational model's Monte Carlo posterior (cross-entropy only)."""
    plots: dict[str, str] = field(default_factory=dict)
    """The plots drawn so far (the log α histograms): key → path relative to the run folder."""
    plot_error: str | None = None
    """Why the plots were skipped (no matplotlib), when they were."""
    search: Search | None = None
    """The bisection after fine-tuning, when the recipe asks for it."""
    check_set: dict[str, Any] | None = None
    """Where the sweep's choice was also held to the budget on the autopilot's check samples (a coarse validation
    set, :class:`CheckSet`): their count, the original's and the least pruning threshold's metric on them, the
    reference (the lower), the thresholds they ruled out."""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def pruned(self) -> PruneResult | None:
        """The bisection's pruned model at :attr:`threshold` (None: prune it now)."""
        return self.search.best[1] if self.search is not None and self.search.best is not None else None

    @property
    def finetuned(self) -> FinetunedPruned | None:
        """The bisection's fine-tuned model at :attr:`threshold` (None: fine-tune it now)."""
        return self.search.best[2] if self.search is not None and self.search.best is not None else None

    def to_dict(self) -> dict[str, Any]:
        probes = [_finite_probe(p) for p in self.search.probes] if self.search is not None else []
        return {"threshold": self.threshold,
                "sweep": {"points": [p.to_dict() for p in self.points], "selected_on": "val",
                          "chosen_threshold": None if self.chosen is None else self.chosen.threshold,
                          "target_cap_threshold": None if self.cap is None else self.cap.threshold,
                          "max_metric_drop": self.max_metric_drop, "metric_before": self.metric_before,
                          **({"after_finetune": probes} if probes else {}),
                          **({"check_set": self.check_set} if self.check_set else {})},
                **({"calibration": self.calibration} if self.calibration else {}),
                "timings": self.timings}


def _finite_probe(probe: dict[str, Any]) -> dict[str, Any]:
    """A probe of the search as the report holds it: a non-finite metric (a validation error that overflowed) becomes
    None, since JSON has no NaN or infinity."""
    def finite(x: Any) -> Any:
        return None if isinstance(x, float) and not math.isfinite(x) else x

    return {k: [finite(x) for x in v] if isinstance(v, list) else finite(v) for k, v in probe.items()}


def thresholded_metric(recipe: Recipe, data: DataBundle) -> Callable[[nn.Module, Any], float]:
    """The sweep's measurement of the model at one threshold: the BatchNorms' running statistics re-estimated for
    its thresholded weights first (:func:`~prunedrop.stages.pruning.recalibrate`), then the metric on ``loader``.
    Statistics kept while training describe the noisy network, not the thresholded one: a digits ResNet-18 under
    sparse VD, keeping 0.5% of its weights, read 80.6% validation accuracy with them (98.6% before), while the
    autopilot's checks, with statistics re-estimated, read a drop of 0.57 points. :func:`select_threshold`
    restores the trained statistics after the sweep."""
    name = metric_name(recipe.loss)

    def metric(model: nn.Module, loader: Any) -> float:
        recalibrate(model, data, recipe)
        return evaluate(model, loader, loss=recipe.loss)[name]

    return metric


def slim_costs(variational: nn.Module, recipe: Recipe, example: torch.Tensor
               ) -> Callable[[SweepPoint], SweepPoint] | None:
    """For a target on a model that prunes whole units: a swept point → the same point with its non-zero
    multiply-adds, parameters and stored bytes counted on the slim model that its threshold gives (pruned, slimmed
    and profiled on a copy). None otherwise.

    The sweep counts the thresholded model's non-zero weights, and slimming also removes the weights that read
    pruned units: on a LeNet-5 SBP run with ``--target flops=10x`` the sweep read 10× at SNR ≤ 4.48, where the slim
    model at SNR ≤ 3.5, the threshold chosen, measured 15.6× (test −1.20 points). Counted on the slim model, the
    target's cap is where the exported model meets it. A few samples of ``example`` check each slim model."""
    from ..export.sparse import parameters_bytes
    from ..prune import prune
    from ..report import count_parameters, profile_model
    from ..slim import slim

    if recipe.target is None:
        return None
    in_bytes = target_kind(recipe.target) == "bytes"
    if not any(layer.unit_keep_mask() is not None for layer in variational_layers(variational).values()):
        return None
    few = example[:4]

    def exact(point: SweepPoint) -> SweepPoint:
        pruned = prune(copy.deepcopy(variational), point.threshold)
        if not pruned.unit_masks or pruned.kept_fraction == 0.0:
            return point
        try:
            model = slim(pruned.model, pruned.unit_masks, few, channel_multiple=slim_multiple(recipe) or 1).model
        except PrunedropError:
            return point  # slimming refuses this mask: the exported model would keep the units, as counted
        _, params = count_parameters(model)
        macs = sum(p.nonzero_macs for p in profile_model(model.eval(), few[:1]))
        stored = parameters_bytes(model.parameters())[0] if in_bytes else point.stored_bytes
        return dataclasses.replace(point, nonzero_macs=macs, params=params, stored_bytes=stored)

    return exact


def select_threshold(converted: Converted, baseline: Baseline, data: DataBundle, recipe: Recipe,
                     device: torch.device, folder: RunFolder, example: torch.Tensor, *, resume: bool,
                     progress: bool, log: Callable[[str], None]) -> Selection:
    """Sweep the thresholds, choose the most pruning one within the budget (the recipe's threshold without a
    budget), and, with ``budget_after_finetune``, bisect the swept thresholds by the metric after fine-tuning."""
    t0 = time.perf_counter()
    variational = converted.model.cpu().eval()
    metric_before = baseline.metric["val"]
    val_loader = data.loader("val", recipe.eval_batch_size)
    name = metric_name(recipe.loss)
    trained_statistics = batchnorm_state(variational)
    metric = thresholded_metric(recipe, data)

    slim_cost = slim_costs(variational, recipe, example)
    counts_bytes = target_kind(recipe.target) == "bytes"

    def measure(thresholds: list[float], loader: Any, count_bytes: bool = False) -> list[SweepPoint]:
        # every measurement re-estimates the BatchNorm statistics for its threshold; the later stages (and the
        # probes past the grid) start from the trained model as it was
        try:
            return sweep_thresholds(variational, loader, thresholds, evaluate_fn=metric, example_input=example[:1],
                                    count_bytes=count_bytes)
        finally:
            restore_batchnorm(variational, trained_statistics)

    def sweep(thresholds: list[float]) -> list[SweepPoint]:
        points = measure(thresholds, val_loader, counts_bytes)
        return [slim_cost(p) for p in points] if slim_cost is not None else points

    def swept_past(edge: SweepPoint, grid: list[SweepPoint], said: Callable[[int], str]) -> list[SweepPoint]:
        """``grid`` with the thresholds past its edge swept too (one evaluation each), in order; ``said(n)`` is the
        log line."""
        more = thresholds_past(edge, grid, recipe)
        log(said(len(more)))
        return sorted([*grid, *sweep(more)], key=lambda p: p.threshold)

    # the default grid less the thresholds the method refuses (an SNR ≤ 0 prunes nothing, as SNR ≤ 0.5 may)
    points = sweep(recipe.sweep_thresholds or usable_thresholds(recipe, default_thresholds()))
    threshold, chosen = recipe.threshold, None
    # what original.onnx holds besides the parameters, which a bytes target's file holds as well
    overhead = max(0, baseline.onnx.num_bytes - points[0].dense_bytes) if counts_bytes and points else 0
    cap = target_cap(points, recipe, lambda t: sweep([round(t, 6)])[0], overhead=overhead)
    points.sort(key=lambda p: p.threshold)  # with the target's bisection's points among them
    if cap is None and recipe.target is not None and recipe.max_metric_drop is None and points:
        # a target alone that no swept threshold meets: past the default grid's edge first (one evaluation each, as
        # for a budget), then the threshold that comes closest, not the recipe's (a user who states a size wants
        # the nearest model to it)
        closest = target_closest(points, recipe, overhead=overhead)
        if closest is not None and recipe.sweep_thresholds is None and at_edge(closest, points):
            points = swept_past(closest, points, lambda n: f"target {recipe.target}: no threshold of the grid meets "
                                f"it; sweeping {n} thresholds past its edge")
            cap = target_cap(points, recipe, lambda t: sweep([round(t, 6)])[0], overhead=overhead)
            points.sort(key=lambda p: p.threshold)
            closest = target_closest(points, recipe, overhead=overhead)
        if cap is None and closest is not None:
            threshold = closest.threshold
            log(f"target {recipe.target}: no swept threshold meets it; {recipe.pruning_rule(threshold)} comes "
                "closest and is chosen")
    # the budget is held to each threshold after its noise-free fine-tuning (the search below), or else to the sweep
    searches = recipe.budget_judges_finetuned(data.num_val) and recipe.finetune_epochs_for(data.num_train) > 0
    least = cap
    if cap is not None and recipe.max_metric_drop is not None and not searches:
        # the sweep's metric decides the budget: a point that fits both the target and the budget is the choice
        cap = cap_within_budget(points, cap, recipe, lambda p: choose_threshold(
            [p], metric_before=metric_before, max_metric_drop=recipe.max_metric_drop,
            higher_is_better=is_classification(recipe.loss)) is not None, overhead=overhead)
        if cap is not least:
            log(f"target {recipe.target}: {recipe.pruning_rule(least.threshold)} meets it and prunes least, but reads "
                f"{least.metric:.4g}, outside the budget; {recipe.pruning_rule(cap.threshold)} meets both")
    candidates = capped(points, cap, recipe, overhead=overhead)
    # past the grid only on the default grid (a grid the recipe gives is the user's) and without a target's cap
    # (it bounds the pruning from within the grid)
    beyond = recipe.sweep_thresholds is None and cap is None
    if cap is not None:
        if cap is least:
            log(f"target {recipe.target}: {recipe.pruning_rule(cap.threshold)} meets it and prunes least; no "
                "threshold that prunes more is chosen")
        if recipe.max_metric_drop is None:
            threshold = cap.threshold
    check_set = CheckSet.for_run(recipe, data) if recipe.max_metric_drop is not None else None
    check_record: dict[str, Any] | None = None
    if check_set is not None:
        on_checks: dict[float, float] = {}

        def measured_on_checks(point: SweepPoint) -> float:
            if point.threshold not in on_checks:
                on_checks[point.threshold] = measure([point.threshold], check_set)[0].metric
            return on_checks[point.threshold]

        given = evaluate(baseline.model, check_set, loss=recipe.loss)[name]
        least = max(points, key=lambda p: (p.params, p.threshold))  # prunes least: the trained model as it is
        reference = min(given, measured_on_checks(least))
        check_record = {"samples": check_set.samples, "metric_before": given, "least_pruning": least.threshold,
                        "metric_least_pruning": on_checks[least.threshold], "reference": reference, "ruled_out": []}

        def keeps_on_checks(point: SweepPoint) -> bool:
            after = measured_on_checks(point)
            kept = within(recipe, reference, after)
            if not kept and all(r["threshold"] != point.threshold for r in check_record["ruled_out"]):
                check_record["ruled_out"].append({"threshold": point.threshold, "metric": after})
                log(f"{recipe.pruning_rule(point.threshold)} keeps the budget on the {data.num_val} validation "
                    f"samples ({name} {point.metric:.4g}) but not on the {check_set.samples} samples the checks count "
                    f"(validation and training: {reference:.4g} → {after:.4g}, from the lower of the original's and "
                    f"{recipe.pruning_rule(least.threshold)}'s); looking among the thresholds that prune less")
            return kept

    if recipe.max_metric_drop is not None:
        def choose() -> SweepPoint | None:
            # a threshold that prunes every weight leaves nothing to export, whatever its metric
            usable = [p for p in candidates if p.kept_weights > 0]
            while True:
                pick = choose_threshold(usable, metric_before=metric_before, max_metric_drop=recipe.max_metric_drop,
                                        higher_is_better=is_classification(recipe.loss))
                if pick is None or check_set is None or keeps_on_checks(pick):
                    return pick
                usable = [p for p in usable if p.params > pick.params]  # those pruning less than the one ruled out

        chosen = choose()
        if chosen is not None and beyond and at_edge(chosen, points):
            # the grid's most pruning threshold is within the budget already: its edge, not the budget, stopped the
            # choice; the thresholds past it cost one evaluation each
            edge = chosen
            points = swept_past(edge, points, lambda n: f"{recipe.pruning_rule(edge.threshold)}, the grid's most "
                                f"pruning threshold, is within the budget before fine-tuning: sweeping {n} thresholds "
                                "past it")
            candidates = points
            chosen = choose()
        if chosen is None:
            log(f"no swept threshold keeps {name} within {budget_text(recipe)} of the original's; "
                f"using the recipe's threshold {recipe.threshold:g}")
        else:
            threshold = chosen.threshold
            log(f"threshold sweep: {recipe.pruning_rule(threshold)} prunes most within the budget of {recipe.max_metric_drop:g} "
                f"({name} {chosen.metric:.4g} before noise-free fine-tuning)")
    calibration: dict[str, Any] = {}
    if is_classification(recipe.loss):
        calibration["original"] = calibration_summary(as_classifier(baseline.model, recipe.loss), val_loader)
        if recipe.mc_samples:  # with statistics of the sampling network (the model's are the thresholded one's)
            with sampled_statistics(variational, data.loader("train", recipe.eval_batch_size)):  # (on the CPU)
                calibration["variational_mc"] = calibration_summary(as_classifier(variational, recipe.loss),
                                                                    val_loader, samples=recipe.mc_samples)
    # log α histograms need the variational model, so they are drawn now; the other plots from the report
    has_log_alpha = any(hasattr(layer, "log_alpha") for layer in variational_layers(variational).values())
    plots, plot_error = draw_plots(
        folder, {"log_alpha": lambda p: plot_log_alpha_histograms(variational, p, threshold)}
        if recipe.plots and has_log_alpha else {}, log)
    selection = Selection(threshold=threshold, points=points, chosen=chosen, cap=cap, metric_before=metric_before,
                          max_metric_drop=recipe.max_metric_drop, calibration=calibration, plots=plots,
                          plot_error=plot_error, check_set=check_record,
                          timings={"sweep_calibration_plots_s": time.perf_counter() - t0})
    num_val = data.num_val
    if recipe.budget_after_finetune is None and recipe.automatic and recipe.max_metric_drop is not None \
            and not recipe.judges_after_finetune(num_val):
        log(f"the {num_val} validation samples are too coarse to judge the budget after fine-tuning (one weighs "
            f"{100.0 / max(num_val, 1):.2g} points, more than half the budget); it is judged before it, on the sweep")
    if searches:
        selection.search = search_after_finetune(variational, candidates, chosen, metric_before, recipe, data, device,
                                                 folder, example, resume=resume, progress=progress, log=log,
                                                 normalised=converted.normalised,
                                                 sweep=sweep if beyond else None, grid=points,
                                                 scores_before=baseline.scores.get("val"))
        if selection.search.swept:
            selection.points = sorted([*points, *selection.search.swept], key=lambda p: p.threshold)
        if selection.search.best is not None:
            selection.threshold = selection.search.best[0]
        else:
            log(f"no probed threshold keeps {name} within {budget_text(recipe)} of the original's after "
                f"noise-free fine-tuning; using {recipe.pruning_rule(threshold)}")
    return selection
