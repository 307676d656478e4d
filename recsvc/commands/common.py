"""Flags shared by several commands (event loading), parsed in one place."""

from __future__ import annotations

import argparse

from recsvc.events import LoadOptions, check_time_format, parse_columns, parse_max_bad_rows


def add_event_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--events", required=required, help="event log: CSV, JSON Lines or Parquet")
    parser.add_argument("--format", choices=["csv", "jsonl", "parquet"], help="override the extension")
    parser.add_argument(
        "--columns",
        help="map canonical columns to the file's, e.g. user_id=CustomerID,item_id=StockCode",
    )
    parser.add_argument(
        "--event-type", help="one event type for every row (for logs with no event column)"
    )
    parser.add_argument(
        "--time-format",
        help="strftime format of the timestamp column's text, e.g. '%%m/%%d/%%Y %%H:%%M' (UTC "
        "unless it has %%z); default: ISO-8601 or epoch numbers",
    )
    parser.add_argument(
        "--max-bad-rows",
        help="fail when more rows than this are unusable: a fraction (0.01) or a count (500)",
    )


def load_options(args: argparse.Namespace, **extra: object) -> LoadOptions:
    return LoadOptions(
        fmt=args.format,
        columns=parse_columns(args.columns),
        event_type=args.event_type,
        max_bad_rows=parse_max_bad_rows(args.max_bad_rows),
        time_format=check_time_format(args.time_format),
        **extra,  # type: ignore[arg-type]
    )
