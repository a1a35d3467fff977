"""The machine description the benchmark JSON files carry: CPU generation and vector width, not only a brand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cpu_model():
    spec = importlib.util.spec_from_file_location("machine_info", ROOT / "benchmarks" / "machine_info.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cpu_model


BLOCK = """processor\t: {n}
vendor_id\t: AuthenticAMD
cpu family\t: {family}
model\t\t: 2
model name\t: AMD EPYC
flags\t\t: fpu sse2 {flags}

"""


def test_names_family_and_the_widest_vector_extension() -> None:
    cpu_model = _cpu_model()
    assert cpu_model(BLOCK.format(n=0, family=26, flags="avx avx2 avx512f avx512bw")) == \
        "AMD EPYC (family 26 model 2, AVX-512)"
    assert cpu_model(BLOCK.format(n=0, family=23, flags="avx avx2")) == "AMD EPYC (family 23 model 2, AVX2)"


def test_reads_only_the_first_processor() -> None:
    cpu_model = _cpu_model()
    text = BLOCK.format(n=0, family=25, flags="avx avx2") + BLOCK.format(n=1, family=26, flags="avx512f")
    assert cpu_model(text) == "AMD EPYC (family 25 model 2, AVX2)"


def test_a_bare_model_name_stays_bare() -> None:
    assert _cpu_model()("model name\t: Some CPU\n") == "Some CPU"
