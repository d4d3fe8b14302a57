"""Probe where the A/B gate's process offsets come from (docs/ab-gate.md: "Process offsets, measured").

    python tools/probe_offsets.py cpus [--rounds 10]
    python tools/probe_offsets.py fork [--templates 6] [--passes 5]
    python tools/probe_offsets.py setup [--templates 6] [--passes 5] [--keep | --leak]

`cpus`: first the loop below pinned to CPU 0 (best of 20) with CPU 1 idle, then with a process
spinning on CPU 1: on a machine whose CPUs share nothing the two times agree. Then the speed of
each CPU over time: the loop pinned to CPU 0, then to CPU 1, best of 5 each, once a second, with
both times and their ratio.

`fork`: is a worker's offset drawn when its process starts, or when it sets up? Per template pair,
two processes (A and B) are started and import faiss and torch; for each pass each forks a child
that builds a FAISS Flat index (10000 x 64, inner product) and times 200-query searches, the two
children alternating in blocks of both orders for 20 pairs after one warm-up block. Prints each
pass's mean log-ratio B / A. If the offset were drawn at set-up, passes would scatter around 0 in
every template pair; if it is fixed when the process starts, a template pair's passes share it.

`setup`: as `fork`, but each pass sets up again inside the two started processes themselves (new
data arrays, a new index), with no fork; the previous set-up is freed first, so the new one lands
on the memory it used. With `--keep` the processes set up once and every pass reuses that set-up,
so what scatters between passes is time alone. With `--leak` every earlier set-up stays alive, so
each new one lands on memory never used before. Measured here: with `--keep` and with the default
a template pair's passes share an offset (its mean stays away from 0); with `--leak` they scatter
around 0 as forked children do. The offset is drawn by the memory a set-up lands on.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import signal
import statistics
import time

N, D, NQ, K = 10_000, 64, 200, 10
PAIRS, WARMUP_PAIRS, SEARCHES_PER_TURN = 20, 2, 10


def loop_seconds() -> float:
    started = time.perf_counter()
    total = 0
    for value in range(200_000):
        total += value
    return time.perf_counter() - started


def spin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    while True:
        pass


def probe_cpus(rounds: int) -> None:
    cpus = sorted(os.sched_getaffinity(0))[:2]
    if len(cpus) < 2:
        raise SystemExit(f"cpus: this process may run on {cpus} only; expected at least two CPUs")
    os.sched_setaffinity(0, {cpus[0]})
    alone = min(loop_seconds() for _ in range(20))
    spinner = multiprocessing.get_context("fork").Process(target=spin, args=(cpus[1],), daemon=True)
    spinner.start()
    time.sleep(0.5)
    beside_busy = min(loop_seconds() for _ in range(20))
    spinner.terminate()
    spinner.join()
    print(f"cpu{cpus[0]} with cpu{cpus[1]} idle {alone * 1e3:.2f} ms, with cpu{cpus[1]} busy {beside_busy * 1e3:.2f} ms: "
          f"ratio {beside_busy / alone:.3f}", flush=True)
    for _ in range(rounds):
        seconds = {}
        for cpu in cpus:
            os.sched_setaffinity(0, {cpu})
            seconds[cpu] = min(loop_seconds() for _ in range(5))
        print(f"cpu{cpus[0]} {seconds[cpus[0]] * 1e3:6.2f} ms   cpu{cpus[1]} {seconds[cpus[1]] * 1e3:6.2f} ms   "
              f"ratio {seconds[cpus[1]] / seconds[cpus[0]]:.3f}", flush=True)
        time.sleep(1)


def set_up():
    """A FAISS Flat index over fresh arrays, and fresh queries."""
    import faiss
    import numpy as np

    rng = np.random.default_rng(0)
    index = faiss.IndexFlatIP(D)
    index.add(rng.standard_normal((N, D), dtype=np.float32))
    return index, rng.standard_normal((NQ, D), dtype=np.float32)


def median_search_seconds(index, queries) -> float:
    """The median time of SEARCHES_PER_TURN searches: one turn."""
    times = []
    for _ in range(SEARCHES_PER_TURN):
        started = time.perf_counter()
        index.search(queries, K)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def searcher(connection) -> None:
    """A forked child: set up, then time one turn per request."""
    index, queries = set_up()
    while connection.recv():
        connection.send(median_search_seconds(index, queries))
    os._exit(0)


def in_process(connection, again: str) -> None:
    """A started process that sets up at each pass and times searches on request.

    `again`: "free" (free the previous set-up first), "keep" (set up once only), "leak" (keep every set-up alive)."""
    import torch  # noqa: F401  imported as a pytest worker has it

    index, queries = set_up()
    earlier = []
    while (request := connection.recv()) is not None:
        if request == "pass" and again != "keep":
            if again == "leak":
                earlier.append((index, queries))
            index = queries = None
            index, queries = set_up()
        elif request == "turn":
            connection.send(median_search_seconds(index, queries))


class _Turns:
    """A searcher handle for one_pass: `send(True)` asks for a turn, `recv()` gives its median."""

    def __init__(self, connection):
        self.connection = connection

    def send(self, more: bool) -> None:
        if more:
            self.connection.send("turn")

    def recv(self) -> float:
        return self.connection.recv()


def probe_setup(templates: int, passes: int, again: str) -> None:
    spawn = multiprocessing.get_context("spawn")
    for number in range(templates):
        ends, processes = [], []
        for _ in range(2):
            ours, theirs = spawn.Pipe()
            process = spawn.Process(target=in_process, args=(theirs, again))
            process.start()
            ends.append(ours)
            processes.append(process)
        means = []
        for _ in range(passes):
            for end in ends:
                end.send("pass")
            means.append(one_pass([_Turns(end) for end in ends]))
        for end, process in zip(ends, processes):
            end.send(None)
            process.join()
        report(number, means)


def report(number: int, means: list[tuple[float, float]]) -> None:
    within = math.sqrt(statistics.mean([error ** 2 for _, error in means]))
    print(f"template pair {number + 1}: passes " + " ".join(f"{mean:+.3f}" for mean, _ in means)
          + f"   mean {statistics.mean(mean for mean, _ in means):+.3f}"
          + f"   sd between passes {statistics.stdev(mean for mean, _ in means):.3f}"
          + f"   within a pass {within:.3f} (rms standard error)", flush=True)


def template(connection) -> None:
    """A started process holding faiss and torch, forking one searcher per request."""
    import faiss  # noqa: F401  imported before the fork, as a pytest worker has them
    import torch  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the searchers exit on their own: reap them
    while connection.recv():
        parent_end, child_end = multiprocessing.Pipe()
        if os.fork() == 0:
            searcher(child_end)
        connection.send(parent_end)


def one_pass(children) -> tuple[float, float]:
    """Mean log-ratio B / A over PAIRS pairs in blocks of both orders, after WARMUP_PAIRS; its standard error."""
    log_ratios = []
    for pair in range(WARMUP_PAIRS + PAIRS):
        seconds = {}
        for side in ((0, 1) if pair % 2 == 0 else (1, 0)):
            children[side].send(True)
            seconds[side] = children[side].recv()
        if pair >= WARMUP_PAIRS:
            log_ratios.append(math.log(seconds[1] / seconds[0]))
    for child in children:
        child.send(False)
    return statistics.mean(log_ratios), statistics.stdev(log_ratios) / math.sqrt(len(log_ratios))


def probe_fork(templates: int, passes: int) -> None:
    spawn = multiprocessing.get_context("spawn")
    for number in range(templates):
        ends, processes = [], []
        for _ in range(2):
            ours, theirs = spawn.Pipe()
            process = spawn.Process(target=template, args=(theirs,))
            process.start()
            ends.append(ours)
            processes.append(process)
        means = []
        for _ in range(passes):
            children = []
            for end in ends:
                end.send(True)
                children.append(end.recv())
            means.append(one_pass(children))
        for end, process in zip(ends, processes):
            end.send(False)
            process.join()
        report(number, means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("probe", choices=("cpus", "fork", "setup"))
    parser.add_argument("--rounds", type=int, default=10, help="cpus: rounds, one a second (default 10)")
    parser.add_argument("--templates", type=int, default=6, help="fork, setup: process pairs (default 6)")
    parser.add_argument("--passes", type=int, default=5, help="fork, setup: passes per template pair (default 5)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--keep", action="store_true", help="setup: set up once and reuse it in every pass")
    again.add_argument("--leak", action="store_true", help="setup: keep every earlier set-up alive")
    args = parser.parse_args()
    for name in ("rounds", "templates", "passes"):
        if getattr(args, name) < 2:
            parser.error(f"--{name} {getattr(args, name)}: expected at least 2")
    if args.probe == "cpus":
        probe_cpus(args.rounds)
    elif args.probe == "fork":
        probe_fork(args.templates, args.passes)
    else:
        probe_setup(args.templates, args.passes, "keep" if args.keep else "leak" if args.leak else "free")


if __name__ == "__main__":
    main()
