"""Quantized ONNX export: int8 everywhere, or int8 where the variational posterior allows it (``quantize``).

The quantizer is onnxruntime's own (:func:`onnxruntime.quantization.quantize_static`: QDQ format, per-channel
symmetric int8 weights, activation ranges calibrated (MinMax) on a few training batches; LSTMs through its
``quantize_dynamic``); prunedrop decides only *which* layers it may quantize and how their weights are stored,
checks the result with onnxruntime and writes it beside the float file. (Over 500 lines: the bit rule, the storage
choice, the accuracy revert and the speed check each change the same per-layer plan in turn; splitting them into
modules along those four steps is the next clean-up, not yet done.)

The bit rule (``quantize: bayes``, see docs/quantization.md). Each kept weight of a converted layer has a
posterior spread: sparse VD's ``w = θ + σ·ε`` (σ² = α·θ²), or a unit's multiplicative noise (log-normal SBP:
mean E[θ] and std E[θ]/SNR; group VD: mean 1, std √α), or both (``sbp_sparse_vd``). For a weight ``a·b`` with
independent ``a`` (per weight) and ``b`` (per unit), the folded weight is E[a]·E[b] and its variance
``E[a]²·Var b + Var a·(E[b]² + Var b)``. Per kept output unit u (one per-channel scale of the quantizer):

    s_u = sqrt(mean of the variances over u's kept weights)      (the posterior's own spread, rms over the row)
    Δ_u = sqrt(12)·k·s_u                                           (largest step with Δ²/12 ≤ (k·s_u)²)
    b_u = ceil(log2(r_u / Δ_u + 1)),  r_u = 2·max |w_u|             (the range a symmetric per-channel quantizer covers)

and the layer needs ``bits = the 90th percentile of b_u`` over its kept units (nearest rank): a few units with an
unusually sure posterior do not force the whole layer to float, but 90% of them get quantization noise within
their posterior spread. A layer needing ≤ 8 bits becomes int8, one needing more stays float32, and a layer with no
posterior (not converted, or a recurrent/attention/embedding layer) stays float32 under ``bayes``. A layer needing
≤ 4 bits gets int4 weights (opset 21) where they are smaller than its int8 weights as stored (dense or sparse).

Verification: the quantized file's metric is measured with onnxruntime on the validation and test data. If the
validation metric is outside the run's budget (``max_metric_drop`` from the original model), layers go back to
float32 one at a time, most sensitive first (sensitivity: the validation loss of quantizing that layer alone),
until it is within.

Speed (docs/quantization.md): integer kernels are not always faster (a narrow convolution runs slower in
onnxruntime's QLinearConv than in its float kernel), so the quantized model is timed against the float32 file on
this CPU, and layers whose reversal to float32 makes it faster (or while it is slower than the float32 file) go
back to float32, one per round.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from .atomic import atomic_write_bytes
from .errors import PrunedropError, describe

__all__ = [
    "QUANTIZE_MODES",
    "LayerBits",
    "cpu_instruction_sets",
    "evaluate_onnx",
    "posterior_bits",
    "posterior_moments",
    "quantize_model",
    "quantize_onnx",
    "quantized_path",
    "unit_bits",
    "weight_nodes",
]

QUANTIZE_MODES = ("none", "int8", "bayes")
MAX_INT_BITS = 8
MIN_INT_BITS = 4  # int4 storage (opset 21's DequantizeLinear) where the posterior allows it
SPEED_MARGIN = 0.05  # a relative latency difference below this is timing noise, not a faster model
UNIT_QUANTILE = 0.9
CALIBRATION_SAMPLES = 512
CALIBRATION_BATCH = 64
_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512f", "avx2")


def quantized_path(float_path: str | Path) -> Path:
    """``model.onnx`` → ``model-int8.onnx`` (beside it)."""
    path = Path(float_path)
    return path.with_name(f"{path.stem}-int8{path.suffix or '.onnx'}")


# ------------------------------------------------------------------------------------------------ the bit rule


def posterior_moments(layer: nn.Module, threshold: float | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(folded weight, posterior variance of each weight, keep mask), all weight-shaped, of a converted
    Linear/Conv layer pruned at ``threshold`` (the layer's own by default); None for a layer with no such
    posterior (recurrent, attention, embedding, or not variational)."""
    from .layers.group_vd import GroupVD
    from .layers.lognormal import LogNormal
    from .layers.sparse_vd import SparseVD

    if not isinstance(layer, (SparseVD, LogNormal, GroupVD)):
        return None
    with torch.no_grad():
        weight = layer.weight.detach().float()
        unit_shape = (-1, *([1] * (weight.dim() - 1)))
        if isinstance(layer, SparseVD):
            mean_a, var_a = weight, torch.exp(layer.log_alpha.detach().float()) * weight * weight
        else:
            mean_a, var_a = weight, torch.zeros_like(weight)
        if isinstance(layer, LogNormal):
            mean_b = layer.expected_theta().detach().float()
            var_b = (mean_b / layer.snr().detach().float()) ** 2
        elif isinstance(layer, GroupVD):
            mean_b = torch.ones(weight.shape[0])
            var_b = torch.exp(layer.log_alpha.detach().float())
        else:
            mean_b, var_b = torch.ones(weight.shape[0]), torch.zeros(weight.shape[0])
        mean_b, var_b = mean_b.reshape(unit_shape), var_b.reshape(unit_shape)
        keep = layer.keep_mask(threshold).detach()
        if keep.shape != weight.shape:
            keep = keep.reshape(unit_shape).expand_as(weight)
        folded = mean_a * mean_b
        var = mean_a * mean_a * var_b + var_a * (mean_b * mean_b + var_b)
        return folded * keep, var * keep, keep.bool()


def unit_bits(folded: torch.Tensor, var: torch.Tensor, keep: torch.Tensor, k: float = 1.0) -> np.ndarray:
    """Bits b_u that each kept output unit needs (module docstring); inf where the posterior has no spread."""
    rows = folded.shape[0]
    w = folded.reshape(rows, -1).abs().double()
    v = var.reshape(rows, -1).double()
    m = keep.reshape(rows, -1)
    counts = m.sum(dim=1)
    alive = counts > 0
    spread = torch.sqrt((v * m).sum(dim=1)[alive] / counts[alive])
    span = 2 * (w * m).amax(dim=1)[alive]
    step = math.sqrt(12.0) * k * spread
    with np.errstate(divide="ignore"):
        ratio = (span / step).numpy()
    bits = np.ceil(np.log2(ratio + 1.0))
    return np.where(step.numpy() > 0, np.maximum(bits, 1.0), np.inf)


@dataclass
class LayerBits:
    """The bit rule's outcome for one layer."""

    name: str
    bits: float
    """Bits the layer needs (the 90th percentile of its units' b_u); inf: a unit's posterior has no spread."""
    units: int
    """Kept output units that entered the rule."""
    median_spread: float
    """Median over the kept units of s_u (the posterior std, rms over the unit's kept weights)."""

    @property
    def precision(self) -> str:
        return "int8" if self.bits <= MAX_INT_BITS else "float32"


def posterior_bits(model: nn.Module, threshold: float | None = None, *, k: float = 1.0,
                   quantile: float = UNIT_QUANTILE) -> dict[str, LayerBits]:
    """Layer name → :class:`LayerBits` for every converted Linear/Conv layer of the variational ``model``."""
    from .convert import variational_layers

    out: dict[str, LayerBits] = {}
    for name, layer in variational_layers(model).items():
        moments = posterior_moments(layer, threshold)
        if moments is None:
            continue
        folded, var, keep = moments
        bits = unit_bits(folded, var, keep, k=k)
        if bits.size == 0:
            continue
        rows = folded.shape[0]
        m = keep.reshape(rows, -1)
        alive = m.sum(dim=1) > 0
        spread = torch.sqrt((var.reshape(rows, -1) * m).sum(dim=1)[alive] / m.sum(dim=1)[alive])
        # nearest-rank quantile: the smallest b with at least `quantile` of the units needing ≤ b
        ordered = np.sort(bits)
        needed = float(ordered[max(0, math.ceil(quantile * len(ordered)) - 1)])
        out[name] = LayerBits(name=name, bits=needed, units=int(len(ordered)),
                              median_spread=float(spread.median()))
    return out


# --------------------------------------------------------------------------------------------- the ONNX side


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
    # TorchScript names nodes by module scope, each scope its module's qualified name: "/layer1/layer1.0/conv1/Conv"
    # (the weight of a Conv that the exporter fused with its BatchNorm is an "onnx::Conv_12" constant)
    parts = node.name.strip("/").split("/")
    return parts[-2] if node.name.startswith("/") and len(parts) > 1 else None


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


def _load_dense(path: str | Path) -> onnx.ModelProto:
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


class _Batches:
    """An onnxruntime CalibrationDataReader over a list of input arrays."""

    def __init__(self, input_name: str, batches: Sequence[np.ndarray]) -> None:
        self._items = iter([{input_name: b} for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def calibration_batches(loader: Iterable[Any], samples: int = CALIBRATION_SAMPLES) -> list[np.ndarray]:
    """Up to ``samples`` inputs from ``loader`` (training batches), as arrays: float inputs as float32, integer
    ones (token ids) as they are."""
    out, seen = [], 0
    for x, _ in loader:
        array = x.detach().cpu().numpy()
        out.append(np.ascontiguousarray(array.astype(np.float32) if np.issubdtype(array.dtype, np.floating)
                                        else array))
        seen += len(x)
        if seen >= samples:
            break
    if not out:
        raise PrunedropError("quantization needs training samples to calibrate the activations; the data has none")
    return out


@dataclass
class QuantizedFile:
    path: Path
    num_bytes: int
    quantized: list[str]
    """Weight nodes whose weight is integer (fed by a DequantizeLinear)."""
    float_nodes: list[str]
    """Weight nodes that stayed float32 (excluded, or an operator onnxruntime does not quantize)."""
    sparse_initializers: list[str]
    storage: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Quantized weight node → how its weight is stored: ``type`` (int8 or int4), ``stored`` (dense or sparse),
    ``bytes`` as stored, ``dense_bytes`` and (int8 with zeros) ``sparse_bytes``, all serialized protobuf bytes."""


_SPARSE_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                 onnx.TensorProto.DOUBLE)
DYNAMIC_OPS = ("LSTM",)  # operators quantized by onnxruntime's dynamic quantizer (its static one has none)
_DYNAMIC_SUFFIX = "_quant"  # onnxruntime names DynamicQuantizeLSTM after the LSTM node it replaces
INT4_OPSET = 21  # the opset whose DequantizeLinear takes int4 (below it onnxruntime uses its com.microsoft one)


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


def _storage(proto: onnx.ModelProto, nodes: Sequence[WeightNode]) -> dict[str, dict[str, Any]]:
    """Each quantized weight's storage options (before sparse conversion): its type and the bytes dense and, for
    int8 with zeros, as sparse constants (what :func:`prunedrop.export.sparsify_initializers` would write)."""
    from .export.sparse import sparse_constant

    inits = {t.name: t for t in proto.graph.initializer}
    names = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8", onnx.TensorProto.INT4: "int4",
             onnx.TensorProto.UINT4: "uint4"}
    tensors = {node: [tensor] for node, tensor in _weight_inputs(proto, nodes).items()}
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


def _to_opset(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
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


def _splice_dynamic(static: onnx.ModelProto, dynamic: onnx.ModelProto, nodes: Sequence[str]) -> onnx.ModelProto:
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


def quantize_onnx(float_path: str | Path, out_path: str | Path, calibration: Sequence[np.ndarray], *,
                  exclude: Sequence[str] = (), int4: Sequence[str] = (), cache: str | Path | None = None,
                  sparse: bool | str = "auto") -> QuantizedFile:
    """Quantize the float ONNX file with onnxruntime (QDQ, per-channel int8 weights, static int8 activations
    calibrated on ``calibration``), leaving the nodes named in ``exclude`` float; write ``out_path`` atomically.

    ``int4``: weight nodes whose weights are stored as 4-bit integers instead (onnxruntime's per-tensor quant
    override; the model is moved to opset 21 for them where ONNX's converter can). ``cache``: a calibration cache
    file (written by the first call, reused by later ones on the same model). ``sparse``: store int8 weights, and
    the float weights of layers left float32, holding zeros as sparse constants where that is smaller
    (``"auto"``).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .export import sparsify_initializers

    proto = _load_dense(float_path)
    nodes = weight_nodes(proto)
    int4 = [n for n in int4 if n not in set(exclude)]
    overrides = {wn.weight: [{"quant_type": QuantType.QInt4, "axis": 0}] for wn in nodes if wn.node in int4}
    source_proto = _to_opset(proto, INT4_OPSET) if overrides else proto
    with tempfile.TemporaryDirectory(prefix="prunedrop-quant-") as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(source_proto, str(source))
        input_name = proto.graph.input[0].name
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer warns through the root logger ("consider pre-processing")
        try:
            quantize_static(str(source), str(target), _Batches(input_name, calibration),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                            calibrate_method=CalibrationMethod.MinMax,
                            calibration_cache_path=None if cache is None else str(cache),
                            extra_options={"TensorQuantOverrides": overrides} if overrides else None)
        except Exception as e:  # onnxruntime's quantizer raises many types; all mean "cannot quantize"
            raise PrunedropError(f"onnxruntime cannot quantize {Path(float_path).name}: {describe(e)}") from e
        finally:
            root.setLevel(level)
        dynamic = [wn.node for wn in nodes if wn.op in DYNAMIC_OPS and wn.node not in set(exclude)]
        if dynamic:
            from onnxruntime.quantization import quantize_dynamic

            # the static (QDQ) quantizer has no integer LSTM; onnxruntime's dynamic one has (DynamicQuantizeLSTM:
            # int8 weights, activations quantized at run time)
            root.setLevel(logging.ERROR)
            try:
                quantize_dynamic(str(target), str(Path(tmp) / "dynamic.onnx"), op_types_to_quantize=list(DYNAMIC_OPS),
                                 per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude))
            except Exception as e:  # as above: every failure means "cannot quantize"
                raise PrunedropError(f"onnxruntime cannot quantize the LSTM of {Path(float_path).name}: "
                                     f"{describe(e)}") from e
            finally:
                root.setLevel(level)
            quantized = _splice_dynamic(onnx.load(str(target)), onnx.load(str(Path(tmp) / "dynamic.onnx")), dynamic)
        else:
            quantized = onnx.load(str(target))
    int8 = quantized_nodes(quantized, nodes)
    kept_float = [wn.node for wn in nodes if wn.node not in int8]
    storage = _storage(quantized, nodes)
    # int8 weights, and the float weights of layers left float32 (densified above for the quantizer), go sparse
    # where that is smaller, as in the float file
    converted = [] if sparse is False else sparsify_initializers(quantized, sparse, dtypes=_SPARSE_TYPES)
    for row in storage.values():
        sizes = row.pop("per_tensor")
        stored = [t in converted for t in row["tensors"]]
        row["stored"] = "sparse" if all(stored) else "dense" if not any(stored) else "partly sparse"
        row["bytes"] = sum(sizes[t][1] if t in converted else sizes[t][0] for t in row["tensors"])
    onnx.checker.check_model(quantized, full_check=True)
    data = quantized.SerializeToString()
    atomic_write_bytes(Path(out_path), data)
    return QuantizedFile(path=Path(out_path), num_bytes=len(data), quantized=int8, float_nodes=kept_float,
                         sparse_initializers=converted, storage=storage)


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


def evaluate_onnx(path: str | Path, loader: Iterable[Any], *, loss: str = "cross_entropy") -> float:
    """The metric of an ONNX file run by onnxruntime over ``loader`` (accuracy in %, or the mean squared error),
    computed as :func:`prunedrop.train.evaluate` computes it for a torch model."""
    from .export import feed_session, open_session

    session = open_session(path)
    total, correct, sq_err, values = 0, 0, 0.0, 0
    for x, y in loader:
        out = feed_session(session, path, x)[0]
        target = y.detach().cpu().numpy()
        if loss == "cross_entropy":
            correct += int((out.argmax(axis=1) == target).sum())
        else:
            sq_err += float(((out.astype(np.float64) - target.astype(np.float64).reshape(out.shape)) ** 2).sum())
            values += out.size
        total += len(target)
    if total == 0:
        raise PrunedropError("the evaluation data is empty")
    return 100.0 * correct / total if loss == "cross_entropy" else sq_err / max(values, 1)


def cpu_instruction_sets(cpuinfo: str | None = None) -> list[str]:
    """The int8-relevant instruction sets this CPU has (VNNI, AMX, AVX-512, AVX2), from /proc/cpuinfo."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return [f for f in _CPU_FLAGS if f in flags]


# ------------------------------------------------------------------------------------------- the whole step


Timer = Callable[[Mapping[str, Path]], dict[str, float]]
"""Times ONNX files (name → path) and returns each one's latency in ms (:func:`time_models` on this CPU)."""


def time_models(paths: Mapping[str, str | Path], example: torch.Tensor, *, batch_size: int, threads: int,
                runs: int = 30, warmup: int = 3) -> dict[str, float]:
    """Median onnxruntime CPU latency (ms) of each ONNX file at ``batch_size``, the files taking turns in one
    process (:func:`prunedrop.report.latency.measure_latency`)."""
    from .report.latency import measure_latency

    raw = measure_latency(paths, example, batch_sizes=(batch_size,), threads=threads, runs=runs, warmup=warmup)
    return {r["model"]: float(r["median_ms"]) for r in raw["results"]}


def quantize_model(float_path: str | Path, out_path: str | Path, *, mode: str, data: Any, recipe: Any,
                   metric_before: float | None, bits: dict[str, LayerBits] | None = None,
                   compare: dict[str, str | Path] | None = None, speed_check: bool | None = None,
                   timer: Timer | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Quantize ``float_path`` as ``mode`` says (``int8`` or ``bayes`` with the layers' ``bits``), measure it with
    onnxruntime on the validation and test data, revert layers to float32 (most sensitive first) until the
    validation metric is within ``recipe.max_metric_drop`` of ``metric_before`` (the original model's), store each
    layer's weights in the smallest form allowed (int8 dense or sparse; int4 under ``bayes`` where the posterior
    allows 4 bits), revert layers whose integer form runs slower than float32 on this CPU (``speed_check``; None:
    where ``recipe.latency_runs`` allows timing at all; timed by ``timer``, by default :func:`time_models` with
    ``recipe.latency_runs`` runs at the largest of ``recipe.latency_batch_sizes``), and
    write it to ``out_path``. Returns the report's ``quantization`` section (its ``file`` is None when every layer
    had to stay float32, and nothing is written then; ``none_reason`` says why). ``compare``: other ONNX files
    (name → path, e.g. the dense and the pruned float32 ones) whose bytes and metrics go into the section's
    ``files`` beside the quantized file's."""
    from .autopilot import metric_drop
    from .sweep import within_budget

    if mode not in ("int8", "bayes"):
        raise ValueError(f"quantize_model: mode must be int8 or bayes, not {mode!r}")
    loss = recipe.loss
    nodes = weight_nodes(_load_dense(float_path))
    plan: dict[str, str] = {}  # node → why it stays float32 (absent: quantize it)
    why: dict[str, str] = {}  # node → the kind of reason: posterior, operator, accuracy, speed
    layers: list[dict[str, Any]] = []
    four_bit: list[str] = []  # nodes whose posterior allows 4 bits (bayes)
    for wn in nodes:
        row: dict[str, Any] = {"node": wn.node, "op": wn.op, "layer": wn.module}
        lb = (bits or {}).get(wn.module or "")
        if lb is not None:
            row.update(bits_needed=lb.bits if math.isfinite(lb.bits) else None, units=lb.units,
                       median_spread=lb.median_spread)
        if mode == "bayes" and lb is None:
            plan[wn.node], why[wn.node] = "no posterior (not converted, or not a Linear/Conv layer)", "posterior"
        elif mode == "bayes" and lb is not None and lb.precision == "float32":
            plan[wn.node] = f"the posterior asks for {int(lb.bits) if math.isfinite(lb.bits) else 'unbounded'} bits"
            why[wn.node] = "posterior"
        elif mode == "bayes" and lb is not None and lb.bits <= MIN_INT_BITS:
            four_bit.append(wn.node)
        layers.append(row)
    val_loader = data.loader("val", recipe.eval_batch_size)
    calibration = calibration_batches(data.loader("train", CALIBRATION_BATCH, shuffle=True, seed=recipe.seed))
    higher = loss == "cross_entropy"

    def original_budget(metric: float) -> bool:
        return metric_before is None or recipe.max_metric_drop is None or within_budget(
            metric, metric_before=metric_before, max_metric_drop=recipe.max_metric_drop, higher_is_better=higher)

    # where the pruned float32 model is itself outside the budget (a run that kept the recipe's threshold when
    # none was within it), quantizing may cost nothing more: the reference becomes the float32 model's metric
    float_metric = evaluate_onnx(float_path, val_loader, loss=loss) \
        if metric_before is not None and recipe.max_metric_drop is not None else None
    float_outside = float_metric is not None and not original_budget(float_metric)
    if float_outside:
        log(f"the pruned float32 model is outside the budget already (validation {_metric_text(loss)} "
            f"{float_metric:.4g}); the quantized one may be no worse than it")

    def in_budget(metric: float) -> bool:
        if float_outside:
            return metric >= float_metric if higher else metric <= float_metric
        return original_budget(metric)

    reverted: list[dict[str, Any]] = []
    sensitivity: dict[str, float] = {}
    storage_note: str | None = None
    speed: dict[str, Any] | None = None
    int4: list[str] = []
    with tempfile.TemporaryDirectory(prefix="prunedrop-quant-") as tmp:
        cache = Path(tmp) / "calibration.json"
        trial = Path(tmp) / "trial.onnx"

        def attempt(exclude: Iterable[str], path: Path) -> tuple[QuantizedFile, float]:
            result = quantize_onnx(float_path, path, calibration, exclude=sorted(set(exclude)), cache=cache)
            return result, evaluate_onnx(path, val_loader, loss=loss)

        result, metric = attempt(plan, trial)
        unsupported = [n for n in result.float_nodes if n not in plan]
        for name in unsupported:
            plan[name], why[name] = "onnxruntime does not quantize this operator", "operator"
        quantizable = [n for n in result.quantized]
        if not in_budget(metric) and quantizable:
            log(f"quantized: validation {_metric_text(loss)} {metric:.4g} is outside the budget; measuring each "
                "layer's sensitivity")
            others = [n.node for n in nodes]
            for name in quantizable:  # this layer alone quantized
                _, alone = attempt([o for o in others if o != name], Path(tmp) / "alone.onnx")
                sensitivity[name] = metric_drop(metric_before if metric_before is not None else alone, alone,
                                                loss=loss)
            for name in sorted(quantizable, key=lambda n: -sensitivity[n]):
                plan[name] = "reverted: the quantized model was outside the accuracy budget"
                why[name] = "accuracy"
                reverted.append({"node": name, "sensitivity": sensitivity[name]})
                left = [n for n in quantizable if n not in plan]
                if not left:
                    break
                result, metric = attempt(plan, trial)
                log(f"reverted {_shown(name)} to float32: validation {_metric_text(loss)} {metric:.4g}")
                if in_budget(metric):
                    break

        # storage: int4 (dense, 2 per byte) where the posterior allows 4 bits and that is smaller than the int8
        # weight as stored (dense, or sparse where that is smaller); kept only if the file stays within the budget
        candidates = [n for n in four_bit if n not in plan]
        storage8 = result.storage if any(n not in plan for n in quantizable) else {}
        if candidates:
            with_int4 = quantize_onnx(float_path, Path(tmp) / "int4.onnx", calibration, exclude=sorted(plan),
                                      int4=candidates, cache=cache)
            int4 = [n for n in candidates if n in with_int4.storage and n in storage8
                    and with_int4.storage[n]["bytes"] < storage8[n]["bytes"]]
            storage_options = {n: {"int4_dense_bytes": with_int4.storage[n]["bytes"]}
                               for n in candidates if n in with_int4.storage}
            if int4:
                trial4 = quantize_onnx(float_path, trial, calibration, exclude=sorted(plan), int4=int4, cache=cache)
                metric4 = evaluate_onnx(trial, val_loader, loss=loss)
                if in_budget(metric4):
                    log(f"int4 weights for {', '.join(_shown(n) for n in int4)} (smaller than their int8 form): "
                        f"validation {_metric_text(loss)} {metric4:.4g}")
                    result = trial4
                else:
                    # together they leave the budget: add them one at a time, the largest saving first, keeping
                    # each that leaves the file within the budget
                    tried, int4 = int4, []
                    saving = {n: storage8[n]["bytes"] - with_int4.storage[n]["bytes"] for n in tried}
                    for name in sorted(tried, key=lambda n: -saving[n]):
                        step = quantize_onnx(float_path, trial, calibration, exclude=sorted(plan),
                                             int4=[*int4, name], cache=cache)
                        if in_budget(evaluate_onnx(trial, val_loader, loss=loss)):
                            int4.append(name)
                            result = step
                    dropped = [n for n in tried if n not in int4]
                    storage_note = (f"int4 weights for {', '.join(_shown(n) for n in tried)} together left the "
                                    f"budget (validation {_metric_text(loss)} {metric4:.4g}); one at a time, "
                                    + (f"{', '.join(_shown(n) for n in int4)} stayed int4 and " if int4 else "")
                                    + f"{', '.join(_shown(n) for n in dropped)} went back to int8")
                    log(storage_note)
        else:
            storage_options = {}

        if speed_check is None:
            speed_check = timer is not None or recipe.latency_runs > 0
            if not speed_check:
                speed = {"checked": False, "why": "latency_runs is 0: nothing is timed"}
        if speed_check and any(n.node not in plan for n in nodes):
            if timer is None:
                example = torch.from_numpy(calibration[0])
                batch, threads = max(recipe.latency_batch_sizes), recipe.latency_threads
                runs = max(recipe.latency_runs, 2)

                def timer(paths: Mapping[str, Path]) -> dict[str, float]:
                    return time_models(paths, example, batch_size=batch, threads=threads, runs=runs)

                setting = {"batch_size": batch, "threads": threads, "runs": runs}
            else:
                setting = {"timer": getattr(timer, "__name__", type(timer).__name__)}
            speed = {"checked": True, **setting,
                     **_speed_reverts(float_path, nodes, plan, why, int4, calibration, cache, Path(tmp), timer, log)}
        final = None
        if any(n.node not in plan for n in nodes):
            final = quantize_onnx(float_path, out_path, calibration, exclude=sorted(plan),
                                  int4=[n for n in int4 if n not in plan], cache=cache)
    rows = []
    for row in layers:
        node = row["node"]
        stored = (final.storage.get(node) if final is not None else None) or {}
        row["precision"] = "float32" if node in plan or final is None or node not in final.quantized else \
            stored.get("type", "int8")
        if node in plan:
            row["reason"] = plan[node]
            row["float_because"] = why[node]
        if node in sensitivity:
            row["sensitivity"] = sensitivity[node]
        if stored:
            options = {"int8_dense_bytes": storage8.get(node, {}).get("dense_bytes"),
                       "int8_sparse_bytes": storage8.get(node, {}).get("sparse_bytes"),
                       **storage_options.get(node, {})}
            row["storage"] = {"form": f"{stored['type']} {stored['stored']}", "bytes": stored["bytes"],
                              "options": {k: v for k, v in options.items() if v is not None}}
            if speed is not None and node in speed.get("int4_to_int8", []):
                row["storage"]["why"] = "int4 was smaller, but the model ran faster with this layer int8"
        rows.append(row)
    # TorchScript's node names start with "/" ("/fc1/Gemm"), which reads as an absolute path in a report
    for row in rows:
        row["node"] = _shown(row["node"])
    reverted = [{**r, "node": _shown(r["node"])} for r in reverted]
    if speed is not None and speed["checked"]:
        speed["reverted"] = [_shown(n) for n in speed["reverted"]]
        speed["int4_to_int8"] = [_shown(n) for n in speed["int4_to_int8"]]
        for r in speed["rounds"]:
            r["candidates_ms"] = {_shown(n): v for n, v in r["candidates_ms"].items()}
            if r.get("changed"):
                r["changed"]["node"] = _shown(r["changed"]["node"])
    reasons = sorted({why[n] for n in plan})
    section: dict[str, Any] = {
        "mode": mode,
        "rule": {"k": 1.0, "unit_quantile": UNIT_QUANTILE, "max_int_bits": MAX_INT_BITS,
                 "int4_bits": MIN_INT_BITS} if mode == "bayes" else None,
        "format": "onnxruntime quantize_static: QDQ, per-channel symmetric int8 weights (int4 where the posterior "
                  "allows 4 bits and that is smaller), int8 activations "
                  f"calibrated (MinMax) on {sum(len(b) for b in calibration)} training samples; LSTM: onnxruntime "
                  "quantize_dynamic (DynamicQuantizeLSTM, per-channel int8 weights)",
        "layers": rows,
        "unsupported": [{"node": _shown(n), "op": next(w.op for w in nodes if w.node == n)} for n in unsupported],
        "reverted": reverted,
        "budget_reference": None if float_metric is None else (
            "the pruned float32 model (outside the budget already)" if float_outside else "the original model"),
        "speed": speed,
        "storage_note": storage_note,
        "file": None if final is None else Path(out_path).name,
        "bytes": None if final is None else final.num_bytes,
        "sparse_initializers": [] if final is None else final.sparse_initializers,
        "cpu_instruction_sets": cpu_instruction_sets(),
    }
    if final is None:
        section["none_reason"] = "every layer stayed float32 (" + ", ".join(_WHY[r] for r in reasons) + ")" \
            if reasons else "the model has no Linear/Conv-like weight layer to quantize"
        log(f"quantization: {section['none_reason']}; no quantized file written")
        return section
    test_loader = data.loader("test", recipe.eval_batch_size) if data.test is not None else None

    def measured(path: str | Path) -> dict[str, Any]:
        out = {"bytes": Path(path).stat().st_size, "val": evaluate_onnx(path, val_loader, loss=loss)}
        if test_loader is not None:
            out["test"] = evaluate_onnx(path, test_loader, loss=loss)
        return out

    files = {name: measured(path) for name, path in (compare or {}).items()}
    files["quantized"] = measured(out_path)
    metrics = {k: v for k, v in files["quantized"].items() if k != "bytes"}
    section["files"] = files
    section["metric"] = metrics
    section["within_budget"] = in_budget(metrics["val"])
    kept = [r["node"] for r in rows if r["precision"] != "float32"]
    slow = [r["node"] for r in rows if r.get("float_because") == "speed"]
    log(f"quantized {len(kept)} of {len(rows)} layer(s) ({mode}): {Path(out_path).name} "
        f"{final.num_bytes:,} bytes, validation {_metric_text(loss)} {metrics['val']:.4g} (onnxruntime)"
        + (f"; {len(unsupported)} stay float32 as onnxruntime does not quantize their operator: "
           + ", ".join(f"{_shown(n)} ({next(w.op for w in nodes if w.node == n)})" for n in unsupported)
           if unsupported else "")
        + (f"; {len(slow)} stay float32 as their int8 form ran slower here: {', '.join(slow)}" if slow else ""))
    return section


_WHY = {"posterior": "the posterior asks for more than 8 bits or has none",
        "operator": "onnxruntime does not quantize the operator",
        "accuracy": "outside the accuracy budget",
        "speed": "the int8 form ran slower than float32 on this CPU"}


def _speed_reverts(float_path: str | Path, nodes: Sequence[WeightNode], plan: dict[str, str], why: dict[str, str],
                   int4: list[str], calibration: Sequence[np.ndarray], cache: Path, tmp: Path, timer: Timer,
                   log: Callable[[str], None]) -> dict[str, Any]:
    """Make the quantized model no slower than the float32 file, one change per round: a quantized layer back to
    float32, or an int4 layer to int8 (int4 weights are not run by onnxruntime's integer kernels).

    Each round times, taking turns: the float32 file, the quantized model as planned, and one model per possible
    change. The change giving the fastest model is made when that model is faster than the planned one by more
    than ``SPEED_MARGIN`` (against timing noise), or when the planned one is slower than the float32 file by more
    than that. The last round therefore measured a planned model no slower than the float32 file (within the
    margin). Updates ``plan``/``why`` (layers gone float32) and ``int4`` (layers gone int8) in place; returns the
    rounds."""
    rounds: list[dict[str, Any]] = []
    done: list[str] = []
    to_int8: list[str] = []
    while True:
        current = [n.node for n in nodes if n.node not in plan]
        if not current:
            break
        planned = tmp / "speed-planned.onnx"
        quantize_onnx(float_path, planned, calibration, exclude=sorted(plan), int4=int4, cache=cache)
        paths: dict[str, Path] = {"float32": Path(float_path), "quantized": planned}
        changes: dict[str, tuple[str, str]] = {}  # timing key → (node, "float32" | "int8")
        for i, name in enumerate(current):
            key = f"{name} → float32"
            changes[key] = (name, "float32")
            if len(current) == 1:
                paths[key] = Path(float_path)  # reverting the last layer leaves the float32 model
            else:
                paths[key] = tmp / f"speed-float-{i}.onnx"
                quantize_onnx(float_path, paths[key], calibration, exclude=sorted({*plan, name}), int4=int4,
                              cache=cache)
            if name in int4:
                key = f"{name} → int8"
                changes[key], paths[key] = (name, "int8"), tmp / f"speed-int8-{i}.onnx"
                quantize_onnx(float_path, paths[key], calibration, exclude=sorted(plan),
                              int4=[n for n in int4 if n != name], cache=cache)
        times = timer(paths)
        float_ms, planned_ms = times["float32"], times["quantized"]
        best = min(changes, key=lambda k: times[k])
        slower = planned_ms > float_ms * (1 + SPEED_MARGIN)
        helps = times[best] < planned_ms * (1 - SPEED_MARGIN)
        entry: dict[str, Any] = {"float32_ms": float_ms, "quantized_ms": planned_ms,
                                 "candidates_ms": {k: times[k] for k in changes}}
        rounds.append(entry)
        if not (slower or helps):
            break
        node, target = changes[best]
        entry["changed"] = {"node": node, "to": target}
        log(f"{_shown(node)} to {target} for speed: {planned_ms:.3g} ms → {times[best]:.3g} ms "
            f"(float32 file {float_ms:.3g} ms)")
        if target == "int8":
            int4.remove(node)
            to_int8.append(node)
            continue
        plan[node] = (f"speed: its integer form ran slower on this CPU ({planned_ms:.3g} ms with it quantized, "
                      f"{times[best]:.3g} ms with it float32; the float32 file {float_ms:.3g} ms)" if helps else
                      f"speed: the quantized model ran slower than the float32 file on this CPU ({planned_ms:.3g} "
                      f"against {float_ms:.3g} ms), and of the changes tried, this layer as float32 ran fastest "
                      f"({times[best]:.3g} ms)")
        why[node] = "speed"
        done.append(node)
    return {"margin": SPEED_MARGIN, "rounds": rounds, "reverted": done, "int4_to_int8": to_int8}


def _shown(node: str) -> str:
    """An ONNX node name as the report shows it: without TorchScript's leading "/"."""
    return node.lstrip("/") or node


def _metric_text(loss: str) -> str:
    return "accuracy" if loss == "cross_entropy" else "mse"
