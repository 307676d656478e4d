"""EASE: the closed-form linear item-item autoencoder (Steck, WWW 2019).

B = argmin ||X - X B||^2 + l2 ||B||^2 subject to diag(B) = 0, solved as P = (X^T X + l2 I)^-1,
B = -P / diag(P) column-wise, diag(B) = 0. Scores are `history @ B` (an `item_item` scorer).

The interactions are first divided by the root-mean-square of their stored values, so `l2`
means the same for a binary log and for one whose purchases weigh 8 (a raw l2 would be ~100x
too weak there: on the synthetic store nDCG@10 0.14 instead of 0.19).

Two ways to solve, chosen by catalogue size:

- dense (n_items <= max_items): one Cholesky inverse of the n x n Gram matrix, float64;
  memory about 2 x 8 n^2 bytes (20k items: 6.4 GB), time O(n^3).
- local (larger catalogues): for every target item j, the same ridge regression restricted to
  j's `local_neighbours` strongest co-occurring items N(j):  B[N(j), j] solves
  (G[N, N] + l2 I) b = G[N, j]. That is EASE with each column's support limited to N(j) (the
  zero-diagonal constraint holds because j is not in N(j)); memory O(n x neighbours), time
  O(n x neighbours^3), and W comes out sparse. Items with no co-occurrence get an empty column.
  Measured: on MovieLens 100k (forced local, 200 neighbours) precision@10 0.4115 against the
  dense 0.4195; on a 100k-item synthetic catalogue (60k items with events, 474k interactions)
  about 2 minutes on 2 cores, 5.3M weights (benchmarks/results/quality.json, "scale").

Item-degree normalisation (`column_norm` = beta, `column_restore` = gamma, both 0 by default:
plain EASE): the model is fitted on X D^-beta, with D the items' degrees (the Gram diagonal,
sum of squared strengths per item), and W = D^-beta B D^gamma, so a history is scored on the
same scale as the input and the scores of item j are multiplied by d_j^gamma. Dividing columns
by a power of their degree keeps popular items from dominating the regression (Steck's
normalised EASE); gamma < beta leaves a net d^(gamma - beta) popularity discount. `l2` stays
relative to the mean Gram diagonal, so it means the same for any beta. Measured on MovieLens
100k (5 split seeds x 3 ALS seeds, in the default blend): see recsvc/defaults/train.toml.

`top_n` > 0 keeps only the top_n largest |weights| of each row of B (each history item suggests
at most top_n items), so a user's scoring touches |history| x top_n weights whatever the
catalogue size.
"""

from __future__ import annotations

import os
from typing import Any, Self

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from recsvc.config import TrainConfig
from recsvc.errors import InvalidInput
from recsvc.scorers import ItemItemScorer
from training.models.base import Recommender


def ease_dense(interactions: sp.csr_matrix, l2: float) -> np.ndarray:
    """Dense EASE weights (float32 items x items) from a users x items matrix."""
    gram = np.asarray((interactions.T @ interactions).toarray(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += l2
    # Cholesky inverse of the symmetric positive definite Gram matrix, in place
    factor, info = scipy.linalg.lapack.dpotrf(gram, lower=False, overwrite_a=True)
    if info != 0:
        raise InvalidInput("ease.l2", f"Gram matrix is not positive definite (l2={l2})")
    inverse, info = scipy.linalg.lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise InvalidInput("ease.l2", f"cannot invert the Gram matrix (l2={l2})")
    inverse = np.triu(inverse) + np.triu(inverse, 1).T
    weights = inverse / -np.diag(inverse)[None, :]
    np.fill_diagonal(weights, 0.0)
    return weights.astype(np.float32)


def _top_per_row(matrix: sp.csr_matrix, n: int, magnitude: bool = False) -> sp.csr_matrix:
    """Keep the n largest stored values (by |value| when `magnitude`) of each row."""
    matrix = sp.csr_matrix(matrix)
    matrix.eliminate_zeros()
    counts = np.diff(matrix.indptr)
    if n <= 0 or counts.max(initial=0) <= n:
        return matrix
    rows = np.repeat(np.arange(matrix.shape[0]), counts)
    key = np.abs(matrix.data) if magnitude else matrix.data
    order = np.lexsort((matrix.indices, -key, rows))
    rank = np.arange(len(order)) - np.repeat(matrix.indptr[:-1], counts)
    keep = np.zeros(len(order), dtype=bool)
    keep[order[rank < n]] = True
    out = sp.csr_matrix(
        (matrix.data[keep], (rows[keep], matrix.indices[keep])), shape=matrix.shape
    )
    out.sort_indices()
    return out


def top_n_rows(weights: np.ndarray | sp.csr_matrix, n: int) -> sp.csr_matrix:
    """Sparse float32 copy of `weights` keeping the n largest |values| of each row.

    By magnitude, not value: EASE's negative weights carry as much as its positive ones (on
    MovieLens 100k, keeping the 200 largest by value loses 4% precision@10, by magnitude 1%).
    """
    if sp.issparse(weights):
        return _top_per_row(sp.csr_matrix(weights, dtype=np.float32), n, magnitude=True)
    dense = np.asarray(weights, dtype=np.float32)
    n = min(n, dense.shape[1])
    columns = np.argpartition(-np.abs(dense), n - 1, axis=1)[:, :n]
    values = np.take_along_axis(dense, columns, axis=1)
    rows = np.repeat(np.arange(dense.shape[0]), n)
    out = sp.csr_matrix((values.ravel(), (rows, columns.ravel())), shape=dense.shape)
    out.eliminate_zeros()
    out.sort_indices()
    return out


PRUNE_FACTOR = 2


def ease_local(interactions: sp.csr_matrix, l2: float, neighbours: int) -> sp.csr_matrix:
    """Sparse EASE: each column solved on its `neighbours` strongest co-occurring items.

    The Gram blocks come from a Gram matrix pruned to each item's PRUNE_FACTOR x `neighbours` strongest
    co-occurrences (kept symmetric): weak co-occurrences between two neighbours count as 0,
    which bounds the cost of one block by PRUNE_FACTOR x neighbours^2 whatever the item's popularity.
    """
    gram = sp.csr_matrix(interactions.T @ interactions, dtype=np.float64)
    n_items = gram.shape[0]
    diagonal = gram.diagonal()
    off = gram.copy()
    off.setdiag(0.0)
    off.eliminate_zeros()
    partners = _top_per_row(off, neighbours)  # row j: j's strongest partners, N(j)
    pruned = _top_per_row(off, PRUNE_FACTOR * neighbours)
    pruned = pruned.maximum(pruned.T).tocsr()
    pruned.sort_indices()
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for j in range(n_items):
        support = partners.indices[partners.indptr[j] : partners.indptr[j + 1]]
        if len(support) == 0:
            continue
        block = pruned[support][:, support].toarray()
        block[np.diag_indices_from(block)] = diagonal[support] + l2
        target = partners.data[partners.indptr[j] : partners.indptr[j + 1]]  # G[N(j), j]
        try:
            solution = scipy.linalg.solve(block, target, assume_a="pos", check_finite=False)
        except np.linalg.LinAlgError:
            solution = np.linalg.lstsq(block, target, rcond=None)[0]
        rows.append(support)
        cols.append(np.full(len(support), j, dtype=np.int64))
        vals.append(solution)
    if not rows:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    weights = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_items, n_items),
        dtype=np.float32,
    )
    weights.eliminate_zeros()
    return weights


def degree_scaling(
    interactions: sp.csr_matrix, column_norm: float, l2: float
) -> tuple[sp.csr_matrix, np.ndarray, float]:
    """(X D^-column_norm, item degrees d, l2 for the scaled Gram matrix).

    d is the Gram diagonal (sum of squared strengths per item), 1 where an item has none (its
    column is empty whatever the scale). l2 is rescaled by mean(scaled diagonal) / mean(d), so
    it keeps its meaning relative to the data.
    """
    squares = interactions.multiply(interactions)
    degree = np.asarray(squares.sum(axis=0), dtype=np.float64).ravel()
    present = degree > 0
    degree = np.where(present, degree, 1.0)
    if column_norm == 0.0:
        return interactions, degree, l2
    scale = degree**-column_norm
    scaled = sp.csr_matrix(interactions @ sp.diags(scale), dtype=np.float64)
    if present.any():
        l2 *= float(np.sum(degree[present] ** (1.0 - 2.0 * column_norm)) / np.sum(degree[present]))
    return scaled, degree, l2


def rescale_weights(
    weights: np.ndarray | sp.csr_matrix, degree: np.ndarray, column_norm: float,
    column_restore: float,
) -> np.ndarray | sp.csr_matrix:  # fmt: skip
    """D^-column_norm W D^column_restore: scores a raw history on the scale of the fit."""
    if column_norm == 0.0 and column_restore == 0.0:
        return weights
    rows = (degree**-column_norm).astype(np.float32)
    cols = (degree**column_restore).astype(np.float32)
    if sp.issparse(weights):
        out = sp.csr_matrix(sp.diags(rows) @ weights @ sp.diags(cols), dtype=np.float32)
        out.sort_indices()
        return out
    dense = np.asarray(weights, dtype=np.float32)
    dense *= rows[:, None]
    dense *= cols[None, :]
    return dense


class EASEModel(Recommender):
    name = "ease"

    def __init__(
        self,
        l2: float = 300.0,
        max_items: int = 20000,
        top_n: int = 0,
        local_neighbours: int = 200,
        column_norm: float = 0.0,
        column_restore: float = 0.0,
    ) -> None:
        super().__init__()
        if l2 <= 0:
            raise InvalidInput("ease.l2", f"must be positive, got {l2}")
        if top_n < 0:
            raise InvalidInput("ease.top_n", f"must not be negative, got {top_n}")
        if local_neighbours < 1:
            raise InvalidInput("ease.local_neighbours", "must be at least 1")
        if not 0.0 <= column_norm <= 1.0:
            raise InvalidInput("ease.column_norm", f"must be between 0 and 1, got {column_norm}")
        if not -1.0 <= column_restore <= 1.0:
            raise InvalidInput(
                "ease.column_restore", f"must be between -1 and 1, got {column_restore}"
            )
        self.l2 = float(l2)
        self.max_items = int(max_items)
        self.top_n = int(top_n)
        self.local_neighbours = int(local_neighbours)
        self.column_norm = float(column_norm)
        self.column_restore = float(column_restore)
        self.solver = ""
        self.weights: np.ndarray | sp.csr_matrix = np.zeros((0, 0), dtype=np.float32)

    @classmethod
    def from_config(cls, config: TrainConfig, **overrides: Any) -> Self:
        params: dict[str, Any] = {
            "l2": config.ease.l2,
            "max_items": config.ease.max_items,
            "top_n": config.ease.top_n,
            "local_neighbours": config.ease.local_neighbours,
            "column_norm": config.ease.column_norm,
            "column_restore": config.ease.column_restore,
        }
        params.update(overrides)
        return cls(**params)

    def _fit(self, interactions: sp.csr_matrix) -> None:
        # l2 is relative to strengths scaled to a root-mean-square of 1, so one l2 suits event
        # weights of any scale (purchase = 8 makes raw Gram entries ~100x a binary log's)
        if interactions.nnz:
            rms = float(np.sqrt(np.mean(np.square(interactions.data, dtype=np.float64))))
            if rms > 0:
                interactions = interactions / rms
        scaled, degree, l2 = degree_scaling(interactions, self.column_norm, self.l2)
        n_items = interactions.shape[1]
        if n_items <= self.max_items:
            self.solver = "dense"
            weights: np.ndarray | sp.csr_matrix = ease_dense(scaled, l2)
        else:
            self.solver = "local"
            weights = ease_local(scaled, l2, self.local_neighbours)
        weights = rescale_weights(weights, degree, self.column_norm, self.column_restore)
        if self.top_n > 0:
            weights = top_n_rows(weights, self.top_n)
        self.weights = weights

    def scorer(self) -> ItemItemScorer:
        return ItemItemScorer(self.weights)

    def params(self) -> dict[str, Any]:
        return {
            "l2": self.l2,
            "max_items": self.max_items,
            "top_n": self.top_n,
            "local_neighbours": self.local_neighbours,
            "column_norm": self.column_norm,
            "column_restore": self.column_restore,
            "solver": self.solver,
        }
