"""A run folder: the names of its files, its ``run.json``, its identity and ownership.

- :class:`RunFolder`: every file name of a run folder (checkpoints, ONNX files, the PyTorch result, report, plots,
  ``run.json``); :func:`prepare_output_dir`, :func:`start_run`, :func:`write_run_info` and :func:`read_run_info`
  set a folder up and read ``run.json`` back.
- :func:`run_identity` / :func:`check_identity`: content hashes of the model file and a fingerprint of the
  loaded data, recorded in ``run.json``; ``--resume`` (and ``export``) refuse inputs that differ from the run's,
  before any file is written.
- :class:`RunFolderLock`: one ``compress`` at a time per output folder (an advisory ``flock`` on the folder).
- :func:`export_protected_files`: the files a run depends on, which ``export -o`` must never replace;
  :func:`run_inputs` and :func:`check_inputs_kept`: no file a run writes or ``--overwrite`` clears may be one of
  its inputs (model, recipe, data, the --arch and ``python:`` data modules).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import PrunedropError

IDENTITY_KEY = "identity"

#: files of a run folder (the PyTorch result's two names are :mod:`prunedrop.storage`'s, whose ``save_model`` writes them)
ORIGINAL_ONNX = "original.onnx"
MODEL_ONNX = "model.onnx"
QUANTIZED_ONNX = "model-int8.onnx"
VARIATIONAL_CHECKPOINT = "checkpoint-variational.pt"
MASKED_CHECKPOINT = "checkpoint-masked.pt"
RUN_INFO = "run.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS = "plots"


def _named(name: str, doc: str | None = None) -> property:
    """A property of :class:`RunFolder`: the file ``name`` in its folder."""
    return property(lambda self: self.path / name, doc=doc)


class RunFolder:
    """The output folder of one ``compress`` run, and the one place that names its files."""

    run_info = _named(RUN_INFO, "How the run was started: model file, --arch, data spec, recipe, identity.")
    variational_checkpoint = _named(VARIATIONAL_CHECKPOINT, "The variational fine-tuning's checkpoint: what "
                                    "``--resume`` continues and ``export`` re-thresholds.")
    masked_checkpoint = _named(MASKED_CHECKPOINT, "The noise-free fine-tuning's checkpoint.")
    original_onnx = _named(ORIGINAL_ONNX)
    model_onnx = _named(MODEL_ONNX)
    quantized_onnx = _named(QUANTIZED_ONNX)
    report_json = _named(REPORT_JSON)
    report_md = _named(REPORT_MD)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def create(self) -> RunFolder:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def probe_checkpoint(self, threshold: float) -> Path:
        """The noise-free fine-tuning of one probe of ``budget_after_finetune``."""
        return self.path / f"checkpoint-masked-t{threshold:g}.pt"

    @property
    def model_pt(self) -> Path:
        from .storage import WEIGHTS_FILE

        return self.path / WEIGHTS_FILE

    @property
    def architecture_json(self) -> Path:
        from .storage import ARCHITECTURE_FILE

        return self.path / ARCHITECTURE_FILE

    @staticmethod
    def plot(key: str) -> str:
        """A plot's path relative to the folder (as report.json records it)."""
        return f"{PLOTS}/{key}.png"

    def stale_files(self) -> list[Path]:
        """What an earlier run leaves that must not leak into a fresh one (``--overwrite``): its checkpoints, and
        its results too, so that a fresh run that stops early (a model the ONNX exporter cannot take) leaves no
        earlier run's report and model beside its own run.json."""
        return [self.variational_checkpoint, self.masked_checkpoint, self.quantized_onnx,
                *self.path.glob("checkpoint-masked-t*.pt"), self.report_json, self.report_md, self.model_onnx,
                self.model_pt, self.architecture_json, self.original_onnx, *(self.path / PLOTS).glob("*.png")]

    def written_files(self) -> list[Path]:
        """Every file of the folder that a run writes, replaces or (``--overwrite``) deletes: run.json and
        :meth:`stale_files`, with any .png in plots/ (whatever the letter case of its suffix)."""
        plots = self.path / PLOTS
        try:
            pngs = [p for p in plots.iterdir() if p.suffix.lower() == ".png"] if plots.is_dir() else []
        except OSError:
            pngs = []
        return list(dict.fromkeys([self.run_info, *self.stale_files(), *pngs]))

    def read_info(self) -> dict[str, Any]:
        """``run.json``, checked (:func:`check_run_info`)."""
        from .safety import load_json_file

        path = self.run_info
        if not path.is_file():
            raise PrunedropError(f"{self.path} is not a prunedrop run folder (no {RUN_INFO}); give the -o folder of "
                                 "`prunedrop compress`")
        info = load_json_file(path, where=str(path), advice="it is not a run.json that prunedrop wrote")
        if not isinstance(info, dict):
            raise PrunedropError(f"{path} is corrupt; it holds no JSON object")
        check_run_info(info, str(path))
        return info

    def write_info(self, info: Mapping[str, Any]) -> None:
        """Record how the run was started (model file, --arch, data spec, recipe) for resume and re-export."""
        import json

        from .atomic import atomic_write_text

        atomic_write_text(self.run_info, json.dumps(info, indent=2, sort_keys=True) + "\n")


def prepare_output_dir(out_dir: str | os.PathLike[str], *, overwrite: bool = False, resume: bool = False) -> Path:
    """Refuse to mix a new run into a folder that holds something else, unless asked to.

    Creates nothing: the folder is made when the first file is written, after every input has been
    loaded and checked, so that a mistake in the inputs leaves no trace.
    """
    folder = RunFolder(out_dir)
    out_dir = folder.path
    if out_dir.exists() and not out_dir.is_dir():
        raise PrunedropError(f"output path {out_dir} exists and is not a folder; choose another -o")
    if resume:
        if not folder.variational_checkpoint.exists():
            raise PrunedropError(f"--resume: {out_dir} holds no checkpoint ({VARIATIONAL_CHECKPOINT}); run without "
                                 "--resume")
        return out_dir
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise PrunedropError(f"output folder {out_dir} is not empty; pass --overwrite to replace its files, "
                             "--resume to continue an interrupted run, or choose another -o")
    _check_writable(out_dir)
    return out_dir


def start_run(out_dir: str | os.PathLike[str], info: dict[str, Any], identity: dict[str, Any], *,
              overwrite: bool = False, resume: bool = False, warn: Callable[[str], None] = print) -> None:
    """The first change a run makes to its folder, once every input has been loaded and checked.

    ``resume``: the inputs must be the interrupted run's (:func:`check_identity`: model file, data, --arch); a
    refusal changes nothing, and run.json is left as the run wrote it. Otherwise the stale checkpoints of an earlier
    run are deleted (with ``overwrite``) and run.json records ``info`` and ``identity``.
    """
    folder = RunFolder(out_dir)
    if resume:
        check_identity(folder.read_info(), {**identity, "arch": info.get("arch"),
                                            "trust_pickle": info.get("trust_pickle")},
                       action="--resume", warn=warn)
        return
    if overwrite:
        for path in folder.stale_files():
            path.unlink(missing_ok=True)  # a stale checkpoint must not leak into a fresh run
    folder.write_info({**info, IDENTITY_KEY: identity})


def _check_writable(out_dir: Path) -> None:
    """Fail before hours of training, not after: the folder (or its nearest existing parent) takes files."""
    import tempfile

    probe = out_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise PrunedropError(f"cannot create output folder {out_dir}: {probe} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise PrunedropError(f"output folder {out_dir} is not writable ({e.strerror}); choose another -o") from None


def write_run_info(out_dir: str | os.PathLike[str], info: dict[str, Any]) -> None:
    """Record how the run was started (model file, --arch, data spec, recipe) for resume and re-export."""
    RunFolder(out_dir).write_info(info)


def read_run_info(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """A run folder's ``run.json``, checked; a folder without one is no run folder (one clear line)."""
    return RunFolder(run_dir).read_info()
#: samples per split that go into the data fingerprint (evenly spaced, first and last included)
FINGERPRINT_SAMPLES = 16


# ------------------------------------------------------------------------------------------ identity


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of the model file; of a folder written by ``save_model``: of its architecture.json and model.pt; of a
    Hugging Face ``save_pretrained`` folder: of its files."""
    from .storage import ARCHITECTURE_FILE, WEIGHTS_FILE

    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        names = (ARCHITECTURE_FILE, WEIGHTS_FILE) if (path / ARCHITECTURE_FILE).is_file() else \
            sorted(p.name for p in path.iterdir() if p.is_file())
        for name in names:
            h.update(name.encode() + b"\0" + file_sha256(path / name).encode())
        return h.hexdigest()
    return file_sha256(path)


def _feed(h: Any, obj: Any) -> None:
    import numpy as np
    import torch

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for item in obj:
            _feed(h, item)
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=str):
            h.update(str(key).encode())
            _feed(h, obj[key])
    elif isinstance(obj, (bool, int, float, str, bytes, type(None))):
        h.update(repr(obj).encode())
    else:
        h.update(type(obj).__qualname__.encode())


def _split_sizes(data: Any) -> list[tuple[str, Any, int | None]]:
    """(split, dataset or None, its size or None when it has none) of each split of a DataBundle."""
    from torch.utils.data import DataLoader

    out = []
    for split in ("train", "val", "test"):
        part = getattr(data, split, None)
        dataset = part.dataset if isinstance(part, DataLoader) else part
        try:
            n = None if dataset is None else len(dataset)
        except TypeError:
            n = None
        out.append((split, dataset, n))
    return out


def data_sizes(data: Any) -> str:
    """A digest of each split's presence and size."""
    return hashlib.sha256(repr([(split, d is None, n) for split, d, n in _split_sizes(data)]).encode()).hexdigest()


def data_fingerprint(data: Any) -> str | None:
    """A cheap fingerprint of a :class:`~prunedrop.data.DataBundle`: each split's size and
    :data:`FINGERPRINT_SAMPLES` evenly spaced samples (the first and the last among them).

    It tells a different data set (or a different split, limit or order of the same one) from the run's,
    not every change of every sample. ``None`` where reading the same samples twice gives different values
    (a python: data set with random augmentation): such data is identified by its sizes alone. The random
    generators are left as they were.
    """
    import random

    import numpy as np
    import torch

    digests = []
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            for _ in range(2):
                h = hashlib.sha256()
                for split, dataset, n in _split_sizes(data):
                    h.update(f"{split}{dataset is None}{n}".encode())
                    if not n or not hasattr(dataset, "__getitem__"):
                        continue
                    count = min(n, FINGERPRINT_SAMPLES)
                    for i in sorted({round(k * (n - 1) / max(count - 1, 1)) for k in range(count)}):
                        _feed(h, dataset[i])
                digests.append(h.hexdigest())
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return digests[0] if digests[0] == digests[1] else None


def run_identity(model_path: str | os.PathLike[str], data: Any) -> dict[str, str | None]:
    """What ``run.json`` records of a run's inputs, to be compared by :func:`check_identity`."""
    return {"model_sha256": model_sha256(model_path), "data_sizes": data_sizes(data),
            "data_fingerprint": data_fingerprint(data)}


_WHAT = {"model_sha256": "the model file's content", "data_sizes": "the data's splits or sizes",
         "data_fingerprint": "the data's samples"}


def check_identity(info: Mapping[str, Any], current: Mapping[str, Any], *, action: str,
                   warn: Callable[[str], None],
                   advice: str = "give the run's inputs, or start a new run with another -o or --overwrite") -> None:
    """Refuse ``action`` (e.g. ``--resume``) when ``current`` inputs differ from those ``info`` (run.json) records.

    ``current`` holds the identity keys and the loading settings (``arch``, ``trust_pickle``). A run.json from an
    older prunedrop has no hashes: the action goes on, with a one-line warning.
    """
    changed = []
    if "arch" in current and info.get("arch") != current["arch"]:
        changed.append(f"--arch ({info.get('arch')!r} → {current['arch']!r})")
    if "trust_pickle" in current and bool(info.get("trust_pickle")) != bool(current.get("trust_pickle")):
        changed.append("--trust-pickle")
    recorded = info.get(IDENTITY_KEY)
    if isinstance(recorded, Mapping):
        # a fingerprint of None (data that reads differently each time) is not compared
        changed += [_WHAT[k] for k in _WHAT if k in current and recorded.get(k) is not None
                    and current[k] is not None and recorded.get(k) != current[k]]
    elif IDENTITY_KEY not in info:
        warn(f"warning: this run's run.json predates identity checks; {action} cannot check that the model and "
             "data are the run's")
    else:
        raise PrunedropError(f"run.json has a malformed {IDENTITY_KEY!r} entry; {action} cannot trust this run")
    if changed:
        raise PrunedropError(f"{action}: {', '.join(changed)} differ(s) from the run's; nothing was changed "
                             f"({advice})")


#: what run.json holds (written by the CLI's compress), and the types each entry may have
RUN_INFO_TYPES: dict[str, tuple[type, ...]] = {
    "model_path": (str,), "arch": (str, type(None)), "trust_pickle": (bool,), "data": (str,),
    "data_dir": (str, type(None)), "recipe": (dict,), IDENTITY_KEY: (dict,), "arch_kwargs": (dict, type(None)),
}


#: what every run.json written by ``compress`` holds, and what ``export`` and ``--resume`` cannot do without: the
#: model file, the data spec and the recipe (a run.json without the recipe would be read with today's defaults)
RUN_INFO_REQUIRED = ("model_path", "data", "recipe")


def check_run_info(info: Mapping[str, Any], where: str) -> None:
    """Refuse a run.json whose entries have the wrong types (edited by hand or damaged), or that lacks one of
    :data:`RUN_INFO_REQUIRED`, before anything uses them; other entries that are missing are each user's to report."""
    missing = [key for key in RUN_INFO_REQUIRED if key not in info]
    if missing:
        raise PrunedropError(f"{where} has no {', '.join(repr(k) for k in missing)}; it was edited or damaged (or "
                             "not written by `prunedrop compress`): run `prunedrop compress` again with another -o")
    for key, kinds in RUN_INFO_TYPES.items():
        if key in info and not isinstance(info[key], kinds):
            raise PrunedropError(f"{where} has a malformed {key!r} ({type(info[key]).__name__}); it was edited or "
                                 "damaged: run `prunedrop compress` again with another -o")
    for key in ("model_path", "data"):
        if key in info and (not info[key].strip() or "\x00" in info[key]):
            raise PrunedropError(f"{where} has an empty or malformed {key!r}; it was edited or damaged: run "
                                 "`prunedrop compress` again with another -o")


# ------------------------------------------------------------------------------------------ lock


class RunFolderLock:
    """An exclusive, non-blocking advisory lock on a run folder (``flock`` on the folder itself, so that no
    file is added to it), held until :meth:`release` or the process ends.

    A second ``compress`` into a folder that a running one holds fails at once instead of both writing
    into it. Where ``fcntl`` is missing (Windows), nothing is locked.
    """

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.out_dir = Path(out_dir)
        self._fd: int | None = None

    def acquire(self) -> RunFolderLock:
        if self._fd is not None:
            return self
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.out_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as e:
            raise PrunedropError(f"cannot create or open output folder {self.out_dir} ({e.strerror}); choose "
                                 "another -o") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise PrunedropError(f"output folder {self.out_dir} is in use by another prunedrop run; wait for it "
                                 "to finish or choose another -o") from None
        self._fd = fd
        return self

    def acquire_if_exists(self) -> RunFolderLock:
        """Lock now when the folder exists (a second run fails before loading anything); else later."""
        return self.acquire() if self.out_dir.is_dir() else self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------------------------------ export targets


def _files_in(path: Path, depth: int = 2) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir() or depth == 0:
        return []
    out: list[Path] = []
    try:
        for child in path.iterdir():
            if child.is_file():
                out.append(child)
            elif child.is_dir() and not child.is_symlink():
                out += _files_in(child, depth - 1)
    except OSError:
        pass
    return out


def export_protected_files(run_dir: str | os.PathLike[str], info: Mapping[str, Any]) -> list[Path]:
    """The files ``export -o`` must not replace: everything in the run folder (checkpoints, run.json, reports,
    model files, plots), and every input the run names (:func:`run_inputs`): the original model (file, or
    save_model folder), the data's files, the --arch module's and a ``python:`` data module's source files."""
    files = _files_in(Path(run_dir))
    for _, path, kind in run_inputs_of(info):
        files += _files_in(path, depth=_INPUT_DEPTH.get(kind, 1))
    return files


# ------------------------------------------------------------------------------------------ inputs kept

#: how deep the files of an input folder lie (an image folder: [train/]class/image)
_INPUT_DEPTH = {"imagefolder": 3, "hf": 2}


def run_inputs(model_path: str | os.PathLike[str] | None, *, arch: str | None, data_spec: str | None,
               data_dir: str | os.PathLike[str] | None = None,
               recipe_path: str | os.PathLike[str] | None = None) -> list[tuple[str, Path, str]]:
    """(what, path, kind) of every file or folder a run reads: the model (file or save_model folder), the recipe,
    the --arch module's source files, the data's file or folder (``npz:``, ``csv:``, ``idx:``, ``imagefolder:``,
    ``hf:``, ``--data-dir``) and a ``python:`` data module's files. ``kind`` is the data spec's kind for data, else
    ``model``, ``recipe`` or ``module``. A malformed spec contributes nothing (its loader reports it)."""
    from .data.spec import parse_spec
    from .safety import module_files

    out: list[tuple[str, Path, str]] = []
    if model_path is not None:
        out.append(("the model", Path(model_path).expanduser(), "model"))
    if recipe_path is not None:
        out.append(("the recipe", Path(recipe_path).expanduser(), "recipe"))
    if isinstance(arch, str) and ":" in arch and arch.partition(":")[0].strip() != "timm":
        out += [("the --arch module", f, "module") for f in module_files(arch.partition(":")[0].strip())]
    if isinstance(data_spec, str):
        try:
            kind, arg = parse_spec(data_spec)
        except PrunedropError:
            kind, arg = "", ""
        if kind == "python":
            out += [("the data module", f, "module") for f in module_files(arg.partition(":")[0])]
        elif arg:
            out.append(("the data", Path(arg).expanduser(), kind))
    if data_dir is not None:
        out.append(("the --data-dir", Path(data_dir).expanduser(), "idx"))
    return out


def run_inputs_of(info: Mapping[str, Any]) -> list[tuple[str, Path, str]]:
    """:func:`run_inputs` of the run that ``info`` (its run.json) records (the recipe file is not recorded)."""
    def text(key: str) -> str | None:
        value = info.get(key)
        return value if isinstance(value, str) and value.strip() and "\x00" not in value else None

    return run_inputs(text("model_path"), arch=text("arch"), data_spec=text("data"), data_dir=text("data_dir"))


def check_inputs_kept(out_dir: str | os.PathLike[str], inputs: list[tuple[str, Path, str]], *,
                      written: list[Path] | None = None, option: str = "-o") -> None:
    """Refuse, before anything is written, a run folder whose writing would replace or delete one of the run's
    ``inputs`` (:func:`run_inputs`): a file of the folder that the run writes or ``--overwrite`` clears
    (``written``, by default :meth:`RunFolder.written_files`) that is an input file, or lies in an input folder;
    and a folder that is an input folder itself, or lies inside an image folder (it would become a class).
    Paths are compared by device and inode, so that links, ``..`` and letter case hide nothing."""
    from .safety import lies_within, same_entry

    folder = RunFolder(out_dir)
    existing = [p for p in (folder.written_files() if written is None else written) if os.path.lexists(p)]
    for what, path, kind in inputs:
        if not os.path.lexists(path):
            continue
        if path.is_dir():
            inside = "" if same_entry(folder.path, path) else "inside " if (
                kind == "imagefolder" and lies_within(folder.path, path)) else None
            if inside is not None:
                raise PrunedropError(f"{option} {folder.path} is {inside}{what} folder {path}: the run's files would "
                                     f"mix into it; choose another {option}")
            hit = next((p for p in existing if lies_within(p, path)), None)
        else:
            hit = next((p for p in existing if same_entry(p, path)), None)
        if hit is not None:
            advice = (f"choose another {option}, or move the input out of the folder" if option == "-o" else
                      "move the input out of the run folder")
            raise PrunedropError(f"{option} {folder.path}: the run would replace {what} {path} (it writes "
                                 f"{hit.relative_to(folder.path)} there); {advice}")
