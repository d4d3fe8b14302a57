"""Scaling: one search at growing N, everything else fixed; the run stores the fitted exponent of time vs N."""

from embedsearch.fields import SCALING
from search_runner import run_search_case


def test_scaling(benchmark, scaling_case, device, data, indexes, threads, pytestconfig):
    run_search_case(benchmark, scaling_case, device, data, indexes, threads, "scaling", pytestconfig)
    benchmark.extra_info[SCALING] = True
