"""Figures of a run: what each layer kept, the learned log α, the threshold sweep and the training curves.

matplotlib is an optional extra (``pip install prunedrop[plots]``) and is imported inside the functions,
so ``import prunedrop`` and the CLI's ``--help`` never pay for it. Figures are drawn on matplotlib's Agg
canvas through ``matplotlib.figure.Figure`` directly, never through pyplot: no global backend switch, no
figure registry to leak memory in a long process, and it works without a display. Every PNG is written
atomically (:func:`prunedrop.atomic.atomic_open`). Each function returns the path it wrote.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .atomic import atomic_open
from .convert import variational_layers
from .errors import PrunedropError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .sweep import SweepPoint

__all__ = ["plot_kept_per_layer", "plot_log_alpha_histograms", "plot_sweep", "plot_training_curves"]

_DPI = 110


def _new_figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PrunedropError("plots need matplotlib: pip install prunedrop[plots]") from None
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attaches the Agg canvas: rendering never depends on the user's backend
    return fig


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png")
    return path


def plot_kept_per_layer(report: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Bars of non-zero parameters before and after, per layer (``report["layers"]``), log scale.

    Each layer is labelled with the share it kept. A layer missing on one side counts 0 there.
    """
    rows = list(report.get("layers") or [])
    fig = _new_figure(max(6.0, 0.55 * len(rows) + 2.0), 4.5)
    ax = fig.add_subplot()
    if not rows:
        ax.text(0.5, 0.5, "no layers in the report", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _save(fig, path)
    names = [r["name"] for r in rows]
    before = [r.get("params_before") or 0 for r in rows]
    after = [r.get("params_after") or 0 for r in rows]
    xs = range(len(rows))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], before, width, label="before", color="#9aa5b1")
    ax.bar([x + width / 2 for x in xs], after, width, label="after", color="#2b6cb0")
    for x, b, a in zip(xs, before, after):
        if b:
            # above the taller bar of the pair: an emptied layer's bar is absent on a log axis
            ax.annotate(f"kept {100 * a / b:.1f}%", (x, max(a, b)), ha="center", va="bottom", fontsize=7,
                        xytext=(0, 2), textcoords="offset points")
    # log scale: a 300x smaller layer must still show; zero bars are simply absent on it
    if any(v > 0 for v in before + after):
        ax.set_yscale("log")
    many = len(rows) > 4
    ax.set_xticks(list(xs), names, rotation=45 if many else 0, ha="right" if many else "center", fontsize=8)
    ax.set_ylabel("non-zero parameters")
    ax.set_title("Parameters per layer, before and after")
    ax.legend()
    return _save(fig, path)


def plot_log_alpha_histograms(
    model: nn.Module, path: str | os.PathLike[str], threshold: float | None = None
) -> Path:
    """One histogram of log α per variational layer, with the pruning threshold as a vertical line.

    ``threshold`` defaults to each layer's own. Only layers with a ``log_alpha`` (sparse and group VD) are
    drawn; call this on the trained variational model, before :func:`prunedrop.prune.prune` replaces its
    layers. Mass right of the line is pruned (Molchanov et al. 2017: log α > 3 means the noise swamps the
    weight).
    """
    layers = {n: m for n, m in variational_layers(model).items() if hasattr(m, "log_alpha")}
    if not layers:
        raise PrunedropError("the model has no variational layer with log α: plot the trained variational "
                             "model, before prune()")
    cols = min(3, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig = _new_figure(4.0 * cols, 2.8 * rows)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (name, layer) in zip(axes.flat, layers.items()):
        with torch.no_grad():
            values = layer.log_alpha.detach().float().cpu().flatten()
        # a layer with unit noise too (sbp_sparse_vd) keeps its log α threshold apart from its unit threshold
        t = getattr(layer, "weight_threshold", layer.threshold if threshold is None else threshold)
        kept = float((values <= t).float().mean()) if values.numel() else 1.0
        # one fixed range for every layer (the clip interval), so that the panels compare at a glance
        clip = float(getattr(layer, "log_alpha_clip", 10.0))
        counts, _, _ = ax.hist(values.numpy(), bins=80, range=(-clip, clip), color="#2b6cb0")
        ax.axvline(t, color="#c53030", linestyle="--", label=f"threshold {t:g}")
        if counts.max() > 100:
            ax.set_yscale("log")  # trained log α pile up at the clip ends; a linear axis hides the rest
        ax.set_title(f"{name or '<root>'}: kept {100 * kept:.1f}% of {values.numel():,}", fontsize=9)
        ax.set_xlabel("log α", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(layers):]:
        ax.set_axis_off()
    return _save(fig, path)


def plot_sweep(
    points: Sequence[SweepPoint],
    path: str | os.PathLike[str],
    chosen: SweepPoint | None = None,
    *,
    metric_name: str = "metric",
    metric_before: float | None = None,
    max_metric_drop: float | None = None,
    higher_is_better: bool = True,
) -> Path:
    """The metric against compression (stored / non-zero parameters, log scale), one point per threshold.

    Each point is labelled with its threshold; ``chosen`` is marked with a star; ``metric_before`` (the
    original model) and the budget ``metric_before − max_metric_drop`` (for a lower-is-better metric such as MSE
    ``metric_before · (1 + max_metric_drop / 100)``, a relative budget in percent) are drawn as horizontal lines
    when given.
    """
    if not points:
        raise PrunedropError("plot_sweep needs at least one sweep point")
    fig = _new_figure(7.0, 4.5)
    ax = fig.add_subplot()
    pts = sorted(points, key=lambda p: p.threshold)
    xs = [p.params_ratio if p.params_ratio is not None else float("nan") for p in pts]
    ys = [p.metric for p in pts]
    ax.plot(xs, ys, "o-", color="#2b6cb0", label="thresholded model")
    for p, x, y in zip(pts, xs, ys):
        ax.annotate(f"{p.threshold:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if metric_before is not None:
        ax.axhline(metric_before, color="#4a5568", linewidth=1, label=f"original {metric_before:.4g}")
        if max_metric_drop is not None:
            budget = (metric_before - max_metric_drop if higher_is_better
                      else metric_before + abs(metric_before) * max_metric_drop / 100.0)
            ax.axhline(budget, color="#c53030", linestyle="--", linewidth=1, label=f"budget {budget:.4g}")
    if chosen is not None and chosen.params_ratio is not None:
        ax.plot([chosen.params_ratio], [chosen.metric], "*", markersize=16, color="#dd6b20",
                label=f"chosen: threshold {chosen.threshold:g}")
    finite = [x for x in xs if math.isfinite(x) and x > 0]
    if finite and max(finite) / min(finite) > 10:
        ax.set_xscale("log")  # compression spans decades (1x ... 100x); a short range reads better linear
    ax.set_xlabel("compression (stored / non-zero parameters)")
    ax.set_ylabel(metric_name)
    ax.set_title("Threshold sweep (labels: threshold)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Loss, validation metric and kept fraction per epoch, from ``report["history"]``.

    Records of the variational phase and of the masked fine-tuning after it are drawn one after the other
    on one epoch axis, with a dotted line where the phase changes; lines are not joined across phases,
    since the variational ``loss`` includes the KL term and the masked one does not. The metric is the
    records' ``val_*`` key other than ``val_loss`` (``val_accuracy`` or ``val_mse``). Missing keys are
    skipped. A fourth panel shows β (the KL weight, log scale) and, when the autopilot chose it, the smoothed
    validation drop it steered by.
    """
    if not history:
        raise PrunedropError("plot_training_curves needs at least one history record")
    has_beta = any(r.get("beta_now", r.get("beta")) is not None for r in history)
    fig = _new_figure(16.0 if has_beta else 12.0, 3.8)  # first: it turns a missing matplotlib into the install hint
    from matplotlib.ticker import MaxNLocator

    xs = list(range(1, len(history) + 1))
    metric_key = next((k for r in history for k in r if k.startswith("val_") and k != "val_loss"), None)
    axes = fig.subplots(1, 4 if has_beta else 3)
    ax_loss, ax_metric, ax_kept = axes[:3]
    # runs of consecutive records of one phase
    segments: list[list[int]] = []
    for i, record in enumerate(history):
        if i == 0 or record.get("phase") != history[i - 1].get("phase"):
            segments.append([])
        segments[-1].append(i)

    def draw(ax: Any, key: str, style: str, color: str) -> None:
        labelled = False
        for seg in segments:
            pairs = [(xs[i], float(history[i][key])) for i in seg if history[i].get(key) is not None]
            if pairs:
                ax.plot([x for x, _ in pairs], [y for _, y in pairs], style, marker=".", color=color,
                        label=None if labelled else key)
                labelled = True

    for key, style, color in (("loss", "-", "#2b6cb0"), ("data_loss", "--", "#dd6b20"),
                              ("val_loss", ":", "#2f855a")):
        draw(ax_loss, key, style, color)
    ax_loss.set_title("loss")
    if metric_key is not None:
        draw(ax_metric, metric_key, "-", "#2b6cb0")
    ax_metric.set_title(metric_key or "metric")
    draw(ax_kept, "kept_fraction", "-", "#dd6b20")
    ax_kept.set_title("kept fraction")
    ax_kept.set_ylim(0, 1.05)
    if has_beta:
        ax_beta = axes[3]
        key = "beta_now" if any(r.get("beta_now") is not None for r in history) else "beta"
        draw(ax_beta, key, "-", "#6b46c1")
        if any((r.get(key) or 0) > 0 for r in history):
            ax_beta.set_yscale("log")
        ax_beta.set_title("β (KL weight)")
        if any(r.get("val_drop_smoothed") is not None for r in history):
            twin = ax_beta.twinx()
            draw(twin, "val_drop_smoothed", ":", "#c53030")
            if any(r.get("val_only_drop_smoothed") is not None for r in history):
                # the checks pool training samples with a coarse validation set: the validation samples' own drop,
                # which is held to the whole budget
                draw(twin, "val_only_drop_smoothed", "--", "#9b2c2c")
                twin.legend(fontsize=7, loc="upper right")
            twin.set_ylabel("validation drop (smoothed)", color="#c53030", fontsize=8)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        for seg in segments[1:]:
            ax.axvline(xs[seg[0]] - 0.5, color="#718096", linestyle=":", linewidth=1)
    if ax_loss.lines:
        ax_loss.legend(fontsize=8)
    phases = [str(history[seg[0]].get("phase") or "") for seg in segments]
    fig.suptitle("Training: " + " then ".join(p for p in phases if p))
    return _save(fig, path)
