"""What the slim modules share: the layers whose units they remove, a unit count, silent units, and the
output comparison that checks a slimmed model against the masked one.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..errors import PrunedropError

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: the layers whose output units the slim stage removes (and the pipeline reads masks of); a transposed
#: convolution's output channels are its weight's axis 1 (:func:`prunedrop.layers.base.weight_unit_axis`), and only an
#: ungrouped one's leave
WEIGHT_LAYERS = (nn.Linear, *CONV, *CONV_TRANSPOSE)
#: recurrent layers: a channel they read at their input leaves with its ``weight_ih_l0`` columns (both directions);
#: their own hidden units take another path (:mod:`.recurrent`)
RECURRENT_READERS = (nn.LSTM, nn.GRU, nn.RNN, nn.LSTMCell, nn.GRUCell, nn.RNNCell)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cyclic garbage collector paused for one unit of graph work (a trace and its groups, a slim). Tracing
    and planning build hundreds of thousands of small objects that live until the work ends, and the collections they
    set off walked them and the model over and over: two thirds of a slim's time on DPN-68 (2.4 s → 0.8 s). Once
    resumed, the first collection (of the youngest objects: all that the work made) frees them, unless something
    still holds them then: an exception raised inside must leave without the traceback whose frames hold it all
    (:func:`untraced`), or it all moves to the old generations, which are seldom collected."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def untraced(error: BaseException) -> BaseException:
    """``error`` without its traceback nor those of the exceptions it was raised from or during (``raise … from
    None`` still keeps the latter as ``__context__``), to be kept: their frames hold a failed slim's traced graph."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        chained = stack.pop()
        if chained is None or id(chained) in seen:
            continue
        seen.add(id(chained))
        chained.__traceback__ = None
        stack += [chained.__cause__, chained.__context__]
    return error


def unit_weights(module: nn.Module) -> torch.Tensor:
    """``module``'s weight as one row per output unit, (units, fan-in) (a grouped transposed convolution's units
    gathered from its groups)."""
    weight = module.weight.detach()
    if not isinstance(module, CONV_TRANSPOSE):
        return weight.flatten(1)
    groups = module.groups
    per_group = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], -1)  # (g, in/g, out/g, k)
    return per_group.permute(0, 2, 1, 3).reshape(groups * weight.shape[1], -1)


def reads_channels(module: nn.Module) -> bool:
    """A layer that may read a removed channel, whose weight then loses that input slice: the weight layers,
    ungrouped transposed convolutions (a decoder's upsampling; their weight's first axis is the input channel), which
    spread a constant unevenly over their output and so take only channels that are 0, and recurrent layers (their
    first layer's ``weight_ih`` columns: a convolutional front end before an LSTM)."""
    return (isinstance(module, (*WEIGHT_LAYERS, *RECURRENT_READERS))
            or (isinstance(module, CONV_TRANSPOSE) and module.groups == 1))


def input_names(rnn: nn.Module, what: str = "weight") -> list[str]:
    """The names of a recurrent layer's first-layer input ``weight`` (or ``bias``) in each direction:
    ``weight_ih_l0`` and, bidirectional, ``weight_ih_l0_reverse``; a cell's (``nn.LSTMCell``) ``weight_ih``."""
    if isinstance(rnn, nn.RNNCellBase):
        return [f"{what}_ih"]
    return [f"{what}_ih_l0{suffix}" for suffix in ("", "_reverse")[:2 if rnn.bidirectional else 1]]


def input_weights(consumer: nn.Module) -> list[torch.Tensor]:
    """The weights of ``consumer`` that read its input channels: a recurrent layer's first-layer ``weight_ih`` of
    each direction (a channel is its column there), every other layer's ``weight``."""
    if isinstance(consumer, RECURRENT_READERS):
        return [getattr(consumer, name) for name in input_names(consumer)]
    return [consumer.weight]


def out_units(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def is_depthwise(module: nn.Module) -> bool:
    """One input channel per output channel: pruning its output channel prunes its input channel too."""
    return (
        isinstance(module, CONV)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def is_grouped(module: nn.Module) -> bool:
    """A grouped convolution that is no plain depthwise one: ``1 < groups``, each output channel reads the
    ``in_channels / groups`` input channels of its group (ResNeXt's and RegNet's, or a depthwise convolution with a
    channel multiplier, ``groups = in_channels``, ``out_channels = k·in_channels``). Its groups must stay equal in
    size, so its channels leave by the per-group rule of :func:`prunedrop.slim.stage._grouped_rule`. (One with
    ``groups == out_channels < in_channels``, which Torch-Pruning's graph reads as depthwise, is not one.)"""
    return (
        isinstance(module, CONV)
        and module.groups > 1
        and module.groups != module.out_channels
    )


def input_slices(consumer: nn.Module, idxs: list[int]) -> list[tuple[Any, ...]]:
    """The indices of ``consumer``'s weight that read its input channels ``idxs``: the first axis of a transposed
    convolution's ``(in, out / groups, *kernel)``, the second of every other layer's; in a grouped convolution input
    channel ``c`` is column ``c mod (in / groups)`` of the rows of its group ``c div (in / groups)``."""
    if isinstance(consumer, CONV_TRANSPOSE):
        return [(idxs,)]
    if isinstance(consumer, CONV) and consumer.groups > 1:
        per_in = consumer.in_channels // consumer.groups
        per_out = consumer.out_channels // consumer.groups
        return [(slice(c // per_in * per_out, (c // per_in + 1) * per_out), c % per_in) for c in idxs]
    return [(slice(None), idxs)]


def silent_units(module: nn.Module) -> torch.Tensor:
    """One bool per output unit of a Linear/Conv layer: its weight row and its bias (if any) are exactly 0, so it
    outputs 0 whatever the input (a pruned unit of the masked model)."""
    with torch.no_grad():
        silent = unit_weights(module).eq(0).all(dim=1)
        if module.bias is not None:
            silent &= module.bias.detach().eq(0)
    return silent


def max_abs_diff(want: Any, got: Any) -> float:
    """Max |want − got| over a tensor or a (nested) tuple/list/dict of tensors with the same structure."""
    if isinstance(want, torch.Tensor):
        if not isinstance(got, torch.Tensor) or want.shape != got.shape:
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise PrunedropError(
                f"slimming changed the output shape from {tuple(want.shape)} to {shape}: a removed channel "
                "reaches the output; this is a bug in prunedrop's slim stage, please report it"
            )
        return float((want.float() - got.float()).abs().max()) if want.numel() else 0.0
    if isinstance(want, Mapping):
        return max((max_abs_diff(want[k], got[k]) for k in want), default=0.0)
    if isinstance(want, (tuple, list)):
        return max((max_abs_diff(a, b) for a, b in zip(want, got)), default=0.0)
    return 0.0
