"""Reading torch files safely: ``torch.load`` with ``weights_only=True`` first, every failure as one line.

Shared by model loading, the saved model's weights and checkpoints; also the small helpers that describe what
a file holds (a state dict or not, mismatched keys) in those one-line errors.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import PrunedropError
from ..errors import one_line as _one_line
from ..safety import not_a_file

_MAX_LISTED = 3


def reason(exc: BaseException) -> str:
    # torch's messages run to paragraphs of advice about weights_only; the first sentence is the fact.
    first = re.split(r"(?<=\.)\s", str(exc).strip(), maxsplit=1)[0]
    return _one_line(f"{type(exc).__name__}: {first}" if first else type(exc).__name__, 120)


def _check_readable_file(path: Path, what: str, damaged: str = "save it again") -> None:
    wrong = not_a_file(path)  # a FIFO is no "empty (0 bytes)" file, a path without permission no missing one
    if wrong is not None:
        advice = "check the path" if wrong.startswith(("does not exist", "is a link", "cannot")) else \
            "pass the file saved with torch.save"
        raise PrunedropError(f"{what} {path} {wrong}: {advice}")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise PrunedropError(f"cannot read {what} {path}: {_one_line(e.strerror or str(e))}") from e
    if size == 0:
        raise PrunedropError(f"{what} {path} is empty (0 bytes): {damaged}")


def _zip_members(path: Path) -> list[str] | None:
    """Member names with the archive's top folder stripped, or None when the file is no zip archive."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            return [name.split("/", 1)[1] if "/" in name else name for name in zf.namelist()]
    except Exception:  # a damaged archive: let torch.load report it
        return None


def _refuse_compiled_formats(path: Path, what: str) -> None:
    """TorchScript and torch.export archives are zip files too; torch.load's errors for them are misleading."""
    members = _zip_members(path)
    if members is None or ("data.pkl" in members and "constants.pkl" not in members):
        return
    if "constants.pkl" in members or any(m.startswith("code/") for m in members):
        raise PrunedropError(
            f"{what} {path} is a TorchScript file (torch.jit.save): its layers are compiled and cannot be "
            "converted; save the state dict instead with torch.save(model.state_dict(), path) and pass --arch"
        )
    export_markers = ("archive_format", "serialized_exported_program.json")  # torch >= 2.6, older
    if any(m in members for m in export_markers) or any(m.startswith("models/") for m in members):
        raise PrunedropError(
            f"{what} {path} is a torch.export program (.pt2): its layers are compiled and cannot be "
            "converted; save the state dict instead with torch.save(model.state_dict(), path) and pass --arch"
        )


def _unsafe_globals(path: Path, exc: BaseException) -> list[str]:
    """The Python globals a checkpoint would make the unpickler import, found without unpickling it."""
    import torch

    found: list[str] = []
    get_globals = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if get_globals is not None:
        try:
            found = list(get_globals(path))
        except Exception:
            found = []
    if not found:  # legacy (non-zip) files: only the weights-only unpickler's message names the global
        found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    # The user's own classes say most about what the file is; torch's internals come last.
    return sorted(dict.fromkeys(found), key=lambda name: (name.startswith("torch."), name))


def _suffix_hint(path: Path) -> str:
    hints = {
        ".onnx": "; an ONNX file cannot be fine-tuned: pass the PyTorch model it was exported from",
        ".safetensors": "; safetensors files are not supported yet: save with torch.save(model.state_dict(), path)",
    }
    return hints.get(path.suffix.lower(), "")


def torch_load(path: Path, *, what: str, trust_pickle: bool, pickled: str, pickle_advice: str,
               damaged: str | None = None) -> Any:
    """``torch.load`` that turns every failure into one PrunedropError line.

    The file is first read with ``weights_only=True``; only when that fails because the file holds pickled
    Python objects, and the caller trusts it, is it read again with full unpickling. ``damaged``: what to do about
    a file that is empty, truncated or corrupt (by default: save it again).
    """
    import torch

    _check_readable_file(path, what, damaged or "save it again")
    _refuse_compiled_formats(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, KeyError, ... on bad files
        safe_error = e
    names = _unsafe_globals(path, safe_error)
    if not names:
        raise PrunedropError(
            f"cannot read {what} {path}: it is not a file written by torch.save, or it is truncated or corrupt "
            f"({reason(safe_error)}){_suffix_hint(path)}" + (f"; {damaged}" if damaged else "")
        ) from safe_error
    if not trust_pickle:
        raise PrunedropError(
            f"{what} {path} holds {pickled} ({listed(names)}); unpickling can run arbitrary code, so it is not "
            f"loaded by default: {pickle_advice}"
        ) from safe_error
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (Exception, SystemExit) as e:  # its classes cannot be imported here, or the code it runs fails or exits
        raise PrunedropError(
            f"cannot unpickle {what} {path} ({reason(e)}): run from the project that defines the model's "
            "classes, or save torch.save(model.state_dict(), path) and pass --arch module:factory"
        ) from e


def is_state_dict(obj: Any) -> bool:
    import torch

    if not isinstance(obj, Mapping) or not obj:
        return False
    return all(
        isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state")) for k, v in obj.items()
    )


def describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [repr(k) for k in list(obj)[:_MAX_LISTED]]
        more = ", ..." if len(obj) > _MAX_LISTED else ""
        return f"a dict with keys {', '.join(keys)}{more}" if obj else "an empty dict"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def state_mismatch(expected: Mapping[str, tuple[int, ...] | None], got: Mapping[str, Any]) -> str | None:
    """One line listing (a few of) the missing keys, unexpected keys and shape mismatches, or None. An expected
    shape of None fits any (a lazy module's parameter before loading)."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [
        f"{k}: file has {tuple(got[k].shape)}, model has {tuple(expected[k])}"
        for k in expected
        if k in got and expected[k] is not None and hasattr(got[k], "shape")
        and tuple(got[k].shape) != tuple(expected[k])
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {listed(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {listed(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches {listed(shapes)}")
    return "; ".join(parts) or None
