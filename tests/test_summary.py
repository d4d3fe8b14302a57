"""perf/summary.py: the figures summary of a timed run, also as Markdown for a file and $GITHUB_STEP_SUMMARY."""

import os
import re
import subprocess
import sys
from pathlib import Path

from summary import FIGURES

from embedsearch.fields import FIELDS

ROOT = Path(__file__).resolve().parents[1]


def test_timed_run_writes_its_figures_as_markdown_to_the_file_and_appends_them_to_the_step_summary(tmp_path):
    step_summary = tmp_path / "step_summary.md"
    step_summary.write_text("an earlier step's summary\n")
    markdown = tmp_path / "figures.md"
    command = [sys.executable, "-m", "pytest", "--benchmark", "-q", "-p", "no:cacheprovider", "--no-perf-memory",
               "--benchmark-max-time=0.05", f"--benchmark-json={tmp_path / 'run.json'}", f"--perf-markdown={markdown}",
               "perf/bench_calibration.py::test_copy_bandwidth"]
    completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                               env={**os.environ, "GITHUB_STEP_SUMMARY": str(step_summary)})
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    assert f"figures as Markdown: {markdown}" in completed.stdout
    lines = markdown.read_text().splitlines()
    assert lines[:4] == ["### embedsearch figures (tier default)", "", "| benchmark | median ms | GB/s |",
                         "| --- | ---: | ---: |"]
    assert len(lines) == 5 and re.fullmatch(r"\| `test_copy_bandwidth` \| \d+\.\d\d \| \d+\.\d \|", lines[4])
    assert step_summary.read_text() == "an earlier step's summary\n" + markdown.read_text()


def test_every_figure_of_the_summary_is_a_declared_field():
    assert {key for key, _, _ in FIGURES} - FIELDS.keys() == set()
