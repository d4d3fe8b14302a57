import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from embedsearch import cli
from embedsearch.ab import ABError, Worker, estimate, judge, looks, run_pairs, time_verdict
from embedsearch.compare import Thresholds, format_report
from embedsearch.stats import PairedEstimate

ROOT = Path(__file__).resolve().parents[1]
# FAISS Flat and TorchFlat, 5000 x 64, one thread: a 2-thread OpenMP search stalls whenever other jobs take a core
# FAISS Flat only, its module named: a worker that collects only it starts seconds sooner
SMALL = ["--perf-tier=smoke", "--no-perf-memory", "--perf-threads=1", "-k", "test_brute_force and not Torch",
         "perf/bench_brute_force.py"]


class FakeWorker:
    """A worker whose rounds take `seconds` per iteration times log-normal noise: answers the lockstep protocol."""

    def __init__(self, seconds: float, noise: float, seed: int, cold_batches: int = 0, cold_calibration: float = 1):
        self.seconds, self.noise, self.rng = seconds, noise, np.random.default_rng(seed)
        self.cold_batches = cold_batches  # the first batches take 5x as long: caches and pages still cold
        self.cold_calibration = cold_calibration  # calibration's time per iteration, relative to a warm one
        self.replies: list[tuple] = []
        self.commands: list[tuple] = []
        self.paused = False
        self.other: FakeWorker | None = None
        self.timed_with_other_paused: list[bool] = []

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    def send(self, *message) -> None:
        assert not self.paused, f"{message} sent to a paused worker"
        self.commands.append(message)
        if message[0] in ("calibrate", "rounds"):
            self.timed_with_other_paused.append(self.other.paused)
        if message[0] == "calibrate":
            self.replies.append(("calibrated", self.cold_calibration * self.seconds * 2, 2, False))
        elif message[0] == "rounds":
            cold = 5 if self.cold_batches > 0 else 1
            self.cold_batches -= 1
            self.replies.append(("times", list(cold * self.seconds * np.exp(self.rng.normal(0, self.noise, message[2])))))

    def receive(self) -> tuple:
        return self.replies.pop(0)


def paired_run(head_seconds: float, noise: float, seed: int, head_cold_batches: int = 0):
    workers = {"base": FakeWorker(1e-3, noise, seed),
               "head": FakeWorker(head_seconds, noise, seed + 1, cold_batches=head_cold_batches)}
    workers["base"].other, workers["head"].other = workers["head"], workers["base"]
    benchmark = run_pairs(workers, "perf/bench_x.py::test_x", random.Random(seed), pairs=10, max_pairs=40,
                          min_effect=0.05, alpha=0.05 / 40 / 3)
    return benchmark, workers


def test_lockstep_pairs_come_in_blocks_of_both_orders_with_equal_iterations():
    benchmark, workers = paired_run(1e-3, 0.01, seed=0)
    assert benchmark.iterations == {"base": 2, "head": 2}
    assert benchmark.rounds_per_batch == 20  # 0.04 s batches of 2 ms rounds
    firsts = [pair["first"] for pair in benchmark.pairs]
    assert all({firsts[i], firsts[i + 1]} == {"base", "head"} for i in range(0, len(firsts), 2))
    assert len({tuple(firsts[i:i + 2]) for i in range(0, len(firsts), 2)}) == 2  # the blocks' order is random
    assert all(command == ("rounds", 2, 20) for worker in workers.values() for command in worker.commands[1:-1])
    assert [worker.commands[-1] for worker in workers.values()] == [("done",), ("done",)]


def test_the_warmup_block_is_run_first_and_left_out_of_the_verdict():
    benchmark, _ = paired_run(1e-3, 0.01, seed=4, head_cold_batches=2)
    assert len(benchmark.warmup) == 2 and {pair["first"] for pair in benchmark.warmup} == {"base", "head"}
    assert all(np.median(pair["head"]) > 4e-3 for pair in benchmark.warmup)  # the head's two cold batches
    assert time_verdict(estimate(benchmark, 0.05 / 40 / 3), 0.05) == "same"
    assert len(benchmark.pairs) == 10


def test_batches_are_sized_from_the_warm_rounds_not_a_cold_calibration():
    workers = {role: FakeWorker(1e-3, 0.01, seed, cold_calibration=10) for seed, role in enumerate(("base", "head"))}
    workers["base"].other, workers["head"].other = workers["head"], workers["base"]
    benchmark = run_pairs(workers, "perf/bench_x.py::test_x", random.Random(0), pairs=10, max_pairs=40,
                          min_effect=0.05, alpha=0.05 / 40 / 3)
    assert {command[2] for worker in workers.values() for command in worker.commands if command[0] == "rounds"} == {2, 20}
    assert benchmark.rounds_per_batch == 20  # 0.04 s of warm 2 ms rounds; the cold calibration said 20 ms
    assert all(len(pair["base"]) == 20 for pair in benchmark.pairs)


def test_only_the_timed_side_runs_and_both_resume_at_the_end():
    benchmark, workers = paired_run(1e-3, 0.01, seed=3)
    for worker in workers.values():
        # calibration, then one batch per pair, warm-up included
        assert len(worker.timed_with_other_paused) == 1 + len(benchmark.warmup) + len(benchmark.pairs)
        assert all(worker.timed_with_other_paused)
        assert not worker.paused


def test_a_benchmark_failing_while_timed_ends_the_run_with_its_failure():
    workers = {"base": FakeWorker(1e-3, 0.01, 1), "head": FakeWorker(1e-3, 0.01, 2)}
    workers["base"].other, workers["head"].other = workers["head"], workers["base"]
    failing = workers["head"].send

    def send(*message) -> None:  # head's rounds raise: its test ends and says so instead of sending times
        failing(*message)
        if message[0] == "rounds":
            workers["head"].replies[-1] = ("finished", "perf/bench_x.py::test_x", "failed in call: MemoryError")

    workers["head"].send = send
    with pytest.raises(ABError, match=r"the head worker ended its benchmark while being timed \(rounds\): "
                                      r"perf/bench_x.py::test_x failed in call: MemoryError"):
        run_pairs(workers, "perf/bench_x.py::test_x", random.Random(1), pairs=4, max_pairs=4, min_effect=0.05,
                  alpha=0.05)
    assert not workers["base"].paused and not workers["head"].paused  # both resumed for the workers' stop


def test_every_worker_gets_its_own_random_layout_padding(monkeypatch, tmp_path):
    from embedsearch.ab import LAYOUT_PADDING, Side

    environments = []

    class Recorded:
        def __init__(self, command, env, **_):
            environments.append(env)

    monkeypatch.setattr(subprocess, "Popen", Recorded)
    side = Side("base", "HEAD", "0" * 40, tmp_path)
    for _ in range(8):
        Worker(side, [], tmp_path, "address", b"key", {})
    lengths = [len(env["EMBEDSEARCH_AB_LAYOUT"]) for env in environments]
    assert all(0 <= length < LAYOUT_PADDING for length in lengths)
    assert len(set(lengths)) > 1


def test_a_forked_child_ending_before_its_pass_is_done_is_reported_with_its_exit_status(tmp_path):
    from multiprocessing import Pipe

    from embedsearch.ab import Side

    worker = object.__new__(Worker)  # the message handling of a worker, without a pytest run behind it
    worker.side, worker.log_path = Side("head", "HEAD", "0" * 40, tmp_path), tmp_path / "head.log"
    worker.log_path.write_text("Fatal Python error: Segmentation fault\n")
    worker.connection, template = Pipe()
    template.send(("ended", -11))  # the template's child died in the middle of a benchmark
    with pytest.raises(ABError, match=r"(?s)the head worker sent 'ended' \(its pass's child exited with -11\).*Segmentation"):
        worker.receive()
    template.send(("ready", "perf/b.py::x"))
    with pytest.raises(ABError, match="the head worker sent 'ready', expected the end of its pass"):
        worker.receive(end_of_pass=True)
    template.send(("ended", 0))
    assert worker.receive(end_of_pass=True) == ("ended", 0)


def process_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_paused_worker_is_stopped_with_its_children_and_stop_still_ends_it():
    worker = object.__new__(Worker)  # the process handling of a worker, without a pytest run behind it
    worker.connection = None
    worker.process = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], process_group=0)
    time.sleep(0.3)
    child = int(subprocess.run(["pgrep", "-P", str(worker.process.pid)], capture_output=True, text=True).stdout.split()[0])
    worker.pause()
    time.sleep(0.3)
    assert process_state(worker.process.pid) == "T" and process_state(child) == "T"
    worker.resume()
    time.sleep(0.3)
    assert process_state(worker.process.pid) == "S" and process_state(child) == "S"
    worker.pause()
    worker.stop()  # resumes, then SIGTERM: a stopped process would never act on it
    assert worker.process.returncode is not None


def test_sequential_pairs_stop_early_when_clear_and_extend_for_suspects():
    same, _ = paired_run(1e-3, 0.02, seed=1)
    assert len(same.pairs) == 10  # clearly the same: no more pairs
    slower, _ = paired_run(1.20e-3, 0.02, seed=2)
    assert len(slower.pairs) == 10  # clearly slower at the first look
    suspect, _ = paired_run(1.04e-3, 0.05, seed=3)
    assert len(suspect.pairs) in (20, 40)  # between: doubled, up to 40
    assert looks(10, 40) == 3 and looks(10, 10) == 1 and looks(6, 20) == 3


@pytest.mark.parametrize("estimate, verdict", [
    (PairedEstimate(10, 1.20, 1.10, 1.30), "slower"),
    (PairedEstimate(10, 1.03, 1.01, 1.05), "unsure"),  # significant, below the 5% minimum effect
    (PairedEstimate(10, 1.20, 0.95, 1.50), "same"),  # large but not significant
    (PairedEstimate(10, 0.80, 0.70, 0.90), "faster"),
])
def test_time_verdict_needs_the_bound_and_the_minimum_effect(estimate, verdict):
    assert time_verdict(estimate, 0.05) == verdict


def test_judge_decides_suspects_on_their_confirmation_passes_and_others_on_the_first_pass():
    from embedsearch.ab import PairedBenchmark, Session, Side
    from saved_runs import make_run

    def paired(name: str, ratio: float) -> PairedBenchmark:  # 20 pairs with almost no noise
        return PairedBenchmark(name, {"base": 1, "head": 1}, 1, [
            {"first": first, "base": [1e-3], "head": [ratio * 1e-3 * (1 + 1e-6 * (-1) ** i)]}
            for i in range(10) for first in ("base", "head")])

    def session(ratios: dict[str, float]) -> Session:
        return Session([paired(f"perf/b.py::{name}", ratio) for name, ratio in ratios.items()], [], [], runs, 1e-3)

    runs = {role: make_run({name: ([1.0], {}) for name in "xyzwvus"}) for role in ("base", "head")}
    first = session({"x": 1.2, "y": 1.2, "z": 1.02, "w": 0.8, "v": 0.8, "u": 0.8, "s": 1.2})
    x_again, y_again = [1.2, 1.21, 1.19, 1.2], [1.0, 1.01, 0.99, 1.0]  # y: the first pass's 1.2 was its processes'
    v_again = [0.8, 0.79, 0.81, 0.8]
    u_again = [1.2, 1.19, 1.21, 1.2]  # u: slower, though its first pass's processes made it read faster
    s_again = [1.03, 1.031, 1.029, 1.03]  # s: surely slower, by less than the minimum effect
    confirmations = [session({"x": x, "y": y, "v": v, "u": u, "s": s_}).paired
                     for x, y, v, u, s_ in zip(x_again, y_again, v_again, u_again, s_again)]
    sides = [Side(role, role, role * 10, Path(".")) for role in ("base", "head")]
    report = judge(*sides, first, confirmations, 0.05, Thresholds())
    found = {c.name.split("::")[1]: c for c in report.comparisons}
    logs = np.log(x_again)
    half_width = 2.353363435 * logs.std(ddof=1) / 2  # t with 3 degrees of freedom, one-sided 0.05
    x, y, z, w, v, u, s = (found[name] for name in "xyzwvus")
    assert (x.verdict, x.regression, x.pairs) == ("slower", True, 80)
    assert x.ratio == pytest.approx(math.exp(logs.mean())) and x.low == pytest.approx(math.exp(logs.mean() - half_width))
    assert [round(p.ratio, 4) for p in x.passes] == [1.2, *x_again]
    assert (y.verdict, y.regression) == ("same", False) and y.ratio == pytest.approx(1.0, abs=1e-4)
    assert (v.verdict, v.regression) == ("faster", False) and v.ratio == pytest.approx(math.exp(np.log(v_again).mean()))
    assert (u.verdict, u.regression) == ("slower", True) and u.ratio == pytest.approx(math.exp(np.log(u_again).mean()))
    assert (s.verdict, s.regression) == ("unsure", False) and s.ratio == pytest.approx(1.03, abs=1e-3)
    # without confirmation passes: judged on the first pass, which finds a benchmark neither slower nor faster
    assert (z.verdict, z.passes, w.verdict) == ("unsure", (), "unsure")
    assert "(passes 1.200, 1.200, 1.210, 1.190, 1.200)" in format_report(report)
    assert "-> REGRESSION" in format_report(report)
    # without confirmation passes nothing is slower, whatever the minimum effect
    from embedsearch.ab import time_comparisons
    assert [c.verdict for c in time_comparisons(first.paired, 1e-3, [], 0.01, {})] == ["unsure"] * 7


def test_wall_time_summary_splits_the_run_into_the_first_pass_and_each_looks_passes():
    from embedsearch.ab import CONFIRMATIONS, MORE_CONFIRMATIONS, ABResult, wall_time_summary

    def result(confirmations: list[list[str]], pass_seconds: list[float]) -> ABResult:
        return ABResult(base=None, head=None, report=None, benchmarks=[], confirmations=confirmations, added=[],
                        removed=[], seconds=500.0, first_pass_seconds=147.0, pass_seconds=pass_seconds, saved=[],
                        settings={})

    first_look = [25.0, 28.0] + [26.0] * (CONFIRMATIONS - 2)
    second_look = [10.0] * (MORE_CONFIRMATIONS - 1) + [13.0]
    both_looks = result([["a", "b"]] * CONFIRMATIONS + [["a"]] * MORE_CONFIRMATIONS, first_look + second_look)
    first_look_line = f"first look {CONFIRMATIONS} passes of 2 suspect(s), {sum(first_look):.0f} s (25-28 s each)"
    assert wall_time_summary(both_looks) == (
        f"500 s: first pass 147 s; {first_look_line}; second look {MORE_CONFIRMATIONS} passes of 1 suspect(s), "
        f"{sum(second_look):.0f} s (10-13 s each)")
    no_second_look = result([["a", "b"]] * CONFIRMATIONS, first_look)
    assert wall_time_summary(no_second_look) == f"500 s: first pass 147 s; {first_look_line}"
    assert wall_time_summary(result([], [])) == "500 s: first pass 147 s"


def test_suspects_are_the_benchmarks_beyond_a_share_of_the_minimum_effect_either_way():
    from embedsearch.ab import SUSPECT_SHARE, PairedBenchmark, suspect_names

    def paired(name: str, ratio: float) -> PairedBenchmark:
        return PairedBenchmark(name, {"base": 1, "head": 1}, 1, [
            {"first": first, "base": [1e-3], "head": [ratio * 1e-3]} for _ in range(5) for first in ("base", "head")])

    limit = 1 + SUSPECT_SHARE * 0.05
    ratios = {"slower": limit * 1.001, "faster": 1 / (limit * 1.001), "inside": limit / 1.001,
              "inside_faster": 1.001 / limit}
    assert suspect_names([paired(name, ratio) for name, ratio in ratios.items()], 0.05) == ["slower", "faster"]


def spread_passes(ratio: float, spread: float, count: int) -> list[PairedEstimate]:
    """Pass estimates alternating ratio x (1 + spread) and ratio / (1 + spread)."""
    return [PairedEstimate(4, ratio * (1 + spread) ** (-1) ** i, 0.0, math.inf) for i in range(count)]


def test_confirmed_is_bonferroni_over_the_first_look_and_all_passes_with_the_chosen_looks_estimate():
    from embedsearch.ab import CONFIRMATIONS, LOOKS, confirmed
    from embedsearch.stats import across_passes

    first_look = spread_passes(1.10, 0.15, CONFIRMATIONS)
    found, p_value = confirmed(first_look, first_look, True)
    assert p_value == pytest.approx(LOOKS * across_passes(first_look, 0.05)[1])
    assert found.ratio == pytest.approx(1.10)
    everything = first_look + spread_passes(1.20, 0.05, 12)  # a tighter second look wins, with its estimate
    found, p_value = confirmed(first_look, everything, True)
    assert p_value == pytest.approx(LOOKS * across_passes(everything, 0.05)[1]) and p_value < 0.001
    assert found.ratio == pytest.approx(across_passes(everything, 0.05)[0].ratio) and found.ratio > 1.10
    tight_first = spread_passes(1.10, 0.01, CONFIRMATIONS)  # a tight first look, a wide second: the first wins
    found, p_value = confirmed(tight_first, tight_first + spread_passes(1.0, 0.3, 12), True)
    assert p_value == pytest.approx(LOOKS * across_passes(tight_first, 0.05)[1])
    assert found.ratio == pytest.approx(1.10)
    assert confirmed(first_look, everything, False)[1] == 1.0  # "faster": the other tail, capped at 1


def test_undecided_suspects_are_those_still_leaning_without_a_clear_verdict():
    from embedsearch.ab import CONFIRMATIONS, confirmed, undecided

    estimates = {"wide": spread_passes(1.10, 0.15, CONFIRMATIONS),  # leans slower, not significant: more passes
                 "clear": spread_passes(1.20, 0.01, CONFIRMATIONS),  # significant beyond 5%: decided
                 "small": spread_passes(1.01, 0.15, CONFIRMATIONS),  # leans below 2.5%: decided "same"
                 "wide_faster": spread_passes(1 / 1.10, 0.15, CONFIRMATIONS),  # leans faster: no second look
                 "clear_below": spread_passes(1.04, 0.001, CONFIRMATIONS)}  # significant short of 5%: more passes
    assert undecided(estimates, 0.05) == ["clear_below", "wide"]
    # Benjamini-Hochberg's level, not Bonferroni's: of 2 slower suspects, one with p between
    # alpha / 2 and alpha is rejected (decided) beside one with a tiny p; a suspect with one pass is left out
    between = spread_passes(1.07, 0.05, CONFIRMATIONS)
    assert 0.05 / 2 < confirmed(between, between, True)[1] < 0.05
    estimates = {"between": between, "clear": estimates["clear"], "one_pass": estimates["clear"][:1]}
    assert undecided(estimates, 0.05) == []
    # every suspect is in both families: beside a suspect leaning faster (its "slower" p near 1),
    # "between" is rank 1 of 2 in the slower family (line alpha / 2), so not rejected: undecided
    loose_faster = spread_passes(1 / 1.02, 0.2, CONFIRMATIONS)
    assert confirmed(loose_faster, loose_faster, True)[1] > 0.05
    assert undecided({"between": between, "loose_faster": loose_faster}, 0.05) == ["between"]
    weaker = spread_passes(1.06, 0.07, CONFIRMATIONS)  # p over alpha: undecided even alone
    assert confirmed(weaker, weaker, True)[1] > 0.05
    assert undecided({"weaker": weaker}, 0.05) == ["weaker"]


def test_a_suspect_the_first_look_rejects_stays_rejected_after_the_second():
    """`undecided`'s claim, on random suspects: whoever Benjamini-Hochberg rejects at the first look
    is still rejected once the undecided have had their second look (`time_comparisons`)."""
    from embedsearch.ab import CONFIRMATIONS, MORE_CONFIRMATIONS, PairedBenchmark, confirmed, time_comparisons, undecided
    from embedsearch.stats import benjamini_hochberg

    rng = np.random.default_rng(5)

    def paired(name: str, ratio: float) -> PairedBenchmark:  # 4 pairs with almost no noise
        return PairedBenchmark(name, {"base": 1, "head": 1}, 1, [
            {"first": first, "base": [1e-3], "head": [ratio * 1e-3 * (1 + 1e-6 * (-1) ** i)]}
            for i in range(2) for first in ("base", "head")])

    second_looks = 0
    for _ in range(60):
        effects = {f"b{i}": rng.choice([1.0, 1.05, 1.10]) for i in range(8)}
        first = [paired(name, effect * (1.1 if rng.random() < 0.5 else 1 / 1.1)) for name, effect in effects.items()]
        passes = [[paired(name, effect * math.exp(rng.normal(0, 0.06))) for name, effect in effects.items()]
                  for _ in range(CONFIRMATIONS)]
        first_look = {name: [estimate(b, 0.05) for passed in passes for b in passed if b.name == name]
                      for name in effects}
        again = undecided(first_look, 0.05)
        second_looks += bool(again)
        passes += [[paired(name, effects[name] * math.exp(rng.normal(0, 0.06))) for name in again]
                   for _ in range(MORE_CONFIRMATIONS)] if again else []
        final = {c.name: c for c in time_comparisons(first, 1e-3, passes, 0.05, {})}
        for direction in (True, False):  # each family holds every suspect
            members = sorted(effects)
            tests = [confirmed(first_look[name], first_look[name], direction) for name in members]
            for name, rejected, (found, _) in zip(members, benjamini_hochberg([p for _, p in tests], 0.05), tests):
                if rejected:
                    assert final[name].verdict != "same", (name, found.ratio, final[name])
    assert 10 < second_looks < 60  # both branches ran


@pytest.mark.parametrize("seconds, pairs", [(1e-3, 10), (0.3, 6), (0.75, 4)])
def test_a_slow_benchmark_gets_fewer_pairs_down_to_the_minimum(seconds, pairs):
    from embedsearch.ab import BENCHMARK_SECONDS, MIN_PAIRS
    workers = {role: FakeWorker(seconds, 0.01, seed) for seed, role in enumerate(("base", "head"))}
    workers["base"].other, workers["head"].other = workers["head"], workers["base"]
    benchmark = run_pairs(workers, "perf/bench_x.py::test_x", random.Random(0), pairs=10, max_pairs=40,
                          min_effect=0.05, alpha=1e-3)
    # rounds of 2 x seconds, one per batch once past BATCH_SECONDS: pairs = 2 x whole blocks of 4 batches in 8 s
    assert (BENCHMARK_SECONDS, MIN_PAIRS) == (8.0, 4)
    assert len(benchmark.pairs) == pairs


def test_judge_flags_a_test_failing_on_head_only():
    from embedsearch.ab import Session, Side
    from saved_runs import make_run

    base = Side("base", "a", "1" * 40, Path("."), outcomes={"t::x": "passed", "t::y": "failed in call: boom"})
    head = Side("head", "b", "2" * 40, Path("."), outcomes={"t::x": "failed in call: assert 0.5 == 1.0",
                                                              "t::y": "failed in call: boom"})
    runs = {"base": make_run({"x": ([1.0], {"recall": 1.0})}), "head": make_run({"x": ([1.0], {"recall": 0.5})})}
    report = judge(base, head, Session([], [], [], runs, 0.01), [], 0.05, Thresholds())
    assert sorted((c.name, c.metric) for c in report.regressions) == [("t::x", "test"), ("x", "recall")]
    assert any("t::y: base failed in call, head failed in call" in note for note in report.notes)


def test_an_exponent_change_is_read_from_the_paired_ratios_not_from_each_sides_medians():
    from embedsearch.ab import paired_exponent_changes
    from embedsearch.compare import Comparison
    from saved_runs import make_run

    sizes = (2500, 5000, 10000, 20000)
    medians = {"flat": (1.957e-3, 3.728e-3, 7.959e-3, 9.296e-3), "ivf": (1e-3, 2e-3, 4e-3, 8e-3),
               "hnsw": (1e-3, 2e-3, 4e-3, 8e-3), "two": (1e-3, 2e-3, 4e-3, 8e-3)}
    benchmarks = {f"test_scaling[{spec}-n{n}]": ([median], {"scaling": True, "n": n, "spec": spec})
                  for spec, series in medians.items() for n, median in zip(sizes, series)}
    base = make_run(benchmarks)
    ratios = {"flat": (0.949, 0.991, 0.983, 0.986),  # an A/A run at 492fe17: own medians fit 0.813 vs 1.032
              "ivf": tuple((n / 2500) ** 0.25 for n in sizes),  # head scales as n^(b + 0.25)
              "hnsw": tuple(1.3 * (n / 2500) ** -0.21 for n in sizes), "two": (1.0, 1.0)}
    time = [Comparison(f"test_scaling[{spec}-n{n}]", "time", 1.0, ratio, ratio)
            for spec, series in ratios.items() for n, ratio in zip(sizes, series)]
    found = {c.name.split()[1]: c for c in paired_exponent_changes(time, base, Thresholds())}
    assert sorted(found) == ["spec=flat", "spec=hnsw", "spec=ivf"]  # "two": two sizes timed, no fit
    flat_slope = np.polyfit(np.log(sizes), np.log(ratios["flat"]), 1)[0]
    assert found["spec=flat"].baseline == pytest.approx(np.polyfit(np.log(sizes), np.log(medians["flat"]), 1)[0])
    assert found["spec=flat"].current - found["spec=flat"].baseline == pytest.approx(flat_slope, abs=1e-12)
    assert abs(flat_slope) < 0.02 and found["spec=flat"].verdict == "same"
    assert found["spec=ivf"].current == pytest.approx(1.25) and found["spec=ivf"].verdict == "changed"
    assert found["spec=hnsw"].current == pytest.approx(0.79) and found["spec=hnsw"].verdict == "changed"
    assert {c.regression for c in found.values()} == {False, True}


def test_judge_reads_exponent_changes_from_the_pairs_where_each_sides_own_medians_fit_far_apart():
    from embedsearch.ab import PairedBenchmark, Session, Side
    from saved_runs import make_run

    sizes = (2500, 5000, 10000, 20000)

    def side(medians: tuple) -> object:  # own exponents: 0.78 (base), 1.04 (head)
        return make_run({f"test_scaling[F-n{n}]": ([m], {"scaling": True, "n": n, "spec": "F"})
                         for n, m in zip(sizes, medians)})

    def paired(n: int, ratio: float) -> PairedBenchmark:  # 10 pairs with almost no noise
        return PairedBenchmark(f"perf/bench_x.py::test_scaling[F-n{n}]", {"base": 1, "head": 1}, 1, [
            {"first": first, "base": [1e-3], "head": [ratio * 1e-3 * (1 + 1e-6 * (-1) ** i)]}
            for i in range(5) for first in ("base", "head")])

    runs = {"base": side((1.957e-3, 3.728e-3, 7.959e-3, 9.296e-3)),
            "head": side((1.337e-3, 3.443e-3, 8.323e-3, 10.922e-3))}
    sides = [Side(role, role, role * 10, Path(".")) for role in ("base", "head")]
    for ratios, verdict in (((0.949, 0.991, 0.983, 0.986), "same"), ((1.0, 1.3, 1.69, 2.197), "changed")):
        first = Session([paired(n, ratio) for n, ratio in zip(sizes, ratios)], [], [], runs, 1e-3)
        exponents = [c for c in judge(*sides, first, [], 0.05, Thresholds()).comparisons if c.metric == "exponent"]
        assert [(c.name, c.verdict) for c in exponents] == [("test_scaling spec=F", verdict)]
        change = np.polyfit(np.log(sizes), np.log(ratios), 1)[0]  # 0.015, then log 1.3 / log 2 = 0.379
        assert exponents[0].current - exponents[0].baseline == pytest.approx(change, abs=1e-4)


# End to end, in a temporary git repository holding the project at several commits.

def git(repository: Path, *arguments: str) -> str:
    return subprocess.run(["git", "-C", str(repository), *arguments], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict[str, str]:
    """The project committed as it is, then a commit whose search does three times the work."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of the project")
    repository = tmp_path_factory.mktemp("project")
    tracked = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, tracked):
        if (ROOT / name).is_file() and not name.startswith("fixtures/baselines"):
            (repository / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repository / name)
    git(repository, "init", "-q")
    for key, value in (("user.email", "ab@test"), ("user.name", "ab test"), ("commit.gpgsign", "false")):
        git(repository, "config", key, value)
    git(repository, "add", "-A")
    git(repository, "commit", "-qm", "base")
    commits = {"base": git(repository, "rev-parse", "HEAD")}
    index_py = repository / "src" / "embedsearch" / "index.py"
    source = index_py.read_text()
    planted = source.replace("        return self._search(queries, k)\n",
                             "        self._search(queries, k), self._search(queries, k)  # planted: 3x work\n"
                             "        return self._search(queries, k)\n")
    assert planted != source
    index_py.write_text(planted)
    git(repository, "commit", "-qam", "search does three times the work")
    commits["slower"] = git(repository, "rev-parse", "HEAD")
    commits["repository"] = str(repository)
    return commits


def ab(project: dict, *arguments: str) -> tuple[int, str, str]:
    completed = subprocess.run([sys.executable, "-m", "embedsearch.cli", "ab", *arguments],
                               cwd=project["repository"], capture_output=True, text=True)
    return completed.returncode, completed.stdout, completed.stderr


def test_ab_catches_a_slower_search_and_passes_unchanged_code(project, tmp_path):
    # min effect 0.25: the test must not depend on this machine's noise. A planted +50% read 1.122 in
    # one CI run's first pass (under the suspect limit 1.125): the planted 3x clears any such offset
    options = ["--pairs", "8", "--max-pairs", "16", "--min-effect", "0.25"]
    record = tmp_path / "slower.json"
    summary = tmp_path / "summary.md"
    code, out, err = ab(project, project["base"], project["slower"], *options, "--json", str(record),
                        "--markdown", str(summary), "--", *SMALL)
    assert code == 1, out + err
    assert re.search(r"test_brute_force\[Flat-n5000\S*\s+time .* slower -> REGRESSION", out), out
    assert "| regression | `test_brute_force[Flat-n5000" in summary.read_text()
    assert f"embedsearch from {project['repository']}/.git/embedsearch-ab/{project['slower']}/src/embedsearch" in out
    import json

    kept = json.loads(record.read_text())
    pairs = kept["benchmarks"][0]["pairs"]
    assert len(pairs) >= 6 and {"first", "base", "head"} <= set(pairs[0])
    from embedsearch.ab import CONFIRMATION_PAIRS, CONFIRMATIONS, MORE_CONFIRMATIONS
    confirmations = kept["confirmations"]  # the suspect, in children of the templates
    flat = "perf/bench_brute_force.py::test_brute_force[Flat-n5000-d64-ip-embedding-k10-nq200-cpu]"
    assert len(confirmations) in (CONFIRMATIONS, CONFIRMATIONS + MORE_CONFIRMATIONS)
    assert kept["first_pass_seconds"] > 0 and len(kept["pass_seconds"]) == len(confirmations)
    assert kept["first_pass_seconds"] + sum(kept["pass_seconds"]) <= kept["seconds"]
    assert re.search(rf"wall time \d+ s: first pass \d+ s; first look {CONFIRMATIONS} passes of 1 suspect\(s\)", out), out
    assert [[b["name"] for b in passed] for passed in confirmations] == [[flat]] * len(confirmations)
    assert all(len(passed[0]["pairs"]) == CONFIRMATION_PAIRS for passed in confirmations)
    saved = sorted(Path(project["repository"], ".benchmarks").rglob("*_ab-*.json"))
    assert [path.name.split("_", 1)[1][:7] for path in saved] == ["ab-base", "ab-head"]

    code, out, err = ab(project, project["slower"], *options, "--", *SMALL)  # A/A: HEAD against the working tree
    assert code == 0, out + err
    assert "0 regression(s)" in out and "embedsearch from " + project["repository"] + "/src/embedsearch" in out


def test_ab_bad_input_exits_2_naming_the_problem(project, tmp_path):
    code, _, err = ab(project, "no-such-revision", "--", *SMALL)
    assert code == 2 and "unknown revision 'no-such-revision'" in err
    code, _, err = ab(project, "HEAD", "--repo", str(tmp_path), "--", *SMALL)
    assert code == 2 and "not a git repository" in err
    code, _, err = ab(project, project["base"], "--", "--perf-tier=smoke", "-k", "no_benchmark_matches_this")
    assert code == 2 and "no benchmark in common" in err
    code, _, err = ab(project, project["base"], "--", "--perf-tier=nonexistent")
    assert code == 2 and "failed before collecting" in err and "--perf-tier" in err
    broken = Path(project["repository"]) / "perf" / "bench_zz_broken.py"
    broken.write_text("import nonexistent_module_for_the_test\n")
    try:
        code, _, err = ab(project, project["base"], "--", "--perf-tier=smoke", "-k", "test_brute_force")  # all of perf/
    finally:
        broken.unlink()
    assert code == 2 and "could not collect the head side" in err and "nonexistent_module_for_the_test" in err
    code, _, err = ab(project, project["base"], "--pairs", "3", "--", *SMALL)
    assert code == 2 and "pairs=3" in err


def test_a_confirmation_child_that_crashes_ends_the_run_with_exit_2_and_its_status(project):
    repository = Path(project["repository"])  # its working tree holds the slower commit
    index_py = repository / "src" / "embedsearch" / "index.py"
    source = index_py.read_text()
    crashing = source.replace("        return self._search(queries, k)\n",
                              "        import os, signal\n"
                              "        if os.environ.get('EMBEDSEARCH_AB_FORK'):  # in a confirmation child only\n"
                              "            os.kill(os.getpid(), signal.SIGSEGV)\n"
                              "        return self._search(queries, k)\n", 1)
    index_py.write_text(crashing)
    try:  # head: the working tree, 3x slower, so its search is a suspect and confirmed by forked children
        # the least minimum effect: the 3x slower search must be a suspect whatever this machine's offsets
        code, out, err = ab(project, project["base"], "--min-effect", "0", "--", *SMALL)
    finally:
        git(repository, "checkout", "-q", "--", "src/embedsearch/index.py")
    assert code == 2, out + err
    assert "the head worker sent 'ended' (its pass's child exited with -11)" in err, out + err


def test_ab_refuses_two_commits_that_import_the_same_files(project, tmp_path):
    repository = tmp_path / "without-src"
    shutil.copytree(project["repository"], repository, ignore=shutil.ignore_patterns(".cache", ".benchmarks"))
    shutil.rmtree(repository / ".git" / "embedsearch-ab", ignore_errors=True)
    git(repository, "worktree", "prune")
    git(repository, "rm", "-rq", "src")  # both commits import the installed embedsearch
    git(repository, "commit", "-qm", "no src")
    (repository / "README.md").write_text("changed\n")
    git(repository, "commit", "-qam", "another commit")
    code, _, err = ab({"repository": str(repository)}, "HEAD~1", "HEAD", "--", *SMALL)
    assert code == 2 and "both sides import embedsearch from" in err and "commits differ" in err


def test_ctrl_c_ends_both_workers_and_removes_nothing(project):
    repository = Path(project["repository"])
    before = sorted(path for path in repository.rglob("*") if ".git" not in path.parts)
    # A shell ignores SIGINT in the jobs it starts in the background, and python keeps it ignored:
    # give the controller a terminal's default, as a user's Ctrl-C finds it.
    controller = subprocess.Popen([sys.executable, "-m", "embedsearch.cli", "ab", project["base"], "--pairs", "40",
                                   "--max-pairs", "40", "--", "--perf-tier=smoke", "--no-perf-memory"],
                                  cwd=repository, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    for line in controller.stdout:  # wait until both workers are timing
        if line.startswith("[1/") or time.monotonic() > deadline:
            break
    controller.send_signal(signal.SIGINT)
    _, err = controller.communicate(timeout=60)
    assert controller.returncode == 2 and "interrupted" in err
    workers = subprocess.run(["pgrep", "-f", "embedsearch_lockstep"], capture_output=True, text=True).stdout.split()
    assert [pid for pid in workers if Path(f"/proc/{pid}/cwd").resolve().is_relative_to(repository)] == []
    after = sorted(path for path in repository.rglob("*") if ".git" not in path.parts)
    assert set(before) <= set(after)  # nothing the user had is gone
    assert (repository / ".git" / "embedsearch-ab" / project["base"]).is_dir()  # the cached worktree stays


def test_undecided_suspects_alone_get_the_further_confirmation_passes(project, monkeypatch):
    from embedsearch import ab as ab_module

    flat = "perf/bench_brute_force.py::test_brute_force[Flat-n5000-d64-ip-embedding-k10-nq200-cpu]"
    torch_flat = "perf/bench_brute_force.py::test_brute_force[TorchFlat-n5000-d64-ip-embedding-k10-nq200-cpu]"
    monkeypatch.setattr(ab_module, "CONFIRMATIONS", 2)  # each pass starts two templates: keep the test short
    monkeypatch.setattr(ab_module, "MORE_CONFIRMATIONS", 2)
    seen = []

    def undecided(estimates, min_effect):
        seen.append(sorted((name, len(found)) for name, found in estimates.items()))
        return [flat]

    monkeypatch.setattr(ab_module, "undecided", undecided)
    root = Path(project["repository"])
    base, head = ab_module.make_side(root, "base", project["base"]), ab_module.make_side(root, "head", project["slower"])
    pytest_args = ["--perf-tier=smoke", "--perf-threads=1", "-k", "test_brute_force and not bf16", "perf/bench_brute_force.py"]
    passes, pass_seconds = ab_module.run_confirmations(base, head, pytest_args, random.Random(1), [flat, torch_flat],
                                                       0.05, {}, lambda *line, **options: None)
    assert seen == [[(flat, ab_module.CONFIRMATIONS), (torch_flat, ab_module.CONFIRMATIONS)]]
    assert [sorted(b.name for b in passed) for passed in passes] == [[flat, torch_flat]] * ab_module.CONFIRMATIONS + [[flat]] * 2
    assert len(pass_seconds) == len(passes) and all(seconds > 0 for seconds in pass_seconds)
    monkeypatch.setattr(ab_module, "undecided", lambda estimates, min_effect: [])  # none: no second look
    passes, pass_seconds = ab_module.run_confirmations(base, head, pytest_args, random.Random(2), [flat], 0.05, {},
                                                       lambda *line, **options: None)
    assert [[b.name for b in passed] for passed in passes] == [[flat]] * ab_module.CONFIRMATIONS
    assert len(pass_seconds) == ab_module.CONFIRMATIONS


def test_one_template_pair_runs_each_plan_it_is_sent_in_a_child_that_ends_with_it(project):
    """tools/measure_gate.py templates: one template pair serves several passes; each child reports "ended" 0."""
    from embedsearch import ab as ab_module

    root = Path(project["repository"])
    base, head = ab_module.make_side(root, "base", project["base"]), ab_module.make_side(root, "head", project["slower"])
    pytest_args = ["--perf-tier=smoke", "--perf-threads=1", "--no-perf-memory", "-k", "test_brute_force and not bf16", "perf/bench_brute_force.py"]
    passes = []
    with ab_module.started_workers(base, head, pytest_args, {}, template=True) as workers:
        plan, _, _ = ab_module.agree_on_plan(workers["base"], workers["head"])
        assert len(plan) == 2  # FAISS Flat and TorchFlat
        for number, planned in enumerate([plan, plan[1:], plan]):  # the second plan differs from the first
            passes.append(ab_module.child_pass(workers, planned, random.Random(number), 0.05, f"pass {number + 1}",
                                               lambda *line, **options: None, plan_sent=not number))
        ab_module.stop_templates(workers)
        assert [worker.process.returncode for worker in workers.values()] == [0, 0]
    assert [[b.name for b in passed] for passed in passes] == [plan, plan[1:], plan]
    assert all(len(b.pairs) == ab_module.CONFIRMATION_PAIRS for passed in passes for b in passed)


def load_measure_gate():
    """tools/measure_gate.py as a module (tools/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("measure_gate", ROOT / "tools" / "measure_gate.py")
    measure_gate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(measure_gate)
    return measure_gate


def test_measure_gate_refuses_no_case_and_a_keep_folder_that_holds_files(tmp_path):
    """tools/measure_gate.py: --slowed-only with --slowdowns given no value would run no case, and a --keep
    folder holding files would have them overwritten (a file is no folder): exit 2 with the reason, nothing touched."""
    def measure_gate(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "tools" / "measure_gate.py"), *arguments],
                              capture_output=True, text=True, timeout=120)

    done = measure_gate("ab", "--slowdowns", "--slowed-only")
    assert done.returncode == 2
    assert "--slowed-only with no slowdown leaves no case to run" in done.stderr
    kept = tmp_path / "ab-runs.json"
    kept.write_text("{}")
    done = measure_gate("ab", "--runs", "1", "--keep", str(tmp_path))
    assert done.returncode == 2
    assert f"--keep {tmp_path} exists and is not an empty folder: expected a new or empty folder" in done.stderr
    assert kept.read_text() == "{}"
    done = measure_gate("ab", "--runs", "1", "--keep", str(kept))  # a file, not a folder
    assert done.returncode == 2
    assert f"--keep {kept} exists and is not an empty folder" in done.stderr


def test_replay_rejudges_a_kept_run_dropping_the_second_look_the_current_rule_does_not_take(tmp_path):
    """tools/measure_gate.py --replay. A run kept under the Bonferroni second look: of three slower
    suspects, "between" (p between alpha / 3 and 2 alpha / 3) and "wide" got twelve more passes;
    Benjamini-Hochberg rejects "between" at the first look, so the replay drops its further passes."""
    import json

    from embedsearch.ab import CONFIRMATIONS, MORE_CONFIRMATIONS, confirmed, paired_record
    measure_gate = load_measure_gate()

    def paired(name: str, ratio: float, seconds: float = 2e-3) -> dict:  # 10 pairs with almost no noise
        from embedsearch.ab import PairedBenchmark
        return paired_record(PairedBenchmark(f"perf/b.py::{name}", {"base": 1, "head": 1}, 1, [
            {"first": first, "base": [seconds], "head": [ratio * seconds * (1 + 1e-6 * (-1) ** i)]}
            for i in range(5) for first in ("base", "head")]))

    passes = CONFIRMATIONS + MORE_CONFIRMATIONS
    ratios = {"tiny": [1.2, 1.21, 1.19] * 6, "between": [1.07 * 1.05, 1.07 / 1.05] * 9, "wide": [1.3, 0.95] * 9}
    between = spread_passes(1.07, 0.05, CONFIRMATIONS)  # as its first six passes read
    assert 0.05 / 3 < confirmed(between, between, True)[1] <= 2 * 0.05 / 3
    record = {"settings": {"alpha_per_look": 1e-3, "min_effect": 0.05, "confirmations": CONFIRMATIONS,
                           "more_confirmations": MORE_CONFIRMATIONS, "confirmation_pairs": 4},
              "benchmarks": [paired("tiny", 1.2), paired("between", 1.2), paired("wide", 1.2), paired("same", 1.0),
                             paired("test_matmul_gflops", 1.0), paired("fast", 1.0, 1e-4)],
              "confirmations": [[paired(name, ratios[name][number]) for name in ratios
                                 if number < CONFIRMATIONS or name != "tiny"] for number in range(passes)],
              "comparisons": [{"name": name, "metric": "time", "verdict": "slower"} for name in ratios]}
    path = tmp_path / "run-01-slowdown-0.10.json"
    path.write_text(json.dumps(record))
    found = measure_gate.replay(path)
    assert (found["kept_timings"], found["timings"]) == (3 * CONFIRMATIONS + 2 * MORE_CONFIRMATIONS,
                                                         3 * CONFIRMATIONS + MORE_CONFIRMATIONS)
    assert found["alarms"] == found["kept_alarms"] == set(ratios)
    record["comparisons"] += [{"name": "test_scaling spec=F", "metric": "exponent", "verdict": verdict}
                              for verdict in ("changed", "same")]
    path.write_text(json.dumps(record))
    assert measure_gate.replay(path)["kept_alarms"] == set(ratios) | {"test_scaling spec=F"}
    assert found["slowed"] == {"tiny", "between", "wide", "same"}  # not the calibration, not under 1 ms
    record["confirmations"] = [[b for b in passed if not b["name"].endswith("wide")] if number >= CONFIRMATIONS
                               else passed for number, passed in enumerate(record["confirmations"])]
    path.write_text(json.dumps(record))
    assert measure_gate.replay(path) is None  # "wide" needs the second look the run did not take
    record["settings"]["more_confirmations"] = MORE_CONFIRMATIONS + 1
    path.write_text(json.dumps(record))
    assert measure_gate.replay(path) is None  # other pass counts than this checkout's


def test_replay_reads_exponent_alarms_from_the_paired_ratios_of_a_series_ids():
    sizes = (2500, 5000, 10000, 20000)
    ratios = {f"test_scaling[Flat-n{n}-d64-cpu]": ratio for n, ratio in zip(sizes, (0.949, 0.991, 0.983, 0.986))}
    ratios |= {f"test_scaling[IVF64,Flat-n{n}-d64-nprobe8-cpu]": 1.2 ** i for i, n in enumerate(sizes)}  # +0.263
    ratios |= {f"test_scaling[TorchFlat-n{n}-d64-cpu]": 2.0 ** i for i, n in enumerate(sizes[:2])}  # 2 sizes: no fit
    ratios |= {f"test_search[Flat-n{n}-d64-cpu]": 2.0 ** i for i, n in enumerate(sizes)}  # not a scaling series
    assert load_measure_gate().exponent_alarms(ratios) == {"exponent of test_scaling[IVF64,Flat-d64-nprobe8-cpu]"}


def test_template_components_split_the_passes_spread_into_a_template_pair_offset_and_the_rest():
    """tools/measure_gate.py templates: one-way random effects by hand. Three template pairs of two
    passes each, every pair's passes 0.01 either side of its mean (0.01, 0.11, 0.06)."""
    found = load_measure_gate().template_components([np.array([0.0, 0.02]), np.array([0.1, 0.12]), np.array([0.05, 0.07])])
    assert found["means"] == pytest.approx([0.01, 0.11, 0.06], rel=1e-12)
    assert found["s2"] == pytest.approx(2e-4, rel=1e-12)  # 6 squared deviations of 0.01 over 3 degrees of freedom
    assert found["component"] == pytest.approx(0.0025 - 2e-4 / 2, rel=1e-12)  # var(means) - s2 / 2
    # F = 2 x 0.0025 / 2e-4 = 25 with (2, 3) degrees of freedom: sf = (1 + 2 F / 3) ** -1.5
    assert found["f_p"] == pytest.approx((1 + 50 / 3) ** -1.5, rel=1e-9)
    # each pair's t = mean / 0.01 with one degree of freedom (Cauchy): p = 1 - 2 atan(t) / pi
    assert found["t_p"] == pytest.approx([1 - 2 * math.atan(t) / math.pi for t in (1, 11, 6)], rel=1e-9)
    # unequal pass counts: the within part of var(means) is s2 x mean(1 / passes), here s2 x (1/2 + 1/4) / 2
    unequal = load_measure_gate().template_components([np.array([0.0, 0.02]), np.array([0.09, 0.11, 0.09, 0.11])])
    assert unequal["s2"] == pytest.approx((2e-4 + 4e-4) / 4, rel=1e-12)
    assert unequal["component"] == pytest.approx(0.09 ** 2 / 2 - 1.5e-4 * 0.375, rel=1e-12)  # var(0.01, 0.10)
