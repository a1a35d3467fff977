"""Hostile and careless inputs to what reads a finished (or unfinished) run folder: ``prunedrop export``,
``prunedrop report`` and their Python functions (``reexport``, ``load_report``, ``load_reports``).

Every case works on a copy of ``tests/data/run-v1`` (a run folder written by an earlier prunedrop), so nothing is
trained here. Each refusal must be a one-line error (status 1) that writes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prunedrop.cli import cli
from prunedrop.errors import PrunedropError

OLD_RUN = Path(__file__).parent / "data" / "run-v1"


def _one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (KeyError, TypeError))
    assert len(result.output.strip().splitlines()) == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def project(old_run: Path) -> Path:
    """A copy of tests/data/run-v1 as the current folder: the user's files and the run folder ``run``."""
    return old_run


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------- export: run.json without a key


@pytest.mark.parametrize("key", ["model_path", "data", "recipe"])
def test_export_of_a_run_json_without_a_key_it_needs(project: Path, key: str) -> None:
    """A run.json without 'model_path' or 'data' stopped with a KeyError traceback; one without 'recipe' was
    exported silently with today's default recipe (another method's layers, another threshold)."""
    _edit_json(project / "run" / "run.json", lambda info: info.pop(key))
    before = _snapshot(project)
    result = CliRunner().invoke(cli, ["export", "run", "-o", "again.onnx"])
    _one_line_error(result, f"has no '{key}'", "compress")
    assert _snapshot(project) == before


# ------------------------------------------------------------------------------- export: the threshold


@pytest.mark.parametrize("value", ["1e9", "10", "30"])
def test_export_threshold_that_prunes_nothing(project: Path, value: str) -> None:
    """A log α threshold at or above log_alpha_clip (a typo of 3.0 as 30) pruned nothing and wrote the dense model as
    the 'compressed' one; the recipe refuses it, and so does export now."""
    before = _snapshot(project)
    result = CliRunner().invoke(cli, ["export", "run", "--threshold", value, "-o", "t.onnx"])
    _one_line_error(result, "prunes no weight", "(−10, 10)")
    assert _snapshot(project) == before


@pytest.mark.parametrize("value", [-4.0, 0.0])
def test_reexport_snr_threshold_that_prunes_nothing(project: Path, value: float) -> None:
    """A log α threshold given to a signal-to-noise method (an SNR is ≥ 0): refused by name, before the checkpoint
    is read."""
    from prunedrop.pipeline import reexport
    from prunedrop.recipes import Recipe

    with pytest.raises(PrunedropError, match="no signal-to-noise threshold"):
        reexport(_model(project), _data(), Recipe(method="sbp"), project / "run", project / "t.onnx",
                 threshold=value)
    assert not (project / "t.onnx").exists()


def test_export_defaults_to_the_threshold_the_run_chose(project: Path) -> None:
    """Without --threshold, export took the recipe's threshold (3), not the one the run's sweep chose (report.json):
    `prunedrop export RUN` wrote another model than the run's (a digits MLP: 43,317 parameters where the run had
    18,987). Here the run's report is edited to a chosen threshold of 1."""
    _edit_json(project / "run" / "report.json", lambda r: r.update(threshold=1.0))
    result = CliRunner().invoke(cli, ["export", "run", "-o", "again.onnx"])
    assert result.exit_code == 0, result.output
    assert "threshold 1: the one the run chose" in result.output
    assert "threshold 1: kept" in result.output
    assert (project / "again.onnx").is_file()


def test_export_of_a_run_without_report_takes_the_recipes_threshold(project: Path) -> None:
    (project / "run" / "report.json").unlink()
    result = CliRunner().invoke(cli, ["export", "run", "-o", "again.onnx"])
    assert result.exit_code == 0, result.output
    assert "threshold 3: the run's recipe's, as report.json is missing" in result.output


# ------------------------------------------------------------------------------- export: other inputs than the run's


def _shuffle_validation(folder: Path) -> None:
    arrays = dict(np.load(folder / "data.npz"))
    arrays["x_val"] = arrays["x_val"][::-1].copy()  # the labels no longer go with their inputs
    np.savez(folder / "data.npz", **arrays)


def _retrain_model(folder: Path) -> None:
    import torch

    state = torch.load(folder / "model.pt", weights_only=True)
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, folder / "model.pt")


@pytest.mark.parametrize(("edit", "needle"), [(_shuffle_validation, "the data's samples"),
                                              (_retrain_model, "the model file's content")])
def test_export_refuses_inputs_that_are_not_the_runs(project: Path, edit, needle: str) -> None:
    """run.json records the identity of the run's model file and data, and --resume checks it; export did not, and
    reported (and, with --quantize, budgeted) a metric measured on other data: 42.5% where the run's data gives 72.5%
    when the validation labels no longer go with their inputs."""
    edit(project)
    result = CliRunner().invoke(cli, ["export", "run", "-o", "again.onnx"])
    _one_line_error(result, needle, "differ")
    assert not (project / "again.onnx").exists()


def test_a_refused_resume_leaves_no_temporary_folder(project: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """compress exports the original to a temporary folder before --resume compares the inputs with run.json's; a
    refusal there left that folder behind for as long as the process (here the test runner) lived."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    _retrain_model(project)
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz",
                                      "--recipe", "recipe.yaml", "-q", "-o", "run", "--resume"])
    _one_line_error(result, "the model file's content", "differ")
    assert not [p.name for p in scratch.iterdir() if p.name.startswith("prunedrop-original-")]


def test_an_export_that_fails_its_check_names_the_output_not_a_deleted_temporary_file(
        project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """export writes the ONNX file in a temporary folder beside -o and verifies it there; a file that failed the
    check was named by that folder's path (.prunedrop-export-*/model.onnx), deleted by the time the line is read."""
    from prunedrop.export import runtime

    real = runtime.run_session  # what onnxruntime returns, shifted as a broken exporter would
    monkeypatch.setattr(runtime, "run_session",
                        lambda path, x, **kw: [np.asarray(a) + np.float32(0.5) for a in real(path, x, **kw)])
    result = CliRunner().invoke(cli, ["export", "run", "-o", "again.onnx"])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    error = result.output.strip().splitlines()[-1]
    assert "differs from PyTorch" in error and "again.onnx" in error and "nothing was written" in error, error
    assert "prunedrop-export-" not in result.output and not (project / "again.onnx").exists()
    assert not [p for p in project.iterdir() if p.name.startswith(".prunedrop-export-")]
    # -o in folders that do not exist yet: they are made for the file, and not left behind without it
    result = CliRunner().invoke(cli, ["export", "run", "-o", "new/sub/again.onnx"])
    assert result.exit_code == 1 and "differs from PyTorch" in result.output, result.output
    assert not (project / "new").exists()


def test_a_run_whose_checkpoints_hold_a_compiled_submodule_still_exports_and_resumes(project: Path) -> None:
    """A model with a torch.compile'd submodule runs uncompiled now (storage.unwrap_compiled), but a run that an
    earlier prunedrop made of it saved its checkpoints with the wrapper's ``_orig_mod.`` inside the keys
    (``net._orig_mod.1.weight``): export and --resume said the checkpoint does not fit the model."""
    import torch

    for name in ("checkpoint-variational.pt", "checkpoint-masked.pt"):
        path = project / "run" / name
        state = torch.load(path, weights_only=True)
        state["model"] = {k.replace("net.", "net._orig_mod.", 1): v for k, v in state["model"].items()}
        torch.save(state, path)
    result = CliRunner().invoke(cli, ["export", "run", "-o", "again.onnx"])
    assert result.exit_code == 0, result.output
    assert (project / "again.onnx").is_file()
    resumed = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz",
                                       "--recipe", "recipe.yaml", "-q", "-o", "run", "--resume"])
    assert resumed.exit_code == 0, resumed.output


def test_export_of_a_checkpoint_that_is_a_folder(project: Path) -> None:
    checkpoint = project / "run" / "checkpoint-variational.pt"
    checkpoint.unlink()
    checkpoint.mkdir()
    result = CliRunner().invoke(cli, ["export", "run", "-o", "again.onnx"])
    _one_line_error(result, "is not a file")
    assert not (project / "again.onnx").exists()


# ------------------------------------------------------------------------------- report


def test_report_of_an_unfinished_run_says_so(project: Path) -> None:
    """A run interrupted (or stopped over its budget) has run.json and a checkpoint but no report.json: `report` said
    'run `prunedrop compress` with this output folder first', which a non-empty folder refuses."""
    (project / "run" / "report.json").unlink()
    result = CliRunner().invoke(cli, ["report", "run"])
    _one_line_error(result, "interrupted", "--resume", "prunedrop export run")
    result = CliRunner().invoke(cli, ["report", "run", "run"])
    _one_line_error(result, "interrupted")


@pytest.mark.parametrize("second", ["run", "./run/", "link", "absolute"])
def test_report_of_one_run_given_twice(project: Path, second: str) -> None:
    """`report run run` printed one column without a word, and `report run ./link` two columns of one run, as if two
    runs were compared."""
    os.symlink("run", project / "link")
    second = str(project / "run") if second == "absolute" else second
    result = CliRunner().invoke(cli, ["report", "run", second])
    assert result.exit_code == 0, result.output
    assert "note: run is given twice" in result.output and "shown once" in result.output
    header = next(line for line in result.output.splitlines() if "run" in line and "note" not in line)
    assert header.split() == ["run"], header  # one column


def test_report_of_two_runs_still_compares_them(project: Path) -> None:
    shutil.copytree(project / "run", project / "other")
    result = CliRunner().invoke(cli, ["report", "run", "other"])
    assert result.exit_code == 0, result.output
    assert "run" in result.output.splitlines()[0] and "other" in result.output.splitlines()[0]
    assert "note:" not in result.output  # one model and data: the metrics compare


def test_report_of_runs_on_other_models_or_data_says_so(project: Path) -> None:
    """Runs of different models and data side by side showed their metrics row by row with nothing to say that
    98.61 and 82.5 were accuracies of different models on different data."""
    shutil.copytree(project / "run", project / "other")
    _edit_json(project / "other" / "report.json", lambda r: r["source"].update(model="big.pt", data="digits"))
    result = CliRunner().invoke(cli, ["report", "run", "other"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[2].split() == ["model", "model.pt", "big.pt"] and lines[3].split() == ["data", "npz:data.npz", "digits"]
    assert "note: these runs compressed different models, data or metrics" in result.output


# ------------------------------------------------------------------------------- the Python functions


def _model(folder: Path):
    from prunedrop.storage import load_model

    return load_model(folder / "model.pt", arch="tinyarch:build")


def _data():
    from prunedrop.data import load_data

    return load_data("npz:data.npz")


@pytest.mark.parametrize("wrong", ["model", "data", "recipe", "threshold-str", "threshold-bool"])
def test_reexport_with_arguments_of_the_wrong_kind(project: Path, wrong: str) -> None:
    """reexport(None, ...) stopped with "'NoneType' object has no attribute 'cpu'" deep in the conversion; a
    threshold given as a string with "must be real number, not str"; True was taken as the threshold 1."""
    from prunedrop.pipeline import read_run_info, reexport
    from prunedrop.recipes import Recipe

    args = {"model": _model(project), "data": _data(),
            "recipe": Recipe.from_dict(read_run_info("run")["recipe"], saved_run=True)}
    threshold = {"threshold-str": "3", "threshold-bool": True}.get(wrong)
    if wrong in args:
        args[wrong] = None
    name = wrong.partition("-")[0]
    with pytest.raises(TypeError, match=f"reexport: {name} must be"):
        reexport(args["model"], args["data"], args["recipe"], "run", "again.onnx", threshold=threshold)
    assert not (project / "again.onnx").exists()


@pytest.mark.parametrize(("version", "needle"), [(2, "newer prunedrop"), (10**30, "newer prunedrop"),
                                                 (0, "run `prunedrop compress` again"), ("1", "not a whole number"),
                                                 (1.5, "not a whole number"), (float("inf"), "not a whole number"),
                                                 (float("nan"), "not a whole number"), (True, "not a whole number")])
def test_report_of_another_schema_version(project: Path, version, needle: str) -> None:
    """A report.json of a newer prunedrop was told to 'run the report stage again with this version' (there is no
    such command, and it would need the newer prunedrop); one that is no whole number ("1", 1.5, NaN, true) was
    called a schema version as well."""
    _edit_json(project / "run" / "report.json", lambda r: r.update(schema_version=version))
    for args in (["report", "run"], ["report", "run", "--no-render"]):
        _one_line_error(CliRunner().invoke(cli, args), needle)
    # 1.0 is the version 1
    _edit_json(project / "run" / "report.json", lambda r: r.update(schema_version=1.0))
    assert CliRunner().invoke(cli, ["report", "run", "--no-render"]).exit_code == 0


# ------------------------------------------------------------------------------- export: what is left at -o


@pytest.mark.parametrize("overwrite", [False, True])
def test_export_that_fails_its_check_leaves_no_file_and_keeps_the_old_one(project: Path, overwrite: bool,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The ONNX file was written at -o and then checked with onnxruntime: a file that failed the check (a parity
    error; onnxruntime unable to open a path that is not UTF-8) stayed at -o, and the file that --overwrite was to
    replace was gone already."""
    import prunedrop.stages.exporting as exporting
    from prunedrop.errors import ParityError

    def fails(*args, **kwargs):
        raise ParityError("onnxruntime and PyTorch disagree (test)")

    monkeypatch.setattr(exporting, "verify_onnx", fails)
    if overwrite:
        (project / "mine.onnx").write_bytes(b"old")
    result = CliRunner().invoke(cli, ["export", "run", "--threshold", "3", "-o", "mine.onnx",
                                      *(["--overwrite"] if overwrite else [])])
    _one_line_error(result, "disagree")
    assert (project / "mine.onnx").read_bytes() == b"old" if overwrite else not (project / "mine.onnx").exists()
    assert not [p for p in project.iterdir() if p.name.startswith(".prunedrop")]


def test_export_to_a_path_that_is_not_utf8(project: Path) -> None:
    """onnxruntime's binding cannot take a path that is not UTF-8 ("incompatible constructor arguments"): export
    wrote the file, then stopped with "onnxruntime cannot load ...; re-export the model" and left it there."""
    name = os.fsdecode(b"caf\xe9.onnx")  # Latin-1 bytes in a Linux file name
    try:
        (project / name).write_bytes(b"")
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system takes only UTF-8 names")
    (project / name).unlink()
    from prunedrop.export import run_onnx
    from prunedrop.pipeline import read_run_info, reexport
    from prunedrop.recipes import Recipe

    recipe = Recipe.from_dict(read_run_info("run")["recipe"], saved_run=True)
    reexport(_model(project), _data(), recipe, "run", name)

    x = np.load(project / "data.npz")["x_val"][:4]
    assert run_onnx(project / name, x).shape == (4, 3)


def test_export_into_a_folder_that_does_not_exist_yet(project: Path) -> None:
    result = CliRunner().invoke(cli, ["export", "run", "-o", "new/folder/again.onnx"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in (project / "new" / "folder").iterdir()] == ["again.onnx"]


@pytest.mark.parametrize("command", ["export", "compress"])
def test_output_dash_is_refused_not_written_as_a_file_named_dash(project: Path, command: str) -> None:
    """`export RUN -o -` wrote a file named '-' (and `compress -o -` a folder named '-'), where '-' usually means
    standard output; ./- still names such a file."""
    args = ["export", "run", "-o", "-"] if command == "export" else \
        ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz", "-o", "-"]
    before = _snapshot(project)
    result = CliRunner().invoke(cli, args)
    _one_line_error(result, "-o -: ", "standard output", "./-")
    assert not (project / "-").exists() and _snapshot(project) == before


@pytest.mark.parametrize("other", [["--data", "digits"], ["--data", "npz:data.npz"], ["--data-dir", "."]])
def test_inspect_input_shape_with_data_is_refused(project: Path, other: list[str]) -> None:
    """`inspect --input-shape 16 --data digits` ignored --data without a word, although the usage gives them as
    alternatives ([--data SPEC | --input-shape C,H,W])."""
    result = CliRunner().invoke(cli, ["inspect", "model.pt", "--arch", "tinyarch:build", "--input-shape", "16",
                                      *other])
    _one_line_error(result, f"--input-shape and {other[0]} are alternatives")
    alone = CliRunner().invoke(cli, ["inspect", "model.pt", "--arch", "tinyarch:build", "--input-shape", "16"])
    assert alone.exit_code == 0, alone.output


# ------------------------------------------------------------------------------- inspect: the user's code exits


def _exits():
    import sys

    sys.exit(7)


class _ExitsOnUnpickling:
    def __reduce__(self):
        return (_exits, ())


@pytest.mark.parametrize("case", ["factory", "pickle"])
def test_user_code_that_calls_sys_exit_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           case: str) -> None:
    """An --arch factory, or the code a trusted pickle runs, that calls sys.exit() ended `inspect` (and `compress`,
    `export`) silently with its status; the data function's failing so is one line already."""
    import sys

    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "exitarch.py").write_text("import sys\n\n\ndef build():\n    sys.exit(5)\n")
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "sd.pt")
    torch.save(_ExitsOnUnpickling(), tmp_path / "exits.pt")
    args = ["inspect", "sd.pt", "--arch", "exitarch:build"] if case == "factory" else \
        ["inspect", "exits.pt", "--trust-pickle"]
    try:
        result = CliRunner().invoke(cli, [*args, "--input-shape", "4"])
    finally:
        sys.modules.pop("exitarch", None)
    _one_line_error(result, "SystemExit")


_EXITING = """
import sys

import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x):
        {forward}
        return self.fc(x.flatten(1))


def build():
    return Net()


class Samples(torch.utils.data.Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, i):
        sys.exit(3)


def data():
    return Samples(), Samples()
"""


@pytest.mark.parametrize(("case", "forward", "needles"), [
    ("inspect-shape", "sys.exit(5)", ["the model's code (its forward)", "SystemExit(5)", "exitnet.py:13 in forward()"]),
    ("inspect-data", "sys.exit(5)", ["the model's code (its forward)", "SystemExit(5)"]),
    ("inspect-shape", "sys.exit()", ["the model's code (its forward)", "SystemExit()"]),
    ("inspect-shape", "exit('bye')", ["SystemExit('bye')", "exitnet.py:13 in forward()"]),
    ("compress", "sys.exit(5)", ["the model's code (its forward)", "SystemExit(5)"]),
    ("compress-data", "pass", ["the data's code", "SystemExit(3)", "in __getitem__()"]),
])
def test_forward_or_data_that_calls_sys_exit_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 case: str, forward: str, needles: list[str]) -> None:
    """A model whose forward calls sys.exit() (inspect's and compress's first forward passes: assemble.runs_on,
    fit_inputs, task.py), or a Dataset whose __getitem__ does, ended prunedrop silently with the code's status (0 for
    sys.exit(): a "success" that wrote nothing); each place prunedrop runs the user's code is covered by the command
    group (errors.exit_error), which names what raised it and where."""
    import sys

    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "exitnet.py").write_text(_EXITING.replace("{forward}", forward))
    torch.save({f"fc.{k}": v for k, v in torch.nn.Linear(64, 10).state_dict().items()}, tmp_path / "sd.pt")
    model = ["sd.pt", "--arch", "exitnet:build"]
    args = {"inspect-shape": ["inspect", *model, "--input-shape", "64"],
            "inspect-data": ["inspect", *model, "--data", "digits"],
            "compress": ["compress", *model, "-o", "out"],
            "compress-data": ["compress", *model, "--data", "python:exitnet:data", "-o", "out"]}[case]
    try:
        result = CliRunner().invoke(cli, args)
    finally:
        sys.modules.pop("exitnet", None)
    _one_line_error(result, "raise an exception, not exit", *needles)
    assert not (tmp_path / "out").exists()


def test_keyboard_interrupt_in_a_forward_is_not_turned_into_an_error(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C stays Ctrl-C: only SystemExit is the one-line error."""
    import sys

    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "exitnet.py").write_text(_EXITING.replace("{forward}", "raise KeyboardInterrupt"))
    torch.save({f"fc.{k}": v for k, v in torch.nn.Linear(64, 10).state_dict().items()}, tmp_path / "sd.pt")
    try:
        result = CliRunner().invoke(cli, ["inspect", "sd.pt", "--arch", "exitnet:build", "--input-shape", "64"])
    finally:
        sys.modules.pop("exitnet", None)
    assert result.exit_code == 1 and "Aborted!" in result.output, result.output
    assert "SystemExit" not in result.output


# ------------------------------------------------------------------------------- recipe errors name their source


@pytest.mark.parametrize(("command", "edit", "needles"), [
    ("export", lambda r: r.update(zzz=1), ["unknown key 'zzz'", "newer prunedrop"]),
    ("resume", lambda r: r.update(zzz=1), ["unknown key 'zzz'", "newer prunedrop"]),
    ("export", lambda r: r.update(epochs="x"), ["recipe key 'epochs' must be a whole number", "edited"]),
    ("resume", lambda r: r.update(epochs="x"), ["recipe key 'epochs' must be a whole number", "edited"]),
    ("export", lambda r: r.update(threshold=99.0), ["recipe key 'threshold' = 99.0 must lie inside"]),
])
def test_a_run_json_recipe_error_names_run_json(project: Path, command: str, edit, needles: list[str]) -> None:
    """A run.json whose recipe holds a key this prunedrop does not know (a newer one wrote it) said "unknown key
    'zzz'; valid keys ..." with no hint of a newer version, and a value of the wrong type "recipe key 'epochs' must
    be ..." without saying the value came from run.json (--resume compared it without a word)."""
    _edit_json(project / "run" / "run.json", lambda info: edit(info["recipe"]))
    before = _snapshot(project)
    args = ["export", "run", "-o", "again.onnx"] if command == "export" else \
        ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz", "-o", "run", "--resume"]
    result = CliRunner().invoke(cli, args)
    _one_line_error(result, "the recipe recorded in run/run.json: ", *needles)
    assert _snapshot(project) == before


@pytest.mark.parametrize(("text", "needles"), [
    ("epochs: -1\n", ["recipe r.yaml: recipe key 'epochs' = -1 must be ≥ 0"]),
    ("lr: fast\n", ["recipe r.yaml: recipe key 'lr' must be a number"]),
    ("kl_weight: 1\ntarget: flops=2x\n", ["recipe r.yaml: recipe key 'target' cannot be combined"]),
    ("version: 3\n", ["recipe r.yaml: version 3", "newer prunedrop"]),
    ("zzzqqq: 1\n", ["recipe r.yaml: unknown key 'zzzqqq'", "newer prunedrop"]),
])
def test_a_recipe_file_error_names_the_file(project: Path, text: str, needles: list[str]) -> None:
    """A recipe file's value that fails its key's check said "recipe key 'epochs' = -1 must be ≥ 0" without naming
    the file (its unknown keys named it already)."""
    (project / "r.yaml").write_text(text)
    result = CliRunner().invoke(cli, ["inspect", "model.pt", "--arch", "tinyarch:build", "--input-shape", "16",
                                      "--recipe", "r.yaml"])
    _one_line_error(result, *needles)


# ------------------------------------------------------------------------------- input paths that are no file


def _no_file(kind: str, path: Path) -> str:
    """Make ``path`` something other than a readable file; return its name as given on the command line."""
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dangling":
        path.symlink_to(path.parent / "nowhere")
    elif kind == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "behind-a-file":
        path.write_text("x")
        return f"{path.name}/inside"
    elif kind == "too-long":
        return "n" * 300
    return path.name


_NO_FILE = {"folder": "is a folder, not a file", "fifo": "is a FIFO, not a file", "dangling": "a dangling link",
            "behind-a-file": "a part of its path is a file", "too-long": "File name too long"}


@pytest.mark.parametrize("kind", [*_NO_FILE, "binary"])
def test_a_recipe_path_that_is_no_file_says_what_it_is(project: Path, kind: str) -> None:
    """`inspect --recipe <a folder>` (or a FIFO, a path behind a file, a name too long) said "recipe file ... does not
    exist"; one check (safety.not_a_file) tells them apart for the recipe, the model file and the data files."""
    given = _no_file(kind, project / "r.yaml")
    result = CliRunner().invoke(cli, ["inspect", "model.pt", "--arch", "tinyarch:build", "--input-shape", "4",
                                      "--recipe", given])
    _one_line_error(result, _NO_FILE.get(kind, "is not UTF-8 text"))
    assert "does not exist" not in result.output or kind == "behind-a-file"


@pytest.mark.parametrize("kind", ["fifo", "dangling"])
def test_a_model_path_that_is_no_file_says_what_it_is(project: Path, kind: str) -> None:
    """A FIFO as the model was "model file ... is empty (0 bytes): save it again"."""
    given = _no_file(kind, project / "m.pt")
    result = CliRunner().invoke(cli, ["inspect", given, "--arch", "tinyarch:build", "--input-shape", "4"])
    _one_line_error(result, _NO_FILE[kind])
    assert "empty" not in result.output and "does not exist" not in result.output


@pytest.mark.parametrize(("spec", "kind", "says"), [
    ("npz", "folder", "is a folder, not a file; name the file in it"),
    ("npz", "fifo", "is a FIFO, not a file"),
    ("csv", "fifo", "is a FIFO, not a file"),
    ("npz", "binary", "binary data of another kind"),
])
def test_a_data_path_that_is_no_file_says_what_it_is(project: Path, spec: str, kind: str, says: str) -> None:
    """npz:<random bytes> was "This file contains pickled (object) data ... allow_pickle=" (NumPy's guess), a FIFO "is
    not a regular file (a FIFO, device or socket)"."""
    given = _no_file(kind, project / f"d.{spec}")
    result = CliRunner().invoke(cli, ["inspect", "model.pt", "--arch", "tinyarch:build", "--data", f"{spec}:{given}"])
    _one_line_error(result, says)
    assert "does not exist" not in result.output and "pickled" not in result.output


# ------------------------------------------------------------------------------- the Python API: wrong kinds


def _load_model_calls():
    import torch

    from prunedrop.storage import load_model

    model_file = str(OLD_RUN / "model.pt")
    return {
        "path-none": (lambda: load_model(None), "path must be"),
        "path-module": (lambda: load_model(torch.nn.Linear(2, 2)), "the model is loaded already"),
        "arch-int": (lambda: load_model(model_file, arch=5), "arch must be"),
        "kwargs-json-text": (lambda: load_model(model_file, arch="tinyarch:build", arch_kwargs='{"a": 1}'),
                             "parse_arch_kwargs"),
        "kwargs-list": (lambda: load_model(model_file, arch="tinyarch:build", arch_kwargs=[1]), "arch_kwargs must be"),
    }


def _inspect_calls():
    import torch

    from prunedrop.inspection import inspect_model
    from prunedrop.recipes import Recipe

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.zeros(2, 1, 4, 4)
    return {
        "model-none": (lambda: inspect_model(None, x, Recipe()), "model must be"),
        "recipe-none": (lambda: inspect_model(model, x, None), "recipe must be a Recipe"),
        "recipe-dict": (lambda: inspect_model(model, x, {"method": "sbp"}), "recipe must be a Recipe"),
        "input-numpy": (lambda: inspect_model(model, x.numpy(), Recipe()), "torch.as_tensor"),
    }


@pytest.mark.parametrize("case", sorted(_load_model_calls()) + sorted(_inspect_calls()))
def test_api_arguments_of_the_wrong_kind(case: str) -> None:
    """load_model(path, arch=5) stopped with "'int' object has no attribute 'partition'", arch_kwargs given as the JSON
    text with "dictionary update sequence element #0 has length 1"; inspect_model(model, x, None) with "'NoneType'
    object has no attribute 'method'", a NumPy input with "needs an example input batch with at least one sample"."""
    call, needle = {**_load_model_calls(), **_inspect_calls()}[case]
    with pytest.raises(TypeError, match=needle):
        call()


# ------------------------------------------------------------------------------- export: a damaged checkpoint


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_export_of_a_damaged_checkpoint_says_what_to_do(project: Path, damage: str) -> None:
    """An empty checkpoint was answered "save it again" (prunedrop writes it, not the user); a truncated one named no
    way out."""
    checkpoint = project / "run" / "checkpoint-variational.pt"
    checkpoint.write_bytes(b"" if damage == "empty" else checkpoint.read_bytes()[:200])
    result = CliRunner().invoke(cli, ["export", "run", "-o", "again.onnx"])
    _one_line_error(result, "it was damaged", "run `prunedrop compress` again")
    assert "save it again" not in result.output
    assert not (project / "again.onnx").exists()
