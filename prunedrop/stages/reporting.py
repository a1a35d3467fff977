"""Stage 9, report: the stage results' parts (each ``to_dict()``) and the comparison of the original with the
compressed model (:func:`prunedrop.report.build_report`) assembled into report.json; the target and fixed-β budget
outcomes; the plots that report.json holds the data for; report.json and report.md written."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..data import DataBundle
from ..plots import plot_kept_per_layer, plot_sweep, plot_training_curves
from ..recipe_groups import is_classification
from ..recipes import Recipe
from ..report import build_report, public_spec, write_report
from ..runfolder import QUANTIZED_ONNX, RunFolder
from ..train import metric_name
from .baseline import Baseline
from .budget import (
    budget_text,
    fixed_beta_budget_line,
    held_confidence,
    over_budget,
    se_in_budget_unit,
    target_outcome,
)
from .common import draw_plots, merge_parts
from .evaluation import Evaluation
from .exporting import Exported
from .selection import Selection


def assemble_report(model: nn.Module, stages: Sequence[Any], *, baseline: Baseline, evaluation: Evaluation,
                    exported: Exported, recipe: Recipe, data: DataBundle, example: torch.Tensor,
                    device: torch.device, source: dict[str, Any] | None) -> dict[str, Any]:
    """The report of a run whose compressed model is ``model``: :func:`prunedrop.report.build_report`'s comparison,
    the parts of ``stages`` (stage results in order; None for a stage that did not run) merged
    (:func:`prunedrop.stages.common.merge_parts`), and what the run was given."""
    extra = {"method": recipe.method,
             **merge_parts(stage.to_dict() for stage in stages if stage is not None),
             "recipe": recipe.to_dict(),
             "data": {"name": public_spec(data.name), "num_train": data.num_train, "num_val": data.num_val,
                      "input_shape": list(data.input_shape)},
             "source": {k: public_spec(v) for k, v in (source or {}).items()},
             "device": str(device),
             "world_size": distributed.world_size(),
             "torch_version": torch.__version__}
    return build_report(original=baseline.model, compressed=model, example_input=example,
                        metric_name=metric_name(recipe.loss), metric_before=baseline.metric["val"],
                        metric_after=evaluation.metric["val"], onnx_bytes_before=baseline.onnx.num_bytes,
                        onnx_bytes_after=exported.onnx.num_bytes, parity_max_abs_diff=exported.parity, extra=extra,
                        metric_delta_se=evaluation.delta_se.get("val"))


#: below this confidence that the budget holds, the budget line suggests ``--confidence``: on 300 validation images
#: three digits models within the budget at 50–76% lost 2.2–3.1 test points, and within 1.2 at 0.9 (BENCHMARKS.md)
LOW_CONFIDENCE = 0.8


def budget_line(recipe: Recipe, before: float, after: float, se: float | None, held: float) -> str:
    """The log line of the budget's outcome: the change, its standard error and the confidence it holds with; where
    that is low and no confidence was asked, the advice to ask one."""
    line = (f"budget: validation {metric_name(recipe.loss)} {before:.4g} → {after:.4g} (the change's paired standard "
            f"error {se:.2g}) keeps the budget of {budget_text(recipe)} with {held:.0%} one-sided confidence")
    if recipe.budget_confidence is not None:
        return f"{line} (asked: {recipe.budget_confidence:.0%})"
    if held < LOW_CONFIDENCE:
        line = (f"{line}; new data may read the change up to that error worse (the search chose among its probes on "
                "these samples): --confidence 0.9 judges the budget with a margin")
    if se is not None and se_in_budget_unit(recipe, before, se) > recipe.max_metric_drop:
        # 89 diabetes rows measure an mse change to ±2.8%, four linnerud rows to ±57%: a budget of 1% is not seen
        line += (f". The validation data measures the change only to ±{se_in_budget_unit(recipe, before, se):.2g}"
                 f"{'' if is_classification(recipe.loss) else '%'}, more than the budget itself: more validation "
                 "samples judge it more finely")
    return line


def coarse_budget_line(recipe: Recipe, before: float, after: float, num_val: int | None) -> str | None:
    """The log line of a classification budget judged on validation data too coarse for it (one sample weighs more
    than half the budget: :meth:`Recipe.validation_resolves_budget`), said whether or not any sample changed its
    answer: where none did, the standard error is 0 and :func:`budget_line` is silent, though 20 validation images
    (5 points each) cannot tell a drop of 1 point from none. None elsewhere."""
    if recipe.max_metric_drop is None or not num_val or not is_classification(recipe.loss) \
            or recipe.validation_resolves_budget(num_val):
        return None
    weight = 100.0 / num_val
    allowed = math.floor(recipe.max_metric_drop / weight + 1e-9)
    means = "no validation sample lost on balance" if allowed == 0 else \
        f"at most {allowed} validation sample{'s' if allowed > 1 else ''} lost on balance"
    return (f"budget: validation {metric_name(recipe.loss)} {before:.4g} → {after:.4g} is judged on {num_val} "
            f"samples, where one weighs {weight:.2g} points against a budget of {budget_text(recipe)}: within the budget means {means}, and new data may read a larger drop; "
            "more validation data judges a budget this fine")


def write_run_report(report: dict[str, Any], selection: Selection, evaluation: Evaluation, recipe: Recipe,
                     folder: RunFolder, log: Callable[[str], None]) -> dict[str, Any]:
    """Add the target's and a fixed β's budget outcome and the plots to ``report``; write report.json and
    report.md."""
    before, after = selection.metric_before, evaluation.metric["val"]
    if recipe.target is not None:
        report["target"] = target_outcome(recipe, report)
        log(report["target"]["line"])
    se = evaluation.delta_se.get("val")
    held = held_confidence(recipe, before, after, se)
    if held is not None and isinstance(report.get("metric"), dict):
        report["metric"]["budget_confidence"] = held
        log(budget_line(recipe, before, after, se, held))
    coarse = coarse_budget_line(recipe, before, after, (report.get("data") or {}).get("num_val"))
    if coarse is not None and isinstance(report.get("metric"), dict):
        report["metric"]["budget_resolution"] = 100.0 / report["data"]["num_val"]
        log(coarse)
    if not recipe.automatic and over_budget(recipe, before, after, se):
        report["budget"] = {"within": False, "line": fixed_beta_budget_line(
            recipe, before, after, report["params"]["ratio"] or float("inf"), se)}
    plots = dict(selection.plots)
    if recipe.plots and selection.plot_error is None:
        plots.update(draw_plots(folder, report_drawings(report), log)[0])
    if plots:
        report["plots"] = plots
    write_report(report, folder.path)
    return report


def run_files(folder: RunFolder, exported: Exported) -> dict[str, Path]:
    """The files a finished run wrote, by name."""
    files = {"model.onnx": exported.onnx.path, "model.pt": exported.model_pt, "original.onnx": folder.original_onnx,
             "report.json": folder.report_json, "report.md": folder.report_md}
    if exported.architecture is not None:
        files["architecture.json"] = exported.architecture
    if exported.quantized:
        files[QUANTIZED_ONNX] = folder.quantized_onnx
    return files


def report_drawings(report: dict[str, Any]) -> dict[str, Callable[[Path], Any]]:
    """The plots drawn from report.json alone: kept per layer, the sweep curve, the training curves."""
    from ..sweep import SweepPoint

    drawings: dict[str, Callable[[Path], Any]] = {"kept_per_layer": lambda p: plot_kept_per_layer(report, p)}
    sweep = report.get("sweep")
    if isinstance(sweep, dict) and sweep.get("points"):
        fields = set(SweepPoint.__dataclass_fields__)
        points = [SweepPoint(**{k: (float("nan") if k == "metric" and v is None else v)
                                for k, v in p.items() if k in fields}) for p in sweep["points"]]
        chosen = next((p for p in points if p.threshold == sweep.get("chosen_threshold")), None)
        metric = report["metric"]["name"]
        drawings["sweep"] = lambda p: plot_sweep(points, p, chosen, metric_name=metric,
                                                 metric_before=sweep.get("metric_before"),
                                                 max_metric_drop=sweep.get("max_metric_drop"),
                                                 higher_is_better=metric != "mse")
    if report.get("history"):
        drawings["training"] = lambda p: plot_training_curves(report["history"], p)
    return drawings


def render_report(report: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Rewrite report.md and the plots that report.json holds the data for (``prunedrop report RUN_DIR``)."""
    folder = RunFolder(run_dir)
    plots = dict(report.get("plots") or {})
    if (report.get("recipe") or {}).get("plots", True):
        plots.update(draw_plots(folder, report_drawings(report), log=lambda msg: None)[0])
    plots = {k: v for k, v in plots.items() if (folder.path / v).is_file()}
    if plots:
        report["plots"] = plots
    write_report(report, folder.path)
    return report
