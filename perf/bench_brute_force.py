"""Brute force side by side: FAISS Flat and the torch backend on the same data, same group."""

from search_runner import run_search_case


def test_brute_force(benchmark, brute_force_case, device, data, indexes, threads, pytestconfig):
    run_search_case(benchmark, brute_force_case, device, data, indexes, threads, "brute-force", pytestconfig)
