"""The synthetic store: deterministic, loadable, and carrying the structure it claims to plant."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recsvc.cli import main
from recsvc.errors import InvalidInput
from recsvc.events import EventLog, load_events
from recsvc.synth import SynthConfig, generate, write

SMALL = {"users": 2_000, "items": 300, "days": 90, "clusters": 6, "categories": 12}


@dataclass
class Written:
    directory: Path
    log: EventLog
    truth: dict[str, Any]
    items: pd.DataFrame


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Written:
    directory = tmp_path_factory.mktemp("synth")
    write(generate(SynthConfig(seed=11, **SMALL)), directory)
    log, report = load_events(directory / "events.csv")
    assert report.rows_bad == 0, report.summary_lines()
    truth = json.loads((directory / "ground_truth.json").read_text())
    items = pd.read_csv(directory / "items.csv", dtype=str, keep_default_na=False)
    return Written(directory, log, truth, items)


def purchases(log: EventLog) -> pd.DataFrame:
    bought = log.event == log.event_code("purchase")
    return pd.DataFrame(
        {
            "user": log.user[bought],
            "item": log.item[bought],
            "order": log.order[bought],
            "ts": log.timestamp[bought],
        }
    )


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_same_seed_gives_byte_identical_files(tmp_path: Path, fmt: str) -> None:
    config = SynthConfig(seed=5, users=300, items=60, days=30, clusters=3)
    for name in ("a", "b"):
        write(generate(config), tmp_path / name, fmt=fmt, chunk_rows=1_000)
    write(
        generate(SynthConfig(seed=6, users=300, items=60, days=30, clusters=3)),
        tmp_path / "c",
        fmt=fmt,
    )
    first, again, other = (file_bytes(tmp_path / n) for n in "abc")
    assert set(first) == {f"events.{fmt}", "items.csv", "ground_truth.json"}
    assert first == again
    assert first[f"events.{fmt}"] != other[f"events.{fmt}"]


def test_parquet_loads_with_the_same_rows_as_csv(tmp_path: Path) -> None:
    store = generate(SynthConfig(seed=2, users=200, items=50, days=20, clusters=2))
    write(store, tmp_path / "csv")
    write(store, tmp_path / "pq", fmt="parquet")
    from_csv, csv_report = load_events(tmp_path / "csv" / "events.csv")
    from_parquet, parquet_report = load_events(tmp_path / "pq" / "events.parquet")
    assert csv_report.rows_bad == parquet_report.rows_bad == 0
    assert len(from_csv) == len(from_parquet) == len(store.events)
    assert np.array_equal(from_csv.timestamp, from_parquet.timestamp)
    assert from_csv.users.decode(from_csv.user) == from_parquet.users.decode(from_parquet.user)


def test_files_follow_the_schema(written: Written) -> None:
    events = pd.read_csv(written.directory / "events.csv", dtype=str, keep_default_na=False)
    assert list(events.columns) == [
        "user_id",
        "item_id",
        "event_type",
        "timestamp",
        "order_id",
        "quantity",
        "price",
    ]
    assert list(written.items.columns) == ["item_id", "title", "category", "price", "in_stock"]
    assert events["user_id"].str.fullmatch(r"u\d{6}").all()
    assert events["item_id"].str.fullmatch(r"i\d{5}").all()
    assert set(events["event_type"]) == {"view", "cart", "purchase"}
    assert events["timestamp"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ").all()
    bought = events["event_type"] == "purchase"
    assert events.loc[bought, "order_id"].str.fullmatch(r"o\d{7}").all()
    assert (events.loc[~bought, "order_id"] == "").all()
    assert set(events["user_id"]) <= set(written.truth["user_cluster"])
    assert set(events["item_id"]) <= set(written.items["item_id"])
    assert len(written.truth["user_cluster"]) == written.truth["n_users"] == SMALL["users"]
    assert len(written.truth["item_cluster"]) == written.truth["n_items"] == SMALL["items"]
    assert written.truth["seed"] == 11


def test_timestamps_lie_within_the_period(written: Written) -> None:
    start = pd.Timestamp(written.truth["start"]).timestamp()
    end = pd.Timestamp(written.truth["end"]).timestamp()
    assert end - start == SMALL["days"] * 86_400
    assert written.log.timestamp.min() >= start
    assert written.log.timestamp.max() < end


def test_a_few_items_are_out_of_stock_but_no_planted_one(written: Written) -> None:
    items = written.items
    assert set(items["in_stock"]) == {"true", "false"}
    assert 0 < (items["in_stock"] == "false").mean() < 0.08
    assert (pd.to_numeric(items["price"]) > 0).all()
    assert len(set(written.items["category"])) > 1
    planted = {i for pair in written.truth["pairs"] for i in pair} | set(
        written.truth["cycle_items"]
    )
    stock = dict(zip(written.items["item_id"], written.items["in_stock"], strict=True))
    assert all(stock[i] == "true" for i in planted)


def test_funnel_views_outnumber_carts_outnumber_purchases(written: Written) -> None:
    log = written.log
    share = {name: float(np.mean(log.event == log.event_code(name))) for name in log.event_types}
    assert share["view"] == pytest.approx(0.7, abs=0.05)
    assert share["cart"] == pytest.approx(0.2, abs=0.05)
    assert share["purchase"] == pytest.approx(0.1, abs=0.03)
    viewed = log.event == log.event_code("view")
    first_view = (
        pd.DataFrame(
            {"user": log.user[viewed], "item": log.item[viewed], "ts": log.timestamp[viewed]}
        )
        .groupby(["user", "item"])["ts"]
        .min()
        .rename("view_ts")
    )
    bought = purchases(log).join(first_view, on=["user", "item"])
    assert (bought["view_ts"] <= bought["ts"]).mean() > 0.85


def test_orders_hold_one_to_five_items_at_one_time(written: Written) -> None:
    orders = purchases(written.log).groupby("order")
    assert orders.size().between(1, 5).all()
    assert (orders["ts"].nunique() == 1).all()
    assert (orders["user"].nunique() == 1).all()
    assert written.truth["n_orders"] == len(orders)
    assert (orders.size() > 1).mean() > 0.2


def test_users_mostly_interact_with_their_cluster(written: Written) -> None:
    log, truth = written.log, written.truth
    user_cluster = np.array([truth["user_cluster"][u] for u in log.users.ids])
    item_cluster = np.array([truth["item_cluster"][i] for i in log.items.ids])
    in_cluster = user_cluster[log.user] == item_cluster[log.item]
    per_user = pd.Series(in_cluster).groupby(log.user).mean()
    assert 0.72 < per_user.mean() < 0.9
    # A long tail: the less popular half of the items draws a small share of the events.
    per_item = np.sort(np.bincount(log.item, minlength=SMALL["items"]))
    assert per_item[: SMALL["items"] // 2].sum() < 0.15 * per_item.sum()


def test_planted_pairs_are_bought_together_far_above_chance(written: Written) -> None:
    bought = purchases(written.log)
    n_orders = bought["order"].nunique()
    orders_of = bought.groupby("item")["order"].apply(set)
    pairs = written.truth["pairs"]
    assert len(pairs) == 30
    for a, b in pairs:
        with_a = orders_of[written.log.items.get(a)]
        with_b = orders_of[written.log.items.get(b)]
        together = len(with_a & with_b)
        support = together / n_orders
        lift = together * n_orders / (len(with_a) * len(with_b))
        assert support > 0.002, (a, b, support)
        assert lift > 10, (a, b, lift)
        assert together / min(len(with_a), len(with_b)) > 0.4


def test_cycle_users_rebuy_at_the_planted_period(written: Written) -> None:
    log, truth = written.log, written.truth
    bought = purchases(log)
    times = bought.groupby(["user", "item"])["ts"].apply(np.sort)
    cycles = truth["cycles"]
    share = len({c["user_id"] for c in cycles}) / SMALL["users"]
    assert 0.1 < share <= 0.2
    assert {c["item_id"] for c in cycles} <= set(truth["cycle_items"])
    checked = 0
    for cycle in cycles:
        ts = times[(log.users.get(cycle["user_id"]), log.items.get(cycle["item_id"]))]
        period = cycle["period_days"]
        assert 7 <= period <= 30
        last = pd.Timestamp(cycle["last_purchase"])
        assert ts[-1] == last.timestamp()
        assert pd.Timestamp(cycle["next_due"]) - last == pd.Timedelta(days=period)
        if len(ts) >= 3:
            median_gap_days = np.median(np.diff(ts)) / 86_400
            assert median_gap_days == pytest.approx(period, rel=0.2), cycle
            checked += 1
    assert checked > 0.8 * len(cycles)


@pytest.mark.parametrize("days", [5, 13, 14, 20])
def test_every_planted_cycle_shows_in_the_log(days: int) -> None:
    """A cycle in the ground truth has at least two purchases of its item by its user (a log
    shorter than two periods plants none); a tiny budget plants none either."""
    store = generate(SynthConfig(seed=1, users=600, items=100, days=days, clusters=4))
    cycles = store.ground_truth["cycles"]
    assert (len(cycles) > 0) == (days >= 14)
    bought = store.events[store.events["event_type"] == "purchase"]
    times = bought.groupby(["user_id", "item_id"])["timestamp"].nunique()
    for cycle in cycles:
        assert times.get((cycle["user_id"], cycle["item_id"]), 0) >= 2, cycle
    tiny = generate(SynthConfig(seed=1, users=600, items=100, days=120, clusters=4, events=10))
    assert tiny.ground_truth["cycles"] == []


def test_events_target_is_roughly_met() -> None:
    store = generate(SynthConfig(seed=1, users=500, items=100, days=30, clusters=4, events=20_000))
    assert 15_000 < len(store.events) < 24_000
    assert store.counts()["events"] == len(store.events)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"users": 0}, "--users"),
        ({"items": 9}, "--items"),
        ({"days": 0}, "--days"),
        ({"clusters": 0}, "--clusters"),
        ({"clusters": 8, "items": 30}, "--clusters"),
        ({"categories": 0}, "--categories"),
        ({"events": 5}, "--events"),
        ({"seed": -1}, "--seed"),
        ({"start": "yesterday"}, "--start"),
    ],
)
def test_invalid_arguments_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        SynthConfig(**overrides)
    assert caught.value.field == field


def test_write_rejects_an_unknown_format(tmp_path: Path) -> None:
    store = generate(SynthConfig(users=10, items=10, days=2, clusters=1))
    with pytest.raises(InvalidInput, match="--format"):
        write(store, tmp_path, fmt="xml")


def test_cli_writes_the_files_and_prints_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "data"
    code = main(
        [
            "synth",
            "--users",
            "300",
            "--items",
            "60",
            "--days",
            "30",
            "--seed",
            "7",
            "--clusters",
            "3",
            "--categories",
            "5",
            "--start",
            "2026-03-01",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert len(printed) == 1
    assert re.search(r"\d+ events \(view \d+, cart \d+, purchase \d+\)", printed[0])
    assert {p.name for p in out.iterdir()} == {"events.csv", "items.csv", "ground_truth.json"}
    truth = json.loads((out / "ground_truth.json").read_text())
    assert truth["start"] == "2026-03-01T00:00:00Z"
    assert truth["end"] == "2026-03-31T00:00:00Z"


def test_cli_reports_bad_input_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["synth", "--users", "0", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["recsvc synth: error: --users: must be between 1 and 50,000,000, not 0"]
