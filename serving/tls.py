"""TLS for the gRPC port: server credentials from `--tls-cert`, `--tls-key`, `--tls-client-ca`.

With a certificate and key the server listens with TLS only (no plaintext port). With a client
CA too, it requires every client to present a certificate signed by that CA (mutual TLS); the
health service is then reachable only by clients with such a certificate as well, so give load
balancers one. Files are PEM; they are read once at start-up (a renewed certificate takes a
restart).

The files are checked before the port is bound (with Python's `ssl`, the same OpenSSL rules
gRPC applies): a key that is not the certificate's, files given the wrong way round, an
encrypted key or a CA file without a certificate would otherwise surface only as gRPC failing
to bind the port, blamed on `--port`.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from recsvc.errors import InvalidInput
from serving.config import ServeConfig


def _read_pem(path: str, flag: str, holding: bytes, what: str) -> bytes:
    """The file's bytes; InvalidInput naming `flag` unless it is a PEM file with a `holding`
    block (e.g. b"CERTIFICATE-----")."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInput(flag, f"cannot read {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise InvalidInput(flag, f"{path} is not a PEM file")
    if holding not in data:
        raise InvalidInput(flag, f"{path} holds no {what} (PEM files given the wrong way round?)")
    return data


class _Encrypted(Exception):
    """The private key asks for a passphrase (gRPC cannot use it)."""


def _passphrase() -> bytes:
    raise _Encrypted


def _context() -> ssl.SSLContext:
    # Only pairing and format are judged here; what gRPC's TLS accepts (e.g. a small RSA key
    # that OpenSSL's default security level refuses) is left to it.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def _check_pair(cert: str, key: str) -> None:
    """InvalidInput naming the flag when `key` is not the private key of `cert`'s certificate."""
    try:
        _context().load_cert_chain(cert, key, password=_passphrase)
    except _Encrypted:
        raise InvalidInput("--tls-key", f"{key} is encrypted; give the key without a passphrase") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise InvalidInput(
                "--tls-key", f"{key} is not the private key of the certificate in {cert}"
            ) from None
        raise InvalidInput("--tls-cert", f"unusable certificate or key ({cert}, {key})") from None


def _check_ca(path: str) -> None:
    try:
        _context().load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise InvalidInput("--tls-client-ca", f"{path} holds no usable CA certificate") from None


def server_credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    """TLS credentials for the listening port, or None for plaintext (no --tls-cert).

    Raises InvalidInput naming the flag when one of cert / key is missing, a file is unreadable
    or not PEM, the key is not the certificate's or is encrypted, or the client CA file holds no
    certificate.
    """
    if not config.tls_cert and not config.tls_key:
        if config.tls_client_ca:
            raise InvalidInput("--tls-client-ca", "needs --tls-cert and --tls-key")
        return None
    if not config.tls_cert:
        raise InvalidInput("--tls-cert", "is required with --tls-key")
    if not config.tls_key:
        raise InvalidInput("--tls-key", "is required with --tls-cert")
    chain = _read_pem(config.tls_cert, "--tls-cert", b"CERTIFICATE-----", "certificate")
    key = _read_pem(config.tls_key, "--tls-key", b"PRIVATE KEY-----", "private key")
    _check_pair(config.tls_cert, config.tls_key)
    client_ca = None
    if config.tls_client_ca:
        client_ca = _read_pem(config.tls_client_ca, "--tls-client-ca", b"CERTIFICATE-----", "certificate")
        _check_ca(config.tls_client_ca)
    try:
        return grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )
    except (RuntimeError, ValueError) as exc:
        raise InvalidInput("--tls-cert", f"unusable certificate or key: {exc}") from None
