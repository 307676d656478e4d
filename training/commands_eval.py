"""`recsvc eval` and `recsvc tune`: offline evaluation and hyper-parameter search from the CLI.

Heavy imports stay inside the command functions so `recsvc --help` stays quick.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recsvc.commands.common import (
    add_event_flags,
    check_output_file,
    load_options,
    take_config_max_bad_rows,
)
from recsvc.errors import InvalidInput

if TYPE_CHECKING:
    from recsvc.config import TrainConfig

DEFAULT_EVAL_MODELS = "popular,als-defaults,als,ease,itemknn"
MAX_K = 1000  # list lengths beyond a storefront's; scores are kept per user x k
EVAL_SEED = 42  # eval's split seed when neither --seed nor --seeds is given


def _parse_seeds(text: str | None, fallback: int) -> list[int]:
    if not text:
        return [fallback]
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InvalidInput("--seeds", f"'{text}' is not a comma-separated list of integers") from None
    if not seeds:
        raise InvalidInput("--seeds", "give at least one seed")
    if any(not 0 <= seed < 2**32 for seed in seeds):
        raise InvalidInput("--seeds", f"seeds must be between 0 and 2^32 - 1, got {text}")
    return seeds


def _models(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise InvalidInput("--models", "name at least one model")
    return names


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    add_event_flags(parser)  # --events, --format, --columns, --event-type, --time-format, ...
    parser.add_argument(
        "--split", default="random", help="random | temporal | leave-last | baskets (default random)"
    )
    parser.add_argument("--test-ratio", type=float, default=0.25, help="held-out share (0.25)")
    parser.add_argument("--k", type=int, default=10, help="list length (10)")
    parser.add_argument("--config", default=None, help="TOML config (as for recsvc train)")


def register(subparsers: Any) -> None:
    evaluate = subparsers.add_parser(
        "eval",
        help="offline evaluation: split a log, fit models, rank, and report top-k metrics",
        description="Split the log (per-user random, temporal cut, leave-last, or basket "
        "completion), fit each model on the training part, rank through the serving code path "
        "with seen items removed, and report precision/recall/nDCG/MAP/hit rate@k, catalog "
        "coverage and fit time. Metrics follow Microsoft Recommenders' definitions.",
    )
    _add_data_arguments(evaluate)
    evaluate.add_argument("--seed", type=int, default=None, help=f"split seed ({EVAL_SEED})")
    evaluate.add_argument(
        "--seeds", default=None,
        help="several split seeds, e.g. 1,2,3,4,5: mean and spread (instead of --seed)",
    )
    evaluate.add_argument(
        "--models", default=DEFAULT_EVAL_MODELS,
        help=f"comma-separated (default {DEFAULT_EVAL_MODELS}; also bpr, blend)",
    )  # fmt: skip
    evaluate.add_argument("--out", default=None, help="write the full results as JSON here")
    evaluate.set_defaults(func=run_eval)

    tune_parser = subparsers.add_parser(
        "tune",
        help="seeded hyper-parameter search on validation splits carved from the log",
        description="Treat the whole log as training data: carve validation splits from it, "
        "search each model's parameters (seeded random search or grid), and write the best ones "
        "as a TOML config for `recsvc train --config`.",
    )
    _add_data_arguments(tune_parser)
    tune_parser.add_argument("--models", default="ease,itemknn", help="models to tune (ease,itemknn)")
    tune_parser.add_argument("--trials", type=int, default=20, help="trials per model (20)")
    tune_parser.add_argument("--seed", type=int, default=42, help="search seed (42)")
    tune_parser.add_argument(
        "--seeds", default="1", help="validation split seeds, e.g. 1,2 (default 1)"
    )
    tune_parser.add_argument("--search", default="random", help="random | grid (random)")
    tune_parser.add_argument("--objective", default="ndcg", help="metric to maximise (ndcg)")
    tune_parser.add_argument(
        "--tune-events", action="store_true", help="also search events.rating_weight"
    )
    tune_parser.add_argument("--out", required=True, help="TOML file to write")
    tune_parser.add_argument("--report", default=None, help="also write every trial as JSON")
    tune_parser.set_defaults(func=run_tune)


def _load(args: argparse.Namespace, config: TrainConfig) -> Any:
    """The log as `recsvc train` would read it with this config (its event types and
    cancellation prefix); InvalidInput when no usable row is left."""
    from recsvc.events import load_events
    from training.pipeline import effective_load_options

    take_config_max_bad_rows(args, config)  # as train does
    log, report = load_events(args.events, effective_load_options(load_options(args), config))
    if len(log) == 0:  # the reasons go in the one error line
        what = "tune on" if getattr(args, "command", None) == "tune" else "evaluate"
        worst_first = sorted(report.bad_rows.items(), key=lambda kv: -kv[1])
        reasons = ", ".join(f"{count} {reason}" for reason, count in worst_first)
        raise InvalidInput(
            "--events",
            f"no usable rows ({report.rows_read} read" + (f"; bad: {reasons}" if reasons else "")
            + f"): nothing to {what}",
        )
    for line in report.summary_lines():
        print(line, file=sys.stderr)
    return log


def _check_splits(args: argparse.Namespace, log: Any, config: Any, seeds: list[int]) -> None:
    """InvalidInput naming --split when a seed's split leaves nobody to evaluate, before any
    model is fitted (metrics averaged over nobody would read as a model scoring 0)."""
    from training.evaluation.evaluate import eval_users
    from training.evaluation.splits import split_log

    for seed in seeds:
        split = split_log(log, args.split, args.test_ratio, seed, config.events)
        if not len(eval_users(split).rows):
            raise _nobody_to_evaluate(args.split, seed)


def _nobody_to_evaluate(split: str, seed: int) -> InvalidInput:
    return InvalidInput(
        "--split",
        f"the {split} split (seed {seed}) leaves no user with both history and held-out items: "
        "nothing to evaluate",
    )


def _check_common(args: argparse.Namespace) -> None:
    from training.evaluation.splits import SPLITS

    if args.split not in SPLITS:
        raise InvalidInput("--split", f"'{args.split}' is not one of {', '.join(SPLITS)}")
    if not 0.0 < args.test_ratio < 1.0:
        raise InvalidInput("--test-ratio", f"must be between 0 and 1, got {args.test_ratio}")
    if not 1 <= args.k <= MAX_K:
        raise InvalidInput("--k", f"must be between 1 and {MAX_K}, got {args.k}")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise InvalidInput("--seed", f"must be between 0 and 2^32 - 1, got {args.seed}")


def run_eval(args: argparse.Namespace) -> int:
    from recsvc.config import load_train_config
    from training.evaluation.evaluate import evaluate, format_table, model_specs

    _check_common(args)
    if args.seed is not None and args.seeds:  # one would be ignored
        raise InvalidInput("--seed", f"give --seed or --seeds ({args.seeds}), not both")
    check_output_file(args.out, "--out")
    config = load_train_config(args.config)
    models = _models(args.models)
    model_specs(models, config)  # unknown names fail before the log is read
    seeds = _parse_seeds(args.seeds, EVAL_SEED if args.seed is None else args.seed)
    log = _load(args, config)
    _check_splits(args, log, config, seeds)
    report = evaluate(log, models, config, args.split, args.test_ratio, seeds, args.k)
    protocol = report.protocol
    print(
        f"{protocol['split']} split, test ratio {protocol['test_ratio']}, seeds "
        f"{','.join(map(str, seeds))}, k={args.k}: {protocol['users']} users, "
        f"{protocol['items']} items, {protocol['events']} events"
    )
    for run in report.runs:
        skipped = ", ".join(f"{n} {reason}" for reason, n in run["users_skipped"].items() if n)
        dropped = ", ".join(f"{n} {reason}" for reason, n in run["dropped"].items() if n)
        print(
            f"seed {run['seed']}: {run['users_evaluated']} users evaluated"
            + (f"; skipped: {skipped}" if skipped else "")
            + (f"; {dropped}" if dropped else "")
        )
    print(format_table(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        print(f"results written to {args.out}")
    return 0


def run_tune(args: argparse.Namespace) -> int:
    from recsvc.config import load_train_config
    from training.tune import Trial, check_search, tune, write_tuned

    _check_common(args)
    check_output_file(args.out, "--out")  # before the search, which may take hours
    check_output_file(args.report, "--report")
    config = load_train_config(args.config)  # a bad config fails before the log is read
    models = _models(args.models)
    check_search(models, args.trials, args.search, args.objective)  # before the log is read
    seeds = _parse_seeds(args.seeds, 1)
    log = _load(args, config)
    _check_splits(args, log, config, seeds)  # before the trials, which may take hours

    def show(trial: Trial) -> None:
        params = ", ".join(f"{k}={v}" for k, v in trial.params.items())
        print(f"{trial.model:8} {args.objective}@{args.k}={trial.score:.4f}  {params}", flush=True)

    result = tune(
        log, models, args.config, args.split, args.test_ratio, seeds, args.k, args.trials,
        args.seed, args.objective, args.tune_events, args.search, progress=show,
    )  # fmt: skip
    text = write_tuned(result, args.out)
    print(f"best: {result.best_model} ({args.objective}@{args.k} "
          f"{result.best[result.best_model].score:.4f}); config written to {args.out}")
    print(text, end="")
    if args.report:
        Path(args.report).write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0
