"""The answers: what each RPC does, below the wire and above the store.

`RecommendationService` has one method per RPC. Each takes a validated query (plain values,
no protobuf), reads the current `LoadedModel` once (so an answer never mixes versions), makes
at most the store round trips listed below, and builds the answer through
`recsvc.ranking.finalize` (the one path that filters, excludes, tops up and cuts to k):

    Recommend     1  user_features (candidates, seen, segment, recent events together)
                     + up to 3 similar-item reads when the user has new events (cached);
                     0 for a cached user without real-time events when realtime_watch is on
    SimilarItems  0-1 similar_items (cached per item) [+1 user_features for exclude_purchased]
    CrossSell     0  rules are in process; similar lists of up to 3 cart items (cached)
                     [+1 user_features for exclude_purchased]
    BuyAgain      1  user_features (buy-again list and recent purchases together)
    Popular       0  lists are in process [+1 user_features for exclude_purchased]
    RecordEvent   1  record_event
    GetModelInfo  0

Store failures (or a store too slow for the caller's deadline) never fail a read RPC: the
answer comes from the hot caches or the last-known popularity lists with source FALLBACK
(see `serving.fallback`). Errors are `recsvc.errors` types; the servicer maps them.
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np

from recsvc.buyagain import MIN_DUE_SCORE
from recsvc.crosssell import cross_sell, neighbour_score, ranked_neighbours, similar_sources
from recsvc.errors import NotFound, StoreUnavailable
from recsvc.ranking import Answer, ScoredItem, finalize, scored
from recsvc.store import ALL, FeatureStore, RecentEvent, UserFeatures
from serving import metrics
from serving.config import ServeConfig
from serving.fallback import LruCache, StoreGuard
from serving.filters import NO_FILTER, FilterSpec
from serving.model import LoadedModel, ModelTracker
from serving.realtime import NO_SESSION, rescored, session_of
from serving.warmup import UserWarmer

# Time kept to build and send the answer after a store call gives up: a tenth of what is left,
# between 5 and 25 ms (a thread waiting for the GIL on a busy server can lose a 5 ms switch
# interval or more; a store gets most of a long deadline)
DEADLINE_MARGIN = (0.005, 0.1, 0.025)
EVENT_TYPES = ("view", "cart", "purchase")

# Reasons double as the record of which list an item came from (see `_source`).
PERSONAL = "personalized"
REALTIME = "realtime"
POPULAR = "popular"
TRENDING = "trending"
IN_SEGMENT = "popular in your segment"
IN_CLUSTER = "popular with shoppers like you"
CATALOGUE = "in the catalogue"
SEGMENT_REASONS = frozenset({IN_SEGMENT, IN_CLUSTER})


class Source(enum.Enum):
    PERSONALIZED = "personalized"
    REALTIME = "realtime"
    SEGMENT = "segment"
    POPULAR = "popular"
    FALLBACK = "fallback"


class ResultItem(NamedTuple):  # a tuple: built for every item of every answer, cheaply
    item_id: str
    score: float
    reason: str


@dataclass(frozen=True)
class Result:
    items: tuple[ResultItem, ...]
    model_version: str
    source: Source


@dataclass(frozen=True)
class RecommendQuery:
    user_id: str
    k: int
    filter: FilterSpec = NO_FILTER
    segment: str = ""


@dataclass(frozen=True)
class SimilarQuery:
    item_id: str
    k: int
    filter: FilterSpec = NO_FILTER
    user_id: str = ""


@dataclass(frozen=True)
class CrossSellQuery:
    item_ids: tuple[str, ...]
    k: int
    filter: FilterSpec = NO_FILTER
    user_id: str = ""


@dataclass(frozen=True)
class BuyAgainQuery:
    user_id: str
    k: int
    filter: FilterSpec = NO_FILTER
    as_of: float | None = None  # epoch s at which items are due; None: now


@dataclass(frozen=True)
class PopularQuery:
    k: int
    filter: FilterSpec = NO_FILTER
    category: str = ""
    segment: str = ""
    trending: bool = False
    user_id: str = ""


@dataclass(frozen=True)
class EventQuery:
    user_id: str
    item_id: str
    event_type: str  # one of EVENT_TYPES
    ts: float | None = None  # epoch s; None: now


@dataclass(frozen=True)
class EventResult:
    item_known: bool
    model_version: str


@dataclass(frozen=True)
class ModelInfo:
    model_version: str
    created_at: str
    default_recommender: str
    n_users: int
    n_items: int
    popularity_lists: tuple[str, ...]
    segments: tuple[str, ...]
    max_k: int
    degraded: bool


@dataclass
class _UserView:
    """What one answer knows about its user: features (or None) and whether from the cache."""

    features: UserFeatures | None
    fallback: bool


class RecommendationService:
    """One method per RPC; thread-safe; holds the store, the served model and the caches."""

    def __init__(self, store: FeatureStore, config: ServeConfig) -> None:
        self.store = store
        self.config = config
        # one bounded store call per handler thread at most: a pool smaller than that would
        # queue calls behind a slow store and fail them on time spent waiting for a thread
        self.guard = StoreGuard(
            config.retry_after_ms / 1000.0, config.store_timeout_ms / 1000.0, threads=config.threads
        )
        self.tracker = ModelTracker(
            store,
            self.guard,
            config.poll_seconds,
            on_change=self._model_changed,
            on_tick=lambda: metrics.degraded(self.guard.degraded),
        )
        self._listeners: list[Callable[[LoadedModel], None]] = []
        # user -> (version, features without real-time events or None if unknown, read at)
        self.user_cache: LruCache[str, tuple[str, UserFeatures | None, float]] = LruCache(
            config.hot_users
        )
        self.similar_cache: LruCache[tuple[str, int], tuple[np.ndarray, np.ndarray]] = LruCache(
            config.hot_items
        )
        # Which users may have real-time events (`recsvc.store.redis.EventWatch`), when on.
        self.events_watch: Any = None
        # Bumped by every drop_user: a bulk read that overlapped one is not cached.
        self.forget_generation = 0
        self._forget_lock = threading.Lock()
        self.warmer: UserWarmer | None = None
        if config.warm_users and config.hot_users > 0:
            self.warmer = UserWarmer(
                self, config.warm_batch, config.warm_cpu_share, config.hot_user_ttl_seconds / 2
            )
            self._listeners.append(self.warmer.model_loaded)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Load the current model if there is one and follow the store from now on."""
        self.tracker.refresh()
        self.tracker.start()
        watch = getattr(self.store, "watch_events", None)
        if self.config.realtime_watch and self.config.recent_events and watch is not None:
            self.events_watch = watch(self.config.store_timeout_ms / 1000.0)

    def stop(self) -> None:
        if self.warmer is not None:
            self.warmer.stop()
        if self.events_watch is not None:
            self.events_watch.stop()
            self.events_watch = None
        self.tracker.stop()
        self.guard.close()

    @property
    def ready(self) -> bool:
        return self.tracker.model is not None

    def add_listener(self, listener: Callable[[LoadedModel], None]) -> None:
        """Call `listener(model)` whenever a new model starts serving (and now, if one is)."""
        self._listeners.append(listener)
        if self.tracker.model is not None:
            listener(self.tracker.model)

    def _model_changed(self, model: LoadedModel) -> None:
        metrics.model_loaded(model.version)
        for listener in self._listeners:
            listener(model)

    def drop_user(self, user_id: str) -> None:
        """Forget what this process caches about a user (e.g. after a ForgetUser)."""
        with self._forget_lock:
            self.forget_generation += 1
            self.user_cache.pop(user_id)
        watch = self.events_watch
        if watch is not None:
            watch.forget(user_id)

    def forgets_changed(self) -> None:
        """Customers were forgotten elsewhere: bulk reads in progress must not be cached."""
        with self._forget_lock:
            self.forget_generation += 1

    def cache_users(
        self, version: str, users: list[UserFeatures], generation: int, max_age: float | None = None
    ) -> int | None:
        """Cache a bulk read of `version`'s users without evicting anyone (`LruCache.fill`).

        generation: `forget_generation` before the read began; None (nothing cached) when a
        customer was forgotten since, as the read may hold them. max_age: also overwrite this
        version's entries older than this (seconds). Returns how many were stored.
        """
        now = time.monotonic()
        entries = [(u.user_id, (version, u, now)) for u in users if u.known]
        oldest = now - max_age if max_age is not None else float("-inf")

        def replaceable(entry: tuple[str, UserFeatures | None, float]) -> bool:
            return entry[0] != version or entry[2] < oldest

        with self._forget_lock:
            if generation != self.forget_generation:
                return None
            return self.user_cache.fill(entries, replaceable)

    # -- RPCs -----------------------------------------------------------------------------
    def recommend(self, query: RecommendQuery, deadline: float | None = None) -> Result:
        model = self.tracker.require()
        view = self._user(model, query.user_id, deadline)
        features = view.features
        allowed = model.filters.allowed(query.filter)
        exclude = model.filters.indexes(query.filter.exclude_item_ids)
        session = (session_of(model, features.recent, features.known) if features is not None
                   else NO_SESSION)
        if features is not None:
            exclude.update(np.asarray(features.seen).tolist())
            exclude.update(session.interacted)
        # Without a catalogue filter finalize skips at most len(exclude) items of a list and
        # has taken at most k before it, so the rest of a long list is never looked at.
        limit = 2 * query.k + len(exclude) if allowed is None else None

        def topups() -> Iterator[Iterable[ScoredItem]]:
            # Built only when the first list leaves the answer short (a generator).
            for arrays, reason in self._segment_lists(model, features, query.segment):
                yield _scored(arrays, reason, limit, allowed)
            yield from self._category_lists(model, query.filter.categories, allowed)
            yield self._global(model, allowed, limit)
            yield self._filler(model, allowed)

        primary: Iterable[ScoredItem] = ()
        source = Source.POPULAR  # unknown user: the answer is all top-ups
        failed: list[bool] = []  # a similar-items read failed: the answer is a fallback
        if features is not None and session.changed and not view.fallback:
            segment_lists = self._segment_lists(model, features, query.segment)
            head = segment_lists[0][0] if segment_lists else model.popular("global", ALL)
            ranked = rescored(
                model,
                features,
                session,
                lambda item: self._similar_or_empty(model, item, deadline, failed),
                head,
                self.config.realtime_similar_items,
                self.config.realtime_ranking,
            )
            primary = _scored(ranked, "realtime", limit, allowed)
            # nothing of its own (a visitor whose events all weigh 0): the top-ups answer
            source = Source.REALTIME if len(ranked[0]) else Source.POPULAR
        elif features is not None and features.known:
            primary = _scored((features.candidates, features.scores), PERSONAL, limit, allowed)
            source = Source.PERSONALIZED
        answer = finalize(primary, query.k, allowed, exclude, topups())
        return self._result(model, answer, source, view.fallback or bool(failed))

    def similar_items(self, query: SimilarQuery, deadline: float | None = None) -> Result:
        model = self.tracker.require()
        item = model.catalog.index_of(query.item_id)
        if item < 0:
            raise NotFound(f"item_id: item '{query.item_id}' is not in model {model.version}")
        failed: list[bool] = []
        items, scores = self._similar_or_empty(model, item, deadline, failed)
        exclude, user_fallback = self._exclusions(model, query.filter, query.user_id, deadline)
        exclude.add(item)
        category = str(model.catalog.category[item])
        allowed = model.filters.allowed(query.filter)
        topups = self._item_topups(model, frozenset({category} - {""}), query.filter, allowed)
        primary = _scored((items, scores), "similar", allowed=allowed)
        answer = finalize(primary, query.k, allowed, exclude, topups)
        return self._result(model, answer, Source.PERSONALIZED, bool(failed) or user_fallback)

    def cross_sell(self, query: CrossSellQuery, deadline: float | None = None) -> Result:
        model = self.tracker.require()
        known = [i for i in (model.catalog.index_of(x) for x in query.item_ids) if i >= 0]
        cart = list(dict.fromkeys(known))
        exclude, fallback = self._exclusions(model, query.filter, query.user_id, deadline)
        exclude.update(cart)
        allowed = model.filters.allowed(query.filter)
        rules: list[ScoredItem] = []
        if model.rules is not None and cart:
            # Ask for more than k: the filter may drop some (finalize applies it).
            wanted = query.k * 4 + 20 if allowed is not None else query.k
            rules = cross_sell(
                model.rules,
                np.asarray(cart, dtype=np.int64),
                wanted,
                exclude=exclude,
                item_ids=model.catalog.ids.ids,
            )
        # Similar items of the newest cart items, read only if the rules leave room, merged
        # best first and scored below every rule, as `recsvc.crosssell` tops up.
        floor = model.rules.similarity_floor if model.rules is not None else 1.0
        failed: list[bool] = []

        def neighbours() -> Iterator[ScoredItem]:
            sources = similar_sources(cart)
            rows = [self._similar_or_empty(model, item, deadline, failed) for item in sources]
            ranked = ranked_neighbours(sources, [r[0] for r in rows], [r[1] for r in rows])
            for other, value, origin in ranked:
                yield ScoredItem(other, neighbour_score(floor, value),
                                 f"similar to {model.catalog.item_id(origin)}")

        primary = itertools.chain(rules, neighbours())
        categories = frozenset(str(model.catalog.category[i]) for i in cart) - {""}
        topups = self._item_topups(model, categories, query.filter, allowed)
        answer = finalize(primary, query.k, allowed, exclude, topups)
        return self._result(model, answer, Source.PERSONALIZED, fallback or bool(failed))

    def buy_again(self, query: BuyAgainQuery, deadline: float | None = None) -> Result:
        model = self.tracker.require()
        view = self._user(model, query.user_id, deadline)
        features = view.features
        exclude = model.filters.indexes(query.filter.exclude_item_ids)
        due: list[ScoredItem] = []
        if features is not None:
            # Bought again since training: not due any more.
            session = session_of(model, features.recent, features.known)
            exclude.update(e.item for e in session.new_events if e.event_type == "purchase")
            now = query.as_of if query.as_of is not None else time.time()
            if features.buyagain is not None and len(features.buyagain):
                due = [
                    ScoredItem(d.item, d.score, d.reason)
                    for d in features.buyagain.for_user(0, now, min_score=MIN_DUE_SCORE)
                ]
        allowed = model.filters.allowed(query.filter)
        answer = finalize(due, query.k, allowed, exclude)
        return self._result(model, answer, Source.PERSONALIZED, view.fallback)

    def popular(self, query: PopularQuery, deadline: float | None = None) -> Result:
        model = self.tracker.require()
        flt = query.filter
        if query.category:
            # Popular in a category: its own list, then the other lists within the category.
            # Conditions are ANDed: a filter naming other categories leaves nothing.
            if flt.categories and query.category not in flt.categories:
                return self._result(model, finalize((), query.k, None, set()), Source.POPULAR, False)
            flt = replace(flt, categories=frozenset({query.category}))
        allowed = model.filters.allowed(flt)
        lists: list[Iterable[ScoredItem]] = []
        source = Source.POPULAR
        if query.trending:
            lists.append(_scored(model.popular("trending"), TRENDING, allowed=allowed))
        if query.category:
            lists.extend(self._category_lists(model, frozenset({query.category}), allowed))
        elif query.segment:
            items, scores = model.popular("segment", query.segment)
            if len(items):
                lists.append(_scored((items, scores), IN_SEGMENT, allowed=allowed))
                # trending comes first and is store-wide: then the answer is not the segment's
                source = Source.POPULAR if query.trending else Source.SEGMENT
        exclude, fallback = self._exclusions(model, flt, query.user_id, deadline)
        # the global list ranks across categories; it holds only the top items, so under a
        # category filter the filter's categories' own lists go beyond it
        wanted = flt.categories - {query.category}
        topups = [self._global(model, allowed), *self._category_lists(model, wanted, allowed),
                  self._filler(model, allowed)]
        answer = finalize(itertools.chain(*lists), query.k, allowed, exclude, topups)
        return self._result(model, answer, source, fallback)

    def record_event(self, query: EventQuery, deadline: float | None = None) -> EventResult:
        model = self.tracker.require()
        item = model.catalog.index_of(query.item_id)
        if item < 0:
            return EventResult(item_known=False, model_version=model.version)
        ts = query.ts if query.ts is not None else time.time()
        self.guard.call(
            self.store.record_event,
            query.user_id,
            query.item_id,  # by id: the next version may index the item differently
            query.event_type,
            ts,
            budget=self._budget(deadline),
        )
        return EventResult(item_known=True, model_version=model.version)

    def model_info(self) -> ModelInfo:
        model = self.tracker.require()
        manifest = model.manifest
        return ModelInfo(
            model_version=model.version,
            created_at=str(manifest.get("created_at", "")),
            default_recommender=str(manifest.get("default_recommender", "")),
            n_users=model.n_users,
            n_items=model.n_items,
            popularity_lists=tuple(sorted(model.popularity)),
            segments=tuple(model.groups("segment")),
            max_k=self.config.max_k,
            degraded=self.guard.degraded,
        )

    # -- helpers --------------------------------------------------------------------------
    def _budget(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        lowest, share, highest = DEADLINE_MARGIN
        return left - min(max(lowest, share * left), highest)

    def _user(self, model: LoadedModel, user_id: str, deadline: float | None) -> _UserView:
        """The user's features with their real-time events: one store round trip.

        A user's versioned features never change within a version, so they are cached in
        process (`hot_users`, `hot_user_ttl_seconds`); a cached user only needs their recent
        events read. When the store fails, the cached features answer (source FALLBACK).
        """
        cached = self.user_cache.get(user_id)
        now = time.monotonic()
        usable = cached is not None and cached[0] == model.version
        fresh = usable and cached is not None and now - cached[2] < self.config.hot_user_ttl_seconds
        recent_n = self.config.recent_events
        try:
            if fresh and cached is not None:
                metrics.cache_lookup("user", True)
                if self._quiet(user_id):  # no real-time events: nothing to read
                    return _UserView(cached[1], fallback=False)
                recent = self.guard.call(
                    self.store.recent_events, user_id, recent_n, budget=self._budget(deadline)
                ) if recent_n else []
                return _UserView(_with_recent(cached[1], user_id, recent), fallback=False)
            metrics.cache_lookup("user", False)
            generation = self.forget_generation  # a forget during the read must win
            features = self.guard.call(
                self.store.user_features,
                model.version,
                user_id,
                recent_n,
                budget=self._budget(deadline),
            )
        except StoreUnavailable:
            return _UserView(cached[1] if usable and cached is not None else None, fallback=True)
        known = features if features is not None and features.known else None
        entry = (model.version, replace(known, recent=()) if known is not None else None, now)
        with self._forget_lock:
            if generation == self.forget_generation:  # else it may be a forgotten customer
                self.user_cache.put(user_id, entry)
        return _UserView(features, fallback=False)

    def _quiet(self, user_id: str) -> bool:
        """True when the event watch knows the user has no real-time events (and the store
        is not known to be failing: then the store call and its fallback answer as before)."""
        watch = self.events_watch
        return watch is not None and not self.guard.degraded and bool(watch.quiet(user_id))

    def _similar(
        self, model: LoadedModel, item: int, deadline: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """An item's similar list: cached per (version, item); the store on a miss."""
        key = (model.version, item)
        cached = self.similar_cache.get(key)
        metrics.cache_lookup("similar", cached is not None)
        if cached is not None:
            return cached
        items, scores = self.guard.call(
            self.store.similar_items, model.version, item, budget=self._budget(deadline)
        )
        value = (np.asarray(items, dtype=np.int32), np.asarray(scores, dtype=np.float32))
        self.similar_cache.put(key, value)
        return value

    def _similar_or_empty(
        self, model: LoadedModel, item: int, deadline: float | None, failed: list[bool]
    ) -> tuple[np.ndarray, np.ndarray]:
        """`_similar`, or an empty list (and True appended to `failed`) when the store fails."""
        try:
            return self._similar(model, item, deadline)
        except StoreUnavailable:
            failed.append(True)
            return _EMPTY

    def _exclusions(
        self, model: LoadedModel, flt: FilterSpec, user_id: str, deadline: float | None
    ) -> tuple[set[int], bool]:
        """Items the filter excludes, with the user's history when exclude_purchased asks.

        Returns (item indexes, whether the user's history came from the fallback cache).
        """
        exclude = model.filters.indexes(flt.exclude_item_ids)
        if not (flt.exclude_purchased and user_id):
            return exclude, False
        view = self._user(model, user_id, deadline)
        if view.features is not None:
            exclude.update(np.asarray(view.features.seen).tolist())
            exclude.update(session_of(model, view.features.recent, view.features.known).interacted)
        return exclude, view.fallback

    def _segment_lists(
        self, model: LoadedModel, features: UserFeatures | None, segment_hint: str
    ) -> list[tuple[tuple[np.ndarray, np.ndarray], str]]:
        """(list, reason) of the user's cluster and segment lists (hint for unknown users)."""
        lists = []
        segment = features.segment if features is not None else None
        if segment is not None and segment.cluster >= 0:
            found = model.popular("cluster", str(segment.cluster))
            if len(found[0]):
                lists.append((found, IN_CLUSTER))
        name = segment.segment if segment is not None else segment_hint
        if name:
            found = model.popular("segment", name)
            if len(found[0]):
                lists.append((found, IN_SEGMENT))
        return lists

    def _category_lists(
        self, model: LoadedModel, categories: frozenset[str], allowed: np.ndarray | None
    ) -> list[Iterable[ScoredItem]]:
        """The popularity lists of these categories (those the model has)."""
        out: list[Iterable[ScoredItem]] = []
        for category in sorted(categories):
            items, scores = model.popular("category", category)
            if len(items):
                out.append(_scored((items, scores), f"popular in {category}", allowed=allowed))
        return out

    def _item_topups(
        self, model: LoadedModel, own: frozenset[str], flt: FilterSpec, allowed: np.ndarray | None
    ) -> Iterator[Iterable[ScoredItem]]:
        """Top-ups of an answer about items (similar, cross-sell): the popular lists of their
        own categories, the global list, then beyond it the filter's category lists and any
        allowed item (lists hold only the top items, so a strict filter can run them dry)."""
        yield from self._category_lists(model, own, allowed)
        yield self._global(model, allowed)
        yield from self._category_lists(model, flt.categories - own, allowed)
        yield self._filler(model, allowed)

    def _global(
        self, model: LoadedModel, allowed: np.ndarray | None, limit: int | None = None
    ) -> Iterable[ScoredItem]:
        return _scored(model.popular("global", ALL), POPULAR, limit, allowed)

    def _filler(self, model: LoadedModel, allowed: np.ndarray | None) -> Iterator[ScoredItem]:
        """Last resort when popularity lists run dry under a strict filter: any allowed item."""
        candidates = np.flatnonzero(allowed) if allowed is not None else range(model.n_items)
        for item in candidates:
            yield ScoredItem(int(item), 0.0, CATALOGUE)

    def _result(self, model: LoadedModel, answer: Answer, primary: Source, fallback: bool) -> Result:
        """Ids for indexes, and the source: `primary` unless only top-ups answered."""
        ids = model.catalog.ids.ids
        items = tuple([ResultItem(ids[s.item], s.score, s.reason) for s in answer.items])
        if fallback:
            source = Source.FALLBACK
        elif answer.from_primary or not answer.items:
            source = primary
        elif any(s.reason in SEGMENT_REASONS for s in answer.items):
            source = Source.SEGMENT
        else:
            source = Source.POPULAR
        return Result(items=items, model_version=model.version, source=source)


_EMPTY = (np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))


def _scored(
    arrays: tuple[np.ndarray, np.ndarray],
    reason: str,
    limit: int | None = None,
    allowed: np.ndarray | None = None,
) -> Iterator[ScoredItem]:
    """`ranking.scored` over a ranked list, cut to what finalize can use.

    limit: only the first `limit` entries (None: all). allowed: drop the entries the mask
    forbids first, in one vectorised step, so a strict filter does not turn hundreds of
    forbidden entries into items one by one (finalize still checks every item it takes).
    """
    # A generator: a top-up list that finalize never reaches costs nothing to build.
    items, scores = arrays
    if allowed is not None and len(items):
        items = np.asarray(items)
        valid = (items >= 0) & (items < len(allowed))
        keep = valid.copy()
        keep[valid] = allowed[items[valid]]
        items, scores = items[keep], np.asarray(scores)[keep]
    if limit is not None:
        items, scores = items[:limit], scores[:limit]
    yield from scored(items, scores, reason)
_NO_ITEMS = np.zeros(0, dtype=np.int32)


def _with_recent(
    features: UserFeatures | None, user_id: str, recent: list[RecentEvent]
) -> UserFeatures | None:
    """Cached versioned features joined with freshly read real-time events."""
    if features is not None:
        return replace(features, recent=tuple(recent)) if recent else features
    if not recent:
        return None
    return UserFeatures(
        user_id=user_id,
        candidates=_NO_ITEMS,
        scores=_EMPTY[1],
        seen=_NO_ITEMS,
        recent=tuple(recent),
        known=False,
    )
