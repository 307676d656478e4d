"""The feature store's version table: which versions a publish keeps, and in which order.

Runs against memory://, a real redis-server and a real Redis Cluster (the fixtures of
tests/test_store.py).
"""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from recsvc.bundle import Bundle
from recsvc.errors import InvalidInput
from recsvc.store import open_store
from tests.fixtures_redis import redis_cluster_url, redis_url  # noqa: F401  (fixtures)
from tests.test_store import bundles, make_bundle, store, store_url  # noqa: F401  (fixtures)


def _serves(opened: Any, version: str) -> bool:
    """Whether a server still on `version` would get its customers' records."""
    return opened.user_features(version, "u00005") is not None


def test_keep_1_keeps_the_version_servers_answer_from_until_the_next_publish(
    store: Any, bundles: Path  # noqa: F811
) -> None:
    store.publish(make_bundle(bundles, "v1", marker=1), keep=1, progress=False)
    report = store.publish(make_bundle(bundles, "v2", marker=2), keep=1, progress=False)
    # servers poll `current`: until they have loaded v2 they still read v1
    assert report.removed_versions == () and _serves(store, "v1")
    report = store.publish(make_bundle(bundles, "v3", marker=3), keep=1, progress=False)
    assert report.removed_versions == ("v1",)
    assert [v.id for v in store.versions()] == ["v2", "v3"] and _serves(store, "v2")


def test_a_rolled_back_to_version_is_not_pruned_as_the_oldest(store: Any, bundles: Path) -> None:  # noqa: F811
    for number in (1, 2, 3):
        store.publish(make_bundle(bundles, f"v{number}", marker=number), keep=3, progress=False)
    store.rollback(to="v1")  # v1 is the oldest by publish time, but servers answer from it
    report = store.publish(make_bundle(bundles, "v4", marker=4), keep=3, progress=False)
    assert "v1" not in report.removed_versions and _serves(store, "v1")
    assert report.removed_versions == ("v2",)  # the version current longest ago
    assert {v.id for v in store.versions()} == {"v1", "v3", "v4"}
    # next goes v3, current less recently than v1 though published after it
    store.publish(make_bundle(bundles, "v5", marker=5), keep=3, progress=False)
    assert {v.id for v in store.versions()} == {"v1", "v4", "v5"}


def test_republishing_with_ids_hashed_rewrites_the_version(
    store_url: str, bundles: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    monkeypatch.setenv("RECSVC_ID_SECRET", "a-secret-of-at-least-sixteen-bytes")
    plain = open_store(store_url)
    plain.publish(make_bundle(bundles, "v1", marker=1), progress=False)
    plain.publish(make_bundle(bundles, "v2", marker=2), progress=False)
    hashed = open_store(store_url, hash_ids=True)
    report = hashed.publish(Bundle(bundles / "v1"), progress=False)  # turned on: republish
    assert report.n_users == 60 and hashed.current_version() == "v1"
    assert hashed.version_table()["v1"]["user_ids"] == hashed.user_id_mode != "plain"
    features = hashed.user_features("v1", "u00001")
    assert features is not None and features.candidates[0] == 1
    assert len(hashed.item_catalog("v1")) == 40  # no longer refused as written the other way
    stored_keys = {key for key, _ in _all_user_records(hashed, "v1")}
    assert len(stored_keys) == 60 and not stored_keys & {f"u{i:05d}" for i in range(60)}

    # the current version is not rewritten under the servers reading it: a clear refusal
    plain.publish(make_bundle(bundles, "v3", marker=3), progress=False)
    with pytest.raises(InvalidInput, match=r"'v3' is current.*plain.*newly trained bundle"):
        hashed.publish(Bundle(bundles / "v3"), progress=False)
    assert plain.current_version() == "v3" and plain.version_table()["v3"]["user_ids"] == "plain"
    assert plain.user_features("v3", "u00001") is not None
    plain.close()
    hashed.close()


def _all_user_records(opened: Any, version: str) -> list[tuple[str, bytes]]:
    records: list[tuple[str, bytes]] = []
    cursor: int | None = 0
    while cursor is not None:
        cursor, batch = opened.scan_user_records(version, cursor, 1000)
        records += batch
    return records


def test_a_publisher_that_lost_its_lock_leaves_no_keys_behind(redis_url: str, bundles: Path) -> None:  # noqa: F811
    url = f"{redis_url}?prefix=or{uuid.uuid4().hex[:6]}"
    first, second = open_store(url), open_store(url)
    first.publish(make_bundle(bundles, "v1"), progress=False)
    taken_over = threading.Event()
    real_put = first.put_users

    def stalled_put(*args: Any) -> None:  # a batch held up on the network meanwhile
        taken_over.wait(30)
        real_put(*args)

    def lose_the_lock(stage: str, done: int, total: int) -> None:
        if stage == "users" and not taken_over.is_set():
            first.client.delete(first._g("lock"))  # its TTL ran out while the publish stalled
            report = second.publish(make_bundle(bundles, "v3"), progress=False)
            assert report.cleaned_partial == ("v2",)
            taken_over.set()

    first.put_users = stalled_put  # type: ignore[method-assign]
    with pytest.raises(InvalidInput, match="lock expired"):
        first.publish(make_bundle(bundles, "v2"), progress=False, on_batch=lose_the_lock)
    assert sorted(second.version_table()) == ["v1", "v3"] and second.current_version() == "v3"
    left = list(second.client.scan_iter(match=f"{second.prefix}:*v:v2*"))
    assert left == []  # the batch that landed after the takeover was removed by its publisher
    first.close()
    second.close()


def test_versions_published_within_one_second_keep_their_publish_order(
    store: Any, bundles: Path  # noqa: F811
) -> None:
    # published one right after the other; the second's id sorts first (an older bundle)
    first = make_bundle(bundles, "20260102T000000Z-bbbb", marker=1)
    second = make_bundle(bundles, "20260101T000000Z-aaaa", marker=2)
    store.publish(first, progress=False)
    store.publish(second, progress=False)
    assert [v.id for v in store.versions()] == [first.version, second.version]
    assert store.rollback() == first.version  # back to the one published before
