"""Training pipeline details: forgotten customers, bad rows in the manifest, switches."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsvc.bundle import Bundle
from recsvc.config import load_train_config
from recsvc.errors import InvalidInput
from recsvc.store import open_store
from recsvc.synth import SynthConfig, generate, write
from training.pipeline import train

FAST = {"als.iterations": 3, "itemknn.enabled": False, "segments.enabled": False}


@pytest.fixture(scope="module")
def store_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    write(generate(SynthConfig(users=300, items=60, days=30, seed=2, clusters=3)), root)
    return root


def test_forgotten_customers_are_not_trained_on(store_data: Path, tmp_path: Path) -> None:
    listed = tmp_path / "forget.txt"
    listed.write_text("u000001\n")
    store = open_store("memory://forget-test")
    store.forget_user("u000002")
    config = load_train_config(None, FAST)
    from_file = Bundle(train(store_data / "events.csv", tmp_path / "a", config, forget_list=listed).path)
    assert "u000001" not in from_file.users and "u000002" in from_file.users
    from_store = Bundle(
        train(store_data / "events.csv", tmp_path / "b", config, forget_list="memory://forget-test").path
    )
    assert "u000002" not in from_store.users and "u000001" in from_store.users
    assert from_store.manifest["forgotten_users"] == 1
    assert any("forgotten" in note for note in from_store.manifest["rows"]["notes"])
    # a list that is not there is an error, not "nobody asked to be forgotten"
    with pytest.raises(InvalidInput, match="--forget-list: file not found"):
        train(store_data / "events.csv", tmp_path / "c", config, forget_list=tmp_path / "nope.txt")
    with pytest.raises(InvalidInput, match="--forget-list: is a directory"):
        train(store_data / "events.csv", tmp_path / "c", config, forget_list=tmp_path)
    with pytest.raises(InvalidInput, match="--forget-list: unknown store scheme"):  # not --store
        train(store_data / "events.csv", tmp_path / "c", config, forget_list="bogus://x")


def test_bad_rows_reach_the_manifest(store_data: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.csv"
    lines = (store_data / "events.csv").read_text().splitlines()
    lines.insert(5, ",i00001,view,2026-01-02T00:00:00Z,,,")
    lines.insert(9, "u000001,i00001,view,yesterday,,,")
    events.write_text("\n".join(lines) + "\n")
    result = train(events, tmp_path / "b", load_train_config(None, FAST))
    rows = Bundle(result.path).manifest["rows"]
    assert rows["bad_rows"] == {"missing user_id": 1, "unparsable timestamp": 1}
    assert rows["rows_kept"] == len(lines) - 3  # header and the two bad rows


def test_switched_off_models_are_absent(store_data: Path, tmp_path: Path) -> None:
    config = load_train_config(
        None, {**FAST, "rules.enabled": False, "buyagain.enabled": False, "default_recommender": "als"}
    )
    bundle = Bundle(train(store_data / "events.csv", tmp_path / "c", config).path)
    assert not bundle.has("rules") and not bundle.has("buyagain")
    assert "als" in bundle.recommenders and bundle.default_recommender == "als"


def test_similar_items_from_factors_match_brute_force() -> None:
    import numpy as np

    from training.pipeline import similar_from_factors

    rng = np.random.default_rng(3)
    factors = rng.normal(size=(300, 8)).astype(np.float32)
    factors[7] = 0.0  # an item without a vector still gets a (meaningless) list, never itself
    indices, scores = similar_from_factors(factors, 5)
    unit = factors / np.maximum(np.linalg.norm(factors, axis=1, keepdims=True), 1e-12)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    for item in (0, 1, 150, 299):
        assert indices[item].tolist() == np.argsort(-sims[item])[:5].tolist()
        assert scores[item] == pytest.approx(np.sort(sims[item])[::-1][:5], abs=1e-5)
    assert not (indices == np.arange(300)[:, None]).any()


def test_factor_candidates_match_ranking_scores_with_seen_items_banned() -> None:
    import numpy as np
    import scipy.sparse as sp

    from recsvc.ranking import top_candidates
    from recsvc.scorers import FactorScorer
    from training.pipeline import factor_candidates

    rng = np.random.default_rng(5)
    scorer = FactorScorer(
        rng.normal(size=(40, 6)).astype(np.float32), rng.normal(size=(90, 6)).astype(np.float32)
    )
    seen = sp.random(40, 90, density=0.3, format="lil", random_state=5, dtype=np.float32)
    seen[3] = 0.0  # a user with nothing seen
    seen = sp.csr_matrix(seen)
    items, scores = factor_candidates(scorer, sp.csr_matrix(seen), 70)  # more than some have left
    expected_items, expected_scores = top_candidates(
        scorer.score(seen, np.arange(40)), 70, banned=seen
    )
    assert scores == pytest.approx(expected_scores, abs=1e-4)
    assert (items == expected_items).all()  # random floats: no ties
    for user in range(40):
        chosen = items[user][items[user] >= 0]
        assert not set(chosen.tolist()) & set(seen[user].indices.tolist())
        assert len(chosen) == min(70, 90 - seen[user].nnz)


def test_ease_leaves_the_default_blend_above_its_catalogue_limit() -> None:
    from training.pipeline import default_models

    config = load_train_config(None, {"ease.max_items": 50})
    assert default_models(config, 50) == ("blend", ["ease", "als"], "")
    default, parts, note = default_models(config, 51)
    assert (default, parts) == ("als", [])
    assert "51 items > ease.max_items 50" in note
    assert default_models(load_train_config(None, {"default_recommender": "ease"}), 10**6)[0] == "ease"


def test_disabled_models_leave_the_default_blend() -> None:
    from recsvc.errors import InvalidInput
    from training.pipeline import default_models

    default, parts, note = default_models(load_train_config(None, {"als.enabled": False}), 50)
    assert (default, parts) == ("ease", [])
    assert note == "als disabled: left out of the default blend; the default recommender is ease"
    both = load_train_config(None, {"als.enabled": False, "ease.enabled": False})
    assert default_models(both, 50)[:2] == ("itemknn", [])
    none = load_train_config(None, {"als.enabled": False, "ease.enabled": False, "itemknn.enabled": False})
    assert default_models(none, 50)[:2] == ("popular", [])
    with pytest.raises(InvalidInput, match=r"^als.enabled: the default recommender 'als' is disabled"):
        load_train_config(None, {"default_recommender": "als", "als.enabled": False})  # before any data
    # BPR is opt-in (--bpr): named as the default or in the blend, it is fitted all the same
    assert default_models(load_train_config(None, {"default_recommender": "bpr"}), 50) == ("bpr", [], "")
    with_bpr = load_train_config(None, {"blend.bpr": 0.5})
    assert default_models(with_bpr, 50) == ("blend", ["ease", "als", "bpr"], "")
    weightless = load_train_config(None, {"blend.ease": 0.0, "blend.als": 0.0})
    assert default_models(weightless, 50) == (
        "itemknn", [], "no model of the blend has a weight above 0; the default recommender is itemknn")


def test_no_als_no_ease_fits_neither(store_data: Path, tmp_path: Path) -> None:
    config = load_train_config(
        None, {**FAST, "als.enabled": False, "ease.enabled": False, "itemknn.enabled": True}
    )
    bundle = Bundle(train(store_data / "events.csv", tmp_path / "d", config).path)
    assert bundle.default_recommender == "itemknn"
    assert not {"als", "ease", "blend"} & set(bundle.recommenders)
    assert "ease, als disabled" in bundle.manifest["default_recommender_note"]


def test_large_catalogue_bundle_names_the_model_that_ranks(store_data: Path, tmp_path: Path) -> None:
    config = load_train_config(None, {**FAST, "ease.max_items": 10})  # 60 items: above the limit
    bundle = Bundle(train(store_data / "events.csv", tmp_path / "d", config).path)
    assert bundle.default_recommender == "als"
    assert "ease" not in bundle.recommenders
    assert "ease left out" in bundle.manifest["default_recommender_note"]
    assert any("ease left out" in note for note in bundle.manifest["rows"]["notes"])


@pytest.mark.parametrize("name", ["als", "bpr"])
def test_a_seed_repeats_the_factors(name: str) -> None:
    import numpy as np
    import scipy.sparse as sp

    from training.models.als import ALSModel, BPRModel

    rng = np.random.default_rng(0)
    matrix = sp.random(4000, 2000, density=0.01, format="csr", random_state=rng, dtype=np.float32)
    matrix.data[:] = 1.0
    model_type = ALSModel if name == "als" else BPRModel
    first, second = model_type(factors=16, iterations=30, seed=7), model_type(factors=16, iterations=30, seed=7)
    first.fit(matrix)
    second.fit(matrix)
    assert np.array_equal(first.item_factors, second.item_factors)
    assert np.array_equal(first.user_factors, second.user_factors)


def test_bpr_fold_in_ranks_like_the_trained_vectors_in_the_bundle_and_the_server(
    store_data: Path, tmp_path: Path
) -> None:
    """BPR vectors end in a bias column; the server folds new users in with the BPR rule the
    publisher records, not with ALS's least squares (which lost the bias: ~0.55 overlap)."""
    import numpy as np

    from recsvc.ranking import top_candidates
    from recsvc.scorers import FactorScorer
    from serving.model import load_model

    config = load_train_config(None, {**FAST, "bpr.enabled": True, "bpr.factors": 16,
                                      "default_recommender": "bpr"})
    bundle = Bundle(train(store_data / "events.csv", tmp_path / "bpr", config).path)
    scorer = bundle.scorer("bpr")
    assert isinstance(scorer, FactorScorer) and scorer.bias_column and scorer.fold_in_scale > 0
    store = open_store("memory://bpr-fold-in")
    store.publish(bundle, progress=False)
    served = load_model(store, bundle.version).fold_in
    assert served is not None and served.bias_column
    assert served.fold_in_scale == pytest.approx(scorer.fold_in_scale)

    history = bundle.seen
    users = np.arange(history.shape[0])
    trained, _ = top_candidates(scorer.score(history, users), 10, history)

    def overlap(folder: FactorScorer) -> float:
        vectors = np.array([
            folder.fold_in(history[u].indices, history[u].data) for u in users
        ])
        folded, _ = top_candidates(vectors @ scorer.item_factors.T, 10, history)
        return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(trained, folded, strict=True)]))

    least_squares = FactorScorer(scorer.user_factors, scorer.item_factors, regularization=0.1)
    assert overlap(served) >= 0.7 and overlap(served) > overlap(least_squares) + 0.1
