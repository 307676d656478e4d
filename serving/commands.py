"""`recsvc serve`: run the gRPC server over a feature store or a bundle."""

from __future__ import annotations

import argparse
import sys
from typing import Any


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
    parser.add_argument("--threads", type=int, default=None, help="handler threads per worker")
    parser.add_argument("--max-k", type=int, default=None, help="largest k a request may ask for")
    parser.add_argument(
        "--grace", type=float, default=None, dest="grace_seconds",
        help="seconds in-flight calls get to finish after SIGTERM (default 5)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recsvc.errors import InvalidInput
    from serving.config import load_serve_config
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
        },
    )
    if not 0 <= config.port <= 65535:
        raise InvalidInput("--port", f"must be between 0 and 65535, got {config.port}")
    if config.workers < 1:
        raise InvalidInput("--workers", f"must be at least 1, got {config.workers}")
    if config.threads < 1:
        raise InvalidInput("--threads", f"must be at least 1, got {config.threads}")
    if config.max_k < 1:
        raise InvalidInput("--max-k", f"must be at least 1, got {config.max_k}")
    settings = " ".join(f"{k}={v}" for k, v in config.masked().items())
    print(f"recsvc serve: {settings}", file=sys.stderr, flush=True)
    return run_server(config)
