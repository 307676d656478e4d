"""Flags shared by several commands (event loading), parsed in one place.

recsvc.events (pandas) is imported inside the functions: the CLI imports this module whenever it
builds its parser, and `recsvc --help` should not wait for pandas.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recsvc.config import TrainConfig
    from recsvc.events import LoadOptions


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


def take_config_max_bad_rows(args: argparse.Namespace, config: TrainConfig) -> None:
    """--max-bad-rows, else the config's `events.max_bad_rows` (train, eval and tune alike)."""
    if args.max_bad_rows is None and config.events.max_bad_rows:
        args.max_bad_rows = config.events.max_bad_rows


def load_options(args: argparse.Namespace, **extra: object) -> LoadOptions:
    from recsvc.events import LoadOptions, check_time_format, parse_columns, parse_max_bad_rows

    return LoadOptions(
        fmt=args.format,
        columns=parse_columns(args.columns),
        event_type=args.event_type,
        max_bad_rows=parse_max_bad_rows(args.max_bad_rows),
        time_format=check_time_format(args.time_format),
        **extra,  # type: ignore[arg-type]
    )


def check_output_file(path: str | None, flag: str) -> None:
    """InvalidInput naming `flag` unless a file can be written at `path` (its directory exists
    or can be made, and is writable; the path is not a directory). For outputs written only
    after long work, so that a typo fails before the work rather than after."""
    import os
    from pathlib import Path

    from recsvc.errors import InvalidInput

    if path is None:
        return
    target = Path(path)
    if not str(path).strip() or target.is_dir():
        raise InvalidInput(flag, f"'{path}' is a directory, not a file name")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInput(flag, f"cannot make the directory of '{path}': {exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK):
        raise InvalidInput(flag, f"cannot write to the directory of '{path}'")
