"""ONNX export, sparse storage of pruned weights, and onnxruntime verification (the package; each public name
re-exported here).

The export stage turns the slim PyTorch model into one self-contained ``.onnx`` file:

1. ``torch.onnx.export`` (the TorchScript exporter by default, the ``torch.export``-based one on request)
   with a dynamic batch dimension, in eval mode, on CPU;
2. every debug record the exporters leave behind is removed (stack traces, source locations, FX node
   dumps), because they hold local file paths and are of no use to whoever runs the file;
3. the compression summary goes into the model's ``metadata_props``;
4. initializers that pruning left full of zeros become ``Constant`` nodes with a ``sparse_value``
   attribute wherever that is smaller;
5. the result passes ``onnx.checker.check_model(full_check=True)`` and is written atomically;
6. :func:`verify_onnx` runs the file with onnxruntime and compares its outputs with PyTorch's.

Modules: :mod:`.trace` (steps 1-3 and 5: :func:`export_onnx`), :mod:`.sparse` (steps 2 and 4: the debug records
stripped, the sparse ``Constant`` nodes and why they are stored as they are), :mod:`.runtime` (onnxruntime
sessions, :func:`run_onnx`, :func:`verify_onnx`).
"""

from .runtime import feed_session, open_session, run_onnx, session_source, verify_onnx
from .sparse import sparsify_initializers, strip_debug_info
from .trace import EXPORTERS, ExportResult, export_onnx

__all__ = [
    "EXPORTERS",
    "ExportResult",
    "export_onnx",
    "feed_session",
    "open_session",
    "run_onnx",
    "session_source",
    "sparsify_initializers",
    "strip_debug_info",
    "verify_onnx",
]
