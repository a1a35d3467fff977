"""Both granularities at once (``sbp_sparse_vd``): log-normal noise per unit over sparse VD per weight."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from prunedrop.cli import cli
from prunedrop.errors import PrunedropError
from prunedrop.export import run_onnx
from prunedrop.layers import LAYER_REGISTRY
from prunedrop.layers.lognormal import LinearLogNormal
from prunedrop.layers.sparse_vd import LinearSVD, fused_kernels
from prunedrop.prune import prune
from prunedrop.recipes import Recipe, load_recipe
from prunedrop.storage import load_saved_model
from prunedrop.testing import tiny_classification_data, write_tiny_project

EXAMPLES = {
    nn.Linear: (nn.Linear(6, 4), (5, 6)),
    nn.Conv1d: (nn.Conv1d(3, 4, 3, stride=2, padding=1), (2, 3, 9)),
    nn.Conv2d: (nn.Conv2d(3, 4, 3, padding=1, bias=False), (2, 3, 6, 6)),
    nn.Conv3d: (nn.Conv3d(2, 4, 3, padding=1, stride=(1, 2, 2)), (2, 2, 4, 5, 5)),
}
CASES = [pytest.param(vtype, *EXAMPLES[dtype], id=vtype.__name__)
         for dtype, vtype in LAYER_REGISTRY["sbp_sparse_vd"].items()]


def _rows(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _prune_some(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Odd units far beyond the SNR threshold, and every third weight far beyond the log α threshold."""
    out = layer.weight.shape[0]
    units = torch.arange(out) % 2 == 1
    weights = (torch.arange(layer.weight.numel()) % 3 == 0).view_as(layer.weight)
    with torch.no_grad():
        layer.mu.uniform_(-2.0, 0.3)
        layer.log_sigma.copy_(torch.where(units, 3.0, -4.0))
        layer.log_sigma2.copy_(torch.where(weights, 8.0, -10.0) + torch.log(layer.weight**2 + 1e-8))
    return units, weights


def test_every_plain_type_is_registered() -> None:
    assert set(LAYER_REGISTRY["sbp_sparse_vd"]) == {nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d}


@pytest.mark.parametrize(("vtype", "dense", "shape"), CASES)
def test_from_dense_shares_weights_and_has_both_noises(vtype, dense, shape) -> None:
    dense = copy.deepcopy(dense)
    layer = vtype.from_dense(dense, threshold=0.5, weight_threshold=2.0)
    assert isinstance(layer, vtype.dense_type) and layer.weight is dense.weight and layer.bias is dense.bias
    out = dense.weight.shape[0]
    assert layer.log_sigma2.shape == dense.weight.shape
    assert layer.mu.shape == layer.log_sigma.shape == (out,)
    assert layer.noise_parameters() == [layer.log_sigma2, layer.mu, layer.log_sigma]
    assert (layer.threshold, layer.weight_threshold) == (0.5, 2.0)
    # at init no unit is pruned, and of the weights only tiny ones (log α = −10 − log θ² > 2)
    assert layer.unit_keep_mask().shape == (out,) and layer.unit_keep_mask().all()
    assert torch.equal(layer.keep_mask(), dense.weight.detach() ** 2 + 1e-8 > torch.exp(torch.tensor(-12.0)))


@pytest.mark.parametrize(("vtype", "dense", "shape"), CASES)
def test_kl_is_the_sum_of_both_and_gradients_reach_every_parameter(vtype, dense, shape) -> None:
    dense = copy.deepcopy(dense)
    torch.manual_seed(0)
    layer = vtype.from_dense(dense).train()
    _prune_some(layer)
    kl = layer.kl()
    assert kl.dim() == 0 and torch.isfinite(kl)
    assert torch.allclose(kl, layer.unit_kl() + layer.weight_kl())
    # the parts are the two families' own KLs
    unit_only, weight_only = LinearLogNormal.from_dense(nn.Linear(2, layer.mu.numel())), \
        LinearSVD.from_dense(nn.Linear(2, 2))
    with torch.no_grad():
        unit_only.mu.copy_(layer.mu)
        unit_only.log_sigma.copy_(layer.log_sigma)
    assert torch.allclose(layer.unit_kl(), unit_only.kl())
    weight_only.weight, weight_only.log_sigma2 = layer.weight, layer.log_sigma2
    assert torch.allclose(layer.weight_kl(), weight_only.kl())
    (layer(torch.randn(shape)).square().sum() + kl).backward()
    for p in [*layer.noise_parameters(), layer.weight]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


@pytest.mark.parametrize(("vtype", "dense", "shape"), CASES)
def test_eval_equals_to_dense_with_units_and_weights_pruned(vtype, dense, shape) -> None:
    dense = copy.deepcopy(dense)
    torch.manual_seed(1)
    layer = vtype.from_dense(dense)
    units, weights = _prune_some(layer)
    layer.eval()
    assert torch.equal(layer.unit_keep_mask(), ~units)
    assert torch.equal(layer.weight_keep_mask(), ~weights)
    keep = ~weights & _rows(~units, weights)
    assert torch.equal(layer.keep_mask(), keep)
    masks = layer.parameter_keep_masks()
    assert torch.equal(masks["weight"], keep)
    assert ("bias" in masks) == (dense.bias is not None)
    if dense.bias is not None:
        assert torch.equal(masks["bias"], ~units)
    plain = layer.to_dense()
    assert type(plain) is vtype.dense_type and not plain.training
    assert torch.equal(plain.weight != 0, keep)
    x = torch.randn(shape)
    y_layer, y_plain = layer(x), plain(x)
    assert torch.allclose(y_plain, y_layer, rtol=1e-5, atol=1e-6)
    assert torch.equal(layer(x), y_layer)  # deterministic
    assert (y_plain[:, units] == 0).all()  # pruned units output exact zeros
    # expected: the surviving weights, each unit times E[θ]
    m = layer.expected_theta().detach() * ~units
    ref = copy.deepcopy(dense)
    with torch.no_grad():
        ref.weight.mul_(~weights)
    y_ref = ref(x) * m.view(1, -1, *([1] * (x.dim() - 2)))
    assert torch.allclose(y_layer, y_ref, rtol=1e-5, atol=1e-6)
    # a threshold given to to_dense is the unit threshold; the weight threshold stays
    assert torch.equal(layer.to_dense(1e-9).weight != 0, ~weights & (dense.weight != 0))


def test_fused_kernels_hand_the_trainer_both_kls() -> None:
    torch.manual_seed(2)
    layer = LAYER_REGISTRY["sbp_sparse_vd"][nn.Linear].from_dense(nn.Linear(5, 3)).train()
    _prune_some(layer)
    layer._kernels = fused_kernels()
    layer(torch.randn(4, 5))
    assert layer._step_kl is not None
    assert torch.allclose(layer._step_kl, layer.kl())


def test_prune_reports_units_and_weights() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    from prunedrop.convert import to_variational

    variational = to_variational(model, Recipe(method="sbp_sparse_vd", exclude=["2"]))
    units, weights = _prune_some(variational[0])
    result = prune(variational)
    assert result.per_weight
    assert torch.equal(result.unit_masks["0"], ~units)
    keep = ~weights & _rows(~units, weights)
    assert torch.equal(result.masks["0.weight"], keep) and torch.equal(result.masks["0.bias"], ~units)
    assert result.kept["0"] == (int(keep.sum()), keep.numel())
    assert result.kept_unit_fraction == pytest.approx(0.5)


def test_recipe_weight_threshold_is_checked() -> None:
    recipe = load_recipe(Path(__file__).parent.parent / "recipes" / "sbp+sparse-vd.yaml")
    assert recipe.method == "sbp_sparse_vd" and recipe.threshold == 1.0 and recipe.weight_threshold == 3.0
    assert recipe.pruning_rule() == "SNR ≤ 1 (units) and log α > 3 (weights)"
    with pytest.raises(PrunedropError, match="'weight_threshold' = 12.0 must lie inside"):
        Recipe(method="sbp_sparse_vd", weight_threshold=12.0)
    with pytest.raises(PrunedropError, match="signal-to-noise threshold"):
        Recipe(method="sbp_sparse_vd", threshold=-1.0)


RECIPE = """\
# SBP per unit over sparse VD per weight on the hidden layers; the head keeps its classes
method: sbp_sparse_vd
exclude: ["net.5"]
epochs: 8
batch_size: 16
lr: 0.003
noise_lr: 0.1
lr_schedule: constant
kl_weight: 1.0
kl_warmup_epochs: 1
finetune_epochs: 1
# a fixed β on a tiny problem: the structure is tested, not the accuracy (a run over a budget exits 4)
max_metric_drop: null
sparse_storage: always
latency_runs: 3
mc_samples: 2
plots: false
device: cpu
"""


def test_compress_removes_units_and_stores_the_remaining_weights_sparsely(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    write_tiny_project(tmp_path, recipe=RECIPE)
    # half of net.1's units are dead (zero rows and bias): the unit KL alone decides them; and a third of the
    # live units' weights are zero, which sparse VD prunes at once (log α = log σ² − log 1e-8 ≈ 8.4)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    state["net.1.weight"][::2] = 0
    state["net.1.bias"][::2] = 0
    state["net.1.weight"][:, ::3] = 0
    torch.save(state, tmp_path / "model.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz",
                                      "--recipe", "recipe.yaml", "-o", "out"])
    assert result.exit_code == 0, result.output
    assert "of the converted layers' units and" in result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    layers = {row["name"]: row for row in report["layers"]}
    hidden_after = layers["net.1"]["shape_after"][0]
    # units removed physically...
    assert hidden_after <= 12, layers["net.1"]
    assert layers["net.3"]["shape_after"][1] == hidden_after
    assert report["flops"]["after"] < report["flops"]["before"]
    assert report["params"]["total_after"] < report["params"]["total_before"]
    assert report["kept_unit_fraction_converted"] < 1.0
    # ...and what remains is sparse: fewer non-zero than stored parameters, non-zero MACs below dense MACs
    assert report["params"]["after"] < report["params"]["total_after"]
    assert layers["net.1"]["params_after"] <= hidden_after * 16 * 2 // 3 + hidden_after
    assert report["flops"]["nonzero_after"] < report["flops"]["after"]
    assert report["sparse_initializers"]
    assert report["slim"]["max_abs_diff"] <= 1e-5
    # 40 validation examples: one is 2.5 points; the run is short and noisy, this only rules out a broken model
    assert report["metric"]["after"] >= report["metric"]["before"] - 15
    # the slim model reloads without its class and agrees with its ONNX export
    x, _ = tiny_classification_data(n=200, shape=(1, 4, 4), seed=1)
    slim = load_saved_model(tmp_path / "out")
    assert slim.get_submodule("net.1").out_features == hidden_after
    torch.testing.assert_close(torch.from_numpy(run_onnx(tmp_path / "out" / "model.onnx", x[:16])),
                               slim(x[:16]), atol=1e-5, rtol=0)
    # re-thresholding the checkpoint keeps both granularities: slim layers, sparse weights
    result = CliRunner().invoke(cli, ["export", "out", "-o", "again.onnx"])
    assert result.exit_code == 0, result.output
    import onnx

    graph = onnx.load(tmp_path / "again.onnx").graph
    sparse = [list(n.attribute[0].sparse_tensor.dims) for n in graph.node
              if n.op_type == "Constant" and n.attribute[0].name == "sparse_value"]
    dense_2d = [list(t.dims) for t in graph.initializer if len(t.dims) == 2]
    assert any(s[1] == 16 and s[0] == hidden_after for s in sparse + dense_2d), (sparse, dense_2d)
    assert sparse, "the remaining zeros are stored sparsely"


def test_the_old_class_names_still_import() -> None:
    """The method's layers were named ``*LogNormalSVD`` in ``prunedrop.layers.combined``; user code keeps working."""
    from prunedrop import layers

    assert layers.LinearLogNormalSVD is layers.LinearSBPSparseVD
    assert layers.Conv2dLogNormalSVD is layers.Conv2dSBPSparseVD
