"""The model version being served: per-version state held in process, and hot swaps.

A `LoadedModel` is everything the server needs per version that is not per user: the item
catalogue (ids and what filters need), item factors for real-time fold-in, the association
rules index, and every popularity list (which double as the last-known lists for fallback
answers). It is built once per version (and per item-metadata revision) and never changed.

`ModelTracker` polls the store's `state()` every `poll_seconds` in a background thread. When
the current version (or the item revision) changes it builds the new `LoadedModel` while the
old one keeps serving, then swaps one reference. A request reads that reference once and uses
it throughout, so one response never mixes versions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from recsvc.crosssell import RuleIndex
from recsvc.errors import StoreUnavailable
from recsvc.logs import error_frames
from recsvc.scorers import FactorScorer
from recsvc.store import ALL, POPULARITY_LISTS, FeatureStore, ItemCatalog, StoreState
from serving.fallback import STORE_FAILURES, StoreGuard
from serving.filters import CatalogFilters

log = logging.getLogger(__name__)

DEFAULT_EVENT_WEIGHTS = {"view": 1.0, "cart": 4.0, "purchase": 8.0, "interaction": 1.0}
EMPTY_LIST = (np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One version's in-process state (immutable once built)."""

    version: str
    manifest: dict[str, Any]
    catalog: ItemCatalog
    filters: CatalogFilters
    popularity: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # list -> group -> list
    fold_in: FactorScorer | None  # item factors, for re-scoring users with new events
    rules: RuleIndex | None
    trained_until: float  # epoch s: events after this are new to the model
    event_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    loaded_at: float = field(default_factory=time.time)

    @property
    def n_items(self) -> int:
        return len(self.catalog)

    @property
    def n_users(self) -> int:
        return int(self.manifest.get("counts", {}).get("users", 0) or 0)

    def popular(self, list_name: str, group: str = ALL) -> tuple[np.ndarray, np.ndarray]:
        """(item indexes, scores) of one popularity list group (empty when absent)."""
        return self.popularity.get(list_name, {}).get(group, EMPTY_LIST)

    def groups(self, list_name: str) -> list[str]:
        return list(self.popularity.get(list_name, {}))


def load_model(store: FeatureStore, version: str) -> LoadedModel:
    """Read one version's per-version state from the store (several round trips, once)."""
    manifest = store.manifest(version)
    catalog = store.item_catalog(version)
    popularity: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for list_name in POPULARITY_LISTS:
        groups = store.popularity_groups(version, list_name)
        if groups:
            popularity[list_name] = {
                group: _as_list(store.popularity(version, list_name, group)) for group in groups
            }
    params = manifest.get("params", {}) if isinstance(manifest.get("params"), dict) else {}
    factors = store.item_factors(version)
    fold_in = None
    if factors is not None and len(factors):
        # how to fold in (the publisher records it; versions published before: ALS's params)
        served = manifest.get("served_factors")
        if not isinstance(served, dict):
            served = params.get("als", {}) if isinstance(params.get("als"), dict) else {}
        fold_in = FactorScorer(
            user_factors=np.zeros((0, factors.shape[1]), dtype=np.float32),
            item_factors=np.ascontiguousarray(factors, dtype=np.float32),
            regularization=float(served.get("regularization", 0.05)),
            alpha=float(served.get("alpha", 1.0)),
            fold_in_always=True,
            bias_column=bool(served.get("bias_column", False)),
            fold_in_scale=float(served.get("fold_in_scale", 1.0)),
        )
        fold_in.fold_in(np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))  # warm the Gram
    rule_set = store.rules(version)
    rules = RuleIndex.build(rule_set, len(catalog)) if rule_set is not None and len(rule_set) else None
    weights = dict(DEFAULT_EVENT_WEIGHTS)
    events = params.get("events", {}) if isinstance(params.get("events"), dict) else {}
    if isinstance(events.get("weights"), dict):
        weights.update({str(k): float(v) for k, v in events["weights"].items()})
    return LoadedModel(
        version=version,
        manifest=manifest,
        catalog=catalog,
        filters=CatalogFilters(catalog),
        popularity=popularity,
        fold_in=fold_in,
        rules=rules,
        trained_until=_trained_until(manifest),
        event_weights=weights,
    )


def _as_list(pair: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    items, scores = pair
    return np.asarray(items, dtype=np.int32), np.asarray(scores, dtype=np.float32)


def _trained_until(manifest: dict[str, Any]) -> float:
    """Epoch seconds of the newest event the model saw (else its creation time)."""
    value = manifest.get("trained_until")
    if isinstance(value, int | float) and value > 0:
        return float(value)
    created = manifest.get("created_at")
    if isinstance(created, str):
        try:
            return datetime.fromisoformat(created).timestamp()
        except ValueError:
            pass
    return 0.0


class ModelTracker:
    """Follows the store's current version; `model` is the LoadedModel to serve (or None)."""

    def __init__(
        self,
        store: FeatureStore,
        guard: StoreGuard,
        poll_seconds: float = 1.0,
        on_change: Callable[[LoadedModel], None] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.guard = guard
        self.poll_seconds = poll_seconds
        self.on_change = on_change
        self.on_tick = on_tick  # after every poll (e.g. to export the breaker state)
        self.model: LoadedModel | None = None
        self._state: StoreState | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def refresh(self) -> bool:
        """Check the store once; load and swap in a new version if there is one.

        Returns True when the served model changed. Store failures are logged, never raised:
        the current model keeps serving.
        """
        with self._lock:  # one load at a time (poller and explicit refreshes)
            try:
                state = self.store.state()
            except STORE_FAILURES as exc:
                self.guard.record_failure()
                log.warning("store state unavailable", extra={"error": type(exc).__name__})
                return False
            self.guard.record_success()
            if state.current is None or state == self._state:
                return False
            try:
                model = load_model(self.store, state.current)
            except STORE_FAILURES as exc:
                log.warning(
                    "loading model failed; keeping the current one",
                    extra={"version": state.current, "error": type(exc).__name__},
                )
                return False
            previous = self.model
            self.model = model  # one reference swap: requests see the old or the new model
            self._state = state
        log.info(
            "model loaded",
            extra={
                "version": model.version,
                "previous": previous.version if previous else None,
                "items": model.n_items,
                "items_revision": state.items_revision,
            },
        )
        if self.on_change is not None:
            self.on_change(model)
        return True

    def start(self) -> None:
        """Poll in a daemon thread until `stop()`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="model-tracker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
                if self.on_tick is not None:
                    self.on_tick()
            except Exception as error:  # never let the poller die; the next tick retries
                # type and frames only: a message may quote customer ids (docs/security.md)
                log.error("model refresh failed",
                          extra={"error": type(error).__name__, "at": error_frames(error)})

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def require(self) -> LoadedModel:
        """The served model, or StoreUnavailable when none is loaded yet."""
        model = self.model
        if model is None:
            raise StoreUnavailable("no model version is loaded yet")
        return model
