"""Checks applied once at the public boundary; each error names the value and what was expected."""

from __future__ import annotations

import numpy as np


# Largest accepted squared L2 norm of a row. Search and training compute in float32, and their
# largest intermediate is the squared distance between an IVF-PQ residual and a codeword, at most
# (4 * norm)^2 = 16 * 2**120 = 2**124: 16x below float32's maximum (about 2**128 = 3.4e38).
MAX_SQUARED_NORM = 2.0**120  # about 1.3e36: a norm of at most 2**60, about 1.2e18


def as_vectors(array: object, name: str, d: int | None = None) -> np.ndarray:
    """Return `array` as a float32, C-contiguous (n, d) matrix, or raise naming what is wrong.

    Other float dtypes are converted (a float64 buffer is never re-read as float32); integer,
    bool and object arrays are rejected, as are empty arrays, NaN/inf, a wrong width, rows whose
    squared L2 norm exceeds MAX_SQUARED_NORM (their distances would overflow float32) and
    non-zero rows whose float32 squared norm is 0 (they would tie with every other row).
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray of shape (n, d), got {type(array).__name__}")
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array of shape (n, d), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name}: expected a floating-point array (float32 preferred), got dtype {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one row and one column, got shape {array.shape}")
    if d is not None and array.shape[1] != d:
        raise ValueError(f"{name}: expected dimension d={d}, got shape {array.shape}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused below
        vectors = np.ascontiguousarray(array, dtype=np.float32)
    converted = " (after float32 conversion)" if array.dtype != np.float32 else ""
    # One float32 pass, 4 bytes per row: NaN/inf in a row, or an overflowing square, makes its
    # squared norm NaN/inf.
    squared_norms = np.einsum("ij,ij->i", vectors, vectors)
    too_large = ~(squared_norms <= MAX_SQUARED_NORM)
    if too_large.any():
        bad = np.flatnonzero(too_large)
        not_finite = bad[~np.isfinite(vectors[bad]).all(axis=1)]
        if not_finite.size:
            raise ValueError(
                f"{name}: {not_finite.size} row(s) hold NaN or inf (first at row {not_finite[0]}); "
                f"expected finite values{converted}"
            )
        raise ValueError(
            f"{name}: {bad.size} row(s) have a squared L2 norm above {MAX_SQUARED_NORM:.3g} (first at row "
            f"{bad[0]}, squared norm {float(np.square(array[bad[0]], dtype=np.float64).sum()):.3g}); expected "
            f"squared norms <= 2**120 so that distances stay finite in float32"
        )
    zero = np.flatnonzero(squared_norms == 0)
    if zero.size:
        vanished = zero[np.any(array[zero] != 0, axis=1)]
        if vanished.size:
            raise ValueError(
                f"{name}: {vanished.size} non-zero row(s) have a float32 squared norm of 0 (first at row "
                f"{vanished[0]}, largest value {float(np.abs(array[vanished[0]]).max()):.3g}){converted}; "
                f"expected values whose squares are representable in float32 (magnitudes above about 4e-23)"
            )
    return vectors


def as_labels(labels: object, name: str, n: int) -> np.ndarray:
    """Return `labels` as an int64 vector of length `n` with values >= 0, or raise."""
    array = np.asarray(labels)
    if array.ndim != 1 or array.shape[0] != n:
        raise ValueError(f"{name}: expected a 1-D array of {n} labels, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name}: expected integer class labels, got dtype {array.dtype}")
    if n and array.min() < 0:
        raise ValueError(f"{name}: expected labels >= 0, got {array.min()}")
    return array.astype(np.int64, copy=False)


def check_k(k: object, n: int) -> int:
    """Return `k` as int when 1 <= k <= n, else raise."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k={k!r}: expected an integer")
    if not 1 <= k <= n:
        raise ValueError(f"k={k}: expected 1 <= k <= {n} (the number of indexed vectors)")
    return int(k)


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """Return `value` when it is one of `choices`, else raise listing them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(map(repr, choices))}")
    return value  # type: ignore[return-value]


def check_positive_number(value: object, name: str) -> float:
    """Return `value` as float when it is a finite real number > 0, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}={value!r}: expected a finite number > 0")
    if not 0 < value < np.inf:
        raise ValueError(f"{name}={value!r}: expected a finite number > 0")
    return float(value)
