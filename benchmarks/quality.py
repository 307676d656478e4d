"""Recommendation quality benchmark: every model against popularity and implicit's ALS at its
library defaults, on MovieLens 100k, a synthetic store and the Groceries baskets, in one run.

Protocols (top-10, seen items removed, ranking through recsvc.ranking.rank_users):
- MovieLens 100k: all ratings as implicit positives, per-user stratified random 75/25 split,
  split seeds 1-5 (mean and spread).
- synthetic store (recsvc.synth, views/carts/purchases): temporal split, last 25% of events.
- Groceries: basket completion over time: the last 25% of baskets are hidden from training,
  each shows half of its items and the models must find the other half (seeds 1-3).
Also measured: the default model's fit time on all of MovieLens 100k, and at a ~100k-item
catalogue its fit time and the time to score and rank one user through rank_users (CPU time of
the process, median over 600 calls, besides wall time: other jobs share this 2-core machine).

Writes benchmarks/results/quality.json and quality.png. Run: `python benchmarks/quality.py`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsvc.config import TrainConfig, load_train_config  # noqa: E402
from recsvc.events import EventLog, LoadOptions, load_events  # noqa: E402
from recsvc.matrix import event_weights, interaction_matrix  # noqa: E402
from recsvc.ranking import rank_users  # noqa: E402
from training.evaluation.evaluate import evaluate, format_table  # noqa: E402
from training.models import build_model  # noqa: E402
from training.pipeline import default_models  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
MODELS = ["popular", "als-defaults", "bpr", "als", "itemknn", "ease", "blend"]


def machine() -> dict[str, Any]:
    import implicit
    import scipy

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "implicit": implicit.__version__,
        "load_average_at_start": list(os.getloadavg()),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def model_list(config: TrainConfig) -> list[str]:
    names = list(MODELS)
    if config.default_recommender not in names:
        names.append(config.default_recommender)
    return names


def ratios(summary: dict[str, dict[str, float]], default: str) -> dict[str, float]:
    out = {}
    for baseline in ("popular", "als-defaults"):
        for metric in ("ndcg", "precision"):
            base = summary[baseline][metric]
            out[f"{metric}_vs_{baseline}"] = round(summary[default][metric] / base, 3) if base else 0.0
    return out


def run_dataset(
    name: str, log: EventLog, config: TrainConfig, split: str, seeds: list[int], k: int = 10
) -> dict[str, Any]:
    started = time.perf_counter()
    report = evaluate(log, model_list(config), config, split, 0.25, seeds, k)
    print(f"\n== {name}: {split} split, seeds {seeds} ==")
    print(format_table(report), flush=True)
    result = report.to_dict()
    result["default_model"] = config.default_recommender
    result["default_vs_baselines"] = ratios(report.summary, config.default_recommender)
    result["seconds"] = round(time.perf_counter() - started, 1)
    print("default vs baselines:", result["default_vs_baselines"])
    return result


def cli_path(path: Path, seeds: list[int], k: int = 10) -> dict[str, Any]:
    """`recsvc train` then `recsvc recommend`, as processes, on the harness's own splits.

    For each seed: the training rows of the evaluation's random 75/25 split
    (`training_rows`, the draw `run_dataset` scores) are written as a CSV, the CLI trains on
    it with the shipped defaults and exports top-k for every user, and the export is scored
    against the held-out part with the same metric code and the same users (test items not
    seen in training; users with none skipped). Equal figures to the harness's "blend" row
    show that the product path, not only the harness, reaches them.
    """
    import subprocess

    import pandas as pd
    import scipy.sparse as sp

    from training.evaluation.metrics import all_metrics
    from training.evaluation.splits import split_log, training_rows

    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    log, _ = load_events(path, LoadOptions())
    if len(raw) != len(log):
        raise SystemExit(f"{path}: {len(raw)} rows but {len(log)} loaded: cannot align the split")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", RECSVC_PROGRESS="0")
    runs = []
    with tempfile.TemporaryDirectory(prefix="recsvc-quality-cli-") as tmp:
        for seed in seeds:
            work = Path(tmp) / str(seed)
            work.mkdir()
            raw[training_rows(log, "random", 0.25, seed)].to_csv(work / "train.csv", index=False)
            started = time.perf_counter()
            for command in (
                ["train", "--events", str(work / "train.csv"), "--out", str(work / "bundles")],
                ["recommend", "--bundle", str(work / "bundles" / "latest"), "--k", str(k),
                 "--out", str(work / "recs.csv")],
            ):  # fmt: skip
                subprocess.run([sys.executable, "-m", "recsvc.cli", *command], check=True,
                               capture_output=True, env=env)  # fmt: skip
            seconds = time.perf_counter() - started
            split = split_log(log, "random", 0.25, seed)
            test = split.test
            rows = np.flatnonzero((np.diff(test.indptr) > 0) & (np.diff(split.train.indptr) > 0))
            recs = pd.read_csv(work / "recs.csv", dtype={"user_id": str, "item_id": str})
            recs = recs.sort_values(["user_id", "rank"])
            user_index = {u: i for i, u in enumerate(log.users.ids)}
            item_index = {v: i for i, v in enumerate(log.items.ids)}
            position = {int(u): p for p, u in enumerate(rows.tolist())}
            ranked = np.full((len(rows), k), -1, dtype=np.int64)
            filled = np.zeros(len(rows), dtype=np.int64)
            for user, item in zip(recs["user_id"].tolist(), recs["item_id"].tolist(), strict=True):
                p = position.get(user_index.get(user, -1))
                if p is not None and filled[p] < k:
                    ranked[p, filled[p]] = item_index.get(item, -1)
                    filled[p] += 1
            metrics = all_metrics(ranked, sp.csr_matrix(test[rows]), k)
            runs.append({"seed": seed, "users": int(len(rows)), "train_recommend_seconds": round(seconds, 2),
                         **{name: round(value, 6) for name, value in metrics.items()}})  # fmt: skip
            print(f"cli path seed {seed}: precision@{k} {metrics['precision']:.4f} "
                  f"nDCG@{k} {metrics['ndcg']:.4f} ({seconds:.1f} s)", flush=True)  # fmt: skip
    summary = {
        metric: round(float(np.mean([r[metric] for r in runs])), 6)
        for metric in ("precision", "ndcg", "map", "recall")
    }
    summary.update({
        f"{metric}_std": round(float(np.std([r[metric] for r in runs])), 6)
        for metric in ("precision", "ndcg")
    })  # fmt: skip
    print(f"cli path mean: {summary}", flush=True)
    return {"commands": "recsvc train --events train.csv --out B; recsvc recommend --bundle "
            "B/latest --k 10 --out recs.csv (shipped defaults)", "seeds": seeds,
            "summary": summary, "runs": runs}  # fmt: skip


def synthetic_log(directory: Path, users: int, items: int, seed: int) -> EventLog:
    from recsvc.synth import SynthConfig, generate, write

    store = generate(SynthConfig(users=users, items=items, days=90, seed=seed, clusters=12))
    paths = write(store, directory, fmt="parquet")
    log, _ = load_events(paths["events"], LoadOptions())
    return log


def fit_time_ml100k(config: TrainConfig) -> dict[str, Any]:
    log, _ = load_events(DATA / "ml-100k" / "ratings.csv", LoadOptions())
    matrix = interaction_matrix(log, event_weights(log, config.events))
    model = build_model(config.default_recommender, config)
    started = time.perf_counter()
    model.fit(matrix)
    seconds = time.perf_counter() - started
    print(f"\ndefault model ({config.default_recommender}) fit on all of MovieLens 100k: {seconds:.2f} s")
    return {"model": config.default_recommender, "fit_seconds": round(seconds, 3),
            "params": model.params()}  # fmt: skip


def scale_check(config: TrainConfig, directory: Path, items: int, users: int) -> dict[str, Any]:
    """Fit the default and its parts at a ~100k-item catalogue; time one user's scoring."""
    log = synthetic_log(directory, users=users, items=items, seed=5)
    # the whole catalogue, also the items nobody touched in this log: scores cover every item
    shape = (len(log.users), max(items, len(log.items)))
    matrix = interaction_matrix(log, event_weights(log, config.events), shape)
    rng = np.random.default_rng(0)
    active = np.flatnonzero(np.diff(matrix.indptr) > 0)
    sample = rng.choice(active, size=min(200, len(active)), replace=False)
    out: dict[str, Any] = {
        "catalogue_items": int(matrix.shape[1]),
        "items_with_events": int(len(log.items)),
        "users": int(matrix.shape[0]),
        "interactions": int(matrix.nnz),
        "models": {},
    }
    # what `recsvc train` makes the default at this size (ALS above ease.max_items), and EASE's
    # local solver, which a config can still ask for by name, for comparison
    default, parts, note = default_models(config, int(matrix.shape[1]))
    out["default_recommender"] = default
    out["default_recommender_note"] = note
    names = [default, *parts, "ease"] if config.ease.enabled else [default, *parts]
    for name in dict.fromkeys(names):
        model = build_model(name, config)
        model.fit(matrix)
        scorer = model.scorer()
        cpu, wall = [], []
        for _ in range(3):
            for user in sample.tolist():
                history = matrix[user : user + 1]
                started_cpu, started = time.process_time(), time.perf_counter()
                for _ in rank_users(scorer, history, np.array([user]), 10, exclude=history):
                    pass
                cpu.append(time.process_time() - started_cpu)
                wall.append(time.perf_counter() - started)
        cpu_ms, wall_ms = np.array(cpu) * 1000, np.array(wall) * 1000
        params = model.params()
        entry = {
            "fit_seconds": round(model.fit_seconds, 2),
            # CPU time of this process: wall time on a shared 2-core machine includes waiting
            "score_one_user_cpu_ms_median": round(float(np.median(cpu_ms)), 3),
            "score_one_user_cpu_ms_p95": round(float(np.percentile(cpu_ms, 95)), 3),
            "score_one_user_wall_ms_median": round(float(np.median(wall_ms)), 3),
            "score_one_user_wall_ms_min": round(float(wall_ms.min()), 3),
            "mean_history_items": round(float(np.diff(matrix.indptr)[sample].mean()), 1),
            "params": params,
        }
        weights = getattr(scorer, "weights", None)
        if weights is not None and hasattr(weights, "nnz"):
            entry["item_item_nonzeros"] = int(weights.nnz)
        out["models"][name] = entry
        print(f"scale {name}: {entry}", flush=True)
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in results["datasets"]]
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 5.2), squeeze=False)
    for axis, name in zip(axes[0], datasets, strict=True):
        summary = results["datasets"][name]["summary"]
        models = list(summary)
        x = np.arange(len(models))
        for offset, metric, label in ((-0.2, "precision", "precision@10"), (0.2, "ndcg", "nDCG@10")):
            means = [summary[m][metric] for m in models]
            spread = [summary[m][f"{metric}_std"] for m in models]
            axis.bar(x + offset, means, 0.4, yerr=spread, capsize=2, label=label)
        if name == "MovieLens 100k":
            for value, style, label in (
                (0.412, ":", "best published precision@10 (BiVAE, MS Recommenders)"),
                (0.475, "-.", "best published nDCG@10 (BiVAE)"),
                (0.43, "--", "target precision@10 0.43"),
                (0.49, "-", "target nDCG@10 0.49"),
            ):
                axis.axhline(value, color="grey", linestyle=style, linewidth=0.8, label=label)
        axis.set_xticks(x, models, rotation=35, ha="right")
        axis.set_title(f"{name}\n({results['datasets'][name]['protocol']['split']} split, "
                       f"seeds {results['datasets'][name]['protocol']['seeds']})", fontsize=10)  # fmt: skip
        axis.grid(axis="y", alpha=0.3)
        top = max(summary[m][metric] for m in models for metric in ("precision", "ndcg"))
        axis.set_ylim(0, top * 1.45)
        axis.legend(fontsize=7, loc="upper left", ncol=2)
    info = results["machine"]
    fig.suptitle(
        f"recsvc quality, default model: {results['default_model']}  |  {info['date']}  "
        f"{info['cpus']} CPUs, Python {info['python']}, implicit {info['implicit']}, "
        f"numpy {info['numpy']}, scipy {info['scipy']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="TOML config (default: packaged defaults)")
    parser.add_argument("--out", default=str(RESULTS / "quality.json"))
    parser.add_argument("--png", default=str(RESULTS / "quality.png"))
    parser.add_argument("--scale-items", type=int, default=100_000)
    parser.add_argument("--scale-users", type=int, default=20_000)
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from --out")
    args = parser.parse_args(argv)
    if args.plot_only:
        plot(json.loads(Path(args.out).read_text(encoding="utf-8")), Path(args.png))
        return 0

    config = load_train_config(args.config, environ={})
    results: dict[str, Any] = {
        "machine": machine(),
        "default_model": config.default_recommender,
        "config": {"events": vars(config.events), "ease": vars(config.ease), "als": vars(config.als),
                   "itemknn": vars(config.itemknn), "blend": config.blend},  # fmt: skip
        "baselines": "popular = distinct users per item; als-defaults = implicit "
        "AlternatingLeastSquares() at library defaults (only random_state set) on the binary matrix",
        "datasets": {},
    }
    ml = DATA / "ml-100k" / "ratings.csv"
    if ml.exists():
        log, _ = load_events(ml, LoadOptions())
        results["datasets"]["MovieLens 100k"] = run_dataset(
            "MovieLens 100k", log, config, "random", [1, 2, 3, 4, 5]
        )
        if args.config is None:  # the CLI trains with the shipped defaults
            results["MovieLens 100k via the CLI"] = cli_path(ml, [1, 2, 3, 4, 5])
        results["ml100k_fit"] = fit_time_ml100k(config)
    with tempfile.TemporaryDirectory() as tmp:
        log = synthetic_log(Path(tmp) / "synth", users=4000, items=2000, seed=7)
        results["datasets"]["synthetic store"] = run_dataset(
            "synthetic store", log, config, "temporal", [1]
        )
        groceries = DATA / "groceries" / "baskets.csv"
        if groceries.exists():
            options = LoadOptions(columns={"user_id": "order_id"}, cancel_prefix=None)
            log, _ = load_events(groceries, options)
            results["datasets"]["Groceries"] = run_dataset(
                "Groceries", log, config, "baskets", [1, 2, 3]
            )
        if not args.skip_scale:
            results["scale"] = scale_check(
                config, Path(tmp) / "scale", args.scale_items, args.scale_users
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    plot(results, Path(args.png))
    print(f"\nwritten {args.out} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
