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

import os
from concurrent.futures import ThreadPoolExecutor
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


def _check(similarity: str, shrink: float) -> None:
    if similarity not in SIMILARITIES:
        raise InvalidInput(
            "itemknn.similarity", f"'{similarity}' is not one of {', '.join(SIMILARITIES)}"
        )
    if shrink < 0:
        raise InvalidInput("itemknn.shrink", f"must not be negative, got {shrink}")


def _similarity_values(
    both: np.ndarray, a: np.ndarray, b: np.ndarray, similarity: str, shrink: float
) -> np.ndarray:
    """Similarity of pairs with `both` common users and `a`, `b` users each (module doc)."""
    both = both.astype(np.float64)
    if similarity == "cosine":
        denominator = np.sqrt(a * b) + shrink
    elif similarity == "jaccard":
        denominator = a + b - both + shrink
    else:
        denominator = a * b + shrink
    return np.divide(both, denominator, out=np.zeros_like(both), where=denominator > 0)


def item_similarity(counts: sp.csr_matrix, similarity: str, shrink: float = 0.0) -> sp.csr_matrix:
    """Similarity with a zero diagonal, from a co-occurrence matrix (see the module doc)."""
    _check(similarity, shrink)
    coo = sp.coo_matrix(counts)
    off = coo.row != coo.col
    row, col = coo.row[off], coo.col[off]
    per_item = counts.diagonal().astype(np.float64)
    values = _similarity_values(coo.data[off], per_item[row], per_item[col], similarity, shrink)
    out = sp.csr_matrix((values.astype(np.float32), (row, col)), shape=counts.shape)
    out.eliminate_zeros()
    return out


BLOCK_CELLS = 1 << 25  # items x items cells per block (a 128 MB float32 dense block at most)


def similarity_top_n(
    interactions: sp.csr_matrix,
    similarity: str,
    neighbours: int,
    shrink: float = 0.0,
    threads: int = 2,
) -> sp.csr_matrix:
    """Each item's `neighbours` most similar items: `item_similarity` cut to a row top-n.

    Built in blocks of item rows (co-occurrence, similarity, top-n per block, `threads` blocks
    at a time: scipy and numpy release the GIL), so memory stays near one block per thread
    instead of the whole items x items co-occurrence, which at 20M events x 100k items is
    ~1e9 entries (15 GB, 134 s before this; see benchmarks/results/train.json now). A block
    whose rows are dense (popular items) is ranked with a dense argpartition, a sparse one by
    sorting its entries.
    """
    _check(similarity, shrink)
    binary = sp.csr_matrix(interactions, dtype=np.float32, copy=True)
    binary.eliminate_zeros()
    binary.data[:] = 1.0
    by_item = binary.T.tocsr()
    per_item = np.diff(by_item.indptr).astype(np.float64)
    n_items = binary.shape[1]
    block_rows = max(1, BLOCK_CELLS // max(n_items, 1))

    def block(start: int) -> sp.csr_matrix:
        stop = min(start + block_rows, n_items)
        coo = sp.coo_matrix(by_item[start:stop] @ binary)
        off = coo.row + start != coo.col
        row, col = coo.row[off], coo.col[off]
        values = _similarity_values(
            coo.data[off], per_item[row + start], per_item[col], similarity, shrink
        ).astype(np.float32)
        shape = (stop - start, n_items)
        if len(values) > 8 * neighbours * shape[0] and neighbours < n_items:
            dense = np.zeros(shape, dtype=np.float32)
            dense[row, col] = values
            top = np.argpartition(-dense, neighbours - 1, axis=1)[:, :neighbours]
            kept = np.take_along_axis(dense, top, axis=1)
            rows = np.repeat(np.arange(shape[0]), neighbours)
            out = sp.csr_matrix((kept.ravel(), (rows, top.ravel())), shape=shape)
            out.eliminate_zeros()
            out.sort_indices()
            return out
        return _top_per_row(sp.csr_matrix((values, (row, col)), shape=shape), neighbours)

    starts = range(0, n_items, block_rows)
    if threads > 1 and len(starts) > 1:
        with ThreadPoolExecutor(threads) as pool:
            blocks = list(pool.map(block, starts))
    else:
        blocks = [block(start) for start in starts]
    if not blocks:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    return sp.csr_matrix(sp.vstack(blocks, format="csr"), dtype=np.float32)


class ItemKNNModel(Recommender):
    name = "itemknn"

    def __init__(
        self, similarity: str = "cosine", neighbours: int = 100, shrink: float = 0.0
    ) -> None:
        super().__init__()
        _check(similarity, shrink)
        if neighbours < 1:
            raise InvalidInput("itemknn.neighbours", f"must be at least 1, got {neighbours}")
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
        self.weights = similarity_top_n(
            interactions, self.similarity, self.neighbours, self.shrink, threads=min(2, os.cpu_count() or 1)
        )

    def scorer(self) -> ItemItemScorer:
        return ItemItemScorer(self.weights)

    def params(self) -> dict[str, Any]:
        return {"similarity": self.similarity, "neighbours": self.neighbours, "shrink": self.shrink}
