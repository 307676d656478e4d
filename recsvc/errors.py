"""Error hierarchy raised by the domain layer.

The CLI (recsvc.cli) and the gRPC servicers map these to exit codes and status codes, each in
one place.
"""

from __future__ import annotations


class RecsvcError(Exception):
    """Base of every error recsvc raises on purpose."""

    exit_code = 1


class InvalidInput(RecsvcError):
    """A value given by the caller is unusable; names the field and the reason."""

    exit_code = 2

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(RecsvcError):
    """A user, item, bundle, version or key does not exist."""

    exit_code = 3


class BundleFormatError(RecsvcError):
    """A bundle is missing, corrupt, or written in a format this version cannot read."""

    exit_code = 4


class TooManyBadRows(RecsvcError):
    """More rows were unusable than --max-bad-rows allows."""

    exit_code = 5


class StoreUnavailable(RecsvcError):
    """The feature store cannot be reached or answered too slowly."""

    exit_code = 6


class Unauthenticated(RecsvcError):
    """A caller presented no valid credentials."""

    exit_code = 7
