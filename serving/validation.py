"""Request validation: protobuf requests in, domain queries out, or InvalidInput naming the field.

The only place besides the servicer that touches protobuf types. Limits come from ServeConfig
(max_k, max_id_length, max_cart_items, max_filter_values); every message says which field is
wrong and why, e.g. `k: must be between 1 and 100, got 0`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from recsvc.errors import InvalidInput
from recsvc.ranking import check_price_range
from recsvc.v1 import recommender_pb2 as pb
from serving.config import ServeConfig
from serving.domain import (
    BuyAgainQuery,
    CrossSellQuery,
    EventQuery,
    PopularQuery,
    RecommendQuery,
    SimilarQuery,
)
from serving.filters import NO_FILTER, FilterSpec

EVENT_TYPES = {pb.VIEW: "view", pb.CART: "cart", pb.PURCHASE: "purchase"}
MAX_CLOCK_SKEW_S = 60.0


class Validator:
    """Turns each request message into its domain query (raises InvalidInput)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config

    # -- fields -----------------------------------------------------------------------------
    def k(self, value: int, field: str = "k") -> int:
        if value < 1 or value > self.config.max_k:
            raise InvalidInput(field, f"must be between 1 and {self.config.max_k}, got {value}")
        return int(value)

    def id(self, value: str, field: str, required: bool = True) -> str:
        if not value:
            if required:
                raise InvalidInput(field, "must not be empty")
            return ""
        if len(value) > self.config.max_id_length:
            raise InvalidInput(
                field, f"is {len(value)} characters long, at most {self.config.max_id_length} allowed"
            )
        if not value.isprintable():
            raise InvalidInput(field, "must not contain control characters")
        return value

    def ids(self, values: Sequence[str], field: str, limit: int) -> tuple[str, ...]:
        if len(values) > limit:
            raise InvalidInput(field, f"has {len(values)} entries, at most {limit} allowed")
        return tuple(self.id(v, f"{field}[{i}]") for i, v in enumerate(values))

    def filter(self, message: Any, has_filter: bool, field: str = "filter") -> FilterSpec:
        if not has_filter:
            return NO_FILTER
        limit = self.config.max_filter_values
        min_price = float(message.min_price) if message.HasField("min_price") else None
        max_price = float(message.max_price) if message.HasField("max_price") else None
        check_price_range(min_price, max_price, (f"{field}.min_price", f"{field}.max_price"))
        return FilterSpec(
            categories=frozenset(self.ids(message.categories, f"{field}.categories", limit)),
            in_stock_only=bool(message.in_stock_only),
            min_price=min_price,
            max_price=max_price,
            exclude_item_ids=frozenset(
                self.ids(message.exclude_item_ids, f"{field}.exclude_item_ids", limit)
            ),
            exclude_purchased=bool(message.exclude_purchased),
        )

    # -- requests ---------------------------------------------------------------------------
    def recommend(self, request: pb.RecommendRequest) -> RecommendQuery:
        return RecommendQuery(
            user_id=self.id(request.user_id, "user_id"),
            k=self.k(request.k),
            filter=self.filter(request.filter, request.HasField("filter")),
            segment=self.id(request.segment, "segment", required=False),
        )

    def similar_items(self, request: pb.SimilarItemsRequest) -> SimilarQuery:
        flt = self.filter(request.filter, request.HasField("filter"))
        user_id = self.id(request.user_id, "user_id", required=False)
        if flt.exclude_purchased and not user_id:
            raise InvalidInput("user_id", "is required when filter.exclude_purchased is set")
        return SimilarQuery(
            item_id=self.id(request.item_id, "item_id"), k=self.k(request.k), filter=flt, user_id=user_id
        )

    def cross_sell(self, request: pb.CrossSellRequest) -> CrossSellQuery:
        if not request.item_ids:
            raise InvalidInput("item_ids", "must hold at least one item")
        flt = self.filter(request.filter, request.HasField("filter"))
        user_id = self.id(request.user_id, "user_id", required=False)
        if flt.exclude_purchased and not user_id:
            raise InvalidInput("user_id", "is required when filter.exclude_purchased is set")
        return CrossSellQuery(
            item_ids=self.ids(request.item_ids, "item_ids", self.config.max_cart_items),
            k=self.k(request.k),
            filter=flt,
            user_id=user_id,
        )

    def buy_again(self, request: pb.BuyAgainRequest) -> BuyAgainQuery:
        if request.as_of_ms < 0:
            raise InvalidInput("as_of_ms", "must not be negative")
        return BuyAgainQuery(
            user_id=self.id(request.user_id, "user_id"),
            k=self.k(request.k),
            filter=self.filter(request.filter, request.HasField("filter")),
            as_of=request.as_of_ms / 1000.0 if request.as_of_ms else None,
        )

    def popular(self, request: pb.PopularRequest) -> PopularQuery:
        flt = self.filter(request.filter, request.HasField("filter"))
        user_id = self.id(request.user_id, "user_id", required=False)
        if flt.exclude_purchased and not user_id:
            raise InvalidInput("user_id", "is required when filter.exclude_purchased is set")
        return PopularQuery(
            k=self.k(request.k),
            filter=flt,
            category=self.id(request.category, "category", required=False),
            segment=self.id(request.segment, "segment", required=False),
            trending=bool(request.trending),
            user_id=user_id,
        )

    def record_event(self, request: pb.RecordEventRequest) -> EventQuery:
        event_type = EVENT_TYPES.get(request.event_type)
        if event_type is None:
            raise InvalidInput(
                "event_type", f"must be VIEW, CART or PURCHASE, got {request.event_type}"
            )
        ts: float | None = None
        if request.timestamp_ms:
            ts = request.timestamp_ms / 1000.0
            if ts < 0:
                raise InvalidInput("timestamp_ms", "must not be negative")
            if ts > time.time() + MAX_CLOCK_SKEW_S:
                raise InvalidInput("timestamp_ms", "is in the future")
        return EventQuery(
            user_id=self.id(request.user_id, "user_id"),
            item_id=self.id(request.item_id, "item_id"),
            event_type=event_type,
            ts=ts,
        )

    def forget_user(self, request: pb.ForgetUserRequest) -> str:
        return self.id(request.user_id, "user_id")
