"""ONNX export, sparse storage of pruned weights, and onnxruntime verification.

The export stage turns the slim PyTorch model into one self-contained ``.onnx`` file:

1. ``torch.onnx.export`` (the TorchScript exporter by default, the ``torch.export``-based one on request)
   with a dynamic batch dimension, in eval mode, on CPU;
2. every debug record the exporters leave behind is removed (stack traces, source locations, FX node
   dumps), because they hold local file paths and are of no use to whoever runs the file;
3. the compression summary goes into the model's ``metadata_props``;
4. initializers that pruning left full of zeros become ``Constant`` nodes with a ``sparse_value``
   attribute wherever that is smaller;
5. the result passes ``onnx.checker.check_model(full_check=True)`` and is written atomically.

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

import contextlib
import copy
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from prunedrop.atomic import atomic_write_bytes
from prunedrop.compare import max_abs_diff
from prunedrop.errors import ParityError, PrunedropError

__all__ = [
    "ExportResult",
    "export_onnx",
    "run_onnx",
    "sparsify_initializers",
    "strip_debug_info",
    "verify_onnx",
]

EXPORTERS = ("torchscript", "dynamo")
INPUT_NAME = "input"
OUTPUT_NAME = "output"
BATCH_DIM = "batch"

# Only floating-point weights are pruned; integer initializers are shapes and indices that onnx and
# onnxruntime want to read as constants (shape inference, constant folding), so they stay dense.
_SPARSE_DTYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16})

_SPARSE_MIN_OPSET = 11  # Constant gained its sparse_value attribute in opset 11

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# How each exporter names an operator it cannot translate:
#   torchscript: "Exporting the operator 'aten::linalg_eig' to ONNX opset version 18 is not supported"
#   dynamo:      "No ONNX function found for <OpOverload(op='aten.linalg_eig', overload='default')>"
_OPERATOR_PATTERNS = (
    re.compile(r"operator '([^']+)'"),
    re.compile(r"OpOverload\(op='([^']+)'"),
    re.compile(r"No ONNX function found for (\S+)"),
)


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote."""

    path: Path
    """The ONNX file."""
    num_bytes: int
    """Size of the file as written."""
    dense_bytes: int
    """Size the same file would have with every initializer stored dense (``sparse=False``)."""
    sparse_initializers: list[str] = field(default_factory=list)
    """Names of the initializers stored as sparse ``Constant`` nodes, in graph order."""
    max_abs_diff: float | None = None
    """Largest |onnxruntime - PyTorch| difference; filled in by the caller after :func:`verify_onnx`."""


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    dynamic_batch: bool = True,
    sparse: bool | str = "auto",
    metadata: dict[str, str] | None = None,
    exporter: str = "torchscript",
) -> ExportResult:
    """Export ``model`` to one self-contained ONNX file at ``path``.

    Args:
        model: the network to export; it is traced in eval mode on CPU and left in the mode it was in.
        example_input: one input batch; only its shape and dtype matter.
        path: the ``.onnx`` file to write (its folder is created).
        opset: ONNX opset version of the default domain.
        dynamic_batch: make dimension 0 of the input and the output symbolic (``"batch"``).
        sparse: ``"auto"`` stores a float initializer sparsely when that is smaller, ``True`` every float
            initializer that has a zero, ``False`` none.
        metadata: strings stored in the model's ``metadata_props`` (the compression summary).
        exporter: ``"torchscript"`` (fast, the default) or ``"dynamo"`` (``torch.export`` based).

    Raises:
        PrunedropError: the model uses an operator ONNX cannot express, its forward fixes the batch size
            while ``dynamic_batch`` is set, or ``path`` cannot be written.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, not {exporter!r}")
    if sparse not in (True, False, "auto"):
        raise ValueError(f"sparse must be True, False or 'auto', not {sparse!r}")
    for key, value in (metadata or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"metadata keys and values must be str, got {key!r}: {value!r}")
    path = Path(path)

    proto = _trace(model, example_input, opset=opset, dynamic_batch=dynamic_batch, exporter=exporter)
    if dynamic_batch:
        _check_batch_is_symbolic(proto)
    strip_debug_info(proto)
    if metadata:
        helper.set_model_props(proto, metadata)
    dense_bytes = proto.ByteSize()
    sparse_names = sparsify_initializers(proto, sparse) if sparse is not False else []
    # Catches a bad file here rather than in whoever loads it next; cheap next to the export itself.
    onnx.checker.check_model(proto, full_check=True)

    data = proto.SerializeToString()
    try:
        atomic_write_bytes(path, data)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise PrunedropError(
            f"cannot write ONNX file {path}: {reason}; choose an output folder you can write to"
        ) from e
    return ExportResult(
        path=path, num_bytes=len(data), dense_bytes=dense_bytes, sparse_initializers=sparse_names
    )


def run_onnx(
    path: str | os.PathLike[str], inputs: torch.Tensor | np.ndarray, *, threads: int | None = None
) -> np.ndarray:
    """Run the ONNX file at ``path`` on ``inputs`` with onnxruntime (CPU) and return its first output.

    ``threads`` sets onnxruntime's intra-op thread count (``None``: onnxruntime's default, all cores).
    """
    return _run_session(path, inputs, threads=threads)[0]


def verify_onnx(
    path: str | os.PathLike[str], model: nn.Module, inputs: torch.Tensor, *, atol: float = 1e-4
) -> float:
    """Compare onnxruntime's output on ``inputs`` with the eval-mode PyTorch output; return the max abs diff.

    Every output of the model is compared, in float32. Use real inputs, and preferably a batch size
    other than the export example's, so that a batch size baked into the graph shows up here.

    The tolerance scales with the outputs: output ``i`` may differ by ``atol · max(1, max |y_i|)`` (``y_i``
    PyTorch's finite values), so that ``atol`` is absolute for outputs up to 1 (logits, probabilities) and
    relative above (a model fed unscaled 0-255 inputs has outputs in the thousands, where float32 rounding
    alone differs by more than 1e-4).

    Raises:
        ParityError: an output differs by more than its tolerance, or has another shape.
    """
    with _eval_on_cpu(model) as cpu_model, torch.no_grad():
        expected = _flatten_outputs(cpu_model(inputs.detach().cpu()))
    actual = _run_session(path, inputs)
    if len(actual) != len(expected):
        raise ParityError(
            f"ONNX file {path} has {len(actual)} outputs but the PyTorch model returns {len(expected)}; "
            "export the same model that you verify"
        )
    max_diff = 0.0
    for i, (got, want) in enumerate(zip(actual, expected)):
        want_np = want.detach().float().numpy()
        got_np = np.asarray(got, dtype=np.float32)
        if got_np.shape != want_np.shape:
            raise ParityError(
                f"ONNX output {i} has shape {list(got_np.shape)} but PyTorch gives {list(want_np.shape)}; "
                "export the same model that you verify (a batch size fixed in the model shows up here)"
            )
        diff = max_abs_diff(torch.tensor(got_np), torch.from_numpy(want_np))
        max_diff = max(max_diff, diff)
        scale = _output_scale(want_np)
        # ``not <=`` so that a NaN difference fails too.
        if not diff <= atol * scale:
            tolerance = f"atol {atol:g}" if scale == 1.0 else f"atol {atol:g} × largest output {scale:.3g}"
            raise ParityError(
                f"ONNX output differs from PyTorch by {diff:.3g} (> {tolerance}) in {path}; "
                "re-export the model, or check for operators whose ONNX version behaves differently"
            )
    return max_diff


def _output_scale(want: np.ndarray) -> float:
    """max(1, largest finite |value|): what :func:`verify_onnx`'s ``atol`` is relative to."""
    finite = np.abs(want[np.isfinite(want)]) if want.size else want
    return max(1.0, float(finite.max())) if finite.size else 1.0


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
                          dtypes: Iterable[int] = _SPARSE_DTYPES) -> list[str]:
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
    kept: list[onnx.TensorProto] = []
    constants: list[onnx.NodeProto] = []
    for init in graph.initializer:
        node = None if init.name in graph_inputs else _sparse_constant(init, frozenset(dtypes))
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


# ----------------------------------------------------------------------------------------------------------
# tracing


def _trace(
    model: nn.Module, example_input: torch.Tensor, *, opset: int, dynamic_batch: bool, exporter: str
) -> onnx.ModelProto:
    example = example_input.detach().cpu()
    with _eval_on_cpu(model) as cpu_model, _quiet_exporter():
        try:
            if exporter == "torchscript":
                return _trace_torchscript(cpu_model, example, opset=opset, dynamic_batch=dynamic_batch)
            return _trace_dynamo(cpu_model, example, opset=opset, dynamic_batch=dynamic_batch)
        except Exception as e:  # the exporters raise a dozen unrelated types; all mean "cannot export"
            raise _export_error(e, exporter=exporter, opset=opset) from e


def _trace_torchscript(
    model: nn.Module, example: torch.Tensor, *, opset: int, dynamic_batch: bool
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    dynamic_axes = {INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}} if dynamic_batch else None
    torch.onnx.export(
        model,
        (example,),
        buffer,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_axes=dynamic_axes,
        do_constant_folding=True,
        dynamo=False,
    )
    return onnx.load_from_string(buffer.getvalue())


def _trace_dynamo(
    model: nn.Module, example: torch.Tensor, *, opset: int, dynamic_batch: bool
) -> onnx.ModelProto:
    # A named Dim (not Dim.DYNAMIC) so that the ONNX dimension is called "batch" like the TorchScript one.
    dynamic_shapes = ({0: torch.export.Dim(BATCH_DIM)},) if dynamic_batch else None
    program = torch.onnx.export(
        model,
        (example,),
        None,  # keep the program in memory: saving would split large weights into an external data file
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamic_shapes=dynamic_shapes,
        dynamo=True,
        verbose=False,
        report=False,
    )
    if program is None:  # pragma: no cover - torch returns the program whenever dynamo=True
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no program")
    return program.model_proto


def _check_batch_is_symbolic(proto: onnx.ModelProto) -> None:
    dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else []
    if dims and not dims[0].dim_param:
        raise PrunedropError(
            f"the model's forward fixes the batch size to {dims[0].dim_value}, so ONNX cannot take other "
            "batch sizes; use x.flatten(1) or x.reshape(x.size(0), ...) instead of a literal batch size, "
            "or export with dynamic_batch=False"
        )


def _export_error(error: Exception, *, exporter: str, opset: int) -> PrunedropError:
    text = _ANSI.sub("", "\n".join(str(e) for e in _exception_chain(error)))
    for pattern in _OPERATOR_PATTERNS:
        match = pattern.search(text)
        if match:
            return PrunedropError(
                f"cannot export to ONNX: operator {match.group(1)} has no ONNX equivalent at opset {opset} "
                f"({exporter} exporter); replace it in the model's forward, or try another opset or exporter"
            )
    first_line = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    if len(first_line) > 200:
        first_line = first_line[:197] + "..."
    return PrunedropError(
        f"ONNX export failed ({exporter} exporter, opset {opset}): {first_line}; "
        f"simplify the model's forward or try the other exporter"
    )


def _exception_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


@contextlib.contextmanager
def _eval_on_cpu(model: nn.Module) -> Iterator[nn.Module]:
    """Yield ``model`` in eval mode on CPU; the caller's model keeps its mode and device."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type != "cpu" for t in tensors):
        # A copy rather than model.cpu(): moving back would hand the caller new storage.
        yield copy.deepcopy(model).cpu().eval()
        return
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        # Restore per module: a caller may have frozen some submodules in eval mode on purpose.
        for module, training in modes.items():
            module.training = training


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence what the exporters print: Python warnings, logging, print(), and C++ writes to stdout."""
    loggers = [
        logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    ]
    levels = [logger.level for logger in loggers]
    # torch's TorchScript exporter switches its C++ ONNX log on for good (a torch bug: it tests the
    # function object ``_jit_is_onnx_log_enabled`` rather than calling it) and then dumps the whole graph,
    # with source paths, to the C++ stdout when an export fails. Restore the switch, and hide fd 1.
    log_was_enabled = torch._C._jit_is_onnx_log_enabled()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _hide_fd_stdout():
            warnings.simplefilter("ignore")
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
        torch._C._jit_set_onnx_log_enabled(log_was_enabled)


@contextlib.contextmanager
def _hide_fd_stdout() -> Iterator[None]:
    try:
        if sys.__stdout__ is not None:
            sys.__stdout__.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no fd 1 (a daemon, some embedded interpreters): nothing to hide
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        # C++ output goes through C stdio, which buffers when fd 1 is not a terminal: flush it into
        # /dev/null before fd 1 points back at the real stdout.
        _flush_c_stdio()
        os.dup2(saved, 1)
        os.close(saved)


def _flush_c_stdio() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)


# ----------------------------------------------------------------------------------------------------------
# debug info and sparse storage


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


def _sparse_constant(init: onnx.TensorProto, dtypes: frozenset[int] = _SPARSE_DTYPES) -> onnx.NodeProto | None:
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


# ----------------------------------------------------------------------------------------------------------
# onnxruntime


def _run_session(
    path: str | os.PathLike[str], inputs: torch.Tensor | np.ndarray, *, threads: int | None = None
) -> list[np.ndarray]:
    return feed_session(open_session(path, threads=threads), path, inputs)


def open_session(path: str | os.PathLike[str], *, threads: int | None = None) -> Any:
    """An onnxruntime CPU session on the ONNX file at ``path`` that takes exactly one input (one-line errors)."""
    import onnxruntime as ort

    if threads is not None and threads < 1:
        raise ValueError(f"threads must be a positive number or None, not {threads}")
    path = Path(path)
    if not path.is_file():
        raise PrunedropError(f"ONNX file {path} not found; export the model first")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: onnxruntime warns about harmless things on load
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own pybind exception types
        raise PrunedropError(f"onnxruntime cannot load {path}: {_first_line(e)}; re-export the model") from e
    model_inputs = session.get_inputs()
    if len(model_inputs) != 1:
        raise PrunedropError(
            f"ONNX file {path} takes {len(model_inputs)} inputs; prunedrop feeds exactly one"
        )
    return session


def feed_session(session: Any, path: str | os.PathLike[str], inputs: torch.Tensor | np.ndarray) -> list[np.ndarray]:
    """All outputs of an :func:`open_session` session on ``inputs`` (cast to the input's element type)."""
    model_inputs = session.get_inputs()
    array = inputs.detach().cpu().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs)
    array = array.astype(_ORT_NUMPY_TYPES.get(model_inputs[0].type, array.dtype), copy=False)
    try:
        return session.run(None, {model_inputs[0].name: array})
    except Exception as e:
        raise PrunedropError(
            f"onnxruntime failed to run {path} on an input of shape {list(array.shape)}: {_first_line(e)}"
        ) from e


_ORT_NUMPY_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def _first_line(error: BaseException) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _flatten_outputs(output: Any) -> list[torch.Tensor]:
    # The exporters flatten nested tuples/lists/dicts of tensors into graph outputs in this same order.
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for value in output.values() for t in _flatten_outputs(value)]
    if isinstance(output, (tuple, list)):
        return [t for value in output for t in _flatten_outputs(value)]
    raise TypeError(f"cannot compare a model output of type {type(output).__name__} with ONNX")
