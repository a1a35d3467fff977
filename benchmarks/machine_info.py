"""The machine a benchmark ran on, for its result JSON (shared by the benchmark scripts)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name, family/model numbers and widest vector extension, from /proc/cpuinfo.

    For example ``"AMD EPYC (family 26 model 2, AVX-512)"``. Cloud machines often report only a brand
    ("AMD EPYC"), which hides what decides onnxruntime's speed on small layers: the CPU generation and the
    vector width (onnxruntime's NCHWc convolutions compute blocks of 16 channels with AVX-512 and of 8 with
    AVX2), so both are named. ``cpuinfo`` replaces the file's text (for tests); where there is no
    /proc/cpuinfo, ``platform.processor()`` (often empty) or ``"unknown"``.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or "unknown"
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if ":" not in line:
            if fields:  # the first processor's block is enough
                break
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        fields.setdefault(key, value)
    name = fields.get("model name") or platform.processor() or "unknown"
    flags = set(fields.get("flags", "").split())
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "AVX" if "avx" in flags else None
    details = []
    if "cpu family" in fields and "model" in fields:
        details.append(f"family {fields['cpu family']} model {fields['model']}")
    if isa:
        details.append(isa)
    return f"{name} ({', '.join(details)})" if details else name


def command_line() -> str:
    """The command that started this benchmark, as typed from the repository root: ``python <script> <args>``
    (shell-quoted), for the result JSON's ``command``."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
