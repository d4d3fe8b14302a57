"""Synthetic and --perf-data data sets with their exact ground truth, cached in memory and on disk under CACHE."""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from embedsearch.data import EmbeddingSplit, synthetic_embeddings
from embedsearch.fields import DATASET, DATASET_HASH, QUERY_SOURCE
from embedsearch.files import save_npz_atomically
from embedsearch.index import build_index
from embedsearch.knn import similarities
from embedsearch.metrics import dataset_difficulty
from embedsearch.vectors import VectorDataset
from tiers import IndexCase

CACHE = Path(os.environ.get("EMBEDSEARCH_CACHE", Path(__file__).resolve().parents[1] / ".cache"))
N_CLASSES = 200  # the study's Tiny ImageNet class count, for every search data set
GROUND_TRUTH_K = 100  # ground truth is computed once at this depth and sliced for smaller k
DIFFICULTY_QUERIES = 1000  # queries that LID and relative contrast are measured on, per data set and n


class DataCache:
    """Synthetic and --perf-data file data sets and their exact ground truth, cached in memory and on disk."""

    def __init__(self, folder: Path, files: dict[str, VectorDataset] | None = None):
        self.folder = folder
        self.files = files or {}  # --perf-data data sets by label (file name and content hash)
        self.memory: dict[str | tuple, object] = {}

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
        generated = functools.cache(lambda: synthetic_embeddings(data, n_train, n_val, d, n_classes, seed=seed))
        train = self._synthetic_train(data, n_train, d, n_classes, seed, generated)
        if n_val == 0:  # nothing to draw (leave-one-out): the train split alone, without generating it again
            val = {"vectors": np.empty((0, d), dtype=np.float32), "labels": np.empty(0, dtype=np.int64)}
        else:  # the val split is drawn after the train split from the seed's one stream: it depends on n_train
            val = self._cached(f"{data}-val-t{n_train}-v{n_val}-d{d}-c{n_classes}-s{seed}",
                               lambda: {"vectors": generated().val_vectors, "labels": generated().val_labels})
        return EmbeddingSplit(train["vectors"], train["labels"], val["vectors"], val["labels"], int(n_classes))

    def _synthetic_train(self, data: str, n_train: int, d: int, n_classes: int, seed: int,
                         generate: Callable[[], EmbeddingSplit]) -> dict[str, np.ndarray]:
        """A synthetic preset's train split, one copy per shape: drawn first from the seed's stream, it is the same
        whatever the val split's size; `generate` makes a split of this shape when it is not cached yet."""
        return self._cached(f"{data}-train-t{n_train}-d{d}-c{n_classes}-s{seed}",
                            lambda: {"vectors": generate().train_vectors, "labels": generate().train_labels})

    def database(self, case: IndexCase) -> np.ndarray:
        """An index case's database: its data set's first n vectors (a synthetic preset's train split)."""
        if case.data in self.files:
            return self.files[case.data].get_database()[:case.n]
        # Drawn with the DIFFICULTY_QUERIES val queries that its dataset_record needs anyway: a val split
        # continues the train split's random stream, so drawing the train alone would mean drawing it twice.
        return self.split(case.n, DIFFICULTY_QUERIES, case.d, N_CLASSES, data=case.data).train_vectors

    def search_data(self, case: IndexCase, nq: int) -> tuple[np.ndarray, np.ndarray]:
        """(database, queries) for an index case: its data set's first n database vectors and first nq queries."""
        if case.data in self.files:
            return self.database(case), self.files[case.data].get_queries()[:nq]
        split = self.split(case.n, nq, case.d, data=case.data)
        return split.train_vectors, split.val_vectors

    def dataset_record(self, case: IndexCase) -> dict:
        """The data set's name, content hash, where queries come from, and its LID and relative contrast (cached).

        LID and relative contrast (embedsearch.metrics.dataset_difficulty) are measured on the
        case's n database vectors with DIFFICULTY_QUERIES queries, whatever the case's nq. The
        record is made once per data set and shape: every case over it shares it (hashing a
        100k x 384 database took 0.3 s here).
        """
        key = ("record", case.data, case.n, case.d)
        if key not in self.memory:
            self.memory[key] = self._dataset_record(case)
        return dict(self.memory[key])

    def _dataset_record(self, case: IndexCase) -> dict:
        nq = DIFFICULTY_QUERIES
        if case.data in self.files:
            nq = min(nq, self.files[case.data].nq)
        database, queries = self.search_data(case, nq)
        if case.data in self.files:
            record = self.files[case.data].record()
        else:
            digest = hashlib.sha256(database.tobytes())
            digest.update(queries.tobytes())
            record = {DATASET: f"synthetic:{case.data}", DATASET_HASH: digest.hexdigest()[:12],
                      QUERY_SOURCE: "generated val split"}
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
