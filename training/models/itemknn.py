"""Item-kNN, SAR-style: item-item similarity from co-occurrence, scores = history @ W.

Co-occurrence counts distinct users: C = B^T B with B the binary users x items matrix, so C[i, i]
is how many users have item i and C[i, j] how many have both. Similarity (Microsoft SAR's
choices, with an optional shrinkage term s in the denominator that damps pairs seen rarely):

- cosine:  C_ij / (sqrt(C_ii C_jj) + s)
- jaccard: C_ij / (C_ii + C_jj - C_ij + s)
- lift:    C_ij / (C_ii C_jj + s)

Each item keeps its `neighbours` most similar items (row top-n), so W is sparse and a user's
scoring touches |history| x neighbours weights. The user's side is the weighted history (event
types, recency, ratings), as SAR's affinity matrix.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from recsvc.config import TrainConfig
from recsvc.errors import InvalidInput
from recsvc.scorers import ItemItemScorer
from training.models.base import Recommender
from training.models.ease import _top_per_row

SIMILARITIES = ("cosine", "jaccard", "lift")


def cooccurrence(interactions: sp.csr_matrix) -> sp.csr_matrix:
    """Items x items count of users who have both items (diagonal: users per item)."""
    binary = sp.csr_matrix(interactions, dtype=np.float32, copy=True)
    binary.eliminate_zeros()
    binary.data[:] = 1.0
    counts = sp.csr_matrix(binary.T @ binary)
    counts.sort_indices()
    return counts


def item_similarity(counts: sp.csr_matrix, similarity: str, shrink: float = 0.0) -> sp.csr_matrix:
    """Similarity with a zero diagonal, from a co-occurrence matrix (see the module doc)."""
    if similarity not in SIMILARITIES:
        raise InvalidInput(
            "itemknn.similarity", f"'{similarity}' is not one of {', '.join(SIMILARITIES)}"
        )
    if shrink < 0:
        raise InvalidInput("itemknn.shrink", f"must not be negative, got {shrink}")
    coo = sp.coo_matrix(counts)
    off = coo.row != coo.col
    row, col = coo.row[off], coo.col[off]
    both = coo.data[off].astype(np.float64)
    per_item = counts.diagonal().astype(np.float64)
    a, b = per_item[row], per_item[col]
    if similarity == "cosine":
        denominator = np.sqrt(a * b) + shrink
    elif similarity == "jaccard":
        denominator = a + b - both + shrink
    else:
        denominator = a * b + shrink
    values = np.divide(both, denominator, out=np.zeros_like(both), where=denominator > 0)
    out = sp.csr_matrix((values.astype(np.float32), (row, col)), shape=counts.shape)
    out.eliminate_zeros()
    return out


class ItemKNNModel(Recommender):
    name = "itemknn"

    def __init__(
        self, similarity: str = "cosine", neighbours: int = 100, shrink: float = 0.0
    ) -> None:
        super().__init__()
        if similarity not in SIMILARITIES:
            raise InvalidInput(
                "itemknn.similarity", f"'{similarity}' is not one of {', '.join(SIMILARITIES)}"
            )
        if neighbours < 1:
            raise InvalidInput("itemknn.neighbours", f"must be at least 1, got {neighbours}")
        if shrink < 0:
            raise InvalidInput("itemknn.shrink", f"must not be negative, got {shrink}")
        self.similarity = similarity
        self.neighbours = int(neighbours)
        self.shrink = float(shrink)
        self.weights = sp.csr_matrix((0, 0), dtype=np.float32)

    @classmethod
    def from_config(cls, config: TrainConfig, **overrides: Any) -> Self:
        params: dict[str, Any] = {
            "similarity": config.itemknn.similarity,
            "neighbours": config.itemknn.neighbours,
            "shrink": config.itemknn.shrink,
        }
        params.update(overrides)
        return cls(**params)

    def _fit(self, interactions: sp.csr_matrix) -> None:
        similarity = item_similarity(cooccurrence(interactions), self.similarity, self.shrink)
        self.weights = sp.csr_matrix(_top_per_row(similarity, self.neighbours), dtype=np.float32)

    def scorer(self) -> ItemItemScorer:
        return ItemItemScorer(self.weights)

    def params(self) -> dict[str, Any]:
        return {"similarity": self.similarity, "neighbours": self.neighbours, "shrink": self.shrink}
