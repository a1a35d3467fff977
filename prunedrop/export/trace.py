""":func:`export_onnx`: the model traced by ``torch.onnx.export`` (TorchScript or ``torch.export`` based) in eval
mode on CPU, the exporters kept quiet and their failures said in one line, then the file stripped, sparsified,
checked and written atomically."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import helper
from torch import nn

from ..atomic import atomic_write_bytes
from ..errors import PrunedropError
from ..modes import kept
from .sparse import sparsify_initializers, strip_debug_info

EXPORTERS = ("auto", "torchscript", "dynamo")
INPUT_NAME = "input"
OUTPUT_NAME = "output"
BATCH_DIM = "batch"

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
    exporter: str = "torchscript"
    """The exporter that wrote the file (``auto`` chooses ``dynamo`` where ``torchscript`` cannot export)."""
    fallback: str | None = None
    """With ``auto`` and the dynamo exporter: why the TorchScript one could not export the model (one line)."""


def export_onnx(
    model: nn.Module,
    example_input: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    opset: int = 18,
    dynamic_batch: bool = True,
    sparse: bool | str = "auto",
    metadata: dict[str, str] | None = None,
    exporter: str = "auto",
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
        exporter: ``"torchscript"`` (fast), ``"dynamo"`` (``torch.export`` based), or ``"auto"`` (the default):
            TorchScript, and where it cannot export the model (an operator it lacks, as ``aten::bilinear``), dynamo;
            should dynamo fail too, the TorchScript exporter's error is raised with dynamo's appended.

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

    used, fallback = exporter, None
    if exporter == "auto":
        used = "torchscript"
        try:
            proto = _trace(model, example_input, opset=opset, dynamic_batch=dynamic_batch, exporter=used)
        except PrunedropError as first:
            used, fallback = "dynamo", first.message
            try:
                proto = _trace(model, example_input, opset=opset, dynamic_batch=dynamic_batch, exporter=used)
            except PrunedropError as second:
                raise PrunedropError(f"{first.message} (the dynamo exporter failed too: {second.message})") from None
    else:
        proto = _trace(model, example_input, opset=opset, dynamic_batch=dynamic_batch, exporter=exporter)
    if dynamic_batch:
        _check_batch_is_symbolic(proto)
    strip_debug_info(proto)
    if metadata:
        helper.set_model_props(proto, metadata)
    dense_bytes = proto.ByteSize()
    sparse_names = sparsify_initializers(proto, sparse) if sparse is not False else []
    if sparse_names:
        # the traced graph was checked whole (_trace); sparse constants replaced some of its initializers since.
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
        path=path, num_bytes=len(data), dense_bytes=dense_bytes, sparse_initializers=sparse_names, exporter=used,
        fallback=fallback,
    )


@contextlib.contextmanager
def eval_on_cpu(model: nn.Module) -> Iterator[nn.Module]:
    """Yield ``model`` in eval mode on CPU; the caller's model keeps its mode and device."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type != "cpu" for t in tensors):
        # A copy rather than model.cpu(): moving back would hand the caller new storage.
        yield copy.deepcopy(model).cpu().eval()
        return
    with kept(model):
        yield model.eval()


def _trace(
    model: nn.Module, example_input: torch.Tensor, *, opset: int, dynamic_batch: bool, exporter: str
) -> onnx.ModelProto:
    example = example_input.detach().cpu()
    with eval_on_cpu(model) as cpu_model, _explicit_same_padding(cpu_model), _quiet_exporter():
        try:
            if exporter == "torchscript":
                proto = _trace_torchscript(cpu_model, example, opset=opset, dynamic_batch=dynamic_batch)
            else:
                proto = _trace_dynamo(cpu_model, example, opset=opset, dynamic_batch=dynamic_batch)
            # a graph the exporter wrote but onnx rejects (the dynamo exporter's nn.LSTM with proj_size: a Concat of
            # ranks 1 and 2) cannot be exported either: said in one line, and under "auto" the other exporter tries.
            # The one full check of a file written without sparse constants (export_onnx checks those again)
            onnx.checker.check_model(proto, full_check=True)
            return proto
        except Exception as e:  # the exporters raise a dozen unrelated types; all mean "cannot export"
            raise _export_error(e, exporter=exporter, opset=opset) from e


@contextlib.contextmanager
def _explicit_same_padding(model: nn.Module) -> Iterator[None]:
    """Inside, every zero-padded convolution with ``padding="same"`` and a dilation pads by explicit amounts.

    The TorchScript exporter writes ``padding="same"`` as ``auto_pad=SAME_UPPER``, which onnxruntime refuses with a
    dilation ("Dilation not supported for AutoPadType::SAME_UPPER": a digits CNN with ``Conv2d(16, 32, 2,
    padding="same", dilation=2)`` stopped before training). Where the padding is the same on both sides it becomes
    the convolution's own padding; where it is not (an even kernel with an odd dilation), the input is padded by
    ``F.pad`` before a convolution without padding, as torch pads it. The same outputs; the layers are as they were
    afterwards."""
    changed: list[tuple[nn.modules.conv._ConvNd, Any]] = []
    handles = []
    for module in model.modules():
        if (not isinstance(module, nn.modules.conv._ConvNd) or module.padding != "same"
                or module.padding_mode != "zeros" or all(d == 1 for d in module.dilation)):
            continue
        totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        changed.append((module, module.padding))
        if all(t % 2 == 0 for t in totals):
            module.padding = tuple(t // 2 for t in totals)
            continue
        module.padding = (0,) * len(totals)
        pads = [p for t in reversed(totals) for p in (t // 2, t - t // 2)]  # F.pad: last dimension first
        handles.append(module.register_forward_pre_hook(
            lambda m, args, pads=pads: (torch.nn.functional.pad(args[0], pads), *args[1:])))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, padding in changed:
            module.padding = padding


def _trace_torchscript(
    model: nn.Module, example: torch.Tensor, *, opset: int, dynamic_batch: bool
) -> onnx.ModelProto:
    buffer = io.BytesIO()
    dynamic_axes = {INPUT_NAME: {0: BATCH_DIM}, OUTPUT_NAME: {0: BATCH_DIM}} if dynamic_batch else None
    torch.onnx.export(
        _OneInput(model),
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


class _OneInput(nn.Module):
    """``model`` called with its input alone, for the TorchScript exporter.

    That exporter reads ``forward``'s signature and passes every parameter with a default as an extra graph
    input: ``forward(self, x, temperature=1.0)`` became an ONNX file with two inputs, which onnxruntime cannot
    be fed with one batch. Called as ``model(x)``, the defaults stay constants of the trace. The wrapper holds
    the model's own children, parameters and buffers (the same dictionaries) and its mode, so the file's
    initializer and node names are those of ``model`` exported directly (the quantizer maps them to modules).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._modules = model._modules
        self._parameters = model._parameters
        self._buffers = model._buffers
        self.training = model.training
        object.__setattr__(self, "wrapped", model)  # not a child: the names keep no prefix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wrapped(x)


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
    advice = "simplify the model's forward or try the other exporter"
    if _BFLOAT16.search(text):
        advice = ("the exported graph computes in bfloat16 (a torch.autocast in the forward, or bfloat16 weights), "
                  "which this ONNX operator does not take: export the model in float32 (without the autocast, "
                  "model.float())")
    return PrunedropError(f"ONNX export failed ({exporter} exporter, opset {opset}): {first_line}; {advice}")


#: an ONNX type check that refused a bfloat16 tensor (ONNX's Conv, among others, takes none)
_BFLOAT16 = re.compile(r"unsupported type: tensor\(bfloat16\)")


def _exception_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence what the exporters print: Python warnings, logging, print(), and C++ writes to stdout."""
    loggers = [
        logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")
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
