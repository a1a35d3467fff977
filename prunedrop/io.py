"""Model loading and saving.

Three jobs, all of them safe by default (no pickle unless the user says they trust a file):

- :func:`load_model` reads the user's trained model: a state dict plus ``--arch module:factory``, or a
  whole pickled module when the user passes ``trust_pickle=True``.
- :func:`save_model` / :func:`load_saved_model` write and read the compressed model as ``model.pt`` (a
  state dict) and ``architecture.json`` (the torch.fx graph with allowlisted layer types, functions and
  methods), so that it can be rebuilt without the original class and without unpickling anything.
- :func:`save_checkpoint` / :func:`load_checkpoint` / :func:`capture_rng_state` /
  :func:`restore_rng_state` keep fine-tuning resumable with ``torch.load(weights_only=True)``.

torch is imported inside the functions so that importing this module (and the CLI's ``--help``) stays instant.
"""

from __future__ import annotations

import collections
import functools
import json
import math
import operator
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_torch_save, atomic_write_text
from .errors import PrunedropError
from .errors import one_line as _one_line

if TYPE_CHECKING:
    import torch
    from torch import fx, nn

__all__ = [
    "ARCHITECTURE_FILE",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "METHODS",
    "MODULE_ARGS",
    "WEIGHTS_FILE",
    "capture_rng_state",
    "import_object",
    "load_checkpoint",
    "load_model",
    "load_saved_model",
    "parse_arch_kwargs",
    "restore_rng_state",
    "save_checkpoint",
    "save_model",
]

WEIGHTS_FILE = "model.pt"
ARCHITECTURE_FILE = "architecture.json"
MANIFEST_FORMAT = "prunedrop-architecture"
MANIFEST_VERSION = 1

# Keys under which training scripts commonly nest the state dict inside a checkpoint dict.
_STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict")
_MAX_LISTED = 3


def import_object(spec: str, *, what: str = "object") -> Any:
    """Import ``module:attr`` (``attr`` may be dotted) and return it.

    Only the module the user names is imported, and only it may come from the current folder: a module that
    is not importable from ``sys.path`` is loaded from the current folder by its file location
    (:func:`prunedrop.safety.import_user_module`), and the current folder is never put on ``sys.path``, so
    that a ``sklearn.py`` or ``onnxruntime.py`` lying there cannot stand in for the installed library.
    """
    from .safety import import_user_module

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


# --------------------------------------------------------------------------------------------------
# Reading torch files safely
# --------------------------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    # torch's messages run to paragraphs of advice about weights_only; the first sentence is the fact.
    first = re.split(r"(?<=\.)\s", str(exc).strip(), maxsplit=1)[0]
    return _one_line(f"{type(exc).__name__}: {first}" if first else type(exc).__name__, 120)


def _check_readable_file(path: Path, what: str) -> None:
    if not path.exists():
        raise PrunedropError(f"{what} {path} does not exist: check the path")
    if path.is_dir():
        raise PrunedropError(f"{what} {path} is a folder, not a file: pass the file saved with torch.save")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise PrunedropError(f"cannot read {what} {path}: {_one_line(e.strerror or str(e))}") from e
    if size == 0:
        raise PrunedropError(f"{what} {path} is empty (0 bytes): save it again")


def _zip_members(path: Path) -> list[str] | None:
    """Member names with the archive's top folder stripped, or None when the file is no zip archive."""
    try:
        if not zipfile.is_zipfile(path):
            return None
        with zipfile.ZipFile(path) as zf:
            return [name.split("/", 1)[1] if "/" in name else name for name in zf.namelist()]
    except Exception:  # a damaged archive: let torch.load report it
        return None


def _refuse_compiled_formats(path: Path, what: str) -> None:
    """TorchScript and torch.export archives are zip files too; torch.load's errors for them are misleading."""
    members = _zip_members(path)
    if members is None or ("data.pkl" in members and "constants.pkl" not in members):
        return
    if "constants.pkl" in members or any(m.startswith("code/") for m in members):
        raise PrunedropError(
            f"{what} {path} is a TorchScript file (torch.jit.save): its layers are compiled and cannot be "
            "converted; save the state dict instead with torch.save(model.state_dict(), path) and pass --arch"
        )
    export_markers = ("archive_format", "serialized_exported_program.json")  # torch >= 2.6, older
    if any(m in members for m in export_markers) or any(m.startswith("models/") for m in members):
        raise PrunedropError(
            f"{what} {path} is a torch.export program (.pt2): its layers are compiled and cannot be "
            "converted; save the state dict instead with torch.save(model.state_dict(), path) and pass --arch"
        )


def _unsafe_globals(path: Path, exc: BaseException) -> list[str]:
    """The Python globals a checkpoint would make the unpickler import, found without unpickling it."""
    import torch

    found: list[str] = []
    get_globals = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if get_globals is not None:
        try:
            found = list(get_globals(path))
        except Exception:
            found = []
    if not found:  # legacy (non-zip) files: only the weights-only unpickler's message names the global
        found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    # The user's own classes say most about what the file is; torch's internals come last.
    return sorted(dict.fromkeys(found), key=lambda name: (name.startswith("torch."), name))


def _suffix_hint(path: Path) -> str:
    hints = {
        ".onnx": "; an ONNX file cannot be fine-tuned: pass the PyTorch model it was exported from",
        ".safetensors": "; safetensors files are not supported yet: save with torch.save(model.state_dict(), path)",
    }
    return hints.get(path.suffix.lower(), "")


def _torch_load(path: Path, *, what: str, trust_pickle: bool, pickled: str, pickle_advice: str) -> Any:
    """``torch.load`` that turns every failure into one PrunedropError line.

    The file is first read with ``weights_only=True``; only when that fails because the file holds pickled
    Python objects, and the caller trusts it, is it read again with full unpickling.
    """
    import torch

    _check_readable_file(path, what)
    _refuse_compiled_formats(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, KeyError, ... on bad files
        safe_error = e
    names = _unsafe_globals(path, safe_error)
    if not names:
        raise PrunedropError(
            f"cannot read {what} {path}: it is not a file written by torch.save, or it is truncated or corrupt "
            f"({_reason(safe_error)}){_suffix_hint(path)}"
        ) from safe_error
    if not trust_pickle:
        raise PrunedropError(
            f"{what} {path} holds {pickled} ({_listed(names)}); unpickling can run arbitrary code, so it is not "
            f"loaded by default: {pickle_advice}"
        ) from safe_error
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a trusted pickle still fails when its classes cannot be imported here
        raise PrunedropError(
            f"cannot unpickle {what} {path} ({_reason(e)}): run from the project that defines the model's "
            "classes, or save torch.save(model.state_dict(), path) and pass --arch module:factory"
        ) from e


# --------------------------------------------------------------------------------------------------
# load_model
# --------------------------------------------------------------------------------------------------


def _is_state_dict(obj: Any) -> bool:
    import torch

    if not isinstance(obj, Mapping) or not obj:
        return False
    return all(
        isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state")) for k, v in obj.items()
    )


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = [repr(k) for k in list(obj)[:_MAX_LISTED]]
        more = ", ..." if len(obj) > _MAX_LISTED else ""
        return f"a dict with keys {', '.join(keys)}{more}" if obj else "an empty dict"
    return f"a {type(obj).__module__}.{type(obj).__qualname__}"


def _find_state_dict(obj: Any) -> Mapping[str, Any] | None:
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in _STATE_DICT_KEYS:
            if _is_state_dict(obj.get(key)):
                return obj[key]
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


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else "")


def _state_mismatch(expected: Mapping[str, tuple[int, ...]], got: Mapping[str, Any]) -> str | None:
    """One line listing (a few of) the missing keys, unexpected keys and shape mismatches, or None."""
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [
        f"{k}: file has {tuple(got[k].shape)}, model has {tuple(expected[k])}"
        for k in expected
        if k in got and hasattr(got[k], "shape") and tuple(got[k].shape) != tuple(expected[k])
    ]
    parts = []
    if missing:
        parts.append(f"missing keys {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {_listed(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches {_listed(shapes)}")
    return "; ".join(parts) or None


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
                f"--arch {arch!r} rejected --arch-kwargs {_one_line(json.dumps(kwargs), 80)} ({_reason(e)}): "
                "give only arguments that the factory takes"
            ) from e
        raise PrunedropError(
            f"--arch {arch!r} failed when called with no arguments ({_reason(e)}): name a factory that needs "
            "no arguments, or give them with --arch-kwargs '{\"name\": value}'"
        ) from e
    except Exception as e:
        called = f"with --arch-kwargs {_one_line(json.dumps(kwargs), 80)}" if kwargs else "with no arguments"
        raise PrunedropError(
            f"--arch {arch!r} failed when called {called} ({_reason(e)}): name a factory that returns the model"
        ) from e
    if not isinstance(model, torch.nn.Module):
        raise PrunedropError(
            f"--arch {arch!r} returned {_describe(model)}, not an nn.Module: name a factory that returns the model"
        )
    from .safety import check_materialized

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
        what = "is not installed" if missing else f"cannot be imported ({_reason(e)})"
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
            f"--arch {arch!r} rejected --arch-kwargs {_one_line(json.dumps(kwargs), 80)} ({_reason(e)}): "
            "give only arguments that the model takes"
        ) from e
    except Exception as e:  # timm raises RuntimeError for an unknown model name
        raise PrunedropError(
            f"timm cannot build {name!r} ({_reason(e)}); list the names with timm.list_models()"
        ) from e
    if not isinstance(model, torch.nn.Module):
        raise PrunedropError(f"--arch {arch!r} returned {_describe(model)}, not an nn.Module")
    return model


def _strip_data_parallel_prefix(state: Mapping[str, Any], model: nn.Module) -> Mapping[str, Any]:
    # nn.DataParallel / DistributedDataParallel save every key under "module."; the bare model has none.
    expected = model.state_dict()
    if state and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in expected):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


def _load_into(model: nn.Module, state: Mapping[str, Any], path: Path, arch: str) -> None:
    state = _strip_data_parallel_prefix(state, model)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if hasattr(v, "shape")}
    problem = _state_mismatch(expected, state)
    if problem:
        raise PrunedropError(
            f"{path} does not fit --arch {arch}: {problem}; check that --arch builds the architecture the "
            "file was saved from"
        )
    try:
        model.load_state_dict(state, strict=True)
    except Exception as e:  # e.g. a dtype that cannot be copied, or a custom _load_from_state_dict
        raise PrunedropError(f"cannot load {path} into --arch {arch}: {_reason(e)}") from e


def load_model(path: str | os.PathLike[str], *, arch: str | None = None, trust_pickle: bool = False,
               arch_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """Read a trained model and return it on the CPU in eval mode.

    With ``arch`` (``module:factory``, a callable that returns an ``nn.Module``, called with ``arch_kwargs`` as
    keyword arguments, none by default; ``timm:NAME`` for ``timm.create_model(NAME, pretrained=False)``), the file
    must hold a state dict (read with ``torch.load(weights_only=True)``), either alone or nested in a dict under
    ``state_dict`` / ``model`` / ``model_state_dict``; it is loaded with ``strict=True``.

    Without ``arch``, the file must hold a whole pickled ``nn.Module``, which is only unpickled when
    ``trust_pickle`` is true, since unpickling can run arbitrary code. A folder written by :func:`save_model`
    is loaded with :func:`load_saved_model`.

    Every problem raises :class:`PrunedropError` with one line saying what is wrong and what to do.
    """
    import torch

    path = Path(path)
    if arch_kwargs and arch is None:
        raise PrunedropError("--arch-kwargs needs --arch: name the factory that takes these arguments")
    if path.is_dir() and (path / ARCHITECTURE_FILE).is_file():
        return load_saved_model(path)
    advice = (
        "save torch.save(model.state_dict(), path) instead, or pass --trust-pickle if you trust the file"
        if arch
        else "pass --arch module:factory with a file saved from model.state_dict(), or --trust-pickle if you "
        "trust the file"
    )
    obj = _torch_load(
        path,
        what="model file",
        trust_pickle=trust_pickle,
        pickled="a pickled module (saved with torch.save(model)) or other Python objects",
        pickle_advice=advice,
    )

    if arch is not None:
        model = _build_from_arch(arch, arch_kwargs)
        state = _find_state_dict(obj)
        if state is None:
            pickled = _find_module(obj)
            if pickled is None:
                raise PrunedropError(
                    f"model file {path} holds {_describe(obj)}, not a state dict: save it with "
                    "torch.save(model.state_dict(), path)"
                )
            state = pickled.state_dict()  # trusted pickle plus --arch: the user's architecture wins
        _load_into(model, state, path, arch)
        return model.to("cpu").eval()

    module = _find_module(obj)
    if module is not None:
        return module.to("cpu").eval()
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
        f"model file {path} holds {_describe(obj)}, not a model or a state dict: save the state dict with "
        "torch.save(model.state_dict(), path) and pass --arch module:factory"
    )


# --------------------------------------------------------------------------------------------------
# The architecture manifest: allowlists
# --------------------------------------------------------------------------------------------------

_CONV_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
              "padding_mode")
_CONV_T_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding", "groups",
                "bias", "dilation", "padding_mode")
_BN_ARGS = ("num_features", "eps", "momentum", "affine", "track_running_stats")
_MAXPOOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode")
_AVGPOOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
_DROPOUT_ARGS = ("p", "inplace")

# torch.nn type name -> constructor arguments, read back from the module's attributes of the same name
# ("bias" is special: the constructor takes a bool, the module holds a tensor or None). Everything else a
# module holds must be in its state dict; save_model checks the rebuilt model's outputs to make sure.
_RNN_ARGS = ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional")
MODULE_ARGS: dict[str, tuple[str, ...]] = {
    "Linear": ("in_features", "out_features", "bias"),
    "Bilinear": ("in1_features", "in2_features", "out_features", "bias"),
    "Conv1d": _CONV_ARGS,
    "Conv2d": _CONV_ARGS,
    "Conv3d": _CONV_ARGS,
    "ConvTranspose1d": _CONV_T_ARGS,
    "ConvTranspose2d": _CONV_T_ARGS,
    "ConvTranspose3d": _CONV_T_ARGS,
    "BatchNorm1d": _BN_ARGS,
    "BatchNorm2d": _BN_ARGS,
    "BatchNorm3d": _BN_ARGS,
    "LayerNorm": ("normalized_shape", "eps", "elementwise_affine", "bias"),
    "GroupNorm": ("num_groups", "num_channels", "eps", "affine"),
    "Embedding": ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                  "scale_grad_by_freq", "sparse"),
    "ReLU": ("inplace",),
    "ReLU6": ("inplace",),
    "LeakyReLU": ("negative_slope", "inplace"),
    "PReLU": ("num_parameters",),
    "GELU": ("approximate",),
    "SiLU": ("inplace",),
    "Mish": ("inplace",),
    "Sigmoid": (),
    "Tanh": (),
    "Hardswish": ("inplace",),
    "Hardsigmoid": ("inplace",),
    "Hardtanh": ("min_val", "max_val", "inplace"),
    "ELU": ("alpha", "inplace"),
    "Softplus": ("beta", "threshold"),
    "Softmax": ("dim",),
    "LogSoftmax": ("dim",),
    "MaxPool1d": _MAXPOOL_ARGS,
    "MaxPool2d": _MAXPOOL_ARGS,
    "MaxPool3d": _MAXPOOL_ARGS,
    "AvgPool1d": _AVGPOOL_ARGS,
    "AvgPool2d": (*_AVGPOOL_ARGS, "divisor_override"),
    "AvgPool3d": (*_AVGPOOL_ARGS, "divisor_override"),
    "AdaptiveAvgPool1d": ("output_size",),
    "AdaptiveAvgPool2d": ("output_size",),
    "AdaptiveAvgPool3d": ("output_size",),
    "AdaptiveMaxPool1d": ("output_size", "return_indices"),
    "AdaptiveMaxPool2d": ("output_size", "return_indices"),
    "AdaptiveMaxPool3d": ("output_size", "return_indices"),
    "Flatten": ("start_dim", "end_dim"),
    "Unflatten": ("dim", "unflattened_size"),
    "Dropout": _DROPOUT_ARGS,
    "Dropout1d": _DROPOUT_ARGS,
    "Dropout2d": _DROPOUT_ARGS,
    "Dropout3d": _DROPOUT_ARGS,
    "AlphaDropout": _DROPOUT_ARGS,
    "Identity": (),
    "Upsample": ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor"),
    "ZeroPad1d": ("padding",),
    "ZeroPad2d": ("padding",),
    "ZeroPad3d": ("padding",),
    "LSTM": (*_RNN_ARGS, "proj_size"),
    "GRU": _RNN_ARGS,
    "MultiheadAttention": ("embed_dim", "num_heads", "dropout", "bias", "add_bias_kv", "add_zero_attn", "kdim",
                           "vdim", "batch_first"),
}
# Constructor arguments that a module does not hold under their own name: (type name, argument) -> reader.
_ARG_READERS: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("MultiheadAttention", "bias"): lambda m: m.in_proj_bias is not None,
    ("MultiheadAttention", "add_bias_kv"): lambda m: m.bias_k is not None,
}

_OPERATOR_FUNCTIONS = (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "neg", "pos", "abs", "getitem",
    "eq", "ne", "lt", "le", "gt", "ge", "and_", "or_", "xor", "invert",
)
_TORCH_FUNCTIONS = (
    "abs", "adaptive_avg_pool1d", "adaptive_max_pool1d", "add", "addmm", "amax", "amin", "arange", "argmax",
    "argmin", "avg_pool1d", "batch_norm", "bmm", "cat", "chunk", "clamp", "clip", "concat", "conv1d", "conv2d",
    "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "cos", "cumsum", "div", "dropout",
    "einsum", "erf", "exp", "flatten", "full", "full_like", "gather", "group_norm", "layer_norm", "log",
    "log_softmax", "logsumexp", "matmul", "max", "max_pool1d", "max_pool2d", "max_pool3d", "maximum", "mean",
    "min", "minimum", "mm", "mul", "narrow", "neg", "ones", "ones_like", "permute", "pow", "relu", "reshape",
    "roll", "rsqrt", "sigmoid", "sin", "softmax", "split", "sqrt", "square", "squeeze", "stack", "std", "sub",
    "sum", "t", "tanh", "transpose", "unbind", "unsqueeze", "var", "where", "zeros", "zeros_like",
)
_FUNCTIONAL_FUNCTIONS = (
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "alpha_dropout", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "batch_norm", "bilinear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "dropout", "dropout1d", "dropout2d", "dropout3d", "elu", "embedding", "gelu",
    "group_norm", "hardsigmoid", "hardswish", "hardtanh", "interpolate", "layer_norm", "leaky_relu", "linear",
    "log_softmax", "max_pool1d", "max_pool2d", "max_pool3d", "mish", "normalize", "pad", "prelu", "relu",
    "relu6", "scaled_dot_product_attention", "sigmoid", "silu", "softmax", "softplus", "tanh",
)
# Tensor methods a graph may call; checked again on load, since the manifest is untrusted input.
METHODS: frozenset[str] = frozenset((
    "abs", "add", "amax", "amin", "argmax", "argmin", "chunk", "clamp", "clip", "contiguous", "detach", "dim",
    "div", "double", "exp", "expand", "expand_as", "flatten", "float", "half", "log", "log_softmax", "masked_fill",
    "matmul", "max", "mean", "min", "mul", "narrow", "neg", "norm", "numel", "permute", "pow", "relu", "repeat",
    "reshape", "reshape_as", "rsqrt", "sigmoid", "size", "softmax", "split", "sqrt", "squeeze", "std", "sub",
    "sum", "t", "tanh", "to", "transpose", "type_as", "unbind", "unflatten", "unsqueeze", "var", "view", "view_as",
))
# builtins.getattr is how fx records ``x.shape``; only harmless tensor attributes may be read.
_GETATTR_NAMES = frozenset(("shape", "dtype", "device", "ndim", "T", "mT"))


@functools.cache
def _function_table() -> tuple[dict[str, Callable[..., Any]], dict[Any, str]]:
    """name -> function and function -> name for every allowlisted ``call_function`` target."""
    import builtins

    import torch
    import torch.nn.functional as F

    by_name: dict[str, Callable[..., Any]] = {}
    for prefix, namespace, names in (
        ("operator", operator, _OPERATOR_FUNCTIONS),
        ("torch", torch, _TORCH_FUNCTIONS),
        ("torch.nn.functional", F, _FUNCTIONAL_FUNCTIONS),
    ):
        for name in names:
            fn = getattr(namespace, name, None)
            if fn is not None:  # older torch versions lack a few of these
                by_name[f"{prefix}.{name}"] = fn
    by_name["builtins.getattr"] = builtins.getattr
    by_function: dict[Any, str] = {}
    for name, fn in by_name.items():
        by_function.setdefault(fn, name)  # F.conv2d is torch.conv2d: the first name is the one written
    return by_name, by_function


def _module_type(name: str) -> type[nn.Module] | None:
    import torch

    cls = getattr(torch.nn, name, None) if name in MODULE_ARGS else None
    return cls if isinstance(cls, type) and issubclass(cls, torch.nn.Module) else None


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
# save_model / load_saved_model
# --------------------------------------------------------------------------------------------------


def _trace(model: nn.Module) -> fx.GraphModule:
    from torch import fx

    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # TraceError, TypeError, NotImplementedError ... from user forward code
        raise PrunedropError(
            f"cannot describe the model in {ARCHITECTURE_FILE}: torch.fx cannot trace its forward "
            f"({_reason(e)}); a forward without data-dependent control flow (if/for on tensor values) can be traced"
        ) from e


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


def _describe_module(name: str, module: nn.Module) -> dict[str, Any]:
    type_name = type(module).__name__
    if _module_type(type_name) is not type(module):
        where = f"{type(module).__module__}.{type(module).__qualname__}"
        raise PrunedropError(
            f"cannot describe module {name!r} of type {where} in {ARCHITECTURE_FILE}: that layer type is not in "
            "prunedrop's allowlist (prunedrop.io.MODULE_ARGS)"
        )
    args = {}
    for arg in MODULE_ARGS[type_name]:
        reader = _ARG_READERS.get((type_name, arg))
        value = reader(module) if reader is not None else getattr(module, arg)
        if arg == "bias" and reader is None:
            value = value is not None
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
    _, by_function = _function_table()
    try:
        name = by_function.get(fn)
    except TypeError:  # an unhashable callable cannot be in the table
        name = None
    if name is None:
        raise PrunedropError(
            f"cannot describe the call to {_callable_name(fn)} (graph node {node.name!r}) in {ARCHITECTURE_FILE}: that "
            "function is not in prunedrop's allowlist; rewrite the forward with supported operations"
        )
    if name == "builtins.getattr" and (len(node.args) != 2 or node.args[1] not in _GETATTR_NAMES):
        raise PrunedropError(
            f"cannot describe graph node {node.name!r} in {ARCHITECTURE_FILE}: it reads tensor attribute "
            f"{node.args[1:2]!r}; only {', '.join(sorted(_GETATTR_NAMES))} are supported"
        )
    return name


def _manifest(model: nn.Module, gm: fx.GraphModule, examples: tuple[torch.Tensor, ...],
              state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    import torch

    from . import __version__

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


def _build(manifest: Mapping[str, Any], state: Mapping[str, Any]) -> fx.GraphModule:
    """Rebuild the GraphModule; every name in the manifest resolves through an allowlist, nothing is imported."""
    import torch
    from torch import fx

    functions, _ = _function_table()
    _check_names(manifest)
    root = torch.nn.Module()
    # Built on the meta device and then given the saved tensors: no random initialisation to waste time on,
    # and the global RNG is left untouched, so loading a model does not change a seeded run.
    with torch.device("meta"):
        for name, spec in manifest["modules"].items():
            cls = _module_type(spec["type"])
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
        if target is getattr and args[1:2] and args[1] not in _GETATTR_NAMES:
            raise PrunedropError(f"{ARCHITECTURE_FILE} reads tensor attribute {args[1]!r}, which is not allowed")
        if entry["name"] in nodes:
            raise ValueError(f"two nodes are named {entry['name']!r}")
        node = graph.create_node(op, target, args, kwargs, name=entry["name"])
        nodes[entry["name"]] = node
    graph.lint()

    problem = _state_mismatch({k: tuple(v["shape"]) for k, v in manifest["state"].items()}, state)
    if problem:
        raise PrunedropError(f"{WEIGHTS_FILE} does not match {ARCHITECTURE_FILE}: {problem}")
    gm = fx.GraphModule(root, graph, class_name="PrunedropGraphModule")
    problem = _state_mismatch({k: tuple(v.shape) for k, v in gm.state_dict().items()}, state)
    if problem:  # the layers' constructor arguments disagree with the weights
        raise PrunedropError(f"{WEIGHTS_FILE} does not fit the layers in {ARCHITECTURE_FILE}: {problem}")
    gm.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in (*gm.named_parameters(), *gm.named_buffers()) if t.is_meta]
    if leftover:  # a non-persistent buffer would stay on meta: the manifest cannot describe those
        raise PrunedropError(f"{ARCHITECTURE_FILE} leaves tensors without values: {_listed(leftover)}")
    return gm.eval()


def _as_examples(example_input: Any) -> tuple[torch.Tensor, ...]:
    import torch

    examples = example_input if isinstance(example_input, (tuple, list)) else (example_input,)
    if not examples or not all(isinstance(x, torch.Tensor) for x in examples):
        raise TypeError("example_input must be a tensor or a tuple of tensors")
    return tuple(examples)


def _max_abs_diff(a: Any, b: Any) -> float:
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape:
            return math.inf
        if a.numel() == 0:
            return 0.0
        a, b = a.detach().cpu().double(), b.detach().cpu().double()
        same = (a == b) | (a.isnan() & b.isnan())
        return 0.0 if bool(same.all()) else float((a - b).abs().nan_to_num(math.inf)[~same].max())
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return max((_max_abs_diff(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys():
        return max((_max_abs_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (torch.Tensor, tuple, list, Mapping)) or isinstance(b, (torch.Tensor, tuple, list, Mapping)):
        return math.inf  # different structure
    return 0.0 if a == b else math.inf


def _max_abs(value: Any) -> float:
    import torch

    if isinstance(value, torch.Tensor):
        finite = value.detach().double().nan_to_num(0.0, 0.0, 0.0)
        return float(finite.abs().max()) if value.numel() else 0.0
    if isinstance(value, (tuple, list)):
        return max((_max_abs(v) for v in value), default=0.0)
    if isinstance(value, Mapping):
        return max((_max_abs(v) for v in value.values()), default=0.0)
    return 0.0


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    import torch

    # torch.save writes a view's whole storage: a slice of a big pruned weight would keep every pruned byte.
    tensor = tensor.detach().cpu()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size() or not tensor.is_contiguous():
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    return tensor


def _dumps_manifest(manifest: Mapping[str, Any]) -> str:
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
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()  # tracing follows `if self.training` branches: record the inference path
        gm = _drop_inference_no_ops(_trace(model))
        state = {k: _compact(v) for k, v in gm.state_dict().items()}
        manifest = _manifest(model, gm, examples, state)
        text = _dumps_manifest(manifest)
        rebuilt = _build(json.loads(text), state)
        with torch.no_grad():
            expected = model(*examples)
            got = rebuilt(*(x.cpu() for x in examples))
    finally:
        for module, training in modes.items():
            module.train(training)
    diff = _max_abs_diff(expected, got)
    if not diff <= 1e-5 * max(1.0, _max_abs(expected)):
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
    from .safety import check_manifest_bounds, load_json_file

    manifest = load_json_file(arch_path, where=str(arch_path), advice="write it again with save_model")
    check_manifest_bounds(manifest, str(arch_path))
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise PrunedropError(f"{arch_path} is not a prunedrop architecture manifest (no \"format\": \"{MANIFEST_FORMAT}\")")
    if manifest.get("version") != MANIFEST_VERSION:
        raise PrunedropError(
            f"{arch_path} has manifest version {manifest.get('version')!r}, but this prunedrop reads version "
            f"{MANIFEST_VERSION}: use the prunedrop version that wrote it"
        )
    state = _torch_load(
        folder / WEIGHTS_FILE,
        what="weights file",
        trust_pickle=False,
        pickled="pickled Python objects, not only tensors",
        pickle_advice=f"prunedrop's save_model writes a plain state dict; write {WEIGHTS_FILE} again with it",
    )
    if not _is_state_dict(state):
        raise PrunedropError(f"{folder / WEIGHTS_FILE} holds {_describe(state)}, not a state dict")
    try:
        return _build(manifest, state)
    except PrunedropError:
        raise
    except Exception as e:  # a hand-edited or damaged manifest: KeyError, TypeError, ValueError, ...
        raise PrunedropError(f"{arch_path} is malformed ({_reason(e)}): write it again with save_model") from e


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def _check_weights_only_safe(value: Any, where: str) -> None:
    """Refuse at save time what ``torch.load(weights_only=True)`` would refuse at resume time."""
    import torch

    kind = type(value)
    # Only what every torch >= 2.2 weights-only unpickler accepts (sets and bytes came later).
    if value is None or kind in (bool, int, float, str, torch.dtype, torch.device, torch.Size):
        return
    if kind in (torch.Tensor, torch.nn.Parameter):
        return
    if kind in (list, tuple):
        for i, item in enumerate(value):
            _check_weights_only_safe(item, f"{where}[{i}]")
        return
    if kind in (dict, collections.OrderedDict):
        for key, item in value.items():
            _check_weights_only_safe(key, f"{where} key {key!r}")
            _check_weights_only_safe(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"checkpoint value {where} is a {kind.__module__}.{kind.__qualname__}, which torch.load(weights_only=True) "
        "refuses: convert it to a tensor or a plain Python value (float(x), x.tolist(), torch.as_tensor(x))"
    )


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a training checkpoint atomically with ``torch.save``.

    ``state`` may hold tensors, dicts, lists, tuples and plain Python scalars/strings (model and optimizer
    state dicts, scheduler state, :func:`capture_rng_state`, epoch, history, recipe as a dict); anything else
    raises ``TypeError`` now rather than when the run is resumed.
    """
    if not isinstance(state, dict):
        raise TypeError(f"a checkpoint is a dict, not a {type(state).__qualname__}")
    _check_weights_only_safe(state, "state")
    path = Path(path)
    atomic_torch_save(state, path)
    return path


def load_checkpoint(path: str | os.PathLike[str], *, require: Iterable[str] = ()) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``, tensors on the CPU.

    The entries it has must have the types fine-tuning writes (:data:`prunedrop.safety.CHECKPOINT_KEYS`), and
    those named in ``require`` must be there: a PrunedropError otherwise."""
    path = Path(path)
    state = _torch_load(
        path,
        what="checkpoint",
        trust_pickle=False,
        pickled="pickled Python objects, not only tensors",
        pickle_advice="prunedrop's save_checkpoint writes only tensors and plain values; was it written by another tool?",
    )
    if not isinstance(state, dict):
        raise PrunedropError(f"checkpoint {path} holds {_describe(state)}, not a dict: was it written by another tool?")
    from .safety import check_checkpoint

    check_checkpoint(state, path, require)
    return state


def capture_rng_state() -> dict[str, Any]:
    """Python's, numpy's, torch's (and CUDA's) global RNG states, as types ``weights_only`` loading accepts.

    ``random.getstate()`` becomes a version, an int64 tensor and a float; numpy's legacy global state (its key
    is a uint32 array) an int64 tensor plus plain values; torch's states are already ByteTensors.
    """
    import random

    import torch

    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss_next": gauss_next},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state["numpy"] = {
        "kind": str(kind),
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the global RNGs from :func:`capture_rng_state`'s dict; generators it does not hold are left alone."""
    import random

    import torch

    try:
        if "python" in state:
            py = state["python"]
            internal = tuple(int(v) for v in py["internal"].tolist())
            random.setstate((int(py["version"]), internal, py["gauss_next"]))
        if "torch" in state:
            torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        if "numpy" in state:
            import numpy as np

            npy = state["numpy"]
            keys = npy["keys"].numpy().astype(np.uint32)
            np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise PrunedropError(f"the checkpoint's RNG state is malformed ({_reason(e)}): start the run afresh") from e
