""":func:`load_data`: a data spec to a checked :class:`~prunedrop.data.bundle.DataBundle`, by the reader
that its kind names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import PrunedropError
from ..safety import not_a_folder
from .assemble import assemble
from .bundle import DataBundle
from .idx import load_idx_dir
from .named import find_named_idx_dir, load_digits
from .npz import load_npz
from .spec import parse_spec
from .user_function import from_python

if TYPE_CHECKING:
    from ..recipes import Recipe

# Specs read by prunedrop.data.files: kind -> its loader there.
_FILE_LOADERS = {"imagefolder": "load_imagefolder", "csv": "load_csv", "hf": "load_hf"}


def load_data(
    spec: str,
    *,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    train_limit: int | None = None,
    recipe: Recipe | None = None,
    log: Callable[[str], None] | None = None,
) -> DataBundle:
    """Load the data that ``spec`` names (see the module docstring for the forms).

    ``data_dir`` is where ``mnist``/``fashion-mnist`` files are looked for first. A validation set is split
    off the training data (``val_fraction`` of it, in an order seeded by ``seed``) when the spec gives none;
    ``val_fraction`` is then above 0, and unused (0 too) where the spec gives one.
    ``train_limit`` then keeps the first n training samples, for quick runs. ``recipe`` gives the data keys
    of ``imagefolder:``, ``csv:`` and ``hf:`` (image size, channels, normalisation, label column), and its
    ``loss: mse`` lets labels be real numbers (regression); None means the defaults. ``log`` gets the notes of
    a reader (the columns of a tokenized ``hf:`` dataset that are not used).
    """
    kind, arg = parse_spec(spec)
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0.0 <= val_fraction < 1.0
    ):  # the recipe's range; 0 is refused only where a validation split must be split off (assemble)
        raise PrunedropError(f"the validation fraction (val_fraction) must be in [0, 1), got {val_fraction!r}")
    if train_limit is not None and (
        isinstance(train_limit, bool) or not isinstance(train_limit, int) or train_limit < 1
    ):
        raise PrunedropError(f"the training limit must be a positive integer, got {train_limit!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise PrunedropError(f"the seed must be an integer, got {seed!r}")
    name = kind if not arg else f"{kind}:{arg}"
    regression = recipe is not None and recipe.loss == "mse"
    tags = recipe is not None and recipe.loss == "binary_cross_entropy"  # float 0/1 label vectors are a model's labels

    if kind == "python":
        return from_python(arg, name, val_fraction, seed, train_limit, regression=regression, tags=tags)
    if kind in _FILE_LOADERS:
        from . import files

        more = {"log": log} if kind == "hf" else {}  # a tokenized dataset names the columns it leaves out
        train, val, test = getattr(files, _FILE_LOADERS[kind])(Path(arg), recipe, **more)
        return assemble(name, train, val, test, val_fraction=val_fraction, seed=seed, train_limit=train_limit,
                        regression=regression, tags=tags)

    if kind == "digits":
        train, val, test = load_digits()
    elif kind in ("mnist", "fashion-mnist"):
        directory = find_named_idx_dir(kind, _as_dir(data_dir) if data_dir is not None else None)
        train, val, test = load_idx_dir(directory, require_test=True)
    elif kind == "idx":
        directory = Path(arg).expanduser()
        why = not_a_folder(directory)
        if why:
            raise PrunedropError(f"IDX folder {str(directory)!r} {why}")
        train, val, test = load_idx_dir(directory, require_test=False)
    else:  # npz
        train, val, test = load_npz(Path(arg).expanduser(), regression=regression,
                                    class_names=recipe.class_names if recipe is not None else None)
        return assemble(name, train, val, test, val_fraction=val_fraction, seed=seed, train_limit=train_limit,
                        regression=regression, tags=tags)
    return assemble(name, train, val, test, val_fraction=val_fraction, seed=seed, train_limit=train_limit)


def _as_dir(data_dir: str | Path) -> Path:
    """``data_dir`` as a Path, checked to exist, so that a typo is reported as such."""
    directory = Path(data_dir).expanduser()
    why = not_a_folder(directory)
    if why:
        raise PrunedropError(f"data directory {str(directory)!r} {why}")
    return directory
