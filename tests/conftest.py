"""Shared test settings and fixtures."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from prunedrop.testing import write_tiny_project

# The tests use tiny models: one thread is faster than several, and keeps parallel jobs on a small
# machine from oversubscribing its cores.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _untimed_widths(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slimming with ``channel_multiple: null`` times two slim models and keeps the faster; on the tests' tiny models
    that is a coin toss, so the tests see both equally fast (every pruned channel removed, as before the measured
    default) unless marked ``real_width_timing``. The decision itself is tested with given latencies, the timer on
    its own (tests/test_stages.py)."""
    if request.node.get_closest_marker("real_width_timing") is None:
        from prunedrop.stages import slimming

        monkeypatch.setattr(slimming, "WIDTH_TIMER", lambda plain, rounded, example: {b: (1.0, 1.0) for b in
                                                                                     slimming.WIDTH_BATCHES})


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's folder as the CLI sees it (:func:`prunedrop.testing.write_tiny_project`), as the current folder.
    Test modules with a folder of their own define their own ``project``."""
    write_tiny_project(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path


OLD_RUN = Path(__file__).parent / "data" / "run-v1"


@pytest.fixture
def old_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of tests/data/run-v1 as the current folder: the user's folder (tinyarch.py, model.pt, data.npz,
    recipe.yaml) and the run folder ``run`` that ``prunedrop compress ... -o run`` wrote in it."""
    project = tmp_path / "project"
    shutil.copytree(OLD_RUN, project)
    run_json = project / "run" / "run.json"
    info = json.loads(run_json.read_text())
    info["model_path"] = str(project / "model.pt")  # an absolute path where it was written; the copy lives here
    run_json.write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.chdir(project)
    return project
