"""Saved benchmark runs (pytest-benchmark JSON): save atomically, load robustly, compare and gate.

A run is the JSON pytest-benchmark writes, with every round's time (`stats.data`), each
benchmark's `extra_info`, and the suite's additions: `machine_info["calibration"]` (matmul
GFLOP/s, copy GB/s) and `embedsearch` (tier, threads, devices, root folder, scaling exponents).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

RUN_NAME = re.compile(r"^(\d{4})_.*\.json$")


@dataclass
class Run:
    """One saved run: its file (None when in memory) and its JSON."""

    data: dict
    path: Path | None = None

    @property
    def benchmarks(self) -> dict[str, dict]:
        """Benchmarks by name (pytest's test id)."""
        return {bench["name"]: bench for bench in self.data["benchmarks"]}

    @property
    def datetime(self) -> str:
        return self.data.get("datetime", "")

    @property
    def commit(self) -> str:
        info = self.data.get("commit_info") or {}
        commit = (info.get("id") or "unknown")[:10]
        return commit + ("+dirty" if info.get("dirty") else "")

    @property
    def calibration(self) -> dict[str, float]:
        return (self.data.get("machine_info") or {}).get("calibration") or {}

    @property
    def suite(self) -> dict:
        return self.data.get("embedsearch") or {}

    @property
    def label(self) -> str:
        return str(self.path) if self.path is not None else "(this run)"


class RunFileError(ValueError):
    """A saved run that cannot be read; the message names the file."""


def load_run(path: str | Path) -> Run:
    """Read one saved run, or raise RunFileError naming the file and what is wrong with it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFileError(f"{path}: not a readable pytest-benchmark JSON file ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise RunFileError(f"{path}: expected a pytest-benchmark JSON object with a 'benchmarks' list")
    for bench in data["benchmarks"]:
        if not isinstance(bench, dict) or "name" not in bench or "median" not in (bench.get("stats") or {}):
            raise RunFileError(f"{path}: a benchmark entry lacks 'name' or 'stats.median'")
    return Run(data, path)


def run_files(locations: list[str | Path]) -> list[Path]:
    """The run files named: files as given, folders searched recursively for *.json."""
    files = []
    for location in map(Path, locations):
        if location.is_dir():
            files += sorted(location.rglob("*.json"))
        elif location.is_file():
            files.append(location)
        else:
            raise FileNotFoundError(f"{location}: no such run file or folder")
    return files


def load_runs(locations: list[str | Path]) -> list[Run]:
    """Every readable run under `locations`, oldest first; unreadable files are skipped with a warning."""
    runs = []
    for path in run_files(locations):
        try:
            runs.append(load_run(path))
        except RunFileError as error:
            warnings.warn(f"skipping {error}", stacklevel=2)
    return sorted(runs, key=lambda run: (run.datetime, str(run.path)))


def latest_run(location: str | Path) -> Run:
    """The run in a file, or the newest readable run in a folder."""
    runs = load_runs([location])
    if not runs:
        raise RunFileError(f"{location}: holds no readable saved run")
    return runs[-1]


def save_run(data: dict, folder: str | Path, name: str) -> Path:
    """Write a run as `folder/NNNN_<name>.json` (pytest-benchmark's naming) and return its path.

    Atomic: the JSON is written and flushed to a temporary file, then hard-linked under its final
    name, which fails rather than overwrite; so a reader never sees half a file, an interrupted
    save leaves no run behind, and concurrent saves each get their own number.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=4, default=str).encode()
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".saving-", suffix=".tmp")
    os.chmod(temporary, 0o644)  # mkstemp makes it private; a saved run is an ordinary file
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        while True:
            numbers = [int(match.group(1)) for file in folder.iterdir() if (match := RUN_NAME.match(file.name))]
            target = folder / f"{max(numbers, default=0) + 1:04d}_{name}.json"
            try:
                os.link(temporary, target)
                return target
            except FileExistsError:
                continue  # another run took this number first
    finally:
        os.unlink(temporary)


def scaling_exponents(benchmarks: list[dict]) -> list[dict]:
    """Fitted exponent b of time = a * n^b per scaling series (same benchmark and parameters but n).

    A series is every benchmark whose extra_info has `scaling: true` and shares all other
    extra_info parameters; at least three sizes are needed. Least squares on log-log medians.
    """
    series: dict[str, list[tuple[int, float]]] = {}
    for bench in benchmarks:
        info = bench.get("extra_info") or {}
        if not info.get("scaling"):
            continue
        key = scaling_key(bench)
        series.setdefault(key, []).append((int(info["n"]), float(bench["stats"]["median"])))
    fits = []
    for key, points in sorted(series.items()):
        if len({n for n, _ in points}) < 3:
            continue
        sizes, seconds = np.array(points, dtype=np.float64).T
        exponent, intercept = np.polyfit(np.log(sizes), np.log(seconds), 1)
        fits.append({"series": key, "exponent": float(exponent), "n": [int(n) for n in sizes],
                     "seconds": [float(s) for s in seconds]})
    return fits


SCALING_PARAMETERS = ("spec", "d", "k", "nq", "metric", "device", "params")


def scaling_key(bench: dict) -> str:
    """The name of a benchmark's scaling series: its function and every parameter but n."""
    info = bench.get("extra_info") or {}
    function = bench["name"].split("[")[0]
    return function + " " + " ".join(f"{name}={info.get(name)}" for name in SCALING_PARAMETERS if name in info)


@dataclass(frozen=True)
class Thresholds:
    """What counts as a regression. Time: the bootstrap interval of the ratio of medians lies above 1
    and its point estimate above 1 + min_effect. The others are deterministic or nearly."""

    min_effect: float = 0.15  # measured: tools/measure_gate.py (README)
    confidence: float = 0.99
    resamples: int = 2000
    memory_relative: float = 0.02
    memory_absolute_bytes: int = 256 * 2**10
    recall_drop: float = 0.01
    accuracy_drop: float = 0.002
    exponent_change: float = 0.2


@dataclass
class Comparison:
    """One figure of one benchmark: baseline, current, ratio (with its interval for time), verdict."""

    name: str
    metric: str
    baseline: float
    current: float
    ratio: float
    low: float | None = None
    high: float | None = None
    verdict: str = "same"  # same | slower | faster | unsure | worse | better | changed
    rerun: "Comparison | None" = None

    @property
    def regression(self) -> bool:
        if self.rerun is not None:
            return self.rerun.regression
        return self.verdict in ("slower", "worse", "changed")


@dataclass
class GateReport:
    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)
    time_scale: float = 1.0  # current times are multiplied by this (calibration normalisation)

    @property
    def regressions(self) -> list[Comparison]:
        return [comparison for comparison in self.comparisons if comparison.regression]

    @property
    def suspects(self) -> list[Comparison]:
        """Time comparisons judged slower before any rerun."""
        return [c for c in self.comparisons if c.metric == "time" and c.verdict == "slower"]


def bootstrap_ratio(baseline: np.ndarray, current: np.ndarray, resamples: int, confidence: float,
                    seed: int = 0, max_rounds: int = 1000) -> tuple[float, float, float]:
    """Ratio of medians current / baseline and its percentile-bootstrap interval at `confidence`.

    Rounds beyond `max_rounds` are thinned evenly (pytest-benchmark may record 10^5 rounds of a
    fast operation). With a single round on either side the interval is the point itself.
    """
    baseline, current = (_thin(np.asarray(a, dtype=np.float64), max_rounds) for a in (baseline, current))
    ratio = float(np.median(current) / np.median(baseline))
    if len(baseline) < 2 and len(current) < 2:
        return ratio, ratio, ratio
    rng = np.random.default_rng(seed)
    base_medians = np.median(baseline[rng.integers(0, len(baseline), (resamples, len(baseline)))], axis=1)
    current_medians = np.median(current[rng.integers(0, len(current), (resamples, len(current)))], axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(current_medians / base_medians, [tail, 100 - tail])
    return ratio, float(low), float(high)


def _thin(rounds: np.ndarray, limit: int) -> np.ndarray:
    return rounds[np.linspace(0, len(rounds) - 1, limit).astype(int)] if len(rounds) > limit else rounds


def same_machine(baseline: Run, current: Run) -> bool:
    """Whether both runs report the same node, CPU and core count."""
    def identity(run: Run) -> tuple:
        info = run.data.get("machine_info") or {}
        cpu = info.get("cpu") or {}
        return info.get("node"), cpu.get("brand_raw"), cpu.get("count")
    return identity(baseline) == identity(current)


def compare_runs(baseline: Run, current: Run, thresholds: Thresholds = Thresholds()) -> GateReport:
    """Compare every benchmark both runs hold: time, peak and index bytes, recall, accuracy, exponents."""
    report = GateReport([])
    if not same_machine(baseline, current):
        base_gflops, current_gflops = baseline.calibration.get("matmul_gflops"), current.calibration.get("matmul_gflops")
        if base_gflops and current_gflops:
            report.time_scale = current_gflops / base_gflops
            report.notes.append(
                f"machines differ: current times normalised by the matmul calibration "
                f"({current_gflops:.1f} / {base_gflops:.1f} GFLOP/s = x{report.time_scale:.3f})")
        else:
            report.notes.append("machines differ and a run lacks the matmul calibration: times compared raw")
    if baseline.suite.get("tier") != current.suite.get("tier"):
        report.notes.append(f"tiers differ (baseline {baseline.suite.get('tier')}, current "
                            f"{current.suite.get('tier')}): only benchmarks both hold are compared")
    base_benchmarks, current_benchmarks = baseline.benchmarks, current.benchmarks
    for name in sorted(set(base_benchmarks) - set(current_benchmarks)):
        report.notes.append(f"{name}: in the baseline only, not compared")
    for name in sorted(set(current_benchmarks) - set(base_benchmarks)):
        report.notes.append(f"{name}: new, no baseline")
    for name in sorted(set(base_benchmarks) & set(current_benchmarks)):
        report.comparisons += compare_benchmark(name, base_benchmarks[name], current_benchmarks[name],
                                                thresholds, report.time_scale)
    report.comparisons += compare_exponents(baseline, current, thresholds)
    return report


def compare_benchmark(name: str, base: dict, current: dict, thresholds: Thresholds,
                      time_scale: float = 1.0) -> list[Comparison]:
    """The comparisons of one benchmark present in both runs."""
    comparisons = []
    base_rounds = base["stats"].get("data") or [base["stats"]["median"]]
    current_rounds = np.asarray(current["stats"].get("data") or [current["stats"]["median"]]) * time_scale
    ratio, low, high = bootstrap_ratio(np.asarray(base_rounds), current_rounds, thresholds.resamples,
                                       thresholds.confidence)
    if low > 1 and ratio > 1 + thresholds.min_effect:
        verdict = "slower"
    elif high < 1 and ratio < 1 / (1 + thresholds.min_effect):
        verdict = "faster"
    elif low > 1 or high < 1:
        verdict = "unsure"  # significant but below the minimum effect
    else:
        verdict = "same"
    comparisons.append(Comparison(name, "time", float(np.median(base_rounds)), float(np.median(current_rounds)),
                                  ratio, low, high, verdict))
    base_info, current_info = base.get("extra_info") or {}, current.get("extra_info") or {}
    for key in ("peak_bytes", "gpu_peak_bytes"):
        if key in base_info and key in current_info:
            allowed = base_info[key] * (1 + thresholds.memory_relative) + thresholds.memory_absolute_bytes
            verdict = "worse" if current_info[key] > allowed else "same"
            comparisons.append(_figure(name, key, base_info[key], current_info[key], verdict))
    if "index_bytes" in base_info and "index_bytes" in current_info:
        difference = current_info["index_bytes"] - base_info["index_bytes"]
        verdict = "worse" if difference > 0 else "better" if difference < 0 else "same"
        comparisons.append(_figure(name, "index_bytes", base_info["index_bytes"], current_info["index_bytes"], verdict))
    for key, drop in (("recall", thresholds.recall_drop), ("top1", thresholds.accuracy_drop)):
        if key in base_info and key in current_info:
            change = current_info[key] - base_info[key]
            verdict = "worse" if change < -drop else "better" if change > drop else "same"
            comparisons.append(_figure(name, key, base_info[key], current_info[key], verdict))
    return comparisons


def compare_exponents(baseline: Run, current: Run, thresholds: Thresholds) -> list[Comparison]:
    """Scaling exponents stored with both runs; a change beyond the tolerance either way is a regression."""
    base = {fit["series"]: fit["exponent"] for fit in baseline.suite.get("scaling", [])}
    comparisons = []
    for fit in current.suite.get("scaling", []):
        if fit["series"] in base:
            change = fit["exponent"] - base[fit["series"]]
            verdict = "changed" if abs(change) > thresholds.exponent_change else "same"
            comparisons.append(_figure(fit["series"], "exponent", base[fit["series"]], fit["exponent"], verdict))
    return comparisons


def _figure(name: str, metric: str, baseline: float, current: float, verdict: str) -> Comparison:
    ratio = current / baseline if baseline else math.inf if current else 1.0
    return Comparison(name, metric, float(baseline), float(current), ratio, verdict=verdict)


def confirm_suspects(report: GateReport, baseline: Run, rerun: Run, thresholds: Thresholds) -> None:
    """Repeat-on-doubt: judge each slower time again on a rerun; only a confirmed one stays a regression."""
    base_benchmarks, rerun_benchmarks = baseline.benchmarks, rerun.benchmarks
    for suspect in report.suspects:
        if suspect.name in rerun_benchmarks:
            suspect.rerun = compare_benchmark(suspect.name, base_benchmarks[suspect.name],
                                              rerun_benchmarks[suspect.name], thresholds, report.time_scale)[0]


def rerun_suite(run: Run, names: list[str]) -> Run:
    """Run the named benchmarks of `run` again, timed, with its tier, threads and devices; return the new run."""
    suite = run.suite
    fullnames = [bench["fullname"] for bench in run.data["benchmarks"] if bench["name"] in names]
    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "rerun.json"
        command = [sys.executable, "-m", "pytest", "--benchmark", "--no-perf-memory", "-q", "-p", "no:cacheprovider",
                   f"--perf-tier={suite.get('tier', 'default')}", f"--perf-threads={suite.get('threads', 1)}",
                   f"--perf-device={','.join(suite.get('devices', ['cpu']))}", f"--benchmark-json={output}",
                   *fullnames]
        completed = subprocess.run(command, cwd=suite.get("rootdir") or None, capture_output=True, text=True)
        if completed.returncode != 0 or not output.exists():
            raise RuntimeError(f"rerunning {len(fullnames)} benchmark(s) failed (exit {completed.returncode}):\n"
                               + completed.stdout[-2000:] + completed.stderr[-2000:])
        return load_run(output)


def gate(baseline: Run, current: Run, thresholds: Thresholds = Thresholds(),
         rerun: Callable[[Run, list[str]], Run] | None = rerun_suite) -> GateReport:
    """Compare `current` with `baseline`; rerun suspect timings once (unless `rerun` is None) before judging."""
    report = compare_runs(baseline, current, thresholds)
    if rerun is not None and report.suspects:
        names = [suspect.name for suspect in report.suspects]
        report.notes.append(f"rerunning {len(names)} suspect timing(s) before judging")
        try:
            repeated = rerun(current, names)
        except RuntimeError as error:
            report.notes.append(f"the rerun failed, so the suspects are judged on the stored rounds: {error}")
        else:
            confirm_suspects(report, baseline, repeated, thresholds)
    return report


def format_report(report: GateReport, show_all: bool = False) -> str:
    """A table of comparisons (all, or only those not 'same'), the notes, and the overall verdict."""
    shown = [c for c in report.comparisons if show_all or c.verdict != "same" or c.rerun is not None]
    width = max([len("benchmark"), *(len(c.name) for c in shown)])
    lines = [f"{'benchmark':<{width}} {'figure':<12} {'baseline':>12} {'current':>12} {'ratio':>7} "
             f"{'interval':>17}  verdict"]
    for c in shown:
        interval = f"[{c.low:.3f}, {c.high:.3f}]" if c.low is not None else ""
        verdict = c.verdict
        if c.rerun is not None:
            verdict += f"; rerun {c.rerun.ratio:.3f} [{c.rerun.low:.3f}, {c.rerun.high:.3f}] {c.rerun.verdict}"
            verdict += " -> REGRESSION" if c.regression else " -> not confirmed"
        elif c.regression:
            verdict += " -> REGRESSION"
        lines.append(f"{c.name:<{width}} {c.metric:<12} {_value(c.metric, c.baseline):>12} "
                     f"{_value(c.metric, c.current):>12} {c.ratio:7.3f} {interval:>17}  {verdict}")
    lines += [f"note: {note}" for note in report.notes]
    regressions = report.regressions
    lines.append(f"gate: {len(regressions)} regression(s) in {len(report.comparisons)} comparisons"
                 + (": FAIL" if regressions else ": pass"))
    return "\n".join(lines)


def _value(metric: str, value: float) -> str:
    if metric == "time":
        return f"{value * 1e3:.3f} ms"
    if metric.endswith("bytes"):
        return f"{value / 2**20:.2f} MiB"
    return f"{value:.4f}"
