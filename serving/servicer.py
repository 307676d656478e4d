"""The gRPC servicer: validate, call one domain method, map the answer and errors to the wire.

No business logic here. `_status_of` is the one place where domain errors become gRPC status
codes; `_items_response` the one place where domain answers become protobuf.

`add_to_server` registers the servicer with request parsing that cannot fail the call with
INTERNAL: bytes that are not a valid request message (truncated, invalid UTF-8 in a string,
garbage) are answered with INVALID_ARGUMENT naming the message type.

Logs never carry request contents: an unexpected error is logged with its type and where it
happened (file:line frames), not its message, which could quote a customer id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from recsvc.errors import (
    InvalidInput,
    NotFound,
    RecsvcError,
    StoreUnavailable,
    Unauthenticated,
)
from recsvc.logs import error_frames
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc
from serving import metrics
from serving.domain import RecommendationService, Result, Source
from serving.privacy import forget_user
from serving.validation import Validator

log = logging.getLogger(__name__)

R = TypeVar("R")

SOURCES = {
    Source.PERSONALIZED: pb.PERSONALIZED,
    Source.REALTIME: pb.REALTIME,
    Source.SEGMENT: pb.SEGMENT,
    Source.POPULAR: pb.POPULAR,
    Source.FALLBACK: pb.FALLBACK,
}


def _status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and details for an error raised below the servicer."""
    if isinstance(error, InvalidInput):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(error)
    if isinstance(error, StoreUnavailable):
        return grpc.StatusCode.UNAVAILABLE, str(error)
    if isinstance(error, Unauthenticated):
        return grpc.StatusCode.UNAUTHENTICATED, str(error)
    if isinstance(error, RecsvcError):
        return grpc.StatusCode.FAILED_PRECONDITION, str(error)
    return grpc.StatusCode.INTERNAL, "internal error"


def _deadline(context: grpc.ServicerContext) -> float | None:
    """The client's deadline as a time.monotonic() instant (None: no deadline)."""
    remaining: float | None = context.time_remaining()
    if remaining is None or remaining > 1e6:  # no deadline set
        return None
    return time.monotonic() + remaining


def _items_response(cls: Callable[..., R], result: Result, rpc: str) -> R:
    metrics.answered(rpc, result.source.value)
    response = cls(model_version=result.model_version, source=SOURCES[result.source])
    add = response.items.add  # type: ignore[attr-defined]  # in place: no copies of items
    for item_id, score, reason in result.items:
        entry = add()  # then attributes: cheaper than keyword arguments, once per item
        entry.item_id = item_id
        entry.score = score
        entry.reason = reason
    return response


class RecommenderServicer(pb_grpc.RecommenderServicer):
    """recsvc.v1.Recommender over a RecommendationService."""

    def __init__(self, service: RecommendationService, validator: Validator) -> None:
        self.service = service
        self.validate = validator

    def _call(self, context: grpc.ServicerContext, answer: Callable[[], R]) -> R:
        try:
            return answer()
        except Exception as error:
            code, details = _status_of(error)
            kind, where = type(error).__name__, error_frames(error)
        # Outside the except block, so that neither the log call (should a handler fail and
        # print what is being handled) nor the abort carries the error, whose message may
        # quote request data, as context.
        if code is grpc.StatusCode.INTERNAL:
            log.error("unexpected error", extra={"error": kind, "at": where})
        context.abort(code, details)
        raise AssertionError("unreachable: abort raises")

    def Recommend(self, request: pb.RecommendRequest, context: grpc.ServicerContext) -> Any:
        def answer() -> pb.RecommendResponse:
            query = self.validate.recommend(request)
            result = self.service.recommend(query, _deadline(context))
            return _items_response(pb.RecommendResponse, result, "Recommend")

        return self._call(context, answer)

    def SimilarItems(self, request: pb.SimilarItemsRequest, context: grpc.ServicerContext) -> Any:
        def answer() -> pb.SimilarItemsResponse:
            query = self.validate.similar_items(request)
            result = self.service.similar_items(query, _deadline(context))
            return _items_response(pb.SimilarItemsResponse, result, "SimilarItems")

        return self._call(context, answer)

    def CrossSell(self, request: pb.CrossSellRequest, context: grpc.ServicerContext) -> Any:
        def answer() -> pb.CrossSellResponse:
            query = self.validate.cross_sell(request)
            result = self.service.cross_sell(query, _deadline(context))
            return _items_response(pb.CrossSellResponse, result, "CrossSell")

        return self._call(context, answer)

    def BuyAgain(self, request: pb.BuyAgainRequest, context: grpc.ServicerContext) -> Any:
        def answer() -> pb.BuyAgainResponse:
            query = self.validate.buy_again(request)
            result = self.service.buy_again(query, _deadline(context))
            return _items_response(pb.BuyAgainResponse, result, "BuyAgain")

        return self._call(context, answer)

    def Popular(self, request: pb.PopularRequest, context: grpc.ServicerContext) -> Any:
        def answer() -> pb.PopularResponse:
            query = self.validate.popular(request)
            result = self.service.popular(query, _deadline(context))
            return _items_response(pb.PopularResponse, result, "Popular")

        return self._call(context, answer)

    def RecordEvent(self, request: pb.RecordEventRequest, context: grpc.ServicerContext) -> Any:
        def answer() -> pb.RecordEventResponse:
            query = self.validate.record_event(request)
            result = self.service.record_event(query, _deadline(context))
            return pb.RecordEventResponse(
                item_known=result.item_known, model_version=result.model_version
            )

        return self._call(context, answer)

    def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext) -> Any:
        def answer() -> pb.GetModelInfoResponse:
            info = self.service.model_info()
            return pb.GetModelInfoResponse(
                model_version=info.model_version,
                created_at=info.created_at,
                default_recommender=info.default_recommender,
                n_users=info.n_users,
                n_items=info.n_items,
                popularity_lists=list(info.popularity_lists),
                segments=list(info.segments),
                max_k=info.max_k,
                degraded=info.degraded,
            )

        return self._call(context, answer)

    def ForgetUser(self, request: pb.ForgetUserRequest, context: grpc.ServicerContext) -> Any:
        def answer() -> pb.ForgetUserResponse:
            user_id = self.validate.forget_user(request)
            return pb.ForgetUserResponse(versions=forget_user(self.service, user_id, _deadline(context)))

        return self._call(context, answer)


class _Undecodable:
    """Stands for request bytes that did not parse (the handler answers INVALID_ARGUMENT)."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def _tolerant(message_class: Any) -> Callable[[bytes], Any]:
    parse = message_class.FromString
    problem = _Undecodable(f"request: not a valid {message_class.DESCRIPTOR.full_name} message")

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # noqa: BLE001 - DecodeError, or whatever else the parser raises
            return problem

    return decode


def _guarded(behaviour: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        if type(request) is _Undecodable:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return behaviour(request, context)

    return handle


def add_to_server(servicer: RecommenderServicer, server: grpc.Server) -> None:
    """Register `servicer` for recsvc.v1.Recommender (as the generated function does, but with
    request parsing that answers INVALID_ARGUMENT instead of INTERNAL)."""
    service = pb.DESCRIPTOR.services_by_name["Recommender"]
    handlers = {}
    for method in service.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            _guarded(getattr(servicer, method.name)),
            request_deserializer=_tolerant(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)
