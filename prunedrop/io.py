"""Model loading and saving."""

from __future__ import annotations

import importlib
import sys
from typing import Any

from .errors import PrunedropError


def import_object(spec: str, *, what: str = "object") -> Any:
    """Import ``module:attr`` (``attr`` may be dotted) and return it.

    Only the module the user names is imported. The current directory is put on ``sys.path`` so that
    a user's own ``models.py`` beside their data can be named, as ``python -m`` would allow.
    """
    if ":" not in spec:
        raise PrunedropError(f"{what} {spec!r} is not of the form 'module:name', e.g. 'examples.models:lenet300'")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PrunedropError(f"{what} {spec!r} is not of the form 'module:name', e.g. 'examples.models:lenet300'")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise PrunedropError(f"cannot import module {module_name!r} for {what} {spec!r}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PrunedropError(f"module {module_name!r} has no attribute {attr!r} (from {what} {spec!r})") from None
    return obj
