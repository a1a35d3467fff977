"""Data specs for ``prunedrop compress --data``: turn a short string into train/val/test data.

Valid specs (see :func:`parse_spec`):

``digits``
    scikit-learn's bundled 8x8 digits; needs no files. Inputs ``(N, 1, 8, 8)`` float32 in [0, 1]. It has no
    official test split, so a stratified 20% is held out as test with a *fixed* seed (the same test set for
    every ``seed``); the validation split then comes from the rest.
``mnist`` / ``fashion-mnist``
    the four IDX files (gzipped or not), looked for in ``data_dir``, ``data_dir/<name>``, torchvision's
    ``data_dir/<MNIST|FashionMNIST>/raw`` and where Debian installs them (``/usr/share/datasets/<name>``).
    Inputs ``(N, 1, 28, 28)`` float32 in [0, 1]; ``t10k`` is the test set.
``idx:DIR``
    any folder with ``train-images``/``train-labels`` IDX files and optionally ``t10k-*`` or ``test-*`` ones.
    ``uint8`` images are scaled to [0, 1]; other IDX dtypes are cast to float32 unscaled.
``npz:FILE``
    arrays ``x_train``, ``y_train`` and optionally ``x_val``/``y_val``, ``x_test``/``y_test``. Inputs are cast
    to float32 **as given: no scaling or normalisation is applied**; labels become int64. With the recipe's
    ``loss: mse`` (regression), float ``y_*`` arrays shaped ``(N,)`` or ``(N, k)`` are targets, cast to float32.
``imagefolder:DIR``
    one sub-folder per class (labels: the sorted folder names' indices); ``train/`` and ``val/`` (or ``valid/``,
    ``validation/``) and ``test/`` sub-folders, each such a tree, when present. Images are decoded with Pillow
    on access, resized (recipe key ``image_size``), converted to 1 or 3 channels (``image_channels``), scaled to
    [0, 1] and optionally normalised (``normalize``). See :mod:`prunedrop.data_files`.
``csv:FILE`` / ``csv:DIR``
    a CSV table with a header row: the label column (recipe key ``label_column``, default ``label``) and numeric
    feature columns, inputs ``(N, F)`` float32 as given; integer class labels, or float targets when the recipe's
    ``loss`` is ``mse``. A folder holds ``train.csv`` and optionally ``val.csv`` and ``test.csv``.
``hf:PATH``
    a folder written by Hugging Face ``datasets``' ``save_to_disk`` (splits ``train``, ``validation``, ``test``),
    a parquet file, or a folder of ``train-*.parquet`` / ``validation-*`` / ``test-*`` files; inputs from one
    image column, one column of arrays or the numeric columns; labels from ``label_column``. Local only.
``python:MODULE:FUNCTION``
    the user's function, called with no arguments, returns a :class:`DataBundle`, a dict with ``train`` and
    optional ``val``/``test``, or a tuple ``(train, val)`` / ``(train, val, test)`` of Datasets or DataLoaders
    whose items are ``(input, label)`` pairs; with ``loss: mse`` the labels are float targets, a number or a
    vector of the model's output size per sample. Exceptions raised inside the user's function propagate
    unchanged, so that their traceback points into the user's code.

When no validation set is given, a seeded ``val_fraction`` of the training data is split off; the training
set that remains is in that seeded random order, so ``train_limit`` (keep the first n) picks a random subset
rather than, say, only the first classes of a dataset sorted by label.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import math
import pickle
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .errors import PrunedropError, describe
from .storage import import_object

if TYPE_CHECKING:
    from .recipes import Recipe

__all__ = [
    "NAMED_DATASETS",
    "SYSTEM_DATA_DIRS",
    "DataBundle",
    "check_labels",
    "load_data",
    "parse_spec",
    "read_idx",
]

NAMED_DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist")
"""Specs that name a dataset and take no argument."""

_ARG_KINDS: dict[str, str] = {"idx": "DIR", "npz": "FILE", "imagefolder": "DIR", "csv": "FILE", "hf": "PATH",
                              "python": "MODULE:FUNCTION"}
_VALID_FORMS = "digits, mnist, fashion-mnist, idx:DIR, npz:FILE, imagefolder:DIR, csv:FILE, hf:PATH, python:MODULE:FUNCTION"

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

_SPLITS = ("train", "val", "test")
# Specs read by prunedrop.data_files: kind -> its loader there.
_FILE_LOADERS = {"imagefolder": "load_imagefolder", "csv": "load_csv", "hf": "load_hf"}
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SEED = 0


@dataclass
class DataBundle:
    """Train/validation/test data plus what the pipeline needs to know about it."""

    name: str
    """The data spec it came from, e.g. ``fashion-mnist`` or ``npz:data.npz``; used in reports."""
    train: Dataset | DataLoader
    """Training data: a map-style Dataset, or a DataLoader only when the user's python: function returned one."""
    val: Dataset | DataLoader
    """Validation data, used to measure the metric before and after compression."""
    test: Dataset | DataLoader | None
    """Test data, or None when the spec has none."""
    input_shape: tuple[int, ...]
    """The shape of one input sample, without the batch dimension."""
    num_classes: int | None
    """Number of classes (largest label + 1, or ``len(dataset.classes)``) when it is known, else None."""

    @property
    def num_train(self) -> int:
        """Training-set size N, the factor of the data term in the ELBO."""
        data = self.train.dataset if isinstance(self.train, DataLoader) else self.train
        try:
            return len(data)  # type: ignore[arg-type]
        except TypeError:
            raise PrunedropError(
                f"the training data of {self.name!r} has no length, which the ELBO needs; "
                "use a map-style Dataset (with __len__) rather than an IterableDataset"
            ) from None

    def split(self, split: str) -> Dataset | DataLoader:
        """The data of ``split`` (``train``, ``val`` or ``test``); an error when that split is absent."""
        if split not in _SPLITS:
            raise PrunedropError(f"unknown data split {split!r}; use one of: {', '.join(_SPLITS)}")
        data = getattr(self, split)
        if data is None:
            raise PrunedropError(
                f"data {self.name!r} has no {split} split; use a data spec that provides one "
                "(e.g. npz with x_test/y_test, or a python: function returning (train, val, test))"
            )
        return data

    def loader(
        self,
        split: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        epoch: int = 0,
        drop_last: bool = False,
    ) -> DataLoader:
        """A DataLoader over ``split`` in a deterministic order.

        When shuffling, the permutation comes from a ``torch.Generator`` seeded from ``(seed, epoch)`` alone,
        not from global RNG state, so a resumed run sees exactly the order an uninterrupted one would have.
        A DataLoader the user gave is returned as is: its own batch size and order win.
        """
        data = self.split(split)
        if isinstance(data, DataLoader):
            return data
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise PrunedropError(f"batch size must be a positive integer, got {batch_size!r}")
        order = torch.randperm(len(data), generator=_generator(seed, epoch)).tolist() if shuffle else None
        # A generator of its own: a DataLoader without one draws its base seed from the global RNG on every
        # iteration, which would shift the noise of a resumed run against an uninterrupted one.
        return DataLoader(data, batch_size=batch_size, sampler=order, drop_last=drop_last,
                          generator=_generator(seed, epoch, "loader"))

    def example_batch(self, n: int = 8, split: str = "val") -> torch.Tensor:
        """The first ``n`` inputs of ``split`` (fewer if the split is smaller), for export, parity and FLOPs."""
        if n < 1:
            raise PrunedropError(f"an example batch needs at least one sample, got n={n}")
        data = self.split(split)
        if isinstance(data, DataLoader):
            parts: list[torch.Tensor] = []
            count = 0
            for batch in data:
                inputs = torch.as_tensor(batch[0])
                parts.append(inputs)
                count += len(inputs)
                if count >= n:
                    break
            return torch.cat(parts)[:n]
        if isinstance(data, TensorDataset):
            return data.tensors[0][:n].clone()
        return torch.stack([torch.as_tensor(data[i][0]) for i in range(min(n, len(data)))])


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a data spec into ``(kind, argument)``; the argument is ``""`` for a named dataset.

    Only the syntax is checked here (nothing is imported or opened), and anything malformed raises
    :class:`PrunedropError` whose message is one line.
    """
    if not isinstance(spec, str):
        raise PrunedropError(
            f"a data spec must be a string, got {type(spec).__name__}; use one of: {_VALID_FORMS}"
        )
    text = spec.strip()
    if not text:
        raise PrunedropError(f"the data spec is empty; use one of: {_VALID_FORMS}")
    if "\x00" in text:
        raise PrunedropError(f"data spec {spec!r} contains a NUL character; use one of: {_VALID_FORMS}")
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    arg = arg.strip()
    if kind in NAMED_DATASETS:
        if sep:
            raise PrunedropError(
                f"data spec {spec!r}: {kind!r} takes no argument; give the folder of its files with --data-dir"
            )
        return kind, ""
    if kind not in _ARG_KINDS:
        close = difflib.get_close_matches(kind, [*NAMED_DATASETS, *_ARG_KINDS], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        if not sep and text.lower().endswith(".npz"):
            hint = f"; did you mean 'npz:{text}'?"
        raise PrunedropError(f"unknown data spec {spec!r}; use one of: {_VALID_FORMS}{hint}")
    if not sep or not arg:
        raise PrunedropError(f"data spec {spec!r} lacks its argument; write it as {kind}:{_ARG_KINDS[kind]}")
    if kind == "python":
        module, sep, func = arg.partition(":")
        if not sep or not _is_dotted_name(module) or not _is_dotted_name(func):
            raise PrunedropError(
                f"data spec {spec!r} is not of the form python:MODULE:FUNCTION, e.g. python:mydata:load"
            )
    return kind, arg


def load_data(
    spec: str,
    *,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_limit: int | None = None,
    recipe: Recipe | None = None,
) -> DataBundle:
    """Load the data that ``spec`` names (see the module docstring for the forms).

    ``data_dir`` is where ``mnist``/``fashion-mnist`` files are looked for first. A validation set is split
    off the training data (``val_fraction`` of it, in an order seeded by ``seed``) when the spec gives none.
    ``train_limit`` then keeps the first n training samples, for quick runs. ``recipe`` gives the data keys
    of ``imagefolder:``, ``csv:`` and ``hf:`` (image size, channels, normalisation, label column), and its
    ``loss: mse`` lets labels be real numbers (regression); None means the defaults.
    """
    kind, arg = parse_spec(spec)
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0.0 < val_fraction < 1.0
    ):
        raise PrunedropError(
            f"the validation fraction must be between 0 and 1 (exclusive), got {val_fraction!r}"
        )
    if train_limit is not None and (
        isinstance(train_limit, bool) or not isinstance(train_limit, int) or train_limit < 1
    ):
        raise PrunedropError(f"the training limit must be a positive integer, got {train_limit!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PrunedropError(f"the seed must be an integer, got {seed!r}")
    name = kind if not arg else f"{kind}:{arg}"
    regression = recipe is not None and recipe.loss == "mse"

    if kind == "python":
        return _from_python(arg, name, val_fraction, seed, train_limit, regression=regression)
    if kind in _FILE_LOADERS:
        from . import data_files

        train, val, test = getattr(data_files, _FILE_LOADERS[kind])(Path(arg), recipe)
        return _assemble(name, train, val, test, val_fraction=val_fraction, seed=seed, train_limit=train_limit,
                         regression=regression)

    if kind == "digits":
        train, val, test = _load_digits()
    elif kind in ("mnist", "fashion-mnist"):
        directory = _find_named_idx_dir(kind, _as_dir(data_dir) if data_dir is not None else None)
        train, val, test = _load_idx_dir(directory, require_test=True)
    elif kind == "idx":
        directory = Path(arg).expanduser()
        if not directory.is_dir():
            raise PrunedropError(f"IDX folder {str(directory)!r} does not exist or is not a folder")
        train, val, test = _load_idx_dir(directory, require_test=False)
    else:  # npz
        train, val, test = _load_npz(Path(arg).expanduser(), regression=regression)
        return _assemble(name, train, val, test, val_fraction=val_fraction, seed=seed, train_limit=train_limit,
                         regression=regression)
    return _assemble(name, train, val, test, val_fraction=val_fraction, seed=seed, train_limit=train_limit)


def check_labels(bundle: DataBundle, num_outputs: int) -> None:
    """Raise :class:`PrunedropError` when the data has labels the model cannot output.

    Uses every label where they are cheap to get (tensor datasets, ``targets`` attributes), else the first
    sample or batch of each split; a dataset that must be iterated in full is not, since that may mean
    decoding every image.
    """
    largest = -1
    for split in _SPLITS:
        data = getattr(bundle, split)
        if data is None:
            continue
        labels = _labels_of(data)
        if labels is None:
            labels = torch.as_tensor(_first_item(data)[1])
        if labels.is_floating_point():
            continue  # regression targets (loss: mse), not class indices
        if labels.numel():
            largest = max(largest, int(labels.max()))
    if largest >= num_outputs:
        raise PrunedropError(
            f"labels go up to {largest} but the model has {num_outputs} outputs; "
            "check that --data matches the model"
        )
    if bundle.num_classes is not None and bundle.num_classes > num_outputs:
        raise PrunedropError(
            f"the data has {bundle.num_classes} classes but the model has {num_outputs} outputs; "
            "check that --data matches the model"
        )


# --- IDX files ----------------------------------------------------------------------------------------

# IDX type codes -> big-endian numpy dtypes, from the format's definition (yann.lecun.com/exdb/mnist).
_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_IDX_PREFIXES = {
    "train images": ("train-images",),
    "train labels": ("train-labels",),
    "test images": ("t10k-images", "test-images"),
    "test labels": ("t10k-labels", "test-labels"),
}


#: a compressed IDX file may expand to at most this many times its size, plus 64 MiB (MNIST's is about 8 times)
_IDX_MAX_EXPANSION = 1000


def _read_idx_stream(f: Any, compressed_bytes: int, corrupt: Callable[[str], PrunedropError]) -> bytes:
    """The header and at most the data it announces (and one byte more, to tell a longer file) from a
    decompressing stream; a header that announces more than the file can plausibly hold is refused."""
    head = f.read(4)
    if len(head) < 4 or head[3] == 0:
        return head  # read_idx's checks say what is wrong
    dims_raw = f.read(4 * head[3])
    if len(dims_raw) < 4 * head[3]:
        return head + dims_raw
    dims = np.frombuffer(dims_raw, dtype=">u4")
    itemsize = np.dtype(_IDX_DTYPES[head[2]]).itemsize if head[2] in _IDX_DTYPES else 1
    expected = math.prod(int(d) for d in dims) * itemsize
    limit = _IDX_MAX_EXPANSION * compressed_bytes + 64 * 2**20
    if expected > limit:
        raise corrupt(f"its header announces {expected:,} bytes of data, more than a {compressed_bytes:,}-byte "
                      "compressed file plausibly holds")
    return head + dims_raw + f.read(expected + 1)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped when its name ends in ``.gz``) into a native-endian numpy array.

    The header (magic, type code, dimensions) is validated against the file's length, so a truncated or
    corrupt file raises :class:`PrunedropError` naming it rather than producing garbage.
    """
    path = Path(path)

    def corrupt(reason: str) -> PrunedropError:
        return PrunedropError(f"IDX file {str(path)!r} is corrupt: {reason}; download it again")

    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = _read_idx_stream(f, path.stat().st_size, corrupt)  # bounded: no decompression bomb
        else:
            raw = path.read_bytes()
    except FileNotFoundError:
        raise PrunedropError(f"IDX file {str(path)!r} does not exist") from None
    except (OSError, EOFError, zlib.error) as e:
        raise corrupt(f"cannot be read ({e})") from None
    if len(raw) < 4:
        raise corrupt(f"only {len(raw)} bytes, shorter than an IDX header")
    if raw[0] != 0 or raw[1] != 0:
        raise corrupt(f"bad magic number 0x{raw[:4].hex()} (an IDX file starts with two zero bytes)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise corrupt(f"unknown data type code 0x{code:02x}")
    if ndim == 0:
        raise corrupt("zero dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise corrupt(f"truncated header ({len(raw)} bytes, {ndim} dimensions need {header})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = math.prod(dims) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise corrupt(f"{what}: shape {dims} needs {expected} bytes of data, the file has {actual}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx_files(directory: Path) -> dict[str, Path | None]:
    """Map each role (``train images``, ...) to its file in ``directory``; plain files win over ``.gz``."""
    try:
        names = {p.name.lower(): p for p in directory.iterdir() if p.is_file()}
    except OSError:
        names = {}
    found: dict[str, Path | None] = {}
    for role, prefixes in _IDX_PREFIXES.items():
        found[role] = None
        dims = "idx3" if role.endswith("images") else "idx1"
        candidates = [
            f"{prefix}{dot}{dims}-ubyte{gz}"
            for prefix in prefixes
            for gz in ("", ".gz")
            for dot in ("-", ".")
        ]
        for candidate in candidates:
            if candidate in names:
                found[role] = names[candidate]
                break
    return found


def _find_named_idx_dir(name: str, data_dir: Path | None) -> Path:
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
        missing = [role for role, path in _find_idx_files(directory).items() if path is None]
        if not missing:
            return directory
        looked.append(f"{directory} (no {', '.join(missing)})")
    raise PrunedropError(
        f"{name} IDX files not found; looked in: {'; '.join(looked)}. To get them, {_HOW_TO_GET[name]}, "
        "or pass --data-dir DIR holding train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each may be .gz)"
    )


def _load_idx_dir(directory: Path, *, require_test: bool) -> tuple[Dataset, None, Dataset | None]:
    """Train and (when present or required) test data from the IDX files in ``directory``."""
    files = _find_idx_files(directory)
    needed = ["train images", "train labels"] + (["test images", "test labels"] if require_test else [])
    missing = [role for role in needed if files[role] is None]
    if missing:
        raise PrunedropError(
            f"folder {str(directory)!r} has no {', '.join(missing)} IDX file; expected train-images-idx3-ubyte, "
            "train-labels-idx1-ubyte and optionally t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each may be .gz)"
        )
    train = _idx_pair(files["train images"], files["train labels"])  # type: ignore[arg-type]
    test = None
    if files["test images"] is not None or files["test labels"] is not None:
        if files["test images"] is None or files["test labels"] is None:
            present = files["test images"] or files["test labels"]
            raise PrunedropError(
                f"folder {str(directory)!r} has {present.name} but not its images/labels partner; "  # type: ignore[union-attr]
                "add the missing test file or remove this one"
            )
        test = _idx_pair(files["test images"], files["test labels"])
    return train, None, test


def _idx_pair(images_path: Path, labels_path: Path) -> TensorDataset:
    """One split from an images file and its labels file; uint8 pixels are scaled to [0, 1]."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim < 2:
        raise PrunedropError(f"IDX file {str(images_path)!r} has shape {images.shape}; images need (N, ...)")
    if labels.ndim != 1:
        raise PrunedropError(f"IDX file {str(labels_path)!r} has shape {labels.shape}; labels need (N,)")
    if len(images) != len(labels):
        raise PrunedropError(
            f"{images_path.name} has {len(images)} images but {labels_path.name} has {len(labels)} labels; "
            "they must come from the same dataset"
        )
    x = torch.from_numpy(images)
    # Grey images (N, H, W) gain a channel axis so that convolutional models see (N, 1, H, W).
    if x.ndim == 3:
        x = x.unsqueeze(1)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return _tensor_dataset(x, _as_labels(labels, f"IDX file {str(labels_path)!r}"), images_path.name)


# --- built-in and npz data ----------------------------------------------------------------------------


def _load_digits() -> tuple[Dataset, None, Dataset]:
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
        _tensor_dataset(x[train_idx], y[train_idx], "digits train"),
        None,
        _tensor_dataset(x[test_idx], y[test_idx], "digits test"),
    )


def _load_npz(path: Path, *, regression: bool = False) -> tuple[Dataset, Dataset | None, Dataset | None]:
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
        for split in _SPLITS:
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
            if y.ndim != 1 and not (regression and y.ndim == 2):
                raise PrunedropError(
                    f"y_{split} in {str(path)!r} has shape {y.shape}; labels must be shaped (N,)"
                    + (" (or (N, k) for k regression targets)" if regression else
                       "; for regression targets set loss: mse in the recipe" if np.issubdtype(y.dtype, np.floating)
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
                labels = _as_labels(y, f"y_{split}")
            splits[split] = _tensor_dataset(
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


def _as_labels(y: np.ndarray, where: str) -> torch.Tensor:
    """Labels as int64 class indices; float labels are accepted only when they hold whole numbers."""
    if np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        return torch.from_numpy(y.astype(np.int64))
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return torch.from_numpy(y.astype(np.int64))
    raise PrunedropError(
        f"labels in {where} have dtype {y.dtype} with non-integer values; labels must be class indices "
        "(for real-valued regression targets set loss: mse in the recipe)"
    )


def _tensor_dataset(x: torch.Tensor, y: torch.Tensor, where: str) -> TensorDataset:
    """A TensorDataset after checking every input and label (cheap for tensors, so done in full)."""
    if len(x) == 0:
        raise PrunedropError(f"{where} is empty; the data must have at least one sample")
    _check_finite(x, where)
    if y.is_floating_point():  # regression targets (loss: mse)
        _check_finite(y, where)
    else:
        _check_non_negative(y, where)
    return TensorDataset(x, y)


def _check_finite(x: torch.Tensor, where: str) -> None:
    """Raise when a float tensor holds NaN or inf, which would silently turn the loss into NaN."""
    # Any NaN or inf makes the sum non-finite, so one allocation-free pass clears the usual case; the
    # exact count (and a sum that merely overflowed) needs the elementwise check.
    if x.is_floating_point() and x.numel() and not torch.isfinite(x.sum(dtype=torch.float64)):
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise PrunedropError(f"inputs in {where} contain {bad} NaN or inf values; clean the data first")


def _check_non_negative(y: torch.Tensor, where: str) -> None:
    """Raise on negative labels, which cross-entropy rejects only deep inside training."""
    if y.numel() and int(y.min()) < 0:
        raise PrunedropError(
            f"labels in {where} include {int(y.min())}; labels must be class indices 0, 1, ..., C-1"
        )


# --- user's python function ---------------------------------------------------------------------------


def _from_python(arg: str, name: str, val_fraction: float, seed: int, train_limit: int | None, *,
                 regression: bool = False) -> DataBundle:
    """Call the user's data function and turn whatever of the accepted forms it returns into a bundle."""
    func = import_object(arg, what="data function")
    if not callable(func):
        raise PrunedropError(f"data function {arg!r} is not callable (it is a {type(func).__name__} object)")
    try:
        result = func()
    except (Exception, SystemExit) as e:  # the user's function failing is the user's to fix: one line, not a traceback
        raise PrunedropError(f"data function {arg!r} failed when called with no arguments ({describe(e)}): fix it, "
                             "or try it alone in Python") from e
    expected = "a DataBundle, a dict with 'train' (and 'val', 'test'), or a tuple (train, val[, test])"
    given: DataBundle | None = None
    if isinstance(result, DataBundle):
        given = result
        parts = {"train": result.train, "val": result.val, "test": result.test}
    elif isinstance(result, dict):
        unknown = sorted(str(k) for k in result if k not in _SPLITS)
        if unknown:
            raise PrunedropError(
                f"data function {arg!r} returned unknown keys {unknown}; use {', '.join(_SPLITS)}"
            )
        if "train" not in result:
            raise PrunedropError(f"data function {arg!r} returned a dict without 'train'; return {expected}")
        parts = {split: result.get(split) for split in _SPLITS}
    elif isinstance(result, (tuple, list)) and len(result) in (2, 3):
        parts = dict(zip(_SPLITS, result))
        parts.setdefault("test", None)
    else:
        raise PrunedropError(f"data function {arg!r} returned {_describe(result)}; return {expected}")
    for split, data in parts.items():
        if data is not None and not isinstance(data, (Dataset, DataLoader)):
            raise PrunedropError(
                f"data function {arg!r} returned {_describe(data)} as {split}; use a torch Dataset or DataLoader"
            )
    if parts["train"] is None:
        raise PrunedropError(f"data function {arg!r} returned no training data; return {expected}")
    if parts["val"] is None and isinstance(parts["train"], DataLoader):
        raise PrunedropError(
            f"data function {arg!r} returned a training DataLoader and no validation data; a validation set "
            "cannot be split off a DataLoader, so return (train, val) or a Dataset instead"
        )
    bundle = _assemble(
        name,
        parts["train"],
        parts["val"],
        parts["test"],
        val_fraction=val_fraction,
        seed=seed,
        train_limit=train_limit,
        regression=regression,
    )
    if given is not None:
        bundle.name, bundle.input_shape, bundle.num_classes = given.name, given.input_shape, given.num_classes
    return bundle


def _describe(obj: Any) -> str:
    """A short description of a wrong value for an error message, e.g. 'a list of length 4'."""
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of length {len(obj)}"
    return "None" if obj is None else f"a {type(obj).__name__}"


# --- assembling a bundle ------------------------------------------------------------------------------


def _assemble(
    name: str,
    train: Dataset | DataLoader,
    val: Dataset | DataLoader | None,
    test: Dataset | DataLoader | None,
    *,
    val_fraction: float,
    seed: int,
    train_limit: int | None,
    regression: bool = False,
) -> DataBundle:
    """Validate the splits, split off validation data if needed, apply ``train_limit``, fill in the shapes.
    With ``regression`` labels may be real numbers and there are no classes."""
    shapes = {}
    for split, data in (("train", train), ("val", val), ("test", test)):
        if data is not None:
            shapes[split] = _validate_split(data, f"the {split} data of {name!r}", regression=regression)
    if len(set(shapes.values())) > 1:
        raise PrunedropError(f"the inputs of {name!r} differ in sample shape between splits: {shapes}")
    if val is None:
        train, val = _split_off_validation(train, val_fraction, seed, name)  # type: ignore[arg-type]
    if train_limit is not None:
        if isinstance(train, DataLoader):
            raise PrunedropError(
                f"a training limit cannot be applied to the DataLoader that {name!r} returned; "
                "drop the limit or return a Dataset"
            )
        train = _take(train, range(min(train_limit, len(train))))  # type: ignore[arg-type]
    return DataBundle(
        name=name,
        train=train,
        val=val,
        test=test,
        input_shape=shapes["train"],
        num_classes=None if regression else _num_classes(train, val, test),
    )


def _validate_split(data: Dataset | DataLoader, where: str, *, regression: bool = False) -> tuple[int, ...]:
    """Check one split and return its sample shape.

    Tensor-backed data is checked in full; any other dataset only through its first sample, since
    iterating it could mean decoding every image.
    """
    dataset = data.dataset if isinstance(data, DataLoader) else data
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        size = None
        if not isinstance(data, DataLoader):
            raise PrunedropError(
                f"{where} has no length; use a map-style Dataset (with __len__), not an IterableDataset"
            ) from None
    if size == 0:
        raise PrunedropError(f"{where} is empty; the data must have at least one sample")
    inputs, labels = _first_item(data, where)
    try:
        inputs = torch.as_tensor(inputs)
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError):
        raise PrunedropError(
            f"{where} yields ({type(inputs).__name__}, {type(labels).__name__}) items; "
            "inputs and labels must be tensors, arrays or numbers"
        ) from None
    if labels.is_complex() or (labels.is_floating_point() and not regression):
        raise PrunedropError(f"labels in {where} are {labels.dtype}; labels must be integer class indices"
                             + ("" if labels.is_complex() else " (for real-valued regression targets set loss: mse "
                                "in the recipe)"))
    all_inputs, all_labels = _inputs_of(data), _labels_of(data)
    _check_finite(inputs if all_inputs is None else all_inputs, where)
    if regression:
        _check_finite(labels if all_labels is None else all_labels, where)
    else:
        _check_non_negative(labels if all_labels is None else all_labels, where)
    shape = tuple(inputs.shape)
    return shape[1:] if isinstance(data, DataLoader) else shape


def _first_item(data: Dataset | DataLoader, where: str = "the data") -> Sequence[Any]:
    """The first ``(input, label)`` sample of a Dataset, or the first batch of a DataLoader."""
    if isinstance(data, DataLoader):
        # A shuffling DataLoader draws its seed from the global RNG; peeking at it must not shift the
        # random stream that the caller seeded for training.
        with torch.random.fork_rng(devices=[]):
            item = next(iter(data))
    else:
        item = data[0]
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise PrunedropError(
            f"{where} yields {_describe(item)} items; each item must be an (input, label) pair"
        )
    return item


def _split_off_validation(
    train: Dataset, val_fraction: float, seed: int, name: str
) -> tuple[Dataset, Dataset]:
    """Split a seeded random ``val_fraction`` (at least one sample) off ``train``: (rest, validation)."""
    size = len(train)  # type: ignore[arg-type]
    n_val = max(1, round(size * val_fraction))
    if n_val >= size:
        raise PrunedropError(
            f"the training data of {name!r} has {size} samples, too few to split off a validation set; "
            "add data or give a validation set"
        )
    order = torch.randperm(size, generator=_generator(seed, "validation split"))
    return _take(train, order[n_val:]), _take(train, order[:n_val])


def _take(data: Dataset, indices: torch.Tensor | range) -> Dataset:
    """The samples at ``indices``; tensor data stays a TensorDataset (so it is still checked and fast)."""
    if isinstance(data, TensorDataset):
        index = torch.as_tensor(indices, dtype=torch.long) if isinstance(indices, range) else indices
        return TensorDataset(*(t[index] for t in data.tensors))
    return Subset(data, list(indices) if isinstance(indices, range) else indices.tolist())


def _inputs_of(data: Dataset | DataLoader) -> torch.Tensor | None:
    """All inputs when they are held in one tensor, else None."""
    if isinstance(data, DataLoader):
        return _inputs_of(data.dataset)
    if isinstance(data, TensorDataset):
        return data.tensors[0]
    if isinstance(data, Subset):
        inner = _inputs_of(data.dataset)
        return None if inner is None else inner[torch.as_tensor(data.indices, dtype=torch.long)]
    return None


def _labels_of(data: Dataset | DataLoader) -> torch.Tensor | None:
    """All labels when they are at hand without loading the inputs, else None."""
    if isinstance(data, DataLoader):
        return _labels_of(data.dataset)
    if isinstance(data, TensorDataset):
        return data.tensors[-1] if len(data.tensors) >= 2 else None
    if isinstance(data, Subset):
        inner = _labels_of(data.dataset)
        return None if inner is None else inner[torch.as_tensor(data.indices, dtype=torch.long)]
    targets = getattr(data, "targets", None)  # torchvision-style datasets keep their labels here
    if targets is None:
        return None
    try:
        labels = torch.as_tensor(targets)
        size = len(data)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):
        return None
    if labels.ndim != 1 or len(labels) != size or labels.is_floating_point():
        return None
    return labels


def _num_classes(*splits: Dataset | DataLoader | None) -> int | None:
    """Largest label + 1 over the splits, else ``len(dataset.classes)``, else None when unknown."""
    largest = -1
    for data in splits:
        if data is None:
            continue
        labels = _labels_of(data)
        if labels is None:
            dataset = data.dataset if isinstance(data, DataLoader) else data
            classes = getattr(dataset, "classes", None)
            return len(classes) if isinstance(classes, Sequence) and classes else None
        if labels.numel():
            largest = max(largest, int(labels.max()))
    return largest + 1 if largest >= 0 else None


# --- small helpers ------------------------------------------------------------------------------------


def _generator(*key: object) -> torch.Generator:
    """A generator seeded from ``key`` by hashing, so that nearby keys such as (0, 1) and (1, 0) give
    unrelated streams, and the result is the same on every platform and Python version."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little"))


def _as_dir(data_dir: str | Path) -> Path:
    """``data_dir`` as a Path, checked to exist, so that a typo is reported as such."""
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise PrunedropError(f"data directory {str(directory)!r} does not exist or is not a folder")
    return directory


def _is_dotted_name(text: str) -> bool:
    """Whether ``text`` is a dotted Python name such as ``pkg.mod`` or ``make.data``."""
    return bool(text) and all(part.isidentifier() for part in text.split("."))
