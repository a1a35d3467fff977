"""The architecture manifest (``architecture.json``): how a traced graph is written as JSON, and how a (possibly
hand-edited) manifest is checked and rebuilt into a ``torch.fx.GraphModule`` without importing or unpickling
anything. What it may name is :mod:`.allowlist`'s.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import PrunedropError
from ..errors import one_line as _one_line
from .allowlist import ARG_READERS, GETATTR_NAMES, METHODS, MODULE_ARGS, function_table, module_type
from .read import listed, state_mismatch

if TYPE_CHECKING:
    import torch
    from torch import fx, nn


WEIGHTS_FILE = "model.pt"
ARCHITECTURE_FILE = "architecture.json"
MANIFEST_FORMAT = "prunedrop-architecture"
MANIFEST_VERSION = 1


# --------------------------------------------------------------------------------------------------
# The architecture manifest: values as JSON
# --------------------------------------------------------------------------------------------------


def _encode(value: Any, where: str) -> Any:
    """A graph argument as JSON. Tuples are plain arrays (fx uses them everywhere); other kinds are tagged."""
    import torch
    from torch import fx

    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else {"float": repr(value)}
    if isinstance(value, fx.Node):
        return {"node": value.name}
    if isinstance(value, tuple):  # also torch.Size
        return [_encode(v, where) for v in value]
    if isinstance(value, list):
        return {"list": [_encode(v, where) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int)) for k in value):
            raise PrunedropError(f"cannot describe {where} in {ARCHITECTURE_FILE}: a dict argument has non-string keys")
        return {"dict": [[k, _encode(v, where)] for k, v in value.items()]}
    if isinstance(value, slice):
        return {"slice": [_encode(value.start, where), _encode(value.stop, where), _encode(value.step, where)]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": str(value)}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    raise PrunedropError(
        f"cannot describe {where} in {ARCHITECTURE_FILE}: it takes an argument of type {type(value).__qualname__}"
    )


def _decode(value: Any, nodes: Mapping[str, fx.Node]) -> Any:
    import torch

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return tuple(_decode(v, nodes) for v in value)
    if not isinstance(value, dict) or len(value) != 1:
        raise ValueError(f"unexpected value {_one_line(repr(value), 60)}")
    (tag, body), = value.items()
    if tag == "node":
        if body not in nodes:
            raise ValueError(f"reference to unknown node {body!r}")
        return nodes[body]
    if tag == "list":
        return [_decode(v, nodes) for v in body]
    if tag == "dict":
        return {k: _decode(v, nodes) for k, v in body}
    if tag == "slice":
        return slice(*(_decode(v, nodes) for v in body))
    if tag == "ellipsis":
        return Ellipsis
    if tag == "float":
        return float(body)
    if tag in ("dtype", "memory_format"):
        obj = getattr(torch, str(body), None)
        if not isinstance(obj, torch.dtype if tag == "dtype" else torch.memory_format):
            raise ValueError(f"unknown {tag} {body!r}")
        return obj
    if tag == "device":
        return torch.device(body)
    raise ValueError(f"unknown tag {tag!r}")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --------------------------------------------------------------------------------------------------
# The architecture manifest: describing a traced graph, checking and rebuilding one
# --------------------------------------------------------------------------------------------------


def _describe_module(name: str, module: nn.Module) -> dict[str, Any]:
    type_name = type(module).__name__
    if module_type(type_name) is not type(module):
        where = f"{type(module).__module__}.{type(module).__qualname__}"
        raise PrunedropError(
            f"cannot describe module {name!r} of type {where} in {ARCHITECTURE_FILE}: that layer type is not in "
            "prunedrop's allowlist (prunedrop.storage.MODULE_ARGS)"
        )
    args = {}
    for arg in MODULE_ARGS[type_name]:
        reader = ARG_READERS.get((type_name, arg))
        value = reader(module) if reader is not None else getattr(module, arg)
        if arg == "bias" and reader is None and not isinstance(value, bool):
            value = value is not None  # a layer's bias tensor (or None); recurrent layers hold the flag itself
        args[arg] = _encode(value, f"module {name!r} ({type_name})")
    return {"type": type_name, "args": args}


def _callable_name(fn: Any) -> str:
    """The name a user would write: ``torch.cumprod`` rather than ``torch._VariableFunctionsClass.cumprod``."""
    import torch
    import torch.nn.functional as F

    name = getattr(fn, "__name__", None)
    for prefix, namespace in (("torch", torch), ("torch.nn.functional", F), ("torch.special", torch.special),
                              ("torch.linalg", torch.linalg), ("torch.fft", torch.fft), ("operator", operator)):
        if name and getattr(namespace, name, None) is fn:
            return f"{prefix}.{name}"
    return f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', repr(fn))}"


def _function_name(fn: Any, node: fx.Node) -> str:
    _, by_function = function_table()
    try:
        name = by_function.get(fn)
    except TypeError:  # an unhashable callable cannot be in the table
        name = None
    if name is None:
        raise PrunedropError(
            f"cannot describe the call to {_callable_name(fn)} (graph node {node.name!r}) in {ARCHITECTURE_FILE}: that "
            "function is not in prunedrop's allowlist; rewrite the forward with supported operations"
        )
    if name == "builtins.getattr" and (len(node.args) != 2 or node.args[1] not in GETATTR_NAMES):
        raise PrunedropError(
            f"cannot describe graph node {node.name!r} in {ARCHITECTURE_FILE}: it reads tensor attribute "
            f"{node.args[1:2]!r}; only {', '.join(sorted(GETATTR_NAMES))} are supported"
        )
    return name


def build_manifest(model: nn.Module, gm: fx.GraphModule, examples: tuple[torch.Tensor, ...],
              state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    import torch

    from .. import __version__

    modules: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    graph: list[dict[str, Any]] = []
    for node in gm.graph.nodes:
        target: Any = node.target
        if node.op == "call_module":
            if target not in modules:
                modules[target] = _describe_module(target, gm.get_submodule(target))
        elif node.op == "get_attr":
            value = operator.attrgetter(target)(gm)
            if not isinstance(value, torch.Tensor):
                raise PrunedropError(
                    f"cannot describe graph node {node.name!r} in {ARCHITECTURE_FILE}: attribute {target!r} is "
                    f"a {type(value).__qualname__}, not a parameter or buffer"
                )
            attributes[target] = {
                "kind": "parameter" if isinstance(value, torch.nn.Parameter) else "buffer",
                "shape": list(value.shape),
                "dtype": _dtype_name(value.dtype),
            }
        elif node.op == "call_function":
            target = _function_name(target, node)
        elif node.op == "call_method":
            if target not in METHODS:
                raise PrunedropError(
                    f"cannot describe the call to Tensor.{target} (graph node {node.name!r}) in "
                    f"{ARCHITECTURE_FILE}: that method is not in prunedrop's allowlist; rewrite the forward with "
                    "supported operations"
                )
        where = f"graph node {node.name!r}"
        graph.append({
            "op": node.op,
            "name": node.name,
            "target": target,
            "args": _encode(tuple(node.args), where),
            "kwargs": {k: _encode(v, where) for k, v in node.kwargs.items()},
        })
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "torch_version": torch.__version__,
        "prunedrop_version": __version__,
        "model_class": type(model).__name__,  # informative only: nothing is imported from it on load
        "input_shape": list(examples[0].shape),
        "inputs": [{"shape": list(x.shape), "dtype": _dtype_name(x.dtype)} for x in examples],
        "modules": modules,
        "attributes": attributes,
        "state": {k: {"shape": list(v.shape), "dtype": _dtype_name(v.dtype)} for k, v in state.items()},
        "graph": graph,
    }


def _install(root: nn.Module, qualname: str, value: Any) -> None:
    """Put a module / parameter / buffer at a dotted path, creating empty container modules on the way."""
    import torch

    *parents, leaf = qualname.split(".")
    owner = root
    for part in parents:
        child = owner._modules.get(part)
        if child is None:
            child = torch.nn.Module()
            owner.add_module(part, child)
        owner = child
    if isinstance(value, torch.nn.Module):
        owner.add_module(leaf, value)
    elif isinstance(value, torch.nn.Parameter):
        owner.register_parameter(leaf, value)
    else:
        owner.register_buffer(leaf, value)


# fx pastes node names, placeholder targets, kwarg names and module paths verbatim into the Python source of
# the GraphModule it generates and runs, so a hand-crafted manifest could inject code through them.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Sequential children are named "0", "1", ...; torchvision's RegNet "block1-0". fx writes a part that is not an
# identifier as a quoted getattr(..., "part"): a hyphen cannot end the string.
_PATH_PART = re.compile(r"[A-Za-z0-9_-]+")


def _check_identifier(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise PrunedropError(f"{ARCHITECTURE_FILE} has {what} {_one_line(repr(value), 60)}, which is not a plain name")
    return value


def _check_path(value: Any, what: str) -> str:
    if not isinstance(value, str) or not all(_PATH_PART.fullmatch(part) for part in value.split(".")):
        raise PrunedropError(f"{ARCHITECTURE_FILE} has {what} {_one_line(repr(value), 60)}, which is not a dotted name")
    return value


def _check_names(manifest: Mapping[str, Any]) -> None:
    for name in manifest["modules"]:
        _check_path(name, "module path")
    for name in manifest["attributes"]:
        _check_path(name, "attribute path")
    for entry in manifest["graph"]:
        _check_identifier(entry["name"], "node name")
        if entry["op"] in ("placeholder", "call_method"):
            _check_identifier(entry["target"], f"{entry['op']} target")
        for key in entry["kwargs"]:
            _check_identifier(key, "keyword argument name")


def _has_tensor(root: nn.Module, qualname: str) -> bool:
    owner_name, _, leaf = qualname.rpartition(".")
    try:
        owner = root.get_submodule(owner_name)
    except AttributeError:
        return False
    return leaf in owner._parameters or leaf in owner._buffers


def rebuild(manifest: Mapping[str, Any], state: Mapping[str, Any]) -> fx.GraphModule:
    """Rebuild the GraphModule; every name in the manifest resolves through an allowlist, nothing is imported."""
    import torch
    from torch import fx

    functions, _ = function_table()
    _check_names(manifest)
    root = torch.nn.Module()
    # Built on the meta device and then given the saved tensors: no random initialisation to waste time on,
    # and the global RNG is left untouched, so loading a model does not change a seeded run.
    with torch.device("meta"):
        for name, spec in manifest["modules"].items():
            cls = module_type(spec["type"])
            if cls is None:
                raise PrunedropError(f"{ARCHITECTURE_FILE} names layer type {spec['type']!r}, which is not allowed")
            allowed = MODULE_ARGS[spec["type"]]
            unknown = set(spec["args"]) - set(allowed)
            if unknown:
                raise ValueError(f"module {name!r} has unknown arguments {sorted(unknown)}")
            _install(root, name, cls(**{k: _decode(v, {}) for k, v in spec["args"].items()}))
        for name, spec in manifest["attributes"].items():
            if _has_tensor(root, name):  # a leaf layer's own parameter, also read directly by the forward
                continue
            dtype = _decode({"dtype": spec["dtype"]}, {})
            tensor = torch.empty(tuple(spec["shape"]), dtype=dtype)
            _install(root, name, torch.nn.Parameter(tensor) if spec["kind"] == "parameter" else tensor)

    graph = fx.Graph()
    nodes: dict[str, fx.Node] = {}
    for entry in manifest["graph"]:
        op, target = entry["op"], entry["target"]
        if op == "call_function":
            if target not in functions:
                raise PrunedropError(f"{ARCHITECTURE_FILE} calls function {target!r}, which is not allowed")
            target = functions[target]
        elif op == "call_method" and target not in METHODS:
            raise PrunedropError(f"{ARCHITECTURE_FILE} calls method Tensor.{target}, which is not allowed")
        elif op == "call_module" and target not in manifest["modules"]:
            raise ValueError(f"node {entry['name']!r} calls undeclared module {target!r}")
        elif op == "get_attr" and target not in manifest["attributes"]:
            raise ValueError(f"node {entry['name']!r} reads undeclared attribute {target!r}")
        elif op not in ("placeholder", "output", "call_function", "call_method", "call_module", "get_attr"):
            raise ValueError(f"unknown node kind {op!r}")
        args = _decode(entry["args"], nodes)
        kwargs = {k: _decode(v, nodes) for k, v in entry["kwargs"].items()}
        if not isinstance(args, tuple):
            raise ValueError(f"node {entry['name']!r}: args must be an array")
        if target is getattr and args[1:2] and args[1] not in GETATTR_NAMES:
            raise PrunedropError(f"{ARCHITECTURE_FILE} reads tensor attribute {args[1]!r}, which is not allowed")
        if entry["name"] in nodes:
            raise ValueError(f"two nodes are named {entry['name']!r}")
        node = graph.create_node(op, target, args, kwargs, name=entry["name"])
        nodes[entry["name"]] = node
    graph.lint()

    problem = state_mismatch({k: tuple(v["shape"]) for k, v in manifest["state"].items()}, state)
    if problem:
        raise PrunedropError(f"{WEIGHTS_FILE} does not match {ARCHITECTURE_FILE}: {problem}")
    gm = fx.GraphModule(root, graph, class_name="PrunedropGraphModule")
    problem = state_mismatch({k: tuple(v.shape) for k, v in gm.state_dict().items()}, state)
    if problem:  # the layers' constructor arguments disagree with the weights
        raise PrunedropError(f"{WEIGHTS_FILE} does not fit the layers in {ARCHITECTURE_FILE}: {problem}")
    gm.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in (*gm.named_parameters(), *gm.named_buffers()) if t.is_meta]
    if leftover:  # a non-persistent buffer would stay on meta: the manifest cannot describe those
        raise PrunedropError(f"{ARCHITECTURE_FILE} leaves tensors without values: {listed(leftover)}")
    return gm.eval()


def dumps_manifest(manifest: Mapping[str, Any]) -> str:
    """JSON with one layer, tensor or graph node per line: readable, and diffs of two runs line up."""

    def dumps(value: Any) -> str:
        return json.dumps(value, allow_nan=False)

    entries = []
    for key, value in manifest.items():
        if isinstance(value, dict) and value and key != "inputs":
            inner = ",\n".join(f"  {dumps(k)}: {dumps(v)}" for k, v in value.items())
            entries.append(f" {dumps(key)}: {{\n{inner}\n }}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            inner = ",\n".join(f"  {dumps(v)}" for v in value)
            entries.append(f" {dumps(key)}: [\n{inner}\n ]")
        else:
            entries.append(f" {dumps(key)}: {dumps(value)}")
    return "{\n" + ",\n".join(entries) + "\n}\n"
