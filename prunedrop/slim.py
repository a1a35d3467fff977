"""The slim stage: physically remove pruned units, so that the smaller model computes the same function.

Input: the masked deterministic model (plain layers; a pruned unit outputs exactly 0 because its weight row
and bias are zero) and a keep mask per output unit of each Linear/Conv layer. Output: a smaller plain model
that computes the same function in eval mode, checked on the example input.

Which layers a unit touches is the job of a dependency graph, and we do not write our own: Torch-Pruning's
``DependencyGraph`` traces the model once and, for every channel of every Linear/Conv layer, lists each
place it reaches — the producer's weight row and bias, the BatchNorm entry, the consumers' weight columns (a
block of ``H·W`` columns after flatten→linear), offsets through concatenations, the input *and* output
channel of a depthwise convolution, and the other producers that a residual addition couples to it. Its
pruning functions do the index surgery. What it does not know is whether removing a channel is *exact*;
that is this module's part:

* **Coupling.** A channel goes only when every layer that produces it agrees: walking back from each
  consumer through the channel's group, every path must end at a pruned unit (a producer or a depthwise
  convolution whose unit is pruned) or at a parameter. One live producer keeps the channel in all members.
* **Constants.** A pruned unit outputs 0, but what its consumers see may not be 0: a BatchNorm turns it into
  ``β − γ·μ/√(σ²+ε)``, and an activation with ``f(0) ≠ 0`` (sigmoid) or a constant turns it into ``f(c)``.
  Such a channel is input-independent, so its consumer's share is a fixed tensor, measured on the example
  input. For a Linear consumer (including flatten→linear) that share is a vector: it is folded into the
  bias exactly. For a convolution it is folded exactly when it is the same at every output position — no
  zero padding, or the constant is 0. When zero padding makes it position-dependent, no bias can replace it;
  the channel is then kept (and the case named in ``notes``), or, with ``fold_borders=True``, removed with
  its interior value folded in, the border outputs differing by a measured amount. (A share is measured at
  the example input's resolution. In one rare layout — a constant through a kept, zero-padded depthwise
  convolution, then global pooling, then a Linear — the pooled constant depends on the resolution, so the
  fold is exact at the example's resolution only.)
* **Unsupported places.** A channel that reaches the model output, passes through a grouped
  (non-depthwise) or transposed convolution, a LayerNorm/GroupNorm (which mix channels), an embedding, an
  attention or recurrent layer or a bare parameter is kept; ``notes`` says so.
* **Recurrent layers.** Masks of ``nn.LSTM`` / ``nn.GRU`` layers (pruned hidden units) are handled first, by
  :mod:`prunedrop.slim_recurrent`, which shrinks ``hidden_size`` and the consumers' columns.

Finally the masked and the slim model run on the example input; a difference above ``atol`` that the notes
do not explain raises :class:`PrunedropError` (it means the graph tracing missed something, e.g. an
operation that mixes channels but looks element-wise to Torch-Pruning).
"""

from __future__ import annotations

import contextlib
import copy
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .errors import PrunedropError
from .slim_recurrent import slim_recurrent, split_recurrent_masks

__all__ = ["HeadsAndRowsResult", "SlimResult", "coupled_producers", "remove_heads_and_rows", "silent_units", "slim"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_WEIGHT_LAYERS = (nn.Linear, *_CONV)
# Channel-wise layers a removed channel may pass through: Torch-Pruning slices them along with it, and they
# act on each channel separately, so the removed channel's value stays input-independent and others unchanged.
_PER_CHANNEL = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.PReLU)
# How many input channels' contributions one grouped convolution computes at once (bounds its memory).
_CHANNEL_CHUNK = 32
# Relative spread below which a measured value counts as the same everywhere (float32 rounding, not padding).
_RTOL = 1e-6


@dataclass
class SlimResult:
    """The slim model and what slimming did."""

    model: nn.Module
    """The smaller plain model, in eval mode."""
    removed: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Linear/Conv layer name → (output units before, after): every masked layer and every one that shrank;
    recurrent layer name → (hidden_size before, after)."""
    max_abs_diff: float = 0.0
    """Measured max |masked model − slim model| on the example input, in eval mode."""
    notes: list[str] = field(default_factory=list)
    """Units that were pruned but kept (and why), constants folded inexactly, masked layers left alone."""
    heads: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Attention module → (heads before, after), filled by the pipeline from :func:`remove_heads_and_rows`."""
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Embedding → (rows before, after), filled by the pipeline from :func:`remove_heads_and_rows`."""


@dataclass
class _Channel:
    """One channel of a dependency group: the places it reaches, by graph node."""

    members: dict[Any, list[tuple[Any, int]]] = field(default_factory=lambda: defaultdict(list))
    """tp graph node → [(pruning function, local index)]."""


def _import_torch_pruning():
    try:
        import torch_pruning as tp
    except ImportError:  # pragma: no cover - it is a declared dependency
        raise PrunedropError(
            "slimming needs the torch-pruning package: pip install 'torch-pruning>=1.6.1,<1.7'"
        ) from None
    return tp


def _units(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _is_depthwise(module: nn.Module) -> bool:
    """One input channel per output channel: pruning its output channel prunes its input channel too."""
    return (
        isinstance(module, _CONV)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _is_unsupported_conv(module: nn.Module) -> bool:
    """Convolutions whose channels Torch-Pruning cannot remove one by one: grouped (not depthwise) ones,
    whose per-group weight slices would have to shrink alike, and transposed ones."""
    if isinstance(module, _CONV):
        return module.groups > 1 and not _is_depthwise(module)
    return isinstance(module, nn.modules.conv._ConvNd)


def silent_units(module: nn.Module) -> torch.Tensor:
    """One bool per output unit of a Linear/Conv layer: its weight row and its bias (if any) are exactly 0, so it
    outputs 0 whatever the input (a pruned unit of the masked model)."""
    with torch.no_grad():
        silent = module.weight.detach().flatten(1).eq(0).all(dim=1)
        if module.bias is not None:
            silent &= module.bias.detach().eq(0)
    return silent


def _check_masks(model: nn.Module, unit_masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Validate the masks against the model: known layer, one bool per unit, pruned units really zero."""
    modules = dict(model.named_modules())
    masks: dict[str, torch.Tensor] = {}
    for name, mask in unit_masks.items():
        module = modules.get(name)
        if not isinstance(module, _WEIGHT_LAYERS):
            found = "no such module" if module is None else f"a {type(module).__name__}"
            raise PrunedropError(f"unit mask for {name!r}: {found}; masks are for Linear/Conv layers only")
        mask = torch.as_tensor(mask).detach().cpu()
        if mask.shape != (_units(module),):
            raise PrunedropError(
                f"unit mask for {name!r} has shape {tuple(mask.shape)}; it needs one entry per output unit "
                f"({_units(module)})"
            )
        mask = mask.bool()
        pruned = ~mask
        if pruned.any():
            live = ~silent_units(module).cpu()[pruned]
            if live.any():
                units = torch.nonzero(pruned).flatten()[live].tolist()
                raise PrunedropError(
                    f"{name!r}: units {units} are pruned in the mask but their weights or bias are not zero; "
                    "slim the deterministic model that the prune stage returns (pruned units zeroed)"
                )
        masks[name] = mask
    return masks


def _record_inputs(model: nn.Module, x: torch.Tensor) -> dict[nn.Module, list[torch.Tensor]]:
    """The input of every Linear/Conv call on ``x`` (up to 4 samples): what a removed channel feeds it."""
    seen: dict[nn.Module, list[torch.Tensor]] = defaultdict(list)

    def hook(module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            seen[module].append(args[0].detach()[:4].clone())

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, _WEIGHT_LAYERS)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


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


def _same_everywhere(values: torch.Tensor, dims: tuple[int, ...]) -> bool:
    """Whether ``values`` is constant along ``dims`` up to float rounding."""
    spread = values.amax(dim=dims) - values.amin(dim=dims)
    scale = values.abs().amax(dim=dims).clamp(min=1.0)
    return bool((spread <= _RTOL * scale).all())


def _conv_shares(conv: nn.Module, x: torch.Tensor, channels: list[int]) -> torch.Tensor:
    """What each of ``channels`` of the single-sample input ``x`` adds to ``conv``'s output, bias excluded.

    Returns ``[len(channels), out_channels, *out_spatial]``. A grouped convolution with one input channel per
    group computes them all at once, in chunks to bound memory (for ``groups == 1`` consumers only).
    """
    out = []
    conv_fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[conv.weight.dim() - 2]
    for start in range(0, len(channels), _CHANNEL_CHUNK):
        chunk = channels[start : start + _CHANNEL_CHUNK]
        n, o = len(chunk), conv.out_channels
        w = conv.weight.detach()[:, chunk].transpose(0, 1).reshape(n * o, 1, *conv.weight.shape[2:])
        inp = x[chunk].unsqueeze(0)
        padding = conv.padding
        if conv.padding_mode != "zeros":
            inp = F.pad(inp, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
            padding = 0
        y = conv_fn(inp, w, None, conv.stride, padding, conv.dilation, n)
        out.append(y.reshape(n, o, *y.shape[2:]))
    return torch.cat(out)


class _GroupAnalysis:
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
        self.size = len(group[0].idxs)
        self.channels: dict[int, _Channel] = defaultdict(_Channel)
        for item in group:
            for idx, root in zip(item.idxs, item.root_idxs):
                self.channels[root].members[item.dep.target].append((item.dep.handler, idx))

    # -- roles of the nodes -------------------------------------------------------------------------------

    def name(self, node: Any) -> str:
        return self.names.get(node.module) or str(node.module)

    def producer_index(self, node: Any, channel: _Channel) -> int | None:
        """The unit of ``node`` that produces this channel, if ``node`` is a plain Linear/Conv doing so."""
        module = node.module
        if not isinstance(module, _WEIGHT_LAYERS) or _is_depthwise(module):
            return None
        for handler, idx in channel.members.get(node, []):
            if self.graph.is_out_channel_pruning_fn(handler) and not self.graph.is_in_channel_pruning_fn(
                handler
            ):
                return idx
        return None

    def consumers(self, channel: _Channel) -> list[tuple[Any, list[int]]]:
        """Plain Linear/Conv layers reading this channel, with the input indices it occupies there."""
        found = []
        for node, entries in channel.members.items():
            module = node.module
            if not isinstance(module, _WEIGHT_LAYERS) or _is_depthwise(module):
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

    def pruned(self, node: Any, idx: int) -> bool:
        mask = self.masks.get(self.name(node))
        return mask is not None and not bool(mask[idx])

    def label(self) -> str:
        """The group's producers, root first: they all number the group's channels alike."""
        root = self.names.get(self.root, str(self.root))
        producers = sorted(
            {
                self.name(n)
                for ch in self.channels.values()
                for n in ch.members
                if self.producer_index(n, ch) is not None
            }
            - {root}
        )
        return f"{root} (coupled with {', '.join(producers)})" if producers else root

    def pruned_by(self, channel: _Channel) -> list[str]:
        """The producers and depthwise convolutions whose unit for this channel is pruned."""
        found = []
        for node, entries in channel.members.items():
            idx = self.producer_index(node, channel)
            if idx is None and _is_depthwise(node.module):
                idx = entries[0][1]
            if idx is not None and self.pruned(node, idx):
                found.append(self.name(node))
        return sorted(found)

    # -- decisions ----------------------------------------------------------------------------------------

    def blocker(self, channel: _Channel) -> str | None:
        """Why this channel cannot be removed at all, whatever the masks say; None if it can be."""
        tp_ops = self.graph.ops
        consumers = {node for node, _ in self.consumers(channel)}
        for node in channel.members:
            module = node.module
            # Torch-Pruning adds an output node only when the last operation is not a layer: check both.
            if node.type == tp_ops.OPTYPE.OUTPUT or (
                node not in consumers and node.grad_fn in self.output_fns
            ):
                return "they reach the model output"
            if _is_unsupported_conv(module):
                kind = "transposed" if getattr(module, "transposed", False) else "grouped"
                return (
                    f"they pass through the {kind} convolution {self.name(node)}, "
                    "which cannot lose single channels"
                )
            if isinstance(module, nn.Module) and not isinstance(module, (*_WEIGHT_LAYERS, *_PER_CHANNEL)):
                if node.type not in (
                    tp_ops.OPTYPE.ELEMENTWISE,
                    tp_ops.OPTYPE.CONCAT,
                    tp_ops.OPTYPE.SPLIT,
                    tp_ops.OPTYPE.RESHAPE,
                    tp_ops.OPTYPE.SLICE,
                ):
                    kind = type(module).__name__
                    return f"they pass through {self.name(node)} ({kind}), which mixes or embeds channels"
            if isinstance(module, nn.Parameter):
                return f"they pass through the bare parameter {self.name(node)}"
        return None

    def live_sources(self, channel: _Channel) -> set[str]:
        """Layers whose live units feed this channel into some consumer (none: it is input-independent)."""
        live: set[str] = set()
        memo: dict[Any, bool] = {}

        def depends(node: Any) -> bool:
            if node in memo:
                return memo[node]
            memo[node] = False  # a cycle adds no input of its own
            module = node.module
            entries = channel.members.get(node)
            if entries is None:
                result = True  # left the group: nothing tells us it is constant
            elif (idx := self.producer_index(node, channel)) is not None:
                result = not self.pruned(node, idx)
                if result:
                    live.add(self.name(node))
            elif isinstance(module, _WEIGHT_LAYERS) and not _is_depthwise(module):
                result = True
            elif _is_depthwise(module) and self.pruned(node, entries[0][1]):
                result = False  # a pruned depthwise unit outputs 0 whatever it is fed
            else:
                inputs = [n for n in node.inputs if n in channel.members]
                if not isinstance(module, nn.Module) or type(module).__module__.startswith("torch_pruning"):
                    if _has_untracked_input(node.grad_fn):
                        live.add(f"an untraced operand of {self.name(node)}")
                        memo[node] = True
                        return True
                    if not inputs and _parameters_only(node.grad_fn):
                        memo[node] = False  # e.g. a Linear's transposed weight
                        return False
                if not inputs:
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


def _consumer_shares(
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
    weight = consumer.weight.detach()
    if not calls:
        return {}, dict.fromkeys(wanted, "its input could not be recorded")
    for x in calls:
        batch_dims = tuple(range(x.dim() - 1)) if isinstance(consumer, nn.Linear) else (0,)
        live: dict[Any, list[int]] = {}
        for key, idxs in wanted.items():
            if key in problems and problems[key] != "border-folded":
                continue
            v = x[..., idxs] if isinstance(consumer, nn.Linear) else x[:, idxs]
            # Input-independent by the graph walk; a difference between samples would mean the walk is wrong.
            if not _same_everywhere(v, batch_dims):
                problems[key] = "its value varies with the input"
            elif isinstance(consumer, nn.Linear):
                _merge_share(shares, problems, key, weight[:, idxs] @ v.reshape(-1, len(idxs))[0])
            elif not v[0].any():
                _merge_share(
                    shares, problems, key, torch.zeros(consumer.out_channels, dtype=x.dtype, device=x.device)
                )
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


def _max_abs_diff(want: Any, got: Any) -> float:
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
        return max((_max_abs_diff(want[k], got[k]) for k in want), default=0.0)
    if isinstance(want, (tuple, list)):
        return max((_max_abs_diff(a, b) for a, b in zip(want, got)), default=0.0)
    return 0.0


def _tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors in a (nested) tuple/list/dict output."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors(item)]
    return []


def _format_units(units: Iterable[int]) -> str:
    units = sorted(units)
    return f"[{', '.join(map(str, units[:12]))}{', ...' if len(units) > 12 else ''}]"


@torch.no_grad()
def _fold(consumer: nn.Module, share: torch.Tensor) -> None:
    """Add a removed input's constant contribution to ``consumer``'s bias (creating the bias if needed)."""
    if consumer.bias is None:
        consumer.bias = nn.Parameter(
            torch.zeros(_units(consumer), dtype=consumer.weight.dtype, device=consumer.weight.device)
        )
    consumer.bias += share.to(consumer.bias.dtype)


@dataclass
class _Plan:
    """What slimming will do, decided before anything is changed (all indices in original coordinates)."""

    removal: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    """Group number → root channels to remove."""
    shares: dict[nn.Module, dict[tuple[int, int], torch.Tensor]] = field(default_factory=dict)
    """Consumer → {(group, channel): its bias share}, for the candidate channels."""
    border_folded: dict[nn.Module, set[tuple[int, int]]] = field(default_factory=lambda: defaultdict(set))
    """Consumer → channels whose share is only the interior value (``fold_borders=True``)."""
    kept: dict[tuple[int, str], list[int]] = field(default_factory=lambda: defaultdict(list))
    """(group, reason) → pruned root channels that stay."""

    def removed_keys(self) -> set[tuple[int, int]]:
        return {(gi, r) for gi, roots in self.removal.items() for r in roots}


@contextlib.contextmanager
def _all_requiring_grad(model: nn.Module) -> Iterator[None]:
    """Every parameter of ``model`` requires grad inside (Torch-Pruning's tracing follows autograd, and its pruning
    functions work on the traced graph); each parameter's own flag comes back afterwards."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(True)
    try:
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, True))


def _trace(tp: Any, model: nn.Module, x: torch.Tensor) -> tuple[Any, set[Any]]:
    """Torch-Pruning's dependency graph of ``model`` on ``x``, and the autograd nodes of the model outputs. Call it
    inside :func:`_all_requiring_grad`."""
    outputs: list[Any] = []

    def forward(m: nn.Module, inp: torch.Tensor) -> Any:
        # Called as m(x): Torch-Pruning's default would try m(*x) first, unpacking the batch.
        outputs.append(m(inp))
        return outputs[-1]

    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=x, forward_fn=forward, verbose=False
        )
    return graph, {t.grad_fn for t in _tensors(outputs[-1])}


def _plan(
    analyses: list[_GroupAnalysis],
    calls: dict[nn.Module, list[torch.Tensor]],
    names: dict[Any, str],
    fold_borders: bool,
    channel_multiple: int = 1,
) -> _Plan:
    """Decide which pruned channels leave, and measure the constants they leave in their consumers."""
    plan = _Plan()
    # 1. Structure: which pruned channels may go at all.
    candidates: dict[tuple[int, int], _Channel] = {}
    for gi, an in enumerate(analyses):
        for root, channel in sorted(an.channels.items()):
            pruned_by = an.pruned_by(channel)
            if not pruned_by:
                continue
            reason = an.blocker(channel)
            if reason is None and (live := an.live_sources(channel)):
                reason = (
                    f"pruned in {', '.join(pruned_by)} but still produced by {', '.join(sorted(live))}, "
                    "coupled to it by a residual addition; a channel leaves only when every coupled layer "
                    "prunes it"
                )
            if reason is None:
                candidates[(gi, root)] = channel
            else:
                plan.kept[(gi, reason)].append(root)

    # 2. Constants: what each candidate leaves in its consumers, and whether a bias can hold it.
    wanted: dict[nn.Module, dict[tuple[int, int], list[int]]] = defaultdict(dict)
    for key, channel in candidates.items():
        for node, idxs in analyses[key[0]].consumers(channel):
            wanted[node.module][key] = idxs
    for consumer, keys in wanted.items():
        plan.shares[consumer], problems = _consumer_shares(
            consumer, calls.get(consumer, []), keys, fold_borders
        )
        for key, problem in problems.items():
            if problem == "border-folded":
                plan.border_folded[consumer].add(key)
                continue
            if candidates.pop(key, None) is None:
                continue  # already kept for another consumer
            if problem == "border":
                problem = (
                    f"they carry a non-zero constant (a BatchNorm shift, f(0) of an activation) into "
                    f"{names.get(consumer, '?')}, where zero padding (there or in a depthwise convolution "
                    "before it) makes it differ at the borders, so no bias can replace it; fold_borders=True "
                    "removes them anyway, inexactly"
                )
            else:
                problem = f"in {names.get(consumer, '?')}, {problem}"
            plan.kept[(key[0], problem)].append(key[1])

    # 3. Removal sets; a group never loses all of its channels, so that no layer is left empty.
    for gi, root in sorted(candidates):
        plan.removal[gi].append(root)
    for gi, roots in plan.removal.items():
        if len(roots) == analyses[gi].size:
            reason = "every channel of the group is pruned; one is kept so that its layers are not empty"
            plan.kept[(gi, reason)].append(roots.pop(0))
    # 4. Widths in whole blocks: keep some pruned (exactly silent) channels so that every group's width is a
    # multiple of channel_multiple; they stay in the model as they are, constants and all, so nothing changes.
    if channel_multiple > 1:
        for gi, roots in plan.removal.items():
            size = analyses[gi].size
            kept = size - len(roots)
            target = min(size, -(-kept // channel_multiple) * channel_multiple)
            if target > kept:
                reason = f"kept (silent) to round the width {kept} up to {target}, a multiple of {channel_multiple}"
                plan.kept[(gi, reason)].extend(roots[len(roots) - (target - kept):])
                del roots[len(roots) - (target - kept):]
    return plan


def _fold_constants(plan: _Plan, names: dict[Any, str]) -> list[str]:
    """Add the removed channels' shares to their consumers' biases; notes for the inexact (border) ones."""
    removed = plan.removed_keys()
    approximate = []
    for consumer, by_key in plan.shares.items():
        folded = [share for key, share in by_key.items() if key in removed]
        if folded:
            _fold(consumer, torch.stack(folded).sum(dim=0))
        inexact = plan.border_folded[consumer] & removed
        if inexact:
            approximate.append(
                f"{names.get(consumer, '?')}: {len(inexact)} removed input channel(s) carried a non-zero "
                "constant that zero padding makes differ at the borders; their interior contribution is "
                "folded into the bias, so outputs near the borders differ"
            )
    return approximate


def _remove_channels(graph: Any, analyses: list[_GroupAnalysis], removal: dict[int, list[int]]) -> None:
    """Slice every layer that the removed channels touch, with Torch-Pruning's pruning functions.

    Every group's items are collected in the original coordinates first and merged per (layer, function), so
    that each layer is sliced once: pruning group by group would shift the indices of a layer that several
    groups share (a consumer after a concatenation) before the next group's items were computed.
    """
    merged: dict[tuple[int, Any], tuple[Any, set[int]]] = {}
    for gi, roots in removal.items():
        if not roots:
            continue
        an = analyses[gi]
        for item in graph.get_pruning_group(an.root, an.root_handler, roots):
            target = item.dep.target.module
            if not isinstance(target, nn.Module) or type(target).__module__.startswith("torch_pruning"):
                continue  # Torch-Pruning's bookkeeping nodes (add, concat, reshape): nothing to slice
            handler = item.dep.handler
            slot = merged.setdefault((id(target), getattr(handler, "__func__", handler)), (item.dep, set()))
            slot[1].update(item.idxs)
    for dep, idxs in merged.values():
        dep(sorted(idxs))


def slim(
    model: nn.Module,
    unit_masks: Mapping[str, torch.Tensor],
    example_input: torch.Tensor,
    *,
    atol: float = 1e-5,
    fold_borders: bool = False,
    channel_multiple: int = 1,
) -> SlimResult:
    """Remove the pruned units of ``model`` physically, wherever they reach, keeping its function.

    ``model`` is the masked deterministic model: plain layers in which each pruned unit outputs exactly 0
    (its weight row and bias are zero; checked). ``unit_masks`` maps the qualified name of a Linear/Conv layer
    to a bool keep mask over its output units. ``model`` is not modified (a deep copy is slimmed).

    A channel shared by several producers (a residual addition) goes only if all of them prune it. A
    removed channel whose consumers see a non-zero constant (a BatchNorm shift, sigmoid(0)) has that constant
    folded into their biases where that is exact; where zero padding makes it position-dependent the channel
    is kept, unless ``fold_borders=True``, which removes it anyway with its interior value folded in (the
    border outputs then differ; the measured difference is returned and explained in ``notes``). See the
    module docstring for the whole contract.

    ``channel_multiple`` > 1 removes fewer channels where that makes a group's width a multiple of it: the pruned
    channels that stay output exact zeros, so the function is the same, and convolution kernels that work in
    blocks of channels (onnxruntime's NCHWc blocks of 8 on AVX2, 16 on AVX-512) keep their fast path.

    Returns a :class:`SlimResult`. Raises :class:`PrunedropError` for a bad mask, or when the slim model's
    output on ``example_input`` differs from the masked model's by more than ``atol`` without a note that
    explains it.
    """
    recurrent, unit_masks = split_recurrent_masks(model, unit_masks)
    if recurrent:
        # hidden units of nn.LSTM / nn.GRU take their own path (prunedrop.slim_recurrent), then Linear/Conv units
        rec = slim_recurrent(model, recurrent, example_input, atol=atol)
        if not unit_masks:
            return SlimResult(model=rec.model, removed=rec.removed, max_abs_diff=rec.max_abs_diff, notes=rec.notes)
        inner = slim(rec.model, unit_masks, example_input, atol=atol, fold_borders=fold_borders,
                     channel_multiple=channel_multiple)
        with torch.no_grad():
            diff = _max_abs_diff(copy.deepcopy(model).eval()(example_input), inner.model(example_input))
        return SlimResult(model=inner.model, removed={**rec.removed, **inner.removed}, max_abs_diff=diff,
                          notes=rec.notes + inner.notes)
    tp = _import_torch_pruning()
    x = example_input.detach()  # an input that requires grad would look like a parameter to the tracing
    reference = copy.deepcopy(model).eval()
    work = copy.deepcopy(model).eval()
    masks = _check_masks(work, unit_masks)
    names = {m: n for n, m in work.named_modules()}
    calls = _record_inputs(work, x)
    notes: list[str] = []
    with _all_requiring_grad(work):
        graph, output_fns = _trace(tp, work, x)
        traced = {names[m] for m in graph.module2node if isinstance(m, nn.Module) and m in names}
        for name, mask in masks.items():
            if not bool(mask.all()) and name not in traced:
                notes.append(f"{name}: not reached by the forward pass on the example input; left unchanged")
        analyses = [
            _GroupAnalysis(graph, g, names, masks, output_fns)
            for g in graph.get_all_groups(root_module_types=_WEIGHT_LAYERS)
        ]
        if channel_multiple < 1:
            raise PrunedropError(f"channel_multiple must be at least 1, got {channel_multiple}")
        plan = _plan(analyses, calls, names, fold_borders, channel_multiple)
        approximate = _fold_constants(plan, names)
        _remove_channels(graph, analyses, plan.removal)
    work.eval()

    try:
        with torch.no_grad():
            want, got = reference(x), work(x)
    except RuntimeError as e:
        raise PrunedropError(
            f"the slimmed model no longer runs ({str(e).splitlines()[0]}); this is a bug in prunedrop's slim "
            "stage or a layer it does not support, please report it"
        ) from None
    diff = _max_abs_diff(want, got)

    modules = dict(work.named_modules())
    removed = {}
    for name, m in reference.named_modules():
        if isinstance(m, _WEIGHT_LAYERS) and name in modules:
            before, after = _units(m), _units(modules[name])
            if before != after or name in masks:
                removed[name] = (before, after)
    for (gi, reason), roots in sorted(plan.kept.items()):
        notes.append(f"{analyses[gi].label()}: kept pruned channel(s) {_format_units(roots)}: {reason}")
    if approximate:
        notes += approximate
        notes.append(
            f"border constants folded inexactly (fold_borders=True): measured max abs diff {diff:.3g} "
            "on the example input"
        )
    if not diff <= atol and not approximate:
        raise PrunedropError(
            f"the slim model differs from the masked model by {diff:.3g} (> atol {atol:g}) on the example "
            "input; the model has an operation that the dependency graph misreads (e.g. one that mixes "
            "channels); please report it"
        )
    return SlimResult(model=work, removed=removed, max_abs_diff=diff, notes=notes)


def coupled_producers(model: nn.Module, example_input: torch.Tensor) -> list[list[str]]:
    """Groups of Linear/Conv layers whose output units are the same channels, joined by residual additions.

    Each group lists (in module order) the plain, non-depthwise Linear/Conv layers that write one set of channels
    with the same numbering: channel i of every member is added into channel i of the others' stream, as the stem
    and the second convolutions (and projection shortcuts) of a ResNet stage are. Only whole, identically
    numbered groups are returned (a concatenation, which offsets the numbering, is not such a group); layers
    that produce their channels alone are left out. Traces ``model`` once on ``example_input`` with Torch-Pruning's
    dependency graph (as :func:`slim` does); the model is not modified.
    """
    tp = _import_torch_pruning()
    with _all_requiring_grad(model):
        graph, _ = _trace(tp, model, example_input.detach())
    layers = dict(model.named_modules())
    names = {m: n for n, m in layers.items()}
    order = {n: i for i, n in enumerate(layers)}
    groups: dict[tuple[str, ...], None] = {}
    for g in graph.get_all_groups(root_module_types=_WEIGHT_LAYERS):
        an = _GroupAnalysis(graph, g, names, {}, set())
        # producer → {root channel: its unit}; a member producing some channels only is not a whole member
        units: dict[str, dict[int, int]] = defaultdict(dict)
        for root, channel in an.channels.items():
            for node in channel.members:
                idx = an.producer_index(node, channel)
                if idx is not None and node.module in names:
                    units[names[node.module]][root] = idx
        members = [
            n for n, m in units.items()
            if len(m) == an.size == _units(layers[n]) and all(root == idx for root, idx in m.items())
        ]
        if len(members) > 1 and len(members) == len(units):
            groups[tuple(sorted(members, key=order.__getitem__))] = None
    return [list(g) for g in groups]


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
      kept rows plus one zero row, indexed through the saved ``index_map`` by the original token ids.

    ``model`` is not modified. The result is checked against ``model`` on ``example_input``; a difference above
    ``atol`` raises :class:`PrunedropError`.
    """
    from .layers.attention import HeadPrunedMultiheadAttention, prune_heads, silent_heads
    from .layers.embedding import remove_zero_rows

    if not any(isinstance(m, (nn.MultiheadAttention, HeadPrunedMultiheadAttention, nn.Embedding))
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
        elif isinstance(module, nn.Embedding):
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
        diff = _max_abs_diff(model.eval()(example_input), work(example_input))
    if not diff <= atol:
        raise PrunedropError(
            f"removing attention heads / embedding rows changed the output by {diff:.3g} (> atol {atol:g}) on the "
            "example input; this is a bug in prunedrop's slim stage, please report it"
        )
    return HeadsAndRowsResult(model=work, heads=heads, rows=rows, max_abs_diff=diff)
