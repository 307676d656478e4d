"""Shared pytest set-up: quiet progress, single-threaded BLAS, paths to the shared data sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ["RECSVC_PROGRESS"] = "0"

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ML100K = SHARED_DATA / "ml-100k" / "ratings.csv"
GROCERIES = SHARED_DATA / "groceries" / "baskets.csv"


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    if not ML100K.exists():
        pytest.skip(f"MovieLens 100k not found at {ML100K} (../shared/data absent)")
    return ML100K


@pytest.fixture(scope="session")
def groceries_path() -> Path:
    if not GROCERIES.exists():
        pytest.skip(f"Groceries baskets not found at {GROCERIES} (../shared/data absent)")
    return GROCERIES
