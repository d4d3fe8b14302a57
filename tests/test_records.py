"""perf/records.py: a benchmark records only the extra_info fields declared in embedsearch.fields."""

import pytest
from records import record

from embedsearch.fields import FIELDS


class Benchmark:
    name = "test_x[case]"

    def __init__(self):
        self.extra_info = {}


def test_record_stores_declared_fields_with_threads_and_versions():
    benchmark = Benchmark()
    record(benchmark, 2, spec="Flat", n=10, recall=1.0)
    assert benchmark.extra_info["spec"] == "Flat" and benchmark.extra_info["threads"] == 2
    assert set(benchmark.extra_info) <= FIELDS.keys() and "faiss" in benchmark.extra_info["versions"]


def test_record_refuses_a_field_that_is_not_declared():
    benchmark = Benchmark()
    with pytest.raises(ValueError, match=r"\['recal'\] of test_x\[case\]: not declared in embedsearch.fields"):
        record(benchmark, 1, spec="Flat", recal=1.0)
    assert benchmark.extra_info == {}
