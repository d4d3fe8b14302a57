"""The memory pass: after timing, the operation once more, untimed, under memray (and torch.cuda's peak)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch

from embedsearch.fields import GPU_PEAK_BYTES, MEMRAY_CAPTURE, MODEL_BYTES, PEAK_BYTES, PEAK_VS_MODEL
from embedsearch.memory import profile_memory


def memory_pass(benchmark, config, operation: Callable[[], object], device: str = "cpu",
                prepare: Callable[[], object] | None = None, model_bytes: int | None = None) -> None:
    """After timing, run `operation` once more untimed under memray and store its peak bytes.

    Runs with --benchmark unless --no-perf-memory, right after the operation was timed: those
    calls warmed up one-time pools (BLAS buffers, thread pools), so they are not charged to it.
    `prepare` runs before the call (e.g. emptying an index before an add). `model_bytes`, the
    stated memory model of the operation (embedsearch.memory), is stored with peak / model.
    """
    if not config.getoption("benchmark") or config.getoption("no_perf_memory"):
        return
    if prepare is not None:
        prepare()
    folder = config.getoption("perf_memray_dir")
    capture = Path(folder) / (re.sub(r"[^A-Za-z0-9_.-]+", "_", benchmark.name) + ".bin") if folder else None
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    def run_discarding_result() -> None:
        operation()

    _, profile = profile_memory(run_discarding_result, capture)
    benchmark.extra_info[PEAK_BYTES] = profile.peak_bytes
    if model_bytes is not None:
        benchmark.extra_info.update({MODEL_BYTES: model_bytes, PEAK_VS_MODEL: profile.peak_bytes / model_bytes})
    if capture is not None:
        benchmark.extra_info[MEMRAY_CAPTURE] = str(capture)
    if cuda:
        torch.cuda.synchronize()
        benchmark.extra_info[GPU_PEAK_BYTES] = int(torch.cuda.max_memory_allocated())
