"""How a recipe key is declared: its type, default, documentation, check and command-line option, in one place.

A group of keys is a small dataclass whose fields are declared with :func:`setting`; the field's docstring (the
string right below it) is its documentation. :mod:`prunedrop.recipes` builds the flat :class:`~prunedrop.recipes.Recipe`,
the map between the flat and the grouped YAML form, the validation and the command-line overrides from these
declarations. Nothing here imports torch.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from .errors import PrunedropError

#: a check of one key's value: called with the key's (flat) name and its coerced value; raises PrunedropError
Check = Callable[[str, Any], None]


@dataclass(frozen=True)
class Cli:
    """A command-line override of a key: ``prunedrop compress <flag> VALUE`` (a flag for true/false keys)."""

    flag: str
    help: str
    metavar: str | None = None


@dataclass(frozen=True)
class AtLeast:
    """The check ``value ≥ low`` (``> low`` when ``open``); ``None`` values pass (null = automatic)."""

    low: float
    open: bool = False

    def __call__(self, name: str, value: Any) -> None:
        if value is None:
            return
        if value < self.low or (self.open and value == self.low):
            raise PrunedropError(f"recipe key '{name}' = {value} must be {'>' if self.open else '≥'} {self.low:g}")


#: the common checks: a count or size that may be zero, and one that may not
NON_NEGATIVE = AtLeast(0)
POSITIVE = AtLeast(0, open=True)


def setting(default: Any = None, *, factory: Callable[[], Any] | None = None, check: Check | tuple[Check, ...] = (),
            cli: Cli | None = None) -> Any:
    """Declare a recipe key: its default (``factory`` for lists and dicts), its checks, its command-line option."""
    checks = check if isinstance(check, tuple) else (check,)
    metadata = {"checks": checks, "cli": cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_docs(cls: type) -> dict[str, str]:
    """Field name → its docstring (whitespace folded), read from the class's source."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[attr-defined]
    return docs


def choices(hint: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal`` key (also inside ``X | None``), else None."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return args
    if _is_union(origin):
        inner = [a for a in args if a is not type(None)]
        return choices(inner[0]) if len(inner) == 1 else None
    return None


def base_type(hint: Any) -> Any:
    """The annotation without ``| None``."""
    if _is_union(get_origin(hint)):
        inner = [a for a in get_args(hint) if a is not type(None)]
        return inner[0]
    return hint


def _is_union(origin: Any) -> bool:
    return origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>")


def coerce(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's annotation; ints are accepted for floats, one value for a list."""
    origin, args = get_origin(hint), get_args(hint)
    if _is_union(origin):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(name, value, inner[0])
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise PrunedropError(f"recipe key '{name}' = {value!r} must be one of {allowed}")
        return value
    if origin is dict:
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for k, v in value.items()
        ):
            raise PrunedropError(f"recipe key '{name}' must map layer-name globs to numbers, not {value!r}")
        return {k: float(v) for k, v in value.items()}
    if origin is list:
        return _coerce_list(name, value, args[0])
    if hint is bool:
        if not isinstance(value, bool):
            raise PrunedropError(f"recipe key '{name}' must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise PrunedropError(f"recipe key '{name}' must be a whole number, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PrunedropError(f"recipe key '{name}' must be a number, not {value!r}")
        if not math.isfinite(value):
            raise PrunedropError(f"recipe key '{name}' must be a finite number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise PrunedropError(f"recipe key '{name}' must be a string, not {value!r}")
        return value
    raise TypeError(f"unhandled recipe annotation {hint!r} for {name}")  # a bug in a declaration, not a user error


def _coerce_list(name: str, value: Any, item: Any) -> list[Any]:
    accepted = (int, float) if item is float else item
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, accepted) and not isinstance(v, bool) for v in value
    ):
        kind = {str: "strings", int: "whole numbers", float: "numbers"}[item]
        raise PrunedropError(f"recipe key '{name}' must be a list of {kind}, not {value!r}")
    if item is float:
        if not all(math.isfinite(v) for v in value):
            raise PrunedropError(f"recipe key '{name}' must hold finite numbers, not {value!r}")
        return [float(v) for v in value]
    return list(value)
