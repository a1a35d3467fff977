"""Channels read by a recurrent layer (a convolutional front end before an LSTM, GRU or RNN) leave with the first
layer's ``weight_ih`` columns of each direction; a constant they carry goes into the input-gate biases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunedrop.slim import dead_units, slim, unremovable_layers


class ConvRecurrent(nn.Module):
    """Rows of an image as time steps: a Conv1d (optionally with BatchNorm) over them, then a recurrent layer."""

    def __init__(self, cell: type[nn.RNNBase] = nn.LSTM, *, bidirectional: bool = False, layers: int = 1,
                 norm: bool = False, bias: bool = True, batch_first: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 12, 3, padding=1)
        self.norm = nn.BatchNorm1d(12) if norm else nn.Identity()
        self.rnn = cell(12, 10, num_layers=layers, batch_first=batch_first, bidirectional=bidirectional, bias=bias)
        self.batch_first = batch_first
        self.fc = nn.Linear(20 if bidirectional else 10, 3)

    def forward(self, x):
        h = torch.relu(self.norm(self.conv(x)))  # (N, 12, T)
        h = h.transpose(1, 2) if self.batch_first else h.permute(2, 0, 1)
        out, _ = self.rnn(h)
        return self.fc(out[:, -1] if self.batch_first else out[-1])


def _masked(model: nn.Module, units: list[int]) -> dict[str, torch.Tensor]:
    keep = torch.ones(12, dtype=torch.bool)
    keep[units] = False
    with torch.no_grad():
        model.conv.weight[~keep] = 0
        model.conv.bias[~keep] = 0
    return {"conv": keep}


def _fresh_diff(a: nn.Module, b: nn.Module) -> float:
    x = torch.randn(6, 8, 9, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        return float((a.eval()(x) - b.eval()(x)).abs().max())


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_channel_read_by_a_recurrent_layer_leaves_with_its_input_columns(cell, bidirectional) -> None:
    torch.manual_seed(0)
    model = ConvRecurrent(cell, bidirectional=bidirectional, layers=2).eval()
    x = torch.randn(4, 8, 9)
    assert "conv" not in unremovable_layers(model, x)
    result = slim(model, _masked(model, [1, 4, 7]), x)
    rnn = result.model.rnn
    assert result.removed["conv"] == (12, 9)
    assert rnn.input_size == 9 and rnn.weight_ih_l0.shape[1] == 9
    if bidirectional:
        assert rnn.weight_ih_l0_reverse.shape[1] == 9
    assert rnn.weight_ih_l1.shape[1] == 20 if bidirectional else 10  # the second layer reads hidden units: unchanged
    assert result.max_abs_diff <= 1e-5
    assert _fresh_diff(model, result.model) <= 1e-5


def test_a_constant_channel_goes_into_the_input_gate_biases_of_each_direction() -> None:
    torch.manual_seed(0)
    model = ConvRecurrent(nn.LSTM, bidirectional=True, norm=True, batch_first=False).eval()
    with torch.no_grad():
        model.norm.bias[[2, 5]] = torch.tensor([1.5, 0.7])  # relu(BatchNorm(0)) > 0: a constant reaches the LSTM
        model.norm.running_mean.uniform_(-0.5, 0.5)
    x = torch.randn(4, 8, 9)
    before = model.rnn.bias_ih_l0.detach().clone(), model.rnn.bias_ih_l0_reverse.detach().clone()
    result = slim(model, _masked(model, [2, 5]), x)
    rnn = result.model.rnn
    assert result.removed["conv"] == (12, 10) and rnn.input_size == 10
    assert not torch.allclose(rnn.bias_ih_l0, before[0]) and not torch.allclose(rnn.bias_ih_l0_reverse, before[1])
    assert torch.equal(rnn.bias_hh_l0, model.rnn.bias_hh_l0)
    assert result.max_abs_diff <= 1e-5
    assert _fresh_diff(model, result.model) <= 1e-5


def test_a_constant_channel_stays_where_the_recurrent_layer_has_no_bias() -> None:
    torch.manual_seed(0)
    model = ConvRecurrent(nn.GRU, norm=True, bias=False).eval()
    with torch.no_grad():
        model.norm.bias[3] = 1.0
    x = torch.randn(4, 8, 9)
    result = slim(model, _masked(model, [3, 6]), x)  # 6 carries zeros (relu of a negative or zero shift): it leaves
    assert result.removed["conv"] == (12, 11) and result.model.rnn.input_size == 11
    assert any("no bias" in note for note in result.notes)
    assert result.max_abs_diff <= 1e-5


def test_sparse_vd_leaves_a_unit_whose_columns_every_direction_pruned() -> None:
    torch.manual_seed(0)
    model = ConvRecurrent(nn.LSTM, bidirectional=True).eval()
    with torch.no_grad():
        model.rnn.weight_ih_l0[:, 5] = 0
        model.rnn.weight_ih_l0_reverse[:, 5] = 0
        model.rnn.weight_ih_l0[:, 6] = 0  # read by the reverse direction still: stays
    masks = dead_units(model, torch.randn(4, 8, 9))
    assert masks["conv"].tolist() == [i != 5 for i in range(12)]


def test_an_initial_state_another_layer_computes_is_not_read_as_input_channels() -> None:
    class Seeded(ConvRecurrent):
        def __init__(self) -> None:
            super().__init__(nn.GRU)
            self.init = nn.Linear(8, 10)

        def forward(self, x):
            h = torch.relu(self.conv(x)).transpose(1, 2)
            out, _ = self.rnn(h, self.init(x.mean(2)).unsqueeze(0))
            return self.fc(out[:, -1])

    torch.manual_seed(0)
    model = Seeded().eval()
    x = torch.randn(4, 8, 9)
    with torch.no_grad():
        model.init.weight[[2, 3]] = 0
        model.init.bias[[2, 3]] = 0
    result = slim(model, {"init": torch.tensor([i not in (2, 3) for i in range(10)])}, x)
    assert result.model.rnn.input_size == 12 and result.model.rnn.hidden_size == 10
    assert result.max_abs_diff <= 1e-5
    assert _fresh_diff(model, result.model) <= 1e-5


def test_a_layer_whose_outputs_meet_a_recurrent_layers_element_wise_stays_and_says_why() -> None:
    """A Linear added to an LSTM's outputs (a residual around it) writes channels that the LSTM's hidden units write
    too: its units cannot leave by this path, and the early check says so."""

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.lstm, self.fc = nn.Linear(8, 10), nn.LSTM(10, 10, batch_first=True), nn.Linear(10, 3)

        def forward(self, x):
            h = torch.relu(self.inp(x.transpose(1, 2)))  # (N, T, 10)
            out, _ = self.lstm(h)
            return self.fc((out + h)[:, -1])

    reasons = unremovable_layers(Residual().eval(), torch.randn(4, 8, 9))
    assert "meet the outputs of the recurrent layer lstm" in reasons["inp"], reasons


class ConvCellLoop(nn.Module):
    """The same front end, then a recurrent cell stepped by hand over the time steps, its state started as zeros
    (``nn.LSTMCell``: (h, c)) or by the cell itself."""

    def __init__(self, cell: type[nn.RNNCellBase]) -> None:
        super().__init__()
        self.conv, self.cell, self.fc = nn.Conv1d(8, 12, 3, padding=1), cell(12, 10), nn.Linear(10, 3)
        self.norm = nn.BatchNorm1d(12)

    def forward(self, x):
        h = torch.relu(self.norm(self.conv(x)))  # (N, 12, T)
        state = None
        for t in range(h.shape[2]):
            state = self.cell(h[:, :, t], state)
        return self.fc(state[0] if isinstance(state, tuple) else state)


@pytest.mark.parametrize("cell", [nn.LSTMCell, nn.GRUCell, nn.RNNCell])
def test_a_channel_read_by_a_recurrent_cell_stepped_by_hand_leaves_with_its_input_columns(cell) -> None:
    """A cell called once per step was traced as the gates it computes, with the state of the step before as an
    operand: the dependency graph failed ("list index out of range") and the layer before it was named for that.
    Each step reads as one layer of its input now; a constant goes into ``bias_ih``."""
    torch.manual_seed(0)
    model, x = ConvCellLoop(cell).eval(), torch.randn(4, 8, 9)
    assert set(unremovable_layers(model, x)) == {"fc"}
    masks = _masked(model, [1, 4, 7])
    with torch.no_grad():
        model.norm.bias[4] = 0.5  # relu(0.5) at a pruned unit: a constant the cell's bias_ih takes
    result = slim(model, masks, x)
    assert result.removed["conv"] == (12, 9) and not result.notes, (result.removed, result.notes)
    assert result.model.cell.input_size == 9 and result.model.cell.weight_ih.shape[1] == 9
    assert _fresh_diff(model, result.model) <= 1e-5
