"""onnxruntime: a CPU session on an exported file, :func:`run_onnx`, and :func:`verify_onnx`, the parity check of
the file against the PyTorch model it came from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..compare import max_abs_diff, output_tensors
from ..errors import ParityError, PrunedropError
from .trace import eval_on_cpu


def run_onnx(
    path: str | os.PathLike[str], inputs: torch.Tensor | np.ndarray, *, threads: int | None = None
) -> np.ndarray:
    """Run the ONNX file at ``path`` on ``inputs`` with onnxruntime (CPU) and return its first output.

    ``threads`` sets onnxruntime's intra-op thread count (``None``: onnxruntime's default, all cores).
    """
    return run_session(path, inputs, threads=threads)[0]


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
    with eval_on_cpu(model) as cpu_model, torch.no_grad():
        expected = output_tensors(cpu_model(inputs.detach().cpu()), strict=True)
    actual = run_session(path, inputs)
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
                + _tie_hint(path)
            )
    return max_diff


#: ONNX operators whose result depends on how ties are broken, which onnxruntime and PyTorch do differently
_TIE_BREAKING = ("TopK", "ArgMax", "ArgMin")


def _tie_hint(path: str | os.PathLike[str]) -> str:
    """Where the file selects by rank (TopK, ArgMax, ArgMin): a hint that equal values (the zeros a ReLU makes, k-max
    pooling over them) are ranked differently by the two, so that a forward which then gathers or orders by those
    positions differs; '' otherwise or where the file cannot be read."""
    try:
        import onnx

        ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    except Exception:  # noqa: BLE001 - the hint is an extra; the error stands without it
        return ""
    found = sorted(ops.intersection(_TIE_BREAKING))
    if not found:
        return ""
    return (f"; it selects by rank ({', '.join(found)}): where values tie (the zeros after a ReLU), onnxruntime and "
            "PyTorch may pick other positions, and a forward that gathers or orders by them then differs; use the "
            "selected values (topk(...).values) rather than their positions where the model allows, or break the "
            "ties in the model")


def _output_scale(want: np.ndarray) -> float:
    """max(1, largest finite |value|): what :func:`verify_onnx`'s ``atol`` is relative to."""
    finite = np.abs(want[np.isfinite(want)]) if want.size else want
    return max(1.0, float(finite.max())) if finite.size else 1.0


def run_session(
    path: str | os.PathLike[str], inputs: torch.Tensor | np.ndarray, *, threads: int | None = None
) -> list[np.ndarray]:
    return feed_session(open_session(path, threads=threads), path, inputs)


def _half_precision(path: Path) -> bool:
    """Whether the ONNX file at ``path`` casts to, or stores, float16 or bfloat16 values (False if unreadable)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - only a hint depends on it
        return False
    half = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    graph = proto.graph
    return any(t.data_type in half for t in graph.initializer) or any(
        a.name == "to" and a.i in half for node in graph.node if node.op_type == "Cast" for a in node.attribute)


def session_source(path: str | os.PathLike[str]) -> str | bytes:
    """What ``onnxruntime.InferenceSession`` is given for the ONNX file at ``path``: the path, or, for a path that is
    not UTF-8 (bytes a Linux file name may hold, which onnxruntime's binding cannot take: "incompatible constructor
    arguments"), the file's bytes (prunedrop's ONNX files are self-contained: no external data beside them)."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return Path(path).read_bytes()
    return text


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
        session = ort.InferenceSession(session_source(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own pybind exception types
        advice = "re-export the model"
        if "NOT_IMPLEMENTED" in str(e) and _half_precision(path):
            advice = ("the graph computes in float16/bfloat16 (torch.autocast or .half() in the forward?), for which "
                      "onnxruntime's CPU provider lacks kernels: compute in float32 in the forward")
        raise PrunedropError(f"onnxruntime cannot load {path}: {_first_line(e)}; {advice}") from e
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


