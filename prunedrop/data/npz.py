"""``npz:FILE``: arrays ``x_train``/``y_train`` and optionally the val and test pairs, cast but never scaled."""

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
from .checks import as_labels, tensor_dataset


def load_npz(path: Path, *, regression: bool = False) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """Train and optional val/test splits from an npz archive; inputs are cast, never scaled. With
    ``regression`` float labels are targets shaped (N,) or (N, k)."""
    if not path.is_file():
        raise PrunedropError(f"npz file {str(path)!r} does not exist")
    hint = "save it with numpy.savez(FILE, x_train=..., y_train=...)"
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        raise PrunedropError(f"cannot read npz file {str(path)!r} ({e}); {hint}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise PrunedropError(f"{str(path)!r} holds a single array, not an npz archive; {hint}")
    with archive:
        present = set(archive.files)

        def get(key: str) -> np.ndarray | None:
            if key not in present:
                return None
            try:
                return archive[key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
                raise PrunedropError(
                    f"cannot read array {key!r} of npz file {str(path)!r} ({e}); {hint}"
                ) from None

        splits: dict[str, TensorDataset | None] = {}
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
            if not regression and y.ndim == 2 and y.shape[1] == 1:
                y = y[:, 0]  # class labels as a column, (N, 1): one label per sample all the same
            if y.ndim != 1 and not (regression and y.ndim == 2):
                raise PrunedropError(
                    f"y_{split} in {str(path)!r} has shape {y.shape}; labels must be shaped (N,)"
                    + (" (or (N, k) for k regression targets)" if regression else
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
            else:  # integer labels with loss: mse are refused later, naming the loss
                labels = as_labels(y, f"y_{split}")
            splits[split] = tensor_dataset(
                torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                labels,
                where,
            )
    shapes = {s: tuple(d.tensors[0].shape[1:]) for s, d in splits.items() if d is not None}
    if len(set(shapes.values())) > 1:
        raise PrunedropError(
            f"the inputs of npz file {str(path)!r} differ in sample shape between splits: {shapes}"
        )
    return splits["train"], splits["val"], splits["test"]  # type: ignore[return-value]
