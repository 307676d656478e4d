"""Item-metadata updates: bad rows are counted with a reason, never fail the whole update."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from recsvc.bundle import Bundle
from recsvc.config import load_train_config
from recsvc.store import open_store
from recsvc.synth import SynthConfig, generate, write
from tests.fixtures_redis import redis_cluster_url, redis_url  # noqa: F401  (fixtures)
from tests.test_store import bundles, make_bundle, store, store_url  # noqa: F401  (fixtures)
from training.pipeline import train


def test_a_price_too_large_to_store_is_a_bad_row(store: Any, bundles: Path) -> None:  # noqa: F811
    store.publish(make_bundle(bundles, "v1"), progress=False)
    report = store.update_items(pd.DataFrame({
        "item_id": ["i0001", "i0002", "i0003", "i0004"],
        "price": ["1e39", "123456789.99", "-1e39", "3.4028235e38"],  # the last: float32's max
        "in_stock": ["1", "0", "0", "1"],
    }))
    # the same reason and limit as the loaders' (recsvc.events.as_float32)
    assert report.bad == {"price out of range (above 3.4e38 or below -3.4e38)": 1,
                          "unparsable or negative price": 1}
    assert (report.rows, report.updated) == (4, 4)  # the rows' other fields still apply
    catalog = store.item_catalog("v1")
    assert catalog.price[1] == 1.5 and catalog.in_stock[1]  # the bundle's price kept
    assert abs(catalog.price[2] - 123456789.99) < 16 and not catalog.in_stock[2]  # float32
    assert catalog.price[3] == 3.5 and not catalog.in_stock[3]


def test_an_update_made_after_the_catalogue_was_read_applies_to_the_bundle(
    store: Any, bundles: Path  # noqa: F811
) -> None:
    # the trainer read the items file a minute before it committed the bundle; an update made
    # in between is newer than the bundle's catalogue though older than its created_at
    now = datetime.now(UTC)
    bundle = make_bundle(bundles, "v1", created_at=(now + timedelta(minutes=1)).isoformat())
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    manifest["catalog_read_at"] = (now - timedelta(minutes=1)).isoformat()
    (bundle.path / "manifest.json").write_text(json.dumps(manifest))
    store.update_items(pd.DataFrame({"item_id": ["i0002"], "in_stock": ["0"]}))
    store.publish(Bundle(bundle.path), progress=False)
    assert not store.item_catalog("v1").in_stock[2]


def test_the_trainer_records_when_it_read_the_catalogue(tmp_path: Path) -> None:
    write(generate(SynthConfig(users=200, items=40, days=20, seed=3, clusters=2)), tmp_path / "data")
    feature_store = open_store(f"memory://catalog-read-{tmp_path.name}")
    item = pd.read_csv(tmp_path / "data" / "items.csv")["item_id"].iloc[2]

    def update_while_training(step: str) -> None:
        if step == "matrix":  # the items file has been read; training goes on
            feature_store.update_items(pd.DataFrame({"item_id": [item], "in_stock": ["0"], "price": ["7"]}))

    config = load_train_config(None, {"als.iterations": 2, "itemknn.enabled": False,
                                      "segments.enabled": False})
    result = train(tmp_path / "data" / "events.csv", tmp_path / "bundles", config,
                   items=tmp_path / "data" / "items.csv", on_step=update_while_training)
    bundle = Bundle(result.path)
    read = datetime.fromisoformat(bundle.manifest["catalog_read_at"])
    assert read < datetime.fromisoformat(bundle.manifest["created_at"]) + timedelta(seconds=1)
    feature_store.publish(bundle, progress=False)
    catalog = feature_store.item_catalog(bundle.version)
    index = catalog.index_of(item)
    assert not catalog.in_stock[index] and catalog.price[index] == 7.0
