"""Event loading: formats, column mapping, timestamps, and bad rows counted per reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsvc.errors import InvalidInput, TooManyBadRows
from recsvc.events import (
    NUMBER_OUT_OF_RANGE,
    TIME_OUT_OF_RANGE,
    LoadOptions,
    load_catalog,
    load_events,
    parse_columns,
    parse_max_bad_rows,
    parse_timestamps,
)

GOOD_AND_BAD = """user_id,item_id,event_type,timestamp,order_id,quantity,price
u1,i1,view,2026-01-01T10:00:00Z,,,
u1,i2,purchase,1767261600,o1,2,9.5
u2,i1,cart,1767261600000,,1,
,i3,view,2026-01-01T10:00:00Z,,,
u3,,view,2026-01-01T10:00:00Z,,,
u3,i3,view,not-a-time,,,
u3,i3,purchase,2026-01-02,o2,-1,3
u3,i3,purchase,2026-01-02,C9,1,3
u4,i4,teleport,2026-01-02,,,
u4,i4,purchase,2026-01-02,o3,abc,3
u4,i5,purchase,2026-01-03,o4,1,4
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_counts_bad_rows_per_reason_and_keeps_good_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", GOOD_AND_BAD)
    log, report = load_events(path, LoadOptions(known_event_types=["view", "cart", "purchase"]))
    assert report.rows_read == 11
    assert report.rows_kept == 4
    assert len(log) == 4
    assert dict(report.bad_rows) == {
        "missing user_id": 1,
        "missing item_id": 1,
        "unparsable timestamp": 1,
        "negative quantity (return or cancellation)": 1,
        "cancelled order (order_id starts with 'C')": 1,
        "unknown event_type": 1,
        "unparsable quantity": 1,
    }
    assert report.examples["missing user_id"] == [4]
    assert sorted(log.users.decode(log.user)) == ["u1", "u1", "u2", "u4"]
    # ISO, epoch seconds and epoch milliseconds all land on the same instant
    assert set(log.timestamp.tolist()) >= {1767261600}
    assert log.quantity[log.items.get("i2") == log.item].tolist() == [2.0]


def test_max_bad_rows_fraction_and_count(tmp_path: Path) -> None:
    path = write(tmp_path, "events.csv", GOOD_AND_BAD)
    opts = dict(known_event_types=["view", "cart", "purchase"])
    with pytest.raises(TooManyBadRows, match=r"7 of 11 rows are bad, more than the bad-row limit 0.5 \(--max-bad-rows, or events.max_bad_rows"):
        load_events(path, LoadOptions(max_bad_rows=0.5, **opts))
    with pytest.raises(TooManyBadRows):
        load_events(path, LoadOptions(max_bad_rows=6, **opts))
    _, report = load_events(path, LoadOptions(max_bad_rows=7, **opts))
    assert report.rows_bad == 7


def test_malformed_csv_line_is_counted_not_dropped(tmp_path: Path) -> None:
    path = write(tmp_path, "e.csv", "user_id,item_id\nu1,i1\nu2,i2,extra,fields\nu3,i3\n")
    log, report = load_events(path)
    assert report.rows_kept == 2
    assert report.bad_rows["malformed line (wrong number of fields)"] == 1


@pytest.mark.parametrize("chunk_rows", [1, 2, 100])
def test_bad_rows_are_reported_by_their_record_number(tmp_path: Path, chunk_rows: int) -> None:
    # record n is on line n + 1 of a CSV (the header is line 1), malformed lines included
    csv = write(tmp_path, "e.csv", "user_id,item_id\nu1,i1\nu2,i2,extra\n,i3\nu4,i4\nu5,i5,x,y\n,i6\n")
    _, report = load_events(csv, LoadOptions(chunk_rows=chunk_rows))
    assert report.examples == {"malformed line (wrong number of fields)": [2, 5], "missing user_id": [3, 6]}
    lines = ['{"user_id": "u1", "item_id": "i1"}', "", '{"item_id": "i2"}', "{broken",
             "", '{"user_id": "u4", "item_id": "i4"}', '{"item_id": "i5"}']  # blank lines are not records
    jsonl = write(tmp_path, "e.jsonl", "\n".join(lines) + "\n")
    _, report = load_events(jsonl, LoadOptions(chunk_rows=chunk_rows))
    assert report.examples == {"missing user_id": [2, 5], "malformed JSON line": [3]}


BLANK_LINES = (  # blank lines (empty, spaces and tabs, CRLF) are not records, in either engine
    "\nuser_id,item_id,quantity\n"  # one before the header too
    "u1,i1,1\n\n  \nu2,i2,1\n"
    "u3,i3,1,extra\n"  # record 3
    "u4,i4,-1\r\n\t\r\n"
    ",i5,1\n\n\n"
    "u6,i6,1,x,y\n"  # record 6
    "u7,i7,0\n"
)


@pytest.mark.parametrize("chunk_rows", [1, 2, 100])
def test_blank_lines_are_not_rows(tmp_path: Path, chunk_rows: int) -> None:
    # malformed lines and other bad rows are numbered alike: records, blank lines not counted
    _, report = load_events(write(tmp_path, "e.csv", BLANK_LINES), LoadOptions(chunk_rows=chunk_rows))
    assert report.rows_read == 7 and report.rows_kept == 2
    assert report.examples == {
        "malformed line (wrong number of fields)": [3, 6],
        "negative quantity (return or cancellation)": [4],
        "missing user_id": [5],
        "zero quantity": [7],
    }
    # a quoted empty field is a record, however blank it looks; so is a quoted line break
    quoted = 'user_id,item_id\n""\n"  "\n"u\n\nx",i1\n\nu4,i4,x\n,i5\n'
    _, report = load_events(write(tmp_path, "q.csv", quoted), LoadOptions(chunk_rows=chunk_rows))
    assert report.examples == {
        "missing user_id": [1, 2, 5],
        "user_id has control characters": [3],
        "malformed line (wrong number of fields)": [4],
    }


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.sampled_from(["u1,i1", ",i2", "u3,i3,x", "u4,i4,x,y", "u5,", '"",i6']),
                  min_size=1, max_size=12),
    blanks=st.lists(st.tuples(st.integers(0, 13), st.sampled_from(["", "  ", "\t", " \t "])), max_size=8),
    chunk_rows=st.sampled_from([1, 3, 100]),
)
def test_blank_lines_anywhere_leave_the_report_as_it_was(
    tmp_path_factory: pytest.TempPathFactory, rows: list, blanks: list, chunk_rows: int
) -> None:
    lines = ["user_id,item_id", *rows]
    folder = tmp_path_factory.mktemp("blank")
    _, plain = load_events(write(folder, "plain.csv", "\n".join(lines) + "\n"), LoadOptions(chunk_rows=chunk_rows))
    for position, blank in sorted(blanks, reverse=True):  # before the header too
        lines.insert(min(position, len(lines)), blank)
    _, blanked = load_events(write(folder, "blanked.csv", "\n".join(lines) + "\n"),
                             LoadOptions(chunk_rows=chunk_rows))
    assert blanked.to_dict() == plain.to_dict()


def test_a_blank_line_before_a_first_row_with_a_field_too_many(tmp_path: Path) -> None:
    # pandas would cut that row short without a word: it is malformed, as any other such row
    log, report = load_events(write(tmp_path, "e.csv", "user_id,item_id\n \t \nu1,i1,x\nu2,i2\n"))
    assert log.users.ids == ["u2"]
    assert report.examples == {"malformed line (wrong number of fields)": [1]}


def test_column_mapping_and_constant_event_type(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "retail.csv",
        "InvoiceNo,StockCode,CustomerID,InvoiceDate,Quantity\n"
        "536365,85123A,17850,2010-12-01 08:26:00,6\n"
        "C536379,D,14527,2010-12-01 09:41:00,-1\n",
    )
    columns = parse_columns(
        "user_id=CustomerID,item_id=StockCode,order_id=InvoiceNo,timestamp=InvoiceDate,quantity=Quantity"
    )
    log, report = load_events(path, LoadOptions(columns=columns, event_type="purchase"))
    assert len(log) == 1 and log.event_types == ["purchase"]
    assert report.rows_bad == 1
    assert log.orders.ids == ["536365"]


def test_missing_required_column_names_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, "e.csv", "customer,item_id\nu1,i1\n")
    with pytest.raises(InvalidInput) as info:
        load_events(path)
    assert info.value.field == "user_id"
    assert "--columns" in str(info.value)


def test_bad_columns_spec() -> None:
    with pytest.raises(InvalidInput, match="--columns"):
        parse_columns("user_id")
    with pytest.raises(InvalidInput, match="unknown column 'shopper'"):
        parse_columns("shopper=x")


def test_parse_max_bad_rows() -> None:
    assert parse_max_bad_rows("0.01") == 0.01
    assert parse_max_bad_rows("500") == 500
    assert parse_max_bad_rows(None) is None
    with pytest.raises(InvalidInput):
        parse_max_bad_rows("lots")
    for spec in ("nan", "inf", "-1"):
        with pytest.raises(InvalidInput, match="--max-bad-rows"):
            parse_max_bad_rows(spec)


def test_jsonl_with_broken_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps({"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": 1700000000}),
        "{not json",
        json.dumps(["a", "list"]),
        json.dumps({"user_id": 7, "item_id": 8, "event_type": "purchase", "timestamp": "2026-01-01T00:00:00+01:00"}),
    ]
    path = write(tmp_path, "e.jsonl", "\n".join(lines) + "\n")
    log, report = load_events(path)
    assert len(log) == 2
    assert report.bad_rows["malformed JSON line"] == 1
    assert report.bad_rows["JSON line is not an object"] == 1
    assert log.users.ids == ["u1", "7"]
    assert log.timestamp[1] == 1767222000


def test_parquet_with_native_types(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["a", "b", None],
            "item_id": [1, 2, 3],
            "timestamp": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"], utc=True),
            "rating": [4.0, None, 3.0],
        }
    )
    path = tmp_path / "e.parquet"
    frame.to_parquet(path)
    log, report = load_events(path)
    assert len(log) == 2 and report.bad_rows["missing user_id"] == 1
    assert log.items.ids == ["1", "2"]
    assert log.timestamp[0] == 1767225600
    assert np.isnan(log.rating[1]) and log.rating[0] == 4.0


def test_parquet_with_nested_columns(tmp_path: Path) -> None:
    frame = pd.DataFrame({"user_id": ["u1", "u2", "u3"], "item_id": ["i1", "i2", "i3"],
                          "tags": [["a", "b"], [], None]})  # an unused list column: harmless
    frame.to_parquet(tmp_path / "tags.parquet", index=False)
    log, report = load_events(tmp_path / "tags.parquet")
    assert len(log) == 3 and report.rows_bad == 0
    nested = pd.DataFrame({"user_id": [["u1"], ["u2", "u3"]], "item_id": ["i1", "i2"]})  # list ids
    nested.to_parquet(tmp_path / "nested.parquet", index=False)
    log, report = load_events(tmp_path / "nested.parquet")
    assert len(log) == 0 and report.rows_bad == 2


def test_corrupt_parquet_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "e.parquet"
    pd.DataFrame({"user_id": ["a"] * 100, "item_id": ["b"] * 100}).to_parquet(path)
    path.write_bytes(path.read_bytes()[: 60])
    with pytest.raises(InvalidInput, match="Parquet"):
        load_events(path)


def test_unknown_extension_needs_format(tmp_path: Path) -> None:
    path = write(tmp_path, "events.log", "user_id,item_id\nu,i\n")
    with pytest.raises(InvalidInput, match="--format"):
        load_events(path)
    log, _ = load_events(path, LoadOptions(fmt="csv"))
    assert len(log) == 1


def test_wrong_encoding_is_counted_not_fatal(tmp_path: Path) -> None:
    # Latin-1 read as UTF-8 would turn "José" and "Josè" into one mangled id: counted instead.
    path = tmp_path / "latin1.csv"
    path.write_bytes("user_id,item_id\nJos\xe9,caf\xe9\nAnn,tea\n".encode("latin-1"))
    log, report = load_events(path)
    assert len(log) == 1 and list(log.users.ids) == ["Ann"]
    assert dict(report.bad_rows) == {"user_id is not valid UTF-8 (wrong file encoding?)": 1}


def test_parse_timestamps_units() -> None:
    values = pd.Series(["1700000000", "1700000000000", "2023-11-14T22:13:20Z", "1700000000000000",
                        "1700000000000000000", "garbage", None])
    out = parse_timestamps(values)
    assert out[:5].tolist() == pytest.approx([1700000000.0] * 5)  # s, ms, ISO, µs, ns
    assert np.isnan(out[5]) and np.isnan(out[6])


def test_a_row_without_its_time_in_a_timed_log_is_bad_not_1970(tmp_path: Path) -> None:
    path = write(tmp_path, "e.csv", "user_id,item_id,event_type,timestamp\n"
                 "u1,i1,purchase,2026-01-01\nu1,i2,purchase,\nu2,i1,view,2026-01-02\n")
    log, report = load_events(path)
    assert report.bad_rows == {"missing timestamp": 1} and report.examples["missing timestamp"] == [2]  # data rows, 1-based
    assert len(log) == 2 and log.timestamp.min() > 1.7e9


def test_event_type_flag_is_for_logs_without_one(tmp_path: Path) -> None:
    typed = write(tmp_path, "typed.csv", "user_id,item_id,event_type\nu1,i1,view\n")
    with pytest.raises(InvalidInput, match="event type column"):
        load_events(typed, LoadOptions(event_type="purchase"))
    plain = write(tmp_path, "plain.csv", "user_id,item_id,order_id\nu1,i1,o1\nu1,i2,o1\n")
    default, _ = load_events(plain)
    named, _ = load_events(plain, LoadOptions(event_type="interaction"))  # the default, by name
    assert default.purchase_mask().all() and named.purchase_mask().all()
    bought, _ = load_events(plain, LoadOptions(event_type="purchase"))
    assert bought.purchase_mask().all()


def test_catalog_alignment_and_bad_values(tmp_path: Path) -> None:
    events = write(tmp_path, "e.csv", "user_id,item_id\nu1,i1\nu1,i2\n")
    items = write(
        tmp_path,
        "items.csv",
        "item_id,category,price,in_stock,title\ni2,shoes,30,no,Boot\ni1,hats,-4,yes,Cap\ni9,hats,5,maybe,New\n",
    )
    log, report = load_events(events)
    catalog = load_catalog(items, log.items, report)
    assert log.items.ids == ["i1", "i2", "i9"]
    assert catalog.category.tolist() == ["hats", "shoes", "hats"]
    assert np.isnan(catalog.price[0]) and catalog.price[1] == 30
    assert catalog.in_stock.tolist() == [True, False, True]
    assert report.bad_rows["catalog: unparsable or negative price"] == 1
    assert report.bad_rows["catalog: unparsable in_stock"] == 1
    # counted apart: the log's own rows still add up
    assert report.catalog_rows_bad == 2 and report.rows_bad == 0
    assert report.rows_kept + report.rows_bad == report.rows_read == 2
    assert "catalogue rows bad 2" in report.summary_lines()[0]
    assert not any("repeated" in note for note in report.notes)
    huge = write(tmp_path, "huge.csv", "item_id,price\ni1,1e39\ni2,-1e39\n")  # beyond float32
    catalog = load_catalog(huge, log.items, report)
    assert np.isnan(catalog.price[:2]).all()
    assert report.bad_rows["catalog: " + NUMBER_OUT_OF_RANGE.format("price")] == 1
    assert report.bad_rows["catalog: unparsable or negative price"] == 2
    again = write(tmp_path, "again.csv", "item_id,price\ni1,3\ni2,4\ni1,5\ni1,6\n")
    catalog = load_catalog(again, log.items, report)
    assert catalog.price[0] == 6  # the last row of i1
    assert "item_id repeated by a later row in 2 rows" in report.notes[-1]


ID = st.one_of(st.none(), st.text(alphabet="abcxyz01 ,\"", max_size=6))


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(ID, ID, st.sampled_from(["view", "cart", "", "zzz"]),
                               st.sampled_from(["1700000000", "bad", "", "2026-01-01"])), max_size=30))
def test_every_row_is_kept_or_counted(tmp_path_factory: pytest.TempPathFactory, rows: list) -> None:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "timestamp"])
    path = tmp_path_factory.mktemp("prop") / "e.csv"
    frame.to_csv(path, index=False)
    if not rows:
        return
    log, report = load_events(path, LoadOptions(known_event_types=["view", "cart"]))
    assert report.rows_read == len(rows)
    assert report.rows_kept + report.rows_bad == report.rows_read
    assert len(log) == report.rows_kept


def test_a_log_read_in_chunks_loads_like_one_chunk(tmp_path: Path) -> None:
    # Ids are checked per chunk: a bad id is rejected in every chunk it appears in (it never
    # enters the map), a good one keeps its index, and indexes follow first appearance.
    long_id = "u" * 300
    rows = [
        ("u1", "i1"), ("u2", "i2"), ("u\x07", "i1"), (long_id, "i3"),  # chunk 1
        ("u1", "i2"), ("u\x07", "i2"), ("u3", "i1"), ("u2", " i1 "),  # chunk 2 (" i1 " is i1)
        (long_id, "i1"), ("u3", ""), ("u4", "i\x07"), ("u1", "i4"),  # chunk 3
    ]
    text = "user_id,item_id\n" + "".join(f"{u},{i}\n" for u, i in rows)
    path = write(tmp_path, "events.csv", text)
    whole_log, whole = load_events(path, LoadOptions(event_type="view", required=("user_id", "item_id")))
    log, report = load_events(
        path, LoadOptions(event_type="view", required=("user_id", "item_id"), chunk_rows=4)
    )
    assert dict(report.bad_rows) == dict(whole.bad_rows) == {
        "user_id has control characters": 2,
        "user_id longer than 256 characters": 2,
        "missing item_id": 1,
        "item_id has control characters": 1,
    }
    assert report.examples["user_id has control characters"] == [3, 6]
    assert report.examples["user_id longer than 256 characters"] == [4, 9]
    assert list(log.users.ids) == list(whole_log.users.ids) == ["u1", "u2", "u3"]
    assert list(log.items.ids) == ["i1", "i2", "i4"]
    assert log.users.decode(log.user) == ["u1", "u2", "u1", "u3", "u2", "u1"]
    assert log.items.decode(log.item) == ["i1", "i2", "i2", "i1", "i1", "i4"]
    assert log.users.decode(log.user) == whole_log.users.decode(whole_log.user)


LATE_KEYS = [  # the first records lack keys that later ones set; "rating" is only ever null
    {"user_id": "u1", "item_id": "i1", "event_type": "view"},
    {"user_id": "u2", "item_id": "i2", "event_type": "view", "rating": None},
    {"user_id": "u1", "item_id": "i2", "event_type": "purchase", "price": "2.5",
     "timestamp": "2026-01-01T00:00:00Z"},
    {"user_id": "u3", "item_id": "i1", "event_type": "purchase", "price": 3, "timestamp": 1767225600},
]


@pytest.mark.parametrize("chunk_rows", [1, 2, 100])
def test_a_json_lines_key_first_set_late_is_a_column_of_the_whole_log(
    tmp_path: Path, chunk_rows: int
) -> None:
    path = write(tmp_path, "events.jsonl", "".join(json.dumps(r) + "\n" for r in LATE_KEYS))
    log, report = load_events(path, LoadOptions(chunk_rows=chunk_rows))
    assert dict(report.bad_rows) == {"missing timestamp": 2}  # the log has times: these lack theirs
    assert report.examples["missing timestamp"] == [1, 2]
    assert log.users.decode(log.user) == ["u1", "u3"]
    assert log.price.tolist() == [2.5, 3.0]
    assert log.timestamp.tolist() == [1767225600.0, 1767225600.0]
    assert np.isnan(log.rating).all()  # null wherever given: no rating column, nothing rejected


@pytest.mark.parametrize("ascii_only", [True, False])
def test_a_late_non_ascii_key_is_found_however_it_is_written(tmp_path: Path, ascii_only: bool) -> None:
    rows = [{"user_id": "u1", "item_id": "i1"}, {"user_id": "u2", "item_id": "i2", "prix_€": "4.5"}]
    text = "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in rows)
    path = write(tmp_path, "events.jsonl", text)
    log, _ = load_events(path, LoadOptions(chunk_rows=1, columns={"price": "prix_€"}))
    assert np.isnan(log.price[0]) and log.price[1] == 4.5


US_DATES = (  # the UCI Online Retail CSV export's InvoiceDate, a Parquet-like epoch row, three bad
    "user_id,item_id,timestamp\n"
    "u1,i1,12/1/2010 8:26\n"
    "u2,i2,1/12/2011 14:05\n"
    "u3,i1,1291191960\n"
    "u4,i2,2010-12-01T08:26:00Z\n"
    "u5,i1,13/1/2011 9:00\n"
    "u6,i2,now\n"
)


def test_a_time_format_reads_us_style_dates(tmp_path: Path) -> None:
    path = write(tmp_path, "retail.csv", US_DATES)
    _, plain = load_events(path, LoadOptions(event_type="purchase"))
    assert plain.bad_rows["unparsable timestamp"] == 4  # without the format: the US dates, "now"
    log, report = load_events(path, LoadOptions(event_type="purchase", time_format="%m/%d/%Y %H:%M"))
    assert dict(report.bad_rows) == {"unparsable timestamp": 3}  # ISO text, month 13, "now"
    assert report.examples["unparsable timestamp"] == [4, 5, 6]
    assert log.users.decode(log.user) == ["u1", "u2", "u3"]
    assert log.timestamp.tolist() == [1291191960, 1294841100, 1291191960]  # UTC; epoch still read


RUN_TIME_WORDS = ["now", "today", "NOW", " now ", "Today", " TODAY\t"]


@pytest.mark.parametrize("first", ["2026-01-01T00:00:00Z", "1767225600", "12/1/2010 8:26"])
def test_now_and_today_are_unparsable_not_the_time_of_the_run(first: str) -> None:
    # pandas reads "now" and "today" as the clock of the run: a log never means that
    time_format = "%m/%d/%Y %H:%M" if "/" in first else None
    out = parse_timestamps(pd.Series([first, *RUN_TIME_WORDS]), time_format)
    assert np.isfinite(out[0]) and np.isnan(out[1:]).all()


@pytest.mark.parametrize("spec", ["MM/dd/yyyy", "%Q %m"])
def test_a_time_format_that_is_none_is_refused(spec: str) -> None:
    from recsvc.events import check_time_format

    with pytest.raises(InvalidInput, match="--time-format"):
        check_time_format(spec)


ODD_TIMES = (  # typo'd years and epochs in the wrong unit: counted, never a crash or a new "now"
    "user_id,item_id,event_type,timestamp\n"
    "u1,i1,view,2026-01-01T00:00:00Z\n"
    "u2,i1,purchase,2026-01-02T00:00:00+02:00\n"
    "u1,i2,view,9999-12-31T23:59:59Z\n"
    "u2,i2,view,0001-01-01T00:00:00Z\n"
    "u3,i1,view,99999999999999999999\n"
    "u3,i2,view,-5\n"
    "u4,i2,view,2100-01-01T00:00:00Z\n"
    "u4,i1,view,2099-12-31T23:59:59Z\n"
    "u5,i1,view,now\n"
    "u5,i2,view, Today \n"
)


def test_times_out_of_range_are_bad_rows(tmp_path: Path) -> None:
    from recsvc.events import TIME_OUT_OF_RANGE

    log, report = load_events(write(tmp_path, "odd.csv", ODD_TIMES))
    assert dict(report.bad_rows) == {TIME_OUT_OF_RANGE: 5, "unparsable timestamp": 2}
    assert report.examples[TIME_OUT_OF_RANGE] == [3, 4, 5, 6, 7]
    assert report.examples["unparsable timestamp"] == [9, 10]
    assert log.timestamp.tolist() == [1767225600, 1767304800, 4102444799]


# Logs the two engines once read differently (a fuzzing review); tests/test_spark.py checks
# that the Spark engine reads each like this.
ODD_CSVS = {
    "an unused column and a line with a field too many": (
        "user_id,item_id,country\nu1,i1,FR\nu2,i2,FR,oops\nu3,i3,DE\n"),
    "the first row with a field too many": "user_id,item_id\nu1,i1,extra\nu2,i2\n",
    "doubled quotes inside a quoted id": 'user_id,item_id\nu1,"Mug ""Big"""\nu2,i2\n',
    "an epoch far too large": "user_id,item_id,timestamp\nu0,i0,1767225600\nu1,i1,1e28\n",
    "blank order ids": ("user_id,item_id,event_type,order_id\nu1,i1,purchase, \nu2,i2,purchase,\n"
                        "u1,i2,purchase,o1\n"),
    "java number syntax": "user_id,item_id,quantity,price\nu1,i1,2d,1\nu2,i2,1,0x1p3\nu3,i3,1,2.5\n",
    "now and today among epoch times": (
        "user_id,item_id,timestamp\nu0,i0,1767225600\nu1,i1,now\nu2,i2,today\nu3,i3, NOW \n"),
    "numbers beyond float32": (  # kept as float32: 1e39 would be infinite, 1e-50 zero
        "user_id,item_id,quantity,price,rating\nu1,i1,1e39,1,4\nu2,i2,1,1e39,4\nu3,i3,1,2,1e39\n"
        "u4,i4,2,-1e39,3\nu5,i5,3.4028234663852886e38,2.5,5\nu6,i6,1e-50,1,1\nu7,i7,2,3.5e38,5\n"),
    "blank lines": BLANK_LINES,
    "a blank line before the first row with a field too many": "user_id,item_id\n \t \nu1,i1,x\nu2,i2\n",
}


def test_odd_csvs_are_read_as_documented(tmp_path: Path) -> None:
    logs = {}
    for name, text in ODD_CSVS.items():
        logs[name] = load_events(write(tmp_path, f"{len(logs)}.csv", text))
    log, report = logs["an unused column and a line with a field too many"]
    assert log.users.ids == ["u1", "u3"] and report.examples["malformed line (wrong number of fields)"] == [2]
    log, report = logs["the first row with a field too many"]
    assert log.users.ids == ["u2"] and report.examples["malformed line (wrong number of fields)"] == [1]
    log, _ = logs["doubled quotes inside a quoted id"]
    assert log.items.ids == ['Mug "Big"', "i2"]
    log, report = logs["an epoch far too large"]
    assert log.users.ids == ["u0"] and report.bad_rows[TIME_OUT_OF_RANGE] == 1
    log, _ = logs["blank order ids"]
    assert log.order.tolist() == [-1, -1, 0] and list(log.orders.ids) == ["o1"]  # no shared "" order
    log, report = logs["java number syntax"]
    assert log.users.ids == ["u3"] and dict(report.bad_rows) == {"unparsable quantity": 1, "unparsable price": 1}
    log, report = logs["now and today among epoch times"]
    assert log.users.ids == ["u0"] and report.examples == {"unparsable timestamp": [2, 3, 4]}
    log, report = logs["numbers beyond float32"]
    assert log.users.ids == ["u5"] and report.examples == {
        NUMBER_OUT_OF_RANGE.format("quantity"): [1],
        NUMBER_OUT_OF_RANGE.format("price"): [2, 4, 7],
        NUMBER_OUT_OF_RANGE.format("rating"): [3],
        "zero quantity": [6],
    }
    assert np.isfinite(log.quantity).all() and np.isfinite(log.price).all() and np.isfinite(log.rating).all()


def test_a_parquet_time_past_2099_is_out_of_range_not_1978(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    times = pa.array([1_767_225_600_000_000, 253_402_214_400_000_000], type=pa.timestamp("us"))
    pq.write_table(pa.table({"user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "timestamp": times}),
                   tmp_path / "t.parquet")
    log, report = load_events(tmp_path / "t.parquet")
    assert log.users.ids == ["u1"] and report.bad_rows[TIME_OUT_OF_RANGE] == 1


def test_a_lone_surrogate_escape_in_json_lines_is_a_bad_id_not_a_crash(tmp_path: Path) -> None:
    path = write(tmp_path, "s.jsonl", '{"user_id": "u\\ud800", "item_id": "i1"}\n{"user_id": "u2", "item_id": "i1"}\n')
    log, report = load_events(path)
    assert log.users.ids == ["u2"] and report.rows_bad == 1

