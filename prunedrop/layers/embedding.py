"""Variational dropout on ``nn.Embedding``: one learned noise level per vocabulary row.

A token's row is only ever used whole, so the noise that can remove something is per row: every looked-up row
is multiplied by ``z ~ N(1, α_row)`` (one draw per lookup, shared by the row's features), with the log-uniform
prior and the KL approximation of sparse VD (Molchanov et al. 2017), exactly as :mod:`.group_vd` does per unit.
A row that the data never looks up gets no gradient from the data term, only from the KL, which pushes its
log α up: unused vocabulary is what this layer prunes first.

* training: ``e = W[id] · (1 + exp(log α[id] / 2)·ε)``; ``log α`` starts at ``init_log_alpha`` (−8);
* eval: deterministic, ``W[id] · [log α[id] ≤ threshold]`` (default 3); ``to_dense`` returns an
  ``nn.Embedding`` whose pruned rows are zero;
* the KL is summed over rows.

Pruned rows are removed physically by :func:`prunedrop.slim.remove_heads_and_rows`, which replaces the
embedding by :class:`RemappedEmbedding`: the kept rows plus one shared zero row, and a buffer ``index_map``
(original token id → row) that the forward applies first. The slim model, its state dict and its ONNX graph
(a Gather into ``index_map``, then the embedding's Gather) therefore still take the *original* token ids and
give the same outputs; ``index_map`` is the saved vocabulary remapping (a removed id maps to the zero row,
``index_map[id] == num_kept``).

``nn.EmbeddingBag`` (:class:`EmbeddingBagSVD`) gets the same noise per row, drawn per lookup before the bag's sum
or mean (as ``per_sample_weights``; a mean divides by the bag's count of non-padding ids, as the layer does), and its
zero rows leave as :class:`RemappedEmbeddingBag`'s. ``mode="max"`` is not supported (the noise would have to
multiply each row before the maximum, which ``F.embedding_bag`` cannot weight).

Registered for both ``sparse_vd`` and ``group_vd``: per row is the only grouping that removes anything.
``max_norm`` (which renormalises the weight in place on every lookup) is not supported.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PrunedropError
from .base import VariationalLayer, register_layer
from .group_vd import DEFAULT_INIT_LOG_ALPHA, GroupLogAlpha
from .sparse_vd import DEFAULT_LOG_ALPHA_CLIP, DEFAULT_THRESHOLD


def _embedding_kwargs(module: nn.Module) -> dict[str, Any]:
    return {"num_embeddings": module.num_embeddings, "embedding_dim": module.embedding_dim,
            "padding_idx": module.padding_idx, "max_norm": module.max_norm, "norm_type": module.norm_type,
            "scale_grad_by_freq": module.scale_grad_by_freq, "sparse": module.sparse}


def _embedding_bag_kwargs(module: nn.Module) -> dict[str, Any]:
    return {**_embedding_kwargs(module), "mode": module.mode, "include_last_offset": module.include_last_offset}


class _RowNoise(GroupLogAlpha, VariationalLayer):
    """What the embedding and the embedding bag share: one log α per vocabulary row, masks per row, the plain layer
    back with the pruned rows zero. Rows are vocabulary entries, not output units: they leave by remapping
    (:func:`remove_zero_rows`), not by Torch-Pruning."""

    _dense_type: type[nn.Module]
    _kwargs: Any  # the plain layer's constructor arguments, read from a layer

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        if getattr(module, "max_norm", None) is not None:
            return f"max_norm (it renormalises rows in place on every lookup) not supported by {cls.__name__}"
        return None

    @classmethod
    def from_dense(
        cls,
        module: nn.Module,
        *,
        init_log_alpha: float = DEFAULT_INIT_LOG_ALPHA,
        log_alpha_clip: float = DEFAULT_LOG_ALPHA_CLIP,
        threshold: float = DEFAULT_THRESHOLD,
    ) -> Any:
        reason = cls.unsupported(module)
        if reason is not None:
            raise PrunedropError(f"nn.{cls._dense_type.__name__} with {reason}; leave it dense with the recipe's "
                                 "exclude globs")
        with torch.device("meta"):
            layer = cls(**cls._kwargs(module))
        layer.weight = module.weight
        layer._init_group_noise(module.num_embeddings, module.weight, init_log_alpha=init_log_alpha,
                                log_alpha_clip=log_alpha_clip, threshold=threshold)
        return layer.train(module.training)

    def unit_keep_mask(self, threshold: float | None = None) -> torch.Tensor | None:
        return None

    def parameter_keep_masks(self, threshold: float | None = None) -> dict[str, torch.Tensor]:
        return {"weight": self.keep_mask(threshold)[:, None].expand_as(self.weight).clone()}

    def _kept_weight(self, threshold: float | None = None) -> torch.Tensor:
        return self.weight * self.keep_mask(threshold)[:, None].to(self.weight.dtype)

    def to_dense(self, threshold: float | None = None) -> nn.Module:
        with torch.no_grad():
            with torch.device("meta"):
                dense = self._dense_type(**self._kwargs(self))
            dense.weight = nn.Parameter(self._kept_weight(threshold).detach().clone())
            return dense.train(self.training)

    def extra_repr(self) -> str:
        return f"{self._dense_type.extra_repr(self)}, threshold={self.threshold}"


class EmbeddingSVD(_RowNoise, nn.Embedding):
    """``nn.Embedding`` with Gaussian multiplicative noise on every vocabulary row (one log α per row)."""

    _dense_type = nn.Embedding
    _kwargs = staticmethod(_embedding_kwargs)

    def _lookup(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, weight, self.padding_idx, None, self.norm_type, self.scale_grad_by_freq,
                           self.sparse)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self._lookup(ids, self._kept_weight())
        rows = self._lookup(ids, self.weight)
        std = torch.exp(0.5 * self.log_alpha)[ids].unsqueeze(-1)
        return rows * (1 + std * torch.randn_like(std))


class EmbeddingBagSVD(_RowNoise, nn.EmbeddingBag):
    """``nn.EmbeddingBag`` (``mode`` sum or mean) with Gaussian multiplicative noise on every vocabulary row (one
    log α per row), drawn once per lookup: ``Σ_i w_i · (1 + exp(log α[id_i] / 2)·ε_i) · W[id_i]`` over a bag (÷ its
    count of non-padding ids for a mean), with the user's ``per_sample_weights`` ``w_i`` where given."""

    _dense_type = nn.EmbeddingBag
    _kwargs = staticmethod(_embedding_bag_kwargs)

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        if getattr(module, "mode", "sum") not in ("sum", "mean"):
            return (f"mode={module.mode!r} not supported by EmbeddingBagSVD (the noise multiplies each row before "
                    "the bag's reduction, which only a sum or a mean can weight)")
        return super().unsupported(module)

    def _bag(self, ids: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor | None,
             per_sample_weights: torch.Tensor | None, mode: str) -> torch.Tensor:
        return F.embedding_bag(ids, weight, offsets, None, self.norm_type, self.scale_grad_by_freq, mode,
                               self.sparse, per_sample_weights, self.include_last_offset, self.padding_idx)

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training:
            return self._bag(input, self._kept_weight(), offsets, per_sample_weights, self.mode)
        if per_sample_weights is not None and self.mode != "sum":  # as nn.EmbeddingBag says it
            raise NotImplementedError("embedding_bag: per_sample_weights was not None. per_sample_weights is only "
                                      f"supported for mode='sum' (got mode='{self.mode}'). Please open a feature "
                                      "request on GitHub.")
        std = torch.exp(0.5 * self.log_alpha)[input]
        noise = 1 + std * torch.randn_like(std)
        out = self._bag(input, self.weight, offsets, noise if per_sample_weights is None else noise * per_sample_weights,
                        "sum")
        if self.mode == "mean":  # ÷ the bag's count of non-padding ids, as the layer's own mean (a stride-0 table)
            ones = self.weight.new_ones(1, 1).expand(self.num_embeddings, 1)
            out = out / self._bag(input, ones, offsets, None, "sum").clamp(min=1)
        return out


class RemappedEmbedding(nn.Module):
    """An embedding with rows removed, still indexed by the original token ids.

    ``index_map`` (a buffer, so it is in the state dict and in the ONNX graph) maps every original id to its row
    in ``embedding``; removed ids share one zero row, exactly what the masked model looked up. :func:`remove_zero_rows`
    puts that row first, so that the map is mostly zeros and the ONNX file stores it sparsely
    (:func:`prunedrop.export.sparse.lookup_tables`); a map saved with the zero row last reads as well.
    """

    def __init__(self, index_map: torch.Tensor, embedding: nn.Embedding):
        super().__init__()
        self.register_buffer("index_map", index_map.to(torch.long))
        self.embedding = embedding

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # a lookup in a one-column table rather than index_map[ids]: the same Gather in ONNX, and a function that
        # the architecture manifest (prunedrop.storage) allows, so the slim model reloads without its class
        return self.embedding(F.embedding(ids, self.index_map.unsqueeze(1)).squeeze(-1))


class RemappedEmbeddingBag(nn.Module):
    """An embedding bag with rows removed, still indexed by the original ids: :class:`RemappedEmbedding`'s map,
    then the bag (``offsets`` and ``per_sample_weights`` as ``nn.EmbeddingBag`` takes them). A removed id looks up
    the shared zero row, which a mean counts as the masked model's zeroed row was counted; the padding row keeps
    its own row, so that a mean still leaves the padding ids out of its count."""

    def __init__(self, index_map: torch.Tensor, embedding: nn.EmbeddingBag):
        super().__init__()
        self.register_buffer("index_map", index_map.to(torch.long))
        self.embedding = embedding

    def forward(self, input: torch.Tensor, offsets: torch.Tensor | None = None,
                per_sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        return self.embedding(F.embedding(input, self.index_map.unsqueeze(1)).squeeze(-1), offsets,
                              per_sample_weights)


@torch.no_grad()
def remove_zero_rows(module: nn.Embedding | nn.EmbeddingBag) -> RemappedEmbedding | RemappedEmbeddingBag | None:
    """The embedding (or embedding bag) without its all-zero rows, as a :class:`RemappedEmbedding`
    (:class:`RemappedEmbeddingBag`); None when fewer than two rows are zero (nothing to save) or the layer has
    ``max_norm``.

    The rows are read from the weights (a pruned row is zero in the masked model), so the result is exact by
    construction. The padding row, if any, keeps its role through ``padding_idx`` in the new numbering (a bag's
    keeps a row of its own even when zero: a bag's mean leaves the padding ids out of its count, and would leave the
    removed ids out with them).
    """
    weight = module.weight.detach()
    zero = weight.abs().amax(dim=1) == 0
    bag = isinstance(module, nn.EmbeddingBag)
    if bag and module.padding_idx is not None:
        zero[module.padding_idx] = False
    if int(zero.sum()) < 2 or module.max_norm is not None:
        return None  # one zero row is replaced by the shared zero row: nothing saved
    kept = torch.nonzero(~zero).flatten()
    # row 0 is the shared zero row: the removed ids (most of a large vocabulary) map to 0, a map stored sparsely
    index_map = torch.zeros(module.num_embeddings, dtype=torch.long, device=weight.device)
    index_map[kept] = torch.arange(1, len(kept) + 1, device=weight.device)
    padding_idx = None if module.padding_idx is None else int(index_map[module.padding_idx])
    rows = torch.cat([weight.new_zeros(1, module.embedding_dim), weight[kept]])
    if bag:
        slim_bag = nn.EmbeddingBag(len(kept) + 1, module.embedding_dim, norm_type=module.norm_type,
                                   scale_grad_by_freq=module.scale_grad_by_freq, mode=module.mode,
                                   sparse=module.sparse, include_last_offset=module.include_last_offset,
                                   padding_idx=padding_idx, device=weight.device, dtype=weight.dtype)
        slim_bag.weight.copy_(rows)
        return RemappedEmbeddingBag(index_map, slim_bag.train(module.training))
    slim = nn.Embedding(len(kept) + 1, module.embedding_dim, padding_idx=padding_idx, norm_type=module.norm_type,
                        scale_grad_by_freq=module.scale_grad_by_freq, sparse=module.sparse,
                        device=weight.device, dtype=weight.dtype)
    slim.weight.copy_(rows)
    return RemappedEmbedding(index_map, slim.train(module.training))


for _method in ("sparse_vd", "group_vd"):
    register_layer(_method, nn.Embedding, EmbeddingSVD)
    register_layer(_method, nn.EmbeddingBag, EmbeddingBagSVD)
