"""Blend: a weighted sum of other models' scores, each scaled per user to a maximum of 1.

The parts and their weights come from `config.blend` (model name -> weight); every part is
configured from its own section of the config and fitted on the same interactions. The result
is a `recsvc.scorers.BlendScorer`, so the server scores a blend like any other model.
"""

from __future__ import annotations

from typing import Any, Self

import scipy.sparse as sp

from recsvc.config import TrainConfig
from recsvc.errors import InvalidInput
from recsvc.scorers import BlendScorer
from training.models.base import Recommender


class BlendModel(Recommender):
    name = "blend"

    def __init__(self, parts: list[tuple[Recommender, float]]) -> None:
        super().__init__()
        if not parts:
            raise InvalidInput("blend", "a blend needs at least one model with a weight")
        self.parts = parts

    @classmethod
    def from_config(cls, config: TrainConfig, **overrides: Any) -> Self:
        """Parts from `config.blend`; `weights={name: weight}` in overrides replaces it."""
        from training.models import build_model

        weights: dict[str, float] = dict(overrides.pop("weights", config.blend))
        if overrides:
            raise InvalidInput("blend", f"unknown setting(s): {', '.join(sorted(overrides))}")
        parts: list[tuple[Recommender, float]] = []
        for name, weight in weights.items():
            if name == "blend":
                raise InvalidInput("blend.blend", "a blend cannot contain a blend")
            if weight < 0:
                raise InvalidInput(f"blend.{name}", f"weight must not be negative, got {weight}")
            if weight > 0:
                parts.append((build_model(name, config), float(weight)))
        return cls(parts)

    @classmethod
    def from_fitted(cls, parts: list[tuple[Recommender, float]]) -> Self:
        """A blend of models that are already fitted (fit time: the sum of theirs)."""
        blend = cls(parts)
        blend.fit_seconds = sum(model.fit_seconds for model, _ in parts)
        return blend

    def _fit(self, interactions: sp.csr_matrix) -> None:
        for model, _ in self.parts:
            model.fit(interactions)

    def scorer(self) -> BlendScorer:
        return BlendScorer([(model.scorer(), weight) for model, weight in self.parts])

    def params(self) -> dict[str, Any]:
        return {
            "parts": {
                model.name: {"weight": weight, **model.params()} for model, weight in self.parts
            }
        }
