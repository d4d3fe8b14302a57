"""Theoretical index bytes: what an index's stored vectors should take, to set beside its measured bytes."""

from __future__ import annotations

import re

from embedsearch.memory import IVF_FLAT_SPEC


def theoretical_index_bytes(spec: str, n: int, d: int) -> int | None:
    """Bytes the stored vectors should take: Flat 4d, HNSW{M} 4d + 8M, IVF lists + 8-byte ids, PQ m*nbits/8.

    Coarse centroids (IVF: 4 * nlist * d) are included; PQ codebooks are not. None for other specs.
    """
    if spec in ("Flat", "TorchFlat"):
        return 4 * d * n
    if match := re.fullmatch(r"HNSW(\d+)", spec):
        return n * (4 * d + 8 * int(match.group(1)))
    if match := IVF_FLAT_SPEC.fullmatch(spec):
        return n * (4 * d + 8) + 4 * int(match.group(1)) * d
    if match := re.fullmatch(r"IVF(\d+),PQ(\d+)(?:x(\d+))?(?:fs)?", spec):
        nlist, m, nbits = int(match.group(1)), int(match.group(2)), int(match.group(3) or 8)
        return n * (m * nbits // 8 + 8) + 4 * nlist * d
    return None
