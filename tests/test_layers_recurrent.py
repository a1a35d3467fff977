"""Variational LSTM / GRU / RNN (prunedrop.layers.recurrent) and the slimming of their hidden units."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from prunedrop.convert import to_variational
from prunedrop.data import load_data
from prunedrop.errors import PrunedropError
from prunedrop.export import export_onnx, verify_onnx
from prunedrop.layers import (
    GRUSVD,
    LAYER_REGISTRY,
    LSTMSVD,
    RNNSVD,
    GRUCellSVD,
    GRUGroupVD,
    LSTMCellSVD,
    LSTMGroupVD,
    RNNCellSVD,
)
from prunedrop.pipeline import compress
from prunedrop.prune import prune
from prunedrop.recipes import Recipe
from prunedrop.report import profile_model
from prunedrop.slim import slim
from prunedrop.testing import TinyCellClassifier, TinyRecurrentClassifier, fit, tiny_classification_data

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
    model = fit(TinyRecurrentClassifier(cell, in_features=5, hidden=12), x[:128], y[:128], 60)
    recipe = Recipe(method=method, include=["rnn"], epochs=6, batch_size=32, eval_batch_size=64, lr=3e-3,
                    noise_lr=0.3, lr_schedule="constant", kl_weight=30.0, kl_warmup_epochs=1, finetune_epochs=1,
                    init_log_alpha=-1.0,
                    finetune_lr=1e-3, device="cpu", latency_runs=0, mc_samples=2, plots=False, max_metric_drop=None)
    result, report = _compressed(model, recipe, tmp_path)
    lstm = result.model.rnn
    assert type(lstm) is {"lstm": nn.LSTM, "rnn": nn.RNN}[cell]
    weights = [p for n, p in lstm.named_parameters() if n.startswith("weight")]
    assert sum(int(torch.count_nonzero(w)) for w in weights) < sum(w.numel() for w in model.rnn.parameters()
                                                                    if w.dim() == 2)
    if method == "group_vd":
        assert lstm.hidden_size < 12 and result.model.head.in_features == lstm.hidden_size


# -- cells: nn.LSTMCell / nn.GRUCell / nn.RNNCell called once per step in the caller's loop ----------------------

CELLS = [(LSTMCellSVD, nn.LSTMCell, {}), (GRUCellSVD, nn.GRUCell, {}), (RNNCellSVD, nn.RNNCell, {}),
         (RNNCellSVD, nn.RNNCell, {"nonlinearity": "relu"})]
CELL_IDS = ["lstm", "gru", "rnn-tanh", "rnn-relu"]
NEGLIGIBLE_CELL = {"init_log_sigma2": -60.0, "log_alpha_clip": 60.0}


def _loop(cell: nn.Module, x: torch.Tensor, hx=None) -> torch.Tensor:
    """The hidden state at every step ``[T, B, H]`` of ``x`` ``[T, B, F]`` (or ``[T, F]`` unbatched)."""
    outs = []
    for t in range(x.shape[0]):
        hx = cell(x[t], hx)
        outs.append(hx[0] if isinstance(hx, tuple) else hx)
    return torch.stack(outs)


def test_cells_are_registered_under_sparse_vd_only() -> None:
    assert LAYER_REGISTRY["sparse_vd"][nn.LSTMCell] is LSTMCellSVD
    assert LAYER_REGISTRY["sparse_vd"][nn.GRUCell] is GRUCellSVD
    assert LAYER_REGISTRY["sparse_vd"][nn.RNNCell] is RNNCellSVD
    for method in ("sbp", "group_vd"):  # removing a cell's units would change the caller's own state tensors
        assert not {nn.LSTMCell, nn.GRUCell, nn.RNNCell} & set(LAYER_REGISTRY[method])


@pytest.mark.parametrize(("vtype", "dense_type", "kwargs"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("noise", ["sequence", "batch"])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_with_negligible_noise_equals_the_plain_cell(vtype, dense_type, kwargs, noise, bias) -> None:
    torch.manual_seed(0)
    dense = dense_type(5, 7, bias=bias, **kwargs)
    x = torch.randn(6, 3, 5)
    h0 = torch.randn(3, 7)
    hx = (h0, torch.randn(3, 7)) if dense_type is nn.LSTMCell else h0
    with torch.no_grad():
        want, want_hx, want_unbatched = _loop(dense, x), _loop(dense, x, hx), _loop(dense, x[:, 0])
    layer = vtype.from_dense(dense, recurrent_noise=noise, **NEGLIGIBLE_CELL)
    assert layer.weight_ih is dense.weight_ih and layer.bias_hh is dense.bias_hh  # the trained Parameters
    assert isinstance(layer, dense_type) and layer.recurrent_noise == noise
    with torch.no_grad():
        assert _max_diff(_loop(layer.eval(), x), want) == 0.0  # eval runs the plain cell with the same weights
        assert _max_diff(_loop(layer.train(), x), want) < 1e-5  # the sampled forward: same gate math
        assert _max_diff(_loop(layer.train(), x, hx), want_hx) < 1e-5  # an initial state is honoured
        assert _max_diff(_loop(layer.train(), x[:, 0]), want_unbatched) < 1e-5  # unbatched [F] steps


@pytest.mark.parametrize(("vtype", "dense_type", "kwargs"), CELLS[:3], ids=CELL_IDS[:3])
def test_cell_noise_is_fixed_along_the_callers_loop(vtype, dense_type, kwargs) -> None:
    """The draw is kept while the caller feeds back the state the cell returned, per sequence (sequence) or for
    the whole batch (batch), and a new sequence (hx None, a fresh state, a state the caller changed) draws anew."""
    torch.manual_seed(0)
    layer = vtype.from_dense(dense_type(4, 5, **kwargs), init_log_sigma2=0.0, log_alpha_clip=8.0).train()
    x = torch.randn(3, 4)
    with torch.no_grad():
        state = layer(x)
        first = layer._draw.noise[0]
        assert first.shape == (3, *layer.weight_ih.shape)  # one draw per sequence
        state = layer(x, state)
        assert layer._draw.noise[0] is first  # the state it returned: the same sequence
        if isinstance(state, tuple):
            layer(x, (state[0], state[1]))  # a new tuple of the same tensors is the same sequence
            assert layer._draw.noise[0] is first
            layer(x, (state[0].clone(), state[1].clone()))
        else:
            layer(x, state.clone())
        assert layer._draw.noise[0] is not first  # a state the caller made: a new draw
        second = layer._draw.noise[0]
        layer(x)
        assert layer._draw.noise[0] is not second
        layer.recurrent_noise = "batch"
        state = layer(x)
        assert layer._draw.noise[0].shape == layer.weight_ih.shape  # one draw for the mini-batch
        shared = layer._draw.noise[0]
        layer(x, state)
        assert layer._draw.noise[0] is shared
    state = layer(x)  # with autograd on, the draw is part of the graph: a copy of the layer drops it
    assert copy.deepcopy(layer)._draw.noise is None and layer._draw.noise is not None


@pytest.mark.parametrize(("vtype", "dense_type", "kwargs"), CELLS[:3], ids=CELL_IDS[:3])
@pytest.mark.parametrize("noise", ["sequence", "batch"])
def test_cell_kl_masks_and_gradients(vtype, dense_type, kwargs, noise) -> None:
    torch.manual_seed(0)
    layer = vtype.from_dense(dense_type(3, 4, **kwargs), recurrent_noise=noise)
    gates = {nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}[dense_type]
    out = _loop(layer.train(), torch.randn(5, 2, 3))
    kl = layer.kl()
    assert kl.shape == () and torch.isfinite(kl) and kl > 0
    (out.square().sum() + 1e-3 * kl).backward()  # through the 5 steps that share one draw
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert {id(p) for p in layer.noise_parameters()} == {
        id(p) for n, p in layer.named_parameters() if n.startswith("log_")}
    assert layer.keep_mask().shape == (gates * 4 * 3 + gates * 4 * 4,)
    assert layer.log_alpha.shape == layer.keep_mask().shape
    masks = layer.parameter_keep_masks()
    assert set(masks) == {"weight_ih", "weight_hh"}
    assert masks["weight_ih"].shape == (gates * 4, 3) and masks["weight_hh"].shape == (gates * 4, 4)
    assert layer.unit_keep_mask() is None


@pytest.mark.parametrize(("vtype", "dense_type", "kwargs"), CELLS, ids=CELL_IDS)
def test_cell_to_dense_round_trip(vtype, dense_type, kwargs) -> None:
    torch.manual_seed(0)
    dense = dense_type(5, 6, **kwargs)
    layer = vtype.from_dense(dense)
    _prune_some(layer)
    plain = layer.eval().to_dense()
    assert type(plain) is dense_type
    assert getattr(plain, "nonlinearity", None) == getattr(dense, "nonlinearity", None)
    masks = layer.parameter_keep_masks()
    for name, mask in masks.items():
        assert torch.equal(getattr(plain, name) == 0, ~mask | (getattr(layer, name) == 0)), name
    assert torch.equal(plain.bias_ih, dense.bias_ih) and torch.equal(plain.bias_hh, dense.bias_hh)
    assert 0 < int(layer.keep_mask().sum()) < layer.keep_mask().numel()
    x = torch.randn(4, 3, 5)
    with torch.no_grad():
        assert _max_diff(_loop(plain, x), _loop(layer, x)) == 0.0
    # and back: the plain cell converts again, with the same weights and zeros
    again = vtype.from_dense(plain)
    assert torch.equal(again.eval().to_dense().weight_hh, plain.weight_hh)


def test_cell_flops_are_counted_per_call() -> None:
    """A cell called T times in one forward pass counts T steps of its weights per sample, and its non-zero MACs
    count the non-zero weights as many times."""
    torch.manual_seed(0)
    for kind, gates in (("lstm", 4), ("gru", 3), ("rnn", 1)):
        model = TinyCellClassifier(kind, in_features=8, hidden=6, num_classes=3)
        with torch.no_grad():
            model.cell.weight_hh[:, :2] = 0.0
        profiles = {p.name: p for p in profile_model(model, torch.randn(5, 1, 8, 8))}
        cell = profiles["cell"]
        per_step = gates * 6 * (8 + 6)
        assert cell.counted and cell.macs == 8 * per_step
        assert cell.nonzero_macs == 8 * (per_step - gates * 6 * 2)
        assert cell.params == gates * 6 * (8 + 6) + 2 * gates * 6 and cell.in_shape == [8]
        assert profiles["head"].macs == 6 * 3  # called once
    # the same count as nn.LSTM over the same 8 steps
    lstm = TinyRecurrentClassifier("lstm", in_features=8, hidden=6)
    assert {p.name: p for p in profile_model(lstm, torch.randn(5, 8, 8))}["rnn"].macs == 8 * 4 * 6 * 14


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_cell_loop_compresses_end_to_end_with_onnx_parity(cell, tmp_path) -> None:
    x, y = tiny_classification_data(n=160, shape=(1, 8, 5), seed=1)
    np.savez(tmp_path / "data.npz", x_train=x[:128].numpy(), y_train=y[:128].numpy(), x_val=x[128:].numpy(),
             y_val=y[128:].numpy())
    torch.manual_seed(0)
    model = fit(TinyCellClassifier(cell, in_features=5, hidden=12, num_classes=3), x[:128], y[:128], 60)
    recipe = Recipe(epochs=6, batch_size=32, eval_batch_size=64, lr=3e-3, noise_lr=0.3, lr_schedule="constant",
                    kl_weight=30.0, kl_warmup_epochs=1, finetune_epochs=1, finetune_lr=1e-3, device="cpu",
                    latency_runs=0, mc_samples=2, plots=False, max_metric_drop=None)
    result, report = _compressed(model, recipe, tmp_path)
    plain = result.model.cell
    assert type(plain) is {"gru": nn.GRUCell, "lstm": nn.LSTMCell}[cell]
    weights = [plain.weight_ih, plain.weight_hh]
    assert sum(int(torch.count_nonzero(w)) for w in weights) < sum(w.numel() for w in weights)
    assert "cell" not in json.dumps(report.get("flops", {}).get("uncounted_layers", []))


def _compressed(model: nn.Module, recipe: Recipe, tmp_path: Path) -> tuple[Any, dict]:
    """``compress()`` of a copy of ``model`` on the npz data in ``tmp_path``; the run's report, its ONNX file checked."""
    data = load_data(f"npz:{tmp_path / 'data.npz'}")
    result = compress(copy.deepcopy(model), data, recipe, tmp_path / "out", progress=False, log=lambda _: None)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["parity_max_abs_diff"] <= recipe.parity_atol
    assert (tmp_path / "out" / "model.onnx").is_file()
    return result, report
