"""Recommender models: one small interface (training.models.base.Recommender), one module each.

`build_model(name, config)` creates a model by name; modules are imported on demand.
"""

from __future__ import annotations

import importlib
from typing import Any

from recsvc.config import TrainConfig
from recsvc.errors import InvalidInput
from training.models.base import Recommender

# name -> (module, class); the same names as recsvc.config.RECOMMENDERS (which the config
# check accepts; tests/test_config.py holds them equal)
MODELS: dict[str, tuple[str, str]] = {
    "als": ("training.models.als", "ALSModel"),
    "bpr": ("training.models.als", "BPRModel"),
    "ease": ("training.models.ease", "EASEModel"),
    "itemknn": ("training.models.itemknn", "ItemKNNModel"),
    "popular": ("training.models.popular", "PopularityModel"),
    "blend": ("training.models.blend", "BlendModel"),
}


def build_model(name: str, config: TrainConfig, **overrides: Any) -> Recommender:
    """A model of kind `name` configured from `config` (keyword overrides win)."""
    if name not in MODELS:
        raise InvalidInput("model", f"unknown model '{name}' (one of {', '.join(MODELS)})")
    module_name, class_name = MODELS[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    model: Recommender = cls.from_config(config, **overrides)
    return model
