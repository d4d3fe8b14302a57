import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from embedsearch import cli
from embedsearch.compare import ComparisonError, format_report
from embedsearch.gate import NOT_COMPARABLE, compare_runs, gate, rerun_suite
from embedsearch.storage import Run, latest_run, save_run
from saved_runs import make_run, noisy

ROOT = Path(__file__).resolve().parents[1]


def verdicts(report) -> dict[tuple[str, str], str]:
    return {(c.name, c.metric): c.verdict for c in report.comparisons}


def test_compare_flags_each_kind_of_regression_and_only_those():
    info = {"peak_bytes": 10_000_000, "index_bytes": 1000, "recall": 0.90, "top1": 0.80}
    base = make_run({"same": (noisy(1.0, seed=1), info), "slow": (noisy(1.0, seed=2), {}),
                     "slightly": (noisy(1.0, seed=3), {}), "fat": (noisy(1.0, seed=4), info)},
                    scaling=[{"series": "s", "exponent": 1.0}, {"series": "t", "exponent": 1.0}])
    current = make_run({"same": (noisy(1.0, seed=5), info), "slow": (noisy(1.25, seed=6), {}),
                        "slightly": (noisy(1.04, seed=7), {}),
                        "fat": (noisy(1.0, seed=8), {"peak_bytes": 10_800_000, "index_bytes": 1001,
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


def test_other_machine_times_are_not_comparable_but_figures_are_still_gated():
    base = make_run({"search": (noisy(1.0, seed=1), {"recall": 0.9})}, node="fast", matmul_gflops=400.0)
    other = make_run({"search": (noisy(2.0, seed=2), {"recall": 0.8})}, node="slow", matmul_gflops=200.0)
    report = compare_runs(base, other)
    assert verdicts(report) == {("search", "time"): NOT_COMPARABLE, ("search", "recall"): "worse"}
    assert [c.metric for c in report.regressions] == ["recall"]
    assert "machines differ" in report.notes[0] and "use embedsearch ab" in format_report(report)
    same_machine_report = compare_runs(base, make_run({"search": (noisy(2.0, seed=2), {})}, node="fast"))
    assert verdicts(same_machine_report)["search", "time"] == "slower" and not same_machine_report.notes


def test_comparing_nothing_or_a_run_with_itself_or_impossible_medians_is_refused(tmp_path):
    base = make_run({"a": (noisy(1.0, seed=1), {})})
    with pytest.raises(ComparisonError, match="no benchmark in common"):
        compare_runs(base, make_run({"b": (noisy(1.0, seed=2), {})}))
    with pytest.raises(ComparisonError, match="no benchmark in common"):
        compare_runs(base, make_run({}))
    with pytest.raises(ComparisonError, match="same run"):
        compare_runs(base, make_run({"a": (noisy(1.0, seed=1), {})}))
    saved = save_run(base.data, tmp_path, "run")
    from embedsearch.storage import load_run

    with pytest.raises(ComparisonError, match="same file"):
        compare_runs(load_run(saved), load_run(saved))
    for median in (math.nan, 0.0, -1.0, None):
        broken = make_run({"a": (noisy(1.0, seed=3), {})})
        broken.data["benchmarks"][0]["stats"]["median"] = median
        broken.path = Path("broken.json")
        with pytest.raises(ComparisonError, match=r"broken.json: benchmark 'a' has median"):
            compare_runs(base, broken)


def test_the_rerun_runs_only_the_checkout_never_a_folder_named_in_the_file(tmp_path):
    run = make_run({"a": (noisy(1.0), {})})
    run.data["embedsearch"]["rootdir"] = str(tmp_path / "elsewhere")  # what older runs stored
    with pytest.raises(RuntimeError, match="none of the 1 suspect benchmark"):
        rerun_suite(run, ["a"], tmp_path)  # perf/bench_x.py does not exist in this checkout
    base = make_run({"a": (noisy(1.0, seed=1), {}), "b": (noisy(1.0, seed=2), {})})
    current = make_run({"a": (noisy(1.3, seed=3), {}), "b": (noisy(1.3, seed=4), {})})
    report = gate(base, current, rerun=lambda run, names: make_run({"b": (noisy(1.3, seed=6), {})}))
    assert "not in this checkout, judged on the stored rounds: a" in format_report(report)
    assert [c.name for c in report.regressions] == ["a", "b"]


def test_the_rerun_measures_the_runs_own_data_files_and_refuses_when_one_is_gone(tmp_path, monkeypatch):
    (tmp_path / "perf").mkdir()
    (tmp_path / "perf" / "bench_x.py").write_text("")
    vectors = tmp_path / "vectors.npy"
    vectors.write_bytes(b"")
    run = make_run({"a": (noisy(1.0), {})})
    run.data["embedsearch"]["data_files"] = [str(vectors)]
    commands = []

    def fake_pytest(command, **_):
        commands.append(command)
        return subprocess.CompletedProcess(command, 3, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pytest)
    with pytest.raises(RuntimeError, match="exit 3"):
        rerun_suite(run, ["a"], tmp_path)
    assert f"--perf-data={vectors}" in commands[0] and commands[0][-1] == "perf/bench_x.py::a"
    vectors.unlink()
    with pytest.raises(RuntimeError, match=f"--perf-data file\\(s\\) {vectors} no longer exist"):
        rerun_suite(run, ["a"], tmp_path)
    assert len(commands) == 1


def test_repeat_on_doubt_keeps_only_confirmed_slowdowns():
    base = make_run({"a": (noisy(1.0, seed=1), {}), "b": (noisy(1.0, seed=2), {})})
    current = make_run({"a": (noisy(1.3, seed=3), {}), "b": (noisy(1.3, seed=4), {})})
    asked = []

    def rerun(run: Run, names: list[str]) -> Run:
        asked.append(names)  # a transient burst hit "a"; "b" is really slower
        return make_run({"a": (noisy(1.0, seed=5), {}), "b": (noisy(1.3, seed=6), {})})

    report = gate(base, current, rerun=rerun)
    assert asked == [["a", "b"]]
    assert [c.name for c in report.regressions] == ["b"]
    assert "not confirmed" in format_report(report)
    assert not gate(base, make_run({"a": (noisy(1.0, seed=7), {}), "b": (noisy(1.0, seed=8), {})}), rerun=rerun).regressions
    assert len(asked) == 1  # nothing to rerun

    def failing_rerun(run: Run, names: list[str]) -> Run:
        raise RuntimeError("rerunning 2 benchmark(s) failed (exit 4)")

    report = gate(base, current, rerun=failing_rerun)
    assert [c.name for c in report.regressions] == ["a", "b"]  # unconfirmed suspects still fail the gate
    assert "the rerun failed" in format_report(report)


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
    assert cli.main(["gate", str(tmp_path / "base"), "--baseline", str(tmp_path / "base")]) == 2
    assert "the run and its baseline are the same file" in capsys.readouterr().err
    other = save_run(make_run({"b": (noisy(1.0, seed=4), {})}).data, tmp_path / "other", "other")
    assert cli.main(["gate", str(other), "--baseline", str(base), "--no-rerun"]) == 2
    assert "no benchmark in common" in capsys.readouterr().err


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
