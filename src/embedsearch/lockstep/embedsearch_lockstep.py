"""pytest plugin of an `embedsearch ab` worker: time each benchmark's rounds when the controller says.

Loaded with `-p embedsearch_lockstep` into a pytest run of one revision's suite. It is a
standalone module (pytest and pytest-benchmark only, never `embedsearch`), so it drives any
revision of the suite, one that predates it included. Over a `multiprocessing.connection` to the
controller ($EMBEDSEARCH_AB_ADDRESS, key $EMBEDSEARCH_AB_AUTHKEY) it:

1. says hello: its side, the file its `embedsearch` was imported from;
2. sends the collected test ids (and collection errors), then runs only the planned ids in the
   planned order;
3. at each benchmark's timed call, after the test's own set-up, says "ready" and then obeys:
   `calibrate` (pytest-benchmark's own calibration, or one round of a pedantic benchmark;
   returns seconds per round, iterations, and whether the benchmark fixed them),
   `rounds ITERATIONS COUNT` (returns each round's seconds per iteration, also recorded in
   pytest-benchmark's stats so the side's JSON is an ordinary run), `done`;
4. sends each test's outcome when it ends.

With $EMBEDSEARCH_AB_FORK set the worker is a template: it collects once, and for each plan it
forks a child that runs the plan (step 3 on, without a JSON file) and exits, then says "ended" and
waits for the next plan or "stop". A set-up draws its own memory placement only over memory never
used before (tools/probe_offsets.py `setup`, `setup --leak`, `fork`), and the template never sets
anything up, so each child draws fresh placements without paying for a process start and a
collection. The template runs no test, and so never starts an OpenMP thread pool that its
children would inherit broken.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import traceback
from multiprocessing.connection import Client

import pytest
from pytest_benchmark.fixture import BenchmarkFixture, PauseInstrumentation

_channel = None  # the connection to the controller, set in pytest_configure
_forked_child = False  # this process is a template's child, running one plan


def _send(*message) -> None:
    try:
        _channel.send(message)
    except OSError:
        _controller_gone()


def _receive() -> tuple:
    try:
        return _channel.recv()
    except (EOFError, OSError):
        _controller_gone()


def _controller_gone() -> None:
    """The controller died (killed, crashed): nobody will read this side's results, so stop now."""
    os._exit(3)


def pytest_configure(config: pytest.Config) -> None:
    global _channel
    address = os.environ["EMBEDSEARCH_AB_ADDRESS"]
    _channel = Client(address, authkey=bytes.fromhex(os.environ["EMBEDSEARCH_AB_AUTHKEY"]))
    try:
        import embedsearch
        imported_from = os.path.realpath(embedsearch.__file__)
    except ImportError as error:
        imported_from = f"(not importable: {error})"
    _send("hello", os.environ.get("EMBEDSEARCH_AB_SIDE", "?"), imported_from, os.getpid())
    BenchmarkFixture._raw = _lockstep_raw
    BenchmarkFixture._raw_pedantic = _lockstep_pedantic


_collection_errors: list[str] = []
_outcomes: dict[str, str] = {}  # test id -> "failed in call: ..." or "skipped"; absent means passed


def pytest_collectreport(report) -> None:
    if report.failed:
        _collection_errors.append(f"{report.nodeid}: {report.longreprtext}")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _send("collected", [item.nodeid for item in items], _collection_errors)
    message = _receive()
    if os.environ.get("EMBEDSEARCH_AB_FORK"):
        message = _fork_per_plan(message)
    if message[0] != "plan":
        raise RuntimeError(f"embedsearch ab: expected a plan from the controller, got {message[0]!r}")
    by_id = {item.nodeid: item for item in items}
    planned = [by_id[nodeid] for nodeid in message[1] if nodeid in by_id]
    dropped = [item for item in items if item.nodeid not in set(message[1])]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = planned


def _fork_per_plan(message: tuple) -> tuple:
    """Template: fork a child per plan and return the plan in the child; exit on "stop".

    A plan for a template carries a padding length: the child puts that many bytes into its
    environment before anything else, as the controller does for a started worker, so that each
    child's heap layout is drawn afresh instead of all children sharing their template's."""
    global _forked_child
    gc.collect()
    gc.freeze()  # the children's collections leave the template's objects (and their pages) alone
    while message[0] == "plan":
        sys.stdout.flush()
        sys.stderr.flush()
        child = os.fork()
        if child == 0:
            _forked_child = True
            os.environ["EMBEDSEARCH_AB_LAYOUT"] = "." * message[2]
            return message
        _, status = os.waitpid(child, 0)
        _send("ended", os.waitstatus_to_exitcode(status))
        message = _receive()
    if message[0] != "stop":
        raise RuntimeError(f"embedsearch ab: expected a plan or stop from the controller, got {message[0]!r}")
    sys.stdout.flush()
    os._exit(0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtestloop(session: pytest.Session):
    outcome = yield
    if _forked_child:  # the plan is run: end without the session's teardown, reports or JSON file
        if outcome.excinfo is not None:
            traceback.print_exception(outcome.excinfo[1])
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0 if outcome.excinfo is None else 3)


def pytest_runtest_logreport(report) -> None:
    if report.failed:
        _outcomes[report.nodeid] = f"failed in {report.when}: {report.longreprtext[-1500:]}"
    elif report.skipped and report.nodeid not in _outcomes:
        _outcomes[report.nodeid] = "skipped"


def pytest_runtest_logfinish(nodeid: str, location) -> None:
    _send("finished", nodeid, _outcomes.get(nodeid, "passed"))


def _serve(fixture: BenchmarkFixture, calibrate, run_rounds) -> None:
    """Answer the controller's commands for one benchmark until it says done."""
    _send("ready", fixture.fullname)
    stats = None
    while True:
        command = _receive()
        if command[0] == "calibrate":
            seconds, iterations, fixed = calibrate()
            _send("calibrated", seconds, iterations, fixed)
        elif command[0] == "rounds":
            _, iterations, count = command
            if stats is None:
                stats = fixture._make_stats(iterations)
            durations = run_rounds(iterations, count)
            for duration in durations:
                stats.update(duration)
            _send("times", [duration / iterations for duration in durations])
        elif command[0] == "done":
            return
        else:
            raise RuntimeError(f"embedsearch ab: unknown command {command[0]!r}")


def _lockstep_raw(self: BenchmarkFixture, function_to_benchmark, *args, **kwargs):
    if self.disabled:
        return function_to_benchmark(*args, **kwargs)
    runner = self._make_runner(function_to_benchmark, args, kwargs)

    def calibrate():
        with PauseInstrumentation():
            duration, iterations, loops_range = self._calibrate_timer(runner)
            if self._warmup:
                runner(loops_range)
        return duration, iterations, False

    def run_rounds(iterations, count):
        with PauseInstrumentation():
            return [runner(range(iterations)) for _ in range(count)]

    _serve(self, calibrate, run_rounds)
    return function_to_benchmark(*args, **kwargs)


def _lockstep_pedantic(self: BenchmarkFixture, target, args=(), kwargs=None, setup=None, teardown=None, rounds=1,
                       warmup_rounds=0, iterations=1):
    kwargs = kwargs or {}
    if not isinstance(iterations, int) or iterations < 1 or (iterations > 1 and setup):
        raise ValueError(f"pedantic iterations={iterations!r}: expected a positive int, 1 with a setup function")

    def arguments():
        if setup:
            made = setup()
            if made:
                return made
        return args, kwargs

    if self.disabled:
        call_args, call_kwargs = arguments()
        return target(*call_args, **call_kwargs)
    result = []

    def one_round() -> float:
        call_args, call_kwargs = arguments()
        runner = self._make_runner(target, call_args, call_kwargs)
        with PauseInstrumentation():
            if iterations > 1:
                duration = runner(range(iterations))
            else:
                duration, value = runner(None)
                result[:] = [value]
        if teardown is not None:
            teardown(*call_args, **call_kwargs)
        return duration

    def calibrate():
        for _ in range(warmup_rounds):
            one_round()
        start = time.perf_counter()
        one_round()
        return time.perf_counter() - start, iterations, True  # the benchmark fixed its iterations

    def run_rounds(_, count):
        return [one_round() for _ in range(count)]

    _serve(self, calibrate, run_rounds)
    if not result:
        call_args, call_kwargs = arguments()
        result[:] = [target(*call_args, **call_kwargs)]
    return result[0]
