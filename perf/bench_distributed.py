"""Ray: sharded exact search (strong and weak scaling over workers) and distributed embedding images/s.

Skipped when Ray (the `ray` extra) is not installed. Each search case also times in-process FAISS
Flat with as many threads as the case has workers, interleaved with the Ray search in the same
minute, and records the paired ratio: the overhead of going through Ray.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from embedsearch.data import DigitsImages
from embedsearch.fields import EFFICIENCY, IMAGES_PER_S, IMAGES_PER_S_PER_WORKER, QUERIES_PER_S, TIME_VS_IN_PROCESS
from embedsearch.index import build_index
from embedsearch.metrics import recall_at_k
from data_cache import CACHE
from records import median_seconds, record
from tiers import IndexCase
from timed_call import time_operation

# ray itself is imported by the cases that run (embedsearch.distributed): importing it took about 1 s of each
# collection, the pr tier's too, which runs no Ray case
if importlib.util.find_spec("ray") is None:
    pytest.skip("the Ray engine needs the ray extra: pip install -e '.[ray]'", allow_module_level=True)
from embedsearch.distributed import build_sharded_index, connect, embed_distributed, read_embeddings  # noqa: E402

PAIRED_ROUNDS = 5  # in-process / Ray timing pairs per search case (timed runs only)
EMBEDDING_ROUNDS = 2  # Ray Data jobs timed per embedding case: each is mostly the actors' fixed start-up
_queries_per_s: dict[tuple[str, int], float] = {}  # (scaling, workers) -> Ray queries/s, for efficiency


@pytest.fixture(scope="module")
def cluster_cpus():
    """CPUs of the Ray cluster: the one this session already uses, else a local one started here and
    shut down after this module: a local cluster left running takes CPU time from every later
    benchmark (docs/ab-gate.md: "A Ray cluster ran beside the later benchmarks")."""
    import ray

    started_here = not ray.is_initialized()
    yield int(connect().cluster_resources().get("CPU", 0))
    if started_here:
        ray.shutdown()


def paired_ratio(first, second) -> float:
    """Median over PAIRED_ROUNDS of time(first) / time(second), the two timed back to back each round."""
    ratios = []
    for _ in range(PAIRED_ROUNDS):
        start = time.perf_counter()
        first()
        middle = time.perf_counter()
        second()
        ratios.append((middle - start) / (time.perf_counter() - middle))
    return statistics.median(ratios)


def test_sharded_search(benchmark, distributed_search_case, data, threads, cluster_cpus, pytestconfig):
    case = distributed_search_case
    if case.workers > cluster_cpus:
        pytest.skip(f"{case.workers} workers: the Ray cluster has {cluster_cpus} CPUs")
    index_case = IndexCase("Flat", case.n, case.d)
    database, queries = data.search_data(index_case, case.nq)
    index = build_sharded_index("Flat", database, "ip", shards=case.workers, threads=1)
    try:
        benchmark.group = f"distributed search {case.scaling} d={case.d} k={case.k} nq={case.nq}"
        distances, ids = time_operation(benchmark, pytestconfig, index.search, queries, case.k)
        truth_distances, truth_ids = data.ground_truth(index_case, case.nq)
        np.testing.assert_allclose(distances, truth_distances[:, :case.k], atol=1e-4)  # exact: same distances
        figures = {}
        seconds = median_seconds(benchmark)
        if seconds:
            queries_per_s = case.nq / seconds
            _queries_per_s[(case.scaling, case.workers)] = queries_per_s
            figures[QUERIES_PER_S] = queries_per_s
            one_worker = _queries_per_s.get((case.scaling, 1))
            if one_worker:  # strong: ideal is workers x faster; weak: ideal is the same queries/s at workers x N
                ideal = one_worker * (case.workers if case.scaling == "strong" else 1)
                figures[EFFICIENCY] = queries_per_s / ideal
            in_process = build_index("Flat", database, "ip")
            faiss.omp_set_num_threads(case.workers)
            try:
                figures[TIME_VS_IN_PROCESS] = paired_ratio(lambda: index.search(queries, case.k),
                                                                lambda: in_process.search(queries, case.k))
            finally:
                faiss.omp_set_num_threads(threads)
        record(benchmark, threads, spec="Flat", scaling_mode=case.scaling, workers=case.workers, threads_per_worker=1,
               n=case.n, d=case.d, k=case.k, nq=case.nq, metric="ip", device="cpu", dtype="float32",
               recall=recall_at_k(ids, truth_ids[:, :case.k]), index_bytes=index.nbytes(), **figures)
    finally:
        index.close()


def digits_image_folder(images: int) -> Path:
    """The first `images` scikit-learn digits as PNG files in an ImageFolder tree (cached)."""
    root = CACHE / f"digits-images-{images}"
    if not (root / ".complete").is_file():
        dataset = DigitsImages(np.arange(images))
        for row in range(images):
            image, label = dataset[row]
            path = root / str(label) / f"{row:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
        (root / ".complete").touch()
    return root


def test_distributed_embedding(benchmark, distributed_embed_case, threads, cluster_cpus, tmp_path):
    case = distributed_embed_case
    if case.workers > cluster_cpus:
        pytest.skip(f"{case.workers} workers: the Ray cluster has {cluster_cpus} CPUs")
    root = digits_image_folder(case.images)
    outputs = iter(range(1_000_000))

    def fresh_output():
        return (), {"output_dir": tmp_path / f"run-{next(outputs)}"}

    def embed(output_dir: Path) -> Path:
        return embed_distributed(root, output_dir, model=case.model, weights="random", workers=case.workers,
                                 batch_size=case.batch_size)

    benchmark.group = f"distributed embedding {case.model}"
    output = benchmark.pedantic(embed, setup=fresh_output, rounds=1 if benchmark.disabled else EMBEDDING_ROUNDS)
    vectors, labels = read_embeddings(output)
    assert vectors.shape[0] == case.images and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    seconds = median_seconds(benchmark)
    record(benchmark, threads, model=case.model, images=case.images, workers=case.workers, threads_per_worker=1,
           batch_size=case.batch_size, device="cpu", weights="random",
           **({IMAGES_PER_S: case.images / seconds, IMAGES_PER_S_PER_WORKER: case.images / seconds / case.workers}
              if seconds else {}))
