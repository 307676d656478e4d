"""Top-k ranking metrics: pure functions over ranked item lists and held-out items.

Definitions follow Microsoft Recommenders' `python_evaluation` (binary relevance, every user
given to a function counts, averaged over users):

- precision@k: hits in the top k / k (a list shorter than k still divides by k);
- recall@k: hits in the top k / number of held-out items;
- nDCG@k: sum of 1/log2(1 + rank) over hits, divided by the same sum over the first
  min(held-out, k) ranks;
- MAP@k (their `map_at_k`): sum over hit ranks r of (hits up to r) / r, divided by
  min(held-out, k);
- MAP (their `map`, the column of their published benchmark table): the same sum divided by the
  number of held-out items;
- hit rate@k: share of users with at least one hit;
- catalog coverage: distinct items recommended to anyone / catalogue size.

`ranked` is an (n_users, k) int array of item indexes, best first, padded with -1; `relevant`
is a users x items CSR whose stored entries are the held-out items (values ignored). A user
with no held-out items scores 0 on every metric; the evaluator skips such users beforehand.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def hit_mask(ranked: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Boolean (n_users, k): is the item at each rank one of that user's held-out items."""
    ranked = np.asarray(ranked, dtype=np.int64)
    if ranked.ndim != 2:
        raise ValueError("ranked must be a 2-d array (users x ranks)")
    relevant = sp.csr_matrix(relevant)
    if relevant.shape[0] != ranked.shape[0]:
        raise ValueError(
            f"ranked has {ranked.shape[0]} rows but relevant has {relevant.shape[0]}"
        )
    n_items = relevant.shape[1]
    rows = np.repeat(np.arange(relevant.shape[0], dtype=np.int64), np.diff(relevant.indptr))
    truth = np.unique(rows * n_items + relevant.indices.astype(np.int64))
    valid = (ranked >= 0) & (ranked < n_items)
    codes = np.arange(ranked.shape[0], dtype=np.int64)[:, None] * n_items + ranked
    return valid & np.isin(codes, truth) & _first_occurrence(ranked)


def _first_occurrence(ranked: np.ndarray) -> np.ndarray:
    """True where an item appears for the first time in its row (a repeat is never a hit)."""
    if ranked.shape[1] == 0:
        return np.zeros(ranked.shape, dtype=bool)
    order = np.argsort(ranked, axis=1, kind="stable")
    ordered = np.take_along_axis(ranked, order, axis=1)
    first_sorted = np.ones(ranked.shape, dtype=bool)
    first_sorted[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    first = np.empty_like(first_sorted)
    np.put_along_axis(first, order, first_sorted, axis=1)
    return first


def _relevant_counts(relevant: sp.csr_matrix) -> np.ndarray:
    return np.diff(sp.csr_matrix(relevant).indptr).astype(np.float64)


def _top(ranked: np.ndarray, k: int) -> np.ndarray:
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    return np.asarray(ranked)[:, :k]


def precision_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> float:
    """Mean over users of hits in the top k divided by k."""
    hits = hit_mask(_top(ranked, k), relevant)
    return float(hits.sum(axis=1).mean() / k) if len(hits) else 0.0


def recall_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> float:
    """Mean over users of hits in the top k divided by the user's held-out items."""
    hits = hit_mask(_top(ranked, k), relevant).sum(axis=1)
    counts = _relevant_counts(relevant)
    per_user = np.divide(hits, counts, out=np.zeros(len(counts)), where=counts > 0)
    return float(per_user.mean()) if len(per_user) else 0.0


def ndcg_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> float:
    """Mean over users of binary-relevance DCG@k over the ideal DCG@k."""
    hits = hit_mask(_top(ranked, k), relevant)
    if not len(hits):
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = (hits * discounts[: hits.shape[1]]).sum(axis=1)
    ideal_cumulative = np.concatenate([[0.0], np.cumsum(discounts)])
    counts = np.minimum(_relevant_counts(relevant), k).astype(np.int64)
    idcg = ideal_cumulative[counts]
    per_user = np.divide(dcg, idcg, out=np.zeros(len(dcg)), where=idcg > 0)
    return float(per_user.mean())


def _precision_sums(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> np.ndarray:
    """Per user: sum over hit ranks r of (hits up to r) / r."""
    hits = hit_mask(_top(ranked, k), relevant)
    ranks = np.arange(1, hits.shape[1] + 1, dtype=np.float64)
    return (np.cumsum(hits, axis=1) / ranks * hits).sum(axis=1)


def map_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> float:
    """MAP@k as Microsoft Recommenders' `map_at_k`: normalised by min(held-out, k)."""
    sums = _precision_sums(ranked, relevant, k)
    norm = np.minimum(_relevant_counts(relevant), k)
    per_user = np.divide(sums, norm, out=np.zeros(len(sums)), where=norm > 0)
    return float(per_user.mean()) if len(per_user) else 0.0


def map_all_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> float:
    """MAP of the top k normalised by all held-out items (Microsoft Recommenders' `map`)."""
    sums = _precision_sums(ranked, relevant, k)
    norm = _relevant_counts(relevant)
    per_user = np.divide(sums, norm, out=np.zeros(len(sums)), where=norm > 0)
    return float(per_user.mean()) if len(per_user) else 0.0


def hit_rate_at_k(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> float:
    """Share of users with at least one held-out item in their top k."""
    hits = hit_mask(_top(ranked, k), relevant)
    return float(hits.any(axis=1).mean()) if len(hits) else 0.0


def catalog_coverage(ranked: np.ndarray, n_items: int, k: int | None = None) -> float:
    """Distinct items in anyone's top k (all columns when k is None) / n_items."""
    if n_items <= 0:
        raise ValueError(f"n_items must be positive, got {n_items}")
    top = np.asarray(ranked) if k is None else _top(ranked, k)
    items = np.unique(top[(top >= 0) & (top < n_items)])
    return float(len(items) / n_items)


METRICS = ("precision", "recall", "ndcg", "map", "map_all", "hit_rate", "coverage")


def all_metrics(ranked: np.ndarray, relevant: sp.csr_matrix, k: int) -> dict[str, float]:
    """Every metric of this module at k, keyed by the names in METRICS."""
    return {
        "precision": precision_at_k(ranked, relevant, k),
        "recall": recall_at_k(ranked, relevant, k),
        "ndcg": ndcg_at_k(ranked, relevant, k),
        "map": map_at_k(ranked, relevant, k),
        "map_all": map_all_at_k(ranked, relevant, k),
        "hit_rate": hit_rate_at_k(ranked, relevant, k),
        "coverage": catalog_coverage(ranked, relevant.shape[1], k),
    }
