"""Measure a regression gate on this machine: false alarms on unchanged code, detection of planted slowdowns.

    python tools/measure_gate.py ab --runs 20 --slowdowns 0.10 0.05 --keep DIR -- --perf-tier pr
    python tools/measure_gate.py ab --runs 11 --slowdowns --keep DIR -- --perf-tier pr
    python tools/measure_gate.py ab --runs 4 --slowdowns 0.10 0.05 --slowed-only --keep NEW_DIR -- --perf-tier pr
    python tools/measure_gate.py stored --runs 20 --slowdowns 0.10 0.25 -- --benchmark-max-time=0.25
    python tools/measure_gate.py passes --runs 6 -- --perf-tier pr
    python tools/measure_gate.py templates --runs 3 --passes 5 -- --perf-tier pr
    python tools/measure_gate.py ab --replay DIR [DIR ...]

A slowdown is planted with $EMBEDSEARCH_PLANTED_SLOWDOWN (perf/planted_slowdown.py busy-waits that fraction
of every timed call except calibration; the library is untouched).

`ab`: each run is `embedsearch ab HEAD` (base: the HEAD commit's worktree; head: this working
tree, which must hold no uncommitted change) with the slowdown planted in the head worker only.
The cases (none and each slowdown) take turns, so a change in the machine's load hits them
alike; `--slowdowns` with no value runs the unchanged-code (A/A) case only, `--slowed-only` the
slowdowns only. Prints per case: runs with any alarm, the share of slowed benchmarks (median over
1 ms) caught, the wall time of one gate run next to one timed run of the same tier, and of it the
first pass and the confirmation passes (medians; runs kept before these were recorded show -);
and the same pairs re-judged at other minimum effects. `--replay` re-judges kept runs with this
checkout's rules instead, from their recorded pairs (see `replay`), and combines the folders it is given.

`passes`: A/A passes of fresh worker pairs over every benchmark (no confirmation, no memory pass):
per benchmark, the spread of its estimate between passes beside its within-pass standard error,
and the process offset they imply (docs/ab-gate.md: "Process offsets, measured").

`templates`: A/A passes by forked children, several passes per template pair, as the confirmation
passes would run if one template pair served them all: per benchmark, how much of the passes'
spread is shared by one template pair's children (see `template_components`).

`stored`: the stored-baseline gate: one baseline run, then unchanged and slowed runs, each gated
at several minimum effects with one rerun of the suspects (repeat-on-doubt).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from embedsearch.ab import (ALPHA, CONFIRMATION_PAIRS, CONFIRMATIONS, MAX_PAIRS, MORE_CONFIRMATIONS, PAIRS, ABResult,
                            PairedBenchmark, agree_on_plan, child_pass, estimate, make_side, paired_exponent_changes,
                            paired_from_record, pass_estimates, run_ab, run_session, started_workers, stop_templates,
                            suspect_names, time_comparisons, undecided, write_record)
from embedsearch.compare import Comparison, Thresholds
from embedsearch.gate import compare_runs, confirm_suspects, rerun_suite
from embedsearch.storage import Run, load_run

ROOT = Path(__file__).resolve().parents[1]
UNSLOWED = ("test_matmul", "test_copy", "test_suite")  # calibration: never slowed (perf/conftest.py)


def timed_run(output: Path, slowdown: float, pytest_args: list[str]) -> tuple[Run, float]:
    """One ordinary timed run of the suite with the planted slowdown; (the run, wall seconds)."""
    environment = dict(os.environ, EMBEDSEARCH_PLANTED_SLOWDOWN=str(slowdown))
    command = [sys.executable, "-m", "pytest", "--benchmark", "-q", "-p", "no:cacheprovider",
               f"--benchmark-json={output}", *pytest_args]
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.exit(f"suite run failed (exit {completed.returncode}):\n{completed.stdout[-3000:]}{completed.stderr[-3000:]}")
    return load_run(output), time.perf_counter() - started


def is_slowed(name: str, base_seconds: float) -> bool:
    """Whether a planted slowdown reaches a benchmark (`name`: its test, a node id's last part) and
    its base median exceeds 1 ms: the benchmarks the catch rate counts."""
    return not name.startswith(UNSLOWED) and base_seconds > 1e-3


def slowed_names(result: ABResult) -> list[str]:
    """The paired benchmarks a planted slowdown reaches and whose base median exceeds 1 ms."""
    return [c.name for c in result.report.comparisons if c.metric == "time" and is_slowed(c.name, c.baseline)]


def rejudged_alarms(result: ABResult, min_effect: float) -> set[str]:
    """Benchmarks the same passes would call slower at another minimum effect.

    Approximate: the suspects, and those given a second look, were chosen at the gate's own minimum
    effect, so at a smaller one a benchmark the gate did not suspect has no confirmation pass and
    cannot be found slower.
    """
    comparisons = time_comparisons(result.benchmarks, result.settings["alpha_per_look"], result.confirmations,
                                   min_effect, {})
    return {c.name.split("::")[-1] for c in comparisons if c.verdict == "slower"}  # the node id's last part


def record_folder(args: argparse.Namespace, name: str) -> Path:
    """--keep's folder (created), else a new temporary one named after the measurement."""
    folder = args.keep or Path(tempfile.mkdtemp(prefix=f"measure-{name}-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pass_row(benchmark: PairedBenchmark, alpha: float) -> dict:
    """One pass's estimate of a benchmark: its log-ratio, standard error and the base side's median round."""
    found = estimate(benchmark, alpha)
    return {"log_ratio": math.log(found.ratio), "standard_error": found.log_standard_error,
            "base_median": float(np.median([np.median(pair["base"]) for pair in benchmark.pairs]))}


def require_clean_tree() -> None:
    if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                      capture_output=True, text=True).stdout.strip():
        sys.exit("the working tree has uncommitted changes: A/A needs the working tree equal to HEAD")


def measure_passes(args: argparse.Namespace) -> None:
    """A/A passes of fresh workers: each benchmark's between-pass spread and the process offset it implies.

    A pass's log-ratio estimate = process offset (fixed for the pair of processes) + pair noise
    (its within-pass standard error s). Over passes, var = tau^2 + mean(s^2), so
    tau^2 = var - mean(s^2) per benchmark; pooled over benchmarks by averaging, clipped at 0."""
    require_clean_tree()
    folder = record_folder(args, "passes")
    base, head = make_side(ROOT, "base", "HEAD"), make_side(ROOT, "head", None)
    rng, estimates = random.Random(), {}
    for index in range(args.runs):
        started = time.perf_counter()
        session = run_session(base, head, [*args.pytest_args, "--no-perf-memory"], rng, PAIRS, MAX_PAIRS,
                              args.min_effect, {}, lambda *a, **k: None)
        for benchmark in session.paired:
            estimates.setdefault(benchmark.name, []).append(pass_row(benchmark, session.alpha))
        (folder / "passes.json").write_text(json.dumps({"pytest_args": args.pytest_args, "estimates": estimates}, indent=1))
        print(f"pass {index + 1}/{args.runs}: {len(session.paired)} benchmarks, {time.perf_counter() - started:.0f} s",
              flush=True)
    print_passes_summary(estimates)
    print(f"passes kept in {folder}")


def print_passes_summary(estimates: dict[str, list[dict]]) -> None:
    """Per benchmark (median over 1 ms): between-pass sd, rms within-pass standard error, offset tau; pooled tau."""
    print(f"\n{'passes':>6} {'sd between':>10} {'rms s':>7} {'tau':>6}  benchmark (log-ratio, %)")
    excess = []
    for name, rows in sorted(estimates.items()):
        if len(rows) < 2 or not is_slowed(name.split("::")[-1], float(np.median([row["base_median"] for row in rows]))):
            continue
        log_ratios = np.array([row["log_ratio"] for row in rows])
        within = float(np.mean([row["standard_error"] ** 2 for row in rows]))
        between = float(log_ratios.var(ddof=1))
        excess.append(between - within)
        print(f"{len(rows):>6} {math.sqrt(between):>10.2%} {math.sqrt(within):>7.2%} "
              f"{math.sqrt(max(0.0, between - within)):>6.2%}  {name.split('::')[-1][:80]}")
    print(f"pooled process offset tau over {len(excess)} benchmarks: {math.sqrt(max(0.0, float(np.mean(excess)))):.2%}"
          f" (per-benchmark tau, 90th percentile: {math.sqrt(max(0.0, float(np.percentile(excess, 90)))):.2%})")


def measure_templates(args: argparse.Namespace) -> None:
    """--runs template pairs (the confirmation passes' workers), each serving --passes A/A passes of its children."""
    require_clean_tree()
    folder = record_folder(args, "templates")
    base, head = make_side(ROOT, "base", "HEAD"), make_side(ROOT, "head", None)
    rng, estimates = random.Random(), {}
    for template in range(args.runs):
        started = time.perf_counter()
        with started_workers(base, head, [*args.pytest_args, "--no-perf-memory"], {}, template=True) as workers:
            plan, _, _ = agree_on_plan(workers["base"], workers["head"])
            for number in range(args.passes):
                label = f"template pair {template + 1}, pass {number + 1}"
                paired = child_pass(workers, plan, rng, args.min_effect, label, lambda *a, **k: None,
                                    plan_sent=not number)
                for benchmark in paired:
                    estimates.setdefault(benchmark.name, []).append(
                        {"template": template, "pass": number, **pass_row(benchmark, ALPHA)})
                (folder / "templates.json").write_text(json.dumps({"pytest_args": args.pytest_args,
                                                                   "estimates": estimates}, indent=1))
            stop_templates(workers)
        print(f"template pair {template + 1}/{args.runs}: {args.passes} passes of {len(plan)} benchmarks, "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    print_templates_summary(estimates)
    print(f"passes kept in {folder}")


def template_components(groups: list[np.ndarray]) -> dict:
    """One benchmark's pass log-ratios, grouped by template pair (at least two pairs of at least two passes).

    Assumes a pass's log-ratio = template pair offset + child offset and pair noise, each drawn
    independently with mean 0 in A/A (one-way random effects), the rest with the same variance
    in every pair. Returns: each pair's mean; s2, the pooled variance within pairs (child and
    pair noise); component, the variance of the pair offset, var(means) - s2 x mean(1 / passes)
    (unbiased for any pass counts; negative when the means agree better than chance); f_p, the
    one-way ANOVA F-test's p-value of no pair offset (scipy's f_oneway, exact for normal values);
    t_p, per pair, the two-sided p-value of its own passes' t-test against 0 (with no pair offset
    and an A/A mean of 0, below 0.05 in 5% of the pairs)."""
    from scipy.stats import f_oneway, t as student_t
    means = np.array([group.mean() for group in groups])
    s2 = sum(float(((group - group.mean()) ** 2).sum()) for group in groups) / sum(len(group) - 1 for group in groups)
    t_p = [float(2 * student_t.sf(abs(group.mean()) / (group.std(ddof=1) / math.sqrt(len(group))), len(group) - 1))
           for group in groups]
    return {"means": means, "s2": s2,
            "component": float(means.var(ddof=1)) - s2 * float(np.mean([1 / len(group) for group in groups])),
            "f_p": float(f_oneway(*groups).pvalue), "t_p": t_p}


def print_templates_summary(estimates: dict[str, list[dict]]) -> None:
    """Per benchmark (median over 1 ms): each template pair's mean, the sd within pairs, the F p-value; pooled."""
    print(f"\n{'pair means (log-ratio, %)':>28} {'sd within':>9} {'F p':>6}  benchmark")
    components, within, f_low, t_p = [], [], 0, []
    for name, rows in sorted(estimates.items()):
        if not is_slowed(name.split("::")[-1], float(np.median([row["base_median"] for row in rows]))):
            continue
        by_pair: dict[int, list[float]] = {}
        for row in rows:
            by_pair.setdefault(row["template"], []).append(row["log_ratio"])
        groups = [np.array(values) for values in by_pair.values() if len(values) >= 2]
        if len(groups) < 2:
            continue
        found = template_components(groups)
        components.append(found["component"])
        within.append(found["s2"])
        f_low += found["f_p"] < 0.05
        t_p += found["t_p"]
        print(f"{' '.join(f'{mean:+6.1%}' for mean in found['means']):>28} {math.sqrt(found['s2']):>9.2%} "
              f"{found['f_p']:>6.3f}  {name.split('::')[-1][:80]}")
    if not components:
        print("no benchmark over 1 ms with two template pairs of two passes")
        return
    pooled = float(np.mean(components))
    print(f"over {len(components)} benchmarks: template pair offset sd {math.sqrt(max(0.0, pooled)):.2%} "
          f"(mean variance component {pooled:+.2e}), sd within pairs "
          f"{math.sqrt(float(np.mean(within))):.2%}; F p < 0.05 in {f_low}/{len(components)}; one pair's passes "
          f"t-tested against 0: p < 0.05 in {sum(p < 0.05 for p in t_p)}/{len(t_p)}, p < 0.01 in "
          f"{sum(p < 0.01 for p in t_p)}/{len(t_p)}")


def measure_ab(args: argparse.Namespace) -> None:
    require_clean_tree()
    folder = record_folder(args, "ab")
    _, plain_seconds = timed_run(folder / "timed-run.json", 0.0, args.pytest_args)
    print(f"one timed run (pytest --benchmark {' '.join(args.pytest_args)}): {plain_seconds:.1f} s", flush=True)
    record = {"pytest_args": args.pytest_args, "min_effect": args.min_effect, "rejudge": args.rejudge,
              "timed_run_seconds": [plain_seconds], "rows": {str(case): [] for case in args.cases}}
    started = time.time()
    for index in range(args.runs):
        for slowdown in args.cases:
            result = run_ab(ROOT, "HEAD", None, args.pytest_args, min_effect=args.min_effect,
                            head_environment={"EMBEDSEARCH_PLANTED_SLOWDOWN": str(slowdown)}, log=lambda *a, **k: None)
            slowed = slowed_names(result)
            time_alarms = {c.name for c in result.report.regressions if c.metric == "time"}
            row = {"seconds": result.seconds, "first_pass_seconds": result.first_pass_seconds,
                   "pass_seconds": result.pass_seconds,
                   "alarms": [f"{c.name} {c.metric}" for c in result.report.regressions],
                   "slowed": slowed, "caught": sorted(time_alarms & set(slowed)),
                   "ratios": {c.name: c.ratio for c in result.report.comparisons if c.metric == "time"},
                   "suspects": sorted(c.name for c in result.report.comparisons if c.passes),
                   "rejudged": {str(effect): sorted(rejudged_alarms(result, effect)) for effect in args.rejudge}}
            record["rows"][str(slowdown)].append(row)
            write_record(result, folder / f"run-{index + 1:02d}-slowdown-{slowdown:.2f}.json")  # every pair
            print(f"run {index + 1}/{args.runs} slowdown {slowdown:.2f}: {len(row['alarms'])} alarm(s), "
                  f"{len(row['caught'])}/{len(slowed)} slowed caught, {result.seconds:.0f} s; "
                  f"{(time.time() - started) / 60:.1f} min", flush=True)
            (folder / "ab-runs.json").write_text(json.dumps(record, indent=1))
        if (index + 1) % 5 == 0:  # the timed run again now and then: the machine's load drifts
            record["timed_run_seconds"].append(timed_run(folder / "timed-run.json", 0.0, args.pytest_args)[1])
    print_ab_summary(record)
    print(f"runs kept in {folder}")


def print_ab_summary(record: dict) -> None:
    """The table of an A/B measurement: per case, runs alarmed, slowed benchmarks caught, wall time."""
    plain_seconds = float(np.median(record["timed_run_seconds"]))
    rows = {float(case): case_rows for case, case_rows in record["rows"].items() if case_rows}
    print(f"\nA/B gate, pytest args {' '.join(record['pytest_args'])!r}, minimum effect {record['min_effect']}; "
          f"one timed run: median {plain_seconds:.1f} s of {len(record['timed_run_seconds'])}")
    print(f"{'planted':>8} {'runs alarmed':>13} {'slowed caught (>1 ms)':>24} {'gate run s (median)':>20} "
          f"{'x timed run':>12} {'first pass s':>13} {'confirm s':>10} {'median ratio':>13}")
    for slowdown, case_rows in rows.items():
        alarmed = sum(bool(row["alarms"]) for row in case_rows)
        caught = sum(len(row["caught"]) for row in case_rows)
        slowed = sum(len(row["slowed"]) for row in case_rows)
        seconds = float(np.median([row["seconds"] for row in case_rows]))
        # medians over the runs that recorded them (not those kept before the phases were)
        phased = [row for row in case_rows if "first_pass_seconds" in row]
        of_runs = f" n={len(phased)}" if 0 < len(phased) < len(case_rows) else ""
        first_pass_seconds = (f"{np.median([row['first_pass_seconds'] for row in phased]):.1f}{of_runs}"
                              if phased else "-")
        confirmation_seconds = f"{np.median([sum(row['pass_seconds']) for row in phased]):.1f}" if phased else "-"
        ratio = float(np.median([r for row in case_rows for name, r in row["ratios"].items()
                                 if not name.startswith(UNSLOWED)]))
        share = f"{caught}/{slowed} = {caught / slowed:.1%}" if slowdown else "-"
        print(f"{slowdown:>8.0%} {alarmed:>7}/{len(case_rows):<5} {share:>24} {seconds:>20.1f} "
              f"{seconds / plain_seconds:>12.2f} {first_pass_seconds:>13} {confirmation_seconds:>10} {ratio:>13.3f}")
    print("the same pairs re-judged at other minimum effects (runs alarmed on time; slowed caught):")
    for effect in record["rejudge"]:
        cells = []
        for slowdown, case_rows in rows.items():
            alarmed = sum(bool(row["rejudged"][str(effect)]) for row in case_rows)
            caught = sum(len(set(row["rejudged"][str(effect)]) & set(row["slowed"])) for row in case_rows)
            slowed = sum(len(row["slowed"]) for row in case_rows)
            cells.append(f"{slowdown:.0%}: {alarmed}/{len(case_rows)}" + (f", {caught / slowed:.1%}" if slowdown else ""))
        print(f"  min effect {effect:.2f}: " + "; ".join(cells))
    for row in rows.get(0.0, []):
        if row["alarms"]:
            print(f"false alarm: {'; '.join(row['alarms'])}")


def replay(path: Path) -> dict | None:
    """One kept gate run re-judged with this checkout's rules, from its recorded pairs; None where it cannot be.

    The first pass and the first CONFIRMATIONS passes are kept as they are. Of the further passes,
    only the benchmarks this checkout's `undecided` picks are kept: exact for rules that pick a
    subset of the recorded run's suspects and second look (the others' timings are dropped);
    None for a run whose pass counts differ from this checkout's, or where the rules want a
    suspect or a second look the run did not time. Assumes the kept benchmarks' passes would
    have read the same had their children timed fewer neighbours. Its alarms are time and
    scaling-exponent regressions, as kept and as replayed (`exponent_alarms`)."""
    record = json.loads(path.read_text())
    settings = record["settings"]
    if (settings["confirmations"], settings["more_confirmations"], settings["confirmation_pairs"]) != \
            (CONFIRMATIONS, MORE_CONFIRMATIONS, CONFIRMATION_PAIRS):
        return None
    first = [paired_from_record(b) for b in record["benchmarks"]]
    recorded = [[paired_from_record(b) for b in passed] for passed in record["confirmations"]]
    suspects = set(suspect_names(first, settings["min_effect"]))
    first_look = [[b for b in passed if b.name in suspects] for passed in recorded[:CONFIRMATIONS]] if suspects else []
    if suspects and (len(first_look) < CONFIRMATIONS or any(len(passed) != len(suspects) for passed in first_look)):
        return None
    again = set(undecided(pass_estimates(first_look), settings["min_effect"])) if suspects else set()
    second_look = [[b for b in passed if b.name in again] for passed in recorded[CONFIRMATIONS:]]
    if again and (len(second_look) < MORE_CONFIRMATIONS or any(len(passed) != len(again) for passed in second_look)):
        return None
    confirmations = first_look + (second_look if again else [])
    comparisons = time_comparisons(first, settings["alpha_per_look"], confirmations, settings["min_effect"], {})
    short = {c.name: c.name.split("::")[-1] for c in comparisons}  # as the record's comparisons name them
    return {"alarms": {short[c.name] for c in comparisons if c.verdict == "slower"}
            | exponent_alarms({short[c.name]: c.ratio for c in comparisons}),
            "slowed": {short[c.name] for c in comparisons if is_slowed(short[c.name], c.baseline)},
            "kept_alarms": {c["name"] for c in record["comparisons"]
                            if (c["metric"], c["verdict"]) in (("time", "slower"), ("exponent", "changed"))},
            "kept_timings": sum(map(len, recorded)), "timings": sum(map(len, confirmations))}


def exponent_alarms(ratios: dict[str, float]) -> set[str]:
    """The scaling series `embedsearch.ab.paired_exponent_changes` finds changed, from a kept record's
    time ratios: a series is the `test_scaling` ids that differ only in `-n<size>-` (a kept record
    holds ids, not the saved runs' parameters)."""
    benchmarks, time = [], []
    for name, ratio in ratios.items():
        size = re.search(r"-n(\d+)-", name)
        if name.startswith("test_scaling[") and size:
            info = {"scaling": True, "n": int(size.group(1)), "spec": name.replace(size.group(0), "-")}
            benchmarks.append({"name": name, "extra_info": info, "stats": {"median": 1.0}})
            time.append(Comparison(name, "time", 1.0, ratio, ratio))
    changed = paired_exponent_changes(time, Run({"benchmarks": benchmarks}), Thresholds())
    return {"exponent of " + c.name.split("spec=", 1)[1] for c in changed if c.regression}


def print_replay(folders: list[Path]) -> None:
    """Per planted slowdown: the kept runs' verdicts and confirmation timings, as kept and as replayed."""
    rows: dict[str, list[dict | None]] = {}
    for folder in folders:
        for path in sorted(folder.glob("run-*-slowdown-*.json")):
            rows.setdefault(path.stem.split("slowdown-")[1], []).append(replay(path))
    print(f"{'planted':>8} {'runs':>5} {'alarmed: kept -> replayed':>26} {'slowed caught: kept -> replayed':>32} "
          f"{'confirmation timings (benchmark x pass)':>40}")
    for case, replayed in sorted(rows.items()):
        done = [row for row in replayed if row is not None]
        kept = sum(len(row["kept_alarms"] & row["slowed"]) for row in done)
        now = sum(len(row["alarms"] & row["slowed"]) for row in done)
        slowed = sum(len(row["slowed"]) for row in done)
        caught = f"{kept}/{slowed} -> {now}/{slowed}" if float(case) else "-"
        print(f"{float(case):>8.0%} {len(done):>5} {sum(bool(row['kept_alarms']) for row in done):>13} -> "
              f"{sum(bool(row['alarms']) for row in done):<9} {caught:>32} "
              f"{sum(row['kept_timings'] for row in done):>22} -> {sum(row['timings'] for row in done)}"
              + (f"  ({len(replayed) - len(done)} run(s) not replayable)" if len(done) < len(replayed) else ""))


def rerun_with(slowdown: float):
    """The stored gate's rerun, in this checkout, under the same planted slowdown as the run it confirms."""
    def rerun(run: Run, names: list[str]) -> Run:
        previous = os.environ.get("EMBEDSEARCH_PLANTED_SLOWDOWN")
        os.environ["EMBEDSEARCH_PLANTED_SLOWDOWN"] = str(slowdown)
        try:
            return rerun_suite(run, names, ROOT)
        finally:
            if previous is None:
                os.environ.pop("EMBEDSEARCH_PLANTED_SLOWDOWN")
            else:
                os.environ["EMBEDSEARCH_PLANTED_SLOWDOWN"] = previous
    return rerun


def measure_stored(args: argparse.Namespace) -> None:
    folder = record_folder(args, "gate")
    started = time.time()
    baseline, _ = timed_run(folder / "baseline.json", 0.0, args.pytest_args)
    print(f"baseline: {len(baseline.benchmarks)} benchmarks", flush=True)
    results = {}  # (slowdown, effect) -> list of (alarm before rerun, alarm after, caught, slowed)
    for slowdown in args.cases:
        for index in range(args.runs):
            run, _ = timed_run(folder / f"run-{slowdown:.2f}-{index:02d}.json", slowdown, args.pytest_args)
            reports = {effect: compare_runs(baseline, run, effect) for effect in args.min_effects}
            suspects = sorted({c.name for report in reports.values() for c in report.suspects})
            rerun = rerun_with(slowdown)(run, suspects) if suspects else None
            slowed = [name for name in run.benchmarks if not name.startswith(UNSLOWED)]
            for effect, report in reports.items():
                before = bool(report.regressions)
                if rerun is not None:
                    confirm_suspects(report, baseline, rerun, effect)
                time_regressions = {c.name for c in report.regressions if c.metric == "time"}
                results.setdefault((slowdown, effect), []).append(
                    (before, bool(report.regressions), len(time_regressions & set(slowed)), len(slowed)))
            print(f"slowdown {slowdown:.2f} run {index + 1}/{args.runs}: {len(suspects)} suspect(s) rerun; "
                  f"{(time.time() - started) / 60:.1f} min", flush=True)
    print(f"\nstored-baseline gate, {args.runs} runs per condition ({(time.time() - started) / 60:.1f} min):")
    print(f"{'slowdown':>8} {'min effect':>10} {'alarmed (no rerun)':>19} {'alarmed (rerun)':>16} {'slowed caught':>20}")
    for (slowdown, effect), rows in sorted(results.items()):
        caught, slowed = sum(row[2] for row in rows), sum(row[3] for row in rows)
        share = f"{caught}/{slowed} = {caught / slowed:.1%}" if slowdown else "-"
        print(f"{slowdown:>8.2f} {effect:>10.2f} {sum(r[0] for r in rows):>13}/{len(rows):<5} "
              f"{sum(r[1] for r in rows):>10}/{len(rows):<5} {share:>20}")
    print(f"runs kept in {folder}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gate", choices=("ab", "passes", "templates", "stored"),
                        help="which gate to measure; passes: the A/B gate's process offset; templates: the offset "
                             "a template pair's children share")
    parser.add_argument("--runs", type=int, default=20, help="runs per case, or template pairs (default 20)")
    parser.add_argument("--passes", type=int, default=5, help="templates: passes per template pair (default 5)")
    parser.add_argument("--slowdowns", type=float, nargs="*", default=[0.05, 0.10],
                        help="planted slowdowns as fractions (default 0.05 0.10; given with no value: "
                             "unchanged code only)")
    parser.add_argument("--slowed-only", action="store_true",
                        help="ab, stored: run the slowdowns only, not the unchanged-code (A/A) case")
    parser.add_argument("--min-effect", type=float, default=0.05, help="ab: the gate's minimum effect (default 0.05)")
    parser.add_argument("--rejudge", type=float, nargs="+", default=[0.03, 0.05, 0.10],
                        help="ab: minimum effects to re-judge the same pairs at (default 0.03 0.05 0.10)")
    parser.add_argument("--min-effects", type=float, nargs="+", default=[0.05, 0.10, 0.15],
                        help="stored: minimum effects to evaluate (default 0.05 0.10 0.15)")
    parser.add_argument("--keep", type=Path, default=None, help="keep every run's record in this folder")
    parser.add_argument("--summarize", type=Path, default=None,
                        help="ab: print the table of a measurement kept in this folder (its ab-runs.json) and stop")
    parser.add_argument("--replay", type=Path, nargs="+", default=None,
                        help="ab: re-judge the runs kept in these folders with this checkout's rules and stop")
    argv = sys.argv[1:]
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.pytest_args = pytest_args
    if args.runs < 1 or any(s <= 0 for s in args.slowdowns):
        parser.error("expected --runs >= 1 and slowdowns > 0")
    if args.slowed_only and not args.slowdowns:
        parser.error("--slowed-only with no slowdown leaves no case to run: expected at least one slowdown")
    args.cases = ([] if args.slowed_only else [0.0]) + args.slowdowns  # 0.0: unchanged code (A/A)
    if args.keep and args.keep.exists() and (not args.keep.is_dir() or any(args.keep.iterdir())):
        parser.error(f"--keep {args.keep} exists and is not an empty folder: expected a new or empty folder, since a "
                     "measurement writes its records there under fixed names (combine kept folders with --replay)")
    if args.gate == "templates" and (args.runs < 2 or args.passes < 2):
        parser.error(f"templates: --runs {args.runs}, --passes {args.passes}: expected at least 2 of each")
    if args.summarize:
        print_ab_summary(json.loads((args.summarize / "ab-runs.json").read_text()))
    elif args.replay:
        print_replay(args.replay)
    else:
        {"ab": measure_ab, "passes": measure_passes, "templates": measure_templates,
         "stored": measure_stored}[args.gate](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
