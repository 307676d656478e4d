"""Progress bars that show on a terminal and stay quiet in CI or when output is piped."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm


def progress_enabled() -> bool:
    if os.environ.get("RECSVC_PROGRESS") in ("0", "false", "no"):
        return False
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
