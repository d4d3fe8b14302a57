import json
import re
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedsearch import cli
from embedsearch.baseline import (Run, RunFileError, Thresholds, bootstrap_ratio, compare_runs, format_report, gate,
                                  latest_run, load_run, load_runs, save_run, scaling_exponents)

ROOT = Path(__file__).resolve().parents[1]


def make_run(benchmarks: dict[str, tuple[np.ndarray, dict]], node: str = "machine-a", matmul_gflops: float = 400.0,
             scaling: list[dict] | None = None, datetime: str = "2026-11-24T10:00:00") -> Run:
    """A run in pytest-benchmark's JSON layout: name -> (round times in seconds, extra_info)."""
    entries = []
    for name, (rounds, extra_info) in benchmarks.items():
        rounds = np.asarray(rounds, dtype=float)
        stats = {"min": rounds.min(), "max": rounds.max(), "mean": rounds.mean(), "stddev": rounds.std(),
                 "median": float(np.median(rounds)), "q1": float(np.quantile(rounds, 0.25)),
                 "q3": float(np.quantile(rounds, 0.75)), "rounds": len(rounds), "data": rounds.tolist()}
        entries.append({"group": None, "name": name, "fullname": f"perf/bench_x.py::{name}", "params": None,
                        "param": None, "extra_info": extra_info, "options": {}, "stats": stats})
    data = {"machine_info": {"node": node, "cpu": {"brand_raw": "cpu", "count": 2},
                             "calibration": {"matmul_gflops": matmul_gflops}},
            "commit_info": {"id": "abcdef1234567", "dirty": False}, "benchmarks": entries, "datetime": datetime,
            "version": "5.2.3", "embedsearch": {"tier": "smoke", "scaling": scaling or []}}
    return Run(json.loads(json.dumps(data)))


def noisy(median: float, rounds: int = 50, seed: int = 0, spread: float = 0.03) -> np.ndarray:
    return median * np.exp(np.random.default_rng(seed).normal(0, spread, rounds))


def verdicts(report) -> dict[tuple[str, str], str]:
    return {(c.name, c.metric): c.verdict for c in report.comparisons}


def test_bootstrap_interval_holds_one_for_equal_rounds_and_excludes_it_for_a_slowdown():
    base = noisy(1.0, seed=1)
    ratio, low, high = bootstrap_ratio(base, noisy(1.0, seed=2), 2000, 0.99)
    assert low < 1 < high
    ratio, low, high = bootstrap_ratio(base, base * 1.3, 2000, 0.99)
    assert ratio == pytest.approx(1.3) and low > 1.2
    assert bootstrap_ratio(np.array([2.0]), np.array([3.0]), 100, 0.99) == (1.5, 1.5, 1.5)


def test_compare_flags_each_kind_of_regression_and_only_those():
    info = {"peak_bytes": 10_000_000, "index_bytes": 1000, "recall": 0.90, "top1": 0.80}
    base = make_run({"same": (noisy(1.0, seed=1), info), "slow": (noisy(1.0, seed=2), {}),
                     "slightly": (noisy(1.0, seed=3), {}), "fat": (noisy(1.0, seed=4), info)},
                    scaling=[{"series": "s", "exponent": 1.0}, {"series": "t", "exponent": 1.0}])
    current = make_run({"same": (noisy(1.0, seed=5), info), "slow": (noisy(1.25, seed=6), {}),
                        "slightly": (noisy(1.04, seed=7), {}),
                        "fat": (noisy(1.0, seed=8), {"peak_bytes": 10_600_000, "index_bytes": 1001,
                                                      "recall": 0.88, "top1": 0.79})},
                       scaling=[{"series": "s", "exponent": 1.1}, {"series": "t", "exponent": 1.3}])
    found = verdicts(compare_runs(base, current))
    assert found["same", "time"] == found["same", "peak_bytes"] == found["same", "recall"] == "same"
    assert found["slow", "time"] == "slower"
    assert found["slightly", "time"] in ("same", "unsure")  # 4% is below the 15% minimum effect
    assert found["fat", "time"] == "same"
    assert [found["fat", key] for key in ("peak_bytes", "index_bytes", "recall", "top1")] == ["worse"] * 4
    assert found["s", "exponent"] == "same" and found["t", "exponent"] == "changed"
    report = compare_runs(base, current)
    assert {(c.name, c.metric) for c in report.regressions} == {
        ("slow", "time"), ("fat", "peak_bytes"), ("fat", "index_bytes"), ("fat", "recall"), ("fat", "top1"),
        ("t", "exponent")}
    assert "gate: 6 regression(s)" in format_report(report) and format_report(report).endswith("FAIL")


def test_other_machine_is_normalised_by_the_matmul_calibration():
    base = make_run({"search": (noisy(1.0, seed=1), {})}, node="fast", matmul_gflops=400.0)
    half_speed = make_run({"search": (noisy(2.0, seed=2), {})}, node="slow", matmul_gflops=200.0)
    report = compare_runs(base, half_speed)
    assert verdicts(report)["search", "time"] == "same"
    assert report.time_scale == 0.5 and "machines differ" in report.notes[0]
    same_machine_report = compare_runs(base, make_run({"search": (noisy(2.0, seed=2), {})}, node="fast"))
    assert verdicts(same_machine_report)["search", "time"] == "slower" and not same_machine_report.notes


def test_repeat_on_doubt_keeps_only_confirmed_slowdowns():
    base = make_run({"a": (noisy(1.0, seed=1), {}), "b": (noisy(1.0, seed=2), {})})
    current = make_run({"a": (noisy(1.3, seed=3), {}), "b": (noisy(1.3, seed=4), {})})
    asked = []

    def rerun(run: Run, names: list[str]) -> Run:
        asked.append(names)  # a transient burst hit "a"; "b" is really slower
        return make_run({"a": (noisy(1.0, seed=5), {}), "b": (noisy(1.3, seed=6), {})})

    report = gate(base, current, Thresholds(), rerun)
    assert asked == [["a", "b"]]
    assert [c.name for c in report.regressions] == ["b"]
    assert "not confirmed" in format_report(report)
    assert not gate(base, base, Thresholds(), rerun).regressions and len(asked) == 1  # nothing to rerun

    def failing_rerun(run: Run, names: list[str]) -> Run:
        raise RuntimeError("rerunning 2 benchmark(s) failed (exit 4)")

    report = gate(base, current, Thresholds(), failing_rerun)
    assert [c.name for c in report.regressions] == ["a", "b"]  # unconfirmed suspects still fail the gate
    assert "the rerun failed" in format_report(report)


def test_scaling_exponent_is_fitted_on_log_log_medians():
    benchmarks = [{"name": f"test_scaling[Flat-n{n}]", "stats": {"median": 3e-9 * n**1.0},
                   "extra_info": {"scaling": True, "n": n, "spec": "Flat", "d": 64}} for n in (1000, 2000, 4000)]
    benchmarks += [{"name": f"test_scaling[HNSW-n{n}]", "stats": {"median": 1e-3 * np.log(n)},
                    "extra_info": {"scaling": True, "n": n, "spec": "HNSW32", "d": 64}} for n in (1000, 2000, 4000)]
    benchmarks.append({"name": "test_scaling[IVF-n1000]", "stats": {"median": 1.0},
                       "extra_info": {"scaling": True, "n": 1000, "spec": "IVF", "d": 64}})  # one size: no fit
    fits = {fit["series"]: fit["exponent"] for fit in scaling_exponents(benchmarks)}
    assert fits.keys() == {"test_scaling spec=Flat d=64", "test_scaling spec=HNSW32 d=64"}
    assert fits["test_scaling spec=Flat d=64"] == pytest.approx(1.0)
    assert 0 < fits["test_scaling spec=HNSW32 d=64"] < 0.2


def test_corrupt_or_truncated_runs_are_skipped_with_a_warning_naming_them(tmp_path):
    good = save_run(make_run({"a": (noisy(1.0), {})}).data, tmp_path, "good")
    text = good.read_text()
    (tmp_path / "0002_truncated.json").write_text(text[: len(text) // 2])
    (tmp_path / "0003_not-a-run.json").write_text('{"hello": 1}')
    (tmp_path / "0004_binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.warns(UserWarning) as caught:
        runs = load_runs([tmp_path])
    assert [run.path for run in runs] == [good]
    messages = " ".join(str(warning.message) for warning in caught)
    for name in ("0002_truncated.json", "0003_not-a-run.json", "0004_binary.json"):
        assert name in messages
    with pytest.raises(RunFileError, match="0002_truncated.json"):
        load_run(tmp_path / "0002_truncated.json")


def test_an_interrupted_save_leaves_no_file(tmp_path, monkeypatch):
    def interrupted(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_run(make_run({"a": (noisy(1.0), {})}).data, tmp_path, "run")
    assert list(tmp_path.iterdir()) == []


def _save_one(arguments: tuple[str, int]) -> str:
    folder, index = arguments
    return str(save_run(make_run({f"bench{index}": (noisy(1.0, rounds=2000, seed=index), {})}).data, folder, "run"))


def test_concurrent_saves_all_survive_under_distinct_numbers(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        paths = pool.map(_save_one, [(str(tmp_path), index) for index in range(12)])
    assert len(set(paths)) == 12
    runs = load_runs([tmp_path])
    assert sorted(name for run in runs for name in run.benchmarks) == sorted(f"bench{i}" for i in range(12))
    assert sorted(path.name[:4] for path in tmp_path.iterdir()) == [f"{i:04d}" for i in range(1, 13)]


def test_gate_command_exit_status_and_errors(tmp_path, capsys):
    base = save_run(make_run({"a": (noisy(1.0, seed=1), {})}).data, tmp_path / "base", "base")
    same = save_run(make_run({"a": (noisy(1.0, seed=2), {})}).data, tmp_path / "same", "same")
    slow = save_run(make_run({"a": (noisy(1.5, seed=3), {})}).data, tmp_path / "slow", "slow")
    assert cli.main(["gate", str(same), "--baseline", str(base), "--no-rerun"]) == 0
    assert cli.main(["gate", str(tmp_path / "slow"), "--baseline", str(tmp_path / "base"), "--no-rerun"]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert cli.main(["gate", str(slow), "--baseline", str(tmp_path / "missing"), "--no-rerun"]) == 2
    assert "missing: no such run file or folder" in capsys.readouterr().err
    assert cli.main(["gate", str(slow), "--baseline", str(base), "--min-effect", "-1"]) == 2
    assert "--min-effect=-1.0" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["gate", str(slow), "--baseline", str(tmp_path / "empty")]) == 2
    assert "holds no readable saved run" in capsys.readouterr().err


def test_suite_saves_a_run_that_pytest_benchmark_compare_reads_and_the_gate_passes(tmp_path):
    """A new user's path: a timed run saved twice, read by pytest-benchmark's own compare, gated."""
    storage = tmp_path / "storage"
    command = [sys.executable, "-m", "pytest", "--benchmark", "--perf-tier=smoke", "-q", "-p", "no:cacheprovider",
               f"--benchmark-storage={storage}", "--no-perf-memory", "--benchmark-max-time=0.05",
               "perf/bench_calibration.py::test_matmul_gflops", "perf/bench_scaling.py", "-k", "matmul or TorchFlat"]
    for _ in range(2):
        completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    saved = sorted(storage.rglob("*.json"))
    assert [path.name[:5] for path in saved] == ["0001_", "0002_"]
    run = latest_run(storage)
    assert run.calibration["matmul_gflops"] > 0 and all(bench["stats"]["data"] for bench in run.data["benchmarks"])
    assert [fit["series"].split()[1] for fit in run.suite["scaling"]] == ["spec=TorchFlat"]
    compared = subprocess.run([sys.executable, "-c", "from pytest_benchmark.cli import main; main()", "compare",
                               *map(str, saved)],
                              cwd=ROOT, capture_output=True, text=True)
    assert compared.returncode == 0 and "test_scaling[TorchFlat-n2500" in compared.stdout, compared.stderr
    gated = subprocess.run([sys.executable, "-m", "embedsearch.cli", "gate", str(saved[1]), "--baseline",
                            str(saved[0]), "--min-effect", "9"], cwd=ROOT, capture_output=True, text=True)
    # two unchanged runs of few rounds: the verdict is noise's to decide, the exit status must follow it
    verdict = re.search(r"gate: (\d+) regression\(s\) in (\d+) comparisons: (pass|FAIL)$", gated.stdout.rstrip())
    assert verdict is not None, gated.stdout + gated.stderr
    assert gated.returncode == (1 if verdict.group(3) == "FAIL" else 0) and int(verdict.group(2)) >= 13
    # A deterministic regression for --perf-gate: a baseline whose indexes were one byte smaller.
    shrunk = run.data
    for bench in shrunk["benchmarks"]:
        if "index_bytes" in bench["extra_info"]:
            bench["extra_info"]["index_bytes"] -= 1
    shrunk_path = save_run(shrunk, tmp_path / "shrunk", "shrunk")
    gated_run = subprocess.run([*command, f"--perf-gate={shrunk_path}"], cwd=ROOT, capture_output=True, text=True)
    assert gated_run.returncode == 1, gated_run.stdout[-3000:] + gated_run.stderr[-2000:]
    assert f"embedsearch gate against {shrunk_path}" in gated_run.stdout
    assert gated_run.stdout.count("worse -> REGRESSION") >= 4
    assert [line.split()[1:2] for line in gated_run.stdout.splitlines() if "index_bytes" in line] == [["index_bytes"]] * 4
    assert len(sorted(storage.rglob("*.json"))) == 3  # the gated run was saved too
    refused = subprocess.run([*command[:3], "--benchmark", f"--perf-gate={tmp_path / 'nowhere'}", "--co", "-q"],
                             cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode == 4 and "nowhere: no such run file or folder" in refused.stderr
