"""Structured logging: one line per record, `key=value` fields after the message.

Library code logs with `log.info("what happened", extra={"field": value})`. Customer ids,
tokens and passwords are never passed as fields.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    """`2026-11-25T12:00:00 INFO recsvc.events events loaded rows_read=10 ...`"""

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        text = (
            f"{self.formatTime(record, '%Y-%m-%dT%H:%M:%S')} {record.levelname} "
            f"{record.name} {record.getMessage()}"
        )
        for key, value in fields.items():
            rendered = json.dumps(value, default=str) if not isinstance(value, str) else value
            if isinstance(value, str) and (" " in value or not value):
                rendered = json.dumps(value)
            text += f" {key}={rendered}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of the record (tests swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def setup_logging(level: str | None = None) -> None:
    """Configure the root logger once (level from RECSVC_LOG_LEVEL, default WARNING)."""
    given = level or os.environ.get("RECSVC_LOG_LEVEL") or "WARNING"
    level = given.strip().upper()
    if level not in LEVELS:
        from recsvc.errors import InvalidInput

        raise InvalidInput(
            "--log-level", f"'{given}' is not one of {', '.join(LEVELS)} (or $RECSVC_LOG_LEVEL)"
        )
    root = logging.getLogger()
    if any(isinstance(h.formatter, KeyValueFormatter) for h in root.handlers):
        root.setLevel(level)
        return
    handler = _StderrHandler()
    handler.setFormatter(KeyValueFormatter())
    root.addHandler(handler)
    root.setLevel(level)


def error_frames(error: BaseException, depth: int = 6) -> str:
    """Where an error happened (`file:line:function`, innermost last), without its message,
    which may quote customer ids or request data: what logs say of an unexpected error."""
    frames = traceback.extract_tb(error.__traceback__)[-depth:]
    return " > ".join(f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}" for f in frames)
