"""Exact association-rule mining over baskets: frequent itemsets, then rules `A -> c`.

The miner is Apriori's level-wise search done on whole arrays instead of per basket:

- Level 1 counts every item (one `bincount`) and keeps the items with enough support.
- Each basket's frequent (k-1)-itemsets are kept as a sparse baskets x itemsets matrix `M`
  (CSR, columns in lexicographic order, so itemsets sharing a (k-2)-prefix are neighbours in
  every row). A candidate k-itemset is the join of two (k-1)-itemsets with the same prefix, and
  it occurs in a basket exactly when both halves do, so the candidates of every basket are
  the pairs of neighbours in the same prefix run of its row: they are enumerated for all
  baskets at once with `repeat`/`cumsum` arithmetic and counted with one `bincount` over
  Apriori's candidate ids (or one sort when that id space is large); the frequent ones become
  the columns of the next level's `M`. At level 2 the prefix is empty and this is the upper
  triangle of the sparse product `X.T @ X` over frequent items, computed this way because it
  measured 2x faster than scipy's SpGEMM + triu on 500k x 50k and the enumerated pairs are
  needed anyway to build `M`. Later levels only touch pairs Apriori's join would generate;
  nothing is ever a dense items x items or baskets x items array. Work is split into chunks
  of at most `PAIR_CHUNK` candidate occurrences to bound memory.

Rules have one item on the right. For a frequent itemset S and c in S, the rule S - {c} -> c
is kept when confidence >= `min_confidence`. Metrics are computed from integer counts so each
is a single correctly rounded division (support = count / n_orders; see `recsvc.rules`).
Support thresholds compare `count / n_orders >= min_support` in floating point, exactly as the
fraction is defined, so results match mlxtend on the same data.

Depends on numpy/scipy and `recsvc`; must not import `serving`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from recsvc.errors import InvalidInput
from recsvc.rules import RuleSet

log = logging.getLogger(__name__)

MAX_WORK = 400_000_000  # candidate occurrences one level may enumerate before mining stops there
PAIR_CHUNK = 4_000_000  # candidate occurrences enumerated at once (~40 bytes each in temporaries)
DENSE_CANDIDATES = 1 << 22  # count candidates in a dense array up to this many (32 MB) ...
DENSE_RATIO = 4  # ... or up to this many times the candidate occurrences being counted


@dataclass(frozen=True)
class _Level:
    """The frequent k-itemsets, in lexicographic order of their (local) item indexes."""

    items: np.ndarray  # (m, k) int32 local item indexes, ascending within a row
    count: np.ndarray  # (m,) int64 baskets holding the itemset
    prefix: np.ndarray  # (m,) int64 index of items[:, :-1] at level k-1 (0 at level 1)
    key: np.ndarray  # (m,) int64 prefix * n_frequent_items + last item; sorted ascending


def min_count_for(min_support: float, n_orders: int) -> int:
    """Smallest basket count c with c / n_orders >= min_support (as floats)."""
    count = max(math.ceil(min_support * n_orders), 0)
    while count > 0 and (count - 1) / n_orders >= min_support:
        count -= 1
    while count / n_orders < min_support:
        count += 1
    return max(count, 1)


def _presence(baskets: sp.spmatrix | sp.sparray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """CSR indptr/indices of the non-zero cells (one per basket and item), and the shape."""
    if not sp.issparse(baskets):
        raise InvalidInput("baskets", "expected a scipy.sparse matrix (orders x items)")
    matrix = sp.csr_matrix(baskets)
    if not matrix.has_canonical_format:
        matrix = matrix.copy()
        matrix.sum_duplicates()
    n_orders, n_items = (int(s) for s in matrix.shape)
    present = matrix.data != 0
    if present.all():
        return matrix.indptr.astype(np.int64), matrix.indices.astype(np.int32), n_orders, n_items
    indptr = np.concatenate([[0], np.cumsum(present)])[matrix.indptr].astype(np.int64)
    return indptr, matrix.indices[present].astype(np.int32), n_orders, n_items


def _runs(indptr: np.ndarray, columns: np.ndarray, group: np.ndarray) -> np.ndarray:
    """For each entry of a CSR, how many later entries of its row share its group.

    Columns within a row are sorted and groups are contiguous in column order, so the entries
    a column can be joined with are exactly the rest of its run.
    """
    nnz = len(columns)
    if nnz == 0:
        return np.zeros(0, dtype=np.int64)
    entry_group = group[columns]
    starts = np.empty(nnz, dtype=bool)
    starts[0] = True
    np.not_equal(entry_group[1:], entry_group[:-1], out=starts[1:])
    del entry_group
    starts[indptr[:-1][np.diff(indptr) > 0]] = True  # a new row starts a new run
    run_start = np.flatnonzero(starts)
    del starts
    run_length = np.diff(np.append(run_start, nnz))
    partners = np.repeat(run_start + run_length - 1, run_length)
    partners -= np.arange(nnz, dtype=partners.dtype)
    return partners


def _chunks(partners: np.ndarray) -> Iterator[tuple[int, int]]:
    """Ranges of entries whose candidate pairs add up to about PAIR_CHUNK."""
    total = np.cumsum(partners)
    start = 0
    nnz = len(partners)
    while start < nnz:
        done = int(total[start - 1]) if start else 0
        end = int(np.searchsorted(total, done + PAIR_CHUNK, side="right"))
        end = max(end, start + 1)
        yield start, min(end, nnz)
        start = end


def _pairs(
    columns: np.ndarray, partners: np.ndarray, offset: np.ndarray, start: int, end: int
) -> tuple[np.ndarray, np.ndarray]:
    """Entries [start, end) joined with their partners: (left entry, candidate id).

    The candidate joining itemsets p < q of one prefix run has id offset[p] + (q - p - 1), so
    ids enumerate exactly Apriori's candidates, in lexicographic order of (p, q).
    """
    counts = partners[start:end]
    total = int(counts.sum())
    left = np.repeat(np.arange(start, end, dtype=np.int64), counts)
    step = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    right = left + 1 + step
    p = columns[left]
    candidate = offset[p] + (columns[right] - p - 1)
    return left, candidate


def _next_level(
    indptr: np.ndarray,
    columns: np.ndarray,
    level: _Level,
    n_frequent: int,
    min_count: int,
    build_matrix: bool,
) -> tuple[_Level, np.ndarray, np.ndarray] | None:
    """Frequent (k+1)-itemsets from the baskets x k-itemsets matrix, and its successor matrix."""
    m = len(level.count)
    group = level.prefix
    partners = _runs(indptr, columns, group)
    total = int(partners.sum())
    if total == 0:
        return None
    if total > MAX_WORK:
        # Huge baskets (a whole month of one shopper, a wholesale order) make the number of
        # candidate itemsets explode; stop at the shorter itemsets rather than exhaust memory.
        log.warning(
            "itemset mining stopped early",
            extra={"length": level.items.shape[1] + 1, "candidate_occurrences": total,
                   "max_work": MAX_WORK},
        )
        return None
    group_end = np.searchsorted(group, group, side="right")
    offset = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(group_end - np.arange(m) - 1, out=offset[1:])
    n_candidates = int(offset[-1])
    # Count into a dense array over Apriori's candidates when that is small next to the work
    # itself; otherwise sort the candidate ids (memory stays proportional to what occurs).
    dense = n_candidates <= max(DENSE_CANDIDATES, DENSE_RATIO * total)
    chunk_list = list(_chunks(partners))
    cached = None
    if dense:
        counts_all = np.zeros(n_candidates, dtype=np.int64)
        for start, end in chunk_list:
            left, candidate = _pairs(columns, partners, offset, start, end)
            counts_all += np.bincount(candidate, minlength=n_candidates)
            if len(chunk_list) == 1:
                cached = (left, candidate)
        new_candidates = np.flatnonzero(counts_all >= min_count)
        new_counts = counts_all[new_candidates]
    else:
        seen_ids: list[np.ndarray] = []
        seen_counts: list[np.ndarray] = []
        for start, end in chunk_list:
            left, candidate = _pairs(columns, partners, offset, start, end)
            unique, counts = np.unique(candidate, return_counts=True)
            seen_ids.append(unique)
            seen_counts.append(counts)
            if len(chunk_list) == 1:
                cached = (left, candidate)
        if len(seen_ids) == 1:
            ids, counts_all = seen_ids[0], seen_counts[0]
        else:
            ids, inverse = np.unique(np.concatenate(seen_ids), return_inverse=True)
            counts_all = np.bincount(inverse, weights=np.concatenate(seen_counts)).astype(np.int64)
        frequent = counts_all >= min_count
        new_candidates, new_counts = ids[frequent], counts_all[frequent]
    if len(new_candidates) == 0:
        return None
    p = np.searchsorted(offset, new_candidates, side="right") - 1
    q = new_candidates - offset[p] + p + 1
    items = np.concatenate([level.items[p], level.items[q, -1:]], axis=1)
    new_level = _Level(
        items=items,
        count=new_counts.astype(np.int64),
        prefix=p,
        key=p * n_frequent + items[:, -1],
    )
    if not build_matrix:
        return new_level, np.zeros(0, np.int64), np.zeros(0, np.int32)

    # Which baskets hold each new itemset: the enumerated pairs that are frequent. Enumeration
    # runs row by row, in (p, q) order within a row, so the new matrix has sorted columns.
    if dense:
        table = np.full(n_candidates, -1, dtype=np.int64)
        table[new_candidates] = np.arange(len(new_candidates))
    row_of = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    rows_parts: list[np.ndarray] = []
    cols_parts: list[np.ndarray] = []
    for start, end in chunk_list:
        left, candidate = cached or _pairs(columns, partners, offset, start, end)
        if dense:
            position = table[candidate]
            hit = position >= 0
        else:
            position = np.searchsorted(new_candidates, candidate)
            position[position == len(new_candidates)] = 0
            hit = new_candidates[position] == candidate
        rows_parts.append(row_of[left[hit]])
        cols_parts.append(position[hit].astype(np.int32))
    rows = np.concatenate(rows_parts)
    new_indptr = np.zeros(len(indptr), dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(indptr) - 1), out=new_indptr[1:])
    return new_level, new_indptr, np.concatenate(cols_parts)


def _lookup(levels: list[_Level], itemsets: np.ndarray, n_frequent: int) -> np.ndarray:
    """Index of each (frequent) itemset row of `itemsets` within its level."""
    index = itemsets[:, 0].astype(np.int64)
    for depth in range(1, itemsets.shape[1]):
        keys = index * n_frequent + itemsets[:, depth]
        index = np.searchsorted(levels[depth].key, keys).astype(np.int64)
    return index


def frequent_itemsets(
    baskets: sp.spmatrix | sp.sparray, min_support: float, max_len: int
) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """Frequent itemsets of 1..max_len items: per length, (items (m, k) int32, counts int64).

    Item indexes are the columns of `baskets`. Also returns the number of baskets.
    """
    levels, frequent_items, n_orders = _mine_levels(baskets, min_support, max_len)
    return [(frequent_items[lv.items], lv.count) for lv in levels], n_orders


def _mine_levels(
    baskets: sp.spmatrix | sp.sparray, min_support: float, max_len: int
) -> tuple[list[_Level], np.ndarray, int]:
    _check_fraction("min_support", min_support, allow_zero=False)
    if isinstance(max_len, bool) or not isinstance(max_len, int | np.integer) or max_len < 1:
        raise InvalidInput("max_len", f"must be a whole number >= 1, got {max_len!r}")
    indptr, indices, n_orders, n_items = _presence(baskets)
    if n_orders == 0:
        return [], np.zeros(0, np.int32), 0
    min_count = min_count_for(min_support, n_orders)
    item_count = np.bincount(indices, minlength=n_items).astype(np.int64)
    frequent_items = np.flatnonzero(item_count >= min_count).astype(np.int32)
    n_frequent = len(frequent_items)
    if n_frequent == 0:
        return [], frequent_items, n_orders
    local = np.full(n_items, -1, dtype=np.int32)
    local[frequent_items] = np.arange(n_frequent, dtype=np.int32)
    mapped = local[indices]
    keep = mapped >= 0
    indptr = np.concatenate([[0], np.cumsum(keep)])[indptr].astype(np.int64)
    columns = mapped[keep]
    first = _Level(
        items=np.arange(n_frequent, dtype=np.int32)[:, None],
        count=item_count[frequent_items],
        prefix=np.zeros(n_frequent, dtype=np.int64),
        key=np.arange(n_frequent, dtype=np.int64),
    )
    levels = [first]
    for length in range(2, max_len + 1):
        step = _next_level(
            indptr, columns, levels[-1], n_frequent, min_count, build_matrix=length < max_len
        )
        if step is None:
            break
        level, indptr, columns = step
        levels.append(level)
        log.debug("frequent itemsets", extra={"length": length, "itemsets": len(level.count)})
    return levels, frequent_items, n_orders


def mine_rules(
    baskets: sp.spmatrix | sp.sparray,
    min_support: float,
    min_confidence: float,
    max_len: int = 3,
    max_rules: int | None = None,
) -> RuleSet:
    """Association rules `A -> c` (one item on the right) from an orders x items basket matrix.

    Itemsets hold at most `max_len` items (antecedents at most max_len - 1). Any non-zero cell
    counts as "bought". Rules come sorted by confidence, then lift, descending; `max_rules`
    keeps the first that many. Raises InvalidInput for thresholds outside [0, 1] or max_len < 2.
    """
    check_rule_settings(min_support, min_confidence, max_len, max_rules)
    levels, frequent_items, n_orders = _mine_levels(baskets, min_support, max_len)
    if len(levels) < 2:
        return RuleSet.empty(n_orders)
    n_frequent = len(frequent_items)
    item_count = levels[0].count
    n = np.int64(n_orders)

    antecedent_parts: list[np.ndarray] = []  # flattened fixed-width antecedents, per part
    widths: list[int] = []
    consequents: list[np.ndarray] = []
    both: list[np.ndarray] = []
    left: list[np.ndarray] = []
    for size, level in enumerate(levels[1:], start=2):
        for position in range(size):
            if position == size - 1:
                antecedent_count = levels[size - 2].count[level.prefix]
                antecedent = level.items[:, :-1]
            else:
                antecedent = np.delete(level.items, position, axis=1)
                antecedent_count = levels[size - 2].count[
                    _lookup(levels, antecedent, n_frequent)
                ]
            confidence = level.count / antecedent_count
            keep = confidence >= min_confidence
            if not keep.any():
                continue
            antecedent_parts.append(antecedent[keep].ravel())
            widths.append(size - 1)
            consequents.append(level.items[keep, position])
            both.append(level.count[keep])
            left.append(antecedent_count[keep])
    if not consequents:
        return RuleSet.empty(n_orders)

    lengths = np.concatenate(
        [np.full(len(c), w, dtype=np.int64) for c, w in zip(consequents, widths, strict=True)]
    )
    flat = np.concatenate(antecedent_parts)
    consequent = np.concatenate(consequents)
    count_rule = np.concatenate(both)
    count_left = np.concatenate(left)
    count_right = item_count[consequent]

    confidence = count_rule / count_left
    lift = (count_rule * n) / (count_left * count_right)
    order = np.lexsort((-lift, -confidence))  # last key sorts first
    if max_rules is not None:
        order = order[:max_rules]

    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    new_lengths = lengths[order]
    indptr = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=indptr[1:])
    gather = np.repeat(starts[order] - indptr[:-1], new_lengths) + np.arange(indptr[-1])
    count_rule, count_left, count_right = count_rule[order], count_left[order], count_right[order]
    with np.errstate(divide="ignore", invalid="ignore"):  # confidence 1: set to inf below
        conviction = ((n - count_right) * count_left) / (n * (count_left - count_rule))
    conviction[count_left == count_rule] = np.inf
    return RuleSet(
        antecedent_indptr=indptr,
        antecedent_items=frequent_items[flat[gather]].astype(np.int32),
        consequent=frequent_items[consequent[order]].astype(np.int32),
        support=count_rule / n,
        confidence=confidence[order],
        lift=lift[order],
        leverage=(count_rule * n - count_left * count_right) / (n * n),
        conviction=conviction,
        n_orders=n_orders,
    )


def check_rule_settings(
    min_support: float,
    min_confidence: float,
    max_len: int,
    max_rules: int | None,
    names: dict[str, str] | None = None,
) -> None:
    """InvalidInput for thresholds outside their range or max_len < 2, naming the setting as
    `names` says (e.g. the CLI flag) or by its parameter name. Callers check before the work
    that needs them (reading a log) as well as `mine_rules` itself."""
    name = (names or {}).get
    _check_fraction(name("min_support", "min_support"), min_support, allow_zero=False)
    _check_fraction(name("min_confidence", "min_confidence"), min_confidence, allow_zero=True)
    if isinstance(max_len, bool) or not isinstance(max_len, int | np.integer) or max_len < 2:
        raise InvalidInput(name("max_len", "max_len"),
                           f"rules need itemsets of at least 2 items, got {max_len!r}")
    if max_rules is not None and max_rules < 0:
        raise InvalidInput(name("max_rules", "max_rules"), f"must not be negative, got {max_rules}")


def _check_fraction(name: str, value: float, allow_zero: bool) -> None:
    if not isinstance(value, int | float | np.floating) or not math.isfinite(value):
        raise InvalidInput(name, f"expected a number in (0, 1], got {value!r}")
    low_ok = value >= 0 if allow_zero else value > 0
    if not low_ok or value > 1:
        bound = "[0, 1]" if allow_zero else "(0, 1]"
        raise InvalidInput(name, f"must be in {bound}, got {value}")


def save_rules(
    writer: Any, rules: RuleSet, left_out: int, max_basket_items: int, notes: list[str]
) -> dict[str, Any]:
    """Write `rules` into the bundle; the manifest's summary (and a note when baskets were
    left out for having more than `max_basket_items` items). Both engines end here."""
    rules.save(writer.dir("rules"))
    if left_out:
        notes.append(
            f"{left_out} baskets with more than {max_basket_items} items left out of association rules"
        )
    return {
        "rules": len(rules),
        "orders": int(rules.n_orders),
        "baskets_left_out_too_large": int(left_out),
        "max_basket_items": max_basket_items,
    }
