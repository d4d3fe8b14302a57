"""Memory figures: memray-tracked peak and leaked bytes of an operation, per-stage peak RSS, GPU peak."""

from __future__ import annotations

import math
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import faiss
import memray
import torch

from .chunk_maxima import maxima_kernel_available

Result = TypeVar("Result")

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def peak_rss_bytes() -> int | None:
    """The process's peak resident set size since the last reset, in bytes (None off Linux)."""
    if not _STATUS.exists():
        return None
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak_rss() -> bool:
    """Reset the peak RSS to the current RSS (Linux: write 5 to /proc/self/clear_refs); False if impossible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


@dataclass
class StageMeasure:
    """Wall seconds and peak memory of one stage; bytes are None where they cannot be measured."""

    seconds: float = 0.0
    peak_rss_bytes: int | None = None
    gpu_peak_bytes: int | None = None


@contextmanager
def measure_stage(device: torch.device) -> Iterator[StageMeasure]:
    """Time the enclosed block and record its peak host RSS and (on cuda) peak GPU allocation."""
    measure = StageMeasure()
    can_reset = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    try:
        yield measure
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            measure.gpu_peak_bytes = int(torch.cuda.max_memory_allocated(device))
        measure.seconds = time.perf_counter() - start
        measure.peak_rss_bytes = peak_rss_bytes() if can_reset else None


@dataclass
class MemoryProfile:
    """What memray saw while an operation ran: bytes at the peak, bytes still held at the end."""

    peak_bytes: int
    leaked_bytes: int
    capture: Path | None  # the memray capture file, when one was kept


def profile_memory(operation: Callable[[], Result], capture: str | Path | None = None) -> tuple[Result, MemoryProfile]:
    """Run `operation` once under memray and return its result and memory profile.

    memray intercepts malloc/free/mmap in every loaded library, so native allocations (FAISS,
    OpenBLAS, torch's cpu allocator) count, not only Python objects. Only memory allocated while
    the operation runs counts; the operation's result, if kept, shows as leaked bytes.
    """
    with tempfile.TemporaryDirectory() as folder:
        path = Path(capture) if capture is not None else Path(folder) / "capture.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # memray refuses to overwrite
        with memray.Tracker(path):
            result = operation()
        reader = memray.FileReader(path)
        leaked = sum(record.size for record in reader.get_leaked_allocation_records(merge_threads=True))
        profile = MemoryProfile(int(reader.metadata.peak_memory), int(leaked), path if capture is not None else None)
        reader.close()
    return result, profile


# Runtime allowance on top of every model below: BLAS/OpenMP per-call scratch and Python objects.
RUNTIME_ALLOWANCE_BYTES = 4 * 2**20


def faiss_blas_block_bytes(nq: int, d: int) -> int:
    """Bytes of the float32 distance block a FAISS BLAS search of nq queries allocates (16 MiB by default).

    FAISS (1.15) searches by BLAS when nq·d >= distance_compute_blas_threshold (else by a SIMD
    loop, with no block), in blocks of distance_compute_blas_query_bs queries x
    distance_compute_blas_database_bs vectors, and allocates the whole block even for fewer.
    """
    if nq * d < faiss.cvar.distance_compute_blas_threshold:
        return 0
    return 4 * faiss.cvar.distance_compute_blas_query_bs * faiss.cvar.distance_compute_blas_database_bs


def exact_search_model_bytes(index, nq: int, k: int) -> int:
    """Bytes an exact search of `index` allocates beyond its inputs (database and queries exist).

    FAISS Flat: results (float32 distances + int64 ids), its BLAS distance block, if any, and
    for k >= distance_compute_min_k_reservoir the per-query reservoirs of (2k + 15) & ~15
    candidates (float32 + int64 each) that replace heaps for large k.
    TorchFlat: results, its score buffer (index.score_buffer_bytes(nq)) and the per-block top-k candidates
    (12 bytes each, held twice while merged). Plus RUNTIME_ALLOWANCE_BYTES.
    """
    from .index import TorchFlatBf16Index, TorchFlatIndex

    results = 12 * nq * k
    if isinstance(index, TorchFlatBf16Index):
        return bf16_search_model_bytes(index, nq, k)
    if isinstance(index, TorchFlatIndex):
        blocks = -(-index.ntotal // index.database_block)
        return results + index.score_buffer_bytes(nq) + 2 * 12 * nq * k * blocks + RUNTIME_ALLOWANCE_BYTES
    if index.spec == "Flat":
        reservoirs = 12 * nq * ((2 * k + 15) & ~15) if k >= faiss.cvar.distance_compute_min_k_reservoir else 0
        return results + reservoirs + faiss_blas_block_bytes(nq, index.d) + RUNTIME_ALLOWANCE_BYTES
    raise ValueError(f"index spec {index.spec!r}: the exact-search model covers 'Flat', 'TorchFlat' and 'TorchFlat.bf16'")


def bf16_search_model_bytes(index, nq: int, k: int) -> int:
    """Bytes a TorchFlat.bf16 search allocates beyond its inputs: a bound, stage by stage.

    With rows x columns the score buffer's shape and capacity = index.candidate_capacity(k):
    results (12·nq·k, twice: per block, then joined); the bf16 score buffer
    (index.score_buffer_bytes(nq), also the float32 fall-back's); the query rows q' and float64
    norm passes (2·rows·(len(q') + d) + 16·1024·d); the candidates, float32 score + int64 id
    each, in four arrays of rows x (2·capacity + 1 + chunk) while merged and sorted; the
    selection of one block (`bf16_selection_bytes`), on cuda with Triton the chunk maxima the
    kernel writes (2·rows·(columns // chunk)) and the re-rank (`bf16_rerank_bytes`).
    Stages that are not alive together are summed, so the bound is loose by design.
    Plus RUNTIME_ALLOWANCE_BYTES.
    """
    rows, columns = index.score_buffer_shape(nq)
    capacity = index.candidate_capacity(k)
    queries = 2 * rows * (index.scored_columns + index.d) + 16 * 1024 * index.d
    candidates = 4 * 12 * rows * (2 * capacity + 1 + index.CHUNK)
    kernel_maxima = 2 * rows * (columns // index.CHUNK) if maxima_kernel_available(index.device) else 0
    return (2 * 12 * nq * k + index.score_buffer_bytes(nq) + queries + candidates
            + bf16_selection_bytes(rows, columns, capacity, index.CHUNK, index.RESEED_ROWS) + kernel_maxima
            + bf16_rerank_bytes(index, rows, k) + RUNTIME_ALLOWANCE_BYTES)


def bf16_selection_bytes(rows: int, columns: int, capacity: int, chunk: int, reseed_rows: int) -> int:
    """Bytes TorchFlatBf16Index._select allocates for one rows x columns bf16 block (or transposed view).

    Per chunk of chunk columns: its int16 max, the bool hit, a copy of the hits and the int64
    copy that summing bools makes (12 bytes). Rows whose θ is negative take the bf16 max over a
    copy of their rows: at most the block again (2·rows·columns) and 3 bytes a chunk. At most
    capacity + 1 chunks a row reach θ (more and the row fails): each costs its gathered bf16
    values, their bool mask and the int64 copy that summing the mask makes (11·chunk bytes) plus
    44 bytes of indices. At most capacity + chunk survivors a row (capacity + 1 from the chunks,
    fewer than chunk from a last partial chunk), 94 bytes each (indices, values, the sort by row),
    plus the last partial chunk's mask (2 bytes a value). Throughout, the failed mask's copy, the
    crowded rows' ids and new θ (11 bytes a row); between two selections, for the crowded rows,
    the larger of their top k chunks' ids, maxima, t and its top-k (k <= capacity:
    rows·capacity·(20 + 2·chunk)) and min(rows, reseed_rows) rows copied with their top-k.
    """
    copied = min(rows, reseed_rows)
    reseed = max(rows * capacity * (20 + 2 * chunk), 2 * copied * columns + 10 * copied * capacity)
    chunks = columns // chunk
    maxima = 12 * rows * chunks + 16 * rows
    negative = 2 * rows * columns + 3 * rows * chunks
    hit_chunks = (11 * chunk + 44) * rows * (capacity + 1)
    survivors = 94 * rows * (capacity + chunk) + 2 * rows * chunk
    return maxima + negative + hit_chunks + max(survivors, reseed) + 11 * rows


def bf16_rerank_bytes(index, rows: int, k: int) -> int:
    """Bytes TorchFlatBf16Index._rerank allocates for a block of rows with k results.

    Each pass gathers pairs = min(rows·capacity, max(RERANK_PAIRS, capacity)) float32 vectors
    and their element-wise products with the queries (linalg.vecdot's mul + sum): 8·pairs·d, plus
    8 bytes a pair (scores, l2 half norms); per candidate 25 bytes (masks, their order, ids and
    float32 scores gathered in that order); per result 20 (top-k scores, ids, their gather).
    """
    capacity = index.candidate_capacity(k)
    pairs = min(rows * capacity, max(index.RERANK_PAIRS, capacity))
    return 8 * pairs * (index.d + 1) + 25 * rows * capacity + 20 * rows * k


def all_pairs_model_bytes(index, k: int) -> int:
    """Bytes index.all_pairs_search(k) (TorchFlat.bf16) allocates beyond the index: a bound, phase by phase.

    With n = index.ntotal, side = min(pair_block, n) rows a block, rows = min(query_block, n)
    a re-rank block and capacity = index.candidate_capacity(k), alive throughout: the pair
    buffer (index.pair_buffer_bytes()) and every row's candidates and bounds,
    n·(12·capacity + 27) bytes (float32 score + int64 id a slot; E, 2F, counts, θ, failed).
    Then the largest of three phases, which are not alive together:
    - bounds: 12 float64 a row while E, 2F and c0 are computed, per pass of rows the float32
      residual and float64 norm passes (8·rows·d + 8·1024·d), and the sampled scores for c0;
    - scan: the two bf16 operand blocks (4·side·pair_columns), beside first the seed pass
      (`seed_pass_bytes`) and then, per block: on cuda with Triton the chunk
      maxima of a block both ways (4·side·(side // chunk)); a row's first θ (bf16 maxima over
      SEED_CHUNK columns, twice if topk copies them, and their top-k; with the kernel's maxima,
      the top k chunks' ids and maxima values, their t and its top-k, side·k·(20 + 2·chunk); or, where
      a block has fewer than k columns, its top capacity + 1, 48 bytes each); then the larger of the
      selection of one side x side block (`bf16_selection_bytes`) and the append that follows:
      its survivors (at most capacity + chunk a row) with their ids and positions (113 bytes
      each) and a compaction of every row of the block (per row the new and held candidates
      padded, merged and sorted: 12·(capacity + chunk) + 12·capacity + 34·(2·capacity + chunk)
      + 64);
    - re-rank and results: the results (12·n·k, twice once joined) beside, per block of rows,
      the candidates' copy, their top-k and θ (5·rows·capacity + 12·rows·k + 64·rows), then the
      larger of the re-rank (`bf16_rerank_bytes`) and the float32 fall-back of failed rows (at
      most what fits the buffer's float32 view: its query rows and the per-database-block
      top-k, twice while merged), plus the block's results and distances (20·rows·k).
    Plus RUNTIME_ALLOWANCE_BYTES.
    """
    n, d, chunk = index.ntotal, index.d, index.CHUNK
    capacity = index.candidate_capacity(k)
    side = min(index.pair_block, n)
    rows = min(index.query_block, n)
    state = n * (12 * capacity + 27)
    sample = index.OFFSET_SAMPLE
    bounds = 96 * n + 8 * rows * d + 8 * 1024 * d + 4 * sample * (d + 2 * sample)
    seed_chunk = index.seed_chunk(side, k)
    seed_maxima = max(side // seed_chunk, 2 * k)  # a narrower last block (< 8k columns) has < 2k
    kernel_seed = side * k * (20 + 2 * chunk)
    seed = max(4 * side * seed_maxima + 10 * side * k, 48 * side * (capacity + 1), kernel_seed) + 64 * side
    survivors = side * (capacity + chunk)
    compaction = side * (12 * (capacity + chunk) + 12 * capacity + 34 * (2 * capacity + chunk) + 64)
    append = 113 * survivors + compaction
    kernel_maxima = 4 * side * (side // chunk) if maxima_kernel_available(index.device) else 0
    scan = (4 * side * index.pair_columns
            + max(seed_pass_bytes(index, k), kernel_maxima + seed
                  + max(bf16_selection_bytes(side, side, capacity, chunk, index.RESEED_ROWS), append)))
    columns = min(index.database_block, n)
    fall_back_rows = min(rows, index.pair_buffer_bytes() // 4 // columns)
    database_blocks = -(-n // columns)
    fall_back = 4 * fall_back_rows * d + 2 * 12 * fall_back_rows * k * database_blocks + 12 * fall_back_rows * k
    per_block = (5 * rows * capacity + 12 * rows * k + 64 * rows
                 + max(bf16_rerank_bytes(index, rows, k), fall_back) + 20 * rows * k)
    finish = max(12 * n * k + per_block, 2 * 12 * n * k)
    return index.pair_buffer_bytes() + state + max(bounds, scan, finish) + RUNTIME_ALLOWANCE_BYTES


def seed_pass_bytes(index, k: int) -> int:
    """Bytes TorchFlat.bf16's seed pass (`_seed_thresholds`) allocates, 0 where it does not run.

    With n = index.ntotal, S = min(SEED_SAMPLE, n) sampled rows, C = min(SEED_CENTROIDS, n)
    centroids, W = seed_window() rows a window and c = seed_chunk(W, k): 32·n for the sample's
    random permutation, the nearest centroid of every row and their argsort, beside the largest of
    a k-means step (the sample gathered in bf16 and in float32, its scores against the centroids
    twice and their argmax, S·(2·scored_columns + 4·d + 8·C + 8); the old and new centroids, their
    sums and squares, 16·C·d + 16·C), the nearest centroids of one block of query_block rows (its
    float32 copy and scores, beside the centroids and their squares, 8·C·d) and one window (its
    rows gathered for both operands, 4·W·scored_columns; the maxima over c columns, 2·W·(W // c);
    the top k chunks and their t, W·k·(20 + 2·c); θ's float64 arithmetic, 72·W). 0 where the pass
    does not run (`runs_seed_pass`).
    """
    n, d = index.ntotal, index.d
    if not index.runs_seed_pass(k):
        return 0
    window = index.seed_window()
    sample, centroids = min(index.SEED_SAMPLE, n), min(index.SEED_CENTROIDS, n)
    rows = min(index.query_block, n)
    chunk = index.seed_chunk(window, k)
    kmeans = sample * (2 * index.scored_columns + 4 * d + 8 * centroids + 8) + 16 * centroids * d + 16 * centroids
    nearest = rows * (4 * d + 8 * centroids + 8) + 8 * centroids * d
    windows = 4 * window * index.scored_columns + 2 * window * (window // chunk) + window * k * (20 + 2 * chunk) + 72 * window
    return 32 * n + max(kmeans, nearest, windows)


KMEANS_MAX_POINTS_PER_CENTROID = 256  # FAISS ClusteringParameters default: k-means subsamples above it
IVF_FLAT_SPEC = re.compile(r"IVF(\d+),Flat")  # an IVF{nlist},Flat factory spec; group 1: nlist


def build_model_bytes(spec: str, stage: str, n: int, d: int, metric: str = "ip") -> int | None:
    """Bytes training ("train") or filling a fresh index ("add") with n vectors allocates, or None.

    Stated for exact indexes and IVF{nlist},Flat on cpu; None for other specs (HNSW, PQ).
    - Flat add: the stored vectors, 4·n·d. TorchFlat add: its copy, 4·n·d, plus for l2 the
      squared vectors (4·n·d) and half norms (4·n). TorchFlat.bf16 add: TorchFlat's, plus its bf16
      copy (2·n·(d + 1), l2: 2·n·(d + 3)) and the per-block conversion passes.
    - IVF train (k-means on s = min(n, 256·nlist) points): the BLAS block of the coarse
      quantizer's search, the centroids twice (k-means' own and the quantizer's), 12·s for the
      assignment (int64 ids + float32 distances), and a 4·s·d subsample copy when s < n.
    - IVF add: 12·n for the coarse assignment plus the larger of the BLAS block (assigning) and
      the inverted lists, which grow by doubling so their capacity stays below 2·(4·d + 8)·n.
    Plus RUNTIME_ALLOWANCE_BYTES.
    """
    if stage not in ("train", "add"):
        raise ValueError(f"stage={stage!r}: expected 'train' or 'add'")
    if spec == "Flat" and stage == "add":
        return 4 * n * d + RUNTIME_ALLOWANCE_BYTES
    if spec == "TorchFlat" and stage == "add":
        return 4 * n * d + (4 * n * d + 4 * n if metric == "l2" else 0) + RUNTIME_ALLOWANCE_BYTES
    if spec == "TorchFlat.bf16" and stage == "add":
        # TorchFlat's add, plus the bf16 copy x' and, per block of 8192 rows, its float32 residual
        # and float64 norm passes (1024 rows at a time)
        scored_d = d + (3 if metric == "l2" else 1)
        torch_flat = build_model_bytes("TorchFlat", "add", n, d, metric)
        return torch_flat + 2 * n * scored_d + 14 * min(n, 8192) * d + 16 * 1024 * scored_d
    match = IVF_FLAT_SPEC.fullmatch(spec)
    if match is None:
        return None
    nlist = int(match.group(1))
    if stage == "train":
        sample = min(n, KMEANS_MAX_POINTS_PER_CENTROID * nlist)
        subsample_copy = 4 * sample * d if sample < n else 0
        return (faiss_blas_block_bytes(sample, d) + 2 * 4 * nlist * d + 12 * sample + subsample_copy
                + RUNTIME_ALLOWANCE_BYTES)
    return 12 * n + max(faiss_blas_block_bytes(n, d), 2 * (4 * d + 8) * n) + RUNTIME_ALLOWANCE_BYTES


def vit_embedding_model_bytes(model, batch_size: int) -> int:
    """Bytes embedding one fp32 batch with a timm VisionTransformer allocates (weights and input exist).

    The peak falls in a block's MLP, where these are alive at once: the channels_last copy of
    the input (3·H·W per image); per token, the stem's output (held by forward_features), the
    block's input (held by nn.Sequential), the residual after attention and its LayerNorm
    output (4 of embed_dim), and the MLP's hidden activations before and after GELU (2 of
    hidden). Float32, plus RUNTIME_ALLOWANCE_BYTES.
    """
    from timm.models.vision_transformer import VisionTransformer

    vit = model.model
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"model {type(vit).__name__}: the embedding memory model covers timm VisionTransformer")
    tokens = vit.patch_embed.num_patches + vit.num_prefix_tokens
    hidden = vit.blocks[0].mlp.fc1.out_features
    per_image = math.prod(model.data_config["input_size"]) + tokens * (4 * vit.embed_dim + 2 * hidden)
    return 4 * batch_size * per_image + RUNTIME_ALLOWANCE_BYTES
