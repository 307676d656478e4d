"""The feature store's version table: which versions a publish keeps, and in which order.

Runs against memory://, a real redis-server and a real Redis Cluster (the fixtures of
tests/test_store.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
