"""Training checkpoints: written atomically, read back with ``torch.load(weights_only=True)``, and the global
RNG states captured and restored so that a resumed fine-tuning run continues where it stopped.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..atomic import atomic_torch_save
from ..errors import PrunedropError
from .read import describe, reason, torch_load


def _check_weights_only_safe(value: Any, where: str) -> None:
    """Refuse at save time what ``torch.load(weights_only=True)`` would refuse at resume time."""
    import torch

    kind = type(value)
    # Only what every torch >= 2.2 weights-only unpickler accepts (sets and bytes came later).
    if value is None or kind in (bool, int, float, str, torch.dtype, torch.device, torch.Size):
        return
    if kind in (torch.Tensor, torch.nn.Parameter):
        return
    if kind in (list, tuple):
        for i, item in enumerate(value):
            _check_weights_only_safe(item, f"{where}[{i}]")
        return
    if kind in (dict, collections.OrderedDict):
        for key, item in value.items():
            _check_weights_only_safe(key, f"{where} key {key!r}")
            _check_weights_only_safe(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"checkpoint value {where} is a {kind.__module__}.{kind.__qualname__}, which torch.load(weights_only=True) "
        "refuses: convert it to a tensor or a plain Python value (float(x), x.tolist(), torch.as_tensor(x))"
    )


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a training checkpoint atomically with ``torch.save``.

    ``state`` may hold tensors, dicts, lists, tuples and plain Python scalars/strings (model and optimizer
    state dicts, scheduler state, :func:`capture_rng_state`, epoch, history, recipe as a dict); anything else
    raises ``TypeError`` now rather than when the run is resumed.
    """
    if not isinstance(state, dict):
        raise TypeError(f"a checkpoint is a dict, not a {type(state).__qualname__}")
    _check_weights_only_safe(state, "state")
    path = Path(path)
    atomic_torch_save(state, path)
    return path


def load_checkpoint(path: str | os.PathLike[str], *, require: Iterable[str] = ()) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``, tensors on the CPU.

    The entries it has must have the types fine-tuning writes (:data:`prunedrop.safety.CHECKPOINT_KEYS`), and
    those named in ``require`` must be there: a PrunedropError otherwise."""
    path = Path(path)
    state = torch_load(
        path,
        what="checkpoint",
        trust_pickle=False,
        pickled="pickled Python objects, not only tensors",
        pickle_advice="prunedrop's save_checkpoint writes only tensors and plain values; was it written by another tool?",
        damaged="it was damaged (a full disk, a copy cut short): run `prunedrop compress` again, with another -o or "
                "--overwrite (the run's report and exported files stay usable as they are)",
    )
    if not isinstance(state, dict):
        raise PrunedropError(f"checkpoint {path} holds {describe(state)}, not a dict: was it written by another tool?")
    from ..safety import check_checkpoint

    check_checkpoint(state, path, require)
    return state


def capture_rng_state() -> dict[str, Any]:
    """Python's, numpy's, torch's (and CUDA's) global RNG states, as types ``weights_only`` loading accepts.

    ``random.getstate()`` becomes a version, an int64 tensor and a float; numpy's legacy global state (its key
    is a uint32 array) an int64 tensor plus plain values; torch's states are already ByteTensors.
    """
    import random

    import torch

    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state["numpy"] = {
        "kind": str(kind),
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the global RNGs from :func:`capture_rng_state`'s dict; generators it does not hold are left alone."""
    import random

    import torch

    try:
        if "python" in state:
            py = state["python"]
            internal = tuple(int(v) for v in py["internal"].tolist())
            random.setstate((int(py["version"]), internal, py["gauss_next"]))
        if "torch" in state:
            torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        if "numpy" in state:
            import numpy as np

            npy = state["numpy"]
            keys = npy["keys"].numpy().astype(np.uint32)
            np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise PrunedropError(f"the checkpoint's RNG state is malformed ({reason(e)}): start the run afresh") from e
