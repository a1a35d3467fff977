"""Variational layers, one file per noise family, found through :data:`LAYER_REGISTRY`.

* ``sparse_vd``: per-weight sparse variational dropout (:mod:`.sparse_vd`)
* ``sbp``: per-unit log-normal multiplicative noise, structured Bayesian pruning (:mod:`.lognormal`)
* ``group_vd``: per-unit Gaussian multiplicative noise, group variational dropout (:mod:`.group_vd`)
* recurrent (:mod:`.recurrent`): ``nn.LSTM`` / ``nn.GRU`` under ``sparse_vd`` (per-weight noise drawn once per
  sequence) and ``group_vd`` (the same plus group noise on inputs, hidden units and gates)
* ``sbp_sparse_vd``: both granularities, SBP's per-unit noise over per-weight sparse VD (:mod:`.combined`)

Beside Linear/Conv: ``nn.MultiheadAttention`` per weight (``sparse_vd``) or per head (``group_vd``)
(:mod:`.attention`), and ``nn.Embedding`` per vocabulary row under both (:mod:`.embedding`).

All are selected by the recipe's ``method``; the per-unit families are followed by physical slimming
(:mod:`prunedrop.slim`).
"""

from .attention import HeadPrunedMultiheadAttention, MultiheadAttentionGroupVD, MultiheadAttentionSVD
from .base import LAYER_REGISTRY, VariationalLayer, register_layer
from .combined import Conv1dLogNormalSVD, Conv2dLogNormalSVD, Conv3dLogNormalSVD, LinearLogNormalSVD
from .embedding import EmbeddingSVD, RemappedEmbedding
from .group_vd import Conv1dGroupVD, Conv2dGroupVD, Conv3dGroupVD, LinearGroupVD
from .lognormal import Conv1dLogNormal, Conv2dLogNormal, Conv3dLogNormal, LinearLogNormal
from .recurrent import GRUSVD, LSTMSVD, GRUGroupVD, LSTMGroupVD
from .sparse_vd import Conv1dSVD, Conv2dSVD, Conv3dSVD, LinearSVD, kl_log_uniform

__all__ = [
    "LAYER_REGISTRY",
    "Conv1dGroupVD",
    "Conv1dLogNormal",
    "Conv1dLogNormalSVD",
    "Conv1dSVD",
    "Conv2dGroupVD",
    "Conv2dLogNormal",
    "Conv2dLogNormalSVD",
    "Conv2dSVD",
    "Conv3dGroupVD",
    "Conv3dLogNormal",
    "Conv3dLogNormalSVD",
    "Conv3dSVD",
    "EmbeddingSVD",
    "GRUGroupVD",
    "GRUSVD",
    "HeadPrunedMultiheadAttention",
    "LSTMGroupVD",
    "LSTMSVD",
    "LinearGroupVD",
    "LinearLogNormal",
    "LinearLogNormalSVD",
    "LinearSVD",
    "MultiheadAttentionGroupVD",
    "MultiheadAttentionSVD",
    "RemappedEmbedding",
    "VariationalLayer",
    "kl_log_uniform",
    "register_layer",
]
