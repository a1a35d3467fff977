"""Loading the user's trained model: a state dict plus ``--arch module:factory`` (or a model zoo's name),
or a whole pickled module when the user trusts the file; also :func:`import_object` for ``module:name`` specs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import PrunedropError
from ..errors import one_line as _one_line
from .hf_model import is_hf_folder, load_hf_model
from .manifest import ARCHITECTURE_FILE
from .read import describe, is_state_dict, reason, state_mismatch, torch_load
from .saved import load_saved_model

if TYPE_CHECKING:
    from torch import nn


# Keys under which training scripts commonly nest the state dict inside a checkpoint dict.
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")


def import_object(spec: str, *, what: str = "object") -> Any:
    """Import ``module:attr`` (``attr`` may be dotted) and return it.

    Only the module the user names is imported, and only it may come from the current folder: a module that
    is not importable from ``sys.path`` is loaded from the current folder by its file location
    (:func:`prunedrop.safety.import_user_module`), and the current folder is never put on ``sys.path``, so
    that a ``sklearn.py`` or ``onnxruntime.py`` lying there cannot stand in for the installed library.
    """
    from ..safety import import_user_module

    if ":" not in spec:
        raise PrunedropError(f"{what} {spec!r} is not of the form 'module:name', e.g. 'examples.models:lenet300'")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise PrunedropError(f"{what} {spec!r} is not of the form 'module:name', e.g. 'examples.models:lenet300'")
    obj: Any = import_user_module(module_name, what=f"{what} {spec!r}")
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PrunedropError(f"module {module_name!r} has no attribute {attr!r} (from {what} {spec!r})") from None
    return obj


def _find_state_dict(obj: Any) -> Mapping[str, Any] | None:
    """The state dict in a checkpoint: the object itself, the one under a usual key (:data:`_STATE_DICT_KEYS`), or
    the only state dict among a dict's values (``{"net": ..., "epoch": 3}``, as training scripts name it as they
    like); several under other keys (a model and its EMA copy) are left to the caller's error."""
    if is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            if is_state_dict(obj.get(key)):
                return obj[key]
        found = [value for value in obj.values() if is_state_dict(value)]
        if len(found) == 1:
            return found[0]
    return None


def _find_module(obj: Any) -> nn.Module | None:
    import torch

    if isinstance(obj, torch.jit.ScriptModule):  # only reachable with a pickled ScriptModule inside a dict
        return None
    if isinstance(obj, torch.nn.Module):
        return obj
    if isinstance(obj, Mapping):
        for key in ("model", "module", "net"):
            if isinstance(obj.get(key), torch.nn.Module):
                return obj[key]
    return None


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model inside a wrapper: ``torch.compile``'s ``OptimizedModule`` (its forward runs a compiled graph: the
    swapped layers were never called, and every FLOP read 0), ``nn.DataParallel`` / ``DistributedDataParallel``."""
    from torch import nn

    for _ in range(4):
        if _is_compiled(model):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            break
    return model


def _is_compiled(module: Any) -> bool:
    """``module`` is ``torch.compile``'s wrapper (``OptimizedModule``, the module it compiles as ``_orig_mod``)."""
    from torch import nn

    return type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), nn.Module)


def unwrap_compiled(model: nn.Module, log: Callable[[str], None] | None = None) -> nn.Module:
    """``model`` with every ``torch.compile``d part run as plain PyTorch: an ``OptimizedModule`` wrapper, at the top
    or anywhere inside (nested too), is replaced by the module it wraps (in place, under each name it had), and a
    module compiled in place (``module.compile()``) runs uncompiled; ``log`` gets one line naming them.

    A compiled graph hides the calls of the layers inside it from forward hooks (a digits MLP whose hidden layer
    was compiled counted 1,280 FLOPs before and 8,510 after: the converted layer showed up only once it ran
    outside the graph), and dynamo recompiled at every change of the layers it had traced (their noise, the
    profiling hooks), flooding the log with graph breaks. The weights are the same; only their keys lose the
    ``_orig_mod.`` that the wrapper put in them."""
    found: list[str] = []
    top = model
    while _is_compiled(top):
        top = top._orig_mod
    if top is not model:
        found.append("the model")
    seen: set[int] = set()

    def walk(module: nn.Module, prefix: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        if getattr(module, "_compiled_call_impl", None) is not None:  # nn.Module.compile(): compiled in place
            module._compiled_call_impl = None
            found.append(prefix[:-1] or "the model")
        for name, child in list(module._modules.items()):
            inner = child
            while _is_compiled(inner):
                inner = inner._orig_mod
            if inner is not child:
                module._modules[name] = inner
                found.append(prefix + name)
            if inner is not None:
                walk(inner, f"{prefix}{name}.")

    walk(top, "")
    names = list(dict.fromkeys(found))
    if names and log is not None:
        log(f"torch.compile: {', '.join(names)} run{'s' if len(names) == 1 else ''} uncompiled (prunedrop converts, "
            "counts and exports the layers inside one by one, which a compiled graph hides); compile the compressed "
            "model again to run it compiled")
    return top


def _materialized(model: nn.Module) -> nn.Module:
    """``model`` with each lazy module whose parameters the state dict filled (``nn.LazyLinear``) turned into its
    plain class, as its first forward would do: a conversion before any forward (``prunedrop export``'s rebuild)
    met a ``LazyLinear``, a type it does not convert. The sizes that the first forward would have read from its
    input (``in_features``, ``in_channels``, ``num_features``, left 0 by a state dict) are read from the loaded
    weights, so that the plain layer is the one a forward makes: ``architecture.json`` describes it, and every copy
    rebuilt from its sizes has the weights' shape."""
    from torch.nn.modules.lazy import LazyModuleMixin

    for module in model.modules():
        if isinstance(module, LazyModuleMixin) and not module.has_uninitialized_params():
            for hook in ("_initialize_hook", "_load_hook"):
                if hasattr(module, hook):
                    getattr(module, hook).remove()
                    delattr(module, hook)
            _input_sizes_from_weights(module)
            if module.cls_to_become is not None:
                module.__class__ = module.cls_to_become
    return model


def _input_sizes_from_weights(module: nn.Module) -> None:
    """Set a materialised lazy layer's input size from its weights, as its ``initialize_parameters`` sets it from the
    first input (torch's lazy Linear, convolutions, transposed convolutions and normalisations)."""
    from torch import nn
    from torch.nn.modules.batchnorm import _NormBase
    from torch.nn.modules.conv import _ConvNd

    weight = getattr(module, "weight", None)
    if isinstance(module, nn.Linear) and weight is not None and weight.dim() == 2:
        module.in_features = int(weight.shape[1])
    elif isinstance(module, _ConvNd) and weight is not None and weight.dim() >= 3:
        module.in_channels = int(weight.shape[0] if module.transposed else weight.shape[1] * module.groups)
    elif isinstance(module, _NormBase):
        sized = weight if weight is not None else getattr(module, "running_mean", None)
        if sized is not None and sized.dim() == 1:
            module.num_features = int(sized.shape[0])


def _build_from_arch(arch: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    import torch

    kwargs = dict(kwargs or {})
    if arch.partition(":")[0].strip() == "timm":
        return _build_timm(arch, kwargs)
    if arch.partition(":")[0].strip().split(".")[0] == "torchvision":
        _check_no_download(arch, kwargs)
    _import_zoo(arch)
    factory = import_object(arch, what="--arch")
    if not callable(factory):
        raise PrunedropError(
            f"--arch {arch!r} is a {type(factory).__name__}, which is not callable: name a function or class "
            "that builds the model with no arguments"
        )
    try:
        model = factory(**kwargs)
    except TypeError as e:
        if kwargs:
            raise PrunedropError(
                f"--arch {arch!r} rejected --arch-kwargs {_one_line(json.dumps(kwargs), 80)} ({reason(e)}): "
                "give only arguments that the factory takes"
            ) from e
        raise PrunedropError(
            f"--arch {arch!r} failed when called with no arguments ({reason(e)}): name a factory that needs "
            "no arguments, or give them with --arch-kwargs '{\"name\": value}'"
        ) from e
    except (Exception, SystemExit) as e:  # sys.exit() in the user's factory too: one line, not a silent exit
        called = f"with --arch-kwargs {_one_line(json.dumps(kwargs), 80)}" if kwargs else "with no arguments"
        raise PrunedropError(
            f"--arch {arch!r} failed when called {called} ({reason(e)}): name a factory that returns the model"
        ) from e
    if not isinstance(model, torch.nn.Module):
        raise PrunedropError(
            f"--arch {arch!r} returned {describe(model)}, not an nn.Module: name a factory that returns the model"
        )
    from ..safety import check_materialized

    check_materialized(model, f"--arch {arch!r}")
    return model


# Model zoos that --arch names directly: the import name -> the pip extra that installs it.
_ZOO_EXTRAS = {"torchvision": "torchvision", "timm": "timm"}
# Arguments that would make a zoo download pretrained weights; MODEL supplies the weights instead.
_DOWNLOAD_KWARGS = ("pretrained", "weights", "weights_backbone", "pretrained_cfg", "pretrained_cfg_overlay")
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def parse_arch_kwargs(text: str | None) -> dict[str, Any]:
    """The keyword arguments of ``--arch-kwargs``: a JSON object (parsed with ``json.loads``, nothing evaluated)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise PrunedropError(
            f"--arch-kwargs {_one_line(text, 60)!r} is not valid JSON ({_one_line(str(e), 80)}); "
            "write a JSON object, e.g. '{\"num_classes\": 10}'"
        ) from None
    if not isinstance(value, dict):
        raise PrunedropError(
            f"--arch-kwargs must be a JSON object of keyword arguments, not a JSON {_JSON_TYPES[type(value)]}; "
            "write e.g. '{\"num_classes\": 10}'"
        )
    bad = [k for k in value if not k.isidentifier()]
    if bad:
        raise PrunedropError(f"--arch-kwargs key {bad[0]!r} is not a Python argument name")
    return value


def _import_zoo(arch: str) -> None:
    """Import torchvision / timm before their factories are looked up, so that a missing or broken install
    is one line naming the extra to install (torchvision's PyPI wheel fails on import beside a mismatched torch)."""
    top = arch.partition(":")[0].strip().split(".")[0]
    if top not in _ZOO_EXTRAS:
        return
    import importlib

    try:
        importlib.import_module(top)
    except Exception as e:
        missing = isinstance(e, ImportError) and getattr(e, "name", None) == top
        what = "is not installed" if missing else f"cannot be imported ({reason(e)})"
        raise PrunedropError(
            f"--arch {arch!r} needs {top}, which {what}: pip install 'prunedrop[{_ZOO_EXTRAS[top]}]' "
            f"(a {top} built for torch {_torch_version()})"
        ) from None


def _torch_version() -> str:
    import torch

    return str(torch.__version__)


def _check_no_download(arch: str, kwargs: Mapping[str, Any]) -> None:
    asked = [k for k in _DOWNLOAD_KWARGS if kwargs.get(k) not in (None, False)]
    if asked:
        raise PrunedropError(
            f"--arch-kwargs asks {arch!r} for pretrained weights ({asked[0]!r}); the weights come from MODEL, "
            "so drop that argument (nothing is downloaded)"
        )


def _build_timm(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    """``timm:NAME``: ``timm.create_model(NAME, pretrained=False, **kwargs)``."""
    import torch

    name = arch.partition(":")[2].strip()
    if not name:
        raise PrunedropError(f"--arch {arch!r} names no model; write timm:NAME, e.g. timm:resnet18")
    _check_no_download(arch, kwargs)
    _import_zoo(arch)
    import timm

    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        raise PrunedropError(
            f"--arch {arch!r} rejected --arch-kwargs {_one_line(json.dumps(kwargs), 80)} ({reason(e)}): "
            "give only arguments that the model takes"
        ) from e
    except Exception as e:  # timm raises RuntimeError for an unknown model name
        raise PrunedropError(
            f"timm cannot build {name!r} ({reason(e)}); list the names with timm.list_models()"
        ) from e
    if not isinstance(model, torch.nn.Module):
        raise PrunedropError(f"--arch {arch!r} returned {describe(model)}, not an nn.Module")
    return model


def strip_wrapper_prefix(state: Mapping[str, Any], model: nn.Module) -> Mapping[str, Any]:
    """``state`` with the prefix a wrapper put before every key taken off, where the bare keys are the model's:
    nn.DataParallel / DistributedDataParallel's ``module.``, ``torch.compile``'s ``_orig_mod.`` (a compiled model's
    state dict, the most common way a file stops fitting its own architecture), a Lightning module's ``model.``,
    or several of them (``module._orig_mod.``); and ``_orig_mod.`` inside a key, at any depth (a compiled submodule:
    ``body._orig_mod.0.weight``). Anything else is left to the mismatch message. Run checkpoints are read through it
    too: a run that an earlier prunedrop made of a model with a compiled submodule saved ``_orig_mod.`` in their
    keys, and the model runs uncompiled now (:func:`unwrap_compiled`)."""
    expected = set(model.state_dict())
    current = dict(state)
    if not any("_orig_mod" in key.split(".") for key in expected):
        # a submodule compiled when the file was saved (body._orig_mod.0.weight): at any depth, nested too
        bare = {".".join(part for part in key.split(".") if part != "_orig_mod"): v for key, v in current.items()}
        current = bare if len(bare) == len(current) else current
    for _ in range(4):
        if not current or set(current) == expected:
            break
        head = next(iter(current)).split(".", 1)[0] + "."
        if not all(k.startswith(head) and len(k) > len(head) for k in current):
            break
        current = {k[len(head):]: v for k, v in current.items()}
    return current if current and set(current) == expected else state


def _load_into(model: nn.Module, state: Mapping[str, Any], path: Path, arch: str) -> None:
    from torch.nn.parameter import is_lazy

    state = strip_wrapper_prefix(state, model)
    # a lazy module's (nn.LazyLinear) parameters have no shape before they are loaded: any shape fits them
    expected = {k: None if is_lazy(v) else tuple(v.shape) for k, v in model.state_dict().items()
                if is_lazy(v) or hasattr(v, "shape")}
    problem = state_mismatch(expected, state)
    if problem:
        raise PrunedropError(
            f"{path} does not fit --arch {arch}: {problem}; check that --arch builds the architecture the "
            "file was saved from"
        )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as e:  # e.g. a dtype that cannot be copied, or a custom _load_from_state_dict
        raise PrunedropError(f"cannot load {path} into --arch {arch}: {reason(e)}") from e


def load_model(path: str | os.PathLike[str], *, arch: str | None = None, trust_pickle: bool = False,
               arch_kwargs: Mapping[str, Any] | None = None, log: Callable[[str], None] | None = None) -> nn.Module:
    """Read a trained model and return it on the CPU in eval mode.

    With ``arch`` (``module:factory``, a callable that returns an ``nn.Module``, called with ``arch_kwargs`` as
    keyword arguments, none by default; ``timm:NAME`` for ``timm.create_model(NAME, pretrained=False)``), the file
    must hold a state dict (read with ``torch.load(weights_only=True)``), either alone or nested in a dict under
    ``state_dict`` / ``model`` / ``model_state_dict``; it is loaded with ``strict=True``.

    Without ``arch``, the file must hold a whole pickled ``nn.Module``, which is only unpickled when
    ``trust_pickle`` is true, since unpickling can run arbitrary code. A folder written by :func:`save_model`
    is loaded with :func:`load_saved_model`.

    A ``torch.compile``d model, or one holding compiled submodules, is returned uncompiled
    (:func:`unwrap_compiled`; ``log`` gets one line saying so), and a state dict saved from one loads into the
    plain architecture (``_orig_mod.`` at any depth of its keys).

    Every problem raises :class:`PrunedropError` with one line saying what is wrong and what to do.
    """
    import torch

    from ..safety import check_no_torchscript

    if not isinstance(path, (str, os.PathLike)):
        from torch import nn as torch_nn

        raise TypeError(f"load_model: path must be the model file's path (a str or a Path), not {type(path).__name__}"
                        + ("; the model is loaded already" if isinstance(path, torch_nn.Module) else ""))
    if arch is not None and not isinstance(arch, str):
        raise TypeError(f"load_model: arch must be 'module:factory' (a str) or None, not {type(arch).__name__}")
    if arch_kwargs is not None and not isinstance(arch_kwargs, Mapping):
        raise TypeError(f"load_model: arch_kwargs must be a dict of the factory's keyword arguments or None, not "
                        f"{type(arch_kwargs).__name__}"
                        + (" (parse a JSON text with parse_arch_kwargs)" if isinstance(arch_kwargs, str) else ""))
    path = Path(path)
    if arch_kwargs and arch is None:
        raise PrunedropError("--arch-kwargs needs --arch: name the factory that takes these arguments")
    if path.is_dir() and (path / ARCHITECTURE_FILE).is_file():
        return load_saved_model(path)
    if path.is_dir() and is_hf_folder(path):
        if arch is not None:
            raise PrunedropError(f"{path} is a Hugging Face model folder, which its config.json describes: drop --arch")
        return load_hf_model(path, log)
    advice = (
        "save torch.save(model.state_dict(), path) instead, or pass --trust-pickle if you trust the file"
        if arch
        else "pass --arch module:factory with a file saved from model.state_dict(), or --trust-pickle if you "
        "trust the file"
    )
    obj = torch_load(
        path,
        what="model file",
        trust_pickle=trust_pickle,
        pickled="a pickled module (saved with torch.save(model)) or other Python objects",
        pickle_advice=advice,
    )

    if arch is not None:
        # a factory may compile or wrap its model, or parts of it
        model = unwrap_compiled(_unwrapped(_build_from_arch(arch, arch_kwargs)), log)
        state = _find_state_dict(obj)
        if state is None:
            pickled = _find_module(obj)
            if pickled is None:
                several = [str(k) for k, v in obj.items() if is_state_dict(v)] if isinstance(obj, Mapping) else []
                if len(several) > 1:
                    raise PrunedropError(
                        f"model file {path} holds {len(several)} state dicts (under {', '.join(several[:4])}): save "
                        "the one to compress on its own, torch.save(checkpoint[KEY], path)")
                raise PrunedropError(
                    f"model file {path} holds {describe(obj)}, not a state dict: save it with "
                    "torch.save(model.state_dict(), path)"
                )
            state = pickled.state_dict()  # trusted pickle plus --arch: the user's architecture wins
        check_no_torchscript(model, f"the model that --arch {arch} builds")
        _load_into(model, state, path, arch)
        return _materialized(model).to("cpu").eval()

    module = _find_module(obj)
    if module is not None:
        return _materialized(unwrap_compiled(_unwrapped(module), log)).to("cpu").eval()
    if _find_state_dict(obj) is not None:
        beside = path.parent / ARCHITECTURE_FILE
        hint = (
            f", or pass the folder {path.parent} that prunedrop wrote with {ARCHITECTURE_FILE}"
            if beside.is_file()
            else ""
        )
        raise PrunedropError(
            f"model file {path} holds a state dict (weights only): pass --arch module:factory naming a function "
            f"that builds the model{hint}"
        )
    if isinstance(obj, torch.jit.ScriptModule):
        raise PrunedropError(
            f"model file {path} holds a TorchScript module: its layers are compiled and cannot be converted; "
            "save torch.save(model.state_dict(), path) instead and pass --arch"
        )
    raise PrunedropError(
        f"model file {path} holds {describe(obj)}, not a model or a state dict: save the state dict with "
        "torch.save(model.state_dict(), path) and pass --arch module:factory"
    )
