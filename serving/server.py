"""The server process: gRPC server, health, reflection, metrics, workers and signals.

Threading model: the synchronous `grpc.server` with a small ThreadPoolExecutor
(`ServeConfig.threads`, 2 by default); `--workers N` runs N such processes on one port
(SO_REUSEPORT) so both cores serve Python code. The store client is synchronous; its socket
waits release the GIL, so a few threads overlap store round trips. Measured against it on 2
cores (200k users x 100k items, real Redis, auth on, c=16, same session): a `grpc.aio` server
that answers cache hits on the event loop and sends store round trips to a thread pool, with
one interceptor, served Recommend at the same rate with one worker (3,710 vs 3,582/s) and
slower with two (3,630 vs 3,810/s; the storefront mix 2,991 vs 3,767/s); only its Check floor
was lower (5,668 vs 7,143/s), which raised the Recommend/Check ratio without serving more.

Interceptors: `build_server(..., interceptors=[...])` puts `MetricsInterceptor` first, then
the given ones in order: every RPC, including the health service, passes through them, so an
interceptor can exempt `/grpc.health.v1.Health/` itself. `start_server` puts the security
interceptors from the config first among them (`security_interceptors`: bearer-token
authentication, then per-client rate limits; see serving.auth, serving.ratelimit), so
refused calls are still counted by status in the metrics.

Security (docs/security.md): authentication is on unless `insecure_no_auth`; the port uses
TLS when `tls_cert` / `tls_key` are given (mutual TLS with `tls_client_ca`; serving.tls).

Health (`grpc.health.v1`): NOT_SERVING for "" and "recsvc.v1.Recommender" until a model
version is loaded, SERVING afterwards (also while the store is down: answers then come from the
fallback cache), NOT_SERVING again once SIGTERM starts the drain. Reflection is on.

SIGTERM: health turns NOT_SERVING at once, the server keeps answering every call for
`drain_delay_seconds` (load balancers that health-check stop routing to it meanwhile, and calls
already on the wire arrive and are served), then answers new calls with UNAVAILABLE (which
clients retry elsewhere) for a moment, then stops and gives the calls in flight
`grace_seconds` to finish. The UNAVAILABLE moment exists because gRPC's shutdown cancels calls
it has received but not yet handed to a handler (CANCELLED, which clients do not retry).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, replace

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from recsvc.errors import InvalidInput, RecsvcError, StoreUnavailable
from recsvc.store import FeatureStore, open_store
from recsvc.store.memory import MemoryStore
from recsvc.v1 import recommender_pb2 as pb
from serving.auth import OPEN_PREFIXES, denial
from serving.config import ServeConfig
from serving.domain import RecommendationService
from serving.fallback import STORE_RETRIES
from serving.privacy import ForgetWatcher
from serving.servicer import RecommenderServicer, add_to_server
from serving.tls import server_credentials
from serving.validation import Validator

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Recommender"].full_name  # recsvc.v1.Recommender


@dataclass
class RunningServer:
    """A started server: what tests, the demo and the process entry point hold on to."""

    server: grpc.Server
    service: RecommendationService
    health: health.HealthServicer
    port: int
    store: FeatureStore
    forget_watcher: ForgetWatcher | None = None
    drain: DrainInterceptor | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = None, drain_delay: float = 0.0) -> None:
        """Drain: health NOT_SERVING, keep serving for `drain_delay` seconds, then refuse new
        calls and let in-flight ones finish within `grace`."""
        self.health.enter_graceful_shutdown()
        if drain_delay > 0:
            time.sleep(drain_delay)
        # Any graceful stop refuses before stopping (also with no drain delay): calls gRPC has
        # received but not started get UNAVAILABLE, which clients retry, not CANCELLED.
        if self.drain is not None and (drain_delay > 0 or grace is None or grace > 0):
            self.drain.refusing.set()
            time.sleep(REFUSE_SECONDS)  # calls already received are answered, not cancelled
        self.server.stop(grace).wait()
        if self.forget_watcher is not None:
            self.forget_watcher.stop()
        self.service.stop()


REFUSE_SECONDS = 0.25


class DrainInterceptor(grpc.ServerInterceptor):
    """Once `refusing` is set (end of the drain), answers new calls UNAVAILABLE (health aside)."""

    def __init__(self) -> None:
        self.refusing = threading.Event()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if not self.refusing.is_set() or handler is None:
            return handler
        if handler_call_details.method.startswith(OPEN_PREFIXES):
            return handler
        return denial(handler, grpc.StatusCode.UNAVAILABLE, "the server is shutting down; retry")


INSECURE_WARNING = (
    "AUTHENTICATION IS OFF (--insecure-no-auth): anyone who can reach this port can read "
    "recommendations and customer histories. Use only for local demos."
)


def security_interceptors(config: ServeConfig) -> list[grpc.ServerInterceptor]:
    """Authentication (unless `insecure_no_auth`) and rate limits, in that order.

    Raises InvalidInput when authentication is on and no token is configured, or the tokens
    file is malformed.
    """
    from serving.auth import AuthInterceptor, registry_from
    from serving.ratelimit import RateLimiter, RateLimitInterceptor

    if config.insecure_no_auth:
        return [AuthInterceptor(None)]
    registry = registry_from(config.tokens_file)
    return [
        AuthInterceptor(registry),
        RateLimitInterceptor(RateLimiter(config.rate_limit, config.rate_burst)),
    ]


def check_security(config: ServeConfig) -> None:
    """Fail fast on unusable security settings (tokens, TLS files) and warn about weak ones."""
    security_interceptors(config)
    server_credentials(config)
    if config.insecure_no_auth:
        log.warning(INSECURE_WARNING)
    elif not config.tls_cert and not _loopback(config.host):
        log.warning(
            "tokens travel in clear text: listening beyond loopback without TLS "
            "(give --tls-cert and --tls-key, or terminate TLS in front of the server)",
            extra={"host": config.host},
        )


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def _listen_flag(host: str) -> str:
    """Which flag to blame when the server cannot listen: --host when no interface of this
    machine has that address (a typo'd name), else --port (taken, or not allowed)."""
    import socket

    try:
        for *_, sockaddr in socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            with socket.socket(socket.AF_INET6 if ":" in str(sockaddr[0]) else socket.AF_INET) as probe:
                probe.bind((sockaddr[0], 0))
            return "--port"
    except OSError:
        return "--host"
    return "--host"


def build_server(
    service: RecommendationService,
    config: ServeConfig,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    reuse_port: bool = False,
) -> tuple[grpc.Server, health.HealthServicer, int]:
    """A gRPC server with the Recommender, health and reflection services, bound, not started.

    Returns (server, health servicer, bound port). Raises InvalidInput when the port is taken.
    """
    from serving.metrics import MetricsInterceptor

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="grpc"),
        interceptors=[MetricsInterceptor(), *interceptors],
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", 1 << 20),
        ],
    )
    add_to_server(RecommenderServicer(service, Validator(config)), server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)

    def set_health(_model: object) -> None:
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    service.add_listener(set_health)
    credentials = server_credentials(config)
    address = f"{config.host}:{config.port}"
    try:
        if credentials is not None:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise InvalidInput(_listen_flag(config.host), f"cannot listen on {address}: {exc}") from None
    if port == 0:
        flag = _listen_flag(config.host)
        hint = "in use?" if flag == "--port" else "no such address here"
        raise InvalidInput(flag, f"cannot listen on {address} ({hint})")
    return server, health_servicer, port


EMBEDDED_FORGET = (
    "ForgetUser is not available on a server run with --bundle: each worker process holds its "
    "own in-process copy of the bundle, so a forget would reach only the process that took the "
    "call and be lost when it restarts. Publish the bundle into Redis (recsvc publish --store "
    "redis://...) and run recsvc serve --store redis://... to forget customers"
)


class BundleStore(MemoryStore):
    """The embedded store of `recsvc serve --bundle`, private to one worker process: refuses
    ForgetUser (RecsvcError, FAILED_PRECONDITION on the wire) rather than forget in one
    process only until its restart."""

    def forget_user(self, user_id: str) -> int:
        raise RecsvcError(EMBEDDED_FORGET)


def open_serving_store(config: ServeConfig) -> FeatureStore:
    """The store to serve from: `--store URL`, or an embedded one holding `--bundle DIR`."""
    if config.bundle:
        from recsvc.bundle import Bundle

        bundle = Bundle(config.bundle)
        store = BundleStore.open(f"memory://serve-{os.getpid()}")
        store.publish(bundle, progress=False)
        return store
    if not config.store:
        raise InvalidInput("--store", "give --store URL or --bundle DIR")
    options = store_options(config.store, config.store_timeout_ms / 1000.0)
    give_up = time.monotonic() + config.store_wait_seconds
    while True:
        try:
            return open_store(config.store, **options)
        except StoreUnavailable as exc:
            if time.monotonic() >= give_up:
                raise
            log.warning("store unreachable; retrying", extra={"error": str(exc)})
            time.sleep(1.0)


def store_options(url: str, timeout: float) -> dict[str, object]:
    """Client settings for serving: short socket timeouts and at most one immediate retry.

    The Redis client's default (10 retries with backoff) would hold a request for seconds
    while Redis is down; the server's circuit breaker and fallback cache handle outages
    instead. One retry survives a pooled connection that went stale across a Redis restart.
    """
    if url.startswith("memory"):
        return {}
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {"socket_timeout": timeout, "retry": Retry(NoBackoff(), STORE_RETRIES)}


def start_server(
    config: ServeConfig,
    store: FeatureStore | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    reuse_port: bool = False,
) -> RunningServer:
    """Open the store (unless given), load the current model if any, start serving.

    The security interceptors of `config` (authentication, rate limits) come before
    `interceptors`. Raises InvalidInput for unusable security settings.
    """
    drain = DrainInterceptor()
    chain = [drain, *security_interceptors(config), *interceptors]
    if config.insecure_no_auth:
        log.warning(INSECURE_WARNING)
    store = store if store is not None else open_serving_store(config)
    service = RecommendationService(store, config)
    # Load the model before binding the port: with SO_REUSEPORT (--workers N) the kernel hands
    # new connections to any bound socket, and a worker still loading would hold them unserved.
    service.start()
    server, health_servicer, port = build_server(service, config, chain, reuse_port)
    watcher = ForgetWatcher(service, config.forget_poll_seconds)
    watcher.poll()  # what is already forgotten is not "new" later
    watcher.start()
    server.start()
    log.info(
        "serving",
        extra={
            "port": port,
            "ready": service.ready,
            "pid": os.getpid(),
            "auth": not config.insecure_no_auth,
            "tls": "mutual" if config.tls_client_ca else bool(config.tls_cert),
        },
    )
    return RunningServer(server, service, health_servicer, port, store, watcher, drain)


# -- process entry points ---------------------------------------------------------------------
def run(config: ServeConfig) -> int:
    """`recsvc serve`: one process, or a supervisor of `workers` processes."""
    if config.workers > 1:
        return _supervise(config)
    if config.metrics_port:
        from serving.metrics import serve_metrics

        serve_metrics(config.metrics_port, config.host)
    running = start_server(config)
    print(f"recsvc serve: listening on {config.host}:{running.port}", flush=True)
    _wait_for_signal(running, config.grace_seconds, config.drain_delay_seconds)
    return 0


def _wait_for_signal(running: RunningServer, grace: float, drain_delay: float = 0.0) -> None:
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info(
            "draining",
            extra={"signal": signal.Signals(signum).name, "grace_s": grace, "delay_s": drain_delay},
        )
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping.wait(0.5):
        pass
    running.stop(grace, drain_delay)


def _worker_main(config: ServeConfig, index: int) -> None:
    from recsvc.logs import setup_logging

    setup_logging()
    running = start_server(config, reuse_port=True)
    log.info("worker started", extra={"worker": index, "port": running.port})
    _wait_for_signal(running, config.grace_seconds, config.drain_delay_seconds)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _supervise(config: ServeConfig) -> int:
    """Run `config.workers` server processes on one port; restart any that dies; drain on
    SIGTERM (forwarded to every worker)."""
    if config.bundle:
        log.warning(
            "--bundle with several workers: each worker holds its own embedded store, so "
            "real-time events are not shared between workers (use --store redis://...)"
        )
    if config.port == 0:
        config = replace(config, port=_free_port(config.host))
    directory = ""
    if config.metrics_port:
        directory = tempfile.mkdtemp(prefix="recsvc-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        from serving.metrics import serve_metrics

        serve_metrics(config.metrics_port, config.host, multiprocess=True)
    context = multiprocessing.get_context("spawn")  # no fork after gRPC has started threads
    stopping = threading.Event()

    def spawn(index: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(target=_worker_main, args=(config, index), name=f"recsvc-worker-{index}")
        process.start()
        return process

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workers = {index: spawn(index) for index in range(config.workers)}
    print(
        f"recsvc serve: listening on {config.host}:{config.port} with {config.workers} workers",
        flush=True,
    )
    while not stopping.wait(0.5):
        for index, process in list(workers.items()):
            if not process.is_alive():
                log.warning("worker exited; restarting", extra={"worker": index, "code": process.exitcode})
                _forget_worker_metrics(directory, process.pid)
                workers[index] = spawn(index)
    for process in workers.values():
        if process.pid is not None and process.is_alive():
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + config.drain_delay_seconds + config.grace_seconds + 10
    for process in workers.values():
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
    if directory:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


def _forget_worker_metrics(directory: str, pid: int | None) -> None:
    """Drop a dead worker's live gauges from the shared metrics (prometheus multiprocess)."""
    if directory and pid is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, directory)

