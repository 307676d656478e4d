"""The embedded feature store (`memory://[name]`): in-process dictionaries, no server.

Holds the same encoded records as the Redis store (recsvc.store.codec) through the same
`StoreEngine`, so versions, the `current` pointer, rollback, forget and item updates behave
exactly alike; it is populated from a bundle directly with `publish`. A named store
(`memory://shop`) is shared by every `open_store` of that name in the process; `memory://`
alone is private. Its contents live only as long as the process: publishing into it from the
CLI makes sense only inside the process that serves (`recsvc serve`). Real-time event lists
expire `recent_ttl` after their last event, as in Redis: expired lists are swept on every
event, read and `state()` poll, whether or not their user comes back.

Must not import `training` or `serving`.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple
from urllib.parse import urlsplit

from recsvc.errors import InvalidInput, NotFound
from recsvc.store.base import READY, StoreState
from recsvc.store.engine import StoreEngine, with_kept


@dataclass
class _Version:
    meta: dict[str, Any]
    blobs: dict[str, bytes] = field(default_factory=dict)
    users: dict[str, bytes] = field(default_factory=dict)
    items: dict[int, bytes] = field(default_factory=dict)


class _Recent(NamedTuple):
    """A user's real-time lists, newest first, as Redis keeps them in two keys: all events, and
    purchases alone (expiring from the last purchase; never after the events list)."""

    expiry: float
    events: deque[bytes]
    kept_expiry: float
    kept: deque[bytes]


@dataclass
class _Data:
    """Everything one named memory store holds (shared by the handles opened on it)."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    current: str | None = None
    versions: dict[str, _Version] = field(default_factory=dict)
    # user -> real-time lists, oldest push first: expired lists are swept from the front
    events: OrderedDict[str, _Recent] = field(default_factory=OrderedDict)
    forgotten: dict[str, float] = field(default_factory=dict)
    item_updates: dict[str, bytes] = field(default_factory=dict)
    items_revision: int = 0
    publishing: str | None = None
    switches: dict[str, int] = field(default_factory=dict)  # version -> sequence of last switch
    switch_count: int = 0


class MemoryStore(StoreEngine):
    """In-process FeatureStore (see the module docstring)."""

    _named: ClassVar[dict[str, _Data]] = {}
    _named_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, url: str = "memory://", data: _Data | None = None, **options: Any) -> None:
        super().__init__(url, **options)
        self._data = data if data is not None else _Data()

    @classmethod
    def open(cls, url: str, **options: Any) -> MemoryStore:
        parts = urlsplit(url)
        name = (parts.netloc + parts.path).strip("/")
        known = {"scores", "factors", "recent_max", "recent_ttl"}
        unknown = set(options) - known - {"cluster", "prefix"}
        if unknown:
            raise InvalidInput("store option", f"memory:// does not take {', '.join(sorted(unknown))}")
        options = {k: v for k, v in options.items() if k in known}
        if not name:
            return cls(url, **options)
        with cls._named_lock:
            data = cls._named.setdefault(name, _Data())
        return cls(url, data, **options)

    @classmethod
    def drop_named(cls, name: str) -> None:
        """Forget a named store (tests)."""
        with cls._named_lock:
            cls._named.pop(name, None)

    # -- global state -----------------------------------------------------------------------

    def current_version(self) -> str | None:
        return self._data.current

    def state(self) -> StoreState:
        with self._data.lock:
            self._sweep_events()  # servers poll state: expired lists go without any traffic
            return StoreState(self._data.current, self._data.items_revision)

    def version_table(self) -> dict[str, dict[str, Any]]:
        with self._data.lock:
            return {v: dict(entry.meta) for v, entry in self._data.versions.items()}

    def put_version_meta(self, version: str, meta: dict[str, Any]) -> None:
        with self._data.lock:
            entry = self._data.versions.setdefault(version, _Version(meta={}))
            entry.meta = dict(meta)

    def switch_current(self, version: str) -> None:
        with self._data.lock:
            entry = self._data.versions.get(version)
            if entry is None or entry.meta.get("status") != READY:
                raise NotFound(f"version '{version}' is not a complete stored version")
            self._data.current = version
            self._data.switch_count += 1
            self._data.switches[version] = self._data.switch_count

    def switch_order(self) -> dict[str, int]:
        with self._data.lock:
            return dict(self._data.switches)

    def _publish_lock_acquire(self, version: str) -> None:
        with self._data.lock:
            if self._data.publishing is not None:
                raise InvalidInput(
                    "publish", f"another publish ({self._data.publishing}) is running on this store"
                )
            self._data.publishing = version

    def _publish_lock_release(self, version: str) -> None:
        with self._data.lock:
            if self._data.publishing == version:
                self._data.publishing = None

    # -- version data -----------------------------------------------------------------------

    def _version(self, version: str) -> _Version | None:
        return self._data.versions.get(version)

    def put_blobs(self, version: str, blobs: dict[str, bytes]) -> None:
        with self._data.lock:
            self._data.versions.setdefault(version, _Version(meta={})).blobs.update(blobs)

    def get_blob(self, version: str, name: str) -> bytes | None:
        entry = self._version(version)
        return entry.blobs.get(name) if entry is not None else None

    def blob_names(self, version: str) -> list[str]:
        entry = self._version(version)
        return list(entry.blobs) if entry is not None else []

    def put_items(self, version: str, records: list[tuple[int, bytes]]) -> None:
        with self._data.lock:
            self._data.versions.setdefault(version, _Version(meta={})).items.update(records)

    def get_item(self, version: str, item_index: int) -> bytes | None:
        entry = self._version(version)
        return entry.items.get(item_index) if entry is not None else None

    def count_items(self, version: str) -> int:
        entry = self._version(version)
        return len(entry.items) if entry is not None else 0

    def put_users(self, version: str, user_ids: list[str], records: list[bytes]) -> None:
        with self._data.lock:
            users = self._data.versions.setdefault(version, _Version(meta={})).users
            users.update(zip(user_ids, records, strict=True))

    def get_users(
        self, version: str, user_ids: Sequence[str], recent: int
    ) -> list[tuple[bytes | None, list[bytes]]]:
        with self._data.lock:
            entry = self._version(version)
            out: list[tuple[bytes | None, list[bytes]]] = []
            for user_id in user_ids:
                record = entry.users.get(user_id) if entry is not None else None
                out.append((record, self._events(user_id, recent) if recent > 0 else []))
            return out

    def scan_user_records(
        self, version: str, cursor: int, count: int
    ) -> tuple[int | None, list[tuple[str, bytes]]]:
        with self._data.lock:
            entry = self._version(version)
            if entry is None:
                return None, []
            # Insertion order is stable while the version is not written to (it is published).
            records = list(itertools.islice(entry.users.items(), cursor, cursor + max(1, count)))
            following = cursor + len(records)
            return (following if following < len(entry.users) else None), records

    def delete_users(self, version: str, user_ids: Sequence[str]) -> int:
        with self._data.lock:
            entry = self._version(version)
            if entry is None:
                return 0
            return sum(entry.users.pop(u, None) is not None for u in user_ids)

    def count_users(self, version: str) -> int:
        entry = self._version(version)
        return len(entry.users) if entry is not None else 0

    def count_keys(self, version: str) -> int:
        entry = self._version(version)
        if entry is None:
            return 0
        return len(entry.blobs) + len(entry.users) + len(entry.items)

    def drop_version(self, version: str, meta: dict[str, Any]) -> None:
        with self._data.lock:
            if version == self._data.current:
                raise InvalidInput("version", f"'{version}' is current")
            self._data.versions.pop(version, None)
            self._data.switches.pop(version, None)
        self._forget_cache(version)

    # -- real-time, forget, item updates ----------------------------------------------------

    def _sweep_events(self) -> None:
        """Drop expired real-time lists, as Redis expires their keys (call with the lock).

        Lists are kept in the order of their last push, so the expired ones are at the front
        and each is dropped once: amortised O(1) per event. (Handles opened with different
        `recent_ttl` on one named store only delay a list to the expiry of the one before it.)
        """
        events = self._data.events
        now = time.time()
        while events:
            if next(iter(events.values())).expiry >= now:
                return
            events.popitem(last=False)

    def _events(self, user_id: str, limit: int) -> list[bytes]:
        self._sweep_events()
        held = self._data.events.get(user_id)
        if held is None:
            return []
        now = time.time()
        if held.expiry < now:
            del self._data.events[user_id]
            return []
        kept = held.kept if held.kept_expiry >= now else ()
        return with_kept(list(held.events)[:limit], list(kept))

    def push_event(self, user_id: str, event: bytes, kept: bool = False) -> None:
        with self._data.lock:
            self._sweep_events()
            now = time.time()
            held = self._data.events.pop(user_id, None)  # re-inserted last: pushed most recently
            live = held is not None and held.expiry >= now
            events = held.events if held is not None and live else deque(maxlen=self.recent_max)
            purchases = (held.kept if held is not None and live and held.kept_expiry >= now
                         else deque(maxlen=self.recent_max))
            events.appendleft(event)
            kept_expiry = held.kept_expiry if held is not None and live else 0.0
            if kept:
                purchases.appendleft(event)
                kept_expiry = now + self.recent_ttl
            self._data.events[user_id] = _Recent(now + self.recent_ttl, events, kept_expiry, purchases)

    def read_events(self, user_id: str, limit: int) -> list[bytes]:
        with self._data.lock:
            return self._events(user_id, limit)

    def delete_events(self, user_id: str) -> None:
        with self._data.lock:
            self._data.events.pop(user_id, None)

    def add_forgotten(self, user_id: str, ts: float) -> None:
        with self._data.lock:
            self._data.forgotten.setdefault(user_id, ts)

    def forgotten_users(self) -> list[str]:
        with self._data.lock:
            return sorted(self._data.forgotten, key=lambda u: (self._data.forgotten[u], u))

    def put_item_updates(self, updates: dict[str, bytes], revision: int) -> int | None:
        with self._data.lock:
            if self._data.items_revision != revision:
                return None
            self._data.item_updates.update(updates)
            self._data.items_revision += 1
            return self._data.items_revision

    def item_updates(self) -> dict[str, bytes]:
        with self._data.lock:
            return dict(self._data.item_updates)

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None
