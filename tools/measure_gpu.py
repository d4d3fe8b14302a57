"""TorchFlat.bf16 on one GPU: batch search against torch float32 and TF32, and leave-one-out at the ImageNet shape.

    python tools/measure_gpu.py [--device cuda] [--n 1281167] [--queries 10000] [--slice 20000] [--budget 300]
                                [--bf16-blocks Q,D ...] [--pair-blocks ROWS ...] [--profile]
                                [--torch-maxima] [--kernel-configs CHUNKS,WARPS ...]

0. With --torch-maxima or --kernel-configs: one all-pairs block (pair_block² scores of 392-column
   bf16 operands): torch.mm alone, then followed by torch's int16 chunk maxima both ways
   (`_chunk_maxima`, two passes), then by the Triton kernel (`chunk_maxima_both_ways`, one pass)
   with each --kernel-configs CHUNKS_PER_PROGRAM,NUM_WARPS; median of 5 interleaved rounds, and
   whether the kernel's maxima equal torch's.

Data: the `embedding` synthetic preset, d = 384, 1000 classes, ip (the study's ImageNet shape:
1281167 stored vectors). Each step prints as it ends; a step whose predicted time would pass
--budget seconds since the start is skipped, and says so.

1. Batch search of --queries val vectors, k = 10: TorchFlat in float32, the same blocked search
   with TF32 products (`fp32_precision = "tf32"`: what `torch.set_float32_matmul_precision("high")`
   gives; TorchFlat itself refuses it) and TorchFlat.bf16 with each --bf16-blocks query_block,
   database_block (default: the index's), 3 rounds interleaved, median seconds.
   Exactness: rows whose bf16 ids differ from float32's, and of those the ones whose sorted float64
   scores differ by more than 1e-5 (a different set, not a tie broken the other way); TF32's
   recall@10 against float32 and its largest distance error.
2. Leave-one-out, k = 20 (all pairs with k + 1, the row itself included): TorchFlat.bf16's
   `all_pairs_search` at n/8, n/4, n/2 and n, for each --pair-blocks (default: the index's),
   while the time predicted from the last size (times the size ratio squared) fits the budget. Float32, TF32 and bf16 search of the first --slice
   stored vectors as queries over all n, k + 1, scaled by n / slice: what leave-one-out by batch
   search would take. All pairs' first --slice rows are checked against float32's as in 1.
With --torch-maxima, every bf16 step also runs with torch's maxima passes instead of the kernel
(batch search: in the same interleaved rounds; all pairs: after the default's sizes). Peak GPU memory (torch's allocator) is printed per step, and for
all pairs the index's bytes and `all_pairs_model_bytes`. --profile then runs all pairs at n/8
with the first --pair-blocks under torch.profiler and prints the operators that took most CUDA
and most CPU time.
"""
import argparse
import statistics
import time
from contextlib import contextmanager, nullcontext
from unittest import mock

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from embedsearch import chunk_maxima
from embedsearch.data import synthetic_embeddings
from embedsearch.index import TORCH_SPEC, TorchFlatIndex, _chunk_maxima, build_index
from embedsearch.memory import all_pairs_model_bytes

K_SEARCH = 10
K_LOO = 20
ROUNDS = 3
TIE_TOLERANCE = 1e-5  # float64 scores of two id sets closer than this are a tie broken the other way


@contextmanager
def tf32_products():
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        matmul.fp32_precision = saved


@torch.inference_mode()
def tf32_search(index: TorchFlatIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """TorchFlat's blocked search with TF32 products (its own search forbids them)."""
    queries_t = torch.from_numpy(queries).to(index.device)
    buffer = index._score_buffer(len(queries_t))
    scores, ids = [], []
    with tf32_products():
        for start in range(0, len(queries_t), index.query_block):
            block_scores, block_ids = index._search_block(queries_t[start:start + index.query_block], k, buffer)
            scores.append(block_scores)
            ids.append(block_ids)
    return torch.cat(scores).cpu().numpy(), torch.cat(ids).cpu().numpy()


def torch_maxima():
    """TorchFlat.bf16 without the Triton maxima kernel: torch's reductions take the chunk maxima."""
    return mock.patch("embedsearch.index.maxima_kernel_available", return_value=False)


def config_argument(text: str) -> tuple[int, int]:
    chunks, warps = (int(part) for part in text.split(","))
    return chunks, warps


@contextmanager
def kernel_config(config: tuple[int, int]):
    saved = chunk_maxima.CHUNKS_PER_PROGRAM, chunk_maxima.NUM_WARPS
    chunk_maxima.CHUNKS_PER_PROGRAM, chunk_maxima.NUM_WARPS = config
    try:
        yield
    finally:
        chunk_maxima.CHUNKS_PER_PROGRAM, chunk_maxima.NUM_WARPS = saved


def block_maxima(args: argparse.Namespace) -> None:
    side, columns, chunk = 65536, 392, 64
    generator = torch.Generator(args.device).manual_seed(0)
    left = torch.randn((side, columns), device=args.device, generator=generator).bfloat16()
    right = torch.randn((side, columns), device=args.device, generator=generator).bfloat16()
    out = torch.empty((side, side), dtype=torch.bfloat16, device=args.device)

    def with_torch_maxima():
        torch.mm(left, right.T, out=out)
        bits = out.view(torch.int16)
        return _chunk_maxima(bits, chunk), _chunk_maxima(bits.T, chunk)

    backends = {"torch.mm": lambda: torch.mm(left, right.T, out=out), "torch.mm + torch maxima": with_torch_maxima}
    for config in args.kernel_configs or [(chunk_maxima.CHUNKS_PER_PROGRAM, chunk_maxima.NUM_WARPS)]:
        def with_kernel(config=config):
            torch.mm(left, right.T, out=out)
            with kernel_config(config):
                return chunk_maxima.chunk_maxima_both_ways(out, chunk, True)
        backends[f"torch.mm + kernel {config[0]} chunks, {config[1]} warps"] = with_kernel
    for name, run in backends.items():  # warm-up (Triton compiles here)
        run()
    torch.mm(left, right.T, out=out)
    reference = _chunk_maxima(out, chunk), _chunk_maxima(out.T, chunk)
    for config in args.kernel_configs or [(chunk_maxima.CHUNKS_PER_PROGRAM, chunk_maxima.NUM_WARPS)]:
        with kernel_config(config):
            row_maxima, column_maxima = chunk_maxima.chunk_maxima_both_ways(out, chunk, True)
        print(f"  kernel {config}: maxima equal to torch's: "
              f"{torch.equal(row_maxima, reference[0]) and torch.equal(column_maxima, reference[1])}", flush=True)
    seconds = {name: [] for name in backends}
    for _ in range(5):
        for name, run in backends.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)
    print(f"\n0. one all-pairs block {side}² x {columns} columns, bf16, median of 5 interleaved rounds:")
    for name, times in seconds.items():
        print(f"  {name}: {statistics.median(times) * 1e3:.2f} ms", flush=True)
    del left, right, out


def timed(function):
    """(seconds, result); every search returns numpy arrays, so its GPU work has ended."""
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def differing_rows(vectors: torch.Tensor, queries: torch.Tensor, ids: np.ndarray, reference_ids: np.ndarray) -> str:
    """Rows whose ids differ from the reference's, and how many of them hold a different float64 score set."""
    rows = np.nonzero((ids != reference_ids).any(axis=1))[0]
    if len(rows) == 0:
        return "ids equal in every row"
    rows_t = torch.from_numpy(rows).to(vectors.device)
    queries64 = queries[rows_t].double()

    def scores(id_rows: np.ndarray) -> torch.Tensor:
        gathered = vectors[torch.from_numpy(id_rows[rows]).to(vectors.device)].double()
        return torch.einsum("rd,rkd->rk", queries64, gathered).sort(dim=1).values

    different = int(((scores(ids) - scores(reference_ids)).abs().max(dim=1).values > TIE_TOLERANCE).sum())
    return f"{len(rows)} rows differ, {different} of them in their float64 score sets"


def peak_gib() -> str:
    if not torch.cuda.is_available():
        return ""
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return f", peak GPU memory {peak:.2f} GiB"


def with_blocks(index: TorchFlatIndex, blocks: tuple[int, int] | None) -> TorchFlatIndex:
    if blocks is not None:
        index.query_block, index.database_block = blocks
    return index


def batch_search(float32: TorchFlatIndex, bf16: TorchFlatIndex, vectors: torch.Tensor, queries: np.ndarray,
                 args: argparse.Namespace) -> None:
    backends = {"float32": lambda: float32.search(queries, K_SEARCH),
                "TF32": lambda: tf32_search(float32, queries, K_SEARCH)}
    for blocks in args.bf16_blocks:
        name = "bf16" if blocks is None else f"bf16 {blocks[0]}x{blocks[1]}"
        backends[name] = lambda blocks=blocks: with_blocks(bf16, blocks).search(queries, K_SEARCH)
        if args.torch_maxima:
            def search_torch_maxima(blocks=blocks):
                with torch_maxima():
                    return with_blocks(bf16, blocks).search(queries, K_SEARCH)
            backends[f"{name} torch maxima"] = search_torch_maxima
    for search in backends.values():  # warm-up: cuBLAS handles, kernels
        search()
    seconds = {name: [] for name in backends}
    results = {}
    for _ in range(ROUNDS):
        for name, search in backends.items():
            elapsed, results[name] = timed(search)
            seconds[name].append(elapsed)
    medians = {name: statistics.median(times) for name, times in seconds.items()}
    print(f"\n1. batch search, n={float32.ntotal}, nq={len(queries)}, d={float32.d}, k={K_SEARCH}, ip, "
          f"median of {ROUNDS} interleaved rounds{peak_gib()}:")
    for name, median in medians.items():
        print(f"  {name}: {median * 1e3:.1f} ms, {len(queries) / median:,.0f} queries/s, "
              f"speed-up over float32 {medians['float32'] / median:.2f}x (rounds {', '.join(f'{s * 1e3:.1f}' for s in seconds[name])} ms)")
    queries_t = torch.from_numpy(queries).to(vectors.device)
    float32_distances, float32_ids = results["float32"]
    for name in list(backends)[2:]:
        print(f"  {name} exactness: {differing_rows(vectors, queries_t, results[name][1], float32_ids)}; "
              f"largest distance difference {np.abs(results[name][0] - float32_distances).max():.2e}")
    print(f"  certified fraction (last bf16 search): {bf16.last_certified_fraction:.6f}")
    tf32_distances, tf32_ids = results["TF32"]
    recall = np.mean([len(set(a) & set(b)) / K_SEARCH for a, b in zip(tf32_ids.tolist(), float32_ids.tolist())])
    print(f"  TF32 against float32: recall@{K_SEARCH} {recall:.6f}, "
          f"{differing_rows(vectors, queries_t, tf32_ids, float32_ids)}; largest distance difference "
          f"{np.abs(tf32_distances - float32_distances).max():.2e}", flush=True)


def all_pairs(stored: np.ndarray, args: argparse.Namespace, pair_block: int | None, deadline: float,
              kernel: bool) -> np.ndarray | None:
    """Time all pairs at n/8 .. n while the prediction fits; the ids at n, or None if n was skipped."""
    n = len(stored)
    last = None
    for size in (n // 8, n // 4, n // 2, n):
        if last is not None:
            predicted = last[1] * (size / last[0]) ** 2
            if time.perf_counter() + predicted > deadline:
                print(f"  all pairs n={size}: skipped, predicted {predicted:.1f} s passes the budget")
                return None
        index = build_index("TorchFlat.bf16", stored[:size], "ip", device=args.device)
        if pair_block is not None:
            index.pair_block = pair_block
        if last is None:  # warm-up
            index.all_pairs_search(K_LOO + 1)
        elapsed, (_, pair_ids) = timed(lambda: index.all_pairs_search(K_LOO + 1))
        last = (size, elapsed)
        print(f"  all pairs n={size}, pair_block {index.pair_block}{'' if kernel else ', torch maxima'}: {elapsed:.2f} s, certified fraction "
              f"{index.last_certified_fraction:.6f}{peak_gib()} (index {index.nbytes() / 2**30:.2f} GiB + model bound "
              f"{all_pairs_model_bytes(index, K_LOO + 1) / 2**30:.2f} GiB)", flush=True)
        del index
    return pair_ids


def leave_one_out(stored: np.ndarray, args: argparse.Namespace, deadline: float) -> None:
    n = len(stored)
    print(f"\n2. leave-one-out, d={stored.shape[1]}, k={K_LOO} (all pairs with k + 1), ip:", flush=True)
    ids_at_n = {}
    for pair_block in args.pair_blocks:
        for kernel in (True, False) if args.torch_maxima else (True,):
            with nullcontext() if kernel else torch_maxima():
                ids_at_n[pair_block, kernel] = all_pairs(stored, args, pair_block, deadline, kernel)
    slice_queries = stored[:args.slice]
    float32 = build_index(TORCH_SPEC, stored, "ip", device=args.device)
    bf16 = build_index("TorchFlat.bf16", stored, "ip", device=args.device)
    float32_seconds, (_, float32_ids) = timed(lambda: float32.search(slice_queries, K_LOO + 1))
    tf32_seconds, _ = timed(lambda: tf32_search(float32, slice_queries, K_LOO + 1))
    bf16_seconds, _ = timed(lambda: bf16.search(slice_queries, K_LOO + 1))
    scale = n / args.slice
    print(f"  search of {args.slice} stored vectors over n={n}, scaled by {scale:.1f} to all n: float32 "
          f"{float32_seconds * scale:.1f} s, TF32 {tf32_seconds * scale:.1f} s, bf16 {bf16_seconds * scale:.1f} s"
          f"{peak_gib()}")
    vectors = torch.from_numpy(stored).to(args.device)
    for (pair_block, kernel), pair_ids in ids_at_n.items():
        if pair_ids is not None:
            print(f"  all pairs n={n}, pair_block {pair_block or 'default'}{'' if kernel else ', torch maxima'}, exactness of the first {args.slice} "
                  f"rows against float32 search: "
                  f"{differing_rows(vectors, vectors[:args.slice], pair_ids[:args.slice], float32_ids)}", flush=True)
    if args.profile:
        print_profile(stored[:n // 8], args)


def print_profile(stored: np.ndarray, args: argparse.Namespace) -> None:
    index = build_index("TorchFlat.bf16", stored, "ip", device=args.device)
    if args.pair_blocks[0] is not None:
        index.pair_block = args.pair_blocks[0]
    index.all_pairs_search(K_LOO + 1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as profiler:
        index.all_pairs_search(K_LOO + 1)
    averages = profiler.key_averages()
    sort_by = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    print(f"\nprofile, all pairs n={len(stored)}, pair_block {index.pair_block}, by {sort_by}:")
    print(averages.table(sort_by=sort_by, row_limit=18, max_name_column_width=40))
    print("by self_cpu_time_total:")
    print(averages.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40), flush=True)


def blocks_argument(text: str) -> tuple[int, int]:
    query_block, database_block = (int(part) for part in text.split(","))
    return query_block, database_block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=1_281_167, help="stored vectors (default: ImageNet's train set)")
    parser.add_argument("--queries", type=int, default=10_000, help="batch-search queries (default 10000)")
    parser.add_argument("--slice", type=int, default=20_000, help="stored vectors searched as queries (default 20000)")
    parser.add_argument("--budget", type=float, default=300.0, help="seconds from the start (default 300)")
    parser.add_argument("--bf16-blocks", nargs="+", type=blocks_argument, default=[None],
                        help="TorchFlat.bf16 query_block,database_block pairs for the batch search")
    parser.add_argument("--pair-blocks", nargs="+", type=int, default=[None], help="all pairs' block rows")
    parser.add_argument("--profile", action="store_true", help="profile all pairs at n/8")
    parser.add_argument("--torch-maxima", action="store_true",
                        help="also run every bf16 step with torch's maxima instead of the Triton kernel; time one block")
    parser.add_argument("--kernel-configs", nargs="+", type=config_argument,
                        help="maxima kernel configurations CHUNKS_PER_PROGRAM,NUM_WARPS timed on one block")
    args = parser.parse_args()
    if not 0 < args.slice <= args.n // 8:
        parser.error(f"--slice={args.slice}: expected 1 to n/8 = {args.n // 8}")
    start = time.perf_counter()
    deadline = start + args.budget
    if torch.cuda.is_available():
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    if args.torch_maxima or args.kernel_configs:
        block_maxima(args)
    split = synthetic_embeddings("embedding", args.n, args.queries, 384, 1000, seed=0)
    print(f"data: {time.perf_counter() - start:.1f} s", flush=True)
    build_seconds, float32 = timed(lambda: build_index(TORCH_SPEC, split.train_vectors, "ip", device=args.device))
    bf16_build_seconds, bf16 = timed(lambda: build_index("TorchFlat.bf16", split.train_vectors, "ip", device=args.device))
    print(f"build: TorchFlat {build_seconds:.2f} s, TorchFlat.bf16 {bf16_build_seconds:.2f} s, "
          f"nbytes {float32.nbytes() / 1e9:.2f} GB and {bf16.nbytes() / 1e9:.2f} GB", flush=True)
    vectors = torch.from_numpy(split.train_vectors).to(args.device)
    batch_search(float32, bf16, vectors, split.val_vectors, args)
    del float32, bf16, vectors
    leave_one_out(split.train_vectors, args, deadline)
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
