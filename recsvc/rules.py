"""Association rules as a value: what the trainer mines and the server scores carts with.

A `RuleSet` holds rules `A -> c` (a set of items on the left, one item on the right) as flat
arrays, CSR-style, so millions of rules load memory-mapped from a bundle's `rules/` directory
without building a Python object per rule. Mining lives in `training.rules`; cart scoring in
`recsvc.crosssell`. Metrics follow the standard definitions over `n_orders` baskets:

    support    = supp(A u {c})                      (fraction of baskets holding every item)
    confidence = supp(A u {c}) / supp(A)
    lift       = confidence / supp(c)
    leverage   = supp(A u {c}) - supp(A) * supp(c)
    conviction = (1 - supp(c)) / (1 - confidence)   (inf where confidence == 1)

On-disk layout (`RuleSet.save`): one `.npy` per array plus `meta.json` with `n_orders` and the
layout version. Must not import `training` or `serving`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsvc.errors import BundleFormatError

RULES_LAYOUT_VERSION = 1
META_FILE = "meta.json"
_INT_ARRAYS = {"antecedent_indptr": np.int64, "antecedent_items": np.int32, "consequent": np.int32}
_METRICS = ("support", "confidence", "lift", "leverage", "conviction")
FRAME_COLUMNS = ("antecedents", "consequent", *_METRICS)


@dataclass(frozen=True, eq=False)
class RuleSet:
    """Association rules `A -> c` with their metrics, one entry per rule.

    The antecedent of rule r is `antecedent_items[antecedent_indptr[r]:antecedent_indptr[r+1]]`
    (item indexes, ascending); its consequent is `consequent[r]`.
    """

    antecedent_indptr: np.ndarray  # int64, len n_rules + 1
    antecedent_items: np.ndarray  # int32 item indexes, ascending within a rule
    consequent: np.ndarray  # int32 item index
    support: np.ndarray  # float64
    confidence: np.ndarray  # float64
    lift: np.ndarray  # float64
    leverage: np.ndarray  # float64
    conviction: np.ndarray  # float64, inf where confidence == 1
    n_orders: int  # baskets the metrics were computed over

    def __post_init__(self) -> None:
        n = len(self.consequent)
        if len(self.antecedent_indptr) != n + 1:
            raise BundleFormatError(
                f"rules: antecedent_indptr has {len(self.antecedent_indptr)} entries, "
                f"expected {n + 1}"
            )
        if n and int(self.antecedent_indptr[-1]) != len(self.antecedent_items):
            raise BundleFormatError("rules: antecedent_indptr does not end at len(antecedent_items)")
        for name in _METRICS:
            if len(getattr(self, name)) != n:
                raise BundleFormatError(f"rules: {name} has {len(getattr(self, name))} entries, expected {n}")

    def __len__(self) -> int:
        return int(len(self.consequent))

    @classmethod
    def empty(cls, n_orders: int) -> RuleSet:
        """A rule set with no rules (e.g. nothing reached the support threshold)."""
        nothing = np.zeros(0, dtype=np.float64)
        return cls(
            antecedent_indptr=np.zeros(1, dtype=np.int64),
            antecedent_items=np.zeros(0, dtype=np.int32),
            consequent=np.zeros(0, dtype=np.int32),
            support=nothing,
            confidence=nothing.copy(),
            lift=nothing.copy(),
            leverage=nothing.copy(),
            conviction=nothing.copy(),
            n_orders=int(n_orders),
        )

    @property
    def antecedent_lengths(self) -> np.ndarray:
        """Number of items on the left of each rule (int64)."""
        return np.diff(np.asarray(self.antecedent_indptr))

    def antecedent(self, rule: int) -> np.ndarray:
        """Item indexes on the left of rule `rule`."""
        start, end = int(self.antecedent_indptr[rule]), int(self.antecedent_indptr[rule + 1])
        return np.asarray(self.antecedent_items[start:end])

    def to_frame(self, item_ids: Sequence[str]) -> pd.DataFrame:
        """One row per rule with external ids.

        `antecedents` holds the antecedent's item ids sorted as strings and joined by `|`;
        `item_ids[i]` is the external id of item index i.
        """
        ids = np.asarray(list(item_ids), dtype=object)
        lengths = self.antecedent_lengths
        n = len(self)
        antecedents = np.empty(n, dtype=object)
        items = np.asarray(self.antecedent_items)
        if n:
            # Order each rule's items by their id as a string (ranks are cheaper to sort).
            names = ids.astype(str)
            rank = np.empty(len(names), dtype=np.int64)
            rank[np.argsort(names, kind="stable")] = np.arange(len(names))
            rule_of = np.repeat(np.arange(n), lengths)
            order = np.lexsort((rank[items], rule_of))
            sorted_names = names[items[order]].astype(object)
            starts = np.asarray(self.antecedent_indptr[:-1])
            for length in np.unique(lengths):
                rows = np.flatnonzero(lengths == length)
                joined = sorted_names[starts[rows]]
                for offset in range(1, int(length)):
                    joined = joined + "|" + sorted_names[starts[rows] + offset]
                antecedents[rows] = joined
        frame = pd.DataFrame(
            {
                "antecedents": antecedents,
                "consequent": ids[np.asarray(self.consequent)] if n else np.zeros(0, dtype=object),
            }
        )
        for name in _METRICS:
            frame[name] = np.asarray(getattr(self, name), dtype=np.float64)
        return frame

    def save(self, directory: Path) -> None:
        """Write every array as `<name>.npy` and `meta.json` into `directory` (created)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for spec in fields(self):
            if spec.name == "n_orders":
                continue
            values = np.ascontiguousarray(getattr(self, spec.name))
            np.save(directory / f"{spec.name}.npy", values, allow_pickle=False)
        meta = {"layout_version": RULES_LAYOUT_VERSION, "n_orders": self.n_orders, "n_rules": len(self)}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, mmap: bool = True) -> RuleSet:
        """Read a rule set written by `save` (arrays memory-mapped unless `mmap` is False).

        Raises BundleFormatError when a file is missing or the layout is unknown.
        """
        directory = Path(directory)
        meta_path = directory / META_FILE
        if not meta_path.exists():
            raise BundleFormatError(f"{directory}: no association rules here (missing {META_FILE})")
        try:
            meta: dict[str, Any] = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise BundleFormatError(f"{meta_path}: corrupt: {exc}") from exc
        if meta.get("layout_version") != RULES_LAYOUT_VERSION:
            raise BundleFormatError(
                f"{directory}: rules layout version {meta.get('layout_version')!r}, "
                f"this recsvc reads {RULES_LAYOUT_VERSION}"
            )
        arrays: dict[str, Any] = {}
        for spec in fields(cls):
            if spec.name == "n_orders":
                continue
            path = directory / f"{spec.name}.npy"
            if not path.exists():
                raise BundleFormatError(f"{directory}: missing {path.name}")
            arrays[spec.name] = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        return cls(**arrays, n_orders=int(meta["n_orders"]))
