"""Decide masks from thresholds and turn a trained variational model into a deterministic one."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from .convert import to_deterministic, variational_layers


@dataclass
class PruneResult:
    """The deterministic model and what was kept."""

    model: nn.Module
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    """Parameter name (``fc1.weight``, ``fc1.bias``) → boolean keep mask of that parameter's shape, for every
    pruned parameter (per-unit families mask whole weight rows and their biases)."""
    unit_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    """Layer name → boolean keep mask over its output units, for layers with per-unit noise (for slimming)."""
    kept: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Layer name → (kept entries, total entries) of its ``keep_mask`` (weights or units)."""
    per_weight: bool = False
    """Whether ``kept`` counts weights (per-weight noise, alone or with per-unit noise) rather than units."""

    @property
    def kept_fraction(self) -> float:
        kept = sum(k for k, _ in self.kept.values())
        total = sum(t for _, t in self.kept.values())
        return kept / total if total else 1.0

    @property
    def kept_unit_fraction(self) -> float | None:
        """Share of the output units kept over the layers with per-unit noise; None when there are none."""
        total = sum(m.numel() for m in self.unit_masks.values())
        return sum(int(m.sum()) for m in self.unit_masks.values()) / total if total else None


def set_thresholds(model: nn.Module, threshold: float) -> nn.Module:
    """Give every variational layer the same pruning threshold (log α for sparse VD)."""
    for layer in variational_layers(model).values():
        layer.threshold = float(threshold)
    return model


@contextmanager
def thresholds_at(layers: Mapping[str, nn.Module], threshold: float) -> Iterator[None]:
    """``layers`` (name → variational layer) thresholded at ``threshold`` inside the block, each layer's own threshold
    restored after it, also when it raises."""
    own = {name: layer.threshold for name, layer in layers.items()}
    try:
        for layer in layers.values():
            layer.threshold = float(threshold)
        yield
    finally:
        for name, layer in layers.items():
            layer.threshold = own[name]


@torch.no_grad()
def keep_masks(model: nn.Module, threshold: float | None = None) -> dict[str, torch.Tensor]:
    """Layer name → keep mask: of the weight's shape (per-weight noise) or over output units (per-unit noise)."""
    return {name: layer.keep_mask(threshold).detach().clone() for name, layer in variational_layers(model).items()}


def _parameter_masks(model: nn.Module, threshold: float | None = None) -> tuple[dict[str, torch.Tensor],
                                                                                  dict[str, torch.Tensor]]:
    """(parameter-shaped masks by qualified parameter name, per-unit masks of the layers that remove units)."""
    params: dict[str, torch.Tensor] = {}
    units: dict[str, torch.Tensor] = {}
    for name, layer in variational_layers(model).items():
        prefix = f"{name}." if name else ""
        for local, mask in layer.parameter_keep_masks(threshold).items():
            params[prefix + local] = mask.detach().clone()
        unit = layer.unit_keep_mask(threshold)
        if unit is not None:
            units[name] = unit.detach().clone()
    return params, units


@torch.no_grad()
def prune(model: nn.Module, threshold: float | None = None) -> PruneResult:
    """Threshold every variational layer and replace it by a plain layer with the pruned weights zero.

    ``threshold`` overrides the layers' own thresholds (from the recipe) when given. The returned model is
    in eval mode and computes exactly what the variational model computes in eval mode.
    """
    if threshold is not None:
        set_thresholds(model, threshold)
    layer_masks = keep_masks(model)
    kept = {name: (int(m.sum()), m.numel()) for name, m in layer_masks.items()}
    masks, units = _parameter_masks(model)
    # a layer's keep_mask counts weights unless it is its unit mask (layers with both noises mask weights)
    per_weight = any(name not in units or m.shape != units[name].shape for name, m in layer_masks.items())
    dense = to_deterministic(model).eval()
    return PruneResult(model=dense, masks=masks, unit_masks=units, kept=kept, per_weight=per_weight)
