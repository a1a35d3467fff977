"""Constant folding: what a removed, input-independent channel leaves in each consumer (measured on the example
input), whether a bias can hold it exactly, and adding it to the bias.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .common import CONV_TRANSPOSE, RECURRENT_READERS, input_names, input_weights, out_units, reads_channels

# How many input channels' contributions one grouped convolution computes at once (bounds its memory).
_CHANNEL_CHUNK = 32
# Relative spread below which a measured value counts as the same everywhere (float32 rounding, not padding).
_RTOL = 1e-6


def record_inputs(model: nn.Module, x: torch.Tensor) -> dict[nn.Module, list[torch.Tensor]]:
    """The input of every Linear/Conv call on ``x`` (up to 4 samples): what a removed channel feeds it."""
    seen: dict[nn.Module, list[torch.Tensor]] = defaultdict(list)

    def hook(module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            seen[module].append(args[0].detach()[:4].clone())

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if reads_channels(m)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _same_everywhere(values: torch.Tensor, dims: tuple[int, ...]) -> bool:
    """Whether ``values`` is constant along ``dims`` up to float rounding."""
    spread = values.amax(dim=dims) - values.amin(dim=dims)
    scale = values.abs().amax(dim=dims).clamp(min=1.0)
    return bool((spread <= _RTOL * scale).all())


def _conv_shares(conv: nn.Module, x: torch.Tensor, channels: list[int]) -> torch.Tensor:
    """What each of ``channels`` of the single-sample input ``x`` adds to ``conv``'s output, bias excluded.

    Returns ``[len(channels), out_channels, *out_spatial]``. A grouped convolution with one input channel per
    group computes them all at once, in chunks to bound memory. Where ``conv`` itself is grouped, input channel ``c``
    is column ``c mod (in / groups)`` of the rows of its group, and adds nothing to the other groups' outputs.
    """
    out = []
    conv_fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[conv.weight.dim() - 2]
    per_in = conv.in_channels // conv.groups
    per_out = conv.out_channels // conv.groups
    weight = conv.weight.detach()
    for start in range(0, len(channels), _CHANNEL_CHUNK):
        chunk = channels[start : start + _CHANNEL_CHUNK]
        n, o = len(chunk), conv.out_channels
        if conv.groups == 1:
            w = weight[:, chunk].transpose(0, 1)
        else:  # (n, out, *kernel): each channel's column in its group's rows, zeros in the others
            w = weight[:, [c % per_in for c in chunk]].transpose(0, 1).clone()
            rows = torch.arange(o, device=w.device) // per_out
            own = rows.unsqueeze(0) == torch.tensor([c // per_in for c in chunk], device=w.device).unsqueeze(1)
            w[~own] = 0
        w = w.reshape(n * o, 1, *weight.shape[2:])
        inp = x[chunk].unsqueeze(0)
        padding = conv.padding
        if conv.padding_mode != "zeros":
            inp = F.pad(inp, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
            padding = 0
        y = conv_fn(inp, w, None, conv.stride, padding, conv.dilation, n)
        out.append(y.reshape(n, o, *y.shape[2:]))
    return torch.cat(out)


#: why a channel the dependency graph has as constant stays: a consumer reads it varying (the graph misread an
#: operation between them)
VARIES = "its value varies with the input"
#: why a channel the dependency graph has as constant stays: it is the same for every sample but differs from one
#: position (token, time step) to the next, read by a layer applied at each position, so no bias can hold it
POSITIONAL = ("it is the same for every sample but differs from position to position (a position embedding or "
              "another per-position tensor added to it), and the layer reading it at each position has one bias "
              "for all of them")


def consumer_shares(
    consumer: nn.Module, calls: list[torch.Tensor], wanted: dict[Any, list[int]], fold_borders: bool
) -> tuple[dict[Any, torch.Tensor], dict[Any, str]]:
    """What each candidate channel adds to ``consumer``'s output, as a bias vector, where a bias can hold it.

    ``wanted`` maps a channel key to the consumer's input indices it occupies (one channel for a conv, a block
    of features after flatten→linear). Returns (key → bias share) for the channels that can be folded and
    (key → reason) for the others; with ``fold_borders`` a share that zero padding makes position-dependent is
    folded with its median (interior) value and reported as ``"border-folded"``.
    """
    shares: dict[Any, torch.Tensor] = {}
    problems: dict[Any, str] = {}
    if not calls:
        return {}, dict.fromkeys(wanted, "its input could not be recorded")
    recurrent = isinstance(consumer, RECURRENT_READERS)
    channels_last = recurrent or isinstance(consumer, nn.Linear)
    weight = consumer.weight.detach() if not recurrent else None
    for x in calls:
        batch_dims = tuple(range(x.dim() - 1)) if channels_last else (0,)
        live: dict[Any, list[int]] = {}
        for key, idxs in wanted.items():
            if key in problems and problems[key] != "border-folded":
                continue
            v = x[..., idxs] if channels_last else x[:, idxs]
            # Input-independent by the graph walk; a difference between samples would mean the walk is wrong.
            if not _same_everywhere(v, batch_dims):
                # the same in each sample but not at each position: a tensor of the positions added on the way
                problems[key] = POSITIONAL if x.shape[0] > 1 and _same_everywhere(v, (0,)) else VARIES
            elif recurrent:
                # one share per direction, for its input-gate biases (bias_ih_l0, bias_ih_l0_reverse)
                share = torch.stack([w.detach()[:, idxs] @ v.reshape(-1, len(idxs))[0]
                                     for w in input_weights(consumer)])
                if share.any() and not consumer.bias:
                    problems[key] = (f"it carries a non-zero constant, and the {type(consumer).__name__} reading it has "
                                     "no bias (bias=False) to hold it")
                else:
                    _merge_share(shares, problems, key, share)
            elif isinstance(consumer, nn.Linear):
                _merge_share(shares, problems, key, weight[:, idxs] @ v.reshape(-1, len(idxs))[0])
            elif not v[0].any():
                _merge_share(
                    shares, problems, key, torch.zeros(consumer.out_channels, dtype=x.dtype, device=x.device)
                )
            elif isinstance(consumer, CONV_TRANSPOSE):
                problems[key] = ("it carries a non-zero constant, which a transposed convolution spreads unevenly "
                                 "over its output, so no bias can replace it")
            else:
                live[key] = idxs
        if not live:
            continue
        channels = sorted({i for idxs in live.values() for i in idxs})
        maps = _conv_shares(consumer, x[0], channels)
        row = {c: i for i, c in enumerate(channels)}
        for key, idxs in live.items():
            flat = maps[[row[i] for i in idxs]].sum(dim=0).flatten(1)
            if _same_everywhere(flat, (1,)):
                _merge_share(shares, problems, key, flat.mean(dim=1))
            elif fold_borders:
                problems[key] = "border-folded"
                _merge_share(shares, problems, key, flat.median(dim=1).values)
            else:
                problems[key] = "border"
    for key in list(shares):
        if key in problems and problems[key] != "border-folded":
            del shares[key]
    return shares, problems


def _merge_share(shares: dict, problems: dict, key: Any, share: torch.Tensor) -> None:
    """A layer called several times must see the same constant every time for one bias to hold it."""
    if key in shares and not torch.allclose(shares[key], share, rtol=_RTOL, atol=1e-7):
        problems[key] = "the layer is called more than once and sees different values"
    shares.setdefault(key, share)


@torch.no_grad()
def fold(consumer: nn.Module, share: torch.Tensor) -> None:
    """Add a removed input's constant contribution to ``consumer``'s bias (creating the bias if needed; a recurrent
    layer's share is one row per direction, added to its input-gate biases, which it has: :func:`consumer_shares`)."""
    if isinstance(consumer, RECURRENT_READERS):
        if not consumer.bias:
            return  # only zero shares reach one without biases (consumer_shares)
        for row, name in zip(share, input_names(consumer, "bias"), strict=True):
            getattr(consumer, name).add_(row.to(input_weights(consumer)[0].dtype))
        return
    if consumer.bias is None:
        consumer.bias = nn.Parameter(
            torch.zeros(out_units(consumer), dtype=consumer.weight.dtype, device=consumer.weight.device)
        )
    consumer.bias += share.to(consumer.bias.dtype)
