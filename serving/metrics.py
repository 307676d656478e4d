"""Prometheus metrics of the server, and the interceptor that records every RPC.

    recsvc_requests_total{rpc, code}          RPCs finished, by status code
    recsvc_request_seconds{rpc}               latency histogram per RPC (server side)
    recsvc_answers_total{rpc, source}         answers by source (personalized ... fallback)
    recsvc_fallback_answers_total{rpc}        answers served from the fallback cache
    recsvc_cache_lookups_total{cache, result} hot-key cache hits and misses
    recsvc_model_info{version}                1 for the version being served
    recsvc_store_degraded                     1 while the store's circuit breaker is open
    recsvc_warm_users                         users the cache warm-up loaded for the current
                                              version (serving.warmup; least of the workers)
    recsvc_auth_rejected_total{reason}        calls refused by authentication (missing token,
                                              unknown token, not admin, ...)
    recsvc_rate_limited_total{client}         calls refused by a client's rate limit

Labels never hold a customer id or a token: RPC names, status codes, sources, cache names,
model versions, rejection reasons and client (token) names only.

With several worker processes the parent sets PROMETHEUS_MULTIPROC_DIR before they start and
serves the sum over workers (`serve_metrics(..., multiprocess=True)`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)

REQUESTS = Counter("recsvc_requests", "RPCs finished, by status code", ["rpc", "code"])
LATENCY = Histogram(
    "recsvc_request_seconds", "Server-side latency per RPC", ["rpc"], buckets=BUCKETS
)
ANSWERS = Counter("recsvc_answers", "Answers by source", ["rpc", "source"])
FALLBACKS = Counter("recsvc_fallback_answers", "Answers served from the fallback cache", ["rpc"])
CACHE = Counter("recsvc_cache_lookups", "Hot-key cache lookups", ["cache", "result"])
MODEL = Gauge(
    "recsvc_model_info", "1 for the model version being served", ["version"],
    multiprocess_mode="livemax",
)
DEGRADED = Gauge(
    "recsvc_store_degraded", "1 while the feature store is bypassed", multiprocess_mode="livemax"
)
WARM_USERS = Gauge(
    "recsvc_warm_users", "Users the cache warm-up loaded for the current version",
    multiprocess_mode="livemin",
)

AUTH_REJECTED = Counter("recsvc_auth_rejected", "Calls refused by authentication", ["reason"])
RATE_LIMITED = Counter("recsvc_rate_limited", "Calls refused by a client's rate limit", ["client"])

_current_version: str | None = None
_cache_children: dict[tuple[str, bool], Any] = {}
_answer_children: dict[tuple[str, str], Any] = {}  # labels() takes a lock and builds a key


def model_loaded(version: str) -> None:
    global _current_version
    if _current_version is not None and _current_version != version:
        MODEL.labels(_current_version).set(0)
    MODEL.labels(version).set(1)
    _current_version = version


def cache_lookup(cache: str, hit: bool) -> None:
    child = _cache_children.get((cache, hit))
    if child is None:
        child = _cache_children[(cache, hit)] = CACHE.labels(cache, "hit" if hit else "miss")
    child.inc()


def answered(rpc: str, source: str) -> None:
    child = _answer_children.get((rpc, source))
    if child is None:
        child = _answer_children[(rpc, source)] = ANSWERS.labels(rpc, source)
    child.inc()
    if source == "fallback":
        FALLBACKS.labels(rpc).inc()


def warm_users(count: int) -> None:
    WARM_USERS.set(count)


def auth_rejected(reason: str) -> None:
    AUTH_REJECTED.labels(reason).inc()


def rate_limited(client: str) -> None:
    RATE_LIMITED.labels(client).inc()


def degraded(flag: bool) -> None:
    DEGRADED.set(1 if flag else 0)


def rpc_name(method: str) -> str:
    """'/recsvc.v1.Recommender/Recommend' -> 'Recommend'."""
    return method.rsplit("/", 1)[-1] or method


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts every unary RPC by status code and times it (first in the interceptor chain)."""

    def __init__(self) -> None:
        self._wrapped: dict[tuple[str, int], grpc.RpcMethodHandler] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method: str = handler_call_details.method
        key = (method, id(handler))
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = self._wrap(rpc_name(method), handler)
            if len(self._wrapped) < 1024:  # later interceptors may build handlers per call
                self._wrapped[key] = wrapped
        return wrapped

    @staticmethod
    def _wrap(rpc: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        behaviour = handler.unary_unary
        latency = LATENCY.labels(rpc)
        ok = REQUESTS.labels(rpc, "OK")

        def timed(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                response = behaviour(request, context)
            except BaseException:
                code = context.code() if hasattr(context, "code") else None
                name = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
                REQUESTS.labels(rpc, name).inc()
                latency.observe(time.perf_counter() - started)
                raise
            code = context.code() if hasattr(context, "code") else None
            if code is None or code is grpc.StatusCode.OK:
                ok.inc()
            else:
                REQUESTS.labels(rpc, code.name).inc()
            latency.observe(time.perf_counter() - started)
            return response

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def serve_metrics(port: int, host: str = "127.0.0.1", multiprocess: bool = False) -> int:
    """Serve /metrics on `port` (0: a free one) in a daemon thread; returns the port."""
    from prometheus_client import start_http_server

    registry: CollectorRegistry = REGISTRY
    if multiprocess:
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
