"""The datasets a spec names without an argument: ``digits`` (bundled with scikit-learn), ``mnist`` and
``fashion-mnist`` (IDX files looked for in the usual folders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import PrunedropError
from .checks import tensor_dataset
from .idx import find_idx_files

SYSTEM_DATA_DIRS: dict[str, Path] = {
    "mnist": Path("/usr/share/datasets/mnist"),
    "fashion-mnist": Path("/usr/share/datasets/fashion-mnist"),
}
"""Where Debian packages install the IDX files (``apt-get install dataset-fashion-mnist``)."""

_TORCHVISION_DIRS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_HOW_TO_GET = {
    "fashion-mnist": "install them with 'apt-get install dataset-fashion-mnist'",
    "mnist": "download the four MNIST IDX files",
}

_DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SEED = 0


def find_named_idx_dir(name: str, data_dir: Path | None) -> Path:
    """The first folder holding all four IDX files of ``mnist``/``fashion-mnist``."""
    candidates: list[Path] = []
    if data_dir is not None:
        candidates += [data_dir, data_dir / name, data_dir / _TORCHVISION_DIRS[name] / "raw"]
    candidates.append(SYSTEM_DATA_DIRS[name])
    looked: list[str] = []
    for directory in candidates:
        if not directory.is_dir():
            looked.append(f"{directory} (no such folder)")
            continue
        missing = [role for role, path in find_idx_files(directory).items() if path is None]
        if not missing:
            return directory
        looked.append(f"{directory} (no {', '.join(missing)})")
    raise PrunedropError(
        f"{name} IDX files not found; looked in: {'; '.join(looked)}. To get them, {_HOW_TO_GET[name]}, "
        "or pass --data-dir DIR holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each may be .gz)"
    )


def load_digits() -> tuple[Dataset, None, Dataset]:
    """scikit-learn's digits as (N, 1, 8, 8) float32 in [0, 1], with a fixed stratified test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().div_(16.0).unsqueeze(1)
    y = torch.from_numpy(digits.target).long()
    # A fixed seed, independent of the run's seed, keeps the test set the same across runs so that
    # runs with different seeds are compared on the same samples.
    train_idx, test_idx = train_test_split(
        np.arange(len(y)),
        test_size=_DIGITS_TEST_FRACTION,
        stratify=digits.target,
        random_state=_DIGITS_TEST_SEED,
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return (
        tensor_dataset(x[train_idx], y[train_idx], "digits train"),
        None,
        tensor_dataset(x[test_idx], y[test_idx], "digits test"),
    )
