"""Train/test splits of an event log for offline evaluation, without leakage.

Every split works on parallel row arrays (user, item, timestamp) and decides per (user, item)
pair, so a pair seen several times never lands on both sides:

- `random`: per user, a seeded shuffle of the user's distinct items; round((1 - ratio) * n)
  of them train, the rest test (Microsoft Recommenders' `python_stratified_split`).
- `temporal`: one cut time so that the last `ratio` of the rows are at or after it; rows before
  train, rows from it on test. A test pair the user already had before the cut is not a test
  interaction (seen items are never recommended) and is counted, not kept.
- `leave-last`: each user's most recent item is the test; users with a single item stay in
  train only.
- `baskets`: basket completion over time, for logs loaded with the order as the user (e.g.
  Groceries with `--columns user_id=order_id`): the last `ratio` of baskets (by first timestamp,
  else by order of appearance) are test baskets; the models never see them, and at ranking time
  each test basket shows a seeded half of its items and must find the rest.

`split_log` turns a split into a `Split` of users x items matrices: strengths for training
(built with the run's events config), binary held-out items, and the history each user is
scored from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recsvc.config import EventsConfig
from recsvc.errors import InvalidInput
from recsvc.events import EventLog
from recsvc.matrix import event_weights, interaction_matrix

SPLITS = ("random", "temporal", "leave-last", "baskets")


def _check_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise InvalidInput("--test-ratio", f"must be between 0 and 1 (exclusive), got {ratio}")


def _pairs(user: np.ndarray, item: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (user, item) pairs: (pair_user, pair_item, row -> pair index)."""
    user = np.asarray(user, dtype=np.int64)
    item = np.asarray(item, dtype=np.int64)
    width = int(item.max()) + 1 if len(item) else 1
    codes, inverse = np.unique(user * width + item, return_inverse=True)
    return codes // width, codes % width, inverse.reshape(-1)


def _rank_within(groups: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """0-based rank of each element among those of its group, by ascending keys (the first
    key first, ties broken by the next)."""
    order = np.lexsort((*reversed(keys), groups))
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
    sizes = np.diff(np.r_[starts, len(order)])
    rank_sorted = np.arange(len(order)) - np.repeat(starts, sizes)
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = rank_sorted
    return ranks


def random_split(user: np.ndarray, item: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Test mask over rows: per user, a seeded `ratio` of the distinct items (rounded down)."""
    _check_ratio(ratio)
    if len(user) == 0:
        return np.zeros(0, dtype=bool)
    pair_user, _, inverse = _pairs(user, item)
    keys = np.random.default_rng(seed).random(len(pair_user))
    rank = _rank_within(pair_user, keys)
    per_user = np.bincount(pair_user)
    # np.round rounds half to even, as Python's round in the reference implementation
    n_train = np.round((1.0 - ratio) * per_user).astype(np.int64)
    pair_test = rank >= n_train[pair_user]
    return pair_test[inverse]


def temporal_split(timestamp: np.ndarray, ratio: float) -> np.ndarray:
    """Test mask over rows: those at or after the time where the last `ratio` of rows begins.

    Rows sharing the cut timestamp all go to test, so no training row is later than (or as late
    as) any test row.
    """
    _check_ratio(ratio)
    timestamp = np.asarray(timestamp)
    n = len(timestamp)
    if n == 0:
        return np.zeros(0, dtype=bool)
    n_test = max(1, int(round(ratio * n)))
    cut = np.sort(timestamp, kind="stable")[n - n_test]
    test = timestamp >= cut
    if test.all():
        raise InvalidInput(
            "--split", "temporal split impossible: every event has the same timestamp"
        )
    return test


def leave_last_split(user: np.ndarray, item: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Test mask over rows: every row of each user's most recent item (users with one item: none).

    Ties in time go to the later row of the log.
    """
    if len(user) == 0:
        return np.zeros(0, dtype=bool)
    pair_user, _, inverse = _pairs(user, item)
    rows = np.arange(len(user), dtype=np.int64)
    # latest (timestamp, row) per pair, then the latest pair per user
    latest_time = np.full(len(pair_user), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(latest_time, inverse, np.asarray(timestamp, dtype=np.int64))
    latest_row = np.full(len(pair_user), -1, dtype=np.int64)
    at_latest = np.asarray(timestamp, dtype=np.int64) == latest_time[inverse]
    np.maximum.at(latest_row, inverse[at_latest], rows[at_latest])
    rank = _rank_within(pair_user, -latest_time, -latest_row)  # two keys: exact at any size
    per_user = np.bincount(pair_user)
    pair_test = (rank == 0) & (per_user[pair_user] > 1)
    return pair_test[inverse]


def basket_split(
    order: np.ndarray, item: np.ndarray, timestamp: np.ndarray, ratio: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(test basket mask, held-out mask) over rows, for basket completion over time.

    Baskets are ordered by their first timestamp (then by order index); the last `ratio` of
    them are test baskets. In a test basket with at least two distinct items, a seeded half
    (rounded down, at least one) of them is held out; the rest is the history shown at ranking.
    """
    _check_ratio(ratio)
    order = np.asarray(order, dtype=np.int64)
    if len(order) == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
    if (order < 0).any():
        raise InvalidInput("order_id", "basket split needs an order id on every row")
    n_orders = int(order.max()) + 1
    first_time = np.full(n_orders, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_time, order, np.asarray(timestamp, dtype=np.int64))
    present = np.flatnonzero(np.bincount(order, minlength=n_orders) > 0)
    by_time = present[np.lexsort((present, first_time[present]))]
    n_test = max(1, int(round(ratio * len(by_time))))
    is_test_order = np.zeros(n_orders, dtype=bool)
    is_test_order[by_time[len(by_time) - n_test :]] = True
    test_basket = is_test_order[order]

    pair_order, _, inverse = _pairs(order, item)
    keys = np.random.default_rng(seed).random(len(pair_order))
    rank = _rank_within(pair_order, keys)
    size = np.bincount(pair_order)[pair_order]
    pair_held = is_test_order[pair_order] & (size >= 2) & (rank < np.maximum(size // 2, 1))
    return test_basket, pair_held[inverse]


def training_rows(log: EventLog, method: str, ratio: float = 0.25, seed: int = 42) -> np.ndarray:
    """Mask of the rows on the training side of a split (to carve a validation split from)."""
    if method not in SPLITS:
        raise InvalidInput("--split", f"unknown split '{method}' (one of {', '.join(SPLITS)})")
    if method in ("temporal", "leave-last") and not log.has_column.get("timestamp", False):
        raise InvalidInput("--split", f"'{method}' needs a timestamp column in the log")
    if method == "random":
        return ~random_split(log.user, log.item, ratio, seed)
    if method == "temporal":
        return ~temporal_split(log.timestamp, ratio)
    if method == "leave-last":
        return ~leave_last_split(log.user, log.item, log.timestamp)
    time = log.timestamp if log.has_column.get("timestamp", False) else log.user
    test_basket, _ = basket_split(log.user, log.item, time, ratio, seed)
    return ~test_basket


@dataclass(frozen=True)
class Split:
    """Users x items matrices of one split (all with the log's full shape)."""

    train: sp.csr_matrix  # strengths the models are fitted on
    test: sp.csr_matrix  # 1 for each held-out (user, item)
    history: sp.csr_matrix  # what a user is scored from (and what is excluded): train, or a
    # test basket's shown half
    counts: dict[str, int] = field(default_factory=dict)  # what was dropped, and why


def split_log(
    log: EventLog,
    method: str,
    ratio: float = 0.25,
    seed: int = 42,
    events: EventsConfig | None = None,
) -> Split:
    """Split `log` by `method` (one of SPLITS); training strengths use `events` weights."""
    events = events or EventsConfig()
    shape = (len(log.users), len(log.items))
    counts: dict[str, int] = {}
    if method == "baskets":
        return _basket_matrices(log, ratio, seed, events, shape)
    test_rows = ~training_rows(log, method, ratio, seed)

    train_log = log.mask(~test_rows)
    train = interaction_matrix(train_log, event_weights(train_log, events), shape)
    test = _binary(log.user[test_rows], log.item[test_rows], shape)
    seen = test.multiply(train > 0)
    if seen.nnz:
        counts["test pairs already seen in training (dropped)"] = int(seen.nnz)
        test = _drop(test, seen)
    return Split(train=train, test=test, history=train, counts=counts)


def _basket_matrices(
    log: EventLog, ratio: float, seed: int, events: EventsConfig, shape: tuple[int, int]
) -> Split:
    # rows of the matrices are baskets: the log's users must be orders (--columns user_id=...)
    basket = log.user
    time = log.timestamp if log.has_column.get("timestamp", False) else basket
    test_basket, held = basket_split(basket, log.item, time, ratio, seed)
    weights = event_weights(log, events)
    train = interaction_matrix(log.mask(~test_basket), weights[~test_basket], shape)
    shown = test_basket & ~held
    history = interaction_matrix(log.mask(shown), weights[shown], shape)
    history = (train + history).tocsr()
    test = _binary(log.user[held], log.item[held], shape)
    return Split(train=train, test=test, history=history, counts={})


def _binary(user: np.ndarray, item: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    keep = user >= 0
    matrix = sp.csr_matrix(
        (np.ones(int(keep.sum()), dtype=np.float32), (user[keep], item[keep])), shape=shape
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _drop(matrix: sp.csr_matrix, remove: sp.csr_matrix) -> sp.csr_matrix:
    out = (matrix - (remove > 0).astype(np.float32)).tocsr()
    out.eliminate_zeros()
    out.data[:] = 1.0
    return out
