"""Variational LSTM / GRU / RNN (prunedrop.layers.recurrent) and the slimming of their hidden units."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from prunedrop.convert import to_variational
from prunedrop.data import load_data
from prunedrop.errors import PrunedropError
from prunedrop.export import export_onnx, verify_onnx
from prunedrop.layers import GRUSVD, LAYER_REGISTRY, LSTMSVD, RNNSVD, GRUGroupVD, LSTMGroupVD
from prunedrop.pipeline import compress
from prunedrop.prune import prune
from prunedrop.recipes import Recipe
from prunedrop.slim import slim
from prunedrop.testing import TinyRecurrentClassifier, tiny_classification_data

LAYERS = [(LSTMSVD, nn.LSTM), (GRUSVD, nn.GRU), (RNNSVD, nn.RNN), (LSTMGroupVD, nn.LSTM), (GRUGroupVD, nn.GRU)]
IDS = [v.__name__ for v, _ in LAYERS]
#: noise so small that the sampled layer is the plain one to float rounding (the clip must allow it)
NEGLIGIBLE = {"init_log_sigma2": -60.0, "init_log_alpha": -60.0, "log_alpha_clip": 60.0}


def _max_diff(a, b) -> float:
    if isinstance(a, torch.Tensor):
        return float((a - b).abs().max())
    return max(_max_diff(x, y) for x, y in zip(a, b))


def test_registered_under_both_methods() -> None:
    assert LAYER_REGISTRY["sparse_vd"][nn.LSTM] is LSTMSVD and LAYER_REGISTRY["sparse_vd"][nn.GRU] is GRUSVD
    assert LAYER_REGISTRY["sparse_vd"][nn.RNN] is RNNSVD
    assert LAYER_REGISTRY["group_vd"][nn.LSTM] is LSTMGroupVD and LAYER_REGISTRY["group_vd"][nn.GRU] is GRUGroupVD


@pytest.mark.parametrize(("vtype", "dense_type"), LAYERS, ids=IDS)
@pytest.mark.parametrize(("batch_first", "bidirectional"), [(True, False), (False, True)])
@pytest.mark.parametrize("noise", ["sequence", "batch"])
def test_negligible_noise_equals_the_plain_layer(vtype, dense_type, batch_first, bidirectional, noise) -> None:
    torch.manual_seed(0)
    dense = dense_type(5, 7, num_layers=2, batch_first=batch_first, bidirectional=bidirectional)
    x = torch.randn(3, 6, 5)
    with torch.no_grad():
        want = dense(x)
    layer = vtype.from_dense(dense, recurrent_noise=noise, **NEGLIGIBLE)
    assert layer.weight_ih_l0 is dense.weight_ih_l0  # takes over the trained Parameters
    with torch.no_grad():
        assert _max_diff(layer.eval()(x), want) == 0.0  # eval runs the plain kernel with the same weights
        assert _max_diff(layer.train()(x), want) < 1e-5  # the unrolled, sampled forward: same gate math
    # an initial state is honoured by the sampled forward too
    h0 = torch.randn(2 * (2 if bidirectional else 1), x.shape[0 if batch_first else 1], 7)
    hx = (h0, torch.randn_like(h0)) if dense_type is nn.LSTM else h0
    with torch.no_grad():
        assert _max_diff(layer.train()(x, hx), dense(x, hx)) < 1e-5


@pytest.mark.parametrize("noise", ["sequence", "batch"])
def test_a_relu_rnn_keeps_its_nonlinearity(noise) -> None:
    torch.manual_seed(0)
    dense = nn.RNN(5, 7, num_layers=2, nonlinearity="relu", batch_first=True, bidirectional=True)
    x = torch.randn(3, 6, 5)
    with torch.no_grad():
        want = dense(x)
    layer = RNNSVD.from_dense(dense, recurrent_noise=noise, **NEGLIGIBLE)
    assert layer.nonlinearity == "relu" and layer.to_dense().nonlinearity == "relu"
    with torch.no_grad():
        assert _max_diff(layer.eval()(x), want) == 0.0
        assert _max_diff(layer.train()(x), want) < 1e-5  # a tanh in place of the ReLU would differ here
    assert bool((want[0] >= 0).all())  # the plain layer's outputs are ReLU's


@pytest.mark.parametrize(("vtype", "dense_type"), LAYERS, ids=IDS)
def test_noise_is_drawn_once_per_sequence(vtype, dense_type) -> None:
    """Identical inputs at every step and in every sequence, a forget/update gate of 0 and no recurrent
    weights: each step's output is a function of that step's noise alone. Constant along time ⇔ the noise is
    fixed for the sequence; different between sequences ⇔ each sequence draws its own."""
    torch.manual_seed(0)
    dense = dense_type(4, 6, batch_first=True)
    hidden = 6
    with torch.no_grad():
        dense.weight_hh_l0.zero_()
        dense.bias_hh_l0.zero_()
        # gate rows 1: LSTM's forget gate (order i, f, g, o), GRU's update gate (r, z, n)
        dense.bias_ih_l0[hidden:2 * hidden] = -100.0
    layer = vtype.from_dense(dense, init_log_sigma2=0.0, init_log_alpha=-1.0).train()
    x = torch.randn(1, 1, 4).expand(5, 8, 4)
    with torch.no_grad():
        out, _ = layer(x)
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6)  # the same at every step
    assert (out[1:, 0] - out[0, 0]).abs().amax(dim=1).min() > 1e-3  # but not the same in two sequences
    noise = layer.sample_noise(5)[(0, 0)]
    assert noise.weight_ih.shape == (5, *dense.weight_ih_l0.shape)  # one matrix per sequence, none per step
    assert (noise.z_hidden is not None) == vtype.group_noise


@pytest.mark.parametrize(("vtype", "dense_type"), LAYERS, ids=IDS)
def test_batch_noise_is_shared_by_the_batch_and_fixed_along_time(vtype, dense_type) -> None:
    """``recurrent_noise: batch``: the setting of the sequence test above, but every sequence of one call
    sees the same draw (so identical sequences give identical outputs), and the next call draws anew."""
    torch.manual_seed(0)
    dense = dense_type(4, 6, batch_first=True)
    with torch.no_grad():
        dense.weight_hh_l0.zero_()
        dense.bias_hh_l0.zero_()
        dense.bias_ih_l0[6:12] = -100.0
    layer = vtype.from_dense(dense, init_log_sigma2=0.0, init_log_alpha=-1.0, recurrent_noise="batch").train()
    x = torch.randn(1, 1, 4).expand(5, 8, 4)
    with torch.no_grad():
        out, _ = layer(x)
        again, _ = layer(x)
    assert torch.allclose(out, out[:, :1].expand_as(out), atol=1e-6)  # fixed along time
    assert torch.allclose(out, out[:1].expand_as(out), atol=1e-6)  # shared by the sequences of the batch
    assert (again - out).abs().max() > 1e-3  # a new draw per mini-batch


def test_recurrent_noise_mode_is_a_recipe_setting() -> None:
    model = nn.Sequential(nn.LSTM(3, 4, batch_first=True))
    assert to_variational(copy.deepcopy(model), Recipe(recurrent_noise="batch"))[0].recurrent_noise == "batch"
    assert to_variational(copy.deepcopy(model), Recipe())[0].recurrent_noise == "sequence"
    with pytest.raises(PrunedropError, match="recurrent_noise"):
        LSTMSVD.from_dense(nn.LSTM(3, 4), recurrent_noise="step")


@pytest.mark.parametrize(("vtype", "dense_type"), LAYERS, ids=IDS)
@pytest.mark.parametrize("noise", ["sequence", "batch"])
def test_kl_finite_and_every_parameter_gets_a_gradient(vtype, dense_type, noise) -> None:
    torch.manual_seed(0)
    layer = vtype.from_dense(dense_type(3, 4, num_layers=2, bidirectional=True, batch_first=True),
                             recurrent_noise=noise)
    with torch.no_grad():
        layer.weight_hh_l1.view(-1)[0] = 0.0
        layer.log_sigma2_weight_ih_l0.view(-1)[0] = 50.0
    out, _ = layer.train()(torch.randn(2, 5, 3))
    kl = layer.kl()
    assert torch.isfinite(kl) and kl > 0
    (out.square().sum() + 1e-3 * kl).backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert {id(p) for p in layer.noise_parameters()} == {
        id(p) for n, p in layer.named_parameters() if n.startswith("log_")}


def _prune_some(layer, seed: int = 0) -> None:
    """Weights with log α beyond the threshold at random; for group noise also hidden units, gates, inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("log_sigma2"):
                p.copy_(torch.where(torch.rand(p.shape, generator=g) < 0.3, 10.0, -10.0))
            elif name.startswith("log_alpha_"):
                share = 0.4 if name.startswith("log_alpha_h") else 0.15
                p.copy_(torch.where(torch.rand(p.shape, generator=g) < share, 6.0, -8.0))


@pytest.mark.parametrize(("vtype", "dense_type"), LAYERS, ids=IDS)
def test_to_dense_is_the_eval_layer_with_pruned_entries_zero(vtype, dense_type) -> None:
    torch.manual_seed(0)
    layer = vtype.from_dense(dense_type(5, 6, num_layers=2, bidirectional=True, batch_first=True))
    _prune_some(layer)
    plain = layer.eval().to_dense()
    assert type(plain) is dense_type
    masks = layer.parameter_keep_masks()
    assert set(masks) <= set(dict(plain.named_parameters()))
    for name, mask in masks.items():
        assert torch.equal(getattr(plain, name) == 0, ~mask | (getattr(layer, name) == 0)), name
    x = torch.randn(3, 4, 5)
    with torch.no_grad():
        assert _max_diff(plain(x), layer(x)) == 0.0
    keep = layer.keep_mask()
    assert keep.numel() == sum(p.numel() for n, p in plain.named_parameters() if n.startswith("weight"))
    units = layer.unit_keep_mask()
    if vtype.group_noise:
        assert units.shape == (4, 6) and not bool(units.all())
        # a pruned hidden unit outputs exactly 0 from the zero initial state
        with torch.no_grad():
            out = plain(x)[0]
        last = torch.cat([units[2], units[3]])
        assert torch.all(out[..., ~last] == 0)
    else:
        assert units is None


def _model(cell: str, layers: int, bidirectional: bool, readout: str) -> TinyRecurrentClassifier:
    torch.manual_seed(0)
    return TinyRecurrentClassifier(cell, in_features=5, hidden=10, num_layers=layers, bidirectional=bidirectional,
                                   readout=readout).eval()


SLIM_CASES = [("lstm", 1, False, "last"), ("lstm", 2, True, "last"), ("lstm", 2, True, "hidden"),
              ("gru", 1, False, "hidden"), ("gru", 2, True, "last")]


@pytest.mark.parametrize(("cell", "layers", "bidirectional", "readout"), SLIM_CASES)
def test_slimming_hidden_units_is_exact_and_exports(cell, layers, bidirectional, readout, tmp_path) -> None:
    model = _model(cell, layers, bidirectional, readout)
    variational = to_variational(model, Recipe(method="group_vd", include=["rnn"]))
    _prune_some(variational.rnn, seed=1)
    pruned = prune(variational.eval())
    x = torch.randn(16, 7, 5)
    result = slim(pruned.model, pruned.unit_masks, x[:4])
    rnn = result.model.rnn
    before, after = result.removed["rnn"]
    assert before == 10 and after == rnn.hidden_size < 10
    assert result.model.head.in_features == after * (2 if bidirectional else 1)
    assert type(rnn) is type(model.rnn)
    with torch.no_grad():  # exact on inputs other than the example, and other sequence lengths
        for inputs in (x, torch.randn(3, 11, 5)):
            assert _max_diff(pruned.model(inputs), result.model(inputs)) <= 1e-5
    exported = export_onnx(result.model, x[:2], tmp_path / "slim.onnx")
    assert verify_onnx(exported.path, result.model, x, atol=1e-5) <= 1e-5


def test_slimming_recurrent_and_linear_units_together() -> None:
    class LSTMThenMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(5, 10, batch_first=True)
            self.fc = nn.Linear(10, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(torch.relu(self.fc(out[:, -1])))

    torch.manual_seed(0)
    variational = to_variational(LSTMThenMLP().eval(), Recipe(method="group_vd", exclude=["head"]))
    with torch.no_grad():
        variational.rnn.log_alpha_h_l0[:4] = 6.0
        variational.fc.log_alpha_param[:3] = 6.0
    pruned = prune(variational.eval())
    x = torch.randn(8, 6, 5)
    result = slim(pruned.model, pruned.unit_masks, x[:4])
    assert result.removed == {"rnn": (10, 6), "fc": (8, 5)} and not result.notes
    assert result.model.fc.in_features == 6 and result.model.head.in_features == 5
    with torch.no_grad():
        assert _max_diff(pruned.model(x), result.model(x)) <= 1e-5


def test_slimming_keeps_units_it_cannot_remove_exactly() -> None:
    class TanhHead(TinyRecurrentClassifier):
        def forward(self, x):  # an activation with f(code) that is no code between the layer and the head
            out, _ = self.rnn(x)
            return self.head(torch.tanh(out[:, -1]))

    torch.manual_seed(0)
    model = TanhHead("lstm", in_features=5, hidden=6).eval()
    variational = to_variational(model, Recipe(method="group_vd", include=["rnn"]))
    _prune_some(variational.rnn)
    pruned = prune(variational.eval())
    x = torch.randn(4, 3, 5)
    result = slim(pruned.model, pruned.unit_masks, x)
    assert result.removed["rnn"] == (6, 6) and result.model.head.in_features == 6
    assert any("rnn: pruned hidden units kept" in n for n in result.notes)


def test_slimming_rejects_masks_whose_units_are_alive() -> None:
    model = _model("lstm", 1, False, "last")
    mask = torch.ones(1, 10, dtype=torch.bool)
    mask[0, 3] = False
    with pytest.raises(PrunedropError, match="non-zero"):
        slim(model, {"rnn": mask}, torch.randn(2, 4, 5))


def test_proj_size_and_packed_sequences_are_refused() -> None:
    with pytest.raises(PrunedropError, match="proj_size"):
        LSTMSVD.from_dense(nn.LSTM(3, 4, proj_size=2))
    layer = LSTMSVD.from_dense(nn.LSTM(3, 4))
    packed = nn.utils.rnn.pack_sequence([torch.randn(3, 3), torch.randn(2, 3)])
    with pytest.raises(PrunedropError, match="PackedSequence"):
        layer(packed)


@pytest.mark.parametrize(("method", "cell"), [("sparse_vd", "lstm"), ("group_vd", "lstm"), ("sparse_vd", "rnn")])
def test_compress_end_to_end_with_onnx_parity(method, cell, tmp_path) -> None:
    x, y = tiny_classification_data(n=160, shape=(1, 6, 5), seed=1)
    np.savez(tmp_path / "data.npz", x_train=x[:128].numpy(), y_train=y[:128].numpy(), x_val=x[128:].numpy(),
             y_val=y[128:].numpy())
    torch.manual_seed(0)
    model = TinyRecurrentClassifier(cell, in_features=5, hidden=12)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(x[:128]), y[:128])
        opt.zero_grad()
        loss.backward()
        opt.step()
    recipe = Recipe(method=method, include=["rnn"], epochs=6, batch_size=32, eval_batch_size=64, lr=3e-3,
                    noise_lr=0.3, lr_schedule="constant", kl_weight=30.0, kl_warmup_epochs=1, finetune_epochs=1,
                    init_log_alpha=-1.0,
                    finetune_lr=1e-3, device="cpu", latency_runs=0, mc_samples=2, plots=False, max_metric_drop=None)
    data = load_data(f"npz:{tmp_path / 'data.npz'}")
    result = compress(copy.deepcopy(model), data, recipe, tmp_path / "out", progress=False, log=lambda _: None)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["parity_max_abs_diff"] <= recipe.parity_atol
    assert (tmp_path / "out" / "model.onnx").is_file()
    lstm = result.model.rnn
    assert type(lstm) is {"lstm": nn.LSTM, "rnn": nn.RNN}[cell]
    weights = [p for n, p in lstm.named_parameters() if n.startswith("weight")]
    assert sum(int(torch.count_nonzero(w)) for w in weights) < sum(w.numel() for w in model.rnn.parameters()
                                                                    if w.dim() == 2)
    if method == "group_vd":
        assert lstm.hidden_size < 12 and result.model.head.in_features == lstm.hidden_size
