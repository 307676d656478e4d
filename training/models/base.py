"""The interface every recommender model shares.

A model is fitted on a users x items CSR of interaction strengths and hands back a
`recsvc.scorers` scorer: the bundle stores that scorer, and batch export, evaluation and the
server score through it. A new model is one new module and one line in `MODELS`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, Self

import scipy.sparse as sp

from recsvc.config import TrainConfig


class Recommender(ABC):
    name: str = "base"

    def __init__(self) -> None:
        self.fit_seconds: float = 0.0

    @classmethod
    @abstractmethod
    def from_config(cls, config: TrainConfig, **overrides: Any) -> Self:
        """Build the model with its parameters from `config` (keyword overrides win)."""

    @abstractmethod
    def _fit(self, interactions: sp.csr_matrix) -> None: ...

    def fit(self, interactions: sp.csr_matrix) -> Self:
        """Fit on users x items interaction strengths (float32 CSR). Returns self."""
        started = time.perf_counter()
        self._fit(sp.csr_matrix(interactions, dtype="float32"))
        self.fit_seconds = time.perf_counter() - started
        return self

    @abstractmethod
    def scorer(self) -> Any:
        """The fitted model as a recsvc.scorers scorer."""

    def params(self) -> dict[str, Any]:
        """Parameters worth recording in the manifest."""
        return {}
