"""Stage 1, convert: the chosen layers become their variational counterparts (:func:`prunedrop.convert.to_variational`),
and the log says what was converted, folded, tied and left alone."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..convert import ConversionSummary, fold_parametrizations, prunes_units_only, to_variational, unit_noise
from ..recipes import Recipe
from ..slim import unremovable_layers
from .common import some


@dataclass
class Converted:
    """The variational model and what the conversion did."""

    model: nn.Module
    summary: ConversionSummary

    @property
    def normalised(self) -> list[str]:
        """The convolutions whose BatchNorm joined their unit noise (``batchnorm_noise: after``)."""
        return [conv for conv, _ in self.summary.normalised]

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return {"conversion": {"converted": s.converted, "excluded": s.excluded, "left_alone": s.left_alone,
                               "tied": s.tied, "batchnorm_folded": s.folded, "batchnorm_noise_after": s.normalised,
                               **({"unremovable": s.unremovable} if s.unremovable else {}),
                               **({"noise_per_position": s.per_position} if s.per_position else {}),
                               **({"reparametrized": s.reparametrized} if s.reparametrized else {}),
                               **({"notes": s.notes} if s.notes else {})}}


def unremovable_note(method: str, stuck: dict[str, str]) -> str:
    """One line for converted layers whose units slimming can never remove
    (:func:`~prunedrop.slim.unremovable_layers`), said before any training rather than after it."""
    shown = "; ".join(f"{name}: {why}" for name, why in list(stuck.items())[:4])
    more = f"; and {len(stuck) - 4} more" if len(stuck) > 4 else ""
    advice = ("its per-weight noise still prunes their single weights" if not prunes_units_only(method) else
              "keep_unremovable: true leaves them dense, sparse_vd prunes their single weights")
    return (f"{method} cannot remove any unit of {len(stuck)} converted layer(s), whatever it prunes ({shown}{more}): "
            f"their pruned units stay in the model as zeros, which makes it no smaller or faster there ({advice})")


def fold(model: nn.Module, log: Callable[[str], None]) -> list[str]:
    """Fold ``model``'s parametrized weights into plain ones before anything measures it
    (:func:`~prunedrop.convert.fold_parametrizations`: the original's ONNX export cannot hold ``spectral_norm``'s
    ``vdot``), and say so."""
    folded = fold_parametrizations(model)
    if folded:
        log(f"folded {len(folded)} parametrized weight(s) into plain ones (the same outputs; the pruned model stores "
            "plain weights, and the fine-tuning does not keep the parametrization's constraint): " + some(folded))
    return folded


def convert(model: nn.Module, recipe: Recipe, example: torch.Tensor, log: Callable[[str], None],
            reparametrized: list[str] | None = None) -> Converted:
    """Convert ``model`` (in place, as :func:`~prunedrop.convert.to_variational` does) and log the summary;
    ``reparametrized``: what :func:`fold` folded before, for the report."""
    summary = ConversionSummary(reparametrized=list(reparametrized or []))
    blocked: dict[str, str] = {}
    if unit_noise(recipe.method):
        # trial slims of a copy: a second on small models, a minute on one of hundreds of coupled layers (DPN-68)
        log("checking which layers' units slimming can remove (trial slims of a copy)")
        t0 = time.perf_counter()
        blocked = unremovable_layers(model, example[:2])
        if (took := time.perf_counter() - t0) >= 10:
            log(f"checked in {took:.0f} s")
    variational = to_variational(model, recipe, summary=summary, example_input=example[:2], unremovable=blocked)
    stuck = {name: why for name, why in blocked.items() if name in summary.converted}
    if stuck:
        summary.notes.append(unremovable_note(recipe.method, stuck))
    log(f"converted {len(summary.converted)} layer(s) to {recipe.method}: {', '.join(summary.converted)}")
    if summary.folded:
        log(f"folded {len(summary.folded)} BatchNorm(s) into their convolutions (batchnorm_noise: fold): "
            + some([f"{bn}→{conv}" for conv, bn in summary.folded]))
    if summary.normalised:
        log(f"unit noise on the output of {len(summary.normalised)} BatchNorm(s), folded at thresholding "
            "(batchnorm_noise: after): " + some([f"{conv}+{bn}" for conv, bn in summary.normalised]))
    if summary.per_position:
        log(f"unit noise drawn per position before {len(summary.per_position)} InstanceNorm(s), which would cancel a "
            "draw shared over the positions: " + some([f"{layer}+{norm}" for layer, norm in summary.per_position]))
    for note in summary.notes:
        log(f"note: {note}")
    for group in summary.tied:
        log(f"one noise per channel (tie_residual): {', '.join(group)}")
    if summary.left_alone:
        log("left alone: " + ", ".join(f"{k} ({v})" for k, v in summary.left_alone.items()))
    return Converted(model=variational, summary=summary)
