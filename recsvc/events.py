"""Event schema and streaming loaders for purchase and browsing logs (CSV, JSON Lines, Parquet).

A log is read in chunks; every row is either kept (mapped to dense ids and compact arrays) or
counted as bad under a named reason, with the first few row numbers kept as examples so a
nightly job can say where its input went wrong. Nothing is dropped silently.

A file that cannot be read as a whole (not a file, truncated or mislabelled compression, a
truncated or corrupt Parquet file, binary data or another encoding than UTF-8 where text is
expected) raises InvalidInput naming the flag and the reason, never a library exception.
Ids must be printable UTF-8 text, as the server requires of requests: ids with undecodable
bytes (a Latin-1 file read as UTF-8), control characters, or JSON objects / arrays in JSON
Lines are counted as bad rows rather than trained on under a mangled name.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import json
import logging
import lzma
import math
import re
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Collection, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsvc.errors import InvalidInput, TooManyBadRows
from recsvc.ids import IdMap

log = logging.getLogger(__name__)

CANONICAL_COLUMNS = (
    "user_id",
    "item_id",
    "event_type",
    "timestamp",
    "order_id",
    "quantity",
    "price",
    "rating",
)
FORMATS = ("csv", "jsonl", "parquet")
DEFAULT_EVENT_TYPE = "interaction"  # used when a log has no event column and none is given
MAX_ID_LENGTH = 256
EXAMPLES_PER_REASON = 5
CATALOG = "catalog: "  # the prefix of the items catalogue's bad-row reasons
REPLACEMENT = "\ufffd"  # what undecodable bytes become when text is read as UTF-8
_NESTED = "\x00<nested JSON>"  # stands for a JSON object or array where a value was expected
# What a broken compressed stream or file raises while being read.
_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, lzma.LZMAError)


def parse_columns(spec: str | None) -> dict[str, str]:
    """Parse `user_id=CustomerID,item_id=StockCode` into {canonical: source column}."""
    if not spec:
        return {}
    mapping: dict[str, str] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise InvalidInput("--columns", f"'{part}' is not of the form canonical=source")
        canonical, source = (s.strip() for s in part.split("=", 1))
        if canonical not in CANONICAL_COLUMNS:
            raise InvalidInput(
                "--columns", f"unknown column '{canonical}' (one of {', '.join(CANONICAL_COLUMNS)})"
            )
        if not source:
            raise InvalidInput("--columns", f"no source column given for '{canonical}'")
        mapping[canonical] = source
    return mapping


def parse_max_bad_rows(spec: str | float | int | None) -> float | int | None:
    """`0.01` (a fraction of rows read) or `500` (a count); None means no limit."""
    if spec is None or spec == "":
        return None
    try:
        value = float(spec)
    except (TypeError, ValueError):
        raise InvalidInput("--max-bad-rows", f"'{spec}' is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise InvalidInput("--max-bad-rows", f"must be a fraction below 1 or a count, got '{spec}'")
    if value < 1 and not float(value).is_integer():
        return value
    return int(value)


def detect_format(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise InvalidInput("--format", f"'{fmt}' is not one of {', '.join(FORMATS)}")
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz"):
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext in (".csv", ".tsv", ".txt"):
        return "csv"
    if ext in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if ext in (".parquet", ".pq"):
        return "parquet"
    raise InvalidInput("--events", f"cannot tell the format of '{path.name}'; pass --format")


@dataclass
class LoadReport:
    """What happened to every row of a log."""

    rows_read: int = 0
    rows_kept: int = 0
    bad_rows: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)  # reason -> record numbers (BadLines)
    notes: list[str] = field(default_factory=list)

    @property
    def rows_bad(self) -> int:
        """Bad rows of the log itself: rows_read = rows_kept + rows_bad."""
        return int(sum(n for reason, n in self.bad_rows.items() if not reason.startswith(CATALOG)))

    @property
    def catalog_rows_bad(self) -> int:
        """Bad rows of the items catalogue (reasons 'catalog: ...'), counted apart."""
        return int(sum(n for reason, n in self.bad_rows.items() if reason.startswith(CATALOG)))

    def add_bad(self, reason: str, row_numbers: np.ndarray) -> None:
        if len(row_numbers) == 0:
            return
        self.bad_rows[reason] += int(len(row_numbers))
        kept = self.examples.setdefault(reason, [])
        room = EXAMPLES_PER_REASON - len(kept)
        if room > 0:
            kept.extend(int(r) for r in row_numbers[:room])

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_bad": self.rows_bad,
            "catalog_rows_bad": self.catalog_rows_bad,
            "bad_rows": dict(sorted(self.bad_rows.items())),
            "bad_row_examples": {k: v for k, v in sorted(self.examples.items())},
            "notes": list(self.notes),
        }

    def summary_lines(self) -> list[str]:
        lines = [f"rows read {self.rows_read}, kept {self.rows_kept}, bad {self.rows_bad}"
                 + (f"; catalogue rows bad {self.catalog_rows_bad}" if self.catalog_rows_bad else "")]
        for reason, count in sorted(self.bad_rows.items(), key=lambda kv: -kv[1]):
            rows = ", ".join(str(r) for r in self.examples.get(reason, []))
            lines.append(f"  {count:>9}  {reason} (e.g. rows {rows})")
        if any(self.examples.values()):
            lines.append(f"  {ROW_NUMBERS}")
        return lines

    def check_limit(self, limit: float | int | None, source: str) -> None:
        """Raise TooManyBadRows when the bad rows exceed `limit` (fraction or count)."""
        if limit is None or self.rows_bad == 0:
            return
        allowed = limit * self.rows_read if isinstance(limit, float) else limit
        if self.rows_bad > allowed:
            worst = ", ".join(f"{r}: {c}" for r, c in self.bad_rows.most_common(3))
            raise TooManyBadRows(
                f"{source}: {self.rows_bad} of {self.rows_read} rows are bad, more than "
                f"the bad-row limit {limit} (--max-bad-rows, or events.max_bad_rows of the "
                f"config) allows ({worst})"
            )


@dataclass
class EventLog:
    """A loaded log: dense ids and one compact array per column (all the same length)."""

    users: IdMap
    items: IdMap
    orders: IdMap
    event_types: list[str]
    user: np.ndarray  # int32 user index
    item: np.ndarray  # int32 item index
    event: np.ndarray  # int16 index into event_types
    timestamp: np.ndarray  # int64 epoch seconds (0 where the log had no time column)
    order: np.ndarray  # int32 order index, -1 where the row has no order
    quantity: np.ndarray  # float32, 1 where the log has none
    price: np.ndarray  # float32, NaN where unknown
    rating: np.ndarray  # float32, NaN where unknown
    has_column: dict[str, bool] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def mask(self, keep: np.ndarray) -> EventLog:
        """A copy with only the rows where `keep` is true (id maps are shared)."""
        return EventLog(
            users=self.users,
            items=self.items,
            orders=self.orders,
            event_types=self.event_types,
            user=self.user[keep],
            item=self.item[keep],
            event=self.event[keep],
            timestamp=self.timestamp[keep],
            order=self.order[keep],
            quantity=self.quantity[keep],
            price=self.price[keep],
            rating=self.rating[keep],
            has_column=dict(self.has_column),
        )

    def event_code(self, name: str) -> int:
        return self.event_types.index(name) if name in self.event_types else -1

    def purchase_mask(self, purchase_types: Sequence[str] = ("purchase",)) -> np.ndarray:
        """Rows that count as purchases: those of a purchase type, or every row of a log
        without an event type column (ratings, point-of-sale baskets)."""
        if not self.has_column.get("event_type", False):
            return np.ones(len(self), dtype=bool)
        codes = [c for c in (self.event_code(name) for name in purchase_types) if c >= 0]
        return np.isin(self.event, np.asarray(codes, dtype=self.event.dtype))


@dataclass(frozen=True)
class LoadOptions:
    """How to read a log."""

    fmt: str | None = None
    columns: Mapping[str, str] = field(default_factory=dict)
    event_type: str | None = None  # a constant for logs with no event column
    known_event_types: Sequence[str] | None = None  # None: accept any name
    required: Sequence[str] = ("user_id", "item_id")
    cancel_prefix: str | None = "C"  # order ids starting with this are cancellations
    chunk_rows: int = 500_000
    max_bad_rows: float | int | None = None
    time_format: str | None = None  # strftime format of text times; None: ISO-8601 or epoch

    def __post_init__(self) -> None:
        # event types are matched in lower case, as those read from a column
        if self.event_type is not None:
            object.__setattr__(self, "event_type", self.event_type.strip().lower() or None)


# Event times the loaders accept, epoch seconds: 1970-01-01 to the end of 2099 (both engines).
TIME_RANGE = (0.0, 4_102_444_800.0)
TIME_OUT_OF_RANGE = "timestamp out of range (before 1970 or after 2099)"
# Quantities, prices and ratings are kept as float32, where a larger number is infinite.
NUMBER_OUT_OF_RANGE = "{} out of range (above 3.4e38 or below -3.4e38)"


def as_float32(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Finite float64 values as they are stored (float32), and where that would be infinite
    (counted as NUMBER_OUT_OF_RANGE by the loaders and the store's item updates alike)."""
    with np.errstate(over="ignore"):
        kept = values.astype(np.float32)
    return kept, np.isfinite(values) & ~np.isfinite(kept)

# (reason, record number) of lines no parser could split. Records are numbered from 1 in file
# order, malformed ones included; the CSV header and blank lines (empty, or spaces and tabs
# only, outside quotes) are not records: pandas and Spark skip them. Rows of every reason are
# reported by record number (as the Spark engine does), so a log without blank lines or quoted
# line breaks has record n on line n + 1 (CSV) / on line n (JSON Lines).
BadLines = list[tuple[str, int]]
ROW_NUMBERS = "rows are numbered from 1 in file order, not counting a CSV header or blank lines"


class _Records:
    """The record numbers of the rows a reader returns, given the malformed records it skipped."""

    def __init__(self) -> None:
        self.skipped = np.zeros(0, dtype=np.int64)  # malformed record numbers, ascending
        self.rows = 0  # rows returned so far

    def skip(self, bad: BadLines) -> None:
        if bad:
            numbers = np.asarray([number for _, number in bad], dtype=np.int64)
            self.skipped = np.sort(np.concatenate([self.skipped, numbers]))

    def take(self, n: int) -> np.ndarray:
        """Record numbers of the next `n` rows: row r is record r + (skipped records before it)."""
        rows = np.arange(self.rows + 1, self.rows + n + 1, dtype=np.int64)
        self.rows += n
        # rows before the j-th skipped record (1-based): its number - j; row r follows it iff
        # that is below r
        before = self.skipped - np.arange(1, len(self.skipped) + 1)
        return rows + np.searchsorted(before, rows, side="left")


def check_input_file(path: Path, flag: str) -> None:
    """InvalidInput naming `flag` unless `path` is an existing regular file."""
    if not path.exists():
        raise InvalidInput(flag, f"file not found: {path}")
    if not path.is_file():
        raise InvalidInput(flag, f"{path} is not a file")
    if path.suffix.lower() == ".zst":  # pandas would need the zstandard package
        raise InvalidInput(flag, f"{path.name}: zstd compression is not supported; use .gz, .bz2 or .xz")


def _iter_chunks(
    path: Path,
    fmt: str,
    chunk_rows: int,
    flag: str = "--events",
    keys: Collection[str] | None = None,
) -> Iterator[tuple[pd.DataFrame, BadLines]]:
    """Yield the file as DataFrames of strings (None for missing), chunk by chunk.

    Lines that cannot be split into a row at all (wrong field count, broken JSON) come back
    beside the chunk so the caller counts them. A file that cannot be read at all raises
    InvalidInput naming `flag`. In JSON Lines, where records need not share keys, every chunk
    has a column for each of `keys` that some record of the file sets (not null) and none for
    the others, as Spark's JSON reader sees the file.
    """
    try:
        if fmt == "csv":
            yield from _csv_chunks(path, chunk_rows, flag)
        elif fmt == "jsonl":
            if keys is None:
                yield from _jsonl_chunks(path, chunk_rows)
            else:
                yield from _jsonl_chunks_with_columns(path, chunk_rows, keys)
        else:
            yield from _parquet_chunks(path, chunk_rows, flag)
    except _READ_ERRORS as exc:
        raise InvalidInput(flag, f"cannot read {path.name}: {_reason(exc)}") from exc


def _reason(exc: BaseException) -> str:
    """A one-line reason for a read failure, with a hint for broken compression."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, EOFError | zlib.error | lzma.LZMAError | gzip.BadGzipFile) or "compress" in text.lower():
        return f"{text} (truncated, or not compressed the way its name says?)"
    return text


def _open_text(path: Path) -> io.TextIOBase:
    """The file as UTF-8 text (a BOM is skipped, undecodable bytes become U+FFFD),
    decompressed by extension."""
    suffix = path.suffix.lower()
    encoding, errors = "utf-8-sig", "replace"
    if suffix == ".gz":
        return gzip.open(path, "rt", encoding=encoding, errors=errors)  # type: ignore[return-value]
    if suffix == ".bz2":
        return bz2.open(path, "rt", encoding=encoding, errors=errors)  # type: ignore[return-value]
    if suffix == ".xz":
        return lzma.open(path, "rt", encoding=encoding, errors=errors)  # type: ignore[return-value]
    return open(path, encoding=encoding, errors=errors)  # type: ignore[return-value]  # noqa: SIM115


def check_text_columns(columns: Sequence[object], path: Path, flag: str) -> None:
    """InvalidInput when a header shows the file is binary or not UTF-8 (e.g. UTF-16)."""
    for name in columns:
        text = str(name)
        if REPLACEMENT in text or not text.isprintable():
            raise InvalidInput(
                flag,
                f"{path.name} is not UTF-8 text (binary data, or another encoding such as "
                "UTF-16 or Latin-1: convert it to UTF-8)",
            )


def show_columns(columns: Sequence[object], limit: int = 12) -> str:
    """Column names for an error message: a few, each short and printable."""
    shown = [ascii(str(c)[:40]) if not str(c).isprintable() else str(c)[:40] for c in columns[:limit]]
    more = f", ... ({len(columns)} in all)" if len(columns) > limit else ""
    return ", ".join(shown) + more


_SKIP_LINE = re.compile(r"Skipping line (\d+)")
_BLANK_LINE = re.compile(r"\n[ \t]*\n")  # in text read with universal newlines


def _csv_lines(handle: io.TextIOBase, sep: str) -> Iterator[list[str] | None]:
    """The lines of a CSV as pandas counts them: a record's fields, or None for a blank line
    (empty, or spaces and tabs only; pandas and Spark skip those). A record with quoted line
    breaks is one line. Raises csv.Error where Python's reader gives up (a field over 128 KiB)."""
    import csv

    line = ""  # the last line read: a record's own line unless it has quoted line breaks

    def lines() -> Iterator[str]:
        nonlocal line
        for text in handle:
            line = text
            yield text

    for row in csv.reader(lines(), delimiter=sep):
        # a quoted "" or "  " is a record of one field: only the bare line is blank
        yield None if not row or (len(row) == 1 and not line.strip(" \t\r\n")) else row


def _first_row_too_long(path: Path, sep: str) -> bool:
    """Whether the first data row has more fields than the header. pandas reports such a row
    anywhere else as a bad line, but takes the first one for an index (or, with index_col
    False, cuts it short without a word)."""
    import csv

    try:
        with _open_text(path) as handle:
            rows = (row for row in _csv_lines(handle, sep) if row is not None)
            header, first = next(rows, None), next(rows, None)
    except (csv.Error, OSError, EOFError, ValueError):  # pandas says what is wrong with the file
        return False
    return header is not None and first is not None and len(first) > len(header)


def _may_have_blank_lines(path: Path, block: int = 1 << 23) -> bool:
    """Whether a text file has a line of spaces and tabs only, or an empty one (maybe inside
    quotes: True can be a false alarm, False is certain). Reads blocks, stops at the first."""
    with _open_text(path) as handle:
        rest = "\n"  # the file starts a line
        while text := handle.read(block):
            text = rest + text
            if _BLANK_LINE.search(text):
                return True
            cut = text.rfind("\n")
            rest = text[cut:] if cut >= 0 and not text[cut + 1 :].strip(" \t") else ""
    return False


class _CsvRecords:
    """The record numbers of the lines pandas reports as malformed, which it numbers by line.

    pandas counts the header and blank lines (before the header too) as lines; records count
    neither. Only a file with malformed lines is read again for this, and read record by record
    (as far as the last malformed line: pandas reports them in file order) only when it has a
    blank line; without one, line n is record n - 1.
    """

    def __init__(self, path: Path, sep: str) -> None:
        self.path, self.sep = path, sep
        self.scan: Generator[bool, None, None] | None = None  # per line: whether it is a record
        self.blank: bool | None = None  # whether the file may have blank lines
        self.lines = 0  # lines scanned so far
        self.not_records = 0  # the header and blank lines among them

    def record(self, line: int) -> int:
        """The record number of pandas' (1-based) line `line`."""
        if self.blank is None:
            self.blank = _may_have_blank_lines(self.path)
            self.scan = self._scan() if self.blank else None
        if self.scan is None:
            return line - 1
        while self.lines < line - 1:
            self.not_records += not next(self.scan, True)
            self.lines += 1
        return line - self.not_records

    def _scan(self) -> Generator[bool, None, None]:
        import csv

        try:
            with _open_text(self.path) as handle:
                header = False
                for row in _csv_lines(handle, self.sep):
                    yield header and row is not None
                    header = header or row is not None
        except (csv.Error, ValueError):  # pandas read on: no more blank lines are counted
            return

    def close(self) -> None:
        if self.scan is not None:
            self.scan.close()


def _csv_chunks(path: Path, chunk_rows: int, flag: str) -> Iterator[tuple[pd.DataFrame, BadLines]]:
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pd.errors.ParserWarning)
            reader = pd.read_csv(
                path,
                dtype=object,
                sep=sep,
                keep_default_na=False,
                na_values=[""],
                index_col=False,  # a first row with an extra field is malformed, not an index
                chunksize=chunk_rows,
                encoding_errors="replace",
                on_bad_lines="warn",
            )
            long_first = _first_row_too_long(path, sep)
            records = _CsvRecords(path, sep)
            try:
                for frame in reader:
                    bad: BadLines = []
                    for warning in caught:  # pandas gives its line numbers: made record numbers
                        bad += [("malformed line (wrong number of fields)", records.record(int(m)))
                                for m in _SKIP_LINE.findall(str(warning.message))]
                    caught.clear()
                    if long_first and len(frame):  # index_col=False kept it cut short: count it
                        long_first = False
                        frame = frame.iloc[1:]
                        bad.insert(0, ("malformed line (wrong number of fields)", 1))
                    yield frame, bad
            finally:
                records.close()
    except pd.errors.EmptyDataError:
        return
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise InvalidInput(flag, f"cannot parse {path.name} as CSV: {reason}") from exc


def _jsonl_chunks(path: Path, chunk_rows: int) -> Iterator[tuple[pd.DataFrame, BadLines]]:
    records: list[dict[str, Any]] = []
    bad: BadLines = []
    number = 0  # records: non-blank lines
    with _open_text(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            number += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad.append(("malformed JSON line", number))
                continue
            if not isinstance(record, dict):
                bad.append(("JSON line is not an object", number))
                continue
            if _SURROGATE_ESCAPE.search(line):  # a lone \ud800 escape cannot be encoded later
                record = {k: _without_lone_surrogates(v) for k, v in record.items()}
            records.append({k: _json_value(v) for k, v in record.items()})
            if len(records) >= chunk_rows:
                yield pd.DataFrame.from_records(records), bad
                records, bad = [], []
    if records or bad:
        yield pd.DataFrame.from_records(records), bad


def _jsonl_chunks_with_columns(
    path: Path, chunk_rows: int, keys: Collection[str]
) -> Iterator[tuple[pd.DataFrame, BadLines]]:
    """JSON Lines chunks that all have a column for each of `keys` that some record of the file
    sets, and none for the others. The file is scanned for keys only when it spans several
    chunks and the first one lacks some (then once more, by a fast block search)."""
    chunks = _jsonl_chunks(path, chunk_rows)
    first = next(chunks, None)
    if first is None:
        return
    second = next(chunks, None)

    def set_in(frame: pd.DataFrame) -> set[str]:
        return {k for k in keys if k in frame.columns and frame[k].notna().any()}

    found = set_in(first[0])
    if second is not None and found != set(keys):
        found |= _jsonl_keys(path, set(keys) - found)
    for chunk, bad in itertools.chain([first], [second] if second is not None else [], chunks):
        absent = [k for k in keys if k not in found and k in chunk.columns and chunk[k].isna().all()]
        chunk = chunk.drop(columns=absent)
        for key in found:
            if key not in chunk.columns:
                chunk[key] = pd.Series([None] * len(chunk), dtype=object)
        yield chunk, bad


def _jsonl_keys(path: Path, keys: Collection[str], block: int = 1 << 23) -> set[str]:
    """Which of `keys` some record of a JSON Lines file sets to a value other than null.

    Reads blocks and parses only lines that contain a key still unseen, written as a JSON
    string; stops once every key has been seen (else it reads the whole file).
    """
    # a key as written: raw UTF-8 or \u-escaped (json.dumps' default)
    forms = {key: {json.dumps(key, ensure_ascii=False), json.dumps(key)} for key in keys}
    pending = dict(forms)
    found: set[str] = set()
    with _open_text(path) as handle:
        rest = ""
        while pending:
            text = handle.read(block)
            if not text:
                lines = [rest]
            else:
                text, rest = rest + text, ""
                cut = text.rfind("\n") + 1
                text, rest = text[:cut], text[cut:]
                if not any(form in text for quoted in pending.values() for form in quoted):
                    continue
                lines = text.split("\n")
            for line in lines:
                hits = [key for key, quoted in pending.items() if any(f in line for f in quoted)]
                if not hits:
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    for key in hits:
                        if record.get(key) is not None:
                            found.add(key)
                            del pending[key]
            if not text:
                break
    return found


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _without_lone_surrogates(value: Any) -> Any:
    """Text with unpaired surrogates (from JSON escapes) as U+FFFD, i.e. undecodable."""
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value


def _json_value(value: Any) -> str | None:
    """A JSON value as the text the checks expect (objects and arrays marked unusable)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return _NESTED
    return json.dumps(value)


def _parquet_chunks(path: Path, chunk_rows: int, flag: str) -> Iterator[tuple[pd.DataFrame, BadLines]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=chunk_rows):
            columns: dict[str, pd.Series] = {}
            for name, column in zip(batch.schema.names, batch.columns, strict=True):
                if pa.types.is_timestamp(column.type):
                    scale = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[column.type.unit]
                    seconds = column.cast(pa.int64()).to_numpy(zero_copy_only=False) / scale
                    # out of range as -1: as text, a year past 5138 would be read as ms
                    outside = (seconds < TIME_RANGE[0]) | (seconds >= TIME_RANGE[1])
                    seconds = np.where(outside, -1.0, seconds)
                    series = pd.Series(seconds, dtype="float64")
                    columns[name] = series.map(repr).where(series.notna(), None)
                elif pa.types.is_nested(column.type):
                    # Lists, structs, maps: no use as an id or a number (counted as bad rows
                    # where a used column holds them, as in JSON Lines); harmless elsewhere.
                    empty = column.is_null().to_numpy(zero_copy_only=False)
                    marks = np.full(len(empty), _NESTED, dtype=object)
                    marks[empty] = None
                    columns[name] = pd.Series(marks, dtype=object)
                else:
                    text = column.cast(pa.string()).to_pandas()
                    columns[name] = text.astype(object).where(text.notna(), None)
            yield pd.DataFrame(columns), []
    except (OSError, pa.ArrowException) as exc:
        reason = " ".join(str(exc).split())
        raise InvalidInput(flag, f"cannot read {path.name} as Parquet: {reason}") from exc


def check_time_format(time_format: str | None) -> str | None:
    """The --time-format, checked: a strftime format with at least one directive."""
    if time_format is None:
        return None
    if "%" not in time_format:
        raise InvalidInput(
            "--time-format", f"not a strftime format (no % directive): {time_format!r}; e.g. '%m/%d/%Y %H:%M'"
        )
    try:
        pd.to_datetime(pd.Series(["x"]), format=time_format, errors="coerce")
    except ValueError as exc:
        raise InvalidInput("--time-format", f"{time_format!r}: {exc}") from None
    return time_format


def parse_timestamps(values: pd.Series, time_format: str | None = None) -> np.ndarray:
    """Epoch seconds (float64, NaN where unparsable) from ISO-8601 text or epoch s / ms / µs / ns;
    with `time_format` (strftime; UTC unless it has %z) text in that format, else epoch numbers
    (a Parquet timestamp column arrives as epoch seconds). "now" and "today" are unparsable."""
    given = values.notna().to_numpy()
    out = np.full(len(values), np.nan)
    first = values[given].iloc[0] if given.any() else None
    # Parse the column in the form its first value has; only the rows that fail are tried
    # the other way (a column of ISO text pays no failed numeric parse per row, and back).
    if time_format is not None:
        order = ("format", "epoch")
    elif isinstance(first, str) and _looks_numeric(first):
        order = ("epoch", "iso")
    else:
        order = ("iso", "epoch")
    pending = given
    for form in order:
        if not pending.any():
            break
        part = values[pending]
        if form == "epoch":
            numeric = pd.to_numeric(part, errors="coerce").to_numpy(dtype="float64", copy=True)
            # Seconds, milli-, micro- or nanoseconds since the epoch, told apart by magnitude
            # (each band covers the years 1973 to 5138 in its unit).
            size = np.abs(numeric)
            for bound, scale in ((1e17, 1e9), (1e14, 1e6), (1e11, 1e3)):
                unit = size > bound
                numeric[unit] = numeric[unit] / scale
                size[unit] = 0.0
            parsed = numeric
        else:
            text_format = "ISO8601" if form == "iso" else time_format
            started = time.time()
            stamps = pd.to_datetime(part, errors="coerce", utc=True, format=text_format)
            # in the parsed unit: years 1-9999 parse, and nanoseconds would overflow past 2262
            epoch = pd.Timestamp(0, tz="UTC").as_unit(stamps.dt.unit)
            seconds = (stamps - epoch).dt.total_seconds()
            parsed = seconds.to_numpy(dtype="float64", na_value=np.nan, copy=True)
            parsed[_run_time_words(part, parsed, started)] = np.nan
        out[pending] = parsed
        pending = pending & np.isnan(out)
    return out


_RUN_TIME_WORDS = ("now", "today")


def _run_time_words(text: pd.Series, parsed: np.ndarray, started: float) -> np.ndarray:
    """Where `text` is "now" or "today" (any case, spaces around), which pandas reads as the
    clock of the run: no log means that. Such text parses to within two days of `started`
    (the clock before parsing; "today" may be a midnight in another zone), so only the rows
    parsed that late are read again: a log's text is not lowered row by row for this."""
    late = parsed >= started - 2 * 86_400
    found = np.zeros(len(text), dtype=bool)
    if late.any():
        words = text[late].astype(str).str.strip().str.lower()
        found[late] = words.isin(_RUN_TIME_WORDS).to_numpy()
    return found


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_ID_PROBLEMS = {
    1: "{} longer than " + str(MAX_ID_LENGTH) + " characters",
    2: "{} is a JSON object or array",
    3: "{} is not valid UTF-8 (wrong file encoding?)",
    4: "{} has control characters",
}


def _id_problem(value: object) -> int:
    """0 for a usable id (or a missing one, counted elsewhere), else a key of _ID_PROBLEMS."""
    if not isinstance(value, str):
        return 0
    if len(value) > MAX_ID_LENGTH:
        return 1
    if value.isprintable():
        return 3 if REPLACEMENT in value else 0
    return 2 if value == _NESTED else 4


def check_columns(
    options: LoadOptions, present: Sequence[str], source: str, report: LoadReport
) -> dict[str, bool]:
    """Which canonical columns a log has; InvalidInput naming the first required one missing.

    Used by every engine that reads logs, so they agree on what a usable log is.
    """
    source_of = {c: options.columns.get(c, c) for c in CANONICAL_COLUMNS}
    names = set(present)
    for canonical in options.required:
        if canonical == "event_type" and options.event_type:
            continue
        if source_of[canonical] not in names:
            raise InvalidInput(
                canonical,
                f"column '{source_of[canonical]}' not found in {source} "
                f"(columns: {show_columns(list(present))}); map it with --columns",
            )
    has_column = {c: source_of[c] in names for c in CANONICAL_COLUMNS}
    if options.event_type and has_column["event_type"]:
        raise InvalidInput(
            "--event-type",
            f"{source} has an event type column ('{source_of['event_type']}'); --event-type "
            "is for logs without one",
        )
    if options.event_type and options.event_type != DEFAULT_EVENT_TYPE:
        has_column["event_type"] = True  # typed: e.g. every row a purchase
    elif not has_column["event_type"]:
        report.notes.append(f"no event type column: every row counts as '{DEFAULT_EVENT_TYPE}'")
    return has_column


def _take(table: np.ndarray, codes: np.ndarray, fill: Any) -> np.ndarray:
    """table[codes] with `fill` where a code is -1 (a missing value)."""
    out = np.full(len(codes), fill, dtype=table.dtype)
    present = codes >= 0
    out[present] = table[codes[present]]
    return out


class _Chunk:
    """One chunk of a log being checked: which rows are still good, and why others are not."""

    def __init__(
        self,
        frame: pd.DataFrame,
        source_of: dict[str, str],
        report: LoadReport,
        records: _Records,
        has_column: dict[str, bool],
    ) -> None:
        self.frame = frame
        self.source_of = source_of
        self.has_column = has_column
        self.report = report
        self.n = len(frame)
        self.row_numbers = records.take(self.n)
        report.rows_read += self.n
        self.ok = np.ones(self.n, dtype=bool)

    def col(self, canonical: str) -> pd.Series | None:
        """The column; None when the log has no such column. A JSON Lines chunk whose records
        all lack a key the log has gets an all-missing column (its rows are checked, not kept
        with made-up values)."""
        name = self.source_of[canonical]
        if name in self.frame.columns:
            return self.frame[name]
        if self.has_column.get(canonical, False):
            return pd.Series([None] * self.n, dtype=object, index=self.frame.index)
        return None

    def reject(self, bad: np.ndarray, reason: str) -> None:
        """Count the still-good rows flagged in `bad` under `reason` and drop them."""
        bad = bad & self.ok
        if bad.any():
            self.report.add_bad(reason, self.row_numbers[bad])
            self.ok &= ~bad

    def distinct(self, canonical: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The column as (codes, distinct stripped values): codes -1 where missing.

        Per-value checks run on the distinct values only: a log repeats its ids and event
        names millions of times, so this keeps Python-level work proportional to the ids.
        """
        series = self.col(canonical)
        if series is None:
            return None
        codes, uniques = pd.factorize(series.to_numpy(dtype=object), use_na_sentinel=True)
        clean = np.array(
            [u.strip() if isinstance(u, str) else u for u in uniques.tolist()], dtype=object
        )
        return codes, clean

    def ids(self, canonical: str, required: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(codes, distinct stripped ids) after rejecting rows with unusable ids.

        A missing column is all codes -1.
        """
        found = self.distinct(canonical)
        if found is None:
            return np.full(self.n, -1, dtype=np.intp), np.zeros(0, dtype=object)
        codes, clean = found
        missing = codes < 0
        empty = clean == ""
        if canonical in required:
            self.reject(missing | _take(empty, codes, False), f"missing {canonical}")
        problem = np.fromiter((_id_problem(u) for u in clean), dtype=np.int8, count=len(clean))
        if problem.any():
            problems = _take(problem, codes, 0)
            for code, reason in _ID_PROBLEMS.items():
                self.reject(problems == code, reason.format(canonical))
        # a blank optional id is no id (a blank order id is no order, not one order that
        # every customer shares), as in the Spark engine
        codes = np.where(_take(empty, codes, False), -1, codes)
        return codes, clean

    def numeric(self, canonical: str, default: float) -> np.ndarray:
        """The column as kept (float32; `default` where missing), its bad values rejected:
        text that is no finite number, and numbers beyond float32, which would be infinite."""
        series = self.col(canonical)
        if series is None:
            return np.full(self.n, default, dtype=np.float32)
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", copy=True)
        given = series.notna().to_numpy()
        self.reject(given & ~np.isfinite(values), f"unparsable {canonical}")
        kept, beyond = as_float32(values)
        self.reject(given & beyond, NUMBER_OUT_OF_RANGE.format(canonical))
        kept[~given] = default
        return kept


def load_events(path: str | Path, options: LoadOptions | None = None) -> tuple[EventLog, LoadReport]:
    """Load a log, keeping every usable row and counting the rest per reason.

    Raises InvalidInput when the file or a required column is missing, and TooManyBadRows when
    the bad rows exceed `options.max_bad_rows`.
    """
    from recsvc.progress import progress

    options = options or LoadOptions()
    path = Path(path)
    check_input_file(path, "--events")
    fmt = detect_format(path, options.fmt)
    users, items, orders = IdMap(), IdMap(), IdMap()
    event_types: list[str] = list(options.known_event_types or [])
    event_index = {name: i for i, name in enumerate(event_types)}
    report = LoadReport()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in CANONICAL_COLUMNS}
    has_column: dict[str, bool] = {}
    source_of = {c: options.columns.get(c, c) for c in CANONICAL_COLUMNS}
    checked = False

    bar = progress(desc=f"loading {path.name}", unit="rows")
    records = _Records()
    keys = set(source_of.values())
    for chunk, bad_lines in _iter_chunks(path, fmt, options.chunk_rows, keys=keys):
        for reason, number in bad_lines:
            report.add_bad(reason, np.array([number]))
        report.rows_read += len(bad_lines)
        records.skip(bad_lines)
        if not checked and len(chunk.columns) == 0:
            continue
        if not checked:
            if fmt == "csv":
                check_text_columns(list(chunk.columns), path, "--events")
            has_column = check_columns(options, list(chunk.columns), path.name, report)
            checked = True

        rows = _Chunk(chunk, source_of, report, records, has_column)
        bar.update(rows.n)
        n = rows.n
        col, reject = rows.col, rows.reject
        user_raw = rows.ids("user_id", options.required)
        item_raw = rows.ids("item_id", options.required)
        order_raw = rows.ids("order_id", options.required)

        ts_col = col("timestamp")
        if ts_col is not None:
            ts = parse_timestamps(ts_col, options.time_format)
            missing = ts_col.isna().to_numpy()
            # A log with times needs every row's: a row kept at epoch 0 would be a purchase
            # from 1970 to recency, decay and buy-again.
            reject(missing, "missing timestamp")
            reject(~missing & np.isnan(ts), "unparsable timestamp")
            # a typo'd year (0001, 9999) or an epoch in the wrong unit would move "now",
            # recency and decay for everyone
            reject(~missing & ((ts < TIME_RANGE[0]) | (ts >= TIME_RANGE[1])), TIME_OUT_OF_RANGE)
            ts = np.nan_to_num(ts, nan=0.0)
        else:
            ts = np.zeros(n)

        # checked as kept: a quantity too small for float32 is a zero quantity
        quantity = rows.numeric("quantity", 1.0)
        reject(quantity < 0, "negative quantity (return or cancellation)")
        reject(quantity == 0, "zero quantity")
        price = rows.numeric("price", np.nan)
        reject(price < 0, "negative price")
        rating = rows.numeric("rating", np.nan)

        if options.cancel_prefix and has_column["order_id"]:
            prefix = options.cancel_prefix
            order_codes, order_values = order_raw
            starts = np.fromiter(
                (isinstance(o, str) and o.startswith(prefix) for o in order_values.tolist()),
                dtype=bool,
                count=len(order_values),
            )
            cancelled = _take(starts, order_codes, False)
            reject(cancelled, f"cancelled order (order_id starts with '{options.cancel_prefix}')")

        if options.event_type:
            events = np.zeros(n, dtype=np.int16)
            if options.event_type not in event_index:
                if options.known_event_types is not None:
                    raise InvalidInput(
                        "--event-type", f"'{options.event_type}' has no weight in the config"
                    )
                event_index[options.event_type] = len(event_types)
                event_types.append(options.event_type)
            events[:] = event_index[options.event_type]
        elif has_column["event_type"]:
            found = rows.distinct("event_type")
            assert found is not None
            type_codes, type_names = found
            type_names = np.array(
                [v.lower() if isinstance(v, str) else v for v in type_names.tolist()], dtype=object
            )
            missing = type_codes < 0
            empty = np.fromiter((v == "" for v in type_names), dtype=bool, count=len(type_names))
            reject(missing | _take(empty, type_codes, False), "missing event_type")
            unusable = np.fromiter(
                (isinstance(v, str) and _id_problem(v) != 0 for v in type_names),
                dtype=bool,
                count=len(type_names),
            )
            if unusable.any():
                reject(_take(unusable, type_codes, False), "unparsable event_type")
            events = np.zeros(n, dtype=np.int16)
            for position, name in enumerate(type_names.tolist()):
                if not isinstance(name, str) or not name:
                    continue
                matching = type_codes == position
                if not (matching & rows.ok).any():
                    continue
                if name not in event_index:
                    if options.known_event_types is not None:
                        reject(matching, "unknown event_type")
                        continue
                    event_index[name] = len(event_types)
                    event_types.append(name)
                events[matching] = event_index[name]
        else:
            if DEFAULT_EVENT_TYPE not in event_index:
                event_index[DEFAULT_EVENT_TYPE] = len(event_types)
                event_types.append(DEFAULT_EVENT_TYPE)
            events = np.full(n, event_index[DEFAULT_EVENT_TYPE], dtype=np.int16)

        ok = rows.ok
        kept = int(ok.sum())
        report.rows_kept += kept
        if kept == 0:
            continue
        parts["user_id"].append(users.encode_codes(user_raw[0][ok], user_raw[1]))
        parts["item_id"].append(items.encode_codes(item_raw[0][ok], item_raw[1]))
        parts["order_id"].append(orders.encode_codes(order_raw[0][ok], order_raw[1]))
        parts["event_type"].append(events[ok])
        parts["timestamp"].append(np.round(ts[ok]).astype(np.int64))
        parts["quantity"].append(quantity[ok])
        parts["price"].append(price[ok])
        parts["rating"].append(rating[ok])
    bar.close()

    if not checked:
        if report.rows_bad:  # every line malformed: e.g. a CSV read as JSON Lines
            reason, count = report.bad_rows.most_common(1)[0]
            raise InvalidInput(
                "--events",
                f"{path.name} holds no readable rows: {report.rows_bad} malformed lines "
                f"({count} '{reason}'), read as {fmt}: is that its format?",
            )
        raise InvalidInput("--events", f"{path.name} holds no rows")

    def cat(name: str, dtype: Any) -> np.ndarray:
        return np.concatenate(parts[name]) if parts[name] else np.zeros(0, dtype=dtype)

    event_log = EventLog(
        users=users,
        items=items,
        orders=orders,
        event_types=event_types,
        user=cat("user_id", np.int32),
        item=cat("item_id", np.int32),
        event=cat("event_type", np.int16),
        timestamp=cat("timestamp", np.int64),
        order=cat("order_id", np.int32),
        quantity=cat("quantity", np.float32),
        price=cat("price", np.float32),
        rating=cat("rating", np.float32),
        has_column=has_column,
    )
    log.info(
        "events loaded",
        extra={"source": path.name, **{k: v for k, v in report.to_dict().items() if k != "notes"}},
    )
    report.check_limit(options.max_bad_rows, path.name)
    return event_log, report


@dataclass
class Catalog:
    """Item metadata: category, price and stock, aligned with an item IdMap."""

    category: np.ndarray  # object: category name or "" when unknown
    price: np.ndarray  # float32, NaN when unknown
    in_stock: np.ndarray  # bool
    title: np.ndarray  # object

    @classmethod
    def empty(cls, n_items: int) -> Catalog:
        return cls(
            category=np.full(n_items, "", dtype=object),
            price=np.full(n_items, np.nan, dtype=np.float32),
            in_stock=np.ones(n_items, dtype=bool),
            title=np.full(n_items, "", dtype=object),
        )


_TRUE = {"1", "true", "yes", "y", "t", "in_stock", "instock"}
_FALSE = {"0", "false", "no", "n", "f", "out_of_stock", "outofstock", ""}


def read_catalog_frame(path: str | Path, fmt: str | None = None) -> pd.DataFrame:
    """Read an items file (item_id, category, price, in_stock, title) as strings.

    Raises InvalidInput (field --items or item_id) for a file that cannot be read or has no
    item_id column.
    """
    path = Path(path)
    check_input_file(path, "--items")
    try:
        fmt = detect_format(path, fmt)
    except InvalidInput as exc:
        raise InvalidInput("--items", exc.reason) from None
    frames: list[pd.DataFrame] = []
    bad_lines: BadLines = []
    for chunk, bad in _iter_chunks(path, fmt, 1_000_000, "--items"):
        frames.append(chunk)
        bad_lines += bad
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if fmt == "csv":
        check_text_columns(list(frame.columns), path, "--items")
    if len(frame.columns) == 0 and bad_lines:
        raise InvalidInput("--items", f"{path.name} holds no readable rows ({len(bad_lines)} malformed lines)")
    # Lines no parser could split are counted by the caller (load_catalog, update_items).
    frame.attrs["bad_lines"] = bad_lines
    if "item_id" not in frame.columns:
        raise InvalidInput(
            "item_id", f"column not found in {path.name} (columns: {show_columns(list(frame.columns))})"
        )
    return frame


def repeated_items_note(rows: int) -> str:
    """The report note of a catalogue that lists items more than once (every engine's)."""
    plural = "s" if rows != 1 else ""
    return f"{CATALOG}item_id repeated by a later row in {rows} row{plural}; each item's last row is used"


def load_catalog(
    path: str | Path, items: IdMap, report: LoadReport | None = None, grow: bool = True
) -> Catalog:
    """Load an items catalog aligned to `items`; unknown catalog items are added when `grow`.

    Unparsable prices and stock flags are counted in `report` under 'catalog: ...' reasons.
    """
    frame = read_catalog_frame(path)
    report = report if report is not None else LoadReport()
    bad_lines = frame.attrs.get("bad_lines", [])
    for reason, number in bad_lines:
        report.add_bad(CATALOG + reason, np.array([number]))
    ids = frame["item_id"].astype(object).where(frame["item_id"].notna(), None)
    ids = ids.map(lambda v: v.strip() if isinstance(v, str) else v)
    records = _Records()
    records.skip(bad_lines)
    rows = records.take(len(frame))
    missing = (ids.isna() | (ids == "")).to_numpy()
    report.add_bad(CATALOG + "missing item_id", rows[missing])
    problems = ids.map(_id_problem).to_numpy(dtype=np.int8)
    for code, reason in _ID_PROBLEMS.items():
        report.add_bad(CATALOG + reason.format("item_id"), rows[(problems == code) & ~missing])
    missing = missing | (problems != 0)
    frame = frame[~missing]
    ids = ids[~missing]
    rows = rows[~missing]
    repeated = int(ids.duplicated(keep="last").sum())
    if repeated:  # the last row of each item wins (assignment order), said rather than silent
        report.notes.append(repeated_items_note(repeated))
    index = items.encode(ids.to_numpy(dtype=object), grow=grow)
    known = index >= 0
    catalog = Catalog.empty(len(items))
    if "category" in frame.columns:
        cat = frame["category"].fillna("").astype(str).str.strip().to_numpy(dtype=object)
        catalog.category[index[known]] = cat[known]
    if "title" in frame.columns:
        catalog.title[index[known]] = frame["title"].fillna("").astype(str).to_numpy(object)[known]
    if "price" in frame.columns:
        price = pd.to_numeric(frame["price"], errors="coerce").to_numpy(dtype="float64", copy=True)
        bad = frame["price"].notna().to_numpy() & (~np.isfinite(price) | (price < 0))
        report.add_bad(CATALOG + "unparsable or negative price", rows[bad])
        kept, beyond = as_float32(price)
        beyond &= ~bad
        report.add_bad(CATALOG + NUMBER_OUT_OF_RANGE.format("price"), rows[beyond])
        kept[bad | beyond] = np.nan
        catalog.price[index[known]] = kept[known]
    if "in_stock" in frame.columns:
        flags = frame["in_stock"].fillna("").astype(str).str.strip().str.lower()
        is_true = flags.isin(_TRUE).to_numpy()
        is_false = flags.isin(_FALSE).to_numpy()
        bad = ~(is_true | is_false)
        report.add_bad(CATALOG + "unparsable in_stock", rows[bad])
        catalog.in_stock[index[known]] = (is_true | bad)[known]  # unknown flag: keep selling
    return catalog
