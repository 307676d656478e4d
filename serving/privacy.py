"""Forgetting a customer from a running server: the store, the real-time state, the caches.

`forget_user` is what the ForgetUser RPC does: the store's `forget_user` (every stored
version, the real-time events, the forget list the trainer honours; ids hashed there when the
store hashes them), then this process's caches (`RecommendationService.drop_user`).

Other server processes (`--workers N`, other hosts) hold their own caches: `ForgetWatcher`
re-reads the store's forget list every `forget_poll_seconds` and drops newly listed customers
from this process's caches, so within a few seconds no process can answer from a forgotten
customer's cached history. With hashed ids the list holds keys, so the watcher hashes the ids
it has cached to find them (only when the list grew).
"""

from __future__ import annotations

import logging
import threading
import time

from recsvc.errors import InvalidInput
from serving.domain import RecommendationService
from serving.fallback import STORE_FAILURES

log = logging.getLogger(__name__)


def forget_user(service: RecommendationService, user_id: str, deadline: float | None = None) -> int:
    """Remove a customer everywhere; returns how many stored versions held their data.

    Raises StoreUnavailable when the store cannot take it (safe to retry: idempotent).
    """
    if not user_id:
        raise InvalidInput("user_id", "must not be empty")
    service.drop_user(user_id)  # at once: the fallback must not answer from it either
    budget = None if deadline is None else max(0.0, deadline - time.monotonic())
    held = service.guard.call(service.store.forget_user, user_id, budget=budget)
    service.drop_user(user_id)  # a request racing the forget may have cached it again
    log.info("customer forgotten", extra={"versions": held})
    return int(held)


class ForgetWatcher:
    """Drops customers forgotten through other processes from this process's caches."""

    def __init__(self, service: RecommendationService, poll_seconds: float) -> None:
        self.service = service
        self.poll_seconds = poll_seconds
        self._known: set[str] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.poll_seconds <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="forget-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception as exc:  # never let the watcher die: the next poll retries
                # The type only: a message could quote a forget-list entry (a customer id).
                log.error("forget list poll failed", extra={"error": type(exc).__name__})

    def poll(self) -> int:
        """Read the forget list once; drop newly listed customers. Returns how many dropped."""
        store = self.service.store
        try:
            entries = set(store.forgotten_users())
        except STORE_FAILURES:
            return 0  # the store is down: nothing new can be read; try again next time
        known = self._known
        fresh = entries - known if known is not None else entries
        if not fresh:
            self._known = entries
            return 0
        self.service.forgets_changed()  # a cache warm-up reading now may hold them
        cache = self.service.user_cache
        dropped = 0
        for user_id in cache.keys():
            if store.forget_entry(user_id) in fresh:
                self.service.drop_user(user_id)
                dropped += 1
        self._known = entries  # only now: a poll that failed midway sees them as new again
        if dropped:
            log.info("dropped forgotten customers from the caches", extra={"customers": dropped})
        return dropped
