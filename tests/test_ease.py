"""EASE's item-degree normalisation (ease.column_norm / ease.column_restore)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsvc.config import load_train_config
from recsvc.errors import InvalidInput
from training.models import build_model
from training.models.ease import EASEModel, ease_dense


def skewed_matrix(seed: int = 0, users: int = 300, items: int = 40) -> sp.csr_matrix:
    """Binary users x items where item popularity falls off steeply (item 0 the most popular)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    dense = rng.random((users, items)) < 0.6 * popularity[None, :]
    dense[np.arange(users), rng.integers(0, items, size=users)] = True  # every user has one
    return sp.csr_matrix(dense.astype(np.float32))


def test_zero_exponents_are_plain_ease() -> None:
    matrix = skewed_matrix()
    weights = EASEModel(l2=30.0).fit(matrix).weights
    rms = float(np.sqrt(np.mean(np.square(matrix.data))))
    np.testing.assert_allclose(weights, ease_dense(matrix / rms, 30.0), rtol=0, atol=0)


def test_weights_are_the_scaled_fit_rescaled() -> None:
    """W = D^-beta EASE(X D^-beta, l2 * mean(d^(1-2 beta)) / mean(d)) D^gamma."""
    matrix = skewed_matrix(seed=1)
    beta, gamma, l2 = 0.3, 0.15, 30.0
    degree = np.asarray(matrix.multiply(matrix).sum(axis=0)).ravel()  # rms of a binary log is 1
    scaled = sp.csr_matrix(matrix @ sp.diags(degree**-beta))
    inner = ease_dense(scaled, l2 * np.mean(degree ** (1 - 2 * beta)) / np.mean(degree))
    expected = (degree**-beta)[:, None] * inner * (degree**gamma)[None, :]
    got = EASEModel(l2=l2, column_norm=beta, column_restore=gamma).fit(matrix).weights
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)


def test_normalisation_moves_recommendations_away_from_the_most_popular_items() -> None:
    matrix = skewed_matrix(seed=2)
    history = matrix

    def share_of_top_items(model: EASEModel) -> float:
        scores = np.asarray(history @ model.fit(matrix).weights)
        scores[history.toarray() > 0] = -np.inf
        top = np.argsort(-scores, axis=1)[:, :5]
        return float(np.isin(top, np.arange(5)).mean())

    plain = share_of_top_items(EASEModel(l2=30.0))
    normalised = share_of_top_items(EASEModel(l2=30.0, column_norm=0.5, column_restore=0.0))
    assert normalised < plain - 0.05


def test_local_solver_applies_the_same_normalisation() -> None:
    """With every co-occurring item as a neighbour the local solve is the dense one."""
    skewed = skewed_matrix(seed=3, items=25)
    everything = sp.csr_matrix(np.ones((2, 25), dtype=np.float32))  # every pair co-occurs
    matrix = sp.csr_matrix(sp.vstack([skewed, everything]))
    settings = {"l2": 20.0, "column_norm": 0.3, "column_restore": 0.1}
    dense = EASEModel(**settings).fit(matrix)
    local = EASEModel(**settings, max_items=5, local_neighbours=100).fit(matrix)
    assert (dense.solver, local.solver) == ("dense", "local")
    np.testing.assert_allclose(local.weights.toarray(), dense.weights, rtol=1e-3, atol=1e-6)


def test_items_without_interactions_get_empty_columns() -> None:
    matrix = skewed_matrix(seed=4).tolil()
    matrix[:, 7] = 0.0
    weights = EASEModel(l2=30.0, column_norm=0.3, column_restore=0.15).fit(matrix.tocsr()).weights
    assert np.all(np.isfinite(weights))
    assert not weights[:, 7].any() and not weights[7, :].any()


def test_exponents_come_from_the_config_and_are_checked() -> None:
    config = load_train_config(overrides={"ease.column_norm": 0.25, "ease.column_restore": 0.1},
                               environ={})  # fmt: skip
    params = build_model("ease", config).params()
    assert (params["column_norm"], params["column_restore"]) == (0.25, 0.1)
    with pytest.raises(InvalidInput, match="column_norm"):
        EASEModel(column_norm=-0.1)
    with pytest.raises(InvalidInput, match="column_restore"):
        EASEModel(column_restore=2.0)
