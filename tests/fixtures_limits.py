"""Run a command under a file-size limit, as a full disk or `ulimit -f` would stop it.

The limit is set by a small Python wrapper that then execs the command, not by
`subprocess.run(preexec_fn=...)`: preexec_fn makes subprocess fork this (multi-threaded) test
process and run Python in the child before exec, and the gRPC core loaded here by other tests
then ran its fork handlers in the child, which aborted (SIGABRT, "epoll_wait error: Bad file
descriptor") or printed an extra stderr line. Without preexec_fn, subprocess spawns without
running anything of this process in the child.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from typing import Any

# argv: limit in bytes, then the command; Python ignores SIGXFSZ, so a write past the limit
# fails with EFBIG (File too large) instead of killing the command
_WRAPPER = (
    "import os, resource, sys\n"
    "limit = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def run_with_file_size_limit(
    command: Sequence[str], limit_bytes: int, **options: Any
) -> subprocess.CompletedProcess[str]:
    """subprocess.run(command, capture_output=True, text=True, **options) with files limited to
    `limit_bytes`; command[0] must be a path (e.g. sys.executable)."""
    return subprocess.run(
        [sys.executable, "-c", _WRAPPER, str(limit_bytes), *command],
        capture_output=True, text=True, **options,
    )
