"""Fit buy-again lists: who re-buys what, how often, and when the next purchase is due.

From purchase rows (event type "purchase"; in a log whose only type is "interaction", every row),
one *purchase occasion* is a run of a (user, item)'s purchases each less than 12 hours
(SAME_OCCASION_SECONDS) after the one before: several rows, units or orders of the same item
in one trip count once, so a basket line split over rows or an order placed across midnight
does not fake a cycle. Rows without a user or with a quantity <= 0 are not purchases.

Per (user, item) with two or more occasions:
- count = occasions; interval = median gap between consecutive occasions' first purchases,
  in whole days (at least 1; robust to a skipped cycle or a stock-up);
- spread = robust coefficient of variation of the gaps, 1.4826 * MAD / median, shrunk towards
  PRIOR_SPREAD with weight PRIOR_WEIGHT pseudo-gaps (one or two gaps say little about spread);
  sd_days = max(spread * interval, 1);
- confidence = gaps / (gaps + 1).

Items bought once are offered only when the item's population repurchase rate (share of its
buyers with two or more occasions) is at least `config.min_population_rate` and at least
MIN_POPULATION_BUYERS customers bought it; they take the item's population median interval,
spread ONCE_SPREAD and confidence rate / 3 (below any customer's own two purchases).

next_due = last purchase + interval. Pairs lapsed at `now` (overdue by more than one interval
plus 3 sd) are dropped; each user keeps the `config.max_items_per_user` best by due score at
`now` (see recsvc.buyagain for the score), ties to the item due soonest. All of it is sorting
and segment reductions over numpy arrays: no per-row Python.

Imports recsvc only.
"""

from __future__ import annotations

import logging

import numpy as np

from recsvc.buyagain import HORIZON_DAYS, SECONDS_PER_DAY, BuyAgainLists, due_scores
from recsvc.config import BuyAgainConfig
from recsvc.events import EventLog

logger = logging.getLogger(__name__)

PRIOR_SPREAD = 0.25  # relative sd of a typical repurchase cycle
PRIOR_WEIGHT = 2.0  # pseudo-gaps behind the prior
MIN_SPREAD = 0.05
ONCE_SPREAD = 0.5  # a customer's first repeat is less predictable than an established cycle
MIN_POPULATION_BUYERS = 5  # a repurchase rate from fewer buyers is noise
LAPSE_SDS = 3.0
SAME_OCCASION_SECONDS = 12 * 3600  # purchases of an item closer than this are one occasion


def purchase_mask(log: EventLog) -> np.ndarray:
    """Purchase rows (see EventLog.purchase_mask) of known users with a positive quantity."""
    return log.purchase_mask() & (log.user >= 0) & ~(log.quantity <= 0)


def group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Start positions of runs of equal values in a sorted array (int64)."""
    if len(sorted_keys) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate(([0], np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1))


def group_median(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Median of non-negative integer `values` per group (float64; NaN for empty groups)."""
    out = np.full(n_groups, np.nan)
    if len(values) == 0:
        return out
    values = values.astype(np.int64)
    width = int(values.max()) + 1
    keys = np.sort(group.astype(np.int64) * width + values)
    groups = keys // width
    starts = group_starts(groups)
    sizes = np.diff(np.append(starts, len(keys)))
    low = (keys[starts + (sizes - 1) // 2] % width).astype(np.float64)
    high = (keys[starts + sizes // 2] % width).astype(np.float64)
    out[groups[starts]] = (low + high) / 2.0
    return out


def fit_buyagain(log: EventLog, config: BuyAgainConfig, now: int) -> BuyAgainLists:
    """Per-user buy-again lists from the purchase history in `log`, scored at `now` (epoch s)."""
    n_users, n_items = len(log.users), len(log.items)
    if not log.has_column.get("timestamp", False):
        log_skip("the log has no timestamps")
        return BuyAgainLists.empty(n_users, now)
    rows = purchase_mask(log)
    if not rows.any():
        log_skip("the log has no purchases")
        return BuyAgainLists.empty(n_users, now)

    timestamp = log.timestamp[rows]
    pair_code = log.user[rows].astype(np.int64) * n_items + log.item[rows]
    order = np.lexsort((timestamp, pair_code))
    pair_code = pair_code[order]
    timestamp = timestamp[order]
    del order

    # Purchase occasions: runs of a pair's purchases each less than SAME_OCCASION_SECONDS
    # after the one before (one trip, a basket line split over rows, an order at midnight).
    new = np.ones(len(pair_code), dtype=bool)
    new[1:] = (pair_code[1:] != pair_code[:-1]) | (np.diff(timestamp) >= SAME_OCCASION_SECONDS)
    occasion_start = np.flatnonzero(new)
    occasion_time = np.maximum.reduceat(timestamp, occasion_start) if len(new) else timestamp
    occasion_first = timestamp[occasion_start]
    occasion_pair = pair_code[occasion_start]
    del new, timestamp, pair_code

    pair_start = group_starts(occasion_pair)
    n_pairs = len(pair_start)
    count = np.diff(np.append(pair_start, len(occasion_pair))).astype(np.int64)
    last = occasion_time[pair_start + count - 1]
    code = occasion_pair[pair_start]
    user = (code // n_items).astype(np.int32)
    item = (code % n_items).astype(np.int32)

    # Gaps in days between consecutive occasions of the same pair.
    same = occasion_pair[1:] == occasion_pair[:-1]
    is_first = np.zeros(len(occasion_pair), dtype=np.int64)
    is_first[pair_start] = 1
    pair_of_occasion = np.cumsum(is_first) - 1
    gap_pair = pair_of_occasion[1:][same]
    # whole days between the occasions' first purchases, at least one
    gaps = np.maximum(np.rint(np.diff(occasion_first)[same] / SECONDS_PER_DAY), 1).astype(np.int64)
    interval = group_median(gap_pair, gaps, n_pairs)
    # Deviations are whole or half days: doubled they are integers, as group_median wants.
    deviation = np.rint(2 * np.abs(gaps - interval[gap_pair])).astype(np.int64)
    mad = group_median(gap_pair, deviation, n_pairs) / 2.0

    n_gaps = (count - 1).astype(np.float64)
    repeat = count >= 2
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = np.where(repeat, 1.4826 * mad / interval, 0.0)
    dispersion_weight = np.maximum(n_gaps - 1, 0)  # one gap carries no spread information
    spread = np.sqrt(
        (dispersion_weight * cv**2 + PRIOR_WEIGHT * PRIOR_SPREAD**2)
        / (dispersion_weight + PRIOR_WEIGHT)
    )
    spread = np.maximum(spread, MIN_SPREAD)
    confidence = n_gaps / (n_gaps + 1.0)

    # Population view per item: repurchase rate and median interval of its repeat buyers.
    buyers = np.bincount(item, minlength=n_items)
    repeaters = np.bincount(item[repeat], minlength=n_items)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(buyers > 0, repeaters / np.maximum(buyers, 1), 0.0)
    population_interval = (
        group_median(item[repeat], np.rint(2 * interval[repeat]).astype(np.int64), n_items) / 2.0
    )
    once_ok = (
        (count == 1)
        & (rate[item] >= config.min_population_rate)
        & (buyers[item] >= MIN_POPULATION_BUYERS)
        & np.isfinite(population_interval[item])
    )
    interval = np.where(repeat, interval, population_interval[item])
    spread = np.where(repeat, spread, ONCE_SPREAD)
    confidence = np.where(repeat, confidence, rate[item] / 3.0)

    interval = np.maximum(np.nan_to_num(interval, nan=1.0), 1.0)
    sd_days = np.maximum(spread * interval, 1.0)
    next_due = last + np.rint(interval * SECONDS_PER_DAY).astype(np.int64)
    overdue_days = (now - next_due) / SECONDS_PER_DAY
    keep = (repeat | once_ok) & (overdue_days <= interval + LAPSE_SDS * sd_days)
    scores = due_scores(now, next_due, sd_days, confidence, HORIZON_DAYS)

    # Each user's best max_items_per_user, best first.
    chosen = np.flatnonzero(keep)
    order = chosen[np.lexsort((np.abs(overdue_days[chosen]), -scores[chosen], user[chosen]))]
    ordered_users = user[order]
    starts = group_starts(ordered_users)
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.append(starts, len(order))))
    order = order[rank < config.max_items_per_user]

    indptr = np.zeros(n_users + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(user[order], minlength=n_users))
    lists = BuyAgainLists(
        indptr=indptr,
        items=item[order].astype(np.int32),
        due_score=scores[order].astype(np.float32),
        next_due=next_due[order].astype(np.int64),
        interval_days=interval[order].astype(np.float32),
        count=count[order].astype(np.int32),
        last=last[order].astype(np.int64),
        sd_days=sd_days[order].astype(np.float32),
        confidence=confidence[order].astype(np.float32),
        trained_at=int(now),
        horizon_days=HORIZON_DAYS,
    )
    logger.info(
        "buy-again fitted",
        extra={
            "purchase_rows": int(rows.sum()),
            "pairs": n_pairs,
            "repeat_pairs": int(repeat.sum()),
            "once_bought_offered": int(once_ok[order].sum()),
            "entries": len(lists),
            "users_with_lists": int((np.diff(indptr) > 0).sum()),
        },
    )
    return lists


def log_skip(why: str) -> None:
    logger.warning("buy-again lists are empty", extra={"reason": why})
