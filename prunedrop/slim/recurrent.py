"""Slimming of recurrent layers: pruned hidden units of ``nn.LSTM`` / ``nn.GRU`` leave the model.

Part of the slim stage (:func:`prunedrop.slim.slim` calls it for the masks of recurrent layers; the
Torch-Pruning path handles Linear/Conv). Torch-Pruning's own LSTM support covers single-layer unidirectional
LSTMs only and knows nothing about GRU, so recurrent units take this dedicated path.

Input: the masked deterministic model, in which a pruned hidden unit ``j`` of layer ``l``, direction ``d`` has
all its gate rows of ``weight_ih``/``weight_hh`` and their biases zero and its ``weight_hh`` column zero (what
:meth:`prunedrop.layers.recurrent._RecurrentVD.to_dense` produces). From a zero initial state such a unit's
cell and hidden state are exactly 0 at every step, so removing it is exact:

* the layer itself: its gate rows (``G`` per unit: LSTM 4, GRU 3), its ``weight_hh`` column, and the next
  layer's ``weight_ih`` columns inside the same module;
* the consumers outside: every ``nn.Linear`` or recurrent layer that reads the unit (from ``output``, ``h_n``
  or ``c_n``, through indexing, slicing, ``cat``, ``flatten``/``reshape``) loses the matching input columns.

*Which consumer column is which unit* is measured, not guessed: the model runs once normally and once with the
recurrent layer's outputs replaced by codes (``1000 + unit number``, the same at every step and sequence)
while every other Linear / recurrent layer replays its output of the normal run, and the inputs of those layers
are compared: only a layer that reads the recurrent layer with no other weight layer in between can change. A column that changed must hold one code
everywhere, which names the unit it carries; anything else (an activation, a norm, an arithmetic op between the
layer and the consumer) makes the layer unsupported: it is kept whole and a note says why.

``hidden_size`` is shared by all layers and both directions of one ``nn.LSTM``, so every (layer, direction)
loses the same number of units: the smallest number of pruned units among them. Pruned units beyond that stay
(they are zero rows, stored sparsely) and a note says how many. After each layer is slimmed the model is run
again; a difference above ``atol`` (e.g. the output of the layer is a model output) restores the layer and
adds a note, so a wrong result never leaves this function.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..compare import scaled_tolerance
from ..errors import PrunedropError
from .common import max_abs_diff

RECURRENT = (nn.LSTM, nn.GRU)
#: gate rows per hidden unit (torch's order: LSTM i, f, g, o; GRU r, z, n)
_GATES = {nn.LSTM: 4, nn.GRU: 3}
#: codes written in place of a recurrent layer's outputs: exact in float32 far beyond any hidden size
_CODE_BASE = 1000.0


class _Unsupported(Exception):
    """This recurrent layer cannot be slimmed in this model (the reason is the message)."""


@dataclass
class RecurrentSlimResult:
    model: nn.Module
    removed: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Recurrent layer name → (hidden_size before, after)."""
    notes: list[str] = field(default_factory=list)
    max_abs_diff: float = 0.0


def split_recurrent_masks(model: nn.Module, unit_masks: Mapping[str, torch.Tensor]
                          ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(masks of ``nn.LSTM``/``nn.GRU`` layers, all other masks)."""
    modules = dict(model.named_modules())
    recurrent, other = {}, {}
    for name, mask in unit_masks.items():
        (recurrent if isinstance(modules.get(name), nn.RNNBase) else other)[name] = mask
    return recurrent, other


def _cells(rnn: nn.RNNBase) -> list[tuple[int, int]]:
    return [(layer, d) for layer in range(rnn.num_layers) for d in range(2 if rnn.bidirectional else 1)]


def _suffix(layer: int, direction: int) -> str:
    return f"_l{layer}{'_reverse' if direction else ''}"


def _check(name: str, rnn: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """The mask as ``[layers · directions, hidden]`` bool; pruned units must really be dead (zero)."""
    if type(rnn) not in RECURRENT:
        raise PrunedropError(f"unit mask for {name!r}: a {type(rnn).__name__}; recurrent masks are for nn.LSTM / "
                             "nn.GRU layers only")
    cells = _cells(rnn)
    mask = torch.as_tensor(mask).detach().cpu().bool()
    if mask.shape != (len(cells), rnn.hidden_size):
        raise PrunedropError(f"unit mask for {name!r} has shape {tuple(mask.shape)}; it needs "
                             f"[num_layers · directions, hidden_size] = [{len(cells)}, {rnn.hidden_size}]")
    hidden, gates = rnn.hidden_size, _GATES[type(rnn)]
    for index, (layer, d) in enumerate(cells):
        dead = torch.nonzero(~mask[index]).flatten()
        if not len(dead):
            continue
        s = _suffix(layer, d)
        rows = torch.cat([g * hidden + dead for g in range(gates)])
        live = [getattr(rnn, f"weight_ih{s}")[rows], getattr(rnn, f"weight_hh{s}")[rows],
                getattr(rnn, f"weight_hh{s}")[:, dead].T]
        if rnn.bias:
            live += [getattr(rnn, f"bias_ih{s}")[rows], getattr(rnn, f"bias_hh{s}")[rows]]
        if any(bool(t.detach().abs().amax() > 0) for t in live if t.numel()):
            raise PrunedropError(
                f"{name!r}: hidden units pruned in the mask (layer {layer}, direction {d}) still have non-zero "
                "gate rows, biases or recurrent columns; slim the deterministic model that the prune stage returns"
            )
    return mask


def _encode_hook(rnn: nn.RNNBase):
    """A forward hook that replaces the layer's outputs by unit codes (see the module docstring)."""
    cells = _cells(rnn)
    hidden, directions = rnn.hidden_size, 2 if rnn.bidirectional else 1
    codes = _CODE_BASE + torch.arange(len(cells) * hidden, dtype=torch.float32).view(len(cells), hidden)
    last = codes[-directions:].reshape(-1)  # output features: the last layer's directions side by side

    def state_codes(h: torch.Tensor) -> torch.Tensor:
        return codes.view(len(cells), *([1] * (h.dim() - 2)), hidden).to(h).expand_as(h).clone()

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        out, state = output
        out = last.to(out).expand_as(out).clone()
        state = tuple(state_codes(s) for s in state) if isinstance(state, tuple) else state_codes(state)
        return out, state

    return hook


def _detached(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_detached(o) for o in obj)
    return obj


def _record(model: nn.Module, x: torch.Tensor, skip: nn.Module, hook: Any = None,
            replay: dict[nn.Module, list[Any]] | None = None
            ) -> tuple[dict[nn.Module, list[torch.Tensor]], dict[nn.Module, list[Any]]]:
    """Inputs and outputs of every Linear / recurrent layer (except ``skip``) on one run of ``model``.

    ``hook`` is put on ``skip`` (to code its outputs). ``replay`` (the outputs of a plain run) makes every other
    layer return what it returned then, so that a change that reaches a layer's input can only come from
    ``skip`` along a path without another Linear or recurrent layer: only direct consumers see it.
    """
    inputs: dict[nn.Module, list[torch.Tensor]] = defaultdict(list)
    outputs: dict[nn.Module, list[Any]] = defaultdict(list)

    def pre(module: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            inputs[module].append(args[0].detach().clone())

    def post(module: nn.Module, args: tuple, output: Any) -> Any:
        outputs[module].append(_detached(output))
        if replay is not None:
            return replay[module][len(outputs[module]) - 1]
        return None

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.RNNBase)) and m is not skip]
    handles = [m.register_forward_pre_hook(pre) for m in layers] + [m.register_forward_hook(post) for m in layers]
    if hook is not None:
        handles.append(skip.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return inputs, outputs


def _consumers(model: nn.Module, rnn: nn.RNNBase, x: torch.Tensor, names: dict[nn.Module, str]
               ) -> dict[nn.Module, dict[int, int]]:
    """Consumer layer → {input column: code index (layer·directions + direction)·hidden + unit}."""
    plain, outputs = _record(model, x, rnn)
    coded, _ = _record(model, x, rnn, _encode_hook(rnn), replay=outputs)
    total = len(_cells(rnn)) * rnn.hidden_size
    found: dict[nn.Module, dict[int, int]] = {}
    for module, calls in coded.items():
        for a, b in zip(plain.get(module, []), calls):
            if a.shape != b.shape or torch.equal(a, b):
                continue
            if not isinstance(module, (nn.Linear, *RECURRENT)):
                raise _Unsupported(f"its output reaches {names.get(module, '?')}, a {type(module).__name__}")
            a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
            columns = found.setdefault(module, {})
            for col in torch.nonzero((a2 != b2).any(dim=0)).flatten().tolist():
                values = b2[:, col]
                code = float(values[0]) - _CODE_BASE
                if not (bool((values == values[0]).all()) and code.is_integer() and 0 <= code < total):
                    raise _Unsupported(f"{names.get(module, '?')} reads its output through an operation other "
                                       "than indexing, slicing, concatenation or reshaping")
                if columns.setdefault(col, int(code)) != int(code):
                    raise _Unsupported(f"{names.get(module, '?')} is called more than once with different layouts")
    return found


def _shrunk(rnn: nn.RNNBase, keep: dict[tuple[int, int], torch.Tensor]) -> nn.RNNBase:
    """A new layer of the same type with only the ``keep`` units of every (layer, direction)."""
    hidden, gates = rnn.hidden_size, _GATES[type(rnn)]
    new_hidden = len(next(iter(keep.values())))
    directions = 2 if rnn.bidirectional else 1
    with torch.device("meta"):
        new = type(rnn)(rnn.input_size, new_hidden, num_layers=rnn.num_layers, bias=rnn.bias,
                        batch_first=rnn.batch_first, dropout=float(rnn.dropout), bidirectional=rnn.bidirectional)
    with torch.no_grad():
        for layer, d in _cells(rnn):
            s = _suffix(layer, d)
            rows = torch.cat([g * hidden + keep[(layer, d)] for g in range(gates)])
            w_ih = getattr(rnn, f"weight_ih{s}")[rows]
            if layer > 0:
                w_ih = w_ih[:, torch.cat([e * hidden + keep[(layer - 1, e)] for e in range(directions)])]
            params = {f"weight_ih{s}": w_ih, f"weight_hh{s}": getattr(rnn, f"weight_hh{s}")[rows][:, keep[(layer, d)]]}
            if rnn.bias:
                params.update({f"bias_{k}{s}": getattr(rnn, f"bias_{k}{s}")[rows] for k in ("ih", "hh")})
            for pname, value in params.items():
                setattr(new, pname, nn.Parameter(value.detach().clone()))
    return new.train(rnn.training)


@torch.no_grad()
def _drop_columns(module: nn.Module, drop: set[int]) -> None:
    """Remove input columns ``drop`` of a Linear or of a recurrent layer's first layer (both directions)."""
    if isinstance(module, nn.Linear):
        keep = [c for c in range(module.in_features) if c not in drop]
        module.weight = nn.Parameter(module.weight[:, keep].clone())
        module.in_features = len(keep)
        return
    keep = [c for c in range(module.input_size) if c not in drop]
    for d in range(2 if module.bidirectional else 1):
        name = f"weight_ih{_suffix(0, d)}"
        setattr(module, name, nn.Parameter(getattr(module, name)[:, keep].clone()))
    module.input_size = len(keep)


def _run(model: nn.Module, x: torch.Tensor) -> Any:
    with torch.no_grad():
        return model(x)


def slim_recurrent(model: nn.Module, unit_masks: Mapping[str, torch.Tensor], example_input: torch.Tensor,
                   *, atol: float = 1e-5) -> RecurrentSlimResult:
    """Remove the pruned hidden units of the recurrent layers named in ``unit_masks`` (a deep copy is slimmed).

    ``unit_masks`` maps a layer name to a bool keep mask ``[num_layers · directions, hidden_size]`` (the
    layout of ``h_n``). See the module docstring for what is removed and when a layer is kept whole.
    """
    x = example_input.detach()
    reference = copy.deepcopy(model).eval()
    work = copy.deepcopy(model).eval()
    want = _run(reference, x)
    result = RecurrentSlimResult(model=work)
    modules = dict(work.named_modules())
    for name in [n for n, _ in work.named_modules() if n in unit_masks]:
        rnn = modules[name]
        if name not in unit_masks:
            continue
        mask = _check(name, rnn, unit_masks[name])
        cells = _cells(rnn)
        dead = {cell: torch.nonzero(~mask[i]).flatten() for i, cell in enumerate(cells)}
        k = min(min(len(v) for v in dead.values()), rnn.hidden_size - 1)
        pruned_total = int((~mask).sum())
        if k == 0:
            if pruned_total:
                result.notes.append(f"{name}: {pruned_total} pruned hidden unit(s) kept: every layer and direction "
                                    "shares hidden_size and one of them prunes none")
            result.removed[name] = (rnn.hidden_size, rnn.hidden_size)
            continue
        remove = {cell: set(v[:k].tolist()) for cell, v in dead.items()}
        keep = {cell: torch.tensor([j for j in range(rnn.hidden_size) if j not in remove[cell]], dtype=torch.long)
                for cell in cells}
        names = {m: n for n, m in work.named_modules()}
        try:
            consumers = _consumers(work, rnn, x, names)
        except (_Unsupported, RuntimeError) as e:  # RuntimeError: the model does not run on the coded outputs
            result.notes.append(f"{name}: pruned hidden units kept: {str(e).splitlines()[0]}")
            result.removed[name] = (rnn.hidden_size, rnn.hidden_size)
            continue
        trial = copy.deepcopy(work)
        trial_modules = dict(trial.named_modules())
        for consumer, columns in consumers.items():
            drop = set()
            for col, code in columns.items():
                cell, unit = divmod(code, rnn.hidden_size)
                if unit in remove[cells[cell]]:
                    drop.add(col)
            if drop:
                _drop_columns(trial_modules[names[consumer]], drop)
        parent_name, _, child = name.rpartition(".")
        new = _shrunk(rnn, keep)
        if name:
            setattr(trial.get_submodule(parent_name), child, new)
        else:
            trial = new  # the model is the recurrent layer: its output is the model output (checked below)
        try:
            diff = max_abs_diff(want, _run(trial.eval(), x))
        except (RuntimeError, PrunedropError) as e:
            diff, reason = float("inf"), str(e).splitlines()[0]
        else:
            reason = f"the slim model would differ by {diff:.3g}"
        if not diff <= scaled_tolerance(atol, want):
            result.notes.append(f"{name}: pruned hidden units kept: removing them changes the model output "
                                f"({reason}); e.g. the layer's output is a model output")
            result.removed[name] = (rnn.hidden_size, rnn.hidden_size)
            continue
        work, modules = trial, dict(trial.named_modules())
        result.removed[name] = (rnn.hidden_size, rnn.hidden_size - k)
        if pruned_total > k * len(cells):
            result.notes.append(
                f"{name}: {pruned_total - k * len(cells)} pruned hidden unit(s) kept as zero rows: all layers and "
                f"directions share hidden_size, and the one that prunes least prunes {k}")
    result.model = work.eval()
    result.max_abs_diff = max_abs_diff(want, _run(result.model, x))
    return result
