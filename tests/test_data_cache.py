"""perf/data_cache.py, perf/index_cache.py: cached data keyed by what produced it, one train split per shape."""

import data_cache
import numpy as np
from data_cache import DIFFICULTY_QUERIES, N_CLASSES, DataCache
from index_cache import IndexCache
from tiers import IndexCase

from embedsearch.data import synthetic_embeddings


def assert_same_split(split, reference):
    for name in ("train_vectors", "train_labels", "val_vectors", "val_labels"):
        np.testing.assert_array_equal(getattr(split, name), getattr(reference, name), err_msg=name)


def test_one_train_split_per_shape_whatever_the_val_size(tmp_path):
    cache = DataCache(tmp_path)
    assert_same_split(cache.split(300, 10, 16, 5, data="hard"), synthetic_embeddings("hard", 300, 10, 16, 5))
    assert_same_split(cache.split(300, 40, 16, 5, data="hard"), synthetic_embeddings("hard", 300, 40, 16, 5))
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "hard-train-t300-d16-c5-s0.npz", "hard-val-t300-v10-d16-c5-s0.npz", "hard-val-t300-v40-d16-c5-s0.npz"]
    assert_same_split(DataCache(tmp_path).split(300, 40, 16, 5, data="hard"),  # read back from disk
                      synthetic_embeddings("hard", 300, 40, 16, 5))


def test_an_index_database_is_the_train_split_drawn_with_the_queries_its_record_needs(tmp_path):
    case = IndexCase("Flat", 400, 64, data="embedding")
    database = DataCache(tmp_path).database(case)
    np.testing.assert_array_equal(database, synthetic_embeddings("embedding", 400, 7, 64, N_CLASSES).train_vectors)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "embedding-train-t400-d64-c200-s0.npz", f"embedding-val-t400-v{DIFFICULTY_QUERIES}-d64-c200-s0.npz"]


def counting_generator(monkeypatch) -> list:
    """Replace the data cache's synthetic_embeddings by itself, recording each call's arguments."""
    calls = []

    def generate(*args, **kwargs):
        calls.append(args)
        return synthetic_embeddings(*args, **kwargs)

    monkeypatch.setattr(data_cache, "synthetic_embeddings", generate)
    return calls


def test_a_search_case_draws_its_data_once_for_database_queries_record_and_truth(tmp_path, monkeypatch):
    calls = counting_generator(monkeypatch)
    case = IndexCase("Flat", 400, 64, data="embedding")
    cache = DataCache(tmp_path)
    database = cache.database(case)
    _, queries = cache.search_data(case, DIFFICULTY_QUERIES)
    cache.dataset_record(case)
    cache.ground_truth(case, DIFFICULTY_QUERIES)
    assert calls == [("embedding", 400, DIFFICULTY_QUERIES, 64, N_CLASSES)]
    reference = synthetic_embeddings("embedding", 400, DIFFICULTY_QUERIES, 64, N_CLASSES)
    np.testing.assert_array_equal(database, reference.train_vectors)
    np.testing.assert_array_equal(queries, reference.val_vectors)
    fresh = DataCache(tmp_path)  # a later session reads everything from disk
    fresh.database(case)
    fresh.search_data(case, DIFFICULTY_QUERIES)
    fresh.ground_truth(case, DIFFICULTY_QUERIES)
    assert len(calls) == 1


def test_a_split_without_val_vectors_reuses_the_train_split_and_draws_nothing(tmp_path, monkeypatch):
    calls = counting_generator(monkeypatch)
    cache = DataCache(tmp_path)
    cache.split(300, 10, 16, 5, data="hard")
    split = cache.split(300, 0, 16, 5, data="hard")
    assert len(calls) == 1
    reference = synthetic_embeddings("hard", 300, 0, 16, 5)
    assert_same_split(split, reference)
    for name in ("val_vectors", "val_labels"):
        assert getattr(split, name).shape == getattr(reference, name).shape, name
        assert getattr(split, name).dtype == getattr(reference, name).dtype, name


def test_the_index_cache_keeps_the_last_index_for_its_case_and_device(tmp_path):
    indexes = IndexCache(DataCache(tmp_path))
    flat = IndexCase("Flat", 300, 64)
    index = indexes.get(flat, "cpu")
    assert index.ntotal == 300 and indexes.get(flat, "cpu") is index
    assert indexes.get(IndexCase("Flat", 200, 64), "cpu") is not index


def test_a_data_set_record_is_made_once_per_shape_for_every_case_over_it(tmp_path, monkeypatch):
    cache = DataCache(tmp_path)
    reads = []
    search_data = cache.search_data
    monkeypatch.setattr(cache, "search_data", lambda case, nq: reads.append((case.n, nq)) or search_data(case, nq))
    flat, hnsw = IndexCase("Flat", 400, 64, data="embedding"), IndexCase("HNSW32", 400, 64, data="embedding")
    record = cache.dataset_record(flat)
    assert cache.dataset_record(hnsw) == record and reads == [(400, DIFFICULTY_QUERIES)]
    cache.dataset_record(IndexCase("Flat", 300, 64, data="embedding"))  # another shape: its own record
    assert reads == [(400, DIFFICULTY_QUERIES), (300, DIFFICULTY_QUERIES)]
