"""Seeded synthetic store: an event log, an items catalog, and the structure planted in them.

`generate` simulates shoppers with numpy only (no per-event Python loops) and returns pandas
frames plus a ground-truth record of what was planted; `write` streams them to files in chunks.
The planted structure is what the trainer and the tests look for:

- taste clusters: every user and item has a cluster; `CLUSTER_AFFINITY` of a user's draws come
  from their cluster's items, whose popularity falls off like Zipf (a long, rarely touched tail);
- a funnel: about 70% views, 20% carts, 10% purchases; most purchases follow a view of the item;
- orders of 1-5 items sharing one timestamp;
- up to `MAX_PAIRS` item pairs bought together (`PAIR_PROBABILITY` each way);
- repurchase cycles: some users re-buy a consumable every `period_days` (7-30) days.

The same config and seed give byte-identical files. Imports only numpy, pandas, pyarrow and
recsvc.errors / recsvc.progress: never training or serving.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsvc.errors import InvalidInput

log = logging.getLogger(__name__)

EVENT_TYPES = ("view", "cart", "purchase")
VIEW, CART, PURCHASE = 0, 1, 2
EVENT_COLUMNS = ("user_id", "item_id", "event_type", "timestamp", "order_id", "quantity", "price")
ITEM_COLUMNS = ("item_id", "title", "category", "price", "in_stock")
FORMATS = ("csv", "parquet")

CLUSTER_AFFINITY = 0.8  # share of a user's draws taken from their own cluster's items
ZIPF_EXPONENT = 1.1  # popularity of the item at rank r within its cluster ~ (r + 1) ** -exponent
MAX_PAIRS = 30
PAIR_PROBABILITY = 0.6  # chance that buying one item of a planted pair adds the other
MAX_ORDER_SIZE = 5
ORDER_SIZE_WEIGHTS = (0.35, 0.30, 0.18, 0.10, 0.07)  # 1..5 items before planted partners
QUANTITY_WEIGHTS = (0.80, 0.15, 0.05)  # 1, 2, 3 units per purchased line
CYCLE_USER_SHARE = 0.2  # share of users given a repurchase cycle
TWO_CYCLES_SHARE = 0.25  # share of cycle users with two consumables instead of one
MAX_CYCLE_PURCHASE_SHARE = 0.4  # cycle purchases never exceed this share of all purchases
CONSUMABLE_SHARE = 0.04  # share of each cluster's items that are consumables
MIN_PERIOD_DAYS, MAX_PERIOD_DAYS = 7, 30
OUT_OF_STOCK_SHARE = 0.03
ITEMS_PER_CLUSTER = 5  # the least a cluster may hold
# Funnel: each purchase is preceded by a view / a cart with these chances; browsing (views that
# lead nowhere, some carted) tops the totals up to 70% views, 20% carts, 10% purchases.
VIEW_BEFORE_PURCHASE = 0.9
CART_BEFORE_PURCHASE = 0.7
PURCHASE_SHARE = 0.1
BROWSE_VIEWS_PER_PURCHASE = 7.0 - VIEW_BEFORE_PURCHASE
BROWSE_CART_CHANCE = (2.0 - CART_BEFORE_PURCHASE) / BROWSE_VIEWS_PER_PURCHASE
DAY = 86_400

CATEGORY_NAMES = (
    "coffee", "tea", "snacks", "dairy", "bakery", "household", "personal care", "baby",
    "pet supplies", "beverages", "frozen", "pantry", "electronics", "phone accessories",
    "kitchen", "garden", "toys", "books", "stationery", "sports", "beauty", "home decor",
    "clothing", "shoes",
)  # fmt: skip
ADJECTIVES = (
    "classic", "organic", "premium", "everyday", "deluxe", "compact", "eco", "family",
    "original", "smart", "fresh", "golden", "urban", "mini", "pro", "natural",
)  # fmt: skip


def parse_start(text: str | date | datetime) -> datetime:
    """A UTC datetime from `2026-01-01` or an ISO-8601 time (naive means UTC)."""
    if isinstance(text, datetime):
        value = text
    elif isinstance(text, date):
        value = datetime(text.year, text.month, text.day)
    else:
        raw = text.strip()
        try:
            value = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith("Z") else raw)
        except ValueError:
            raise InvalidInput("--start", f"'{text}' is not a date like 2026-01-01") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class SynthConfig:
    """What to simulate. Raises InvalidInput (naming the flag) for unusable values."""

    users: int = 20_000
    items: int = 3_000
    days: int = 120
    seed: int = 0
    categories: int = 20
    clusters: int = 8
    events: int | None = None  # approximate target; None: `users * max(20, days // 2)`
    start: datetime = field(default_factory=lambda: datetime(2026, 1, 1, tzinfo=UTC))

    def __post_init__(self) -> None:
        def need(name: str, value: int | None, low: int, high: int) -> None:
            if value is None:
                return
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidInput(f"--{name}", f"must be a whole number, not {value!r}")
            if not low <= value <= high:
                raise InvalidInput(
                    f"--{name}", f"must be between {low:,} and {high:,}, not {value}"
                )

        need("users", self.users, 1, 50_000_000)
        need("items", self.items, 10, 10_000_000)
        need("days", self.days, 1, 3_650)
        need("seed", self.seed, 0, 2**63 - 1)
        need("categories", self.categories, 1, 10_000)
        need("events", self.events, 10, 2_000_000_000)
        need("clusters", self.clusters, 1, 1_000)
        if self.clusters * ITEMS_PER_CLUSTER > self.items:
            raise InvalidInput(
                "--clusters",
                f"{self.clusters} clusters need at least {self.clusters * ITEMS_PER_CLUSTER} "
                f"items ({ITEMS_PER_CLUSTER} per cluster), not {self.items}",
            )
        object.__setattr__(self, "start", parse_start(self.start))
        # the loaders take times within recsvc.events.TIME_RANGE (1970 to the end of 2099)
        from recsvc.events import TIME_RANGE

        first, last = self.start.timestamp(), self.start.timestamp() + self.days * 86_400
        if not (TIME_RANGE[0] <= first and last <= TIME_RANGE[1]):
            raise InvalidInput(
                "--start", f"the log must lie between 1970 and 2099, not from {self.start.date()} "
                f"for {self.days} days"
            )

    @property
    def target_events(self) -> int:
        return int(self.events) if self.events is not None else self.users * max(20, self.days // 2)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=self.days)


@dataclass(frozen=True)
class SyntheticStore:
    """A generated store: events and items as frames, and the planted ground truth.

    `events` has EVENT_COLUMNS; ids are categoricals of the external string ids, `timestamp`
    is datetime64[s, UTC], `quantity` nullable Int16 (empty on views), `order_id` NaN off
    purchases. `items` has ITEM_COLUMNS. `ground_truth` is what `ground_truth.json` holds.
    """

    config: SynthConfig
    events: pd.DataFrame
    items: pd.DataFrame
    ground_truth: dict[str, Any]

    def counts(self) -> dict[str, int]:
        by_type = self.events["event_type"].value_counts()
        return {
            "events": len(self.events),
            **{name: int(by_type.get(name, 0)) for name in EVENT_TYPES},
            "orders": int(self.ground_truth["n_orders"]),
            "users": self.config.users,
            "items": self.config.items,
            "pairs": len(self.ground_truth["pairs"]),
            "cycles": len(self.ground_truth["cycles"]),
        }


@dataclass(frozen=True)
class _Catalog:
    """Items laid out by cluster: segment c of `cluster_items` holds cluster c's items by rank."""

    item_cluster: np.ndarray  # int32 per item
    cluster_items: np.ndarray  # int32 item indexes, cluster by cluster, most popular first
    cluster_start: np.ndarray  # int64, K + 1 offsets into cluster_items
    cdf: np.ndarray  # float64: cluster c's cumulative popularity, shifted into (c, c + 1]
    popularity: np.ndarray  # float64 per item: its share of its cluster's draws
    category: np.ndarray  # int32 per item
    category_names: list[str]
    price: np.ndarray  # float64 per item
    in_stock: np.ndarray  # bool per item
    title: list[str]


def _ids(prefix: str, count: int, width: int, first: int = 0) -> list[str]:
    width = max(width, len(str(first + count - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(first, first + count)]


def _runs_rank(groups: np.ndarray) -> np.ndarray:
    """0, 1, 2 ... within each run of equal consecutive values of `groups`."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.ones(n, dtype=bool)
    starts[1:] = groups[1:] != groups[:-1]
    index = np.arange(n)
    return index - np.maximum.accumulate(np.where(starts, index, 0))


def _before(ts: np.ndarray, lead: np.ndarray, fraction: np.ndarray) -> np.ndarray:
    """`ts - lead`, or a `fraction` of the way from 0 to `ts` where that would fall before 0."""
    early: np.ndarray = ts - lead
    return np.where(early >= 0, early, (ts * fraction).astype(np.int64))


def _build_catalog(rng: np.random.Generator, config: SynthConfig) -> _Catalog:
    n, k, n_cat = config.items, config.clusters, config.categories
    order = rng.permutation(n).astype(np.int32)
    # Item order[j] joins cluster j % k at rank j // k: clusters of equal size, ids shuffled.
    segments = [order[c::k] for c in range(k)]
    cluster_items = np.concatenate(segments)
    sizes = np.array([len(s) for s in segments], dtype=np.int64)
    cluster_start = np.concatenate([[0], np.cumsum(sizes)])
    item_cluster = np.empty(n, dtype=np.int32)
    item_cluster[order] = np.arange(n, dtype=np.int32) % k
    cdf = np.empty(n, dtype=np.float64)
    popularity = np.empty(n, dtype=np.float64)
    for c, segment in enumerate(segments):
        weights = (np.arange(len(segment)) + 1.0) ** -ZIPF_EXPONENT
        share = weights / weights.sum()
        popularity[segment] = share
        part = np.cumsum(share)
        part[-1] = 1.0
        cdf[cluster_start[c] : cluster_start[c + 1]] = c + part

    # Cluster c prefers the categories k' with k' % k == c (or one shared category when there
    # are fewer categories than clusters); 90% of its items are in them.
    preferred = [
        [x for x in range(n_cat) if x % k == c] if n_cat >= k else [c % n_cat] for c in range(k)
    ]
    width = max(len(p) for p in preferred)
    table = np.array([p + [p[0]] * (width - len(p)) for p in preferred], dtype=np.int32)
    counts = np.array([len(p) for p in preferred], dtype=np.int64)
    pick = (rng.random(n) * counts[item_cluster]).astype(np.int64)
    category = table[item_cluster, pick]
    stray = rng.random(n) >= 0.9
    category[stray] = rng.integers(0, n_cat, int(stray.sum()), dtype=np.int32)
    names = [
        CATEGORY_NAMES[x] if x < len(CATEGORY_NAMES) else f"category {x}" for x in range(n_cat)
    ]

    base_price = rng.lognormal(np.log(15.0), 0.7, n_cat)
    raw_price = base_price[category] * rng.lognormal(0.0, 0.4, n)
    price = np.round(np.maximum(np.ceil(raw_price), 1.0) - 0.01, 2)
    in_stock = rng.random(n) >= OUT_OF_STOCK_SHARE
    adjective = rng.integers(0, len(ADJECTIVES), n)
    title = [
        f"{ADJECTIVES[a].title()} {names[c]} {i}"
        for i, (a, c) in enumerate(zip(adjective.tolist(), category.tolist(), strict=True))
    ]
    return _Catalog(
        item_cluster=item_cluster,
        cluster_items=cluster_items,
        cluster_start=cluster_start,
        cdf=cdf,
        popularity=popularity,
        category=category,
        category_names=names,
        price=price,
        in_stock=in_stock,
        title=title,
    )


def _draw_items(
    rng: np.random.Generator, catalog: _Catalog, user_cluster: np.ndarray
) -> np.ndarray:
    """One item per entry: from the user's cluster with CLUSTER_AFFINITY, else another's."""
    k = len(catalog.cluster_start) - 1
    cluster = user_cluster.astype(np.int64)
    if k > 1:
        away = rng.random(len(cluster)) >= CLUSTER_AFFINITY
        cluster[away] = (cluster[away] + rng.integers(1, k, int(away.sum()))) % k
    position = np.searchsorted(catalog.cdf, cluster + rng.random(len(cluster)), side="right")
    # c + u can round up to c + 1 for u just below 1: stay inside the segment.
    position = np.minimum(position, catalog.cluster_start[cluster + 1] - 1)
    items: np.ndarray = catalog.cluster_items[position]
    return items


def _plant_pairs(catalog: _Catalog) -> tuple[np.ndarray, np.ndarray]:
    """Pairs among each cluster's top sellers, spread round-robin over the clusters.

    A cluster with p pairs uses its ranks 0 .. 2p-1 and matches the outermost ones (0 with
    2p-1, 1 with 2p-2 ...), which evens out the pairs' support: every pair stays far above 0.1%
    of orders. Returns (pairs as an (n, 2) int32 array of item indexes, pairs per cluster).
    """
    k = len(catalog.cluster_start) - 1
    room = np.diff(catalog.cluster_start) // 4  # at most half of a cluster's items are paired
    per_cluster = np.zeros(k, dtype=np.int64)
    turns: list[int] = []  # the cluster of each pair, in round-robin order
    cluster = 0
    while len(turns) < MAX_PAIRS and (per_cluster < room).any():
        if per_cluster[cluster] < room[cluster]:
            turns.append(cluster)
            per_cluster[cluster] += 1
        cluster = (cluster + 1) % k
    nth = np.zeros(k, dtype=np.int64)
    pairs: list[tuple[int, int]] = []
    for cluster in turns:
        start, last = catalog.cluster_start[cluster], 2 * per_cluster[cluster] - 1
        a = catalog.cluster_items[start + nth[cluster]]
        b = catalog.cluster_items[start + last - nth[cluster]]
        pairs.append((int(a), int(b)))
        nth[cluster] += 1
    return np.array(pairs, dtype=np.int32).reshape(-1, 2), per_cluster


def _pick_consumables(
    rng: np.random.Generator, catalog: _Catalog, pairs_per_cluster: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster, a few moderately popular items (after the paired ranks) that get re-bought.

    Returns (table of consumables, (K, width) int32 padded with the first; counts per cluster).
    """
    k = len(catalog.cluster_start) - 1
    chosen: list[np.ndarray] = []
    for c in range(k):
        size = int(catalog.cluster_start[c + 1] - catalog.cluster_start[c])
        first = int(2 * pairs_per_cluster[c])
        count = max(1, round(CONSUMABLE_SHARE * size))
        window = np.arange(first, min(size, first + 4 * count + 4))
        ranks = np.sort(rng.choice(window, size=min(count, len(window)), replace=False))
        chosen.append(catalog.cluster_items[catalog.cluster_start[c] + ranks])
    width = max(len(x) for x in chosen)
    table = np.array([np.pad(x, (0, width - len(x)), mode="edge") for x in chosen], dtype=np.int32)
    return table, np.array([len(x) for x in chosen], dtype=np.int64)


@dataclass(frozen=True)
class _Cycles:
    user: np.ndarray  # per cycle
    item: np.ndarray
    period_days: np.ndarray
    purchase_cycle: np.ndarray  # per planted purchase: its cycle
    purchase_ts: np.ndarray  # per planted purchase: seconds since start


def _plant_cycles(
    rng: np.random.Generator,
    config: SynthConfig,
    user_cluster: np.ndarray,
    consumables: np.ndarray,
    consumable_counts: np.ndarray,
    purchase_budget: int,
) -> _Cycles:
    span = config.days * DAY
    longest = min(MAX_PERIOD_DAYS, max(MIN_PERIOD_DAYS, config.days // 3))
    periods = np.arange(MIN_PERIOD_DAYS, longest + 1)
    per_cycle = float(np.mean(config.days / periods + 0.5))
    per_user = per_cycle * (1 + TWO_CYCLES_SHARE)
    affordable = int(MAX_CYCLE_PURCHASE_SHARE * purchase_budget / per_user)
    # A cycle needs two purchases in the log (a log under two shortest periods has none to
    # show), and the purchase budget may afford none.
    n_users = min(round(CYCLE_USER_SHARE * config.users), affordable)
    if config.days < 2 * MIN_PERIOD_DAYS:
        n_users = 0
    users = np.sort(rng.choice(config.users, size=n_users, replace=False)).astype(np.int32)
    cluster = user_cluster[users]
    counts = consumable_counts[cluster]
    first = (rng.random(n_users) * counts).astype(np.int64)
    two = (rng.random(n_users) < TWO_CYCLES_SHARE) & (counts >= 2)
    step = 1 + (rng.random(n_users) * np.maximum(counts - 1, 1)).astype(np.int64)
    second = (first + step) % counts
    cycle_user = np.concatenate([users, users[two]])
    cycle_item = np.concatenate(
        [consumables[cluster, first], consumables[cluster[two], second[two]]]
    )
    by_user = np.argsort(cycle_user, kind="stable")
    cycle_user, cycle_item = cycle_user[by_user], cycle_item[by_user]
    n = len(cycle_user)
    period = rng.integers(MIN_PERIOD_DAYS, longest + 1, n)
    period_s = period * DAY
    offset = (rng.random(n) * np.minimum(period_s, span)).astype(np.int64)
    per = (span - 1 - offset) // period_s + 1
    cycle_of = np.repeat(np.arange(n), per)
    nth = np.arange(len(cycle_of)) - np.repeat(np.cumsum(per) - per, per)
    jitter_sd = 0.05 * period_s[cycle_of]
    jitter = np.clip(rng.normal(0.0, 1.0, len(cycle_of)) * jitter_sd, -3 * jitter_sd, 3 * jitter_sd)
    on_time = offset[cycle_of] + nth * period_s[cycle_of]  # within [0, span) by construction
    ts = on_time + jitter.astype(np.int64)
    return _Cycles(
        user=cycle_user,
        item=cycle_item,
        period_days=period,
        purchase_cycle=cycle_of,
        purchase_ts=np.where((ts >= 0) & (ts < span), ts, on_time),
    )


@dataclass(frozen=True)
class _Purchases:
    """Purchased lines, one per (order, item); `order` is provisional (renumbered in time)."""

    user: np.ndarray  # int32
    item: np.ndarray  # int32
    ts: np.ndarray  # int64 seconds since start
    order: np.ndarray  # int64
    quantity: np.ndarray  # int16


def _purchases(
    rng: np.random.Generator,
    config: SynthConfig,
    catalog: _Catalog,
    user_cluster: np.ndarray,
    activity: np.ndarray,
    pairs: np.ndarray,
    cycles: _Cycles,
    budget: int,
) -> _Purchases:
    """Orders of 1-5 lines drawn from each user's taste, planted partners, then the cycles."""
    n_items = config.items
    partner = np.full(n_items, -1, dtype=np.int32)
    partner[pairs[:, 0]], partner[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
    pair_rate = PAIR_PROBABILITY * catalog.popularity[pairs.ravel()].sum() / config.clusters
    sizes = np.arange(1, MAX_ORDER_SIZE + 1)
    mean_size = float(np.dot(sizes, ORDER_SIZE_WEIGHTS))
    base_lines = max(1.0, budget - len(cycles.purchase_ts)) / (1.0 + pair_rate)
    n_orders = max(1, round(base_lines / mean_size))
    order_user = np.repeat(
        np.arange(config.users, dtype=np.int32), rng.multinomial(n_orders, activity)
    )
    order_ts = rng.integers(0, config.days * DAY, n_orders)
    order_size = rng.choice(sizes, size=n_orders, p=ORDER_SIZE_WEIGHTS)
    line_order = np.repeat(np.arange(n_orders, dtype=np.int64), order_size)
    line_item = _draw_items(rng, catalog, user_cluster[order_user[line_order]])

    # Planted pairs: the partner joins the order, as long as the order stays within 5 lines.
    adds = np.flatnonzero(
        (partner[line_item] >= 0) & (rng.random(len(line_item)) < PAIR_PROBABILITY)
    )
    fits = order_size[line_order[adds]] + _runs_rank(line_order[adds]) < MAX_ORDER_SIZE
    adds = adds[fits]
    line_order = np.concatenate([line_order, line_order[adds]])
    line_item = np.concatenate([line_item, partner[line_item[adds]]])
    _, first = np.unique(line_order * n_items + line_item, return_index=True)
    line_order, line_item = line_order[first], line_item[first]
    # A cycle user's consumable is bought on the planted cycle only, so its gaps stay clean.
    line_user = order_user[line_order]
    cycle_keys = cycles.user.astype(np.int64) * n_items + cycles.item
    keep = ~np.isin(line_user.astype(np.int64) * n_items + line_item, cycle_keys)
    line_order, line_item, line_user = line_order[keep], line_item[keep], line_user[keep]

    # Every planted cycle purchase is an order of its own.
    n_cycle = len(cycles.purchase_ts)
    ts = np.concatenate([order_ts[line_order], cycles.purchase_ts]).astype(np.int64)
    return _Purchases(
        user=np.concatenate([line_user, cycles.user[cycles.purchase_cycle]]).astype(np.int32),
        item=np.concatenate([line_item, cycles.item[cycles.purchase_cycle]]).astype(np.int32),
        ts=ts,
        order=np.concatenate([line_order, n_orders + np.arange(n_cycle)]).astype(np.int64),
        quantity=rng.choice(np.arange(1, 4, dtype=np.int16), size=len(ts), p=QUANTITY_WEIGHTS),
    )


@dataclass(frozen=True)
class _Events:
    """Every event in time order; `order` counts up in time (-1 off purchases)."""

    user: np.ndarray  # int32
    item: np.ndarray  # int32
    event: np.ndarray  # int8 index into EVENT_TYPES
    ts: np.ndarray  # int64 seconds since start
    order: np.ndarray  # int32
    quantity: np.ndarray  # int16, 0 where none (views)
    n_orders: int


def _events(
    rng: np.random.Generator,
    config: SynthConfig,
    catalog: _Catalog,
    user_cluster: np.ndarray,
    activity: np.ndarray,
    bought: _Purchases,
) -> _Events:
    """The funnel around the purchases plus browsing that leads nowhere, sorted by time."""
    span = config.days * DAY
    n_buy, n_users = len(bought.ts), config.users
    # Before each purchase: a view (minutes to two days before), then a cart. Near the start,
    # a lead time reaching back past it is squeezed into [start, purchase].
    viewed = rng.random(n_buy) < VIEW_BEFORE_PURCHASE
    view_ts = _before(bought.ts, rng.integers(120, 2 * DAY, n_buy), rng.random(n_buy))
    carted = rng.random(n_buy) < CART_BEFORE_PURCHASE
    cart_ts = np.where(
        viewed,
        view_ts + ((bought.ts - view_ts) * rng.uniform(0.3, 0.95, n_buy)).astype(np.int64),
        _before(bought.ts, rng.integers(60, 3_600, n_buy), rng.random(n_buy)),
    )
    # Browsing: views (every user at least once, budget allowing), some carted.
    n_browse = round(BROWSE_VIEWS_PER_PURCHASE * n_buy)
    if n_browse >= n_users:
        per_user = 1 + rng.multinomial(n_browse - n_users, activity)
    else:
        per_user = rng.multinomial(n_browse, activity)
    browse_user = np.repeat(np.arange(n_users, dtype=np.int32), per_user)
    browse_item = _draw_items(rng, catalog, user_cluster[browse_user])
    browse_ts = rng.integers(0, span, n_browse)
    browse_cart = np.flatnonzero(rng.random(n_browse) < BROWSE_CART_CHANCE)
    browse_cart_ts = np.minimum(
        span - 1, browse_ts[browse_cart] + rng.integers(10, 1_800, len(browse_cart))
    )

    n_viewed, n_carted, n_browse_cart = int(viewed.sum()), int(carted.sum()), len(browse_cart)

    def column(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts).astype(dtype, copy=False)

    users = [bought.user, bought.user[viewed], bought.user[carted], browse_user]
    user = column([*users, browse_user[browse_cart]], np.int32)
    items = [bought.item, bought.item[viewed], bought.item[carted], browse_item]
    item = column([*items, browse_item[browse_cart]], np.int32)
    counts = (n_buy, n_viewed, n_carted, n_browse, n_browse_cart)
    kinds = (PURCHASE, VIEW, CART, VIEW, CART)
    event = column([np.full(n, kind) for n, kind in zip(counts, kinds, strict=True)], np.int8)
    ts = column([bought.ts, view_ts[viewed], cart_ts[carted], browse_ts, browse_cart_ts], np.int64)
    order = column([bought.order, np.full(sum(counts[1:]), -1)], np.int64)
    quantity = column(
        [bought.quantity, np.zeros(n_viewed), bought.quantity[carted], np.zeros(n_browse),
         np.ones(n_browse_cart)],
        np.int16,
    )  # fmt: skip
    del users, items, browse_user, browse_item, browse_ts

    # Time order; a view, cart and purchase in the same second keep the funnel's order.
    by_time = np.argsort(ts * 3 + event, kind="stable")
    user, item, event, ts = user[by_time], item[by_time], event[by_time], ts[by_time]
    order, quantity = order[by_time], quantity[by_time]
    del by_time
    # Order ids count up in time.
    lines = np.flatnonzero(order >= 0)
    seen, first_row = np.unique(order[lines], return_index=True)
    renumber = np.full(int(order.max(initial=-1)) + 1, -1, dtype=np.int32)
    renumber[seen[np.argsort(first_row, kind="stable")]] = np.arange(len(seen), dtype=np.int32)
    order = np.where(order >= 0, renumber[np.maximum(order, 0)], -1).astype(np.int32)
    return _Events(user, item, event, ts, order, quantity, n_orders=len(seen))


def generate(config: SynthConfig) -> SyntheticStore:
    """Simulate a store; the same config (seed included) always gives the same store."""
    from recsvc.progress import progress

    rng = np.random.default_rng(config.seed)
    bar = progress(total=4, desc="synth", unit="step")
    catalog = _build_catalog(rng, config)
    user_cluster = rng.integers(0, config.clusters, config.users, dtype=np.int32)
    activity = rng.lognormal(0.0, 0.8, config.users)
    activity /= activity.sum()
    pairs, pairs_per_cluster = _plant_pairs(catalog)
    consumables, consumable_counts = _pick_consumables(rng, catalog, pairs_per_cluster)
    budget = max(1, round(PURCHASE_SHARE * config.target_events))
    cycles = _plant_cycles(rng, config, user_cluster, consumables, consumable_counts, budget)
    bar.update()
    bought = _purchases(rng, config, catalog, user_cluster, activity, pairs, cycles, budget)
    bar.update()
    ev = _events(rng, config, catalog, user_cluster, activity, bought)
    del bought
    bar.update()

    user_ids = _ids("u", config.users, 6)
    item_ids = _ids("i", config.items, 5)
    start_s = int(config.start.timestamp())
    events = pd.DataFrame(
        {
            "user_id": pd.Categorical.from_codes(ev.user, categories=pd.Index(user_ids)),
            "item_id": pd.Categorical.from_codes(ev.item, categories=pd.Index(item_ids)),
            "event_type": pd.Categorical.from_codes(ev.event, categories=pd.Index(EVENT_TYPES)),
            "timestamp": pd.Series((ev.ts + start_s).astype("datetime64[s]")).dt.tz_localize("UTC"),
            "order_id": pd.Categorical.from_codes(
                ev.order, categories=pd.Index(_ids("o", ev.n_orders, 7))
            ),
            "quantity": pd.arrays.IntegerArray(ev.quantity, ev.quantity == 0),  # empty on views
            "price": catalog.price[ev.item],
        }
    )
    in_stock = catalog.in_stock.copy()
    in_stock[pairs.ravel()] = True  # planted items stay recommendable
    in_stock[consumables.ravel()] = True
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "title": catalog.title,
            "category": [catalog.category_names[c] for c in catalog.category.tolist()],
            "price": catalog.price,
            "in_stock": in_stock,
        }
    )
    cycle_items = np.unique(consumables)  # the padding repeats a cluster's first
    ground_truth = _ground_truth(
        config, user_ids, item_ids, user_cluster, catalog.item_cluster, pairs, cycles,
        cycle_items, ev.n_orders,
    )  # fmt: skip
    bar.update()
    bar.close()
    store = SyntheticStore(config=config, events=events, items=items, ground_truth=ground_truth)
    log.info("synthetic store generated", extra=store.counts())
    return store


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ground_truth(
    config: SynthConfig,
    user_ids: list[str],
    item_ids: list[str],
    user_cluster: np.ndarray,
    item_cluster: np.ndarray,
    pairs: np.ndarray,
    cycles: _Cycles,
    cycle_items: np.ndarray,
    n_orders: int,
) -> dict[str, Any]:
    """The planted structure under the external ids, as written to ground_truth.json."""
    start_s = int(config.start.timestamp())
    last = np.full(len(cycles.user), -1, dtype=np.int64)
    np.maximum.at(last, cycles.purchase_cycle, cycles.purchase_ts)
    return {
        "seed": config.seed,
        "n_users": config.users,
        "n_items": config.items,
        "n_orders": n_orders,
        "start": _iso(start_s),
        "end": _iso(start_s + config.days * DAY),
        "clusters": config.clusters,
        "categories": config.categories,
        "cluster_affinity": CLUSTER_AFFINITY,
        "zipf_exponent": ZIPF_EXPONENT,
        "pair_probability": PAIR_PROBABILITY,
        "user_cluster": dict(zip(user_ids, user_cluster.tolist(), strict=True)),
        "item_cluster": dict(zip(item_ids, item_cluster.tolist(), strict=True)),
        "pairs": [[item_ids[a], item_ids[b]] for a, b in pairs.tolist()],
        "cycle_items": [item_ids[i] for i in cycle_items.tolist()],
        "cycles": [
            {
                "user_id": user_ids[u],
                "item_id": item_ids[i],
                "period_days": p,
                "last_purchase": _iso(start_s + t),
                "next_due": _iso(start_s + t + p * DAY),
            }
            for u, i, p, t in zip(
                cycles.user.tolist(),
                cycles.item.tolist(),
                cycles.period_days.tolist(),
                last.tolist(),
                strict=True,
            )
        ],
    }


def _dictionary(series: pd.Series) -> tuple[Any, np.ndarray | None]:
    """(arrow strings, int codes) for a categorical column; (arrow column, None) otherwise."""
    import pyarrow as pa

    if isinstance(series.dtype, pd.CategoricalDtype):
        categories = pa.array(series.cat.categories.astype(str).to_numpy(dtype=object), pa.string())
        return categories, series.cat.codes.to_numpy()
    return pa.array(series, from_pandas=True).cast(pa.string()), None


class _TimeText:
    """ISO-8601 text for epoch seconds from two lookup tables (days, seconds of the day)."""

    def __init__(self, seconds: np.ndarray) -> None:
        import pyarrow as pa

        low = int(seconds.min()) if len(seconds) else 0
        high = int(seconds.max()) if len(seconds) else 0
        self.first_day = low // DAY
        days = np.arange(self.first_day, high // DAY + 1) * DAY
        self.days = pa.array(np.datetime_as_string(days.astype("datetime64[s]"), unit="D"))
        clock = np.arange(DAY)
        self.clock = pa.array(
            [
                f"{h:02d}:{m:02d}:{s:02d}Z"
                for h, m, s in zip(
                    (clock // 3600).tolist(),
                    (clock // 60 % 60).tolist(),
                    (clock % 60).tolist(),
                    strict=True,
                )
            ]
        )

    def __call__(self, seconds: np.ndarray) -> Any:
        import pyarrow.compute as pc

        day = pc.take(self.days, seconds // DAY - self.first_day)
        return pc.binary_join_element_wise(day, pc.take(self.clock, seconds % DAY), "T")


def _epoch_seconds(series: pd.Series) -> np.ndarray:
    values: np.ndarray = series.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    return np.asarray(values.astype("datetime64[s]").astype(np.int64))


def _truth_json(truth: dict[str, Any]) -> str:
    """JSON with one top-level key, list element or mapping entry a line: greppable, diffable."""

    def compact(value: Any) -> str:
        return json.dumps(value, separators=(", ", ": "))

    lines = []
    for key, value in truth.items():
        if isinstance(value, dict) and value:
            inner = ",\n".join(f"  {compact(k)}: {compact(v)}" for k, v in value.items())
            lines.append(f" {compact(key)}: {{\n{inner}\n }}")
        elif isinstance(value, list) and value:
            inner = ",\n".join(f"  {compact(v)}" for v in value)
            lines.append(f" {compact(key)}: [\n{inner}\n ]")
        else:
            lines.append(f" {compact(key)}: {compact(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write(
    store: SyntheticStore, out: str | Path, fmt: str = "csv", chunk_rows: int = 1_000_000
) -> dict[str, Path]:
    """Write events.{csv,parquet}, items.csv and ground_truth.json into `out`, in row chunks.

    CSV timestamps are ISO-8601 text (`2026-03-01T12:34:56Z`); Parquet keeps them as
    timestamp[s, UTC]. Files appear under their final names only when complete. Raises
    InvalidInput for an unknown format or an `out` that is not a directory.
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    from recsvc.progress import progress

    if fmt not in FORMATS:
        raise InvalidInput("--format", f"'{fmt}' is not one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidInput("--out", f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "events": out / f"events.{fmt}",
        "items": out / "items.csv",
        "ground_truth": out / "ground_truth.json",
    }
    events = store.events
    text_columns = {
        name: _dictionary(events[name]) for name in ("user_id", "item_id", "event_type", "order_id")
    }
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("item_id", pa.string()),
            ("event_type", pa.string()),
            ("timestamp", pa.string() if fmt == "csv" else pa.timestamp("s", tz="UTC")),
            ("order_id", pa.string()),
            ("quantity", pa.int16()),
            ("price", pa.float64()),
        ]
    )
    # No quoting: ids, event names, numbers and our titles never hold commas or quotes.
    csv_options = pa_csv.WriteOptions(include_header=False, quoting_style="none")
    seconds = _epoch_seconds(events["timestamp"])
    time_text = _TimeText(seconds) if fmt == "csv" else None

    def chunk(lo: int, hi: int) -> pa.Table:
        columns: list[Any] = []
        for name in schema.names:
            if name in text_columns:
                values, codes = text_columns[name]
                if codes is None:
                    columns.append(values.slice(lo, hi - lo))
                else:
                    part = codes[lo:hi]
                    columns.append(values.take(pa.array(part, mask=part < 0)))
            elif name == "timestamp":
                part = seconds[lo:hi]
                columns.append(
                    time_text(part)
                    if time_text
                    else pa.array(part, pa.int64()).cast(schema.field(name).type)
                )
            else:
                columns.append(
                    pa.array(events[name].iloc[lo:hi], schema.field(name).type, from_pandas=True)
                )
        return pa.Table.from_arrays(columns, schema=schema)

    partial = paths["events"].with_name(paths["events"].name + ".partial")
    bar = progress(total=len(events), desc=f"writing {paths['events'].name}", unit="rows")
    if fmt == "csv":
        with open(partial, "wb") as handle:
            handle.write((",".join(EVENT_COLUMNS) + "\n").encode())
            with pa_csv.CSVWriter(handle, schema, write_options=csv_options) as writer:
                for lo in range(0, len(events), chunk_rows):
                    hi = min(lo + chunk_rows, len(events))
                    writer.write_table(chunk(lo, hi))
                    bar.update(hi - lo)
    else:
        with pq.ParquetWriter(partial, schema, compression="zstd") as writer:
            for lo in range(0, len(events), chunk_rows):
                hi = min(lo + chunk_rows, len(events))
                writer.write_table(chunk(lo, hi))
                bar.update(hi - lo)
    bar.close()
    os.replace(partial, paths["events"])

    items_partial = paths["items"].with_name("items.csv.partial")
    with open(items_partial, "wb") as handle:
        handle.write((",".join(ITEM_COLUMNS) + "\n").encode())
        pa_csv.write_csv(
            pa.Table.from_pandas(store.items, preserve_index=False),
            handle,
            write_options=csv_options,
        )
    os.replace(items_partial, paths["items"])

    truth_partial = paths["ground_truth"].with_name("ground_truth.json.partial")
    truth_partial.write_text(_truth_json(store.ground_truth), encoding="utf-8")
    os.replace(truth_partial, paths["ground_truth"])
    return paths
