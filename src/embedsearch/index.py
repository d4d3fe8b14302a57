"""One search interface over FAISS (factory specs; cpu, one GPU, sharded GPUs) and torch brute force.

Distances follow FAISS: squared L2 (ascending) for metric "l2", inner products (descending) for
"ip"; cosine similarity is "ip" on L2-normalised vectors. Ids are int64 row numbers in add order.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

import faiss
import numpy as np
import torch

from .device import resolve_device, synchronize
from .validation import as_vectors, check_choice, check_k

METRICS = ("l2", "ip")
TORCH_SPEC = "TorchFlat"
FAISS_GPU_MAX_K = 2048  # FAISS GPU indexes accept k and nprobe up to this value
FAISS_MAX_INT = 2**31 - 1  # FAISS holds nprobe and efSearch in a C int
_FAISS_METRICS = {"l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT}


class Index(ABC):
    """A vector index: train (if needed), add, search(queries, k) -> (distances, ids), bytes used."""

    def __init__(self, spec: str, d: int, metric: str, device: torch.device):
        self.spec = spec
        self.d = d
        self.metric = metric
        self.device = device

    @property
    @abstractmethod
    def ntotal(self) -> int:
        """Number of vectors added."""

    @property
    def is_trained(self) -> bool:
        """False while an index that needs training (IVF, PQ) has not been trained."""
        return True

    def train(self, vectors: np.ndarray) -> None:
        """Train the index's quantisers on `vectors` (a no-op for indexes that need no training)."""
        as_vectors(vectors, "training vectors", self.d)

    @abstractmethod
    def add(self, vectors: np.ndarray) -> None:
        """Append `vectors` (n, d); they get ids ntotal .. ntotal + n - 1."""

    @abstractmethod
    def reset(self) -> None:
        """Remove every vector and release its memory, keeping what training learned."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (distances float32 (nq, k), ids int64 (nq, k)) of the k nearest stored vectors."""
        if self.ntotal == 0:
            raise ValueError(f"cannot search index {self.spec!r}: no vectors have been added")
        queries = as_vectors(queries, "queries", self.d)
        k = check_k(k, self.ntotal)
        return self._search(queries, k)

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ...

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes the index holds (FAISS: its serialised size; torch: its tensors)."""

    def set_search_params(self, *, nprobe: int | None = None, efSearch: int | None = None) -> None:
        """Set search-time parameters: nprobe for IVF indexes, efSearch for HNSW indexes."""
        given = {name: value for name, value in (("nprobe", nprobe), ("efSearch", efSearch)) if value is not None}
        if given:
            raise ValueError(f"index {self.spec!r} takes no search parameters, got {given}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(spec={self.spec!r}, d={self.d}, metric={self.metric!r}, device={str(self.device)!r}, ntotal={self.ntotal})"


class FaissIndex(Index):
    """A FAISS index built from an index-factory string, on cpu, one GPU, or sharded over all GPUs."""

    def __init__(self, spec: str, d: int, metric: str, device: torch.device, sharded: bool = False):
        super().__init__(spec, d, metric, device)
        for match in re.finditer(r"HNSW(\d+)", spec):
            if int(match.group(1)) < 2:  # FAISS aborts (M=0) or crashes (M=1) on these
                raise ValueError(f"index spec {spec!r}: HNSW{match.group(1)} has M={match.group(1)}, expected M >= 2")
        try:
            cpu_index = faiss.index_factory(d, spec, _FAISS_METRICS[metric])
        except RuntimeError as error:
            raise ValueError(
                f"index spec {spec!r} is not valid for d={d}: expected a FAISS index-factory string "
                f"such as 'Flat', 'IVF1024,Flat', 'HNSW32', 'IVF1024,PQ16' (PQ m must divide d) "
                f"or {TORCH_SPEC!r}; FAISS said: {_first_line(error)}"
            ) from None
        ivf = faiss.try_extract_index_ivf(cpu_index)
        self.nlist = ivf.nlist if ivf is not None else None
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"index spec {spec!r} has nlist={self.nlist} lists: expected at least 1")
        self.is_hnsw = _hnsw_level(cpu_index) is not None
        # Training these (PQ, SQ, IVF, PCA...) changes how stored vectors are encoded or read.
        self.needs_training = not cpu_index.is_trained
        if device.type == "cuda":
            self._index = _to_gpu(cpu_index, spec, device, sharded)
            self._parameter_space = faiss.GpuParameterSpace()
        else:
            if sharded:
                raise ValueError("sharded=True needs device='cuda': sharding splits the index over GPUs")
            self._index = cpu_index
            self._parameter_space = faiss.ParameterSpace()

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    def train(self, vectors: np.ndarray) -> None:
        if self.needs_training and self.ntotal > 0:
            raise ValueError(
                f"cannot train index {self.spec!r} holding {self.ntotal} vectors: retraining would make the "
                "stored codes unreadable; call reset() first, then train and add again"
            )
        vectors = as_vectors(vectors, "training vectors", self.d)
        if self.nlist is not None and vectors.shape[0] < self.nlist:
            raise ValueError(
                f"index {self.spec!r} has nlist={self.nlist} lists: expected at least {self.nlist} "
                f"training vectors (FAISS advises 39 per list), got {vectors.shape[0]}"
            )
        try:
            self._index.train(vectors)
        except RuntimeError as error:
            raise ValueError(
                f"training index {self.spec!r} on {vectors.shape[0]} vectors failed: {_first_line(error)}"
            ) from None

    def add(self, vectors: np.ndarray) -> None:
        vectors = as_vectors(vectors, "vectors", self.d)
        if not self.is_trained:
            raise ValueError(f"index {self.spec!r} must be trained before add: call train(vectors) first")
        self._index.add(vectors)

    def reset(self) -> None:
        self._index.reset()
        if self.device.type == "cpu":
            # FAISS's reset() keeps the vectors' capacity (std::vector::clear); a serialised round
            # trip of the emptied index releases it and keeps training and search parameters.
            self._index = faiss.deserialize_index(faiss.serialize_index(self._index))

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.device.type == "cuda" and k > FAISS_GPU_MAX_K:
            raise ValueError(f"k={k}: FAISS GPU indexes accept k <= {FAISS_GPU_MAX_K}")
        distances, ids = self._index.search(queries, k)
        return distances, ids

    def nbytes(self) -> int:
        index = faiss.index_gpu_to_cpu(self._index) if self.device.type == "cuda" else self._index
        counter = _ByteCounter()
        faiss.write_index(index, faiss.PyCallbackIOWriter(counter))
        return counter.total

    def set_search_params(self, *, nprobe: int | None = None, efSearch: int | None = None) -> None:
        if nprobe is not None:
            if self.nlist is None:
                raise ValueError(f"nprobe={nprobe}: index {self.spec!r} is not an IVF index")
            _check_positive("nprobe", nprobe,
                            self.nlist if self.device.type == "cpu" else min(self.nlist, FAISS_GPU_MAX_K))
            self._parameter_space.set_index_parameter(self._index, "nprobe", int(nprobe))
        if efSearch is not None:
            if not self.is_hnsw:
                raise ValueError(f"efSearch={efSearch}: index {self.spec!r} is not an HNSW index")
            _check_positive("efSearch", efSearch, FAISS_MAX_INT)
            self._parameter_space.set_index_parameter(self._index, "efSearch", int(efSearch))

    def __getstate__(self) -> dict:
        # The FAISS index pickles through FAISS's own serialisation; its ParameterSpace cannot be
        # pickled and holds no state, so it is rebuilt. A GPU index holds device memory: refused.
        if self.device.type == "cuda":
            raise TypeError(f"index {self.spec!r} on {self.device} cannot be pickled: pickle a cpu index")
        state = dict(self.__dict__)
        del state["_parameter_space"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._parameter_space = faiss.ParameterSpace()


class TorchFlatIndex(Index):
    """Exact search by matrix product + top-k in torch, blocked over queries and database.

    A search allocates one score buffer of query_block x database_block float32 values
    (`score_buffer_bytes(nq)`) and reuses it for every block, plus the per-block top-k candidates.
    """

    # Measured on 2 cpu cores (README): small blocks stay in cache; a GPU wants big matrix products.
    DEFAULT_BLOCKS = {"cpu": (1024, 8192), "cuda": (4096, 65536)}

    def __init__(self, d: int, metric: str, device: torch.device,
                 query_block: int | None = None, database_block: int | None = None):
        super().__init__(TORCH_SPEC, d, metric, device)
        default_query_block, default_database_block = self.DEFAULT_BLOCKS[device.type]
        self.query_block = default_query_block if query_block is None else query_block
        self.database_block = default_database_block if database_block is None else database_block
        _check_positive("query_block", self.query_block, None)
        _check_positive("database_block", self.database_block, None)
        self._vectors = torch.empty((0, d), dtype=torch.float32, device=device)
        self._half_norms = torch.empty((0,), dtype=torch.float32, device=device)

    def score_buffer_shape(self, nq: int) -> tuple[int, int]:
        """(rows, columns) of the score buffer a search of nq queries allocates: blocks capped by the data."""
        return min(self.query_block, nq), min(self.database_block, self.ntotal)

    def score_buffer_bytes(self, nq: int) -> int:
        """Bytes of the float32 score buffer a search of nq queries allocates."""
        rows, columns = self.score_buffer_shape(nq)
        return 4 * rows * columns

    @property
    def ntotal(self) -> int:
        return int(self._vectors.shape[0])

    def add(self, vectors: np.ndarray) -> None:
        # A copy: the index must not change when the caller later writes to its array.
        added = torch.from_numpy(as_vectors(vectors, "vectors", self.d)).to(self.device, copy=True)
        self._vectors = added if self.ntotal == 0 else torch.cat([self._vectors, added])
        if self.metric == "l2":
            half_norms = 0.5 * (added * added).sum(dim=1)
            self._half_norms = half_norms if self._half_norms.numel() == 0 else torch.cat([self._half_norms, half_norms])

    def reset(self) -> None:
        self._vectors = torch.empty((0, self.d), dtype=torch.float32, device=self.device)
        self._half_norms = torch.empty((0,), dtype=torch.float32, device=self.device)

    @torch.inference_mode()
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries_t = torch.from_numpy(queries).to(self.device)
        # One buffer for every block: a fresh allocation per block costs page faults on cpu.
        buffer = torch.empty(self.score_buffer_shape(len(queries_t)), dtype=torch.float32, device=self.device)
        all_distances, all_ids = [], []
        for q_start in range(0, queries_t.shape[0], self.query_block):
            block_queries = queries_t[q_start:q_start + self.query_block]
            scores, ids = self._search_block(block_queries, k, buffer)
            if self.metric == "l2":
                # score = q.x - |x|^2 / 2, so |q - x|^2 = |q|^2 - 2 * score; clamp round-off below 0
                query_norms = (block_queries * block_queries).sum(dim=1, keepdim=True)
                scores = (query_norms - 2.0 * scores).clamp_(min=0.0)
            all_distances.append(scores)
            all_ids.append(ids)
        distances = torch.cat(all_distances)
        ids = torch.cat(all_ids)
        synchronize(self.device)
        return distances.cpu().numpy(), ids.cpu().numpy()

    def _search_block(self, block_queries: torch.Tensor, k: int,
                      buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k (largest) scores over all database blocks for one block of queries."""
        candidate_scores, candidate_ids = [], []
        for x_start in range(0, self.ntotal, self.database_block):
            block_vectors = self._vectors[x_start:x_start + self.database_block]
            scores = buffer[:len(block_queries), :len(block_vectors)]
            if self.metric == "l2":
                torch.addmm(self._half_norms[x_start:x_start + self.database_block],
                            block_queries, block_vectors.T, beta=-1.0, out=scores)
            else:
                torch.mm(block_queries, block_vectors.T, out=scores)
            top_scores, top_ids = scores.topk(min(k, scores.shape[1]), dim=1)
            candidate_scores.append(top_scores)
            candidate_ids.append(top_ids + x_start)
        if len(candidate_scores) == 1:
            return candidate_scores[0], candidate_ids[0]
        merged_scores, positions = torch.cat(candidate_scores, dim=1).topk(k, dim=1)
        return merged_scores, torch.cat(candidate_ids, dim=1).gather(1, positions)

    def nbytes(self) -> int:
        return self._vectors.numel() * 4 + self._half_norms.numel() * 4


def create_index(spec: str, d: int, metric: str = "l2", device: str = "cpu", sharded: bool = False) -> Index:
    """Return an empty index: `spec` is a FAISS factory string or "TorchFlat"; device cpu/cuda[:N]/auto."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec={spec!r}: expected a FAISS index-factory string or {TORCH_SPEC!r}")
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d={d!r}: expected a positive integer dimension")
    check_choice(metric, "metric", METRICS)
    torch_device = resolve_device(device)
    if spec == TORCH_SPEC:
        if sharded:
            raise ValueError(f"sharded=True is for FAISS GPU indexes, not {TORCH_SPEC!r}")
        return TorchFlatIndex(int(d), metric, torch_device)
    return FaissIndex(spec, int(d), metric, torch_device, sharded)


def build_index(spec: str, vectors: np.ndarray, metric: str = "l2", device: str = "cpu",
                sharded: bool = False) -> Index:
    """Return an index of `vectors`: created from `spec`, trained on them if needed, then filled."""
    vectors = as_vectors(vectors, "vectors")
    index = create_index(spec, vectors.shape[1], metric, device, sharded)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


def _to_gpu(cpu_index: faiss.Index, spec: str, device: torch.device, sharded: bool) -> faiss.Index:
    gpus = faiss.get_num_gpus()
    if gpus == 0:
        raise ValueError(
            f"device={str(device)!r}: this FAISS build sees no GPU (faiss.get_num_gpus() == 0); "
            f"install the 'gpu' extra (faiss-gpu-cu12) or use spec {TORCH_SPEC!r} for GPU search"
        )
    try:
        if sharded:
            options = faiss.GpuMultipleClonerOptions()
            options.shard = True
            return faiss.index_cpu_to_all_gpus(cpu_index, co=options)
        resources = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(resources, device.index or 0, cpu_index)
        gpu_index.referenced_resources = resources  # keep the resources alive with the index
        return gpu_index
    except RuntimeError as error:
        raise ValueError(f"index spec {spec!r} has no FAISS GPU implementation: {_first_line(error)}") from None


def _hnsw_level(index: faiss.Index) -> faiss.IndexHNSW | None:
    """The HNSW index whose efSearch FAISS's ParameterSpace sets in `index` (itself, transformed, refined, or an IVF quantizer)."""
    index = faiss.downcast_index(index)
    while isinstance(index, (faiss.IndexPreTransform, faiss.IndexRefine)):
        index = faiss.downcast_index(index.base_index if isinstance(index, faiss.IndexRefine) else index.index)
    if isinstance(index, faiss.IndexIVF):
        index = faiss.downcast_index(index.quantizer)
    return index if isinstance(index, faiss.IndexHNSW) else None


def _check_positive(name: str, value: object, upper: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    if upper is not None and value > upper:
        raise ValueError(f"{name}={value}: expected at most {upper}")


def _first_line(error: Exception) -> str:
    """FAISS's own reason, without the C++ function signature and source location."""
    text = " ".join(str(error).split())
    match = re.search(r"\.(?:cpp|h|cu):\d+: (.*)", text)
    return match.group(1) if match else text


class _ByteCounter:
    """A write callback for faiss.PyCallbackIOWriter that counts bytes without keeping them."""

    def __init__(self) -> None:
        self.total = 0

    def __call__(self, chunk: bytes) -> int:
        self.total += len(chunk)
        return len(chunk)
