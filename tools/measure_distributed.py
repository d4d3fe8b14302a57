"""Measure sharded search through Ray against in-process FAISS Flat, interleaved, with the spread.

Every round times each configuration in turn (median of `--repeats` searches each): in-process
Flat with 1 and with 2 threads, Ray with 1 shard of 1 thread and with 2 shards of 1 thread each.
Ratios are paired within a round (the same minute of machine load), then summarised over rounds
by their median and range: on a shared machine a round's load is not the next round's.

    python tools/measure_distributed.py --rounds 10     # N=100k, d=384, nq=1000, k=10 (the README table)
"""

from __future__ import annotations

import argparse
import statistics
import time

import faiss
import numpy as np

from embedsearch.data import clustered_embeddings
from embedsearch.distributed import build_sharded_index, connect
from embedsearch.index import build_index
from embedsearch.metrics import recall_at_k


def median_seconds(search, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        search()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--nq", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="searches per configuration per round (median)")
    parser.add_argument("--address", help="Ray cluster to join (default: a local cluster)")
    args = parser.parse_args()

    split = clustered_embeddings(args.n, args.nq, args.d, 200, seed=0)
    database, queries = split.train_vectors, split.val_vectors
    if args.address is None:
        import ray

        # 4 logical CPUs: both sharded indexes (3 actors) stay alive; only one configuration runs at a time
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    connect(args.address)
    in_process = build_index("Flat", database, "ip")
    sharded = {shards: build_sharded_index("Flat", database, "ip", shards=shards, threads=1) for shards in (1, 2)}
    exact_ids = in_process.search(queries, args.k)[1]
    for shards, index in sharded.items():
        index.search(queries, args.k)  # warm-up
        print(f"Ray {shards} shard(s): recall@{args.k} against in-process Flat "
              f"{recall_at_k(index.search(queries, args.k)[1], exact_ids):.4f}")

    def in_process_search(threads: int):
        def search():
            faiss.omp_set_num_threads(threads)
            in_process.search(queries, args.k)
        return search

    configurations = {
        "in-process Flat, 1 thread": in_process_search(1),
        "in-process Flat, 2 threads": in_process_search(2),
        "Ray, 1 shard x 1 thread": lambda: sharded[1].search(queries, args.k),
        "Ray, 2 shards x 1 thread": lambda: sharded[2].search(queries, args.k),
    }
    seconds = {name: [] for name in configurations}
    for round_number in range(args.rounds):
        for name, search in configurations.items():
            seconds[name].append(median_seconds(search, args.repeats))
        print(f"round {round_number + 1}: " + ", ".join(f"{name} {s[-1] * 1e3:.1f} ms" for name, s in seconds.items()),
              flush=True)

    queries_per_s = {name: [args.nq / s for s in values] for name, values in seconds.items()}
    in1, in2 = queries_per_s["in-process Flat, 1 thread"], queries_per_s["in-process Flat, 2 threads"]
    ray1, ray2 = queries_per_s["Ray, 1 shard x 1 thread"], queries_per_s["Ray, 2 shards x 1 thread"]
    print(f"\nN={args.n}, d={args.d}, nq={args.nq}, k={args.k}, {args.rounds} rounds x median of {args.repeats}; "
          "median (min-max over rounds)")
    for name, values in queries_per_s.items():
        print(f"  {name:28s} queries/s {summary(values)}")
    ratios = {
        "Ray 2 shards / in-process 2 threads": [a / b for a, b in zip(ray2, in2)],
        "Ray 1 shard / in-process 1 thread": [a / b for a, b in zip(ray1, in1)],
        "Ray strong-scaling efficiency, 2 shards / (2 x 1 shard)": [a / (2 * b) for a, b in zip(ray2, ray1)],
        "in-process efficiency, 2 threads / (2 x 1 thread)": [a / (2 * b) for a, b in zip(in2, in1)],
    }
    for name, values in ratios.items():
        print(f"  {name:56s} {summary(values)}")
    overhead_ms = [(1 / a - 1 / b) * args.nq * 1e3 for a, b in zip(ray1, in1)]
    print(f"  {'Ray 1 shard time - in-process 1 thread time, ms':56s} {summary(overhead_ms)}")


if __name__ == "__main__":
    main()
