"""IDX files (the MNIST format): one file read and checked against its header, and a folder's train and
test pairs found and loaded."""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import PrunedropError
from .checks import as_labels, tensor_dataset

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


def find_idx_files(directory: Path) -> dict[str, Path | None]:
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


def load_idx_dir(directory: Path, *, require_test: bool) -> tuple[Dataset, None, Dataset | None]:
    """Train and (when present or required) test data from the IDX files in ``directory``."""
    files = find_idx_files(directory)
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
    return tensor_dataset(x, as_labels(labels, f"IDX file {str(labels_path)!r}"), images_path.name)
