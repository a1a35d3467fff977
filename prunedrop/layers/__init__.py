"""Variational layers, one file per noise family, found through :data:`LAYER_REGISTRY`."""

from .base import LAYER_REGISTRY, VariationalLayer, register_layer
from .sparse_vd import Conv1dSVD, Conv2dSVD, Conv3dSVD, LinearSVD, kl_log_uniform

__all__ = [
    "LAYER_REGISTRY",
    "Conv1dSVD",
    "Conv2dSVD",
    "Conv3dSVD",
    "LinearSVD",
    "VariationalLayer",
    "kl_log_uniform",
    "register_layer",
]
