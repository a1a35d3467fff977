"""``npz:FILE``: arrays ``x_train``/``y_train`` (or ``X_train``, or one ``x``/``y`` pair) and optionally the val and test
pairs, cast but never scaled."""

from __future__ import annotations

import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import PrunedropError
from .bundle import SPLITS
from .checks import as_labels, file_kind, not_a_file, number_names, tensor_dataset

#: the names a split goes by in an npz archive, besides its own (matched without regard to case: X_train, Y_test)
_SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def _array_names(present: set[str], path: Path) -> dict[str, str]:
    """``x_train`` … ``y_test`` → the archive's own name for that array: any case (scikit-learn's ``X_train``),
    ``valid``/``validation`` for ``val``, and a lone ``x``/``y`` pair for the training split (the validation split is
    then split off it). Two arrays for one name (``x_train`` and ``X_train``) are refused as ambiguous."""
    by_lower: dict[str, list[str]] = {}
    for name in present:
        by_lower.setdefault(name.lower(), []).append(name)
    names: dict[str, str] = {}
    for split, aliases in _SPLIT_NAMES.items():
        for prefix in ("x", "y"):
            found = [name for alias in aliases for name in by_lower.get(f"{prefix}_{alias}", [])]
            if len(found) > 1:
                raise PrunedropError(f"npz file {str(path)!r} has {len(found)} arrays for {prefix}_{split} "
                                     f"({', '.join(sorted(found))}); keep one")
            if found:
                names[f"{prefix}_{split}"] = found[0]
    if "x_train" not in names and "y_train" not in names and len(by_lower.get("x", [])) == 1 \
            and len(by_lower.get("y", [])) == 1:
        names["x_train"], names["y_train"] = by_lower["x"][0], by_lower["y"][0]
    return names


def _numeric(y: np.ndarray) -> np.ndarray | None:
    """Text labels that all read as numbers, as numbers; else None (they are names)."""
    try:
        return y.astype(np.float64)
    except ValueError:
        return None


def load_npz(path: Path, *, regression: bool = False,
             class_names: list[str] | None = None) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """Train and optional val/test splits from an npz archive; inputs are cast, never scaled. With
    ``regression`` float labels are targets shaped (N,) or (N, k). Labels that are names (strings) are numbered
    by the recipe key ``class_names`` (:func:`~prunedrop.data.checks.number_names`), else refused."""
    missing = not_a_file(path, "npz file")
    if missing is not None:
        raise missing
    hint = "save it with numpy.savez(FILE, x_train=..., y_train=...) (X_train, x_valid or one x/y pair are read too)"
    kind = file_kind(path)  # numpy calls a text file "pickled (object) data"
    if kind is not None:
        raise PrunedropError(f"npz file {str(path)!r} is {kind}, not an npz archive; {hint}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise PrunedropError(f"cannot read npz file {str(path)!r} ({e}); {hint}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise PrunedropError(f"{str(path)!r} holds a single array, not an npz archive; {hint}")
    with archive:
        present = set(archive.files)
        names = _array_names(present, path)
        if not names and any(name == "data.pkl" or name.endswith("/data.pkl") for name in present):
            raise PrunedropError(f"npz file {str(path)!r} is a file written by torch.save (a model or tensors), not "
                                 f"an npz archive; {hint}")

        def get(key: str) -> np.ndarray | None:
            if key not in names:
                return None
            try:
                return archive[names[key]]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise PrunedropError(
                    f"cannot read array {key!r} of npz file {str(path)!r} ({e}); {hint}"
                ) from None

        splits: dict[str, TensorDataset | None] = {}
        named: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}  # split → (x, names, where): numbered below
        for split in SPLITS:
            x, y = get(f"x_{split}"), get(f"y_{split}")
            if x is None and y is None and split != "train":
                splits[split] = None
                continue
            if x is None or y is None:
                key = f"x_{split}" if x is None else f"y_{split}"
                has = ", ".join(sorted(present)) or "nothing"
                raise PrunedropError(f"npz file {str(path)!r} has no array {key!r} (it has: {has}); {hint}")
            where = f"{path.name} x_{split}/y_{split}"
            if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or x.ndim < 2:
                raise PrunedropError(
                    f"x_{split} in {str(path)!r} has dtype {x.dtype} and shape {x.shape}; "
                    "inputs must be numbers shaped (N, ...) with one sample per row"
                )
            _check_real_float32(x, f"x_{split} in {str(path)!r}")
            if not regression and y.ndim == 2 and y.shape[1] == 1:
                y = y[:, 0]  # class labels as a column, (N, 1): one label per sample all the same
            whole = y.dtype.kind in "biuUSO" or (np.issubdtype(y.dtype, np.floating) and bool(np.all(y == np.round(y))))
            if y.ndim == 0 or (y.ndim != 1 and not regression and not whole):
                # (N, *S) labels are one class per position (a segmentation mask, a label per token), checked
                # against the model's (N, C, *S) outputs; (N, k) float targets are regression's
                raise PrunedropError(
                    f"y_{split} in {str(path)!r} has shape {y.shape}; labels must be shaped (N,), or (N, ...) with "
                    "a class per position for a model that predicts per position"
                    + (" (regression targets: (N,), or (N, ...) shaped as the model's output per sample)" if regression else
                       "; for regression targets pass --loss mse, or set loss: mse in the recipe" if np.issubdtype(y.dtype, np.floating)
                       else "")
                )
            if len(x) != len(y):
                raise PrunedropError(
                    f"x_{split} has {len(x)} samples but y_{split} has {len(y)} labels in {str(path)!r}; "
                    "they must have the same length"
                )
            if regression and np.issubdtype(y.dtype, np.floating):
                labels = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
            elif y.dtype.kind in "US" and not regression and (digits := _numeric(y)) is not None:
                labels = as_labels(digits, f"y_{split}")  # digits saved as text ('0', '1', …)
            elif y.dtype.kind in "USO" and not regression:
                named[split] = (x, y, f"y_{split}")
                continue
            else:  # integer labels with loss: mse are refused later, naming the loss
                labels = as_labels(y, f"y_{split}")
            splits[split] = tensor_dataset(
                torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                labels,
                where,
            )
        if named:
            if any(d is not None for d in splits.values()):
                raise PrunedropError(f"npz file {str(path)!r} has names as labels in some splits and class indices "
                                     "in others; give every split the same kind")
            numbered, classes = number_names({s: y for s, (_, y, _) in named.items()}, class_names,
                                             {s: w for s, (_, _, w) in named.items()})
            for split, (x, _, _) in named.items():
                splits[split] = tensor_dataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                                               torch.from_numpy(numbered[split]), f"{path.name} x_{split}/y_{split}",
                                               classes=classes)
    shapes = {s: tuple(d.tensors[0].shape[1:]) for s, d in splits.items() if d is not None}
    if len(set(shapes.values())) > 1:
        raise PrunedropError(
            f"the inputs of npz file {str(path)!r} differ in sample shape between splits: {shapes}"
        )
    return splits["train"], splits["val"], splits["test"]  # type: ignore[return-value]


def _check_real_float32(x: np.ndarray, what: str) -> None:
    """Inputs become float32: complex numbers would lose their imaginary part (numpy only warns), and finite values
    beyond float32's range would become inf (read afterwards as data holding inf)."""
    if np.iscomplexobj(x):
        raise PrunedropError(f"{what} holds complex numbers ({x.dtype}); inputs are read as real float32, which would "
                             "drop the imaginary part: give the real and imaginary parts as two channels "
                             "(np.stack([x.real, x.imag], axis=1))")
    if x.dtype.kind == "f" and x.dtype.itemsize > 4 and x.size:
        finite = x[np.isfinite(x)]
        largest = float(np.abs(finite).max()) if finite.size else 0.0
        if largest > float(np.finfo(np.float32).max):
            raise PrunedropError(f"{what} holds values up to {largest:.3g}, beyond float32's range (3.4e38), in which "
                                 "inputs are read: scale them first")
