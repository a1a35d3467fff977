"""Quantized ONNX export: int8 everywhere, or int8 where the variational posterior allows it (``quantize``; the
package, each public name re-exported here).

The quantizer is onnxruntime's own (:func:`onnxruntime.quantization.quantize_static`: QDQ format, per-channel
symmetric int8 weights, activation ranges calibrated (MinMax) on a few training batches; LSTMs through its
``quantize_dynamic``); prunedrop decides *which* nodes it quantizes (the chosen layers and the operators that carry
int8 between them), the activations' type for this CPU and how the weights are stored, checks the result with
onnxruntime and writes it beside the float file where it is smaller or faster.

Modules, each importing only those before it: :mod:`.bits` (the posterior's bit rule: :func:`posterior_bits`),
:mod:`.graph` (the ONNX files as protobuf: the weight nodes, the dense float file the quantizer reads, each
quantized weight's storage, the opset conversion, the splice of the dynamic LSTMs), :mod:`.quantizer`
(onnxruntime's quantizer, its calibration batches and the CPU it quantizes for: :func:`quantize_onnx`,
:func:`activation_type`), :mod:`.measure` (onnxruntime's metric and latency) and :mod:`.plan` (the whole step, :func:`quantize_model`: the
bits, the accuracy budget's reverts, the storage choice and the speed check).
"""

from .bits import (
    MAX_INT_BITS,
    MIN_INT_BITS,
    UNIT_QUANTILE,
    LayerBits,
    input_spreads,
    posterior_bits,
    posterior_moments,
    posterior_parts,
    rule_inputs,
    unit_bits,
)
from .graph import WeightNode, load_dense, quantized_nodes, weight_nodes
from .measure import Timer, evaluate_onnx, onnx_sample_scores, time_models
from .plan import QUANTIZE_MODES, SPEED_MARGIN, quantize_model
from .quantizer import (
    CALIBRATION_BATCH,
    CALIBRATION_SAMPLES,
    DYNAMIC_OPS,
    INT4_OPSET,
    QuantizedFile,
    activation_type,
    calibration_batches,
    cpu_instruction_sets,
    quantize_onnx,
    quantized_path,
    weight_bits,
)

_load_dense = load_dense  # its name before the package split (scripts and branches written then import it)

__all__ = [
    "CALIBRATION_BATCH",
    "CALIBRATION_SAMPLES",
    "DYNAMIC_OPS",
    "INT4_OPSET",
    "MAX_INT_BITS",
    "MIN_INT_BITS",
    "QUANTIZE_MODES",
    "SPEED_MARGIN",
    "UNIT_QUANTILE",
    "LayerBits",
    "QuantizedFile",
    "Timer",
    "WeightNode",
    "activation_type",
    "calibration_batches",
    "cpu_instruction_sets",
    "evaluate_onnx",
    "onnx_sample_scores",
    "input_spreads",
    "load_dense",
    "posterior_bits",
    "posterior_moments",
    "posterior_parts",
    "quantize_model",
    "quantize_onnx",
    "quantized_nodes",
    "quantized_path",
    "rule_inputs",
    "weight_bits",
    "time_models",
    "unit_bits",
    "weight_nodes",
]
