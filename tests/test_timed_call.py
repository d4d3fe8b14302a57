"""perf/timed_call.py: a warm-up call, then pytest-benchmark's calibrated rounds, or at least 3 rounds of a slow call."""

from decimal import Decimal

import pytest
import timed_call
from timed_call import SLOW_MIN_ROUNDS, time_operation


class FakeConfig:
    """pytest's config with pytest-benchmark's options: --benchmark-max-time's default is the string "1.0"."""

    def __init__(self, max_time="1.0", min_rounds: int = 5):
        self.options = {"benchmark_max_time": max_time, "benchmark_min_rounds": min_rounds}

    def getoption(self, name):
        return self.options[name]


class FakeBenchmark:
    """Records how it was asked to time; runs the operation once per call, as pytest-benchmark's result call does."""

    def __init__(self, disabled: bool = False):
        self.disabled = disabled
        self.timed = []

    def __call__(self, operation, *args):
        self.timed.append(("calibrated",))
        return operation(*args)

    def pedantic(self, operation, args=(), rounds=1):
        self.timed.append(("pedantic", rounds))
        return [operation(*args) for _ in range(rounds)][-1]


def counting_operation():
    calls = []

    def operation(value):
        calls.append(value)
        return len(calls)
    return operation, calls


def warm_up_taking(monkeypatch, seconds: float) -> None:
    """Make the warm-up call appear to take `seconds` (perf_counter reads 0, then `seconds`)."""
    readings = iter([0.0, seconds])
    monkeypatch.setattr(timed_call.time, "perf_counter", lambda: next(readings))


def test_untimed_the_operation_runs_once_without_a_warm_up():
    operation, calls = counting_operation()
    benchmark = FakeBenchmark(disabled=True)
    assert time_operation(benchmark, FakeConfig(), operation, "x") == 1
    assert calls == ["x"] and benchmark.timed == [("calibrated",)]


@pytest.mark.parametrize("seconds", [0.001, 0.2])  # 1000 and 5 rounds fit max_time: min_rounds does not bind
def test_a_fast_operation_keeps_pytest_benchmarks_calibrated_timing_after_a_warm_up(monkeypatch, seconds):
    operation, calls = counting_operation()
    benchmark = FakeBenchmark()
    warm_up_taking(monkeypatch, seconds)
    assert time_operation(benchmark, FakeConfig(), operation, "x") == 2
    assert calls == ["x", "x"] and benchmark.timed == [("calibrated",)]


@pytest.mark.parametrize("seconds, rounds", [(0.25, 4), (0.34, 3), (0.5, SLOW_MIN_ROUNDS), (2.0, SLOW_MIN_ROUNDS)])
def test_a_slow_operation_is_timed_for_max_time_in_rounds_of_one_call_at_least_three(monkeypatch, seconds, rounds):
    operation, calls = counting_operation()
    benchmark = FakeBenchmark()
    warm_up_taking(monkeypatch, seconds)
    assert time_operation(benchmark, FakeConfig(), operation, "x") == 1 + rounds  # the last round's result
    assert len(calls) == 1 + rounds and benchmark.timed == [("pedantic", rounds)]


def test_a_longer_max_time_gives_a_slow_operation_more_rounds(monkeypatch):
    operation, _ = counting_operation()
    benchmark = FakeBenchmark()
    warm_up_taking(monkeypatch, 2.0)
    time_operation(benchmark, FakeConfig(max_time=Decimal("20"), min_rounds=15), operation, "x")  # as given
    assert benchmark.timed == [("pedantic", 10)]
