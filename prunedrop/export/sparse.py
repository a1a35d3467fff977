"""The ONNX file made fit to ship: every debug record the exporters leave behind removed, and initializers that
pruning left full of zeros stored as ``Constant`` nodes with a ``sparse_value`` wherever that is smaller.

Sparse layout. ONNX allows two index layouts for a ``SparseTensorProto``: linearized ``[NNZ]`` or
``[NNZ, rank]`` coordinates. The onnx checker accepts INT64 indices only (onnxruntime would also take
int32/int16, but such a file is not valid ONNX). We store linearized INT64 indices in the
``int64_data`` field, not ``raw_data``: protobuf packs that field as varints, so an index below 2**21
(any tensor under two million elements) costs 3 bytes instead of 8, while the file stays valid ONNX.
A sparse tensor therefore pays about 4 bytes per value plus 1-4 bytes per index, and pays off below
roughly 50-60% density. ``graph.sparse_initializer`` would be a little smaller still, but onnx's
full-check shape inference rejects it as an operator input ("unsupported type: sparse_tensor(float)");
a ``Constant`` node's output is an ordinary dense tensor and passes. onnxruntime densifies sparse
constants when it loads the file, so it runs the same kernels and gives bit-identical outputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import PrunedropError

# Only floating-point weights are pruned; integer initializers are shapes and indices that onnx and
# onnxruntime want to read as constants (shape inference, constant folding), so they stay dense.
SPARSE_DTYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16})

_SPARSE_MIN_OPSET = 11  # Constant gained its sparse_value attribute in opset 11

_INTEGER_DTYPES = frozenset({onnx.TensorProto.INT64, onnx.TensorProto.INT32})


def lookup_tables(graph: onnx.GraphProto) -> set[str]:
    """The integer initializers that only ever serve as the data a ``Gather`` looks values up in: a slim embedding's
    id → row map (:class:`prunedrop.layers.RemappedEmbedding`), which maps every removed id to row 0. No shape
    inference or constant folding reads them as shapes, so they may be stored sparsely like a pruned weight: a
    200,000-id vocabulary with 30 rows kept took 1.6 MB dense."""
    uses: dict[str, list[tuple[str, int]]] = {}
    for node in graph.node:
        for position, name in enumerate(node.input):
            uses.setdefault(name, []).append((node.op_type, position))
    return {init.name for init in graph.initializer
            if init.data_type in _INTEGER_DTYPES and uses.get(init.name)
            and all(use == ("Gather", 0) for use in uses[init.name])}


def strip_debug_info(proto: onnx.ModelProto) -> None:
    """Remove every ``doc_string`` and ``metadata_props`` entry from ``proto``, in place.

    The exporters put Python stack traces, module paths and FX node dumps there (``pkg.torch.onnx.*``,
    ``namespace``, ...), which leak local file paths into a file meant to be shipped. Model-level
    ``metadata_props`` go too: the caller sets its own afterwards.
    """
    _clear_debug_fields(proto)
    _strip_graph(proto.graph)
    for function in proto.functions:
        _clear_debug_fields(function)
        for value in function.value_info:
            _clear_debug_fields(value)
        for node in function.node:
            _strip_node(node)


def sparsify_initializers(proto: onnx.ModelProto, mode: bool | str = "auto",
                          dtypes: Iterable[int] = SPARSE_DTYPES) -> list[str]:
    """Replace float initializers holding zeros by ``Constant`` nodes with a ``sparse_value``, in place.

    ``mode="auto"`` converts a tensor only when its sparse form is smaller, ``True`` every tensor with at
    least one zero. Below opset 11, where ``Constant`` has no ``sparse_value``, ``"auto"`` keeps everything
    dense and ``True`` is an error. Initializers that are also graph inputs stay: a caller may override those, and a
    ``Constant`` cannot be fed. ``dtypes``: the tensor types considered (the float types; the int8 weights of a
    quantized model with :mod:`prunedrop.quantize`). Returns the names of the converted initializers.
    """
    opset = _default_opset(proto)
    if opset < _SPARSE_MIN_OPSET:
        if mode is True:
            raise PrunedropError(
                f"sparse storage needs ONNX opset {_SPARSE_MIN_OPSET} or newer (Constant's sparse_value), "
                f"the model uses {opset}; raise the opset or export with sparse='auto' or False"
            )
        return []
    graph = proto.graph
    graph_inputs = {value.name for value in graph.input}
    tables = lookup_tables(graph)
    weights, lookups = frozenset(dtypes), frozenset(dtypes) | _INTEGER_DTYPES
    kept: list[onnx.TensorProto] = []
    constants: list[onnx.NodeProto] = []
    for init in graph.initializer:
        types = lookups if init.name in tables else weights
        node = None if init.name in graph_inputs else sparse_constant(init, types)
        if node is not None and (mode is True or node.ByteSize() < init.ByteSize()):
            constants.append(node)
        else:
            kept.append(init)
    if constants:
        nodes = list(graph.node)
        del graph.initializer[:]
        graph.initializer.extend(kept)
        # Constants go first so that the node list stays topologically sorted.
        del graph.node[:]
        graph.node.extend(constants + nodes)
    return [node.output[0] for node in constants]


def _clear_debug_fields(message: Any) -> None:
    # Older onnx versions lack metadata_props on some messages; check the descriptor, not the version.
    fields = message.DESCRIPTOR.fields_by_name
    if "doc_string" in fields:
        message.doc_string = ""
    if "metadata_props" in fields:
        del message.metadata_props[:]


def _strip_graph(graph: onnx.GraphProto) -> None:
    _clear_debug_fields(graph)
    for value in (*graph.input, *graph.output, *graph.value_info):
        _clear_debug_fields(value)
    for tensor in graph.initializer:
        _clear_debug_fields(tensor)
    for sparse in graph.sparse_initializer:
        _clear_debug_fields(sparse.values)
        _clear_debug_fields(sparse.indices)
    for node in graph.node:
        _strip_node(node)


def _strip_node(node: onnx.NodeProto) -> None:
    _clear_debug_fields(node)
    for attribute in node.attribute:
        _clear_debug_fields(attribute)
        if attribute.HasField("g"):
            _strip_graph(attribute.g)
        for subgraph in attribute.graphs:
            _strip_graph(subgraph)
        if attribute.HasField("t"):
            _clear_debug_fields(attribute.t)
        for tensor in attribute.tensors:
            _clear_debug_fields(tensor)


def _default_opset(proto: onnx.ModelProto) -> int:
    return next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), 0)


def index_bytes(index: Any) -> Any:
    """The bytes of packed varints holding the non-negative integers ``index`` (a NumPy array): 7 bits a byte."""
    index = np.asarray(index, dtype=np.int64)
    return np.maximum(1, (np.floor(np.log2(np.maximum(index, 1))).astype(np.int64) // 7) + 1)


def stored_bytes(array: Any) -> int:
    """About the bytes the exported file spends on one float tensor (a NumPy array or a tensor): its dense form, or
    where smaller its sparse ``Constant`` (:func:`sparse_constant`: each non-zero value, and its linear index as a
    varint). What a ``bytes`` target counts before any file is written; the exporter may lay a tensor out
    differently (a transposed Gemm weight), which moves the indices' varints by a byte at most."""
    flat = np.asarray(array).reshape(-1)
    width = flat.dtype.itemsize
    dense = width * flat.size
    nonzero = np.flatnonzero(flat)
    if nonzero.size == flat.size:
        return int(dense)
    return int(min(dense, width * nonzero.size + int(index_bytes(nonzero).sum())))


def parameters_bytes(params: Iterable[Any]) -> tuple[int, int]:
    """(:func:`stored_bytes` summed over the tensors ``params``, the same stored dense): what a ``bytes`` target
    counts of a model's parameters."""
    stored = dense = 0
    for p in params:
        array = p.detach().cpu().numpy() if hasattr(p, "detach") else np.asarray(p)
        stored += stored_bytes(array)
        dense += array.size * array.dtype.itemsize
    return stored, dense


def sparse_constant(init: onnx.TensorProto, dtypes: frozenset[int] = SPARSE_DTYPES) -> onnx.NodeProto | None:
    """``init`` as a ``Constant`` with a sparse value, or None if it has no zero or cannot be sparse."""
    if init.data_type not in dtypes or init.data_location == onnx.TensorProto.EXTERNAL:
        return None
    array = numpy_helper.to_array(init)
    if array.ndim == 0:
        return None
    flat = array.reshape(-1)
    nonzero = np.flatnonzero(flat)
    if nonzero.size == flat.size:
        return None
    values = numpy_helper.from_array(flat[nonzero], name=init.name)
    # int64_data rather than raw_data: packed varints, 1-4 bytes per index instead of 8 (see module doc).
    indices = onnx.TensorProto(data_type=onnx.TensorProto.INT64, dims=[nonzero.size])
    indices.int64_data.extend(nonzero.tolist())
    sparse = helper.make_sparse_tensor(values, indices, list(array.shape))
    return helper.make_node("Constant", [], [init.name], sparse_value=sparse)
