from types import SimpleNamespace

import numpy as np
import pytest

from embedsearch import metrics
from embedsearch.metrics import exact_search_gflops, matmul_gflops, per_second, recall_at_k


def test_recall_at_k_counts_the_intersection_per_query():
    true_ids = np.array([[1, 2, 3], [4, 5, 6]])
    found_ids = np.array([[3, 9, 1], [7, 8, 4]])
    assert recall_at_k(found_ids, true_ids) == pytest.approx(3 / 6)
    assert recall_at_k(found_ids, true_ids, k=1) == 0.0
    assert recall_at_k(true_ids, true_ids) == 1.0


def test_recall_errors():
    with pytest.raises(ValueError, match="equal nq"):
        recall_at_k(np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="k=4: expected 1 <= k <= 3"):
        recall_at_k(np.zeros((2, 3)), np.zeros((2, 3)), k=4)


def test_throughput_and_gflops_formulae():
    assert per_second(1000, 0.5) == 2000
    assert exact_search_gflops(100_000, 384, 1000, 1.0) == pytest.approx(76.8)
    with pytest.raises(ValueError, match="seconds=0"):
        per_second(1, 0)


def test_matmul_gflops_counts_2_n_cubed_over_the_best_repeat(monkeypatch):
    clock = iter([10.0, 10.5, 20.0, 20.25, 30.0, 31.0])  # three timed products: 0.5 s, 0.25 s, 1 s
    monkeypatch.setattr(metrics, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    assert matmul_gflops(size=64, repeats=3) == 2 * 64**3 / 0.25 / 1e9
