"""Print the recall-vs-queries/s curves of a saved run, one row per data set, with its LID and relative contrast.

    python -m pytest --benchmark -k "test_search and k10" --perf-data digits-lite0.npz --benchmark-json run.json
    python tools/recall_curves.py run.json

Reads the search benchmarks' `extra_info` (embedsearch.fields): per data set and approximate spec,
each search parameter's recall@k and queries/s, as a Markdown table (README: "Synthetic data
shaped like real embeddings").
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

from embedsearch.fields import DATASET, LID20, LID100, N, D, K, PARAMS, QUERIES_PER_S, RC, RECALL, SPEC
from embedsearch.storage import load_run


def curves(run_path: Path) -> str:
    run = load_run(run_path)
    points: dict[tuple, dict[tuple[str, str], list[tuple[int, str]]]] = defaultdict(lambda: defaultdict(list))
    difficulty = {}
    for bench in run.data["benchmarks"]:
        info = bench.get("extra_info") or {}
        if not bench["name"].startswith("test_search[") or not info.get(PARAMS) or QUERIES_PER_S not in info:
            continue
        data_set = (info[DATASET], info[N], info[D], info[K])
        difficulty[data_set] = (info[LID20], info[LID100], info[RC])
        (param, value), = info[PARAMS].items()
        points[data_set][info[SPEC], param].append((value, f"{value} → {info[RECALL]:.3f} ({info[QUERIES_PER_S]:.0f})"))
    if not points:
        raise SystemExit(f"{run_path}: no approximate test_search benchmark with recall and queries/s in it")
    lines = ["| data set | LID k=20 | LID k=100 | rel. contrast | index: parameter → recall@k (queries/s) |",
             "| --- | --- | --- | --- | --- |"]
    for data_set, specs in sorted(points.items()):
        name, n, d, k = data_set
        cells = []
        for (spec, param), rows in sorted(specs.items()):
            cells.append(f"`{spec}` {param}: " + ", ".join(text for _, text in sorted(rows)))
        lid20, lid100, rc = difficulty[data_set]
        lines.append(f"| {name}, {n} × {d}, k = {k} | {lid20:.1f} | {lid100:.1f} | {rc:.2f} | " + "; ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a pytest-benchmark JSON file of a timed run")
    args = parser.parse_args()
    if not args.run.is_file():
        parser.error(f"{args.run}: no such file")
    print(curves(args.run))


if __name__ == "__main__":
    main()
