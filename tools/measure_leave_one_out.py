"""Leave-one-out kNN search at the Tiny ImageNet shape (100k x 384, k=20): Flat vs TorchFlat.bf16, interleaved.

    python tools/measure_leave_one_out.py [--n 100000] [--rounds 2] [--ties] [--pair-block ROWS] [--seed-window ROWS]
                                        [--phases] [--memory] [--class-order]

On the `embedding` synthetic preset (ip, 2 threads), each round times in turn: FAISS Flat's
leave-one-out, TorchFlat.bf16 searching the vectors as queries (`search`, k + 1: the path before
all pairs) and TorchFlat.bf16's leave-one-out (`all_pairs_search`: each block pair scored once).
Prints each time, then the median seconds per backend, their ratios, the certified fractions and
the share of ids equal to Flat's. --ties checks every row where Flat and all pairs differ: are
the differing neighbours' float64 scores tied? --pair-block sets all pairs' block rows (default:
the index's, 4096 on cpu) and --seed-window the rows of its seed pass's windows (0: no seed
pass; default: the index's, 1024 on cpu). --class-order stores the vectors sorted by class, as an
ImageFolder lists them (so as `embedsearch run` embeds them), instead of shuffled. --rounds 0
times nothing: only --phases and --memory run.

--phases then runs all pairs and the search path once more each under cProfile with
time.process_time as its clock (CPU seconds of the process, both threads summed) and prints each
phase's inclusive CPU seconds: the bf16 products (torch.mm), the bounds (_pair_state,
_query_bounds), all pairs' seed pass (_seed_thresholds), the selection (all pairs: _collect, of
which _survivors and _append; search: _candidates, which includes its products), the re-rank
(_final_candidates and _rerank_or_fall_back; search: _rerank_or_fall_back), and for all pairs
the scores its selection passes (_survivors) per row and selection (a row's block, or twice for
a crowded one). --memory runs all pairs once more under memray and prints its peak beside
memory.all_pairs_model_bytes.
"""
import argparse
import cProfile
import pstats
import statistics
import time

import faiss
import numpy as np
import torch

from embedsearch.data import synthetic_embeddings
from embedsearch.index import build_index
from embedsearch.knn import leave_one_out_search
from embedsearch.memory import all_pairs_model_bytes, profile_memory

K = 20
BACKENDS = ("Flat", "TorchFlat.bf16 search", "TorchFlat.bf16 all pairs")
# the functions --phases reports, by path (cProfile's names: a torch built-in, else TorchFlatBf16Index's methods)
PHASES = {
    "all pairs": ("<built-in method torch.mm>", "_pair_state", "_seed_thresholds", "_collect", "_survivors", "_append",
                  "_final_candidates", "_rerank_or_fall_back"),
    "search": ("<built-in method torch.mm>", "_query_bounds", "_candidates", "_rerank_or_fall_back"),
}


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def print_ties(vectors: np.ndarray, flat_ids: np.ndarray, bf16_ids: np.ndarray) -> None:
    """For each row whose ids differ: the same set in another order, or the differing neighbours' float64 scores."""
    rows = np.nonzero((flat_ids != bf16_ids).any(axis=1))[0]
    print(f"rows differing: {len(rows)}, ids differing: {int((flat_ids != bf16_ids).sum())}")
    vectors64 = vectors.astype(np.float64)
    for row in rows:
        scores = {int(i): float(vectors64[i] @ vectors64[row]) for i in np.union1d(flat_ids[row], bf16_ids[row])}
        flat_sorted = np.sort([scores[i] for i in flat_ids[row]])
        bf16_sorted = np.sort([scores[i] for i in bf16_ids[row]])
        only_flat = sorted(set(flat_ids[row]) - set(bf16_ids[row]))
        only_bf16 = sorted(set(bf16_ids[row]) - set(flat_ids[row]))
        what = "same set" if not only_flat else (f"only Flat {[scores[i] for i in only_flat]}, "
                                                 f"only bf16 {[scores[i] for i in only_bf16]}")
        print(f"row {row}: {what}; float64 k-th {flat_sorted[0]:.10f}; sorted float64 scores equal within 1e-6: "
              f"{np.allclose(flat_sorted, bf16_sorted, rtol=0, atol=1e-6)}")


def count_survivors(index) -> tuple[list[int], list[int]]:
    """Record, per `_survivors` call of index (an instance attribute over the method until deleted), the
    scores it passed and the rows of its block."""
    passed, rows = [], []
    method = index._survivors

    def counted(scores, *args):
        found = method(scores, *args)
        passed.append(len(found[0]))
        rows.append(scores.shape[0])
        return found

    index._survivors = counted
    return passed, rows


def print_phases(path: str, search) -> None:
    """Run `search` once under cProfile (process CPU time) and print the total and PHASES[path]'s inclusive seconds."""
    profiler = cProfile.Profile(time.process_time)
    start = time.process_time()
    profiler.runcall(search)
    total = time.process_time() - start
    inclusive = {}
    for (_, _, name), (_, _, _, cumulative, _) in pstats.Stats(profiler).stats.items():
        inclusive[name] = inclusive.get(name, 0.0) + cumulative
    phases = ", ".join(f"{name} {inclusive.get(name, 0.0):.2f}" for name in PHASES[path])
    print(f"  {path}: {total:.2f} CPU s; {phases}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors (default 100000)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three backends (default 2)")
    parser.add_argument("--ties", action="store_true", help="check the rows where Flat and all pairs differ")
    parser.add_argument("--pair-block", type=int, help="rows of all pairs' square blocks (default: the index's)")
    parser.add_argument("--seed-window", type=int, help="rows of all pairs' seed windows, 0: none (default: the index's)")
    parser.add_argument("--phases", action="store_true", help="CPU seconds per phase of all pairs and search")
    parser.add_argument("--memory", action="store_true", help="all pairs' memray peak against its memory model")
    parser.add_argument("--class-order", action="store_true", help="store the vectors sorted by class")
    args = parser.parse_args()
    if args.pair_block is not None and args.pair_block < 1:
        parser.error(f"--pair-block={args.pair_block}: expected a positive number of rows")
    if args.seed_window is not None and args.seed_window < 0:
        parser.error(f"--seed-window={args.seed_window}: expected 0 (no seed pass) or a positive number of rows")
    if args.rounds < 0 or args.rounds == 0 and (args.ties or not (args.phases or args.memory)):
        parser.error(f"--rounds={args.rounds}: expected a positive number of rounds, or 0 with --phases or --memory "
                     f"and without --ties")
    faiss.omp_set_num_threads(2)
    torch.set_num_threads(2)
    split = synthetic_embeddings("embedding", args.n, 0, 384, 200, seed=0)
    vectors = split.train_vectors
    if args.class_order:
        vectors = vectors[np.argsort(split.train_labels, kind="stable")]
    del split

    def bf16_index():
        index = build_index("TorchFlat.bf16", vectors, metric="ip")
        if args.pair_block is not None:
            index.pair_block = args.pair_block
        if args.seed_window is not None:
            index.SEED_WINDOW_ROWS = {**index.SEED_WINDOW_ROWS, index.device.type: args.seed_window}
        return index

    seconds = {backend: [] for backend in BACKENDS}
    for round_number in range(args.rounds):
        flat_build, flat = timed(lambda: build_index("Flat", vectors, metric="ip"))
        bf16_build, bf16 = timed(bf16_index)
        elapsed, (_, flat_ids) = timed(lambda: leave_one_out_search(flat, vectors, K))
        seconds["Flat"].append(elapsed)
        elapsed, (_, search_ids) = timed(lambda: bf16.search(vectors, K + 1))
        seconds["TorchFlat.bf16 search"].append(elapsed)
        search_certified = bf16.last_certified_fraction
        elapsed, (_, pairs_ids) = timed(lambda: leave_one_out_search(bf16, vectors, K))
        seconds["TorchFlat.bf16 all pairs"].append(elapsed)
        pairs_certified = bf16.last_certified_fraction
        print(f"round {round_number}: build Flat {flat_build:.2f} s, TorchFlat.bf16 {bf16_build:.2f} s; "
              + ", ".join(f"{backend} {seconds[backend][-1]:.2f} s" for backend in BACKENDS), flush=True)
    if args.rounds:
        medians = {backend: statistics.median(times) for backend, times in seconds.items()}
        print(f"\nleave-one-out, n={args.n}, d=384, k={K}, ip, {'class order' if args.class_order else 'shuffled'}, "
              f"2 threads, median of {args.rounds} rounds:")
        for backend in BACKENDS:
            print(f"  {backend}: {medians[backend]:.2f} s")
        print(f"  ratio Flat / TorchFlat.bf16 search: {medians['Flat'] / medians['TorchFlat.bf16 search']:.2f}")
        print(f"  ratio Flat / TorchFlat.bf16 all pairs: {medians['Flat'] / medians['TorchFlat.bf16 all pairs']:.2f}")
        print(f"  ratio search / all pairs: {medians['TorchFlat.bf16 search'] / medians['TorchFlat.bf16 all pairs']:.2f}")
        print(f"  certified fraction (last round): search {search_certified:.6f}, all pairs {pairs_certified:.6f}")
        # the search path's k + 1 results hold the row itself; drop it as leave_one_out_search does
        drop = search_ids == np.arange(len(search_ids))[:, None]
        drop[~drop.any(axis=1), -1] = True
        search_ids = search_ids[~drop].reshape(len(search_ids), K)
        print(f"  ids equal to Flat's: search {(search_ids == flat_ids).mean():.6f}, "
              f"all pairs {(pairs_ids == flat_ids).mean():.6f} of {flat_ids.size}")
        if args.ties:
            print_ties(vectors, flat_ids, pairs_ids)
    else:
        bf16 = bf16_index()
    if args.phases:
        print(f"\nCPU seconds by phase (cProfile, inclusive), k={K + 1}, pair_block={bf16.pair_block}, "
              f"seed window={bf16.seed_window()}:")
        passed, selections = count_survivors(bf16)
        print_phases("all pairs", lambda: bf16.all_pairs_search(K + 1))
        del bf16._survivors
        print(f"  all pairs' selection passed {sum(passed) / sum(selections):.3f} scores a row and selection "
              f"({sum(passed)} in {len(selections)} selections of {sum(selections)} rows; a crowded block is "
              f"selected twice)")
        print_phases("search", lambda: bf16.search(vectors, K + 1))
    if args.memory:
        _, profile = profile_memory(lambda: bf16.all_pairs_search(K + 1) and None)
        model = all_pairs_model_bytes(bf16, K + 1)
        print(f"\nall pairs memory, k={K + 1}: memray peak {profile.peak_bytes / 2**20:.2f} MiB, "
              f"model {model / 2**20:.2f} MiB, peak / model {profile.peak_bytes / model:.3f}")


if __name__ == "__main__":
    main()
