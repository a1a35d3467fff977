"""prunedrop: make trained PyTorch networks smaller with variational dropout.

The main entry points are re-exported here lazily, so that ``import prunedrop`` (and the CLI's
``--help``) does not pay for importing torch until one of them is used.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("prunedrop")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "compress": "prunedrop.pipeline",
    "Recipe": "prunedrop.recipes",
    "load_recipe": "prunedrop.recipes",
    "load_data": "prunedrop.data",
    "load_model": "prunedrop.storage",
    "load_saved_model": "prunedrop.storage",
    "to_variational": "prunedrop.convert",
    "to_deterministic": "prunedrop.convert",
    "finetune": "prunedrop.train",
    "export_onnx": "prunedrop.export",
    "verify_onnx": "prunedrop.export",
    "PrunedropError": "prunedrop.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prunedrop' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
