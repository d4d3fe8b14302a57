"""Change points of a benchmark's series over runs: a penalised L1 piecewise-constant fit.

Method: asv's step detection (`asv/step_detect.py`), after F. Friedrich et al., "Complexity
Penalized M-Estimation: Fast Computation", J. Comput. Graph. Stat. 17(1), 2008, with the number
of steps chosen by the Schwarz criterion (Y.-C. Yao, "Estimating the number of change-points via
Schwarz criterion", Stat. Probab. Lett. 6, 1988). For each number of segments k the best split
of the whole series into k constant pieces is found exactly (dynamic programming over the L1
deviation of each piece from its median), and the k minimising

    SC(k) = beta * k + ln(floor + L1 deviation of the k-piece fit),   beta = 4 ln(m) / m

over the m runs is kept (asv's default beta). Unlike asv, the fit is exact (series of runs are
short: O(m^3) time, O(m^2) memory) and works on log times, so a step is a ratio.

Noise model (what the method assumes): each run's median time is its segment's level times
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
