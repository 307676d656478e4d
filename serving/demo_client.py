"""A storefront's calls, as a demo: every RPC against a running server, as readable text.

`run_storefront_demo(target, info)` walks through the pages of a shop: the home page of a
returning and of a new shopper, a product page, a cart, buy-again reminders, popular lists,
real-time events changing the next answer, filters, and a bad request. `info` is what is known
about the data: a synthetic store's ground truth (dict or `ground_truth.json` path) to pick
shoppers and items with planted structure and say whether the answers find it; a bundle
directory; or None (ids then come from the server's own answers).

    python -m serving.demo_client --target 127.0.0.1:50051 [--ground-truth FILE | --bundle DIR]
        [--token TOKEN (default $RECSVC_TOKEN)] [--tls-ca ca.pem [--tls-cert c.pem --tls-key k.pem]]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc

from recsvc.client import ClientSecurity
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

TIMEOUT = 5.0
SOURCE_NAMES = {value: name for name, value in pb.Source.items()}


def _load_info(info: Any) -> dict[str, Any]:
    """Ground truth as a dict (empty when not given), from a dict, JSON file or bundle dir."""
    if info is None:
        return {}
    if isinstance(info, dict):
        return info
    path = Path(info)
    if path.is_file():
        loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        items = path.with_name("items.csv")  # `recsvc synth` writes it beside the ground truth
        if items.is_file():
            loaded["catalog"] = _read_catalog(items)
        return loaded
    if path.is_dir():
        from recsvc.bundle import Bundle

        bundle = Bundle(path)
        catalog = bundle.catalog
        return {
            "bundle_users": list(bundle.users.ids[:50]),
            "catalog": {
                str(item): (str(category), float(price), bool(stock))
                for item, category, price, stock in zip(
                    bundle.items.ids, catalog.category, catalog.price, catalog.in_stock, strict=True
                )
            },
        }
    return {}


def _read_catalog(path: Path) -> dict[str, tuple[str, float, bool]]:
    """item id -> (category, price, in stock) of a synthetic store's items.csv."""
    catalog: dict[str, tuple[str, float, bool]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            price = float(row.get("price") or "nan")
            stock = (row.get("in_stock") or "true").strip().lower() in ("true", "1", "yes")
            catalog[row["item_id"]] = (row.get("category") or "", price, stock)
    return catalog


def _epoch_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


class _Page:
    """Collects the demo's text."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def title(self, text: str) -> None:
        self.lines += ["", f"== {text}"]

    def say(self, text: str) -> None:
        self.lines.append(f"   {text}")

    def answer(self, call: str, reply: Any) -> None:
        source = SOURCE_NAMES.get(reply.source, str(reply.source))
        self.lines.append(f"   {call} -> {len(reply.items)} items, source {source}")
        for rank, item in enumerate(reply.items, 1):
            self.lines.append(f"     {rank:>2}. {item.item_id:<14} {item.score:8.3f}  {item.reason}")

    def text(self) -> str:
        return "\n".join(self.lines).lstrip("\n") + "\n"


def run_storefront_demo(
    target: str, bundle_or_store_info: Any = None, security: ClientSecurity | None = None
) -> str:
    """Call every RPC of the server at `target` as a storefront would; return what happened.

    security: token and TLS settings (default: plaintext, token from $RECSVC_TOKEN if set).
    """
    truth = _load_info(bundle_or_store_info)
    page = _Page()
    security = security if security is not None else ClientSecurity.from_env()
    with security.channel(target) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        _walk(stub, truth, page)
    return page.text()


def _walk(stub: pb_grpc.RecommenderStub, truth: dict[str, Any], page: _Page) -> None:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
    page.title("Model")
    page.say(
        f"version {info.model_version} (trained {info.created_at}), recommender "
        f"{info.default_recommender}, {info.n_users} users, {info.n_items} items"
    )
    page.say(f"popularity lists: {', '.join(info.popularity_lists) or '-'}; segments: "
             f"{', '.join(info.segments) or '-'}")

    cycles = truth.get("cycles") or []
    catalog: dict[str, tuple[str, float, bool]] = truth.get("catalog") or {}
    user_cluster: dict[str, int] = truth.get("user_cluster") or {}
    item_cluster: dict[str, int] = truth.get("item_cluster") or {}
    shopper = (
        cycles[0]["user_id"] if cycles
        else next(iter(user_cluster), None) or (truth.get("bundle_users") or ["shopper-1"])[0]
    )

    page.title(f"Home page of a returning shopper ({shopper})")
    home = stub.Recommend(pb.RecommendRequest(user_id=shopper, k=5), timeout=TIMEOUT)
    page.answer("Recommend(k=5)", home)
    if shopper in user_cluster and item_cluster and home.items:
        share = sum(item_cluster.get(i.item_id) == user_cluster[shopper] for i in home.items)
        page.say(f"{share} of {len(home.items)} from the shopper's planted taste cluster")

    page.title("Home page of a first-time visitor")
    page.answer("Recommend(new visitor, k=5)",
                stub.Recommend(pb.RecommendRequest(user_id="first-time-visitor", k=5), timeout=TIMEOUT))
    if info.segments:
        segment = info.segments[0]
        page.answer(
            f"Recommend(new visitor, segment={segment!r}, k=3)",
            stub.Recommend(pb.RecommendRequest(user_id="first-time-visitor", k=3, segment=segment),
                           timeout=TIMEOUT),
        )

    product = home.items[0].item_id if home.items else None
    if product is None:
        popular = stub.Popular(pb.PopularRequest(k=1), timeout=TIMEOUT)
        product = popular.items[0].item_id if popular.items else None
    if product is not None:
        page.title(f"Product page of {product}")
        page.answer("SimilarItems(k=5)",
                    stub.SimilarItems(pb.SimilarItemsRequest(item_id=product, k=5), timeout=TIMEOUT))

    pairs: list[list[str]] = truth.get("pairs") or []
    carts = [[pairs[0][0]]] if pairs else ([[product]] if product else [])  # a product page
    if len(pairs) > 1:
        carts.append([pairs[1][0], pairs[0][0]])  # then a cart of two
    for cart in carts:
        page.title(f"Cart holding {', '.join(cart)}")
        reply = stub.CrossSell(pb.CrossSellRequest(item_ids=cart, k=5), timeout=TIMEOUT)
        page.answer("CrossSell(k=5)", reply)
        answered = [i.item_id for i in reply.items]
        for first, partner in pairs:
            if first in cart:
                found = "is" if partner in answered else "is NOT"
                page.say(f"planted partner of {first}, {partner}, {found} in the answer")

    page.title(f"Buy-again reminders for {shopper}")
    as_of = 0
    if cycles:
        # Synthetic data lies in the past: ask what was due when its log ends.
        as_of = _epoch_ms(truth["end"]) if truth.get("end") else 0
        page.say(f"planted cycle: {cycles[0]['item_id']} every {cycles[0]['period_days']} days, "
                 f"next due {cycles[0]['next_due']}")
    reply = stub.BuyAgain(pb.BuyAgainRequest(user_id=shopper, k=5, as_of_ms=as_of), timeout=TIMEOUT)
    page.answer(f"BuyAgain(k=5{', as of the end of the log' if as_of else ''})", reply)

    page.title("Popular lists")
    page.answer("Popular(k=5)", stub.Popular(pb.PopularRequest(k=5), timeout=TIMEOUT))
    page.answer("Popular(trending, k=5)",
                stub.Popular(pb.PopularRequest(k=5, trending=True), timeout=TIMEOUT))
    if info.segments:
        page.answer(f"Popular(segment={info.segments[0]!r}, k=3)",
                    stub.Popular(pb.PopularRequest(k=3, segment=info.segments[0]), timeout=TIMEOUT))
    categories = sorted({category for category, _, _ in catalog.values()} - {""})
    if categories:
        page.answer(f"Popular(category={categories[0]!r}, k=3)",
                    stub.Popular(pb.PopularRequest(k=3, category=categories[0]), timeout=TIMEOUT))

    page.title("Real time: a new visitor browses, then the home page reacts")
    visitor = "demo-visitor"
    browsed = _browse_items(item_cluster, stub)
    for item in browsed:
        stub.RecordEvent(pb.RecordEventRequest(user_id=visitor, item_id=item, event_type=pb.VIEW),
                         timeout=TIMEOUT)
    page.say(f"RecordEvent(VIEW) x{len(browsed)}: {', '.join(browsed)}")
    reply = stub.Recommend(pb.RecommendRequest(user_id=visitor, k=5), timeout=TIMEOUT)
    page.answer("Recommend(k=5)", reply)
    if item_cluster and browsed:
        cluster = item_cluster.get(browsed[0])
        share = sum(item_cluster.get(i.item_id) == cluster for i in reply.items)
        page.say(f"{share} of {len(reply.items)} from the browsed items' cluster")

    if home.items:
        bought = home.items[0].item_id
        page.title(f"Real time: {shopper} buys {bought}")
        stub.RecordEvent(pb.RecordEventRequest(user_id=shopper, item_id=bought, event_type=pb.PURCHASE),
                         timeout=TIMEOUT)
        reply = stub.Recommend(pb.RecommendRequest(user_id=shopper, k=5), timeout=TIMEOUT)
        page.answer("Recommend(k=5)", reply)
        gone = bought not in [i.item_id for i in reply.items]
        page.say(f"{bought} {'is no longer recommended' if gone else 'is STILL recommended'}")

    plain = stub.Recommend(pb.RecommendRequest(user_id=shopper, k=5), timeout=TIMEOUT)
    excluded = plain.items[0].item_id if plain.items else None
    page.title(f"Filters: in stock, at most 20.00, without {excluded or 'any item'}")
    flt = pb.Filter(in_stock_only=True, max_price=20.0,
                    exclude_item_ids=[excluded] if excluded else [])
    filtered = stub.Recommend(pb.RecommendRequest(user_id=shopper, k=5, filter=flt), timeout=TIMEOUT)
    page.answer("Recommend(k=5, filter)", filtered)
    if catalog:

        def refused(item: str) -> str:
            """Why the filter refuses `item` ('' when it allows it)."""
            _, price, stock = catalog.get(item, ("", float("nan"), True))
            return ("excluded" if item == excluded else "out of stock" if not stock
                    else f"price {price:.2f}" if price > 20.0 else "")

        for item in plain.items:
            if why := refused(item.item_id):
                page.say(f"{item.item_id} of the unfiltered answer left: {why}")
        broken = [i.item_id for i in filtered.items if refused(i.item_id)]
        page.say("every item in stock, at most 20.00, not excluded" if not broken
                 else f"FILTER BROKEN by {', '.join(broken)}")

    page.title("A bad request")
    try:
        stub.Recommend(pb.RecommendRequest(user_id=shopper, k=0), timeout=TIMEOUT)
        page.say("k=0 was accepted (unexpected)")
    except grpc.RpcError as error:
        page.say(f"Recommend(k=0) -> {error.code().name}: {error.details()}")


def _browse_items(item_cluster: dict[str, int], stub: pb_grpc.RecommenderStub) -> list[str]:
    """Three items of one planted cluster (or three popular items without ground truth)."""
    if item_cluster:
        first_cluster = next(iter(item_cluster.values()))
        return [i for i, c in item_cluster.items() if c == first_cluster][:3]
    reply = stub.Popular(pb.PopularRequest(k=3, trending=True), timeout=TIMEOUT)
    return [i.item_id for i in reply.items]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.demo_client", description=__doc__)
    parser.add_argument("--target", required=True, help="host:port of a running recsvc server")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--ground-truth", help="ground_truth.json of a synthetic store")
    source.add_argument("--bundle", help="the bundle the server serves")
    parser.add_argument("--token", default=None, help="bearer token (default $RECSVC_TOKEN)")
    parser.add_argument("--tls-ca", default=None, help="PEM CA of the server certificate: use TLS")
    parser.add_argument("--tls-cert", default=None, help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", default=None, help="PEM key of --tls-cert")
    parser.add_argument("--tls-server-name", default=None,
                        help="name to check the server certificate against (default: the host)")
    args = parser.parse_args(argv)
    security = ClientSecurity.from_env(
        args.token, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
        server_name=args.tls_server_name,
    )
    try:
        sys.stdout.write(run_storefront_demo(args.target, args.ground_truth or args.bundle, security))
    except grpc.RpcError as error:
        print(f"demo_client: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
