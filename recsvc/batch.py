"""Batch export of personalised recommendations (for e-mail campaigns).

Scores through `recsvc.ranking.rank_users`, the path the server and the evaluation use. Users
the bundle does not know get the global popularity list and are counted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsvc.bundle import Bundle
from recsvc.ranking import ItemFilter, allowed_mask, finalize, rank_users, scored


@dataclass
class ExportSummary:
    users: int = 0
    unknown_users: int = 0
    short_lists: int = 0  # users who got fewer than k items (tiny catalogue or strict filter)
    rows: int = 0


def popularity_fallback(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    if bundle.has("popularity/global"):
        found = bundle.popularity("global").get("all")
        if found is not None:
            return found
    counts = np.asarray((bundle.seen > 0).sum(axis=0)).ravel().astype(np.float32)
    order = np.argsort(-counts, kind="stable")[:1000]
    return order.astype(np.int32), counts[order]


def export_frames(
    bundle: Bundle,
    user_ids: Sequence[str] | None,
    k: int,
    model: str | None = None,
    flt: ItemFilter | None = None,
    batch_size: int = 1024,
    summary: ExportSummary | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield frames of `user_id, rank, item_id, score` (rank 1 is best), batch by batch.

    user_ids: None for every user in the bundle.
    """
    summary = summary if summary is not None else ExportSummary()
    flt = flt or ItemFilter()
    scorer = bundle.scorer(model)
    seen = bundle.seen
    allowed = allowed_mask(bundle.catalog, flt)
    fallback = popularity_fallback(bundle)
    item_ids = np.asarray(bundle.items.ids, dtype=object)
    if user_ids is None:
        indexes = np.arange(len(bundle.users), dtype=np.int32)
        names: Sequence[str] = bundle.users.ids
    else:
        indexes = bundle.users.encode(np.asarray(user_ids, dtype=object), grow=False)
        names = user_ids
    excluded = np.asarray(sorted(flt.exclude_items), dtype=np.int32)

    for start in range(0, len(indexes), batch_size):
        chunk = indexes[start : start + batch_size]
        known = chunk >= 0
        rows_user: list[str] = []
        rows_rank: list[int] = []
        rows_item: list[int] = []
        rows_score: list[float] = []
        if known.any():
            history = seen[chunk[known]]
            exclude = history if flt.exclude_seen else sp.csr_matrix(history.shape, dtype=np.float32)
            if len(excluded):
                extra = sp.csr_matrix(
                    (np.ones(len(excluded) * history.shape[0], np.float32),
                     (np.repeat(np.arange(history.shape[0]), len(excluded)),
                      np.tile(excluded, history.shape[0]))),
                    shape=history.shape,
                )
                exclude = ((exclude != 0).astype(np.float32) + extra).tocsr()
            known_names = [names[start + int(i)] for i in np.flatnonzero(known)]
            for row, answer in rank_users(
                scorer, history, chunk[known], k, exclude=exclude, allowed=allowed,
                fallback=fallback, batch_size=batch_size,
            ):
                for rank, item in enumerate(answer.items, start=1):
                    rows_user.append(known_names[row])
                    rows_rank.append(rank)
                    rows_item.append(item.item)
                    rows_score.append(item.score)
                summary.short_lists += len(answer.items) < k
        for i in np.flatnonzero(~known):
            answer = finalize(scored(*fallback, reason="popular"), k, allowed=allowed,
                              exclude=flt.exclude_items)
            summary.unknown_users += 1
            summary.short_lists += len(answer.items) < k
            for rank, item in enumerate(answer.items, start=1):
                rows_user.append(names[start + int(i)])
                rows_rank.append(rank)
                rows_item.append(item.item)
                rows_score.append(item.score)
        summary.users += len(chunk)
        summary.rows += len(rows_user)
        # typed even when empty: a batch in which every list came out empty is still a batch
        # of string ids (pandas would take empty columns for floats)
        yield pd.DataFrame(
            {
                "user_id": pd.Series(rows_user, dtype="str"),
                "rank": np.asarray(rows_rank, dtype=np.int32),
                "item_id": pd.Series(item_ids[np.asarray(rows_item, dtype=np.int64)], dtype="str"),
                "score": np.asarray(rows_score, dtype=np.float32),
            }
        )
