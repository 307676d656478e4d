"""TLS for the gRPC port: server credentials from `--tls-cert`, `--tls-key`, `--tls-client-ca`.

With a certificate and key the server listens with TLS only (no plaintext port). With a client
CA too, it requires every client to present a certificate signed by that CA (mutual TLS); the
health service is then reachable only by clients with such a certificate as well, so give load
balancers one. Files are PEM; they are read once at start-up.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from recsvc.errors import InvalidInput
from serving.config import ServeConfig


def _read_pem(path: str, flag: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(flag, f"cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise InvalidInput(flag, f"{path} is not a PEM file")
    return data


def server_credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    """TLS credentials for the listening port, or None for plaintext (no --tls-cert).

    Raises InvalidInput naming the flag when one of cert / key is missing or a file is
    unreadable or not PEM.
    """
    if not config.tls_cert and not config.tls_key:
        if config.tls_client_ca:
            raise InvalidInput("--tls-client-ca", "needs --tls-cert and --tls-key")
        return None
    if not config.tls_cert:
        raise InvalidInput("--tls-cert", "is required with --tls-key")
    if not config.tls_key:
        raise InvalidInput("--tls-key", "is required with --tls-cert")
    chain = _read_pem(config.tls_cert, "--tls-cert")
    key = _read_pem(config.tls_key, "--tls-key")
    client_ca = _read_pem(config.tls_client_ca, "--tls-client-ca") if config.tls_client_ca else None
    try:
        return grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
    except (RuntimeError, ValueError) as exc:
        raise InvalidInput("--tls-cert", f"unusable certificate or key: {exc}") from None
