"""Search: spec x N x d x k x nq x device; queries/s, GFLOP/s for exact search, recall@k for approximate."""

import numpy as np

from embedsearch.index import BF16_SPEC, EXACT_SPECS
from embedsearch.memory import exact_search_model_bytes
from embedsearch.metrics import exact_search_gflops, recall_at_k
from harness import median_seconds, memory_pass, record


def run_search_case(benchmark, case, device, data, indexes, threads, group_prefix: str, config) -> None:
    """Time one search case and record queries/s, GFLOP/s (exact) and recall@k against ground truth."""
    index = indexes.get(case.index, device, case.nq)
    index.set_search_params(**dict(case.params))
    _, queries = data.search_data(case.index, case.nq)
    benchmark.group = (f"{group_prefix} n={case.index.n} d={case.index.d} k={case.k} nq={case.nq} "
                       f"{case.index.metric} {device}")
    index.search(queries, case.k)  # warm-up: thread pools, BLAS buffers, caches
    distances, ids = benchmark(index.search, queries, case.k)
    truth_distances, truth_ids = data.ground_truth(case.index, case.nq)
    recall = recall_at_k(ids, truth_ids[:, :case.k])
    exact = case.index.spec in EXACT_SPECS
    figures = {}
    if exact:  # exact search must reproduce the exact distances (ids may differ only on ties)
        np.testing.assert_allclose(distances, truth_distances[:, :case.k], atol=1e-4)
    if case.index.spec == BF16_SPEC:  # the queries that needed no float32 fall-back
        figures["certified_fraction"] = index.last_certified_fraction
    memory_pass(benchmark, config, lambda: index.search(queries, case.k), device,
                model_bytes=exact_search_model_bytes(index, case.nq, case.k) if exact and device == "cpu" else None)
    seconds = median_seconds(benchmark)
    if seconds:
        figures["queries_per_s"] = case.nq / seconds
        if exact:
            figures["gflops"] = exact_search_gflops(case.index.n, case.index.d, case.nq, seconds)
    record(benchmark, threads, spec=case.index.spec, n=case.index.n, d=case.index.d, k=case.k, nq=case.nq,
           metric=case.index.metric, device=device, dtype="float32", params=dict(case.params),
           recall=recall, index_bytes=index.nbytes(), **figures)


def test_search(benchmark, search_case, device, data, indexes, threads, pytestconfig):
    run_search_case(benchmark, search_case, device, data, indexes, threads, "search", pytestconfig)
