"""A tokenized ``hf:`` dataset (an ``input_ids`` column of id lists, as a tokenizer's ``map`` writes it) as int64 id
tensors, every list padded to the longest of all the splits (one length: the exported ONNX file takes one).

The tokenizer's other columns are left out, with one line saying so: ``attention_mask`` (the model builds it from the
pad id), ``token_type_ids`` (all zeros for single sentences) and the source text. Labels come from ``label_column``,
one number per sample, or one per token (a list as long as the sample's ids, padded with -100, the index that the
loss ignores).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ...errors import PrunedropError

if TYPE_CHECKING:
    from ...recipes import Recipe

TOKEN_COLUMN = "input_ids"
#: the label that the loss ignores, padding per-token labels
IGNORE_INDEX = -100

Labels = Callable[..., torch.Tensor]


def missing_label(label: str, names: list[str], where: str) -> PrunedropError:
    """The error for a table without the label column, naming a ``labels`` column as the likely one."""
    hint = " (it has 'labels': set label_column: labels)" if label != "labels" and "labels" in names else ""
    return PrunedropError(f"{where} has no label column {label!r}{hint} (its columns: {', '.join(names[:8])}); set "
                          "the recipe key label_column")


def token_datasets(tables: dict[str, tuple[Any, str]], recipe: Recipe, labels: Labels,
                   log: Callable[[str], None] | None) -> dict[str, Dataset]:
    """Each split's ``(ids, labels)`` as a TensorDataset; ``labels(column, name, where, regression=...)`` reads a
    column of one label per sample."""
    pad = 0 if recipe.pad_token_id is None else int(recipe.pad_token_id)
    ids = {split: _ids(table, where) for split, (table, where) in tables.items()}
    length = max(int(lengths.max()) for _, lengths in ids.values())
    out: dict[str, Dataset] = {}
    for split, (table, where) in tables.items():
        values, lengths = ids[split]
        out[split] = TensorDataset(_padded(values, lengths, length, pad),
                                   _labels(table, where, recipe, labels, lengths, length))
    if log is not None:
        _log_left_out(tables, recipe, pad, length, log)
    return out


def _ids(table: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The flat ids of ``table``'s ``input_ids`` and each row's count, checked: whole numbers, 0 or more, no row
    empty."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if TOKEN_COLUMN not in table.column_names:
        raise PrunedropError(f"{where} has no {TOKEN_COLUMN!r} column while another split has; tokenize every split")
    if table.num_rows == 0:
        raise PrunedropError(f"{where} is empty; the data must have at least one sample")
    column = table.column(TOKEN_COLUMN).combine_chunks()
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        raise PrunedropError(f"column {TOKEN_COLUMN!r} of {where} holds {kind}, not lists of token ids; tokenize the "
                             "text (a tokenizer's map writes one list of ids per sample)")
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise PrunedropError(f"column {TOKEN_COLUMN!r} of {where} is empty in row {row}; fill in or drop that row")
    value_type = kind.value_type
    if not (pa.types.is_integer(value_type) or pa.types.is_floating(value_type)):
        raise PrunedropError(f"column {TOKEN_COLUMN!r} of {where} holds lists of {value_type}, not token ids; "
                             "token ids are whole numbers, one list per sample")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    if (lengths == 0).any():
        row = int(np.flatnonzero(lengths == 0)[0])
        raise PrunedropError(f"row {row} of {where} has an empty {TOKEN_COLUMN!r} list; drop that row or tokenize its "
                             "text again")
    flat = pc.list_flatten(column)
    if flat.null_count:
        raise PrunedropError(f"column {TOKEN_COLUMN!r} of {where} holds a missing id; tokenize the text again")
    values = flat.to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)) | (values < 0)) \
        if values.dtype.kind == "f" else np.flatnonzero(values < 0)
    if bad.size:
        row = int(np.searchsorted(np.cumsum(lengths), int(bad[0]), side="right"))
        raise PrunedropError(f"row {row} of {where} holds the token id {values[bad[0]]:g}; token ids are whole numbers, "
                             "0 or more")
    return values.astype(np.int64), lengths


def _padded(values: np.ndarray, lengths: np.ndarray, length: int, pad: int) -> torch.Tensor:
    x = np.full((len(lengths), length), pad, dtype=np.int64)
    x[np.arange(length)[None, :] < lengths[:, None]] = values
    return torch.from_numpy(x)


def _labels(table: Any, where: str, recipe: Recipe, labels: Labels, lengths: np.ndarray,
            length: int) -> torch.Tensor:
    """One label per sample (``labels`` reads it), or one per token padded with -100."""
    import pyarrow as pa
    import pyarrow.compute as pc

    name = recipe.label_column
    if name not in table.column_names:
        raise missing_label(name, list(table.column_names), where)
    column = table.column(name)
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        return labels(column, name, where, regression=recipe.loss == "mse")
    column = column.combine_chunks()
    counts = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if column.null_count or not np.array_equal(counts, lengths):
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False) | (counts != lengths))[0])
        raise PrunedropError(f"row {row} of {where} has {lengths[row]} token ids but a {name!r} list of another "
                             "length; give one label per token (-100 for one to ignore)")
    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.isfinite(values).all() or (values != np.round(values)).any() or ((values < 0) & (values != -100)).any():
        raise PrunedropError(f"column {name!r} of {where} holds a per-token label that is no class index; give class "
                             "indices 0..C-1, -100 for a token to ignore")
    y = np.full((len(lengths), length), IGNORE_INDEX, dtype=np.int64)
    y[np.arange(length)[None, :] < lengths[:, None]] = values.astype(np.int64)
    return torch.from_numpy(y)


def _log_left_out(tables: dict[str, tuple[Any, str]], recipe: Recipe, pad: int, length: int,
                  log: Callable[[str], None]) -> None:
    left = sorted({n for table, _ in tables.values() for n in table.column_names}
                  - {TOKEN_COLUMN, recipe.label_column})
    unused = (f"; not used: {', '.join(left)} (input_ids alone are fed; a Hugging Face model folder builds its "
              "attention mask from the pad id)") if left else ""
    log(f"tokenized data: {TOKEN_COLUMN} padded with id {pad} to {length} tokens{unused}")
