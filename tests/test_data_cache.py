"""perf/data_cache.py, perf/index_cache.py: cached data keyed by what produced it, one train split per shape."""

import numpy as np
from data_cache import N_CLASSES, DataCache
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


def test_an_index_database_is_the_train_split_and_needs_no_queries(tmp_path):
    case = IndexCase("Flat", 400, 64, data="embedding")
    database = DataCache(tmp_path).database(case)
    np.testing.assert_array_equal(database, synthetic_embeddings("embedding", 400, 7, 64, N_CLASSES).train_vectors)
    assert [path.name for path in tmp_path.iterdir()] == ["embedding-train-t400-d64-c200-s0.npz"]


def test_the_index_cache_keeps_the_last_index_for_its_case_and_device(tmp_path):
    indexes = IndexCache(DataCache(tmp_path))
    flat = IndexCase("Flat", 300, 64)
    index = indexes.get(flat, "cpu")
    assert index.ntotal == 300 and indexes.get(flat, "cpu") is index
    assert indexes.get(IndexCase("Flat", 200, 64), "cpu") is not index
