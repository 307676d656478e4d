"""The `recsvc` command line.

Each command lives in a module with a `register(subparsers)` function that adds its parser and
sets `func` (taking the parsed args, returning an exit code). Modules are listed here by name and
imported when the parser is built, so `recsvc` does not import `training` or `serving` at import
time; command modules keep heavy imports inside their functions.

Errors: a RecsvcError becomes one line on stderr and its exit code; so do a usage error
(argparse's, exit 2, without the usage block) and a file the operating system refuses (a
directory where a file belongs, a missing parent directory, no permission, bytes that are not
UTF-8: exit 2, naming the flag whose path it is). Ctrl-C is one line and exit 130, at any point;
a reader of stdout that goes away (`recsvc ... | head -1`) ends the command quietly with 141, as
SIGPIPE ends a shell tool. Nothing else is caught: a traceback is a bug.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

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


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (sub-commands inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text: str) -> str:
    """One printable line, whatever a library put in the message."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


# Writing failed for want of room: disk full, quota, file-size limit (ulimit -f), read-only.
_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def _path_error(args: argparse.Namespace, exc: OSError) -> int:
    """One stderr line naming the flag of the path that failed, exit 2."""
    # a rename names its target second: that is the path the caller gave
    named = exc.filename2 if isinstance(exc.filename2, str) else exc.filename
    path = named if isinstance(named, str) else None
    flag = _path_flag(args, path)
    where = f"{flag}: {path}" if flag else str(path or "a file")
    reason = exc.strerror or type(exc).__name__
    print(f"recsvc {args.command}: error: {_one_line(f'{where}: {reason}')}", file=sys.stderr)
    return 2


def _path_flag(args: argparse.Namespace, path: str | None) -> str | None:
    """The flag whose value is `path` or a directory above it (None when no flag gave it)."""
    if not path:
        return None
    target = os.path.abspath(path)
    for name, value in vars(args).items():
        if isinstance(value, str) and value and "://" not in value:
            given = os.path.abspath(value)
            if target == given or target.startswith(given.rstrip(os.sep) + os.sep):
                return "--" + name.replace("_", "-")
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
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
    command = None
    try:
        parser = build_parser()  # imports the command modules: Ctrl-C may land here too
        args = parser.parse_args(argv)
        command = args.command
        if not getattr(args, "func", None):
            print("recsvc: error: give a command (see recsvc --help)", file=sys.stderr)
            return 2
        code = _run(args)
        sys.stdout.flush()  # a reader that went away shows here, not at interpreter exit
        return code
    except KeyboardInterrupt:
        print(f"recsvc{' ' + command if command else ''}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`recsvc ... | head -1`): stop quietly, as a shell tool does,
        # and keep the interpreter's final flush of stdout from failing again
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout without a file descriptor (tests)
            pass
        return 128 + int(signal.SIGPIPE)


def _warn_unknown_environment() -> None:
    """A RECSVC_* variable nothing reads (a typo) is said on stderr, once per command."""
    import logging

    from recsvc.config import unknown_environment

    for message in unknown_environment():
        logging.getLogger("recsvc.config").warning(message)


def _run(args: argparse.Namespace) -> int:
    """Run the command; its errors become one stderr line and an exit code."""
    from recsvc.logs import setup_logging

    try:
        setup_logging(args.log_level)
        _warn_unknown_environment()
        return int(args.func(args) or 0)
    except RecsvcError as exc:
        print(f"recsvc {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except (IsADirectoryError, NotADirectoryError, PermissionError, FileNotFoundError,
            FileExistsError) as exc:
        return _path_error(args, exc)
    except BrokenPipeError:
        raise
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            raise
        if exc.filename is None and getattr(args, "out", None):  # a write: the output
            exc.filename = str(args.out)
        return _path_error(args, exc)  # an output that no longer fits: say so in one line
    except UnicodeDecodeError as exc:
        print(f"recsvc {args.command}: error: input is not UTF-8 text ({_one_line(str(exc))})",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
