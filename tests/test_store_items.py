"""Item-metadata updates: bad rows are counted with a reason, never fail the whole update."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from tests.fixtures_redis import redis_cluster_url, redis_url  # noqa: F401  (fixtures)
from tests.test_store import bundles, make_bundle, store, store_url  # noqa: F401  (fixtures)


def test_a_price_too_large_to_store_is_a_bad_row(store: Any, bundles: Path) -> None:  # noqa: F811
    store.publish(make_bundle(bundles, "v1"), progress=False)
    report = store.update_items(pd.DataFrame({
        "item_id": ["i0001", "i0002", "i0003"],
        "price": ["1e39", "123456789.99", "-1e39"],
        "in_stock": ["1", "0", "0"],
    }))
    assert report.bad == {"price too large (above 3.4e38)": 1, "unparsable or negative price": 1}
    assert (report.rows, report.updated) == (3, 3)  # the rows' other fields still apply
    catalog = store.item_catalog("v1")
    assert catalog.price[1] == 1.5 and catalog.in_stock[1]  # the bundle's price kept
    assert abs(catalog.price[2] - 123456789.99) < 16 and not catalog.in_stock[2]  # float32
    assert catalog.price[3] == 3.5 and not catalog.in_stock[3]
