"""Real-time quality benchmark: does what a shopper just did, folded in by the server, make
the next answer better, and which way of re-ranking does it best?

Protocol (top-10, through serving's RecommendationService on the embedded store: the code of
Recommend and RecordEvent minus gRPC; items seen in training and in the visit are excluded
from answers and from the targets, as Recommend excludes them):
- synthetic store (recsvc.synth, views/carts/purchases): events up to the 80% time quantile
  train the model, except those of a random 20% of shoppers, who arrive as new visitors; a
  shopper with later events records the first `--session` of them (RecordEvent, with their
  own type and time), then Recommend is scored against the items of their remaining later
  events. Shoppers without training events are visitors (cold start).
- MovieLens 100k: the same, each rating recorded as a view (the weight training gives a row
  without an event type).
- Groceries: the last 25% of baskets are visitors; half of each basket (seeded draw) is
  recorded, the answer is scored against the other half (basket completion, as quality.py).

Each answer is scored twice: before the events are recorded (static: the trained candidates;
popularity for a visitor; the visit's items excluded by the request's filter, as they are from
the targets) and after (real time), for each re-ranking under test (`[serve] realtime_ranking`).

Writes benchmarks/results/realtime.json and realtime.png. Run: `python benchmarks/realtime.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recsvc.bundle import Bundle  # noqa: E402
from recsvc.commands.bench import environment  # noqa: E402
from recsvc.config import load_train_config  # noqa: E402
from recsvc.store import open_store  # noqa: E402
from serving.config import load_serve_config  # noqa: E402
from serving.domain import EventQuery, RecommendationService, RecommendQuery  # noqa: E402
from serving.filters import FilterSpec  # noqa: E402
from training.evaluation.metrics import all_metrics, ndcg_at_k  # noqa: E402
from training.pipeline import train  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
METRICS = ("recall", "ndcg", "hit_rate", "precision")
MIN_GROUP = 20  # visits a group needs to be reported
VISITOR_SHARE = 0.2  # shoppers left out of training altogether: new visitors at the cut


@dataclass(frozen=True)
class Visit:
    """What one shopper shows the server, and what they went on to interact with."""

    user_id: str
    events: tuple[tuple[str, str, float], ...]  # (item_id, event_type, epoch s), oldest first
    targets: tuple[str, ...]  # item ids
    known: bool  # the shopper has training events


@dataclass(frozen=True)
class Case:
    name: str
    train: pd.DataFrame  # the training rows, written as the events CSV
    visits: list[Visit]
    items: Path | None = None


def temporal_case(name: str, frame: pd.DataFrame, session: int, quantile: float,
                  max_visits: int, seed: int, items: Path | None = None) -> Case:
    """Rows up to the time quantile train, except those of a random VISITOR_SHARE of shoppers
    (new visitors at the cut); each shopper with more than `session` later rows records the
    first `session` of them and is scored on the items of the rest."""
    cut = float(np.quantile(frame["ts"], quantile))
    rng = np.random.default_rng(seed)
    users = frame["user_id"].drop_duplicates().to_numpy()
    newcomers = set(rng.choice(users, int(len(users) * VISITOR_SHARE), replace=False).tolist())
    train_rows = frame[(frame["ts"] <= cut) & ~frame["user_id"].isin(newcomers)]
    later = frame[frame["ts"] > cut].sort_values(["user_id", "ts"], kind="stable")
    trained_users = set(train_rows["user_id"])
    seen = train_rows.groupby("user_id")["item_id"].agg(set).to_dict()
    visits = []
    for user, rows in later.groupby("user_id", sort=False):
        shown = rows.iloc[:session]
        rest = rows.iloc[session:]
        exclude = seen.get(user, set()) | set(shown["item_id"])
        targets = tuple(dict.fromkeys(i for i in rest["item_id"] if i not in exclude))
        if len(shown) < session or not targets:
            continue
        events = tuple(zip(shown["item_id"], shown["event_type"], shown["ts"].astype(float),
                           strict=True))
        visits.append(Visit(str(user), events, targets, user in trained_users))
    if len(visits) > max_visits:
        visits = [visits[i] for i in sorted(rng.choice(len(visits), max_visits, replace=False))]
    columns = [c for c in train_rows.columns if c != "ts"]
    return Case(name, train_rows[columns], visits, items)


def synthetic_case(session: int, max_visits: int, seed: int, directory: Path,
                   users: int = 6_000, items: int = 1_500) -> Case:
    from recsvc.synth import SynthConfig, generate, write

    clusters = min(12, items // 20)
    store = generate(SynthConfig(users=users, items=items, days=90, seed=seed, clusters=clusters))
    paths = write(store, directory, fmt="csv")
    frame = pd.read_csv(paths["events"], dtype=str, keep_default_na=False)
    stamps = pd.to_datetime(frame["timestamp"], utc=True)
    frame["ts"] = (stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return temporal_case("synthetic store", frame, session, 0.8, max_visits, seed, paths["items"])


def movielens_case(session: int, max_visits: int, seed: int) -> Case:
    frame = pd.read_csv(DATA / "ml-100k" / "ratings.csv", dtype=str)
    frame["ts"] = frame["timestamp"].astype("int64")
    frame["event_type"] = "view"
    case = temporal_case("MovieLens 100k", frame, session, 0.8, max_visits, seed,
                         DATA / "ml-100k" / "items.csv")
    # training rows keep no event_type column: a rating is an interaction, as in quality.py
    return Case(case.name, case.train.drop(columns=["event_type"]), case.visits, case.items)


def groceries_case(max_visits: int, seed: int) -> Case:
    frame = pd.read_csv(DATA / "groceries" / "baskets.csv", dtype=str)
    orders = frame["order_id"].drop_duplicates().tolist()
    hidden = set(orders[int(len(orders) * 0.75):])
    train_rows = frame[~frame["order_id"].isin(hidden)].rename(columns={"order_id": "user_id"})
    rng = np.random.default_rng(seed)
    visits = []
    now = time.time()
    for order, rows in frame[frame["order_id"].isin(hidden)].groupby("order_id", sort=False):
        basket = list(dict.fromkeys(rows["item_id"]))
        if len(basket) < 2:
            continue
        rng.shuffle(basket)
        half = len(basket) // 2
        events = tuple((item, "view", now + i) for i, item in enumerate(basket[:half]))
        visits.append(Visit(f"visitor-{order}", events, tuple(basket[half:]), False))
    if len(visits) > max_visits:
        visits = [visits[i] for i in sorted(rng.choice(len(visits), max_visits, replace=False))]
    return Case("Groceries", train_rows, visits)


def scored_answers(service: RecommendationService, visits: list[Visit], k: int,
                   record: bool) -> list[list[str]]:
    """Recommend for each visit: after recording its events when `record`, else with the
    visit's items excluded by the request's filter, as a storefront would hide what is in the
    cart (the targets never hold them: a static answer must not waste slots on them)."""
    answers = []
    for visit in visits:
        query = RecommendQuery(visit.user_id, k)
        if record:
            for item, event_type, ts in visit.events:
                service.record_event(EventQuery(visit.user_id, item, event_type, ts))
        else:
            shown = frozenset(item for item, _, _ in visit.events)
            query = RecommendQuery(visit.user_id, k, FilterSpec(exclude_item_ids=shown))
        result = service.recommend(query)
        answers.append([entry.item_id for entry in result.items])
    return answers


def metrics(answers: list[list[str]], visits: list[Visit], index_of: Any, n_items: int,
            k: int) -> dict[str, float]:
    ranked = np.full((len(visits), k), -1, dtype=np.int64)
    rows, cols = [], []
    for row, (answer, visit) in enumerate(zip(answers, visits, strict=True)):
        for position, item in enumerate(answer[:k]):
            ranked[row, position] = index_of(item)
        for item in visit.targets:
            if (index := index_of(item)) >= 0:
                rows.append(row)
                cols.append(index)
    relevant = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                             shape=(len(visits), n_items))
    relevant.data[:] = 1.0  # a target twice counts once
    values = all_metrics(ranked, relevant, k)
    figures: dict[str, Any] = {name: round(float(values[name]), 6) for name in METRICS}
    figures["ndcg_per_visit"] = [ndcg_at_k(ranked[i : i + 1], relevant[i], k)
                                 for i in range(len(visits))]
    return figures


def paired_difference(after: list[float], before: list[float], seed: int,
                      resamples: int = 2000) -> dict[str, Any]:
    """Mean per-visit difference and its 95% bootstrap interval (visits resampled)."""
    difference = np.asarray(after) - np.asarray(before)
    rng = np.random.default_rng(seed)
    means = difference[rng.integers(0, len(difference), (resamples, len(difference)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": round(float(difference.mean()), 6), "ci95": [round(float(low), 6),
            round(float(high), 6)], "better": int((difference > 0).sum()),
            "worse": int((difference < 0).sum())}


def run_case(case: Case, rankings: list[str], k: int, work: Path, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    events = work / f"{uuid.uuid4().hex[:8]}.csv"
    case.train.to_csv(events, index=False)
    config = load_train_config(None, {"rules.enabled": False}, environ={})
    result = train(events, work / "bundles", config, items=case.items)
    bundle = Bundle(result.path)
    out: dict[str, Any] = {
        "train_rows": len(case.train),
        "default_model": config.default_recommender,
        "visits": len(case.visits),
        "known_visits": sum(v.known for v in case.visits),
        "train_seconds": round(time.perf_counter() - started, 1),
        "groups": {},
    }
    groups = {"known shoppers": [v for v in case.visits if v.known],
              "visitors": [v for v in case.visits if not v.known]}
    for ranking in ["static", *rankings]:
        store = open_store(f"memory://realtime-bench-{uuid.uuid4().hex[:8]}")
        store.publish(bundle, progress=False)
        overrides = {"warm_users": False, "insecure_no_auth": True}
        if ranking != "static":
            overrides["realtime_ranking"] = ranking
        service = RecommendationService(store, load_serve_config(None, overrides, environ={}))
        service.start()
        try:
            model = service.tracker.require()
            for group, visits in groups.items():
                if len(visits) < MIN_GROUP:
                    continue
                calls = time.perf_counter()
                answers = scored_answers(service, visits, k, record=ranking != "static")
                seconds = time.perf_counter() - calls
                figures = metrics(answers, visits, model.catalog.index_of, model.n_items, k)
                figures["ms_per_visit"] = round(1000 * seconds / len(visits), 3)
                table = out["groups"].setdefault(group, {"visits": len(visits)})
                if ranking != "static":
                    figures["ndcg_vs_static"] = paired_difference(
                        figures["ndcg_per_visit"], table["static"]["ndcg_per_visit"], seed)
                table[ranking] = figures
        finally:
            service.stop()
    print(f"\n== {case.name}: {out['visits']} visits ({out['known_visits']} known), "
          f"{out['train_rows']} training rows ==")
    for group, table in out["groups"].items():
        print(f"  {group} ({table['visits']}):")
        for ranking, figures in table.items():
            if ranking != "visits":
                versus = figures.get("ndcg_vs_static")
                print(f"    {ranking:<10} " + "  ".join(f"{m} {figures[m]:.4f}" for m in METRICS)
                      + f"  {figures['ms_per_visit']:.2f} ms/visit" + (
                          f"  nDCG vs static {versus['mean']:+.4f} [{versus['ci95'][0]:+.4f}, "
                          f"{versus['ci95'][1]:+.4f}]" if versus else ""))
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, group, table) for name, case in results["datasets"].items()
              for group, table in case["groups"].items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, group, table) in zip(axes[0], panels, strict=True):
        rankings = [r for r in table if r != "visits"]
        values = [table[r]["ndcg"] for r in rankings]
        ax.bar(range(len(rankings)), values, color=["#999"] + ["#3a7"] * (len(rankings) - 1))
        ax.set_xticks(range(len(rankings)), rankings, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{name}\n{group} ({table['visits']})", fontsize=9)
        ax.set_ylabel("nDCG@10" if ax is axes[0][0] else "")
    fig.suptitle("Recommend after a shopper's newest events: nDCG@10 by re-ranking", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rankings", default="anchored,factors",
                        help="comma-separated [serve] realtime_ranking values to compare")
    parser.add_argument("--session", type=int, default=2, help="events recorded per shopper")
    parser.add_argument("--max-visits", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--datasets", default="synthetic,movielens,groceries")
    parser.add_argument("--synth-users", type=int, default=6_000)
    parser.add_argument("--synth-items", type=int, default=1_500)
    parser.add_argument("--out", type=Path, default=RESULTS / "realtime.json")
    parser.add_argument("--plot", type=Path, default=RESULTS / "realtime.png")
    args = parser.parse_args(argv)
    rankings = [r.strip() for r in args.rankings.split(",") if r.strip()]
    wanted = {d.strip() for d in args.datasets.split(",")}
    results: dict[str, Any] = {
        **environment(),  # date, machine (cores, memory, load average), versions, commit
        "rankings": rankings,
        "protocol": __doc__.split("Protocol")[1].split("Writes")[0].strip(),
        "session_events": args.session, "k": args.k, "seed": args.seed, "datasets": {},
    }
    with tempfile.TemporaryDirectory(prefix="recsvc-realtime-") as tmp:
        work = Path(tmp)
        cases = []
        if "synthetic" in wanted:
            (work / "synth").mkdir()
            cases.append(synthetic_case(args.session, args.max_visits, args.seed, work / "synth",
                                        args.synth_users, args.synth_items))
        if "movielens" in wanted and (DATA / "ml-100k").exists():
            cases.append(movielens_case(args.session, args.max_visits, args.seed))
        if "groceries" in wanted and (DATA / "groceries").exists():
            cases.append(groceries_case(args.max_visits, args.seed))
        for case in cases:
            results["datasets"][case.name] = run_case(case, rankings, args.k, work, args.seed)
    for case in results["datasets"].values():
        for table in case["groups"].values():
            for figures in table.values():
                if isinstance(figures, dict):
                    figures.pop("ndcg_per_visit", None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.plot)
    print(f"\nresults: {args.out}, plot: {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
