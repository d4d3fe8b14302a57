import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedsearch.data import clustered_embeddings
from embedsearch.index import BF16_SPEC, TORCH_SPEC, build_index
from embedsearch.knn import class_scores, leave_one_out_search, similarities, topk_accuracy


def test_majority_vote_counts_neighbours_and_breaks_ties_to_the_smaller_class():
    train_labels = np.array([0, 1, 1, 2, 2])
    ids = np.array([[1, 2, 0], [3, 1, 0], [4, 3, 1]])
    scores = class_scores(ids, np.zeros(ids.shape), train_labels, 3, "majority")
    np.testing.assert_array_equal(scores, [[1, 2, 0], [1, 1, 1], [0, 1, 2]])
    # the second row ties three ways: class 0 is its top-1, so label 0 counts as right and label 1 as wrong
    assert topk_accuracy(scores, np.array([1, 0, 2]), ks=(1,)) == {1: 1.0}
    assert topk_accuracy(scores, np.array([1, 1, 2]), ks=(1, 2)) == {1: 2 / 3, 2: 1.0}


def test_weighted_vote_sums_exp_similarity_over_temperature():
    train_labels = np.array([0, 1, 1])
    ids = np.array([[0, 1, 2]])
    sims = np.array([[0.9, 0.5, 0.4]])
    scores = class_scores(ids, sims, train_labels, 2, "weighted", temperature=0.07)
    # the log of DINO's vote totals
    np.testing.assert_allclose(np.exp(scores), [[np.exp(0.9 / 0.07), np.exp(0.5 / 0.07) + np.exp(0.4 / 0.07)]])
    # one close neighbour outvotes two far ones, unlike the majority vote
    assert topk_accuracy(scores, np.array([0]), ks=(1,)) == {1: 1.0}
    assert topk_accuracy(class_scores(ids, sims, train_labels, 2, "majority"), np.array([1]), ks=(1,)) == {1: 1.0}


def test_missing_neighbours_cast_no_vote():
    scores = class_scores(np.array([[2, -1, -1]]), np.zeros((1, 3)), np.array([0, 1, 1]), 2)
    np.testing.assert_array_equal(scores, [[0, 1]])


def test_weighted_vote_is_exact_for_large_similarities():
    # ip on unnormalised embeddings: exp(60 / 0.07) overflows float64 to inf, and inf ties
    train_labels = np.array([0, 1, 0])
    ids = np.array([[0, 1, 2], [1, 0, 2]])
    sims = np.array([[55.0, 60.0, 54.0], [60.0, 55.0, 55.0]])
    scores = class_scores(ids, sims, train_labels, 2, "weighted", temperature=0.07)
    np.testing.assert_array_equal(scores.argmax(axis=1), [1, 1])
    class_0 = np.logaddexp(55 / 0.07, 54 / 0.07)
    np.testing.assert_allclose(scores, [[class_0, 60 / 0.07], [np.logaddexp(55 / 0.07, 55 / 0.07), 60 / 0.07]])
    assert np.isfinite(scores).all()


def test_weighted_vote_on_norm_8_vectors_equals_the_float64_reference():
    split = clustered_embeddings(2000, 500, 32, 10, seed=3)
    train, val = 8 * split.train_vectors, 8 * split.val_vectors  # ip similarities up to 64
    distances, ids = build_index("Flat", train, "ip").search(val, 20)
    scores = class_scores(ids, similarities(distances, "ip"), split.train_labels, 10, "weighted")
    reference = np.full((len(val), 10), -np.inf)  # log-sum-exp per class, with the row maximum subtracted
    for row in range(len(val)):
        for label in range(10):
            logits = distances[row][split.train_labels[ids[row]] == label].astype(np.float64) / 0.07
            if logits.size:
                reference[row, label] = logits.max() + np.log(np.exp(logits - logits.max()).sum())
    np.testing.assert_allclose(scores, reference, rtol=1e-12)
    np.testing.assert_array_equal(scores.argmax(axis=1), reference.argmax(axis=1))


def test_similarities_from_l2_equal_inner_products_on_unit_vectors():
    split = clustered_embeddings(500, 50, 16, 4, seed=0)
    l2_distances, l2_ids = build_index("Flat", split.train_vectors, "l2").search(split.val_vectors, 5)
    ip_distances, ip_ids = build_index("Flat", split.train_vectors, "ip").search(split.val_vectors, 5)
    np.testing.assert_array_equal(l2_ids, ip_ids)
    np.testing.assert_allclose(similarities(l2_distances, "l2"), similarities(ip_distances, "ip"), atol=1e-5)


def test_topk_accuracy():
    scores = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([2, 0, 0])
    assert topk_accuracy(scores, labels, ks=(1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}


@pytest.mark.parametrize("spec", ["Flat", TORCH_SPEC])
@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 40), k=st.integers(1, 39), duplicates=st.booleans(), seed=st.integers(0, 2**16))
def test_leave_one_out_never_returns_a_point_as_its_own_neighbour(spec, n, k, duplicates, seed):
    k = min(k, n - 1)
    rng = np.random.default_rng(seed)
    vectors = rng.integers(-1, 2, size=(n, 3)).astype(np.float32)  # many ties and exact duplicates
    if duplicates:
        vectors[n // 2:] = vectors[: n - n // 2]
    index = build_index(spec, vectors)
    distances, ids = leave_one_out_search(index, vectors, k)
    assert ids.shape == distances.shape == (n, k)
    assert not (ids == np.arange(n)[:, None]).any()
    # the remaining neighbours are still the k nearest among the other points
    reference = ((vectors[:, None, :] - vectors[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(reference, np.inf)
    expected = np.sort(reference, axis=1)[:, :k]
    np.testing.assert_allclose(np.sort(distances, axis=1), expected, atol=1e-4)


def test_leave_one_out_input_errors():
    vectors = np.eye(4, dtype=np.float32)
    index = build_index("Flat", vectors)
    with pytest.raises(ValueError, match="k=4: expected 1 <= k <= 3"):
        leave_one_out_search(index, vectors, 4)
    with pytest.raises(ValueError, match="expected the 4 vectors held by the index"):
        leave_one_out_search(index, vectors[:3], 1)


def test_class_scores_input_errors():
    ids = np.array([[0, 1]])
    sims = np.zeros((1, 2))
    with pytest.raises(ValueError, match="vote='mode'"):
        class_scores(ids, sims, np.array([0, 1]), 2, "mode")
    with pytest.raises(ValueError, match="label 5 is not below n_classes=2"):
        class_scores(ids, sims, np.array([0, 5]), 2)
    with pytest.raises(ValueError, match="id 1 is out of range for 1 train labels"):
        class_scores(ids, sims, np.array([0]), 2)
    with pytest.raises(ValueError, match="same shape"):
        class_scores(ids, np.zeros((1, 3)), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="temperature=0"):
        class_scores(ids, sims, np.array([0, 1]), 2, "weighted", temperature=0)
    with pytest.raises(TypeError, match="integer class labels"):
        class_scores(ids, sims, np.array([0.0, 1.0]), 2)
    with pytest.raises(ValueError, match="id -5 is below -1"):
        class_scores(np.array([[0, -5]]), sims, np.array([0, 1]), 2)
    with pytest.raises(TypeError, match="neighbor_ids: expected integer ids"):
        class_scores(np.array([[0.0, 1.0]]), sims, np.array([0, 1]), 2)
    for temperature in ("0.07", None):
        with pytest.raises(TypeError, match=f"temperature={temperature!r}: expected a finite number > 0"):
            class_scores(ids, sims, np.array([0, 1]), 2, "weighted", temperature=temperature)
    with pytest.raises(ValueError, match="temperature=nan"):
        class_scores(ids, sims, np.array([0, 1]), 2, "weighted", temperature=float("nan"))
    with pytest.raises(ValueError, match=r"labels: expected a 1-D array of 1 labels, got shape \(2,\)"):
        topk_accuracy(np.zeros((1, 2)), np.array([0, 1]))


def test_leave_one_out_with_bf16_equals_flat():
    split = clustered_embeddings(6000, 0, 48, 20, seed=3)
    flat = leave_one_out_search(build_index("Flat", split.train_vectors, "ip"), split.train_vectors, 20)
    index = build_index(BF16_SPEC, split.train_vectors, "ip")
    bf16 = leave_one_out_search(index, split.train_vectors, 20)
    np.testing.assert_allclose(bf16[0], flat[0], atol=1e-5)
    # ids equal but at ties below float32's resolution, which the two backends' round-off orders either
    # way (row 4241: float64 scores 0.44714831 and 0.44714828, Flat's float32 order the reverse)
    vectors = split.train_vectors.astype(np.float64)
    scores = [np.einsum("nd,nkd->nk", vectors, vectors[ids]) for ids in (bf16[1], flat[1])]
    np.testing.assert_allclose(scores[0], scores[1], rtol=0, atol=1e-6)
    assert all(len(set(row)) == 20 for row in bf16[1].tolist())
    assert index.last_certified_fraction > 0.99


def test_leave_one_out_with_bf16_scores_each_pair_once_only_for_the_stored_vectors(monkeypatch):
    vectors = clustered_embeddings(3000, 0, 32, 10, seed=4).train_vectors
    flat_index = build_index("Flat", vectors, "l2")
    index = build_index(BF16_SPEC, vectors, "l2")
    monkeypatch.setattr(index, "search", lambda *args: pytest.fail("the stored vectors were searched as queries"))
    distances, ids = leave_one_out_search(index, vectors, 10)
    flat_distances, flat_ids = leave_one_out_search(flat_index, vectors, 10)
    np.testing.assert_array_equal(ids, flat_ids)
    np.testing.assert_allclose(distances, flat_distances, atol=1e-5)
    monkeypatch.undo()
    # other vectors of the same shape are searched as queries, as by every index
    changed = vectors.copy()
    changed[0, 0] += 1.0
    monkeypatch.setattr(index, "all_pairs_search", lambda k: pytest.fail("all pairs of other vectors"))
    np.testing.assert_array_equal(leave_one_out_search(index, changed, 10)[1],
                                  leave_one_out_search(flat_index, changed, 10)[1])
