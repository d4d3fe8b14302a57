"""Search quality and speed figures: recall@k, throughput, GFLOP/s, and machine calibration."""

from __future__ import annotations

import time

import numpy as np


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray, k: int | None = None) -> float:
    """Return the mean fraction of the true k nearest ids found among the first k found ids."""
    found_ids, true_ids = np.asarray(found_ids), np.asarray(true_ids)
    if found_ids.ndim != 2 or true_ids.ndim != 2 or found_ids.shape[0] != true_ids.shape[0]:
        raise ValueError(
            f"found_ids {found_ids.shape} and true_ids {true_ids.shape}: expected (nq, k) arrays with equal nq"
        )
    k = min(found_ids.shape[1], true_ids.shape[1]) if k is None else k
    if not 1 <= k <= min(found_ids.shape[1], true_ids.shape[1]):
        raise ValueError(f"k={k}: expected 1 <= k <= {min(found_ids.shape[1], true_ids.shape[1])}")
    hits = sum(np.intersect1d(found[:k], true[:k]).size for found, true in zip(found_ids, true_ids))
    return hits / (k * found_ids.shape[0])


def per_second(count: float, seconds: float) -> float:
    """Return count / seconds (queries/s, vectors/s, images/s)."""
    if seconds <= 0:
        raise ValueError(f"seconds={seconds!r}: expected a positive duration")
    return count / seconds


def exact_search_gflops(n: int, d: int, nq: int, seconds: float) -> float:
    """Return GFLOP/s of exact search: 2 * n * d * nq floating-point operations in `seconds`."""
    return per_second(2.0 * n * d * nq, seconds) / 1e9


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Return the best float32 NumPy matrix-product GFLOP/s over `repeats` size x size products."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm-up: thread pool start, page faults
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2.0 * size**3 / best / 1e9


def _timed(operation) -> float:
    start = time.perf_counter()
    operation()
    return time.perf_counter() - start


def lid_mle(neighbor_distances: np.ndarray, k: int) -> np.ndarray:
    """Return each row's local intrinsic dimensionality, the Levina–Bickel MLE from its k nearest distances.

    `neighbor_distances` are Euclidean (not squared) distances, ascending, at least k per row,
    the point itself excluded. m_k(x) = [(1/(k-1)) * sum_{j<k} log(T_k / T_j)]^-1 (Levina &
    Bickel 2004), which assumes the density is locally uniform within T_k of x (so small k:
    local but noisy, large k: smoother but mixes scales). Rows with a zero or repeated-only
    distance give inf or NaN; callers average the finite ones.
    """
    distances = np.asarray(neighbor_distances, dtype=np.float64)
    if distances.ndim != 2 or not 2 <= k <= distances.shape[1]:
        raise ValueError(f"k={k} with distances of shape {distances.shape}: expected 2 <= k <= the row length")
    nearest = distances[:, :k]
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(nearest[:, -1:] / nearest[:, :-1]).mean(axis=1)
        return 1.0 / logs


def relative_contrast(nearest_distance: np.ndarray, mean_distance: np.ndarray) -> np.ndarray:
    """Return each query's relative contrast D_mean / D_min (He, Kumar & Chang 2012), Euclidean distances.

    D_min is the distance to the nearest database point, D_mean the mean distance to the
    database (or to a uniform sample of it). Near 1: the nearest neighbour hardly stands out,
    search is hard; larger: easier.
    """
    nearest, mean = np.asarray(nearest_distance, dtype=np.float64), np.asarray(mean_distance, dtype=np.float64)
    if nearest.shape != mean.shape:
        raise ValueError(f"nearest {nearest.shape} and mean {mean.shape} distances: expected equal shapes")
    with np.errstate(divide="ignore"):
        return mean / nearest


def dataset_difficulty(database: np.ndarray, queries: np.ndarray, sample_queries: int = 1000,
                       sample_database: int = 10_000, seed: int = 0) -> dict[str, float]:
    """LID (Levina–Bickel MLE at k=20 and k=100, mean over queries) and mean relative contrast of a data set.

    Euclidean distances of up to `sample_queries` queries (a uniform sample, seeded) to their
    exact nearest database vectors; a neighbour at distance 0 (the query itself, a duplicate)
    is skipped. D_mean is taken over a uniform sample of `sample_database` database vectors.
    On L2-normalised vectors Euclidean and cosine order agree, so this also describes "ip" data.
    """
    from .index import build_index  # metrics stays importable without FAISS state at import time

    rng = np.random.default_rng(seed)
    database = np.ascontiguousarray(database, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if len(queries) > sample_queries:
        queries = queries[np.sort(rng.choice(len(queries), sample_queries, replace=False))]
    depth = min(102, len(database))  # 100 neighbours, with room to skip the query itself
    squared, _ = build_index("Flat", database, "l2").search(queries, depth)
    distances = np.sqrt(np.maximum(squared, 0.0))
    positive = [row[row > 0] for row in distances]
    figures = {}
    for k in (20, 100):
        rows = [row[:k] for row in positive if len(row) >= k]
        estimates = lid_mle(np.stack(rows), k) if rows else np.array([])
        finite = estimates[np.isfinite(estimates)]
        figures[f"lid{k}"] = float(finite.mean()) if finite.size else float("nan")
    reference = database if len(database) <= sample_database else \
        database[np.sort(rng.choice(len(database), sample_database, replace=False))]
    # mean Euclidean distance to the reference sample, by blocks of queries
    mean = np.concatenate([
        np.sqrt(np.maximum((block ** 2).sum(1)[:, None] + (reference ** 2).sum(1)[None, :]
                           - 2.0 * block @ reference.T, 0.0)).mean(axis=1)
        for block in np.array_split(queries, max(1, len(queries) // 256))])
    nearest = np.array([row[0] if len(row) else np.nan for row in positive])
    contrast = relative_contrast(nearest, mean)
    figures["rc"] = float(np.mean(contrast[np.isfinite(contrast)]))
    return figures


def single_query_latency(search, queries: np.ndarray, k: int) -> dict[str, float]:
    """Return p50/p95/p99 seconds of searching each query alone (ann-benchmarks' single-query mode).

    `search(queries, k)` is called once per row, in order, timed with perf_counter; the
    percentiles are NumPy's linear interpolation over those per-query times.
    """
    if len(queries) == 0:
        raise ValueError("queries: expected at least one query to time")
    seconds = np.array([_timed(lambda row=row: search(queries[row:row + 1], k)) for row in range(len(queries))])
    p50, p95, p99 = np.percentile(seconds, [50, 95, 99])
    return {"latency_p50_s": float(p50), "latency_p95_s": float(p95), "latency_p99_s": float(p99)}
