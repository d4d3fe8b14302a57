"""Where a benchmark run's time goes: a pytest plugin timing each phase of the suite, in wall and CPU seconds.

    PYTHONPATH=src:tools python -m pytest --benchmark -p phase_times [--durations=0] [pytest args]

It wraps the functions that make up each phase (data generation, ground truth, index builds,
pytest-benchmark's calibration and rounds, memory passes, single-query latency, ...) and, at the
end of the session, prints each phase's exclusive seconds (a phase nested in another is charged to
itself only) and its share of the tests' total, then the share of each benchmark file. `--durations=0`
adds pytest's per-test listing. With $PHASE_TIMES_JSON set, the totals and the per-test figures are
also written to that file as JSON.

CPU seconds are this process's (`time.process_time`: every thread, not Ray's worker processes). A
process stopped (SIGSTOP) or starved on a shared machine loses wall time but no CPU time, so on a
loaded machine read the CPU shares; the two differ for multithreaded phases (up to `threads` CPU
seconds per wall second). Instrumentation only, not part of the suite.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))  # the suite's modules, as pytest imports them

import embedsearch.data  # noqa: E402
import embedsearch.embed  # noqa: E402
import embedsearch.index  # noqa: E402
import embedsearch.metrics  # noqa: E402
import pytest_benchmark.fixture  # noqa: E402

import data_cache  # noqa: E402
import memory_pass  # noqa: E402
import timed_call  # noqa: E402

REST = "the rest: set-up, checks, records, imports"
_totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])  # phase -> [wall s, CPU s]
_by_test: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
_nested: list[list[float]] = []  # per open phase: [wall s, CPU s] of the phases nested in it
_test: list[str] = ["(outside tests)"]
_timed_depth = [0]  # open timed-round phases: what runs inside them is timed rounds, whatever it calls
TIMED_ROUNDS = "timed rounds and the result call"
CALIBRATION = "pytest-benchmark's calibration"


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _charge(phase: str, wall: float, cpu: float) -> None:
    for table in (_totals[phase], _by_test[_test[0]][phase]):
        table[0] += wall
        table[1] += cpu


def timed_phase(owner: object, name: str, phase: str) -> None:
    """Replace owner.name by a wrapper that charges its exclusive wall and CPU seconds to `phase`.

    Inside pytest-benchmark's rounds every call is charged to the rounds (the end-to-end round loads
    a model and builds an index), except the calibration, which is charged to itself.
    """
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if _timed_depth[0] and phase != CALIBRATION:
            return original(*args, **kwargs)
        wall0, cpu0 = _now()
        _nested.append([0.0, 0.0])
        _timed_depth[0] += phase == TIMED_ROUNDS
        try:
            return original(*args, **kwargs)
        finally:
            _timed_depth[0] -= phase == TIMED_ROUNDS
            wall1, cpu1 = _now()
            nested_wall, nested_cpu = _nested.pop()
            _charge(phase, wall1 - wall0 - nested_wall, cpu1 - cpu0 - nested_cpu)
            if _nested:
                _nested[-1][0] += wall1 - wall0
                _nested[-1][1] += cpu1 - cpu0

    setattr(owner, name, wrapper)


PHASES = [  # (owner, attribute, phase), wrapped before the suite's modules import them by name
    (embedsearch.data, "synthetic_embeddings", "data generation"),
    (data_cache.DataCache, "ground_truth", "ground truth and val neighbours"),
    (data_cache.DataCache, "val_neighbors", "ground truth and val neighbours"),
    (embedsearch.metrics, "dataset_difficulty", "LID and relative contrast"),
    (embedsearch.index, "build_index", "index builds outside the timing"),
    (embedsearch.embed, "load_model", "model loads"),
    (timed_call, "time_operation", "warm-up call (time_operation)"),
    (pytest_benchmark.fixture.BenchmarkFixture, "_calibrate_timer", CALIBRATION),
    (pytest_benchmark.fixture.BenchmarkFixture, "__call__", TIMED_ROUNDS),
    (pytest_benchmark.fixture.BenchmarkFixture, "pedantic", TIMED_ROUNDS),
    (memory_pass, "memory_pass", "memory passes"),
    (embedsearch.metrics, "single_query_latency", "single-query latency"),
]
for _owner, _name, _phase in PHASES:
    timed_phase(_owner, _name, _phase)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Wrap the phases that live in benchmark modules (imported only at collection)."""
    modules = {item.module.__name__.rsplit(".", 1)[-1]: item.module for item in items if isinstance(item, pytest.Function)}
    wrapped = [("bench_embed", "compare_to_fp32", "bf16 embedding's kNN top-1 check"),
               ("bench_distributed", "paired_ratio", "Ray: paired ratio to in-process search"),
               ("bench_distributed", "connect", "Ray: cluster start"),
               ("bench_distributed", "build_sharded_index", "Ray: sharded index builds")]
    for module_name, name, phase in wrapped:
        if module_name in modules and hasattr(modules[module_name], name):
            timed_phase(modules[module_name], name, phase)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    """Charge each test's time outside every phase to REST."""
    _test[0] = item.nodeid
    wall0, cpu0 = _now()
    _nested.append([0.0, 0.0])
    yield
    wall1, cpu1 = _now()
    nested_wall, nested_cpu = _nested.pop()
    _charge(REST, wall1 - wall0 - nested_wall, cpu1 - cpu0 - nested_cpu)
    _test[0] = "(outside tests)"


def pytest_terminal_summary(terminalreporter) -> None:
    total_wall = sum(wall for wall, _ in _totals.values()) or 1.0
    total_cpu = sum(cpu for _, cpu in _totals.values()) or 1.0
    write = terminalreporter.write_line
    terminalreporter.section("phase times (exclusive; tests only)")
    write(f"{'phase':<45} {'wall s':>9} {'share':>6} {'CPU s':>9} {'share':>6}")
    for phase, (wall, cpu) in sorted(_totals.items(), key=lambda item: -item[1][1]):
        write(f"{phase:<45} {wall:9.1f} {wall / total_wall:6.1%} {cpu:9.1f} {cpu / total_cpu:6.1%}")
    write(f"{'total':<45} {total_wall:9.1f} {'':>6} {total_cpu:9.1f}")
    by_file: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for test, phases in _by_test.items():
        name = test.split("::")[0]
        by_file[name][0] += sum(wall for wall, _ in phases.values())
        by_file[name][1] += sum(cpu for _, cpu in phases.values())
    write("")
    write(f"{'file':<45} {'wall s':>9} {'share':>6} {'CPU s':>9} {'share':>6}")
    for name, (wall, cpu) in sorted(by_file.items(), key=lambda item: -item[1][1]):
        write(f"{name:<45} {wall:9.1f} {wall / total_wall:6.1%} {cpu:9.1f} {cpu / total_cpu:6.1%}")
    if os.environ.get("PHASE_TIMES_JSON"):
        Path(os.environ["PHASE_TIMES_JSON"]).write_text(json.dumps(
            {"totals": {phase: {"wall_s": wall, "cpu_s": cpu} for phase, (wall, cpu) in _totals.items()},
             "by_test": {test: {phase: {"wall_s": wall, "cpu_s": cpu} for phase, (wall, cpu) in phases.items()}
                         for test, phases in _by_test.items()}}, indent=1))
