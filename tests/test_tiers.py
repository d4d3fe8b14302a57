from embedsearch.index import BF16_SPEC, EXACT_SPECS
from tiers import TIERS, file_grid, search_grid


def test_each_index_is_searched_in_one_run_of_cases():
    """Cases over one index are consecutive, so the index cache builds each index once per tier."""
    for name, tier in TIERS.items():
        for cases in (tier.search, tier.scaling):
            indexes = [case.index for case in cases]
            runs = [index for position, index in enumerate(indexes) if position == 0 or indexes[position - 1] != index]
            assert len(runs) == len(set(runs)), name


def test_default_tier_sweeps_approximate_indexes_at_k10_and_exact_search_at_every_k():
    search = TIERS["default"].search
    embedding = [case for case in search if case.index.data == "embedding" and case.index.d == 384]
    assert {case.k for case in embedding if case.index.spec in EXACT_SPECS} == {1, 10, 100}
    assert {case.k for case in embedding if case.index.spec not in EXACT_SPECS} == {10}
    assert {case.index.spec for case in embedding} == {"Flat", "TorchFlat", "IVF256,Flat", "HNSW32", "IVF256,PQ48x4fs"}
    hard = [case for case in search if case.index.data == "hard"]
    assert {case.index.spec for case in hard} == {case.index.spec for case in embedding} and {case.k for case in hard} == {10}


def test_default_tier_keeps_bf16_beside_flat_in_brute_force_and_leave_one_out():
    tier = TIERS["default"]
    assert [(case.index.spec, case.index.n, case.index.d, case.nq) for case in tier.brute_force] == [
        ("Flat", 100_000, 384, 1000), ("TorchFlat", 100_000, 384, 1000), (BF16_SPEC, 100_000, 384, 1000)]
    assert [case.spec for case in tier.leave_one_out] == ["Flat", BF16_SPEC]
    assert any(case.precision == "bf16" for case in tier.embed)


def test_search_grid_sweeps_every_k_unless_told():
    every_k = search_grid([(20_000, 64)], [1, 10], 100)
    k10 = search_grid([(20_000, 64)], [1, 10], 100, sweep_ks=[10])
    assert {(case.id, case.k) for case in k10} == {(case.id, case.k) for case in every_k
                                                  if case.k == 10 or case.index.spec in EXACT_SPECS}
    assert len(every_k) == 2 * 2 + 2 * (4 + 3 + 3)


def test_a_file_is_swept_at_the_k_its_tier_sweeps_at():
    grid = file_grid("default", "vectors.npy-0123456789ab", 50_000, 64, 500, "ip", None)
    assert {case.k for case in grid["search"] if case.params} == {10}
    assert {case.k for case in grid["search"] if not case.params} == {1, 10, 100}
    assert {case.nq for case in grid["search"]} == {500}
