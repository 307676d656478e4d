"""The `recsvc` command line.

Each command lives in a module with a `register(subparsers)` function that adds its parser and
sets `func` (taking the parsed args, returning an exit code). Modules are listed here by name and
imported when the parser is built, so `recsvc` does not import `training` or `serving` at import
time; command modules keep heavy imports inside their functions.

Errors: a RecsvcError becomes one line on stderr and its exit code; nothing else is caught.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from recsvc.errors import RecsvcError

COMMAND_MODULES = (
    "recsvc.commands.synth",
    "training.commands",
    "training.commands_rules",
    "training.commands_commerce",
    "training.commands_eval",
    "recsvc.commands.recommend",
    "recsvc.commands.store",
    "serving.commands",
    "serving.commands_token",
    "recsvc.commands.bench",
    "recsvc.commands.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsvc", description="Recommendation and personalisation service for online stores."
    )
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING (default) ...")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a command module not written yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit warns otherwise
    from recsvc.logs import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except RecsvcError as exc:
        # one printable line, whatever a library put in the message
        message = " ".join("".join(c if c.isprintable() else " " for c in str(exc)).split())
        print(f"recsvc {args.command}: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"recsvc {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
