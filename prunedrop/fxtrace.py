"""``torch.fx.symbolic_trace`` with the tensor factories' size written the way models write it.

``torch.zeros(x.shape[0], 4)`` (a size as separate arguments, the first one traced) fails inside torch.fx:
"zeros() takes 1 positional argument but 2 were given", since torch's argument parser matches a traced first
argument to the one-sequence form before the trace sees the call; ``torch.zeros((x.shape[0], 4))`` traces. A model
that builds a zero state or padding from its batch size lost its ``architecture.json`` (and whatever else reads the
graph: the output layers, BatchNorm folding). :func:`symbolic_trace` passes such sizes as one tuple while it traces;
the graph records the same function with the same size, so it runs as the model does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import fx, nn

#: factories that take a size as separate arguments (``torch.zeros(2, 3)``)
SIZE_FACTORIES = ("zeros", "ones", "empty", "rand", "randn")


def _sized(factory: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(factory)
    def call(*size: Any, **kwargs: Any) -> Any:
        if len(size) > 1 and any(isinstance(s, fx.Proxy) for s in size):
            return factory(tuple(size), **kwargs)
        return factory(*size, **kwargs)
    return call


def symbolic_trace(model: nn.Module, concrete_args: dict[str, Any] | None = None) -> fx.GraphModule:
    """``torch.fx.symbolic_trace(model, concrete_args)``, with :data:`SIZE_FACTORIES` called with separate size
    arguments, one of them traced, given them as one tuple (what they do with plain integers anyway)."""
    saved = {name: getattr(torch, name) for name in SIZE_FACTORIES}
    for name, factory in saved.items():
        setattr(torch, name, _sized(factory))
    try:
        return fx.symbolic_trace(model, concrete_args=concrete_args)
    finally:
        for name, factory in saved.items():
            setattr(torch, name, factory)
