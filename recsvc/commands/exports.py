"""Export files of the offline commands (recommend, buyagain, segments, rules), in one place.

- Written whole or not at all: a file is written beside its target and renamed into place when
  complete, so a failed export (a full disk, a file-size limit, an error half-way) leaves the
  previous file, or none, never a truncated one that a campaign tool would pick up. A killed
  export's partial file (customers' rows) is removed by the next export to that target.
- An export with no rows is still a valid file: a CSV header, a Parquet schema.
- `--store URL` (default `$RECSVC_STORE`): the store whose forget list an export of customers
  honours, read by one function for every such command.

Imports nothing from training or serving; pandas and pyarrow are imported inside the functions
(the CLI imports command modules whenever it builds its parser).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import glob
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from recsvc.commands.store import STORE_ENV

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

PARQUET_SUFFIXES = (".parquet", ".pq")


def is_parquet(path: str | Path) -> bool:
    """Whether an output file name asks for Parquet (else CSV)."""
    return Path(path).suffix.lower() in PARQUET_SUFFIXES


@contextlib.contextmanager
def replaced_when_complete(target: str | Path) -> Iterator[Path]:
    """Yield a path beside `target` to write to; rename it onto `target` when the block ends
    without an error, and delete it otherwise (the previous `target`, if any, is kept)."""
    target = Path(target)
    if not target.parent.is_dir():  # pandas would say so without an errno: name the target
        code = errno.ENOTDIR if target.parent.exists() else errno.ENOENT
        raise (NotADirectoryError if code == errno.ENOTDIR else FileNotFoundError)(
            code, os.strerror(code), str(target))
    # the process id keeps two exports to one target from writing into each other's file
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    _remove_orphan_partials(target)
    held = _hold(partial)
    try:
        yield partial
        partial.replace(target)
    except OSError as exc:
        if exc.filename is not None and Path(exc.filename) == partial:
            exc.filename = str(target)  # errors name the path the caller gave (--out)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # none was created
            partial.unlink()
        if held is not None:
            os.close(held)


def _hold(partial: Path) -> int | None:
    """Create `partial` and hold an exclusive lock on it for the export (the descriptor; None
    where the file system has no locks). The lock, which dies with its process, is what tells
    other exports that the file is being written: a writer in another PID namespace (a
    container sharing the volume) or on another host has a process id this one cannot see."""
    for _ in range(100):
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # another export testing whether it is an orphan: a moment
            os.close(fd)
            time.sleep(0.01)
            continue
        except OSError:
            os.close(fd)
            return None
        try:  # that export may have removed the file between its creation and the lock
            if os.stat(partial).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    return None


def _remove_orphan_partials(target: Path) -> None:
    """Delete the partial files of `target` left by exports that were killed (SIGKILL, power
    loss: no `finally` ran). They hold customers' recommendations, possibly of customers
    forgotten since, so they must not linger. A file whose writer still holds its lock
    (`_hold`) is kept; where the file system has no locks, one whose process still runs."""
    prefix = f".{target.name}."
    for path in target.parent.glob(f"{glob.escape(prefix)}*.partial"):  # a name may hold [ * ?
        pid_text = path.name[len(prefix):-len(".partial")]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails while its writer holds it
            except BlockingIOError:
                continue
            except OSError:  # no locks on this file system: the process id must do
                if _process_runs(int(pid_text)):
                    continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        finally:
            os.close(fd)


def _process_runs(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # alive under another user; or no pid at all
        return True
    return True


def write_frame(frame: pd.DataFrame, target: str | Path) -> None:
    """Write a whole frame to `target`, Parquet or CSV by its extension, whole or not at all."""
    with replaced_when_complete(target) as partial:
        if is_parquet(target):
            frame.to_parquet(partial, index=False)
        else:
            frame.to_csv(partial, index=False)


@contextlib.contextmanager
def frame_appender(target: str | Path, schema: pa.Schema) -> Iterator[Callable[[pd.DataFrame], None]]:
    """Yield a function that appends frames with `schema`'s columns to `target` (Parquet or
    CSV by its extension), which is renamed into place when the block completes.

    The schema is fixed before the first frame: a CSV header or a Parquet schema is written
    even when no frame comes, and a frame whose column is empty (read as floats) or of
    another type is cast to it. Raises pyarrow's ArrowInvalid when a value does not fit.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    with replaced_when_complete(target) as partial:
        if is_parquet(target):
            with pq.ParquetWriter(partial, schema) as writer:
                yield lambda frame: writer.write_table(
                    pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
                )
        else:
            with open(partial, "w", newline="", encoding="utf-8") as handle:
                handle.write(",".join(schema.names) + "\n")
                yield lambda frame: frame.to_csv(
                    handle, columns=schema.names, header=False, index=False
                )


def add_store_flag(parser: argparse.ArgumentParser) -> None:
    """The `--store URL` of a command that exports customers (default `$RECSVC_STORE`)."""
    parser.add_argument(
        "--store",
        default=os.environ.get(STORE_ENV) or None,
        help="feature store URL whose forget list to honour: customers forgotten after the "
        "bundle was trained are left out of the export (same ?hash_ids= and secret as the "
        f"store; default ${STORE_ENV})",
    )


def forgotten_customers(store_url: str, user_ids: Sequence[str]) -> set[str]:
    """The ids among `user_ids` on the forget list of the store at `store_url` (plain or
    hashed entries). Raises StoreUnavailable when the store cannot be read."""
    from recsvc.store import open_store

    store = open_store(store_url)
    try:
        return {u for u, gone in zip(user_ids, store.is_forgotten(user_ids), strict=True) if gone}
    finally:
        store.close()


def forgotten_note(store_url: str | None, left_out: int) -> str:
    """The summary's words on the forget list: how many were left out, or that it was not read."""
    if store_url:
        return f"{left_out} forgotten customers left out"
    return "no --store: customers forgotten after training are not checked"
