import re

import numpy as np
import pytest

from embedsearch import cli
from embedsearch.storage import save_run
from embedsearch.report import history_table, pareto_front, step_changes
from saved_runs import make_run, noisy


def saved_history(folder):
    """Three runs: search steps 30% slower at the third; the approximate index and scaling series ride along."""
    scaling = [{"series": "test_scaling spec=Flat d=64", "exponent": 1.0, "n": [1000, 2000, 4000],
                "seconds": [1e-3, 2e-3, 4e-3]}]
    paths = []
    for position, search_seconds in enumerate((1.0e-3, 1.0e-3, 1.3e-3)):
        benchmarks = {
            "test_search[Flat-n1000]": (noisy(search_seconds, seed=position), {}),
            "test_search[HNSW32-ef16]": (noisy(2e-4, seed=10 + position),
                                        {"spec": "HNSW32", "n": 1000, "d": 64, "k": 10, "queries_per_s": 5e5, "recall": 0.7}),
            "test_search[HNSW32-ef64]": (noisy(5e-4, seed=20 + position),
                                        {"spec": "HNSW32", "n": 1000, "d": 64, "k": 10, "queries_per_s": 2e5, "recall": 0.95}),
        }
        run = make_run(benchmarks, scaling=scaling, datetime=f"2026-11-2{position}T10:00:00")
        paths.append(save_run(run.data, folder, f"run{position}"))
    return paths


def test_history_marks_the_step_and_writes_plots_and_a_self_contained_report(tmp_path, capsys):
    saved_history(tmp_path / "runs")
    (tmp_path / "runs" / "0004_broken.json").write_text("{")
    with pytest.warns(UserWarning, match="skipping .*0004_broken.json"):
        assert cli.main(["history", str(tmp_path / "runs"), "--output", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    flat_lines = out.split("test_search[Flat-n1000]")[1].split("test_search[HNSW32")[0].strip().splitlines()
    assert len(flat_lines) == 3
    assert "step" not in flat_lines[1] and "▲ step: slower" in flat_lines[2] and "+30" in flat_lines[2]
    names = sorted(path.name for path in (tmp_path / "report").iterdir())
    assert names == ["pareto.png", "report.html", "scaling.png", "trends.png"]
    for png in ("pareto.png", "scaling.png", "trends.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report" / "report.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert len(sources) == 3 and all(source.startswith("data:image/png;base64,") for source in sources)
    assert "▲ step: slower" in page


def test_step_changes_compare_each_run_with_the_one_before(tmp_path):
    from embedsearch.storage import load_runs

    runs = load_runs(saved_history(tmp_path))
    assert step_changes(runs) == {(2, "test_search[Flat-n1000]"): "slower"}
    assert history_table(runs, {}).count("test_search[") == 3


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(100.0, 0.99), (200.0, 0.90), (150.0, 0.85), (400.0, 0.60), (300.0, 0.50)]
    assert pareto_front(points) == [(100.0, 0.99), (200.0, 0.90), (400.0, 0.60)]
    assert pareto_front([(1.0, 0.5)]) == [(1.0, 0.5)]


def test_history_without_runs_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["history", str(tmp_path / "empty"), "--output", str(tmp_path / "out")]) == 2
    assert "no readable saved runs" in capsys.readouterr().err
    assert not np.any([path.exists() for path in [tmp_path / "out"]])
