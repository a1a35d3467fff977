"""einops in a traced forward: ``rearrange``, ``reduce``, ``repeat``, ``einsum`` and the ``Rearrange`` / ``Reduce``
layers recorded as the torch operations they perform.

einops reads a tensor's shape in Python to compute the reshape it does, and torch.fx's proxies have no shape:
``rearrange(h, "b c h w -> b (h w) c")`` stopped the trace ("Tensor type unknown to einops"), an einops layer with
``KeyError: Proxy(...)``. Whatever reads the graph was lost with it (the model's output layers, the BatchNorm
placement, ``architecture.json``). While :func:`prunedrop.fxtrace.symbolic_trace` traces, :func:`replacements`
make einops work on proxies: the rank comes from the pattern's left side, each size is read with ``x.size(i)`` where
einops needs it, and einops' own recipe does the rest, so the graph holds ``reshape``, ``permute``, ``mean`` /
``amax`` / ``sum``, ``unsqueeze`` / ``expand`` with sizes computed from the input (a new batch size still works). A
pattern with an ellipsis on a traced tensor still stops the trace (its rank is unknown there), as do einops
versions whose internals differ (before 0.7); untraced calls are untouched.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

__all__ = ["einops_layer_forward", "replacements"]

_AXES = re.compile(r"\([^)]*\)|[^\s()]+")


def _internals() -> tuple[Any, Any] | None:
    """(``einops.einops``, einops' torch backend) where einops is imported and has the internals used here."""
    if "einops" not in sys.modules:
        return None
    try:
        from einops import einops as ops
        from einops._backends import TorchBackend
    except ImportError:
        return None
    needed = ("reduce", "get_backend", "_prepare_transformation_recipe", "_apply_recipe")
    if not all(hasattr(ops, name) for name in needed):
        return None
    import inspect

    try:
        if next(iter(inspect.signature(ops._apply_recipe).parameters)) != "backend":
            return None
    except (TypeError, ValueError, StopIteration):
        return None
    return ops, TorchBackend


class _Sizes:
    """A traced tensor's sizes, each read (``x.size(i)``) when einops asks for it; unhashable, so that einops
    takes its uncached path, as it does for symbolic shapes."""

    __hash__ = None  # type: ignore[assignment]

    def __init__(self, x: fx.Proxy) -> None:
        self.x = x
        self.read: dict[int, Any] = {}

    def __getitem__(self, i: int) -> Any:
        if i not in self.read:
            self.read[i] = self.x.size(i)
        return self.read[i]


class _ProxyBackend:
    """einops' torch backend for proxies: the same operations, the sizes read as :class:`_Sizes`, and the dtype
    check of a mean (which a proxy cannot answer) left to the traced operation."""

    def __init__(self, torch_backend: Any) -> None:
        self._torch = torch_backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._torch, name)

    def shape(self, x: fx.Proxy) -> _Sizes:
        return _Sizes(x)

    def is_float_type(self, x: Any) -> bool:
        return True


def _rank(pattern: str) -> int:
    """The number of axes on the left of an einops ``pattern`` (a parenthesised group is one)."""
    left = pattern.split("->")[0]
    if "..." in left or "…" in left:
        # no "..." in the message: the manifest's error keeps its first sentence, cut at a full stop
        # (a traced tensor's rank is unknown, so the trace cannot tell how many axes the ellipsis stands for)
        raise RuntimeError("an einops pattern with an ellipsis cannot be traced: write its axes out, as in "
                           "'b c h w -> b (c h w)'")
    return len(_AXES.findall(left))


def _traced_reduce(ops: Any, backend: _ProxyBackend, original: Callable[..., Any]) -> Callable[..., Any]:
    def reduce(tensor: Any, pattern: str, reduction: Any, **axes_lengths: Any) -> Any:
        if isinstance(tensor, (list, tuple)) and any(isinstance(t, fx.Proxy) for t in tensor):
            tensor = torch.stack(list(tensor))
        if not isinstance(tensor, fx.Proxy):
            return original(tensor, pattern, reduction, **axes_lengths)
        recipe = ops._prepare_transformation_recipe(pattern, reduction, axes_names=tuple(axes_lengths),
                                                    ndim=_rank(pattern))
        return ops._apply_recipe(backend, recipe, tensor, reduction_type=reduction,
                                 axes_lengths=tuple(axes_lengths.items()))
    reduce.__wrapped__ = original  # type: ignore[attr-defined]
    return reduce


def einops_layer_forward(m: nn.Module) -> Callable[..., Any] | None:
    """The traced form of an einops ``Rearrange`` / ``Reduce`` layer's forward (with :func:`replacements` in place),
    or None
    for any other module."""
    layers = sys.modules.get("einops.layers")
    if layers is None or not isinstance(m, (layers.RearrangeMixin, layers.ReduceMixin)):
        return None
    ops = sys.modules["einops.einops"]
    reduction = getattr(m, "reduction", "rearrange") if isinstance(m, layers.ReduceMixin) else "rearrange"

    def forward(x: Any) -> Any:
        return ops.reduce(x, m.pattern, reduction, **m.axes_lengths)
    return forward


def replacements() -> tuple[list[dict[str, Any]], dict[int, Any]]:
    """What makes einops take proxies while prunedrop traces: einops' own namespaces (where ``rearrange`` and
    ``repeat`` find ``reduce``, and ``einsum`` finds ``get_backend``), and by the id of each einops function, its
    traced form (``reduce``; ``get_backend``, which answers a proxy with :class:`_ProxyBackend`). ``([], {})`` where
    einops is not imported or its internals differ. :func:`prunedrop.fxtrace.symbolic_trace` swaps them in these
    namespaces and in the model's forwards' own, and back."""
    found = _internals()
    if found is None:
        return [], {}
    ops, torch_backend = found
    backend = _ProxyBackend(torch_backend())
    original_reduce, original_backend = ops.reduce, ops.get_backend

    def get_backend(tensor: Any) -> Any:
        return backend if isinstance(tensor, fx.Proxy) else original_backend(tensor)

    return ([ops.__dict__, sys.modules["einops"].__dict__],
            {id(original_reduce): _traced_reduce(ops, backend, original_reduce), id(original_backend): get_backend})
