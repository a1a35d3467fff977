"""Variational LSTM, GRU and plain RNN: sparse VD on the recurrent weights, optionally with group noise (LSTM, GRU).

Lobacheva, Chirkova, Vetrov, "Bayesian Sparsification of Recurrent Neural Networks" (2017) and "Bayesian
Sparsification of Gated Recurrent Neural Networks" (2018). The layers replace ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` (any
``num_layers``, ``bidirectional``, ``batch_first``, ``bias``, ``dropout``; not ``proj_size``), keep their
parameters under the same names (``weight_ih_l0``, ``weight_hh_l0_reverse``, …) and turn back into them.

**Per-weight noise** (``LSTMSVD``, ``GRUSVD``, ``RNNSVD``; method ``sparse_vd``). Every entry of every
``weight_ih_l*`` and ``weight_hh_l*`` has ``w = θ + σ·ε``, ``log α = log σ² − log(θ² + 1e-8)`` clipped, the KL of
:func:`~prunedrop.layers.sparse_vd.kl_log_uniform`, pruned where ``log α > threshold`` (biases carry no noise).

*Why the noise is sampled per sequence, as whole weight matrices.* A weight is one random variable for the
whole sequence: its noise must be the same at every time step, or the model is not the Bayesian model whose
KL we pay (fresh noise at every step is the per-step dropout that Gal & Ghahramani 2016 argue against). The local reparameterisation trick of the feed-forward layers samples the *product* ``W·x_t``, which
would give independent noise at every step, so it is not used here. Instead, for each sequence ``b`` of the
mini-batch one weight matrix ``W_b = θ + σ ⊙ ε_b`` is drawn (``ε_b`` fixed along time) and the sequence runs
with it: the input products for all steps at once (one batched matmul ``[B, T, in] × [B, in, G·H]``), the
recurrent products step by step (``[B, 1, H] × [B, H, G·H]``). Per sequence rather than one draw shared by
the mini-batch (which would be valid too, and could run on cuDNN): the sequences of a batch then give
independent samples of the noise, a lower-variance ELBO gradient per step. The price is memory ``B × (number of weights)`` for the drawn
matrices (128-unit LSTM on 28 features, batch 100: 8M floats) and an unrolled Python loop over time instead of
cuDNN; eval mode runs the plain cuDNN/MKL kernel.

**Group noise** (``LSTMGroupVD``, ``GRUGroupVD``; method ``group_vd``), the 2018 paper's structure on top of
the per-weight noise: multiplicative Gaussian ``z ~ N(1, α)`` per sequence on every *input feature*
(``z^x``), every *hidden unit* (``z^h``) and every *gate preactivation* row (``z^g``), each with its own
``log α`` and the same KL. Written on the weights, ``W_ih,eff = z^g ⊙ W_ih ⊙ z^x``,
``W_hh,eff = z^g ⊙ W_hh ⊙ z^h``; ``z^h`` also multiplies the hidden state the layer outputs (and its
``h_n``). In eval each ``z`` becomes its keep mask (1 or 0):

* a pruned input feature zeroes its column of ``W_ih``;
* a pruned gate preactivation zeroes its rows of ``W_ih`` and ``W_hh``: that gate is constant (its bias),
  or for GRU's ``n`` gate ``tanh(b_in + r·b_hn)``;
* a pruned hidden unit is never read (its ``W_hh`` column is zero and its output is multiplied by 0), so the
  plain layer gets all of its gate rows *and* their biases zero: the candidate ``g`` (LSTM) / ``n`` (GRU) is
  then 0, so from a zero initial state the unit's cell and hidden state stay exactly 0 and the plain
  ``nn.LSTM`` / ``nn.GRU`` computes what the masked layer computes. :mod:`prunedrop.slim` then removes the
  unit physically (``hidden_size`` shrinks, consumers lose their columns). With a non-zero ``h_0``/``c_0``
  passed by the caller a removed unit would not stay 0; the plain layer is exact for the default zero state.

**One draw per mini-batch** (recipe ``recurrent_noise: batch``): the sequences of a mini-batch share one
draw of every noise (still fixed along time), as Lobacheva et al. train. The layer then runs torch's fused
LSTM/GRU kernel with the sampled weights (MKL-DNN on a CPU, cuDNN on a GPU) instead of the unrolled loop, which
makes a training step many times cheaper (measured in BENCHMARKS.md, LSTM section). The gradient is noisier (one sample of the weights per step instead of B);
the model, its KL and everything after training are the same.

Eval mode runs the plain layer that :meth:`to_dense` returns, so the two agree exactly.

**Cells** (``LSTMCellSVD``, ``GRUCellSVD``, ``RNNCellSVD``; method ``sparse_vd``) replace ``nn.LSTMCell`` /
``nn.GRUCell`` / ``nn.RNNCell``, which the caller's own loop calls once per time step: the same per-weight noise
on ``weight_ih`` and ``weight_hh``, drawn at a sequence's first step and reused while the caller feeds back the
state the cell returned (:class:`_DrawCache`), so that it is fixed along the sequence here too. Removing a cell's
hidden units would change the state tensors the caller makes, so the unit-noise methods leave cells dense.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ..errors import PrunedropError
from .base import VariationalLayer, register_layer
from .configs import GroupVDConfig, RecurrentConfig, RecurrentNoise
from .sparse_vd import (
    DEFAULT_INIT_LOG_SIGMA2,
    DEFAULT_LOG_ALPHA_CLIP,
    DEFAULT_THRESHOLD,
    clipped_log_alpha,
    kl_log_uniform,
)

DEFAULT_INIT_LOG_ALPHA = GroupVDConfig.init_log_alpha
#: the plain layers this module replaces
DENSE_TYPES = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)
#: how the noise is drawn: per sequence of a mini-batch, or once per mini-batch (see the module docstring)
NOISE_MODES: tuple[str, ...] = get_args(RecurrentNoise)


def _check_noise_mode(recurrent_noise: str) -> None:
    if recurrent_noise not in NOISE_MODES:
        raise PrunedropError(f"recurrent_noise must be one of {', '.join(NOISE_MODES)}, got {recurrent_noise!r}")


#: gate rows per hidden unit: LSTM i, f, g, o; GRU r, z, n (torch's order); the plain RNN's one preactivation
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


@dataclass
class SequenceNoise:
    """The noise of one layer and direction for one mini-batch: every tensor has one entry per sequence
    (leading dimension B) and none per time step, so it is the same at every step of a sequence."""

    weight_ih: torch.Tensor
    """Sampled input-to-hidden weights ``[B, G·H, in]``."""
    weight_hh: torch.Tensor
    """Sampled hidden-to-hidden weights ``[B, G·H, H]``."""
    z_input: torch.Tensor | None = None
    """Group noise on the input features ``[B, in]`` (group variant only)."""
    z_hidden: torch.Tensor | None = None
    """Group noise on the hidden units ``[B, H]``."""
    z_gate: torch.Tensor | None = None
    """Group noise on the gate preactivations ``[B, G·H]``."""


class _WeightNoise(VariationalLayer):
    """What the recurrent layers and the cells share: a ``log σ²`` per entry of each weight
    :meth:`_weight_names` names, taken on in :meth:`_take_noise`, the clipped ``log α`` of each, and the noise's
    parameters."""

    def _weight_names(self) -> list[str]:
        raise NotImplementedError

    @classmethod
    def _dense_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _adopt(cls, module: nn.Module, names: list[str], **noise: Any) -> Any:
        """A layer of this type built on the meta device from ``module``'s settings, holding ``module``'s trained
        Parameters ``names`` themselves (no copy; a missing bias stays None) and its noise (:meth:`_take_noise`)."""
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nn.LSTM's "dropout with num_layers=1" is the user's choice, already warned
            layer = cls(**cls._dense_kwargs(module))
        for name in names:
            setattr(layer, name, getattr(module, name))
        layer._take_noise(**noise)
        return layer

    def _take_noise(self, *, init_log_sigma2: float, log_alpha_clip: float, threshold: float,
                    recurrent_noise: str) -> None:
        """The noise settings, and a ``log_sigma2_<weight>`` Parameter beside every noisy weight."""
        self.log_alpha_clip = float(log_alpha_clip)
        self.threshold = float(threshold)
        self.recurrent_noise = recurrent_noise
        for name in self._weight_names():
            w = getattr(self, name)
            setattr(self, f"log_sigma2_{name}", nn.Parameter(torch.full_like(w, float(init_log_sigma2))))

    def weight_log_alpha(self, name: str) -> torch.Tensor:
        """Clipped per-weight log α of the weight ``name`` (e.g. ``weight_hh_l0``)."""
        return clipped_log_alpha(getattr(self, name), getattr(self, f"log_sigma2_{name}"), self.log_alpha_clip)

    @property
    def log_alpha(self) -> torch.Tensor:
        """Every per-weight log α, flattened and concatenated (for histograms)."""
        return torch.cat([self.weight_log_alpha(n).flatten() for n in self._weight_names()])

    def keep_mask(self, threshold: float | None = None) -> torch.Tensor:
        """Per weight, flattened over every noisy weight in order (:meth:`parameter_keep_masks`)."""
        masks = self.parameter_keep_masks(threshold)
        return torch.cat([masks[n].flatten() for n in self._weight_names()])

    def noise_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters(recurse=False) if n.startswith("log_")]


class _RecurrentVD(_WeightNoise):
    """Shared machinery; subclasses fix the cell (``mode``) and whether group noise is on."""

    mode: str = "LSTM"
    group_noise: bool = False
    recurrent_noise: str = RecurrentConfig.recurrent_noise

    # -- construction ---------------------------------------------------------------------------------

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        proj_size = getattr(module, "proj_size", 0)
        return f"proj_size={proj_size} not supported by the variational recurrent layers" if proj_size else None

    @classmethod
    def _dense_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return {"input_size": module.input_size, "hidden_size": module.hidden_size,
                "num_layers": module.num_layers, "bias": module.bias, "batch_first": module.batch_first,
                "dropout": float(module.dropout), "bidirectional": module.bidirectional}

    @classmethod
    def from_dense(
        cls,
        module: nn.Module,
        *,
        init_log_sigma2: float = DEFAULT_INIT_LOG_SIGMA2,
        log_alpha_clip: float = DEFAULT_LOG_ALPHA_CLIP,
        threshold: float = DEFAULT_THRESHOLD,
        init_log_alpha: float = DEFAULT_INIT_LOG_ALPHA,
        recurrent_noise: str = RecurrentConfig.recurrent_noise,
    ) -> _RecurrentVD:
        _check_noise_mode(recurrent_noise)
        if cls.unsupported(module) is not None:
            raise PrunedropError(f"{type(module).__name__} with proj_size={module.proj_size} is not supported by "
                                 "the variational recurrent layers; exclude it in the recipe")
        layer = cls._adopt(module, list(module._flat_weights_names), init_log_sigma2=init_log_sigma2,
                           log_alpha_clip=log_alpha_clip, threshold=threshold, recurrent_noise=recurrent_noise)
        if cls.group_noise:
            for layer_index, direction in layer._cells():
                s = layer._suffix(layer_index, direction)
                sizes = {"x": layer._in_size(layer_index), "h": layer.hidden_size,
                         "g": GATES[cls.mode] * layer.hidden_size}
                for kind, size in sizes.items():
                    param = torch.full((size,), float(init_log_alpha), device=module.weight_ih_l0.device)
                    setattr(layer, f"log_alpha_{kind}{s}", nn.Parameter(param))
        layer.train(module.training)
        return layer

    # -- structure ------------------------------------------------------------------------------------

    @property
    def _cell(self) -> str:
        """``LSTM``, ``GRU`` or ``RNN`` (``nn.RNN`` sets its ``mode`` to ``RNN_TANH`` / ``RNN_RELU``)."""
        return "RNN" if self.mode.startswith("RNN") else self.mode

    @property
    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _cells(self) -> list[tuple[int, int]]:
        return [(layer, d) for layer in range(self.num_layers) for d in range(self._directions)]

    @staticmethod
    def _suffix(layer: int, direction: int) -> str:
        return f"_l{layer}{'_reverse' if direction else ''}"

    def _in_size(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.hidden_size * self._directions

    def _weight_names(self) -> list[str]:
        return [n for n in self._flat_weights_names if n.startswith("weight")]

    # -- log α and masks --------------------------------------------------------------------------------

    def _clip(self, log_alpha: torch.Tensor) -> torch.Tensor:
        return torch.clamp(log_alpha, -self.log_alpha_clip, self.log_alpha_clip)

    def group_log_alpha(self, kind: str, layer: int, direction: int) -> torch.Tensor:
        """Clipped group log α: ``kind`` is ``x`` (input features), ``h`` (hidden units) or ``g`` (gate rows)."""
        return self._clip(getattr(self, f"log_alpha_{kind}{self._suffix(layer, direction)}"))

    def parameter_keep_masks(self, threshold: float | None = None) -> dict[str, torch.Tensor]:
        """Per parameter of the plain layer, what survives: per-weight masks, with the group masks folded in
        (columns of pruned inputs/hidden units, rows of pruned gates, all rows and biases of pruned units)."""
        t = self.threshold if threshold is None else threshold
        masks: dict[str, torch.Tensor] = {}
        gates = GATES[self._cell]
        for layer, d in self._cells():
            s = self._suffix(layer, d)
            m_ih = self.weight_log_alpha(f"weight_ih{s}") <= t
            m_hh = self.weight_log_alpha(f"weight_hh{s}") <= t
            rows = torch.ones(m_ih.shape[0], dtype=torch.bool, device=m_ih.device)
            if self.group_noise:
                keep_x = self.group_log_alpha("x", layer, d) <= t
                keep_h = self.group_log_alpha("h", layer, d) <= t
                keep_g = self.group_log_alpha("g", layer, d) <= t
                m_ih = m_ih & keep_g[:, None] & keep_x[None, :]
                m_hh = m_hh & keep_g[:, None] & keep_h[None, :]
                rows = keep_h.repeat(gates)  # row g·H + j belongs to unit j
                m_ih = m_ih & rows[:, None]
                m_hh = m_hh & rows[:, None]
            masks[f"weight_ih{s}"], masks[f"weight_hh{s}"] = m_ih, m_hh
            if self.bias:
                masks[f"bias_ih{s}"], masks[f"bias_hh{s}"] = rows.clone(), rows.clone()
        return masks

    def unit_keep_mask(self, threshold: float | None = None) -> torch.Tensor | None:
        """``[num_layers · directions, hidden_size]`` (the layout of ``h_n``): which hidden units survive;
        None without group noise (per-weight noise removes no whole unit)."""
        if not self.group_noise:
            return None
        t = self.threshold if threshold is None else threshold
        return torch.stack([self.group_log_alpha("h", layer, d) <= t for layer, d in self._cells()])

    def kl(self) -> torch.Tensor:
        parts = [kl_log_uniform(self.weight_log_alpha(n)).sum() for n in self._weight_names()]
        if self.group_noise:
            parts += [kl_log_uniform(self.group_log_alpha(k, layer, d)).sum()
                      for layer, d in self._cells() for k in ("x", "h", "g")]
        return torch.stack(parts).sum()

    def to_dense(self, threshold: float | None = None) -> nn.Module:
        masks = self.parameter_keep_masks(threshold)
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dense = self.dense_type(**self._dense_kwargs(self))
        with torch.no_grad():
            for name in self._flat_weights_names:
                value = getattr(self, name).detach()
                if name in masks:
                    value = value * masks[name]
                setattr(dense, name, nn.Parameter(value.clone()))
        return dense.train(self.training)

    # -- forward --------------------------------------------------------------------------------------------

    def _noise(self, kind: str, layer: int, d: int, batch: int, like: torch.Tensor) -> torch.Tensor:
        std = torch.exp(0.5 * self.group_log_alpha(kind, layer, d))
        return 1 + std * torch.randn(batch, std.shape[0], dtype=like.dtype, device=like.device)

    def sample_noise(self, batch: int) -> dict[tuple[int, int], SequenceNoise]:
        """One draw of every noise of the layer for ``batch`` sequences: (layer, direction) → noise."""
        out = {}
        for layer, d in self._cells():
            s = self._suffix(layer, d)
            sampled = []
            for name in (f"weight_ih{s}", f"weight_hh{s}"):
                w = getattr(self, name)
                # σ = sqrt(α)·|θ| with the clipped α that the KL sees (as the feed-forward sparse VD layers)
                std = torch.exp(0.5 * self.weight_log_alpha(name)) * w.abs()
                sampled.append(w + std * torch.randn(batch, *w.shape, dtype=w.dtype, device=w.device))
            noise = SequenceNoise(*sampled)
            if self.group_noise:
                like = sampled[0]
                noise.z_input = self._noise("x", layer, d, batch, like)
                noise.z_hidden = self._noise("h", layer, d, batch, like)
                noise.z_gate = self._noise("g", layer, d, batch, like)
            out[(layer, d)] = noise
        return out

    def forward(self, input: Any, hx: Any = None) -> Any:
        if isinstance(input, PackedSequence):
            raise PrunedropError(f"{type(self).__name__} does not take a PackedSequence; pad the sequences "
                                 "(or exclude the layer in the recipe)")
        if not self.training:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # cuDNN's "weights are not part of single contiguous chunk"
                return self.to_dense()(input, hx)
        return self._sampled_forward(input, hx)

    def _sampled_forward(self, input: torch.Tensor, hx: Any) -> Any:
        """The training forward: shapes and initial states as ``nn.LSTM``/``nn.GRU`` take them, one draw of the
        noise (per sequence or per mini-batch, :attr:`recurrent_noise`), then the layers in order with
        dropout between them."""
        unbatched = input.dim() == 2
        x = input.unsqueeze(0 if self.batch_first else 1) if unbatched else input
        if not self.batch_first:
            x = x.transpose(0, 1)
        batch = x.shape[0]
        zeros = x.new_zeros(len(self._cells()), batch, self.hidden_size)
        lstm = self._cell == "LSTM"
        if hx is None:
            h0, c0 = zeros, zeros
        elif lstm:
            h0, c0 = (s.unsqueeze(1) for s in hx) if unbatched else hx
        else:
            h0, c0 = (hx.unsqueeze(1) if unbatched else hx), zeros
        per_batch = self.recurrent_noise == "batch"
        run_layer = self._run_layer_fused if per_batch else self._run_layer_unrolled
        noise = self.sample_noise(1 if per_batch else batch)
        h_n, c_n = [], []
        layer_in = x
        for layer in range(self.num_layers):
            lo, hi = layer * self._directions, (layer + 1) * self._directions
            layer_in, h, c = run_layer(layer, layer_in, noise, h0[lo:hi], c0[lo:hi])
            h_n.append(h)
            c_n.append(c)
            if self.dropout and layer < self.num_layers - 1:
                layer_in = F.dropout(layer_in, self.dropout, training=True)
        out = layer_in if self.batch_first else layer_in.transpose(0, 1)
        h_n_t, c_n_t = torch.cat(h_n), torch.cat(c_n)
        if unbatched:
            out, h_n_t, c_n_t = out.squeeze(0 if self.batch_first else 1), h_n_t.squeeze(1), c_n_t.squeeze(1)
        return (out, (h_n_t, c_n_t)) if lstm else (out, h_n_t)

    def _run_layer_unrolled(self, layer: int, x: torch.Tensor, noise: dict[tuple[int, int], SequenceNoise],
                            h0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer, every direction, with one weight draw per sequence: ``(outputs [B, T, D·H], h_n, c_n)``,
        the states ``[D, B, H]``."""
        outputs, hs, cs = [], [], []
        for d in range(self._directions):
            y, h, c = self._run_direction(layer, d, x, noise[(layer, d)], h0[d], c0[d], x.shape[1])
            outputs.append(y)
            hs.append(h)
            cs.append(c)
        return (torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]), torch.stack(hs), torch.stack(cs)

    def _run_layer_fused(self, layer: int, x: torch.Tensor, noise: dict[tuple[int, int], SequenceNoise],
                         h0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer, every direction, with one draw for the whole mini-batch, through torch's fused kernel
        (``_VF.lstm`` / ``_VF.gru``, what ``nn.LSTM`` itself calls) with the sampled weights; the group noise is
        folded into them, and ``z^h`` multiplies the layer's outputs and its ``h_n``."""
        flat, z_hs = [], []
        for d in range(self._directions):
            s, n = self._suffix(layer, d), noise[(layer, d)]
            w_ih, w_hh = n.weight_ih[0], n.weight_hh[0]
            if n.z_gate is not None:
                z_g = n.z_gate[0][:, None]
                w_ih = z_g * w_ih * n.z_input[0][None, :]
                w_hh = z_g * w_hh * n.z_hidden[0][None, :]
                z_hs.append(n.z_hidden[0])
            flat += [w_ih, w_hh]
            if self.bias:
                flat += [getattr(self, f"bias_ih{s}"), getattr(self, f"bias_hh{s}")]
        if self._cell == "LSTM":
            out, h, c = torch._VF.lstm(x, (h0, c0), flat, self.bias, 1, 0.0, True, self.bidirectional, True)
        elif self._cell == "RNN":
            kernel = torch._VF.rnn_tanh if self.nonlinearity == "tanh" else torch._VF.rnn_relu
            out, h = kernel(x, h0, flat, self.bias, 1, 0.0, True, self.bidirectional, True)
            c = c0
        else:
            out, h = torch._VF.gru(x, h0, flat, self.bias, 1, 0.0, True, self.bidirectional, True)
            c = c0
        if z_hs:  # the state the layer exposes is z^h ⊙ h, at every step and in h_n
            out = out * torch.cat(z_hs)
            h = h * torch.stack(z_hs)[:, None, :]
        return out, h, c

    def _run_direction(self, layer: int, d: int, x: torch.Tensor, noise: SequenceNoise, h: torch.Tensor,
                       c: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One layer and direction over the whole sequence: ``(outputs [B, T, H], h_n, c_n)``.

        The group noise is folded into each sequence's weight matrices once (``z^g ⊙ W ⊙ z^x``,
        ``z^g ⊙ W_hh ⊙ z^h``) and the biases into the input products, so that a time step is one fused
        matrix product plus the gate arithmetic: the loop runs ~T·(layers)·(directions) times per batch
        as small kernel launches, and their number, not arithmetic, is what a step costs on a GPU.
        """
        s = self._suffix(layer, d)
        bias_ih = getattr(self, f"bias_ih{s}") if self.bias else None
        bias_hh = getattr(self, f"bias_hh{s}") if self.bias else None
        w_ih, w_hh = noise.weight_ih, noise.weight_hh
        z_h = noise.z_hidden
        if noise.z_gate is not None:
            z_g = noise.z_gate[:, :, None]
            w_ih = z_g * w_ih * noise.z_input[:, None, :]
            w_hh = z_g * w_hh * z_h[:, None, :]  # z^h on the state that is read back
        lstm = self._cell == "LSTM"
        pre_x = torch.bmm(x, w_ih.transpose(1, 2))  # all steps at once: [B, T, G·H]
        if bias_ih is not None:
            pre_x = pre_x + (bias_ih if self._cell == "GRU" else bias_ih + bias_hh)
        w_hh_t = w_hh.transpose(1, 2)
        ys: list[torch.Tensor] = [x.new_empty(0)] * steps
        for t in (range(steps - 1, -1, -1) if d else range(steps)):
            if lstm:
                gates = torch.baddbmm(pre_x[:, t:t + 1], h.unsqueeze(1), w_hh_t).squeeze(1)
                i, f, g, o = gates.chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
            elif self._cell == "RNN":
                h = self._activation(torch.baddbmm(pre_x[:, t:t + 1], h.unsqueeze(1), w_hh_t).squeeze(1))
            else:
                gh = torch.bmm(h.unsqueeze(1), w_hh_t).squeeze(1)
                if bias_hh is not None:
                    gh = gh + bias_hh
                xr, xz, xn = pre_x[:, t].chunk(3, dim=1)
                hr, hz, hn = gh.chunk(3, dim=1)
                r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
                h = (1 - z) * torch.tanh(xn + r * hn) + z * h
            ys[t] = h
        out = torch.stack(ys, dim=1)
        if z_h is not None:  # the state the layer exposes is z^h ⊙ h, at every step and in h_n
            out, h = out * z_h[:, None, :], h * z_h
        return out, h, c

class LSTMSVD(_RecurrentVD, nn.LSTM):
    """``nn.LSTM`` with sparse variational dropout on every weight, noise drawn once per sequence."""

    mode = "LSTM"


class GRUSVD(_RecurrentVD, nn.GRU):
    """``nn.GRU`` with sparse variational dropout on every weight, noise drawn once per sequence."""

    mode = "GRU"


class RNNSVD(_RecurrentVD, nn.RNN):
    """``nn.RNN`` (tanh or ReLU) with sparse variational dropout on every weight, noise drawn once per sequence."""

    mode = "RNN"

    @classmethod
    def _dense_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return {**super()._dense_kwargs(module), "nonlinearity": module.nonlinearity}

    def _activation(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x) if self.nonlinearity == "tanh" else torch.relu(x)


class LSTMGroupVD(_RecurrentVD, nn.LSTM):
    """``nn.LSTM`` with per-weight noise plus group noise on input features, hidden units and gate rows
    (Lobacheva et al. 2018): removes whole hidden units and makes gates constant."""

    mode = "LSTM"
    group_noise = True


class GRUGroupVD(_RecurrentVD, nn.GRU):
    """``nn.GRU`` with per-weight noise plus group noise on input features, hidden units and gate rows."""

    mode = "GRU"
    group_noise = True


class _DrawCache:
    """The weight draw a cell reuses along one sequence, and the states it returned with it (held weakly).

    A cell's call is one time step, so the sequence is recognised by its state: a call whose ``hx`` is a state
    this cell returned continues that sequence and reuses its draw; any other call (``hx`` None, a fresh zero
    state, a state the caller changed) starts a new one. Never copied, pickled or saved: a copy of the layer
    starts with no draw (the drawn tensors are part of an autograd graph, which ``copy.deepcopy`` refuses)."""

    __slots__ = ("noise", "states", "plain")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.noise: tuple[torch.Tensor, torch.Tensor] | None = None
        self.states: tuple[weakref.ref, ...] = ()
        self.plain = False

    def follows(self, hx: Any) -> bool:
        """Whether ``hx`` holds a state this cell returned in its last call."""
        if self.noise is None or hx is None:
            return False
        given = hx if isinstance(hx, (tuple, list)) else (hx,)
        returned = [r() for r in self.states]
        return any(t is s for t in given for s in returned if s is not None)

    def remember(self, noise: tuple[torch.Tensor, torch.Tensor], states: tuple[torch.Tensor, ...], *,
                 plain: bool = False) -> None:
        """``noise``: the weights drawn, or with ``plain`` the masked weights of eval mode (no noise)."""
        self.noise = noise
        self.states = tuple(weakref.ref(s) for s in states)
        self.plain = plain

    def __deepcopy__(self, memo: dict) -> _DrawCache:
        return _DrawCache()

    def __reduce__(self) -> tuple:
        return (_DrawCache, ())


class _RecurrentCellVD(_WeightNoise):
    """Sparse VD on every entry of a cell's ``weight_ih`` and ``weight_hh`` (``nn.LSTMCell``, ``nn.GRUCell``,
    ``nn.RNNCell``), with the noise of :class:`_RecurrentVD`: ``w = θ + σ·ε``, the same ``log α``, KL and
    threshold, biases without noise.

    The cell runs one time step per call, in the caller's own loop. Its weights are drawn at the first step of a
    sequence and reused while the caller feeds back the state the cell returned (:class:`_DrawCache`), so that a
    weight's noise is fixed along the sequence, as for the whole-sequence layers: per sequence of the mini-batch
    (``recurrent_noise: sequence``, ``B`` weight matrices, batched products) or once per mini-batch (``batch``).
    A caller that changes the state between steps (``h = dropout(h)``, ``h.clone()``) gets a new draw at every
    step: the per-step noise of the module docstring, which trains and prunes but is not quite the model whose KL
    is paid. Eval mode runs the plain cell that :meth:`to_dense` returns.
    """

    mode: str = "LSTM"
    recurrent_noise: str = RecurrentConfig.recurrent_noise

    def _weight_names(self) -> list[str]:
        return ["weight_ih", "weight_hh"]

    @classmethod
    def _dense_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return {"input_size": module.input_size, "hidden_size": module.hidden_size, "bias": module.bias}

    @classmethod
    def from_dense(
        cls,
        module: nn.Module,
        *,
        init_log_sigma2: float = DEFAULT_INIT_LOG_SIGMA2,
        log_alpha_clip: float = DEFAULT_LOG_ALPHA_CLIP,
        threshold: float = DEFAULT_THRESHOLD,
        recurrent_noise: str = RecurrentConfig.recurrent_noise,
    ) -> _RecurrentCellVD:
        _check_noise_mode(recurrent_noise)
        layer = cls._adopt(module, ["weight_ih", "weight_hh", "bias_ih", "bias_hh"], init_log_sigma2=init_log_sigma2,
                           log_alpha_clip=log_alpha_clip, threshold=threshold, recurrent_noise=recurrent_noise)
        return layer.train(module.training)

    @property
    def _draw(self) -> _DrawCache:
        cache = self.__dict__.get("_draw_cache")
        if cache is None:
            cache = self.__dict__["_draw_cache"] = _DrawCache()
        return cache

    # -- log α and masks --------------------------------------------------------------------------------

    def parameter_keep_masks(self, threshold: float | None = None) -> dict[str, torch.Tensor]:
        t = self.threshold if threshold is None else threshold
        return {n: self.weight_log_alpha(n) <= t for n in self._weight_names()}

    def unit_keep_mask(self, threshold: float | None = None) -> torch.Tensor | None:
        return None  # per-weight noise removes no whole unit

    def kl(self) -> torch.Tensor:
        return torch.stack([kl_log_uniform(self.weight_log_alpha(n)).sum() for n in self._weight_names()]).sum()

    def to_dense(self, threshold: float | None = None) -> nn.Module:
        masks = self.parameter_keep_masks(threshold)
        with torch.device("meta"):
            dense = self.dense_type(**self._dense_kwargs(self))
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                value = getattr(self, name)
                if value is None:
                    continue
                value = value.detach() * masks[name] if name in masks else value.detach()
                setattr(dense, name, nn.Parameter(value.clone()))
        return dense.train(self.training)

    # -- forward --------------------------------------------------------------------------------------------

    def sample_weights(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One draw of ``(weight_ih, weight_hh)``: ``[batch, G·H, in]`` / ``[batch, G·H, H]`` per sequence, or
        ``[G·H, in]`` / ``[G·H, H]`` with ``batch=0`` (one draw for the mini-batch)."""
        sampled = []
        for name in self._weight_names():
            w = getattr(self, name)
            std = torch.exp(0.5 * self.weight_log_alpha(name)) * w.abs()
            shape = (batch, *w.shape) if batch else w.shape
            sampled.append(w + std * torch.randn(shape, dtype=w.dtype, device=w.device))
        return sampled[0], sampled[1]

    @staticmethod
    def _product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``x Wᵀ`` for one weight matrix ``[G·H, in]`` or one per sequence ``[B, G·H, in]``."""
        return torch.bmm(x.unsqueeze(1), w.transpose(1, 2)).squeeze(1) if w.dim() == 3 else x @ w.t()

    def forward(self, input: torch.Tensor, hx: Any = None) -> Any:
        if not self.training:
            return self._plain_forward(input, hx)
        lstm = self.mode == "LSTM"
        unbatched = input.dim() == 1
        x = input.unsqueeze(0) if unbatched else input
        zeros = x.new_zeros(x.shape[0], self.hidden_size)
        if hx is None:
            h, c = zeros, zeros
        elif lstm:
            h, c = (s.unsqueeze(0) for s in hx) if unbatched else hx
        else:
            h, c = (hx.unsqueeze(0) if unbatched else hx), zeros
        cache = self._draw
        batch = 0 if self.recurrent_noise == "batch" else x.shape[0]
        if cache.follows(hx) and not cache.plain and cache.noise[0].dim() == (3 if batch else 2) and \
                (not batch or cache.noise[0].shape[0] == batch):
            w_ih, w_hh = cache.noise
        else:
            w_ih, w_hh = self.sample_weights(batch)
        gi, gh = self._product(x, w_ih), self._product(h, w_hh)
        if self.bias:
            gi, gh = gi + self.bias_ih, gh + self.bias_hh
        if lstm:
            i, f, g, o = (gi + gh).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        elif self.mode == "GRU":
            xr, xz, xn = gi.chunk(3, dim=1)
            hr, hz, hn = gh.chunk(3, dim=1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            h = (1 - z) * torch.tanh(xn + r * hn) + z * h
        else:
            h = torch.tanh(gi + gh) if self.nonlinearity == "tanh" else torch.relu(gi + gh)
        if unbatched:
            h, c = h.squeeze(0), c.squeeze(0)
        out = (h, c) if lstm else h
        cache.remember((w_ih, w_hh), (h, c) if lstm else (h,))
        return out

    def _plain_forward(self, input: torch.Tensor, hx: Any) -> Any:
        """Eval mode: the plain cell :meth:`to_dense` returns, run by the plain type's own forward on the masked
        weights, which are computed at a sequence's first step and reused along it (as the training's draws are):
        building the plain cell at every step ran an LSTMCell(8, 64) loop 3.4× slower than the plain one."""
        cache = self._draw
        if cache.follows(hx) and cache.plain:
            w_ih, w_hh = cache.noise
        else:
            masks = self.parameter_keep_masks()
            w_ih, w_hh = (getattr(self, n).detach() * masks[n] for n in self._weight_names())
        plain = SimpleNamespace(weight_ih=w_ih, weight_hh=w_hh, hidden_size=self.hidden_size,
                                bias_ih=None if self.bias_ih is None else self.bias_ih.detach(),
                                bias_hh=None if self.bias_hh is None else self.bias_hh.detach(),
                                nonlinearity=getattr(self, "nonlinearity", None))
        out = self.dense_type.forward(plain, input, hx)  # type: ignore[arg-type]  # reads only these attributes
        cache.remember((w_ih, w_hh), tuple(out) if isinstance(out, tuple) else (out,), plain=True)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recurrent_noise={self.recurrent_noise}"


class LSTMCellSVD(_RecurrentCellVD, nn.LSTMCell):
    """``nn.LSTMCell`` with sparse variational dropout on every weight, noise fixed along a sequence."""

    mode = "LSTM"


class GRUCellSVD(_RecurrentCellVD, nn.GRUCell):
    """``nn.GRUCell`` with sparse variational dropout on every weight, noise fixed along a sequence."""

    mode = "GRU"


class RNNCellSVD(_RecurrentCellVD, nn.RNNCell):
    """``nn.RNNCell`` (tanh or ReLU) with sparse variational dropout on every weight, noise fixed along a
    sequence."""

    mode = "RNN"

    @classmethod
    def _dense_kwargs(cls, module: nn.Module) -> dict[str, Any]:
        return {**super()._dense_kwargs(module), "nonlinearity": module.nonlinearity}


register_layer("sparse_vd", nn.LSTM, LSTMSVD)
register_layer("sparse_vd", nn.GRU, GRUSVD)
register_layer("sparse_vd", nn.RNN, RNNSVD)
register_layer("sparse_vd", nn.LSTMCell, LSTMCellSVD)
register_layer("sparse_vd", nn.GRUCell, GRUCellSVD)
register_layer("sparse_vd", nn.RNNCell, RNNCellSVD)
register_layer("group_vd", nn.LSTM, LSTMGroupVD)
register_layer("group_vd", nn.GRU, GRUGroupVD)
