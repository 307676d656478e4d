"""Offline evaluation: fit each model on a split's training matrix, rank through the one scoring
path (`recsvc.ranking.rank_users`, seen items excluded), and compute the ranking metrics.

Users with no held-out items are skipped and counted, and so are users with held-out items but
no history to score them from (cold users: every model would answer with the same fallback).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Self

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import scipy.sparse as sp

from recsvc.config import TrainConfig
from recsvc.errors import InvalidInput
from recsvc.events import EventLog
from recsvc.matrix import binarize
from recsvc.ranking import rank_users
from recsvc.scorers import FactorScorer
from training.evaluation.metrics import METRICS, all_metrics
from training.evaluation.splits import Split, split_log
from training.models import MODELS, build_model
from training.models.base import Recommender

log = logging.getLogger(__name__)

LIBRARY_ALS = "als-defaults"


class LibraryDefaultALS(Recommender):
    """implicit's AlternatingLeastSquares exactly at its library defaults, on the binary matrix.

    Only `random_state` is passed (a seed is not a quality setting; it makes runs repeatable).
    """

    name = LIBRARY_ALS

    def __init__(self, seed: int = 42) -> None:
        super().__init__()
        self.seed = seed
        self.settings: dict[str, Any] = {}
        self.user_factors = np.zeros((0, 0), dtype=np.float32)
        self.item_factors = np.zeros((0, 0), dtype=np.float32)

    @classmethod
    def from_config(cls, config: TrainConfig, **overrides: Any) -> Self:
        return cls(**overrides)

    def _fit(self, interactions: sp.csr_matrix) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        model = AlternatingLeastSquares(random_state=self.seed)
        model.fit(binarize(interactions), show_progress=False)
        self.settings = {
            "factors": model.factors,
            "regularization": model.regularization,
            "alpha": model.alpha,
            "iterations": model.iterations,
        }
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)

    def scorer(self) -> FactorScorer:
        return FactorScorer(
            self.user_factors,
            self.item_factors,
            regularization=float(self.settings.get("regularization", 0.01)),
            alpha=float(self.settings.get("alpha", 1.0)),
        )

    def params(self) -> dict[str, Any]:
        return {"library_defaults": True, **self.settings}


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model of an evaluation run."""

    label: str
    build: Callable[[], Recommender]
    binary: bool = False  # fit and score on the binary matrix instead of the weighted one


def model_specs(names: Sequence[str], config: TrainConfig, seed: int = 42) -> list[ModelSpec]:
    """Specs for model names (MODELS, plus `als-defaults`); InvalidInput for unknown ones."""
    specs: list[ModelSpec] = []
    for name in names:
        if name == LIBRARY_ALS:
            specs.append(ModelSpec(name, partial(LibraryDefaultALS, seed), binary=True))
        elif name in MODELS:
            specs.append(ModelSpec(name, partial(build_model, name, config)))
        else:
            known = ", ".join([*MODELS, LIBRARY_ALS])
            raise InvalidInput("--models", f"unknown model '{name}' (one of {known})")
    return specs


@dataclass
class EvalUsers:
    """Which users one split evaluates, and who was skipped."""

    rows: np.ndarray  # user indexes evaluated
    known: np.ndarray  # their index in the fitted model, -1 when training never saw them
    skipped: dict[str, int] = field(default_factory=dict)


def eval_users(split: Split) -> EvalUsers:
    has_test = np.diff(split.test.indptr) > 0
    has_history = np.diff(split.history.indptr) > 0
    in_train = np.diff(split.train.indptr) > 0
    rows = np.flatnonzero(has_test & has_history)
    skipped = {
        "no test items": int((~has_test & has_history).sum()),
        "no history (cold)": int((has_test & ~has_history).sum()),
    }
    known = np.where(in_train[rows], rows, -1).astype(np.int64)
    return EvalUsers(rows=rows, known=known, skipped=skipped)


def rank_matrix(scorer: Any, history: sp.csr_matrix, users: np.ndarray, k: int) -> np.ndarray:
    """(len(users), k) item indexes from rank_users, -1 padded, history items excluded."""
    # a batch's dense score block stays near 20M floats whatever the catalogue size
    batch_size = int(max(1, min(1024, 20_000_000 // max(history.shape[1], 1))))
    ranked = np.full((history.shape[0], k), -1, dtype=np.int64)
    for row, answer in rank_users(
        scorer, history, users, k, exclude=history, batch_size=batch_size
    ):
        items = [scored.item for scored in answer.items]
        ranked[row, : len(items)] = items
    return ranked


@dataclass
class ModelResult:
    model: str
    metrics: dict[str, float]
    fit_seconds: float
    rank_seconds: float
    users: int
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            **{name: round(value, 6) for name, value in self.metrics.items()},
            "fit_seconds": round(self.fit_seconds, 3),
            "rank_seconds": round(self.rank_seconds, 3),
            "users": self.users,
            "params": self.params,
        }


def evaluate_split(split: Split, specs: Sequence[ModelSpec], k: int = 10) -> list[ModelResult]:
    """Fit and rank every model on one split; metrics over the evaluated users."""
    users = eval_users(split)
    history = split.history[users.rows]
    test = split.test[users.rows]
    results: list[ModelResult] = []
    for spec in specs:
        model = spec.build()
        train = binarize(split.train) if spec.binary else split.train
        model.fit(train)
        started = time.perf_counter()
        shown = binarize(history) if spec.binary else history
        ranked = rank_matrix(model.scorer(), shown, users.known, k)
        rank_seconds = time.perf_counter() - started
        metrics = all_metrics(ranked, test, k) if len(users.rows) else dict.fromkeys(METRICS, 0.0)
        results.append(
            ModelResult(spec.label, metrics, model.fit_seconds, rank_seconds, len(users.rows),
                        model.params())
        )
        log.info("model evaluated", extra={"model": spec.label, **metrics})
    return results


@dataclass
class EvalReport:
    """Per-seed results and their mean and spread (population standard deviation)."""

    protocol: dict[str, Any]
    runs: list[dict[str, Any]]  # one per seed: seed, skipped users, per-model results
    summary: dict[str, dict[str, float]]  # model -> metric -> mean; metric_std -> spread

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "summary": self.summary, "runs": self.runs}


def evaluate(
    log_: EventLog,
    models: Sequence[str],
    config: TrainConfig,
    split: str = "random",
    test_ratio: float = 0.25,
    seeds: Sequence[int] = (42,),
    k: int = 10,
) -> EvalReport:
    """The whole protocol: for each seed split, fit and score every model; average over seeds."""
    if k < 1:
        raise InvalidInput("--k", f"must be at least 1, got {k}")
    if not models:
        raise InvalidInput("--models", "name at least one model")
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        parts = split_log(log_, split, test_ratio, seed, config.events)
        users = eval_users(parts)
        results = evaluate_split(parts, model_specs(models, config, seed), k)
        runs.append(
            {
                "seed": seed,
                "users_evaluated": int(len(users.rows)),
                "users_skipped": users.skipped,
                "dropped": parts.counts,
                "train_interactions": int(parts.train.nnz),
                "test_interactions": int(parts.test.nnz),
                "results": [r.to_dict() for r in results],
            }
        )
    protocol = {
        "split": split,
        "test_ratio": test_ratio,
        "seeds": list(seeds),
        "k": k,
        "users": len(log_.users),
        "items": len(log_.items),
        "events": len(log_),
        "metrics": "precision/recall/ndcg/map(=map_at_k)/map_all(=map)/hit_rate at k as in "
        "Microsoft Recommenders; coverage = distinct recommended items / items",
    }
    return EvalReport(protocol=protocol, runs=runs, summary=summarise(runs))


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and population std over seeds of every numeric field, per model."""
    per_model: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for result in run["results"]:
            per_model.setdefault(result["model"], []).append(result)
    summary: dict[str, dict[str, float]] = {}
    for model, results in per_model.items():
        fields = [*METRICS, "fit_seconds", "rank_seconds"]
        entry: dict[str, float] = {}
        for name in fields:
            values = np.array([r[name] for r in results], dtype=np.float64)
            entry[name] = round(float(values.mean()), 6)
            entry[f"{name}_std"] = round(float(values.std()), 6)
        summary[model] = entry
    return summary


def format_table(report: EvalReport) -> str:
    """The summary as a fixed-width text table (mean, and ± spread over several seeds)."""
    k = report.protocol["k"]
    several = len(report.protocol["seeds"]) > 1
    columns = [
        ("precision", f"P@{k}"), ("recall", f"R@{k}"), ("ndcg", f"nDCG@{k}"),
        ("map", f"MAP@{k}"), ("map_all", "MAP"), ("hit_rate", f"HR@{k}"),
        ("coverage", "cover"), ("fit_seconds", "fit s"),
    ]  # fmt: skip
    width = 16 if several else 8
    name_width = max([5, *(len(m) for m in report.summary)])
    lines = ["model".ljust(name_width) + "".join(t.rjust(width) for _, t in columns)]
    for model, entry in report.summary.items():
        cells = []
        for name, _ in columns:
            digits = 2 if name == "fit_seconds" else 4
            cell = f"{entry[name]:.{digits}f}"
            if several:
                cell += f" ±{entry[name + '_std']:.{digits}f}"
            cells.append(cell.rjust(width))
        lines.append(model.ljust(name_width) + "".join(cells))
    return "\n".join(lines)
