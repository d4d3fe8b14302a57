"""Statistics of the gates and the history; each function states what it assumes.

- `bootstrap_ratio`: unpaired ratio of medians (the stored-baseline gate).
- `crossover_estimate`: paired log-ratios of rounds run interleaved in time, both orders (the A/B gate).
- `scaling_exponents`: least-squares exponent of time vs n.
"""

from __future__ import annotations

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
    pair of processes (memory layout): `embedsearch.ab` confirms suspects in fresh processes.
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
    return PairedEstimate(pairs, math.exp(mean), math.exp(mean - half_width), math.exp(mean + half_width))


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


SCALING_PARAMETERS = ("spec", "d", "k", "nq", "metric", "device", "params")


def scaling_key(bench: dict) -> str:
    """The name of a benchmark's scaling series: its function and every parameter but n."""
    info = bench.get("extra_info") or {}
    function = bench["name"].split("[")[0]
    return function + " " + " ".join(f"{name}={info.get(name)}" for name in SCALING_PARAMETERS if name in info)
