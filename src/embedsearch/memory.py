"""Per-stage wall time and peak memory: host peak RSS (Linux VmHWM, reset per stage) and GPU peak."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size since the last reset, in bytes (None off Linux)."""
    if not _STATUS.exists():
        return None
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux: write 5 to /proc/self/clear_refs); False if impossible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


@dataclass
class StageMeasure:
    """Wall seconds and peak memory of one stage; bytes are None where they cannot be measured."""

    seconds: float = 0.0
    peak_rss_bytes: int | None = None
    gpu_peak_bytes: int | None = None


@contextmanager
def measure_stage(device: torch.device) -> Iterator[StageMeasure]:
    """Time the enclosed block and record its peak host RSS and (on cuda) peak GPU allocation."""
    measure = StageMeasure()
    can_reset = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        yield measure
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            measure.gpu_peak_bytes = int(torch.cuda.max_memory_allocated(device))
        measure.seconds = time.perf_counter() - start
        measure.peak_rss_bytes = peak_rss_bytes() if can_reset else None
