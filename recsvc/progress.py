"""Progress bars that show on a terminal and stay quiet in CI or when output is piped."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from tqdm import tqdm

OFF = ("0", "false", "no", "off")
AUTO = ("", "1", "true", "yes", "on", "auto")  # on a terminal only, as without the variable
log = logging.getLogger(__name__)
_warned: set[str] = set()


def progress_enabled() -> bool:
    value = os.environ.get("RECSVC_PROGRESS", "").strip().lower()
    if value in OFF:
        return False
    if value not in AUTO and value not in _warned:  # a typo is said once, not ignored
        _warned.add(value)
        log.warning("RECSVC_PROGRESS: unknown value; progress bars show on a terminal only",
                    extra={"value": value[:20], "off": "|".join(OFF)})
    if os.environ.get("CI"):
        return False
    return sys.stderr.isatty()


def progress(**kwargs: Any) -> tqdm:
    """A tqdm bar on stderr, disabled off a terminal."""
    kwargs.setdefault("disable", not progress_enabled())
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(**kwargs)
