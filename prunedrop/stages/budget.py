"""The accuracy budget and the target, as the stages judge and state them: one-line texts, the stop of an automatic-β
run over its budget (:func:`check_budget`), and whether the exported model reached the recipe's target."""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist
from typing import Any

from ..errors import TrainingError
from ..recipe_groups import is_classification
from ..recipes import Recipe
from ..sweep import SweepPoint, within_budget


def budget_text(recipe: Recipe) -> str:
    """The budget as the log lines state it: '1' (points of accuracy), or '50%' (more error) for mse."""
    return f"{recipe.max_metric_drop:g}" + ("" if is_classification(recipe.loss) else "%")


def worse_text(recipe: Recipe, before: float, after: float) -> str:
    """How much worse ``after`` is than ``before``, in the words of the recipe's metric."""
    from ..autopilot import metric_drop

    drop = metric_drop(before, after, loss=recipe.loss)
    return (f"is {drop:.3g} points worse than the original" if is_classification(recipe.loss)
            else f"has {drop:.3g}% more error (mse) than the original")


def within(recipe: Recipe, before: float, after: float, delta_se: float | None = None) -> bool:
    """Whether ``after`` (validation) keeps the recipe's budget from ``before``, with its ``budget_confidence``
    where ``delta_se`` (the change's paired standard error) is given; always without a budget."""
    return recipe.max_metric_drop is None or within_budget(
        after, metric_before=before, max_metric_drop=recipe.max_metric_drop,
        higher_is_better=is_classification(recipe.loss), delta_se=delta_se, z=recipe.budget_z)


def over_budget(recipe: Recipe, before: float, after: float, delta_se: float | None = None) -> bool:
    """Whether the recipe has an accuracy budget and ``after`` (validation) misses it (:func:`within`)."""
    return not within(recipe, before, after, delta_se)


def held_confidence(recipe: Recipe, before: float, after: float, delta_se: float | None) -> float | None:
    """The one-sided confidence, on data like the validation data, that the change from ``before`` to ``after`` is
    within the budget: Φ((budget − drop) / standard error), the normal approximation of the paired difference. It
    leaves out that the search kept the most pruning model that read within the budget, so it errs high. None without
    a budget or a finite, positive standard error."""
    from ..autopilot import metric_drop

    if recipe.max_metric_drop is None or delta_se is None or not math.isfinite(after) \
            or not (math.isfinite(delta_se) and delta_se > 0):
        return None
    drop = metric_drop(before, after, loss=recipe.loss)
    return NormalDist().cdf((recipe.max_metric_drop - drop) / se_in_budget_unit(recipe, before, delta_se))


def se_in_budget_unit(recipe: Recipe, before: float, delta_se: float) -> float:
    """The change's standard error (in the metric's unit) in the budget's: points, or percent of the original's
    error for ``mse``."""
    from ..autopilot import metric_drop

    return abs(metric_drop(before, before + delta_se, loss=recipe.loss))


def confidence_text(recipe: Recipe, delta_se: float | None) -> str:
    """' at 90% confidence (standard error 0.27)' where the recipe asks for a confidence and the standard error is
    known, else ''."""
    if recipe.budget_confidence is None or delta_se is None:
        return ""
    return f" at {recipe.budget_confidence:.0%} confidence (standard error {delta_se:.2g})"


def fixed_beta_budget_line(recipe: Recipe, before: float, after: float, params_ratio: float,
                           delta_se: float | None = None) -> str:
    """The one line of a fixed-β run that ends over its budget (:func:`check_budget` stops an automatic one)."""
    return (f"over budget: the compressed model {worse_text(recipe, before, after)} on validation data "
            f"(budget {recipe.max_metric_drop:g}{confidence_text(recipe, delta_se)}) at {params_ratio:.3g}x fewer parameters, with β fixed at "
            f"{recipe.fixed_beta:g}; lower --kl-weight, or let the autopilot choose β (no --kl-weight). The files are "
            "written; the exit status is 4 (set max_metric_drop: null to accept any drop)")


def check_budget(recipe: Recipe, before: float, after: float, num_val: int | None = None,
                 delta_se: float | None = None) -> None:
    """A run with an automatic β never exports a model over its budget (one clear line, exit status 1).

    A fixed-β run (``kl_weight`` or ``kl_weights`` set) is the user's choice of β: it exports, then says so in one
    line (:func:`fixed_beta_budget_line`) and the command exits with status 4 (``report["budget"]``). ``num_val``:
    the validation samples, for the line's hints (a perfect original score or a coarse split; docs/cli.md);
    ``delta_se``: the paired standard error of the change on them, said where it is a large share of the budget."""
    if not recipe.automatic or not over_budget(recipe, before, after, delta_se):
        return
    worse = worse_text(recipe, before, after)
    hints = ""
    if is_classification(recipe.loss) and before >= 100.0 - 1e-9:
        # measured: 5 of 13 default runs on digits models trained on the validation images too stopped here
        hints += (" The given model scores 100% on the validation data: if it was trained on those samples it knows "
                  "them by heart, and fine-tuning on the rest loses some whatever is pruned; give it held-out "
                  "validation data (x_val/y_val, docs/cli.md).")
    if num_val and not recipe.validation_resolves_budget(num_val):
        hints += (f" One of the {num_val} validation samples weighs {100.0 / num_val:.2g} points, more than half the "
                  "budget.")
    se = None if delta_se is None else se_in_budget_unit(recipe, before, delta_se)
    # in the metric's unit, and for mse also in the budget's (percent of the original's error)
    se_text = "" if se is None else (f"±{delta_se:.2g}" if is_classification(recipe.loss)
                                     else f"±{delta_se:.2g} mse, {se:.2g}% of the original's")
    if se is not None and recipe.budget_z * se > 0.5 * recipe.max_metric_drop:
        hints += (f" At {recipe.budget_confidence:.0%} confidence the drop must be {recipe.budget_z:.2f} standard "
                  f"errors ({se_text}) inside the budget; more validation samples, or a lower --confidence, "
                  "leave more of it to compress with.")
    elif se is not None and se > 0.5 * recipe.max_metric_drop:
        hints += (f" The validation data measures the change only to {se_text} (paired standard error), more "
                  "than half the budget: more validation samples judge it more finely.")
    raise TrainingError(
        f"the compressed model {worse} on validation data, over the budget "
        f"of {recipe.max_metric_drop:g}{confidence_text(recipe, delta_se)}; nothing was exported. Give a larger --max-drop, more --finetune-epochs, "
        "or fix β yourself with --kl-weight (the checkpoints in the output folder stay for `prunedrop export`)."
        + hints)


def target_outcome(recipe: Recipe, report: dict[str, Any]) -> dict[str, Any]:
    """Whether the exported model reached the recipe's target, measured on it: reached or missed, by how much,
    and which constraint bound. ``bytes`` targets are judged on the real ONNX file."""
    from ..autopilot import parse_target

    target = parse_target(recipe.target or "")
    if target.kind == "flops":
        before, after = report["flops"]["before"], report["flops"]["nonzero_after"]
    elif target.kind == "params":
        before, after = report["params"]["before"], report["params"]["after"]
    else:
        before, after = report["onnx_bytes"]["before"], report["onnx_bytes"]["after"]
    reached_ratio = before / after if after else float("inf")
    wanted = target.ratio_for(before)
    reached = reached_ratio >= wanted * (1 - 1e-9)
    bound = (report.get("autopilot") or {}).get("bound", "target")
    ceiling = (report.get("autopilot") or {}).get("target_ceiling")
    kept = [note for note in ((report.get("slim") or {}).get("notes") or []) if "kept" in note]
    if reached:
        line = f"target {target} reached: {reached_ratio:.3g}x fewer {target.kind}"
    else:
        # The autopilot and the sweep count pruned units as gone; slimming may have to keep some (a grouped
        # convolution keeps its groups equal in size): a digits CNN with groups=2 read 7.14x while training, and
        # the exported model kept every channel (before grouped convolutions slimmed, 1307387).
        # what the file holds besides its float32 parameters (operators, shapes, names): no pruning removes it
        graph = before - 4 * int((report.get("params") or {}).get("total_before") or 0)
        why = (f"the file's graph alone, about {graph:,} bytes besides the parameters, is more than the "
               f"{before / wanted:,.0f} bytes the target allows" if target.kind == "bytes" and graph >= before / wanted
               else f"what stays dense bounds it: at most {ceiling:.3g}x with every converted entry pruned"
               if ceiling is not None and ceiling < wanted
               else "the accuracy budget bound first" if bound == "budget"
               else f"slimming kept pruned units it could not remove: {kept[0]}" if kept
               else "training ended before it got there")
        closest = "the closest model within the budget" if recipe.max_metric_drop is not None else "the model"
        line = (f"target {target} missed: {closest} is {reached_ratio:.3g}x smaller "
                f"({reached_ratio / wanted:.0%} of the way in ratio; {why})")
    return {"target": str(target), "kind": target.kind, "wanted_ratio": wanted, "reached_ratio": reached_ratio,
            "reached": reached, "bound": bound, "line": line}


def target_closest(points: list[SweepPoint], recipe: Recipe, *, overhead: int = 0) -> SweepPoint | None:
    """The swept point nearest to the recipe's target, counted as :func:`target_cap` counts it: the least cost among
    the points that keep a weight (None without a target or such a point). What a target alone exports where no
    swept point meets it, where the recipe's threshold was before: a digits MLP's ``params=500x`` with no budget and 20
    epochs exported log α > 3, 5.88× (now log α > −4 past the grid, 110×; BENCHMARKS.md, thirtieth session)."""
    costs = _target_cost(recipe, overhead)
    usable = [p for p in points if p.kept_weights > 0]
    if costs is None or not usable:
        return None
    return min(usable, key=lambda p: (costs[0](p), p.params))


#: bisection steps of the threshold between the swept point that meets the target and prunes least and its
#: neighbour that misses it (each one thresholding and one validation pass, no training)
TARGET_REFINE_STEPS = 6


def _target_cost(recipe: Recipe, overhead: int = 0
                 ) -> tuple[Callable[[SweepPoint], int], Callable[[SweepPoint], int]] | None:
    """(a swept point's cost, the dense model's) in the kind of the recipe's target; None without a target. A
    ``bytes`` target adds ``overhead`` to both: what the file holds besides the parameters (its graph, names)."""
    from ..autopilot import target_kind

    kind = target_kind(recipe.target)
    if kind == "flops":
        return (lambda p: p.nonzero_macs), (lambda p: p.macs)
    if kind == "params":
        return (lambda p: p.params), (lambda p: p.total_params)
    if kind == "bytes":
        return (lambda p: p.stored_bytes + overhead), (lambda p: p.dense_bytes + overhead)
    return None


def target_cap(points: list[SweepPoint], recipe: Recipe,
               point_at: Callable[[float], SweepPoint] | None = None, *, overhead: int = 0) -> SweepPoint | None:
    """With a target: the swept point that meets it and prunes least (None without a target, or when no swept point
    meets it). A user who states a target wants a model that fits it, and the most
    accurate of those prunes least: no threshold prunes more than this one (the budget may still stop short of it).
    The points count non-zero weights (``nonzero_macs``, ``params``): for per-weight noise those of the thresholded
    model, what the report measures; for per-unit noise those of its slim model
    (:func:`prunedrop.stages.selection.slim_costs`), since slimming also removes the weights downstream layers read
    from pruned units. A ``bytes`` target counts the bytes the file would spend on the parameters (``stored_bytes``:
    each tensor dense, or sparse where smaller), since the report judges it on the ONNX file: without the cap, a
    digits MLP under sparse VD with ``bytes=10x`` and no budget exported its recipe's threshold, 11.6× fewer
    parameters in a file 7.7× smaller (sparse storage spends 5-7 bytes on a weight, not 4). Without a cap, the
    most pruning threshold within the budget overshot a digits CNN's ``flops=8x`` to 20.7×.

    The swept grid is coarse (on the grid alone, a target-only MLP run landed at 5.41× for a 4× target), so with
    ``point_at`` (threshold → its point) the interval between the cap and its neighbour that misses the target is
    bisected :data:`TARGET_REFINE_STEPS` times (the run then landed at 4.003×); the points it measures are appended
    to ``points``. ``overhead``: the file's bytes besides the parameters, for a ``bytes`` target (:func:`_target_cost`;
    a small MLP's 3.92× file for a 4× cap on its parameters' bytes)."""
    from ..autopilot import parse_target

    costs = _target_cost(recipe, overhead)
    if costs is None or not points:
        return None
    cost, dense_cost = costs
    target = parse_target(recipe.target)
    if target.kind == "bytes" and not points[0].dense_bytes:  # points that count no bytes (an older report's)
        return None
    dense = dense_cost(points[0])
    wanted = target.ratio_for(dense)

    def meets(p: SweepPoint) -> bool:
        return p.kept_weights > 0 and dense / max(cost(p), 1) >= wanted * (1 - 1e-9)

    cap = max((p for p in points if meets(p)), key=lambda p: (cost(p), p.params), default=None)
    if cap is None or point_at is None:
        return cap
    # the least pruning grid point that misses the target (it keeps more than the cap)
    miss = min((p for p in points if not meets(p) and cost(p) > cost(cap)), key=cost, default=None)
    for _ in range(TARGET_REFINE_STEPS if miss is not None else 0):
        point = point_at((cap.threshold + miss.threshold) / 2)
        points.append(point)
        if meets(point) and cost(point) >= cost(cap):
            cap = point
        elif not meets(point) and cost(point) <= cost(miss):
            miss = point
        else:
            break  # not monotone here: the interval would not shrink
    return cap


def cap_within_budget(points: list[SweepPoint], cap: SweepPoint, recipe: Recipe,
                      inside: Callable[[SweepPoint], bool], *, overhead: int = 0) -> SweepPoint:
    """The cap of :func:`target_cap`, or, where the budget (``inside``) rules it out, the least pruning swept point
    that meets the target within the budget, when one does (else the cap). A validation metric measured on few
    samples is not monotone in the threshold: a digits MLP's ``flops=2x`` cap read one image under the budget's line
    while the points pruning more (2.08×, 2.2×) read one image above it, and the run exported 1.84× and said the
    budget had stopped it short of the target. A point pruning at least as much as the cap meets the target too."""
    costs = _target_cost(recipe, overhead)
    if costs is None or inside(cap):
        return cap
    cost = costs[0]
    fitting = [p for p in points if p.kept_weights > 0 and cost(p) <= cost(cap) and inside(p)]
    return max(fitting, key=lambda p: (cost(p), p.params), default=cap)


def capped(points: list[SweepPoint], cap: SweepPoint | None, recipe: Recipe, *, overhead: int = 0
           ) -> list[SweepPoint]:
    """The points that prune no more than ``cap`` (all of them without one)."""
    costs = _target_cost(recipe, overhead)
    if cap is None or costs is None:
        return points
    cost = costs[0]
    return [p for p in points if cost(p) >= cost(cap)]
