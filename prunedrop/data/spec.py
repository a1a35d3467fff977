"""Data specs' syntax: ``NAME`` or ``KIND:ARG`` split and checked without importing or opening anything."""

from __future__ import annotations

import difflib

from ..errors import PrunedropError

NAMED_DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist")
"""Specs that name a dataset and take no argument."""

_ARG_KINDS: dict[str, str] = {"idx": "DIR", "npz": "FILE", "imagefolder": "DIR", "csv": "FILE", "hf": "PATH",
                              "python": "MODULE:FUNCTION"}
_VALID_FORMS = "digits, mnist, fashion-mnist, idx:DIR, npz:FILE, imagefolder:DIR, csv:FILE, hf:PATH, python:MODULE:FUNCTION"


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a data spec into ``(kind, argument)``; the argument is ``""`` for a named dataset.

    Only the syntax is checked here (nothing is imported or opened), and anything malformed raises
    :class:`PrunedropError` whose message is one line.
    """
    if not isinstance(spec, str):
        raise PrunedropError(
            f"a data spec must be a string, got {type(spec).__name__}; use one of: {_VALID_FORMS}"
        )
    text = spec.strip()
    if not text:
        raise PrunedropError(f"the data spec is empty; use one of: {_VALID_FORMS}")
    if "\x00" in text:
        raise PrunedropError(f"data spec {spec!r} contains a NUL character; use one of: {_VALID_FORMS}")
    kind, sep, arg = text.partition(":")
    kind = kind.strip().lower()
    arg = arg.strip()
    if kind in NAMED_DATASETS:
        if sep:
            raise PrunedropError(
                f"data spec {spec!r}: {kind!r} takes no argument; give the folder of its files with --data-dir"
            )
        return kind, ""
    if kind not in _ARG_KINDS:
        close = difflib.get_close_matches(kind, [*NAMED_DATASETS, *_ARG_KINDS], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        if not sep and text.lower().endswith(".npz"):
            hint = f"; did you mean 'npz:{text}'?"
        raise PrunedropError(f"unknown data spec {spec!r}; use one of: {_VALID_FORMS}{hint}")
    if not sep or not arg:
        raise PrunedropError(f"data spec {spec!r} lacks its argument; write it as {kind}:{_ARG_KINDS[kind]}")
    if kind == "python":
        module, sep, func = arg.partition(":")
        if not sep or not _is_dotted_name(module) or not _is_dotted_name(func):
            raise PrunedropError(
                f"data spec {spec!r} is not of the form python:MODULE:FUNCTION, e.g. python:mydata:load"
            )
    return kind, arg


def _is_dotted_name(text: str) -> bool:
    """Whether ``text`` is a dotted Python name such as ``pkg.mod`` or ``make.data``."""
    return bool(text) and all(part.isidentifier() for part in text.split("."))
