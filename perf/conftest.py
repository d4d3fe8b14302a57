"""Fixtures of the performance suite: the tier's grid, cached data and ground truth, built indexes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import faiss
import pytest
import torch

from embedsearch.index import create_index
from harness import CACHE, DataCache, IndexCache
from summary import print_summary
from tiers import TIERS, Tier

CASE_FIXTURES = {  # fixture name -> Tier attribute holding its cases
    "embed_case": "embed", "build_case": "build", "train_case": "build", "search_case": "search",
    "brute_force_case": "brute_force", "knn_case": "knn", "leave_one_out_case": "leave_one_out",
    "end_to_end_case": "end_to_end",
}


def tier_name(config: pytest.Config) -> str:
    """The --perf-tier in force: explicit, else 'default' when timing and 'smoke' when not."""
    return config.getoption("perf_tier") or ("default" if config.getoption("benchmark") else "smoke")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    tier: Tier = TIERS[tier_name(metafunc.config)]
    for fixture, attribute in CASE_FIXTURES.items():
        if fixture in metafunc.fixturenames:
            cases = getattr(tier, attribute)
            if fixture == "train_case":
                cases = [case for case in cases if not create_index(case.spec, case.d).is_trained]
            ids = [case.id if hasattr(case, "id") else "-".join(f"{key}{value}" for key, value in case.items())
                   for case in cases]
            metafunc.parametrize(fixture, cases, ids=ids)
    if "device" in metafunc.fixturenames:
        devices = [name.strip() for name in metafunc.config.getoption("perf_device").split(",") if name.strip()]
        metafunc.parametrize("device", devices, indirect=True)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> str:
    """The device of this case; cuda cases skip cleanly on machines without a GPU."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("cuda: no CUDA device on this machine")
    return request.param


@pytest.fixture(scope="session", autouse=True)
def threads(pytestconfig: pytest.Config) -> int:
    """Set and return the thread count of FAISS (OpenMP) and torch for the whole suite."""
    count = pytestconfig.getoption("perf_threads")
    faiss.omp_set_num_threads(count)
    torch.set_num_threads(count)
    return count


@pytest.fixture(scope="session")
def data() -> DataCache:
    return DataCache(CACHE)


@pytest.fixture(scope="session")
def indexes(data: DataCache) -> IndexCache:
    return IndexCache(data)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is not None and not session.disabled and session.benchmarks:
        print_summary(terminalreporter, session.benchmarks, tier_name(config))
        if config.getoption("perf_memray_dir"):
            write_worst_flamegraph(terminalreporter, session.benchmarks, Path(config.getoption("perf_memray_dir")))


def write_worst_flamegraph(reporter, benchmarks, folder: Path) -> None:
    """Render memray's flame graph HTML of the benchmark with the largest peak."""
    captured = [b for b in benchmarks if "memray_capture" in b.extra_info]
    if not captured:
        return
    worst = max(captured, key=lambda b: b.extra_info["peak_bytes"])
    html = folder / "worst-peak-flamegraph.html"
    html.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "memray", "flamegraph", "-o", str(html), worst.extra_info["memray_capture"]],
                   check=True, capture_output=True)
    reporter.write_line(f"memray captures: {folder}/*.bin; flame graph of the largest peak "
                        f"({worst.name}, {worst.extra_info['peak_bytes'] / 2**20:.1f} MiB): {html}")
