import math

import numpy as np
import pytest

from embedsearch.stats import bootstrap_ratio, paired_estimate, scaling_exponents
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


def test_paired_estimate_is_the_geometric_mean_with_a_student_t_interval():
    log_ratios = np.log([1.10, 1.12, 1.08, 1.11, 1.09])
    estimate = paired_estimate(log_ratios, alpha=0.025)
    mean, sd = log_ratios.mean(), log_ratios.std(ddof=1)
    half = 2.7764451051977987 * sd / math.sqrt(5)  # t(0.975, 4 degrees of freedom)
    assert estimate.pairs == 5
    assert estimate.ratio == pytest.approx(math.exp(mean), rel=1e-12)
    assert (estimate.low, estimate.high) == (pytest.approx(math.exp(mean - half), rel=1e-9),
                                             pytest.approx(math.exp(mean + half), rel=1e-9))
    assert paired_estimate(np.array([0.1]), 0.05).high == math.inf  # one pair bounds nothing


def test_paired_estimate_detects_known_effects_and_holds_its_level_on_no_effect():
    rng = np.random.default_rng(7)
    alpha = 0.05 / 40
    # 10% slower with 5% pair-to-pair noise: 20 pairs put the bound above 1 every time
    slower = [paired_estimate(rng.normal(math.log(1.10), 0.05, 20), alpha) for _ in range(200)]
    assert sum(estimate.low > 1 for estimate in slower) == 200
    # no effect: the one-sided test fires at its level alpha = 0.00125 (here 6 of 4000 seeded trials)
    same = [paired_estimate(rng.normal(0.0, 0.05, 20), alpha) for _ in range(4000)]
    assert sum(estimate.low > 1 for estimate in same) == 6
    # one wild pair widens the interval instead of moving it past 1
    outlier = np.r_[rng.normal(0.0, 0.02, 19), math.log(3.0)]
    assert paired_estimate(outlier, alpha).low < 1


@pytest.mark.parametrize("values, alpha", [(np.array([]), 0.05), (np.array([0.1, np.nan]), 0.05),
                                           (np.array([0.1, 0.2]), 0.0), (np.array([0.1, 0.2]), 0.6)])
def test_paired_estimate_refuses_impossible_input(values, alpha):
    with pytest.raises(ValueError):
        paired_estimate(values, alpha)
