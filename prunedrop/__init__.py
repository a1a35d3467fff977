"""prunedrop: make trained PyTorch networks smaller with variational dropout."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("prunedrop")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
