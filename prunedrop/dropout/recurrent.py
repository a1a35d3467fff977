"""Dropout inside LSTMs: RNNDrop, recurrent dropout and variational RNN dropout.

Each method comes as an LSTM cell that can replace :class:`torch.nn.LSTMCell` (same parameters,
same gate order i, f, g, o, same ``forward(input, (h, c)) -> (h, c)``) and as a multi-layer wrapper
with the :class:`torch.nn.LSTM` interface (``input_size, hidden_size, num_layers, bias,
batch_first``; ``forward(input, (h_0, c_0)) -> output, (h_n, c_n)``).

Masks that the method fixes for a whole sequence are drawn at the first step after
:meth:`reset_masks` and reused until the next reset. The wrappers reset every layer at the start of
each forward call, so one call is one sequence. When stepping a cell by hand, call
``cell.reset_masks()`` at the start of every sequence (a call with ``hx=None`` does it too).
"""

from __future__ import annotations

import math
from typing import ClassVar, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from ._common import DropoutModule, bernoulli_keep, check_probability

__all__ = [
    "RNNDropLSTM",
    "RNNDropLSTMCell",
    "RecurrentDropoutLSTM",
    "RecurrentDropoutLSTMCell",
    "VariationalLSTM",
    "VariationalLSTMCell",
]

_State = tuple[torch.Tensor, torch.Tensor]
_LSTM = TypeVar("_LSTM", bound="_DropoutLSTM")


class _DropoutLSTMCell(DropoutModule):
    """The LSTM arithmetic and the per-sequence mask bookkeeping shared by the three cells."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self._masks: tuple[torch.Tensor, ...] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), as :class:`torch.nn.LSTMCell`."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def reset_masks(self) -> None:
        """Forget the current sequence's masks: the next training step draws new ones."""
        self._masks = None

    def _sample_sequence_masks(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def sequence_masks(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The masks of the current sequence, drawn now if this is its first step."""
        if self._masks is None or self._masks[0].shape[-2] != batch:
            self._masks = self._sample_sequence_masks(batch, like)
        return self._masks

    def _step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> _State:
        raise NotImplementedError

    def forward(self, input: torch.Tensor, hx: _State | None = None) -> _State:
        unbatched = input.dim() == 1
        if unbatched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = input.new_zeros(input.shape[0], self.hidden_size)
            h, c = zeros, zeros
            self.reset_masks()
        else:
            h, c = (s.unsqueeze(0) for s in hx) if unbatched else hx
        h, c = self._step(input, h, c)
        return (h.squeeze(0), c.squeeze(0)) if unbatched else (h, c)

    @staticmethod
    def _activate(gates: torch.Tensor) -> tuple[torch.Tensor, ...]:
        i, f, g, o = gates.chunk(4, dim=-1)
        return torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)

    def _gates(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_ih, self.bias_ih) + F.linear(h, self.weight_hh, self.bias_hh)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias_ih is not None}"


class RNNDropLSTMCell(_DropoutLSTMCell):
    """LSTM cell with RNNDrop (Moon, Choi, Lee, Song 2015): dropout on the memory cell, one mask per sequence.

    Training: ``c_t = m * (f_t * c_{t-1} + i_t * g_t)``, ``h_t = o_t * tanh(c_t)`` with a {0, 1} mask
    ``m ~ Bernoulli(1 - p)`` per example and unit, drawn once per sequence, so a dropped memory unit
    stays empty for the whole sequence and a kept one runs as if there were no dropout. Drawing the
    mask per time step instead would erase the memory every few steps.

    Test time applies the dropout weight-scaling rule to what the cell exposes: the memory runs
    unscaled and ``h_t = (1 - p) * o_t * tanh(c_t)``, the expected training ``h_t`` (a unit is, for the
    whole sequence, either zero or unmasked). Scaling ``c_t`` itself by 1 - p would compound to
    ``(1 - p)^t`` along the sequence, the problem that Semeniuta et al. (2016) point out.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, p: float = 0.5):
        super().__init__(input_size, hidden_size, bias)
        self.p = check_probability(p)

    def _sample_sequence_masks(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (bernoulli_keep((batch, self.hidden_size), 1.0 - self.p, like),)

    def _step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> _State:
        i, f, g, o = self._activate(self._gates(x, h))
        c = f * c + i * g
        if not self.training:
            return (1.0 - self.p) * o * torch.tanh(c), c
        (mask,) = self.sequence_masks(x.shape[0], x)
        c = c * mask
        return o * torch.tanh(c), c

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


class RecurrentDropoutLSTMCell(_DropoutLSTMCell):
    """LSTM cell with recurrent dropout (Semeniuta, Severyn, Barth 2016): only the cell update is dropped.

    ``c_t = f_t * c_{t-1} + i_t * d(g_t)``: dropout ``d`` acts on the candidate update ``g_t`` alone, so
    it removes what would be *written* to memory and never erases what is already stored, whatever
    the mask sampling. ``per_sequence=False`` (default) draws a fresh mask every step, which this
    placement allows; ``per_sequence=True`` draws one per sequence. The mask is inverted
    (divided by 1 - p), which keeps the expected update, and so the expected memory, unchanged; eval
    mode is the plain LSTM.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        p: float = 0.25,
        per_sequence: bool = False,
    ):
        super().__init__(input_size, hidden_size, bias)
        self.p = check_probability(p)
        self.per_sequence = per_sequence

    def _sample_sequence_masks(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        keep = 1.0 - self.p
        return (bernoulli_keep((batch, self.hidden_size), keep, like) / keep,)

    def _step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> _State:
        i, f, g, o = self._activate(self._gates(x, h))
        if self.training:
            batch = x.shape[0]
            if self.per_sequence:
                (mask,) = self.sequence_masks(batch, x)
            else:
                (mask,) = self._sample_sequence_masks(batch, x)
            g = g * mask
        c = f * c + i * g
        return o * torch.tanh(c), c

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}, per_sequence={self.per_sequence}"


class VariationalLSTMCell(_DropoutLSTMCell):
    """LSTM cell with variational RNN dropout (Gal & Ghahramani 2016): same masks at every time step.

    Dropout as approximate Bayesian inference over the weights says the weights, hence the masks, must
    be the same at every step of a sequence. Inputs ``x_t`` and hidden state ``h_{t-1}`` are masked
    inside the gate computations, with masks drawn once per sequence; by default (the paper's untied
    variant) each of the four gates has its own pair of masks,

        i = sigmoid(W_i (x_t * z_x^i) + U_i (h_{t-1} * z_h^i) + b_i),  and likewise f, g, o;

    ``tied_masks=True`` shares one pair across the gates (cheaper). Masks are inverted (divided by the
    keep probability), so eval mode is the plain LSTM; for MC dropout use
    :func:`prunedrop.dropout.mc_predict`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        p_input: float = 0.25,
        p_hidden: float = 0.25,
        tied_masks: bool = False,
    ):
        super().__init__(input_size, hidden_size, bias)
        self.p_input = check_probability(p_input, "p_input")
        self.p_hidden = check_probability(p_hidden, "p_hidden")
        self.tied_masks = tied_masks

    def _sample_sequence_masks(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        gates = 1 if self.tied_masks else 4
        keep_x, keep_h = 1.0 - self.p_input, 1.0 - self.p_hidden
        mask_x = bernoulli_keep((gates, batch, self.input_size), keep_x, like) / keep_x
        mask_h = bernoulli_keep((gates, batch, self.hidden_size), keep_h, like) / keep_h
        return mask_x, mask_h

    def _step(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> _State:
        if not self.training:
            gates = self._gates(x, h)
        else:
            mask_x, mask_h = self.sequence_masks(x.shape[0], x)
            if self.tied_masks:
                gates = self._gates(x * mask_x[0], h * mask_h[0])
            else:
                gates = self._untied_gates(x * mask_x, h * mask_h)
        i, f, g, o = self._activate(gates)
        c = f * c + i * g
        return o * torch.tanh(c), c

    def _untied_gates(self, xs: torch.Tensor, hs: torch.Tensor) -> torch.Tensor:
        # xs: (4, B, I), one masked copy of the input per gate; gate k only sees copy k
        hidden = self.hidden_size
        w_ih = self.weight_ih.view(4, hidden, self.input_size)
        w_hh = self.weight_hh.view(4, hidden, hidden)
        gates = torch.einsum("kbi,khi->bkh", xs, w_ih) + torch.einsum("kbj,khj->bkh", hs, w_hh)
        gates = gates.reshape(xs.shape[1], 4 * hidden)
        if self.bias_ih is not None:
            gates = gates + self.bias_ih + self.bias_hh
        return gates

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, p_input={self.p_input}, p_hidden={self.p_hidden}, "
            f"tied_masks={self.tied_masks}"
        )


class _DropoutLSTM(nn.Module):
    """A stack of dropout LSTM cells behind the :class:`torch.nn.LSTM` interface (unidirectional)."""

    cell_type: ClassVar[type[_DropoutLSTMCell]]

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        **cell_options: float | bool,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        sizes = [input_size] + [hidden_size] * (num_layers - 1)
        self.cells = nn.ModuleList(self.cell_type(size, hidden_size, bias, **cell_options) for size in sizes)

    def forward(self, input: torch.Tensor, hx: _State | None = None) -> tuple[torch.Tensor, _State]:
        """Run whole sequences: ``input`` is (T, B, input_size), or (B, T, ...) if batch_first, or (T, ...)."""
        unbatched = input.dim() == 2
        if unbatched:
            input = input.unsqueeze(1)
        elif self.batch_first:
            input = input.transpose(0, 1)
        batch = input.shape[1]
        if hx is None:
            zeros = input.new_zeros(self.num_layers, batch, self.hidden_size)
            h0, c0 = zeros, zeros
        else:
            h0, c0 = (s.unsqueeze(1) for s in hx) if unbatched else hx
        layer_input = input
        h_n, c_n = [], []
        for layer, cell in enumerate(self.cells):
            cell.reset_masks()
            h, c = h0[layer], c0[layer]
            outputs = []
            for x_t in layer_input:
                h, c = cell(x_t, (h, c))
                outputs.append(h)
            layer_input = torch.stack(outputs)
            h_n.append(h)
            c_n.append(c)
        output = layer_input
        h_last, c_last = torch.stack(h_n), torch.stack(c_n)
        if unbatched:
            return output.squeeze(1), (h_last.squeeze(1), c_last.squeeze(1))
        if self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_last, c_last)

    @classmethod
    def from_lstm(cls: type[_LSTM], lstm: nn.LSTM, **cell_options: float | bool) -> _LSTM:
        """The same network as the trained ``lstm`` (weights copied), with this class's dropout added."""
        if lstm.bidirectional or lstm.proj_size:
            raise ValueError("from_lstm supports unidirectional nn.LSTM without projections only")
        new = cls(
            lstm.input_size, lstm.hidden_size, lstm.num_layers, lstm.bias, lstm.batch_first, **cell_options
        ).to(device=lstm.weight_ih_l0.device, dtype=lstm.weight_ih_l0.dtype)
        with torch.no_grad():
            for layer, cell in enumerate(new.cells):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    target = getattr(cell, name)
                    if target is not None:
                        target.copy_(getattr(lstm, f"{name}_l{layer}"))
        return new

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, bias={self.bias}, "
            f"batch_first={self.batch_first}"
        )


class RNNDropLSTM(_DropoutLSTM):
    """Multi-layer LSTM with RNNDrop in every layer (Moon et al. 2015); see :class:`RNNDropLSTMCell`."""

    cell_type = RNNDropLSTMCell

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        p: float = 0.5,
    ):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, p=p)


class RecurrentDropoutLSTM(_DropoutLSTM):
    """Multi-layer LSTM with recurrent dropout (Semeniuta et al. 2016); see :class:`RecurrentDropoutLSTMCell`."""

    cell_type = RecurrentDropoutLSTMCell

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        p: float = 0.25,
        per_sequence: bool = False,
    ):
        super().__init__(
            input_size, hidden_size, num_layers, bias, batch_first, p=p, per_sequence=per_sequence
        )


class VariationalLSTM(_DropoutLSTM):
    """Multi-layer LSTM with variational RNN dropout (Gal & Ghahramani 2016); see :class:`VariationalLSTMCell`.

    Each layer masks its own input, so from the second layer on the input mask acts on the layer below's
    output, as in the paper.
    """

    cell_type = VariationalLSTMCell

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        p_input: float = 0.25,
        p_hidden: float = 0.25,
        tied_masks: bool = False,
    ):
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            p_input=p_input,
            p_hidden=p_hidden,
            tied_masks=tied_masks,
        )
