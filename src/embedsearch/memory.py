"""Memory figures: memray-tracked peak and leaked bytes of an operation, per-stage peak RSS, GPU peak."""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import memray
import torch

Result = TypeVar("Result")

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


@dataclass
class MemoryProfile:
    """What memray saw while an operation ran: bytes at the peak, bytes still held at the end."""

    peak_bytes: int
    leaked_bytes: int
    capture: Path | None  # the memray capture file, when one was kept


def profile_memory(operation: Callable[[], Result], capture: str | Path | None = None) -> tuple[Result, MemoryProfile]:
    """Run `operation` once under memray and return its result and memory profile.

    memray intercepts malloc/free/mmap in every loaded library, so native allocations (FAISS,
    OpenBLAS, torch's cpu allocator) count, not only Python objects. Only memory allocated while
    the operation runs counts; the operation's result, if kept, shows as leaked bytes.
    """
    with tempfile.TemporaryDirectory() as folder:
        path = Path(capture) if capture is not None else Path(folder) / "capture.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # memray refuses to overwrite
        with memray.Tracker(path):
            result = operation()
        reader = memray.FileReader(path)
        leaked = sum(record.size for record in reader.get_leaked_allocation_records(merge_threads=True))
        profile = MemoryProfile(int(reader.metadata.peak_memory), int(leaked), path if capture is not None else None)
        reader.close()
    return result, profile


# Runtime allowance on top of every model below: BLAS/OpenMP per-call scratch and Python objects.
RUNTIME_ALLOWANCE_BYTES = 4 * 2**20


def exact_search_model_bytes(index, nq: int, k: int) -> int:
    """Bytes an exact search of `index` allocates beyond its inputs (database and queries exist).

    FAISS Flat: results (float32 distances + int64 ids) and its BLAS distance block of
    faiss.cvar.distance_compute_blas_query_bs x distance_compute_blas_database_bs float32.
    TorchFlat: results, its score buffer (index.block_bytes) and the per-block top-k candidates
    (12 bytes each, held twice while merged). Plus RUNTIME_ALLOWANCE_BYTES.
    """
    import faiss

    from .index import TorchFlatIndex

    results = 12 * nq * k
    if isinstance(index, TorchFlatIndex):
        blocks = -(-index.ntotal // index.database_block)
        return results + index.block_bytes + 2 * 12 * nq * k * blocks + RUNTIME_ALLOWANCE_BYTES
    if index.spec == "Flat":
        block = 4 * faiss.cvar.distance_compute_blas_query_bs * faiss.cvar.distance_compute_blas_database_bs
        return results + block + RUNTIME_ALLOWANCE_BYTES
    raise ValueError(f"index spec {index.spec!r}: the exact-search model covers 'Flat' and 'TorchFlat'")
