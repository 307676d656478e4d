"""Warming the user cache: a new version's users read in bulk, in the background.

When a model version starts serving, `UserWarmer` reads the versioned features of its users
(`FeatureStore.scan_user_features`: in Redis one pipelined round trip per few buckets, about
`warm_batch` users) into `RecommendationService.user_cache`, so that Recommend for a cached user
needs at most the real-time read, and none at all with the event watch on. The warm-up

- never blocks a request or the version switch (its own thread, no lock held while reading);
- never evicts: it fills free room, and overwrites only entries of other versions (which no
  request can use); users that requests cached first stay as they are;
- is paced: after each batch it sleeps so that it takes at most `warm_cpu_share` of a core,
  and it waits while the store's circuit breaker is open;
- stops when the version changes again (the next warm-up starts), the cache is full, or the
  server stops; a read that overlapped a ForgetUser is discarded and read again;
- repeats every `hot_user_ttl_seconds / 2` as a refresh that overwrites this version's entries
  older than that, so warmed users do not all fall out of the TTL (and cost a full read) at
  once; a customer forgotten meanwhile is not in the store any more, so not refreshed, and
  their entry expires with the TTL as before (the ForgetWatcher drops it within seconds).

Users come in store order (Redis: bucket order, effectively random): a bundle does not say
which users were active most recently, and with the default `hot_users` every user fits.

Progress: the `recsvc_warm_users` gauge and log lines (never a customer id).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from recsvc.errors import InvalidInput
from recsvc.logs import error_frames
from serving import metrics
from serving.fallback import STORE_FAILURES

if TYPE_CHECKING:
    from serving.domain import RecommendationService
    from serving.model import LoadedModel

log = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # after a failed read, or while the breaker is open
LOG_EVERY_SECONDS = 5.0


class UserWarmer:
    """Fills the service's user cache with the current version's users (see module doc)."""

    def __init__(
        self, service: RecommendationService, batch: int, cpu_share: float, refresh_seconds: float = 0.0
    ) -> None:
        self.service = service
        self.batch = max(1, int(batch))
        self.cpu_share = min(1.0, max(0.01, float(cpu_share)))
        self.refresh_seconds = max(0.0, float(refresh_seconds))  # 0: warm once per version
        self._wanted: str | None = None  # the version to warm next
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.warmed: dict[str, int] = {}  # version -> users stored (for tests and logs)
        self.finished: set[str] = set()  # versions whose warm-up ran to its end

    def model_loaded(self, model: LoadedModel) -> None:
        """Warm `model`'s version (a listener of the service: called on every switch)."""
        with self._lock:
            if self._stop.is_set():
                return
            self._wanted = model.version
            self._wake.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="user-warmup", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stop.set()
            self._wake.set()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)

    def _run(self) -> None:
        refresh_at: float | None = None
        while not self._stop.is_set():
            timeout = None if refresh_at is None else max(0.0, refresh_at - time.monotonic())
            woken = self._wake.wait(timeout)
            self._wake.clear()
            version = self._wanted
            if version is None or self._stop.is_set():
                continue
            refresh = not woken  # the timer: re-read entries about to outlive the TTL
            if not refresh and version in self.finished:
                continue  # the same version again (e.g. an item-metadata update)
            try:
                self._warm(version, self.refresh_seconds if refresh else None)
            except Exception as error:  # never let the thread die; the next version tries again
                # type and frames only: a message may quote customer ids (docs/security.md)
                log.error("user cache warm-up failed", extra={
                    "version": version, "error": type(error).__name__, "at": error_frames(error)})
            if self.refresh_seconds > 0:
                refresh_at = time.monotonic() + self.refresh_seconds

    def _current(self, version: str) -> bool:
        model = self.service.tracker.model
        return (
            not self._stop.is_set()
            and self._wanted == version
            and model is not None
            and model.version == version
        )

    def _warm(self, version: str, max_age: float | None = None) -> None:
        """Read every user of `version` into the cache; max_age: a refresh pass, which also
        overwrites this version's entries older than max_age seconds."""
        service = self.service
        cache = service.user_cache
        scan = getattr(service.store, "scan_user_features", None)
        if scan is None or cache.maxsize <= 0:
            return
        started = time.monotonic()
        # Entries of other versions can answer no request any more: make room for this one.
        stale = cache.discard(cache.keys(), lambda entry: entry[0] != version)
        warmed = 0
        cursor: int | None = 0
        last_log = started
        kind = "refresh" if max_age is not None else "warm-up"
        if max_age is None:
            metrics.warm_users(0)
        log.info(f"user cache {kind} started", extra={"version": version, "dropped": stale})
        while cursor is not None and self._current(version):
            if max_age is None and len(cache) >= cache.maxsize:
                break
            if service.guard.degraded:
                self._stop.wait(RETRY_SECONDS)
                continue
            work_started = time.perf_counter()
            generation = service.forget_generation
            try:
                following, users = scan(version, cursor, self.batch)
            except InvalidInput as exc:  # e.g. hashed customer ids: nothing to warm by id
                log.info("user cache warm-up skipped", extra={"version": version, "reason": str(exc)})
                return
            except STORE_FAILURES as exc:
                log.warning("user cache warm-up read failed; retrying",
                            extra={"version": version, "error": type(exc).__name__})
                self._stop.wait(RETRY_SECONDS)
                continue
            stored = service.cache_users(version, users, generation, max_age)
            if stored is None:  # a customer was forgotten meanwhile: read the batch again
                continue
            warmed += stored
            cursor = following
            if max_age is None:
                self.warmed[version] = warmed
                metrics.warm_users(warmed)
            now = time.monotonic()
            if now - last_log >= LOG_EVERY_SECONDS:
                last_log = now
                log.info(f"user cache {kind} progress",
                         extra={"version": version, "users": warmed, "cached": len(cache)})
            # Pace: this thread competes with requests for the GIL and the cores.
            work = time.perf_counter() - work_started
            self._stop.wait(work * (1.0 - self.cpu_share) / self.cpu_share)
        complete = cursor is None or (max_age is None and len(cache) >= cache.maxsize)
        if complete and self._current(version):
            self.finished.add(version)
        log.info(
            f"user cache {kind} finished" if complete else f"user cache {kind} stopped",
            extra={
                "version": version,
                "users": warmed,
                "cached": len(cache),
                "full": len(cache) >= cache.maxsize,
                "seconds": round(time.monotonic() - started, 2),
            },
        )
