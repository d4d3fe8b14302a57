"""The suite's own options (root conftest.py)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("option", ["--benchmark-storage", "--perf-memray-dir"])
def test_unwritable_output_folders_are_refused_before_the_run(tmp_path, option):
    # an unwritable storage let the timed run complete, then failed with a raw NotADirectoryError
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    completed = subprocess.run([sys.executable, "-m", "pytest", "--benchmark", "-p", "no:cacheprovider", "--co", "-q",
                                f"{option}={in_the_way / 'sub'}", "perf/bench_knn.py"],
                               cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == pytest.ExitCode.USAGE_ERROR, completed.stdout + completed.stderr
    assert f"{option}='{in_the_way / 'sub'}': '{in_the_way}' is a file" in completed.stderr
    assert "checked before the run" in completed.stderr


def test_an_unwritable_benchmark_json_is_refused_before_the_run(tmp_path):
    # pytest-benchmark opens --benchmark-json when it parses the options (argparse.FileType)
    path = tmp_path / "missing" / "run.json"
    completed = subprocess.run([sys.executable, "-m", "pytest", "--benchmark", "-p", "no:cacheprovider", "--co", "-q",
                                f"--benchmark-json={path}", "perf/bench_knn.py"],
                               cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == pytest.ExitCode.USAGE_ERROR and f"can't open '{path}'" in completed.stderr
