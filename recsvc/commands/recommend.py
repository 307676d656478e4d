"""`recsvc recommend`: export top-k recommendations per customer to CSV or Parquet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from recsvc.commands.exports import (
    add_store_flag,
    forgotten_customers,
    forgotten_note,
    frame_appender,
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "recommend", help="export top-k recommendations per user (CSV or Parquet)"
    )
    parser.add_argument("--bundle", required=True, help="bundle directory (or a bundles/ root)")
    parser.add_argument("--users", default="all", help="'all', or a file of user ids (one a line)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--model", default=None, help="model in the bundle, e.g. ease, als (default: its default)"
    )
    seen = parser.add_mutually_exclusive_group()
    seen.add_argument("--exclude-seen", dest="exclude_seen", action="store_true", default=True)
    seen.add_argument("--include-seen", dest="exclude_seen", action="store_false")
    parser.add_argument("--in-stock-only", action="store_true")
    parser.add_argument("--category", action="append", default=[], help="restrict to a category")
    parser.add_argument("--min-price", type=float, default=None, help="only items at this price or above")
    parser.add_argument("--max-price", type=float, default=None, help="only items at this price or below")
    parser.add_argument("--out", required=True, help="output file: .csv or .parquet")
    add_store_flag(parser)
    parser.set_defaults(func=run)


def read_user_file(path: str) -> list[str]:
    from recsvc.errors import InvalidInput
    from recsvc.ids import read_id_lines

    if not Path(path).exists():
        raise InvalidInput("--users", f"'{path}' is neither 'all' nor an existing file")
    return read_id_lines(path, "--users")


def run(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from recsvc.batch import ExportSummary, export_frames
    from recsvc.bundle import Bundle
    from recsvc.errors import InvalidInput, NotFound
    from recsvc.progress import progress
    from recsvc.ranking import ItemFilter, check_price_range

    if args.k <= 0:
        raise InvalidInput("--k", "must be a positive number")
    out = Path(args.out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise InvalidInput("--out", "must end in .csv or .parquet")
    check_price_range(args.min_price, args.max_price, ("--min-price", "--max-price"))
    bundle = Bundle(args.bundle)
    if args.model is not None and args.model not in bundle.recommenders:
        has = ", ".join(bundle.recommenders) or "none"
        raise NotFound(f"--model: '{args.model}' is not in bundle {bundle.version} (has: {has})")
    unknown = sorted(set(args.category) - {str(c) for c in bundle.catalog.category})
    if unknown:  # a typo would export an empty file
        raise InvalidInput("--category", f"no item of the bundle has category {', '.join(unknown)}")
    users = None if args.users == "all" else read_user_file(args.users)
    forgotten: set[str] = set()
    if args.store:
        wanted = list(bundle.users.ids) if users is None else users
        forgotten = forgotten_customers(args.store, wanted)
        if forgotten:
            users = [u for u in wanted if u not in forgotten]
    flt = ItemFilter(
        categories=frozenset(args.category),
        in_stock_only=args.in_stock_only,
        min_price=args.min_price,
        max_price=args.max_price,
        exclude_seen=args.exclude_seen,
    )
    # Fixed before the first batch, which may hold no row (every list in it empty) or be the
    # only one; large_string is what pandas 3's str columns convert to.
    schema = pa.schema([("user_id", pa.large_string()), ("rank", pa.int32()),
                        ("item_id", pa.large_string()), ("score", pa.float32())])
    summary = ExportSummary()
    out.parent.mkdir(parents=True, exist_ok=True)
    total = len(bundle.users) if users is None else len(users)
    bar = progress(total=total, desc="recommend", unit="users")
    with frame_appender(out, schema) as append:
        for frame in export_frames(bundle, users, args.k, args.model, flt, summary=summary):
            bar.update(summary.users - bar.n)
            append(frame)
    bar.close()
    print(
        f"wrote {summary.rows} rows for {summary.users} users to {out} "
        f"(model {args.model or bundle.default_recommender}, bundle {bundle.version}; "
        f"{summary.unknown_users} unknown users got popular items; "
        f"{summary.short_lists} lists shorter than k; "
        f"{forgotten_note(args.store, len(forgotten))})",
        file=sys.stdout,
    )
    return 0
