"""The nightly training job (`recsvc train`): events in, one model bundle out.

Steps: load and validate the log (bad rows counted per reason), drop forgotten customers,
build the weighted interaction matrix, fit the recommenders, precompute each user's top-N
candidates through the one ranking path, similar items, association rules, buy-again lists,
segments and popularity lists, and write everything as a versioned bundle.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsvc.bundle import BundleWriter, fingerprint_files, utc_timestamp
from recsvc.config import TrainConfig, model_disabled, to_dict
from recsvc.errors import InvalidInput
from recsvc.events import Catalog, EventLog, LoadOptions, LoadReport, load_catalog, load_events
from recsvc.ids import IdMap
from recsvc.matrix import event_weights, interaction_matrix
from recsvc.privacy import is_hashed_entry
from recsvc.progress import progress
from recsvc.ranking import top_candidates
from recsvc.scorers import BlendScorer, FactorScorer, save_scorer
from training.models import build_model
from training.models.base import Recommender
from training.models.blend import BlendModel

log = logging.getLogger(__name__)

SIMILAR_BATCH = 2048
CANDIDATE_BATCH = 1024


@dataclass
class TrainResult:
    path: Path
    version: str
    report: LoadReport
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def read_forget_list(path: str | Path | None, hashed_ok: bool = False) -> set[str]:
    """Customer ids to leave out of training: a file or a store URL.

    The file holds one id a line, as `recsvc store forgotten --out` and `recsvc forget
    --forget-file` write it: there is no comment syntax (an id may start with '#'), blank lines
    are skipped, a UTF-8 byte-order mark and spaces around an id are ignored.

    A store that keeps ids as keyed hashes lists `hmac-sha256:...` entries, which only
    `drop_users` can match (it hashes the log's ids): callers that match ids themselves leave
    `hashed_ok` False and get InvalidInput rather than silently keeping forgotten customers.
    """
    entries = _read_forget_entries(path)
    if not hashed_ok and any(is_hashed_entry(e) for e in entries):
        raise InvalidInput(
            "--forget-list",
            "the forget list holds hashed customer ids (a store with hash_ids), which this "
            "engine cannot match yet: train with the local engine",
        )
    return entries


def _read_forget_entries(path: str | Path | None) -> set[str]:
    if not path:
        return set()
    if "://" in str(path):
        from recsvc.store import open_store

        try:
            store = open_store(str(path))
        except InvalidInput as exc:  # the URL came as --forget-list, not --store
            raise InvalidInput("--forget-list", exc.reason) from None
        try:
            return set(store.forgotten_users())
        finally:
            store.close()
    path = Path(path)
    if not path.is_file():  # a privacy list that is not there must not mean "nobody"
        what = "is a directory, not a file" if path.is_dir() else "file not found"
        raise InvalidInput("--forget-list", f"{what}: {path}")
    # every non-blank line is an id: one read as a comment (or glued to a BOM) would be a
    # customer kept in the model
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    return {line.strip() for line in lines if line.strip()}


def drop_users(event_log: EventLog, user_ids: Iterable[str], report: LoadReport) -> EventLog:
    """Remove forgotten customers (privacy requests): their events and their ids; counted.

    Items and orders that only forgotten customers had go too, as in the Spark engine (which
    indexes after the drop): nothing of theirs survives in the bundle. An item the items file
    lists comes back with the catalogue, which holds it whoever bought it.

    `user_ids` is the forget list: customer ids, or keyed hashes from a store that hashes ids
    (matched by hashing this log's ids with RECSVC_ID_SECRET; see recsvc.privacy).
    """
    from recsvc.privacy import resolve_forgotten

    indexes = [event_log.users.get(u) for u in resolve_forgotten(user_ids, event_log.users.ids)]
    indexes = [i for i in indexes if i >= 0]
    if not indexes:
        return event_log
    forgotten = np.zeros(len(event_log.users), dtype=bool)
    forgotten[indexes] = True
    drop = forgotten[event_log.user]
    report.notes.append(f"{int(drop.sum())} events of {len(indexes)} forgotten customers dropped")
    kept = event_log.mask(~drop)
    # A forgotten id must not survive in the bundle's id maps either: renumber the others.
    kept.users, kept.user = _keep_ids(event_log.users, kept.user, ~forgotten)
    kept.items, kept.item = _keep_ids(event_log.items, kept.item, _used(kept.item, len(kept.items)))
    kept.orders, kept.order = _keep_ids(
        event_log.orders, kept.order, _used(kept.order, len(kept.orders))
    )
    return kept


def _used(codes: np.ndarray, size: int) -> np.ndarray:
    """Which of `size` ids the codes refer to (-1: none)."""
    used = np.zeros(size, dtype=bool)
    used[codes[codes >= 0]] = True
    return used


def _keep_ids(ids: IdMap, codes: np.ndarray, keep: np.ndarray) -> tuple[IdMap, np.ndarray]:
    """The ids where `keep` is true, in their order, and `codes` renumbered to them.

    Codes of dropped ids, and -1 (none), become -1.
    """
    remaining = np.flatnonzero(keep)
    renumber = np.full(len(ids) + 1, -1, dtype=codes.dtype)  # the last slot is where -1 lands
    renumber[remaining] = np.arange(len(remaining), dtype=codes.dtype)
    return IdMap(ids.id_of(int(i)) for i in remaining), renumber[codes]


def similar_from_factors(item_factors: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n most similar items by cosine of item factors (self excluded), -1 padded.

    Uses implicit's multi-threaded top-k (C++), several times faster than ranking dense
    similarity blocks in numpy at 100k items.
    """
    from implicit.cpu.topk import topk

    factors = np.asarray(item_factors, dtype=np.float32)
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    unit = np.ascontiguousarray(factors / norms, dtype=np.float32)
    n_items = unit.shape[0]
    n = min(n, max(n_items - 1, 0))
    if n == 0:
        return np.full((n_items, 0), -1, np.int32), np.zeros((n_items, 0), np.float32)
    ids, sims = topk(unit, unit, n + 1, num_threads=min(2, os.cpu_count() or 1))
    ids = np.asarray(ids, dtype=np.int64)
    sims = np.asarray(sims, dtype=np.float32)
    others = (ids != np.arange(n_items)[:, None]) & (ids >= 0) & np.isfinite(sims)
    # keep each row's first n entries that are not the item itself, best first
    order = np.argsort(~others, axis=1, kind="stable")[:, :n]
    indices = np.take_along_axis(ids, order, axis=1).astype(np.int32)
    scores = np.take_along_axis(sims, order, axis=1)
    valid = np.take_along_axis(others, order, axis=1)
    indices[~valid] = -1
    scores[~valid] = 0.0
    return indices, scores


def similar_from_cooccurrence(matrix: sp.csr_matrix, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-n items by cosine of co-occurrence columns (used when no factors were trained)."""
    binary = (matrix > 0).astype(np.float32).tocsc()
    norms = np.sqrt(np.asarray(binary.sum(axis=0)).ravel())
    norms[norms == 0] = 1.0
    n_items = binary.shape[1]
    n = min(n, max(n_items - 1, 0))
    indices = np.full((n_items, n), -1, dtype=np.int32)
    scores = np.zeros((n_items, n), dtype=np.float32)
    transposed = binary.T.tocsr()
    for start in range(0, n_items, SIMILAR_BATCH):
        stop = min(start + SIMILAR_BATCH, n_items)
        sims = (transposed[start:stop] @ binary).toarray() / norms[start:stop, None] / norms[None, :]
        sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        sims[sims <= 0] = -np.inf
        idx, val = top_candidates(sims, n)
        indices[start:stop], scores[start:stop] = idx, val
    return indices, scores


def default_models(config: TrainConfig, n_items: int) -> tuple[str, list[str], str]:
    """(the default recommender, the blend parts to fit, why a part was left out or "").

    EASE joins the default blend only up to `ease.max_items` items: its dense solver is
    O(items^3) and the local solver above it costs minutes per 100k items (issue 4 and 8
    measurements in the README). Above that the blend is its other parts; a blend of one part
    is that part itself, so the candidates, the server's real-time scoring and the manifest
    all name the model that actually ranks.
    """
    if config.default_recommender != "blend":  # enabled: recsvc.config checks it
        return config.default_recommender, [], ""
    parts = [name for name, weight in config.blend.items() if weight > 0]
    notes = []
    disabled = [name for name in parts if model_disabled(config, name)]
    if disabled:
        parts = [name for name in parts if name not in disabled]
        notes.append(f"{', '.join(disabled)} disabled: left out of the default blend")
    if "ease" in parts and n_items > config.ease.max_items and len(parts) > 1:
        parts.remove("ease")
        notes.append(
            f"ease left out of the default blend: {n_items} items > ease.max_items "
            f"{config.ease.max_items}"
        )
    if len(parts) <= 1:
        # no part left: item-kNN if it is on, else the popularity list
        if not parts and not disabled:
            notes.append("no model of the blend has a weight above 0")
        single = parts[0] if parts else ("popular" if model_disabled(config, "itemknn") else "itemknn")
        if notes:
            notes.append(f"the default recommender is {single}")
        return single, [], "; ".join(notes)
    return "blend", parts, "; ".join(notes)


def factor_candidates(
    scorer: FactorScorer, matrix: sp.csr_matrix, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """`user_candidates` for a factor model through implicit's multi-threaded C++ top-k.

    Same answer as ranking `scorer.score` rows (seen items banned), without materialising a
    users x items block in Python: at 200k users x 100k items this is the difference between
    minutes and tens of seconds.
    """
    from implicit.cpu.topk import topk

    n_users, n_items = matrix.shape
    n = min(n, n_items)
    items = np.full((n_users, n), -1, dtype=np.int32)
    scores = np.zeros((n_users, n), dtype=np.float32)
    item_factors = np.ascontiguousarray(scorer.item_factors, dtype=np.float32)
    user_factors = np.asarray(scorer.user_factors, dtype=np.float32)
    seen = sp.csr_matrix(matrix, dtype=np.float32)
    threads = min(2, os.cpu_count() or 1)
    batch = CANDIDATE_BATCH * 16
    for start in progress(desc="candidates", unit="batch", iterable=range(0, n_users, batch)):
        stop = min(start + batch, n_users)
        ids, values = topk(
            item_factors,
            np.ascontiguousarray(user_factors[start:stop]),
            n,
            filter_query_items=seen[start:stop],
            num_threads=threads,
        )
        ids = np.asarray(ids)
        values = np.asarray(values, dtype=np.float32)
        # implicit marks filtered and missing entries with -FLT_MAX (or -inf / id -1)
        invalid = (ids < 0) | ~np.isfinite(values) | (values <= np.finfo(np.float32).min)
        ids[invalid] = -1
        values[invalid] = 0.0
        items[start:stop], scores[start:stop] = ids, values
    return items, scores


def user_candidates(
    scorer: Any, matrix: sp.csr_matrix, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's best n unseen items by `scorer` (the lists the store serves)."""
    if (
        isinstance(scorer, FactorScorer)
        and not scorer.fold_in_always
        and scorer.user_factors.shape[0] == matrix.shape[0]
    ):
        return factor_candidates(scorer, matrix, n)
    n_users, n_items = matrix.shape
    n = min(n, n_items)
    items = np.full((n_users, n), -1, dtype=np.int32)
    scores = np.zeros((n_users, n), dtype=np.float32)
    users = np.arange(n_users, dtype=np.int32)
    for start in progress(desc="candidates", unit="batch", iterable=range(0, n_users, CANDIDATE_BATCH)):
        stop = min(start + CANDIDATE_BATCH, n_users)
        history = matrix[start:stop]
        idx, val = top_candidates(scorer.score(history, users[start:stop]), n, banned=history)
        items[start:stop], scores[start:stop] = idx, val
    return items, scores


def effective_load_options(options: LoadOptions | None, config: TrainConfig) -> LoadOptions:
    """The loader options training uses (both engines): the config's event types and
    cancellation prefix over the given options."""
    import dataclasses

    options = options or LoadOptions()
    return dataclasses.replace(
        options,
        known_event_types=options.known_event_types or list(config.events.weights),
        cancel_prefix=config.events.cancel_prefix or None,
    )


def train(
    events: str | Path,
    out: str | Path,
    config: TrainConfig,
    items: str | Path | None = None,
    load_options: LoadOptions | None = None,
    forget_list: str | Path | None = None,
    now: int | None = None,
    on_step: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run the whole job and write one bundle under `out`; returns where and what.

    Raises InvalidInput for unusable input and TooManyBadRows past the limit.
    """
    timings: dict[str, float] = {}

    def step(name: str) -> Callable[[], None]:
        if on_step:
            on_step(name)
        started = time.perf_counter()

        def done() -> None:
            timings[name] = round(time.perf_counter() - started, 3)
            log.info("step done", extra={"step": name, "seconds": timings[name]})

        return done

    options = effective_load_options(load_options, config)
    # read before the log: a missing list stops the job before an hour of loading (the
    # publisher drops customers forgotten later)
    forgotten = read_forget_list(forget_list, hashed_ok=True)  # drop_users resolves hashes
    done = step("load")
    event_log, report = load_events(events, options)
    # the manifest counts customers dropped from this log, as the Spark engine does: the list's
    # length would count every customer ever forgotten, most of them not in this log
    users_in_log = len(event_log.users)
    event_log = drop_users(event_log, forgotten, report)
    forgotten_users = users_in_log - len(event_log.users)
    catalog_read_at = utc_timestamp()  # item updates after this apply to the bundle (store)
    catalog = (
        load_catalog(items, event_log.items, report) if items else Catalog.empty(len(event_log.items))
    )
    if len(event_log) == 0:
        raise InvalidInput("--events", "no usable rows: nothing to train on")
    now = now if now is not None else int(event_log.timestamp.max())
    done()

    done = step("matrix")
    weights = event_weights(event_log, config.events, now=now)
    matrix = interaction_matrix(event_log, weights, shape=(len(event_log.users), len(event_log.items)))
    done()

    writer = BundleWriter(out)
    try:
        writer.ids(event_log.users, event_log.items, catalog)
        writer.csr("seen", matrix)

        default, blend_parts, left_out = default_models(config, len(event_log.items))
        if left_out:
            report.notes.append(left_out)
            log.info("default recommender", extra={"model": default, "reason": left_out})
        model_names: list[str] = []
        for name, wanted in (
            *((part, True) for part in blend_parts),
            (default, True),
            ("als", config.als.enabled),
            ("bpr", config.bpr.enabled),
            ("ease", config.ease.enabled and len(event_log.items) <= config.ease.max_items),
            ("itemknn", config.itemknn.enabled),
            ("popular", True),
        ):
            if wanted and name not in model_names:
                model_names.append(name)
        models_info: dict[str, Any] = {}
        fitted: dict[str, Any] = {}
        scorers: dict[str, Any] = {}
        for name in model_names:
            done = step(f"fit {name}")
            model: Recommender
            if name == "blend":  # its parts are fitted above: reuse them, don't fit twice
                model = BlendModel.from_fitted(
                    [(fitted[part], float(config.blend[part])) for part in blend_parts]
                )
            else:
                model = build_model(name, config).fit(matrix)
            fitted[name] = model
            scorers[name] = (
                BlendScorer([(scorers[part], float(config.blend[part])) for part in blend_parts])
                if name == "blend"
                else model.scorer()
            )
            save_scorer(writer, name, scorers[name], saved={id(v): k for k, v in scorers.items()})
            models_info[name] = {"fit_seconds": round(model.fit_seconds, 3), "params": model.params()}
            done()

        done = step("candidates")
        cand_items, cand_scores = user_candidates(scorers[default], matrix, config.candidates)
        writer.array("candidates/items", cand_items)
        writer.array("candidates/scores", cand_scores)
        done()

        done = step("similar items")
        factor_scorer = next((s for s in scorers.values() if isinstance(s, FactorScorer)), None)
        if factor_scorer is not None:
            sim_idx, sim_scores = similar_from_factors(factor_scorer.item_factors, config.similar.n)
        else:
            sim_idx, sim_scores = similar_from_cooccurrence(matrix, config.similar.n)
        writer.array("similar/indices", sim_idx)
        writer.array("similar/scores", sim_scores)
        done()

        rules_info: dict[str, Any] = {}
        if config.rules.enabled:
            done = step("rules")
            from training.baskets import baskets_from_events
            from training.rules import mine_rules, save_rules

            baskets = baskets_from_events(event_log, config.rules.window_days)
            sizes = np.diff(baskets.matrix.indptr)
            large = sizes > config.rules.max_basket_items
            basket_matrix = baskets.matrix[~large] if large.any() else baskets.matrix
            rules = mine_rules(
                basket_matrix,
                min_support=config.rules.min_support,
                min_confidence=config.rules.min_confidence,
                max_len=config.rules.max_len,
                max_rules=config.rules.max_rules,
            )
            rules_info = save_rules(
                writer, rules, int(large.sum()), config.rules.max_basket_items, report.notes
            )
            done()

        if config.buyagain.enabled:
            done = step("buy-again")
            from training.buyagain import fit_buyagain

            fit_buyagain(event_log, config.buyagain, now).write(writer)
            done()

        segments = None
        if config.segments.enabled:
            done = step("segments")
            from training.segments import fit_segments

            user_factors = (
                np.asarray(factor_scorer.user_factors) if factor_scorer is not None else None
            )
            segments = fit_segments(event_log, now, user_factors, config.segments)
            segments.write(writer)
            done()

        done = step("popularity")
        from training.popularity import fit_popularity, write_popularity

        lists = fit_popularity(
            event_log,
            weights,
            catalog,
            config.popularity,
            now,
            segments=getattr(segments, "segment", None),
            clusters=getattr(segments, "cluster", None),
        )
        write_popularity(writer, lists)
        done()

        counts = {
            "users": len(event_log.users),
            "items": len(event_log.items),
            "events": len(event_log),
            "orders": len(event_log.orders),
            "interactions": int(matrix.nnz),
        }
        inputs = fingerprint_files([events, items])
        path = writer.commit(
            {
                "input": inputs,
                "counts": counts,
                "rows": report.to_dict(),
                "params": to_dict(config),
                "default_recommender": default,
                "default_recommender_note": left_out,
                "models": models_info,
                "rules": rules_info,
                "event_types": event_log.event_types,
                "trained_until": now,
                "timings": timings,
                "forgotten_users": forgotten_users,
                "catalog_read_at": catalog_read_at,
            }
        )
    except BaseException:
        writer.abort()
        raise
    return TrainResult(path=path, version=writer.version, report=report, timings=timings, counts=counts)
