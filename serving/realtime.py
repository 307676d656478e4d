"""Real-time re-scoring: what a shopper did since the model was trained changes the answer.

Recommend reads the shopper's recent events with their features (same round trip). Events
newer than the model (`LoadedModel.trained_until`; for a shopper the model does not know,
every event) trigger a re-score of a candidate pool:

- pool: the trained candidates, the neighbours (similar items) of the newest event items, and
  the head of the popularity list that would top the answer up;
- with a factor model (`[serve] realtime_ranking`, benchmarks/realtime.py compares them):
  "anchored" (the default) keeps the scores of the answer the shopper would have had without
  the events (the trained candidates, whatever model made them; a visitor's popularity list)
  and adds the change the events made to the factor scores; "factors" ranks by the folded-in
  factors alone, which lost to the popularity list for visitors of a grocery store (nDCG@10
  0.164 vs 0.261 on Groceries basket completion; anchored 0.259, a tie);
- the folded-in vector: the new events, weighted by type as in training (the bundle's
  `events.weights`), move the user's trained vector as they would move the ALS normal
  equations (`user_vector`; for BPR factors they add their items' scaled vectors, as the
  publisher records in the manifest's `served_factors`); a shopper without a trained vector
  (a visitor) is folded in from their stored history plus the events (as
  `FactorScorer.fold_in`); events of a type weighted 0 change nothing; pool items are scored
  u . v_i;
- without one: item-item re-scoring, each pool item scoring the weighted sum of its
  similarities to the new event items, plus its trained candidate score scaled to at most 1.

Scoring a pool of a few hundred items instead of the whole catalogue keeps a real-time answer
under a millisecond at 100k items (a full `V @ u` costs about 2 ms there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from recsvc.scorers import FactorScorer
from recsvc.store import RecentEvent, UserFeatures
from serving.model import LoadedModel

POOL_POPULAR = 100  # head of the top-up list added to the pool
PURCHASE = "purchase"


class SessionEvent(NamedTuple):
    """A recent event with its item as an index of the model answering."""

    item: int
    event_type: str
    ts: float


@dataclass(frozen=True)
class Session:
    """A user's real-time state as it matters to one answer."""

    new_events: tuple[SessionEvent, ...]  # newer than the model, known items, newest first
    purchased: frozenset[int]  # items bought in any recent event (never recommended)
    interacted: frozenset[int]  # every item of the recent events

    @property
    def changed(self) -> bool:
        return bool(self.new_events)


NO_SESSION = Session((), frozenset(), frozenset())


def session_of(model: LoadedModel, recent: Sequence[RecentEvent], known: bool = True) -> Session:
    """Split recent events into what is new to `model` and what must be excluded.

    Events name items by id; `model`'s catalogue maps them to its indexes (events of items
    it does not know are left out), so a model swap never shifts what an event refers to.
    Repeats of one event (same item, type and timestamp: a RecordEvent retried after a timeout
    whose write had landed) count once. Events up to the model's training cut-off are taken
    for trained on when the model knows the user (`known`); for one it does not know (training
    read orders only, or dropped them) every event is new.
    """
    if not recent:
        return NO_SESSION
    index_of = model.catalog.index_of
    distinct = dict.fromkeys((e.item_id, e.event_type, e.ts) for e in recent)
    usable = [
        SessionEvent(item, event_type, ts)
        for item_id, event_type, ts in distinct
        if (item := index_of(item_id)) >= 0
    ]
    return Session(
        new_events=tuple(e for e in usable if e.ts > model.trained_until or not known),
        purchased=frozenset(e.item for e in usable if e.event_type == PURCHASE),
        interacted=frozenset(e.item for e in usable),
    )


def event_strengths(model: LoadedModel, events: Iterable[SessionEvent]) -> dict[int, float]:
    """Item -> summed event weight (as training weighs event types)."""
    strengths: dict[int, float] = {}
    for event in events:
        weight = model.event_weights.get(event.event_type, 1.0)
        strengths[event.item] = strengths.get(event.item, 0.0) + weight
    return strengths


def user_vector(scorer: FactorScorer, features: UserFeatures, new: dict[int, float]) -> np.ndarray:
    """The user's factor vector with the new events (item -> summed weight) folded in.

    A user with a trained vector starts from it: the store keeps which items they saw but not
    how strongly (training sums type weights, decay, quantities per item), and a history
    refolded at strength 1 per item is another user (top-10 agreement with the trained vector
    ~0.8 on the synthetic store). For ALS the trained vector u0 solves A0 u0 = b0; the events
    add dA and db to the normal equations, so the new solution is exactly
    u0 + (A0 + dA)^-1 (db - dA u0), where only the step's matrix A0 is approximated (strength
    1 per seen item). For BPR factors the fold-in is a scaled sum of item vectors, so the
    events add their items' share. Without a trained vector (a new visitor) it is
    `FactorScorer.fold_in` from zero over the history at strength 1 plus the events.

    Only the rows of the items involved are converted to float64: converting the whole item
    matrix costs ~13 ms per call at 100k items x 64 factors. Items of weight 0 (event types
    weighted 0) are left out, as training drops zero strengths.
    """
    new = {item: weight for item, weight in new.items() if weight > 0}
    seen = np.asarray(features.seen, dtype=np.int64)
    trained = features.factors
    if trained is None or len(trained) != scorer.item_factors.shape[1] or not np.all(
        np.isfinite(trained)
    ):  # no trained vector: the scorer's fold-in from zero, the history counting as events
        history = dict.fromkeys(seen.tolist(), 1.0)
        for item, weight in new.items():
            history[item] = history.get(item, 0.0) + weight
        return scorer.fold_in(np.fromiter(history, dtype=np.int64, count=len(history)),
                              np.fromiter(history.values(), dtype=np.float64, count=len(history)))
    anchor = np.asarray(trained, dtype=np.float64)
    items = np.fromiter(new, dtype=np.int64, count=len(new))
    weights = np.fromiter(new.values(), dtype=np.float64, count=len(new))
    unseen = ~held(seen, items)
    if scorer.bias_column:
        added = items[unseen]  # every weight is above 0 here
        vector = anchor.copy()
        if len(added):
            rows = np.asarray(scorer.item_factors[added, :-1], dtype=np.float64)
            vector[:-1] += scorer.fold_in_scale * rows.sum(axis=0)
        return vector.astype(np.float32)
    added_confidence = scorer.alpha * weights
    # an item new to the user also loses the confidence 1 of "not interacted" (p 0 -> 1)
    hessian_weight = added_confidence - unseen
    y_new = np.asarray(scorer.item_factors[items], dtype=np.float64)
    delta_a = (y_new.T * hessian_weight) @ y_new
    delta_b = y_new.T @ added_confidence
    y_seen = np.asarray(scorer.item_factors[seen], dtype=np.float64)
    a = scorer.gram() + (y_seen.T * (scorer.alpha - 1.0)) @ y_seen + delta_a
    a[np.diag_indices_from(a)] += scorer.regularization
    step = np.linalg.solve(a, delta_b - delta_a @ anchor)
    return (anchor + step).astype(np.float32)


def held(seen: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Whether each of `items` is in `seen` (ascending, as the store keeps it), as bools
    (np.isin costs ~0.2 ms on a few items, this a few microseconds)."""
    if len(seen) == 0:
        return np.zeros(len(items), dtype=bool)
    if np.any(seen[1:] < seen[:-1]):
        seen = np.sort(seen)
    position = np.minimum(np.searchsorted(seen, items), len(seen) - 1)
    return np.asarray(seen[position] == items)


def rescored(
    model: LoadedModel,
    features: UserFeatures,
    session: Session,
    neighbours: Callable[[int], tuple[np.ndarray, np.ndarray]],
    topup: tuple[np.ndarray, np.ndarray],
    max_sources: int = 3,
    ranking: str = "anchored",
) -> tuple[np.ndarray, np.ndarray]:
    """The user's candidates re-ranked with the new events folded in: (item indexes, scores),
    best first. Arrays, not items: the caller turns into items only the few an answer takes
    (building one for each of a few hundred pool items cost ~0.4 ms per call).

    neighbours: item index -> (similar item indexes, scores), e.g. a cached store read.
    topup: the popularity list that would top this user's answer up.
    ranking: "factors" scores the pool u' . v_i with the folded-in vector u' alone;
    "anchored" keeps the scores of the answer the shopper would have had without the events
    (the trained candidates, the default recommender's; without any, the popularity head),
    scaled to at most 1 (other pool items at the lowest), and adds the change the events made
    to the factor score, (u' - u) . v_i, over the largest |u . v_i| of the pool, u being the
    trained vector when usable; else (a visitor) u' . v_i without BPR's item bias, which
    popularity already carries, over its own largest. A blend's other parts still count.
    Seen and recently interacted items are left in; the caller excludes them. Events of types
    weighted 0 change nothing (training drops them): with only those, the answer is the trained
    candidates as they are (none for a visitor, whom the caller's top-ups answer).
    """
    new = {item: weight for item, weight in event_strengths(model, session.new_events).items()
           if weight > 0}
    if not new:
        return (np.asarray(features.candidates, dtype=np.int64),
                np.asarray(features.scores, dtype=np.float64))
    sources = [item for item in dict.fromkeys(e.item for e in session.new_events) if item in new]
    sources = sources[:max_sources]
    similar = {item: neighbours(item) for item in sources}
    pool_parts = [np.asarray(features.candidates, dtype=np.int64), topup[0][:POOL_POPULAR]]
    pool_parts += [np.asarray(items, dtype=np.int64) for items, _ in similar.values()]
    pool = np.unique(np.concatenate([p.astype(np.int64) for p in pool_parts]))
    pool = pool[(pool >= 0) & (pool < model.n_items)]
    if len(pool) == 0:
        return pool, np.zeros(0, dtype=np.float64)
    if model.fold_in is not None:
        vector = user_vector(model.fold_in, features, new)
        factors = model.fold_in.item_factors[pool]
        scores = factors @ vector
        if ranking == "anchored":
            trained = features.factors
            usable = trained is not None and len(trained) == len(vector) and bool(
                np.all(np.isfinite(trained)))  # as user_vector: else folded in from zero
            if usable:  # the change is measured against the user's trained score scale
                before = np.asarray(factors @ np.asarray(trained), dtype=np.float64)
                scale = _largest(before)
            else:  # folded in from zero; for BPR the item bias is no taste of this shopper's
                before = (np.asarray(factors[:, -1], dtype=np.float64) * float(vector[-1])
                          if model.fold_in.bias_column else np.zeros(len(pool)))
                scale = 0.0  # the change's own largest
            # the answer without the events: the trained candidates, else (a visitor) the
            # popularity list that tops the answer up
            answer = ((features.candidates, features.scores) if len(features.candidates)
                      else (topup[0][:POOL_POPULAR], topup[1][:POOL_POPULAR]))
            scores = anchored(pool, answer, np.asarray(scores, dtype=np.float64) - before, scale)
    else:
        scores = np.zeros(len(pool), dtype=np.float64)
        position = {int(item): p for p, item in enumerate(pool.tolist())}
        for source, (items, values) in similar.items():
            weight = new[source]
            for item, value in zip(np.asarray(items).tolist(), np.asarray(values).tolist(), strict=False):
                p = position.get(int(item))
                if p is not None:
                    scores[p] += weight * float(value)
        if len(features.candidates):
            trained = np.asarray(features.scores, dtype=np.float64)
            scale = float(np.abs(trained).max()) or 1.0
            for item, value in zip(np.asarray(features.candidates).tolist(), (trained / scale).tolist(), strict=False):
                p = position.get(int(item))
                if p is not None:
                    scores[p] += value
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.isfinite(scores)  # a NaN factor row: never an item of the answer
    pool, scores = pool[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    return pool[order], scores[order]


def anchored(pool: np.ndarray, answer: tuple[np.ndarray, np.ndarray], change: np.ndarray,
             scale: float) -> np.ndarray:
    """Pool scores: the scores of the answer without the events (item indexes, scores) scaled
    to at most 1 (the lowest of them for the other pool items), plus the factor scores' change
    over `scale` (0: the change's own largest). Only finite numbers set the scales: an item
    whose score is not finite (the caller drops it) moves no other one."""
    items = np.asarray(answer[0], dtype=np.int64)
    values = np.asarray(answer[1], dtype=np.float64)
    top = _largest(values) or 1.0
    finite = values[np.isfinite(values)]
    base = np.full(len(pool), float(finite.min()) / top if len(finite) else 0.0)
    position = np.searchsorted(pool, items)  # pool is sorted (np.unique)
    inside = position < len(pool)
    inside[inside] = pool[position[inside]] == items[inside]
    base[position[inside]] = values[inside] / top
    change = np.asarray(change, dtype=np.float64)
    return base + change / (scale or _largest(change) or 1.0)


def _largest(values: np.ndarray) -> float:
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if len(finite) else 0.0
