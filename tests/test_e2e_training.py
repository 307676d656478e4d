"""End to end: train on a synthetic store and recover what the generator planted."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsvc.batch import export_frames
from recsvc.bundle import Bundle
from recsvc.buyagain import BuyAgainLists
from recsvc.config import load_train_config
from recsvc.rules import RuleSet
from recsvc.synth import SynthConfig, generate, write
from training.pipeline import train


@dataclass
class Trained:
    bundle: Bundle
    truth: dict[str, Any]
    data: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("e2e")
    write(generate(SynthConfig(users=3000, items=400, days=90, seed=5, clusters=6)), root / "data")
    result = train(
        root / "data" / "events.csv",
        root / "bundles",
        load_train_config(),
        items=root / "data" / "items.csv",
    )
    truth = json.loads((root / "data" / "ground_truth.json").read_text())
    return Trained(Bundle(result.path), truth, root / "data")


def test_manifest_records_the_run(trained: Trained) -> None:
    manifest = trained.bundle.manifest
    assert manifest["rows"]["rows_bad"] == 0
    assert manifest["counts"]["users"] == 3000
    assert set(manifest["input"]) == {"events.csv", "items.csv"}
    assert "numpy" in manifest["libraries"]
    assert manifest["params"]["als"]["factors"] > 0


def test_planted_pairs_are_found_with_lift(trained: Trained) -> None:
    rules = RuleSet.load(trained.bundle.path / "rules").to_frame(trained.bundle.items.ids)
    pairs = rules[~rules["antecedents"].str.contains("|", regex=False)]
    found = {(a, c): lift for a, c, lift in zip(pairs["antecedents"], pairs["consequent"], pairs["lift"], strict=True)}
    planted = [tuple(p) for p in trained.truth["pairs"]]
    hits = [found.get((a, b)) or found.get((b, a)) for a, b in planted]
    recovered = [lift for lift in hits if lift is not None]
    assert len(recovered) >= 0.9 * len(planted)
    assert min(recovered) > 1.0


def cluster_share(trained: Trained, model: str | None) -> float:
    """Share of recommended items that belong to the user's planted taste cluster."""
    user_cluster = trained.truth["user_cluster"]
    item_cluster = trained.truth["item_cluster"]
    recs = pd.concat(export_frames(trained.bundle, None, 10, model=model))
    assert recs.groupby("user_id").size().eq(10).all()
    same = [
        item_cluster.get(item) == user_cluster[user]
        for user, item in zip(recs["user_id"], recs["item_id"], strict=True)
    ]
    return float(np.mean(same))


def test_recommendations_follow_taste_clusters(trained: Trained) -> None:
    default = cluster_share(trained, None)
    popular = cluster_share(trained, "popular")
    # with 6 clusters, items picked blindly would be in the user's cluster 1 time in 6
    assert default > 0.5, default
    assert cluster_share(trained, "als") > 0.6
    assert default > 3 * popular


def test_cycle_items_show_up_in_buy_again(trained: Trained) -> None:
    lists = BuyAgainLists.read(trained.bundle)
    users, items = trained.bundle.users, trained.bundle.items
    now = int(trained.bundle.manifest["trained_until"])
    hits = 0
    cycles = trained.truth["cycles"]
    for cycle in cycles:
        offered = lists.for_user(users.get(cycle["user_id"]), now, k=5)
        hits += items.get(cycle["item_id"]) in {entry.item for entry in offered}
    assert hits / len(cycles) > 0.8
