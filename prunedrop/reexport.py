"""``prunedrop export RUN_DIR``: a run's variational checkpoint thresholded again and exported, without retraining
(the stages prune → slim → export of :mod:`prunedrop.stages`, replayed on the checkpoint)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .convert import to_variational
from .data import DataBundle
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

    ``model`` is the original plain model (loaded the way the run loaded it). The checkpoint may come from
    a finished or an interrupted run. Masked fine-tuning after thresholding is not replayed. ``output`` must
    be a new file (an existing regular file only with ``overwrite``), and never a file the run depends on
    (:func:`prunedrop.safety.check_output_file`). ``quantize`` (``int8`` or ``bayes``): ``output`` is the quantized
    file, checked against the recipe's budget as ``compress`` checks it (the float file is not kept).
    """
    from .runfolder import export_protected_files
    from .safety import check_output_file
    from .storage import load_checkpoint

    folder = RunFolder(run_dir)
    output = check_output_file(output, overwrite=overwrite,
                               protected=export_protected_files(
                                   folder.path, folder.read_info() if folder.run_info.is_file() else {}))
    if threshold is not None and not math.isfinite(threshold):
        raise PrunedropError(f"threshold {threshold} is not a finite number; give one such as 3")
    if not folder.variational_checkpoint.is_file():
        raise PrunedropError(f"{run_dir} holds no {VARIATIONAL_CHECKPOINT}: the run did not finish an epoch yet")
    state = load_checkpoint(folder.variational_checkpoint, require=("model",))
    threshold = recipe.threshold if threshold is None else threshold
    if quantize not in ("none", "int8", "bayes"):
        raise PrunedropError(f"quantize must be none, int8 or bayes, not {quantize!r}")
    example = data.example_batch(min(PARITY_SAMPLES, recipe.eval_batch_size))
    # the budget is measured from the original model, before the conversion swaps its layers
    metric_before, scores_before = None, None
    if quantize != "none":
        measured, scores = measure_all(model.cpu(), data, recipe, torch.device("cpu"))
        metric_before, scores_before = measured["val"], scores["val"]
    variational = to_variational(model.cpu(), recipe, example_input=example[:2])
    try:
        variational.load_state_dict(state["model"])
    except RuntimeError:
        raise PrunedropError(f"checkpoint does not fit the model "
                             f"({state_mismatch(variational.state_dict(), state['model'])})") from None
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
        exported, parity = export_verified(final, example, Path(output), recipe, metadata)
        path, num_bytes = exported.path, exported.num_bytes
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="prunedrop-export-") as tmp:
            exported, parity = export_verified(final, example, Path(tmp) / MODEL_ONNX, recipe, metadata)
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
