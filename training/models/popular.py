"""Popularity: the number of distinct users who interacted with each item."""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import scipy.sparse as sp

from recsvc.config import TrainConfig
from recsvc.scorers import PopularityScorer
from training.models.base import Recommender


class PopularityModel(Recommender):
    name = "popular"

    def __init__(self) -> None:
        super().__init__()
        self.scores = np.zeros(0, dtype=np.float32)

    @classmethod
    def from_config(cls, config: TrainConfig, **overrides: Any) -> Self:
        return cls()

    def _fit(self, interactions: sp.csr_matrix) -> None:
        self.scores = np.asarray((interactions > 0).sum(axis=0), dtype=np.float32).ravel()

    def scorer(self) -> PopularityScorer:
        return PopularityScorer(self.scores)
