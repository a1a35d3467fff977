"""Data from files without a Python hook: the ``imagefolder:DIR``, ``csv:FILE`` and ``hf:PATH`` data specs.

:mod:`prunedrop.data` parses the spec and calls :func:`load_imagefolder`, :func:`load_csv` or :func:`load_hf`;
each returns ``(train, val, test)`` Datasets (``val``/``test`` None when the files have none), which
``data.load_data`` then checks, splits and limits like every other spec. The recipe's data keys
(``image_size``, ``image_channels``, ``normalize``, ``normalize_mean``/``normalize_std``, ``label_column``,
``loss``) say how the files are read.

Images are decoded on access, one at a time, so a folder of any size costs memory only for its file list;
their headers (size, colour mode) are read up front when the recipe leaves the size or the channels to be
found from the images. Tables (CSV, Hugging Face numeric columns) are read into one float32 tensor.

Pillow (``pip install 'prunedrop[images]'``) decodes images; ``hf:`` needs ``pip install 'prunedrop[hf]'``
(Hugging Face ``datasets``, which brings pyarrow). Nothing is downloaded: ``hf:`` reads local folders and files only.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from .errors import PrunedropError

if TYPE_CHECKING:
    from .recipes import Recipe

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_SIDE", "ImageDataset", "load_csv", "load_hf", "load_imagefolder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
"""File name endings that ``imagefolder:`` reads as images (any case); other files are ignored."""

MAX_IMAGE_SIDE = 4096
"""The largest image side (in pixels) a sample may have after resizing: bigger ones are almost surely a mistake
(one 4096 x 4096 RGB sample is 200 MB as float32)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_VAL_NAMES = ("val", "valid", "validation")
_TEST_NAMES = ("test",)
_GRAY_MODES = frozenset({"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def _recipe(recipe: Recipe | None) -> Recipe:
    from .recipes import Recipe

    return recipe if recipe is not None else Recipe()


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    text = text if len(text) <= 100 else text[:97] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# --- images ---------------------------------------------------------------------------------------------


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise PrunedropError("reading images needs Pillow: pip install 'prunedrop[images]'") from None
    return Image


@dataclass(frozen=True)
class ImageOptions:
    """How every image of a dataset becomes a tensor: resized to ``size`` (height, width), converted to ``mode``
    (``L`` = 1 channel, ``RGB`` = 3), scaled to [0, 1], then normalised with ``mean``/``std`` when given."""

    size: tuple[int, int]
    mode: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


class ImageDataset(Dataset):
    """Images decoded on access: item ``i`` is ``(tensor (C, H, W) float32, label)``.

    ``sources[i]`` is a file path or a zero-argument function returning the encoded bytes; ``names[i]`` is what
    an error message calls the image. ``targets`` and ``classes`` are there as in torchvision's ImageFolder,
    so that the labels are known without decoding anything.
    """

    def __init__(self, sources: Sequence[Path | Callable[[], bytes]], targets: Sequence[int],
                 options: ImageOptions, *, names: Sequence[str] | None = None,
                 classes: Sequence[str] | None = None) -> None:
        self.sources = list(sources)
        self.targets = list(targets)
        self.names = list(names) if names is not None else [str(s) for s in self.sources]
        self.classes = list(classes) if classes is not None else None
        self.options = options
        channels = 1 if options.mode == "L" else 3
        self._mean = None if options.mean is None else torch.tensor(options.mean).reshape(-1, 1, 1)
        self._std = None if options.std is None else torch.tensor(options.std).reshape(-1, 1, 1)
        self.shape = (channels, *options.size)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = decode_image(self.sources[index], self.names[index], self.options)
        if self._mean is not None:
            x = (x - self._mean) / self._std
        return x, self.targets[index]


def decode_image(source: Path | Callable[[], bytes], name: str, options: ImageOptions) -> torch.Tensor:
    """One image as a float32 (C, H, W) tensor in [0, 1] (8-bit values / 255, 16-bit / 65535, float images
    clipped); an unreadable image is a one-line error naming it."""
    image_module = _pil()
    height, width = options.size
    try:
        stream = source if isinstance(source, Path) else io.BytesIO(source())
        with image_module.open(stream) as img:
            # 16- and 32-bit grey images would saturate in an 8-bit conversion: read them as floats
            deep = img.mode.startswith("I") or img.mode == "F"
            scale = 65535.0 if img.mode.startswith("I") else 1.0 if deep else 255.0
            img = img.convert("F" if deep else options.mode)
            if img.size != (width, height):
                img = img.resize((width, height), image_module.Resampling.BILINEAR)
            array = np.array(img, dtype=np.float32)
    except PrunedropError:
        raise
    except Exception as e:  # Pillow raises many types for a damaged file (OSError, SyntaxError, ValueError, ...)
        raise PrunedropError(f"cannot read image {name} ({_reason(e)}); replace or remove the file") from None
    x = torch.from_numpy(array).div_(scale)
    if deep:
        x = x.clamp_(0.0, 1.0).unsqueeze(0)
        return x.expand(3, -1, -1).contiguous() if options.mode == "RGB" else x
    return x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1).contiguous()


def _image_header(source: Path | Callable[[], bytes], name: str) -> tuple[tuple[int, int], str]:
    """(width, height) and colour mode from the image's header, without decoding its pixels."""
    image_module = _pil()
    try:
        stream = source if isinstance(source, Path) else io.BytesIO(source())
        with image_module.open(stream) as img:
            return (int(img.size[0]), int(img.size[1])), str(img.mode)
    except PrunedropError:
        raise
    except Exception as e:
        raise PrunedropError(f"cannot read image {name} ({_reason(e)}); replace or remove the file") from None


def image_options(recipe: Recipe | None, headers: Callable[[], Iterable[tuple[str, tuple[int, int], str]]],
                  where: str) -> ImageOptions:
    """Resolve the recipe's image keys against the images; ``headers()`` yields (name, (w, h), mode) and is
    only called when the recipe leaves the size or the channels to be found from the images."""
    recipe = _recipe(recipe)
    size: tuple[int, int] | None = None
    if recipe.image_size is not None:
        dims = recipe.image_size
        size = (dims[0], dims[0]) if len(dims) == 1 else (dims[0], dims[1])
    channels = recipe.image_channels
    if size is None or channels is None:
        sizes: dict[tuple[int, int], str] = {}
        colour = False
        count = 0
        for name, (w, h), mode in headers():
            count += 1
            if size is None and (w, h) not in sizes:
                sizes[(w, h)] = name
                if len(sizes) > 1:
                    (w0, h0), first = next(iter(sizes.items()))
                    raise PrunedropError(
                        f"{where} has images of different sizes ({first} is {w0}x{h0}, {name} is {w}x{h}); "
                        "set the recipe key image_size (e.g. image_size: [32, 32]) to resize them all"
                    )
            colour = colour or mode not in _GRAY_MODES
        if count == 0:
            raise PrunedropError(f"{where} has no images")
        if size is None:
            (w, h), name = next(iter(sizes.items()))
            if max(w, h) > MAX_IMAGE_SIDE:
                raise PrunedropError(
                    f"{where} has {w}x{h} images ({name}), more than {MAX_IMAGE_SIDE} pixels a side; set the "
                    "recipe key image_size to resize them"
                )
            size = (h, w)
        if channels is None:
            channels = 3 if colour else 1
    mean = std = None
    if recipe.normalize == "imagenet":
        if channels != 3:
            raise PrunedropError(
                f"normalize: imagenet needs RGB inputs, but {where} is read with 1 channel; set image_channels: 3 "
                "or give normalize: custom with normalize_mean/normalize_std"
            )
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif recipe.normalize == "custom":
        mean, std = _per_channel(recipe.normalize_mean, "normalize_mean", channels), _per_channel(
            recipe.normalize_std, "normalize_std", channels)
    return ImageOptions(size=size, mode="L" if channels == 1 else "RGB", mean=mean, std=std)


def _per_channel(values: list[float] | None, key: str, channels: int) -> tuple[float, ...]:
    values = list(values or [])
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise PrunedropError(
            f"recipe key {key!r} has {len(values)} values but the images are read with {channels} channel(s); "
            "give one value per channel (or one for all)"
        )
    return tuple(values)


def load_imagefolder(directory: Path, recipe: Recipe | None = None) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """``imagefolder:DIR``: one sub-folder per class (labels are the sorted folder names' indices); with
    ``train/`` (and ``val/``, ``valid/`` or ``validation/``, and ``test/``) sub-folders, one such tree each."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise PrunedropError(f"image folder {str(directory)!r} does not exist or is not a folder")
    subfolders = _subfolders(directory)
    roots: dict[str, Path | None] = {"train": directory, "val": None, "test": None}
    split_names = {"train", *_VAL_NAMES, *_TEST_NAMES}
    if "train" in subfolders:
        others = sorted(set(subfolders) - split_names)
        if others:
            raise PrunedropError(
                f"image folder {str(directory)!r} has train/ and also {others[0]}/; put every class folder under "
                "train/ (and val/, test/), or drop train/ and keep only class folders"
            )
        roots["train"] = directory / "train"
        vals = [n for n in _VAL_NAMES if n in subfolders]
        if len(vals) > 1:
            raise PrunedropError(f"image folder {str(directory)!r} has both {vals[0]}/ and {vals[1]}/; keep one")
        roots["val"] = directory / vals[0] if vals else None
        roots["test"] = directory / "test" if "test" in subfolders else None
    elif subfolders and set(subfolders) <= split_names - {"train"}:
        found = sorted(subfolders)
        raise PrunedropError(
            f"image folder {str(directory)!r} has {found[0]}/ but no train/; add train/ with one folder per class"
        )
    train_files = _class_files(roots["train"])  # type: ignore[arg-type]
    classes = sorted(train_files)
    label_of = {name: i for i, name in enumerate(classes)}
    split_files: dict[str, dict[str, list[Path]]] = {"train": train_files}
    for split in ("val", "test"):
        root = roots[split]
        if root is None:
            continue
        files = _class_files(root)
        unknown = sorted(set(files) - set(classes))
        if unknown:
            raise PrunedropError(
                f"class folder {str(root / unknown[0])!r} has no counterpart in {str(roots['train'])!r}; every "
                f"{split} class must also be a training class"
            )
        split_files[split] = files

    def samples(files: dict[str, list[Path]]) -> tuple[list[Path], list[int]]:
        paths = [p for name in sorted(files) for p in files[name]]
        return paths, [label_of[name] for name in sorted(files) for _ in files[name]]

    all_paths = [p for files in split_files.values() for name in sorted(files) for p in files[name]]

    def headers() -> Iterable[tuple[str, tuple[int, int], str]]:
        for path in all_paths:
            size, mode = _image_header(path, str(path))
            yield str(path), size, mode

    options = image_options(recipe, headers, f"image folder {str(directory)!r}")
    out: dict[str, Dataset | None] = {"train": None, "val": None, "test": None}
    for split, files in split_files.items():
        paths, labels = samples(files)
        out[split] = ImageDataset(paths, labels, options, classes=classes)
    return out["train"], out["val"], out["test"]  # type: ignore[return-value]


def _subfolders(directory: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise PrunedropError(f"cannot list folder {str(directory)!r} ({e.strerror or e})") from None


def _class_files(root: Path) -> dict[str, list[Path]]:
    """Class name -> its image files (searched recursively, sorted); an error for no or empty class folders."""
    classes = _subfolders(root)
    if not classes:
        raise PrunedropError(
            f"image folder {str(root)!r} has no class folders; put each class's images in a sub-folder named "
            "after the class (e.g. cat/001.png, dog/001.png)"
        )
    found: dict[str, list[Path]] = {}
    for name in classes:
        files: list[Path] = []
        for parent, dirs, names in os.walk(root / name):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files.extend(Path(parent) / n for n in sorted(names)
                         if not n.startswith(".") and n.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise PrunedropError(
                f"class folder {str(root / name)!r} holds no images ({', '.join(IMAGE_SUFFIXES[:4])}, ...); add "
                "images or remove the folder"
            )
        found[name] = files
    return found


# --- CSV ------------------------------------------------------------------------------------------------


def load_csv(path: Path, recipe: Recipe | None = None) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """``csv:FILE`` (one table, the validation split comes from ``val_fraction``) or ``csv:DIR`` with
    ``train.csv`` and optionally ``val.csv`` (or ``valid.csv``, ``validation.csv``) and ``test.csv``."""
    recipe = _recipe(recipe)
    path = Path(path).expanduser()
    files: dict[str, Path | None] = {"train": path, "val": None, "test": None}
    if path.is_dir():
        files["train"] = path / "train.csv"
        if not files["train"].is_file():  # type: ignore[union-attr]
            raise PrunedropError(f"csv folder {str(path)!r} has no train.csv; add it or name a CSV file")
        vals = [path / f"{n}.csv" for n in _VAL_NAMES if (path / f"{n}.csv").is_file()]
        files["val"] = vals[0] if vals else None
        files["test"] = path / "test.csv" if (path / "test.csv").is_file() else None
    elif not path.is_file():
        raise PrunedropError(f"csv file {str(path)!r} does not exist")
    out: dict[str, Dataset | None] = {}
    columns: list[str] | None = None
    for split, file in files.items():
        if file is None:
            out[split] = None
            continue
        x, y, features = _read_csv(file, recipe.label_column, regression=recipe.loss == "mse")
        if columns is not None and features != columns:
            raise PrunedropError(
                f"csv file {str(file)!r} has feature columns {features} but the training file has {columns}; "
                "use the same columns in every split"
            )
        columns = features
        out[split] = TensorDataset(x, y)
    return out["train"], out["val"], out["test"]  # type: ignore[return-value]


def _read_csv(path: Path, label_column: str, *, regression: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Features (N, F) float32 and labels (int64 classes, or float32 targets for ``regression``) of one CSV."""
    where = f"csv file {str(path)!r}"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                raise PrunedropError(f"{where} is empty; it needs a header row naming the columns, then one row "
                                     "per sample")
            header = [h.strip() for h in header]
            duplicates = sorted({h for h in header if header.count(h) > 1})
            if duplicates:
                raise PrunedropError(f"{where} has the column {duplicates[0]!r} twice; name every column once")
            if label_column not in header:
                shown = ", ".join(header[:8]) + (", ..." if len(header) > 8 else "")
                raise PrunedropError(
                    f"{where} has no label column {label_column!r} (its columns: {shown}); set the recipe key "
                    "label_column to the column that holds the labels"
                )
            label_at = header.index(label_column)
            features = [h for i, h in enumerate(header) if i != label_at]
            if not features:
                raise PrunedropError(f"{where} has only the label column {label_column!r}; it needs feature columns")
            rows: list[list[float]] = []
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line
                if len(row) != len(header):
                    raise PrunedropError(
                        f"{where} line {reader.line_num} has {len(row)} values but the header has {len(header)} "
                        "columns; every row needs one value per column"
                    )
                try:
                    values = [float(v) for v in row]
                except ValueError:
                    values = [_number(v, header[i], reader.line_num, where) for i, v in enumerate(row)]
                if not all(math.isfinite(v) for v in values):
                    i = next(i for i, v in enumerate(values) if not math.isfinite(v))
                    raise PrunedropError(
                        f"column {header[i]!r} of {where} line {reader.line_num} holds {row[i].strip()!r}; "
                        "values must be finite numbers"
                    )
                rows.append(values)
    except UnicodeDecodeError as e:
        raise PrunedropError(f"{where} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    except csv.Error as e:
        raise PrunedropError(f"{where} is not valid CSV ({e}); check its quoting") from None
    except OSError as e:
        raise PrunedropError(f"cannot read {where} ({e.strerror or e})") from None
    if not rows:
        raise PrunedropError(f"{where} has a header but no rows; add one row per sample")
    table = np.asarray(rows, dtype=np.float64)
    labels = table[:, label_at]
    x = torch.from_numpy(np.delete(table, label_at, axis=1).astype(np.float32))
    if regression:
        return x, torch.from_numpy(labels.astype(np.float32)), features
    bad = np.flatnonzero((labels != np.round(labels)) | (labels < 0))
    if bad.size:
        raise PrunedropError(
            f"label column {label_column!r} of {where} holds {labels[bad[0]]:g} (data row {bad[0] + 1}); class "
            "labels must be whole numbers 0, 1, ..., C-1 (for regression set loss: mse in the recipe)"
        )
    return x, torch.from_numpy(labels.astype(np.int64)), features


def _number(text: str, column: str, line: int, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        shown = text.strip()
        what = "is empty" if not shown else f"holds {shown[:40]!r}, not a number"
        raise PrunedropError(
            f"column {column!r} of {where} line {line} {what}; csv data must be numeric (encode categories as numbers)"
        ) from None


# --- Hugging Face datasets and parquet ------------------------------------------------------------------

_HF_SPLITS = {"train": ("train",), "val": _VAL_NAMES, "test": _TEST_NAMES}


def load_hf(path: Path, recipe: Recipe | None = None) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """``hf:PATH``: a folder written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, a
    parquet file, or a folder of parquet files whose names (or parent folders) start with the split name
    (``train-00000-of-00001.parquet``, ``data/test-*.parquet``). Local files only; nothing is downloaded."""
    recipe = _recipe(recipe)
    path = Path(path).expanduser()
    if not path.exists():
        raise PrunedropError(f"hf path {str(path)!r} does not exist; give a save_to_disk folder or parquet files")
    if path.is_dir() and any((path / n).is_file() for n in ("dataset_dict.json", "state.json")):
        tables = _tables_from_disk(path)
    else:
        tables = _tables_from_parquet(path)
    out: dict[str, Dataset | None] = {"train": None, "val": None, "test": None}
    for split, (table, where) in tables.items():
        out[split] = _table_dataset(table, where, recipe, path)
    return out["train"], out["val"], out["test"]  # type: ignore[return-value]


def _tables_from_disk(path: Path) -> dict[str, tuple[Any, str]]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # a local folder never needs the network
    try:
        import datasets
    except ImportError:
        raise PrunedropError(
            f"hf:{path} is a Hugging Face datasets folder, which needs datasets: pip install 'prunedrop[hf]'"
        ) from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:
        raise PrunedropError(f"cannot read the datasets folder {str(path)!r} ({_reason(e)}); write it again "
                             "with save_to_disk") from None
    if isinstance(loaded, datasets.DatasetDict):
        parts = dict(loaded)
    else:
        parts = {"train": loaded}
    return _pick_splits({name: d.data.table for name, d in parts.items()}, str(path))


def _tables_from_parquet(path: Path) -> dict[str, tuple[Any, str]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise PrunedropError(f"hf:{path} needs pyarrow to read parquet files: pip install 'prunedrop[hf]'") from None
    if path.is_file():
        files = {"train": [path]}
    else:
        files = {}
        for file in sorted(path.rglob("*.parquet")):
            rel = file.relative_to(path)
            words = [part.lower() for part in (*rel.parts[:-1], rel.name)]
            split = next((s for w in words for s, names in _HF_SPLITS.items()
                          if any(w == n or w.startswith((f"{n}-", f"{n}_", f"{n}.")) for n in names)), None)
            if split is None:
                raise PrunedropError(
                    f"parquet file {str(file)!r} names no split; name the files train-*.parquet, "
                    "validation-*.parquet, test-*.parquet (or put them in train/, validation/, test/ folders)"
                )
            files.setdefault(split, []).append(file)
        if not files:
            raise PrunedropError(f"hf folder {str(path)!r} holds no parquet files and no save_to_disk dataset")
    tables: dict[str, Any] = {}
    for split, paths in files.items():
        try:
            tables[split] = pa.concat_tables([pq.read_table(p) for p in paths])
        except Exception as e:
            raise PrunedropError(f"cannot read parquet file(s) {', '.join(str(p) for p in paths[:2])} "
                                 f"({_reason(e)})") from None
    return _pick_splits(tables, str(path))


def _pick_splits(tables: dict[str, Any], where: str) -> dict[str, tuple[Any, str]]:
    picked: dict[str, tuple[Any, str]] = {}
    for split, names in _HF_SPLITS.items():
        present = [n for n in tables if n.lower() in names]
        if present:
            picked[split] = (tables[present[0]], f"split {present[0]!r} of {where!r}")
    if "train" not in picked:
        raise PrunedropError(f"{where!r} has no 'train' split (it has: {', '.join(sorted(tables))}); name the "
                             "training split 'train'")
    return picked


def _is_image_type(arrow_type: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_struct(arrow_type) and arrow_type.get_field_index("bytes") >= 0


def _table_dataset(table: Any, where: str, recipe: Recipe, root: Path) -> Dataset:
    """One split of an arrow table as a Dataset: one image column, one column of arrays, or numeric columns."""
    import pyarrow as pa

    label = recipe.label_column
    names = list(table.column_names)
    if label not in names:
        raise PrunedropError(f"{where} has no label column {label!r} (its columns: {', '.join(names[:8])}); set the "
                             "recipe key label_column")
    if table.num_rows == 0:
        raise PrunedropError(f"{where} is empty; the data must have at least one sample")
    labels = _hf_labels(table.column(label), label, where, regression=recipe.loss == "mse")
    inputs = [n for n in names if n != label]
    if not inputs:
        raise PrunedropError(f"{where} has only the label column {label!r}; it needs input columns")
    types = {n: table.schema.field(n).type for n in inputs}
    images = [n for n in inputs if _is_image_type(types[n])]
    if images:
        if len(inputs) > 1:
            raise PrunedropError(f"{where} has the image column {images[0]!r} and also {[n for n in inputs if n != images[0]]}"
                                 "; keep one image column and the label column")
        column = table.column(images[0])
        _check_no_nulls(column, images[0], where)
        sources = [_image_bytes(column, i, root, f"row {i} of column {images[0]!r} in {where}")
                   for i in range(table.num_rows)]
        names_ = [f"row {i} of column {images[0]!r} in {where}" for i in range(table.num_rows)]

        def headers() -> Iterable[tuple[str, tuple[int, int], str]]:
            for source, name in zip(sources, names_):
                size, mode = _image_header(source, name)
                yield name, size, mode

        options = image_options(recipe, headers, where)
        return ImageDataset(sources, labels.tolist(), options, names=names_)
    for n in inputs:
        _check_no_nulls(table.column(n), n, where)
    if len(inputs) == 1 and (pa.types.is_list(types[inputs[0]]) or pa.types.is_fixed_size_list(types[inputs[0]])
                             or pa.types.is_large_list(types[inputs[0]])):
        values = table.column(inputs[0]).to_pylist()
        try:
            x = np.asarray(values, dtype=np.float32)
        except (ValueError, TypeError):
            raise PrunedropError(f"column {inputs[0]!r} of {where} holds arrays of different shapes or non-numbers; "
                                 "every sample needs an array of the same shape") from None
        if x.ndim < 2:
            raise PrunedropError(f"column {inputs[0]!r} of {where} holds no arrays")
    else:
        bad = [n for n in inputs if not (pa.types.is_integer(types[n]) or pa.types.is_floating(types[n])
                                         or pa.types.is_boolean(types[n]))]
        if bad:
            raise PrunedropError(
                f"column {bad[0]!r} of {where} holds {types[bad[0]]}, not numbers; inputs must be numeric columns, "
                "one column of arrays, or one image column"
            )
        x = np.stack([table.column(n).to_numpy().astype(np.float32) for n in inputs], axis=1)
    if not np.isfinite(x).all():
        row = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])
        raise PrunedropError(f"row {row} of {where} holds NaN or inf inputs; clean the data first")
    return TensorDataset(torch.from_numpy(x), labels)


def _check_no_nulls(column: Any, name: str, where: str) -> None:
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise PrunedropError(f"column {name!r} of {where} is empty in row {row}; fill in or drop that row")


def _hf_labels(column: Any, name: str, where: str, *, regression: bool) -> torch.Tensor:
    import pyarrow as pa

    _check_no_nulls(column, name, where)
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.index_type
        column = pa.chunked_array([c.indices for c in column.chunks], type=kind)
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise PrunedropError(f"label column {name!r} of {where} holds {column.type}, not numbers; labels must be "
                             "class indices (or numbers with loss: mse)")
    values = column.to_numpy().astype(np.float64)
    if regression:
        if not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise PrunedropError(f"label column {name!r} of {where} holds {values[row]} in row {row}; clean the data")
        return torch.from_numpy(values.astype(np.float32))
    bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)) | (values < 0))
    if bad.size:
        raise PrunedropError(
            f"label column {name!r} of {where} holds {values[bad[0]]:g} in row {bad[0]}; class labels must be whole "
            "numbers 0, 1, ..., C-1 (for regression set loss: mse in the recipe)"
        )
    return torch.from_numpy(values.astype(np.int64))


def _image_bytes(column: Any, row: int, root: Path, name: str) -> Callable[[], bytes]:
    """A function returning the encoded image of ``row``: its embedded bytes, or the file its path names."""

    def read() -> bytes:
        value = column[row].as_py()
        data = value.get("bytes") if isinstance(value, dict) else None
        if data:
            return bytes(data)
        where = value.get("path") if isinstance(value, dict) else None
        if where:
            file = Path(where) if Path(where).is_absolute() else root / where
            if file.is_file():
                return file.read_bytes()
        raise PrunedropError(f"{name} holds no image bytes and no readable file path ({json.dumps(where)}); "
                             "save the dataset with the images embedded")

    return read
