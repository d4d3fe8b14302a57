"""One search interface over FAISS (factory specs; cpu, one GPU, sharded GPUs) and torch brute force.

Distances follow FAISS: squared L2 (ascending) for metric "l2", inner products (descending) for
"ip"; cosine similarity is "ip" on L2-normalised vectors. Ids are int64 row numbers in add order.
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import faiss
import numpy as np
import torch

from .chunk_maxima import chunk_maxima_both_ways, maxima_kernel_available
from .device import resolve_device, synchronize
from .validation import as_vectors, check_choice, check_k

METRICS = ("l2", "ip")
FLOAT32_UNIT = 2.0 ** -24  # float32's unit roundoff (round to nearest)
TORCH_SPEC = "TorchFlat"
BF16_SPEC = "TorchFlat.bf16"  # TorchFlat scoring in bfloat16 with a certified float32 re-rank
EXACT_SPECS = ("Flat", TORCH_SPEC, BF16_SPEC)
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
    On cuda its products run in float32 even where the caller turned TF32 on (it would not be exact).
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

    def stores(self, vectors: np.ndarray) -> bool:
        """True when `vectors` (n, d) float32 are exactly the stored vectors, in add order."""
        return tuple(vectors.shape) == tuple(self._vectors.shape) and torch.equal(
            torch.from_numpy(vectors).to(self.device), self._vectors)

    def reset(self) -> None:
        self._vectors = torch.empty((0, self.d), dtype=torch.float32, device=self.device)
        self._half_norms = torch.empty((0,), dtype=torch.float32, device=self.device)

    @torch.inference_mode()
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries_t = torch.from_numpy(queries).to(self.device)
        # One buffer for every block: a fresh allocation per block costs page faults on cpu.
        buffer = self._score_buffer(len(queries_t))
        all_distances, all_ids = [], []
        with _exact_cuda_matmuls(self.device):
            for q_start in range(0, queries_t.shape[0], self.query_block):
                block_queries = queries_t[q_start:q_start + self.query_block]
                scores, ids = self._search_block(block_queries, k, buffer)
                all_distances.append(self._distances(block_queries, scores))
                all_ids.append(ids)
        distances = torch.cat(all_distances)
        ids = torch.cat(all_ids)
        synchronize(self.device)
        return distances.cpu().numpy(), ids.cpu().numpy()

    def _distances(self, block_queries: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """FAISS distances from scores: ip as is; l2 from score = q.x - |x|^2 / 2."""
        if self.metric == "ip":
            return scores
        # |q - x|^2 = |q|^2 - 2 * score; clamp round-off below 0
        query_norms = (block_queries * block_queries).sum(dim=1, keepdim=True)
        return (query_norms - 2.0 * scores).clamp_(min=0.0)

    def _score_buffer(self, nq: int) -> torch.Tensor:
        """The score buffer a search of nq queries reuses for every block."""
        return torch.empty(self.score_buffer_shape(nq), dtype=torch.float32, device=self.device)

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


@dataclass
class _PairState:
    """all_pairs_search's running state, one entry (or row) per stored vector."""

    offset: float  # c0, the bf16 offset subtracted from every pair score
    bound: torch.Tensor  # E per row, float64 (inf: no certificate)
    slack: torch.Tensor  # 2F per row, float64
    failed: torch.Tensor  # bool: searched in float32 at the end
    theta: torch.Tensor  # bf16 θ per row, -inf until the row's first block
    counts: torch.Tensor  # int64 candidates held per row
    scores: torch.Tensor  # (n, capacity) float32 bf16 scores of the candidates, -inf padded
    ids: torch.Tensor  # (n, capacity) int64 ids of the candidates


class TorchFlatBf16Index(TorchFlatIndex):
    """Exact search that scores in bfloat16, re-ranks in float32, and certifies each query.

    Scores. s(x) = q·x (ip), or q·x - |x|²/2 (l2, which ranks as -|q - x|²). Beside its float32
    vectors the index stores x' = [bf16(x), 1, -h1, -h2] (ip: [bf16(x), 1]), h = |x|²/2 in
    float64, h1 = bf16(h), h2 = bf16(h - h1). A query becomes q' = [bf16(q), -c, 1, 1], c a bf16
    offset: a little below the k-th best float32 score over OFFSET_SAMPLE evenly spaced stored
    vectors, so that scores near the cut are small numbers and their bf16 rounding is fine. bf16
    subnormals are flushed to zero in both (bf16 dot-product units treat them as zero). One
    matrix product per block gives
    t(x) = bf16(q'·x'), accumulated in float32 (checked by tests/test_index.py).

    Error bound, per query, for every stored x: |t(x) - (s(x) - c)| <= w·|t(x)| + E, where
    1. operands: |bf16(q)·bf16(x) - q·x| <= |bf16(q)|·R + |bf16(q) - q|·M (Cauchy-Schwarz on
       q̂·(x̂ - x) + (q̂ - q)·x), R = max |bf16(x) - x| and M = max |x| as measured when added,
       plus e = max |h - h1 - h2| (+ (d + 2)·2^-52·h for h's own float64 sum);
    2. accumulation: products of bf16 numbers are exact in float32; n = len(x') float32 additions
       (n also counts the zeros that pad x' to COLUMN_ALIGNMENT: a bound for more terms holds)
       in any order (blocked, fused or not) err by at most γn·Σ|q'i x'i| <= γn·|q'|·M',
       γn = n·u / (1 - n·u), M' = max |x'| (Higham, Accuracy and Stability of Numerical
       Algorithms, §3.1), plus (2n + 1)·2^-126 for results flushed to zero on underflow.
       u (ACCUMULATION_UNIT) is 2^-24 on cpu, whose float32 additions round to nearest.
       On cuda it is 2^-22, for NVIDIA tensor cores (Fasi et al., PeerJ CS 2021; Khattak &
       Mikaitis 2025 for H100): a step adds p >= 1 products and the running sum at once, aligned
       to the largest of these p + 1 terms, which stays exact; the other p are truncated to
       float32's 24 bits, and so is the normalised result: p + 1 truncations, each losing less
       than 2^-23 times the step's largest term, itself at most Σ|q'i x'i| (to first order).
       Over all steps that is n + (steps) <= 2n truncations, less than 2n·2^-23·Σ|q'i x'i| =
       n·2^-22·Σ|q'i x'i| <= γn·Σ|q'i x'i| with u = 2^-22. cuBLAS's split-K
       sums round to nearest in float32 (reduced-precision reductions are off). ROCm's matrix
       cores are not covered: TorchFlat.bf16 refuses a ROCm device;
    3. output: rounding the float32 sum to bf16 moves it by at most w·|t|, w = 2^-7·(1 + 2^-6)
       (covers round-to-nearest and truncation).
    E is the sum of 1 and 2, times 1 + 2^-30 for the float64 arithmetic that computes it.

    Certificate. L(t) = t - w|t| - E and U(t) = t + w|t| + E both increase with t. With t_k the
    k-th largest t, k vectors have s - c >= T = L(t_k). A float32 score f (re-rank or any
    float32 exact search) errs by at most F = γ(d+2)·(|q|·M + M²) (ip: γ(d+2)·|q|·M), so a
    vector in the float32 top-k has f >= T + c - F, hence s - c >= T - 2F, hence
    t >= θ = U⁻¹(T - 2F). θ is rounded down to bf16; every t < θ is discarded. As blocks are
    scanned t_k only grows, so a running θ discards safely: per block one pass takes the max of
    each CHUNK columns, and only chunks whose max reaches θ are compared element-wise. The
    candidates (t >= θ at the end) are re-ranked with float32 scores of the original vectors,
    so the results are those of float32 exact search. A query is certified when all its
    candidates fit the candidate buffer (`candidate_capacity(k)`); otherwise (many near-ties)
    it is searched in float32 like TorchFlat, reusing the score buffer's memory. Queries whose
    bound is not finite (huge values) are searched in float32 too.

    All pairs (`all_pairs_search`: the stored vectors as queries, for leave-one-out). The scores
    form a symmetric matrix, so only its square blocks (I, J) with J >= I (pair_block rows each)
    are computed, each as one bf16 product left_I · right_Jᵀ with left = [bf16(x), -c0, 1, 1,
    -h1, -h2] and right = [bf16(x), 1, -h1, -h2, 1, 1] (ip: [bf16(x), -c0] and [bf16(x), 1]), so
    t_ij = bf16(bf16(x_i)·bf16(x_j) - c0 - h1_i - h2_i - h1_j - h2_j), one bf16 offset c0 for all.
    For row i that is s_i(j) - c_i with c_i = c0 + h_i, a constant of the row, so it ranks as s.
    Each block feeds rows I and, transposed, rows J (the diagonal block feeds its rows once).
    The certificate holds for both uses of one t_ij because its error bound is symmetric:
    bf16(x_i)·bf16(x_j) - x_i·x_j = bf16(x_i)·(bf16(x_j) - x_j) + (bf16(x_i) - x_i)·x_j, so it is
    at most |bf16(x_i)|·R + |bf16(x_i) - x_i|·M in row i's frame and, by the same identity with i
    and j swapped, at most |bf16(x_j)|·R + |bf16(x_j) - x_j|·M in row j's frame; the half norms
    add 2e in both; the float32 sum errs by at most γn·Σ|left_i,m·right_j,m| <= γn·(|bf16(x_i)|·
    max|bf16(x)| + |c0| + |h1_i| + |h2_i| + max(|h1| + |h2|)), a bound that holds for i's row
    and, written with j, for j's row. So E per stored vector bounds every t it takes part in, as
    a row or as a column, and θ, the running candidates and the float32 fall-back per row follow
    as above. c0 sits a little below the lowest k-th float32 score of OFFSET_SAMPLE evenly spaced
    vectors among themselves, so most rows' θ is >= +0 (the int16 pass). Before the scan, a seed
    pass (`_seed_thresholds`, where seed_window() is at least k and the rows span more than one
    block) gives each row a first θ near its final one: the rows, sorted by their nearest
    k-means centroid (`_seed_order`), are cut into windows of at most seed_window() rows, each
    window's pairs are scored as one block, and θ comes from each row's k-th largest t there
    (over the window's full chunks of seed_chunk() columns, from their maxima:
    `_kth_in_top_chunks`). Any k distinct vectors' t serve, since the certificate needs only
    that k vectors have s - c >= L(t_k), so θ is valid whatever the clustering; how near it
    lands decides how few t the scan keeps. A row without one (no seed pass, or its window
    shorter than k) takes it from its first block: the k-th largest max over SEED_CHUNK columns
    (k distinct vectors reach it), or where the product took the CHUNK maxima (cuda's kernel),
    the k-th largest t in the k chunks of largest max (`_kth_in_top_chunks`); afterwards a row's
    candidates (t >= its θ at the time) are appended to its buffer of capacity slots, and when
    more than k + REFRESH have gathered they are sorted: θ rises to the one from their k-th best
    and those below θ go. A block in which more than capacity + 1
    t reach a row's θ (a θ from earlier blocks far below this one's: vectors stored in class
    order meet their class late) raises that row's θ to the one from the block's own k-th
    largest t (`_block_kth`) and is selected again. More than capacity at or above θ: the row
    fails and is searched in float32 at the end; the others are re-ranked as above.

    Memory: the bf16 copy adds 2·ntotal·len(x') bytes (`nbytes`); a search reuses one bf16
    score buffer (`score_buffer_bytes(nq)`) plus candidate buffers of query_block x capacity.
    `all_pairs_search` holds one bf16 buffer of pair_block rows of round_up(pair_block, COLUMN_ALIGNMENT)
    (`pair_buffer_bytes()`, 32 MiB on cpu;
    the float32 fall-back reuses it), two bf16 operand blocks of pair_block x (len(x') + 2), the
    candidates of every row, ntotal x capacity(k) x 12 bytes (114 MB at 100k rows and k = 21),
    27 bytes of bounds, θ and counts per row, and the results (`memory.all_pairs_model_bytes` bounds it all).
    On cuda the same code runs on tensor cores, with reduced-precision bf16 reductions turned
    off for the matrix product (they would break bound 2) and TF32 off for the float32 re-rank
    and fall-back (it would break F), whatever the caller set. There, with Triton, a kernel
    (`chunk_maxima.chunk_maxima_both_ways`) takes a block's chunk maxima, both ways for all
    pairs, in one read of the block, where torch's reductions took two passes at about a third
    of the memory bandwidth; it adds 2 bytes a chunk per way (4·pair_block²/CHUNK bytes in all
    pairs, 256 MiB).
    """

    CHUNK = 64  # columns per max in the selection pass: a chunk reaching θ is compared element-wise
    # Larger query blocks on cuda: fewer, bigger products (measured on an H200, README)
    DEFAULT_BLOCKS = {**TorchFlatIndex.DEFAULT_BLOCKS, "cuda": (16384, 65536)}
    PAIR_BLOCKS = {"cpu": 4096, "cuda": 65536}  # all_pairs_search's square blocks: rows (= columns) per block
    # Columns of the product operands are padded with zeros to a multiple of this (on cuda, operands
    # of 385 columns sent cuBLAS to a Turing-era kernel at ~115 TFLOP/s on an H200), the score rows of
    # search and all pairs are laid out at a multiple of it, and the columns of a product past its
    # last multiple are a second product (`_matmul_into`): a count of columns that is not one did too.
    COLUMN_ALIGNMENT = {"cpu": 1, "cuda": 8}
    SEED_CHUNK = 8  # all_pairs_search's first θ without the kernel's maxima: columns per max (smaller: nearer the k-th)
    # all_pairs_search's first θ per row from a window of stored vectors near it (`_seed_thresholds`);
    # 0: no seed pass, each row's first block sets it (cuda: the pass is not measured there)
    SEED_WINDOW_ROWS = {"cpu": 1024, "cuda": 0}
    SEED_CENTROIDS = 256  # k-means centroids that order the rows for the windows
    SEED_SAMPLE = 16384  # stored vectors the k-means steps run on
    SEED_STEPS = 4  # Lloyd steps
    RESEED_ROWS = 1024  # rows of a block copied at once to raise a crowded row's θ without chunk maxima
    REFRESH = 16  # candidates a row gathers beyond k in all_pairs_search before its θ is raised (a sort)
    OFFSET_SAMPLE = 256  # stored vectors scored in float32 to choose each query's offset c
    RERANK_PAIRS = 8192  # (query, candidate) pairs re-ranked at once: bounds the gathered vectors (12 MiB at d=384)
    OUTPUT_ROUNDING = 2.0 ** -7 * (1 + 2.0 ** -6)  # w above
    ACCUMULATION_UNIT = {"cpu": FLOAT32_UNIT, "cuda": 2.0 ** -22}  # u of bound 2 above, per device type
    FLOAT64_SLACK = 1 + 2.0 ** -30

    def __init__(self, d: int, metric: str, device: torch.device,
                 query_block: int | None = None, database_block: int | None = None):
        if device.type == "cuda" and torch.version.hip:
            raise ValueError(f"index spec {BF16_SPEC!r} on device {device}: its error bound assumes NVIDIA tensor "
                             f"cores, and this torch runs on ROCm ({torch.version.hip}); use {TORCH_SPEC!r}")
        super().__init__(d, metric, device, query_block, database_block)
        self.spec = BF16_SPEC
        self.scored_d = d + (3 if metric == "l2" else 1)  # len(x')
        self.scored_columns = _round_up(self.scored_d, self.COLUMN_ALIGNMENT[device.type])  # x' and zeros
        self.last_certified_fraction: float | None = None  # share of the last search's queries certified
        self.pair_block = self.PAIR_BLOCKS[device.type]
        self.accumulation_unit = self.ACCUMULATION_UNIT[device.type]
        self._clear_bf16()

    def _clear_bf16(self) -> None:
        self._scored = torch.empty((0, self.scored_columns), dtype=torch.bfloat16, device=self.device)
        self._max_norm = self._max_residual = self._max_scored_norm = self._max_half_norm_error = 0.0

    def candidate_capacity(self, k: int) -> int:
        """Candidates a query may keep (k plus room for near-ties); more and it falls back to float32."""
        return min(self.ntotal, 3 * k + 32)

    def score_buffer_shape(self, nq: int) -> tuple[int, int]:
        rows, columns = super().score_buffer_shape(nq)
        # even: its memory also holds rows / 2 float32 rows; columns: the rows' aligned width (`_aligned_scores`)
        return rows + rows % 2 if rows > 1 else 2, _round_up(columns, self.COLUMN_ALIGNMENT[self.device.type])

    def score_buffer_bytes(self, nq: int) -> int:
        """Bytes of the bf16 score buffer a search of nq queries allocates (float32 fall-back reuses it)."""
        rows, columns = self.score_buffer_shape(nq)
        return 2 * rows * columns

    def add(self, vectors: np.ndarray) -> None:
        start = self.ntotal
        super().add(vectors)
        scored = torch.zeros((self.ntotal, self.scored_columns), dtype=torch.bfloat16, device=self.device)
        scored[:start] = self._scored
        self._scored = scored
        for begin in range(start, self.ntotal, self.database_block):
            end = min(begin + self.database_block, self.ntotal)
            self._fill_scored_rows(begin, end)

    def _fill_scored_rows(self, begin: int, end: int) -> None:
        """Write x' for stored rows begin..end - 1 and update the maxima the error bound uses."""
        vectors = self._vectors[begin:end]
        rounded = _bf16_flushed(vectors)
        scored = self._scored[begin:end]
        scored[:, :self.d] = rounded
        scored[:, self.d] = 1.0
        if self.metric == "l2":
            half_norms = 0.5 * _norms64(vectors) ** 2
            high = _bf16_flushed(half_norms)
            low = _bf16_flushed(half_norms - high.double())
            scored[:, self.d + 1] = -high
            scored[:, self.d + 2] = -low
            error = (half_norms - high.double() - low.double()).abs() + (self.d + 2) * 2.0 ** -52 * half_norms
            self._max_half_norm_error = max(self._max_half_norm_error, float(error.max()))
        self._max_norm = max(self._max_norm, float(_norms64(vectors).max()))
        # bf16(x) - x is exact in float32 (Sterbenz: within a factor 2 of x, or x itself when flushed)
        self._max_residual = max(self._max_residual, float(_norms64(rounded.float() - vectors).max()))
        self._max_scored_norm = max(self._max_scored_norm, float(_norms64(scored).max()))

    def reset(self) -> None:
        super().reset()
        self._clear_bf16()

    def nbytes(self) -> int:
        return super().nbytes() + self._scored.numel() * 2

    def _score_buffer(self, nq: int) -> torch.Tensor:
        rows, columns = self.score_buffer_shape(nq)
        return torch.empty(rows * columns, dtype=torch.bfloat16, device=self.device)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self._certified = 0
        results = super()._search(queries, k)
        self.last_certified_fraction = self._certified / len(queries)
        return results

    def _search_block(self, block_queries: torch.Tensor, k: int,
                      buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k float32 scores of one block of queries: certified bf16 candidates, else float32."""
        bound, slack, scored_queries = self._query_bounds(block_queries, k)
        candidate_scores, candidate_ids, failed = self._candidates(scored_queries, bound, slack, k, buffer)
        return self._rerank_or_fall_back(block_queries, candidate_scores, candidate_ids, failed, k, buffer)

    def _rerank_or_fall_back(self, block_queries: torch.Tensor, candidate_scores: torch.Tensor,
                             candidate_ids: torch.Tensor, failed: torch.Tensor, k: int,
                             buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k float32 scores: re-ranked candidates where certified, float32 search in `buffer` where failed."""
        scores, ids = self._rerank(block_queries, candidate_scores, candidate_ids, failed, k)
        failed_rows = failed.nonzero().flatten()
        self._certified += len(block_queries) - len(failed_rows)
        columns = min(self.database_block, self.ntotal)
        rows_per_pass = buffer.numel() // 2 // columns
        float32_buffer = buffer.view(torch.float32)[:rows_per_pass * columns].view(rows_per_pass, columns)
        for begin in range(0, len(failed_rows), rows_per_pass):
            rows = failed_rows[begin:begin + rows_per_pass]
            scores[rows], ids[rows] = TorchFlatIndex._search_block(self, block_queries[rows], k, float32_buffer)
        return scores, ids

    def _query_bounds(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(E, 2F) per query in float64 (see the class docstring) and the bf16 rows q'."""
        rounded = _bf16_flushed(queries)
        operands = (_norms64(rounded) * self._max_residual + _norms64(rounded.float() - queries) * self._max_norm
                    + self._max_half_norm_error)
        magnitude = _norms64(queries) * self._max_norm + (self._max_norm ** 2 if self.metric == "l2" else 0.0)
        slack = 2 * _gamma(self.d + 2, FLOAT32_UNIT) * magnitude * self.FLOAT64_SLACK
        # Offset c: a little below the k-th best float32 score among evenly spaced stored vectors, so
        # that θ lands just above 0 after the first block (any c keeps the bound valid).
        sample = self._offset_sample()
        sample_scores = queries @ self._vectors[sample].T
        if self.metric == "l2":
            sample_scores -= self._half_norms[sample]
        sample_kth = sample_scores.topk(min(k, len(sample)), dim=1).values[:, -1].double()
        offsets = torch.nan_to_num(sample_kth - 4 * (operands + slack), posinf=0.0, neginf=0.0)
        scored = torch.zeros((len(queries), self.scored_columns), dtype=torch.bfloat16, device=self.device)
        scored[:, :self.d] = rounded
        scored[:, self.d] = -offsets.to(torch.bfloat16)
        scored[:, self.d + 1:self.scored_d] = 1.0
        n = self.scored_columns
        scored_norms = _norms64(scored)
        accumulation = _gamma(n, self.accumulation_unit) * scored_norms * self._max_scored_norm
        bound = (operands + accumulation + (2 * n + 1) * 2.0 ** -126) * self.FLOAT64_SLACK
        # a finite bound also needs float32 sums that cannot overflow
        bound[~torch.isfinite(bound) | (scored_norms * self._max_scored_norm > 2.0 ** 100)] = math.inf
        return bound, slack, scored

    def _threshold(self, kth: torch.Tensor, bound: torch.Tensor, slack: torch.Tensor) -> torch.Tensor:
        """θ = U⁻¹(L(t_k) - 2F), rounded down to bf16; +inf where the bound is infinite (no certificate)."""
        w = self.OUTPUT_ROUNDING
        kth = kth.double()
        lower = kth - w * kth.abs() - bound  # L(t_k)
        target = lower - slack - bound  # U(θ) = lower - 2F, solved for θ
        theta = torch.where(target >= 0, target / (1 + w), target / (1 - w))
        # round-to-nearest of θ lowered by more than its own rounding error lands at or below θ
        theta = (theta - theta.abs() * 2.0 ** -7 - 2.0 ** -126).to(torch.bfloat16)
        theta[~torch.isfinite(bound)] = math.inf
        return theta

    def _candidates(self, scored_queries: torch.Tensor, bound: torch.Tensor, slack: torch.Tensor, k: int,
                    buffer: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(bf16 scores as float32, ids) of each query's candidates, -inf padded, and the rows that failed."""
        rows = len(scored_queries)
        capacity = self.candidate_capacity(k)
        kept_scores = torch.full((rows, 0), -math.inf, device=self.device)
        kept_ids = torch.zeros((rows, 0), dtype=torch.int64, device=self.device)
        failed = ~torch.isfinite(bound)
        theta = None
        for x_start in range(0, self.ntotal, self.database_block):
            block = self._scored[x_start:x_start + self.database_block]
            scores = self._aligned_scores(buffer, rows, len(block))
            if theta is None:  # no threshold yet: take the block's best capacity + 1 directly
                self._matmul_into(scored_queries, block, scores)
                new_scores, new_ids = scores.topk(min(capacity + 1, len(block)), dim=1)
                new_scores = new_scores.float()
            else:
                maxima, _ = self._product(scored_queries, block, scores, columns_too=False)
                new_scores, new_ids = self._above_threshold(scores, maxima, theta, failed, capacity, k, bound, slack)
                del maxima  # before the next block's are allocated
            merged_scores, order = torch.cat([kept_scores, new_scores], dim=1).sort(dim=1, descending=True)
            merged_ids = torch.cat([kept_ids, new_ids + x_start], dim=1).gather(1, order)
            if merged_scores.shape[1] < k:  # fewer than k vectors seen: no threshold yet
                kept_scores, kept_ids = merged_scores, merged_ids
                continue
            theta = self._threshold(merged_scores[:, k - 1], bound, slack)
            if merged_scores.shape[1] > capacity:  # a candidate that does not fit: no certificate
                failed |= merged_scores[:, capacity] >= theta.float()
            kept_scores, kept_ids = merged_scores[:, :capacity], merged_ids[:, :capacity]
        kept_scores[kept_scores < theta.float()[:, None]] = -math.inf
        return kept_scores, kept_ids, failed

    def _chunks(self, scores: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
        """(rows, chunks, chunk) view of a block's scores (chunk: CHUNK unless given), without its last partial chunk."""
        chunk = self.CHUNK if chunk is None else chunk
        full = scores.shape[1] // chunk * chunk
        return scores[:, :full].unflatten(1, (full // chunk, chunk))

    def _product(self, left: torch.Tensor, right: torch.Tensor, out: torch.Tensor,
                 columns_too: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """out = bf16(left · rightᵀ). On cuda with Triton, also the CHUNK maxima of out's rows and, columns_too,
        of outᵀ's rows, from one read of out (`chunk_maxima_both_ways`); elsewhere (None, None), and
        `_survivors` takes them itself."""
        self._matmul_into(left, right, out)
        if maxima_kernel_available(self.device):
            return chunk_maxima_both_ways(out, self.CHUNK, columns_too)
        return None, None

    def _matmul_into(self, left: torch.Tensor, right: torch.Tensor, out: torch.Tensor) -> None:
        """out = left · rightᵀ. Where COLUMN_ALIGNMENT > 1 (cuda), the columns past its last multiple are a
        second, thin product: cuBLAS ran a product whose column count was not a multiple of 8 in a
        Turing-era kernel (cutlass_75) at under a quarter of Hopper's speed a column, whatever the
        layout of out's rows (torch profiler, one H100, README)."""
        aligned = out.shape[1] // self.COLUMN_ALIGNMENT[self.device.type] * self.COLUMN_ALIGNMENT[self.device.type]
        if 0 < aligned < out.shape[1]:
            torch.mm(left, right[aligned:].T, out=out[:, aligned:])
            out, right = out[:, :aligned], right[:aligned]
        torch.mm(left, right.T, out=out)

    def _above_threshold(self, scores: torch.Tensor, maxima: torch.Tensor | None, theta: torch.Tensor,
                         failed: torch.Tensor, capacity: int, k: int, bound: torch.Tensor, slack: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores >= θ of each row of one block (float32, -inf padded) and their columns (`_select`)."""
        rows = scores.shape[0]
        found_rows, found_columns, found_values = self._select(scores, maxima, theta, failed, capacity, k, bound, slack)
        counts = torch.bincount(found_rows, minlength=rows)
        positions = torch.arange(len(found_rows), device=self.device) - (counts.cumsum(0) - counts)[found_rows]
        width = int(counts.max()) if len(found_rows) else 0
        new_scores = torch.full((rows, width), -math.inf, device=self.device)
        new_ids = torch.zeros((rows, width), dtype=torch.int64, device=self.device)
        new_scores[found_rows, positions] = found_values.float()
        new_ids[found_rows, positions] = found_columns
        return new_scores, new_ids

    def _survivors(self, scores: torch.Tensor, maxima: torch.Tensor | None, theta: torch.Tensor,
                   failed: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, columns, bf16 values) of the scores >= θ of their row in one block, sorted by row, then
        column; `failed` (one entry a row) is updated. `maxima`: the max of each full CHUNK of a
        row's scores if the product took them (`_product`), else None and they are taken here.

        `scores` is a block or a transposed view of a contiguous one (the all-pairs search reads each
        block both ways). A transposed view takes its maxima down CHUNK rows of the block (a vertical
        max) and gathers the chunks that reach θ slab by slab (CHUNK rows of the block at a time), so
        each slab stays in cache.
        """
        width = scores.shape[1]
        transposed = scores.stride(1) != 1
        chunks = self._chunks(scores)
        full = chunks.shape[1] * self.CHUNK
        if maxima is not None:
            hits = (maxima >= theta[:, None]) & ~failed[:, None]
        else:
            # For θ > 0 a bf16 value reaches θ exactly when its bits, read as int16, reach θ's: the
            # max over int16 bits is several times faster than over bf16. Rows with θ's sign bit
            # set take the bf16 max, and so do rows with θ = +0, as -0 (a -0 score reaches +0 but
            # its bits are negative); rows that failed check nothing.
            theta = torch.where(theta == 0, -0.0, theta)
            theta_bits = theta.view(torch.int16).clone()
            theta_bits[failed] = torch.iinfo(torch.int16).max
            hits = _chunk_maxima(scores.view(torch.int16), self.CHUNK) >= theta_bits[:, None]
            negative = ((theta_bits < 0) & ~failed).nonzero().flatten()
            if len(negative):
                hits[negative] = _chunk_maxima(scores[negative], self.CHUNK) >= theta[negative, None]
        # More than capacity + 1 chunks reaching θ hold more candidates than fit: no certificate.
        # Failing them here also bounds the work and memory of the element-wise pass.
        failed |= hits.sum(dim=1) > capacity + 1
        hits &= ~failed[:, None]
        if transposed:  # chunk by chunk: a chunk of every row is one slab of the block
            hit_chunks, hit_rows = hits.T.nonzero(as_tuple=True)
        else:
            hit_rows, hit_chunks = hits.nonzero(as_tuple=True)
        if full == width and scores.is_contiguous():  # one index_select gathers the chunks that reach θ
            values = chunks.reshape(-1, self.CHUNK).index_select(0, hit_rows * chunks.shape[1] + hit_chunks)
        else:
            values = chunks[hit_rows, hit_chunks]
        reached = values >= theta[hit_rows, None]
        # A row with more than capacity + 1 values reaching θ in one block fails (θ might still
        # rise, so this may fail a row that would fit): it bounds the survivors to capacity + 1 a row.
        survivors = torch.zeros(len(scores), dtype=torch.int64, device=self.device).index_add_(
            0, hit_rows, reached.sum(dim=1))
        failed |= survivors > capacity + 1
        reached &= ~failed[hit_rows, None]
        found, offsets = reached.nonzero(as_tuple=True)
        found_rows = hit_rows[found]
        found_columns = hit_chunks[found] * self.CHUNK + offsets
        found_values = values[found, offsets]
        if full < width:  # the block's last, partial chunk
            tail = scores[:, full:]
            tail_rows, tail_columns = ((tail >= theta[:, None]) & ~failed[:, None]).nonzero(as_tuple=True)
            found_rows = torch.cat([found_rows, tail_rows])
            found_columns = torch.cat([found_columns, tail_columns + full])
            found_values = torch.cat([found_values, tail[tail_rows, tail_columns]])
        if transposed or full < width:  # each row's columns are in order already: a stable sort by row
            order = found_rows.argsort(stable=True)
            found_rows, found_columns, found_values = found_rows[order], found_columns[order], found_values[order]
        return found_rows, found_columns, found_values

    def _rerank(self, queries: torch.Tensor, candidate_scores: torch.Tensor, candidate_ids: torch.Tensor,
                failed: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k float32 scores among each row's candidates (rows that failed are filled later)."""
        valid = torch.isfinite(candidate_scores) & ~failed[:, None]
        # each row's candidates first, so that one batched product per pass scores them all
        order = valid.to(torch.uint8).argsort(dim=1, descending=True, stable=True)
        width = min(max(int(valid.sum(dim=1).max()), k), candidate_scores.shape[1])
        order = order[:, :width]
        ids, valid = candidate_ids.gather(1, order), valid.gather(1, order)
        exact = torch.empty(ids.shape, device=self.device)
        rows_per_pass = max(1, self.RERANK_PAIRS // width)
        for begin in range(0, len(ids), rows_per_pass):
            pass_ids = ids[begin:begin + rows_per_pass]
            vectors = self._vectors.index_select(0, pass_ids.flatten()).view(*pass_ids.shape, self.d)
            scores = torch.linalg.vecdot(vectors, queries[begin:begin + rows_per_pass, None, :])
            if self.metric == "l2":
                scores -= self._half_norms[pass_ids]
            exact[begin:begin + rows_per_pass] = scores
        exact[~valid] = -math.inf
        scores, positions = exact.topk(k, dim=1)
        return scores, ids.gather(1, positions)

    @torch.inference_mode()
    def all_pairs_search(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Return what search(stored vectors, k) returns (float32 distances, int64 ids, (ntotal, k)),
        scoring each pair of stored vectors once: see "All pairs" in the class docstring."""
        if self.ntotal == 0:
            raise ValueError(f"cannot search index {self.spec!r}: no vectors have been added")
        k = check_k(k, self.ntotal)
        with _exact_cuda_matmuls(self.device):
            buffer = self._pair_buffer()
            state = self._scan_pairs(k, buffer)
            self._certified = 0
            all_distances, all_ids = [], []
            for begin in range(0, self.ntotal, self.query_block):
                rows = slice(begin, begin + self.query_block)
                candidate_scores, candidate_ids = self._final_candidates(state, rows, k)
                block_vectors = self._vectors[rows]
                scores, ids = self._rerank_or_fall_back(block_vectors, candidate_scores, candidate_ids,
                                                        state.failed[rows], k, buffer)
                all_distances.append(self._distances(block_vectors, scores))
                all_ids.append(ids)
        distances, ids = torch.cat(all_distances), torch.cat(all_ids)
        synchronize(self.device)
        self.last_certified_fraction = self._certified / self.ntotal
        return distances.cpu().numpy(), ids.cpu().numpy()

    def pair_buffer_bytes(self) -> int:
        """Bytes of the bf16 block buffer all_pairs_search reuses (its float32 fall-back reuses it too)."""
        return 2 * self._pair_buffer_size()

    def _pair_buffer_size(self) -> int:
        side = min(self.pair_block, self.ntotal)
        stride = _round_up(side, self.COLUMN_ALIGNMENT[self.device.type])  # rows laid out as in _scan_pairs
        # even, and room for one float32 row of the fall-back's database block
        return max(_round_up(side * stride, 2), 2 * min(self.database_block, self.ntotal))

    def _pair_buffer(self) -> torch.Tensor:
        return torch.empty(self._pair_buffer_size(), dtype=torch.bfloat16, device=self.device)

    def _aligned_scores(self, buffer: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
        """A rows x columns block of `buffer` whose rows are laid out at a width rounded up to
        COLUMN_ALIGNMENT: on cuda a last, narrower block (or an odd database_block) keeps aligned rows."""
        stride = _round_up(columns, self.COLUMN_ALIGNMENT[self.device.type])
        return buffer[:rows * stride].view(rows, stride)[:, :columns]

    def _scan_pairs(self, k: int, buffer: torch.Tensor) -> _PairState:
        """Score every block pair (I, J), J >= I, once in `buffer`; feed it to rows I and, transposed, to rows J."""
        state = self._pair_state(k)
        side = self.pair_block
        n = self.ntotal
        left, right = self._operand_blocks()
        self._seed_thresholds(state, k, buffer, left, right)
        for i_start in range(0, n, side):
            i_end = min(i_start + side, n)
            left_block = self._pair_operand(left, slice(i_start, i_end), state.offset, "left")
            for j_start in range(i_start, n, side):
                j_end = min(j_start + side, n)
                right_block = self._pair_operand(right, slice(j_start, j_end), state.offset, "right")
                scores = self._aligned_scores(buffer, i_end - i_start, j_end - j_start)
                row_maxima, column_maxima = self._product(left_block, right_block, scores, j_start != i_start)
                self._collect(state, scores, row_maxima, i_start, j_start, k)
                if j_start != i_start:
                    self._collect(state, scores.T, column_maxima, j_start, i_start, k)
                del row_maxima, column_maxima  # before the next block's are allocated
        return state

    def _operand_blocks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The left and right bf16 operand buffers of all pairs' blocks (`_pair_operand` fills them)."""
        left = torch.empty((min(self.pair_block, self.ntotal), self.pair_columns), dtype=torch.bfloat16,
                           device=self.device)
        return left, torch.empty_like(left)

    def _seed_thresholds(self, state: _PairState, k: int, buffer: torch.Tensor, left: torch.Tensor,
                         right: torch.Tensor) -> None:
        """Set each row's first θ from its k-th largest t in a window of stored vectors near it, before the
        scan (see "All pairs" in the class docstring): rows sorted by `_seed_order`, cut into windows of
        at most seed_window(), each window's pairs scored as a block. A window of fewer than k rows
        leaves its rows' θ at -inf, to be set by their first block, and so does seed_window() < k or
        a single block of rows (its first θ comes from every column already)."""
        if not self.runs_seed_pass(k):
            return
        window = self.seed_window()
        for rows in self._seed_order().tensor_split(-(-self.ntotal // window)):
            if len(rows) < k:
                continue
            scores = self._aligned_scores(buffer, len(rows), len(rows))
            self._matmul_into(self._pair_operand(left, rows, state.offset, "left"),
                              self._pair_operand(right, rows, state.offset, "right"), scores)
            chunk = self.seed_chunk(len(rows), k)
            kth = self._kth_in_top_chunks(scores, _chunk_maxima(scores, chunk), k, chunk=chunk)
            state.theta[rows] = self._threshold(kth, state.bound[rows], state.slack[rows])

    def runs_seed_pass(self, k: int) -> bool:
        """Whether all_pairs_search(k) runs `_seed_thresholds`: windows of at least k rows, and more than one
        block of rows (one block's first θ comes from every column already)."""
        return self.seed_window() >= k and self.ntotal > self.pair_block

    def seed_window(self) -> int:
        """Rows of `_seed_thresholds`'s windows: SEED_WINDOW_ROWS for the device, at most the pair buffer's side."""
        return min(self.SEED_WINDOW_ROWS[self.device.type], self.pair_block, self.ntotal)

    def seed_chunk(self, columns: int, k: int) -> int:
        """Columns per max for a first θ over `columns` scores: SEED_CHUNK, or fewer so that k chunks fit."""
        return max(1, min(self.SEED_CHUNK, columns // k))

    def _seed_order(self) -> torch.Tensor:
        """Stored ids sorted by their nearest of SEED_CENTROIDS centroids (squared l2 for either metric):
        SEED_STEPS Lloyd steps of k-means over SEED_SAMPLE random stored vectors (their bf16 values),
        started from the first of them, with a fixed seed. A heuristic that brings near neighbours
        together; nothing exact rests on it."""
        generator = torch.Generator(device=self.device).manual_seed(0)
        sample = self._scored[torch.randperm(self.ntotal, generator=generator, device=self.device)[:self.SEED_SAMPLE],
                              :self.d].float()
        centroids = sample[:self.SEED_CENTROIDS]
        for _ in range(self.SEED_STEPS):
            nearest = _nearest_centroids(sample, centroids)
            counts = torch.bincount(nearest, minlength=len(centroids))
            sums = torch.zeros_like(centroids).index_add_(0, nearest, sample)
            centroids = sums[counts > 0] / counts[counts > 0, None]
        del sample, sums
        nearest = torch.cat([_nearest_centroids(self._scored[begin:begin + self.query_block, :self.d].float(), centroids)
                             for begin in range(0, self.ntotal, self.query_block)])
        return nearest.argsort(stable=True)

    @property
    def pair_d(self) -> int:
        """Terms of an all-pairs score: x' plus the two ones that pair with a row's own half norm (l2)."""
        return self.scored_d + (2 if self.metric == "l2" else 0)

    @property
    def pair_columns(self) -> int:
        """Columns of the all-pairs operands: pair_d and the zeros of COLUMN_ALIGNMENT."""
        return _round_up(self.pair_d, self.COLUMN_ALIGNMENT[self.device.type])

    def _pair_operand(self, out: torch.Tensor, rows: slice | torch.Tensor, offset: float, side: str) -> torch.Tensor:
        """Stored rows (a slice, or ids) as left [bf16(x), -c0, 1, 1, -h1, -h2] or right [bf16(x), 1, -h1, -h2, 1, 1]
        operands (ip: [bf16(x), -c0] and [bf16(x), 1]), so that left_i·right_j = bf16(x_i)·bf16(x_j) - c0 (- h_i - h_j);
        zeros pad both to pair_columns."""
        d = self.d
        scored = self._scored[rows]
        if self.metric == "ip" and side == "right":
            return scored  # x' is [bf16(x), 1] and its zeros: pair_columns == scored_columns
        block = out[:len(scored)]
        block[:, self.pair_d:] = 0.0
        if side == "right":
            block[:, :self.scored_d] = scored[:, :self.scored_d]
            block[:, self.scored_d:self.pair_d] = 1.0
            return block
        block[:, :d] = scored[:, :d]
        block[:, d] = -offset
        if self.metric == "l2":
            block[:, d + 1:d + 3] = 1.0
            block[:, d + 3:self.pair_d] = scored[:, d + 1:self.scored_d]
        return block

    def _pair_state(self, k: int) -> _PairState:
        """The running candidates of every stored row, with each row's error bounds and the offset c0."""
        n, d = self.ntotal, self.d
        rounded_norms, residual_norms, vector_norms, half_sums = [], [], [], []
        for begin in range(0, n, self.query_block):
            vectors = self._vectors[begin:begin + self.query_block]
            rounded = self._scored[begin:begin + self.query_block, :d]
            rounded_norms.append(_norms64(rounded))
            residual_norms.append(_norms64(rounded.float() - vectors))
            vector_norms.append(_norms64(vectors))
            if self.metric == "l2":  # |h1| + |h2|
                half_sums.append(self._scored[begin:begin + self.query_block, d + 1:self.scored_d].double().abs().sum(dim=1))
        rounded_norms, residual_norms = torch.cat(rounded_norms), torch.cat(residual_norms)
        operands = rounded_norms * self._max_residual + residual_norms * self._max_norm + 2 * self._max_half_norm_error
        magnitude = torch.cat(vector_norms) * self._max_norm + (self._max_norm ** 2 if self.metric == "l2" else 0.0)
        slack = 2 * _gamma(d + 2, FLOAT32_UNIT) * magnitude * self.FLOAT64_SLACK
        offset = self._pair_offset(k, operands + slack)
        # sum of |left_i,m right_j,m| <= |bf16(x_i)| |bf16(x_j)| + |c0| (+ |h1_i| + |h2_i| + |h1_j| + |h2_j|)
        sums = rounded_norms * float(rounded_norms.max()) + abs(offset)
        if self.metric == "l2":
            half_sums = torch.cat(half_sums)
            sums += half_sums + float(half_sums.max())
        terms = self.pair_columns
        bound = (operands + _gamma(terms, self.accumulation_unit) * sums + (2 * terms + 1) * 2.0 ** -126) * self.FLOAT64_SLACK
        # a finite bound also needs float32 sums that cannot overflow
        bound[~torch.isfinite(bound) | (sums > 2.0 ** 100)] = math.inf
        capacity = self.candidate_capacity(k)
        return _PairState(
            offset=offset, bound=bound, slack=slack, failed=~torch.isfinite(bound),
            theta=torch.full((n,), -math.inf, dtype=torch.bfloat16, device=self.device),
            counts=torch.zeros(n, dtype=torch.int64, device=self.device),
            scores=torch.full((n, capacity), -math.inf, device=self.device),
            ids=torch.zeros((n, capacity), dtype=torch.int64, device=self.device))

    def _offset_sample(self) -> torch.Tensor:
        """Ids of OFFSET_SAMPLE evenly spaced stored vectors (all of them if fewer), which the offsets are
        taken from: not the first ones, which in class order (an ImageFolder's) are one class, whose
        scores sit far below most queries' neighbours, so that c, and every t near the k-th, was large."""
        n = self.ntotal
        return torch.linspace(0, n - 1, min(n, self.OFFSET_SAMPLE), device=self.device).long().unique()

    def _pair_offset(self, k: int, margins: torch.Tensor) -> float:
        """c0: a bf16 value a little below the lowest k-th best float32 score of the `_offset_sample` rows
        among themselves, so that most rows' θ is >= 0 (the int16 fast path)."""
        sample = self._offset_sample()
        vectors = self._vectors[sample]
        scores = vectors @ vectors.T
        if self.metric == "l2":
            scores -= self._half_norms[sample, None] + self._half_norms[None, sample]
        kth = scores.topk(min(k, len(sample)), dim=1).values[:, -1].double()
        offset = float(torch.nan_to_num(kth - 4 * margins[sample], posinf=0.0, neginf=0.0).min())
        return float(torch.tensor(offset).to(torch.bfloat16))

    def _collect(self, state: _PairState, scores: torch.Tensor, maxima: torch.Tensor | None, first_row: int,
                 first_column: int, k: int) -> None:
        """Add the scores >= θ of rows first_row.. (one block, possibly a transposed view; its chunk maxima
        or None) to their candidates."""
        rows = slice(first_row, first_row + scores.shape[0])
        theta, failed = state.theta[rows], state.failed[rows]
        unset = theta == -math.inf  # no threshold yet: this is the rows' first block
        if bool(unset.any()):
            if scores.shape[1] >= k:
                if maxima is not None and maxima.shape[1] >= k:  # the product took the CHUNK maxima
                    kth = self._kth_in_top_chunks(scores, maxima, k)
                else:  # k chunks whose max reaches m hold k vectors with t >= m: the k-th largest chunk max
                    seed_maxima = _chunk_maxima(scores, self.seed_chunk(scores.shape[1], k))
                    kth = seed_maxima.topk(k, dim=1).values[:, -1]
                seeded = self._threshold(kth, state.bound[rows], state.slack[rows])
                theta[unset] = seeded[unset]
            else:  # too few columns for k chunks: take the block's best capacity + 1 (as a first block)
                best_scores, best_columns = scores.topk(min(state.ids.shape[1] + 1, scores.shape[1]), dim=1)
                found_rows = torch.arange(scores.shape[0], device=self.device).repeat_interleave(best_scores.shape[1])
                keep = ~failed[found_rows]
                self._append(state, first_row, scores.shape[0], found_rows[keep], best_columns.flatten()[keep] + first_column,
                             best_scores.flatten()[keep], k)
                return
        found_rows, found_columns, found_values = self._select(scores, maxima, theta, failed, state.ids.shape[1], k,
                                                               state.bound[rows], state.slack[rows])
        self._append(state, first_row, scores.shape[0], found_rows, found_columns + first_column, found_values, k)

    def _select(self, scores: torch.Tensor, maxima: torch.Tensor | None, theta: torch.Tensor, failed: torch.Tensor,
                capacity: int, k: int, bound: torch.Tensor, slack: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`_survivors` of one block, but a row that more than capacity + 1 of the block's t reach first has
        its θ (updated in place) raised to the one from the block's k-th largest t, and is selected again.

        Such a row's θ came from blocks far below this one: stored in class order (an ImageFolder's),
        a query's or row's class sits in one or two blocks it meets late, and without this the
        row failed and was searched in float32 (all pairs at ImageNet's shape: 95% of the rows)."""
        failed_before = failed.clone()
        found = self._survivors(scores, maxima, theta, failed, capacity)
        crowded = (failed & ~failed_before).nonzero().flatten()
        if len(crowded) and scores.shape[1] >= k:  # k distinct vectors of this block reach its k-th t
            raised = self._threshold(self._block_kth(scores, maxima, k, crowded), bound[crowded], slack[crowded])
            rising = raised > theta[crowded]  # the others would crowd again: they stay failed
            crowded, raised = crowded[rising], raised[rising]
            if len(crowded):
                del found  # before the second selection's are allocated
                theta[crowded] = raised
                failed[crowded] = False
                found = self._survivors(scores, maxima, theta, failed, capacity)
        return found

    def _block_kth(self, scores: torch.Tensor, maxima: torch.Tensor | None, k: int, rows: torch.Tensor) -> torch.Tensor:
        """The k-th largest t of some rows of a block (a transposed view too; at least k columns): from the
        CHUNK maxima where the product took them, else from copies of RESEED_ROWS rows at a time."""
        if maxima is not None and maxima.shape[1] >= k:
            return self._kth_in_top_chunks(scores, maxima, k, rows)
        return torch.cat([scores[group].topk(k, dim=1).values[:, -1] for group in rows.split(self.RESEED_ROWS)])

    def _kth_in_top_chunks(self, scores: torch.Tensor, maxima: torch.Tensor, k: int,
                           rows: torch.Tensor | None = None, chunk: int | None = None) -> torch.Tensor:
        """Each row's (or the given rows') k-th largest t among the full CHUNKs (or chunks of `chunk`
        columns) of a block (a transposed view too), from their maxima.

        A chunk holding one of a row's k largest t has a max at least the k-th largest, and at most k
        chunks hold them, so they are among the k chunks of largest max (whichever way ties fall, the
        k-th largest t of those k chunks is a t of k distinct vectors). Only those k x CHUNK t are
        read, not the whole block again (8-column maxima: on an H100, all pairs at ImageNet's shape
        took 5.17 s with that second pass, and 4.89 s seeded from the k-th largest 64-column max
        instead, medians of 5 rounds; README), and the seed is
        the block's k-th over its full chunks, so class-ordered rows, whose near neighbours share a
        few chunks, still start with a tight θ."""
        top_chunks = (maxima if rows is None else maxima[rows]).topk(k, dim=1).indices
        rows = torch.arange(len(scores), device=scores.device) if rows is None else rows
        return self._chunks(scores, chunk)[rows[:, None], top_chunks].flatten(1).topk(k, dim=1).values[:, -1]

    def _append(self, state: _PairState, first_row: int, n_rows: int, found_rows: torch.Tensor,
                found_ids: torch.Tensor, found_values: torch.Tensor, k: int) -> None:
        """Append new candidates (sorted by row, rows relative to first_row); a row whose buffer would
        overflow is compacted with them instead: θ rises to its candidates' k-th best, those below go."""
        capacity = state.ids.shape[1]
        added = torch.bincount(found_rows, minlength=n_rows)
        counts = state.counts[first_row:first_row + n_rows]
        full = counts + added > min(capacity, k + self.REFRESH)
        if bool(full.any()):
            in_full = full[found_rows]
            self._compact(state, first_row, full.nonzero().flatten(), found_rows[in_full], found_ids[in_full],
                          found_values[in_full], k)
            found_rows, found_ids, found_values = found_rows[~in_full], found_ids[~in_full], found_values[~in_full]
            added[full] = 0
        positions = (counts[found_rows] + torch.arange(len(found_rows), device=self.device)
                     - (added.cumsum(0) - added)[found_rows])
        state.scores[first_row + found_rows, positions] = found_values.float()
        state.ids[first_row + found_rows, positions] = found_ids
        counts += added

    def _compact(self, state: _PairState, first_row: int, full_rows: torch.Tensor, new_rows: torch.Tensor,
                 new_ids: torch.Tensor, new_values: torch.Tensor, k: int) -> None:
        """Merge rows' candidates with new ones (sorted by row), raise θ, keep those >= θ; fail rows they overflow."""
        capacity = state.ids.shape[1]
        rows = first_row + full_rows
        which = torch.searchsorted(full_rows, new_rows)
        added = torch.bincount(which, minlength=len(full_rows))
        slots = torch.arange(len(new_rows), device=self.device) - (added.cumsum(0) - added)[which]
        width = int(added.max()) if len(new_rows) else 0
        padded_scores = torch.full((len(rows), width), -math.inf, device=self.device)
        padded_ids = torch.zeros((len(rows), width), dtype=torch.int64, device=self.device)
        padded_scores[which, slots] = new_values.float()
        padded_ids[which, slots] = new_ids
        held = int(state.counts[rows].max())
        merged_scores, order = torch.cat([state.scores[rows, :held], padded_scores], dim=1).sort(dim=1, descending=True)
        merged_ids = torch.cat([state.ids[rows, :held], padded_ids], dim=1).gather(1, order)
        theta = torch.maximum(state.theta[rows],
                              self._threshold(merged_scores[:, k - 1], state.bound[rows], state.slack[rows]))
        reaching = (merged_scores >= theta.float()[:, None]).sum(dim=1)
        state.failed[rows] |= reaching > capacity
        kept = merged_scores[:, :capacity]
        kept[kept < theta.float()[:, None]] = -math.inf
        state.scores[rows, :kept.shape[1]], state.ids[rows, :kept.shape[1]] = kept, merged_ids[:, :capacity]
        state.counts[rows] = reaching.clamp(max=capacity)
        state.theta[rows] = theta

    def _final_candidates(self, state: _PairState, rows: slice, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows' candidates at or above the θ of their k-th best (-inf elsewhere), for the re-rank."""
        scores, ids = state.scores[rows].clone(), state.ids[rows]
        kth = scores.topk(k, dim=1).values[:, -1]
        theta = torch.maximum(state.theta[rows], self._threshold(kth, state.bound[rows], state.slack[rows]))
        scores[scores < theta.float()[:, None]] = -math.inf
        return scores, ids

def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _chunk_maxima(scores: torch.Tensor, chunk: int) -> torch.Tensor:
    """(rows, width // chunk) max of each `chunk` columns of scores (the last partial chunk left out).

    A transposed view of a contiguous block takes the max down `chunk` rows of the block: a
    vertical max over contiguous rows, far faster than a max over strided columns.
    """
    chunks = scores.shape[1] // chunk
    if scores.stride(1) != 1:
        return scores.T[:chunks * chunk].unflatten(0, (chunks, chunk)).amax(dim=1).T
    return scores[:, :chunks * chunk].unflatten(1, (chunks, chunk)).amax(dim=2)


def _nearest_centroids(points: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of each point's nearest centroid in squared l2 (argmax of p·c - |c|²/2)."""
    return (points @ centroids.T - 0.5 * (centroids * centroids).sum(dim=1)).argmax(dim=1)


def _bf16_flushed(values: torch.Tensor) -> torch.Tensor:
    """values rounded to bf16 (nearest), with results below the smallest normal (2^-126) set to 0."""
    rounded = values.to(torch.bfloat16)
    return rounded.masked_fill_(rounded.abs() < 2.0 ** -126, 0.0)


def _norms64(rows: torch.Tensor, rows_per_pass: int = 1024) -> torch.Tensor:
    """Euclidean norms of the rows in float64 (squares of float32 or bf16 values are exact there), in passes."""
    return torch.cat([torch.linalg.vector_norm(rows[begin:begin + rows_per_pass].double(), dim=1)
                      for begin in range(0, len(rows), rows_per_pass)])


def _gamma(n: int, unit: float) -> float:
    """Higham's γn: the relative error bound of n roundings of unit roundoff `unit`."""
    return n * unit / (1 - n * unit)


@contextmanager
def _exact_cuda_matmuls(device: torch.device) -> Iterator[None]:
    """On cuda, compute float32 products in float32 (no TF32, whatever the caller set) and forbid
    cuBLAS's reduced-precision (bf16) split-K reductions while the search runs; restore both after."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    # fp32_precision is read and written through the same (torch >= 2.9) API: mixing it with the
    # legacy allow_tf32 makes torch refuse later reads of either
    float32_precision, bf16_reduction = matmul.fp32_precision, matmul.allow_bf16_reduced_precision_reduction
    matmul.fp32_precision, matmul.allow_bf16_reduced_precision_reduction = "ieee", False
    try:
        yield
    finally:
        matmul.fp32_precision, matmul.allow_bf16_reduced_precision_reduction = float32_precision, bf16_reduction


def create_index(spec: str, d: int, metric: str = "l2", device: str = "cpu", sharded: bool = False) -> Index:
    """Return an empty index: `spec` is a FAISS factory string, "TorchFlat" or "TorchFlat.bf16"; device cpu/cuda[:N]/auto."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec={spec!r}: expected a FAISS index-factory string or {TORCH_SPEC!r}")
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d={d!r}: expected a positive integer dimension")
    check_choice(metric, "metric", METRICS)
    torch_device = resolve_device(device)
    if spec in (TORCH_SPEC, BF16_SPEC):
        if sharded:
            raise ValueError(f"sharded=True is for FAISS GPU indexes, not {spec!r}")
        torch_index = TorchFlatIndex if spec == TORCH_SPEC else TorchFlatBf16Index
        return torch_index(int(d), metric, torch_device)
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
