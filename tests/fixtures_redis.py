"""Pytest fixtures that start real Redis servers: one node, and a 3-master Redis Cluster.

Both are session-scoped, run from a temporary directory with persistence off
(`--save '' --appendonly no`), listen on free ports of 127.0.0.1 and are shut down at the end.
Tests that use them are skipped, with the reason, when `redis-server` / `redis-cli` are not
installed (`make redis-server` installs them). Import with `from tests.fixtures_redis import *`.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["redis_cluster_url", "redis_url", "start_redis", "free_port"]

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (+10000) is free too (so both are <= 65535)."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, 45000)
        if port not in taken and port + 10000 not in taken and _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server on {port} exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith((b"+PONG", b"-NOAUTH")):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server on {port} did not answer within {timeout}s")


def start_redis(directory: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """Start a redis-server on 127.0.0.1:`port` with its files in `directory`."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (run `make redis-server`)")
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "redis.log"
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory), "--logfile", str(log), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(port, process, log)
    except BaseException:
        _stop([process])
        raise
    return process


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a fresh single-node redis-server (database 0)."""
    port = free_port()
    process = start_redis(tmp_path_factory.mktemp("redis"), port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop([process])


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a fresh 3-master Redis Cluster (no replicas)."""
    if REDIS_CLI is None:
        pytest.skip("redis-cli is not installed (run `make redis-server`)")
    root = tmp_path_factory.mktemp("redis-cluster")
    ports: list[int] = []
    for _ in range(3):
        ports.append(free_cluster_port(set(ports) | {p + 10000 for p in ports}))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            processes.append(
                start_redis(root / str(port), port, "--cluster-enabled", "yes",
                            "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000")
            )
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        deadline = time.monotonic() + 20
        while True:
            # every node must say ok: a node that has not yet seen the others' slots answers
            # CLUSTERDOWN for a moment after the first node is ready
            infos = [subprocess.run([REDIS_CLI, "-p", str(p), "cluster", "info"],
                                    capture_output=True, text=True, timeout=5).stdout for p in ports]
            info = infos[0]
            if all("cluster_state:ok" in i for i in infos):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster did not become ok: {info}")
            time.sleep(0.1)
        yield f"redis+cluster://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}"
    finally:
        _stop(processes)
