"""Variational layers, one file per noise family, found through :data:`LAYER_REGISTRY`.

* ``sparse_vd``: per-weight sparse variational dropout (:mod:`.sparse_vd`)
* ``sbp``: per-unit log-normal multiplicative noise, structured Bayesian pruning (:mod:`.lognormal`)
* ``group_vd``: per-unit Gaussian multiplicative noise, group variational dropout (:mod:`.group_vd`)
* recurrent (:mod:`.recurrent`): ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` under ``sparse_vd`` (per-weight noise drawn
  once per sequence) and ``group_vd`` (the same plus group noise on inputs, hidden units and gates; not ``nn.RNN``);
  ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell`` under ``sparse_vd`` (the draw reused along the caller's loop)
* ``sbp_sparse_vd``: both granularities, SBP's per-unit noise over per-weight sparse VD (:mod:`.sbp_sparse_vd`)

Beside Linear/Conv: ``nn.MultiheadAttention`` per weight (``sparse_vd``) or per head (``group_vd``, ``sbp``)
(:mod:`.attention`), and ``nn.Embedding`` and ``nn.EmbeddingBag`` per vocabulary row under both (:mod:`.embedding`).

All are selected by the recipe's ``method``; the per-unit families are followed by physical slimming
(:mod:`prunedrop.slim`).

Each family's recipe settings are a small config in :mod:`.configs` (torch-free, so that reading a recipe does not
import torch); a layer's ``from_dense`` receives only the settings it names.

The names below are imported lazily, like :mod:`prunedrop`'s: the first one asked for imports every layer file
(and so registers every layer), while ``prunedrop.layers.configs`` alone needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "HeadPrunedMultiheadAttention": "attention", "MultiheadAttentionGroupVD": "attention",
    "MultiheadAttentionSBP": "attention", "MultiheadAttentionSVD": "attention",
    "LAYER_REGISTRY": "base", "VariationalLayer": "base", "from_dense_options": "base", "register_layer": "base",
    "Conv1dSBPSparseVD": "sbp_sparse_vd", "Conv2dSBPSparseVD": "sbp_sparse_vd", "Conv3dSBPSparseVD": "sbp_sparse_vd",
    "LinearSBPSparseVD": "sbp_sparse_vd",
    "Conv1dLogNormalSVD": "sbp_sparse_vd", "Conv2dLogNormalSVD": "sbp_sparse_vd", "Conv3dLogNormalSVD": "sbp_sparse_vd",
    "LinearLogNormalSVD": "sbp_sparse_vd",
    "EmbeddingSVD": "embedding", "RemappedEmbedding": "embedding", "EmbeddingBagSVD": "embedding",
    "RemappedEmbeddingBag": "embedding",
    "Conv1dGroupVD": "group_vd", "Conv2dGroupVD": "group_vd", "Conv3dGroupVD": "group_vd", "LinearGroupVD": "group_vd",
    "ConvTranspose1dGroupVD": "group_vd", "ConvTranspose2dGroupVD": "group_vd", "ConvTranspose3dGroupVD": "group_vd",
    "Conv1dLogNormal": "lognormal", "Conv2dLogNormal": "lognormal", "Conv3dLogNormal": "lognormal",
    "LinearLogNormal": "lognormal",
    "ConvTranspose1dLogNormal": "lognormal", "ConvTranspose2dLogNormal": "lognormal",
    "ConvTranspose3dLogNormal": "lognormal",
    "GRUSVD": "recurrent", "LSTMSVD": "recurrent", "RNNSVD": "recurrent", "GRUGroupVD": "recurrent",
    "LSTMGroupVD": "recurrent", "GRUCellSVD": "recurrent", "LSTMCellSVD": "recurrent", "RNNCellSVD": "recurrent",
    "Conv1dSVD": "sparse_vd", "Conv2dSVD": "sparse_vd", "Conv3dSVD": "sparse_vd", "LinearSVD": "sparse_vd",
    "ConvTranspose1dSVD": "sparse_vd", "ConvTranspose2dSVD": "sparse_vd", "ConvTranspose3dSVD": "sparse_vd",
    "kl_log_uniform": "sparse_vd",
}
#: every layer file, imported (and so registered) before any name is handed out
_LAYER_FILES = ("sparse_vd", "group_vd", "lognormal", "sbp_sparse_vd", "recurrent", "attention", "embedding")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in _LAYER_FILES:
        importlib.import_module(f".{module}", __name__)
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
