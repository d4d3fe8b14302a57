"""What a benchmark records in `extra_info` beside its times: parameters, derived figures, threads, library versions.

Every field is declared in embedsearch.fields; `record` refuses any other.
"""

from __future__ import annotations

import platform

import faiss
import numpy as np
import torch

import embedsearch
from embedsearch.embed import timm_version
from embedsearch.fields import FIELDS, THREADS, VERSIONS


def library_versions() -> dict[str, str]:
    return {"embedsearch": embedsearch.__version__, "faiss": faiss.__version__, "torch": torch.__version__,
            "timm": timm_version(), "numpy": np.__version__, "python": platform.python_version()}


def record(benchmark, threads: int, **figures) -> None:
    """Store a benchmark's parameters and derived figures, with threads and library versions.

    Raises ValueError naming any field not declared in embedsearch.fields.
    """
    undeclared = sorted(set(figures) - FIELDS.keys())
    if undeclared:
        raise ValueError(f"extra_info fields {undeclared} of {benchmark.name}: not declared in embedsearch.fields")
    benchmark.extra_info.update(figures, **{THREADS: threads, VERSIONS: library_versions()})


def median_seconds(benchmark) -> float | None:
    """The timed median in seconds, or None when pytest-benchmark is disabled (untimed run)."""
    return float(benchmark.stats.stats.median) if benchmark.stats is not None else None
