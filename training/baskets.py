"""Baskets for association rules: which items were bought together, from an event log.

A basket is one row of an orders x items binary matrix. Purchase rows that carry an order id
(`log.order >= 0`) are grouped by order. Purchase rows without one are grouped per user into
time windows: a window opens at the user's first purchase not yet in a window and holds every
purchase of that user within `window_days` of it (so a window starts at its own first purchase,
not on a calendar boundary); the next purchase after it opens the next window. A log without
timestamps (all zero) therefore gives one basket per user. Rows with neither an order nor a
user cannot be placed and are counted in `Baskets.rows_unplaced`.

If the log has no event_type column (every row is `interaction`), every row counts as a
purchase. Depends on numpy/scipy and `recsvc`; must not import `serving`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recsvc.errors import InvalidInput
from recsvc.events import EventLog

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class Baskets:
    """An orders x items binary matrix and how it was made."""

    matrix: sp.csr_matrix  # baskets x items, uint8 ones; columns are the log's item indexes
    rows_used: int  # purchase rows that went into a basket
    rows_not_purchases: int  # rows of other event types (views, carts, ...)
    rows_unplaced: int  # purchase rows with neither an order id nor a user id
    baskets_from_orders: int
    baskets_from_windows: int

    @property
    def n_baskets(self) -> int:
        return int(self.matrix.shape[0])


def window_ids(user: np.ndarray, timestamp: np.ndarray, window_seconds: float) -> np.ndarray:
    """Window number of each row, unique across users (rows need not be sorted).

    Each window opens at a user's earliest purchase not yet in a window and holds the user's
    purchases less than `window_seconds` after it. Vectorised over users: the loop runs once
    per window of the user with the most windows, not once per basket.
    """
    n = len(user)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((timestamp, user))
    users = user[order]
    times = timestamp[order].astype(np.int64)
    user_start = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    user_end = np.r_[user_start[1:], n]
    rank = np.repeat(np.arange(len(user_start), dtype=np.int64), user_end - user_start)
    # Timestamps are whole seconds, so "t >= start + window" is "t >= start + ceil(window)".
    # A window longer than the log is the same as one exactly as long (and keeps the sums
    # below int64's range, which a huge window would overflow into an endless loop).
    extent = int(times.max() - times.min())
    width = min(max(int(min(math.ceil(window_seconds), 2**62)), 1), extent + 1)
    # Lay users end to end on one time line so one searchsorted finds, for every row, the
    # first row of the same user that falls outside a window opened at that row.
    span = extent + width + 1
    line = (times - times.min()) + rank * span
    opens_next = np.minimum(np.searchsorted(line, line + width, side="left"), user_end[rank])

    is_start = np.zeros(n, dtype=bool)
    frontier, frontier_end = user_start, user_end
    while len(frontier):
        is_start[frontier] = True
        frontier = opens_next[frontier]
        alive = frontier < frontier_end
        frontier, frontier_end = frontier[alive], frontier_end[alive]
    out = np.empty(n, dtype=np.int64)
    out[order] = np.cumsum(is_start) - 1
    return out


def baskets_from_events(
    log: EventLog, window_days: float, purchase_types: Sequence[str] = ("purchase",)
) -> Baskets:
    """Build the baskets x items matrix from the purchases of `log` (see module docstring).

    `window_days` is the length of a user's shopping window, used only for purchases without
    an order id. Raises InvalidInput when window_days is not a positive number.
    """
    if not isinstance(window_days, int | float) or not math.isfinite(window_days) or window_days <= 0:
        raise InvalidInput("window_days", f"must be a positive number of days, got {window_days!r}")
    purchases = log.purchase_mask(purchase_types)
    by_order = purchases & (log.order >= 0)
    by_window = purchases & (log.order < 0) & (log.user >= 0)
    unplaced = purchases & (log.order < 0) & (log.user < 0)

    order_codes, order_basket = np.unique(log.order[by_order], return_inverse=True)
    n_order_baskets = len(order_codes)
    windows = window_ids(
        log.user[by_window], log.timestamp[by_window], window_days * SECONDS_PER_DAY
    )
    n_window_baskets = int(windows.max()) + 1 if len(windows) else 0

    basket = np.empty(len(log), dtype=np.int64)
    basket[by_order] = order_basket
    basket[by_window] = n_order_baskets + windows
    used = by_order | by_window
    n_baskets = n_order_baskets + n_window_baskets
    counts = sp.csr_matrix(
        (np.ones(int(used.sum()), dtype=np.int32), (basket[used], log.item[used])),
        shape=(n_baskets, len(log.items)),
    )
    counts.sum_duplicates()
    # Bought twice in one basket is still bought once.
    matrix = sp.csr_matrix(
        (np.ones(counts.nnz, dtype=np.uint8), counts.indices, counts.indptr), shape=counts.shape
    )
    return Baskets(
        matrix=matrix,
        rows_used=int(used.sum()),
        rows_not_purchases=int((~purchases).sum()),
        rows_unplaced=int(unplaced.sum()),
        baskets_from_orders=n_order_baskets,
        baskets_from_windows=n_window_baskets,
    )
