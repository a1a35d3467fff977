"""Hostile and careless inputs, per command: what a folder, a wrong resume or a second run can do (issue 18).

Each class of case is tried against every command it reaches (``compress``, ``export``, ``inspect``, ``report``,
``recipes``); every refusal must be a one-line error (status 1, or 2 for a usage error) that leaves the user's
files as they were.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from prunedrop.cli import cli
from prunedrop.errors import PrunedropError
from prunedrop.testing import write_tiny_project

FAKE_LIBRARIES = ("onnxruntime", "sklearn", "onnx", "yaml", "matplotlib")


def _one_line_error(result, code: int = 1, *needles: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    if code == 1:
        assert len(result.output.strip().splitlines()) == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's folder that is the current folder but not on sys.path (as for the installed `prunedrop`)."""
    folder = tmp_path / "work"
    folder.mkdir()
    write_tiny_project(folder, n=60, n_val=20)
    monkeypatch.chdir(folder)
    for entry in ("", "."):
        while entry in sys.path:
            monkeypatch.setattr(sys, "path", [p for p in sys.path if p != entry])
    return folder


# ------------------------------------------------------------------------------- 1. imports from the folder


def _plant_fakes(folder: Path) -> None:
    for name in FAKE_LIBRARIES:
        (folder / f"{name}.py").write_text(
            f"open({str(folder / ('HIJACKED-' + name))!r}, 'w').close()\nraise SystemExit('fake {name} ran')\n")


def test_named_module_comes_from_the_folder_and_nothing_else(tmp_path: Path) -> None:
    """End to end in a fresh interpreter, launched like the `prunedrop` script (the current folder is not on
    sys.path): every command in turn, with --arch and python: data naming the user's modules, beside fakes of the
    libraries prunedrop imports. No fake runs, and the libraries imported afterwards are the installed ones."""
    folder = tmp_path / "work"
    folder.mkdir()
    write_tiny_project(folder, n=60, n_val=20, recipe=FAST_RECIPE)
    (folder / "userdata.py").write_text(textwrap.dedent("""\
        import torch
        from torch.utils.data import TensorDataset

        def load():
            g = torch.Generator().manual_seed(0)
            x, y = torch.rand(40, 1, 4, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
            return TensorDataset(x[:30], y[:30]), TensorDataset(x[30:], y[30:])
        """))
    _plant_fakes(folder)
    commands = [
        ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "python:userdata:load", "--recipe",
         "recipe.yaml", "-q", "-o", "out"],
        ["export", "out", "-o", "again.onnx"],
        ["report", "out"],
        ["inspect", "model.pt", "--arch", "tinyarch:build", "--data", "python:userdata:load"],
        ["recipes", "--keys"],
    ]
    launcher = tmp_path / "bin" / "run.py"
    launcher.parent.mkdir()
    launcher.write_text(textwrap.dedent(f"""\
        import importlib
        from prunedrop.cli import cli
        for args in {commands!r}:
            cli.main(args, prog_name="prunedrop", standalone_mode=False)
            print("COMMAND-OK", args[0])
        for name in {FAKE_LIBRARIES!r}:
            try:
                module = importlib.import_module(name)
            except ImportError:
                continue
            assert not module.__file__.startswith({str(folder)!r}), module.__file__
        print("LIBRARIES-OK")
        """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p not in ("", "."))
    proc = subprocess.run([sys.executable, str(launcher)], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("COMMAND-OK") == len(commands) and "LIBRARIES-OK" in proc.stdout
    assert not list(folder.glob("HIJACKED-*"))


def test_importing_the_user_module_leaves_sys_path_alone(user_folder: Path) -> None:
    before = list(sys.path)
    result = CliRunner().invoke(cli, ["inspect", "model.pt", "--arch", "tinyarch:build", "--input-shape", "1,4,4"])
    assert result.exit_code == 0, result.output
    assert sys.path == before
    sys.modules.pop("tinyarch", None)


def test_a_package_in_the_folder_imports_its_own_submodules(user_folder: Path) -> None:
    (user_folder / "mypkg").mkdir()
    (user_folder / "mypkg" / "__init__.py").write_text("")
    (user_folder / "mypkg" / "nets.py").write_text("from .parts import build\n")
    (user_folder / "mypkg" / "parts.py").write_text((user_folder / "tinyarch.py").read_text())
    try:
        result = CliRunner().invoke(cli, ["inspect", "model.pt", "--arch", "mypkg.nets:build", "--input-shape",
                                          "1,4,4"])
        assert result.exit_code == 0, result.output
    finally:
        for name in ("mypkg", "mypkg.nets", "mypkg.parts"):
            sys.modules.pop(name, None)


BAD_MODULES = {
    "abs-path": ("/etc/passwd:x", "not a module name"),
    "dotdot": ("..tinyarch:build", "not a module name"),
    "file-name": ("tinyarch.py:build", "cannot import"),
    "missing": ("no_such_module_xyz:build", "neither installed"),
    "raises": ("raising_mod:build", "ZeroDivisionError"),
    "exits": ("exiting_mod:build", "SystemExit"),
    "syntax": ("broken_mod:build", "SyntaxError"),
    "factory-raises": ("tinyarch:explode", "failed when called"),
    "not-callable": ("tinyarch:VALUE", "not callable"),
}


def _plant_bad_modules(folder: Path) -> None:
    (folder / "raising_mod.py").write_text("1 / 0\n")
    (folder / "exiting_mod.py").write_text("raise SystemExit(3)\n")
    (folder / "broken_mod.py").write_text("def (:\n")
    with open(folder / "tinyarch.py", "a") as f:
        f.write("\nVALUE = 3\n\ndef explode():\n    raise RuntimeError('boom')\n")


@pytest.mark.parametrize("command", ["compress", "inspect"])
@pytest.mark.parametrize("case", sorted(BAD_MODULES))
def test_a_bad_arch_module_is_a_one_line_error(user_folder: Path, command: str, case: str) -> None:
    _plant_bad_modules(user_folder)
    spec, needle = BAD_MODULES[case]
    args = (["compress", "model.pt", "--arch", spec, "--data", "npz:data.npz", "-o", "out"] if command == "compress"
            else ["inspect", "model.pt", "--arch", spec, "--input-shape", "1,4,4"])
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        for name in ("tinyarch", "raising_mod", "exiting_mod", "broken_mod"):
            sys.modules.pop(name, None)
    _one_line_error(result, 1, needle)
    assert not (user_folder / "out").exists()


@pytest.mark.parametrize("case", ["raises", "exits", "syntax", "missing"])
def test_a_bad_python_data_module_is_a_one_line_error(user_folder: Path, case: str) -> None:
    _plant_bad_modules(user_folder)
    module = BAD_MODULES[case][0].split(":")[0]
    try:
        result = CliRunner().invoke(cli, ["inspect", "model.pt", "--arch", "tinyarch:build", "--data",
                                          f"python:{module}:load"])
    finally:
        for name in ("tinyarch", "raising_mod", "exiting_mod", "broken_mod"):
            sys.modules.pop(name, None)
    _one_line_error(result, 1, BAD_MODULES[case][1])


DATA_HOOKS = {  # python:hooks:NAME, a module that imports but whose function fails
    "raises": ("boom", "RuntimeError: boom"),
    "exits": ("exits", "SystemExit: 4"),
    "returns-garbage": ("garbage", "returned a int"),
    "no-such-function": ("nope", "has no attribute"),
}


@pytest.mark.parametrize("command", ["compress", "inspect"])
@pytest.mark.parametrize("case", sorted(DATA_HOOKS))
def test_a_failing_python_data_function_is_a_one_line_error(user_folder: Path, command: str, case: str) -> None:
    (user_folder / "hooks.py").write_text("def boom():\n    raise RuntimeError('boom')\n\n\ndef exits():\n"
                                          "    raise SystemExit(4)\n\n\ndef garbage():\n    return 42\n")
    function, needle = DATA_HOOKS[case]
    args = ["compress", "model.pt", "--arch", "tinyarch:build", "--data", f"python:hooks:{function}", "-o", "out"] \
        if command == "compress" else ["inspect", "model.pt", "--arch", "tinyarch:build", "--data",
                                       f"python:hooks:{function}"]
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        for name in ("tinyarch", "hooks"):
            sys.modules.pop(name, None)
    _one_line_error(result, 1, needle)
    assert not (user_folder / "out").exists()


def test_import_user_module_refuses_non_names() -> None:
    from prunedrop.safety import import_user_module

    for name in ("", "a..b", "a/b", "1abc", "a.b-c", "\x00"):
        with pytest.raises(PrunedropError, match="not a module name"):
            import_user_module(name, what="--arch")


# ------------------------------------------------------------------------------- a finished run to attack

FAST_RECIPE = """\
epochs: 2
batch_size: 16
eval_batch_size: 64
lr: 0.003
noise_lr: 0.3
lr_schedule: constant
kl_weight: 20.0
kl_warmup_epochs: 1
finetune_epochs: 0
device: cpu
latency_runs: 0
plots: false
mc_samples: 0
"""


def _compress_args(*extra: str) -> list[str]:
    return ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz", "--recipe", "recipe.yaml",
            "-q", *extra]


def _snapshot(folder: Path) -> dict[str, tuple[str, bytes]]:
    """Every entry under ``folder``: its kind and, for a file, its bytes."""
    out = {}
    for p in sorted(folder.rglob("*")):
        kind = "link" if p.is_symlink() else "file" if p.is_file() else "dir" if p.is_dir() else "other"
        out[str(p.relative_to(folder))] = (kind, p.read_bytes() if kind == "file" else b"")
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    write_tiny_project(folder, n=100, n_val=20, recipe=FAST_RECIPE)
    (folder / "bad.yaml").write_text("treshold: 2\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        mp.chdir(folder)
        result = CliRunner().invoke(cli, _compress_args("-o", "out"))
    assert result.exit_code == 0, result.output
    return folder


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the finished run's project folder, as the current folder."""
    import shutil

    folder = tmp_path / "project"
    shutil.copytree(finished_run, folder, symlinks=True)
    info = json.loads((folder / "out" / "run.json").read_text())  # the run moved with its model and data
    info["model_path"] = str(folder / "model.pt")
    (folder / "out" / "run.json").write_text(json.dumps(info))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.chdir(folder)
    return folder


# ------------------------------------------------------------------------------- 2. export -o targets


def _export_target(folder: Path, case: str) -> str:
    """Make the hostile -o target of ``case`` in ``folder``; return the path to give."""
    out = folder / "out"
    if case == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(folder / "null", 0o666 | __import__("stat").S_IFCHR, os.makedev(1, 3))
        return "null"
    if case == "fifo":
        os.mkfifo(folder / "pipe")
        return "pipe"
    if case == "link-to-folder":
        (folder / "sub").mkdir()
        os.symlink(folder / "sub", folder / "sublink")
        return "sublink"
    if case == "link-to-checkpoint":
        os.symlink(out / "checkpoint-variational.pt", folder / "ck.onnx")
        return "ck.onnx"
    if case == "hardlink-to-model":
        os.link(folder / "model.pt", folder / "hard.onnx")
        return "hard.onnx"
    if case == "existing-file":
        (folder / "mine.onnx").write_text("my own file")
        return "mine.onnx"
    if case == "folder":
        (folder / "afolder").mkdir()
        return "afolder"
    if case == "dangling-link":
        os.symlink(folder / "nowhere" / "x", folder / "dangling.onnx")
        return "dangling.onnx"
    if case == "empty-name":
        return ""
    return {"checkpoint": "out/checkpoint-variational.pt", "run-json": "out/run.json",
            "report-json": "out/report.json", "report-md": "out/report.md", "model-onnx": "out/model.onnx",
            "original-onnx": "out/original.onnx", "original-model": "model.pt", "data": "data.npz",
            "recipe": "recipe.yaml", "model-pt": "out/model.pt", "architecture": "out/architecture.json",
            "dotted-checkpoint": "out/../out/./checkpoint-variational.pt",
            "absolute-run-json": str(out / "run.json")}[case]


EXPORT_TARGETS = {
    "device": (1, "device"), "fifo": (1, "FIFO"), "link-to-folder": (2, "directory"),
    "link-to-checkpoint": (1, "the run needs"), "hardlink-to-model": (1, "the run needs"),
    "existing-file": (1, "--overwrite"), "folder": (2, "directory"), "dangling-link": (1, "dangling"),
    "empty-name": (1, "does not name a file"),
    "checkpoint": (1, "the run needs"), "run-json": (1, "the run needs"), "report-json": (1, "the run needs"),
    "report-md": (1, "the run needs"), "model-onnx": (1, "the run needs"), "original-onnx": (1, "the run needs"),
    "original-model": (1, "the run needs"), "data": (1, "the run needs"), "model-pt": (1, "the run needs"),
    "architecture": (1, "the run needs"), "dotted-checkpoint": (1, "the run needs"),
    "absolute-run-json": (1, "the run needs"), "recipe": (1, "--overwrite"),
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
@pytest.mark.parametrize("case", sorted(EXPORT_TARGETS))
def test_export_refuses_hostile_targets(run_copy: Path, case: str, overwrite: bool) -> None:
    target = _export_target(run_copy, case)
    code, needle = EXPORT_TARGETS[case]
    if overwrite and case in ("existing-file", "recipe"):
        pytest.skip("a regular file of the user's own may be replaced with --overwrite (tested below)")
    before = _snapshot(run_copy)
    result = CliRunner().invoke(cli, ["export", "out", "-o", target, *(["--overwrite"] if overwrite else [])])
    _one_line_error(result, code, needle)
    assert _snapshot(run_copy) == before


def test_export_overwrite_replaces_a_regular_file(run_copy: Path) -> None:
    (run_copy / "mine.onnx").write_text("old")
    result = CliRunner().invoke(cli, ["export", "out", "-o", "mine.onnx", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (run_copy / "mine.onnx").read_bytes()[:4] != b"old"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "+inf"])
def test_export_threshold_must_be_finite(run_copy: Path, value: str) -> None:
    before = _snapshot(run_copy)
    result = CliRunner().invoke(cli, ["export", "out", "--threshold", value, "-o", "t.onnx"])
    _one_line_error(result, 2, "finite")
    assert _snapshot(run_copy) == before


@pytest.mark.parametrize("value", ["-1000", "-1e308", "-10.5"])
def test_export_threshold_that_prunes_everything(run_copy: Path, value: str) -> None:
    before = _snapshot(run_copy)
    result = CliRunner().invoke(cli, ["export", "out", "--threshold", value, "-o", "t.onnx"])
    _one_line_error(result, 1, "prunes every")
    assert _snapshot(run_copy) == before


def test_reexport_refuses_run_files_from_python(finished_run: Path) -> None:
    from prunedrop.pipeline import reexport

    before = _snapshot(finished_run / "out")
    with pytest.raises(PrunedropError, match="the run needs"):
        reexport(None, None, None, finished_run / "out", finished_run / "out" / "checkpoint-variational.pt")
    assert _snapshot(finished_run / "out") == before


def test_export_never_replaces_the_runs_modules(run_copy: Path) -> None:
    """The --arch module and a python: data module are the run's too: export -o over them is refused, even with
    --overwrite (a file of the user's own that the run does not read may be replaced)."""
    sys.modules.pop("tinyarch", None)  # the module of this copy, not of an earlier test's folder
    info = json.loads((run_copy / "out" / "run.json").read_text())
    (run_copy / "userdata.py").write_text("from prunedrop.data import load_data\n\n\ndef load():\n"
                                          "    return load_data('npz:data.npz')\n")
    info["data"] = "python:userdata:load"
    (run_copy / "out" / "run.json").write_text(json.dumps(info))
    before = _snapshot(run_copy)
    for target in ("tinyarch.py", "./userdata.py", "out/../tinyarch.py"):
        result = CliRunner().invoke(cli, ["export", "out", "-o", target, "--overwrite"])
        _one_line_error(result, 1, "the run needs")
    assert _snapshot(run_copy) == before


def _into_out(folder: Path, name: str, source: str) -> str:
    (folder / "out" / name).write_bytes((folder / source).read_bytes())
    return f"out/{name}"


def _linked_into_out(folder: Path) -> str:
    os.symlink(folder / "out" / "model.pt", folder / "mine.pt")  # an earlier run's result, compressed again
    return "mine.pt"


def _image_folder(folder: Path) -> str:
    (folder / "images" / "a").mkdir(parents=True)
    return "images"


INPUTS_IN_OUT = {  # (make the input, return its path; the option it is given to; the -o to give)
    "model": (lambda f: _into_out(f, "model.pt", "model.pt"), "MODEL", "out"),
    "model-dotdot": (lambda f: _into_out(f, "model.pt", "model.pt"), "MODEL", "out/../out/."),
    "model-link": (_linked_into_out, "MODEL", "out"),
    "model-onnx-name": (lambda f: _into_out(f, "model.onnx", "model.pt"), "MODEL", "out"),
    "data": (lambda f: _into_out(f, "report.json", "data.npz"), "--data", "out"),
    "recipe": (lambda f: _into_out(f, "run.json", "recipe.yaml"), "--recipe", "out"),
    "data-dir": (lambda f: "out", "--data-dir", "out"),
    "in-image-folder": (_image_folder, "--data", "images/out"),
}


@pytest.mark.parametrize("resume", [False, True], ids=["overwrite", "resume"])
@pytest.mark.parametrize("case", sorted(INPUTS_IN_OUT))
def test_compress_never_replaces_or_deletes_an_input(run_copy: Path, case: str, resume: bool) -> None:
    """A file the run writes or --overwrite clears that is one of its inputs (by any path: a link, ``..``), or an
    output folder that is an input folder (or lies in an image folder, where it would be a class): refused before
    anything is written, with --overwrite as with --resume."""
    make, option, out = INPUTS_IN_OUT[case]
    sys.modules.pop("tinyarch", None)  # the module of this copy, not of an earlier test's folder
    given = make(run_copy)
    if option == "--data":
        given = ("imagefolder:" if case == "in-image-folder" else "npz:") + given
    extra = [option, given] if option != "--data-dir" else ["--data", "mnist", "--data-dir", given]
    if case == "in-image-folder":
        (run_copy / "images" / "out").mkdir()
        (run_copy / "images" / "out" / "checkpoint-variational.pt").write_text("")
    before = _snapshot(run_copy)
    args = _with(_compress_args("-o", out, "--resume" if resume else "--overwrite"), extra)
    result = CliRunner().invoke(cli, args)
    _one_line_error(result, 1, "choose another -o")
    assert _snapshot(run_copy) == before


def test_compress_beside_its_inputs_in_the_output_folder_goes_on(run_copy: Path) -> None:
    """Inputs in the output folder under names the run does not write (the --arch module, the recipe, the data)
    are left as they were."""
    out = run_copy / "out"
    for name in ("tinyarch.py", "recipe.yaml", "data.npz"):
        (out / name).write_bytes((run_copy / name).read_bytes())
    kept = {name: (out / name).read_bytes() for name in ("tinyarch.py", "recipe.yaml", "data.npz")}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(out)
        result = CliRunner().invoke(cli, ["compress", "../model.pt", "--arch", "tinyarch:build", "--data",
                                          "npz:data.npz", "--recipe", "recipe.yaml", "-q", "-o", ".", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert {name: (out / name).read_bytes() for name in kept} == kept


def test_report_never_rewrites_an_input(run_copy: Path) -> None:
    info = json.loads((run_copy / "out" / "run.json").read_text())
    info["model_path"] = str(run_copy / "out" / "report.md")
    (run_copy / "out" / "run.json").write_text(json.dumps(info))
    before = _snapshot(run_copy)
    _one_line_error(CliRunner().invoke(cli, ["report", "out"]), 1, "would replace the model")
    assert _snapshot(run_copy) == before
    assert CliRunner().invoke(cli, ["report", "out", "--no-render"]).exit_code == 0


def test_module_files_finds_a_package_module_without_importing_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from prunedrop.safety import module_files

    (tmp_path / "unimported_pkg").mkdir()
    (tmp_path / "unimported_pkg" / "__init__.py").write_text("raise SystemExit('imported')\n")
    (tmp_path / "unimported_pkg" / "nets.py").write_text("raise SystemExit('imported')\n")
    monkeypatch.chdir(tmp_path)
    files = module_files("unimported_pkg.nets")
    assert [f.resolve() for f in files] == [(tmp_path / "unimported_pkg" / n).resolve()
                                           for n in ("__init__.py", "nets.py")]
    assert "unimported_pkg" not in sys.modules
    assert module_files("no_such_module_xyz") == [] and module_files("../x") == []


# ------------------------------------------------------------------------------- 3. resume identity


def _perturbed_model(folder: Path) -> None:
    import torch

    state = torch.load(folder / "model.pt", weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 0.01
    torch.save(state, folder / "model.pt")


def _other_data(folder: Path) -> None:
    import numpy as np

    with np.load(folder / "data.npz") as d:
        arrays = {k: d[k] for k in d.files}
    arrays["x_train"] = arrays["x_train"][::-1].copy()
    arrays["y_train"] = arrays["y_train"][::-1].copy()
    np.savez(folder / "data.npz", **arrays)


RESUME_CHANGES = {
    "model-content": (_perturbed_model, [], "model file"),
    "data-content": (_other_data, [], "the data"),
    "arch": (lambda f: (f / "otherarch.py").write_text((f / "tinyarch.py").read_text()),
             ["--arch", "otherarch:build"], "--arch"),
    "train-limit": (lambda f: None, ["--train-limit", "50"], "train_limit"),
    "seed": (lambda f: None, ["--seed", "5"], "seed"),
}


@pytest.mark.parametrize("case", sorted(RESUME_CHANGES))
def test_resume_with_other_inputs_is_refused_and_changes_nothing(run_copy: Path, case: str) -> None:
    change, extra, needle = RESUME_CHANGES[case]
    change(run_copy)
    before = _snapshot(run_copy / "out")
    args = _compress_args("-o", "out", "--resume")
    if extra[:1] == ["--arch"]:
        args[args.index("--arch") + 1] = extra[1]
        extra = []
    result = CliRunner().invoke(cli, [*args, *extra])
    _one_line_error(result, 1, needle)
    assert _snapshot(run_copy / "out") == before
    sys.modules.pop("otherarch", None)


def test_resume_with_the_same_inputs_goes_on(run_copy: Path) -> None:
    result = CliRunner().invoke(cli, _compress_args("-o", "out", "--resume"))
    assert result.exit_code == 0, result.output
    assert "predates" not in result.output


def test_resume_of_a_run_json_without_hashes_warns_and_goes_on(run_copy: Path) -> None:
    info = json.loads((run_copy / "out" / "run.json").read_text())
    del info["identity"]
    (run_copy / "out" / "run.json").write_text(json.dumps(info))
    result = CliRunner().invoke(cli, _compress_args("-o", "out", "--resume"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if "predates" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:")


# ------------------------------------------------------------------------------- 4. --overwrite validates first


def _nan_model(folder: Path, value: float = float("nan")) -> None:
    import torch

    state = torch.load(folder / "model.pt", weights_only=True)
    key = sorted(state)[-1]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = value
    torch.save(state, folder / "nanmodel.pt")


BAD_INPUTS = {
    "data-typo": (lambda f: None, ["--data", "npz:dta.npz"], "dta.npz"),
    "data-kind": (lambda f: None, ["--data", "nosuch:thing"], "data spec"),
    "recipe-typo": (lambda f: None, ["--recipe", "bad.yaml"], "threshold"),
    "recipe-missing": (lambda f: None, ["--recipe", "nope.yaml"], "nope.yaml"),
    "model-missing": (lambda f: None, ["MODEL", "missing.pt"], "missing.pt"),
    "arch-typo": (lambda f: None, ["--arch", "tinyarch:nope"], "nope"),
    "nan-weights": (_nan_model, ["MODEL", "nanmodel.pt"], "NaN or inf"),
    "inf-weights": (lambda f: _nan_model(f, float("inf")), ["MODEL", "nanmodel.pt"], "NaN or inf"),
    "labels": (lambda f: __import__("numpy").savez(
        f / "wide.npz", x_train=__import__("numpy").zeros((20, 1, 4, 4), "float32"),
        y_train=__import__("numpy").arange(20) % 7), ["--data", "npz:wide.npz"], "outputs"),
}


def _with(args: list[str], extra: list[str]) -> list[str]:
    args = list(args)
    for key, value in zip(extra[::2], extra[1::2]):
        if key == "MODEL":
            args[1] = value
        elif key in args:
            args[args.index(key) + 1] = value
        else:
            args += [key, value]
    return args


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_overwrite_checks_every_input_before_deleting_anything(run_copy: Path, case: str) -> None:
    make, extra, needle = BAD_INPUTS[case]
    make(run_copy)
    before = _snapshot(run_copy / "out")
    result = CliRunner().invoke(cli, _with(_compress_args("-o", "out", "--overwrite"), extra))
    _one_line_error(result, 1, needle)
    assert _snapshot(run_copy / "out") == before


# ------------------------------------------------------------------------------- 11. non-finite weights


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("command", ["compress", "inspect"])
def test_non_finite_weights_are_refused_at_load(user_folder: Path, command: str, value: float) -> None:
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.syspath_prepend(str(user_folder))
    try:
        _nan_model(user_folder, value)
        args = (["compress", "nanmodel.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz", "-o", "out"]
                if command == "compress" else
                ["inspect", "nanmodel.pt", "--arch", "tinyarch:build", "--input-shape", "1,4,4"])
        result = CliRunner().invoke(cli, args)
    finally:
        monkeypatch.undo()
    _one_line_error(result, 1, "NaN or inf", "net.")
    assert not (user_folder / "out").exists()


class _CausalMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.register_buffer("mask", torch.triu(torch.full((4, 4), float("-inf")), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.softmax(self.fc(x).unsqueeze(1) + self.mask, -1).sum(1))


def test_an_attention_mask_buffer_of_minus_inf_is_a_sound_model() -> None:
    from prunedrop.safety import check_finite_weights

    check_finite_weights(_CausalMask(), "model m.pt")  # −inf above the diagonal, as GPT-style models register it


@pytest.mark.parametrize(("tensor", "value"), [("mask", float("nan")), ("bn.running_var", float("inf")),
                                               ("bn.running_mean", float("-inf")), ("fc.weight", float("-inf"))])
def test_nan_in_any_buffer_and_inf_in_weights_or_statistics_are_refused(tensor: str, value: float) -> None:
    from prunedrop.safety import check_finite_weights

    model = _CausalMask()
    with torch.no_grad():
        dict((*model.named_parameters(), *model.named_buffers()))[tensor].view(-1)[-1] = value
    with pytest.raises(PrunedropError, match=f"NaN or inf values in 1 tensor.*{tensor}"):
        check_finite_weights(model, "model m.pt")


# ------------------------------------------------------------------------------- 10. one run per folder


def test_a_second_compress_into_a_running_folder_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    import signal
    import time

    slow = FAST_RECIPE.replace("epochs: 2", "epochs: 40").replace("noise_lr: 0.3", "noise_lr: 0.05")
    write_tiny_project(tmp_path, n=1040, n_val=40, recipe=slow)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen([sys.executable, "-m", "prunedrop", *_compress_args("-o", "out")], cwd=tmp_path,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "out" / "checkpoint-variational.pt").exists():
            assert first.poll() is None, first.communicate()[0]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        monkeypatch.chdir(tmp_path)
        monkeypatch.syspath_prepend(str(tmp_path))
        for extra in (["--overwrite"], ["--resume"], []):
            started = time.monotonic()
            second = CliRunner().invoke(cli, _compress_args("-o", "out", *extra))
            _one_line_error(second, 1, "in use by another prunedrop run")
            assert time.monotonic() - started < 10
        assert first.poll() is None, "the first run must go on undisturbed"
    finally:
        first.send_signal(signal.SIGTERM)
        out = first.communicate(timeout=120)[0]
    assert first.returncode == 130, out
    resumed = CliRunner().invoke(cli, _compress_args("-o", "out", "--resume", "--epochs", "1"))
    assert "in use" not in resumed.output, "the lock ends with the run that held it"


# ------------------------------------------------------------------------------- 5, 6. what reaches report.json


def test_absolute_data_specs_and_slash_globs_reach_a_report_without_paths(user_folder: Path) -> None:
    (user_folder / "recipe.yaml").write_text(FAST_RECIPE + "exclude: ['/not-a-layer*', '/']\n")
    (user_folder / "absdata.py").write_text(textwrap.dedent(f"""\
        from prunedrop.data import load_data

        def load():
            bundle = load_data("npz:data.npz")
            bundle.name = {str(user_folder / "sets" / "digits-like")!r}
            return bundle
        """))
    specs = {"abs-npz": f"npz:{user_folder / 'data.npz'}", "abs-name": "python:absdata:load"}
    for case, spec in specs.items():
        try:
            result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data", spec,
                                              "--recipe", "recipe.yaml", "-q", "-o", case])
        finally:
            for name in ("tinyarch", "absdata"):
                sys.modules.pop(name, None)
        assert result.exit_code == 0, result.output
        text = (user_folder / case / "report.json").read_text()
        assert str(user_folder) not in text and str(user_folder) not in (user_folder / case / "report.md").read_text()
        report = json.loads(text)
        assert report["recipe"]["exclude"] == ["/not-a-layer*", "/"]
        assert report["data"]["name"] == {"abs-npz": "npz:data.npz", "abs-name": "digits-like"}[case]
        assert report["source"]["data"] == {"abs-npz": "npz:data.npz", "abs-name": spec}[case]
        rerendered = CliRunner().invoke(cli, ["report", case])
        assert rerendered.exit_code == 0, rerendered.output


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(["", "npz:", "idx:", "python:"]),
       parts=st.lists(st.text(alphabet=st.characters(blacklist_characters="/\\:\x00",
                                                     blacklist_categories=("Cs",)), min_size=1, max_size=8),
                      min_size=1, max_size=5))
def test_public_spec_never_leaves_an_absolute_path(kind: str, parts: list[str]) -> None:
    from prunedrop.report import check_no_absolute_paths as _check_no_absolute_paths
    from prunedrop.report import public_spec

    spec = kind + "/" + "/".join(parts)
    public = public_spec(spec)
    _check_no_absolute_paths({"data": public})
    assert public.startswith(kind) and "/" not in public[len(kind):]  # the kind stays, no folder is left


# ------------------------------------------------------------------------------- 7. resource bombs

BILLION_LAUGHS = "a: &a ['x','x','x','x','x','x','x','x','x']\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},"
    f"*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)},*{chr(97 + i)}]\n" for i in range(8)
) + "include: *i\n"

RECIPE_BOMBS = {
    "aliases": (BILLION_LAUGHS, "aliases"),
    "one-alias": ("kl_weight: &k 2.0\nfinetune_lr: *k\n", "aliases"),
    "deep-lists": ("include: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    "deep-maps": ("include: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "nested"),
    "huge-value": ("device: '" + "x" * 900_000 + "'\n", "device"),
    "too-big": ("# " + "x" * 1_100_000 + "\n", "bytes"),
    "binary": ("\udcff", "UTF-8"),
}


@pytest.mark.parametrize("command", ["compress", "inspect"])
@pytest.mark.parametrize("case", sorted(RECIPE_BOMBS))
def test_recipe_bombs_are_short_one_line_errors(user_folder: Path, command: str, case: str) -> None:
    text, needle = RECIPE_BOMBS[case]
    (user_folder / "bomb.yaml").write_bytes(text.encode("utf-8", "surrogateescape"))
    args = (["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz", "--recipe", "bomb.yaml",
             "-o", "out"] if command == "compress" else
            ["inspect", "model.pt", "--arch", "tinyarch:build", "--recipe", "bomb.yaml", "--input-shape", "1,4,4"])
    result = CliRunner().invoke(cli, args)
    sys.modules.pop("tinyarch", None)
    _one_line_error(result, 1, needle)
    assert len(result.output) < 1200, len(result.output)
    assert not (user_folder / "out").exists()


def _saved_model(folder: Path) -> Path:
    """A folder written by save_model (compress's -o), to be loaded as MODEL without --arch."""
    import torch

    from prunedrop.storage import save_model
    from prunedrop.testing import TinyMLP

    torch.manual_seed(0)
    model = TinyMLP(16, (24, 12), 3).eval()
    save_model(model, folder / "saved", torch.randn(2, 1, 4, 4))
    return folder / "saved"


def _bomb_manifest(saved: Path, case: str) -> None:
    path = saved / "architecture.json"
    manifest = json.loads(path.read_text())
    if case == "lstm-layers":
        manifest["modules"]["net.1"] = {"type": "LSTM", "args": {"input_size": 4, "hidden_size": 4,
                                                                  "num_layers": 10**7}}
    elif case == "module-count":
        manifest["modules"].update({f"m{i}": {"type": "Linear", "args": {"in_features": 1, "out_features": 1}}
                                    for i in range(100_001)})
    elif case == "deep-json":
        path.write_text('{"format": ' + "[" * 100_000 + "]" * 100_000 + "}")
        return
    elif case == "deep-args":
        manifest["graph"][1]["args"] = [json.loads("[" * 200 + "]" * 200)]
    elif case == "not-an-object":
        path.write_text("[1, 2, 3]")
        return
    path.write_text(json.dumps(manifest))


MANIFEST_BOMBS = {"lstm-layers": "num_layers", "module-count": "modules", "deep-json": "nested",
                  "deep-args": "nested", "not-an-object": "not a prunedrop architecture"}


@pytest.mark.parametrize("command", ["compress", "inspect"])
@pytest.mark.parametrize("case", sorted(MANIFEST_BOMBS))
def test_architecture_bombs_are_quick_one_line_errors(user_folder: Path, command: str, case: str) -> None:
    import time

    saved = _saved_model(user_folder)
    _bomb_manifest(saved, case)
    args = (["compress", "saved", "--data", "npz:data.npz", "-o", "out"] if command == "compress"
            else ["inspect", "saved", "--input-shape", "1,4,4"])
    started = time.monotonic()
    result = CliRunner().invoke(cli, args)
    assert time.monotonic() - started < 30
    _one_line_error(result, 1, MANIFEST_BOMBS[case])
    assert not (user_folder / "out").exists()


RUN_JSON_BOMBS = {
    "deep": ("[" * 100_000 + "]" * 100_000, "nested"),
    "list": ("[1, 2]", "no JSON object"),
    "garbage": ("{not json", "not valid JSON"),
    "binary": ("\udcff\udcfe", "UTF-8"),
    "deep-recipe": ('{"recipe": ' + "[" * 500 + "]" * 500 + "}", "nested"),
}


@pytest.mark.parametrize("case", sorted(RUN_JSON_BOMBS))
def test_export_of_a_damaged_run_json(run_copy: Path, case: str) -> None:
    text, needle = RUN_JSON_BOMBS[case]
    (run_copy / "out" / "run.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    result = CliRunner().invoke(cli, ["export", "out", "-o", "x.onnx"])
    _one_line_error(result, 1, needle)
    assert not (run_copy / "x.onnx").exists()


@pytest.mark.parametrize("case", sorted(RUN_JSON_BOMBS))
def test_report_of_a_damaged_report_json(run_copy: Path, case: str) -> None:
    text, needle = RUN_JSON_BOMBS[case]
    (run_copy / "out" / "report.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    result = CliRunner().invoke(cli, ["report", "out"])
    _one_line_error(result, 1)


# ------------------------------------------------------------------------------- 13. malformed report.json

WRONG_VALUES = [None, "x", -1, 1e308, [], {}, [1, "a"], {"a": None}, True]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_report_command_survives_any_wrong_value(finished_run: Path, data: st.DataObject) -> None:
    """Any one value of a real report.json replaced by a wrong one: `report` prints or refuses in one line."""
    import shutil
    import tempfile

    report = json.loads((finished_run / "out" / "report.json").read_text())
    paths: list[tuple] = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, (*path, k))
        elif isinstance(node, list):
            for i, v in enumerate(node[:3]):
                walk(v, (*path, i))

    walk(report, ())
    path = data.draw(st.sampled_from(paths[1:]))
    value = data.draw(st.sampled_from(WRONG_VALUES))
    node = report
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        (run / "report.json").write_text(json.dumps(report))
        if (finished_run / "out" / "plots").is_dir():
            shutil.copytree(finished_run / "out" / "plots", run / "plots")
        for extra in (["--no-render"], [], [str(finished_run / "out")]):  # the last: side by side with a good one
            result = CliRunner().invoke(cli, ["report", str(run), *extra])
            assert result.exit_code in (0, 1), (path, value, extra, result.output)
            assert "Traceback" not in result.output and result.exception is None or \
                isinstance(result.exception, SystemExit), (path, value, repr(result.exception))
            if result.exit_code == 1:
                assert len(result.output.strip().splitlines()) == 1, result.output


# ------------------------------------------------------------------------------- 8. parity in the outputs' terms


def _big_output_model():
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x = torch.rand(64, 1, 4, 4) * 255  # unscaled 0-255 inputs: outputs in the hundreds to thousands
    with torch.no_grad():
        model[1].weight.mul_(20)
    return model, x


@pytest.mark.parametrize(("relative_error", "ok"), [(0.0, True), (2.4e-7, True), (-2.4e-7, True), (1e-3, False),
                                                    (float("nan"), False)])
def test_parity_tolerance_scales_with_the_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  relative_error: float, ok: bool) -> None:
    import numpy as np
    import torch

    from prunedrop import export
    from prunedrop.errors import ParityError

    model, x = _big_output_model()
    path = export.export_onnx(model, x[:2], tmp_path / "m.onnx").path
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(want).max() > 1000
    monkeypatch.setattr(export.runtime, "run_session", lambda p, inputs: [want * np.float32(1 + relative_error)
                                                                          if relative_error == relative_error
                                                                          else want * np.nan])
    if ok:
        assert export.verify_onnx(path, model, x, atol=1e-4) >= 0
    else:
        with pytest.raises(ParityError, match="largest output"):
            export.verify_onnx(path, model, x, atol=1e-4)


def test_parity_is_checked_before_training(user_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prunedrop.export import runtime

    real = runtime.run_session
    monkeypatch.setattr(runtime, "run_session", lambda p, inputs: [o + 1.0 for o in real(p, inputs)])
    (user_folder / "recipe.yaml").write_text(FAST_RECIPE)
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz",
                                      "--recipe", "recipe.yaml", "-q", "-o", "out"])
    sys.modules.pop("tinyarch", None)
    _one_line_error(result, 1, "before fine-tuning", "differs from PyTorch")
    assert not (user_folder / "out" / "checkpoint-variational.pt").exists()


# ------------------------------------------------------------------------------- 13. more one-line errors

COMPRESS_MISTAKES = {
    "seed-too-big": (["--seed", str(2**70)], "seed"),
    "seed-too-small": (["--seed", str(-(2**70))], "seed"),
    "long-output-name": (["-o", "x" * 300], "too long"),
    "output-through-a-file": (["-o", "model.pt/sub"], "not a folder"),
    "meta-factory": (["--arch", "metaarch:build"], "meta device"),
    "latency-batch-bomb": (["--recipe", "latency.yaml"], "latency_batch_sizes"),
    "mse-on-class-labels": (["--recipe", "mse.yaml"], "mse"),
    "fp16-on-cpu": (["--precision", "fp16", "--device", "cpu"], "fp16"),
    # a tensor in eval mode, a tuple in training (GoogLeNet's aux logits): a traceback at the first training step
    "aux-logits-in-training": (["--arch", "auxarch:build"], "in training mode the model returns tuple"),
    # dropout forced on in eval mode: the parity check of the original failed with "ONNX output differs"
    "random-in-eval": (["--arch", "mcarch:build"], "in eval mode is random"),
    # a torch.jit.script'ed block inside a plain module: the original's export failed with torch's tracer message
    "torchscript-submodule": (["--arch", "scriptarch:build"], "holds TorchScript modules (body)"),
    # a BatchNorm normalising by each batch's own statistics in eval mode: the original's export failed after the run
    # had started ("batch_size and channel_size must be non-None")
    "batchnorm-without-statistics": (["--arch", "bnarch:build"], "BatchNorm layers without running statistics (net.2"),
}
BN_ARCH = ("from torch import nn\nfrom prunedrop.testing import TinyMLP\n\n\ndef build():\n"
           "    model = TinyMLP(16, (24, 12), 3)\n"
           "    model.net[2] = nn.BatchNorm1d(24, affine=False, track_running_stats=False)\n    return model\n")
SCRIPT_ARCH = ("import torch\nfrom torch import nn\n\n\nclass S(nn.Module):\n    def __init__(self):\n"
               "        super().__init__()\n        self.body = torch.jit.script(nn.Sequential(nn.Flatten(), "
               "nn.Linear(16, 24), nn.ReLU()))\n        self.head = nn.Linear(24, 3)\n\n"
               "    def forward(self, x):\n        return self.head(self.body(x))\n\n\ndef build():\n"
               "    return S()\n")
MC_ARCH = ("import torch.nn.functional as F\nfrom prunedrop.testing import TinyMLP\n\n\nclass MC(TinyMLP):\n"
           "    def forward(self, x):\n        return F.dropout(super().forward(x), 0.3, training=True)\n\n\n"
           "def build():\n    return MC(16, (24, 12), 3)\n")


@pytest.mark.parametrize("case", sorted(COMPRESS_MISTAKES))
def test_compress_mistakes_are_one_line_errors_before_any_file(user_folder: Path, case: str) -> None:
    (user_folder / "metaarch.py").write_text(
        "import torch\nfrom prunedrop.testing import TinyMLP\n\n\ndef build():\n    with torch.device('meta'):\n"
        "        return TinyMLP(16, (24, 12), 3)\n")
    (user_folder / "auxarch.py").write_text(
        "from prunedrop.testing import TinyMLP\n\n\nclass Aux(TinyMLP):\n    def forward(self, x):\n"
        "        out = super().forward(x)\n        return (out, out) if self.training else out\n\n\n"
        "def build():\n    return Aux(16, (24, 12), 3)\n")
    (user_folder / "mcarch.py").write_text(MC_ARCH)
    (user_folder / "scriptarch.py").write_text(SCRIPT_ARCH)
    (user_folder / "bnarch.py").write_text(BN_ARCH)
    (user_folder / "latency.yaml").write_text(FAST_RECIPE.replace("latency_runs: 0", "latency_runs: 2")
                                              + f"latency_batch_sizes: [1, {10**9}]\n")
    (user_folder / "mse.yaml").write_text(FAST_RECIPE + "loss: mse\n")
    (user_folder / "recipe.yaml").write_text(FAST_RECIPE)
    extra, needle = COMPRESS_MISTAKES[case]
    before = _snapshot(user_folder)
    try:
        result = CliRunner().invoke(cli, _with(_compress_args("-o", "out"), extra))
    finally:
        for name in ("tinyarch", "metaarch", "auxarch", "mcarch", "scriptarch", "bnarch"):
            sys.modules.pop(name, None)
    _one_line_error(result, 1, needle)
    assert _snapshot(user_folder) == before


def test_torchscript_submodules_are_refused_by_inspect_and_the_python_api(user_folder: Path) -> None:
    import torch

    from prunedrop.data import DataBundle
    from prunedrop.pipeline import compress
    from prunedrop.recipes import Recipe
    from prunedrop.testing import tiny_classification_data

    (user_folder / "scriptarch.py").write_text(SCRIPT_ARCH)
    try:
        result = CliRunner().invoke(cli, ["inspect", "model.pt", "--arch", "scriptarch:build", "--input-shape",
                                          "1,4,4"])
    finally:
        sys.modules.pop("scriptarch", None)
    _one_line_error(result, 1, "holds TorchScript modules (body)")
    namespace: dict = {}
    exec(SCRIPT_ARCH, namespace)  # the same module, built here for the Python API
    model = namespace["build"]()
    x, y = tiny_classification_data(n=60, shape=(1, 4, 4), seed=0)
    data = DataBundle(train=torch.utils.data.TensorDataset(x[:40], y[:40]),
                      val=torch.utils.data.TensorDataset(x[40:], y[40:]), test=None, name="tiny", num_classes=3,
                      input_shape=(1, 4, 4))
    with pytest.raises(PrunedropError, match=r"holds TorchScript modules \(body\)"):
        compress(model, data, Recipe(epochs=1, latency_runs=0, plots=False), user_folder / "api", progress=False,
                 log=lambda msg: None)
    namespace = {}
    exec(BN_ARCH, namespace)  # a BatchNorm without running statistics, refused by the Python API too
    with pytest.raises(PrunedropError, match=r"without running statistics \(net.2"):
        compress(namespace["build"](), data, Recipe(epochs=1, latency_runs=0, plots=False), user_folder / "api2",
                 progress=False, log=lambda msg: None)


def test_a_classifier_that_returns_probabilities_is_warned_about(tmp_path: Path) -> None:
    import torch

    from prunedrop.data import DataBundle
    from prunedrop.pipeline import compress
    from prunedrop.recipes import Recipe
    from prunedrop.stages.baseline import probabilities_note
    from prunedrop.testing import TinyMLP, tiny_classification_data

    x, y = tiny_classification_data(n=60, shape=(1, 4, 4), seed=0)
    data = DataBundle(train=torch.utils.data.TensorDataset(x[:40], y[:40]),
                      val=torch.utils.data.TensorDataset(x[40:], y[40:]), test=None, name="tiny", num_classes=3,
                      input_shape=(1, 4, 4))
    probabilities = torch.nn.Sequential(TinyMLP(16, (24, 12), 3), torch.nn.Softmax(dim=1))
    logs: list[str] = []
    compress(probabilities, data, Recipe(epochs=1, finetune_epochs=0, latency_runs=0, plots=False, mc_samples=0,
                                         max_metric_drop=None, kl_weight=1.0, kl_warmup_epochs=0), tmp_path / "run",
             progress=False, log=logs.append)
    assert any(line.startswith("warning: the model returns probabilities") for line in logs), logs
    # logits, log-probabilities and a regression are not probabilities
    for model, recipe in ((TinyMLP(16, (24, 12), 3), Recipe()),
                          (torch.nn.Sequential(TinyMLP(16, (24, 12), 3), torch.nn.LogSoftmax(dim=1)), Recipe()),
                          (probabilities, Recipe(loss="mse"))):
        with torch.no_grad():
            assert probabilities_note(model.eval()(x[:8]), recipe.loss) is None


def test_a_model_random_in_eval_mode_is_refused_by_inspect_and_the_python_api(user_folder: Path) -> None:
    import torch

    from prunedrop.data import DataBundle
    from prunedrop.pipeline import compress
    from prunedrop.recipes import Recipe
    from prunedrop.testing import TinyMLP, tiny_classification_data

    (user_folder / "mcarch.py").write_text(MC_ARCH)
    try:
        result = CliRunner().invoke(cli, ["inspect", "model.pt", "--arch", "mcarch:build", "--input-shape", "1,4,4"])
    finally:
        sys.modules.pop("mcarch", None)
    _one_line_error(result, 1, "in eval mode is random")

    class MC(TinyMLP):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.dropout(super().forward(x), 0.3, training=True)

    x, y = tiny_classification_data(n=60, shape=(1, 4, 4), seed=0)
    data = DataBundle(train=torch.utils.data.TensorDataset(x[:40], y[:40]),
                      val=torch.utils.data.TensorDataset(x[40:], y[40:]), test=None, name="tiny", num_classes=3,
                      input_shape=(1, 4, 4))
    with pytest.raises(PrunedropError, match="in eval mode is random"):
        compress(MC(16, (24, 12), 3), data, Recipe(epochs=1, latency_runs=0, plots=False), user_folder / "api",
                 progress=False, log=lambda msg: None)
    # dropout that follows the module's mode passes, and the check leaves the caller's random stream and the
    # module's mode as they were
    from prunedrop.safety import check_deterministic

    net = torch.nn.Sequential(TinyMLP(16, (24, 12), 3), torch.nn.Dropout(0.3)).train()
    state = torch.random.get_rng_state()
    check_deterministic(net, x[:2])
    assert torch.equal(torch.random.get_rng_state(), state) and net.training and net[1].training


def test_inspect_of_a_factory_that_builds_on_the_meta_device(user_folder: Path) -> None:
    (user_folder / "metaarch.py").write_text(
        "import torch\nfrom prunedrop.testing import TinyMLP\n\n\ndef build():\n    with torch.device('meta'):\n"
        "        return TinyMLP(16, (24, 12), 3)\n")
    try:
        result = CliRunner().invoke(cli, ["inspect", "model.pt", "--arch", "metaarch:build", "--input-shape", "1,4,4"])
    finally:
        sys.modules.pop("metaarch", None)
    _one_line_error(result, 1, "meta device")


# no writable temporary directory: run in a fresh interpreter, where the check must come before torch's import.
# A missing TMPDIR is not enough to provoke it (tempfile falls back to /tmp, and root writes anywhere), so the
# interpreter is told that its only candidate is a folder no one can create anything in (/proc/...)
NO_TEMP_DIR = textwrap.dedent("""
    import sys
    import tempfile

    tempfile._candidate_tempdir_list = lambda: ["/proc/no-temp-dir"]
    tempfile.tempdir = None
    from prunedrop.cli import main

    sys.argv = ["prunedrop", *sys.argv[1:]]
    main()
""")
TEMP_COMMANDS = {
    "compress": _compress_args("-o", "out"),
    "export": ["export", "out", "-o", "again.onnx"],
    "inspect": ["inspect", "model.pt", "--arch", "tinyarch:build", "--input-shape", "1,4,4"],
    "report": ["report", "out"],
}
CACHE_DIRS = {  # TORCHINDUCTOR_CACHE_DIR, where PyTorch's compiler keeps its cache
    "under-proc": ("/proc/no-such/cache", "cannot create a folder in /proc"),
    "under-a-file": ("model.pt/cache", "is not a folder"),
    "read-only-sysfs": ("/sys/prunedrop-cache", "cannot create a folder in /sys"),
}


def _fresh(folder: Path, args: list[str], env: dict[str, str] | None = None, script: str | None = None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), **(env or {})}
    cmd = [sys.executable, "-c", script] if script else [sys.executable, "-m", "prunedrop"]
    return subprocess.run([*cmd, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", sorted(TEMP_COMMANDS))
def test_no_writable_temporary_directory_is_one_line_before_any_file(user_folder: Path, command: str) -> None:
    before = _snapshot(user_folder)
    proc = _fresh(user_folder, TEMP_COMMANDS[command], script=NO_TEMP_DIR)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr, proc.stderr
    assert "no writable temporary directory" in proc.stderr and "TMPDIR" in proc.stderr, proc.stderr
    assert _snapshot(user_folder) == before
    # `recipes` needs no torch, and still answers
    assert _fresh(user_folder, ["recipes"], script=NO_TEMP_DIR).returncode == 0


@pytest.mark.parametrize("case", sorted(CACHE_DIRS))
def test_a_compiler_cache_that_cannot_be_made_is_one_line_before_any_file(user_folder: Path, case: str) -> None:
    cache, needle = CACHE_DIRS[case]
    if case == "read-only-sysfs" and not _read_only("/sys"):
        pytest.skip("/sys is writable here")
    before = _snapshot(user_folder)
    proc = _fresh(user_folder, _compress_args("-o", "out"), env={"TORCHINDUCTOR_CACHE_DIR": cache})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr, proc.stderr
    assert needle in proc.stderr and "TORCHINDUCTOR_CACHE_DIR" in proc.stderr, proc.stderr
    assert _snapshot(user_folder) == before


def _read_only(folder: str) -> bool:
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(dir=folder))
    except OSError:
        return True
    return False


@pytest.mark.parametrize("shape", ["100000,100000,100000", "1,4,4," + "9" * 30, "1,1,1,1,1,1,1,1,1,1"])
def test_inspect_refuses_absurd_input_shapes(user_folder: Path, shape: str) -> None:
    result = CliRunner().invoke(cli, ["inspect", "model.pt", "--arch", "tinyarch:build", "--input-shape", shape])
    sys.modules.pop("tinyarch", None)
    _one_line_error(result, 2, "--input-shape")


def _edit_checkpoint(run: Path, case: str) -> None:
    import torch

    path = run / "out" / "checkpoint-variational.pt"
    state = torch.load(path, weights_only=True)
    if case == "no-model":
        del state["model"]
    elif case == "no-optimizer":
        del state["optimizer"]
    elif case == "no-rng":
        del state["rng"]
    elif case == "empty-param-groups":
        state["optimizer"]["param_groups"] = []
    elif case == "optimizer-not-a-dict":
        state["optimizer"] = [1, 2]
    elif case == "negative-epoch":
        state["epoch"] = -3
    elif case == "model-is-a-list":
        state["model"] = [torch.zeros(2)]
    elif case == "missing-weight":
        state["model"].pop(sorted(state["model"])[0])
    torch.save(state, path)


CHECKPOINT_EDITS = ["empty-param-groups", "missing-weight", "model-is-a-list", "negative-epoch", "no-model",
                    "no-optimizer", "no-rng", "optimizer-not-a-dict"]


@pytest.mark.parametrize("command", ["compress-resume", "export"])
@pytest.mark.parametrize("case", CHECKPOINT_EDITS)
def test_edited_checkpoints_are_one_line_errors(run_copy: Path, command: str, case: str) -> None:
    _edit_checkpoint(run_copy, case)
    args = _compress_args("-o", "out", "--resume") if command == "compress-resume" else ["export", "out", "-o", "e.onnx"]
    if command == "export" and case in ("empty-param-groups", "no-optimizer", "no-rng"):
        result = CliRunner().invoke(cli, args)  # export reads only the weights: these edits do not matter to it
        assert result.exit_code == 0, result.output
        return
    result = CliRunner().invoke(cli, args)
    _one_line_error(result, 1, "checkpoint")


# ------------------------------------------------------------------------------- recipes: any YAML value

_ANY_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def _recipe_keys() -> list[str]:
    from dataclasses import fields

    from prunedrop.recipes import Recipe

    return [f.name for f in fields(Recipe)]


@settings(max_examples=300, deadline=None)
@given(entries=st.dictionaries(st.sampled_from(_recipe_keys()) | st.text(max_size=10), _ANY_VALUE, max_size=4))
def test_any_recipe_is_a_recipe_or_a_one_line_error(tmp_path_factory: pytest.TempPathFactory, entries: dict) -> None:
    import yaml

    from prunedrop.recipes import Recipe, load_recipe

    path = tmp_path_factory.mktemp("recipe") / "r.yaml"
    path.write_text(yaml.safe_dump(entries, allow_unicode=True))
    try:
        recipe = load_recipe(path)
    except PrunedropError as e:
        assert len(e.message.splitlines()) == 1 and len(e.message) < 1100, e.message
    else:
        assert isinstance(recipe, Recipe)
        Recipe.from_dict(recipe.to_dict())  # what run.json stores reads back


@pytest.mark.parametrize("kind", ["fifo", "folder", "device-link"])
@pytest.mark.parametrize("command", ["report", "export"])
def test_run_files_that_are_not_regular_files(run_copy: Path, command: str, kind: str) -> None:
    """report.json / run.json replaced by a FIFO, a folder or a link to an endless device: a quick one-line
    error, never a hang."""
    target = run_copy / "out" / ("report.json" if command == "report" else "run.json")
    target.unlink()
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "folder":
        target.mkdir()
    else:
        os.symlink("/dev/zero", target)
    args = ["report", "out"] if command == "report" else ["export", "out", "-o", "n.onnx"]
    result = CliRunner().invoke(cli, args)
    _one_line_error(result, 1)


def test_fingerprint_of_randomly_augmented_data_falls_back_to_sizes() -> None:
    """Data that reads differently each time (random augmentation) is identified by its sizes only, so that its
    resume is not refused for nothing; and fingerprinting leaves every random generator where it was."""
    import random

    import numpy as np
    import torch
    from torch.utils.data import Dataset

    from prunedrop.data import DataBundle
    from prunedrop.runfolder import check_identity, data_fingerprint, run_identity

    class Augmented(Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.rand(4) + random.random() + float(np.random.rand()), 0

    bundle = DataBundle(name="aug", train=Augmented(), val=Augmented(), test=None, input_shape=(4,), num_classes=1)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    expected = (torch.rand(1), random.random(), np.random.rand())
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    assert data_fingerprint(bundle) is None
    assert (torch.rand(1), random.random(), np.random.rand()) == expected
    model = Path(__file__)  # any file stands in for the model file
    recorded = {"arch": None, "identity": run_identity(model, bundle)}
    check_identity(recorded, {**run_identity(model, bundle), "arch": None}, action="--resume", warn=print)
    bundle.val = None
    with pytest.raises(PrunedropError, match="splits or sizes"):
        check_identity(recorded, {**run_identity(model, bundle), "arch": None}, action="--resume", warn=print)


# ------------------------------------------------------------------------------- paths the file system refuses

LONG = "z" * 300
PATH_CASES = {
    "compress-model": ["compress", LONG + ".pt", "--arch", "tinyarch:build", "--data", "npz:data.npz", "-o", "out"],
    "compress-npz": ["compress", "model.pt", "--arch", "tinyarch:build", "--data", f"npz:{LONG}.npz", "-o", "out"],
    "compress-idx": ["compress", "model.pt", "--arch", "tinyarch:build", "--data", f"idx:{LONG}", "-o", "out"],
    "compress-recipe": ["compress", "model.pt", "--arch", "tinyarch:build", "--recipe", LONG + ".yaml", "-o", "out"],
    "compress-data-dir": ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "fashion-mnist",
                          "--data-dir", LONG, "-o", "out"],
    "compress-model-loop": ["compress", "loop.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz", "-o", "out"],
    "export-run": ["export", LONG, "-o", "a.onnx"],
    "export-output": ["export", "out", "-o", f"{LONG}.onnx"],
    "report-run": ["report", LONG],
    "report-loop": ["report", "loopdir"],
    "inspect-model": ["inspect", LONG + ".pt", "--arch", "tinyarch:build", "--input-shape", "1,4,4"],
    "inspect-data": ["inspect", "model.pt", "--arch", "tinyarch:build", "--data", f"npz:{LONG}"],
    "inspect-recipe": ["inspect", "model.pt", "--arch", "tinyarch:build", "--recipe", f"{LONG}/r.yaml",
                       "--input-shape", "1,4,4"],
}


@pytest.mark.parametrize("case", sorted(PATH_CASES))
def test_paths_the_file_system_refuses_are_one_line_errors(user_folder: Path, case: str) -> None:
    os.symlink("loop.pt", user_folder / "loop.pt")
    os.symlink("loopdir", user_folder / "loopdir")
    before = _snapshot(user_folder)
    result = CliRunner().invoke(cli, PATH_CASES[case])
    sys.modules.pop("tinyarch", None)
    _one_line_error(result, 1)
    assert _snapshot(user_folder) == before


# ------------------------------------------------------------------------------- compressed IDX bombs


def _idx_gz(path: Path, dims: tuple[int, ...], payload_bytes: int) -> None:
    """A gzipped IDX file (uint8) whose header announces ``dims`` and whose data is ``payload_bytes`` zeros."""
    import gzip
    import struct

    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims))
        chunk = bytes(1 << 20)
        left = payload_bytes
        while left > 0:
            f.write(chunk[: min(left, len(chunk))])
            left -= len(chunk)


@pytest.mark.parametrize(("dims", "payload", "needle"), [
    ((10, 28, 28), 300 * 2**20, "longer than its header says"),  # a small header, 300 MB of zeros behind it
    ((2**31, 2**10), 10_000, "announces"),                          # a header that announces 2 TB
])
@pytest.mark.parametrize("command", ["compress", "inspect"])
def test_compressed_idx_bombs(user_folder: Path, command: str, dims: tuple, payload: int, needle: str) -> None:
    import tracemalloc

    folder = user_folder / "idx"
    folder.mkdir()
    _idx_gz(folder / "train-images-idx3-ubyte.gz", dims, payload)
    _idx_gz(folder / "train-labels-idx1-ubyte.gz", (10,), 10)
    args = (["compress", "model.pt", "--arch", "tinyarch:build", "--data", "idx:idx", "-o", "out"]
            if command == "compress" else ["inspect", "model.pt", "--arch", "tinyarch:build", "--data", "idx:idx"])
    tracemalloc.start()
    try:
        result = CliRunner().invoke(cli, args)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        sys.modules.pop("tinyarch", None)
    _one_line_error(result, 1, needle)
    assert peak < 50 * 2**20, f"{peak:,} bytes allocated for a {payload:,}-byte bomb"


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_export_survives_any_wrong_value_in_run_json(finished_run: Path, data: st.DataObject) -> None:
    """Any one top-level value of a real run.json replaced by a wrong one: `export` works or refuses in one line,
    and never writes into the run folder."""
    import shutil
    import tempfile

    info = json.loads((finished_run / "out" / "run.json").read_text())
    key = data.draw(st.sampled_from(sorted(info)))
    info[key] = data.draw(st.sampled_from([*WRONG_VALUES, "/nonexistent/x", "npz:/nonexistent.npz", "os:system"]))
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "out"
        shutil.copytree(finished_run / "out", run)
        (run / "run.json").write_text(json.dumps(info))
        before = _snapshot(run)
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(finished_run)
            mp.syspath_prepend(str(finished_run))
            result = CliRunner().invoke(cli, ["export", str(run), "-o", str(Path(tmp) / "x.onnx")])
        assert result.exit_code in (0, 1), (key, info[key], result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (key, info[key],
                                                                                       repr(result.exception))
        if result.exit_code == 1:
            assert len(result.output.strip().splitlines()) == 1, result.output
        assert _snapshot(run) == before


def test_a_broken_image_is_a_one_line_error_before_any_file(user_folder: Path) -> None:
    """The identity of the data (which reads every sample) was taken after the output folder was made: a broken
    image in an image folder left an empty output folder behind."""
    import numpy as np

    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):  # the broken file in the training split, which the checks of the model skip
        for label in ("a", "b", "c"):
            folder = user_folder / "imgs" / split / label
            folder.mkdir(parents=True)
            for i in range(8):
                image.fromarray((rng.random((4, 4)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    (user_folder / "imgs" / "train" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (user_folder / "recipe.yaml").write_text(FAST_RECIPE + "image_channels: 1\nimage_size: [4, 4]\n")  # no size scan
    before = _snapshot(user_folder)
    try:
        result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data",
                                          "imagefolder:imgs", "--recipe", "recipe.yaml", "-q", "-o", "out"])
    finally:
        sys.modules.pop("tinyarch", None)
    _one_line_error(result, 1, "broken.png")
    assert _snapshot(user_folder) == before
