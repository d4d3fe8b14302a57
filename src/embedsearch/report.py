"""History of saved runs: change points per benchmark, one interactive HTML page, and a PNG per stage.

The page (plotly, its JavaScript inline) opens from a file with no server: per benchmark family
a trend of each benchmark's median with its IQR band, the change points of `embedsearch.stats`
and the figures (recall, top-1, peak memory) below; recall vs queries/s with the Pareto
frontier per data set and k; time vs n on log-log axes with the fitted exponents; peak memory
over runs; and the table the terminal prints.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .fields import (DATASET, D, FIELDS, GFLOPS, IMAGES_PER_S, INDEX_BYTES, K, N, PARAMS, PEAK_BYTES, QUERIES_PER_S,
                     RECALL, SPEC, TOP1, VECTORS_PER_S)
from .gate import MIN_EFFECT
from .index import EXACT_SPECS
from .stats import change_points
from .storage import Run

HOVER_FIGURES = (  # extra_info field (embedsearch.fields), label, format; bytes are shown in MiB
    (QUERIES_PER_S, "queries/s", "{:,.0f}"), (VECTORS_PER_S, "vectors/s", "{:,.0f}"),
    (IMAGES_PER_S, "images/s", "{:.1f}"), (GFLOPS, "GFLOP/s", "{:.1f}"), (RECALL, "recall@k", "{:.4f}"),
    (TOP1, "top-1", "{:.4f}"), (PEAK_BYTES, "peak MiB", "{:.2f}"), (INDEX_BYTES, "index MiB", "{:.2f}"),
)
QUALITY_FIGURES = ((RECALL, "recall@k"), (TOP1, "top-1"))
MEDIAN_COLOR, BAND_COLOR, FIT_COLOR = "#1f77b4", "rgba(31, 119, 180, 0.2)", "#ff7f0e"
STEP_COLORS = {"slower": "#d62728", "faster": "#2ca02c"}


@dataclass(frozen=True)
class Step:
    """A change point of one benchmark's median time over the runs, between two runs holding it."""

    name: str
    before: int  # position (in the runs, oldest first) of the last run before the step
    after: int  # position of the first run after it
    before_seconds: float  # the fitted level before (median of its segment)
    after_seconds: float

    @property
    def ratio(self) -> float:
        return self.after_seconds / self.before_seconds

    @property
    def direction(self) -> str:
        return "slower" if self.ratio > 1 else "faster"


def history_steps(runs: list[Run], min_relative_step: float = MIN_EFFECT) -> dict[str, list[Step]]:
    """Per benchmark, its change points over the whole series (`embedsearch.stats.change_points`), placed on runs.

    A step must be at least `min_relative_step` (default: the gate's minimum effect) to count.
    """
    tables = [run.benchmarks for run in runs]
    steps = {}
    for name in benchmark_names(runs):
        positions = [position for position, table in enumerate(tables) if name in table]
        medians = [tables[position][name]["stats"]["median"] for position in positions]
        try:
            found = change_points(medians, min_relative_step)
        except ValueError as error:
            raise ValueError(f"{name}: medians over the runs: {error}") from None
        steps[name] = [Step(name, positions[point.position - 1], positions[point.position], point.before, point.after)
                       for point in found]
    return steps


def benchmark_names(runs: list[Run]) -> list[str]:
    return sorted({name for run in runs for name in run.benchmarks})


def history_table(runs: list[Run], steps: dict[str, list[Step]]) -> str:
    """Per benchmark, one line per run holding it: commit, date, median, change from the previous, step marks."""
    lines = []
    for name in benchmark_names(runs):
        lines.append(name)
        at = {step.after: step for step in steps.get(name, [])}
        previous = None
        for position, run in enumerate(runs):
            bench = run.benchmarks.get(name)
            if bench is None:
                continue
            median = bench["stats"]["median"]
            change = f"{median / previous - 1:+7.1%}" if previous else " " * 7
            step = at.get(position)
            mark = (f"  {'▲' if step.direction == 'slower' else '▼'} step: {step.direction} {step.ratio - 1:+.1%} "
                    f"since {runs[step.before].commit}" if step else "")
            lines.append(f"  {run.commit:<16} {run.datetime[:19]:<19} {median * 1e3:12.3f} ms {change}{mark}")
            previous = median
    return "\n".join(lines)


def format_steps(runs: list[Run], steps: dict[str, list[Step]]) -> str:
    """One line per change point, largest first: benchmark, size, levels, and the runs on both sides."""
    found = sorted((step for name_steps in steps.values() for step in name_steps),
                   key=lambda step: -abs(math.log(step.ratio)))
    if not found:
        return "change points: none"
    lines = [f"change points ({len(found)}):"]
    for step in found:
        before, after = runs[step.before], runs[step.after]
        lines.append(f"  {step.name}: {step.direction} {step.ratio - 1:+.1%} "
                     f"({step.before_seconds * 1e3:.3f} -> {step.after_seconds * 1e3:.3f} ms) between "
                     f"{before.commit} {before.datetime[:19]} and {after.commit} {after.datetime[:19]}")
    return "\n".join(lines)


def family(name: str) -> str:
    """'test_search[Flat-n5000-...]' -> 'test_search'."""
    return name.split("[", 1)[0]


def parameters(name: str) -> str:
    """'test_search[Flat-n5000-...]' -> 'Flat-n5000-...'; the bare name when there are none."""
    return name[len(family(name)) + 1:-1] if "[" in name else name


def stage(bench: dict) -> str:
    """The stage a saved benchmark belongs to: its perf/bench_<stage>.py file."""
    module = Path(str(bench.get("fullname", "")).split("::", 1)[0]).stem
    return module.removeprefix("bench_") if module.startswith("bench_") else family(bench["name"])


# ---------------------------------------------------------------- PNGs, for README and terminals

def plot_stage_trends(runs: list[Run], stage_name: str, names: list[str], steps: dict[str, list[Step]],
                      path: Path) -> Path:
    """One stage's benchmarks in one figure: each median relative to its own median over the runs, steps marked."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(12, 4.5))
    relative_by_run: dict[int, list[float]] = {}
    for name in names:
        points = [(position, run.benchmarks[name]["stats"]["median"]) for position, run in enumerate(runs)
                  if name in run.benchmarks]
        positions = [position + 1 for position, _ in points]
        medians = np.array([median for _, median in points])
        relative = medians / np.median(medians)
        for position, value in zip(positions, relative):
            relative_by_run.setdefault(position, []).append(value)
        stepped = steps.get(name, [])
        axis.plot(positions, relative, "-", lw=1.4 if stepped else 0.7, color=None if stepped else "0.75",
                  label=name.removeprefix("test_")[:60] if stepped else None)
        for step in stepped:
            axis.plot(step.after + 1, relative[positions.index(step.after + 1)], "^" if step.direction == "slower"
                      else "v", color=STEP_COLORS[step.direction], ms=8)
    run_positions = sorted(relative_by_run)
    axis.plot(run_positions, [np.median(relative_by_run[p]) for p in run_positions], "k-", lw=2.5,
              label="median over the stage")
    count = sum(len(steps.get(name, [])) for name in names)
    axis.set_title(f"{stage_name}: {len(names)} benchmarks, {count} change points "
                   f"(▲ slower, ▼ faster)", fontsize=10)
    axis.set_yscale("log")  # ratios: a halving and a doubling lie equally far from 1
    axis.set_ylabel("median time / the benchmark's median over runs")
    axis.set_xticks(range(1, len(runs) + 1), _run_ticks(runs, "\n"), fontsize=7)
    axis.set_xlabel("run (oldest to newest)")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the plot, not over it
    return _save_figure(figure, path, dpi=90)


def plot_scaling(run: Run, path: Path) -> Path:
    """Time vs n on log-log axes for each scaling series of `run`, with its fitted exponent."""
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for fit in run.suite.get("scaling", []):
        sizes, seconds = np.array(fit["n"], dtype=float), np.array(fit["seconds"])
        line = axis.loglog(sizes, seconds * 1e3, "o", label=f"{_series_label(fit['series'])}: exponent {fit['exponent']:.2f}")
        grid, fitted = _fitted_line(sizes, seconds)
        axis.loglog(grid, fitted * 1e3, "-", color=line[0].get_color())
    axis.set_xlabel("database vectors n")
    axis.set_ylabel("search median, ms")
    axis.set_title(f"time vs n, run {run.commit} {run.datetime[:19]}", fontsize=9)
    if run.suite.get("scaling"):
        axis.legend(fontsize=7)
    return _save_figure(figure, path, dpi=90)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (queries/s, recall) points no other point beats on both, by increasing queries/s."""
    front = []
    for speed, recall in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or recall > front[-1][1]:
            front.append((speed, recall))
    return sorted(front)


def pareto_settings(run: Run) -> dict[tuple[str, int, int, int], dict[str, list[tuple[float, float, str]]]]:
    """Approximate search points of `run` per data set and k: (data set, n, d, k) -> spec -> [(queries/s, recall, params)]."""
    settings: dict[tuple[str, int, int, int], dict[str, list[tuple[float, float, str]]]] = {}
    for bench in run.data["benchmarks"]:
        info = bench.get("extra_info") or {}
        if (bench["name"].startswith("test_search[") and info.get(SPEC) not in EXACT_SPECS
                and QUERIES_PER_S in info and RECALL in info):
            setting = settings.setdefault((str(info.get(DATASET, "")), info[N], info[D], info[K]), {})
            label = " ".join(f"{key}={value}" for key, value in (info.get(PARAMS) or {}).items())
            setting.setdefault(info[SPEC], []).append((info[QUERIES_PER_S], info[RECALL], label))
    return dict(sorted(settings.items()))


def plot_pareto(run: Run, path: Path) -> Path:
    """Recall vs queries/s of the approximate indexes in `run`, per (data set, n, d, k), with the Pareto frontier."""
    import matplotlib.pyplot as plt

    settings = pareto_settings(run)
    figure, axes = plt.subplots(1, max(1, len(settings)), figsize=(5 * max(1, len(settings)), 4), squeeze=False)
    for axis, ((dataset, n, d, k), by_spec) in zip(axes.flat, settings.items()):
        for spec, points in sorted(by_spec.items()):
            speeds, recalls, _ = zip(*sorted(points))
            axis.plot(speeds, recalls, "o:", label=spec)
        front = pareto_front([point[:2] for points in by_spec.values() for point in points])
        axis.step(*zip(*front), where="pre", color="black", lw=1, label="Pareto frontier")
        axis.set_xscale("log")
        axis.set_xlabel("queries/s")
        axis.set_ylabel(f"recall@{k}")
        axis.set_title(f"{dataset} n={n} d={d} k={k}", fontsize=9)
        axis.legend(fontsize=7)
    return _save_figure(figure, path, dpi=90)


# ---------------------------------------------------------------- the interactive page (plotly)

def trend_figure(runs: list[Run], names: list[str], steps: dict[str, list[Step]]):
    """One benchmark family: a dropdown picks its parameters; median ms with the IQR band, steps, figures below."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figure = make_subplots(rows=3, cols=1, shared_xaxes=True, row_heights=[0.6, 0.2, 0.2], vertical_spacing=0.1,
                           subplot_titles=("median time, ms (band: IQR of the rounds)", "recall@k / top-1",
                                           "peak MiB (memray)"))
    owners = []  # the benchmark each trace belongs to
    for name in names:
        points = [(position, run, run.benchmarks[name]) for position, run in enumerate(runs) if name in run.benchmarks]
        x = [position + 1 for position, _, _ in points]
        stats = [bench["stats"] for _, _, bench in points]
        medians = [s["median"] * 1e3 for s in stats]
        hover = [_hover(run, bench) for _, run, bench in points]
        traces = [
            go.Scatter(x=x, y=[s.get("q3", s["median"]) * 1e3 for s in stats], mode="lines", line={"width": 0},
                       hoverinfo="skip", showlegend=False),
            go.Scatter(x=x, y=[s.get("q1", s["median"]) * 1e3 for s in stats], mode="lines", line={"width": 0},
                       fill="tonexty", fillcolor=BAND_COLOR, name="IQR", hoverinfo="skip"),
            go.Scatter(x=x, y=medians, mode="lines+markers", name="median", line={"color": MEDIAN_COLOR, "width": 3},
                       marker={"size": 8}, hovertext=hover, hovertemplate="%{hovertext}<extra></extra>"),
        ]
        found = steps.get(name, [])
        if found:
            traces.append(go.Scatter(x=x, y=_fitted_levels(x, found), mode="lines", name="step fit",
                                     line={"color": FIT_COLOR, "dash": "dot", "shape": "hvh"}, hoverinfo="skip"))
            for direction in ("slower", "faster"):
                chosen = [step for step in found if step.direction == direction]
                if chosen:
                    traces.append(go.Scatter(
                        x=[step.after + 1 for step in chosen],
                        y=[medians[x.index(step.after + 1)] for step in chosen], mode="markers",
                        name=f"change point: {direction}",
                        marker={"symbol": "triangle-up" if direction == "slower" else "triangle-down", "size": 18,
                                "color": STEP_COLORS[direction], "line": {"width": 1, "color": "black"}},
                        hovertext=[_step_text(runs, step) for step in chosen],
                        hovertemplate="%{hovertext}<extra></extra>"))
        rows = [1] * len(traces)
        for key, label in QUALITY_FIGURES:
            values = [bench.get("extra_info", {}).get(key) for _, _, bench in points]
            if any(value is not None for value in values):
                traces.append(go.Scatter(x=x, y=values, mode="lines+markers", name=label, hovertext=hover,
                                         hovertemplate="%{hovertext}<extra></extra>"))
                rows.append(2)
        peaks = [bench.get("extra_info", {}).get(PEAK_BYTES) for _, _, bench in points]
        if any(peak is not None for peak in peaks):
            traces.append(go.Scatter(x=x, y=[None if peak is None else peak / 2**20 for peak in peaks],
                                     mode="lines+markers", name="peak MiB", line={"color": "#9467bd"},
                                     hovertext=hover, hovertemplate="%{hovertext}<extra></extra>"))
            rows.append(3)
        for trace, row in zip(traces, rows):
            trace.visible = name == names[0]
            figure.add_trace(trace, row=row, col=1)
        owners += [name] * len(traces)
    for row in (1, 3):  # the runs under the trend, and at the bottom
        figure.update_xaxes(tickvals=list(range(1, len(runs) + 1)), ticktext=_run_ticks(runs), showticklabels=True,
                            row=row, col=1)
    figure.update_xaxes(title_text="run (oldest to newest): commit, date", row=3, col=1)
    # the title (two lines) at the top, the dropdown below it, the plots below that
    figure.update_layout(height=800, margin={"t": 150}, hovermode="closest",
                         title={"text": _trend_title(names[0], steps), "yref": "container", "y": 0.985,
                                "yanchor": "top"})
    if len(names) > 1:
        buttons = [{"label": _option_label(name, steps), "method": "update",
                    "args": [{"visible": [owner == name for owner in owners]},
                             {"title.text": _trend_title(name, steps)}]} for name in names]
        figure.update_layout(updatemenus=[{"buttons": buttons, "x": 0, "xanchor": "left", "y": 1.06,
                                           "yanchor": "bottom", "active": 0}])
    return figure


def pareto_figure(run: Run):
    """Recall vs queries/s of `run`'s approximate indexes, one view per (data set, n, d, k) picked in a dropdown."""
    import plotly.graph_objects as go

    settings = pareto_settings(run)
    if not settings:
        return None
    figure, owners = go.Figure(), []
    for number, ((dataset, n, d, k), by_spec) in enumerate(settings.items()):
        for spec, points in sorted(by_spec.items()):
            speeds, recalls, labels = zip(*sorted(points))
            figure.add_trace(go.Scatter(x=speeds, y=recalls, mode="lines+markers", name=spec, visible=number == 0,
                                        line={"dash": "dot"}, hovertext=[f"{spec} {label}" for label in labels],
                                        hovertemplate="%{hovertext}<br>%{x:,.0f} queries/s<br>recall %{y:.4f}"
                                                      "<extra></extra>"))
            owners.append(number)
        front = pareto_front([point[:2] for points in by_spec.values() for point in points])
        figure.add_trace(go.Scatter(x=[p[0] for p in front], y=[p[1] for p in front], mode="lines",
                                    name="Pareto frontier", visible=number == 0, hoverinfo="skip",
                                    line={"color": "black", "shape": "vh"}))
        owners.append(number)
    titles = [f"recall@{k} vs queries/s: {dataset} n={n} d={d} k={k} (run {run.commit})"
              for dataset, n, d, k in settings]
    figure.update_layout(title={"text": titles[0]}, height=480, margin={"t": 110},
                         xaxis={"type": "log", "title": {"text": "queries/s"}},
                         yaxis={"title": {"text": "recall@k"}})
    if len(settings) > 1:
        buttons = [{"label": f"{dataset} n={n} d={d} k={k}", "method": "update",
                    "args": [{"visible": [owner == number for owner in owners]}, {"title.text": titles[number]}]}
                   for number, (dataset, n, d, k) in enumerate(settings)]
        figure.update_layout(updatemenus=[{"buttons": buttons, "x": 0, "xanchor": "left", "y": 1.12,
                                           "yanchor": "bottom"}])
    return figure


def scaling_figure(run: Run):
    """Time vs n of `run`'s scaling series on log-log axes, each with its fitted line and exponent."""
    import plotly.graph_objects as go

    fits = run.suite.get("scaling", [])
    if not fits:
        return None
    figure = go.Figure()
    for number, fit in enumerate(fits):
        sizes, seconds = np.array(fit["n"], dtype=float), np.array(fit["seconds"])
        color = f"hsl({number * 137 % 360}, 60%, 45%)"
        label = f"{_series_label(fit['series'])}: exponent {fit['exponent']:.3f}"
        figure.add_trace(go.Scatter(x=sizes, y=seconds * 1e3, mode="markers", name=label, marker={"color": color},
                                    hovertemplate="n=%{x:,}<br>%{y:.3f} ms<extra></extra>"))
        grid, fitted = _fitted_line(sizes, seconds)
        figure.add_trace(go.Scatter(x=grid, y=fitted * 1e3, mode="lines", line={"color": color}, showlegend=False,
                                    hoverinfo="skip"))
    figure.update_layout(title={"text": f"time vs n, log-log, with the fitted exponent (run {run.commit})"},
                         height=480, xaxis={"type": "log", "title": {"text": "database vectors n"}},
                         yaxis={"type": "log", "title": {"text": "search median, ms"}},
                         legend={"font": {"size": 10}})
    return figure


def memory_figure(runs: list[Run], names_by_stage: dict[str, list[str]]):
    """Peak memory (memray) of each benchmark over the runs, one stage at a time picked in a dropdown."""
    import plotly.graph_objects as go

    figure, owners, stages = go.Figure(), [], []
    for stage_name, names in names_by_stage.items():
        shown = False
        for name in names:
            points = [(position, run, run.benchmarks[name]) for position, run in enumerate(runs)
                      if PEAK_BYTES in (run.benchmarks.get(name, {}).get("extra_info") or {})]
            if not points:
                continue
            figure.add_trace(go.Scatter(
                x=[position + 1 for position, _, _ in points],
                y=[bench["extra_info"][PEAK_BYTES] / 2**20 for _, _, bench in points], mode="lines+markers",
                name=parameters(name), visible=not stages, hovertext=[f"{name}<br>" + _hover(run, bench)
                                                                     for _, run, bench in points],
                hovertemplate="%{hovertext}<extra></extra>"))
            owners.append(stage_name)
            shown = True
        if shown:
            stages.append(stage_name)
    if not stages:
        return None
    figure.update_layout(title={"text": f"peak MiB over runs: {stages[0]}"}, height=520, margin={"t": 110},
                         xaxis={"tickvals": list(range(1, len(runs) + 1)), "ticktext": _run_ticks(runs),
                                "title": {"text": "run (oldest to newest)"}},
                         yaxis={"title": {"text": "peak MiB (memray)"}}, legend={"font": {"size": 9}})
    if len(stages) > 1:
        buttons = [{"label": stage_name, "method": "update",
                    "args": [{"visible": [owner == stage_name for owner in owners]},
                             {"title.text": f"peak MiB over runs: {stage_name}"}]} for stage_name in stages]
        figure.update_layout(updatemenus=[{"buttons": buttons, "x": 0, "xanchor": "left", "y": 1.12,
                                           "yanchor": "bottom"}])
    return figure


def write_report(runs: list[Run], folder: str | Path, steps: dict[str, list[Step]]) -> list[Path]:
    """Write report.html (the interactive page), trends-<stage>.png per stage, scaling.png and pareto.png.

    `steps` are `history_steps(runs)`.
    """
    if not runs:
        raise ValueError("no saved runs to report on")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    latest = runs[-1]
    names_by_stage = _names_by_stage(runs)
    pngs = [plot_stage_trends(runs, stage_name, names, steps, folder / f"trends-{stage_name}.png")
            for stage_name, names in names_by_stage.items()]
    pngs += [plot_scaling(latest, folder / "scaling.png"), plot_pareto(latest, folder / "pareto.png")]
    page = folder / "report.html"
    page.write_text(history_page(runs, steps, names_by_stage), encoding="utf-8")
    return [page, *pngs]


def history_page(runs: list[Run], steps: dict[str, list[Step]], names_by_stage: dict[str, list[str]]) -> str:
    """The whole self-contained page: plotly's JavaScript inline once, then every figure and table."""
    families: dict[str, list[str]] = {}
    for names in names_by_stage.values():
        for name in names:
            families.setdefault(family(name), []).append(name)
    # what changed comes first, slowdowns before speed-ups: families by their number of steps, benchmarks by size
    def found(names: list[str], direction: str | None = None) -> list[Step]:
        return [step for name in names for step in steps.get(name, []) if direction in (None, step.direction)]

    order = sorted(families, key=lambda f: (-len(found(families[f], "slower")), -len(found(families[f]))))
    figures = []  # (anchor, heading, figure)
    for family_name in order:
        names = sorted(families[family_name], key=lambda name: (-_largest_step(found([name], "slower")),
                                                                -_largest_step(found([name]))))
        figures.append((f"family-{family_name}", f"{family_name}: {_count(len(names), 'benchmark')}, "
                                                 f"{_count(len(found(names)), 'change point')}",
                        trend_figure(runs, names, steps)))
    for anchor, heading, figure in (("pareto", "Recall vs queries/s", pareto_figure(runs[-1])),
                                    ("scaling", "Time vs n", scaling_figure(runs[-1])),
                                    ("memory", "Peak memory over runs", memory_figure(runs, names_by_stage))):
        if figure is not None:
            figures.append((anchor, heading, figure))
    sections = []
    for number, (anchor, heading, figure) in enumerate(figures):
        plot = figure.to_html(full_html=False, include_plotlyjs=number == 0, div_id=f"plot-{anchor}",
                              config={"displaylogo": False})
        sections.append(f'<h2 id="{anchor}">{html.escape(heading)}</h2>\n{plot}')
    contents = "".join(f'<li><a href="#{anchor}">{html.escape(heading)}</a></li>' for anchor, heading, _ in figures)
    runs_rows = "".join(
        f"<tr><td>{position + 1}</td><td>{html.escape(run.commit)}</td><td>{html.escape(run.datetime[:19])}</td>"
        f"<td>{html.escape(str(run.suite.get('tier', '')))}</td><td>{run.suite.get('planted_slowdown') or ''}</td>"
        f"<td>{len(run.data['benchmarks'])}</td><td>{html.escape(str(run.path or ''))}</td></tr>"
        for position, run in enumerate(runs))
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>embedsearch history</title>"
        "<style>body{font-family:sans-serif;margin:1em 2em} table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left} pre{font-size:12px}"
        ".scroll{max-height:14em;overflow:auto}</style></head><body>\n"
        f"<h1>embedsearch history: {len(runs)} runs, {len(benchmark_names(runs))} benchmarks</h1>\n"
        "<table><tr><th>run</th><th>commit</th><th>date</th><th>tier</th><th>planted slowdown</th>"
        f"<th>benchmarks</th><th>file</th></tr>{runs_rows}</table>\n"
        f"<h2>Change points</h2><p>{html.escape(CHANGE_POINT_NOTE)}</p>"
        f"<div class='scroll'><pre>{html.escape(format_steps(runs, steps))}</pre></div>\n"
        f"<ul>{contents}<li><a href='#table'>Series per benchmark</a></li></ul>\n"
        + "\n".join(sections)
        + f"\n<h2 id='table'>Series per benchmark</h2><pre>{html.escape(history_table(runs, steps))}</pre>"
        "\n</body></html>\n"
    )


CHANGE_POINT_NOTE = (
    "Each benchmark's median time over all runs is fitted by a piecewise-constant function (penalised L1 fit of "
    "log times, number of steps by the Schwarz criterion, as asv does; embedsearch.stats). It assumes each run's "
    f"median is its segment's level times independent noise of one scale; steps under {MIN_EFFECT:.0%} "
    "(the gate's minimum effect) are not reported. Each step is reported once, at the first run after it.")


def _names_by_stage(runs: list[Run]) -> dict[str, list[str]]:
    stages: dict[str, set[str]] = {}
    for run in runs:
        for bench in run.data["benchmarks"]:
            stages.setdefault(stage(bench), set()).add(bench["name"])
    return {stage_name: sorted(names) for stage_name, names in sorted(stages.items())}


def _hover(run: Run, bench: dict) -> str:
    stats, info = bench["stats"], bench.get("extra_info") or {}
    lines = [f"<b>{html.escape(run.commit)}</b> {html.escape(run.datetime[:19])}",
             f"median {stats['median'] * 1e3:.3f} ms (IQR {stats.get('q1', stats['median']) * 1e3:.3f}"
             f"-{stats.get('q3', stats['median']) * 1e3:.3f})"]
    for key, label, pattern in HOVER_FIGURES:
        if isinstance(info.get(key), (int, float)):
            value = info[key] / 2**20 if FIELDS[key].unit == "bytes" else info[key]
            lines.append(f"{label} {pattern.format(value)}")
    return "<br>".join(lines)


def _step_text(runs: list[Run], step: Step) -> str:
    before, after = runs[step.before], runs[step.after]
    return (f"<b>change point: {step.direction} {step.ratio - 1:+.1%}</b><br>"
            f"{step.before_seconds * 1e3:.3f} ms -> {step.after_seconds * 1e3:.3f} ms<br>"
            f"before: {html.escape(before.commit)} {html.escape(before.datetime[:19])}<br>"
            f"after: {html.escape(after.commit)} {html.escape(after.datetime[:19])}")


def _fitted_levels(x: list[int], found: list[Step]) -> list[float]:
    """The step fit at each run of the series, in ms: each segment at its level."""
    levels = []
    for position in x:
        passed = [step for step in found if step.after + 1 <= position]
        levels.append((passed[-1].after_seconds if passed else found[0].before_seconds) * 1e3)
    return levels


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _largest_step(found: list[Step]) -> float:
    return max((abs(math.log(step.ratio)) for step in found), default=0.0)


def _trend_title(name: str, steps: dict[str, list[Step]]) -> str:
    found = steps.get(name, [])
    marks = ", ".join(f"{step.direction} {step.ratio - 1:+.1%}" for step in found)
    return html.escape(name) + (f"<br><sub>change points: {marks}</sub>" if found else "<br><sub>no change point</sub>")


def _option_label(name: str, steps: dict[str, list[Step]]) -> str:
    marks = "".join("▲" if step.direction == "slower" else "▼" for step in steps.get(name, []))
    return f"{marks} {parameters(name)}".strip()


def _run_ticks(runs: list[Run], newline: str = "<br>") -> list[str]:
    """Tick labels of the runs: short commit and month-day hour:minute (plotly breaks lines with <br>)."""
    return [f"{run.commit[:7]}{newline}{run.datetime[5:16]}" for run in runs]


def _fitted_line(sizes: np.ndarray, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares line through log(seconds) vs log(n), on a grid of n."""
    slope, intercept = np.polyfit(np.log(sizes), np.log(seconds), 1)
    grid = np.geomspace(sizes.min(), sizes.max(), 20)
    return grid, np.exp(intercept) * grid**slope


def _save_figure(figure, path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def _series_label(series: str) -> str:
    """'test_scaling spec=Flat d=64 ...' -> 'Flat d=64 k=10 nq=200 ...' without the function name."""
    return series.split(" ", 1)[1].replace("spec=", "") if " " in series else series
