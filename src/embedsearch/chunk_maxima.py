"""The chunk maxima of a bf16 score block, both ways in one read (a Triton kernel for cuda).

TorchFlat.bf16 discards every chunk of CHUNK scores whose max is below θ. For all pairs it needs
the max of each chunk of a row's columns and, for the transposed use of the same block, of each
chunk of a column's rows. torch's reductions take them in two passes over the block at about a
third of the memory bandwidth of an H100 (README); this kernel reads each tile of chunk rows once
and writes both. The maxima are exact: bf16 values compared in float32.
"""
import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # torch builds without Triton (CPU-only wheels): torch's reductions take the maxima
    triton = None

# Chunks of columns each program reads (times chunk rows), and its warps: on an H100, 1 to 4 chunks
# with 2 or 4 warps ran within 1% of each other; with 8 chunks and 8 warps, product and maxima of a
# block took 25% longer (README).
CHUNKS_PER_PROGRAM = 2
NUM_WARPS = 4


def maxima_kernel_available(device: torch.device) -> bool:
    """Whether `chunk_maxima_both_ways` runs on this device (cuda with Triton)."""
    return triton is not None and device.type == "cuda"


def chunk_maxima_both_ways(scores: torch.Tensor, chunk: int, columns_too: bool
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(row maxima, column maxima) of a bf16 block, each as `_chunk_maxima` gives them (full chunks only).

    Row maxima: (rows, columns // chunk), the max of each chunk of a row's columns. Column maxima
    (when columns_too, else None): (columns, rows // chunk), the max of each chunk of a column's
    rows, a transposed view (what `_chunk_maxima(scores.T, chunk)` returns). `chunk` is a power of 2.
    Equal to `_chunk_maxima` for scores without NaN (Triton's max skips NaN, torch's returns it);
    TorchFlat.bf16's scores are finite.
    """
    if triton is None:
        raise RuntimeError("chunk_maxima_both_ways needs Triton, which this torch build lacks")
    rows, columns = scores.shape
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"chunk {chunk}: expected a power of 2")
    if scores.stride(1) != 1:
        raise ValueError(f"scores with strides {scores.stride()}: expected contiguous rows")
    row_maxima = torch.empty((rows, columns // chunk), dtype=scores.dtype, device=scores.device)
    # without columns_too the kernel never touches column_maxima: row_maxima stands in for the pointer
    column_maxima = (torch.empty((rows // chunk, columns), dtype=scores.dtype, device=scores.device)
                     if columns_too else row_maxima)
    grid = (triton.cdiv(rows, chunk), triton.cdiv(columns, chunk * CHUNKS_PER_PROGRAM))
    _maxima_kernel[grid](scores, row_maxima, column_maxima, rows, columns, scores.stride(0), row_maxima.stride(0),
                         column_maxima.stride(0), CHUNK=chunk, CHUNKS=CHUNKS_PER_PROGRAM,
                         COLUMNS_TOO=columns_too, num_warps=NUM_WARPS)
    return row_maxima, column_maxima.T if columns_too else None


if triton is not None:
    @triton.jit
    def _maxima_kernel(scores, row_maxima, column_maxima, rows, columns, row_stride, row_maxima_stride,
                       column_maxima_stride, CHUNK: tl.constexpr, CHUNKS: tl.constexpr,
                       COLUMNS_TOO: tl.constexpr):
        row_chunk = tl.program_id(0)
        first_column_chunk = tl.program_id(1) * CHUNKS
        row_ids = row_chunk * CHUNK + tl.arange(0, CHUNK)  # (CHUNK,)
        column_chunks = first_column_chunk + tl.arange(0, CHUNKS)  # (CHUNKS,)
        # the tile as (CHUNK rows, CHUNKS chunks, CHUNK columns)
        column_ids = column_chunks[None, :, None] * CHUNK + tl.arange(0, CHUNK)[None, None, :]
        inside = (row_ids[:, None, None] < rows) & (column_ids < columns)
        offsets = row_ids.to(tl.int64)[:, None, None] * row_stride + column_ids  # a 65536² block passes int32
        tile = tl.load(scores + offsets, mask=inside, other=float("-inf")).to(tl.float32)
        row_max = tl.max(tile, axis=2)  # (CHUNK rows, CHUNKS)
        tl.store(row_maxima + row_ids[:, None] * row_maxima_stride + column_chunks[None, :],
                 row_max.to(row_maxima.dtype.element_ty),
                 mask=(row_ids[:, None] < rows) & (column_chunks[None, :] < columns // CHUNK))
        if COLUMNS_TOO:
            column_max = tl.max(tile, axis=0)  # (CHUNKS, CHUNK columns)
            tile_columns = column_chunks[:, None] * CHUNK + tl.arange(0, CHUNK)[None, :]
            tl.store(column_maxima + row_chunk * column_maxima_stride + tile_columns,
                     column_max.to(column_maxima.dtype.element_ty),
                     mask=(row_chunk < rows // CHUNK) & (tile_columns < columns))
