"""Interaction matrix, bundle format, scorers, the ranking path and configuration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recsvc import BUNDLE_FORMAT_VERSION
from recsvc.bundle import Bundle, BundleWriter, RankedLists
from recsvc.config import EventsConfig, load_train_config, to_dict, to_toml
from recsvc.errors import BundleFormatError, InvalidInput, NotFound
from recsvc.events import Catalog, LoadOptions, load_events
from recsvc.ids import IdMap
from recsvc.matrix import event_weights, interaction_matrix
from recsvc.ranking import ItemFilter, ScoredItem, allowed_mask, finalize, top_candidates
from recsvc.scorers import (
    BlendScorer,
    FactorScorer,
    ItemItemScorer,
    PopularityScorer,
    load_scorer,
    save_scorer,
)


def small_log(tmp_path: Path):
    path = tmp_path / "e.csv"
    path.write_text(
        "user_id,item_id,event_type,timestamp,quantity\n"
        "a,x,view,2026-01-11T00:00:00Z,1\n"
        "a,x,purchase,2026-01-11T00:00:00Z,3\n"
        "a,y,view,2026-01-01T00:00:00Z,1\n"
        "b,y,cart,2026-01-11T00:00:00Z,1\n"
    )
    return load_events(path)[0]


def test_event_weights_types_decay_and_quantity(tmp_path: Path) -> None:
    log = small_log(tmp_path)
    config = EventsConfig(weights={"view": 1.0, "cart": 4.0, "purchase": 8.0}, half_life_days=10)
    weights = event_weights(log, config)
    assert weights.tolist() == pytest.approx([1.0, 8.0, 0.5, 4.0])  # 10 days old: half
    config.use_quantity = True
    assert event_weights(log, config)[1] == pytest.approx(8.0 * (1 + np.log1p(2)))
    matrix = interaction_matrix(log, event_weights(log, EventsConfig(weights=config.weights)))
    assert matrix.shape == (2, 2)
    assert matrix[0, 0] == pytest.approx(9.0)  # repeated (user, item) rows are summed


def test_a_very_old_event_fades_but_stays_an_interaction(tmp_path: Path) -> None:
    log = small_log(tmp_path)
    config = EventsConfig(weights={"view": 1.0, "cart": 4.0, "purchase": 8.0}, half_life_days=0.01)
    weights = event_weights(log, config)  # "a,y" is 1,000 half-lives old: 2^-1000 underflows
    assert 0 < weights[2] < 1e-5 and weights[0] == pytest.approx(1.0)
    matrix = interaction_matrix(log, weights)
    assert matrix.nnz == 3 and matrix[0, 1] > 0  # still something user a has seen


def test_event_type_without_weight_is_named(tmp_path: Path) -> None:
    log = small_log(tmp_path)
    with pytest.raises(InvalidInput) as info:
        event_weights(log, EventsConfig(weights={"view": 1.0}))
    assert "events.weights" in info.value.field


def write_bundle(root: Path) -> Path:
    writer = BundleWriter(root)
    users, items = IdMap(["u1", "u2"]), IdMap(["i1", "i2", "i3"])
    writer.ids(users, items, Catalog.empty(3))
    writer.csr("seen", sp.csr_matrix(np.array([[1, 0, 0], [0, 2, 0]], dtype=np.float32)))
    save_scorer(writer, "pop", PopularityScorer(np.array([3, 2, 1], np.float32)))
    save_scorer(writer, "ii", ItemItemScorer(sp.csr_matrix(np.eye(3, k=1, dtype=np.float32))))
    save_scorer(
        writer,
        "mix",
        BlendScorer([(PopularityScorer(np.array([1, 0, 0], np.float32)), 1.0),
                     (ItemItemScorer(np.eye(3, dtype=np.float32)), 2.0)]),
    )
    RankedLists.from_dict({"all": (np.array([0, 1]), np.array([2.0, 1.0]))}).write(
        writer, "popularity/global"
    )
    return writer.commit({"default_recommender": "pop"})


def test_bundle_round_trip_and_latest(tmp_path: Path) -> None:
    path = write_bundle(tmp_path)
    bundle = Bundle(tmp_path)  # the root resolves to latest
    assert bundle.path == path.resolve()
    assert bundle.manifest["format_version"] == BUNDLE_FORMAT_VERSION
    assert bundle.users.ids == ["u1", "u2"] and bundle.items.get("i3") == 2
    assert bundle.seen[1, 1] == 2
    assert bundle.recommenders == ["ii", "mix", "pop"]
    history = bundle.seen[[0]]
    assert bundle.scorer("ii").score(history).tolist() == [[0, 1, 0]]
    assert bundle.scorer().score(history).tolist() == [[3, 2, 1]]
    assert bundle.scorer("mix").score(history).tolist() == [[3, 0, 0]]
    items, scores = bundle.popularity("global").get("all")
    assert items.tolist() == [0, 1]
    with pytest.raises(NotFound, match="has: ii, mix, pop"):
        bundle.scorer("nope")
    assert not list(tmp_path.glob(".partial-*"))


def test_bundle_from_the_future_is_refused(tmp_path: Path) -> None:
    path = write_bundle(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = BUNDLE_FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleFormatError, match="bundle format version"):
        Bundle(path)
    with pytest.raises(BundleFormatError, match="not a model bundle"):
        Bundle(tmp_path / "nothing")


def test_factor_fold_in_matches_trained_direction() -> None:
    rng = np.random.default_rng(0)
    items = rng.normal(size=(30, 4)).astype(np.float32)
    scorer = FactorScorer(np.zeros((1, 4), np.float32), items, regularization=0.01, alpha=1.0)
    history = sp.csr_matrix((np.ones(3, np.float32), ([0, 0, 0], [1, 5, 7])), shape=(1, 30))
    scores = scorer.score(history, np.array([-1]))
    # a folded-in user scores the items they interacted with above the average item
    assert scores[0, [1, 5, 7]].mean() > scores[0].mean()


def test_factor_fold_in_reads_only_the_rows_it_needs() -> None:
    """One fold-in converts the history's item rows, not the whole item matrix to float64 (at
    100k items x 64 factors that copy was 51 MB and 10-13 ms a call); same answer either way."""
    import tracemalloc

    rng = np.random.default_rng(1)
    items = rng.normal(size=(40_000, 16)).astype(np.float32)  # 2.5 MB as float32, 5 MB float64
    scorer = FactorScorer(np.zeros((1, 16), np.float32), items, regularization=0.1, alpha=2.0)
    held, strengths = np.array([3, 70, 9_000]), np.array([1.0, 2.0, 8.0], np.float32)
    scorer.gram()  # computed once per version when it loads
    tracemalloc.start()
    try:
        vector = scorer.fold_in(held, strengths)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 200_000, peak
    v = items.astype(np.float64)
    c = 2.0 * strengths.astype(np.float64)
    a = v.T @ v + (v[held].T * (c - 1.0)) @ v[held] + 0.1 * np.eye(16)
    np.testing.assert_allclose(vector, np.linalg.solve(a, v[held].T @ c), rtol=1e-4, atol=1e-6)


def test_top_candidates_bans_and_orders() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [1, 2, 3, 4]], dtype=np.float32)
    banned = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 0]]))
    idx, val = top_candidates(scores, 3, banned, allowed=np.array([True, True, True, False]))
    assert idx.tolist() == [[2, 0, -1], [2, 1, 0]]
    assert val[1].tolist() == [3, 2, 1]


@settings(max_examples=200, deadline=None)
@given(
    candidates=st.lists(st.integers(-1, 30), max_size=40),
    topup=st.lists(st.integers(0, 30), max_size=40),
    exclude=st.sets(st.integers(0, 30), max_size=10),
    allowed_bits=st.lists(st.booleans(), min_size=31, max_size=31),
    k=st.integers(0, 20),
)
def test_finalize_never_breaks_the_rules(candidates, topup, exclude, allowed_bits, k) -> None:
    allowed = np.array(allowed_bits)
    answer = finalize(
        (ScoredItem(i, 1.0) for i in candidates), k, allowed, exclude, [[ScoredItem(i, 0.5) for i in topup]]
    )
    items = [a.item for a in answer.items]
    assert len(items) <= k
    assert len(set(items)) == len(items)
    assert not set(items) & exclude
    assert all(allowed[i] and i >= 0 for i in items)
    eligible = {i for i in candidates + topup if i >= 0 and allowed[i] and i not in exclude}
    assert len(items) == min(k, len(eligible))  # tops up whenever it can


def test_finalize_reads_top_up_lists_only_while_items_are_missing() -> None:
    built: list[str] = []

    def topups():  # the server builds its top-up lists lazily, like this
        for name, items in (("segment", [5, 6]), ("global", [6, 7, 8])):
            built.append(name)
            yield [ScoredItem(i, 0.5, name) for i in items]

    exclude = frozenset({1})
    full = finalize((ScoredItem(i, 1.0) for i in [1, 2, 3, 4]), 3, None, exclude, topups())
    assert [s.item for s in full.items] == [2, 3, 4] and full.from_primary == 3
    assert built == []  # the personal list filled the answer: no top-up list was built
    short = finalize((ScoredItem(i, 1.0) for i in [1, 2]), 4, None, exclude, topups())
    assert [(s.item, s.reason) for s in short.items] == [(2, ""), (5, "segment"), (6, "segment"), (7, "global")]
    assert built == ["segment", "global"] and short.from_primary == 1
    assert exclude == {1}  # the caller's exclusions are read, never changed


def test_allowed_mask_filters() -> None:
    catalog = Catalog(
        category=np.array(["a", "b", "a"], dtype=object),
        price=np.array([5, 10, np.nan], dtype=np.float32),
        in_stock=np.array([True, True, False]),
        title=np.array(["", "", ""], dtype=object),
    )
    assert allowed_mask(catalog, ItemFilter()) is None
    assert allowed_mask(catalog, ItemFilter(categories=frozenset({"a"}))).tolist() == [True, False, True]
    assert allowed_mask(catalog, ItemFilter(in_stock_only=True)).tolist() == [True, True, False]
    assert allowed_mask(catalog, ItemFilter(min_price=6)).tolist() == [False, True, False]


def test_config_layers_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[als]\nfactors = 8\n[events.weights]\nclick = 2.0\n")
    config = load_train_config(path, {"als.iterations": 3}, environ={"RECSVC_TRAIN__ALS__ALPHA": "7"})
    assert (config.als.factors, config.als.iterations, config.als.alpha) == (8, 3, 7.0)
    assert config.events.weights["click"] == 2.0
    path.write_text("[als]\nfactorz = 8\n")
    with pytest.raises(InvalidInput) as info:
        load_train_config(path)
    assert info.value.field == "als.factorz"
    path.write_text("[als]\nfactors = 'many'\n")
    with pytest.raises(InvalidInput, match="als.factors: expected a number"):
        load_train_config(path)


@pytest.mark.parametrize(("setting", "value", "reason"), [
    ("events.weights.purchase", "-2", "at least 0"),  # a negative strength breaks fold-in
    ("als.alpha", "nan", "finite"),
    ("als.regularization", "inf", "finite"),
    ("als.factors", "0", "at least 1"),
    ("rules.min_support", "1.5", "at most 1"),
    ("popularity.trending_half_life_days", "0", "above 0"),
    ("blend.ease", "-1", "at least 0"),
])
def test_config_numbers_out_of_range_name_the_setting(setting: str, value: str, reason: str) -> None:
    env = {"RECSVC_TRAIN__" + setting.upper().replace(".", "__"): value}
    with pytest.raises(InvalidInput, match=reason) as info:
        load_train_config(environ=env)
    assert info.value.field == setting


def test_config_toml_round_trip(tmp_path: Path) -> None:
    config = load_train_config()
    path = tmp_path / "round.toml"
    path.write_text(to_toml(to_dict(config)))
    assert load_train_config(path) == config


def test_scorer_kinds_load_back(tmp_path: Path) -> None:
    path = write_bundle(tmp_path)
    bundle = Bundle(path)
    assert isinstance(load_scorer(bundle, "mix"), BlendScorer)
    assert load_scorer(bundle, "ii").n_items == 3


def test_event_log_mask(tmp_path: Path) -> None:
    log = small_log(tmp_path)
    kept = log.mask(log.user == 0)
    assert len(kept) == 3 and kept.users is log.users


def test_load_options_required_event_type(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("user_id,item_id\nu,i\n")
    log, _ = load_events(path, LoadOptions(event_type="purchase"))
    assert log.event_types == ["purchase"]


def test_progress_setting_values(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """RECSVC_PROGRESS: off values turn bars off; an unknown value is said once (a typo is not
    silently ignored) and leaves the default (a terminal only)."""
    from recsvc import progress as p

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(p, "_warned", set())
    for off in ("0", "false", "No", "OFF"):
        monkeypatch.setenv("RECSVC_PROGRESS", off)
        assert p.progress_enabled() is False
    monkeypatch.setenv("RECSVC_PROGRESS", "1")
    with caplog.at_level("WARNING", logger="recsvc.progress"):
        p.progress_enabled()
        assert caplog.records == []
        monkeypatch.setenv("RECSVC_PROGRESS", "maybe")
        p.progress_enabled()
        p.progress_enabled()
    assert [r.getMessage() for r in caplog.records] == [
        "RECSVC_PROGRESS: unknown value; progress bars show on a terminal only"]
