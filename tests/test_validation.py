import numpy as np
import pytest

from embedsearch.validation import MAX_SQUARED_NORM, as_vectors, check_positive_number


def test_rows_that_underflow_to_zero_in_float32_are_refused():
    # float64 scaled by 1e-50 becomes all zeros in float32, and every id would tie
    rows = np.random.default_rng(0).standard_normal((4, 8)) * 1e-50
    rows[0] = 0.0  # a row that was zero stays acceptable
    with pytest.raises(ValueError, match=r"queries: 3 non-zero row\(s\) have a float32 squared norm of 0 \(first at row 1"
                                         r".*after float32 conversion"):
        as_vectors(rows, "queries")
    tiny_float32 = np.full((1, 8), 1e-30, dtype=np.float32)  # representable, but its squares are not
    with pytest.raises(ValueError, match="non-zero row"):
        as_vectors(tiny_float32, "vectors")
    np.testing.assert_array_equal(as_vectors(np.zeros((2, 3)), "vectors"), np.zeros((2, 3), dtype=np.float32))


def test_squared_norms_up_to_the_limit_are_accepted_and_beyond_it_refused():
    at_limit = np.zeros((2, 4))
    at_limit[:, 0] = np.sqrt(MAX_SQUARED_NORM)
    assert as_vectors(at_limit, "vectors").shape == (2, 4)
    beyond = at_limit * 1.001
    with pytest.raises(ValueError, match=r"vectors: 2 row\(s\) have a squared L2 norm above 1.33e\+36 \(first at row 0, "
                                         r"squared norm 1.33e\+36\)"):
        as_vectors(beyond, "vectors")
    overflowing = np.full((1, 4), 1e19, dtype=np.float32)  # each square is finite in float32, their sum is not
    with pytest.raises(ValueError, match="squared norm 4e\\+38"):
        as_vectors(overflowing, "vectors")
    with pytest.raises(ValueError, match="NaN or inf.*after float32 conversion"):
        as_vectors(np.full((1, 4), 1e39), "vectors")  # finite in float64, inf in float32


@pytest.mark.parametrize("value, error", [("0.07", TypeError), (None, TypeError), (True, TypeError),
                                          (0, ValueError), (-1.0, ValueError), (float("inf"), ValueError)])
def test_check_positive_number_names_the_value(value, error):
    with pytest.raises(error, match=f"temperature={value!r}: expected a finite number > 0"):
        check_positive_number(value, "temperature")
    assert check_positive_number(np.float32(0.5), "temperature") == 0.5
