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


def test_lid_mle_formula_and_known_dimension():
    from embedsearch.metrics import lid_mle

    # m_k = [(1/(k-1)) sum_j log(T_k / T_j)]^-1 with T = (1, 2, 4), k = 3: 1 / ((log 4 + log 2) / 2)
    assert lid_mle(np.array([[1.0, 2.0, 4.0]]), 3)[0] == pytest.approx(2 / np.log(8))
    # points uniform in a 4-dimensional cube, embedded in 32 dimensions: the estimate is near 4
    rng = np.random.default_rng(0)
    points = np.zeros((20_000, 32), dtype=np.float32)
    points[:, :4] = rng.random((20_000, 4))
    distances = np.sort(np.sqrt(((points[:200, None, :4] - points[None, 200:, :4]) ** 2).sum(-1)), axis=1)
    assert np.mean(lid_mle(distances, 20)) == pytest.approx(4, abs=0.6)
    with pytest.raises(ValueError, match="k=1"):
        lid_mle(distances, 1)


def test_relative_contrast_and_dataset_difficulty():
    from embedsearch.data import clustered_embeddings, embedding_like
    from embedsearch.metrics import dataset_difficulty, relative_contrast

    assert relative_contrast(np.array([1.0, 2.0]), np.array([3.0, 3.0])).tolist() == [3.0, 1.5]
    hard = clustered_embeddings(4000, 200, 128, 20, seed=0)
    shaped = embedding_like(4000, 200, 128, 20, seed=0)
    hard_figures = dataset_difficulty(hard.train_vectors, hard.val_vectors)
    shaped_figures = dataset_difficulty(shaped.train_vectors, shaped.val_vectors)
    assert set(hard_figures) == {"lid20", "lid100", "rc"}
    # the isotropic mixture is the hard case: far higher LID, nearest neighbours that barely stand out
    assert shaped_figures["lid20"] < 25 < 40 < hard_figures["lid20"]
    assert hard_figures["rc"] < 1.25 < 1.4 < shaped_figures["rc"]


def test_dataset_difficulty_skips_the_query_itself():
    from embedsearch.metrics import dataset_difficulty

    rng = np.random.default_rng(1)
    database = rng.standard_normal((500, 8)).astype(np.float32)
    with_self = dataset_difficulty(database, database[:50])
    assert np.isfinite(list(with_self.values())).all()


def test_single_query_latency_times_each_query_alone():
    from embedsearch.metrics import single_query_latency

    calls = []
    figures = single_query_latency(lambda queries, k: calls.append((queries.shape, k)), np.zeros((7, 3)), 5)
    assert calls == [((1, 3), 5)] * 7
    assert 0 <= figures["latency_p50_s"] <= figures["latency_p95_s"] <= figures["latency_p99_s"]
    with pytest.raises(ValueError, match="at least one query"):
        single_query_latency(lambda queries, k: None, np.zeros((0, 3)), 5)
