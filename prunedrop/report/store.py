"""The report on disk: ``report.json`` and ``report.md`` written atomically, ``report.json`` read back and checked."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import __version__
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


def _no_report(path: Path) -> str:
    """Why ``path`` (a report.json) is not there, and what to do: a run that was interrupted (its run.json and
    checkpoint are there) is told apart from a folder that holds no run."""
    from ..runfolder import RunFolder

    folder = RunFolder(path.parent)
    if os.path.lexists(path):
        return f"{path} is not a file; restore the run's report.json or run `prunedrop compress` again"
    if folder.run_info.is_file():
        if folder.variational_checkpoint.is_file():
            return (f"the run in {folder.path} has no {REPORT_JSON}: it was interrupted or stopped before its report "
                    "(its checkpoint is there): continue an interrupted run with its `prunedrop compress` command and "
                    f"--resume, or export the checkpoint as it is with `prunedrop export {folder.path} -o FILE.onnx`")
        return (f"the run in {folder.path} has no {REPORT_JSON}: it was interrupted or stopped before its first "
                "checkpoint; run `prunedrop compress` again")
    return f"no report at {path}: run `prunedrop compress` with this output folder first"


def load_report(run_dir: str | os.PathLike[str]) -> dict:
    """Read ``run_dir/report.json`` (``run_dir`` may also be the file itself).

    Raises :class:`PrunedropError` when the file is missing, is not valid JSON, or is not a prunedrop report.
    """
    path = Path(run_dir)
    if path.is_dir() or path.suffix != ".json":
        path = path / REPORT_JSON
    if not path.is_file():
        raise PrunedropError(_no_report(path))
    from ..safety import load_json_file

    report = load_json_file(path, where=str(path), advice="delete it and run the report stage again")
    missing = [k for k in _REQUIRED_KEYS if not isinstance(report, dict) or k not in report]
    if missing:
        raise PrunedropError(f"{path} is not a prunedrop report (missing {', '.join(missing)})")
    version = report["schema_version"]
    if isinstance(version, bool) or not (isinstance(version, int) or isinstance(version, float)
                                         and math.isfinite(version) and version.is_integer()):
        raise PrunedropError(f"{path} is not a prunedrop report (its schema_version is {str(version)[:40]!r}, not a "
                             "whole number); it was edited or damaged: run `prunedrop compress` again")
    if version > REPORT_SCHEMA_VERSION:
        raise PrunedropError(f"{path} was written by a newer prunedrop (report schema version {str(int(version))[:20]}; this "
                             f"prunedrop {__version__} reads {REPORT_SCHEMA_VERSION}): read it with that prunedrop, or "
                             "upgrade this one")
    if version != REPORT_SCHEMA_VERSION:
        raise PrunedropError(f"{path} has report schema version {int(version)}, this prunedrop reads "
                             f"{REPORT_SCHEMA_VERSION}; run `prunedrop compress` again with this version")
    return report


def load_reports(run_dirs: Sequence[str | os.PathLike[str]], *,
                 log: Callable[[str], None] = lambda msg: None) -> dict[str, dict]:
    """:func:`load_report` of each of ``run_dirs``, keyed by the path as given, for runs side by side
    (:func:`~prunedrop.report.compare_reports`). A report given again (``run run``, ``run ./run``, a link to it) is
    read once, under the name it was first given, and ``log`` says so: it would show as two columns that are one run,
    or silently as one."""
    from ..safety import same_entry

    paths: list[tuple[str, Path]] = []
    notes: list[str] = []
    for run_dir in run_dirs:
        path = Path(run_dir)
        report_json = path if path.suffix == ".json" and not path.is_dir() else path / REPORT_JSON
        twin = next((given for given, other in paths if given == str(run_dir) or same_entry(report_json, other)),
                    None)
        if twin is not None:
            also = "" if twin == str(run_dir) else f" (as {twin} and {run_dir})"
            notes.append(f"note: {twin} is given twice{also}: it is one run, shown once")
            continue
        paths.append((str(run_dir), report_json))
    reports = {given: load_report(given) for given, _ in paths}
    for note in notes:  # once every report is read: a refusal stays one line
        log(note)
    return reports
