"""Coupling analysis: Torch-Pruning's dependency graph of a model, and which channels of each dependency group
may leave (every producer prunes them, nothing unsupported reads them); also :func:`coupled_producers`, the
groups of layers that a residual addition joins (``tie_residual``).
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import PrunedropError
from .common import (
    CONV,
    CONV_TRANSPOSE,
    RECURRENT_READERS,
    WEIGHT_LAYERS,
    input_names,
    is_depthwise,
    is_grouped,
    out_units,
    paused_gc,
    reads_channels,
)

# Channel-wise layers a removed channel may pass through: Torch-Pruning slices them along with it, and they
# act on each channel separately, so the removed channel's value stays input-independent and others unchanged.
_PER_CHANNEL = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.PReLU)


def _per_channel(module: Any) -> bool:
    """One of :data:`_PER_CHANNEL`, or a GroupNorm of one channel per group (wav2vec 2.0's first feature layer's
    ``nn.GroupNorm(512, 512)``), which normalises each channel on its own as an InstanceNorm does."""
    return isinstance(module, _PER_CHANNEL) or (isinstance(module, nn.GroupNorm)
                                                and module.num_groups == module.num_channels)
#: the operations through which a bare parameter touches each channel on its own (``x * γ``, ``x + b``, ``x / s``,
#: ``torch.lerp(x, y, γ)``, ``torch.addcmul(x, y, γ)``)
_ELEMENTWISE_WITH_PARAMETER = frozenset({"Mul", "Add", "Sub", "Div", "Lerp", "Addcmul", "Addcdiv"})
#: views through which a bare parameter may still only scale or shift each channel: they add axes of size 1
_UNIT_VIEWS = frozenset({"View", "Reshape", "ReshapeAlias", "UnsafeView", "Unsqueeze"})
#: autograd names of a BatchNorm's function (eval and training mode alike): channel c of its output is channel c of
#: its input, scaled and shifted
_BATCH_NORMS = ("NativeBatchNorm", "CudnnBatchNorm", "MiopenBatchNorm", "NativeBatchNormLegitNoTraining")
#: functions of one operand, element by element, through which a bare parameter still scales each channel on its own
#: (a gate ``sigmoid(g) * h``, a positive scale ``g.exp() * h``)
_PER_ELEMENT = frozenset({"Sigmoid", "Tanh", "Exp", "Softplus", "Abs", "Neg", "Relu", "Sqrt", "Rsqrt", "Reciprocal",
                          "Clamp", "ClampMin", "Log", "Expm1", "Hardsigmoid", "Silu", "Gelu", "Elu", "LeakyRelu"})


def _only_adds_unit_axes(grad_fn: Any) -> bool:
    """Whether a view's output has the same sizes as its input but for axes of 1 ((C,) → (1, C, 1, 1))."""
    try:
        before = [int(d) for d in grad_fn._saved_self_sym_sizes]
    except (AttributeError, RuntimeError, TypeError):
        return _op_name(grad_fn) == "Unsqueeze"
    return len(before) <= 2 and sum(d > 1 for d in before) <= 1


# Autograd functions (names without "Backward<n>") that map a channel of exact zeros to exact zeros whatever else
# they are given: activations with f(0) = 0, spatial pooling, reshapes and moves. Hardtanh (ReLU6), clamp and pow
# keep zeros only for some arguments, checked in :func:`_zero_rule`; sigmoid (0.5), softplus and exp do not. Means,
# sums and index selections are left out: over the channel axis they mix the channel with others; a reduction that
# the trace saw taken over the pixels of a (batch, channels, …) tensor keeps zeros (``graph.prunedrop_keeps_zero``).
_KEEPS_ZERO = frozenset({
    "Relu", "Silu", "Gelu", "Hardswish", "Tanh", "LeakyRelu", "Elu", "Celu", "Mish", "Neg", "Abs",
    "AvgPool1D", "AvgPool2D", "AvgPool3D", "AdaptiveAvgPool1D", "AdaptiveAvgPool2D", "AdaptiveAvgPool3D",
    "MaxPool2DWithIndices", "MaxPool3DWithIndices", "AdaptiveMaxPool1D", "AdaptiveMaxPool2D", "AdaptiveMaxPool3D",
    "UpsampleNearest1D", "UpsampleNearest2D", "UpsampleNearest3D", "UpsampleNearestExact1D", "UpsampleNearestExact2D",
    "UpsampleNearestExact3D", "UpsampleLinear1D", "UpsampleBilinear2D", "UpsampleBicubic2D", "UpsampleTrilinear3D",
    "View", "Reshape", "ReshapeAlias", "UnsafeView", "Permute", "Transpose", "T", "Clone", "Expand", "Squeeze",
    "Unsqueeze", "Slice", "ToCopy", "Alias",
    # concatenations and splits move the channel to another offset, whole: the dependency graph maps it there; a
    # stack on a new axis keeps each piece's channel c at c (zeros where every piece has zeros)
    "Cat", "Split", "SplitWithSizes", "Stack",
    # an InstanceNorm without affine parameters, traced as one node (_opaque_instance_norms): (0 − 0) / √(0 + ε) = 0
    "_ChannelwiseHandedOn",
})


def _single_chain(fn: Any, steps: int, through: frozenset[str] | tuple[str, ...] = ()) -> Iterator[Any]:
    """``fn`` and the autograd nodes below it while each has one input (views, expands, functions of one operand), at
    most ``steps`` + 1 of them; a node named in ``through`` goes on to its first input whatever else it has (a
    BatchNorm's weight and bias beside its input)."""
    for _ in range(steps + 1):
        if fn is None:
            return
        yield fn
        if _op_name(fn) in through and fn.next_functions:
            fn = fn.next_functions[0][0]
            continue
        inputs = [f for f, _ in fn.next_functions if f is not None]
        if len(inputs) != 1:
            return
        fn = inputs[0]


def _flattens_map(view: Any, channels: int, pixels: int) -> bool:
    """Whether the autograd node ``view`` reshaped a (batch, ``channels``, …) map into ``pixels`` values per channel."""
    try:
        before = [int(d) for d in view._saved_self_sym_sizes]
    except (AttributeError, RuntimeError, TypeError):
        return False
    return len(before) >= 3 and before[1] == channels and math.prod(before[2:]) == pixels


def _op_name(grad_fn: Any) -> str:
    """An autograd function's operation, without "Backward<n>": ``MulBackward0`` → ``Mul``."""
    return re.sub(r"Backward\d*$", "", type(grad_fn).__name__)


def _zero_rule(grad_fn: Any) -> str | None:
    """How an operation passes on a channel that is exact zeros: ``"product"`` (zero when any factor is), ``"keeps"``
    (zero when its inputs in the channel are), ``"numerator"`` (a division: when its first operand is), or None
    (nothing known: a BatchNorm's shift, sigmoid(0), an addition of something outside the channel)."""
    name = _op_name(grad_fn)
    try:
        if name == "Mul":
            return "product"
        if name == "Div":
            return "numerator"
        if name == "Hardtanh":
            return "keeps" if grad_fn._saved_min_val <= 0 <= grad_fn._saved_max_val else None
        if name == "Clamp":
            low, high = grad_fn._saved_min, grad_fn._saved_max
            return "keeps" if (low is None or low <= 0) and (high is None or high >= 0) else None
        if name == "Pow":
            return "keeps" if grad_fn._saved_exponent > 0 else None
    except (AttributeError, RuntimeError, TypeError):  # a saved value this torch names otherwise, or a tensor one
        return None
    return "keeps" if name in _KEEPS_ZERO else None


@dataclass
class Channel:
    """One channel of a dependency group: the places it reaches, by graph node."""

    members: dict[Any, list[tuple[Any, int]]] = field(default_factory=lambda: defaultdict(list))
    """tp graph node → [(pruning function, local index)]."""


def import_torch_pruning():
    try:
        import torch_pruning as tp
    except ImportError:  # pragma: no cover - it is a declared dependency
        raise PrunedropError(
            "slimming needs the torch-pruning package: pip install 'torch-pruning>=1.6.1,<1.7'"
        ) from None
    return tp


def _is_unsupported_conv(module: nn.Module) -> bool:
    """Convolutions whose channels cannot leave: one with ``groups == out_channels < in_channels`` (Torch-Pruning's
    graph reads it as depthwise, one input channel per output), grouped transposed ones, and any other kind. A
    grouped convolution (:func:`.common.is_grouped`) loses channels by the per-group rule
    (:func:`prunedrop.slim.stage._grouped_rule`), a depthwise one with its channel."""
    if isinstance(module, CONV):
        return module.groups > 1 and not is_depthwise(module) and not is_grouped(module)
    if isinstance(module, CONV_TRANSPOSE):
        return module.groups > 1  # an ungrouped one loses output channels (weight axis 1) and input channels alike
    return isinstance(module, nn.modules.conv._ConvNd)


def _parameters_only(grad_fn: Any, depth: int = 0) -> bool:
    """True if the autograd subgraph ends only at parameters (e.g. a Linear's transposed weight)."""
    if grad_fn is None or depth > 32:
        return False
    if type(grad_fn).__name__ == "AccumulateGrad":
        return True
    return all(_parameters_only(f, depth + 1) for f, _ in grad_fn.next_functions)


def _has_untracked_input(grad_fn: Any) -> bool:
    """An operand without autograd history: the model input or a buffer, which tracing cannot follow."""
    return grad_fn is not None and any(f is None for f, _ in grad_fn.next_functions)


class GroupAnalysis:
    """Which channels of one dependency group can go, and what they leave behind in each consumer."""

    def __init__(
        self,
        graph: Any,
        group: Any,
        names: dict[Any, str],
        masks: dict[str, torch.Tensor],
        output_fns: set[Any],
    ):
        self.graph = graph
        self.output_fns = output_fns
        self.names = names
        self.masks = masks
        self.root = group[0].dep.target.module
        self.root_handler = group[0].dep.handler
        self.size = len(set(group[0].root_idxs))  # a root unit that another root reaches too is listed twice
        self.channels: dict[int, Channel] = defaultdict(Channel)
        channels = self.channels
        for item in group:  # (a slim's hot loop: DPN-68's groups hold half a million places)
            target, handler = item.dep.target, item.dep.handler
            for idx, root in zip(item.idxs, item.root_idxs):
                channels[root].members[target].append((handler, idx))
        self.nodes: set[Any] = {item.dep.target for item in group}
        """Every node that one of the group's channels reaches."""
        self._masked: set[Any] | None = None
        # a pixel shuffle joins blocks of its input channels into one output channel (:func:`_map_blocks`)
        self.blocks = any(getattr(item.dep.target, "prunedrop_block", 1) > 1 for item in group)
        # one unit reaches two of the group's channels: a Ghost module concatenates a layer's output and a depthwise
        # convolution of it, so removing either channel takes the other with it (set by the plan once seen)
        self.aliased = False
        self._joined: dict[int, frozenset[int]] = {}
        self._removals: dict[tuple[int, ...], Any] = {}

    # -- roles of the nodes -------------------------------------------------------------------------------

    def name(self, node: Any) -> str:
        return self.names.get(node.module) or str(node.module)

    def producer_index(self, node: Any, channel: Channel) -> int | None:
        """The unit of ``node`` that produces this channel, if ``node`` is a plain Linear/Conv doing so."""
        module = node.module
        if not isinstance(module, WEIGHT_LAYERS) or is_depthwise(module):
            return None
        for handler, idx in channel.members.get(node, []):
            if self.graph.is_out_channel_pruning_fn(handler) and not self.graph.is_in_channel_pruning_fn(
                handler
            ):
                return idx
        return None

    def consumers(self, channel: Channel) -> list[tuple[Any, list[int]]]:
        """Plain Linear/Conv layers reading this channel, with the input indices it occupies there."""
        found = []
        for node, entries in channel.members.items():
            module = node.module
            if not reads_channels(module) or is_depthwise(module):
                continue
            idxs = sorted(
                {
                    i
                    for h, i in entries
                    if self.graph.is_in_channel_pruning_fn(h) and not self.graph.is_out_channel_pruning_fn(h)
                }
            )
            if idxs:
                found.append((node, idxs))
        return found

    def padded(self, node: Any, channel: Channel) -> bool:
        """Whether this channel of ``node``'s output is one that a pad of the channel axis added (zeros of no input,
        :func:`_pad_mappings`), not one of its input's."""
        return node in getattr(self.graph, "prunedrop_pads", ()) and not any(n in channel.members for n in node.inputs)

    def read_only(self, node: Any, channel: Channel) -> bool:
        """An ungrouped transposed convolution that only reads this channel (input-channel entries alone): it loses
        that slice of its weight. One whose output the channel is coupled to cannot lose it."""
        module = node.module
        return (isinstance(module, CONV_TRANSPOSE) and module.groups == 1
                and all(self.graph.is_in_channel_pruning_fn(h) and not self.graph.is_out_channel_pruning_fn(h)
                        for h, _ in channel.members.get(node, [])))

    def unit_pruned(self, node: Any, channel: Channel) -> bool | None:
        """Whether ``node``'s unit for this channel is pruned (None: it is no producer or depthwise convolution of
        it). Where a pixel shuffle joins a block of a layer's units into one channel, all of them must be."""
        entries = channel.members.get(node, [])
        idx = self.producer_index(node, channel)
        if idx is None and not (is_depthwise(node.module) and entries):
            return None
        if not self.blocks:
            return self.pruned(node, entries[0][1] if idx is None else idx)
        units = {i for h, i in entries if idx is None or (self.graph.is_out_channel_pruning_fn(h)
                                                          and not self.graph.is_in_channel_pruning_fn(h))}
        return all(self.pruned(node, i) for i in units)

    def joined(self, root: int) -> frozenset[int]:
        """The root channels that leave together with ``root``: a pixel shuffle's block (the unit before it that
        writes one of its input channels takes the block's other units with it), the channels one unit reaches
        (:attr:`aliased`), or ``root`` alone."""
        if not (self.blocks or self.aliased):
            return frozenset((root,))
        if root not in self._joined:
            together = frozenset(self.leaving([root]) & set(self.channels)) | {root}
            for r in together:
                self._joined[r] = together
        return self._joined[root]

    def removal(self, roots: list[int]) -> Any:
        """Torch-Pruning's group for removing ``roots`` (every place they reach), built once per set of roots: the plan
        reads who leaves with them (:meth:`leaving`) and the slicing uses the same group."""
        key = tuple(roots)
        if key not in self._removals:
            self._removals[key] = self.graph.get_pruning_group(self.root, self.root_handler, list(roots))
        return self._removals[key]

    def leaving(self, roots: list[int]) -> set[int]:
        """The root layer's units that leave when ``roots`` are removed: those and their partners (a gate's
        other half: the unit k + half of the layer before an F.glu or a chunk(2) product)."""
        if not roots:
            return set()
        return {i for item in self.removal(roots)
                if item.dep.target.module is self.root and self.graph.is_out_channel_pruning_fn(item.dep.handler)
                for i in item.idxs}

    def fans_out(self, roots: list[int]) -> bool:
        """Whether removing ``roots`` takes other channels with it because one unit of a producer writes several of
        them: a Ghost module's layer whose output is concatenated with a depthwise convolution of it (read by a
        depthwise convolution, or in a residual stream that a shortcut writes channel by channel). A gate's two halves
        also leave together, but there the producer loses a unit for each channel that leaves."""
        leaving = self.leaving(roots)
        if self.blocks or leaving <= set(roots):
            return False
        lost: dict[Any, set[int]] = defaultdict(set)
        for item in self.removal(roots):
            module = item.dep.target.module
            if (isinstance(module, WEIGHT_LAYERS) and not is_depthwise(module)
                    and self.graph.is_out_channel_pruning_fn(item.dep.handler)
                    and not self.graph.is_in_channel_pruning_fn(item.dep.handler)):
                lost[item.dep.target].update(item.idxs)
        return any(len(units) < len(leaving) for units in lost.values())

    def pruned(self, node: Any, idx: int) -> bool:
        mask = self.masks.get(self.name(node))
        return mask is not None and not bool(mask[idx])

    def producers(self) -> list[str]:
        """The group's producers, root first: they all number the group's channels alike."""
        root = self.names.get(self.root, str(self.root))
        others = {self.name(n) for ch in self.channels.values() for n in ch.members
                  if self.producer_index(n, ch) is not None} - {root}
        return [root, *sorted(others)]

    def label(self) -> str:
        root, *producers = self.producers()
        return f"{root} (coupled with {', '.join(producers)})" if producers else root

    def masked(self) -> set[Any]:
        """The group's nodes whose layer has a pruned unit: no channel reached by none of them is pruned."""
        if self._masked is None:
            self._masked = set()
            for node in self.nodes:
                mask = self.masks.get(self.name(node))
                if mask is not None and not bool(mask.all()):
                    self._masked.add(node)
        return self._masked

    def pruned_by(self, channel: Channel) -> list[str]:
        """The producers and depthwise convolutions whose unit for this channel is pruned."""
        found = []
        masked = self.masked()
        for node in channel.members:
            if node in masked and self.unit_pruned(node, channel):
                found.append(self.name(node))
        return sorted(found)

    # -- decisions ----------------------------------------------------------------------------------------

    def blocker(self, channel: Channel) -> str | None:
        """Why this channel cannot be removed at all, whatever the masks say; None if it can be."""
        tp_ops = self.graph.ops
        consumers = {node for node, _ in self.consumers(channel)}
        broken = unmapped(self.graph)
        reduced = None
        for node in channel.members:
            module = node.module
            if node in broken:
                what = _op_name(node.grad_fn) or "an operation"
                return (f"they pass through an operation that moves channels to other places or numbers, which "
                        f"the dependency graph cannot follow ({what}: a channel shuffle, flip or roll)")
            if self.padded(node, channel):
                return ("they meet the channels of zeros that a pad of the channel axis adds (F.pad), whose number is "
                        "fixed in the model's code")
            reduction = getattr(self.graph, "prunedrop_reductions", {}).get(node)
            if reduction is not None and not reduction[1] and reduced is None:  # the last reason to give
                reduced = (f"they meet the others in {reduction[0]} over the channels ({_op_name(node.grad_fn)}), "
                           "which changes when a channel leaves")
            # Torch-Pruning adds an output node only when the last operation is not a layer: check both.
            if node.type == tp_ops.OPTYPE.OUTPUT or (
                node not in consumers and node.grad_fn in self.output_fns
            ):
                return "they reach the model output"
            if self.read_only(node, channel):
                continue
            if isinstance(module, RECURRENT_READERS):
                if all(self.graph.is_in_channel_pruning_fn(h) and not self.graph.is_out_channel_pruning_fn(h)
                       for h, _ in channel.members[node]):
                    continue  # read at its input: the channel leaves with its weight_ih_l0 columns
                return (f"they meet the outputs of the recurrent layer {self.name(node)} ({type(module).__name__}) "
                        "element-wise (a sum or product with its hidden units, which leave only by its own noise)")
            if _is_unsupported_conv(module):
                kind = "transposed" if getattr(module, "transposed", False) else "grouped"
                return (
                    f"they pass through the {kind} convolution {self.name(node)}, "
                    "which cannot lose single channels"
                )
            if isinstance(module, nn.Module) and not isinstance(module, WEIGHT_LAYERS) and not _per_channel(module):
                if node.type not in (
                    tp_ops.OPTYPE.ELEMENTWISE,
                    tp_ops.OPTYPE.CONCAT,
                    tp_ops.OPTYPE.SPLIT,
                    tp_ops.OPTYPE.RESHAPE,
                    tp_ops.OPTYPE.SLICE,
                ) and node not in getattr(self.graph, "prunedrop_plain_expands", ()) and (  # those keep their channels
                    node not in getattr(self.graph, "prunedrop_spread", {})):  # one channel spread: mixes nothing
                    kind = type(module).__name__
                    return f"they pass through {self.name(node)} ({kind}), which mixes or embeds channels"
            if isinstance(module, nn.Parameter):
                name = self.name(node)
                prefix = name.rpartition(".")[0]
                owner = self._modules_by_name.get(prefix)
                if owner is not None and type(owner).__module__.startswith("torch.nn"):
                    # a functional layer's own weight (nn.RMSNorm calls F.rms_norm, which normalises over channels)
                    return f"they pass through {name}, a parameter of {prefix} ({type(owner).__name__})"
                if self.sliceable(node):
                    continue
                if prefix and owner is not None:
                    return f"they pass through {name}, a parameter of {prefix} ({type(owner).__name__})"
                return f"they pass through the bare parameter {name}"
        return reduced

    @functools.cached_property
    def _modules_by_name(self) -> dict[str, nn.Module]:
        """Each module by its qualified name (a parameter's owner is looked up for every channel it touches)."""
        return {n: m for m, n in self.names.items() if isinstance(m, nn.Module)}

    @functools.cached_property
    def _parameter_axes(self) -> dict[int, int]:
        """id of each parameter outside the layers Torch-Pruning knows → the axis its graph slices it along."""
        return {id(p): d for p, d in getattr(self.graph, "unwrapped_parameters", ())}

    def sliceable(self, node: Any) -> bool:
        """Whether ``node`` is a parameter of the model's own code that only scales or shifts each channel on its own
        (a layer scale ``x * γ``, a learned per-channel offset ``x + b``): Torch-Pruning slices it with the channels,
        along the axis its graph chose for it (the last that is not 1), and
        :func:`prunedrop.slim.stage._remove_channels` puts the slice back on its owner. A parameter read any other way
        (a matmul's weight) blocks the channel; one in a norm written out in the forward is blocked by its reduction
        over the channels; and the slim model's function is checked against the masked one's, so an axis guessed wrong
        keeps the channels (as zeros, with a note)."""
        if id(node.module) not in self._parameter_axes or not node.outputs:
            return False
        elementwise = self.graph.ops.OPTYPE.ELEMENTWISE

        def scales(n: Any, depth: int) -> bool:
            # through views that only add axes of 1 (γ.view(1, -1, 1, 1), γ[:, None, None]) and functions of it
            # alone, element by element (sigmoid(g)), to the product or sum
            name = _op_name(n.grad_fn)
            if depth < 3 and n.outputs and ((name in _UNIT_VIEWS and _only_adds_unit_axes(n.grad_fn)) or (
                    name in _PER_ELEMENT and len(n.inputs) == 1)):
                return all(scales(o, depth + 1) for o in n.outputs)
            return n.type == elementwise and name in _ELEMENTWISE_WITH_PARAMETER

        return all(scales(out, 0) for out in node.outputs)

    def silent(self, node: Any, channel: Channel, memo: dict[Any, bool]) -> bool:
        """Whether this channel of ``node``'s output is exact zeros whatever the input: a pruned producer or
        depthwise unit, carried through operations that keep zeros zeros (ReLU, SiLU, pooling, reshapes, PReLU), or
        a product with such a factor (a squeeze-excitation's ``x · sigmoid(…)`` where x's channel is pruned)."""
        if node in memo:
            return memo[node]
        memo[node] = False  # a cycle proves nothing
        module = node.module
        entries = channel.members.get(node)
        result = False
        if entries is None:
            pass
        elif (pruned := self.unit_pruned(node, channel)) is not None:
            result = pruned
        elif isinstance(module, nn.PReLU) or (
            not isinstance(module, WEIGHT_LAYERS) and type(module).__module__.startswith("torch_pruning")
        ):
            inputs = [n for n in node.inputs if n in channel.members]
            rule = ("keeps" if isinstance(module, nn.PReLU) or node in getattr(self.graph, "prunedrop_keeps_zero", ())
                    else _zero_rule(node.grad_fn))
            if self.padded(node, channel):
                result = True  # a channel the pad added: zeros of no input
            elif rule == "product":
                result = any([self.silent(n, channel, memo) for n in inputs])
            elif rule == "numerator":
                first = node.grad_fn.next_functions[0][0] if node.grad_fn.next_functions else None
                result = any(n.grad_fn is first and self.silent(n, channel, memo) for n in inputs)
            elif rule == "keeps":
                result = bool(inputs) and all([self.silent(n, channel, memo) for n in inputs])
        memo[node] = result
        return result

    def live_sources(self, channel: Channel) -> set[str]:
        """Layers whose live units feed this channel into some consumer (none: it is input-independent)."""
        live: set[str] = set()
        memo: dict[Any, bool] = {}
        zeros: dict[Any, bool] = {}

        def depends(node: Any) -> bool:
            if node in memo:
                return memo[node]
            memo[node] = False  # a cycle adds no input of its own
            module = node.module
            entries = channel.members.get(node)
            if entries is None:
                result = True  # left the group: nothing tells us it is constant
            elif self.producer_index(node, channel) is not None:
                result = not self.unit_pruned(node, channel)
                if result:
                    live.add(self.name(node))
            elif isinstance(module, WEIGHT_LAYERS) and not is_depthwise(module):
                result = True
            elif is_depthwise(module) and self.unit_pruned(node, channel):
                result = False  # a pruned depthwise unit outputs 0 whatever it is fed
            elif type(module).__module__.startswith("torch_pruning") and self.silent(node, channel, zeros):
                result = False  # exact zeros: a product with a pruned factor, whatever the others carry
            elif node in getattr(self.graph, "prunedrop_spread", {}):
                live.add(f"a tensor of one channel spread over the channels ({_op_name(node.grad_fn)})")
                result = True
            elif self.padded(node, channel):
                result = False  # a channel the pad added: zeros of no input
            else:
                inputs = [n for n in node.inputs if n in channel.members]
                if not isinstance(module, nn.Module) or type(module).__module__.startswith("torch_pruning"):
                    # a concatenation's untraced operand (the model input beside a state: cat([x_t, h], 1)) fills
                    # channels of its own, not one that a traced operand carries there
                    beside = bool(inputs) and _op_name(node.grad_fn) == "Cat"
                    if (_has_untracked_input(node.grad_fn) and not beside
                            and node not in getattr(self.graph, "prunedrop_zero_operands", ())):
                        live.add(f"an untraced operand of {self.name(node)}")
                        memo[node] = True
                        return True
                    if not inputs and _parameters_only(node.grad_fn):
                        memo[node] = False  # e.g. a Linear's transposed weight
                        return False
                if not inputs and node in getattr(self.graph, "prunedrop_zero_operands", ()):
                    result = False  # the channel comes from untraced zeros alone (a recurrent state at its start)
                elif not inputs:
                    live.add(f"the input of {self.name(node)}")
                    result = True
                else:
                    result = any([depends(n) for n in inputs])  # a list: visit every branch for the note
            memo[node] = result
            return result

        for consumer, _ in self.consumers(channel):
            for n in consumer.inputs:
                if n in channel.members:
                    depends(n)
        return live


def feeds_pixel_shuffle(node: Any) -> int:
    """The block size of a pixel shuffle that ``node``'s output channels reach before any layer reads them (0 for
    none): such a layer's units leave only in whole blocks (:meth:`GroupAnalysis.joined`)."""
    seen: set[Any] = set()
    stack = list(node.outputs)
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if getattr(n, "prunedrop_block", 1) > 1:
            return int(n.prunedrop_block)
        if not (isinstance(n.module, WEIGHT_LAYERS) and not is_depthwise(n.module)):
            stack.extend(n.outputs)
    return 0


def node_names(model: nn.Module) -> dict[Any, str]:
    """The qualified name of each module and parameter of ``model``: what a traced node's ``module`` is (a bare
    parameter is a node of its own, whose str() would print its values)."""
    return {**{m: n for n, m in model.named_modules()}, **{p: n for n, p in model.named_parameters()}}


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """The tensors in a (nested) tuple/list/dict output."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in tensors_in(item)]
    return []


def _no_channels(idxs: Any) -> list[Any]:
    """An index mapping that passes no channel on."""
    return []


def _cut(node: Any, graph: Any) -> None:
    """No channel number passes between ``node`` and the operands it spreads over the channels
    (``graph.prunedrop_spread``), nor out of a reduction over the channels (``graph.prunedrop_reductions``); a
    reduction's input channels still reach it, for :meth:`GroupAnalysis.blocker`."""
    edges = [(a, b) for operand in graph.prunedrop_spread.get(node, ()) for a, b in ((node, operand), (operand, node))]
    if node in graph.prunedrop_reductions:
        edges += [(node, other) for other in (*node.inputs, *node.outputs)]
        edges += [(after, node) for after in node.outputs]
    for source, target in edges:
        for dep in source.dependencies:
            if dep.target is target:
                dep.index_mapping[0] = _no_channels


def _stop(node: Any, graph: Any) -> None:
    """``node`` passes no channel on, and is listed in :func:`unmapped`."""
    for dep in node.dependencies:
        dep.index_mapping[0] = _no_channels
    unmapped(graph).add(node)


def unmapped(graph: Any) -> set[Any]:
    """The nodes of ``graph`` that pass no channel on: operations recorded as moving channels (:class:`_Recorder`)
    and those whose index mapping Torch-Pruning failed to work out (:func:`_each_mapping_alone`)."""
    if not hasattr(graph, "prunedrop_unmapped"):
        graph.prunedrop_unmapped = set()
    return graph.prunedrop_unmapped


@contextlib.contextmanager
def _each_mapping_alone() -> Iterator[None]:
    """Torch-Pruning's index mapping of a single operation (a concatenation, a reshape, a slice) may fail alone:
    the whole graph failed instead (a ShuffleNetV2's channel shuffle divided by a width inferred as 0, and nothing
    could be slimmed or even tied). Such an operation now passes no channel on (left unmapped, every channel of
    it would reach every channel beyond, and the groups grew without end) and is listed in :func:`unmapped`: a
    channel that reaches it stays (:meth:`GroupAnalysis.blocker`)."""
    try:
        from torch_pruning.dependency import index_mapping
    except ImportError:  # pragma: no cover - another Torch-Pruning layout
        yield
        return
    originals = {name: f for name, f in vars(index_mapping).items()
                 if name.startswith("update_") and name.endswith("_index_mapping") and name != "update_index_mapping"
                 and callable(f)}

    def alone(f: Any) -> Any:
        def update(graph: Any, node: Any, *args: Any, **kwargs: Any) -> None:
            if node in real_mappings(graph):
                _apply_real(node, graph)
                return
            if node in getattr(graph, "prunedrop_flattens", {}):
                _map_flatten(node, graph.prunedrop_flattens[node])
                return
            if node in unmapped(graph):
                _stop(node, graph)
                return
            try:
                f(graph, node, *args, **kwargs)
            except Exception:  # noqa: BLE001 - this operation only: its channels go no further, and stay
                _stop(node, graph)
            if node in getattr(graph, "prunedrop_spread", {}):
                _cut(node, graph)  # an expand that spreads one channel, which Torch-Pruning mapped again
        return update

    every = index_mapping.update_index_mapping

    def update_all(graph: Any) -> None:
        every(graph)
        _order_cascades(graph)

    for name, f in originals.items():
        setattr(index_mapping, name, alone(f))
    index_mapping.update_index_mapping = update_all
    try:
        yield
    finally:
        for name, f in originals.items():
            setattr(index_mapping, name, f)
        index_mapping.update_index_mapping = every


def _order_cascades(graph: Any) -> None:
    """Where a split's piece goes straight into a concatenation (``a, b = h.split([24, 8], 1); torch.cat([f(a), b],
    1)``), the concatenation's way back to the split holds two mappings, applied in Torch-Pruning's order: the split's
    (a piece's channel → h's) first, the concatenation's (its channel → the piece's) second, which is the order of
    the way forward only. Going back, the concatenation's channel i was read as h's channel i + 24 − 24: f's first
    channels were coupled element-wise to h's first ones, and kept with them. The two are swapped on those edges."""
    from torch_pruning import ops

    for node in graph.module2node.values():
        if node.type != ops.OPTYPE.CONCAT:
            continue
        for dep in node.dependencies:
            if dep.target.type == ops.OPTYPE.SPLIT and all(m is not None for m in dep.index_mapping):
                dep.index_mapping = [dep.index_mapping[1], dep.index_mapping[0]]


class _GroupGrows(RuntimeError):
    """A dependency group grew past any size the model explains (a flatten's indices, or its entries, in a cycle)."""


@contextlib.contextmanager
def _bounded_flattens(model: nn.Module) -> Iterator[None]:
    """Torch-Pruning maps a flatten's channel k to its k·stride … (k+1)·stride − 1 inputs; read inside a cycle (timm's
    global-context block flattens the pixels, multiplies by an attention map and adds the result back), each turn
    multiplied the indices again, and building one group took minutes and more than 12 GB before the machine killed
    it. A mapping that would give more indices than the widest layer of ``model`` reads (four times over) raises
    :class:`_GroupGrows` instead: that layer's group fails alone (:func:`unit_groups`) and its units stay."""
    try:
        from torch_pruning.dependency.index_mapping import _FlattenIndexMapping
    except ImportError:  # pragma: no cover - another Torch-Pruning layout
        yield
        return
    widths = [max(m.weight.shape[:2]) if m.weight.dim() > 1 else m.weight.shape[0] for m in model.modules()
              if isinstance(m, WEIGHT_LAYERS) and isinstance(getattr(m, "weight", None), torch.Tensor)]
    limit = 4 * max([*widths, 1024])
    original = _FlattenIndexMapping.__call__

    def bounded(self: Any, idxs: Any) -> Any:
        if not self.reverse and len(idxs) * self._stride > limit:
            raise _GroupGrows(f"its channel indices grew past {limit} through a flatten (stride {self._stride}) that "
                              "Torch-Pruning read inside a cycle")
        return original(self, idxs)

    _FlattenIndexMapping.__call__ = bounded
    try:
        yield
    finally:
        _FlattenIndexMapping.__call__ = original


@contextlib.contextmanager
def _group_method(name: str, replacement: Callable[[Any], Any]) -> Iterator[None]:
    """Torch-Pruning's ``Group.<name>`` replaced by ``replacement(original)`` for the while, given back afterwards."""
    try:
        from torch_pruning.dependency.group import Group
    except ImportError:  # pragma: no cover - another Torch-Pruning layout
        yield
        return
    original = getattr(Group, name)
    setattr(Group, name, replacement(original))
    try:
        yield
    finally:
        setattr(Group, name, original)


def _every_root_kept(budget: int) -> contextlib.AbstractContextManager[None]:
    """While building the analysis groups: a place that two root channels reach keeps both. Torch-Pruning merges a
    group's entries for one place by their index there and keeps the first root it met, so where two pieces of a
    split meet again (a gate ``tanh(a) * sigmoid(b)`` of ``a, b = h.chunk(2, 1)``), the product and everything after
    it belonged to a's channels alone: b's channel looked unread, and removing it changed the output. More than
    ``budget`` (index, root) pairs in all raise :class:`_GroupGrows` (a place that every root reaches through a
    cycle, as in timm's BoTNet's attention, gathered millions)."""
    return _group_method("add_and_merge",
                         lambda original: _merging(lambda index: (index.idx, index.root_idx), budget))


@contextlib.contextmanager
def _bounded_groups(limit: int) -> Iterator[None]:
    """Torch-Pruning adds an entry to a group for every new index list it reaches; an index mapping it reads inside a
    cycle that yields a new list each turn (timm's BoTNet, relative position embeddings reshaped through its
    attention) grew one group without end: the early check of a 64×64 BoTNet-26 ran for more than 15 minutes. A
    group that grows past ``limit`` entries raises :class:`_GroupGrows` instead: that layer's group fails alone
    (:func:`unit_groups`) and its units stay. Whether a group holds an entry is looked up in a set kept beside it
    (Torch-Pruning compares it with every entry: a group grown to the limit took tens of seconds, per slim)."""
    def key(dep: Any, idxs: Any) -> tuple[Any, Any, tuple[Any, ...]]:
        return dep.target, dep.handler, tuple(idxs)

    def adding(original: Any) -> Any:
        def bounded(self: Any, dep: Any, idxs: Any) -> Any:
            if len(getattr(self, "_group", ())) >= limit:
                raise _GroupGrows(f"its dependency group grew past {limit} entries, through an operation that "
                                  "Torch-Pruning read inside a cycle (a relative position embedding's reshapes, a "
                                  "recurrent cell's state that another layer computed)")
            result = original(self, dep, idxs)
            with contextlib.suppress(TypeError):  # an unhashable index list: looked up Torch-Pruning's way
                self.__dict__.setdefault("_prunedrop_held", set()).add(key(dep, idxs))
            return result
        return bounded

    def looking_up(original: Any) -> Any:
        def has(self: Any, dep: Any, idxs: Any) -> bool:
            held = self.__dict__.get("_prunedrop_held")
            try:
                if held is not None and len(held) == len(self._group):  # every entry went in through ``bounded``
                    return key(dep, idxs) in held
            except TypeError:
                pass
            return original(self, dep, idxs)
        return has

    with _group_method("add_dep", adding), _group_method("has_pruning_op", looking_up), \
            _group_method("add_and_merge", lambda original: _merging(lambda index: index.idx)):
        yield


def _merging(key: Callable[[Any], Any], budget: int | None = None) -> Callable[..., None]:
    """Torch-Pruning's ``Group.add_and_merge`` (the entries of one place, its target and pruning function, merged
    into one, an index kept once by ``key``: its position there, as Torch-Pruning's own does), with the places found
    in a dictionary and each one's keys in a set kept beside it: Torch-Pruning looked through every entry and gathered
    the keys anew at each merge, minutes for a group of thousands of places (timm's BoTNet). More than ``budget`` keys
    in all raise :class:`_GroupGrows`."""
    from torch_pruning import _helpers

    def merge(self: Any, dep: Any, idxs: Any) -> None:
        places = self.__dict__.setdefault("_prunedrop_places", {})  # (target, function) → [position, keys or None]
        found = places.get((dep.target, dep.handler))
        if found is None:
            places[(dep.target, dep.handler)] = [len(self._group), None]
            self.add_dep(dep, idxs)
            return
        i, seen = found
        known, known_idxs = self._group[i]
        if seen is None:  # its first merge: its own list, each key once
            seen, merged = set(), []
            for index in known_idxs:
                if key(index) not in seen:
                    seen.add(key(index))
                    merged.append(index)
            self._group[i] = _helpers.GroupItem(dep=known, idxs=merged)
            found[1] = seen
        merged = self._group[i].idxs
        for index in idxs:
            if key(index) not in seen:
                seen.add(key(index))
                merged.append(index)
        if budget is not None:
            self.__dict__["_prunedrop_keys"] = self.__dict__.get("_prunedrop_keys", 0) + len(idxs)
            if self.__dict__["_prunedrop_keys"] > budget:
                raise _GroupGrows(f"its places were reached by more than {budget} (index, root) pairs")
    return merge


@contextlib.contextmanager
def all_requiring_grad(model: nn.Module) -> Iterator[None]:
    """Every parameter of ``model`` requires grad inside (Torch-Pruning's tracing follows autograd, and its pruning
    functions work on the traced graph); each parameter's own flag comes back afterwards. Integer parameters, which
    cannot require grad, are left as they are. Torch-Pruning's "Maximum recursive depth reached!" is silenced inside,
    and its index mappings, which it recomputes for every group, fail one operation at a time
    (:func:`_each_mapping_alone`)."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        if p.is_floating_point() or p.is_complex():
            p.requires_grad_(True)
    try:
        with warnings.catch_warnings(), _each_mapping_alone(), _bounded_flattens(model):
            # Torch-Pruning's shape inference gives up on some graphs (a GRU classifier's) with a warning that says
            # nothing to the user; what slimming does is checked against the model anyway
            warnings.filterwarnings("ignore", message="Maximum recursive depth reached")
            yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, True))


class _Recorder(TorchFunctionMode):
    """Records, while Torch-Pruning traces the forward, what its static shape inference cannot know: each
    concatenation's autograd node → its axis and the sizes of its pieces along it, in the order of the call, and each
    split's → whether it splits the channels (axis 1, or the features of a Linear's (batch, tokens, features)) and
    its pieces' sizes; the autograd nodes of operations that move channels to other places or numbers (a view that splits
    a (batch, channels, …) tensor's channels into groups, as a channel shuffle does), and of pixel shuffles and
    unshuffles with their block sizes (:func:`_map_blocks`); and those
    of expands that only spread a (batch, channels, 1, 1) tensor over the other axes (a squeeze-excitation's
    ``y.expand_as(x)``), which Torch-Pruning's expand node, made for grouped attention, would read as mixing.
    ``F.glu`` (and ``nn.GLU``) is traced as the gate it computes, ``a · sigmoid(b)`` of its input's two halves: one
    autograd node, Torch-Pruning read it as element-wise, and its input's second half reached nothing."""

    _CATS = (torch.cat, torch.concat, torch.concatenate)
    _STACKS = (torch.stack,)
    _EXPANDS = (torch.Tensor.expand, torch.Tensor.expand_as, torch.broadcast_to, torch.Tensor.broadcast_to)
    _SPLITS = (torch.split, torch.Tensor.split, torch.chunk, torch.Tensor.chunk, torch.split_with_sizes,
               torch.Tensor.split_with_sizes)
    _VIEWS = (torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.unflatten, torch.unflatten)
    _FLATTENS = (torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.flatten, torch.Tensor.flatten)
    _BLOCKS = (F.pixel_shuffle, F.pixel_unshuffle, torch.pixel_shuffle, torch.pixel_unshuffle)
    _PADS = (F.pad, torch.constant_pad_nd)
    _MOVERS = (F.channel_shuffle, torch.channel_shuffle)
    # operations along one axis (dim) that keep a channel of zeros zeros along any other: what they compute over the
    # channels, where they mix them (a cumulative sum) or move them (a flip, a roll); where the operation names its
    # axis under another keyword or position (flip's dims, roll's dims after shifts)
    _ALONG_AXIS: dict[Any, tuple[str | None, str, int]] = {
        **dict.fromkeys((torch.cumsum, torch.Tensor.cumsum), ("a cumulative sum", "dim", 1)),
        **dict.fromkeys((torch.cumprod, torch.Tensor.cumprod), ("a cumulative product", "dim", 1)),
        **dict.fromkeys((torch.flip, torch.Tensor.flip), (None, "dims", 1)),
        **dict.fromkeys((torch.roll, torch.Tensor.roll), (None, "dims", 2)),
    }
    # reductions along an axis: what they compute, whether a channel of zeros leaves them unchanged when taken over
    # the channels (sums and norms; a mean divides by the count, a maximum may be the zero, a softmax gives it a
    # share), and whether they keep a channel of zeros zeros when taken over the pixels (not a softmax: 1/n each)
    _REDUCTIONS: dict[Any, tuple[str, bool, bool]] = {
        **dict.fromkeys((torch.sum, torch.Tensor.sum, torch.nansum, torch.Tensor.nansum), ("a sum", True, True)),
        **dict.fromkeys((torch.norm, torch.Tensor.norm, torch.linalg.vector_norm, torch.linalg.norm),
                        ("a norm", True, True)),
        **dict.fromkeys((torch.mean, torch.Tensor.mean, torch.nanmean, torch.Tensor.nanmean), ("a mean", False, True)),
        **dict.fromkeys((torch.amax, torch.Tensor.amax, torch.amin, torch.Tensor.amin, torch.max, torch.Tensor.max,
                         torch.min, torch.Tensor.min), ("a maximum or minimum", False, True)),
        **dict.fromkeys((torch.var, torch.Tensor.var, torch.std, torch.Tensor.std, torch.var_mean, torch.std_mean),
                        ("a variance", False, True)),
        **dict.fromkeys((torch.prod, torch.Tensor.prod), ("a product or log-sum-exp", False, True)),
        **dict.fromkeys((torch.logsumexp, torch.Tensor.logsumexp), ("a product or log-sum-exp", False, False)),
        **dict.fromkeys((torch.softmax, torch.Tensor.softmax, F.softmax, torch.log_softmax, torch.Tensor.log_softmax,
                         F.log_softmax, F.softmin), ("a softmax", False, False)),
    }
    _NORM_DIM_AT = (torch.norm, torch.Tensor.norm, torch.linalg.vector_norm, torch.linalg.norm)
    # a buffer scales each channel through a product or a division by it (:meth:`_per_channel_constant`)
    _DIVISIONS = (torch.div, torch.Tensor.div, torch.Tensor.div_, torch.true_divide, torch.Tensor.__truediv__,
                  torch.Tensor.__itruediv__)
    _SCALINGS = (torch.mul, torch.Tensor.mul, torch.Tensor.mul_, torch.Tensor.__mul__, torch.Tensor.__rmul__,
                 torch.Tensor.__imul__, *_DIVISIONS)
    _ADDS = (torch.add, torch.Tensor.add, torch.Tensor.add_, torch.Tensor.__add__, torch.Tensor.__radd__,
             torch.Tensor.__iadd__, torch.sub, torch.Tensor.sub, torch.Tensor.sub_, torch.Tensor.__sub__,
             torch.Tensor.__rsub__, torch.Tensor.__isub__)
    _ELEMENTWISE = (*_SCALINGS, torch.Tensor.__rtruediv__, *_ADDS)
    _PRODUCTS = (torch.mul, torch.Tensor.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__)
    _CONVS = (torch.conv1d, torch.conv2d, torch.conv3d, F.conv1d, F.conv2d, F.conv3d)
    _MATMULS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm, torch.Tensor.bmm)
    _EXTREMES = (torch.maximum, torch.Tensor.maximum, torch.minimum, torch.Tensor.minimum, torch.fmax,
                 torch.Tensor.fmax, torch.fmin, torch.Tensor.fmin)

    def __init__(self) -> None:
        super().__init__()
        self.cats: dict[Any, tuple[int, list[int]]] = {}
        self.splits: dict[Any, tuple[bool, list[int]]] = {}  # whether it splits the channels; the pieces' sizes
        self.movers: set[Any] = set()
        self.blocks: dict[Any, tuple[int, bool]] = {}
        self.plain_expands: set[Any] = set()
        self.reductions: dict[Any, tuple[str, bool]] = {}
        self.keeps_zero: set[Any] = set()
        self.zero_operands: set[Any] = set()
        self.conv_maps: set[Any] = set()
        self.flattens: dict[Any, int | tuple[int, int]] = {}
        self.channel_pads: dict[Any, tuple[int, int]] = {}
        self.stacks: dict[Any, int] = {}
        self.stack_channels: dict[Any, int] = {}
        self.buffers: dict[Any, tuple[torch.Tensor, int]] = {}
        self.spread: dict[Any, set[Any]] = defaultdict(set)
        self.pooled: set[Any] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        kwargs = kwargs or {}
        if func is F.glu and (halves := self._glu_halves(args, kwargs)) is not None:
            # traced as the gate it is (a · sigmoid(b) of the two halves), which the dependency graph follows: unit
            # k leaves with unit k + half, and a unit of the first half silences its channel (a product's factor)
            a, b = halves
            return a * torch.sigmoid(b)
        if func is F.normalize:  # its norm and expand happen inside, where this mode does not see them
            with contextlib.suppress(Exception):
                return self._normalize(*args, **kwargs)
        if func is F.local_response_norm:
            with contextlib.suppress(Exception):
                return self._local_response_norm(*args, **kwargs)
        if func is F.pad and (circular := self._circular_pad(*args, **kwargs)) is not None:
            return circular
        if func in self._MATMULS:
            mixed = None
            with contextlib.suppress(Exception):  # an odd call is traced as it is
                mixed = self._row_mixing(args, kwargs)
            if mixed is not None:
                return mixed
        # before the call: an in-place add into a zeros accumulator (``h = torch.zeros_like(x); h += f``) changes it
        zero_operand = False
        with contextlib.suppress(Exception):
            zero_operand = self._zero_operand(func, args, kwargs)
        out = func(*args, **kwargs)
        with contextlib.suppress(Exception):  # an odd call keeps Torch-Pruning's own inference
            if zero_operand and isinstance(out, torch.Tensor) and out.grad_fn is not None:
                self.zero_operands.add(out.grad_fn)
            self._record(func, args, kwargs, out)
        if (func in self._SPLITS and isinstance(out, tuple) and out
                and self.splits.get(getattr(out[0], "grad_fn", None), (False,))[0]):
            # each piece its own node of the dependency graph: where one operation takes two pieces of one split (a
            # C2f's ``torch.cat(list(h.chunk(2, 1)) + …)``), both were one input, and neither mapping could tell
            # them apart; a copy keeps the values, and zeros stay zeros
            return tuple(t.clone() for t in out)
        return out

    def _zero_operand(self, func: Any, args: tuple, kwargs: dict) -> bool:
        """Whether the operands of ``func`` without autograd history are zeros where they meet the traced ones, so
        that a channel of zeros stays zeros: an add or subtract of 0 (Python's ``sum``), ``torch.where(c, h, 0)``,
        ``torch.maximum(h, torch.zeros_like(h))`` (a ReLU written out), a product with zeros or a concatenation
        beside them (a recurrent cell written by hand, its state started as ``x.new_zeros(…)``: ``sigmoid(f) * c``,
        ``torch.cat([x, h], 1)``). The dependency graph read such an operand as one that could feed the channel."""
        if func in self._ADDS or func in self._EXTREMES or func in self._PRODUCTS:
            values = list(args[:2])
        elif func in self._CATS:
            values = list(args[0] if args else kwargs.get("tensors", ()))
        elif func is torch.where:  # where(condition, input, other)
            values = [args[1] if len(args) > 1 else kwargs.get("input"),
                      args[2] if len(args) > 2 else kwargs.get("other")]
        elif func is torch.Tensor.where:  # input.where(condition, other)
            values = [args[0], args[2] if len(args) > 2 else kwargs.get("other")]
        else:
            return False
        untraced = [x for x in values
                    if not (isinstance(x, torch.Tensor) and (x.grad_fn is not None or x.requires_grad))]
        return bool(untraced) and len(untraced) < len(values) and all(self._zeros(x) for x in untraced)

    def _circular_pad(self, x: Any, pad: Any = (), mode: str = "constant", value: Any = None) -> torch.Tensor | None:
        """A circular pad of the axes after the channels (``padding_mode="circular"``), as the index selections it
        is: each keeps every channel where it was, zeros zeros. torch builds it by copying slices into a new empty
        tensor, which the graph read as an untraced operand of every channel: no unit before a circularly padded
        convolution could leave. None for any other pad (traced as it is)."""
        if mode != "circular" or not isinstance(x, torch.Tensor) or len(pad) % 2 or x.dim() < len(pad) // 2 + 2:
            return None
        pad = [int(p) for p in pad]
        if min(pad) < 0:
            return None  # a crop: traced as it is
        out = x
        for k in range(len(pad) // 2):
            axis, size = x.dim() - 1 - k, x.shape[x.dim() - 1 - k]
            index = torch.arange(-pad[2 * k], size + pad[2 * k + 1], device=x.device) % size
            out = out.index_select(axis, index)
            if out.grad_fn is not None:
                self.keeps_zero.add(out.grad_fn)
        return out

    @staticmethod
    def _glu_halves(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        x = args[0] if args else kwargs.get("input")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", -1)
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[dim] % 2:
            return None  # F.glu itself says what is wrong
        return tuple(x.chunk(2, dim))

    def _normalize(self, x: torch.Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12,
                   out: Any = None) -> torch.Tensor:
        """F.normalize as it computes (the norm along ``dim``, spread over it, the quotient), each step recorded."""
        if out is not None:
            raise TypeError("out=")
        norm = x.norm(p, dim, keepdim=True)
        self._record(torch.Tensor.norm, (x, p, dim, True), {}, norm)
        clamped = norm.clamp_min(eps)
        spread = clamped.expand_as(x)
        self._record(torch.Tensor.expand_as, (clamped, x), {}, spread)
        result = x / spread
        self._record(torch.Tensor.__truediv__, (x, spread), {}, result)
        return result

    def _local_response_norm(self, x: torch.Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                             k: float = 1.0) -> torch.Tensor:
        """F.local_response_norm as one division of its input by a denominator outside autograd, recorded as a
        reduction over the channels that a channel's leaving changes: each channel is divided by the squares of
        its ``size`` neighbours, and with one gone the window of the others moves. Traced as it computes (a view
        that adds an axis, a pad and an average pool over the channels), the dependency graph read those steps as
        a flatten whose channel numbers grew without bound, and gave that as the reason the layer stayed dense."""
        with torch.no_grad():
            denominator = x / F.local_response_norm(x, size, alpha, beta, k)
            # where x is 0 the quotient is no number, and any finite denominator gives the norm's 0
            denominator = torch.where(denominator.isfinite(), denominator, torch.ones_like(denominator))
        out = x / denominator
        self.reductions[out.grad_fn] = ("a local response norm", False)
        return out

    @staticmethod
    def _zeros(x: Any) -> bool:
        """Whether ``x`` is an operand of zeros outside autograd: the 0 that Python's ``sum(features)`` starts from,
        ``s = 0`` before a loop of ``s = s + …``, a ``torch.zeros_like`` accumulator. Added to a channel of zeros it
        leaves zeros; autograd records it as an operand without history, which was read as one that could feed the
        channel, and no channel of the summed layers could leave."""
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            return x == 0
        return (isinstance(x, torch.Tensor) and x.grad_fn is None and not x.requires_grad and x.numel() > 0
                and not x.is_complex() and bool((x == 0).all()))

    @staticmethod
    def _channel_axis(x: Any) -> bool:
        """Whether axis 1 of ``x`` surely holds channels: (batch, features), (batch, channels, H, W) or
        (…, D, H, W). A (batch, a, b) tensor may be a 1-d convolution's (batch, channels, time) or a sequence's
        (batch, tokens, features), which no shape tells apart."""
        return isinstance(x, torch.Tensor) and x.dim() in (2, 4, 5)

    def _spreads(self, x: Any, out: torch.Tensor) -> bool:
        """Whether ``x``, an operand of ``out`` with autograd history, has one channel that broadcasting spreads over
        ``out``'s channels ((batch, 1, H, W) beside (batch, C, H, W), or (batch, 1) beside (batch, C)); for a
        (batch, 1, time) operand beside (batch, C, time), only where it is a convolution's one channel, through
        operations of one operand (an attention map over time: its sigmoid or softmax; a 2-d convolution's map
        flattened over the pixels and its softmax, as attention pooling weighs ``h.flatten(2)`` by it)."""
        if not (isinstance(x, torch.Tensor) and x.grad_fn is not None and isinstance(out, torch.Tensor)
                and 0 < x.dim() <= out.dim() and out.dim() > 1 and out.shape[1] > 1):
            return False
        if ([1] * (out.dim() - x.dim()) + list(x.shape))[1] != 1:
            return False
        if self._channel_axis(out):
            return True
        # a (batch, 1, L) map of a convolution: its axis 1 is channels, not tokens
        return any(fn in self.conv_maps for fn in _single_chain(x.grad_fn, 7))

    def _pixel_pooling(self, args: tuple, out: Any) -> None:
        """A batched matmul that pools a map's pixels with weights of its own: ``h.flatten(2) @ w``, h (batch, C, H, W)
        and w (batch, H·W, k), out (batch, C, k) (attention pooling written as a matmul). Row c of the output reads
        channel c of h alone, so the channel passes through (a row of zeros stays zeros), and the weights' axis 1 holds
        pixels, not channels: their operand is cut from the channel numbers, as a one-channel map spread over the
        channels is. Torch-Pruning read the product as element-wise and joined the pixels to the channels, and the group
        failed ("grew past … through a flatten")."""
        if len(args) < 2 or not isinstance(out, torch.Tensor) or out.grad_fn is None:
            return
        a, b = args[0], args[1]
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() == b.dim() == out.dim()
                and a.dim() in (3, 4) and b.grad_fn is not None and a.grad_fn is not None
                and a.shape[-2] == out.shape[-2] > 1 and b.shape[-2] == a.shape[-1] != a.shape[-2]
                and (a.dim() == 3 or a.shape[1] == b.shape[1] == out.shape[1] == 1)):
            return
        # a view of a (batch, C, H, W) map: h.flatten(2); with a unit axis in front (GCNet's h.view(n, c, -1)
        # .unsqueeze(1) @ attention of shape (n, 1, H·W, 1))
        views = list(_single_chain(a.grad_fn, 2))
        at = next((i for i, view in enumerate(views) if _flattens_map(view, a.shape[-2], a.shape[-1])), None)
        if at is None:
            return
        for step in views[:at]:  # the unit axis put in front of the flattened map: channel c stays c
            self.flattens[step] = 1
        self._mark_pooling(out, a, b)
        if a.dim() == 4:
            self.pooled.add(out.grad_fn)

    def _row_mixing(self, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """``A @ h`` with a fixed or learned matrix A (a buffer or a parameter of the model's own code, 2-d) that mixes
        the rows of h (…, rows, C) whose last axis holds the channels: a graph convolution's normalised adjacency over
        the nodes, a fixed transform over the positions, token mixing written as a matmul. Column c of the result
        reads column c of h alone, so the channel passes through (a column of zeros stays zeros) and A holds no
        channel. Torch-Pruning saw torch.matmul fold h's channels into a batch of rows and named the layer before it
        unremovable ("_ExpandOp, which mixes or embeds channels"). Computed here as the batched matmul it is (A
        expanded over h's batch; the same values), its operand A cut from the channel numbers. None where the call is
        not of this form (h a convolution's (batch, C, length) map, whose channels A would mix, is not)."""
        if len(args) != 2 or kwargs:
            return None
        a, b = args
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() == 2 and b.dim() >= 3
                and a.grad_fn is None and b.grad_fn is not None and a.shape[1] == b.shape[-2] and b.shape[-1] > 1
                and not any(_op_name(f) == "Convolution" for f in _single_chain(b.grad_fn, 7))):
            return None
        wide = a.expand(*b.shape[:-2], *a.shape)
        out = torch.matmul(wide, b)
        self._mark_pooling(out, b, wide)
        return out

    def _einsum_pooling(self, args: tuple, out: Any) -> None:
        """``torch.einsum`` of the same pooling: ``"nchw,nhw->nc"``, ``"nchw,nkhw->nck"``: the first operand's axis 1
        (its channels) comes out as axis 1, every other axis of it but the batch is summed over, and the second
        operand has no channel axis."""
        if len(args) == 2 and isinstance(args[1], (list, tuple)):  # torch.einsum(equation, [a, b])
            args = (args[0], *args[1])
        if len(args) != 3 or not isinstance(args[0], str) or not isinstance(out, torch.Tensor) or out.grad_fn is None:
            return
        equation, a, b = args[0].replace(" ", ""), args[1], args[2]
        if "->" not in equation or "." in equation or not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                                                            and a.grad_fn is not None and b.grad_fn is not None):
            return
        operands, result = equation.split("->")
        first, _, second = operands.partition(",")
        if second and len(second) == b.dim() and len(first) == a.dim():
            if self._stack_weighting(first, second, result, b):
                self._mark_pooling(out, b, a, depth=6)
                return
            if self._stack_weighting(second, first, result, a):
                self._mark_pooling(out, a, b, depth=6)
                return
        if not second or len(first) < 3 or len(result) < 2 or a.dim() != len(first) or out.shape[1] <= 1:
            return
        batch, channel, pixels = first[0], first[1], set(first[2:])
        if (result[:2] != batch + channel or second[0] != batch or channel in second or not pixels <= set(second)
                or pixels & set(result)):
            return
        self._mark_pooling(out, a, b, depth=6)

    def _stack_weighting(self, first: str, second: str, result: str, stacked: torch.Tensor) -> bool:
        """Whether an einsum weighs the pieces of a stack (``second``'s operand, ``torch.stack`` of layers' outputs) by
        weights that hold none of their channels and sums over the stack's axis: a mixture of experts' gates over
        their stacked outputs, ``"be,bed->bd"``. Channel c of the result reads channel c of every piece alone, as a sum
        of them would; the gates are no channels of theirs (the graph joined the gates' four numbers to the experts'
        first four channels, and no expert could lose a unit)."""
        fn = stacked.grad_fn
        if fn not in self.stacks or fn not in self.stack_channels or "." in second:
            return False
        channel, axis = second[self.stack_channels[fn]], second[self.stacks[fn]]
        return (channel in result and channel not in first and axis not in result and len(set(second)) == len(second)
                and set(first) <= set(second) and set(result) <= set(second))

    def _mark_pooling(self, out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, depth: int = 4) -> None:
        """Mark the bmm that pools ``a``'s pixels with ``b`` (:meth:`_pixel_pooling`), or mixes ``a``'s rows with a
        matrix ``b`` (:meth:`_row_mixing`): ``b``'s side cut (a ``b`` without history, a buffer, feeds no channel),
        zero rows kept zero, the views after it and the expands on ``a``'s side channel-preserving."""
        # torch.matmul ends in a view of a bmm (einsum in views and permutes): the bmm is where the operands meet
        chain = list(_single_chain(out.grad_fn, depth))
        at = next((i for i, f in enumerate(chain) if _op_name(f) in ("Bmm", "Mm")), None)
        sides = [f for f, _ in chain[at].next_functions] if at is not None else []
        if len(sides) != 2:
            return
        bmm, views = chain[at], chain[:at]
        if b.grad_fn is None:  # a buffer: no history to cut, a factor of each channel that feeds none of its own
            if sides.count(None) != 1:
                return
            weights, features = None, next(f for f in sides if f is not None)
            self.zero_operands.add(bmm)
        else:
            found = [f for f in sides if f is not None and b.grad_fn in _single_chain(f, depth)]
            if len(found) != 1 or a.grad_fn in _single_chain(found[0], depth) or None in sides:
                return
            weights, features = found[0], next(f for f in sides if f is not found[0])
            self.spread[bmm].add(weights)
        self.keeps_zero.add(bmm)
        for view in views:  # the bmm's (batch, C, k) viewed back: channel c stays channel c
            self.flattens[view] = 1
        # torch.matmul expands and views the map to the bmm's batch inside: those steps keep its channels
        for step in _single_chain(features, depth):
            if step is a.grad_fn:
                break
            if _op_name(step) == "Expand":
                self.plain_expands.add(step)

    def _per_channel_constant(self, func: Any, operands: tuple, out: torch.Tensor) -> tuple[torch.Tensor, int] | None:
        """A tensor outside autograd (a buffer: a fixed per-channel scale) that multiplies or divides each channel of
        ``out`` on its own, with the axis of it that holds the channels; None where there is none. The dependency
        graph does not see it, and removing a unit broke the forward at the product (21 channels against its 24):
        :func:`prunedrop.slim.stage._remove_channels` slices it with the channels. Only a factor or a divisor: a
        pruned channel stays zeros through them, and ``s / x`` or an offset ``x + s`` would not keep it so."""
        if func not in self._SCALINGS or not (self._channel_axis(out) and out.shape[1] > 1) or len(operands) < 2:
            return None
        for k, t in enumerate(operands):
            if k == 0 and func in self._DIVISIONS:
                continue
            if (not isinstance(t, torch.Tensor) or t.grad_fn is not None or t.requires_grad or t.dim() < 1
                    or t.dim() > out.dim()):
                continue
            other = operands[1 - k]
            if not isinstance(other, torch.Tensor) or other.grad_fn is None or other.shape != out.shape:
                continue
            shape = [1] * (out.dim() - t.dim()) + list(t.shape)
            if shape[0] != 1 or shape[1] != out.shape[1]:
                continue
            if not all(a in (1, b) for a, b in zip(shape[2:], out.shape[2:])):
                continue
            base = t._base
            if base is None:
                return t, 1 - (out.dim() - t.dim())
            # a view of a buffer (self.std.view(1, -1, 1, 1)): the buffer itself is sliced, along its own axis of
            # the channels' width, where that is its only axis longer than 1
            long = [d for d, size in enumerate(base.shape) if size != 1]
            if base.numel() == out.shape[1] and len(long) == 1:
                return base, long[0]
        return None

    def _fixed_depthwise(self, args: tuple, kwargs: dict, out: Any) -> None:
        """A functional depthwise convolution with a fixed kernel (a buffer, no bias): anti-aliased downsampling's
        binomial blur, ``F.conv2d(h, self.filt, stride=2, groups=C)``, or a fixed edge filter per channel. Channel c of
        the result reads channel c alone, and a channel of zeros stays zeros; a kernel of one row per channel is
        sliced with the channels (a (1, 1, k, k) kernel expanded over them in the forward needs nothing). The graph
        read the kernel as an operand that feeds the channels, and the layer before kept its pruned units."""
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        call = {**dict(zip(names, args)), **kwargs}
        x, weight, bias = call.get("input"), call.get("weight"), call.get("bias")
        if not (isinstance(out, torch.Tensor) and out.grad_fn is not None and isinstance(x, torch.Tensor)
                and x.grad_fn is not None and isinstance(weight, torch.Tensor) and weight.grad_fn is None
                and not weight.requires_grad and bias is None and x.dim() >= 3):
            return
        channels = int(x.shape[1])
        if channels < 2 or int(call.get("groups", 1)) != channels or weight.shape[:2] != (channels, 1) \
                or out.shape[1] != channels:
            return
        self.keeps_zero.add(out.grad_fn)
        self.zero_operands.add(out.grad_fn)  # the kernel: a factor of each channel, feeding none of its own
        base = weight if weight._base is None else weight._base
        if base.dim() == weight.dim() and base.shape[0] == channels:
            self.buffers[out.grad_fn] = (base, 0)

    def _along_axis(self, func: Any, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        """A cumulative sum or product, a flip or a roll along one axis: along any axis but the channels' it keeps each
        channel on its own and a channel of zeros zeros (a causal running mean over time: ``h.cumsum(1) / counts``);
        over the channels a cumulative sum mixes them, and a flip or a roll moves them to other numbers, which the
        dependency graph read as element-wise. Where the channels lie (:meth:`_channels_at`) is not known, nothing
        is recorded: the graph's own reading stands, checked by the slim model's output."""
        what, key, at = self._ALONG_AXIS[func]
        x = args[0] if args else kwargs.get("input", kwargs.get("self"))
        dim = args[at] if len(args) > at else kwargs.get(key)
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or out.shape != x.shape:
            return
        if dim is None:  # a roll of the flattened tensor: every element to another place
            self.movers.add(out.grad_fn)
            return
        channels = self._channels_at(x)
        if channels is None:
            return
        dims = {int(d) % x.dim() for d in (dim if isinstance(dim, (tuple, list)) else (dim,))}
        if channels not in dims:
            self.keeps_zero.add(out.grad_fn)
        elif what is not None:
            self.reductions[out.grad_fn] = (what, False)
        else:
            self.movers.add(out.grad_fn)

    @staticmethod
    def _channels_at(x: torch.Tensor) -> int | None:
        """The axis of ``x`` that holds a layer's channels: 1 for (batch, features); for another rank, what made it
        through functions of one operand element by element: a convolution's map (1), or a Linear applied to (batch,
        tokens, features) or (batch, H, W, features) (the last: its matmul of the flattened rows, viewed back). None
        otherwise (a transpose, a norm or any other step between: not known; a (batch, H, W, C) map of a Swin block
        is rolled over H and W)."""
        if x.dim() == 2:
            return 1
        # a BatchNorm keeps each channel where it is: the walk goes on to its input
        for fn in _single_chain(x.grad_fn, 7, through=_BATCH_NORMS):
            name = _op_name(fn)
            if name == "Convolution":
                return 1
            if name in ("View", "UnsafeView"):  # a Linear's rows viewed back: its matmul below, the width kept
                below = [f for f, _ in fn.next_functions if f is not None]
                with contextlib.suppress(AttributeError, RuntimeError, TypeError, IndexError):
                    if (len(below) == 1 and _op_name(below[0]) in ("Addmm", "Mm")
                            and int(fn._saved_self_sym_sizes[-1]) == x.shape[-1]):
                        return x.dim() - 1
                return None
            if name not in _PER_ELEMENT and name not in _BATCH_NORMS:
                return None
        return None

    def _pad(self, func: Any, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        """A constant pad with zeros keeps a channel of zeros zeros; where it pads the channel axis of a (batch, C,
        H, W) or (batch, C, D, H, W) tensor (a CIFAR ResNet's option-A shortcut, ``F.pad(x[:, :, ::2, ::2], (0, 0,
        0, 0, 4, 4))``), input channel k becomes output channel k + the channels padded before it, and the padded
        channels are zeros of no input. The graph read the pad as element-wise: the shortcut's channels met the
        wider stream at the wrong numbers ("index 8 is out of bounds"), and no channel of the residual stream could
        leave."""
        x = args[0] if args else kwargs.get("input")
        pad = args[1] if len(args) > 1 else kwargs.get("pad")
        if func is F.pad:
            mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
            value = args[3] if len(args) > 3 else kwargs.get("value")
        else:
            mode, value = "constant", args[2] if len(args) > 2 else kwargs.get("value", 0)
        if mode != "constant" or value not in (None, 0) or not isinstance(x, torch.Tensor):
            return
        self.keeps_zero.add(out.grad_fn)
        pad = [int(p) for p in pad]
        at = 2 * (x.dim() - 2)  # the (before, after) pair of axis 1: pairs run from the last axis back
        if x.dim() in (4, 5) and len(pad) > at + 1 and (pad[at] or pad[at + 1]) and not any(pad[at + 2:]) \
                and min(pad[at], pad[at + 1]) >= 0:
            self.channel_pads[out.grad_fn] = (pad[at], int(x.shape[1]))

    @staticmethod
    def _flatten_stride(args: tuple, kwargs: dict, out: torch.Tensor) -> int | tuple[int, int] | None:
        """For a flatten of a (batch, C, H, W) or (batch, C, D, H, W) tensor into (batch, C·H·W): how many features
        each channel becomes (H·W), which Torch-Pruning infers from the widths of the layers around instead, and
        misreads where the features are concatenated with others before a Linear reads them (fastai's concat
        pooling, ``cat([maxpool(h).flatten(1), h.mean((2, 3))])``: stride 2 read for 1, and removing a unit broke the
        forward); 1 for a (batch, C, 1, …) tensor of any rank (a pooled matmul's (batch, C, 1) flattened); (C, T) for
        a Linear's (batch, T, C) output flattened, channel c becoming features c, C + c, 2C + c, … (a per-token
        projection read out whole, PatchTST's flatten head; Torch-Pruning mapped channel c to the block c·T … and
        removing a unit broke the forward); None for any other reshape."""
        x = args[0] if args else kwargs.get("input", kwargs.get("self"))
        if not (isinstance(x, torch.Tensor) and out.dim() == 2 and x.dim() >= 3 and out.shape[0] == x.shape[0]
                and x.shape[0] > 0 and out.shape[1] == x[0].numel()):
            return None
        if _Recorder._channels_at(x) == x.dim() - 1 and x.shape[-1] > 1:
            return int(x.shape[-1]), int(x[0].numel() // x.shape[-1])
        if x.dim() in (4, 5) or all(d == 1 for d in x.shape[2:]):
            return int(x[0, 0].numel())
        return None

    def _record(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        if (func in self._CONVS and isinstance(out, torch.Tensor) and out.dim() >= 3
                and out.shape[1] == 1 and out.grad_fn is not None):
            self.conv_maps.add(out.grad_fn)
            return
        if func in self._CONVS:
            self._fixed_depthwise(args, kwargs, out)
            return
        if func in self._REDUCTIONS:
            x = args[0] if args else kwargs.get("input")
            at = 2 if func in self._NORM_DIM_AT else 1
            dim = args[at] if len(args) > at else kwargs.get("dim")
            values = out[0] if isinstance(out, (tuple, list)) else out
            dims = dim if isinstance(dim, (tuple, list)) else (dim,)
            what, invariant, keeps_zero = self._REDUCTIONS[func]
            stacked = self.stacks.get(getattr(x, "grad_fn", None))
            if (stacked is not None and dim is not None and isinstance(values, torch.Tensor) and values.grad_fn
                    and {int(d) % x.dim() for d in dims} == {stacked} and keeps_zero):
                # over the axis a stack added (torch.stack([a, b], 1).sum(1)): the pieces meet channel by channel,
                # as in a sum of them, not over the channels
                self.keeps_zero.add(values.grad_fn)
                return
            if self._channel_axis(x) and dim is not None and isinstance(values, torch.Tensor) and values.grad_fn:
                if 1 in {int(d) % x.dim() for d in dims}:
                    self.reductions[values.grad_fn] = (what, invariant)
                elif keeps_zero:  # over the pixels: a channel of zeros stays zeros
                    self.keeps_zero.add(values.grad_fn)
            return
        if func in self._SPLITS and isinstance(out, (tuple, list)) and out:
            fns = {t.grad_fn for t in out}
            dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
            if len(fns) == 1 and None not in fns and out[0].dim() > 0:
                dim %= out[0].dim()
                x = args[0] if args else kwargs.get("input", kwargs.get("tensor"))
                at = self._channels_at(x) if isinstance(x, torch.Tensor) else None
                # whether it splits the channels: a Linear's features are the last axis of (batch, tokens,
                # features), whose axis 1 holds no channels
                self.splits[out[0].grad_fn] = (dim == at if at is not None else dim == 1,
                                               [int(t.shape[dim]) for t in out])
            return
        if not isinstance(out, torch.Tensor) or out.grad_fn is None or out.dim() == 0:
            return
        if func in self._STACKS:
            tensors = args[0] if args else kwargs.get("tensors", ())
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if tensors and all(isinstance(t, torch.Tensor) and t.dim() >= 2 for t in tensors):
                self.stacks[out.grad_fn] = int(dim) % out.dim()
                if (at := self._channels_at(tensors[0])) is not None:  # where the pieces' channels lie in the stack
                    self.stack_channels[out.grad_fn] = at + (at >= self.stacks[out.grad_fn])
        elif func in self._CATS:
            tensors = args[0] if args else kwargs.get("tensors", ())
            dim = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis", 0))
            self.cats[out.grad_fn] = (dim % out.dim(), [int(t.shape[dim % out.dim()]) for t in tensors])
        elif func in self._BLOCKS:
            factor = args[1] if len(args) > 1 else kwargs.get("upscale_factor", kwargs.get("downscale_factor"))
            # pixel_shuffle: (C·r², H, W) → (C, H·r, W·r), output channel k ← input channels k·r² … k·r² + r² − 1
            self.blocks[out.grad_fn] = (int(factor) ** (out.dim() - 2), func in (F.pixel_shuffle, torch.pixel_shuffle))
        elif func in self._MOVERS:
            self.movers.add(out.grad_fn)
        elif func in self._ALONG_AXIS:
            self._along_axis(func, args, kwargs, out)
        elif func is F.grid_sample:
            # a spatial transformer: channel c of the result is channel c of the input, resampled at the grid's
            # points; the grid (batch, H, W, 2) holds none of its channels (the graph joined its two coordinates, and
            # the localisation layer that made them, to the map's first channels)
            grid = args[1] if len(args) > 1 else kwargs.get("grid")
            if isinstance(grid, torch.Tensor) and grid.grad_fn is not None:
                self.spread[out.grad_fn].add(grid.grad_fn)
            self.keeps_zero.add(out.grad_fn)
        elif func in self._EXPANDS:
            x = args[0] if args else kwargs.get("input", kwargs.get("self"))
            # a (batch, channels, 1, 1) excitation spread over the pixels (y.expand_as(x)): the channels stay
            if (x.dim() == out.dim() >= 3 and x.shape[1] == out.shape[1] and x.shape[0] in (1, out.shape[0])
                    and all(a in (1, b) for a, b in zip(x.shape[2:], out.shape[2:]))):
                self.plain_expands.add(out.grad_fn)
            elif self._spreads(x, out):  # a norm spread over the channels it was taken over (F.normalize)
                self.spread[out.grad_fn].add(x.grad_fn)
        elif func in self._ELEMENTWISE:
            # an operand of one channel spread over the others: a spatial attention map (CBAM, an attention gate),
            # a per-example scale; none of its channel numbers meets the others'
            for x in args[:2]:
                if self._spreads(x, out):
                    self.spread[out.grad_fn].add(x.grad_fn)
            if (found := self._per_channel_constant(func, args[:2], out)) is not None:
                self.buffers[out.grad_fn] = found
        elif func in self._MATMULS:
            self._pixel_pooling(args, out)
        elif func is torch.einsum:
            self._einsum_pooling(args, out)
        elif func in self._PADS:
            self._pad(func, args, kwargs, out)
        elif func in self._FLATTENS and (stride := self._flatten_stride(args, kwargs, out)) is not None:
            self.flattens[out.grad_fn] = stride
        elif func in self._VIEWS:
            x = args[0] if args else kwargs.get("input", kwargs.get("self"))
            if (x.grad_fn in self.pooled and out.dim() >= 2 and out.shape[1] == x.shape[-2]
                    and math.prod(out.shape[2:]) == 1):
                self.flattens[out.grad_fn] = 1  # GCNet's context (n, 1, C, 1) viewed as (n, C, 1, 1): channel c stays c
                return
            # the axes after the channels split or merged, the channels where they were (a pooling written as a view:
            # (n, C, H, W) → (n, C, H/2, 2, W/2, 2), einops' reduce "b c (h 2) (w 2) -> b c h w"): channel c stays c;
            # the graph read a flatten there, with a stride from the map's pixels
            if (x.dim() >= 3 and out.dim() >= 3 and tuple(out.shape[:2]) == tuple(x.shape[:2]) and x.shape[1] > 1
                    and self._channels_at(x) == 1):
                self.flattens[out.grad_fn] = 1
                return
            # channels split into groups (a channel shuffle's view), or regrouped at the same rank (capsules:
            # (batch, 64, 4, 4) viewed as (batch, 8, 8, 16), eight 8-d capsules per position)
            if x.dim() >= 3 and out.dim() >= x.dim() and out.shape[0] == x.shape[0] and out.shape[1] != x.shape[1]:
                self.movers.add(out.grad_fn)


def _ranges(sizes: list[int]) -> list[tuple[int, int]]:
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [(a, a + n) for a, n in zip(starts, sizes, strict=True)]


def _position(fn: Any, entries: Any) -> int | None:
    """The one position among a concatenation's autograd ``entries`` ((function, output number) pairs) that comes
    from ``fn``, or None when none or several do."""
    found = [k for k, (f, _) in enumerate(entries) if f is fn] if fn is not None else []
    return found[0] if len(found) == 1 else None


def _real_mappings(graph: Any, recorder: _Recorder) -> None:
    """Map the channels of concatenations and splits along axis 1 by the pieces the traced call really had.

    Torch-Pruning infers a concatenation's input sizes from the layers around, and where it cannot (an input through
    a channel slice, a reduction, the model input concatenated beside features) the concatenation got no mapping
    or a shifted one: unrelated layers looked coupled and nothing left. It also numbers a split's outputs in the
    order its graph search met them, not the split's: after ``p, q = torch.split(h, [6, 4], 1)``, h's channel 8
    was read as one of p's. Registered in ``graph.prunedrop_real`` and applied by :func:`_each_mapping_alone`
    whenever Torch-Pruning recomputes its mappings; only where each piece is one autograd node of the graph."""
    try:
        from torch_pruning import ops
        from torch_pruning.dependency.index_mapping import _ConcatIndexMapping, _SplitIndexMapping
    except ImportError:  # pragma: no cover - another Torch-Pruning layout: its own inference stays
        return
    real = real_mappings(graph)
    for node in graph.module2node.values():
        if not getattr(node, "enable_index_mapping", True):
            continue
        if node.type == ops.OPTYPE.CONCAT and node.grad_fn in recorder.cats:
            dim, sizes = recorder.cats[node.grad_fn]
            entries = node.grad_fn.next_functions
            if dim != 1 or len(entries) != len(sizes):
                continue
            where = [_position(n.grad_fn, entries) for n in node.inputs]
            if None in where or len(set(where)) != len(where):
                continue
            pairs = [(n, _ranges(sizes)[k]) for n, k in zip(node.inputs, where, strict=True)]
            real[node] = (pairs, _ConcatIndexMapping, 1, True)
        elif node.type == ops.OPTYPE.SPLIT and node.grad_fn in recorder.splits:
            channels, sizes = recorder.splits[node.grad_fn]
            # equal pieces too (Torch-Pruning's own order read a CSP block's second half as its first); where the
            # pieces meet again (a gate a * sigmoid(b)), the group keeps both roots of each place (_every_root_kept)
            if not channels:
                continue
            where = []
            for out in node.outputs:
                numbers = {k for f, k in getattr(out.grad_fn, "next_functions", ()) if f is node.grad_fn}
                where.append(numbers.pop() if len(numbers) == 1 else None)
            if None in where:
                continue
            real[node] = ([(n, _ranges(sizes)[k]) for n, k in zip(node.outputs, where, strict=True)],
                          _SplitIndexMapping, 0, False)


def _pad_mappings(graph: Any, recorder: _Recorder) -> None:
    """Map a pad of the channel axis as a concatenation of its input beside channels of zeros
    (:meth:`_Recorder._pad`): registered in ``graph.prunedrop_real`` and in ``graph.prunedrop_pads``, whose channels
    beyond the input are zeros of no input (:meth:`GroupAnalysis.silent`)."""
    from torch_pruning.dependency.index_mapping import _ConcatIndexMapping

    graph.prunedrop_pads = set()
    for node in graph.module2node.values():
        if node.grad_fn in recorder.channel_pads and len(node.inputs) == 1:
            before, width = recorder.channel_pads[node.grad_fn]
            real_mappings(graph)[node] = ([(node.inputs[0], (before, before + width))], _ConcatIndexMapping, 1, True)
            graph.prunedrop_pads.add(node)


def real_mappings(graph: Any) -> dict[Any, tuple[list[tuple[Any, tuple[int, int]]], Any, int, bool]]:
    """Concatenation and split nodes of ``graph`` → their pieces' nodes and channel ranges, Torch-Pruning's mapping
    class and slot for them, and whether the pieces are the node's inputs (:func:`_real_mappings`)."""
    if not hasattr(graph, "prunedrop_real"):
        graph.prunedrop_real = {}
    return graph.prunedrop_real


def _apply_real(node: Any, graph: Any) -> None:
    """Set the index mappings between ``node`` and each of its pieces to the piece's real channel range: a
    concatenation's input or a split's output, both ways, in Torch-Pruning's slot for such an operation."""
    pairs, mapping, slot, inward = real_mappings(graph)[node]
    for dep in node.dependencies:  # Torch-Pruning's own mapping of it may have failed and stopped it (:func:`_stop`)
        if dep.index_mapping[0] is _no_channels:
            dep.index_mapping[0] = None
    for piece, (start, end) in pairs:
        for dep in node.dependencies:
            if dep.target is piece:
                dep.index_mapping[slot] = mapping(offset=[start, end], reverse=inward)
                break
        for dep in piece.dependencies:
            if dep.target is node:
                dep.index_mapping[slot] = mapping(offset=[start, end], reverse=not inward)
                break


def _map_blocks(node: Any, size: int, gathers: bool) -> None:
    """Map a pixel shuffle's channels (``gathers``): its output channel k is the block of its input channels
    k·size … k·size + size − 1 (size = r² for an upscale factor r); a pixel unshuffle's input channel i is its output
    channels i·size … i·size + size − 1. A pixel shuffle's node is marked with its block size
    (:meth:`GroupAnalysis.joined`: a block leaves whole). Blocks of 1 pass the numbers unchanged."""
    from torch_pruning.dependency.index_mapping import _FlattenIndexMapping
    for source in node.inputs:
        for dep in source.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = _FlattenIndexMapping(stride=size, reverse=gathers) if size > 1 else None
        for dep in node.dependencies:
            if dep.target is source:
                dep.index_mapping[0] = _FlattenIndexMapping(stride=size, reverse=not gathers) if size > 1 else None
    if gathers:
        node.prunedrop_block = size


def _map_flatten(node: Any, stride: int | tuple[int, int]) -> None:
    """Map a flatten's channels by its real ``stride`` (:meth:`_Recorder._flatten_stride`): input channel k is
    features k·stride … (k + 1)·stride − 1, as a pixel unshuffle's (:func:`_map_blocks`), or, for a (width, count)
    pair (channels last), features k, width + k, …; the numbers pass unchanged on to what reads the features (where a
    failed mapping had stopped them, :func:`_stop`)."""
    for dep in node.dependencies:
        dep.index_mapping[0] = None
    if isinstance(stride, int):
        _map_blocks(node, stride, gathers=False)
        return
    for source in node.inputs:
        for dep in source.dependencies:
            if dep.target is node:
                dep.index_mapping[0] = _Interleaved(*stride, reverse=False)
        for dep in node.dependencies:
            if dep.target is source:
                dep.index_mapping[0] = _Interleaved(*stride, reverse=True)


class _Interleaved:
    """Torch-Pruning's index mapping of a channels-last flatten: channel k of ``width`` becomes features k, width +
    k, …, (count − 1)·width + k; back, feature f is channel f mod width."""

    def __init__(self, width: int, count: int, reverse: bool) -> None:
        self.width, self.count, self.reverse = width, count, reverse

    def __call__(self, idxs: list) -> list:
        from torch_pruning._helpers import _HybridIndex

        if self.reverse:
            return list({_HybridIndex(idx=i.idx % self.width, root_idx=i.root_idx) for i in idxs})
        return [_HybridIndex(idx=t * self.width + i.idx, root_idx=i.root_idx) for i in idxs for t in range(self.count)]


def _recurrent_pruner(tp: Any) -> Any:
    """Torch-Pruning's pruning functions for ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` (and their cells) as readers of
    channels: an input channel leaves with its column of the first layer's ``weight_ih`` in each direction. Torch-Pruning's own LSTM
    functions know one-layer, one-way LSTMs only, and nothing of GRU and RNN, whose traced gates made its index
    mappings fail. Their hidden units never leave this way (:mod:`.recurrent` removes them)."""

    class RecurrentInputs(tp.pruner.function.BasePruningFunc):
        def prune_in_channels(self, layer: nn.RNNBase, idxs: list) -> nn.Module:
            gone = {int(i) for i in idxs}
            keep = torch.tensor([i for i in range(layer.input_size) if i not in gone], dtype=torch.long)
            for name in input_names(layer):
                weight = getattr(layer, name)
                sliced = weight.detach().index_select(1, keep.to(weight.device)).clone()
                # nn.RNNBase.__setattr__ puts the new weight into the flat list its forward reads
                setattr(layer, name, nn.Parameter(sliced, requires_grad=weight.requires_grad))
            layer.input_size = len(keep)
            return layer

        def prune_out_channels(self, layer: nn.RNNBase, idxs: list) -> nn.Module:
            raise PrunedropError(f"a {type(layer).__name__}'s hidden units leave by prunedrop.slim.recurrent, not here")

        def get_out_channels(self, layer: nn.RNNBase) -> int:
            return (getattr(layer, "proj_size", 0) or layer.hidden_size) * (2 if getattr(layer, "bidirectional",
                                                                                      False) else 1)

        def get_in_channels(self, layer: nn.RNNBase) -> int:
            return layer.input_size

    return RecurrentInputs()


def _group_norm_pruner(tp: Any) -> Any:
    """Torch-Pruning's GroupNorm pruning function, keeping a GroupNorm of one channel per group so (its own lowered
    ``num_channels`` alone, and the forward failed); other GroupNorms mix their channels and lose none."""

    class GroupNormChannels(tp.pruner.function.GroupNormPruner):
        def prune_out_channels(self, layer: nn.GroupNorm, idxs: list) -> nn.Module:
            one_each = layer.num_groups == layer.num_channels
            super().prune_out_channels(layer, idxs)
            if one_each:
                layer.num_groups = layer.num_channels
            return layer

        prune_in_channels = prune_out_channels

    return GroupNormChannels()


class _HandedOn(torch.autograd.Function):
    """``values`` (computed elsewhere) handed on as the outputs of one autograd node whose inputs are the given
    tensors: what a traced graph reads as one layer. For tracing only: no gradient flows back."""

    @staticmethod
    def forward(ctx: Any, values: list[torch.Tensor], *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.inputs = len(inputs)
        return tuple(v.clone() for v in values)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[None, ...]:
        return (None,) * (1 + ctx.inputs)


@contextlib.contextmanager
def _opaque_recurrent(model: nn.Module) -> Iterator[None]:
    """Each recurrent layer of ``model`` runs as one autograd node while Torch-Pruning traces it: its outputs computed
    as usual, then handed on by a function of its input and parameters, so that the graph reads the layer as it reads
    a Linear (its input's channels are its input channels) instead of following the gates inside it (a GRU's traced
    chunks broke Torch-Pruning's index mappings; an LSTM's read as mixing channels). A call with a packed sequence,
    or with an initial state that another layer computed (whose channels are hidden units, not input channels), runs
    as it is."""

    def opaque(module: nn.RNNBase, run: Any) -> Any:
        own: set[Any] = set()  # the autograd nodes of a cell's outputs: its state at the next step

        def forward(input: Any, hx: Any = None) -> Any:
            states = tensors_in(hx) if hx is not None else []
            if (isinstance(module, nn.RNNCellBase) and isinstance(input, torch.Tensor)
                    and all(not t.requires_grad or t.grad_fn in own for t in states)):
                # a cell stepped by hand, given zeros or its own output of the step before (hidden units, which
                # leave by noise of their own): each step reads as a layer of its input alone
                with torch.no_grad():
                    out = run(input, hx)
                params = [p for p in module.parameters() if p.requires_grad]
                new = _HandedOn.apply(list(tensors_in(out)), input, *params)
                own.update(t.grad_fn for t in new)
                return tuple(new) if isinstance(out, tuple) else new[0]
            if not isinstance(input, torch.Tensor) or any(t.requires_grad for t in states):
                return run(input, hx)
            with torch.no_grad():
                out, state = run(input, hx)
            params = [p for p in module.parameters() if p.requires_grad]
            new = _HandedOn.apply([out, *tensors_in(state)], input, *params)
            return (new[0], (new[1], new[2])) if isinstance(state, tuple) else (new[0], new[1])

        return forward

    with _forwards_replaced(model, lambda m: opaque(m, m.forward) if isinstance(m, RECURRENT_READERS) else None):
        yield


@contextlib.contextmanager
def _forwards_replaced(model: nn.Module, replace: Callable[[nn.Module], Any]) -> Iterator[None]:
    """Each module of ``model`` for which ``replace`` gives a function (and whose forward no one replaced on the
    instance already) runs that function as its forward for the while; the class's forward again afterwards."""
    patched = []
    for module in model.modules():
        if "forward" not in module.__dict__ and (forward := replace(module)) is not None:
            module.forward = forward
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


class _ChannelwiseHandedOn(_HandedOn):
    """:class:`_HandedOn` for a function that keeps each channel where it is and a channel of zeros zeros (an
    InstanceNorm without affine parameters): its node is in :data:`_KEEPS_ZERO`."""


@contextlib.contextmanager
def _opaque_instance_norms(model: nn.Module) -> Iterator[None]:
    """Each InstanceNorm without affine parameters that normalises by the sample's own statistics (torch's default,
    CycleGAN's and pix2pix's) runs as one autograd node of its input while Torch-Pruning traces it
    (:class:`_ChannelwiseHandedOn`): a module without parameters is no node of Torch-Pruning's, and the batch norm
    of a (1, N·C, …) view that F.instance_norm runs was read as an operand the trace did not follow, coupled to every
    channel, so that no unit before the norm could leave. Its output is the norm's own."""
    def opaque(module: nn.Module) -> Any:
        if not (isinstance(module, nn.modules.instancenorm._InstanceNorm) and not module.affine
                and not module.track_running_stats):
            return None
        run = module.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if not isinstance(x, torch.Tensor) or not x.requires_grad:
                return run(x)
            with torch.no_grad():
                out = run(x)
            return _ChannelwiseHandedOn.apply([out], x)[0]
        return forward

    with _forwards_replaced(model, opaque):
        yield


def trace(tp: Any, model: nn.Module, x: torch.Tensor) -> tuple[Any, set[Any]]:
    """Torch-Pruning's dependency graph of ``model`` on ``x``, and the autograd nodes of the model outputs. Call it
    inside :func:`all_requiring_grad`."""
    outputs: list[Any] = []
    recorder = _Recorder()

    def forward(m: nn.Module, inp: torch.Tensor) -> Any:
        # Called as m(x): Torch-Pruning's default would try m(*x) first, unpacking the batch.
        with recorder:
            outputs.append(m(inp))
        return outputs[-1]

    with torch.enable_grad(), _opaque_recurrent(model), _opaque_instance_norms(model):
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=x, forward_fn=forward, verbose=False,
            customized_pruners={**dict.fromkeys(RECURRENT_READERS, _recurrent_pruner(tp)),
                                nn.GroupNorm: _group_norm_pruner(tp)},
        )
        _real_mappings(graph, recorder)
        graph.prunedrop_plain_expands = {n for n in graph.module2node.values() if n.grad_fn in recorder.plain_expands}
        graph.prunedrop_flattens = {n: recorder.flattens[n.grad_fn] for n in graph.module2node.values()
                                    if n.grad_fn in recorder.flattens}
        _pad_mappings(graph, recorder)
        buffers = {id(b): name for name, b in model.named_buffers()}
        graph.prunedrop_buffers = {n: (buffers[id(t)], axis) for n in graph.module2node.values()
                                   if n.grad_fn in recorder.buffers
                                   for t, axis in [recorder.buffers[n.grad_fn]] if id(t) in buffers}
        nodes = list(graph.module2node.values())
        graph.prunedrop_reductions = {n: recorder.reductions[n.grad_fn] for n in nodes
                                      if n.grad_fn in recorder.reductions}
        graph.prunedrop_keeps_zero = {n for n in nodes if n.grad_fn in recorder.keeps_zero}
        graph.prunedrop_zero_operands = {n for n in nodes if n.grad_fn in recorder.zero_operands}
        graph.prunedrop_spread = {n: [i for i in n.inputs if i.grad_fn in recorder.spread[n.grad_fn]] for n in nodes
                                  if n.grad_fn in recorder.spread}
        for node in {*graph.prunedrop_reductions, *graph.prunedrop_spread}:
            _cut(node, graph)
        for node in graph.module2node.values():
            if node.grad_fn in recorder.movers:
                _stop(node, graph)
            elif node.grad_fn in recorder.blocks:
                _map_blocks(node, *recorder.blocks[node.grad_fn])
            elif node in graph.prunedrop_flattens:
                unmapped(graph).discard(node)
                _map_flatten(node, graph.prunedrop_flattens[node])
            elif node in real_mappings(graph):  # the real pieces, also where Torch-Pruning's own mapping failed
                unmapped(graph).discard(node)
                _apply_real(node, graph)
    return graph, {t.grad_fn for t in tensors_in(outputs[-1])}


def unit_groups(graph: Any) -> tuple[list[Any], dict[nn.Module, str]]:
    """Torch-Pruning's dependency group of the output channels of every Linear/Conv layer, as its
    ``get_all_groups`` builds them, and the layers whose group it could not build, each with the error.

    One operation that Torch-Pruning misreads (a ShuffleNetV2's channel split after a shuffle, whose index mapping
    raised IndexError) failed every group at once, so nothing could be slimmed or tied; now only the layers whose
    own group fails keep their channels.

    A layer is left out as a root only when the groups built so far hold every one of its units: one that a group
    holds in part (coupled to a layer of another width: a one-channel attention map read as channel 0 of the
    features it multiplies, a half of a split) got no group of its own before, and its other units were never
    analysed, so they stayed pruned with no word."""
    groups: list[Any] = []
    failed: dict[nn.Module, str] = {}
    covered: dict[int, set[int]] = defaultdict(set)
    ignored = list(getattr(graph, "IGNORED_LAYERS_IN_TRACING", []))
    # a group holds each node a few times at most (torchvision's ViT-B/16: 528 entries for 540 nodes)
    splits = {node for node, (_, _, _, inward) in real_mappings(graph).items() if not inward}
    with _bounded_groups(3 * len(graph.module2node) + 1000):
        for module in list(graph.module2node):
            if not isinstance(module, WEIGHT_LAYERS) or any(module is m for m in ignored):
                continue
            pruner = graph.get_pruner_of_module(module)
            width = None if pruner is None else pruner.get_out_channels(module)
            if width is None or len(covered[id(module)]) >= width:
                continue
            try:
                group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
                # its pieces may meet again; not in a group grown through a cycle (timm's BoTNet: minutes), where the
                # slim's check of the outputs still catches a channel the first root alone misread
                if (splits and len(group) <= 2 * len(graph.module2node)
                        and any(item.dep.target in splits for item in group)):
                    with contextlib.suppress(_GroupGrows), _every_root_kept(4 * sum(len(i.idxs) for i in group)):
                        group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(width)))
            except Exception as e:  # noqa: BLE001 - Torch-Pruning's own failure on this group only
                failed[module] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:160]}"
                continue
            members = []
            for item in group:
                if graph.is_out_channel_pruning_fn(item.dep.handler):
                    members.append(item.dep.target.module)
                    covered[id(item.dep.target.module)].update(int(i) for i in item.idxs)
            covered[id(module)].update(range(width))
            if not any(m is i for m in members for i in ignored):
                groups.append(group)
    return groups, failed


@paused_gc()
def _analysed_groups(model: nn.Module, example_input: torch.Tensor) -> tuple[list[GroupAnalysis], dict[Any, str]]:
    """Torch-Pruning's unit groups of ``model``, traced once on ``example_input`` and each analysed with nothing
    removed, and the modules' names; the model is not modified."""
    tp = import_torch_pruning()
    with all_requiring_grad(model):
        graph, _ = trace(tp, model, example_input.detach())
        every, _ = unit_groups(graph)
    names = node_names(model)
    return [GroupAnalysis(graph, g, names, {}, set()) for g in every], names


def coupled_producers(model: nn.Module, example_input: torch.Tensor) -> list[list[str]]:
    """Groups of Linear/Conv layers whose output units are the same channels, joined element-wise (residual additions,
    and products: a gated MLP's gate and up projections, a squeeze-excitation's fc2 and the expansion before it).

    Each group lists (in module order) the plain, non-depthwise Linear/Conv layers that write one set of channels
    with the same numbering: channel i of every member meets channel i of the others element-wise, as the stem
    and the second convolutions (and projection shortcuts) of a ResNet stage are added. Only whole, identically
    numbered groups are returned (a concatenation, which offsets the numbering, is not such a group); layers
    that produce their channels alone are left out. Traces ``model`` once on ``example_input`` with Torch-Pruning's
    dependency graph (as :func:`slim` does); the model is not modified.
    """
    analyses, names = _analysed_groups(model, example_input)
    layers = dict(model.named_modules())
    order = {n: i for i, n in enumerate(layers)}
    groups: dict[tuple[str, ...], None] = {}
    for an in analyses:
        # producer → {root channel: its unit}; a member producing some channels only is not a whole member
        units: dict[str, dict[int, int]] = defaultdict(dict)
        for root, channel in an.channels.items():
            for node in channel.members:
                idx = an.producer_index(node, channel)
                if idx is not None and node.module in names:
                    units[names[node.module]][root] = idx
        members = [
            n for n, m in units.items()
            if len(m) == an.size == out_units(layers[n]) and all(root == idx for root, idx in m.items())
        ]
        if len(members) > 1 and len(members) == len(units):
            groups[tuple(sorted(members, key=order.__getitem__))] = None
    return [list(g) for g in groups]


def grouped_slots(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """Layers whose units a grouped convolution wants tied in slots (recipe key ``tie_grouped``): layer name → the
    period p, unit ``j·p + t`` of every group j being slot t.

    A grouped convolution (:func:`.common.is_grouped`) keeps its groups equal in size, so it loses a channel only as
    far as every group loses as many (:func:`prunedrop.slim.stage._grouped_rule`). Its own output channels are slots of
    ``out_channels / groups``; the layers that write its input channels (numbered as it reads them, every one of
    them) are slots of ``in_channels / groups``. A layer asked for two periods takes their greatest common divisor
    (every slot structure then holds). A depthwise convolution with a channel multiplier (one input channel per
    group) is left per channel: its groups are single input channels that leave whole, with their k outputs, and a
    slot of its k outputs would keep every group; only where it feeds a grouped convolution that asks for slots of
    its outputs are they slots of the greatest common divisor of that period and k (its own rule holds too). Periods that equal the layer's width (nothing tied) are dropped. Traces
    ``model`` once on ``example_input`` (as :func:`coupled_producers`); the model is not modified.
    """
    import math

    if not any(is_grouped(m) and m.in_channels // m.groups > 1 for m in model.modules()):
        return {}
    analyses, names = _analysed_groups(model, example_input)
    layers = dict(model.named_modules())
    periods: dict[str, int] = {}

    def want(name: str, period: int) -> None:
        periods[name] = math.gcd(periods.get(name, period), period)

    # grouped convolution → its input index → the (producer, unit) pairs that write it
    writers: dict[nn.Module, dict[int, set[tuple[str, int | None]]]] = defaultdict(lambda: defaultdict(set))
    for an in analyses:
        for channel in an.channels.values():
            producers = {(names[node.module], an.producer_index(node, channel)) for node in channel.members
                         if node.module in names and isinstance(node.module, WEIGHT_LAYERS)
                         and not is_depthwise(node.module)}
            for node, idxs in an.consumers(channel):
                if is_grouped(node.module):
                    for i in idxs:
                        writers[node.module][i].update(producers)
    for name, conv in layers.items():
        if not is_grouped(conv) or conv.in_channels // conv.groups == 1:
            continue
        want(name, conv.out_channels // conv.groups)
        by_input = writers.get(conv, {})
        if len(by_input) != conv.in_channels:
            continue
        candidates = set.intersection(*({p for p, _ in pairs} for pairs in by_input.values()))
        for producer in candidates:
            if out_units(layers[producer]) == conv.in_channels and all(
                    (producer, i) in by_input[i] for i in range(conv.in_channels)):
                want(producer, conv.in_channels // conv.groups)
    for name, conv in layers.items():  # a multiplier asked for slots by the grouped layer it feeds keeps its own too
        if name in periods and is_grouped(conv) and conv.in_channels // conv.groups == 1:
            want(name, conv.out_channels // conv.groups)
    return {n: p for n, p in periods.items() if p < out_units(layers[n])}
