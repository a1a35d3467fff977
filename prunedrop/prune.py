"""Decide masks from thresholds and turn a trained variational model into a deterministic one."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .convert import to_deterministic, variational_layers


@dataclass
class PruneResult:
    """The deterministic model and what was kept."""

    model: nn.Module
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    """Parameter name (``fc1.weight``) → boolean keep mask, for every pruned parameter."""
    kept: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Layer name → (kept entries, total entries)."""

    @property
    def kept_fraction(self) -> float:
        kept = sum(k for k, _ in self.kept.values())
        total = sum(t for _, t in self.kept.values())
        return kept / total if total else 1.0


def set_thresholds(model: nn.Module, threshold: float) -> nn.Module:
    """Give every variational layer the same pruning threshold (log α for sparse VD)."""
    for layer in variational_layers(model).values():
        layer.threshold = float(threshold)
    return model


@torch.no_grad()
def keep_masks(model: nn.Module, threshold: float | None = None) -> dict[str, torch.Tensor]:
    """Parameter name → keep mask of each variational layer's weight."""
    return {f"{name}.weight" if name else "weight": layer.keep_mask(threshold).detach().clone()
            for name, layer in variational_layers(model).items()}


@torch.no_grad()
def prune(model: nn.Module, threshold: float | None = None) -> PruneResult:
    """Threshold every variational layer and replace it by a plain layer with the pruned weights zero.

    ``threshold`` overrides the layers' own thresholds (from the recipe) when given. The returned model is
    in eval mode and computes exactly what the variational model computes in eval mode.
    """
    if threshold is not None:
        set_thresholds(model, threshold)
    masks = keep_masks(model)
    kept = {name[: -len(".weight")] if name.endswith(".weight") else name: (int(m.sum()), m.numel())
            for name, m in masks.items()}
    dense = to_deterministic(model).eval()
    return PruneResult(model=dense, masks=masks, kept=kept)
