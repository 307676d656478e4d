"""Fixtures for the serving tests: a hand-built bundle with planted answers, real servers.

The bundle (`make_bundle`) is small and fully known, so tests can assert exact outcomes:

- 40 items `sku-00` .. `sku-39` in four categories of ten (books, music, garden, toys);
  price 5 + index; items with index % 7 == 3 are out of stock.
- a 4-dimensional factor model ("als"): item i points along axis i // 10 (its category) with
  length 1 - 0.02 * (i % 10), so within a category lower indexes score higher.
- 20 users `user-00` .. `user-19`; user j likes category j % 4, has seen the first two items
  of it, and its candidates are the rest of that category, best first, then other items.
- similar items: the five nearest indexes in the same category.
- popularity: global = sku-39 down to sku-00; trending = garden first; one list per
  category; segment lists "vip" = sku-15..18, "new" = sku-35..37. user-00 is "vip".
- rules: {sku-00} -> sku-25 and {sku-00, sku-11} -> sku-33.
- buy-again: user-00 re-buys sku-07 weekly, last bought six days ago (due), and sku-08 monthly,
  bought two days ago (not due).

`variant=1` reverses each user's candidate list, so a test can tell versions apart.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsvc.bundle import BundleWriter, RankedLists
from recsvc.buyagain import BuyAgainLists
from recsvc.events import Catalog
from recsvc.ids import IdMap
from recsvc.rules import RuleSet
from recsvc.scorers import FactorScorer, save_scorer
from recsvc.store import open_store
from recsvc.v1 import recommender_pb2_grpc as pb_grpc
from serving.config import ServeConfig
from serving.server import RunningServer, start_server, store_options

__all__ = [
    "CATEGORIES",
    "N_ITEMS",
    "N_USERS",
    "bundle_dir",
    "category_of",
    "item_id",
    "make_bundle",
    "memory_server",
    "serve",
    "stub_for",
    "user_id",
]

N_ITEMS = 40
N_USERS = 20
CATEGORIES = ("books", "music", "garden", "toys")
DAY = 86_400


def item_id(index: int) -> str:
    return f"sku-{index:02d}"


def user_id(index: int) -> str:
    return f"user-{index:02d}"


def category_of(item: str) -> str:
    return CATEGORIES[int(item.split("-")[1]) // 10]


def make_bundle(
    root: Path,
    variant: int = 0,
    version: str | None = None,
    reverse_items: bool = False,
    list_length: int | None = None,
) -> Path:
    """Write the planted bundle under `root` (see the module docstring); returns its path.

    reverse_items: index i holds item_id(N_ITEMS - 1 - i), as a training run that met the
    items in another order would number them (the planted structure follows the index).
    list_length: cut the global and category popularity lists to their top items, as
    training's `popularity.top_n` does on a large catalogue.
    """
    now = int(time.time())
    writer = BundleWriter(root, version)
    users = IdMap(user_id(u) for u in range(N_USERS))
    items = IdMap(item_id(N_ITEMS - 1 - i if reverse_items else i) for i in range(N_ITEMS))
    index = np.arange(N_ITEMS)
    catalog = Catalog(
        category=np.array([CATEGORIES[i // 10] for i in index], dtype=object),
        price=(5.0 + index).astype(np.float32),
        in_stock=(index % 7 != 3),
        title=np.array([f"Item {i}" for i in index], dtype=object),
    )
    writer.ids(users, items, catalog)

    item_factors = np.zeros((N_ITEMS, 4), dtype=np.float32)
    item_factors[index, index // 10] = 1.0 - 0.02 * (index % 10)
    user_factors = np.zeros((N_USERS, 4), dtype=np.float32)
    user_factors[np.arange(N_USERS), np.arange(N_USERS) % 4] = 1.0
    user_factors += 0.01  # every item scores above zero
    save_scorer(writer, "als", FactorScorer(user_factors, item_factors, 0.05, 1.0))

    seen_rows, seen_cols = [], []
    for u in range(N_USERS):
        first = (u % 4) * 10
        seen_rows += [u, u]
        seen_cols += [first, first + 1]
    seen = sp.csr_matrix(
        (np.ones(len(seen_rows), dtype=np.float32), (seen_rows, seen_cols)), shape=(N_USERS, N_ITEMS)
    )
    writer.csr("seen", seen)

    scores = user_factors @ item_factors.T
    n_candidates = 20
    cand_items = np.full((N_USERS, n_candidates), -1, dtype=np.int32)
    cand_scores = np.zeros((N_USERS, n_candidates), dtype=np.float32)
    for u in range(N_USERS):
        row = scores[u].copy()
        row[seen[u].indices] = -np.inf
        order = np.argsort(-row, kind="stable")[:n_candidates]
        if variant == 1:
            order = order[::-1]
        cand_items[u] = order
        cand_scores[u] = np.sort(row[order])[::-1] if variant == 1 else row[order]
    writer.array("candidates/items", cand_items)
    writer.array("candidates/scores", cand_scores)

    similar_idx = np.full((N_ITEMS, 5), -1, dtype=np.int32)
    similar_scores = np.zeros((N_ITEMS, 5), dtype=np.float32)
    for i in range(N_ITEMS):
        same = [j for j in range((i // 10) * 10, (i // 10) * 10 + 10) if j != i]
        same.sort(key=lambda j: (abs(j - i), j))
        similar_idx[i] = same[:5]
        similar_scores[i] = [1.0 - 0.1 * abs(j - i) for j in same[:5]]
    writer.array("similar/indices", similar_idx)
    writer.array("similar/scores", similar_scores)

    def ranked(order: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(order, np.int32), np.linspace(1.0, 0.1, len(order)).astype(np.float32)

    def top(order: list[int]) -> list[int]:
        return order[:list_length] if list_length is not None else order

    RankedLists.from_dict({"all": ranked(top(list(range(N_ITEMS - 1, -1, -1))))}).write(
        writer, "popularity/global"
    )
    RankedLists.from_dict({"all": ranked([*range(20, 30), *range(0, 20), *range(30, 40)])}).write(
        writer, "popularity/trending"
    )
    RankedLists.from_dict(
        {name: ranked(top(list(range(c * 10, c * 10 + 10)))) for c, name in enumerate(CATEGORIES)}
    ).write(writer, "popularity/category")
    RankedLists.from_dict({"vip": ranked([15, 16, 17, 18]), "new": ranked([35, 36, 37])}).write(
        writer, "popularity/segment"
    )
    writer.frame(
        "segments/users",
        pd.DataFrame(
            {
                "segment": ["vip"] + ["regular"] * (N_USERS - 1),
                "cluster": [-1] * N_USERS,
                "recency_days": [1.0] * N_USERS,
                "frequency": [3.0] * N_USERS,
                "monetary": [50.0] * N_USERS,
                "r": [5] * N_USERS,
                "f": [3] * N_USERS,
                "m": [3] * N_USERS,
            }
        ),
    )

    RuleSet(
        antecedent_indptr=np.array([0, 1, 3], dtype=np.int64),
        antecedent_items=np.array([0, 0, 11], dtype=np.int32),
        consequent=np.array([25, 33], dtype=np.int32),
        support=np.array([0.05, 0.04]),
        confidence=np.array([0.6, 0.9]),
        lift=np.array([3.0, 5.0]),
        leverage=np.array([0.03, 0.03]),
        conviction=np.array([2.0, 9.0]),
        n_orders=100,
    ).save(writer.dir("rules"))

    indptr = np.zeros(N_USERS + 1, dtype=np.int64)
    indptr[1:] = 2  # both entries belong to user-00
    BuyAgainLists(
        indptr=indptr,
        items=np.array([7, 8], dtype=np.int32),
        due_score=np.array([0.5, 0.1], dtype=np.float32),
        next_due=np.array([now + 1 * DAY, now + 28 * DAY], dtype=np.int64),
        interval_days=np.array([7.0, 30.0], dtype=np.float32),
        count=np.array([6, 3], dtype=np.int32),
        last=np.array([now - 6 * DAY, now - 2 * DAY], dtype=np.int64),
        sd_days=np.array([1.0, 3.0], dtype=np.float32),
        confidence=np.array([0.85, 0.75], dtype=np.float32),
        trained_at=now - 3600,
    ).write(writer)

    return writer.commit(
        {
            "default_recommender": "als",
            "counts": {"users": N_USERS, "items": N_ITEMS},
            "params": {
                "als": {"regularization": 0.05, "alpha": 1.0},
                "events": {"weights": {"view": 1.0, "cart": 4.0, "purchase": 8.0}},
            },
            "trained_until": now - 3600,
        }
    )


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundles"))


def serve(store_url: str, bundle: Path | None = None, **settings: object) -> RunningServer:
    """Start an in-process server on 127.0.0.1:0 over `store_url` (publishing `bundle` first).

    Without authentication unless `settings` give `tokens_file` (tests of the answers; the
    security tests in tests/test_security.py turn it on).
    """
    settings.setdefault("insecure_no_auth", not settings.get("tokens_file"))
    config = replace(
        ServeConfig(store=store_url, port=0, poll_seconds=0.1, threads=4), **settings
    )
    store = open_store(store_url, **store_options(store_url, config.store_timeout_ms / 1000))
    if bundle is not None:
        from recsvc.bundle import Bundle

        # Publishing is an admin job: it gets the store's normal timeouts, not the serving
        # handle's 100 ms ones (a busy machine stalls a publish-lock call longer than that).
        admin = store if store_url.startswith("memory") else open_store(store_url)
        try:
            admin.publish(Bundle(bundle), progress=False)
        finally:
            if admin is not store:
                admin.close()
    return start_server(config, store=store)


def stub_for(target: str) -> tuple[grpc.Channel, pb_grpc.RecommenderStub]:
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=10)
    return channel, pb_grpc.RecommenderStub(channel)


@pytest.fixture()
def memory_server(bundle_dir: Path) -> Iterator[RunningServer]:
    """A server on a fresh embedded store holding the planted bundle."""
    running = serve(f"memory://test-{time.monotonic_ns()}", bundle_dir)
    try:
        yield running
    finally:
        running.stop(0)
