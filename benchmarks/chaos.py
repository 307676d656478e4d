"""Chaos benchmark: faults under steady load, and what the shoppers saw.

A real redis-server and `recsvc serve --store redis://... --workers 2` (authentication on, as
deployed) run as child processes; `recsvc.loadgen` keeps a steady closed-loop load of
`Recommend` calls on them (a bearer token on every call) while one fault is injected:

    a  redis-killed      Redis SIGKILLed, restarted from its append-only file 3 s later
    b  redis-paused      Redis frozen (SIGSTOP) for 3 s, then SIGCONT
    b2 redis-slow        Redis answers every command late: DEBUG SLEEP 0.05 in a loop, 3 s
    c  publish-rollback  a new model version published during traffic, then rolled back
    d  worker-killed     one of the two server worker processes SIGKILLed (the supervisor
                         starts a new one)
    d0 worker-killed-no-retry   the same, with a client that does not retry (for contrast)
    e  sigterm           the server sent SIGTERM (drain, then exit)

For each: requests sent, failed (by status code), answered by the fallback (source FALLBACK),
p99 latency of the calls sent during the fault, and the time to recover: from the moment the
fault is cleared (Redis back, resumed, the killed worker replaced) until the end of the last
abnormal 100 ms window of calls (any call failed or answered by the fallback, or, in two windows
in a row, over 5% of them slower than max(5 x baseline p99, 100 ms)); for the publish, the time until every answer
carries the new (then the rolled-back-to) version. For SIGTERM: the calls in
flight when it arrived (sent before, answered after) and how they ended, and how long the
drain took. Targets (issue 10): zero failed Recommend calls in a-d; in e every in-flight call
finishes. Clients retry UNAVAILABLE (the policy in `recsvc.client`, what we recommend to
storefronts) in d; a-c and e run without retries, so the server alone must cope.

    .venv/bin/python benchmarks/chaos.py                 # full run -> benchmarks/results/chaos.json
    .venv/bin/python benchmarks/chaos.py --quick         # shorter phases, small bundle
    .venv/bin/python benchmarks/chaos.py --only a,d      # some scenarios

`tests/test_chaos.py` runs the same scenarios, shortened, against the planted test bundle.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402

from recsvc import loadgen  # noqa: E402
from recsvc.client import RETRY_POLICY, ClientSecurity  # noqa: E402
from recsvc.v1 import recommender_pb2 as pb  # noqa: E402
from recsvc.v1 import recommender_pb2_grpc as pb_grpc  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "chaos.json"
SLOW_FLOOR = 0.1  # s: a call slower than this (and 5 x the baseline p99) counts as slow
WINDOW = 0.1  # s: recovery is judged on windows of calls this long (by send time)
SLOW_SHARE = 0.05  # a window with more slow calls than this share is abnormal
FALLBACK = pb.FALLBACK
SCENARIOS = ("a", "b", "b2", "c", "d", "d0", "e")
TITLES = {
    "a": "Redis killed and restarted",
    "b": "Redis paused (SIGSTOP) for 3 s",
    "b2": "Redis slow (DEBUG SLEEP 0.05 in a loop) for 3 s",
    "c": "publish, then rollback, during traffic",
    "d": "one of two server workers killed (client retries UNAVAILABLE)",
    "d0": "one of two server workers killed (client without retries)",
    "e": "server sent SIGTERM",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the environment ----------------------------------------------------------------------------
@dataclass
class Lab:
    """A redis-server and a `recsvc serve` supervisor, as child processes, and their controls."""

    work: Path
    bundles: list[Path]  # bundles[0] is published first; bundles[1] is the one (c) publishes
    workers: int = 2
    redis_port: int = 0
    server_port: int = 0
    token: str = ""
    redis: subprocess.Popen[bytes] | None = None
    server: subprocess.Popen[bytes] | None = None
    extra_serve_args: tuple[str, ...] = ()

    @property
    def store_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server_port}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1",
                "RECSVC_PROGRESS": "0", "RECSVC_LOG_LEVEL": "WARNING"}

    def recsvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "recsvc.cli", *args], capture_output=True,
                              text=True, env=self.env(), cwd=ROOT, timeout=300)
        if check and done.returncode != 0:
            raise RuntimeError(f"recsvc {' '.join(args[:2])} failed: {done.stderr.strip()[-500:]}")
        return done

    # Redis
    def start_redis(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (make redis-server)")
        if not self.redis_port:
            self.redis_port = free_port()
        directory = self.work / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        self.redis = subprocess.Popen(
            [server, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(directory),
             "--enable-debug-command", "local",
             "--logfile", str(directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.redis_port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill_redis(self) -> None:
        assert self.redis is not None
        self.redis.kill()
        self.redis.wait()

    def signal_redis(self, signum: int) -> None:
        assert self.redis is not None
        os.kill(self.redis.pid, signum)

    def redis_command(self, *args: str) -> None:
        with socket.create_connection(("127.0.0.1", self.redis_port), timeout=5) as sock:
            parts = [f"*{len(args)}\r\n".encode()]
            for arg in args:
                parts.append(f"${len(arg.encode())}\r\n{arg}\r\n".encode())
            sock.sendall(b"".join(parts))
            reply = sock.recv(256)
            if reply.startswith(b"-"):
                raise RuntimeError(f"redis {args[0]}: {reply.decode(errors='replace').strip()}")

    # the server
    def start_server(self) -> None:
        if not self.token:
            tokens = self.work / "tokens.txt"
            tokens.unlink(missing_ok=True)
            self.token = self.recsvc("token", "create", "--name", "chaos-load",
                                     "--tokens-file", str(tokens)).stdout.strip()
        self.server_port = free_port()
        log = open(self.work / f"server-{self.server_port}.log", "wb")  # noqa: SIM115
        self.server = subprocess.Popen(
            [sys.executable, "-m", "recsvc.cli", "serve", "--store", self.store_url,
             "--port", str(self.server_port), "--workers", str(self.workers),
             "--tokens-file", str(self.work / "tokens.txt"), "--grace", "5",
             *self.extra_serve_args],
            stdout=log, stderr=log, env=self.env(), cwd=ROOT,
        )
        self.wait_serving()

    def wait_serving(self, timeout: float = 60.0) -> None:
        """Until health says SERVING on several fresh connections (so every worker is up)."""
        deadline = time.monotonic() + timeout
        good = 0
        while time.monotonic() < deadline:
            assert self.server is not None
            if self.server.poll() is not None:
                raise RuntimeError(f"the server exited ({self.server.returncode}); see {self.work}")
            with grpc.insecure_channel(self.target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                    good = good + 1 if reply.status == health_pb2.HealthCheckResponse.SERVING else 0
                except grpc.RpcError:
                    good = 0
            if good >= 4 * self.workers:
                return
            time.sleep(0.05)
        raise RuntimeError("the server did not become SERVING")

    def worker_pids(self) -> list[int]:
        assert self.server is not None
        children: list[int] = []
        for task in Path(f"/proc/{self.server.pid}/task").iterdir():
            try:
                children += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
        # the spawn context's resource tracker is a child too: workers run recsvc
        workers = []
        for pid in children:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" not in cmdline:
                workers.append(pid)
        return sorted(workers)

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.send_signal(signal.SIGTERM)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()

    def close(self) -> None:
        self.stop_server()
        if self.redis is not None and self.redis.poll() is None:
            self.redis.send_signal(signal.SIGCONT)
            self.redis.terminate()
            self.redis.wait(timeout=10)

    def publish(self, bundle: Path) -> None:
        self.recsvc("publish", "--bundle", str(bundle), "--store", self.store_url)


# -- recording ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    sent: float
    done: float
    error: str | None
    source: int | None
    version: str | None

    @property
    def latency(self) -> float:
        return self.done - self.sent


class Calls:
    """Every call of a scenario, as `loadgen.run_phase(..., observer=...)` reports them."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def __call__(self, rpc: str, sent: float, done: float, error: str | None, reply: Any) -> None:
        source = getattr(reply, "source", None) if reply is not None else None
        version = getattr(reply, "model_version", None) if reply is not None else None
        self.calls.append(Call(sent, done, error, source, version))


def p99_ms(calls: Sequence[Call]) -> float | None:
    histogram = loadgen.LatencyHistogram()
    for call in calls:
        if call.error is None:
            histogram.record(call.latency)
    return round(histogram.percentile(99) * 1e3, 2) if histogram.count else None


def recovery_time(calls: Sequence[Call], cleared: float, slow: float) -> float:
    """Seconds from `cleared` to the end of the last abnormal 100 ms window of `calls`.

    A window (by send time) is abnormal when any call in it failed or was answered by the
    fallback, or when more than `SLOW_SHARE` of its calls were slower than `slow` seconds and
    the window next to it is abnormal too: a lone slow window on a busy 2-core machine (other
    processes included) is noise, not an unrecovered service.
    """
    windows: dict[int, list[Call]] = {}
    for call in calls:
        windows.setdefault(int((call.sent - cleared) // WINDOW), []).append(call)
    broken = {i for i, m in windows.items() if any(c.error or c.source == FALLBACK for c in m)}
    slow_ones = {i for i, m in windows.items() if sum(c.latency > slow for c in m) > SLOW_SHARE * len(m)}
    abnormal = broken | {i for i in slow_ones if {i - 1, i + 1} & (slow_ones | broken)}
    if not abnormal:
        return 0.0
    last_bad = max(max(c.done for c in windows[i]) for i in abnormal)
    return max(0.0, last_bad - cleared)


# -- running one scenario -----------------------------------------------------------------------
Action = tuple[float, str, Callable[[], None]]  # (seconds after the start, mark, what to do)


@dataclass
class Timing:
    """Phase lengths in seconds (the test uses shorter ones)."""

    warmup: float = 2.0
    baseline: float = 5.0
    fault: float = 3.0
    after: float = 8.0
    concurrency: int = 16


def run_load(lab: Lab, actions: Sequence[Action], duration: float, timing: Timing,
             retries: bool, tail: float | None = None) -> tuple[Calls, dict[str, float]]:
    """Steady load for `duration` seconds while `actions` run in a thread at their times.

    The load goes on while actions are still running (a slow publish on a busy machine), and
    for at least `tail` seconds (default `timing.after`) after the last one finished.
    """
    tail = timing.after if tail is None else tail
    calls = Calls()
    marks: dict[str, float] = {}
    errors: list[BaseException] = []

    async def main() -> None:
        config = loadgen.LoadConfig(target=lab.target, concurrency=timing.concurrency,
                                    security=ClientSecurity(token=lab.token), retries=retries,
                                    duration=duration, warmup=0.0)
        channels = config.open_channels()
        try:
            stubs = [pb_grpc.RecommenderStub(c) for c in channels]
            health = [health_pb2_grpc.HealthStub(c) for c in channels]
            ids = loadgen.load_ids(str(lab.bundles[0]))
            pool = loadgen.build_pool("Recommend", stubs, health, ids, k=10, timeout=2.0,
                                      metadata=config.security.metadata(), size=5000)
            started = time.perf_counter()
            marks["start"] = started

            def act() -> None:
                try:
                    for at, mark, action in actions:
                        time.sleep(max(0.0, started + at - time.perf_counter()))
                        marks[mark + ":begin"] = time.perf_counter()
                        action()
                        marks[mark] = time.perf_counter()
                except BaseException as exc:  # noqa: BLE001 - reported after the load
                    errors.append(exc)
                finally:
                    marks["actions_done"] = time.perf_counter()

            thread = threading.Thread(target=act, name="chaos-actions")
            thread.start()
            await loadgen.run_phase("Recommend", pool, duration, 0.0,
                                    concurrency=timing.concurrency, observer=calls)
            while "actions_done" not in marks or time.perf_counter() < marks["actions_done"] + tail:
                await loadgen.run_phase("Recommend", pool, 0.5, 0.0,
                                        concurrency=timing.concurrency, observer=calls)
            await asyncio.to_thread(thread.join)
        finally:
            for channel in channels:
                await channel.close()

    asyncio.run(main())
    if errors:
        raise errors[0]
    return calls, marks


def summarise(name: str, calls: Calls, marks: dict[str, float], fault_start: str, fault_end: str,
              timing: Timing, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The figures of one scenario (see the module docstring)."""
    every = calls.calls
    start, cleared = marks[fault_start + ":begin"], marks[fault_end]
    baseline = [c for c in every if marks["start"] + timing.warmup <= c.sent < start]
    during = [c for c in every if start <= c.sent < cleared]
    failed: dict[str, int] = {}
    for call in every:
        if call.error is not None:
            failed[call.error] = failed.get(call.error, 0) + 1
    base_p99 = p99_ms(baseline) or 1.0
    slow = max(5 * base_p99 / 1e3, SLOW_FLOOR)
    recovery = recovery_time([c for c in every if c.sent >= start], cleared, slow)
    result = {
        "scenario": name,
        "fault": TITLES[name],
        "requests_sent": len(every),
        "requests_ok": sum(c.error is None for c in every),
        "failed": dict(sorted(failed.items())),
        "failed_total": sum(failed.values()),
        "fallback": sum(c.source == FALLBACK for c in every),
        "fault_seconds": round(cleared - start, 3),
        "requests_during_fault": len(during),
        "p99_ms_baseline": p99_ms(baseline),
        "p99_ms_during_fault": p99_ms(during),
        "max_ms_during_fault": round(max((c.latency for c in during), default=0.0) * 1e3, 2),
        "recovery_s": round(recovery, 3),
        "p99_ms_after": p99_ms([c for c in every if c.sent >= cleared + recovery]),
        "slow_threshold_ms": round(slow * 1e3, 1),
    }
    result.update(extra or {})
    return result


# -- the scenarios ------------------------------------------------------------------------------
def scenario_a(lab: Lab, timing: Timing) -> dict[str, Any]:
    def restart() -> None:
        lab.start_redis()

    t0 = timing.warmup + timing.baseline
    actions = [(t0, "kill", lab.kill_redis), (t0 + timing.fault, "restart", restart)]
    calls, marks = run_load(lab, actions, t0 + timing.fault + timing.after, timing, retries=False)
    return summarise("a", calls, marks, "kill", "restart", timing)


def scenario_b(lab: Lab, timing: Timing) -> dict[str, Any]:
    t0 = timing.warmup + timing.baseline
    actions = [(t0, "pause", lambda: lab.signal_redis(signal.SIGSTOP)),
               (t0 + timing.fault, "resume", lambda: lab.signal_redis(signal.SIGCONT))]
    calls, marks = run_load(lab, actions, t0 + timing.fault + timing.after, timing, retries=False)
    return summarise("b", calls, marks, "pause", "resume", timing)


def scenario_b2(lab: Lab, timing: Timing) -> dict[str, Any]:
    stop = threading.Event()

    def slow_down() -> None:
        def loop() -> None:
            while not stop.is_set():
                lab.redis_command("DEBUG", "SLEEP", "0.05")
                time.sleep(0.01)

        threading.Thread(target=loop, daemon=True).start()

    def back_to_normal() -> None:
        stop.set()
        time.sleep(0.06)

    t0 = timing.warmup + timing.baseline
    actions = [(t0, "slow", slow_down), (t0 + timing.fault, "normal", back_to_normal)]
    calls, marks = run_load(lab, actions, t0 + timing.fault + timing.after, timing, retries=False)
    return summarise("b2", calls, marks, "slow", "normal", timing)


def scenario_c(lab: Lab, timing: Timing) -> dict[str, Any]:
    from recsvc.bundle import Bundle

    old, new = Bundle(lab.bundles[0]).version, Bundle(lab.bundles[1]).version
    marks_seen: dict[str, float] = {}

    def publish() -> None:
        lab.publish(lab.bundles[1])
        marks_seen["published"] = time.perf_counter()

    def settle() -> None:  # serve the new version for `timing.fault` seconds before rolling back
        time.sleep(max(0.0, marks_seen["published"] + timing.fault - time.perf_counter()))

    t0 = timing.warmup + timing.baseline
    actions = [
        (t0, "publish", publish),
        (t0, "settle", settle),
        (t0, "rollback", lambda: lab.recsvc("rollback", "--store", lab.store_url, "--to", old)),
    ]
    duration = t0 + timing.fault + timing.after + 4.0  # a publish takes a while
    calls, marks = run_load(lab, actions, duration, timing, retries=False)

    def switched(after: float, until: float, version: str) -> float | None:
        """Seconds from `after` until the last answer (sent before `until`) from another
        version than `version`; None when no answer from `version` came in that time."""
        window = [c for c in calls.calls if after <= c.sent < until and c.error is None]
        if not any(c.version == version for c in window):
            return None
        stale = [c.done for c in window if c.version != version]
        return round(max(0.0, max(stale, default=after) - after), 3)

    end = max(c.sent for c in calls.calls) + 1.0
    result = summarise("c", calls, marks, "publish", "rollback", timing, {
        "publish_seconds": round(marks["publish"] - marks["publish:begin"], 3),
        "switch_to_new_s": switched(marks["publish"], marks["rollback:begin"], new),
        "switch_back_s": switched(marks["rollback"], end, old),
        "versions_seen": sorted({c.version for c in calls.calls if c.version}),
    })
    # recovery here: until every answer comes from the rolled-back-to version
    result["recovery_s"] = result["switch_back_s"]
    return result


def scenario_d(lab: Lab, timing: Timing, retries: bool = True) -> dict[str, Any]:
    killed: dict[str, int] = {}

    def kill_worker() -> None:
        victim = lab.worker_pids()[0]
        killed["pid"] = victim
        os.kill(victim, signal.SIGKILL)

    def replaced() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = lab.worker_pids()
            if len(pids) == lab.workers and killed["pid"] not in pids:
                return
            time.sleep(0.02)

    t0 = timing.warmup + timing.baseline
    actions = [(t0, "kill", kill_worker), (t0 + 0.01, "respawned", replaced)]
    calls, marks = run_load(lab, actions, t0 + timing.fault + timing.after, timing, retries=retries)
    name = "d" if retries else "d0"
    result = summarise(name, calls, marks, "kill", "respawned", timing, {
        "worker_respawned_s": round(marks["respawned"] - marks["kill"], 3),
        "client_retries": retries,
    })
    return result


def scenario_e(lab: Lab, timing: Timing) -> dict[str, Any]:
    def sigterm() -> None:
        assert lab.server is not None
        lab.server.send_signal(signal.SIGTERM)

    def exited() -> None:
        assert lab.server is not None
        lab.server.wait(timeout=60)

    t0 = timing.warmup + timing.baseline
    actions = [(t0, "sigterm", sigterm), (t0 + 0.001, "exited", exited)]
    calls, marks = run_load(lab, actions, t0 + 4.0, timing, retries=False, tail=1.0)
    at = marks["sigterm:begin"]
    in_flight = [c for c in calls.calls if c.sent < at <= c.done]
    after = [c for c in calls.calls if c.sent >= at]
    failed_in_flight: dict[str, int] = {}
    for call in in_flight:
        if call.error is not None:
            failed_in_flight[call.error] = failed_in_flight.get(call.error, 0) + 1
    refused: dict[str, int] = {}
    for call in after:
        key = call.error or "OK"
        refused[key] = refused.get(key, 0) + 1
    before = [c for c in calls.calls if c.sent < at]
    refusals = [c.sent for c in after if c.error is not None]
    assert lab.server is not None
    return {
        "scenario": "e",
        "fault": TITLES["e"],
        "requests_sent": len(calls.calls),
        "requests_sent_before_sigterm": len(before),
        "failed_before_sigterm": sum(c.error is not None for c in before),
        "in_flight_at_sigterm": len(in_flight),
        "in_flight_failed": dict(sorted(failed_in_flight.items())),
        "in_flight_max_ms": round(max((c.latency for c in in_flight), default=0.0) * 1e3, 2),
        "sent_after_sigterm": dict(sorted(refused.items())),
        "fallback": sum(c.source == FALLBACK for c in calls.calls),
        "p99_ms_baseline": p99_ms([c for c in before if c.sent >= marks["start"] + timing.warmup]),
        "p99_ms_during_fault": p99_ms(in_flight),
        "drain_s": round(marks["exited"] - at, 3),
        "first_refusal_after_s": round(min(refusals) - at, 3) if refusals else None,
        "exit_code": lab.server.returncode,
    }


def target_met(result: dict[str, Any]) -> bool:
    if result["scenario"] == "e":
        return not result["in_flight_failed"] and result["failed_before_sigterm"] == 0 and result["exit_code"] == 0
    if result["scenario"] == "d0":
        return True  # shown for contrast: no target without client retries
    return result["failed_total"] == 0


# -- whole runs ---------------------------------------------------------------------------------
def make_bundles(root: Path, quick: bool) -> list[Path]:
    """Two versions of a synthetic store (the second for the publish scenario)."""
    from benchmarks.publish import build_bundle

    users, items = (2_000, 500) if quick else (50_000, 5_000)
    first = build_bundle(root / "v1", users, items, 100, 8.0, 20, 16, seed=1)
    time.sleep(1.1)  # distinct version ids (they carry the time)
    second = build_bundle(root / "v2", users, items, 100, 8.0, 20, 16, seed=2)
    return [first.path, second.path]


RUNNERS: dict[str, Callable[[Lab, Timing], dict[str, Any]]] = {
    "a": scenario_a,
    "b": scenario_b,
    "b2": scenario_b2,
    "c": scenario_c,
    "d": scenario_d,
    "d0": lambda lab, timing: scenario_d(lab, timing, retries=False),
    "e": scenario_e,
}


def run_all(work: Path, bundles: list[Path], only: Sequence[str], timing: Timing,
            progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    lab = Lab(work, bundles)
    results = []
    try:
        lab.start_redis()
        lab.publish(bundles[0])
        lab.start_server()
        for name in only:
            if lab.server is None or lab.server.poll() is not None:
                lab.start_server()
            lab.wait_serving()
            if name == "c":  # start from bundles[0] again
                from recsvc.bundle import Bundle

                lab.recsvc("rollback", "--store", lab.store_url, "--to", Bundle(bundles[0]).version, check=False)
                time.sleep(1.5)
            progress(f"chaos {name}: {TITLES[name]} ...")
            result = RUNNERS[name](lab, timing)
            result["target_met"] = target_met(result)
            results.append(result)
            progress("  " + row(result))
            time.sleep(1.0)
    finally:
        lab.close()
    return results


def row(result: dict[str, Any]) -> str:
    if result["scenario"] == "e":
        return (f"sent {result['requests_sent']}, in flight at SIGTERM {result['in_flight_at_sigterm']} "
                f"(failed {sum(result['in_flight_failed'].values())}), drain {result['drain_s']} s, "
                f"after SIGTERM {result['sent_after_sigterm']}")
    return (f"sent {result['requests_sent']}, failed {result['failed'] or 0}, fallback "
            f"{result['fallback']}, p99 {result['p99_ms_baseline']} -> {result['p99_ms_during_fault']} ms, "
            f"recovery {result['recovery_s']} s")


def table(results: Sequence[dict[str, Any]]) -> str:
    """The Markdown table of docs/security.md."""
    lines = [
        "| fault | requests | failed | fallback | p99 before / during fault | recovery | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r["scenario"] == "e":
            failed = sum(r["in_flight_failed"].values())
            lines.append(
                f"| ({r['scenario']}) {r['fault']} | {r['requests_sent_before_sigterm']} before it, "
                f"{r['in_flight_at_sigterm']} in flight "
                f"| {failed} of in-flight | {r['fallback']} | {r['p99_ms_baseline']} / {r['p99_ms_during_fault']} ms "
                f"| drained in {r['drain_s']} s | {'met' if r['target_met'] else 'MISSED'} |"
            )
            continue
        failed_text = ", ".join(f"{k} {v}" for k, v in r["failed"].items()) or "0"
        lines.append(
            f"| ({r['scenario']}) {r['fault']} | {r['requests_sent']} | {failed_text} | {r['fallback']} "
            f"| {r['p99_ms_baseline']} / {r['p99_ms_during_fault']} ms | {r['recovery_s']} s "
            f"| {'n/a (contrast)' if r['scenario'] == 'd0' else 'met' if r['target_met'] else 'MISSED'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--quick", action="store_true", help="short phases and a small bundle")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--workdir", default=None, help="where redis, bundles and logs go (kept)")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        print(f"chaos: unknown scenario(s) {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if "e" in only:  # SIGTERM ends the server: run it last
        only = [s for s in only if s != "e"] + ["e"]
    timing = Timing(baseline=3.0, after=4.0, concurrency=8) if args.quick else Timing()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="recsvc-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    bundles = make_bundles(work / "bundles", args.quick)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    results = run_all(work, bundles, only, timing)
    from recsvc.bundle import Bundle
    from recsvc.commands.bench import environment, write_json

    first = Bundle(bundles[0])
    output = {
        "benchmark": "chaos",
        **environment(),
        "load_average_at_start": load_at_start,
        "setup": {
            "server": "recsvc serve --store redis://... --workers 2 --tokens-file ... (auth on)",
            "load": f"recsvc.loadgen closed loop, Recommend, concurrency {timing.concurrency}, "
                    "k=10, 2 s deadline, bearer token",
            "client_retries": "only in (d): recsvc.client.RETRY_POLICY (UNAVAILABLE, "
                              f"{RETRY_POLICY['methodConfig'][0]['retryPolicy']['maxAttempts']} attempts)",
            "bundle": {"users": len(first.users), "items": len(first.items)},
            "timing_s": {"warmup": timing.warmup, "baseline": timing.baseline, "fault": timing.fault,
                         "after": timing.after},
            "recovery": "fault cleared -> end of the last abnormal 100 ms window of calls "
                        "(a failed or FALLBACK answer, or two windows in a row with > 5% of calls "
                        "slower than max(5 x baseline p99, 100 ms)); (c): until every answer has "
                        "the rolled-back-to version",
        },
        "targets": "zero failed Recommend calls in a-d; in e every in-flight call finishes",
        "scenarios": results,
        "all_targets_met": all(r["target_met"] for r in results),
    }
    write_json(args.output, output)
    print(table(results))
    print(f"results written to {args.output}")
    return 0 if output["all_targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
