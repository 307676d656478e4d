"""The feature store: one suite against memory://, a real redis-server and a real Redis Cluster.

Bundles are built with `BundleWriter` directly (no trainer): every user's candidate list starts
with a version marker item, so a reader can tell which version an answer came from.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsvc.bundle import Bundle, BundleWriter, RankedLists
from recsvc.buyagain import BuyAgainLists
from recsvc.errors import InvalidInput, NotFound, RecsvcError, StoreUnavailable
from recsvc.events import Catalog
from recsvc.ids import IdMap
from recsvc.rules import RuleSet
from recsvc.scorers import FactorScorer, save_scorer
from recsvc.store import PARTIAL, READY, FeatureStore, codec, mask_url, open_store
from recsvc.store.memory import MemoryStore
from tests.fixtures_redis import *  # noqa: F403  (redis_url, redis_cluster_url)
from tests.fixtures_redis import free_port, start_redis

ROOT = Path(__file__).resolve().parents[1]

# -- test bundles ----------------------------------------------------------------------------


def make_bundle(
    root: Path,
    version: str,
    n_users: int = 60,
    n_items: int = 40,
    n_candidates: int = 12,
    marker: int = 0,
    seed: int = 0,
    users: list[str] | None = None,
    parts: tuple[str, ...] = ("seen", "candidates", "factors", "similar", "rules", "buyagain",
                              "segments", "popularity"),
    created_at: str | None = None,
) -> Bundle:
    """A small complete bundle; every candidate list starts with item `marker`."""
    rng = np.random.default_rng(seed)
    writer = BundleWriter(root, version)
    user_ids = users or [f"u{i:05d}" for i in range(n_users)]
    n_users = len(user_ids)
    catalog = Catalog(
        category=np.array([f"cat{i % 3}" for i in range(n_items)], dtype=object),
        price=np.arange(n_items, dtype=np.float32) + 0.5,
        in_stock=np.ones(n_items, dtype=bool),
        title=np.array([f"Item {i}" for i in range(n_items)], dtype=object),
    )
    writer.ids(IdMap(user_ids), IdMap(f"i{i:04d}" for i in range(n_items)), catalog)
    if "seen" in parts:
        writer.csr("seen", random_csr(rng, n_users, n_items, 4))
    if "candidates" in parts:
        others = rng.integers(0, n_items - 1, (n_users, n_candidates - 1))
        others += others >= marker  # any item but the marker
        items = np.c_[np.full(n_users, marker), others].astype(np.int32)
        scores = -np.sort(-rng.random((n_users, n_candidates), dtype=np.float32), axis=1)
        items[1, n_candidates // 2 :] = -1  # a short list, -1 padded
        writer.array("candidates/items", items)
        writer.array("candidates/scores", scores)
    if "factors" in parts:
        save_scorer(writer, "als", FactorScorer(rng.standard_normal((n_users, 8), dtype=np.float32),
                                                rng.standard_normal((n_items, 8), dtype=np.float32)))
    if "similar" in parts:
        sim = np.stack([rng.permutation(n_items)[:6] for _ in range(n_items)]).astype(np.int32)
        sim[0, 3:] = -1
        writer.array("similar/indices", sim)
        writer.array("similar/scores", -np.sort(-rng.random((n_items, 6), dtype=np.float32), axis=1))
    if "rules" in parts:
        RuleSet(
            antecedent_indptr=np.array([0, 1, 3], dtype=np.int64),
            antecedent_items=np.array([1, 2, 3], dtype=np.int32),
            consequent=np.array([5, 6], dtype=np.int32),
            support=np.array([0.1, 0.05]), confidence=np.array([0.5, 0.4]),
            lift=np.array([2.0, 3.0]), leverage=np.array([0.01, 0.02]),
            conviction=np.array([1.5, np.inf]), n_orders=100,
        ).save(writer.dir("rules"))
    if "buyagain" in parts:
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        indptr[1:] = 2  # user 0 has two items
        BuyAgainLists(
            indptr=indptr, items=np.array([3, 4], dtype=np.int32),
            due_score=np.array([0.6, 0.2], dtype=np.float32),
            next_due=np.array([1_700_000_000, 1_700_500_000]),
            interval_days=np.array([7.0, 30.0], dtype=np.float32),
            count=np.array([4, 2], dtype=np.int32), last=np.array([1_699_400_000, 1_697_900_000]),
            sd_days=np.array([1.0, 3.0], dtype=np.float32),
            confidence=np.array([0.8, 0.67], dtype=np.float32), trained_at=1_700_000_000,
        ).write(writer)
    if "segments" in parts:
        writer.frame("segments/users", pd.DataFrame({
            "segment": ["champions" if i % 2 else "at risk" for i in range(n_users)],
            "cluster": np.arange(n_users) % 4, "recency_days": np.arange(n_users, dtype=float),
            "frequency": 3.0, "monetary": 42.5, "r": 5, "f": 4, "m": 3,
        }))
    if "popularity" in parts:
        RankedLists.from_dict({"all": (np.array([marker, 7, 8]), np.array([9.0, 5.0, 1.0]))}).write(
            writer, "popularity/global")
        RankedLists.from_dict({"cat0": (np.array([0, 3]), np.array([2.0, 1.0])),
                               "cat1": (np.array([1, 4]), np.array([2.0, 1.0]))}).write(
            writer, "popularity/category")
    manifest: dict[str, Any] = {"default_recommender": "als", "test": True}
    if created_at:
        manifest["created_at"] = created_at
    writer.commit(manifest)
    return Bundle(root / version)


def random_csr(rng: np.random.Generator, rows: int, cols: int, mean: float) -> sp.csr_matrix:
    """About `mean` random distinct columns per row (scipy's sparse.random is slow)."""
    counts = rng.poisson(mean, rows)
    indptr = np.r_[0, np.cumsum(counts)]
    matrix = sp.csr_matrix(
        (np.ones(indptr[-1], np.float32), rng.integers(0, cols, indptr[-1]), indptr), shape=(rows, cols)
    )
    matrix.sum_duplicates()
    return matrix


# -- stores ----------------------------------------------------------------------------------

BACKENDS = ["memory", "redis", "cluster"]


def _url(request: pytest.FixtureRequest, backend: str) -> str:
    tag = uuid.uuid4().hex[:10]
    if backend == "memory":
        return f"memory://test-{tag}"
    base = request.getfixturevalue("redis_url" if backend == "redis" else "redis_cluster_url")
    return f"{base}?prefix=t{tag}"


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest) -> str:
    """A URL of an empty store (its own prefix / name) on each backend."""
    return _url(request, request.param)


@pytest.fixture
def store(store_url: str) -> Iterator[Any]:
    opened = open_store(store_url)
    yield opened
    opened.close()


@pytest.fixture
def bundles(tmp_path: Path) -> Path:
    return tmp_path / "bundles"


def reference(bundle: Bundle, user: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row = bundle.users.get(user)
    items = np.asarray(bundle.array("candidates/items")[row])
    scores = np.asarray(bundle.array("candidates/scores")[row])
    n = int(np.argmax(items < 0)) if (items < 0).any() else len(items)
    seen = bundle.seen
    return items[:n], scores[:n], np.sort(seen.indices[seen.indptr[row] : seen.indptr[row + 1]])


# -- the suite -------------------------------------------------------------------------------


def test_publish_serves_every_component(store: Any, bundles: Path) -> None:
    bundle = make_bundle(bundles, "v1")
    assert isinstance(store, FeatureStore)
    assert store.current_version() is None
    report = store.publish(bundle, progress=False)
    assert report.version == "v1" and report.n_users == 60 and report.n_items == 40
    assert set(report.components) == {"candidates", "seen", "factors", "segments", "buyagain",
                                      "similar", "rules", "popularity"}
    assert store.current_version() == "v1"
    assert store.manifest("v1")["version"] == "v1"

    for user in ("u00000", "u00001", "u00059"):
        features = store.user_features("v1", user)
        items, scores, seen = reference(bundle, user)
        assert features is not None and features.known
        np.testing.assert_array_equal(features.candidates, items)
        tolerance = codec.score_tolerance(float(scores.min()), float(scores.max()), codec.SCORE_U8)
        assert np.abs(features.scores - scores).max() <= tolerance
        assert (np.diff(features.scores) <= 0).all()  # still best first
        np.testing.assert_array_equal(features.seen, seen)
        user_factors = bundle.array("recommenders/als/user_factors")[bundle.users.get(user)]
        np.testing.assert_allclose(features.factors, user_factors, rtol=1e-2, atol=1e-2)
        assert features.segment is not None
        assert features.segment.segment == ("champions" if int(user[1:]) % 2 else "at risk")
    assert len(store.user_features("v1", "u00001").candidates) == 6  # -1 padding cut

    buyagain = store.buyagain("v1", "u00000")
    assert buyagain is not None and buyagain.items.tolist() == [3, 4]
    ranked = buyagain.for_user(0, now=1_700_000_000, k=1)
    assert ranked[0].item == 3 and "bought 4 times" in ranked[0].reason
    assert store.buyagain("v1", "u00002") is None
    segment = store.user_segment("v1", "u00003")
    assert segment is not None and (segment.cluster, segment.r, segment.monetary) == (3, 5, 42.5)

    catalog = store.item_catalog("v1")
    assert len(catalog) == 40 and catalog.index_of("i0007") == 7 and catalog.index_of("nope") == -1
    assert catalog.category[4] == "cat1" and catalog.price[2] == 2.5 and catalog.in_stock.all()
    np.testing.assert_array_equal(store.item_factors("v1"), bundle.array("recommenders/als/item_factors"))
    similar, similar_scores = store.similar_items("v1", 5)
    np.testing.assert_array_equal(similar, bundle.array("similar/indices")[5])
    assert len(store.similar_items("v1", 0)[0]) == 3
    rules = store.rules("v1")
    assert isinstance(rules, RuleSet) and rules.consequent.tolist() == [5, 6]
    assert rules.n_orders == 100 and np.isinf(rules.conviction[1])
    top, top_scores = store.popularity("v1", "global")
    assert top.tolist() == [0, 7, 8] and top_scores.tolist() == [9.0, 5.0, 1.0]
    assert store.popularity_groups("v1", "category") == ["cat0", "cat1"]
    assert store.popularity("v1", "category", "cat1")[0].tolist() == [1, 4]
    assert len(store.popularity("v1", "segment", "x")[0]) == 0

    assert store.user_features("v1", "stranger") is None
    assert store.user_features("nope", "u00000") is None
    with pytest.raises(NotFound):
        store.manifest("nope")
    many = store.user_features_many("v1", ["u00002", "stranger", "u00003"])
    assert [m.user_id if m else None for m in many] == ["u00002", None, "u00003"]


def test_bundle_without_optional_parts(store: Any, bundles: Path) -> None:
    bundle = make_bundle(bundles, "bare", parts=("candidates",))
    report = store.publish(bundle, progress=False)
    assert report.components == ("candidates",)
    features = store.user_features("bare", "u00004")
    assert features is not None and len(features.candidates) == 12 and len(features.seen) == 0
    assert features.factors is None and features.segment is None and features.buyagain is None
    assert store.item_factors("bare") is None and store.rules("bare") is None
    assert len(store.similar_items("bare", 3)[0]) == 0
    assert store.popularity_groups("bare", "global") == []
    assert len(store.popularity("bare", "global")[0]) == 0


def test_switch_over_and_rollback(store: Any, bundles: Path) -> None:
    store.publish(make_bundle(bundles, "v1", marker=1), progress=False)
    store.publish(make_bundle(bundles, "v2", marker=2), progress=False)
    assert store.current_version() == "v2"
    assert store.user_features(store.current_version(), "u00005").candidates[0] == 2
    assert [(v.id, v.is_current, v.status) for v in store.versions()] == [
        ("v1", False, READY), ("v2", True, READY)]

    assert store.rollback() == "v1"
    assert store.current_version() == "v1"
    assert store.user_features(store.current_version(), "u00005").candidates[0] == 1
    with pytest.raises(NotFound, match="oldest"):
        store.rollback()
    assert store.rollback(to="v2") == "v2"
    with pytest.raises(NotFound, match="v9"):
        store.rollback(to="v9")
    assert store.current_version() == "v2"
    # publishing a version that is already stored just switches to it
    assert store.publish(Bundle(bundles / "v1"), progress=False).version == "v1"
    assert store.current_version() == "v1"


def test_a_rollback_racing_a_deletion_never_points_current_at_a_deleted_version(
    store: Any, bundles: Path
) -> None:
    store.publish(make_bundle(bundles, "v1", marker=1), progress=False)
    store.publish(make_bundle(bundles, "v2", marker=2), progress=False)
    other = open_store(store.url)
    raced: list[BaseException | str] = []
    if store.url.startswith("redis"):  # between retiring v1 and removing its last trace
        real_hdel = store.client.hdel

        def hdel(*args: Any) -> Any:
            try:
                raced.append(other.rollback(to="v1"))
            except (NotFound, InvalidInput) as refused:
                raced.append(refused)
            return real_hdel(*args)

        store.client.hdel = hdel
    store.delete_version("v1")
    if store.url.startswith("redis"):  # the race ran: v1 was no longer a complete version
        assert len(raced) >= 1 and isinstance(raced[0], NotFound), raced
    assert store.current_version() == "v2" and [v.id for v in store.versions()] == ["v2"]
    assert store.user_features("v2", "u00005") is not None
    other.close()


def test_a_publish_that_lost_its_lock_stops_before_switching(redis_url: str, bundles: Path) -> None:
    store = open_store(f"{redis_url}?prefix=lk{uuid.uuid4().hex[:6]}")
    store.publish(make_bundle(bundles, "v1"), progress=False)
    lock = store._g("lock")

    def stall(stage: str, done: int, total: int) -> None:
        if stage == "similar":  # the lock expired while this publish stalled; another took it
            store.client.set(lock, "another publisher")

    with pytest.raises(InvalidInput, match="lock expired"):
        store.publish(make_bundle(bundles, "v2"), progress=False, on_batch=stall)
    assert store.current_version() == "v1"
    assert store.client.get(lock) == b"another publisher"  # not released: not ours
    store.client.delete(lock)
    report = store.publish(make_bundle(bundles, "v3"), progress=False)
    assert report.cleaned_partial == ("v2",) and store.current_version() == "v3"
    store.close()


def test_keep_deletes_older_versions(store: Any, bundles: Path) -> None:
    for number in range(1, 5):
        report = store.publish(make_bundle(bundles, f"v{number}", marker=number), keep=2,
                               progress=False)
    assert report.removed_versions == ("v2",)
    assert [v.id for v in store.versions()] == ["v3", "v4"]
    for gone in ("v1", "v2"):
        assert store.user_features(gone, "u00001") is None
        with pytest.raises(NotFound):
            store.manifest(gone)
        assert store.count_users(gone) == 0 and store.count_items(gone) == 0
        assert store.blob_names(gone) == []
    assert store.user_features("v3", "u00001").candidates[0] == 3
    with pytest.raises(InvalidInput, match="current"):
        store.delete_version("v4")
    store.delete_version("v3")
    assert [v.id for v in store.versions()] == ["v4"]


def test_scan_reads_every_user_once_in_small_batches(store: Any, bundles: Path) -> None:
    bundle = make_bundle(bundles, "v1")
    store.publish(bundle, progress=False)
    store.forget_user("u00007")
    seen: list[str] = []
    cursor: int | None = 0
    rounds = 0
    while cursor is not None:
        cursor, users = store.scan_user_features("v1", cursor, 8)
        seen.extend(u.user_id for u in users)
        rounds += 1
        for features in users:  # the same features a single read gives (no events)
            one = store.user_features("v1", features.user_id)
            np.testing.assert_array_equal(features.candidates, one.candidates)
            np.testing.assert_array_equal(features.scores, one.scores)
            np.testing.assert_array_equal(features.seen, one.seen)
            assert features.segment.segment == one.segment.segment and features.recent == ()
    assert sorted(seen) == sorted(set(bundle.users.ids) - {"u00007"})
    assert rounds > 1  # batched, not everything at once
    assert store.scan_user_features("nope", 0, 8) == (None, [])


def test_forget_user_everywhere(store: Any, bundles: Path) -> None:
    store.publish(make_bundle(bundles, "v1"), progress=False)
    store.publish(make_bundle(bundles, "v2"), progress=False)
    store.record_event("u00007", "i00003", "view")
    assert store.forget_user("u00007") == 2
    for version in ("v1", "v2"):
        assert store.user_features(version, "u00007", recent=5) is None
        assert store.user_features(version, "u00008") is not None
    assert store.recent_events("u00007") == []
    assert store.forgotten_users() == ["u00007"]
    assert store.forget_user("u00007") == 0  # again: nothing left, listed once
    assert store.forgotten_users() == ["u00007"]
    # a later bundle that still has the user does not bring them back
    report = store.publish(make_bundle(bundles, "v3"), progress=False)
    assert report.n_users == 59
    assert store.user_features("v3", "u00007") is None
    assert store.versions()[-1].n_users == 59


def test_user_forgotten_during_a_publish_is_not_published(store: Any, bundles: Path) -> None:
    bundle = make_bundle(bundles, "v1", n_users=9000)
    other = open_store(store.url)

    def forget_midway(stage: str, done: int, total: int) -> None:
        if stage == "users" and done == 4096:
            other.forget_user("u08999")  # written in a later batch, or already: either way gone

    report = store.publish(bundle, progress=False, on_batch=forget_midway)
    assert report.n_users == 8999
    assert store.user_features("v1", "u08999") is None
    assert store.user_features("v1", "u08998") is not None


def test_a_forget_during_verification_does_not_fail_the_publish(
    store: Any, bundles: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recsvc.store import publish

    other = open_store(store.url)
    real = publish.verify_version
    calls: list[int] = []

    def forget_first(engine: Any, version: str, users: int, similar: int, blobs: set[str]) -> None:
        calls.append(users)
        if len(calls) == 1:  # the customer asks to be forgotten right now
            other.forget_user("u00007")
        real(engine, version, users, similar, blobs)

    monkeypatch.setattr(publish, "verify_version", forget_first)
    report = store.publish(make_bundle(bundles, "v1"), progress=False)
    assert store.current_version() == "v1" and report.n_users == calls[0] - 1
    assert store.user_features("v1", "u00007") is None


def test_item_updates_without_retrain(store: Any, bundles: Path) -> None:
    store.publish(make_bundle(bundles, "v1"), progress=False)
    before = store.state()
    frame = pd.DataFrame({
        "item_id": ["i0001", "i0002", "zzz", None, "i0003"],
        "in_stock": ["0", None, "1", "1", "perhaps"],
        "price": [None, "9.99", "1", "2", "abc"],
    })
    report = store.update_items(frame)
    assert (report.rows, report.updated, report.unknown) == (5, 3, 1)
    assert report.bad == {"missing item_id": 1, "unparsable or negative price": 1,
                          "unparsable in_stock": 1}
    after = store.state()
    assert after.current == "v1" and after.items_revision > before.items_revision
    catalog = store.item_catalog("v1")
    assert catalog.revision == after.items_revision
    assert not catalog.in_stock[1] and catalog.price[1] == 1.5  # stock changed, price kept
    assert catalog.in_stock[2] and abs(catalog.price[2] - 9.99) < 1e-5
    assert catalog.in_stock[3] and catalog.price[3] == 3.5  # bad values ignored
    # a second update merges with the first
    store.update_items(pd.DataFrame({"item_id": ["i0001"], "category": ["sale"]}))
    catalog = store.item_catalog("v1")
    assert catalog.category[1] == "sale" and not catalog.in_stock[1]
    # a bundle trained after the update carries fresher metadata: the update does not apply
    store.publish(make_bundle(bundles, "v2", created_at="2999-01-01T00:00:00+00:00"), progress=False)
    assert store.item_catalog("v2").in_stock[1]
    with pytest.raises(InvalidInput, match="item_id"):
        store.update_items(pd.DataFrame({"sku": ["a"]}))


def test_an_old_override_does_not_come_back_over_a_newer_bundle(store: Any, bundles: Path) -> None:
    from datetime import UTC, datetime

    store.publish(make_bundle(bundles, "v1", created_at="2020-01-01T00:00:00+00:00"), progress=False)
    store.update_items(pd.DataFrame({"item_id": ["i0002"], "price": ["99"]}))
    assert store.item_catalog("v1").price[2] == 99.0
    time.sleep(0.05)
    trained = datetime.now(UTC).isoformat()  # the next bundle knows the price changed back
    time.sleep(0.05)
    store.update_items(pd.DataFrame({"item_id": ["i0002"], "in_stock": ["0"]}))  # stock only
    store.publish(make_bundle(bundles, "v2", created_at=trained), progress=False)
    catalog = store.item_catalog("v2")
    assert catalog.price[2] == 2.5 and not catalog.in_stock[2]  # the bundle's price, the new stock
    assert store.item_catalog("v1").price[2] == 99.0  # older than both: both apply


def test_concurrent_item_updates_keep_each_others_fields(store: Any, bundles: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """An update that lands between another's read and its write is merged, not overwritten;
    one that keeps losing the race says so and writes nothing."""
    from recsvc.store import engine

    store.publish(make_bundle(bundles, "v1"), progress=False)
    other = open_store(store.url)
    read = store.item_updates
    interpose: list[str] = ["sale"]  # categories the other process writes, one per read
    always = [False]

    def read_then_race() -> dict[str, bytes]:
        stale = read()
        if interpose:  # another process writes after this one has read
            category = interpose[0] if always[0] else interpose.pop()
            other.update_items(pd.DataFrame({"item_id": ["i0001"], "category": [category]}))
        return stale

    monkeypatch.setattr(store, "item_updates", read_then_race)
    report = store.update_items(pd.DataFrame({"item_id": ["i0001"], "in_stock": ["0"]}))
    catalog = store.item_catalog("v1")
    assert catalog.category[1] == "sale" and not catalog.in_stock[1]
    assert report.revision == store.state().items_revision == 2

    monkeypatch.setattr(engine, "ITEM_UPDATE_ATTEMPTS", 3)
    interpose[:], always[0] = ["toys"], True
    with pytest.raises(StoreUnavailable, match="3 attempts"):
        store.update_items(pd.DataFrame({"item_id": ["i0001"], "price": ["7"]}))
    interpose.clear()
    catalog = store.item_catalog("v1")
    assert catalog.category[1] == "toys" and catalog.price[1] == 1.5  # the refused price not written
    assert store.state().items_revision == 5


def test_realtime_events_in_the_same_read(store: Any, bundles: Path) -> None:
    store.publish(make_bundle(bundles, "v1"), progress=False)
    for index, (item, kind) in enumerate([("i3", "view"), ("i4", "cart"), ("i5", "purchase")]):
        store.record_event("u00002", item, kind, ts=1000.0 + index)
    events = store.recent_events("u00002", limit=2)
    assert [(e.item_id, e.event_type, e.ts) for e in events] == [
        ("i5", "purchase", 1002.0), ("i4", "cart", 1001.0)]
    features = store.user_features("v1", "u00002", recent=10)
    assert [e.item_id for e in features.recent] == ["i5", "i4", "i3"] and features.known
    assert store.user_features("v1", "u00002").recent == ()
    store.record_event("visitor", "sku-\u00e9", "view")
    newcomer = store.user_features("v1", "visitor", recent=5)
    assert newcomer is not None and not newcomer.known and newcomer.recent[0].item_id == "sku-\u00e9"
    assert len(newcomer.candidates) == 0
    for _ in range(store.recent_max + 5):
        store.record_event("busy", "i1", "view")
    assert len(store.recent_events("busy", limit=1000)) == store.recent_max
    with pytest.raises(InvalidInput, match="user_id"):
        store.record_event("", "i1", "view")
    with pytest.raises(InvalidInput, match="item_id"):
        store.record_event("u00002", "", "view")


def test_purchases_outlast_the_views_that_follow_them(store: Any, bundles: Path) -> None:
    store.publish(make_bundle(bundles, "v1"), progress=False)
    store.record_event("u00002", "i5", "purchase", ts=1000.0)
    store.record_event("u00002", "i6", "purchase", ts=1000.5)
    for index in range(store.recent_max + 5):  # more views than the recent list holds
        store.record_event("u00002", "i1", "view", ts=1001.0 + index)
    events = store.recent_events("u00002", limit=3)
    assert [(e.item_id, e.event_type) for e in events] == [("i1", "view")] * 3 + [
        ("i6", "purchase"), ("i5", "purchase")]
    features = store.user_features("v1", "u00002", recent=3)
    assert [e.item_id for e in features.recent] == ["i1", "i1", "i1", "i6", "i5"]
    assert [e.item_id for e in store.recent_events("u00002", limit=store.recent_max + 10)][-2:] == [
        "i6", "i5"]
    store.forget_user("u00002")  # both lists go
    assert store.recent_events("u00002") == []
    assert store.user_features("v1", "u00002", recent=3) is None


def test_status_lists_versions(store: Any, bundles: Path) -> None:
    store.publish(make_bundle(bundles, "v1"), progress=False)
    store.publish(make_bundle(bundles, "v2", parts=("candidates",)), progress=False)
    infos = {v.id: v for v in store.versions()}
    assert infos["v2"].is_current and not infos["v1"].is_current
    assert infos["v1"].n_users == 60 and infos["v1"].bytes > infos["v2"].bytes > 0
    assert infos["v1"].keys > 0 and infos["v2"].components == ("candidates",)
    assert json.dumps(infos["v1"].to_dict())


def test_reader_never_sees_a_mixed_or_missing_version(store: Any, bundles: Path) -> None:
    """A reader polling `current` while publishes run gets complete answers of one version."""
    small = make_bundle(bundles, "v1", marker=1)
    users = list(small.users.ids)
    store.publish(small, progress=False)
    later = [make_bundle(bundles, f"v{n}", n_users=3000, marker=n, users=users + [
        f"x{n}-{i:05d}" for i in range(3000 - len(users))]) for n in (2, 3)]
    reader = open_store(store.url)  # a second client (a named memory store is shared)
    problems: list[str] = []
    seen_versions: list[str] = []
    stop = threading.Event()

    def read() -> None:
        rng = np.random.default_rng(5)
        while not stop.is_set():
            version = reader.current_version()
            picked = [users[i] for i in rng.choice(len(users), 5, replace=False)]
            answers = reader.user_features_many(version, picked)
            seen_versions.append(version)
            marker = int(version[1:])
            for user, answer in zip(picked, answers, strict=True):
                if answer is None:
                    problems.append(f"{version}: {user} missing")
                elif answer.candidates[0] != marker:
                    problems.append(f"{version}: {user} has data of another version")

    def wait_for(version: str) -> None:
        deadline = time.monotonic() + 30
        while version not in seen_versions and time.monotonic() < deadline:
            time.sleep(0.01)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        wait_for("v1")
        for bundle in later:
            store.publish(bundle, progress=False)
        wait_for("v3")
    finally:
        stop.set()
        thread.join()
    assert not problems, problems[:5]
    assert seen_versions[0] == "v1" and seen_versions[-1] == "v3"
    assert seen_versions == sorted(seen_versions)  # never back to an older version
    assert len(seen_versions) > 10


class Boom(Exception):
    pass


def test_failed_publish_keeps_current_and_is_cleaned_next_time(store: Any, bundles: Path) -> None:
    store.publish(make_bundle(bundles, "v1", marker=1), progress=False)
    big = make_bundle(bundles, "v2", n_users=10_000, marker=2)

    def crash(stage: str, done: int, total: int) -> None:
        if stage == "users" and done >= 4096:
            raise Boom()

    with pytest.raises(Boom):
        store.publish(big, progress=False, on_batch=crash)
    assert store.current_version() == "v1"
    assert store.user_features("v1", "u00003").candidates[0] == 1
    status = {v.id: v.status for v in store.versions()}
    assert status == {"v1": READY, "v2": PARTIAL}
    assert store.blob_names("v2")  # partial data is there...
    with pytest.raises(NotFound):
        store.rollback(to="v2")  # ...but can never become current

    report = store.publish(make_bundle(bundles, "v3", marker=3), progress=False)
    assert report.cleaned_partial == ("v2",)
    assert [v.id for v in store.versions()] == ["v1", "v3"]
    assert store.count_users("v2") == 0 and store.blob_names("v2") == []
    assert store.count_items("v2") == 0


def test_second_publisher_is_refused_while_one_runs(store: Any, bundles: Path) -> None:
    bundle = make_bundle(bundles, "v1")
    with store.publish_lock("other"):
        with pytest.raises(InvalidInput, match="another publish"):
            store.publish(bundle, progress=False)
    store.publish(bundle, progress=False)
    assert store.current_version() == "v1"


# -- Redis specifics -------------------------------------------------------------------------


@pytest.mark.slow
def test_killed_publish_process_leaves_current_serving(redis_url: str, bundles: Path) -> None:
    """SIGKILL a real publishing process midway; current serves; the next publish cleans up."""
    url = f"{redis_url}?prefix=kill{uuid.uuid4().hex[:6]}"
    store = open_store(url)
    store.publish(make_bundle(bundles, "v1", marker=1), progress=False)
    big = make_bundle(bundles, "v2", n_users=40_000, n_items=2000, n_candidates=100, marker=2)
    code = (
        "import sys; from recsvc.store import open_store; from recsvc.bundle import Bundle; "
        "open_store(sys.argv[1]).publish(Bundle(sys.argv[2]), progress=False)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", code, url, str(big.path)], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            meta = store.version_table().get("v2")
            if meta and meta["status"] == PARTIAL and store.count_users("v2") > 0:
                break
            assert process.poll() is None, "publish finished before it could be killed"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    assert store.current_version() == "v1"
    assert store.user_features("v1", "u00001").candidates[0] == 1
    assert store.version_table()["v2"]["status"] == PARTIAL
    # the dead process still holds the lock; the next publish on this host takes it over
    report = store.publish(make_bundle(bundles, "v3", marker=3), progress=False)
    assert report.cleaned_partial == ("v2",)
    assert store.count_users("v2") == 0 and store.blob_names("v2") == []
    assert store.current_version() == "v3"


def test_a_lock_is_taken_over_only_from_a_process_known_dead(redis_url: str) -> None:
    """Same hostname is not enough: a publisher in another container (its own pid namespace)
    is never judged dead from here; a reused pid (another start time) is."""
    import socket

    from recsvc.store.redis import _process_identity

    store = open_store(f"{redis_url}?prefix=lock{uuid.uuid4().hex[:6]}")
    here = _process_identity()
    assert set(here) == {"pidns", "started"}  # Linux
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    owners = {
        "another container": {"pid": int(dead.stdout), "pidns": "pid:[1]", "started": "1"},
        "alive": {"pid": os.getpid(), **here},
        "dead": {"pid": int(dead.stdout), **here},
        "pid reused": {"pid": os.getpid(), "pidns": here["pidns"], "started": "1"},
    }
    for case, owner in owners.items():
        store.client.set(store._g("lock"), json.dumps(
            {"host": socket.gethostname(), "version": "x", "token": "t", **owner}), px=60_000)
        if case in ("another container", "alive"):
            with pytest.raises(InvalidInput, match="another publish"):
                store._publish_lock_acquire("v1")
        else:
            with store.publish_lock("v1"):
                assert json.loads(store.client.get(store._g("lock")))["token"] != "t", case
        store.client.delete(store._g("lock"))


def test_cluster_keys_of_one_read_share_a_slot(redis_cluster_url: str, bundles: Path) -> None:
    store = open_store(f"{redis_cluster_url}?prefix=slot{uuid.uuid4().hex[:6]}")
    assert store.cluster
    store.publish(make_bundle(bundles, "v1"), progress=False)
    client = store.client
    for user in ("u00001", "someone else", "ü-ñ"):
        bucket_key = store._users("v1", __import__("recsvc.store.redis", fromlist=["x"]).user_bucket(user))
        assert client.keyslot(bucket_key) == client.keyslot(store._recent(user))
    assert len({client.keyslot(store._g(n)) for n in ("current", "versions", "lock", "items")}) == 1
    # data is spread over the masters
    nodes = {client.get_node_from_key(store._users("v1", b)).name for b in range(0, 4096, 64)}
    assert len(nodes) == 3


def test_password_from_env_and_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    secret = "s3cr3t-" + uuid.uuid4().hex[:6]
    process = start_redis(tmp_path / "auth", port, "--requirepass", secret)
    try:
        monkeypatch.delenv("RECSVC_REDIS_PASSWORD", raising=False)
        with pytest.raises(StoreUnavailable) as refused:
            open_store(f"redis://127.0.0.1:{port}/0")
        assert secret not in str(refused.value)
        with pytest.raises(StoreUnavailable) as wrong:
            open_store(f"redis://:wrong-{secret}@127.0.0.1:{port}/0")
        assert secret not in str(wrong.value) and "***" in str(wrong.value)
        with_url = open_store(f"redis://:{secret}@127.0.0.1:{port}/0")
        assert secret not in with_url.url and "***" in with_url.url
        monkeypatch.setenv("RECSVC_REDIS_PASSWORD", secret)
        caplog.set_level("DEBUG")
        from_env = open_store(f"redis://127.0.0.1:{port}/0")
        from_env.publish(make_bundle(tmp_path / "b", "v1"), progress=False)
        assert from_env.current_version() == "v1"
        assert secret not in caplog.text
    finally:
        process.terminate()
        process.wait()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (also its own CA) and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_store(tmp_path: Path, bundles: Path) -> None:
    pytest.importorskip("cryptography")
    cert, key = _self_signed(tmp_path / "tls")
    port = free_port()
    process = start_redis(tmp_path / "tls-redis", free_port(), "--tls-port", str(port),
                          "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                          "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no")
    try:
        store = open_store(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}")
        store.publish(make_bundle(bundles, "v1"), progress=False)
        assert store.user_features("v1", "u00001") is not None
        with pytest.raises(StoreUnavailable):  # plain text to a TLS port
            open_store(f"redis://127.0.0.1:{port}/0", socket_timeout=1)
    finally:
        process.terminate()
        process.wait()


def test_unreachable_redis_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="cannot reach"):
        open_store(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.5)


def test_a_cluster_url_for_a_single_node_is_store_unavailable(redis_url: str) -> None:
    node = redis_url.split("://", 1)[1].split("/", 1)[0]
    with pytest.raises(StoreUnavailable, match="as a Redis Cluster: .*not enabled"):
        open_store(f"redis+cluster://{node}", socket_timeout=0.5)


# -- URLs ------------------------------------------------------------------------------------


def test_urls() -> None:
    assert mask_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert mask_url("rediss://user:pw@h:1/2?prefix=a") == "rediss://user:***@h:1/2?prefix=a"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"
    with pytest.raises(InvalidInput, match="unknown store scheme"):
        open_store("postgres://x")
    with pytest.raises(InvalidInput, match="not a store URL"):
        open_store("localhost:6379")
    with pytest.raises(InvalidInput, match="prefix"):
        open_store("redis://127.0.0.1:1/0?prefix=a{b}")
    for url, reason in [  # refused before any connection attempt, each naming what is wrong
        ("redis://127.0.0.1:1/0?hash_id=1", "unknown URL setting 'hash_id'"),  # typo of hash_ids
        ("memory://x?prefix=a", "unknown URL setting 'prefix'"),
        ("redis://127.0.0.1:99999/0", "port 99999"),
        ("redis://[::1:6379/0", "malformed URL"),
        ("redis://127.0.0.1:1/0?timeout=abc", "timeout: 'abc' is not a number"),
        ("redis://127.0.0.1:1/0?timeout=nan", "timeout: must be"),
        ("redis://127.0.0.1:1/0?timeout=-1", "timeout: must be"),
        ("redis://127.0.0.1:1/0?cluster=maybe", "cluster: 'maybe' is not 1 or 0"),
        ("redis://127.0.0.1:1/?db=abc", "database 'abc'"),
    ]:
        with pytest.raises(InvalidInput, match=re.escape(reason)):
            open_store(url)
    first = open_store("memory://shared-name")
    first.put_version_meta("x", {"status": PARTIAL})
    assert "x" in open_store("memory://shared-name").version_table()
    assert open_store("memory://").version_table() == {}
    MemoryStore.drop_named("shared-name")


# -- codec properties ------------------------------------------------------------------------

index_lists = st.integers(1, 2**31 - 1).flatmap(
    lambda n_items: st.tuples(
        st.just(n_items),
        st.lists(st.integers(0, n_items - 1), max_size=60),
        st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=60, max_size=60),
    )
)


@settings(max_examples=150, deadline=None)
@given(index_lists, st.sampled_from(sorted(codec.SCORE_CODES.values())), st.booleans())
def test_scored_list_round_trip(case: tuple[int, list[int], list[float]], score_code: int,
                                packed: bool) -> None:
    n_items, items, raw_scores = case
    scores = np.sort(np.array(raw_scores[: len(items)], dtype=np.float32))[::-1]
    if score_code == codec.SCORE_F16:
        scores = np.clip(scores, -65504, 65504)  # the float16 range (the encoder clips)
    blob = codec.encode_scored_list(np.array(items + [-1]), np.r_[scores, 0.0], codec.index_code(n_items, packed), score_code)
    decoded, values, end = codec.decode_scored_list(blob)
    assert end == len(blob)
    assert decoded.tolist() == items
    if items:
        tolerance = codec.score_tolerance(float(scores.min()), float(scores.max()), score_code)
        assert np.abs(values.astype(np.float64) - scores).max() <= tolerance
        assert (np.diff(values) <= 0).all()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**31 - 2), max_size=30, unique=True), min_size=1, max_size=8))
def test_seen_delta_varints_round_trip(rows: list[list[int]]) -> None:
    rows = [sorted(r) for r in rows]
    indptr = np.r_[0, np.cumsum([len(r) for r in rows])]
    stream, offsets = codec.delta_varints(indptr, np.array([i for r in rows for i in r], dtype=np.int64))
    for i, row in enumerate(rows):
        data = stream[offsets[i] : offsets[i + 1]].tobytes()
        assert codec.undelta_varints(data, len(row)).tolist() == row


user_rows = st.integers(1, 6).flatmap(lambda rows: st.tuples(
    st.just(rows), st.integers(2, 70_000), st.integers(0, 2**32 - 1)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(user_rows)
def test_user_record_round_trip(case: tuple[int, int, int]) -> None:
    rows, n_items, seed = case
    rng = np.random.default_rng(seed)
    n = 7
    candidates = rng.integers(0, n_items, (rows, n)).astype(np.int32)
    lengths = rng.integers(0, n + 1, rows)
    for r, length in enumerate(lengths):
        candidates[r, length:] = -1
    scores = -np.sort(-rng.standard_normal((rows, n)).astype(np.float32), axis=1)
    seen = random_csr(rng, rows, n_items, 5)
    factors = rng.standard_normal((rows, 4)).astype(np.float32)
    from recsvc.store.base import UserSegment

    segments = [UserSegment(f"s{r}é", r, 1.5, 2.0, 3.25, 1, 2, 3) if r % 2 else None for r in range(rows)]
    records = codec.encode_user_records(
        codec.UserBatch(candidates, scores, seen, factors, segments), n_items)
    for r, record in enumerate(records):
        features = codec.decode_user_record(record, f"user{r}")
        assert features.candidates.tolist() == candidates[r, : lengths[r]].tolist()
        assert features.seen.tolist() == sorted(seen[r].indices.tolist())
        np.testing.assert_allclose(features.factors, factors[r], rtol=1e-3, atol=1e-3)
        if r % 2:
            assert features.segment is not None and features.segment.segment == f"s{r}é"
            assert (features.segment.cluster, features.segment.monetary) == (r, 3.25)
        else:
            assert features.segment is None


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=20))
def test_strings_round_trip(values: list[str]) -> None:
    assert codec.decode_strings(codec.encode_strings(values)) == values


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 4e9), st.one_of(st.none(), st.text(max_size=10)),
       st.one_of(st.none(), st.floats(0, 1e6, width=32)), st.one_of(st.none(), st.booleans()),
       st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=12))
def test_item_update_and_event_round_trip(ts: float, category: str | None, price: float | None,
                                          in_stock: bool | None, item: str, kind: str) -> None:
    update = codec.ItemUpdate(ts, category, price, in_stock, None)
    assert codec.decode_item_update(codec.encode_item_update(update)) == update
    timed = codec.ItemUpdate(ts, category, price, in_stock, "t", field_ts=(ts, ts - 1, 0.0, ts))
    assert codec.decode_item_update(codec.encode_item_update(timed)) == timed
    event = codec.decode_event(codec.encode_event(item, kind, ts))
    assert event is not None and (event.item_id, event.event_type, event.ts) == (item, kind, ts)


def test_events_of_the_earlier_index_format_are_skipped() -> None:
    import struct

    legacy = struct.pack("<id", 7, 1000.0) + b"purchase"  # item index 7, before item ids
    assert codec.decode_event(legacy) is None
    record = codec.encode_event("sku-7", "view", 5.0)
    assert codec.decode_event(record) is not None
    assert codec.decode_event(record[:16]) is None  # torn inside the item id


def test_record_is_compact() -> None:
    """200 candidates of a 100k catalogue: 17-bit indexes and 1-byte scores."""
    rng = np.random.default_rng(0)
    candidates = rng.integers(0, 100_000, (1, 200)).astype(np.int32)
    scores = -np.sort(-rng.random((1, 200), dtype=np.float32), axis=1)
    record = codec.encode_user_records(codec.UserBatch(candidates, scores), 100_000)[0]
    assert len(record) <= 1 + 4 + 4 + 425 + 8 + 200
    assert codec.decode_user_record(record, "u").candidates.tolist() == candidates[0].tolist()


# -- CLI -------------------------------------------------------------------------------------


def run_cli(*argv: str) -> int:
    """Run the store commands the way recsvc.cli.main does (one line on stderr on error)."""
    from recsvc.commands import store as commands

    parser = argparse.ArgumentParser(prog="recsvc")
    subparsers = parser.add_subparsers(dest="command")
    commands.register(subparsers)
    args = parser.parse_args(list(argv))
    try:
        return int(args.func(args) or 0)
    except RecsvcError as exc:
        print(f"recsvc {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code


def test_cli_publish_status_rollback_forget_items(redis_url: str, bundles: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    url = f"{redis_url}?prefix=cli{uuid.uuid4().hex[:6]}"
    make_bundle(bundles, "v1", marker=1)
    make_bundle(bundles, "v2", marker=2)
    assert run_cli("publish", "--bundle", str(bundles / "v1"), "--store", url) == 0
    assert run_cli("publish", "--bundle", str(bundles), "--store", url, "--keep", "2") == 0  # latest
    assert "current is now v2" in capsys.readouterr().out

    assert run_cli("store", "status", "--store", url, "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["current"] == "v2"
    assert [(v["id"], v["is_current"]) for v in status["versions"]] == [("v1", False), ("v2", True)]
    assert run_cli("store", "status", "--store", url) == 0
    assert "* v2" in capsys.readouterr().out

    assert run_cli("rollback", "--store", url) == 0
    assert "current is now v1" in capsys.readouterr().out
    assert run_cli("rollback", "--store", url, "--to", "nope") == 3
    assert "error: version 'nope'" in capsys.readouterr().err

    forget_file = tmp_path / "forget.txt"
    assert run_cli("forget", "--user", "u00004", "--store", url, "--forget-file", str(forget_file)) == 0
    assert "2 stored version" in capsys.readouterr().out
    assert forget_file.read_text() == "u00004\n"
    assert run_cli("store", "forgotten", "--store", url) == 0
    assert capsys.readouterr().out == "u00004\n"
    assert open_store(url).user_features("v1", "u00004") is None

    items = tmp_path / "items.csv"
    items.write_text("item_id,in_stock\ni0005,false\nunknown,true\n")
    assert run_cli("items", "update", "--store", url, "--items", str(items)) == 0
    assert "1 items updated, 1 not in any stored version" in capsys.readouterr().out
    assert not open_store(url).item_catalog("v1").in_stock[5]
    assert run_cli("items", "update", "--store", url, "--items", str(tmp_path / "none.csv")) == 2
    assert "--items: file not found" in capsys.readouterr().err
    assert run_cli("publish", "--bundle", str(bundles / "v1"), "--store", "bogus://x") == 2


def test_cli_through_the_real_entry_point(redis_url: str, bundles: Path) -> None:
    url = f"{redis_url}?prefix=main{uuid.uuid4().hex[:6]}"
    make_bundle(bundles, "v1")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RECSVC_STORE": url}
    done = subprocess.run([sys.executable, "-m", "recsvc.cli", "publish", "--bundle", str(bundles / "v1")],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    status = subprocess.run([sys.executable, "-m", "recsvc.cli", "store", "status", "--json"],
                            capture_output=True, text=True, env=env)
    assert json.loads(status.stdout)["current"] == "v1"


# -- the publish benchmark (benchmarks/publish.py), small ----------------------------------------


@pytest.mark.redis
def test_publish_benchmark_smoke_writes_well_formed_results(tmp_path: Path) -> None:
    from benchmarks import publish as bench
    from tests.fixtures_redis import REDIS_SERVER

    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (run `make redis-server`)")
    out = tmp_path / "publish.json"
    users, items, candidates = 3000, 2000, 50
    assert bench.main(["--users", str(users), "--items", str(items), "--candidates", str(candidates),
                       "--similar", "10", "--output", str(out), "--workdir", str(tmp_path / "work")]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "publish" and result["date"]
    assert result["machine"]["cores"] >= 1 and result["versions"]["redis_server"]
    assert result["params"]["users"] == users and result["params"]["candidates"] == candidates
    published = result["publish"]
    assert published["seconds"] > 0 and published["redis_keys"] > 0 and published["encoded_bytes"] > 0
    # seconds are rounded to 10 ms and users/s to a unit: agree within those roundings
    rounding = 0.005 / published["seconds"]
    assert published["users_per_s"] == pytest.approx(
        users / published["seconds"], rel=rounding + 1e-3, abs=1)
    memory = result["memory"]
    assert memory["used_memory_after"] > memory["used_memory_before"]
    assert memory["sampled_users"] > 0
    # a candidate list costs its bit-packed indexes plus one byte of score per candidate
    packed = candidates * (codec.index_bits(items) / 8 + 1)
    assert packed <= memory["candidate_list_bytes_mean"] < packed + 32
    assert memory["candidate_list_bytes_mean"] < memory["record_bytes_mean"] <= memory["record_bytes_p99"]
    assert 0 < memory["bytes_per_user_memory_usage_sampled"] < 1024
    latency = result["read_latency_ms"]
    assert 0 < latency["user_features_recent10_p50"] <= latency["user_features_recent10_p99"]
    targets = result["targets"]
    assert targets["seconds_ok"] == (published["seconds"] < targets["seconds"])
