import itertools
import math

import numpy as np
import pytest

from embedsearch.stats import (ChangePoint, PairedEstimate, across_passes, benjamini_hochberg, bootstrap_ratio,
                               change_points, crossover_estimate, l1_costs, scaling_exponents, segmentations)
from embedsearch.ab import CONFIRMATION_PAIRS, CONFIRMATIONS, MORE_CONFIRMATIONS, confirmed, undecided
from saved_runs import noisy


def test_bootstrap_interval_holds_one_for_equal_rounds_and_excludes_it_for_a_slowdown():
    base = noisy(1.0, seed=1)
    ratio, low, high = bootstrap_ratio(base, noisy(1.0, seed=2), 2000, 0.99)
    assert low < 1 < high
    ratio, low, high = bootstrap_ratio(base, base * 1.3, 2000, 0.99)
    assert ratio == pytest.approx(1.3) and low > 1.2
    assert bootstrap_ratio(np.array([2.0]), np.array([3.0]), 100, 0.99) == (1.5, 1.5, 1.5)


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


def test_crossover_estimate_averages_the_two_orders_with_a_pooled_student_t_interval():
    base_first = np.log([1.30, 1.32, 1.28])  # head ran second: +period effect
    head_first = np.log([1.02, 1.00, 0.98])  # base ran second: -period effect
    estimate = crossover_estimate(base_first, head_first, alpha=0.025)
    mean = (base_first.mean() + head_first.mean()) / 2
    pooled = (((base_first - base_first.mean()) ** 2).sum() + ((head_first - head_first.mean()) ** 2).sum()) / 4
    half = 2.7764451051977987 * 0.5 * math.sqrt(pooled * (1 / 3 + 1 / 3))  # t(0.975, 4 degrees of freedom)
    assert estimate.pairs == 6
    assert estimate.ratio == pytest.approx(math.exp(mean), rel=1e-12)
    assert (estimate.low, estimate.high) == (pytest.approx(math.exp(mean - half), rel=1e-9),
                                             pytest.approx(math.exp(mean + half), rel=1e-9))
    # the order effect (about 14% here) is gone from the estimate, and from the interval's width
    assert 1.14 < estimate.ratio < 1.15 and estimate.high / estimate.low < 1.06
    assert crossover_estimate(np.array([0.1]), np.array([0.2]), 0.05).high == math.inf  # 2 pairs bound nothing


def test_crossover_estimate_detects_known_effects_and_holds_its_level_on_no_effect():
    rng = np.random.default_rng(7)
    alpha = 0.05 / 40

    def pairs(effect: float, order: float, noise: float, n: int = 10):
        return (rng.normal(math.log(effect) + order, noise, n), rng.normal(math.log(effect) - order, noise, n))

    # 10% slower with 5% pair-to-pair noise and a 20% order effect: 20 pairs put the bound above 1 every time
    slower = [crossover_estimate(*pairs(1.10, 0.2, 0.05), alpha) for _ in range(200)]
    assert sum(estimate.low > 1 for estimate in slower) == 200
    # no effect: the one-sided test fires at its level alpha = 0.00125, 5 of 4000 expected (here 6, seeded)
    same = [crossover_estimate(*pairs(1.0, 0.2, 0.05), alpha) for _ in range(4000)]
    assert sum(estimate.low > 1 for estimate in same) == 6
    # one wild pair widens the interval instead of moving it past 1
    base_first, head_first = pairs(1.0, 0.0, 0.02)
    base_first[0] = math.log(3.0)
    assert crossover_estimate(base_first, head_first, alpha).low < 1


def test_across_passes_is_a_t_test_over_the_passes_estimates():
    passes = [PairedEstimate(10, math.exp(v), 0, 0, 0.01) for v in (0.10, 0.06, 0.08, 0.12)]
    found, p_slower = across_passes(passes, alpha=0.025)
    logs = np.array([0.10, 0.06, 0.08, 0.12])
    standard_error = logs.std(ddof=1) / 2
    assert found.pairs == 40 and found.ratio == pytest.approx(math.exp(0.09))
    assert found.log_standard_error == pytest.approx(standard_error)
    assert found.low == pytest.approx(math.exp(0.09 - 3.182446305 * standard_error))  # t, 3 degrees, 0.975
    assert p_slower == pytest.approx(0.00303, abs=1e-5)  # t = 0.09 / 0.0129 = 6.97 with 3 degrees
    for bad in ({"passes": passes[:1]}, {"alpha": 0.0}):
        with pytest.raises(ValueError):
            across_passes(**{"passes": passes, "alpha": 0.025, **bad})


def test_benjamini_hochberg_steps_up_from_the_largest_p_value_under_its_line():
    # m = 5, alpha = 0.05: lines 0.01, 0.02, 0.03, 0.04, 0.05. The 3rd smallest (0.025) is under
    # its line, so the two below it are rejected too, though 0.015 is over its own line.
    assert benjamini_hochberg([0.025, 0.2, 0.015, 0.001, 0.5], 0.05) == [True, False, True, True, False]
    assert benjamini_hochberg([0.02, 0.03], 0.01) == [False, False]
    assert benjamini_hochberg([], 0.05) == []


def test_a_gate_run_of_true_nulls_with_process_offsets_alarms_within_alpha():
    """embedsearch.ab's confirmation, simulated: CONFIRMATIONS passes of fresh set-ups, MORE_CONFIRMATIONS
    for the suspects `undecided` leaves, `confirmed`'s p-value over the looks, Benjamini-Hochberg."""
    rng = np.random.default_rng(11)
    alpha, min_effect = 0.05, 0.05

    def passes(effect: float, offset: float, count: int) -> list[PairedEstimate]:
        found = []
        for _ in range(count):
            shift = rng.normal(0, offset)
            found.append(crossover_estimate(*(rng.normal(math.log(effect) + shift, 0.02, CONFIRMATION_PAIRS // 2)
                                              for _ in range(2)), alpha))
        return found

    def p_values(effect: float, offsets: dict[str, float]) -> dict[str, float]:
        estimates = {name: passes(effect, offset, CONFIRMATIONS) for name, offset in offsets.items()}
        for name in undecided(estimates, min_effect):
            estimates[name] += passes(effect, offsets[name], MORE_CONFIRMATIONS)
        return {name: confirmed(found[:CONFIRMATIONS], found, True)[1] for name, found in estimates.items()}

    # 2000 A/A runs of 3 suspects each, offsets from 1% to 12% as measured here: runs with any alarm
    # stay within alpha (100 expected at alpha, binomial sd 10; Bonferroni over the looks makes fewer)
    offsets = {"small": 0.01, "medium": 0.04, "large": 0.12}
    alarmed = sum(any(benjamini_hochberg(list(p_values(1.0, offsets).values()), alpha)) for _ in range(2000))
    assert alarmed == 62
    # 10% slower with a 3% offset: found in every run; with an offset as wide as FAISS Flat's (15%,
    # normal here), in 71% of runs (seeded), where CONFIRMATIONS passes alone find it in 38%
    assert sum(p_values(1.10, {"one": 0.03})["one"] <= alpha for _ in range(500)) == 500
    assert sum(p_values(1.10, {"one": 0.15})["one"] <= alpha for _ in range(500)) == 357
    assert sum(across_passes(passes(1.10, 0.15, CONFIRMATIONS), alpha)[1] <= alpha for _ in range(500)) == 192


@pytest.mark.parametrize("base_first, head_first, alpha", [
    (np.array([]), np.array([0.1]), 0.05), (np.array([0.1, np.nan]), np.array([0.1]), 0.05),
    (np.array([0.1, 0.2]), np.array([0.1]), 0.0), (np.array([0.1, 0.2]), np.array([0.1]), 0.6)])
def test_crossover_estimate_refuses_impossible_input(base_first, head_first, alpha):
    with pytest.raises(ValueError):
        crossover_estimate(base_first, head_first, alpha)

def test_a_step_is_reported_once_at_the_first_run_after_it_with_its_levels():
    before = [1.0, 1.02, 0.98, 1.01, 0.99, 1.0]
    after = [1.3, 1.32, 1.28, 1.31, 1.29, 1.3]
    [step] = change_points(before + after)
    assert step.position == 6
    assert step.before == pytest.approx(1.0, rel=1e-12) and step.after == pytest.approx(1.3, rel=1e-12)
    assert step.ratio == pytest.approx(1.3, rel=1e-12)


def test_a_slowdown_in_the_last_of_three_runs_is_a_step():
    assert [point.position for point in change_points([1.0, 1.01, 1.3])] == [2]
    assert change_points([1.0, 1.05, 0.97]) == []


def test_steps_up_and_down_in_laplace_noise_are_found_where_they_happened():
    rng = np.random.default_rng(0)
    levels = np.repeat([1.0, 1.25, 0.8], 10)
    found = change_points(levels * np.exp(rng.laplace(0, 0.03, levels.size)))
    assert [point.position for point in found] == [10, 20]
    assert [point.ratio > 1 for point in found] == [True, False]


@pytest.mark.parametrize("runs", [10, 20, 40])
def test_pure_noise_has_no_change_point(runs):
    """Laplace noise of scale 5%, 20 seeds per length: not one step (with 5 runs, 1 series in 20 shows one)."""
    found = [change_points(np.exp(np.random.default_rng(seed).laplace(0, 0.05, runs))) for seed in range(20)]
    assert sum(map(len, found)) == 0


def test_one_noisy_run_in_ten_is_not_a_step():
    values = np.exp(np.random.default_rng(1).laplace(0, 0.03, 10))
    values[4] *= 1.4
    assert change_points(values) == []


def test_a_step_below_the_smallest_that_counts_is_not_reported():
    values = [1.0] * 5 + [1.08] * 5
    assert change_points(values, min_relative_step=0.10) == []
    assert change_points(values, min_relative_step=0.05) == [ChangePoint(5, 1.0, pytest.approx(1.08, rel=1e-12))]


def test_segmentations_are_the_exact_least_l1_deviation_for_each_number_of_pieces():
    rng = np.random.default_rng(2)
    for _ in range(25):
        values = rng.normal(size=int(rng.integers(1, 8)))
        found = segmentations(values)
        for pieces, (cost, starts) in enumerate(found, start=1):
            best = min(sum(np.abs(values[a:b] - np.median(values[a:b])).sum() for a, b in zip(bounds, bounds[1:]))
                       for cuts in itertools.combinations(range(1, values.size), pieces - 1)
                       for bounds in [(0, *cuts, values.size)])
            assert cost == pytest.approx(best, abs=1e-9)
            bounds = [*starts, values.size]
            assert sum(np.abs(values[a:b] - np.median(values[a:b])).sum() for a, b in zip(bounds, bounds[1:])) \
                == pytest.approx(cost, abs=1e-9)


def test_l1_costs_are_the_deviation_from_each_range_median():
    values = np.array([3.0, 1.0, 4.0, 1.0, 5.0])
    costs = l1_costs(values)
    for start, end in itertools.product(range(5), repeat=2):
        piece = values[start:end + 1]
        expected = np.abs(piece - np.median(piece)).sum() if start <= end else np.inf
        assert costs[start, end] == expected


def test_short_series_have_no_steps_and_bad_input_is_refused():
    assert change_points([]) == [] and change_points([2.0]) == []
    for bad in ([1.0, -1.0], [1.0, float("nan")], [[1.0, 2.0]], [1.0, 0.0]):
        with pytest.raises(ValueError, match="expected a 1-D sequence of finite positive numbers"):
            change_points(bad)
    with pytest.raises(ValueError, match="min_relative_step=0"):
        change_points([1.0, 2.0], min_relative_step=0)
