"""Rendering a report dict as text: the terminal table (``format_table``), ``report.md``, and several runs side
by side (``compare_reports``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .build import ratio as _ratio


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
            _fmt_signed(metric["delta"]) + _fmt_se(metric.get("delta_se")) + _relative_change(metric),
        ],
    ]
    test = report.get("test_metric") or {}
    if isinstance(test.get("before"), (int, float)) and isinstance(test.get("after"), (int, float)):
        shown = {**metric, "before": test["before"], "delta": test["after"] - test["before"]}
        rows.append([
            f"{metric['name']} on test data",
            _fmt_float(test["before"]),
            _fmt_float(test["after"]),
            _fmt_signed(shown["delta"]) + _fmt_se(test.get("delta_se")) + _relative_change(shown),
        ])
    return rows


def _fmt_se(se: Any) -> str:
    """' ± 0.28': the paired standard error of a change, where the report has one."""
    return f" ± {se:.2g}" if isinstance(se, (int, float)) and math.isfinite(se) else ""


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
    parts += _original_notes(report)
    note = _class_note(report)
    if note:
        from ..metrics import SEE_EVERY_CLASS

        parts.append(f"note: {note}{SEE_EVERY_CLASS}")
    parts.append(_align(_LAYER_HEADER, _layer_table_rows(report), left=2))
    return "\n\n".join(parts) + "\n"


def _original_notes(report: Mapping[str, Any]) -> list[str]:
    """The warnings about the original model (report.json's ``original_notes``: one no better than its most
    frequent label)."""
    notes = report.get("original_notes")
    return [f"warning: {n}" for n in notes if isinstance(n, str)] if isinstance(notes, list) else []


def _class_note(report: Mapping[str, Any]) -> str | None:
    """:func:`prunedrop.metrics.class_drop_note` of the report's per-class accuracies, if it has them."""
    from ..metrics import class_drop_note

    per_class, metric = report.get("per_class"), report.get("metric")
    if not isinstance(per_class, Mapping) or not isinstance(metric, Mapping) or metric.get("delta") is None:
        return None
    sweep = report.get("sweep")
    budget = sweep.get("max_metric_drop") if isinstance(sweep, Mapping) else None
    return class_drop_note(per_class, float(metric["delta"]), float(budget) if budget is not None else None)


#: classes listed in report.md's per-class table (those whose validation accuracy fell most)
_CLASS_ROWS = 20


def _per_class_parts(report: Mapping[str, Any]) -> list[str]:
    """report.md's per-class section: each class's accuracy before and after on the validation and test data, the
    classes that fell most on validation data first."""
    per_class = report["per_class"]
    val = {r["label"]: r for r in per_class.get("val") or []}
    test = {r["label"]: r for r in per_class.get("test") or []}
    labels = sorted(set(val) | set(test), key=lambda k: (-(val[k]["before"] - val[k]["after"]) if k in val else 0, k))

    def cells(r: Mapping[str, Any] | None) -> list[str]:
        if r is None:
            return ["-", "-", "-"]
        return [str(r["samples"]), f"{r['before']:.4g}", f"{r['after']:.4g} ({r['after'] - r['before']:+.3g})"]

    rows = [[str(k), *cells(val.get(k)), *cells(test.get(k))] for k in labels[:_CLASS_ROWS]]
    more = len(labels) - _CLASS_ROWS
    shown = f", {more} more not shown." if more > 0 else "."
    note = _class_note(report)
    if any(isinstance(r, Mapping) and r.get("of") == "positives" for r in [*val.values(), *test.values()]):
        text = ("Recall per label before and after: of the samples that carry each label (the model's output of "
                "that index), the share where the model finds it (the budget holds over all labels, not per label); "
                "the labels that fell most on validation data first" + shown)
        header = ["label", "val samples carrying it", "val before", "val after", "test samples carrying it",
                  "test before", "test after"]
    else:
        text = ("Accuracy per class before and after (the budget holds over all samples, not per class); the "
                "classes that fell most on validation data first" + shown)
        header = ["class", "val samples", "val before", "val after", "test samples", "test before", "test after"]
    return [text, _markdown(header, rows), *([f"Note: {note}."] if note else [])]


#: the files of the latency rows, as the speedup notes name them
_LATENCY_FILES = {"compressed": "the compressed float32 file", "quantized": "the quantized file"}


def width_times(ms: Mapping[str, Any]) -> str:
    """The latencies of a width decision (``report["slim"]["widths"]["ms"]``: batch → as pruned, rounded) in one
    phrase, as the run's log and report.md both say them."""
    return ", ".join(f"batch {b} {t['as_pruned']:.3g} → {t['rounded']:.3g} ms" for b, t in ms.items())


#: layers whose weight's first axis counts vocabulary rows, not output units: their width is the embedding's
_ROW_TABLES = ("Embedding", "EmbeddingBag")


def _latency_notes(report: Mapping[str, Any]) -> list[str]:
    """The measured speedup beside the FLOPs ratio, and layers whose new width suits fast kernels badly."""
    notes = []
    flops = report.get("flops", {}).get("ratio")
    for row in report.get("latency", {}).get("results", []):
        if row.get("model") != report["latency"].get("baseline"):
            which = _LATENCY_FILES.get(row.get("model"), f"the {row.get('model')} file")
            notes.append(f"batch {row['batch_size']}: measured speedup {_fmt_ratio(row.get('speedup'))} of "
                         f"{which} over the original, beside a dense FLOPs ratio of {_fmt_ratio(flops)}")
    odd = [f"{r['name']} ({r['shape_after'][0]})" for r in report.get("layers", [])
           if r.get("shape_before") and r.get("shape_after") and r["shape_after"][0] != r["shape_before"][0]
           and r["shape_after"][0] % 8 and r.get("type") not in _ROW_TABLES]
    widths = report.get("slim", {}).get("widths")
    measured = isinstance(widths, Mapping) and isinstance(widths.get("ms"), Mapping)
    if odd and not measured:  # where slimming timed the widths, its line below says what rounding them would give
        notes.append("output widths that are not multiples of 8, which vectorised kernels handle less well: "
                     + ", ".join(odd))
    if measured:
        try:
            times = width_times(widths["ms"])
            rounded = widths.get("multiple", 1) != 1
            notes.append(f"widths {'rounded up to multiples of ' + str(widths['multiple']) if rounded else 'as pruned'}"
                         f", measured when slimming (as pruned → rounded up to multiples of {widths.get('tried')}, "
                         f"onnxruntime on the machine of the run): {times}")
        except (KeyError, TypeError, ValueError):
            pass  # a hand-edited report: the table and notes above stand on their own
    return notes


_QUANT_FILES_HEADER = ["ONNX file", "bytes", "validation", "test"]
_QUANT_LAYER_HEADER = ["layer", "ONNX node", "op", "precision", "storage", "why float32", "bits needed"]
_QUANT_FILE_LABELS = {"dense_float32": "dense float32 (original)", "pruned_float32": "pruned float32",
                      "quantized": "pruned + quantized"}


def _quantization_line(q: Mapping[str, Any], metric: str) -> str:
    """One line for the terminal: the quantized file, its size against the pruned float one, its metric."""
    if not q.get("file"):
        why = q.get("none_reason") or "no layer stayed quantized within the budget"
        return f"quantization ({q.get('mode')}): {why}; no file written"
    files = q.get("files") or {}
    int8 = sum(r.get("precision") not in (None, "float32") for r in q.get("layers", []))
    float_bytes = (files.get("pruned_float32") or {}).get("bytes")
    ratio = _ratio(float_bytes, q.get("bytes"))
    if ratio and ratio != 1 and _fmt_ratio(max(ratio, 1 / ratio)) == "1.00x":  # within half a percent: in bytes
        diff = int(q.get("bytes") or 0) - int(float_bytes or 0)
        size = f"{abs(diff):,} bytes {'larger' if diff > 0 else 'smaller'} than"
    else:
        size = "the same size as" if not ratio or ratio == 1 else (
            f"{_fmt_ratio(ratio)} smaller than" if ratio > 1 else f"{_fmt_ratio(1 / ratio)} larger than")
    return (f"quantization ({q.get('mode')}): {q['file']} {human_bytes(q.get('bytes'))} "
            f"({size} the pruned float32 file), {int8} of {len(q.get('layers', []))} "
            f"layers integer{int8_stored_text(q)}, validation {metric} {_fmt_float((q.get('metric') or {}).get('val'))} (onnxruntime)")


def int8_stored_text(q: Mapping[str, Any]) -> str:
    """", 2 more with int8-stored weights" for the float32 layers whose weights the file stores as int8."""
    stored = len(q.get("int8_stored_weights") or [])
    return f", {stored} more with int8-stored weights (float32 arithmetic)" if stored else ""


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
            said = _fmt_ratio(ratio)
            how = "as fast within rounding" if said == "1.00x" else "faster" if ratio > 1 else "slower"
            lines.append(f"batch {batch}: the quantized file runs {said} as fast as the pruned float32 file ({how})")
    return lines


def _quantization_parts(q: Mapping[str, Any], metric: str) -> list[str]:
    files = q.get("files") or {}
    parts = [_quantization_line(q, metric) + ".", str(q.get("format", ""))]
    if files:
        parts.append(_markdown(_QUANT_FILES_HEADER, [
            [_QUANT_FILE_LABELS.get(k, k), f"{v['bytes']:,}", _fmt_float(v.get("val")), _fmt_float(v.get("test"))]
            for k, v in files.items()]))
    rows = [[r.get("layer") or "-", r["node"], r["op"], r["precision"],
             (r.get("storage") or {}).get("form", "-"), r.get("reason", ""),
             "-" if r.get("bits_needed") is None else f"{r['bits_needed']:g}"] for r in q.get("layers", [])]
    parts.append(_markdown(_QUANT_LAYER_HEADER, rows, left=6))
    if q.get("unsupported"):
        parts.append("Operators onnxruntime does not quantize (they stay float32): "
                     + ", ".join(f"`{u['node']}` ({u['op']})" for u in q["unsupported"]))
    if q.get("reverted"):
        parts.append("Reverted to float32 to stay within the accuracy budget, most sensitive first: "
                     + ", ".join(f"`{r['node']}` (quantized alone: {r['sensitivity']:.3g} worse than the original)" for r in q["reverted"]))
    speed = q.get("speed") or {}
    if speed.get("reverted"):
        setting = f" (batch {speed['batch_size']}, {speed['threads']} thread(s))" if "batch_size" in speed else ""
        parts.append(f"Kept float32 because their integer form ran slower than float32 on this CPU{setting}: "
                     + ", ".join(f"`{n}`" for n in speed["reverted"]))
    if speed.get("int4_to_int8"):
        parts.append("Kept int8 rather than int4 because that ran faster: "
                     + ", ".join(f"`{n}`" for n in speed["int4_to_int8"]))
    if speed.get("checked") is False:
        parts.append(f"Speed not checked: {speed.get('why')}")
    if speed.get("rounds"):
        last = speed["rounds"][-1]
        parts.append(f"Speed check: the quantized model {last['quantized_ms']:.3g} ms against the pruned float32 "
                     f"file's {last['float32_ms']:.3g} ms in its last round ({len(speed['rounds'])} round(s), "
                     f"differences under {speed['margin']:.0%} taken as noise)")
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
        probed = [p["threshold"] for p in sweep.get("after_finetune") or [] if p.get("within_budget")]
        if used is not None and used != chosen and used in probed:
            # the bisection after the noise-free fine-tuning moved it: name the threshold the model was pruned at
            return (f"threshold {used:g} chosen after noise-free fine-tuning: the most pruning within {budget} "
                    f"(validation data; the sweep before it chose {chosen:g})")
        checks = sweep.get("check_set") or {}
        if checks.get("ruled_out"):
            # a coarse validation set: the choice kept the budget on the checks' samples too (stages.selection.CheckSet)
            out = ", ".join(f"{r['threshold']:g}" for r in checks["ruled_out"])
            return (f"threshold {chosen:g} chosen by the sweep: the most pruning within {budget} on the validation "
                    f"data and on the {checks['samples']} samples the autopilot's checks count (validation and "
                    f"training; {out} kept it on the validation data alone)")
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


def format_markdown(report: Mapping[str, Any]) -> str:
    flops_unit = report["flops"].get("unit", "multiply-adds per sample")
    parts = [
        "# prunedrop report",
        _markdown(_SUMMARY_HEADER, _summary_rows(report)),
        f"Parity, max |torch − ONNX Runtime| on the verification inputs: "
        f"{_fmt_float(report.get('parity_max_abs_diff'))}",
        *_original_notes(report),
        f"FLOPs are {flops_unit} of the linear, convolution, recurrent and attention layers; non-zero MACs count "
        "only multiply-adds with a non-zero weight (and an attention's products of queries, keys and values in "
        "full). Ratios are before / after.",
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
    if isinstance(report.get("per_class"), Mapping) and report["per_class"]:
        parts += ["## Per class", *_per_class_parts(report)]
    parts += ["## Layers", _markdown(_LAYER_HEADER, _layer_table_rows(report), left=2)]
    plots = report.get("plots")
    if isinstance(plots, Mapping) and plots:
        parts += ["## Plots", "\n\n".join(f"![{key}]({path})" for key, path in plots.items())]
    return "\n\n".join(parts) + "\n"


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
    def source(r: Mapping[str, Any], key: str) -> str:
        value = get(r, "source", key)
        text = " ".join(str(value).split()) if isinstance(value, str) and value.strip() else "-"
        return text if len(text) <= 40 else text[:37] + "..."

    spec: list[tuple[str, Any]] = [
        ("model", lambda r: source(r, "model")),
        ("data", lambda r: source(r, "data")),
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
        ("metric delta", lambda r: _fmt_signed(get(r, "metric", "delta")) + _fmt_se(get(r, "metric", "delta_se"))),
        ("test metric after", lambda r: _fmt_float(get(r, "test_metric", "after"))),
        ("ECE after", lambda r: _fmt_float(get(r, "calibration", "compressed", "ece"))),
        ("latency batch 1", lambda r: latency(r, 1)),
        ("latency batch 64", lambda r: latency(r, 64)),
        ("parity", lambda r: _fmt_float(get(r, "parity_max_abs_diff"))),
    ]
    for label, fn in spec:
        rows.append([label, *[fn(reports[n]) for n in names]])
    table = _align(["", *names], rows) + "\n"
    tasks = {(source(reports[n], "model"), source(reports[n], "data"), str(get(reports[n], "metric", "name")))
             for n in names}
    if len(tasks) > 1:  # the ratios compare; the metrics are each run's own
        table += ("\nnote: these runs compressed different models, data or metrics: compare their ratios; each "
                  "metric is its own run's, before against after\n")
    return table
