"""`recsvc tune`: seeded hyper-parameter search on validation splits carved from training data.

The log given to the tuner is all training data: for each validation seed it is split again
(same method and ratio as an evaluation) into a fitting part and a validation part, so a test
set kept outside that log is never seen. Each model's first trial is its current configuration,
so the tuner never reports something worse than where it started. A blend is tuned last, over
its parts' weights, with every part at its best parameters of this run; its parts are fitted
once per validation split and re-weighted per trial.

The result is written as TOML with the sections of `recsvc.config.TrainConfig` that were tuned
plus `default_recommender` (the best model on validation), for `recsvc train --config`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsvc.config import TrainConfig, load_train_config, to_toml
from recsvc.errors import InvalidInput
from recsvc.events import EventLog
from recsvc.scorers import BlendScorer
from training.evaluation.evaluate import eval_users, evaluate_split, model_specs, rank_matrix
from training.evaluation.metrics import METRICS, all_metrics
from training.evaluation.splits import Split, split_log, training_rows
from training.models import MODELS, build_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Choice:
    values: tuple[Any, ...]

    def sample(self, rng: np.random.Generator) -> Any:
        return self.values[int(rng.integers(len(self.values)))]

    def grid(self) -> tuple[Any, ...]:
        return self.values


@dataclass(frozen=True)
class LogUniform:
    low: float
    high: float
    integer: bool = False

    def sample(self, rng: np.random.Generator) -> Any:
        value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return int(round(value)) if self.integer else float(f"{value:.4g}")

    def grid(self) -> tuple[Any, ...]:
        points = np.exp(np.linspace(math.log(self.low), math.log(self.high), 5))
        return tuple(int(round(p)) if self.integer else float(f"{p:.4g}") for p in points)


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> Any:
        return float(f"{rng.uniform(self.low, self.high):.3g}")

    def grid(self) -> tuple[Any, ...]:
        return tuple(float(f"{p:.3g}") for p in np.linspace(self.low, self.high, 5))


Param = Choice | LogUniform | Uniform

SEARCH_SPACES: dict[str, dict[str, Param]] = {
    "ease": {
        "ease.l2": LogUniform(50.0, 3000.0),
        "ease.column_norm": Uniform(0.0, 0.5),
        "ease.column_restore": Uniform(0.0, 0.3),
    },
    "itemknn": {
        "itemknn.similarity": Choice(("cosine", "jaccard", "lift")),
        "itemknn.neighbours": LogUniform(10, 500, integer=True),
        "itemknn.shrink": Choice((0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0)),
    },
    "als": {
        "als.factors": Choice((8, 16, 24, 32, 48, 64, 96, 128)),
        "als.regularization": LogUniform(0.01, 10.0),
        "als.alpha": LogUniform(0.5, 20.0),
        "als.iterations": Choice((10, 15, 25)),
    },
    "bpr": {
        "bpr.factors": Choice((16, 32, 64, 128)),
        "bpr.learning_rate": LogUniform(0.003, 0.1),
        "bpr.regularization": LogUniform(0.0003, 0.1),
        "bpr.iterations": Choice((50, 100, 200)),
    },
    "popular": {},
}
EVENTS_SPACE: dict[str, Param] = {"events.rating_weight": Choice((0.0, 0.05, 0.1, 0.2, 0.3))}
DEFAULT_BLEND_PARTS = ("ease", "als")


def _get(config: TrainConfig, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node


@dataclass
class Trial:
    model: str
    params: dict[str, Any]
    score: float
    metrics: dict[str, float]


@dataclass
class TuneResult:
    objective: str
    k: int
    best: dict[str, Trial] = field(default_factory=dict)  # model -> best trial
    trials: list[Trial] = field(default_factory=list)

    @property
    def best_model(self) -> str:
        return max(self.best.values(), key=lambda t: t.score).model

    def to_dict(self) -> dict[str, Any]:
        def trial(t: Trial) -> dict[str, Any]:
            return {"model": t.model, "params": t.params, "score": t.score, "metrics": t.metrics}

        return {
            "objective": f"{self.objective}@{self.k}",
            "best_model": self.best_model if self.best else None,
            "best": {name: trial(t) for name, t in self.best.items()},
            "trials": [trial(t) for t in self.trials],
        }


class Tuner:
    """Runs trials; keeps validation splits per events setting so trials share them."""

    def __init__(
        self,
        log_: EventLog,
        base: Callable[[dict[str, Any]], TrainConfig],
        split: str = "random",
        ratio: float = 0.25,
        seeds: Sequence[int] = (1,),
        k: int = 10,
        objective: str = "ndcg",
    ) -> None:  # `objective` is checked by check_search, which tune runs first
        if not seeds:
            raise InvalidInput("--seeds", "give at least one validation seed")
        self.log = log_
        self.base = base
        self.split = split
        self.ratio = ratio
        self.seeds = list(seeds)
        self.k = k
        self.objective = objective
        self._splits: dict[tuple[Any, ...], list[Split]] = {}

    def splits(self, config: TrainConfig) -> list[Split]:
        key = (repr(sorted(config.events.weights.items())), config.events.half_life_days,
               config.events.use_quantity, config.events.rating_weight)  # fmt: skip
        if key not in self._splits:
            self._splits[key] = [
                split_log(self.log, self.split, self.ratio, seed, config.events)
                for seed in self.seeds
            ]
        return self._splits[key]

    def _mean(self, per_split: list[dict[str, float]]) -> dict[str, float]:
        return {name: float(np.mean([m[name] for m in per_split])) for name in per_split[0]}

    def run_model(self, model: str, params: dict[str, Any]) -> Trial:
        config = self.base(params)
        per_split = []
        for split in self.splits(config):
            result = evaluate_split(split, model_specs([model], config), self.k)[0]
            per_split.append(result.metrics)
        metrics = self._mean(per_split)
        return Trial(model, params, metrics[self.objective], metrics)

    def run_blend(self, part_params: dict[str, Any], weight_trials: list[dict[str, float]]) -> list[Trial]:
        """Fit each part once per split, then score every weighting through a BlendScorer."""
        config = self.base(part_params)
        names = list(weight_trials[0])
        per_trial: list[list[dict[str, float]]] = [[] for _ in weight_trials]
        for split in self.splits(config):
            users = eval_users(split)
            history, test = split.history[users.rows], split.test[users.rows]
            scorers = {name: build_model(name, config).fit(split.train).scorer() for name in names}
            for index, weights in enumerate(weight_trials):
                parts = [(scorers[n], w) for n, w in weights.items() if w > 0]
                if not parts:
                    per_trial[index].append(dict.fromkeys(METRICS, 0.0))
                    continue
                ranked = rank_matrix(BlendScorer(parts), history, users.known, self.k)
                per_trial[index].append(all_metrics(ranked, test, self.k))
        trials = []
        for weights, per_split in zip(weight_trials, per_trial, strict=True):
            metrics = self._mean(per_split)
            params = {**part_params, **{f"blend.{n}": w for n, w in weights.items()}}
            trials.append(Trial("blend", params, metrics[self.objective], metrics))
        return trials


def _candidates(
    space: dict[str, Param], start: dict[str, Any], trials: int, rng: np.random.Generator,
    search: str,
) -> list[dict[str, Any]]:  # fmt: skip
    """The starting point, then `trials - 1` seeded random draws, or grid points: all of them
    in order when they fit in `trials`, else a seeded sample of them (in grid order), so that
    a short search still varies every parameter rather than the last ones only."""
    out = [dict(start)]
    if not space:
        return out
    if search == "grid":
        keys = list(space)
        grid = [
            candidate
            for combo in itertools.product(*(space[key].grid() for key in keys))
            if (candidate := dict(zip(keys, combo, strict=True))) != start
        ]
        if len(grid) > trials - 1:
            log.info("grid larger than the trials: a seeded sample of it",
                     extra={"grid_points": len(grid), "trials": trials})
            chosen = np.sort(rng.choice(len(grid), size=max(trials - 1, 0), replace=False))
            grid = [grid[i] for i in chosen]
        return out + grid
    while len(out) < trials:
        out.append({key: param.sample(rng) for key, param in space.items()})
    return out


def check_search(models: Sequence[str], trials: int, search: str, objective: str) -> None:
    """InvalidInput naming the flag of the first search setting `tune` cannot use (the command
    calls it before reading the log)."""
    if trials < 1:
        raise InvalidInput("--trials", f"must be at least 1, got {trials}")
    if search not in ("random", "grid"):
        raise InvalidInput("--search", f"'{search}' is not one of random, grid")
    if objective not in METRICS:
        raise InvalidInput("--objective", f"'{objective}' is not one of {', '.join(METRICS)}")
    for name in models:
        if name not in MODELS:
            raise InvalidInput("--models", f"unknown model '{name}' (one of {', '.join(MODELS)})")


def tune(
    log_: EventLog,
    models: Sequence[str],
    config_path: str | None = None,
    split: str = "random",
    ratio: float = 0.25,
    seeds: Sequence[int] = (1,),
    k: int = 10,
    trials: int = 20,
    seed: int = 42,
    objective: str = "ndcg",
    tune_events: bool = False,
    search: str = "random",
    progress: Callable[[Trial], None] | None = None,
) -> TuneResult:
    """Search each model's space (the blend last); the best trial per model by `objective`."""
    check_search(models, trials, search, objective)

    def base(params: dict[str, Any]) -> TrainConfig:
        return load_train_config(config_path, overrides=params)  # RECSVC_TRAIN__* too, as train

    start_config = base({})
    tuner = Tuner(log_, base, split, ratio, seeds, k, objective)
    rng = np.random.default_rng(seed)
    result = TuneResult(objective=objective, k=k)
    best_params: dict[str, Any] = {}

    def record(trial: Trial) -> None:
        result.trials.append(trial)
        if trial.model not in result.best or trial.score > result.best[trial.model].score:
            result.best[trial.model] = trial
        if progress is not None:
            progress(trial)

    for name in [m for m in models if m != "blend"]:
        space = dict(SEARCH_SPACES.get(name, {}))
        if tune_events:
            space.update(EVENTS_SPACE)
        start = {key: _get(start_config, key) for key in space}
        for params in _candidates(space, start, trials, rng, search):
            record(tuner.run_model(name, params))
        best_params.update(
            {key: value for key, value in result.best[name].params.items()
             if not key.startswith("events.")}
        )  # fmt: skip

    if "blend" in models:
        parts = list(start_config.blend) or list(DEFAULT_BLEND_PARTS)
        space_b: dict[str, Param] = {name: Uniform(0.0, 1.0) for name in parts}
        start_w = {name: float(start_config.blend.get(name, 1.0)) for name in parts}
        weightings = _candidates(space_b, start_w, trials, rng, search)
        part_params = dict(best_params)
        if tune_events and result.best:
            leader = max(result.best.values(), key=lambda t: t.score)
            part_params.update({k_: v for k_, v in leader.params.items() if k_.startswith("events.")})
        for trial in tuner.run_blend(part_params, weightings):
            record(trial)
    return result


def tuned_config(result: TuneResult) -> dict[str, Any]:
    """The TOML tables for the tuned settings, plus default_recommender."""
    data: dict[str, Any] = {"default_recommender": result.best_model}
    leader = result.best[result.best_model]
    sources = list(result.best.values())
    for trial in sources:
        for dotted, value in trial.params.items():
            section, key = dotted.split(".", 1)
            if section == "events" and trial is not leader:
                continue  # one events setting for all: the winner's
            if section == "blend" and trial.model != "blend":
                continue
            if trial.model == "blend" and section != "blend" and section != "events":
                continue  # part parameters come from the parts' own best trials
            data.setdefault(section, {})[key] = value
    return data


def write_tuned(result: TuneResult, path: str) -> str:
    """Write the tuned settings as TOML to `path`; returns the text written."""
    header = (
        f"# recsvc tune: best {result.objective}@{result.k} on validation splits carved from the "
        f"training log\n# best model: {result.best_model}\n"
    )
    text = header + to_toml(tuned_config(result))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return text


def carve_training(log_: EventLog, split: str, ratio: float, seed: int) -> EventLog:
    """The training side of a split of `log_` (what a tuner may see when the rest is a test)."""
    return log_.mask(training_rows(log_, split, ratio, seed))
