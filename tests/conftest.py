"""Shared test settings and fixtures."""

from pathlib import Path

import pytest
import torch

from prunedrop.testing import write_tiny_project

# The tests use tiny models: one thread is faster than several, and keeps parallel jobs on a small
# machine from oversubscribing its cores.
torch.set_num_threads(1)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user's folder as the CLI sees it (:func:`prunedrop.testing.write_tiny_project`), as the current folder.
    Test modules with a folder of their own define their own ``project``."""
    write_tiny_project(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path
