"""Popularity lists: distinct weighted users, trending, per category / segment / cluster."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from recsvc.bundle import Bundle, BundleWriter
from recsvc.config import EventsConfig, PopularityConfig
from recsvc.events import Catalog, EventLog
from recsvc.ids import IdMap
from recsvc.matrix import event_weights
from training.popularity import fit_popularity, write_popularity

DAY = 86_400
START = 1_767_225_600
TYPES = ("view", "cart", "purchase")


def make_log(rows: Sequence[tuple[str | None, str, str, float]], orders: Sequence[str] = ()
             ) -> EventLog:
    """EventLog from (user or None, item, event type, day) rows; optional order per row."""
    users, items, order_map = IdMap(), IdMap(), IdMap()
    user = np.array(
        [users.add(r[0]) if r[0] is not None else -1 for r in rows], dtype=np.int32
    )
    order = (
        order_map.encode(np.array(orders, dtype=object))
        if orders else np.full(len(rows), -1, np.int32)
    )
    return EventLog(
        users=users,
        items=items,
        orders=order_map,
        event_types=list(TYPES),
        user=user,
        item=items.encode(np.array([r[1] for r in rows], dtype=object)),
        event=np.array([TYPES.index(r[2]) for r in rows], dtype=np.int16),
        timestamp=np.array([START + round(r[3] * DAY) for r in rows], dtype=np.int64),
        order=order.astype(np.int32),
        quantity=np.ones(len(rows), dtype=np.float32),
        price=np.full(len(rows), np.nan, dtype=np.float32),
        rating=np.full(len(rows), np.nan, dtype=np.float32),
        has_column={"user_id": True, "item_id": True, "event_type": True, "timestamp": True},
    )


def fit(log: EventLog, now_day: float, config: PopularityConfig | None = None, **kwargs):  # type: ignore[no-untyped-def]
    weights = event_weights(log, EventsConfig())
    catalog = kwargs.pop("catalog", Catalog.empty(len(log.items)))
    return fit_popularity(
        log, weights, catalog, config or PopularityConfig(), START + round(now_day * DAY), **kwargs
    )


def ranked(log: EventLog, lists, name: str, group: str = "all") -> list[str]:  # type: ignore[no-untyped-def]
    found = lists[name].get(group)
    assert found is not None, f"{name}/{group} missing"
    return [log.items.id_of(i) for i in found[0]]


def test_global_counts_each_user_once_with_their_strongest_event() -> None:
    rows = [("bot", "spam", "view", d / 10) for d in range(300)]  # one user, 300 views
    rows += [("ann", "kettle", "purchase", 1), ("ann", "kettle", "view", 1)]
    rows += [("bob", "kettle", "cart", 2), ("cy", "mug", "view", 2), ("dee", "mug", "view", 3)]
    log = make_log(rows)
    lists = fit(log, 5)
    assert ranked(log, lists, "global") == ["kettle", "mug", "spam"]
    scores = dict(zip(ranked(log, lists, "global"), lists["global"].get("all")[1].tolist(),
                      strict=True))
    assert scores == {"kettle": 8.0 + 4.0, "mug": 2.0, "spam": 1.0}


def test_trending_surfaces_the_rising_item_over_the_long_run_favourite() -> None:
    rows = [(f"old{n}", "classic", "purchase", n % 10) for n in range(40)]
    rows += [(f"new{n}", "rising", "purchase", 97 + n % 3) for n in range(8)]
    rows += [(f"mid{n}", "steady", "purchase", n * 10) for n in range(10)]
    log = make_log(rows)
    lists = fit(log, 100, PopularityConfig(trending_half_life_days=7))
    assert ranked(log, lists, "global")[0] == "classic"
    assert ranked(log, lists, "trending")[0] == "rising"
    assert ranked(log, lists, "trending")[-1] == "classic"


def test_trending_equals_popularity_when_everything_is_recent_or_undated() -> None:
    rows = [(f"u{n}", f"i{n % 4}", "purchase", 10.0) for n in range(20)]
    rows += [(f"u{n}", "i0", "view", 10.0) for n in range(5)]
    log = make_log(rows)
    lists = fit(log, 10)
    assert ranked(log, lists, "trending") == ranked(log, lists, "global")
    log.has_column["timestamp"] = False
    undated = fit(log, 10)
    assert np.array_equal(undated["trending"].scores, undated["global"].scores)


def test_category_lists_hold_only_their_category_and_respect_top_n() -> None:
    rows = [(f"u{n}", f"item{k}", "purchase", 1) for k in range(6) for n in range(k + 1)]
    log = make_log(rows)
    catalog = Catalog.empty(len(log.items))
    for k in range(6):
        catalog.category[log.items.get(f"item{k}")] = ("even", "odd")[k % 2] if k < 5 else ""
    lists = fit(log, 2, PopularityConfig(top_n=2), catalog=catalog)
    assert lists["category"].names == ["even", "odd"]  # unknown category: no group
    assert ranked(log, lists, "category", "even") == ["item4", "item2"]
    assert ranked(log, lists, "category", "odd") == ["item3", "item1"]
    assert len(ranked(log, lists, "global")) == 2


def test_segment_and_cluster_lists_follow_their_users() -> None:
    rows = [(f"c{n}", "caviar", "purchase", 1) for n in range(3)]
    rows += [(f"c{n}", "bread", "view", 1) for n in range(2)]
    rows += [(f"h{n}", "bread", "purchase", 1) for n in range(5)]
    rows += [("x", "gum", "purchase", 1)]
    log = make_log(rows)
    n_users = len(log.users)
    segment = np.array(["champions" if log.users.id_of(u).startswith("c") else "hibernating"
                        for u in range(n_users)], dtype=object)
    segment[log.users.get("x")] = ""
    cluster = np.array([0 if log.users.id_of(u).startswith("c") else 3 for u in range(n_users)])
    cluster[log.users.get("x")] = -1
    lists = fit(log, 2, segments=segment, clusters=cluster)
    assert lists["segment"].names == ["champions", "hibernating"]
    assert ranked(log, lists, "segment", "champions") == ["caviar", "bread"]
    assert ranked(log, lists, "segment", "hibernating") == ["bread"]
    assert lists["cluster"].names == ["0", "3"]
    assert ranked(log, lists, "cluster", "0")[0] == "caviar"
    assert "gum" not in ranked(log, lists, "cluster", "3")
    no_groups = fit(log, 2)
    assert no_groups["segment"].names == [] and no_groups["cluster"].names == []


def test_rows_without_a_user_count_once_per_order() -> None:
    rows = [(None, "a", "purchase", 1), (None, "a", "purchase", 1), (None, "b", "purchase", 1),
            (None, "b", "purchase", 2), (None, "b", "purchase", 3)]
    log = make_log(rows, orders=["o1", "o1", "o1", "o2", "o3"])
    lists = fit(log, 3)
    assert ranked(log, lists, "global") == ["b", "a"]
    assert lists["global"].get("all")[1].tolist() == [24.0, 8.0]


def test_lists_round_trip_through_the_bundle(tmp_path: Path) -> None:
    rows = [(f"u{n}", f"i{n % 3}", "purchase", n) for n in range(9)]
    log = make_log(rows)
    catalog = Catalog.empty(len(log.items))
    catalog.category[:] = "tea"
    lists = fit(log, 9, catalog=catalog, segments=np.array(["new"] * len(log.users), dtype=object),
                clusters=np.zeros(len(log.users), dtype=np.int32))
    writer = BundleWriter(tmp_path / "bundles")
    write_popularity(writer, lists)
    bundle = Bundle(writer.commit({}))
    for name in ("global", "trending", "category", "segment", "cluster"):
        loaded = bundle.popularity(name)
        assert loaded.names == lists[name].names
        assert np.array_equal(loaded.items, lists[name].items)
        assert np.allclose(loaded.scores, lists[name].scores)


def test_one_fresh_sale_of_an_obscure_item_is_not_a_trend() -> None:
    """Steady sellers over 90 days and one purchase of a new item yesterday: the new item runs
    far ahead of its long-run share (its only sale is recent), yet one sale is no trend; a
    rising item with a handful of fresh buyers is."""
    rows = [(f"s{k}-{n}", f"steady{k}", "purchase", 3 * n + k / 10) for k in range(10)
            for n in range(30)]
    rows += [("once", "obscure", "purchase", 89)]
    rows += [(f"r{n}", "rising", "purchase", 86 + n / 2) for n in range(6)]
    log = make_log(rows)
    lists = fit(log, 90, PopularityConfig(trending_half_life_days=7))
    trending = ranked(log, lists, "trending")
    assert trending[0] == "rising"
    assert trending.index("obscure") == len(trending) - 1
