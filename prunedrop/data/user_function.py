"""``python:MODULE:FUNCTION``: the user's data function called, and each form it may return made a bundle."""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset

from ..errors import PrunedropError, describe
from ..storage import import_object
from .assemble import assemble
from .bundle import SPLITS, DataBundle
from .checks import describe_value


def from_python(arg: str, name: str, val_fraction: float, seed: int, train_limit: int | None, *,
                regression: bool = False, tags: bool = False) -> DataBundle:
    """Call the user's data function and turn whatever of the accepted forms it returns into a bundle."""
    func = import_object(arg, what="data function")
    if not callable(func):
        raise PrunedropError(f"data function {arg!r} is not callable (it is a {type(func).__name__} object)")
    try:
        result = func()
    except (Exception, SystemExit) as e:  # the user's function failing is the user's to fix: one line, not a traceback
        raise PrunedropError(f"data function {arg!r} failed when called with no arguments ({describe(e)}): fix it, "
                             "or try it alone in Python") from e
    expected = "a DataBundle, a dict with 'train' (and 'val', 'test'), or a tuple (train, val[, test])"
    given: DataBundle | None = None
    if isinstance(result, DataBundle):
        given = result
        parts = {"train": result.train, "val": result.val, "test": result.test}
    elif isinstance(result, dict):
        unknown = sorted(str(k) for k in result if k not in SPLITS)
        if unknown:
            raise PrunedropError(
                f"data function {arg!r} returned unknown keys {unknown}; use {', '.join(SPLITS)}"
            )
        if "train" not in result:
            raise PrunedropError(f"data function {arg!r} returned a dict without 'train'; return {expected}")
        parts = {split: result.get(split) for split in SPLITS}
    elif isinstance(result, (tuple, list)) and len(result) in (2, 3):
        parts = dict(zip(SPLITS, result))
        parts.setdefault("test", None)
    else:
        raise PrunedropError(f"data function {arg!r} returned {describe_value(result)}; return {expected}")
    for split, data in parts.items():
        if data is not None and not isinstance(data, (Dataset, DataLoader)):
            raise PrunedropError(
                f"data function {arg!r} returned {describe_value(data)} as {split}; use a torch Dataset or DataLoader"
            )
    if parts["train"] is None:
        raise PrunedropError(f"data function {arg!r} returned no training data; return {expected}")
    if parts["val"] is None and isinstance(parts["train"], DataLoader):
        raise PrunedropError(
            f"data function {arg!r} returned a training DataLoader and no validation data; a validation set "
            "cannot be split off a DataLoader, so return (train, val) or a Dataset instead"
        )
    bundle = assemble(
        name,
        parts["train"],
        parts["val"],
        parts["test"],
        val_fraction=val_fraction,
        seed=seed,
        train_limit=train_limit,
        regression=regression,
        tags=tags,
    )
    if given is not None:
        bundle.name, bundle.input_shape, bundle.num_classes = given.name, given.input_shape, given.num_classes
    return bundle
