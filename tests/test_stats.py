import itertools

import numpy as np
import pytest

from embedsearch.stats import ChangePoint, change_points, l1_costs, segmentations


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
