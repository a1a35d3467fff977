"""Interruptions lose nothing, failures say what to do, and earlier files survive a failed write."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from prunedrop import atomic
from prunedrop.cli import cli
from prunedrop.errors import PrunedropError
from prunedrop.testing import TINY_RECIPE, write_tiny_project

# long enough to be killed in the middle: 125 batches an epoch
SLOW_RECIPE = TINY_RECIPE.replace("epochs: 8", "epochs: 12").replace("noise_lr: 0.3", "noise_lr: 0.05")
ARGS = ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz", "--recipe",
        "recipe.yaml", "-q"]
# wall-clock measurements, and the quantization, whose speed check decides by them
VOLATILE = {"timings", "seconds", "latency", "quantization"}


def _strip(obj):
    """A report without wall-clock times, which legitimately differ between runs."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _cli(folder: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "prunedrop", *ARGS, *extra], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def _same_result(a: Path, b: Path) -> None:
    wa = torch.load(a / "model.pt", weights_only=True)
    wb = torch.load(b / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ra = _strip(json.loads((a / "report.json").read_text()))
    rb = _strip(json.loads((b / "report.json").read_text()))
    assert ra == rb


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run of the slow recipe."""
    folder = tmp_path_factory.mktemp("reference")
    write_tiny_project(folder, n=2040, n_val=40, recipe=SLOW_RECIPE)
    proc = _cli(folder, "-o", "out")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return folder


def _fresh(tmp_path: Path) -> Path:
    write_tiny_project(tmp_path, n=2040, n_val=40, recipe=SLOW_RECIPE)
    return tmp_path


def test_kill_9_then_resume_gives_the_same_weights_and_report(reference: Path, tmp_path: Path) -> None:
    folder = _fresh(tmp_path)
    proc = _cli(folder, "-o", "out")
    _wait_for(folder / "out" / "checkpoint-variational.pt", proc)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (folder / "out" / "report.json").exists(), "the run finished before it could be killed"
    leftovers = [p.name for p in (folder / "out").iterdir() if p.name.endswith(".tmp")]
    resumed = _cli(folder, "-o", "out", "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    _same_result(reference / "out", folder / "out")
    # a temporary file of the killed process may remain; it is never mistaken for a result
    assert all(name.startswith(".") for name in leftovers)


def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(reference: Path, tmp_path: Path) -> None:
    folder = _fresh(tmp_path)
    proc = _cli(folder, "-o", "out")
    _wait_for(folder / "out" / "checkpoint-variational.pt", proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted during variational epoch" in out and "--resume" in out
    assert "Traceback" not in out
    resumed = _cli(folder, "-o", "out", "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    _same_result(reference / "out", folder / "out")


def test_disk_full_keeps_earlier_files_intact(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    calls = {"n": 0}

    def failing_fsync(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] > 4:  # run.json, original.onnx and a few checkpoints get written, then the disk fills
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    result = CliRunner().invoke(cli, [*ARGS, "-o", "out"])
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output and "intact" in result.output
    assert len(result.output.strip().splitlines()) == 1
    out = project / "out"
    assert not [p for p in out.iterdir() if p.suffix == ".tmp"], "temporary files are removed"
    json.loads((out / "run.json").read_text())  # complete, not half-written
    assert torch.load(out / "checkpoint-variational.pt", weights_only=True)["epoch"] >= 1


def test_atomic_write_failure_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(PrunedropError, match="No space left"):
        atomic.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_output_folder_that_cannot_be_made(project: Path) -> None:
    (project / "afile").write_text("x")
    result = CliRunner().invoke(cli, [*ARGS, "-o", "afile/out"])
    assert result.exit_code == 1 and "is a file, not a folder" in result.output


def test_output_folder_not_writable(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", denied)
    result = CliRunner().invoke(cli, [*ARGS, "-o", "out"])
    assert result.exit_code == 1 and "is not writable (Permission denied)" in result.output


def test_everything_pruned_stops_before_export(project: Path) -> None:
    (project / "prune-all.yaml").write_text("epochs: 0\nkl_warmup_epochs: 0\nthreshold: -9.999\ndevice: cpu\n"
                                                   "max_metric_drop: null\n")
    result = CliRunner().invoke(cli, [*ARGS[:-2], "prune-all.yaml", "-q", "-o", "out"])
    assert result.exit_code == 1, result.output
    assert "nothing would be left to export" in result.output and "lower kl_weight" in result.output
    assert not (project / "out" / "model.onnx").exists()


def test_export_failure_keeps_the_pytorch_result(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prunedrop.stages import exporting

    real = exporting.export_onnx

    def export(model, example, path, **kw):
        if Path(path).name == "model.onnx":
            raise PrunedropError("cannot export to ONNX: operator aten::frobnicate has no ONNX equivalent")
        return real(model, example, path, **kw)

    monkeypatch.setattr(exporting, "export_onnx", export)
    result = CliRunner().invoke(cli, [*ARGS, "-o", "out"])
    assert result.exit_code == 1
    assert "aten::frobnicate" in result.output and "PyTorch result is saved as model.pt" in result.output
    assert (project / "out" / "model.pt").is_file() and (project / "out" / "architecture.json").is_file()


def test_parity_failure_is_an_error(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from prunedrop.export import runtime

    real = runtime.run_session  # what onnxruntime returns, shifted as a broken exporter would
    monkeypatch.setattr(runtime, "run_session",
                        lambda path, x, **kw: [np.asarray(a) + np.float32(0.01) for a in real(path, x, **kw)])
    result = CliRunner().invoke(cli, [*ARGS, "-o", "out"])
    assert result.exit_code == 1, result.output
    assert "differs from PyTorch" in result.output
    # found before any file (the original exported to a temporary folder): run.json was written first
    assert len(result.output.strip().splitlines()) == 1 and "the original's ONNX export" in result.output
    assert "prunedrop-original-" not in result.output and not (project / "out").exists()


def test_an_original_onnxruntime_cannot_run_is_one_line_before_any_file(project: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from prunedrop.export import runtime

    def refuse(path, x, **kw):
        raise PrunedropError(f"onnxruntime cannot run {path}: NOT_IMPLEMENTED: no kernel for Frobnicate(18)")

    monkeypatch.setattr(runtime, "run_session", refuse)
    result = CliRunner().invoke(cli, [*ARGS, "-o", "out"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: before fine-tuning, the original model: onnxruntime cannot run the "
                                    "original's ONNX export (original.onnx): NOT_IMPLEMENTED"), result.output
    assert not (project / "out").exists()
