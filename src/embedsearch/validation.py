"""Checks applied once at the public boundary; each error names the value and what was expected."""

from __future__ import annotations

import numpy as np


def as_vectors(array: object, name: str, d: int | None = None) -> np.ndarray:
    """Return `array` as a float32, C-contiguous (n, d) matrix, or raise naming what is wrong.

    Other float dtypes are converted (a float64 buffer is never re-read as float32); integer,
    bool and object arrays are rejected, as are empty arrays, NaN/inf and a wrong width.
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
    vectors = np.ascontiguousarray(array, dtype=np.float32)
    # A row sum is NaN/inf exactly when the row holds NaN/inf: float32 values summed in float64
    # cannot overflow. Costs 8 bytes per row, where isfinite(vectors) would cost n * d bytes.
    finite_rows = np.isfinite(vectors.sum(axis=1, dtype=np.float64))
    if not finite_rows.all():
        bad = np.flatnonzero(~finite_rows)
        raise ValueError(
            f"{name}: {bad.size} row(s) hold NaN or inf (first at row {bad[0]}); "
            f"expected finite values{' (after float32 conversion)' if array.dtype != np.float32 else ''}"
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


def check_k(k: object, n: int, name: str = "k") -> int:
    """Return `k` as int when 1 <= k <= n, else raise."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name}={k!r}: expected an integer")
    if not 1 <= k <= n:
        raise ValueError(f"{name}={k}: expected 1 <= {name} <= {n} (the number of indexed vectors)")
    return int(k)


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """Return `value` when it is one of `choices`, else raise listing them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}: expected one of {', '.join(map(repr, choices))}")
    return value  # type: ignore[return-value]
