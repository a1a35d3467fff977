"""Hostile and careless inputs, per command: what a folder, a wrong resume or a second run can do (issue 18).

Each class of case is tried against every command it reaches (``compress``, ``export``, ``inspect``, ``report``,
``recipes``); every refusal must be a one-line error (status 1, or 2 for a usage error) that leaves the user's
files as they were.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

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
    sys.path): --arch and python: data import the user's modules, and the libraries imported afterwards are the
    installed ones, not the fakes beside the model."""
    folder = tmp_path / "work"
    folder.mkdir()
    write_tiny_project(folder, n=60, n_val=20)
    (folder / "userdata.py").write_text(textwrap.dedent("""\
        import torch
        from torch.utils.data import TensorDataset

        def load():
            g = torch.Generator().manual_seed(0)
            x, y = torch.rand(40, 1, 4, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
            return TensorDataset(x[:30], y[:30]), TensorDataset(x[30:], y[30:])
        """))
    _plant_fakes(folder)
    launcher = tmp_path / "bin" / "run.py"
    launcher.parent.mkdir()
    launcher.write_text(textwrap.dedent(f"""\
        import sys
        from prunedrop.cli import cli
        cli.main(sys.argv[1:], prog_name="prunedrop", standalone_mode=False)
        import importlib
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
    proc = subprocess.run([sys.executable, str(launcher), "inspect", "model.pt", "--arch", "tinyarch:build",
                           "--data", "python:userdata:load"], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "LIBRARIES-OK" in proc.stdout and "net.3" in proc.stdout
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


def test_import_user_module_refuses_non_names() -> None:
    from prunedrop.safety import import_user_module

    for name in ("", "a..b", "a/b", "1abc", "a.b-c", "\x00"):
        with pytest.raises(PrunedropError, match="not a module name"):
            import_user_module(name, what="--arch")
