"""Fixtures of the performance suite: the tier's grid, cached data and ground truth, built indexes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import faiss
import pytest
import torch

from embedsearch.compare import ComparisonError, format_report
from embedsearch.fields import BANDWIDTH_GBS, GFLOPS, MEMRAY_CAPTURE, PEAK_BYTES
from embedsearch.gate import gate, rerun_suite
from embedsearch.stats import scaling_exponents
from embedsearch.storage import Run, save_run
from embedsearch.index import create_index
from embedsearch.vectors import VectorDataset
from data_cache import CACHE, DataCache
from index_cache import IndexCache
from planted_slowdown import planted_slowdown, slow_down
from suite_stash import BASELINE, SAVE_NAME
from summary import print_summary, write_markdown_summary
from tiers import TIERS, Tier, file_grid, tier_name

CASE_FIXTURES = {  # fixture name -> Tier attribute holding its cases
    "embed_case": "embed", "build_case": "build", "train_case": "build", "search_case": "search",
    "brute_force_case": "brute_force", "knn_case": "knn", "leave_one_out_case": "leave_one_out",
    "end_to_end_case": "end_to_end", "scaling_case": "scaling",
    "distributed_search_case": "distributed_search", "distributed_embed_case": "distributed_embed",
}
GATE_LINES = pytest.StashKey[list]()  # what sessionfinish saved and gated, printed in the terminal summary
CALIBRATION_FIGURES = {"test_matmul_gflops": (GFLOPS, "matmul_gflops"), "test_copy_bandwidth": (BANDWIDTH_GBS, "copy_gbs")}


def data_files(config: pytest.Config) -> dict[str, VectorDataset]:
    """The --perf-data data sets by label (opened as the options were parsed), their computed ground truth cached in CACHE."""
    files = {dataset.label: dataset for dataset in config.getoption("perf_data")}
    for dataset in files.values():
        dataset.cache_dir = CACHE
    return files


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    tier: Tier = TIERS[tier_name(metafunc.config)]
    file_grids = [file_grid(tier_name(metafunc.config), label, dataset.n, dataset.d, dataset.nq, dataset.metric,
                            dataset.n_classes) for label, dataset in data_files(metafunc.config).items()]
    for fixture, attribute in CASE_FIXTURES.items():
        if fixture in metafunc.fixturenames:
            cases = getattr(tier, attribute) + [case for grid in file_grids for case in grid.get(attribute, [])]
            if fixture == "train_case":
                cases = [case for case in cases if not create_index(case.spec, case.d).is_trained]
            ids = [case.id if hasattr(case, "id") else "-".join(f"{key}{value}" for key, value in case.items())
                   for case in cases]
            metafunc.parametrize(fixture, cases, ids=ids)
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", metafunc.config.getoption("perf_device"), indirect=True)


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


@pytest.fixture
def benchmark(benchmark, request: pytest.FixtureRequest):
    """pytest-benchmark's fixture; with $EMBEDSEARCH_PLANTED_SLOWDOWN, every timed call but calibration is slowed."""
    fraction = planted_slowdown()
    if fraction and request.node.path.name != "bench_calibration.py":
        return slow_down(benchmark, fraction)
    return benchmark


@pytest.fixture(scope="session")
def data(pytestconfig: pytest.Config) -> DataCache:
    return DataCache(CACHE, data_files(pytestconfig))


@pytest.fixture(scope="session")
def indexes(data: DataCache) -> IndexCache:
    return IndexCache(data)


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    """Add the machine's calibration figures and the suite's own record (tier, threads, GPUs, scaling exponents)."""
    calibration = {}
    for bench in output_json["benchmarks"]:
        function = bench["name"].split("[")[0]
        if function in CALIBRATION_FIGURES and CALIBRATION_FIGURES[function][0] in bench["extra_info"]:
            key, name = CALIBRATION_FIGURES[function]
            calibration[name] = bench["extra_info"][key]
    output_json["machine_info"]["calibration"] = calibration
    output_json["embedsearch"] = {
        "tier": tier_name(config), "threads": config.getoption("perf_threads"),
        "devices": config.getoption("perf_device"),
        "data_files": [str(dataset.path.resolve()) for dataset in config.getoption("perf_data")],  # the gate's rerun
        "planted_slowdown": planted_slowdown(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "faiss_gpus": faiss.get_num_gpus(),
        "scaling": scaling_exponents(output_json["benchmarks"]),
    }


def run_json(config: pytest.Config, session) -> dict:
    """This run as pytest-benchmark JSON, every round included, through the same hooks its own saving uses."""
    machine_info = session.get_machine_info()
    commit_info = config.hook.pytest_benchmark_generate_commit_info(config=config)
    config.hook.pytest_benchmark_update_commit_info(config=config, commit_info=commit_info)
    output_json = config.hook.pytest_benchmark_generate_json(
        config=config, benchmarks=session.benchmarks, include_data=True, machine_info=machine_info,
        commit_info=commit_info)
    config.hook.pytest_benchmark_update_json(config=config, benchmarks=session.benchmarks, output_json=output_json)
    return output_json


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Save the run atomically and, with --perf-gate, gate it; a confirmed regression fails the session."""
    config = session.config
    benchmark_session = getattr(config, "_benchmarksession", None)
    if benchmark_session is None or benchmark_session.disabled or not benchmark_session.benchmarks:
        return
    save_name, baseline = config.stash[SAVE_NAME], config.stash[BASELINE]
    if not (save_name or baseline):
        return
    run = Run(run_json(config, benchmark_session))
    if save_name:
        run.path = save_run(run.data, benchmark_session.storage.get(""), save_name)
        config.stash[GATE_LINES] = [f"saved run: {run.path}"]
    if baseline:
        lines = config.stash.setdefault(GATE_LINES, [])
        lines.append(f"embedsearch gate against {baseline.label}")
        try:
            report = gate(baseline, run, rerun=lambda current, names: rerun_suite(current, names, config.rootpath))
        except ComparisonError as error:  # nothing comparable: a usage error, as `embedsearch gate` exits 2
            lines.append(f"embedsearch gate: error: {error}")
            session.exitstatus = pytest.ExitCode.USAGE_ERROR
            return
        lines.append(format_report(report))
        if report.regressions and session.exitstatus == 0:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables: the figures and the gate come last
def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is not None and not session.disabled and session.benchmarks:
        print_summary(terminalreporter, session.benchmarks, tier_name(config))
        write_markdown_summary(terminalreporter, session.benchmarks, tier_name(config),
                               config.getoption("perf_markdown"))
        for line in config.stash.get(GATE_LINES, []):  # the saved run and the gate, last
            terminalreporter.write_line(line)
        if config.getoption("perf_memray_dir"):
            write_worst_flamegraph(terminalreporter, session.benchmarks, Path(config.getoption("perf_memray_dir")))


def write_worst_flamegraph(reporter, benchmarks, folder: Path) -> None:
    """Render memray's flame graph HTML of the benchmark with the largest peak."""
    captured = [b for b in benchmarks if MEMRAY_CAPTURE in b.extra_info]
    if not captured:
        return
    worst = max(captured, key=lambda b: b.extra_info[PEAK_BYTES])
    html = folder / "worst-peak-flamegraph.html"
    html.unlink(missing_ok=True)
    subprocess.run([sys.executable, "-m", "memray", "flamegraph", "-o", str(html), worst.extra_info[MEMRAY_CAPTURE]],
                   check=True, capture_output=True)
    reporter.write_line(f"memray captures: {folder}/*.bin; flame graph of the largest peak "
                        f"({worst.name}, {worst.extra_info[PEAK_BYTES] / 2**20:.1f} MiB): {html}")
