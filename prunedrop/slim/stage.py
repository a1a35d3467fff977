"""The public :func:`slim` entry for Linear/Conv units: check the masks, plan which channels leave (coupling and
constants), fold the constants, slice the layers, and check the slim model against the masked one. Masks of
recurrent layers go to :mod:`.recurrent` first.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..compare import scaled_tolerance
from ..errors import PrunedropError
from ..layers.base import weight_unit_axis
from .common import (
    WEIGHT_LAYERS,
    input_slices,
    input_weights,
    is_depthwise,
    is_grouped,
    max_abs_diff,
    out_units,
    paused_gc,
    silent_units,
    untraced,
)
from .constants import POSITIONAL, VARIES, consumer_shares, fold, record_inputs
from .coupling import (
    Channel,
    GroupAnalysis,
    all_requiring_grad,
    feeds_pixel_shuffle,
    import_torch_pruning,
    node_names,
    real_mappings,
    trace,
    unit_groups,
)
from .recurrent import slim_recurrent, split_recurrent_masks


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
    widths: dict[str, Any] | None = None
    """How the widths were chosen where the pipeline measured them (``channel_multiple: null``): the multiple kept,
    the one tried and each one's onnxruntime latency (:func:`prunedrop.stages.slimming.remove_pruned_units`)."""
    misread: list[str] = field(default_factory=list)
    """Producers of a pruned channel that a consumer read varying with the input where the dependency graph has it
    constant, with no product on the way: an operation between them that the graph misreads (a roll, flip or index
    along the channels)."""
    positional: list[str] = field(default_factory=list)
    """Producers of a pruned channel kept because it carries a per-position constant (:data:`POSITIONAL`) into a
    layer that reads each position: a position embedding added after them, which stays when their unit leaves."""
    held: dict[str, set[str]] = field(default_factory=dict)
    """Masked layer → the coupled layers (or other live sources) that kept some of its pruned channels, where that
    was the reason (a channel leaves only when every coupled producer prunes it)."""


def _check_masks(model: nn.Module, unit_masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Validate the masks against the model: known layer, one bool per unit, pruned units really zero."""
    modules = dict(model.named_modules())
    masks: dict[str, torch.Tensor] = {}
    for name, mask in unit_masks.items():
        module = modules.get(name)
        if not isinstance(module, WEIGHT_LAYERS):
            found = "no such module" if module is None else f"a {type(module).__name__}"
            raise PrunedropError(f"unit mask for {name!r}: {found}; masks are for Linear/Conv layers only")
        mask = torch.as_tensor(mask).detach().cpu()
        if mask.shape != (out_units(module),):
            raise PrunedropError(
                f"unit mask for {name!r} has shape {tuple(mask.shape)}; it needs one entry per output unit "
                f"({out_units(module)})"
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


def _format_units(units: Iterable[int]) -> str:
    units = sorted(units)
    return f"[{', '.join(map(str, units[:12]))}{', ...' if len(units) > 12 else ''}]"


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
    held: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    """Pruning layer → the live sources that kept one of its pruned channels (:attr:`SlimResult.held`)."""
    zeroed: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    """Group number → root channels that could go but stay to round a width (``channel_multiple``): their shares are
    folded and their consumers' columns zeroed, as if removed, so that they weigh nothing but their width."""

    def removed_keys(self) -> set[tuple[int, int]]:
        return {(gi, r) for gi, roots in self.removal.items() for r in roots}

    def folded_keys(self) -> set[tuple[int, int]]:
        """The channels whose shares go into their consumers' biases: the removed ones and the zeroed ones."""
        return self.removed_keys() | {(gi, r) for gi, roots in self.zeroed.items() for r in roots}


def _whole_blocks(analyses: list[GroupAnalysis], candidates: dict[tuple[int, int], Channel], plan: _Plan) -> None:
    """A pixel shuffle joins a block of channels into one, and a unit that reaches two channels (:attr:`GroupAnalysis.
    aliased`) takes both: the block leaves whole or not at all, so a candidate whose block has a channel that is no
    candidate stays (before its constants are measured: it is not silent)."""
    for gi, root in sorted(candidates):
        block = analyses[gi].joined(root)
        if len(block) > 1 and not all((gi, r) in candidates for r in block):
            if analyses[gi].blocks:
                reason = (f"a pixel shuffle joins each with the {len(block) - 1} other channel(s) of its block into "
                          "one, and a block leaves only when every channel of it is pruned and free to go")
            else:
                reason = (f"each leaves only with the {len(block) - 1} other channel(s) tied to the same unit (a "
                          "layer's output concatenated with a depthwise convolution of it, as in a Ghost module; "
                          "the two halves of a layer that scale and shift one channel, as FiLM's do), "
                          "and they leave only when every one of them is pruned and free to go")
            for r in sorted(block):
                if candidates.pop((gi, r), None) is not None:
                    plan.kept[(gi, reason)].append(r)


def _plan(
    analyses: list[GroupAnalysis],
    calls: dict[nn.Module, list[torch.Tensor]],
    names: dict[Any, str],
    fold_borders: bool,
    channel_multiple: int = 1,
) -> _Plan:
    """Decide which pruned channels leave, and measure the constants they leave in their consumers.

    Where removing a group's chosen channels would take others with it (one unit reaching two channels,
    :meth:`GroupAnalysis.fans_out`, seen only then: Torch-Pruning's group numbers each place once), that group is
    marked :attr:`GroupAnalysis.aliased` and the plan is made again, its channels now leaving only with their
    partners."""
    while True:
        plan = _plan_once(analyses, calls, names, fold_borders, channel_multiple)
        dragging = [an for gi, roots in plan.removal.items() if roots and not (an := analyses[gi]).aliased
                    and an.fans_out(roots)]
        if not dragging:
            return plan
        for an in dragging:
            an.aliased = True


def _plan_once(
    analyses: list[GroupAnalysis],
    calls: dict[nn.Module, list[torch.Tensor]],
    names: dict[Any, str],
    fold_borders: bool,
    channel_multiple: int,
) -> _Plan:
    plan = _Plan()
    # 1. Structure: which pruned channels may go at all.
    candidates: dict[tuple[int, int], Channel] = {}
    for gi, an in enumerate(analyses):
        if not an.masked():
            continue  # no layer of the group prunes a unit
        for root, channel in sorted(an.channels.items()):
            pruned_by = an.pruned_by(channel)
            if not pruned_by:
                continue
            reason = an.blocker(channel)
            if reason is None and (live := an.live_sources(channel)):
                for name in pruned_by:
                    plan.held[name].update(live)
                reason = (
                    f"pruned in {', '.join(pruned_by)} but still produced by {', '.join(sorted(live))}, "
                    "coupled to it element-wise (a residual addition, a product with a tensor of its width); "
                    "a channel leaves only when every coupled layer prunes it"
                )
            if reason is None:
                candidates[(gi, root)] = channel
            else:
                plan.kept[(gi, reason)].append(root)

    _whole_blocks(analyses, candidates, plan)

    # 2. Constants: what each candidate leaves in its consumers, and whether a bias can hold it.
    wanted: dict[nn.Module, dict[tuple[int, int], list[int]]] = defaultdict(dict)
    for key, channel in candidates.items():
        for node, idxs in analyses[key[0]].consumers(channel):
            wanted[node.module][key] = idxs
    for consumer, keys in wanted.items():
        plan.shares[consumer], problems = consumer_shares(
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

    _whole_blocks(analyses, candidates, plan)
    # 3. Removal sets; a group never loses all of its channels, so that no layer is left empty.
    for gi, root in sorted(candidates):
        plan.removal[gi].append(root)
    for gi, roots in plan.removal.items():
        if len(roots) == analyses[gi].size:
            reason = "every channel of the group is pruned; one is kept so that its layers are not empty"
            block = analyses[gi].joined(roots[0])
            plan.kept[(gi, reason)].extend(r for r in roots if r in block)
            roots[:] = [r for r in roots if r not in block]
    # 4. Widths in whole blocks: keep some pruned (exactly silent) channels so that every group's width is a
    # multiple of channel_multiple; they stay in the model as they are, constants and all, so nothing changes.
    sides = _grouped_sides(analyses)
    if channel_multiple > 1:
        # not where a grouped convolution reads or writes the channels: the channels kept to round a width would make
        # its groups lose different numbers, and the rule below would keep more (every group's, at worst)
        grouped = {key[0] for reads, writes in sides.values() for key in (*reads.values(), *writes.values())}
        for gi, roots in plan.removal.items():
            if gi in grouped:
                continue
            size = analyses[gi].size
            kept = size - len(roots)
            target = min(size, -(-kept // channel_multiple) * channel_multiple)
            if target > kept:
                reason = f"kept (silent) to round the width {kept} up to {target}, a multiple of {channel_multiple}"
                extra = {b for r in roots[len(roots) - (target - kept):] for b in analyses[gi].joined(r)}
                plan.kept[(gi, reason)].extend(r for r in roots if r in extra)
                plan.zeroed[gi].extend(r for r in roots if r in extra)
                roots[:] = [r for r in roots if r not in extra]
    # 4b. Grouped convolutions keep their groups equal in size (after the rounding, which only keeps more), and a
    # split into equal pieces keeps them equal; keeping a channel for one rule can change what the other allows.
    _grouped_rule(sides, plan, names)
    splits = _equal_splits(analyses)
    while _equal_pieces_rule(analyses, splits, plan):
        _grouped_rule(sides, plan, names)
    # 5. A pruned channel kept for its own reasons may still leave with a removed partner (a gate's second half,
    # whose first half silences the product): it is not named as kept.
    for gi, roots in plan.removal.items():
        keys = [key for key in plan.kept if key[0] == gi]
        gone = analyses[gi].leaving(roots) if keys else set()
        for key in keys:
            plan.kept[key] = [r for r in plan.kept[key] if r not in gone]
            if not plan.kept[key]:
                del plan.kept[key]
    return plan


#: each grouped convolution → (its input channel → the (group, root channel) it reads, its output channel → the
#: (group, root channel) it writes)
GroupedSides = dict[nn.Module, tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]]


def _grouped_sides(analyses: list[GroupAnalysis]) -> GroupedSides:
    """Each grouped convolution (:func:`.common.is_grouped`) of the groups → (its input channel → the (group, root
    channel) that it reads, its output channel → the (group, root channel) that it writes)."""
    sides: GroupedSides = {}
    for gi, an in enumerate(analyses):
        if not any(is_grouped(node.module) for node in an.nodes):
            continue
        for root, channel in an.channels.items():
            for node, idxs in an.consumers(channel):
                if is_grouped(node.module):
                    for i in idxs:
                        sides.setdefault(node.module, ({}, {}))[0][i] = (gi, root)
            for node in channel.members:
                if is_grouped(node.module) and (unit := an.producer_index(node, channel)) is not None:
                    sides.setdefault(node.module, ({}, {}))[1][unit] = (gi, root)
    return sides


def _group_cut(conv: nn.Module, gone_in: set[int], gone_out: set[int]) -> tuple[list[int], int, int]:
    """How a grouped convolution loses the input channels ``gone_in`` and output channels ``gone_out``, as far as its
    groups stay equal in size: (the groups that leave whole, every input and output channel of theirs gone; how many
    input and how many output channels each other group can lose, the fewest any of them loses)."""
    g = conv.groups
    per_in, per_out = conv.in_channels // g, conv.out_channels // g
    lost_in = [sum(j * per_in + t in gone_in for t in range(per_in)) for j in range(g)]
    lost_out = [sum(j * per_out + t in gone_out for t in range(per_out)) for j in range(g)]
    whole = [j for j in range(g) if lost_in[j] == per_in and lost_out[j] == per_out][:g - 1]  # one group stays
    rest = [j for j in range(g) if j not in whole]
    return whole, min(lost_in[j] for j in rest), min(lost_out[j] for j in rest)


def _grouped_rule(sides: GroupedSides, plan: _Plan, names: dict[Any, str]) -> None:
    """Keep the removal that every grouped convolution (``sides``: :func:`_grouped_sides`) can follow: its groups must stay equal in size, so a group
    leaves whole (all its input and output channels go: ``groups`` shrinks; a depthwise convolution with a channel
    multiplier loses an input channel with its k outputs), and each other group loses as many input channels as the
    others and as many output channels as the others, the fewest that any of them loses. The pruned channels beyond
    that, in the groups that lost more, stay as exact zeros (kept, with a note). Keeping a channel can change what
    another grouped convolution that reads or writes it can lose, so this repeats until nothing changes."""
    if not sides:
        return
    removed = plan.removed_keys()
    why: dict[tuple[int, int], str] = {}
    while True:
        keep: set[tuple[int, int]] = set()
        for conv, (reads, writes) in sides.items():
            g = conv.groups
            per_in, per_out = conv.in_channels // g, conv.out_channels // g
            gone_in = {i for i, key in reads.items() if key in removed}
            gone_out = {u for u, key in writes.items() if key in removed}
            whole, m_in, m_out = _group_cut(conv, gone_in, gone_out)
            held: set[tuple[int, int]] = set()
            for j in range(g):
                if j in whole:
                    continue
                ins = [reads[i] for i in range(j * per_in, (j + 1) * per_in) if i in gone_in]
                outs = [writes[u] for u in range(j * per_out, (j + 1) * per_out) if u in gone_out]
                held.update(ins[m_in:])
                held.update(outs[m_out:])
            for key in held - keep:
                why.setdefault(key, (
                    f"the grouped convolution {names.get(conv, '?')} (groups={g}) keeps its groups equal in size: a "
                    f"group leaves whole (all of its channels pruned, in and out), and the others lose {m_in} input "
                    f"and {m_out} output channel(s) each, the fewest any of them has pruned; these stay as zeros"))
            keep |= held
        keep &= removed
        if not keep:
            break
        removed -= keep
    kept: dict[tuple[int, str], list[int]] = defaultdict(list)
    for gi, roots in plan.removal.items():
        for r in roots:
            if (gi, r) not in removed:
                kept[(gi, why[(gi, r)])].append(r)
        roots[:] = [r for r in roots if (gi, r) in removed]
    for key, roots in kept.items():
        plan.kept[key].extend(roots)


def _equal_splits(analyses: list[GroupAnalysis]) -> dict[Any, list[tuple[int, int]]]:
    """Each split of the channels into equal pieces (``h.chunk(2, 1)``, ``h.split(c // 2, 1)``) that the graph maps
    by its real pieces → their channel ranges, in order."""
    if not analyses:
        return {}
    found = {}
    for node, (pairs, _, _, inward) in real_mappings(analyses[0].graph).items():
        ranges = sorted(r for _, r in pairs)
        if not inward and len(ranges) > 1 and len({end - start for start, end in ranges}) == 1:
            found[node] = ranges
    return found


def _equal_pieces_rule(analyses: list[GroupAnalysis], splits: dict[Any, list[tuple[int, int]]], plan: _Plan) -> bool:
    """Keep the removal that every split into equal pieces (``splits``: :func:`_equal_splits`) can follow: the forward
    splits whatever it is given into equal parts again (a C2f's or CSP block's ``h.chunk(2, 1)``), so each piece must
    lose as many channels as the others. Where one piece loses more, its last ones beyond the fewest that any piece
    loses stay (exact zeros, with a note). Whether anything was kept (a grouped convolution's rule may then keep
    more, and this one is asked again)."""
    changed = False
    for split, ranges in splits.items():
        while True:
            gone: dict[int, set[tuple[int, int]]] = defaultdict(set)  # the split's input channel → keys removing it
            for gi, roots in plan.removal.items():
                an = analyses[gi]
                if not roots or split not in an.nodes:
                    continue
                at = {int(i) for item in an.removal(roots) if item.dep.target is split for i in item.idxs}
                for r in roots:
                    for _, i in an.channels[r].members.get(split, ()):
                        if i in at:
                            gone[i].add((gi, r))
            lost = [[i for i in range(start, end) if i in gone] for start, end in ranges]
            fewest = min(len(piece) for piece in lost)
            keep = {key for piece in lost for i in piece[fewest:] for key in gone[i]}
            if not keep:
                break
            reason = (f"a split of the channels into {len(ranges)} equal pieces (h.chunk({len(ranges)}, 1)) keeps "
                      f"them equal, since the forward splits whatever it is given in equal parts again: each piece "
                      f"loses {fewest} channel(s), the fewest any of them has pruned; these stay as zeros")
            for gi, r in sorted(keep):
                block = analyses[gi].joined(r)
                plan.kept[(gi, reason)].extend(x for x in plan.removal[gi] if x in block)
                plan.removal[gi] = [x for x in plan.removal[gi] if x not in block]
            changed = True
    return changed


@torch.no_grad()
def _slice_grouped(conv: nn.Module, gone_in: set[int], gone_out: set[int]) -> None:
    """Remove the input channels ``gone_in`` and output channels ``gone_out`` (original numbers) of the grouped
    convolution ``conv``: the groups that lose all of theirs leave (``groups`` shrinks), each other group keeps its
    remaining columns (its own ones: groups may lose different input channels) and rows. :func:`_grouped_rule` made
    the groups equal; anything else is a bug, raised as such."""
    g = conv.groups
    per_in, per_out = conv.in_channels // g, conv.out_channels // g
    whole, m_in, m_out = _group_cut(conv, gone_in, gone_out)
    rest = [j for j in range(g) if j not in whole]
    columns = [[t for t in range(per_in) if j * per_in + t not in gone_in] for j in rest]
    rows = [[j * per_out + t for t in range(per_out) if j * per_out + t not in gone_out] for j in rest]
    if {len(c) for c in columns} != {per_in - m_in} or {len(r) for r in rows} != {per_out - m_out}:
        raise RuntimeError(f"grouped convolution with groups={g} would lose different numbers of channels per group")
    weight = conv.weight.detach()
    pieces = [weight[r][:, c] for r, c in zip(rows, columns, strict=True)]
    conv.weight = nn.Parameter(torch.cat(pieces).contiguous(), requires_grad=conv.weight.requires_grad)
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.detach()[[u for r in rows for u in r]].clone(),
                                 requires_grad=conv.bias.requires_grad)
    conv.groups = len(rest)
    conv.in_channels = len(rest) * (per_in - m_in)
    conv.out_channels = len(rest) * (per_out - m_out)


def _fold_constants(plan: _Plan, names: dict[Any, str]) -> list[str]:
    """Add the removed (and zeroed) channels' shares to their consumers' biases; notes for the inexact (border)
    ones."""
    removed = plan.folded_keys()
    approximate = []
    for consumer, by_key in plan.shares.items():
        folded = [share for key, share in by_key.items() if key in removed]
        if folded:
            fold(consumer, torch.stack(folded).sum(dim=0))
        inexact = plan.border_folded[consumer] & removed
        if inexact:
            approximate.append(
                f"{names.get(consumer, '?')}: {len(inexact)} removed input channel(s) carried a non-zero "
                "constant that zero padding makes differ at the borders; their interior contribution is "
                "folded into the bias, so outputs near the borders differ"
            )
    return approximate


@torch.no_grad()
def _zero_columns(analyses: list[GroupAnalysis], zeroed: dict[int, list[int]]) -> None:
    """Zero the consumers' weight columns (input slices) of the channels kept only to round a width, and the units
    that write them (producers, depthwise convolutions): their shares are in the biases already
    (:func:`_fold_constants`) and nothing else reads them (they could have been removed), so the function stays, and
    those weights, which computed a constant or nothing, no longer count. In the original coordinates, before
    :func:`_remove_channels`."""
    for gi, roots in zeroed.items():
        an = analyses[gi]
        for root in roots:
            channel = an.channels[root]
            for node, idxs in an.consumers(channel):
                _zero_inputs(node.module, idxs)
            for node, entries in channel.members.items():  # the units that write it compute for nothing now
                unit = entries[0][1] if is_depthwise(node.module) else an.producer_index(node, channel)
                if unit is not None:
                    _zero_unit(node.module, unit)


def _remove_channels(analyses: list[GroupAnalysis], removal: dict[int, list[int]]) -> None:
    """Slice every layer that the removed channels touch, with Torch-Pruning's pruning functions.

    Every group's items are collected in the original coordinates first and merged per (layer, function), so
    that each layer is sliced once: pruning group by group would shift the indices of a layer that several
    groups share (a consumer after a concatenation) before the next group's items were computed.
    """
    merged: dict[tuple[int, Any], tuple[Any, set[int]]] = {}
    grouped: dict[nn.Module, tuple[set[int], set[int]]] = {}
    parameters: dict[int, tuple[Any, nn.Module, str, set[int]]] = {}  # a bare parameter: its dependency, model, name
    buffers: dict[tuple[int, str], tuple[nn.Module, str, int, set[int]]] = {}  # model, name, channel axis, gone
    for gi, roots in removal.items():
        if not roots:
            continue
        an = analyses[gi]
        scaling_buffers = getattr(an.graph, "prunedrop_buffers", {})
        for item in an.removal(roots):
            target = item.dep.target.module
            if isinstance(target, nn.Parameter):  # a layer scale γ (GroupAnalysis.sliceable)
                slot = parameters.setdefault(id(target), (item.dep, an.graph.model, an.name(item.dep.target), set()))
                slot[3].update(int(i) for i in item.idxs)
                continue
            scaled = scaling_buffers.get(item.dep.target)
            if scaled is not None:  # a buffer that scales each channel on its own (coupling._Recorder)
                slot = buffers.setdefault((id(an.graph.model), scaled[0]), (an.graph.model, *scaled, set()))
                slot[3].update(int(i) for i in item.idxs)
            if not isinstance(target, nn.Module) or type(target).__module__.startswith("torch_pruning"):
                continue  # Torch-Pruning's bookkeeping nodes (add, concat, reshape): nothing to slice
            handler = item.dep.handler
            if is_grouped(target):  # sliced by the per-group rule below, inputs and outputs at once
                side = 1 if an.graph.is_out_channel_pruning_fn(handler) else 0
                grouped.setdefault(target, (set(), set()))[side].update(int(i) for i in item.idxs)
                continue
            slot = merged.setdefault((id(target), getattr(handler, "__func__", handler)), (item.dep, set()))
            slot[1].update(item.idxs)
    for dep, idxs in merged.values():
        dep(sorted(idxs))
    for conv, (gone_in, gone_out) in grouped.items():
        _slice_grouped(conv, gone_in, gone_out)
    for dep, model, name, idxs in parameters.values():
        # Torch-Pruning's ParameterPruner returns a new, sliced parameter: it replaces the old one on its owner
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, attr, dep(sorted(idxs)))
    for model, name, axis, gone in buffers.values():
        owner, _, attr = name.rpartition(".")
        buffer = model.get_buffer(name)
        keep = torch.tensor([i for i in range(buffer.shape[axis]) if i not in gone], dtype=torch.long,
                            device=buffer.device)
        setattr(model.get_submodule(owner) if owner else model, attr, buffer.index_select(axis, keep))


def _every_channel(model: nn.Module, example_input: torch.Tensor, failed: dict[str, str] | None = None
                   ) -> Iterator[tuple[GroupAnalysis, Channel]]:
    """Every channel of every dependency group of a copy of ``model`` (traced on ``example_input``) with its group's
    analysis, whatever the masks: what :func:`dead_units` and :func:`unremovable_layers` read. The layers whose
    group Torch-Pruning could not build go into ``failed`` (name → error), when given."""
    tp = import_torch_pruning()
    work = copy.deepcopy(model).eval()
    names = node_names(work)
    with all_requiring_grad(work):
        graph, output_fns = trace(tp, work, example_input.detach())
        groups, broken = unit_groups(graph)
        if failed is not None:
            failed.update({names.get(m, str(m)): reason for m, reason in broken.items()})
        for group in groups:
            analysis = GroupAnalysis(graph, group, names, {}, output_fns)
            for channel in analysis.channels.values():
                yield analysis, channel


def dead_units(model: nn.Module, example_input: torch.Tensor) -> dict[str, torch.Tensor]:
    """The whole units that per-weight pruning (sparse VD) left behind, as :func:`slim`'s keep masks over output
    units: a Linear/Conv unit whose output no consumer reads any more (every column of it in every consumer is
    pruned), or whose every weight is pruned (it outputs a constant: its bias through what follows). Only units that
    slimming could remove are named (no model output, no channel a LayerNorm or GroupNorm mixes, no depthwise
    convolution on the way: :func:`unremovable_layers`' blockers), a residual stream's channel only when all of its
    producers let it go, and a layer only with at least one such unit.

    ``model`` is changed in place so that each named unit outputs zeros, as a pruned unit of a structured method does
    and :func:`slim` requires, with the same function: a constant unit's value in each consumer (measured on
    ``example_input``) goes into that consumer's bias and its columns there are zeroed, where a bias can hold it
    exactly (a unit whose constant meets a zero-padded convolution stays); then the unit's weights and bias are
    zeroed. Empty where the model cannot be traced. The model's output on ``example_input`` is compared before and
    after: where zeroing changed it (the dependency graph misread where a unit goes, and a unit read live was taken
    for unread), the model is put back as it was and :class:`MisreadUnits` says by how much."""
    layers = dict(model.named_modules())
    found: list[tuple[list[tuple[str, int]], list[tuple[str, list[int]]], bool]] = []
    try:
        with paused_gc():
            for analysis, channel in _every_channel(model, example_input):
                if (analysis.blocker(channel) is not None or analysis.blocks
                        or any(is_depthwise(n.module) for n in channel.members)):
                    continue  # (a pixel shuffle's block: a unit's columns there are its block's)
                producers = [(analysis.name(node), index) for node in channel.members
                             if (index := analysis.producer_index(node, channel)) is not None]
                consumers = analysis.consumers(channel)
                if not producers or not consumers:
                    continue
                unread = not any(_reads(node.module, idxs) for node, idxs in consumers)
                if unread or all(layers[n].weight.detach().flatten(1)[i].eq(0).all() for n, i in producers):
                    found.append((producers, [(analysis.name(n), idxs) for n, idxs in consumers], unread))
    except Exception:  # noqa: BLE001 - a model the dependency graph cannot follow keeps its units, as before
        return {}
    if not found:
        return {}
    calls = record_inputs(model, example_input) if any(not unread for *_, unread in found) else {}
    gone: dict[str, set[int]] = defaultdict(set)
    with torch.no_grad():
        touched = {n for producers, consumers, _ in found for n, _ in [*producers, *consumers]}
        before = {n: {k: v.clone() for k, v in layers[n].state_dict().items()} for n in touched}
        want = model(example_input)
        for producers, consumers, unread in found:
            if not unread:  # constant: into the consumers' biases, if every one can hold it exactly
                shares = [consumer_shares(layers[c], calls.get(layers[c], []), {0: idxs}, fold_borders=False)
                          for c, idxs in consumers]
                if any(problems for _, problems in shares):
                    continue
                for (c, idxs), (share, _) in zip(consumers, shares, strict=True):
                    fold(layers[c], share[0])
                    _zero_inputs(layers[c], idxs)
            for name, index in producers:
                _zero_unit(layers[name], index)
                gone[name].add(index)
        diff = max_abs_diff(want, model(example_input))
        if diff > scaled_tolerance(DEAD_UNITS_ATOL, want):
            for name, state in before.items():
                layers[name].load_state_dict(state)
            raise MisreadUnits(f"zeroing the {sum(map(len, gone.values()))} unit(s) of {', '.join(sorted(gone))} that "
                               f"per-weight pruning seemed to leave empty or unread changed the model's output (max "
                               f"abs diff {diff:.3g}): the dependency graph misread where they go")
    masks = {}
    for name, indices in sorted(gone.items()):
        mask = torch.ones(out_units(layers[name]), dtype=torch.bool)
        mask[sorted(indices)] = False
        masks[name] = mask
    return masks


#: how far zeroing the units :func:`dead_units` finds may move the model's output (for outputs of magnitude up to 1:
#: float32 rounding of the constants folded into biases)
DEAD_UNITS_ATOL = 1e-4


class MisreadUnits(PrunedropError):
    """:func:`dead_units` found units whose zeroing changed the model's output; the model is as it was."""


def _zero_inputs(consumer: nn.Module, idxs: list[int]) -> None:
    """Zero ``consumer``'s weights that read its input indices ``idxs`` (:func:`.common.input_slices`)."""
    for weight in input_weights(consumer):
        for index in input_slices(consumer, idxs):
            weight[index] = 0


def _reads(consumer: nn.Module, idxs: list[int]) -> bool:
    """Whether ``consumer`` has a non-zero weight on any of its input indices ``idxs``."""
    return any(bool(weight.detach()[index].ne(0).any())
               for weight in input_weights(consumer) for index in input_slices(consumer, idxs))


@torch.no_grad()
def _zero_unit(layer: nn.Module, unit: int) -> None:
    """Zero output unit ``unit`` of ``layer``: its weight row (a transposed convolution's column) and bias entry."""
    layer.weight.select(weight_unit_axis(layer), unit).zero_()
    if layer.bias is not None:
        layer.bias[unit] = 0


def unremovable_layers(model: nn.Module, example_input: torch.Tensor) -> dict[str, str]:
    """The Linear/Conv layers of the plain ``model`` none of whose output units :func:`slim` could ever remove,
    whatever the masks, each with the reason (the same blockers: a GroupNorm or LayerNorm that mixes channels, an
    attention block, a grouped transposed convolution, the model output; a grouped convolution is none, it loses
    channels alike in each group); for a structured method's early
    warning, before any training. Empty where the model cannot be traced. ``model`` is not modified."""
    free: set[str] = set()
    reasons: dict[str, str] = {}
    failed: dict[str, str] = {}
    group: dict[str, int] = {}  # producer (or root) → the first dependency group it produces, in their order
    # a split into equal pieces keeps them equal (:func:`_equal_pieces_rule`): where one piece can lose no channel,
    # no other can; each free channel's splits are kept, and the pieces that hold a free channel
    reaches: dict[str, list[frozenset[Any]]] = defaultdict(list)
    pieces_free: dict[Any, set[int]] = defaultdict(set)
    splits: dict[Any, list[tuple[int, int]]] = {}
    firsts: dict[str, set[int]] = defaultdict(set)  # a producer → its units that write a piece's first channel
    try:
        with paused_gc():
            blocks: dict[Any, int] = {}  # node → the block size of the pixel shuffle it feeds (0: none)
            last, gi = None, -1
            for analysis, channel in _every_channel(model, example_input, failed):
                if analysis is not last:
                    last, gi = analysis, gi + 1
                    for name in analysis.producers():
                        group.setdefault(name, gi)
                    if gi == 0:
                        splits = _equal_splits([analysis])
                reason = analysis.blocker(channel)
                # (a slim's hot loop: most models have no equal split, and every channel's places are walked here)
                met = (frozenset(node for node in channel.members if node in splits) if splits and reason is None
                       else frozenset())
                for node in met:
                    for _, i in channel.members[node]:
                        pieces_free[node].update(k for k, (a, b) in enumerate(splits[node]) if a <= i < b)
                        if any(i == a for a, _ in splits[node]):  # a piece's first channel: tried in every piece
                            for producer in channel.members:
                                if (unit := analysis.producer_index(producer, channel)) is not None:
                                    firsts[analysis.name(producer)].add(unit)
                for node in channel.members:
                    # a depthwise convolution is no producer of its group's channels but a member whose pruned unit
                    # silences one (ConvNeXt's, whose channels pass through a LayerNorm, were missed)
                    if analysis.producer_index(node, channel) is None and not is_depthwise(node.module):
                        continue
                    why = reason
                    if why is None and analysis.blocks:
                        if node not in blocks:
                            blocks[node] = feeds_pixel_shuffle(node)
                        if size := blocks[node]:
                            why = (f"its units leave only in whole blocks of {size} (a pixel shuffle makes each block "
                                   "one channel), and unit noise prunes them one by one, seldom a whole block")
                    if why is None:
                        free.add(analysis.name(node))
                        reaches[analysis.name(node)].append(met)
                    else:
                        reasons.setdefault(analysis.name(node), why)
    except Exception:  # noqa: BLE001 - a model the dependency graph cannot follow: slimming will say so itself
        return {}
    stuck = {node for node, ranges in splits.items() if len(pieces_free[node]) < len(ranges)}
    for name in sorted(free):
        if stuck and all(met & stuck for met in reaches[name]):
            free.discard(name)
            n = len(splits[next(iter(reaches[name][0] & stuck))])
            reasons[name] = (f"its channels reach a split into {n} equal pieces (h.chunk({n}, 1)), which keeps them "
                             "equal, and a piece of it can lose no channel")
    for name, error in failed.items():
        reasons.setdefault(name, _cannot_follow(error))
    found = {name: reason for name, reason in reasons.items() if name not in free}
    for name, m in model.named_modules():  # whatever the graph made of it (ECA's convolution over the channels)
        if isinstance(m, WEIGHT_LAYERS) and out_units(m) == 1 and name not in found and name in group:
            found[name] = ("it has a single output unit, and slimming never leaves a layer without units: pruning it "
                           "could only zero it in place")
    # a layer named here leaves dense: the layers coupled only to it can then lose no channel either (named in the
    # next pass; at most three, each one slim where the rest slims together)
    fixed: dict[str, str] = {}
    rest = sorted(free)
    for _ in range(3):
        named = {name: why for name, why in _fixed_widths(model, example_input, rest, group,
                                                          set(found) | set(fixed), firsts).items() if name not in fixed}
        if not named:
            break
        fixed.update(named)
        rest = [name for name in rest if name not in fixed]
    return {**found, **fixed}


@contextlib.contextmanager
def _plain_norms_renumbered(model: nn.Module) -> Iterator[None]:
    """During a forward pass of the slim model: each InstanceNorm without affine parameters takes the number of
    channels it is given as its ``num_features`` (which it uses for nothing but a warning on every call, and which
    ``architecture.json`` records), silently."""
    plain = [m for m in model.modules() if isinstance(m, nn.modules.instancenorm._InstanceNorm) and not m.affine]

    def record(module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.dim() >= 2:  # (N, C, …), or (C, …) unbatched
            module.num_features = int(x.shape[1] if x.dim() > module._get_no_batch_dim() else x.shape[0])

    handles = [m.register_forward_pre_hook(record) for m in plain]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _named_by_trial(result: SlimResult, masks: Mapping[str, torch.Tensor], dense: set[str]) -> dict[str, str]:
    """The masked layers of a trial slim that ran but could lose no unit, each with why (:func:`_held_by_dense`,
    :func:`_misread`, :func:`_positional`)."""
    return {**_held_by_dense(result, masks, dense), **_misread(result, masks), **_positional(result, masks)}


def _misread(result: SlimResult, masks: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """The masked layers of a trial slim whose zeroed units a consumer read varying with the input."""
    return {name: ("removing a unit is misread by the dependency graph: a consumer reads its zeroed channel varying "
                   "with the input (an operation reorders the channels: a roll, flip, index or gather along them)")
            for name in result.misread if name in masks}


def _positional(result: SlimResult, masks: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """The masked layers of a trial slim whose zeroed units leave a per-position constant behind."""
    return {name: ("a removed unit would leave behind the per-position tensor added to its channel after it (a "
                   "position embedding), which the layer reading each position cannot hold in one bias")
            for name in result.positional if name in masks}


def _cannot_follow(error: str) -> str:
    return f"the dependency graph cannot follow where its units go ({error})"


def _held_by_dense(result: SlimResult, masks: Mapping[str, torch.Tensor], dense: set[str]) -> dict[str, str]:
    """The masked layers of a trial slim that lost no unit because layers left dense kept their channels: coupled
    element-wise (a squeeze-excitation's expansion multiplied with a convolution whose width is fixed), a channel
    leaves only when every coupled layer prunes it, so they never can."""
    found = {}
    for name, live in result.held.items():
        before, after = result.removed.get(name, (0, 0))
        if name in masks and before == after and live and live <= dense:
            found[name] = (f"its channels are coupled element-wise to {', '.join(sorted(live))}, which cannot lose "
                           "units, and a channel leaves only when every coupled layer prunes it")
    return found


def _fixed_widths(model: nn.Module, x: torch.Tensor, names: list[str], group: Mapping[str, int],
                  dense: set[str] = frozenset(), pieces: Mapping[str, set[int]] | None = None) -> dict[str, str]:
    """The layers among ``names`` whose units :func:`slim` could remove but whose removal breaks the forward (it
    fixes their number itself: ``x.view(-1, 512)``, or slices its channels at fixed offsets: ``x[:, :8]``) or is
    misread (a roll or flip along the channels: a consumer reads a zeroed channel varying), found by removing
    units 0, 2 and the last of each on a copy (a fixed slice breaks on a unit before its offset; the set is not
    symmetric, so a flip or roll does not map it onto itself; two units of one parity shift a strided slice,
    ``x[:, ::2]``, which a pair of neighbours left aligned); one slim when none breaks; when some do, the layers
    are halved until each breaking one is alone (about 2·k·log2(n) slims for k of n layers: one slim per layer took
    three minutes on MixNet-S). ``group``: each producer's dependency group (:func:`unremovable_layers` read them).
    ``pieces``: more units of a layer to remove, the first of each piece of a split into equal pieces that it writes
    (a piece that loses none keeps the others whole, and a split by a constant size, ``torch.split(h, 26, 1)`` in a
    Res2Net, broke only after training, in a search of a hundred slims)."""
    work = copy.deepcopy(model).eval()
    modules = dict(work.named_modules())
    masks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name in names:
            layer = modules.get(name)
            if isinstance(layer, WEIGHT_LAYERS) and out_units(layer) > 1:
                width = out_units(layer)
                masks[name] = torch.ones(width, dtype=torch.bool)
                for unit in {*((0, 2, width - 1) if width >= 4 else (0,)), *(pieces or {}).get(name, ())}:
                    masks[name][unit] = False
                    _zero_unit(layer, unit)
    if not masks:
        return {}
    try:
        result = _slim_once(work, masks, x, atol=1e-5, fold_borders=False, channel_multiple=1)
        return _named_by_trial(result, masks, dense)
    except _SlimBroke as e:
        first = e
    except Exception:  # noqa: BLE001 - anything else is slimming's to report after training, as before
        return {}
    found: dict[str, str] = {}

    def breaks(part: list[str]) -> _SlimBroke | None:
        subset = {name: masks[name] for name in part}
        try:
            result = _slim_once(work, subset, x, atol=1e-5, fold_borders=False, channel_multiple=1)
        except _SlimBroke as e:
            return e
        except Exception:  # noqa: BLE001 - anything else is slimming's to report after training, as before
            return None
        found.update(_named_by_trial(result, subset, dense))
        return None

    def why(e: _SlimBroke, others: list[str]) -> str:
        together = f" together with those of {', '.join(others[:4])}{' and more' if len(others) > 4 else ''}"
        return {"runs": f"removing its units{together if others else ''} breaks the forward ({e.reason}): it depends "
                        "on the number of units (x.view(-1, 512), a reshape to a constant channel count, fixed "
                        "groups, a slice x[:, :8])",
                "output": f"removing a unit{together if others else ''} changes the output ({e.reason})",
                "graph": f"{_cannot_follow(e.reason)}: an operation that moves channels elsewhere or changes their "
                         "number (a channel or pixel shuffle)"}[e.kind]

    def probe(items: list[list[str]], error: _SlimBroke | None = None) -> bool:
        """Halve ``items`` (lists of layers) down to those that break the forward; whether it named any. Within one
        list (one layer, or the producers of one group) a layer that breaks the forward alone is named alone (a
        squeeze-excitation's expansion is coupled to a layer whose width the code writes out); where none does, they
        break it together (a channel leaves all of them or none), and are named with each other."""
        if not items or (error is None and (error := breaks([n for item in items for n in item])) is None):
            return False
        if len(items) == 1:
            layers = items[0]
            half = len(layers) // 2
            if len(layers) > 1 and (probe([[n] for n in layers[:half]]) | probe([[n] for n in layers[half:]])):
                return True
            found.update({name: why(error, [n for n in layers if n != name]) for name in layers})
            return True
        return probe(items[:len(items) // 2]) | probe(items[len(items) // 2:])

    # Layers coupled element-wise (the producers of one residual stream) lose their units only together: halving
    # keeps them in one piece, so a forward that breaks only when all of them lose units (ReXNet adds its shortcut to
    # a fixed slice, x[:, 0:c_in]) is found; halving them apart, each half slimmed and nothing was named
    sets: dict[Any, list[str]] = {}
    for name in masks:  # the producers of one group together, in the order of the layers; the others alone
        sets.setdefault(group.get(name, name), []).append(name)
    probe(list(sets.values()), error=first)
    return found


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
    package docstring (:mod:`prunedrop.slim`) for the whole contract.

    ``channel_multiple`` > 1 removes fewer channels where that makes a group's width a multiple of it: the pruned
    channels that stay output exact zeros, so the function is the same, and convolution kernels that work in
    blocks of channels (onnxruntime's NCHWc blocks of 8 on AVX2, 16 on AVX-512) keep their fast path.

    Returns a :class:`SlimResult`. Raises :class:`PrunedropError` for a bad mask, or when the slim model's
    output on ``example_input`` differs from the masked model's by more than ``atol`` without a note that
    explains it.
    """
    recurrent, unit_masks = split_recurrent_masks(model, unit_masks)
    if recurrent:
        # hidden units of nn.LSTM / nn.GRU take their own path (prunedrop.slim.recurrent), then Linear/Conv units
        rec = slim_recurrent(model, recurrent, example_input, atol=atol)
        if not unit_masks:
            return SlimResult(model=rec.model, removed=rec.removed, max_abs_diff=rec.max_abs_diff, notes=rec.notes)
        inner = slim(rec.model, unit_masks, example_input, atol=atol, fold_borders=fold_borders,
                     channel_multiple=channel_multiple)
        with torch.no_grad():
            diff = max_abs_diff(copy.deepcopy(model).eval()(example_input), inner.model(example_input))
        return SlimResult(model=inner.model, removed={**rec.removed, **inner.removed}, max_abs_diff=diff,
                          notes=rec.notes + inner.notes)
    _check_masks(model, unit_masks)
    try:
        return _slim_once(model, unit_masks, example_input, atol=atol, fold_borders=fold_borders,
                          channel_multiple=channel_multiple)
    except _SlimBroke as broke:
        first = broke
    # The forward fixes some width itself (``x.view(-1, 32 * 4 * 4)``, ``x.reshape(n, 32, -1)``): removing that
    # layer's units breaks it. Find the layers whose units can go and keep the others' pruned units as zeros.
    # Halves of the layers are added while the model still slims, and a half that breaks it is split again: a few
    # slims per such layer, where trying every layer alone took one slim per layer (GhostNet: 360 slims, 200 s).
    names = list(unit_masks)
    chosen = [name for name in names if bool(torch.as_tensor(unit_masks[name]).all())]  # nothing of theirs leaves

    def add(part: list[str], broke: bool = False) -> None:
        if not broke and _slims(model, {n: unit_masks[n] for n in [*chosen, *part]}, example_input, atol,
                                fold_borders, channel_multiple):
            chosen.extend(part)
        elif len(part) > 1:
            add(part[: len(part) // 2])
            add(part[len(part) // 2:])

    add([name for name in names if name not in chosen], broke=True)  # all of them together broke (above)
    left = [name for name in names if name not in chosen]
    result = _slim_once(model, {n: unit_masks[n] for n in chosen}, example_input, atol=atol,
                        fold_borders=fold_borders, channel_multiple=channel_multiple)
    if left:
        why = {"runs": f"breaks the model's forward ({first.reason}): it depends on their number (e.g. "
                       "x.view(-1, 512), a reshape to a constant channel count, channels split into fixed groups or "
                       "sliced at fixed offsets, x[:, :8]); derive the sizes from the input (x.flatten(1), "
                       "x.shape[1]) to let them go",
               "output": f"changes the model's output ({first.reason}): an operation the dependency graph misreads",
               "graph": f"is more than the dependency graph can follow ({first.reason}): an operation that moves "
                        "channels elsewhere or changes their number (a channel or pixel shuffle)"}[first.kind]
        result.notes.append(f"{', '.join(left[:6])}{' and more' if len(left) > 6 else ''}: pruned units kept as "
                            f"zeros, since removing them {why}")
        for name in left:
            module = model.get_submodule(name)
            result.removed.setdefault(name, (out_units(module), out_units(module)))
    return result


class _SlimBroke(PrunedropError):
    """The slim model no longer runs, or computes something else than the masked model."""

    def __init__(self, message: str, reason: str, kind: str):
        super().__init__(message)
        self.reason = reason
        self.kind = kind
        """``runs`` (the slim model fails), ``output`` (it computes something else), ``graph`` (planning the removal
        failed: the dependency graph misread an operation)."""


def _slims(model: nn.Module, masks: Mapping[str, torch.Tensor], x: torch.Tensor, atol: float, fold_borders: bool,
           channel_multiple: int) -> bool:
    """Whether slimming ``model`` with only ``masks`` gives a model that runs and computes the masked model."""
    try:
        _slim_once(model, masks, x, atol=atol, fold_borders=fold_borders, channel_multiple=channel_multiple)
    except _SlimBroke:
        return False
    return True


def _collected(work: Callable[..., SlimResult]) -> Callable[..., SlimResult]:
    """``work`` (a slim) with the garbage collector paused meanwhile (:func:`.common.paused_gc`), and a
    :class:`_SlimBroke` raised without the tracebacks whose frames hold the traced graph, so that the first collection
    frees it (the early check keeps the errors of the slims that break: with them, DPN-68's left 28 million objects to
    the old generations, 7.5 GB)."""

    @functools.wraps(work)
    def run(*args: Any, **kwargs: Any) -> SlimResult:
        with paused_gc():
            try:
                return work(*args, **kwargs)
            except _SlimBroke as e:
                broke = untraced(e)
        raise broke

    return run


@_collected
def _slim_once(
    model: nn.Module,
    unit_masks: Mapping[str, torch.Tensor],
    example_input: torch.Tensor,
    *,
    atol: float,
    fold_borders: bool,
    channel_multiple: int,
) -> SlimResult:
    """:func:`slim` of Linear/Conv units with ``unit_masks`` as given; raises :class:`_SlimBroke` when the slim
    model does not run or differs from the masked one."""
    tp = import_torch_pruning()
    x = example_input.detach()  # an input that requires grad would look like a parameter to the tracing
    reference = copy.deepcopy(model).eval()
    work = copy.deepcopy(model).eval()
    masks = _check_masks(work, unit_masks)
    names = node_names(work)
    calls = record_inputs(work, x)
    notes: list[str] = []
    with all_requiring_grad(work):
        graph, output_fns = trace(tp, work, x)
        traced = {names[m] for m in graph.module2node if isinstance(m, nn.Module) and m in names}
        for name, mask in masks.items():
            if not bool(mask.all()) and name not in traced:
                notes.append(f"{name}: not reached by the forward pass on the example input; left unchanged")
        groups, failed = unit_groups(graph)
        analyses = [GroupAnalysis(graph, g, names, masks, output_fns) for g in groups]
        for module, error in failed.items():
            name = names.get(module, str(module))
            if name in masks and not bool(masks[name].all()):
                notes.append(f"{name}: pruned units kept as zeros: {_cannot_follow(error)}")
        if channel_multiple < 1:
            raise PrunedropError(f"channel_multiple must be at least 1, got {channel_multiple}")
        try:
            plan = _plan(analyses, calls, names, fold_borders, channel_multiple)
            approximate = _fold_constants(plan, names)
            _zero_columns(analyses, plan.zeroed)
            _remove_channels(analyses, plan.removal)
        except PrunedropError:
            raise
        except Exception as e:  # noqa: BLE001 - the dependency graph misread an operation (a pixel shuffle)
            first = (str(e).splitlines() or [""])[0][:200]
            raise _SlimBroke(f"slimming could not plan the removal ({type(e).__name__}: {first}); this is a bug in "
                             "prunedrop's slim stage or a layer it does not support, please report it",
                             f"{type(e).__name__}: {first}", "graph") from None
    work.eval()

    with torch.no_grad():
        want = reference(x)
    try:
        with torch.no_grad(), _plain_norms_renumbered(work):
            got = work(x)
    except Exception as e:  # noqa: BLE001 - a view's RuntimeError, an assert or an einops error in the forward
        first = (str(e).splitlines() or [""])[0] or type(e).__name__
        raise _SlimBroke(
            f"the slimmed model no longer runs ({first}); this is a bug in prunedrop's slim "
            "stage or a layer it does not support, please report it", first, "runs"
        ) from None
    diff = max_abs_diff(want, got)

    modules = dict(work.named_modules())
    removed = {}
    for name, m in reference.named_modules():
        if isinstance(m, WEIGHT_LAYERS) and name in modules:
            before, after = out_units(m), out_units(modules[name])
            if before != after or name in masks:
                removed[name] = (before, after)
    misread: set[str] = set()
    positional: set[str] = set()
    for (gi, reason), roots in sorted(plan.kept.items()):
        if reason.endswith(POSITIONAL):
            positional.update(analyses[gi].producers())
        notes.append(f"{analyses[gi].label()}: kept pruned channel(s) {_format_units(roots)}: {reason}")
        # a product with a live factor varies too (a gate's b-half pruned alone: a · sigmoid(0)): not a misreading
        if reason.endswith(VARIES) and not any(type(node.grad_fn).__name__.startswith("MulBackward")
                                               for root in roots for node in analyses[gi].channels[root].members):
            misread.update(analyses[gi].producers())
    # a layer whose pruned units neither left nor were named above: the dependency graph put them in no group it
    # planned (an attention-pooling map read as coupled to them kept a convolution whole, and the run said nothing)
    named = {name for name in masks if name not in traced} | {names.get(m, str(m)) for m in failed}
    named |= {name for gi, _ in plan.kept for name in analyses[gi].producers()}
    # (and the depthwise convolutions on the kept channels: a Ghost module's copy stays with its partner, named)
    named |= {analyses[gi].name(node) for (gi, _), roots in plan.kept.items() for root in roots
              for node in analyses[gi].channels[root].members if is_depthwise(node.module)}
    for name, mask in masks.items():
        pruned = int((~mask).sum())
        if name in removed and name not in named and removed[name][0] - removed[name][1] < pruned:
            left = removed[name][0] - removed[name][1]
            notes.append(f"{name}: {pruned - left} pruned unit(s) kept as zeros: the dependency graph placed them in "
                         "no group it could remove them from")
    if approximate:
        notes += approximate
        notes.append(
            f"border constants folded inexactly (fold_borders=True): measured max abs diff {diff:.3g} "
            "on the example input"
        )
    allowed = scaled_tolerance(atol, want)
    if not diff <= allowed and not approximate:
        raise _SlimBroke(
            f"the slim model differs from the masked model by {diff:.3g} (> {allowed:.3g}: atol {atol:g} scaled by "
            "the output's magnitude) on the example "
            "input; the model has an operation that the dependency graph misreads (e.g. one that mixes "
            "channels); please report it", f"its output moved by {diff:.3g}", "output"
        )
    return SlimResult(model=work, removed=removed, max_abs_diff=diff, notes=notes, misread=sorted(misread),
                      positional=sorted(positional),
                      held={name: set(live) for name, live in plan.held.items()})
