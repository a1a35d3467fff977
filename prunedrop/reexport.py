"""``prunedrop export RUN_DIR``: a run's variational checkpoint thresholded again and exported, without retraining
(the stages prune → slim → export of :mod:`prunedrop.stages`, replayed on the checkpoint)."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .convert import to_variational
from .data import DataBundle, fit_inputs
from .errors import PrunedropError
from .quantize import posterior_bits, quantize_model, rule_inputs
from .recipes import SNR_METHODS, Recipe
from .report import count_parameters
from .runfolder import MODEL_ONNX, VARIATIONAL_CHECKPOINT, RunFolder
from .stages.common import PARITY_SAMPLES, evaluate_all, measure_all
from .stages.exporting import export_verified
from .stages.pruning import prune_calibrated
from .stages.slimming import slim_multiple, slim_pruned, slimmed_line, widths_line
from .train import metric_name, state_mismatch


@dataclass
class ReexportResult:
    path: Path
    threshold: float
    kept_fraction: float
    params_before: int
    params_after: int
    onnx_bytes: int
    parity_max_abs_diff: float
    metric_name: str
    metric: float
    quantization: dict[str, Any] | None = None
    """The quantization report section (:func:`prunedrop.quantize.quantize_model`) when ``quantize`` was given."""


def reexport(
    model: nn.Module,
    data: DataBundle,
    recipe: Recipe,
    run_dir: str | Path,
    output: str | Path,
    *,
    threshold: float | None = None,
    overwrite: bool = False,
    quantize: str = "none",
    log: Callable[[str], None] = lambda msg: None,
) -> ReexportResult:
    """Re-threshold a run's trained variational checkpoint and export again, without retraining.

    ``model`` is the original plain model (loaded the way the run loaded it), ``data`` the run's data and ``recipe``
    its recipe. The checkpoint may come from a finished or an interrupted run. Masked fine-tuning after
    thresholding is not replayed. ``threshold``: by default the one the run chose (its ``report.json``), else, for a
    run that did not finish, the recipe's; one outside what the method's rule can take (a log α threshold outside
    (−log_alpha_clip, log_alpha_clip), a signal-to-noise threshold ≤ 0) is refused. Where the run's ``run.json``
    records the identity of its model file and data, a model file or data that differ from the run's are refused
    (the metric and the quantization's budget would be measured on other data). ``output`` must be a new file (an
    existing regular file only with ``overwrite``), and never a file the run depends on
    (:func:`prunedrop.safety.check_output_file`). ``quantize`` (``int8`` or ``bayes``): ``output`` is the quantized
    file, checked against the recipe's budget as ``compress`` checks it (the float file is not kept).
    """
    from .runfolder import export_protected_files
    from .safety import check_output_file
    from .storage import load_checkpoint, strip_wrapper_prefix

    folder = RunFolder(run_dir)
    info = folder.read_info() if folder.run_info.is_file() else {}
    output = check_output_file(output, overwrite=overwrite, protected=export_protected_files(folder.path, info))
    _check_arguments(model, data, recipe, threshold)
    if quantize not in ("none", "int8", "bayes"):
        raise PrunedropError(f"quantize must be none, int8 or bayes, not {quantize!r}")
    if threshold is not None:
        threshold = _checked_threshold(float(threshold), recipe)
    if folder.variational_checkpoint.exists() and not folder.variational_checkpoint.is_file():
        raise PrunedropError(f"{folder.variational_checkpoint} is not a file; the run folder was damaged: run "
                             "`prunedrop compress` again with another -o")
    if not folder.variational_checkpoint.is_file():
        raise PrunedropError(f"{run_dir} holds no {VARIATIONAL_CHECKPOINT}: the run did not finish an epoch yet")
    data, _ = fit_inputs(model, data)  # as the run took them (a no-op for what the CLI loaded)
    if info:
        _check_same_inputs(info, data, log)
    state = load_checkpoint(folder.variational_checkpoint, require=("model",))
    chosen = None
    if threshold is None:
        threshold, chosen = _run_threshold(folder, recipe)
    example = data.example_batch(min(PARITY_SAMPLES, recipe.eval_batch_size))
    # the budget is measured from the original model, before the conversion swaps its layers
    metric_before, scores_before = None, None
    if quantize != "none":
        measured, scores = measure_all(model.cpu(), data, recipe, torch.device("cpu"))
        metric_before, scores_before = measured["val"], scores["val"]
    variational = to_variational(model.cpu(), recipe, example_input=example[:2])
    state["model"] = strip_wrapper_prefix(state["model"], variational)  # an earlier run's compiled submodule's keys
    try:
        variational.load_state_dict(state["model"])
    except RuntimeError:
        raise PrunedropError(f"checkpoint does not fit the model "
                             f"({state_mismatch(variational.state_dict(), state['model'])})") from None
    if chosen is not None:
        log(chosen)  # which threshold, once the checkpoint is known to fit
    bits = posterior_bits(variational, threshold, inputs=rule_inputs(data, recipe.seed)) \
        if quantize != "none" else None
    pruned = prune_calibrated(variational, threshold, data, recipe)
    if pruned.kept_fraction == 0.0:  # as compress refuses: an all-zero model is no export
        raise PrunedropError(f"{recipe.pruning_rule(threshold)} prunes every "
                             f"{'weight' if pruned.per_weight else 'unit'} of the converted layers: nothing would be "
                             f"left; {'lower' if recipe.method in SNR_METHODS else 'raise'} --threshold")
    total_plain = sum(p.numel() for p in pruned.model.parameters())
    slimmed = slim_pruned(pruned.model, pruned.unit_masks, example, lambda msg: None, slim_multiple(recipe))
    if slimmed.result is not None:
        if slimmed.result.widths is not None:  # how the widths were chosen (timed on this CPU, channel_multiple: null)
            log(widths_line(slimmed.result.widths))
        if slimmed.result.removed:
            log(slimmed_line(slimmed.result))
    final = slimmed.model
    metric = evaluate_all(final, data, recipe, torch.device("cpu"))["val"]
    _, params_after = count_parameters(final)
    metadata = {"prunedrop.version": __version__, "prunedrop.method": recipe.method,
                "prunedrop.threshold": f"{threshold:g}", "prunedrop.params_after": str(params_after)}
    quantization = None
    if quantize == "none":
        # written beside -o and moved onto it once verified: a file that fails the check is never left at -o, and
        # one that --overwrite replaces is kept until then
        parent = Path(output).parent
        made = [p for p in (parent, *parent.parents) if not p.exists()]  # deepest first
        parent.mkdir(parents=True, exist_ok=True)  # as the exporter makes it
        try:
            with tempfile.TemporaryDirectory(prefix=".prunedrop-export-", dir=parent) as tmp:
                exported, parity = _export_verified(final, example, Path(tmp) / MODEL_ONNX, recipe, metadata,
                                                    output)
                os.replace(exported.path, output)
        except BaseException:
            for folder in made:  # made for a file that was not written: not left behind
                try:
                    folder.rmdir()
                except OSError:
                    break
            raise
        path, num_bytes = Path(output), exported.num_bytes
    else:
        with tempfile.TemporaryDirectory(prefix="prunedrop-export-") as tmp:
            exported, parity = _export_verified(final, example, Path(tmp) / MODEL_ONNX, recipe, metadata, output)
            quantization = quantize_model(exported.path, output, mode=quantize, data=data, recipe=recipe,
                                          metric_before=metric_before, bits=bits,
                                          compare={"pruned_float32": exported.path}, log=log,
                                          scores_before=scores_before)
        if quantization["file"] is None:
            raise PrunedropError(f"quantization: {quantization['none_reason']}; nothing was written to {output} "
                                 "(export without --quantize for the float file)")
        path, num_bytes = Path(output), int(quantization["bytes"])
    return ReexportResult(path=path, threshold=threshold, kept_fraction=pruned.kept_fraction,
                          params_before=total_plain, params_after=params_after, onnx_bytes=num_bytes,
                          parity_max_abs_diff=parity, metric_name=metric_name(recipe.loss), metric=metric,
                          quantization=quantization)


def _export_verified(model: nn.Module, example: torch.Tensor, path: Path, recipe: Recipe, metadata: dict[str, str],
                     output: str | os.PathLike[str]) -> tuple[Any, float]:
    """:func:`~prunedrop.stages.exporting.export_verified` into the temporary ``path``; a failure names the file as
    the export for ``output`` rather than that path, which is deleted by the time the message is read."""
    try:
        return export_verified(model, example, path, recipe, metadata)
    except PrunedropError as e:
        raise e.naming(path, f"the ONNX export for {output} (nothing was written there)") from None


def _check_arguments(model: Any, data: Any, recipe: Any, threshold: Any) -> None:
    """A Python caller's arguments of the wrong kind: one line naming the argument, not an AttributeError deep in
    the conversion."""
    for name, value, kind, what in (("model", model, nn.Module, "the run's original model (an nn.Module, loaded "
                                     "as the run loaded it: prunedrop.storage.load_model)"),
                                    ("data", data, DataBundle, "the run's data (a DataBundle: prunedrop.data.load_data)"),
                                    ("recipe", recipe, Recipe, "the run's recipe (a Recipe: Recipe.from_dict of its "
                                     "run.json's 'recipe')")):
        if not isinstance(value, kind):
            raise TypeError(f"reexport: {name} must be {what}, not {type(value).__name__}")
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise TypeError(f"reexport: threshold must be a number (or None for the run's), not {type(threshold).__name__}")


def _checked_threshold(threshold: float, recipe: Recipe) -> float:
    """``threshold`` if the method's pruning rule can take it: a finite number, inside (−log_alpha_clip,
    log_alpha_clip) for a log α rule (outside, log α, which is clipped to that range, is above all of it or none of
    it: every weight or no weight is pruned), > 0 for a signal-to-noise rule (an SNR is ≥ 0: nothing is pruned)."""
    if not math.isfinite(threshold):
        raise PrunedropError(f"threshold {threshold} is not a finite number; give one such as 3")
    if recipe.threshold_allowed(threshold):
        return threshold
    if recipe.method in SNR_METHODS:
        raise PrunedropError(f"threshold {threshold:g} is no signal-to-noise threshold: method {recipe.method} "
                             f"prunes units whose SNR is below it, and an SNR is ≥ 0, so it prunes no unit; give one "
                             f"> 0, such as {recipe.threshold:g} (the run's recipe)")
    clip = recipe.log_alpha_clip
    what = "every weight" if threshold <= -clip else "no weight"
    raise PrunedropError(f"threshold {threshold:g} lies outside (−{clip:g}, {clip:g}), the range log α is clipped "
                         f"to: it prunes {what} of the converted layers; give one inside it, such as "
                         f"{recipe.threshold:g} (the run's recipe)")


def _run_threshold(folder: RunFolder, recipe: Recipe) -> tuple[float, str]:
    """The threshold the run chose (its report.json's), else, for a run without a readable report (interrupted), the
    recipe's; and the line that says which."""
    from .report import load_report

    reason = f"{folder.report_json.name} is missing (the run did not finish)"
    if folder.report_json.is_file():
        try:
            chosen = load_report(folder.path).get("threshold")
        except PrunedropError as e:
            reason = f"its {folder.report_json.name} is unreadable ({e.message[:120]})"
        else:
            if isinstance(chosen, (int, float)) and not isinstance(chosen, bool):
                try:
                    threshold = _checked_threshold(float(chosen), recipe)
                except PrunedropError:
                    reason = f"its {folder.report_json.name} holds a threshold ({chosen!r}) the method cannot take"
                else:
                    return threshold, (f"threshold {threshold:g}: the one the run chose (its "
                                       f"{folder.report_json.name}); --threshold chooses another")
            else:
                reason = f"its {folder.report_json.name} records no threshold that is a number"
    return float(recipe.threshold), (f"threshold {recipe.threshold:g}: the run's recipe's, as {reason}; --threshold "
                                     "chooses another")


def _check_same_inputs(info: dict[str, Any], data: DataBundle, log: Callable[[str], None]) -> None:
    """The run's model file and data (as run.json's identity records them) are the ones given: the metric, the
    calibration and the quantization's budget would otherwise be measured on other data than the run's."""
    from .runfolder import check_identity, data_fingerprint, data_sizes, model_sha256

    current: dict[str, Any] = {"data_sizes": data_sizes(data), "data_fingerprint": data_fingerprint(data)}
    model_path = info.get("model_path")
    if isinstance(model_path, str) and os.path.exists(model_path):
        try:
            current["model_sha256"] = model_sha256(model_path)
        except OSError:
            pass  # the loader read it a moment ago; a file that went away since is not this check's to report
    check_identity(info, current, action="export", warn=log,
                   advice="the metric and the budget would be measured on other inputs than the run's: restore the "
                          "model file and data that run.json names, or compress them in a new run")
