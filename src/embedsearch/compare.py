"""What both gates share: the thresholds, one comparison, the deterministic figures, the table.

Time is judged by each gate its own way (`gate.py`: against a stored baseline; `ab.py`: paired
in time). The other figures are deterministic or nearly, and both gates judge them here with the
same tolerances: peak memory, index bytes, recall, top-1 accuracy and scaling exponents.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .fields import GPU_PEAK_BYTES, INDEX_BYTES, PEAK_BYTES, RECALL, TOP1
from .storage import Run

REGRESSION_VERDICTS = ("slower", "worse", "changed", "failed")


@dataclass(frozen=True)
class Thresholds:
    """What counts as a regression besides time: memory, bytes, recall, accuracy, scaling exponents."""

    memory_relative: float = 0.02
    # The same benchmark's peak moved by up to 335 KiB between worker processes of unchanged code (13
    # A/B runs, README): a one-time allocation that some processes make inside the measured call.
    memory_absolute_bytes: int = 512 * 2**10
    recall_drop: float = 0.01
    accuracy_drop: float = 0.002
    exponent_change: float = 0.2


@dataclass
class Comparison:
    """One figure of one benchmark: baseline, current, ratio (with its interval for time), verdict.

    `verdict` is one of: same, slower, faster, unsure (significant but below the minimum
    effect), worse, better, changed (a scaling exponent), failed (the test failed on the head
    side only), not comparable (time from different machines).
    """

    name: str
    metric: str
    baseline: float
    current: float
    ratio: float
    low: float | None = None
    high: float | None = None
    verdict: str = "same"
    rerun: "Comparison | None" = None
    pairs: int | None = None  # the A/B gate's paired samples
    passes: tuple = ()  # the A/B gate's per-pass estimates (stats.PairedEstimate), when it timed more than one

    @property
    def regression(self) -> bool:
        if self.rerun is not None:
            return self.rerun.regression
        return self.verdict in REGRESSION_VERDICTS


@dataclass
class GateReport:
    comparisons: list[Comparison]
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Comparison]:
        return [comparison for comparison in self.comparisons if comparison.regression]

    @property
    def improvements(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict in ("faster", "better") and not c.regression]

    @property
    def suspects(self) -> list[Comparison]:
        """Time comparisons judged slower before any rerun."""
        return [c for c in self.comparisons if c.metric == "time" and c.verdict == "slower"]


class ComparisonError(ValueError):
    """Two runs that cannot be compared: nothing in common, impossible statistics, a run against itself."""


def check_median(name: str, median: object, source: str) -> float:
    """`median` as a float when it is a positive finite time, else raise naming the benchmark and file."""
    try:
        value = float(median)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ComparisonError(f"{source}: benchmark {name!r} has median {median!r}: "
                              f"expected a positive finite time in seconds")
    return value


def compare_figures(name: str, base_info: dict, current_info: dict, thresholds: Thresholds) -> list[Comparison]:
    """Peak memory, index bytes, recall and top-1 of one benchmark held by both sides."""
    comparisons = []
    for key in (PEAK_BYTES, GPU_PEAK_BYTES):
        if key in base_info and key in current_info:
            allowed = base_info[key] * (1 + thresholds.memory_relative) + thresholds.memory_absolute_bytes
            verdict = "worse" if current_info[key] > allowed else "same"
            comparisons.append(figure(name, key, base_info[key], current_info[key], verdict))
    if INDEX_BYTES in base_info and INDEX_BYTES in current_info:
        difference = current_info[INDEX_BYTES] - base_info[INDEX_BYTES]
        verdict = "worse" if difference > 0 else "better" if difference < 0 else "same"
        comparisons.append(figure(name, INDEX_BYTES, base_info[INDEX_BYTES], current_info[INDEX_BYTES], verdict))
    for key, drop in ((RECALL, thresholds.recall_drop), (TOP1, thresholds.accuracy_drop)):
        if key in base_info and key in current_info:
            change = current_info[key] - base_info[key]
            verdict = "worse" if change < -drop else "better" if change > drop else "same"
            comparisons.append(figure(name, key, base_info[key], current_info[key], verdict))
    return comparisons


def compare_exponents(baseline: Run, current: Run, thresholds: Thresholds) -> list[Comparison]:
    """Scaling exponents stored with both runs; a change beyond the tolerance either way is a regression."""
    base = {fit["series"]: fit["exponent"] for fit in baseline.suite.get("scaling", [])}
    comparisons = []
    for fit in current.suite.get("scaling", []):
        if fit["series"] in base:
            change = fit["exponent"] - base[fit["series"]]
            verdict = "changed" if abs(change) > thresholds.exponent_change else "same"
            comparisons.append(figure(fit["series"], "exponent", base[fit["series"]], fit["exponent"], verdict))
    return comparisons


def figure(name: str, metric: str, baseline: float, current: float, verdict: str) -> Comparison:
    """A comparison of one deterministic figure, its ratio current / baseline."""
    ratio = current / baseline if baseline else math.inf if current else 1.0
    return Comparison(name, metric, float(baseline), float(current), ratio, verdict=verdict)


def format_report(report: GateReport, show_all: bool = False, base_title: str = "baseline",
                  current_title: str = "current") -> str:
    """A table of comparisons (all, or only those not 'same'), the notes, and the overall verdict."""
    shown = [c for c in report.comparisons  # paired times (the A/B gate) always, other figures when they moved
             if show_all or c.verdict != "same" or c.rerun is not None or c.pairs is not None]
    width = max([len("benchmark"), *(len(c.name) for c in shown)])
    paired = any(c.pairs is not None for c in report.comparisons)
    lines = [f"{'benchmark':<{width}} {'figure':<12} {base_title:>12} {current_title:>12} {'ratio':>7} "
             f"{'interval':>17}" + (f" {'pairs':>5}" if paired else "") + "  verdict"]
    for c in shown:
        interval = f"[{c.low:.3f}, {c.high:.3f}]" if c.low is not None else ""
        verdict = c.verdict
        if c.rerun is not None:
            again = c.rerun
            while again is not None:
                verdict += (f"; rerun {again.ratio:.3f} [{again.low:.3f}, {again.high:.3f}] {again.verdict}"
                            if again.low is not None else f"; {again.verdict}")
                again = again.rerun
            verdict += " -> REGRESSION" if c.regression else " -> not confirmed"
        elif c.regression:
            verdict += " -> REGRESSION"
        if c.passes:
            verdict += " (passes " + ", ".join(f"{found.ratio:.3f}" for found in c.passes) + ")"
        pairs = (f" {c.pairs if c.pairs is not None else '':>5}" if paired else "")
        lines.append(f"{c.name:<{width}} {c.metric:<12} {format_value(c.metric, c.baseline):>12} "
                     f"{format_value(c.metric, c.current):>12} {c.ratio:7.3f} {interval:>17}{pairs}  {verdict}")
    lines += [f"note: {note}" for note in report.notes]
    regressions = report.regressions
    lines.append(f"gate: {len(regressions)} regression(s) in {len(report.comparisons)} comparisons"
                 + (": FAIL" if regressions else ": pass"))
    return "\n".join(lines)


def format_value(metric: str, value: float) -> str:
    """A figure for a table: times in ms, bytes in MiB, others with four decimals."""
    if not math.isfinite(value):
        return str(value)
    if metric == "time":
        return f"{value * 1e3:.3f} ms"
    if metric.endswith("bytes"):
        return f"{value / 2**20:.2f} MiB"
    return f"{value:.4f}"
