"""The feature-store interface: what the publisher writes and the gRPC server reads.

`FeatureStore` is a `typing.Protocol`; `memory://` (recsvc.store.memory) and `redis://`,
`rediss://`, `redis+cluster://` (recsvc.store.redis) implement it, chosen by
`recsvc.store.open_store(url)`. One parametrised test suite runs against every implementation.

Read side, designed for a low-latency server:

- `state()` is one cheap read (current version id and the item-metadata revision); the server
  polls it and reloads its per-version caches when either changes.
- Per-version data the server holds in process, loaded once per version: `item_catalog`
  (ids, category, price, stock: what filters need), `item_factors`, `rules`, popularity lists.
- Per-request data is one round trip: `user_features(version, user_id, recent=N)` returns the
  user's candidate list with scores, seen items, factor vector, segment, buy-again list and,
  when `recent > 0`, the user's real-time events, all read together (in Redis: one pipeline to
  one node, the keys share a hash slot).

Items travel as integer indexes into the version's `ItemCatalog` (row i = item i of the
bundle); item id strings live only in the catalogue. A component a bundle lacks (no rules, no
buy-again) is skipped by publish; readers then return None or empty arrays.

Must not import `training` or `serving`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from recsvc.buyagain import BuyAgainLists
from recsvc.events import Catalog
from recsvc.ids import IdMap

if TYPE_CHECKING:
    import pandas as pd

    from recsvc.bundle import Bundle
    from recsvc.privacy import IdHasher

# Names of the popularity lists a bundle may carry (bundle `popularity/<list>/`).
POPULARITY_LISTS = ("global", "trending", "category", "segment", "cluster")
# Group name of the single list in `global` and `trending`.
ALL = "all"
# Version states kept in the store's version table.
READY = "ready"
PARTIAL = "partial"  # being written, or left behind by a killed publish


@dataclass(frozen=True)
class VersionInfo:
    """One stored version (id = the bundle manifest's `version`)."""

    id: str
    created_at: str  # bundle creation time, ISO-8601 UTC
    published_at: str  # when the publish finished (started, while partial), ISO-8601 UTC, ms
    status: str  # READY or PARTIAL
    is_current: bool
    n_users: int
    n_items: int
    bytes: int  # encoded payload bytes written (approximate store footprint)
    keys: int  # store keys (Redis) or records (memory) written
    components: tuple[str, ...] = ()  # e.g. ("candidates", "seen", "similar", "rules", ...)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at,
            "published_at": self.published_at,
            "status": self.status,
            "is_current": self.is_current,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "bytes": self.bytes,
            "keys": self.keys,
            "components": list(self.components),
        }


@dataclass(frozen=True)
class StoreState:
    """What a server polls: which version is current and the item-metadata revision."""

    current: str | None
    items_revision: int  # bumped by every `update_items`


@dataclass(frozen=True, eq=False, slots=True)  # slots: servers cache many
class RecentEvent:
    """One real-time event of a user (not versioned: the item by id, which every version
    maps to its own index)."""

    item_id: str
    event_type: str
    ts: float  # epoch seconds


# A user's buy-again list is a one-row `recsvc.buyagain.BuyAgainLists` (row 0): the server
# ranks it at request time with `for_user(0, now, k)`, as the due score depends on the clock.
BuyAgainList = BuyAgainLists


@dataclass(frozen=True, eq=False, slots=True)  # slots: servers cache many
class UserSegment:
    """RFM and taste-cluster assignment of one user (bundle `segments/users.parquet`)."""

    segment: str
    cluster: int  # -1 when the bundle has no clusters
    recency_days: float
    frequency: float
    monetary: float
    r: int
    f: int
    m: int


@dataclass(frozen=True, eq=False, slots=True)  # slots: servers cache many
class UserFeatures:
    """Everything the server needs about one user for one version, read in one round trip."""

    user_id: str
    candidates: np.ndarray  # int32 item indexes, best first, no padding
    scores: np.ndarray  # float32, parallel to candidates (quantised in Redis: see codec)
    seen: np.ndarray  # int32 item indexes the user interacted with, ascending
    factors: np.ndarray | None = None  # float32 user vector of the factor model, if any
    segment: UserSegment | None = None
    buyagain: BuyAgainLists | None = None  # one row; rank with .for_user(0, now, k)
    recent: tuple[RecentEvent, ...] = ()  # newest first; filled when asked for (recent > 0)
    known: bool = True  # False: no data in this version, only real-time events (new visitor)


@dataclass(frozen=True, eq=False)
class ItemCatalog:
    """Item ids and the metadata filters need, for one version (row i = item index i).

    Item-metadata updates (`update_items`) newer than the bundle are already applied.
    """

    version: str
    ids: IdMap
    category: np.ndarray  # object: category name, "" when unknown
    price: np.ndarray  # float32, NaN when unknown
    in_stock: np.ndarray  # bool
    title: np.ndarray  # object
    revision: int = 0  # the store's items_revision this catalogue reflects

    def __len__(self) -> int:
        return len(self.ids)

    def index_of(self, item_id: str) -> int:
        """Item index of `item_id`, -1 when this version does not know it."""
        return self.ids.get(item_id)

    def item_id(self, index: int) -> str:
        return self.ids.id_of(index)

    def as_catalog(self) -> Catalog:
        """The same metadata as a `recsvc.events.Catalog` (for `ranking.allowed_mask`)."""
        return Catalog(
            category=self.category, price=self.price, in_stock=self.in_stock, title=self.title
        )


@dataclass(frozen=True)
class PublishReport:
    """What one publish wrote."""

    version: str
    n_users: int
    n_items: int
    keys: int
    bytes: int
    seconds: float
    components: tuple[str, ...] = ()
    removed_versions: tuple[str, ...] = field(default=())
    cleaned_partial: tuple[str, ...] = field(default=())


@runtime_checkable
class FeatureStore(Protocol):
    """Versioned online feature store (see the module docstring for the read design).

    Every method may raise `recsvc.errors.StoreUnavailable` when the backend cannot be reached;
    reads of an unknown version raise `recsvc.errors.NotFound`.
    """

    url: str  # the store URL with any password masked (safe to log)

    # -- versions ---------------------------------------------------------------------------
    def current_version(self) -> str | None:
        """The version readers should use; None before the first publish."""
        ...

    def state(self) -> StoreState:
        """Current version and item-metadata revision in one read (what servers poll)."""
        ...

    def versions(self) -> list[VersionInfo]:
        """Stored versions, oldest first, including partial ones."""
        ...

    def manifest(self, version: str) -> dict[str, Any]:
        """The bundle manifest of a stored version."""
        ...

    # -- per-user reads (one round trip) ----------------------------------------------------
    def user_features(self, version: str, user_id: str, recent: int = 0) -> UserFeatures | None:
        """A user's features in `version`, read in one round trip.

        recent: also read the newest this many real-time events, followed by the user's
        purchases older than those that the store still keeps (so more than `recent` may come).
        Returns None when the version holds nothing for the user (unknown, forgotten, or the
        version does not exist) and no real-time events were asked for or found; a user with
        only real-time events comes back with `known=False` and empty arrays.
        """
        ...

    def user_features_many(
        self, version: str, user_ids: Sequence[str], recent: int = 0
    ) -> list[UserFeatures | None]:
        """`user_features` for many users in one pipelined read, in the order given."""
        ...

    def buyagain(self, version: str, user_id: str) -> BuyAgainLists | None:
        """The user's buy-again list as a one-row BuyAgainLists (None: none, or no buyagain/)."""
        ...

    def user_segment(self, version: str, user_id: str) -> UserSegment | None:
        """The user's segment (None: unknown user, or the bundle has no segments/)."""
        ...

    # -- per-version reads (load once per version, hold in process) -------------------------
    def item_catalog(self, version: str) -> ItemCatalog:
        """Item ids and metadata of `version`, with newer item updates applied."""
        ...

    def item_factors(self, version: str) -> np.ndarray | None:
        """items x f float32 item factors of the version's factor model (None: no such model)."""
        ...

    def similar_items(self, version: str, item_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(item indexes int32, scores float32) most similar to `item_index`, best first."""
        ...

    def rules(self, version: str) -> Any:
        """The version's `recsvc.rules.RuleSet` (None: the bundle has no rules/)."""
        ...

    def popularity(
        self, version: str, list_name: str, group: str = ALL
    ) -> tuple[np.ndarray, np.ndarray]:
        """(item indexes, scores) of one popularity list group; empty arrays when absent.

        list_name: one of POPULARITY_LISTS; group: "all" for global/trending, else the
        category, segment or cluster name.
        """
        ...

    def popularity_groups(self, version: str, list_name: str) -> list[str]:
        """Group names of one popularity list (empty when the bundle lacks it)."""
        ...

    # -- real-time state (not versioned) ----------------------------------------------------
    def record_event(
        self, user_id: str, item_id: str, event_type: str, ts: float | None = None
    ) -> None:
        """Append a real-time event to the user's capped, expiring recent list."""
        ...

    def recent_events(self, user_id: str, limit: int = 50) -> list[RecentEvent]:
        """The user's newest `limit` events, then their older purchases the store still keeps
        (a purchase stays excluded however many views follow it); newest first each."""
        ...

    # -- admin ------------------------------------------------------------------------------
    def publish(self, bundle: Bundle, keep: int = 3, progress: bool = True) -> PublishReport:
        """Write `bundle` as a new version, verify it, switch `current` to it atomically.

        keep: how many READY versions to keep, the most recently current ones (the others are
        deleted after the switch, except the version current until this publish, which
        servers still answer from until their next poll).
        Partial versions left by killed publishes are cleaned first.
        """
        ...

    def rollback(self, to: str | None = None) -> str:
        """Point `current` at `to` (default: the READY version before current); returns it."""
        ...

    def delete_version(self, version: str) -> None:
        """Remove a stored version (not the current one)."""
        ...

    def forget_user(self, user_id: str) -> int:
        """Delete the user's data in every version and real-time state; record the id.

        Returns how many versions held data of the user.
        """
        ...

    def forgotten_users(self) -> list[str]:
        """The forget list, for the trainer to drop these customers' events.

        Entries are customer ids, or `hmac-sha256:<fingerprint>:<key>` when the store keeps
        ids as keyed hashes (`recsvc.privacy.resolve_forgotten` matches both).
        """
        ...

    def forget_entry(self, user_id: str) -> str:
        """What the forget list holds for a customer (the id, or its tagged keyed hash)."""
        ...

    def is_forgotten(self, user_ids: Sequence[str]) -> list[bool]:
        """Whether each customer is on the forget list (hashed or not)."""
        ...

    def enable_id_hashing(self, hasher: IdHasher) -> None:
        """Keep customer ids only as keyed hashes (`open_store(url, hash_ids=True)` calls it)."""
        ...

    def update_items(self, catalog_frame: pd.DataFrame) -> ItemUpdateReport:
        """Apply item metadata (item_id plus any of category, price, in_stock, title)."""
        ...

    def ping(self) -> None:
        """Raise StoreUnavailable unless the backend answers."""
        ...

    def close(self) -> None:
        ...


@dataclass(frozen=True)
class ItemUpdateReport:
    """What an item-metadata update changed."""

    rows: int
    updated: int  # rows whose item any stored version knows
    unknown: int  # rows naming an item no stored version knows (kept for later versions)
    bad: dict[str, int] = field(default_factory=dict)  # reason -> rows ignored
    revision: int = 0
