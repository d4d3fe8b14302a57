"""The performance suite's options, declared in one place.

`pytest` runs the unit tests and every benchmark once, untimed (pytest-benchmark disabled), on
the smoke grid. `pytest --benchmark` runs the benchmarks only, timed, on the default grid, and
saves the run (or writes --benchmark-json instead). --perf-gate gates it against a baseline.
pytest-benchmark's own --benchmark-* options keep working in both.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from pytest_benchmark.utils import get_tag

TIERS = ("smoke", "pr", "default", "full")  # perf/tiers.py defines each
DEVICES = ("cpu", "cuda")
PERF = Path(__file__).resolve().parent / "perf"


def device_list(text: str) -> list[str]:
    """--perf-device: a comma list of DEVICES."""
    devices = [name.strip() for name in text.split(",") if name.strip()]
    if not devices or set(devices) - set(DEVICES):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma list from {DEVICES}")
    return devices


def positive_int(text: str) -> int:
    """--perf-threads: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def vector_file(path: str):
    """--perf-data: the file opened as an embedsearch.vectors data set (header and size checked)."""
    from embedsearch.vectors import open_dataset

    try:
        return open_dataset(path)
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("embedsearch", "embedsearch performance suite")
    group.addoption("--benchmark", action="store_true",
                    help="time the perf/ suite (default grid, saved run); without it each benchmark runs once")
    group.addoption("--perf-tier", choices=TIERS, default=None,
                    help="grid size: smoke (seconds), pr (smoke without the Ray Data embedding: embedsearch ab's tier), default (<= 5 min on 2 cores), full (the study's scale); "
                         "default: 'default' with --benchmark, else 'smoke'")
    group.addoption("--perf-device", type=device_list, default="cpu",
                    help="comma-separated devices to include, from cpu,cuda (cuda skips cleanly without a GPU)")
    group.addoption("--no-perf-memory", action="store_true",
                    help="skip the untimed memray memory pass that --benchmark runs after each timing")
    group.addoption("--perf-memray-dir", default=None,
                    help="keep each benchmark's memray capture here, and a flame graph HTML of the largest peak")
    group.addoption("--perf-threads", type=positive_int, default=len(os.sched_getaffinity(0)),
                    help="threads for FAISS (OpenMP) and torch (default: the cores this process may use)")
    group.addoption("--perf-markdown", default=None, metavar="FILE",
                    help="also write the figures summary of a timed run to FILE as Markdown "
                         "(it is appended to $GITHUB_STEP_SUMMARY whenever that is set)")
    group.addoption("--perf-data", type=vector_file, action="append", default=[], metavar="PATH",
                    help="also run the search, build, brute-force, scaling and kNN benchmarks on this vector file "
                         "(ann-benchmarks .hdf5, .fvecs/.bvecs, .fbin/.u8bin/.i8bin, .npy/.npz, embedsearch run "
                         "--embeddings); repeatable")
    group.addoption("--perf-gate", default=None, metavar="BASELINE",
                    help="after the run, gate it against BASELINE (a saved run file, or the newest in a folder): "
                         "suspect timings are rerun once, and a confirmed regression fails the session")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    from suite_stash import BASELINE, SAVE_NAME  # not at import: pytest-benchmark's CLI loads this file without perf/ on sys.path

    # Runs before pytest-benchmark's own pytest_configure reads its options. The suite saves runs
    # itself (perf/conftest.py: atomic, numbered, rounds included), so pytest-benchmark's own
    # --benchmark-save/--benchmark-autosave are taken over; without --benchmark, its timing is off.
    config.stash[SAVE_NAME] = None
    config.stash[BASELINE] = None
    if config.getoption("benchmark"):
        config.stash[SAVE_NAME] = save_name(config)
        config.option.benchmark_save = None
        config.option.benchmark_autosave = False
        set_tier_max_time(config)
        check_output_folders(config)
        if config.getoption("perf_gate"):
            from embedsearch.storage import latest_run

            try:  # loaded now: this run may be saved into the same folder
                config.stash[BASELINE] = latest_run(config.getoption("perf_gate"))
            except (ValueError, FileNotFoundError) as error:
                raise pytest.UsageError(f"--perf-gate={config.getoption('perf_gate')}: {error}") from None
    else:
        config.option.benchmark_disable = True
        if config.getoption("perf_gate"):
            raise pytest.UsageError("--perf-gate needs --benchmark: only a timed run can be gated")


def save_name(config: pytest.Config) -> str | None:
    """The name a timed run is saved under: --benchmark-save, else --benchmark-autosave's tag, else a tag
    (commit and time, pytest-benchmark's) unless --benchmark-json takes the run instead; None: not saved."""
    name = config.getoption("benchmark_save") or config.getoption("benchmark_autosave")
    if name or config.getoption("benchmark_json"):
        return name
    return get_tag()


def set_tier_max_time(config: pytest.Config) -> None:
    """--benchmark-max-time: the tier's (perf/tiers.py: Tier.max_time_s) unless the command line gives one."""
    from tiers import TIERS as GRIDS, tier_name

    seconds = GRIDS[tier_name(config)].max_time_s
    given = any(arg.startswith("--benchmark-max-time") for arg in config.invocation_params.args)
    if seconds is not None and not given:
        config.option.benchmark_max_time = seconds


def check_output_folders(config: pytest.Config) -> None:
    """Refuse, before any timing, folders the run will write into but cannot (--benchmark-json is opened by its parser)."""
    from embedsearch.files import check_writable
    from suite_stash import SAVE_NAME

    folders = {"--perf-memray-dir": config.getoption("perf_memray_dir")}
    storage = config.getoption("benchmark_storage")
    if config.stash[SAVE_NAME] and (storage.startswith("file://") or "://" not in storage):
        folders["--benchmark-storage"] = storage.removeprefix("file://")
    for option, folder in folders.items():
        if folder:
            try:
                check_writable(folder, option, directory=True)
            except ValueError as error:
                raise pytest.UsageError(f"{error} (checked before the run: it would fail only after the timing)") from None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With --benchmark only perf/ runs, so nothing else is even imported: the unit tests import
    torchvision, scikit-learn and sympy, seconds of every start of a timed run or of an
    `embedsearch ab` worker."""
    if config.getoption("benchmark") and not (collection_path == PERF or PERF in collection_path.parents
                                              or collection_path in PERF.parents):
        return True
    return None
