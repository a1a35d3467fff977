"""Stage 6, slim: pruned units leave every layer they touch (per-unit methods; per-weight sparsity removes no whole
unit), then silent attention heads and zero embedding rows go (any method: read from the weights)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..slim import SlimResult, remove_heads_and_rows, slim


@dataclass
class Slimmed:
    """The slim model and what slimming removed (``result`` is None where nothing was removed)."""

    model: nn.Module
    result: SlimResult | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        part: dict[str, Any] = {"timings": self.timings}
        if r is not None:
            part["slim"] = {"removed": {n: list(v) for n, v in r.removed.items()},
                            "heads": {n: list(v) for n, v in r.heads.items()},
                            "embedding_rows": {n: list(v) for n, v in r.rows.items()},
                            "max_abs_diff": r.max_abs_diff, "notes": r.notes}
        return part


def remove_pruned_units(model: nn.Module, unit_masks: dict[str, torch.Tensor], example: torch.Tensor,
                        log: Callable[[str], None], channel_multiple: int) -> SlimResult:
    """Remove the pruned units physically (:func:`prunedrop.slim.slim`) and log what went."""
    slimmed = slim(model, unit_masks, example, channel_multiple=channel_multiple)
    shrunk = [f"{n} {a}→{b}" for n, (a, b) in slimmed.removed.items() if a != b]
    log(f"slimmed: {', '.join(shrunk) or 'no unit could be removed'} (max abs diff {slimmed.max_abs_diff:.2g})")
    for note in slimmed.notes:
        log(f"note: {note}")
    return slimmed


def slim_pruned(model: nn.Module, unit_masks: dict[str, torch.Tensor], example: torch.Tensor,
                log: Callable[[str], None], channel_multiple: int, slimmed: SlimResult | None = None) -> Slimmed:
    """Remove the pruned units of ``model`` (:func:`remove_pruned_units`), then silent attention heads and zero
    embedding rows. ``slimmed``: the units were removed before the noise-free fine-tuning already
    (:func:`prunedrop.stages.pruned_finetune.finetunes_slim`); only the heads and rows are left to do."""
    model = model.cpu().eval()
    t0 = time.perf_counter()
    if slimmed is None and unit_masks:
        slimmed = remove_pruned_units(model, unit_masks, example, log, channel_multiple)
    if slimmed is not None:
        model = slimmed.model.eval()
    structures = remove_heads_and_rows(model, example)
    if slimmed is None and not structures.heads and not structures.rows:
        return Slimmed(model=model)
    if slimmed is None:
        slimmed = SlimResult(model=structures.model)
    slimmed.model = structures.model.eval()
    slimmed.heads, slimmed.rows = structures.heads, structures.rows
    slimmed.max_abs_diff = max(slimmed.max_abs_diff, structures.max_abs_diff)
    changed = [f"{n} {a}→{b} heads" for n, (a, b) in structures.heads.items() if a != b]
    changed += [f"{n} {a}→{b} rows" for n, (a, b) in structures.rows.items()]
    if changed:
        log(f"removed: {', '.join(changed)} (max abs diff {structures.max_abs_diff:.2g})")
    return Slimmed(model=slimmed.model, result=slimmed, timings={"slim_s": time.perf_counter() - t0})
