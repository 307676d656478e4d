"""Cart-level cross-sell: rules that fire, exclusions, k, similarity top-up, reasons, and the
`recsvc crosssell` / `recsvc rules --bundle` commands against a real bundle on disk."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recsvc.bundle import BundleWriter
from recsvc.crosssell import RuleIndex, cross_sell, rule_score
from recsvc.errors import InvalidInput, NotFound
from recsvc.events import Catalog
from recsvc.ids import IdMap
from recsvc.rules import RuleSet
from training import commands_rules
from training.rules import mine_rules

ITEM_IDS = ["milk", "bread", "butter", "jam", "beer", "chips", "salsa", "tea"]
MILK, BREAD, BUTTER, JAM, BEER, CHIPS, SALSA, TEA = range(8)


def make_rules(rules: list[tuple[tuple[int, ...], int, float, float]], n_orders: int = 100) -> RuleSet:
    """A RuleSet from (antecedent, consequent, confidence, lift); other metrics are filler."""
    lengths = [len(a) for a, _, _, _ in rules]
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = len(rules)
    return RuleSet(
        antecedent_indptr=indptr,
        antecedent_items=np.array([i for a, _, _, _ in rules for i in sorted(a)], dtype=np.int32),
        consequent=np.array([c for _, c, _, _ in rules], dtype=np.int32),
        support=np.full(n, 0.1),
        confidence=np.array([conf for _, _, conf, _ in rules], dtype=np.float64),
        lift=np.array([lift for _, _, _, lift in rules], dtype=np.float64),
        leverage=np.zeros(n),
        conviction=np.ones(n),
        n_orders=n_orders,
    )


RULES = make_rules([
    ((BREAD,), BUTTER, 0.62, 3.1),
    ((BREAD,), MILK, 0.80, 1.05),  # high confidence, lift near 1: a best seller
    ((BREAD, BUTTER), JAM, 0.70, 4.0),  # fires only with both
    ((BEER,), CHIPS, 0.55, 2.5),
    ((BEER, CHIPS), SALSA, 0.90, 6.0),
    ((CHIPS,), SALSA, 0.40, 2.0),  # weaker rule for the same consequent
])
INDEX = RuleIndex.build(RULES, n_items=len(ITEM_IDS))


def items(answer) -> list[int]:
    return [s.item for s in answer]


def test_rules_fire_for_the_cart_with_the_documented_score_and_reason() -> None:
    answer = cross_sell(INDEX, [BREAD], k=5, item_ids=ITEM_IDS)
    assert items(answer) == [BUTTER, MILK]  # butter: .62*log2(4.1)=1.26 > milk: .80*log2(2.05)
    assert answer[0].score == pytest.approx(0.62 * math.log2(1 + 3.1))
    assert answer[1].score == pytest.approx(0.80 * math.log2(1 + 1.05))
    assert answer[0].reason == "bought together with bread: confidence 0.62, lift 3.1"
    assert JAM not in items(answer)  # {bread, butter} -> jam needs butter in the cart too


def test_whole_antecedent_in_cart_fires_and_cart_items_are_never_offered() -> None:
    answer = cross_sell(INDEX, [BUTTER, BREAD], k=5, item_ids=ITEM_IDS)
    assert items(answer) == [JAM, MILK]
    assert answer[0].reason == "bought together with bread + butter: confidence 0.70, lift 4.0"
    assert set(INDEX.firing(np.array([BREAD, BUTTER]))) == {0, 1, 2}


def test_best_rule_per_item_wins_not_a_sum() -> None:
    answer = cross_sell(INDEX, [BEER, CHIPS], k=5, item_ids=ITEM_IDS)
    assert items(answer) == [SALSA]
    assert answer[0].score == pytest.approx(0.90 * math.log2(7.0))
    assert "beer + chips" in answer[0].reason


def test_exclude_k_and_unknown_items() -> None:
    assert items(cross_sell(INDEX, [BREAD], k=5, exclude={BUTTER})) == [MILK]
    assert items(cross_sell(INDEX, [BREAD], k=1)) == [BUTTER]
    assert cross_sell(INDEX, [BREAD], k=0) == []
    assert items(cross_sell(INDEX, [-1, BREAD, 99], k=5)) == [BUTTER, MILK]  # unknown ignored
    assert cross_sell(INDEX, [], k=5) == []
    assert cross_sell(INDEX, [BREAD], k=5)[0].reason.startswith("bought together with #1:")
    with pytest.raises(InvalidInput) as info:
        cross_sell(INDEX, [BREAD], k=-1)
    assert info.value.field == "k"


def similar_arrays() -> tuple[np.ndarray, np.ndarray]:
    indices = np.full((len(ITEM_IDS), 3), -1, dtype=np.int32)
    scores = np.zeros((len(ITEM_IDS), 3), dtype=np.float32)
    indices[BREAD] = [BUTTER, JAM, TEA]  # butter already comes from a rule
    scores[BREAD] = [0.9, 0.5, 0.4]
    indices[TEA] = [MILK, BEER, -1]
    scores[TEA] = [0.8, 0.3, 0]
    return indices, scores


def test_similarity_tops_up_below_every_rule_score() -> None:
    indices, scores = similar_arrays()
    answer = cross_sell(INDEX, [BREAD], k=4, item_ids=ITEM_IDS,
                        similar_indices=indices, similar_scores=scores)
    assert items(answer) == [BUTTER, MILK, JAM, TEA]
    assert [s.reason for s in answer[2:]] == ["similar to bread", "similar to bread"]
    assert max(s.score for s in answer[2:]) < min(s.score for s in answer[:2])
    assert max(s.score for s in answer[2:]) < rule_score(RULES.confidence, RULES.lift).min()
    assert answer[2].score > answer[3].score


def test_similarity_alone_when_no_rule_fires_and_padding_is_skipped() -> None:
    indices, scores = similar_arrays()
    answer = cross_sell(INDEX, [TEA], k=5, item_ids=ITEM_IDS,
                        similar_indices=indices, similar_scores=scores, exclude=[BEER])
    assert items(answer) == [MILK]  # beer excluded, -1 padding ignored, never the cart item
    assert answer[0].reason == "similar to tea"
    with pytest.raises(InvalidInput):
        cross_sell(INDEX, [TEA], k=5, similar_indices=indices)


def test_mined_rules_recommend_the_planted_pair() -> None:
    rng = np.random.default_rng(5)
    n_orders, n_items = 2000, 40
    rows, cols = [], []
    for order in range(n_orders):
        basket = set(rng.choice(n_items, size=3, replace=False).tolist())
        if rng.random() < 0.2:
            basket |= {7, 19}  # planted: bought together
        rows += [order] * len(basket)
        cols += sorted(basket)
    baskets = sp.csr_matrix((np.ones(len(rows), np.uint8), (rows, cols)), shape=(n_orders, n_items))
    index = RuleIndex.build(mine_rules(baskets, 0.01, 0.3, max_len=3), n_items=n_items)
    assert cross_sell(index, [7], k=3)[0].item == 19
    assert cross_sell(index, [19], k=3)[0].item == 7


rule_lists = st.lists(
    st.tuples(
        st.sets(st.integers(0, 9), min_size=1, max_size=3).map(tuple),
        st.integers(0, 9),
        st.floats(0.05, 1.0),
        st.floats(0.1, 20.0),
    ).filter(lambda r: r[1] not in r[0]),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(
    rules=rule_lists,
    cart=st.lists(st.integers(-1, 11), max_size=5),
    exclude=st.sets(st.integers(0, 9), max_size=3),
    k=st.integers(0, 8),
    with_similar=st.booleans(),
)
def test_answers_respect_k_exclusions_order_and_best_rule(rules, cart, exclude, k, with_similar):
    rule_set = make_rules(rules)
    index = RuleIndex.build(rule_set, n_items=10)
    rng = np.random.default_rng(len(rules) + 31 * k)
    indices = rng.integers(-1, 10, size=(10, 4)).astype(np.int32)
    scores = rng.random((10, 4)).astype(np.float32)
    answer = cross_sell(
        index, cart, k, exclude=exclude,
        similar_indices=indices if with_similar else None,
        similar_scores=scores if with_similar else None,
    )
    got = items(answer)
    assert len(got) <= k and len(got) == len(set(got))
    assert not set(got) & (set(cart) | exclude)
    assert [s.score for s in answer] == sorted((s.score for s in answer), reverse=True)
    # Brute force: best score of the rules whose whole antecedent is in the cart.
    best: dict[int, float] = {}
    for antecedent, consequent, confidence, lift in rules:
        if set(antecedent) <= set(cart) and consequent not in set(cart) | exclude:
            score = confidence * math.log2(1 + lift)
            best[consequent] = max(best.get(consequent, 0.0), score)
    from_rules = [s for s in answer if s.reason.startswith("bought together")]
    assert len(from_rules) == min(k, len(best))
    for scored in from_rules:
        assert scored.score == pytest.approx(best[scored.item])
    if from_rules:
        assert min(s.score for s in from_rules) >= sorted(best.values(), reverse=True)[
            len(from_rules) - 1] - 1e-12
    assert all(s.reason.startswith("similar to") for s in answer[len(from_rules):])


# --- commands against a real bundle -------------------------------------------------------------


def write_bundle(root: Path, with_rules: bool = True) -> Path:
    writer = BundleWriter(root)
    writer.ids(IdMap(["u1"]), IdMap(ITEM_IDS), Catalog.empty(len(ITEM_IDS)))
    if with_rules:
        RULES.save(writer.dir("rules"))
    indices, scores = similar_arrays()
    writer.array("similar/indices", indices)
    writer.array("similar/scores", scores)
    return writer.commit({"default_recommender": "popular"})


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="recsvc")
    commands_rules.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_crosssell_command_reads_rules_and_similar_items_from_a_bundle(tmp_path, capsys) -> None:
    write_bundle(tmp_path / "bundles")
    code = run_cli(["crosssell", "--bundle", str(tmp_path / "bundles"),
                    "--items", "bread,nonesuch", "--k", "4"])
    assert code == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0] == "rank\titem_id\tscore\treason"
    assert [line.split("\t")[1] for line in lines[1:]] == ["butter", "milk", "jam", "tea"]
    assert lines[1].endswith("bought together with bread: confidence 0.62, lift 3.1")
    assert lines[3].endswith("similar to bread")
    assert "nonesuch" in captured.err
    with pytest.raises(NotFound, match="none of the cart items"):
        run_cli(["crosssell", "--bundle", str(tmp_path / "bundles"), "--items", "nonesuch"])


def test_rules_command_exports_a_bundles_rules(tmp_path, capsys) -> None:
    write_bundle(tmp_path / "bundles")
    out = tmp_path / "rules.csv"
    assert run_cli(["rules", "--bundle", str(tmp_path / "bundles"), "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert len(frame) == len(RULES)
    assert ("bread|butter", "jam") in set(zip(frame["antecedents"], frame["consequent"], strict=True))
    assert capsys.readouterr().out.startswith(f"{len(RULES)} rules from bundle")


def test_bundle_without_rules_is_not_found(tmp_path) -> None:
    write_bundle(tmp_path / "bundles", with_rules=False)
    with pytest.raises(NotFound, match="no association rules"):
        run_cli(["crosssell", "--bundle", str(tmp_path / "bundles"), "--items", "bread"])
