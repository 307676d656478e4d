"""Splits: no test interaction in training, the temporal split never trains on the future,
ratios as documented, seeded and repeatable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsvc.config import EventsConfig
from recsvc.errors import InvalidInput
from recsvc.events import EventLog, LoadOptions, load_events
from training.evaluation.splits import (
    basket_split,
    leave_last_split,
    random_split,
    split_log,
    temporal_split,
    training_rows,
)


def make_log(tmp_path: Path, rows: list[tuple[str, str, int]], name: str = "log.csv") -> EventLog:
    path = tmp_path / name
    path.write_text(
        "user_id,item_id,timestamp\n" + "".join(f"{u},{i},{t}\n" for u, i, t in rows)
    )
    log, _ = load_events(path, LoadOptions())
    return log


def random_log(seed: int, users: int = 40, items: int = 30, rows: int = 600) -> list[tuple[str, str, int]]:
    rng = np.random.default_rng(seed)
    return [
        (f"u{rng.integers(users)}", f"i{rng.integers(items)}", int(1_700_000_000 + rng.integers(10**6)))
        for _ in range(rows)
    ]


def pairs(matrix) -> set[tuple[int, int]]:  # noqa: ANN001
    coo = matrix.tocoo()
    return set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))


def test_random_split_holds_out_a_quarter_of_each_users_distinct_items() -> None:
    user = np.repeat(np.arange(3), [4, 8, 21])
    item = np.concatenate([np.arange(4), np.arange(8), np.arange(21)])
    test = random_split(user, item, 0.25, seed=7)
    per_user = np.bincount(user[test], minlength=3)
    # train keeps round(0.75 n): 3 of 4, 6 of 8, 16 of 21 (15.75 rounds to 16)
    assert per_user.tolist() == [1, 2, 5]


def test_random_split_is_seeded() -> None:
    user = np.repeat(np.arange(20), 10)
    item = np.tile(np.arange(10), 20)
    first = random_split(user, item, 0.25, seed=1)
    assert np.array_equal(first, random_split(user, item, 0.25, seed=1))
    assert not np.array_equal(first, random_split(user, item, 0.25, seed=2))


def test_repeated_pairs_never_straddle_the_random_split() -> None:
    # every (user, item) appears three times: all copies must land on the same side
    user = np.repeat(np.repeat(np.arange(10), 8), 3)
    item = np.repeat(np.tile(np.arange(8), 10), 3)
    test = random_split(user, item, 0.25, seed=3)
    codes = user * 100 + item
    assert not set(codes[test]) & set(codes[~test])


def test_temporal_split_never_trains_on_the_future() -> None:
    rng = np.random.default_rng(0)
    timestamp = rng.integers(0, 50, 1000)  # many ties
    test = temporal_split(timestamp, 0.25)
    assert timestamp[~test].max() < timestamp[test].min()
    # at least the last quarter, more only by the rows tied with the cut
    assert test.sum() >= 250
    cut = timestamp[test].min()
    assert test.sum() - (timestamp == cut).sum() < 250


def test_temporal_split_needs_more_than_one_instant() -> None:
    with pytest.raises(InvalidInput, match="same timestamp"):
        temporal_split(np.zeros(10), 0.25)


def test_leave_last_holds_out_each_users_latest_item() -> None:
    user = np.array([0, 0, 0, 1, 1, 2])
    item = np.array([5, 6, 5, 7, 8, 9])
    timestamp = np.array([10, 20, 30, 50, 40, 60])
    test = leave_last_split(user, item, timestamp)
    # user 0's latest event is item 5 (t=30): both rows of item 5 go to test; user 2 has one item
    assert test.tolist() == [True, False, True, True, False, False]


def test_leave_last_ties_go_to_the_later_row_whatever_the_times() -> None:
    # times large enough that time x rows no longer fits a float's 53 bits
    n = 20
    user = np.r_[0, 0, np.arange(1, n - 1)]
    item = np.r_[5, 6, np.arange(7, n + 5)]
    timestamp = np.full(n, 2**50, dtype=np.int64)
    test = leave_last_split(user, item, timestamp)
    assert test[:2].tolist() == [False, True]


def test_ratio_out_of_range_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="--test-ratio"):
        random_split(np.array([0]), np.array([0]), 1.0, seed=1)


@pytest.mark.parametrize("method", ["random", "temporal", "leave-last"])
def test_split_log_has_no_leakage(tmp_path: Path, method: str) -> None:
    log = make_log(tmp_path, random_log(5))
    split = split_log(log, method, 0.25, seed=9, events=EventsConfig())
    assert split.test.nnz > 0
    assert not pairs(split.train) & pairs(split.test)
    assert split.history is split.train


def test_temporal_matrices_drop_test_pairs_already_bought_and_count_them(tmp_path: Path) -> None:
    rows = [("a", "x", 1), ("a", "y", 2), ("b", "x", 3), ("a", "x", 10), ("a", "z", 11)]
    log = make_log(tmp_path, rows)
    split = split_log(log, "temporal", 0.4, seed=0)
    a, x, z = log.users.get("a"), log.items.get("x"), log.items.get("z")
    assert pairs(split.test) == {(a, z)}
    assert (a, x) in pairs(split.train)
    assert split.counts == {"test pairs already seen in training (dropped)": 1}


def test_basket_split_hides_test_baskets_from_training(tmp_path: Path) -> None:
    rows = [(f"o{o}", f"i{(o * 7 + j) % 13}", o) for o in range(40) for j in range(4)]
    log = make_log(tmp_path, rows)
    split = split_log(log, "baskets", 0.25, seed=2)
    trained = set(np.flatnonzero(np.diff(split.train.indptr) > 0).tolist())
    tested = set(np.flatnonzero(np.diff(split.test.indptr) > 0).tolist())
    assert len(tested) == 10
    assert not trained & tested
    # the last baskets in time are the test ones
    assert {log.users.id_of(u) for u in tested} == {f"o{o}" for o in range(30, 40)}
    # a test basket shows half of its items and hides the other half
    assert not pairs(split.history) & pairs(split.test)
    for basket in tested:
        assert split.history[basket].nnz == 2 and split.test[basket].nnz == 2


def test_basket_split_counts_baskets_not_rows() -> None:
    order = np.array([0, 0, 0, 1, 2, 2, 3, 3])
    item = np.array([1, 2, 3, 1, 4, 5, 6, 7])
    timestamp = np.array([0, 0, 0, 1, 2, 2, 3, 3])
    test_basket, held = basket_split(order, item, timestamp, 0.5, seed=1)
    assert test_basket.tolist() == [False] * 4 + [True] * 4
    assert held[4:].sum() == 2 and not held[:4].any()


def test_training_rows_is_the_complement_of_the_test_side(tmp_path: Path) -> None:
    log = make_log(tmp_path, random_log(8))
    keep = training_rows(log, "random", 0.25, seed=4)
    assert np.array_equal(~keep, random_split(log.user, log.item, 0.25, seed=4))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.1, 0.25, 0.5]))
def test_random_split_property_no_pair_on_both_sides(seed: int, ratio: float) -> None:
    rng = np.random.default_rng(seed)
    user = rng.integers(0, 15, 300)
    item = rng.integers(0, 25, 300)
    test = random_split(user, item, ratio, seed)
    codes = user * 100 + item
    assert not set(codes[test]) & set(codes[~test])
    for u in np.unique(user):
        distinct = len(np.unique(item[user == u]))
        held = len(np.unique(item[(user == u) & test]))
        assert held == distinct - int(np.round((1 - ratio) * distinct))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([0.1, 0.25, 0.5]))
def test_temporal_split_property(seed: int, ratio: float) -> None:
    timestamp = np.random.default_rng(seed).integers(0, 1000, 200)
    if len(np.unique(timestamp)) < 2:
        return
    test = temporal_split(timestamp, ratio)
    assert timestamp[~test].max() < timestamp[test].min()
