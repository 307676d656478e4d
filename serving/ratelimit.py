"""Per-client rate limits: a token bucket per client name, RESOURCE_EXHAUSTED beyond it.

Each authenticated client (token name, see `serving.auth`) gets a bucket that refills at its
rate (the token's `rate=` in the tokens file, else `--rate-limit`, requests/s) and holds at
most `burst` calls (`--rate-burst`, default one second's worth; never less than one). A call
that finds the bucket empty fails at once with RESOURCE_EXHAUSTED, before any work is done.
Rate 0 means unlimited.
The health service is never limited. Without authentication (`--insecure-no-auth`) callers
cannot be told apart, so no limit applies.

Runs after `AuthInterceptor` (it reads the client that interceptor identified).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from serving import metrics
from serving.auth import OPEN_PREFIXES, Continuation, LogThrottle, current_client, denial


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """Token buckets keyed by client name; thread-safe."""

    def __init__(self, default_rate: float, burst: float = 0.0) -> None:
        self.default_rate = max(0.0, float(default_rate))
        self.burst = max(0.0, float(burst))
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def rate_of(self, rate: float | None) -> float:
        return self.default_rate if rate is None else rate

    def capacity(self, rate: float) -> float:
        # At least one call: a bucket smaller than one would refuse every call for ever.
        return max(1.0, self.burst if self.burst > 0 else rate)

    def allow(self, name: str, rate: float | None = None, now: float | None = None) -> bool:
        """Take one call from `name`'s bucket; False when it is empty (rate 0: always True)."""
        rate = self.rate_of(rate)
        if rate <= 0:
            return True
        capacity = self.capacity(rate)
        with self._lock:
            # Read the clock under the lock: a thread that read it before waiting for the lock
            # would otherwise move the bucket back in time and take away what it had earned.
            now = time.monotonic() if now is None else now
            bucket = self._buckets.get(name)
            if bucket is None:
                bucket = self._buckets[name] = _Bucket(capacity, now)
            if now > bucket.stamp:
                bucket.tokens = min(capacity, bucket.tokens + (now - bucket.stamp) * rate)
                bucket.stamp = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return True
            return False


class RateLimitInterceptor(grpc.ServerInterceptor):
    """RESOURCE_EXHAUSTED for a client over its rate (see the module docstring)."""

    def __init__(self, limiter: RateLimiter, open_prefixes: Sequence[str] = OPEN_PREFIXES) -> None:
        self.limiter = limiter
        self.open_prefixes = tuple(open_prefixes)
        self.throttle = LogThrottle()

    def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        client = current_client()
        if client is None or handler_call_details.method.startswith(self.open_prefixes):
            return continuation(handler_call_details)
        if self.limiter.allow(client.name, client.rate):
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        rate = self.limiter.rate_of(client.rate)
        metrics.rate_limited(client.name)
        self.throttle.warn("rate limit exceeded", client.name, client=client.name, rate=rate)
        return denial(
            handler,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"rate limit: client '{client.name}' is over {rate:g} requests/s; retry shortly",
        )
