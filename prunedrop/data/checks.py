"""The checks every reader applies to its tensors and labels, each failure a one-line error naming the data."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import PrunedropError


def as_labels(y: np.ndarray, where: str) -> torch.Tensor:
    """Labels as int64 class indices; float labels are accepted only when they hold whole numbers."""
    if np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        return torch.from_numpy(y.astype(np.int64))
    if np.issubdtype(y.dtype, np.floating) and not np.all(np.isfinite(y)):
        raise PrunedropError(f"labels in {where} contain {int((~np.isfinite(y)).sum())} NaN or inf values; clean the "
                             "data first")
    if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
        return torch.from_numpy(y.astype(np.int64))
    if y.dtype.kind in "USO":  # class names: their numbering is the user's to give, not ours to guess
        shown = ", ".join(repr(v) for v in list(dict.fromkeys(y.ravel().tolist()))[:3])
        raise PrunedropError(f"labels in {where} are names ({shown}, ...), not class indices; number the classes as "
                             "the model was trained, e.g. np.unique(y, return_inverse=True)[1] for sorted names")
    raise PrunedropError(
        f"labels in {where} have dtype {y.dtype} with non-integer values; labels must be class indices "
        "(for real-valued regression targets pass --loss mse, or set loss: mse in the recipe)"
    )


def tensor_dataset(x: torch.Tensor, y: torch.Tensor, where: str) -> TensorDataset:
    """A TensorDataset after checking every input and label (cheap for tensors, so done in full)."""
    if len(x) == 0:
        raise PrunedropError(f"{where} is empty; the data must have at least one sample")
    check_finite(x, where)
    if y.is_floating_point():  # regression targets (loss: mse)
        check_finite(y, where)
    else:
        check_non_negative(y, where)
    return TensorDataset(x, y)


def check_finite(x: torch.Tensor, where: str) -> None:
    """Raise when a float tensor holds NaN or inf, which would silently turn the loss into NaN."""
    # Any NaN or inf makes the sum non-finite, so one allocation-free pass clears the usual case; the
    # exact count (and a sum that merely overflowed) needs the elementwise check.
    if x.is_floating_point() and x.numel() and not torch.isfinite(x.sum(dtype=torch.float64)):
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise PrunedropError(f"inputs in {where} contain {bad} NaN or inf values; clean the data first")


def check_non_negative(y: torch.Tensor, where: str) -> None:
    """Raise on negative labels, which cross-entropy rejects only deep inside training."""
    if y.numel() and int(y.min()) < 0:
        raise PrunedropError(
            f"labels in {where} include {int(y.min())}; labels must be class indices 0, 1, ..., C-1"
        )


def describe_value(obj: Any) -> str:
    """A short description of a wrong value for an error message, e.g. 'a list of length 4'."""
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of length {len(obj)}"
    return "None" if obj is None else f"a {type(obj).__name__}"
