"""Stage 8, export and verify: the PyTorch result (model.pt + architecture.json, saved first so that it survives an
export failure), the ONNX file with its metadata, checked against the model with onnxruntime, the int8 file
(``quantize``) and the latency of the files (``latency_runs``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..data import DataBundle
from ..errors import PrunedropError, describe
from ..export import ExportResult, export_onnx, verify_onnx
from ..quantize.plan import confirm_gain, quantize_model
from ..recipes import Recipe
from ..report import count_parameters, measure_latency
from ..runfolder import RunFolder
from ..storage import save_model
from ..train import metric_name
from .baseline import Baseline
from .evaluation import Evaluation

#: the recipe's ``sparse_storage`` as :func:`prunedrop.export.export_onnx` takes it
SPARSE_STORAGE = {"auto": "auto", "always": True, "never": False}


@dataclass
class Exported:
    """The files of the compressed model and what was measured on them."""

    onnx: ExportResult
    """model.onnx."""
    parity: float
    """The largest difference between onnxruntime's outputs and the model's."""
    model_pt: Path
    architecture: Path | None
    """architecture.json (None where torch.fx could not describe the model: model.pt is then a state dict)."""
    params: dict[str, int]
    """``total_before`` / ``total_after``: every parameter of the original and of the compressed model."""
    quantization: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"onnx_dense_bytes_after": self.onnx.dense_bytes, "onnx_exporter": self.onnx.exporter,
                "sparse_initializers": self.onnx.sparse_initializers, "timings": self.timings,
                "total_params_after": self.params["total_after"], "total_params_before": self.params["total_before"],
                **({"latency": self.latency} if self.latency is not None else {}),
                **({"quantization": self.quantization} if self.quantization is not None else {})}

    @property
    def quantized(self) -> bool:
        """Whether the int8 file was written."""
        return self.quantization is not None and self.quantization["file"] is not None


def export_verified(model: nn.Module, example: torch.Tensor, path: Path, recipe: Recipe,
                    metadata: dict[str, str]) -> tuple[ExportResult, float]:
    """Export ``model`` to ONNX as the recipe says and check it with onnxruntime: (ExportResult, max diff)."""
    # exported with a batch of 2 and verified with a larger one: a batch size baked into the graph shows up
    exported = export_onnx(model, example[:2], path, opset=recipe.onnx_opset,
                           sparse=SPARSE_STORAGE[recipe.sparse_storage], metadata=metadata,
                           exporter=recipe.onnx_exporter)
    return exported, verify_onnx(exported.path, model, example, atol=recipe.parity_atol)


def save_pytorch_result(model: nn.Module, folder: RunFolder, example: torch.Tensor,
                        log: Callable[[str], None]) -> tuple[Path, Path | None]:
    """model.pt + architecture.json; a model that torch.fx cannot describe still gets its state dict."""
    from ..atomic import atomic_torch_save

    try:
        return save_model(model, folder.path, example)
    except PrunedropError as e:
        path = folder.model_pt
        atomic_torch_save(model.state_dict(), path)
        log(f"warning: architecture.json not written ({e.message}); model.pt holds the state dict, to be loaded "
            "into your own architecture built with the widths the slim left (report.json's slim.removed: each "
            "layer's units before and after); model.onnx runs as it is")
        return path, None


def export_compressed(model: nn.Module, baseline: Baseline, evaluation: Evaluation, threshold: float, bits: Any,
                      data: DataBundle, recipe: Recipe, folder: RunFolder, example: torch.Tensor,
                      log: Callable[[str], None]) -> Exported:
    """Save the compressed ``model``, export it to ONNX and verify the file; quantize and time it as the recipe
    says. ``bits``: the posterior's bit widths for ``quantize: bayes``."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    model_pt, architecture = save_pytorch_result(model, folder, example, log)
    total_before, nonzero_before = count_parameters(baseline.model)
    total_after, nonzero_after = count_parameters(model)
    name = metric_name(recipe.loss)
    metadata = {
        "prunedrop.version": __version__,
        "prunedrop.method": recipe.method,
        "prunedrop.threshold": f"{threshold:g}",
        "prunedrop.params_before": str(nonzero_before),
        "prunedrop.params_after": str(nonzero_after),
        f"prunedrop.{name}_before": f"{baseline.metric['val']:.6g}",
        f"prunedrop.{name}_after": f"{evaluation.metric['val']:.6g}",
    }
    saved = f"the PyTorch result is saved as {model_pt.name}" + (" and architecture.json" if architecture else "")
    try:
        exported, parity = export_verified(model, example, folder.model_onnx, recipe, metadata)
    except PrunedropError as e:
        raise type(e)(f"{e.message}; {saved} in {folder.path}") from None
    timings["export_s"] = time.perf_counter() - t0
    timed = {"original": baseline.onnx.path, "compressed": exported.path}
    quantization = None
    if recipe.quantize != "none":
        t0 = time.perf_counter()
        try:
            quantization = quantize_model(exported.path, folder.quantized_onnx, mode=recipe.quantize, data=data,
                                          recipe=recipe, metric_before=baseline.metric["val"], bits=bits,
                                          compare={"dense_float32": baseline.onnx.path,
                                                   "pruned_float32": exported.path}, log=log,
                                          scores_before=baseline.scores.get("val"))
        except Exception as e:  # onnxruntime's quantizer and onnx's checker raise many types
            # the compressed float32 model is exported and verified already: a model onnxruntime's quantizer cannot
            # take loses the int8 file, not the run
            why = e.message if isinstance(e, PrunedropError) else describe(e)
            quantization = {"mode": recipe.quantize, "file": None, "bytes": None, "layers": [],
                            "none_reason": f"quantization failed: {why}"}
            log(f"quantization failed, no quantized file written (the float32 model is exported): {why}")
        timings["quantize_s"] = time.perf_counter() - t0
        if quantization["file"] is not None:
            timed["quantized"] = folder.quantized_onnx
    latency = None
    if recipe.latency_runs:
        log(f"timing onnxruntime ({', '.join(timed)} alternated, {recipe.latency_runs} runs each)")
        latency = measure_latency(timed, example, batch_sizes=recipe.latency_batch_sizes,
                                  threads=recipe.latency_threads, runs=recipe.latency_runs)
        if quantization is not None:  # a file the report times as neither smaller nor faster is not written
            confirm_gain(quantization, exported.path, folder.quantized_onnx, latency, log)
    return Exported(onnx=exported, parity=parity, model_pt=model_pt, architecture=architecture,
                    params={"total_before": total_before, "total_after": total_after}, quantization=quantization,
                    latency=latency, timings=timings)
