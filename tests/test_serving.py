"""The gRPC server end to end: real server on 127.0.0.1, real client channel, real stores.

Every RPC runs against the embedded store and a real redis-server (the `server` fixture is
parametrised over both). The planted bundle is described in tests/fixtures_grpc.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import given, settings
from hypothesis import strategies as st

from recsvc.bundle import Bundle
from recsvc.errors import InvalidInput, StoreUnavailable
from recsvc.store import open_store
from recsvc.v1 import recommender_pb2 as pb
from serving.config import ServeConfig
from serving.server import RunningServer
from serving.validation import Validator
from tests.fixtures_grpc import (
    N_ITEMS,
    bundle_dir,  # noqa: F401  (fixture)
    category_of,
    item_id,
    make_bundle,
    memory_server,  # noqa: F401  (fixture)
    serve,
    stub_for,
    user_id,
)
from tests.fixtures_redis import free_port, redis_url, start_redis  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["memory", "redis"])
def server(request: pytest.FixtureRequest, bundle_dir: Path) -> Iterator[RunningServer]:  # noqa: F811
    """A server holding the planted bundle, over the embedded store or a real Redis."""
    name = f"t{time.monotonic_ns()}"
    if request.param == "memory":
        url = f"memory://{name}"
    else:
        url = f"{request.getfixturevalue('redis_url')}?prefix={name}"
    running = serve(url, bundle_dir)
    try:
        yield running
    finally:
        running.stop(0)


@pytest.fixture()
def stub(server: RunningServer) -> Iterator[object]:
    channel, client = stub_for(server.target)
    try:
        yield client
    finally:
        channel.close()


def ids(response: object) -> list[str]:
    return [item.item_id for item in response.items]  # type: ignore[attr-defined]


def invalid(call: object, request: object) -> str:
    """Call and return the details of the INVALID_ARGUMENT it must fail with."""
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=5)  # type: ignore[operator]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return str(caught.value.details())


# -- Recommend -----------------------------------------------------------------------------------
def test_recommend_known_user_gets_their_candidates(stub: object, bundle_dir: Path) -> None:  # noqa: F811
    reply = stub.Recommend(pb.RecommendRequest(user_id=user_id(1), k=5), timeout=5)
    assert ids(reply) == [item_id(i) for i in range(12, 17)]  # music, best first, seen 10/11 left out
    assert reply.source == pb.PERSONALIZED
    assert reply.model_version == Bundle(bundle_dir).version


def test_recommend_respects_filters_and_k(stub: object) -> None:
    flt = pb.Filter(categories=["books"], in_stock_only=True, max_price=12.0, exclude_item_ids=["sku-02"])
    reply = stub.Recommend(pb.RecommendRequest(user_id=user_id(1), k=10, filter=flt), timeout=5)
    got = ids(reply)
    # books 0-7 cost <= 12; 3 is out of stock; 2 is excluded: 0, 1, 4, 5, 6, 7 remain.
    assert sorted(got) == [item_id(i) for i in (0, 1, 4, 5, 6, 7)]
    assert len(set(got)) == len(got)
    for k in (1, 3, 40, 100):
        reply = stub.Recommend(pb.RecommendRequest(user_id=user_id(2), k=k), timeout=5)
        assert len(ids(reply)) == min(k, N_ITEMS - 2)  # everything but the two seen items
        assert len(set(ids(reply))) == len(ids(reply))
        assert not {item_id(20), item_id(21)} & set(ids(reply))


def test_recommend_unknown_user_gets_segment_or_global_popularity(stub: object) -> None:
    reply = stub.Recommend(pb.RecommendRequest(user_id="stranger", k=3), timeout=5)
    assert ids(reply) == [item_id(39), item_id(38), item_id(37)]
    assert reply.source == pb.POPULAR
    reply = stub.Recommend(pb.RecommendRequest(user_id="stranger", k=5, segment="vip"), timeout=5)
    assert ids(reply)[:4] == [item_id(i) for i in (15, 16, 17, 18)]
    assert ids(reply)[4] == item_id(39)  # topped up from the global list
    assert reply.source == pb.SEGMENT
    reply = stub.Recommend(pb.RecommendRequest(user_id="stranger", k=2, segment="nope"), timeout=5)
    assert reply.source == pb.POPULAR


def test_known_user_is_topped_up_from_their_segment(stub: object) -> None:
    # user-00 is "vip" and likes books; asking for music leaves few candidates, and the
    # top-up must come from the vip list (15-18) before the global list.
    flt = pb.Filter(categories=["music"], exclude_item_ids=[item_id(i) for i in range(10, 15)])
    reply = stub.Recommend(pb.RecommendRequest(user_id=user_id(0), k=5, filter=flt), timeout=5)
    assert ids(reply) == [item_id(i) for i in (15, 16, 17, 18, 19)]  # vip list, then music list
    assert reply.source == pb.SEGMENT


# -- item RPCs -----------------------------------------------------------------------------------
def test_similar_items(stub: object) -> None:
    reply = stub.SimilarItems(pb.SimilarItemsRequest(item_id=item_id(15), k=4), timeout=5)
    assert set(ids(reply)) == {item_id(i) for i in (13, 14, 16, 17)}
    assert reply.source == pb.PERSONALIZED
    flt = pb.Filter(in_stock_only=True)
    reply = stub.SimilarItems(pb.SimilarItemsRequest(item_id=item_id(15), k=8, filter=flt), timeout=5)
    got = ids(reply)
    assert item_id(17) not in got and item_id(15) not in got and len(got) == 8
    assert all(category_of(i) == "music" for i in got[:4])  # neighbours, then music top-up
    with pytest.raises(grpc.RpcError) as caught:
        stub.SimilarItems(pb.SimilarItemsRequest(item_id="no-such-item", k=3), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "item_id" in caught.value.details()


def test_item_rpcs_respect_exclusions_purchases_stock_and_price(stub: object) -> None:
    # user-00 has seen sku-00 and sku-01 and buys sku-04 now; sku-03 and sku-10 are out of
    # stock; prices are 5 + index.
    stub.RecordEvent(pb.RecordEventRequest(user_id=user_id(0), item_id=item_id(4), event_type=pb.PURCHASE),
                     timeout=5)
    flt = pb.Filter(in_stock_only=True, max_price=20.0, exclude_purchased=True,
                    exclude_item_ids=[item_id(5), item_id(25)])
    forbidden = {item_id(i) for i in (0, 1, 4, 5, 25, 3, 10)} | {item_id(i) for i in range(16, 40)}
    similar = stub.SimilarItems(
        pb.SimilarItemsRequest(item_id=item_id(2), k=6, user_id=user_id(0), filter=flt), timeout=5)
    got = ids(similar)
    assert not forbidden & set(got) and item_id(2) not in got, got
    # the neighbours 1, 3, 0, 4, 5 are all refused: the books list tops up, then the global one
    assert got == [item_id(i) for i in (6, 7, 8, 9, 15, 14)], got
    cart = [item_id(0), item_id(2)]  # the rule {sku-00} -> sku-25 is excluded by the filter
    cross = stub.CrossSell(pb.CrossSellRequest(item_ids=cart, k=6, user_id=user_id(0), filter=flt), timeout=5)
    got = ids(cross)
    assert len(got) == 6 and len(set(got)) == 6
    assert not forbidden & set(got) and not set(cart) & set(got), got
    popular = stub.Popular(pb.PopularRequest(k=6, user_id=user_id(0), filter=flt), timeout=5)
    got = ids(popular)
    assert got == [item_id(i) for i in (15, 14, 13, 12, 11, 9)], got


def test_every_list_rpc_fills_k_from_the_catalogue_when_the_lists_run_dry(tmp_path: Path) -> None:
    # Popularity lists hold only the top items (popularity.top_n): a category filter can leave
    # fewer than k of them, yet every RPC answers k items while the catalogue has them.
    running = serve(f"memory://dry{time.monotonic_ns()}", make_bundle(tmp_path, list_length=3))
    channel, client = stub_for(running.target)
    toys = pb.Filter(categories=["toys"])  # 10 items, 3 in the global list, 3 in their own
    try:
        replies = [
            client.Recommend(pb.RecommendRequest(user_id="stranger", k=10, filter=toys), timeout=5),
            client.Popular(pb.PopularRequest(k=10, filter=toys), timeout=5),
            client.SimilarItems(pb.SimilarItemsRequest(item_id=item_id(15), k=10, filter=toys), timeout=5),
            client.CrossSell(pb.CrossSellRequest(item_ids=[item_id(15)], k=10, filter=toys), timeout=5),
        ]
    finally:
        channel.close()
        running.stop(0)
    for reply in replies:
        got = ids(reply)
        assert sorted(got) == [item_id(i) for i in range(30, 40)], got
        reasons = [item.reason for item in reply.items]
        assert reasons.count("popular in toys") == 3 and reasons[-1] == "in the catalogue"
        last_listed = max(i for i, r in enumerate(reasons) if r != "in the catalogue")
        assert reasons.index("in the catalogue") > last_listed  # the lists before the filler


def test_cross_sell_ranks_planted_rules_first(stub: object) -> None:
    reply = stub.CrossSell(pb.CrossSellRequest(item_ids=[item_id(0), item_id(11)], k=4), timeout=5)
    got = ids(reply)
    assert got[:2] == [item_id(33), item_id(25)]
    assert "bought together" in reply.items[0].reason
    assert item_id(0) not in got and item_id(11) not in got and len(got) == 4
    reply = stub.CrossSell(pb.CrossSellRequest(item_ids=[item_id(0), "unknown"], k=2), timeout=5)
    assert ids(reply)[0] == item_id(25)
    reply = stub.CrossSell(pb.CrossSellRequest(item_ids=["unknown"], k=2), timeout=5)
    assert reply.source == pb.POPULAR and len(reply.items) == 2


def test_cross_sell_of_a_cart_is_the_batch_answer_best_first(
    memory_server: RunningServer, bundle_dir: Path, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    from recsvc.cli import main

    cart = [item_id(i) for i in (0, 11, 22, 35)]  # similar items of the newest three top up
    channel, client = stub_for(memory_server.target)
    try:
        reply = client.CrossSell(pb.CrossSellRequest(item_ids=cart, k=12), timeout=5)
    finally:
        channel.close()
    scores = [item.score for item in reply.items]
    assert len(scores) == 12 and scores == sorted(scores, reverse=True)
    assert {item.reason for item in reply.items[2:]} == {
        f"similar to {item_id(i)}" for i in (11, 22, 35)}
    capsys.readouterr()
    assert main(["crosssell", "--bundle", str(bundle_dir), "--items", ",".join(cart), "--k", "12"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()[1:]]
    # the same answer; the store keeps similarity scores compressed, so near-ties may swap
    batch = {r[1]: (r[3], float(r[2])) for r in rows}
    assert [r[1] for r in rows[:2]] == ids(reply)[:2]  # the rules, in order
    assert set(batch) == set(ids(reply))
    for item in reply.items:
        assert batch[item.item_id][0] == item.reason
        assert batch[item.item_id][1] == pytest.approx(item.score, abs=1e-3)


def test_buy_again_applies_the_filter(stub: object) -> None:
    """BuyAgain takes the same filter as every list: user-00's due sku-07 (books, price 12, in
    stock) is kept or dropped by it."""
    def buy_again(**fields: Any) -> list[str]:
        request = pb.BuyAgainRequest(user_id=user_id(0), k=5, filter=pb.Filter(**fields))
        return ids(stub.BuyAgain(request, timeout=5))

    assert buy_again() == [item_id(7)]
    assert buy_again(exclude_item_ids=[item_id(7)]) == []
    assert buy_again(max_price=11.5) == [] and buy_again(max_price=12.5) == [item_id(7)]
    assert buy_again(min_price=12.5) == []
    assert buy_again(categories=["music"]) == []
    assert buy_again(categories=["books"], in_stock_only=True) == [item_id(7)]


def test_buy_again_and_purchase_events(stub: object) -> None:
    reply = stub.BuyAgain(pb.BuyAgainRequest(user_id=user_id(0), k=5), timeout=5)
    assert ids(reply) == [item_id(7)]  # sku-08 was bought two days ago on a monthly cycle
    assert "due" in reply.items[0].reason
    assert reply.source == pb.PERSONALIZED
    assert ids(stub.BuyAgain(pb.BuyAgainRequest(user_id=user_id(5), k=5), timeout=5)) == []
    stub.RecordEvent(
        pb.RecordEventRequest(user_id=user_id(0), item_id=item_id(7), event_type=pb.PURCHASE), timeout=5
    )
    assert ids(stub.BuyAgain(pb.BuyAgainRequest(user_id=user_id(0), k=5), timeout=5)) == []


def test_popular_lists(stub: object) -> None:
    reply = stub.Popular(pb.PopularRequest(k=3), timeout=5)
    assert ids(reply) == [item_id(39), item_id(38), item_id(37)] and reply.source == pb.POPULAR
    assert ids(stub.Popular(pb.PopularRequest(k=2, trending=True), timeout=5)) == [item_id(20), item_id(21)]
    reply = stub.Popular(pb.PopularRequest(k=10, category="garden", filter=pb.Filter(in_stock_only=True)), timeout=5)
    assert ids(reply) == [item_id(i) for i in range(20, 30) if i != 24]  # 24 is out of stock
    reply = stub.Popular(pb.PopularRequest(k=2, segment="vip"), timeout=5)
    assert ids(reply) == [item_id(15), item_id(16)] and reply.source == pb.SEGMENT
    reply = stub.Popular(pb.PopularRequest(k=2, segment="vip", trending=True), timeout=5)
    assert ids(reply) == [item_id(20), item_id(21)] and reply.source == pb.POPULAR  # store-wide trend
    # the request's category and the filter's are both conditions: books AND toys is nothing
    toys = pb.Filter(categories=["toys"])
    assert ids(stub.Popular(pb.PopularRequest(k=5, category="books", filter=toys), timeout=5)) == []
    both = pb.Filter(categories=["toys", "books"], in_stock_only=True)
    reply = stub.Popular(pb.PopularRequest(k=3, category="books", filter=both), timeout=5)
    assert [category_of(i) for i in ids(reply)] == ["books"] * 3
    # a filter of several categories keeps the store-wide ranking (the top items are toys)
    reply = stub.Popular(pb.PopularRequest(k=3, filter=pb.Filter(categories=["books", "toys"])), timeout=5)
    assert ids(reply) == [item_id(39), item_id(38), item_id(37)]
    flt = pb.Filter(exclude_purchased=True)
    reply = stub.Popular(pb.PopularRequest(k=2, category="music", user_id=user_id(1), filter=flt), timeout=5)
    assert ids(reply) == [item_id(12), item_id(13)]  # 10 and 11 were seen by user-01


# -- real time -----------------------------------------------------------------------------------
def test_purchase_changes_the_next_recommendation(stub: object) -> None:
    before = stub.Recommend(pb.RecommendRequest(user_id=user_id(5), k=5), timeout=5)
    assert ids(before)[0] == item_id(12)
    reply = stub.RecordEvent(
        pb.RecordEventRequest(user_id=user_id(5), item_id=item_id(12), event_type=pb.PURCHASE), timeout=5
    )
    assert reply.item_known
    after = stub.Recommend(pb.RecommendRequest(user_id=user_id(5), k=5), timeout=5)
    assert item_id(12) not in ids(after)
    assert after.source == pb.REALTIME
    assert all(category_of(i) == "music" for i in ids(after))


def test_a_purchase_stays_excluded_however_many_views_follow(server: RunningServer, stub: object) -> None:
    store = server.service.store
    user = user_id(5)
    stub.RecordEvent(pb.RecordEventRequest(user_id=user, item_id=item_id(12), event_type=pb.PURCHASE),
                     timeout=5)
    for _ in range(store.recent_max + 5):  # more views than the recent-events list holds
        stub.RecordEvent(pb.RecordEventRequest(user_id=user, item_id=item_id(3), event_type=pb.VIEW),
                         timeout=5)
    reply = stub.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=5)
    assert reply.source == pb.REALTIME
    assert item_id(12) not in ids(reply) and item_id(3) not in ids(reply)


def test_new_visitor_gets_personal_answers_after_a_few_events(stub: object) -> None:
    visitor = f"visitor-{time.monotonic_ns()}"
    assert stub.Recommend(pb.RecommendRequest(user_id=visitor, k=3), timeout=5).source == pb.POPULAR
    for index, kind in ((21, pb.VIEW), (22, pb.VIEW), (23, pb.CART)):
        stub.RecordEvent(pb.RecordEventRequest(user_id=visitor, item_id=item_id(index), event_type=kind), timeout=5)
    reply = stub.Recommend(pb.RecommendRequest(user_id=visitor, k=4), timeout=5)
    assert reply.source == pb.REALTIME
    assert all(category_of(i) == "garden" for i in ids(reply)), ids(reply)
    assert not {item_id(21), item_id(22), item_id(23)} & set(ids(reply))
    unknown = stub.RecordEvent(
        pb.RecordEventRequest(user_id=visitor, item_id="not-in-model", event_type=pb.VIEW), timeout=5
    )
    assert not unknown.item_known


def test_a_visitor_unknown_to_the_model_is_personalised_by_events_older_than_its_training(
    server: RunningServer, stub: object
) -> None:
    """Events before the training cut-off count as trained on only for customers the model
    knows: a visitor it does not know (training read orders only) is personalised by them."""
    visitor = f"visitor-{time.monotonic_ns()}"
    trained_until = server.service.tracker.require().trained_until
    for n, (index, kind) in enumerate(((21, pb.VIEW), (22, pb.VIEW), (23, pb.CART))):
        stub.RecordEvent(pb.RecordEventRequest(
            user_id=visitor, item_id=item_id(index), event_type=kind,
            timestamp_ms=int((trained_until - 3600) * 1000) + n), timeout=5)
    reply = stub.Recommend(pb.RecommendRequest(user_id=visitor, k=4), timeout=5)
    assert reply.source == pb.REALTIME
    assert all(category_of(i) == "garden" for i in ids(reply)), ids(reply)


def test_events_keep_their_items_across_a_swap_that_renumbers_items(
    server: RunningServer, stub: object, tmp_path: Path
) -> None:
    visitor = f"visitor-{time.monotonic_ns()}"
    touched = {item_id(5): pb.PURCHASE, item_id(21): pb.VIEW, item_id(22): pb.CART}
    for item, kind in touched.items():
        stub.RecordEvent(pb.RecordEventRequest(user_id=visitor, item_id=item, event_type=kind), timeout=5)
    every = {item_id(i) for i in range(N_ITEMS)}
    first = stub.Recommend(pb.RecommendRequest(user_id=visitor, k=N_ITEMS), timeout=5)
    assert set(ids(first)) == every - set(touched)
    # user-00's planted buy-again item sits at index 7: item_id(7) now, item_id(32) after the swap
    assert ids(stub.BuyAgain(pb.BuyAgainRequest(user_id=user_id(0), k=5), timeout=5)) == [item_id(7)]
    stub.RecordEvent(pb.RecordEventRequest(user_id=user_id(0), item_id=item_id(32), event_type=pb.PURCHASE),
                     timeout=5)
    # The next training run numbers the same items the other way round.
    publisher = open_store(server.store.url)
    second = publisher.publish(Bundle(make_bundle(tmp_path, reverse_items=True)), progress=False).version
    deadline = time.monotonic() + 10
    while server.service.tracker.require().version != second:
        assert time.monotonic() < deadline, "the server did not follow the swap"
        time.sleep(0.05)
    after = stub.Recommend(pb.RecommendRequest(user_id=visitor, k=N_ITEMS), timeout=5)
    assert after.model_version == second
    assert set(ids(after)) == every - set(touched)  # the same items, not the same indexes
    # item_id(32), due in the new version, was bought since its training: not due
    assert ids(stub.BuyAgain(pb.BuyAgainRequest(user_id=user_id(0), k=5), timeout=5)) == []


def test_a_retried_event_counts_once(server: RunningServer, stub: object) -> None:
    from serving.realtime import event_strengths, session_of

    visitor = f"visitor-{time.monotonic_ns()}"
    ts = int(time.time() * 1000)
    for item, kind in ((21, pb.CART), (21, pb.CART), (22, pb.VIEW)):  # the cart event retried
        stub.RecordEvent(pb.RecordEventRequest(user_id=visitor, item_id=item_id(item), event_type=kind,
                                               timestamp_ms=ts), timeout=5)
    model = server.service.tracker.require()
    stored = server.store.recent_events(visitor)
    assert len(stored) == 3
    session = session_of(model, stored)
    index = model.catalog.index_of
    assert event_strengths(model, session.new_events) == {
        index(item_id(21)): model.event_weights["cart"], index(item_id(22)): model.event_weights["view"]}


def test_model_info(server: RunningServer, stub: object) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
    assert info.model_version == server.service.tracker.require().version
    assert (info.n_items, info.n_users, info.default_recommender) == (N_ITEMS, 20, "als")
    assert set(info.segments) == {"vip", "new"} and "global" in info.popularity_lists
    assert info.max_k == 100 and not info.degraded


# -- bad requests --------------------------------------------------------------------------------
BAD_REQUESTS = [
    ("Recommend", pb.RecommendRequest(user_id="", k=3), "user_id"),
    ("Recommend", pb.RecommendRequest(user_id="u", k=0), "k"),
    ("Recommend", pb.RecommendRequest(user_id="u", k=-4), "k"),
    ("Recommend", pb.RecommendRequest(user_id="u", k=101), "k"),
    ("Recommend", pb.RecommendRequest(user_id="u" * 300, k=3), "user_id"),
    ("Recommend", pb.RecommendRequest(user_id="a\x00b", k=3), "user_id"),
    ("Recommend", pb.RecommendRequest(user_id="u", k=3, filter=pb.Filter(min_price=5, max_price=2)), "filter.min_price"),
    ("Recommend", pb.RecommendRequest(user_id="u", k=3, filter=pb.Filter(min_price=float("nan"))), "filter.min_price"),
    ("Recommend", pb.RecommendRequest(user_id="u", k=3, filter=pb.Filter(min_price=float("inf"))), "filter.min_price"),
    ("Popular", pb.PopularRequest(k=3, filter=pb.Filter(max_price=1e300)), "filter.max_price"),
    ("Recommend", pb.RecommendRequest(user_id="u", k=3, filter=pb.Filter(categories=["x"] * 1001)), "filter.categories"),
    ("Recommend", pb.RecommendRequest(user_id="u", k=3, filter=pb.Filter(exclude_item_ids=["ok", ""])), "filter.exclude_item_ids[1]"),
    ("SimilarItems", pb.SimilarItemsRequest(item_id="", k=3), "item_id"),
    ("SimilarItems", pb.SimilarItemsRequest(item_id="sku-01", k=3, filter=pb.Filter(exclude_purchased=True)), "user_id"),
    ("CrossSell", pb.CrossSellRequest(item_ids=[], k=3), "item_ids"),
    ("CrossSell", pb.CrossSellRequest(item_ids=["a"] * 101, k=3), "item_ids"),
    ("CrossSell", pb.CrossSellRequest(item_ids=["a", ""], k=3), "item_ids[1]"),
    ("BuyAgain", pb.BuyAgainRequest(user_id="u", k=1000), "k"),
    ("Popular", pb.PopularRequest(k=0), "k"),
    ("RecordEvent", pb.RecordEventRequest(user_id="u", item_id="sku-01"), "event_type"),
    ("RecordEvent", pb.RecordEventRequest(user_id="u", item_id="sku-01", event_type=9), "event_type"),
    ("RecordEvent", pb.RecordEventRequest(user_id="", item_id="sku-01", event_type=pb.VIEW), "user_id"),
    ("RecordEvent", pb.RecordEventRequest(user_id="u", item_id="sku-01", event_type=pb.VIEW, timestamp_ms=(int(time.time()) + 3600) * 1000), "timestamp_ms"),
    # oversized strings in every RPC that takes ids
    ("SimilarItems", pb.SimilarItemsRequest(item_id="i" * 300, k=3), "item_id"),
    ("CrossSell", pb.CrossSellRequest(item_ids=["sku-01", "i" * 300], k=3), "item_ids[1]"),
    ("RecordEvent", pb.RecordEventRequest(user_id="u", item_id="i" * 300, event_type=pb.VIEW), "item_id"),
    ("RecordEvent", pb.RecordEventRequest(user_id="u" * 300, item_id="sku-01", event_type=pb.VIEW), "user_id"),
    ("BuyAgain", pb.BuyAgainRequest(user_id="u" * 300, k=3), "user_id"),
    ("BuyAgain", pb.BuyAgainRequest(user_id="", k=3), "user_id"),
    ("BuyAgain", pb.BuyAgainRequest(user_id="u", k=3, as_of_ms=-1), "as_of_ms"),
    ("Popular", pb.PopularRequest(k=3, category="c" * 300), "category"),
    ("Popular", pb.PopularRequest(k=3, segment="s" * 300), "segment"),
    ("Popular", pb.PopularRequest(k=3, user_id="u" * 300), "user_id"),
    ("Recommend", pb.RecommendRequest(user_id="u", k=3, segment="s" * 300), "segment"),
    ("Recommend", pb.RecommendRequest(user_id="u", k=3, filter=pb.Filter(exclude_item_ids=["x"] * 1001)), "filter.exclude_item_ids"),
    ("CrossSell", pb.CrossSellRequest(item_ids=["sku-01"], k=3, filter=pb.Filter(exclude_purchased=True)), "user_id"),
    ("Popular", pb.PopularRequest(k=3, filter=pb.Filter(exclude_purchased=True)), "user_id"),
]


@pytest.mark.parametrize(("rpc", "request_message", "field"), BAD_REQUESTS, ids=[f"{r}-{f}" for r, _, f in BAD_REQUESTS])
def test_bad_requests_name_the_field(memory_server: RunningServer, rpc: str, request_message: object, field: str) -> None:  # noqa: F811
    channel, client = stub_for(memory_server.target)
    with channel:
        details = invalid(getattr(client, rpc), request_message)
    assert details.startswith(f"{field}:"), details
    # and the server keeps serving
    with stub_for(memory_server.target)[0] as again:
        health = health_pb2_grpc.HealthStub(again).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


# -- health, reflection, metrics -----------------------------------------------------------------
def test_health_is_not_serving_until_a_model_is_published(bundle_dir: Path) -> None:  # noqa: F811
    url = f"memory://empty-{time.monotonic_ns()}"
    running = serve(url)
    try:
        channel, client = stub_for(running.target)
        with channel:
            health = health_pb2_grpc.HealthStub(channel)
            check = health_pb2.HealthCheckRequest(service="recsvc.v1.Recommender")
            assert health.Check(check, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError) as caught:
                client.Recommend(pb.RecommendRequest(user_id="u", k=3), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            open_store(url).publish(Bundle(bundle_dir), progress=False)
            deadline = time.monotonic() + 10
            while health.Check(check, timeout=5).status != health_pb2.HealthCheckResponse.SERVING:
                assert time.monotonic() < deadline, "never became SERVING"
                time.sleep(0.05)
            assert client.Recommend(pb.RecommendRequest(user_id="u", k=3), timeout=5).items
    finally:
        running.stop(0)


def test_reflection_lists_the_services(memory_server: RunningServer) -> None:  # noqa: F811
    channel, _ = stub_for(memory_server.target)
    with channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(stub.ServerReflectionInfo(iter([request]), timeout=5)))
        names = {s.name for s in reply.list_services_response.service}
    assert {"recsvc.v1.Recommender", "grpc.health.v1.Health"} <= names


def test_metrics_count_requests_and_fallbacks(memory_server: RunningServer) -> None:  # noqa: F811
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = value("recsvc_requests_total", rpc="Recommend", code="OK")
    bad_before = value("recsvc_requests_total", rpc="Recommend", code="INVALID_ARGUMENT")
    timed_before = value("recsvc_request_seconds_count", rpc="Recommend")
    personal_before = value("recsvc_answers_total", rpc="Recommend", source="personalized")
    lookups_before = value("recsvc_cache_lookups_total", cache="user", result="hit") + value(
        "recsvc_cache_lookups_total", cache="user", result="miss")
    channel, client = stub_for(memory_server.target)
    with channel:
        for _ in range(3):
            client.Recommend(pb.RecommendRequest(user_id=user_id(1), k=3), timeout=5)
        with pytest.raises(grpc.RpcError):
            client.Recommend(pb.RecommendRequest(user_id=user_id(1), k=0), timeout=5)
    assert value("recsvc_requests_total", rpc="Recommend", code="OK") == before + 3
    assert value("recsvc_requests_total", rpc="Recommend", code="INVALID_ARGUMENT") == bad_before + 1
    assert value("recsvc_request_seconds_count", rpc="Recommend") == timed_before + 4
    assert value("recsvc_answers_total", rpc="Recommend", source="personalized") == personal_before + 3
    lookups = value("recsvc_cache_lookups_total", cache="user", result="hit") + value(
        "recsvc_cache_lookups_total", cache="user", result="miss")
    assert lookups == lookups_before + 3  # one user-cache lookup per answered call
    version = memory_server.service.tracker.require().version
    assert value("recsvc_model_info", version=version) == 1.0
    # a store failure: the answer comes from the fallback and is counted as one
    fallbacks_before = value("recsvc_fallback_answers_total", rpc="Recommend")

    def unavailable(*_: object) -> None:
        raise StoreUnavailable("store down (test)")

    memory_server.store.user_features = unavailable  # type: ignore[method-assign]
    channel, client = stub_for(memory_server.target)
    with channel:
        reply = client.Recommend(pb.RecommendRequest(user_id="never-cached", k=3), timeout=5)
    assert reply.source == pb.FALLBACK
    assert value("recsvc_fallback_answers_total", rpc="Recommend") == fallbacks_before + 1
    assert value("recsvc_answers_total", rpc="Recommend", source="fallback") >= 1


# -- model swap ----------------------------------------------------------------------------------
def test_model_swap_under_traffic_never_mixes_versions(server: RunningServer, tmp_path: Path) -> None:
    first = server.service.tracker.require().version
    new_bundle = make_bundle(tmp_path, variant=1)
    seen: dict[str, set[tuple[str, ...]]] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def traffic() -> None:
        channel, client = stub_for(server.target)
        with channel:
            while not stop.is_set():
                try:
                    reply = client.Recommend(pb.RecommendRequest(user_id=user_id(1), k=8), timeout=5)
                except grpc.RpcError as exc:
                    errors.append(exc)
                    continue
                seen.setdefault(reply.model_version, set()).add(tuple(ids(reply)))

    threads = [threading.Thread(target=traffic) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    publisher = open_store(server.store.url)
    second = publisher.publish(Bundle(new_bundle), progress=False).version
    deadline = time.monotonic() + 10
    while second not in seen and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors
    assert set(seen) == {first, second}
    # Each version always gave the same answer: no response mixed the two versions.
    assert all(len(answers) == 1 for answers in seen.values()), seen
    assert seen[first] != seen[second]


# -- degradation ---------------------------------------------------------------------------------
@pytest.mark.redis
@pytest.mark.slow
def test_redis_stopped_and_restarted_during_requests(tmp_path: Path, bundle_dir: Path) -> None:  # noqa: F811
    port = free_port()
    redis_dir = tmp_path / "redis"
    extra = ("--appendonly", "yes", "--appendfsync", "always")  # data survives the restart
    process = start_redis(redis_dir, port, *extra)
    running = serve(f"redis://127.0.0.1:{port}/0", bundle_dir, retry_after_ms=100.0)
    sources: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()
    users = [user_id(u) for u in range(8)]

    def traffic() -> None:
        channel, client = stub_for(running.target)
        with channel:
            count = 0
            while not stop.is_set():
                try:
                    reply = client.Recommend(pb.RecommendRequest(user_id=users[count % 8], k=5), timeout=1.0)
                    sources.append(reply.source)
                    assert len(reply.items) == 5
                except (grpc.RpcError, AssertionError) as exc:
                    failures.append(exc)
                count += 1

    try:
        threads = [threading.Thread(target=traffic) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # every user answered once: their lists are in the hot cache
        process.terminate()
        process.wait(timeout=10)
        time.sleep(1.0)
        during = len(sources)
        assert pb.FALLBACK in sources[during // 2 :]
        process = start_redis(redis_dir, port, *extra)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sources[-1:] != [pb.PERSONALIZED]:
            time.sleep(0.05)
        stop.set()
        for thread in threads:
            thread.join()
        assert not failures, failures[:3]
        assert sources[-1] == pb.PERSONALIZED, "did not recover after Redis came back"
    finally:
        stop.set()
        running.stop(0)
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def _served_over_redis(
    directory: Path, bundle: Path, **settings: object
) -> Iterator[tuple[subprocess.Popen[bytes], RunningServer, Any]]:
    """A real Redis in `directory` holding `bundle`, a server over it (`settings`) and a
    client stub: (redis process, server, stub); all three stopped afterwards."""
    port = free_port()
    process = start_redis(directory, port)
    try:
        running = serve(f"redis://127.0.0.1:{port}/0", bundle, **settings)
        channel, client = stub_for(running.target)
        try:
            yield process, running, client
        finally:
            channel.close()
            running.stop(0)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.mark.redis
@pytest.mark.parametrize("watch", [False, True], ids=["store-read", "event-watch"])
def test_slow_redis_answers_within_the_deadline_then_from_fallback(
    tmp_path: Path, bundle_dir: Path, watch: bool  # noqa: F811
) -> None:
    with _served_over_redis(tmp_path / "redis", bundle_dir, realtime_watch=watch) as (
        process, running, client,
    ):  # fmt: skip
        if watch:
            _watch_ready(running)
        warm = client.Recommend(pb.RecommendRequest(user_id=user_id(1), k=5), timeout=5)
        os.kill(process.pid, signal.SIGSTOP)  # Redis hangs: every store call would time out
        try:
            # A cached user: every answer comes within the deadline with their last-known
            # list. Reading the store, the first answer already says FALLBACK. With the event
            # watch no store read is needed, so answers stay PERSONALIZED (still correct: no
            # event can be recorded while Redis hangs) until the watch's heartbeat notices,
            # within store_timeout_ms + 50 ms; from then on they say FALLBACK. The deadline
            # lies between one and two store timeouts (100 ms): the client's retry must not
            # outlast it.
            sources = []
            hung = time.monotonic()
            while not sources or sources[-1] != pb.FALLBACK:
                assert time.monotonic() - hung < 2.0, f"never switched to FALLBACK: {sources}"
                # an answer past the deadline raises DEADLINE_EXCEEDED here
                reply = client.Recommend(pb.RecommendRequest(user_id=user_id(1), k=5), timeout=0.18)
                assert ids(reply) == ids(warm)
                sources.append(reply.source)
                time.sleep(0.01)
            assert set(sources) <= {pb.PERSONALIZED, pb.FALLBACK}
            if not watch:
                assert sources == [pb.FALLBACK]
            for _ in range(5):
                started = time.monotonic()
                reply = client.Recommend(pb.RecommendRequest(user_id=user_id(1), k=5), timeout=0.3)
                assert time.monotonic() - started < 0.3
                assert reply.source == pb.FALLBACK
                assert ids(reply) == ids(warm)  # the user's last-known list from the hot cache
                cold = client.Recommend(pb.RecommendRequest(user_id="someone-else", k=3), timeout=0.3)
                assert cold.source == pb.FALLBACK and ids(cold) == [item_id(39), item_id(38), item_id(37)]
        finally:
            os.kill(process.pid, signal.SIGCONT)


@pytest.mark.redis
def test_warm_up_caches_every_user_of_a_new_version_before_they_ask(
    tmp_path: Path, bundle_dir: Path  # noqa: F811
) -> None:
    with _served_over_redis(tmp_path / "redis", bundle_dir, realtime_watch=False) as (
        process, running, client,
    ):  # fmt: skip
        warmer = running.service.warmer
        version = running.service.tracker.require().version
        deadline = time.monotonic() + 10
        while version not in warmer.finished:
            assert time.monotonic() < deadline, "the warm-up did not finish"
            time.sleep(0.02)
        users = [user_id(u) for u in (3, 5, 7)]
        os.kill(process.pid, signal.SIGSTOP)
        try:
            # Users who never asked still get their own list while the store hangs.
            hung = [client.Recommend(pb.RecommendRequest(user_id=u, k=5), timeout=0.3) for u in users]
        finally:
            os.kill(process.pid, signal.SIGCONT)
        assert all(reply.source == pb.FALLBACK for reply in hung)
        deadline = time.monotonic() + 5
        while True:  # the breaker closes again after retry_after_ms
            healthy = [client.Recommend(pb.RecommendRequest(user_id=u, k=5), timeout=5) for u in users]
            if all(reply.source == pb.PERSONALIZED for reply in healthy):
                break
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.05)
        assert [ids(r) for r in hung] == [ids(r) for r in healthy]
        assert healthy[1].items[0].item_id == item_id(12)  # user 5's planted favourite


def test_drain_lets_in_flight_calls_finish(tmp_path: Path, bundle_dir: Path) -> None:  # noqa: F811
    port = free_port()
    process = start_redis(tmp_path / "redis", port)
    running = serve(f"redis://127.0.0.1:{port}/0", bundle_dir, store_timeout_ms=1000.0)
    channel, client = stub_for(running.target)
    try:
        os.kill(process.pid, signal.SIGSTOP)  # calls now wait a full store timeout in flight
        futures = [
            client.Recommend.future(pb.RecommendRequest(user_id=user_id(u), k=3), timeout=10)
            for u in range(3)
        ]
        time.sleep(0.3)
        stopped = threading.Thread(target=running.stop, args=(5.0,))
        stopped.start()
        time.sleep(0.1)
        with pytest.raises(grpc.RpcError) as caught:  # new calls are refused while draining
            client.Recommend(pb.RecommendRequest(user_id=user_id(1), k=3), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        for future in futures:  # the calls in flight all finish, answered from the fallback
            assert future.result().source == pb.FALLBACK
        stopped.join()
        # no drain delay, yet the refusal step ran (calls received but not started get
        # UNAVAILABLE, which clients retry, rather than CANCELLED)
        assert running.drain is not None and running.drain.refusing.is_set()
    finally:
        os.kill(process.pid, signal.SIGCONT)
        channel.close()
        process.terminate()
        process.wait(timeout=10)


# -- the CLI -------------------------------------------------------------------------------------
def _start_cli(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "recsvc.cli", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _wait_serving(target: str, process: subprocess.Popen[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"{target} never became SERVING")


def _scrape(port: int) -> dict[str, float]:
    """The samples of the metrics endpoint on `port`: 'name{label="v",...}' -> value."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_cli_serve_bundle_and_sigterm_drain(bundle_dir: Path, workers: int) -> None:  # noqa: F811
    port, metrics_port = free_port(), free_port()
    process = _start_cli("--bundle", str(bundle_dir), "--port", str(port), "--workers", str(workers), "--grace", "3",
                         "--insecure-no-auth", "--metrics-port", str(metrics_port))
    target = f"127.0.0.1:{port}"
    try:
        _wait_serving(target, process)
        if workers > 1:  # every worker loaded its model: fresh connections land on any of them
            for _ in range(12):
                _wait_serving(target, process)
        before = _scrape(metrics_port)
        for _ in range(4):  # separate channels: SO_REUSEPORT spreads them over the workers
            channel, client = stub_for(target)
            with channel:
                reply = client.Recommend(pb.RecommendRequest(user_id=user_id(1), k=3), timeout=5)
                assert ids(reply) == [item_id(12), item_id(13), item_id(14)]
        # the metrics port sums every worker: requests, latency per RPC, answers, model version
        after = _scrape(metrics_port)

        def grew(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        assert grew('recsvc_requests_total{code="OK",rpc="Recommend"}') == 4
        assert grew('recsvc_request_seconds_count{rpc="Recommend"}') == 4
        assert grew('recsvc_answers_total{rpc="Recommend",source="personalized"}') == 4
        assert after[f'recsvc_model_info{{version="{Bundle(bundle_dir).version}"}}'] == 1.0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "listening on" in (process.stdout.read() if process.stdout else "")


def test_cli_serve_needs_a_store_or_a_bundle() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "recsvc.cli", "serve", "--store", "nosuch://x", "--port", "0", "--insecure-no-auth"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )
    assert result.returncode == 2
    assert "--store" in result.stderr.strip().splitlines()[-1]


# -- validation as a property --------------------------------------------------------------------
KNOWN_FIELDS = ("user_id", "k", "segment", "filter.")


@settings(max_examples=150, deadline=None)
@given(
    user=st.text(max_size=300),
    k=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    categories=st.lists(st.text(max_size=20), max_size=5),
    low=st.none() | st.floats(allow_nan=True),
    high=st.none() | st.floats(allow_nan=True),
)
def test_recommend_validation_accepts_or_names_the_field(
    user: str, k: int, categories: list[str], low: float | None, high: float | None
) -> None:
    flt = pb.Filter(categories=categories)
    if low is not None:
        flt.min_price = low
    if high is not None:
        flt.max_price = high
    request = pb.RecommendRequest(user_id=user, k=k, filter=flt)
    try:
        query = Validator(ServeConfig()).recommend(request)
    except InvalidInput as error:
        assert error.field.startswith(KNOWN_FIELDS), error.field
        return
    assert 1 <= query.k <= 100 and query.user_id == user and 0 < len(user) <= 256
    for bound in (query.filter.min_price, query.filter.max_price):
        assert bound is None or 0 <= bound <= 1e15
    if query.filter.min_price is not None and query.filter.max_price is not None:
        assert query.filter.min_price <= query.filter.max_price


@pytest.mark.redis
def test_refused_reads_after_the_users_degrade_to_fallback_not_errors(
    redis_url: str, bundle_dir: Path  # noqa: F811
) -> None:
    """Redis refuses the similar-items reads (an ACL without the item keys: NOPERM) while it
    serves the user's own record: the real-time re-score, SimilarItems and CrossSell answer
    from what they have (source FALLBACK), and RecordEvent says UNAVAILABLE, never INTERNAL."""
    prefix = f"acl{time.monotonic_ns()}"
    admin = redis.Redis.from_url(redis_url)
    open_store(f"{redis_url}?prefix={prefix}").publish(Bundle(bundle_dir), progress=False)
    admin.execute_command(
        "ACL", "SETUSER", prefix, "on", f">{prefix}-pw", "+@all", "resetchannels", "&*",
        "resetkeys", f"~{prefix}:{{u*", f"%R~{prefix}:{{g}}*", f"%R~{prefix}:{{v:*",
    )
    host = redis_url.split("://", 1)[1]
    running = serve(f"redis://{prefix}:{prefix}-pw@{host}?prefix={prefix}", warm_users=False)
    channel, client = stub_for(running.target)
    try:
        client.RecordEvent(pb.RecordEventRequest(user_id=user_id(5), item_id=item_id(12),
                                                 event_type=pb.PURCHASE), timeout=5)
        reply = client.Recommend(pb.RecommendRequest(user_id=user_id(5), k=5), timeout=5)
        assert reply.source == pb.FALLBACK and len(reply.items) == 5
        assert item_id(12) not in ids(reply)
        similar = client.SimilarItems(pb.SimilarItemsRequest(item_id=item_id(3), k=3), timeout=5)
        assert similar.source == pb.FALLBACK and len(similar.items) == 3
        admin.execute_command("ACL", "SETUSER", prefix, "resetkeys", f"%R~{prefix}:*")  # read-only
        with pytest.raises(grpc.RpcError) as refused:
            client.RecordEvent(pb.RecordEventRequest(user_id=user_id(6), item_id=item_id(2),
                                                     event_type=pb.VIEW), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()
        running.stop(0)
        admin.execute_command("ACL", "DELUSER", prefix)
        admin.close()


# -- the circuit breaker -------------------------------------------------------------------------
def test_breaker_opens_on_store_trouble_not_on_hurried_callers() -> None:
    from recsvc.errors import StoreUnavailable
    from serving.fallback import StoreGuard

    guard = StoreGuard(retry_after=0.05, store_timeout=0.1)

    def slow() -> str:
        time.sleep(0.04)
        return "late"

    for budget in (0.0, -1.0, 0.005):  # the caller's deadline, not the store, is the problem
        with pytest.raises(StoreUnavailable):
            guard.call(slow, budget=budget)
        assert not guard.degraded
    with pytest.raises(StoreUnavailable):
        guard.call(slow, budget=0.02)  # a store slower than a reasonable deadline
    assert guard.degraded
    with pytest.raises(StoreUnavailable):  # open: answered at once from the cache
        guard.call(lambda: "ok")
    time.sleep(0.06)
    assert guard.call(lambda: "ok") == "ok"  # the probe succeeds and closes the breaker
    assert not guard.degraded
    guard.close()


def test_a_slow_working_store_serves_every_handler_thread_within_their_deadlines(
    bundle_dir: Path,  # noqa: F811
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from recsvc.errors import StoreUnavailable
    from serving.fallback import StoreGuard

    threads = 16  # handler threads, each with a deadline under two store timeouts
    running = serve(f"memory://threads{time.monotonic_ns()}", bundle_dir, threads=threads)
    try:
        assert running.service.guard.threads == threads  # one bounded store call per thread
    finally:
        running.stop(0)
    guard = StoreGuard(retry_after=1.0, store_timeout=0.1, threads=threads)

    def call(_: int) -> bool:
        try:
            return guard.call(lambda: time.sleep(0.05) or True, budget=0.14)
        except StoreUnavailable:
            return False

    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(call, range(4 * threads)))
    guard.close()
    assert all(answers) and not guard.degraded


# -- the storefront demo -------------------------------------------------------------------------
def test_storefront_demo_calls_every_rpc(memory_server: RunningServer, bundle_dir: Path) -> None:  # noqa: F811
    from serving.demo_client import run_storefront_demo

    text = run_storefront_demo(memory_server.target, bundle_dir)
    for call in ("Recommend(", "SimilarItems(", "CrossSell(", "BuyAgain(", "Popular(", "RecordEvent(", "version"):
        assert call in text, call
    assert "is no longer recommended" in text
    assert "INVALID_ARGUMENT: k: must be between 1 and 100" in text


def test_warmed_users_stay_cached_past_the_ttl(bundle_dir: Path) -> None:  # noqa: F811
    from prometheus_client import REGISTRY

    def misses() -> float:
        return REGISTRY.get_sample_value("recsvc_cache_lookups_total", {"cache": "user", "result": "miss"}) or 0.0

    running = serve(f"memory://ttl{time.monotonic_ns()}", bundle_dir, hot_user_ttl_seconds=0.4)
    channel, client = stub_for(running.target)
    try:
        version = running.service.tracker.require().version
        deadline = time.monotonic() + 10
        while version not in running.service.warmer.finished:
            assert time.monotonic() < deadline, "the warm-up did not finish"
            time.sleep(0.02)
        time.sleep(1.0)  # more than twice the TTL: refreshed in the background meanwhile
        before = misses()
        reads: list[str] = []
        real_read = running.store.user_features

        def counted(version: str, user: str, *rest: Any) -> Any:
            reads.append(user)
            return real_read(version, user, *rest)

        running.store.user_features = counted  # type: ignore[method-assign]
        for user in (2, 4, 6):
            reply = client.Recommend(pb.RecommendRequest(user_id=user_id(user), k=3), timeout=5)
            assert reply.source == pb.PERSONALIZED
        assert reads == []  # every one answered from the cache, no full store read
        assert misses() == before
        client.Recommend(pb.RecommendRequest(user_id="not-warmed", k=3), timeout=5)
        assert reads == ["not-warmed"] and misses() == before + 1  # the counting is live
    finally:
        channel.close()
        running.stop(0)


# -- the real-time event watch (serve realtime_watch) -------------------------------------------
def _watch_ready(running: RunningServer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        watch = running.service.events_watch
        if watch is not None and watch.ready:
            return
        time.sleep(0.02)
    raise AssertionError("the event watch did not become ready")


@pytest.mark.redis
def test_event_watch_skips_reads_and_sees_events_from_other_servers(redis_url: str, bundle_dir: Path) -> None:  # noqa: F811
    url = f"{redis_url}?prefix=w{time.monotonic_ns()}"
    first = serve(url, bundle_dir, realtime_watch=True)
    second = serve(url, None, realtime_watch=True)
    third: RunningServer | None = None
    channels = []
    try:
        _watch_ready(first)
        _watch_ready(second)
        clients = []
        for running in (first, second):
            channel, client = stub_for(running.target)
            channels.append(channel)
            clients.append(client)
        a, b = clients
        before = b.Recommend(pb.RecommendRequest(user_id=user_id(5), k=5), timeout=5)
        assert ids(before)[0] == item_id(12) and before.source == pb.PERSONALIZED
        watch = second.service.events_watch
        assert watch.quiet(user_id(5))  # cached, no events: the next answer reads nothing
        assert b.Recommend(pb.RecommendRequest(user_id=user_id(5), k=5), timeout=5) == before
        # An event recorded through another server changes this server's very next answer.
        a.RecordEvent(pb.RecordEventRequest(user_id=user_id(5), item_id=item_id(12),
                                            event_type=pb.PURCHASE), timeout=5)
        after = b.Recommend(pb.RecommendRequest(user_id=user_id(5), k=5), timeout=5)
        assert item_id(12) not in ids(after) and after.source == pb.REALTIME
        assert not watch.quiet(user_id(5)) and watch.quiet(user_id(6))
        # A server started later rebuilds the set from the stored real-time lists.
        third = serve(url, None, realtime_watch=True)
        _watch_ready(third)
        assert not third.service.events_watch.quiet(user_id(5))
        channel, c = stub_for(third.target)
        channels.append(channel)
        for _ in range(2):  # uncached, then cached
            reply = c.Recommend(pb.RecommendRequest(user_id=user_id(5), k=5), timeout=5)
            assert item_id(12) not in ids(reply) and reply.source == pb.REALTIME
    finally:
        for channel in channels:
            channel.close()
        for running in (first, second, third):
            if running is not None:
                running.stop(0)


@pytest.mark.redis
def test_event_recorded_while_the_watch_lost_its_subscription_is_not_missed(
    redis_url: str, bundle_dir: Path  # noqa: F811
) -> None:
    url = f"{redis_url}?prefix=k{time.monotonic_ns()}"
    running = serve(url, bundle_dir)  # the watch is on by default over a single Redis
    channel, client = stub_for(running.target)
    admin = redis.Redis.from_url(redis_url)
    try:
        _watch_ready(running)
        watch = running.service.events_watch
        before = client.Recommend(pb.RecommendRequest(user_id=user_id(5), k=5), timeout=5)
        assert before.source == pb.PERSONALIZED and watch.quiet(user_id(5))
        rebuilds = watch.rebuilds
        # Redis drops the subscriber connection; the event's message reaches no subscriber.
        admin.client_kill_filter(_type="pubsub")
        other = open_store(url)
        other.record_event(user_id(5), item_id(12), "purchase")
        other.close()
        for _ in range(3):  # at once, and after the watch re-subscribed and rebuilt its set
            reply = client.Recommend(pb.RecommendRequest(user_id=user_id(5), k=5), timeout=5)
            assert reply.source == pb.REALTIME and item_id(12) not in ids(reply)
            deadline = time.monotonic() + 5
            while not (watch.ready and watch.rebuilds > rebuilds):
                assert time.monotonic() < deadline, "the watch did not re-subscribe"
                time.sleep(0.02)
        assert not watch.quiet(user_id(5)) and watch.quiet(user_id(6))
    finally:
        admin.close()
        channel.close()
        running.stop(0)


@pytest.mark.redis
@pytest.mark.slow
def test_event_watch_is_rebuilt_after_redis_restarts(tmp_path: Path, bundle_dir: Path) -> None:  # noqa: F811
    port = free_port()
    redis_dir = tmp_path / "redis"
    extra = ("--appendonly", "yes", "--appendfsync", "always")
    process = start_redis(redis_dir, port, *extra)
    url = f"redis://127.0.0.1:{port}/0"
    running = serve(url, bundle_dir, realtime_watch=True, retry_after_ms=100.0)
    channel, client = stub_for(running.target)
    try:
        _watch_ready(running)
        watch = running.service.events_watch
        assert client.Recommend(pb.RecommendRequest(user_id=user_id(5), k=5), timeout=5).source == pb.PERSONALIZED
        process.terminate()
        process.wait(timeout=10)
        deadline = time.monotonic() + 5
        while watch.ready and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not watch.ready and not watch.quiet(user_id(5))  # untrusted while Redis is gone
        reply = client.Recommend(pb.RecommendRequest(user_id=user_id(5), k=5), timeout=5)
        assert reply.source == pb.FALLBACK  # the store call was made, and failed
        process = start_redis(redis_dir, port, *extra)
        # An event recorded by another process while this server may not be subscribed yet.
        other = open_store(url)
        other.record_event(user_id(5), item_id(12), "purchase")
        other.close()
        _watch_ready(running)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            reply = client.Recommend(pb.RecommendRequest(user_id=user_id(5), k=5), timeout=5)
            if reply.source != pb.FALLBACK:
                break
            time.sleep(0.05)
        assert reply.source == pb.REALTIME and item_id(12) not in ids(reply)
    finally:
        channel.close()
        running.stop(0)
        process.terminate()
        process.wait(timeout=10)


# -- `make demo` (recsvc demo) -------------------------------------------------------------------
@pytest.mark.slow
def test_recsvc_demo_trains_serves_and_calls_every_rpc(tmp_path: Path) -> None:
    """What `make demo` runs: synth, train, `serve --bundle` on a free port as processes, then
    every RPC as a storefront; the walk's own checks (planted partners, filter, purchase) hold."""
    import re

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "recsvc.cli", "demo", "--dir", str(tmp_path / "demo"),
         "--users", "400", "--items", "80", "--days", "60"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert re.search(r"version \S+ \(trained .*\), recommender \w+, 400 users, 80 items", out)  # GetModelInfo
    answered = set(re.findall(r"^   (\w+)\(.*\) -> \d+ items, source \w+$", out, flags=re.M))
    assert answered == {"Recommend", "SimilarItems", "CrossSell", "BuyAgain", "Popular"}, out
    sources = re.findall(r"-> (\d+) items, source (\w+)$", out, flags=re.M)
    assert all(int(n) > 0 for n, _ in sources), out  # every call answered something
    assert {"PERSONALIZED", "POPULAR", "SEGMENT", "REALTIME"} <= {s for _, s in sources}
    assert re.search(r"RecordEvent\(VIEW\) x\d+", out)
    assert "is no longer recommended" in out  # RecordEvent(PURCHASE) reached the next answer
    assert "planted partner of" in out and "every item in stock, at most 20.00, not excluded" in out
    assert "BROKEN" not in out and "is NOT" not in out and "STILL" not in out, out
    assert "Recommend(k=0) -> INVALID_ARGUMENT: k:" in out
    assert "demo finished" in out
