"""The checks every reader applies to its tensors and labels, each failure a one-line error naming the data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import PrunedropError
from ..recipe_groups import SORTED, class_order
from ..safety import not_a_file as path_problem

#: the label of a position (or a sample) that has none to learn or to score: torch's cross_entropy ignores it by
#: default (``ignore_index=-100``), and Hugging Face's token classifiers pad their labels with it
IGNORED = -100


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
        raise names_refused(y, where)
    raise PrunedropError(
        f"labels in {where} have dtype {y.dtype} with non-integer values; labels must be class indices "
        "(for real-valued regression targets pass --loss mse, or set loss: mse in the recipe)"
    )


def names_refused(y: np.ndarray, where: str) -> PrunedropError:
    """The error for labels that are names where the recipe does not say how they are numbered."""
    shown = ", ".join(repr(_name(v)) for v in list(dict.fromkeys(y.ravel().tolist()))[:3])
    return PrunedropError(
        f"labels in {where} are names ({shown}, ...), not class indices; say how the model numbers them: "
        "--class-names sorted (in sorted order, as scikit-learn's LabelEncoder and np.unique do) or --class-names "
        "A,B,C (the names in the order of the model's outputs), or recipe key class_names"
    )


def _name(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def number_names(labels: dict[str, np.ndarray], class_names: list[str] | None,
                 where: dict[str, str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Labels that are names (split → array), numbered by the rule of ``class_names`` (:func:`class_order`) over
    every split at once; returns the int64 labels and the names in the order of their numbers. Without a rule, or
    with a name the rule does not list, a one-line error."""
    order = class_order(class_names)
    if order is None:
        split = next(iter(labels))
        raise names_refused(labels[split], where[split])
    found = sorted({_name(v) for y in labels.values() for v in y.ravel().tolist()})
    names = found if order == SORTED else list(order)
    index = {n: i for i, n in enumerate(names)}
    unknown = [n for n in found if n not in index]
    if unknown:
        raise PrunedropError(
            f"labels {', '.join(repr(u) for u in unknown[:3])} of {where[next(iter(labels))]} are not among the class "
            f"names given ({', '.join(names[:8])}{', ...' if len(names) > 8 else ''}); name every class, in the order "
            "of the model's outputs"
        )
    return {split: np.array([index[_name(v)] for v in y.ravel().tolist()], dtype=np.int64).reshape(y.shape)
            for split, y in labels.items()}, names


class ClassesDataset(TensorDataset):
    """A TensorDataset whose class indices number ``classes`` (the names its labels had), as torchvision's
    ImageFolder has them."""

    def __init__(self, *tensors: torch.Tensor, classes: list[str]) -> None:
        super().__init__(*tensors)
        self.classes = list(classes)


def tensor_dataset(x: torch.Tensor, y: torch.Tensor, where: str, classes: list[str] | None = None) -> TensorDataset:
    """A TensorDataset after checking every input and label (cheap for tensors, so done in full); with ``classes``,
    the names its class indices stand for."""
    if len(x) == 0:
        raise PrunedropError(f"{where} is empty; the data must have at least one sample")
    check_finite(x, where)
    if y.is_floating_point():  # regression targets (loss: mse)
        check_finite(y, where)
    else:
        check_non_negative(y, where)
    return TensorDataset(x, y) if classes is None else ClassesDataset(x, y, classes=classes)


def check_finite(x: torch.Tensor, where: str) -> None:
    """Raise when a float tensor holds NaN or inf, which would silently turn the loss into NaN."""
    # Any NaN or inf makes the sum non-finite, so one allocation-free pass clears the usual case; the
    # exact count (and a sum that merely overflowed) needs the elementwise check.
    if x.is_floating_point() and x.numel() and not torch.isfinite(x.sum(dtype=torch.float64)):
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise PrunedropError(f"inputs in {where} contain {bad} NaN or inf values; clean the data first")


def check_non_negative(y: torch.Tensor, where: str) -> None:
    """Raise on negative labels, which cross-entropy rejects only deep inside training; :data:`IGNORED` (-100)
    marks a label to ignore, as for torch's cross_entropy."""
    if y.numel() and int(y.min()) < 0:
        wrong = y[y != IGNORED]
        if wrong.numel() and int(wrong.min()) < 0:
            raise PrunedropError(
                f"labels in {where} include {int(wrong.min())}; labels must be class indices 0, 1, ..., C-1 "
                f"(or {IGNORED} for a position or sample with no label: a tagger's padding, a void pixel)"
            )


def not_a_file(path: Path, what: str) -> PrunedropError | None:
    """The error for a data file ``path`` (``what``: "npz file", "csv file") that is no regular file: it does not
    exist, it is a folder, or something else (a FIFO, a device, a socket); None for a regular file."""
    wrong = path_problem(path)
    if wrong is None:
        return None
    advice = "; name the file in it" if wrong.startswith("is a folder") else \
        "" if wrong.startswith("does not exist") else "; name a file"
    return PrunedropError(f"{what} {str(path)!r} {wrong}{advice}")


def file_kind(path: Path) -> str | None:
    """What a file is, from its first bytes, for a reader of zip archives and NumPy arrays that cannot read it:
    "empty (0 bytes)", "a text file (it starts with ...)", "a pickle", "binary data of another kind" (which NumPy
    calls "pickled (object) data"), or None for what may be a zip archive or a NumPy array, or cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if not head:
        return "empty (0 bytes)"
    if head.startswith((b"PK", b"\x93NUMPY")):
        return None
    if head[:1] == b"\x80":
        return "a pickle (pickle.dump, or torch.save with _use_new_zipfile_serialization=False)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = head[:-3].decode("utf-8", "ignore") if len(head) == 512 else ""  # a character cut at the end
    if text and all(c.isprintable() or c in "\t\r\n" for c in text.lstrip("\ufeff")):
        first = text.lstrip("\ufeff").splitlines()[0] if text.strip() else ""
        first = first if len(first) <= 40 else first[:37] + "..."
        table = "," in first or ";" in first or "\t" in first
        return f"a text file (it starts with {first!r}{'; a table? read it as csv:FILE' if table else ''})"
    return "binary data of another kind (it starts as neither a zip archive nor a NumPy array does)"


def describe_value(obj: Any) -> str:
    """A short description of a wrong value for an error message, e.g. 'a list of length 4'."""
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of length {len(obj)}"
    return "None" if obj is None else f"a {type(obj).__name__}"
