"""An asyncio gRPC load generator for `recsvc.v1.Recommender` (what `recsvc bench serve` runs).

Two ways to apply load:

- closed loop (`concurrency` N): N workers each send a request, wait for the answer, send the
  next. Throughput is what the server sustains with N calls in flight; latency is measured from
  the actual send.
- open loop (`rate` R): requests are scheduled at fixed intended times t0 + i / R whether or
  not earlier ones have come back, and latency is measured from the *intended* send time. When
  the server (or this generator) falls behind, the queueing shows in the latency instead of
  silently lowering the request rate ("coordinated omission"); an intended send skipped at
  the outstanding-call cap counts as an error (`NOT_SENT`), never as a missing sample.

What a phase reports, over its measured window (warm-up excluded):

- requests/s: successful answers that *arrived* inside the window, whenever they were sent
  (throughput; an open-loop run against a slower server reports what the server sustained,
  not the offered rate);
- latency percentiles: every call *sent* inside the window, failed ones included at the time
  they failed (a call that times out after 2 s is in p99.9, not left out), with the answers
  that came back after the window closed;
- errors by status code name, and per second the answers and errors that arrived in it.

Every run measures the health service's `Check` RPC first, the same way, as the floor: the
requests/s that gRPC and Python allow on this machine for a call that does no work. Each RPC's
requests/s is reported as a ratio to that floor. Latency goes into `LatencyHistogram`, an
HDR-style log-bucketed histogram written here (1 µs .. 60 s, buckets 1% wide) rather than the
`hdrhistogram` package: ~80 lines, no compiled dependency, sparse and mergeable across phases
and seconds, JSON-serialisable, and its error bound is tested against numpy.

Requests reuse a pool of prebuilt protobuf messages (random users / items drawn once) so the
generator spends its CPU on gRPC, not on building messages; its own CPU time over wall time is
reported per phase, because on a 2-core machine it competes with the server.

`RecordEvent` and `realtime` (a visit: each RecordEvent followed by a Recommend for the same
user, so Recommend takes the real-time path: read the new events, fold them in, re-rank) write
real-time events into the server's store (they expire with the store's event lists): run them
against a test store, not a shop's live one.

Valid ids: see `load_ids` (a file of ids, a bundle directory, or a feature-store URL). Without
them, users are synthetic (unknown to the model, so Recommend measures the cold-start path,
which the result says) and items are harvested from the server's Popular and SimilarItems.

Security: with `LoadConfig.token` (`--token` / `$RECSVC_TOKEN`) every call carries
`authorization: Bearer <token>` (the health floor does not: load balancers call it without
one); `tls_ca` / `tls_cert` / `tls_key` connect with TLS or mutual TLS (`recsvc.client`).
`retries` turns on the client retry policy we recommend to storefronts (`recsvc.client`).

Each answer's `source` is counted per phase (how many came from the fallback cache), and
`run_phase(..., observer=...)` hands every call to a callback as it finishes (the chaos
benchmark uses it to time faults).

Imports only grpc, numpy, the generated stubs and `recsvc` helpers: never `serving` or
`training`.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recsvc.client import ClientSecurity, retry_options
from recsvc.errors import InvalidInput, NotFound
from recsvc.ids import read_id_lines
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc

RPCS = ("Recommend", "SimilarItems", "CrossSell", "BuyAgain", "Popular", "RecordEvent")
# A shopper's visit: each RecordEvent is followed by a Recommend for the same user, so the
# Recommend calls take the real-time path (read the new events, fold them in, re-rank) that
# "Recommend" alone (users without events) never measures. Writes events into the store.
REALTIME = "realtime"
CHOICES = (*RPCS, "mix", REALTIME)
# Shares of event types a shop's visitors record (views dominate; purchases are rare).
EVENT_SHARES = {pb.VIEW: 0.80, pb.CART: 0.15, pb.PURCHASE: 0.05}
FLOOR = "Check"
# The mix: a storefront's share of calls per RPC (product pages dominate; cart and home pages
# follow). Used by `--rpc mix`; the result also breaks the mix down per RPC.
MIX_WEIGHTS = {"Recommend": 0.30, "SimilarItems": 0.30, "CrossSell": 0.15, "BuyAgain": 0.10, "Popular": 0.15}
REQUEST_POOL = 20_000  # prebuilt requests per RPC, cycled through
MAX_OUTSTANDING = 10_000  # open loop: calls in flight at most; a send beyond it is NOT_SENT
MAX_CART = 3  # CrossSell carts hold 1..MAX_CART items


# -- histogram --------------------------------------------------------------------------------
class LatencyHistogram:
    """Latencies in log-spaced buckets: relative error at most `precision` from 1 µs to 60 s.

    Bucket i holds values in [base^i, base^(i+1)) µs with base = 1 + precision; a percentile is
    reported as its bucket's upper bound (never below the true value, at most `precision`
    above), clipped to the exact minimum and maximum. Values outside the range are clamped and
    counted in `clamped`. Sparse: only buckets that were hit are stored.
    """

    LOWEST_US = 1.0
    HIGHEST_US = 60e6

    def __init__(self, precision: float = 0.01) -> None:
        if not 0.0 < precision < 1.0:
            raise InvalidInput("precision", f"must be between 0 and 1, got {precision}")
        self.precision = precision
        self._log_base = math.log1p(precision)
        self._top = int(math.log(self.HIGHEST_US / self.LOWEST_US) / self._log_base)
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0.0  # seconds, for the mean
        self.min = math.inf
        self.max = 0.0
        self.clamped = 0

    def record(self, seconds: float) -> None:
        """Add one latency (seconds)."""
        micros = seconds * 1e6
        if micros < self.LOWEST_US:
            index = 0
            self.clamped += micros < 0
        else:
            index = int(math.log(micros / self.LOWEST_US) / self._log_base)
            if index > self._top:
                index = self._top
                self.clamped += 1
        self.counts[index] = self.counts.get(index, 0) + 1
        self.count += 1
        self.total += seconds
        if seconds < self.min:
            self.min = seconds
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: LatencyHistogram) -> None:
        """Add another histogram's counts (same precision) into this one."""
        if other.precision != self.precision:
            raise InvalidInput("precision", "cannot merge histograms of different precision")
        for index, n in other.counts.items():
            self.counts[index] = self.counts.get(index, 0) + n
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.clamped += other.clamped

    def upper_bound(self, index: int) -> float:
        """Upper edge of bucket `index`, in seconds."""
        return self.LOWEST_US * math.exp((index + 1) * self._log_base) / 1e6

    def percentile(self, q: float) -> float:
        """The latency (seconds) at or below which `q` percent of the values lie (0 < q <= 100).

        Rank definition: the smallest recorded value whose cumulative count reaches
        ceil(q / 100 * count), as numpy's `percentile(..., method="inverted_cdf")`.
        Returns NaN for an empty histogram.
        """
        if self.count == 0:
            return math.nan
        if not 0.0 < q <= 100.0:
            raise InvalidInput("q", f"must be in (0, 100], got {q}")
        rank = max(1, math.ceil(q / 100.0 * self.count - 1e-9))
        seen = 0
        for index in sorted(self.counts):
            seen += self.counts[index]
            if seen >= rank:
                if index == self._top:  # the overflow bucket: only the maximum is known
                    return self.max
                return min(max(self.upper_bound(index), self.min), self.max)
        return self.max

    def summary_ms(self) -> dict[str, float | None]:
        """p50 / p90 / p99 / p99.9 / max / mean in milliseconds (None when empty)."""
        if self.count == 0:
            return {k: None for k in ("p50", "p90", "p99", "p99.9", "max", "mean")}
        out: dict[str, float | None] = {
            name: round(self.percentile(q) * 1e3, 4)
            for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9))
        }
        out["max"] = round(self.max * 1e3, 4)
        out["mean"] = round(self.total / self.count * 1e3, 4)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "lowest_us": self.LOWEST_US,
            "count": self.count,
            "clamped": self.clamped,
            "buckets": [[i, self.counts[i]] for i in sorted(self.counts)],
        }


# -- request inputs ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Ids:
    """Ids to put in requests, and where they came from."""

    users: tuple[str, ...]
    items: tuple[str, ...]
    source: str
    users_known: bool = True  # False: synthetic users the model does not know (cold start)
    categories: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()


def _read_id_table(path: Path, column: str) -> list[str] | None:
    """Column `column` of a CSV / Parquet file, or None when the file has no such column."""
    import pandas as pd

    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        if column not in pq.read_schema(path).names:
            return None
        return [str(v) for v in pd.read_parquet(path, columns=[column])[column].dropna().unique()]
    with open(path, encoding="utf-8-sig") as handle:
        header = handle.readline().strip().split(",")
    if column not in header:
        return None
    frame = pd.read_csv(path, usecols=[column], dtype=str, encoding="utf-8-sig")
    return [str(v) for v in frame[column].dropna().unique()]


def _ids_from_bundle(path: Path) -> Ids:
    from recsvc.bundle import Bundle

    bundle = Bundle(path)
    return Ids(
        users=tuple(bundle.users.ids),
        items=tuple(bundle.items.ids),
        source=f"bundle {bundle.version}",
        categories=tuple(sorted({c for c in bundle.catalog.category if c})),
    )


def _sample_store_users(store: Any, version: str, limit: int) -> list[str]:
    """Up to `limit` user ids of `version`, sampled from a Redis store's user hashes.

    The FeatureStore protocol reads users by id and has no listing call, so this reaches into
    the Redis layout (`recsvc.store.redis`: users hashed into USER_BUCKETS hashes per version).
    """
    from recsvc.store.redis import USER_BUCKETS, RedisStore

    if not isinstance(store, RedisStore):
        raise InvalidInput(
            "--users-from", f"cannot list the users of {store.url}: give a bundle or a file of ids"
        )
    per_bucket = max(1, math.ceil(limit / USER_BUCKETS))
    pipe = store.client.pipeline(transaction=False)
    for bucket in range(USER_BUCKETS):
        pipe.hrandfield(store._users(version, bucket), per_bucket)
    users: list[str] = []
    for reply in pipe.execute():
        users.extend(v.decode() if isinstance(v, bytes) else str(v) for v in reply or ())
    return users[:limit]


def _ids_from_store(url: str, max_users: int) -> Ids:
    from recsvc.store import open_store

    store = open_store(url)
    try:
        if getattr(store, "id_hasher", None) is not None:
            raise InvalidInput(
                "--users-from",
                f"{store.url} keeps customer ids as keyed hashes: give a bundle or a file of ids",
            )
        version = store.current_version()
        if version is None:
            raise NotFound(f"{store.url}: no model version published yet")
        catalog = store.item_catalog(version)
        users = _sample_store_users(store, version, max_users)
        segments = store.popularity_groups(version, "segment")
    finally:
        store.close()
    return Ids(
        users=tuple(users),
        items=tuple(catalog.ids.ids),
        source=f"store {store.url} version {version}",
        categories=tuple(sorted({str(c) for c in catalog.category if c})),
        segments=tuple(segments),
    )


def load_ids(source: str, max_users: int = 1_000_000) -> Ids:
    """Users and items for requests, from `source`:

    - a feature-store URL (`redis://...`): the current version's catalogue and a random sample
      of its users;
    - a bundle directory (or a bundles/ root with `latest`): all its users and items;
    - a CSV or Parquet file with a `user_id` and/or `item_id` column (e.g. the shop's event
      log), or a text file of user ids, one a line.

    Items may be empty (a file of user ids): they are then harvested from the server.
    Raises InvalidInput (field `--users-from`) for a missing or unusable source.
    """
    if "://" in source:
        try:
            return _ids_from_store(source, max_users)
        except InvalidInput as exc:  # the store's checks name its own flag
            raise InvalidInput("--users-from", exc.reason) from None
    path = Path(source)
    if not path.exists():
        raise InvalidInput("--users-from", f"{source} does not exist")
    if path.is_dir():
        return _ids_from_bundle(path)
    if path.suffix in (".csv", ".parquet"):
        users = _read_id_table(path, "user_id")
        items = _read_id_table(path, "item_id")
        if users is None and items is None:
            raise InvalidInput("--users-from", f"{source} has neither a user_id nor an item_id column")
        return Ids(tuple(users or ()), tuple(items or ()), f"file {path.name}")
    users = read_id_lines(path, "--users-from")
    return Ids(tuple(users), (), f"file {path.name}")


async def harvest_items(
    stub: pb_grpc.RecommenderStub,
    max_k: int,
    limit: int = 2000,
    metadata: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """Item ids the server knows: its global and trending lists, widened through SimilarItems."""
    found: dict[str, None] = {}
    for trending in (False, True):
        request = pb.PopularRequest(k=max_k, trending=trending)
        reply = await stub.Popular(request, timeout=5, metadata=metadata)
        found.update((item.item_id, None) for item in reply.items)
    frontier = list(found)
    while frontier and len(found) < limit:
        item = frontier.pop(0)
        try:
            reply = await stub.SimilarItems(
                pb.SimilarItemsRequest(item_id=item, k=max_k), timeout=5, metadata=metadata
            )
        except grpc.aio.AioRpcError:
            continue
        for scored in reply.items:
            if scored.item_id not in found:
                found[scored.item_id] = None
                frontier.append(scored.item_id)
    return list(found)[:limit]


# -- calls ------------------------------------------------------------------------------------
Call = Callable[[], Awaitable[Any]]


@dataclass
class CallPool:
    """Prebuilt calls of one RPC (or the mix); `next()` gives (rpc name, call) round robin."""

    names: list[str]
    calls: list[Call]
    position: int = 0

    def next(self) -> tuple[str, Call]:
        index = self.position
        self.position = (index + 1) % len(self.calls)
        return self.names[index], self.calls[index]


def _requests(rpc: str, ids: Ids, k: int, rng: random.Random, n: int) -> list[Any]:
    """n random requests of one RPC."""
    if rpc in ("Recommend", "BuyAgain", "RecordEvent") and not ids.users:
        raise InvalidInput("--users-from", f"{rpc} needs user ids")
    if rpc in ("SimilarItems", "CrossSell", "RecordEvent") and not ids.items:
        raise InvalidInput("--users-from", f"{rpc} needs item ids")
    out: list[Any] = []
    for _ in range(n):
        if rpc == "Recommend":
            out.append(pb.RecommendRequest(user_id=rng.choice(ids.users), k=k))
        elif rpc == "BuyAgain":
            out.append(pb.BuyAgainRequest(user_id=rng.choice(ids.users), k=k))
        elif rpc == "SimilarItems":
            out.append(pb.SimilarItemsRequest(item_id=rng.choice(ids.items), k=k))
        elif rpc == "CrossSell":
            cart = rng.sample(ids.items, min(len(ids.items), rng.randint(1, MAX_CART)))
            out.append(pb.CrossSellRequest(item_ids=cart, k=k))
        elif rpc == "RecordEvent":  # no timestamp_ms: the server's clock, a new event each call
            kind = rng.choices(list(EVENT_SHARES), weights=list(EVENT_SHARES.values()))[0]
            out.append(pb.RecordEventRequest(
                user_id=rng.choice(ids.users), item_id=rng.choice(ids.items), event_type=kind))
        elif rpc == "Popular":
            # half global / trending lists, half one category's list when categories are known
            category = rng.choice(ids.categories) if ids.categories and rng.random() < 0.5 else ""
            out.append(pb.PopularRequest(k=k, category=category, trending=rng.random() < 0.25))
        else:
            raise InvalidInput("--rpc", f"unknown RPC '{rpc}' (one of {', '.join(CHOICES)})")
    return out


def _visits(ids: Ids, k: int, rng: random.Random, size: int) -> tuple[list[str], list[Any]]:
    """`size` calls of shoppers' visits: RecordEvent then Recommend for one user, repeated.

    The users are a sample of at most size / 8 (so each comes back several times in a pool,
    as a shopper browses on), their events name random known items."""
    events = _requests("RecordEvent", ids, k, rng, size // 2)
    shoppers = rng.sample(list(ids.users), min(len(ids.users), max(1, size // 8)))
    names: list[str] = []
    requests: list[Any] = []
    for event in events:
        event.user_id = rng.choice(shoppers)
        names += ["RecordEvent", "Recommend"]
        requests += [event, pb.RecommendRequest(user_id=event.user_id, k=k)]
    return names, requests


def build_pool(
    rpc: str,
    stubs: Sequence[pb_grpc.RecommenderStub],
    health_stubs: Sequence[health_pb2_grpc.HealthStub],
    ids: Ids | None,
    k: int,
    timeout: float,
    seed: int = 0,
    size: int = REQUEST_POOL,
    metadata: Sequence[tuple[str, str]] = (),
) -> CallPool:
    """Prebuilt calls for `rpc` (an RPC name, `mix` or `Check`), spread over the channels.

    metadata: sent with every Recommender call (the bearer token); not with Check.
    """
    rng = random.Random(seed)
    if rpc == FLOOR:
        request = health_pb2.HealthCheckRequest(service="")
        calls: list[Call] = [partial(stub.Check, request, timeout=timeout) for stub in health_stubs]
        return CallPool([FLOOR] * len(calls), calls)
    if ids is None:
        raise InvalidInput("--users-from", "no ids to build requests from")
    if rpc == REALTIME:
        names, requests = _visits(ids, k, rng, size)
    elif rpc == "mix" or rpc in RPCS:
        names = (rng.choices(list(MIX_WEIGHTS), weights=list(MIX_WEIGHTS.values()), k=size)
                 if rpc == "mix" else [rpc] * size)
        # sorted: the same seed draws the same requests whatever the set's order
        by_rpc = {name: iter(_requests(name, ids, k, rng, names.count(name)))
                  for name in sorted(set(names))}
        requests = [next(by_rpc[name]) for name in names]
    else:
        raise InvalidInput("--rpc", f"unknown RPC '{rpc}' (one of {', '.join(CHOICES)})")
    calls = []
    for i, (name, request) in enumerate(zip(names, requests, strict=True)):
        method = getattr(stubs[i % len(stubs)], name)
        if metadata:
            calls.append(partial(method, request, timeout=timeout, metadata=metadata))
        else:
            calls.append(partial(method, request, timeout=timeout))
    return CallPool(names, calls)


# -- measuring one phase ----------------------------------------------------------------------
@dataclass
class PhaseResult:
    """What one phase (one RPC or the mix, or the Check floor) measured."""

    name: str
    mode: str
    seconds: float  # measured window (warm-up excluded)
    latency: LatencyHistogram  # every call sent in the window, failed ones included
    errors: dict[str, int]  # status code name -> count (calls sent in the window)
    per_rpc: dict[str, LatencyHistogram]  # as `latency`, per RPC
    per_second: list[dict[str, float | None]]
    generator_cpu_seconds: float
    server_cpu_seconds: float | None
    ok: int = 0  # successful calls sent in the window
    arrived: int = 0  # successful answers that arrived in the window (requests/s)
    ok_by_rpc: dict[str, int] = field(default_factory=dict)
    arrived_by_rpc: dict[str, int] = field(default_factory=dict)
    max_send_lag: float = 0.0  # open loop: how late the generator sent (seconds)
    send_lag: LatencyHistogram | None = None  # open loop: each send's lag (in every latency)
    not_sent: int = 0  # open loop: intended sends skipped at the outstanding-call cap
    sources: dict[str, int] = field(default_factory=dict)  # answers by source name
    round_rps: list[float] = field(default_factory=list)  # requests/s of each round (rounds > 1)

    def merge(self, other: PhaseResult) -> None:
        """Add a later round of the same phase: counts add up, per-second series continue."""
        if not self.round_rps:
            self.round_rps.append(self.rps)
        self.round_rps.append(other.rps)
        offset = len(self.per_second)
        self.per_second.extend({**second, "t": offset + int(second["t"] or 0)} for second in other.per_second)
        self.seconds += other.seconds
        self.latency.merge(other.latency)
        self.ok += other.ok
        self.arrived += other.arrived
        for mine, theirs in ((self.errors, other.errors), (self.sources, other.sources),
                             (self.ok_by_rpc, other.ok_by_rpc),
                             (self.arrived_by_rpc, other.arrived_by_rpc)):
            for name, count in theirs.items():
                mine[name] = mine.get(name, 0) + count
        for name, hist in other.per_rpc.items():
            if name in self.per_rpc:
                self.per_rpc[name].merge(hist)
            else:
                self.per_rpc[name] = hist
        self.generator_cpu_seconds += other.generator_cpu_seconds
        if self.server_cpu_seconds is not None and other.server_cpu_seconds is not None:
            self.server_cpu_seconds += other.server_cpu_seconds
        self.max_send_lag = max(self.max_send_lag, other.max_send_lag)
        if self.send_lag is not None and other.send_lag is not None:
            self.send_lag.merge(other.send_lag)
        self.not_sent += other.not_sent

    @property
    def rps(self) -> float:
        return self.arrived / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        total = self.ok + sum(self.errors.values())
        out: dict[str, Any] = {
            "name": self.name,
            "mode": self.mode,
            "seconds": round(self.seconds, 3),
            "requests_ok": self.ok,
            "answers_in_window": self.arrived,
            "errors": dict(sorted(self.errors.items())),
            "sources": dict(sorted(self.sources.items())),
            "error_rate": round(sum(self.errors.values()) / total, 6) if total else 0.0,
            "rps": round(self.rps, 1),
            "round_rps": [round(r, 1) for r in self.round_rps],
            "latency_ms": self.latency.summary_ms(),
            "generator": {
                "cpu_seconds": round(self.generator_cpu_seconds, 3),
                "cpu_per_wall": round(self.generator_cpu_seconds / self.seconds, 3)
                if self.seconds
                else None,
                "cpu_us_per_request": round(self.generator_cpu_seconds / total * 1e6, 1)
                if total
                else None,
            },
            "per_second": self.per_second,
            "histogram": self.latency.to_dict(),
        }
        if self.server_cpu_seconds is not None:
            out["server"] = {
                "cpu_seconds": round(self.server_cpu_seconds, 3),
                "cpu_per_wall": round(self.server_cpu_seconds / self.seconds, 3),
                "cpu_us_per_request": round(self.server_cpu_seconds / total * 1e6, 1) if total else None,
            }
        if self.mode == "open":
            out["generator"]["max_send_lag_ms"] = round(self.max_send_lag * 1e3, 3)
            if self.send_lag is not None and self.send_lag.count:
                lag = self.send_lag.summary_ms()
                out["generator"]["send_lag_ms"] = {q: lag[q] for q in ("p50", "p99")}
            out["generator"]["not_sent"] = self.not_sent
        if len(self.per_rpc) > 1:
            out["per_rpc"] = {
                name: {
                    "requests_ok": self.ok_by_rpc.get(name, 0),
                    "rps": round(self.arrived_by_rpc.get(name, 0) / self.seconds, 1)
                    if self.seconds
                    else 0.0,
                    "latency_ms": hist.summary_ms(),
                }
                for name, hist in sorted(self.per_rpc.items())
            }
        return out


def process_tree_cpu(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) used so far by `pids` and their live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    seen: set[int] = set()
    todo = list(pids)
    total = 0.0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            for task in Path(f"/proc/{pid}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
        except (OSError, ValueError):
            continue
    return total


class _Recorder:
    """Collects the answers of one phase: calls sent in its measured window (latency, errors)
    and answers that arrived in it (throughput, the per-second series)."""

    def __init__(self, window_start: float, window_end: float, precision: float) -> None:
        self.start = window_start
        self.end = window_end
        self.precision = precision
        self.latency = LatencyHistogram(precision)
        self.per_rpc: dict[str, LatencyHistogram] = {}
        self.errors: dict[str, int] = {}
        self.sources: dict[str, int] = {}  # answers by `source` (RPCs that have one)
        self.ok = 0
        self.ok_by_rpc: dict[str, int] = {}
        self.arrived = 0
        self.arrived_by_rpc: dict[str, int] = {}
        seconds = max(1, math.ceil(window_end - window_start))
        self.second_ok = [0] * seconds
        self.second_errors = [0] * seconds
        self.second_hist = [LatencyHistogram(precision) for _ in range(seconds)]

    def add(
        self, name: str, sent: float, done: float, error: str | None, source: str | None = None
    ) -> None:
        latency = done - sent
        if self.start <= done < self.end:  # arrived in the window: throughput
            second = min(int(done - self.start), len(self.second_ok) - 1)
            if error is None:
                self.arrived += 1
                self.arrived_by_rpc[name] = self.arrived_by_rpc.get(name, 0) + 1
                self.second_ok[second] += 1
                self.second_hist[second].record(latency)
            else:
                self.second_errors[second] += 1
        if sent < self.start or sent >= self.end:
            return  # warm-up, or sent after the window closed
        self.latency.record(latency)
        hist = self.per_rpc.get(name)
        if hist is None:
            hist = self.per_rpc[name] = LatencyHistogram(self.precision)
        hist.record(latency)
        if error is not None:
            self.errors[error] = self.errors.get(error, 0) + 1
            return
        self.ok += 1
        self.ok_by_rpc[name] = self.ok_by_rpc.get(name, 0) + 1
        if source is not None:
            self.sources[source] = self.sources.get(source, 0) + 1

    def per_second(self) -> list[dict[str, float | None]]:
        return [
            {
                "t": i + 1,
                "ok": self.second_ok[i],
                "errors": self.second_errors[i],
                "p50_ms": round(h.percentile(50) * 1e3, 4) if h.count else None,
                "p99_ms": round(h.percentile(99) * 1e3, 4) if h.count else None,
            }
            for i, h in enumerate(self.second_hist)
        ]


SOURCE_NAMES = {value: name for name, value in pb.Source.items()}
NOT_SENT = "NOT_SENT"  # open loop: an intended send skipped at the outstanding-call cap
# Called for every finished call: (rpc, sent, done, error code name or None, reply or None).
Observer = Callable[[str, float, float, "str | None", Any], None]


async def _invoke(
    pool: CallPool, recorder: _Recorder, sent: float, observer: Observer | None = None
) -> None:
    name, call = pool.next()
    error: str | None = None
    reply: Any = None
    try:
        reply = await call()
    except grpc.aio.AioRpcError as exc:
        error = exc.code().name
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a broken call is counted, not fatal
        error = type(exc).__name__
    done = time.perf_counter()
    source = getattr(reply, "source", None) if reply is not None and name != FLOOR else None
    recorder.add(name, sent, done, error, SOURCE_NAMES.get(source) if source is not None else None)
    if observer is not None:
        observer(name, sent, done, error, reply)


Progress = Callable[[str, float, _Recorder], None]


async def run_phase(
    name: str,
    pool: CallPool,
    duration: float,
    warmup: float,
    concurrency: int = 16,
    rate: float | None = None,
    max_outstanding: int = MAX_OUTSTANDING,
    server_pids: Sequence[int] = (),
    on_tick: Progress | None = None,
    precision: float = 0.01,
    observer: Observer | None = None,
    timeout: float = 2.0,
) -> PhaseResult:
    """Apply load for `warmup + duration` seconds; measure the last `duration` seconds.

    rate: None for closed loop with `concurrency` workers; else open loop at `rate` requests/s
    (at most `max_outstanding` calls in flight; a send beyond that is counted as failed, NOT_SENT,
    with the latency of the calls' deadline `timeout`: the least a caller would have waited).
    The open loop also keeps how late each send left (`send_lag`): timers wake up to about a
    millisecond late, and latency counts from the intended time, so that lag is in it.
    observer: called with every finished call, warm-up included (see `Observer`).
    """
    started = time.perf_counter()
    window_start, window_end = started + warmup, started + warmup + duration
    recorder = _Recorder(window_start, window_end, precision)
    marks: dict[str, tuple[float, float | None]] = {}
    lag = 0.0
    send_lag = LatencyHistogram(precision)  # open loop: how late each send in the window left
    not_sent = 0

    def _server_cpu() -> float | None:
        return process_tree_cpu(server_pids) if server_pids else None

    async def window_marks() -> None:
        # CPU time of this process (all its threads, gRPC's included) and of the server, taken
        # at the window's edges so warm-up and the drain after it are left out.
        for mark, at in (("start", window_start), ("end", window_end)):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            marks[mark] = (time.process_time(), _server_cpu())

    async def ticker() -> None:
        assert on_tick is not None
        while True:
            now = time.perf_counter()
            on_tick(name, now - started, recorder)
            await asyncio.sleep(1.0)


    async def closed_worker() -> None:
        while True:
            sent = time.perf_counter()
            if sent >= window_end:
                return
            await _invoke(pool, recorder, sent, observer)

    async def open_dispatcher() -> None:
        nonlocal lag, not_sent
        assert rate is not None
        interval = 1.0 / rate
        in_flight: set[asyncio.Task[None]] = set()
        i = 0
        while True:
            intended = started + i * interval
            if intended >= window_end:
                break
            now = time.perf_counter()
            if intended > now:
                await asyncio.sleep(intended - now)
                now = time.perf_counter()
            if intended >= window_start:
                lag = max(lag, now - intended)
                send_lag.record(max(0.0, now - intended))
            if len(in_flight) >= max_outstanding:
                if intended >= window_start:
                    not_sent += 1
                    # an error at the deadline, not a missing sample: the queueing shows
                    recorder.add(pool.next()[0], intended, intended + timeout, NOT_SENT)
            else:
                task = asyncio.create_task(_invoke(pool, recorder, intended, observer))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            i += 1
            if i % 64 == 0:
                await asyncio.sleep(0)  # let answers in while catching up
        if in_flight:
            await asyncio.wait(in_flight)

    helpers = [asyncio.create_task(window_marks())]
    if on_tick is not None:
        helpers.append(asyncio.create_task(ticker()))
    try:
        if rate is None:
            await asyncio.gather(*(closed_worker() for _ in range(concurrency)))
        else:
            await open_dispatcher()
        await helpers[0]
    finally:
        for helper in helpers:
            helper.cancel()
    start_cpu, start_server = marks["start"]
    end_cpu, end_server = marks["end"]
    server_cpu = None
    if end_server is not None and start_server is not None:
        server_cpu = end_server - start_server
    return PhaseResult(
        name=name,
        mode="closed" if rate is None else "open",
        seconds=duration,
        latency=recorder.latency,
        ok=recorder.ok,
        arrived=recorder.arrived,
        ok_by_rpc=recorder.ok_by_rpc,
        arrived_by_rpc=recorder.arrived_by_rpc,
        errors=recorder.errors,
        sources=recorder.sources,
        per_rpc=recorder.per_rpc,
        per_second=recorder.per_second(),
        generator_cpu_seconds=end_cpu - start_cpu,
        server_cpu_seconds=server_cpu,
        max_send_lag=lag,
        send_lag=send_lag,
        not_sent=not_sent,
    )


# -- a whole run ------------------------------------------------------------------------------
MAX_CONCURRENCY = 10_000  # calls in flight; each is a coroutine and a slot in the histogram
MAX_RATE = 1_000_000.0  # requests/s offered in open loop


@dataclass(frozen=True)
class LoadConfig:
    """One `recsvc bench serve` run."""

    target: str
    rpcs: tuple[str, ...] = ("Recommend",)
    concurrency: int = 16
    rate: float | None = None
    duration: float = 30.0
    warmup: float = 5.0
    k: int = 10
    timeout: float = 2.0
    connections: int | None = None  # None: one per closed-loop worker (at most 64), 16 open loop
    users_from: str | None = None
    floor: bool = True
    seed: int = 0
    server_pids: tuple[int, ...] = ()
    progress: bool = field(default=False)
    security: ClientSecurity = field(default_factory=ClientSecurity)  # token, TLS
    retries: bool = False  # the recommended client retry policy (UNAVAILABLE, idempotent)
    # Alternate the phases this many times, each for duration / rounds, so that other work on
    # the machine weighs on the floor and the RPCs alike (rounds after the first re-warm for
    # at most a second).
    rounds: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.concurrency <= MAX_CONCURRENCY:
            raise InvalidInput(
                "--concurrency", f"must be between 1 and {MAX_CONCURRENCY}, got {self.concurrency}"
            )
        if self.rate is not None and not (math.isfinite(self.rate) and 0 < self.rate <= MAX_RATE):
            raise InvalidInput("--rate", f"must be above 0 and at most {MAX_RATE:g}, got {self.rate}")
        if not self.rpcs:
            raise InvalidInput("--rpc", f"name at least one RPC (one of {', '.join(CHOICES)})")
        if not (math.isfinite(self.timeout) and self.timeout > 0):
            raise InvalidInput("--timeout", f"must be above 0, got {self.timeout}")
        if not (math.isfinite(self.duration) and self.duration > 0):
            raise InvalidInput("--duration", f"must be above 0, got {self.duration}")
        if self.warmup < 0:
            raise InvalidInput("--warmup", f"must be 0 or more, got {self.warmup}")
        if self.k < 1:
            raise InvalidInput("--k", f"must be at least 1, got {self.k}")
        if self.connections is not None and self.connections < 1:
            raise InvalidInput("--connections", f"must be at least 1, got {self.connections}")
        if self.rounds < 1:
            raise InvalidInput("--rounds", f"must be at least 1, got {self.rounds}")
        for rpc in self.rpcs:
            if rpc not in CHOICES:
                raise InvalidInput("--rpc", f"unknown RPC '{rpc}' (one of {', '.join(CHOICES)})")

    @property
    def channel_count(self) -> int:
        if self.connections is not None:
            return self.connections
        return min(self.concurrency, 64) if self.rate is None else 16

    def open_channels(self) -> list[grpc.aio.Channel]:
        """`channel_count` channels to the target, each on its own connection."""
        # A local subchannel pool per channel: otherwise identical channels share one
        # connection and `--workers N` servers (SO_REUSEPORT spreads connections, not calls)
        # get one worker.
        extra = retry_options() if self.retries else []
        return [
            self.security.aio_channel(
                self.target,
                [("grpc.use_local_subchannel_pool", 1), ("grpc.channel_id", i), *extra],
            )
            for i in range(self.channel_count)
        ]


def _progress_line(name: str, elapsed: float, recorder: _Recorder, warmup: float, total: float) -> None:
    if elapsed < warmup:
        text = f"  {name:<12} warming up {elapsed:4.0f}/{warmup:.0f} s"
    else:
        measured = max(elapsed - warmup, 1e-9)
        errors = sum(recorder.errors.values())
        p99 = recorder.latency.percentile(99) * 1e3 if recorder.latency.count else math.nan
        text = (
            f"  {name:<12} {elapsed - warmup:4.0f}/{total - warmup:.0f} s  "
            f"{recorder.arrived / measured:9,.0f} req/s  p99 {p99:7.2f} ms  errors {errors}"
        )
    sys.stderr.write("\r" + text.ljust(78))
    sys.stderr.flush()


async def _wait_serving(channel: grpc.aio.Channel, timeout: float) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
            last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.aio.AioRpcError as exc:
            last = exc.code().name
        await asyncio.sleep(0.2)
    raise InvalidInput("--target", f"the server is not SERVING after {timeout:.0f}s ({last})")


def _model_info(reply: pb.GetModelInfoResponse) -> dict[str, Any]:
    return {
        "model_version": reply.model_version,
        "created_at": reply.created_at,
        "default_recommender": reply.default_recommender,
        "n_users": reply.n_users,
        "n_items": reply.n_items,
        "segments": list(reply.segments),
        "max_k": reply.max_k,
        "degraded": reply.degraded,
    }


async def run_load(config: LoadConfig, ids: Ids | None = None) -> dict[str, Any]:
    """The Check floor, then each of `config.rpcs`, against one server; a JSON-ready dict."""
    channels = config.open_channels()
    metadata = config.security.metadata()
    try:
        await _wait_serving(channels[0], 30.0)
        stubs = [pb_grpc.RecommenderStub(c) for c in channels]
        health_stubs = [health_pb2_grpc.HealthStub(c) for c in channels]
        info = await stubs[0].GetModelInfo(pb.GetModelInfoRequest(), timeout=5, metadata=metadata)
        if ids is None and config.users_from:
            ids = load_ids(config.users_from)
        ids = await _complete_ids(ids, stubs[0], info, config)
        names = ([FLOOR] if config.floor else []) + list(config.rpcs)
        pools = {
            name: build_pool(
                name, stubs, health_stubs, ids, config.k, config.timeout, config.seed + index,
                metadata=metadata,
            )
            for index, name in enumerate(names)
        }
        measured: dict[str, PhaseResult] = {}
        slice_seconds = config.duration / config.rounds
        for round_index in range(config.rounds):
            warmup = config.warmup if round_index == 0 else min(config.warmup, 1.0)
            for name in names:
                total = warmup + slice_seconds
                label = name if config.rounds == 1 else f"{name} {round_index + 1}/{config.rounds}"

                def tick(
                    _phase: str, elapsed: float, recorder: _Recorder,
                    total: float = total, warmup: float = warmup, label: str = label,
                ) -> None:
                    _progress_line(label, elapsed, recorder, warmup, total)

                result = await run_phase(
                    name,
                    pools[name],
                    slice_seconds,
                    warmup,
                    concurrency=config.concurrency,
                    rate=config.rate,
                    server_pids=config.server_pids,
                    on_tick=tick if config.progress else None,
                    timeout=config.timeout,
                )
                if config.progress:
                    sys.stderr.write("\r" + " " * 78 + "\r")
                if name in measured:
                    measured[name].merge(result)
                else:
                    measured[name] = result
        phases = [measured[name] for name in names]
    finally:
        for channel in channels:
            await channel.close()
    floor = next((p for p in phases if p.name == FLOOR), None)
    out_phases = [p.to_dict() for p in phases]
    ratios: dict[str, float] = {}
    # Open loop offers every phase the same rate: a server that keeps up answers it in each,
    # so a throughput ratio would say nothing of capacity (compare latencies instead).
    if floor is not None and floor.rps > 0 and config.rate is None:
        for phase, result in zip(out_phases, phases, strict=True):
            if phase["name"] != FLOOR:
                phase["rps_vs_floor"] = round(phase["rps"] / floor.rps, 4)
                ratios[phase["name"]] = phase["rps_vs_floor"]
                if len(result.round_rps) > 1:  # the same ratio per round: its spread
                    phase["round_rps_vs_floor"] = [
                        round(r / f, 4) if f else None
                        for r, f in zip(result.round_rps, floor.round_rps, strict=True)
                    ]
    return {
        "target": config.target,
        "config": {
            "mode": "closed" if config.rate is None else "open",
            "concurrency": config.concurrency if config.rate is None else None,
            "rate": config.rate,
            "duration_s": config.duration,
            "warmup_s": config.warmup,
            "rounds": config.rounds,
            "k": config.k,
            "timeout_s": config.timeout,
            "connections": config.channel_count,
            "auth": bool(config.security.token),
            "tls": config.security.uses_tls,
            "retries": config.retries,
            "rpcs": list(config.rpcs),
            "mix_weights": MIX_WEIGHTS if "mix" in config.rpcs else None,
            "request_pool": REQUEST_POOL,  # prebuilt requests per RPC, cycled through
            "max_outstanding": MAX_OUTSTANDING if config.rate is not None else None,
        },
        "ids": {
            "source": ids.source if ids else None,
            "users": len(ids.users) if ids else 0,
            "items": len(ids.items) if ids else 0,
            "users_known": ids.users_known if ids else None,
            # drawn with replacement into the request pool, which is then cycled through
            "choice": f"uniform at random, {REQUEST_POOL:,} requests per RPC cycled",
        },
        "model": _model_info(info),
        "phases": out_phases,
        "rps_vs_floor": ratios,
    }


async def _complete_ids(
    ids: Ids | None, stub: pb_grpc.RecommenderStub, info: pb.GetModelInfoResponse, config: LoadConfig
) -> Ids | None:
    """Fill what the requests need and `ids` lacks: items from the server, synthetic users."""
    needs_users = any(r in ("Recommend", "BuyAgain", "RecordEvent", "mix", REALTIME)
                      for r in config.rpcs)
    needs_items = any(r in ("SimilarItems", "CrossSell", "RecordEvent", "mix", REALTIME)
                      for r in config.rpcs)
    if not needs_users and not needs_items and "Popular" not in config.rpcs:
        return ids
    users = ids.users if ids else ()
    items = ids.items if ids else ()
    source = ids.source if ids else "server"
    known = ids.users_known if ids else True
    if needs_items and not items:
        items = tuple(
            await harvest_items(stub, max(1, info.max_k or 100), metadata=config.security.metadata())
        )
        source += " + items harvested from Popular/SimilarItems"
    if needs_users and not users:
        # Unknown to the model: Recommend answers them from popularity (the cold-start path).
        rng = random.Random(config.seed)
        users = tuple(f"bench-user-{rng.getrandbits(40):010x}" for _ in range(10_000))
        source += " + synthetic users (unknown: cold-start path)"
        known = False
    return Ids(
        users=users,
        items=items,
        source=source,
        users_known=known,
        categories=ids.categories if ids else (),
        segments=tuple(info.segments) or (ids.segments if ids else ()),
    )


def run(config: LoadConfig, ids: Ids | None = None) -> dict[str, Any]:
    """`run_load` in a fresh event loop."""
    return asyncio.run(run_load(config, ids))
