"""Stage 6, slim: pruned units leave every layer they touch (per-unit methods; per-weight sparsity removes no whole
unit), then silent attention heads and zero embedding rows go (any method: read from the weights)."""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..recipes import Recipe
from ..report.render import width_times
from ..slim import MisreadUnits, SlimResult, dead_units, remove_heads_and_rows, slim
from ..slim.common import CONV
from .common import some

#: the width multiple that ``channel_multiple: null`` tries: onnxruntime's NCHWc block on AVX2 (AVX-512's 16 is two)
AUTO_MULTIPLE = 8
#: the batch sizes it times, and the share of the widths-as-pruned latency the rounded model must stay under at the
#: larger one (at the smaller one it may not be slower by the inverse)
WIDTH_BATCHES = (1, 16)
AUTO_GAIN = 0.9
#: about how long the timing at the larger batch may take (a ResNet-50 at 224×224 gets 6 runs instead of 15)
WIDTH_SECONDS = 10.0

WidthTimer = Callable[[nn.Module, nn.Module, torch.Tensor], dict[int, tuple[float, float]]]
"""(widths as pruned, widths rounded, example) → batch size → (latency of the first, of the second) in ms."""


@dataclass
class Slimmed:
    """The slim model and what slimming removed (``result`` is None where nothing was removed)."""

    model: nn.Module
    result: SlimResult | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        part: dict[str, Any] = {"timings": self.timings}
        if r is not None:
            part["slim"] = {"removed": {n: list(v) for n, v in r.removed.items()},
                            "heads": {n: list(v) for n, v in r.heads.items()},
                            "embedding_rows": {n: list(v) for n, v in r.rows.items()},
                            "max_abs_diff": r.max_abs_diff, "notes": r.notes}
            if r.widths is not None:
                part["slim"]["widths"] = r.widths
        return part


def slim_multiple(recipe: Recipe) -> int | None:
    """The ``channel_multiple`` slimming uses: the recipe's; where it is null, 1 under a target (``flops``,
    ``params`` or ``bytes``: the cost the user stated is counted on the exported widths, and rounding adds to it) or
    with ``latency_runs: 0`` (nothing is timed, as the quantizer's speed check is not), and None (measured,
    :func:`remove_pruned_units`) otherwise."""
    if recipe.channel_multiple is not None:
        return recipe.channel_multiple
    return 1 if recipe.target is not None or recipe.latency_runs == 0 else None


def time_widths(plain: nn.Module, rounded: nn.Module, example: torch.Tensor) -> dict[int, tuple[float, float]]:
    """Both slim models exported to ONNX and timed with onnxruntime on this CPU (one thread, alternated):
    batch size → (median ms of ``plain``, of ``rounded``), for each of :data:`WIDTH_BATCHES` (15 runs each, fewer at
    the larger batch where they would take more than about :data:`WIDTH_SECONDS`)."""
    from ..export import export_onnx
    from ..quantize.measure import time_models

    with tempfile.TemporaryDirectory(prefix="prunedrop-widths-") as tmp:
        paths = {}
        for name, model in (("plain", plain), ("rounded", rounded)):
            paths[name] = Path(tmp) / f"{name}.onnx"
            export_onnx(model.eval(), example[:1], paths[name], sparse=False)
        times: dict[int, tuple[float, float]] = {}
        for b in sorted(WIDTH_BATCHES):
            # a large model gets fewer runs at the larger batch: about WIDTH_SECONDS for both models together
            per_run = max(times[1]) * b / 1000 if 1 in times else 0.0
            runs = 15 if b == 1 or per_run <= 0 else int(min(15, max(3, WIDTH_SECONDS / (2 * per_run))))
            ms = time_models(paths, example, batch_size=b, threads=1, runs=runs, warmup=1 if runs < 15 else 2)
            times[b] = (ms["plain"], ms["rounded"])
    return times


#: the timer :func:`remove_pruned_units` uses when given none (the test suite swaps in a deterministic one: the
#: choice between two latencies of tiny models is a coin toss, and a test must not depend on it)
WIDTH_TIMER: WidthTimer = time_widths


def _conv_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, CONV)}


def _measured_widths(model: nn.Module, unit_masks: dict[str, torch.Tensor], example: torch.Tensor,
                     log: Callable[[str], None], timer: WidthTimer) -> SlimResult:
    """Every pruned unit removed, or, where that leaves a convolution's width off a multiple of
    :data:`AUTO_MULTIPLE` and the widths rounded up to it run faster on this CPU, the rounded model (the same
    function: the pruned channels kept output exact zeros)."""
    plain = slim(model, unit_masks, example, channel_multiple=1)
    odd = sorted(n for n, w in _conv_widths(plain.model).items() if w % AUTO_MULTIPLE)
    if not odd:
        return plain
    rounded = slim(model, unit_masks, example, channel_multiple=AUTO_MULTIPLE)
    if _conv_widths(rounded.model) == _conv_widths(plain.model):
        return plain
    try:
        times = timer(plain.model, rounded.model, example)
    except Exception as e:  # noqa: BLE001 - an export or onnxruntime failure: the exporter says so later, if at all
        first = (str(e).splitlines() or [""])[0][:160]
        chosen = plain
        chosen.widths = {"multiple": 1, "tried": AUTO_MULTIPLE, "error": f"{type(e).__name__}: {first}"}
    else:
        small, large = times[min(times)], times[max(times)]
        faster = large[1] <= AUTO_GAIN * large[0] and small[1] * AUTO_GAIN <= small[0]
        chosen = rounded if faster else plain
        chosen.widths = {"multiple": AUTO_MULTIPLE if faster else 1, "tried": AUTO_MULTIPLE,
                         "ms": {str(b): {"as_pruned": t[0], "rounded": t[1]} for b, t in sorted(times.items())},
                         "odd_convolutions": odd}
    log(widths_line(chosen.widths))
    return chosen


def widths_line(widths: Mapping[str, Any]) -> str:
    """The log line of a width decision (:attr:`SlimResult.widths <prunedrop.slim.SlimResult.widths>`), as
    ``compress`` and ``prunedrop export`` say it."""
    tried = widths["tried"]
    if "error" in widths:
        return (f"widths: every pruned channel removed; timing them against widths rounded up to multiples of {tried} "
                f"failed ({widths['error']})")
    if widths["multiple"] != 1:
        return (f"widths: rounded up to multiples of {tried} (some pruned channels stay, as exact zeros): onnxruntime "
                f"on this CPU, widths as pruned → rounded: {width_times(widths['ms'])}")
    return (f"widths: every pruned channel removed; widths rounded up to multiples of {tried} were not "
            f"{round((1 - AUTO_GAIN) * 100)}% faster on this CPU ({width_times(widths['ms'])})")


def slimmed_line(slimmed: SlimResult) -> str:
    """The log line of what slimming removed, as ``compress`` and ``prunedrop export`` say it."""
    shrunk = [f"{n} {a}→{b}" for n, (a, b) in slimmed.removed.items() if a != b]
    return f"slimmed: {', '.join(shrunk) or 'no unit could be removed'} (max abs diff {slimmed.max_abs_diff:.2g})"


def remove_pruned_units(model: nn.Module, unit_masks: dict[str, torch.Tensor], example: torch.Tensor,
                        log: Callable[[str], None], channel_multiple: int | None,
                        timer: WidthTimer | None = None) -> SlimResult:
    """Remove the pruned units physically (:func:`prunedrop.slim.slim`) and log what went. ``channel_multiple``
    None: every pruned unit, or widths rounded up to multiples of :data:`AUTO_MULTIPLE` where that leaves a
    convolution's width odd and the rounded model runs faster on this CPU (``timer``, :func:`time_widths` by
    default)."""
    if channel_multiple is None:
        slimmed = _measured_widths(model, unit_masks, example, log, timer or WIDTH_TIMER)
    else:
        slimmed = slim(model, unit_masks, example, channel_multiple=channel_multiple)
    log(slimmed_line(slimmed))
    for note in slimmed.notes:
        log(f"note: {note}")
    return slimmed


def remove_dead_units(model: nn.Module, example: torch.Tensor, log: Callable[[str], None],
                      channel_multiple: int | None) -> SlimResult | None:
    """Per-weight pruning's whole units (:func:`prunedrop.slim.dead_units`: emptied, or read by nobody) removed from
    a copy of ``model`` (:func:`remove_pruned_units`); None where there are none. A failure there leaves them as
    the zeros they are and says so, rather than end a trained run (the units are an extra, not the run's result)."""
    work = copy.deepcopy(model)
    try:
        masks = dead_units(work, example[:2])
        if not masks:
            return None
        gone = sum(int((~m).sum()) for m in masks.values())
        log(f"per-weight pruning left {gone} whole unit(s) that compute a constant or that nothing reads: removing "
            "them")
        return remove_pruned_units(work, masks, example, log, channel_multiple)
    except MisreadUnits as e:
        log(f"note: no whole unit removed: {e}; the model stays as it is")
        return None
    except Exception as e:  # noqa: BLE001 - any model of the user's: the masked model is exported as before
        first = (str(e).strip().splitlines() or [""])[0][:200]
        log(f"note: the whole units that per-weight pruning emptied stay in the model as zeros: removing them "
            f"failed ({type(e).__name__}: {first})")
        return None


#: a remapped embedding whose removed rows hold fewer bytes than this is kept only where the ONNX file it gives is
#: smaller than the one with the zero rows kept (measured; above it the rows' bytes dwarf the map and its nodes)
ROWS_MEASURED_BELOW = 64 * 1024


def _rows_that_pay(model: nn.Module, structures: Any, example: torch.Tensor, log: Callable[[str], None]) -> None:
    """Put back, in ``structures`` (a :class:`prunedrop.slim.HeadsAndRowsResult` of ``model``), the embeddings whose
    row removal does not make the ONNX file smaller. The remap costs an id → row map (an int64 per id) and a lookup,
    with the nodes' longer names: a 64-row embedding bag with 17 rows removed wrote a file 1.4 KB larger (12.76
    against 11.40 KiB) for 1.1 KB of rows. Measured by exporting both, where the rows removed hold less than
    :data:`ROWS_MEASURED_BELOW` bytes: first every such table at once (where a recommender's dozens of small tables
    took two exports each), and where removing all of them pays, each one on its own. The model as it stands is
    exported once; each alternative once more."""
    from ..export import export_onnx

    small = []
    for name, (before, after) in structures.rows.items():
        table = model.get_submodule(name)
        if (before - after) * table.embedding_dim * table.weight.element_size() < ROWS_MEASURED_BELOW:
            small.append(name)
    if not small:
        return
    with tempfile.TemporaryDirectory(prefix="prunedrop-rows-") as tmp:

        def size(candidate: nn.Module) -> int | None:
            try:
                return export_onnx(candidate, example, Path(tmp) / "candidate.onnx").num_bytes
            except Exception:  # noqa: BLE001 - the export stage reports an export that fails; here, remap as before
                return None

        remapped = size(structures.model)
        if remapped is None:
            return
        if len(small) > 1:
            kept_rows = _with_tables(model, structures, small)
            zeros = size(kept_rows)
            if zeros is None or zeros <= remapped:
                if zeros is not None:
                    _put_back(structures, small, zeros, remapped, kept_rows, log)
                return
        for name in small:  # removing all of them pays (or there is one): each on its own
            kept_rows = _with_tables(model, structures, [name])
            zeros = size(kept_rows)
            if zeros is not None and zeros <= remapped:
                _put_back(structures, [name], zeros, remapped, kept_rows, log)
                remapped = zeros  # the model as it now stands


def _with_tables(model: nn.Module, structures: Any, names: list[str]) -> nn.Module:
    """``structures.model`` with the embeddings ``names`` as they are in ``model`` (their zero rows kept)."""
    if names == [""]:  # the model is the embedding
        return copy.deepcopy(model).eval()
    kept_rows = copy.deepcopy(structures.model)
    for name in names:
        parent, _, child = name.rpartition(".")
        setattr(kept_rows.get_submodule(parent), child, copy.deepcopy(model.get_submodule(name)).eval())
    return kept_rows


def _put_back(structures: Any, names: list[str], zeros: int, remapped: int, kept_rows: nn.Module,
              log: Callable[[str], None]) -> None:
    rows = sum(structures.rows[n][0] - structures.rows[n][1] for n in names)
    structures.model = kept_rows
    for name in names:
        del structures.rows[name]
    which = names[0] if len(names) == 1 else f"{len(names)} embeddings ({some(names)})"
    log(f"{which}: {rows} zero row(s) stay, as zeros: removing them would make the ONNX file larger ({remapped:,} "
        f"against {zeros:,} bytes: the id map and its lookup cost more than the rows)")


def slim_pruned(model: nn.Module, unit_masks: dict[str, torch.Tensor], example: torch.Tensor,
                log: Callable[[str], None], channel_multiple: int | None,
                slimmed: SlimResult | None = None) -> Slimmed:
    """Remove the pruned units of ``model`` (:func:`remove_pruned_units`; without unit masks, those that per-weight
    pruning emptied, :func:`remove_dead_units`), then silent attention heads and zero embedding rows. ``slimmed``: the units were removed before the noise-free fine-tuning already
    (:func:`prunedrop.stages.pruned_finetune.finetunes_slim`); only the heads and rows are left to do."""
    model = model.cpu().eval()
    t0 = time.perf_counter()
    if slimmed is None and not unit_masks:
        slimmed = remove_dead_units(model, example, log, channel_multiple)
    elif slimmed is None:
        slimmed = remove_pruned_units(model, unit_masks, example, log, channel_multiple)
    if slimmed is not None:
        model = slimmed.model.eval()
    structures = remove_heads_and_rows(model, example)
    if structures.rows:
        _rows_that_pay(model, structures, example[:2], log)
    if slimmed is None and not structures.heads and not structures.rows:
        return Slimmed(model=model)
    if slimmed is None:
        slimmed = SlimResult(model=structures.model)
    slimmed.model = structures.model.eval()
    slimmed.heads, slimmed.rows = structures.heads, structures.rows
    slimmed.max_abs_diff = max(slimmed.max_abs_diff, structures.max_abs_diff)
    changed = [f"{n} {a}→{b} heads" for n, (a, b) in structures.heads.items() if a != b]
    changed += [f"{n} {a}→{b} rows" for n, (a, b) in structures.rows.items()]
    if changed:
        log(f"removed: {', '.join(changed)} (max abs diff {structures.max_abs_diff:.2g})")
    return Slimmed(model=slimmed.model, result=slimmed, timings={"slim_s": time.perf_counter() - t0})
