"""The one scoring path: rank, filter and top up an answer.

Batch export, offline evaluation, the publisher's candidate lists and the gRPC server all go
through these functions, so offline numbers are online behaviour:

- `top_candidates` turns dense scores into each row's best N items, with already-seen items
  (or any banned pattern) removed;
- `finalize` takes ranked candidates, drops what the filter or the exclusions forbid, and tops
  up from fallback lists (popularity) until k items remain: never more than k, never a
  duplicate, never a forbidden item.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from recsvc.errors import InvalidInput
from recsvc.events import Catalog

# A price bound above any real price is a caller's bug; finite and bounded also because
# catalogue prices are float32, which overflows past ~3.4e38.
MAX_PRICE = 1e15


def check_price_range(
    min_price: float | None, max_price: float | None, names: tuple[str, str]
) -> None:
    """InvalidInput naming the bound (names: what the caller calls min and max) that is not a
    price from 0 to MAX_PRICE, or a minimum above the maximum: one rule for CLI and server."""
    for name, value in zip(names, (min_price, max_price), strict=True):
        if value is not None and not (math.isfinite(value) and 0 <= value <= MAX_PRICE):
            raise InvalidInput(name, f"must be a price from 0 to {MAX_PRICE:g}, got {value}")
    if min_price is not None and max_price is not None and min_price > max_price:
        raise InvalidInput(names[0], f"{min_price:g} is above {names[1]} {max_price:g}")


class ScoredItem(NamedTuple):  # a tuple: built for every item of every answer, cheaply
    item: int  # item index
    score: float
    reason: str = ""


@dataclass(frozen=True)
class ItemFilter:
    """What a caller allows in an answer (item indexes; categories by name)."""

    categories: frozenset[str] = frozenset()  # empty: any category
    in_stock_only: bool = False
    min_price: float | None = None
    max_price: float | None = None
    exclude_items: frozenset[int] = frozenset()
    exclude_seen: bool = True

    @property
    def restricts_catalog(self) -> bool:
        return bool(self.categories) or self.in_stock_only or (
            self.min_price is not None or self.max_price is not None
        )


def allowed_mask(catalog: Catalog, flt: ItemFilter) -> np.ndarray | None:
    """Boolean mask of items the filter's catalog conditions allow (None: all of them)."""
    if not flt.restricts_catalog:
        return None
    mask = np.ones(len(catalog.in_stock), dtype=bool)
    if flt.categories:
        mask &= np.isin(catalog.category, list(flt.categories))
    if flt.in_stock_only:
        mask &= catalog.in_stock
    if flt.min_price is not None:
        mask &= catalog.price >= flt.min_price  # unknown (NaN) prices fail a price bound
    if flt.max_price is not None:
        mask &= catalog.price <= flt.max_price
    return mask


def top_candidates(
    scores: np.ndarray, n: int, banned: sp.csr_matrix | None = None, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Best `n` items per row, best first: (indexes int32, scores float32), -1 padded.

    banned: CSR with one row per score row; its stored entries are never returned.
    allowed: boolean mask over items; items outside it are never returned.
    """
    scores = np.array(scores, dtype=np.float32, copy=True)
    rows, n_items = scores.shape
    if banned is not None and banned.nnz:
        coo = banned.tocoo()
        scores[coo.row, coo.col] = -np.inf
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    n = min(n, n_items)
    if n <= 0 or rows == 0:
        return np.full((rows, max(n, 0)), -1, np.int32), np.zeros((rows, max(n, 0)), np.float32)
    if n < n_items:
        part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    else:
        part = np.tile(np.arange(n_items), (rows, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    indexes = np.take_along_axis(part, order, axis=1).astype(np.int32)
    values = np.take_along_axis(part_scores, order, axis=1)
    invalid = ~np.isfinite(values)
    indexes[invalid] = -1
    values[invalid] = 0.0
    return indexes, values.astype(np.float32)


@dataclass
class Answer:
    items: list[ScoredItem] = field(default_factory=list)
    from_primary: int = 0  # how many came from the first (personal) list


def finalize(
    candidates: Iterable[ScoredItem],
    k: int,
    allowed: np.ndarray | None = None,
    exclude: Iterable[int] = (),
    topups: Iterable[Iterable[ScoredItem]] = (),
) -> Answer:
    """Up to k distinct items from `candidates`, then from each top-up list in turn.

    An item is skipped when it is negative (padding), outside `allowed`, in `exclude`, or
    already taken. `topups` is read one list at a time, only while items are missing (a
    generator of lists costs nothing when `candidates` fill the answer).
    """
    answer = Answer()
    if k <= 0:
        return answer
    # Sets are read as they are (a user's history can be long; copying it costs more than a
    # second membership test per candidate); taken holds what this answer took.
    excluded = exclude if isinstance(exclude, (set, frozenset)) else set(exclude)
    taken: set[int] = set()
    items = answer.items
    # The server runs this for every answer: locals, no per-item attribute updates.
    n_allowed = len(allowed) if allowed is not None else 0
    for position, source in enumerate(itertools.chain((candidates,), topups)):
        for candidate in source:
            item = candidate.item
            if item < 0 or item in taken or item in excluded:
                continue
            if allowed is not None and (item >= n_allowed or not allowed[item]):
                continue
            taken.add(item)
            items.append(candidate)
            if len(items) >= k:
                break
        if position == 0:
            answer.from_primary = len(items)
        if len(items) >= k:
            break
    return answer


def scored(indexes: np.ndarray, scores: np.ndarray, reason: str = "") -> Iterator[ScoredItem]:
    """Lazily wrap parallel arrays as ScoredItems (stops at -1 padding)."""
    indexes, scores = np.asarray(indexes), np.asarray(scores)
    if indexes.dtype.kind not in "iu":
        indexes = indexes.astype(np.int64)
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    # tolist() gives Python ints and floats (no per-item conversion), in growing chunks: a
    # caller usually takes a few items of a list that may be the whole catalogue long.
    n = min(len(indexes), len(scores))
    start, size = 0, 16
    while start < n:
        end = min(n, start + size)
        for item, score in zip(indexes[start:end].tolist(), scores[start:end].tolist(), strict=True):
            if item < 0:
                return
            yield ScoredItem(item, score, reason)
        start, size = end, size * 4


def rank_users(
    scorer: object,
    history: sp.csr_matrix,
    users: np.ndarray,
    k: int,
    exclude: sp.csr_matrix | None = None,
    allowed: np.ndarray | None = None,
    fallback: tuple[np.ndarray, np.ndarray] | None = None,
    batch_size: int = 1024,
    extra: int = 0,
) -> Iterator[tuple[int, Answer]]:
    """Rank every row of `history` with `scorer`; yield (row, Answer) with at most k items.

    exclude: CSR rows of items not to return (e.g. the seen matrix rows for these users).
    fallback: (indexes, scores) of a popularity list that tops answers up to k.
    extra: how many candidates beyond k to draw before filtering (0: just k).
    """
    fallback_items = list(scored(*fallback, reason="popular")) if fallback is not None else []
    for start in range(0, history.shape[0], batch_size):
        stop = min(start + batch_size, history.shape[0])
        scores = scorer.score(history[start:stop], users[start:stop])  # type: ignore[attr-defined]
        banned = exclude[start:stop] if exclude is not None else None
        indexes, values = top_candidates(scores, k + extra, banned, allowed)
        for offset in range(stop - start):
            row = start + offset
            seen_row: Iterable[int] = ()
            if banned is not None:
                seen_row = banned.indices[banned.indptr[offset] : banned.indptr[offset + 1]].tolist()
            yield row, finalize(
                scored(indexes[offset], values[offset]),
                k,
                allowed=allowed,
                exclude=seen_row,
                topups=[fallback_items],
            )
