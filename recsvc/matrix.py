"""The user x item interaction matrix: event-type weights, time decay, quantities, ratings.

Pure functions over the compact arrays of an EventLog; a 20M-row log becomes a CSR matrix
without any per-row Python work (memory: the log's arrays plus one float32 weight per row and
the CSR itself).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recsvc.config import EventsConfig
from recsvc.errors import InvalidInput
from recsvc.events import EventLog

SECONDS_PER_DAY = 86_400.0
MIN_DECAY = 1e-6  # the smallest time-decay factor an event keeps


def event_weights(log: EventLog, config: EventsConfig, now: int | None = None) -> np.ndarray:
    """One float32 strength per row: type weight x time decay x quantity x rating factor.

    `now` (epoch seconds) is where the decay starts; default the newest event of the log.
    Raises InvalidInput if the log holds an event type with no configured weight.
    """
    table = np.zeros(len(log.event_types), dtype=np.float32)
    for code, name in enumerate(log.event_types):
        if name not in config.weights:
            raise InvalidInput(
                f"events.weights.{name}",
                f"event type '{name}' appears in the log but has no weight in the config",
            )
        table[code] = config.weights[name]
    weights = table[log.event] if len(log) else np.zeros(0, dtype=np.float32)
    if config.half_life_days > 0 and len(log) and log.has_column.get("timestamp", False):
        now = int(log.timestamp.max()) if now is None else now
        age_days = (now - log.timestamp).astype(np.float64) / SECONDS_PER_DAY
        decay = np.exp2(-np.maximum(age_days, 0.0) / config.half_life_days)
        # Floored: an old event fades but stays an interaction (a zero weight would drop it
        # from the matrix, and so from what the user has seen: an old purchase offered again).
        weights = weights * np.maximum(decay, MIN_DECAY).astype(np.float32)
    if config.use_quantity:
        weights = weights * (1.0 + np.log1p(np.maximum(log.quantity - 1.0, 0.0)))
    if config.rating_weight and log.has_column.get("rating", False):
        rated = ~np.isnan(log.rating)
        factor = np.ones(len(log), dtype=np.float32)
        factor[rated] = np.maximum(1.0 + config.rating_weight * (log.rating[rated] - 3.0), 0.05)
        weights = weights * factor
    return weights.astype(np.float32, copy=False)


def interaction_matrix(
    log: EventLog, weights: np.ndarray, shape: tuple[int, int] | None = None
) -> sp.csr_matrix:
    """Users x items CSR (float32) with the weights of repeated (user, item) rows summed."""
    shape = shape or (len(log.users), len(log.items))
    keep = log.user >= 0
    matrix = sp.csr_matrix(
        (weights[keep], (log.user[keep], log.item[keep])), shape=shape, dtype=np.float32
    )
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix


def binarize(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Same pattern, every stored value 1."""
    out = matrix.copy().astype(np.float32)
    out.data[:] = 1.0
    return out
