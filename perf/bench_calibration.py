"""Calibration: the machine's float32 matmul GFLOP/s and memory bandwidth, and the suite's own overhead."""

import time

import numpy as np

from embedsearch.fields import BANDWIDTH_GBS, GFLOPS, OVERHEAD
from records import median_seconds, record

MATMUL_SIZE = 2048
COPY_BYTES = 256 * 2**20


def test_matmul_gflops(benchmark, threads):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32)
    b = rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE), dtype=np.float32)
    out = np.empty_like(a)
    benchmark.group = "calibration"
    result = benchmark(np.matmul, a, b, out=out)
    np.testing.assert_allclose(result[:2, :2], a[:2] @ b[:, :2], rtol=1e-3, atol=1e-2)
    seconds = median_seconds(benchmark)
    record(benchmark, threads, size=MATMUL_SIZE, dtype="float32",
           **({GFLOPS: 2 * MATMUL_SIZE**3 / seconds / 1e9} if seconds else {}))


def test_copy_bandwidth(benchmark, threads):
    source = np.ones(COPY_BYTES // 4, dtype=np.float32)
    target = np.zeros_like(source)
    benchmark.group = "calibration"
    benchmark(np.copyto, target, source)
    assert target[-1] == 1.0
    seconds = median_seconds(benchmark)
    record(benchmark, threads, bytes=COPY_BYTES, **({BANDWIDTH_GBS: 2 * COPY_BYTES / seconds / 1e9} if seconds else {}))


def test_suite_overhead(benchmark, threads):
    """A ~1 ms operation timed by pytest-benchmark and by a bare perf_counter loop, side by side."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((384, 384), dtype=np.float32)
    b = rng.standard_normal((384, 384), dtype=np.float32)
    out = np.empty_like(a)

    def operation():
        for _ in range(8):
            np.matmul(a, b, out=out)

    def bare_median(rounds: int = 300) -> float:
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            operation()
            samples.append(time.perf_counter() - start)
        return float(np.median(samples))

    before = bare_median()
    benchmark.group = "calibration"
    benchmark(operation)
    bare = min(before, bare_median())
    seconds = median_seconds(benchmark)
    record(benchmark, threads, bare_seconds=bare, **({OVERHEAD: seconds / bare - 1} if seconds else {}))
