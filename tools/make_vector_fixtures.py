"""Write the tiny vector-file fixtures (fixtures/vectors/, a few KB each) from deterministic data.

One small data set (N=120 database vectors, NQ=10 queries, D=8, 4 classes) in every format the
readers take, with exact ground truth computed here in float64. Rerun after changing it:
`python tools/make_vector_fixtures.py`; the files are committed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from embedsearch.vectors import write_bin_groundtruth, write_vectors  # noqa: E402

FOLDER = Path(__file__).resolve().parents[1] / "fixtures" / "vectors"
N, NQ, D, K, CLASSES = 120, 10, 8, 10, 4


def exact(database: np.ndarray, queries: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(distances, ids) of the K nearest: squared L2 ascending, or inner product descending; float64."""
    database, queries = database.astype(np.float64), queries.astype(np.float64)
    if metric == "ip":
        scores = queries @ database.T
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :K]
    else:
        scores = ((queries[:, None, :] - database[None]) ** 2).sum(-1)
        ids = np.argsort(scores, axis=1, kind="stable")[:, :K]
    return np.take_along_axis(scores, ids, axis=1), ids


def main() -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = np.arange(N + NQ) % CLASSES
    centres = rng.standard_normal((CLASSES, D)) * 3
    points = (centres[labels] + rng.standard_normal((N + NQ, D))).astype(np.float32)
    database, queries = points[:N], points[N:]
    l2_distances, l2_ids = exact(database, queries, "l2")

    # texmex: X_base / X_query / X_groundtruth (ids only); .bvecs holds bytes
    write_vectors(FOLDER / "tiny_base.fvecs", database)
    write_vectors(FOLDER / "tiny_query.fvecs", queries)
    write_vectors(FOLDER / "tiny_groundtruth.ivecs", l2_ids)
    as_bytes = np.clip(np.round(points * 10 + 128), 0, 255).astype(np.uint8)
    write_vectors(FOLDER / "tiny.bvecs", as_bytes)
    # big-ann: header n, d; ground truth n, k, ids, distances
    write_vectors(FOLDER / "tiny.fbin", database)
    write_vectors(FOLDER / "tiny_query.fbin", queries)
    write_bin_groundtruth(FOLDER / "tiny_groundtruth.bin", l2_distances, l2_ids)
    write_vectors(FOLDER / "tiny.u8bin", as_bytes)
    write_vectors(FOLDER / "tiny.i8bin", (as_bytes.astype(np.int16) - 128).astype(np.int8))
    write_vectors(FOLDER / "tiny.ibin", l2_ids)
    # NumPy
    write_vectors(FOLDER / "tiny.npy", points)
    np.savez(FOLDER / "tiny.npz", train=database, test=queries, neighbors=l2_ids)
    normalized = points / np.linalg.norm(points, axis=1, keepdims=True)
    np.savez(FOLDER / "tiny_embeddings.npz", train_vectors=normalized[:N], train_labels=labels[:N],
             val_vectors=normalized[N:], val_labels=labels[N:], n_classes=CLASSES, weights="none (fixture)",
             key="{}")
    # ann-benchmarks: angular (ground truth by cosine, distances 1 - cos as ann-benchmarks stores them)
    cosine, cosine_ids = exact(normalized[:N], normalized[N:], "ip")
    with h5py.File(FOLDER / "tiny-angular.hdf5", "w") as file:
        file.attrs["distance"] = "angular"
        file.create_dataset("train", data=database)
        file.create_dataset("test", data=queries)
        file.create_dataset("neighbors", data=cosine_ids.astype(np.int32))
        file.create_dataset("distances", data=(1 - cosine).astype(np.float32))
    with h5py.File(FOLDER / "tiny-euclidean.hdf5", "w") as file:
        file.attrs["distance"] = "euclidean"
        file.create_dataset("train", data=database)
        file.create_dataset("test", data=queries)
        file.create_dataset("neighbors", data=l2_ids.astype(np.int32))
        file.create_dataset("distances", data=np.sqrt(l2_distances).astype(np.float32))
    for path in sorted(FOLDER.iterdir()):
        print(f"{path.stat().st_size:6d}  {path.relative_to(FOLDER.parents[1])}")


if __name__ == "__main__":
    main()
