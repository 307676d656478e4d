"""Cart-level cross-sell: "frequently bought together" for one item or a whole cart.

One pure function, `cross_sell`, serves batch export and the gRPC server alike. A `RuleIndex`
is built once per rule set (`RuleIndex.build`): for every item, the rules whose antecedent
contains it. A rule *fires* for a cart when its whole antecedent is in the cart; the index finds
those by counting, for each rule reached from a cart item, how many of its antecedent items
the cart holds (a rule fires when that count equals its antecedent length).

Scoring. A candidate item c is scored by the best rule that fires for it:

    score(c) = max over firing rules A -> c of  confidence * log2(1 + lift)

- Confidence estimates P(c | cart) and is what a shopper would experience; alone it would
  recommend the best sellers (whole milk) to every cart, because their rules have high
  confidence but lift near 1. The factor log2(1 + lift) is 1 at independence (lift = 1), 2 at
  lift 3, 4 at lift 15: it rewards rules that the cart actually makes more likely, but only
  logarithmically, so a rare item whose huge lift rests on a handful of orders does not beat
  a solid high-confidence rule.
- The maximum, not a noisy-or (1 - prod(1 - confidence)), because the rules firing for one
  item overlap heavily ({a} -> c and {a, b} -> c count the same orders): treating them as
  independent evidence double-counts, and with confidences >= 0.5 a noisy-or saturates at 1
  after a few rules and stops ranking. The maximum also gives one rule to explain the
  recommendation: its antecedent, confidence and lift make the reason string.

Ties go to the higher confidence, then the lower item index. Cart items and `exclude` are never
returned. When rules give fewer than k items, the answer is topped up from item-item
similarity (rows of `similar_indices` / `similar_scores` for the newest `CROSS_SELL_SOURCES`
cart items, as the server reads them; `ranked_neighbours`): a neighbour scores
`floor * s / (1 + s)` for its best similarity s >= 0, where `floor` is the lowest rule score in
the index, so every similarity-based score is below every rule-based score, and the merged
neighbour lists come best first.

Must not import `training` or `serving`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from recsvc.errors import InvalidInput
from recsvc.ranking import ScoredItem
from recsvc.rules import RuleSet


def rule_score(confidence: np.ndarray, lift: np.ndarray) -> np.ndarray:
    """The rule-based cross-sell score: confidence * log2(1 + lift) (see module docstring)."""
    return np.asarray(confidence, dtype=np.float64) * np.log2(1.0 + np.asarray(lift, np.float64))


@dataclass(frozen=True, eq=False)
class RuleIndex:
    """Rules arranged for cart lookups; build with `RuleIndex.build(rules)`."""

    item_indptr: np.ndarray  # int64, n_items + 1: rules of item i are item_rules[ptr[i]:ptr[i+1]]
    item_rules: np.ndarray  # int64 rule ids whose antecedent contains the item
    antecedent_indptr: np.ndarray  # int64, from the RuleSet
    antecedent_items: np.ndarray  # int32, from the RuleSet
    antecedent_length: np.ndarray  # int64 per rule
    consequent: np.ndarray  # int32 per rule
    confidence: np.ndarray  # float64 per rule
    lift: np.ndarray  # float64 per rule
    score: np.ndarray  # float64 per rule: rule_score(confidence, lift)
    similarity_floor: float  # the lowest rule score (1.0 without rules)

    @classmethod
    def build(cls, rules: RuleSet, n_items: int | None = None) -> RuleIndex:
        """Index `rules` by antecedent item. `n_items` defaults to the largest index + 1."""
        antecedent_indptr = np.asarray(rules.antecedent_indptr, dtype=np.int64)
        antecedent_items = np.asarray(rules.antecedent_items, dtype=np.int32)
        consequent = np.asarray(rules.consequent, dtype=np.int32)
        lengths = np.diff(antecedent_indptr)
        largest = max(
            int(antecedent_items.max(initial=-1)), int(consequent.max(initial=-1))
        )
        n_items = largest + 1 if n_items is None else max(int(n_items), largest + 1)
        rule_of_entry = np.repeat(np.arange(len(consequent), dtype=np.int64), lengths)
        by_item = np.argsort(antecedent_items, kind="stable")
        item_indptr = np.zeros(n_items + 1, dtype=np.int64)
        np.cumsum(np.bincount(antecedent_items, minlength=n_items), out=item_indptr[1:])
        confidence = np.asarray(rules.confidence, dtype=np.float64)
        lift = np.asarray(rules.lift, dtype=np.float64)
        score = rule_score(confidence, lift)
        floor = float(score.min()) if len(score) and score.min() > 0 else 1.0
        return cls(
            item_indptr=item_indptr,
            item_rules=rule_of_entry[by_item],
            antecedent_indptr=antecedent_indptr,
            antecedent_items=antecedent_items,
            antecedent_length=lengths,
            consequent=consequent,
            confidence=confidence,
            lift=lift,
            score=score,
            similarity_floor=floor,
        )

    @property
    def n_items(self) -> int:
        return int(len(self.item_indptr) - 1)

    def __len__(self) -> int:
        return int(len(self.consequent))

    def firing(self, cart: np.ndarray) -> np.ndarray:
        """Ids of the rules whose whole antecedent is in `cart` (item indexes; -1 ignored)."""
        items = _clean_cart(cart, self.n_items)
        if len(items) == 0:
            return np.zeros(0, dtype=np.int64)
        starts = self.item_indptr[items]
        counts = self.item_indptr[items + 1] - starts
        total = int(counts.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        step = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
        reached = self.item_rules[np.repeat(starts, counts) + step]
        rule_ids, hits = np.unique(reached, return_counts=True)
        fired: np.ndarray = rule_ids[hits == self.antecedent_length[rule_ids]]
        return fired


def _clean_cart(cart: Iterable[int] | np.ndarray, limit: int) -> np.ndarray:
    """Distinct cart item indexes in [0, limit); unknown items (-1) are ignored."""
    items = np.unique(np.asarray(list(cart) if not isinstance(cart, np.ndarray) else cart))
    items = items.astype(np.int64, copy=False)
    return items[(items >= 0) & (items < limit)]


CROSS_SELL_SOURCES = 3  # the newest cart items whose similar items top an answer up


def similar_sources(cart: Iterable[int]) -> list[int]:
    """The newest `CROSS_SELL_SOURCES` distinct known items of a cart (in the order the shopper
    added them), newest first: whose similar items top a cross-sell answer up."""
    known = list(dict.fromkeys(int(i) for i in cart if int(i) >= 0))
    return known[-CROSS_SELL_SOURCES:][::-1]


def ranked_neighbours(
    sources: Sequence[int],
    indices: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    banned: np.ndarray | None = None,
) -> list[tuple[int, float, int]]:
    """(neighbour, similarity, source) from the similar-items rows of `sources`, best first
    (similarity descending, then neighbour and source ascending), each neighbour once at its
    best, without padding (-1), non-finite similarities or `banned` items."""
    # A few short rows (the server answers with this per request): plain Python sorts them
    # several times faster than numpy's concatenate / lexsort / unique would.
    skip = set(np.asarray(banned).tolist()) if banned is not None and len(banned) else set()
    ranked = sorted(
        (-value, item, int(source))
        for source, row, values in zip(sources, indices, scores, strict=True)
        for item, value in zip(np.asarray(row).tolist(), np.asarray(values, dtype=np.float64).tolist(),
                               strict=True)
        if item >= 0 and math.isfinite(value) and item not in skip
    )
    out: list[tuple[int, float, int]] = []
    taken: set[int] = set()
    for negative, item, source in ranked:
        if item not in taken:
            taken.add(item)
            out.append((item, -negative, source))
    return out


def neighbour_score(floor: float, similarity: float) -> float:
    """A similar item's cross-sell score: below `floor`, the lowest rule score."""
    positive = max(similarity, 0.0)
    return floor * positive / (1.0 + positive)


def _name(item: int, item_ids: Sequence[str] | None) -> str:
    return str(item_ids[item]) if item_ids is not None else f"#{item}"


def cross_sell(
    index: RuleIndex,
    cart: Iterable[int] | np.ndarray,
    k: int,
    *,
    exclude: Iterable[int] | None = None,
    item_ids: Sequence[str] | None = None,
    similar_indices: np.ndarray | None = None,
    similar_scores: np.ndarray | None = None,
) -> list[ScoredItem]:
    """Up to k items to offer with `cart`, best first, each with a score and a reason.

    cart, exclude: item indexes (negative ones, i.e. unknown items, are ignored).
    item_ids: external ids by item index, to name items in reasons (default `#<index>`).
    similar_indices, similar_scores: n_items x S neighbour lists (-1 padded) used to top up
    when rules give fewer than k items. Raises InvalidInput for a negative k or mismatched
    similarity arrays.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise InvalidInput("k", f"must be a whole number >= 0, got {k!r}")
    if (similar_indices is None) != (similar_scores is None):
        raise InvalidInput("similar", "similar_indices and similar_scores go together")
    if similar_indices is not None and similar_scores is not None:
        if similar_indices.shape != similar_scores.shape or similar_indices.ndim != 2:
            raise InvalidInput(
                "similar",
                f"indices {similar_indices.shape} and scores {similar_scores.shape} must be "
                "matching n_items x S arrays",
            )
    ordered = list(cart) if not isinstance(cart, np.ndarray) else cart.tolist()
    cart_items = _clean_cart(ordered, np.iinfo(np.int64).max)
    excluded = _clean_cart(() if exclude is None else exclude, np.iinfo(np.int64).max)
    banned = np.union1d(cart_items, excluded)
    if k == 0:
        return []

    answer: list[ScoredItem] = []
    fired = index.firing(cart_items)
    if len(fired):
        candidate = index.consequent[fired].astype(np.int64)
        allowed = ~np.isin(candidate, banned)
        fired, candidate = fired[allowed], candidate[allowed]
        # Best rule first: score, then confidence descending, then item and rule id ascending.
        order = np.lexsort((fired, candidate, -index.confidence[fired], -index.score[fired]))
        _, first = np.unique(candidate[order], return_index=True)
        for rule in fired[order[np.sort(first)[:k]]]:
            start, end = index.antecedent_indptr[rule], index.antecedent_indptr[rule + 1]
            names = sorted(_name(int(i), item_ids) for i in index.antecedent_items[start:end])
            answer.append(
                ScoredItem(
                    item=int(index.consequent[rule]),
                    score=float(index.score[rule]),
                    reason=(
                        f"bought together with {' + '.join(names)}: "
                        f"confidence {index.confidence[rule]:.2f}, lift {index.lift[rule]:.1f}"
                    ),
                )
            )

    if len(answer) < k and similar_indices is not None and similar_scores is not None:
        answer += _similar_top_up(
            # items the similarity rows cover, as the server only knows its catalogue's
            similar_sources(i for i in ordered if int(i) < similar_indices.shape[0]),
            np.union1d(banned, [s.item for s in answer]),
            k - len(answer),
            index.similarity_floor,
            similar_indices,
            similar_scores,
            item_ids,
        )
    return answer


def _similar_top_up(
    sources: list[int],
    banned: np.ndarray,
    wanted: int,
    floor: float,
    similar_indices: np.ndarray,
    similar_scores: np.ndarray,
    item_ids: Sequence[str] | None,
) -> list[ScoredItem]:
    """The sources' nearest neighbours not yet in the answer, scored below `floor`."""
    ranked = ranked_neighbours(
        sources, [similar_indices[s] for s in sources], [similar_scores[s] for s in sources], banned
    )
    return [
        ScoredItem(item, neighbour_score(floor, value), f"similar to {_name(origin, item_ids)}")
        for item, value, origin in ranked[:wanted]
    ]
