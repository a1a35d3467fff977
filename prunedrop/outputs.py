"""The model's output layers: the layers whose units *are* the model's outputs (the classes, the regression targets).

Structured noise removes whole units; on the layer that produces the model's output, a unit is a class, and
removing it changes what the model predicts, not only how fast. So the per-unit methods leave these layers alone
by default (recipe key ``keep_output_layers``), found from the graph rather than from a user's ``exclude`` glob:

1. torch.fx: from the graph's output, walk back through functions and methods of one tensor input that keep the
   output units apart (view/reshape/flatten/squeeze, mean/sum/amax over other dims, dropout, activations,
   softmax over the units, getitem/contiguous, identity-like modules without parameters) to the first module with
   parameters; when that is a Linear or convolution, it is an output layer (several when the output is a tuple).
2. Where the model cannot be traced, forward hooks: a layer whose output tensor shares its storage with the
   model's output (a view of it) is an output layer.

Neither finds a layer whose output is mixed before it becomes the model's output (e.g. a final matmul by a
fixed tensor); then nothing is excluded and :func:`output_layers` returns an empty list.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["output_layers"]

_UNIT_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
_PASS_FUNCTIONS = {
    "flatten", "view", "reshape", "squeeze", "unsqueeze", "contiguous", "mean", "sum", "amax", "max", "relu",
    "sigmoid", "tanh", "softmax", "log_softmax", "dropout", "getitem", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "avg_pool2d", "max_pool2d", "clone", "float", "to", "identity", "gelu", "silu",
}


def _name_of(target: Any) -> str:
    return getattr(target, "__name__", str(target)).split(".")[-1].lower()


def _by_fx(model: nn.Module) -> list[str] | None:
    import torch.fx

    from .fxtrace import symbolic_trace

    try:
        graph = symbolic_trace(model).graph
    except Exception:  # the model uses control flow or types that fx cannot follow
        return None
    modules = dict(model.named_modules())
    output = next(n for n in graph.nodes if n.op == "output")
    found: list[str] = []
    flat: list[Any] = []

    def collect(a: Any) -> None:
        if isinstance(a, torch.fx.Node):
            flat.append(a)
        elif isinstance(a, (tuple, list)):
            for b in a:
                collect(b)
        elif isinstance(a, dict):
            for b in a.values():
                collect(b)

    collect(output.args)
    for node in flat:
        seen = 0
        while node is not None and seen < 64:
            seen += 1
            if node.op == "call_module":
                module = modules.get(str(node.target))
                if isinstance(module, _UNIT_LAYERS):
                    found.append(str(node.target))
                    break
                if module is not None and next(module.parameters(), None) is None:
                    node = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
                    continue
                break
            if node.op in ("call_function", "call_method") and _name_of(node.target) in _PASS_FUNCTIONS:
                node = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
                continue
            break
    return found


def _by_hooks(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    outputs: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda mod, args, out, name=name: outputs.__setitem__(name, out)
                                       if isinstance(out, torch.Tensor) else None)
               for name, m in model.named_modules() if isinstance(m, _UNIT_LAYERS)]
    from .dropout.mc import sampling_mode

    try:
        with sampling_mode(model, lambda m: False), torch.no_grad():  # eval mode, flags restored afterwards
            out = model(example_input)
    finally:
        for h in handles:
            h.remove()
    results = [o for o in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(o, torch.Tensor)]
    ptrs = {o.untyped_storage().data_ptr() for o in results}
    return [name for name, t in outputs.items() if t.untyped_storage().data_ptr() in ptrs]


def output_layers(model: nn.Module, example_input: torch.Tensor | None = None) -> list[str]:
    """Qualified names of the Linear/convolution layers whose outputs are the model's outputs (module docstring)."""
    found = _by_fx(model)
    if found is None and example_input is not None:
        try:
            found = _by_hooks(model, example_input)
        except Exception:  # the model rejects the example: nothing can be said
            found = []
    return list(dict.fromkeys(found or []))
