"""Smoke tests of the benchmarks: `recsvc bench serve` against a real gRPC server on 127.0.0.1,
`recsvc bench train` at a tiny size, the latency histogram against numpy, the open loop's
accounting of queueing, and where request ids come from (files, bundles, a real Redis).

They assert that the tools produce well-formed results, never how fast anything is.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsvc import loadgen
from recsvc.cli import main
from recsvc.commands.bench import parse_duration, parse_sizes, serve_summary
from recsvc.errors import InvalidInput
from recsvc.loadgen import CallPool, LatencyHistogram, load_ids, run_phase
from tests.fixtures_grpc import N_ITEMS, N_USERS, bundle_dir, memory_server  # noqa: F401
from tests.fixtures_redis import redis_url  # noqa: F401  (fixture)

PNG = b"\x89PNG\r\n\x1a\n"
QUANTILES = (50.0, 90.0, 99.0, 99.9, 100.0)


# -- histogram --------------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-6, max_value=59.0, allow_nan=False), min_size=1, max_size=400),
    st.sampled_from(QUANTILES),
)
def test_histogram_percentiles_within_precision_of_numpy(values: list[float], q: float) -> None:
    hist = LatencyHistogram(precision=0.01)
    for value in values:
        hist.record(value)
    exact = float(np.percentile(np.asarray(values), q, method="inverted_cdf"))
    reported = hist.percentile(q)
    assert exact * (1 - 1e-9) <= reported <= exact * 1.01 * (1 + 1e-9)
    assert hist.count == len(values)
    assert hist.max == max(values)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-6, max_value=10.0, allow_nan=False), min_size=1, max_size=200),
    st.lists(st.floats(min_value=1e-6, max_value=10.0, allow_nan=False), min_size=1, max_size=200),
)
def test_histogram_merge_equals_recording_everything(left: list[float], right: list[float]) -> None:
    a, b, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for value in left:
        a.record(value)
        both.record(value)
    for value in right:
        b.record(value)
        both.record(value)
    a.merge(b)
    assert a.counts == both.counts
    assert [a.percentile(q) for q in QUANTILES] == [both.percentile(q) for q in QUANTILES]


def test_histogram_clamps_out_of_range_and_is_empty_safe() -> None:
    hist = LatencyHistogram()
    assert math.isnan(hist.percentile(50))
    assert hist.summary_ms()["p99"] is None
    hist.record(1e-9)
    hist.record(120.0)  # above the 60 s range: clamped into the top bucket, max stays exact
    assert hist.clamped == 1
    assert hist.percentile(100) == 120.0
    with pytest.raises(InvalidInput, match="q"):
        hist.percentile(0)


# -- open loop vs closed loop -----------------------------------------------------------------
def _serialised_pool(service_seconds: float) -> CallPool:
    """Calls to a stand-in server that handles one call at a time (a queue builds under load)."""
    lock = asyncio.Lock()

    async def call() -> None:
        async with lock:
            await asyncio.sleep(service_seconds)

    return CallPool(["Slow"], [call])


def test_open_loop_counts_queueing_that_closed_loop_hides() -> None:
    # A server that needs 20 ms a call can do 50/s; offered 100/s it queues. The open loop
    # measures from the intended send time, so its latency grows with the queue; the closed
    # loop (one call in flight) only ever sees the service time.
    async def both() -> tuple[Any, Any]:
        opened = await run_phase("open", _serialised_pool(0.02), duration=1.0, warmup=0.0, rate=100.0)
        closed = await run_phase("closed", _serialised_pool(0.02), duration=1.0, warmup=0.0, concurrency=1)
        return opened, closed

    opened, closed = asyncio.run(both())
    assert opened.mode == "open" and closed.mode == "closed"
    assert opened.latency.count >= 40  # intended sends in the window, all answered eventually
    assert opened.latency.percentile(90) > 0.2  # queueing (~0.5 s at the end), not 20 ms
    assert closed.latency.percentile(90) < opened.latency.percentile(90) / 4
    assert not opened.errors and not closed.errors
    # Throughput is what the server did (50/s), not what was offered (100/s).
    assert 35 <= opened.rps <= 55 and 35 <= closed.rps <= 55


def test_failed_calls_count_in_latency_and_skipped_sends_are_errors() -> None:
    calls = 0

    async def sometimes_late_and_failing() -> None:
        nonlocal calls
        calls += 1
        if calls % 10 == 0:  # a tenth of the calls time out after 200 ms
            await asyncio.sleep(0.2)
            raise TimeoutError("deadline")
        await asyncio.sleep(0.001)

    async def stalled() -> None:
        await asyncio.sleep(0.5)  # the server hangs: the outstanding-call cap is reached

    async def both() -> tuple[Any, Any]:
        failing = await run_phase("failing", CallPool(["Flaky"], [sometimes_late_and_failing]),
                                  duration=1.0, warmup=0.0, concurrency=4)
        capped = await run_phase("capped", CallPool(["Stalled"], [stalled]), duration=0.5,
                                 warmup=0.0, rate=200.0, max_outstanding=10, timeout=0.3)
        return failing, capped

    failing, capped = asyncio.run(both())
    assert failing.errors["TimeoutError"] > 0
    assert failing.latency.count == failing.ok + failing.errors["TimeoutError"]
    assert failing.latency.percentile(99) >= 0.19  # the timeouts, not only the 1 ms answers
    assert capped.not_sent > 50 and capped.errors["NOT_SENT"] == capped.not_sent
    assert capped.to_dict()["error_rate"] > 0.5 and set(capped.per_rpc) == {"Stalled"}
    # a call not sent counts at the deadline (0.3 s), never as a quick answer: no sample
    # in the histogram is below what a sent call took (0.5 s) or a skipped one stands for
    assert capped.latency.percentile(1) >= 0.29


# -- parsing ----------------------------------------------------------------------------------
def test_durations_and_sizes_parse_and_reject_bad_values() -> None:
    assert parse_duration("30s", "--duration") == 30.0
    assert parse_duration("2m", "--duration") == 120.0
    assert parse_duration("500ms", "--warmup") == 0.5
    assert parse_duration("1.5", "--duration") == 1.5
    assert parse_sizes("0.1M,1M,20M,5k") == [100_000, 1_000_000, 20_000_000, 5_000]
    with pytest.raises(InvalidInput, match="--duration"):
        parse_duration("soon", "--duration")
    with pytest.raises(InvalidInput, match="--sizes"):
        parse_sizes("1M,lots")


def test_bench_serve_rejects_bad_flags_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "serve", "--target", "127.0.0.1:1", "--rpc", "Everything"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "--rpc" in err[0] and "Everything" in err[0]
    for flags, named in [  # values that hung the generator or ran nothing
        (["--rate", "nan"], "--rate"), (["--rate", "inf"], "--rate"),
        (["--concurrency", "100000000"], "--concurrency"), (["--rpc", ""], "--rpc"),
        (["--timeout", "0s"], "--timeout"),
    ]:
        assert main(["bench", "serve", "--target", "127.0.0.1:1", *flags]) == 2, flags
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"error: {named}: " in err[0], err


# -- where ids come from ----------------------------------------------------------------------
def test_ids_from_files_and_bundles(tmp_path: Path, bundle_dir: Path) -> None:  # noqa: F811
    # read like recommend --users: a BOM and a header are no ids, '#42' is one
    plain = tmp_path / "users.txt"
    plain.write_text("\ufeffuser_id\n#42\nu1\nu2\n\nu3\nu1\n", encoding="utf-8")
    assert load_ids(str(plain)).users == ("#42", "u1", "u2", "u3")

    table = tmp_path / "events.csv"
    table.write_text("\ufeffuser_id,item_id,event_type\na,x,view\nb,y,view\na,y,cart\n", encoding="utf-8")
    from_table = load_ids(str(table))
    assert sorted(from_table.users) == ["a", "b"] and sorted(from_table.items) == ["x", "y"]

    from_bundle = load_ids(str(bundle_dir))
    assert len(from_bundle.users) == N_USERS and len(from_bundle.items) == N_ITEMS
    assert "books" in from_bundle.categories

    with pytest.raises(InvalidInput, match="--users-from"):
        load_ids(str(tmp_path / "missing.txt"))
    with pytest.raises(InvalidInput, match="--users-from: unknown store scheme"):
        load_ids("bogus://x")


@pytest.mark.redis
def test_ids_from_a_redis_store(redis_url: str, bundle_dir: Path) -> None:  # noqa: F811
    from recsvc.bundle import Bundle
    from recsvc.store import open_store

    store = open_store(redis_url)
    try:
        store.publish(Bundle(bundle_dir), progress=False)
    finally:
        store.close()
    ids = load_ids(redis_url)
    assert len(ids.items) == N_ITEMS
    assert set(ids.users) == set(Bundle(bundle_dir).users.ids)  # every user of a small store
    assert "vip" in ids.segments


# -- the tools end to end ---------------------------------------------------------------------
def test_bench_serve_against_a_real_server(memory_server: Any, bundle_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    out, plot = tmp_path / "serve.json", tmp_path / "serve.png"
    code = main([
        "bench", "serve", "--target", memory_server.target, "--rpc", "Recommend,mix",
        "--users-from", str(bundle_dir), "--concurrency", "4", "--duration", "1s",
        "--warmup", "200ms", "--rounds", "2", "--out", str(out), "--plot", str(plot),
    ])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["machine"]["cores"] >= 1 and result["versions"]["grpcio"] and result["date"]
    assert [p["name"] for p in result["phases"]] == ["Check", "Recommend", "mix"]
    for phase in result["phases"]:
        assert phase["requests_ok"] > 0 and phase["errors"] == {}
        lat = phase["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
        assert sum(s["ok"] for s in phase["per_second"]) == phase["answers_in_window"]
        assert phase["rps"] == round(phase["answers_in_window"] / phase["seconds"], 1)
        assert phase["generator"]["cpu_per_wall"] > 0
    assert set(result["rps_vs_floor"]) == {"Recommend", "mix"}
    assert result["config"]["rounds"] == 2
    for phase in result["phases"]:  # two alternating rounds of 0.5 s, merged
        assert len(phase["round_rps"]) == 2 and phase["seconds"] == 1.0
    assert len(result["phases"][1]["round_rps_vs_floor"]) == 2
    assert set(result["phases"][2]["per_rpc"]) == set(loadgen.MIX_WEIGHTS)
    assert result["ids"]["users"] == N_USERS and result["ids"]["users_known"] is True
    assert result["model"]["n_items"] == N_ITEMS
    assert plot.read_bytes().startswith(PNG)


def test_bench_serve_realtime_measures_recommend_after_events(
    memory_server: Any, bundle_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    """`--rpc realtime`: shoppers' visits (RecordEvent, then Recommend for the same user), so
    the Recommend calls take the real-time path; per RPC in the result, sources say so."""
    out = tmp_path / "realtime.json"
    code = main([
        "bench", "serve", "--target", memory_server.target, "--rpc", "realtime,RecordEvent",
        "--users-from", str(bundle_dir), "--concurrency", "4", "--duration", "1s",
        "--warmup", "200ms", "--no-floor", "--out", str(out),
    ])
    assert code == 0
    phases = {p["name"]: p for p in json.loads(out.read_text())["phases"]}
    realtime = phases["realtime"]
    assert realtime["errors"] == {} and set(realtime["per_rpc"]) == {"RecordEvent", "Recommend"}
    counts = {name: part["requests_ok"] for name, part in realtime["per_rpc"].items()}
    assert abs(counts["RecordEvent"] - counts["Recommend"]) <= 8, counts  # one of each a visit
    # every Recommend of a visit follows an event of its user: answered from the real-time path
    assert realtime["sources"].get("REALTIME", 0) >= 0.9 * counts["Recommend"], realtime["sources"]
    assert phases["RecordEvent"]["errors"] == {} and phases["RecordEvent"]["requests_ok"] > 0
    from types import SimpleNamespace

    stub = SimpleNamespace(RecordEvent=print, Recommend=print)
    pool = loadgen.build_pool(
        "realtime", [stub], [], loadgen.load_ids(str(bundle_dir)), 5, 1.0, seed=1, size=40)
    assert pool.names == ["RecordEvent", "Recommend"] * 20
    requests = [call.args[0] for call in pool.calls]  # type: ignore[attr-defined]
    assert all(event.user_id == recommend.user_id
               for event, recommend in zip(requests[::2], requests[1::2], strict=True))
    assert len({r.user_id for r in requests}) <= 5  # a few shoppers, each back several times


def test_bench_serve_open_loop_without_ids(memory_server: Any) -> None:  # noqa: F811
    # No --users-from: items are harvested from the server, users are synthetic (cold start),
    # and the result says so.
    config = loadgen.LoadConfig(
        target=memory_server.target, rpcs=("SimilarItems", "Recommend"), rate=200.0,
        duration=1.0, warmup=0.1, floor=False,
    )
    result = loadgen.run(config)
    assert [p["name"] for p in result["phases"]] == ["SimilarItems", "Recommend"]
    assert result["config"]["mode"] == "open"
    assert result["ids"]["users_known"] is False and "synthetic" in result["ids"]["source"]
    assert 0 < result["ids"]["items"] <= N_ITEMS
    for phase in result["phases"]:
        assert phase["requests_ok"] > 100 and phase["errors"] == {}
        assert phase["generator"]["not_sent"] == 0
        lag = phase["generator"]["send_lag_ms"]  # the generator's own share of each latency
        assert 0 <= lag["p50"] <= lag["p99"] <= phase["generator"]["max_send_lag_ms"] + 0.1
    summary = "\n".join(serve_summary(result))
    assert summary.count("0 not sent (outstanding-call cap") == 2
    assert summary.count("sends late by p50") == 2


def test_open_loop_gives_no_throughput_ratio_to_the_floor(memory_server: Any) -> None:  # noqa: F811
    # Every phase is offered the same rate: a server that keeps up answers it in each, so
    # "Recommend at 100% of Check" would say nothing about capacity.
    config = loadgen.LoadConfig(target=memory_server.target, rpcs=("Popular",), rate=100.0,
                                duration=0.5, warmup=0.1)
    result = loadgen.run(config)
    assert [p["name"] for p in result["phases"]] == ["Check", "Popular"]
    assert result["rps_vs_floor"] == {} and "rps_vs_floor" not in result["phases"][1]
    popular_line = next(line for line in serve_summary(result) if line.strip().startswith("Popular"))
    assert " n/a " in popular_line


@pytest.mark.slow
def test_bench_train_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, plot = tmp_path / "train.json", tmp_path / "train.png"
    started = time.perf_counter()
    code = main([
        "bench", "train", "--sizes", "3k,6k", "--items", "60", "--events-per-user", "30",
        "--work", str(tmp_path / "work"), "--out", str(out), "--plot", str(plot),
    ])
    assert code == 0, f"bench train failed after {time.perf_counter() - started:.0f}s"
    result = json.loads(out.read_text())
    assert result["benchmark"] == "train" and result["machine"]["memory_gib"] > 0
    runs = result["runs"]
    assert [r["events_requested"] for r in runs] == [3000, 6000]
    for run in runs:
        assert run["exit_code"] == 0
        assert run["items"] <= 60 and run["interactions"] > 0
        assert run["wall_seconds"] > 0 and run["cpu_seconds"] > 0
        assert 0.01 < run["peak_rss_gib"] <= run["peak_tree_rss_gib"] + 1e-9
        assert run["als_fit_seconds"] is not None and "candidates" in run["steps"]
    assert result["complete"] is True
    assert plot.read_bytes().startswith(PNG)
    warm_up = result["warm_up"]  # a tiny unmeasured run first: compiled steps are cached
    assert warm_up["exit_code"] == 0 and warm_up["als_fit_seconds"] is not None

    # --resume keeps the sizes a run with the same settings already measured
    capsys.readouterr()
    code = main([
        "bench", "train", "--sizes", "3k,6k", "--items", "60", "--events-per-user", "30",
        "--work", str(tmp_path / "work"), "--out", str(out), "--resume",
    ])
    assert code == 0
    resumed = capsys.readouterr().out
    assert resumed.count("from the previous run") == 2
    assert "warm-up" not in resumed  # nothing left to measure: no warm-up run either
    again = json.loads(out.read_text())
    assert again["runs"] == runs and again["warm_up"] == warm_up


def test_bench_train_says_on_stderr_that_training_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([
        "bench", "train", "--sizes", "3k", "--items", "60", "--events-per-user", "30",
        "--work", str(tmp_path / "work"), "--train-args=--bogus",
    ])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert code == 1
    assert len(err) == 1 and err[0].startswith("recsvc bench: error: training failed at 3k events")
    assert "--bogus" in err[0]


def _train_script() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_train_script", Path(__file__).resolve().parents[1] / "benchmarks" / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_run(label: str, seconds: float, ratio: float, blas: str) -> dict[str, Any]:
    return {"label": label, "events": 20_000_000, "interactions": 10_000_000,
            "wall_seconds": seconds, "peak_rss_gib": 4.0, "steps": {"fit als": 60.0},
            "spark_als": {"ratio_vs_local_als": ratio, "spark_blas": blas}}


def test_train_verdict_judges_the_target_size_and_only_fair_spark_runs() -> None:
    verdict = _train_script().verdict
    small = _train_run("5M", 90.0, 12.0, "native")

    # the 20M run failed: a miss, not the verdict of the largest size that finished
    failed = verdict({"runs": [small, {"label": "20M", "error": "killed"}]})
    assert failed["size"] == "20M" and failed["failed"] == ["20M"]
    assert failed["time_target_met"] is False and "missing" in failed

    fair = verdict({"runs": [small, _train_run("20M", 280.0, 9.0, "native")]})
    assert fair["time_target_met"] is True and fair["user_item_pairs"] == 10_000_000
    assert fair["spark_target_met"] is False  # 9x at 20M misses 10x

    java = verdict({"runs": [small, _train_run("20M", 320.0, 15.0, "java (no libblas.so.3)")]})
    assert java["time_target_met"] is False
    assert java["spark_target_met"] is None and "20M" in java["spark_target_note"]

    # Spark failing at the target size (e.g. out of memory) is a miss, not left out
    spark_oom = {**_train_run("20M", 250.0, 0.0, "native"), "spark_als": {"error": "OutOfMemoryError"}}
    oom = verdict({"runs": [small, spark_oom]})
    assert oom["spark_target_met"] is False and oom["spark_failed"] == ["20M"]
    assert oom["spark_ratio_by_size"] == {"5M": 12.0}


def test_measure_child_peak_is_the_childs_own_not_its_parents(tmp_path: Path) -> None:
    """A child's peak RSS is its program's own: Linux carries the parent's resident size across
    fork and exec into `ru_maxrss`, which made a small child look as big as a big parent."""
    import sys

    from recsvc.commands.bench import measure_child

    ballast = b"x" * (600 << 20)  # written, so resident in this (the parent) process
    small = [sys.executable, "-c", "import time; time.sleep(1.0)"]
    grows = [sys.executable, "-c", "import time; b = b'y' * (300 << 20); time.sleep(1.0)"]
    small_run = measure_child(small, tmp_path / "small.log", poll=0.05)
    grows_run = measure_child(grows, tmp_path / "grows.log", poll=0.05)
    assert len(ballast) == 600 << 20
    assert small_run["exit_code"] == 0 and small_run["peak_rss_source"] == "VmHWM"
    assert small_run["peak_rss_bytes"] < 200 << 20, small_run
    assert 300 << 20 <= grows_run["peak_rss_bytes"] < 500 << 20, grows_run
