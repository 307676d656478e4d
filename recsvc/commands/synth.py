"""`recsvc synth`: write a seeded synthetic store (events, items, ground truth) to a directory."""

from __future__ import annotations

import argparse
import time
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate a seeded synthetic store: events, items and the planted ground truth",
        description=(
            "Simulate shoppers (taste clusters, a view/cart/purchase funnel, orders, items "
            "bought together, repurchase cycles) and write events.csv (or .parquet), items.csv "
            "and ground_truth.json. The same arguments always give byte-identical files."
        ),
    )
    parser.add_argument("--users", type=int, default=20_000, help="number of users (default 20000)")
    parser.add_argument("--items", type=int, default=3_000, help="number of items (default 3000)")
    parser.add_argument("--days", type=int, default=120, help="length of the log (default 120)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument(
        "--format",
        choices=["csv", "parquet"],
        default="csv",
        help="format of the events file (default csv)",
    )
    parser.add_argument("--categories", type=int, default=20, help="item categories (default 20)")
    parser.add_argument("--clusters", type=int, default=8, help="taste clusters (default 8)")
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help="approximate number of events (default: users x max(20, days / 2))",
    )
    parser.add_argument(
        "--start", default="2026-01-01", help="first day of the log, UTC (default 2026-01-01)"
    )
    parser.add_argument("--chunk-rows", type=int, default=1_000_000, help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recsvc.errors import InvalidInput
    from recsvc.synth import SynthConfig, generate, parse_start, write

    if not args.out.strip():  # an unset shell variable: the files would land in the cwd
        raise InvalidInput("--out", "give the output directory (it is empty)")
    if args.chunk_rows < 1:
        raise InvalidInput("--chunk-rows", "must be at least 1")
    started = time.perf_counter()
    config = SynthConfig(
        users=args.users,
        items=args.items,
        days=args.days,
        seed=args.seed,
        categories=args.categories,
        clusters=args.clusters,
        events=args.events,
        start=parse_start(args.start),
    )
    store = generate(config)
    paths = write(store, args.out, fmt=args.format, chunk_rows=args.chunk_rows)
    counts = store.counts()
    print(
        f"synth: {counts['events']} events (view {counts['view']}, cart {counts['cart']}, "
        f"purchase {counts['purchase']}), {counts['orders']} orders, {counts['users']} users, "
        f"{counts['items']} items, {counts['pairs']} pairs, {counts['cycles']} cycles, "
        f"seed {config.seed} -> {paths['events'].parent} in {time.perf_counter() - started:.1f}s"
    )
    return 0
