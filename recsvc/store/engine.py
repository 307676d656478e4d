"""The feature-store semantics, written once over a few storage primitives.

`StoreEngine` implements every `FeatureStore` method (versions, reads, real-time events,
publish, rollback, forget, item updates) on top of abstract primitives (put/get blobs, user
records, item records, the version table, the `current` pointer, the publish lock). The
embedded store (`recsvc.store.memory`) and the Redis store (`recsvc.store.redis`) implement
only the primitives, so both hold the same bytes (`recsvc.store.codec`) and behave alike.

Customer ids reach the primitives only through `user_key` (user records, real-time lists) and
`forget_entry` (the forget list). By default both are the id itself; with id hashing on
(`enable_id_hashing`, see `recsvc.privacy`) they are keyed hashes, so the backend never holds
a customer id in clear. Each version's meta records which (`user_ids`), and reading the item
catalogue of a version written the other way raises InvalidInput rather than silently
treating every customer as unknown.

Must not import `training` or `serving`.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recsvc.errors import InvalidInput, NotFound, StoreUnavailable
from recsvc.events import NUMBER_OUT_OF_RANGE, as_float32
from recsvc.ids import IdMap
from recsvc.privacy import PLAIN, IdHasher
from recsvc.store import codec
from recsvc.store.base import (
    ALL,
    PARTIAL,
    READY,
    ItemCatalog,
    ItemUpdateReport,
    PublishReport,
    RecentEvent,
    StoreState,
    UserFeatures,
    UserSegment,
    VersionInfo,
)

if TYPE_CHECKING:
    import pandas as pd

    from recsvc.bundle import Bundle
    from recsvc.buyagain import BuyAgainLists
    from recsvc.store.publish import BatchHook

log = logging.getLogger(__name__)

RECENT_MAX = 50  # real-time events kept per user
RECENT_TTL = 7 * 86_400  # seconds a user's real-time list lives after its last event
ITEM_UPDATE_ATTEMPTS = 20  # update_items re-merges when another update wrote first
_CACHED_VERSIONS = 4  # per-version immutable data (factors, rules, popularity) kept in process


class StoreEngine(ABC):
    """FeatureStore semantics over storage primitives (the abstract methods)."""

    url: str

    def __init__(
        self,
        url: str,
        scores: str = "u8",
        factors: str = "f16",
        recent_max: int = RECENT_MAX,
        recent_ttl: int = RECENT_TTL,
    ) -> None:
        self.url = url
        if scores not in codec.SCORE_CODES:
            raise InvalidInput("scores", f"'{scores}' is not one of {', '.join(codec.SCORE_CODES)}")
        if factors not in ("f16", "f32"):
            raise InvalidInput("factors", f"'{factors}' is not f16 or f32")
        self.score_code = codec.SCORE_CODES[scores]
        self.factor_code = codec.FLOAT16 if factors == "f16" else codec.FLOAT32
        self.recent_max = int(recent_max)
        self.recent_ttl = int(recent_ttl)
        self._cache: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.id_hasher: IdHasher | None = None
        # ?id_secret_file= of a store opened without hash_ids: where a forget finds the secret
        # of events filed under hashed keys while hashing was on (else the environment's)
        self.id_secret_file: str | None = None

    # == customer ids ============================================================================

    def enable_id_hashing(self, hasher: IdHasher) -> None:
        """Store customer ids only as keyed hashes from now on (see `recsvc.privacy`)."""
        self.id_hasher = hasher

    @property
    def user_id_mode(self) -> str:
        """`plain`, or `hmac-sha256:<key fingerprint>` (recorded in every version's meta)."""
        return PLAIN if self.id_hasher is None else self.id_hasher.mode

    def user_key(self, user_id: str) -> str:
        """The key the backend files a customer under (the id itself unless hashing)."""
        return user_id if self.id_hasher is None else self.id_hasher.user_key(user_id)

    def user_keys(self, user_ids: Sequence[str]) -> list[str]:
        if self.id_hasher is None:
            return list(user_ids)
        key = self.id_hasher.user_key
        return [key(u) for u in user_ids]

    def entry_of_key(self, key: str) -> str:
        """The forget-list entry of a user key."""
        return key if self.id_hasher is None else self.id_hasher.entry_of_key(key)

    def forget_entry(self, user_id: str) -> str:
        """What the forget list holds for a customer (the id, or a tagged keyed hash)."""
        return self.entry_of_key(self.user_key(user_id))

    def is_forgotten(self, user_ids: Sequence[str]) -> list[bool]:
        """Whether each customer is on the forget list, whatever form its entries take (plain,
        or hashed under this store's secret; `recsvc.privacy.resolve_forgotten`)."""
        from recsvc.privacy import resolve_forgotten

        entries = self.forgotten_users()
        found = set(resolve_forgotten(entries, user_ids, self.id_hasher)) if entries else set()
        return [u in found for u in user_ids]

    def _check_user_ids(self, version: str, meta: dict[str, Any]) -> None:
        stored = str(meta.get("user_ids", PLAIN))
        if meta and stored != self.user_id_mode:
            ours = self.user_id_mode
            raise InvalidInput(
                "hash_ids",
                f"version '{version}' stores customer ids as {stored}, this store handle "
                f"reads them as {ours}: open the store with the same ?hash_ids= setting and "
                "RECSVC_ID_SECRET the publisher used",
            )

    # == primitives ==============================================================================

    # global state
    @abstractmethod
    def current_version(self) -> str | None: ...

    @abstractmethod
    def state(self) -> StoreState: ...

    @abstractmethod
    def version_table(self) -> dict[str, dict[str, Any]]:
        """version id -> meta dict (id, status, created_at, published_at, counts, layout...)."""

    @abstractmethod
    def put_version_meta(self, version: str, meta: dict[str, Any]) -> None: ...

    @abstractmethod
    def switch_current(self, version: str) -> None:
        """Atomically point `current` at `version`; NotFound unless it is READY. The same step
        records the switch in `switch_order`."""

    @abstractmethod
    def switch_order(self) -> dict[str, int]:
        """version id -> sequence number of its last switch to current (higher: later).
        Versions never switched to since the store recorded switches are absent."""

    @abstractmethod
    def _publish_lock_acquire(self, version: str) -> None:
        """Take the publish lock (taking over a dead holder's); InvalidInput if one is alive."""

    @abstractmethod
    def _publish_lock_release(self, version: str) -> None: ...

    def refresh_publish_lock(self, version: str) -> None:
        """Extend the lock's lifetime during a long publish (no-op where locks do not expire)."""
        return None

    # version data
    def layout_info(self, n_items: int) -> dict[str, Any]:
        """What `drop_version` needs later to find every key of a version."""
        return {"n_items": n_items}

    @abstractmethod
    def put_blobs(self, version: str, blobs: dict[str, bytes]) -> None: ...

    @abstractmethod
    def get_blob(self, version: str, name: str) -> bytes | None: ...

    @abstractmethod
    def blob_names(self, version: str) -> list[str]: ...

    @abstractmethod
    def put_items(self, version: str, records: list[tuple[int, bytes]]) -> None: ...

    @abstractmethod
    def get_item(self, version: str, item_index: int) -> bytes | None: ...

    @abstractmethod
    def count_items(self, version: str) -> int: ...

    def user_write_order(self, user_ids: Sequence[str]) -> np.ndarray:
        """Bundle user indexes in the order publish should write them."""
        return np.arange(len(user_ids), dtype=np.int64)

    @abstractmethod
    def put_users(self, version: str, user_ids: list[str], records: list[bytes]) -> None: ...

    @abstractmethod
    def get_users(
        self, version: str, user_ids: Sequence[str], recent: int
    ) -> list[tuple[bytes | None, list[bytes]]]:
        """Per user: (record or None, up to `recent` raw events newest first), one round trip."""

    def scan_user_records(
        self, version: str, cursor: int, count: int
    ) -> tuple[int | None, list[tuple[str, bytes]]]:
        """About `count` (user key, record) pairs of a version from `cursor` (0 to start);
        returns the cursor to continue from (None: done). Every stored user comes exactly
        once in a full scan of an unchanged version. Stores that cannot scan return
        (None, [])."""
        return None, []

    @abstractmethod
    def delete_users(self, version: str, user_ids: Sequence[str]) -> int:
        """Remove user records from one version; how many existed."""

    @abstractmethod
    def count_users(self, version: str) -> int: ...

    @abstractmethod
    def count_keys(self, version: str) -> int: ...

    @abstractmethod
    def drop_version(self, version: str, meta: dict[str, Any]) -> None:
        """Delete every key of a version and its table entry (never called on current)."""

    # real-time state, forget list, item updates
    @abstractmethod
    def push_event(self, user_id: str, event: bytes, kept: bool = False) -> None:
        """Add an event to the user's recent list (capped, expiring); `kept` events (purchases)
        also go to a second list that later views cannot push them out of."""

    @abstractmethod
    def read_events(self, user_id: str, limit: int) -> list[bytes]:
        """The newest `limit` events, then the kept ones older than those (`with_kept`)."""

    @abstractmethod
    def delete_events(self, user_id: str) -> None: ...

    @abstractmethod
    def add_forgotten(self, user_id: str, ts: float) -> None:
        """Add a forget-list entry (`forget_entry(id)`: the id, or its tagged keyed hash)."""

    @abstractmethod
    def forgotten_users(self) -> list[str]:
        """Forget-list entries, oldest first (`recsvc.privacy.resolve_forgotten` matches them)."""

    @abstractmethod
    def put_item_updates(self, updates: dict[str, bytes], revision: int) -> int | None:
        """Store overrides by item id and bump the items revision, in one atomic step and only
        if the revision is still `revision` (the one the overrides were merged against);
        returns the new revision, or None (nothing written) when another update came first."""

    @abstractmethod
    def item_updates(self) -> dict[str, bytes]: ...

    @abstractmethod
    def ping(self) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    # == FeatureStore ============================================================================

    @contextmanager
    def publish_lock(self, version: str) -> Iterator[None]:
        self._publish_lock_acquire(version)
        try:
            yield
        finally:
            self._publish_lock_release(version)

    def versions(self) -> list[VersionInfo]:
        table = self.version_table()
        current = self.current_version()
        infos = [
            VersionInfo(
                id=v,
                created_at=str(m.get("created_at", "")),
                published_at=str(m.get("published_at", "")),
                status=str(m.get("status", PARTIAL)),
                is_current=v == current,
                n_users=int(m.get("n_users", 0)),
                n_items=int(m.get("n_items", 0)),
                bytes=int(m.get("bytes", 0)),
                keys=int(m.get("keys", 0)),
                components=tuple(m.get("components", ())),
            )
            for v, m in table.items()
        ]
        return sorted(infos, key=lambda i: (_epoch(i.published_at), i.id))

    def _require(self, version: str, name: str) -> bytes:
        blob = self.get_blob(version, name)
        if blob is None:
            if version not in self.version_table():
                raise NotFound(f"version '{version}' is not in the store")
            raise NotFound(f"version '{version}' has no {name}")
        return blob

    def manifest(self, version: str) -> dict[str, Any]:
        manifest: dict[str, Any] = json.loads(self._require(version, "manifest"))
        return manifest

    def _cached(self, version: str, key: str, load: Any) -> Any:
        with self._cache_lock:
            entry = self._cache.get(version)
            if entry is not None and key in entry:
                self._cache.move_to_end(version)
                return entry[key]
        value = load()
        with self._cache_lock:
            entry = self._cache.setdefault(version, {})
            entry[key] = value
            self._cache.move_to_end(version)
            while len(self._cache) > _CACHED_VERSIONS:
                self._cache.popitem(last=False)
        return value

    def _forget_cache(self, version: str) -> None:
        with self._cache_lock:
            self._cache.pop(version, None)

    # -- per-user ---------------------------------------------------------------------------

    def user_features(self, version: str, user_id: str, recent: int = 0) -> UserFeatures | None:
        return self.user_features_many(version, [user_id], recent)[0]

    def user_features_many(
        self, version: str, user_ids: Sequence[str], recent: int = 0
    ) -> list[UserFeatures | None]:
        if recent < 0:
            raise InvalidInput("recent", "must not be negative")
        out: list[UserFeatures | None] = []
        empty = np.zeros(0, dtype=np.int32)
        keys = user_ids if self.id_hasher is None else self.user_keys(user_ids)
        for user_id, (record, raw_events) in zip(
            user_ids, self.get_users(version, keys, min(recent, self.recent_max)), strict=True
        ):
            events = tuple(_events(raw_events))
            if record is not None:
                features = codec.decode_user_record(record, user_id)
                if events:
                    features = UserFeatures(
                        user_id, features.candidates, features.scores, features.seen,
                        features.factors, features.segment, features.buyagain, events,
                    )
                out.append(features)
            elif events:
                out.append(UserFeatures(user_id, empty, np.zeros(0, np.float32), empty,
                                        recent=events, known=False))
            else:
                out.append(None)
        return out

    def scan_user_features(
        self, version: str, cursor: int = 0, count: int = 1000
    ) -> tuple[int | None, list[UserFeatures]]:
        """About `count` users' versioned features (no real-time events) from `cursor`, for
        bulk reads such as warming a server's cache; returns (next cursor or None, features).

        Raises InvalidInput when the store hashes customer ids: the keys it holds cannot be
        turned back into the ids callers know users by.
        """
        if self.id_hasher is not None:
            raise InvalidInput("hash_ids", "users cannot be listed when the store hashes ids")
        following, records = self.scan_user_records(version, cursor, count)
        decode = codec.decode_user_record
        return following, [decode(record, key) for key, record in records]

    def buyagain(self, version: str, user_id: str) -> BuyAgainLists | None:
        features = self.user_features(version, user_id)
        return features.buyagain if features is not None else None

    def user_segment(self, version: str, user_id: str) -> UserSegment | None:
        features = self.user_features(version, user_id)
        return features.segment if features is not None else None

    # -- per-version ------------------------------------------------------------------------

    def item_catalog(self, version: str) -> ItemCatalog:
        base = self._cached(version, "catalog", lambda: self._load_catalog(version))
        revision = self.state().items_revision
        updates = self.item_updates()
        meta = self.version_table().get(version, {})
        self._check_user_ids(version, meta)
        # overrides apply when newer than the bundle's catalogue: when the trainer read it
        # (a bundle trains for a while after that), else when the bundle was created
        created = _epoch(str(meta.get("catalog_read_at") or meta.get("created_at", "")))
        category = base["category"].copy()
        price = base["price"].copy()
        in_stock = base["in_stock"].copy()
        title = base["title"].copy()
        ids: IdMap = base["ids"]
        for item_id, raw in updates.items():
            index = ids.get(item_id)
            if index < 0:
                continue
            update = codec.decode_item_update(raw)
            if update.ts <= created:
                continue  # the bundle is newer than every field of the update
            if update.applies("category", created):
                category[index] = update.category
            if update.applies("price", created):
                price[index] = update.price
            if update.applies("in_stock", created):
                in_stock[index] = update.in_stock
            if update.applies("title", created):
                title[index] = update.title
        return ItemCatalog(version, ids, category, price, in_stock, title, revision)

    def _load_catalog(self, version: str) -> dict[str, Any]:
        return {
            "ids": IdMap(codec.decode_strings(self._require(version, "items:ids"))),
            "category": np.asarray(codec.decode_strings(self._require(version, "items:category")), dtype=object),
            "title": np.asarray(codec.decode_strings(self._require(version, "items:title")), dtype=object),
            "price": codec.decode_array(self._require(version, "items:price")).astype(np.float32),
            "in_stock": codec.decode_array(self._require(version, "items:in_stock")).astype(bool),
        }

    def item_factors(self, version: str) -> np.ndarray | None:
        def load() -> np.ndarray | None:
            blob = self.get_blob(version, "item_factors")
            return None if blob is None else codec.decode_array(blob)

        value: np.ndarray | None = self._cached(version, "item_factors", load)
        return value

    def similar_items(self, version: str, item_index: int) -> tuple[np.ndarray, np.ndarray]:
        raw = self.get_item(version, int(item_index))
        if raw is None:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
        items, scores, _ = codec.decode_scored_list(raw)
        return items, scores

    def rules(self, version: str) -> Any:
        def load() -> Any:
            names = [n for n in self.blob_names(version) if n.startswith("file:rules/")]
            if not names:
                return None
            from recsvc.rules import RuleSet

            with tempfile.TemporaryDirectory(prefix="recsvc-rules-") as tmp:
                for name in names:
                    blob = self.get_blob(version, name)
                    if blob is not None:
                        (Path(tmp) / name.split("/", 1)[1]).write_bytes(blob)
                return RuleSet.load(Path(tmp), mmap=False)

        return self._cached(version, "rules", load)

    def popularity_groups(self, version: str, list_name: str) -> list[str]:
        def load() -> list[str]:
            blob = self.get_blob(version, f"pop:{list_name}:names")
            return [] if blob is None else codec.decode_strings(blob)

        groups: list[str] = self._cached(version, f"pop:{list_name}", load)
        return groups

    def popularity(
        self, version: str, list_name: str, group: str = ALL
    ) -> tuple[np.ndarray, np.ndarray]:
        def load() -> tuple[np.ndarray, np.ndarray]:
            blob = self.get_blob(version, f"pop:{list_name}:g:{group}")
            if blob is None:
                return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)
            items, scores, _ = codec.decode_scored_list(blob)
            return items, scores

        value: tuple[np.ndarray, np.ndarray] = self._cached(version, f"pop:{list_name}:g:{group}", load)
        return value

    # -- real-time --------------------------------------------------------------------------

    def record_event(
        self, user_id: str, item_id: str, event_type: str, ts: float | None = None
    ) -> None:
        if not user_id:
            raise InvalidInput("user_id", "must not be empty")
        if not item_id:
            raise InvalidInput("item_id", "must not be empty")
        event = codec.encode_event(item_id, event_type, time.time() if ts is None else ts)
        # a purchase is kept apart: what a shopper just bought must stay excluded however
        # many products they look at afterwards (within the lists' expiry)
        self.push_event(self.user_key(user_id), event, kept=event_type == "purchase")

    def recent_events(self, user_id: str, limit: int = 50) -> list[RecentEvent]:
        if limit <= 0:
            return []
        raw = self.read_events(self.user_key(user_id), min(limit, self.recent_max))
        return _events(raw)

    # -- admin ------------------------------------------------------------------------------

    def publish(
        self,
        bundle: Bundle,
        keep: int = 3,
        progress: bool = True,
        on_batch: BatchHook | None = None,
    ) -> PublishReport:
        from recsvc.store.publish import publish_bundle

        return publish_bundle(self, bundle, keep=keep, progress=progress, on_batch=on_batch)

    def rollback(self, to: str | None = None) -> str:
        table = self.version_table()
        current = self.current_version()
        if to is None:
            ready = sorted(
                (v for v, m in table.items() if m.get("status") == READY),
                key=lambda v: (_epoch(str(table[v].get("published_at", ""))), v),
            )
            if current not in ready:
                raise NotFound("nothing to roll back to: no current version")
            position = ready.index(current)
            if position == 0:
                raise NotFound(f"nothing to roll back to: {current} is the oldest stored version")
            to = ready[position - 1]
        elif to not in table or table[to].get("status") != READY:
            stored = ", ".join(v for v, m in table.items() if m.get("status") == READY) or "none"
            raise NotFound(f"version '{to}' is not a complete stored version (stored: {stored})")
        self.switch_current(to)
        log.info("rolled back", extra={"version": to})
        return to

    def delete_version(self, version: str) -> None:
        table = self.version_table()
        if version not in table:
            raise NotFound(f"version '{version}' is not in the store")
        if version == self.current_version():
            raise InvalidInput("version", f"'{version}' is current; roll back or publish first")
        self.drop_version(version, table[version])
        self._forget_cache(version)

    def forget_user(self, user_id: str) -> int:
        if not user_id:
            raise InvalidInput("--user", "must not be empty")
        table = self.version_table()
        for version, meta in table.items():  # a handle that files ids otherwise would miss them
            self._check_user_ids(version, meta)
        key = self.user_key(user_id)
        # record first: a publish running now drops the user before it verifies
        self.add_forgotten(self.entry_of_key(key), time.time())
        held = 0
        for version in self.version_table():  # re-read: a publish may have finished meanwhile
            held += self.delete_users(version, [key]) > 0
        self.delete_events(key)
        if key != user_id:  # events recorded before hashing was turned on (kept up to a week)
            self.delete_events(user_id)
        elif (earlier := _earlier_hasher(self.id_secret_file)) is not None:  # ... or while on
            self.delete_events(earlier.user_key(user_id))
        log.info("forgot a user", extra={"versions": held})
        return held

    def update_items(self, catalog_frame: pd.DataFrame) -> ItemUpdateReport:
        import pandas as pd

        from recsvc.events import _FALSE, _TRUE

        frame = catalog_frame
        if "item_id" not in frame.columns:
            raise InvalidInput("item_id", "column not found in the items file")
        bad: dict[str, int] = {}

        def count(reason: str, n: int) -> None:
            if n:
                bad[reason] = bad.get(reason, 0) + n

        ids = frame["item_id"].astype(object).where(frame["item_id"].notna(), None)
        ids = ids.map(lambda v: v.strip() if isinstance(v, str) else v)
        missing = (ids.isna() | (ids == "")).to_numpy()
        count("missing item_id", int(missing.sum()))
        for reason, _line in frame.attrs.get("bad_lines", []):  # lines no parser could split
            count(reason, 1)
        columns: dict[str, list[Any]] = {}
        n = len(frame)
        if "category" in frame.columns:
            columns["category"] = [None if pd.isna(v) else str(v).strip() for v in frame["category"]]
        if "title" in frame.columns:
            columns["title"] = [None if pd.isna(v) else str(v) for v in frame["title"]]
        if "price" in frame.columns:
            parsed = pd.to_numeric(frame["price"], errors="coerce").to_numpy(dtype="float64")
            given = frame["price"].notna().to_numpy()
            wrong = given & (~np.isfinite(parsed) | (parsed < 0))
            count("unparsable or negative price", int((wrong & ~missing).sum()))
            huge = given & ~wrong & as_float32(parsed)[1]  # prices are stored as float32
            count(NUMBER_OUT_OF_RANGE.format("price"), int((huge & ~missing).sum()))
            wrong |= huge
            columns["price"] = [
                None if (w or not g) else float(p) for p, g, w in zip(parsed.tolist(), given, wrong, strict=True)
            ]
        if "in_stock" in frame.columns:
            flags = frame["in_stock"].fillna("").astype(str).str.strip().str.lower().tolist()
            given = frame["in_stock"].notna().to_numpy()
            values: list[Any] = []
            for flag, g, m in zip(flags, given, missing, strict=True):
                if not g:
                    values.append(None)
                elif flag in _TRUE:
                    values.append(True)
                elif flag in _FALSE:
                    values.append(False)
                else:
                    values.append(None)
                    if not m:
                        count("unparsable in_stock", 1)
            columns["in_stock"] = values
        if not columns:
            raise InvalidInput("--items", "no metadata columns (category, price, in_stock, title)")

        for _attempt in range(ITEM_UPDATE_ATTEMPTS):
            # the revision first: an update landing after it makes the write below refuse
            base_revision = self.state().items_revision
            now = time.time()  # after whatever came first: this update is the newer one
            merged = _merge_updates(self.item_updates(), ids, missing, columns, now)
            encoded = {k: codec.encode_item_update(v) for k, v in merged.items()}
            revision = self.put_item_updates(encoded, base_revision)
            if revision is not None:
                break
        else:
            raise StoreUnavailable(
                f"item updates: other updates kept changing the items revision "
                f"({ITEM_UPDATE_ATTEMPTS} attempts); try again"
            )
        known: set[str] = set()
        for version, meta in self.version_table().items():
            if meta.get("status") != READY:
                continue
            known.update(item for item in merged if self._catalog_ids(version).get(item) >= 0)
        rows = int(n - missing.sum())
        unknown = sum(1 for row in range(n) if not missing[row] and str(ids.iloc[row]) not in known)
        return ItemUpdateReport(rows=n, updated=rows - unknown, unknown=unknown, bad=bad, revision=revision)

    def _catalog_ids(self, version: str) -> IdMap:
        ids: IdMap = self._cached(version, "catalog", lambda: self._load_catalog(version))["ids"]
        return ids


def _merge_updates(
    existing: dict[str, bytes],
    ids: pd.Series,
    missing: np.ndarray,
    columns: dict[str, list[Any]],
    now: float,
) -> dict[str, codec.ItemUpdate]:
    """The overrides of an items file merged over the stored ones (later rows win per field)."""
    merged: dict[str, codec.ItemUpdate] = {}
    for row in range(len(ids)):
        if missing[row]:
            continue
        item_id = str(ids.iloc[row])
        update = codec.ItemUpdate(ts=now, **{k: v[row] for k, v in columns.items()})
        previous = merged.get(item_id)
        if previous is None and item_id in existing:
            previous = codec.decode_item_update(existing[item_id])
        merged[item_id] = previous.merge(update) if previous is not None else update
    return merged


def _epoch(iso: str) -> float:
    from recsvc.store.publish import epoch_of

    return epoch_of(iso) if iso else -math.inf


def with_kept(newest: list[bytes], kept: Sequence[bytes]) -> list[bytes]:
    """The newest events, then the kept events (newest first) that are not among them: older
    purchases that views have pushed out of the recent list. Both lists come newest first and
    an event is the same bytes in both."""
    if not kept:
        return newest
    seen = set(newest)
    return newest + [event for event in kept if event not in seen]


def _events(raw: Sequence[bytes]) -> list[RecentEvent]:
    """Decoded events, newest first; records of the earlier index-based format are skipped."""
    return [event for event in map(codec.decode_event, raw) if event is not None]


def _earlier_hasher(secret_file: str | None) -> Any:
    """The IdHasher of the configured id secret (`secret_file`, else the environment's), or
    None when none is configured: a store opened without hash_ids still finds the events it
    filed under hashed keys. A secret configured but unusable is logged, not raised: the
    plain-id data is already deleted, and the hashed lists expire with the events' TTL."""
    import os

    from recsvc.privacy import SECRET_ENV, SECRET_FILE_ENV, hasher_from_env

    if not (secret_file or os.environ.get(SECRET_FILE_ENV) or os.environ.get(SECRET_ENV)):
        return None
    try:
        return hasher_from_env(secret_file)
    except InvalidInput as exc:
        log.warning("forget: the id secret is set but unusable, so real-time events filed "
                    "under the customer's hashed key (if any) were not deleted",
                    extra={"setting": exc.field, "reason": exc.reason})
        return None
