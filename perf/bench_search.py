"""Search: spec x N x d x k x nq x device; queries/s, GFLOP/s for exact search, recall@k for approximate."""

from search_runner import run_search_case


def test_search(benchmark, search_case, device, data, indexes, threads, pytestconfig):
    run_search_case(benchmark, search_case, device, data, indexes, threads, "search", pytestconfig)
