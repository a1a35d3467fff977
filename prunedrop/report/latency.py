"""Latency: ONNX Runtime CPU sessions of several models timed in alternation in one process."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..errors import PrunedropError
from .build import ratio


def measure_latency(
    onnx_paths: Mapping[str, str | os.PathLike[str]],
    example_input: torch.Tensor,
    *,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int = 1,
    warmup: int = 5,
    runs: int = 50,
) -> dict:
    """Time ONNX Runtime CPU sessions of several single-input models, alternated in one process.

    For each batch size, every model runs ``warmup`` times, then ``runs`` rounds in which each model runs
    once. The models take turns (and the first of each round rotates), so that machine noise — another
    process, frequency scaling — hits all of them alike; separate timing blocks per model would let a noisy
    minute favour one. Batches are built by cycling the rows of ``example_input``; every model must accept
    each batch size (export with a dynamic batch axis).

    Returns a JSON-able dict: ``baseline`` (the first name), ``threads``, ``warmup``, ``runs``,
    ``onnxruntime_version`` and ``results``, a list of ``{"model", "batch_size", "median_ms", "iqr_ms",
    "p25_ms", "p75_ms", "speedup"}`` with ``speedup`` = baseline median / this median (1.0 for the
    baseline). No paths are stored.
    """
    import onnxruntime as ort

    from ..export import session_source

    if not onnx_paths:
        raise ValueError("measure_latency needs at least one model")
    if runs < 2:
        raise ValueError(f"runs must be at least 2 to give an inter-quartile range, got {runs}")
    if warmup < 0 or threads < 1 or any(b < 1 for b in batch_sizes):
        raise ValueError("warmup must be >= 0, threads >= 1 and every batch size >= 1")

    names = list(onnx_paths)
    sessions = {}
    input_names = {}
    for name in names:
        path = Path(onnx_paths[name])
        if not path.is_file():
            raise PrunedropError(f"cannot time model {name!r}: no ONNX file at {path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: onnxruntime warns about harmless things on load
        sess = ort.InferenceSession(session_source(path), options, providers=["CPUExecutionProvider"])
        inputs = sess.get_inputs()
        if len(inputs) != 1:
            raise PrunedropError(
                f"cannot time model {name!r}: it has {len(inputs)} inputs, latency needs exactly 1"
            )
        fixed_batch = inputs[0].shape[0] if inputs[0].shape else None
        for b in batch_sizes:
            if isinstance(fixed_batch, int) and fixed_batch != b:
                raise PrunedropError(
                    f"cannot time model {name!r} at batch size {b}: its ONNX input has a fixed batch size of "
                    f"{fixed_batch}; export it with a dynamic batch axis or pass batch_sizes=({fixed_batch},)"
                )
        sessions[name] = sess
        input_names[name] = inputs[0].name

    example = example_input.detach().cpu().numpy()
    results = []
    for b in batch_sizes:
        batch = example[[i % example.shape[0] for i in range(b)]]
        feeds = {name: {input_names[name]: batch} for name in names}
        for _ in range(warmup):
            for name in names:
                sessions[name].run(None, feeds[name])
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(runs):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                sess, feed = sessions[name], feeds[name]
                start = time.perf_counter()
                sess.run(None, feed)
                times[name].append((time.perf_counter() - start) * 1e3)
        medians = {name: statistics.median(t) for name, t in times.items()}
        for name in names:
            q1, _, q3 = statistics.quantiles(times[name], n=4, method="inclusive")
            results.append(
                {
                    "model": name,
                    "batch_size": int(b),
                    "median_ms": medians[name],
                    "iqr_ms": q3 - q1,
                    "p25_ms": q1,
                    "p75_ms": q3,
                    "speedup": ratio(medians[names[0]], medians[name]),
                }
            )
    return {
        "baseline": names[0],
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "onnxruntime_version": ort.__version__,
        "results": results,
    }
