"""The report stage: parameter counts, FLOPs, file sizes, metric, parity and latency.

It works on plain (deterministic) torch modules: the original network and the compressed one, which has
either the same architecture with zeros in it (per-weight pruning) or smaller layers (structured slimming).
Layers are matched between the two by their fully qualified module name.

FLOPs, everywhere in prunedrop, means **multiply-adds (MACs) of the weight layers for one input sample**:

* ``nn.Linear``: ``in_features * out_features`` per output row (a ``(B, T, F)`` input has ``T`` rows);
* ``nn.Conv1d/2d/3d``: ``out_channels * (in_channels / groups) * prod(kernel_size)`` per output position,
  whatever the stride, padding, dilation or groups. Output positions whose window overlaps the zero padding
  are counted in full, as every framework's dense kernel computes them;
* ``nn.ConvTranspose1d/2d/3d``: ``weight.numel()`` per *input* position (each input value is multiplied by
  every weight of its group and scattered);
* bias additions, activations, pooling and the element-wise work of normalisation layers are not counted:
  BatchNorm folds into the preceding convolution at export, and the rest is small next to the matrix
  products. Normalisation layers, ``nn.Embedding``/``nn.EmbeddingBag`` and ``nn.PReLU`` count 0 MACs but
  their parameters are counted.

*Non-zero MACs* count only the multiply-adds with a non-zero weight, i.e. for every non-zero weight the
number of times the dense kernel uses it: ``nnz(weight) * output positions`` for convolutions and linear
layers, ``nnz(weight) * input positions`` for transposed convolutions. A fully dense layer therefore has
``nonzero_macs == macs``. This is what a sparse kernel would have to compute, not what ONNX Runtime's dense
kernels actually do.

* ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``: the size of all ``weight_ih_l*`` and ``weight_hh_l*`` per time step
  (each layer and direction multiplies every one of its weights once per step); a ``(B, T, F)`` input has
  ``T`` steps. The gates' element-wise work is not counted, like activations elsewhere.

Any other module that owns parameters (an attention layer, a user's own layer) is listed with 0 MACs and
``counted=False``; :func:`build_report` names such layers under ``flops.uncounted_layers`` so that a
FLOPs figure never silently leaves part of the network out.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import atomic_write_text
from .errors import PrunedropError

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "LayerProfile",
    "build_report",
    "count_parameters",
    "format_table",
    "human_bytes",
    "human_count",
    "load_report",
    "measure_latency",
    "profile_model",
    "write_report",
]

REPORT_SCHEMA_VERSION = 1
"""Bumped whenever a key of the report dict changes meaning or disappears."""

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# Deliberately 0 MACs (see the module docstring), as opposed to unknown types, which are flagged.
_ZERO_MAC = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.PReLU,
)


@dataclass
class LayerProfile:
    """What one parameter-owning module stores and computes, for one input sample."""

    name: str
    """Fully qualified module name (``features.0``)."""
    type: str
    """Class name (``Conv2d``)."""
    params: int
    """All parameters the module owns directly (weight + bias, BatchNorm affine, ...)."""
    nonzero: int
    """How many of ``params`` are non-zero."""
    macs: int
    """Dense multiply-adds per sample, summed over every call of the module in one forward pass."""
    nonzero_macs: int
    """Multiply-adds per sample with a non-zero weight (see the module docstring)."""
    in_shape: list[int]
    """Input shape without the batch dimension, from the first call; ``[]`` if the module was not called."""
    out_shape: list[int]
    """Output shape without the batch dimension, from the first call; ``[]`` if the module was not called."""
    weight_shape: list[int] | None
    """Shape of the ``weight`` parameter; ``None`` for modules without one."""
    counted: bool = True
    """False when prunedrop has no MAC rule for this module type, so its 0 MACs mean "unknown"."""


@dataclass
class _Tally:
    macs: int = 0
    nonzero_macs: int = 0
    calls: int = 0
    in_shape: list[int] = field(default_factory=list)
    out_shape: list[int] = field(default_factory=list)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return ``(total, nonzero)`` over all parameters of ``model``; tied parameters are counted once."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return total, nonzero


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for item in obj:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _weight(module: nn.Module) -> torch.Tensor | None:
    w = getattr(module, "weight", None)
    return w if isinstance(w, torch.Tensor) else None


def recurrent_weights(module: nn.Module) -> list[torch.Tensor]:
    """The ``weight_ih_l*`` / ``weight_hh_l*`` matrices of an ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (biases and a
    variational layer's noise parameters excluded); ``[]`` for other modules."""
    if not isinstance(module, nn.RNNBase):
        return []
    return [getattr(module, n) for n in module._flat_weights_names if n.startswith("weight")]


def layer_weights(module: nn.Module) -> list[torch.Tensor]:
    """The weight matrices a layer prunes: ``weight``; a recurrent layer's ``weight_ih/hh_l*``; or, for layers
    without one weight (nn.MultiheadAttention's ``in_proj_weight`` and ``out_proj.weight``), every parameter
    whose name ends in ``weight``."""
    recurrent = recurrent_weights(module)
    if recurrent:
        return recurrent
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return [weight]
    return [p for n, p in module.named_parameters() if n.endswith("weight")]


def _macs_of_call(module: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None) -> tuple[int, int]:
    """Dense and non-zero MACs of one call, for the whole batch."""
    if isinstance(module, nn.RNNBase):
        if x is None or x.dim() < 2:
            return 0, 0
        weights = recurrent_weights(module)
        steps = x.numel() // x.shape[-1]  # sequences × time steps, whatever the layout
        return (steps * sum(w.numel() for w in weights),
                steps * sum(int(torch.count_nonzero(w.detach())) for w in weights))
    w = _weight(module)
    if w is None or x is None or y is None:
        return 0, 0
    numel, nnz = w.numel(), int(torch.count_nonzero(w.detach()))
    if isinstance(module, nn.Linear):
        positions = y.numel() // module.out_features
    elif isinstance(module, _CONV):
        positions = y.numel() // module.out_channels
    elif isinstance(module, _CONV_TRANSPOSE):
        positions = x.numel() // module.in_channels
    else:
        return 0, 0
    return positions * numel, positions * nnz


def _has_mac_rule(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, *_CONV, *_CONV_TRANSPOSE, *_ZERO_MAC, nn.RNNBase))


def profile_model(model: nn.Module, example_input: torch.Tensor) -> list[LayerProfile]:
    """Profile every module that owns parameters with one forward pass of ``example_input``.

    Forward hooks record each module's input/output shapes and multiply-adds (definitions in the module
    docstring); the totals are divided by the batch size ``example_input.shape[0]``, so the numbers do not
    depend on the batch. A module called several times in one pass (weight sharing) has its MACs summed.
    Modules without parameters (ReLU, pooling, Flatten) are left out. The model runs in eval mode under
    ``torch.no_grad()`` so that profiling does not update BatchNorm statistics; each module's training flag
    is restored afterwards. Entries come in ``named_modules()`` order.
    """
    if example_input.dim() == 0 or example_input.shape[0] == 0:
        raise ValueError(
            f"example_input needs a non-empty batch dimension, got shape {tuple(example_input.shape)}"
        )
    batch = example_input.shape[0]
    owners = [(n, m) for n, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]
    tallies = {n: _Tally() for n, _ in owners}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = _first_tensor(args) if args else _first_tensor(kwargs)
            y = _first_tensor(output)
            tally = tallies[name]
            if tally.calls == 0:
                tally.in_shape = list(x.shape[1:]) if x is not None else []
                tally.out_shape = list(y.shape[1:]) if y is not None else []
            tally.calls += 1
            macs, nonzero_macs = _macs_of_call(module, x, y)
            tally.macs += macs
            tally.nonzero_macs += nonzero_macs

        return hook

    training = {m: m.training for m in model.modules()}
    handles = [m.register_forward_hook(make_hook(n), with_kwargs=True) for n, m in owners]
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag

    profiles = []
    for name, module in owners:
        params = list(module.parameters(recurse=False))
        tally = tallies[name]
        w = _weight(module)
        profiles.append(
            LayerProfile(
                name=name,
                type=type(module).__name__,
                params=sum(p.numel() for p in params),
                nonzero=sum(int(torch.count_nonzero(p.detach())) for p in params),
                # Rounded rather than floored: a module fed something not proportional to the batch
                # (rare) should not lose a MAC to integer division.
                macs=(tally.macs + batch // 2) // batch,
                nonzero_macs=(tally.nonzero_macs + batch // 2) // batch,
                in_shape=tally.in_shape,
                out_shape=tally.out_shape,
                weight_shape=list(w.shape) if w is not None else None,
                counted=_has_mac_rule(module),
            )
        )
    return profiles


def _ratio(before: float | None, after: float | None) -> float | None:
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


def _check_no_absolute_paths(obj: Any, where: str = "report") -> None:
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
            _check_no_absolute_paths(k, f"{where} key")
            _check_no_absolute_paths(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_no_absolute_paths(v, f"{where}[{i}]")


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
) -> dict:
    """Compare ``original`` and ``compressed`` and return a JSON-able report dict.

    FLOPs are dense multiply-adds of the linear/conv layers per input sample (module docstring). Ratios
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
    * ``metric``: ``name``, ``before``, ``after``, ``delta`` (after − before), ``higher_is_better`` (false for
      ``mse``: lower is better, and its budget is the relative increase in percent)
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
    uncounted = sorted({p.name for p in (*prof_before, *prof_after) if not p.counted})

    metric_before = _finite_or_none(metric_before)
    metric_after = _finite_or_none(metric_after)
    delta = metric_after - metric_before if metric_before is not None and metric_after is not None else None

    report: dict[str, Any] = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "prunedrop_version": _prunedrop_version(),
        "params": {
            "before": nonzero_before,
            "after": nonzero_after,
            "ratio": _ratio(nonzero_before, nonzero_after),
            "total_before": total_before,
            "total_after": total_after,
        },
        "flops": {
            "unit": "multiply-adds per sample",
            "before": flops_before,
            "nonzero_before": flops_nonzero_before,
            "after": flops_after,
            "nonzero_after": flops_nonzero_after,
            "ratio": _ratio(flops_before, flops_after),
            "nonzero_ratio": _ratio(flops_before, flops_nonzero_after),
            "uncounted_layers": uncounted,
        },
        "onnx_bytes": {
            "before": onnx_bytes_before,
            "after": onnx_bytes_after,
            "ratio": _ratio(onnx_bytes_before, onnx_bytes_after),
        },
        "metric": {"name": metric_name, "before": metric_before, "after": metric_after, "delta": delta,
                   "higher_is_better": metric_name != "mse"},
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
    _check_no_absolute_paths(report)
    return report


def _layer_rows(before: Sequence[LayerProfile], after: Sequence[LayerProfile]) -> list[dict[str, Any]]:
    by_name_before = {p.name: p for p in before}
    by_name_after = {p.name: p for p in after}
    names = [p.name for p in before] + [p.name for p in after if p.name not in by_name_before]
    rows = []
    for name in names:
        b, a = by_name_before.get(name), by_name_after.get(name)
        rows.append(
            {
                "name": name,
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


# --------------------------------------------------------------------------------------------- formatting


def human_count(n: float | None) -> str:
    """``1234567`` → ``"1.23M"`` (SI prefixes K, M, G, T); integers below 1000 as they are; ``None`` → ``"-"``."""
    if n is None:
        return "-"
    if abs(n) < 1000:
        return str(int(n)) if float(n).is_integer() else f"{n:.3g}"
    for prefix in ("K", "M", "G", "T"):
        n /= 1000
        if abs(n) < 999.995 or prefix == "T":
            return f"{n:.2f}{prefix}"
    raise AssertionError("unreachable")


def human_bytes(n: float | None) -> str:
    """``1536`` → ``"1.50 KiB"`` (binary prefixes); below 1024 as ``"512 B"``; ``None`` → ``"-"``."""
    if n is None:
        return "-"
    if abs(n) < 1024:
        return f"{int(n)} B"
    for prefix in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 1023.995 or prefix == "TiB":
            return f"{n:.2f} {prefix}"
    raise AssertionError("unreachable")


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _fmt_float(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _fmt_signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.4g}"


def _fmt_shape(shape: Sequence[int] | None) -> str:
    return "-" if shape is None else "x".join(str(s) for s in shape)


def _fmt_fraction(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _summary_rows(report: Mapping[str, Any]) -> list[list[str]]:
    params, flops, onnx_bytes, metric = (
        report["params"],
        report["flops"],
        report["onnx_bytes"],
        report["metric"],
    )
    rows = [
        [
            "parameters (non-zero)",
            human_count(params["before"]),
            human_count(params["after"]),
            _fmt_ratio(params["ratio"]),
        ],
        [
            "parameters (stored)",
            human_count(params.get("total_before")),
            human_count(params.get("total_after")),
            _fmt_ratio(_ratio(params.get("total_before"), params.get("total_after"))),
        ],
        [
            "FLOPs (dense MACs)",
            human_count(flops["before"]),
            human_count(flops["after"]),
            _fmt_ratio(flops["ratio"]),
        ],
        [
            "FLOPs (non-zero MACs)",
            human_count(flops.get("nonzero_before", flops["before"])),
            human_count(flops["nonzero_after"]),
            _fmt_ratio(flops["nonzero_ratio"]),
        ],
        [
            "ONNX file",
            human_bytes(onnx_bytes["before"]),
            human_bytes(onnx_bytes["after"]),
            _fmt_ratio(onnx_bytes["ratio"]),
        ],
        [
            f"metric: {metric['name']}" + ("" if _higher_is_better(metric) else " (lower is better)"),
            _fmt_float(metric["before"]),
            _fmt_float(metric["after"]),
            _fmt_signed(metric["delta"]) + _relative_change(metric),
        ],
    ]
    return rows


def _higher_is_better(metric: Mapping[str, Any]) -> bool:
    """Whether the report's metric is better when higher (accuracy), from the report or, for a report written
    before it said so, from the metric's name."""
    flag = metric.get("higher_is_better")
    return flag if isinstance(flag, bool) else metric.get("name") != "mse"


def _relative_change(metric: Mapping[str, Any]) -> str:
    """For a lower-is-better metric (mse), the change in percent, the unit of its budget: ' (+5.0%)'."""
    before, delta = metric.get("before"), metric.get("delta")
    if _higher_is_better(metric) or not isinstance(before, (int, float)) or not isinstance(delta, (int, float)) \
            or before == 0:
        return ""
    return f" ({100.0 * delta / abs(before):+.1f}%)"



_SUMMARY_HEADER = ["", "before", "after", "ratio / delta"]
_LAYER_HEADER = [
    "layer",
    "type",
    "params before",
    "params after",
    "kept",
    "shape before",
    "shape after",
    "MACs before",
    "MACs after",
    "nz MACs after",
]
_LATENCY_HEADER = ["model", "batch", "median ms", "IQR ms", "speedup"]


def _layer_table_rows(report: Mapping[str, Any]) -> list[list[str]]:
    return [
        [
            row["name"],
            row["type"],
            human_count(row["params_before"]),
            human_count(row["params_after"]),
            _fmt_fraction(row["kept_fraction"]),
            _fmt_shape(row["shape_before"]),
            _fmt_shape(row["shape_after"]),
            human_count(row["macs_before"]),
            human_count(row["macs_after"]),
            human_count(row["nonzero_macs_after"]),
        ]
        for row in report["layers"]
    ]


def _latency_rows(latency: Mapping[str, Any]) -> list[list[str]]:
    return [
        [
            r["model"],
            str(r["batch_size"]),
            f"{r['median_ms']:.4g}",
            f"{r['iqr_ms']:.3g}",
            _fmt_ratio(r["speedup"]),
        ]
        for r in latency["results"]
    ]


def _align(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> str:
    """Plain-text table; the first ``left`` columns are left-aligned, the numbers right-aligned."""
    rows = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        cells = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(rows[0]), rule, *(line(r) for r in rows[1:])])


def _markdown(header: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    align = [":---" if i < left else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(esc(c) for c in header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def format_table(report: Mapping[str, Any]) -> str:
    """The report as plain text for a terminal: totals, parity, latency (if present), then one row per layer."""
    parts = [_align(_SUMMARY_HEADER, _summary_rows(report))]
    parts.append(f"parity (max |torch - onnx|): {_fmt_float(report.get('parity_max_abs_diff'))}")
    uncounted = report["flops"].get("uncounted_layers") or []
    if uncounted:
        parts.append(f"FLOPs leave out layers with no MAC rule: {', '.join(uncounted)}")
    if isinstance(report.get("latency"), Mapping):
        parts.append(_align(_LATENCY_HEADER, _latency_rows(report["latency"])))
        parts.append("\n".join(_latency_notes(report)))
    if isinstance(report.get("quantization"), Mapping):
        parts.append("\n".join([_quantization_line(report["quantization"], report["metric"]["name"]),
                                *_quantized_speed(report.get("latency"))]))
    if isinstance(report.get("sweep"), Mapping):
        parts.append(_sweep_line(report))
    if isinstance(report.get("calibration"), Mapping):
        parts.append(_align(_CALIBRATION_HEADER, _calibration_rows(report["calibration"])))
    parts.append(_align(_LAYER_HEADER, _layer_table_rows(report), left=2))
    return "\n\n".join(parts) + "\n"


def _latency_notes(report: Mapping[str, Any]) -> list[str]:
    """The measured speedup beside the FLOPs ratio, and layers whose new width suits fast kernels badly."""
    notes = []
    flops = report.get("flops", {}).get("ratio")
    for row in report.get("latency", {}).get("results", []):
        if row.get("model") != report["latency"].get("baseline"):
            notes.append(f"batch {row['batch_size']}: measured speedup {_fmt_ratio(row.get('speedup'))} "
                         f"beside a dense FLOPs ratio of {_fmt_ratio(flops)}")
    odd = [f"{r['name']} ({r['shape_after'][0]})" for r in report.get("layers", [])
           if r.get("shape_before") and r.get("shape_after") and r["shape_after"][0] != r["shape_before"][0]
           and r["shape_after"][0] % 8]
    if odd:
        notes.append("output widths that are not multiples of 8, which vectorised kernels handle less well: "
                     + ", ".join(odd))
    return notes


_QUANT_FILES_HEADER = ["ONNX file", "bytes", "validation", "test"]
_QUANT_LAYER_HEADER = ["layer", "ONNX node", "op", "precision", "why float32", "bits needed"]
_QUANT_FILE_LABELS = {"dense_float32": "dense float32 (original)", "pruned_float32": "pruned float32",
                      "quantized": "pruned + quantized"}


def _quantization_line(q: Mapping[str, Any], metric: str) -> str:
    """One line for the terminal: the quantized file, its size against the pruned float one, its metric."""
    if not q.get("file"):
        return f"quantization ({q.get('mode')}): no layer stayed quantized within the budget; no file written"
    files = q.get("files") or {}
    int8 = sum(r.get("precision") == "int8" for r in q.get("layers", []))
    ratio = _ratio((files.get("pruned_float32") or {}).get("bytes"), q.get("bytes"))
    size = "the same size as" if not ratio or ratio == 1 else (
        f"{_fmt_ratio(ratio)} smaller than" if ratio > 1 else f"{_fmt_ratio(1 / ratio)} larger than")
    return (f"quantization ({q.get('mode')}): {q['file']} {human_bytes(q.get('bytes'))} "
            f"({size} the pruned float32 file), {int8} of {len(q.get('layers', []))} "
            f"layers int8, validation {metric} {_fmt_float((q.get('metric') or {}).get('val'))} (onnxruntime)")


def _quantized_speed(latency: Any) -> list[str]:
    """The quantized file's latency against the pruned float32 file's, per batch size: int8 is not always faster
    (narrow convolutions run slower in onnxruntime's int8 kernels than in its float ones)."""
    if not isinstance(latency, Mapping):
        return []
    rows = {(r["model"], r["batch_size"]): r["median_ms"] for r in latency.get("results", [])}
    lines = []
    for (model, batch), ms in rows.items():
        if model == "quantized" and rows.get(("compressed", batch)):
            ratio = rows[("compressed", batch)] / ms
            lines.append(f"batch {batch}: the quantized file runs {_fmt_ratio(ratio)} as fast as the pruned float32 "
                         f"file ({'faster' if ratio > 1 else 'slower'})")
    return lines


def _quantization_parts(q: Mapping[str, Any], metric: str) -> list[str]:
    files = q.get("files") or {}
    parts = [_quantization_line(q, metric) + ".", str(q.get("format", ""))]
    if files:
        parts.append(_markdown(_QUANT_FILES_HEADER, [
            [_QUANT_FILE_LABELS.get(k, k), f"{v['bytes']:,}", _fmt_float(v.get("val")), _fmt_float(v.get("test"))]
            for k, v in files.items()]))
    rows = [[r.get("layer") or "-", r["node"], r["op"], r["precision"], r.get("reason", ""),
             "-" if r.get("bits_needed") is None else f"{r['bits_needed']:g}"] for r in q.get("layers", [])]
    parts.append(_markdown(_QUANT_LAYER_HEADER, rows, left=5))
    if q.get("unsupported"):
        parts.append("Operators onnxruntime does not quantize (they stay float32): "
                     + ", ".join(f"`{u['node']}` ({u['op']})" for u in q["unsupported"]))
    if q.get("reverted"):
        parts.append("Reverted to float32 to stay within the accuracy budget, most sensitive first: "
                     + ", ".join(f"`{r['node']}` (quantized alone: {r['sensitivity']:.3g} worse than the original)" for r in q["reverted"]))
    if q.get("cpu_instruction_sets") is not None:
        parts.append("CPU instruction sets for int8: " + (", ".join(q["cpu_instruction_sets"]) or "none found"))
    return parts


_SWEEP_HEADER = ["threshold", "metric", "non-zero params", "params ratio", "non-zero MACs", "chosen"]
_CALIBRATION_HEADER = ["model", "accuracy", "ECE", "NLL", "MC samples"]


def _sweep_line(report: Mapping[str, Any]) -> str:
    sweep = report["sweep"]
    chosen = sweep.get("chosen_threshold")
    used = report.get("threshold")
    if chosen is not None:
        budget = (f"{sweep.get('max_metric_drop'):g} {report['metric']['name']} points of the original"
                  if _higher_is_better(report["metric"]) else
                  f"{sweep.get('max_metric_drop'):g}% more {report['metric']['name']} than the original's")
        return f"threshold {chosen:g} chosen by the sweep: the most pruning within {budget} (validation data)"

    return f"threshold {used:g} (fixed; set max_metric_drop to choose it from the sweep in report.md)"


def _sweep_rows(report: Mapping[str, Any]) -> list[list[str]]:
    sweep = report["sweep"]
    rows = []
    for p in sweep.get("points", []):
        ratio = p["total_params"] / p["params"] if p.get("params") else None
        mark = "◀" if p["threshold"] == report.get("threshold") else ""
        rows.append([f"{p['threshold']:g}", _fmt_float(p["metric"]), human_count(p["params"]), _fmt_ratio(ratio),
                     human_count(p["nonzero_macs"]), mark])
    return rows


def _calibration_rows(calibration: Mapping[str, Any]) -> list[list[str]]:
    labels = {"original": "original", "variational_mc": "variational (MC)", "compressed": "compressed"}
    rows = []
    for key, label in labels.items():
        c = calibration.get(key)
        if isinstance(c, Mapping):
            rows.append([label, _fmt_float(c.get("accuracy")), _fmt_float(c.get("ece")), _fmt_float(c.get("nll")),
                         str(c.get("samples") or "-")])
    return rows


def _format_markdown(report: Mapping[str, Any]) -> str:
    flops_unit = report["flops"].get("unit", "multiply-adds per sample")
    parts = [
        "# prunedrop report",
        _markdown(_SUMMARY_HEADER, _summary_rows(report)),
        f"Parity, max |torch − ONNX Runtime| on the verification inputs: "
        f"{_fmt_float(report.get('parity_max_abs_diff'))}",
        f"FLOPs are {flops_unit} of the linear and convolution layers; non-zero MACs count only "
        "multiply-adds with a non-zero weight. Ratios are before / after.",
    ]
    uncounted = report["flops"].get("uncounted_layers") or []
    if uncounted:
        parts.append(
            f"Layers with no MAC rule, left out of the FLOPs: {', '.join(f'`{n}`' for n in uncounted)}"
        )
    latency = report.get("latency")
    if isinstance(latency, Mapping):
        parts += [
            "## Latency",
            f"ONNX Runtime, {latency.get('threads', '?')} thread(s), median of {latency.get('runs', '?')} "
            "alternated runs; speedup against the first model.",
            _markdown(_LATENCY_HEADER, _latency_rows(latency)),
            *_latency_notes(report),
        ]
    if isinstance(report.get("quantization"), Mapping):
        parts += ["## Quantization", *_quantization_parts(report["quantization"], report["metric"]["name"]),
                  *_quantized_speed(report.get("latency"))]
    if isinstance(report.get("sweep"), Mapping):
        parts += ["## Threshold sweep", _sweep_line(report) + " ◀ marks the threshold used. The metric is "
                  "measured before the noise-free fine-tuning.", _markdown(_SWEEP_HEADER, _sweep_rows(report))]
    if isinstance(report.get("calibration"), Mapping):
        parts += ["## Calibration",
                  "Expected calibration error (15 bins) and negative log-likelihood on the validation data: the "
                  "original model, the variational model averaged over Monte Carlo samples of its noise, and the "
                  "compressed model.",
                  _markdown(_CALIBRATION_HEADER, _calibration_rows(report["calibration"]))]
    parts += ["## Layers", _markdown(_LAYER_HEADER, _layer_table_rows(report), left=2)]
    plots = report.get("plots")
    if isinstance(plots, Mapping) and plots:
        parts += ["## Plots", "\n\n".join(f"![{key}]({path})" for key, path in plots.items())]
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------- read / write

_REQUIRED_KEYS = ("schema_version", "params", "flops", "onnx_bytes", "metric", "layers")


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> None:
    """Write ``report.json`` (indent 2, sorted keys) and ``report.md`` into ``out_dir``, each atomically."""
    _check_no_absolute_paths(report)
    text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n"
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "report.json", text)
    atomic_write_text(out_dir / "report.md", _format_markdown(report))


def load_report(run_dir: str | os.PathLike[str]) -> dict:
    """Read ``run_dir/report.json`` (``run_dir`` may also be the file itself).

    Raises :class:`PrunedropError` when the file is missing, is not valid JSON, or is not a prunedrop report.
    """
    path = Path(run_dir)
    if path.is_dir() or path.suffix != ".json":
        path = path / "report.json"
    if not path.is_file():
        raise PrunedropError(f"no report at {path}: run `prunedrop compress` with this output folder first")
    from .safety import load_json_file

    report = load_json_file(path, where=str(path), advice="delete it and run the report stage again")
    missing = [k for k in _REQUIRED_KEYS if not isinstance(report, dict) or k not in report]
    if missing:
        raise PrunedropError(f"{path} is not a prunedrop report (missing {', '.join(missing)})")
    if report["schema_version"] != REPORT_SCHEMA_VERSION:
        raise PrunedropError(
            f"{path} has report schema version {report['schema_version']}, this prunedrop reads "
            f"{REPORT_SCHEMA_VERSION}; run the report stage again with this version"
        )
    return report


# ----------------------------------------------------------------------------------------------- latency


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
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
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
                    "speedup": _ratio(medians[names[0]], medians[name]),
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


def compare_reports(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """Several runs side by side (``prunedrop report A B``): one column per run, one row per quantity."""

    def get(r: Mapping[str, Any], *keys: str) -> Any:
        node: Any = r
        for k in keys:
            if not isinstance(node, Mapping) or k not in node:
                return None
            node = node[k]
        return node

    def latency(r: Mapping[str, Any], batch: int) -> str:
        for row in get(r, "latency", "results") or []:
            if row.get("model") == "compressed" and row.get("batch_size") == batch:
                return f"{row['median_ms']:.4g} ms ({_fmt_ratio(row.get('speedup'))})"
        return "-"

    rows: list[list[str]] = []
    names = list(reports)
    spec: list[tuple[str, Any]] = [
        ("method", lambda r: str(get(r, "method") or "-")),
        ("threshold", lambda r: _fmt_float(get(r, "threshold"))),
        ("parameters before", lambda r: human_count(get(r, "params", "before"))),
        ("parameters after (non-zero)", lambda r: human_count(get(r, "params", "after"))),
        ("parameters ratio", lambda r: _fmt_ratio(get(r, "params", "ratio"))),
        ("FLOPs after (dense)", lambda r: human_count(get(r, "flops", "after"))),
        ("non-zero FLOPs ratio", lambda r: _fmt_ratio(get(r, "flops", "nonzero_ratio"))),
        ("ONNX bytes after", lambda r: human_bytes(get(r, "onnx_bytes", "after"))),
        ("ONNX ratio", lambda r: _fmt_ratio(get(r, "onnx_bytes", "ratio"))),
        ("metric", lambda r: str(get(r, "metric", "name") or "-")),
        ("metric before", lambda r: _fmt_float(get(r, "metric", "before"))),
        ("metric after", lambda r: _fmt_float(get(r, "metric", "after"))),
        ("metric delta", lambda r: _fmt_signed(get(r, "metric", "delta"))),
        ("test metric after", lambda r: _fmt_float(get(r, "test_metric", "after"))),
        ("ECE after", lambda r: _fmt_float(get(r, "calibration", "compressed", "ece"))),
        ("latency batch 1", lambda r: latency(r, 1)),
        ("latency batch 64", lambda r: latency(r, 64)),
        ("parity", lambda r: _fmt_float(get(r, "parity_max_abs_diff"))),
    ]
    for label, fn in spec:
        rows.append([label, *[fn(reports[n]) for n in names]])
    return _align(["", *names], rows) + "\n"
