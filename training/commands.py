"""`recsvc train`: the nightly job from the command line."""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any

from recsvc.commands.common import add_event_flags, load_options, take_config_max_bad_rows

# The master URLs Spark itself accepts; anything else made Spark's launcher die with a
# JAVA_GATEWAY_EXITED traceback.
SPARK_MASTER = re.compile(
    r"local(\[(\d+|\*)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]|(spark|mesos)://\S+|yarn|k8s://\S+"
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train every model on an event log and write a versioned bundle",
        description="Load events (bad rows counted), fit the models and write a bundle.",
    )
    add_event_flags(parser)
    parser.add_argument("--items", help="items catalog: item_id, category, price, in_stock, title")
    parser.add_argument("--out", required=True, help="bundles directory (bundle goes in OUT/<version>)")
    parser.add_argument("--config", help="TOML config (see recsvc/defaults/train.toml)")
    parser.add_argument("--model", dest="default_recommender", help="default recommender")
    parser.add_argument("--candidates", type=int, help="top-N candidates per user for the store")
    parser.add_argument("--half-life-days", type=float, help="time decay of events (0: none)")
    parser.add_argument("--factors", type=int, help="ALS factors")
    parser.add_argument("--iterations", type=int, help="ALS iterations")
    parser.add_argument("--bpr", action="store_true", default=None, help="also fit BPR")
    for name in ("als", "ease", "itemknn", "rules", "buyagain", "segments"):
        parser.add_argument(f"--no-{name}", action="store_true", help=f"skip {name}")
    parser.add_argument(
        "--forget-list",
        default=None,
        help="customer ids to leave out: a file (one a line) or a store URL (its forget list)",
    )
    parser.add_argument("--engine", choices=["local", "spark"], default="local")
    parser.add_argument("--spark-master", default="local[2]")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from recsvc.config import load_train_config
    from recsvc.errors import InvalidInput

    overrides: dict[str, Any] = {
        "default_recommender": args.default_recommender,
        "candidates": args.candidates,
        "events.half_life_days": args.half_life_days,
        "als.factors": args.factors,
        "als.iterations": args.iterations,
        "bpr.enabled": args.bpr,
    }
    for name in ("als", "ease", "itemknn", "rules", "buyagain", "segments"):
        if getattr(args, f"no_{name}"):
            overrides[f"{name}.enabled"] = False
    if not args.out.strip():  # an unset shell variable: the bundles would land in the cwd
        raise InvalidInput("--out", "give the bundles directory (it is empty)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise InvalidInput("--out", f"{args.out} is a file, not a bundles directory")
    if args.engine == "spark" and not SPARK_MASTER.fullmatch(args.spark_master):
        raise InvalidInput(
            "--spark-master",
            f"'{args.spark_master}' is not a Spark master URL (local[2], local[*], "
            "spark://host:7077, yarn, k8s://https://host:port)",
        )
    config = load_train_config(args.config, overrides)
    take_config_max_bad_rows(args, config)
    options = load_options(args)
    if args.engine == "spark":
        try:
            from training.engines.spark import train_spark
        except ImportError as exc:
            raise InvalidInput("--engine", f"spark engine unavailable: {exc}") from None
        result = train_spark(
            args.events,
            args.out,
            config,
            items=args.items,
            load_options=options,
            master=args.spark_master,
            forget_list=args.forget_list,
        )
    else:
        from training.pipeline import train

        def on_step(name: str) -> None:
            print(f"  {name} ...", file=sys.stderr, flush=True)

        result = train(
            args.events,
            args.out,
            config,
            items=args.items,
            load_options=options,
            forget_list=args.forget_list,
            on_step=on_step if sys.stderr.isatty() else None,
        )
    for line in result.report.summary_lines():
        print(line)
    for note in result.report.notes:
        print(f"  note: {note}")
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    print(f"bundle {result.version} written to {result.path} ({counts})")
    total = sum(result.timings.values())
    print(f"trained in {total:.1f}s: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
    return 0
