"""Removing silent attention heads and all-zero embedding rows (:func:`remove_heads_and_rows`): no dependency
graph needed, each belongs to its own module.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from ..compare import scaled_tolerance
from ..data.token_ids import EMBEDDINGS
from ..errors import PrunedropError
from .common import max_abs_diff


@dataclass
class HeadsAndRowsResult:
    """What :func:`remove_heads_and_rows` did."""

    model: nn.Module
    """The model with silent heads and zero embedding rows removed, in eval mode."""
    heads: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Attention module name → (heads before, after), for every attention module looked at."""
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Embedding name → (rows before, rows after without the shared zero row), for every remapped embedding."""
    max_abs_diff: float = 0.0
    """Measured max |before − after| on the example input, in eval mode."""


def remove_heads_and_rows(model: nn.Module, example_input: torch.Tensor, *, atol: float = 1e-5) -> HeadsAndRowsResult:
    """Remove attention heads and embedding rows that contribute exactly zero, read from the weights.

    Neither needs a dependency graph: a head's q, k, v rows and ``out_proj`` columns belong to its attention
    module alone (the module's output width, ``embed_dim``, does not change), and an embedding row is only read by
    its own lookup. So this runs on the masked deterministic model (or on the output of :func:`slim`) after any
    noise family:

    * an ``nn.MultiheadAttention`` (or an already head-pruned one) whose silent heads (value rows and bias zero,
      or ``out_proj`` columns zero: :func:`prunedrop.layers.attention.silent_heads`) become a
      :class:`~prunedrop.layers.HeadPrunedMultiheadAttention` with the other heads (at least one stays);
    * an ``nn.Embedding`` with two or more all-zero rows becomes a :class:`~prunedrop.layers.RemappedEmbedding`:
      kept rows plus one zero row, indexed through the saved ``index_map`` by the original token ids (an
      ``nn.EmbeddingBag`` a :class:`~prunedrop.layers.RemappedEmbeddingBag`).

    ``model`` is not modified. The result is checked against ``model`` on ``example_input``; a difference above
    ``atol`` raises :class:`PrunedropError`.
    """
    from ..layers.attention import HeadPrunedMultiheadAttention, prune_heads, silent_heads
    from ..layers.embedding import remove_zero_rows

    if not any(isinstance(m, (nn.MultiheadAttention, HeadPrunedMultiheadAttention, *EMBEDDINGS))
               for m in model.modules()):
        return HeadsAndRowsResult(model=model)  # no copy of a model that has nothing of the kind
    work = copy.deepcopy(model).eval()
    heads: dict[str, tuple[int, int]] = {}
    rows: dict[str, tuple[int, int]] = {}
    for name, module in list(work.named_modules()):
        replacement: nn.Module | None = None
        if isinstance(module, (nn.MultiheadAttention, HeadPrunedMultiheadAttention)):
            if isinstance(module, nn.MultiheadAttention) and (
                not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn
            ):
                continue  # settings the head-pruned module does not implement
            silent = set(silent_heads(module))
            keep = [h for h in range(module.num_heads) if h not in silent] or [0]
            heads[name] = (module.num_heads, len(keep))
            if len(keep) < module.num_heads:
                replacement = prune_heads(module, keep)
        elif isinstance(module, EMBEDDINGS):
            replacement = remove_zero_rows(module)
            if replacement is not None:
                rows[name] = (module.num_embeddings, replacement.embedding.num_embeddings - 1)
        if replacement is not None:
            if not name:
                work = replacement.eval()
            else:
                parent, _, child = name.rpartition(".")
                setattr(work.get_submodule(parent), child, replacement.eval())
    with torch.no_grad():
        want = model.eval()(example_input)
        diff = max_abs_diff(want, work(example_input))
    allowed = scaled_tolerance(atol, want)
    if not diff <= allowed:
        raise PrunedropError(
            f"removing attention heads / embedding rows changed the output by {diff:.3g} (> {allowed:.3g}) on the "
            "example input; this is a bug in prunedrop's slim stage, please report it"
        )
    return HeadsAndRowsResult(model=work, heads=heads, rows=rows, max_abs_diff=diff)
