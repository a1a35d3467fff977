"""Saving and reloading the compressed model: :func:`save_model` writes ``model.pt`` (a state dict) and
``architecture.json`` (the traced graph, checked by rebuilding it), :func:`load_saved_model` reads them back.
"""

from __future__ import annotations

import json
import operator
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_torch_save, atomic_write_text
from ..compare import max_abs_diff, scaled_tolerance
from ..errors import PrunedropError
from .manifest import (
    ARCHITECTURE_FILE,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    WEIGHTS_FILE,
    build_manifest,
    dumps_manifest,
    rebuild,
)
from .read import describe, is_state_dict, reason, torch_load

if TYPE_CHECKING:
    import torch
    from torch import fx, nn


def forward_defaults(model: nn.Module, given: int) -> dict[str, Any]:
    """``forward``'s parameters after the first ``given`` that have defaults → their defaults."""
    import inspect

    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a forward without a signature: trace it as it is
        return {}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p.default for p in parameters[given:]
            if p.kind in kinds and p.default is not inspect.Parameter.empty}


def _trace(model: nn.Module, given: int = 1) -> fx.GraphModule:
    """``model`` traced as it is called, with its first ``given`` inputs.

    The parameters after those that have defaults (``forward(self, x, temperature=1.0, mask=None)``) are traced
    with their defaults: symbolically, ``if mask is not None`` took the branch the call does not take, and the
    rebuilt model added None. The checks that torch.fx adds for the specialised values, and their placeholders,
    are removed (the model is saved for calls with its inputs alone).
    """
    from ..fxtrace import symbolic_trace

    defaults = forward_defaults(model, given)
    try:
        gm = symbolic_trace(model, concrete_args=defaults or None)
    except Exception as e:  # TraceError, TypeError, NotImplementedError ... from user forward code
        raise PrunedropError(
            f"cannot describe the model in {ARCHITECTURE_FILE}: torch.fx cannot trace its forward "
            f"({reason(e)}); a forward without data-dependent control flow (if/for on tensor values) can be traced"
        ) from e
    if defaults:
        _drop_specialised_inputs(gm, given)
    return gm


def _drop_specialised_inputs(gm: fx.GraphModule, given: int) -> None:
    """Remove the placeholders after the first ``given`` and the nodes that only check their values."""
    import torch
    from torch.fx._symbolic_trace import _assert_is_none

    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"][given:]
    checks = (torch._assert, _assert_is_none, operator.eq)
    for node in reversed(list(graph.nodes)):
        if node.op == "call_function" and node.target in checks and not node.users and any(
                source in placeholders or source.op == "call_function" and source.target is operator.eq
                for source in node.all_input_nodes):
            graph.erase_node(node)
    for node in placeholders:
        if not node.users:
            graph.erase_node(node)
    graph.lint()
    gm.recompile()


# Functions that return their input unchanged in eval mode (stochastic depth, drop path), by qualified name (nothing
# is imported for them) -> (position, keyword) of their ``training`` argument. The model is traced in eval mode.
_EVAL_IDENTITY = {
    "torchvision.ops.stochastic_depth.stochastic_depth": (3, "training"),
    "timm.layers.drop.drop_path": (2, "training"),
}


def _qualified_name(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}"


def _drop_inference_no_ops(gm: fx.GraphModule) -> fx.GraphModule:
    """Remove what the eval-mode forward does not compute: calls of :data:`_EVAL_IDENTITY` functions with
    ``training`` False (replaced by their input), and ``torch._assert`` checks (of input shapes, say) with the
    nodes only they used; :func:`save_model` checks the rebuilt model against the original on the example instead."""
    import torch

    graph = gm.graph
    changed = False
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        identity = _EVAL_IDENTITY.get(_qualified_name(node.target))
        if identity is not None:
            position, keyword = identity
            training = node.kwargs.get(keyword, node.args[position] if len(node.args) > position else True)
            if training is False and node.args:
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
                changed = True
        elif node.target in (torch._assert, getattr(torch, "_assert_async", None)) and not node.users:
            inputs = list(node.all_input_nodes)
            graph.erase_node(node)
            changed = True
            erased = {node}
            while inputs:  # the condition's own nodes, when nothing else reads them
                source = inputs.pop()
                if source not in erased and not source.users and source.op in ("call_function", "call_method"):
                    inputs += source.all_input_nodes
                    graph.erase_node(source)
                    erased.add(source)
    if changed:
        graph.lint()
        gm.recompile()
    return gm


def _as_examples(example_input: Any) -> tuple[torch.Tensor, ...]:
    import torch

    examples = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if not examples or not all(isinstance(x, torch.Tensor) for x in examples):
        raise TypeError("example_input must be a tensor or a tuple of tensors")
    return tuple(examples)


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    import torch

    # torch.save writes a view's whole storage: a slice of a big pruned weight would keep every pruned byte.
    tensor = tensor.detach().cpu()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size() or not tensor.is_contiguous():
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    return tensor


def save_model(model: nn.Module, out_dir: str | os.PathLike[str], example_input: Any) -> tuple[Path, Path]:
    """Write ``model.pt`` (the state dict) and ``architecture.json`` (how to rebuild the model) into ``out_dir``.

    The model is traced with ``torch.fx.symbolic_trace`` in eval mode; the manifest records the graph with
    allowlisted layer types (with their constructor arguments), functions and tensor methods, so that
    :func:`load_saved_model` can rebuild it without the original class and without pickle. Before anything is
    written, the model is rebuilt from the manifest and its outputs on ``example_input`` (a tensor or a tuple
    of tensors) are compared with the original's. Both files are written atomically, ``architecture.json``
    last. Returns ``(weights_path, architecture_path)``.
    """
    import torch

    examples = _as_examples(example_input)
    out = Path(out_dir)
    from ..modes import kept

    with kept(model):
        model.eval()  # tracing follows `if self.training` branches: record the inference path
        gm = _drop_inference_no_ops(_trace(model, len(examples)))
        state = {k: _compact(v) for k, v in gm.state_dict().items()}
        manifest = build_manifest(model, gm, examples, state)
        text = dumps_manifest(manifest)
        rebuilt = rebuild(json.loads(text), state)
        with torch.no_grad():
            expected = model(*examples)
            got = rebuilt(*(x.cpu() for x in examples))
    diff = max_abs_diff(expected, got)
    if not diff <= scaled_tolerance(1e-5, expected):
        raise PrunedropError(
            f"the model rebuilt from {ARCHITECTURE_FILE} does not compute what the model computes (max abs diff "
            f"{diff:.3g}): its forward depends on something the manifest cannot record (hooks, attributes changed "
            "after construction)"
        )
    weights_path, arch_path = out / WEIGHTS_FILE, out / ARCHITECTURE_FILE
    atomic_torch_save(state, weights_path)
    atomic_write_text(arch_path, text)
    return weights_path, arch_path


def load_saved_model(out_dir: str | os.PathLike[str]) -> fx.GraphModule:
    """Rebuild a model written by :func:`save_model` as a ``torch.fx.GraphModule`` on the CPU, in eval mode.

    Nothing is unpickled (``model.pt`` is read with ``weights_only=True``) and nothing is imported: every layer
    type, function and method named in ``architecture.json`` is looked up in prunedrop's allowlists.
    """
    folder = Path(out_dir)
    arch_path = folder / ARCHITECTURE_FILE
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is a file, not a folder"
        raise PrunedropError(f"saved model folder {folder} {what}: pass the folder that holds {ARCHITECTURE_FILE}")
    if not arch_path.is_file():
        raise PrunedropError(f"{folder} has no {ARCHITECTURE_FILE}: pass a folder written by prunedrop's save_model")
    from ..safety import check_manifest_bounds, load_json_file

    manifest = load_json_file(arch_path, where=str(arch_path), advice="write it again with save_model")
    check_manifest_bounds(manifest, str(arch_path))
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise PrunedropError(f"{arch_path} is not a prunedrop architecture manifest (no \"format\": \"{MANIFEST_FORMAT}\")")
    if manifest.get("version") != MANIFEST_VERSION:
        raise PrunedropError(
            f"{arch_path} has manifest version {manifest.get('version')!r}, but this prunedrop reads version "
            f"{MANIFEST_VERSION}: use the prunedrop version that wrote it"
        )
    state = torch_load(
        folder / WEIGHTS_FILE,
        what="weights file",
        trust_pickle=False,
        pickled="pickled Python objects, not only tensors",
        pickle_advice=f"prunedrop's save_model writes a plain state dict; write {WEIGHTS_FILE} again with it",
    )
    if not is_state_dict(state):
        raise PrunedropError(f"{folder / WEIGHTS_FILE} holds {describe(state)}, not a state dict")
    try:
        return rebuild(manifest, state)
    except PrunedropError:
        raise
    except Exception as e:  # a hand-edited or damaged manifest: KeyError, TypeError, ValueError, ...
        raise PrunedropError(f"{arch_path} is malformed ({reason(e)}): write it again with save_model") from e
