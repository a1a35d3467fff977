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
    none: bool = False
    """The option also takes ``none``: the key set to null (e.g. ``--max-drop none``, no budget), which a plain
    override cannot say (an option not given is None)."""


class _Null:
    """What a ``Cli(none=True)`` option's ``none`` arrives as: not None (an option not given) and not the string
    ``"none"`` (a choice of another key, ``--quantize none``)."""

    def __repr__(self) -> str:
        return "none"


NONE = _Null()


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


def _numeric_text(value: Any) -> float | None:
    """The number that a string such as ``'5e-4'``, ``'1E-3'`` or ``'+2e3'`` writes (what Python's ``float()`` reads,
    in ASCII: YAML 1.1 reads an exponent without a dot, ``lr: 5e-4``, as a string); None for anything else."""
    if not isinstance(value, str) or not value.isascii() or len(value) > 64:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _whole_number(value: Any) -> int | None:
    """``value`` as an int where it writes one exactly: an int, an integral float (``1000.0``) or a numeric string
    whose value is integral (``'1e3'``, ``'+20'``); None otherwise (``2.5``, ``'1.5e0'``, text, booleans, inf, NaN)."""
    import decimal

    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    number = value if isinstance(value, float) else _numeric_text(value)
    if number is None or not math.isfinite(number):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    exact = decimal.Decimal(value.strip().replace("_", ""))  # finite and bounded: float() read it
    return int(exact) if exact == exact.to_integral_value() else None


def _real_number(value: Any) -> float | None:
    """``value`` as a float where it is a number (not a boolean) or a numeric string (:func:`_numeric_text`)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return _numeric_text(value)


def coerce(name: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the field's annotation; ints are accepted for floats, one value for a list. A numeric
    string (``lr: 5e-4``, which YAML reads as a string) is read as its number; an int key takes a whole number in any
    form that writes it exactly (``1e3``, ``1000.0``)."""
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
        numbers = {k: _real_number(v) for k, v in value.items()} if isinstance(value, dict) else None
        if numbers is None or not all(isinstance(k, str) and v is not None and math.isfinite(v)
                                      for k, v in numbers.items()):
            raise PrunedropError(f"recipe key '{name}' must map layer-name globs to numbers, not {value!r}")
        return numbers
    if origin is list:
        return _coerce_list(name, value, args[0])
    if hint is bool:
        if not isinstance(value, bool):
            raise PrunedropError(f"recipe key '{name}' must be true or false, not {value!r}")
        return value
    if hint is int:
        whole = _whole_number(value)
        if whole is None:
            raise PrunedropError(f"recipe key '{name}' must be a whole number, not {value!r}")
        return whole
    if hint is float:
        number = _real_number(value)
        if number is None:
            raise PrunedropError(f"recipe key '{name}' must be a number, not {value!r}")
        if not math.isfinite(number):
            raise PrunedropError(f"recipe key '{name}' must be a finite number, not {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise PrunedropError(f"recipe key '{name}' must be a string, not {value!r}")
        return value
    raise TypeError(f"unhandled recipe annotation {hint!r} for {name}")  # a bug in a declaration, not a user error


def _coerce_list(name: str, value: Any, item: Any) -> list[Any]:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        value = [value]
    read = {str: lambda v: v if isinstance(v, str) else None, int: _whole_number, float: _real_number}[item]
    items = [read(v) for v in value] if isinstance(value, (list, tuple)) else None
    if items is None or any(v is None for v in items):
        kind = {str: "strings", int: "whole numbers", float: "numbers"}[item]
        raise PrunedropError(f"recipe key '{name}' must be a list of {kind}, not {value!r}")
    if item is float and not all(math.isfinite(v) for v in items):
        raise PrunedropError(f"recipe key '{name}' must hold finite numbers, not {value!r}")
    return items
