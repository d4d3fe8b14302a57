"""Command-line entry points: thin wrappers over the library functions."""

from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from . import __version__
from .ab import (CONFIRMATIONS, MAX_PAIRS, MIN_EFFECT, MORE_CONFIRMATIONS, PAIRS, markdown_summary, run_ab,
                 wall_time_summary, write_record)
from .compare import format_report
from .gate import MIN_EFFECT as STORED_MIN_EFFECT
from .gate import checkout_root, gate, rerun_suite
from .storage import latest_run, load_runs
from .data import clustered_embeddings
from .embed import PRECISIONS
from .experiment import ENGINES, ExperimentConfig, run_experiment
from .files import check_writable, write_atomically
from .index import build_index
from .knn import class_scores, similarities, topk_accuracy
from .metrics import exact_search_gflops, matmul_gflops, per_second, recall_at_k
from .study import STUDY_FIGURES
from .tables import format_study_comparison, format_table


def demo(args: argparse.Namespace) -> int:
    """Exact search with both backends on synthetic data, next to the NumPy matmul GFLOP/s."""
    if args.repeats < 1:
        raise ValueError(f"--repeats={args.repeats}: expected at least 1 timed repeat")
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    split = clustered_embeddings(args.n, args.nq, args.d, args.classes, seed=0)
    print(f"data: {args.n} x {args.d} train, {args.nq} queries, {args.classes} classes; "
          f"threads={args.threads}")
    calibration = matmul_gflops()
    print(f"numpy float32 matmul: {calibration:8.1f} GFLOP/s")
    reference_ids = None
    for spec in ("Flat", "TorchFlat"):
        index = build_index(spec, split.train_vectors, metric="ip")
        index.search(split.val_vectors[:64], args.k)  # warm-up
        best = np.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            distances, ids = index.search(split.val_vectors, args.k)
            best = min(best, time.perf_counter() - start)
        reference_ids = ids if reference_ids is None else reference_ids
        gflops = exact_search_gflops(args.n, args.d, args.nq, best)
        scores = class_scores(ids, similarities(distances, "ip"), split.train_labels, args.classes, "weighted")
        top1 = topk_accuracy(scores, split.val_labels)[1]
        print(f"{spec:>9}: {best * 1e3:8.1f} ms  {per_second(args.nq, best):9.0f} queries/s  "
              f"{gflops:8.1f} GFLOP/s ({gflops / calibration:5.1%} of matmul)  "
              f"recall@{args.k} vs Flat {recall_at_k(ids, reference_ids):.4f}  weighted-kNN top-1 {top1:.4f}")
    return 0


def run(args: argparse.Namespace) -> int:
    """The study's pipeline: print its table and k sweep, optionally the JSON record and the study's figures."""
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    config = ExperimentConfig(
        dataset=args.dataset, model=args.model, weights=args.weights, device=args.device, index=args.index,
        ks=tuple(args.k), vote=args.vote, temperature=args.temperature, batch_size=args.batch_size,
        workers=args.workers, precision=args.precision, embeddings=args.embeddings, n_train=args.n_train,
        n_val=args.n_val, d=args.d, classes=args.classes, **_engine_options(args),
        image_size=args.image_size)
    if args.json:  # checked now: the record is written after all the work
        check_writable(args.json, "--json")
    result = run_experiment(config)
    print(format_table(result))
    if args.compare_study:
        print()
        print(format_study_comparison(result, args.compare_study))
    if args.json:
        write_atomically(args.json, lambda stream: stream.write(result.to_json().encode()))
        print(f"\nresult record: {args.json}")
    return 0


def _engine_options(args: argparse.Namespace) -> dict:
    """ExperimentConfig's engine fields; --shards and --ray-address are refused without --engine ray."""
    if args.engine != "ray" and (args.shards is not None or args.ray_address is not None):
        raise ValueError(f"--shards / --ray-address need --engine ray, got --engine {args.engine}")
    options = {"engine": args.engine, "ray_address": args.ray_address}
    return options if args.shards is None else {**options, "shards": args.shards}


def gate_command(args: argparse.Namespace) -> int:
    """Gate a saved run against a stored baseline: exit 1 on a regression, 0 otherwise."""
    if not 0 <= args.min_effect < 10:
        raise ValueError(f"--min-effect={args.min_effect}: expected a fraction such as 0.15")
    baseline, current = latest_run(args.baseline), latest_run(args.run)
    print(f"baseline: {baseline.label} ({baseline.commit}, {baseline.datetime[:19]})")
    print(f"current:  {current.label} ({current.commit}, {current.datetime[:19]})")
    checkout = None if args.no_rerun else checkout_root(Path.cwd())
    if not args.no_rerun and checkout is None:
        print(f"note: no checkout of the suite (perf/conftest.py) at or above {Path.cwd()}: "
              f"suspects are judged on the stored rounds")
    rerun = None if checkout is None else functools.partial(rerun_suite, checkout=checkout)
    report = gate(baseline, current, args.min_effect, rerun=rerun)
    print(format_report(report, show_all=args.all))
    return 1 if report.regressions else 0


def ab_command(args: argparse.Namespace) -> int:
    """Run BASE and HEAD interleaved in one job; exit 1 on a regression, 0 otherwise."""
    for option in ("markdown", "json"):
        path = getattr(args, option)
        if path is not None and (Path(path).is_dir() or not Path(path).resolve().parent.is_dir()):
            raise ValueError(f"--{option}={path}: expected a file path in an existing folder")
    from pytest_benchmark.utils import get_machine_id

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a killed job ends its workers as Ctrl-C does
    root = Path(args.repo).resolve()
    result = run_ab(root, args.base, args.head, args.pytest_args, args.min_effect, args.pairs, args.max_pairs,
                    storage=root / ".benchmarks" / get_machine_id())
    print(format_report(result.report, show_all=args.all, base_title="base", current_title="head"))
    print(f"wall time {wall_time_summary(result)}")
    summary = markdown_summary(result)
    print()
    print(summary)
    targets = [Path(args.markdown)] if args.markdown else []
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        targets.append(Path(os.environ["GITHUB_STEP_SUMMARY"]))
    for target in targets:
        with open(target, "a", encoding="utf-8") as stream:
            stream.write(summary)
    record = write_record(result, Path(args.json) if args.json else
                          root / ".benchmarks" / "ab" / f"{time.strftime('%Y%m%d_%H%M%S')}_{result.base.commit[:10]}"
                                                        f"_{result.head.commit[:10]}.json")
    print(f"pairs and verdicts: {record}; both sides saved: {', '.join(map(str, result.saved))}")
    return 1 if result.report.regressions else 0


def history_command(args: argparse.Namespace) -> int:
    """Print every saved run's series per benchmark with its change points; write the HTML page and plots."""
    from .report import format_steps, history_steps, history_table, write_report

    runs = load_runs(args.runs)
    if not runs:
        raise ValueError(f"{', '.join(map(str, args.runs))}: no readable saved runs")
    steps = history_steps(runs)
    print(f"{len(runs)} runs, oldest first")
    print(history_table(runs, steps))
    print(format_steps(runs, steps))
    for path in write_report(runs, args.output, steps):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the `embedsearch` argument parser with its subcommands."""
    parser = argparse.ArgumentParser(prog="embedsearch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"embedsearch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="exact search with FAISS Flat and torch on synthetic data")
    demo_parser.add_argument("--n", type=int, default=100_000, help="database vectors (default 100000)")
    demo_parser.add_argument("--d", type=int, default=384, help="dimension (default 384)")
    demo_parser.add_argument("--nq", type=int, default=2000, help="queries (default 2000)")
    demo_parser.add_argument("--k", type=int, default=10, help="neighbours (default 10)")
    demo_parser.add_argument("--classes", type=int, default=200, help="classes (default 200)")
    demo_parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads")
    demo_parser.add_argument("--repeats", type=int, default=5, help="timed repeats, best kept")
    demo_parser.set_defaults(handler=demo)

    defaults = ExperimentConfig()
    run_parser = commands.add_parser(
        "run", help="reproduce the study: embed, build, leave-one-out train search, val search, kNN classify",
        description="With no arguments: digits (1297 train / 500 val) on raw pixels, Flat, k=10,20, weighted vote. "
                    "The study: --dataset TINY_IMAGENET_ROOT --model vit_small_patch16_224.dino --weights pretrained.")
    run_parser.add_argument("--dataset", default=defaults.dataset,
                            help="'digits', 'synthetic', an ImageFolder root with train/ and val/, or a Tiny ImageNet root")
    run_parser.add_argument("--model", default=defaults.model,
                            help="a timm model name, or 'pixels' (raw digits pixels, no network)")
    run_parser.add_argument("--weights", default=defaults.weights,
                            help="'pretrained' (timm hub or cache), 'random', or a local checkpoint file")
    run_parser.add_argument("--device", default=defaults.device, help="cpu, cuda, cuda:N or auto")
    run_parser.add_argument("--index", default=defaults.index, help="FAISS factory string or TorchFlat")
    run_parser.add_argument("--k", type=int, nargs="+", default=list(defaults.ks), help="one or more k")
    run_parser.add_argument("--vote", default=defaults.vote, choices=["majority", "weighted"])
    run_parser.add_argument("--temperature", type=float, default=defaults.temperature, help="weighted vote T")
    run_parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    run_parser.add_argument("--workers", type=int, default=defaults.workers, help="DataLoader workers")
    run_parser.add_argument("--precision", default=defaults.precision, choices=PRECISIONS)
    run_parser.add_argument("--image-size", type=int, default=defaults.image_size,
                            help="square input side in pixels (default: the model's own)")
    run_parser.add_argument("--embeddings", help=".npz file: reused when present (skips embedding), else written")
    run_parser.add_argument("--n-train", type=int, default=defaults.n_train, help="synthetic train size")
    run_parser.add_argument("--n-val", type=int, default=defaults.n_val, help="synthetic val size")
    run_parser.add_argument("--d", type=int, default=defaults.d, help="synthetic dimension")
    run_parser.add_argument("--classes", type=int, default=defaults.classes, help="synthetic classes")
    run_parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="threads")
    run_parser.add_argument("--engine", default=defaults.engine, choices=ENGINES,
                            help="local: one in-process index; ray: the index sharded over Ray actors (the ray extra)")
    run_parser.add_argument("--shards", type=int,
                            help=f"--engine ray: shard actors, one cpu thread or GPU each (default {defaults.shards})")
    run_parser.add_argument("--ray-address",
                            help="--engine ray: 'auto', 'host:port' or 'ray://host:port' of a running cluster "
                                 "(default: start or reuse a local one)")
    run_parser.add_argument("--json", help="write the result record (every parameter, version, figure) here")
    run_parser.add_argument("--compare-study", nargs="?", const="imagenet", choices=sorted(STUDY_FIGURES),
                            help="print the study's published figures next to this run's, with ratios")
    run_parser.set_defaults(handler=run)

    ab_parser = commands.add_parser(
        "ab", help="run two revisions' suites interleaved in one job; exit 1 on a regression",
        usage="embedsearch ab BASE [HEAD] [options] [-- PYTEST_ARGS]",
        description="Each side runs in its own git worktree (HEAD omitted: the working tree as it is) in a "
                    "long-lived pytest worker; the timed rounds alternate between the sides in random order and "
                    "a benchmark whose first-pass ratio passes half the minimum effect either way is timed again by "
                    f"{CONFIRMATIONS} passes of forked workers that set up afresh, {MORE_CONFIRMATIONS} more where those "
                    "leave it undecided, and judged on those (t over the passes, Bonferroni over the two looks, "
                    "each tested both ways, Benjamini-Hochberg at 5% in each): the first pass alone never says slower or faster. Peak memory, "
                    "index bytes, recall, accuracy and scaling exponents use the stored-baseline gate's tolerances. "
                    "PYTEST_ARGS select and size the benchmarks as for pytest --benchmark (-k, --perf-tier, ...). "
                    "Exit 0: no regression; 1: regression; 2: bad input.")
    ab_parser.add_argument("base", help="the base revision (a commit, branch or tag)")
    ab_parser.add_argument("head", nargs="?", default=None,
                           help="the head revision (default: the working tree, uncommitted changes included)")
    ab_parser.add_argument("--min-effect", type=float, default=MIN_EFFECT,
                           help=f"smallest slowdown that counts, as a fraction (default {MIN_EFFECT})")
    ab_parser.add_argument("--pairs", type=int, default=PAIRS, help=f"first-pass pairs at the first look (default {PAIRS})")
    ab_parser.add_argument("--max-pairs", type=int, default=MAX_PAIRS,
                           help=f"first-pass pairs a benchmark leaning slower may get, doubling from --pairs "
                                f"(default {MAX_PAIRS}: none added; the confirmation passes decide)")
    ab_parser.add_argument("--markdown", help="append the pull-request summary to this file "
                                              "(also to $GITHUB_STEP_SUMMARY when set)")
    ab_parser.add_argument("--json", help="write the record of every pair's times here "
                                          "(default .benchmarks/ab/<date>_<base>_<head>.json)")
    ab_parser.add_argument("--repo", default=".", help="the project's git checkout (default: here)")
    ab_parser.add_argument("--all", action="store_true", help="print every comparison, not only changes")
    ab_parser.set_defaults(handler=ab_command)

    gate_parser = commands.add_parser(
        "gate", help="compare a saved run with a stored baseline (same machine); exit 1 on a regression",
        description="Time, only when both runs come from the same machine: bootstrap interval of the ratio of "
                    "medians above 1 and the ratio above 1 + --min-effect, confirmed by one rerun of the suspects "
                    "in this checkout. Across machines time is not comparable (use embedsearch ab). Peak memory, "
                    "index bytes, recall, accuracy and scaling exponents: tight tolerances, on any machine.")
    gate_parser.add_argument("run", nargs="?", default=".benchmarks",
                             help="the run to judge: a saved run file, or the newest in a folder (default .benchmarks)")
    gate_parser.add_argument("--baseline", required=True, help="a saved run file, or the newest in a folder")
    gate_parser.add_argument("--min-effect", type=float, default=STORED_MIN_EFFECT,
                             help=f"smallest slowdown that counts, as a fraction (default {STORED_MIN_EFFECT})")
    gate_parser.add_argument("--no-rerun", action="store_true",
                             help="judge on the stored rounds alone; do not rerun suspect benchmarks")
    gate_parser.add_argument("--all", action="store_true", help="print every comparison, not only changes")
    gate_parser.set_defaults(handler=gate_command)

    history_parser = commands.add_parser(
        "history", help="every saved run: series and change points per benchmark, an interactive HTML page, plots")
    history_parser.add_argument("runs", nargs="*", default=[".benchmarks"],
                                help="saved run files or folders (default .benchmarks)")
    history_parser.add_argument("--output", default="results/history",
                                help="folder for report.html, trends-<stage>.png, scaling.png, pareto.png")
    history_parser.set_defaults(handler=history_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = build_parser()
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if pytest_args and args.command != "ab":
        parser.error(f"arguments after '--' are for 'embedsearch ab' only, got {' '.join(pytest_args)!r}")
    args.pytest_args = pytest_args
    try:
        return args.handler(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as error:
        print(f"embedsearch {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
