"""The planted slowdown: busy work added to every timed call, for measuring the gate only (tools/measure_gate.py)."""

from __future__ import annotations

import os
import time
from typing import Callable

from pytest_benchmark.fixture import BenchmarkFixture


def planted_slowdown() -> float:
    """The extra work to plant in every timed call, as a fraction of its time ($EMBEDSEARCH_PLANTED_SLOWDOWN).

    For measuring the gate only (tools/measure_gate.py): the library is never touched.
    """
    text = os.environ.get("EMBEDSEARCH_PLANTED_SLOWDOWN", "0")
    try:
        fraction = float(text)
    except ValueError:
        fraction = -1.0
    if not 0 <= fraction <= 10:
        raise ValueError(f"EMBEDSEARCH_PLANTED_SLOWDOWN={text!r}: expected a fraction between 0 and 10, e.g. 0.25")
    return fraction


def slowed(function: Callable, fraction: float) -> Callable:
    """`function`, followed by busy work lasting `fraction` of the time it took: a (1 + fraction) x slowdown."""
    def run(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        end = time.perf_counter()
        until = end + fraction * (end - start)
        while time.perf_counter() < until:
            pass
        return result
    return run


class SlowedBenchmark(BenchmarkFixture):
    """pytest-benchmark's fixture whose timed calls are slowed by `slowed`; given by `slow_down`."""

    planted_fraction = 0.0

    def __call__(self, function, *args, **kwargs):
        return super().__call__(slowed(function, self.planted_fraction), *args, **kwargs)

    def pedantic(self, target, *args, **kwargs):
        return super().pedantic(slowed(target, self.planted_fraction), *args, **kwargs)


def slow_down(benchmark: BenchmarkFixture, fraction: float) -> BenchmarkFixture:
    """Make every timed call of this fixture (1 + fraction) x slower (pytest-benchmark checks its type)."""
    benchmark.__class__ = SlowedBenchmark
    benchmark.planted_fraction = fraction
    return benchmark
