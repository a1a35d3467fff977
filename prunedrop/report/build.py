"""Building the report dict: profiles of the original and the compressed model, ratios, metric, parity, and the
check that a report holds no absolute path (reports are shared and committed next to results).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .profile import LayerProfile, count_parameters, profile_model

REPORT_SCHEMA_VERSION = 1
"""Bumped whenever a key of the report dict changes meaning or disappears."""


def ratio(before: float | None, after: float | None) -> float | None:
    """``before / after``; ``None`` when either is missing or ``after`` is 0 (JSON has no infinity)."""
    if before is None or after is None or after == 0:
        return None
    return float(before) / float(after)


def _finite_or_none(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")


def _is_absolute(text: str) -> bool:
    return os.path.isabs(text) or bool(_WINDOWS_ABSOLUTE.match(text))


def public_spec(text: str) -> str:
    """``text`` (a data spec, a data set's name, a file name) without the folders of an absolute path.

    What a report stores of the user's inputs: ``npz:/home/me/data/train.npz`` → ``npz:train.npz``,
    ``idx:/data/fashion`` → ``idx:fashion``, ``/srv/sets/digits`` → ``digits``; relative specs and names
    stay as given.
    """
    if not isinstance(text, str):
        return text
    if _is_absolute(text):
        return re.split(r"[\\/]", text.rstrip("/\\"))[-1] or "root"
    kind, sep, rest = text.partition(":")
    if sep and len(kind) > 1 and re.fullmatch(r"[A-Za-z][\w.-]*", kind) and _is_absolute(rest.strip()):
        return f"{kind}:{public_spec(rest.strip())}"
    return text


#: report keys whose strings are globs over module names, never paths (a glob may start with "/")
_GLOB_KEYS = (("recipe", "include"), ("recipe", "exclude"))


def check_no_absolute_paths(obj: Any, where: str = "report") -> None:
    """Raise ``ValueError`` naming the key of the first absolute path found in ``obj``.

    Reports are shared and committed next to results; an absolute path leaks the user's machine layout
    and makes two otherwise identical runs differ. The recipe's include/exclude globs are module names,
    not paths, and are not checked.
    """
    if isinstance(obj, Mapping) and where == "report" and isinstance(obj.get("recipe"), Mapping):
        obj = {**obj, "recipe": {k: v for k, v in obj["recipe"].items() if ("recipe", k) not in _GLOB_KEYS}}
    if isinstance(obj, str):
        if os.path.isabs(obj) or _WINDOWS_ABSOLUTE.match(obj):
            raise ValueError(
                f"{where} holds an absolute path {obj!r}; store paths relative to the run folder"
            )
    elif isinstance(obj, os.PathLike):
        raise ValueError(f"{where} holds a path object {obj!r}; store it as a relative str")
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            check_no_absolute_paths(k, f"{where} key")
            check_no_absolute_paths(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_no_absolute_paths(v, f"{where}[{i}]")


def _prunedrop_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("prunedrop")
    except PackageNotFoundError:
        return "0.0.0+unknown"


def build_report(
    *,
    original: nn.Module,
    compressed: nn.Module,
    example_input: torch.Tensor,
    metric_name: str,
    metric_before: float | None,
    metric_after: float | None,
    onnx_bytes_before: int | None,
    onnx_bytes_after: int | None,
    parity_max_abs_diff: float | None,
    extra: dict | None = None,
    metric_delta_se: float | None = None,
) -> dict:
    """Compare ``original`` and ``compressed`` and return a JSON-able report dict.

    FLOPs are dense multiply-adds of the linear/conv layers per input sample (:mod:`prunedrop.report.profile`). Ratios
    are ``before / after`` (so 10.0 means ten times smaller) and ``None`` when a side is missing or 0.
    Non-finite metric or parity values become ``None``. The schema:

    * ``schema_version`` (int), ``prunedrop_version`` (str)
    * ``params``: ``before`` / ``after`` (non-zero parameters), ``ratio``, ``total_before`` /
      ``total_after`` (all stored parameters, zero or not)
    * ``flops``: ``unit`` (``"multiply-adds per sample"``), ``before`` (dense, original),
      ``nonzero_before``, ``after`` (dense MACs of the compressed architecture), ``nonzero_after``
      (multiply-adds with a non-zero weight), ``ratio`` (before/after), ``nonzero_ratio``
      (before/nonzero_after), ``uncounted_layers`` (names of parameter-owning layers with no MAC rule)
    * ``onnx_bytes``: ``before``, ``after``, ``ratio``
    * ``metric``: ``name``, ``before``, ``after``, ``delta`` (after − before), ``delta_se`` (``metric_delta_se``:
      the paired standard error of ``delta`` over the samples both were measured on, or ``None``),
      ``higher_is_better`` (false for ``mse``: lower is better, and its budget is the relative increase in percent)
    * ``parity_max_abs_diff``: float or ``None``
    * ``layers``: one dict per parameter-owning module, matched by name (original order, then layers only
      the compressed model has): ``name``, ``type``, ``params_before`` / ``params_after`` (non-zero),
      ``kept_fraction`` (after/before), ``shape_before`` / ``shape_after`` (weight shapes),
      ``macs_before``, ``macs_after``, ``nonzero_macs_after``; the fields of a side that lacks the layer
      are ``None``
    * every key of ``extra`` at the top level (e.g. ``latency`` from :func:`measure_latency`, which the
      writers render). ``extra`` must be JSON-serialisable, must not reuse a key above and, like the rest
      of the report, must not hold absolute paths (``ValueError`` otherwise).
    """
    prof_before = profile_model(original, example_input)
    prof_after = profile_model(compressed, example_input)
    total_before, nonzero_before = count_parameters(original)
    total_after, nonzero_after = count_parameters(compressed)
    flops_before = sum(p.macs for p in prof_before)
    flops_nonzero_before = sum(p.nonzero_macs for p in prof_before)
    flops_after = sum(p.macs for p in prof_after)
    flops_nonzero_after = sum(p.nonzero_macs for p in prof_after)
    uncounted = sorted({p.name or "<root>" for p in (*prof_before, *prof_after) if not p.counted})

    metric_before = _finite_or_none(metric_before)
    metric_after = _finite_or_none(metric_after)
    delta = metric_after - metric_before if metric_before is not None and metric_after is not None else None

    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "prunedrop_version": _prunedrop_version(),
        "params": {
            "before": nonzero_before,
            "after": nonzero_after,
            "ratio": ratio(nonzero_before, nonzero_after),
            "total_before": total_before,
            "total_after": total_after,
        },
        "flops": {
            "unit": "multiply-adds per sample",
            "before": flops_before,
            "nonzero_before": flops_nonzero_before,
            "after": flops_after,
            "nonzero_after": flops_nonzero_after,
            "ratio": ratio(flops_before, flops_after),
            "nonzero_ratio": ratio(flops_before, flops_nonzero_after),
            "uncounted_layers": uncounted,
        },
        "onnx_bytes": {
            "before": onnx_bytes_before,
            "after": onnx_bytes_after,
            "ratio": ratio(onnx_bytes_before, onnx_bytes_after),
        },
        "metric": {"name": metric_name, "before": metric_before, "after": metric_after, "delta": delta,
                   "delta_se": _finite_or_none(metric_delta_se), "higher_is_better": metric_name != "mse"},
        "parity_max_abs_diff": _finite_or_none(parity_max_abs_diff),
        "layers": _layer_rows(prof_before, prof_after),
    }
    if extra:
        clash = sorted(set(extra) & set(report))
        if clash:
            raise ValueError(f"extra keys {clash} clash with the report's own keys; rename them")
        try:
            json.dumps(extra, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"extra is not JSON-serialisable: {e}") from e
        report.update(extra)
    check_no_absolute_paths(report)
    return report


def _layer_rows(before: Sequence[LayerProfile], after: Sequence[LayerProfile]) -> list[dict[str, Any]]:
    by_name_before = {p.name: p for p in before}
    # A layer that slimming wrapped (an embedding whose unused rows left: ``emb`` → ``emb.embedding`` inside a
    # RemappedEmbedding) is one row under its own name, not a layer gone and a new one.
    gone = set(by_name_before) - {p.name for p in after}

    def renamed(p: LayerProfile) -> LayerProfile:
        parent = p.name.rpartition(".")[0]
        wrapped = p.name not in by_name_before and parent in gone and p.type == by_name_before[parent].type
        return dataclasses.replace(p, name=parent) if wrapped else p

    after = [renamed(p) for p in after]
    by_name_after = {p.name: p for p in after}
    names = [p.name for p in before] + [p.name for p in after if p.name not in by_name_before]
    rows = []
    for name in names:
        b, a = by_name_before.get(name), by_name_after.get(name)
        rows.append(
            {
                "name": name or "<root>",  # parameters of the model's own (a forward calling F.linear)
                "type": (b or a).type,  # type: ignore[union-attr]
                "params_before": b.nonzero if b else None,
                "params_after": a.nonzero if a else None,
                "kept_fraction": (
                    a.nonzero / b.nonzero if a is not None and b is not None and b.nonzero else None
                ),
                "shape_before": b.weight_shape if b else None,
                "shape_after": a.weight_shape if a else None,
                "macs_before": b.macs if b else None,
                "macs_after": a.macs if a else None,
                "nonzero_macs_after": a.nonzero_macs if a else None,
            }
        )
    return rows
