"""Segments: RFM values and quantile scores, the segment map, taste clusters, bundle and CLI."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsvc.bundle import Bundle, BundleWriter
from recsvc.config import SegmentsConfig
from recsvc.errors import BundleFormatError
from recsvc.events import Catalog, EventLog
from recsvc.ids import IdMap
from training.segments import (
    SEGMENT_MAP,
    Segments,
    fit_segments,
    quantile_scores,
    segment_names,
    taste_clusters,
)

DAY = 86_400
START = 1_767_225_600  # 2026-01-01T00:00:00Z
Row = tuple[str, str, str, float, str | None, float, float]  # user, item, type, day, order, qty, price


def make_log(rows: Sequence[Row], event_types: Sequence[str] = ("view", "purchase")) -> EventLog:
    users, items, orders = IdMap(), IdMap(), IdMap()
    order_ids = np.array([r[4] for r in rows], dtype=object)
    has_order = np.array([r[4] is not None for r in rows])
    order = np.full(len(rows), -1, dtype=np.int32)
    if has_order.any():
        order[has_order] = orders.encode(order_ids[has_order])
    return EventLog(
        users=users,
        items=items,
        orders=orders,
        event_types=list(event_types),
        user=users.encode(np.array([r[0] for r in rows], dtype=object)),
        item=items.encode(np.array([r[1] for r in rows], dtype=object)),
        event=np.array([list(event_types).index(r[2]) for r in rows], dtype=np.int16),
        timestamp=np.array([START + round(r[3] * DAY) for r in rows], dtype=np.int64),
        order=order,
        quantity=np.array([r[5] for r in rows], dtype=np.float32),
        price=np.array([r[6] for r in rows], dtype=np.float32),
        rating=np.full(len(rows), np.nan, dtype=np.float32),
        has_column={"user_id": True, "item_id": True, "timestamp": True, "event_type": True,
                    "order_id": bool(has_order.any())},
    )


def at(day: float) -> int:
    return START + round(day * DAY)


def test_quantile_scores_rank_into_fifths_with_ties_sharing_a_score() -> None:
    assert quantile_scores(np.array([10.0, 20, 30, 40, 50])).tolist() == [1, 2, 3, 4, 5]
    assert quantile_scores(np.array([50.0, 40, 30, 20, 10]), higher_is_better=False).tolist() == [
        1, 2, 3, 4, 5,
    ]
    ten = quantile_scores(np.arange(10.0))
    assert ten.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    tied = quantile_scores(np.array([1.0, 1, 1, 1, 9]))
    assert len(set(tied[:4].tolist())) == 1 and tied[4] == 5 and tied[0] < 5
    for n in (1, 2, 4, 7):  # all equal: the middle score, whatever the number of buyers
        assert quantile_scores(np.full(n, 2.0)).tolist() == [3] * n


def test_segment_map_corners_and_prospects() -> None:
    r = np.array([5, 1, 5, 1, 3, 4, 2, 5, 0], dtype=np.int8)
    f = np.array([5, 1, 1, 5, 3, 1, 1, 2, 0], dtype=np.int8)
    m = np.array([5, 1, 1, 5, 3, 1, 2, 3, 0], dtype=np.int8)
    assert segment_names(r, f, m).tolist() == [
        "champions", "lost", "new", "cant_lose", "need_attention", "promising", "hibernating",
        "potential_loyalist", "prospect",
    ]
    assert len(SEGMENT_MAP) == 5 and all(len(row) == 5 for row in SEGMENT_MAP)


def rfm_log() -> EventLog:
    """Buyers b1..b5: b_k buys on k days, last on day 90 + 2k, k lines of price 10k; one
    browser who only viewed (last on day 95). Now is day 101."""
    rows: list[Row] = []
    for k in range(1, 6):
        for j in range(k):
            day = 90 + 2 * k - 7 * j
            # two lines in one order count as one purchase occasion
            rows.append((f"b{k}", "x", "purchase", day, f"o{k}-{j}", 1, 10.0 * k))
            rows.append((f"b{k}", "y", "purchase", day, f"o{k}-{j}", 1, np.nan))  # price unknown
        rows.append((f"b{k}", "x", "view", 100, None, 1, np.nan))  # views do not set recency
    rows.append(("browser", "x", "view", 95, None, 1, np.nan))
    return make_log(rows)


def test_rfm_values_scores_and_segments_on_a_hand_log() -> None:
    log = rfm_log()
    segments = fit_segments(log, at(101), None, SegmentsConfig())
    index = {u: log.users.get(u) for u in ("b1", "b3", "b5", "browser")}
    for k in range(1, 6):
        i = log.users.get(f"b{k}")
        assert segments.frequency[i] == k
        assert segments.monetary[i] == pytest.approx(10.0 * k * k)
        assert segments.recency_days[i] == pytest.approx(11 - 2 * k)
        assert (segments.r[i], segments.f[i], segments.m[i]) == (k, k, k)
    assert segments.segment[index["b5"]] == "champions"
    assert segments.segment[index["b3"]] == "need_attention"
    assert segments.segment[index["b1"]] == "lost"
    browser = index["browser"]
    assert segments.segment[browser] == "prospect"
    assert (segments.r[browser], segments.f[browser], segments.m[browser]) == (0, 0, 0)
    assert segments.recency_days[browser] == pytest.approx(6.0)  # from the last view
    assert np.all(segments.cluster == -1)  # no factors given


def test_frequency_counts_days_without_orders_and_monetary_counts_units_without_prices() -> None:
    rows: list[Row] = [
        ("ann", "x", "purchase", 1.1, None, 2, np.nan),
        ("ann", "y", "purchase", 1.2, None, 1, np.nan),  # same day: one occasion
        ("ann", "x", "purchase", 5.0, None, 3, np.nan),
        ("bob", "x", "purchase", 2.0, None, 1, np.nan),
    ]
    log = make_log(rows)
    segments = fit_segments(log, at(10), None, SegmentsConfig())
    ann, bob = log.users.get("ann"), log.users.get("bob")
    assert segments.frequency[ann] == 2 and segments.frequency[bob] == 1
    assert segments.monetary[ann] == 6 and segments.monetary[bob] == 1


UNTIMED_LOG = (  # no timestamp column: recency unknown
    "user_id,item_id,event_type,order_id,quantity,price\n"
    "ann,x,purchase,o1,1,50\nann,y,purchase,o2,1,50\nann,x,purchase,o3,1,50\n"
    "bob,x,purchase,o4,1,5\ncat,y,purchase,o5,1,20\ncat,x,purchase,o6,1,1\n"
    "dan,y,view,,,\n"
)


def test_a_log_without_times_names_segments_from_fm_alone(tmp_path: Path) -> None:
    from recsvc.events import LoadOptions, load_events
    from training.segments import UNTIMED_MAP

    path = tmp_path / "untimed.csv"
    path.write_text(UNTIMED_LOG)
    log, _ = load_events(path, LoadOptions())
    segments = fit_segments(log, at(10), None, SegmentsConfig())
    named = {u: segments.segment[log.users.get(u)] for u in ("ann", "bob", "cat", "dan")}
    assert named == {"ann": "loyal", "bob": "occasional", "cat": "loyal", "dan": "prospect"}
    assert set(named.values()) - {"prospect"} <= set(UNTIMED_MAP)
    assert (segments.r[segments.frequency > 0] == 3).all()


def planted_factors(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three taste directions; users differ in how much they buy (vector length), not taste."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(3, 16))
    sizes = (60, 30, 15)
    truth = np.repeat(np.arange(3), sizes)
    scale = rng.uniform(0.2, 5.0, size=len(truth))[:, None]
    factors = (directions[truth] + 0.15 * rng.normal(size=(len(truth), 16))) * scale
    order = rng.permutation(len(truth))
    return factors[order].astype(np.float32), truth[order]


def test_kmeans_recovers_planted_taste_clusters_numbered_by_size() -> None:
    factors, truth = planted_factors()
    labels = taste_clusters(factors, len(factors), k=3, seed=42)
    table = pd.crosstab(truth, labels)
    assert (table.gt(0).sum(axis=1) == 1).all() and (table.gt(0).sum(axis=0) == 1).all()
    assert labels[truth == 0][0] == 0  # the largest cluster is 0
    assert labels[truth == 2][0] == 2
    again = taste_clusters(factors, len(factors), k=3, seed=42)
    assert np.array_equal(labels, again)


def test_users_without_factors_get_no_cluster() -> None:
    factors, _ = planted_factors()
    factors[0] = 0.0
    labels = taste_clusters(factors, len(factors) + 4, k=3, seed=1)
    assert labels[0] == -1 and np.all(labels[-4:] == -1)
    assert set(labels[1:-4].tolist()) == {0, 1, 2}
    assert np.all(taste_clusters(None, 5, k=3, seed=1) == -1)
    assert np.all(taste_clusters(factors[1:3], 2, k=8, seed=1) >= 0)  # k capped at the users


def write_bundle(tmp_path: Path, log: EventLog, segments: Segments) -> Path:
    writer = BundleWriter(tmp_path / "bundles")
    writer.ids(log.users, log.items, Catalog.empty(len(log.items)))
    segments.write(writer)
    return writer.commit({})


def test_bundle_round_trip_and_cli_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.commands_commerce import register

    log = rfm_log()
    factors = np.random.default_rng(0).normal(size=(len(log.users), 4)).astype(np.float32)
    segments = fit_segments(log, at(101), factors, SegmentsConfig(clusters=2))
    path = write_bundle(tmp_path, log, segments)
    loaded = Segments.read(Bundle(path))
    assert loaded.segment.tolist() == segments.segment.tolist()
    assert np.array_equal(loaded.cluster, segments.cluster)
    assert np.array_equal(loaded.r, segments.r) and np.array_equal(loaded.m, segments.m)
    frame = Bundle(path).frame("segments/users")
    assert list(frame.columns) == ["user_index", "segment", "cluster", "recency_days",
                                   "frequency", "monetary", "r", "f", "m"]

    parser = argparse.ArgumentParser(prog="recsvc")
    register(parser.add_subparsers(dest="command"))
    out = tmp_path / "segments.csv"
    args = parser.parse_args(["segments", "--bundle", str(tmp_path / "bundles"), "--out", str(out)])
    assert args.func(args) == 0
    exported = pd.read_csv(out)
    assert list(exported.columns) == ["user_id", "segment", "cluster", "r", "f", "m",
                                      "recency_days", "frequency", "monetary"]
    assert exported.set_index("user_id").loc["b5", "segment"] == "champions"
    printed = capsys.readouterr().out
    assert "champions" in printed and "prospect" in printed


def test_reading_a_bundle_without_segments_is_a_clear_error(tmp_path: Path) -> None:
    writer = BundleWriter(tmp_path / "bundles")
    path = writer.commit({})
    with pytest.raises(BundleFormatError, match="segments"):
        Segments.read(Bundle(path))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, dict[str, object]]:
    """A trained synthetic store (5 planted taste clusters) and what the generator planted."""
    import json

    from recsvc.config import load_train_config
    from recsvc.synth import SynthConfig, generate, write
    from training.pipeline import train

    directory = tmp_path_factory.mktemp("synth-segments")
    write(generate(SynthConfig(seed=5, users=1_500, items=250, days=90, clusters=5)), directory)
    config = load_train_config(None, {"segments.clusters": 5, "itemknn.enabled": False,
                                      "rules.enabled": False})
    bundle = Bundle(train(directory / "events.csv", directory / "bundles", config).path)
    return bundle, json.loads((directory / "ground_truth.json").read_text())


def test_taste_clusters_recover_the_planted_ones(synthetic: tuple[Bundle, dict[str, object]]) -> None:
    bundle, truth = synthetic
    planted = truth["user_cluster"]
    assert isinstance(planted, dict)
    segments = Segments.read(bundle)
    found = segments.cluster
    expected = np.array([planted[bundle.users.id_of(u)] for u in range(len(bundle.users))])
    table = pd.crosstab(expected, found)
    assert table.shape == (5, 5)
    # each planted cluster lands in a cluster of its own, and each found cluster is one planted
    assert (table.max(axis=1) / table.sum(axis=1)).min() >= 0.85
    assert (table.max(axis=0) / table.sum(axis=0)).min() >= 0.85
    assert len(set(table.idxmax(axis=1).tolist())) == 5


def test_planted_repeat_buyers_score_high_on_frequency(
    synthetic: tuple[Bundle, dict[str, object]],
) -> None:
    bundle, truth = synthetic
    cycles = truth["cycles"]
    assert isinstance(cycles, list)
    repeat = {c["user_id"] for c in cycles}
    segments = Segments.read(bundle)
    is_repeat = np.array([bundle.users.id_of(u) in repeat for u in range(len(bundle.users))])
    buyers = segments.frequency > 0
    assert is_repeat.sum() >= 100 and buyers[is_repeat].all()
    assert segments.f[is_repeat].mean() >= segments.f[buyers & ~is_repeat].mean() + 1.5
    best = np.isin(segments.segment, ["champions", "loyal"])
    assert best[is_repeat].mean() >= 2 * best[buyers & ~is_repeat].mean()
