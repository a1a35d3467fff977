"""The report stage: parameter counts, FLOPs, file sizes, metric, parity and latency.

Each job in its own module, every public name re-exported here: :mod:`.profile` (parameters and FLOPs per
layer, and what FLOPs means everywhere in prunedrop), :mod:`.build` (the report dict), :mod:`.render` (the
terminal table, ``report.md``, runs side by side), :mod:`.store` (``report.json`` / ``report.md`` on disk) and
:mod:`.latency` (ONNX Runtime timing).
"""

from .build import REPORT_SCHEMA_VERSION, build_report, check_no_absolute_paths, public_spec
from .latency import measure_latency
from .profile import LayerProfile, count_parameters, layer_weights, profile_model, recurrent_weights
from .render import compare_reports, format_table, human_bytes, human_count
from .store import load_report, load_reports, write_report

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "LayerProfile",
    "build_report",
    "check_no_absolute_paths",
    "compare_reports",
    "count_parameters",
    "format_table",
    "human_bytes",
    "human_count",
    "layer_weights",
    "load_report",
    "load_reports",
    "measure_latency",
    "profile_model",
    "public_spec",
    "recurrent_weights",
    "write_report",
]
