"""Comparing model outputs: the one ``max |a - b|`` that saving a model and checking an ONNX export both use."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["max_abs_diff"]


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
