"""onnxruntime's own quantizer run on the float ONNX file: the calibration batches (a few training samples) and
:func:`quantize_onnx` (:func:`onnxruntime.quantization.quantize_static`: QDQ format, per-channel symmetric int8 or
int4 weights, activation ranges calibrated (MinMax); LSTMs through its ``quantize_dynamic``), which quantizes the
layers it is not told to leave float32 and the operators between them, with the activation type this CPU runs
fastest, and writes the quantized file, its weights stored sparse where that is smaller.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..atomic import atomic_write_bytes
from ..errors import PrunedropError, describe
from .graph import (
    carriers,
    compact_names,
    load_dense,
    output_axis,
    quantized_nodes,
    sort_nodes,
    splice_dynamic,
    store_int8,
    to_opset,
    weight_nodes,
    weight_storage,
)

CALIBRATION_SAMPLES = 512
CALIBRATION_BATCH = 64

_SPARSE_TYPES = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                 onnx.TensorProto.DOUBLE)
DYNAMIC_OPS = ("LSTM",)  # operators quantized by onnxruntime's dynamic quantizer (its static one has none)
INT4_OPSET = 21  # the opset whose DequantizeLinear takes int4 (below it onnxruntime uses its com.microsoft one)


_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512f", "avx2")
#: instruction sets whose int8 dot product multiplies unsigned activations by signed weights (vpdpbusd)
_VNNI = ("avx512_vnni", "avx_vnni")


def cpu_instruction_sets(cpuinfo: str | None = None) -> list[str]:
    """The int8-relevant instruction sets this CPU has (VNNI, AMX, AVX-512, AVX2), from /proc/cpuinfo."""
    if cpuinfo is None:
        return list(_this_cpu())
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return [f for f in _CPU_FLAGS if f in flags]


@functools.cache
def _this_cpu() -> tuple[str, ...]:
    """This CPU's sets, read once: every quantize_onnx call asks (one per speed-check candidate)."""
    try:
        return tuple(cpu_instruction_sets(Path("/proc/cpuinfo").read_text()))
    except OSError:
        return ()


def activation_type(instruction_sets: Sequence[str] | None = None) -> str:
    """The integer type of the quantized activations for this CPU: ``uint8`` where it has VNNI, whose int8 dot
    product multiplies unsigned by signed bytes, so that onnxruntime's u8s8 kernels run natively; ``int8``
    (onnxruntime's default, s8s8) elsewhere. Measured on a VNNI CPU: a dense ResNet-18 (3×32×32, batch 64) ran
    20.4 ms as u8s8, 75 ms as s8s8 and 30 ms as float32, at the same accuracy (benchmarks/quantize_activations.py).
    Without VNNI both go through AVX2's vpmaddubsw, whose 16-bit sums saturate: :func:`weight_bits`."""
    return "uint8" if _has_vnni(instruction_sets) else "int8"


def weight_bits(instruction_sets: Sequence[str] | None = None) -> int:
    """The bits an int8 weight keeps on this CPU: 8 where it has VNNI (a byte product summed in 32 bits), 7 elsewhere
    (onnxruntime's ``reduce_range``). Without VNNI, onnxruntime multiplies bytes with AVX2's vpmaddubsw, which adds
    two byte products in 16 bits: 255·127·2 overflows, 255·63·2 does not. Measured on an AMD EPYC (AVX2, no VNNI): a
    tiny LSTM classifier's quantized head (one Gemm) moved the logits by up to 0.28 with 8-bit weights, as u8s8 and
    as s8s8 alike, and by 0.003 with 7-bit ones (0.002 with the same 8-bit QDQ file computed in float), its agreement
    with the float model 56% → 97% (``tests/test_quantize.py``)."""
    return 8 if _has_vnni(instruction_sets) else 7


def _has_vnni(instruction_sets: Sequence[str] | None) -> bool:
    """Whether ``instruction_sets`` (this CPU's when None) hold a VNNI set."""
    sets = cpu_instruction_sets() if instruction_sets is None else instruction_sets
    return any(s in _VNNI for s in sets)


def quantized_path(float_path: str | Path) -> Path:
    """``model.onnx`` → ``model-int8.onnx`` (beside it)."""
    path = Path(float_path)
    return path.with_name(f"{path.stem}-int8{path.suffix or '.onnx'}")


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
    int8_weights: list[str] = field(default_factory=list)
    """Float32 nodes (in ``float_nodes``) whose weights are stored as int8 and decoded when the model loads
    (:func:`~prunedrop.quantize.graph.store_int8`); their rows are in ``storage`` too."""


def quantize_onnx(float_path: str | Path, out_path: str | Path, calibration: Sequence[np.ndarray], *,
                  exclude: Sequence[str] = (), int4: Sequence[str] = (), cache: str | Path | None = None,
                  sparse: bool | str = "auto", activations: str | None = None,
                  int8_weights: Sequence[str] = (), bits: int | None = None) -> QuantizedFile:
    """Quantize the float ONNX file with onnxruntime (QDQ, per-channel int8 weights, static 8-bit activations
    calibrated on ``calibration``), leaving the nodes named in ``exclude`` float; write ``out_path`` atomically.

    ``int4``: weight nodes whose weights are stored as 4-bit integers instead (onnxruntime's per-tensor quant
    override; the model is moved to opset 21 for them where ONNX's converter can). ``cache``: a calibration cache
    file (written by the first call, reused by later ones on the same model). ``sparse``: store int8 weights, and
    the float weights of layers left float32, holding zeros as sparse constants where that is smaller
    (``"auto"``). ``activations``: ``uint8`` or ``int8``; None: :func:`activation_type` for this CPU. ``bits``: 8, or
    7 (onnxruntime's ``reduce_range``) for the int8 weights; None: :func:`weight_bits` for this CPU.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from ..export import sparsify_initializers

    proto = load_dense(float_path)
    # short tensor names first (the nodes keep theirs): onnxruntime names every tensor it adds after the tensor it
    # quantizes, and long names were a sixth of a quantized ResNet-20's file (graph.compact_names)
    compact_names(proto)
    nodes = weight_nodes(proto)
    excluded = set(exclude)
    int4 = [n for n in int4 if n not in excluded]
    # int4 weights are decoded to float (DequantizeLinear, then a float operator): no integer arithmetic to
    # saturate, so they keep their full range [-8, 7] where int8 weights keep 7 bits; with the run-wide
    # reduce_range they would get [-4, 3], 3 bits (a LeNet-5 SBP conv1 at 4 bits asked lost 3.7 points so)
    overrides = {wn.weight: [{"quant_type": QuantType.QInt4, "axis": output_axis(proto, wn), "reduce_range": False}]
                 for wn in nodes if wn.node in int4}
    source_proto = to_opset(proto, INT4_OPSET) if overrides else proto
    with tempfile.TemporaryDirectory(prefix="prunedrop-quant-") as tmp:
        source, target = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save(source_proto, str(source))
        input_name = proto.graph.input[0].name
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer warns through the root logger ("consider pre-processing")
        # the layers to quantize and the operators between them (graph.carriers), nothing else: onnxruntime would
        # otherwise quantize every operator it knows, excluded layers or not
        act = QuantType.QUInt8 if (activations or activation_type()) == "uint8" else QuantType.QInt8
        reduce_range = (bits or weight_bits()) < 8
        static = [wn.node for wn in nodes if wn.node not in excluded and wn.op not in DYNAMIC_OPS]
        chosen = [*static, *carriers(proto, static)]
        try:
            # onnxruntime computes a scale and zero point for every tensor it calibrated, quantized or not, and
            # numpy warned on the terminal for one whose range is infinite (attention scores plus a −inf mask),
            # which stays float (graph.carriers)
            if chosen:
                with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                    quantize_static(str(source), str(target), _Batches(input_name, calibration),
                                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=act,
                                    weight_type=QuantType.QInt8, nodes_to_quantize=chosen,
                                    nodes_to_exclude=list(exclude), calibrate_method=CalibrationMethod.MinMax,
                                    calibration_cache_path=None if cache is None else str(cache),
                                    reduce_range=reduce_range,
                                    extra_options={"TensorQuantOverrides": overrides} if overrides else None)
            else:  # (an empty nodes_to_quantize would mean "every node" to onnxruntime)
                onnx.save(source_proto, str(target))
        except Exception as e:  # onnxruntime's quantizer raises many types; all mean "cannot quantize"
            raise PrunedropError(f"onnxruntime cannot quantize {Path(float_path).name}: {describe(e)}") from e
        finally:
            root.setLevel(level)
        dynamic = [wn.node for wn in nodes if wn.op in DYNAMIC_OPS and wn.node not in excluded]
        if dynamic:
            from onnxruntime.quantization import quantize_dynamic

            # the static (QDQ) quantizer has no integer LSTM; onnxruntime's dynamic one has (DynamicQuantizeLSTM:
            # int8 weights, activations quantized at run time)
            root.setLevel(logging.ERROR)
            try:
                quantize_dynamic(str(target), str(Path(tmp) / "dynamic.onnx"), op_types_to_quantize=list(DYNAMIC_OPS),
                                 per_channel=True, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                                 reduce_range=reduce_range)
            except Exception as e:  # as above: every failure means "cannot quantize"
                raise PrunedropError(f"onnxruntime cannot quantize the LSTM of {Path(float_path).name}: "
                                     f"{describe(e)}") from e
            finally:
                root.setLevel(level)
            quantized = splice_dynamic(onnx.load(str(target)), onnx.load(str(Path(tmp) / "dynamic.onnx")), dynamic)
        else:
            quantized = onnx.load(str(target))
    int8 = quantized_nodes(quantized, nodes)
    kept_float = [wn.node for wn in nodes if wn.node not in int8]
    int8_stored = store_int8(quantized, [wn for wn in nodes if wn.node in set(int8_weights) and wn.node in kept_float])
    storage = weight_storage(quantized, nodes, int8_stored)
    # int8 weights, and the float weights of layers left float32 (densified above for the quantizer), go sparse
    # where that is smaller, as in the float file
    converted = [] if sparse is False else sparsify_initializers(quantized, sparse, dtypes=_SPARSE_TYPES)
    for row in storage.values():
        sizes = row.pop("per_tensor")
        stored = [t in converted for t in row["tensors"]]
        row["stored"] = "sparse" if all(stored) else "dense" if not any(stored) else "partly sparse"
        row["bytes"] = sum(sizes[t][1] if t in converted else sizes[t][0] for t in row["tensors"])
    sort_nodes(quantized.graph)  # onnxruntime's sort misses what a Loop's body reads from outside it
    onnx.checker.check_model(quantized, full_check=True)
    data = quantized.SerializeToString()
    atomic_write_bytes(Path(out_path), data)
    return QuantizedFile(path=Path(out_path), num_bytes=len(data), quantized=int8, float_nodes=kept_float,
                         sparse_initializers=converted, storage=storage, int8_weights=sorted(int8_stored))
