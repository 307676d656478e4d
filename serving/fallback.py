"""Degradation: a circuit breaker around store calls and in-process caches of hot keys.

When the store fails or is too slow for the caller's deadline, the breaker opens for
`retry_after` seconds; meanwhile requests skip the store at once and are answered from the hot
caches (a user's last features, an item's last similar list) or the last-known popularity lists
held by the loaded model. After `retry_after`, one request probes the store; success closes
the breaker, so the server recovers by itself. The model poller's successful reads close it too.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Generic, TypeVar

from recsvc.errors import StoreUnavailable

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")

# What a store implementation or its client library may raise when the backend misbehaves.
STORE_FAILURES: tuple[type[BaseException], ...] = (StoreUnavailable, ConnectionError, TimeoutError, OSError)


# A store call that misses a deadline shorter than this does not count against the store.
MIN_FAILURE_BUDGET = 0.01

# Immediate retries of a failed store call by the Redis client (serving.server.store_options):
# one survives a pooled connection that went stale across a Redis restart. A call can then take
# (1 + STORE_RETRIES) socket timeouts before it fails.
STORE_RETRIES = 1


class _CallerTooHurried(Exception):
    """The caller's deadline left too little time to judge the store by."""


class LruCache(Generic[K, V]):
    """A small thread-safe LRU map."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        # No lock: each OrderedDict call is atomic under the GIL (C code, str/tuple keys), and
        # a key evicted between the two calls only skips the recency update. Every request
        # makes this call; the writers below serialise among themselves.
        data = self._data
        value = data.get(key)
        if value is not None:
            try:
                data.move_to_end(key)
            except KeyError:
                pass
        return value

    def put(self, key: K, value: V) -> None:
        if self.maxsize <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def fill(self, entries: Iterable[tuple[K, V]], replaceable: Callable[[V], bool]) -> int:
        """Add entries without evicting anything (e.g. a background warm-up).

        An absent key goes in at the least recently used end while there is room; a present
        one is overwritten (keeping its place) only when `replaceable(current value)`.
        Returns how many entries were stored.
        """
        stored = 0
        with self._lock:
            data = self._data
            for key, value in entries:
                current = data.get(key)
                if current is not None:
                    if replaceable(current):
                        data[key] = value
                        stored += 1
                elif len(data) < self.maxsize:
                    data[key] = value
                    data.move_to_end(key, last=False)
                    stored += 1
        return stored

    def discard(self, keys: Iterable[K], unwanted: Callable[[V], bool]) -> int:
        """Drop those of `keys` whose value is `unwanted`; returns how many were dropped."""
        dropped = 0
        with self._lock:
            data = self._data
            for key in keys:
                value = data.get(key)
                if value is not None and unwanted(value):
                    del data[key]
                    dropped += 1
        return dropped

    def pop(self, key: K) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def keys(self) -> list[K]:
        """A snapshot of the keys (e.g. to find cached customers who were forgotten)."""
        with self._lock:
            return list(self._data)

    def __len__(self) -> int:
        return len(self._data)


class StoreGuard:
    """Runs store calls behind a circuit breaker, within a time budget when one is given."""

    def __init__(self, retry_after: float, store_timeout: float, threads: int = 4) -> None:
        self.retry_after = retry_after
        # the longest a store call runs on its own before it fails: a timeout per attempt
        self.longest_call = store_timeout * (1 + STORE_RETRIES)
        self._open_until = 0.0
        self._probing = False
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        self.threads = threads  # bounded calls at once: one per handler thread
        self.failures = 0

    @property
    def degraded(self) -> bool:
        return self._open_until > 0.0

    def call(self, fn: Callable[..., T], *args: object, budget: float | None = None) -> T:
        """`fn(*args)`, or StoreUnavailable when the breaker is open, the call fails, or it
        does not finish within `budget` seconds (None: the store's own socket timeouts)."""
        probe = False
        if self._open_until:
            with self._lock:
                if time.monotonic() < self._open_until or self._probing:
                    raise StoreUnavailable("feature store unavailable (answering from cache)")
                self._probing = probe = True
        try:
            if budget is not None and budget < self.longest_call:
                if budget <= 0:  # the caller's deadline has passed: not the store's fault
                    raise _CallerTooHurried("no time left before the deadline")
                result = self._bounded(fn, args, budget)
            else:
                result = fn(*args)
        except _CallerTooHurried as exc:
            raise StoreUnavailable(str(exc)) from None
        except STORE_FAILURES as exc:
            self.record_failure()
            raise StoreUnavailable(f"feature store call failed: {type(exc).__name__}") from exc
        finally:
            if probe:
                self._probing = False
        if self._open_until:
            self.record_success()
        return result

    def _bounded(self, fn: Callable[..., T], args: tuple[object, ...], budget: float) -> T:
        # Only requests whose deadline is shorter than a failing store call (its timeouts and
        # retry) pay the thread hand-off; the call keeps running if we give up on it.
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(self.threads, "store-bounded")
        future = self._executor.submit(fn, *args)
        try:
            return future.result(timeout=budget)
        except FutureTimeout:
            message = f"store call took longer than {budget * 1000:.0f} ms"
            if budget < MIN_FAILURE_BUDGET:
                raise _CallerTooHurried(message) from None  # a healthy store may need longer
            raise TimeoutError(message) from None

    def record_failure(self) -> None:
        with self._lock:
            self.failures += 1
            self._open_until = time.monotonic() + self.retry_after

    def record_success(self) -> None:
        with self._lock:
            self._open_until = 0.0

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
