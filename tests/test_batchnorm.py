"""prunedrop.batchnorm: ``fold_batchnorm`` (BatchNorms folded into their convolutions before the conversion) and
``finetune_batchnorm`` (calibrated BatchNorms attached to the convolutions that have none for the noise-free
fine-tuning, and folded back afterwards)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from test_finetune_slim import RECIPE, _data, _prune_units, drop_units_after_training  # tests/ on sys.path
from torch import nn

from prunedrop import pipeline
from prunedrop.batchnorm import (
    ATTACHED,
    attach_batchnorm,
    fold_attached,
    fold_batchnorm,
    unnormalised_convolutions,
)
from prunedrop.convert import ConversionSummary, to_variational, variational_layers
from prunedrop.errors import PrunedropError
from prunedrop.prune import prune
from prunedrop.recipes import Recipe
from prunedrop.slim import silent_units, slim
from prunedrop.stages import finetune_pruned
from prunedrop.testing import tiny_model
from prunedrop.testing_arch import TINY_ARCHS, tiny_arch
from prunedrop.train import finetune_masked


def _batches(shape: tuple[int, ...], n: int = 3, size: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [torch.randn(size, *shape, generator=g) * 2 + 0.5 for _ in range(n)]


def _attached(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if hasattr(m, ATTACHED)]


def test_only_convolutions_without_a_batchnorm_get_one() -> None:
    zoo, _ = tiny_arch("convzoo")  # the depthwise convolution feeds a BatchNorm; the other two do not
    assert unnormalised_convolutions(zoo) == ["features.0", "features.5"]
    for arch in ("vgg_bn", "resnet_basic", "mobilenet_v2"):  # a BatchNorm after every convolution
        model, x = tiny_arch(arch)
        assert attach_batchnorm(model, _batches(tuple(x.shape[1:]))) == {}
        assert _attached(model) == []
    gelu, _ = tiny_arch("gelu")
    assert unnormalised_convolutions(gelu) == ["conv1", "conv2"]


@pytest.mark.parametrize("arch", ["convzoo", "gelu", "lenet5", "conv1d", "conv3d"])
def test_attaching_keeps_the_function_and_folding_keeps_the_fine_tuned_one(arch: str) -> None:
    model, x = tiny_arch(arch) if arch in TINY_ARCHS else tiny_model(arch)
    before = model(x)
    masks = attach_batchnorm(model, _batches(tuple(x.shape[1:])))
    assert masks == {} and len(_attached(model)) == len(unnormalised_convolutions(model)) > 0
    torch.testing.assert_close(model.eval()(x), before, atol=1e-5, rtol=1e-5)
    # in training mode each attached BatchNorm normalises with the batch's statistics
    conv = model.get_submodule(_attached(model)[0])
    outputs = []
    handle = getattr(conv, ATTACHED).register_forward_hook(lambda m, i, o: outputs.append(o))
    model.train()(_batches(tuple(x.shape[1:]), n=1, size=64)[0])
    handle.remove()
    bn = getattr(conv, ATTACHED)
    normalised = (outputs[0] - bn.bias.view(1, -1, *[1] * (outputs[0].dim() - 2))) / \
        bn.weight.view(1, -1, *[1] * (outputs[0].dim() - 2))
    dims = [d for d in range(normalised.dim()) if d != 1]
    torch.testing.assert_close(normalised.mean(dims), torch.zeros(conv.out_channels), atol=1e-4, rtol=0)
    # train a little, then fold: the eval-mode function stays, the hooks and BatchNorms go
    data = _data(tuple(x.shape[1:]))
    finetune_masked(model, {}, data, RECIPE, progress=False)
    tuned = model.eval()(x)
    assert not torch.allclose(tuned, before, atol=1e-3)
    names = _attached(model)
    assert fold_attached(model) == names
    assert _attached(model) == []
    assert not any(ATTACHED in k for k in model.state_dict())
    assert all(not m._forward_hooks for m in model.modules())
    torch.testing.assert_close(model(x), tuned, atol=1e-5, rtol=1e-5)
    copy.deepcopy(model)


def test_a_silent_channel_stays_silent_through_the_fine_tuning_and_the_fold() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(20, 3))
    with torch.no_grad():
        model[0].weight[1] = 0.0
        model[2].weight[3] = 0.0
        model[2].bias[3] = 0.0
    keep = {"0.weight": model[0].weight != 0, "2.weight": model[2].weight != 0,
            "2.bias": torch.tensor([True, True, True, False, True])}
    masks = attach_batchnorm(model, _batches((3, 6, 6)))
    assert sorted(masks) == [f"0.{ATTACHED}.bias", f"0.{ATTACHED}.weight", f"2.{ATTACHED}.bias",
                             f"2.{ATTACHED}.weight"]
    assert masks[f"2.{ATTACHED}.bias"].tolist() == [True, True, True, False, True]
    finetune_masked(model, {**keep, **masks}, _data((3, 6, 6)), RECIPE, progress=False)
    bn = model[2].get_submodule(ATTACHED)
    assert bn.bias[3] == 0 and bn.weight[3] == 0 and bn.bias[0] != 0
    fold_attached(model)
    assert silent_units(model[0]).tolist() == [False, True, False, False]
    assert silent_units(model[2]).tolist() == [False, False, False, True, False]
    assert model[0].bias is not None  # the fold gave the bias-free convolution its shift


def test_the_pipeline_fine_tunes_the_slim_model_with_batchnorm_and_resumes(tmp_path) -> None:
    pruned, x = _prune_units("sbp", "lenet5", {"conv1": [1], "conv2": [0, 4], "fc1": [2, 3, 7]})
    data = _data(tuple(x.shape[1:]))
    recipe = RECIPE.replace(finetune_batchnorm=True)
    logged: list[str] = []
    plain = finetune_pruned(copy.deepcopy(pruned), data, RECIPE, torch.device("cpu"), x, None,
                                      resume=False, progress=False, log=lambda msg: None)
    done = finetune_pruned(copy.deepcopy(pruned), data, recipe, torch.device("cpu"), x,
                                     tmp_path / "ckpt.pt", resume=False, progress=False, log=logged.append)
    assert any("BatchNorm after 2 convolution(s) (conv1, conv2)" in m for m in logged)
    assert {n: p.shape for n, p in done.model.named_parameters()} == \
        {n: p.shape for n, p in plain.model.named_parameters()}
    assert _attached(done.model) == []
    assert not torch.allclose(done.model(x), plain.model(x), atol=1e-4)  # trained otherwise
    # a finished checkpoint of the fine-tuning loads into the freshly attached model again
    again = finetune_pruned(copy.deepcopy(pruned), data, recipe, torch.device("cpu"), x,
                                      tmp_path / "ckpt.pt", resume=True, progress=False, log=lambda msg: None)
    torch.testing.assert_close(again.model(x), done.model(x), atol=1e-6, rtol=1e-6)


def test_a_model_that_cannot_be_traced_is_named() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x) if x.sum() > 0 else self.conv(-x)

    with pytest.raises(PrunedropError, match="finetune_batchnorm"):
        attach_batchnorm(Branchy(), [torch.randn(2, 1, 5, 5)])


def test_the_recipe_key() -> None:
    assert Recipe().finetune_batchnorm is False
    assert Recipe.from_dict({"finetune_batchnorm": True}).finetune_batchnorm is True
    with pytest.raises(PrunedropError, match="finetune_batchnorm"):
        Recipe.from_dict({"finetune_batchnorm": "sometimes"})


def _batchnorms(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize(("arch", "stays"), [
    ("vgg_bn", []), ("resnet_basic", []), ("resnet_bottleneck", []), ("mobilenet_v2", []), ("convzoo", []),
    ("densenet", ["block.0.bn", "block.1.bn", "transition.0"]),  # after a concatenation or the input: not a conv's
])
def test_fold_batchnorm_keeps_the_function_and_the_weights(arch: str, stays: list[str]) -> None:
    model, x = tiny_arch(arch)
    before = model(x)
    pointers = {n: p.data_ptr() for n, p in model.named_parameters() if "weight" in n}
    count = len(_batchnorms(model))
    pairs = fold_batchnorm(model)
    assert len(pairs) == count - len(stays)
    assert _batchnorms(model) == stays
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    for conv, _ in pairs:  # folded in place: no weight copied
        assert model.get_submodule(conv).weight.data_ptr() == pointers[f"{conv}.weight"]


def test_noise_after_the_batchnorm_lets_a_pruned_channel_before_a_padded_convolution_leave() -> None:
    """With the noise before the BatchNorm, a pruned layer1.conv1 channel outputs its BatchNorm's shift into the
    zero-padded conv2, and slimming must keep it; on the BatchNorm's output (the default) or folded first, the noise
    acts after the normalisation and the channel goes."""
    removed = {}
    for placement in ("before", "fold", "after"):
        plain, x = tiny_arch("resnet_basic")
        recipe = Recipe(method="sbp", batchnorm_noise=placement)
        summary = ConversionSummary()
        model = to_variational(plain, recipe, summary=summary, example_input=x[:2])
        assert len(summary.folded) == (6 if placement == "fold" else 0)
        assert len(summary.normalised) == (6 if placement == "after" else 0)
        with torch.no_grad():
            layer = variational_layers(model)["layer1.conv1.0"]
            layer.mu[2] = -10.0
            layer.log_sigma[2] = 2.0
        pruned = prune(model.eval(), None)
        removed[placement] = slim(pruned.model.eval(), pruned.unit_masks, x).removed["layer1.conv1.0"]
    assert removed == {"before": (6, 6), "fold": (6, 5), "after": (6, 5)}


@pytest.mark.parametrize("freeze", [False, True])
def test_fold_batchnorm_freezes_only_the_biases_it_adds_when_asked(freeze: bool) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, bias=False), nn.BatchNorm2d(2), nn.ReLU(),
                          nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2)).eval()
    x = torch.randn(2, 1, 8, 8)
    before = model(x)
    assert fold_batchnorm(model, freeze_added_bias=freeze) == [("0", "1"), ("3", "4")]
    torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)
    assert model[0].bias.requires_grad is not freeze  # added by the fold
    assert model[3].bias.requires_grad and model[0].weight.requires_grad  # the convolution's own parameters


def test_fold_batchnorm_needs_running_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(PrunedropError, match="batchnorm_noise: fold"):
        fold_batchnorm(model)


def test_compress_folds_fine_tunes_with_batchnorm_and_reports(tmp_path, monkeypatch) -> None:
    plain, x = tiny_arch("resnet_basic")
    drop_units_after_training(monkeypatch, {"layer1.conv1.0": [1, 3]})
    data = _data(tuple(x.shape[1:]))
    recipe = Recipe(method="sbp", batchnorm_noise="fold", finetune_batchnorm=True, tie_residual=True, exclude=["fc"],
                    epochs=1, finetune_epochs=1, batch_size=16, kl_warmup_epochs=0, device="cpu", mc_samples=0,
                    plots=False, latency_runs=0, sweep_thresholds=[1.0])
    logged: list[str] = []
    result = pipeline.compress(plain, data, recipe, tmp_path / "out", progress=False, log=logged.append)
    assert result.report["conversion"]["batchnorm_folded"][0] == ["stem.0.0", "stem.0.1"]
    assert len(result.report["conversion"]["batchnorm_folded"]) == 6
    assert any(m.startswith("folded 6 BatchNorm(s)") for m in logged)
    assert any("fine-tuning with BatchNorm after 6 convolution(s)" in m for m in logged)
    assert _batchnorms(result.model) == [] and _attached(result.model) == []
    assert result.report["parity_max_abs_diff"] <= recipe.parity_atol


def test_running_statistics_are_re_estimated_for_the_weights_of_now() -> None:
    from prunedrop.batchnorm import recalibrate_batchnorm
    from prunedrop.testing import fit, tiny_classification_data

    torch.manual_seed(0)
    x, y = tiny_classification_data(n=240, shape=(1, 6, 6), seed=3)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 36, 3))
    model = fit(model, x, y, 200).eval()
    before = model(x).argmax(1)
    with torch.no_grad():  # what a KL term does to the weights in a few Adam steps: all shrink together
        model[0].weight.mul_(0.05)
        model[0].bias.mul_(0.05)
    stale = (model(x).argmax(1) == before).float().mean().item()
    assert stale < 0.9  # the running statistics still describe the old weights
    assert recalibrate_batchnorm(model, (x[i:i + 60] for i in range(0, 240, 60))) == 4
    assert not model.training and not model[1].training and model[1].momentum == 0.1  # modes and momentum back
    agree = (model(x).argmax(1) == before).float().mean().item()
    assert agree > 0.97  # BatchNorm undoes the common scale once its statistics are those of the weights of now
    # no batches: nothing changes; no BatchNorm: nothing to do
    state = {k: v.clone() for k, v in model[1].state_dict().items()}
    assert recalibrate_batchnorm(model, iter(())) == 0
    assert all(torch.equal(state[k], v) for k, v in model[1].state_dict().items())
    assert recalibrate_batchnorm(nn.Sequential(nn.Linear(3, 3)), [torch.zeros(2, 3)]) == 0


def test_a_sync_batchnorm_is_re_estimated_where_no_process_group_runs() -> None:
    """A DDP-trained model keeps its SyncBatchNorms; compressed on one process they normalise as BatchNorms do (they
    trained so), and their statistics were left as they were: measured with the statistics of weights long gone."""
    from prunedrop.batchnorm import recalibrate_batchnorm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.SyncBatchNorm(4)).eval()
    x = torch.randn(64, 1, 6, 6) * 3 + 2
    assert recalibrate_batchnorm(model, [x]) == 1
    out = model[0](x).detach()
    assert torch.allclose(model[1].running_mean, out.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model[1].running_var, out.var((0, 2, 3)), rtol=1e-3)
    assert not model[1].training and model[1].momentum == 0.1


def _batchnorm_net() -> tuple[Any, nn.Module]:
    """Tiny data and a conv → BatchNorm → linear network trained on its 240 training samples."""
    from torch.utils.data import TensorDataset

    from prunedrop.data import DataBundle
    from prunedrop.testing import fit, tiny_classification_data

    torch.manual_seed(0)
    x, y = tiny_classification_data(n=360, shape=(1, 6, 6), seed=3)
    data = DataBundle(train=TensorDataset(x[:240], y[:240]), val=TensorDataset(x[240:], y[240:]), test=None,
                      name="tiny", num_classes=3, input_shape=(1, 6, 6))
    net = fit(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                            nn.Linear(8 * 36, 3)), x[:240], y[:240], 200).eval()
    return data, net


def _stale(bn: nn.Module) -> None:
    """Give ``bn`` running statistics of another network."""
    with torch.no_grad():
        bn.running_mean.add_(3.0)
        bn.running_var.mul_(20.0)


def test_the_sweep_measures_each_threshold_with_statistics_of_its_thresholded_weights() -> None:
    from prunedrop.batchnorm import batchnorm_state, restore_batchnorm
    from prunedrop.stages.selection import thresholded_metric
    from prunedrop.train import evaluate

    data, net = _batchnorm_net()
    recipe = Recipe(method="sparse_vd", eval_batch_size=60)
    model = to_variational(net, recipe).eval()
    val = data.loader("val", 60)
    good = evaluate(model, val)["accuracy"]
    trained = batchnorm_state(model)
    _stale(model[1])  # statistics of another network (the noisy one that training saw)
    assert evaluate(model, val)["accuracy"] < good - 20
    assert thresholded_metric(recipe, data)(model, val) == pytest.approx(good, abs=3.0)
    restore_batchnorm(model, trained)  # what the selection does after its sweep
    assert torch.equal(model[1].running_mean, trained["1"]["running_mean"])


@pytest.mark.parametrize(("method", "joined"), [("sparse_vd", False), ("sbp", False), ("sbp", True)])
def test_the_model_pruned_is_the_model_the_sweep_measured(method: str, joined: bool) -> None:
    """The sweep chooses a threshold with every BatchNorm's statistics re-estimated for it; the pruned model kept the
    trained ones: a BatchNorm that no layer's noise takes in (here after a ReLU, as after a DenseNet concatenation;
    17% where the sweep had measured 44%), and one that joined a convolution's unit noise, which pruning folds into
    the convolution (a pre-activation residual CNN: 42% where the sweep had measured 87.67%)."""
    from prunedrop.stages import prune_variational
    from prunedrop.stages.selection import thresholded_metric
    from prunedrop.testing import fit
    from prunedrop.train import evaluate

    data, _ = _batchnorm_net()
    torch.manual_seed(0)
    layers = [nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()] if joined else \
        [nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(8)]
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(8 * 36, 3))
    x, y = data.train.tensors
    net = fit(net, x, y, 200).eval()
    recipe = Recipe(method=method, eval_batch_size=60, quantize="none")
    model = to_variational(net, recipe).eval()
    bn = model[0].batchnorm if joined else model[2]  # joined: the convolution's noise acts after it
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(model[1], nn.Identity) == joined
    val = data.loader("val", 60)
    good = evaluate(model, val)["accuracy"]
    _stale(bn)
    stale = evaluate(model, val)["accuracy"]
    assert stale < good - 20
    measured = thresholded_metric(recipe, data)(copy.deepcopy(model), val)
    pruned = prune_variational(copy.deepcopy(model), recipe.threshold, recipe, lambda _: None, data=data).result
    assert evaluate(pruned.model, val)["accuracy"] == pytest.approx(measured, abs=1e-9)
    assert measured > stale + 20
    # without data (the library's own prune) the statistics stay as trained
    unmeasured = prune_variational(copy.deepcopy(model), recipe.threshold, recipe, lambda _: None).result
    assert evaluate(unmeasured.model, val)["accuracy"] == pytest.approx(stale, abs=1.0)


def test_batches_of_one_sample_leave_the_statistics_alone() -> None:
    from prunedrop.batchnorm import recalibrate_from

    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).eval()
    before = model[1].running_mean.clone()
    singles = [(torch.randn(1, 4), torch.zeros(1, dtype=torch.long)) for _ in range(5)]
    assert recalibrate_from(model, singles) == 0  # a BatchNorm1d in training mode would raise on one value
    assert torch.equal(model[1].running_mean, before)
    pairs = [(torch.randn(8, 4), torch.zeros(8, dtype=torch.long)) for _ in range(3)]
    assert recalibrate_from(model, singles[:1] + pairs) == 3


def test_the_variational_phase_logs_its_metric_with_statistics_of_the_thresholded_network() -> None:
    from prunedrop.train import evaluate, finetune

    data, net = _batchnorm_net()
    # no learning to speak of: the logged metric must be the given network's
    recipe = Recipe(method="sparse_vd", kl_weight=1e-8, lr=1e-9, noise_lr=1e-9, epochs=1, kl_warmup_epochs=0,
                    batch_size=24, eval_batch_size=60, device="cpu", plots=False, latency_runs=0, mc_samples=0)
    model = to_variational(net, recipe)
    good = evaluate(model, data.loader("val", 60))["accuracy"]
    _stale(model[1])  # statistics that describe another network (ten steps' momentum leave a third of this)
    assert evaluate(model, data.loader("val", 60))["accuracy"] < good - 20
    history = finetune(model, data, recipe, progress=False).history
    assert history[-1]["val_accuracy"] == pytest.approx(good, abs=2.0)


def test_a_training_batch_of_one_sample_is_dropped_not_fed_to_batchnorm(tmp_path) -> None:
    """121 training samples in batches of 8 left one sample for the last batch of every epoch, and a BatchNorm1d in
    training mode stopped the run with a traceback ("Expected more than 1 value per channel when training")."""
    from torch.utils.data import TensorDataset

    from prunedrop.data import DataBundle
    from prunedrop.testing import fit, tiny_classification_data

    x, y = tiny_classification_data(n=161, shape=(12,), seed=4)
    data = DataBundle(name="toy", train=TensorDataset(x[:121], y[:121]), val=TensorDataset(x[121:], y[121:]),
                      test=None, input_shape=(12,), num_classes=3)
    shuffled = [len(b[1]) for b in data.loader("train", 8, shuffle=True)]
    assert shuffled == [8] * 15  # the lone sample sits out (a different one each epoch: the order is shuffled)
    assert {int(i) for b in data.loader("train", 8, shuffle=True, epoch=1) for i in b[1]} <= {0, 1, 2}
    assert [len(b[1]) for b in data.loader("train", 8)][-1] == 1  # evaluation reads every sample
    assert len(data.loader("train", 10, shuffle=True)) == 12  # 121 = 12 × 10 + 1
    assert len(data.loader("train", 7, shuffle=True)) == 18  # 121 = 17 × 7 + 2: only a remainder of one drops
    assert len(data.loader("train", 11, shuffle=True)) == 11  # 121 = 11 × 11: nothing to drop

    from torch.utils.data import DataLoader

    users = DataBundle(name="toy", train=DataLoader(data.train, batch_size=8), val=data.val, test=None,
                       input_shape=(12,), num_classes=3)  # a python: data function's own DataLoader
    assert [len(b[1]) for b in users.loader("train", 100, shuffle=True)] == [8] * 15
    assert [len(b[1]) for b in users.loader("train", 100)][-1] == 1

    torch.manual_seed(0)
    model = fit(nn.Sequential(nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3)),
                x[:121], y[:121], 150).eval()
    recipe = Recipe(epochs=2, finetune_epochs=1, batch_size=8, device="cpu", mc_samples=0, plots=False,
                    latency_runs=0, quantize="none", max_metric_drop=50)
    result = pipeline.compress(model, data, recipe, tmp_path / "out", progress=False)
    assert result.report["parity_max_abs_diff"] <= recipe.parity_atol
