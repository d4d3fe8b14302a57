"""Measure the regression gate on this machine: false alarms on unchanged reruns, detection of planted slowdowns.

Runs the suite (timed, smoke tier by default) once as the baseline, then `--runs` times unchanged
and `--runs` times with each planted slowdown (perf/harness.py busy-waits for that fraction of
every timed call except calibration; the library is untouched). Each run is gated against the
baseline at every minimum effect in `--min-effects`; for each run, the benchmarks any threshold
suspects are rerun once (a real pytest run of just those), which is the gate's repeat-on-doubt.

Prints, per slowdown and minimum effect: runs with an alarm before and after the rerun, and the
share of slowed benchmarks caught. An unchanged run with any confirmed regression is a false alarm.

    python tools/measure_gate.py --runs 20 --slowdowns 0.10 0.25
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from embedsearch.baseline import Run, Thresholds, compare_runs, confirm_suspects, load_run, rerun_suite

ROOT = Path(__file__).resolve().parents[1]
CALIBRATION = ("test_matmul", "test_copy", "test_suite")  # never slowed: the machine's yardstick


def run_suite(output: Path, tier: str, slowdown: float, extra: list[str]) -> Run:
    """One timed run of the suite, with the planted slowdown, written to `output`."""
    environment = dict(os.environ, EMBEDSEARCH_PLANTED_SLOWDOWN=str(slowdown))
    command = [sys.executable, "-m", "pytest", "--benchmark", f"--perf-tier={tier}", "-q", "-p", "no:cacheprovider",
               f"--benchmark-json={output}", *extra]
    completed = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"suite run failed (exit {completed.returncode}):\n{completed.stdout[-3000:]}{completed.stderr[-3000:]}")
    return load_run(output)


def rerun_with(slowdown: float):
    """The gate's rerun, under the same planted slowdown as the run it confirms."""
    def rerun(run: Run, names: list[str]) -> Run:
        previous = os.environ.get("EMBEDSEARCH_PLANTED_SLOWDOWN")
        os.environ["EMBEDSEARCH_PLANTED_SLOWDOWN"] = str(slowdown)
        try:
            return rerun_suite(run, names)
        finally:
            if previous is None:
                os.environ.pop("EMBEDSEARCH_PLANTED_SLOWDOWN")
            else:
                os.environ["EMBEDSEARCH_PLANTED_SLOWDOWN"] = previous
    return rerun


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="reruns per condition (default 20)")
    parser.add_argument("--slowdowns", type=float, nargs="+", default=[0.10, 0.25],
                        help="planted slowdowns as fractions (default 0.10 0.25)")
    parser.add_argument("--min-effects", type=float, nargs="+", default=[0.05, 0.10, 0.15],
                        help="gate minimum effects to evaluate (default 0.05 0.10 0.15)")
    parser.add_argument("--tier", default="smoke", choices=("smoke", "default", "full"))
    parser.add_argument("--keep", type=Path, default=None, help="keep every run's JSON in this folder")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args()
    if args.runs < 1 or any(s <= 0 for s in args.slowdowns) or any(m < 0 for m in args.min_effects):
        parser.error("expected --runs >= 1, slowdowns > 0 and min effects >= 0")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="measure-gate-"))
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    baseline = run_suite(folder / "baseline.json", args.tier, 0.0, args.pytest_args)
    print(f"baseline: {len(baseline.benchmarks)} benchmarks, tier {args.tier}", flush=True)
    thresholds = {effect: Thresholds(min_effect=effect) for effect in args.min_effects}
    results = {}  # (slowdown, effect) -> list of (alarm before rerun, alarm after, caught, slowed)
    medians: dict[float, dict[str, list[float]]] = {}  # slowdown -> benchmark -> medians over runs
    for slowdown in [0.0, *args.slowdowns]:
        for index in range(args.runs):
            run = run_suite(folder / f"run-{slowdown:.2f}-{index:02d}.json", args.tier, slowdown, args.pytest_args)
            for name, bench in run.benchmarks.items():
                medians.setdefault(slowdown, {}).setdefault(name, []).append(bench["stats"]["median"])
            reports = {effect: compare_runs(baseline, run, t) for effect, t in thresholds.items()}
            suspects = sorted({c.name for report in reports.values() for c in report.suspects})
            rerun = rerun_with(slowdown)(run, suspects) if suspects else None
            slowed = [name for name in run.benchmarks if not name.startswith(CALIBRATION)]
            for effect, report in reports.items():
                before = bool(report.regressions)
                if rerun is not None:
                    confirm_suspects(report, baseline, rerun, thresholds[effect])
                time_regressions = {c.name for c in report.regressions if c.metric == "time"}
                after = bool(report.regressions)
                results.setdefault((slowdown, effect), []).append(
                    (before, after, len(time_regressions & set(slowed)), len(slowed),
                     [f"{c.name} {c.metric}" for c in report.regressions]))
            print(f"slowdown {slowdown:.2f} run {index + 1}/{args.runs}: {len(suspects)} suspect(s) rerun; "
                  f"{(time.time() - started) / 60:.1f} min", flush=True)
    print(f"\nGate measured on {args.runs} runs per condition, tier {args.tier}, against one baseline run "
          f"({(time.time() - started) / 60:.1f} min):")
    print(f"{'slowdown':>8} {'min effect':>10} {'runs alarmed (no rerun)':>24} {'runs alarmed (rerun)':>21} "
          f"{'slowed benchmarks caught':>25}")
    for (slowdown, effect), rows in sorted(results.items()):
        before = sum(row[0] for row in rows)
        after = sum(row[1] for row in rows)
        caught, slowed = sum(row[2] for row in rows), sum(row[3] for row in rows)
        share = f"{caught}/{slowed} = {caught / slowed:.1%}" if slowdown else "-"
        print(f"{slowdown:>8.2f} {effect:>10.2f} {before:>18}/{len(rows):<5} {after:>15}/{len(rows):<5} {share:>25}")
    for slowdown in args.slowdowns:
        delivered = [np.median(medians[slowdown][name]) / np.median(medians[0.0][name])
                     for name in medians[slowdown] if name in medians[0.0] and not name.startswith(CALIBRATION)]
        print(f"planted {slowdown:.0%}: delivered slowdown (median over runs, planted / unchanged), "
              f"across benchmarks: median {np.median(delivered) - 1:+.1%}, "
              f"range {min(delivered) - 1:+.1%} .. {max(delivered) - 1:+.1%}")
    for (slowdown, effect), rows in sorted(results.items()):
        if slowdown == 0:
            for row in rows:
                if row[1]:
                    print(f"false alarm at min effect {effect:.2f}: {'; '.join(row[4])}")
    (folder / "summary.json").write_text(json.dumps({f"{s}-{e}": rows for (s, e), rows in results.items()}, indent=1))
    print(f"runs kept in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
