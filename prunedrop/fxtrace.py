"""``torch.fx.symbolic_trace`` with the tensor factories' size written the way models write it.

``torch.zeros(x.shape[0], 4)`` (a size as separate arguments, the first one traced) fails inside torch.fx:
"zeros() takes 1 positional argument but 2 were given", since torch's argument parser matches a traced first
argument to the one-sequence form before the trace sees the call; ``torch.zeros((x.shape[0], 4))`` traces. A model
that builds a zero state or padding from its batch size lost its ``architecture.json`` (and whatever else reads the
graph: the output layers, BatchNorm folding). :func:`symbolic_trace` passes such sizes as one tuple while it traces;
the graph records the same function with the same size, so it runs as the model does.

``torch.nn``'s transformer layers (``TransformerEncoderLayer`` and ``TransformerDecoderLayer``, their stacks and
``nn.Transformer``) are leaves to torch.fx, which ``architecture.json`` cannot name (their forward branches on the
masks' types and on the fast path, which torch.fx cannot follow), so a model built on them lost its manifest, and
its slimmed feed-forward widths, different in each layer, fit no ``nn.TransformerEncoder`` a user could build again.
They are traced as the layers they hold: the same attention, feed-forward, norm and dropout calls as their
forward's general path (:data:`THROUGH`), which ``architecture.json`` names.
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import fx, nn

from .einops_trace import einops_layer_forward, replacements
from .layers.attention import HeadPrunedMultiheadAttention, float_mask

#: factories that take a size as separate arguments (``torch.zeros(2, 3)``)
SIZE_FACTORIES = ("zeros", "ones", "empty", "rand", "randn")


def _sized(factory: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(factory)
    def call(*size: Any, **kwargs: Any) -> Any:
        if len(size) > 1 and any(isinstance(s, fx.Proxy) for s in size):
            return factory(tuple(size), **kwargs)
        return factory(*size, **kwargs)
    return call


def _attention(attn: nn.MultiheadAttention, q: Any, kv: Any, mask: Any, padding: Any) -> Any:
    # the is_causal hints are left out: each needs its mask (MultiheadAttention refuses the hint alone), and the
    # mask gives the same attention
    return attn(q, kv, kv, attn_mask=mask, key_padding_mask=padding, need_weights=False)[0]


def _feed_forward(layer: nn.Module, x: Any) -> Any:
    return layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))


def _encoder_layer(layer: nn.TransformerEncoderLayer, src: Any, src_mask: Any = None,
                   src_key_padding_mask: Any = None, is_causal: bool = False) -> Any:
    x = src
    if layer.norm_first:
        x = x + layer.dropout1(_attention(layer.self_attn, layer.norm1(x), layer.norm1(x), src_mask,
                                          src_key_padding_mask))
        return x + layer.dropout2(_feed_forward(layer, layer.norm2(x)))
    x = layer.norm1(x + layer.dropout1(_attention(layer.self_attn, x, x, src_mask, src_key_padding_mask)))
    return layer.norm2(x + layer.dropout2(_feed_forward(layer, x)))


def _decoder_layer(layer: nn.TransformerDecoderLayer, tgt: Any, memory: Any, tgt_mask: Any = None,
                   memory_mask: Any = None, tgt_key_padding_mask: Any = None, memory_key_padding_mask: Any = None,
                   tgt_is_causal: bool = False, memory_is_causal: bool = False) -> Any:
    x = tgt
    if layer.norm_first:
        h = layer.norm1(x)
        x = x + layer.dropout1(_attention(layer.self_attn, h, h, tgt_mask, tgt_key_padding_mask))
        x = x + layer.dropout2(_attention(layer.multihead_attn, layer.norm2(x), memory, memory_mask,
                                          memory_key_padding_mask))
        return x + layer.dropout3(_feed_forward(layer, layer.norm3(x)))
    x = layer.norm1(x + layer.dropout1(_attention(layer.self_attn, x, x, tgt_mask, tgt_key_padding_mask)))
    x = layer.norm2(x + layer.dropout2(_attention(layer.multihead_attn, x, memory, memory_mask,
                                                  memory_key_padding_mask)))
    return layer.norm3(x + layer.dropout3(_feed_forward(layer, x)))


def _encoder(stack: nn.TransformerEncoder, src: Any, mask: Any = None, src_key_padding_mask: Any = None,
             is_causal: bool | None = None) -> Any:
    x = src
    for layer in stack.layers:
        x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask)
    return stack.norm(x) if stack.norm is not None else x


def _decoder(stack: nn.TransformerDecoder, tgt: Any, memory: Any, tgt_mask: Any = None, memory_mask: Any = None,
             tgt_key_padding_mask: Any = None, memory_key_padding_mask: Any = None,
             tgt_is_causal: bool | None = None, memory_is_causal: bool = False) -> Any:
    x = tgt
    for layer in stack.layers:
        x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
                  memory_key_padding_mask=memory_key_padding_mask)
    return stack.norm(x) if stack.norm is not None else x


def _transformer(model: nn.Transformer, src: Any, tgt: Any, src_mask: Any = None, tgt_mask: Any = None,
                 memory_mask: Any = None, src_key_padding_mask: Any = None, tgt_key_padding_mask: Any = None,
                 memory_key_padding_mask: Any = None, src_is_causal: bool | None = None,
                 tgt_is_causal: bool | None = None, memory_is_causal: bool = False) -> Any:
    memory = model.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask)
    return model.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                         tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask)


#: torch.nn layers traced through, each as its forward's general path (the one it takes while training)
THROUGH: dict[type[nn.Module], Callable[..., Any]] = {
    nn.TransformerEncoderLayer: _encoder_layer,
    nn.TransformerDecoderLayer: _decoder_layer,
    nn.TransformerEncoder: _encoder,
    nn.TransformerDecoder: _decoder,
    nn.Transformer: _transformer,
}


class _Untraceable(Exception):
    """A call the traced-through form does not cover (torch.fx's own TraceError says the same of control flow)."""


def _known(tracer: _Tracer, mask: Any, dtype: torch.dtype) -> torch.Tensor | None:
    """A mask as the float tensor it stands for (:func:`~prunedrop.layers.attention.float_mask`): a buffer or
    constant reaches the call as itself, a model attribute read in the forward as a ``get_attr`` proxy; one computed
    from the input cannot be known, and stops the trace."""
    if isinstance(mask, fx.Proxy):
        if mask.node.op != "get_attr":
            raise _Untraceable("a mask computed in the forward reaches a head-pruned attention")
        mask = functools.reduce(getattr, mask.node.target.split("."), tracer.root)
    return float_mask(mask, dtype)


def _attention_heads(tracer: _Tracer, attention: nn.Module, query: Any, key: Any, value: Any,
                     key_padding_mask: Any = None, need_weights: bool = True, attn_mask: Any = None,
                     average_attn_weights: bool = True, is_causal: bool = False) -> Any:
    """prunedrop's head-pruned attention (fewer heads than ``embed_dim / head_dim``, which no torch.nn layer holds)
    for batched inputs, traced through the module's own ``_attend`` with its masks known (:func:`_known`), whose
    dtype and rank decide how they apply; anything else stops the trace, and the run says the manifest cannot
    describe the model."""
    if key_padding_mask is not None:
        raise _Untraceable("a key padding mask reaches a head-pruned attention")
    if not attention.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    dtype = attention._parameters["in_proj_weight"].dtype  # the Parameter itself: an attribute read is a proxy here
    out, weights = attention._attend(query, key, value, _known(tracer, attn_mask, dtype),
                                     _known(tracer, key_padding_mask, dtype), is_causal)
    if not attention.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    return out, weights.mean(dim=1) if average_attn_weights else weights


def _shape_slice(node: fx.Node) -> int | None:
    """How many sizes ``x.shape[a:b]`` or ``x.size()[a:b]`` holds where the slice alone says so (``[-2:]``: two,
    whatever the rank; ``[2:]`` depends on it: None)."""
    if node.op != "call_function" or node.target is not operator.getitem or len(node.args) != 2:
        return None
    source, index = node.args
    if not (isinstance(source, fx.Node) and isinstance(index, slice) and index.step in (None, 1)):
        return None
    shaped = ((source.op == "call_function" and source.target is getattr and source.args[1:] == ("shape",))
              or (source.op == "call_method" and source.target == "size" and len(source.args) == 1))
    start, stop = index.start, index.stop
    if not shaped or not isinstance(start, int) or not isinstance(stop, (int, type(None))):
        return None
    if stop is None:
        return -start if start < 0 else None
    return max(stop - start, 0) if (start >= 0) == (stop >= 0) else None


def _pieces(node: fx.Node) -> int | None:
    """How many values a traced call returns where its arguments say so: ``chunk(n)`` n, ``split``/``tensor_split``
    with a list of sizes or indices its length (plus one for indices), ``tensor_split(n)`` n, a slice of a shape
    (:func:`_shape_slice`); None otherwise."""
    if (sliced := _shape_slice(node)) is not None:
        return sliced
    name = getattr(node.target, "__name__", node.target) if node.op in ("call_function", "call_method") else None
    if name not in ("chunk", "split", "split_with_sizes", "tensor_split"):
        return None
    second = node.args[1] if len(node.args) > 1 else next(
        (node.kwargs[k] for k in ("chunks", "split_size_or_sections", "split_size", "split_sizes", "sections",
                                  "indices") if k in node.kwargs), None)
    if name == "chunk" or (name == "tensor_split" and isinstance(second, int)):
        return second if isinstance(second, int) and second > 0 else None
    if isinstance(second, (list, tuple)) and all(isinstance(v, int) for v in second):
        return len(second) + (1 if name == "tensor_split" else 0)
    return None


@contextlib.contextmanager
def _pieces_counted() -> Iterator[None]:
    """While tracing: ``len()`` of a proxy whose pieces :func:`_pieces` counts gives that count (``list(…)`` asks
    for it before it iterates); any other proxy's ``len()`` fails as torch.fx's does."""
    original = fx.Proxy.__len__

    def length(self: fx.Proxy) -> int:
        count = _pieces(self.node)
        return count if count is not None else original(self)

    fx.Proxy.__len__ = length  # type: ignore[method-assign]
    try:
        yield
    finally:
        fx.Proxy.__len__ = original  # type: ignore[method-assign]


class _Tracer(fx.Tracer):
    """torch.fx's tracer, tracing the :data:`THROUGH` layers as the layers they hold, and prunedrop's head-pruned
    attention as what it computes (:func:`_attention_heads`)."""

    def __init__(self, leaves: tuple[type[nn.Module], ...] = ()) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.leaves and isinstance(m, self.leaves):
            return True
        return type(m) not in THROUGH and super().is_leaf_module(m, module_qualified_name)

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        """A chunk or split into a number of pieces its call states (``list(h.chunk(2, 1))``, YOLOv8's C2f) or a slice
        of a shape (``expand(-1, -1, *h.shape[-2:])``), iterated as those pieces; any other proxy stops the trace, as
        torch.fx's own tracer does."""
        count = _pieces(obj.node)
        if count is None:
            return super().iter(obj)
        return iter([obj[i] for i in range(count)])

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        through = THROUGH.get(type(m))
        if through is not None:
            forward = functools.partial(through, m)
        elif type(m) is HeadPrunedMultiheadAttention:
            forward = functools.partial(_attention_heads, self, m)
        else:
            forward = einops_layer_forward(m) or forward
        return super().call_module(m, forward, args, kwargs)


def _forward_globals(model: nn.Module) -> list[dict[str, Any]]:
    """The global namespaces of the forward methods of ``model``'s modules (where a user's ``from einops import
    reduce`` or a TorchScript function the forward calls is bound), each once."""
    found: dict[int, dict[str, Any]] = {}
    for m in model.modules():
        for cls in type(m).__mro__:
            g = getattr(cls.__dict__.get("forward"), "__globals__", None)
            if isinstance(g, dict):
                found.setdefault(id(g), g)
    return list(found.values())


def _through_python(fn: Any) -> Callable[..., Any] | None:
    """A TorchScript function (``@torch.jit.script def mish(x)``), which takes no proxy ("Expected a value of type
    'Tensor' … found type 'Proxy'"), as a function that runs the Python it was compiled from (kept by torch as
    ``_torchdynamo_inline``) on proxies and itself otherwise; None for anything else."""
    python = getattr(fn, "_torchdynamo_inline", None) if isinstance(fn, torch.jit.ScriptFunction) else None
    if not callable(python):
        return None

    def call(*args: Any, **kwargs: Any) -> Any:
        traced = any(isinstance(a, fx.Proxy) for a in (*args, *kwargs.values()))
        return python(*args, **kwargs) if traced else fn(*args, **kwargs)
    return call


@contextlib.contextmanager
def _swapped(model: nn.Module) -> Iterator[None]:
    """While tracing ``model``: einops' functions take proxies (:func:`prunedrop.einops_trace.replacements`) and
    TorchScript functions run as their Python (:func:`_through_python`), wherever einops or the model's forwards bind
    them; every name is given back its own value afterwards, also after an error."""
    spaces, by_id = replacements()
    saved: list[tuple[dict[str, Any], str, Any]] = []
    try:
        for space in [*spaces, *_forward_globals(model)]:
            for name, value in list(space.items()):
                new = by_id.get(id(value)) or _through_python(value)
                if new is not None:
                    saved.append((space, name, value))
                    space[name] = new
        yield
    finally:
        for space, name, value in reversed(saved):
            space[name] = value


def symbolic_trace(model: nn.Module, concrete_args: dict[str, Any] | None = None,
                   leaves: tuple[type[nn.Module], ...] = ()) -> fx.GraphModule:
    """``torch.fx.symbolic_trace(model, concrete_args)``, with :data:`SIZE_FACTORIES` called with separate size
    arguments, one of them traced, given them as one tuple (what they do with plain integers anyway), and the
    :data:`THROUGH` layers traced as the layers they hold, einops' functions and layers as the torch operations
    they perform (:mod:`prunedrop.einops_trace`), and TorchScript functions as the Python they were compiled from.
    ``leaves``: module types kept as single calls whatever their package (a library's BatchNorm subclass, which
    torch.fx would trace through)."""
    saved = {name: getattr(torch, name) for name in SIZE_FACTORIES}
    for name, factory in saved.items():
        setattr(torch, name, _sized(factory))
    try:
        tracer = _Tracer(leaves)
        with _swapped(model), _pieces_counted():
            try:
                graph = tracer.trace(model, concrete_args=concrete_args)
            except TypeError as first:
                # a buffer's method given a traced size (``self.coords.expand(x.shape[0], -1, -1)``): torch reads the
                # proxy as no int and raises; traced again with buffers as proxies, which would stop a forward that
                # reads a buffer's values or shape in Python (``range(self.table.shape[0])``), so only then
                tracer = _Tracer(leaves)
                tracer.proxy_buffer_attributes = True
                try:
                    graph = tracer.trace(model, concrete_args=concrete_args)
                except Exception:  # noqa: BLE001 - the first error says what stopped the trace
                    raise first from None
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    finally:
        for name, factory in saved.items():
            setattr(torch, name, factory)
