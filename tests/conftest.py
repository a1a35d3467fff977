"""Shared test settings and fixtures."""

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
