"""Variational layers, one file per noise family, found through :data:`LAYER_REGISTRY`.

* ``sparse_vd``: per-weight sparse variational dropout (:mod:`.sparse_vd`)
* ``sbp``: per-unit log-normal multiplicative noise, structured Bayesian pruning (:mod:`.lognormal`)
* ``group_vd``: per-unit Gaussian multiplicative noise, group variational dropout (:mod:`.group_vd`)
* ``sbp_sparse_vd``: both granularities, SBP's per-unit noise over per-weight sparse VD (:mod:`.combined`)

All are selected by the recipe's ``method``; the per-unit families are followed by physical slimming
(:mod:`prunedrop.slim`).
"""

from .base import LAYER_REGISTRY, VariationalLayer, register_layer
from .combined import Conv1dLogNormalSVD, Conv2dLogNormalSVD, Conv3dLogNormalSVD, LinearLogNormalSVD
from .group_vd import Conv1dGroupVD, Conv2dGroupVD, Conv3dGroupVD, LinearGroupVD
from .lognormal import Conv1dLogNormal, Conv2dLogNormal, Conv3dLogNormal, LinearLogNormal
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
    "LinearGroupVD",
    "LinearLogNormal",
    "LinearLogNormalSVD",
    "LinearSVD",
    "VariationalLayer",
    "kl_log_uniform",
    "register_layer",
]
