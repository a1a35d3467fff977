"""Tests for prunedrop.inspection: the tree agrees with to_variational and profile_model, and it is fast."""

from __future__ import annotations

import copy
import json
import time

import pytest
import torch
from torch import nn

from prunedrop.convert import ConversionSummary, to_variational
from prunedrop.errors import PrunedropError
from prunedrop.inspection import format_inspection, inspect_model
from prunedrop.layers import LinearSVD
from prunedrop.recipes import Recipe
from prunedrop.report import profile_model, recurrent_weights
from prunedrop.testing import TINY_MODELS, tiny_model


def _by_name(d: dict) -> dict[str, dict]:
    return {e["name"]: e for e in d["layers"]}


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
@pytest.mark.parametrize("exclude", [[], ["head", "fc2", "conv1"]])
def test_matches_to_variational_and_profile(name, exclude):
    model, x = tiny_model(name)
    recipe = Recipe(exclude=exclude)
    before = copy.deepcopy(model.state_dict())
    d = inspect_model(model, x, recipe)
    json.dumps(d)  # JSON-able, for `prunedrop inspect --json`
    # nothing converted, nothing changed
    assert not any(isinstance(m, LinearSVD) for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    summary = ConversionSummary()
    to_variational(copy.deepcopy(model), recipe, summary=summary)
    assert d["summary"] == {"converted": summary.converted, "excluded": summary.excluded,
                            "left_alone": summary.left_alone}

    profiles = profile_model(model, x)
    entries = _by_name(d)
    for p in profiles:
        assert entries[p.name]["params"] == p.params
        assert entries[p.name]["macs"] == p.macs
    t = d["totals"]
    assert t["params"] == sum(p.numel() for p in model.parameters())
    assert t["macs"] == sum(p.macs for p in profiles)
    assert entries[""]["subtree_params"] == t["params"] and entries[""]["subtree_macs"] == t["macs"]
    converted = set(summary.converted)
    assert t["converted_macs"] == sum(p.macs for p in profiles if p.name in converted)
    assert t["converted_params"] == sum(p.params for p in profiles if p.name in converted)
    assert t["prunable_weights"] == sum(w.numel() for n in converted
                                        for w in recurrent_weights(model.get_submodule(n))
                                        or [model.get_submodule(n).weight])
    assert t["params_share"] == pytest.approx(t["converted_params"] / t["params"])
    assert "convert" in format_inspection(d)


def test_reasons_and_tree():
    model = nn.Sequential()
    model.add_module("stem", nn.Conv2d(1, 4, 3))
    model.add_module("norm", nn.LayerNorm([4, 4, 4]))
    model.add_module("act", nn.ReLU())
    block = nn.Sequential(nn.Flatten(), nn.Linear(64, 8))
    model.add_module("block", block)
    model.add_module("fc_out", nn.Linear(8, 3))
    d = inspect_model(model, torch.randn(2, 1, 6, 6), Recipe(exclude=["fc*"]))
    e = _by_name(d)
    assert e["stem"]["status"] == "convert" and e["stem"]["reason"] == ""
    assert e["norm"]["reason"] == "no variational version of LayerNorm"
    assert e["act"]["reason"] == "no parameters"
    assert e["fc_out"]["reason"] == "excluded by glob 'fc*'"
    assert e["block"]["status"] == "container" and e["block.1"]["status"] == "convert"
    assert [e[n]["depth"] for n in ("", "stem", "block", "block.1")] == [0, 1, 1, 2]
    assert e["block"]["subtree_params"] == 64 * 8 + 8
    assert e["block"]["subtree_macs"] == 64 * 8
    # stem: 4 out channels * 9 weights * 16 positions
    assert e["stem"]["macs"] == 4 * 9 * 16
    text = format_inspection(d)
    assert "    block.1" in text  # indented by depth
    assert "keep: excluded by glob 'fc*'" in text
    assert "keep: no variational version of LayerNorm" in text

    d = inspect_model(model, torch.randn(1, 1, 6, 6), Recipe(include=["block.*"]))
    assert _by_name(d)["stem"]["reason"] == "not matched by include ['block.*']"


class _GruAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru, self.attn = nn.GRU(4, 8, batch_first=True), nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gru(x)[0]
        return self.fc(self.attn(h, h, h, need_weights=False)[0].mean(1))


def test_a_type_another_method_converts_is_named_with_that_method():
    e = _by_name(inspect_model(_GruAttention(), torch.randn(2, 5, 4), Recipe(method="sbp")))
    assert e["gru"]["reason"] == "no variational version of GRU (method group_vd or sparse_vd converts it)"
    assert e["attn"]["status"] == "convert"  # sbp removes heads


def test_subclass_and_container_parameters_are_explained():
    class Scaled(nn.Linear):
        pass

    class WithOwn(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x) * self.scale

    model = nn.Sequential(Scaled(4, 4), WithOwn())
    d = inspect_model(model, torch.randn(3, 4), Recipe())
    e = _by_name(d)
    assert "subclass of Linear" in e["0"]["reason"]
    assert e["1"]["status"] == "container" and "scale" in e["1"]["reason"]
    assert d["summary"]["converted"] == ["1.fc"]


def test_shared_module_and_tied_parameters_counted_once():
    shared = nn.Linear(5, 5)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    d = inspect_model(model, torch.randn(2, 5), Recipe())
    assert d["totals"]["params"] == 30
    assert d["totals"]["macs"] == 50  # called twice: profile_model sums both calls under its first name


def test_nothing_convertible_warns_and_unknown_method_errors():
    model = nn.Sequential(nn.LayerNorm(4))
    d = inspect_model(model, torch.randn(1, 4), Recipe())
    assert d["totals"]["layers_converted"] == 0 and "would stop with an error" in d["warnings"][0]
    assert d["totals"]["params_share"] == 0.0
    recipe = Recipe()
    recipe.method = "nope"  # type: ignore[assignment]
    with pytest.raises(PrunedropError, match="nope"):
        inspect_model(model, torch.randn(1, 4), recipe)


def test_already_variational_is_flagged():
    model, x = tiny_model("mlp")
    model = to_variational(model, Recipe())
    d = inspect_model(model, x, Recipe())
    assert any("already variational" in w for w in d["warnings"])
    assert d["summary"]["converted"] == []


def test_resnet50_sized_model_is_fast():
    # ~25M parameters of convolutions and linears (ResNet-50 has 25.6M), at a small spatial size so that
    # the one forward pass stays cheap on a shared CPU; the walk itself must not scale badly.
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(3, 512, 3, padding=1)]
    for _ in range(8):
        layers += [nn.Conv2d(512, 512, 3, padding=1), nn.BatchNorm2d(512), nn.ReLU()]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 4096), nn.ReLU(), nn.Linear(4096, 1000)]
    with torch.no_grad():
        model = nn.Sequential(*layers).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 22e6 < n_params < 28e6
    x = torch.randn(8, 3, 4, 4)
    start = time.perf_counter()
    last = str(len(layers) - 1)
    d = inspect_model(model, x, Recipe(exclude=[last]))
    text = format_inspection(d)
    elapsed = time.perf_counter() - start
    assert elapsed < 3.0, f"inspect_model took {elapsed:.2f} s"
    assert d["totals"]["params"] == n_params
    assert d["summary"]["excluded"] == [last]
    assert d["totals"]["layers_converted"] == 10
    assert "BatchNorm2d" in text


def test_batchnorms_that_fold_batchnorm_folds_are_shown_folded():
    from prunedrop.testing_arch import tiny_arch

    model, x = tiny_arch("densenet")
    recipe = Recipe(method="sbp", batchnorm_noise="fold")
    entries = _by_name(inspect_model(model, x, recipe))
    assert entries["transition.0"]["status"] == "unsupported"  # after a concatenation: stays
    plain = _by_name(inspect_model(model, x, Recipe(method="sbp", batchnorm_noise="before")))
    assert plain["block.0.bn"]["status"] == "unsupported"

    vgg, x = tiny_arch("vgg_bn")
    d = inspect_model(vgg, x, recipe)
    entries = _by_name(d)
    assert entries["features.1"]["status"] == "folded"
    assert entries["features.1"]["reason"] == "folded into features.0 before the conversion (batchnorm_noise: fold)"
    summary = ConversionSummary()
    to_variational(copy.deepcopy(vgg), recipe, summary=summary)
    assert d["summary"]["left_alone"] == summary.left_alone == {}
    assert "keep: folded into features.0" in format_inspection(d)
    joined = inspect_model(vgg, x, Recipe(method="sbp"))  # the default: noise on the BatchNorm's output
    after = _by_name(joined)
    assert after["features.1"]["status"] == "folded" and after["features.1"]["reason"].startswith("joins features.0")
    summary = ConversionSummary()
    to_variational(copy.deepcopy(vgg), Recipe(method="sbp"), summary=summary, example_input=x[:2])
    assert joined["summary"]["left_alone"] == summary.left_alone == {}

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x) if x.sum() > 0 else self.conv(-x)

    d = inspect_model(Branchy(), torch.randn(2, 1, 5, 5), recipe)
    assert any("batchnorm_noise" in w and "would stop" in w for w in d["warnings"])


class _RawParameters(nn.Module):
    """No Linear or Conv: the forward multiplies by its own parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def test_a_model_of_raw_parameters_is_named_in_the_warnings() -> None:
    # The root module has no name: the FLOPs warning ended in an empty list ("no MAC rule: ").
    report = inspect_model(_RawParameters(), torch.randn(2, 6), Recipe())
    assert report["warnings"][0].startswith("no layer can be converted by method 'sparse_vd' (sparse_vd has no "
                                            "variational version of _RawParameters;")
    assert report["warnings"][-1] == "FLOPs leave out layers with no MAC rule: <root>"
