"""All pairs (TorchFlat.bf16's leave-one-out), or its batch search, of several source trees, alternated in
fresh processes.

    python tools/ab_all_pairs.py NAME=SRC[,ATTRIBUTE=VALUE...] ... [--device cuda] [--n 1281167] [--rounds 2]
                                 [--class-order] [--search QUERIES]

Each variant is a folder holding `embedsearch` (a checkout's `src`, or one unpacked by
`git archive REV src`) and integer index attributes to set after the build (e.g.
`pair_block=32768`). The data, the `embedding` preset at ImageNet's shape (n x 384, 1000
classes, ip), is made once and saved, its vectors shuffled or, with --class-order, sorted by
class as an ImageFolder lists them (a row's near neighbours then sit in a few adjacent blocks). Each round runs every variant once, in a new random order, each in its own process:
it loads the data, warms up with all pairs of n/8 rows, builds the index over all n and times
`all_pairs_search(21)` (leave-one-out with k = 20: the row itself comes first). With --search,
it times batch search of QUERIES val vectors of the same preset instead, k = 10: the median of 5
searches after one untimed. Printed per
variant: the times, their median, the median's ratio to the first variant's, the per-round
ratios to the first variant, the certified fraction, peak GPU memory, and the rows whose ids
differ from the first variant's (exact search: only ties broken the other way may differ).
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K_LOO = 20
K_SEARCH = 10
SEARCH_REPEATS = 5


def child(src: str, attributes: str, device: str, data: Path, queries: Path | None, ids_out: Path) -> None:
    import torch

    import embedsearch
    from embedsearch.index import build_index

    if not Path(embedsearch.__file__).resolve().is_relative_to(Path(src).resolve()):
        raise SystemExit(f"embedsearch imported from {embedsearch.__file__}, not from {src}")
    vectors = np.load(data)
    settings = dict(item.split("=") for item in attributes.split(",") if item)

    def index_of(rows: np.ndarray):
        index = build_index("TorchFlat.bf16", rows, "ip", device=device)
        for name, value in settings.items():
            if not hasattr(index, name):
                raise SystemExit(f"index attribute {name!r}: TorchFlat.bf16 from {src} has none")
            setattr(index, name, int(value))
        return index

    def timed(operation):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        _, ids = operation()  # returns numpy arrays: the GPU work has ended
        return time.perf_counter() - start, ids

    if queries is None:
        index_of(vectors[:len(vectors) // 8]).all_pairs_search(K_LOO + 1)  # warm-up: cuBLAS, Triton
        index = index_of(vectors)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds, ids = timed(lambda: index.all_pairs_search(K_LOO + 1))
    else:
        query_vectors = np.load(queries)
        index = index_of(vectors)
        index.search(query_vectors, K_SEARCH)  # warm-up: cuBLAS, Triton
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(SEARCH_REPEATS):
            seconds, ids = timed(lambda: index.search(query_vectors, K_SEARCH))
            times.append(seconds)
        seconds = statistics.median(times)
    np.save(ids_out, ids)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    print(json.dumps({"seconds": seconds, "certified": index.last_certified_fraction, "peak_gib": peak}))


def variant_argument(text: str) -> tuple[str, str, str]:
    name, _, rest = text.partition("=")
    src, _, attributes = rest.partition(",")
    if not name or not (Path(src) / "embedsearch").is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=SRC[,ATTRIBUTE=VALUE...], SRC holding embedsearch/")
    return name, src, attributes


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], sys.argv[4], Path(sys.argv[5]), Path(sys.argv[6]) if sys.argv[6] else None,
              Path(sys.argv[7]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="+", type=variant_argument, help="NAME=SRC[,ATTRIBUTE=VALUE...]")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=1_281_167, help="stored vectors (default: ImageNet's train set)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="random variant order per round")
    parser.add_argument("--class-order", action="store_true", help="store the vectors sorted by class")
    parser.add_argument("--search", type=int, metavar="QUERIES", help="time batch search of QUERIES val vectors")
    args = parser.parse_args()
    if args.search is not None and args.search < 1:
        parser.error(f"--search {args.search}: expected at least 1 query")
    from embedsearch.data import synthetic_embeddings

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "vectors.npy"
        queries = Path(folder) / "queries.npy" if args.search else None
        split = synthetic_embeddings("embedding", args.n, args.search or 1, 384, 1000, seed=0)
        order = np.argsort(split.train_labels, kind="stable") if args.class_order else slice(None)
        np.save(data, split.train_vectors[order])
        if queries:
            np.save(queries, split.val_vectors)
        results = {name: [] for name, _, _ in args.variants}
        for round_number in range(args.rounds):
            for name, src, attributes in rng.sample(args.variants, len(args.variants)):
                environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
                done = subprocess.run([sys.executable, __file__, "--child", src, attributes, args.device, str(data),
                                       str(queries or ""), str(Path(folder) / f"{name}.npy")],
                                      env=environment, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{name}, round {round_number + 1}: exit {done.returncode}\n{done.stderr[-3000:]}")
                results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"round {round_number + 1} {name}: {results[name][-1]['seconds']:.3f} s", flush=True)
        first = args.variants[0][0]
        first_ids = np.load(Path(folder) / f"{first}.npy")
        first_median = statistics.median(r["seconds"] for r in results[first])
        task = (f"batch search of {args.search} queries, median of {SEARCH_REPEATS}, k={K_SEARCH}" if args.search
                else f"all pairs, k={K_LOO} (+ the row)")
        print(f"\n{task}, n={args.n}, d=384, ip, {'class order' if args.class_order else 'shuffled'}, "
              f"{args.device}, {args.rounds} rounds:")
        for name, runs in results.items():
            times = [r["seconds"] for r in runs]
            median = statistics.median(times)
            ratios = [t / f["seconds"] for t, f in zip(times, results[first])]
            differ = int((np.load(Path(folder) / f"{name}.npy") != first_ids).any(axis=1).sum())
            print(f"  {name}: median {median:.3f} s ({', '.join(f'{t:.3f}' for t in times)}), "
                  f"median / {first}'s median {median / first_median:.3f} (per round {', '.join(f'{r:.3f}' for r in ratios)}, "
                  f"median {statistics.median(ratios):.3f}); "
                  f"certified {min(r['certified'] for r in runs):.6f}, peak {max(r['peak_gib'] for r in runs):.2f} GiB; "
                  f"rows whose ids differ from {first}'s (last round): {differ}")


if __name__ == "__main__":
    main()
