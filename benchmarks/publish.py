"""Publish benchmark: a synthetic bundle (1M users x 200 candidates, 100k items) into a real,
local redis-server started by this script.

Measures wall time, users/s, records/s, Redis memory per user (INFO memory `used_memory`
before and after, and MEMORY USAGE of sampled user buckets divided by their users), the encoded
record size, and the latency of one `user_features` read. Writes
`benchmarks/results/publish.json`.

    .venv/bin/python benchmarks/publish.py                 # 1M users (the target run)
    .venv/bin/python benchmarks/publish.py --users 100000  # quicker

Targets (issue 6): 1M users in under 2 minutes; under 1 KiB of Redis memory per user for the
200-candidate list.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import scipy.sparse as sp

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsvc.bundle import Bundle, BundleWriter, RankedLists  # noqa: E402
from recsvc.events import Catalog  # noqa: E402
from recsvc.ids import IdMap  # noqa: E402

TARGET_SECONDS = 120.0
TARGET_BYTES_PER_USER = 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_bundle(root: Path, users: int, items: int, candidates: int, seen_mean: float,
                 similar: int, factors: int, seed: int = 7) -> Bundle:
    """A synthetic bundle with the shapes a real one has (no trainer involved)."""
    rng = np.random.default_rng(seed)
    writer = BundleWriter(root, "bench-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S"))
    user_ids = IdMap(f"customer-{i:08d}" for i in range(users))
    item_ids = IdMap(f"sku-{i:06d}" for i in range(items))
    catalog = Catalog(
        category=np.array([f"category-{i % 50}" for i in range(items)], dtype=object),
        price=rng.uniform(1, 200, items).astype(np.float32),
        in_stock=rng.random(items) > 0.05,
        title=np.array([f"Product {i}" for i in range(items)], dtype=object),
    )
    writer.ids(user_ids, item_ids, catalog)
    # popularity-skewed candidates, best first
    popularity = rng.zipf(1.3, size=items * 4) % items
    weights = np.bincount(popularity, minlength=items).astype(np.float64) + 1.0
    weights /= weights.sum()
    chunk = 100_000
    cand = np.empty((users, candidates), dtype=np.int32)
    scores = np.empty((users, candidates), dtype=np.float32)
    for start in range(0, users, chunk):
        stop = min(start + chunk, users)
        cand[start:stop] = rng.choice(items, size=(stop - start, candidates), p=weights)
        raw = rng.random((stop - start, candidates), dtype=np.float32)
        scores[start:stop] = -np.sort(-raw, axis=1)
    writer.array("candidates/items", cand)
    writer.array("candidates/scores", scores)
    del cand, scores
    counts = np.maximum(1, rng.geometric(1.0 / seen_mean, size=users))
    indptr = np.zeros(users + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(counts)
    indices = rng.choice(items, size=int(indptr[-1]), p=weights).astype(np.int32)
    seen = sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(users, items))
    seen.sum_duplicates()
    writer.csr("seen", seen)
    if similar:
        writer.array("similar/indices", rng.integers(0, items, (items, similar), dtype=np.int32))
        writer.array("similar/scores", -np.sort(-rng.random((items, similar), dtype=np.float32), axis=1))
    if factors:
        from recsvc.scorers import FactorScorer, save_scorer

        save_scorer(writer, "als", FactorScorer(
            rng.standard_normal((users, factors), dtype=np.float32),
            rng.standard_normal((items, factors), dtype=np.float32)))
    top = np.argsort(-weights)[:500]
    RankedLists.from_dict({"all": (top, weights[top])}).write(writer, "popularity/global")
    writer.commit({"default_recommender": "als" if factors else "popular", "synthetic": True})
    return Bundle(root / writer.version)


def redis_info(client: object, section: str = "memory") -> dict[str, object]:
    info: dict[str, object] = client.info(section)  # type: ignore[attr-defined]
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--candidates", type=int, default=200)
    parser.add_argument("--seen-mean", type=float, default=12.0, help="mean seen items per user")
    parser.add_argument("--similar", type=int, default=50)
    parser.add_argument("--factors", type=int, default=0, help="also publish user factors (f16)")
    parser.add_argument("--output", default=str(ROOT / "benchmarks/results/publish.json"))
    parser.add_argument("--workdir", default=None, help="where the bundle and redis files go")
    args = parser.parse_args(argv)

    server = shutil.which("redis-server")
    if server is None:
        print("redis-server is not installed (make redis-server)", file=sys.stderr)
        return 2
    import redis

    from recsvc.store import codec, open_store
    from recsvc.store.redis import USER_BUCKETS, user_bucket

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="recsvc-bench-publish-"))
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(work), "--logfile", str(work / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        redis_version = str(redis_info(client, "server")["redis_version"])

        t0 = time.perf_counter()
        bundle = build_bundle(work / "bundles", args.users, args.items, args.candidates,
                              args.seen_mean, args.similar, args.factors)
        build_seconds = time.perf_counter() - t0
        print(f"bundle built in {build_seconds:.1f}s: {bundle.path}", file=sys.stderr)

        store = open_store(f"redis://127.0.0.1:{port}/0")
        before = int(redis_info(client)["used_memory"])  # type: ignore[arg-type]
        t0 = time.perf_counter()
        report = store.publish(bundle, keep=3, progress=True)
        seconds = time.perf_counter() - t0
        after = int(redis_info(client)["used_memory"])  # type: ignore[arg-type]
        print(f"published {report.n_users} users in {seconds:.1f}s", file=sys.stderr)

        # what the version-wide data and the similar lists take, to subtract from used_memory
        data_key = f"rs:{{v:{report.version}}}:data"
        data_bytes = int(client.memory_usage(data_key, samples=0) or 0)
        item_bytes = sum(int(client.memory_usage(f"rs:{{i{b}}}:v:{report.version}", samples=0) or 0)
                         for b in range(-(-args.items // 256)))
        rng = np.random.default_rng(1)
        sample_buckets = rng.choice(USER_BUCKETS, size=64, replace=False)
        sampled_bytes = sampled_users = 0
        for bucket in sample_buckets.tolist():
            key = f"rs:{{u{bucket}}}:v:{report.version}"
            sampled_bytes += int(client.memory_usage(key, samples=0) or 0)
            sampled_users += int(client.hlen(key))
        per_user_memory_usage = sampled_bytes / max(sampled_users, 1)
        per_user_used_memory = (after - before - data_bytes - item_bytes) / max(report.n_users, 1)

        # encoded record sizes of a sample, by section
        content_users = bundle.users.ids
        sample = rng.choice(len(content_users), size=2000, replace=False)
        raw = [client.hget(f"rs:{{u{b}}}:v:{report.version}", content_users[i])
               for i, b in ((i, user_bucket(content_users[i])) for i in sample.tolist())]
        sizes = np.array([len(r) for r in raw if r is not None])
        sections = [codec.section_sizes(r) for r in raw if r is not None]
        candidate_bytes = float(np.mean([s.get("C", 0) for s in sections]))
        seen_bytes = float(np.mean([s.get("S", 0) for s in sections]))

        # one-round-trip read latency
        latencies = []
        for i in sample[:2000].tolist():
            t = time.perf_counter()
            store.user_features(report.version, content_users[i], recent=10)
            latencies.append(time.perf_counter() - t)
        lat = np.array(latencies) * 1000

        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        import redis as redis_py

        result = {
            "benchmark": "publish",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "cores": os.cpu_count(),
                "memory_gib": round(mem / 2**30, 1),
                "cpu": platform.processor() or platform.machine(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "versions": {
                "redis_server": redis_version,
                "redis_py": redis_py.__version__,
                "numpy": np.__version__,
                "recsvc": __import__("recsvc").__version__,
            },
            "params": {
                "users": args.users, "items": args.items, "candidates": args.candidates,
                "seen_mean": args.seen_mean, "similar": args.similar, "factors": args.factors,
                "score_encoding": "u8 affine between the list's min and max",
                "index_encoding": f"bit-packed, {codec.index_bits(args.items)} bits per item",
                "seen_encoding": "ascending gaps as LEB128 varints",
            },
            "load_average_at_start": load_at_start,
            "note": "other jobs share this machine; load_average_at_start shows how busy it was",
            "bundle_build_seconds": round(build_seconds, 1),
            "publish": {
                "seconds": round(seconds, 2),
                "users_per_s": round(report.n_users / seconds),
                "records_per_s": round((report.n_users + (args.items if args.similar else 0)) / seconds),
                "records_note": "hash fields written: user records plus similar-item lists",
                "redis_keys": report.keys,
                "redis_keys_per_s": round(report.keys / seconds),
                "encoded_bytes": report.bytes,
                "encoded_mb_per_s": round(report.bytes / seconds / 1e6, 1),
            },
            "memory": {
                "used_memory_before": before,
                "used_memory_after": after,
                "version_data_bytes": data_bytes,
                "similar_lists_bytes": item_bytes,
                "bytes_per_user_used_memory": round(per_user_used_memory, 1),
                "bytes_per_user_memory_usage_sampled": round(per_user_memory_usage, 1),
                "sampled_buckets": len(sample_buckets),
                "sampled_users": sampled_users,
                "record_bytes_mean": round(float(sizes.mean()), 1),
                "record_bytes_p99": int(np.percentile(sizes, 99)),
                "candidate_list_bytes_mean": round(candidate_bytes, 1),
                "seen_list_bytes_mean": round(seen_bytes, 1),
            },
            "read_latency_ms": {
                "user_features_recent10_p50": round(float(np.percentile(lat, 50)), 3),
                "user_features_recent10_p99": round(float(np.percentile(lat, 99)), 3),
            },
            "memory_note": "bytes per user cover the whole user record (200-candidate list, "
            "seen items), its field name and hash-table entry, and the bucket keys' overhead",
            "targets": {
                "seconds": TARGET_SECONDS,
                "bytes_per_user": TARGET_BYTES_PER_USER,
                "seconds_ok": seconds < TARGET_SECONDS,
                "bytes_per_user_ok": max(per_user_used_memory, per_user_memory_usage) < TARGET_BYTES_PER_USER,
            },
        }
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        store.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
