"""`recsvc serve --bundle`: each worker process serves its own in-process copy of the bundle."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from recsvc.client import ClientSecurity
from recsvc.v1 import recommender_pb2 as pb
from recsvc.v1 import recommender_pb2_grpc as pb_grpc
from serving.auth import add_token
from serving.config import ServeConfig
from serving.server import start_server
from tests.fixtures_grpc import bundle_dir, user_id  # noqa: F401  (fixture)


def test_forget_user_is_refused_on_a_bundle_served_in_process(
    bundle_dir: Path, tmp_path: Path  # noqa: F811
) -> None:
    # a forget would reach only the worker that took the call, and be lost at its restart
    tokens = tmp_path / "tokens.txt"
    admin = add_token(tokens, "privacy-desk", "admin")
    config = ServeConfig(bundle=str(bundle_dir), port=0, threads=2, tokens_file=str(tokens),
                         warm_users=False)
    running = start_server(config)
    try:
        channel = ClientSecurity(token=admin).channel(running.target)
        with channel:
            stub = pb_grpc.RecommenderStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ForgetUser(pb.ForgetUserRequest(user_id=user_id(4)), timeout=5)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "--store redis://" in str(refused.value.details())
            assert user_id(4) not in str(refused.value.details())
            reply = stub.Recommend(pb.RecommendRequest(user_id=user_id(4), k=3), timeout=5)
            assert reply.source == pb.PERSONALIZED  # nothing was half done
        assert running.store.forgotten_users() == []
    finally:
        running.stop(0)
