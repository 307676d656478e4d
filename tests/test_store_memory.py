"""The embedded store (memory://): real-time events expire like Redis keys, read or not."""

from __future__ import annotations

import types

import pytest

from recsvc.store import memory as memory_module
from recsvc.store import open_store


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The memory store's clock, moved by the test (now[0] is the time in epoch seconds)."""
    now = [1_700_000_000.0]
    monkeypatch.setattr(memory_module, "time", types.SimpleNamespace(time=lambda: now[0]))
    return now


def test_expired_events_of_visitors_never_read_again_are_released(clock: list[float]) -> None:
    store = open_store("memory://", recent_ttl=60)
    for visitor in range(1000):  # one-time visitors: nobody reads their events again
        store.record_event(f"visitor{visitor}", "i0001", "view")
    clock[0] += 30
    store.record_event("regular", "i0002", "view")
    clock[0] += 31  # the visitors' lists are past their TTL, the regular's is not
    store.state()  # what a server polls every few seconds
    assert set(store._data.events) == {"regular"}  # memory and customer data released
    store.record_event("late", "i0003", "view")
    clock[0] += 61
    store.record_event("later", "i0003", "view")
    assert set(store._data.events) == {"later"}
    assert store.recent_events("regular") == [] and len(store.recent_events("later")) == 1


def test_an_event_extends_the_list_like_redis_expire(clock: list[float]) -> None:
    store = open_store("memory://", recent_ttl=60)
    store.record_event("u1", "i0001", "view")
    clock[0] += 50
    store.record_event("u1", "i0002", "view")
    clock[0] += 50  # 100 s after the first event, 50 s after the last
    store.state()
    assert [e.item_id for e in store.recent_events("u1")] == ["i0002", "i0001"]


def test_a_purchase_expires_from_its_own_time_like_its_redis_key(clock: list[float]) -> None:
    store = open_store("memory://", recent_ttl=60)
    store.record_event("u1", "i0001", "purchase")
    for _ in range(store.recent_max):  # views push the purchase out of the recent list
        clock[0] += 1
        store.record_event("u1", "i0002", "view")
    assert store.recent_events("u1", limit=5)[-1].item_id == "i0001"  # kept apart
    clock[0] += 11  # 61 s after the purchase, 11 s after the last view
    assert [e.item_id for e in store.recent_events("u1", limit=5)] == ["i0002"] * 5
