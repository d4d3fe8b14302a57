"""kNN classification from search results: majority and DINO-weighted votes, leave-one-out, accuracy."""

from __future__ import annotations

import numpy as np

from .index import Index, TorchFlatBf16Index
from .validation import as_labels, as_vectors, check_choice, check_k, check_positive_number

VOTES = ("majority", "weighted")
DEFAULT_TEMPERATURE = 0.07  # DINO's eval_knn.py default


def similarities(distances: np.ndarray, metric: str) -> np.ndarray:
    """Return cosine similarities from search distances of unit vectors: ip as is, l2 as 1 - d^2/2."""
    check_choice(metric, "metric", ("l2", "ip"))
    return distances if metric == "ip" else 1.0 - 0.5 * distances


def class_scores(neighbor_ids: np.ndarray, neighbor_similarities: np.ndarray, train_labels: np.ndarray,
                 n_classes: int, vote: str = "majority", temperature: float = DEFAULT_TEMPERATURE) -> np.ndarray:
    """Return (nq, n_classes) class scores: majority, the count of neighbours; weighted, the log of
    DINO's vote total sum(exp(sim / T)), -inf for a class without a neighbour.

    The weighted vote is summed in the log domain (logaddexp), so it is exact however large sim / T
    is: exp(sim / T) overflows float64 beyond sim / T = 709. Ids of -1 (no neighbour found by an
    approximate index) cast no vote.
    """
    check_choice(vote, "vote", VOTES)
    neighbor_ids = np.asarray(neighbor_ids)
    if not np.issubdtype(neighbor_ids.dtype, np.integer):
        raise TypeError(f"neighbor_ids: expected integer ids (-1 for no neighbour), got dtype {neighbor_ids.dtype}")
    if neighbor_ids.ndim != 2 or np.shape(neighbor_similarities) != neighbor_ids.shape:
        raise ValueError(
            f"neighbor_ids {neighbor_ids.shape} and neighbor_similarities {np.shape(neighbor_similarities)}: "
            "expected two (nq, k) arrays of the same shape"
        )
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 1:
        raise ValueError(f"n_classes={n_classes!r}: expected a positive integer")
    train_labels = as_labels(train_labels, "train_labels", len(train_labels))
    if train_labels.size and train_labels.max() >= n_classes:
        raise ValueError(f"train_labels: label {train_labels.max()} is not below n_classes={n_classes}")
    if neighbor_ids.size and neighbor_ids.max() >= len(train_labels):
        raise ValueError(
            f"neighbor_ids: id {neighbor_ids.max()} is out of range for {len(train_labels)} train labels"
        )
    if neighbor_ids.size and neighbor_ids.min() < -1:
        raise ValueError(f"neighbor_ids: id {neighbor_ids.min()} is below -1; expected ids >= 0, or -1 for no neighbour")
    if vote == "weighted":
        temperature = check_positive_number(temperature, "temperature")
    found = neighbor_ids >= 0
    rows = np.broadcast_to(np.arange(neighbor_ids.shape[0])[:, None], neighbor_ids.shape)
    voters = (rows[found], train_labels[neighbor_ids[found]])
    if vote == "majority":
        scores = np.zeros((neighbor_ids.shape[0], n_classes))
        np.add.at(scores, voters, 1.0)
    else:
        scores = np.full((neighbor_ids.shape[0], n_classes), -np.inf)
        log_weights = np.asarray(neighbor_similarities, dtype=np.float64) / temperature
        np.logaddexp.at(scores, voters, log_weights[found])
    return scores


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Return {k: fraction of rows whose label is among the k best classes} (ties: smaller class first)."""
    labels = as_labels(labels, "labels", scores.shape[0])
    ranked = np.argsort(-scores, axis=1, kind="stable")
    return {k: float((ranked[:, :min(k, scores.shape[1])] == labels[:, None]).any(axis=1).mean()) for k in ks}


def leave_one_out_search(index: Index, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Search the index's own vectors for k neighbours each, never returning a point as its own neighbour.

    `vectors` must be the vectors added to `index`, in order (row i has id i). Searches k + 1 and
    drops the row's own id; where an exact duplicate pushed it out, the farthest result goes.
    A TorchFlat.bf16 index holding exactly `vectors` searches them with `all_pairs_search`, which
    scores each pair once (same results as searching them as queries).
    """
    vectors = as_vectors(vectors, "vectors", index.d)
    if vectors.shape[0] != index.ntotal:
        raise ValueError(
            f"vectors: expected the {index.ntotal} vectors held by the index (row i = id i), got {vectors.shape[0]}"
        )
    k = check_k(k, index.ntotal - 1)
    if isinstance(index, TorchFlatBf16Index) and index.stores(vectors):
        distances, ids = index.all_pairs_search(k + 1)
    else:
        distances, ids = index.search(vectors, k + 1)
    drop = ids == np.arange(len(ids))[:, None]
    drop[~drop.any(axis=1), -1] = True
    keep = ~drop
    return distances[keep].reshape(len(ids), k), ids[keep].reshape(len(ids), k)
