"""Statistics of the gates and the history; each function states what it assumes.

- `bootstrap_ratio`: unpaired ratio of medians (the stored-baseline gate).
- `crossover_estimate`: paired log-ratios of rounds run interleaved in time, both orders (the A/B gate).
- `scaling_exponents`: least-squares exponent of time vs n.
- `change_points`: steps of a benchmark's series over runs (the history), a penalised L1
  piecewise-constant fit.

Change points. Method: asv's step detection (`asv/step_detect.py`), after F. Friedrich et al.,
"Complexity Penalized M-Estimation: Fast Computation", J. Comput. Graph. Stat. 17(1), 2008, with
the number of steps chosen by the Schwarz criterion (Y.-C. Yao, "Estimating the number of
change-points via Schwarz criterion", Stat. Probab. Lett. 6, 1988). For each number of segments
k the best split of the whole series into k constant pieces is found exactly (dynamic
programming over the L1 deviation of each piece from its median), and the k minimising

    SC(k) = beta * k + ln(floor + L1 deviation of the k-piece fit),   beta = 4 ln(m) / m

over the m runs is kept (asv's default beta). Unlike asv, the fit is exact (series of runs are
short: O(m^3) time, O(m^2) memory) and works on log times, so a step is a ratio.

Its noise model (what the method assumes): each run's median time is its segment's level times
independent multiplicative noise whose logarithm is Laplace-distributed with one scale, the same
for every run of the series, unknown and estimated from the series itself (not from each run's
rounds, which miss the run-to-run shifts of shared machines). Runs are assumed uncorrelated
(asv also fits an AR(1) correlation; this module does not). A step smaller than
`min_relative_step` is not reported, whatever its significance: the suite's run-to-run noise
makes smaller steps unreliable. With few runs one noisy run cannot be told from two steps.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np


def bootstrap_ratio(baseline: np.ndarray, current: np.ndarray, resamples: int, confidence: float,
                    seed: int = 0, max_rounds: int = 1000) -> tuple[float, float, float]:
    """Ratio of medians current / baseline and its percentile-bootstrap interval at `confidence`.

    Assumes the rounds of each side are independent draws from one distribution per side. That
    holds within one run, not between runs on different days or machines: the interval says
    nothing about a shift between jobs (README: "Noise is real here"). Rounds beyond
    `max_rounds` are thinned evenly (pytest-benchmark may record 10^5 rounds of a fast
    operation). With a single round on either side the interval is the point itself.
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


@dataclass(frozen=True)
class PairedEstimate:
    """Head / base time ratio from paired log-ratios: the estimate and its two-sided interval."""

    pairs: int
    ratio: float  # exp of the estimated mean log-ratio
    low: float  # interval bounds on the ratio at the level asked for
    high: float
    log_standard_error: float = math.inf  # of the mean log-ratio; inf with fewer than 3 pairs


def crossover_estimate(base_first: np.ndarray, head_first: np.ndarray, alpha: float) -> PairedEstimate:
    """Head / base ratio from pairs run in both orders, with a Student-t interval of two-sided level 1 - 2·alpha.

    Each value is log(head time / base time) of one pair: a batch of rounds of each side, seconds
    apart; `base_first` holds the pairs whose base batch ran first. The side that runs second in
    a pair follows the other process and finds its caches cold, so the order shifts a pair's
    log-ratio by a period effect +p (base first) or -p (head first). As in an AB/BA crossover
    trial (Senn, "Cross-over Trials in Clinical Research", 2002), the estimate is the average of
    the two orders' means, where p cancels, and its variance is the pooled within-order
    variance: t with n - 2 degrees of freedom. Assumes the pairs are independent, their
    log-ratios roughly normal (a batch's median over many rounds), and p the same in every pair.
    Noise shared by both halves of a pair (other jobs, a slower machine) cancels in the ratio;
    an outlier widens the interval instead of moving it past 0. So `low > 1` is a one-sided test
    of "head slower" at level alpha. It cannot see an offset that holds for the whole life of a
    pair of set-ups (their memory placement and layout): `embedsearch.ab` confirms suspects by
    fresh set-ups in forked children.
    """
    groups = [np.asarray(values, dtype=np.float64) for values in (base_first, head_first)]
    if any(group.ndim != 1 or group.size == 0 or not np.isfinite(group).all() for group in groups):
        raise ValueError(f"expected non-empty 1-D arrays of finite log-ratios in both orders, got "
                         f"{groups[0]!r} and {groups[1]!r}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha={alpha}: expected 0 < alpha < 0.5")
    pairs = sum(group.size for group in groups)
    mean = float((groups[0].mean() + groups[1].mean()) / 2)
    if pairs < 3:
        return PairedEstimate(pairs, math.exp(mean), 0.0, math.inf)
    pooled_variance = sum(float(((group - group.mean()) ** 2).sum()) for group in groups) / (pairs - 2)
    standard_error = 0.5 * math.sqrt(pooled_variance * sum(1 / group.size for group in groups))
    from scipy.stats import t as student_t

    half_width = float(student_t.ppf(1 - alpha, pairs - 2)) * standard_error
    return PairedEstimate(pairs, math.exp(mean), math.exp(mean - half_width), math.exp(mean + half_width),
                          standard_error)


def across_passes(passes: list[PairedEstimate], alpha: float) -> tuple[PairedEstimate, float]:
    """Head / base ratio from K passes of fresh set-ups, with a Student-t interval of two-sided
    level 1 - 2·alpha, and the one-sided p-value of "head slower".

    A pass's mean log-ratio = the true log-ratio + the offset of its pair of set-ups (the memory
    they landed on, their heap layout: fixed for their life, so pairs between the same two
    set-ups cannot see it) + pair noise. The spread between passes holds both, so the test is
    a one-sample t over the K passes' estimates (K - 1 degrees of freedom), the offset's size
    estimated from the data of each benchmark. Assumes the passes' estimates independent (each
    pass sets up afresh in children forked with their own random layout padding) and roughly
    normal.
    """
    if len(passes) < 2:
        raise ValueError(f"{len(passes)} pass(es): expected at least 2")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha={alpha}: expected 0 < alpha < 0.5")
    log_ratios = np.log([found.ratio for found in passes])
    mean = float(log_ratios.mean())
    standard_error = float(log_ratios.std(ddof=1)) / math.sqrt(len(passes))
    from scipy.stats import t as student_t

    degrees = len(passes) - 1
    half_width = float(student_t.ppf(1 - alpha, degrees)) * standard_error
    p_slower = float(student_t.sf(mean / standard_error, degrees)) if standard_error > 0 else (
        0.5 if mean == 0 else float(mean < 0))
    found = PairedEstimate(sum(found.pairs for found in passes), math.exp(mean), math.exp(mean - half_width),
                           math.exp(mean + half_width), standard_error)
    return found, p_slower


def benjamini_hochberg(p_values: list[float], alpha: float) -> list[bool]:
    """Which hypotheses to reject at false discovery rate alpha (Benjamini & Hochberg, 1995).

    The step-up rule: reject the j smallest p-values, j the largest with p_(j) <= alpha·j / m.
    Valid for independent or positively dependent tests (Benjamini & Yekutieli, 2001). When every
    hypothesis is true (an A/A run) every rejection is false, so the chance of any rejection is at
    most alpha; when many are false, it rejects more than Bonferroni's alpha / m would.
    """
    order = np.argsort(p_values)
    m = len(p_values)
    passing = [rank for rank, index in enumerate(order, 1) if p_values[index] <= alpha * rank / m]
    rejected = set(order[:max(passing)].tolist()) if passing else set()
    return [index in rejected for index in range(m)]


def scaling_exponents(benchmarks: list[dict]) -> list[dict]:
    """Fitted exponent b of time = a * n^b per scaling series (same benchmark and parameters but n).

    A series is every benchmark whose extra_info has `scaling: true` and shares all other
    extra_info parameters; at least three sizes are needed. Least squares on log-log medians:
    assumes a power law over the measured sizes, with multiplicative noise.
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
        exponent = np.polyfit(np.log(sizes), np.log(seconds), 1)[0]
        fits.append({"series": key, "exponent": float(exponent), "n": [int(n) for n in sizes],
                     "seconds": [float(s) for s in seconds]})
    return fits


SCALING_PARAMETERS = ("spec", "d", "k", "nq", "metric", "device", "params", "dataset")  # not its hash: it varies with n


def scaling_key(bench: dict) -> str:
    """The name of a benchmark's scaling series: its function and every parameter but n."""
    info = bench.get("extra_info") or {}
    function = bench["name"].split("[")[0]
    return function + " " + " ".join(f"{name}={info.get(name)}" for name in SCALING_PARAMETERS if name in info)

RESOLUTION_OF_STEP = 0.1  # deviations below a tenth of the smallest step that counts are resolution, not noise


@dataclass(frozen=True)
class ChangePoint:
    """A step of a series: it happened between values[position - 1] and values[position]."""

    position: int  # index of the first value after the step
    before: float  # level of the segment before (median, in the values' unit)
    after: float  # level of the segment after

    @property
    def ratio(self) -> float:
        """after / before: above 1 the series went up (slower, for times)."""
        return self.after / self.before


def change_points(values, min_relative_step: float = 0.10) -> list[ChangePoint]:
    """The steps of a series of positive values (e.g. median seconds per run, oldest first).

    Each step is reported once, at the first value after it. `min_relative_step` is the
    smallest step that counts, as a fraction (0.10: a 10% change up, or the same in log size down).
    """
    series = np.asarray(values, dtype=np.float64)
    if series.ndim != 1 or not np.all(np.isfinite(series)) or np.any(series <= 0):
        raise ValueError(f"values={values!r}: expected a 1-D sequence of finite positive numbers")
    if not 0 < min_relative_step < 10:
        raise ValueError(f"min_relative_step={min_relative_step!r}: expected a fraction such as 0.10")
    if series.size < 2:
        return []
    logs = np.log(series)
    smallest_step = math.log1p(min_relative_step)
    floor = RESOLUTION_OF_STEP * smallest_step
    beta = 4 * math.log(logs.size) / logs.size
    best = None
    for cost, starts in segmentations(logs):
        levels = [float(np.median(logs[start:end])) for start, end in zip(starts, [*starts[1:], logs.size])]
        if any(abs(after - before) < smallest_step for before, after in zip(levels, levels[1:])):
            continue  # a step too small to count: this k is not a candidate
        criterion = beta * len(starts) + math.log(floor + cost)
        if best is None or criterion < best[0]:
            best = (criterion, starts, levels)
    _, starts, levels = best  # k = 1 has no step, so it is always a candidate
    return [ChangePoint(start, math.exp(before), math.exp(after))
            for start, before, after in zip(starts[1:], levels, levels[1:])]


def segmentations(values: np.ndarray) -> list[tuple[float, list[int]]]:
    """For k = 1..m, the least L1 deviation of `values` split into k constant pieces, and the pieces' starts.

    Exact (optimal partitioning by dynamic programming); ties go to the earliest boundaries.
    """
    m = values.size
    costs = l1_costs(values)
    best = costs[0].copy()  # best[r]: least deviation of values[:r + 1] in the current number of pieces
    starts_of_last = [np.zeros(m, dtype=np.int64)]  # per k: where the last piece of values[:r + 1] starts
    results = [(float(best[-1]), [0])]
    for pieces in range(2, m + 1):
        candidates = best[:-1, None] + costs[1:, :]  # row l - 1: the first l values in pieces - 1, then [l, r]
        last_start = np.argmin(candidates, axis=0) + 1
        best = candidates[last_start - 1, np.arange(m)]
        starts_of_last.append(last_start)
        starts, end = [], m - 1
        for k in range(pieces - 1, 0, -1):
            start = int(starts_of_last[k][end])
            starts.append(start)
            end = start - 1
        results.append((float(best[-1]), [0, *reversed(starts)]))
    return results


def l1_costs(values: np.ndarray) -> np.ndarray:
    """(m, m) array: [l, r] is sum |values[l..r] - their median| (inclusive ends); inf where l > r.

    Each row is a running median kept in two heaps: O(m^2 log m).
    """
    m = values.size
    costs = np.full((m, m), np.inf)
    for start in range(m):
        lower, upper = [], []  # lower half as a max-heap (negated), upper half as a min-heap
        lower_sum = upper_sum = 0.0
        for end in range(start, m):
            value = float(values[end])
            if lower and value > -lower[0]:
                heapq.heappush(upper, value)
                upper_sum += value
            else:
                heapq.heappush(lower, -value)
                lower_sum += value
            if len(lower) > len(upper) + 1:  # rebalance: lower holds the median (and one more when odd)
                moved = -heapq.heappop(lower)
                heapq.heappush(upper, moved)
                lower_sum, upper_sum = lower_sum - moved, upper_sum + moved
            elif len(upper) > len(lower):
                moved = heapq.heappop(upper)
                heapq.heappush(lower, -moved)
                lower_sum, upper_sum = lower_sum + moved, upper_sum - moved
            odd_median = -lower[0] if len(lower) > len(upper) else 0.0
            costs[start, end] = max(0.0, upper_sum - lower_sum + odd_median)
    return costs
