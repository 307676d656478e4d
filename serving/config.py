"""Server configuration: one dataclass, overridden by `RECSVC_SERVE__KEY` variables and flags.

Precedence (last wins): the defaults below, a `[serve]` table in `--config FILE` (TOML),
`RECSVC_SERVE__KEY=value` environment variables, then CLI flags. Unknown keys and wrong types
raise InvalidInput naming the key (the same rules as `recsvc.config`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from recsvc.config import _build, check_ranges, read_toml  # one set of rules for every config
from recsvc.errors import InvalidInput

TOKENS_FILE_ENV = "RECSVC_TOKENS_FILE"  # the tokens file of `recsvc token` and `recsvc serve`


RANKINGS = ("factors", "anchored")  # values of realtime_ranking (serving.realtime)


@dataclass(frozen=True)
class ServeConfig:
    store: str = ""  # feature store URL (memory://name, redis://host:port/db ...)
    bundle: str = ""  # a bundle directory to publish into an embedded memory:// store
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 0  # 0: no metrics endpoint
    workers: int = 1  # processes sharing the port (SO_REUSEPORT)
    # gRPC handler threads per worker. Store waits release the GIL, so a thread or two more
    # than cores overlap round trips; more threads than that only add GIL hand-offs once the
    # user cache is warm and the event watch is on. Measured on 2 cores, c=16, 200k users:
    # 1 worker, Recommend 3.4k/s with 8, 4.1k/s with 4, 5.1k/s with 2 (2026-11-25); 2 workers
    # (2026-12-07, benchmarks/serve.py short probes, 2 rounds of 15 s), Recommend 3,637/s p99
    # 9.9 ms and 348 us of server CPU per call with 2 threads, 3,188/s 11.9 ms 392 us with 3,
    # 2,837/s 13.0 ms 453 us with 4; shoppers' visits (a store round trip per call) 1,289 /
    # 1,427 / 1,334 calls/s; full runs 3,447/s p99 10.8 ms (2) and 2,768/s 14.1 ms (4). The
    # store guard's bounded pool has one thread per handler thread: the chaos benchmark with 2
    # met every target (Redis killed, paused, slow: 0 failed Recommend calls).
    threads: int = 2
    grace_seconds: float = 5.0  # SIGTERM: how long in-flight calls may take to finish
    drain_delay_seconds: float = 1.0  # SIGTERM: NOT_SERVING but still answering this long first

    # Request limits (INVALID_ARGUMENT beyond them).
    max_k: int = 100
    max_id_length: int = 256
    max_cart_items: int = 100
    max_filter_values: int = 1000  # categories and excluded ids per filter

    # Real time.
    recent_events: int = 20  # newest real-time events read per Recommend (plus older purchases)
    realtime_similar_items: int = 3  # newest event items whose neighbours join the pool
    # How a shopper with new events is re-ranked (RANKINGS): "factors" scores
    # the pool with the folded-in factor vector alone; "anchored" keeps the trained answer's
    # scores (the default recommender's, e.g. the blend) and adds what the events changed.
    # (benchmarks/realtime.py: anchored was never measurably worse than the answer without
    # the events and better for MovieLens visitors; factors lost to it on Groceries).
    realtime_ranking: str = "anchored"
    # Follow the store's real-time event channel (Redis, single node) so that Recommend for a
    # cached user with no real-time events makes no store round trip at all. Trade-off: when
    # Redis hangs (not when it goes down) such answers keep source PERSONALIZED rather than
    # FALLBACK for up to ~store_timeout_ms + 50 ms, until the watch's heartbeat notices.
    # On by default where the store supports it (Redis single node; ignored elsewhere).
    realtime_watch: bool = True

    # Store access and degradation.
    poll_seconds: float = 1.0  # how often the store's `current` pointer is checked
    store_wait_seconds: float = 30.0  # at start-up, how long to retry an unreachable store
    store_timeout_ms: float = 100.0  # socket timeout of each store call
    retry_after_ms: float = 250.0  # after a store failure, answer from the cache this long
    # Users whose versioned features (candidates, seen, factors, segment: immutable within a
    # version) are kept in process, about 3.1 KB of RSS each with 200 candidates (200k users:
    # ~620 MB per worker process, measured by benchmarks/serve.py). A cached user costs one
    # small store read per Recommend (the real-time events; none with realtime_watch) instead
    # of the full record, and is what fallback answers use while the store is down.
    hot_users: int = 250_000
    hot_user_ttl_seconds: float = 600.0  # re-read after this long (e.g. to notice a forget)
    # When a version starts serving, read its users into the cache in the background
    # (serving.warmup): `warm_batch` users per store round trip, taking at most
    # `warm_cpu_share` of a core; refreshed every hot_user_ttl_seconds / 2.
    warm_users: bool = True
    warm_batch: int = 500
    warm_cpu_share: float = 0.25
    hot_items: int = 20_000  # items whose similar lists are kept (cache and fallback)

    # Security (docs/security.md). Authentication is on unless insecure_no_auth: tokens come
    # from tokens_file and/or $RECSVC_TOKENS (hashes only; see serving.auth).
    tokens_file: str = ""
    insecure_no_auth: bool = False  # local demos only: anyone may call (admin RPCs refused)
    rate_limit: float = 0.0  # requests/s per client (0: unlimited); a token's rate= wins
    rate_burst: float = 0.0  # calls a client may make at once (0: one second's worth)
    tls_cert: str = ""  # PEM certificate chain of the server; with tls_key: TLS only
    tls_key: str = ""  # PEM private key of the server
    tls_client_ca: str = ""  # PEM CA bundle: clients must present a certificate it signed
    forget_poll_seconds: float = 5.0  # how often other processes' forgets are picked up

    def masked(self) -> dict[str, Any]:
        """The settings, safe to print and log (store password hidden)."""
        from recsvc.store import mask_url  # numpy, pandas: not for `recsvc --help`

        values = dataclasses.asdict(self)
        values["store"] = mask_url(self.store) if self.store else ""
        return values


def load_serve_config(
    path: str | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    flags: dict[str, str] | None = None,
) -> ServeConfig:
    """Defaults, then `[serve]` of a TOML file, then RECSVC_SERVE__* variables, then overrides.

    overrides: field name -> value; None values are ignored (flags not given). flags: field
    name -> the CLI flag that sets it, named in errors about a value a flag gave. Every number
    must be finite and in SERVE_RANGES.
    """
    data: dict[str, Any] = {}
    if path:
        document = read_toml(path)
        table = document.get("serve")
        if not isinstance(table, dict):  # a typo'd [serv] must not start on the defaults
            found = ", ".join(f"[{k}]" for k, v in document.items() if isinstance(v, dict)) or "none"
            raise InvalidInput("--config", f"{path} has no [serve] table (tables: {found})")
        others = [key for key in document if key != "serve"]
        if others:  # a setting above the [serve] line, or a typo'd table beside it, would be lost
            raise InvalidInput(
                others[0], f"unknown setting in {path}: the server reads only its [serve] table"
            )
        data.update(table)
    env = os.environ if environ is None else environ
    prefix = "RECSVC_SERVE__"
    for name, value in env.items():
        if name.startswith(prefix):
            data[name[len(prefix) :].lower()] = value
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if not data.get("tokens_file") and env.get(TOKENS_FILE_ENV):  # as `recsvc token` reads it
        data["tokens_file"] = env[TOKENS_FILE_ENV]
    config: ServeConfig = _build(ServeConfig, data, "serve")
    if config.realtime_ranking not in RANKINGS:
        raise InvalidInput("serve.realtime_ranking",
                           f"'{config.realtime_ranking}' is not one of {', '.join(RANKINGS)}")
    given = {k for k, v in (overrides or {}).items() if v is not None}
    check_ranges(config, SERVE_RANGES, "serve", {k: f for k, f in (flags or {}).items() if k in given})
    return config


# (lowest, whether the lowest is allowed, highest or None) per setting; every number finite.
SERVE_RANGES: dict[str, tuple[float, bool, float | None]] = {
    "port": (0, True, 65535),
    "metrics_port": (0, True, 65535),
    "workers": (1, True, 1024),  # processes: a typo'd 100000 would fork until the host gives out
    "threads": (1, True, None),
    "grace_seconds": (0, True, None),
    "drain_delay_seconds": (0, True, None),
    "max_k": (1, True, 10_000),  # an int32 in GetModelInfo; a longer list is an export job
    "max_id_length": (1, True, None),
    "max_cart_items": (1, True, None),
    "max_filter_values": (1, True, None),
    "recent_events": (0, True, None),
    "realtime_similar_items": (0, True, None),
    "poll_seconds": (0, False, None),
    "store_wait_seconds": (0, True, None),
    "store_timeout_ms": (0, False, None),
    "retry_after_ms": (0, True, None),
    "hot_users": (0, True, None),
    "hot_user_ttl_seconds": (0, False, None),
    "warm_batch": (1, True, None),
    "warm_cpu_share": (0, False, 1),
    "hot_items": (0, True, None),
    "rate_limit": (0, True, None),
    "rate_burst": (0, True, None),
    "forget_poll_seconds": (0, False, None),
}
