"""`recsvc serve`: run the gRPC server over a feature store or a bundle.

Authentication is on by default: give `--tokens-file` (made with `recsvc token create`) or
`$RECSVC_TOKENS`, or `--insecure-no-auth` for a local demo. See docs/security.md.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from serving.config import TOKENS_FILE_ENV, ServeConfig


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="serve recommendations over gRPC from a feature store or a bundle",
        description=(
            "Start the gRPC server (recsvc.v1.Recommender, health, reflection). It follows the "
            "store's current model version and swaps versions without a restart."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--store", help="feature store URL: redis://host:port/db, memory://name")
    source.add_argument(
        "--bundle", help="bundle directory: publish it into an embedded in-process store and serve it"
    )
    parser.add_argument("--config", help="TOML file with a [serve] table")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="gRPC port (default 50051; 0: any)")
    parser.add_argument("--metrics-port", type=int, default=None, help="Prometheus /metrics port")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes sharing the port (default 1)"
    )
    parser.add_argument("--threads", type=int, default=None,
                        help=f"handler threads per worker (default {ServeConfig.threads})")
    parser.add_argument("--max-k", type=int, default=None,
                        help=f"largest k a request may ask for (default {ServeConfig.max_k})")
    parser.add_argument(
        "--grace", type=float, default=None, dest="grace_seconds",
        help="seconds in-flight calls get to finish after SIGTERM (default 5)",
    )
    parser.add_argument(
        "--drain-delay", type=float, default=None, dest="drain_delay_seconds",
        help="after SIGTERM, seconds of NOT_SERVING while still answering before calls are "
        "refused (default 1)",
    )
    security = parser.add_argument_group("security (docs/security.md)")
    security.add_argument(
        "--tokens-file", default=None,
        help="client tokens (hashes) from `recsvc token create` (default: [serve] tokens_file, "
        f"else ${TOKENS_FILE_ENV} as for `recsvc token`); also $RECSVC_TOKENS",
    )
    security.add_argument(
        "--insecure-no-auth", action="store_true", default=None,
        help="no authentication: anyone may call (local demos only; admin RPCs refused)",
    )
    security.add_argument(
        "--rate-limit", type=float, default=None,
        help="requests/s per client token (default 0: unlimited; a token's rate= wins)",
    )
    security.add_argument(
        "--rate-burst", type=float, default=None,
        help="calls a client may make at once (default: one second's worth)",
    )
    security.add_argument("--tls-cert", default=None, help="PEM certificate chain: serve TLS only")
    security.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    security.add_argument(
        "--tls-client-ca", default=None,
        help="PEM CA: require client certificates signed by it (mutual TLS)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from serving.config import load_serve_config
    from serving.server import INSECURE_WARNING, check_security
    from serving.server import run as run_server

    config = load_serve_config(
        args.config,
        {
            "store": args.store,
            "bundle": args.bundle,
            "host": args.host,
            "port": args.port,
            "metrics_port": args.metrics_port,
            "workers": args.workers,
            "threads": args.threads,
            "max_k": args.max_k,
            "grace_seconds": args.grace_seconds,
            "drain_delay_seconds": args.drain_delay_seconds,
            "tokens_file": args.tokens_file,
            "insecure_no_auth": args.insecure_no_auth,
            "rate_limit": args.rate_limit,
            "rate_burst": args.rate_burst,
            "tls_cert": args.tls_cert,
            "tls_key": args.tls_key,
            "tls_client_ca": args.tls_client_ca,
        },
        flags={
            "port": "--port", "metrics_port": "--metrics-port", "workers": "--workers",
            "threads": "--threads", "max_k": "--max-k", "grace_seconds": "--grace",
            "drain_delay_seconds": "--drain-delay", "rate_limit": "--rate-limit",
            "rate_burst": "--rate-burst",
        },
    )
    if config.bundle:  # a wrong path is one line, before the settings and banners
        from recsvc.bundle import Bundle

        Bundle(config.bundle)
    check_security(config)  # before opening the store: bad tokens or TLS files fail at once
    settings = " ".join(f"{k}={v}" for k, v in config.masked().items())
    print(f"recsvc serve: {settings}", file=sys.stderr, flush=True)
    if config.insecure_no_auth:
        banner = "!" * 78
        print(f"{banner}\nrecsvc serve: WARNING: {INSECURE_WARNING}\n{banner}", file=sys.stderr, flush=True)
    return run_server(config)
