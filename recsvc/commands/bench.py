"""`recsvc bench serve` and `recsvc bench train`: benchmarks an engineer can run and trust.

    recsvc bench serve --target HOST:PORT [--rpc Recommend|SimilarItems|CrossSell|BuyAgain|
        Popular|RecordEvent|mix|realtime[,...]] [--users-from STORE_URL|BUNDLE|FILE] [--concurrency 16 | --rate R]
        [--duration 30s] [--warmup 5s] [--out results.json] [--plot latency.png]
        [--token TOKEN] [--tls-ca ca.pem [--tls-cert c.pem --tls-key c.key]] [--retries]
    recsvc bench train [--sizes 0.1M,1M,5M,20M] [--items 100000] [--spark]
        [--out train.json] [--plot train.png]

`bench serve` drives a running server with `recsvc.loadgen` (the health `Check` floor first,
then each RPC, in one run) and prints requests/s, errors and latency percentiles per phase and
each RPC's ratio to the floor. `bench train` generates synthetic logs of growing size
(`recsvc synth`) and runs the default `recsvc train` on each as a child process, measuring wall
time, CPU time and peak resident memory (the child's own high-water mark from `os.wait4`, and
the peak summed over its process tree by polling /proc); with `--spark` it also times Spark
MLlib ALS on the same interaction matrix with the same parameters. Both write JSON that carries
the machine, the versions and the date, and a PNG plot.

Runs `training` only in child processes (`python -m recsvc.cli train`, `python -c`): this
module imports neither `training` nor `serving`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsvc.errors import InvalidInput

GIB = 1024**3
# Targets of issue 7 / issue 8, printed next to the figures (benchmarks/ evaluate them).
SERVE_TARGETS = {"rps_vs_floor_min": 0.70, "p99_ms_max": 10.0, "concurrency": 16}
TRAIN_TARGETS = {"seconds_max": 300.0, "peak_gib_max": 8.0, "spark_ratio_min": 10.0}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("bench", help="load, training and scaling benchmarks")
    commands = parser.add_subparsers(dest="bench_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: _usage(parser))

    serve = commands.add_parser(
        "serve",
        help="load-test a running server: requests/s and latency vs the health-check floor",
        description=(
            "Closed loop (--concurrency) or open loop (--rate; latency from the intended send "
            "time). Measures the health Check RPC first as the floor, then each --rpc."
        ),
    )
    serve.add_argument("--target", required=True, help="HOST:PORT of a recsvc server")
    serve.add_argument(
        "--rpc", default="Recommend",
        help="comma-separated: Recommend, SimilarItems, CrossSell, BuyAgain, Popular, mix; "
        "RecordEvent and realtime (RecordEvent then Recommend per shopper: the real-time path) "
        "write events into the server's store",
    )
    serve.add_argument(
        "--users-from", default=None,
        help="ids for requests: a store URL, a bundle directory, a CSV/Parquet with user_id / "
        "item_id columns, or a file of user ids (default: items from the server, synthetic users)",
    )
    serve.add_argument("--concurrency", type=int, default=16, help="calls in flight (closed loop)")
    serve.add_argument("--rate", type=float, default=None, help="requests/s (open loop)")
    serve.add_argument("--duration", default="30s", help="measured time per phase (30s, 2m, 500ms)")
    serve.add_argument("--warmup", default="5s", help="unmeasured load before each phase")
    serve.add_argument("--k", type=int, default=10, help="items per request (default 10)")
    serve.add_argument("--timeout", default="2s", help="deadline of each call")
    serve.add_argument("--connections", type=int, default=None,
                       help="HTTP/2 connections (default: one per worker, at most 64; 16 open loop)")
    serve.add_argument("--no-floor", action="store_true", help="skip the health Check floor")
    serve.add_argument("--rounds", type=int, default=1,
                       help="alternate the phases N times (duration / N each) so background "
                       "load on the machine hits the floor and the RPCs alike")
    serve.add_argument("--server-pid", type=int, action="append", default=[],
                       help="also report this local process tree's CPU time (repeatable)")
    serve.add_argument("--seed", type=int, default=0)
    serve.add_argument("--out", default=None, help="write the results as JSON here")
    serve.add_argument("--plot", default=None, help="write a PNG plot here")
    serve.add_argument("--token", default=None,
                       help="bearer token for an authenticating server (default $RECSVC_TOKEN)")
    serve.add_argument("--tls-ca", default=None, help="PEM CA of the server's certificate: use TLS")
    serve.add_argument("--tls-cert", default=None, help="PEM client certificate (mutual TLS)")
    serve.add_argument("--tls-key", default=None, help="PEM key of --tls-cert")
    serve.add_argument("--tls-server-name", default=None,
                       help="name to check the server certificate against (default: the host)")
    serve.add_argument("--retries", action="store_true",
                       help="retry UNAVAILABLE calls as storefronts should (recsvc.client)")
    serve.set_defaults(func=run_serve)

    train = commands.add_parser(
        "train",
        help="fit time and peak memory of `recsvc train` on synthetic logs of growing size",
    )
    train.add_argument("--sizes", default="0.1M,1M,5M,20M", help="events per log: 100k, 0.1M, 1M ...")
    train.add_argument("--items", type=int, default=100_000, help="catalogue size (default 100000)")
    train.add_argument("--events-per-user", type=int, default=100,
                       help="users = events / this (default 100: 20M events, 200k users)")
    train.add_argument("--format", choices=["csv", "parquet"], default="csv", help="log format")
    train.add_argument("--train-args", default="",
                       help="extra `recsvc train` flags, e.g. '--no-ease' (default: none)")
    train.add_argument("--spark", action="store_true",
                       help="also time Spark MLlib ALS (local[2]) on the same matrix")
    train.add_argument("--spark-master", default="local[2]")
    train.add_argument("--spark-memory", default="10g", help="spark.driver.memory (default 10g)")
    train.add_argument("--work", default=None,
                       help="directory for logs and bundles (kept; default: a temporary one)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--resume", action="store_true",
                       help="keep the sizes --out already holds from a run with the same settings")
    train.add_argument("--out", default=None, help="write the results as JSON here (after each size)")
    train.add_argument("--plot", default=None, help="write a PNG plot here")
    train.set_defaults(func=run_train)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# -- parsing ----------------------------------------------------------------------------------
def parse_duration(text: str, field: str) -> float:
    """Seconds from `30s`, `2m`, `500ms`, `1h` or a plain number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*", str(text))
    if not match:
        raise InvalidInput(field, f"'{text}' is not a duration like 30s, 2m or 500ms")
    value = float(match.group(1))
    return value * {"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(2) or "s"]


def parse_sizes(text: str) -> list[int]:
    """Event counts from `0.1M,1M,20M` (k, M, G suffixes; plain numbers too)."""
    sizes = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgG]?)\s*", part)
        if not match:
            raise InvalidInput("--sizes", f"'{part}' is not a size like 100k, 0.1M or 20M")
        factor = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[match.group(2).lower()]
        size = int(round(float(match.group(1)) * factor))
        if size < 1000:
            raise InvalidInput("--sizes", f"{part} is below 1000 events")
        sizes.append(size)
    return sizes


def size_label(events: int) -> str:
    if events >= 1_000_000:
        return f"{events / 1e6:g}M"
    return f"{events / 1e3:g}k"


# -- environment ------------------------------------------------------------------------------
def environment() -> dict[str, Any]:
    """Machine (cores, memory, CPU model), versions and date, for every result file."""
    from importlib import metadata

    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) * 1024 / GIB, 1)
    except OSError:
        pass
    cpu_model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for name in ("recsvc", "grpcio", "protobuf", "numpy", "scipy", "implicit", "redis", "pyspark"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    redis_server = shutil.which("redis-server")
    if redis_server:
        found = subprocess.run([redis_server, "--version"], capture_output=True, text=True).stdout
        match = re.search(r"v=(\S+)", found)
        if match:
            versions["redis-server"] = match.group(1)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parents[2],
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "memory_gib": memory,
            "cpu": cpu_model,
            "platform": platform.platform(),
            # Other work on the machine skews every figure: the 1/5/15-minute load averages
            # when the result was taken (near 0 on an otherwise idle machine).
            "load_average": [round(v, 2) for v in os.getloadavg()],
        },
        "versions": versions,
        "commit": commit or None,
    }


def write_json(path: str | Path, value: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, allow_nan=False) + "\n")


# -- bench serve ------------------------------------------------------------------------------
def run_serve(args: argparse.Namespace) -> int:
    from recsvc import loadgen
    from recsvc.client import ClientSecurity
    from recsvc.progress import progress_enabled

    rpcs = tuple(r.strip() for r in args.rpc.split(",") if r.strip())
    config = loadgen.LoadConfig(
        target=args.target,
        rpcs=rpcs,
        concurrency=args.concurrency,
        rate=args.rate,
        duration=parse_duration(args.duration, "--duration"),
        warmup=parse_duration(args.warmup, "--warmup"),
        k=args.k,
        timeout=parse_duration(args.timeout, "--timeout"),
        connections=args.connections,
        users_from=args.users_from,
        floor=not args.no_floor,
        seed=args.seed,
        server_pids=tuple(args.server_pid),
        progress=progress_enabled(),
        rounds=args.rounds,
        security=ClientSecurity.from_env(
            args.token, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
            server_name=args.tls_server_name,
        ),
        retries=args.retries,
    )
    result = {"benchmark": "serve", **environment(), **loadgen.run(config)}
    for line in serve_summary(result):
        print(line)
    if args.out:
        write_json(args.out, result)
        print(f"results written to {args.out}")
    if args.plot:
        plot_serve([result], args.plot)
        print(f"plot written to {args.plot}")
    return 0


def serve_summary(result: dict[str, Any]) -> list[str]:
    """Human-readable lines: one per phase, then the ratios to the floor."""
    cfg = result["config"]
    load = f"concurrency {cfg['concurrency']}" if cfg["mode"] == "closed" else f"rate {cfg['rate']:g}/s"
    rounds = cfg.get("rounds", 1)
    with_server = any("server" in phase for phase in result["phases"])
    lines = [
        f"bench serve {result['target']}: {load}, {cfg['duration_s']:g}s per phase"
        + (f" in {rounds} alternating rounds" if rounds > 1 else "")
        + f" after {cfg['warmup_s']:g}s warm-up, k={cfg['k']}, {cfg['connections']} connections; "
        f"ids: {result['ids']['users']} users, {result['ids']['items']} items ({result['ids']['source']})",
        f"  {'phase':<13}{'req/s':>9}{'vs floor':>10}{'p50':>9}{'p90':>9}{'p99':>9}{'p99.9':>9}"
        f"{'max':>9}  {'errors':<10}{'gen CPU':>8}" + ("  srv CPU/req" if with_server else ""),
    ]
    for phase in result["phases"]:
        lat = phase["latency_ms"]

        def ms(name: str, lat: dict[str, Any] = lat) -> str:
            return f"{lat[name]:8.2f}" if lat[name] is not None else "       -"

        if "rps_vs_floor" in phase:
            ratio = f"{phase['rps_vs_floor']:9.0%}"
        elif phase["name"] == "Check":
            ratio = "    floor"
        else:  # open loop: every phase is offered the same rate; compare latencies
            ratio = "      n/a" if cfg["mode"] == "open" else "        -"
        errors = ",".join(f"{k}:{v}" for k, v in phase["errors"].items()) or "0"
        line = (
            f"  {phase['name']:<13}{phase['rps']:9,.0f} {ratio}{ms('p50')} {ms('p90')} {ms('p99')} "
            f"{ms('p99.9')} {ms('max')}  {errors:<10}{phase['generator']['cpu_per_wall']:7.0%}"
        )
        if "server" in phase and phase["server"]["cpu_us_per_request"] is not None:
            line += f"  {phase['server']['cpu_us_per_request']:8.0f} us"
        lines.append(line)
        spread = [r for r in phase.get("round_rps_vs_floor", []) if r is not None]
        if spread:
            lines.append(f"  {'':<13}vs floor per round: {min(spread):.0%} .. {max(spread):.0%}")
        gen = phase["generator"]
        if "max_send_lag_ms" in gen:  # open loop: how far the generator fell behind its schedule
            lag = gen.get("send_lag_ms") or {}
            typical = (f"p50 {lag['p50']:.2f} / p99 {lag['p99']:.2f} ms (in every latency), "
                       if lag else "")
            lines.append(f"  {'':<13}sends late by {typical}at most {gen['max_send_lag_ms']:.1f} ms; "
                         f"{gen['not_sent']} not sent (outstanding-call cap; errors at the deadline)")
    lines.append("  req/s = answers that arrived in the window; latency (every call sent in the window, "
                 "failed ones included) in ms;\n"
                 "  gen CPU = load generator CPU time / wall time (100% = one core)"
                 + ("; srv CPU/req = server process tree CPU per call (Redis not included)"
                    if with_server else ""))
    return lines


def plot_serve(results: Sequence[dict[str, Any]], path: str | Path, title: str | None = None) -> None:
    """Latency percentiles per phase (left) and throughput per second (right), one row a run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    quantiles = ("p50", "p90", "p99", "p99.9", "max")
    fig, axes = plt.subplots(len(results), 2, figsize=(13, 4.2 * len(results)), squeeze=False)
    for row, result in enumerate(results):
        left, right = axes[row]
        for phase in result["phases"]:
            values = [phase["latency_ms"][q] for q in quantiles]
            label = f"{phase['name']} ({phase['rps']:,.0f}/s)"
            left.plot(range(len(quantiles)), values, marker="o", label=label)
            seconds = [s["t"] for s in phase["per_second"]]
            right.plot(seconds, [s["ok"] for s in phase["per_second"]], label=phase["name"])
        left.set_xticks(range(len(quantiles)), quantiles)
        left.set_yscale("log")
        left.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        left.set_ylabel("latency (ms, log)")
        left.axhline(SERVE_TARGETS["p99_ms_max"], color="grey", linestyle=":", linewidth=1,
                     label="10 ms (p99 target)")
        left.grid(True, which="both", alpha=0.3)
        left.legend(fontsize=8)
        label = result.get("label") or result["target"]
        cfg = result["config"]
        load = f"c={cfg['concurrency']}" if cfg["mode"] == "closed" else f"rate={cfg['rate']:g}/s"
        left.set_title(f"{label}: latency percentiles ({load})", fontsize=10)
        right.set_xlabel("second of the measured window")
        right.set_ylabel("requests completed")
        right.set_ylim(bottom=0)
        right.grid(True, alpha=0.3)
        right.legend(fontsize=8)
        right.set_title("throughput over time", fontsize=10)
    machine = results[0]["machine"]
    fig.suptitle(
        title or f"recsvc bench serve — {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"{results[0]['date'][:10]}",
        fontsize=11,
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- bench train ------------------------------------------------------------------------------
def _recsvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "recsvc.cli", *args]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env["RECSVC_PROGRESS"] = "0"
    return env


def _status_bytes(pid: int, field: str) -> int:
    """A kB field of /proc/<pid>/status (`VmRSS:`, `VmHWM:`) in bytes; 0 when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and its descendants now (0 when gone)."""
    total = 0
    todo = [pid]
    seen: set[int] = set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        total += _status_bytes(current, "VmRSS:")
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return total


def measure_child(command: Sequence[str], log: Path, poll: float = 0.2) -> dict[str, Any]:
    """Run `command` to completion; wall and CPU seconds, peak RSS, exit code.

    peak_rss_bytes: the child's own high-water mark, `VmHWM` of its program read from /proc at
    every poll (a high-water mark, so a poll misses only growth in the run's last `poll`
    seconds). Not `ru_maxrss` from os.wait4: Linux carries the parent's resident size across
    fork and exec into it, so a 150 MiB parent made every child's peak at least 150 MiB. A child
    that exits before the first poll falls back to `ru_maxrss` (`peak_rss_source` says which).
    peak_tree_rss_bytes: the largest sum over the child and its descendants seen by polling
    /proc every `poll` seconds (what a JVM plus its Python driver use together).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=_child_env())
        peak_tree = 0
        high_water = 0
        loads = [os.getloadavg()[0]]  # 1-minute load average: how busy the machine was
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_tree, high_water
            while not done.wait(poll):
                high_water = max(high_water, _status_bytes(process.pid, "VmHWM:"))
                peak_tree = max(peak_tree, _tree_rss(process.pid))
                loads.append(os.getloadavg()[0])

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            raise
        finally:
            done.set()
            sampler.join()
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    peak = high_water or int(usage.ru_maxrss) * 1024  # kilobytes on Linux
    return {
        "exit_code": process.returncode,
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_bytes": peak,
        "peak_rss_gib": round(peak / GIB, 3),
        "peak_rss_source": "VmHWM" if high_water else "ru_maxrss",
        "peak_tree_rss_gib": round(max(peak_tree, peak) / GIB, 3),
        # the run's own threads count too: on 2 cores a load well above 2 means other work
        "load_average_1min": {"start": round(loads[0], 2), "max": round(max(loads), 2)},
    }


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


SPARK_SNIPPET = """
import json, sys
from recsvc.bundle import Bundle
from training.engines.spark import spark_als_fit_seconds, spark_session
options = json.loads(sys.argv[1])
bundle = Bundle(options["bundle"])
als = bundle.manifest["params"]["als"]
matrix = bundle.seen
session = spark_session(options["master"], conf={"spark.driver.memory": options["memory"]})
try:
    seconds = spark_als_fit_seconds(
        matrix, factors=int(als["factors"]), iterations=int(als["iterations"]),
        regularization=float(als["regularization"]), alpha=float(als["alpha"]),
        master=options["master"], spark=session,
    )
finally:
    session.stop()
print("SPARK_RESULT " + json.dumps({"fit_seconds": seconds, "nnz": int(matrix.nnz)}))
"""


def spark_available() -> bool:
    """pyspark and the Spark engine importable, and java on the PATH."""
    probe = subprocess.run(
        [sys.executable, "-c", "import pyspark, training.engines.spark"],
        capture_output=True, env=_child_env(),
    )
    return probe.returncode == 0 and shutil.which("java") is not None


def _synth(events: int, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """Write the synthetic log of `events` events into `data` (reused when already there)."""
    events_file = data / f"events.{args.format}"
    stamp = data / "bench-synth.json"
    users = max(100, events // args.events_per_user)
    wanted = {"events": events, "items": args.items, "users": users, "seed": args.seed, "topped_up": True,
              "format": args.format}
    if events_file.exists() and stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return wanted
    started = time.perf_counter()
    request = events
    for _ in range(2):  # synth's --events is approximate: ask once more, scaled, if it fell short
        result = subprocess.run(
            _recsvc("synth", "--users", str(users), "--items", str(args.items), "--events", str(request),
                    "--seed", str(args.seed), "--format", args.format, "--out", str(data)),
            capture_output=True, text=True, env=_child_env(),
        )
        if result.returncode != 0:
            raise InvalidInput("--sizes", f"recsvc synth failed for {events} events: {result.stderr.strip()[-500:]}")
        made = re.search(r"synth: (\d+) events", result.stdout)
        if made is None or int(made.group(1)) >= 0.995 * events:
            break
        request = int(request * events / max(int(made.group(1)), 1) * 1.002)
    stamp.write_text(json.dumps(wanted))
    print(f"  synth {size_label(events)}: {result.stdout.strip()} ({time.perf_counter() - started:.0f}s)",
          flush=True)
    return wanted


def train_one(events: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Synthesize (or reuse) one log, train on it in a child process, read the manifest."""
    label = size_label(events)
    data = work / f"data-{label}"
    synth = _synth(events, args, data)
    bundles = work / f"bundles-{label}"
    shutil.rmtree(bundles, ignore_errors=True)
    command = _recsvc("--log-level", "INFO", "train", "--events", str(data / f"events.{args.format}"),
                      "--items", str(data / "items.csv"), "--out", str(bundles),
                      *args.train_args.split())
    log = work / f"train-{label}.log"
    measured = measure_child(command, log)
    row: dict[str, Any] = {"events_requested": events, "label": label, "users_requested": synth["users"],
                           "items_requested": synth["items"], "format": args.format, **measured}
    if measured["exit_code"] != 0:
        row["error"] = _tail(log)
        return row
    manifest = json.loads((bundles / "latest" / "manifest.json").read_text())
    counts = manifest.get("counts", {})
    row.update({
        "events": counts.get("events"),
        "users": counts.get("users"),
        "items": counts.get("items"),
        "interactions": counts.get("interactions"),
        "steps": manifest.get("timings", {}),
        "models": {name: info.get("fit_seconds") for name, info in manifest.get("models", {}).items()},
        "als_params": manifest.get("params", {}).get("als"),
        "bundle": str((bundles / "latest").resolve()),
    })
    row["als_fit_seconds"] = row["models"].get("als")
    return row


def spark_one(row: dict[str, Any], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Time Spark MLlib ALS on the bundle's interaction matrix with the same ALS parameters."""
    command = [sys.executable, "-c", SPARK_SNIPPET,
               json.dumps({"bundle": row["bundle"], "master": args.spark_master,
                           "memory": args.spark_memory})]
    log = work / f"spark-{row['label']}.log"
    measured = measure_child(command, log)
    out: dict[str, Any] = {"master": args.spark_master, "driver_memory": args.spark_memory,
                           "wall_seconds": measured["wall_seconds"],
                           "peak_tree_rss_gib": measured["peak_tree_rss_gib"]}
    text = log.read_text(errors="replace")
    match = re.search(r"SPARK_RESULT (.*)", text)
    # Spark's netlib finds the system BLAS (e.g. apt's libopenblas0) or falls back to Java
    out["spark_blas"] = "java (no libblas.so.3)" if "dlopen(libblas.so.3) failed" in text else "native"
    if measured["exit_code"] != 0 or not match:
        out["error"] = _tail(log)
        return out
    out.update(json.loads(match.group(1)))
    if row.get("als_fit_seconds"):
        out["ratio_vs_local_als"] = round(out["fit_seconds"] / row["als_fit_seconds"], 2)
    return out


WARM_UP_EVENTS = 3000


def warm_up(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train once on a tiny log before the measured sizes, so that what is compiled once per
    install (numba's ALS step, cached on disk) is not charged to the first size. Its own
    figures are kept: the first-run cost is reported, not hidden."""
    tiny = argparse.Namespace(**{**vars(args), "items": min(args.items, 200), "events_per_user": 30})
    row = train_one(WARM_UP_EVENTS, tiny, work / "warm-up")
    shutil.rmtree(work / "warm-up" / f"bundles-{row['label']}", ignore_errors=True)
    kept = {"events": WARM_UP_EVENTS, "wall_seconds": row.get("wall_seconds"),
            "als_fit_seconds": row.get("als_fit_seconds"), "exit_code": row.get("exit_code")}
    if "error" in row:
        kept["error"] = row["error"]
    return kept


def run_train(args: argparse.Namespace) -> int:
    sizes = parse_sizes(args.sizes)
    if args.items < 10:
        raise InvalidInput("--items", f"must be at least 10, got {args.items}")
    if args.events_per_user < 1:
        raise InvalidInput("--events-per-user", f"must be at least 1, got {args.events_per_user}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="recsvc-bench-train-"))
    work.mkdir(parents=True, exist_ok=True)
    with_spark = bool(args.spark)
    if with_spark and not spark_available():
        print("bench train: pyspark, the Spark engine or java is missing: no Spark comparison",
              file=sys.stderr)
        with_spark = False
    config = {"items": args.items, "events_per_user": args.events_per_user,
              "format": args.format, "seed": args.seed, "spark": with_spark,
              "spark_master": args.spark_master if with_spark else None,
              "train_args": args.train_args}
    done: dict[int, dict[str, Any]] = {}
    previous: dict[str, Any] = {}
    if args.resume and args.out and Path(args.out).exists():
        previous = json.loads(Path(args.out).read_text())
        if previous.get("config") == config:
            done = {int(r["events_requested"]): r for r in previous.get("runs", []) if "error" not in r}

    if all(e in done for e in sizes) and previous.get("warm_up"):
        warmed = previous["warm_up"]  # nothing left to measure: no need to warm up
    else:
        warmed = warm_up(args, work)
        als = warmed["als_fit_seconds"]
        print(f"  warm-up ({WARM_UP_EVENTS:,} events, not in the table): {warmed['wall_seconds']:.1f}s wall"
              + (f"; ALS {als:.1f}s (compiles its step when the cache is cold)" if als is not None else "")
              + ("; FAILED" if "error" in warmed else ""), flush=True)

    def result_of(rows: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
        return {
            "benchmark": "train",
            **environment(),
            "command": ("recsvc train --events E --items I --out B " + args.train_args).strip(),
            "config": config,
            "warm_up": warmed,
            "targets": TRAIN_TARGETS,
            "complete": complete,  # False while sizes are still running (or were cut short)
            "runs": sorted(rows, key=lambda r: int(r["events_requested"])),
        }

    rows: list[dict[str, Any]] = [done[e] for e in sizes if e in done]
    for row in rows:
        print(train_line(row) + " (from the previous run)", flush=True)
    try:
        for events in sizes:
            if events in done:
                continue
            row = train_one(events, args, work)
            if with_spark and "error" not in row:
                row["spark_als"] = spark_one(row, args, work)
            if not args.work:
                row.pop("bundle", None)
            rows.append(row)
            print(train_line(row), flush=True)
            if args.out:  # after every size: a long run cut short keeps what it measured
                write_json(args.out, result_of(rows, complete=False))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    result = result_of(rows, complete=True)
    if args.out:
        write_json(args.out, result)
        print(f"results written to {args.out}")
    if args.plot:
        plot_train(result, args.plot)
        print(f"plot written to {args.plot}")
    failed = [row for row in rows if "error" in row]
    if failed:  # the table on stdout says why; stderr says that it failed
        labels = ", ".join(str(row["label"]) for row in failed)
        last = " ".join(str(failed[0]["error"]).split())[-200:]
        print(f"recsvc bench: error: training failed at {labels} events: {last}", file=sys.stderr)
        return 1
    return 0


def train_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"  {row['label']:>5} events: FAILED (exit {row['exit_code']}): {row['error'][-300:]}"
    line = (
        f"  {row['label']:>5} events ({row['events']:,} rows, {row['users']:,} users, "
        f"{row['items']:,} items, {row['interactions']:,} interactions): "
        f"{row['wall_seconds']:.1f}s wall, {row['cpu_seconds']:.0f}s CPU, peak {row['peak_rss_gib']:.2f} GiB"
    )
    if row.get("als_fit_seconds") is not None:
        line += f"; ALS {row['als_fit_seconds']:.1f}s"
    spark = row.get("spark_als")
    if spark:
        if "error" in spark:
            line += "; Spark ALS failed"
        else:
            line += f"; Spark ALS {spark['fit_seconds']:.1f}s ({spark.get('ratio_vs_local_als', 0):.1f}x)"
    return line


def plot_train(result: dict[str, Any], path: str | Path) -> None:
    """Wall time (with the ALS fit and Spark ALS) and peak memory against log size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in result["runs"] if "error" not in r]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.6))
    x = [r["events"] for r in rows]
    left.plot(x, [r["wall_seconds"] for r in rows], marker="o", label="recsvc train (all models)")
    left.plot(x, [r["als_fit_seconds"] or 0 for r in rows], marker="s", label="our ALS fit (implicit, compiled CG step)")
    spark = [(r["events"], r["spark_als"]["fit_seconds"]) for r in rows
             if "fit_seconds" in r.get("spark_als", {})]
    if spark:
        left.plot(*zip(*spark, strict=True), marker="^", label="Spark MLlib ALS fit, local[2]")
    left.axhline(result["targets"]["seconds_max"], color="grey", linestyle=":", label="5 min target")
    left.set_xscale("log")
    left.set_yscale("log")
    left.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    left.set_xlabel("events in the log")
    left.set_ylabel("seconds (log)")
    left.set_title("training time", fontsize=10)
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)

    middle.plot(x, [r["peak_rss_gib"] for r in rows], marker="o", label="recsvc train peak RSS")
    middle.axhline(result["targets"]["peak_gib_max"], color="grey", linestyle=":", label="8 GiB target")
    middle.set_xscale("log")
    middle.set_xlabel("events in the log")
    middle.set_ylabel("GiB")
    middle.set_ylim(bottom=0)
    middle.set_title("peak memory", fontsize=10)
    middle.grid(True, which="both", alpha=0.3)
    middle.legend(fontsize=8)

    if rows:
        biggest = rows[-1]
        steps = biggest.get("steps", {})
        names = list(steps)
        right.barh(names, [steps[n] for n in names])
        right.invert_yaxis()
        right.set_xlabel("seconds")
        right.set_title(f"where the time goes at {biggest['label']} events", fontsize=10)
        right.grid(True, axis="x", alpha=0.3)
    machine = result["machine"]
    fig.suptitle(
        f"recsvc bench train — {result['config']['items']:,} items, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, {result['date'][:10]}",
        fontsize=11,
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
