import re
import shutil
import subprocess

import numpy as np
import pytest

from embedsearch import cli
from embedsearch.storage import load_runs, save_run
from embedsearch.report import history_steps, history_table, pareto_front, write_report
from saved_runs import make_run, noisy

COMMITS = ("1111111aaa", "2222222bbb", "3333333ccc")
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


def saved_history(folder):
    """Three runs at three commits: the Flat search steps 30% slower at the third; the sparse benchmark, absent
    from the second run, steps 40% faster; the approximate index (with peak memory) and scaling ride along."""
    scaling = [{"series": "test_scaling spec=Flat d=64", "exponent": 1.0, "n": [1000, 2000, 4000],
                "seconds": [1e-3, 2e-3, 4e-3]}]
    paths = []
    for position, search_seconds in enumerate((1.0e-3, 1.0e-3, 1.3e-3)):
        benchmarks = {
            "test_search[Flat-n1000]": (noisy(search_seconds, seed=position), {}),
            "test_search[HNSW32-ef16]": (noisy(2e-4, seed=10 + position),
                                        {"spec": "HNSW32", "n": 1000, "d": 64, "k": 10, "queries_per_s": 5e5,
                                         "recall": 0.7, "params": {"efSearch": 16}, "peak_bytes": 2**20}),
            "test_search[HNSW32-ef64]": (noisy(5e-4, seed=20 + position),
                                        {"spec": "HNSW32", "n": 1000, "d": 64, "k": 10, "queries_per_s": 2e5,
                                         "recall": 0.95, "params": {"efSearch": 64}, "peak_bytes": 2**21}),
        }
        if position != 1:
            benchmarks["test_knn_classify[sparse]"] = (noisy(2e-3 if position == 0 else 1.2e-3, seed=30 + position),
                                                       {"top1": 0.5})
        run = make_run(benchmarks, scaling=scaling, datetime=f"2026-11-2{position}T10:00:00")
        run.data["commit_info"]["id"] = COMMITS[position]
        paths.append(save_run(run.data, folder, f"run{position}"))
    return paths


def test_history_steps_are_placed_once_at_the_run_where_they_happened(tmp_path):
    runs = load_runs(saved_history(tmp_path))
    steps = history_steps(runs)
    assert {name: [(step.before, step.after, step.direction) for step in found] for name, found in steps.items()} == {
        "test_knn_classify[sparse]": [(0, 2, "faster")], "test_search[Flat-n1000]": [(1, 2, "slower")],
        "test_search[HNSW32-ef16]": [], "test_search[HNSW32-ef64]": []}
    [flat] = steps["test_search[Flat-n1000]"]
    medians = [run.benchmarks["test_search[Flat-n1000]"]["stats"]["median"] for run in runs]
    assert flat.after_seconds == pytest.approx(medians[2], rel=1e-12)
    assert flat.ratio == pytest.approx(1.3, rel=0.02)
    assert history_steps(runs, min_relative_step=0.7) == {name: [] for name in steps}  # 2.0 -> 1.2 ms is 1.67x


def test_history_prints_each_step_with_the_commits_on_both_sides_and_writes_the_page_and_a_png_per_stage(
        tmp_path, capsys):
    saved_history(tmp_path / "runs")
    (tmp_path / "runs" / "0004_broken.json").write_text("{")
    with pytest.warns(UserWarning, match="skipping .*0004_broken.json"):
        assert cli.main(["history", str(tmp_path / "runs"), "--output", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    flat_lines = out.split("test_search[Flat-n1000]\n")[1].split("test_search[HNSW32")[0].strip().splitlines()
    assert len(flat_lines) == 3 and "step" not in flat_lines[0] + flat_lines[1]
    assert re.search(r"^  3333333ccc .* ▲ step: slower \+\d\d\.\d% since 2222222bbb$", flat_lines[2])
    listed = out.split("change points (2):\n")[1].splitlines()[:2]
    assert re.fullmatch(r"  test_knn_classify\[sparse\]: faster -\d\d\.\d% \(.* ms\) between "
                        r"1111111aaa 2026-11-20T10:00:00 and 3333333ccc 2026-11-22T10:00:00", listed[0])
    assert re.fullmatch(r"  test_search\[Flat-n1000\]: slower \+\d\d\.\d% \(.* ms\) between "
                        r"2222222bbb 2026-11-21T10:00:00 and 3333333ccc 2026-11-22T10:00:00", listed[1])
    names = sorted(path.name for path in (tmp_path / "report").iterdir())
    assert names == ["pareto.png", "report.html", "scaling.png", "trends-x.png"]  # make_run's stage: bench_x.py
    for png in ("pareto.png", "scaling.png", "trends-x.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report" / "report.html").read_text()
    markup = re.sub(r"<script.*?</script>", "", page, flags=re.S)  # the page's own HTML, scripts aside
    assert re.findall(r"<script[^>]*\ssrc=", page) == [] and re.findall(r"<link\b|\ssrc=", markup) == []
    assert re.findall(r"""href=["']([^"']*)""", markup) == ["#family-test_search", "#family-test_knn_classify", "#pareto",
                                                    "#scaling", "#memory", "#table"]
    assert page.count("plotly.js v") == 1  # plotly's JavaScript inline once, for every figure
    assert re.findall(r'<div id="(plot-[^"]+)"', page) == [
        "plot-family-test_search", "plot-family-test_knn_classify", "plot-pareto", "plot-scaling", "plot-memory"]
    assert "▲ step: slower" in page and "between 2222222bbb 2026-11-21T10:00:00 and 3333333ccc" in page


def test_history_table_marks_nothing_without_steps(tmp_path):
    runs = load_runs(saved_history(tmp_path))
    table = history_table(runs, {})
    assert table.count("test_search[") == 3 and "step" not in table
    assert table.count("\n  ") == 3 * 3 + 2  # one line per run holding each benchmark


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(100.0, 0.99), (200.0, 0.90), (150.0, 0.85), (400.0, 0.60), (300.0, 0.50)]
    assert pareto_front(points) == [(100.0, 0.99), (200.0, 0.90), (400.0, 0.60)]
    assert pareto_front([(1.0, 0.5)]) == [(1.0, 0.5)]


def test_history_without_runs_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["history", str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 2
    assert "no readable saved runs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium)")
def test_history_page_renders_in_headless_chromium_without_a_console_message(tmp_path):
    runs = load_runs(saved_history(tmp_path / "runs"))
    page = write_report(runs, tmp_path / "report", history_steps(runs))[0]
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
               "--v=0", "--virtual-time-budget=10000", "--window-size=1200,1400"]
    screenshot = tmp_path / "page.png"
    shot = subprocess.run([*browser, f"--screenshot={screenshot}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    dom = subprocess.run([*browser, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    # Chromium logs every console message (log, warning, error, uncaught exception) as INFO:CONSOLE
    assert [line for line in (shot.stderr + dom.stderr).splitlines() if ":CONSOLE" in line] == []
    assert dom.returncode == 0 and shot.returncode == 0, shot.stderr[-2000:]
    # plotly drew every figure: each of the five plot divs holds its rendered SVG
    assert dom.stdout.count('class="plot-container plotly"') == 5
    assert len(re.findall(r'<g class="trace scatter', dom.stdout)) >= 5
    from matplotlib.image import imread

    pixels = (imread(screenshot)[..., :3] * 255).round().astype(int)
    assert pixels.shape[:2] == (1400, 1200)

    def count(color: str) -> int:
        rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - rgb).max(axis=-1) <= 8).sum())

    # the first figure, slowdowns first, is the Flat search: its median line and red change-point marker show
    assert count("#1f77b4") > 200 and count("#d62728") > 50
