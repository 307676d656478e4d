"""Buy-again: intervals from purchase days, the due score over time, once-bought items, the
bundle round trip, the CLI, and planted repurchase cycles found well above a recency baseline."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recsvc.bundle import Bundle, BundleWriter
from recsvc.buyagain import SECONDS_PER_DAY, BuyAgainLists, due_scores, due_text
from recsvc.config import BuyAgainConfig
from recsvc.errors import InvalidInput, NotFound
from recsvc.events import Catalog, EventLog
from recsvc.ids import IdMap
from training.buyagain import fit_buyagain

DAY = SECONDS_PER_DAY
START = 1_767_225_600  # 2026-01-01T00:00:00Z
NOON = 12 * 3600


def make_log(
    rows: Sequence[tuple[str, str, str, float]],
    event_types: Sequence[str] = ("view", "cart", "purchase"),
) -> EventLog:
    """EventLog from (user, item, event type, day since START) rows."""
    users, items = IdMap(), IdMap()
    n = len(rows)
    return EventLog(
        users=users,
        items=items,
        orders=IdMap(),
        event_types=list(event_types),
        user=users.encode(np.array([r[0] for r in rows], dtype=object)),
        item=items.encode(np.array([r[1] for r in rows], dtype=object)),
        event=np.array([list(event_types).index(r[2]) for r in rows], dtype=np.int16),
        timestamp=np.array([START + round(r[3] * DAY) for r in rows], dtype=np.int64),
        order=np.full(n, -1, dtype=np.int32),
        quantity=np.ones(n, dtype=np.float32),
        price=np.full(n, np.nan, dtype=np.float32),
        rating=np.full(n, np.nan, dtype=np.float32),
        has_column={"user_id": True, "item_id": True, "event_type": True, "timestamp": True},
    )


def at(day: float) -> int:
    return START + round(day * DAY)


def entries(lists: BuyAgainLists, log: EventLog, user: str, now: int) -> dict[str, object]:
    index = log.users.get(user)
    return {log.items.id_of(e.item): e for e in lists.for_user(index, now)}


def test_cycle_from_distinct_days_with_count_interval_and_reason() -> None:
    rows = [("ann", "milk", "purchase", d + 0.5) for d in (0, 14, 28, 42)]
    rows += [("ann", "milk", "purchase", 42.6), ("ann", "milk", "purchase", 42.7)]  # same day
    rows += [("ann", "milk", "view", d) for d in (3, 5, 9)]  # views are not purchases
    log = make_log(rows)
    lists = fit_buyagain(log, BuyAgainConfig(), at(54))
    index = log.users.get("ann")
    assert lists.count[lists.indptr[index]] == 4
    assert lists.interval_days[lists.indptr[index]] == pytest.approx(14.0)
    assert lists.last[lists.indptr[index]] == at(42.7)
    (entry,) = lists.for_user(index, at(54.7))
    item, score, reason, next_due = entry
    assert log.items.id_of(item) == "milk"
    assert next_due == at(42.7) + 14 * DAY
    assert reason == "bought 4 times, about every 14 days; due in 2 days"
    assert score > 0.5


def test_due_score_peaks_at_the_due_date_and_is_recomputed_from_the_clock() -> None:
    rows = [("ann", "coffee", "purchase", d) for d in (0, 30, 60, 90)]
    log = make_log(rows)
    lists = fit_buyagain(log, BuyAgainConfig(), at(91))
    index = log.users.get("ann")
    by_day = {
        day: lists.for_user(index, at(day))[0].score for day in (91, 100, 110, 120, 130, 150)
    }
    assert by_day[120] == max(by_day.values())  # next due: day 90 + 30
    assert by_day[91] < by_day[110] < by_day[120] > by_day[130] > by_day[150]
    # The stored training-time score is the clock-free value at training time.
    assert lists.due_score[0] == pytest.approx(by_day[91], rel=1e-5)
    assert lists.for_user(index, at(118))[0].reason.endswith("due in 2 days")
    assert lists.for_user(index, at(123))[0].reason.endswith("overdue by 3 days")


def test_due_score_formula() -> None:
    next_due = np.array([at(10), at(10), at(30)])
    scores = due_scores(at(10), next_due, np.array([1.0, 1.0, 1.0]), np.array([1.0, 0.5, 1.0]))
    assert scores[0] == pytest.approx(1.0, abs=1e-6)  # due today, certain
    assert scores[1] == pytest.approx(0.5, abs=1e-6)  # confidence scales it
    assert scores[2] < 1e-6  # due in 20 days: outside the week either side
    assert due_text(at(10), at(10) + 3600) == "due today"
    assert due_text(at(11), at(10)) == "due in 1 day"


def test_regular_buyer_outranks_an_irregular_one_and_more_history_more_confidence() -> None:
    rows = [("ann", "tea", "purchase", d) for d in (0, 10, 20, 30, 40, 50)]
    rows += [("ann", "soap", "purchase", d) for d in (0, 3, 20, 24, 40, 50)]  # median 10, erratic
    rows += [("ann", "rice", "purchase", d) for d in (40, 50)]  # one interval of 10
    log = make_log(rows)
    lists = fit_buyagain(log, BuyAgainConfig(), at(50))
    found = entries(lists, log, "ann", at(60))
    assert found["tea"].score > found["rice"].score  # type: ignore[attr-defined]
    assert found["tea"].score > found["soap"].score  # type: ignore[attr-defined]
    ranked = [log.items.id_of(e.item) for e in lists.for_user(log.users.get("ann"), at(60))]
    assert ranked[0] == "tea"


def test_once_bought_items_offered_only_when_the_population_rebuys_them() -> None:
    rows: list[tuple[str, str, str, float]] = []
    for n in range(5):  # five repeat buyers of "filters" every 10 days, one of "lamp"
        rows += [(f"rep{n}", "filters", "purchase", d) for d in (0, 10, 20, 30)]
    rows += [("rep0", "lamp", "purchase", 0), ("rep0", "lamp", "purchase", 50)]
    for n in range(5):
        rows.append((f"one{n}", "lamp", "purchase", 2))
    rows += [("newbie", "filters", "purchase", 25), ("newbie", "lamp", "purchase", 25)]
    log = make_log(rows)
    lists = fit_buyagain(log, BuyAgainConfig(min_population_rate=0.3), at(31))
    found = entries(lists, log, "newbie", at(35))
    assert set(found) == {"filters"}  # lamp: 1 of 7 buyers re-buys it
    entry = found["filters"]
    assert entry.reason == (  # type: ignore[attr-defined]
        "bought once; customers re-buy it about every 10 days; due today"
    )
    # A customer's own two purchases count for more than the population's habit.
    assert entry.score < lists.for_user(log.users.get("rep0"), at(40))[0].score  # type: ignore[attr-defined]
    strict = fit_buyagain(log, BuyAgainConfig(min_population_rate=0.9), at(31))
    assert entries(strict, log, "newbie", at(35)) == {}


def test_interaction_only_logs_count_every_row_and_browsing_logs_have_no_lists() -> None:
    rows = [("ann", "milk", "interaction", d) for d in (0, 7, 14, 21)]
    log = make_log(rows, event_types=("interaction",))
    log.has_column["event_type"] = False  # as loaded from a log with no event column
    lists = fit_buyagain(log, BuyAgainConfig(), at(22))
    assert set(entries(lists, log, "ann", at(28))) == {"milk"}
    views = make_log([(u, i, "view", d) for u, i, _, d in rows])
    assert len(fit_buyagain(views, BuyAgainConfig(), at(22))) == 0


def test_lists_are_capped_per_user_sorted_and_lapsed_cycles_dropped() -> None:
    rows = []
    for n in range(8):
        rows += [("ann", f"item{n}", "purchase", d) for d in (0, 5 + n, 10 + 2 * n)]
    rows += [("ann", "old", "purchase", d) for d in (0, 2, 4)]  # due day 6; lapsed by day 30
    log = make_log(rows)
    lists = fit_buyagain(log, BuyAgainConfig(max_items_per_user=5), at(30))
    assert lists.indptr[-1] == 5
    assert "old" not in [log.items.id_of(i) for i in lists.items]
    assert np.all(np.diff(lists.due_score) <= 0)


def test_empty_when_no_timestamps_or_no_purchases() -> None:
    log = make_log([("ann", "milk", "purchase", d) for d in (0, 7, 14)])
    log.has_column["timestamp"] = False
    lists = fit_buyagain(log, BuyAgainConfig(), at(20))
    assert len(lists) == 0 and lists.n_users == 1
    assert lists.for_user(0, at(20)) == [] and lists.for_user(5, at(20)) == []


def write_bundle(tmp_path: Path, log: EventLog, lists: BuyAgainLists) -> Path:
    writer = BundleWriter(tmp_path / "bundles")
    writer.ids(log.users, log.items, Catalog.empty(len(log.items)))
    lists.write(writer)
    return writer.commit({})


def test_bundle_round_trip_keeps_lists_and_recomputes_scores(tmp_path: Path) -> None:
    rows = [("ann", "milk", "purchase", d) for d in (0, 7, 14, 21)]
    rows += [("bob", "tea", "purchase", d) for d in (0, 10, 20)]
    log = make_log(rows)
    lists = fit_buyagain(log, BuyAgainConfig(), at(22))
    loaded = BuyAgainLists.read(Bundle(write_bundle(tmp_path, log, lists)))
    assert loaded.trained_at == at(22)
    for user in range(2):
        for now in (at(22), at(29), at(40)):
            assert loaded.for_user(user, now) == lists.for_user(user, now)
    assert np.array_equal(loaded.rescored(at(30)).due_score, lists.rescored(at(30)).due_score)


def run_cli(argv: list[str]) -> int:
    from training.commands_commerce import register

    parser = argparse.ArgumentParser(prog="recsvc")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_prints_one_customer_and_exports_all(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [("ann", "milk", "purchase", d + 0.5) for d in (0, 14, 28, 42)]
    rows += [("ann", "tea", "purchase", d + 0.5) for d in (0, 30)]
    rows += [("bob", "tea", "purchase", d + 0.5) for d in (20, 29, 38)]
    log = make_log(rows)
    bundle = write_bundle(tmp_path, log, fit_buyagain(log, BuyAgainConfig(), at(43)))

    assert run_cli(["buyagain", "--bundle", str(bundle), "--user", "ann",
                    "--now", "2026-02-24T12:00:00Z"]) == 0
    printed = capsys.readouterr().out
    assert "milk" in printed and "2026-02-26" in printed
    assert "bought 4 times, about every 14 days; due in 2 days" in printed

    out = tmp_path / "due.csv"
    assert run_cli(["buyagain", "--bundle", str(bundle), "--users", "all", "--k", "1",
                    "--now", "2026-02-24", "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame["user_id"]) == ["ann", "bob"]
    assert set(frame.columns) >= {"item_id", "score", "next_due", "reason", "rank"}
    assert frame.loc[0, "item_id"] == "milk"

    with pytest.raises(NotFound):
        run_cli(["buyagain", "--bundle", str(bundle), "--user", "nobody"])
    with pytest.raises(InvalidInput, match="--now"):
        run_cli(["buyagain", "--bundle", str(bundle), "--user", "ann", "--now", "soon"])
    with pytest.raises(InvalidInput, match="--out"):
        run_cli(["buyagain", "--bundle", str(bundle), "--users", "all"])


# Planted cycles ---------------------------------------------------------------------------

def hit_rates(
    lists: BuyAgainLists, log: EventLog, due: set[tuple[int, int]], now: int
) -> tuple[float, float]:
    """Share of the planted pairs due within 7 days found among the N top-ranked
    (customer, item) pairs, N = how many are due: (due score, most recent purchase first)."""
    n = len(due)
    rescored = lists.rescored(now)
    best = np.argsort(-rescored.due_score, kind="stable")[:n]
    ours = set(zip(rescored.row_users()[best].tolist(), np.asarray(rescored.items)[best].tolist(),
                   strict=True))
    bought = log.event == log.event_code("purchase")
    last = (
        pd.DataFrame({"user": log.user[bought], "item": log.item[bought],
                      "time": log.timestamp[bought]})
        .groupby(["user", "item"], as_index=False)["time"].max()
        .sort_values("time", ascending=False, kind="stable")
        .head(n)
    )
    recency = set(zip(last["user"].tolist(), last["item"].tolist(), strict=True))
    return len(ours & due) / n, len(recency & due) / n


def planted_store(seed: int, n_users: int = 600, n_items: int = 300, days: int = 180):
    """Users re-buying 1-3 items every 7-45 days (+-1 day), amid one-off purchases and views
    of popular items. Returns (log, {(user, item): next planned purchase}, now)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity /= popularity.sum()
    rows: list[tuple[str, str, str, float]] = []
    next_due: dict[tuple[str, str], float] = {}
    for user in range(n_users):
        for item in rng.choice(n_items, size=int(rng.integers(1, 4)), replace=False):
            period = int(rng.choice([7, 10, 14, 21, 30, 45]))
            day, last = int(rng.integers(0, period)), 0.0
            while day < days:
                last = day + float(rng.uniform(0.3, 0.9))
                rows.append((f"u{user}", f"i{item}", "purchase", last))
                day += period + int(rng.integers(-1, 2))
            next_due[(f"u{user}", f"i{item}")] = last + period
        for kind, mean in (("purchase", 40), ("view", 20)):
            for _ in range(rng.poisson(mean)):
                item = int(rng.choice(n_items, p=popularity))
                rows.append((f"u{user}", f"i{item}", kind, float(rng.uniform(0, days))))
    return make_log(rows), next_due, at(days)


def test_planted_cycles_due_this_week_found_well_above_recency_baseline() -> None:
    log, next_due, now = planted_store(seed=7)
    lists = fit_buyagain(log, BuyAgainConfig(), now)
    due = {
        (log.users.get(u), log.items.get(i))
        for (u, i), day in next_due.items()
        if now <= at(day) < now + 7 * DAY
    }
    assert len(due) > 100
    ours, recency = hit_rates(lists, log, due, now)
    print(f"\nplanted cycles due in 7 days: {len(due)}; hit rate due score {ours:.3f}, "
          f"recency baseline {recency:.3f}")
    assert ours >= 0.8, (ours, recency)
    assert ours >= recency + 0.4, (ours, recency)


def test_synth_store_cycles_due_this_week_found_well_above_recency_baseline(
    tmp_path: Path,
) -> None:
    synth = pytest.importorskip("recsvc.synth")
    from recsvc.events import load_events

    store = synth.generate(synth.SynthConfig(users=3000, items=400, days=120, seed=3))
    paths = synth.write(store, tmp_path, "parquet")
    log, _ = load_events(paths["events"])

    def epoch(text: str) -> int:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())

    truth = store.ground_truth
    now = epoch(truth["end"])
    lists = fit_buyagain(log, BuyAgainConfig(), now)
    due = {
        (log.users.get(c["user_id"]), log.items.get(c["item_id"]))
        for c in truth["cycles"]
        if now <= epoch(c["next_due"]) < now + 7 * DAY
    }
    assert len(due) > 50
    ours, recency = hit_rates(lists, log, due, now)
    print(f"\nrecsvc.synth cycles due in 7 days: {len(due)}; hit rate due score {ours:.3f}, "
          f"recency baseline {recency:.3f}")
    assert ours >= 0.8, (ours, recency)
    assert ours >= recency + 0.4, (ours, recency)


def test_one_trip_across_midnight_is_one_occasion() -> None:
    # 23:58 and 00:03 UTC: one occasion, not "bought 2 times, about every 1 day"
    rows = [("bob", "milk", "purchase", d) for d in (10 - 2 / 1440, 10 + 3 / 1440)]
    rows += [("cat", "milk", "purchase", d) for d in (10.25, 10.75, 24.5)]  # 12 h apart: two
    log = make_log(rows)
    lists = fit_buyagain(log, BuyAgainConfig(), at(12))
    bob = log.users.get("bob")
    assert lists.indptr[bob + 1] == lists.indptr[bob]  # one occasion: no cycle to offer
    cat = lists.indptr[log.users.get("cat")]
    assert lists.count[cat] == 3 and lists.interval_days[cat] == pytest.approx(7.5)  # gaps 1, 14
