"""Benchmark: association-rule mining, ours (training.rules) against mlxtend, side by side.

1. Groceries (../shared/data/groceries/baskets.csv): mlxtend fpgrowth + association_rules and
   our mine_rules at min support 0.001, min confidence 0.5, itemsets as long as mlxtend finds
   (no cap), best of 3 each, in this one run; checks that both give the same single-consequent
   rules and reports the speed-up.
2. A seeded synthetic basket set, 500k orders x 50k items (Zipf item popularity, ~4 items per
   order, some planted bundles): our time (best of 3) and peak memory (tracemalloc, separate
   run) and the process's peak RSS.

Writes benchmarks/results/rules.json with machine and library versions, and prints a summary.

    python benchmarks/rules.py [--repeats 3] [--orders 500000] [--items 50000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from training.rules import frequent_itemsets, mine_rules

ROOT = Path(__file__).resolve().parents[1]
GROCERIES = ROOT.parent / "shared" / "data" / "groceries" / "baskets.csv"
RESULTS = ROOT / "benchmarks" / "results" / "rules.json"


def best_of(repeats: int, run: Callable[[], Any]) -> tuple[float, Any]:
    """Fastest wall time of `repeats` runs and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def peak_traced_mb(run: Callable[[], Any]) -> float:
    """Peak Python/numpy heap of one run, in MB (tracemalloc; numpy reports to it)."""
    gc.collect()
    tracemalloc.start()
    try:
        run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 1e6


def machine_info() -> dict[str, Any]:
    memory_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for name in ("numpy", "scipy", "pandas", "mlxtend"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gb": memory_gb,
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        **versions,
    }


def groceries(repeats: int) -> dict[str, Any] | None:
    if not GROCERIES.exists():
        print(f"groceries: skipped ({GROCERIES} not found)")
        return None
    from mlxtend.frequent_patterns import association_rules, fpgrowth

    frame = pd.read_csv(GROCERIES, dtype=str)
    order, _ = pd.factorize(frame["order_id"])
    item, names = pd.factorize(frame["item_id"])
    baskets = sp.csr_matrix(
        (np.ones(len(order), np.uint8), (order, item)), shape=(order.max() + 1, len(names))
    )
    onehot = pd.DataFrame(baskets.toarray().astype(bool), columns=list(names))
    min_support, min_confidence = 0.001, 0.5

    def run_mlxtend() -> pd.DataFrame:
        itemsets = fpgrowth(onehot, min_support=min_support, use_colnames=True)
        return association_rules(itemsets, metric="confidence", min_threshold=min_confidence)

    mlxtend_seconds, reference = best_of(repeats, run_mlxtend)
    longest = int(
        fpgrowth(onehot, min_support=min_support)["itemsets"].map(len).max()
    )
    ours_seconds, rules = best_of(
        repeats, lambda: mine_rules(baskets, min_support, min_confidence, max_len=longest)
    )
    ours_len3_seconds, rules_len3 = best_of(
        repeats, lambda: mine_rules(baskets, min_support, min_confidence, max_len=3)
    )
    single = reference[reference["consequents"].map(len) == 1]
    theirs = {
        ("|".join(sorted(a)), next(iter(c)))
        for a, c in zip(single["antecedents"], single["consequents"], strict=True)
    }
    ours_frame = rules.to_frame(list(names))
    ours = set(zip(ours_frame["antecedents"], ours_frame["consequent"], strict=True))
    return {
        "orders": int(baskets.shape[0]),
        "items": int(baskets.shape[1]),
        "min_support": min_support,
        "min_confidence": min_confidence,
        "longest_itemset": longest,
        "repeats": repeats,
        "mlxtend_seconds": round(mlxtend_seconds, 4),
        "mlxtend_rules_total": int(len(reference)),
        "mlxtend_rules_single_consequent": int(len(single)),
        "ours_seconds": round(ours_seconds, 4),
        "ours_max_len": longest,
        "ours_rules": len(rules),
        "same_rules": ours == theirs,
        "speedup": round(mlxtend_seconds / ours_seconds, 1),
        "ours_max_len_3_seconds": round(ours_len3_seconds, 4),
        "ours_max_len_3_rules": len(rules_len3),
        "timed": "fpgrowth + association_rules on a one-hot DataFrame vs mine_rules on a CSR "
        "matrix; building either input is not timed",
    }


def synthetic_baskets(n_orders: int, n_items: int, seed: int = 7) -> sp.csr_matrix:
    """Seeded baskets: Zipf(1) item popularity, 1 + Poisson(2.5) draws per order, and 30% of
    orders holding (each item with p=0.8) one of 2,000 planted three-item bundles."""
    rng = np.random.default_rng(seed)
    sizes = 1 + rng.poisson(2.5, n_orders)
    weights = 1.0 / np.arange(1, n_items + 1)
    weights /= weights.sum()
    popularity_order = rng.permutation(n_items)
    items = popularity_order[rng.choice(n_items, size=int(sizes.sum()), p=weights)]
    rows = np.repeat(np.arange(n_orders), sizes)
    bundles = rng.choice(n_items, size=(2000, 3))
    with_bundle = np.flatnonzero(rng.random(n_orders) < 0.3)
    bundle_items = bundles[rng.integers(0, len(bundles), len(with_bundle))].ravel()
    bundle_rows = np.repeat(with_bundle, 3)
    kept = rng.random(len(bundle_items)) < 0.8
    rows = np.concatenate([rows, bundle_rows[kept]])
    items = np.concatenate([items, bundle_items[kept]])
    counts = sp.csr_matrix(
        (np.ones(len(rows), np.int32), (rows, items)), shape=(n_orders, n_items)
    )
    counts.sum_duplicates()
    return sp.csr_matrix(
        (np.ones(counts.nnz, np.uint8), counts.indices, counts.indptr), shape=counts.shape
    )


def synthetic(n_orders: int, n_items: int, repeats: int) -> dict[str, Any]:
    baskets = synthetic_baskets(n_orders, n_items)
    min_support, min_confidence, max_len = 0.0001, 0.1, 3

    def run() -> Any:
        return mine_rules(baskets, min_support, min_confidence, max_len=max_len)

    seconds, rules = best_of(repeats, run)
    peak_mb = peak_traced_mb(run)
    levels, _ = frequent_itemsets(baskets, min_support, max_len)
    input_mb = (baskets.data.nbytes + baskets.indices.nbytes + baskets.indptr.nbytes) / 1e6
    return {
        "orders": n_orders,
        "items": n_items,
        "items_per_order": round(baskets.nnz / n_orders, 2),
        "seed": 7,
        "min_support": min_support,
        "min_support_orders": int(np.ceil(min_support * n_orders)),
        "min_confidence": min_confidence,
        "max_len": max_len,
        "frequent_itemsets_by_length": [len(counts) for _, counts in levels],
        "rules": len(rules),
        "repeats": repeats,
        "seconds": round(seconds, 3),
        "peak_traced_mb": round(peak_mb, 1),
        "input_csr_mb": round(input_mb, 1),
        "dense_orders_x_items_would_be_gb": round(n_orders * n_items / 1e9, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--orders", type=int, default=500_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    result: dict[str, Any] = {"benchmark": "rules", "machine": machine_info()}
    result["groceries"] = groceries(args.repeats)
    result["synthetic"] = synthetic(args.orders, args.items, args.repeats)
    result["process_peak_rss_mb"] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    machine = result["machine"]
    print(f"rules benchmark, {machine['date']}, {machine['cores']} cores, "
          f"{machine['memory_gb']} GB, python {machine['python']}, numpy {machine['numpy']}, "
          f"scipy {machine['scipy']}, mlxtend {machine['mlxtend']}")
    g = result["groceries"]
    if g:
        print(
            f"Groceries ({g['orders']} orders x {g['items']} items, support {g['min_support']}, "
            f"confidence {g['min_confidence']}, itemsets up to {g['longest_itemset']}), "
            f"best of {g['repeats']}:\n"
            f"  mlxtend fpgrowth+association_rules  {g['mlxtend_seconds']:.3f} s  "
            f"({g['mlxtend_rules_single_consequent']} single-consequent rules)\n"
            f"  ours mine_rules                     {g['ours_seconds']:.3f} s  "
            f"({g['ours_rules']} rules, same set: {g['same_rules']})\n"
            f"  speed-up                            {g['speedup']}x\n"
            f"  ours with max_len 3                 {g['ours_max_len_3_seconds']:.3f} s  "
            f"({g['ours_max_len_3_rules']} rules)"
        )
    s = result["synthetic"]
    print(
        f"Synthetic {s['orders']} orders x {s['items']} items ({s['items_per_order']} per order), "
        f"support {s['min_support']} (>= {s['min_support_orders']} orders), max len "
        f"{s['max_len']}:\n"
        f"  frequent itemsets by length {s['frequent_itemsets_by_length']}, {s['rules']} rules\n"
        f"  {s['seconds']:.3f} s (best of {s['repeats']}), peak traced memory "
        f"{s['peak_traced_mb']} MB (input CSR {s['input_csr_mb']} MB; dense would be "
        f"{s['dense_orders_x_items_would_be_gb']} GB), process peak RSS "
        f"{result['process_peak_rss_mb']} MB"
    )
    print(f"-> {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
