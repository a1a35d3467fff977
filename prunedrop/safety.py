"""Guards against hostile or careless inputs, each in one place.

- :func:`import_user_module`: the only way prunedrop imports a module the user names (``--arch``,
  ``--data python:``); only that module may come from the current folder, which is never put on ``sys.path``.
- :func:`check_output_file`: the one check of a file path prunedrop is asked to write (``export -o``);
  :func:`same_entry`, :func:`lies_within` and :func:`module_files` tell whether an output would replace an input
  (:func:`prunedrop.runfolder.check_inputs_kept`).
- :func:`load_yaml_file` / :func:`load_json_file` / :func:`check_nesting`: what a small file may make
  prunedrop allocate: bounded size, bounded nesting, no YAML aliases.
- :func:`check_finite_weights`: a model with NaN or inf weights is refused when it is loaded.
- :func:`check_temp_dir`: a machine without a writable temporary directory (PyTorch's and its compiler's
  cache) is told so in one line before torch is imported.

Every refusal is a :class:`~prunedrop.errors.PrunedropError` (one line, exit status 1).
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import importlib.util
import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PrunedropError, describe

if TYPE_CHECKING:
    from torch import nn

#: the largest recipe, report, run.json or architecture.json prunedrop reads
MAX_CONFIG_BYTES = 64 * 1024 * 1024
#: the deepest nesting of lists and dicts in those files (prunedrop writes at most about 8)
MAX_NESTING = 64


# ------------------------------------------------------------------------------------------ user modules


def import_user_module(module_name: str, *, what: str) -> Any:
    """Import the module ``module_name`` that the user named for ``what`` (e.g. ``--arch 'models:net'``).

    An importable module (installed, on ``PYTHONPATH``, already imported) is imported as usual. Otherwise its
    top-level module or package is loaded from the current folder by file location, and registered under its
    name so that the package's own submodules and relative imports work. The current folder is not put on
    ``sys.path``: a ``sklearn.py`` or ``onnxruntime.py`` beside the user's model never shadows the installed
    library, and nothing else is imported from the current folder.
    """
    parts = module_name.split(".")
    if not all(part.isidentifier() for part in parts):
        raise PrunedropError(f"{what}: {module_name!r} is not a module name (dotted Python identifiers, e.g. "
                             "'models' for models.py in the current folder, or 'mypackage.models')")
    top = parts[0]
    try:
        if top not in sys.modules and importlib.util.find_spec(top) is None:
            _load_from_current_folder(top, what=what)
        return importlib.import_module(module_name)
    except PrunedropError:
        raise
    except (Exception, SystemExit) as e:  # the user's module failing to import is the user's to fix
        raise PrunedropError(f"cannot import module {module_name!r} for {what}: {describe(e)}; "
                             "fix the module or the name") from None


def _load_from_current_folder(top: str, *, what: str) -> None:
    folder = os.getcwd()
    spec = importlib.machinery.PathFinder.find_spec(top, [folder])
    if spec is None or spec.loader is None:
        raise PrunedropError(f"cannot import module {top!r} for {what}: it is neither installed nor a {top}.py "
                             f"or {top}/ package in the current folder {folder}; check the name, or run from the "
                             "folder that holds it")
    module = importlib.util.module_from_spec(spec)
    sys.modules[top] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(top, None)
        raise


def module_files(module_name: str) -> list[Path]:
    """The source files that the module ``module_name`` comes from (the module's and its packages'
    ``__init__.py``), found as :func:`import_user_module` would find them but without importing anything: the
    files a run depends on, which no output may replace. A name that cannot be found gives what was found of it."""
    import importlib.machinery

    parts = module_name.split(".")
    if not module_name or not all(part.isidentifier() for part in parts):
        return []
    files: list[Path] = []
    locations: list[str] | None = None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        module = sys.modules.get(name)
        try:
            if module is not None:
                origin, search = getattr(module, "__file__", None), getattr(module, "__path__", None)
            else:
                if i == 0:
                    spec = importlib.util.find_spec(name)  # a top-level name: nothing is imported to find it
                    if spec is None:
                        spec = importlib.machinery.PathFinder.find_spec(name, [os.getcwd()])
                else:
                    spec = importlib.machinery.PathFinder.find_spec(name, locations)
                if spec is None:
                    break
                origin = spec.origin if spec.has_location else None
                search = spec.submodule_search_locations
        except (Exception, SystemExit):  # a broken finder or package: the import itself reports it
            break
        if isinstance(origin, str) and os.path.isfile(origin):
            files.append(Path(origin))
        if search is None:
            break
        locations = list(search)
    return files


# ------------------------------------------------------------------------------------------ output paths


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def same_entry(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether writing or deleting ``a`` would replace or delete ``b``: the same directory entry, or the same file
    (by device and inode, so that links, ``..`` and the letter case of a case-insensitive file system hide nothing)."""
    try:
        if _same_file(os.lstat(a), os.lstat(b)):
            return True
        return _same_file(os.stat(a), os.stat(b))
    except (OSError, ValueError):
        return False


def lies_within(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is the folder ``folder`` or lies under it, compared by device and inode (links, ``..``
    and letter case hide nothing); ``path`` need not exist."""
    try:
        target = os.stat(folder)
    except (OSError, ValueError):
        return False
    if not stat.S_ISDIR(target.st_mode):
        return False
    path = Path(path)
    for start in {Path(os.path.realpath(path.parent)) / path.name, Path(os.path.realpath(path))}:
        for q in (start, *start.parents):
            try:
                if _same_file(os.stat(q), target):
                    return True
            except (OSError, ValueError):
                continue
    return False


def _kind(st: os.stat_result) -> str:
    """What a file system entry that is no regular file is, in words."""
    mode = st.st_mode
    return ("a folder" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def not_a_file(path: str | os.PathLike[str]) -> str | None:
    """Why the input ``path`` (a recipe, a model file, a data file) cannot be read as a file, as the end of a
    sentence naming it: "does not exist", "is a folder, not a file", "is a FIFO, not a file", "is a link to nothing
    (a dangling link)", "cannot be looked at (Permission denied)"; None for a regular file or a link to one. The one
    place that tells these apart, so that a folder or a path behind a folder without permission is never called
    missing, nor a FIFO empty."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "is a link to nothing (a dangling link)" if os.path.islink(path) else "does not exist"
    except NotADirectoryError:
        return "does not exist (a part of its path is a file, not a folder)"
    except OSError as e:
        return f"cannot be looked at ({e.strerror or e})"
    except ValueError:  # a NUL character in the path
        return "is not a valid path (it holds a NUL character)"
    if stat.S_ISREG(st.st_mode):
        return None
    kind = _kind(st)
    return f"is {kind}, not a file" if kind != "not a regular file" else "is not a regular file"


def not_a_folder(path: str | os.PathLike[str]) -> str | None:
    """:func:`not_a_file` for an input that must be a folder (an image folder, an IDX folder, ``--data-dir``):
    "does not exist", "is a file, not a folder", "is a FIFO, not a folder", ...; None for a folder or a link to
    one."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError, OSError, ValueError):
        why = not_a_file(path)
        return why.replace("not a file", "not a folder") if why else "does not exist"
    if stat.S_ISDIR(st.st_mode):
        return None
    kind = "a file" if stat.S_ISREG(st.st_mode) else _kind(st)
    return f"is {kind}, not a folder" if kind != "not a regular file" else "is not a folder"


def check_output_file(path: str | os.PathLike[str], *, overwrite: bool, protected: Iterable[Path] = (),
                      option: str = "-o") -> Path:
    """Check that ``path`` may be written (atomically: a temporary file, then rename): return it as a Path.

    Refused: an existing target that is not a regular file (a folder, a device such as /dev/null, a FIFO,
    a socket, a link to one of those); a target that is, or is a link to, one of the ``protected`` files (the
    run's checkpoints, run.json, reports, the original model and data); an existing regular file without
    ``overwrite``.
    """
    if os.fspath(path) == "-":  # the usual name of standard output: a file named "-" is never what was meant
        raise PrunedropError(f"{option} -: prunedrop writes no ONNX file to standard output; give a file name such as "
                             "model.onnx (./- for a file named '-')")
    path = Path(path)
    if not str(path).strip() or path.name in ("", ".", ".."):
        raise PrunedropError(f"{option} {str(path)!r} does not name a file; give a file name such as model.onnx")
    try:
        st = path.stat()  # follows links: what a write through this path would replace or touch
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise PrunedropError(f"{option} {str(path)[:200]}: cannot check the target ({e.strerror}); choose another "
                             "path") from None
    link = path.is_symlink()
    if st is None:
        if link:
            raise PrunedropError(f"{option} {path} is a dangling link; remove it or choose another path")
        parent = path.parent
        if parent.exists() and not parent.is_dir():
            raise PrunedropError(f"{option} {path}: {parent} is not a folder; choose another path")
        _refuse_protected(path, None, protected, option)
        return path
    if not stat.S_ISREG(st.st_mode):
        kind = _kind(st)
        raise PrunedropError(f"{option} {path} is {'a link to ' if link else ''}{kind}, not a regular file; "
                             "give the path of a new .onnx file")
    _refuse_protected(path, st, protected, option)
    if not overwrite:
        raise PrunedropError(f"{option} {path} exists; pass --overwrite to replace it, or choose another path")
    return path


def _refuse_protected(path: Path, st: os.stat_result | None, protected: Iterable[Path], option: str) -> None:
    target = os.path.realpath(path)
    for p in protected:
        try:
            pst = p.stat()
        except OSError:
            pst = None
        if os.path.realpath(p) == target or (st is not None and pst is not None and _same_file(st, pst)):
            raise PrunedropError(f"{option} {path} is {p.name}, which the run needs (its checkpoint, record, "
                                 "report, model, data or module); choose another path")


def check_output_folder(path: str | os.PathLike[str], option: str = "-o") -> Path:
    """Check that the output folder ``path`` can be looked at (a name too long for the file system, a file in
    the middle of the path, a loop of links are one-line errors): return it as a Path."""
    if os.fspath(path) == "-":  # the usual name of standard output: a folder named "-" is never what was meant
        raise PrunedropError(f"{option} -: a run writes a folder of files, not to standard output; give an output "
                             "folder (./- for a folder named '-')")
    path = Path(path)
    if not str(path).strip():
        raise PrunedropError(f"{option} is empty; give an output folder")
    try:
        os.stat(path)
    except FileNotFoundError:
        pass
    except NotADirectoryError:
        raise PrunedropError(f"{option} {path}: a part of the path is a file, not a folder; choose another "
                             "folder") from None
    except OSError as e:
        raise PrunedropError(f"{option} {str(path)[:200]}: {e.strerror or e}; choose another folder") from None
    return path


# ------------------------------------------------------------------------------------------ config files


def check_nesting(value: Any, where: str, limit: int = MAX_NESTING) -> None:
    """Refuse lists/dicts nested deeper than ``limit`` (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, (list, tuple)):
            children = node
        else:
            continue
        if depth > limit:
            raise PrunedropError(f"{where} is nested more than {limit} levels deep; it is not a file prunedrop "
                                 "writes or reads")
        stack.extend((child, depth + 1) for child in children)


def _read_bounded(path: Path, where: str, limit: int) -> str:
    try:
        size = path.stat().st_size
        if not stat.S_ISREG(path.stat().st_mode):
            raise PrunedropError(f"{where} is not a regular file; give a file")
        if size > limit:
            raise PrunedropError(f"{where} is {size:,} bytes, more than the {limit:,} prunedrop reads; "
                                 "is it the right file?")
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise PrunedropError(f"cannot read {where}: {e.strerror or e}") from None
    if len(raw) > limit:
        raise PrunedropError(f"{where} is more than the {limit:,} bytes prunedrop reads; is it the right file?")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PrunedropError(f"{where} is not UTF-8 text; is it the right file?") from None


def load_json_file(path: str | os.PathLike[str], *, where: str, advice: str,
                   limit: int = MAX_CONFIG_BYTES) -> Any:
    """Parse a JSON file of bounded size and nesting; ``advice`` ends the error for a malformed file."""
    import json

    text = _read_bounded(Path(path), where, limit)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise PrunedropError(f"{where} is corrupt, not valid JSON ({e.msg} at line {e.lineno}); {advice}") from None
    except RecursionError:
        raise PrunedropError(f"{where} is nested too deeply to be read; {advice}") from None
    check_nesting(value, where)
    return value


#: bounds on an architecture.json (a LeNet has 10 modules, a ResNet-152 about 500, a 100-layer transformer a
#: few thousand): what a small hand-edited file can make :func:`prunedrop.storage.load_saved_model` build
MAX_MANIFEST_ENTRIES = 100_000
MAX_RECURRENT_LAYERS = 1024


def check_manifest_bounds(manifest: Any, where: str) -> None:
    """Refuse an architecture manifest that asks for more modules, nodes or stacked recurrent layers than
    any saved model has (building it would take minutes to hours even on the meta device)."""
    if not isinstance(manifest, dict):
        return
    for key in ("modules", "attributes", "graph", "state"):
        part = manifest.get(key)
        if isinstance(part, (dict, list)) and len(part) > MAX_MANIFEST_ENTRIES:
            raise PrunedropError(f"{where} lists {len(part):,} {key}, more than the {MAX_MANIFEST_ENTRIES:,} "
                                 "prunedrop builds; it is damaged or not written by save_model")
    modules = manifest.get("modules")
    for name, spec in (modules.items() if isinstance(modules, dict) else ()):
        args = spec.get("args") if isinstance(spec, dict) else None
        layers = args.get("num_layers") if isinstance(args, dict) else None
        if isinstance(layers, int) and not isinstance(layers, bool) and not 0 < layers <= MAX_RECURRENT_LAYERS:
            raise PrunedropError(f"{where}: module {str(name)[:80]!r} has num_layers {layers}, outside 1 to "
                                 f"{MAX_RECURRENT_LAYERS}; it is damaged or not written by save_model")


def load_yaml_file(path: str | os.PathLike[str], *, where: str, limit: int = 1024 * 1024) -> Any:
    """``yaml.safe_load`` of a file of at most ``limit`` bytes, without aliases and with bounded nesting.

    An alias (``*name``) makes a few bytes stand for a whole structure, and nested aliases for an exponential
    one (the "billion laughs"): a recipe needs none, so they are refused.
    """
    import yaml

    text = _read_bounded(Path(path), where, limit)
    try:
        return yaml.load(text, Loader=_no_alias_loader())  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, RecursionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PrunedropError(f"{where} is not valid YAML: {first[:200]}") from None


@functools.cache
def _no_alias_loader() -> type:
    import yaml
    from yaml.events import AliasEvent, CollectionStartEvent

    class NoAliasLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None, None, f"aliases (*{event.anchor}) are not allowed in a recipe; write the value out",
                    event.start_mark)
            start = self.check_event(CollectionStartEvent)
            if start:
                self.depth += 1
                if self.depth > MAX_NESTING:
                    raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_NESTING} levels deep",
                                                      self.peek_event().start_mark)
            try:
                return super().compose_node(parent, index)
            finally:
                if start:
                    self.depth -= 1

    return NoAliasLoader



# ------------------------------------------------------------------------------------------ the machine


def check_temp_dir() -> None:
    """Refuse to start, in one line, where PyTorch would fail with a traceback for want of a temporary directory.

    ``import torch`` asks :func:`tempfile.gettempdir` for one (which tries ``TMPDIR``, ``TEMP``, ``TMP``, /tmp,
    /var/tmp, /usr/tmp and the current folder); its compiler (``torch._dynamo``, imported by the optimizers,
    DistributedDataParallel, torch.compile and the ONNX exporter) then creates its cache in
    ``TORCHINDUCTOR_CACHE_DIR``, by default ``<temporary directory>/torchinductor_<user>``. Called before torch
    is imported; it only probes (a folder it creates to test is removed at once).
    """
    import tempfile

    try:
        tmp = tempfile.gettempdir()
    except OSError:  # FileNotFoundError: "No usable temporary directory found in [...]"
        raise PrunedropError("no writable temporary directory (tried TMPDIR, TEMP, TMP, /tmp, /var/tmp, /usr/tmp and "
                             "the current folder); PyTorch needs one: set TMPDIR to a writable folder") from None
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    from_variable = cache is not None
    if cache is None:  # as torch._inductor.runtime.cache_dir_utils.default_cache_dir names it
        import getpass
        import re

        try:
            user = getpass.getuser()
        except (KeyError, ImportError, OSError):
            user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
        cache = os.path.join(tmp, "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))
    problem = _unwritable_folder(os.path.abspath(cache))
    if problem is not None:
        where = f"TORCHINDUCTOR_CACHE_DIR={cache}" if from_variable else cache
        advice = "TORCHINDUCTOR_CACHE_DIR" if from_variable else "TMPDIR (or TORCHINDUCTOR_CACHE_DIR)"
        raise PrunedropError(f"PyTorch's compiler cannot create its cache folder {where} ({problem}); set {advice} "
                             "to a writable folder")


def _unwritable_folder(path: str) -> str | None:
    """Why the folder ``path`` is missing and cannot be created (what torch does on import); None when it exists
    or can be made. An existing folder that is not writable is torch.compile's to report: ``compile: auto``
    then trains eagerly after a one-line warning."""
    import tempfile

    if os.path.isdir(path):
        return None
    existing = path
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing} is not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".prunedrop-probe-", dir=existing))
    except OSError as e:
        return f"cannot create a folder in {existing}: {e.strerror or describe(e)}"
    return None


# ------------------------------------------------------------------------------------------ models


def check_finite_weights(model: nn.Module, source: str) -> None:
    """Refuse a model whose parameters or floating-point buffers hold NaN or inf (training would fail later,
    after files were written). A buffer other than a normalisation's running statistics may hold ±inf: a causal
    attention mask registered as a buffer is −inf above its diagonal, and that model is sound."""
    import torch
    from torch.nn.modules.batchnorm import _NormBase

    stats = {f"{prefix}.{n}" if prefix else n for prefix, m in model.named_modules()
             if isinstance(m, _NormBase) for n in ("running_mean", "running_var")}
    bad = []
    for name, t in model.named_parameters():
        if t.is_floating_point() and not t.is_meta and not bool(torch.isfinite(t.detach()).all()):
            bad.append(name)
    for name, t in model.named_buffers():
        if t.is_floating_point() and not t.is_meta:
            finite = torch.isfinite(t.detach()) if name in stats else ~torch.isnan(t.detach())
            if not bool(finite.all()):
                bad.append(name)
    if bad:
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        raise PrunedropError(f"{source} has NaN or inf values in {len(bad)} tensor(s) ({shown}); "
                             "give a model with finite weights (the original training may have diverged)")


def check_deterministic(model: nn.Module, x: Any, first: Any = None) -> None:
    """Refuse a model whose eval-mode output is random (dropout forced on with ``F.dropout(x, p, training=True)``,
    noise drawn in ``forward``): accuracy, the budget's verdict and the ONNX parity of every file are measured on
    the model's outputs, and an original whose outputs change from call to call would fail the parity check with a
    misleading message. Two passes on the same inputs (``first``: the eval-mode output the caller already has, so
    that one more pass is run); the caller's random stream is left as it was."""
    import torch

    from .modes import kept

    with kept(model), torch.no_grad(), torch.random.fork_rng(devices=[]):
        model.eval()
        first = model(x) if first is None else first
        second = model(x)
    if not (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)) or first.shape != second.shape \
            or not first.is_floating_point():
        return
    scale = float(first.detach().abs().nan_to_num(0.0, 0.0, 0.0).max()) if first.numel() else 0.0
    if torch.allclose(first, second, rtol=1e-4, atol=1e-5 * max(scale, 1.0), equal_nan=True):
        return
    diff = float((first - second).abs().nan_to_num(0.0, 0.0, 0.0).max())
    raise PrunedropError(
        f"the model's output in eval mode is random: two passes on the same inputs differ by up to {diff:.3g} "
        f"(largest output {scale:.3g}); prunedrop measures accuracy, the budget and ONNX parity on a deterministic "
        "model: let dropout follow the module's mode (F.dropout(x, p, self.training) or nn.Dropout) and draw no "
        "noise in forward when not training")


def check_model_structure(model: nn.Module, source: str) -> None:
    """The checks of a model's make-up that neither compress's pre-run checks (the CLI, before any file) nor the
    pipeline (the Python API) may skip: no TorchScript submodules (:func:`check_no_torchscript`), no BatchNorm
    without running statistics (:func:`check_batchnorm_statistics`). One place, so that the two lists cannot drift
    (the CLI listed only the second; a scripted block reaches it only through ``--arch``, which refuses it at load)."""
    check_no_torchscript(model, source)
    check_batchnorm_statistics(model, source)


def check_batchnorm_statistics(model: nn.Module, source: str) -> None:
    """Refuse a model with a BatchNorm that keeps no running statistics (``track_running_stats=False``): in eval
    mode it normalises each batch by the batch's own statistics, so a sample's output depends on the other samples
    of its batch (the accuracy at one batch size is not the model's at another), and the ONNX export cannot hold it
    (it failed with "batch_size and channel_size must be non-None" after the run had started)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    found = [name or "the model" for name, m in model.named_modules()
             if isinstance(m, _BatchNorm) and (not m.track_running_stats or m.running_mean is None)]
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise PrunedropError(
            f"{source} has BatchNorm layers without running statistics ({shown}, track_running_stats=False): in "
            "eval mode they normalise each batch by its own statistics, so a sample's output depends on the rest of "
            "its batch and the ONNX file cannot hold them; train the model with running statistics (the default), "
            "or use GroupNorm or LayerNorm, which normalise each sample alone")


def check_no_torchscript(model: nn.Module, source: str) -> None:
    """Refuse a model that holds TorchScript submodules (``torch.jit.script(block)`` inside a plain module): their
    layers are compiled, so they can be neither converted nor traced for the ONNX file (the export failed with
    "Tried to trace ... but it is not part of the active trace")."""
    import torch

    scripted = [name for name, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)]
    # the outermost scripted modules only: their own submodules are scripted with them
    outer = [n for n in scripted if not any(o != n and (o == "" or n.startswith(o + ".")) for o in scripted)]
    if outer:
        shown = ", ".join(n or "the model" for n in outer[:3]) + (", ..." if len(outer) > 3 else "")
        raise PrunedropError(f"{source} holds TorchScript modules ({shown}): their layers are compiled and can be "
                             "neither converted nor exported; build them as plain modules (without "
                             "torch.jit.script) and script the compressed model afterwards if you need TorchScript")


def check_materialized(model: nn.Module, source: str) -> None:
    """Refuse a model whose tensors live on the ``meta`` device (shapes without values): weights cannot be
    loaded into it."""
    meta = [name for name, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if meta:
        raise PrunedropError(f"{source} built the model on the meta device ({len(meta)} tensor(s) without values, "
                             f"e.g. {meta[0]}); build it on the CPU")


#: the entries of a checkpoint of :func:`prunedrop.train.finetune`, and the type of each
CHECKPOINT_KEYS: dict[str, type | tuple[type, ...]] = {
    "phase": str, "epoch": int, "batch": int, "step": int, "model": dict, "optimizer": dict, "scheduler": dict,
    "rng": dict, "history": list,
}


def check_checkpoint(state: dict[str, Any], path: str | os.PathLike[str], require: Iterable[str] = ()) -> None:
    """Refuse a checkpoint that lacks an entry of ``require`` or has a mistyped entry (one edited by hand, or
    written by another tool), before any of it is used."""
    name = Path(path).name
    missing = [k for k in require if k not in state]
    if missing:
        raise PrunedropError(f"checkpoint {name} lacks {', '.join(missing)}: it was not written by prunedrop or was "
                             "edited; start afresh without --resume, or with another -o")
    for key, kind in CHECKPOINT_KEYS.items():
        if key not in state:
            continue
        value = state[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise PrunedropError(f"checkpoint {name} has a malformed {key!r} ({type(value).__name__}): it was edited "
                                 "or damaged; start afresh without --resume, or with another -o")
    optimizer = state.get("optimizer", {})
    if not isinstance(optimizer.get("state", {}), dict) or not isinstance(optimizer.get("param_groups", []), list):
        raise PrunedropError(f"checkpoint {name} has a malformed optimizer state: it was edited or damaged; start "
                             "afresh without --resume, or with another -o")


#: the most input values one latency batch may hold (1 GiB of float32)
MAX_LATENCY_BATCH_VALUES = 2**28


def check_latency_batches(batch_sizes: Iterable[int], input_shape: Iterable[int], runs: int) -> None:
    """Refuse, before training, latency batches whose inputs would not fit in memory."""
    import math

    if not runs:
        return
    per_sample = math.prod(int(d) for d in input_shape)
    biggest = max(batch_sizes, default=1)
    if biggest * per_sample > MAX_LATENCY_BATCH_VALUES:
        raise PrunedropError(f"recipe key 'latency_batch_sizes': a batch of {biggest:,} inputs of "
                             f"{per_sample:,} values is more than the {MAX_LATENCY_BATCH_VALUES:,} prunedrop times; "
                             "use smaller batch sizes")


def check_loss_targets(loss: str, data: Any, num_outputs: int, output_shape: tuple[int, ...] | None = None) -> None:
    """Refuse, before training, ``loss: mse`` on data whose targets are not float vectors of the model's output
    size (class labels, another width); training would fail deep inside the loss after files were written.
    The first sample of each split is looked at: a target per sample is a number (a model with one output), a
    vector of ``num_outputs`` values, or, for a model whose output per sample is ``output_shape`` = (k, *S) (a value
    per position: a depth map, a denoised image), a tensor of that shape (or (*S,) where k is 1)."""
    if loss != "mse":
        return
    import torch
    from torch.utils.data import DataLoader

    shape = tuple(output_shape) if output_shape is not None else (num_outputs,)
    fits = {shape}  # and, for one output (per position), the targets without that axis of 1
    if len(shape) <= 1 and num_outputs == 1:
        fits |= {(), (1,)}
    elif len(shape) > 1 and shape[0] == 1:
        fits.add(shape[1:])
    for split in ("train", "val", "test"):
        part = getattr(data, split, None)
        if part is None:
            continue
        dataset = part.dataset if isinstance(part, DataLoader) else part
        try:
            target = torch.as_tensor(dataset[0][1])
        except Exception:  # an iterable dataset, or items of another form: the data checks speak for these
            continue
        if not target.is_floating_point():
            raise PrunedropError(f"recipe key 'loss' = mse needs float targets of {num_outputs} value(s) per "
                                 f"sample, the model's outputs; the data's targets are {target.dtype} of shape "
                                 f"{tuple(target.shape)} (class labels?): use loss: cross_entropy for class labels")
        if tuple(target.shape) in fits:
            continue
        if len(shape) > 1:
            raise PrunedropError(f"loss mse: the model's outputs are shaped (N, {', '.join(map(str, shape))}) "
                                 f"but the {split} targets have shape {tuple(target.shape)} per sample; give "
                                 "targets of the model's output shape")
        per_sample = "a single number" if target.dim() == 0 else f"shape {tuple(target.shape)}"
        raise PrunedropError(f"loss mse: the model outputs {num_outputs} value(s) per sample (shape (N, "
                             f"{num_outputs})) but the {split} targets have {per_sample} per sample; give "
                             f"targets shaped (N, {num_outputs})" + (" or (N,)" if num_outputs == 1 else "")
                             + " or change the model's last layer to output "
                             + (f"{target.numel()} value(s)" if target.dim() <= 1 else "one value per target"))
