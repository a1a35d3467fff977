"""Structured noise that keeps BatchNorm (recipe key ``batchnorm_noise``, issue 19).

A convolution → BatchNorm pair is one unit: the noise multiplies the BatchNorm's output, the variational phase trains
the network as it was trained, a pruned unit outputs exact zeros, and the BatchNorm is folded exactly at thresholding.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from prunedrop.convert import ConversionSummary, to_deterministic, to_variational
from prunedrop.data import DataBundle, load_data
from prunedrop.errors import PrunedropError
from prunedrop.export import export_onnx, verify_onnx
from prunedrop.prune import prune
from prunedrop.recipes import Recipe
from prunedrop.slim import slim
from prunedrop.testing import fit
from prunedrop.testing_arch import randomize_batchnorm
from prunedrop.train import evaluate, finetune, finetune_masked


def _bn_cnn(channels: int = 8, classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * channels, classes))


def _random_bn_cnn(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    model = _bn_cnn(6, 3)
    randomize_batchnorm(model, torch.Generator().manual_seed(seed + 1))
    return model.eval(), torch.randn(8, 1, 8, 8)


@pytest.mark.parametrize("method", ["sbp", "group_vd", "sbp_sparse_vd"])
def test_noise_sits_on_the_batchnorm_output_and_folds_exactly(method: str) -> None:
    model, x = _random_bn_cnn()
    summary = ConversionSummary()
    variational = to_variational(copy.deepcopy(model), Recipe(method=method), summary=summary, example_input=x[:2])
    assert summary.normalised == [["0", "1"], ["3", "4"]]
    assert isinstance(variational[1], nn.Identity) and isinstance(variational[4], nn.Identity)
    assert isinstance(variational[0].batchnorm, nn.BatchNorm2d)
    variational.eval()
    with torch.no_grad():
        want = variational(x)
        dense = prune(variational).model
        assert not any(isinstance(m, nn.BatchNorm2d) for m in dense.modules())
        torch.testing.assert_close(dense(x), want, atol=1e-5, rtol=1e-5)


def test_pruned_unit_outputs_exact_zeros_with_its_batchnorm_in_place() -> None:
    model, x = _random_bn_cnn()
    variational = to_variational(copy.deepcopy(model), Recipe(method="sbp"), example_input=x[:2])
    layer = variational[0]
    with torch.no_grad():
        layer.mu[[1, 4]] = -20.0  # E[θ] at its floor and the SNR ≤ 1: pruned
        layer.log_sigma[[1, 4]] = 1.0
    assert layer.keep_mask().tolist() == [True, False, True, True, False, True]
    seen: dict[str, torch.Tensor] = {}
    variational[0].register_forward_hook(lambda m, i, o: seen.__setitem__("out", o))
    for mode in (True, False):  # sampling (batch statistics) and deterministic (running statistics)
        variational.train(mode)
        variational(x)
        assert seen["out"].shape == (8, 6, 8, 8)
        if not mode:
            assert bool((seen["out"][:, [1, 4]] == 0).all())
    # the BatchNorm's shift is non-zero for these units: on the convolution's output it would leak through
    assert bool((model[1].bias[[1, 4]] != 0).all())
    old = to_variational(copy.deepcopy(model), Recipe(method="sbp", batchnorm_noise="before"), example_input=x[:2])
    with torch.no_grad():
        old[0].mu[[1, 4]], old[0].log_sigma[[1, 4]] = -20.0, 1.0
        after_bn = old[:2].eval()(x)
    assert not bool((after_bn[:, [1, 4]] == 0).all())


def test_slim_and_onnx_parity_with_the_batchnorm_folded(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    model, x = _random_bn_cnn()
    variational = to_variational(copy.deepcopy(model), Recipe(method="sbp", exclude=["8"]), example_input=x[:2])
    with torch.no_grad():
        variational[0].mu[[0, 2]], variational[0].log_sigma[[0, 2]] = -20.0, 1.0
        variational[3].mu[[5]], variational[3].log_sigma[[5]] = -20.0, 1.0
    variational.eval()
    with torch.no_grad():
        want = variational(x)
    pruned = prune(variational)
    slimmed = slim(pruned.model, pruned.unit_masks, x)
    assert slimmed.removed == {"0": (6, 4), "3": (6, 5)}
    assert not slimmed.notes
    with torch.no_grad():
        torch.testing.assert_close(slimmed.model(x), want, atol=1e-5, rtol=1e-5)
    exported = export_onnx(slimmed.model, x[:2], tmp_path / "m.onnx", sparse=False)
    assert verify_onnx(exported.path, slimmed.model, x) <= 1e-4


def test_state_dict_round_trip_and_deterministic_conversion() -> None:
    model, x = _random_bn_cnn()
    recipe = Recipe(method="sbp")
    a = to_variational(copy.deepcopy(model), recipe, example_input=x[:2])
    a.train()
    a(x)  # moves the BatchNorm's running statistics
    b = to_variational(copy.deepcopy(model), recipe, example_input=x[:2])
    b.load_state_dict(a.state_dict())
    assert "0.batchnorm.running_mean" in a.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(b.eval()(x), a.eval()(x))


def test_monte_carlo_sampling_keeps_the_running_statistics() -> None:
    from prunedrop.uncertainty import variational_sampling_mode

    model, x = _random_bn_cnn()
    variational = to_variational(copy.deepcopy(model), Recipe(method="sbp"), example_input=x[:2]).eval()
    before = variational[0].batchnorm.running_mean.clone()
    with variational_sampling_mode(variational):
        variational(x)
    assert torch.equal(variational[0].batchnorm.running_mean, before)


def test_recipe_key_and_the_deprecated_fold_batchnorm() -> None:
    assert Recipe().batchnorm_noise == "after"
    with pytest.warns(FutureWarning, match="fold_batchnorm is deprecated"):
        assert Recipe.from_dict({"fold_batchnorm": True}).batchnorm_noise == "fold"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Recipe.from_dict({"fold_batchnorm": False}).batchnorm_noise == "after"
        # a run folder written before the key existed trained with the placement of its day
        assert Recipe.from_dict({"fold_batchnorm": False}, saved_run=True).batchnorm_noise == "before"
        assert Recipe.from_dict({"fold_batchnorm": True}, saved_run=True).batchnorm_noise == "fold"
        saved = Recipe(batchnorm_noise="after").to_dict()
        assert Recipe.from_dict(saved, saved_run=True).batchnorm_noise == "after"
    assert saved["fold_batchnorm"] is None
    with pytest.raises(PrunedropError, match="contradict"):
        Recipe.from_dict({"fold_batchnorm": True, "batchnorm_noise": "before"})
    with pytest.raises(PrunedropError, match="batchnorm_noise"):
        Recipe.from_dict({"batchnorm_noise": "sideways"})


def test_untraceable_model_keeps_the_noise_before_its_batchnorms() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = -x
            return self.fc(self.bn(self.conv(x)).mean((2, 3)))

    summary = ConversionSummary()
    model = to_variational(Branchy(), Recipe(method="sbp", keep_output_layers=False), summary=summary)
    assert not summary.normalised and isinstance(model.bn, nn.BatchNorm2d)
    assert len(summary.notes) == 1 and "batchnorm_noise: before" in summary.notes[0]


def _digits_on_pixel_scale() -> DataBundle:
    """scikit-learn digits on the 0-255 scale of raw 8-bit pixels: a BatchNorm after the first convolution makes the
    scale harmless; folded into the convolution, it leaves weights so small that Adam's fixed-size steps overturn them."""
    data = load_data("digits", seed=0)

    def scaled(split, n: int):
        xs, ys = zip(*[split[i] for i in range(min(n, len(split)))], strict=True)
        return TensorDataset(torch.stack(xs) * 255, torch.as_tensor(ys))

    # 640 training images (20 steps of 32 an epoch), all 144 validation images
    return DataBundle(name="digits-255", train=scaled(data.train, 640), val=scaled(data.val, len(data.val)),
                      test=None, input_shape=(1, 8, 8), num_classes=10)


def test_a_starting_network_is_never_wrecked() -> None:
    """Noise at its initial level and β = 0: one variational epoch matches plain fine-tuning of the dense network.

    The same epoch with the BatchNorms folded first (what the shipped structured recipes did with ``fold_batchnorm:
    true``) falls far outside the tolerance: that is what the test guards against."""
    torch.set_num_threads(1)
    data = _digits_on_pixel_scale()
    x, y = data.train.tensors
    torch.manual_seed(0)
    dense = fit(_bn_cnn(), x, y, 100).eval()

    def accuracy(model: nn.Module) -> float:
        return evaluate(model.eval(), data.loader("val", 500))["accuracy"]

    recipe = Recipe(method="sbp", epochs=1, batch_size=32, lr=3e-3, noise_lr=3e-3, kl_weight=0.0, kl_warmup_epochs=0,
                    lr_schedule="constant", finetune_epochs=1, finetune_lr=3e-3, max_metric_drop=None, device="cpu",
                    compile="never", seed=0)
    torch.manual_seed(0)
    plain = copy.deepcopy(dense)
    finetune_masked(plain, {}, data, recipe, progress=False)
    results = {}
    for placement in ("after", "fold"):
        torch.manual_seed(0)
        variational = to_variational(copy.deepcopy(dense), recipe.replace(batchnorm_noise=placement),
                                     example_input=x[:2])
        finetune(variational, data, recipe, progress=False)
        results[placement] = accuracy(variational)
    tolerance = 5.0  # points: 144 validation samples, one epoch of Adam at 3e-3
    assert abs(results["after"] - accuracy(plain)) <= tolerance, (results, accuracy(plain))
    assert results["fold"] < accuracy(plain) - tolerance, (results, accuracy(plain))


def test_fixed_beta_over_budget_says_so_in_one_line_and_exits_4(project) -> None:
    """A fixed β (the user's) that ends over the budget: everything is written, one line says so, exit status 4;
    with ``max_metric_drop: null`` the same run exits 0. An automatic β never exports over its budget."""
    import json

    from click.testing import CliRunner

    from prunedrop import pipeline
    from prunedrop.cli import cli

    line = pipeline.fixed_beta_budget_line(Recipe(kl_weight=10.0), 81.75, 51.5, 1.0004)
    assert "\n" not in line and "30.2 points worse" in line and "1x fewer parameters" in line
    assert pipeline.over_budget(Recipe(kl_weight=10.0), 81.75, 51.5)
    assert not pipeline.over_budget(Recipe(kl_weight=10.0, max_metric_drop=None), 81.75, 51.5)
    recipe = project / "wreck.yaml"
    recipe.write_text("epochs: 2\nbatch_size: 16\nlatency_runs: 0\nplots: false\nmc_samples: 0\nfinetune_epochs: 0\n"
                      "device: cpu\nlr: 3.0\nkl_weight: 0.0\nsweep_thresholds: [3.0]\n")
    args = ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz", "--recipe", str(recipe), "-q"]
    result = CliRunner().invoke(cli, [*args, "-o", "out", "--max-drop", "0.5"])
    assert result.exit_code == 4, result.output
    assert "over budget: the compressed model is" in result.output and (project / "out" / "model.onnx").is_file()
    assert json.loads((project / "out" / "report.json").read_text())["budget"]["within"] is False
    recipe.write_text(recipe.read_text() + "max_metric_drop: null\n")
    accepted = CliRunner().invoke(cli, [*args, "-o", "accepted"])
    assert accepted.exit_code == 0, accepted.output


def test_compress_trains_with_the_batchnorms_and_exports_them_folded(tmp_path, monkeypatch) -> None:
    from test_finetune_slim import _data, drop_units_after_training  # pytest puts tests/ on sys.path

    from prunedrop import pipeline
    from prunedrop.testing_arch import tiny_arch

    plain, x = tiny_arch("resnet_basic")
    drop_units_after_training(monkeypatch, {"layer1.conv1.0": [1, 3]})
    recipe = Recipe(method="sbp", tie_residual=True, exclude=["fc"], epochs=1, finetune_epochs=1, batch_size=16,
                    kl_warmup_epochs=0, device="cpu", mc_samples=0, plots=False, latency_runs=0,
                    sweep_thresholds=[1.0], kl_weight=1.0, max_metric_drop=None)
    logged: list[str] = []
    result = pipeline.compress(plain, _data(tuple(x.shape[1:])), recipe, tmp_path / "out", progress=False,
                               log=logged.append)
    conversion = result.report["conversion"]
    assert len(conversion["batchnorm_noise_after"]) == 6 and conversion["batchnorm_folded"] == []
    assert any(m.startswith("unit noise on the output of 6 BatchNorm(s)") for m in logged)
    # the noise-free fine-tuning runs normalised too: calibrated BatchNorms on exactly those convolutions
    assert any("fine-tuning with BatchNorm after 6 convolution(s)" in m for m in logged)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in result.model.modules())
    assert result.report["parity_max_abs_diff"] <= recipe.parity_atol
    # the run's checkpoint loads into a fresh conversion (the BatchNorms inside their layers): re-export works
    again = pipeline.reexport(tiny_arch("resnet_basic")[0], _data(tuple(x.shape[1:])), recipe, tmp_path / "out",
                              tmp_path / "again.onnx")
    assert again.parity_max_abs_diff <= recipe.parity_atol


def test_quantized_export_of_a_network_whose_batchnorms_joined_their_noise(tmp_path, monkeypatch) -> None:
    """The two features together: BatchNorms inside the SBP layers (folded at thresholding) and an int8 file from
    the posterior's bits; every converted convolution gets its bits and the int8 file is written and measured.
    (The tiny network's int8 file is larger than its float32 one, so the speed check and the report's timing are
    told that it runs faster: a file neither smaller nor faster is not written.)"""
    from test_finetune_slim import _data  # pytest puts tests/ on sys.path
    from test_quantize import _int8_faster, _quantized_timed_faster

    from prunedrop import pipeline
    from prunedrop.testing_arch import tiny_arch

    plain, x = tiny_arch("resnet_basic")
    recipe = Recipe(method="sbp", tie_residual=True, exclude=["fc"], epochs=1, finetune_epochs=1, batch_size=16,
                    kl_warmup_epochs=0, device="cpu", mc_samples=0, plots=False, latency_runs=2,
                    sweep_thresholds=[1.0], kl_weight=1.0, max_metric_drop=None, quantize="bayes")
    monkeypatch.setattr("prunedrop.quantize.plan.time_models", lambda paths, *a, **k: _int8_faster(paths))
    monkeypatch.setattr("prunedrop.stages.exporting.measure_latency", _quantized_timed_faster)  # the report agrees
    result = pipeline.compress(plain, _data(tuple(x.shape[1:])), recipe, tmp_path / "out", progress=False,
                               log=lambda m: None)
    assert len(result.report["conversion"]["batchnorm_noise_after"]) == 6
    q = result.report["quantization"]
    assert (tmp_path / "out" / "model-int8.onnx").is_file() and q["bytes"] > 0
    converted = set(result.report["conversion"]["converted"])
    with_bits = {row["layer"] for row in q["layers"] if "units" in row}
    assert converted <= with_bits, (converted, q["layers"])


class _InstanceNormed(nn.Module):
    """Two convolutions, each followed by an InstanceNorm2d (``norm``: affine or not), then a GroupNorm of two groups
    (it mixes c3's channels: c3 stays dense)."""

    def __init__(self, norm: str) -> None:
        super().__init__()
        affine = norm == "affine"
        self.c1, self.n1 = nn.Conv2d(1, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=affine)
        self.c2, self.n2 = nn.Conv2d(8, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=affine)
        self.c3, self.n3 = nn.Conv2d(8, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.n1(self.c1(x)))
        h = torch.relu(self.n2(self.c2(h)))
        return self.fc(torch.relu(self.n3(self.c3(h))).amax((2, 3)))


@pytest.mark.parametrize("norm", ["instance", "affine"])
def test_noise_before_an_instance_norm_is_drawn_per_position(norm: str) -> None:
    """An InstanceNorm divides each channel of each sample by its own spread, so a unit noise drawn once per sample and
    unit cancelled there: the data term's gradient on the noise was zero, only the KL moved it, and SBP pruned 1.06×
    on a digits CNN. The noise of the layers before such a norm is drawn per position now; the data term reaches it."""
    from prunedrop.recipes import Recipe

    torch.manual_seed(0)
    model, x = _InstanceNormed(norm).eval(), torch.randn(8, 1, 6, 6)
    summary = ConversionSummary()
    variational = to_variational(copy.deepcopy(model), Recipe(method="sbp"), summary=summary, example_input=x[:2])
    assert summary.per_position == [["c1", "n1"], ["c2", "n2"]]
    assert variational.c1.noise_per_position and type(variational.c3) is nn.Conv2d

    def noise_gradient(per_position: bool) -> float:
        torch.manual_seed(1)
        variational.c2.noise_per_position = per_position
        variational.zero_grad()
        variational.train()
        torch.nn.functional.cross_entropy(variational(x), torch.arange(8) % 3).backward()
        return float(variational.c2.log_sigma.grad.abs().sum())

    assert noise_gradient(False) < 1e-6 < noise_gradient(True) / 1e3


class _BatchNormAct2d(nn.BatchNorm2d):
    """A BatchNorm with its activation, as timm's BatchNormAct2d: ``act(drop(BN(x)))``."""

    def __init__(self, channels: int, act: nn.Module) -> None:
        super().__init__(channels)
        self.drop, self.act = nn.Identity(), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


def _bn_act_cnn(act: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), _BatchNormAct2d(6, act()),
                         nn.Conv2d(6, 6, 3, padding=1), _BatchNormAct2d(6, act()),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


@pytest.mark.parametrize("method", ["sbp", "group_vd"])
def test_a_batchnorm_with_its_activation_joins_the_noise(method: str) -> None:
    """A library's BatchNorm subclass that applies its activation (timm's BatchNormAct2d) was traced through and
    never paired: the noise stayed before every BatchNorm of timm's EfficientNets and MobileNets (MobileNetV4-S: 46
    BatchNorms, 0 pairs). Its normalisation joins the noise now, its activation keeps the place, and the model computes
    what it did (exactly, with group_vd's noise mean of one)."""
    from prunedrop.batchnorm import batchnorm_pairs

    torch.manual_seed(0)
    model = _bn_act_cnn(nn.SiLU)
    randomize_batchnorm(model, torch.Generator().manual_seed(1))
    model.eval()
    x = torch.randn(8, 1, 8, 8)
    assert batchnorm_pairs(model) == [("0", "1"), ("2", "3")]
    summary = ConversionSummary()
    variational = to_variational(copy.deepcopy(model), Recipe(method=method), summary=summary, example_input=x[:2])
    assert summary.normalised == [["0", "1"], ["2", "3"]]
    assert isinstance(variational[1], nn.Sequential) and isinstance(variational[1][1], nn.SiLU)
    assert type(variational[0].batchnorm) is nn.BatchNorm2d
    torch.testing.assert_close(variational[0].batchnorm.running_var, model[1].running_var)
    if method == "group_vd":  # a noise mean of one: the function is the given model's, before and after folding
        torch.testing.assert_close(variational.eval()(x), model(x))
        folded = to_deterministic(copy.deepcopy(variational)).eval()
        assert type(folded[0]) is nn.Conv2d and isinstance(folded[1], nn.Sequential)
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-4)


def test_a_batchnorm_whose_activation_keeps_no_zero_stays_where_it_is() -> None:
    """A sigmoid after the normalisation would turn a pruned unit's zero into 0.5: such a subclass is left before the
    noise, as any BatchNorm the noise cannot follow."""
    from prunedrop.batchnorm import batchnorm_pairs

    assert batchnorm_pairs(_bn_act_cnn(nn.Sigmoid).eval()) == []


class _InstanceNormedResidual(nn.Module):
    """A residual stream written by a stem and a block's second convolution, each followed by an InstanceNorm
    (CycleGAN's residual blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.n0 = nn.Conv2d(1, 8, 3, padding=1), nn.InstanceNorm2d(8)
        self.c1, self.c2, self.n2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.InstanceNorm2d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.n0(self.stem(x)))
        h = h + self.n2(self.c2(torch.relu(self.c1(h))))
        return self.fc(h.mean((2, 3)))


def test_layers_tied_across_a_residual_stream_draw_per_position_together() -> None:
    """The layers that write one residual stream share one draw (tie_residual): an InstanceNorm after them cancels it
    alike, so all of them draw per position, one draw of one shape."""
    torch.manual_seed(0)
    model, x = _InstanceNormedResidual().eval(), torch.randn(4, 1, 6, 6)
    summary = ConversionSummary()
    variational = to_variational(copy.deepcopy(model), Recipe(method="sbp", tie_residual=True), summary=summary,
                                 example_input=x[:2])
    assert ["c2", "stem"] in [sorted(g) for g in summary.tied]
    assert variational.stem.noise_per_position and variational.c2.noise_per_position
    variational.train()
    torch.nn.functional.cross_entropy(variational(x), torch.arange(4) % 3).backward()
    assert float(variational.stem.log_sigma.grad.abs().sum()) > 0


class _Untraceable(nn.Module):
    """A conv–BatchNorm CNN whose forward branches on its input's values (torch.fx cannot trace it); ``returns``: it
    returns the first convolution's output too; ``reused``: that output also feeds a sum."""

    def __init__(self, how: str = "") -> None:
        super().__init__()
        self.how = how
        self.c1, self.b1 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> Any:
        if x.mean() > 100:  # data-dependent control flow
            x = x / 2
        y = self.c1(x)
        h = torch.relu(self.b1(y))
        if self.how == "reused":
            h = h + y
        out = self.fc(torch.relu(self.b2(self.c2(h))).mean((2, 3)))
        return (out, y) if self.how == "returns" else out


@pytest.mark.parametrize("how", ["", "returns", "reused"])
def test_batchnorm_pairs_of_a_model_torch_fx_cannot_trace_come_from_a_run(how: str) -> None:
    """Where torch.fx cannot trace the model (timm's EfficientViT, MobileViT, TF-EfficientNet), every BatchNorm kept
    the noise before it. One forward pass on the example pairs them now: a BatchNorm given the very tensor a
    convolution returned, that tensor used by nothing else (a sum with it, or the model returning it, keeps the pair
    apart)."""
    from prunedrop.batchnorm import batchnorm_pairs

    torch.manual_seed(0)
    model = _Untraceable(how)
    randomize_batchnorm(model, torch.Generator().manual_seed(1))
    model.eval()
    x = torch.randn(4, 1, 6, 6)
    with pytest.raises(PrunedropError, match="torch.fx"):
        batchnorm_pairs(model)
    expected = [("c2", "b2")] if how else [("c1", "b1"), ("c2", "b2")]
    assert batchnorm_pairs(model, x) == expected
    summary = ConversionSummary()
    variational = to_variational(copy.deepcopy(model), Recipe(method="group_vd"), summary=summary, example_input=x[:2])
    assert summary.normalised == [list(p) for p in expected]
    torch.testing.assert_close(variational.eval()(x), model(x))
    from prunedrop.inspection import inspect_model  # `prunedrop inspect` says the same

    layers = {e["name"]: e for e in inspect_model(model, x, Recipe(method="group_vd"))["layers"]}
    assert {name for name, e in layers.items() if e["status"] == "folded"} == {bn for _, bn in expected}
