"""Comparing model outputs: the one ``max |a - b|`` that saving a model and checking an ONNX export both use, and the
largest value that tolerances for large outputs scale with."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["largest_abs", "max_abs_diff", "output_tensors", "scaled_tolerance"]


def max_abs_diff(a: Any, b: Any) -> float:
    """Max ``|a - b|`` over a tensor or a (nested) tuple/list/dict of tensors, in float64 on the CPU.

    Entries that are equal count 0 (infinities too) and NaN matches NaN; a NaN against a number, different
    shapes or a different structure give ``inf``, so that ``not diff <= tolerance`` catches every mismatch.
    """
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return math.inf
        if a.numel() == 0:
            return 0.0
        a, b = a.detach().cpu().double(), b.detach().cpu().double()
        same = (a == b) | (a.isnan() & b.isnan())
        return 0.0 if bool(same.all()) else float((a - b).abs().nan_to_num(math.inf)[~same].max())
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return max((max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys():
        return max((max_abs_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (torch.Tensor, tuple, list, Mapping)) or isinstance(b, (torch.Tensor, tuple, list, Mapping)):
        return math.inf  # different structure
    return 0.0 if a == b else math.inf


def output_tensors(output: Any, *, strict: bool = False) -> list[Any]:
    """The tensors of a model's output (a tensor, or tensors nested in tuples, lists and dicts), in the order the
    ONNX exporters flatten them into graph outputs. A leaf that is no tensor is left out, or with ``strict`` raises
    ``TypeError``."""
    import torch

    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [t for value in output.values() for t in output_tensors(value, strict=strict)]
    if isinstance(output, (tuple, list)):
        return [t for value in output for t in output_tensors(value, strict=strict)]
    if strict:
        raise TypeError(f"cannot compare a model output of type {type(output).__name__} with ONNX")
    return []


def largest_abs(x: Any) -> float:
    """The largest finite ``|value|`` over a tensor or a (nested) tuple/list/dict of tensors (0 for none)."""
    import torch

    if isinstance(x, torch.Tensor):
        finite = x.detach().double()
        finite = finite[torch.isfinite(finite)]
        return float(finite.abs().max()) if finite.numel() else 0.0
    if isinstance(x, Mapping):
        return max((largest_abs(v) for v in x.values()), default=0.0)
    if isinstance(x, (tuple, list)):
        return max((largest_abs(v) for v in x), default=0.0)
    return 0.0


def scaled_tolerance(atol: float, want: Any) -> float:
    """``atol`` for outputs of magnitude up to 1, relatively more for larger ones: float32 sums reordered (fewer
    channels, another kernel) round in proportion to the values summed."""
    return atol * max(1.0, largest_abs(want))
