"""Ranking metrics against hand-computed cases, and properties every ranking must satisfy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from training.evaluation.metrics import (
    all_metrics,
    catalog_coverage,
    hit_rate_at_k,
    map_all_at_k,
    map_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)

N_ITEMS = 12


def truth(*rows: set[int], n_items: int = N_ITEMS) -> sp.csr_matrix:
    data = [(u, i) for u, items in enumerate(rows) for i in sorted(items)]
    users = [u for u, _ in data]
    items = [i for _, i in data]
    return sp.csr_matrix((np.ones(len(data)), (users, items)), shape=(len(rows), n_items))


# user 0: ranks 2 and 4 hit, 3 relevant items; user 1: ranks 1 and 2 hit, 4 relevant (more than k)
RANKED = np.array([[1, 2, 3, 4], [5, 1, 7, -1]])
RELEVANT = truth({2, 4, 9}, {1, 5, 8, 9})
LOG2 = math.log2


def test_precision_divides_by_k_even_for_short_lists() -> None:
    assert precision_at_k(RANKED, RELEVANT, 4) == pytest.approx((2 / 4 + 2 / 4) / 2)
    assert precision_at_k(RANKED, RELEVANT, 2) == pytest.approx((1 / 2 + 2 / 2) / 2)


def test_recall_divides_by_all_held_out_items() -> None:
    assert recall_at_k(RANKED, RELEVANT, 4) == pytest.approx((2 / 3 + 2 / 4) / 2)
    assert recall_at_k(RANKED, RELEVANT, 1) == pytest.approx((0 / 3 + 1 / 4) / 2)


def test_ndcg_by_hand() -> None:
    user0 = (1 / LOG2(3) + 1 / LOG2(5)) / (1 + 1 / LOG2(3) + 1 / LOG2(4))
    user1 = (1 + 1 / LOG2(3)) / (1 + 1 / LOG2(3) + 1 / LOG2(4) + 1 / LOG2(5))
    assert ndcg_at_k(RANKED, RELEVANT, 4) == pytest.approx((user0 + user1) / 2)
    # at k=2 the ideal list has two hits for both users
    user0_k2 = (1 / LOG2(3)) / (1 + 1 / LOG2(3))
    assert ndcg_at_k(RANKED, RELEVANT, 2) == pytest.approx((user0_k2 + 1.0) / 2)


def test_map_at_k_normalises_by_min_of_held_out_and_k() -> None:
    # user 0: precision at hit ranks 1/2 and 2/4, over min(3, 4) = 3
    # user 1: 1/1 and 2/2, over min(4, 4) = 4 at k=4, over min(4, 2) = 2 at k=2
    assert map_at_k(RANKED, RELEVANT, 4) == pytest.approx(((0.5 + 0.5) / 3 + 2.0 / 4) / 2)
    assert map_at_k(RANKED, RELEVANT, 2) == pytest.approx(((0.5) / 2 + 2.0 / 2) / 2)


def test_map_all_normalises_by_all_held_out_items() -> None:
    assert map_all_at_k(RANKED, RELEVANT, 2) == pytest.approx((0.5 / 3 + 2.0 / 4) / 2)


def test_hit_rate_and_coverage() -> None:
    assert hit_rate_at_k(RANKED, RELEVANT, 1) == pytest.approx(0.5)
    assert hit_rate_at_k(RANKED, RELEVANT, 2) == pytest.approx(1.0)
    # distinct items 1, 2, 3, 4, 5, 7 (padding ignored) out of 12
    assert catalog_coverage(RANKED, N_ITEMS) == pytest.approx(6 / 12)
    assert catalog_coverage(RANKED, N_ITEMS, k=1) == pytest.approx(2 / 12)


def test_a_repeated_item_counts_once() -> None:
    ranked = np.array([[3, 3, 3]])
    relevant = truth({3, 4})
    assert precision_at_k(ranked, relevant, 3) == pytest.approx(1 / 3)
    assert recall_at_k(ranked, relevant, 3) == pytest.approx(1 / 2)


def test_user_without_held_out_items_scores_zero() -> None:
    ranked = np.array([[1, 2], [1, 2]])
    relevant = truth({1}, set())
    metrics = all_metrics(ranked, relevant, 2)
    assert metrics["recall"] == pytest.approx(0.5)
    assert metrics["ndcg"] == pytest.approx(0.5)


def test_bad_shapes_and_k_are_rejected() -> None:
    with pytest.raises(ValueError, match="rows"):
        precision_at_k(np.array([[1]]), truth({1}, {2}), 1)
    with pytest.raises(ValueError, match="positive"):
        precision_at_k(RANKED, RELEVANT, 0)


@st.composite
def rankings(draw: st.DrawFn) -> tuple[np.ndarray, sp.csr_matrix, int]:
    n_users = draw(st.integers(1, 6))
    k = draw(st.integers(1, 6))
    rows = []
    held_out = []
    for _ in range(n_users):
        ranked = draw(st.lists(st.integers(0, N_ITEMS - 1), min_size=0, max_size=k, unique=True))
        rows.append(ranked + [-1] * (k - len(ranked)))
        held_out.append(draw(st.sets(st.integers(0, N_ITEMS - 1), min_size=1, max_size=8)))
    return np.array(rows, dtype=np.int64), truth(*held_out), k


@settings(max_examples=60, deadline=None)
@given(rankings())
def test_every_metric_is_a_share(case: tuple[np.ndarray, sp.csr_matrix, int]) -> None:
    ranked, relevant, k = case
    for name, value in all_metrics(ranked, relevant, k).items():
        assert 0.0 <= value <= 1.0 + 1e-12, name
    assert recall_at_k(ranked, relevant, k) <= hit_rate_at_k(ranked, relevant, k) + 1e-12
    assert map_all_at_k(ranked, relevant, k) <= map_at_k(ranked, relevant, k) + 1e-12


@settings(max_examples=40, deadline=None)
@given(rankings())
def test_the_ideal_ranking_is_perfect(case: tuple[np.ndarray, sp.csr_matrix, int]) -> None:
    _, relevant, k = case
    ideal = np.full((relevant.shape[0], k), -1, dtype=np.int64)
    counts = np.diff(relevant.indptr)
    for user in range(relevant.shape[0]):
        items = relevant.indices[relevant.indptr[user] : relevant.indptr[user + 1]][:k]
        ideal[user, : len(items)] = items
    assert ndcg_at_k(ideal, relevant, k) == pytest.approx(1.0)
    assert map_at_k(ideal, relevant, k) == pytest.approx(1.0)
    assert hit_rate_at_k(ideal, relevant, k) == pytest.approx(1.0)
    assert precision_at_k(ideal, relevant, k) == pytest.approx(np.mean(np.minimum(counts, k) / k))
    assert recall_at_k(ideal, relevant, k) == pytest.approx(np.mean(np.minimum(counts, k) / counts))


@settings(max_examples=40, deadline=None)
@given(rankings())
def test_metrics_do_not_depend_on_user_order(case: tuple[np.ndarray, sp.csr_matrix, int]) -> None:
    ranked, relevant, k = case
    order = np.random.default_rng(len(ranked)).permutation(len(ranked))
    before = all_metrics(ranked, relevant, k)
    after = all_metrics(ranked[order], relevant[order], k)
    for name in before:
        assert after[name] == pytest.approx(before[name])


@settings(max_examples=40, deadline=None)
@given(rankings())
def test_moving_a_hit_up_never_lowers_ndcg(case: tuple[np.ndarray, sp.csr_matrix, int]) -> None:
    ranked, relevant, k = case
    hits = np.zeros(ranked.shape, dtype=bool)
    for user in range(len(ranked)):
        row = set(relevant.indices[relevant.indptr[user] : relevant.indptr[user + 1]].tolist())
        hits[user] = [item in row for item in ranked[user]]
    # stable sort puts each user's hits first, keeping the rest in order
    order = np.argsort(~hits, axis=1, kind="stable")
    improved = np.take_along_axis(ranked, order, axis=1)
    assert ndcg_at_k(improved, relevant, k) >= ndcg_at_k(ranked, relevant, k) - 1e-12
    assert map_at_k(improved, relevant, k) >= map_at_k(ranked, relevant, k) - 1e-12
    assert precision_at_k(improved, relevant, k) == pytest.approx(precision_at_k(ranked, relevant, k))
