"""``compress()``: the stages of DESIGN.md, called in order and nothing else.

    load ─► convert ─► fine-tune ─► decide masks ─► slim ─► export ─► verify ─► report

The optional noise-free fine-tuning after the masks sits on either side of slim: where units were pruned, the
slim model is fine-tuned (the same function at a fraction of the work); per-weight noise alone removes no unit,
so there the masked model is fine-tuned before slim (which then removes attention heads and embedding rows only).

Loading (model file, data spec, recipe file) is the caller's: the CLI does it with
:mod:`prunedrop.io`, :mod:`prunedrop.data` and :mod:`prunedrop.recipes`, a Python user with their own
objects. Everything the run writes goes to ``out_dir``, atomically.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, distributed
from .convert import ConversionSummary, to_variational, variational_layers
from .data import DataBundle
from .errors import PrunedropError, TrainingError
from .export import export_onnx, verify_onnx
from .io import save_model
from .plots import plot_kept_per_layer, plot_log_alpha_histograms, plot_sweep, plot_training_curves
from .prune import prune
from .quantize import posterior_bits, quantize_model
from .recipes import SNR_METHODS, Recipe
from .renorm import ATTACHED, attach_batchnorm, fold_attached
from .report import build_report, count_parameters, measure_latency, public_spec, write_report
from .slim import WEIGHT_LAYERS as _WEIGHT_LAYERS
from .slim import SlimResult, remove_heads_and_rows, silent_units, slim
from .sweep import choose_threshold, default_thresholds, sweep_thresholds, within_budget
from .train import evaluate, finetune, finetune_masked, metric_name, resolve_device
from .uncertainty import calibration_summary

#: files of a run folder
ORIGINAL_ONNX = "original.onnx"
MODEL_ONNX = "model.onnx"
QUANTIZED_ONNX = "model-int8.onnx"
VARIATIONAL_CHECKPOINT = "checkpoint-variational.pt"
MASKED_CHECKPOINT = "checkpoint-masked.pt"
PARITY_SAMPLES = 256


def _draw_plots(out_dir: Path, drawings: dict[str, Callable[[Path], Any]],
                log: Callable[[str], None]) -> tuple[dict[str, str], str | None]:
    """Draw each plot into plots/KEY.png: (key → relative path, None), or what stopped them (a missing
    matplotlib skips the plots instead of failing the run)."""
    plots: dict[str, str] = {}
    for key, draw in drawings.items():
        relative = f"plots/{key}.png"
        try:
            draw(out_dir / relative)
        except PrunedropError as e:
            log(f"plots skipped: {e.message}")
            return plots, e.message
        plots[key] = relative
    return plots, None


def _report_drawings(report: dict[str, Any]) -> dict[str, Callable[[Path], Any]]:
    """The plots drawn from report.json alone: kept per layer, the sweep curve, the training curves."""
    from .sweep import SweepPoint

    drawings: dict[str, Callable[[Path], Any]] = {"kept_per_layer": lambda p: plot_kept_per_layer(report, p)}
    sweep = report.get("sweep")
    if isinstance(sweep, dict) and sweep.get("points"):
        fields = set(SweepPoint.__dataclass_fields__)
        points = [SweepPoint(**{k: (float("nan") if k == "metric" and v is None else v)
                                for k, v in p.items() if k in fields}) for p in sweep["points"]]
        chosen = next((p for p in points if p.threshold == sweep.get("chosen_threshold")), None)
        metric = report["metric"]["name"]
        drawings["sweep"] = lambda p: plot_sweep(points, p, chosen, metric_name=metric,
                                                 metric_before=sweep.get("metric_before"),
                                                 max_metric_drop=sweep.get("max_metric_drop"),
                                                 higher_is_better=metric != "mse")
    if report.get("history"):
        drawings["training"] = lambda p: plot_training_curves(report["history"], p)
    return drawings


_SPARSE_STORAGE = {"auto": "auto", "always": True, "never": False}
# Training samples that calibrate the BatchNorms of ``finetune_batchnorm``.
_CALIBRATION_SAMPLES = 4096


def _some(names: list[str], shown: int = 6) -> str:
    """The first ``shown`` names, comma-separated, and ", ..." when there are more (for one-line logs)."""
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def _export_verified(model: nn.Module, example: torch.Tensor, path: Path, recipe: Recipe,
                     metadata: dict[str, str]) -> tuple[Any, float]:
    """Export ``model`` to ONNX as the recipe says and check it with onnxruntime: (ExportResult, max diff)."""
    # exported with a batch of 2 and verified with a larger one: a batch size baked into the graph shows up
    exported = export_onnx(model, example[:2], path, opset=recipe.onnx_opset,
                           sparse=_SPARSE_STORAGE[recipe.sparse_storage], metadata=metadata,
                           exporter=recipe.onnx_exporter)
    return exported, verify_onnx(exported.path, model, example, atol=recipe.parity_atol)


def _check_parity_before_training(path: Path, original: nn.Module, example: torch.Tensor, recipe: Recipe) -> None:
    """The parity check on the original model, before any fine-tuning: a model whose ONNX export does not
    compute what it computes fails in seconds, not after the whole training."""
    try:
        verify_onnx(path, original, example, atol=recipe.parity_atol)
    except PrunedropError as e:
        raise type(e)(f"before fine-tuning, the original model: {e.message}") from None


def _slim_unit_masks(model: nn.Module, unit_masks: dict[str, torch.Tensor], example: torch.Tensor,
                     log: Callable[[str], None], channel_multiple: int) -> SlimResult:
    """Remove the pruned units physically (:func:`prunedrop.slim.slim`) and log what went."""
    slimmed = slim(model, unit_masks, example, channel_multiple=channel_multiple)
    shrunk = [f"{n} {a}→{b}" for n, (a, b) in slimmed.removed.items() if a != b]
    log(f"slimmed: {', '.join(shrunk) or 'no unit could be removed'} (max abs diff {slimmed.max_abs_diff:.2g})")
    for note in slimmed.notes:
        log(f"note: {note}")
    return slimmed


def _slims_before_finetune(pruned: Any) -> bool:
    """Whether units were pruned and every mask is a Linear/Conv weight or bias, whose zeros :func:`slim_masks`
    can read back after slimming. Recurrent layers, attention projections and embeddings keep the masked path."""
    if not pruned.unit_masks:
        return False
    modules = dict(pruned.model.named_modules())
    for key in pruned.masks:
        name, _, attr = key.rpartition(".")
        if attr not in ("weight", "bias") or not isinstance(modules.get(name), _WEIGHT_LAYERS):
            return False
    return True


def slim_masks(model: nn.Module, pruned: Any) -> dict[str, torch.Tensor]:
    """The masks of ``pruned`` (a :class:`prunedrop.prune.PruneResult`) carried over to its slim ``model``.

    Read from the weights, since slimming renumbers the units: an output unit of a masked layer whose weight row
    and bias are exactly 0 is a pruned unit that slimming had to keep (a residual channel that another producer of
    the stream keeps, a constant that zero padding makes position-dependent, width rounding); with per-weight noise,
    each exactly-zero weight of a masked layer is a pruned weight. They stay at 0 during the fine-tuning that
    follows, as the masks kept them in the full-size model.
    """
    modules = dict(model.named_modules())
    masks: dict[str, torch.Tensor] = {}
    for name in dict.fromkeys(key.rsplit(".", 1)[0] for key in pruned.masks):
        layer = modules.get(name)
        if not isinstance(layer, _WEIGHT_LAYERS):
            continue
        silent = silent_units(layer)
        keep = ~silent
        weight = layer.weight.detach()
        kept_weights = weight.ne(0) if pruned.per_weight else \
            keep.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight).clone()
        if not bool(kept_weights.all()):
            masks[f"{name}.weight"] = kept_weights
        if layer.bias is not None and silent.any():
            masks[f"{name}.bias"] = keep
    return masks


@dataclass
class _Finetuned:
    model: nn.Module
    """The fine-tuned model: slim already (where units were pruned, :func:`_slims_before_finetune`) or the masked
    full-size one."""
    train: Any
    """The fine-tuning's TrainResult."""
    slimmed: SlimResult | None = None
    """What slimming before the fine-tuning did, when it ran."""


def _finetune_pruned(pruned: Any, data: DataBundle, recipe: Recipe, device: torch.device, example: torch.Tensor,
                     checkpoint_path: Path, *, resume: bool, progress: bool,
                     log: Callable[[str], None], normalised: Sequence[str] = ()) -> _Finetuned:
    """The noise-free fine-tuning of what survived the threshold.

    Where units were pruned (SBP, group VD, the combined method), the model is slimmed first, so that the
    fine-tuning runs at the compressed size: the same function (the slim check holds it to the masked model) at a
    fraction of the work. The pruned units that slimming had to keep, and the pruned weights of per-weight noise,
    stay masked (:func:`slim_masks`). ``normalised``: the convolutions whose BatchNorm joined their unit noise
    (``batchnorm_noise: after``) and was folded at thresholding; they get a calibrated BatchNorm back for the
    fine-tuning (folded again afterwards), so that the network trains normalised, as it was trained. Per-weight
    noise alone (sparse VD) removes no unit, and the masks of recurrent
    layers, attention projections and embeddings are not read back from a slim model: there the masked model is
    fine-tuned as it is (:func:`_slims_before_finetune`).
    """
    model, masks, slimmed = pruned.model, pruned.masks, None
    if _slims_before_finetune(pruned):
        slimmed = _slim_unit_masks(model.cpu().eval(), pruned.unit_masks, example, log, recipe.channel_multiple)
        model = slimmed.model
        masks = slim_masks(model, pruned)
    rebatchnorm = recipe.finetune_batchnorm or bool(normalised)
    if rebatchnorm:
        names = None if recipe.finetune_batchnorm else list(normalised)
        masks = {**masks, **_attach_batchnorm(model, data, recipe, device, log, names)}
    result = finetune_masked(model, masks, data, recipe, device=device, checkpoint_path=checkpoint_path,
                             resume=resume, progress=progress, parallel=False)
    if rebatchnorm:
        fold_attached(model)
    return _Finetuned(model=model.cpu().eval(), train=result, slimmed=slimmed)


def _attach_batchnorm(model: nn.Module, data: DataBundle, recipe: Recipe, device: torch.device,
                      log: Callable[[str], None], names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Calibrated BatchNorms for the noise-free fine-tuning (:func:`prunedrop.renorm.attach_batchnorm`), on up to
    :data:`_CALIBRATION_SAMPLES` training samples: on the convolutions that have none (``finetune_batchnorm``), or
    on ``names``."""
    batches = []
    seen = 0
    for x, _ in data.loader("train", recipe.batch_size, shuffle=True, seed=recipe.seed):
        batches.append(x)
        seen += len(x)
        if seen >= _CALIBRATION_SAMPLES:
            break
    model.to(device)
    masks = attach_batchnorm(model, batches, device=device, names=names)
    attached = [n for n, m in model.named_modules() if hasattr(m, ATTACHED)]
    log(f"fine-tuning with BatchNorm after {len(attached)} convolution(s) ({_some(attached)}), folded back "
        "afterwards")
    return masks


def _slim_units(model: nn.Module, unit_masks: dict[str, torch.Tensor], example: torch.Tensor,
                log: Callable[[str], None], channel_multiple: int,
                slimmed: SlimResult | None = None) -> tuple[nn.Module, Any]:
    """Remove pruned units physically (per-unit methods; per-weight sparsity removes no whole unit), then
    silent attention heads and zero embedding rows (any method: read from the weights). ``slimmed``: the units
    were removed before the fine-tuning already; only the heads and rows are left to do."""
    if slimmed is None and unit_masks:
        slimmed = _slim_unit_masks(model, unit_masks, example, log, channel_multiple)
    if slimmed is not None:
        model = slimmed.model.eval()
    structures = remove_heads_and_rows(model, example)
    if slimmed is None and not structures.heads and not structures.rows:
        return model, None
    if slimmed is None:
        slimmed = SlimResult(model=structures.model)
    slimmed.model = structures.model.eval()
    slimmed.heads, slimmed.rows = structures.heads, structures.rows
    slimmed.max_abs_diff = max(slimmed.max_abs_diff, structures.max_abs_diff)
    changed = [f"{n} {a}→{b} heads" for n, (a, b) in structures.heads.items() if a != b]
    changed += [f"{n} {a}→{b} rows" for n, (a, b) in structures.rows.items()]
    if changed:
        log(f"removed: {', '.join(changed)} (max abs diff {structures.max_abs_diff:.2g})")
    return slimmed.model, slimmed


def _save_pytorch_result(model: nn.Module, out_dir: Path, example: torch.Tensor,
                         log: Callable[[str], None]) -> tuple[Path, Path | None]:
    """model.pt + architecture.json; a model that torch.fx cannot describe still gets its state dict."""
    from .atomic import atomic_torch_save

    try:
        return save_model(model, out_dir, example)
    except PrunedropError as e:
        path = out_dir / "model.pt"
        atomic_torch_save(model.state_dict(), path)
        log(f"warning: architecture.json not written ({e.message}); model.pt holds the state dict, "
            "to be loaded into your own architecture")
        return path, None


@dataclass
class CompressResult:
    """What :func:`compress` made."""

    model: nn.Module
    """The compressed plain model (CPU, eval mode)."""
    report: dict[str, Any]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


def _evaluate_all(model: nn.Module, data: DataBundle, recipe: Recipe, device: torch.device) -> dict[str, float]:
    name = metric_name(recipe.loss)
    out = {"val": evaluate(model, data.loader("val", recipe.eval_batch_size), loss=recipe.loss,
                           device=device)[name]}
    if data.test is not None:
        out["test"] = evaluate(model, data.loader("test", recipe.eval_batch_size), loss=recipe.loss,
                               device=device)[name]
    return out


def compress(
    model: nn.Module,
    data: DataBundle,
    recipe: Recipe,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    source: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> CompressResult:
    """Compress ``model`` on ``data`` with ``recipe``; write model, ONNX file and report into ``out_dir``.

    ``resume`` continues from the checkpoints of an interrupted run in the same ``out_dir``. ``source``
    (how the model was loaded: file name, ``--arch``) is recorded in the report so that
    ``prunedrop export RUN_DIR`` can rebuild the variational model later.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    torch.manual_seed(recipe.seed)
    device = resolve_device(recipe.device)
    model = model.cpu().eval()
    example = data.example_batch(min(PARITY_SAMPLES, recipe.eval_batch_size))

    # load: the original, kept on the CPU for the report (the conversion trains its weights in place); in a
    # data-parallel run only rank 0 reports, so the other ranks skip it
    main = distributed.is_main()
    if main:
        t0 = time.perf_counter()
        original = copy.deepcopy(model)
        metric_before = _evaluate_all(original, data, recipe, torch.device("cpu"))
        original_onnx = export_onnx(original, example[:2], out_dir / ORIGINAL_ONNX, opset=recipe.onnx_opset,
                                    sparse=False, exporter=recipe.onnx_exporter)
        _check_parity_before_training(original_onnx.path, original, example, recipe)
        timings["baseline_s"] = time.perf_counter() - t0
        log(f"original model: {metric_name(recipe.loss)} {metric_before['val']:.4g} on validation data, "
            f"ONNX {original_onnx.num_bytes:,} bytes")

    # convert
    summary = ConversionSummary()
    variational = to_variational(model, recipe, summary=summary, example_input=example[:2])
    log(f"converted {len(summary.converted)} layer(s) to {recipe.method}: {', '.join(summary.converted)}")
    if summary.folded:
        log(f"folded {len(summary.folded)} BatchNorm(s) into their convolutions (batchnorm_noise: fold): "
            + _some([f"{bn}→{conv}" for conv, bn in summary.folded]))
    if summary.normalised:
        log(f"unit noise on the output of {len(summary.normalised)} BatchNorm(s), folded at thresholding "
            "(batchnorm_noise: after): " + _some([f"{conv}+{bn}" for conv, bn in summary.normalised]))
    for note in summary.notes:
        log(f"note: {note}")
    normalised = [conv for conv, _ in summary.normalised]
    for group in summary.tied:
        log(f"one noise per channel (tie_residual): {', '.join(group)}")
    if summary.left_alone:
        log("left alone: " + ", ".join(f"{k} ({v})" for k, v in summary.left_alone.items()))

    # fine-tune
    t0 = time.perf_counter()
    trained = finetune(variational, data, recipe, device=device, checkpoint_path=out_dir / VARIATIONAL_CHECKPOINT,
                       resume=resume, progress=progress, log=log)
    timings["finetune_s"] = time.perf_counter() - t0
    if trained.autopilot is not None:
        log(autopilot_line(trained.autopilot))
    if not main:
        # data-parallel run: rank 0 alone thresholds, exports and reports; this rank waits for it
        distributed.barrier()
        return CompressResult(model=variational.cpu().eval(), report={}, out_dir=out_dir, files={})

    # decide masks: the threshold sweep on validation data (and the choice within the accuracy budget),
    # calibration of the Monte Carlo posterior, log α histograms - all need the variational model, so they
    # come before it is thresholded
    t0 = time.perf_counter()
    variational = variational.cpu().eval()
    val_loader = data.loader("val", recipe.eval_batch_size)
    name = metric_name(recipe.loss)
    points = sweep_thresholds(variational, val_loader, recipe.sweep_thresholds or default_thresholds(),
                              evaluate_fn=lambda m, loader: evaluate(m, loader, loss=recipe.loss)[name],
                              example_input=example[:1])
    threshold, chosen = recipe.threshold, None
    if recipe.max_metric_drop is not None:
        # a threshold that prunes every weight leaves nothing to export, whatever its metric
        chosen = choose_threshold([p for p in points if p.kept_weights > 0], metric_before=metric_before["val"],
                                  max_metric_drop=recipe.max_metric_drop,
                                  higher_is_better=recipe.loss == "cross_entropy")
        if chosen is None:
            log(f"no swept threshold keeps {name} within {_budget_text(recipe)} of the original's; "
                f"using the recipe's threshold {recipe.threshold:g}")
        else:
            threshold = chosen.threshold
            log(f"threshold sweep: log α > {threshold:g} prunes most within the budget of {recipe.max_metric_drop:g} "
                f"({name} {chosen.metric:.4g} before noise-free fine-tuning)")
    calibration: dict[str, Any] = {}
    if recipe.loss == "cross_entropy":
        calibration["original"] = calibration_summary(original, val_loader)
        if recipe.mc_samples:
            calibration["variational_mc"] = calibration_summary(variational, val_loader, samples=recipe.mc_samples)
    # log α histograms need the variational model, so they are drawn now; the other plots from the report
    has_log_alpha = any(hasattr(layer, "log_alpha") for layer in variational_layers(variational).values())
    plots, plot_error = _draw_plots(
        out_dir, {"log_alpha": lambda p: plot_log_alpha_histograms(variational, p, threshold)}
        if recipe.plots and has_log_alpha else {}, log)
    timings["sweep_calibration_plots_s"] = time.perf_counter() - t0
    history = list(trained.history)
    search: list[dict[str, Any]] = []
    masked = None
    if recipe.budget_after_finetune and recipe.max_metric_drop is not None \
            and recipe.finetune_epochs_for(data.num_train) > 0:
        t0 = time.perf_counter()
        found = _search_after_finetune(variational, points, chosen, metric_before["val"], recipe, data, device,
                                       out_dir, example, resume=resume, progress=progress, log=log,
                                       normalised=normalised)
        timings["masked_finetune_s"] = time.perf_counter() - t0
        search = found.probes
        if found.best is not None:
            threshold, pruned, masked = found.best
        else:
            log(f"no probed threshold keeps {name} within {_budget_text(recipe)} of the original's after "
                f"noise-free fine-tuning; using log α > {threshold:g}")
    # the bit rule reads the posterior, which prune() replaces by plain layers
    bits = posterior_bits(variational, threshold) if recipe.quantize != "none" else None
    if masked is None:
        pruned = prune(variational, threshold)
    final = pruned.model
    rule = recipe.pruning_rule(threshold)
    if pruned.kept_fraction == 0.0:
        raise TrainingError(
            f"every {'weight' if pruned.per_weight else 'unit'} of the converted layers has {rule}: nothing would "
            "be left to export; lower kl_weight, "
            f"{'lower' if recipe.method in SNR_METHODS else 'raise'} threshold, or train for fewer epochs"
        )
    if pruned.per_weight and pruned.unit_masks:
        log(f"pruned where {rule}: kept {pruned.kept_unit_fraction:.2%} of the converted layers' units and "
            f"{pruned.kept_fraction:.2%} of their weights")
    else:
        what = "weights" if pruned.per_weight else "units"
        log(f"pruned where {rule}: kept {pruned.kept_fraction:.2%} of the converted layers' {what}")
    if masked is None and recipe.finetune_epochs_for(data.num_train) > 0:
        t0 = time.perf_counter()
        masked = _finetune_pruned(pruned, data, recipe, device, example, out_dir / MASKED_CHECKPOINT,
                                  resume=resume, progress=progress, log=log, normalised=normalised)
        timings["masked_finetune_s"] = time.perf_counter() - t0
    if masked is not None:
        history += masked.train.history
        final = masked.model

    # slim: pruned units leave every layer they touch (before the fine-tuning already, where that ran on the slim
    # model); per-weight sparsity removes no whole unit
    final = final.cpu().eval()
    t0 = time.perf_counter()
    final, slimmed = _slim_units(final, pruned.unit_masks, example, log, recipe.channel_multiple,
                                 slimmed=masked.slimmed if masked is not None else None)
    if slimmed is not None:
        timings["slim_s"] = time.perf_counter() - t0
    metric_after = _evaluate_all(final, data, recipe, torch.device("cpu"))
    check_budget(recipe, metric_before["val"], metric_after["val"])
    if calibration:
        calibration["compressed"] = calibration_summary(final, val_loader)

    # export + verify; the PyTorch result is saved first, so that it survives an export failure
    t0 = time.perf_counter()
    model_pt, architecture = _save_pytorch_result(final, out_dir, example, log)
    total_before, nonzero_before = count_parameters(original)
    total_after, nonzero_after = count_parameters(final)
    metadata = {
        "prunedrop.version": __version__,
        "prunedrop.method": recipe.method,
        "prunedrop.threshold": f"{threshold:g}",
        "prunedrop.params_before": str(nonzero_before),
        "prunedrop.params_after": str(nonzero_after),
        f"prunedrop.{metric_name(recipe.loss)}_before": f"{metric_before['val']:.6g}",
        f"prunedrop.{metric_name(recipe.loss)}_after": f"{metric_after['val']:.6g}",
    }
    saved = f"the PyTorch result is saved as {model_pt.name}" + (" and architecture.json" if architecture else "")
    try:
        exported, parity = _export_verified(final, example, out_dir / MODEL_ONNX, recipe, metadata)
    except PrunedropError as e:
        raise type(e)(f"{e.message}; {saved} in {out_dir}") from None
    timings["export_s"] = time.perf_counter() - t0
    timed = {"original": original_onnx.path, "compressed": exported.path}
    quantization = None
    if recipe.quantize != "none":
        t0 = time.perf_counter()
        quantization = quantize_model(exported.path, out_dir / QUANTIZED_ONNX, mode=recipe.quantize, data=data,
                                      recipe=recipe, metric_before=metric_before["val"], bits=bits,
                                      compare={"dense_float32": original_onnx.path, "pruned_float32": exported.path},
                                      log=log)
        timings["quantize_s"] = time.perf_counter() - t0
        if quantization["file"] is not None:
            timed["quantized"] = out_dir / QUANTIZED_ONNX
    latency = None
    if recipe.latency_runs:
        log(f"timing onnxruntime ({', '.join(timed)} alternated, {recipe.latency_runs} runs each)")
        latency = measure_latency(timed, example,
                                  batch_sizes=recipe.latency_batch_sizes, threads=recipe.latency_threads,
                                  runs=recipe.latency_runs)

    # report
    report = build_report(
        original=original,
        compressed=final,
        example_input=example,
        metric_name=metric_name(recipe.loss),
        metric_before=metric_before["val"],
        metric_after=metric_after["val"],
        onnx_bytes_before=original_onnx.num_bytes,
        onnx_bytes_after=exported.num_bytes,
        parity_max_abs_diff=parity,
        extra={
            "method": recipe.method,
            "threshold": threshold,
            "sweep": {"points": [p.to_dict() for p in points], "selected_on": "val",
                      "chosen_threshold": None if chosen is None else chosen.threshold,
                      "max_metric_drop": recipe.max_metric_drop, "metric_before": metric_before["val"],
                      **({"after_finetune": search} if search else {})},
            **({"calibration": calibration} if calibration else {}),
            "test_metric": {"before": metric_before.get("test"), "after": metric_after.get("test")},
            "onnx_dense_bytes_after": exported.dense_bytes,
            "sparse_initializers": exported.sparse_initializers,
            "conversion": {"converted": summary.converted, "excluded": summary.excluded,
                           "left_alone": summary.left_alone, "tied": summary.tied,
                           "batchnorm_folded": summary.folded, "batchnorm_noise_after": summary.normalised,
                           **({"notes": summary.notes} if summary.notes else {})},
            "kept_fraction_converted": pruned.kept_fraction,
            **({"kept_unit_fraction_converted": pruned.kept_unit_fraction} if pruned.unit_masks else {}),
            **({"slim": {"removed": {n: list(v) for n, v in slimmed.removed.items()},
                         "heads": {n: list(v) for n, v in slimmed.heads.items()},
                         "embedding_rows": {n: list(v) for n, v in slimmed.rows.items()},
                         "max_abs_diff": slimmed.max_abs_diff, "notes": slimmed.notes}} if slimmed else {}),
            "recipe": recipe.to_dict(),
            "data": {"name": public_spec(data.name), "num_train": data.num_train, "input_shape": list(data.input_shape)},
            "source": {k: public_spec(v) for k, v in (source or {}).items()},
            "history": history,
            **({"autopilot": trained.autopilot} if trained.autopilot is not None else {}),
            "variational_epochs": trained.epochs,
            "timings": timings,
            "device": str(device),
            "world_size": distributed.world_size(),
            "torch_version": torch.__version__,
            "total_params_after": total_after,
            "total_params_before": total_before,
            **({"latency": latency} if latency is not None else {}),
            **({"quantization": quantization} if quantization is not None else {}),
        },
    )
    if recipe.target is not None:
        report["target"] = target_outcome(recipe, report)
        log(report["target"]["line"])
    if not recipe.automatic and over_budget(recipe, metric_before["val"], metric_after["val"]):
        report["budget"] = {"within": False, "line": fixed_beta_budget_line(
            recipe, metric_before["val"], metric_after["val"], report["params"]["ratio"] or float("inf"))}
    if recipe.plots and plot_error is None:
        plots.update(_draw_plots(out_dir, _report_drawings(report), log)[0])
    if plots:
        report["plots"] = plots
    write_report(report, out_dir)
    files = {"model.onnx": exported.path, "model.pt": model_pt, "original.onnx": original_onnx.path,
             "report.json": out_dir / "report.json", "report.md": out_dir / "report.md"}
    if architecture is not None:
        files["architecture.json"] = architecture
    if quantization is not None and quantization["file"] is not None:
        files[QUANTIZED_ONNX] = out_dir / QUANTIZED_ONNX
    distributed.barrier()
    return CompressResult(model=final, report=report, out_dir=out_dir, files=files)


RUN_INFO = "run.json"


@dataclass
class _Search:
    best: tuple[float, Any, Any] | None
    """(threshold, its PruneResult, its _Finetuned) of the most pruning probe in budget."""
    probes: list[dict[str, Any]]
    """Every probe in the order run: threshold, kept weights and parameters, validation metric before and after
    the noise-free fine-tuning, and whether that is within the budget."""


def _search_after_finetune(
    variational: nn.Module,
    points: list[Any],
    chosen: Any,
    metric_before: float,
    recipe: Recipe,
    data: DataBundle,
    device: torch.device,
    out_dir: Path,
    example: torch.Tensor,
    *,
    resume: bool,
    progress: bool,
    log: Callable[[str], None],
    normalised: Sequence[str] = (),
) -> _Search:
    """Choose the threshold by the validation metric *after* the noise-free fine-tuning (``budget_after_finetune``).

    The sweep judges thresholds on the thresholded variational model; the fine-tuning afterwards often wins
    back much of what a lower threshold costs, so that budget is pessimistic. Here each probe prunes a copy of
    the variational model at one swept threshold, fine-tunes it for the recipe's ``finetune_epochs`` and
    evaluates it on the validation data. The probes bisect the swept thresholds that prune more than the
    sweep's own choice (all of them when the sweep found none in budget), assuming the fine-tuned metric falls as
    the pruning grows: about log2(n) + 1 fine-tunings for n candidates. The most pruning probe within budget is
    the result, its fine-tuned model the one exported. Each probe checkpoints to its own
    ``checkpoint-masked-t<threshold>.pt``, so that ``--resume`` skips the probes already done.
    """
    name = metric_name(recipe.loss)
    # most pruning first; the sweep's choice (in budget before fine-tuning) bounds the search from below
    candidates = sorted((p for p in points if p.kept_weights > 0), key=lambda p: (p.params, p.threshold))
    if chosen is not None:
        candidates = [p for p in candidates if p.params <= chosen.params]
    val_loader = data.loader("val", recipe.eval_batch_size)
    probes: list[dict[str, Any]] = []
    best: tuple[float, Any, Any] | None = None
    lo, hi = 0, len(candidates) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        point = candidates[mid]
        pruned = prune(copy.deepcopy(variational), point.threshold)
        masked = _finetune_pruned(pruned, data, recipe, device, example,
                                  out_dir / f"checkpoint-masked-t{point.threshold:g}.pt", resume=resume,
                                  progress=progress, log=log, normalised=normalised)
        metric = evaluate(masked.model, val_loader, loss=recipe.loss)[name]
        ok = within_budget(metric, metric_before=metric_before, max_metric_drop=recipe.max_metric_drop,
                           higher_is_better=recipe.loss == "cross_entropy")
        probes.append({"threshold": point.threshold, "kept_weights": point.kept_weights, "params": point.params,
                       "metric_before_finetune": point.metric, "metric": metric, "within_budget": ok})
        log(f"probe {recipe.pruning_rule(point.threshold)}: {point.kept_weights:,} weights kept, {name} "
            f"{point.metric:.4g} → {metric:.4g} after noise-free fine-tuning "
            f"({'within' if ok else 'outside'} the budget of {recipe.max_metric_drop:g})")
        if ok:
            best = (point.threshold, pruned, masked)
            hi = mid - 1
        else:
            lo = mid + 1
    if best is not None:
        log(f"budget after fine-tuning: {recipe.pruning_rule(best[0])} prunes most within "
            f"{recipe.max_metric_drop:g} ({len(probes)} probes)")
    return _Search(best=best, probes=probes)


def autopilot_line(summary: dict[str, Any]) -> str:
    """One line on where the autopilot left β and why."""
    last = summary.get("last_check") or {}
    parts = [f"autopilot: β ended at {summary['beta_final']:.3g}"]
    if last.get("smoothed_drop") is not None:
        parts.append(f"validation drop {last['smoothed_drop']:.2f} (budget {summary['max_metric_drop']:g}, "
                     f"aiming at {summary.get('aim') or summary['margin'] * summary['max_metric_drop']:.2f} while "
                     "training)")
    if last.get("cost_ratio") is not None:
        parts.append(f"{last['cost_ratio']:.3g}x smaller ({summary['target']})")
    if last.get("kept_fraction") is not None:
        parts.append(f"kept fraction {last['kept_fraction']:.4g}")
    if summary.get("stopped_early"):
        parts.append("stopped early (settled)")
    elif summary["bound"] == "none":
        parts.append("β still rising when training ended (more epochs would compress more)")
    if summary["bound"] != "none":
        parts.append(f"bound by the {summary['bound']}")
    return ", ".join(parts)


def _budget_text(recipe: Recipe) -> str:
    """The budget as the log lines state it: '1' (points of accuracy), or '50%' (more error) for mse."""
    return f"{recipe.max_metric_drop:g}" + ("" if recipe.loss == "cross_entropy" else "%")


def _worse_text(recipe: Recipe, before: float, after: float) -> str:
    from .autopilot import metric_drop

    drop = metric_drop(before, after, loss=recipe.loss)
    return (f"is {drop:.3g} points worse than the original" if recipe.loss == "cross_entropy"
            else f"has {drop:.3g}% more error (mse) than the original")


def over_budget(recipe: Recipe, before: float, after: float) -> bool:
    """Whether the recipe has an accuracy budget and ``after`` (validation) misses it."""
    return recipe.max_metric_drop is not None and not within_budget(
        after, metric_before=before, max_metric_drop=recipe.max_metric_drop,
        higher_is_better=recipe.loss == "cross_entropy")


def fixed_beta_budget_line(recipe: Recipe, before: float, after: float, params_ratio: float) -> str:
    """The one line of a fixed-β run that ends over its budget (:func:`check_budget` stops an automatic one)."""
    return (f"over budget: the compressed model {_worse_text(recipe, before, after)} on validation data "
            f"(budget {recipe.max_metric_drop:g}) at {params_ratio:.3g}x fewer parameters, with β fixed at "
            f"{recipe.fixed_beta:g}; lower --kl-weight, or let the autopilot choose β (no --kl-weight). The files are "
            "written; the exit status is 4 (set max_metric_drop: null to accept any drop)")


def check_budget(recipe: Recipe, before: float, after: float) -> None:
    """A run with an automatic β never exports a model over its budget (one clear line, exit status 1).

    A fixed-β run (``kl_weight`` or ``kl_weights`` set) is the user's choice of β: it exports, then says so in one
    line (:func:`fixed_beta_budget_line`) and the command exits with status 4 (``report["budget"]``)."""
    if not recipe.automatic or not over_budget(recipe, before, after):
        return
    worse = _worse_text(recipe, before, after)
    raise TrainingError(
        f"the compressed model {worse} on validation data, over the budget "
        f"of {recipe.max_metric_drop:g}; nothing was exported. Give a larger --max-drop, more --finetune-epochs, "
        "or fix β yourself with --kl-weight (the checkpoints in the output folder stay for `prunedrop export`)")


def target_outcome(recipe: Recipe, report: dict[str, Any]) -> dict[str, Any]:
    """Whether the exported model reached the recipe's target, measured on it: reached or missed, by how much,
    and which constraint bound. ``bytes`` targets are judged on the real ONNX file."""
    from .autopilot import parse_target

    target = parse_target(recipe.target or "")
    if target.kind == "flops":
        before, after = report["flops"]["before"], report["flops"]["nonzero_after"]
    elif target.kind == "params":
        before, after = report["params"]["before"], report["params"]["after"]
    else:
        before, after = report["onnx_bytes"]["before"], report["onnx_bytes"]["after"]
    reached_ratio = before / after if after else float("inf")
    wanted = target.ratio_for(before)
    reached = reached_ratio >= wanted * (1 - 1e-9)
    bound = (report.get("autopilot") or {}).get("bound", "target")
    if reached:
        line = f"target {target} reached: {reached_ratio:.3g}x fewer {target.kind}"
    else:
        why = "the accuracy budget bound first" if bound == "budget" else "training ended before it got there"
        line = (f"target {target} missed: the closest model within the budget is {reached_ratio:.3g}x smaller "
                f"({reached_ratio / wanted:.0%} of the way in ratio; {why})")
    return {"target": str(target), "kind": target.kind, "wanted_ratio": wanted, "reached_ratio": reached_ratio,
            "reached": reached, "bound": bound, "line": line}


def prepare_output_dir(out_dir: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Refuse to mix a new run into a folder that holds something else, unless asked to.

    Creates nothing: the folder is made when the first file is written, after every input has been
    loaded and checked, so that a mistake in the inputs leaves no trace.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PrunedropError(f"output path {out_dir} exists and is not a folder; choose another -o")
    if resume:
        if not (out_dir / VARIATIONAL_CHECKPOINT).exists():
            raise PrunedropError(f"--resume: {out_dir} holds no checkpoint ({VARIATIONAL_CHECKPOINT}); run without --resume")
        return out_dir
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise PrunedropError(f"output folder {out_dir} is not empty; pass --overwrite to replace its files, "
                             "--resume to continue an interrupted run, or choose another -o")
    _check_writable(out_dir)
    return out_dir


def start_run(out_dir: str | Path, info: dict[str, Any], identity: dict[str, Any], *, overwrite: bool = False,
              resume: bool = False, warn: Callable[[str], None] = print) -> None:
    """The first change a run makes to its folder, once every input has been loaded and checked.

    ``resume``: the inputs must be the interrupted run's (:func:`prunedrop.runfolder.check_identity`: model file,
    data, --arch); a refusal changes nothing, and run.json is left as the run wrote it. Otherwise the stale
    checkpoints of an earlier run are deleted (with ``overwrite``) and run.json records ``info`` and ``identity``.
    """
    from .runfolder import IDENTITY_KEY, check_identity

    out_dir = Path(out_dir)
    if resume:
        check_identity(read_run_info(out_dir), {**identity, "arch": info.get("arch"),
                                                "trust_pickle": info.get("trust_pickle")},
                       action="--resume", warn=warn)
        return
    if overwrite:
        for path in [out_dir / VARIATIONAL_CHECKPOINT, out_dir / MASKED_CHECKPOINT, out_dir / QUANTIZED_ONNX,
                     *out_dir.glob("checkpoint-masked-t*.pt")]:
            path.unlink(missing_ok=True)  # a stale checkpoint must not leak into a fresh run
    write_run_info(out_dir, {**info, IDENTITY_KEY: identity})


def _check_writable(out_dir: Path) -> None:
    """Fail before hours of training, not after: the folder (or its nearest existing parent) takes files."""
    import tempfile

    probe = out_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise PrunedropError(f"cannot create output folder {out_dir}: {probe} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise PrunedropError(f"output folder {out_dir} is not writable ({e.strerror}); choose another -o") from None


def write_run_info(out_dir: str | Path, info: dict[str, Any]) -> None:
    """Record how the run was started (model file, --arch, data spec, recipe) for resume and re-export."""
    import json

    from .atomic import atomic_write_text

    atomic_write_text(Path(out_dir) / RUN_INFO, json.dumps(info, indent=2, sort_keys=True) + "\n")


def read_run_info(run_dir: str | Path) -> dict[str, Any]:
    from .runfolder import check_run_info
    from .safety import load_json_file

    path = Path(run_dir) / RUN_INFO
    if not path.is_file():
        raise PrunedropError(f"{run_dir} is not a prunedrop run folder (no {RUN_INFO}); give the -o folder of "
                             "`prunedrop compress`")
    info = load_json_file(path, where=str(path), advice="it is not a run.json that prunedrop wrote")
    if not isinstance(info, dict):
        raise PrunedropError(f"{path} is corrupt; it holds no JSON object")
    check_run_info(info, str(path))
    return info


@dataclass
class ReexportResult:
    path: Path
    threshold: float
    kept_fraction: float
    params_before: int
    params_after: int
    onnx_bytes: int
    parity_max_abs_diff: float
    metric_name: str
    metric: float
    quantization: dict[str, Any] | None = None
    """The quantization report section (:func:`prunedrop.quantize.quantize_model`) when ``quantize`` was given."""


def reexport(
    model: nn.Module,
    data: DataBundle,
    recipe: Recipe,
    run_dir: str | Path,
    output: str | Path,
    *,
    threshold: float | None = None,
    overwrite: bool = False,
    quantize: str = "none",
    log: Callable[[str], None] = lambda msg: None,
) -> ReexportResult:
    """Re-threshold a run's trained variational checkpoint and export again, without retraining.

    ``model`` is the original plain model (loaded the way the run loaded it). The checkpoint may come from
    a finished or an interrupted run. Masked fine-tuning after thresholding is not replayed. ``output`` must
    be a new file (an existing regular file only with ``overwrite``), and never a file the run depends on
    (:func:`prunedrop.safety.check_output_file`). ``quantize`` (``int8`` or ``bayes``): ``output`` is the quantized
    file, checked against the recipe's budget as ``compress`` checks it (the float file is not kept).
    """
    from .io import load_checkpoint
    from .runfolder import export_protected_files
    from .safety import check_output_file

    run_dir = Path(run_dir)
    output = check_output_file(output, overwrite=overwrite,
                               protected=export_protected_files(
                                   run_dir, read_run_info(run_dir) if (run_dir / RUN_INFO).is_file() else {}))
    if threshold is not None and not math.isfinite(threshold):
        raise PrunedropError(f"threshold {threshold} is not a finite number; give one such as 3")
    path = run_dir / VARIATIONAL_CHECKPOINT
    if not path.is_file():
        raise PrunedropError(f"{run_dir} holds no {VARIATIONAL_CHECKPOINT}: the run did not finish an epoch yet")
    state = load_checkpoint(path, require=("model",))
    threshold = recipe.threshold if threshold is None else threshold
    if quantize not in ("none", "int8", "bayes"):
        raise PrunedropError(f"quantize must be none, int8 or bayes, not {quantize!r}")
    example = data.example_batch(min(PARITY_SAMPLES, recipe.eval_batch_size))
    # the budget is measured from the original model, before the conversion swaps its layers
    metric_before = _evaluate_all(model.cpu(), data, recipe, torch.device("cpu"))["val"] \
        if quantize != "none" else None
    variational = to_variational(model.cpu(), recipe, example_input=example[:2])
    try:
        variational.load_state_dict(state["model"])
    except RuntimeError as e:
        raise PrunedropError(f"checkpoint does not fit the model ({str(e).splitlines()[0]})") from None
    bits = posterior_bits(variational, threshold) if quantize != "none" else None
    pruned = prune(variational, threshold)
    if pruned.kept_fraction == 0.0:  # as compress refuses: an all-zero model is no export
        raise PrunedropError(f"{recipe.pruning_rule(threshold)} prunes every "
                             f"{'weight' if pruned.per_weight else 'unit'} of the converted layers: nothing would be "
                             f"left; {'lower' if recipe.method in SNR_METHODS else 'raise'} --threshold")
    final = pruned.model.cpu().eval()
    total_plain = sum(p.numel() for p in final.parameters())
    final, _ = _slim_units(final, pruned.unit_masks, example, lambda msg: None, recipe.channel_multiple)
    metric = _evaluate_all(final, data, recipe, torch.device("cpu"))["val"]
    _, params_after = count_parameters(final)
    metadata = {"prunedrop.version": __version__, "prunedrop.method": recipe.method,
                "prunedrop.threshold": f"{threshold:g}", "prunedrop.params_after": str(params_after)}
    quantization = None
    if quantize == "none":
        exported, parity = _export_verified(final, example, Path(output), recipe, metadata)
        path, num_bytes = exported.path, exported.num_bytes
    else:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="prunedrop-export-") as tmp:
            exported, parity = _export_verified(final, example, Path(tmp) / MODEL_ONNX, recipe, metadata)
            quantization = quantize_model(exported.path, output, mode=quantize, data=data, recipe=recipe,
                                          metric_before=metric_before, bits=bits,
                                          compare={"pruned_float32": exported.path}, log=log)
        if quantization["file"] is None:
            raise PrunedropError(f"quantization: {quantization['none_reason']}; nothing was written to {output} "
                                 "(export without --quantize for the float file)")
        path, num_bytes = Path(output), int(quantization["bytes"])
    return ReexportResult(path=path, threshold=threshold, kept_fraction=pruned.kept_fraction,
                          params_before=total_plain, params_after=params_after, onnx_bytes=num_bytes,
                          parity_max_abs_diff=parity, metric_name=metric_name(recipe.loss), metric=metric,
                          quantization=quantization)


def render_report(report: dict[str, Any], run_dir: str | Path) -> dict[str, Any]:
    """Rewrite report.md and the plots that report.json holds the data for (``prunedrop report RUN_DIR``)."""
    run_dir = Path(run_dir)
    plots = dict(report.get("plots") or {})
    if (report.get("recipe") or {}).get("plots", True):
        plots.update(_draw_plots(run_dir, _report_drawings(report), log=lambda msg: None)[0])
    plots = {k: v for k, v in plots.items() if (run_dir / v).is_file()}
    if plots:
        report["plots"] = plots
    write_report(report, run_dir)
    return report
