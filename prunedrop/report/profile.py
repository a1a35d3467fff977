"""Profiling a model: parameter counts and FLOPs (multiply-adds) per weight layer, which the report, the
threshold sweep and ``prunedrop inspect`` all count the same way.

It works on plain (deterministic) torch modules: the original network and the compressed one, which has
either the same architecture with zeros in it (per-weight pruning) or smaller layers (structured slimming).
Layers are matched between the two by their fully qualified module name.

FLOPs, everywhere in prunedrop, means **multiply-adds (MACs) of the weight layers for one input sample**:

* ``nn.Linear``: ``in_features * out_features`` per output row (a ``(B, T, F)`` input has ``T`` rows);
  ``nn.Bilinear``: ``out_features * in1_features * in2_features`` per output row;
* ``nn.Conv1d/2d/3d``: ``out_channels * (in_channels / groups) * prod(kernel_size)`` per output position,
  whatever the stride, padding, dilation or groups. Output positions whose window overlaps the zero padding
  are counted in full, as every framework's dense kernel computes them;
* ``nn.ConvTranspose1d/2d/3d``: ``weight.numel()`` per *input* position (each input value is multiplied by
  every weight of its group and scattered);
* bias additions, activations, pooling and the element-wise work of normalisation layers are not counted:
  BatchNorm folds into the preceding convolution at export, and the rest is small next to the matrix
  products. Normalisation layers, ``nn.Embedding``/``nn.EmbeddingBag`` and ``nn.PReLU`` count 0 MACs but
  their parameters are counted.

*Non-zero MACs* count only the multiply-adds with a non-zero weight, i.e. for every non-zero weight the
number of times the dense kernel uses it: ``nnz(weight) * output positions`` for convolutions and linear
layers, ``nnz(weight) * input positions`` for transposed convolutions. A fully dense layer therefore has
``nonzero_macs == macs``. This is what a sparse kernel would have to compute, not what ONNX Runtime's dense
kernels actually do.

* ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``: the size of all ``weight_ih_l*`` and ``weight_hh_l*`` per time step
  (each layer and direction multiplies every one of its weights once per step); a ``(B, T, F)`` input has
  ``T`` steps. The gates' element-wise work is not counted, like activations elsewhere.
* ``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell``: the size of ``weight_ih`` and ``weight_hh`` per call and
  sequence (one call is one time step, whatever the caller's loop): a cell called ``T`` times in one forward pass
  counts ``T`` steps, the first one too (a state of None is zeros the dense kernel multiplies all the same).

* ``nn.MultiheadAttention`` (and prunedrop's attention layers, variational or head-pruned): its q, k and v
  projections per query, key and value position, its output projection per query position (``out_proj`` is
  counted here, with its attention module, and as 0 MACs itself), and the attention's own products,
  ``2 · L · S · H·d`` per sample (scores ``QKᵀ`` and the weighted sum of values over ``L`` queries, ``S`` keys and
  ``H`` heads of ``d``). Those products have no weight: they count in full in the non-zero MACs too (``fixed_macs``),
  and shrink only when heads are removed.

Any other module that owns parameters (a user's own layer, or the model's own class token) is listed with 0 MACs.
Where none of its parameters enters a product (a matrix product or a convolution, watched at the operator level
while profiling: a layer scale, a position embedding, a temperature), that is its count (``counted=True``). Where one
does, it is ``counted=False``, and so is a module whose buffer enters one (a graph convolution's adjacency,
``adj @ h``; listed with 0 parameters); :func:`build_report` names such layers under ``flops.uncounted_layers`` so that a
FLOPs figure never silently leaves part of the network out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..layers.attention import is_attention
from ..modes import kept

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSE = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# Deliberately 0 MACs (see the module docstring), as opposed to unknown types, which are flagged.
_ZERO_MAC = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.PReLU,
)


@dataclass
class LayerProfile:
    """What one parameter-owning module stores and computes, for one input sample."""

    name: str
    """Fully qualified module name (``features.0``)."""
    type: str
    """Class name (``Conv2d``)."""
    params: int
    """All parameters the module owns directly (weight + bias, BatchNorm affine, ...)."""
    nonzero: int
    """How many of ``params`` are non-zero."""
    macs: int
    """Dense multiply-adds per sample, summed over every call of the module in one forward pass."""
    nonzero_macs: int
    """Multiply-adds per sample with a non-zero weight (see the module docstring)."""
    in_shape: list[int]
    """Input shape without the batch dimension, from the first call; ``[]`` if the module was not called."""
    out_shape: list[int]
    """Output shape without the batch dimension, from the first call; ``[]`` if the module was not called."""
    weight_shape: list[int] | None
    """Shape of the ``weight`` parameter; ``None`` for modules without one."""
    counted: bool = True
    """False when prunedrop has no MAC rule for this module type and one of its parameters enters a product, so its
    0 MACs mean "unknown"."""
    fixed_macs: int = 0
    """The multiply-adds of ``macs`` that use no weight (an attention's products of queries, keys and values): in
    ``nonzero_macs`` in full, whatever is pruned."""


@dataclass
class _Tally:
    macs: int = 0
    nonzero_macs: int = 0
    fixed_macs: int = 0
    calls: int = 0
    in_shape: list[int] = field(default_factory=list)
    out_shape: list[int] = field(default_factory=list)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Return ``(total, nonzero)`` over all parameters of ``model``; tied parameters are counted once."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p.detach()))
    return total, nonzero


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        for item in obj:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _weight(module: nn.Module) -> torch.Tensor | None:
    w = getattr(module, "weight", None)
    return w if isinstance(w, torch.Tensor) else None


def recurrent_weights(module: nn.Module) -> list[torch.Tensor]:
    """The ``weight_ih_l*`` / ``weight_hh_l*`` matrices of an ``nn.LSTM``/``nn.GRU``/``nn.RNN``, or ``weight_ih`` and
    ``weight_hh`` of an ``nn.LSTMCell``/``nn.GRUCell``/``nn.RNNCell`` (biases and a variational layer's noise
    parameters excluded); ``[]`` for other modules."""
    if isinstance(module, nn.RNNCellBase):
        return [module.weight_ih, module.weight_hh]
    if not isinstance(module, nn.RNNBase):
        return []
    return [getattr(module, n) for n in module._flat_weights_names if n.startswith("weight")]


def layer_weights(module: nn.Module) -> list[torch.Tensor]:
    """The weight matrices a layer prunes: ``weight``; a recurrent layer's ``weight_ih/hh_l*``; or, for layers
    without one weight (nn.MultiheadAttention's ``in_proj_weight`` and ``out_proj.weight``), every parameter
    whose name ends in ``weight``."""
    recurrent = recurrent_weights(module)
    if recurrent:
        return recurrent
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor):
        return [weight]
    return [p for n, p in module.named_parameters() if n.endswith("weight")]


def _macs_of_call(module: nn.Module, x: torch.Tensor | None, y: torch.Tensor | None) -> tuple[int, int]:
    """Dense and non-zero MACs of one call, for the whole batch."""
    if isinstance(module, nn.RNNCellBase):  # one step: [B, in], or [in] unbatched
        if x is None or x.dim() == 0:
            return 0, 0
        weights = recurrent_weights(module)
        rows = x.numel() // x.shape[-1]
        return (rows * sum(w.numel() for w in weights),
                rows * sum(int(torch.count_nonzero(w.detach())) for w in weights))
    if isinstance(module, nn.RNNBase):
        if x is None or x.dim() < 2:
            return 0, 0
        weights = recurrent_weights(module)
        steps = x.numel() // x.shape[-1]  # sequences × time steps, whatever the layout
        return (steps * sum(w.numel() for w in weights),
                steps * sum(int(torch.count_nonzero(w.detach())) for w in weights))
    w = _weight(module)
    if w is None or x is None or y is None:
        return 0, 0
    numel, nnz = w.numel(), int(torch.count_nonzero(w.detach()))
    if isinstance(module, (nn.Linear, nn.Bilinear)):  # a bilinear output: in1 × in2 weights, one MAC each
        positions = y.numel() // module.out_features
    elif isinstance(module, _CONV):
        positions = y.numel() // module.out_channels
    elif isinstance(module, _CONV_TRANSPOSE):
        positions = x.numel() // module.in_channels
    else:
        return 0, 0
    return positions * numel, positions * nnz


def _attention_macs(module: nn.Module, args: tuple, kwargs: dict) -> tuple[int, int, int]:
    """(dense, non-zero, weightless) MACs of one attention call for the whole batch (the module docstring)."""
    query, key, value = (args[i] if len(args) > i else kwargs.get(name)
                         for i, name in enumerate(("query", "key", "value")))
    if not all(isinstance(t, torch.Tensor) and not t.is_nested and t.dim() >= 2 for t in (query, key, value)):
        return 0, 0, 0
    batch = (query.shape[0] if module.batch_first else query.shape[1]) if query.dim() == 3 else 1
    rows_q, rows_k, rows_v = (t.numel() // t.shape[-1] for t in (query, key, value))  # positions over the batch
    inner = module.num_heads * module.head_dim
    if getattr(module, "in_proj_weight", None) is not None:
        w_q, w_k, w_v = module.in_proj_weight.detach().split(inner)
    else:  # nn.MultiheadAttention with kdim or vdim of its own
        w_q, w_k, w_v = (getattr(module, f"{p}_proj_weight").detach() for p in "qkv")
    extra = int(getattr(module, "bias_k", None) is not None) + int(bool(getattr(module, "add_zero_attn", False)))
    fixed = 2 * batch * (rows_q // batch) * (rows_k // batch + extra) * inner
    parts = [(w_q, rows_q), (w_k, rows_k), (w_v, rows_v), (module.out_proj.weight.detach(), rows_q)]
    dense = sum(w.numel() * rows for w, rows in parts)
    nonzero = sum(int(torch.count_nonzero(w)) * rows for w, rows in parts)
    return dense + fixed, nonzero + fixed, fixed


def _has_mac_rule(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Bilinear, *_CONV, *_CONV_TRANSPOSE, *_ZERO_MAC, nn.RNNBase,
                               nn.RNNCellBase)) \
        or is_attention(module)


#: operators that multiply and accumulate (what a parameter of a layer without a MAC rule must not enter to count 0)
_PRODUCT_OPS = ("mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "dot", "vdot", "addr", "_addmm_activation",
                "linear", "matmul", "einsum", "convolution", "_convolution", "convolution_overrideable",
                "mkldnn_convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                "conv_transpose3d", "_scaled_dot_product_flash_attention_for_cpu", "scaled_dot_product_attention",
                "_scaled_dot_product_efficient_attention", "_scaled_dot_product_attention_math")


def _storage(t: torch.Tensor) -> int | None:
    try:
        return t.untyped_storage().data_ptr() if t.numel() else None
    except (RuntimeError, NotImplementedError):  # a tensor without storage (nested, functional, meta)
        return None


def _product_watch(storages: dict[int, set[str]]) -> Any:
    """A dispatch mode that records which owners' parameters (by storage: views and transposes count) enter a
    product operator while it is active (``found``)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    products = {getattr(torch.ops.aten, name) for name in _PRODUCT_OPS if hasattr(torch.ops.aten, name)}

    class Watch(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.found: set[str] = set()

        def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
            kwargs = kwargs or {}
            if func.overloadpacket in products:
                for t in tree_leaves((args, kwargs)):
                    if isinstance(t, torch.Tensor):
                        self.found |= storages.get(_storage(t), set())
            return func(*args, **kwargs)

    return Watch()


def profile_model(model: nn.Module, example_input: torch.Tensor) -> list[LayerProfile]:
    """Profile every module that owns parameters with one forward pass of ``example_input``.

    Forward hooks record each module's input/output shapes and multiply-adds (definitions in the module
    docstring); the totals are divided by the batch size ``example_input.shape[0]``, so the numbers do not
    depend on the batch. A module called several times in one pass (weight sharing) has its MACs summed.
    Modules without parameters (ReLU, pooling, Flatten) are left out. The model runs in eval mode under
    ``torch.no_grad()`` so that profiling does not update BatchNorm statistics; each module's training flag
    is restored afterwards. Entries come in ``named_modules()`` order.
    """
    if example_input.dim() == 0 or example_input.shape[0] == 0:
        raise ValueError(
            f"example_input needs a non-empty batch dimension, got shape {tuple(example_input.shape)}"
        )
    batch = example_input.shape[0]
    owners = [(n, m) for n, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]
    tallies = {n: _Tally() for n, _ in owners}
    # an attention module counts its output projection itself (nn.MultiheadAttention never calls it as a module)
    counted_by_parent = {f"{n}.out_proj" if n else "out_proj" for n, m in model.named_modules() if is_attention(m)}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            x = _first_tensor(args) if args else _first_tensor(kwargs)
            y = _first_tensor(output)
            tally = tallies[name]
            if tally.calls == 0:
                tally.in_shape = list(x.shape[1:]) if x is not None else []
                tally.out_shape = list(y.shape[1:]) if y is not None else []
            tally.calls += 1
            fixed = 0
            if name in counted_by_parent:
                macs = nonzero_macs = 0
            elif is_attention(module):
                macs, nonzero_macs, fixed = _attention_macs(module, args, kwargs)
            else:
                macs, nonzero_macs = _macs_of_call(module, x, y)
            tally.macs += macs
            tally.nonzero_macs += nonzero_macs
            tally.fixed_macs += fixed

        return hook

    # the parameters and buffers of modules without a MAC rule, by storage: do they enter a product, or only
    # element-wise work? (a graph convolution's adjacency buffer, ``adj @ h``, multiplies as much as its layers)
    storages: dict[int, set[str]] = {}
    for n, m in model.named_modules():
        if not _has_mac_rule(m):
            for t in [*m.parameters(recurse=False), *m.buffers(recurse=False)]:
                key = _storage(t)
                if key is not None and t.is_floating_point():
                    storages.setdefault(key, set()).add(n)
    watch = _product_watch(storages) if storages else contextlib.nullcontext()
    handles = [m.register_forward_hook(make_hook(n), with_kwargs=True) for n, m in owners]
    try:
        with kept(model), torch.no_grad(), watch:
            model.eval()(example_input)
    finally:
        for h in handles:
            h.remove()

    # a module that holds no parameter but a buffer entering a product is listed too (0 parameters, uncounted)
    found = watch.found if storages else set()
    listed = {n for n, _ in owners} | found
    owners = [(n, m) for n, m in model.named_modules() if n in listed]
    profiles = []
    for name, module in owners:
        params = list(module.parameters(recurse=False))
        tally = tallies.get(name, _Tally())
        w = _weight(module)
        profiles.append(
            LayerProfile(
                name=name,
                type=type(module).__name__,
                params=sum(p.numel() for p in params),
                nonzero=sum(int(torch.count_nonzero(p.detach())) for p in params),
                # Rounded rather than floored: a module fed something not proportional to the batch
                # (rare) should not lose a MAC to integer division.
                macs=(tally.macs + batch // 2) // batch,
                nonzero_macs=(tally.nonzero_macs + batch // 2) // batch,
                fixed_macs=(tally.fixed_macs + batch // 2) // batch,
                in_shape=tally.in_shape,
                out_shape=tally.out_shape,
                weight_shape=list(w.shape) if w is not None else None,
                counted=_has_mac_rule(module) or name not in found,
            )
        )
    return profiles
