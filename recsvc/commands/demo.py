"""`recsvc demo` (what `make demo` runs): a small store end to end, as its engineers would run it.

It runs the real commands one after another: `recsvc synth`, `recsvc train` and `recsvc serve
--bundle` (each as its own process, the way a store deploys them), waits for the gRPC health
check to say SERVING, then calls every RPC as a storefront would and prints the answers. Only
Python is needed: the server uses the embedded store.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("demo", help="generate a small store, train, serve and query it")
    parser.add_argument("--dir", default="demo-out", help="where data and bundles go")
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=7)
    parser.set_defaults(func=run)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _recsvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "recsvc.cli", *args]


def _run(title: str, command: list[str]) -> None:
    print(f"\n$ recsvc {' '.join(command[3:])}", flush=True)
    started = time.perf_counter()
    result = subprocess.run(command, text=True, capture_output=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"demo: {title} failed (exit {result.returncode})")
    for line in result.stdout.strip().splitlines():
        print(f"  {line}")
    print(f"  ({title}: {time.perf_counter() - started:.1f}s)", flush=True)


def wait_serving(target: str, timeout: float, server: subprocess.Popen[str]) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"demo: the server exited with {server.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"demo: the server at {target} did not become SERVING in {timeout:.0f}s")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    started = time.perf_counter()
    root = Path(args.dir)
    data, bundles = root / "data", root / "bundles"
    print("recsvc demo: a synthetic store, trained and served over gRPC on 127.0.0.1")
    _run("generate", _recsvc("synth", "--users", str(args.users), "--items", str(args.items),
                             "--days", str(args.days), "--seed", str(args.seed), "--out", str(data)))
    _run("train", _recsvc("train", "--events", str(data / "events.csv"), "--items",
                          str(data / "items.csv"), "--out", str(bundles)))
    port = free_port()
    target = f"127.0.0.1:{port}"
    # A local demo on loopback: no tokens (recsvc serve says loudly that auth is off).
    print(f"\n$ recsvc serve --bundle {bundles / 'latest'} --port {port} --insecure-no-auth",
          flush=True)
    server = subprocess.Popen(
        _recsvc("serve", "--bundle", str(bundles / "latest"), "--host", "127.0.0.1",
                "--port", str(port), "--insecure-no-auth"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_serving(target, 60.0, server)
        print(f"  serving on {target}", flush=True)
        client = subprocess.run(
            [sys.executable, "-m", "serving.demo_client", "--target", target,
             "--ground-truth", str(data / "ground_truth.json")],
            text=True,
            capture_output=True,
        )
        sys.stdout.write(client.stdout)
        if client.returncode != 0:
            sys.stderr.write(client.stderr)
            raise SystemExit("demo: the storefront calls failed")
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    print(f"\ndemo finished in {time.perf_counter() - started:.0f}s; files in {root}/")
    return 0
