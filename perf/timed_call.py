"""How the suite times an operation: one warm-up call, then pytest-benchmark's rounds, at least 3 of a slow one."""

from __future__ import annotations

import math
import time
from typing import Callable

import pytest

SLOW_MIN_ROUNDS = 3  # least rounds of an operation too slow for pytest-benchmark's min_rounds to fit in max_time


def time_operation(benchmark, config: pytest.Config, operation: Callable, *args):
    """Time `operation(*args)` after one untimed warm-up call (thread pools, BLAS buffers, caches); return its result.

    pytest-benchmark times ceil(max_time / t) rounds of a call of t seconds, but at least
    --benchmark-min-rounds (5), plus a calibration call and a call for the result: a 2 s
    operation takes 14 s for 10 s of rounds. When the warm-up shows that min_rounds would bind,
    the operation is timed as `benchmark.pedantic` rounds of one call, ceil(max_time / t) but at
    least SLOW_MIN_ROUNDS, the last round's result returned. Faster operations keep
    pytest-benchmark's calibrated timing. Untimed (benchmark disabled), the operation runs once.
    """
    if benchmark.disabled:
        return benchmark(operation, *args)
    start = time.perf_counter()
    operation(*args)
    warm_up_seconds = time.perf_counter() - start
    max_time = float(config.getoption("benchmark_max_time"))  # its default is the string "1.0"
    rounds = math.ceil(max_time / max(warm_up_seconds, 1e-9))
    if rounds >= config.getoption("benchmark_min_rounds"):
        return benchmark(operation, *args)
    return benchmark.pedantic(operation, args=args, rounds=max(rounds, SLOW_MIN_ROUNDS))
