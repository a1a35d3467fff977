"""Architectures users bring that no earlier test tried: each either compresses or stops with one clear line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunedrop.convert import ConversionSummary, to_variational
from prunedrop.errors import PrunedropError
from prunedrop.recipes import Recipe


class MatmulParam(nn.Module):
    """A hidden layer written as ``x @ W + b`` with the module's own parameters, beside an nn.Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.randn(64, 128) * 0.125)
        self.b = nn.Parameter(torch.zeros(128))
        self.fc = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(torch.matmul(x.flatten(1), self.W) + self.b))


def test_a_modules_own_weights_that_stay_dense_are_named() -> None:
    summary = ConversionSummary()
    to_variational(MatmulParam(), Recipe(), summary=summary)
    assert summary.converted == ["fc"]
    note = next(n for n in summary.notes if "W, b" in n)
    assert "8,320 parameters, 87% of the model's" in note and "nn.Linear" in note


def test_a_class_token_is_too_small_to_be_named() -> None:
    class WithToken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.zeros(1, 1, 64))
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1) + self.token[:, 0])

    summary = ConversionSummary()
    to_variational(WithToken(), Recipe(), summary=summary)
    assert summary.converted == ["fc"] and not summary.notes


def test_a_torch_layer_the_method_cannot_convert_is_no_modules_own_weights() -> None:
    """nn.MultiheadAttention holds in_proj_weight itself beside its out_proj child; under a method without a
    version of it (sbp_sparse_vd; sbp too, before it removed heads) it was named as weights a module holds itself and
    its forward reads directly, with the advice to hold them in an nn.Linear: it is a torch layer this method leaves
    dense, listed as such."""

    class Attending(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
            self.fc = nn.Linear(32, 32)
            self.head = nn.Linear(32, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, _ = self.attn(x, x, x)
            return self.head(F.relu(self.fc(h[:, -1])))

    summary = ConversionSummary()
    to_variational(Attending().eval(), Recipe(method="sbp_sparse_vd"), summary=summary, dry_run=True,
                   example_input=torch.randn(2, 5, 32))
    assert summary.converted == ["fc"] and summary.left_alone.get("attn") == "MultiheadAttention"
    assert not any("held by a module itself" in note for note in summary.notes), summary.notes


def test_nothing_to_convert_but_a_modules_own_weights_says_so() -> None:
    class Only(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.W = nn.Parameter(torch.randn(64, 10))
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(x.flatten(1)) @ self.W

    with pytest.raises(PrunedropError, match=r"left dense: W \(640 parameters, 100%"):
        to_variational(Only(), Recipe())


@pytest.mark.parametrize(("conv", "kernel", "dilation"), [
    (nn.Conv2d, 2, 2), (nn.Conv2d, 3, 2), (nn.Conv2d, 2, 3), (nn.Conv2d, 3, (1, 2)), (nn.Conv1d, 4, 3),
])
def test_same_padding_with_a_dilation_runs_in_onnxruntime(tmp_path, conv, kernel: int, dilation) -> None:
    from prunedrop.export import export_onnx
    from prunedrop.export.runtime import run_onnx

    torch.manual_seed(0)
    layer = conv(2, 3, kernel, padding="same", dilation=dilation)
    model = nn.Sequential(layer, nn.ReLU()).eval()
    x = torch.randn(4, 2, 8, 8) if conv is nn.Conv2d else torch.randn(4, 2, 9)
    export_onnx(model, x, tmp_path / "m.onnx")
    out = run_onnx(tmp_path / "m.onnx", x)
    assert torch.allclose(torch.as_tensor(out), model(x), atol=1e-5)
    assert layer.padding == "same" and not layer._forward_pre_hooks  # the layer as it was


PACKED_ARCH = """import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


class Packed(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(4, 8, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        s = x.squeeze(1)
        lengths = torch.full((s.shape[0],), s.shape[1], dtype=torch.long)
        _, h = self.rnn(pack_padded_sequence(s, lengths, batch_first=True, enforce_sorted=False))
        return self.fc(h[-1])


def build():
    return Packed()
"""


def test_a_packed_sequence_is_one_line_before_any_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    import numpy as np
    from click.testing import CliRunner

    from prunedrop.cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "packedarch.py").write_text(PACKED_ARCH)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x_train=rng.normal(size=(40, 1, 4, 4)).astype(np.float32),
             y_train=np.arange(40) % 3, x_val=rng.normal(size=(12, 1, 4, 4)).astype(np.float32),
             y_val=np.arange(12) % 3)
    try:
        import packedarch  # noqa: PLC0415 - the user's module, written above

        torch.save(packedarch.build().state_dict(), tmp_path / "model.pt")
        result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "packedarch:build", "--data",
                                          "npz:data.npz", "-o", "out", "-q"])
    finally:
        sys.modules.pop("packedarch", None)
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "rnn (GRU) is given a PackedSequence" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_factory_that_builds_another_float_type_is_told_to_build_float32(dtype: torch.dtype) -> None:
    from prunedrop.task import output_shape_on

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(16, 3)).to(dtype)
    with pytest.raises(PrunedropError, match="with --arch, the factory's model must be float32 too") as caught:
        output_shape_on(model, torch.rand(2, 1, 4, 4))
    assert "model.float()" in caught.value.message and "\n" not in caught.value.message


class Chomp1d(nn.Module):
    def __init__(self, chomp: int) -> None:
        super().__init__()
        self.chomp = chomp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :-self.chomp].contiguous()


class AliasedTCN(nn.Module):
    """locuslab/TCN's TemporalBlock: each convolution is ``self.conv1`` and also ``self.net[0]``, one module under two
    names (the block's forward calls ``self.net``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 8, 2, padding=1)
        self.conv2 = nn.Conv1d(8, 8, 2, padding=1)
        self.net = nn.Sequential(self.conv1, Chomp1d(1), nn.ReLU(), self.conv2, Chomp1d(1), nn.ReLU())
        self.downsample = nn.Conv1d(4, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.net(x) + self.downsample(x))[:, :, -1])


@pytest.mark.parametrize("method", ["sparse_vd", "sbp"])
def test_one_layer_under_two_names_is_converted_once(method: str) -> None:
    from prunedrop.convert import to_deterministic

    torch.manual_seed(0)
    model = AliasedTCN().eval()
    x = torch.randn(5, 4, 6)
    expected = model(x)
    summary = ConversionSummary()
    recipe = Recipe(method=method, init_log_sigma2=-30.0) if method == "sparse_vd" else Recipe(method=method)
    variational = to_variational(model, recipe, summary=summary, example_input=x[:2]).eval()
    assert {"conv1", "conv2"} <= set(summary.converted)  # left dense as "weight tying" before
    assert not any("share parameters" in note for note in summary.notes)
    assert "net.0" not in summary.converted and "net.0" not in summary.excluded
    assert variational.conv1 is variational.net[0] and variational.conv2 is variational.net[3]
    if method == "sparse_vd":
        assert torch.allclose(variational(x), expected, atol=1e-6)
    plain = to_deterministic(variational)
    assert plain.conv1 is plain.net[0] and type(plain.conv1) is nn.Conv1d
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in AliasedTCN().parameters())


def test_an_exclude_glob_naming_a_layer_by_its_other_name_leaves_it_dense() -> None:
    """A module registered under two names is converted under its first (``conv1``); an exclude glob naming it by its
    other one (``net.0``, or ``net.*`` for the block's Sequential) was ignored, and the layer converted anyway.
    ``prunedrop inspect`` says the same."""
    from prunedrop.inspection import inspect_model

    x = torch.randn(2, 4, 6)
    for exclude in (["net.0"], ["net.*"]):
        summary = ConversionSummary()
        to_variational(AliasedTCN().eval(), Recipe(exclude=exclude), summary=summary, dry_run=True, example_input=x)
        assert "conv1" not in summary.converted and "conv1" in summary.excluded
        assert ("conv2" in summary.converted) == (exclude == ["net.0"])
        result = inspect_model(AliasedTCN(), x, Recipe(exclude=exclude))
        conv1 = next(e for e in result["layers"] if e["name"] == "conv1")
        assert conv1["status"] == "excluded" and conv1["reason"] == f"excluded by glob {exclude[0]!r} (as net.0)"
        assert "conv1" not in result["summary"]["converted"]


def test_inspect_lists_one_layer_under_two_names_once() -> None:
    """``prunedrop inspect`` listed locuslab/TCN's ``conv1`` again as ``net.0`` ("would convert 14 layer(s)" for 8);
    it is one entry, under its first name, that says its other one. The report's profile names it once too."""
    from prunedrop.inspection import format_inspection, inspect_model
    from prunedrop.report import count_parameters, profile_model

    model = AliasedTCN()
    x = torch.randn(2, 4, 6)
    result = inspect_model(model, x, Recipe())
    names = [e["name"] for e in result["layers"]]
    assert "net.0" not in names and "net.3" not in names and len(names) == len(set(names))
    assert result["summary"]["converted"] == ["conv1", "conv2", "downsample", "fc"]
    assert result["totals"]["layers_converted"] == 4
    total = sum(p.numel() for p in model.parameters())
    assert result["totals"]["params"] == result["totals"]["converted_params"] == total
    conv1 = next(e for e in result["layers"] if e["name"] == "conv1")
    assert conv1["aliases"] == ["net.0"] and conv1["params"] == 4 * 8 * 2 + 8
    assert result["layers"][0]["subtree_params"] == total
    text = format_inspection(result)
    assert "convert (also net.0)" in text and "would convert 4 layer(s)" in text
    profiles = profile_model(model, x)
    assert [p.name for p in profiles] == ["conv1", "conv2", "downsample", "fc"]
    assert sum(p.params for p in profiles) == count_parameters(model)[0] == total
    assert result["totals"]["macs"] == sum(p.macs for p in profiles)


def test_two_modules_that_tie_one_weight_still_stay_dense() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    with pytest.raises(PrunedropError, match="share parameters|tied"):
        to_variational(model, Recipe())


COMPILED_ARCH = """import torch
from torch import nn


class Part(nn.Module):
    def __init__(self, compiled):
        super().__init__()
        inner = nn.Linear(64, 32)
        body = nn.Sequential(torch.compile(inner) if compiled else inner, nn.ReLU())
        self.body = torch.compile(body) if compiled else body
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.body(x.flatten(1)))


def compiled():
    return Part(True)


def plain():
    return Part(False)
"""


def _compiled_modules(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if type(m).__name__ == "OptimizedModule"]


def test_a_compiled_submodule_runs_uncompiled_where_the_model_is_loaded(tmp_path, monkeypatch) -> None:
    """A model holding a torch.compile'd submodule (nested here) trained, but its FLOPs read 1,280 before and 8,510
    after (the compiled graph hid its layers from the hooks) and dynamo recompiled while training. Its state dict
    (``body._orig_mod.0._orig_mod.weight``) also loads into the plain architecture, and a plain one into it."""
    import sys

    from prunedrop.report import profile_model
    from prunedrop.storage import load_model

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "compiledarch.py").write_text(COMPILED_ARCH)
    try:
        import compiledarch  # noqa: PLC0415 - the user's module, written above

        torch.manual_seed(0)
        saved = compiledarch.compiled().state_dict()
        assert "body._orig_mod.0._orig_mod.weight" in saved
        torch.save(saved, tmp_path / "compiled.pt")
        torch.save(compiledarch.plain().state_dict(), tmp_path / "plain.pt")
        said: list[str] = []
        loaded = {(file, arch): load_model(tmp_path / file, arch=f"compiledarch:{arch}", log=said.append)
                  for file in ("compiled.pt", "plain.pt") for arch in ("compiled", "plain")}
    finally:
        sys.modules.pop("compiledarch", None)
    assert said == [said[0]] * 2 and said[0].startswith("torch.compile: body, body.0 run uncompiled")
    for model in loaded.values():
        assert not _compiled_modules(model) and set(model.state_dict()) == set(compiledarch.plain().state_dict())
    assert torch.equal(loaded["compiled.pt", "plain"].body[0].weight, saved["body._orig_mod.0._orig_mod.weight"])
    profiles = {p.name: p.macs for p in profile_model(loaded["compiled.pt", "compiled"], torch.rand(2, 1, 8, 8))}
    assert profiles == {"body.0": 64 * 32, "fc": 32 * 10}


def test_compress_runs_a_compiled_model_uncompiled_before_anything_reads_it(monkeypatch) -> None:
    """The Python API's compress() given a model with compiled parts unwraps them, as load_model does, before its
    first check reads the model; a model compiled in place (``module.compile()``) runs uncompiled too."""
    from prunedrop import pipeline

    class Stop(Exception):
        pass

    seen: list[nn.Module] = []

    def fit_task(model, *args, **kwargs):
        seen.append(model)
        raise Stop

    monkeypatch.setattr(pipeline, "fit_task", fit_task)
    head = nn.Linear(16, 3)
    head.compile()
    model = torch.compile(nn.Sequential(nn.Flatten(), torch.compile(nn.Linear(16, 16)), nn.ReLU(), head))
    said: list[str] = []
    samples = torch.utils.data.TensorDataset(torch.rand(8, 4, 4), torch.arange(8) % 3)
    data = pipeline.DataBundle(name="t", train=samples, val=samples, test=None, input_shape=(4, 4), num_classes=3)
    with pytest.raises(Stop):
        pipeline.compress(model, data, Recipe(), "never-written", log=said.append)
    (given,) = seen
    assert type(given) is nn.Sequential and not _compiled_modules(given) and given[3]._compiled_call_impl is None
    assert len(said) == 1 and said[0].startswith("torch.compile: the model, 1, 3 run uncompiled")


class BilinearBulk(nn.Module):
    """An nn.Bilinear, which no method has a variational version of, holding most of the model's parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 32)
        self.b = nn.Linear(64, 32)
        self.bil = nn.Bilinear(32, 32, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.head(F.relu(self.bil(F.relu(self.a(x)), F.relu(self.b(x)))))


def test_layers_left_dense_that_hold_most_of_the_model_bound_the_saving() -> None:
    summary = ConversionSummary()
    to_variational(BilinearBulk(), Recipe(), summary=summary)
    assert summary.converted == ["a", "b", "head"] and summary.left_alone == {"bil": "Bilinear"}
    note = next(n for n in summary.notes if "bil (Bilinear)" in n)
    # 32·32·32 + 32 of 37,314 parameters: at most 37,314 / 32,800 = 1.14x smaller
    assert "32,800 parameters, 88% of the model's" in note and "at most 1.14x smaller" in note


def test_small_layers_left_dense_are_not_named_as_a_bound() -> None:
    """A small bilinear gate (34 parameters) is too few to bound anything, and BatchNorms (here 256 of 9,000
    parameters; a tenth of a tiny model) lose their entries with the channels slimming removes: neither is named."""

    class SmallGate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 128)
            self.bn = nn.BatchNorm1d(128)
            self.gate = nn.Bilinear(4, 4, 2)
            self.head = nn.Linear(128, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.bn(self.fc(x.flatten(1))))
            return self.head(h) * torch.sigmoid(self.gate(h[:, :4], h[:, 4:8])).mean(1, keepdim=True)

    summary = ConversionSummary()
    to_variational(SmallGate(), Recipe(), summary=summary)
    assert summary.left_alone == {"bn": "BatchNorm1d", "gate": "Bilinear"}
    assert not any("keep every weight" in n for n in summary.notes), summary.notes


def test_batchnorms_are_no_bound_however_much_of_a_tiny_model_they_hold() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    summary = ConversionSummary()
    to_variational(model, Recipe(), summary=summary)
    assert summary.left_alone == {"1": "BatchNorm2d"}  # 8 of 26 parameters
    assert not any("keep every weight" in n for n in summary.notes), summary.notes


class LayerScaleResidual(nn.Module):
    """``h + γ·relu(conv(h))`` with γ of shape (1, C, 1, 1): both convolutions write the stream γ scales."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.full((1, 8, 1, 1), 0.5))
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.c1(x.view(-1, 1, 8, 8)))
        h = h + self.gamma * F.relu(self.c2(h))
        return self.fc(F.max_pool2d(h, 2).flatten(1))


def test_sbp_converts_the_convolutions_a_layer_scale_multiplies() -> None:
    """Under sbp the layer-scale CNN was refused before any training ("no layer of the model can be converted": the
    channels pass through the bare parameter γ); γ is sliced with the channels now, so both convolutions carry
    unit noise (a digits run: 83× fewer FLOPs, BENCHMARKS.md thirtieth section)."""
    summary = ConversionSummary()
    to_variational(LayerScaleResidual(), Recipe(method="sbp"), example_input=torch.randn(2, 64), summary=summary)
    assert summary.converted == ["c1", "c2"], summary.notes
