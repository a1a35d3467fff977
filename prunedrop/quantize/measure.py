"""Measuring an ONNX file on this CPU: its metric run by onnxruntime (:func:`evaluate_onnx`), its latency beside
other files (:func:`time_models`), and the CPU's int8-relevant instruction sets (:func:`cpu_instruction_sets`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import PrunedropError
from ..metrics import batch_scores, combine_scores, hits, label_accuracy
from ..recipe_groups import is_classification


def evaluate_onnx(path: str | Path, loader: Iterable[Any], *, loss: str = "cross_entropy") -> float:
    """The metric of an ONNX file run by onnxruntime over ``loader`` (accuracy in % over every label, or the mean
    squared error), computed as :func:`prunedrop.train.evaluate` computes it for a torch model."""
    total, right, labels, sq_err, values = 0, 0.0, 0.0, 0.0, 0
    for out, target in _onnx_outputs(path, loader):
        if is_classification(loss):
            # over every label: one per sample, or one per position of a model that predicts per position
            r, counted = hits(torch.from_numpy(out), torch.from_numpy(target), loss)
            right += float(r.sum())
            labels += float(counted.sum())
        else:
            sq_err += float(((out.astype(np.float64) - target.astype(np.float64).reshape(out.shape)) ** 2).sum())
            values += out.size
        total += len(target)
    if total == 0:
        raise PrunedropError("the evaluation data is empty")
    return label_accuracy(right, labels) if is_classification(loss) else sq_err / max(values, 1)


def onnx_sample_scores(path: str | Path, loader: Iterable[Any], *, loss: str = "cross_entropy") -> torch.Tensor:
    """The metric per sample of an ONNX file run by onnxruntime over ``loader``, float64, in loader order, as
    :func:`prunedrop.metrics.sample_scores` gives it for a torch model (100 or 0 per sample, the share of its
    positions right for per-position labels, or its mean squared error): their mean is :func:`evaluate_onnx`'s
    metric, and paired with the original's scores they give the standard error of the change."""
    return combine_scores([batch_scores(torch.from_numpy(out), torch.from_numpy(target), loss)
                           for out, target in _onnx_outputs(path, loader)])


def _onnx_outputs(path: str | Path, loader: Iterable[Any]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(first output, targets) per batch of ``loader``, the ONNX file run by an onnxruntime session."""
    from ..export import feed_session, open_session

    session = open_session(path)
    for x, y in loader:
        yield feed_session(session, path, x)[0], y.detach().cpu().numpy()


Timer = Callable[[Mapping[str, Path]], dict[str, float]]
"""Times ONNX files (name → path) and returns each one's latency in ms (:func:`time_models` on this CPU)."""


def time_models(paths: Mapping[str, str | Path], example: torch.Tensor, *, batch_size: int, threads: int,
                runs: int = 30, warmup: int = 3) -> dict[str, float]:
    """Median onnxruntime CPU latency (ms) of each ONNX file at ``batch_size``, the files taking turns in one
    process (:func:`prunedrop.report.latency.measure_latency`)."""
    from ..report.latency import measure_latency

    raw = measure_latency(paths, example, batch_sizes=(batch_size,), threads=threads, runs=runs, warmup=warmup)
    return {r["model"]: float(r["median_ms"]) for r in raw["results"]}
