from embedsearch.study import STUDY_K, main_row


def test_main_row_is_the_study_k_else_the_largest_k():
    rows = [{"k": 5}, {"k": STUDY_K}, {"k": 50}]
    assert main_row(rows) is rows[1]
    assert main_row([{"k": 5}, {"k": 30}, {"k": 10}]) == {"k": 30}
