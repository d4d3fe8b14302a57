"""Helpers of the performance suite: cached data and ground truth, built indexes, recorded figures."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import time
from pathlib import Path
from typing import Callable

import faiss
import numpy as np
import timm
import torch
from pytest_benchmark.fixture import BenchmarkFixture

import embedsearch
from embedsearch.data import EmbeddingSplit, synthetic_embeddings
from embedsearch.files import save_npz_atomically
from embedsearch.index import Index, build_index
from embedsearch.knn import similarities
from embedsearch.memory import profile_memory
from embedsearch.metrics import dataset_difficulty
from embedsearch.vectors import VectorDataset
from tiers import IndexCase

CACHE = Path(os.environ.get("EMBEDSEARCH_CACHE", Path(__file__).resolve().parents[1] / ".cache"))
N_CLASSES = 200  # the study's Tiny ImageNet class count, for every search data set
GROUND_TRUTH_K = 100  # ground truth is computed once at this depth and sliced for smaller k
DIFFICULTY_QUERIES = 1000  # queries that LID and relative contrast are measured on, per data set and n


def planted_slowdown() -> float:
    """The extra work to plant in every timed call, as a fraction of its time ($EMBEDSEARCH_PLANTED_SLOWDOWN).

    For measuring the gate only (tools/measure_gate.py): the library is never touched.
    """
    text = os.environ.get("EMBEDSEARCH_PLANTED_SLOWDOWN", "0")
    try:
        fraction = float(text)
    except ValueError:
        fraction = -1.0
    if not 0 <= fraction <= 10:
        raise ValueError(f"EMBEDSEARCH_PLANTED_SLOWDOWN={text!r}: expected a fraction between 0 and 10, e.g. 0.25")
    return fraction


def slowed(function: Callable, fraction: float) -> Callable:
    """`function`, followed by busy work lasting `fraction` of the time it took: a (1 + fraction) x slowdown."""
    def run(*args, **kwargs):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        end = time.perf_counter()
        until = end + fraction * (end - start)
        while time.perf_counter() < until:
            pass
        return result
    return run


class SlowedBenchmark(BenchmarkFixture):
    """pytest-benchmark's fixture whose timed calls are slowed by `slowed`; given by `slow_down`."""

    planted_fraction = 0.0

    def __call__(self, function, *args, **kwargs):
        return super().__call__(slowed(function, self.planted_fraction), *args, **kwargs)

    def pedantic(self, target, *args, **kwargs):
        return super().pedantic(slowed(target, self.planted_fraction), *args, **kwargs)


def slow_down(benchmark: BenchmarkFixture, fraction: float) -> BenchmarkFixture:
    """Make every timed call of this fixture (1 + fraction) x slower (pytest-benchmark checks its type)."""
    benchmark.__class__ = SlowedBenchmark
    benchmark.planted_fraction = fraction
    return benchmark


def library_versions() -> dict[str, str]:
    return {"embedsearch": embedsearch.__version__, "faiss": faiss.__version__, "torch": torch.__version__,
            "timm": timm.__version__, "numpy": np.__version__, "python": platform.python_version()}


def record(benchmark, threads: int, **figures) -> None:
    """Store a benchmark's parameters and derived figures, with threads and library versions."""
    benchmark.extra_info.update(figures, threads=threads, versions=library_versions())


def memory_pass(benchmark, config, operation: Callable[[], object], device: str = "cpu",
                prepare: Callable[[], object] | None = None, model_bytes: int | None = None) -> None:
    """After timing, run `operation` once more untimed under memray and store its peak bytes.

    Runs with --benchmark unless --no-perf-memory. A first untimed call warms up one-time pools
    (BLAS buffers, thread pools) so they are not charged to the operation. `prepare` runs
    before each call (e.g. emptying an index before an add). `model_bytes`, the stated memory
    model of the operation (embedsearch.memory), is stored with peak / model.
    """
    if not config.getoption("benchmark") or config.getoption("no_perf_memory"):
        return
    prepare = prepare or (lambda: None)
    prepare()
    operation()
    prepare()
    folder = config.getoption("perf_memray_dir")
    capture = Path(folder) / (re.sub(r"[^A-Za-z0-9_.-]+", "_", benchmark.name) + ".bin") if folder else None
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    def run_discarding_result() -> None:
        operation()

    _, profile = profile_memory(run_discarding_result, capture)
    benchmark.extra_info["peak_bytes"] = profile.peak_bytes
    if model_bytes is not None:
        benchmark.extra_info.update(model_bytes=model_bytes, peak_vs_model=profile.peak_bytes / model_bytes)
    if capture is not None:
        benchmark.extra_info["memray_capture"] = str(capture)
    if cuda:
        torch.cuda.synchronize()
        benchmark.extra_info["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated())


def median_seconds(benchmark) -> float | None:
    """The timed median in seconds, or None when pytest-benchmark is disabled (untimed run)."""
    return float(benchmark.stats.stats.median) if benchmark.stats is not None else None


class DataCache:
    """Synthetic and --perf-data file data sets and their exact ground truth, cached in memory and on disk."""

    def __init__(self, folder: Path, files: dict[str, VectorDataset] | None = None):
        self.folder = folder
        self.files = files or {}  # --perf-data data sets by label (file name and content hash)
        self.memory: dict[str, object] = {}

    def _cached(self, key: str, make):
        if key in self.memory:
            return self.memory[key]
        path = self.folder / f"{key}.npz"
        if path.is_file():
            with np.load(path) as stored:
                value = {name: stored[name] for name in stored.files}
        else:
            value = make()
            save_npz_atomically(path, value)  # a reader never sees half a file
        self.memory[key] = value
        return value

    def split(self, n_train: int, n_val: int, d: int, n_classes: int = N_CLASSES, seed: int = 0,
              data: str = "hard") -> EmbeddingSplit:
        """A labelled train/val split (float32, L2-normalised): a synthetic preset, or a labelled file's first rows."""
        if data in self.files:
            dataset = self.files[data]
            train_labels, val_labels = dataset.labels
            return EmbeddingSplit(dataset.get_database()[:n_train], train_labels[:n_train],
                                  dataset.get_queries()[:n_val], val_labels[:n_val], dataset.n_classes)
        prefix = "clustered" if data == "hard" else data  # "clustered": the hard preset's key before presets existed
        key = f"{prefix}-t{n_train}-v{n_val}-d{d}-c{n_classes}-s{seed}"
        arrays = self._cached(key, lambda: synthetic_embeddings(data, n_train, n_val, d, n_classes, seed=seed).__dict__)
        return EmbeddingSplit(arrays["train_vectors"], arrays["train_labels"], arrays["val_vectors"],
                              arrays["val_labels"], int(n_classes))

    def search_data(self, case: IndexCase, nq: int) -> tuple[np.ndarray, np.ndarray]:
        """(database, queries) for an index case: its data set's first n database vectors and first nq queries."""
        if case.data in self.files:
            dataset = self.files[case.data]
            return dataset.get_database()[:case.n], dataset.get_queries()[:nq]
        split = self.split(case.n, nq, case.d, data=case.data)
        return split.train_vectors, split.val_vectors

    def dataset_record(self, case: IndexCase) -> dict:
        """The data set's name, content hash, where queries come from, and its LID and relative contrast (cached).

        LID and relative contrast (embedsearch.metrics.dataset_difficulty) are measured on the
        case's n database vectors with DIFFICULTY_QUERIES queries, whatever the case's nq.
        """
        nq = DIFFICULTY_QUERIES
        if case.data in self.files:
            nq = min(nq, self.files[case.data].nq)
        database, queries = self.search_data(case, nq)
        if case.data in self.files:
            record = self.files[case.data].record()
        else:
            digest = hashlib.sha256(database.tobytes())
            digest.update(queries.tobytes())
            record = {"dataset": f"synthetic:{case.data}", "dataset_hash": digest.hexdigest()[:12],
                      "query_source": "generated val split"}
        key = f"difficulty-{case.data}-n{case.n}-q{nq}-d{case.d}"
        figures = self._cached(key, lambda: {name: np.float64(value)
                                             for name, value in dataset_difficulty(database, queries).items()})
        return record | {name: float(value) for name, value in figures.items()}

    def ground_truth(self, case: IndexCase, nq: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact (distances, ids) of the nq queries, GROUND_TRUTH_K deep: a file's own (checked), else FAISS Flat."""
        if case.data in self.files and case.n == self.files[case.data].n:
            distances, ids = self.files[case.data].groundtruth()
            return distances[:nq], ids[:nq]
        depth = min(GROUND_TRUTH_K, case.n)
        key = f"truth-n{case.n}-q{nq}-d{case.d}-{case.metric}-k{depth}-{case.data}"

        def make():
            database, queries = self.search_data(case, nq)
            distances, ids = build_index("Flat", database, case.metric).search(queries, depth)
            return {"distances": distances, "ids": ids}

        truth = self._cached(key, make)
        return truth["distances"], truth["ids"]

    def val_neighbors(self, split_key: tuple, split: EmbeddingSplit, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities and ids of each val vector's k nearest train vectors (exact)."""
        key = "neighbors-" + "-".join(map(str, split_key)) + f"-k{k}"

        def make():
            distances, ids = build_index("Flat", split.train_vectors, "ip").search(split.val_vectors, k)
            return {"similarities": similarities(distances, "ip"), "ids": ids}

        found = self._cached(key, make)
        return found["similarities"], found["ids"]


class IndexCache:
    """The most recently built index, reused by consecutive cases over the same index."""

    def __init__(self, data: DataCache):
        self.data = data
        self.key: tuple | None = None
        self.index: Index | None = None

    def get(self, case: IndexCase, device: str, nq: int) -> Index:
        key = (case, device, nq)
        if key != self.key:
            self.index = None  # release the previous index before building the next
            database, _ = self.data.search_data(case, nq)
            self.index = build_index(case.spec, database, case.metric, device)
            self.key = key
        return self.index


def theoretical_index_bytes(spec: str, n: int, d: int) -> int | None:
    """Bytes the stored vectors should take: Flat 4d, HNSW{M} 4d + 8M, IVF lists + 8-byte ids, PQ m*nbits/8.

    Coarse centroids (IVF: 4 * nlist * d) are included; PQ codebooks are not. None for other specs.
    """
    if spec in ("Flat", "TorchFlat"):
        return 4 * d * n
    if match := re.fullmatch(r"HNSW(\d+)", spec):
        return n * (4 * d + 8 * int(match.group(1)))
    if match := re.fullmatch(r"IVF(\d+),Flat", spec):
        return n * (4 * d + 8) + 4 * int(match.group(1)) * d
    if match := re.fullmatch(r"IVF(\d+),PQ(\d+)(?:x(\d+))?(?:fs)?", spec):
        nlist, m, nbits = int(match.group(1)), int(match.group(2)), int(match.group(3) or 8)
        return n * (m * nbits // 8 + 8) + 4 * nlist * d
    return None
