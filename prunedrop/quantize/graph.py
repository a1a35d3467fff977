"""The ONNX side of quantization, read and rewritten as protobuf (no onnxruntime here): the weight nodes of the
float file and the modules they came from, the float file made dense again for onnxruntime's quantizer, how each
quantized weight can be stored (its type, its bytes dense and sparse), the conversion to a newer opset (int4), and
the splice that takes onnxruntime's dynamic (DynamicQuantizeLSTM) LSTMs into the statically quantized model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

_DYNAMIC_SUFFIX = "_quant"  # onnxruntime names DynamicQuantizeLSTM after the LSTM node it replaces


@dataclass
class WeightNode:
    """An ONNX node that applies a weight: its name, op type, weight tensor name and the module it came from."""

    node: str
    op: str
    weight: str
    module: str | None


def _module_of(node: onnx.NodeProto, weight: str) -> str | None:
    if weight.endswith(".weight") and not weight.startswith("onnx::"):
        return weight[: -len(".weight")]
    # the weight of a Conv that the exporter fused with its BatchNorm is an "onnx::Conv_12" constant: the module is
    # read from the node's name, which TorchScript builds from the module scopes: "/block1/conv1/Conv" (attribute
    # names) or "/layer1/layer1.0/conv1/Conv" (a container's child named "attribute.index")
    if not node.name.startswith("/"):
        return None
    return _scope_name(node.name.strip("/").split("/")[:-1])


def _scope_name(scopes: Sequence[str]) -> str | None:
    """The qualified module name of TorchScript's scope names: each is appended, except that a scope named
    ``X.i`` right after a scope ``X`` (a container's child, or a fully qualified scope) replaces it: ["layer1",
    "layer1.0", "conv1"] → "layer1.0.conv1", ["block1", "conv1"] → "block1.conv1", ["0", "0.0"] → "0.0". (It used
    the last scope alone, so that a digits residual CNN's BatchNorm-fused convolutions, "/block1/conv1/Conv", found
    no posterior under ``bayes``.)"""
    parts: list[str] = []
    for scope in scopes:
        head, dot, _ = scope.rpartition(".")
        if dot and parts and parts[-1] == head:
            parts[-1] = scope
        else:
            parts.append(scope)
    return ".".join(parts) or None


def weight_nodes(proto: onnx.ModelProto) -> list[WeightNode]:
    """Nodes that take a float weight of rank ≥ 2 from an initializer or a Constant (the layers to quantize)."""
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    weights = {t.name for t in proto.graph.initializer if t.data_type in floats and len(t.dims) >= 2}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute:
            attr = node.attribute[0]
            tensor = attr.t if attr.HasField("t") else attr.sparse_tensor.values if attr.HasField(
                "sparse_tensor") else None
            dims = attr.sparse_tensor.dims if attr.HasField("sparse_tensor") else (tensor.dims if tensor else [])
            if tensor is not None and tensor.data_type in floats and len(dims) >= 2:
                weights.add(node.output[0])
    out = []
    for node in proto.graph.node:
        used = [name for name in node.input if name in weights]
        if used and node.op_type != "Constant":
            out.append(WeightNode(node=node.name, op=node.op_type, weight=used[0], module=_module_of(node, used[0])))
    return out


#: operators that carry int8 activations from one quantized layer to the next (onnxruntime runs them on int8, by a
#: QLinear kernel or as plain data movement); :func:`carriers` quantizes them only between quantized layers
CARRIER_OPS = frozenset({"Relu", "Clip", "LeakyRelu", "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten",
                         "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Resize", "Pad",
                         "Add", "Identity"})
_MANY_DATA_INPUTS = frozenset({"Add", "Concat"})  # the others carry one tensor: input 0 (the rest are shapes, axes)
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                          onnx.TensorProto.BFLOAT16})


def carriers(proto: onnx.ModelProto, quantized: Sequence[str]) -> list[str]:
    """The nodes of :data:`CARRIER_OPS` through which activations flow only from quantized nodes to quantized
    nodes: each data input made by a quantized weight node (``quantized``) or another such carrier (or a constant),
    each consumer of its outputs quantized, none of them a graph output.

    onnxruntime's quantizer, left to choose, also puts quantize/dequantize pairs around every operator it knows
    (attention's activation products, residual adds, reshapes), whichever weights stay float32: a Fashion-MNIST
    transformer with every weight node excluded still held 78 QuantizeLinear nodes, ran 2x slower than its float32
    file and was larger than it. Only these carriers, between quantized layers, keep an int8 chain (a ReLU and a
    max-pool between two int8 convolutions), and with no layer quantized none is: the float32 model.
    The greatest such set: start from every candidate and drop the ones that break the rule until none does.
    A node that reads a constant holding ±inf or NaN (an attention mask's −inf added to the scores) is none: its
    output's calibrated range is infinite, and onnxruntime's scale and zero point for it came out NaN."""
    from onnx import numpy_helper

    made_by = {out: node.name for node in proto.graph.node for out in node.output}
    values = {t.name: t for t in proto.graph.initializer} | {
        node.output[0]: attr.t for node in proto.graph.node if node.op_type == "Constant"
        for attr in node.attribute if attr.name == "value"}
    constants = set(values) | {node.output[0] for node in proto.graph.node if node.op_type == "Constant"}
    infinite = {name for name, t in values.items() if t.data_type in _FLOAT_TYPES
                and not np.isfinite(numpy_helper.to_array(t)).all()}
    consumers: dict[str, list[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    graph_outputs = {o.name for o in proto.graph.output}
    weights = set(quantized)
    chosen = {node.name: node for node in proto.graph.node if node.op_type in CARRIER_OPS and node.name not in weights
              and not infinite.intersection(node.input)}
    changed = True
    while changed:
        changed = False
        inside = weights | set(chosen)
        for name, node in list(chosen.items()):
            data = [i for i in (node.input if node.op_type in _MANY_DATA_INPUTS else node.input[:1])
                    if i and i not in constants]
            feeds = all(made_by.get(i) in inside for i in data) and bool(data)
            fed = all(out not in graph_outputs and consumers.get(out) and all(c in inside for c in consumers[out])
                      for out in node.output if out)
            if not (feeds and fed):
                del chosen[name]
                changed = True
    return [node.name for node in proto.graph.node if node.name in chosen]


def load_dense(path: str | Path) -> onnx.ModelProto:
    """The ONNX file with its sparse ``Constant`` weights (:func:`prunedrop.export.sparsify_initializers`) made
    dense initializers again, as onnxruntime's quantizer finds weights among the initializers only; nodes named."""
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    nodes, dense = [], []
    for node in proto.graph.node:
        attr = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        if attr is not None and attr.name == "sparse_value":
            sparse = attr.sparse_tensor
            values = numpy_helper.to_array(sparse.values).reshape(-1)
            indices = numpy_helper.to_array(sparse.indices)
            array = np.zeros(int(np.prod(sparse.dims)), dtype=values.dtype)
            flat = indices if indices.ndim == 1 else np.ravel_multi_index(indices.T, tuple(sparse.dims))
            array[flat] = values
            dense.append(numpy_helper.from_array(array.reshape(tuple(sparse.dims)), name=node.output[0]))
        else:
            nodes.append(node)
    if dense:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        proto.graph.initializer.extend(dense)
    return _named(proto)


def _named(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Every node named (``nodes_to_exclude`` selects nodes by name); names already there stay."""
    taken = {n.name for n in proto.graph.node if n.name}
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    return proto


def _weight_inputs(proto: onnx.ModelProto, nodes: Sequence[WeightNode]) -> dict[str, str]:
    """Quantized weight node → the name of its integer weight tensor (the input of the DequantizeLinear that
    feeds it)."""
    constants = {t.name for t in proto.graph.initializer}
    constants.update(n.output[0] for n in proto.graph.node if n.op_type == "Constant")
    producers = {n.output[0]: n for n in proto.graph.node
                 if n.op_type == "DequantizeLinear" and n.input[0] in constants}  # weights, not activations
    by_name = {n.name: n for n in proto.graph.node}
    out = {}
    for wn in nodes:
        node = by_name.get(wn.node)
        for i in (node.input if node is not None else []):
            if i in producers and i != wn.weight:
                out[wn.node] = producers[i].input[0]
                break
    return out


def weight_storage(proto: onnx.ModelProto, nodes: Sequence[WeightNode],
                   stored: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Each quantized weight's storage options (before sparse conversion): its type and the bytes dense and, for
    int8 with zeros, as sparse constants (what :func:`prunedrop.export.sparsify_initializers` would write).
    ``stored``: float32 nodes whose weights :func:`store_int8` stored as int8 (node → int8 tensor)."""
    from ..export.sparse import sparse_constant

    inits = {t.name: t for t in proto.graph.initializer}
    names = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT4: "int4",
             onnx.TensorProto.UINT4: "uint4"}
    tensors = {node: [tensor] for node, tensor in {**_weight_inputs(proto, nodes), **(stored or {})}.items()}
    for node in proto.graph.node:  # onnxruntime's dynamic LSTM: W and R are its int8 inputs 1 and 2
        if node.op_type == "DynamicQuantizeLSTM" and node.name.endswith(_DYNAMIC_SUFFIX):
            tensors[node.name[: -len(_DYNAMIC_SUFFIX)]] = [node.input[1], node.input[2]]
    out = {}
    for node, names_ in tensors.items():
        found = [inits[t] for t in names_ if t in inits]
        if not found:
            continue
        row: dict[str, Any] = {"tensors": [t.name for t in found],
                               "type": names.get(found[0].data_type, str(found[0].data_type)),
                               "dense_bytes": sum(t.ByteSize() for t in found)}
        sparse = [sparse_constant(t, frozenset({onnx.TensorProto.INT8, onnx.TensorProto.UINT8})) for t in found]
        if all(c is not None for c in sparse):
            row["sparse_bytes"] = sum(c.ByteSize() for c in sparse)
        row["per_tensor"] = {t.name: (t.ByteSize(), None if c is None else c.ByteSize()) for t, c in zip(found, sparse)}
        out[node] = row
    return out


#: the axis of each operator's weight that indexes its output channels (one int8 scale per channel along it);
#: Gemm and MatMul are read from the node (transB, the weight's input position); any other operator: one scale
_CHANNEL_AXIS = {"Conv": 0, "ConvTranspose": 1, "LSTM": 1, "GRU": 1, "RNN": 1}


def _channel_axis(node: onnx.NodeProto, weight: str, rank: int) -> int | None:
    if node.op_type in _CHANNEL_AXIS:
        return _CHANNEL_AXIS[node.op_type]
    if node.op_type == "Gemm":
        trans = next((a.i for a in node.attribute if a.name == ("transB" if node.input[1] == weight else "transA")), 0)
        return (0 if trans else 1) if node.input[1] == weight else (1 if trans else 0)
    if node.op_type == "MatMul":
        return rank - 1 if node.input[1] == weight else rank - 2
    return None


def output_axis(proto: onnx.ModelProto, wn: WeightNode) -> int:
    """The axis of ``wn``'s weight that indexes its output channels, where per-channel scales go (a transposed
    convolution's is 1, not 0: onnxruntime quantizes its bias with one scale per output channel); 0 where unknown."""
    node = next((n for n in proto.graph.node if n.name == wn.node), None)
    rank = next((len(t.dims) for t in proto.graph.initializer if t.name == wn.weight), 2)
    axis = None if node is None else _channel_axis(node, wn.weight, rank)
    return 0 if axis is None else axis


def store_int8(proto: onnx.ModelProto, nodes: Sequence[WeightNode]) -> dict[str, str]:
    """Store the float weights of ``nodes`` as int8, in place: per-channel symmetric scales (``max |w| / 127`` per
    output channel, as onnxruntime's per-channel weights), decoded by a ``Cast`` to float and a ``Mul`` by the
    scales. Both have constant inputs only, so onnxruntime folds them into a float32 weight when it loads the
    model: the layer computes in float32 at the float32 file's speed, from a weight stored in a quarter of the
    bytes. (A ``DequantizeLinear`` would say the same, but onnxruntime keeps it unfolded for its QDQ fusions, and a
    convolution whose weight is not a constant loses the NCHWc kernels: 0.93 against 0.63 ms at batch 64 on the
    LeNet-5 SBP slim model, where Cast and Mul ran at the float32 file's speed.)

    A weight is converted only when every node that reads it is in ``nodes`` and it is not a graph input. Returns
    node → the name of its int8 tensor."""
    from onnx import helper, numpy_helper

    by_node = {wn.node: wn for wn in nodes}
    inits = {t.name: t for t in proto.graph.initializer}
    graph_inputs = {i.name for i in proto.graph.input}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    taken = set(inits) | {o for n in proto.graph.node for o in n.output} | graph_inputs
    converted: dict[str, str] = {}  # weight → int8 tensor
    decoders: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    for wn in nodes:
        init = inits.get(wn.weight)
        users = readers.get(wn.weight, [])
        if (init is None or wn.weight in graph_inputs or wn.weight in converted
                or init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
                or not users or any(u.name not in by_node for u in users)):
            continue
        w = numpy_helper.to_array(init).astype(np.float64)
        axis = _channel_axis(users[0], wn.weight, w.ndim)
        if axis is None or len({_channel_axis(u, wn.weight, w.ndim) for u in users}) > 1:
            axis = None  # one scale for the tensor
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        peak = np.abs(w).max(axis=reduce, keepdims=True) if axis is not None else np.abs(w).max(keepdims=True)
        scale = np.where(peak > 0, peak / 127.0, 1.0)
        q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)

        def fresh(base: str) -> str:
            name, i = base, 0
            while name in taken:
                i += 1
                name = f"{base}_{i}"
            taken.add(name)
            return name

        q_name, s_name, f_name = fresh(wn.weight + "_int8"), fresh(wn.weight + "_int8_scale"), fresh(
            wn.weight + "_int8_float")
        added += [numpy_helper.from_array(q, q_name),
                  numpy_helper.from_array(scale.astype(numpy_helper.to_array(init).dtype), s_name)]
        decoders += [helper.make_node("Cast", [q_name], [f_name], name=fresh(q_name + "_Cast"), to=init.data_type),
                     helper.make_node("Mul", [f_name, s_name], [wn.weight], name=fresh(q_name + "_Mul"))]
        converted[wn.weight] = q_name
    if decoders:
        # one rebuild of each list instead of a removal (a linear search) per weight
        initializers = [t for t in proto.graph.initializer if t.name not in converted] + added
        del proto.graph.initializer[:]
        proto.graph.initializer.extend(initializers)
        kept = list(proto.graph.node)
        del proto.graph.node[:]
        proto.graph.node.extend([*decoders, *kept])
    return {wn.node: converted[wn.weight] for wn in nodes if wn.weight in converted}


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out: list[onnx.GraphProto] = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            out.append(attribute.g)
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            out.extend(attribute.graphs)
    return out


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """The names ``graph`` (a Loop's or an If's body, nested ones included) reads from the scopes around it."""
    local = {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | \
        {t.name for t in graph.initializer}
    reads = {name for n in graph.node for name in n.input if name and name not in local}
    for n in graph.node:
        for sub in _subgraphs(n):
            reads |= _outer_reads(sub) - local
    return reads


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Order ``graph``'s nodes topologically, in place, counting what a node's subgraphs read from the graph as its
    inputs; a graph in order keeps its order (each node goes as early as its inputs allow, ties in the given order).

    onnxruntime's static quantizer sorts the nodes by their own inputs alone: the dynamo exporter's EmbeddingBag, a
    Loop whose body gathers from a table that a Mul computes outside it, came back with the Mul after the Loop, and
    onnx's checker refused the file ("Nodes in a graph must be topologically sorted")."""
    import heapq

    nodes = list(graph.node)
    made = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    needs: list[set[int]] = []
    for i, node in enumerate(nodes):
        names = {name for name in node.input if name}
        for sub in _subgraphs(node):
            names |= _outer_reads(sub)
        needs.append({made[name] for name in names if name in made and made[name] != i})
    waiting = [len(n) for n in needs]
    users: list[list[int]] = [[] for _ in nodes]
    for i, deps in enumerate(needs):
        for d in deps:
            users[d].append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes) or order == list(range(len(nodes))):
        return  # a cycle (not for this function to judge: the checker will) or nothing to move
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)


def to_opset(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """``proto`` converted to ``opset`` of the default domain where ONNX's converter can (else unchanged:
    onnxruntime's quantizer then writes its com.microsoft Q/DQ for int4)."""
    from onnx import version_converter

    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current >= opset:
        return proto
    try:
        return _named(version_converter.convert_version(proto, opset))
    except Exception:  # the converter lacks an adapter for some op: keep the model's opset
        return proto


def splice_dynamic(static: onnx.ModelProto, dynamic: onnx.ModelProto, nodes: Sequence[str]) -> onnx.ModelProto:
    """``static`` with its LSTM nodes named in ``nodes`` replaced by ``dynamic``'s DynamicQuantizeLSTM nodes (and
    their int8 weights). onnxruntime's dynamic quantizer also rewrites every Gemm into MatMul + Add, which would
    undo the static quantizer's QDQ Gemms; only its LSTMs are taken."""
    by_name = {n.name: n for n in dynamic.graph.node}
    inits = {t.name: t for t in dynamic.graph.initializer}
    have = {t.name for t in static.graph.initializer}
    kept = []
    for node in static.graph.node:
        replacement = by_name.get(node.name + _DYNAMIC_SUFFIX) if node.name in nodes else None
        if replacement is None:
            kept.append(node)
            continue
        kept.append(replacement)
        for name in replacement.input:
            if name in inits and name not in have:
                static.graph.initializer.append(inits[name])
                have.add(name)
    del static.graph.node[:]
    static.graph.node.extend(kept)
    used = {i for n in static.graph.node for i in n.input} | {o.name for o in static.graph.output}
    unused = [t for t in static.graph.initializer if t.name not in used]  # the LSTMs' float weights
    for t in unused:
        static.graph.initializer.remove(t)
    domains = {o.domain for o in static.opset_import}
    static.opset_import.extend(o for o in dynamic.opset_import if o.domain not in domains)
    return static


def quantized_nodes(quantized: onnx.ModelProto, nodes: Sequence[WeightNode]) -> list[str]:
    """The weight nodes (of the float model, ``nodes``) whose weight in the ``quantized`` model comes through a
    DequantizeLinear instead of the float weight itself."""
    dequantized = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    by_name = {n.name: n for n in quantized.graph.node}
    out = []
    for wn in nodes:
        node = by_name.get(wn.node)
        inputs = list(node.input) if node is not None else []
        dynamic = by_name.get(wn.node + _DYNAMIC_SUFFIX)
        if (any(i in dequantized for i in inputs) and wn.weight not in inputs) or (
                dynamic is not None and dynamic.op_type.startswith("DynamicQuantize")):
            out.append(wn.node)
    return out


def compact_names(proto: onnx.ModelProto) -> dict[str, str]:
    """Rename, in place, every tensor inside the graph to a short name (``t0``, ``t1``, …; the graph's inputs and
    outputs keep theirs) and clear the doc strings; returns the renaming (old → new). The nodes keep their names
    (the module paths, which onnxruntime's profiler and ``prunedrop`` read). onnxruntime's QDQ quantizer gives every
    weight three derived tensors (``…_quantized``, ``…_scale``, ``…_zero_point``) and every activation more, each
    named after the module path: in a quantized ResNet-20 (Fashion-MNIST, 3× fewer FLOPs) the tensor names were
    27 kB of its 185 kB. Nothing computes with them; a model with subgraphs (If, Loop, Scan, whose bodies may name
    the outer graph's tensors) is left as it is."""
    g = proto.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        return {}
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    mapping: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in mapping:
            candidate = f"t{len(mapping)}"
            while candidate in keep:  # a graph input or output of the user's may be called t3
                candidate = "_" + candidate
            mapping[name] = candidate
        return mapping[name]

    for node in g.node:
        node.doc_string = ""
        node.input[:] = [short(x) for x in node.input]
        node.output[:] = [short(x) for x in node.output]
    for t in g.initializer:
        t.name = short(t.name)
        t.doc_string = ""
    for s in g.sparse_initializer:
        s.values.name = short(s.values.name)
        if s.indices.name:
            s.indices.name = short(s.indices.name)
    for v in g.value_info:
        v.name = short(v.name)
        v.doc_string = ""
    return mapping


def compact_size(path: str | Path) -> int:
    """Bytes of the ONNX file at ``path`` with its tensor names compacted (:func:`compact_names`), as a quantized
    file's are: what a quantized file's size is compared with."""
    proto = onnx.load(str(path))
    compact_names(proto)
    return proto.ByteSize()
