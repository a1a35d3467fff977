"""Quantized ONNX export (prunedrop.quantize): the posterior's bit rule, onnxruntime's quantizer, the budget check."""

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import TensorDataset

from prunedrop.cli import cli
from prunedrop.data import DataBundle
from prunedrop.errors import PrunedropError
from prunedrop.export import export_onnx
from prunedrop.layers.group_vd import LinearGroupVD
from prunedrop.layers.lognormal import LinearLogNormal
from prunedrop.layers.sparse_vd import LinearSVD
from prunedrop.quantize import (
    cpu_instruction_sets,
    evaluate_onnx,
    onnx_sample_scores,
    posterior_bits,
    posterior_moments,
    quantize_model,
    quantize_onnx,
    unit_bits,
    weight_bits,
)
from prunedrop.quantize.graph import compact_size
from prunedrop.recipes import Recipe
from prunedrop.testing import TinyLSTMClassifier, fit, tiny_classification_data, write_tiny_project

SQRT12 = math.sqrt(12.0)


def _bits(span_over_spread: float) -> int:
    """The rule by hand: ceil(log2(r / (sqrt(12)·s) + 1))."""
    return math.ceil(math.log2(span_over_spread / SQRT12 + 1))


def _svd(rows: list[tuple[float, float]], fan_in: int = 4, clip: float = 20.0) -> LinearSVD:
    """A sparse VD layer whose row u has every weight equal to c_u and every posterior std equal to s_u (log α
    clipped to ±``clip``)."""
    layer = LinearSVD.from_dense(nn.Linear(fan_in, len(rows)), log_alpha_clip=clip)
    with torch.no_grad():
        for u, (c, s) in enumerate(rows):
            layer.weight[u] = c
            layer.log_sigma2[u] = math.log(s * s)
    return layer


def test_bit_rule_sparse_vd_known_posterior() -> None:
    # r = 2·c, s given: r/(√12·s) = 100 → 7 bits (int8); 1000 → 10 bits (stays float32)
    model = nn.Sequential(_svd([(1.0, 2 / (100 * SQRT12))] * 3), _svd([(0.5, 1 / (1000 * SQRT12))] * 3))
    bits = posterior_bits(model, 3.0)
    assert bits["0"].bits == _bits(100 * SQRT12) == 7
    assert bits["0"].precision == "int8"
    assert bits["1"].bits == _bits(1000 * SQRT12) == 10
    assert bits["1"].precision == "float32"
    assert bits["0"].median_spread == pytest.approx(2 / (100 * SQRT12), rel=1e-4)
    # the posterior is the layer's own, clipped one: log α ≥ −10 means s ≥ e⁻⁵·|θ|, so r/s ≤ 2·e⁵ → 7 bits
    clipped = posterior_bits(nn.Sequential(_svd([(0.5, 1 / (1000 * SQRT12))] * 3, clip=10.0)), 3.0)
    assert clipped["0"].bits == _bits(2 * math.exp(5)) == 7


def test_bit_rule_takes_the_90th_percentile_of_the_units_and_skips_pruned_weights() -> None:
    sure, loose = 1 / (1000 * SQRT12), 2 / (10 * SQRT12)  # 10 bits and 4 bits for c = 0.5 and c = 1
    nine_loose = _svd([(1.0, loose)] * 9 + [(0.5, sure)])
    two_sure = _svd([(1.0, loose)] * 8 + [(0.5, sure)] * 2)
    bits = posterior_bits(nn.Sequential(nine_loose, two_sure), 3.0)
    assert bits["0"].bits == 4  # one sure unit in ten does not force the layer to float
    assert bits["1"].bits == 10  # two do
    # a pruned weight (log α > threshold) neither widens the range nor enters the spread
    layer = _svd([(1.0, loose)] * 2)
    with torch.no_grad():
        layer.weight[0, 0] = 100.0
        layer.log_sigma2[0, 0] = math.log(1e4 * 100.0**2)  # log α = log 1e4 > 3
    assert unit_bits(*posterior_moments(layer, 3.0)).tolist() == [4.0, 4.0]


def test_bit_rule_structured_noise_uses_the_units_snr() -> None:
    sbp = LinearLogNormal.from_dense(nn.Linear(5, 4))
    with torch.no_grad():
        sbp.weight.fill_(0.3)
        sbp.mu.copy_(torch.tensor([0.0, -0.5, -1.0, -15.0]))
        sbp.log_sigma.copy_(torch.tensor([-5.0, -2.0, -1.0, 1.0]))
    snr = sbp.snr().detach()
    keep = snr > 1.0
    assert keep.tolist() == [True, True, True, False]
    # folded w' = E[θ]·w for every weight of a unit, std |w'|/SNR: r_u/s_u = 2·SNR_u
    want = [_bits(2 * float(v)) for v in snr[keep]]
    assert unit_bits(*posterior_moments(sbp, 1.0)).tolist() == want
    gvd = LinearGroupVD.from_dense(nn.Linear(5, 3))
    with torch.no_grad():
        gvd.weight.fill_(-0.2)
        gvd.log_alpha_param.copy_(torch.tensor([math.log(1e-4), -2.0, 4.0]))  # std 1e-2 and e⁻¹; pruned
    assert unit_bits(*posterior_moments(gvd, 3.0)).tolist() == [_bits(2 / 1e-2), _bits(2 / math.exp(-1))]


def _gvd(weight: torch.Tensor, log_alpha: list[float]) -> LinearGroupVD:
    """A group VD layer with the given weights and each unit's log α (relative variance α of its output scale)."""
    layer = LinearGroupVD.from_dense(nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.log_alpha_param.copy_(torch.tensor(log_alpha))
    return layer


def test_bit_rule_on_inputs_matches_the_units_output() -> None:
    from prunedrop.quantize import input_spreads

    torch.manual_seed(0)
    power = torch.tensor([4.0, 1.0, 0.25, 0.01])  # E[x_i²]: independent inputs of unequal power
    x = torch.randn(40000, 4) * power.sqrt()
    weight = torch.tensor([[1.0, -0.5, 2.0, 3.0], [0.2, 0.2, 0.2, 0.2]])
    alpha = torch.tensor([1e-4, 1e-3])
    gvd = _gvd(weight, alpha.log().tolist())
    # a unit's scale noise moves its output by α·E[y²] = α·Σ w_i²·E[x_i²]; a step Δ on every weight by Δ²/12·Σ E[x_i²]
    want = (alpha * (weight**2 * power).sum(1) / power.sum()).sqrt()
    torch.testing.assert_close(input_spreads(nn.Sequential(gvd), x)["0"].float(), want, rtol=0.03, atol=0)
    # independent per-weight noise (sparse VD) counts each weight's variance by its input's power
    svd = _svd([(1.0, 0.01), (1.0, 0.01)], fan_in=4)
    with torch.no_grad():
        svd.log_sigma2[:, 0] = math.log(0.1**2)  # the loud input's weights are the unsure ones
    var = svd.log_sigma2.detach().exp()
    want = ((var * power).sum(1) / power.sum()).sqrt()
    torch.testing.assert_close(input_spreads(nn.Sequential(svd), x)["0"].float(), want, rtol=0.03, atol=0)
    # inputs of equal power, uncorrelated: the rms of the variances over the weights, as without inputs
    iso = input_spreads(nn.Sequential(gvd), torch.randn(40000, 4))["0"]
    torch.testing.assert_close(iso.float(), (alpha * (weight**2).mean(1)).sqrt(), rtol=0.03, atol=0)


@pytest.mark.parametrize("method", ["sparse_vd", "sbp", "group_vd"])
def test_bit_rule_counts_a_transposed_convolutions_output_channels(method: str) -> None:
    """A transposed convolution's weight is (in, out, *kernel): the rule's units are its out channels (axis 1). The
    unit-noise families' per-unit posterior did not broadcast against that weight (6 inputs, 4 outputs)."""
    from prunedrop.convert import to_variational

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(6, 4, 2, stride=2), nn.ReLU(),
                          nn.Conv2d(4, 3, 1)).eval()
    x = torch.randn(16, 2, 4, 4)
    variational = to_variational(model, Recipe(method=method), example_input=x[:2]).eval()
    for inputs in (None, x):
        bits = posterior_bits(variational, inputs=inputs)
        assert bits["2"].units == 4 and bits["0"].units == 6
        assert bits["2"].on_inputs == (inputs is not None)


def test_bit_rule_on_inputs_asks_more_bits_of_a_filter_that_cancels_its_correlated_inputs() -> None:
    # every input carries the same signal z: the filter's output (Σw)·z is small beside its weights, so scale noise
    # moves it little, while rounding errors add up over all the inputs: the weights alone overstate the allowance
    torch.manual_seed(0)
    z = torch.randn(2000, 1)
    x = z.repeat(1, 8) + 0.01 * torch.randn(2000, 8)
    weight = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -0.9]])
    model = nn.Sequential(_gvd(weight, [math.log(1e-2)]))
    alone = posterior_bits(model, 3.0)["0"]
    measured = posterior_bits(model, 3.0, inputs=x)["0"]
    assert not alone.on_inputs and measured.on_inputs
    assert alone.bits == _bits(2 * 1.0 / (0.1 * float(weight.pow(2).mean().sqrt())))  # r/s = 2·max|w| / (√α·rms w)
    assert measured.bits >= alone.bits + 3  # s shrinks by about |Σw|/(√8·rms w) ≈ 0.04: ~4.6 more bits
    # a unit whose inputs are all zero on the samples may take any step: the fewest bits
    dead = posterior_bits(model, 3.0, inputs=torch.zeros(10, 8))["0"]
    assert dead.bits == 1 and dead.on_inputs and dead.median_spread == math.inf
    # samples the model cannot take (5 features for 8 inputs): the rule on the weights, not a failed run
    unfit = posterior_bits(model, 3.0, inputs=torch.zeros(10, 5))["0"]
    assert not unfit.on_inputs and unfit.bits == alone.bits


def test_bit_rule_on_inputs_of_a_convolution_counts_every_patch() -> None:
    from prunedrop.layers.lognormal import Conv2dLogNormal
    from prunedrop.quantize import input_spreads

    torch.manual_seed(0)
    conv = Conv2dLogNormal.from_dense(nn.Conv2d(2, 3, 3, padding=1, bias=False))
    with torch.no_grad():
        conv.mu.copy_(torch.tensor([0.0, -0.3, -0.1]))
        conv.log_sigma.copy_(torch.tensor([-2.0, -1.5, -3.0]))
    x = torch.rand(16, 2, 6, 6) * torch.tensor([1.0, 0.1]).reshape(1, 2, 1, 1)
    mean = conv.expected_theta().detach()
    rho2 = (1 / conv.snr().detach()) ** 2
    folded = conv.weight.detach() * mean.reshape(-1, 1, 1, 1)
    patches = nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 18)  # (samples·positions, inputs)
    y = patches @ folded.reshape(3, -1).T
    want = (rho2 * (y**2).mean(0) / (patches**2).sum(1).mean()).sqrt()
    torch.testing.assert_close(input_spreads(nn.Sequential(conv), x, batch_size=5)["0"].float(), want, rtol=1e-4,
                               atol=0)


# ------------------------------------------------------------------------------------------------ onnxruntime


def _int8_faster(paths: Mapping[str, Path]) -> dict[str, float]:
    """A timer on a CPU where every quantized file runs faster than the float32 one (2 ms): these tiny models
    quantize to files larger than their float32 ones, and a file neither smaller nor faster is not written."""
    return {name: 2.0 if name == "float32" else 1.0 for name in paths}


def _bundle(x: torch.Tensor, y: torch.Tensor) -> DataBundle:
    n = len(x) // 2
    return DataBundle(name="tensors", train=TensorDataset(x[:n], y[:n]), val=TensorDataset(x[n:], y[n:]),
                      test=None, input_shape=tuple(x.shape[1:]), num_classes=3)


def test_operator_onnxruntime_cannot_quantize_stays_float_and_is_named(tmp_path: Path) -> None:
    from prunedrop.testing import TinyGRUClassifier

    torch.manual_seed(0)
    model = TinyGRUClassifier().eval()
    x = torch.randn(64, 5, 6)
    y = model(x).argmax(1).detach()
    float_file = export_onnx(model, x[:2], tmp_path / "model.onnx").path
    logs: list[str] = []
    section = quantize_model(float_file, tmp_path / "model-int8.onnx", mode="int8", data=_bundle(x, y),
                             recipe=Recipe(max_metric_drop=100.0), metric_before=100.0, timer=_int8_faster,
                             log=logs.append)
    assert section["unsupported"] == [{"node": "rnn/GRU", "op": "GRU"}, {"node": "rnn/GRU_1", "op": "GRU"}]
    rows = {r["node"]: r for r in section["layers"]}
    assert rows["rnn/GRU"]["precision"] == rows["rnn/GRU_1"]["precision"] == "float32"
    assert rows["rnn/GRU"]["reason"] == "onnxruntime does not quantize this operator"
    assert rows["head/Gemm"]["precision"] == "int8"
    assert "rnn/GRU (GRU), rnn/GRU_1 (GRU)" in logs[-1]
    # the file holds what the section says: the head's weight dequantized, the GRU's weights float
    import onnx

    proto = onnx.load(str(tmp_path / "model-int8.onnx"))
    ops = {n.op_type for n in proto.graph.node}
    assert {"GRU", "DequantizeLinear", "QuantizeLinear"} <= ops


def test_lstm_is_quantized_by_onnxruntimes_dynamic_quantizer(tmp_path: Path) -> None:
    import onnx

    torch.manual_seed(0)
    model = TinyLSTMClassifier().eval()
    x = torch.randn(64, 5, 6)
    y = model(x).argmax(1).detach()
    float_file = export_onnx(model, x[:2], tmp_path / "model.onnx").path
    data = _bundle(x, y)
    section = quantize_model(float_file, tmp_path / "q.onnx", mode="int8", data=data,
                             recipe=Recipe(max_metric_drop=None), metric_before=None, timer=_int8_faster,
                             log=lambda m: None)
    rows = {r["layer"]: r for r in section["layers"]}
    assert section["unsupported"] == []
    assert rows["rnn"]["precision"] == "int8" and rows["rnn"]["op"] == "LSTM"
    proto = onnx.load(str(tmp_path / "q.onnx"))
    lstm = [n for n in proto.graph.node if n.op_type == "DynamicQuantizeLSTM"]
    assert len(lstm) == 1 and not any(n.op_type == "LSTM" for n in proto.graph.node)
    inits = {t.name: t for t in proto.graph.initializer}
    assert rows["rnn"]["storage"]["bytes"] == inits[lstm[0].input[1]].ByteSize() + inits[lstm[0].input[2]].ByteSize()
    assert section["metric"]["val"] == evaluate_onnx(tmp_path / "q.onnx", data.loader("val", 64)) > 90.0
    # excluded (for accuracy or speed), the LSTM stays a float LSTM
    kept = quantize_onnx(float_file, tmp_path / "kept.onnx", [x.numpy()], exclude=["/rnn/LSTM"])
    assert kept.float_nodes == ["/rnn/LSTM"]
    assert any(n.op_type == "LSTM" for n in onnx.load(str(tmp_path / "kept.onnx")).graph.node)


def test_sensitive_layer_is_reverted_to_stay_within_the_budget(tmp_path: Path) -> None:
    # fc2 reads a hidden unit that is always 0 with a huge weight: per-channel int8 then rounds every other
    # weight of fc2 to 0 (a step of 2e4/254), which destroys the model; fc1 alone quantizes harmlessly
    x, y = tiny_classification_data(n=400, shape=(16,), seed=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    fit(model, x[:200], y[:200], 150)
    with torch.no_grad():
        model[0].weight[0] = 0.0
        model[0].bias[0] = -1.0
        model[2].weight[:, 0] = 1e4
    model.eval()
    float_file = export_onnx(model, x[:2], tmp_path / "model.onnx").path
    data = _bundle(x, y)
    before = evaluate_onnx(float_file, data.loader("val", 64))
    logs: list[str] = []
    section = quantize_model(float_file, tmp_path / "model-int8.onnx", mode="int8", data=data,
                             recipe=Recipe(max_metric_drop=3.0), metric_before=before, timer=_int8_faster,
                             log=logs.append)
    rows = {r["layer"]: r for r in section["layers"]}
    assert rows["2"]["precision"] == "float32" and rows["2"]["reason"].startswith("reverted")
    assert rows["0"]["precision"] == "int8"
    assert [r["node"] for r in section["reverted"]] == ["2/Gemm"]
    assert rows["2"]["sensitivity"] > 20 > rows["0"]["sensitivity"]
    assert section["within_budget"] and before - section["metric"]["val"] <= 3.0
    assert section["metric"]["val"] == evaluate_onnx(tmp_path / "model-int8.onnx", data.loader("val", 64))
    assert any("reverted 2/Gemm" in line for line in logs)


def test_a_confidence_holds_the_quantized_file_to_the_budget_by_its_standard_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prunedrop.quantize import plan

    x, y = tiny_classification_data(n=400, shape=(16,), seed=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    fit(model, x[:200], y[:200], 150)
    model.eval()
    float_file = export_onnx(model, x[:2], tmp_path / "model.onnx").path
    data = _bundle(x, y)
    loader = data.loader("val", 64)
    scores = onnx_sample_scores(float_file, loader)
    assert float(scores.mean()) == pytest.approx(evaluate_onnx(float_file, loader))
    before = float(scores.mean())
    kw = {"mode": "int8", "data": data, "metric_before": before, "timer": _int8_faster, "log": lambda m: None,
          "scores_before": scores}
    sure = Recipe(max_metric_drop=3.0, budget_confidence=0.9)
    # paired with the float model's own scores, int8 keeps the budget at 90% confidence
    kept = quantize_model(float_file, tmp_path / "kept.onnx", recipe=sure, **kw)
    assert kept["file"] is not None and kept["within_budget"]
    assert all(r["precision"] == "int8" for r in kept["layers"])

    # every quantized file now reads right on 12 samples the float model got wrong and wrong on 14 it got right: 1
    # point down on 200, with a standard error of about 2.5 points: within 3 by the measured drop, not at 90%
    right, wrong = (scores > 0).nonzero().flatten(), (scores == 0).nonzero().flatten()
    changed = scores.clone()
    changed[right[:14]], changed[wrong[:12]] = 0.0, 100.0
    assert before - float(changed.mean()) == pytest.approx(1.0)
    monkeypatch.setattr(plan, "onnx_sample_scores", lambda path, loader, loss: scores
                        if Path(path) == Path(float_file) else changed)
    reverted = quantize_model(float_file, tmp_path / "reverted.onnx", recipe=sure, **kw)
    assert reverted["file"] is None
    assert {r["node"] for r in reverted["reverted"]} == {"0/Gemm", "2/Gemm"}
    plain = quantize_model(float_file, tmp_path / "plain.onnx", recipe=Recipe(max_metric_drop=3.0), **kw)
    assert plain["file"] is not None and not plain.get("reverted")


def test_int8_weights_are_stored_sparsely_only_where_smaller(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)).eval()
    with torch.no_grad():
        model[0].weight.mul_((torch.rand(64, 64) < 0.05).float())  # 95% zeros: sparse is smaller
    x = torch.randn(64, 64)
    float_file = export_onnx(model, x[:2], tmp_path / "model.onnx").path  # fc1 sparse in the float file too
    dense = quantize_onnx(float_file, tmp_path / "dense.onnx", [x.numpy()], sparse=False)
    sparse = quantize_onnx(float_file, tmp_path / "sparse.onnx", [x.numpy()])
    stored = {node.strip("/").split("/")[0]: row for node, row in sparse.storage.items()}
    assert stored["0"]["stored"] == "sparse" and stored["2"]["stored"] == "dense"
    assert set(stored["0"]["tensors"]) <= set(sparse.sparse_initializers)
    assert not set(stored["2"]["tensors"]) & set(sparse.sparse_initializers)
    assert sparse.num_bytes < dense.num_bytes - 64 * 64 // 2
    import onnxruntime as ort

    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
            for p in (dense.path, sparse.path)]
    assert np.array_equal(outs[0], outs[1])
    # a sparse layer left float32 (excluded: for speed, accuracy, ...) stays sparse as in the float file
    excluded = quantize_onnx(float_file, tmp_path / "excluded.onnx", [x.numpy()], exclude=["/0/Gemm"])
    assert excluded.float_nodes == ["/0/Gemm"] and len(excluded.sparse_initializers) == 1  # its float weight (renamed short)
    assert excluded.num_bytes < 64 * 64 * 4  # fc1 dense alone would take 16 kB
    out = ort.InferenceSession(str(excluded.path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert np.allclose(out[0], model(x).detach().numpy(), atol=0.1)


def test_cpu_instruction_sets_from_cpuinfo() -> None:
    text = "processor: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\nflags: ignored\n"
    assert cpu_instruction_sets(text) == ["avx512_vnni", "avx512f", "avx2"]
    assert cpu_instruction_sets("processor: 0\n") == []


@pytest.mark.parametrize(("flags", "bits"), [(["avx512_vnni", "avx512f", "avx2"], 8), (["avx_vnni", "avx2"], 8),
                                             (["avx512f", "avx2"], 7), (["avx2"], 7), ([], 7)])
def test_int8_weights_keep_7_bits_without_vnni(flags: list[str], bits: int) -> None:
    assert weight_bits(flags) == bits


@pytest.mark.parametrize("bits", [7, 8])
def test_quantized_weights_use_the_bits_asked_for(tmp_path: Path, bits: int) -> None:
    """7 bits (onnxruntime's reduce_range) on CPUs whose int8 kernels add byte products in 16 bits (no VNNI): the
    largest stored weight is 64, not 127; the file computes the float model's classes either way."""
    import onnx
    from onnx import numpy_helper

    from prunedrop.quantize import weight_nodes

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    x = torch.rand(64, 1, 4, 4) * 4
    float_file = export_onnx(model, x[:2], tmp_path / "model.onnx").path
    out = quantize_onnx(float_file, tmp_path / f"q{bits}.onnx", [x.numpy()], bits=bits, sparse=False)
    proto = onnx.load(str(out.path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    weights = [inits[n.input[0]] for n in proto.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    assert len(weights) == 2
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == (64 if bits == 7 else 127)
    # int4 weights are decoded to float, so they keep their whole range [-8, 7] either way (with reduce_range
    # onnxruntime would store them in [-4, 3]: 3 bits)
    int4_file = quantize_onnx(float_file, tmp_path / f"q{bits}-int4.onnx", [x.numpy()], bits=bits, sparse=False,
                              int4=[wn.node for wn in weight_nodes(onnx.load(str(float_file)))][:1])
    graph = onnx.load(str(int4_file.path)).graph
    inputs = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    int4 = [numpy_helper.to_array(t) for t in graph.initializer
            if t.data_type == onnx.TensorProto.INT4 and t.name in inputs]
    assert len(int4) == 1 and int(np.abs(int4[0].astype(np.int32)).max()) >= 7
    import onnxruntime as ort

    session = ort.InferenceSession(str(out.path), providers=["CPUExecutionProvider"])
    classes = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].argmax(1)
    assert (classes == model(x).argmax(1).numpy()).mean() >= 0.9


def test_int4_transposed_convolution_gets_a_scale_per_output_channel(tmp_path: Path) -> None:
    """A transposed convolution's weight is (in, out, kH, kW): int4 scales along axis 0 (as for Conv) made
    onnxruntime's bias quantization fail ("operands could not be broadcast together with shapes (32,) (40,)") on a
    slimmed U-Net whose up-sampling layer had 40 inputs and 32 outputs, and no int8 file was written."""
    import onnx
    import onnxruntime as ort

    from prunedrop.quantize import weight_nodes

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 10, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(10, 6, 2, stride=2),
                          nn.ReLU(), nn.Conv2d(6, 3, 1)).eval()
    x = torch.randn(32, 2, 4, 4)
    float_file = export_onnx(model, x[:2], tmp_path / "model.onnx").path
    up = [wn.node for wn in weight_nodes(onnx.load(str(float_file))) if wn.op == "ConvTranspose"]
    assert len(up) == 1
    out = quantize_onnx(float_file, tmp_path / "q.onnx", [x.numpy()], sparse=False, int4=up)
    graph = onnx.load(str(out.path)).graph
    scales = {n.input[1]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    int4 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT4 and len(t.dims) == 4]
    assert len(int4) == 1 and list(int4[0].dims) == [10, 6, 2, 2]
    axis = next(a.i for n in scales.values() if n.input[0] == int4[0].name for a in n.attribute if a.name == "axis")
    assert axis == 1
    session = ort.InferenceSession(str(out.path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert (got.argmax(1) == model(x).argmax(1).numpy()).mean() >= 0.8


# ------------------------------------------------------------------------------------------------------- CLI


def _quantized_timed_faster(*args: Any, **kwargs: Any) -> dict:
    """The report's latency measured as usual, with the quantized file's medians set to half the fastest one."""
    from prunedrop.report.latency import measure_latency

    out = measure_latency(*args, **kwargs)
    for row in out["results"]:
        if row["model"] == "quantized":
            row["median_ms"] = 0.5 * min(r["median_ms"] for r in out["results"] if r["batch_size"] == row["batch_size"])
    return out


def test_a_file_the_reports_timing_finds_no_smaller_and_no_faster_is_removed(tmp_path: Path) -> None:
    """The demo wrote model-int8.onnx 1.02x larger than the pruned float32 file, its report timing it 0.75x and
    0.95x as fast as that file: the speed check had read it faster once (0.03 ms a batch; noise)."""
    from prunedrop.quantize.plan import confirm_gain

    model = nn.Sequential(nn.Linear(4, 3)).eval()
    float_file = export_onnx(model, torch.randn(2, 4), tmp_path / "model.onnx").path
    size = compact_size(float_file)

    def section(bytes_: int) -> dict:
        return {"file": "model-int8.onnx", "bytes": bytes_, "layers": [{"node": "n", "precision": "int8"}],
                "files": {"pruned_float32": {"bytes": size}, "quantized": {"bytes": bytes_}}}

    def latency(q1: float, q64: float) -> dict:
        return {"results": [{"model": "compressed", "batch_size": 1, "median_ms": 1.0},
                            {"model": "quantized", "batch_size": 1, "median_ms": q1},
                            {"model": "compressed", "batch_size": 64, "median_ms": 10.0},
                            {"model": "quantized", "batch_size": 64, "median_ms": q64}]}

    quantized = tmp_path / "model-int8.onnx"
    for bytes_, timing, kept in ((size + 10, latency(1.3, 10.2), False), (size + 10, latency(1.3, 9.0), True),
                                 (size - 10, latency(1.3, 10.2), True), (size + 10, latency(0.96, 9.7), False)):
        quantized.write_bytes(b"x")
        said: list[str] = []
        q = confirm_gain(section(bytes_), float_file, quantized, timing, said.append)
        assert quantized.exists() == kept and (q["file"] is not None) == kept
        assert any(r["model"] == "quantized" for r in timing["results"]) == kept
        if not kept:
            assert q["none_reason"].startswith(f"the quantized file ({bytes_:,} bytes) was no smaller")
            assert "batch 64: 10.2 against 10 ms" in q["none_reason"] or "batch 64: 9.7 against 10 ms" in q["none_reason"]
            assert q["layers"][0]["precision"] == "float32" and "quantized" not in q["files"]
            assert said and said[0].endswith("model-int8.onnx removed")
    # nothing timed (latency_runs 0) or nothing written: as it was
    assert confirm_gain(section(size + 10), float_file, quantized, None)["file"] == "model-int8.onnx"


@pytest.fixture(scope="module")
def quantized_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One compress run with --quantize int8 on the tiny project (with a test split)."""
    folder = tmp_path_factory.mktemp("quantized")
    write_tiny_project(folder)
    x, y = tiny_classification_data(n=60, shape=(1, 4, 4), seed=7)
    with np.load(folder / "data.npz") as d:
        arrays = dict(d)
    np.savez(folder / "data.npz", **arrays, x_test=x.numpy(), y_test=y.numpy())
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        mp.chdir(folder)
        # every quantized file faster than the float32 one: the speed check keeps every layer (it is tested with
        # its own timers below), and the file is written although it is larger than the tiny float32 one
        mp.setattr("prunedrop.quantize.plan.time_models", lambda paths, *a, **k: _int8_faster(paths))
        # and the report's timing agrees (a file it timed no faster, and no smaller, would be removed)
        mp.setattr("prunedrop.stages.exporting.measure_latency", _quantized_timed_faster)
        result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data",
                                          "npz:data.npz", "--recipe", "recipe.yaml", "-o", "run", "-q",
                                          "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    return folder


def test_compress_quantize_writes_int8_file_with_measured_accuracy(quantized_run: Path) -> None:
    run = quantized_run / "run"
    assert (run / "model.onnx").is_file() and (run / "model-int8.onnx").is_file()
    report = json.loads((run / "report.json").read_text())
    q = report["quantization"]
    assert q["mode"] == "int8" and q["file"] == "model-int8.onnx"
    assert q["bytes"] == (run / "model-int8.onnx").stat().st_size
    assert q["files"]["pruned_float32"]["bytes"] == (run / "model.onnx").stat().st_size
    assert q["files"]["dense_float32"]["bytes"] == (run / "original.onnx").stat().st_size
    assert all(row["precision"] == "int8" for row in q["layers"]) and len(q["layers"]) == 3
    # the posterior's bits were matched on the converted layers' outputs over training samples
    assert {row.get("spread_on") for row in q["layers"] if "bits_needed" in row} == {"outputs"}
    # the accuracy in the report is onnxruntime's on the validation and test data: recompute it
    with np.load(quantized_run / "data.npz") as d:
        val = TensorDataset(torch.from_numpy(d["x_val"]), torch.from_numpy(d["y_val"]))
        test = TensorDataset(torch.from_numpy(d["x_test"]), torch.from_numpy(d["y_test"]))
    loader = torch.utils.data.DataLoader
    assert q["metric"]["val"] == evaluate_onnx(run / "model-int8.onnx", loader(val, batch_size=7))
    assert q["metric"]["test"] == evaluate_onnx(run / "model-int8.onnx", loader(test, batch_size=5))
    assert q["files"]["pruned_float32"]["val"] == pytest.approx(report["metric"]["after"])
    models = {r["model"] for r in report["latency"]["results"]}
    assert models == {"original", "compressed", "quantized"}
    md = (run / "report.md").read_text()
    assert "## Quantization" in md and "| pruned + quantized |" in md


def test_export_requantizes_a_finished_run_folder(quantized_run: Path) -> None:
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(quantized_run))
        mp.chdir(quantized_run)
        mp.setattr("prunedrop.quantize.plan.time_models", lambda paths, *a, **k: _int8_faster(paths))
        result = runner.invoke(cli, ["export", "run", "-o", "bayes.onnx", "--quantize", "bayes"])
        assert result.exit_code == 0, result.output
        assert "bayes.onnx" in result.output and "layers integer" in result.output
        assert (quantized_run / "bayes.onnx").is_file()
        refused = runner.invoke(cli, ["export", "run", "-o", "run/model-int8.onnx", "--quantize", "int8",
                                      "--overwrite"])
        # a CPU where every int8 model runs slower than the float32 one: every layer computes in float32, but
        # their weights are stored as int8 (decoded when the model loads), and that file is the smaller one
        mp.setattr("prunedrop.quantize.plan.time_models",
                   lambda paths, *a, **k: {n: 1.0 if n == "float32" else 2.0 for n in paths})
        slow = runner.invoke(cli, ["export", "run", "-o", "slow.onnx", "--quantize", "int8"])
    assert slow.exit_code == 0, slow.output
    assert "0 of 3 layers integer, 3 more with int8-stored weights (float32 arithmetic)" in slow.output
    assert refused.exit_code == 1 and "model-int8.onnx" in refused.output
    import onnx

    ops = {n.op_type for n in onnx.load(str(quantized_run / "bayes.onnx")).graph.node}
    assert "DequantizeLinear" in ops
    slow_proto = onnx.load(str(quantized_run / "slow.onnx"))
    assert {n.op_type for n in slow_proto.graph.node} >= {"Cast", "Mul"}
    assert not {"DequantizeLinear", "QuantizeLinear"} & {n.op_type for n in slow_proto.graph.node}
    assert (quantized_run / "slow.onnx").stat().st_size < (quantized_run / "run" / "model.onnx").stat().st_size


def test_bad_quantize_value_is_one_line_before_any_file(project: Path) -> None:
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz",
                                      "--recipe", "recipe.yaml", "-o", "out", "--quantize", "int3"])
    assert result.exit_code == 2 and "'int3' is not one of" in result.output
    assert not (project / "out").exists()
    (project / "recipe.yaml").write_text((project / "recipe.yaml").read_text() + "quantize: int3\n")
    result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data", "npz:data.npz",
                                      "--recipe", "recipe.yaml", "-o", "out"])
    assert result.exit_code == 1 and not (project / "out").exists()
    assert result.output.strip().splitlines() == [
        "Error: recipe recipe.yaml: recipe key 'quantize' = 'int3' must be one of 'none', 'int8', 'bayes'"]
    with pytest.raises(PrunedropError):
        Recipe(quantize="int3")


def test_weight_nodes_name_the_module_also_where_the_exporter_fused_a_batchnorm(tmp_path: Path) -> None:
    import onnx

    from prunedrop.quantize import weight_nodes

    model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()), nn.Flatten(),
                          nn.Linear(64, 3)).eval()
    path = export_onnx(model, torch.randn(2, 1, 6, 6), tmp_path / "m.onnx").path
    found = {(w.op, w.module) for w in weight_nodes(onnx.load(str(path)))}
    assert found == {("Conv", "0.0"), ("Gemm", "2")}

    class Block(nn.Module):  # a fused convolution two attributes deep: "/block/conv/Conv"
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.bn(self.conv(x))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block, self.head = Block(), nn.Linear(64, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.block(x).flatten(1))

    path = export_onnx(Net().eval(), torch.randn(2, 1, 6, 6), tmp_path / "n.onnx").path
    found = {(w.op, w.module) for w in weight_nodes(onnx.load(str(path)))}
    assert found == {("Conv", "block.conv"), ("Gemm", "head")}  # it was "conv": no posterior under bayes


def test_scope_names_make_the_qualified_module_name() -> None:
    from prunedrop.quantize.graph import _scope_name

    assert _scope_name(["layer1", "layer1.0", "conv1"]) == "layer1.0.conv1"
    assert _scope_name(["layer1", "layer1.0", "downsample", "downsample.0"]) == "layer1.0.downsample.0"
    assert _scope_name(["encoder", "layers.0", "self_attn"]) == "encoder.layers.0.self_attn"
    assert _scope_name(["layer1", "layer1.0", "layer1.0.conv1"]) == "layer1.0.conv1"
    assert _scope_name(["0", "0.0"]) == "0.0" and _scope_name(["stem"]) == "stem" and _scope_name([]) is None


def test_bayes_keeps_layers_float_where_the_posterior_asks_for_more_bits(tmp_path: Path) -> None:
    from prunedrop.quantize import LayerBits

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(64, 6)
    y = model(x).argmax(1).detach()
    float_file = export_onnx(model, x[:2], tmp_path / "model.onnx").path
    data, recipe = _bundle(x, y), Recipe(max_metric_drop=100.0)
    wide = {"0": LayerBits("0", bits=11.0, units=8, median_spread=1e-5),
            "2": LayerBits("2", bits=math.inf, units=3, median_spread=0.0)}
    section = quantize_model(float_file, tmp_path / "q.onnx", mode="bayes", data=data, recipe=recipe,
                             metric_before=100.0, bits=wide, speed_check=False, log=lambda msg: None)
    assert section["file"] is None and not (tmp_path / "q.onnx").exists()
    assert [r["reason"] for r in section["layers"]] == ["the posterior asks for 11 bits",
                                                        "the posterior asks for unbounded bits"]
    half = {**wide, "2": LayerBits("2", bits=6.0, units=3, median_spread=0.1)}
    section = quantize_model(float_file, tmp_path / "q.onnx", mode="bayes", data=data, recipe=recipe,
                             metric_before=100.0, bits=half, timer=_int8_faster, log=lambda msg: None)
    assert [r["precision"] for r in section["layers"]] == ["float32", "int8"]
    assert [r["bits_needed"] for r in section["layers"]] == [11.0, 6.0]
    # a layer with no posterior (not converted) is int8 as under quantize: int8, and its row says why
    section = quantize_model(float_file, tmp_path / "q.onnx", mode="bayes", data=data, recipe=recipe,
                             metric_before=100.0, bits={"0": wide["0"]}, timer=_int8_faster, log=lambda msg: None)
    rows = {r["layer"]: r for r in section["layers"]}
    assert rows["0"]["precision"] == "float32" and rows["2"]["precision"] == "int8"
    assert "no_posterior" in rows["2"] and "no_posterior" not in rows["0"] and "bits_needed" not in rows["2"]


def test_evaluate_onnx_mse_matches_torch(tmp_path: Path) -> None:
    from prunedrop.train import evaluate

    torch.manual_seed(0)
    model = nn.Linear(4, 2).eval()
    x, y = torch.randn(50, 4), torch.randn(50, 2)
    path = export_onnx(model, x[:2], tmp_path / "r.onnx").path
    loader = torch.utils.data.DataLoader(TensorDataset(x, y), batch_size=16)
    assert evaluate_onnx(path, loader, loss="mse") == pytest.approx(evaluate(model, loader, loss="mse")["mse"],
                                                                     rel=1e-5)


def test_evaluate_onnx_accuracy_counts_every_label_of_a_per_position_model(tmp_path: Path) -> None:
    """A model that predicts per position ((N, C, T) outputs against (N, T) labels) reads at most 100%, the same
    number as :func:`prunedrop.train.evaluate` (counted per sample it read up to T × 100%)."""
    from prunedrop.train import evaluate

    class PerPosition(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    torch.manual_seed(0)
    model = PerPosition().eval()
    x = torch.randn(40, 3, 6)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[:10, 0] = (y[:10, 0] + 1) % 4  # 10 of the 240 labels wrong
    path = export_onnx(model, x[:2], tmp_path / "p.onnx").path
    loader = torch.utils.data.DataLoader(TensorDataset(x, y), batch_size=16)
    measured = evaluate_onnx(path, loader)
    assert measured == pytest.approx(100.0 * 230 / 240)
    assert measured == pytest.approx(evaluate(model, loader)["accuracy"])


def test_report_says_whether_the_quantized_file_is_faster(quantized_run: Path) -> None:
    from prunedrop.report import format_table

    report = json.loads((quantized_run / "run" / "report.json").read_text())
    rows = {(r["model"], r["batch_size"]): r["median_ms"] for r in report["latency"]["results"]}
    ratio = rows[("compressed", 64)] / rows[("quantized", 64)]
    line = f"batch 64: the quantized file runs {ratio:.2f}x as fast as the pruned float32 file"
    assert line in format_table(report)
    assert line in (quantized_run / "run" / "report.md").read_text()


# ---------------------------------------------------------------------------------------- speed and storage


def _int8_layers(path: Path) -> set[str]:
    """Modules ("0", "2", ...) whose Gemm weight comes through a DequantizeLinear in the ONNX file at ``path``."""
    import onnx

    proto = onnx.load(str(path))
    dequantized = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name.strip("/").split("/")[0] for n in proto.graph.node
            if n.op_type == "Gemm" and n.input[1] in dequantized}


def _weight_types(path: Path) -> dict[str, int]:
    """Module ("0", "2", ...) → the ONNX type of the initializer its Gemm weight is dequantized from (the tensors
    have short names in a quantized file; the nodes keep the module paths)."""
    import onnx

    proto = onnx.load(str(path))
    types = {t.name: t.data_type for t in proto.graph.initializer}
    source = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name.strip("/").split("/")[0]: types[source[n.input[1]]] for n in proto.graph.node
            if n.op_type == "Gemm" and source.get(n.input[1]) in types}


def _fake_timer(cost: dict[str, float], calls: list[dict[str, set[str]]]):
    """A timer that reads which layers each file quantizes: 10 ms plus ``cost[layer]`` per int8 layer."""
    def timer(paths):
        seen = {name: _int8_layers(path) for name, path in paths.items()}
        calls.append(seen)
        return {name: 10.0 + sum(cost[layer] for layer in layers) for name, layers in seen.items()}
    return timer


def _three_layers(tmp_path: Path, widths: tuple[int, ...] = (6, 8, 8, 3)) -> tuple[Path, DataBundle]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(widths[0], widths[1]), nn.ReLU(), nn.Linear(widths[1], widths[2]), nn.ReLU(),
                          nn.Linear(widths[2], widths[3])).eval()
    x = torch.randn(64, widths[0])
    y = model(x).argmax(1).detach()
    return export_onnx(model, x[:2], tmp_path / "model.onnx").path, _bundle(x, y)


def test_layer_whose_int8_form_runs_slower_stays_float32(tmp_path: Path) -> None:
    float_file, data = _three_layers(tmp_path)
    calls: list[dict[str, set[str]]] = []
    logs: list[str] = []
    # layer 2 int8 costs 5 ms; the others save 0.5 ms each
    section = quantize_model(float_file, tmp_path / "q.onnx", mode="int8", data=data,
                             recipe=Recipe(max_metric_drop=None), metric_before=None,
                             timer=_fake_timer({"0": -0.5, "2": 5.0, "4": -0.5}, calls), log=logs.append)
    rows = {r["layer"]: r for r in section["layers"]}
    assert [rows[k]["precision"] for k in ("0", "2", "4")] == ["int8", "float32", "int8"]
    assert rows["2"]["float_because"] == "speed" and rows["2"]["reason"].startswith("speed: ")
    assert "14 ms with it quantized, 9 ms with it float32" in rows["2"]["reason"]
    assert "float_because" not in rows["0"]
    assert section["speed"]["reverted"] == ["2/Gemm"]
    first, second = section["speed"]["rounds"]
    assert first["quantized_ms"] == 14.0 and first["float32_ms"] == 10.0
    assert first["changed"] == {"node": "2/Gemm", "to": "float32"}
    assert first["candidates_ms"] == {"0/Gemm → float32": 14.5, "2/Gemm → float32": 9.0, "4/Gemm → float32": 14.5}
    assert second["quantized_ms"] == 9.0 and "changed" not in second  # nothing left that helps: stop...
    assert second["confirmation_ms"] == {"float32": 10.0, "quantized": 9.0}  # ...once a second timing confirms it
    # each round timed the float file, the planned model and one model per quantized layer, as they say
    assert calls[0] == {"float32": set(), "quantized": {"0", "2", "4"}, "/0/Gemm → float32": {"2", "4"},
                        "/2/Gemm → float32": {"0", "4"}, "/4/Gemm → float32": {"0", "2"}}
    assert _int8_layers(tmp_path / "q.onnx") == {"0", "4"}  # the file written is the one reported
    assert any("2/Gemm to float32 for speed" in line for line in logs)
    assert "ran slower here: 2/Gemm" in logs[-1]
    from prunedrop.report.render import _quantization_parts

    text = "\n".join(_quantization_parts(section, "accuracy"))
    assert "Kept float32 because their integer form ran slower than float32 on this CPU: `2/Gemm`" in text
    assert "| 0 | 0/Gemm | Gemm | int8 | int8 dense |" in text
    # its weights are stored as int8 all the same, decoded to float32 when the model loads
    assert "| 2 | 2/Gemm | Gemm | float32 | int8 dense, decoded to float32 when the model loads | speed: " in text
    assert section["int8_stored_weights"] == ["2/Gemm"] and "1 more with int8-stored weights" in text
    assert "weights stored int8 and decoded to float32 when the model loads: 2/Gemm" in logs[-1]


def test_a_stop_on_a_burst_of_load_is_not_taken_without_a_second_timing(tmp_path: Path) -> None:
    float_file, data = _three_layers(tmp_path)
    # 0.3 ms per int8 layer: no single reversal helps beyond the margin, but 10.9 or 10.6 ms is slower than the
    # float32 file's 10: two layers go back (10.3 ms, within 5%), as the test below shows without load
    steady = _fake_timer({"0": 0.3, "2": 0.3, "4": 0.3}, [])
    calls = {"n": 0}

    def timer(paths):
        times = steady(paths)
        calls["n"] += 1
        if calls["n"] == 2:  # the second round: a burst of load hits the float32 file's runs
            times["float32"] = 25.0
        return times

    section = quantize_model(float_file, tmp_path / "q.onnx", mode="int8", data=data,
                             recipe=Recipe(max_metric_drop=None), metric_before=None, timer=timer,
                             log=lambda m: None)
    rounds = section["speed"]["rounds"]
    assert rounds[1]["float32_ms"] == 25.0 and "changed" in rounds[1]  # the second timing overruled the stop
    assert rounds[1]["confirmation_ms"] == {"float32": 10.0, "quantized": pytest.approx(10.6)}
    assert len(section["speed"]["reverted"]) == 2  # as without the burst
    assert rounds[-1]["confirmation_ms"]["quantized"] == pytest.approx(10.3)
    reverted = next(r for r in section["layers"] if r.get("node") == rounds[1]["changed"]["node"])
    assert "(10.6 against 10 ms)" in reverted["reason"]  # the confirmed timing, not the burst


def test_quantized_model_slower_than_float_overall_loses_layers_until_it_is_not(tmp_path: Path) -> None:
    float_file, data = _three_layers(tmp_path, (3, 3, 3, 3))
    # every int8 layer costs 1 ms: no single one stands out, yet the quantized model is slower than float32;
    # each round reverts one until the planned model is no slower than the float32 file, which is all three
    calls: list[dict[str, set[str]]] = []
    section = quantize_model(float_file, tmp_path / "q.onnx", mode="int8", data=data,
                             recipe=Recipe(max_metric_drop=None), metric_before=None,
                             timer=_fake_timer({"0": 1.0, "2": 1.0, "4": 1.0}, calls), log=lambda m: None)
    assert len(section["speed"]["rounds"]) == 3 and len(section["speed"]["reverted"]) == 3
    assert section["file"] is None and not (tmp_path / "q.onnx").exists()
    assert section["none_reason"].startswith(
        "every layer stayed float32 (the int8 form ran slower than float32 on this CPU), and with int8-stored weights "
        "the file was no smaller (")  # a 3-3-3-3 model: the decoding nodes outweigh the 81 bytes saved
    assert section["unwritten"]["int8_stored_weights"] == ["0/Gemm", "2/Gemm", "4/Gemm"]
    assert calls[-1]["quantized"] != set() and all(not v for k, v in calls[-1].items() if k != "quantized")
    assert section["layers"][0]["reason"].startswith("speed: its integer form ran slower on this CPU (13 ms")
    # 0.3 ms each: no single reversal is faster beyond the 5% margin, yet the model is slower than float32 (10.9
    # against 10 ms): layers go back until it is within the margin (10.3 ms), and the reason says why
    section = quantize_model(float_file, tmp_path / "q.onnx", mode="int8", data=data,
                             recipe=Recipe(max_metric_drop=None), metric_before=None,
                             timer=_fake_timer({"0": 0.3, "2": 0.3, "4": 0.3}, []), log=lambda m: None)
    assert len(section["speed"]["reverted"]) == 2
    assert section["speed"]["rounds"][-1]["quantized_ms"] == pytest.approx(10.3)
    # what is left is no faster than the float32 file, and on this tiny model larger: not written
    assert section["file"] is None and "no faster (10.3 against 10 ms)" in section["none_reason"]
    slow = [r for r in section["layers"] if r.get("float_because") == "speed"]
    assert all(r["reason"].startswith("speed: the quantized model ran slower than the float32 file") for r in slow)
    # a cost within the noise margin (5%) reverts nothing
    section = quantize_model(float_file, tmp_path / "q.onnx", mode="int8", data=data,
                             recipe=Recipe(max_metric_drop=None), metric_before=None,
                             timer=_fake_timer({"0": 0.1, "2": 0.1, "4": 0.1}, []), log=lambda m: None)
    assert section["speed"]["reverted"] == [] and len(section["speed"]["rounds"]) == 1


def _wide(tmp_path: Path) -> tuple[Path, DataBundle]:
    """A model whose int8 file is smaller than its float32 one (4,096 + 192 weights: the quantization nodes,
    scales and zero points weigh less than the 3 bytes saved per weight)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)).eval()
    x = torch.randn(64, 64)
    y = model(x).argmax(1).detach()
    return export_onnx(model, x[:2], tmp_path / "wide.onnx").path, _bundle(x, y)


def test_a_quantized_file_neither_smaller_nor_faster_is_not_written(tmp_path: Path) -> None:
    float_file, data = _three_layers(tmp_path)  # 6-8-8-3: its int8 file is larger than the float32 one
    logs: list[str] = []
    same_speed = quantize_model(float_file, tmp_path / "q.onnx", mode="int8", data=data,
                                recipe=Recipe(max_metric_drop=None), metric_before=None,
                                timer=lambda paths: dict.fromkeys(paths, 1.0), log=logs.append)
    assert same_speed["file"] is None and not (tmp_path / "q.onnx").exists()
    size = float_file.stat().st_size
    unwritten = same_speed["unwritten"]["bytes"]
    assert unwritten > size and same_speed["unwritten"]["quantized"] == ["0/Gemm", "2/Gemm", "4/Gemm"]
    assert same_speed["none_reason"] == (f"the quantized file ({unwritten:,} bytes) was no smaller than the float32 "
                                         f"file ({compact_size(float_file):,} with its tensor names as short) and no "
                                         "faster (1 against 1 ms)")
    assert all(r["precision"] == "float32" and r["float_because"] == "gain" for r in same_speed["layers"])
    assert logs[-1].startswith("quantization: the quantized file") and logs[-1].endswith("no quantized file written")
    # not timed at all: its speed is unknown, so only a smaller file would be worth writing
    untimed = quantize_model(float_file, tmp_path / "q.onnx", mode="int8", data=data,
                             recipe=Recipe(max_metric_drop=None), metric_before=None, speed_check=False,
                             log=lambda m: None)
    assert untimed["file"] is None and untimed["none_reason"].endswith("and its speed was not measured (latency_runs 0)")
    # larger, but faster beyond the margin: written
    faster = quantize_model(float_file, tmp_path / "q.onnx", mode="int8", data=data,
                            recipe=Recipe(max_metric_drop=None), metric_before=None, timer=_int8_faster,
                            log=lambda m: None)
    assert faster["file"] == "q.onnx" and faster["bytes"] == (tmp_path / "q.onnx").stat().st_size > size
    # smaller, and no faster: written (the size is the gain)
    wide_file, wide_data = _wide(tmp_path)
    smaller = quantize_model(wide_file, tmp_path / "w.onnx", mode="int8", data=wide_data,
                             recipe=Recipe(max_metric_drop=None), metric_before=None, speed_check=False,
                             log=lambda m: None)
    assert smaller["file"] == "w.onnx" and smaller["bytes"] < wide_file.stat().st_size


def test_time_models_times_each_file_on_this_cpu(tmp_path: Path) -> None:
    from prunedrop.quantize import time_models

    float_file, _ = _three_layers(tmp_path)
    times = time_models({"a": float_file, "b": float_file}, torch.randn(4, 6), batch_size=8, threads=1, runs=3,
                        warmup=1)
    assert set(times) == {"a", "b"} and all(0 < v < 1000 for v in times.values())


def test_int4_storage_where_the_posterior_allows_4_bits_and_it_is_smaller(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from prunedrop.quantize import LayerBits

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)).eval()
    with torch.no_grad():
        model[2].weight.mul_((torch.rand(64, 64) < 0.03).float())  # 97% zeros: sparse int8 beats dense int4
    x = torch.randn(128, 64)
    y = model(x).argmax(1).detach()
    float_file = export_onnx(model, x[:2], tmp_path / "model.onnx").path
    bits = {"0": LayerBits("0", 4.0, 64, 0.1), "2": LayerBits("2", 3.0, 64, 0.1), "4": LayerBits("4", 6.0, 3, 0.1)}
    section = quantize_model(float_file, tmp_path / "q.onnx", mode="bayes", data=_bundle(x, y),
                             recipe=Recipe(max_metric_drop=None, latency_runs=0), metric_before=None, bits=bits,
                             log=lambda m: None)
    assert section["speed"] == {"checked": False, "why": "latency_runs is 0: nothing is timed"}
    rows = {r["layer"]: r for r in section["layers"]}
    assert [rows[k]["precision"] for k in ("0", "2", "4")] == ["int4", "int8", "int8"]
    assert rows["0"]["storage"]["form"] == "int4 dense"
    opts = rows["0"]["storage"]["options"]
    assert opts["int4_dense_bytes"] == rows["0"]["storage"]["bytes"] < opts["int8_dense_bytes"]
    assert rows["2"]["storage"]["form"] == "int8 sparse"  # 4 bits allowed, but the sparse int8 form is smaller
    assert rows["2"]["storage"]["bytes"] == rows["2"]["storage"]["options"]["int8_sparse_bytes"] \
        < rows["2"]["storage"]["options"]["int4_dense_bytes"]
    assert rows["4"]["storage"]["form"] == "int8 dense" and "int4_dense_bytes" not in rows["4"]["storage"]["options"]
    proto = onnx.load(str(tmp_path / "q.onnx"))
    assert _weight_types(tmp_path / "q.onnx")["0"] == onnx.TensorProto.INT4
    assert not any("weight" in t.name for t in proto.graph.initializer), "tensors are renamed short"
    assert {n.name for n in proto.graph.node if n.op_type == "Gemm"} == {"/0/Gemm", "/2/Gemm", "/4/Gemm"}
    # onnxruntime runs it, and the measured accuracy in the section is that file's
    ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert section["metric"]["val"] == evaluate_onnx(tmp_path / "q.onnx", _bundle(x, y).loader("val", 64))


class _Attention(nn.Module):
    """Self-attention over 8 steps of 8 features (nn.MultiheadAttention), as a digits row model has it."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.att = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.reshape(x.size(0), 8, 8))
        return self.fc(self.att(h, h, h)[0].mean(1))


def test_int4_that_onnxruntime_cannot_load_stays_int8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """int4 weights move the file to opset 21, where onnxruntime's graph optimizer builds a QuantizeLinear for an
    attention block's Reshape/Transpose that it then refuses ("output_dtype INT8 does not match y_zero_point type
    UINT8"): the whole quantization failed and no int8 file was written; now those weights stay int8.

    The refusal comes with int8 (s8s8) activations, which prunedrop chooses on CPUs without VNNI; on a VNNI CPU
    (uint8 activations) the same file loads, so the test asks for the CPU without VNNI wherever it runs."""
    from prunedrop.quantize import LayerBits, quantizer

    monkeypatch.setattr(quantizer, "cpu_instruction_sets", lambda cpuinfo=None: ["avx2"])

    torch.manual_seed(0)
    model = _Attention().eval()
    x = torch.randn(128, 64)
    y = model(x).argmax(1).detach()
    float_file = export_onnx(model, x[:2], tmp_path / "model.onnx").path
    bits = {name: LayerBits(name, 3.0, 64, 0.1) for name in ("inp", "att", "fc")}
    logs: list[str] = []
    section = quantize_model(float_file, tmp_path / "q.onnx", mode="bayes", data=_bundle(x, y),
                             recipe=Recipe(max_metric_drop=None, latency_runs=0), metric_before=None, bits=bits,
                             log=logs.append)
    assert any("stay int8: onnxruntime cannot load the model with them" in line for line in logs), logs
    precisions = [r["precision"] for r in section["layers"]]
    assert "int4" not in precisions and "int8" in precisions, section["layers"]
    assert section["file"] == "q.onnx"
    assert section["metric"]["val"] == evaluate_onnx(tmp_path / "q.onnx", _bundle(x, y).loader("val", 64))


def test_pruned_model_outside_the_budget_already_is_the_reference(tmp_path: Path) -> None:
    # the float file scores below the budget (metric_before 100, budget 1 point): reverting every layer cannot
    # bring it within, so the quantized file must merely be no worse than the float file
    float_file, data = _three_layers(tmp_path)
    float_metric = evaluate_onnx(float_file, data.loader("val", 64))
    assert float_metric == 100.0  # labels are the model's own predictions
    logs: list[str] = []
    section = quantize_model(float_file, tmp_path / "q.onnx", mode="int8", data=data,
                             recipe=Recipe(max_metric_drop=1.0), metric_before=float_metric + 5.0,
                             timer=_int8_faster, log=logs.append)
    assert section["budget_reference"] == "the pruned float32 model (outside the budget already)"
    assert any("outside the budget already" in line for line in logs)
    # the int8 model keeps the float one's 100%: within the new reference, so nothing is reverted (measured
    # against the original, every layer would have gone back and no file been written)
    assert section["file"] == "q.onnx" and section["reverted"] == [] and section["within_budget"]
    assert section["metric"]["val"] == float_metric
    section = quantize_model(float_file, tmp_path / "q2.onnx", mode="int8", data=data,
                             recipe=Recipe(max_metric_drop=10.0), metric_before=float_metric,
                             speed_check=False, log=lambda m: None)
    assert section["budget_reference"] == "the original model"


def test_int4_layer_that_runs_slower_than_its_int8_form_goes_int8(tmp_path: Path) -> None:
    import onnx

    from prunedrop.quantize import LayerBits

    float_file, data = _three_layers(tmp_path)
    bits = {k: LayerBits(k, 3.0, 8, 0.1) for k in ("0", "2")}  # 0 and 2 may be int4 (4 is excluded: no bits)

    def int4_layers(path: Path) -> set[str]:
        return {m for m, t in _weight_types(path).items() if t == onnx.TensorProto.INT4}

    seen: list[dict[str, set[str]]] = []

    def timer(paths):  # int8 layers save 1 ms each; an int4 layer 0 costs 3 ms, an int4 layer 2 saves 1 ms
        seen.append({k: int4_layers(v) for k, v in paths.items()})
        return {k: 10.0 - len(_int8_layers(v)) + 4.0 * ("0" in int4_layers(v)) for k, v in paths.items()}

    section = quantize_model(float_file, tmp_path / "q.onnx", mode="bayes", data=data,
                             recipe=Recipe(max_metric_drop=None), metric_before=None, bits=bits, timer=timer,
                             log=lambda m: None)
    assert seen[0]["quantized"] == {"0", "2"}  # the storage choice picked int4 for both (smaller)
    rows = {r["layer"]: r for r in section["layers"]}
    assert rows["0"]["precision"] == "int8" and rows["2"]["precision"] == "int4"
    assert rows["0"]["storage"]["why"].startswith("int4 was smaller")
    assert section["speed"]["int4_to_int8"] == ["0/Gemm"] and section["speed"]["reverted"] == []
    assert section["speed"]["rounds"][0]["changed"] == {"node": "0/Gemm", "to": "int8"}
    assert int4_layers(tmp_path / "q.onnx") == {"2"}


def test_token_id_model_is_calibrated_with_its_integer_inputs(tmp_path: Path) -> None:
    from prunedrop.testing import tiny_token_model

    model, x = tiny_token_model()
    x = x.repeat(8, 1)
    y = model(x).argmax(1).detach()
    float_file = export_onnx(model, x[:2], tmp_path / "m.onnx").path
    data = DataBundle(name="tokens", train=TensorDataset(x[:16], y[:16]), val=TensorDataset(x[16:], y[16:]),
                      test=None, input_shape=(7,), num_classes=3)
    calls: list[dict[str, set[str]]] = []
    section = quantize_model(float_file, tmp_path / "q.onnx", mode="int8", data=data,
                             recipe=Recipe(max_metric_drop=None), metric_before=None,
                             timer=_fake_timer({"head": -1.0}, calls), log=lambda m: None)
    assert section["file"] == "q.onnx"
    # onnxruntime quantizes a Gather's table as it does activations (uint8 on a CPU with VNNI, else int8)
    from prunedrop.quantize import activation_type

    assert {r["layer"]: r["precision"] for r in section["layers"]} == {"embedding": activation_type(), "head": "int8"}
    assert section["metric"]["val"] == evaluate_onnx(tmp_path / "q.onnx", data.loader("val", 8))


def test_int4_layers_that_together_leave_the_budget_are_added_one_at_a_time(tmp_path: Path) -> None:
    from prunedrop.quantize import LayerBits
    from prunedrop.testing import fit, tiny_classification_data

    # layer 2 reads a dead hidden unit with weight 10: int8's step (10/127) keeps its other weights, int4's (10/7)
    # rounds them away; layer 0 is harmless in int4
    x, y = tiny_classification_data(n=400, shape=(16,), seed=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    fit(model, x[:200], y[:200], 150)
    with torch.no_grad():
        model[0].weight[0] = 0.0
        model[0].bias[0] = -1.0
        model[2].weight[:, 0] = 10.0
    model.eval()
    float_file = export_onnx(model, x[:2], tmp_path / "m.onnx").path
    data = _bundle(x, y)
    before = evaluate_onnx(float_file, data.loader("val", 64))
    bits = {"0": LayerBits("0", 4.0, 32, 0.1), "2": LayerBits("2", 4.0, 3, 0.1)}
    section = quantize_model(float_file, tmp_path / "q.onnx", mode="bayes", data=data,
                             recipe=Recipe(max_metric_drop=3.0), metric_before=before, bits=bits, timer=_int8_faster,
                             log=lambda m: None)
    assert [(r["node"], r["precision"]) for r in section["layers"]] == [("0/Gemm", "int4"), ("2/Gemm", "int8")]
    assert section["storage_note"].endswith("one at a time, 0/Gemm stayed int4 and 2/Gemm went back to int8")
    assert section["within_budget"] and before - section["metric"]["val"] <= 3.0


# ------------------------------------------------------------------------------------------ what is quantized


class _ConvChain(nn.Module):
    """conv → ReLU → max-pool → conv → flatten → Linear, and an activation product (x xᵀ) before the head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3)
        self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.max_pool2d(torch.relu(self.conv1(x)), 2)).mean((2, 3))
        h = self.fc(x)
        return self.head(h @ h.t() @ h)  # a product of two activations: no weight, never a carrier


def _ops(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def test_only_the_layers_and_the_operators_between_them_are_quantized(tmp_path: Path) -> None:
    from prunedrop.quantize.graph import carriers, load_dense, weight_nodes

    torch.manual_seed(0)
    model = _ConvChain().eval()
    x = torch.randn(32, 1, 10, 10)
    float_file = export_onnx(model, x[:2], tmp_path / "chain.onnx").path
    proto = load_dense(float_file)
    names = {wn.module: wn.node for wn in weight_nodes(proto)}
    by_name = {n.name: n.op_type for n in proto.graph.node}
    every = carriers(proto, list(names.values()))
    # the ReLU and the max-pool between the two convolutions carry int8; nothing around the activation product does
    assert sorted(by_name[n] for n in every) == ["MaxPool", "Relu"]
    assert carriers(proto, [names["conv2"], names["fc"], names["head"]]) == []  # conv1 float: no chain into conv2
    assert carriers(proto, []) == []
    # every layer excluded: not one quantize/dequantize node is left, the file is the float32 model
    none = quantize_onnx(float_file, tmp_path / "none.onnx", [x.numpy()], exclude=list(names.values()))
    assert none.quantized == [] and "QuantizeLinear" not in _ops(none.path) and "DequantizeLinear" not in _ops(none.path)
    import onnxruntime as ort

    def run(path: Path) -> np.ndarray:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]

    assert np.allclose(run(none.path), run(float_file), atol=1e-6)
    # every layer quantized: the activation product (Transpose, the inner MatMul) stays float32 and unquantized
    every_q = quantize_onnx(float_file, tmp_path / "all.onnx", [x.numpy()])
    assert sorted(every_q.quantized) == sorted(names.values())
    assert _quantized_tensor_makers(every_q.path) >= {"Conv", "MaxPool", "Gemm"}  # the int8 chain is there
    assert "Transpose" not in _quantized_tensor_makers(every_q.path)
    assert _ops(every_q.path)["MatMul"] == 2 and run(every_q.path).shape == (32, 3)


class _MaskedScores(nn.Module):
    """Linear → + a mask buffer holding −inf (as attention scores get one) → ReLU → Linear: the add's output has an
    infinite range, which no int8 scale holds."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.head = nn.Linear(4, 4), nn.Linear(4, 3)
        self.register_buffer("mask", torch.tensor([0.0, 0.0, 0.0, float("-inf")]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(x) + self.mask))


def test_an_operator_reading_an_infinite_constant_is_never_a_carrier(tmp_path: Path) -> None:
    import warnings

    from prunedrop.quantize.graph import carriers, load_dense, weight_nodes

    torch.manual_seed(0)
    model = _MaskedScores().eval()
    x = torch.randn(32, 4)
    float_file = export_onnx(model, x[:2], tmp_path / "masked.onnx").path
    proto = load_dense(float_file)
    names = [wn.node for wn in weight_nodes(proto)]
    by_name = {n.name: n.op_type for n in proto.graph.node}
    assert "Add" not in [by_name[n] for n in carriers(proto, names)]
    with warnings.catch_warnings():
        # onnxruntime computes a scale for every calibrated tensor, quantized or not: "invalid value encountered in
        # divide" for the add's, which reached the terminal
        warnings.simplefilter("error")
        quantized = quantize_onnx(float_file, tmp_path / "q.onnx", [x.numpy()])
    assert sorted(quantized.quantized) == sorted(names)
    import onnxruntime as ort

    def run(path: Path) -> np.ndarray:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]

    assert np.abs(run(quantized.path) - run(float_file)).max() < 0.05


def _quantized_tensor_makers(path: Path) -> set[str]:
    """The op types of the nodes whose outputs a QuantizeLinear quantizes in the ONNX file at ``path``, except the
    outer (the head's input: the inner MatMul's output is quantized there as the quantized head reads it)."""
    import onnx

    graph = onnx.load(str(path)).graph
    made_by = {out: node for node in graph.node for out in node.output}
    quantized = [made_by[n.input[0]] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in made_by]
    return {node.op_type for node in quantized if node.name != "/MatMul_1"}


def test_activations_are_unsigned_where_the_cpu_has_vnni(tmp_path: Path) -> None:
    from prunedrop.quantize import activation_type

    assert activation_type(["avx512_vnni", "avx512f"]) == activation_type(["avx_vnni", "avx2"]) == "uint8"
    assert activation_type(["avx512f", "avx2"]) == activation_type([]) == "int8"
    import onnx

    float_file, _ = _three_layers(tmp_path)
    x = np.random.default_rng(0).standard_normal((16, 6)).astype(np.float32)
    for kind, elem in (("uint8", onnx.TensorProto.UINT8), ("int8", onnx.TensorProto.INT8)):
        q = quantize_onnx(float_file, tmp_path / f"{kind}.onnx", [x], activations=kind)
        graph = onnx.load(str(q.path)).graph
        points = {t.name: t.data_type for t in graph.initializer}
        # the input's quantize node stores the activations as the type asked for
        first = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
        assert points[first.input[2]] == elem


@pytest.mark.parametrize("kind", ["prunedrop", "other"])
def test_a_model_the_quantizer_cannot_take_loses_the_int8_file_not_the_run(tmp_path: Path, kind: str) -> None:
    from prunedrop.errors import PrunedropError

    write_tiny_project(tmp_path)
    error = PrunedropError if kind == "prunedrop" else ValueError  # onnx's checker raises its own types

    def cannot(*args, **kwargs):
        raise error("onnxruntime cannot quantize model.onnx: an operator it does not know")

    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(tmp_path))
        mp.chdir(tmp_path)
        mp.setattr("prunedrop.quantize.plan.quantize_onnx", cannot)
        result = CliRunner().invoke(cli, ["compress", "model.pt", "--arch", "tinyarch:build", "--data",
                                          "npz:data.npz", "--recipe", "recipe.yaml", "-o", "run", "--quantize", "int8"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert (run / "model.onnx").is_file() and not (run / "model-int8.onnx").exists()
    q = json.loads((run / "report.json").read_text())["quantization"]
    assert q["file"] is None and q["none_reason"].startswith("quantization failed: ")
    assert q["none_reason"].endswith("onnxruntime cannot quantize model.onnx: an operator it does not know")
    assert "quantization failed" in result.output and "## Quantization" in (run / "report.md").read_text()


def test_the_speed_check_stops_when_its_time_is_spent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    float_file, data = _three_layers(tmp_path)
    clock = {"now": 0.0}
    monkeypatch.setattr("prunedrop.quantize.plan.time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))
    slow = _fake_timer({"0": 5.0, "2": 3.0, "4": 0.0}, [])

    def timer(paths):  # each timing takes 100 s of the fake clock
        clock["now"] += 100.0
        return slow(paths)

    section = quantize_model(float_file, tmp_path / "q.onnx", mode="int8", data=data,
                             recipe=Recipe(max_metric_drop=None), metric_before=None, timer=timer,
                             speed_seconds=150.0, log=lambda m: None)
    speed = section["speed"]
    # two rounds fit (each reverted the slowest layer); the third would start after 200 s and is not run
    assert len(speed["rounds"]) == 2 and speed["reverted"] == ["0/Gemm", "2/Gemm"]
    assert speed["stopped"].startswith("the speed check's time ran out after 2 round(s)")
    # what is left (layer 4 int8) was timed by the second round's change: as fast as float32, and larger
    assert section["file"] is None and "no faster (10 against 10 ms)" in section["none_reason"]
    # without the limit the third round runs and stops by itself
    clock["now"] = 0.0
    free = quantize_model(float_file, tmp_path / "q.onnx", mode="int8", data=data,
                          recipe=Recipe(max_metric_drop=None), metric_before=None, timer=timer, log=lambda m: None)
    assert len(free["speed"]["rounds"]) == 3 and free["speed"]["stopped"] is None


def test_the_quantization_line_gives_sizes_within_half_a_percent_in_bytes() -> None:
    from prunedrop.report.render import _quantization_line

    def line(quantized: int, pruned: int) -> str:
        return _quantization_line({"mode": "bayes", "file": "model-int8.onnx", "bytes": quantized, "layers": [],
                                   "files": {"pruned_float32": {"bytes": pruned}}, "metric": {"val": 98.6}},
                                  "accuracy")

    assert "(89 bytes larger than the pruned float32 file)" in line(18_674, 18_585)  # the shipped example's
    assert "(2.00x smaller than the pruned float32 file)" in line(500, 1_000)
    assert "(1.74x larger than the pruned float32 file)" in line(15_003, 8_623)


# ----------------------------------------------------------------------------- int8-stored weights, float32 layers


class _ConvLinearMatMul(nn.Module):
    """A Conv (weight axis 0 = output channels), a Linear (Gemm, transB) and a MatMul by a parameter (axis 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(16, 6)
        self.proj = nn.Parameter(torch.randn(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1)) @ self.proj


def test_store_int8_decodes_per_channel_weights_that_onnxruntime_folds(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from prunedrop.quantize.graph import load_dense, store_int8, weight_nodes

    torch.manual_seed(0)
    model = _ConvLinearMatMul().eval()
    with torch.no_grad():
        model.conv.weight[1] *= 50.0  # one channel 50x larger: a scale per tensor would round the others coarsely
    x = torch.randn(8, 2, 4, 4)
    path = export_onnx(model, x[:2], tmp_path / "m.onnx", sparse=False).path
    proto = load_dense(path)
    nodes = weight_nodes(proto)
    assert {wn.op for wn in nodes} == {"Conv", "Gemm", "MatMul"}
    stored = store_int8(proto, nodes)
    assert set(stored) == {wn.node for wn in nodes}
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for wn in nodes:
        q = inits[stored[wn.node]]
        assert q.dtype == np.int8 and np.abs(q).max() == 127  # each channel's largest weight maps to ±127
        assert wn.weight not in inits  # the float weight is gone: the Mul makes it
    # one scale per output channel: along axis 0 for the Conv and the Gemm (transB), axis 1 for the MatMul
    scales = {wn.op: inits[stored[wn.node] + "_scale"] for wn in nodes}
    assert scales["Conv"].shape == (4, 1, 1, 1) and scales["Gemm"].shape == (6, 1) and scales["MatMul"].shape == (1, 3)
    out = tmp_path / "stored.onnx"
    onnx.save(proto, str(out))
    # the reference: the same model with each weight rounded to its channel's grid, computed by torch
    ref = _ConvLinearMatMul().eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for param, op, axis in ((ref.conv.weight, "Conv", 0), (ref.fc.weight, "Gemm", 0), (ref.proj, "MatMul", 1)):
            w = param.double()
            peak = w.abs().amax(dim=[d for d in range(w.dim()) if d != axis], keepdim=True)
            param.copy_((torch.round(w / (peak / 127)) * (peak / 127)).float())
            assert torch.allclose(torch.tensor(scales[op]).double(), peak / 127)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, ref(x).detach().numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, model(x).detach().numpy(), atol=1e-6)  # rounded: not the float model
    # onnxruntime folds the decoding when it loads the model: its optimized graph computes from float weights
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    optimized = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert not {"Cast", "Mul", "DequantizeLinear"} & optimized and "FusedConv" in optimized  # Conv + Relu
    # a weight that a node outside the set also reads stays float (the other reader would get the int8 grid)
    proto = load_dense(path)
    assert store_int8(proto, [wn for wn in weight_nodes(proto) if wn.op == "Conv"]) != {}
    tied = load_dense(path)
    gemm = next(n for n in tied.graph.node if n.op_type == "Gemm")
    tied.graph.node.append(onnx.helper.make_node("Identity", [gemm.input[1]], ["tied_copy"], name="reader"))
    assert store_int8(tied, [wn for wn in weight_nodes(tied) if wn.op == "Gemm"]) == {}


def test_a_float32_layer_keeps_int8_stored_weights_only_within_the_budget(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    from prunedrop.quantize import plan

    float_file, data = _three_layers(tmp_path)
    slow = _fake_timer({"0": 5.0, "2": 5.0, "4": -1.0}, [])  # layers 0 and 2 run slower as int8: float32 for speed
    kept = quantize_model(float_file, tmp_path / "q.onnx", mode="int8", data=data,
                          recipe=Recipe(max_metric_drop=5.0), metric_before=100.0, timer=slow, log=lambda m: None)
    assert set(kept["speed"]["reverted"]) == {"0/Gemm", "2/Gemm"}
    assert kept["storage_note"] is None and kept["int8_stored_weights"] == ["0/Gemm", "2/Gemm"]
    assert [r["precision"] for r in kept["layers"]] == ["float32", "float32", "int8"]
    forms = [r["storage"]["form"] for r in kept["layers"]]
    assert forms[:2] == ["int8 dense, decoded to float32 when the model loads"] * 2 and forms[2] == "int8 dense"
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node]
    assert ops.count("Cast") == 2 and "DequantizeLinear" in ops
    # the same where the int8-stored weights measure outside the budget (a stand-in for a layer whose rounding
    # costs accuracy): they are stored float32 again, and the note says so
    measured = plan.evaluate_onnx

    def evaluate(path, loader, *, loss="cross_entropy"):
        has_stored = "Cast" in {n.op_type for n in onnx.load(str(path)).graph.node}
        return 0.0 if has_stored else measured(path, loader, loss=loss)

    monkeypatch.setattr(plan, "evaluate_onnx", evaluate)
    logs: list[str] = []
    dropped = quantize_model(float_file, tmp_path / "q2.onnx", mode="int8", data=data,
                             recipe=Recipe(max_metric_drop=5.0), metric_before=100.0, timer=slow, log=logs.append)
    assert dropped["storage_note"] == ("int8-stored weights of 0/Gemm, 2/Gemm (float32 layers) left the budget "
                                       "(validation accuracy 0): stored float32")
    assert dropped["int8_stored_weights"] == [] and [r["precision"] for r in dropped["layers"]] == [
        "float32", "float32", "int8"]
    assert "storage" not in dropped["layers"][0]
    assert "Cast" not in {n.op_type for n in onnx.load(str(tmp_path / "q2.onnx")).graph.node}


def test_store_int8_takes_weights_that_were_stored_sparse(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from prunedrop.quantize.graph import load_dense, store_int8, weight_nodes

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        model[0].weight[:, ::2] = 0.0  # half zeros: exported as sparse Constants, made dense again by load_dense
    path = export_onnx(model, torch.randn(2, 8), tmp_path / "sparse.onnx", sparse=True).path
    assert any(n.op_type == "Constant" for n in onnx.load(str(path)).graph.node)
    proto = load_dense(path)
    stored = store_int8(proto, weight_nodes(proto))
    assert len(stored) == 2
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(tmp_path / "stored.onnx"))
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "stored.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=0.05)


def test_compact_names_keeps_inputs_outputs_and_node_names_and_the_outputs(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from prunedrop.quantize.graph import compact_names, compact_size

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(4, 6)
    float_file = export_onnx(model, x[:2], tmp_path / "model.onnx").path
    proto = onnx.load(str(float_file))
    inputs, outputs = [v.name for v in proto.graph.input], [v.name for v in proto.graph.output]
    nodes = [n.name for n in proto.graph.node]
    renamed = compact_names(proto)
    assert renamed and all(new.startswith("t") and len(new) < len(old) for old, new in renamed.items())
    assert [v.name for v in proto.graph.input] == inputs and [v.name for v in proto.graph.output] == outputs
    assert [n.name for n in proto.graph.node] == nodes
    assert proto.ByteSize() == compact_size(float_file) < float_file.stat().st_size
    onnx.checker.check_model(proto, full_check=True)
    run = [ort.InferenceSession(p, providers=["CPUExecutionProvider"]).run(None, {inputs[0]: x.numpy()})[0]
           for p in (str(float_file), proto.SerializeToString())]
    np.testing.assert_array_equal(run[0], run[1])
    # a name the user chose for an input is never given to an inner tensor
    clash = onnx.load(str(float_file))
    clash.graph.input[0].name = "t0"
    for n in clash.graph.node:
        n.input[:] = ["t0" if i == inputs[0] else i for i in n.input]
    assert "t0" not in compact_names(clash).values()
    onnx.checker.check_model(clash, full_check=True)


def test_compact_names_leaves_a_model_with_subgraphs_alone() -> None:
    from onnx import TensorProto, helper

    from prunedrop.quantize.graph import compact_names

    branch = helper.make_graph([helper.make_node("Identity", ["outer_value"], ["branch_out"])], "b", [],
                               [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, [1])])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["outer_value"]),
         helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph)
    assert compact_names(proto) == {} and proto.graph.node[0].output[0] == "outer_value"


class _BrokenTest(torch.utils.data.Dataset):
    """Test data that fails once it is read: the measurement after the quantized file is made."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        raise RuntimeError("the test data broke")


@pytest.mark.parametrize("existing", [False, True])
def test_a_failure_measuring_the_quantized_file_leaves_no_file_at_the_output(tmp_path: Path, existing: bool) -> None:
    """The quantized file was written to out_path and measured there: a measurement that failed (test data that
    breaks, onnxruntime refusing it, Ctrl-C) left an unverified file where a verified one is expected (and the file
    --overwrite replaces was gone). It is measured where it was made and written only then."""
    x, y = tiny_classification_data(n=128, shape=(16,), seed=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    float_file = export_onnx(model, x[:2], tmp_path / "model.onnx").path
    data = _bundle(x, y)
    out = tmp_path / "q.onnx"
    kw = dict(mode="int8", recipe=Recipe(), metric_before=None, timer=_int8_faster, log=lambda m: None)
    assert quantize_model(float_file, out, data=data, **kw)["file"] == "q.onnx"  # with test data that works: written
    out.unlink()
    if existing:
        out.write_bytes(b"the file --overwrite replaces")
    data.test = _BrokenTest()
    with pytest.raises(RuntimeError, match="the test data broke"):
        quantize_model(float_file, out, data=data, **kw)
    assert [p.name for p in tmp_path.iterdir() if p.name != "model.onnx"] == (["q.onnx"] if existing else [])
    if existing:
        assert out.read_bytes() == b"the file --overwrite replaces"


def test_a_failure_measuring_the_quantized_file_names_its_output_not_the_temporary_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The quantized file is measured in the step's temporary folder: an onnxruntime error naming that file named a
    path deleted by the time the line was read; it names the output instead, and says nothing was written there."""
    from prunedrop.errors import PrunedropError
    from prunedrop.quantize import plan

    x, y = tiny_classification_data(n=128, shape=(16,), seed=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    float_file = export_onnx(model, x[:2], tmp_path / "model.onnx").path
    real, data = plan.evaluate_onnx, _bundle(x, y)
    data.test = TensorDataset(x[:32], y[:32])

    def refusing(path, loader, **kw):
        if Path(path).parent != tmp_path and getattr(loader, "dataset", None) is data.test:  # the file measured
            raise PrunedropError(f"onnxruntime cannot run {path}: a kernel is missing")
        return real(path, loader, **kw)

    monkeypatch.setattr(plan, "evaluate_onnx", refusing)
    out = tmp_path / "q.onnx"
    with pytest.raises(PrunedropError) as excinfo:
        quantize_model(float_file, out, data=data, mode="int8", recipe=Recipe(), metric_before=None,
                       timer=_int8_faster, log=lambda m: None)
    assert excinfo.value.message == (f"onnxruntime cannot run the quantized file for {out} (nothing was written "
                                     "there): a kernel is missing")
    assert not out.exists()


def test_a_failure_during_the_planning_names_its_trial_file_not_a_deleted_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The planning measures trial files in its temporary folder: an error naming one named a path deleted by the
    time the line was read; it names the planning's file."""
    from prunedrop.errors import PrunedropError
    from prunedrop.quantize import plan

    x, y = tiny_classification_data(n=128, shape=(16,), seed=3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    float_file = export_onnx(model, x[:2], tmp_path / "model.onnx").path
    real, data = plan.evaluate_onnx, _bundle(x, y)

    def refusing(path, loader, **kw):
        if Path(path).parent.name.startswith("prunedrop-quant-"):  # a file of the planning's
            raise PrunedropError(f"onnxruntime cannot run {path}: a kernel is missing")
        return real(path, loader, **kw)

    monkeypatch.setattr(plan, "evaluate_onnx", refusing)
    with pytest.raises(PrunedropError) as excinfo:
        quantize_model(float_file, tmp_path / "q.onnx", data=data, mode="int8", recipe=Recipe(), metric_before=None,
                       timer=_int8_faster, log=lambda m: None)
    message = excinfo.value.message
    assert message.startswith("onnxruntime cannot run the int8 planning's ") and message.endswith(
        ".onnx (deleted): a kernel is missing"), message
    assert "prunedrop-quant-" not in message and not (tmp_path / "q.onnx").exists()


def _loop_reading_outside(after: bool) -> onnx.ModelProto:
    """A Loop whose body adds ``scaled`` (a Mul in the main graph) to its carried value; with ``after`` the Mul is
    listed after the Loop, as onnxruntime's quantizer left the dynamo exporter's EmbeddingBag."""
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Add", ["v", "scaled"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [2])])
    mul = helper.make_node("Mul", ["x", "two"], ["scaled"], name="mul")
    loop = helper.make_node("Loop", ["trips", "", "x"], ["y"], name="loop", body=body)
    graph = helper.make_graph(
        [loop, mul] if after else [mul, loop], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[helper.make_tensor("two", TensorProto.FLOAT, [2], [2.0, 2.0]),
                     helper.make_tensor("trips", TensorProto.INT64, [], [3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_sort_nodes_counts_what_a_loop_body_reads_from_outside() -> None:
    from prunedrop.quantize.graph import sort_nodes

    broken = _loop_reading_outside(after=True)
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(broken, full_check=True)
    sort_nodes(broken.graph)
    assert [n.name for n in broken.graph.node] == ["mul", "loop"]
    onnx.checker.check_model(broken, full_check=True)
    import onnxruntime as ort

    run = ort.InferenceSession(broken.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(run.run(None, {"x": np.array([1.0, 2.0], np.float32)})[0], [7.0, 14.0])
    ordered = _loop_reading_outside(after=False)
    before = ordered.SerializeToString()
    sort_nodes(ordered.graph)
    assert ordered.SerializeToString() == before  # a graph in order keeps it


class _PaddedBag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(30, 8, mode="mean", padding_idx=0)
        self.fc = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bag(ids))


def test_a_padded_embedding_bag_quantizes(tmp_path: Path) -> None:
    """The TorchScript exporter cannot write an EmbeddingBag with padding_idx; the dynamo exporter writes a Loop
    whose body reads the table from outside, and onnxruntime's quantizer left the file unsorted: no int8 file."""
    from prunedrop.export import verify_onnx
    from prunedrop.layers.embedding import remove_zero_rows

    torch.manual_seed(0)
    model, ids = _PaddedBag().eval(), torch.randint(0, 30, (16, 6))
    with torch.no_grad():
        model.bag.weight[[3, 5, 7]] = 0.0  # pruned rows, removed as a compressed model's are
    model.bag = remove_zero_rows(model.bag)
    exported = export_onnx(model, ids[:2], tmp_path / "bag.onnx", sparse=False)
    assert exported.exporter == "dynamo"
    quantized = quantize_onnx(exported.path, tmp_path / "bag-int8.onnx", [ids.numpy()])
    assert quantized.quantized and verify_onnx(quantized.path, model, ids, atol=0.1) <= 0.1
