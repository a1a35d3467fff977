"""``csv:FILE`` / ``csv:DIR``: numeric tables with a label column."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ...errors import PrunedropError
from ..checks import ClassesDataset, not_a_file, number_names
from .common import VAL_NAMES, recipe_or_defaults

if TYPE_CHECKING:
    from ...recipes import Recipe


def load_csv(path: Path, recipe: Recipe | None = None) -> tuple[Dataset, Dataset | None, Dataset | None]:
    """``csv:FILE`` (one table, the validation split comes from ``val_fraction``) or ``csv:DIR`` with
    ``train.csv`` and optionally ``val.csv`` (or ``valid.csv``, ``validation.csv``) and ``test.csv``."""
    recipe = recipe_or_defaults(recipe)
    path = Path(path).expanduser()
    files: dict[str, Path | None] = {"train": path, "val": None, "test": None}
    if path.is_dir():
        files["train"] = path / "train.csv"
        if not files["train"].is_file():  # type: ignore[union-attr]
            raise PrunedropError(f"csv folder {str(path)!r} has no train.csv; add it or name a CSV file")
        vals = [path / f"{n}.csv" for n in VAL_NAMES if (path / f"{n}.csv").is_file()]
        files["val"] = vals[0] if vals else None
        files["test"] = path / "test.csv" if (path / "test.csv").is_file() else None
    elif not path.is_file():
        raise not_a_file(path, "csv file") or PrunedropError(f"csv file {str(path)!r} cannot be read")
    out: dict[str, Dataset | None] = {}
    named: dict[str, tuple[torch.Tensor, np.ndarray]] = {}  # split → (inputs, label names): numbered below
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
        if isinstance(y, np.ndarray):
            named[split] = (x, y)
        else:
            out[split] = TensorDataset(x, y)
    if named:
        if len(named) < sum(f is not None for f in files.values()):
            raise PrunedropError(f"the label column {recipe.label_column!r} of {str(path)!r} holds names in some "
                                 "files and class indices in others; give every split the same kind")
        where = {split: f"csv file {str(files[split])!r} (label column {recipe.label_column!r})" for split in named}
        numbered, classes = number_names({split: y for split, (_, y) in named.items()}, recipe.class_names, where)
        for split, (x, _) in named.items():
            out[split] = ClassesDataset(x, torch.from_numpy(numbered[split]), classes=classes)
    return out["train"], out["val"], out["test"]  # type: ignore[return-value]


def _read_csv(path: Path, label_column: str, *,
              regression: bool) -> tuple[torch.Tensor, torch.Tensor | np.ndarray, list[str]]:
    """Features (N, F) float32 and labels (int64 classes, or float32 targets for ``regression``) of one CSV; labels
    that are names come back as they are written (an object array), for :func:`load_csv` to number."""
    where = f"csv file {str(path)!r}"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            first = f.readline()  # the header line tells the separator; the reader gets it back in front
            delimiter = _delimiter(first)
            reader = csv.reader(itertools.chain([first], f), delimiter=delimiter)
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
            names: list[str] = []  # the label column as written
            first_name: tuple[str, int] | None = None  # the first label that is no number, and its line
            named = 0
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line
                if len(row) != len(header):
                    raise PrunedropError(
                        f"{where} line {reader.line_num} has {len(row)} values but the header has {len(header)} "
                        "columns; every row needs one value per column"
                    )
                if delimiter == ";":  # a semicolon file may write decimal commas (0,5), as spreadsheets do
                    row = [v.replace(",", ".") for v in row]
                label = row[label_at].strip()
                names.append(label)
                if not _is_number(label):  # a class name: numbered once every split is read (number_names)
                    if regression or not label:
                        _number(label, label_column, reader.line_num, where)  # the error for a missing target
                    row = [*row[:label_at], "0", *row[label_at + 1:]]
                    named += 1
                    first_name = first_name or (label, reader.line_num)
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
    dropped = [label_at]
    if _row_index(header, table, label_at):  # pandas' DataFrame.to_csv() writes its index as a first, unnamed column
        dropped.append(0)
        features = features[1:]
    if not features:
        raise PrunedropError(f"{where} has only the label column {label_column!r} and a row index; it needs feature "
                             "columns")
    features_table = np.delete(table, dropped, axis=1)
    for what, values in (("a feature", features_table), ("the label column", labels if regression else None)):
        if values is not None and values.size and float(np.abs(values).max()) > float(np.finfo(np.float32).max):
            raise PrunedropError(f"{where}: {what} holds {float(np.abs(values).max()):.3g}, beyond float32's range "
                                 "(3.4e38), in which values are read; scale them first")
    x = torch.from_numpy(features_table.astype(np.float32))
    if regression:
        return x, torch.from_numpy(labels.astype(np.float32)), features
    if named == len(names):  # class names
        return x, np.asarray(names, dtype=object), features
    if first_name is not None:  # numbers with a stray word among them: a typo, not names
        text, line = first_name
        _number(text, label_column, line, where)
    bad = np.flatnonzero((labels != np.round(labels)) | (labels < 0))
    if bad.size:
        raise PrunedropError(
            f"label column {label_column!r} of {where} holds {labels[bad[0]]:g} (data row {bad[0] + 1}); class "
            "labels must be whole numbers 0, 1, ..., C-1 (for regression pass --loss mse, or set loss: mse in the recipe)"
        )
    return x, torch.from_numpy(labels.astype(np.int64)), features


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _row_index(header: list[str], table: np.ndarray, label_at: int) -> bool:
    """Whether the first column is a row index as pandas writes it (``DataFrame.to_csv()`` without ``index=False``):
    no name (or pandas' ``Unnamed: 0`` after a second round trip), not the labels, and distinct whole numbers. Fed to
    the model as a feature it made the inputs one wider than the model ("mat1 and mat2 shapes cannot be
    multiplied (1x5 and 4x32)")."""
    if label_at == 0 or header[0] not in ("", "Unnamed: 0"):
        return False
    column = table[:, 0]
    return bool(np.all(column == np.round(column))) and len(np.unique(column)) == len(column)


def _delimiter(header: str) -> str:
    """The header line's separator: a comma, or else a semicolon, tab or bar, whichever it holds most (a
    semicolon-separated file was read as one column named "p0;p1;...;label")."""
    if "," in header:
        return ","
    counts = {d: header.count(d) for d in (";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _number(text: str, column: str, line: int, where: str) -> float:
    try:
        return float(text)
    except ValueError:
        shown = text.strip()
        what = "is empty" if not shown else f"holds {shown[:40]!r}, not a number"
        raise PrunedropError(
            f"column {column!r} of {where} line {line} {what}; csv data must be numeric (encode categories as numbers)"
        ) from None


