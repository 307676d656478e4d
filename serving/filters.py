"""Request filters resolved against one model version: allowed-item masks and exclusions.

The masks come from `recsvc.ranking.allowed_mask` (the one scoring path) over a copy of the
catalogue whose category names are replaced by integer codes, so a category test is an integer
`isin` (about 0.1 ms on 100k items) instead of a comparison of Python strings (a few ms). Masks
are cached per filter because storefronts send the same few filters over and over.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsvc.events import Catalog
from recsvc.ranking import ItemFilter, allowed_mask
from recsvc.store import ItemCatalog

MASK_CACHE_SIZE = 256  # about 100 KB each at 100k items


@dataclass(frozen=True)
class FilterSpec:
    """What a caller allows in an answer, in the shop's ids (validated, not yet resolved)."""

    categories: frozenset[str] = frozenset()
    in_stock_only: bool = False
    min_price: float | None = None
    max_price: float | None = None
    exclude_item_ids: frozenset[str] = frozenset()
    exclude_purchased: bool = False

    @property
    def catalog_key(self) -> tuple[frozenset[str], bool, float | None, float | None]:
        return (self.categories, self.in_stock_only, self.min_price, self.max_price)


NO_FILTER = FilterSpec()


class CatalogFilters:
    """Allowed-item masks for one catalogue (one model version and item revision)."""

    def __init__(self, catalog: ItemCatalog) -> None:
        codes, names = pd.factorize(np.asarray(catalog.category, dtype=object))
        self._category_code = {str(name): code for code, name in enumerate(names)}
        self._coded = Catalog(
            category=codes.astype(np.int32),
            price=np.asarray(catalog.price, dtype=np.float32),
            in_stock=np.asarray(catalog.in_stock, dtype=bool),
            title=np.empty(0, dtype=object),
        )
        self._catalog = catalog
        self._masks: OrderedDict[tuple[object, ...], np.ndarray | None] = OrderedDict()
        self._lock = threading.Lock()

    def allowed(self, spec: FilterSpec) -> np.ndarray | None:
        """Boolean mask of the items the filter's catalogue conditions allow (None: all)."""
        if not (spec.categories or spec.in_stock_only) and spec.min_price is None and spec.max_price is None:
            return None
        key = spec.catalog_key
        with self._lock:
            if key in self._masks:
                self._masks.move_to_end(key)
                return self._masks[key]
        # Unknown category names get a code no item has, so they match nothing.
        codes = frozenset(self._category_code.get(name, -2) for name in spec.categories)
        mask = allowed_mask(
            self._coded,
            ItemFilter(
                categories=codes,  # type: ignore[arg-type]  # integer-coded names
                in_stock_only=spec.in_stock_only,
                min_price=spec.min_price,
                max_price=spec.max_price,
            ),
        )
        if mask is not None:
            mask.setflags(write=False)
        with self._lock:
            self._masks[key] = mask
            if len(self._masks) > MASK_CACHE_SIZE:
                self._masks.popitem(last=False)
        return mask

    def indexes(self, item_ids: Collection[str]) -> set[int]:
        """Item indexes of the ids this catalogue knows (unknown ids are left out)."""
        if not item_ids:
            return set()
        index_of = self._catalog.index_of
        return {i for i in (index_of(item_id) for item_id in item_ids) if i >= 0}
