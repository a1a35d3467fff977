"""Tests for prunedrop.plots: every figure is written as a non-empty PNG, atomically, without pyplot."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("matplotlib")

from prunedrop.convert import to_variational, variational_layers  # noqa: E402
from prunedrop.errors import PrunedropError  # noqa: E402
from prunedrop.plots import (  # noqa: E402
    plot_kept_per_layer,
    plot_log_alpha_histograms,
    plot_sweep,
    plot_training_curves,
)
from prunedrop.recipes import Recipe  # noqa: E402
from prunedrop.sweep import SweepPoint  # noqa: E402
from prunedrop.testing import TinyMLP  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

REPORT = {
    "layers": [
        {"name": "fc1", "type": "Linear", "params_before": 235500, "params_after": 4200},
        {"name": "bn", "type": "BatchNorm1d", "params_before": 600, "params_after": 600},
        {"name": "fc2", "type": "Linear", "params_before": 30100, "params_after": 0},
        {"name": "extra", "type": "Linear", "params_before": None, "params_after": 12},
    ]
}

HISTORY = [
    {"phase": "variational", "epoch": 1, "loss": 0.9, "data_loss": 0.5, "kl": 4000.0, "beta": 0.5,
     "val_loss": 0.45, "val_accuracy": 91.0, "kept_fraction": 1.0},
    {"phase": "variational", "epoch": 2, "loss": 0.6, "data_loss": 0.4, "kl": 2000.0, "beta": 1.0,
     "val_loss": 0.41, "val_accuracy": 92.5, "kept_fraction": 0.4},
    {"phase": "variational", "epoch": 3, "loss": 0.5, "data_loss": 0.35, "kl": 1500.0, "beta": 1.0,
     "val_loss": 0.40, "val_accuracy": 93.0, "kept_fraction": 0.1},
    {"phase": "masked", "epoch": 1, "loss": 0.3, "val_loss": 0.38, "val_accuracy": 93.4,
     "kept_fraction": 0.1},
]


def _point(threshold: float, metric: float, params: int) -> SweepPoint:
    return SweepPoint(threshold=threshold, metric=metric, kept_weights=params, total_weights=1000,
                      params=params, total_params=1000, nonzero_macs=params, macs=1000)


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    # written atomically: no temporary file left beside it
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")] == []


def test_kept_per_layer(tmp_path):
    out = plot_kept_per_layer(REPORT, tmp_path / "plots" / "kept.png")
    assert out == tmp_path / "plots" / "kept.png"
    _assert_png(out)
    _assert_png(plot_kept_per_layer({"layers": []}, tmp_path / "empty.png"))


def test_log_alpha_histograms(tmp_path):
    torch.manual_seed(0)
    model = to_variational(TinyMLP(), Recipe())
    with torch.no_grad():
        for layer in variational_layers(model).values():
            layer.log_sigma2.uniform_(-12, 2)
    _assert_png(plot_log_alpha_histograms(model, tmp_path / "log_alpha.png", 3.0))
    _assert_png(plot_log_alpha_histograms(model, tmp_path / "log_alpha_own.png"))
    with pytest.raises(PrunedropError, match="before prune"):
        plot_log_alpha_histograms(TinyMLP(), tmp_path / "nope.png")
    assert not (tmp_path / "nope.png").exists()


def test_sweep_plot(tmp_path):
    points = [_point(-1.0, 80.0, 10), _point(0.0, 97.0, 100), _point(3.0, 98.6, 900), _point(-2.0, 50.0, 0)]
    _assert_png(plot_sweep(points, tmp_path / "sweep.png", chosen=points[1], metric_name="accuracy",
                           metric_before=98.6, max_metric_drop=2.0))
    _assert_png(plot_sweep(points[:1], tmp_path / "sweep1.png"))
    with pytest.raises(PrunedropError):
        plot_sweep([], tmp_path / "none.png")


def test_training_curves(tmp_path):
    _assert_png(plot_training_curves(HISTORY, tmp_path / "training.png"))
    _assert_png(plot_training_curves([{"phase": "masked", "epoch": 1, "loss": 1.0}], tmp_path / "one.png"))
    with pytest.raises(PrunedropError):
        plot_training_curves([], tmp_path / "none.png")


def test_pyplot_is_not_used(tmp_path):
    # a library must not switch the user's backend or keep figures alive in pyplot's registry
    plot_kept_per_layer(REPORT, tmp_path / "kept.png")
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


def _variational_mlp():
    torch.manual_seed(0)
    return to_variational(TinyMLP(), Recipe())


@pytest.mark.parametrize("plot", [
    lambda path: plot_kept_per_layer(REPORT, path),
    lambda path: plot_log_alpha_histograms(_variational_mlp(), path),
    lambda path: plot_sweep([_point(3.0, 90.0, 10)], path),
    lambda path: plot_training_curves(HISTORY, path),
], ids=["kept", "log_alpha", "sweep", "training"])
def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch, plot):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(PrunedropError, match=r"pip install prunedrop\[plots\]"):
        plot(tmp_path / "t.png")
    assert not (tmp_path / "t.png").exists()


def test_training_curves_draw_beta_and_the_autopilot_drop(tmp_path):
    history = [{"phase": "variational", "epoch": i, "loss": 1.0 / i, "val_accuracy": 90.0, "kept_fraction": 1 / i,
                "beta_now": 0.1 * 2**i, "val_drop_smoothed": 0.1 * i} for i in range(1, 6)]
    with_beta = plot_training_curves(history, tmp_path / "beta.png")
    without = plot_training_curves([{k: v for k, v in r.items() if k not in ("beta_now", "val_drop_smoothed")}
                                    for r in history], tmp_path / "plain.png")
    _assert_png(with_beta)
    from PIL import Image

    # the β panel makes the figure wider
    assert Image.open(with_beta).size[0] > Image.open(without).size[0]


def test_training_curves_draw_a_coarse_validation_sets_own_drop(tmp_path, monkeypatch):
    """Where the checks pool training samples with a coarse validation set, the drop on the validation samples alone
    (held to the whole budget) is drawn beside the pooled one."""
    from prunedrop import plots

    saved = []
    real = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig) or real(fig, path))
    history = [{"phase": "variational", "epoch": i, "loss": 1.0 / i, "val_accuracy": 90.0, "kept_fraction": 1 / i,
                "beta_now": 0.1 * 2**i, "val_drop_smoothed": 0.1 * i, "val_only_drop_smoothed": 0.3 * i}
               for i in range(1, 6)]
    _assert_png(plot_training_curves(history, tmp_path / "coarse.png"))
    labels = {line.get_label() for ax in saved[0].axes for line in ax.get_lines()}
    assert {"val_drop_smoothed", "val_only_drop_smoothed"} <= labels
    assert "val_accuracy" in labels  # the metric panel still shows the metric, not a drop
