"""Client-side connection settings for a recsvc server: bearer token, TLS, retries.

`ClientSecurity` says how to reach a server: a bearer token (`--token` or `$RECSVC_TOKEN`),
sent as `authorization: Bearer <token>` metadata on each call; TLS with a CA to verify the
server (`--tls-ca`), optionally a client certificate for mutual TLS (`--tls-cert`,
`--tls-key`). `channel` / `aio_channel` open a channel with those settings.

`RETRY_POLICY` is the client retry policy we recommend to storefronts: read RPCs (and
ForgetUser) are idempotent, so a call that fails with UNAVAILABLE (a server process died or is
draining, a connection broke) is retried on a fresh connection, up to 5 attempts within the
call's deadline. RecordEvent is left out: a retried event counts once only when it carries
`timestamp_ms`, which the policy cannot see; a storefront retries it itself, with the stamp. `retry_options()` also shortens gRPC's reconnect backoff (1 s by default, 100 ms
here): a connection attempt that lands on a server process in the instant it dies fails, and the
channel would otherwise fail every call for a second. Together they keep a killed server
worker invisible to shoppers (benchmarks/chaos.py, scenario d).

Imports only grpc and the standard library.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from recsvc.errors import InvalidInput

TOKEN_ENV = "RECSVC_TOKEN"
SERVICE = "recsvc.v1.Recommender"
# Idempotent RPCs: every one but RecordEvent.
RETRIED_METHODS = ("Recommend", "SimilarItems", "CrossSell", "BuyAgain", "Popular", "GetModelInfo",
                   "ForgetUser")
RETRY_POLICY: dict[str, Any] = {
    "methodConfig": [
        {
            "name": [{"service": SERVICE, "method": method} for method in RETRIED_METHODS],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.4s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
Options = list[tuple[str, Any]]


def retry_options() -> Options:
    """Channel options that turn on `RETRY_POLICY` and a short reconnect backoff."""
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(RETRY_POLICY)),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]


def _read(path: str | None, flag: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(flag, f"cannot read {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class ClientSecurity:
    """How a client authenticates and encrypts (see the module docstring)."""

    token: str | None = field(default=None, repr=False)
    tls_ca: str | None = None  # PEM CA that signed the server's certificate: use TLS
    tls_cert: str | None = None  # PEM client certificate (mutual TLS)
    tls_key: str | None = None  # PEM key of tls_cert
    server_name: str | None = None  # name to check the server certificate against
    tls: bool = False  # TLS with the system's CAs (when no tls_ca)

    def __post_init__(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidInput("--tls-cert", "a client certificate needs both --tls-cert and --tls-key")
        if self.token is not None and (not self.token.strip() or "\n" in self.token):
            raise InvalidInput("--token", "must be one non-empty line")

    @classmethod
    def from_env(cls, token: str | None = None, **tls: Any) -> ClientSecurity:
        """Settings with the token from `token`, else `$RECSVC_TOKEN` (None when neither)."""
        return cls(token=token or os.environ.get(TOKEN_ENV) or None, **tls)

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.tls_ca or self.tls_cert)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Per-call metadata (the bearer token), empty without a token."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS channel credentials, or None for plaintext."""
        if not self.uses_tls:
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.tls_ca, "--tls-ca"),
            private_key=_read(self.tls_key, "--tls-key"),
            certificate_chain=_read(self.tls_cert, "--tls-cert"),
        )

    def options(self, extra: Sequence[tuple[str, Any]] = ()) -> Options:
        opts: Options = list(extra)
        if self.server_name:
            opts.append(("grpc.ssl_target_name_override", self.server_name))
        return opts

    def channel(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        """A blocking channel that sends the token with every call."""
        credentials = self.credentials()
        opts = self.options(options)
        if credentials is None:
            channel = grpc.insecure_channel(target, options=opts)
        else:
            channel = grpc.secure_channel(target, credentials, options=opts)
        metadata = self.metadata()
        if metadata:
            channel = grpc.intercept_channel(channel, _MetadataInterceptor(metadata))
        return channel

    def aio_channel(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """An asyncio channel (no token: pass `metadata()` to each call, it is cheaper)."""
        credentials = self.credentials()
        opts = self.options(options)
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=opts)
        return grpc.aio.secure_channel(target, credentials, options=opts)


class _MetadataInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds fixed metadata (the bearer token) to every call of a blocking channel."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def _details(self, details: Any) -> Any:
        merged = tuple(details.metadata or ()) + self._metadata
        return _Details(
            details.method, details.timeout, merged, details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], client_call_details: Any, request: Any) -> Any:
        return continuation(self._details(client_call_details), request)


@dataclass(frozen=True)
class _Details(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any
