"""Popularity lists: the newcomer answer and the fallback when anything else is unavailable.

Counting rule, shared by every list: each *actor* (a user; for rows without a user, their order;
failing that, the row itself) counts once per item, with the strongest weight it gave that item
(so a purchase counts more than a view, and a bot viewing one item 1,000 times counts once).
Weights are the per-row strengths of `recsvc.matrix.event_weights`.

Lists (each a `RankedLists` of named groups, `config.top_n` items per group, best first, only
items with a positive score; ties go to the lower item index):
- `global`, group "all": sum over actors of their weight for the item.
- `trending`, group "all": the same with each row's weight decayed by 2^(-age / half-life)
  (`config.trending_half_life_days`, age from `now`), then lifted by how far the item runs
  ahead of its long-run share:  trend = recent * (recent + a) / (expected + a), where
  expected = total recent * global / total global and a = mean recent score of the items seen
  recently (smoothing, so one fresh sale of an obscure item is not a trend). When every event
  is recent, trend = recent. A log without timestamps gets the global list.
- `category`: one group per category name of the catalog (unknown category "" left out).
- `segment`: one group per customer segment name (users with no segment left out).
- `cluster`: one group per taste cluster id as a string (cluster -1 left out).

Imports recsvc only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsvc.bundle import BundleWriter, RankedLists
from recsvc.config import PopularityConfig
from recsvc.events import Catalog, EventLog

SECONDS_PER_DAY = 86_400.0
LISTS = ("global", "trending", "category", "segment", "cluster")
ALL = "all"


def top_items(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The n best items with a positive score, best first (ties: lower index first)."""
    positive = np.flatnonzero(scores > 0)
    order = positive[np.lexsort((positive, -scores[positive]))][:n]
    return order.astype(np.int32), scores[order].astype(np.float32)


def grouped_top(
    group: np.ndarray, item: np.ndarray, weight: np.ndarray, names: list[str], n_items: int, n: int
) -> RankedLists:
    """Per group code (index into `names`; -1: none) the n items with the largest summed weight."""
    keep = group >= 0
    matrix = sp.csr_matrix(
        (weight[keep].astype(np.float64), (group[keep], item[keep])), shape=(len(names), n_items)
    )
    matrix.sum_duplicates()
    groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for code, name in enumerate(names):
        start, end = matrix.indptr[code], matrix.indptr[code + 1]
        indices, data = matrix.indices[start:end], matrix.data[start:end]
        if len(indices) == 0:
            continue
        chosen = np.flatnonzero(data > 0)
        chosen = chosen[np.lexsort((indices[chosen], -data[chosen]))][:n]
        groups[name] = (indices[chosen].astype(np.int32), data[chosen].astype(np.float32))
    return RankedLists.from_dict(groups)


def actor_pairs(
    log: EventLog, weights: np.ndarray, decay: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(actor, item, max weight, max decayed weight) per distinct (actor, item) pair.

    Actors are users (0..n_users-1), then orders, then single rows, as int64 codes.
    """
    n_users, n_orders, n_items = len(log.users), len(log.orders), len(log.items)
    rows = np.flatnonzero(weights > 0)
    user = log.user[rows].astype(np.int64)
    order = log.order[rows].astype(np.int64)
    actor = np.where(user >= 0, user, np.where(order >= 0, n_users + order, -1))
    anonymous = actor < 0
    actor[anonymous] = n_users + n_orders + np.arange(int(anonymous.sum()))
    key = actor * n_items + log.item[rows]
    sort = np.argsort(key, kind="stable")
    key = key[sort]
    if len(key) == 0:
        empty = np.zeros(0)
        return empty.astype(np.int64), empty.astype(np.int32), empty, None if decay is None else empty
    starts = np.concatenate(([0], np.flatnonzero(key[1:] != key[:-1]) + 1))
    weight = np.maximum.reduceat(weights[rows][sort].astype(np.float64), starts)
    decayed = None
    if decay is not None:
        decayed = np.maximum.reduceat((weights[rows] * decay[rows])[sort].astype(np.float64), starts)
    pair = key[starts]
    return pair // n_items, (pair % n_items).astype(np.int32), weight, decayed


def trending_scores(recent: np.ndarray, long_run: np.ndarray) -> np.ndarray:
    """recent * (recent + a) / (expected + a): decayed popularity lifted by its rise."""
    total_recent, total = float(recent.sum()), float(long_run.sum())
    if total_recent <= 0 or total <= 0:
        return np.zeros_like(recent)
    expected = total_recent * long_run / total
    smoothing = total_recent / max(int((recent > 0).sum()), 1)
    return recent * (recent + smoothing) / (expected + smoothing)


def fit_popularity(
    log: EventLog,
    weights: np.ndarray,
    catalog: Catalog | None,
    config: PopularityConfig,
    now: int,
    segments: np.ndarray | None = None,
    clusters: np.ndarray | None = None,
) -> dict[str, RankedLists]:
    """The global, trending, category, segment and cluster popularity lists.

    weights: one strength per log row (recsvc.matrix.event_weights).
    now: epoch seconds the trending decay starts from.
    segments: segment name per user index (None / "" for none); clusters: cluster id per user
    index (-1 for none). Users beyond either array's length have no group.
    """
    n_items = max(len(log.items), len(catalog.category) if catalog is not None else 0)
    top_n = config.top_n
    decay = None
    if config.trending_half_life_days > 0 and log.has_column.get("timestamp", False):
        age_days = np.maximum(now - log.timestamp, 0) / SECONDS_PER_DAY
        decay = np.exp2(-age_days / config.trending_half_life_days)
    actor, item, weight, decayed = actor_pairs(log, np.asarray(weights), decay)

    global_scores = np.bincount(item, weights=weight, minlength=n_items)
    lists = {"global": RankedLists.from_dict({ALL: top_items(global_scores, top_n)})}
    if decayed is not None:
        recent = np.bincount(item, weights=decayed, minlength=n_items)
        trend = trending_scores(recent, global_scores)
        lists["trending"] = RankedLists.from_dict({ALL: top_items(trend, top_n)})
    else:
        lists["trending"] = lists["global"]

    if catalog is not None:
        category = np.asarray(catalog.category, dtype=object)
        codes, names = pd.factorize(pd.Series(category).fillna("").astype(str), sort=True)
        names = [str(name) for name in names]
        if "" in names:  # unknown category: no group
            codes[codes == names.index("")] = -1
        item_group = np.full(n_items, -1, dtype=np.int64)
        item_group[: len(codes)] = codes
        lists["category"] = grouped_top(item_group[item], item, weight, names, n_items, top_n)
    else:
        lists["category"] = RankedLists.from_dict({})

    lists["segment"] = user_grouped(actor, item, weight, segments, n_items, top_n, numeric=False)
    lists["cluster"] = user_grouped(actor, item, weight, clusters, n_items, top_n, numeric=True)
    return lists


def user_grouped(
    actor: np.ndarray,
    item: np.ndarray,
    weight: np.ndarray,
    labels: np.ndarray | None,
    n_items: int,
    top_n: int,
    numeric: bool,
) -> RankedLists:
    """Popularity per user label (segment names, or cluster ids kept when >= 0)."""
    if labels is None or len(labels) == 0:
        return RankedLists.from_dict({})
    labels = np.asarray(labels)
    if numeric:
        values = labels.astype(np.int64)
        valid = values >= 0
        names_sorted = np.unique(values[valid])
        names = [str(int(v)) for v in names_sorted]
        user_group = np.full(len(values), -1, dtype=np.int64)
        user_group[valid] = np.searchsorted(names_sorted, values[valid])
    else:
        text = pd.Series(labels, dtype=object).fillna("").astype(str)
        codes, uniques = pd.factorize(text, sort=True)
        names = [str(u) for u in uniques]
        user_group = codes.astype(np.int64)
        if "" in names:
            user_group[user_group == names.index("")] = -1
    group = np.full(len(actor), -1, dtype=np.int64)
    known = actor < len(user_group)
    group[known] = user_group[actor[known]]
    return grouped_top(group, item, weight, names, n_items, top_n)


def write_popularity(writer: BundleWriter, lists: dict[str, RankedLists]) -> None:
    """Write each list under `popularity/<name>` (read back with Bundle.popularity(name))."""
    for name, ranked in lists.items():
        ranked.write(writer, f"popularity/{name}")
