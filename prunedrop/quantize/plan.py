"""The whole quantization step (:func:`quantize_model`): which layers are quantized and how, decided from the
posterior's bits, measured with onnxruntime, and revised for accuracy, storage and speed.

Verification: the quantized file's metric is measured with onnxruntime on the validation and test data. If the
validation metric is outside the run's budget (``max_metric_drop`` from the original model), layers go back to
float32 one at a time, most sensitive first (sensitivity: the validation loss of quantizing that layer alone),
until it is within.

Speed (docs/quantization.md): integer kernels are not always faster (a narrow convolution runs slower in
onnxruntime's QLinearConv than in its float kernel), so the quantized model is timed against the float32 file on
this CPU, and layers whose reversal to float32 makes it faster (or while it is slower than the float32 file) go
back to float32, one per round (:func:`_speed_reverts`).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write_bytes
from ..errors import PrunedropError
from ..metrics import paired_standard_error, scores_metric
from ..recipe_groups import is_classification
from .bits import MAX_INT_BITS, MIN_INT_BITS, UNIT_QUANTILE, LayerBits
from .graph import WeightNode, compact_size, load_dense, weight_nodes
from .measure import Timer, evaluate_onnx, onnx_sample_scores, time_models
from .quantizer import (
    CALIBRATION_BATCH,
    QuantizedFile,
    activation_type,
    calibration_batches,
    cpu_instruction_sets,
    quantize_onnx,
    weight_bits,
)

QUANTIZE_MODES = ("none", "int8", "bayes")
SPEED_MARGIN = 0.05  # a relative latency difference below this is timing noise, not a faster model
#: wall seconds the speed check may spend: each round quantizes and times one model per quantized layer, so on a
#: large network it could take hours (a dense ResNet-18 needed 162 s for 4 rounds at 5 timed runs per file); when
#: the time is spent, the rounds stop where they are and the report says so
SPEED_CHECK_SECONDS = 600.0


@contextmanager
def _trial_folder() -> Iterator[str]:
    """The planning's temporary folder (its trial, calibration and timing files); an error raised inside that names
    one of them names it as the planning's file, deleted by the time the line is read (the quantized file's own
    failure is named as its output first)."""
    with tempfile.TemporaryDirectory(prefix="prunedrop-quant-") as tmp:
        try:
            yield tmp
        except PrunedropError as e:
            raise e.naming_in(tmp, "the int8 planning's") from None


def quantize_model(float_path: str | Path, out_path: str | Path, *, mode: str, data: Any, recipe: Any,
                   metric_before: float | None, bits: dict[str, LayerBits] | None = None,
                   compare: dict[str, str | Path] | None = None, speed_check: bool | None = None,
                   timer: Timer | None = None, speed_seconds: float = SPEED_CHECK_SECONDS,
                   log: Callable[[str], None] = print, scores_before: torch.Tensor | None = None) -> dict[str, Any]:
    """Quantize ``float_path`` as ``mode`` says (``int8`` or ``bayes`` with the layers' ``bits``), measure it with
    onnxruntime on the validation and test data, revert layers to float32 (most sensitive first) until the
    validation metric is within ``recipe.max_metric_drop`` of ``metric_before`` (the original model's), store each
    layer's weights in the smallest form allowed (int8 dense or sparse; int4 under ``bayes`` where the posterior
    allows 4 bits), revert layers whose integer form runs slower than float32 on this CPU (``speed_check``; None:
    where ``recipe.latency_runs`` allows timing at all; timed by ``timer``, by default :func:`time_models` with
    ``recipe.latency_runs`` runs at the largest of ``recipe.latency_batch_sizes``, for ``speed_seconds`` of wall
    time at most), and write it to ``out_path`` if it is smaller than the float32 file or was timed faster. Returns
    the report's ``quantization`` section (its ``file`` is None when every layer had to stay float32 or the file
    would gain nothing, and nothing is written then; ``none_reason`` says why). ``compare``: other ONNX files
    (name → path, e.g. the dense and the pruned float32 ones) whose bytes and metrics go into the section's
    ``files`` beside the quantized file's. ``scores_before``: the original's per-sample validation scores
    (:func:`prunedrop.metrics.sample_scores`); with them and the recipe's ``budget_confidence``, each file is held to
    the budget by its drop plus ``z`` paired standard errors, as the compressed model was."""
    from ..autopilot import metric_drop
    from ..sweep import within_budget

    if mode not in ("int8", "bayes"):
        raise ValueError(f"quantize_model: mode must be int8 or bayes, not {mode!r}")
    loss = recipe.loss
    nodes = weight_nodes(load_dense(float_path))
    plan: dict[str, str] = {}  # node → why it stays float32 (absent: quantize it)
    why: dict[str, str] = {}  # node → the kind of reason: posterior, operator, accuracy, speed
    layers: list[dict[str, Any]] = []
    four_bit: list[str] = []  # nodes whose posterior allows 4 bits (bayes)
    int_bits = weight_bits()  # 8, or 7 on a CPU without VNNI
    for wn in nodes:
        row: dict[str, Any] = {"node": wn.node, "op": wn.op, "layer": wn.module}
        lb = (bits or {}).get(wn.module or "")
        if lb is not None:
            row.update(bits_needed=lb.bits if math.isfinite(lb.bits) else None, units=lb.units,
                       median_spread=lb.median_spread if math.isfinite(lb.median_spread) else None,
                       spread_on="outputs" if lb.on_inputs else "weights")
        if mode == "bayes" and lb is None:
            # nothing says how precisely it must be stored: int8, as under quantize: int8, and the accuracy and
            # speed checks decide as for every layer (as float32, a compressed LSTM's int8 gain was lost whole:
            # 1.32x smaller, 1.36x faster, -0.06 points)
            row["no_posterior"] = "not converted, or not a Linear/Conv layer: int8 as under quantize: int8"
        elif mode == "bayes" and lb is not None and lb.bits > int_bits:
            plan[wn.node] = f"the posterior asks for {int(lb.bits) if math.isfinite(lb.bits) else 'unbounded'} bits"
            why[wn.node] = "posterior"
        elif mode == "bayes" and lb is not None and lb.bits <= MIN_INT_BITS:
            four_bit.append(wn.node)
        layers.append(row)
    val_loader = data.loader("val", recipe.eval_batch_size)
    calibration = calibration_batches(data.loader("train", CALIBRATION_BATCH, shuffle=True, seed=recipe.seed))
    higher = is_classification(loss)

    confident = recipe.budget_z > 0 and scores_before is not None

    def measure_val(path: str | Path) -> tuple[float, float | None]:
        """The file's validation metric, and with a confidence the paired standard error of its change."""
        if not confident:
            return evaluate_onnx(path, val_loader, loss=loss), None
        scores = onnx_sample_scores(path, val_loader, loss=loss)
        return scores_metric(scores), paired_standard_error(scores_before, scores)

    def original_budget(metric: float, se: float | None = None) -> bool:
        return metric_before is None or recipe.max_metric_drop is None or within_budget(
            metric, metric_before=metric_before, max_metric_drop=recipe.max_metric_drop, higher_is_better=higher,
            delta_se=se, z=recipe.budget_z)

    # where the pruned float32 model is itself outside the budget (a run that kept the recipe's threshold when
    # none was within it), quantizing may cost nothing more: the reference becomes the float32 model's metric
    float_metric, float_se = measure_val(float_path) \
        if metric_before is not None and recipe.max_metric_drop is not None else (None, None)
    float_outside = float_metric is not None and not original_budget(float_metric, float_se)
    if float_outside:
        log(f"the pruned float32 model is outside the budget already (validation {_metric_text(loss)} "
            f"{float_metric:.4g}); the quantized one may be no worse than it")

    def in_budget(measured: tuple[float, float | None]) -> bool:
        metric, se = measured
        if float_outside:
            return metric >= float_metric if higher else metric <= float_metric
        return original_budget(metric, se)

    test_loader = data.loader("test", recipe.eval_batch_size) if data.test is not None else None

    def measure_file(path: str | Path) -> tuple[dict[str, Any], float | None]:
        # the float32 file's validation metric was measured before quantizing
        val, se = (float_metric, float_se) if float_metric is not None and Path(path) == Path(float_path) \
            else measure_val(path)
        out = {"bytes": Path(path).stat().st_size, "val": val}
        if test_loader is not None:
            out["test"] = evaluate_onnx(path, test_loader, loss=loss)
        return out, se

    files: dict[str, dict[str, Any]] = {}
    quantized_se: float | None = None
    reverted: list[dict[str, Any]] = []
    sensitivity: dict[str, float] = {}
    storage_note: str | None = None
    speed: dict[str, Any] | None = None
    final_ms: dict[str, float] | None = None  # the speed check's last timing of the plan it leaves
    int4: list[str] = []
    with _trial_folder() as tmp:
        cache = Path(tmp) / "calibration.json"
        trial = Path(tmp) / "trial.onnx"

        def attempt(exclude: Iterable[str], path: Path) -> tuple[QuantizedFile, tuple[float, float | None]]:
            result = quantize_onnx(float_path, path, calibration, exclude=sorted(set(exclude)), cache=cache)
            return result, measure_val(path)

        result, measured = attempt(plan, trial)
        unsupported = [n for n in result.float_nodes if n not in plan]
        for name in unsupported:
            plan[name], why[name] = "onnxruntime does not quantize this operator", "operator"
        quantizable = [n for n in result.quantized]
        if not in_budget(measured) and quantizable:
            log(f"quantized: validation {_metric_text(loss)} {measured[0]:.4g} is outside the budget; measuring each "
                "layer's sensitivity")
            others = [n.node for n in nodes]
            for name in quantizable:  # this layer alone quantized
                alone = attempt([o for o in others if o != name], Path(tmp) / "alone.onnx")[1][0]
                sensitivity[name] = metric_drop(metric_before if metric_before is not None else alone, alone,
                                                loss=loss)
            for name in sorted(quantizable, key=lambda n: -sensitivity[n]):
                plan[name] = "reverted: the quantized model was outside the accuracy budget"
                why[name] = "accuracy"
                reverted.append({"node": name, "sensitivity": sensitivity[name]})
                left = [n for n in quantizable if n not in plan]
                if not left:
                    break
                result, measured = attempt(plan, trial)
                log(f"reverted {_shown(name)} to float32: validation {_metric_text(loss)} {measured[0]:.4g}")
                if in_budget(measured):
                    break

        # storage: int4 (dense, 2 per byte) where the posterior allows 4 bits and that is smaller than the int8
        # weight as stored (dense, or sparse where that is smaller); kept only if the file stays within the budget
        candidates = [n for n in four_bit if n not in plan]
        storage8 = result.storage if any(n not in plan for n in quantizable) else {}
        if candidates:
            with_int4 = quantize_onnx(float_path, Path(tmp) / "int4.onnx", calibration, exclude=sorted(plan),
                                      int4=candidates, cache=cache)
            int4 = [n for n in candidates if n in with_int4.storage and n in storage8
                    and with_int4.storage[n]["bytes"] < storage8[n]["bytes"]]
            storage_options = {n: {"int4_dense_bytes": with_int4.storage[n]["bytes"]}
                               for n in candidates if n in with_int4.storage}
            refused = _refused_by_onnxruntime(with_int4.path) if int4 else None
            if refused is not None:
                # int4 weights need opset 21, where onnxruntime's graph optimizer can build a node it then
                # rejects (a Reshape between quantized tensors, in attention or GroupNorm: "output_dtype INT8
                # does not match y_zero_point type UINT8"); the whole quantization was lost, now int8 stays
                storage_note = (f"int4 weights for {', '.join(_shown(n) for n in int4)} stay int8: onnxruntime "
                                f"cannot load the model with them ({refused})")
                log(storage_note)
                int4 = []
            if int4:
                trial4 = quantize_onnx(float_path, trial, calibration, exclude=sorted(plan), int4=int4, cache=cache)
                measured4 = measure_val(trial)
                metric4 = measured4[0]
                if in_budget(measured4):
                    log(f"int4 weights for {', '.join(_shown(n) for n in int4)} (smaller than their int8 form): "
                        f"validation {_metric_text(loss)} {metric4:.4g}")
                    result = trial4
                else:
                    # together they leave the budget: add them one at a time, the largest saving first, keeping
                    # each that leaves the file within the budget
                    tried, int4 = int4, []
                    saving = {n: storage8[n]["bytes"] - with_int4.storage[n]["bytes"] for n in tried}
                    for name in sorted(tried, key=lambda n: -saving[n]):
                        step = quantize_onnx(float_path, trial, calibration, exclude=sorted(plan),
                                             int4=[*int4, name], cache=cache)
                        if in_budget(measure_val(trial)):
                            int4.append(name)
                            result = step
                    dropped = [n for n in tried if n not in int4]
                    storage_note = (f"int4 weights for {', '.join(_shown(n) for n in tried)} together left the "
                                    f"budget (validation {_metric_text(loss)} {metric4:.4g}); one at a time, "
                                    + (f"{', '.join(_shown(n) for n in int4)} stayed int4 and " if int4 else "")
                                    + f"{', '.join(_shown(n) for n in dropped)} went back to int8")
                    log(storage_note)
        else:
            storage_options = {}

        if speed_check is None:
            speed_check = timer is not None or recipe.latency_runs > 0
            if not speed_check:
                speed = {"checked": False, "why": "latency_runs is 0: nothing is timed"}
        if speed_check and any(n.node not in plan for n in nodes):
            if timer is None:
                example = torch.from_numpy(calibration[0])
                batch, threads = max(recipe.latency_batch_sizes), recipe.latency_threads
                runs = max(recipe.latency_runs, 2)

                def timer(paths: Mapping[str, Path]) -> dict[str, float]:
                    return time_models(paths, example, batch_size=batch, threads=threads, runs=runs)

                setting = {"batch_size": batch, "threads": threads, "runs": runs}
            else:
                setting = {"timer": getattr(timer, "__name__", type(timer).__name__)}
            speed = {"checked": True, **setting,
                     **_speed_reverts(float_path, nodes, plan, why, int4, calibration, cache, Path(tmp), timer, log,
                                     deadline=time.perf_counter() + speed_seconds)}
            final_ms = speed.pop("final_ms")
        final = None
        no_gain: str | None = None
        # a layer left float32 for speed, or because onnxruntime has no integer kernel for its operator, still
        # stores its weights as int8 (store_int8: decoded when the model loads, float32 arithmetic at the float32
        # speed) when its posterior allows 8 bits; the file's validation metric decides, as for the quantized layers
        int8_stored = [n.node for n in nodes if why.get(n.node) in ("speed", "operator")]
        if any(n.node not in plan for n in nodes) or int8_stored:
            final_kw = {"exclude": sorted(plan), "int4": [n for n in int4 if n not in plan], "cache": cache}
            final = quantize_onnx(float_path, Path(tmp) / "final.onnx", calibration, int8_weights=int8_stored,
                                  **final_kw)
            if final.int8_weights:
                measured_stored = measure_val(final.path)
                metric_stored = measured_stored[0]
                if not in_budget(measured_stored):
                    note = (f"int8-stored weights of {', '.join(_shown(n) for n in final.int8_weights)} (float32 "
                            f"layers) left the budget (validation {_metric_text(loss)} {metric_stored:.4g}): stored "
                            "float32")
                    storage_note = note if storage_note is None else f"{storage_note}; {note}"
                    log(note)
                    final = quantize_onnx(float_path, Path(tmp) / "final.onnx", calibration, **final_kw) \
                        if any(n.node not in plan for n in nodes) else None
        if final is not None:
            # the float32 file with its tensor names as short as the quantized file's: a gain from the names alone
            # (most of one on a tiny model) is no reason to write an int8 file
            float_bytes = compact_size(float_path)
            no_gain = _no_gain(final.num_bytes, float_bytes, speed, final_ms)
            if no_gain is None:
                # measured where it was made, and written to out_path only then: a measurement that fails (or is
                # interrupted) leaves no unverified file where a verified one is expected, and keeps the file there
                files = {name: measure_file(path)[0] for name, path in (compare or {}).items()}
                try:
                    files["quantized"], quantized_se = measure_file(final.path)
                except PrunedropError as e:  # named as what it was made for: the temporary file is deleted
                    raise e.naming(final.path, f"the quantized file for {out_path} (nothing was written there)") \
                        from None
                atomic_write_bytes(Path(out_path), final.path.read_bytes())
                final.path = Path(out_path)
    unwritten = None  # the quantized model measured no gain over the float32 file: not written
    if no_gain is not None:
        unwritten, final = final, None
    rows = []
    for row in layers:
        node = row["node"]
        stored = (final.storage.get(node) if final is not None else None) or {}
        row["precision"] = "float32" if node in plan or final is None or node not in final.quantized else \
            stored.get("type", "int8")
        if node in plan:
            row["reason"] = plan[node]
            row["float_because"] = why[node]
        elif unwritten is not None and node in unwritten.quantized:
            row["reason"], row["float_because"] = no_gain, "gain"
        if node in sensitivity:
            row["sensitivity"] = sensitivity[node]
        if stored:
            options = {"int8_dense_bytes": storage8.get(node, {}).get("dense_bytes"),
                       "int8_sparse_bytes": storage8.get(node, {}).get("sparse_bytes"),
                       **storage_options.get(node, {})}
            row["storage"] = {"form": f"{stored['type']} {stored['stored']}", "bytes": stored["bytes"],
                              "options": {k: v for k, v in options.items() if v is not None}}
            if final is not None and node in final.int8_weights:
                row["storage"]["form"] += ", decoded to float32 when the model loads"
            if speed is not None and node in speed.get("int4_to_int8", []):
                row["storage"]["why"] = "int4 was smaller, but the model ran faster with this layer int8"
        rows.append(row)
    # TorchScript's node names start with "/" ("/fc1/Gemm"), which reads as an absolute path in a report
    for row in rows:
        row["node"] = _shown(row["node"])
    reverted = [{**r, "node": _shown(r["node"])} for r in reverted]
    if speed is not None and speed["checked"]:
        speed["reverted"] = [_shown(n) for n in speed["reverted"]]
        speed["int4_to_int8"] = [_shown(n) for n in speed["int4_to_int8"]]
        for r in speed["rounds"]:
            r["candidates_ms"] = {_shown(n): v for n, v in r["candidates_ms"].items()}
            if r.get("changed"):
                r["changed"]["node"] = _shown(r["changed"]["node"])
    reasons = sorted({why[n] for n in plan})
    activations = activation_type()
    section: dict[str, Any] = {
        "mode": mode,
        "rule": {"k": 1.0, "unit_quantile": UNIT_QUANTILE, "max_int_bits": int_bits,
                 "int4_bits": MIN_INT_BITS} if mode == "bayes" else None,
        "format": "onnxruntime quantize_static: QDQ, per-channel symmetric int8 weights"
                  + ("" if int_bits == MAX_INT_BITS else " of 7 bits (reduce_range: this CPU has no VNNI, and "
                     "AVX2's 16-bit pair sums saturate with 8)") + " (int4 where the posterior "
                  f"allows 4 bits and that is smaller), {activations} activations "
                  f"({'u8s8: this CPU has VNNI' if activations == 'uint8' else 's8s8: this CPU has no VNNI'}) "
                  f"calibrated (MinMax) on {sum(len(b) for b in calibration)} training samples; LSTM: onnxruntime "
                  "quantize_dynamic (DynamicQuantizeLSTM, per-channel int8 weights); layers left float32 for speed "
                  "or operator keep int8-stored weights (per-channel symmetric), decoded to float32 when the model "
                  "loads (Cast and Mul, folded by onnxruntime); tensors of the float32 "
                  "file renamed short before quantizing (t0, t1, …; the graph's inputs and outputs and the nodes "
                  "keep their names)",
        "layers": rows,
        "unsupported": [{"node": _shown(n), "op": next(w.op for w in nodes if w.node == n)} for n in unsupported],
        "reverted": reverted,
        "budget_reference": None if float_metric is None else (
            "the pruned float32 model (outside the budget already)" if float_outside else "the original model"),
        "speed": speed,
        "storage_note": storage_note,
        "file": None if final is None else Path(out_path).name,
        "bytes": None if final is None else final.num_bytes,
        "sparse_initializers": [] if final is None else final.sparse_initializers,
        "cpu_instruction_sets": cpu_instruction_sets(),
    }
    every_float = "every layer stayed float32 (" + ", ".join(_WHY[r] for r in reasons) + ")" \
        if reasons else "the model has no Linear/Conv-like weight layer to quantize"
    if unwritten is not None:
        # with no layer integer, the file's only gain would have been its int8-stored weights
        section["none_reason"] = no_gain if unwritten.quantized else (
            f"{every_float}, and with int8-stored weights the file was no smaller ({unwritten.num_bytes:,} "
            f"against {float_bytes:,} bytes with the float32 file's tensor names as short)")
        section["unwritten"] = {"bytes": unwritten.num_bytes, "quantized": [_shown(n) for n in unwritten.quantized],
                                "int8_stored_weights": [_shown(n) for n in unwritten.int8_weights]}
    elif final is None:
        section["none_reason"] = every_float
    if final is None:
        log(f"quantization: {section['none_reason']}; no quantized file written")
        return section
    metrics = {k: v for k, v in files["quantized"].items() if k != "bytes"}
    section["files"] = files
    section["metric"] = metrics
    section["within_budget"] = in_budget((metrics["val"], quantized_se))
    kept = [r["node"] for r in rows if r["precision"] != "float32"]
    slow = [r["node"] for r in rows if r.get("float_because") == "speed"]
    log(f"quantized {len(kept)} of {len(rows)} layer(s) ({mode}): {Path(out_path).name} "
        f"{final.num_bytes:,} bytes, validation {_metric_text(loss)} {metrics['val']:.4g} (onnxruntime)"
        + (f"; {len(unsupported)} stay float32 as onnxruntime does not quantize their operator: "
           + ", ".join(f"{_shown(n)} ({next(w.op for w in nodes if w.node == n)})" for n in unsupported)
           if unsupported else "")
        + (f"; {len(slow)} stay float32 as their int8 form ran slower here: {', '.join(slow)}" if slow else "")
        + (f"; weights stored int8 and decoded to float32 when the model loads: "
           f"{', '.join(_shown(n) for n in final.int8_weights)}" if final.int8_weights else ""))
    section["int8_stored_weights"] = [_shown(n) for n in final.int8_weights]
    return section


def _no_gain(quantized_bytes: int, float_bytes: int, speed: Mapping[str, Any] | None,
             final_ms: Mapping[str, float] | None) -> str | None:
    """Why the quantized file is not worth writing, or None when it is: it must be smaller than the float32 file
    or measured faster than it (by more than :data:`SPEED_MARGIN`, in the speed check's last timing of the plan it
    left, ``final_ms``). On small models the quantize/dequantize nodes, scales and zero points can outweigh the
    weights they shrink (a digits transformer's int8 file was 2.2x the float32 one), and a file that is neither
    smaller nor faster is not a compression of it."""
    if quantized_bytes < float_bytes:
        return None
    if final_ms is not None:
        float_ms, quantized_ms = final_ms["float32"], final_ms["quantized"]
        if _faster(quantized_ms, float_ms):
            return None
        timing = f"and no faster ({quantized_ms:.3g} against {float_ms:.3g} ms)"
    elif speed is not None and speed.get("checked"):
        timing = "and the speed check's time ran out before it timed it"
    else:
        timing = "and its speed was not measured (latency_runs 0)"
    return f"{_no_smaller(quantized_bytes, float_bytes)} {timing}"


def _faster(ms: float, than_ms: float) -> bool:
    """``ms`` is faster than ``than_ms`` by more than :data:`SPEED_MARGIN` (less is timing noise)."""
    return ms < than_ms * (1 - SPEED_MARGIN)


def _no_smaller(quantized_bytes: int, float_bytes: int) -> str:
    return (f"the quantized file ({quantized_bytes:,} bytes) was no smaller than the float32 file ({float_bytes:,} "
            "with its tensor names as short)")


def confirm_gain(section: dict[str, Any], float_path: str | Path, quantized_path: str | Path,
                 latency: Mapping[str, Any] | None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Hold a written quantized file to the report's own timing (``latency``: the original, the pruned float32 and
    the quantized file alternated, :func:`prunedrop.report.latency.measure_latency`): a file no smaller than the
    float32 one (with its tensor names as short) that was timed no faster at any batch size there (by more than
    :data:`SPEED_MARGIN`) was written on the speed check's reading alone, which on a tiny model is timing noise;
    it is removed, its rows leave ``latency``, and the section says why (in place; also returned)."""
    if not section.get("file") or not latency:
        return section
    float_bytes = compact_size(float_path)
    if section["bytes"] < float_bytes:
        return section
    rows = {(r["model"], r["batch_size"]): r["median_ms"] for r in latency.get("results", [])}
    pairs = [(b, ms, rows[("compressed", b)]) for (model, b), ms in rows.items()
             if model == "quantized" and ("compressed", b) in rows]
    if not pairs or any(_faster(ms, float_ms) for _, ms, float_ms in pairs):
        return section
    timed = "; ".join(f"batch {b}: {ms:.3g} against {float_ms:.3g} ms" for b, ms, float_ms in pairs)
    why = (f"{_no_smaller(section['bytes'], float_bytes)} and the report's timing found it no faster ({timed}): the "
           "speed check's faster reading was timing noise")
    Path(quantized_path).unlink(missing_ok=True)
    latency["results"] = [r for r in latency.get("results", []) if r["model"] != "quantized"]
    for row in section.get("layers", []):
        if row.get("precision") != "float32":
            row["precision"], row["reason"], row["float_because"] = "float32", why, "gain"
    section["unwritten"] = {"bytes": section["bytes"]}
    (section.get("files") or {}).pop("quantized", None)
    section.update(file=None, bytes=None, none_reason=why)
    log(f"quantization: {why}; model-int8.onnx removed")
    return section


_WHY = {"posterior": "the posterior asks for more than 8 bits",
        "operator": "onnxruntime does not quantize the operator",
        "accuracy": "outside the accuracy budget",
        "speed": "the int8 form ran slower than float32 on this CPU"}


def _refused_by_onnxruntime(path: Path) -> str | None:
    """Why onnxruntime (default graph optimizations, as a user's session has them) cannot load ``path``; None when
    it can."""
    from ..errors import PrunedropError
    from ..export import open_session

    try:
        open_session(path)
    except PrunedropError as e:
        return str(e).split(": ", 1)[-1].split("; re-export")[0]
    return None


def _speed_reverts(float_path: str | Path, nodes: Sequence[WeightNode], plan: dict[str, str], why: dict[str, str],
                   int4: list[str], calibration: Sequence[np.ndarray], cache: Path, tmp: Path, timer: Timer,
                   log: Callable[[str], None], *, deadline: float = math.inf) -> dict[str, Any]:
    """Make the quantized model no slower than the float32 file, one change per round: a quantized layer back to
    float32, or an int4 layer to int8 (int4 weights are not run by onnxruntime's integer kernels).

    Each round times, taking turns: the float32 file, the quantized model as planned, and one model per possible
    change. The change giving the fastest model is made when that model is faster than the planned one by more
    than ``SPEED_MARGIN`` (against timing noise), or when the planned one is slower than the float32 file by more
    than that. A round that would stop times the float32 file and the planned model once more, and stops only if
    that confirms it. The last round therefore measured, twice, a planned model no slower than the float32 file
    (within the margin), unless the wall clock passes ``deadline`` first: then the rounds stop before the next
    model is built (``stopped`` says so) and the plan stays as the rounds so far left it. Updates ``plan``/``why`` (layers gone float32) and ``int4`` (layers gone int8) in place; returns the
    rounds."""
    rounds: list[dict[str, Any]] = []
    done: list[str] = []
    to_int8: list[str] = []
    stopped: str | None = None
    final_ms: dict[str, float] | None = None  # the last timing of the plan the rounds leave, beside the float32 file

    def out_of_time() -> bool:
        nonlocal stopped
        if stopped is None and time.perf_counter() > deadline:
            stopped = (f"the speed check's time ran out after {len(rounds)} round(s) (SPEED_CHECK_SECONDS); the "
                       "layers it had not reverted stay quantized, untimed")
            log(stopped)
        return stopped is not None

    while True:
        current = [n.node for n in nodes if n.node not in plan]
        if not current or out_of_time():
            break
        planned = tmp / "speed-planned.onnx"
        quantize_onnx(float_path, planned, calibration, exclude=sorted(plan), int4=int4, cache=cache)
        paths: dict[str, Path] = {"float32": Path(float_path), "quantized": planned}
        changes: dict[str, tuple[str, str]] = {}  # timing key → (node, "float32" | "int8")
        for i, name in enumerate(current):
            if out_of_time():
                break
            key = f"{name} → float32"
            changes[key] = (name, "float32")
            if len(current) == 1:
                paths[key] = Path(float_path)  # reverting the last layer leaves the float32 model
            else:
                paths[key] = tmp / f"speed-float-{i}.onnx"
                quantize_onnx(float_path, paths[key], calibration, exclude=sorted({*plan, name}), int4=int4,
                              cache=cache)
            if name in int4:
                key = f"{name} → int8"
                changes[key], paths[key] = (name, "int8"), tmp / f"speed-int8-{i}.onnx"
                quantize_onnx(float_path, paths[key], calibration, exclude=sorted(plan),
                              int4=[n for n in int4 if n != name], cache=cache)
        if stopped is not None:
            break
        times = timer(paths)
        float_ms, planned_ms = times["float32"], times["quantized"]
        best = min(changes, key=lambda k: times[k])
        slower = planned_ms > float_ms * (1 + SPEED_MARGIN)
        helps = _faster(times[best], planned_ms)
        entry: dict[str, Any] = {"float32_ms": float_ms, "quantized_ms": planned_ms,
                                 "candidates_ms": {k: times[k] for k in changes}}
        rounds.append(entry)
        if not (slower or helps):
            # a stop rests on one timing: time the two again, so that a burst of load during the float32 file's
            # runs does not end the check (a digits transformer stopped at "float32 2.5 ms, quantized 1.7 ms" after
            # four rounds that had measured float32 at 1.0 ms; the report's timing then found the quantized file
            # 1.7x slower)
            again = timer({"float32": Path(float_path), "quantized": planned})
            entry["confirmation_ms"] = {"float32": again["float32"], "quantized": again["quantized"]}
            slower = again["quantized"] > again["float32"] * (1 + SPEED_MARGIN)
            if not slower:
                final_ms = {"float32": again["float32"], "quantized": again["quantized"]}
                break
            float_ms, planned_ms = again["float32"], again["quantized"]  # what the reason below states
        node, target = changes[best]
        entry["changed"] = {"node": node, "to": target}
        final_ms = {"float32": float_ms, "quantized": times[best]}  # the plan as this change leaves it
        log(f"{_shown(node)} to {target} for speed: {planned_ms:.3g} ms → {times[best]:.3g} ms "
            f"(float32 file {float_ms:.3g} ms)")
        if target == "int8":
            int4.remove(node)
            to_int8.append(node)
            continue
        plan[node] = (f"speed: its integer form ran slower on this CPU ({planned_ms:.3g} ms with it quantized, "
                      f"{times[best]:.3g} ms with it float32; the float32 file {float_ms:.3g} ms)" if helps else
                      f"speed: the quantized model ran slower than the float32 file on this CPU ({planned_ms:.3g} "
                      f"against {float_ms:.3g} ms), and of the changes tried, this layer as float32 ran fastest "
                      f"({times[best]:.3g} ms)")
        why[node] = "speed"
        done.append(node)
    return {"margin": SPEED_MARGIN, "rounds": rounds, "reverted": done, "int4_to_int8": to_int8, "stopped": stopped,
            "final_ms": final_ms}


def _shown(node: str) -> str:
    """An ONNX node name as the report shows it: without TorchScript's leading "/"."""
    return node.lstrip("/") or node


def _metric_text(loss: str) -> str:
    return "accuracy" if is_classification(loss) else "mse"
