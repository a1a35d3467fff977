"""Variational dropout for ``nn.MultiheadAttention``: per weight (sparse VD) and per head (group VD, SBP).

``nn.MultiheadAttention`` does not call its projections as modules: its forward hands ``in_proj_weight`` (the
packed q, k, v projections) and ``out_proj.weight`` straight to ``F.multi_head_attention_forward``, so
converting ``out_proj`` as an ``nn.Linear`` would change nothing (and it is a subclass, which the convert walk
does not assume convertible). The layers here replace the whole attention module and keep its parameter
names (``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``), so that the masks of
:meth:`parameter_keep_masks` apply to the ``nn.MultiheadAttention`` that :meth:`to_dense` returns.

* :class:`MultiheadAttentionSVD` (method ``sparse_vd``): one log σ² per weight of ``in_proj_weight`` and
  ``out_proj.weight``, the additive reparameterisation and local reparameterisation trick of
  :mod:`.sparse_vd` on each projection (``μ = x·θᵀ + b``, ``s² = x²·(α·θ²)ᵀ``); softmax attention between them
  is computed on the sampled projections, as the noise is on the weights, not on the attention.
* :class:`MultiheadAttentionGroupVD` (method ``group_vd``): one ``z ~ N(1, α)`` per head multiplies that head's
  attention output (before ``out_proj``), one draw per example and head as in :mod:`.group_vd`; the
  log-uniform prior and the same KL approximation; a head whose log α exceeds the threshold outputs exactly 0.
  ``to_dense`` folds the 0/1 multiplier into the head's value rows (the head output is linear in v) and also
  zeroes its query/key rows and its ``out_proj`` columns, which no longer matter.
* :class:`MultiheadAttentionSBP` (method ``sbp``): the same per head with :mod:`.lognormal`'s truncated log-normal
  noise; a kept head's eval multiplier ``E[θ]`` is folded into its value rows, a head whose SNR is at most the
  threshold outputs exactly 0.

In eval mode both are deterministic and compute what their ``to_dense()`` (a real ``nn.MultiheadAttention``)
computes. Supported: ``kdim == vdim == embed_dim``, with or without bias, ``batch_first`` either way, batched
and unbatched inputs, ``attn_mask`` / ``key_padding_mask`` / ``is_causal``, ``need_weights``, and the nested
(ragged) batches that ``nn.TransformerEncoder`` makes from a padding mask at inference. Not supported
(:class:`PrunedropError` at conversion): ``kdim``/``vdim`` different from ``embed_dim``, ``add_bias_kv``,
``add_zero_attn``.

Heads are removed physically by :func:`prunedrop.slim.remove_heads_and_rows`, which replaces an attention
module by :class:`HeadPrunedMultiheadAttention` (fewer heads, same ``head_dim``): ``nn.MultiheadAttention``
itself cannot hold it, since it requires ``num_heads · head_dim == embed_dim``.

``nn.TransformerEncoderLayer`` has a fused inference path (``torch._transformer_encoder_layer_fwd``) that
reads ``self_attn.in_proj_weight`` and ``out_proj.weight`` directly, whatever the module's type, whenever
``self_attn._qkv_same_embed_dim`` is true (among other conditions). These modules therefore set
``_qkv_same_embed_dim = False``: the fused path would skip the noise, the masks and the removed heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PrunedropError
from .base import VariationalLayer, register_layer
from .group_vd import DEFAULT_INIT_LOG_ALPHA, GroupLogAlpha
from .lognormal import DEFAULT_INIT_LOG_SIGMA, DEFAULT_INIT_MU, LogNormalNoise
from .lognormal import DEFAULT_THRESHOLD as DEFAULT_SBP_THRESHOLD
from .sparse_vd import (
    DEFAULT_INIT_LOG_SIGMA2,
    DEFAULT_LOG_ALPHA_CLIP,
    DEFAULT_THRESHOLD,
    apply_noise,
    clipped_log_alpha,
    kl_log_uniform,
)


def check_supported(module: nn.MultiheadAttention) -> None:
    """Raise PrunedropError for the ``nn.MultiheadAttention`` settings these layers do not implement."""
    problems = unsupported_settings(module)
    if problems:
        raise PrunedropError(
            f"nn.MultiheadAttention with {', '.join(problems)} is not supported by prunedrop's attention layers; "
            "leave it dense with the recipe's exclude globs"
        )


def unsupported_settings(module: nn.MultiheadAttention) -> list[str]:
    """The ``nn.MultiheadAttention`` settings these layers do not implement, in words."""
    problems = []
    if not module._qkv_same_embed_dim:
        problems.append(f"kdim/vdim ({module.kdim}/{module.vdim}) different from embed_dim ({module.embed_dim})")
    if module.bias_k is not None:
        problems.append("add_bias_kv=True")
    if module.add_zero_attn:
        problems.append("add_zero_attn=True")
    return problems


def float_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """nn.MultiheadAttention's mask convention: a bool mask is True where attention is not allowed (−inf), a
    float mask is added to the scores."""
    if mask is None or mask.is_floating_point():
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))


class _Attention(nn.Module):
    """Multi-head attention computed from explicit projections, shared by the variational and the slim modules.

    Written with matmul/softmax rather than ``F.multi_head_attention_forward`` because the projections are
    sampled (training) or have fewer heads than ``embed_dim / head_dim`` (slim), and so that the ONNX export
    is a plain MatMul/Softmax graph.
    """

    # See the module docstring: keeps nn.TransformerEncoder(Layer)'s fused path from bypassing this module.
    _qkv_same_embed_dim = False

    embed_dim: int
    num_heads: int
    head_dim: int
    batch_first: bool
    dropout: float
    in_proj_weight: nn.Parameter
    in_proj_bias: nn.Parameter | None
    out_proj: nn.Linear

    def _init_attention(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool, batch_first: bool,
                        dropout: float) -> None:
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.batch_first, self.dropout = batch_first, float(dropout)
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias)

    # Subclasses say how a projection is applied (sampled or not) and what multiplies each head's output.
    def _project_in(self, x: torch.Tensor, part: int) -> torch.Tensor:
        raise NotImplementedError

    def _project_out(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _head_scale(self, batch: int) -> torch.Tensor | None:
        return None

    def _in_slice(self, part: int) -> slice:
        inner = self.num_heads * self.head_dim
        return slice(part * inner, (part + 1) * inner)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Same arguments and results as ``nn.MultiheadAttention.forward``."""
        if query.is_nested:
            return self._forward_nested(query, key, value, need_weights=need_weights, attn_mask=attn_mask,
                                        average_attn_weights=average_attn_weights, is_causal=is_causal)
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        out, weights = self._attend(query, key, value, attn_mask, key_padding_mask, is_causal)
        if unbatched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights.squeeze(0) if unbatched else weights

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
                key_padding_mask: torch.Tensor | None, is_causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention of batched, batch-first inputs: (output, weights per head). It branches on the masks
        (their dtype and rank) but on no input, so that ``prunedrop.fxtrace`` traces a head-pruned attention
        through it with masks it knows."""
        batch, tgt, src = query.shape[0], query.shape[1], key.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self._project_in(query, 0).reshape(batch, tgt, h, d).transpose(1, 2)
        k = self._project_in(key, 1).reshape(batch, src, h, d).transpose(1, 2)
        v = self._project_in(value, 2).reshape(batch, src, h, d).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(d)
        mask = float_mask(attn_mask, scores.dtype)
        if mask is None and is_causal:
            mask = torch.full((tgt, src), float("-inf"), dtype=scores.dtype, device=scores.device).triu(1)
        if mask is not None:
            scores = scores + (mask.reshape(batch, h, tgt, src) if mask.dim() == 3 else mask)
        padding = float_mask(key_padding_mask, scores.dtype)
        if padding is not None:
            scores = scores + padding.reshape(batch, 1, 1, src)
        weights = torch.softmax(scores, dim=-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, p=self.dropout)
        context = torch.matmul(weights, v)
        scale = self._head_scale(batch)
        if scale is not None:
            context = context * scale
        return self._project_out(context.transpose(1, 2).reshape(batch, tgt, h * d)), weights

    def _forward_nested(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, need_weights: bool,
                        attn_mask: torch.Tensor | None, average_attn_weights: bool,
                        is_causal: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Self-attention on a nested (ragged) batch, which nn.TransformerEncoder builds from
        ``src_key_padding_mask`` on its inference path: padded, attended with the padding masked, unpadded."""
        if key is not query or value is not query or need_weights or not self.batch_first:
            raise PrunedropError(
                "a nested-tensor batch reached a prunedrop attention layer outside batch-first self-attention; "
                "set use_nested_tensor = False on the enclosing nn.TransformerEncoder"
            )
        lengths = [t.shape[0] for t in query.unbind()]
        padded = query.to_padded_tensor(0.0)
        positions = torch.arange(padded.shape[1], device=padded.device)
        padding = positions[None, :] >= torch.tensor(lengths, device=padded.device)[:, None]
        out, _ = self.forward(padded, padded, padded, key_padding_mask=padding, need_weights=False,
                              attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        return torch.nested.as_nested_tensor([out[i, :n] for i, n in enumerate(lengths)]), None

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}, "
                f"batch_first={self.batch_first}")


class HeadPrunedMultiheadAttention(_Attention):
    """The plain attention module after head removal: ``num_heads`` heads of ``head_dim`` each, where
    ``num_heads · head_dim`` may be smaller than ``embed_dim`` (which ``nn.MultiheadAttention`` forbids).

    Parameters keep ``nn.MultiheadAttention``'s names and layout: ``in_proj_weight`` is ``[3·H·d, embed_dim]``
    (the kept heads' q rows, then k rows, then v rows), ``out_proj`` maps ``H·d → embed_dim``.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, *, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0):
        super().__init__()
        self._init_attention(embed_dim, num_heads, head_dim, bias, batch_first, dropout)

    def _project_in(self, x: torch.Tensor, part: int) -> torch.Tensor:
        s = self._in_slice(part)
        return F.linear(x, self.in_proj_weight[s], None if self.in_proj_bias is None else self.in_proj_bias[s])

    def _project_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(x)


def is_attention(module: nn.Module) -> bool:
    """``nn.MultiheadAttention``, or one of the attention layers here (variational or head-pruned), which keep its
    parameter names, ``num_heads``, ``head_dim`` and ``out_proj``."""
    return isinstance(module, (nn.MultiheadAttention, _Attention))


def prune_heads(module: nn.Module, keep: list[int]) -> HeadPrunedMultiheadAttention:
    """A :class:`HeadPrunedMultiheadAttention` holding only heads ``keep`` of an ``nn.MultiheadAttention`` (or
    of a :class:`HeadPrunedMultiheadAttention`): their q, k and v rows and their ``out_proj`` columns."""
    d, h = module.head_dim, module.num_heads
    inner = h * d
    units = torch.tensor([head * d + i for head in keep for i in range(d)], dtype=torch.long)
    rows = torch.cat([units + part * inner for part in range(3)])
    slim = HeadPrunedMultiheadAttention(module.embed_dim, len(keep), d, bias=module.in_proj_bias is not None,
                                        batch_first=module.batch_first, dropout=module.dropout)
    with torch.no_grad():
        slim.in_proj_weight = nn.Parameter(module.in_proj_weight.detach()[rows].clone())
        if module.in_proj_bias is not None:
            slim.in_proj_bias = nn.Parameter(module.in_proj_bias.detach()[rows].clone())
        slim.out_proj.weight = nn.Parameter(module.out_proj.weight.detach()[:, units].clone())
        if module.out_proj.bias is not None:
            slim.out_proj.bias = nn.Parameter(module.out_proj.bias.detach().clone())
    return slim.to(module.in_proj_weight.device).train(module.training)


@torch.no_grad()
def silent_heads(module: nn.Module) -> list[int]:
    """Heads whose contribution to the output is exactly zero, read from the weights: their value rows and value
    bias are all zero (the head outputs 0 whatever it attends to), or their ``out_proj`` columns are all zero."""
    d, inner = module.head_dim, module.num_heads * module.head_dim
    value_rows = module.in_proj_weight[2 * inner:].reshape(module.num_heads, d, -1)
    silent_value = value_rows.flatten(1).abs().amax(dim=1) == 0
    if module.in_proj_bias is not None:
        silent_value &= module.in_proj_bias[2 * inner:].reshape(module.num_heads, d).abs().amax(dim=1) == 0
    columns = module.out_proj.weight.reshape(module.embed_dim, module.num_heads, d)
    silent_out = columns.abs().amax(dim=(0, 2)) == 0
    return torch.nonzero(silent_value | silent_out).flatten().tolist()


class _VariationalAttention(_Attention, VariationalLayer):
    """What both noise families share: taking over an ``nn.MultiheadAttention`` and building one back."""

    dense_type = nn.MultiheadAttention

    def __init__(self, embed_dim: int, num_heads: int, *, bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self._init_attention(embed_dim, num_heads, embed_dim // num_heads, bias, batch_first, dropout)

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        problems = unsupported_settings(module) if isinstance(module, nn.MultiheadAttention) else []
        return f"{', '.join(problems)} not supported by the attention layers" if problems else None

    @classmethod
    def _take_over(cls, module: nn.Module) -> _VariationalAttention:
        if not isinstance(module, nn.MultiheadAttention):
            raise TypeError(f"{cls.__name__} converts nn.MultiheadAttention, not {type(module).__name__}")
        check_supported(module)
        # on the meta device: the trained Parameters are taken over below, never copied
        with torch.device("meta"):
            layer = cls(module.embed_dim, module.num_heads, bias=module.in_proj_bias is not None,
                        batch_first=module.batch_first, dropout=module.dropout)
        layer.in_proj_weight = module.in_proj_weight
        layer.in_proj_bias = module.in_proj_bias
        layer.out_proj.weight = module.out_proj.weight
        layer.out_proj.bias = module.out_proj.bias
        return layer

    def _dense_attention(self, in_weight: torch.Tensor, in_bias: torch.Tensor | None, out_weight: torch.Tensor,
                         out_bias: torch.Tensor | None) -> nn.MultiheadAttention:
        with torch.device("meta"):
            dense = nn.MultiheadAttention(self.embed_dim, self.num_heads, dropout=self.dropout,
                                          bias=self.in_proj_bias is not None, batch_first=self.batch_first)
        dense.in_proj_weight = nn.Parameter(in_weight.detach().clone())
        dense.in_proj_bias = None if in_bias is None else nn.Parameter(in_bias.detach().clone())
        dense.out_proj.weight = nn.Parameter(out_weight.detach().clone())
        dense.out_proj.bias = None if out_bias is None else nn.Parameter(out_bias.detach().clone())
        return dense.train(self.training)

    def unit_keep_mask(self, threshold: float | None = None) -> torch.Tensor | None:
        # Heads are removed by prunedrop.slim.remove_heads_and_rows, not by the per-unit (Torch-Pruning) slimming.
        return None


class MultiheadAttentionSVD(_VariationalAttention):
    """``nn.MultiheadAttention`` with sparse variational dropout on every projection weight (q, k, v and out)."""

    in_proj_log_sigma2: nn.Parameter
    out_proj_log_sigma2: nn.Parameter

    @classmethod
    def from_dense(
        cls,
        module: nn.Module,
        *,
        init_log_sigma2: float = DEFAULT_INIT_LOG_SIGMA2,
        log_alpha_clip: float = DEFAULT_LOG_ALPHA_CLIP,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> MultiheadAttentionSVD:
        layer = cls._take_over(module)
        layer.in_proj_log_sigma2 = nn.Parameter(torch.full_like(layer.in_proj_weight, float(init_log_sigma2)))
        layer.out_proj_log_sigma2 = nn.Parameter(torch.full_like(layer.out_proj.weight, float(init_log_sigma2)))
        layer.log_alpha_clip = float(log_alpha_clip)
        layer.threshold = float(threshold)
        return layer.train(module.training)

    def _log_alpha_of(self, weight: torch.Tensor, log_sigma2: torch.Tensor) -> torch.Tensor:
        return clipped_log_alpha(weight, log_sigma2, self.log_alpha_clip)

    @property
    def in_proj_log_alpha(self) -> torch.Tensor:
        return self._log_alpha_of(self.in_proj_weight, self.in_proj_log_sigma2)

    @property
    def out_proj_log_alpha(self) -> torch.Tensor:
        return self._log_alpha_of(self.out_proj.weight, self.out_proj_log_sigma2)

    @property
    def log_alpha(self) -> torch.Tensor:
        """Every weight's clipped log α, in_proj then out_proj, flat (for histograms)."""
        return torch.cat([self.in_proj_log_alpha.flatten(), self.out_proj_log_alpha.flatten()])

    def kl(self) -> torch.Tensor:
        return kl_log_uniform(self.in_proj_log_alpha).sum() + kl_log_uniform(self.out_proj_log_alpha).sum()

    def keep_mask(self, threshold: float | None = None) -> torch.Tensor:
        """Per weight, flat: in_proj_weight then out_proj.weight (:meth:`parameter_keep_masks` has the shapes)."""
        masks = self.parameter_keep_masks(threshold)
        return torch.cat([masks["in_proj_weight"].flatten(), masks["out_proj.weight"].flatten()])

    def parameter_keep_masks(self, threshold: float | None = None) -> dict[str, torch.Tensor]:
        t = self.threshold if threshold is None else threshold
        return {"in_proj_weight": self.in_proj_log_alpha <= t, "out_proj.weight": self.out_proj_log_alpha <= t}

    def noise_parameters(self) -> list[nn.Parameter]:
        return [self.in_proj_log_sigma2, self.out_proj_log_sigma2]

    def _sampled(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 log_alpha: torch.Tensor) -> torch.Tensor:
        """The local reparameterisation trick of :mod:`.sparse_vd` (the bias stays out of the variance)."""
        mu = F.linear(x, weight, bias)
        var = F.linear(x * x, torch.exp(log_alpha) * weight * weight)
        return apply_noise(mu, var, torch.randn_like(mu))

    def _project_in(self, x: torch.Tensor, part: int) -> torch.Tensor:
        s = self._in_slice(part)
        weight, bias = self.in_proj_weight[s], None if self.in_proj_bias is None else self.in_proj_bias[s]
        log_alpha = self._log_alpha_of(weight, self.in_proj_log_sigma2[s])
        if not self.training:
            return F.linear(x, weight * (log_alpha <= self.threshold), bias)
        return self._sampled(x, weight, bias, log_alpha)

    def _project_out(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.out_proj.weight * (self.out_proj_log_alpha <= self.threshold), self.out_proj.bias)
        return self._sampled(x, self.out_proj.weight, self.out_proj.bias, self.out_proj_log_alpha)

    def to_dense(self, threshold: float | None = None) -> nn.MultiheadAttention:
        with torch.no_grad():
            masks = self.parameter_keep_masks(threshold)
            return self._dense_attention(self.in_proj_weight * masks["in_proj_weight"], self.in_proj_bias,
                                         self.out_proj.weight * masks["out_proj.weight"], self.out_proj.bias)


class _PerHead(_VariationalAttention):
    """What the per-head noise families share: the noise multiplies each head's attention output (before
    ``out_proj``), one draw per example and head; a pruned head loses its q, k and v rows and its ``out_proj``
    columns, and ``to_dense`` folds the eval multiplier into the value rows (the head output is linear in v)."""

    def _eval_head_multiplier(self, threshold: float | None) -> torch.Tensor:
        """Per head: what multiplies its output in eval mode (0 where pruned)."""
        raise NotImplementedError

    def _sample_head_multiplier(self, batch: int) -> torch.Tensor:
        """``[batch, heads, 1, 1]``: a draw per example and head."""
        raise NotImplementedError

    def parameter_keep_masks(self, threshold: float | None = None) -> dict[str, torch.Tensor]:
        """A pruned head loses its q, k and v rows (and biases) and its out_proj columns."""
        per_unit = self.keep_mask(threshold).repeat_interleave(self.head_dim)
        rows = per_unit.repeat(3)
        masks = {"in_proj_weight": rows[:, None].expand_as(self.in_proj_weight).clone(),
                 "out_proj.weight": per_unit[None, :].expand_as(self.out_proj.weight).clone()}
        if self.in_proj_bias is not None:
            masks["in_proj_bias"] = rows.clone()
        return masks

    def _project_in(self, x: torch.Tensor, part: int) -> torch.Tensor:
        s = self._in_slice(part)
        return F.linear(x, self.in_proj_weight[s], None if self.in_proj_bias is None else self.in_proj_bias[s])

    def _project_out(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(x)

    def _head_scale(self, batch: int) -> torch.Tensor:
        """``[batch or 1, heads, 1, 1]``: a draw per example and head (training), else the eval multiplier."""
        if not self.training:
            return self._eval_head_multiplier(None).to(self.in_proj_weight.dtype).reshape(1, -1, 1, 1)
        return self._sample_head_multiplier(batch)

    def to_dense(self, threshold: float | None = None) -> nn.MultiheadAttention:
        with torch.no_grad():
            masks = self.parameter_keep_masks(threshold)
            inner = self.num_heads * self.head_dim
            value = torch.ones(3 * inner, dtype=self.in_proj_weight.dtype, device=self.in_proj_weight.device)
            value[2 * inner:] = self._eval_head_multiplier(threshold).repeat_interleave(self.head_dim)
            bias = None if self.in_proj_bias is None else self.in_proj_bias * masks["in_proj_bias"] * value
            return self._dense_attention(self.in_proj_weight * masks["in_proj_weight"] * value[:, None], bias,
                                         self.out_proj.weight * masks["out_proj.weight"], self.out_proj.bias)


class MultiheadAttentionGroupVD(GroupLogAlpha, _PerHead):
    """``nn.MultiheadAttention`` with Gaussian multiplicative noise on every head's output (group VD per head)."""

    @classmethod
    def from_dense(
        cls,
        module: nn.Module,
        *,
        init_log_alpha: float = DEFAULT_INIT_LOG_ALPHA,
        log_alpha_clip: float = DEFAULT_LOG_ALPHA_CLIP,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> MultiheadAttentionGroupVD:
        layer = cls._take_over(module)
        layer._init_group_noise(layer.num_heads, layer.in_proj_weight, init_log_alpha=init_log_alpha,
                                log_alpha_clip=log_alpha_clip, threshold=threshold)
        return layer.train(module.training)

    def _eval_head_multiplier(self, threshold: float | None) -> torch.Tensor:
        return self.keep_mask(threshold).to(self.in_proj_weight.dtype)

    def _sample_head_multiplier(self, batch: int) -> torch.Tensor:
        # exp(log α / 2) rather than sqrt(exp(log α)): no sqrt gradient blow-up near 0 (as in group_vd)
        std = torch.exp(0.5 * self.log_alpha).reshape(1, -1, 1, 1)
        return 1 + std * torch.randn(batch, self.num_heads, 1, 1, dtype=std.dtype, device=std.device)


class MultiheadAttentionSBP(LogNormalNoise, _PerHead):
    """``nn.MultiheadAttention`` with log-normal multiplicative noise on every head's output (structured Bayesian
    pruning per head, :mod:`.lognormal`): ``log θ ~ N(μ, σ²)`` truncated to [−20, 0] per head, its KL to the
    log-uniform prior, a head kept where its SNR exceeds the threshold; in eval mode a kept head's output is
    multiplied by ``E[θ]``, which ``to_dense`` folds into its value rows."""

    @classmethod
    def from_dense(
        cls,
        module: nn.Module,
        *,
        init_mu: float = DEFAULT_INIT_MU,
        init_log_sigma: float = DEFAULT_INIT_LOG_SIGMA,
        threshold: float = DEFAULT_SBP_THRESHOLD,
    ) -> MultiheadAttentionSBP:
        layer = cls._take_over(module)
        layer._init_lognormal(layer.num_heads, layer.in_proj_weight, init_mu=init_mu, init_log_sigma=init_log_sigma,
                              threshold=threshold)
        return layer.train(module.training)

    def _eval_head_multiplier(self, threshold: float | None) -> torch.Tensor:
        return self._eval_multiplier(threshold).to(self.in_proj_weight.dtype)

    def _sample_head_multiplier(self, batch: int) -> torch.Tensor:
        return self._sample_multiplier([batch, self.num_heads, 1, 1], 1).to(self.in_proj_weight.dtype)


register_layer("sparse_vd", nn.MultiheadAttention, MultiheadAttentionSVD)
register_layer("group_vd", nn.MultiheadAttention, MultiheadAttentionGroupVD)
register_layer("sbp", nn.MultiheadAttention, MultiheadAttentionSBP)
