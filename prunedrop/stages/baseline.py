"""Stage 0, load: the original model measured before anything changes it (its metric, its ONNX file, whose parity
with the model is checked in seconds rather than after the whole training). Both are measured before the run folder
is made (:func:`measure_before_files`: the ONNX file in a temporary folder), and :func:`measure_original` moves the
file in as original.onnx."""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_write_bytes
from ..convert import copy_for_folding, fold_parametrizations, parametrized_tensors
from ..data import DataBundle
from ..data.checks import IGNORED
from ..data.token_ids import checked_token_ids
from ..errors import PrunedropError
from ..export import ExportResult, export_onnx, verify_onnx
from ..metrics import (
    NO_LABELS,
    LabelCounts,
    TargetSpread,
    absent_class_note,
    chance_note,
    mean_note,
    sample_scores,
    scores_metric,
    seen_validation_note,
)
from ..recipe_groups import is_classification
from ..recipes import Recipe
from ..runfolder import ORIGINAL_ONNX, RunFolder
from ..safety import check_deterministic, check_model_structure
from ..train import metric_name
from .common import PARITY_SAMPLES


@dataclass
class Baseline:
    """The original model and what was measured on it."""

    model: nn.Module
    """A copy of the original (CPU, eval mode): the conversion trains the caller's weights in place."""
    metric: dict[str, float]
    """The recipe's metric: ``val`` and, where the data has a test split, ``test``."""
    onnx: ExportResult
    """original.onnx."""
    timings: dict[str, float] = field(default_factory=dict)
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per split, the metric per sample (:func:`prunedrop.stages.common.measure_all`): the paired standard error of
    the change."""
    notes: list[str] = field(default_factory=list)
    """Warnings about the original model itself (:func:`~prunedrop.metrics.chance_note`); logged, and kept in
    report.json's ``original_notes``."""

    def to_dict(self) -> dict[str, Any]:
        return {"test_metric": {"before": self.metric.get("test")}, "timings": self.timings,
                **({"original_notes": list(self.notes)} if self.notes else {})}


@dataclass
class Measured:
    """The original's metric on the validation and test data, measured before any file is written
    (:func:`measure_before_files`)."""

    metric: dict[str, float]
    """The recipe's metric: ``val`` and, where the data has a test split, ``test``."""
    scores: dict[str, torch.Tensor]
    """Per split, the metric per sample (:func:`prunedrop.metrics.sample_scores`)."""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    """Warnings about the model: a classifier no better than its most frequent label
    (:func:`~prunedrop.metrics.chance_note`)."""
    onnx: ExportResult | None = None
    """The original exported to ONNX in a temporary folder and checked against the model in onnxruntime;
    :func:`measure_original` moves the file into the run folder as original.onnx (None once moved, or for a
    ``Measured`` made without one: then it exports the original there)."""
    scratch: tempfile.TemporaryDirectory | None = field(default=None, repr=False)
    """The temporary folder holding :attr:`onnx`, deleted once the file is moved (or when this is garbage)."""

    def discard(self) -> None:
        """Delete the exported file and its temporary folder now: the run stopped before :func:`measure_original`
        moved it in (a later :func:`measure_original` with this ``Measured`` exports the original again)."""
        scratch, self.onnx, self.scratch = self.scratch, None, None
        if scratch is not None:
            scratch.cleanup()


def measure_before_files(model: nn.Module, data: DataBundle, recipe: Recipe,
                         example: torch.Tensor | None = None) -> Measured:
    """The original ``model``'s metric on every validation and test sample (CPU, eval mode), measured before the run
    folder is made, so that what only this pass finds is one line with no file written: every label ignored (-100),
    outputs that are not finite (NaN or inf: a ``log`` of values that can be negative), a token id beyond an
    embedding's rows (:func:`~prunedrop.data.token_ids.checked_token_ids`). It also counts the validation labels
    (or the targets' spread), for a note on a model no better than always predicting the most frequent label (or
    the targets' mean): an untrained model. Then the original is exported to ONNX in a temporary folder and the
    file checked against it on ``example`` (by default the first validation inputs, as :func:`compress` takes
    them): an operator neither exporter has, a file onnxruntime cannot run or one that computes something else is
    one line here too, where it stopped the run after run.json. :func:`measure_original` takes the result over
    (the file moved in as original.onnx), so the data is read, and the original exported, once."""
    t0 = time.perf_counter()
    metric: dict[str, float] = {}
    scores: dict[str, torch.Tensor] = {}
    labels = TargetSpread() if recipe.loss == "mse" else LabelCounts(recipe.loss)
    for split in ["val"] + (["test"] if data.test is not None else []):
        name = "validation" if split == "val" else split
        count = _NonFinite(recipe.loss)
        handle = model.register_forward_hook(count)
        loader = data.loader(split, recipe.eval_batch_size)
        try:
            with checked_token_ids(model, f"the {name} inputs of {data.name}"):
                scores[split] = sample_scores(model, labels.through(loader) if split == "val" else loader,
                                              loss=recipe.loss, device=torch.device("cpu"))
        except PrunedropError as e:
            if e.message == NO_LABELS:  # which split
                raise PrunedropError(f"every label of the {name} data is {IGNORED} (a label to ignore): there is "
                                     "nothing to measure") from None
            if not count.bad:
                raise
        finally:
            handle.remove()
        if count.bad:
            raise PrunedropError(
                f"the model's outputs are not finite (NaN or inf) on {count.bad} of the {count.seen} {name} samples "
                "(in eval mode, before any change): a log, square root or division in its forward of values that "
                "can be 0 or negative? prunedrop cannot train or measure it; make its outputs finite for every input")
        metric[split] = scores_metric(scores[split])
    if isinstance(labels, TargetSpread):
        note = mean_note(metric["val"], labels.constant_error())
    else:
        note = chance_note(metric["val"], labels.counts, labels=labels.labels, scores=scores["val"]) \
            if labels.usable else None
    absent = absent_class_note(data.train, data.val, data.test) if is_classification(recipe.loss) else None
    seen = seen_validation_note(scores.get("val"), scores.get("test"), recipe.loss, split_off=data.val_split_off)
    if example is None:
        example = data.example_batch(min(PARITY_SAMPLES, recipe.eval_batch_size))
    exported, scratch = _export_checked(model, example, recipe)
    return Measured(metric=metric, scores=scores, seconds=time.perf_counter() - t0,
                    notes=[n for n in (note, absent, seen) if n], onnx=exported, scratch=scratch)


def _export_checked(model: nn.Module, example: torch.Tensor, recipe: Recipe,
                    ) -> tuple[ExportResult, tempfile.TemporaryDirectory]:
    """``model`` exported to ORIGINAL_ONNX in a new temporary folder and checked against it in onnxruntime
    (:func:`check_parity_before_training`); a failure leaves no folder, and its message names the file as the
    original's export rather than a temporary path. Parametrized weights are exported as :func:`compress` exports
    them, folded (``spectral_norm``'s ``vdot`` has no ONNX equivalent): a folded copy is exported, the model is
    left as it is."""
    scratch = tempfile.TemporaryDirectory(prefix="prunedrop-original-")
    path = Path(scratch.name) / ORIGINAL_ONNX
    try:
        if parametrized_tensors(model):
            model = copy_for_folding(model)
            fold_parametrizations(model)
        exported = export_onnx(model, example[:2], path, opset=recipe.onnx_opset, sparse=False,
                               exporter=recipe.onnx_exporter)
        check_parity_before_training(exported, model, example, recipe)
    except PrunedropError as e:
        scratch.cleanup()
        if isinstance(e.__cause__, OSError):  # the temporary folder's disk, not an output the user chose
            reason = e.__cause__.strerror or type(e.__cause__).__name__
            raise PrunedropError(f"cannot write the original's ONNX export to the temporary folder "
                                 f"{Path(scratch.name).parent}: {reason}; free space there, or point TMPDIR at a "
                                 "folder with room") from None
        raise e.naming(path, f"the original's ONNX export ({ORIGINAL_ONNX})") from None
    except BaseException:
        scratch.cleanup()
        raise
    return exported, scratch


def _moved_in(measured: Measured, target: Path) -> ExportResult:
    """``measured.onnx`` moved to ``target`` (renamed where the two share a file system, else copied atomically);
    its temporary folder is deleted."""
    assert measured.onnx is not None
    source = Path(measured.onnx.path)
    try:
        try:
            os.replace(source, target)
        except OSError:  # another file system (the temporary folder's): copied, then written in one step
            atomic_write_bytes(target, source.read_bytes())
    finally:
        if measured.scratch is not None:
            measured.scratch.cleanup()
    exported = dataclasses.replace(measured.onnx, path=target)
    measured.onnx, measured.scratch = None, None  # a second compress() with this Measured exports again
    return exported


class _NonFinite:
    """A forward hook on the whole model that counts the samples whose outputs are not finite: NaN or +inf
    anywhere, or -inf (with cross-entropy, -inf in every output of a sample or position: a logit of -inf masks a
    class and is fine while another is finite)."""

    def __init__(self, loss: str) -> None:
        self.loss = loss
        self.bad = 0
        self.seen = 0

    def __call__(self, module: nn.Module, args: Any, out: Any) -> None:
        if not isinstance(out, torch.Tensor) or out.dim() == 0 or not out.is_floating_point():
            return
        self.seen += out.shape[0]
        if bool(torch.isfinite(out).all()):
            return
        if self.loss == "cross_entropy" and out.dim() >= 2:
            bad = out.isnan() | out.isposinf() | out.isneginf().all(dim=1, keepdim=True)
        else:
            bad = ~torch.isfinite(out)
        self.bad += int(bad.reshape(out.shape[0], -1).any(dim=1).sum())


def measure_original(model: nn.Module, data: DataBundle, recipe: Recipe, folder: RunFolder, example: torch.Tensor,
                     log: Callable[[str], None], measured: Measured | None = None) -> Baseline:
    """Evaluate the original and export it to ONNX, the file checked against it (or take ``measured``, what
    :func:`measure_before_files` measured and exported before the folder was made), and move that file into the
    run folder as original.onnx."""
    t0 = time.perf_counter() - (measured.seconds if measured is not None else 0.0)
    original = copy.deepcopy(model)
    check_model_structure(original, "the model")
    with torch.no_grad():
        outputs = original.eval()(example)
    check_deterministic(original, example, first=outputs)
    measured = measured if measured is not None else measure_before_files(original, data, recipe, example)
    metric, scores = measured.metric, measured.scores
    if measured.onnx is not None:
        exported = _moved_in(measured, folder.original_onnx)
    else:  # a Measured made without the export (or whose file an earlier run moved in already): exported here
        measured.onnx, measured.scratch = _export_checked(original, example, recipe)
        exported = _moved_in(measured, folder.original_onnx)
    if exported.fallback:
        log(f"ONNX: the TorchScript exporter cannot export the model ({exported.fallback}); exported with the dynamo "
            "exporter (onnx_exporter: auto)")
    timings = {"baseline_s": time.perf_counter() - t0}
    log(f"original model: {metric_name(recipe.loss)} {metric['val']:.4g} on validation data, "
        f"ONNX {exported.num_bytes:,} bytes")
    notes = list(measured.notes)
    for note in [probabilities_note(outputs, recipe.loss), *notes]:
        if note:
            log(f"warning: {note}")
    return Baseline(model=original, metric=metric, onnx=exported, timings=timings, scores=scores, notes=notes)


def probabilities_note(outputs: torch.Tensor, loss: str) -> str | None:
    """A note for a classifier whose ``outputs`` are probabilities (a final softmax: every row non-negative and
    summing to 1), which the cross-entropy reads as logits: the argmax, the accuracy and the budget are the same,
    but the loss is flattened and the calibration figures (ECE, NLL) describe a softmax of probabilities. For
    ``binary_cross_entropy`` (every output in [0, 1]: a final sigmoid) the predictions themselves are wrong."""
    if not isinstance(outputs, torch.Tensor):
        return None
    out = outputs.detach().float()
    if loss == "binary_cross_entropy":
        if out.numel() < 8 or not bool(((out >= 0) & (out <= 1)).all()):
            return None
        return ("every output of the model lies in [0, 1] on the example batch: probabilities (a final sigmoid?), "
                "which binary cross-entropy reads as logits, so that every label counts as predicted 1 (a logit "
                "above 0) and the accuracy is the share of 1s in the labels; return the logits (drop the final "
                "sigmoid) for prunedrop, and apply the sigmoid after it")
    if loss != "cross_entropy":
        return None
    if out.dim() != 2 or out.shape[1] < 2 or not bool((out >= 0).all()):
        return None
    if not torch.allclose(out.sum(dim=1), torch.ones(out.shape[0]), atol=1e-4):
        return None
    return ("the model returns probabilities (a final softmax: its rows sum to 1), which the cross-entropy reads "
            "as logits: accuracy and the budget are unaffected, but the training loss is flattened (a softmax over "
            "values in [0, 1] is never confident) and the calibration figures (ECE, NLL) are not the model's; "
            "return the logits (drop the final softmax) for prunedrop, and apply the softmax after it")


def check_parity_before_training(exported: ExportResult, original: nn.Module, example: torch.Tensor,
                                 recipe: Recipe) -> None:
    """The parity check on the original model, before any fine-tuning: a model whose ONNX export does not
    compute what it computes fails in seconds, not after the whole training."""
    try:
        verify_onnx(exported.path, original, example, atol=recipe.parity_atol)
    except PrunedropError as e:
        raise type(e)(f"before fine-tuning, the original model: {e.message}") from None
