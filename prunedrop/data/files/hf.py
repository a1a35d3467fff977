"""``hf:PATH``: Hugging Face ``datasets`` folders written with ``save_to_disk``, and parquet files (local only)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ...errors import PrunedropError, describe
from .common import TEST_NAMES, VAL_NAMES, recipe_or_defaults
from .images import ImageDataset, image_header, image_options
from .tokens import TOKEN_COLUMN, missing_label, token_datasets

if TYPE_CHECKING:
    from ...recipes import Recipe


_HF_SPLITS = {"train": ("train",), "val": VAL_NAMES, "test": TEST_NAMES}


def load_hf(path: Path, recipe: Recipe | None = None,
            log: Callable[[str], None] | None = None) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """``hf:PATH``: a folder written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, a
    parquet file, or a folder of parquet files whose names (or parent folders) start with the split name
    (``train-00000-of-00001.parquet``, ``data/test-*.parquet``). Local files only; nothing is downloaded.

    A tokenized dataset (an ``input_ids`` column) gives its ids, padded to the longest list of every split
    (:mod:`.tokens`); ``log`` gets one line naming the columns it leaves out."""
    recipe = recipe_or_defaults(recipe)
    path = Path(path).expanduser()
    if not path.exists():
        raise PrunedropError(f"hf path {str(path)!r} does not exist; give a save_to_disk folder or parquet files")
    if path.is_dir() and any((path / n).is_file() for n in ("dataset_dict.json", "state.json")):
        tables = _tables_from_disk(path)
    else:
        tables = _tables_from_parquet(path)
    out: dict[str, Dataset | None] = {"train": None, "val": None, "test": None}
    if any(TOKEN_COLUMN in table.column_names for table, _ in tables.values()):
        for split, dataset in token_datasets(tables, recipe, _hf_labels, log).items():
            out[split] = dataset
        return out["train"], out["val"], out["test"]  # type: ignore[return-value]
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
        raise PrunedropError(f"cannot read the datasets folder {str(path)!r} ({describe(e, 100)}); write it again "
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
                                 f"({describe(e, 100)})") from None
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
        raise missing_label(label, names, where)
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
                size, mode = image_header(source, name)
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
            "numbers 0, 1, ..., C-1 (for regression pass --loss mse, or set loss: mse in the recipe)"
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
