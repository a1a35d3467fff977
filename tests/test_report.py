"""Tests for prunedrop.report: MAC counts against hand-computed numbers, the report dict, writers, latency."""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from prunedrop.errors import PrunedropError
from prunedrop.report import (
    REPORT_SCHEMA_VERSION,
    build_report,
    count_parameters,
    format_table,
    human_bytes,
    human_count,
    load_report,
    measure_latency,
    profile_model,
    write_report,
)
from prunedrop.testing import TINY_MODELS, TinyMLP, tiny_model


def _single(module: nn.Module, x: torch.Tensor):
    """Profile of a model made of one layer."""
    (profile,) = profile_model(nn.Sequential(module), x)
    return profile


# ------------------------------------------------------------------------------------------ MAC counts


def test_linear_macs_and_params():
    p = _single(nn.Linear(16, 12), torch.randn(4, 16))
    assert (p.macs, p.nonzero_macs) == (16 * 12, 16 * 12)
    assert (p.params, p.nonzero) == (16 * 12 + 12, 16 * 12 + 12)
    assert (p.in_shape, p.out_shape, p.weight_shape) == ([16], [12], [12, 16])
    assert p.type == "Linear" and p.name == "0" and p.counted


def test_linear_on_sequence_counts_every_row():
    p = _single(nn.Linear(16, 12), torch.randn(2, 5, 16))
    assert p.macs == 5 * 16 * 12


def test_bilinear_counts_every_weight_once_per_output_row():
    # y_k = x1ᵀ W_k x2 + b_k: in1 × in2 multiply-adds per output value (it counted 0 and was left out of the FLOPs)
    class Pair(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bl = nn.Bilinear(6, 5, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bl(x[..., :6], x[..., 6:])

    model = Pair()
    with torch.no_grad():
        model.bl.weight[0].zero_()
    (p,) = profile_model(model, torch.randn(3, 2, 11))
    assert p.counted and p.macs == 2 * 4 * 6 * 5 and p.nonzero_macs == 2 * 3 * 6 * 5


def test_conv2d_stride_padding_dilation_groups():
    # 9x9 input, k=3, stride 2, padding 1, dilation 2: out = floor((9 + 2 - 2*2 - 1) / 2) + 1 = 4
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2, groups=2)
    p = _single(conv, torch.randn(3, 4, 9, 9))
    assert p.out_shape == [6, 4, 4]
    # per output value: (4 / 2 groups) in-channels * 3*3 kernel = 18; 6*4*4 = 96 outputs
    assert p.macs == 96 * 18 == 1728
    assert p.params == 6 * 2 * 9 + 6


def test_depthwise_conv2d():
    p = _single(nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), torch.randn(2, 4, 8, 8))
    assert p.macs == 4 * 8 * 8 * 9 == 2304
    assert p.params == 4 * 9


def test_conv1d():
    # L = 10, k=3, stride 2, padding 1: out = floor((10 + 2 - 2 - 1) / 2) + 1 = 5
    p = _single(nn.Conv1d(3, 5, 3, stride=2, padding=1), torch.randn(2, 3, 10))
    assert p.out_shape == [5, 5]
    assert p.macs == 5 * 5 * 3 * 3 == 225


def test_conv3d():
    # 4x6x6, k=3, padding 1, stride (1, 2, 2): out 4x3x3 = 36 positions, 2*27 MACs each, 3 channels
    p = _single(nn.Conv3d(2, 3, 3, padding=1, stride=(1, 2, 2)), torch.randn(2, 2, 4, 6, 6))
    assert p.out_shape == [3, 4, 3, 3]
    assert p.macs == 3 * 36 * 2 * 27 == 5832


def test_conv_transpose2d_counts_input_positions():
    p = _single(nn.ConvTranspose2d(4, 2, 3, stride=2), torch.randn(2, 4, 5, 5))
    assert p.out_shape == [2, 11, 11]
    assert p.macs == 5 * 5 * (4 * 2 * 9) == 1800


def test_norm_and_embedding_have_zero_macs_but_count_params():
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3))
    conv, bn = profile_model(model, torch.randn(2, 1, 4, 4))
    assert (bn.type, bn.macs, bn.params, bn.counted) == ("BatchNorm2d", 0, 6, True)
    assert conv.macs == 3 * 16
    ln = _single(nn.LayerNorm(8), torch.randn(2, 8))
    assert (ln.macs, ln.params, ln.counted) == (0, 16, True)
    emb = _single(nn.Embedding(10, 4), torch.tensor([[1, 2, 3]]))
    assert (emb.macs, emb.params, emb.out_shape, emb.counted) == (0, 40, [3, 4], True)


class _Scale(nn.Module):
    """A user's own layer with a parameter: prunedrop has no MAC rule for it."""

    def __init__(self, n: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * self.scale


class _OwnProduct(nn.Module):
    """A user's own layer that multiplies by its parameter as a matrix: prunedrop has no MAC rule for it."""

    def __init__(self, n: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n, n))

    def forward(self, x):
        return x @ self.w.t()


def test_unknown_layer_is_flagged_not_counted():
    p = _single(_OwnProduct(4), torch.randn(2, 5, 4))
    assert p.macs == 0 and not p.counted
    assert p.params == 16


@pytest.mark.parametrize("where", ["module", "root"])
def test_a_parameter_used_only_element_wise_counts_no_multiply_adds(where):
    """A layer scale, a class token or a position embedding (ViT, ConvNeXt) has no MAC rule, and every report flagged
    it: "Layers with no MAC rule, left out of the FLOPs". Watched at the operator level, it enters no product:
    0 multiply-adds is its count."""
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.cls = nn.Parameter(torch.zeros(1, 1, 4))
            self.pos = nn.Parameter(torch.randn(1, 6, 4))
            self.scale = _Scale(4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
            return self.head(self.scale(x).mean(1))

    profiles = {p.name: p for p in profile_model(Tokens().eval(), torch.randn(3, 5, 4))}
    assert profiles["" if where == "root" else "scale"].counted
    assert profiles[""].macs == profiles["scale"].macs == 0 and profiles["head"].macs == 8
    mixed = nn.Sequential(_Scale(4), _OwnProduct(4))  # only the product is left out
    assert [p.counted for p in profile_model(mixed, torch.randn(2, 4))] == [True, False]


def test_a_buffer_that_enters_a_product_is_flagged_not_counted():
    """A graph convolution's adjacency buffer, ``adj @ lin(h)``, multiplies more than its layers (64·64 per feature
    here); the module holds no parameter of its own, so it was not listed and the FLOPs left it out without a word. A
    buffer used element-wise (BatchNorm's statistics, a fixed scale) is no product."""
    class Graph(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("adj", torch.eye(6))
            self.register_buffer("scale", torch.ones(4))
            self.lin, self.bn = nn.Linear(3, 4), nn.BatchNorm1d(6)

        def forward(self, x):
            return self.bn(self.adj @ self.lin(x) * self.scale)

    profiles = {p.name: p for p in profile_model(Graph().eval(), torch.randn(2, 6, 3))}
    assert (profiles[""].params, profiles[""].macs, profiles[""].counted) == (0, 0, False)
    assert profiles["lin"].counted and profiles["bn"].counted
    report = build_report(original=Graph().eval(), compressed=Graph().eval(), example_input=torch.randn(2, 6, 3),
                          metric_name="accuracy", metric_before=None, metric_after=None, onnx_bytes_before=None,
                          onnx_bytes_after=None, parity_max_abs_diff=None)
    assert report["flops"]["uncounted_layers"] == ["<root>"]
    assert "FLOPs leave out layers with no MAC rule: <root>" in format_table(report)


class _Attend(nn.Module):
    """Attention of ``L`` queries over ``S`` keys (self-attention without ``memory``) on a batch-first input,
    handed to the attention module in its own layout."""

    def __init__(self, attention: nn.Module, memory: torch.Tensor | None = None):
        super().__init__()
        self.attention, self.memory = attention, memory

    def forward(self, x):
        kv = x if self.memory is None else self.memory.expand(x.shape[0], -1, -1)
        if not self.attention.batch_first:
            return self.attention(x.transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1),
                                  need_weights=False)[0].transpose(0, 1)
        return self.attention(x, kv, kv, need_weights=False)[0]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("cross", [False, True])
def test_attention_counts_its_projections_and_its_products(batch_first, cross):
    """nn.MultiheadAttention had no MAC rule: a transformer's FLOPs left its attention out (a 2-layer encoder
    on 17 tokens left 55% of its multiply-adds out), and the projections of head-pruned attention with it."""
    from prunedrop.layers import HeadPrunedMultiheadAttention
    from prunedrop.layers.attention import prune_heads

    e, h, lq, ls = 8, 2, 5, 3
    mha = nn.MultiheadAttention(e, h, batch_first=batch_first)
    with torch.no_grad():
        mha.in_proj_weight[:3] = 0  # three query rows
        mha.out_proj.weight[:, :2] = 0  # two input columns of the output projection
    memory = torch.randn(1, ls, e) if cross else None
    s = ls if cross else lq
    x = torch.randn(4, lq, e)
    profiles = {p.name: p for p in profile_model(_Attend(mha, memory), x)}
    p = profiles["attention"]
    products = 2 * lq * s * e
    assert p.counted and p.fixed_macs == products
    assert p.macs == lq * e * e + 2 * s * e * e + lq * e * e + products
    assert p.nonzero_macs == p.macs - lq * 3 * e - lq * e * 2
    assert profiles["attention.out_proj"].macs == 0  # counted with its attention module, once
    # head removal halves the projections and the products; the slim module's out_proj is not counted twice
    slim = prune_heads(mha, [1])
    assert isinstance(slim, HeadPrunedMultiheadAttention)
    q = {p.name: p for p in profile_model(_Attend(slim, memory), x)}
    assert q["attention"].macs == p.macs // 2
    assert q["attention.out_proj"].macs == 0


def test_variational_attention_counts_what_its_dense_module_counts():
    from prunedrop.convert import to_variational
    from prunedrop.recipes import Recipe
    from prunedrop.testing import TransformerClassifier

    model, x = TransformerClassifier().eval(), torch.randn(4, 5, 6)
    dense = {p.name: p for p in profile_model(model, x)}
    assert dense["encoder.layers.0.self_attn"].counted and dense["encoder.layers.0.self_attn"].macs > 0
    for method in ("sparse_vd", "group_vd"):
        variational = to_variational(copy.deepcopy(model), Recipe(method=method)).eval()
        profiles = {p.name: p for p in profile_model(variational, x)}
        assert sum(p.macs for p in profiles.values()) == sum(p.macs for p in dense.values())
        assert profiles["encoder.layers.0.self_attn"].macs == dense["encoder.layers.0.self_attn"].macs


@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_layer_counts_its_weights_once_per_step(bidirectional):
    lstm = nn.LSTM(4, 3, num_layers=2, batch_first=True, bidirectional=bidirectional)
    with torch.no_grad():
        lstm.weight_hh_l1[:2] = 0
    p = _single(lstm, torch.randn(2, 5, 4))
    weights = [w for n, w in lstm.named_parameters() if n.startswith("weight")]
    assert p.counted and p.macs == 5 * sum(w.numel() for w in weights)
    assert p.nonzero_macs == p.macs - 5 * 2 * 3


def test_macs_are_per_sample():
    model, x = tiny_model("convzoo")
    assert [p.macs for p in profile_model(model, x)] == [p.macs for p in profile_model(model, x[:1])]


def test_shared_module_called_twice_counts_twice():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    (p,) = profile_model(Twice(), torch.randn(2, 4))
    assert p.macs == 2 * 16


def test_profile_restores_training_mode_and_bn_stats():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    stats = model[1].running_mean.clone()
    profile_model(model, torch.randn(4, 1, 6, 6))
    assert all(m.training for m in model.modules())
    assert torch.equal(model[1].running_mean, stats)


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_profile_covers_every_parameter(name):
    model, x = tiny_model(name)
    profiles = profile_model(model, x)
    total, nonzero = count_parameters(model)
    assert sum(p.params for p in profiles) == total
    assert sum(p.nonzero for p in profiles) == nonzero
    assert all(p.counted and p.macs == p.nonzero_macs for p in profiles)


# ------------------------------------------------------------------------------------- non-zero counts


def test_nonzero_macs_after_zeroing_conv_weights():
    conv = nn.Conv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight[0].zero_()  # a whole output channel: 2*9 weights
        conv.weight[1, 0, 0, 0] = 0.0  # one more weight
    p = _single(conv, torch.randn(2, 2, 5, 5))
    nnz = 3 * 2 * 9 - 18 - 1
    assert p.macs == 3 * 2 * 9 * 25
    assert p.nonzero_macs == nnz * 25
    assert p.nonzero == nnz + 3  # the bias stays


def test_nonzero_macs_after_zeroing_linear_weights():
    fc = nn.Linear(6, 4)
    with torch.no_grad():
        fc.weight[:, :3] = 0.0
    p = _single(fc, torch.randn(3, 2, 6))
    assert (p.macs, p.nonzero_macs) == (2 * 24, 2 * 12)


def test_count_parameters():
    fc = nn.Linear(5, 3)
    with torch.no_grad():
        fc.weight[0].zero_()
        fc.bias.zero_()
    assert count_parameters(fc) == (18, 10)

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)
            self.b.weight = self.a.weight

    assert count_parameters(Tied()) == (16, 16)


# ----------------------------------------------------------------------------------------- build_report


def _half_zeroed_mlp() -> tuple[nn.Module, nn.Module, torch.Tensor]:
    original, x = tiny_model("mlp")
    compressed, _ = tiny_model("mlp")
    with torch.no_grad():
        for m in compressed.modules():
            if isinstance(m, nn.Linear):
                m.weight.view(-1)[: m.weight.numel() // 2] = 0.0
    return original, compressed, x


def _report(original: nn.Module, compressed: nn.Module, x: torch.Tensor, **kw) -> dict:
    args = dict(
        metric_name="accuracy",
        metric_before=0.9,
        metric_after=0.875,
        onnx_bytes_before=4000,
        onnx_bytes_after=1000,
        parity_max_abs_diff=1e-6,
    )
    args.update(kw)
    return build_report(original=original, compressed=compressed, example_input=x, **args)


def test_build_report_half_weights_zeroed():
    original, compressed, x = _half_zeroed_mlp()
    report = _report(original, compressed, x)
    # TinyMLP 16-12-8-3: weights 192 + 96 + 24 = 312, biases 12 + 8 + 3 = 23
    assert report["params"]["before"] == report["params"]["total_before"] == 335
    assert report["params"]["after"] == 335 - 156
    assert report["params"]["total_after"] == 335
    assert report["params"]["ratio"] == pytest.approx(335 / 179)
    assert report["flops"]["before"] == report["flops"]["after"] == 312
    assert report["flops"]["nonzero_after"] == 156
    assert report["flops"]["ratio"] == 1.0
    assert report["flops"]["nonzero_ratio"] == 2.0
    assert report["flops"]["uncounted_layers"] == []
    assert report["onnx_bytes"] == {"before": 4000, "after": 1000, "ratio": 4.0}
    assert report["metric"]["name"] == "accuracy"
    assert report["metric"]["delta"] == pytest.approx(-0.025)
    assert report["parity_max_abs_diff"] == 1e-6
    assert report["schema_version"] == REPORT_SCHEMA_VERSION

    layers = {row["name"]: row for row in report["layers"]}
    assert list(layers) == ["net.1", "net.3", "net.5"]
    fc1 = layers["net.1"]
    assert fc1["type"] == "Linear"
    assert (fc1["params_before"], fc1["params_after"]) == (204, 204 - 96)
    assert fc1["kept_fraction"] == pytest.approx(108 / 204)
    assert fc1["shape_before"] == fc1["shape_after"] == [12, 16]
    assert (fc1["macs_before"], fc1["macs_after"], fc1["nonzero_macs_after"]) == (192, 192, 96)
    json.dumps(report, allow_nan=False)


def test_build_report_structured_slim_model():
    original, x = tiny_model("mlp")
    torch.manual_seed(1)
    slim = TinyMLP(hidden=(6, 4)).eval()
    report = _report(original, slim, x)
    assert report["flops"]["after"] == 16 * 6 + 6 * 4 + 4 * 3
    assert report["flops"]["ratio"] == pytest.approx(312 / 132)
    fc1 = report["layers"][0]
    assert (fc1["shape_before"], fc1["shape_after"]) == ([12, 16], [6, 16])


def test_build_report_unmatched_layers_and_missing_values():
    original = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    compressed = nn.Sequential(nn.Linear(4, 2), nn.Identity(), nn.BatchNorm1d(2)).eval()
    report = _report(
        original,
        compressed,
        torch.randn(2, 4),
        metric_before=None,
        metric_after=float("nan"),
        onnx_bytes_before=None,
        onnx_bytes_after=0,
        parity_max_abs_diff=None,
    )
    rows = {row["name"]: row for row in report["layers"]}
    assert [r["name"] for r in report["layers"]] == ["0", "1", "2"]
    assert rows["1"]["params_after"] is None and rows["1"]["shape_after"] is None
    assert rows["2"]["params_before"] is None and rows["2"]["kept_fraction"] is None
    assert report["metric"] == {"name": "accuracy", "before": None, "after": None, "delta": None,
                                "delta_se": None, "higher_is_better": True}
    assert report["onnx_bytes"]["ratio"] is None
    json.dumps(report, allow_nan=False)


def test_build_report_flags_uncounted_layers():
    class WithScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = _OwnProduct(4)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.scale(x))

    model = WithScale().eval()
    report = _report(model, model, torch.randn(2, 4))
    assert report["flops"]["uncounted_layers"] == ["scale"]
    assert "scale" in format_table(report)


def test_build_report_extra():
    original, compressed, x = _half_zeroed_mlp()
    report = _report(original, compressed, x, extra={"recipe": "recipes/sparse-vd.yaml", "epochs": 3})
    assert report["recipe"] == "recipes/sparse-vd.yaml" and report["epochs"] == 3
    with pytest.raises(ValueError, match="clash"):
        _report(original, compressed, x, extra={"params": 1})
    with pytest.raises(ValueError, match="absolute path"):
        _report(original, compressed, x, extra={"model": str(Path.cwd().resolve() / "model.pt")})
    with pytest.raises(ValueError, match="JSON"):
        _report(original, compressed, x, extra={"model": object()})


# -------------------------------------------------------------------------------------------- writers


def test_write_report_round_trip(tmp_path):
    original, compressed, x = _half_zeroed_mlp()
    latency = {
        "baseline": "original",
        "threads": 1,
        "warmup": 1,
        "runs": 3,
        "onnxruntime_version": "x",
        "results": [
            {
                "model": "original",
                "batch_size": 1,
                "median_ms": 0.2,
                "iqr_ms": 0.01,
                "p25_ms": 0.19,
                "p75_ms": 0.2,
                "speedup": 1.0,
            },
            {
                "model": "compressed",
                "batch_size": 1,
                "median_ms": 0.1,
                "iqr_ms": 0.01,
                "p25_ms": 0.09,
                "p75_ms": 0.1,
                "speedup": 2.0,
            },
        ],
    }
    report = _report(original, compressed, x, extra={"latency": latency})
    out = tmp_path / "run"
    write_report(report, out)
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md"]  # no temporary files left
    assert load_report(out) == report
    assert load_report(out / "report.json") == report
    md = (out / "report.md").read_text()
    for text in (
        "| parameters (non-zero) |",
        "net.1",
        "net.5",
        "## Layers",
        "## Latency",
        "2.00x",
        "accuracy",
    ):
        assert text in md
    assert str(tmp_path) not in (out / "report.json").read_text()


def test_write_report_refuses_absolute_paths(tmp_path):
    original, compressed, x = _half_zeroed_mlp()
    report = _report(original, compressed, x)
    report["model"] = "/home/someone/model.pt"
    with pytest.raises(ValueError, match="absolute path"):
        write_report(report, tmp_path)
    assert not (tmp_path / "report.json").exists()


def test_format_table():
    original, compressed, x = _half_zeroed_mlp()
    table = format_table(_report(original, compressed, x))
    for text in (
        "net.1",
        "net.3",
        "net.5",
        "parameters (non-zero)",
        "FLOPs (non-zero MACs)",
        "2.00x",
        "4.00x",
    ):
        assert text in table
    lines = table.splitlines()
    rule = next(i for i, line in enumerate(lines) if "net.1" in line) - 1
    assert set(lines[rule].replace(" ", "")) == {"-"}
    assert len(lines[rule + 1]) <= len(lines[rule])  # rows fit the column rule: aligned


def test_table_gives_the_standard_error_of_the_change_and_the_test_split():
    original, compressed, x = _half_zeroed_mlp()
    report = _report(original, compressed, x, metric_before=90.13, metric_after=89.67, metric_delta_se=0.2771,
                     extra={"test_metric": {"before": 90.04, "after": 89.02, "delta_se": 0.2145}})
    assert report["metric"]["delta_se"] == 0.2771
    rows = {line.split("  ")[0]: line for line in format_table(report).splitlines()}
    assert rows["metric: accuracy"].split()[-3:] == ["-0.46", "±", "0.28"]
    assert rows["accuracy on test data"].split()[-5:] == ["90.04", "89.02", "-1.02", "±", "0.21"]
    plain = format_table(_report(original, compressed, x))  # no standard error, no test split: neither is shown
    assert "±" not in plain and "on test data" not in plain
    assert _report(original, compressed, x, metric_delta_se=float("nan"))["metric"]["delta_se"] is None


def test_mse_report_says_lower_is_better_and_the_change_in_percent():
    original, compressed, x = _half_zeroed_mlp()
    report = _report(original, compressed, x, metric_name="mse", metric_before=0.20, metric_after=0.21)
    assert report["metric"]["higher_is_better"] is False
    assert _report(original, compressed, x)["metric"]["higher_is_better"] is True
    report["sweep"] = {"chosen_threshold": 1.0, "max_metric_drop": 10.0, "points": []}
    report["threshold"] = 1.0
    table = format_table(report)
    assert "metric: mse (lower is better)" in table and "(+5.0%)" in table
    assert "within 10% more mse than the original's" in table
    del report["metric"]["higher_is_better"]  # a report written before the flag: known by the metric's name
    assert "metric: mse (lower is better)" in format_table(report)
    accuracy = format_table(_report(original, compressed, x))
    assert "lower is better" not in accuracy and "%)" not in accuracy.split("metric: accuracy")[1].splitlines()[0]


def test_sweep_line_names_the_threshold_the_bisection_after_fine_tuning_chose():
    original, compressed, x = _half_zeroed_mlp()
    report = _report(original, compressed, x)
    report["sweep"] = {"chosen_threshold": -4.0, "max_metric_drop": 1.0, "points": [],
                       "after_finetune": [{"threshold": -6.0, "within_budget": True},
                                          {"threshold": -7.0, "within_budget": False},
                                          {"threshold": -6.5, "within_budget": True}]}
    report["threshold"] = -6.5
    table = format_table(report)
    assert "threshold -6.5 chosen after noise-free fine-tuning" in table and "the sweep before it chose -4" in table
    assert "threshold -4 chosen by the sweep" not in table
    report["threshold"] = -4.0  # no probe kept the budget: the sweep's choice is used, and said so
    assert "threshold -4 chosen by the sweep" in format_table(report)
    assert "checks count" not in format_table(report)


def test_sweep_line_names_the_thresholds_a_coarse_validation_sets_check_samples_ruled_out():
    original, compressed, x = _half_zeroed_mlp()
    report = _report(original, compressed, x)
    report["sweep"] = {"chosen_threshold": 1.0, "max_metric_drop": 1.0, "points": [],
                       "check_set": {"samples": 1437, "metric_before": 99.7, "reference": 99.2, "least_pruning": 6.0,
                                     "metric_least_pruning": 99.2,
                                     "ruled_out": [{"threshold": 0.5, "metric": 98.0}, {"threshold": 0.0, "metric": 97.1}]}}
    report["threshold"] = 1.0
    line = next(li for li in format_table(report).splitlines() if "chosen by the sweep" in li)
    assert "threshold 1 chosen by the sweep" in line and "on the 1437 samples the autopilot's checks count" in line
    assert "0.5, 0 kept it on the validation data alone" in line
    report["sweep"]["check_set"]["ruled_out"] = []  # measured, nothing ruled out: the usual line
    assert "checks count" not in format_table(report)


def test_speed_lines_name_the_file_and_say_when_rounding_hides_the_difference():
    original, compressed, x = _half_zeroed_mlp()

    def row(model: str, ms: float) -> dict:
        return {"model": model, "batch_size": 64, "median_ms": ms, "iqr_ms": 0.0, "p25_ms": ms, "p75_ms": ms,
                "speedup": 2.0 / ms}

    report = _report(original, compressed, x, extra={"latency": {
        "baseline": "original", "results": [row("original", 2.0), row("compressed", 1.0), row("quantized", 0.999)]}})
    report["quantization"] = {"mode": "int8", "file": "model-int8.onnx", "bytes": 100, "files": {}, "layers": []}
    table = format_table(report)
    assert "measured speedup 2.00x of the compressed float32 file over the original" in table
    assert "measured speedup 2.00x of the quantized file over the original" in table
    assert "runs 1.00x as fast as the pruned float32 file (as fast within rounding)" in table
    report["latency"]["results"][2] = row("quantized", 1.25)
    assert "runs 0.80x as fast as the pruned float32 file (slower)" in format_table(report)


def test_load_report_errors(tmp_path):
    with pytest.raises(PrunedropError, match="no report"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text('{"params": ')
    with pytest.raises(PrunedropError, match="corrupt"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("[1, 2]")
    with pytest.raises(PrunedropError, match="not a prunedrop report"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"schema_version": 1, "params": {}}))
    with pytest.raises(PrunedropError, match="missing flops"):
        load_report(tmp_path)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "-"),
        (0, "0"),
        (999, "999"),
        (1000, "1.00K"),
        (1234567, "1.23M"),
        (999_999, "1.00M"),
        (2.5e9, "2.50G"),
    ],
)
def test_human_count(n, text):
    assert human_count(n) == text


@pytest.mark.parametrize(
    ("n", "text"), [(None, "-"), (0, "0 B"), (1023, "1023 B"), (1536, "1.50 KiB"), (3 * 1024**2, "3.00 MiB")]
)
def test_human_bytes(n, text):
    assert human_bytes(n) == text


# -------------------------------------------------------------------------------------------- latency


def _export(model: nn.Module, x: torch.Tensor, path: Path, dynamic: bool = True) -> Path:
    # The legacy exporter keeps this test independent of prunedrop.export; its deprecation is not ours.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamo=False,
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}} if dynamic else None,
        )
    return path


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    original, x = tiny_model("mlp")
    slim = TinyMLP(hidden=(6, 4)).eval()
    return {
        "original": _export(original, x, folder / "original.onnx"),
        "compressed": _export(slim, x, folder / "compressed.onnx"),
    }, x


def test_measure_latency(onnx_pair):
    paths, x = onnx_pair
    latency = measure_latency(paths, x, batch_sizes=(1, 6), warmup=1, runs=3)
    assert latency["baseline"] == "original"
    assert [(r["model"], r["batch_size"]) for r in latency["results"]] == [
        ("original", 1),
        ("compressed", 1),
        ("original", 6),
        ("compressed", 6),
    ]
    for r in latency["results"]:
        assert r["median_ms"] > 0 and r["iqr_ms"] >= 0 and r["speedup"] > 0
        assert r["p25_ms"] <= r["median_ms"] <= r["p75_ms"]
        assert math.isfinite(r["speedup"])
    assert [r["speedup"] for r in latency["results"] if r["model"] == "original"] == [1.0, 1.0]
    json.dumps(latency, allow_nan=False)
    assert str(Path(paths["original"]).parent) not in json.dumps(latency)


def test_measure_latency_errors(onnx_pair, tmp_path):
    paths, x = onnx_pair
    with pytest.raises(ValueError, match="runs"):
        measure_latency(paths, x, runs=1)
    with pytest.raises(PrunedropError, match="no ONNX file"):
        measure_latency({"missing": tmp_path / "nope.onnx"}, x, runs=2)
    model, _ = tiny_model("mlp")
    fixed = _export(model, x, tmp_path / "fixed.onnx", dynamic=False)
    with pytest.raises(PrunedropError, match="fixed batch size of 4"):
        measure_latency({"fixed": fixed}, x, batch_sizes=(1,), runs=2)


def test_the_models_own_parameters_are_named_root():
    """A forward that calls F.linear with a parameter of the model itself: its row and the uncounted layers were
    named by the empty string (a blank first column, "left out of the FLOPs: ``")."""
    class RawParam(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(4, 4))
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(torch.nn.functional.linear(x, self.w))

    model = RawParam().eval()
    report = _report(model, model, torch.randn(2, 4))
    assert report["flops"]["uncounted_layers"] == ["<root>"]
    assert [row["name"] for row in report["layers"]] == ["<root>", "head"]
    from prunedrop.report.render import format_markdown

    assert "`<root>`" in format_markdown(report) and "<root>" in format_table(report)


def test_an_embedding_that_lost_rows_is_one_row_under_its_name():
    """Slimming wraps an embedding whose rows left in a RemappedEmbedding (``embedding`` → ``embedding.embedding``):
    the layer table showed the embedding gone ("-" after) and a new layer beside it."""
    from prunedrop.slim import remove_heads_and_rows
    from prunedrop.testing import tiny_token_model

    model, ids = tiny_token_model(vocab=20)
    with torch.no_grad():
        model.embedding.weight[12:] = 0
    slim = remove_heads_and_rows(model, ids).model
    assert any(name == "embedding.embedding" for name, _ in slim.named_modules())
    report = _report(model, slim, ids)
    rows = {row["name"]: row for row in report["layers"]}
    assert set(rows) == {"embedding", "head"}
    assert rows["embedding"]["shape_before"] == [20, 6] and rows["embedding"]["shape_after"] == [13, 6]
    assert rows["embedding"]["params_after"] == 12 * 6


def test_per_class_accuracies_are_listed_and_a_class_that_fell_is_named():
    from prunedrop.report.render import format_markdown

    original, compressed, x = _half_zeroed_mlp()
    report = _report(original, compressed, x)
    assert "## Per class" not in format_markdown(report)
    report["per_class"] = {"val": [{"label": 0, "samples": 96, "before": 100.0, "after": 100.0},
                                   {"label": 1, "samples": 4, "before": 100.0, "after": 75.0}],
                           "test": [{"label": 0, "samples": 90, "before": 98.0, "after": 97.0}]}
    markdown = format_markdown(report)
    section = markdown[markdown.index("## Per class"):markdown.index("## Layers")]
    assert section.index("| 1 | 4 | 100 | 75 (-25) | - | - | - |") < section.index("| 0 | 96 | 100 | 100 (+0) | 90 |")
    assert "Note: class 1 lost 25 points" in section
    assert "note: class 1 lost 25 points" in format_table(report)
    json.dumps(report, allow_nan=False)
