"""The stored-baseline gate: a saved run against a saved baseline, for history and same-machine use.

Time is judged only when both runs come from the same machine: between machines (and between
jobs) medians move by up to 1.7x here, more than any slowdown worth catching, and a calibration
benchmark is as noisy as the times it would correct. Across machines the gate says "not
comparable" for time and keeps gating the deterministic figures; `embedsearch ab` is the gate
for time.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .compare import (Comparison, ComparisonError, GateReport, Thresholds, check_median, compare_exponents,
                      compare_figures)
from .stats import bootstrap_ratio
from .storage import Run, load_run

MIN_EFFECT = 0.15  # measured: tools/measure_gate.py --gate stored (README)
CONFIDENCE = 0.99
RESAMPLES = 2000
NOT_COMPARABLE = "not comparable (different machines): use embedsearch ab"


def same_machine(baseline: Run, current: Run) -> bool:
    """Whether both runs report the same node, CPU and core count."""
    def identity(run: Run) -> tuple:
        info = run.data.get("machine_info") or {}
        cpu = info.get("cpu") or {}
        return info.get("node"), cpu.get("brand_raw"), cpu.get("count")
    return identity(baseline) == identity(current)


def compare_runs(baseline: Run, current: Run, min_effect: float = MIN_EFFECT,
                 thresholds: Thresholds = Thresholds()) -> GateReport:
    """Compare every benchmark both runs hold; raise ComparisonError when nothing can be compared."""
    if baseline.path is not None and current.path is not None and baseline.path.resolve() == current.path.resolve():
        raise ComparisonError(f"{current.path}: the run and its baseline are the same file; "
                              f"save the run elsewhere or name another baseline")
    if baseline.data == current.data:
        raise ComparisonError(f"{current.label} and {baseline.label} hold the same run: a run gated against "
                              f"itself proves nothing")
    report = GateReport([])
    timed = same_machine(baseline, current)
    if not timed:
        report.notes.append(f"machines differ: time {NOT_COMPARABLE}; memory, bytes, recall, accuracy and "
                            f"exponents are still gated")
    if baseline.suite.get("tier") != current.suite.get("tier"):
        report.notes.append(f"tiers differ (baseline {baseline.suite.get('tier')}, current "
                            f"{current.suite.get('tier')}): only benchmarks both hold are compared")
    base_benchmarks, current_benchmarks = baseline.benchmarks, current.benchmarks
    for name in sorted(set(base_benchmarks) - set(current_benchmarks)):
        report.notes.append(f"{name}: in the baseline only, not compared")
    for name in sorted(set(current_benchmarks) - set(base_benchmarks)):
        report.notes.append(f"{name}: new, no baseline")
    common = sorted(set(base_benchmarks) & set(current_benchmarks))
    if not common:
        raise ComparisonError(f"{current.label} and {baseline.label} have no benchmark in common "
                              f"({len(current_benchmarks)} and {len(base_benchmarks)} benchmarks): nothing to compare")
    for name in common:
        report.comparisons += compare_benchmark(name, base_benchmarks[name], current_benchmarks[name], min_effect,
                                                thresholds, timed, (baseline.label, current.label))
    report.comparisons += compare_exponents(baseline, current, thresholds)
    return report


def compare_benchmark(name: str, base: dict, current: dict, min_effect: float, thresholds: Thresholds,
                      timed: bool = True, sources: tuple[str, str] = ("baseline", "current")) -> list[Comparison]:
    """The comparisons of one benchmark present in both runs: time (when `timed`) and the figures."""
    base_median = check_median(name, base["stats"]["median"], sources[0])
    current_median = check_median(name, current["stats"]["median"], sources[1])
    comparisons = [time_comparison(name, base, current, min_effect) if timed else
                   Comparison(name, "time", base_median, current_median, current_median / base_median,
                              verdict=NOT_COMPARABLE)]
    return comparisons + compare_figures(name, base.get("extra_info") or {}, current.get("extra_info") or {},
                                         thresholds)


def time_comparison(name: str, base: dict, current: dict, min_effect: float) -> Comparison:
    """Ratio of medians with its bootstrap interval; slower needs the interval above 1 and the ratio above 1 + min_effect."""
    base_rounds = np.asarray(base["stats"].get("data") or [base["stats"]["median"]], dtype=np.float64)
    current_rounds = np.asarray(current["stats"].get("data") or [current["stats"]["median"]], dtype=np.float64)
    ratio, low, high = bootstrap_ratio(base_rounds, current_rounds, RESAMPLES, CONFIDENCE)
    if low > 1 and ratio > 1 + min_effect:
        verdict = "slower"
    elif high < 1 and ratio < 1 / (1 + min_effect):
        verdict = "faster"
    elif low > 1 or high < 1:
        verdict = "unsure"  # significant but below the minimum effect
    else:
        verdict = "same"
    return Comparison(name, "time", float(np.median(base_rounds)), float(np.median(current_rounds)),
                      ratio, low, high, verdict)


def confirm_suspects(report: GateReport, baseline: Run, rerun: Run, min_effect: float = MIN_EFFECT) -> None:
    """Repeat-on-doubt: judge each slower time again on a rerun; only a confirmed one stays a regression."""
    base_benchmarks, rerun_benchmarks = baseline.benchmarks, rerun.benchmarks
    for suspect in report.suspects:
        if suspect.name in rerun_benchmarks:
            suspect.rerun = time_comparison(suspect.name, base_benchmarks[suspect.name],
                                            rerun_benchmarks[suspect.name], min_effect)


def rerun_suite(run: Run, names: list[str], checkout: Path) -> Run:
    """Run the named benchmarks again, timed, in `checkout` with the run's tier, threads, devices and data files.

    The code that runs is always the checkout's: a stored file never chooses where code runs.
    Raises RuntimeError when none of the benchmarks exists in the checkout, a --perf-data file of
    the run is gone, or pytest fails.
    """
    suite = run.suite
    fullnames = [bench["fullname"] for bench in run.data["benchmarks"]
                 if bench["name"] in names and (checkout / bench["fullname"].split("::")[0]).is_file()]
    if not fullnames:
        raise RuntimeError(f"none of the {len(names)} suspect benchmark(s) exists in the checkout {checkout}")
    data_files = suite.get("data_files", [])
    missing = [path for path in data_files if not Path(path).is_file()]
    if missing:
        raise RuntimeError(f"the run's --perf-data file(s) {', '.join(missing)} no longer exist")
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "rerun.json"
        command = [sys.executable, "-m", "pytest", "--benchmark", "--no-perf-memory", "-q", "-p", "no:cacheprovider",
                   f"--perf-tier={suite.get('tier', 'default')}", f"--perf-threads={suite.get('threads', 1)}",
                   f"--perf-device={','.join(suite.get('devices', ['cpu']))}", f"--benchmark-json={output}",
                   *(f"--perf-data={path}" for path in data_files), *fullnames]
        completed = subprocess.run(command, cwd=checkout, capture_output=True, text=True)
        if completed.returncode != 0 or not output.exists():
            raise RuntimeError(f"rerunning {len(fullnames)} benchmark(s) failed (exit {completed.returncode}):\n"
                               + completed.stdout[-2000:] + completed.stderr[-2000:])
        return load_run(output)


def gate(baseline: Run, current: Run, min_effect: float = MIN_EFFECT, thresholds: Thresholds = Thresholds(),
         rerun: Callable[[Run, list[str]], Run] | None = None) -> GateReport:
    """Compare `current` with `baseline`; rerun suspect timings once with `rerun` (if given) before judging."""
    report = compare_runs(baseline, current, min_effect, thresholds)
    if rerun is not None and report.suspects:
        names = [suspect.name for suspect in report.suspects]
        report.notes.append(f"rerunning {len(names)} suspect timing(s) before judging")
        try:
            repeated = rerun(current, names)
        except RuntimeError as error:
            report.notes.append(f"the rerun failed, so the suspects are judged on the stored rounds: {error}")
        else:
            missing = sorted(set(names) - set(repeated.benchmarks))
            if missing:
                report.notes.append(f"not in this checkout, judged on the stored rounds: {', '.join(missing)}")
            confirm_suspects(report, baseline, repeated, min_effect)
    return report


def checkout_root(start: Path) -> Path | None:
    """The nearest folder at or above `start` holding the suite (perf/conftest.py), or None."""
    for folder in (start, *start.parents):
        if (folder / "perf" / "conftest.py").is_file():
            return folder
    return None
