"""Token ids against the embeddings that look them up, before any file: an id outside an ``nn.Embedding``'s rows
stopped a run in its baseline measurement with torch's ``IndexError: index out of range in self``, after run.json
was written, and a token-id data set whose first samples held such an id was refused as "Expected tensor for
argument #1 'indices' to have one of the following scalar types: Long, Int"."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import PrunedropError
from ..modes import untouched
from .bundle import SPLITS

if TYPE_CHECKING:
    from .bundle import DataBundle

#: the modules whose first argument holds row indices
EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)


def embeddings(model: nn.Module) -> dict[str, nn.Module]:
    """The ``nn.Embedding`` and ``nn.EmbeddingBag`` modules of ``model`` by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, EMBEDDINGS)}


@contextmanager
def checked_token_ids(model: nn.Module, where: str) -> Iterator[None]:
    """Inside, an embedding of ``model`` that is given an id outside its rows (any nn.Embedding or
    nn.EmbeddingBag, however the model computes the ids it looks up) raises a one-line :class:`PrunedropError`
    naming the id, the embedding and ``where`` the inputs came from, before torch's IndexError."""
    handles = [module.register_forward_pre_hook(partial(_check_ids, name=name, where=where), with_kwargs=True)
               for name, module in embeddings(model).items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _check_ids(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *, name: str, where: str) -> None:
    ids = args[0] if args else kwargs.get("input")
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or not ids.numel():
        return  # float ids: torch's own message (fit_inputs makes whole-number inputs int64 first)
    rows = int(module.num_embeddings)
    low, high = int(ids.min()), int(ids.max())
    if 0 <= low and high < rows:
        return
    bad = high if high >= rows else low
    padding = getattr(module, "padding_idx", None)
    if bad < 0:
        fix = (f"ids run from 0 to {rows - 1}: pad with the padding_idx {padding}, not a negative id"
               if padding is not None else f"ids run from 0 to {rows - 1}; a negative id is no row")
    else:
        fix = (f"ids run from 0 to {rows - 1}{f' (padding_idx {padding})' if padding is not None else ''}: check "
               f"that the data's vocabulary is the model's, or build the embedding with num_embeddings={high + 1}")
    raise PrunedropError(f"{where} hold token id {bad} but {type(module).__name__} {name!r} has {rows} rows; {fix}")


def check_token_ids(model: nn.Module, bundle: DataBundle) -> None:
    """One line where an input of a split held in tensors makes an embedding of ``model`` look up an id outside its
    rows: the model (eval mode; modes, buffers and the random state as they were) runs on the samples that hold
    each split's largest and smallest input values, with :func:`checked_token_ids`. Any other failure is left to the
    checks that report it; a split not held in tensors is checked where it is run (the baseline measurement reads
    every validation and test sample so)."""
    if not embeddings(model):
        return
    from torch.utils.data import TensorDataset

    for split in SPLITS:
        data = getattr(bundle, split)
        if not isinstance(data, TensorDataset) or not data.tensors[0].numel():
            continue
        x = data.tensors[0]
        if x.is_complex() or x.dtype == torch.bool:
            continue
        flat = x.reshape(len(x), -1)
        picked = sorted({int(flat.max(dim=1).values.argmax()), int(flat.min(dim=1).values.argmin())})
        name = {"train": "training", "val": "validation"}.get(split, split)
        try:
            with checked_token_ids(model, f"the {name} inputs of {bundle.name}"), untouched(model):
                model.eval()(x[picked])
        except PrunedropError:
            raise
        except Exception:  # noqa: BLE001 - not an id out of range: the other checks say what it is
            continue
