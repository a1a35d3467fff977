"""The report on disk: ``report.json`` and ``report.md`` written atomically, ``report.json`` read back and checked."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import PrunedropError
from ..runfolder import REPORT_JSON, REPORT_MD
from .build import REPORT_SCHEMA_VERSION, check_no_absolute_paths
from .render import format_markdown

_REQUIRED_KEYS = ("schema_version", "params", "flops", "onnx_bytes", "metric", "layers")


def write_report(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> None:
    """Write ``report.json`` (indent 2, sorted keys) and ``report.md`` into ``out_dir``, each atomically."""
    check_no_absolute_paths(report)
    text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n"
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / REPORT_JSON, text)
    atomic_write_text(out_dir / REPORT_MD, format_markdown(report))


def load_report(run_dir: str | os.PathLike[str]) -> dict:
    """Read ``run_dir/report.json`` (``run_dir`` may also be the file itself).

    Raises :class:`PrunedropError` when the file is missing, is not valid JSON, or is not a prunedrop report.
    """
    path = Path(run_dir)
    if path.is_dir() or path.suffix != ".json":
        path = path / REPORT_JSON
    if not path.is_file():
        raise PrunedropError(f"no report at {path}: run `prunedrop compress` with this output folder first")
    from ..safety import load_json_file

    report = load_json_file(path, where=str(path), advice="delete it and run the report stage again")
    missing = [k for k in _REQUIRED_KEYS if not isinstance(report, dict) or k not in report]
    if missing:
        raise PrunedropError(f"{path} is not a prunedrop report (missing {', '.join(missing)})")
    if report["schema_version"] != REPORT_SCHEMA_VERSION:
        raise PrunedropError(
            f"{path} has report schema version {report['schema_version']}, this prunedrop reads "
            f"{REPORT_SCHEMA_VERSION}; run the report stage again with this version"
        )
    return report
