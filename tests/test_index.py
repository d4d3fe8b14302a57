import contextlib
import re
from unittest import mock

import faiss
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from embedsearch.data import clustered_embeddings
from embedsearch.index import (BF16_SPEC, EXACT_SPECS, TORCH_SPEC, FaissIndex, TorchFlatBf16Index, TorchFlatIndex,
                                _chunk_maxima, _exact_cuda_matmuls, build_index, create_index)
from embedsearch.memory import profile_memory
from embedsearch.metrics import recall_at_k

needs_faiss_gpu = pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="FAISS sees no GPU")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def reference_distances(database: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    """Exact (nq, n) distances in float64: squared L2 or inner product."""
    database, queries = database.astype(np.float64), queries.astype(np.float64)
    if metric == "ip":
        return queries @ database.T
    return ((queries[:, None, :] - database[None, :, :]) ** 2).sum(-1)


def assert_exact_search(database, queries, k, metric, distances, ids):
    """Distances equal the reference's k best; each id has the distance given; distinct ones match."""
    reference = reference_distances(database, queries, metric)
    signed = -reference if metric == "ip" else reference  # smaller is better
    best = min(k + 1, reference.shape[1])  # the k best and the next one, which bounds the k-th's gap
    nearest = np.argpartition(signed, best - 1, axis=1)[:, :best]
    order = np.take_along_axis(nearest, np.argsort(np.take_along_axis(signed, nearest, axis=1), axis=1), axis=1)
    full = np.take_along_axis(reference, order, axis=1)  # best first
    expected = full[:, :k]
    # float32 round-off of both backends grows with |q|^2 + |x|^2 (L2 is computed by norm expansion)
    squared_norms = (database.astype(np.float64) ** 2).sum(1).max() + (queries.astype(np.float64) ** 2).sum(1).max()
    tolerance = 1e-5 * (1.0 + squared_norms)
    np.testing.assert_allclose(distances, expected, atol=tolerance, rtol=0)
    np.testing.assert_allclose(np.take_along_axis(reference, ids, axis=1), expected, atol=tolerance, rtol=0)
    assert all(len(set(row)) == k for row in ids.tolist())
    # in sorted order a value's nearest other value is a neighbour: its gaps to the one before and after
    gaps = np.abs(np.diff(full, axis=1, prepend=np.inf, append=np.inf))
    distinct = np.minimum(gaps[:, :k], gaps[:, 1:k + 1]) > tolerance
    np.testing.assert_array_equal(ids[distinct], order[:, :k][distinct])


@st.composite
def search_problems(draw):
    d = draw(st.integers(1, 24))
    n = draw(st.integers(1, 60))
    nq = draw(st.integers(1, 12))
    # small integers make exact ties common; floats exercise the general case (magnitudes whose
    # squares underflow float32 are refused by the boundary check: tested in test_validation.py)
    elements = draw(st.sampled_from([st.integers(-2, 2).map(float),
                                     st.floats(-10, 10, width=32).filter(lambda x: x == 0 or abs(x) > 1e-18)]))
    database = draw(arrays(np.float32, (n, d), elements=elements))
    queries = draw(arrays(np.float32, (nq, d), elements=elements))
    k = draw(st.integers(1, n))
    metric = draw(st.sampled_from(["l2", "ip"]))
    return database, queries, k, metric


@pytest.mark.parametrize("spec", EXACT_SPECS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=search_problems())
def test_exact_search_equals_numpy_reference(spec, problem):
    database, queries, k, metric = problem
    index = build_index(spec, database, metric=metric)
    distances, ids = index.search(queries, k)
    assert distances.dtype == np.float32 and ids.dtype == np.int64
    assert distances.shape == ids.shape == (len(queries), k)
    assert_exact_search(database, queries, k, metric, distances, ids)


@pytest.mark.parametrize("query_block, database_block", [(1, 1), (3, 7), (64, 5)])
def test_torch_blocking_does_not_change_results(query_block, database_block):
    split = clustered_embeddings(203, 37, 12, 4, seed=1)
    index = TorchFlatIndex(12, "l2", torch.device("cpu"), query_block, database_block)
    index.add(split.train_vectors[:100])
    index.add(split.train_vectors[100:])
    distances, ids = index.search(split.val_vectors, 9)
    assert index.score_buffer_bytes(37) == 4 * min(query_block, 37) * min(database_block, 203)
    assert_exact_search(split.train_vectors, split.val_vectors, 9, "l2", distances, ids)


def test_both_backends_agree_on_clustered_data():
    split = clustered_embeddings(5000, 300, 64, 10, seed=2)
    faiss_distances, faiss_ids = build_index("Flat", split.train_vectors, "ip").search(split.val_vectors, 10)
    torch_distances, torch_ids = build_index(TORCH_SPEC, split.train_vectors, "ip").search(split.val_vectors, 10)
    np.testing.assert_allclose(torch_distances, faiss_distances, atol=1e-5)
    assert recall_at_k(torch_ids, faiss_ids) == 1.0


@pytest.mark.parametrize("spec, params, min_recall", [
    ("IVF16,Flat", dict(nprobe=16), 1.0),  # every list probed: exact
    ("HNSW16", dict(efSearch=128), 0.95),
    ("IVF16,PQ8", dict(nprobe=16), 0.3),
])
def test_approximate_indexes_train_search_and_tune(spec, params, min_recall):
    split = clustered_embeddings(4000, 100, 32, 8, seed=5)
    exact_ids = build_index("Flat", split.train_vectors).search(split.val_vectors, 10)[1]
    index = build_index(spec, split.train_vectors)
    index.set_search_params(**params)
    distances, ids = index.search(split.val_vectors, 10)
    assert recall_at_k(ids, exact_ids) >= min_recall


@pytest.mark.parametrize("spec", ["IVF8,Flat", TORCH_SPEC])
def test_reset_keeps_training_and_search_params_and_drops_vectors(spec):
    vectors = clustered_embeddings(500, 0, 16, 4, seed=0).train_vectors
    index = build_index(spec, vectors)
    if spec != TORCH_SPEC:
        index.set_search_params(nprobe=2)
    first = index.search(vectors[:50], 3)
    index.reset()
    assert index.ntotal == 0 and index.is_trained
    index.add(vectors)
    np.testing.assert_array_equal(index.search(vectors[:50], 3)[1], first[1])


@pytest.mark.parametrize("spec", ["Flat", "IVF8,Flat", TORCH_SPEC])
def test_reset_releases_vector_storage(spec):
    # 20 MB of vectors: more than the 16 MiB BLAS block an IVF add allocates anyway
    vectors = clustered_embeddings(20_000, 0, 256, 4, seed=0).train_vectors
    index = build_index(spec, vectors)
    index.reset()
    _, profile = profile_memory(lambda: index.add(vectors))
    assert profile.peak_bytes >= vectors.nbytes  # storage is allocated afresh, not reused


def test_torch_index_keeps_its_own_copy_of_added_vectors():
    vectors = clustered_embeddings(200, 0, 16, 4, seed=0).train_vectors
    index = build_index(TORCH_SPEC, vectors)
    queries = vectors[:5].copy()
    before = index.search(queries, 3)
    vectors[:] = 0.0  # the caller reuses its buffer
    after = index.search(queries, 3)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])


def test_nprobe_trades_recall():
    split = clustered_embeddings(4000, 200, 32, 8, seed=6)
    exact_ids = build_index("Flat", split.train_vectors).search(split.val_vectors, 10)[1]
    index = build_index("IVF64,Flat", split.train_vectors)
    recalls = []
    for nprobe in (1, 8, 64):
        index.set_search_params(nprobe=nprobe)
        recalls.append(recall_at_k(index.search(split.val_vectors, 10)[1], exact_ids))
    assert recalls[0] < recalls[1] <= recalls[2] == 1.0


def test_nbytes_matches_the_storage_of_each_index_type():
    vectors = clustered_embeddings(2000, 0, 32, 4, seed=0).train_vectors
    flat = build_index("Flat", vectors)
    assert 4 * 2000 * 32 <= flat.nbytes() <= 4 * 2000 * 32 + 1024  # vectors + a small header
    assert build_index(TORCH_SPEC, vectors, "ip").nbytes() == 4 * 2000 * 32
    assert build_index(TORCH_SPEC, vectors, "l2").nbytes() == 4 * 2000 * 33  # + half norms
    pq = build_index("IVF16,PQ8", vectors)
    assert 2000 * (8 + 8) <= pq.nbytes() < flat.nbytes()  # 8 code bytes + 8 id bytes per vector


@pytest.mark.parametrize("spec", EXACT_SPECS)
def test_search_rejects_bad_input_with_clear_errors(spec):
    index = build_index(spec, np.ones((10, 4), dtype=np.float32))
    good = np.zeros((2, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"expected dimension d=4, got shape \(2, 5\)"):
        index.search(np.zeros((2, 5), dtype=np.float32), 1)
    with pytest.raises(ValueError, match=r"k=0: expected 1 <= k <= 10"):
        index.search(good, 0)
    with pytest.raises(ValueError, match=r"k=11: expected 1 <= k <= 10"):
        index.search(good, 11)
    with pytest.raises(TypeError, match="k=2.0"):
        index.search(good, 2.0)
    with pytest.raises(ValueError, match=r"at least one row.*shape \(0, 4\)"):
        index.search(np.zeros((0, 4), dtype=np.float32), 1)
    bad = good.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="1 row.*NaN or inf.*row 1"):
        index.search(bad, 1)
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        index.add(bad)
    with pytest.raises(TypeError, match="dtype int64"):
        index.search(np.zeros((2, 4), dtype=np.int64), 1)
    with pytest.raises(ValueError, match=r"2-D array.*shape \(4,\)"):
        index.search(np.zeros(4, dtype=np.float32), 1)
    with pytest.raises(TypeError, match="got list"):
        index.search([[0.0] * 4], 1)


@pytest.mark.parametrize("spec", EXACT_SPECS)
def test_float64_and_non_contiguous_inputs_are_converted_not_misread(spec):
    rng = np.random.default_rng(0)
    database = rng.standard_normal((50, 16))  # float64
    wide_queries = rng.standard_normal((5, 32)).astype(np.float32)
    queries = wide_queries[:, ::2]  # non-contiguous view
    index = build_index(spec, database)
    distances, ids = index.search(queries, 3)
    assert_exact_search(database.astype(np.float32), np.ascontiguousarray(queries), 3, "l2", distances, ids)


def test_create_index_rejects_bad_specs_metrics_and_devices():
    with pytest.raises(ValueError, match="index spec 'NotAnIndex'.*could not parse"):
        create_index("NotAnIndex", 8)
    with pytest.raises(ValueError, match="PQ m must divide d"):
        create_index("IVF4,PQ3", 8)
    with pytest.raises(ValueError, match="metric='cosine': expected one of 'l2', 'ip'"):
        create_index("Flat", 8, metric="cosine")
    with pytest.raises(ValueError, match="d=0"):
        create_index("Flat", 0)
    with pytest.raises(ValueError, match="spec=''"):
        create_index("", 8)
    with pytest.raises(ValueError, match="device='gpu'"):
        create_index("Flat", 8, device="gpu")
    with pytest.raises(ValueError, match="sharded=True needs device='cuda'"):
        create_index("Flat", 8, sharded=True)


def test_training_and_parameter_errors_name_the_problem():
    vectors = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="nlist=16 lists: expected at least 16 training vectors.*got 10"):
        build_index("IVF16,Flat", vectors)
    with pytest.raises(ValueError, match="training index 'IVF2,PQ4' on 10 vectors failed"):
        build_index("IVF2,PQ4", vectors)
    untrained = create_index("IVF2,Flat", 8)
    with pytest.raises(ValueError, match="must be trained before add"):
        untrained.add(vectors)
    with pytest.raises(ValueError, match="no vectors have been added"):
        create_index("Flat", 8).search(vectors, 1)
    with pytest.raises(ValueError, match="efSearch=8: index 'Flat' is not an HNSW index"):
        build_index("Flat", vectors).set_search_params(efSearch=8)
    with pytest.raises(ValueError, match="nprobe=3: index 'HNSW8' is not an IVF index"):
        build_index("HNSW8", vectors).set_search_params(nprobe=3)
    with pytest.raises(ValueError, match="nprobe=5: expected at most 2"):
        build_index("IVF2,Flat", vectors).set_search_params(nprobe=5)
    with pytest.raises(ValueError, match="takes no search parameters"):
        build_index(TORCH_SPEC, vectors).set_search_params(nprobe=1)


def test_cuda_devices_are_refused_clearly_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="device='cuda'.*0 CUDA device"):
        create_index(TORCH_SPEC, 8, device="cuda")


@needs_cuda
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_torch_cuda_search_equals_reference(metric):
    split = clustered_embeddings(3000, 200, 48, 6, seed=7)
    index = build_index(TORCH_SPEC, split.train_vectors, metric, device="cuda")
    distances, ids = index.search(split.val_vectors, 10)
    assert_exact_search(split.train_vectors, split.val_vectors, 10, metric, distances, ids)


@needs_faiss_gpu
@pytest.mark.parametrize("sharded", [False, True])
def test_faiss_gpu_flat_equals_reference(sharded):
    split = clustered_embeddings(3000, 200, 48, 6, seed=8)
    index = build_index("Flat", split.train_vectors, "l2", device="cuda", sharded=sharded)
    assert isinstance(index, FaissIndex)
    distances, ids = index.search(split.val_vectors, 10)
    assert_exact_search(split.train_vectors, split.val_vectors, 10, "l2", distances, ids)
    assert index.nbytes() >= 4 * 3000 * 48


# PQ "np": without polysemous training, which takes up to a minute on a loaded 2-core machine
@pytest.mark.parametrize("spec", ["IVF16,PQ4x4np", "PQ4x4np", "IVF16,SQ8", "HNSW8,SQ8", "PCA16,HNSW8", "IVF16,Flat"])
def test_train_after_add_is_refused_and_leaves_the_index_intact(spec):
    # retraining relearns codebooks (or a transform) that the stored codes were written with: self-hit@1
    # of a PQ index fell from 200 of 200 to a few, with no error
    vectors = np.random.default_rng(0).standard_normal((1000, 32)).astype(np.float32)
    index = build_index(spec, vectors)
    before = index.search(vectors[:200], 1)[1]
    with pytest.raises(ValueError, match=rf"cannot train index '{re.escape(spec)}' holding 1000 vectors.*reset\(\)"):
        index.train(3 * vectors + 1)
    np.testing.assert_array_equal(index.search(vectors[:200], 1)[1], before)
    index.reset()
    index.train(3 * vectors + 1)  # an empty index may be retrained
    index.add(vectors)
    assert index.ntotal == 1000


@pytest.mark.parametrize("spec", ["Flat", "HNSW8", TORCH_SPEC])
def test_train_after_add_is_a_no_op_for_indexes_without_training(spec):
    vectors = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    index = build_index(spec, vectors)
    index.train(vectors)
    assert index.search(vectors[:20], 1)[1].ravel().tolist() == list(range(20))


@pytest.mark.parametrize("spec, metric", [("Flat", "l2"), ("Flat", "ip"), (TORCH_SPEC, "l2"), (TORCH_SPEC, "ip"),
                                          ("HNSW8", "ip"), ("HNSW8", "l2")])
@pytest.mark.parametrize("magnitude", [1e19, 1e30])
def test_rows_whose_distances_overflow_float32_are_refused(spec, metric, magnitude):
    rng = np.random.default_rng(0)
    database = rng.standard_normal((100, 16)).astype(np.float32)
    index = build_index(spec, database, metric)
    huge = (magnitude * rng.standard_normal((3, 16))).astype(np.float32)
    with pytest.raises(ValueError, match=r"queries: 3 row\(s\) have a squared L2 norm above 1.33e\+36 \(first at row 0"):
        index.search(huge, 1)
    with pytest.raises(ValueError, match=r"vectors: 3 row\(s\) have a squared L2 norm above"):
        build_index(spec, huge, metric)


@pytest.mark.parametrize("spec", EXACT_SPECS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_rows_at_the_largest_accepted_norm_search_exactly(spec, metric):
    rng = np.random.default_rng(1)
    database = rng.standard_normal((200, 16))
    queries = rng.standard_normal((20, 16))
    scale = 2.0**60 / max(np.linalg.norm(database, axis=1).max(), np.linalg.norm(queries, axis=1).max())
    database, queries = (scale * database).astype(np.float32), (scale * queries).astype(np.float32)
    distances, ids = build_index(spec, database, metric).search(queries, 5)
    assert np.isfinite(distances).all()
    reference = reference_distances(database, queries, metric)
    expected = np.sort(reference, axis=1)[:, :5] if metric == "l2" else -np.sort(-reference, axis=1)[:, :5]
    np.testing.assert_allclose(distances, expected, rtol=1e-4, atol=1e-5 * 2.0**120)
    np.testing.assert_allclose(np.take_along_axis(reference, ids, axis=1), expected, rtol=1e-4, atol=1e-5 * 2.0**120)


@pytest.mark.parametrize("spec", ["IVF4,Flat", "IVF4,PQ4"])
def test_training_on_overflowing_vectors_is_refused_not_aborted(spec):
    # FAISS's k-means aborted the process (uncaught FaissException, rc 134) on these
    vectors = (1e19 * np.random.default_rng(0).standard_normal((1000, 8))).astype(np.float32)
    index = create_index(spec, 8)
    with pytest.raises(ValueError, match="training vectors: 1000 row.*squared L2 norm above"):
        index.train(vectors)


@pytest.mark.parametrize("spec", ["HNSW0", "HNSW1", "IVF4_HNSW1,Flat", "PCA8,HNSW1"])
def test_hnsw_with_fewer_than_two_links_is_refused_before_faiss(spec):
    # FAISS aborts (M=0, rc 134) or segfaults (M=1, rc 139) on these
    with pytest.raises(ValueError, match=rf"index spec '{re.escape(spec)}': HNSW[01] has M=[01], expected M >= 2"):
        create_index(spec, 16)


def test_ivf_with_no_lists_is_refused_at_construction():
    with pytest.raises(ValueError, match="index spec 'IVF0,Flat' has nlist=0 lists: expected at least 1"):
        create_index("IVF0,Flat", 8)


@pytest.mark.parametrize("value", [2**31, 2**40])
def test_ef_search_beyond_faiss_int_is_refused(value):
    vectors = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    index = build_index("HNSW8", vectors)
    with pytest.raises(ValueError, match=f"efSearch={value}: expected at most 2147483647"):
        index.set_search_params(efSearch=value)
    index.set_search_params(efSearch=2**31 - 1)  # the largest FAISS holds (not searched: it sizes a heap)
    assert faiss.downcast_index(index._index).hnsw.efSearch == 2**31 - 1


@pytest.mark.parametrize("spec", ["PCA16,HNSW8", "HNSW8,Flat,RFlat", "IVF8_HNSW8,Flat"])
def test_ef_search_reaches_the_hnsw_level_of_composite_indexes(spec):
    vectors = np.random.default_rng(0).standard_normal((500, 32)).astype(np.float32)
    index = build_index(spec, vectors)
    index.set_search_params(efSearch=77)
    level = faiss.downcast_index(index._index)
    while not isinstance(level, faiss.IndexHNSW):
        level = faiss.downcast_index(level.base_index if isinstance(level, faiss.IndexRefine)
                                     else level.quantizer if isinstance(level, faiss.IndexIVF) else level.index)
    assert level.hnsw.efSearch == 77


@needs_faiss_gpu
def test_gpu_nprobe_is_bounded_by_faiss_gpu():
    vectors = np.random.default_rng(0).standard_normal((4096, 8)).astype(np.float32)
    index = build_index("IVF4096,Flat", vectors, device="cuda")
    with pytest.raises(ValueError, match="nprobe=2049: expected at most 2048"):
        index.set_search_params(nprobe=2049)


# --- TorchFlat.bf16: bf16 scores, certified float32 re-rank ---------------------------------------


def low_mantissa_variants(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Copies of float32 `vectors` whose 16 low mantissa bits are random: the same bf16 rounding or nearly."""
    bits = vectors.astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
    return (bits | rng.integers(0, 2**16, size=vectors.shape, dtype=np.uint32)).view(np.float32)


@st.composite
def near_tie_problems(draw):
    """Databases built to defeat bf16: exact duplicates, low-mantissa variants, scores closer than bf16 resolves."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    d = draw(st.integers(2, 24))
    bases = rng.standard_normal((draw(st.integers(1, 6)), d)).astype(np.float32) * draw(st.sampled_from([1e-3, 1.0, 50.0]))
    parts = [bases]
    for base in bases:
        copies = draw(st.integers(0, 12))
        parts.append(np.repeat(base[None], draw(st.integers(0, 3)), axis=0))  # exact duplicates
        parts.append(low_mantissa_variants(np.repeat(base[None], copies, axis=0), rng))
        # scores apart by less than bf16 resolves (2^-9 relative) but more than float32's
        parts.append(base[None] * (1 + rng.uniform(-2**-9, 2**-9, size=(copies, 1))).astype(np.float32))
    parts.append(rng.standard_normal((draw(st.integers(0, 40)), d)).astype(np.float32) * float(np.abs(bases).max()))
    database = np.concatenate(parts)
    queries = np.concatenate([bases, low_mantissa_variants(bases, rng),
                              rng.standard_normal((3, d)).astype(np.float32)])[: draw(st.integers(1, 15))]
    k = draw(st.integers(1, min(len(database), 30)))
    metric = draw(st.sampled_from(["l2", "ip"]))
    blocks = draw(st.sampled_from([(1, 4), (3, 5), (2, 8), (4, 16), (16, 64), (1024, 8192)]))
    chunk = draw(st.sampled_from([2, 4]))
    return database, queries, k, metric, blocks, chunk


def kernel_maxima_from_torch(kernel: bool):
    """kernel: the maxima path cuda takes (maxima handed to _survivors with the product, column maxima
    as a transposed view), with torch's `_chunk_maxima` standing in for the Triton kernel."""
    if not kernel:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(mock.patch("embedsearch.index.maxima_kernel_available", return_value=True))
    stack.enter_context(mock.patch("embedsearch.index.chunk_maxima_both_ways", side_effect=lambda out, chunk, columns_too: (
        _chunk_maxima(out, chunk), _chunk_maxima(out.T, chunk) if columns_too else None)))
    return stack


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=near_tie_problems(), alignment=st.sampled_from([1, 8]), kernel=st.booleans())
def test_bf16_search_equals_reference_on_near_ties(problem, alignment, kernel):
    """alignment 8: cuda's zero-padded columns and score rows laid out at multiples of 8 (database
    blocks of 5 columns too); kernel: with the maxima computed beside the product, as on cuda."""
    database, queries, k, metric, (query_block, database_block), chunk = problem
    with mock.patch.dict(TorchFlatBf16Index.COLUMN_ALIGNMENT, {"cpu": alignment}):
        index = TorchFlatBf16Index(database.shape[1], metric, torch.device("cpu"), query_block, database_block)
        index.CHUNK = chunk  # small chunks: the chunked selection runs on small blocks too
        index.add(database)
        with kernel_maxima_from_torch(kernel):
            distances, ids = index.search(queries, k)
    assert_exact_search(database, queries, k, metric, distances, ids)
    assert 0.0 <= index.last_certified_fraction <= 1.0


# cpu at both column alignments (8: cuda's zero padding); cuda: tensor cores, u = 2^-22
BOUND_DEVICE_ALIGNMENTS = [("cpu", 1), ("cpu", 8), pytest.param("cuda", 8, marks=needs_cuda)]


@pytest.mark.parametrize("device, alignment", BOUND_DEVICE_ALIGNMENTS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_bf16_error_bound_holds_for_every_score(metric, device, alignment, monkeypatch):
    """The docstring's bound |t - (s - c)| <= w|t| + E, checked against float64 scores on adversarial data."""
    monkeypatch.setitem(TorchFlatBf16Index.COLUMN_ALIGNMENT, device, alignment)
    rng = np.random.default_rng(3)
    bases = rng.standard_normal((20, 96)).astype(np.float32)
    database = np.concatenate([bases, low_mantissa_variants(np.repeat(bases, 20, axis=0), rng),
                               bases * np.float32(1e-3), rng.standard_normal((500, 96)).astype(np.float32) * 30])
    queries = np.concatenate([bases, low_mantissa_variants(bases, rng), database[-50:]])
    index = build_index(BF16_SPEC, database, metric, device=device)
    bound, _, scored_queries = index._query_bounds(torch.from_numpy(queries).to(index.device), 10)
    scores = index._aligned_scores(index._score_buffer(len(queries)), len(queries), len(database))
    with _exact_cuda_matmuls(index.device):  # as the search computes it: aligned rows, 936 + 4 columns at 8
        index._matmul_into(scored_queries, index._scored, scores)  # bf16 product, float32 sums
    bf16_scores = scores.double().cpu().numpy()
    bound = bound.cpu().numpy()
    exact = queries.astype(np.float64) @ database.astype(np.float64).T
    if metric == "l2":
        exact -= 0.5 * (database.astype(np.float64) ** 2).sum(1)
    offsets = -scored_queries[:, index.d].double().cpu().numpy()
    error = np.abs(bf16_scores - (exact - offsets[:, None]))
    allowed = index.OUTPUT_ROUNDING * np.abs(bf16_scores) + bound[:, None]
    assert (error <= allowed).all()
    assert (error.max(axis=1) > 0.05 * bound).any()  # the bound is not vacuous: errors come near it


def test_bf16_matmul_accumulates_in_float32():
    ones = torch.ones((1, 4096), dtype=torch.bfloat16)
    assert (ones @ ones.T).item() == 4096  # bf16 accumulation would stop at 256


def test_bf16_falls_back_to_float32_for_queries_with_too_many_near_ties():
    rng = np.random.default_rng(4)
    other = rng.standard_normal((3000, 32)).astype(np.float32)
    crowded = low_mantissa_variants(np.repeat(other[:1], 200, axis=0), rng)  # 200 near-ties of vector 0
    database = np.concatenate([other, crowded])
    queries = np.concatenate([other[:1], other[1000:1003]])
    for metric in ("l2", "ip"):
        index = build_index(BF16_SPEC, database, metric)
        index.database_block = 1024  # several blocks: the running threshold and the fall-back both run
        assert index.candidate_capacity(5) < 200
        distances, ids = index.search(queries, 5)
        assert index.last_certified_fraction == 0.75  # the crowded query fell back, the others are certified
        assert_exact_search(database, queries, 5, metric, distances, ids)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_bf16_equals_flat_and_certifies_clustered_data(metric):
    split = clustered_embeddings(20_000, 300, 64, 20, seed=9)
    flat_distances, flat_ids = build_index("Flat", split.train_vectors, metric).search(split.val_vectors, 10)
    index = build_index(BF16_SPEC, split.train_vectors, metric)
    distances, ids = index.search(split.val_vectors, 10)
    np.testing.assert_array_equal(ids, flat_ids)
    np.testing.assert_allclose(distances, flat_distances, atol=1e-5)
    assert index.last_certified_fraction == 1.0


def test_bf16_search_is_exact_at_the_largest_accepted_norm():
    # rows beyond squared norm 2**120 are refused at the boundary (validation.as_vectors), so bf16
    # never overflows; at the limit the search stays exact
    database = np.array([[2.0**59, 0.0], [1.0, 1.0], [2.0, -1.0]], dtype=np.float32)
    for metric, expected_ids, expected in (("ip", [[1, 0]], [[1.0, 0.0]]), ("l2", [[1, 2]], [[1.0, 8.0]])):
        distances, ids = build_index(BF16_SPEC, database, metric).search(np.array([[0.0, 1.0]], dtype=np.float32), 2)
        assert ids.tolist() == expected_ids and distances.tolist() == expected


def test_bf16_nbytes_counts_the_bf16_copy():
    vectors = clustered_embeddings(2000, 0, 32, 4, seed=0).train_vectors
    assert build_index(BF16_SPEC, vectors, "ip").nbytes() == 4 * 2000 * 32 + 2 * 2000 * (32 + 1)
    assert build_index(BF16_SPEC, vectors, "l2").nbytes() == 4 * 2000 * 33 + 2 * 2000 * (32 + 3)
    index = build_index(BF16_SPEC, vectors, "l2")
    index.reset()
    assert index.nbytes() == 0


# --- TorchFlat.bf16 all pairs: each block pair scored once, fed to its rows and its columns ----------


@st.composite
def all_pairs_problems(draw):
    """A near-tie database searched against itself, with block sizes from one vector to more than all of them."""
    database, _, k, metric, _, chunk = draw(near_tie_problems())
    k = draw(st.sampled_from([k, len(database), max(1, len(database) - 1)]))  # k near N too
    pair_block = draw(st.sampled_from([1, 2, 3, 5, 16, 2048]))
    seed_chunk = draw(st.sampled_from([1, 2, 8]))
    refresh = draw(st.sampled_from([0, 16]))
    seed_window = draw(st.sampled_from([0, 3, 1024]))  # no seed pass; windows (often) under k; of pair_block rows
    return database, k, metric, pair_block, chunk, seed_chunk, refresh, seed_window


def bf16_index_with_blocks(database, metric, pair_block, chunk=64, seed_chunk=8, refresh=16, query_block=4,
                           database_block=16):
    index = TorchFlatBf16Index(database.shape[1], metric, torch.device("cpu"), query_block, database_block)
    index.pair_block, index.CHUNK, index.SEED_CHUNK, index.REFRESH = pair_block, chunk, seed_chunk, refresh
    index.add(database)
    return index


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=all_pairs_problems(), alignment=st.sampled_from([1, 8]), kernel=st.booleans())
def test_bf16_all_pairs_equals_reference_on_near_ties(problem, alignment, kernel):
    """alignment 8: cuda's zero-padded columns and score rows laid out at multiples of 8; kernel: with
    the maxima computed beside the product, both ways, as on cuda."""
    database, k, metric, pair_block, chunk, seed_chunk, refresh, seed_window = problem
    with (mock.patch.dict(TorchFlatBf16Index.COLUMN_ALIGNMENT, {"cpu": alignment}), kernel_maxima_from_torch(kernel),
          mock.patch.dict(TorchFlatBf16Index.SEED_WINDOW_ROWS, {"cpu": seed_window})):
        index = bf16_index_with_blocks(database, metric, pair_block, chunk, seed_chunk, refresh)
        distances, ids = index.all_pairs_search(k)
    assert_exact_search(database, database, k, metric, distances, ids)
    assert 0.0 <= index.last_certified_fraction <= 1.0


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_bf16_all_pairs_equals_search_and_certifies_clustered_data(metric):
    vectors = clustered_embeddings(3001, 0, 32, 8, seed=5).train_vectors  # odd: the last block is partial
    index = bf16_index_with_blocks(vectors, metric, pair_block=512, query_block=256, database_block=1024)
    distances, ids = index.all_pairs_search(10)
    assert index.last_certified_fraction == 1.0
    search_distances, search_ids = index.search(vectors, 10)
    np.testing.assert_array_equal(ids, search_ids)
    np.testing.assert_allclose(distances, search_distances, atol=1e-5)


def test_bf16_all_pairs_with_the_kernel_seeds_from_its_maxima_without_a_second_pass(monkeypatch):
    """Where the product takes the chunk maxima (cuda's kernel), a row's first θ comes from them: no
    block is reduced again (on an H100, all pairs at ImageNet's shape: 5.17 s with that pass, 4.89 s seeded from the 64-column maxima).
    No seed pass, as on cuda."""
    monkeypatch.setitem(TorchFlatBf16Index.SEED_WINDOW_ROWS, "cpu", 0)
    vectors = clustered_embeddings(3001, 0, 32, 8, seed=5).train_vectors
    index = bf16_index_with_blocks(vectors, "ip", pair_block=1024, query_block=256, database_block=1024)
    with kernel_maxima_from_torch(True), mock.patch("embedsearch.index._chunk_maxima", wraps=_chunk_maxima) as passes:
        distances, ids = index.all_pairs_search(10)
    assert passes.call_count == 0
    search_distances, search_ids = index.search(vectors, 10)
    np.testing.assert_array_equal(ids, search_ids)
    np.testing.assert_allclose(distances, search_distances, atol=1e-5)


@pytest.mark.parametrize("kernel", [False, True])
def test_bf16_search_certifies_queries_over_vectors_stored_in_class_order(kernel):
    """A query's class sits in one database block it meets late, below a θ from other classes: that
    block's ~750 hits would fail it, so its θ rises to the block's own k-th (before: 26% certified)."""
    split = clustered_embeddings(6000, 500, 32, 8, separation=1.0, seed=5)
    vectors = split.train_vectors[np.argsort(split.train_labels, kind="stable")]
    index = TorchFlatBf16Index(32, "ip", torch.device("cpu"), 256, 1024)
    index.add(vectors)
    with kernel_maxima_from_torch(kernel):
        distances, ids = index.search(split.val_vectors, 10)
    assert index.last_certified_fraction == 1.0
    float32_distances, float32_ids = build_index(TORCH_SPEC, vectors, "ip").search(split.val_vectors, 10)
    np.testing.assert_array_equal(ids, float32_ids)
    np.testing.assert_allclose(distances, float32_distances, atol=1e-5)


@pytest.mark.parametrize("kernel", [False, True])
@pytest.mark.parametrize("seed_window", [0, 1024])
def test_bf16_all_pairs_certifies_rows_stored_in_class_order(kernel, seed_window, monkeypatch):
    """Vectors in class order (as an ImageFolder gives them): without the seed pass (seed_window 0, as on
    cuda), rows of a later block meet other classes first, so their θ sits far below their own class,
    whose ~375 vectors then crowd one block. Such a row's θ rises to the block's own k-th (before: 38%
    of rows certified, the rest searched in float32). With it, a row starts from its own class."""
    monkeypatch.setitem(TorchFlatBf16Index.SEED_WINDOW_ROWS, "cpu", seed_window)
    split = clustered_embeddings(3001, 0, 32, 8, separation=1.0, seed=5)
    vectors = split.train_vectors[np.argsort(split.train_labels, kind="stable")]
    index = bf16_index_with_blocks(vectors, "ip", pair_block=1024, query_block=256, database_block=1024)
    with kernel_maxima_from_torch(kernel):
        distances, ids = index.all_pairs_search(10)
    assert index.last_certified_fraction == 1.0
    search_distances, search_ids = index.search(vectors, 10)
    np.testing.assert_array_equal(ids, search_ids)
    np.testing.assert_allclose(distances, search_distances, atol=1e-5)


def test_bf16_all_pairs_falls_back_to_float32_for_rows_with_too_many_near_ties():
    rng = np.random.default_rng(4)
    other = rng.standard_normal((3000, 32)).astype(np.float32)
    crowded = low_mantissa_variants(np.repeat(other[:1], 200, axis=0), rng)  # 200 near-ties of vector 0
    database = np.concatenate([other, crowded])
    for metric in ("l2", "ip"):
        index = bf16_index_with_blocks(database, metric, pair_block=512, query_block=256, database_block=1024)
        assert index.candidate_capacity(5) < 200
        distances, ids = index.all_pairs_search(5)
        # vector 0 and its 200 near-ties fell back to float32 (so did rows whose top 5 are among them)
        assert 0.9 < index.last_certified_fraction <= 1 - 201 / len(database)
        assert_exact_search(database, database, 5, metric, distances, ids)


@pytest.mark.parametrize("device, alignment", BOUND_DEVICE_ALIGNMENTS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_bf16_pair_scores_meet_the_error_bound_of_both_their_row_and_their_column(metric, device, alignment,
                                                                                   monkeypatch):
    """|t - (s - c)| <= w|t| + E for the row's frame and for the column's: one pair score serves both."""
    monkeypatch.setitem(TorchFlatBf16Index.COLUMN_ALIGNMENT, device, alignment)
    rng = np.random.default_rng(3)
    bases = rng.standard_normal((20, 48)).astype(np.float32)
    database = np.concatenate([bases, low_mantissa_variants(np.repeat(bases, 10, axis=0), rng),
                               bases * np.float32(1e-3), rng.standard_normal((100, 48)).astype(np.float32) * 30])
    index = build_index(BF16_SPEC, database, metric, device=device)
    state = index._pair_state(10)
    left = index._pair_operand(torch.empty((len(database), index.pair_columns), dtype=torch.bfloat16,
                                           device=index.device), slice(0, len(database)), state.offset, "left")
    right = index._pair_operand(torch.empty_like(left), slice(0, len(database)), state.offset, "right").clone()
    scores = index._aligned_scores(index._pair_buffer(), len(database), len(database))  # all pairs' aligned rows
    with _exact_cuda_matmuls(index.device):  # as all pairs computes it: 336 + 4 columns at alignment 8
        index._matmul_into(left, right, scores)  # t: bf16 product, float32 sums
    pair_scores = scores.double().cpu().numpy()
    x64 = database.astype(np.float64)
    half_norms = 0.5 * (x64 ** 2).sum(1) if metric == "l2" else np.zeros(len(database))
    # row i ranks by s_i(j) = x_i.x_j - h_j, offset c_i = c0 + h_i: t_ij - (s_i(j) - c_i) = t_ij - (x_i.x_j - h_i - h_j - c0)
    error = np.abs(pair_scores - (x64 @ x64.T - half_norms[:, None] - half_norms[None, :] - state.offset))
    rounding = index.OUTPUT_ROUNDING * np.abs(pair_scores)
    bound = state.bound.cpu().numpy()
    assert (error <= rounding + bound[:, None]).all()  # the row's bound
    assert (error <= rounding + bound[None, :]).all()  # the column's bound
    assert (error.max(axis=1) > 0.05 * bound).any()  # the bound is not vacuous


def seeded_state(index, k):
    """all_pairs_search's state after its seed pass, the seed's row order, and the buffer and operands it used."""
    state = index._pair_state(k)
    buffer = index._pair_buffer()
    left, right = index._operand_blocks()
    index._seed_thresholds(state, k, buffer, left, right)
    return state, index._seed_order(), buffer, left, right


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_bf16_seed_pass_sets_each_rows_theta_from_its_kth_largest_score_in_its_window(metric):
    """3001 rows in the seed's order, windows of 1001, 1000 and 1000: a row's first θ is the one from its
    k-th largest t over its window's columns but the last partial chunk of 8 (`_kth_in_top_chunks`
    reads the top k full chunks)."""
    vectors = clustered_embeddings(3001, 0, 32, 6, seed=3).train_vectors
    index = bf16_index_with_blocks(vectors, metric, pair_block=1024)
    state, order, buffer, left, right = seeded_state(index, 10)
    windows = order.tensor_split(3)
    assert [len(rows) for rows in windows] == [1001, 1000, 1000]
    for rows in windows:
        scores = index._aligned_scores(buffer, len(rows), len(rows))  # the window's product again
        index._matmul_into(index._pair_operand(left, rows, state.offset, "left"),
                           index._pair_operand(right, rows, state.offset, "right"), scores)
        kth = scores[:, :len(rows) // 8 * 8].float().topk(10, dim=1).values[:, -1]
        assert torch.equal(state.theta[rows], index._threshold(kth, state.bound[rows], state.slack[rows]))


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_bf16_seed_pass_in_windows_keeps_every_rows_top_k(metric):
    """Windows of 256 of 3001 rows (12 windows: one of 251, eleven of 250): every row's first θ is finite, and
    the t of each vector of its float32 top k, from the scan's product of all rows, reaches it."""
    vectors = clustered_embeddings(3001, 0, 32, 8, separation=1.0, seed=5).train_vectors
    index = bf16_index_with_blocks(vectors, metric, pair_block=256)
    state, _, _, _, _ = seeded_state(index, 10)
    assert torch.isfinite(state.theta.float()).all()
    every = slice(0, index.ntotal)
    left = torch.empty((index.ntotal, index.pair_columns), dtype=torch.bfloat16)
    scores = torch.empty((index.ntotal, index.ntotal), dtype=torch.bfloat16)
    index._matmul_into(index._pair_operand(left, every, state.offset, "left"),
                       index._pair_operand(torch.empty_like(left), every, state.offset, "right"), scores)
    _, top_ids = build_index(TORCH_SPEC, vectors, metric).search(vectors, 10)
    assert (scores.gather(1, torch.from_numpy(top_ids)) >= state.theta[:, None]).all()


def test_bf16_seed_pass_leaves_rows_of_windows_under_k_to_their_first_block():
    vectors = clustered_embeddings(40, 0, 8, 2, seed=1).train_vectors
    index = bf16_index_with_blocks(vectors, "ip", pair_block=16)  # windows of 14, 13 and 13 rows
    state, _, _, _, _ = seeded_state(index, 14)
    assert torch.isfinite(state.theta.float()).sum() == 14  # the window of 14
    distances, ids = index.all_pairs_search(14)
    assert_exact_search(vectors, vectors, 14, "ip", distances, ids)


def test_bf16_seed_pass_cuts_the_scores_the_scan_keeps(monkeypatch):
    """The point of the seed pass: rows start from a θ near their final one, so the scan's selection
    passes far fewer t (measured at 100k x 384: 5.29 -> 1.61 a row and selection, README; here 0.31 of
    them on this machine, where 8192 rows of 64 classes gave 0.48: too near the bound below)."""
    vectors = clustered_embeddings(16384, 0, 32, 256, separation=1.0, seed=2).train_vectors
    survivors = TorchFlatBf16Index._survivors
    kept = []
    monkeypatch.setattr(TorchFlatBf16Index, "_survivors", lambda *args: (
        found := survivors(*args), kept.append(len(found[0])))[0])
    passed = {}
    for seed_window in (0, 1024):
        monkeypatch.setitem(TorchFlatBf16Index.SEED_WINDOW_ROWS, "cpu", seed_window)
        index = bf16_index_with_blocks(vectors, "ip", pair_block=1024, query_block=256, database_block=1024)
        kept.clear()
        distances, ids = index.all_pairs_search(10)
        passed[seed_window] = sum(kept)
        assert_exact_search(vectors, vectors, 10, "ip", distances, ids)
    assert passed[1024] < passed[0] / 2


def test_bf16_all_pairs_rejects_bad_k_and_an_empty_index():
    index = build_index(BF16_SPEC, np.eye(3, dtype=np.float32), "ip")
    for k, error in ((0, ValueError), (4, ValueError), (1.5, TypeError)):
        with pytest.raises(error, match=f"k={k}"):
            index.all_pairs_search(k)
    index.reset()
    with pytest.raises(ValueError, match="no vectors have been added"):
        index.all_pairs_search(1)


# --- on cuda: the same exactness, on tensor cores (skipped without a GPU) ----------------------------


@needs_cuda
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=near_tie_problems())
def test_bf16_cuda_search_equals_reference_on_near_ties(problem):
    database, queries, k, metric, (query_block, database_block), chunk = problem
    index = TorchFlatBf16Index(database.shape[1], metric, torch.device("cuda"), query_block, database_block)
    index.CHUNK = chunk
    index.add(database)
    distances, ids = index.search(queries, k)
    assert_exact_search(database, queries, k, metric, distances, ids)


@needs_cuda
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=all_pairs_problems())
def test_bf16_cuda_all_pairs_equals_reference_on_near_ties(problem):
    database, k, metric, pair_block, chunk, seed_chunk, refresh, _ = problem
    pair_block = max(pair_block, 16)  # one-row blocks launch thousands of kernels per example on cuda
    index = TorchFlatBf16Index(database.shape[1], metric, torch.device("cuda"), 4, 16)
    index.pair_block, index.CHUNK, index.SEED_CHUNK, index.REFRESH = pair_block, chunk, seed_chunk, refresh
    index.add(database)
    distances, ids = index.all_pairs_search(k)
    assert_exact_search(database, database, k, metric, distances, ids)


@needs_cuda
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_bf16_cuda_equals_torch_float32_and_certifies_clustered_data(metric):
    split = clustered_embeddings(20_000, 300, 64, 20, seed=9)
    float32_distances, float32_ids = build_index(TORCH_SPEC, split.train_vectors, metric, device="cuda").search(
        split.val_vectors, 10)
    index = build_index(BF16_SPEC, split.train_vectors, metric, device="cuda")
    distances, ids = index.search(split.val_vectors, 10)
    np.testing.assert_array_equal(ids, float32_ids)
    np.testing.assert_allclose(distances, float32_distances, atol=1e-5)
    assert index.last_certified_fraction == 1.0
    pair_distances, pair_ids = index.all_pairs_search(10)
    assert index.last_certified_fraction == 1.0
    _, float32_ids = build_index(TORCH_SPEC, split.train_vectors, metric, device="cuda").search(split.train_vectors, 10)
    # against float64 (20k x 20k at once would not fit): the first rows, and every row whose ids
    # differ from float32 search's (on an H200, 1 of 20000: two neighbours tied in float32, swapped)
    rows = np.union1d(np.arange(100), np.nonzero((pair_ids != float32_ids).any(axis=1))[0])
    for begin in range(0, len(rows), 50):
        some = rows[begin:begin + 50]
        assert_exact_search(split.train_vectors, split.train_vectors[some], 10, metric, pair_distances[some],
                            pair_ids[some])


@needs_cuda
@pytest.mark.parametrize("spec", [TORCH_SPEC, BF16_SPEC])
def test_cuda_search_stays_exact_when_the_caller_turned_tf32_on(spec):
    split = clustered_embeddings(3000, 200, 48, 6, seed=7)
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    matmul.fp32_precision = "tf32"  # as torch.set_float32_matmul_precision("high") does: 10-bit mantissas
    try:
        distances, ids = build_index(spec, split.train_vectors, "l2", device="cuda").search(split.val_vectors, 10)
        assert matmul.fp32_precision == "tf32"  # the caller's setting is restored
    finally:
        matmul.fp32_precision = saved
    assert_exact_search(split.train_vectors, split.val_vectors, 10, "l2", distances, ids)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_bf16_all_pairs_of_one_vector_with_rows_laid_out_at_8_columns(metric, monkeypatch):
    """One score row of 1 column laid out at 8 (cuda's alignment): the pair buffer holds it."""
    monkeypatch.setitem(TorchFlatBf16Index.COLUMN_ALIGNMENT, "cpu", 8)
    database = np.array([[0.5, -2.0, 1.0]], dtype=np.float32)
    distances, ids = build_index(BF16_SPEC, database, metric).all_pairs_search(1)
    assert ids.tolist() == [[0]]
    assert_exact_search(database, database, 1, metric, distances, ids)


def test_bf16_selection_keeps_a_minus_zero_score_at_theta_plus_zero():
    """-0 >= +0: the int16 fast path (where -0's bits are negative) must not drop it."""
    index = TorchFlatBf16Index(4, "ip", torch.device("cpu"))
    index.CHUNK = 2
    scores = torch.tensor([[-1.0, -0.0, -2.0, -3.0], [0.5, -0.0, 0.0, -1.0]], dtype=torch.bfloat16)
    theta = torch.tensor([0.0, 0.0], dtype=torch.bfloat16)
    rows, columns, values = index._survivors(scores, None, theta, torch.zeros(2, dtype=torch.bool), 10)
    assert list(zip(rows.tolist(), columns.tolist())) == [(0, 1), (1, 0), (1, 1), (1, 2)]
    assert values.float().tolist() == [0.0, 0.5, 0.0, 0.0]


def test_bf16_refuses_rocm(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.2.0")
    with pytest.raises(ValueError, match="assumes NVIDIA tensor cores.*ROCm"):
        TorchFlatBf16Index(8, "ip", torch.device("cuda"))


def test_bf16_search_lays_every_block_of_scores_out_in_aligned_rows(monkeypatch):
    """At cuda's alignment of 8, blocks of 13 columns and the last one of 4 are written into rows of 16
    and 8 bf16 values, a block's columns past a multiple of 8 by a second product (cuBLAS takes a slow
    kernel for a column count that is not one); the buffer holds them."""
    monkeypatch.setitem(TorchFlatBf16Index.COLUMN_ALIGNMENT, "cpu", 8)
    database = np.random.default_rng(7).standard_normal((30, 6)).astype(np.float32)
    index = bf16_index_with_blocks(database, "ip", pair_block=8, query_block=4, database_block=13)
    assert index.score_buffer_shape(10) == (4, 16)
    products = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda left, right, out: (
        products.append((out.shape[1], out.stride(0), out.data_ptr() - buffer_start[0])), real_mm(left, right, out=out))[1])
    real_buffer = TorchFlatBf16Index._score_buffer
    buffer_start = []
    monkeypatch.setattr(TorchFlatBf16Index, "_score_buffer", lambda self, nq: (
        buffer := real_buffer(self, nq), buffer_start.append(buffer.data_ptr()))[0])
    distances, ids = index.search(database[:10], 3)
    # each block of 13 columns: 8 and then 5 (the thin product, 16 bytes into the row); the last: 4
    assert sorted(set(products)) == [(4, 8, 0), (5, 16, 16), (8, 16, 0)]
    assert_exact_search(database, database[:10], 3, "ip", distances, ids)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_bf16_zero_padded_columns_keep_search_and_all_pairs_exact(metric, monkeypatch):
    """cuda pads x' and q' with zeros to 8 columns and lays all pairs' score rows out at a multiple of 8
    (here the last block, 114 columns wide, in rows of 120): the same here, on near-ties, with the fall-back."""
    monkeypatch.setitem(TorchFlatBf16Index.COLUMN_ALIGNMENT, "cpu", 8)
    rng = np.random.default_rng(6)
    other = rng.standard_normal((1500, 37)).astype(np.float32)  # len(x') 38 (ip) or 40 (l2): padded to 40
    database = np.concatenate([other, low_mantissa_variants(np.repeat(other[:1], 150, axis=0), rng)])
    index = bf16_index_with_blocks(database, metric, pair_block=256, query_block=128, database_block=512)
    assert index._scored.shape[1] == 40 and index.pair_columns == 40 + (8 if metric == "l2" else 0)
    distances, ids = index.search(database[:300], 5)
    assert index.last_certified_fraction < 1.0  # the crowded rows fell back to float32
    assert_exact_search(database, database[:300], 5, metric, distances, ids)
    distances, ids = index.all_pairs_search(5)
    assert index.last_certified_fraction < 1.0
    assert_exact_search(database, database, 5, metric, distances, ids)
