"""The suite's own options (root conftest.py)."""

import importlib.util
import json
import re
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


@pytest.mark.parametrize("option, message", [
    ("--perf-device=cpu,gpu", "argument --perf-device: 'cpu,gpu': expected a comma list from ('cpu', 'cuda')"),
    ("--perf-threads=0", "argument --perf-threads: '0': expected a positive integer"),
])
def test_bad_option_values_are_refused_by_their_converters(option, message):
    completed = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--co", "-q", option,
                                "tests/test_device.py"], cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == pytest.ExitCode.USAGE_ERROR and message in completed.stderr, completed.stderr


def root_conftest():
    """The root conftest.py as a module of its own (pytest has one named `conftest` already)."""
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Options:
    """A pytest config's getoption over the given pytest-benchmark options."""

    def __init__(self, **options):
        self.options = {"benchmark_save": None, "benchmark_autosave": None, "benchmark_json": None, **options}

    def getoption(self, name):
        return self.options[name]


def test_a_timed_run_is_saved_under_the_name_given_else_a_generated_tag_unless_json_takes_it():
    save_name = root_conftest().save_name
    assert save_name(Options(benchmark_save="autosave")) == "autosave"  # a name like any other
    assert save_name(Options(benchmark_autosave="abc_20261125_120000")) == "abc_20261125_120000"
    assert save_name(Options(benchmark_json="run.json")) is None
    assert save_name(Options(benchmark_json="run.json", benchmark_save="named")) == "named"
    assert re.fullmatch(r"\w+_\d{8}_\d{6}(_uncommited-changes)?", save_name(Options()))  # pytest-benchmark's tag


@pytest.mark.parametrize("options, max_time", [
    ([], 0.5),  # the default tier's (perf/tiers.py)
    (["--perf-tier=pr"], 1.0),  # pytest-benchmark's own default: the A/B gate's tier is unchanged
    (["--benchmark-max-time=0.25"], 0.25),  # the command line wins
])
def test_a_timed_run_takes_the_tiers_max_time_unless_the_command_line_gives_one(tmp_path, options, max_time):
    output = tmp_path / "run.json"
    completed = subprocess.run([sys.executable, "-m", "pytest", "--benchmark", "-p", "no:cacheprovider", "-q",
                                "--no-perf-memory", f"--benchmark-json={output}", *options,
                                "perf/bench_calibration.py::test_copy_bandwidth"],
                               cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    [run] = json.loads(output.read_text())["benchmarks"]
    assert float(run["options"]["max_time"]) == max_time


def test_a_timed_run_collects_perf_only_without_importing_the_unit_tests_timm_or_ray():
    """Each `embedsearch ab` worker collects the suite: timm (with torchvision) and Ray took 3-4 s of its start."""
    script = ("import sys, pytest; code = pytest.main(['--benchmark', '--co', '-q', '-p', 'no:cacheprovider', "
              "'--perf-tier=smoke']); print('unit test modules imported:', sorted(m for m in sys.modules "
              "if m.startswith('test_'))); print('heavy modules imported:', sorted(m for m in sys.modules "
              "if m.split('.')[0] in ('timm', 'torchvision', 'ray'))); sys.exit(code)")
    completed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    ids = [line for line in completed.stdout.splitlines() if "::" in line]
    assert ids and all(line.startswith("perf/bench_") for line in ids), completed.stdout
    assert "unit test modules imported: []" in completed.stdout
    assert "heavy modules imported: []" in completed.stdout
