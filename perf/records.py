"""What a benchmark records in `extra_info` beside its times: parameters, derived figures, threads, library versions."""

from __future__ import annotations

import platform

import faiss
import numpy as np
import timm
import torch

import embedsearch


def library_versions() -> dict[str, str]:
    return {"embedsearch": embedsearch.__version__, "faiss": faiss.__version__, "torch": torch.__version__,
            "timm": timm.__version__, "numpy": np.__version__, "python": platform.python_version()}


def record(benchmark, threads: int, **figures) -> None:
    """Store a benchmark's parameters and derived figures, with threads and library versions."""
    benchmark.extra_info.update(figures, threads=threads, versions=library_versions())


def median_seconds(benchmark) -> float | None:
    """The timed median in seconds, or None when pytest-benchmark is disabled (untimed run)."""
    return float(benchmark.stats.stats.median) if benchmark.stats is not None else None
