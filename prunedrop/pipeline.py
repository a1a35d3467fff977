"""``compress()``: the stages of :mod:`prunedrop.stages`, called in order and nothing else.

    load ─► convert ─► fine-tune ─► select ─► prune ─► fine-tune pruned ─► slim ─► evaluate ─► export
         ─► report

Each stage is a public function in its own module with a typed result whose ``to_dict()`` is its part of
report.json; :class:`prunedrop.runfolder.RunFolder` names every file of the output folder. Where units were pruned,
the noise-free fine-tuning runs on the slim model already (the slim stage then removes attention heads and embedding
rows only). Loading (model file, data spec, recipe file) is the caller's: the CLI does it with :mod:`prunedrop.storage`,
:mod:`prunedrop.data` and :mod:`prunedrop.recipes`, a Python user with their own objects. Everything the run writes
goes to ``out_dir``, atomically.

The names other modules and scripts imported from here before the stages had modules of their own are re-exported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import distributed
from .data import DataBundle, fit_inputs
from .errors import PrunedropError
from .recipes import Recipe
from .reexport import ReexportResult, reexport
from .runfolder import (
    MASKED_CHECKPOINT,
    MODEL_ONNX,
    ORIGINAL_ONNX,
    QUANTIZED_ONNX,
    RUN_INFO,
    VARIATIONAL_CHECKPOINT,
    RunFolder,
    prepare_output_dir,
    read_run_info,
    start_run,
    write_run_info,
)
from .stages import (
    assemble_report,
    convert,
    evaluate_compressed,
    export_compressed,
    finetune_pruned,
    finetune_variational,
    fold,
    measure_original,
    prune_variational,
    render_report,
    select_threshold,
    slim_pruned,
    with_finetune_rate,
    write_run_report,
)
from .stages.baseline import Measured, measure_before_files
from .stages.budget import check_budget, fixed_beta_budget_line, over_budget, target_outcome
from .stages.common import PARITY_SAMPLES
from .stages.evaluation import budget_judge
from .stages.reporting import run_files
from .stages.slimming import slim_multiple
from .stages.variational import autopilot_line
from .storage import unwrap_compiled
from .task import fit_task
from .train import check_precision, resolve_device

__all__ = [
    "MASKED_CHECKPOINT", "MODEL_ONNX", "ORIGINAL_ONNX", "PARITY_SAMPLES", "QUANTIZED_ONNX", "RUN_INFO",
    "VARIATIONAL_CHECKPOINT", "CompressResult", "Measured", "ReexportResult", "autopilot_line", "check_budget",
    "check_before_files", "compress", "fixed_beta_budget_line", "measure_before_files", "over_budget",
    "prepare_output_dir", "read_run_info", "reexport", "render_report", "start_run", "target_outcome",
    "write_run_info",
]


@dataclass
class CompressResult:
    """What :func:`compress` made."""

    model: nn.Module
    """The compressed plain model (CPU, eval mode)."""
    report: dict[str, Any]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


def check_before_files(model: nn.Module, data: DataBundle, recipe: Recipe) -> None:
    """What :func:`compress` checks besides :func:`~prunedrop.task.fit_task` that reads only the model, the data
    and the recipe, so that it fails before any file (from the CLI and from Python alike): latency batches that
    cannot fit in memory, a precision the device cannot run, a training set without a length (the ELBO needs it), a
    training DataLoader in a data-parallel run, and a model with nothing to convert. The original's measurement,
    which reads every validation and test sample and exports it to ONNX (checked in onnxruntime), is
    :func:`measure_before_files`."""
    from torch.utils.data import DataLoader

    from .convert import to_variational
    from .safety import check_latency_batches

    check_latency_batches(recipe.latency_batch_sizes, data.input_shape, recipe.latency_runs)
    check_precision(recipe.precision, resolve_device(recipe.device))  # before any file, not at the first step
    _ = data.num_train  # an IterableDataset's DataLoader: refused here, not at the first epoch
    if distributed.world_size() > 1 and isinstance(data.train, DataLoader):
        raise PrunedropError("distributed fine-tuning needs a map-style training Dataset to shard, not a "
                             "DataLoader; return datasets from the python: data function, or run one process")
    to_variational(model, recipe, dry_run=True, example_input=data.example_batch(2))


def compress(
    model: nn.Module,
    data: DataBundle,
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    source: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    measured: Measured | None = None,
    checked: bool = False,
) -> CompressResult:
    """Compress ``model`` on ``data`` with ``recipe``; write model, ONNX file and report into ``out_dir``.

    The model's outputs are checked against the data's labels before anything is written
    (:func:`prunedrop.task.fit_task`: a mistake raises :class:`prunedrop.errors.PrunedropError`), and a one-logit
    binary or a multi-label classifier given ``loss: cross_entropy`` is trained with binary cross-entropy
    (``log`` says so; the report's recipe records it).

    ``resume`` continues from the checkpoints of an interrupted run in the same ``out_dir``. ``source``
    (how the model was loaded: file name, ``--arch``) is recorded in the report so that
    ``prunedrop export RUN_DIR`` can rebuild the variational model later. ``measured``: what
    :func:`measure_before_files` measured on this model and data (the CLI measures before it writes run.json);
    without it, it is measured here, before the folder is made. ``checked``: the caller has run
    :func:`~prunedrop.task.fit_task` (its recipe is the one given) and :func:`check_before_files` on this model and
    data, as the CLI does before run.json; they are not run again.

    A ``torch.compile``d ``model`` or submodule runs uncompiled (:func:`~prunedrop.storage.unwrap_compiled`, in
    place; ``log`` says so): what is returned is plain PyTorch.
    """
    # a compiled model or submodule runs uncompiled (its layers are swapped, counted and exported one by one)
    model = unwrap_compiled(model, log if distributed.is_main() else None).cpu().eval()
    data, fitted = fit_inputs(model, data)  # token ids read as floats by a file reader (the CLI has done it already)
    if not checked:  # the model's outputs against the data's labels, the loss they call for: before any file
        recipe = fit_task(model, data, recipe, log if distributed.is_main() else None)
        check_before_files(model, data, recipe)
    if measured is None and distributed.is_main():  # every validation and test sample, before any file
        measured = measure_before_files(model, data, recipe)
    try:
        folder = RunFolder(out_dir).create()
        torch.manual_seed(recipe.seed)
        device = resolve_device(recipe.device)
        reparametrized = fold(model, log if distributed.is_main() else (lambda _: None))
        if fitted and distributed.is_main():
            log(fitted)
        example = data.example_batch(min(PARITY_SAMPLES, recipe.eval_batch_size))
        # in a data-parallel run, rank 0 alone measures the original, thresholds, exports and reports
        baseline = (measure_original(model, data, recipe, folder, example, log, measured=measured)
                    if distributed.is_main() else None)
    except BaseException:
        if measured is not None:  # stopped before the original's export was moved in: no temporary folder left
            measured.discard()
        raise
    run = {"resume": resume, "progress": progress, "log": log}
    converted = convert(model, recipe, example, log, reparametrized)
    trained = finetune_variational(converted, data, recipe, device, folder, **run)
    if baseline is None:
        distributed.barrier()  # this rank waits for rank 0
        return CompressResult(model=converted.model.cpu().eval(), report={}, out_dir=folder.path, files={})
    recipe = with_finetune_rate(recipe, data, log, trained.train.autopilot)
    selection = select_threshold(converted, baseline, data, recipe, device, folder, example, **run)
    pruned = prune_variational(converted.model, selection.threshold, recipe, log, pruned=selection.pruned, data=data)
    tuned = selection.finetuned
    nothing_pruned = pruned.result.kept_fraction == 1.0
    if tuned is None and nothing_pruned and recipe.finetune_epochs_for(data.num_train) > 0:
        # nothing for the fine-tuning to win back: the thresholded model is what the sweep measured (and what the
        # budget judges below); a short SBP run that pruned nothing trained 39 more epochs for an unchanged model
        log("noise-free fine-tuning skipped: nothing was pruned, so there is nothing for it to win back")
    elif tuned is None and recipe.finetune_epochs_for(data.num_train) > 0:
        judge = budget_judge(baseline, data, recipe) if recipe.automatic and recipe.max_metric_drop is not None \
            else None
        tuned = finetune_pruned(pruned.result, data, recipe, device, example, folder.masked_checkpoint,
                                normalised=converted.normalised, judge=judge, **run)
    slimmed = slim_pruned(pruned.result.model if tuned is None else tuned.model, pruned.result.unit_masks, example,
                          log, slim_multiple(recipe), slimmed=None if tuned is None else tuned.slimmed)
    evaluation = evaluate_compressed(slimmed.model, baseline, selection, data, recipe, log)
    exported = export_compressed(slimmed.model, baseline, evaluation, selection.threshold, pruned.bits, data,
                                 recipe, folder, example, log)
    report = assemble_report(slimmed.model, [baseline, converted, trained, selection, pruned, tuned, slimmed,
                                             evaluation, exported], baseline=baseline, evaluation=evaluation,
                             exported=exported, recipe=recipe, data=data, example=example, device=device,
                             source=source)
    write_run_report(report, selection, evaluation, recipe, folder, log)
    distributed.barrier()
    return CompressResult(model=slimmed.model, report=report, out_dir=folder.path, files=run_files(folder, exported))
