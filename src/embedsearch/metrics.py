"""Search quality and speed figures: recall@k, throughput, GFLOP/s, and machine calibration."""

from __future__ import annotations

import time

import numpy as np


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray, k: int | None = None) -> float:
    """Return the mean fraction of the true k nearest ids found among the first k found ids."""
    found_ids, true_ids = np.asarray(found_ids), np.asarray(true_ids)
    if found_ids.ndim != 2 or true_ids.ndim != 2 or found_ids.shape[0] != true_ids.shape[0]:
        raise ValueError(
            f"found_ids {found_ids.shape} and true_ids {true_ids.shape}: expected (nq, k) arrays with equal nq"
        )
    k = min(found_ids.shape[1], true_ids.shape[1]) if k is None else k
    if not 1 <= k <= min(found_ids.shape[1], true_ids.shape[1]):
        raise ValueError(f"k={k}: expected 1 <= k <= {min(found_ids.shape[1], true_ids.shape[1])}")
    hits = sum(np.intersect1d(found[:k], true[:k]).size for found, true in zip(found_ids, true_ids))
    return hits / (k * found_ids.shape[0])


def per_second(count: float, seconds: float) -> float:
    """Return count / seconds (queries/s, vectors/s, images/s)."""
    if seconds <= 0:
        raise ValueError(f"seconds={seconds!r}: expected a positive duration")
    return count / seconds


def exact_search_gflops(n: int, d: int, nq: int, seconds: float) -> float:
    """Return GFLOP/s of exact search: 2 * n * d * nq floating-point operations in `seconds`."""
    return per_second(2.0 * n * d * nq, seconds) / 1e9


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Return the best float32 NumPy matrix-product GFLOP/s over `repeats` size x size products."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * size**3 / best / 1e9


def _timed(operation) -> float:
    start = time.perf_counter()
    operation()
    return time.perf_counter() - start
