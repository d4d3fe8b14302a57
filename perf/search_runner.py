"""The search runner shared by the search, brute-force and scaling benchmarks: time one case, check it, record it."""

from __future__ import annotations

import numpy as np

from embedsearch.fields import CERTIFIED_FRACTION, GFLOPS, QUERIES_PER_S
from embedsearch.index import BF16_SPEC, EXACT_SPECS
from embedsearch.memory import exact_search_model_bytes
from embedsearch.metrics import exact_search_gflops, recall_at_k, single_query_latency
from memory_pass import memory_pass
from records import median_seconds, record
from tiers import approximate_specs
from timed_call import time_operation

# Least recall@k at the largest nprobe / efSearch of each sweep in tiers.approximate_specs, on the
# suite's clustered data, so a broken index fails the untimed `pytest` run. Measured there: IVF,Flat
# 0.66 (smoke) and 0.51-0.65 (default); HNSW32 1.00 and 0.79-0.91; 4-bit fast-scan IVF,PQ 0.12 and
# 0.04-0.16, against 0.002 (smoke) and 0.00005-0.005 (default) for ids drawn at random.
RECALL_FLOORS = {"IVF,Flat": 0.40, "HNSW": 0.70, "IVF,PQ": 0.03}
LATENCY_QUERIES = 200  # one-query searches timed per case (with --benchmark) for p50/p95/p99


def run_search_case(benchmark, case, device, data, indexes, threads, group_prefix: str, config) -> None:
    """Time one search case and record queries/s, GFLOP/s (exact) and recall@k against ground truth."""
    index = indexes.get(case.index, device)
    index.set_search_params(**dict(case.params))
    _, queries = data.search_data(case.index, case.nq)
    benchmark.group = (f"{group_prefix} n={case.index.n} d={case.index.d} k={case.k} nq={case.nq} "
                       f"{case.index.metric} {case.index.data} {device}")
    distances, ids = time_operation(benchmark, config, index.search, queries, case.k)
    truth_distances, truth_ids = data.ground_truth(case.index, case.nq)
    recall = recall_at_k(ids, truth_ids[:, :case.k])
    exact = case.index.spec in EXACT_SPECS
    figures = {}
    if exact:  # exact search must reproduce the exact distances (ids may differ only on ties)
        np.testing.assert_allclose(distances, truth_distances[:, :case.k], rtol=1e-5, atol=1e-4)
    elif (floor := recall_floor(case)) is not None:
        assert recall >= floor, f"{case.id}: recall@{case.k} {recall:.4f} is below its floor {floor}"
    if case.index.spec == BF16_SPEC:  # the queries that needed no float32 fall-back
        figures[CERTIFIED_FRACTION] = index.last_certified_fraction
    memory_pass(benchmark, config, lambda: index.search(queries, case.k), device,
                model_bytes=exact_search_model_bytes(index, case.nq, case.k) if exact and device == "cpu" else None)
    seconds = median_seconds(benchmark)
    if seconds:
        figures[QUERIES_PER_S] = case.nq / seconds
        figures.update(single_query_latency(index.search, queries[:LATENCY_QUERIES], case.k))
        if exact:
            figures[GFLOPS] = exact_search_gflops(case.index.n, case.index.d, case.nq, seconds)
    record(benchmark, threads, spec=case.index.spec, n=case.index.n, d=case.index.d, k=case.k, nq=case.nq,
           metric=case.index.metric, device=device, dtype="float32", params=dict(case.params),
           recall=recall, index_bytes=index.nbytes(), **data.dataset_record(case.index), **figures)


def recall_floor(case) -> float | None:
    """The recall floor of a case at the largest value of its spec's sweep; None for any other case."""
    sweep = approximate_specs(case.index.n, case.index.d).get(case.index.spec)
    if sweep is None or case.params != ((sweep[0], max(sweep[1])),):
        return None
    family = "HNSW" if case.index.spec.startswith("HNSW") else "IVF,PQ" if ",PQ" in case.index.spec else "IVF,Flat"
    return RECALL_FLOORS[family]
