"""`recsvc rules` and `recsvc crosssell`: association rules from the command line.

    recsvc rules --events orders.csv [--min-support 0.001] [--min-confidence 0.5]
                 [--max-len 3] [--window-days 1] --out rules.csv
    recsvc rules --bundle bundles/latest --out rules.parquet
    recsvc crosssell --bundle bundles/latest --items A,B --k 5

`rules --events` mines straight from a log that needs only item_id and order_id (or user_id,
with timestamps, when there are no order ids: see `training.baskets`). A log without an
event_type column counts every row as a purchase. Output is CSV or Parquet by extension.

The bundle branches read what `recsvc.bundle` writes: the RuleSet in `rules/` (RuleSet.save),
item ids from `Bundle.items`, and `similar/{indices,scores}.npy` for the similarity top-up.
Heavy imports stay inside the functions, as `recsvc.cli` expects of command modules.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsvc.commands.common import add_event_flags, load_options
from recsvc.commands.exports import write_frame

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from recsvc.rules import RuleSet

OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
MINING_DEFAULTS: dict[str, Any] = {
    "purchase_types": "purchase", "min_support": 0.001, "min_confidence": 0.5, "max_len": 3,
    "window_days": 1.0,
}
# Flags that only mining from --events uses (the event flags of add_event_flags among them).
MINING_FLAGS = ("format", "columns", "event_type", "time_format", "max_bad_rows",
                "purchase_types", "min_support", "min_confidence", "max_len", "max_rules",
                "window_days")


def register(subparsers: Any) -> None:
    """Add the `rules` and `crosssell` subcommands."""
    rules = subparsers.add_parser(
        "rules",
        help="mine association rules from an order log, or export a bundle's rules",
        description="Mine 'A -> c' rules (support, confidence, lift, leverage, conviction) "
        "from purchases grouped into baskets, or export the rules stored in a model bundle.",
    )
    add_event_flags(rules, required=False)
    rules.add_argument("--bundle", help="model bundle (or bundles root) to export rules from")
    # Mining settings default to None so that one given with --bundle (whose rules were mined
    # when it was trained) is refused rather than ignored; MINING_DEFAULTS fills them in.
    rules.add_argument(
        "--purchase-types",
        help="event types that count as purchases, comma-separated (default: purchase)",
    )
    rules.add_argument("--min-support", type=float, help="fraction of baskets (default 0.001)")
    rules.add_argument("--min-confidence", type=float, help="(default 0.5)")
    rules.add_argument("--max-len", type=int, help="most items in a rule, both sides (default 3)")
    rules.add_argument("--max-rules", type=int, default=None, help="keep the best N rules")
    rules.add_argument(
        "--window-days",
        type=float,
        help="logs without order ids: a basket is a user's purchases within this window "
        "(default 1)",
    )
    rules.add_argument("--out", required=True, help="rules file: .csv or .parquet")
    rules.set_defaults(func=run_rules)

    crosssell = subparsers.add_parser(
        "crosssell",
        help="what to offer with a cart, from a bundle's association rules",
        description="Score items for a cart from the rules that fire (similar items top up).",
    )
    crosssell.add_argument("--bundle", required=True, help="model bundle (or bundles root)")
    crosssell.add_argument("--items", required=True, help="cart item ids, comma-separated")
    crosssell.add_argument("--k", type=int, default=5, help="how many items to offer")
    crosssell.add_argument("--exclude", default="", help="item ids never to offer, comma-separated")
    crosssell.set_defaults(func=run_crosssell)


def _split_ids(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _output_format(out: str) -> str:
    from recsvc.errors import InvalidInput

    suffix = Path(out).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise InvalidInput("--out", f"'{out}': use a .csv or .parquet file name")
    return OUTPUT_FORMATS[suffix]


def _write_frame(frame: pd.DataFrame, out: str) -> None:
    path = Path(out)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    write_frame(frame, path)  # whole or not at all


@dataclass(frozen=True)
class BundleRules:
    """What the rule commands need from a bundle: rules, item ids, similar-item lists."""

    rules: RuleSet
    item_ids: Sequence[str]
    similar_indices: np.ndarray | None
    similar_scores: np.ndarray | None


def open_bundle_rules(path: str) -> BundleRules:
    """Read the rules, item ids and similar items of a bundle.

    Raises NotFound when the bundle or its rules are missing, BundleFormatError when the
    bundle is unreadable.
    """
    from recsvc.errors import NotFound
    from recsvc.rules import META_FILE, RuleSet

    try:
        from recsvc.bundle import Bundle
    except ModuleNotFoundError as exc:  # the bundle module ships separately
        raise NotFound(f"--bundle: bundles are not supported by this recsvc ({exc})") from None
    if not Path(path).exists():
        raise NotFound(f"--bundle: {path} does not exist")
    bundle = Bundle(path)
    rules_dir = bundle.path / "rules"
    if not (rules_dir / META_FILE).exists():
        raise NotFound(
            f"--bundle: bundle {bundle.version} has no association rules (rules/); "
            "train with rules enabled"
        )
    rules = RuleSet.load(rules_dir)
    similar_indices = similar_scores = None
    if bundle.has("similar/indices") and bundle.has("similar/scores"):
        similar_indices = bundle.array("similar/indices")
        similar_scores = bundle.array("similar/scores")
    return BundleRules(
        rules=rules,
        item_ids=list(bundle.items.ids),
        similar_indices=similar_indices,
        similar_scores=similar_scores,
    )


def run_rules(args: argparse.Namespace) -> int:
    """`recsvc rules`: mine from --events, or export from --bundle, into --out."""
    from recsvc.errors import InvalidInput

    if bool(args.events) == bool(args.bundle):
        raise InvalidInput("--events", "give exactly one of --events (mine) or --bundle (export)")
    _output_format(args.out)  # a wrong name fails before the work
    if args.bundle:
        given = [name for name in MINING_FLAGS if getattr(args, name) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise InvalidInput(
                flag, "applies to mining from --events; a bundle's rules were mined when it was "
                "trained (its config's [rules]): export them as they are, or mine with --events",
            )
        source = open_bundle_rules(args.bundle)
        frame = source.rules.to_frame(source.item_ids)
        _write_frame(frame, args.out)
        print(f"{len(frame)} rules from bundle {args.bundle} over {source.rules.n_orders} baskets "
              f"-> {args.out}")
        return 0
    return _mine_from_events(args)


def _mine_from_events(args: argparse.Namespace) -> int:
    from recsvc.errors import InvalidInput
    from recsvc.events import load_events
    from training.baskets import baskets_from_events
    from training.rules import check_rule_settings, min_count_for, mine_rules

    for name, default in MINING_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if not math.isfinite(args.window_days) or args.window_days <= 0:
        raise InvalidInput("--window-days", f"must be a positive number of days, got {args.window_days}")
    if not _split_ids(args.purchase_types):
        raise InvalidInput("--purchase-types", "name at least one event type")
    check_rule_settings(  # before the log is read
        args.min_support, args.min_confidence, args.max_len, args.max_rules,
        {"min_support": "--min-support", "min_confidence": "--min-confidence",
         "max_len": "--max-len", "max_rules": "--max-rules"},
    )
    # Only item_id is required: views and carts carry no order id and are not bad rows, and a
    # log without order ids groups each user's purchases into windows instead.
    log, report = load_events(args.events, load_options(args, required=("item_id",)))
    if not (log.has_column.get("order_id") or log.has_column.get("user_id")):
        raise InvalidInput(
            "order_id",
            f"column not found in {Path(args.events).name}, nor a user_id to group purchases "
            "by; map one with --columns",
        )
    purchase_types = tuple(name.lower() for name in _split_ids(args.purchase_types))
    if len(log) and log.has_column.get("event_type") and not set(purchase_types) & set(log.event_types):
        raise InvalidInput(
            "--purchase-types",
            f"no row of the log has type {', '.join(purchase_types)} "
            f"(its types: {', '.join(log.event_types)})",
        )
    baskets = baskets_from_events(log, args.window_days, purchase_types)
    rules = mine_rules(
        baskets.matrix,
        min_support=args.min_support,
        min_confidence=args.min_confidence,
        max_len=args.max_len,
        max_rules=args.max_rules,
    )
    _write_frame(rules.to_frame(log.items.ids), args.out)
    floor = min_count_for(args.min_support, baskets.n_baskets) if baskets.n_baskets else 0
    print(
        f"{len(rules)} rules from {baskets.n_baskets} baskets ({baskets.baskets_from_orders} "
        f"orders, {baskets.baskets_from_windows} user windows of {args.window_days:g} days; "
        f"{baskets.rows_used} purchase rows used, {baskets.rows_not_purchases} other events, "
        f"{baskets.rows_unplaced} purchases without order or user not used), "
        f"min support {args.min_support:g} "
        f"(>= {floor} baskets), min confidence {args.min_confidence:g}, max len {args.max_len} "
        f"-> {args.out}"
    )
    for line in report.summary_lines():
        print(line)
    for note in report.notes:
        print(f"  note: {note}")
    return 0


def run_crosssell(args: argparse.Namespace) -> int:
    """`recsvc crosssell`: what to offer with a cart, one line per item."""
    import numpy as np

    from recsvc.crosssell import RuleIndex, cross_sell
    from recsvc.errors import InvalidInput, NotFound

    cart_ids = _split_ids(args.items)
    if not cart_ids:
        raise InvalidInput("--items", "give at least one item id")
    if args.k < 1:
        raise InvalidInput("--k", f"must be at least 1, got {args.k}")
    source = open_bundle_rules(args.bundle)
    lookup = {value: index for index, value in enumerate(source.item_ids)}
    cart = np.array([lookup.get(item, -1) for item in cart_ids], dtype=np.int64)
    unknown = [item for item, index in zip(cart_ids, cart, strict=True) if index < 0]
    if len(unknown) == len(cart_ids):
        raise NotFound(f"--items: none of the cart items is in bundle ({', '.join(unknown)})")
    if unknown:
        print(f"note: not in the bundle, ignored: {', '.join(unknown)}", file=sys.stderr)
    exclude = [lookup[item] for item in _split_ids(args.exclude) if item in lookup]
    index = RuleIndex.build(source.rules, n_items=len(source.item_ids))
    answer = cross_sell(
        index,
        cart,
        args.k,
        exclude=exclude,
        item_ids=source.item_ids,
        similar_indices=source.similar_indices,
        similar_scores=source.similar_scores,
    )
    print("rank\titem_id\tscore\treason")
    for rank, scored in enumerate(answer, start=1):
        print(f"{rank}\t{source.item_ids[scored.item]}\t{scored.score:.4f}\t{scored.reason}")
    return 0
