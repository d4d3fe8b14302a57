"""embedsearch.fields: the extra_info fields declared once, and their readers agreeing with the declaration."""

from embedsearch.compare import Thresholds, compare_figures
from embedsearch.fields import FIELDS
from embedsearch.report import HOVER_FIGURES, QUALITY_FIGURES


def test_the_gates_compare_exactly_the_fields_declared_gated():
    base = {name: 1.0 for name in FIELDS}
    current = {name: 2.0 for name in FIELDS}
    compared = {comparison.metric for comparison in compare_figures("x", base, current, Thresholds())}
    assert compared == {field.name for field in FIELDS.values() if field.gated}
    assert compared == {"peak_bytes", "gpu_peak_bytes", "index_bytes", "recall", "top1"}


def test_every_field_the_history_page_shows_is_declared():
    shown = {key for key, *_ in HOVER_FIGURES} | {key for key, _ in QUALITY_FIGURES}
    assert shown - FIELDS.keys() == set()


def test_each_field_is_declared_once_under_its_own_name():
    assert all(name == field.name for name, field in FIELDS.items())
    assert len({field.name for field in FIELDS.values()}) == len(FIELDS)
