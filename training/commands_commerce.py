"""`recsvc buyagain` and `recsvc segments`: read a trained bundle's buy-again lists and segments."""

from __future__ import annotations

import argparse
import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsvc.commands.exports import (
    add_store_flag,
    forgotten_customers,
    forgotten_note,
    write_frame,
)

OUTPUT_SUFFIXES = (".csv", ".parquet")


def register(subparsers: Any) -> None:
    buyagain = subparsers.add_parser(
        "buyagain",
        help="items a customer is due to re-buy, with next due date and reason",
        description="Rank a customer's repurchase items by due score at --now (default: the "
        "current time). --users all (or a file of ids) with --out exports every list.",
    )
    buyagain.add_argument("--bundle", required=True, help="bundle directory (or a bundles/ root)")
    who = buyagain.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="one customer id")
    who.add_argument("--users", help="'all', or a file of customer ids (one a line); needs --out")
    buyagain.add_argument("--k", type=int, default=10, help="items per customer (default 10)")
    buyagain.add_argument("--now", help="score as of this time, ISO-8601 (default: now)")
    buyagain.add_argument(
        "--min-score", type=float, default=None,  # recsvc.buyagain.MIN_DUE_SCORE (numpy, scipy)
        help="leave out items scoring below this (default: the server's threshold, 0.01; 0 keeps all)"
    )
    buyagain.add_argument("--out", help="output file for --users: .csv or .parquet")
    add_store_flag(buyagain)
    buyagain.set_defaults(func=run_buyagain)

    segments = subparsers.add_parser(
        "segments",
        help="export customer segments (RFM scores, segment, taste cluster)",
        description="Print the number of customers per segment (of the bundle); with --out, "
        "export one row per customer: user_id, segment, cluster, r, f, m, recency_days, "
        "frequency, monetary (without the customers on the --store's forget list).",
    )
    segments.add_argument("--bundle", required=True, help="bundle directory (or a bundles/ root)")
    segments.add_argument("--out", help="output file: .csv or .parquet")
    add_store_flag(segments)
    segments.set_defaults(func=run_segments)


def parse_now(text: str | None) -> int:
    """Epoch seconds of an ISO-8601 time or date (naive means UTC); None: the current time."""
    from recsvc.errors import InvalidInput

    if text is None:
        return int(datetime.now(UTC).timestamp())
    raw = text.strip()
    try:
        value = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith("Z") else raw)
    except ValueError:
        raise InvalidInput("--now", f"'{text}' is not a time like 2026-03-01T12:00:00Z") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def iso_date(seconds: Any) -> Any:
    """YYYY-MM-DD text for epoch seconds (scalar or array)."""
    import numpy as np

    return np.datetime_as_string(np.asarray(seconds, dtype="datetime64[s]"), unit="D")


def output_path(out: str) -> Path:
    from recsvc.errors import InvalidInput

    path = Path(out)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InvalidInput("--out", "must end in .csv or .parquet")
    if not path.parent.exists():
        raise InvalidInput("--out", f"directory {path.parent} does not exist")
    return path


def run_buyagain(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from recsvc.bundle import Bundle
    from recsvc.buyagain import MIN_DUE_SCORE, BuyAgainLists, reason_text
    from recsvc.errors import InvalidInput, NotFound

    if args.min_score is None:
        args.min_score = MIN_DUE_SCORE
    if args.k <= 0:
        raise InvalidInput("--k", "must be a positive number")
    if not math.isfinite(args.min_score):
        raise InvalidInput("--min-score", f"must be a finite number, got {args.min_score}")
    now = parse_now(args.now)
    if args.users is not None and not args.out:
        raise InvalidInput("--out", "needed with --users (where to write the lists)")
    out = output_path(args.out) if args.out else None
    bundle = Bundle(args.bundle)
    lists = BuyAgainLists.read(bundle)

    if args.user is not None:
        index = bundle.users.get(args.user)
        if index < 0:
            raise NotFound(f"--user: no customer '{args.user}' in bundle {bundle.version}")
        if args.store and forgotten_customers(args.store, [args.user]):
            raise NotFound(f"--user: customer '{args.user}' is on the forget list of --store")
        answer = lists.for_user(index, now, k=args.k, min_score=args.min_score)
        rows = [
            {
                "rank": rank,
                "item_id": bundle.items.id_of(entry.item),
                "score": round(entry.score, 4),
                "next_due": str(iso_date(entry.next_due)),
                "reason": entry.reason,
            }
            for rank, entry in enumerate(answer, start=1)
        ]
        frame = pd.DataFrame(rows, columns=["rank", "item_id", "score", "next_due", "reason"])
        if out is not None:
            frame = frame.astype({"rank": "int64", "item_id": "string", "score": "float64",
                                  "next_due": "string", "reason": "string"})
            frame.insert(0, "user_id", pd.array([args.user] * len(frame), dtype="string"))
            write_frame(frame, out)
            print(f"wrote {len(frame)} items to {out}")
        elif frame.empty:
            print(f"no buy-again items for this customer as of {iso_date(now)}")
        else:
            print(frame.to_string(index=False))
        return 0

    rescored = lists.rescored(now)
    user_of = rescored.row_users()
    rank = np.arange(len(user_of)) - rescored.indptr[user_of] + 1
    keep = (rank <= args.k) & (rescored.due_score >= args.min_score)
    listed: list[str] | None = None
    if args.users != "all":
        from recsvc.commands.recommend import read_user_file

        listed = read_user_file(args.users)
        wanted = bundle.users.encode(np.asarray(listed, dtype=object), grow=False)
        keep &= np.isin(user_of, wanted[wanted >= 0])
    forgotten: set[str] = set()
    if args.store:
        forgotten = forgotten_customers(args.store, list(bundle.users.ids) if listed is None
                                        else listed)
        gone = bundle.users.encode(np.asarray(sorted(forgotten), dtype=object), grow=False)
        keep &= ~np.isin(user_of, gone[gone >= 0])
    chosen = np.flatnonzero(keep)
    user_ids = bundle.users.to_array()
    item_ids = bundle.items.to_array()
    count = np.asarray(rescored.count)[chosen]
    interval = np.asarray(rescored.interval_days)[chosen]
    next_due = np.asarray(rescored.next_due)[chosen]
    # text columns typed even when empty: a Parquet export with no row still has their types
    frame = pd.DataFrame(
        {
            "user_id": pd.array(user_ids[user_of[chosen]], dtype="string"),
            "rank": rank[chosen],
            "item_id": pd.array(item_ids[np.asarray(rescored.items)[chosen]], dtype="string"),
            "score": rescored.due_score[chosen],
            "next_due": iso_date(next_due),
            "interval_days": interval,
            "count": count,
            "last_purchase": iso_date(np.asarray(rescored.last)[chosen]),
            "reason": pd.array([
                reason_text(c, i, d, now)
                for c, i, d in zip(count.tolist(), interval.tolist(), next_due.tolist(), strict=True)
            ], dtype="string"),
        }
    )
    assert out is not None
    write_frame(frame, out)
    customers = frame["user_id"].nunique()
    print(f"wrote {len(frame)} items for {customers} customers to {out} "
          f"({forgotten_note(args.store, len(forgotten))})")
    return 0


def run_segments(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from recsvc.bundle import Bundle
    from training.segments import Segments

    out = output_path(args.out) if args.out else None
    bundle = Bundle(args.bundle)
    segments = Segments.read(bundle)
    frame = segments.to_frame()
    frame.insert(0, "user_id", pd.array(bundle.users.to_array()[frame["user_index"]],
                                       dtype="string"))
    forgotten: set[str] = set()
    kept = np.ones(len(frame), dtype=bool)
    if args.store:  # left out of the file and of the counts below
        forgotten = forgotten_customers(args.store, list(bundle.users.ids))
        kept = ~frame["user_id"].isin(forgotten).to_numpy()
        frame = frame[kept]
    if out is not None:
        columns = ["user_id", "segment", "cluster", "r", "f", "m", "recency_days", "frequency",
                   "monetary"]
        write_frame(frame[columns], out)
        print(f"wrote {len(frame)} customers to {out} "
              f"({forgotten_note(args.store, len(forgotten))})", file=sys.stderr)
    counts = segments.counts(kept)
    width = max((len(name) for name in counts), default=7)
    print(f"{'segment':<{width}}  customers")
    for name, size in counts.items():
        print(f"{name:<{width}}  {size:>9}")
    return 0
