"""The one error type that prunedrop raises for a user's mistake.

It subclasses :class:`click.ClickException` so that the CLI prints it as a single line and
exits with status 1, while a Python user can catch ``PrunedropError`` without knowing about click.
"""

from __future__ import annotations

import os
import re
import sys
import traceback

import click


def one_line(text: str, limit: int = 160) -> str:
    """``text`` with its whitespace collapsed (a wrapped message cannot break a one-line error), cut to ``limit``."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(exc: BaseException, limit: int = 160) -> str:
    """``Type: message`` of an exception on one line, the message cut to ``limit``, for quoting in an error."""
    text = one_line(str(exc), limit)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PrunedropError(click.ClickException):
    """A problem with the user's input or environment: one line saying what is wrong and what to do."""

    exit_code = 1
    #: longest message kept: a hostile input quoted in full (a megabyte-long recipe value) stays readable
    max_length = 1000

    def __init__(self, message: str) -> None:
        # one line, whatever a hostile input quoted in it holds (a recipe key with a newline in it): characters
        # that are not printable are written as escapes (\n, \x0b, \u2028)
        text = str(message).strip()
        kept = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                       for c in text[: self.max_length])
        if len(text) > self.max_length:
            kept += f"... ({len(text) - self.max_length:,} more characters)"
        super().__init__(kept)

    def naming(self, path: str | os.PathLike[str], name: str) -> PrunedropError:
        """This error (of the same type) with ``path``, a temporary file deleted by the time the message is read,
        written as ``name``: what the file was made for."""
        return type(self)(self.message.replace(str(path), name))

    def naming_in(self, folder: str | os.PathLike[str], what: str) -> PrunedropError:
        """This error (of the same type) with each file of the temporary ``folder``, deleted by the time the message
        is read, written as ``what`` and its name: ``/tmp/x/trial.onnx`` → ``the int8 planning's trial.onnx
        (deleted)``."""
        pattern = re.escape(str(folder).rstrip(os.sep) + os.sep) + r"([^\s,;:'\"()]+)"
        return type(self)(re.sub(pattern, lambda m: f"{what} {m.group(1)} (deleted)", self.message))


def _library_roots() -> tuple[str, ...]:
    """Folders whose code is prunedrop's or a library's it runs the user's code through, never the user's: prunedrop
    itself, torch and click (wherever installed), and Python's standard library (not its site-packages)."""
    roots = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.abspath(os.__file__))]
    for name in ("torch", "click"):
        module = sys.modules.get(name)
        if getattr(module, "__file__", None):
            roots.append(os.path.dirname(os.path.abspath(module.__file__)))  # type: ignore[union-attr, arg-type]
    return tuple(roots)


def _under(filename: str, root: str) -> bool:
    return filename == root or filename.startswith(root.rstrip(os.sep) + os.sep)


def _is_library(filename: str, roots: tuple[str, ...]) -> bool:
    if filename.startswith("<"):  # <frozen runpy>, <string>: the interpreter's own, or code given as text
        return not filename.startswith("<string")
    path = os.path.abspath(filename)
    parts = path.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:  # an installed package: the user's unless listed
        return any(_under(path, r) for r in roots[:1] + roots[2:])
    return any(_under(path, r) for r in roots)


def exit_error(exc: SystemExit) -> PrunedropError:
    """The one line for a ``SystemExit`` that the user's code raised while prunedrop ran it (``sys.exit()``,
    ``exit()``, an ``argparse`` error in a model's module): a model's forward, a Dataset's ``__getitem__``, a
    sampler, a collate function, an ``--arch`` factory. Uncaught, it ended prunedrop silently with the code's status
    (0 for ``sys.exit()``: a "success" that wrote nothing). Names what called it and where (the deepest frame of the
    traceback that is not prunedrop's, torch's, click's or the standard library's)."""
    frames = traceback.extract_tb(exc.__traceback__)
    roots = _library_roots()
    own = roots[0]
    user = next((i for i in range(len(frames) - 1, -1, -1) if not _is_library(frames[i].filename, roots)), None)
    code = exc.code
    status = "" if code is None else one_line(repr(code), 60)
    if user is None:
        return PrunedropError(f"code that prunedrop ran raised SystemExit({status}) instead of an exception: "
                              "prunedrop stopped here; run it alone in Python to see where")
    frame = frames[user]
    caller = max((i for i in range(user) if _under(os.path.abspath(frames[i].filename), own)), default=None)
    between = [os.path.abspath(f.filename).replace(os.sep, "/") for f in frames[(caller or 0) + 1:user]]
    into = "" if caller is None else os.path.abspath(frames[caller].filename).replace(os.sep, "/")
    if any(f.endswith("/torch/nn/modules/module.py") for f in between):
        who = "the model's code (its forward)"
    elif any("/torch/utils/data/" in f for f in between) or "/prunedrop/data/" in into:
        who = "the data's code (a Dataset, sampler or collate function)"
    elif "/prunedrop/storage/" in into:
        who = "the model's code (building or loading it)"
    else:
        who = "your code"
    where = frame.filename
    try:
        relative = os.path.relpath(where)
        where = relative if not relative.startswith("..") else where
    except ValueError:  # another drive (Windows)
        pass
    return PrunedropError(f"{who} raised SystemExit({status}) at {one_line(where, 120)}:{frame.lineno} in "
                          f"{frame.name}() while prunedrop ran it: prunedrop stopped here; code that prunedrop runs "
                          "must raise an exception, not exit (sys.exit, exit, argparse)")


class ParityError(PrunedropError):
    """The ONNX model does not compute what the PyTorch model computes."""


class TrainingError(PrunedropError):
    """Fine-tuning cannot go on (loss became NaN/inf, everything pruned, ...)."""
