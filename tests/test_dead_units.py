"""Per-weight pruning's emptied units leave the exported model: the pipeline and the re-export, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import torch

from prunedrop import pipeline
from prunedrop.data import load_data
from prunedrop.recipes import load_recipe
from prunedrop.reexport import reexport
from prunedrop.testing import TinyMLP, write_tiny_project


def _hidden_widths(model: torch.nn.Module) -> list[int]:
    return [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)][:-1]


def test_sparse_vd_exports_a_narrower_model_with_the_same_outputs(tmp_path: Path) -> None:
    """The tiny project under sparse VD with β 200 empties a few hidden units of TinyMLP(16, (24, 12), 3) whole (or
    leaves them unread); they used to stay as zero rows of a 16-24-12-3 model, and now leave it."""
    write_tiny_project(tmp_path)
    recipe = load_recipe(tmp_path / "recipe.yaml").replace(kl_weight=200.0, mc_samples=0, plots=False,
                                                            latency_runs=0, quantize="none")
    assert recipe.method == "sparse_vd"
    data = load_data(f"npz:{tmp_path / 'data.npz'}")

    def dense() -> TinyMLP:
        model = TinyMLP(16, (24, 12), 3)
        model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
        return model

    logs: list[str] = []
    result = pipeline.compress(dense(), data, recipe, tmp_path / "out", progress=False, log=logs.append)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    widths = _hidden_widths(result.model)
    assert widths != [24, 12] and all(w <= o for w, o in zip(widths, [24, 12], strict=True)), widths
    assert any(line.startswith("per-weight pruning left") and "whole unit(s)" in line for line in logs), logs
    assert report["flops"]["ratio"] > 1.0 and report["parity_max_abs_diff"] <= 1e-4
    assert report["total_params_after"] < report["total_params_before"]
    shapes = _stored_shapes(tmp_path / "out" / "model.onnx")
    assert [24, 16] not in shapes or [12, 24] not in shapes, shapes
    # `prunedrop export` rebuilds the same narrower model from the variational checkpoint
    said: list[str] = []
    reexport(dense(), data, recipe, tmp_path / "out", tmp_path / "again.onnx", threshold=report["threshold"],
             log=said.append)
    assert _stored_shapes(tmp_path / "again.onnx") == shapes
    assert any(line.startswith("slimmed: net.1 24→") for line in said), said


def _stored_shapes(path: Path) -> list[list[int]]:
    graph = onnx.load(str(path)).graph
    return sorted([list(t.dims) for t in graph.initializer] + [list(t.dims) for t in graph.sparse_initializer])


def _emptied_mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3)).eval()
    with torch.no_grad():
        model[0].weight[:4] = 0  # four hidden units emptied, with their biases: constants into the head's bias
    return model


def test_the_emptied_units_leave_in_the_slim_stage() -> None:
    from prunedrop.stages.slimming import slim_pruned

    model, x = _emptied_mlp(), torch.randn(8, 6)
    want = model(x)
    logs: list[str] = []
    slimmed = slim_pruned(model, {}, x[:4], logs.append, channel_multiple=None)
    assert slimmed.model[0].out_features == 6 and slimmed.result.removed == {"0": (10, 6)}
    assert (slimmed.model(x) - want).abs().max() <= 1e-5
    assert (model(x) - want).abs().max() == 0  # the caller's model is not changed
    assert any("per-weight pruning left 4 whole unit(s)" in line for line in logs), logs


def test_a_failure_to_remove_them_keeps_them_as_zeros_and_the_run_goes_on(monkeypatch) -> None:
    from prunedrop.stages import slimming

    def broken(*args, **kwargs):
        raise RuntimeError("an operator the dependency graph has never seen\nsecond line")

    monkeypatch.setattr(slimming, "remove_pruned_units", broken)
    model, x = _emptied_mlp(), torch.randn(8, 6)
    want = model(x)
    logs: list[str] = []
    slimmed = slimming.slim_pruned(model, {}, x[:4], logs.append, channel_multiple=None)
    assert slimmed.model[0].out_features == 10 and (slimmed.model(x) - want).abs().max() == 0
    assert any(line.startswith("note: the whole units that per-weight pruning emptied stay in the model as zeros")
               and "RuntimeError: an operator the dependency graph has never seen)" in line for line in logs), logs
