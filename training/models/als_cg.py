"""The conjugate-gradient step of implicit's ALS, compiled with numba.

Same algorithm as `implicit.cpu._als.least_squares_cg` (Takács et al.'s CG for implicit ALS:
start from the previous factors, a few CG steps on (YtY + reg I + Yt (C_u - I) Y) x = Yt C_u p_u,
confidence `c` for a positive entry, `|c|` for a negative one), with the same results up to
float rounding (tests compare the two). It differs in how memory is read: each row first
gathers the factor rows of its nonzeros into one contiguous block, so the 1 + cg_steps passes
over them read it in order (from cache for most rows), and the 64-wide dot products and
updates are compiled loops, where implicit calls BLAS `sdot` and `saxpy` once per nonzero per
pass; and rows are dealt to the threads in turn, so that the popular items do not all land on
one. On the 20M-event benchmark matrix (10M nonzeros, 200k users x 100k items, 64 factors) one
iteration takes 1.25-1.5 s against implicit's 3.7-4.4 s.

numba's workqueue thread pool (its layer when neither TBB nor OpenMP is installed) must not be
entered from two threads at once: calls are serialised by a lock. The compiled code is cached
next to this module (or in numba's user cache); where neither is writable it is compiled once
per process instead. Imports numpy, numba and implicit only.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import numba  # type: ignore[import-untyped]
import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from numba import njit, prange

_LOCK = threading.Lock()
_ONE = np.float32(1)  # an integer 1 would promote `c - 1` and the row updates to float64
# Per thread, the copy of one row's factor rows; a row with more nonzeros reads them in place.
BLOCK_BYTES = 64 << 20


@njit(fastmath=True, nogil=True, inline="always")  # type: ignore[untyped-decorator]
def _solve_row(
    u: int, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, X: np.ndarray,
    Y: np.ndarray, YtY: np.ndarray, cg_steps: int, block: np.ndarray, r: np.ndarray,
    p: np.ndarray, ap: np.ndarray,
) -> None:  # pragma: no cover - compiled; its reference is implicit's compiled least_squares_cg
    f = X.shape[1]
    start = indptr[u]
    end = indptr[u + 1]
    x = X[u]
    if start == end:
        x[:] = 0
        return
    n = end - start
    gather = n <= block.shape[0]  # longer rows read Y in place
    if gather:
        for j in range(n):
            i = indices[start + j]
            for a in range(f):
                block[j, a] = Y[i, a]
    # residual r = Yt C_u p_u - (YtY + Yt (C_u - I) Y) x
    for a in range(f):
        s = np.float32(0)
        for b in range(f):
            s += YtY[a, b] * x[b]
        r[a] = -s
    for j in range(n):
        c = data[start + j]
        if c > 0:
            t = c
        else:
            t = np.float32(0)
            c = -c
        row = block[j] if gather else Y[indices[start + j]]
        d = np.float32(0)
        for a in range(f):
            d += row[a] * x[a]
        t = t - (c - _ONE) * d
        for a in range(f):
            r[a] += t * row[a]
    rs_old = np.float32(0)
    for a in range(f):
        p[a] = r[a]
        rs_old += r[a] * r[a]
    if rs_old < 1e-20:
        return
    for _ in range(cg_steps):
        # ap = (YtY + Yt (C_u - I) Y) p without forming the matrix
        for a in range(f):
            s = np.float32(0)
            for b in range(f):
                s += YtY[a, b] * p[b]
            ap[a] = s
        for j in range(n):
            c = data[start + j]
            if c < 0:
                c = -c
            row = block[j] if gather else Y[indices[start + j]]
            d = np.float32(0)
            for a in range(f):
                d += row[a] * p[a]
            t = (c - _ONE) * d
            for a in range(f):
                ap[a] += t * row[a]
        p_ap = np.float32(0)
        for a in range(f):
            p_ap += p[a] * ap[a]
        step = rs_old / p_ap
        rs_new = np.float32(0)
        for a in range(f):
            x[a] += step * p[a]
            r[a] -= step * ap[a]
            rs_new += r[a] * r[a]
        if rs_new < 1e-20:
            break
        beta = rs_new / rs_old
        for a in range(f):
            p[a] = r[a] + beta * p[a]
        rs_old = rs_new


def _solve_rows_py(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, X: np.ndarray, Y: np.ndarray,
    YtY: np.ndarray, cg_steps: int, lanes: int, block_rows: int,
) -> None:  # pragma: no cover - compiled
    # Rows are dealt to lanes in turn (u, u + lanes, ...): popular items or heavy users sit
    # together in the index, and contiguous ranges would leave one thread most of the work.
    # A lane allocates its workspace once: a fresh block per row cost page faults.
    rows, f = X.shape
    for lane in prange(lanes):
        block = np.empty((block_rows, f), np.float32)
        r = np.empty(f, np.float32)
        p = np.empty(f, np.float32)
        ap = np.empty(f, np.float32)
        for u in range(lane, rows, lanes):
            _solve_row(u, indptr, indices, data, X, Y, YtY, cg_steps, block, r, p, ap)


try:
    _solve_rows = njit(parallel=True, fastmath=True, cache=True, nogil=True)(_solve_rows_py)
except RuntimeError:  # no writable cache location (read-only install, no home directory)
    _solve_rows = njit(parallel=True, fastmath=True, nogil=True)(_solve_rows_py)


def least_squares_cg(
    Cui: sp.csr_matrix, X: np.ndarray, Y: np.ndarray, regularization: float,
    num_threads: int = 0, cg_steps: int = 3,
) -> None:
    """Update X in place for fixed Y; the signature of implicit's solver.

    Cui: float32 CSR confidences, a row per row of X. X and Y: C-contiguous float32.
    num_threads: 0 for every core.
    """
    if X.dtype != np.float32 or Y.dtype != np.float32:
        raise TypeError(f"ALS factors must be float32, got {X.dtype} and {Y.dtype}")
    if not (X.flags.c_contiguous and Y.flags.c_contiguous):
        raise ValueError("ALS factors must be C-contiguous")
    factors = X.shape[1]
    YtY = Y.T @ Y + np.float32(regularization) * np.eye(factors, dtype=np.float32)
    threads = min(num_threads or os.cpu_count() or 1, numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    data = np.asarray(Cui.data, dtype=np.float32)
    longest = int(np.diff(Cui.indptr).max(initial=0))
    block_rows = max(1, min(longest, BLOCK_BYTES // (4 * factors)))
    with _LOCK:
        numba.set_num_threads(threads)
        _solve_rows(Cui.indptr, Cui.indices, data, X, Y, YtY, cg_steps, 4 * threads, block_rows)


class CompiledCGALS(AlternatingLeastSquares):  # type: ignore[misc]
    """implicit's CPU AlternatingLeastSquares with the compiled CG step as its solver."""

    @property
    def solver(self) -> Any:
        if not self.use_cg:
            return super().solver
        return functools.partial(least_squares_cg, cg_steps=self.cg_steps)
