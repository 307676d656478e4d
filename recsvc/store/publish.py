"""Publishing a bundle into a feature store: write a new version, verify it, switch `current`.

The flow is the same for every backend (`recsvc.store.engine.StoreEngine` supplies the storage
primitives):

1. take the store's publish lock (a crashed publisher's lock is taken over: its TTL ran out, or
   it was held by a dead process on this host; a publisher that finds its lock taken over
   stops, and removes what it wrote once its writer has stopped if the new holder already
   dropped its partial version, so a batch that was in flight leaves no orphan keys);
2. delete PARTIAL versions left behind by killed publishes;
3. record the new version as PARTIAL (with what is needed to delete it), so a publish killed at
   any later point leaves data the next publish can find and remove;
4. write the version-wide data (manifest, item catalogue, item factors, rules, popularity
   lists), the per-item similar lists and the per-user records in batches (one pipeline per
   batch in Redis, sent from a writer thread while the next batch is encoded);
5. drop users forgotten meanwhile, verify the counts, then mark the version READY and switch
   `current` in one atomic step (readers see the old version or the new one, never a mix);
6. delete READY versions beyond the `keep` most recently current ones (a version rolled back
   to counts as recent), never the current one nor the one current just before the switch
   (servers answer from it until their next poll).

Users on the store's forget list are never written. Components the bundle lacks are skipped.
Customer ids go to the store as `engine.user_key(id)` (keyed hashes when the store hashes ids,
see `recsvc.privacy`); the version's meta records which (`user_ids`). Publishing a stored
version again only switches `current` to it, unless it keeps ids another way (hash_ids turned
on or off, another secret): it is then written again, or refused while it is current.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from recsvc.bundle import Bundle, RankedLists
from recsvc.errors import BundleFormatError, InvalidInput, StoreUnavailable
from recsvc.privacy import PLAIN, resolve_forgotten
from recsvc.store import codec
from recsvc.store.base import PARTIAL, POPULARITY_LISTS, READY, PublishReport, UserSegment

if TYPE_CHECKING:
    from recsvc.buyagain import BuyAgainLists
    from recsvc.store.engine import StoreEngine

log = logging.getLogger(__name__)

USER_BATCH = 4096  # users encoded and written per batch
ITEM_BATCH = 8192  # similar-item lists per batch
BatchHook = Callable[[str, int, int], None]  # (stage, done, total), called after each batch


def utc_now() -> str:
    """The time now, ISO-8601 UTC to the millisecond: versions published within one second
    must still sort in publish order (rollback goes to the one published before current)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def epoch_of(iso: str) -> float:
    """Epoch seconds of an ISO-8601 time (0 when unparsable)."""
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class BundleContent:
    """What a bundle offers the store; components it lacks are None."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self.version = bundle.version
        self.manifest = bundle.manifest
        self.created_at = str(self.manifest.get("created_at", ""))

    @cached_property
    def user_ids(self) -> list[str]:
        return list(self.bundle.users.ids)

    @cached_property
    def n_items(self) -> int:
        return len(self.bundle.items)

    @cached_property
    def candidates(self) -> tuple[np.ndarray, np.ndarray] | None:
        if not (self.bundle.has("candidates/items") and self.bundle.has("candidates/scores")):
            return None
        items, scores = self.bundle.array("candidates/items"), self.bundle.array("candidates/scores")
        if items.shape != scores.shape or items.ndim != 2 or items.shape[0] != len(self.user_ids):
            raise BundleFormatError(
                f"{self.version}: candidates/items {items.shape} and scores {scores.shape} must "
                f"both be users ({len(self.user_ids)}) x N"
            )
        return items, scores

    @cached_property
    def seen(self) -> sp.csr_matrix | None:
        return self.bundle.seen if self.bundle.has("seen/indptr") else None

    @cached_property
    def kinds(self) -> dict[str, dict[str, Any]]:
        """kind.json of every recommender of the bundle, by name."""
        kinds = {}
        for name in self.bundle.recommenders:
            if (self.bundle.path / "recommenders" / name / "kind.json").exists():
                kinds[name] = self.bundle.json(f"recommenders/{name}/kind.json")
        return kinds

    @cached_property
    def factor_model(self) -> str | None:
        """The recommender whose factors the store serves: the default one if it has factors,
        else als, else bpr, else any factor model."""
        order = [self.bundle.default_recommender, "als", "bpr", *self.bundle.recommenders]
        return next((n for n in order if self.kinds.get(n, {}).get("kind") == "factors"), None)

    @cached_property
    def factors(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(user_factors, item_factors) of `factor_model`."""
        if self.factor_model is None:
            return None
        base = f"recommenders/{self.factor_model}"
        users = self.bundle.array(f"{base}/user_factors")
        items = self.bundle.array(f"{base}/item_factors")
        if users.shape[0] != len(self.user_ids):
            log.warning(
                "user factors do not cover the bundle's users; not published",
                extra={"model": self.factor_model, "rows": int(users.shape[0])},
            )
            return None
        return users, items

    @cached_property
    def segments(self) -> dict[str, np.ndarray] | None:
        """Columns of segments/users.parquet (row = user index), defaults for missing ones."""
        if not self.bundle.has("segments/users.parquet"):
            return None
        frame = self.bundle.frame("segments/users")
        rows = len(frame)
        defaults: dict[str, tuple[Any, Any]] = {
            "segment": ("", object), "cluster": (-1, np.int64), "recency_days": (np.nan, np.float64),
            "frequency": (0.0, np.float64), "monetary": (0.0, np.float64),
            "r": (0, np.int64), "f": (0, np.int64), "m": (0, np.int64),
        }
        columns: dict[str, np.ndarray] = {}
        for name, (default, dtype) in defaults.items():
            if name not in frame.columns:
                columns[name] = np.full(rows, default, dtype=dtype)
            elif dtype is object:
                columns[name] = frame[name].fillna("").astype(str).to_numpy(dtype=object)
            else:
                columns[name] = frame[name].fillna(default).to_numpy(dtype=dtype)
        return columns

    def segment_rows(self, rows: np.ndarray) -> list[UserSegment | None] | None:
        columns = self.segments
        if columns is None:
            return None
        n = len(columns["segment"])
        picked = {name: values[np.minimum(rows, max(n - 1, 0))].tolist() if n else []
                  for name, values in columns.items()}
        return [
            UserSegment(picked["segment"][i], int(picked["cluster"][i]),
                        float(picked["recency_days"][i]), float(picked["frequency"][i]),
                        float(picked["monetary"][i]), int(picked["r"][i]), int(picked["f"][i]),
                        int(picked["m"][i]))
            if row < n else None
            for i, row in enumerate(rows.tolist())
        ]

    def check_indexes(self) -> None:
        """BundleFormatError when an item index points outside the catalogue (-1 pads lists):
        a server would fail or answer someone else's item on every read of it."""
        n = self.n_items
        parts: list[tuple[str, np.ndarray]] = []
        if self.candidates is not None:
            parts.append(("candidates/items", self.candidates[0]))
        if self.similar is not None:
            parts.append(("similar/indices", self.similar[0]))
        if self.seen is not None:
            parts.append(("seen", self.seen.indices))
        if self.buyagain is not None:
            parts.append(("buyagain/items", np.asarray(self.buyagain.items)))
        for name, lists in self.popularity.items():
            parts.append((f"popularity/{name}", np.asarray(lists.items)))
        for name, values in parts:
            if values.size and (int(values.min()) < -1 or int(values.max()) >= n):
                raise BundleFormatError(
                    f"{self.version}: corrupt {name}: item indexes {int(values.min())}..{int(values.max())} "
                    f"outside the {n} items of the catalogue"
                )
        if self.factors is not None and self.factors[1].shape[0] != n:
            raise BundleFormatError(
                f"{self.version}: item factors cover {self.factors[1].shape[0]} items, the catalogue {n}"
            )

    @cached_property
    def buyagain(self) -> BuyAgainLists | None:
        from recsvc.buyagain import BuyAgainLists

        if not self.bundle.has("buyagain/indptr"):
            return None
        lists = BuyAgainLists.read(self.bundle)
        if lists.n_users != len(self.user_ids):
            raise BundleFormatError(
                f"{self.version}: buyagain/ covers {lists.n_users} users, the bundle has "
                f"{len(self.user_ids)}"
            )
        return lists

    @cached_property
    def similar(self) -> tuple[np.ndarray, np.ndarray] | None:
        if not (self.bundle.has("similar/indices") and self.bundle.has("similar/scores")):
            return None
        return self.bundle.array("similar/indices"), self.bundle.array("similar/scores")

    @cached_property
    def rules_dir(self) -> Path | None:
        path = self.bundle.path / "rules"
        return path if (path / "meta.json").exists() else None

    @cached_property
    def popularity(self) -> dict[str, RankedLists]:
        root = self.bundle.path / "popularity"
        if not root.exists():
            return {}
        names = [n for n in POPULARITY_LISTS if (root / n / "names.json").exists()]
        names += sorted(p.name for p in root.iterdir() if (p / "names.json").exists() and p.name not in names)
        return {name: self.bundle.popularity(name) for name in names}

    @property
    def components(self) -> tuple[str, ...]:
        present = {
            "candidates": self.candidates is not None,
            "seen": self.seen is not None,
            "factors": self.factors is not None,
            "segments": self.segments is not None,
            "buyagain": self.buyagain is not None,
            "similar": self.similar is not None,
            "rules": self.rules_dir is not None,
            "popularity": bool(self.popularity),
        }
        return tuple(name for name, ok in present.items() if ok)

    def user_batch(self, rows: np.ndarray) -> codec.UserBatch:
        """The per-user components of bundle rows `rows` (user indexes)."""
        batch = codec.UserBatch()
        if self.candidates is not None:
            batch.candidates = np.asarray(self.candidates[0][rows])
            batch.candidate_scores = np.asarray(self.candidates[1][rows])
        if self.seen is not None:
            batch.seen = self.seen[rows]
        if self.factors is not None:
            batch.factors = np.asarray(self.factors[0][rows])
        if self.segments is not None:
            batch.segments = self.segment_rows(rows)
        if self.buyagain is not None:
            batch.buyagain = _buyagain_rows(self.buyagain, rows)
        if batch.rows == 0 and len(rows):  # a bundle with no per-user component at all
            batch.seen = sp.csr_matrix((len(rows), self.n_items), dtype=np.float32)
        return batch


def _buyagain_rows(lists: BuyAgainLists, rows: np.ndarray) -> BuyAgainLists:
    from recsvc.buyagain import ARRAYS, BuyAgainLists

    indptr = np.asarray(lists.indptr)
    starts, ends = indptr[rows], indptr[rows + 1]
    sizes = ends - starts
    take = np.concatenate([np.arange(s, e) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]) if len(rows) else np.zeros(0, np.int64)
    take = take.astype(np.int64)
    new_indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    new_indptr[1:] = np.cumsum(sizes)
    arrays = {name: np.asarray(getattr(lists, name))[take] for name in ARRAYS if name != "indptr"}
    return BuyAgainLists(indptr=new_indptr, trained_at=lists.trained_at,
                         horizon_days=lists.horizon_days, **arrays)


# -- version-wide data -----------------------------------------------------------------------


def version_blobs(content: BundleContent) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of everything version-wide, lazily (big arrays one at a time)."""
    import json

    from recsvc.bundle import _json_default

    bundle = content.bundle
    manifest = dict(content.manifest)
    if content.factors is not None and content.factor_model is not None:
        # how the server folds new events into these factors (ALS or BPR; see recsvc.scorers)
        kind = content.kinds[content.factor_model]
        manifest["served_factors"] = {"model": content.factor_model, **kind}
    yield "manifest", json.dumps(manifest, default=_json_default).encode()
    catalog = bundle.catalog
    yield "items:ids", codec.encode_strings(list(bundle.items.ids))
    yield "items:category", codec.encode_strings([str(c) for c in catalog.category])
    yield "items:title", codec.encode_strings([str(t) for t in catalog.title])
    yield "items:price", codec.encode_array(np.asarray(catalog.price, dtype=np.float32))
    yield "items:in_stock", codec.encode_array(np.asarray(catalog.in_stock, dtype=bool))
    if content.factors is not None:
        yield "item_factors", codec.encode_array(np.asarray(content.factors[1], dtype=np.float32))
    if content.rules_dir is not None:
        for path in sorted(content.rules_dir.iterdir()):
            if path.is_file():
                yield f"file:rules/{path.name}", path.read_bytes()
    width = codec.index_code(content.n_items)
    for name, ranked in content.popularity.items():
        yield f"pop:{name}:names", codec.encode_strings(ranked.names)
        for group in ranked.names:
            items, scores = ranked.get(group)  # type: ignore[misc]
            yield f"pop:{name}:g:{group}", codec.encode_scored_list(items, scores, width, codec.SCORE_F32)


def similar_records(content: BundleContent, start: int, stop: int, score_code: int) -> list[tuple[int, bytes]]:
    """(item index, encoded list) for items start..stop that have similar items."""
    assert content.similar is not None
    indexes = np.asarray(content.similar[0][start:stop])
    scores = np.asarray(content.similar[1][start:stop])
    lengths = codec._leading_valid(indexes)
    batch = codec._encode_scored_batch(indexes, scores, lengths, codec.index_code(content.n_items), score_code)
    return [(start + i, batch.row(i)) for i in range(stop - start) if lengths[i] > 0]


# -- the flow --------------------------------------------------------------------------------


@dataclass
class _Writer:
    """Sends batches from a background thread while the caller encodes the next one."""

    send: Callable[[Callable[[], None]], None] = field(init=False)
    _queue: queue.Queue[Callable[[], None] | None] = field(default_factory=lambda: queue.Queue(maxsize=2))
    _error: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="recsvc-publish-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._error:
                continue
            try:
                job()
            except BaseException as exc:  # re-raised in the caller's thread
                self._error.append(exc)

    def submit(self, job: Callable[[], None]) -> None:
        self._check()
        self._queue.put(job)

    def _check(self) -> None:
        if self._error:
            raise self._error[0]

    def close(self) -> None:
        """Wait for every batch to be written; re-raise the first write error."""
        self._queue.put(None)
        self._thread.join()
        self._check()

    def abort(self) -> None:
        """Stop after the batch in flight, dropping the rest (errors are not raised)."""
        self._error.append(RuntimeError("aborted"))
        self._queue.put(None)
        self._thread.join()


def publish_bundle(
    engine: StoreEngine,
    bundle: Bundle,
    keep: int = 3,
    progress: bool = True,
    on_batch: BatchHook | None = None,
) -> PublishReport:
    """Publish `bundle` into `engine` (see the module docstring). Returns what was written.

    on_batch: called after each batch as (stage, done, total); an exception it raises aborts
    the publish the way a crash would (the partial version stays until the next publish).
    """
    from recsvc.progress import progress as progress_bar

    if keep < 1:
        raise ValueError("keep must be at least 1")
    started = time.monotonic()
    content = BundleContent(bundle)
    content.check_indexes()  # before the lock: a damaged bundle never reaches the store
    version = content.version
    with engine.publish_lock(version):
        table = engine.version_table()
        cleaned = tuple(v for v, meta in table.items() if meta.get("status") == PARTIAL)
        for stale in cleaned:
            log.info("removing partial version left by an interrupted publish", extra={"version": stale})
            engine.drop_version(stale, table[stale])
        existing = table.get(version)
        if existing is not None and existing.get("status") == READY:
            existing = _rewrite_if_ids_differ(engine, version, existing)
        if existing is not None and existing.get("status") == READY:
            previous = engine.current_version()
            engine.switch_current(version)
            log.info("version already stored; switched current to it", extra={"version": version})
            removed = prune_versions(engine, keep, previous)
            return PublishReport(version, int(existing.get("n_users", 0)), int(existing.get("n_items", 0)),
                                 int(existing.get("keys", 0)), int(existing.get("bytes", 0)),
                                 time.monotonic() - started, tuple(existing.get("components", ())),
                                 removed, cleaned)

        # Matched by id whatever the entries' form (plain, or hashed under the secret): a list
        # written by a handle with another ?hash_ids= setting still removes its customers,
        # and entries hashed under another secret stop the publish with a clear error.
        entries = set(engine.forgotten_users())
        user_ids = content.user_ids
        forgotten = set(resolve_forgotten(entries, user_ids, engine.id_hasher)) if entries else set()
        n_items = content.n_items
        meta: dict[str, Any] = {
            "id": version,
            "status": PARTIAL,
            "created_at": content.created_at,
            # item updates made after the trainer read the catalogue apply to this version
            "catalog_read_at": str(content.manifest.get("catalog_read_at") or content.created_at),
            "published_at": utc_now(),
            "n_users": 0,
            "n_items": n_items,
            "bytes": 0,
            "keys": 0,
            "components": list(content.components),
            "factor_model": content.factor_model,
            "layout": engine.layout_info(n_items),
            "user_ids": engine.user_id_mode,
        }
        engine.put_version_meta(version, meta)
        total_bytes = 0

        quiet: dict[str, Any] = {} if progress else {"disable": True}
        writer = _Writer()
        try:
            blobs: dict[str, bytes] = {}
            for name, blob in version_blobs(content):
                blobs[name] = blob
                total_bytes += len(blob)
            writer.submit(partial(engine.put_blobs, version, blobs))
            if on_batch:
                on_batch("version", 1, 1)

            n_similar = 0
            if content.similar is not None:
                bar = progress_bar(total=n_items, desc=f"publish {version} similar", unit="items",
                                   **quiet)
                for start in range(0, n_items, ITEM_BATCH):
                    stop = min(start + ITEM_BATCH, n_items)
                    similar = similar_records(content, start, stop, engine.score_code)
                    n_similar += len(similar)
                    total_bytes += sum(len(r) for _, r in similar)
                    writer.submit(partial(engine.put_items, version, similar))
                    bar.update(stop - start)
                    if on_batch:
                        on_batch("similar", stop, n_items)
                    engine.refresh_publish_lock(version)
                bar.close()

            user_keys = engine.user_keys(user_ids)  # the ids themselves unless hashing
            order = engine.user_write_order(user_keys)
            keep_rows = np.fromiter((user_ids[i] not in forgotten for i in order.tolist()),
                                    dtype=bool, count=len(order)) if forgotten else None
            if keep_rows is not None:
                order = order[keep_rows]
            bar = progress_bar(total=len(order), desc=f"publish {version} users", unit="users",
                               **quiet)
            for start in range(0, len(order), USER_BATCH):
                rows = order[start : start + USER_BATCH]
                records = codec.encode_user_records(
                    content.user_batch(rows), n_items, engine.score_code, engine.factor_code
                )
                ids = [user_keys[i] for i in rows.tolist()]
                total_bytes += sum(len(r) for r in records)
                writer.submit(partial(engine.put_users, version, ids, records))
                bar.update(len(rows))
                if on_batch:
                    on_batch("users", start + len(rows), len(order))
                engine.refresh_publish_lock(version)
            bar.close()
            writer.close()
        except BaseException:
            writer.abort()
            log.warning("publish interrupted; the partial version is removed by the next publish",
                        extra={"version": version})
            _remove_if_taken_over(engine, version, meta)
            raise

        # users forgotten while we wrote: remove them before anyone can read this version. A
        # forget may also land during the verification (it deletes from this version too):
        # the count is then short by those users, so a short count re-reads the forget list
        # once before it fails the publish.
        late_ids: set[str] = set()
        try:
            for attempt in range(2):
                late = set(engine.forgotten_users()) - entries
                late_ids = set(resolve_forgotten(late, user_ids, engine.id_hasher)) - forgotten if late else set()
                late_here = engine.user_keys(sorted(late_ids))
                if late_here:
                    engine.delete_users(version, late_here)
                expected_users = len(order) - len(late_here)
                try:
                    verify_version(engine, version, expected_users, n_similar, set(blobs))
                    break
                except StoreUnavailable:
                    if attempt == 1 or engine.count_users(version) >= expected_users:
                        raise
            engine.refresh_publish_lock(version)  # still ours: no other publish started meanwhile
        except BaseException:
            _remove_if_taken_over(engine, version, meta)  # the last batches may have landed late
            raise
        keys = engine.count_keys(version)
        meta.update(status=READY, published_at=utc_now(), n_users=expected_users,
                    bytes=total_bytes, keys=keys)
        engine.put_version_meta(version, meta)
        previous = engine.current_version()
        engine.switch_current(version)
        log.info("published", extra={"version": version, "users": expected_users, "bytes": total_bytes})
        removed = prune_versions(engine, keep, previous)
    return PublishReport(
        version=version,
        n_users=expected_users,
        n_items=n_items,
        keys=keys,
        bytes=total_bytes,
        seconds=time.monotonic() - started,
        components=content.components,
        removed_versions=removed,
        cleaned_partial=cleaned,
    )


def _remove_if_taken_over(engine: StoreEngine, version: str, meta: dict[str, Any]) -> None:
    """Remove what this stopped publish wrote if its version left the version table.

    That happens when the publish lost its lock (it stalled past the lock's TTL) and the
    publisher that took the lock over dropped the version as partial: a batch still in flight
    then landed on keys nothing lists, which no later publish would find. Called once this
    publish's writer has stopped. A version still listed is left to the next publish's
    clean-up of partial versions. Never raises: the publish's own error is the one to report.
    """
    try:
        if version in engine.version_table():
            return
        engine.drop_version(version, meta)
        log.info("removed the keys of a publish that lost its lock", extra={"version": version})
    except Exception as exc:
        log.warning("could not remove the keys of a publish that lost its lock",
                    extra={"version": version, "error": type(exc).__name__})


def _rewrite_if_ids_differ(
    engine: StoreEngine, version: str, existing: dict[str, Any]
) -> dict[str, Any] | None:
    """The stored version's meta when it keeps customer ids the way this handle writes them;
    else None, having dropped it to be written again (hash_ids turned on or off, or another
    secret: a mere switch to it would leave the ids as they were).

    Raises InvalidInput when that version is current: servers read it, it is not rewritten
    under them.
    """
    stored = str(existing.get("user_ids", PLAIN))
    if stored == engine.user_id_mode:
        return existing
    if version == engine.current_version():
        raise InvalidInput(
            "publish",
            f"version '{version}' is current and stores customer ids as {stored}, this store "
            f"handle as {engine.user_id_mode}; a current version is not rewritten under the "
            "servers reading it: publish a newly trained bundle, or roll back to another stored "
            "version and publish this bundle again (it is then rewritten)",
        )
    log.info("rewriting a stored version that keeps customer ids another way",
             extra={"version": version, "user_ids": stored})
    engine.drop_version(version, existing)
    return None


def verify_version(engine: StoreEngine, version: str, users: int, similar: int, blobs: set[str]) -> None:
    """Raise StoreUnavailable unless the store holds what was written."""
    found_users = engine.count_users(version)
    found_items = engine.count_items(version)
    missing = blobs - set(engine.blob_names(version))
    problems = []
    if found_users != users:
        problems.append(f"{found_users} user records, expected {users}")
    if found_items != similar:
        problems.append(f"{found_items} similar-item lists, expected {similar}")
    if missing:
        problems.append(f"missing {', '.join(sorted(missing)[:5])}")
    if problems:
        raise StoreUnavailable(
            f"publish of {version} failed verification ({'; '.join(problems)}); current unchanged"
        )


def prune_versions(engine: StoreEngine, keep: int, previous: str | None = None) -> tuple[str, ...]:
    """Delete READY versions beyond the `keep` most recently current ones.

    Ordered by when each version was last switched to current (`switch_order`), then by
    publish time: a version rolled back to counts as recent, however old its publish. Never
    deletes the current version, nor `previous` (the one current before this publish: servers
    answer from it until their next poll loads the new one).
    """
    table = engine.version_table()
    current = engine.current_version()
    switched = engine.switch_order()
    ready = sorted(
        (v for v, meta in table.items() if meta.get("status") == READY),
        key=lambda v: (switched.get(v, 0), epoch_of(str(table[v].get("published_at", ""))), v),
    )
    doomed = [v for v in ready[: max(0, len(ready) - keep)] if v not in (current, previous)]
    for version in doomed:
        engine.drop_version(version, table[version])
    return tuple(doomed)
