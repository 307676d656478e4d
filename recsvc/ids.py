"""Stable string <-> dense index maps for users, items and orders.

An index is assigned in order of first appearance and never changes while the map lives, so
chunks of a log can be mapped one after another.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd


class IdMap:
    """Maps external string ids to dense int32 indexes and back."""

    __slots__ = ("_index", "_ids")

    def __init__(self, ids: Iterable[str] = ()) -> None:
        self._ids: list[str] = []
        self._index: dict[str, int] = {}
        for value in ids:
            self.add(value)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, value: object) -> bool:
        return value in self._index

    def add(self, value: str) -> int:
        """Return the index of `value`, assigning the next one if it is new."""
        index = self._index.get(value)
        if index is None:
            index = len(self._ids)
            self._index[value] = index
            self._ids.append(value)
        return index

    def get(self, value: str, default: int = -1) -> int:
        return self._index.get(value, default)

    def id_of(self, index: int) -> str:
        return self._ids[index]

    @property
    def ids(self) -> Sequence[str]:
        return self._ids

    def encode(self, values: np.ndarray | pd.Series, grow: bool = True) -> np.ndarray:
        """Vectorised lookup: int32 indexes of `values` (-1 for unknown ones when not growing)."""
        codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
        if grow:
            return self.encode_codes(codes, np.asarray(uniques, dtype=object))
        mapped = np.fromiter(
            (self._index.get(u, -1) for u in uniques), dtype=np.int64, count=len(uniques)
        )
        return _expand(codes, mapped)

    def encode_codes(self, codes: np.ndarray, uniques: np.ndarray) -> np.ndarray:
        """int32 indexes of `uniques[codes]` (-1 where a code is -1), growing the map.

        For values already factorized (the loader's chunks): only the uniques that `codes`
        uses are added, in the order of `uniques`.
        """
        codes = np.asarray(codes)
        used = np.zeros(len(uniques), dtype=bool)
        used[codes[codes >= 0]] = True
        mapped = np.full(len(uniques), -1, dtype=np.int64)
        positions = np.flatnonzero(used)
        mapped[positions] = np.fromiter(
            (self.add(u) for u in uniques[positions].tolist()), dtype=np.int64, count=len(positions)
        )
        return _expand(codes, mapped)

    def decode(self, indexes: np.ndarray) -> list[str]:
        ids = self._ids
        return [ids[i] for i in np.asarray(indexes).tolist()]

    def to_array(self) -> np.ndarray:
        return np.asarray(self._ids, dtype=object)


def _expand(codes: np.ndarray, mapped: np.ndarray) -> np.ndarray:
    """int32 `mapped[codes]`, -1 where a code is -1 (a missing value)."""
    out = np.full(len(codes), -1, dtype=np.int32)
    valid = codes >= 0
    out[valid] = mapped[codes[valid]]
    return out


def read_id_lines(path: str | Path, flag: str, header: str = "user_id") -> list[str]:
    """The distinct ids of a text file, one a line, in file order: blank lines and surrounding
    spaces ignored, a first line equal to `header` taken for a header (a customer may be called
    that), a byte-order mark (Notepad, Excel "UTF-8") not part of the first id. InvalidInput
    naming `flag` when the file is missing or holds no id."""
    from recsvc.errors import InvalidInput

    file = Path(path)
    if not file.exists() or file.is_dir():  # a pipe or <(...) is fine
        raise InvalidInput(flag, f"'{path}' is not an existing file")
    ids = [line.strip() for line in file.read_text(encoding="utf-8-sig").splitlines()]
    if ids and ids[0] == header:
        ids = ids[1:]
    ids = [i for i in ids if i]
    if not ids:
        raise InvalidInput(flag, f"{path} holds no ids")
    return list(dict.fromkeys(ids))


def line_to_append(handle: IO[bytes], line: str) -> bytes:
    """The bytes that append `line` as a line of its own to the file open in `handle` (binary,
    appending; readable, unless it is a pipe, which has no last line to look at).

    A file whose last line has no line break (edited by hand or written by another tool) gets
    one first: appending straight after it would glue two ids or entries into one.
    """
    end = handle.seek(0, os.SEEK_END) if handle.readable() else 0
    if end:
        handle.seek(end - 1)
        if handle.read(1) not in (b"\n", b"\r"):
            return f"\n{line}\n".encode()
    return f"{line}\n".encode()
