"""Stage 5, fine-tune pruned: the noise-free fine-tuning of what survived the threshold.

Where units were pruned, it runs on the slim model (:func:`finetunes_slim`), the masks carried over by reading the
weights (:func:`masks_after_slim`); BatchNorms that joined their unit noise come back, calibrated, for the fine-tuning
(:func:`attach_calibrated_batchnorm`) and are folded again afterwards.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..batchnorm import ATTACHED, attach_batchnorm, fold_attached
from ..data import DataBundle
from ..layers.base import along, weight_unit_axis
from ..metrics import metric_name
from ..prune import PruneResult
from ..recipes import GENTLE_FINETUNE, Recipe
from ..slim import WEIGHT_LAYERS, SlimResult, silent_units
from ..train import TrainResult, finetune_masked
from .common import some
from .slimming import remove_pruned_units, slim_multiple

#: training samples that calibrate the BatchNorms of the noise-free fine-tuning
CALIBRATION_SAMPLES = 4096


@dataclass
class FinetunedPruned:
    model: nn.Module
    """The fine-tuned model: slim already (where units were pruned, :func:`finetunes_slim`) or the masked
    full-size one."""
    train: TrainResult
    """The fine-tuning's TrainResult."""
    slimmed: SlimResult | None = None
    """What slimming before the fine-tuning did, when it ran."""
    timings: dict[str, float] = field(default_factory=dict)
    discarded: dict[str, float] | None = None
    """Where the fine-tuned model missed the budget that the model before the fine-tuning kept, and that one went on
    instead: both validation metrics (``finetuned``, ``before``)."""

    def to_dict(self) -> dict[str, Any]:
        return {"history": list(self.train.history), "timings": self.timings,
                **({"finetune_discarded": self.discarded} if self.discarded else {})}


def finetunes_slim(pruned: Any) -> bool:
    """Whether units were pruned and every mask is a Linear/Conv weight or bias, whose zeros :func:`masks_after_slim`
    can read back after slimming. Recurrent layers, attention projections and embeddings keep the masked path."""
    if not pruned.unit_masks:
        return False
    modules = dict(pruned.model.named_modules())
    for key in pruned.masks:
        name, _, attr = key.rpartition(".")
        if attr not in ("weight", "bias") or not isinstance(modules.get(name), WEIGHT_LAYERS):
            return False
    return True


def masks_after_slim(model: nn.Module, pruned: Any) -> dict[str, torch.Tensor]:
    """The masks of ``pruned`` (a :class:`prunedrop.prune.PruneResult`) carried over to its slim ``model``.

    Read from the weights, since slimming renumbers the units: an output unit of a masked layer whose weight row
    and bias are exactly 0 is a pruned unit that slimming had to keep (a residual channel that another producer of
    the stream keeps, a constant that zero padding makes position-dependent, width rounding), and an input column
    whose weights are all exactly 0 reads a channel kept only to round a width; with per-weight noise, each
    exactly-zero weight of a masked layer is a pruned weight. They stay at 0 during the fine-tuning that
    follows, as the masks kept them in the full-size model.
    """
    modules = dict(model.named_modules())
    masks: dict[str, torch.Tensor] = {}
    for name in dict.fromkeys(key.rsplit(".", 1)[0] for key in pruned.masks):
        layer = modules.get(name)
        if not isinstance(layer, WEIGHT_LAYERS):
            continue
        silent = silent_units(layer)
        keep = ~silent
        weight = layer.weight.detach()
        units = weight_unit_axis(layer)  # a transposed convolution's units: its weight's axis 1
        kept_weights = weight.ne(0) if pruned.per_weight else along(keep, weight, units).expand_as(weight).clone()
        if not pruned.per_weight and weight.dim() > 1:  # input columns slimming zeroed (a width rounded up)
            inputs = 1 - units
            kept_weights &= along(weight.movedim(inputs, 0).flatten(1).ne(0).any(dim=1), weight, inputs)
        if not bool(kept_weights.all()):
            masks[f"{name}.weight"] = kept_weights
        if layer.bias is not None and silent.any():
            masks[f"{name}.bias"] = keep
    return masks


def finetune_pruned(pruned: PruneResult, data: DataBundle, recipe: Recipe, device: torch.device,
                    example: torch.Tensor, checkpoint_path: Path | None, *, resume: bool, progress: bool,
                    log: Callable[[str], None], normalised: Sequence[str] = (),
                    stop_on: Callable[[dict[str, Any]], str | None] | None = None,
                    judge: Callable[[nn.Module], tuple[bool, float]] | None = None) -> FinetunedPruned:
    """The noise-free fine-tuning of what survived the threshold.

    Where units were pruned (SBP, group VD, the combined method), the model is slimmed first, so that the
    fine-tuning runs at the compressed size: the same function (the slim check holds it to the masked model) at a
    fraction of the work. The pruned units that slimming had to keep, and the pruned weights of per-weight noise,
    stay masked (:func:`masks_after_slim`). ``normalised``: the convolutions whose BatchNorm joined their unit noise
    (``batchnorm_noise: after``) and was folded at thresholding; they get a calibrated BatchNorm back for the
    fine-tuning (folded again afterwards), so that the network trains normalised, as it was trained. Per-weight
    noise alone (sparse VD) removes no unit, and the masks of recurrent layers, attention projections and embeddings
    are not read back from a slim model: there the masked model is fine-tuned as it is (:func:`finetunes_slim`).
    ``stop_on``: as in :func:`prunedrop.train.finetune_masked` (a probe that stops once within the budget).
    ``judge(model)``: whether a model keeps the budget, and its validation metric
    (:func:`prunedrop.stages.evaluation.budget_judge`); where the fine-tuned model misses it and the model before the
    fine-tuning keeps it, that one goes on (a sweep that judged the budget before the fine-tuning chose a threshold
    within it, the fine-tuning lost a validation sample more, and the run stopped with nothing exported).
    """
    t0 = time.perf_counter()
    model, masks, slimmed = pruned.model, pruned.masks, None
    if finetunes_slim(pruned):
        slimmed = remove_pruned_units(model.cpu().eval(), pruned.unit_masks, example, log, slim_multiple(recipe))
        model = slimmed.model
        masks = masks_after_slim(model, pruned)
    start = copy.deepcopy(model).cpu().eval() if judge is not None else None
    rebatchnorm = recipe.finetune_batchnorm or bool(normalised)
    if rebatchnorm:
        names = None if recipe.finetune_batchnorm else list(normalised)
        masks = {**masks, **attach_calibrated_batchnorm(model, data, recipe, device, log, names)}
    result = finetune_masked(model, masks, data, recipe, device=device, checkpoint_path=checkpoint_path,
                             resume=resume, progress=progress, parallel=False, stop_on=stop_on,
                             kept_fraction=pruned.kept_fraction, log=log)
    if rebatchnorm:
        fold_attached(model)
    model, discarded = model.cpu().eval(), None
    if start is not None and judge is not None:
        kept, after = judge(model)
        if not kept:
            kept_before, before = judge(start)
            if kept_before:
                name = metric_name(recipe.loss)
                log(f"the noise-free fine-tuning left the model over the budget (validation {name} {after:.4g}); the "
                    f"model before it keeps the budget ({before:.4g}) and goes on instead")
                model, discarded = start, {"finetuned": after, "before": before}
                if slimmed is not None:
                    slimmed.model = model
    return FinetunedPruned(model=model, train=result, slimmed=slimmed,
                           timings={"masked_finetune_s": time.perf_counter() - t0}, discarded=discarded)


def with_finetune_rate(recipe: Recipe, data: DataBundle, log: Callable[[str], None],
                       autopilot: dict[str, Any] | None = None) -> Recipe:
    """``recipe`` with its noise-free fine-tuning's learning rate decided (:meth:`Recipe.finetune_rate`). A null
    ``finetune_lr`` becomes the weights' ``lr`` where the budget is judged after the fine-tuning, each probe's
    fine-tuned model measured against it, and :data:`~prunedrop.recipes.GENTLE_FINETUNE` of it elsewhere. The
    autopilot's back-off of the weights' rate (``autopilot``: the variational phase's summary) is applied only where
    it found the weights' training itself costing accuracy with the noise not to blame (``overfit_backoffs``:
    a model trained past its best, which a fine-tuning at the recipe's rate overfits further); its other back-off
    answers the noisy phase near β's floor, and a pruned model's fine-tuning has to win back what pruning cost.
    Logged where a fine-tuning follows; the report records the rate."""
    if recipe.finetune_lr is not None:
        return recipe
    verified = recipe.budget_judges_finetuned(data.num_val)
    rate = recipe.finetune_rate(verified=verified)
    why = "the weights' learning rate: the budget is judged after it" if verified else \
        f"the weights' learning rate × {GENTLE_FINETUNE:g}: no probe judges the fine-tuned model against the budget"
    if autopilot and autopilot.get("overfit_backoffs") and float(autopilot.get("lr_scale", 1.0)) < 1.0:
        scale = float(autopilot["lr_scale"])
        rate *= scale
        why += f"; × {scale:g}, where the variational phase found training at the recipe's rate overfitting the model"
    if recipe.finetune_epochs_for(data.num_train) > 0:
        log(f"noise-free fine-tuning at learning rate {rate:g} ({why})")
    return recipe.replace(finetune_lr=rate)


def attach_calibrated_batchnorm(model: nn.Module, data: DataBundle, recipe: Recipe, device: torch.device,
                                log: Callable[[str], None], names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Calibrated BatchNorms for the noise-free fine-tuning (:func:`prunedrop.batchnorm.attach_batchnorm`), on up to
    :data:`CALIBRATION_SAMPLES` training samples: on the convolutions that have none (``finetune_batchnorm``), or
    on ``names``."""
    batches = []
    seen = 0
    for x, _ in data.loader("train", recipe.batch_size, shuffle=True, seed=recipe.seed):
        batches.append(x)
        seen += len(x)
        if seen >= CALIBRATION_SAMPLES:
            break
    model.to(device)
    masks = attach_batchnorm(model, batches, device=device, names=names)
    attached = [n for n, m in model.named_modules() if hasattr(m, ATTACHED)]
    log(f"fine-tuning with BatchNorm after {len(attached)} convolution(s) ({some(attached)}), folded back "
        "afterwards")
    return masks
