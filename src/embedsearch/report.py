"""History of saved runs: a per-benchmark table with step changes, PNG plots and one self-contained HTML report."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import numpy as np

from .gate import compare_runs
from .storage import Run

EXACT_SPECS = ("Flat", "TorchFlat")


def step_changes(runs: list[Run]) -> dict[tuple[int, str], str]:
    """(run position, benchmark) -> 'slower' or 'faster' where the gate's time test says it stepped from the run before."""
    steps = {}
    for position in range(1, len(runs)):
        for comparison in compare_runs(runs[position - 1], runs[position]).comparisons:
            if comparison.metric == "time" and comparison.verdict in ("slower", "faster"):
                steps[position, comparison.name] = comparison.verdict
    return steps


def history_table(runs: list[Run], steps: dict[tuple[int, str], str]) -> str:
    """Per benchmark, one line per run holding it: commit, date, median, change from the previous, step marks."""
    names = sorted({name for run in runs for name in run.benchmarks})
    lines = []
    for name in names:
        lines.append(name)
        previous = None
        for position, run in enumerate(runs):
            bench = run.benchmarks.get(name)
            if bench is None:
                continue
            median = bench["stats"]["median"]
            change = f"{median / previous - 1:+7.1%}" if previous else " " * 7
            mark = {"slower": "  ▲ step: slower", "faster": "  ▼ step: faster"}.get(steps.get((position, name)), "")
            lines.append(f"  {run.commit:<16} {run.datetime[:19]:<19} {median * 1e3:12.3f} ms {change}{mark}")
            previous = median
    return "\n".join(lines)


def plot_trends(runs: list[Run], path: Path) -> Path:
    """Small multiples: each benchmark's median (IQR bars) over the runs, in order."""
    import matplotlib.pyplot as plt

    names = sorted({name for run in runs for name in run.benchmarks})
    columns = 4
    rows = max(1, math.ceil(len(names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.4 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names):
        points = [(position, run.benchmarks[name]["stats"]) for position, run in enumerate(runs) if name in run.benchmarks]
        positions = [position for position, _ in points]
        medians = np.array([stats["median"] for _, stats in points]) * 1e3
        low = medians - np.array([stats.get("q1", stats["median"]) for _, stats in points]) * 1e3
        high = np.array([stats.get("q3", stats["median"]) for _, stats in points]) * 1e3 - medians
        axis.errorbar(positions, medians, yerr=[np.maximum(low, 0), np.maximum(high, 0)], marker="o", ms=3, capsize=2)
        axis.set_title(name if len(name) <= 48 else name[:45] + "...", fontsize=7)
        axis.tick_params(labelsize=6)
        axis.set_ylabel("ms", fontsize=6)
    for axis in list(axes.flat)[len(names):]:
        axis.set_visible(False)
    figure.supxlabel("run (oldest to newest)")
    return _save_figure(figure, path, dpi=80)


def plot_scaling(run: Run, path: Path) -> Path:
    """Time vs n on log-log axes for each scaling series of `run`, with its fitted exponent."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for fit in run.suite.get("scaling", []):
        sizes, seconds = np.array(fit["n"], dtype=float), np.array(fit["seconds"])
        line = axis.loglog(sizes, seconds * 1e3, "o", label=f"{_series_label(fit['series'])}: exponent {fit['exponent']:.2f}")
        slope, intercept = np.polyfit(np.log(sizes), np.log(seconds), 1)
        grid = np.geomspace(sizes.min(), sizes.max(), 20)
        axis.loglog(grid, np.exp(intercept) * grid**slope * 1e3, "-", color=line[0].get_color())
    axis.set_xlabel("database vectors n")
    axis.set_ylabel("search median, ms")
    axis.set_title(f"time vs n, run {run.commit} {run.datetime[:19]}", fontsize=9)
    axis.legend(fontsize=7)
    return _save_figure(figure, path, dpi=90)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (queries/s, recall) points no other point beats on both, by increasing queries/s."""
    front = []
    for speed, recall in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or recall > front[-1][1]:
            front.append((speed, recall))
    return sorted(front)


def plot_pareto(run: Run, path: Path) -> Path:
    """Recall vs queries/s of the approximate indexes in `run`, per (n, d, k), with the Pareto frontier."""
    import matplotlib.pyplot as plt

    settings: dict[tuple, dict[str, list[tuple[float, float]]]] = {}
    for bench in run.data["benchmarks"]:
        info = bench.get("extra_info") or {}
        if (bench["name"].startswith("test_search[") and info.get("spec") not in EXACT_SPECS
                and "queries_per_s" in info and "recall" in info):
            setting = settings.setdefault((info["n"], info["d"], info["k"]), {})
            setting.setdefault(info["spec"], []).append((info["queries_per_s"], info["recall"]))
    figure, axes = plt.subplots(1, max(1, len(settings)), figsize=(5 * max(1, len(settings)), 4), squeeze=False)
    for axis, ((n, d, k), by_spec) in zip(axes.flat, sorted(settings.items())):
        for spec, points in sorted(by_spec.items()):
            speeds, recalls = zip(*sorted(points))
            axis.plot(speeds, recalls, "o:", label=spec)
        front = pareto_front([point for points in by_spec.values() for point in points])
        axis.step(*zip(*front), where="pre", color="black", lw=1, label="Pareto frontier")
        axis.set_xscale("log")
        axis.set_xlabel("queries/s")
        axis.set_ylabel(f"recall@{k}")
        axis.set_title(f"n={n} d={d} k={k}", fontsize=9)
        axis.legend(fontsize=7)
    return _save_figure(figure, path, dpi=90)


def write_report(runs: list[Run], folder: str | Path) -> list[Path]:
    """Write trends.png, scaling.png, pareto.png and report.html (the three embedded) into `folder`."""
    if not runs:
        raise ValueError("no saved runs to report on")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    latest = runs[-1]
    pngs = [plot_trends(runs, folder / "trends.png"), plot_scaling(latest, folder / "scaling.png"),
            plot_pareto(latest, folder / "pareto.png")]
    steps = step_changes(runs)
    images = "\n".join(f'<h2>{png.stem}</h2><img alt="{png.stem}" src="data:image/png;base64,'
                       f'{base64.b64encode(png.read_bytes()).decode()}">' for png in pngs)
    runs_list = "\n".join(f"<li>{html.escape(run.commit)} {html.escape(run.datetime[:19])} "
                          f"{html.escape(str(run.path))}</li>" for run in runs)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>embedsearch history</title>"
            f"<style>body{{font-family:sans-serif}} img{{max-width:100%}} pre{{font-size:12px}}</style></head><body>"
            f"<h1>embedsearch: {len(runs)} saved runs</h1><ol>{runs_list}</ol>{images}"
            f"<h2>series per benchmark</h2><pre>{html.escape(history_table(runs, steps))}</pre></body></html>")
    report = folder / "report.html"
    report.write_text(page, encoding="utf-8")
    return [*pngs, report]


def _save_figure(figure, path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def _series_label(series: str) -> str:
    """'test_scaling spec=Flat d=64 ...' -> 'Flat d=64 k=10 nq=200 ...' without the function name."""
    return series.split(" ", 1)[1].replace("spec=", "") if " " in series else series
