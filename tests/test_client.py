"""The recommended client retry policy, against a real gRPC server on 127.0.0.1 whose
servicer fails the first call of each RPC with UNAVAILABLE (what a dying worker does)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from recsvc.client import RETRIED_METHODS, retry_options
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc


class FailsFirst(pb_grpc.RecommenderServicer):
    """Answers UNAVAILABLE to the first call of each RPC, then an empty reply."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def _answer(self, name: str, reply: Any, context: grpc.ServicerContext) -> Any:
        with self.lock:
            self.calls[name] += 1
            first = self.calls[name] == 1
        if first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "worker going away")
        return reply

    def Recommend(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._answer("Recommend", pb.RecommendResponse(), context)

    def ForgetUser(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._answer("ForgetUser", pb.ForgetUserResponse(), context)

    def RecordEvent(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._answer("RecordEvent", pb.RecordEventResponse(), context)


@pytest.fixture()
def failing_server() -> Iterator[tuple[FailsFirst, str]]:
    servicer = FailsFirst()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_RecommenderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


def test_retry_policy_retries_idempotent_rpcs_and_not_record_event(
    failing_server: tuple[FailsFirst, str],
) -> None:
    servicer, target = failing_server
    with grpc.insecure_channel(target, options=retry_options()) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        stub.Recommend(pb.RecommendRequest(user_id="u1", k=3), timeout=5)
        stub.ForgetUser(pb.ForgetUserRequest(user_id="u1"), timeout=5)
        with pytest.raises(grpc.RpcError) as caught:
            stub.RecordEvent(pb.RecordEventRequest(user_id="u1", item_id="i1", event_type=pb.VIEW),
                             timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.calls == {"Recommend": 2, "ForgetUser": 2, "RecordEvent": 1}


def test_retry_policy_names_every_rpc_but_record_event() -> None:
    methods = set(pb.DESCRIPTOR.services_by_name["Recommender"].methods_by_name)
    assert set(RETRIED_METHODS) == methods - {"RecordEvent"}
