"""Scorers: how a trained recommender turns a user's history into a score for every item.

Every model the trainer fits is stored in the bundle as one of a few scorer kinds, so batch
export, offline evaluation, the publisher and the gRPC server all score the same way, without
importing the trainer:

- `item_item`: scores = history @ W, with W an items x items matrix (dense for EASE on small
  catalogues, sparse top-n neighbours for item-kNN / large catalogues). A new event changes the
  history row, so real-time updates come for free.
- `factors`: scores = u . V (ALS/BPR). Known users use their trained vector; a user with new
  events is folded in: for ALS by the weighted least-squares step of implicit ALS; for BPR
  (whose last column is 1 for users and the item bias for items, `bias_column`) as the sum of
  the history's item vectors, scaled by a factor fitted to the trained users, bias 1.
- `popularity`: the same score vector for everyone.
- `blend`: a weighted sum of other scorers, each scaled per user to a maximum of 1.

Pure numpy/scipy; no I/O except `save_scorer` / `load_scorer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import scipy.sparse as sp

from recsvc.errors import BundleFormatError, NotFound

if TYPE_CHECKING:
    from recsvc.bundle import Bundle, BundleWriter


class Scorer(Protocol):
    kind: str

    @property
    def n_items(self) -> int: ...

    def score(self, history: sp.csr_matrix, users: np.ndarray | None = None) -> np.ndarray:
        """Dense (n_rows, n_items) float32 scores.

        history: one CSR row of interaction strengths per user to score.
        users: their trained user indexes (-1 for users the model never saw), or None.
        """
        ...


@dataclass
class ItemItemScorer:
    weights: np.ndarray | sp.csr_matrix  # items x items; W[i, j]: how much i suggests j
    kind: str = "item_item"

    @property
    def n_items(self) -> int:
        return int(self.weights.shape[1])

    def score(self, history: sp.csr_matrix, users: np.ndarray | None = None) -> np.ndarray:
        product = history @ self.weights
        if sp.issparse(product):
            product = product.toarray()
        return np.asarray(product, dtype=np.float32)


@dataclass
class FactorScorer:
    user_factors: np.ndarray  # users x f
    item_factors: np.ndarray  # items x f
    regularization: float = 0.05
    alpha: float = 1.0  # confidence = alpha * strength, as in training
    fold_in_always: bool = False
    bias_column: bool = False  # BPR's layout: fold in by `fold_in_scale` x the history's sum
    fold_in_scale: float = 1.0
    kind: str = "factors"
    _gram: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_items(self) -> int:
        return int(self.item_factors.shape[0])

    def user_vectors(self, history: sp.csr_matrix, users: np.ndarray | None) -> np.ndarray:
        n = history.shape[0]
        vectors = np.zeros((n, self.item_factors.shape[1]), dtype=np.float32)
        known = (
            np.zeros(n, dtype=bool)
            if users is None or self.fold_in_always
            else (np.asarray(users) >= 0) & (np.asarray(users) < self.user_factors.shape[0])
        )
        if known.any():
            vectors[known] = self.user_factors[np.asarray(users)[known]]
        for row in np.flatnonzero(~known):
            start, end = history.indptr[row], history.indptr[row + 1]
            if end > start:
                vectors[row] = self.fold_in(history.indices[start:end], history.data[start:end])
        return vectors

    def gram(self) -> np.ndarray:
        """The item factors' Gram matrix (V^T V, float64), computed once and kept."""
        if self._gram is None:
            factors = np.asarray(self.item_factors, dtype=np.float64)
            self._gram = factors.T @ factors
        return self._gram

    def fold_in(self, items: np.ndarray, strengths: np.ndarray) -> np.ndarray:
        """User vector for one history: one ALS least-squares user step, or for BPR factors
        (`bias_column`) the scaled sum of the item vectors of the items it holds, bias 1."""
        if self.bias_column:
            held = np.asarray(items)[np.asarray(strengths) > 0]
            vector = np.zeros(self.item_factors.shape[1], dtype=np.float64)
            vector[:-1] = self.fold_in_scale * self.item_factors[held, :-1].sum(axis=0, dtype=np.float64)
            vector[-1] = 1.0
            return vector.astype(np.float32)
        y = np.asarray(self.item_factors[items], dtype=np.float64)  # the rows it needs, not a
        confidence = self.alpha * np.asarray(strengths, dtype=np.float64)  # whole-matrix copy
        a = self.gram() + (y.T * (confidence - 1.0)) @ y
        a[np.diag_indices_from(a)] += self.regularization
        b = y.T @ confidence
        return np.linalg.solve(a, b).astype(np.float32)

    def score(self, history: sp.csr_matrix, users: np.ndarray | None = None) -> np.ndarray:
        return (self.user_vectors(history, users) @ np.asarray(self.item_factors).T).astype(
            np.float32
        )


@dataclass
class PopularityScorer:
    scores: np.ndarray  # items
    kind: str = "popularity"

    @property
    def n_items(self) -> int:
        return int(self.scores.shape[0])

    def score(self, history: sp.csr_matrix, users: np.ndarray | None = None) -> np.ndarray:
        return np.broadcast_to(self.scores.astype(np.float32), (history.shape[0], self.n_items)).copy()


@dataclass
class BlendScorer:
    parts: list[tuple[Any, float]]  # (scorer, weight)
    kind: str = "blend"

    @property
    def n_items(self) -> int:
        return int(self.parts[0][0].n_items)

    def score(self, history: sp.csr_matrix, users: np.ndarray | None = None) -> np.ndarray:
        total = np.zeros((history.shape[0], self.n_items), dtype=np.float32)
        for scorer, weight in self.parts:
            part = scorer.score(history, users)
            scale = np.abs(part).max(axis=1, keepdims=True)
            scale[scale == 0] = 1.0
            total += weight * part / scale
        return total


def bias_fold_in_scale(history: sp.csr_matrix, user_factors: np.ndarray, item_factors: np.ndarray) -> float:
    """The factor s that makes s x (sum of the history's item vectors) closest, in least squares
    over all trained users, to their trained vectors (bias column excluded)."""
    held = sp.csr_matrix(history, dtype=np.float64, copy=True)
    held.data = (held.data > 0).astype(np.float64)
    sums = held @ np.asarray(item_factors[:, :-1], dtype=np.float64)
    trained = np.asarray(user_factors[:, :-1], dtype=np.float64)
    norm = float((sums * sums).sum())
    return float((sums * trained).sum() / norm) if norm > 0 else 1.0


def save_scorer(
    writer: BundleWriter, name: str, scorer: Any, saved: dict[int, str] | None = None
) -> None:
    """Store a scorer under `recommenders/<name>/`.

    saved: id(scorer) -> name of scorers already stored in this bundle; a blend refers to such
    parts by name instead of storing their arrays again.
    """
    saved = saved or {}
    base = f"recommenders/{name}"
    if isinstance(scorer, ItemItemScorer):
        if sp.issparse(scorer.weights):
            writer.csr(f"{base}/weights", sp.csr_matrix(scorer.weights, dtype=np.float32))
            meta: dict[str, Any] = {"kind": "item_item", "sparse": True}
        else:
            writer.array(f"{base}/weights", np.asarray(scorer.weights, dtype=np.float32))
            meta = {"kind": "item_item", "sparse": False}
    elif isinstance(scorer, FactorScorer):
        writer.array(f"{base}/user_factors", np.asarray(scorer.user_factors, dtype=np.float32))
        writer.array(f"{base}/item_factors", np.asarray(scorer.item_factors, dtype=np.float32))
        meta = {
            "kind": "factors",
            "regularization": scorer.regularization,
            "alpha": scorer.alpha,
            "fold_in_always": scorer.fold_in_always,
            "bias_column": scorer.bias_column,
            "fold_in_scale": scorer.fold_in_scale,
        }
    elif isinstance(scorer, PopularityScorer):
        writer.array(f"{base}/scores", np.asarray(scorer.scores, dtype=np.float32))
        meta = {"kind": "popularity"}
    elif isinstance(scorer, BlendScorer):
        parts = []
        for index, (part, weight) in enumerate(scorer.parts):
            part_name = saved.get(id(part))
            if part_name is None or part_name == name:
                part_name = f"{name}/part{index}"
                save_scorer(writer, part_name, part, saved)
            parts.append({"name": part_name, "weight": weight})
        meta = {"kind": "blend", "parts": parts}
    else:
        raise TypeError(f"cannot store scorer {type(scorer).__name__}")
    writer.json(f"{base}/kind.json", meta)


def load_scorer(bundle: Bundle, name: str) -> Any:
    """Load the scorer stored as `recommenders/<name>/`; NotFound if the bundle lacks it."""
    base = f"recommenders/{name}"
    if not (bundle.path / base / "kind.json").exists():
        available = ", ".join(bundle.recommenders) or "none"
        raise NotFound(f"model '{name}' is not in bundle {bundle.version} (has: {available})")
    meta = bundle.json(f"{base}/kind.json")
    kind = meta.get("kind")
    if kind == "item_item":
        weights: Any = (
            bundle.csr(f"{base}/weights") if meta.get("sparse") else bundle.array(f"{base}/weights")
        )
        return ItemItemScorer(weights)
    if kind == "factors":
        users, items = bundle.array(f"{base}/user_factors"), bundle.array(f"{base}/item_factors")
        if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
            raise BundleFormatError(
                f"{bundle.version}: corrupt {base}: user factors {users.shape} and item factors "
                f"{items.shape} do not match"
            )
        return FactorScorer(
            user_factors=users,
            item_factors=items,
            regularization=float(meta.get("regularization", 0.05)),
            alpha=float(meta.get("alpha", 1.0)),
            fold_in_always=bool(meta.get("fold_in_always", False)),
            bias_column=bool(meta.get("bias_column", False)),
            fold_in_scale=float(meta.get("fold_in_scale", 1.0)),
        )
    if kind == "popularity":
        return PopularityScorer(bundle.array(f"{base}/scores", mmap=False))
    if kind == "blend":
        return BlendScorer(
            [(load_scorer(bundle, p["name"]), float(p["weight"])) for p in meta["parts"]]
        )
    raise BundleFormatError(f"{bundle.version}: unknown scorer kind {kind!r} for {name}")
