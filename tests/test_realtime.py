"""Real-time re-scoring (serving/realtime.py) on a trained and published synthetic store.

The reference for "what the model would say with the new events" is implicit's ALS user step
(`FactorScorer.fold_in`) over the user's full training strengths (the bundle's weighted `seen`
matrix: event-type weights summed per item) plus the new events, weighted as training does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from recsvc.bundle import Bundle
from recsvc.config import load_train_config
from recsvc.ranking import ScoredItem, scored
from recsvc.scorers import FactorScorer
from recsvc.store import FeatureStore, RecentEvent, UserFeatures, open_store
from recsvc.synth import SynthConfig, generate, write
from serving.model import LoadedModel, load_model
from serving.realtime import rescored, session_of, user_vector
from training.pipeline import train

FAST = {"bpr.enabled": False, "itemknn.enabled": False, "rules.enabled": False}


@dataclass
class Served:
    bundle: Bundle
    store: FeatureStore
    model: LoadedModel
    truth: dict[str, Any]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    directory = tmp_path_factory.mktemp("realtime")
    write(generate(SynthConfig(seed=3, users=1_500, items=250, days=60, clusters=5)), directory)
    result = train(directory / "events.csv", directory / "bundles", load_train_config(None, FAST),
                   items=directory / "items.csv")
    bundle = Bundle(result.path)
    store = open_store(f"memory://realtime-{id(directory)}")
    version = store.publish(bundle, progress=False).version
    truth = json.loads((directory / "ground_truth.json").read_text())
    return Served(bundle, store, load_model(store, version), truth)


def rescore(*args: Any, ranking: str = "anchored") -> list[ScoredItem]:
    """`rescored`'s ranked pool as items, best first, as Recommend reads it."""
    return list(scored(*rescored(*args, ranking=ranking), "realtime"))


def no_neighbours(item: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32)


def reference_vector(served: Served, user: int, new: dict[int, float]) -> np.ndarray:
    """The ALS user step over the user's training strengths plus `new` (item -> weight)."""
    seen = served.bundle.seen
    start, end = seen.indptr[user], seen.indptr[user + 1]
    strengths = dict(zip(seen.indices[start:end].tolist(), seen.data[start:end].tolist(), strict=True))
    for item, weight in new.items():
        strengths[item] = strengths.get(item, 0.0) + weight
    scorer = served.model.fold_in
    assert scorer is not None
    return scorer.fold_in(np.fromiter(strengths, dtype=np.int32),
                          np.fromiter(strengths.values(), dtype=np.float32))


def test_a_new_event_moves_the_trained_vector_as_a_retrain_would(served: Served) -> None:
    """After one event, the re-scored ranking is the one the user's full history plus that
    event gives, not one of a history whose every item counts the same."""
    model = served.model
    scorer = model.fold_in
    assert scorer is not None
    rng = np.random.default_rng(0)
    after = model.trained_until + 60
    overlaps = []
    for user in range(0, len(served.bundle.users), 15):
        user_id = served.bundle.users.id_of(user)
        features = served.store.user_features(model.version, user_id)
        assert features is not None and features.factors is not None
        item = int(rng.integers(model.n_items))
        kind = str(rng.choice(["view", "cart", "purchase"]))
        recent = (RecentEvent(model.catalog.item_id(item), kind, after),)
        answer = rescore(model, features, session_of(model, recent), no_neighbours,
                         model.popular("global"), ranking="factors")
        pool = np.array([s.item for s in answer], dtype=np.int64)
        expected = scorer.item_factors[pool] @ reference_vector(
            served, user, {item: model.event_weights[kind]})
        best = set(pool[np.argsort(-expected, kind="stable")[:10]].tolist())
        overlaps.append(len(best & {s.item for s in answer[:10]}) / 10)
    assert len(overlaps) >= 90
    assert float(np.mean(overlaps)) >= 0.9


def test_anchored_ranking_keeps_the_trained_answer_and_raises_what_the_event_raised(
    served: Served,
) -> None:
    """The trained candidates are the blend's (EASE and ALS here): after one view, the anchored
    answer keeps more of the trained top 10 than ranking by the folded-in ALS vector alone
    (which drops the blend's EASE part), and the candidate whose factor score the view raised
    most does not fall."""
    model = served.model
    scorer = model.fold_in
    assert scorer is not None and served.bundle.default_recommender == "blend"
    rng = np.random.default_rng(5)
    kept: dict[str, list[float]] = {"anchored": [], "factors": []}
    for user in range(0, len(served.bundle.users), 25):
        features = served.store.user_features(model.version, served.bundle.users.id_of(user))
        assert features is not None and features.factors is not None
        seen = set(features.seen.tolist())
        item = int(rng.choice([i for i in range(model.n_items) if i not in seen]))
        recent = (RecentEvent(model.catalog.item_id(item), "view", model.trained_until + 60),)
        trained = [int(i) for i in features.candidates if int(i) not in seen and i != item]
        answers = {}
        for ranking in kept:
            answer = [s.item for s in rescore(model, features, session_of(model, recent),
                                              no_neighbours, model.popular("global"),
                                              ranking=ranking) if s.item not in seen | {item}]
            answers[ranking] = answer
            kept[ranking].append(len(set(answer[:10]) & set(trained[:10])) / 10)
        vector = user_vector(scorer, features, {item: model.event_weights["view"]})
        change = scorer.item_factors[trained] @ (vector - features.factors)
        raised = trained[int(np.argmax(change))]
        assert answers["anchored"].index(raised) <= trained.index(raised)
    assert len(kept["anchored"]) >= 50
    assert np.mean(kept["anchored"]) > np.mean(kept["factors"]) + 0.05, {
        r: float(np.mean(v)) for r, v in kept.items()}


def test_a_non_finite_score_neither_answers_nor_rescales_the_others(served: Served) -> None:
    """One NaN (a corrupt factor row) used to make every anchored score NaN, so the answer came
    back in pool index order: now that item is left out and the rest rank as without it."""
    from dataclasses import replace

    from serving.realtime import anchored

    pool = np.array([1, 3, 5, 7])
    answer = (np.array([3, 5]), np.array([-2.0, -1.0]))
    clean = anchored(pool, answer, np.array([0.0, 0.0, 0.0, 1.0]), 0.0)
    dirty = anchored(pool, answer, np.array([0.0, np.nan, 0.0, 1.0]), 0.0)
    assert np.isnan(dirty[1]) and np.allclose(np.delete(dirty, 1), np.delete(clean, 1))
    assert np.all(np.isfinite(anchored(pool, (answer[0], np.array([np.nan, -1.0])),
                                       np.array([1.0, 2.0, 3.0, 5.0]), 0.0)[[0, 2, 3]]))

    model = served.model
    scorer = model.fold_in
    assert scorer is not None
    features = served.store.user_features(model.version, served.bundle.users.id_of(7))
    assert features is not None
    recent = (RecentEvent(model.catalog.item_id(int(features.candidates[-1])), "view",
                          model.trained_until + 60),)
    before = rescore(model, features, session_of(model, recent), no_neighbours,
                     model.popular("global"))
    broken = int(before[0].item)
    factors = scorer.item_factors.copy()
    factors[broken] = np.nan
    corrupt = replace(model, fold_in=replace(scorer, item_factors=factors))
    for ranking in ("anchored", "factors"):
        after = rescore(corrupt, features, session_of(corrupt, recent), no_neighbours,
                        corrupt.popular("global"), ranking=ranking)
        assert len(after) == len(before) - 1 and broken not in {s.item for s in after}
        assert all(np.isfinite(s.score) for s in after)
    after = rescore(corrupt, features, session_of(corrupt, recent), no_neighbours,
                    corrupt.popular("global"))
    assert [s.item for s in after[:10]] == [s.item for s in before[1:11]]


def test_a_bpr_visitors_change_leaves_out_the_item_bias(served: Served) -> None:
    """BPR's fold-in sets a visitor's bias element to 1, so u' . v_i includes each item's bias,
    which the popularity base already carries: neither as the change nor as its scale may the
    bias let a big-bias item that matches nothing the visitor did outrank one that matches
    their view."""
    from dataclasses import replace

    model = served.model
    items = np.zeros((model.n_items, 3), dtype=np.float32)
    items[:, 0] = 0.01
    items[1] = [0.0, 1.0, 0.0]  # the taste of ...
    items[2] = [0.0, 1.0, 0.0]  # ... the viewed item
    items[0, -1] = 50.0  # a large item bias, no taste in common
    bpr = replace(model, fold_in=FactorScorer(np.zeros((0, 3), np.float32), items,
                                              bias_column=True, fold_in_scale=1.0))
    visitor = UserFeatures("bpr-visitor", np.zeros(0, np.int32), np.zeros(0, np.float32),
                           np.zeros(0, np.int32), known=False)
    recent = (RecentEvent(model.catalog.item_id(2), "view", model.trained_until + 60),)
    # item 1 far down the popular list: only a change measured on the taste scale (not on
    # the bias of 50) lifts it over the popular head
    popular = (np.array([0, 3, 4, 1]), np.array([10.0, 9.0, 8.0, 2.0]))
    answer = [s.item for s in rescore(bpr, visitor, session_of(bpr, recent, known=False),
                                      no_neighbours, popular) if s.item != 2]
    assert answer[0] == 1, answer[:5]


def test_an_unknown_realtime_ranking_is_refused_naming_the_setting() -> None:
    from recsvc.errors import InvalidInput
    from serving.config import load_serve_config

    with pytest.raises(InvalidInput, match=r"^serve\.realtime_ranking: 'factor' is not one of "
                       r"factors, anchored$"):
        load_serve_config(None, {"realtime_ranking": "factor"}, environ={})
    assert load_serve_config(None, None, environ={}).realtime_ranking == "anchored"


@pytest.mark.parametrize("ranking", ["anchored", "factors"])
def test_a_new_visitor_gets_their_taste_after_three_views(served: Served, ranking: str) -> None:
    """Three views of one planted taste cluster's most popular items bring that cluster's items
    into the answer, which was the popular list: by the folded-in factors alone, most of it;
    anchored to the popular list (popularity and the events' change weigh the same), a share
    of it for every cluster."""
    model, store = served.model, served.store
    item_cluster = {model.catalog.index_of(i): c for i, c in served.truth["item_cluster"].items()}
    popular = model.popular("global")[0].tolist()
    gained = []
    for cluster in range(served.truth["clusters"]):
        viewed = [i for i in popular if item_cluster.get(i) == cluster][:3]
        visitor = f"visitor-{ranking}-{cluster}"
        for n, item in enumerate(viewed):
            store.record_event(visitor, model.catalog.item_id(item), "view",
                               model.trained_until + 60 + n)
        features = store.user_features(model.version, visitor, recent=50)
        assert features is not None and not features.known
        session = session_of(model, features.recent)
        answer = [s.item for s in rescore(
            model, features, session,
            lambda item: store.similar_items(model.version, item), model.popular("global"),
            ranking=ranking,
        ) if s.item not in session.interacted][:10]
        in_cluster = sum(item_cluster.get(i) == cluster for i in answer)
        shown = [i for i in popular if i not in session.interacted][:10]  # without the views
        before = sum(item_cluster.get(i) == cluster for i in shown)
        gained.append(in_cluster - before)
        assert len(answer) == 10 and in_cluster >= before + 2, (cluster, before, in_cluster)
        if ranking == "factors":
            assert in_cluster >= 6 and in_cluster >= before + 3, (cluster, before, in_cluster)
    assert len(gained) == served.truth["clusters"] and np.mean(gained) >= 3, gained


def test_bpr_events_add_their_items_to_the_trained_vector() -> None:
    """BPR folds in by a scaled sum of item vectors: an event on an item the user already has
    leaves their trained vector as it is, a new item adds its scaled vector."""
    rng = np.random.default_rng(1)
    items = rng.normal(size=(6, 4)).astype(np.float32)
    items[:, -1] = rng.normal(size=6)  # the item bias column
    scorer = FactorScorer(np.zeros((0, 4), np.float32), items, bias_column=True, fold_in_scale=0.5)
    trained = np.array([0.3, -1.0, 2.0, 1.0], dtype=np.float32)
    features = UserFeatures("u", np.zeros(0, np.int32), np.zeros(0, np.float32),
                            np.array([0, 2], dtype=np.int32), factors=trained)
    assert np.allclose(user_vector(scorer, features, {2: 8.0}), trained)
    expected = trained.copy()
    expected[:-1] += 0.5 * items[5, :-1]
    assert np.allclose(user_vector(scorer, features, {5: 1.0, 0: 1.0}), expected, atol=1e-6)


def large_scorer() -> FactorScorer:
    rng = np.random.default_rng(2)
    items = (0.1 * rng.normal(size=(100_000, 64))).astype(np.float32)
    scorer = FactorScorer(np.zeros((0, 64), np.float32), items, regularization=0.5, alpha=3.0,
                          fold_in_always=True)
    scorer.fold_in(np.zeros(0, np.int32), np.zeros(0, np.float32))  # the Gram, as load_model
    return scorer


def test_a_visitor_is_folded_in_as_the_scorer_folds_in_new_users() -> None:
    scorer = large_scorer()
    seen = np.arange(0, 3_000, 100, dtype=np.int32)
    visitor = UserFeatures("v", np.zeros(0, np.int32), np.zeros(0, np.float32), seen)
    new = {5: 8.0, 200: 1.0, 77_777: 4.0}
    history = dict.fromkeys(seen.tolist(), 1.0)
    for item, weight in new.items():
        history[item] = history.get(item, 0.0) + weight
    expected = scorer.fold_in(np.fromiter(history, np.int32), np.fromiter(history.values(), np.float32))
    assert np.allclose(user_vector(scorer, visitor, new), expected, rtol=1e-4, atol=1e-7)


def test_folding_in_reads_only_the_rows_it_needs() -> None:
    """At 100k items x 64 factors a fold-in that converts the whole item matrix to float64
    copies 51 MB (~10 ms) per Recommend; the real-time step converts the rows it uses only.
    Measured as memory allocated (deterministic), not time (a test must not time)."""
    import tracemalloc

    scorer = large_scorer()
    seen = np.arange(0, 3_000, 100, dtype=np.int32)
    users = [UserFeatures("v", np.zeros(0, np.int32), np.zeros(0, np.float32), seen),
             UserFeatures("k", np.zeros(0, np.int32), np.zeros(0, np.float32), seen,
                          factors=np.full(64, 0.01, dtype=np.float32))]
    whole = scorer.item_factors.shape[0] * scorer.item_factors.shape[1] * 8
    for features in users:
        tracemalloc.start()
        try:
            user_vector(scorer, features, {5: 8.0, 77_777: 1.0})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < whole / 50, (features.user_id, peak)


def test_a_visitor_the_model_does_not_know_counts_every_event_as_new(served: Served) -> None:
    """Events older than the model's training cut-off are in the model for a customer it knows;
    for a visitor it does not know (training read orders only, or dropped them) they are not,
    and must personalise the answer instead of being ignored as "already trained on"."""
    model, store = served.model, served.store
    items = model.popular("global")[0].tolist()[:3]
    for n, item in enumerate(items):
        store.record_event("old-visitor", model.catalog.item_id(item), "view",
                           model.trained_until - 3600 + n)
    features = store.user_features(model.version, "old-visitor", recent=50)
    assert features is not None and not features.known and len(features.recent) == 3
    session = session_of(model, features.recent, known=features.known)
    assert sorted(e.item for e in session.new_events) == sorted(items)
    known_user = served.bundle.users.ids[0]
    store.record_event(known_user, model.catalog.item_id(items[0]), "view",
                       model.trained_until - 60)
    known = store.user_features(model.version, known_user, recent=50)
    assert known is not None and known.known
    assert session_of(model, known.recent, known=known.known).new_events == ()


def test_events_of_a_type_weighted_zero_change_nothing(served: Served) -> None:
    """Training drops zero strengths (`events.weights.view = 0`: learn from carts and orders
    only), so such an event must not move a customer's vector, and a visitor with only such
    events has nothing to be personalised by: the popular list, not the pool in index order."""
    from dataclasses import replace

    model = replace(served.model, event_weights={**served.model.event_weights, "view": 0.0})
    scorer = model.fold_in
    assert scorer is not None
    user_id = served.bundle.users.id_of(3)
    features = served.store.user_features(model.version, user_id)
    assert features is not None and features.factors is not None
    unseen = next(i for i in range(model.n_items) if i not in set(features.seen.tolist()))
    assert np.allclose(user_vector(scorer, features, {unseen: 0.0}), features.factors, atol=1e-6)
    visitor = UserFeatures("zero-visitor", np.zeros(0, np.int32), np.zeros(0, np.float32),
                           np.zeros(0, np.int32), known=False)
    assert not np.any(user_vector(scorer, visitor, {unseen: 0.0}))
    recent = (RecentEvent(model.catalog.item_id(unseen), "view", model.trained_until + 60),)
    visitor = replace(visitor, recent=recent)
    popular = model.popular("global")
    session = session_of(model, recent, known=False)
    answer = rescore(model, visitor, session, no_neighbours, popular)
    # nothing to rank by: no answer of its own, the caller tops up with the popular list
    assert answer == []
    answer = rescore(model, features, session_of(model, recent), no_neighbours, popular)
    trained = [int(i) for i in features.candidates[:10]]
    assert [s.item for s in answer[:10]] == trained


def test_a_visitor_whose_events_all_weigh_zero_gets_the_popular_list(served: Served) -> None:
    """Through the service: the answer is the global popular list, labelled POPULAR, not the
    re-scored pool in item-index order labelled REALTIME."""
    from dataclasses import replace

    from serving.config import ServeConfig
    from serving.domain import RecommendationService, RecommendQuery, Source

    service = RecommendationService(served.store, ServeConfig(warm_users=False, realtime_watch=False))
    service.start()
    try:
        model = service.tracker.require()
        service.tracker.model = replace(model, event_weights={**model.event_weights, "view": 0.0})
        popular = model.popular("global")[0].tolist()
        viewed = popular[-1]
        served.store.record_event("zero-view-visitor", model.catalog.item_id(viewed), "view",
                                  model.trained_until + 60)
        result = service.recommend(RecommendQuery("zero-view-visitor", 5))
        assert result.source == Source.POPULAR
        assert [model.catalog.index_of(i) for i, _, _ in result.items] == popular[:5]
    finally:
        service.stop()
