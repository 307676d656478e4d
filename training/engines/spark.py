"""The Spark training engine: `recsvc train --engine spark`, the same bundle as the local engine.

For stores whose logs outgrow one machine. Input is read by Spark from any URI it understands
(local paths, `s3a://`, `hdfs://`, ...), as CSV, JSON Lines or Parquet, with the local loader's
column mapping, row checks and bad-row reasons (`recsvc.events`). The bundle it writes is format
version 1 (`recsvc.bundle`), manifest included, so nothing downstream changes.

What runs where:

- In Spark (executors): parsing and checking every row, bad-row counts per reason (one
  aggregation), dense user / item indexes (a distributed sort plus per-partition offsets, i.e.
  zipWithIndex without leaving the JVM), event weights and the interaction matrix, implicit ALS
  (`pyspark.ml.recommendation.ALS`), each user's top-N unseen candidates and each item's
  similar items (blocked scoring: item factors broadcast, one numpy block of users or items
  at a time through `recsvc.ranking.top_candidates`, the one ranking path), baskets and
  FP-Growth (`pyspark.ml.fpm.FPGrowth`) with rule metrics recomputed from integer counts,
  buy-again statistics, RFM segments and k-means taste clusters (`pyspark.ml.clustering`),
  and the popularity aggregations.
- On the driver: only what is catalogue-sized or already small (item factors, per-item
  popularity scores and their top-N, the rules kept), plus the writing. Per-user results (user
  ids, the seen matrix, user factors, candidates, buy-again lists, segments) are streamed
  partition by partition (`toLocalIterator` over Arrow batches) into memory-mapped files or
  Parquet writers; they are never collected whole.

Differences from the local engine, by design: Spark has no EASE, item-kNN or BPR, so the
bundle's recommenders are `als` and `popular` (a configured default of another model falls back
to `als`, noted in the manifest); Spark ALS scales the regularisation by each row's number of
interactions (ALS-WR) and uses confidence 1 + alpha * strength; ids are indexed in sorted order
rather than order of appearance. Must not import `serving`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsvc.bundle import BundleWriter, RankedLists, fingerprint_files, utc_timestamp
from recsvc.config import EventsConfig, TrainConfig, to_dict
from recsvc.errors import InvalidInput
from recsvc.events import (
    _ID_PROBLEMS,  # the id reasons' wording, shared so both engines report alike
    CANONICAL_COLUMNS,
    CATALOG,
    DEFAULT_EVENT_TYPE,
    EXAMPLES_PER_REASON,
    MAX_ID_LENGTH,
    NUMBER_OUT_OF_RANGE,
    REPLACEMENT,
    TIME_OUT_OF_RANGE,
    TIME_RANGE,
    Catalog,
    LoadOptions,
    LoadReport,
    check_columns,
    check_text_columns,
    detect_format,
    repeated_items_note,
    show_columns,
)
from recsvc.ids import IdMap
from recsvc.matrix import MIN_DECAY
from recsvc.rules import RuleSet
from training.pipeline import TrainResult, effective_load_options, read_forget_list
from training.rules import save_rules

log = logging.getLogger(__name__)

APP_NAME = "recsvc-train"
SECONDS_PER_DAY = 86_400
CORRUPT = "_corrupt_record"
PERSIST = StorageLevel.MEMORY_AND_DISK
SCORE_CELLS = 1 << 24  # scores per block in blocked scoring (64 MB of float32 per task)
SPARK_MODELS = ("als", "popular")
_TRUE = ("1", "true", "yes", "y", "t", "in_stock", "instock")
_FALSE = ("0", "false", "no", "n", "f", "out_of_stock", "outofstock", "")
_JSON_VALUE = r'^\s*(\[.*\]|".*"|-?[0-9][0-9.eE+-]*|true|false|null)\s*$'
# What Python's str.isprintable() rejects: other/separator categories except the ASCII space.
_NOT_PRINTABLE = r"[\p{Cc}\p{Cf}\p{Cs}\p{Co}\p{Cn}\p{Zl}\p{Zp}\p{Zs}&&[^ ]]"


# --- session and streaming -------------------------------------------------------------------


# What the engine needs of any session it reads with: times in UTC; every CSV column parsed,
# so that a line with an extra field is malformed even when that field's column is not used
# (column pruning hid it); Parquet nanosecond timestamps (pandas < 3 writes them) read as epoch
# numbers instead of refused.
SESSION_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.csv.parser.columnPruning.enabled": "false",
    "spark.sql.legacy.parquet.nanosAsLong": "true",
}
# Defaults for a session the engine starts itself (a caller's `conf` overrides them). No console
# progress bars: `recsvc train` reports its own steps, and CI logs stay readable. The SparkContext
# reads this once, at start, so it cannot go in SESSION_CONF (set on any session at run time).
# The driver keeps the status of past jobs, stages and SQL executions (1,000 of each by default,
# UI or not): a long-lived session that trains again and again grows its heap with them until
# it runs out (seen after ~1,900 stages in the test suite's shared 2 GB session); 100 is plenty
# for following one training.
LAUNCH_CONF = {
    "spark.ui.showConsoleProgress": "false",
    "spark.ui.retainedJobs": "100",
    "spark.ui.retainedStages": "100",
    "spark.sql.ui.retainedExecutions": "100",
}


def spark_session(
    master: str | None = "local[2]", conf: dict[str, str] | None = None
) -> SparkSession:
    """The active SparkSession, else a new one on `master`.

    Under spark-submit the master given to spark-submit wins. For local masters the Python
    workers run this interpreter, so they see the same numpy and recsvc.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName(APP_NAME)
    for key, value in SESSION_CONF.items():
        builder = builder.config(key, value)
    launched_by_spark_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if master and not launched_by_spark_submit:
        builder = builder.master(master)
        if master.startswith("local"):
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in {**LAUNCH_CONF, **(conf or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def _pack_batches(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Executor side of `stream_batches`: each Arrow batch becomes one row of IPC bytes."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_batch(batch)
        payload = pa.array([sink.getvalue().to_pybytes()], type=pa.binary())
        yield pa.RecordBatch.from_arrays([payload], names=["arrow"])


def stream_batches(frame: DataFrame) -> Iterator[pa.RecordBatch]:
    """A DataFrame's rows as Arrow batches on the driver, in its order, a partition at a time."""
    packed = frame.mapInArrow(_pack_batches, "arrow binary")
    for row in packed.toLocalIterator(prefetchPartitions=True):
        with pa.ipc.open_stream(row["arrow"]) as reader:
            yield from reader


def _numpy(column: pa.Array | pa.ChunkedArray, dtype: Any) -> np.ndarray:
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=dtype)


def _list_values(column: pa.Array, width: int, dtype: Any) -> np.ndarray:
    """A list column whose every entry holds `width` values, as a (rows, width) array."""
    values = _numpy(column.flatten(), dtype)
    return values.reshape(len(column), width)


def _list_array(values: np.ndarray) -> pa.Array:
    """(rows, width) array as an Arrow list column (one list per row)."""
    rows, width = values.shape
    offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32) if rows else [0])
    return pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))


class _Scratch:
    """Memory-mapped arrays next to the bundle while it is written; removed at the end."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=".spark-scratch-", dir=root))

    def array(self, name: str, shape: tuple[int, ...], dtype: Any, fill: float) -> np.ndarray:
        if math.prod(shape) == 0:
            return np.full(shape, fill, dtype=dtype)
        values = np.lib.format.open_memmap(
            self.dir / f"{name}.npy", mode="w+", dtype=dtype, shape=shape
        )
        values[...] = fill
        return values

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class Cache:
    """The frames one job persisted: dropped one by one when done with, or all at the end."""

    def __init__(self) -> None:
        self.frames: list[DataFrame] = []

    def __call__(self, frame: DataFrame) -> DataFrame:
        frame = frame.persist(PERSIST)
        self.frames.append(frame)
        return frame

    def drop(self, frame: DataFrame) -> None:
        frame.unpersist()
        self.frames = [f for f in self.frames if f is not frame]

    def release(self) -> None:
        for frame in reversed(self.frames):
            frame.unpersist()
        self.frames = []


def _bundle_file(writer: BundleWriter, name: str) -> Path:
    """A new file in the bundle for a streamed artifact (listed in the manifest like the rest)."""
    return writer._file(name)  # BundleWriter has no public streaming hook


def _stream_parquet(writer: BundleWriter, name: str, frame: DataFrame, schema: pa.Schema) -> int:
    """Stream `frame` (in its order) into `<name>.parquet` of the bundle; returns rows written."""
    rows = 0
    with pq.ParquetWriter(_bundle_file(writer, f"{name}.parquet"), schema) as parquet:
        for batch in stream_batches(frame):
            table = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
            parquet.write_table(table)
            rows += table.num_rows
        if rows == 0:
            parquet.write_table(schema.empty_table())
    return rows


def _lookup(values: Sequence[Any], position: Column) -> Column:
    """values[position] as a Spark expression (values: a short literal list)."""
    return F.element_at(F.array(*[F.lit(v) for v in values]), position.cast("int") + 1)


def _offsets_from_sizes(sizes: dict[int, int]) -> list[int]:
    n = max(sizes) + 1 if sizes else 0
    counts = np.zeros(n, dtype=np.int64)
    for pid, size in sizes.items():
        counts[pid] = size
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist() if n else []


def _position(offsets: list[int]) -> Column:
    """0-based global position from `_pid` / `_mid` columns and per-partition offsets."""
    local = F.col("_mid") - F.shiftleft(F.col("_pid").cast("long"), 33)
    if not offsets:
        return local
    return _lookup(offsets, F.col("_pid")).cast("long") + local


def dense_index(
    ids: DataFrame, id_column: str, index_column: str, cache: Cache
) -> tuple[DataFrame, int]:
    """Distinct ids -> (id, dense int index in sorted id order), computed in Spark; and the count.

    A range-partitioned sort, then per-partition row counts become offsets (zipWithIndex in
    DataFrame terms). Both steps read one persisted sort, so the indexes are stable; the
    result is persisted in `cache`.
    """
    ordered = cache(
        ids.where(F.col(id_column).isNotNull())
        .distinct()
        .orderBy(id_column)
        .select(
            id_column,
            F.spark_partition_id().alias("_pid"),
            F.monotonically_increasing_id().alias("_mid"),
        )
    )
    sizes = {int(r["_pid"]): int(r["count"]) for r in ordered.groupBy("_pid").count().collect()}
    index = cache(
        ordered.select(
            id_column, _position(_offsets_from_sizes(sizes)).cast("int").alias(index_column)
        )
    )
    count = index.count()
    cache.drop(ordered)
    return index, count


# --- reading and checking rows ---------------------------------------------------------------


def _strip(column: Column) -> Column:
    return F.regexp_replace(column, r"(?U)^\s+|\s+$", "")


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local_path(path: str) -> Path:
    return Path(path[len("file://") :] if path.startswith("file://") else path)


@dataclass
class _Source:
    """A file read by Spark: its frame (Spark types kept), columns present, malformed-row reason."""

    frame: DataFrame
    present: list[str]
    malformed: Column | None
    name: str
    fmt: str


def _read_source(
    spark: SparkSession, path: str, fmt: str, wanted: Sequence[str], flag: str
) -> _Source:
    """Read CSV / JSON Lines / Parquet at any Spark URI; raises InvalidInput naming `flag`."""
    from pyspark.errors import AnalysisException

    name = Path(path.rstrip("/")).name or path
    if _is_local(path) and not _local_path(path).exists():
        raise InvalidInput(flag, f"file not found: {path}")
    try:
        if fmt == "csv":
            sep = "\t" if name.lower().removesuffix(".gz").endswith(".tsv") else ","
            reader = (  # RFC 4180 quoting, as pandas: "" is a quote inside a quoted field
                spark.read.option("header", True).option("sep", sep).option("encoding", "UTF-8")
                .option("escape", '"')
            )
            header = [c for c in reader.csv(path).columns if c != CORRUPT]
            if header:
                header[0] = header[0].removeprefix("\ufeff")  # a byte-order mark, as pandas
            check_text_columns(header, Path(name), flag)
            schema = T.StructType(
                [T.StructField(c, T.StringType()) for c in header]
                + [T.StructField(CORRUPT, T.StringType())]
            )
            frame = (
                reader.schema(schema)
                .option("mode", "PERMISSIVE")
                .option("columnNameOfCorruptRecord", CORRUPT)
                .csv(path)
            )
            # pandas fills short lines with missing values; only lines with extra fields are bad.
            extra = F.size(F.split(F.col(CORRUPT), sep, -1)) > len(header)
            malformed = F.when(
                F.col(CORRUPT).isNotNull() & extra, F.lit("malformed line (wrong number of fields)")
            )
            return _Source(frame, header, malformed, name, fmt)
        if fmt == "jsonl":
            columns = list(dict.fromkeys(wanted))
            schema = T.StructType(
                [T.StructField(c, T.StringType()) for c in columns]
                + [T.StructField(CORRUPT, T.StringType())]
            )
            frame = (
                spark.read.schema(schema).option("columnNameOfCorruptRecord", CORRUPT).json(path)
            )
            seen = frame.select(
                [
                    F.max(F.col(f"`{c}`").isNotNull().cast("int")).alias(f"c{i}")
                    for i, c in enumerate(columns)
                ]
            ).first()
            present = [c for i, c in enumerate(columns) if seen is not None and seen[f"c{i}"] == 1]
            text = F.col(CORRUPT)
            malformed = (
                F.when(text.isNull(), F.lit(None))
                .when(
                    ~_strip(text).startswith("{") & text.rlike(_JSON_VALUE),
                    F.lit("JSON line is not an object"),
                )
                .otherwise(F.lit("malformed JSON line"))
            )
            return _Source(frame, present, malformed, name, fmt)
        frame = spark.read.parquet(path)
        return _Source(frame, list(frame.columns), None, name, fmt)
    except AnalysisException as exc:
        raise InvalidInput(
            flag, f"cannot read {path} as {fmt}: {str(exc).splitlines()[0]}"
        ) from None


def _text(source: _Source, column: str | None) -> Column:
    """A source column as text (NULL when absent)."""
    if column is None or column not in source.present:
        return F.lit(None).cast("string")
    value = F.col(f"`{column}`")
    if isinstance(_dtype(source, column), T.FloatType | T.DoubleType):
        # whole numbers as Arrow writes them (17850, not 17850.0): the local loader's text of
        # a float column of ids (UCI-style exports) or 0/1 stock flags
        whole = (value == F.floor(value)) & (F.abs(value) < 1e15)
        return F.when(whole, value.cast("long").cast("string")).otherwise(value.cast("string"))
    return value.cast("string")


def _dtype(source: _Source, column: str) -> T.DataType:
    return source.frame.schema[column].dataType if column in source.present else T.StringType()


# Text that is a number to pandas.to_numeric (the local loader); Java's own syntax (2d, 1f,
# 0x1p3) is not.
_DECIMAL = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$|^\s*[+-]?(inf|infinity|nan)\s*$"


def _number(raw: str, dtype: T.DataType) -> Column:
    """A numeric column from a raw one: NULL where it does not parse (try_cast, ANSI-safe)."""
    if isinstance(dtype, T.NumericType):
        return F.col(raw).cast("double")
    decimal = F.lower(F.col(f"`{raw}`")).rlike(_DECIMAL)
    return F.when(decimal, F.expr(f"try_cast(`{raw}` AS DOUBLE)"))


def _finite(column: Column) -> Column:
    return column.isNotNull() & ~F.isnan(column) & (F.abs(column) != float("inf"))


def _seconds(raw: str, dtype: T.DataType, time_format: str | None = None) -> Column:
    """Epoch seconds from ISO-8601 text, epoch s / ms / µs / ns (told apart by magnitude as in
    `recsvc.events.parse_timestamps`), or a timestamp type. Text in a strftime `time_format`
    is parsed by `parse_timestamps` itself (a pandas UDF), so both engines read it alike.
    Other text Spark's parser refuses is NULL here and read again by `_reparse_text_times`."""
    if isinstance(dtype, T.TimestampType | T.TimestampNTZType):
        return F.unix_micros(F.col(f"`{raw}_typed`").cast("timestamp")) / 1e6
    if isinstance(dtype, T.DateType):
        return F.unix_date(F.col(f"`{raw}_typed`")).cast("double") * float(SECONDS_PER_DAY)
    if time_format is not None and not isinstance(dtype, T.NumericType):
        return _formatted_seconds(time_format)(F.col(raw))
    number = _number(raw, dtype)
    number = F.when(_finite(number), number)
    size = F.abs(number)
    from_number = (
        F.when(size > 1e17, number / 1e9)
        .when(size > 1e14, number / 1e6)
        .when(size > 1e11, number / 1e3)
        .otherwise(number)
    )
    from_text = F.unix_micros(F.try_to_timestamp(F.col(raw))) / 1e6
    return F.when(number.isNotNull(), from_number).otherwise(from_text)


def _formatted_seconds(time_format: str | None) -> Any:
    """A pandas UDF: epoch seconds (NULL where unparsable) of text in `time_format` (None: as
    the local loader reads text without one, ISO 8601 in pandas' wider sense, then epochs)."""
    from pyspark.sql.functions import pandas_udf

    from recsvc.events import parse_timestamps

    @pandas_udf("double")  # type: ignore[call-overload]
    def seconds(text: pd.Series) -> pd.Series:
        parsed = parse_timestamps(text.astype(object).where(text.notna(), None), time_format)
        return pd.Series(parsed).where(~np.isnan(parsed), None)

    return seconds


def _reparse_text_times(checked: DataFrame) -> DataFrame:
    """`checked` with the rows whose timestamp text Spark's parser refused (`_ts_text`) read
    again by `recsvc.events.parse_timestamps`, which the local loader uses: `2026/1/1 10:00`,
    `20260101T100000Z` or `2026-01-01T10Z` parse there. Their reason is then the timestamp's,
    if it is still unparsable or out of range, else the next one (`_later_reason`).

    Only for logs with such rows (the slow path): a pass over the cached rows with a pandas
    UDF whose input is NULL except on those rows.
    """
    seconds = F.col("_retried")
    in_range = (seconds >= F.lit(TIME_RANGE[0])) & (seconds < F.lit(TIME_RANGE[1]))
    retried = F.col("_ts_text").isNotNull()
    reason = (
        F.when(seconds.isNull(), F.lit("unparsable timestamp"))
        .when(~in_range, F.lit(TIME_OUT_OF_RANGE))
        .otherwise(F.col("_later_reason"))
    )
    kept = [c for c in checked.columns if c not in ("_reason", "ts", "_ts_text", "_later_reason")]
    return checked.withColumn("_retried", _formatted_seconds(None)(F.col("_ts_text"))).select(
        *kept,
        F.when(retried, reason).otherwise(F.col("_reason")).alias("_reason"),
        F.when(retried & in_range, F.bround(seconds).cast("long"))
        .otherwise(F.col("ts"))
        .alias("ts"),
    )


@dataclass
class _ReasonCounts:
    """Bad rows per reason with the first row numbers (1-based), from one Spark aggregation."""

    rows_read: int
    counts: dict[str, int]
    examples: dict[str, list[int]]


def count_reasons(frame: DataFrame, reasons: Sequence[Column]) -> _ReasonCounts:
    """Count rows of `frame` (with `_pid` / `_mid` from its scan) per non-NULL reason.

    A row may carry several reasons (the catalogue's price and stock checks are independent).
    Row numbers are positions in the input order, from per-partition offsets.
    """
    listed = F.filter(F.array(*reasons), lambda r: r.isNotNull())
    exploded = frame.select("_pid", "_mid", F.posexplode_outer(listed).alias("_pos", "_reason"))
    first = F.col("_pos").isNull() | (F.col("_pos") == 0)
    example = F.when(F.col("_reason").isNotNull(), F.col("_mid"))
    groups = (
        exploded.groupBy("_pid", "_reason")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.count(F.when(first, 1)).alias("rows"),
            F.slice(F.array_sort(F.collect_list(example)), 1, EXAMPLES_PER_REASON).alias("mids"),
        )
        .collect()
    )
    sizes: dict[int, int] = {}
    for row in groups:
        sizes[int(row["_pid"])] = sizes.get(int(row["_pid"]), 0) + int(row["rows"])
    offsets = _offsets_from_sizes(sizes)
    counts: dict[str, int] = {}
    found: dict[str, list[int]] = {}
    for row in groups:
        reason = row["_reason"]
        if reason is None:
            continue
        counts[reason] = counts.get(reason, 0) + int(row["n"])
        pid = int(row["_pid"])
        found.setdefault(reason, []).extend(
            offsets[pid] + (int(mid) - (pid << 33)) + 1 for mid in row["mids"]
        )
    examples = {reason: sorted(rows)[:EXAMPLES_PER_REASON] for reason, rows in found.items()}
    return _ReasonCounts(int(sum(sizes.values())), counts, examples)


def _add_to_report(report: LoadReport, counted: _ReasonCounts) -> None:
    for reason, count in counted.counts.items():
        report.bad_rows[reason] += count
        kept = report.examples.setdefault(reason, [])
        kept.extend(counted.examples.get(reason, [])[: EXAMPLES_PER_REASON - len(kept)])


def id_checks(value: Column, name: str, json_lines: bool) -> list[tuple[Column, str]]:
    """Why an id (stripped text) is unusable, as recsvc.events._id_problem, first match wins.

    In JSON Lines Spark hands an object or array value over as its JSON text, so text opening
    with `{` or `[` stands for one there (a string id written like JSON is taken for one too).
    """
    checks = [(value.rlike(r"^[\[{]"), _ID_PROBLEMS[2].format(name))] if json_lines else []
    return [
        *checks,
        (F.length(value) > MAX_ID_LENGTH, _ID_PROBLEMS[1].format(name)),
        (value.rlike(_NOT_PRINTABLE), _ID_PROBLEMS[4].format(name)),
        (F.instr(value, REPLACEMENT) > 0, _ID_PROBLEMS[3].format(name)),
    ]


def _first_reason(checks: Sequence[tuple[Column, Column]]) -> Column:
    """The value of the first check that holds (NULL when none does)."""
    reason: Column | None = None
    for condition, value in checks:
        reason = F.when(condition, value) if reason is None else reason.when(condition, value)
    none = F.lit(None).cast("string")
    return none if reason is None else reason.otherwise(none)


def _event_reason(
    columns: dict[str, Column],
    has: dict[str, bool],
    options: LoadOptions,
    malformed: Column | None,
    json_lines: bool,
    after_timestamp: bool = False,
) -> Column:
    """The first reason a row is bad, in the local loader's order (NULL for a good row);
    `after_timestamp`: the first of those checked after the timestamp."""
    checks: list[tuple[Column, Column]] = []

    def check(condition: Column, reason: str) -> None:
        checks.append((condition, F.lit(reason)))

    if malformed is not None:
        checks.append((malformed.isNotNull(), malformed))
    for name in ("user_id", "item_id", "order_id"):
        if not has[name]:
            continue
        value = columns[name]
        if name in options.required:
            check(value.isNull() | (value == ""), f"missing {name}")
        for condition, reason in id_checks(value, name, json_lines):
            check(condition, reason)
    if has["timestamp"]:
        check(F.col("_raw_timestamp").isNull(), "missing timestamp")  # as the local loader
        check(F.col("_raw_timestamp").isNotNull() & F.col("_ts").isNull(), "unparsable timestamp")
        check(
            (F.col("_ts") < F.lit(TIME_RANGE[0])) | (F.col("_ts") >= F.lit(TIME_RANGE[1])),
            TIME_OUT_OF_RANGE,
        )
    if after_timestamp:
        checks.clear()
    for name in ("quantity", "price", "rating"):
        if not has[name]:
            continue
        raw, value = F.col(f"_raw_{name}"), F.col(f"_{name}")
        kept = value.cast("float")  # checked as kept, as the local loader does
        check(raw.isNotNull() & ~_finite(value), f"unparsable {name}")
        check(raw.isNotNull() & ~_finite(kept), NUMBER_OUT_OF_RANGE.format(name))
        if name == "quantity":
            check(kept < 0, "negative quantity (return or cancellation)")
            check(kept == 0, "zero quantity")
        elif name == "price":
            check(kept < 0, "negative price")
    if options.cancel_prefix and has["order_id"]:
        prefix = options.cancel_prefix
        check(
            columns["order_id"].startswith(prefix),
            f"cancelled order (order_id starts with '{prefix}')",
        )
    if not options.event_type and has["event_type"]:
        event = columns["event_type"]
        check(event.isNull() | (event == ""), "missing event_type")
        unusable = [condition for condition, _ in id_checks(event, "event_type", json_lines)]
        check(F.greatest(*unusable), "unparsable event_type")
        if options.known_event_types is not None:
            check(
                ~event.isin([str(name) for name in options.known_event_types]), "unknown event_type"
            )
    return _first_reason(checks)


@dataclass
class SparkLog:
    """A checked, indexed event log living in Spark (persisted), and what the driver knows of it."""

    events: DataFrame  # user int (NULL: none), item int, order_id, event, ts long, quantity,
    # price, rating (float, NULL when unknown), row long; train_spark adds weight float
    users: DataFrame  # user_id, user (dense index)
    items: DataFrame  # item_id, item
    n_users: int
    n_items: int
    n_events: int
    n_orders: int
    event_types: list[str]
    has_column: dict[str, bool]
    now: int
    report: LoadReport
    forgotten_users: int = 0
    catalog_read_at: str | None = None  # when the items file was read (see train_spark)


def _checked_events(
    spark: SparkSession, path: str, options: LoadOptions, report: LoadReport, cache: Cache
) -> tuple[DataFrame, DataFrame, dict[str, bool], list[str]]:
    """Read and check every row; count the bad ones into `report`. Returns the kept rows."""
    fmt = detect_format(Path(path.rstrip("/")), options.fmt)
    source_of = {c: options.columns.get(c, c) for c in CANONICAL_COLUMNS}
    source = _read_source(spark, path, fmt, list(source_of.values()), "--events")
    present = set(source.present)
    if not present:
        raise InvalidInput("--events", f"{source.name} holds no rows")
    has = check_columns(options, source.present, source.name, report)
    event_types = list(options.known_event_types or [])
    if options.event_type:
        if options.event_type not in event_types:
            if options.known_event_types is not None:
                raise InvalidInput(
                    "--event-type", f"'{options.event_type}' has no weight in the config"
                )
            event_types.append(options.event_type)
    elif not has["event_type"] and DEFAULT_EVENT_TYPE not in event_types:
        event_types.append(DEFAULT_EVENT_TYPE)

    raw_columns: list[Column] = [
        F.spark_partition_id().alias("_pid"),
        F.monotonically_increasing_id().alias("_mid"),
        (source.malformed if source.malformed is not None else F.lit(None).cast("string")).alias(
            "_malformed"
        ),
    ]
    for canonical in ("user_id", "item_id", "order_id", "event_type"):
        raw_columns.append(
            _strip(_text(source, source_of[canonical] if has[canonical] else None)).alias(canonical)
        )
    for canonical in ("timestamp", "quantity", "price", "rating"):
        column = source_of[canonical] if has[canonical] else None
        raw_columns.append(_text(source, column).alias(f"_raw_{canonical}"))
        if canonical == "timestamp" and column is not None:
            raw_columns.append(F.col(f"`{column}`").alias("_raw_timestamp_typed"))
    raw = source.frame.select(raw_columns)
    parsed = raw.select(
        "*",
        (
            _seconds("_raw_timestamp", _dtype(source, source_of["timestamp"]), options.time_format)
            if has["timestamp"]
            else F.lit(0.0)
        ).alias("_ts"),
        *[
            _number(f"_raw_{name}", _dtype(source, source_of[name])).alias(f"_{name}")
            for name in ("quantity", "price", "rating")
        ],
    )
    columns = {
        "user_id": F.col("user_id"),
        "item_id": F.col("item_id"),
        "order_id": F.col("order_id"),
        "event_type": F.lower(F.col("event_type")),
    }
    malformed = F.col("_malformed") if source.malformed is not None else None
    json_lines = source.fmt == "jsonl"
    reason = _event_reason(columns, has, options, malformed, json_lines)
    # Text times Spark's parser refuses are read again as the local loader reads them, after
    # counting and only if there are any: their text (and the reason a row would have after a
    # good time) is kept for those rows alone, so the usual log caches nothing more.
    time_type = _dtype(source, source_of["timestamp"]) if has["timestamp"] else None
    text_times = (
        time_type is not None
        and options.time_format is None
        and not isinstance(
            time_type, T.NumericType | T.TimestampType | T.TimestampNTZType | T.DateType
        )
    )
    retry: list[Column] = []
    if text_times:
        refused = F.col("_reason") == F.lit("unparsable timestamp")
        later = _event_reason(columns, has, options, malformed, json_lines, after_timestamp=True)
        retry = [
            F.when(refused, F.col("_raw_timestamp")).alias("_ts_text"),
            F.when(refused, later).alias("_later_reason"),
        ]
    parsed = parsed.withColumn("_reason", reason)

    def optional(name: str) -> Column:
        value = F.col(f"_{name}")
        return F.when(F.col(f"_raw_{name}").isNotNull(), value).cast("float")

    event = (
        F.lit(options.event_type)
        if options.event_type
        else (columns["event_type"] if has["event_type"] else F.lit(DEFAULT_EVENT_TYPE))
    )
    # Only what the job needs is cached: the typed values and each row's reason, not the text.
    checked = cache(
        parsed.select(
            "_pid",
            "_mid",
            "_reason",
            *retry,
            F.when(F.col("user_id") != "", F.col("user_id")).alias("user_id"),
            F.when(F.col("item_id") != "", F.col("item_id")).alias("item_id"),
            F.when(F.col("order_id") != "", F.col("order_id")).alias("order_id"),
            event.alias("event"),
            # rows out of range are dropped below; their time must not overflow the cast first
            F.bround(
                F.when((F.col("_ts") >= TIME_RANGE[0]) & (F.col("_ts") < TIME_RANGE[1]), F.col("_ts"))
                .otherwise(F.lit(0.0))
            ).cast("long").alias("ts"),
            F.coalesce(optional("quantity"), F.lit(1.0).cast("float")).alias("quantity"),
            optional("price").alias("price"),
            optional("rating").alias("rating"),
        )
    )
    counted = count_reasons(checked, [F.col("_reason")])
    if text_times and counted.counts.get("unparsable timestamp"):
        retried = cache(_reparse_text_times(checked))
        counted = count_reasons(retried, [F.col("_reason")])  # fills it before checked goes
        cache.drop(checked)
        checked = retried
    report.rows_read += counted.rows_read
    _add_to_report(report, counted)
    report.rows_kept += counted.rows_read - sum(counted.counts.values())
    if counted.rows_read == 0:
        raise InvalidInput("--events", f"{source.name} holds no rows")
    log.info(
        "events checked",
        extra={
            "source": source.name,
            **{k: v for k, v in report.to_dict().items() if k != "notes"},
        },
    )
    report.check_limit(options.max_bad_rows, source.name)
    kept = checked.where(F.col("_reason").isNull()).select(
        "user_id",
        "item_id",
        "order_id",
        "event",
        "ts",
        "quantity",
        "price",
        "rating",
        F.col("_mid").alias("row"),
    )
    return kept, checked, has, event_types


def load_spark_log(
    spark: SparkSession,
    path: str,
    options: LoadOptions,
    cache: Cache,
    items_path: str | None = None,
    forget: set[str] | None = None,
) -> tuple[SparkLog, DataFrame | None]:
    """Check, clean and index the log in Spark; also the catalogue frame when `items_path` is given.

    What stays persisted is registered in `cache`. Raises InvalidInput for unusable input and
    TooManyBadRows past the limit.
    """
    report = LoadReport()
    kept, checked, has, event_types = _checked_events(spark, path, options, report, cache)
    forgotten_users = 0
    if forget:
        forget_frame = cache(forgotten_ids(kept.select("user_id").distinct(), forget))
        dropped = (
            kept.join(F.broadcast(forget_frame), "user_id", "left_semi")
            .agg(F.count(F.lit(1)).alias("events"), F.countDistinct("user_id").alias("users"))
            .first()
        )
        forgotten_users = int(dropped["users"]) if dropped is not None else 0
        if dropped is not None and forgotten_users:
            report.notes.append(
                f"{int(dropped['events'])} events of {forgotten_users} forgotten customers dropped"
            )
            kept = kept.join(F.broadcast(forget_frame), "user_id", "left_anti")

    # before the items file is read (Spark reads lazily, later): item updates made after this
    # apply to the bundle in the store; one made between this and the read applies twice, alike
    catalog_read_at = utc_timestamp() if items_path else None
    catalog = _read_catalog(spark, items_path, report, cache) if items_path else None
    users, n_users = dense_index(kept.select("user_id"), "user_id", "user", cache)
    item_ids = kept.select("item_id")
    if catalog is not None:
        item_ids = item_ids.unionByName(catalog.select("item_id"))
    items, n_items = dense_index(item_ids, "item_id", "item", cache)
    events = cache(
        kept.join(users, "user_id", "left")
        .join(items, "item_id", "left")
        .select("user", "item", "order_id", "event", "ts", "quantity", "price", "rating", "row")
    )
    summary = events.agg(
        F.count(F.lit(1)).alias("n"),
        F.max("ts").alias("now"),
        F.countDistinct("order_id").alias("orders"),
    ).first()
    assert summary is not None
    cache.drop(checked)
    spark_log = SparkLog(
        events=events,
        users=users,
        items=items,
        n_users=n_users,
        n_items=n_items,
        n_events=int(summary["n"]),
        n_orders=int(summary["orders"]),
        event_types=event_types,
        has_column=has,
        now=int(summary["now"] or 0),
        report=report,
        forgotten_users=forgotten_users,
        catalog_read_at=catalog_read_at,
    )
    return spark_log, catalog


def _key_batches(
    hasher: Any, keys: Any, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Executor side of forgotten_ids: keep the ids whose keyed hash is on the forget list."""
    wanted = keys.value
    for batch in batches:
        ids = batch.column("user_id").to_pylist()
        kept = [u for u in ids if u is not None and hasher.user_key(u) in wanted]
        yield pa.RecordBatch.from_arrays([pa.array(kept, type=pa.string())], names=["user_id"])


def forgotten_ids(user_ids: DataFrame, entries: set[str]) -> DataFrame:
    """The ids among `user_ids` (column user_id) the forget list names, as resolve_forgotten.

    Plain entries match directly; `hmac-sha256:` entries match ids whose key under the id
    secret is listed (hashed on the executors with recsvc.privacy.IdHasher, so the secret
    travels in the task closure: use Spark's RPC encryption on shared clusters). Raises
    InvalidInput when hashed entries come without the secret they were made with.
    """
    from recsvc.privacy import hasher_from_env, is_hashed_entry, resolve_forgotten

    spark = user_ids.sparkSession
    plain = sorted(e for e in entries if not is_hashed_entry(e))
    hashed = [e for e in entries if is_hashed_entry(e)]
    found = user_ids.join(
        F.broadcast(spark.createDataFrame([(u,) for u in plain], "user_id string")),
        "user_id",
        "left_semi",
    )
    if not hashed:
        return found
    hasher = hasher_from_env()
    resolve_forgotten(hashed, [], hasher)  # checks the secret's fingerprint, raises if wrong
    keys = spark.sparkContext.broadcast({e.split(":", 2)[2] for e in hashed})
    matched = user_ids.mapInArrow(partial(_key_batches, hasher, keys), "user_id string")
    return found.unionByName(matched).distinct()


def _read_catalog(spark: SparkSession, path: str, report: LoadReport, cache: Cache) -> DataFrame:
    """The items catalogue (item_id, category, price, in_stock, title), checked like load_catalog.

    Malformed lines and unusable item ids leave the row out; unparsable prices and stock flags
    only blank the field. Every case is counted under a 'catalog: ...' reason.
    """
    try:
        fmt = detect_format(Path(path.rstrip("/")), None)
    except InvalidInput as exc:
        raise InvalidInput("--items", exc.reason) from None
    wanted = ["item_id", "category", "price", "in_stock", "title"]
    source = _read_source(spark, path, fmt, wanted, "--items")
    if "item_id" not in source.present:
        raise InvalidInput(
            "item_id",
            f"column not found in {source.name} (columns: {show_columns(source.present)})",
        )
    malformed = source.malformed if source.malformed is not None else F.lit(None).cast("string")
    frame = source.frame.select(
        F.spark_partition_id().alias("_pid"),
        F.monotonically_increasing_id().alias("_mid"),
        malformed.alias("_malformed"),
        *[_text(source, c if c in source.present else None).alias(f"_raw_{c}") for c in wanted],
    )
    item_id = _strip(F.col("_raw_item_id"))
    left_out = _first_reason(
        [
            (F.col("_malformed").isNotNull(), F.concat(F.lit(CATALOG), F.col("_malformed"))),
            (item_id.isNull() | (item_id == ""), F.lit(CATALOG + "missing item_id")),
            *[
                (condition, F.lit(CATALOG + reason))
                for condition, reason in id_checks(item_id, "item_id", fmt == "jsonl")
            ],
        ]
    )
    usable = F.col("_left_out").isNull()
    price = _number("_raw_price", _dtype(source, "price"))
    bad_price = F.col("_raw_price").isNotNull() & (~_finite(price) | (price < 0))
    beyond = ~bad_price & F.col("_raw_price").isNotNull() & ~_finite(price.cast("float"))
    flag = F.lower(_strip(F.coalesce(F.col("_raw_in_stock"), F.lit(""))))
    is_true, is_false = flag.isin(list(_TRUE)), flag.isin(list(_FALSE))
    has_stock = "in_stock" in source.present
    no_reason = F.lit(None).cast("string")
    checked = cache(
        frame.select("*", left_out.alias("_left_out")).select(
            "_pid",
            "_mid",
            "_left_out",
            item_id.alias("item_id"),
            F.coalesce(_strip(F.col("_raw_category")), F.lit("")).alias("category"),
            F.when(bad_price | beyond, F.lit(None)).otherwise(price).cast("float").alias("price"),
            F.when(usable & bad_price, F.lit(CATALOG + "unparsable or negative price"))
            .when(usable & beyond, F.lit(CATALOG + NUMBER_OUT_OF_RANGE.format("price")))
            .alias("_bad_price"),
            (is_true | ~is_false).alias("in_stock") if has_stock else F.lit(True).alias("in_stock"),
            (
                F.when(usable & ~(is_true | is_false), F.lit(CATALOG + "unparsable in_stock"))
                if has_stock
                else no_reason
            ).alias("_bad_stock"),
            F.coalesce(F.col("_raw_title"), F.lit("")).alias("title"),
        )
    )
    counted = count_reasons(checked, [F.col("_left_out"), F.col("_bad_price"), F.col("_bad_stock")])
    _add_to_report(report, counted)
    # A catalogue listing an item twice: the last row wins, as in load_catalog (and is noted).
    latest = Window.partitionBy("item_id").orderBy(F.col("_mid").desc())
    ranked = checked.where(usable).select("*", F.row_number().over(latest).alias("_n"))
    repeated = ranked.where(F.col("_n") > 1).count()
    if repeated:
        report.notes.append(repeated_items_note(repeated))
    return ranked.where(F.col("_n") == 1).select("item_id", "category", "price", "in_stock", "title")


def _catalog_arrays(spark_log: SparkLog, catalog: DataFrame | None) -> tuple[IdMap, Catalog]:
    """Item ids in index order and the aligned catalogue (catalogue-sized: on the driver)."""
    frame = spark_log.items
    if catalog is not None:
        frame = frame.join(catalog, "item_id", "left")
    else:
        frame = frame.select(
            "item_id",
            "item",
            F.lit("").alias("category"),
            F.lit(None).cast("float").alias("price"),
            F.lit(True).alias("in_stock"),
            F.lit("").alias("title"),
        )
    ids: list[str] = []
    out = Catalog.empty(spark_log.n_items)
    for batch in stream_batches(frame.orderBy("item")):
        index = _numpy(batch.column("item"), np.int64)
        ids.extend(batch.column("item_id").to_pylist())
        out.category[index] = np.asarray(
            batch.column("category").fill_null("").to_pylist(), dtype=object
        )
        out.title[index] = np.asarray(batch.column("title").fill_null("").to_pylist(), dtype=object)
        out.price[index] = _numpy(batch.column("price").cast(pa.float32()), np.float32)
        out.in_stock[index] = _numpy(batch.column("in_stock").fill_null(True), bool)
    return IdMap(ids), out


# --- interactions and models -----------------------------------------------------------------


def weight_column(
    config: EventsConfig, event_types: Sequence[str], has: dict[str, bool], now: int
) -> Column:
    """One strength per row, as recsvc.matrix.event_weights: type x decay x quantity x rating."""
    for name in event_types:
        if name not in config.weights:
            raise InvalidInput(
                f"events.weights.{name}",
                f"event type '{name}' appears in the log but has no weight in the config",
            )
    pairs: list[Column] = []
    for name in event_types:
        pairs += [F.lit(name), F.lit(float(config.weights[name]))]
    weight = F.coalesce(F.create_map(*pairs)[F.col("event")], F.lit(0.0)) if pairs else F.lit(0.0)
    weight = weight.cast("float").cast("double")
    if config.half_life_days > 0 and has.get("timestamp", False):
        age_days = F.greatest(F.lit(now) - F.col("ts"), F.lit(0)).cast("double") / SECONDS_PER_DAY
        decay = F.pow(F.lit(2.0), -age_days / config.half_life_days)
        # floored as in event_weights: an old event fades but stays an interaction (seen)
        weight = weight * F.greatest(decay, F.lit(MIN_DECAY)).cast("float")
    if config.use_quantity:
        weight = weight * (1.0 + F.log1p(F.greatest(F.col("quantity") - 1.0, F.lit(0.0))))
    if config.rating_weight and has.get("rating", False):
        factor = F.greatest(1.0 + config.rating_weight * (F.col("rating") - 3.0), F.lit(0.05))
        weight = weight * F.coalesce(factor, F.lit(1.0))
    return weight.cast("float")


def interactions(weighted: DataFrame) -> DataFrame:
    """(user, item, strength): summed weights of each user's rows per item, zeros left out."""
    return (
        weighted.where(F.col("user").isNotNull() & F.col("item").isNotNull())
        .groupBy("user", "item")
        .agg(F.sum("weight").cast("float").alias("strength"))
        .where(F.col("strength") != 0)
    )


def fit_als(
    pairs: DataFrame,
    factors: int,
    iterations: int,
    regularization: float,
    alpha: float,
    seed: int = 42,
    blocks: int | None = None,
) -> Any:
    """Implicit-feedback ALS (Spark MLlib) on (user, item, strength); returns the ALSModel."""
    from pyspark.ml.recommendation import ALS

    blocks = blocks or max(2, pairs.sparkSession.sparkContext.defaultParallelism)
    als = ALS(
        rank=factors,
        maxIter=iterations,
        regParam=regularization,
        alpha=alpha,
        implicitPrefs=True,
        userCol="user",
        itemCol="item",
        ratingCol="strength",
        seed=seed,
        numUserBlocks=blocks,
        numItemBlocks=blocks,
        coldStartStrategy="nan",
    )
    return als.fit(pairs)


def _factor_matrix(frame: DataFrame, n_rows: int, rank: int) -> np.ndarray:
    """(id, features) factors as a dense (n_rows, rank) float32 array; zeros where absent."""
    out = np.zeros((n_rows, rank), dtype=np.float32)
    for batch in stream_batches(frame.select("id", "features")):
        out[_numpy(batch.column("id"), np.int64)] = _list_values(
            batch.column("features"), rank, np.float32
        )
    return out


def _score_batches(
    item_matrix: Any, n: int, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Executor side of blocked scoring: best n unseen items per user of each Arrow batch."""
    from recsvc.ranking import top_candidates

    matrix = np.asarray(item_matrix.value, dtype=np.float32)
    n_items, rank = matrix.shape
    rows_per_block = max(1, min(1024, SCORE_CELLS // max(n_items, 1)))
    for batch in batches:
        if batch.num_rows == 0:
            continue
        users = _numpy(batch.column("user"), np.int32)
        vectors = _list_values(batch.column("features"), rank, np.float32)
        seen = batch.column("seen")
        lengths = _numpy(pc.list_value_length(seen).fill_null(0), np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        indices = _numpy(seen.flatten(), np.int32)
        history = sp.csr_matrix(
            (np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(users), n_items)
        )
        for start in range(0, len(users), rows_per_block):
            stop = min(start + rows_per_block, len(users))
            scores = vectors[start:stop] @ matrix.T
            best, values = top_candidates(scores, n, banned=history[start:stop])
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array(users[start:stop]),
                    _list_array(vectors[start:stop]),
                    _list_array(best.astype(np.int32)),
                    _list_array(values.astype(np.float32)),
                ],
                names=["user", "features", "items", "scores"],
            )


def score_users(vectors: DataFrame, pairs: DataFrame, item_matrix: np.ndarray, n: int) -> DataFrame:
    """Each user's best n unseen items by vectors . item_matrix, computed in Spark, by user.

    vectors: (user, features array<float>). pairs: (user, item) seen pairs, banned. Returns
    (user, features, items array<int>, scores array<float>), -1 padded like top_candidates.
    """
    spark = vectors.sparkSession
    seen = pairs.groupBy("user").agg(F.collect_list("item").alias("seen"))
    frame = (
        vectors.join(seen, "user", "left").repartitionByRange("user").sortWithinPartitions("user")
    )
    shared = spark.sparkContext.broadcast(np.ascontiguousarray(item_matrix, dtype=np.float32))
    schema = "user int, features array<float>, items array<int>, scores array<float>"
    return frame.mapInArrow(partial(_score_batches, shared, n), schema)


def _similar_batches(
    unit: Any, n: int, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Executor side of similar items: top-n cosine neighbours (self excluded) per item."""
    from recsvc.ranking import top_candidates

    factors = np.asarray(unit.value, dtype=np.float32)
    n_items = factors.shape[0]
    rows_per_block = max(1, min(2048, SCORE_CELLS // max(n_items, 1)))
    for batch in batches:
        items = _numpy(batch.column("id"), np.int64)
        for start in range(0, len(items), rows_per_block):
            block = items[start : start + rows_per_block]
            sims = factors[block] @ factors.T
            sims[np.arange(len(block)), block] = -np.inf
            best, values = top_candidates(sims, n)
            yield pa.RecordBatch.from_arrays(
                [pa.array(block.astype(np.int32)), _list_array(best), _list_array(values)],
                names=["item", "items", "scores"],
            )


def similar_items(spark: SparkSession, item_factors: np.ndarray, n: int) -> DataFrame:
    """Top-n most similar items by cosine of item factors, computed in Spark by item blocks."""
    factors = np.asarray(item_factors, dtype=np.float32)
    norms = np.linalg.norm(factors, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    shared = spark.sparkContext.broadcast(factors / norms)
    ids = spark.range(
        0, factors.shape[0], numPartitions=max(1, spark.sparkContext.defaultParallelism)
    )
    schema = "item int, items array<int>, scores array<float>"
    return ids.mapInArrow(partial(_similar_batches, shared, n), schema)


def similar_by_cooccurrence(pairs: DataFrame, n: int) -> DataFrame:
    """Top-n items by cosine of co-occurrence (binary users x items), for bundles without factors."""
    binary = pairs.select("user", "item").distinct()
    norms = binary.groupBy("item").agg(F.sqrt(F.count(F.lit(1)).cast("double")).alias("norm"))
    left = binary.withColumnRenamed("item", "a")
    right = binary.withColumnRenamed("item", "b")
    co = (
        left.join(right, "user")
        .where(F.col("a") != F.col("b"))
        .groupBy("a", "b")
        .agg(F.count(F.lit(1)).cast("double").alias("co"))
        .join(norms.withColumnRenamed("item", "a").withColumnRenamed("norm", "na"), "a")
        .join(norms.withColumnRenamed("item", "b").withColumnRenamed("norm", "nb"), "b")
        .select("a", "b", (F.col("co") / F.col("na") / F.col("nb")).cast("float").alias("sim"))
    )
    rank = Window.partitionBy("a").orderBy(F.col("sim").desc(), F.col("b"))
    return (
        co.select("*", F.row_number().over(rank).alias("rank"))
        .where(F.col("rank") <= n)
        .groupBy(F.col("a").alias("item"))
        .agg(F.array_sort(F.collect_list(F.struct("rank", "b", "sim"))).alias("top"))
        .select("item", F.col("top.b").alias("items"), F.col("top.sim").alias("scores"))
    )


def _fill_rows(
    frame: DataFrame, key: str, targets: dict[str, np.ndarray], widths: dict[str, int]
) -> int:
    """Stream (key, list columns...) rows into row `key` of each target array; returns rows."""
    rows = 0
    for batch in stream_batches(frame):
        index = _numpy(batch.column(key), np.int64)
        for name, target in targets.items():
            column = batch.column(name)
            lengths = _numpy(pc.list_value_length(column).fill_null(0), np.int64)
            if (lengths == widths[name]).all():
                target[index] = _list_values(column, widths[name], target.dtype)
            else:  # shorter lists (co-occurrence): the rest of the row keeps its padding
                starts = np.cumsum(lengths) - lengths
                position = np.arange(int(lengths.sum())) - np.repeat(starts, lengths)
                target[np.repeat(index, lengths), position] = _numpy(column.flatten(), target.dtype)
        rows += len(index)
    return rows


# --- association rules ------------------------------------------------------------------------


def spark_baskets(spark_log: SparkLog, window_days: float) -> DataFrame:
    """(basket, items array<int>) as training.baskets: purchases by order, else per-user windows.

    A window opens at a user's first purchase not yet in a window and holds that user's
    purchases less than `window_days` after it (computed per user with a Spark `aggregate`).
    """
    if (
        not isinstance(window_days, int | float)
        or not math.isfinite(window_days)
        or window_days <= 0
    ):
        raise InvalidInput("window_days", f"must be a positive number of days, got {window_days!r}")
    events = spark_log.events.where(F.col("item").isNotNull())
    if spark_log.has_column.get("event_type", False):
        events = events.where(F.col("event") == "purchase")
    by_order = events.where(F.col("order_id").isNotNull()).select(
        F.concat(F.lit("o:"), F.col("order_id")).alias("basket"), "item"
    )
    loose = events.where(F.col("order_id").isNull() & F.col("user").isNotNull()).select(
        "user", "ts", "item"
    )
    width = max(int(math.ceil(window_days * SECONDS_PER_DAY)), 1)
    initial = F.struct(
        F.lit(None).cast("long").alias("start"), F.array().cast("array<bigint>").alias("starts")
    )

    def merge(acc: Column, t: Column) -> Column:
        opens = acc["start"].isNull() | (t >= acc["start"] + width)
        moved = F.struct(t.alias("start"), F.concat(acc["starts"], F.array(t)).alias("starts"))
        return F.when(opens, moved).otherwise(acc)

    starts = loose.groupBy("user").agg(
        F.aggregate(
            F.array_sort(F.collect_set("ts")), initial, merge, lambda acc: acc["starts"]
        ).alias("starts")
    )
    window = F.size(F.filter("starts", lambda s: s <= F.col("ts"))) - 1
    by_window = loose.join(starts, "user").select(
        F.concat_ws(":", F.lit("w"), F.col("user").cast("string"), window.cast("string")).alias(
            "basket"
        ),
        "item",
    )
    return (
        by_order.unionByName(by_window)
        .groupBy("basket")
        .agg(F.array_sort(F.collect_set("item")).alias("items"))
    )


def mine_rules_spark(
    baskets: DataFrame,
    min_support: float,
    min_confidence: float,
    max_len: int = 3,
    max_rules: int | None = None,
) -> RuleSet:
    """Rules `A -> c` with FP-Growth; metrics from integer counts, as training.rules.mine_rules.

    Spark's FP-Growth has no length cap: rules with antecedents longer than max_len - 1 are
    dropped afterwards, which gives the same rules. The support threshold is passed so that
    Spark's ceil(minSupport * n) equals training.rules.min_count_for exactly.
    Raises InvalidInput for thresholds outside [0, 1] or max_len < 2.
    """
    from pyspark.ml.fpm import FPGrowth

    from training.rules import min_count_for

    for name, value, low_ok in (
        ("min_support", min_support, min_support > 0),
        ("min_confidence", min_confidence, min_confidence >= 0),
    ):
        if not math.isfinite(value) or not low_ok or value > 1:
            raise InvalidInput(
                name,
                f"must be a fraction in {'(0, 1]' if name == 'min_support' else '[0, 1]'}, got {value}",
            )
    if isinstance(max_len, bool) or max_len < 2:
        raise InvalidInput("max_len", f"rules need itemsets of at least 2 items, got {max_len!r}")
    baskets = baskets.select("items").persist(PERSIST)
    try:
        n_orders = baskets.count()
        if n_orders == 0:
            return RuleSet.empty(0)
        min_count = min_count_for(min_support, n_orders)
        model = FPGrowth(
            itemsCol="items", minSupport=(min_count - 0.5) / n_orders, minConfidence=min_confidence
        ).fit(baskets)
        freq = model.freqItemsets.select(F.array_sort("items").alias("key"), "freq")
        rules = model.associationRules.where(F.size("antecedent") <= max_len - 1).select(
            F.array_sort("antecedent").alias("antecedent"),
            F.col("consequent")[0].alias("consequent"),
        )
        n = F.lit(n_orders).cast("long")
        rule, left, right = F.col("count_rule"), F.col("count_left"), F.col("count_right")
        scored = (
            rules.select(
                "*", F.array_sort(F.concat("antecedent", F.array("consequent"))).alias("key")
            )
            .join(freq.withColumnRenamed("freq", "count_rule"), "key")
            .join(
                freq.select(F.col("key").alias("antecedent"), F.col("freq").alias("count_left")),
                "antecedent",
            )
            .join(
                freq.where(F.size("key") == 1).select(
                    F.col("key")[0].alias("consequent"), F.col("freq").alias("count_right")
                ),
                "consequent",
            )
            .where(rule / left >= min_confidence)
            .select(
                "antecedent",
                "consequent",
                (rule / n).alias("support"),
                (rule / left).alias("confidence"),
                ((rule * n) / (left * right)).alias("lift"),
                ((rule * n - left * right) / (n * n)).alias("leverage"),
                F.when(left == rule, F.lit(float("inf")))
                .otherwise(((n - right) * left) / (n * (left - rule)))
                .alias("conviction"),
            )
            .orderBy(
                F.col("confidence").desc(),
                F.col("lift").desc(),
                F.size("antecedent"),
                "antecedent",
                "consequent",
            )
        )
        if max_rules is not None:
            scored = scored.limit(max_rules)
        parts: dict[str, list[np.ndarray]] = {
            k: []
            for k in (
                "lengths",
                "items",
                "consequent",
                "support",
                "confidence",
                "lift",
                "leverage",
                "conviction",
            )
        }
        for batch in stream_batches(scored):
            antecedent = batch.column("antecedent")
            parts["lengths"].append(_numpy(pc.list_value_length(antecedent), np.int64))
            parts["items"].append(_numpy(antecedent.flatten(), np.int32))
            for name in ("consequent", "support", "confidence", "lift", "leverage", "conviction"):
                parts[name].append(
                    _numpy(batch.column(name), np.int32 if name == "consequent" else np.float64)
                )
        if not parts["consequent"]:
            return RuleSet.empty(n_orders)
        lengths = np.concatenate(parts["lengths"])
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        joined = {name: np.concatenate(values) for name, values in parts.items()}
        return RuleSet(
            antecedent_indptr=indptr,
            antecedent_items=joined["items"],
            consequent=joined["consequent"],
            support=joined["support"],
            confidence=joined["confidence"],
            lift=joined["lift"],
            leverage=joined["leverage"],
            conviction=joined["conviction"],
            n_orders=int(n_orders),
        )
    finally:
        baskets.unpersist()


# --- buy-again, segments, popularity ---------------------------------------------------------


def _repurchase_rows(spark_log: SparkLog) -> DataFrame | None:
    """Purchase rows as training.buyagain.purchase_mask sees them (None: there are none).

    As EventLog.purchase_mask: every row of a log without an event type column (or read with
    `--event-type interaction`) is a purchase, even though the config's weights, and so
    `event_types`, always name "purchase".
    """
    events = spark_log.events.where(F.col("user").isNotNull() & F.col("item").isNotNull())
    if not spark_log.has_column.get("event_type", False):
        return events
    if "purchase" in spark_log.event_types:
        return events.where(F.col("event") == "purchase")
    return None


def _due_batches(
    now: int, horizon_days: float, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """Executor side: the due score of each (user, item) pair through recsvc.buyagain.due_scores."""
    from recsvc.buyagain import due_scores

    for batch in batches:
        scores = due_scores(
            now,
            _numpy(batch.column("next_due"), np.int64),
            _numpy(batch.column("sd_days"), np.float64),
            _numpy(batch.column("confidence"), np.float64),
            horizon_days,
        )
        yield batch.append_column("due_score", pa.array(scores.astype(np.float32)))


def fit_buyagain_spark(spark_log: SparkLog, config: Any, now: int) -> Any:
    """Buy-again lists (recsvc.buyagain.BuyAgainLists) with training.buyagain's statistics.

    Occasions, median gaps and their spread, and the items' population rates are DataFrame
    aggregations; each user's best `config.max_items_per_user` are picked with a window; the
    lists reach the driver sorted by user, batch by batch.
    """
    from recsvc.buyagain import HORIZON_DAYS, BuyAgainLists
    from training.buyagain import (
        LAPSE_SDS,
        MIN_POPULATION_BUYERS,
        MIN_SPREAD,
        ONCE_SPREAD,
        PRIOR_SPREAD,
        PRIOR_WEIGHT,
        SAME_OCCASION_SECONDS,
    )

    rows = _repurchase_rows(spark_log)
    if not spark_log.has_column.get("timestamp", False) or rows is None:
        return BuyAgainLists.empty(spark_log.n_users, now)
    rows = rows.where(~(F.col("quantity") <= 0))
    # Occasions as in training.buyagain: runs of a pair's purchases each less than
    # SAME_OCCASION_SECONDS after the one before; gaps in whole days (at least 1) between
    # the occasions' first purchases.
    by_time = Window.partitionBy("user", "item").orderBy("ts")
    starts = (F.col("ts") - F.lag("ts").over(by_time)) >= SAME_OCCASION_SECONDS
    occasion = F.sum(F.when(starts, 1).otherwise(0)).over(
        by_time.rowsBetween(Window.unboundedPreceding, Window.currentRow))
    occasions = (
        rows.select("user", "item", "ts", occasion.alias("occasion"))
        .groupBy("user", "item", "occasion")
        .agg(F.min("ts").alias("first"), F.max("ts").alias("time"))
    )
    by_first = Window.partitionBy("user", "item").orderBy("first")
    since = F.col("first") - F.lag("first").over(by_first)  # null for a pair's first occasion
    gap_days = F.when(since.isNotNull(), F.greatest(F.rint(since / SECONDS_PER_DAY), F.lit(1.0)))
    gaps = occasions.select("user", "item", "time", gap_days.alias("gap")).persist(PERSIST)
    pairs = gaps.groupBy("user", "item").agg(
        F.count(F.lit(1)).alias("count"),
        F.max("time").alias("last"),
        F.percentile(F.col("gap").cast("double"), 0.5).alias("interval"),
    )
    spread_of = (
        gaps.join(pairs.select("user", "item", "interval"), ["user", "item"])
        .groupBy("user", "item")
        .agg(F.percentile(F.abs(F.col("gap") - F.col("interval")), 0.5).alias("mad"))
    )
    pairs = pairs.join(spread_of, ["user", "item"])
    repeat = F.col("count") >= 2
    n_gaps = (F.col("count") - 1).cast("double")
    cv = F.when(repeat, 1.4826 * F.col("mad") / F.col("interval")).otherwise(F.lit(0.0))
    weight = F.greatest(n_gaps - 1, F.lit(0.0))
    spread = F.greatest(
        F.sqrt((weight * cv * cv + PRIOR_WEIGHT * PRIOR_SPREAD**2) / (weight + PRIOR_WEIGHT)),
        F.lit(MIN_SPREAD),
    )
    population = pairs.groupBy("item").agg(
        F.count(F.lit(1)).alias("buyers"),
        F.count(F.when(repeat, 1)).alias("repeaters"),
        F.percentile(F.when(repeat, F.col("interval")), 0.5).alias("population_interval"),
    )
    rate = F.col("repeaters") / F.col("buyers")
    once_ok = (
        (F.col("count") == 1)
        & (rate >= config.min_population_rate)
        & (F.col("buyers") >= MIN_POPULATION_BUYERS)
        & F.col("population_interval").isNotNull()
    )
    interval = F.greatest(
        F.coalesce(
            F.when(repeat, F.col("interval")).otherwise(F.col("population_interval")), F.lit(1.0)
        ),
        F.lit(1.0),
    )
    stats = pairs.join(population, "item").select(
        "user",
        "item",
        "count",
        "last",
        interval.alias("interval_days"),
        F.when(repeat, spread).otherwise(F.lit(ONCE_SPREAD)).alias("spread"),
        F.when(repeat, n_gaps / (n_gaps + 1.0)).otherwise(rate / 3.0).alias("confidence"),
        (repeat | once_ok).alias("offered"),
    )
    sd_days = F.greatest(F.col("spread") * F.col("interval_days"), F.lit(1.0))
    next_due = F.col("last") + F.bround(F.col("interval_days") * SECONDS_PER_DAY).cast("long")
    overdue_days = (F.lit(now) - F.col("next_due")) / SECONDS_PER_DAY
    candidates = (
        stats.select("*", sd_days.alias("sd_days"), next_due.alias("next_due"))
        .where(
            F.col("offered")
            & (overdue_days <= F.col("interval_days") + LAPSE_SDS * F.col("sd_days"))
        )
        .select(
            F.col("user").cast("int"),
            F.col("item").cast("int"),
            F.col("count").cast("int"),
            "last",
            "interval_days",
            "sd_days",
            "confidence",
            "next_due",
            F.abs(overdue_days).alias("distance"),
        )
    )
    schema = T.StructType([*candidates.schema.fields, T.StructField("due_score", T.FloatType())])
    scored = candidates.mapInArrow(partial(_due_batches, now, HORIZON_DAYS), schema)
    best = Window.partitionBy("user").orderBy(
        F.col("due_score").desc(), F.col("distance"), F.col("item")
    )
    chosen = (
        scored.select("*", F.row_number().over(best).alias("rank"))
        .where(F.col("rank") <= config.max_items_per_user)
        .orderBy("user", "rank")
    )
    names = (
        "user",
        "item",
        "due_score",
        "next_due",
        "interval_days",
        "count",
        "last",
        "sd_days",
        "confidence",
    )
    dtypes = (
        np.int64,
        np.int32,
        np.float32,
        np.int64,
        np.float32,
        np.int32,
        np.int64,
        np.float32,
        np.float32,
    )
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for batch in stream_batches(chosen.select(*names)):
        for name, dtype in zip(names, dtypes, strict=True):
            parts[name].append(_numpy(batch.column(name), dtype))
    gaps.unpersist()
    if not parts["user"]:
        return BuyAgainLists.empty(spark_log.n_users, now)
    arrays = {
        name: np.concatenate(values).astype(dtype)
        for (name, values), dtype in zip(parts.items(), dtypes, strict=True)
    }
    indptr = np.zeros(spark_log.n_users + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(arrays["user"], minlength=spark_log.n_users))
    return BuyAgainLists(
        indptr=indptr,
        items=arrays["item"],
        due_score=arrays["due_score"],
        next_due=arrays["next_due"],
        interval_days=arrays["interval_days"],
        count=arrays["count"],
        last=arrays["last"],
        sd_days=arrays["sd_days"],
        confidence=arrays["confidence"],
        trained_at=int(now),
        horizon_days=HORIZON_DAYS,
    )


def quantile_scores_spark(
    frame: DataFrame, key: str, value: str, higher_is_better: bool, cache: Cache
) -> DataFrame:
    """(key, score 1-5) as training.segments.quantile_scores: average-rank quantile, ties shared.

    Computed over distinct values with their counts, sorted in Spark; ranks before each value
    come from per-partition sums (offsets) plus a running sum within the partition.
    """
    distinct = frame.groupBy(value).agg(F.count(F.lit(1)).alias("n"))
    order = F.col(value).asc() if higher_is_better else F.col(value).desc()
    ordered = cache(
        distinct.orderBy(order).select(
            value,
            "n",
            F.spark_partition_id().alias("_pid"),
            F.monotonically_increasing_id().alias("_mid"),
        )
    )
    sizes = {
        int(r["_pid"]): int(r["s"])
        for r in ordered.groupBy("_pid").agg(F.sum("n").alias("s")).collect()
    }
    total = max(sum(sizes.values()), 1)
    offsets = _offsets_from_sizes(sizes)
    running = Window.partitionBy("_pid").orderBy("_mid").rowsBetween(Window.unboundedPreceding, -1)
    before = F.coalesce(F.sum("n").over(running), F.lit(0))
    if offsets:
        before = before + _lookup(offsets, F.col("_pid")).cast("long")
    percent = (before.cast("double") + (F.col("n") + 1) / 2.0) / float(total)
    score = F.least(F.greatest(F.ceil(5 * percent - 1e-9), F.lit(1)), F.lit(5)).cast("byte")
    if ordered.count() == 1:  # all values equal: no ranking, the middle score (as locally)
        score = F.lit(3).cast("byte")
    scores = ordered.select(value, score.alias("score"))
    return frame.select(key, value).join(scores, value).select(key, "score")


def taste_clusters_spark(
    vectors: DataFrame | None, k: int, seed: int, cache: Cache
) -> DataFrame | None:
    """(user, cluster) by k-means (Spark ML) on L2-normalised factors, renumbered by size."""
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector

    from training.segments import KMEANS_ITERATIONS

    if vectors is None or k <= 0:
        return None
    norm = F.sqrt(F.aggregate("features", F.lit(0.0), lambda acc, x: acc + x * x))
    points = cache(
        vectors.select("user", "features", norm.alias("norm"))
        .where(_finite(F.col("norm")) & (F.col("norm") > 0))
        .select(
            "user",
            array_to_vector(F.transform("features", lambda x: x / F.col("norm"))).alias("features"),
        )
    )
    n_points = points.count()
    k = min(k, n_points)
    if k == 0:
        return None
    if k == 1:
        return points.select("user", F.lit(0).alias("cluster"))
    model = KMeans(k=k, seed=seed, maxIter=KMEANS_ITERATIONS, predictionCol="raw").fit(points)
    assigned = cache(model.transform(points).select("user", "raw"))
    sizes = {int(r["raw"]): int(r["count"]) for r in assigned.groupBy("raw").count().collect()}
    by_size = sorted(range(k), key=lambda c: (-sizes.get(c, 0), c))
    renumber = [0] * k
    for new, old in enumerate(by_size):
        renumber[old] = new
    return assigned.select("user", _lookup(renumber, F.col("raw")).cast("int").alias("cluster"))


def fit_segments_spark(
    spark_log: SparkLog, vectors: DataFrame | None, config: Any, now: int, cache: Cache
) -> DataFrame:
    """Per user: segment, cluster, recency_days, frequency, monetary, r, f, m (training.segments)."""
    from training.segments import PROSPECT, SEGMENT_MAP, UNTIMED_MAP

    events = spark_log.events.where(F.col("user").isNotNull())
    bought = _repurchase_rows(spark_log)
    has_time = spark_log.has_column.get("timestamp", False)
    last_any = events.groupBy("user").agg(F.max("ts").alias("last_any"))
    frame = spark_log.users.select("user").join(last_any, "user", "left")
    if bought is not None:
        occasion = F.coalesce(
            F.concat(F.lit("o:"), F.col("order_id")),
            F.concat(F.lit("d:"), F.floor(F.col("ts") / SECONDS_PER_DAY).cast("string")),
        )
        priced = bought.where(F.col("price").isNotNull()).limit(1).count() > 0
        spend = (
            F.sum(F.col("price").cast("double") * F.col("quantity").cast("double"))
            if priced
            else F.sum(F.col("quantity").cast("double"))
        )
        per_user = bought.groupBy("user").agg(
            F.max("ts").alias("last_bought"),
            F.countDistinct(occasion).alias("frequency"),
            spend.alias("monetary"),
        )
        frame = frame.join(per_user, "user", "left")
    else:
        frame = frame.select(
            "*",
            F.lit(None).cast("long").alias("last_bought"),
            F.lit(0).alias("frequency"),
            F.lit(0.0).alias("monetary"),
        )
    last = F.coalesce(F.col("last_bought"), F.col("last_any"))
    recency = (
        F.greatest(F.lit(now) - last, F.lit(0)).cast("double") / SECONDS_PER_DAY
        if has_time
        else F.lit(0.0)
    )
    rfm = cache(
        frame.select(
            "user",
            F.coalesce(recency, F.lit(0.0)).cast("float").alias("recency_days"),
            F.coalesce(F.col("frequency"), F.lit(0)).cast("int").alias("frequency"),
            F.coalesce(F.col("monetary"), F.lit(0.0)).cast("float").alias("monetary"),
        )
    )
    buyers = rfm.where(F.col("frequency") > 0)
    scores = {
        "r": quantile_scores_spark(
            buyers, "user", "recency_days", higher_is_better=False, cache=cache
        ),
        "f": quantile_scores_spark(buyers, "user", "frequency", higher_is_better=True, cache=cache),
        "m": quantile_scores_spark(buyers, "user", "monetary", higher_is_better=True, cache=cache),
    }
    result = rfm
    for name, score in scores.items():
        result = result.join(score.withColumnRenamed("score", name), "user", "left")
    r, f, m = (F.coalesce(F.col(c), F.lit(0)).cast("byte") for c in "rfm")
    result = result.select(
        "user", "recency_days", "frequency", "monetary", r.alias("r"), f.alias("f"), m.alias("m")
    )
    fm = F.least(F.greatest(F.floor((F.col("f") + F.col("m") + 1) / 2), F.lit(1)), F.lit(5))
    if has_time:
        grid = F.array(*[F.array(*[F.lit(name) for name in row]) for row in SEGMENT_MAP])
        named = F.element_at(F.element_at(grid, F.col("r").cast("int")), fm.cast("int"))
    else:  # recency unknown: named from FM alone, as training.segments
        named = F.element_at(F.array(*[F.lit(name) for name in UNTIMED_MAP]), fm.cast("int"))
    segment = F.when(F.col("r") > 0, named)
    clusters = taste_clusters_spark(vectors, config.clusters, config.seed, cache)
    if clusters is not None:
        result = result.join(clusters, "user", "left")
    else:
        result = result.select("*", F.lit(None).cast("int").alias("cluster"))
    return result.select(
        F.col("user").cast("int").alias("user_index"),
        F.coalesce(segment, F.lit(PROSPECT)).alias("segment"),
        F.coalesce(F.col("cluster"), F.lit(-1)).cast("int").alias("cluster"),
        "recency_days",
        "frequency",
        "monetary",
        "r",
        "f",
        "m",
    )


def _label_lists(frame: DataFrame, top_n: int) -> dict[str, RankedLists]:
    """(list, label, item, score) -> per list, the top items of each label as RankedLists.

    Positive scores only, ties to the lower item; labels in sorted order (cluster ids as
    numbers). Small (labels x top_n rows): one collect.
    """
    best = Window.partitionBy("list", "label").orderBy(F.col("score").desc(), F.col("item"))
    rows = (
        frame.where(F.col("score") > 0)
        .select("list", "label", "item", "score", F.row_number().over(best).alias("rank"))
        .where(F.col("rank") <= top_n)
        .collect()
    )
    grouped: dict[str, dict[str, list[tuple[int, int, float]]]] = {"segment": {}, "cluster": {}}
    for row in rows:
        grouped[row["list"]].setdefault(row["label"], []).append(
            (row["rank"], row["item"], row["score"])
        )
    lists: dict[str, RankedLists] = {}
    for name, labels in grouped.items():
        ordered = sorted(
            labels, key=(lambda v: (int(v), v)) if name == "cluster" else (lambda v: (0, v))
        )
        groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for label in ordered:
            entries = sorted(labels[label])
            groups[label] = (
                np.asarray([e[1] for e in entries], dtype=np.int32),
                np.asarray([e[2] for e in entries], dtype=np.float32),
            )
        lists[name] = RankedLists.from_dict(groups)
    return lists


def fit_popularity_spark(
    weighted: DataFrame,
    spark_log: SparkLog,
    catalog: Catalog,
    config: Any,
    now: int,
    segments: DataFrame | None,
) -> dict[str, RankedLists]:
    """The popularity lists of training.popularity: aggregations in Spark, the top-N on the driver."""

    from training.popularity import ALL, grouped_top, top_items, trending_scores

    n_items = spark_log.n_items
    top_n = config.top_n
    decay = config.trending_half_life_days > 0 and spark_log.has_column.get("timestamp", False)
    rows = weighted.where((F.col("weight") > 0) & F.col("item").isNotNull())
    actor = F.coalesce(
        F.concat(F.lit("u:"), F.col("user").cast("string")),
        F.concat(F.lit("o:"), F.col("order_id")),
        F.concat(F.lit("r:"), F.col("row").cast("string")),
    )
    strongest = [F.max(F.col("weight").cast("double")).alias("w")]
    if decay:
        age_days = F.greatest(F.lit(now) - F.col("ts"), F.lit(0)).cast("double") / SECONDS_PER_DAY
        decayed = F.col("weight").cast("double") * F.pow(
            F.lit(2.0), -age_days / config.trending_half_life_days
        )
        strongest.append(F.max(decayed).alias("d"))
    pairs = rows.groupBy(actor.alias("actor"), "user", "item").agg(*strongest).persist(PERSIST)
    global_scores = np.zeros(n_items, dtype=np.float64)
    recent = np.zeros(n_items, dtype=np.float64)
    sums = [F.sum("w").alias("w")] + ([F.sum("d").alias("d")] if decay else [])
    for batch in stream_batches(pairs.groupBy("item").agg(*sums)):
        index = _numpy(batch.column("item"), np.int64)
        global_scores[index] = _numpy(batch.column("w"), np.float64)
        if decay:
            recent[index] = _numpy(batch.column("d"), np.float64)
    lists = {"global": RankedLists.from_dict({ALL: top_items(global_scores, top_n)})}
    lists["trending"] = (
        RankedLists.from_dict({ALL: top_items(trending_scores(recent, global_scores), top_n)})
        if decay
        else lists["global"]
    )
    # Each item has one category, so a category's sums are its items' global sums.
    codes, names = pd.factorize(
        pd.Series(catalog.category, dtype=object).fillna("").astype(str), sort=True
    )
    names = [str(name) for name in names]
    if "" in names:
        codes[codes == names.index("")] = -1
    scored = np.flatnonzero(global_scores > 0)
    lists["category"] = grouped_top(
        codes[scored].astype(np.int64), scored, global_scores[scored], names, n_items, top_n
    )
    if segments is not None:
        labelled = pairs.where(F.col("user").isNotNull()).join(
            segments.select(F.col("user_index").alias("user"), "segment", "cluster"), "user"
        )
        by_label = labelled.select(
            F.explode(
                F.array(
                    F.struct(F.lit("segment").alias("list"), F.col("segment").alias("label")),
                    F.struct(
                        F.lit("cluster").alias("list"),
                        F.when(F.col("cluster") >= 0, F.col("cluster").cast("string")).alias(
                            "label"
                        ),
                    ),
                )
            ).alias("group"),
            "item",
            "w",
        ).where(F.col("group.label").isNotNull() & (F.col("group.label") != ""))
        by_group = by_label.groupBy(
            F.col("group.list").alias("list"), F.col("group.label").alias("label"), "item"
        )
        lists.update(_label_lists(by_group.agg(F.sum("w").alias("score")), top_n))
    else:
        lists["segment"] = RankedLists.from_dict({})
        lists["cluster"] = RankedLists.from_dict({})
    pairs.unpersist()
    return lists


# --- the job ---------------------------------------------------------------------------------

USERS_SCHEMA = pa.schema([("user_id", pa.string())])
SEGMENTS_SCHEMA = pa.schema(
    [
        ("user_index", pa.int32()),
        ("segment", pa.string()),
        ("cluster", pa.int32()),
        ("recency_days", pa.float32()),
        ("frequency", pa.int32()),
        ("monetary", pa.float32()),
        ("r", pa.int8()),
        ("f", pa.int8()),
        ("m", pa.int8()),
    ]
)


def _ensure_checkpoint_dir(spark: SparkSession) -> Path | None:
    """Give a local session a checkpoint directory (returned, to remove) when it has none.

    ALS checkpoints every 10 iterations when it can; without that its lineage grows with the
    iterations and task deserialisation can overflow the stack. Clusters set their own
    (`spark.checkpoint.dir` / SparkContext.setCheckpointDir on shared storage).
    """
    context = spark.sparkContext
    if context.getCheckpointDir() is not None or not (context.master or "").startswith("local"):
        return None
    directory = Path(tempfile.mkdtemp(prefix="recsvc-spark-checkpoints-"))
    context.setCheckpointDir(str(directory))
    return directory


def _fingerprint(spark: SparkSession, paths: Sequence[str | Path | None]) -> dict[str, Any]:
    """sha256 of local input files (as the local engine); size and modification time of URIs."""
    out: dict[str, Any] = {}
    for path in paths:
        if path is None:
            continue
        text = str(path)
        if _is_local(text) and _local_path(text).is_file():
            out.update(fingerprint_files([_local_path(text)]))
            continue
        name = Path(text.rstrip("/")).name or text
        try:
            context: Any = spark.sparkContext  # Hadoop's FileSystem API through py4j
            hadoop_path = context._jvm.org.apache.hadoop.fs.Path(text)
            fs = hadoop_path.getFileSystem(context._jsc.hadoopConfiguration())
            summary = fs.getContentSummary(hadoop_path)
            out[name] = {
                "uri": text,
                "bytes": int(summary.getLength()),
                "files": int(summary.getFileCount()),
                "modified_ms": int(fs.getFileStatus(hadoop_path).getModificationTime()),
            }
        except Exception as exc:  # a fingerprint is informative; never fail a trained job on it
            out[name] = {"uri": text, "error": str(exc).splitlines()[0][:200]}
    return out


def _items_frame(item_ids: IdMap, catalog: Catalog) -> Any:

    return pd.DataFrame(
        {
            "item_id": pd.array(item_ids.ids, dtype="string"),
            "category": pd.array(catalog.category, dtype="string"),
            "price": catalog.price.astype(np.float32),
            "in_stock": catalog.in_stock.astype(bool),
            "title": pd.array(catalog.title, dtype="string"),
        }
    )


def _write_seen(
    writer: BundleWriter, scratch: _Scratch, pairs: DataFrame, shape: tuple[int, int], nnz: int
) -> None:
    """The seen matrix (users x items CSR), streamed in (user, item) order into the bundle."""
    indices = scratch.array("seen_indices", (nnz,), np.int32, 0)
    data = scratch.array("seen_data", (nnz,), np.float32, 0)
    per_user = np.zeros(shape[0], dtype=np.int64)
    position = 0
    for batch in stream_batches(pairs.orderBy("user", "item")):
        users = _numpy(batch.column("user"), np.int64)
        stop = position + len(users)
        indices[position:stop] = _numpy(batch.column("item"), np.int32)
        data[position:stop] = _numpy(batch.column("strength"), np.float32)
        found, counts = np.unique(users, return_counts=True)
        per_user[found] += counts
        position = stop
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(per_user, out=indptr[1:])
    writer.array("seen/indptr", indptr)
    writer.array("seen/indices", indices)
    writer.array("seen/data", data)
    writer.json("seen/shape.json", {"shape": list(shape)})


def train_spark(
    events: str | Path,
    out: str | Path,
    config: TrainConfig,
    items: str | Path | None = None,
    load_options: LoadOptions | None = None,
    master: str | None = "local[2]",
    forget_list: str | Path | None = None,
    now: int | None = None,
    spark: SparkSession | None = None,
) -> TrainResult:
    """Run the nightly job on Spark and write one bundle under `out` (a local directory).

    events / items: paths or URIs Spark reads (s3a://, hdfs://, ...). master: used when no
    session is active and the process was not started by spark-submit. spark: a session to
    use (it is left running). Raises InvalidInput for unusable input and TooManyBadRows past
    the limit, like the local engine.
    """
    from recsvc.scorers import FactorScorer, PopularityScorer, save_scorer
    from training.popularity import write_popularity

    timings: dict[str, float] = {}

    def step(name: str) -> Callable[[], None]:
        started = time.perf_counter()

        def done() -> None:
            timings[name] = round(time.perf_counter() - started, 3)
            log.info("step done", extra={"step": name, "seconds": timings[name], "engine": "spark"})

        return done

    owns_session = spark is None and SparkSession.getActiveSession() is None
    session = spark or spark_session(master)
    for key, value in SESSION_CONF.items():
        session.conf.set(key, value)
    options = effective_load_options(load_options, config)
    cache = Cache()
    checkpoints = _ensure_checkpoint_dir(session)
    try:
        done = step("load")
        spark_log, catalog_frame = load_spark_log(
            session,
            str(events),
            options,
            cache,
            str(items) if items else None,
            read_forget_list(forget_list, hashed_ok=True),  # forgotten_ids matches hashed entries
        )
        report = spark_log.report
        if spark_log.n_events == 0:
            raise InvalidInput("--events", "no usable rows: nothing to train on")
        now = now if now is not None else spark_log.now
        item_ids, catalog = _catalog_arrays(spark_log, catalog_frame)
        n_users, n_items = spark_log.n_users, spark_log.n_items
        done()

        done = step("matrix")
        weight = weight_column(config.events, spark_log.event_types, spark_log.has_column, now)
        # The weighted rows replace the plain ones: one event-sized cache, not two.
        weighted = cache(spark_log.events.select("*", weight.alias("weight")))
        pairs = cache(interactions(weighted))
        nnz = pairs.count()
        cache.drop(spark_log.events)
        spark_log.events = weighted
        done()

        available = [m for m in SPARK_MODELS if m != "als" or config.als.enabled]
        default = config.default_recommender
        if default not in available:
            default = available[0]
            report.notes.append(
                f"spark engine: default recommender '{config.default_recommender}' has no Spark "
                f"implementation; '{default}' is the default"
            )
        skipped = [
            name
            for name, enabled in (
                ("ease", config.ease.enabled),
                ("itemknn", config.itemknn.enabled),
                ("bpr", config.bpr.enabled),
            )
            if enabled
        ]
        writer = BundleWriter(out)
        scratch = _Scratch(writer.root)
        try:
            done = step("ids")
            _stream_parquet(
                writer, "ids/users", spark_log.users.orderBy("user").select("user_id"), USERS_SCHEMA
            )
            writer.frame("ids/items", _items_frame(item_ids, catalog))
            _write_seen(writer, scratch, pairs, (n_users, n_items), nnz)
            done()

            models_info: dict[str, Any] = {}
            done = step("fit popular")
            started = time.perf_counter()
            popular = np.zeros(n_items, dtype=np.float32)
            for batch in stream_batches(pairs.where(F.col("strength") > 0).groupBy("item").count()):
                popular[_numpy(batch.column("item"), np.int64)] = _numpy(
                    batch.column("count"), np.float32
                )
            save_scorer(writer, "popular", PopularityScorer(popular))
            models_info["popular"] = {
                "fit_seconds": round(time.perf_counter() - started, 3),
                "params": {},
            }
            done()

            item_factors: np.ndarray | None = None
            user_vectors: DataFrame | None = None
            rank = config.als.factors
            user_factors = scratch.array("user_factors", (n_users, rank), np.float32, 0.0)
            if config.als.enabled:
                done = step("fit als")
                started = time.perf_counter()
                model = fit_als(
                    pairs,
                    rank,
                    config.als.iterations,
                    config.als.regularization,
                    config.als.alpha,
                    config.als.seed,
                )
                item_factors = _factor_matrix(model.itemFactors, n_items, rank)
                user_vectors = model.userFactors.select(F.col("id").alias("user"), "features")
                models_info["als"] = {
                    "fit_seconds": round(time.perf_counter() - started, 3),
                    "params": {
                        "factors": rank,
                        "iterations": config.als.iterations,
                        "regularization": config.als.regularization,
                        "alpha": config.als.alpha,
                        "implementation": "pyspark.ml.recommendation.ALS(implicitPrefs=True)",
                    },
                }
                done()

            done = step("candidates")
            width = min(config.candidates, n_items)
            cand_items = scratch.array("candidates_items", (n_users, width), np.int32, -1)
            cand_scores = scratch.array("candidates_scores", (n_users, width), np.float32, 0.0)
            if default == "als":
                assert user_vectors is not None and item_factors is not None
                scored = score_users(user_vectors, pairs, item_factors, width)
                _fill_rows(
                    scored,
                    "user",
                    {"features": user_factors, "items": cand_items, "scores": cand_scores},
                    {"features": rank, "items": width, "scores": width},
                )
            else:
                ones = F.array(F.lit(1.0)).cast("array<float>")
                scored = score_users(
                    spark_log.users.select("user", ones.alias("features")),
                    pairs,
                    popular[:, None],
                    width,
                )
                _fill_rows(
                    scored,
                    "user",
                    {"items": cand_items, "scores": cand_scores},
                    {"items": width, "scores": width},
                )
                if user_vectors is not None:
                    _fill_rows(
                        user_vectors.orderBy("user"),
                        "user",
                        {"features": user_factors},
                        {"features": rank},
                    )
            writer.array("candidates/items", cand_items)
            writer.array("candidates/scores", cand_scores)
            if item_factors is not None:
                save_scorer(
                    writer,
                    "als",
                    FactorScorer(
                        user_factors,
                        item_factors,
                        regularization=config.als.regularization,
                        alpha=config.als.alpha,
                    ),
                )
            done()

            done = step("similar items")
            similar_n = min(config.similar.n, max(n_items - 1, 0))
            sim_items = scratch.array("similar_indices", (n_items, similar_n), np.int32, -1)
            sim_scores = scratch.array("similar_scores", (n_items, similar_n), np.float32, 0.0)
            if similar_n > 0:
                similar = (
                    similar_items(session, item_factors, similar_n)
                    if item_factors is not None
                    else similar_by_cooccurrence(pairs, similar_n)
                )
                _fill_rows(
                    similar,
                    "item",
                    {"items": sim_items, "scores": sim_scores},
                    {"items": similar_n, "scores": similar_n},
                )
            writer.array("similar/indices", sim_items)
            writer.array("similar/scores", sim_scores)
            done()

            rules_info: dict[str, Any] = {}
            if config.rules.enabled:
                done = step("rules")
                baskets = cache(spark_baskets(spark_log, config.rules.window_days))
                too_large = F.size("items") > config.rules.max_basket_items
                left_out = baskets.where(too_large).count()
                rules = mine_rules_spark(
                    baskets.where(~too_large),
                    min_support=config.rules.min_support,
                    min_confidence=config.rules.min_confidence,
                    max_len=config.rules.max_len,
                    max_rules=config.rules.max_rules,
                )
                cache.drop(baskets)
                rules_info = save_rules(
                    writer, rules, int(left_out), config.rules.max_basket_items, report.notes
                )
                done()

            if config.buyagain.enabled:
                done = step("buy-again")
                fit_buyagain_spark(spark_log, config.buyagain, now).write(writer)
                done()

            segments: DataFrame | None = None
            if config.segments.enabled:
                done = step("segments")
                segments = cache(
                    fit_segments_spark(spark_log, user_vectors, config.segments, now, cache)
                )
                from training.segments import TABLE

                _stream_parquet(writer, TABLE, segments.orderBy("user_index"), SEGMENTS_SCHEMA)
                done()

            done = step("popularity")
            write_popularity(
                writer,
                fit_popularity_spark(
                    weighted, spark_log, catalog, config.popularity, now, segments
                ),
            )
            done()

            counts = {
                "users": n_users,
                "items": n_items,
                "events": spark_log.n_events,
                "orders": spark_log.n_orders,
                "interactions": int(nnz),
            }
            path = writer.commit(
                {
                    "input": _fingerprint(session, [events, items]),
                    "counts": counts,
                    "rows": report.to_dict(),
                    "params": to_dict(config),
                    "default_recommender": default,
                    "models": models_info,
                    "rules": rules_info,
                    "event_types": spark_log.event_types,
                    "trained_until": now,
                    "timings": timings,
                    "forgotten_users": spark_log.forgotten_users,
                    "catalog_read_at": spark_log.catalog_read_at,
                    "engine": {
                        "name": "spark",
                        "spark_version": session.version,
                        "master": session.sparkContext.master,
                        "not_trained": skipped,
                    },
                }
            )
        except BaseException:
            writer.abort()
            raise
        finally:
            scratch.close()
    finally:
        cache.release()
        if checkpoints is not None:
            shutil.rmtree(checkpoints, ignore_errors=True)
        if owns_session:
            session.stop()
    return TrainResult(
        path=path, version=writer.version, report=report, timings=timings, counts=counts
    )


def spark_als_fit_seconds(
    matrix_or_events: sp.spmatrix | sp.sparray | str | Path,
    factors: int,
    iterations: int,
    regularization: float,
    alpha: float,
    master: str = "local[2]",
    spark: SparkSession | None = None,
    config: TrainConfig | None = None,
) -> float:
    """Seconds Spark MLlib ALS (implicit) takes to fit the same data, for `recsvc bench train`.

    matrix_or_events: a users x items matrix of strengths, or an event log path / URI (weighted
    with `config`'s events section). The data is loaded and cached in Spark first; only the
    fit is timed.
    """
    owns_session = spark is None and SparkSession.getActiveSession() is None
    session = spark or spark_session(master)
    scratch: Path | None = None
    cache = Cache()
    checkpoints = _ensure_checkpoint_dir(session)
    try:
        if sp.issparse(matrix_or_events):
            coo = sp.coo_matrix(matrix_or_events)
            scratch = Path(tempfile.mkdtemp(prefix="recsvc-spark-bench-"))
            pq.write_table(
                pa.table(
                    {
                        "user": coo.row.astype(np.int32),
                        "item": coo.col.astype(np.int32),
                        "strength": coo.data.astype(np.float32),
                    }
                ),
                scratch / "pairs.parquet",
            )
            pairs = session.read.parquet(str(scratch / "pairs.parquet")).where(
                F.col("strength") != 0
            )
        else:
            config = config or TrainConfig()
            spark_log, _ = load_spark_log(
                session, str(matrix_or_events), effective_load_options(None, config), cache
            )
            weight = weight_column(
                config.events, spark_log.event_types, spark_log.has_column, spark_log.now
            )
            pairs = interactions(spark_log.events.select("*", weight.alias("weight")))
        pairs = cache(pairs)
        pairs.count()
        started = time.perf_counter()
        model = fit_als(pairs, factors, iterations, regularization, alpha)
        model.userFactors.count()
        model.itemFactors.count()
        return time.perf_counter() - started
    finally:
        cache.release()
        if checkpoints is not None:
            shutil.rmtree(checkpoints, ignore_errors=True)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        if owns_session:
            session.stop()
